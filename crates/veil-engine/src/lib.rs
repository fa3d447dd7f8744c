//! The Veil engine: one data directory, one embedded store, and the whole pipeline.
//!
//! ```text
//! register dataset ─▶ set policy ─▶ submit job ─▶ pre-check / approval ─▶ sandbox run ─▶ gate ─▶ audit ─▶ release
//!   (veil-catalog)    (veil-policy)   (jobs/)        (veil-policy, here)   (veil-sandbox)  (veil-policy) (veil-audit)
//! ```
//!
//! [`Veil::open`] opens (or creates) a data directory: `veil.db` (SQLite, WAL, `synchronous=FULL`)
//! holds the catalog, policies, jobs, modules, the budget ledger, holder-only job logs and the audit
//! log; `datasets/` holds content-addressed Parquet files; `keys/` the domain's Ed25519 key.
//!
//! Ordering guarantees (SECURITY.md, invariant 2):
//! - a job's ε is debited in the same transaction that records `job_started`, committed before the
//!   module runs — whatever happens afterwards, the budget is spent;
//! - a result becomes readable only in the transaction that records `release_created` with its hash;
//! - a job found `running` whose process is gone (a crash) is closed as failed, with an audit entry,
//!   the next time the store is opened.
//!
//! Every operation on a principal's objects takes the [`Caller`] it is made for; who may do and
//! see what is decided in one place (`access.rs`, [`Operation`]), for the server and the CLI alike.
//!
//! ```no_run
//! use veil_engine::{Caller, EngineConfig, Role, Veil};
//! # fn main() -> veil_engine::Result<()> {
//! let mut veil = Veil::open("./veil-data".as_ref(), EngineConfig::default())?;
//! let operator = Caller::operator();
//! veil.create_principal(&operator, "hospital", Role::Holder)?;
//! veil.create_principal(&operator, "researcher", Role::Consumer)?;
//! let hospital = Caller::new("hospital", Role::Holder);
//! veil.register_dataset(&hospital, "people.csv".as_ref(), "people", Some("patient_id"), Default::default())?;
//! veil.set_policy(&hospital, "people", "policy.toml".as_ref())?;
//! let researcher = Caller::new("researcher", Role::Consumer);
//! let outcome = veil.submit_job(&researcher, "job.toml".as_ref())?;
//! println!("{}", outcome.job);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod access;
mod codes;
mod datasets;
mod error;
mod execute;
mod jobs;
mod link;
mod linked_rows;
mod links;
mod lookups;
mod principals;
mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use veil_audit::{AuditError, AuditEvent, AuditLog, DomainKey, VerifierKey};
use veil_sandbox::{Sandbox, SandboxConfig};

pub use access::{Caller, DatasetView, JobView, OPERATOR, Operation, Viewer, require};
pub use codes::{ConsumerCode, ConsumerState, JobCode};
pub use datasets::{
    PolicyDocument, PolicyRevision, PolicyVersion, RegisterOptions, Registered, StoredPolicy,
};
pub use error::{EngineError, ErrorKind, Result};
pub use jobs::lifecycle::read_job_files;
pub use jobs::{
    BudgetLine, ConsumerBudget, ConsumerJobView, JobCheck, JobInfo, JobRun, JobState, LinkedLeft,
    Submission, SubmitOutcome,
};
pub use link::{LinkEvaluation, LinkKey, parse_link_key};
pub use links::{Link, LinkSide, LinkState};
pub use principals::{Principal, Role};
pub use veil_audit::Entry as AuditEntry;
pub use veil_catalog::DatasetRecord;
pub use veil_catalog::{CsvFlags, CsvOptions, Header as CsvHeader, IngestReport};
pub use veil_policy::gate::{CellForecast, Forecast, NoisyCell, ReleasedRow, ValueForecast};
pub use veil_policy::{Approval, Epsilon, Mean, QuantileCell, Release, ReleasedValue};

