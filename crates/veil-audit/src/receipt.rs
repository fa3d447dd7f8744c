//! Job receipts: what a consumer keeps to prove — to anyone holding the domain's public key — which
//! module ran on which dataset version under which policy, what it was charged and what it
//! released.
//!
//! A receipt binds the module hash, the dataset's content commitment, the policy version's hash, the
//! manifest hash, the privacy charged (ε, and ρ and δ when spent), the result's hash and the log
//! index of the release, under one Ed25519 signature of the domain key. It also carries inclusion
//! proofs of the three log entries those facts come from (`job_submitted`, `job_started`,
//! `release_created`) against one signed checkpoint, and the released result itself, so
//! [`Receipt::verify`] checks everything offline: the signature, each proof, that the entries say
//! what the receipt says, and that the result hashes to the logged hash.
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::entry::{AuditEvent, Entry, PublicEntry, sha256_hex};
use crate::keys::{DomainKey, VerifierKey};
use crate::proof::{Disclosure, Proof, ProofVerdict, prove_inclusion};
use crate::store::AuditLog;
use crate::{AuditError, bad};

/// Context prefix of the receipt signature (keeps it from being valid as any other message).
const RECEIPT_CONTEXT: &[u8] = b"veil-receipt-v1\n";

/// The facts a receipt binds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptFacts {
    pub job: String,
    pub consumer: String,
    pub dataset: String,
    pub module_hash: String,
    /// Keyed commitment to the dataset version's content (not a plain hash: it cannot be
    /// recomputed from guessed rows).
    pub dataset_commitment: String,
    /// The version of the dataset the job read (1, absent, for a dataset never replaced).
    #[serde(default = "first_version", skip_serializing_if = "is_first_version")]
    pub dataset_version: u64,
    pub policy_version: u64,
    pub policy_hash: String,
    pub manifest_hash: String,
    pub epsilon_micro: u64,
    pub rho_pico: u64,
    pub delta_femto: u64,
    pub result_hash: String,
    /// Index of the `release_created` entry.
    pub log_index: u64,
    /// The release's public time: the instant fixed when the job started.
    pub released_at: String,
    /// The signed checkpoint the proofs lead to.
    pub checkpoint: String,
    /// A job over a link: the linked dataset it read and was charged on, from its `job_charged`
    /// entry (a fourth proof). Absent for every other job, so their receipts keep their form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked: Option<LinkedFacts>,
}

/// What a job over a link's `job_charged` entry establishes about the linked dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkedFacts {
    pub dataset: String,
    pub dataset_commitment: String,
    pub dataset_version: u64,
    pub policy_version: u64,
    pub policy_hash: String,
}

/// A signed job receipt (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub facts: ReceiptFacts,
    /// Hex Ed25519 signature of the domain key over the facts.
    pub signature: String,
    /// Inclusion proofs of the `job_submitted`, `job_started` and `release_created` entries, and
    /// for a job over a link of its `job_charged` entry.
    pub proofs: Vec<Proof>,
    /// The released result, exactly as stored (its SHA-256 is `facts.result_hash`).
    pub result: String,
}

/// The signed message: a context line, then the facts' canonical JSON (fixed field order).
fn signed_message(context: &[u8], facts: &impl Serialize) -> Vec<u8> {
    let mut bytes = context.to_vec();
    bytes.extend(serde_json::to_vec(facts).expect("facts serialize"));
    bytes
}

fn signature_holds(key: &VerifierKey, message: &[u8], signature_hex: &str) -> bool {
    key.verify(message, &hex::decode(signature_hex).unwrap_or_default())
}

/// The facts that a job's `job_submitted`, `job_started` and `release_created` entries establish
/// through their public parts, or `None` when they are not those events of one job. Issuing and
/// verifying both use it, so a receipt says exactly what its entries say.
fn job_facts(
    submitted: &PublicEntry,
    started: &PublicEntry,
    released: &PublicEntry,
    charged: Option<&PublicEntry>,
    checkpoint: String,
) -> Option<ReceiptFacts> {
    let kinds = (submitted.kind(), started.kind(), released.kind());
    if kinds != ("job_submitted", "job_started", "release_created") {
        return None;
    }
    let job = submitted.text("job")?;
    if started.text("job") != Some(job) || released.text("job") != Some(job) {
        return None;
    }
    let linked = match charged {
        None => None,
        Some(c) if c.kind() == "job_charged" && c.text("job") == Some(job) => Some(LinkedFacts {
            dataset: c.text("dataset")?.to_owned(),
            dataset_commitment: c.text("dataset_commitment")?.to_owned(),
            dataset_version: c.number("dataset_version").max(1),
            policy_version: c.number("policy_version"),
            policy_hash: c.text("policy_hash")?.to_owned(),
        }),
        Some(_) => return None,
    };
    let text = |e: &PublicEntry, f: &str| e.text(f).map(str::to_owned);
    Some(ReceiptFacts {
        job: job.to_owned(),
        consumer: text(submitted, "consumer")?,
        dataset: text(submitted, "dataset")?,
        module_hash: text(started, "module_hash")?,
        dataset_commitment: text(started, "dataset_commitment")?,
        // Absent in entries of datasets never replaced (and of entries before versions): 1.
        dataset_version: started.number("dataset_version").max(1),
        policy_version: started.number("policy_version"),
        policy_hash: text(started, "policy_hash")?,
        manifest_hash: text(submitted, "manifest_hash")?,
        epsilon_micro: started.number("epsilon_micro"),
        rho_pico: started.number("rho_pico"),
        delta_femto: started.number("delta_conversion_femto")
            + started.number("delta_selection_femto"),
        result_hash: text(released, "result_hash")?,
        log_index: released.index,
        released_at: released.time.clone(),
        checkpoint,
        linked,
    })
}

