//! Inclusion and consistency proofs for the audit log, as self-contained JSON documents a reviewer
//! checks offline with only the domain's public key (`veil audit prove`, `veil audit
//! verify-proof`).
//!
//! - An **inclusion proof** carries one entry's public part (its leaf), its index, the audit path
//!   and a signed checkpoint: it shows the entry is in the log the checkpoint commits to, without
//!   the rest of the log (RFC 6962 §2.1.1, RFC 9162 §2.1.3.2). A proof made for a reviewer also
//!   carries the full entry, whose sealed part the verifier checks against the commitment.
//! - A **consistency proof** carries two signed checkpoints and the path between them: it shows
//!   the later log extends the earlier one, so nothing the earlier checkpoint covered was changed
//!   or dropped (RFC 6962 §2.1.2, RFC 9162 §2.1.4.2). Two reviewers who hold different checkpoints
//!   detect a forked log by asking for one.
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use veil_merkle::Hash;

use crate::entry::{Entry, PublicEntry};
use crate::keys::{DomainKey, VerifierKey};
use crate::note::Checkpoint;
use crate::store::AuditLog;
use crate::{AuditError, bad};

/// A proof document, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Proof {
    Inclusion {
        index: u64,
        /// The entry's public part, exactly as the tree's leaf hashes it.
        entry: String,
        /// The full entry (public and sealed parts), in proofs for those who may read it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        full: Option<String>,
        /// Hex hashes of the audit path, bottom-up.
        path: Vec<String>,
        /// Signed note for the tree the path leads to.
        checkpoint: String,
    },
    Consistency {
        /// Signed notes for the older and the newer tree.
        old_checkpoint: String,
        new_checkpoint: String,
        path: Vec<String>,
    },
}

/// What a verified proof established.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofVerdict {
    /// Entry `index` is in the log of `size` entries.
    Included {
        index: u64,
        size: u64,
        entry: Box<PublicEntry>,
        /// The full entry, checked against the commitment, when the proof carries it.
        full: Option<Box<Entry>>,
    },
    /// The log of `new_size` entries extends the log of `old_size` entries.
    Consistent { old_size: u64, new_size: u64 },
}

fn leaves(conn: &Connection) -> Result<Vec<Hash>, AuditError> {
    let mut stmt = conn.prepare("SELECT leaf FROM audit_log ORDER BY idx")?;
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?
        .map(|l| {
            l.map_err(AuditError::from)?
                .try_into()
                .map_err(|_| AuditError::Encoding("stored leaf is not 32 bytes".into()))
        })
        .collect()
}

fn size_ok(size: u64, have: usize) -> Result<usize, AuditError> {
    if size == 0 || size > have as u64 {
        return Err(bad(
            None,
            format!("the log has {have} entries; a proof needs a size from 1 to {have}"),
        ));
    }
    Ok(size as usize)
}

/// How much of an entry a proof shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disclosure {
    /// The public part only (a job's consumer, for its own job's entries).
    Public,
    /// The public part and the full entry (reviewers, admins, a dataset's owner for its own).
    Full,
}

/// Proves entry `index` is in the tree of the first `size` entries (default: the whole log).
pub fn prove_inclusion(
    conn: &Connection,
    key: &DomainKey,
    index: u64,
    size: Option<u64>,
    disclosure: Disclosure,
) -> Result<Proof, AuditError> {
    let all = leaves(conn)?;
    let size = size_ok(size.unwrap_or(all.len() as u64), all.len())?;
    if index >= size as u64 {
        return Err(bad(
            None,
            format!("entry {index} is not in a tree of {size} entries"),
        ));
    }
    let tree = &all[..size];
    let path = veil_merkle::inclusion_proof(tree, index as usize).expect("index checked");
    let entry = AuditLog::entry(conn, index)?.ok_or_else(|| bad(Some(index), "no such entry"))?;
    let checkpoint = Checkpoint::sign(size as u64, veil_merkle::root(tree), key);
    Ok(Proof::Inclusion {
        index,
        entry: entry.public().to_line(),
        full: (disclosure == Disclosure::Full).then(|| entry.to_line()),
        path: path.iter().map(hex::encode).collect(),
        checkpoint: checkpoint.note,
    })
}

