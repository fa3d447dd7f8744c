//! The command line's grammar (clap): every command, its arguments and its help text.
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "veil", version, about = "Veil: data usable, but not visible.")]
pub(crate) struct Cli {
    /// Data directory holding the embedded store, datasets and keys.
    #[arg(
        long,
        global = true,
        env = "VEIL_DATA_DIR",
        default_value = "./veil-data"
    )]
    pub data_dir: PathBuf,
    /// Principal to act as in local mode: a principal stored in the data directory (its role
    /// decides what it may do). Without it, the host's operator (an admin).
    #[arg(long = "as", global = true, value_name = "PRINCIPAL")]
    pub as_principal: Option<String>,
    /// Work against this Veil server (remote mode), e.g. http://127.0.0.1:8420; the token is read
    /// from VEIL_TOKEN.
    #[arg(long, global = true, env = "VEIL_SERVER", value_name = "URL")]
    pub server: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Create the data directory, store and signing key (also done on first use).
    Init,
    /// Run the end-to-end demo on a synthetic census.
    Demo {
        /// People in the synthetic census.
        #[arg(long, default_value_t = 100_000)]
        people: usize,
    },
    /// Register and list datasets.
    #[command(subcommand)]
    Dataset(DatasetCmd),
    /// Set and show release policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Submit, approve and inspect jobs.
    #[command(subcommand)]
    Job(JobCmd),
    /// Show the privacy budget spent and left (`--as CONSUMER`).
    Budget {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Export, verify and read the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// The domain's signing key.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Link two holders' datasets on their link keys (docs/linking.md).
    #[command(subcommand)]
    Link(LinkCmd),
    /// Check job receipts.
    #[command(subcommand)]
    Receipt(ReceiptCmd),
    /// Serve the HTTP API (`/v1/...`; token authentication). Settings: `--config FILE` (TOML:
    /// listen, data_dir, workers), then VEIL_LISTEN, VEIL_DATA_DIR, VEIL_WORKERS, then `--listen`.
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Administration: principals and their tokens (`--as ADMIN`).
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Check dataset registration certificates.
    #[command(subcommand)]
    Certificate(CertificateCmd),
    /// Show who the commands act as: the token's principal (remote) or `--as` (local).
    Whoami,
}

#[derive(Subcommand)]
pub(crate) enum AdminCmd {
    /// Create a principal and print its token, once (only its hash is stored).
    AddPrincipal {
        name: String,
        #[arg(long, value_parser = ["holder", "consumer", "reviewer", "admin"])]
        role: String,
    },
    /// List principals and their roles (never tokens).
    Principals,
    /// Revoke a principal's token; the name stays taken and its history stays in the log.
    Revoke { name: String },
    /// Replace a principal's token with a fresh one, printed once (re-enables a revoked one).
    ReissueToken { name: String },
}

