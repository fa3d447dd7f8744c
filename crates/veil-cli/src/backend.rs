//! The one client path: every command that asks the domain something goes through [`Backend`],
//! implemented once on a local store ([`crate::local::Local`], acting as a stored principal) and
//! once over HTTP ([`crate::remote::Remote`], acting as the token's principal). Both return the
//! same typed values, so `commands.rs` dispatches and prints each command once, and the two modes
//! answer alike (`tests/integration/remote_cli.rs` checks every command for every role).
use std::path::Path;

use serde::Deserialize;
use veil_audit::{Certificate, Proof, Receipt};
pub(crate) use veil_engine::JobCheck;
use veil_engine::{
    AuditEntry, BudgetLine, CsvFlags, DatasetView, JobView, PolicyDocument, PolicyVersion,
    Principal, Registered, Release, Role, Submission,
};

/// A job as a client sends it: the manifest's text and the module's bytes (empty for a SQL job).
pub(crate) struct JobFiles {
    pub manifest: String,
    pub module: Vec<u8>,
}

impl JobFiles {
    /// The job `source` names: a manifest file and the module it names, or a SQL one-liner
    /// turned into the manifest it stands for.
    pub(crate) fn read(source: &crate::args::JobSource) -> anyhow::Result<JobFiles> {
        if let Some(path) = &source.manifest {
            let (manifest, module) = veil_engine::read_job_files(path)?;
            return Ok(JobFiles { manifest, module });
        }
        let (Some(sql), Some(dataset), Some(epsilon)) =
            (&source.sql, &source.dataset, source.epsilon)
        else {
            anyhow::bail!("give a manifest file, or `--sql` with `--dataset` and `--epsilon`");
        };
        // TOML strings via the toml crate's own quoting: the query may hold any character.
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let mut manifest = format!(
            "dataset = {}\nsql = {}\nepsilon = {epsilon}\n",
            quote(dataset),
            quote(sql)
        );
        if let Some(purpose) = &source.purpose {
            manifest += &format!("purpose = {}\n", quote(purpose));
        }
        Ok(JobFiles {
            manifest,
            module: Vec::new(),
        })
    }
}

/// Who the commands act as.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Identity {
    pub name: String,
    pub role: Role,
}

/// The domain's public keys, as text (`veil keys public` / `first`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PublicKeys {
    /// The key that signs the log now.
    pub public_key: String,
    /// The log's first key: the root a reviewer verifies from.
    pub first_public_key: String,
}

/// Which audit entries to show; every field narrows (all `None`: every entry the caller may see).
#[derive(Debug, Clone, Default)]
pub(crate) struct LogQuery {
    pub dataset: Option<String>,
    pub consumer: Option<String>,
    pub module: Option<String>,
    pub decision: Option<veil_audit::review::Decision>,
    pub since: Option<String>,
    pub until: Option<String>,
}

/// What a proof should show.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ProofRequest {
    /// That entry `entry` is in the log of `size` entries (default: the whole log).
    Inclusion { entry: u64, size: Option<u64> },
    /// That the log of `size` entries extends its first `from` entries.
    Consistency { from: u64, size: Option<u64> },
}

/// A dataset file to register, with how to read it.
pub(crate) struct Registration<'a> {
    pub file: &'a Path,
    pub name: &'a str,
    pub privacy_unit: Option<&'a str>,
    /// How to read a CSV file, as typed (the engine parses them, in both modes).
    pub csv: CsvFlags,
    /// Register the file as the next version of the caller's dataset `name`.
    pub replace: bool,
    /// Columns of join tokens (already tokenised by `tokens::tokenize`).
    pub link_keys: &'a [String],
}

/// A link proposal: the caller's dataset and key, the other dataset and its key.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct LinkProposal {
    pub dataset: String,
    pub key: String,
    #[serde(rename = "with")]
    pub other: String,
    pub their_key: String,
}

