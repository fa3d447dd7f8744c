//! Remote mode: the [`Backend`] over a Veil server's HTTP API (`--server URL`, token in
//! `VEIL_TOKEN`). The server decides who the caller is from the token, so `--as` is not used
//! here; each call is one endpoint of `crates/veil-server/openapi.json`, its answer deserialized
//! into the same type the engine returns in local mode.
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use veil_audit::{Certificate, Proof, Receipt};
use veil_engine::JobCheck;
use veil_engine::{
    AuditEntry, BudgetLine, ConsumerJobView, DatasetView, JobView, PolicyDocument, PolicyVersion,
    Principal, Registered, Release, Role, Submission,
};

use crate::backend::{
    Backend, Identity, JobFiles, LogQuery, ProofRequest, PublicKeys, Registration,
};

/// Largest response read (an audit export of a long-lived store can be large).
const MAX_RESPONSE_BYTES: u64 = 1 << 30;

/// A server and the token to present.
pub(crate) struct Remote {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Remote {
    pub(crate) fn new(server: &str, token: Option<String>) -> Remote {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        Remote {
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

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        decode(&self.get(path)?)
    }

    fn send_json<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        let response = self
            .agent
            .post(self.url(path))
            .header("Authorization", self.auth()?)
            .header("Content-Type", "application/json")
            .send(serde_json::to_vec(body)?.as_slice());
        decode(&self.finish(response)?)
    }

    /// The job `id` once it has left `queued` and `running`: long-polls the server (which waits
    /// at most 30 s per request) until it has.
    fn settled_job<T: DeserializeOwned>(
        &self,
        id: &str,
        settled: impl Fn(&T) -> bool,
    ) -> Result<T> {
        loop {
            let view: T = self.get_json(&job_path(id, "?wait=30"))?;
            if settled(&view) {
                return Ok(view);
            }
        }
    }
}

/// A server's JSON answer as `T`; an answer of another shape means client and server disagree.
fn decode<T: DeserializeOwned>(body: &str) -> Result<T> {
    serde_json::from_str(body).context("the server's answer is not what this client expects")
}

/// Fields of a JSON object answer.
#[derive(serde::Deserialize)]
struct Datasets {
    datasets: Vec<DatasetView>,
}
#[derive(serde::Deserialize)]
struct Jobs {
    jobs: Vec<JobView>,
}
#[derive(serde::Deserialize)]
struct Lines {
    lines: Vec<String>,
}
#[derive(serde::Deserialize)]
struct Budget {
    budget: Vec<BudgetLine>,
}
#[derive(serde::Deserialize)]
struct Entries {
    entries: Vec<AuditEntry>,
}
#[derive(serde::Deserialize)]
struct Principals {
    principals: Vec<Principal>,
}
#[derive(serde::Deserialize)]
struct Token {
    token: String,
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

fn job_path(id: &str, tail: &str) -> String {
    format!("/v1/jobs/{}{tail}", encode(id))
}

/// The body of a submission or check: the manifest's text and its module, base64 (empty for a
/// SQL job).
fn job_body(job: &JobFiles) -> Result<Value> {
    Ok(json!({
        "manifest": job.manifest,
        "module": base64::engine::general_purpose::STANDARD.encode(&job.module),
    }))
}

fn dataset_path(name: &str, tail: &str) -> String {
    format!("/v1/datasets/{}{tail}", encode(name))
}

/// Whether a job, as the server shows it, has left `queued` and `running`.
fn settled(view: &ConsumerJobView) -> bool {
    view.state.settled()
}

impl Backend for Remote {
    fn whoami(&mut self) -> Result<Identity> {
        self.get_json("/v1/whoami")
    }