#[derive(Subcommand)]
pub(crate) enum CertificateCmd {
    /// Check a registration certificate offline with only the public key; exit 0 or 1.
    Verify {
        certificate: PathBuf,
        /// The public key (as printed by `veil keys public`) or a file containing it.
        #[arg(long)]
        public_key: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum ReceiptCmd {
    /// Check a receipt offline with only the public key; exit 0 if it holds, 1 if not.
    Verify {
        receipt: PathBuf,
        /// The public key (as printed by `veil keys public`) or a file containing it.
        #[arg(long)]
        public_key: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum DatasetCmd {
    /// Register a CSV, Parquet or Arrow IPC file.
    Add {
        file: PathBuf,
        #[arg(long)]
        name: String,
        /// Column identifying the person (privacy unit); without it each row is a unit.
        #[arg(long)]
        privacy_unit: Option<String>,
        /// An identifier column (national ID, phone number) to link on: each value is replaced,
        /// on this machine, by its join token from the domain's OPRF (repeatable; a Parquet or
        /// Arrow IPC file is registered as Parquet).
        /// The raw identifiers never leave this machine (docs/linking.md).
        #[arg(long = "link-key", value_name = "COLUMN")]
        link_keys: Vec<String>,
        /// CSV column names, optionally typed: `name,...` or `name:type,...` (bool, int, float,
        /// text). Without `--header` the file has no header row; with it they replace its names.
        #[arg(long, value_name = "NAME[:TYPE],...")]
        columns: Option<String>,
        /// The CSV's first row holds column names (default: detected; a first row that looks like
        /// data is refused until you say which it is).
        #[arg(long, conflicts_with = "no_header")]
        header: bool,
        /// The CSV has no header row (give `--columns`).
        #[arg(long, requires = "columns")]
        no_header: bool,
        /// CSV field separator (default `,`; `tab` for tabs).
        #[arg(long, value_name = "CHAR")]
        delimiter: Option<String>,
        /// CSV quote character (default `"`).
        #[arg(long, value_name = "CHAR")]
        quote: Option<String>,
        /// Keep spaces around CSV values (default: trimmed).
        #[arg(long)]
        no_trim: bool,
        /// Comma-separated tokens that mean "no value" in a CSV (default: empty, NA, N/A, NULL, ?).
        #[arg(long, value_name = "TOKENS")]
        null: Option<String>,
        /// Register the file as the next version of your dataset NAME (the policy carries over
        /// if it still fits; jobs that start from now on read the new version).
        #[arg(long)]
        replace: bool,
    },
    /// Retire one of your datasets: its data files are deleted, jobs waiting on it refused; its
    /// log entries, jobs and budgets stay, and its name stays taken.
    Remove { name: String },
    /// The signed registration certificate of a dataset (`--as HOLDER`, its owner), as JSON.
    Certificate {
        name: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List registered datasets (metadata only).
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Subcommand)]
pub(crate) enum PolicyCmd {
    /// Set a new policy version on a dataset (`--as` its owner).
    Set { dataset: String, file: PathBuf },
    /// Show a dataset's current policy.
    Show { dataset: String },
}

#[derive(Subcommand)]
pub(crate) enum JobCmd {
    /// Submit a job (`--as CONSUMER`): a manifest file, or a SQL one-liner (`--sql`); prints the
    /// job id.
    Submit {
        #[command(flatten)]
        job: JobSource,
    },
    /// Check a job without submitting it (`--as CONSUMER`): every check that needs no data, and
    /// the noise scale and 95% interval of each released cell. Spends nothing.
    Check {
        #[command(flatten)]
        job: JobSource,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a job waiting for you (`--as HOLDER`) and run it.
    Approve { job: String },
    /// Reject a job waiting for you (`--as HOLDER`).
    Reject {
        job: String,
        #[arg(long, default_value = "rejected by the data holder")]
        reason: String,
    },
    /// A job's state and reason code.
    Status { job: String },
    /// A job's details for its holder: module hash, manifest, requested ε.
    Show { job: String },
    /// Jobs you submitted or that run on your datasets.
    List,
    /// Holder-only log of a job (module log, traps, bounding statistics).
    Logs { job: String },
    /// The signed receipt of a released job (`--as CONSUMER`), as JSON.
    Receipt {
        job: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A released result (`--as CONSUMER`).
    Result {
        job: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Subcommand)]
pub(crate) enum AuditCmd {
    /// Write the log as JSON lines with a signed checkpoint.
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify an exported log offline (`--log FILE --public-key KEY`), or this store's own log.
    Verify {
        #[arg(long, requires = "public_key")]
        log: Option<PathBuf>,
        /// The public key (as printed by `veil keys public`) or a file containing it.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Print the log, optionally filtered.
    Log {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long)]
        consumer: Option<String>,
        /// SHA-256 of a module.
        #[arg(long)]
        module: Option<String>,
        /// One of refused, approved, rejected, released, denied.
        #[arg(long, value_parser = ["refused", "approved", "rejected", "released", "denied"])]
        decision: Option<String>,
        /// Entries at or after this RFC 3339 time or date (2026-11-29).
        #[arg(long)]
        since: Option<String>,
        /// Entries before this RFC 3339 time or date.
        #[arg(long)]
        until: Option<String>,
    },
    /// ε spent per consumer and dataset over time, jobs by outcome, refusals by reason, and
    /// anomalies a reviewer should look at.
    Summary {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print a fresh signed checkpoint (C2SP signed note) over the whole log.
    Checkpoint {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write an inclusion proof (`--entry I`) or a consistency proof (`--from M`) as JSON.
    Prove {
        /// Prove that this entry is in the log.
        #[arg(long, conflicts_with = "from", required_unless_present = "from")]
        entry: Option<u64>,
        /// Prove that the log extends its first M entries.
        #[arg(long)]
        from: Option<u64>,
        /// The size of the tree to prove against (default: the whole log).
        #[arg(long)]
        size: Option<u64>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a proof offline with only the public key; exit 0 if it holds, 1 if not.
    VerifyProof {
        #[arg(long)]
        proof: PathBuf,
        /// The public key (as printed by `veil keys public`) or a file containing it.
        #[arg(long)]
        public_key: String,
        /// For a consistency proof: the older checkpoint you already hold (a file). Without it the
        /// proof is checked against its own copy of the old checkpoint.
        #[arg(long)]
        old_checkpoint: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum LinkCmd {
    /// Propose linking your dataset with another holder's on their link keys.
    Propose {
        /// Your dataset.
        dataset: String,
        /// Its link-key column.
        #[arg(long)]
        key: String,
        /// The other dataset, by id (`owner:name`).
        #[arg(long = "with", value_name = "DATASET")]
        other: String,
        /// The other dataset's link-key column.
        #[arg(long)]
        their_key: String,
    },
    /// Accept a link proposed to one of your datasets.
    Accept { link: String },
    /// Reject a link proposed to one of your datasets.
    Reject {
        link: String,
        #[arg(long)]
        reason: String,
    },
    /// End a link touching one of your datasets (or withdraw your proposal).
    Revoke {
        link: String,
        #[arg(long)]
        reason: String,
    },
    /// List the links you may see.
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print the domain's link key (what evaluations are proved against).
    Key,
}

#[derive(Subcommand)]
pub(crate) enum KeysCmd {
    /// Print the public key that signs this domain's audit log now.
    Public,
    /// Print the log's first key: the root a reviewer verifies from.
    First,
    /// Rotate the signing key: the old key signs a hand-over entry naming the new one.
    Rotate,
}

/// A job to submit or check: a manifest file (docs/jobs.md, or a SQL manifest, docs/sql.md), or
/// a SQL query given on the command line with its dataset and ε.
#[derive(clap::Args, Debug)]
pub(crate) struct JobSource {
    /// The job manifest (TOML).
    #[arg(required_unless_present = "sql", conflicts_with = "sql")]
    pub manifest: Option<PathBuf>,
    /// A DP SQL query (docs/sql.md), instead of a manifest.
    #[arg(long, requires_all = ["dataset", "epsilon"])]
    pub sql: Option<String>,
    /// With `--sql`: the dataset the query reads.
    #[arg(long, requires = "sql")]
    pub dataset: Option<String>,
    /// With `--sql`: the ε the job spends.
    #[arg(long, requires = "sql")]
    pub epsilon: Option<f64>,
    /// With `--sql`: why the job runs (shown to the holder and the reviewers).
    #[arg(long, requires = "sql")]
    pub purpose: Option<String>,
}