/// Operator settings for an engine. Build with [`EngineConfig::builder`] or use the defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    sandbox: SandboxConfig,
    workers: usize,
    unit_overhead: Duration,
    block_overhead: Duration,
    picos_per_fuel: u64,
    max_open_jobs: u64,
    max_refused_per_hour: u64,
    max_link_evaluations_per_hour: u64,
    domain: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        EngineConfig {
            sandbox: SandboxConfig::builder()
                .max_concurrent_instances(workers as u32 * 2 + 2)
                .build(),
            workers,
            unit_overhead: Duration::from_micros(20),
            block_overhead: Duration::from_millis(10),
            picos_per_fuel: 5_000,
            max_open_jobs: 64,
            max_refused_per_hour: 100,
            max_link_evaluations_per_hour: 20_000_000,
            domain: "veil.local/audit".into(),
        }
    }
}

impl EngineConfig {
    pub fn builder() -> EngineConfigBuilder {
        EngineConfigBuilder(EngineConfig::default())
    }

    /// The cost model jobs are scheduled with (see `veil_policy::schedule`).
    pub fn cost_model(&self) -> veil_policy::schedule::CostModel {
        veil_policy::schedule::CostModel {
            unit_overhead: self.unit_overhead,
            block_overhead: self.block_overhead,
            picos_per_fuel: self.picos_per_fuel,
            threads: self.workers as u32,
            max_fuel_per_unit: self.sandbox.fuel_per_unit(),
        }
    }
}

/// Typed builder for [`EngineConfig`].
#[derive(Debug, Clone)]
pub struct EngineConfigBuilder(EngineConfig);

impl EngineConfigBuilder {
    /// Sandbox limits (fuel, memory, deadlines) for each privacy unit. Default:
    /// [`SandboxConfig`]'s defaults with `max_concurrent_instances` = 2 × cores + 2 (each knob
    /// states its own default and limit there).
    pub fn sandbox(mut self, sandbox: SandboxConfig) -> Self {
        self.0.sandbox = sandbox;
        self
    }
    /// Threads that run one job's units in parallel. Default: the machine's cores. The schedule
    /// counts on exactly this many, so fewer cores than threads make jobs release late. Never
    /// less than one.
    pub fn workers(mut self, n: usize) -> Self {
        self.0.workers = n.max(1);
        self
    }
    /// Worst-case host time per privacy unit (encoding, a fresh instance, bounding), for job
    /// schedules. Default 20 µs. Too low for the machine: jobs release after their scheduled
    /// time (a timing residual, SECURITY.md); too high: jobs wait longer than they need.
    pub fn unit_overhead(mut self, d: Duration) -> Self {
        self.0.unit_overhead = d;
        self
    }
    /// Worst-case host time per block in sample-and-aggregate mode. Default 10 ms (a component
    /// instance of an interpreted guest). At the limit: as [`Self::unit_overhead`].
    pub fn block_overhead(mut self, d: Duration) -> Self {
        self.0.block_overhead = d;
        self
    }
    /// Worst-case time per unit of fuel, in picoseconds, covering instructions, host calls and
    /// the memory growth fuel pays for. Default 5,000 (5 ns). At the limit: as
    /// [`Self::unit_overhead`].
    pub fn picos_per_fuel(mut self, picos: u64) -> Self {
        self.0.picos_per_fuel = picos.max(1);
        self
    }
    /// Submissions of one consumer the pre-check may refuse within an hour; more are answered
    /// [`EngineError::Busy`] before anything is stored. A refused submission is recorded with its
    /// module (the log and the job refer to it), so without this cap a consumer could grow the
    /// store by submitting modules it knows will be refused. `job check` stores no module.
    /// Default 100 (at least 1).
    pub fn max_refused_per_hour(mut self, n: u64) -> Self {
        self.0.max_refused_per_hour = n.max(1);
        self
    }
    /// Identifiers one holder may have the domain evaluate (to join tokens) within an hour; a
    /// batch beyond it is answered [`EngineError::Busy`] before anything is evaluated. Every
    /// evaluation is audited, but only a cap slows a holder who tokenises guessed identifiers to
    /// test them against others' tokens. Default 20,000,000 (a 10-million-row file twice an
    /// hour; at least 1).
    pub fn max_link_evaluations_per_hour(mut self, n: u64) -> Self {
        self.0.max_link_evaluations_per_hour = n.max(1);
        self
    }
    /// Jobs one consumer may have queued, awaiting approval or running at once; more are refused
    /// before anything is recorded ([`EngineError::Busy`]), so nobody can flood the queue or the
    /// log. Queued jobs are not charged until they start, hence a cap of its own. Default 64.
    pub fn max_open_jobs(mut self, n: u64) -> Self {
        self.0.max_open_jobs = n.max(1);
        self
    }
    /// Name of the audit log's origin and signing key (C2SP note name). Default
    /// `veil.local/audit`. Checkpoints and receipts name it; verifiers compare it.
    pub fn domain(mut self, name: &str) -> Self {
        self.0.domain = name.into();
        self
    }
    /// The configuration; every knob not set keeps its default.
    pub fn build(self) -> EngineConfig {
        self.0
    }
}

