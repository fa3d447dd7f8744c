//! The commands that ask the domain something, dispatched once over a [`Backend`] and printed
//! once, whichever mode answers them. (Host-only and offline commands are in `host.rs` and
//! `offline.rs`; `main.rs` says which command belongs where.)
use std::process::ExitCode;

use anyhow::{Context, Result};
use veil_audit::review::Decision;
use veil_engine::{CsvFlags, Role};

use crate::args::{
    AdminCmd, AuditCmd, Command, DatasetCmd, Format, JobCmd, KeysCmd, LinkCmd, PolicyCmd,
};
use crate::backend::{Backend, JobFiles, LogQuery, ProofRequest, Registration};
use crate::{Refused, WouldBeRefused, output, write_or_print};

/// Runs a client command. Requires `crate::room(&command) == Room::Client`.
pub(crate) fn run(command: Command, b: &mut dyn Backend) -> Result<ExitCode> {
    match command {
        Command::Whoami => {
            let me = b.whoami()?;
            println!("{} ({})", me.name, me.role.as_str());
        }
        Command::Dataset(cmd) => dataset(cmd, b)?,
        Command::Policy(cmd) => policy(cmd, b)?,
        Command::Job(cmd) => job(cmd, b)?,
        Command::Budget { format } => {
            let me = b.whoami()?;
            output::budget(&me.name, &b.budget()?, format == Format::Json);
        }
        Command::Audit(cmd) => audit(cmd, b)?,
        Command::Keys(KeysCmd::Public) => println!("{}", b.public_keys()?.public_key),
        Command::Keys(KeysCmd::First) => println!("{}", b.public_keys()?.first_public_key),
        Command::Admin(cmd) => admin(cmd, b)?,
        Command::Link(cmd) => link(cmd, b)?,
        Command::Init
        | Command::Demo { .. }
        | Command::Serve { .. }
        | Command::Keys(KeysCmd::Rotate)
        | Command::Receipt(_)
        | Command::Certificate(_) => unreachable!("not a client command"),
    }
    Ok(ExitCode::SUCCESS)
}

fn dataset(cmd: DatasetCmd, b: &mut dyn Backend) -> Result<()> {
    match cmd {
        DatasetCmd::Add {
            file,
            name,
            privacy_unit,
            link_keys,
            columns,
            header,
            no_header,
            delimiter,
            quote,
            no_trim,
            null,
            replace,
        } => {
            let header = match (header, no_header) {
                (true, _) => Some("present".to_owned()),
                (_, true) => Some("absent".to_owned()),
                _ => None,
            };
            let csv = CsvFlags {
                columns,
                header,
                delimiter,
                quote,
                trim: no_trim.then_some(false),
                null,
            };
            // Identifiers are replaced by join tokens here, before the file leaves the client.
            let staging = tempfile::tempdir()?;
            let file = if link_keys.is_empty() {
                file
            } else {
                crate::tokens::tokenize(b, &file, &link_keys, &csv.options()?, staging.path())?
            };
            output::registered(&b.register_dataset(Registration {
                file: &file,
                name: &name,
                privacy_unit: privacy_unit.as_deref(),
                csv,
                replace,
                link_keys: &link_keys,
            })?)
        }
        DatasetCmd::Remove { name } => {
            let versions = b.remove_dataset(&name)?;
            println!(
                "removed dataset `{name}` ({versions} version{}): its data files are deleted, its \
                 history stays in the log",
                if versions == 1 { "" } else { "s" }
            );
        }
        DatasetCmd::Certificate { name, out } => {
            let text = serde_json::to_string_pretty(&b.dataset_certificate(&name)?)? + "\n";
            write_or_print(out.as_deref(), &text)?;
        }
        DatasetCmd::List { format } => {
            let list: Vec<serde_json::Value> = b
                .datasets()?
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?;
            output::datasets(&list, format == Format::Json);
        }
    }
    Ok(())
}

fn policy(cmd: PolicyCmd, b: &mut dyn Backend) -> Result<()> {
    match cmd {
        PolicyCmd::Set { dataset, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let p = b.set_policy(&dataset, &text)?;
            println!(
                "policy version {} set on `{}` (sha256 {})",
                p.version, p.dataset, p.hash
            );
            for w in &p.warnings {
                eprintln!("warning: {}", output::escape(w));
            }
        }
        PolicyCmd::Show { dataset } => {
            let p = b.policy(&dataset)?;
            println!(
                "# policy version {} of `{}`, set by {} (sha256 {})",
                p.version, p.dataset, p.holder, p.hash
            );
            if p.consumers_withheld {
                println!("# (the hash is of the holder's text, which also names other consumers)");
            }
            print!("{}", p.toml);
        }
    }
    Ok(())
}

