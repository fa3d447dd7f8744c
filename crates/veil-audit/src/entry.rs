//! One audit entry and the events it can record.
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use veil_merkle::Hash;

use crate::keys::{DomainKey, VerifierKey};

/// Domain separation for entry signatures, so they cannot be replayed as any other signature.
const ENTRY_CONTEXT: &[u8] = b"veil-audit-entry-v1\n";

/// What happened. Hashes identify data, modules, policies and results; ε is in millionths.
/// Events never carry rows or values derived from them beyond the released result's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum AuditEvent {
    LogCreated {
        public_key: String,
    },
    /// An admin created a principal (its token is never logged, not even hashed).
    PrincipalCreated {
        name: String,
        role: String,
        admin: String,
    },
    /// A principal's token was replaced by a fresh one (the old one stops working); re-enables a
    /// revoked principal.
    PrincipalTokenReissued {
        name: String,
        admin: String,
    },
    /// A principal's token stopped working; its name stays taken, its history stays in the log.
    PrincipalRevoked {
        name: String,
        admin: String,
    },
    /// Key hand-over: signed by the outgoing key, names the key that signs every later entry and
    /// checkpoint. Verification follows this chain from the log's first key.
    KeyRotated {
        new_public_key: String,
        fingerprint: String,
    },
    DatasetRegistered {
        dataset: String,
        owner: String,
        content_hash: String,
        schema_hash: String,
        rows: u64,
        privacy_unit: Option<String>,
    },
    PolicySet {
        dataset: String,
        holder: String,
        version: u64,
        policy_hash: String,
    },
    JobSubmitted {
        job: String,
        consumer: String,
        dataset: String,
        module_hash: String,
        manifest_hash: String,
        epsilon_micro: u64,
        purpose: String,
    },
    JobRefused {
        job: String,
        code: String,
        reason: String,
    },
    JobApproved {
        job: String,
        holder: String,
    },
    JobRejected {
        job: String,
        holder: String,
        reason: String,
    },
    /// The budget debit is committed with this entry, before the module runs.
    JobStarted {
        job: String,
        consumer: String,
        dataset: String,
        dataset_hash: String,
        policy_version: u64,
        policy_hash: String,
        module_hash: String,
        epsilon_micro: u64,
        spent_micro_after: u64,
        total_micro: u64,
        /// The job's charge beyond pure ε (Gaussian ρ in 1e-12, δ in 1e-15), when there is one;
        /// absent fields are zero, so entries of pure-ε jobs keep their original form.
        #[serde(default, skip_serializing_if = "is_zero")]
        rho_pico: u64,
        #[serde(default, skip_serializing_if = "is_zero")]
        delta_conversion_femto: u64,
        #[serde(default, skip_serializing_if = "is_zero")]
        delta_selection_femto: u64,
        /// Total δ spent by the consumer on the dataset after this job.
        #[serde(default, skip_serializing_if = "is_zero")]
        spent_delta_femto_after: u64,
    },
    JobFinished {
        job: String,
        status: String,
        units: u64,
        unit_faults: u64,
    },
    ReleaseCreated {
        job: String,
        result_hash: String,
        groups: u64,
    },
    ReleaseDenied {
        job: String,
        code: String,
        reason: String,
    },
}

/// A signed log entry, exactly as exported (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub v: u32,
    pub index: u64,
    pub time: String,
    /// Hex leaf hash of the previous entry (zeros for the first).
    pub prev: String,
    pub event: AuditEvent,
    /// Hex Ed25519 signature over the fields above.
    pub sig: String,
}

#[derive(Serialize)]
struct SignedPart<'a> {
    v: u32,
    index: u64,
    time: &'a str,
    prev: &'a str,
    event: &'a AuditEvent,
}

impl Entry {
    /// Builds and signs an entry.
    pub fn new_signed(
        index: u64,
        time: String,
        prev: Hash,
        event: AuditEvent,
        key: &DomainKey,
    ) -> Entry {
        let mut entry = Entry {
            v: 1,
            index,
            time,
            prev: hex::encode(prev),
            event,
            sig: String::new(),
        };
        entry.sig = hex::encode(key.sign(&entry.signed_bytes()));
        entry
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let part = SignedPart {
            v: self.v,
            index: self.index,
            time: &self.time,
            prev: &self.prev,
            event: &self.event,
        };
        let mut bytes = ENTRY_CONTEXT.to_vec();
        bytes.extend(serde_json::to_vec(&part).expect("entries serialize"));
        bytes
    }

    /// The canonical line: serialization is deterministic (fixed field order, no maps).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("entries serialize")
    }

    /// RFC 6962 leaf hash of the canonical line.
    pub fn leaf_hash(&self) -> Hash {
        veil_merkle::leaf_hash(self.to_line().as_bytes())
    }

    pub fn signature_valid(&self, key: &VerifierKey) -> bool {
        let Ok(sig) = hex::decode(&self.sig) else {
            return false;
        };
        key.verify(&self.signed_bytes(), &sig)
    }
}

/// Hex SHA-256 of some bytes (helper for callers building events).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}