/// What every engine handle of a process shares: the sandbox (wasmtime engines, the compiled-module
/// cache, the epoch ticker), built on first use, and the tokio runtime DataFusion runs on. Built
/// once per process ([`Runtime::new`]) and handed to each [`Veil::open_with`], so that request
/// handlers and workers compile a module once and keep one set of engines and threads.
///
/// Owns no store state: connections and the signing key belong to each [`Veil`] handle.
pub struct Runtime {
    config: EngineConfig,
    sandbox: Mutex<Option<Arc<Sandbox>>>,
    tokio: tokio::runtime::Runtime,
}

impl Runtime {
    /// A runtime with `config` (threads per job, sandbox limits, cost model) for every handle.
    pub fn new(config: EngineConfig) -> Result<Arc<Runtime>> {
        // Every handle of the process runs its DataFusion work here: all cores, not one job's
        // share of them.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores.max(config.workers))
            .enable_all()
            .build()?;
        Ok(Arc::new(Runtime {
            config,
            sandbox: Mutex::new(None),
            tokio,
        }))
    }

    /// The configuration every handle runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The sandbox, built on first use. Compiled code is cached beside the store of the first
    /// caller (`data_dir/module-cache`) unless the operator chose a place.
    fn sandbox(&self, data_dir: &Path) -> Result<Arc<Sandbox>> {
        let mut slot = self
            .sandbox
            .lock()
            .map_err(|_| EngineError::Internal("the sandbox lock is poisoned".into()))?;
        if let Some(sandbox) = slot.as_ref() {
            return Ok(sandbox.clone());
        }
        let mut config = self.config.sandbox.clone();
        if config.disk_cache_dir().is_none() {
            config = config
                .into_builder()
                // wasmtime's cache wants an absolute path; the data dir may be relative.
                .disk_cache_dir(
                    std::path::absolute(data_dir.join("module-cache"))
                        .map_err(|e| EngineError::Internal(format!("module cache: {e}")))?,
                )
                .build();
        }
        let sandbox = Arc::new(Sandbox::new(config)?);
        *slot = Some(sandbox.clone());
        Ok(sandbox)
    }
}

/// An open data directory: a handle with its own store connection and signing key, on a shared
/// [`Runtime`]. Cheap to open beside others of the same process.
pub struct Veil {
    data_dir: PathBuf,
    conn: Connection,
    key: DomainKey,
    /// The link OPRF key (`link.rs`), created with the domain key.
    link_key: veil_link::OprfKey,
    config: EngineConfig,
    shared: Arc<Runtime>,
}

impl Veil {
    /// Opens or initialises a data directory on a runtime of its own (the CLI's way), creating
    /// the signing key on first use and closing jobs left running by a crashed process.
    pub fn open(data_dir: &Path, config: EngineConfig) -> Result<Veil> {
        Veil::open_with(data_dir, Runtime::new(config)?)
    }