fn job(cmd: JobCmd, b: &mut dyn Backend) -> Result<()> {
    match cmd {
        JobCmd::Submit { job } => submit(&JobFiles::read(&job)?, b)?,
        JobCmd::Check { job, json } => {
            let check = b.check(&JobFiles::read(&job)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&check)?);
            } else {
                print!("{}", output::job_check(&check));
            }
            if let Some(reason) = check.refusal {
                return Err(WouldBeRefused(reason).into());
            }
        }
        JobCmd::Approve { job } => {
            let view = b.approve(&job)?;
            println!("job {job} approved; it is now {}", view.state());
        }
        JobCmd::Reject { job, reason } => {
            b.reject(&job, &reason)?;
            println!("job {job} rejected");
        }
        JobCmd::Status { job } => output::job_line(&b.job(&job)?),
        JobCmd::Show { job } => output::job_view(&b.job(&job)?)?,
        JobCmd::List => output::job_views(&b.jobs()?)?,
        JobCmd::Logs { job } => {
            for line in b.job_logs(&job)? {
                println!("{}", output::escape(&line));
            }
        }
        JobCmd::Receipt { job, out } => {
            let text = serde_json::to_string_pretty(&b.job_receipt(&job)?)? + "\n";
            write_or_print(out.as_deref(), &text)?;
        }
        JobCmd::Result { job, format } => output::release(&b.job_result(&job)?, format),
    }
    Ok(())
}

/// Prints the job id (standard output) and its state (standard error); a refusal by policy or
/// budget is the error [`Refused`] (exit code 3).
fn submit(job: &JobFiles, b: &mut dyn Backend) -> Result<()> {
    let s = b.submit(job)?;
    println!("{}", s.job.id);
    if let Some(reason) = s.refusal {
        return Err(Refused {
            job: s.job.id,
            reason,
        }
        .into());
    }
    match s.job.code {
        Some(code) => eprintln!("job {} is {} ({code})", s.job.id, s.job.state),
        None => eprintln!("job {} is {}", s.job.id, s.job.state),
    }
    Ok(())
}

fn audit(cmd: AuditCmd, b: &mut dyn Backend) -> Result<()> {
    match cmd {
        AuditCmd::Export { out } => {
            let text = b.audit_export()?;
            match out {
                Some(path) => {
                    std::fs::write(&path, &text)
                        .with_context(|| format!("writing {}", path.display()))?;
                    // The last line is the signed checkpoint.
                    let entries = text.lines().count().saturating_sub(1);
                    println!("exported {entries} entries to {}", path.display());
                }
                None => print!("{text}"),
            }
        }
        AuditCmd::Checkpoint { out } => write_or_print(out.as_deref(), &b.audit_checkpoint()?)?,
        AuditCmd::Log {
            format,
            dataset,
            consumer,
            module,
            decision,
            since,
            until,
        } => {
            let query = LogQuery {
                dataset,
                consumer,
                module,
                decision: decision.map(|d| Decision::parse(&d).expect("clap checked it")),
                since,
                until,
            };
            output::audit_log(&b.audit_log(&query)?, format == Format::Json);
        }
        AuditCmd::Summary { format } => {
            let entries = b.audit_log(&LogQuery::default())?;
            let summary = veil_audit::review::summarize(&entries);
            output::audit_summary(&summary, format == Format::Json);
        }
        AuditCmd::Prove {
            entry,
            from,
            size,
            out,
        } => {
            let request = match (entry, from) {
                (Some(entry), _) => ProofRequest::Inclusion { entry, size },
                (None, Some(from)) => ProofRequest::Consistency { from, size },
                (None, None) => unreachable!("clap requires one"),
            };
            let text = serde_json::to_string_pretty(&b.prove(request)?)? + "\n";
            write_or_print(out.as_deref(), &text)?;
        }
        AuditCmd::Verify { .. } | AuditCmd::VerifyProof { .. } => {
            unreachable!("not a client command")
        }
    }
    Ok(())
}

fn link(cmd: LinkCmd, b: &mut dyn Backend) -> Result<()> {
    let show = |link: &veil_engine::Link| {
        println!(
            "{}  {}  {}.{} ↔ {}.{}",
            link.id,
            link.state.as_str(),
            link.left.dataset,
            link.left.key,
            link.right.dataset,
            link.right.key
        )
    };
    match cmd {
        LinkCmd::Propose {
            dataset,
            key,
            other,
            their_key,
        } => show(&b.propose_link(&crate::backend::LinkProposal {
            dataset,
            key,
            other,
            their_key,
        })?),
        LinkCmd::Accept { link } => show(&b.decide_link(&link, None)?),
        LinkCmd::Reject { link, reason } => show(&b.decide_link(&link, Some(&reason))?),
        LinkCmd::Revoke { link, reason } => show(&b.revoke_link(&link, &reason)?),
        LinkCmd::List { format } => {
            let links = b.links()?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&links)?),
                _ => links.iter().for_each(show),
            }
        }
        LinkCmd::Key => {
            let key = b.link_key()?;
            println!("{}  {}", key.public_key, key.suite);
        }
    }
    Ok(())
}

fn admin(cmd: AdminCmd, b: &mut dyn Backend) -> Result<()> {
    match cmd {
        AdminCmd::AddPrincipal { name, role } => {
            let role = Role::parse(&role).expect("clap checked it");
            let token = b.add_principal(&name, role)?;
            println!("{name} ({}) created. Token, shown only now:", role.as_str());
            println!("{token}");
        }
        AdminCmd::Principals => {
            for p in b.principals()? {
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
        AdminCmd::Revoke { name } => {
            b.revoke(&name)?;
            println!("{name} revoked");
        }
        AdminCmd::ReissueToken { name } => {
            let token = b.reissue_token(&name)?;
            println!("new token for {name}, shown only now (the old one no longer works):");
            println!("{token}");
        }
    }
    Ok(())
}