/// Issues the receipt of released job `job`, whose stored result text is `result`.
pub fn issue_receipt(
    conn: &Connection,
    key: &DomainKey,
    job: &str,
    result: &str,
) -> Result<Receipt, AuditError> {
    let entries = AuditLog::entries(conn)?;
    let size = entries.len() as u64;
    let find = |want: fn(&AuditEvent, &str) -> bool| {
        entries
            .iter()
            .find(|e| want(&e.event, job))
            .ok_or_else(|| bad(None, format!("job {job} has no complete record in the log")))
    };
    let submitted = find(|e, j| matches!(e, AuditEvent::JobSubmitted { job, .. } if job == j))?;
    let started = find(|e, j| matches!(e, AuditEvent::JobStarted { job, .. } if job == j))?;
    let released = find(|e, j| matches!(e, AuditEvent::ReleaseCreated { job, .. } if job == j))?;
    let charged = entries
        .iter()
        .find(|e| matches!(&e.event, AuditEvent::JobCharged { job: j, .. } if j == job));
    let proofs = [Some(submitted), Some(started), Some(released), charged]
        .into_iter()
        .flatten()
        .map(|e| prove_inclusion(conn, key, e.index, Some(size), Disclosure::Public))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(Proof::Inclusion { checkpoint, .. }) = proofs.first() else {
        unreachable!("inclusion proofs");
    };
    let facts = job_facts(
        &submitted.public(),
        &started.public(),
        &released.public(),
        charged.map(|c| c.public()).as_ref(),
        checkpoint.clone(),
    )
    .ok_or_else(|| {
        bad(
            Some(released.index),
            "the job's entries do not fit together",
        )
    })?;
    Ok(Receipt {
        signature: hex::encode(key.sign(&signed_message(RECEIPT_CONTEXT, &facts))),
        facts,
        proofs,
        result: result.into(),
    })
}

impl Receipt {
    /// Checks the receipt offline with only the public key; returns its facts.
    pub fn verify(&self, key: &VerifierKey) -> Result<&ReceiptFacts, AuditError> {
        let f = &self.facts;
        if !signature_holds(key, &signed_message(RECEIPT_CONTEXT, f), &self.signature) {
            return Err(bad(
                None,
                "the receipt's signature is not valid for this key",
            ));
        }
        if sha256_hex(self.result.as_bytes()) != f.result_hash {
            return Err(bad(
                None,
                "the result does not hash to the receipt's result hash",
            ));
        }
        let expected = 3 + usize::from(f.linked.is_some());
        if self.proofs.len() != expected {
            return Err(bad(
                None,
                format!(
                    "this receipt carries {expected} inclusion proofs (three, and a fourth for a \
                     job over a link), not {}",
                    self.proofs.len()
                ),
            ));
        }
        let mut entries: Vec<PublicEntry> = Vec::new();
        for proof in &self.proofs {
            let Proof::Inclusion { checkpoint, .. } = proof else {
                return Err(bad(None, "receipt proofs must be inclusion proofs"));
            };
            if *checkpoint != f.checkpoint {
                return Err(bad(
                    None,
                    "a proof leads to another checkpoint than the receipt's",
                ));
            }
            match proof.verify(key, None)? {
                ProofVerdict::Included { entry, .. } => entries.push(*entry),
                _ => return Err(bad(None, "receipt proofs must be inclusion proofs")),
            }
        }
        let (submitted, started, released, charged) = match &entries[..] {
            [a, b, c] => (a, b, c, None),
            [a, b, c, d] => (a, b, c, Some(d)),
            _ => unreachable!("three or four proofs checked above"),
        };
        let derived = job_facts(submitted, started, released, charged, f.checkpoint.clone());
        if derived.as_ref() != Some(f) {
            return Err(bad(
                Some(released.index),
                "a logged entry disagrees with the receipt (job, module, data, policy, charge or \
                 result)",
            ));
        }
        Ok(f)
    }
}

