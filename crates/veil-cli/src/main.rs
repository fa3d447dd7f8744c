//! `veil`: the command line for data holders, consumers and reviewers — on a data directory
//! (local mode, `--as NAME`) or against a server (remote mode, `--server URL` with the token in
//! `VEIL_TOKEN`) — and the demo.
//!
//! Exit codes: 0 success; 1 error (including a failed audit verification); 2 usage error;
//! 3 job refused by policy or budget (recorded in the audit log).
#![forbid(unsafe_code)]

mod demo;
mod output;
mod remote;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use veil_engine::{Caller, EngineConfig, EngineError, Veil};

#[derive(Parser)]
#[command(name = "veil", version, about = "Veil: data usable, but not visible.")]
struct Cli {
    /// Data directory holding the embedded store, datasets and keys.
    #[arg(
        long,
        global = true,
        env = "VEIL_DATA_DIR",
        default_value = "./veil-data"
    )]
    data_dir: PathBuf,
    /// Principal to act as in local mode: a principal stored in the data directory (its role
    /// decides what it may do). Without it, the host's operator (an admin).
    #[arg(long = "as", global = true, value_name = "PRINCIPAL")]
    as_principal: Option<String>,
    /// Work against this Veil server (remote mode), e.g. http://127.0.0.1:8420; the token is read
    /// from VEIL_TOKEN.
    #[arg(long, global = true, env = "VEIL_SERVER", value_name = "URL")]
    server: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand)]
enum Command {
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
    /// Show who the token in VEIL_TOKEN names (remote mode).
    Whoami,
}