    /// Opens a data directory on a shared [`Runtime`] (the service's way: one runtime, a handle
    /// per request engine and worker).
    pub fn open_with(data_dir: &Path, shared: Arc<Runtime>) -> Result<Veil> {
        let config = shared.config.clone();
        std::fs::create_dir_all(data_dir)?;
        let conn = store::open(&data_dir.join("veil.db"))?;
        finish_key_rotation(&conn, data_dir, &config.domain)?;
        let (key, _created) = DomainKey::load_or_create(&key_path(data_dir), &config.domain)?;
        let link_key = link::load_or_create_link_key(&link::link_key_path(data_dir))?;
        let mut veil = Veil {
            data_dir: data_dir.to_owned(),
            conn,
            key,
            link_key,
            config,
            shared,
        };
        let empty: bool = veil
            .conn
            .query_row("SELECT COUNT(*) = 0 FROM audit_log", [], |r| r.get(0))?;
        if empty {
            let tx = veil
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let still_empty: bool =
                tx.query_row("SELECT COUNT(*) = 0 FROM audit_log", [], |r| r.get(0))?;
            if still_empty {
                AuditLog::append(
                    &tx,
                    &veil.key,
                    AuditEvent::LogCreated {
                        public_key: veil.key.verifier().to_string(),
                    },
                )?;
                AuditLog::set_current_key(&tx, &veil.key.verifier())?;
            }
            tx.commit()?;
        } else if AuditLog::current_key(&veil.conn)?.is_none() {
            // A store from before key rotation existed: its key is the current one.
            AuditLog::set_current_key(&veil.conn, &veil.key.verifier())?;
        }
        veil.recover_interrupted_jobs()?;
        Ok(veil)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The public key that verifies this domain's audit log, in C2SP note-key form.
    pub fn public_key(&self) -> VerifierKey {
        self.key.verifier()
    }

    fn sandbox(&self) -> Result<Arc<Sandbox>> {
        self.shared.sandbox(&self.data_dir)
    }

    /// Runs `future` (DataFusion work) to completion on the shared tokio runtime.
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.shared.tokio.block_on(future)
    }

    /// Exports the audit log (JSON lines plus a fresh signed checkpoint).
    pub fn export_audit(&self) -> Result<String> {
        Ok(veil_audit::export_lines(&self.conn, &self.key)?)
    }

    /// Verifies the store's own log, as an offline reviewer would: from the log's first key,
    /// following every key hand-over.
    pub fn verify_audit(&self) -> Result<veil_audit::VerifiedLog> {
        let text = self.export_audit()?;
        Ok(veil_audit::verify_export(&text, &self.first_public_key()?)?)
    }

