//! One audit entry and the events it can record.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use veil_merkle::Hash;

use crate::keys::{DomainKey, VerifierKey};

/// Domain separation for entry signatures, so they cannot be replayed as any other signature.
const ENTRY_CONTEXT: &[u8] = b"veil-audit-entry-v2\n";

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
        /// Keyed commitment to the content (HMAC-SHA256 under the dataset's secret salt): the
        /// holder and reviewers can check it; nobody can test guessed rows against it.
        content_commitment: String,
        schema_hash: String,
        rows: u64,
        privacy_unit: Option<String>,
        /// The version of the content under this name: 1 at registration (absent, so entries
        /// written before versions keep their form), one more at each replacement.
        #[serde(default = "first_version", skip_serializing_if = "is_first_version")]
        version: u64,
    },
    /// A new version of a dataset no longer fits its policy, which stops applying until the
    /// owner sets one again (`reason` says what does not fit).
    PolicySuspended {
        dataset: String,
        dataset_version: u64,
        reason: String,
    },
    /// A dataset was retired: its files deleted, its waiting jobs refused; its name, history and
    /// ledger stay.
    DatasetRemoved {
        dataset: String,
        owner: String,
        versions: u64,
        jobs_refused: u64,
    },
    /// The domain evaluated its link OPRF on a holder's batch of blinded identifiers (it saw
    /// only uniformly random points; the count says how many tokens the holder could derive).
    LinkEvaluated {
        holder: String,
        elements: u64,
    },
    /// A holder proposed linking its dataset (`left_dataset`) with another's on their link keys.
    LinkProposed {
        link: String,
        left_dataset: String,
        right_dataset: String,
        proposer: String,
    },
    /// The right side's holder accepted or rejected a proposed link (a link between one holder's
    /// own datasets is accepted by its proposal).
    LinkDecided {
        link: String,
        holder: String,
        accepted: bool,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
    },
    /// A holder of either side ended a link (or the proposer withdrew it): jobs can no longer
    /// join it; those waiting to start are refused when they would start.
    LinkRevoked {
        link: String,
        holder: String,
        reason: String,
    },
    PolicySet {
        dataset: String,
        holder: String,
        version: u64,
        policy_hash: String,
    },
    /// A noisy count of a dataset's privacy units, drawn once for its catalog entry because its
    /// policy (version `policy_version`) asked for it; a DP release, so public.
    UnitCountPublished {
        dataset: String,
        policy_version: u64,
        epsilon_micro: u64,
        noisy_units: u64,
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
    /// A consumer ran `job check`: every check of a submission, nothing recorded but this entry
    /// and nothing spent. `outcome` is `admissible` or `refused (<code>)`.
    JobChecked {
        consumer: String,
        dataset: String,
        module_hash: String,
        manifest_hash: String,
        epsilon_micro: u64,
        outcome: String,
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
        dataset_commitment: String,
        /// The version of the dataset the job reads (absent: 1).
        #[serde(default = "first_version", skip_serializing_if = "is_first_version")]
        dataset_version: u64,
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
        /// The public tables a SQL job joins, each at the version it reads (absent: none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        public_tables: Vec<TableRead>,
    },
    /// A linked job's charge on its linked dataset, in the transaction that starts it (beside
    /// `job_started`, which names the job's own dataset): the version and policy it reads and
    /// the consumer's ledger on it after the job.
    JobCharged {
        job: String,
        dataset: String,
        dataset_commitment: String,
        dataset_version: u64,
        policy_version: u64,
        policy_hash: String,
        epsilon_micro: u64,
        spent_micro_after: u64,
        total_micro: u64,
        #[serde(default, skip_serializing_if = "is_zero")]
        rho_pico: u64,
        #[serde(default, skip_serializing_if = "is_zero")]
        delta_conversion_femto: u64,
        #[serde(default, skip_serializing_if = "is_zero")]
        delta_selection_femto: u64,
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

/// Format version of entries written now: a public part and a sealed confidential part.
pub const ENTRY_VERSION: u32 = 2;

/// Domain separation for the commitment to an entry's confidential part.
const SEAL_CONTEXT: &[u8] = b"veil-audit-sealed-v2\n";

/// A log entry in full, as stored and as exported to reviewers (one JSON object per line).
///
/// A dataset as a job read it: its id, content version and commitment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRead {
    pub dataset: String,
    pub version: u64,
    pub commitment: String,
}

/// An entry has two parts. The **public part** ([`PublicEntry`]) is what the Merkle tree, the
/// signature, checkpoints, proofs and receipts are built over: version, index, the entry's public
/// time, the previous leaf, the event's kind and its public fields (job id, hashes, ε charged), and
/// `sealed`, a salted SHA-256 commitment to the **confidential part** — the event's other fields
/// (principals, counts, reasons, budget figures) and the exact time it was recorded. The salt is
/// 32 random bytes per entry, so a commitment cannot be tested against guessed contents; a
/// reviewer who holds the full entry recomputes it, so every field stays tamper-evident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub v: u32,
    pub index: u64,
    /// Public time: RFC 3339 to the second, or the scheduled instant of a job event (to the
    /// millisecond) — never the moment a data-dependent computation ended.
    pub time: String,
    /// Hex leaf hash of the previous entry's public part (zeros for the first).
    pub prev: String,
    pub event: AuditEvent,
    /// When the entry was actually written (confidential).
    pub recorded_at: String,
    /// Hex salt of the confidential part's commitment (confidential).
    pub salt: String,
    /// Hex Ed25519 signature over the public part.
    pub sig: String,
}

