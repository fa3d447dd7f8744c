//! Remote mode: the same commands against a Veil server (`--server URL`, token in `VEIL_TOKEN`).
//!
//! The server decides who the caller is from the token, so `--as` is not used here. Output matches
//! local mode where the server returns the same objects; a consumer's job views are coarse (state
//! and a generic reason code), as the server gives them.
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use veil_engine::{AuditEntry, BudgetLine, DatasetRecord, JobView, Release};

use crate::{
    AdminCmd, AuditCmd, Command, DatasetCmd, Format, JobCmd, KeysCmd, PolicyCmd, output,
    write_or_print,
};

/// Largest response read (an audit export of a long-lived store can be large).
const MAX_RESPONSE_BYTES: u64 = 1 << 30;

struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn new(server: &str, token: Option<String>) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        Client {
            base: server.trim_end_matches('/').to_owned(),
            token,
            agent,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth(&self) -> Result<String> {
        match &self.token {
            Some(t) => Ok(format!("Bearer {t}")),
            None => bail!("remote mode needs a token in VEIL_TOKEN"),
        }
    }

    /// Reads a response: the body on success, the server's JSON error as an error otherwise.
    fn finish(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String> {
        let mut response = response.with_context(|| format!("reaching {}", self.base))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_string()
            .context("reading the server's answer")?;
        if status >= 400 {
            let error: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let code = error["error"]["code"].as_str().unwrap_or("error");
            let message = error["error"]["message"].as_str().unwrap_or(body.trim());
            bail!("{message} ({code}, HTTP {status})");
        }
        Ok(body)
    }

    fn get(&self, path: &str) -> Result<String> {
        let response = self
            .agent
            .get(self.url(path))
            .header("Authorization", self.auth()?)
            .call();
        self.finish(response)
    }

    fn get_public(&self, path: &str) -> Result<String> {
        self.finish(self.agent.get(self.url(path)).call())
    }

    fn get_json(&self, path: &str) -> Result<Value> {
        Ok(serde_json::from_str(&self.get(path)?)?)
    }

    fn send_json(&self, path: &str, body: &Value) -> Result<Value> {
        let response = self
            .agent
            .post(self.url(path))
            .header("Authorization", self.auth()?)
            .header("Content-Type", "application/json")
            .send(serde_json::to_vec(body)?.as_slice());
        Ok(serde_json::from_str(&self.finish(response)?)?)
    }
}

/// Query-string encoding of one value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Runs `command` against `server`. Commands that only make sense on the server's host are errors.
pub(crate) fn run(command: Command, server: &str, token: Option<String>) -> Result<ExitCode> {
    let client = Client::new(server, token);
    match command {
        Command::Whoami => {
            let me = client.get_json("/v1/whoami")?;
            println!(
                "{} ({})",
                me["name"].as_str().unwrap_or("?"),
                me["role"].as_str().unwrap_or("?")
            );
        }
        Command::Dataset(DatasetCmd::Add {
            file,
            name,
            privacy_unit,
            columns,
        }) => {
            let mut f = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            let path = format!(
                "/v1/datasets{}",
                query(&[
                    ("name", Some(name)),
                    ("privacy_unit", privacy_unit),
                    ("columns", columns.map(|c| c.join(","))),
                ])
            );
            let response = client
                .agent
                .post(client.url(&path))
                .header("Authorization", client.auth()?)
                .header("Content-Type", "application/octet-stream")
                .send(ureq::SendBody::from_reader(&mut f));
            let r: DatasetRecord = serde_json::from_str(&client.finish(response)?)?;
            output::registered(&r);
        }
        Command::Dataset(DatasetCmd::List { format }) => {
            let v = client.get_json("/v1/datasets")?;
            let list: Vec<serde_json::Value> = serde_json::from_value(v["datasets"].clone())?;
            output::datasets(&list, format == Format::Json);
        }
        Command::Dataset(DatasetCmd::Certificate { name, out }) => {
            let v = client.get_json(&format!("/v1/datasets/{}/certificate", encode(&name)))?;
            write_or_print(out.as_deref(), &(serde_json::to_string_pretty(&v)? + "\n"))?;
        }
        Command::Policy(PolicyCmd::Set { dataset, file }) => {
            let text =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let response = client
                .agent
                .put(client.url(&format!("/v1/datasets/{}/policy", encode(&dataset))))
                .header("Authorization", client.auth()?)
                .header("Content-Type", "application/toml")
                .send(text.as_slice());
            let v: Value = serde_json::from_str(&client.finish(response)?)?;
            println!(
                "policy version {} set on `{}` (sha256 {})",
                v["version"],
                v["dataset"].as_str().unwrap_or(&dataset),
                v["hash"].as_str().unwrap_or("?")
            );
        }
        Command::Policy(PolicyCmd::Show { dataset }) => {
            let v = client.get_json(&format!("/v1/datasets/{}/policy", encode(&dataset)))?;
            println!(
                "# policy version {} of `{}`, set by {} (sha256 {})",
                v["version"],
                v["dataset"].as_str().unwrap_or(&dataset),
                v["holder"].as_str().unwrap_or("?"),
                v["hash"].as_str().unwrap_or("?")
            );
            print!("{}", v["toml"].as_str().unwrap_or(""));
        }
        Command::Job(cmd) => return job(&client, cmd),
        Command::Budget { format } => {
            let v = client.get_json("/v1/budget")?;
            let lines: Vec<BudgetLine> = serde_json::from_value(v["budget"].clone())?;
            let me = client.get_json("/v1/whoami")?;
            output::budget(
                me["name"].as_str().unwrap_or("?"),
                &lines,
                format == Format::Json,
            );
        }
        Command::Audit(AuditCmd::Export { out }) => {
            let text = client.get("/v1/audit/export")?;
            write_or_print(out.as_deref(), &text)?;
        }
        Command::Audit(AuditCmd::Checkpoint { out }) => {
            write_or_print(out.as_deref(), &client.get_public("/v1/audit/checkpoint")?)?;
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
            let path = format!(
                "/v1/audit/log{}",
                query(&[
                    ("dataset", dataset),
                    ("consumer", consumer),
                    ("module", module),
                    ("decision", decision),
                    ("since", since),
                    ("until", until),
                ])
            );
            let v = client.get_json(&path)?;
            let entries: Vec<AuditEntry> = serde_json::from_value(v["entries"].clone())?;
            output::audit_log(&entries, format == Format::Json);
        }
        Command::Audit(AuditCmd::Summary { format }) => {
            let v = client.get_json("/v1/audit/log")?;
            let entries: Vec<AuditEntry> = serde_json::from_value(v["entries"].clone())?;
            output::audit_summary(
                &veil_audit::review::summarize(&entries),
                format == Format::Json,
            );
        }
        Command::Audit(AuditCmd::Prove {
            entry,
            from,
            size,
            out,
        }) => {
            let size = size.map(|s| s.to_string());
            let path = match (entry, from) {
                (Some(e), _) => format!(
                    "/v1/audit/proof/inclusion{}",
                    query(&[("entry", Some(e.to_string())), ("size", size)])
                ),
                (None, Some(f)) => format!(
                    "/v1/audit/proof/consistency{}",
                    query(&[("from", Some(f.to_string())), ("size", size)])
                ),
                (None, None) => unreachable!("clap requires one"),
            };
            let v = client.get_json(&path)?;
            write_or_print(out.as_deref(), &(serde_json::to_string_pretty(&v)? + "\n"))?;
        }
        Command::Keys(KeysCmd::Public) => {
            let v: Value = serde_json::from_str(&client.get_public("/v1/public-key")?)?;
            println!("{}", v["public_key"].as_str().unwrap_or("?"));
        }
        Command::Keys(KeysCmd::First) => {
            let v: Value = serde_json::from_str(&client.get_public("/v1/public-key")?)?;
            println!("{}", v["first_public_key"].as_str().unwrap_or("?"));
        }
        Command::Admin(AdminCmd::AddPrincipal { name, role }) => {
            let v = client.send_json(
                "/v1/admin/principals",
                &json!({ "name": name, "role": role }),
            )?;
            println!("{name} ({role}) created. Token, shown only now:");
            println!("{}", v["token"].as_str().unwrap_or("?"));
        }
        Command::Admin(AdminCmd::Principals) => {
            let v = client.get_json("/v1/admin/principals")?;
            for p in v["principals"].as_array().into_iter().flatten() {
                let revoked = p["revoked_at"].as_str().map(|t| format!("  revoked {t}"));
                println!(
                    "{:<24} {:<10} {}{}",
                    p["name"].as_str().unwrap_or("?"),
                    p["role"].as_str().unwrap_or("?"),
                    p["created_at"].as_str().unwrap_or("?"),
                    revoked.unwrap_or_default()
                );
            }
        }
        Command::Admin(AdminCmd::Revoke { name }) => {
            let response = client
                .agent
                .delete(client.url(&format!("/v1/admin/principals/{}", encode(&name))))
                .header("Authorization", client.auth()?)
                .call();
            client.finish(response)?;
            println!("{name} revoked");
        }
        Command::Admin(AdminCmd::ReissueToken { name }) => {
            let v = client.send_json(
                &format!("/v1/admin/principals/{}/token", encode(&name)),
                &json!({}),
            )?;
            println!("new token for {name}, shown only now (the old one no longer works):");
            println!("{}", v["token"].as_str().unwrap_or("?"));
        }
        Command::Init
        | Command::Demo { .. }
        | Command::Serve { .. }
        | Command::Keys(KeysCmd::Rotate)
        | Command::Audit(AuditCmd::Verify { log: None, .. }) => {
            unreachable!("host-only commands are refused before remote dispatch")
        }
        Command::Audit(_) | Command::Receipt(_) | Command::Certificate(_) => {
            unreachable!("offline commands are handled before remote dispatch")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The job `id` as the server shows it to the token's principal.
fn job_view(client: &Client, id: &str) -> Result<JobView> {
    Ok(serde_json::from_value(client.get_json(&job_path(id, ""))?)?)
}

fn job_path(id: &str, tail: &str) -> String {
    format!("/v1/jobs/{}{tail}", encode(id))
}

fn job(client: &Client, cmd: JobCmd) -> Result<ExitCode> {
    match cmd {
        JobCmd::Submit { manifest } => {
            let text = std::fs::read_to_string(&manifest)
                .with_context(|| format!("reading {}", manifest.display()))?;
            let module = module_of(&manifest, &text)?;
            let wasm =
                std::fs::read(&module).with_context(|| format!("reading {}", module.display()))?;
            let v = client.send_json(
                "/v1/jobs",
                &json!({
                    "manifest": text,
                    "module": base64::engine::general_purpose::STANDARD.encode(&wasm),
                }),
            )?;
            let id = v["id"]
                .as_str()
                .ok_or_else(|| anyhow!("the server named no job"))?;
            // Like local mode, answer once the job has settled (or after the server's longest wait).
            let v = client.get_json(&job_path(id, "?wait=30"))?;
            println!("{id}");
            let state = v["state"].as_str().unwrap_or("?");
            match v["code"].as_str() {
                Some(code) => eprintln!("job {id} is {state} ({code})"),
                None => eprintln!("job {id} is {state}"),
            }
            if state == "refused" && matches!(v["code"].as_str(), Some("policy" | "budget")) {
                return Ok(ExitCode::from(3));
            }
        }
        JobCmd::Approve { job } => {
            client.send_json(&job_path(&job, "/approve"), &json!({}))?;
            let v = client.get_json(&job_path(&job, "?wait=30"))?;
            println!(
                "job {job} approved; it is now {}",
                v["state"].as_str().unwrap_or("?")
            );
        }
        JobCmd::Reject { job, reason } => {
            client.send_json(&job_path(&job, "/reject"), &json!({ "reason": reason }))?;
            println!("job {job} rejected");
        }
        JobCmd::Status { job } => output::job_line(&job_view(client, &job)?),
        JobCmd::Show { job } => output::job_view(&job_view(client, &job)?)?,
        JobCmd::List => {
            let v = client.get_json("/v1/jobs")?;
            let views: Vec<JobView> = serde_json::from_value(v["jobs"].clone())?;
            output::job_views(&views)?;
        }
        JobCmd::Logs { job } => {
            let v = client.get_json(&job_path(&job, "/logs"))?;
            for line in v["lines"].as_array().into_iter().flatten() {
                println!("{}", output::escape(line.as_str().unwrap_or("")));
            }
        }
        JobCmd::Receipt { job, out } => {
            let v = client.get_json(&job_path(&job, "/receipt"))?;
            write_or_print(out.as_deref(), &(serde_json::to_string_pretty(&v)? + "\n"))?;
        }
        JobCmd::Result { job, format } => {
            let release: Release =
                serde_json::from_value(client.get_json(&job_path(&job, "/result"))?)?;
            output::release(&release, format);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The module a manifest names, relative to the manifest's folder.
fn module_of(manifest: &Path, text: &str) -> Result<std::path::PathBuf> {
    let parsed: toml::Value = toml::from_str(text).context("the manifest is not TOML")?;
    let module = parsed
        .get("module")
        .and_then(|m| m.as_str())
        .ok_or_else(|| anyhow!("the manifest names no `module`"))?;
    Ok(manifest.parent().unwrap_or(Path::new(".")).join(module))
}
