//! Checkpoints in the C2SP signed-note format (`c2sp.org/signed-note`, `c2sp.org/tlog-checkpoint`):
//!
//! ```text
//! <origin>
//! <tree size>
//! <base64 root hash>
//!
//! — <key name> <base64(key id || signature)>
//! ```
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use veil_merkle::Hash;

use crate::keys::{DomainKey, VerifierKey};
use crate::{AuditError, bad};

/// A verified (or freshly signed) checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The full signed note.
    pub note: String,
}

impl Checkpoint {
    /// Signs a checkpoint for a tree of `size` leaves with root `root`.
    pub fn sign(size: u64, root: Hash, key: &DomainKey) -> Checkpoint {
        let origin = key.name().to_owned();
        let body = format!("{origin}\n{size}\n{}\n", B64.encode(root));
        let sig = key.sign(body.as_bytes());
        let mut blob = key.verifier().key_id().to_vec();
        blob.extend_from_slice(&sig);
        let note = format!("{body}\n\u{2014} {} {}\n", key.name(), B64.encode(blob));
        Checkpoint {
            origin,
            size,
            root,
            note,
        }
    }

    /// Parses a signed note and checks its signature against `key`.
    pub fn parse_and_verify(note: &str, key: &VerifierKey) -> Result<Checkpoint, AuditError> {
        let Some((body, sigs)) = note.split_once("\n\n") else {
            return Err(bad(None, "checkpoint is not a signed note"));
        };
        let body = format!("{body}\n");
        let mut lines = body.lines();
        let (Some(origin), Some(size), Some(root), None) =
            (lines.next(), lines.next(), lines.next(), lines.next())
        else {
            return Err(bad(
                None,
                "checkpoint body must have origin, size and root lines",
            ));
        };
        let size: u64 = size
            .parse()
            .map_err(|_| bad(None, "checkpoint size is not a number"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad(None, "checkpoint root is not a base64 SHA-256 hash"))?;
        let mut verified = false;
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                continue;
            };
            let Some((name, blob)) = rest.split_once(' ') else {
                continue;
            };
            let Ok(blob) = B64.decode(blob) else { continue };
            if name == key.name() && blob.len() == 68 && blob[..4] == key.key_id() {
                verified = key.verify(body.as_bytes(), &blob[4..]);
            }
        }
        if !verified {
            return Err(bad(
                None,
                "checkpoint signature is not valid for this public key",
            ));
        }
        Ok(Checkpoint {
            origin: origin.into(),
            size,
            root,
            note: note.into(),
        })
    }
}