/// An entry's public part: what anyone shown the entry sees, and what the log's tree commits to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicEntry {
    pub v: u32,
    pub index: u64,
    pub time: String,
    pub prev: String,
    /// `kind` and the event's public fields (see [`public_fields`]).
    pub public: BTreeMap<String, Value>,
    /// Hex SHA-256 commitment to the confidential part.
    pub sealed: String,
    pub sig: String,
}

#[derive(Serialize)]
struct SignedPart<'a> {
    v: u32,
    index: u64,
    time: &'a str,
    prev: &'a str,
    public: &'a BTreeMap<String, Value>,
    sealed: &'a str,
}

/// What the commitment covers, in canonical form (sorted keys).
#[derive(Serialize)]
struct SealedPart<'a> {
    recorded_at: &'a str,
    fields: &'a BTreeMap<String, Value>,
}

/// The fields of each event kind that its public part shows; every other field is sealed.
/// Public fields are what the job's own consumer already knows or may verify (its job, the
/// dataset it named, hashes, the charge), never counts, reasons or other parties' names.
pub fn public_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "log_created" => &["public_key"],
        "key_rotated" => &["new_public_key", "fingerprint"],
        "dataset_registered" => &["dataset", "content_commitment", "schema_hash", "version"],
        "policy_suspended" => &["dataset", "dataset_version"],
        "dataset_removed" => &["dataset"],
        "link_evaluated" => &["holder", "elements"],
        "link_proposed" => &["link", "left_dataset", "right_dataset"],
        "link_decided" => &["link", "accepted"],
        "link_revoked" => &["link"],
        "policy_set" => &["dataset", "version", "policy_hash"],
        "unit_count_published" => &["dataset", "policy_version", "epsilon_micro", "noisy_units"],
        "job_submitted" => &[
            "job",
            "consumer",
            "dataset",
            "module_hash",
            "manifest_hash",
            "epsilon_micro",
        ],
        "job_checked" => &[
            "consumer",
            "dataset",
            "module_hash",
            "manifest_hash",
            "epsilon_micro",
        ],
        "job_started" => &[
            "job",
            "consumer",
            "dataset",
            "dataset_commitment",
            "dataset_version",
            "policy_version",
            "policy_hash",
            "module_hash",
            "epsilon_micro",
            "rho_pico",
            "delta_conversion_femto",
            "delta_selection_femto",
            "public_tables",
        ],
        "job_charged" => &[
            "job",
            "dataset",
            "dataset_commitment",
            "dataset_version",
            "policy_version",
            "policy_hash",
            "epsilon_micro",
            "rho_pico",
            "delta_conversion_femto",
            "delta_selection_femto",
        ],
        "release_created" => &["job", "result_hash"],
        "job_refused" | "job_approved" | "job_rejected" | "job_finished" | "release_denied" => {
            &["job"]
        }
        _ => &[],
    }
}

