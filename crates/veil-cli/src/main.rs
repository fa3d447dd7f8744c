//! `veil`: the command line for data holders, consumers and reviewers — on a data directory
//! (local mode, `--as NAME`) or against a server (remote mode, `--server URL` with the token in
//! `VEIL_TOKEN`) — and the demo.
//!
//! Each command belongs to one [`Room`]: client commands go through the [`backend::Backend`]
//! (local or remote, dispatched and printed once in `commands.rs`); host-only commands work on the
//! store's host (`host.rs`); offline commands check signed documents (`offline.rs`).
//!
//! Exit codes: 0 success; 1 error (including a failed verification); 2 usage error; 3 job refused
//! by policy or budget (recorded in the audit log).
#![forbid(unsafe_code)]

mod args;
mod backend;
mod commands;
mod demo;
mod host;
mod local;
mod offline;
mod output;
mod release;
mod remote;
mod tokens;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use veil_engine::EngineError;

pub(crate) use args::Format;
use args::{AuditCmd, Cli, Command, KeysCmd};

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
            let refused = e.downcast_ref::<Refused>().is_some()
                || e.downcast_ref::<WouldBeRefused>().is_some()
                || matches!(e.downcast_ref(), Some(EngineError::Refused { .. }));
            ExitCode::from(if refused { 3 } else { 1 })
        }
    }
}

/// A job the policy or the budget refused (exit code 3); the refusal is in the audit log.
#[derive(Debug, thiserror::Error)]
#[error("job {job} refused: {reason}")]
pub(crate) struct Refused {
    pub job: String,
    pub reason: String,
}

/// `job check` of a job the policy or the budget would refuse (exit code 3, like the refusal).
#[derive(Debug, thiserror::Error)]
#[error("the job would be refused: {0}")]
pub(crate) struct WouldBeRefused(pub String);

/// Where a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Room {
    /// Asks the domain: locally on a data directory or remotely on a server, with the same answers.
    Client,
    /// Creates, serves, rotates or checks the store itself: on its host only, refused with
    /// `--server`. README.md lists the same commands.
    Host,
    /// Checks a signed document with only a public key: no store, no server.
    Offline,
}

/// The one list of which command runs where.
pub(crate) fn room(command: &Command) -> Room {
    match command {
        Command::Init
        | Command::Demo { .. }
        | Command::Serve { .. }
        | Command::Keys(KeysCmd::Rotate)
        | Command::Audit(AuditCmd::Verify { log: None, .. }) => Room::Host,
        Command::Receipt(_)
        | Command::Certificate(_)
        | Command::Audit(AuditCmd::VerifyProof { .. })
        | Command::Audit(AuditCmd::Verify { log: Some(_), .. }) => Room::Offline,
        _ => Room::Client,
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match (room(&cli.command), &cli.server) {
        (Room::Offline, _) => offline::run(cli.command),
        (Room::Host, Some(_)) => bail!(
            "this command works on the store's host only, in local mode (init, demo, serve, keys \
             rotate, audit verify without --log): run it there without --server"
        ),
        (Room::Host, None) => host::run(cli.command, &cli.data_dir),
        (Room::Client, Some(server)) => {
            if cli.as_principal.is_some() {
                bail!(
                    "--as is for local mode; with --server the token in VEIL_TOKEN says who you are"
                );
            }
            let token = std::env::var("VEIL_TOKEN").ok().filter(|t| !t.is_empty());
            commands::run(cli.command, &mut remote::Remote::new(server, token))
        }
        (Room::Client, None) => {
            let mut local = local::Local::open(&cli.data_dir, cli.as_principal.as_deref())?;
            commands::run(cli.command, &mut local)
        }
    }
}

fn hex_root(root: &[u8; 32]) -> String {
    root.iter().map(|b| format!("{b:02x}")).collect()
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
