//! Commands that check signed documents offline with only the public key: no store and no server,
//! so they are the same in both modes. Each exits 0 if the document holds and 1 if not.
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::args::{AuditCmd, CertificateCmd, Command, ReceiptCmd};
use crate::hex_root;

/// Runs an offline command. Requires `crate::room(&command) == Room::Offline`.
pub(crate) fn run(command: Command) -> Result<ExitCode> {
    let verdict = match command {
        Command::Certificate(CertificateCmd::Verify {
            certificate,
            public_key,
        }) => certificate_verdict(&certificate, &verifier_key(public_key)?)?,
        Command::Receipt(ReceiptCmd::Verify {
            receipt,
            public_key,
        }) => receipt_verdict(&receipt, &verifier_key(public_key)?)?,
        Command::Audit(AuditCmd::VerifyProof {
            proof,
            public_key,
            old_checkpoint,
        }) => proof_verdict(
            &proof,
            &verifier_key(public_key)?,
            old_checkpoint.as_deref(),
        )?,
        Command::Audit(AuditCmd::Verify {
            log: Some(log),
            public_key,
        }) => export_verdict(&log, &verifier_key(public_key.expect("clap requires it"))?)?,
        _ => unreachable!("not an offline command"),
    };
    match verdict {
        Ok(holds) => {
            println!("{holds}");
            Ok(ExitCode::SUCCESS)
        }
        Err(fails) => {
            println!("{fails}");
            Ok(ExitCode::from(1))
        }
    }
}

/// What a check found: the line saying it holds, or the line saying why not.
type Verdict = std::result::Result<String, String>;

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
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

fn certificate_verdict(path: &Path, key: &veil_audit::VerifierKey) -> Result<Verdict> {
    let cert: veil_audit::Certificate =
        serde_json::from_str(&read(path)?).context("the file is not a Veil certificate")?;
    Ok(match cert.verify(key) {
        Ok(f) => Ok(format!(
            "certificate holds: dataset {} registered {} with content {} and schema {} ({} rows), \
             log entry {}",
            f.dataset, f.time, f.content_commitment, f.schema_hash, f.rows, f.log_index
        )),
        Err(e) => Err(format!("certificate does NOT hold: {e}")),
    })
}

fn receipt_verdict(path: &Path, key: &veil_audit::VerifierKey) -> Result<Verdict> {
    let receipt: veil_audit::Receipt =
        serde_json::from_str(&read(path)?).context("the file is not a Veil job receipt")?;
    Ok(match receipt.verify(key) {
        Ok(f) => Ok(format!(
            "receipt holds: job {} by {} ran module {} on dataset {} (content {}) under policy \
             version {} ({}); charged ε = {}; released result {}, log entry {}",
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
        )),
        Err(e) => Err(format!("receipt does NOT hold: {e}")),
    })
}

fn proof_verdict(
    path: &Path,
    key: &veil_audit::VerifierKey,
    old_checkpoint: Option<&Path>,
) -> Result<Verdict> {
    let proof: veil_audit::Proof =
        serde_json::from_str(&read(path)?).context("the file is not a Veil audit proof")?;
    let old = old_checkpoint.map(read).transpose()?;
    Ok(match proof.verify(key, old.as_deref()) {
        Ok(veil_audit::ProofVerdict::Included { index, size, .. }) => Ok(format!(
            "proof holds: entry {index} is in the signed log of {size} entries"
        )),
        Ok(veil_audit::ProofVerdict::Consistent { old_size, new_size }) => Ok(format!(
            "proof holds: the signed log of {new_size} entries extends the one of {old_size}"
        )),
        Ok(_) => Ok("proof holds".to_owned()),
        Err(e) => Err(format!("proof does NOT hold: {e}")),
    })
}

fn export_verdict(path: &Path, key: &veil_audit::VerifierKey) -> Result<Verdict> {
    Ok(match veil_audit::verify_export(&read(path)?, key) {
        Ok(v) => Ok(format!(
            "audit log intact: {} entries, root {}",
            v.entries,
            hex_root(&v.root)
        )),
        Err(e) => Err(format!("audit log NOT intact: {e}")),
    })
}