/// Splits an event into its public fields (with `kind`) and its confidential fields.
fn split(event: &AuditEvent) -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
    let Value::Object(all) = serde_json::to_value(event).expect("events serialize") else {
        unreachable!("events serialize as objects");
    };
    let kind = all
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let shown = public_fields(&kind);
    let (mut public, mut sealed) = (BTreeMap::new(), BTreeMap::new());
    for (name, value) in all {
        if name == "kind" || shown.contains(&name.as_str()) {
            public.insert(name, value);
        } else {
            sealed.insert(name, value);
        }
    }
    (public, sealed)
}

impl Entry {
    /// Builds and signs an entry. Requires `salt` to be fresh random bytes.
    pub fn new_signed(
        index: u64,
        time: String,
        recorded_at: String,
        prev: Hash,
        event: AuditEvent,
        salt: [u8; 32],
        key: &DomainKey,
    ) -> Entry {
        let mut entry = Entry {
            v: ENTRY_VERSION,
            index,
            time,
            prev: hex::encode(prev),
            event,
            recorded_at,
            salt: hex::encode(salt),
            sig: String::new(),
        };
        let public = entry.public();
        entry.sig = hex::encode(key.sign(&public.signed_bytes()));
        entry
    }

    /// The hex commitment to this entry's confidential part.
    fn commitment(&self, sealed: &BTreeMap<String, Value>) -> String {
        let mut bytes = SEAL_CONTEXT.to_vec();
        bytes.extend(hex::decode(&self.salt).unwrap_or_default());
        bytes.extend(
            serde_json::to_vec(&SealedPart {
                recorded_at: &self.recorded_at,
                fields: sealed,
            })
            .expect("sealed parts serialize"),
        );
        hex::encode(Sha256::digest(&bytes))
    }

    /// The public part of this entry.
    pub fn public(&self) -> PublicEntry {
        let (public, sealed) = split(&self.event);
        PublicEntry {
            v: self.v,
            index: self.index,
            time: self.time.clone(),
            prev: self.prev.clone(),
            sealed: self.commitment(&sealed),
            public,
            sig: self.sig.clone(),
        }
    }

    /// The full line, as stored and exported (deterministic: fixed field order, sorted maps).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("entries serialize")
    }

    /// RFC 6962 leaf hash of the public part's line.
    pub fn leaf_hash(&self) -> Hash {
        self.public().leaf_hash()
    }

    /// Whether the signature holds over the public part, which commits to everything else.
    pub fn signature_valid(&self, key: &VerifierKey) -> bool {
        self.v == ENTRY_VERSION && self.public().signature_valid(key)
    }
}

impl PublicEntry {
    fn signed_bytes(&self) -> Vec<u8> {
        let part = SignedPart {
            v: self.v,
            index: self.index,
            time: &self.time,
            prev: &self.prev,
            public: &self.public,
            sealed: &self.sealed,
        };
        let mut bytes = ENTRY_CONTEXT.to_vec();
        bytes.extend(serde_json::to_vec(&part).expect("entries serialize"));
        bytes
    }

    /// The canonical line of the public part.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("entries serialize")
    }

    /// RFC 6962 leaf hash of the canonical line: the entry's leaf in the log's tree.
    pub fn leaf_hash(&self) -> Hash {
        veil_merkle::leaf_hash(self.to_line().as_bytes())
    }

    pub fn signature_valid(&self, key: &VerifierKey) -> bool {
        let Ok(sig) = hex::decode(&self.sig) else {
            return false;
        };
        key.verify(&self.signed_bytes(), &sig)
    }

    /// The event kind (`job_started`, ...).
    pub fn kind(&self) -> &str {
        self.public
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// A public text field, if the entry shows it.
    pub fn text(&self, field: &str) -> Option<&str> {
        self.public.get(field).and_then(Value::as_str)
    }

    /// A public number field; absent numbers are zero (events omit zero charges).
    pub fn number(&self, field: &str) -> u64 {
        self.public.get(field).and_then(Value::as_u64).unwrap_or(0)
    }
}

/// Hex SHA-256 of some bytes (helper for callers building events).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

fn first_version() -> u64 {
    1
}

fn is_first_version(v: &u64) -> bool {
    *v == 1
}