    fn register_dataset(&mut self, r: Registration<'_>) -> Result<Registered> {
        let mut f =
            std::fs::File::open(r.file).with_context(|| format!("opening {}", r.file.display()))?;
        let path = format!(
            "/v1/datasets{}",
            query(&[
                ("name", Some(r.name.to_owned())),
                ("privacy_unit", r.privacy_unit.map(str::to_owned)),
                ("columns", r.csv.columns),
                ("header", r.csv.header),
                ("delimiter", r.csv.delimiter),
                ("quote", r.csv.quote),
                ("trim", r.csv.trim.map(|t| t.to_string())),
                ("null", r.csv.null),
                ("replace", r.replace.then(|| "true".to_owned())),
                (
                    "link_keys",
                    (!r.link_keys.is_empty()).then(|| r.link_keys.join(",")),
                ),
            ])
        );
        let response = self
            .agent
            .post(self.url(&path))
            .header("Authorization", self.auth()?)
            .header("Content-Type", "application/octet-stream")
            .send(ureq::SendBody::from_reader(&mut f));
        decode(&self.finish(response)?)
    }

    fn remove_dataset(&mut self, name: &str) -> Result<u64> {
        let response = self
            .agent
            .delete(self.url(&dataset_path(name, "")))
            .header("Authorization", self.auth()?)
            .call();
        let answer: Value = decode(&self.finish(response)?)?;
        answer["versions"]
            .as_u64()
            .context("the server's answer has no `versions`")
    }

    fn datasets(&mut self) -> Result<Vec<DatasetView>> {
        Ok(self.get_json::<Datasets>("/v1/datasets")?.datasets)
    }

    fn dataset_certificate(&mut self, name: &str) -> Result<Certificate> {
        self.get_json(&dataset_path(name, "/certificate"))
    }

    fn set_policy(&mut self, dataset: &str, toml: &str) -> Result<PolicyVersion> {
        let response = self
            .agent
            .put(self.url(&dataset_path(dataset, "/policy")))
            .header("Authorization", self.auth()?)
            .header("Content-Type", "application/toml")
            .send(toml.as_bytes());
        decode(&self.finish(response)?)
    }

    fn policy(&mut self, dataset: &str) -> Result<PolicyDocument> {
        self.get_json(&dataset_path(dataset, "/policy"))
    }

    fn link_key(&mut self) -> Result<veil_engine::LinkKey> {
        decode(&self.get_public("/v1/link/key")?)
    }

    fn evaluate_link(&mut self, blinded: &[String]) -> Result<veil_engine::LinkEvaluation> {
        self.send_json(
            "/v1/link/evaluate",
            &serde_json::json!({ "blinded": blinded }),
        )
    }

    fn propose_link(&mut self, p: &crate::backend::LinkProposal) -> Result<veil_engine::Link> {
        self.send_json("/v1/links", &serde_json::to_value(p)?)
    }

    fn decide_link(&mut self, link: &str, reject: Option<&str>) -> Result<veil_engine::Link> {
        let link = encode(link);
        match reject {
            None => self.send_json(&format!("/v1/links/{link}/accept"), &serde_json::json!({})),
            Some(reason) => self.send_json(
                &format!("/v1/links/{link}/reject"),
                &serde_json::json!({ "reason": reason }),
            ),
        }
    }

    fn revoke_link(&mut self, link: &str, reason: &str) -> Result<veil_engine::Link> {
        self.send_json(
            &format!("/v1/links/{}/revoke", encode(link)),
            &serde_json::json!({ "reason": reason }),
        )
    }

    fn links(&mut self) -> Result<Vec<veil_engine::Link>> {
        #[derive(serde::Deserialize)]
        struct Links {
            links: Vec<veil_engine::Link>,
        }
        Ok(self.get_json::<Links>("/v1/links")?.links)
    }

    fn budget(&mut self) -> Result<Vec<BudgetLine>> {
        Ok(self.get_json::<Budget>("/v1/budget")?.budget)
    }

    fn check(&mut self, job: &JobFiles) -> Result<JobCheck> {
        self.send_json("/v1/jobs/check", &job_body(job)?)
    }