#[derive(Subcommand)]
enum AdminCmd {
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
enum CertificateCmd {
    /// Check a registration certificate offline with only the public key; exit 0 or 1.
    Verify {
        certificate: PathBuf,
        /// The public key (as printed by `veil keys public`) or a file containing it.
        #[arg(long)]
        public_key: String,
    },
}

#[derive(Subcommand)]
enum ReceiptCmd {
    /// Check a receipt offline with only the public key; exit 0 if it holds, 1 if not.
    Verify {
        receipt: PathBuf,
        /// The public key (as printed by `veil keys public`) or a file containing it.
        #[arg(long)]
        public_key: String,
    },
}

#[derive(Subcommand)]
enum DatasetCmd {
    /// Register a CSV, Parquet or Arrow IPC file.
    Add {
        file: PathBuf,
        #[arg(long)]
        name: String,
        /// Column identifying the person (privacy unit); without it each row is a unit.
        #[arg(long)]
        privacy_unit: Option<String>,
        /// Column names for a CSV file without a header row (comma-separated).
        #[arg(long, value_delimiter = ',')]
        columns: Option<Vec<String>>,
    },
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
enum PolicyCmd {
    /// Set a new policy version on a dataset (`--as` its owner).
    Set { dataset: String, file: PathBuf },
    /// Show a dataset's current policy.
    Show { dataset: String },
}

#[derive(Subcommand)]
enum JobCmd {
    /// Submit a job manifest (`--as CONSUMER`); prints the job id.
    Submit { manifest: PathBuf },
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
enum AuditCmd {
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
enum KeysCmd {
    /// Print the public key that signs this domain's audit log now.
    Public,
    /// Print the log's first key: the root a reviewer verifies from.
    First,
    /// Rotate the signing key: the old key signs a hand-over entry naming the new one.
    Rotate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A server must see EPIPE from a vanished peer, not die of SIGPIPE; everything else may end
    // quietly when its reader goes away (`veil audit log | head`).
    if !matches!(cli.command, Command::Serve { .. }) {
        sigpipe::reset();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<EngineError>() {
                Some(EngineError::Refused { .. }) => ExitCode::from(3),
                _ => ExitCode::from(1),
            }
        }
    }
}

/// Who a local command acts as: the stored principal `--as` names (unknown or revoked: an
/// error), or the host's operator without `--as`.
fn caller(veil: &Veil, cli_as: &Option<String>) -> Result<Caller> {
    Ok(match cli_as {
        Some(name) => veil.local_caller(name)?,
        None => Caller::operator(),
    })
}

fn open(dir: &Path) -> Result<Veil> {
    Veil::open(dir, EngineConfig::default())
        .with_context(|| format!("opening data directory {}", dir.display()))
}

/// Commands that work on the store's host only (they create, serve, rotate or check the store
/// itself): with `--server` they are refused. README.md lists the same.
fn is_host_only(command: &Command) -> bool {
    matches!(
        command,
        Command::Init
            | Command::Demo { .. }
            | Command::Serve { .. }
            | Command::Keys(KeysCmd::Rotate)
            | Command::Audit(AuditCmd::Verify { log: None, .. })
    )
}

/// Commands that check signed documents offline: the same in local and remote mode.
fn is_offline(command: &Command) -> bool {
    matches!(
        command,
        Command::Receipt(_)
            | Command::Certificate(_)
            | Command::Audit(AuditCmd::VerifyProof { .. })
            | Command::Audit(AuditCmd::Verify { log: Some(_), .. })
    )
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(server) = &cli.server
        && !is_offline(&cli.command)
    {
        if cli.as_principal.is_some() {
            bail!("--as is for local mode; with --server the token in VEIL_TOKEN says who you are");
        }
        if is_host_only(&cli.command) {
            bail!(
                "this command works on the store's host only, in local mode (init, demo, serve, \
                 keys rotate, audit verify without --log): run it there without --server"
            );
        }
        let token = std::env::var("VEIL_TOKEN").ok().filter(|t| !t.is_empty());
        return remote::run(cli.command, server, token);
    }
    let dir = cli.data_dir.clone();
    match cli.command {
        Command::Whoami => bail!("whoami asks a server: give --server URL and VEIL_TOKEN"),
        Command::Init => {
            let veil = open(&dir)?;
            println!("initialised {}", veil.data_dir().display());
            println!("audit public key: {}", veil.public_key());
            println!("key fingerprint:  {}", veil.public_key().fingerprint());
        }
        Command::Demo { people } => demo::run(&dir, people)?,
        Command::Dataset(DatasetCmd::Add {
            file,
            name,
            privacy_unit,
            columns,
        }) => {
            let mut veil = open(&dir)?;
            let who = caller(&veil, &cli.as_principal)?;
            let r = veil.register_dataset(&who, &file, &name, privacy_unit.as_deref(), columns)?;
            output::registered(&r);
        }
        Command::Dataset(DatasetCmd::Certificate { name, out }) => {
            let veil = open(&dir)?;
            let cert = veil.dataset_certificate(&caller(&veil, &cli.as_principal)?, &name)?;
            let text = serde_json::to_string_pretty(&cert)? + "\n";
            write_or_print(out.as_deref(), &text)?;
        }
        Command::Dataset(DatasetCmd::List { format }) => {
            let veil = open(&dir)?;
            let views = veil.datasets_as(&caller(&veil, &cli.as_principal)?)?;
            let list: Vec<serde_json::Value> = views
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?;
            output::datasets(&list, format == Format::Json);
        }
        Command::Policy(PolicyCmd::Set { dataset, file }) => {
            let mut veil = open(&dir)?;
            let who = caller(&veil, &cli.as_principal)?;
            let p = veil.set_policy(&who, &dataset, &file)?;
            println!(
                "policy version {} set on `{}` (sha256 {})",
                p.version, p.dataset, p.hash
            );
        }
        Command::Policy(PolicyCmd::Show { dataset }) => {
            let veil = open(&dir)?;
            let p = veil.policy_as(&caller(&veil, &cli.as_principal)?, &dataset)?;
            println!(
                "# policy version {} of `{}`, set by {} (sha256 {})",
                p.version, p.dataset, p.holder, p.hash
            );
            print!("{}", p.text);
        }
        Command::Job(cmd) => return job(cmd, &dir, &cli.as_principal),
        Command::Budget { format } => {
            let veil = open(&dir)?;
            let who = caller(&veil, &cli.as_principal)?;
            output::budget(&who.name, &veil.budget(&who)?, format == Format::Json);
        }
        Command::Audit(AuditCmd::Export { out }) => {
            let veil = open(&dir)?;
            let text = veil.export_audit_for(&caller(&veil, &cli.as_principal)?)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, &text)
                        .with_context(|| format!("writing {}", path.display()))?;
                    println!(
                        "exported {} entries to {}",
                        text.lines().count() - 1,
                        path.display()
                    );
                }
                None => print!("{text}"),
            }
        }
        Command::Audit(AuditCmd::Verify { log, public_key }) => {
            let result = match log {
                Some(path) => {
                    let key = verifier_key(public_key.expect("clap requires it"))?;
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    veil_audit::verify_export(&text, &key)
                }
                None => {
                    let veil = open(&dir)?;
                    match veil.verify_audit() {
                        Ok(v) => Ok(v),
                        Err(EngineError::Audit(e)) => Err(e),
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            match result {
                Ok(v) => println!(
                    "audit log intact: {} entries, root {}",
                    v.entries,
                    hex_root(&v.root)
                ),
                Err(e) => {
                    println!("audit log NOT intact: {e}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Command::Audit(AuditCmd::Checkpoint { out }) => {
            let note = open(&dir)?.audit_checkpoint()?;
            write_or_print(out.as_deref(), &note)?;
        }
        Command::Audit(AuditCmd::Prove {
            entry,
            from,
            size,
            out,
        }) => {
            let veil = open(&dir)?;
            let who = caller(&veil, &cli.as_principal)?;
            let proof = match (entry, from) {
                (Some(index), _) => veil.prove_inclusion_as(&who, index, size)?,
                (None, Some(old)) => veil.prove_consistency(old, size)?,
                (None, None) => unreachable!("clap requires one"),
            };
            let text = serde_json::to_string_pretty(&proof)? + "\n";
            write_or_print(out.as_deref(), &text)?;
        }
        Command::Audit(AuditCmd::VerifyProof {
            proof,
            public_key,
            old_checkpoint,
        }) => {
            let key = verifier_key(public_key)?;
            let text = std::fs::read_to_string(&proof)
                .with_context(|| format!("reading {}", proof.display()))?;
            let proof: veil_audit::Proof =
                serde_json::from_str(&text).context("the file is not a Veil audit proof")?;
            let old = match old_checkpoint {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?,
                ),
                None => None,
            };
            match proof.verify(&key, old.as_deref()) {
                Ok(veil_audit::ProofVerdict::Included { index, size, .. }) => {
                    println!("proof holds: entry {index} is in the signed log of {size} entries")
                }
                Ok(veil_audit::ProofVerdict::Consistent { old_size, new_size }) => println!(
                    "proof holds: the signed log of {new_size} entries extends the one of {old_size}"
                ),
                Ok(_) => println!("proof holds"),
                Err(e) => {
                    println!("proof does NOT hold: {e}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Command::Serve { config, listen } => {
            let mut settings = veil_server::ServerConfig::load(config.as_deref())?;
            if config.is_none() && std::env::var_os("VEIL_DATA_DIR").is_none() {
                settings.data_dir = dir.clone();
            }
            if let Some(addr) = listen {
                settings.listen = addr;
            }
            veil_server::serve(&settings)?;
        }
        Command::Admin(AdminCmd::AddPrincipal { name, role }) => {
            let mut veil = open(&dir)?;
            let admin = caller(&veil, &cli.as_principal)?;
            let role = veil_engine::Role::parse(&role).expect("clap checked it");
            let token = veil.create_principal(&admin, &name, role)?;
            println!("{name} ({}) created. Token, shown only now:", role.as_str());
            println!("{token}");
        }
        Command::Admin(AdminCmd::Principals) => {
            let veil = open(&dir)?;
            for p in veil.principals_as(&caller(&veil, &cli.as_principal)?)? {
                let revoked = p.revoked_at.map(|t| format!("  revoked {t}"));
                println!(
                    "{:<24} {:<10} {}{}",
                    p.name,
                    p.role.as_str(),
                    p.created_at,
                    revoked.unwrap_or_default()
                );
            }
        }
        Command::Admin(AdminCmd::Revoke { name }) => {
            let mut veil = open(&dir)?;
            let admin = caller(&veil, &cli.as_principal)?;
            veil.revoke_principal(&admin, &name)?;
            println!("{name} revoked");
        }
        Command::Admin(AdminCmd::ReissueToken { name }) => {
            let mut veil = open(&dir)?;
            let admin = caller(&veil, &cli.as_principal)?;
            let token = veil.reissue_token(&admin, &name)?;
            println!("new token for {name}, shown only now (the old one no longer works):");
            println!("{token}");
        }
        Command::Certificate(CertificateCmd::Verify {
            certificate,
            public_key,
        }) => {
            let key = verifier_key(public_key)?;
            let text = std::fs::read_to_string(&certificate)
                .with_context(|| format!("reading {}", certificate.display()))?;
            let cert: veil_audit::Certificate =
                serde_json::from_str(&text).context("the file is not a Veil certificate")?;
            match cert.verify(&key) {
                Ok(f) => println!(
                    "certificate holds: dataset {} registered {} with content {} and \
                     schema {} ({} rows), log entry {}",
                    f.dataset, f.time, f.content_commitment, f.schema_hash, f.rows, f.log_index
                ),
                Err(e) => {
                    println!("certificate does NOT hold: {e}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Command::Receipt(ReceiptCmd::Verify {
            receipt,
            public_key,
        }) => {
            let key = verifier_key(public_key)?;
            let text = std::fs::read_to_string(&receipt)
                .with_context(|| format!("reading {}", receipt.display()))?;
            let receipt: veil_audit::Receipt =
                serde_json::from_str(&text).context("the file is not a Veil job receipt")?;
            match receipt.verify(&key) {
                Ok(f) => println!(
                    "receipt holds: job {} by {} ran module {} on dataset {} (content {}) under \
                     policy version {} ({}); charged ε = {}; released result {}, log entry {}",
                    f.job,
                    f.consumer,
                    f.module_hash,
                    f.dataset,
                    f.dataset_commitment,
                    f.policy_version,
                    f.policy_hash,
                    veil_engine::Epsilon(f.epsilon_micro),
                    f.result_hash,
                    f.log_index
                ),
                Err(e) => {
                    println!("receipt does NOT hold: {e}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Command::Audit(AuditCmd::Log {
            format,
            dataset,
            consumer,
            module,
            decision,
            since,
            until,
        }) => {
            let veil = open(&dir)?;
            let entries = veil.audit_entries_for(&caller(&veil, &cli.as_principal)?)?;
            let filter = veil_audit::review::Filter {
                dataset: dataset.map(|d| veil.dataset_filter(&d)).transpose()?,
                consumer,
                module_hash: module,
                decision,
                since,
                until,
            };
            let shown: Vec<_> = filter.apply(&entries).into_iter().cloned().collect();
            output::audit_log(&shown, format == Format::Json);
        }
        Command::Audit(AuditCmd::Summary { format }) => {
            let veil = open(&dir)?;
            let who = caller(&veil, &cli.as_principal)?;
            let summary = veil_audit::review::summarize(&veil.audit_entries_for(&who)?);
            output::audit_summary(&summary, format == Format::Json);
        }
        Command::Keys(KeysCmd::Public) => {
            let veil = open(&dir)?;
            println!("{}", veil.public_key());
        }
        Command::Keys(KeysCmd::First) => {
            let veil = open(&dir)?;
            println!("{}", veil.first_public_key()?);
        }
        Command::Keys(KeysCmd::Rotate) => {
            let mut veil = open(&dir)?;
            let key = veil.rotate_key()?;
            println!("new audit public key: {key}");
            println!("key fingerprint:      {}", key.fingerprint());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn hex_root(root: &[u8; 32]) -> String {
    root.iter().map(|b| format!("{b:02x}")).collect()
}

fn job(cmd: JobCmd, dir: &Path, who: &Option<String>) -> Result<ExitCode> {
    let mut veil = open(dir)?;
    let who = caller(&veil, who)?;
    match cmd {
        JobCmd::Submit { manifest } => {
            let outcome = veil.submit_job(&who, &manifest)?;
            println!("{}", outcome.job);
            eprintln!("job {} is {}", outcome.job, outcome.state);
        }
        JobCmd::Approve { job } => {
            let state = veil.approve_job(&who, &job)?;
            println!("job {job} approved; it is now {state}");
        }
        JobCmd::Reject { job, reason } => {
            veil.reject_job(&who, &job, &reason)?;
            println!("job {job} rejected");
        }
        JobCmd::Status { job } => output::job_line(&veil.job_as(&who, &job)?),
        JobCmd::Show { job } => output::job_view(&veil.job_as(&who, &job)?)?,
        JobCmd::List => output::job_views(&veil.jobs_as(&who, None)?)?,
        JobCmd::Logs { job } => {
            for line in veil.job_logs(&who, &job)? {
                println!("{}", output::escape(&line));
            }
        }
        JobCmd::Receipt { job, out } => {
            let receipt = veil.job_receipt(&who, &job)?;
            let text = serde_json::to_string_pretty(&receipt)? + "\n";
            write_or_print(out.as_deref(), &text)?;
        }
        JobCmd::Result { job, format } => {
            output::release(&veil.job_result(&who, &job)?, format);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to `out`, or to standard output.
fn write_or_print(out: Option<&Path>, text: &str) -> Result<()> {
    match out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// A public key given on the command line, or read from the file it names.
fn verifier_key(text: String) -> Result<veil_audit::VerifierKey> {
    let text = if Path::new(&text).is_file() {
        std::fs::read_to_string(&text)?
    } else {
        text
    };
    Ok(veil_audit::VerifierKey::parse(&text)?)
}
