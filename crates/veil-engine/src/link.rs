//! The domain's side of join tokens (`veil_link`, issue 17): its OPRF key, kept beside the
//! audit signing key, and the evaluation of holders' blinded identifiers with a proof against
//! the published link key. The domain only ever sees uniformly random points: identifiers are
//! hashed, blinded and later turned into tokens by the holder's client.
use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::TransactionBehavior;
use serde::{Deserialize, Serialize};
use veil_audit::{AuditEvent, AuditLog};
use veil_link::{Element, LinkError, OprfKey, PublicKey};

use crate::Veil;
use crate::access::{Caller, Operation, require};
use crate::error::{EngineError, Result};

/// The domain's answer to a batch of blinded identifiers (`POST /v1/link/evaluate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkEvaluation {
    /// The evaluated elements, hex, in the request's order.
    pub evaluated: Vec<String>,
    /// The batch's DLEQ proof, hex.
    pub proof: String,
    /// The link key the proof is made against, hex (check it against the published one).
    pub public_key: String,
}

/// The domain's published link key (`GET /v1/link/key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkKey {
    pub public_key: String,
    /// The protocol the tokens come from (`veil_link::SUITE`).
    pub suite: String,
}

/// Where the link key lives: beside the audit signing key, same file mode.
pub(crate) fn link_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("link-oprf.key")
}

/// Loads the link key at `path`, or creates it (mode 0600, synced) when there is none. Of two
/// processes creating it at once, the second reads the first's.
pub(crate) fn load_or_create_link_key(path: &Path) -> Result<OprfKey> {
    let bad = |m: String| EngineError::Internal(format!("link key {}: {m}", path.display()));
    if !path.exists() {
        let key = OprfKey::generate(&mut rand::rng());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        match opts.open(path) {
            Ok(mut file) => {
                file.write_all(hex::encode(key.to_bytes()).as_bytes())?;
                file.sync_all()?;
                return Ok(key);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(bad(e.to_string())),
        }
    }
    let text = std::fs::read_to_string(path)?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("not 64 hex digits".into()))?;
    OprfKey::from_bytes(bytes).map_err(|e| bad(e.to_string()))
}

impl Veil {
    /// The published link key that evaluations are proved against.
    pub fn link_key(&self) -> LinkKey {
        LinkKey {
            public_key: self.link_key.public_key().to_hex(),
            suite: String::from_utf8_lossy(veil_link::SUITE).into_owned(),
        }
    }

    /// Evaluates a holder's batch of blinded identifiers (hex) and proves it used the published
    /// key; records `link_evaluated` with the batch's size. A malformed element is bad input
    /// naming its index, and changes nothing.
    pub fn evaluate_link(&mut self, caller: &Caller, blinded: &[String]) -> Result<LinkEvaluation> {
        require(caller, Operation::EvaluateLink)?;
        let elements = blinded
            .iter()
            .enumerate()
            .map(|(i, text)| Element::from_hex(text, i))
            .collect::<std::result::Result<Vec<_>, LinkError>>()
            .map_err(link_bad_input)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let hour_ago = crate::jobs::rfc3339(time::OffsetDateTime::now_utc() - time::Duration::HOUR);
        let recent: u64 = tx.query_row(
            "SELECT COALESCE(SUM(elements), 0) FROM link_evaluations WHERE holder = ?1 AND at > ?2",
            rusqlite::params![caller.name, hour_ago],
            |r| r.get(0),
        )?;
        let cap = self.config.max_link_evaluations_per_hour;
        if recent + elements.len() as u64 > cap {
            return Err(EngineError::Busy(format!(
                "`{}` had {recent} identifiers evaluated in the last hour (at most {cap}); send \
                 the rest later",
                caller.name
            )));
        }
        let evaluation = self
            .link_key
            .evaluate(&elements, &mut rand::rng())
            .map_err(link_bad_input)?;
        tx.execute(
            "INSERT INTO link_evaluations (holder, at, elements) VALUES (?1, ?2, ?3)",
            rusqlite::params![caller.name, crate::store::now(), elements.len() as u64],
        )?;
        AuditLog::append(
            &tx,
            &self.key,
            AuditEvent::LinkEvaluated {
                holder: caller.name.clone(),
                elements: elements.len() as u64,
            },
        )?;
        tx.commit()?;
        Ok(LinkEvaluation {
            evaluated: evaluation.elements.iter().map(Element::to_hex).collect(),
            proof: evaluation.proof.to_hex(),
            public_key: self.link_key.public_key().to_hex(),
        })
    }
}

fn link_bad_input(e: LinkError) -> EngineError {
    EngineError::BadInput(format!("link evaluation: {e}"))
}

/// The published key, parsed (for clients that hold only its hex).
pub fn parse_link_key(hex: &str) -> Result<PublicKey> {
    PublicKey::from_hex(hex).map_err(|e| EngineError::BadInput(e.to_string()))
}