    fn submit(&mut self, job: &JobFiles) -> Result<Submission> {
        let submitted: Submission = self.send_json("/v1/jobs", &job_body(job)?)?;
        if settled(&submitted.job) {
            return Ok(submitted);
        }
        // Like local mode, answer once the job has settled.
        let job = self.settled_job(&submitted.job.id, settled)?;
        Ok(Submission {
            job,
            refusal: submitted.refusal,
        })
    }

    fn approve(&mut self, job: &str) -> Result<JobView> {
        self.send_json::<Value>(&job_path(job, "/approve"), &json!({}))?;
        self.settled_job(job, JobView::settled)
    }

    fn reject(&mut self, job: &str, reason: &str) -> Result<()> {
        self.send_json::<Value>(&job_path(job, "/reject"), &json!({ "reason": reason }))?;
        Ok(())
    }

    fn job(&mut self, job: &str) -> Result<JobView> {
        self.get_json(&job_path(job, ""))
    }

    fn jobs(&mut self) -> Result<Vec<JobView>> {
        Ok(self.get_json::<Jobs>("/v1/jobs")?.jobs)
    }

    fn job_logs(&mut self, job: &str) -> Result<Vec<String>> {
        Ok(self.get_json::<Lines>(&job_path(job, "/logs"))?.lines)
    }

    fn job_receipt(&mut self, job: &str) -> Result<Receipt> {
        self.get_json(&job_path(job, "/receipt"))
    }

    fn job_result(&mut self, job: &str) -> Result<Release> {
        self.get_json(&job_path(job, "/result"))
    }

    fn audit_export(&mut self) -> Result<String> {
        self.get("/v1/audit/export")
    }

    fn audit_checkpoint(&mut self) -> Result<String> {
        self.get_public("/v1/audit/checkpoint")
    }

    fn audit_log(&mut self, q: &LogQuery) -> Result<Vec<AuditEntry>> {
        let path = format!(
            "/v1/audit/log{}",
            query(&[
                ("dataset", q.dataset.clone()),
                ("consumer", q.consumer.clone()),
                ("module", q.module.clone()),
                ("decision", q.decision.map(|d| d.as_str().to_owned())),
                ("since", q.since.clone()),
                ("until", q.until.clone()),
            ])
        );
        Ok(self.get_json::<Entries>(&path)?.entries)
    }

    fn prove(&mut self, request: ProofRequest) -> Result<Proof> {
        let path = match request {
            ProofRequest::Inclusion { entry, size } => format!(
                "/v1/audit/proof/inclusion{}",
                query(&[
                    ("entry", Some(entry.to_string())),
                    ("size", size.map(|s| s.to_string()))
                ])
            ),
            ProofRequest::Consistency { from, size } => format!(
                "/v1/audit/proof/consistency{}",
                query(&[
                    ("from", Some(from.to_string())),
                    ("size", size.map(|s| s.to_string()))
                ])
            ),
        };
        self.get_json(&path)
    }

    fn public_keys(&mut self) -> Result<PublicKeys> {
        decode(&self.get_public("/v1/public-key")?)
    }

    fn add_principal(&mut self, name: &str, role: Role) -> Result<String> {
        let body = json!({ "name": name, "role": role });
        Ok(self
            .send_json::<Token>("/v1/admin/principals", &body)?
            .token)
    }

    fn principals(&mut self) -> Result<Vec<Principal>> {
        Ok(self
            .get_json::<Principals>("/v1/admin/principals")?
            .principals)
    }

    fn revoke(&mut self, name: &str) -> Result<()> {
        let url = self.url(&format!("/v1/admin/principals/{}", encode(name)));
        let response = self
            .agent
            .delete(url)
            .header("Authorization", self.auth()?)
            .call();
        self.finish(response)?;
        Ok(())
    }

    fn reissue_token(&mut self, name: &str) -> Result<String> {
        let path = format!("/v1/admin/principals/{}/token", encode(name));
        Ok(self.send_json::<Token>(&path, &json!({}))?.token)
    }
}
