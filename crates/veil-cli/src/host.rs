//! Commands that work on the store's host only: they create, serve, rotate or check the store
//! itself, so there is no remote form (README.md lists them).
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use veil_engine::EngineError;

use crate::args::{AuditCmd, Command, KeysCmd};
use crate::local::open;
use crate::{demo, hex_root};

/// Runs a host-only command on the data directory `dir`. Requires
/// `crate::room(&command) == Room::Host`.
pub(crate) fn run(command: Command, dir: &Path) -> Result<ExitCode> {
    match command {
        Command::Init => {
            let veil = open(dir)?;
            println!("initialised {}", veil.data_dir().display());
            println!("audit public key: {}", veil.public_key());
            println!("key fingerprint:  {}", veil.public_key().fingerprint());
        }
        Command::Demo { people } => demo::run(dir, people)?,
        Command::Serve { config, listen } => {
            let mut settings = veil_server::ServerConfig::load(config.as_deref())?;
            if config.is_none() && std::env::var_os("VEIL_DATA_DIR").is_none() {
                settings.data_dir = dir.to_owned();
            }
            if let Some(addr) = listen {
                settings.listen = addr;
            }
            veil_server::serve(&settings)?;
        }
        Command::Keys(KeysCmd::Rotate) => {
            let key = open(dir)?.rotate_key()?;
            println!("new audit public key: {key}");
            println!("key fingerprint:      {}", key.fingerprint());
        }
        Command::Audit(AuditCmd::Verify { log: None, .. }) => return verify_store(dir),
        _ => unreachable!("not a host-only command"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Verifies this store's own log; a log that does not verify is exit code 1.
fn verify_store(dir: &Path) -> Result<ExitCode> {
    match open(dir)?.verify_audit() {
        Ok(v) => {
            println!(
                "audit log intact: {} entries, root {}",
                v.entries,
                hex_root(&v.root)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(EngineError::Audit(e)) => {
            println!("audit log NOT intact: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}