/// Proves the tree of the first `new_size` entries (default: the whole log) extends the tree of
/// the first `old_size`.
pub fn prove_consistency(
    conn: &Connection,
    key: &DomainKey,
    old_size: u64,
    new_size: Option<u64>,
) -> Result<Proof, AuditError> {
    let all = leaves(conn)?;
    let new_size = size_ok(new_size.unwrap_or(all.len() as u64), all.len())?;
    let old_size = size_ok(old_size, new_size)?;
    let tree = &all[..new_size];
    let path = veil_merkle::consistency_proof(tree, old_size).expect("sizes checked");
    Ok(Proof::Consistency {
        old_checkpoint: Checkpoint::sign(old_size as u64, veil_merkle::root(&all[..old_size]), key)
            .note,
        new_checkpoint: Checkpoint::sign(new_size as u64, veil_merkle::root(tree), key).note,
        path: path.iter().map(hex::encode).collect(),
    })
}

/// The full entry `line`, checked to open the public part `public` (same public fields, and its
/// sealed part matches the commitment).
fn opened(line: &str, public: &PublicEntry) -> Result<Entry, AuditError> {
    let index = Some(public.index);
    let full: Entry = serde_json::from_str(line)
        .map_err(|e| bad(index, format!("the full entry is not a log entry: {e}")))?;
    if full.public() != *public {
        return Err(bad(
            index,
            "the full entry does not match the proven public part (a sealed field was altered)",
        ));
    }
    Ok(full)
}

fn hashes(path: &[String]) -> Result<Vec<Hash>, AuditError> {
    path.iter()
        .map(|h| {
            hex::decode(h)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad(None, format!("`{h}` is not a hex SHA-256 hash")))
        })
        .collect()
}

impl Proof {
    /// Checks the proof offline with only the public key. For a consistency proof, pass the older
    /// checkpoint the reviewer already holds as `trusted_old` to check the proof against it rather
    /// than against the copy inside the proof (which proves nothing about what they saw before).
    pub fn verify(
        &self,
        key: &VerifierKey,
        trusted_old: Option<&str>,
    ) -> Result<ProofVerdict, AuditError> {
        match self {
            Proof::Inclusion {
                index,
                entry,
                full,
                path,
                checkpoint,
            } => {
                let cp = Checkpoint::parse_and_verify(checkpoint, key)?;
                let parsed: PublicEntry = serde_json::from_str(entry)
                    .map_err(|e| bad(Some(*index), format!("entry is not a log entry: {e}")))?;
                if parsed.to_line() != *entry {
                    return Err(bad(Some(*index), "entry is not in canonical form"));
                }
                if parsed.index != *index {
                    return Err(bad(
                        Some(*index),
                        format!("the entry says it is entry {}", parsed.index),
                    ));
                }
                // No separate entry signature check: the entry may predate a key rotation, and
                // its inclusion under a checkpoint signed by `key` already authenticates it.
                let leaf = veil_merkle::leaf_hash(entry.as_bytes());
                if !veil_merkle::verify_inclusion(&leaf, *index, cp.size, &hashes(path)?, &cp.root)
                {
                    return Err(bad(
                        Some(*index),
                        format!(
                            "the audit path does not lead to the checkpoint's root (tree of {})",
                            cp.size
                        ),
                    ));
                }
                let full = full
                    .as_deref()
                    .map(|line| opened(line, &parsed))
                    .transpose()?;
                Ok(ProofVerdict::Included {
                    index: *index,
                    size: cp.size,
                    entry: Box::new(parsed),
                    full: full.map(Box::new),
                })
            }
            Proof::Consistency {
                old_checkpoint,
                new_checkpoint,
                path,
            } => {
                let old = Checkpoint::parse_and_verify(trusted_old.unwrap_or(old_checkpoint), key)?;
                let new = Checkpoint::parse_and_verify(new_checkpoint, key)?;
                if !veil_merkle::verify_consistency(
                    old.size,
                    new.size,
                    &hashes(path)?,
                    &old.root,
                    &new.root,
                ) {
                    return Err(bad(
                        None,
                        format!(
                            "the log of {} entries is NOT an extension of the log of {} entries \
                             (a rewritten or forked history, or a wrong proof)",
                            new.size, old.size
                        ),
                    ));
                }
                Ok(ProofVerdict::Consistent {
                    old_size: old.size,
                    new_size: new.size,
                })
            }
        }
    }
}
