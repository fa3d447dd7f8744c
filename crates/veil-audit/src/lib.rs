//! Veil's tamper-evident audit log.
//!
//! Every event of the pipeline becomes an [`Entry`]: a sequential index, a public UTC time, the
//! leaf hash of the previous entry, the [`AuditEvent`] (hashes, principals and ε — never data) and
//! an Ed25519 signature by the domain key. Each entry has a public part ([`PublicEntry`]: kind,
//! public fields, a salted commitment to the rest) that the tree, checkpoints, proofs and receipts
//! are built over, and a sealed part (counts, reasons, other parties' names, the exact time) that
//! only reviewers see and that the commitment makes tamper-evident. Entries are appended inside the caller's SQLite
//! transaction, so an event is recorded exactly when the state change it describes is committed.
//!
//! Entries are the leaves of an RFC 6962 Merkle tree (`veil-merkle`). A [`Checkpoint`] commits to
//! the tree's size and root in the C2SP signed-note format. An export is the entries as JSON lines
//! followed by a checkpoint line, and [`verify_export`] checks it offline with only the public key,
//! naming the first bad entry:
//! - a changed field breaks that entry's signature;
//! - a deleted or reordered entry breaks the index sequence and the `prev` chain;
//! - a truncated tail or a swapped-in entry disagrees with the signed checkpoint.
#![forbid(unsafe_code)]

mod entry;
mod keys;
mod note;
mod proof;
mod receipt;
pub mod review;
mod store;

pub use entry::{
    AuditEvent, ENTRY_VERSION, Entry, PublicEntry, TableRead, public_fields, sha256_hex,
};
pub use keys::{DomainKey, VerifierKey};
pub use note::Checkpoint;
pub use proof::{Disclosure, Proof, ProofVerdict, prove_consistency, prove_inclusion};
pub use receipt::{
    Certificate, CertificateFacts, LinkedFacts, Receipt, ReceiptFacts, issue_certificate,
    issue_receipt,
};
pub use store::{AuditLog, export_lines};

use veil_merkle::Hash;

/// Errors of the audit crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("audit store: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("key file {path}: {message}")]
    Key { path: String, message: String },
    #[error("malformed public key: {0}")]
    BadPublicKey(String),
    #[error("encoding: {0}")]
    Encoding(String),
    /// Verification found a problem; `entry` names the first bad entry when there is one.
    #[error("{}", match .entry { Some(i) => format!("entry {i}: {}", .reason), None => .reason.clone() })]
    Verification { entry: Option<u64>, reason: String },
}

fn bad(entry: Option<u64>, reason: impl Into<String>) -> AuditError {
    AuditError::Verification {
        entry,
        reason: reason.into(),
    }
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedLog {
    pub entries: u64,
    pub root: Hash,
    /// The key that signs the log now, after following every hand-over from the given key.
    pub current_key: VerifierKey,
    pub rotations: u64,
}

/// Verifies an exported log (JSON lines: entries, then one `{"checkpoint": ...}` line).
///
/// `key` is the key the reviewer trusts: the log's first key. A `key_rotated` entry, signed by the
/// key in force, hands over to the key it names for every later entry and the checkpoint.
pub fn verify_export(text: &str, key: &VerifierKey) -> Result<VerifiedLog, AuditError> {
    let mut key = key.clone();
    let mut rotations = 0;
    let mut leaves: Vec<Hash> = Vec::new();
    let mut checkpoint: Option<Checkpoint> = None;
    for (lineno, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let expected = leaves.len() as u64;
        if checkpoint.is_some() {
            return Err(bad(
                Some(expected),
                format!("line {}: content after the checkpoint", lineno + 1),
            ));
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            bad(
                Some(expected),
                format!("line {} is not JSON: {e}", lineno + 1),
            )
        })?;
        if let Some(note) = value.get("checkpoint") {
            let note = note
                .as_str()
                .ok_or_else(|| bad(None, "checkpoint is not a string"))?;
            checkpoint = Some(Checkpoint::parse_and_verify(note, &key)?);
            continue;
        }
        let entry: Entry = serde_json::from_value(value).map_err(|e| {
            bad(
                Some(expected),
                format!("line {} is not a valid entry: {e}", lineno + 1),
            )
        })?;
        if entry.index != expected {
            return Err(bad(
                Some(expected),
                if entry.index > expected {
                    format!(
                        "missing: line {} holds entry {} instead (deleted or reordered)",
                        lineno + 1,
                        entry.index
                    )
                } else {
                    format!(
                        "out of order: line {} holds entry {} (reordered or duplicated)",
                        lineno + 1,
                        entry.index
                    )
                },
            ));
        }
        let prev = leaves.last().copied().unwrap_or([0u8; 32]);
        if entry.prev != hex::encode(prev) {
            return Err(bad(
                Some(expected),
                "does not chain to the previous entry (an entry before it was changed, removed or reordered)",
            ));
        }
        if !entry.signature_valid(&key) {
            return Err(bad(
                Some(expected),
                "signature does not match the entry's contents (the entry was altered, or signed \
                 by a key the chain of hand-overs does not lead to)",
            ));
        }
        if let AuditEvent::KeyRotated { new_public_key, .. } = &entry.event {
            key = VerifierKey::parse(new_public_key).map_err(|e| {
                bad(
                    Some(expected),
                    format!("hands over to a malformed key: {e}"),
                )
            })?;
            rotations += 1;
        }
        leaves.push(entry.leaf_hash());
    }
    let Some(cp) = checkpoint else {
        return Err(bad(
            None,
            "no checkpoint line: cannot tell whether entries were cut off",
        ));
    };
    let n = leaves.len() as u64;
    if cp.size != n {
        return Err(bad(
            Some(n.min(cp.size)),
            format!(
                "checkpoint covers {} entries but the log has {n} (truncated or extended)",
                cp.size
            ),
        ));
    }
    let root = veil_merkle::root(&leaves);
    if root != cp.root {
        return Err(bad(
            None,
            "Merkle root of the entries differs from the signed checkpoint",
        ));
    }
    Ok(VerifiedLog {
        entries: n,
        root,
        current_key: key,
        rotations,
    })
}