    /// The key the log started with (named by its first entry): the root of the key chain.
    pub fn first_public_key(&self) -> Result<veil_audit::VerifierKey> {
        let first = AuditLog::entries(&self.conn)?
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Internal("the audit log is empty".into()))?;
        match first.event {
            AuditEvent::LogCreated { public_key } => {
                Ok(veil_audit::VerifierKey::parse(&public_key)?)
            }
            _ => Err(EngineError::Internal(
                "the audit log does not start with its key".into(),
            )),
        }
    }

    /// Rotates the audit signing key: the current key signs a `key_rotated` entry naming a fresh
    /// key, which signs everything after. The new key is on disk (0600, synced) before the entry
    /// commits; if the process dies between the two, the next open finishes or discards the
    /// hand-over to match the log. The old private key is deleted.
    pub fn rotate_key(&mut self) -> Result<veil_audit::VerifierKey> {
        let new = DomainKey::generate(self.key.name())?;
        let next = next_key_path(&self.data_dir);
        if next.exists() {
            std::fs::remove_file(&next)?;
        }
        new.save_new(&next)?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        AuditLog::append(
            &tx,
            &self.key,
            AuditEvent::KeyRotated {
                new_public_key: new.verifier().to_string(),
                fingerprint: new.verifier().fingerprint(),
            },
        )?;
        AuditLog::set_current_key(&tx, &new.verifier())?;
        tx.commit()?;
        std::fs::rename(&next, key_path(&self.data_dir))?;
        self.key = new;
        Ok(self.key.verifier())
    }

    /// The registration certificate of `dataset` (an id, or a short name in `holder`'s namespace),
    /// for its owner.
    pub fn dataset_certificate(
        &self,
        holder: &Caller,
        dataset: &str,
    ) -> Result<veil_audit::Certificate> {
        // Seen by those who may see the dataset (others: like a missing one), issued to its owner
        // (a holder sees only its own datasets).
        let record = self.find_dataset(holder, dataset)?;
        access::require(holder, access::Operation::ReadCertificate)?;
        Ok(veil_audit::issue_certificate(
            &self.conn,
            &self.key,
            &record.name,
        )?)
    }

    /// A fresh signed checkpoint (C2SP signed note) over the whole log.
    pub fn audit_checkpoint(&self) -> Result<String> {
        Ok(AuditLog::checkpoint(&self.conn, &self.key)?.note)
    }

    /// Proof that entry `index` is in the first `size` entries, showing `who` what it may see of
    /// the entry: reviewers and admins the full entry; a dataset's owner the full entries about
    /// its dataset and its jobs; a consumer the public part of its own jobs' entries. Any other
    /// entry answers exactly like one beyond the log.
    pub fn prove_inclusion_as(
        &self,
        who: &Caller,
        index: u64,
        size: Option<u64>,
    ) -> Result<veil_audit::Proof> {
        let unseen = || EngineError::NotFound(format!("no entry {index} to prove"));
        let entry = AuditLog::entry(&self.conn, index)?.ok_or_else(unseen)?;
        let disclosure = self.disclosure(who, &entry)?.ok_or_else(unseen)?;
        veil_audit::prove_inclusion(&self.conn, &self.key, index, size, disclosure)
            .map_err(|_| unseen())
    }

    /// How much of `entry` `who` may see, if anything.
    fn disclosure(
        &self,
        who: &Caller,
        entry: &AuditEntry,
    ) -> Result<Option<veil_audit::Disclosure>> {
        use veil_audit::Disclosure;
        let public = entry.public();
        let owns = |dataset: &str| -> Result<bool> {
            Ok(veil_catalog::get(&self.conn, dataset)?.is_some_and(|d| d.owner == who.name))
        };
        let job = match public.text("job") {
            Some(id) => jobs::job_owners(&self.conn, id)?,
            None => None,
        };
        Ok(match who.role {
            Role::Reviewer | Role::Admin => Some(Disclosure::Full),
            Role::Consumer => job
                .filter(|(consumer, _)| *consumer == who.name)
                .map(|_| Disclosure::Public),
            Role::Holder => {
                let dataset = match &job {
                    Some((_, dataset)) => Some(dataset.as_str()),
                    None => public.text("dataset"),
                };
                match dataset {
                    Some(d) if owns(d)? => Some(Disclosure::Full),
                    _ => None,
                }
            }
        })
    }

    /// Proof that the first `new_size` entries (default: all) extend the first `old_size`; sizes
    /// beyond the log are [`EngineError::NotFound`].
    pub fn prove_consistency(
        &self,
        old_size: u64,
        new_size: Option<u64>,
    ) -> Result<veil_audit::Proof> {
        // A size beyond the log names a tree that does not exist.
        veil_audit::prove_consistency(&self.conn, &self.key, old_size, new_size).map_err(
            |e| match e {
                AuditError::Verification { .. } => EngineError::NotFound(e.to_string()),
                e => e.into(),
            },
        )
    }

    /// Checks that the store answers (a read of the audit log's first entry), for health probes.
    pub fn check_store(&self) -> Result<()> {
        self.conn
            .query_row("SELECT 1 FROM audit_log LIMIT 1", [], |_| Ok(()))?;
        Ok(())
    }

    /// All audit entries, for display.
    pub fn audit_entries(&self) -> Result<Vec<AuditEntry>> {
        Ok(AuditLog::entries(&self.conn)?)
    }
}

fn key_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("keys").join("audit-signing.key")
}

fn next_key_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("keys").join("audit-signing.key.next")
}

/// Completes a key rotation interrupted after the new key was written: installs the new key if
/// the log already hands over to it, discards it otherwise.
fn finish_key_rotation(conn: &rusqlite::Connection, data_dir: &Path, name: &str) -> Result<()> {
    let next = next_key_path(data_dir);
    if !next.exists() {
        return Ok(());
    }
    let (candidate, _) = DomainKey::load_or_create(&next, name)?;
    if AuditLog::current_key(conn)?.as_deref() == Some(candidate.verifier().to_string().as_str()) {
        std::fs::rename(&next, key_path(data_dir))?;
    } else {
        std::fs::remove_file(&next)?;
    }
    Ok(())
}