/// Context prefix of the registration-certificate signature.
const CERTIFICATE_CONTEXT: &[u8] = b"veil-registration-v1\n";

/// The facts a registration certificate binds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFacts {
    pub dataset: String,
    pub owner: String,
    pub content_commitment: String,
    pub schema_hash: String,
    pub rows: u64,
    pub privacy_unit: Option<String>,
    /// The version of the content (1, absent, for a first registration).
    #[serde(default = "first_version", skip_serializing_if = "is_first_version")]
    pub version: u64,
    /// When the registration was logged.
    pub time: String,
    pub log_index: u64,
    pub checkpoint: String,
}

/// A registration certificate for a dataset's holder: the registration's facts under the domain
/// key's signature, with the inclusion proof of its `dataset_registered` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub facts: CertificateFacts,
    pub signature: String,
    pub proof: Proof,
}

/// The facts a `dataset_registered` entry establishes, or `None` for another event.
fn registration_facts(entry: &Entry, checkpoint: String) -> Option<CertificateFacts> {
    let AuditEvent::DatasetRegistered {
        dataset,
        owner,
        content_commitment,
        schema_hash,
        rows,
        privacy_unit,
        version,
    } = &entry.event
    else {
        return None;
    };
    Some(CertificateFacts {
        dataset: dataset.clone(),
        owner: owner.clone(),
        content_commitment: content_commitment.clone(),
        schema_hash: schema_hash.clone(),
        rows: *rows,
        privacy_unit: privacy_unit.clone(),
        version: *version,
        time: entry.time.clone(),
        log_index: entry.index,
        checkpoint,
    })
}

/// Issues the registration certificate of `dataset` (its registration entry in the log).
/// Whether a registration entry of `logged` by `owner` is of the dataset with id `id`: the same
/// id, or — for entries signed before ids carried the owner — `id` is `owner:logged`.
fn registered_as(id: &str, logged: &str, owner: &str) -> bool {
    logged == id
        || id
            .strip_prefix(owner)
            .and_then(|rest| rest.strip_prefix(':'))
            .is_some_and(|short| short == logged)
}

pub fn issue_certificate(
    conn: &Connection,
    key: &DomainKey,
    dataset: &str,
) -> Result<Certificate, AuditError> {
    let entries = AuditLog::entries(conn)?;
    let entry = entries
        .iter()
        .rev()
        .find(|e| matches!(&e.event, AuditEvent::DatasetRegistered { dataset: d, owner, .. } if registered_as(dataset, d, owner)))
        .ok_or_else(|| bad(None, format!("no registration of `{dataset}` in the log")))?;
    let proof = prove_inclusion(
        conn,
        key,
        entry.index,
        Some(entries.len() as u64),
        Disclosure::Full,
    )?;
    let Proof::Inclusion { checkpoint, .. } = &proof else {
        unreachable!("an inclusion proof");
    };
    let facts = registration_facts(entry, checkpoint.clone()).expect("found by kind");
    Ok(Certificate {
        signature: hex::encode(key.sign(&signed_message(CERTIFICATE_CONTEXT, &facts))),
        facts,
        proof,
    })
}

impl Certificate {
    /// Checks the certificate offline with only the public key; returns its facts.
    pub fn verify(&self, key: &VerifierKey) -> Result<&CertificateFacts, AuditError> {
        let f = &self.facts;
        if !signature_holds(
            key,
            &signed_message(CERTIFICATE_CONTEXT, f),
            &self.signature,
        ) {
            return Err(bad(
                None,
                "the certificate's signature is not valid for this key",
            ));
        }
        let Proof::Inclusion { checkpoint, .. } = &self.proof else {
            return Err(bad(None, "a certificate carries an inclusion proof"));
        };
        if *checkpoint != f.checkpoint {
            return Err(bad(
                None,
                "the proof leads to another checkpoint than the certificate's",
            ));
        }
        let ProofVerdict::Included {
            full: Some(entry), ..
        } = self.proof.verify(key, None)?
        else {
            return Err(bad(
                None,
                "a certificate carries an inclusion proof with the full registration entry",
            ));
        };
        if registration_facts(&entry, f.checkpoint.clone()).as_ref() != Some(f) {
            return Err(bad(
                Some(entry.index),
                "the logged registration disagrees with the certificate",
            ));
        }
        Ok(f)
    }
}

fn first_version() -> u64 {
    1
}

fn is_first_version(v: &u64) -> bool {
    *v == 1
}
