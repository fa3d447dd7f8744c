//! Principals — holders, consumers, reviewers and admins — and the bearer tokens that identify
//! them to the service.
//!
//! A token is 32 random bytes from the operating system, shown once when the principal is created
//! and stored only as its SHA-256: a stolen store yields no usable token, and since tokens carry
//! 256 bits of entropy a fast hash is enough (there is nothing to brute-force). Creation is
//! recorded in the audit log without the token.
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use veil_audit::{AuditEvent, AuditLog};
use veil_policy::model::valid_principal;

use crate::access::{Caller, Operation, require};
use crate::error::bad;
use crate::store::now;
use crate::{EngineError, Result, Veil};

/// What a principal may do (enforced per endpoint by the service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Holder,
    Consumer,
    Reviewer,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "holder" => Role::Holder,
            "consumer" => Role::Consumer,
            "reviewer" => Role::Reviewer,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Holder => "holder",
            Role::Consumer => "consumer",
            Role::Reviewer => "reviewer",
            Role::Admin => "admin",
        }
    }
}

/// An authenticated principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub created_at: String,
    /// When its token was revoked; a revoked principal cannot authenticate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// Prefix that makes tokens recognisable (in logs to redact, in secret scanners).
const TOKEN_PREFIX: &str = "veil_";

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

impl Veil {
    /// Creates a principal and returns its token — the only time the token exists in the clear.
    /// For admins; the log names `admin` as who did it.
    pub fn create_principal(&mut self, admin: &Caller, name: &str, role: Role) -> Result<String> {
        require(admin, Operation::ManagePrincipals)?;
        if !valid_principal(name) {
            return Err(bad(format!(
                "`{name}` is not a principal name (letters, digits, '-', '_', '.')"
            )));
        }
        let token = fresh_token()?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let exists: bool = tx.query_row(
            "SELECT COUNT(*) > 0 FROM principals WHERE name = ?1",
            [name],
            |r| r.get(0),
        )?;
        if exists {
            return Err(EngineError::Conflict(format!(
                "a principal named `{name}` already exists"
            )));
        }
        tx.execute(
            "INSERT INTO principals (name, role, token_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, role.as_str(), token_hash(&token), now()],
        )?;
        AuditLog::append(
            &tx,
            &self.key,
            AuditEvent::PrincipalCreated {
                name: name.into(),
                role: role.as_str().into(),
                admin: admin.name.clone(),
            },
        )?;
        tx.commit()?;
        Ok(token)
    }

    /// Replaces `name`'s token with a fresh one, returned once; the old token stops working. A
    /// revoked principal is active again. Recorded in the audit log (without the token).
    pub fn reissue_token(&mut self, admin: &Caller, name: &str) -> Result<String> {
        require(admin, Operation::ManagePrincipals)?;
        let token = fresh_token()?;
        self.change_principal(
            name,
            "UPDATE principals SET token_hash = ?2, revoked_at = NULL WHERE name = ?1",
            params![name, token_hash(&token)],
            AuditEvent::PrincipalTokenReissued {
                name: name.into(),
                admin: admin.name.clone(),
            },
        )?;
        Ok(token)
    }

    /// Revokes `name`'s token: it authenticates no more. The name stays taken (the log's history
    /// keeps meaning one party); [`Veil::reissue_token`] re-enables it with a new token.
    pub fn revoke_principal(&mut self, admin: &Caller, name: &str) -> Result<()> {
        require(admin, Operation::ManagePrincipals)?;
        if self
            .principals()?
            .iter()
            .any(|p| p.name == name && p.revoked_at.is_some())
        {
            return Err(EngineError::Conflict(format!(
                "`{name}` is already revoked"
            )));
        }
        self.change_principal(
            name,
            "UPDATE principals SET revoked_at = ?2 WHERE name = ?1",
            params![name, now()],
            AuditEvent::PrincipalRevoked {
                name: name.into(),
                admin: admin.name.clone(),
            },
        )
    }

    fn change_principal(
        &mut self,
        name: &str,
        update: &str,
        args: impl rusqlite::Params,
        event: AuditEvent,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if tx.execute(update, args)? == 0 {
            return Err(EngineError::NotFound(format!(
                "no principal named `{name}`"
            )));
        }
        AuditLog::append(&tx, &self.key, event)?;
        tx.commit()?;
        Ok(())
    }

    /// The principal a bearer token belongs to. Unknown, malformed and revoked tokens are
    /// `Forbidden`, with one message for all so the answer says nothing about which names exist.
    pub fn authenticate(&self, token: &str) -> Result<Principal> {
        let denied = || EngineError::Forbidden("unknown or invalid token".into());
        if !token.starts_with(TOKEN_PREFIX) || token.len() != TOKEN_PREFIX.len() + 64 {
            return Err(denied());
        }
        let row: Option<(String, String, String)> = self
            .conn
            .query_row(
                "SELECT name, role, created_at FROM principals
                 WHERE token_hash = ?1 AND revoked_at IS NULL",
                [token_hash(token)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (name, role, created_at) = row.ok_or_else(denied)?;
        Ok(Principal {
            name,
            role: Role::parse(&role)
                .ok_or_else(|| EngineError::Internal(format!("stored role `{role}`")))?,
            created_at,
            revoked_at: None,
        })
    }

    /// Every principal (never their tokens), for admins.
    pub fn principals_as(&self, admin: &Caller) -> Result<Vec<Principal>> {
        require(admin, Operation::ManagePrincipals)?;
        self.principals()
    }

    /// The principal `name`, for an admin acting on it; [`EngineError::NotFound`] if there is none.
    pub fn principal_as(&self, admin: &Caller, name: &str) -> Result<Principal> {
        require(admin, Operation::ManagePrincipals)?;
        self.principals()?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| EngineError::NotFound(format!("no principal named `{name}`")))
    }

    /// The caller the host's CLI acts as with `--as NAME`: the stored, active principal `name`.
    /// No such principal, or a revoked one: [`EngineError::NotFound`] saying how to create it.
    pub fn local_caller(&self, name: &str) -> Result<Caller> {
        let principal = self.principals()?.into_iter().find(|p| p.name == name);
        match principal {
            Some(p) if p.revoked_at.is_none() => Ok(Caller::from(&p)),
            Some(_) => Err(EngineError::Forbidden(format!(
                "principal `{name}` is revoked: `veil admin reissue-token {name}` re-enables it"
            ))),
            None => Err(EngineError::NotFound(format!(
                "no principal named `{name}` in this data directory: create it with \
                 `veil admin add-principal {name} --role ROLE`"
            ))),
        }
    }

    /// Every principal (never their tokens): for the host and for the checks above.
    pub(crate) fn principals(&self) -> Result<Vec<Principal>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, role, created_at, revoked_at FROM principals ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, role, created_at, revoked_at) = row?;
            out.push(Principal {
                name,
                role: Role::parse(&role)
                    .ok_or_else(|| EngineError::Internal(format!("stored role `{role}`")))?,
                created_at,
                revoked_at,
            });
        }
        Ok(out)
    }
}

/// A new token: the prefix and 32 bytes from the operating system, hex-encoded.
fn fresh_token() -> Result<String> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| EngineError::Internal(format!("no OS randomness: {e}")))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(secret)))
}