/// The operations a client may ask of the domain. Errors are the domain's answer (not found,
/// forbidden, bad input, ...) with the same message in both modes.
pub(crate) trait Backend {
    fn whoami(&mut self) -> anyhow::Result<Identity>;
    fn register_dataset(&mut self, r: Registration<'_>) -> anyhow::Result<Registered>;
    /// Retires one of the caller's datasets; answers how many versions it had.
    fn remove_dataset(&mut self, name: &str) -> anyhow::Result<u64>;
    fn datasets(&mut self) -> anyhow::Result<Vec<DatasetView>>;
    fn dataset_certificate(&mut self, name: &str) -> anyhow::Result<Certificate>;
    fn set_policy(&mut self, dataset: &str, toml: &str) -> anyhow::Result<PolicyVersion>;
    fn policy(&mut self, dataset: &str) -> anyhow::Result<PolicyDocument>;
    fn budget(&mut self) -> anyhow::Result<Vec<BudgetLine>>;
    /// The domain's published link key.
    fn link_key(&mut self) -> anyhow::Result<veil_engine::LinkKey>;
    /// Proposes a link (see `veil_engine::Veil::propose_link`).
    fn propose_link(&mut self, proposal: &LinkProposal) -> anyhow::Result<veil_engine::Link>;
    /// Accepts (`reject` = `None`) or rejects a link proposed to the caller.
    fn decide_link(
        &mut self,
        link: &str,
        reject: Option<&str>,
    ) -> anyhow::Result<veil_engine::Link>;
    /// The links the caller may see.
    fn links(&mut self) -> anyhow::Result<Vec<veil_engine::Link>>;
    /// Ends a link touching one of the caller's datasets.
    fn revoke_link(&mut self, link: &str, reason: &str) -> anyhow::Result<veil_engine::Link>;
    /// Has the domain evaluate a batch of blinded identifiers (hex).
    fn evaluate_link(&mut self, blinded: &[String]) -> anyhow::Result<veil_engine::LinkEvaluation>;

    /// Submits a job (its manifest text and module bytes; none for a SQL job) and answers once it
    /// has settled (or is waiting for its holder).
    fn submit(&mut self, job: &JobFiles) -> anyhow::Result<Submission>;
    /// Checks a job without submitting it.
    fn check(&mut self, job: &JobFiles) -> anyhow::Result<JobCheck>;
    /// Approves a job and answers once it has settled.
    fn approve(&mut self, job: &str) -> anyhow::Result<JobView>;
    fn reject(&mut self, job: &str, reason: &str) -> anyhow::Result<()>;
    fn job(&mut self, job: &str) -> anyhow::Result<JobView>;
    fn jobs(&mut self) -> anyhow::Result<Vec<JobView>>;
    fn job_logs(&mut self, job: &str) -> anyhow::Result<Vec<String>>;
    fn job_receipt(&mut self, job: &str) -> anyhow::Result<Receipt>;
    fn job_result(&mut self, job: &str) -> anyhow::Result<Release>;

    /// The log as JSON lines with a signed checkpoint.
    fn audit_export(&mut self) -> anyhow::Result<String>;
    /// A fresh signed checkpoint (C2SP signed note).
    fn audit_checkpoint(&mut self) -> anyhow::Result<String>;
    fn audit_log(&mut self, query: &LogQuery) -> anyhow::Result<Vec<AuditEntry>>;
    fn prove(&mut self, request: ProofRequest) -> anyhow::Result<Proof>;
    fn public_keys(&mut self) -> anyhow::Result<PublicKeys>;

    /// Creates a principal and returns its token (shown once).
    fn add_principal(&mut self, name: &str, role: Role) -> anyhow::Result<String>;
    fn principals(&mut self) -> anyhow::Result<Vec<Principal>>;
    fn revoke(&mut self, name: &str) -> anyhow::Result<()>;
    /// Replaces a principal's token and returns the new one (shown once).
    fn reissue_token(&mut self, name: &str) -> anyhow::Result<String>;
}
