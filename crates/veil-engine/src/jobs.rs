//! Jobs: submission, pre-check, approval, budget debit, run, release — each state change committed
//! together with its audit entry.
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use veil_audit::{AuditEvent, AuditLog};
use veil_policy::{
    Approval, Delta, Epsilon, JobManifest, PolicyError, Release, Spent, document_hash,
    model::valid_principal, precheck,
};

use crate::access::Viewer;
use crate::codes::{ConsumerCode, ConsumerState, JobCode};
use crate::error::bad;
use crate::execute::RunRequest;
use crate::store::now;
use crate::{EngineError, Result, Veil};

/// Where a job is. Consumers see only this and a generic code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Admitted (pre-check passed, approved if the policy asks for it), waiting for a worker.
    Queued,
    AwaitingApproval,
    Running,
    Released,
    Refused,
    Rejected,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::AwaitingApproval => "awaiting_approval",
            JobState::Running => "running",
            JobState::Released => "released",
            JobState::Refused => "refused",
            JobState::Rejected => "rejected",
            JobState::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => JobState::Queued,
            "awaiting_approval" => JobState::AwaitingApproval,
            "running" => JobState::Running,
            "released" => JobState::Released,
            "refused" => JobState::Refused,
            "rejected" => JobState::Rejected,
            "failed" => JobState::Failed,
            other => return Err(EngineError::Internal(format!("unknown job state {other}"))),
        })
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's metadata (never its result or logs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: String,
    pub consumer: String,
    pub dataset: String,
    pub state: JobState,
    /// Why a job was refused, rejected or failed.
    pub code: Option<JobCode>,
    pub module_hash: String,
    pub manifest_hash: String,
    pub manifest: String,
    pub epsilon: String,
    pub policy_version: Option<u64>,
    pub result_hash: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// When the job's outcome becomes visible: fixed at its start from public values only (the
    /// manifest's time budget and the policy's `max_units`), whatever the module does.
    pub release_at: Option<String>,
}

/// What a consumer may learn about a job: a coarse state and a generic reason code — never module
/// logs, trap text, unit counts or timings.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerJobView {
    pub id: String,
    pub dataset: String,
    pub state: ConsumerState,
    /// Why a job was refused (only for [`ConsumerState::Refused`]).
    pub code: Option<ConsumerCode>,
    pub module_hash: String,
    pub manifest_hash: String,
    pub epsilon: String,
    /// When the consumer submitted it, to the second. No update time: it would time the run.
    pub created_at: String,
    /// Once started: when the outcome becomes visible (fixed at the start, see [`JobInfo`]).
    pub release_at: Option<String>,
}

impl JobInfo {
    /// The consumer's coarse view of this job.
    pub fn consumer_view(&self) -> ConsumerJobView {
        let refused = |fallback: JobCode| {
            let code = self.code.unwrap_or(fallback).for_consumer();
            (ConsumerState::Refused, Some(code))
        };
        let (state, code) = match self.state {
            JobState::Queued => (ConsumerState::Queued, None),
            JobState::AwaitingApproval => (ConsumerState::AwaitingApproval, None),
            JobState::Running => (ConsumerState::Running, None),
            JobState::Released => (ConsumerState::Released, None),
            JobState::Refused => refused(JobCode::Policy),
            JobState::Rejected => refused(JobCode::RejectedByHolder),
            JobState::Failed => refused(JobCode::Internal),
        };
        ConsumerJobView {
            id: self.id.clone(),
            dataset: self.dataset.clone(),
            state,
            code,
            module_hash: self.module_hash.clone(),
            manifest_hash: self.manifest_hash.clone(),
            epsilon: self.epsilon.clone(),
            created_at: veil_catalog::to_the_second(&self.created_at),
            release_at: self.release_at.clone(),
        }
    }
}

/// What one run of a job did: its final state, the privacy units it went through and the time
/// its sandbox stage took (operator metrics; never shown to consumers).
#[derive(Debug, Clone, Copy)]
pub struct JobRun {
    pub state: JobState,
    pub units: u64,
    pub sandbox_time: std::time::Duration,
    /// The run ended after the job's scheduled release time (an overloaded machine, or a cost
    /// model too optimistic for it): the release was late.
    pub overran: bool,
}

/// What `submit_job` did.
#[derive(Debug, Clone)]
pub struct SubmitOutcome {
    pub job: String,
    pub state: JobState,
}

/// One line of `veil budget`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BudgetLine {
    pub dataset: String,
    /// ε spent: pure ε plus the (ε, δ) conversion of the zCDP ρ spent (see `veil_policy::accountant`).
    pub spent: String,
    /// `total` less `spent` and less `published`.
    pub remaining: String,
    pub total: String,
    /// ε of the dataset's published unit count (seen by every admitted consumer), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    pub per_job_cap: String,
    pub delta_spent: String,
    pub delta_remaining: String,
    pub delta_total: String,
}

const JOB_COLUMNS: &str = "id, consumer, dataset, state, code, module_hash, manifest_hash, manifest, epsilon_micro, policy_version, result_hash, created_at, updated_at, release_at";

fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(JobInfo, String)> {
    let state: String = r.get(3)?;
    Ok((
        JobInfo {
            id: r.get(0)?,
            consumer: r.get(1)?,
            dataset: r.get(2)?,
            state: JobState::AwaitingApproval,
            code: r.get(4)?,
            module_hash: r.get(5)?,
            manifest_hash: r.get(6)?,
            manifest: r.get(7)?,
            epsilon: Epsilon(r.get(8)?).to_string(),
            policy_version: r.get(9)?,
            result_hash: r.get(10)?,
            created_at: r.get(11)?,
            updated_at: r.get(12)?,
            release_at: r.get(13)?,
        },
        state,
    ))
}

/// Records a refusal in the caller's write transaction and commits it: the job's state and code
/// and its `job_refused` entry, together. Returns the error the caller answers with.
fn refuse(
    tx: rusqlite::Transaction<'_>,
    key: &veil_audit::DomainKey,
    job: &str,
    code: JobCode,
    reason: String,
) -> Result<EngineError> {
    set_state(&tx, job, JobState::Refused, Some(code))?;
    AuditLog::append(
        &tx,
        key,
        AuditEvent::JobRefused {
            job: job.into(),
            code: code.to_string(),
            reason: reason.clone(),
        },
    )?;
    tx.commit()?;
    Ok(EngineError::Refused {
        job: job.into(),
        code,
        reason,
    })
}

/// The one answer for a job that does not exist or that the caller may not see.
pub(crate) fn no_such_job(id: &str) -> EngineError {
    EngineError::NotFound(format!("no job `{id}`"))
}

fn load_job(conn: &Connection, id: &str) -> Result<JobInfo> {
    let row = conn
        .query_row(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
            [id],
            job_from_row,
        )
        .optional()?;
    let (mut job, state) = row.ok_or_else(|| no_such_job(id))?;
    job.state = JobState::parse(&state)?;
    Ok(job)
}

/// ε a consumer's jobs may spend on `dataset` in all: the policy's total less the ε of a
/// published unit count, which every admitted consumer sees (`datasets.rs`).
fn jobs_epsilon_total(
    conn: &Connection,
    dataset: &str,
    policy: &veil_policy::Policy,
) -> Result<Epsilon> {
    let published = crate::datasets::published_count(conn, dataset)?
        .map(|p| p.epsilon)
        .unwrap_or_default();
    Ok(policy.epsilon_total.saturating_sub(published))
}

/// The ledger line of `consumer` on `dataset`: the sums of its jobs' charges.
fn spent(conn: &Connection, consumer: &str, dataset: &str) -> Result<Spent> {
    let row = conn
        .query_row(
            "SELECT spent_micro, rho_pico, delta_conversion_femto, delta_selection_femto
             FROM budget WHERE consumer = ?1 AND dataset = ?2",
            [consumer, dataset],
            |r| {
                Ok(Spent {
                    epsilon_pure: Epsilon(r.get(0)?),
                    rho: r.get(1)?,
                    delta_conversion: Delta(r.get(2)?),
                    delta_selection: Delta(r.get(3)?),
                })
            },
        )
        .optional()?;
    Ok(row.unwrap_or_default())
}

fn set_state(conn: &Connection, job: &str, state: JobState, code: Option<JobCode>) -> Result<()> {
    conn.execute(
        "UPDATE jobs SET state = ?2, code = ?3, updated_at = ?4 WHERE id = ?1",
        params![job, state.as_str(), code, now()],
    )?;
    Ok(())
}

impl Veil {
    /// Submits the job described by the manifest at `manifest_path` (its `module` is read relative
    /// to the manifest) as `consumer`, and runs it at once if no approval is needed: the local
    /// CLI's way. The service records jobs with [`Veil::submit`] and leaves running to its workers.
    pub fn submit_job(&mut self, manifest_path: &Path, consumer: &str) -> Result<SubmitOutcome> {
        let text = std::fs::read_to_string(manifest_path).map_err(|e| {
            bad(format!(
                "cannot read manifest {}: {e}",
                manifest_path.display()
            ))
        })?;
        let manifest = JobManifest::from_toml(&text)?;
        let module_path = manifest_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&manifest.module);
        let wasm = std::fs::read(&module_path)
            .map_err(|e| bad(format!("cannot read module {}: {e}", module_path.display())))?;
        let outcome = self.submit(&text, &wasm, consumer)?;
        if outcome.state == JobState::Queued {
            let state = self.run_job(&outcome.job)?.state;
            return Ok(SubmitOutcome {
                job: outcome.job,
                state,
            });
        }
        Ok(outcome)
    }

    /// Records a job: manifest text (TOML; its `module` field is ignored) and module bytes, as
    /// `consumer`. Malformed manifests, invalid modules and unknown datasets are errors that change
    /// nothing. A job the policy or the budget refuses is recorded (with its audit entries) and
    /// returned as [`EngineError::Refused`]. Otherwise the job is `queued` for a worker
    /// ([`Veil::run_job`]) or `awaiting_approval`.
    pub fn submit(&mut self, text: &str, wasm: &[u8], consumer: &str) -> Result<SubmitOutcome> {
        if !valid_principal(consumer) {
            return Err(bad(format!("`{consumer}` is not a valid principal name")));
        }
        let mut manifest = JobManifest::from_toml(text)?;
        // A dataset the consumer is not admitted to answers like a missing one; from here on the
        // manifest names the dataset by its id.
        let record = self.find_dataset(Viewer::Consumer(consumer), &manifest.dataset)?;
        manifest.dataset = record.name.clone();
        let stored = self.policy(&manifest.dataset)?.ok_or_else(|| {
            bad(format!(
                "dataset `{}` has no release policy yet",
                manifest.dataset
            ))
        })?;
        // Validate and compile before recording anything: a bad module is bad input.
        let compiled = self.sandbox()?.compile(wasm)?;
        if compiled.is_component() && manifest.blocks.is_none() {
            return Err(bad(
                "the module is a WebAssembly component (Python and other interpreted guests): \
                 components run in sample-and-aggregate mode only; add `blocks = N` to the \
                 manifest (docs/jobs.md)",
            ));
        }
        // A time budget too short for the policy's bound on units is bad input, told before
        // anything is recorded (it depends on public values only).
        let request = veil_policy::schedule::ScheduleRequest::for_job(&manifest, &stored.policy);
        veil_policy::schedule::schedule(&request, &self.config.cost_model())?;
        let module_hash = compiled.hash().to_owned();
        let manifest_hash = document_hash(text);
        let schema = veil_catalog::schema_of(&self.data_dir, &record)?;

        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let open: u64 = tx.query_row(
            "SELECT COUNT(*) FROM jobs WHERE consumer = ?1
               AND state IN ('queued', 'awaiting_approval', 'running')",
            [consumer],
            |r| r.get(0),
        )?;
        if open >= self.config.max_open_jobs {
            return Err(EngineError::Busy(format!(
                "`{consumer}` already has {open} jobs queued, awaiting approval or running \
                 (at most {}); wait for some to finish",
                self.config.max_open_jobs
            )));
        }
        let seq: u64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs", [], |r| {
            r.get(0)
        })?;
        let job = format!("job-{seq:06}");
        // The state the job has unless the pre-check below refuses it.
        let admitted = match stored.policy.approval {
            Approval::Manual => JobState::AwaitingApproval,
            Approval::Auto => JobState::Queued,
        };
        tx.execute(
            "INSERT OR IGNORE INTO modules (hash, bytes) VALUES (?1, ?2)",
            params![module_hash, wasm],
        )?;
        let ts = now();
        tx.execute(
            "INSERT INTO jobs (id, seq, consumer, dataset, manifest, manifest_hash, module_hash, epsilon_micro, policy_version, state, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
            params![job, seq, consumer, manifest.dataset, text, manifest_hash, module_hash, manifest.epsilon.micro(), stored.version, admitted.as_str(), ts],
        )?;
        AuditLog::append(
            &tx,
            &self.key,
            AuditEvent::JobSubmitted {
                job: job.clone(),
                consumer: consumer.into(),
                dataset: manifest.dataset.clone(),
                module_hash,
                manifest_hash,
                epsilon_micro: manifest.epsilon.micro(),
                purpose: manifest.purpose.clone(),
            },
        )?;
        let refusal = match precheck(&stored.policy, &manifest, &schema, consumer) {
            Err(PolicyError::Refused(reason)) => Some((JobCode::Policy, reason)),
            Err(other) => return Err(other.into()),
            Ok(plan) => {
                let used = spent(&tx, consumer, &manifest.dataset)?;
                used.admit(
                    &plan.charge,
                    jobs_epsilon_total(&tx, &manifest.dataset, &stored.policy)?,
                    stored.policy.delta_total,
                )
                .err()
                .map(|why| {
                    (
                        JobCode::Budget,
                        format!("{why} for `{consumer}` on `{}`", manifest.dataset),
                    )
                })
            }
        };
        if let Some((code, reason)) = refusal {
            return Err(refuse(tx, &self.key, &job, code, reason)?);
        }
        tx.commit()?;
        Ok(SubmitOutcome {
            job,
            state: admitted,
        })
    }

    /// Approves a job waiting for `holder` (the dataset's owner) and runs it at once: the local
    /// CLI's way. The service queues it with [`Veil::approve`].
    pub fn approve_job(&mut self, job: &str, holder: &str) -> Result<JobState> {
        self.approve(job, holder)?;
        Ok(self.run_job(job)?.state)
    }

    /// Approves a job waiting for `holder` (the dataset's owner): it is queued for a worker.
    pub fn approve(&mut self, job: &str, holder: &str) -> Result<()> {
        self.decide(job, holder, None)
    }

    /// Rejects a job waiting for `holder`. Nothing is charged.
    pub fn reject_job(&mut self, job: &str, holder: &str, reason: &str) -> Result<()> {
        self.decide(job, holder, Some(reason))
    }

    fn decide(&mut self, job_id: &str, holder: &str, reject: Option<&str>) -> Result<()> {
        if let Some(reason) = reject {
            check_reason(reason)?;
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let job = load_job(&tx, job_id)?;
        let owner = veil_catalog::get(&tx, &job.dataset)?
            .map(|d| d.owner)
            .unwrap_or_default();
        // Another holder's job answers like a missing one.
        if owner != holder {
            return Err(no_such_job(job_id));
        }
        if job.state != JobState::AwaitingApproval {
            return Err(bad(format!(
                "job {job_id} is {}, not awaiting approval",
                job.state
            )));
        }
        match reject {
            Some(reason) => {
                set_state(
                    &tx,
                    job_id,
                    JobState::Rejected,
                    Some(JobCode::RejectedByHolder),
                )?;
                AuditLog::append(
                    &tx,
                    &self.key,
                    AuditEvent::JobRejected {
                        job: job_id.into(),
                        holder: holder.into(),
                        reason: reason.into(),
                    },
                )?;
            }
            None => {
                set_state(&tx, job_id, JobState::Queued, None)?;
                AuditLog::append(
                    &tx,
                    &self.key,
                    AuditEvent::JobApproved {
                        job: job_id.into(),
                        holder: holder.into(),
                    },
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Charges the budget (committed with `job_started`), runs the module, passes the output through
    /// the gate, and commits the release with its audit record.
    ///
    /// Only a `queued` job starts; the check and the debit share one write transaction, so of two
    /// workers (or processes) that try the same job exactly one runs it. If the job is closed
    /// meanwhile (graceful shutdown gave up on it), its outcome is discarded: it stays failed.
    pub fn run_job(&mut self, job_id: &str) -> Result<JobRun> {
        // 1. Debit and start, in one transaction, before anything runs.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let job = load_job(&tx, job_id)?;
        let record =
            veil_catalog::get(&tx, &job.dataset)?.ok_or_else(|| internal("dataset vanished"))?;
        drop(tx);
        let stored = self
            .policy(&job.dataset)?
            .ok_or_else(|| internal("policy vanished"))?;
        let mut manifest = JobManifest::from_toml(&job.manifest)?;
        manifest.dataset = job.dataset.clone();
        let schema = veil_catalog::schema_of(&self.data_dir, &record)?;
        let plan = precheck(&stored.policy, &manifest, &schema, &job.consumer);

        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Re-read under the write lock: another process may have run or charged meanwhile.
        let job = load_job(&tx, job_id)?;
        if job.state != JobState::Queued {
            return Err(EngineError::Conflict(format!(
                "job {job_id} is {}, it cannot start",
                job.state
            )));
        }
        let used = spent(&tx, &job.consumer, &job.dataset)?;
        let epsilon_total = jobs_epsilon_total(&tx, &job.dataset, &stored.policy)?;
        let admitted = match &plan {
            Ok(plan) => Some(used.admit(&plan.charge, epsilon_total, stored.policy.delta_total)),
            Err(_) => None,
        };
        let refusal = match (&plan, &admitted) {
            (Err(PolicyError::Refused(reason)), _) => Some((JobCode::Policy, reason.clone())),
            (Err(e), _) => return Err(EngineError::Internal(e.to_string())),
            (Ok(_), Some(Err(why))) => Some((
                JobCode::Budget,
                format!("{why} for `{}` on `{}`", job.consumer, job.dataset),
            )),
            (Ok(_), _) => None,
        };
        if let Some((code, reason)) = refusal {
            return Err(refuse(tx, &self.key, job_id, code, reason)?);
        }
        let plan = plan.expect("refusals handled above");
        let schedule = veil_policy::schedule::schedule(&plan.schedule, &self.config.cost_model())
            .map_err(|e| EngineError::Internal(format!("schedule: {e}")))?;
        let started_at = to_the_millisecond(time::OffsetDateTime::now_utc());
        let release_at = started_at + schedule.duration;
        let after = admitted
            .expect("a plan was made")
            .expect("refusals handled above");
        let (after_epsilon, after_delta) = after.totals();
        tx.execute(
            "INSERT INTO budget (consumer, dataset, spent_micro, rho_pico, delta_conversion_femto, delta_selection_femto)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(consumer, dataset) DO UPDATE SET spent_micro = excluded.spent_micro,
               rho_pico = excluded.rho_pico, delta_conversion_femto = excluded.delta_conversion_femto,
               delta_selection_femto = excluded.delta_selection_femto",
            params![
                job.consumer,
                job.dataset,
                after.epsilon_pure.micro(),
                after.rho,
                after.delta_conversion.0,
                after.delta_selection.0
            ],
        )?;
        tx.execute(
            "UPDATE jobs SET state = ?2, policy_version = ?3, runner_pid = ?4, runner_start = ?5, updated_at = ?6, release_at = ?7 WHERE id = ?1",
            params![job_id, JobState::Running.as_str(), stored.version, std::process::id(), process_start(std::process::id()), now(), rfc3339(release_at)],
        )?;
        AuditLog::append_at(
            &tx,
            &self.key,
            AuditEvent::JobStarted {
                job: job_id.into(),
                consumer: job.consumer.clone(),
                dataset: job.dataset.clone(),
                dataset_commitment: record.content_commitment.clone(),
                policy_version: stored.version,
                policy_hash: stored.hash.clone(),
                module_hash: job.module_hash.clone(),
                epsilon_micro: manifest.epsilon.micro(),
                spent_micro_after: after_epsilon.micro(),
                total_micro: stored.policy.epsilon_total.micro(),
                rho_pico: plan.charge.rho,
                delta_conversion_femto: plan.charge.delta_conversion.0,
                delta_selection_femto: plan.charge.delta_selection.0,
                spent_delta_femto_after: after_delta.0,
            },
            started_at,
        )?;
        tx.commit()?;

        // 2. Run. Whatever happens from here on, the budget stays spent.
        let wasm: Vec<u8> = self.conn.query_row(
            "SELECT bytes FROM modules WHERE hash = ?1",
            [&job.module_hash],
            |r| r.get(0),
        )?;
        let request = RunRequest {
            plan,
            record: &record,
            wasm: &wasm,
            fuel_per_unit: schedule.fuel_per_unit,
        };
        let started = std::time::Instant::now();
        let outcome = self.execute(request);
        let sandbox_time = started.elapsed();
        let units = match &outcome {
            Ok(run) => run.units,
            Err(failure) => failure.units,
        };
        let overran = wait_until(release_at);
        if overran {
            tracing::warn!(job = job_id, "the run overran its schedule; released late");
        }

        // 3. Close the job: release or denial, with its audit record, in one transaction.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now_state = load_job(&tx, job_id)?.state;
        if now_state != JobState::Running {
            // Closed while running (graceful shutdown gave up on it): nothing may be released.
            return Ok(JobRun {
                state: now_state,
                units,
                sandbox_time,
                overran,
            });
        }
        let state = match outcome {
            Ok(run) => {
                write_logs(&tx, job_id, &run.holder_log)?;
                let result = serde_json::to_string(&run.release)
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                let result_hash = veil_audit::sha256_hex(result.as_bytes());
                AuditLog::append_at(
                    &tx,
                    &self.key,
                    AuditEvent::JobFinished {
                        job: job_id.into(),
                        status: "completed".into(),
                        units: run.units,
                        unit_faults: run.unit_faults,
                    },
                    release_at,
                )?;
                AuditLog::append_at(
                    &tx,
                    &self.key,
                    AuditEvent::ReleaseCreated {
                        job: job_id.into(),
                        result_hash: result_hash.clone(),
                        groups: run.release.rows.len() as u64,
                    },
                    release_at,
                )?;
                tx.execute(
                    "UPDATE jobs SET state = ?2, result = ?3, result_hash = ?4, updated_at = ?5 WHERE id = ?1",
                    params![job_id, JobState::Released.as_str(), result, result_hash, now()],
                )?;
                JobState::Released
            }
            Err(failure) => {
                write_logs(&tx, job_id, &failure.holder_log)?;
                set_state(&tx, job_id, JobState::Failed, Some(failure.code))?;
                AuditLog::append_at(
                    &tx,
                    &self.key,
                    AuditEvent::JobFinished {
                        job: job_id.into(),
                        status: format!("failed:{}", failure.code),
                        units: failure.units,
                        unit_faults: failure.unit_faults,
                    },
                    release_at,
                )?;
                AuditLog::append_at(
                    &tx,
                    &self.key,
                    AuditEvent::ReleaseDenied {
                        job: job_id.into(),
                        code: failure.code.to_string(),
                        reason: failure.public_reason.clone(),
                    },
                    release_at,
                )?;
                JobState::Failed
            }
        };
        tx.commit()?;
        Ok(JobRun {
            state,
            units,
            sandbox_time,
            overran,
        })
    }

    /// Closes jobs left `running` by a process that no longer exists (a crash): failed, budget kept
    /// spent, recorded in the log. A runner is named by its pid and the kernel's start time for
    /// that pid, so a restarted server that happens to get the old pid (pid 1 in a container) still
    /// recognises the jobs as orphaned.
    pub(crate) fn recover_interrupted_jobs(&mut self) -> Result<()> {
        let orphaned = |pid: Option<u32>, start: Option<u64>| {
            let alive = match (pid, start) {
                (None, _) => false,
                (Some(p), Some(s)) => process_start(p) == Some(s),
                // A row from before start times were recorded.
                (Some(p), None) => Path::new(&format!("/proc/{p}")).exists(),
            };
            !alive
        };
        self.close_running(
            orphaned,
            JobCode::Interrupted,
            "the run was interrupted; its budget stays spent",
        )
        .map(|_| ())
    }

    /// Closes the jobs this process is running, as failed with code `shutdown` (budget spent,
    /// recorded in the log); their workers' outcomes are then discarded. For a graceful shutdown
    /// that has waited long enough. Returns how many jobs were closed.
    pub fn close_own_running_jobs(&mut self) -> Result<usize> {
        let me = std::process::id();
        let my_start = process_start(me);
        self.close_running(
            |pid, start| pid == Some(me) && start == my_start,
            JobCode::Shutdown,
            "the service shut down before the run finished; its budget stays spent",
        )
    }

    fn close_running(
        &mut self,
        select: impl Fn(Option<u32>, Option<u64>) -> bool,
        code: JobCode,
        reason: &str,
    ) -> Result<usize> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let running: Vec<(String, Option<u32>, Option<u64>)> = {
            let mut stmt = tx.prepare(
                "SELECT id, runner_pid, runner_start FROM jobs WHERE state = 'running' ORDER BY seq",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?
        };
        let mut closed = 0;
        for (job, pid, start) in running {
            if !select(pid, start) {
                continue;
            }
            set_state(&tx, &job, JobState::Failed, Some(code))?;
            AuditLog::append(
                &tx,
                &self.key,
                AuditEvent::JobFinished {
                    job: job.clone(),
                    status: format!("failed:{code}"),
                    units: 0,
                    unit_faults: 0,
                },
            )?;
            AuditLog::append(
                &tx,
                &self.key,
                AuditEvent::ReleaseDenied {
                    job,
                    code: code.to_string(),
                    reason: reason.into(),
                },
            )?;
            closed += 1;
        }
        tx.commit()?;
        Ok(closed)
    }

    /// Gives up on a queued job that could not be started (its stored inputs are unusable — a
    /// damaged dataset file, say): it is refused with code `internal`, nothing charged, recorded in
    /// the log, so workers stop retrying it. Does nothing if the job is no longer queued.
    pub fn abandon_queued_job(&mut self, job_id: &str, reason: &str) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if load_job(&tx, job_id)?.state != JobState::Queued {
            return Ok(());
        }
        set_state(&tx, job_id, JobState::Refused, Some(JobCode::Internal))?;
        AuditLog::append(
            &tx,
            &self.key,
            AuditEvent::JobRefused {
                job: job_id.into(),
                code: JobCode::Internal.to_string(),
                reason: reason.into(),
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The oldest queued jobs, at most `limit`, for a worker pool to run.
    pub fn queued_jobs(&self, limit: usize) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT ?1")?;
        let ids = stmt
            .query_map([limit as i64], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    /// ε spent on each dataset, summed over its consumers (each consumer's ledger converted as
    /// `veil budget` shows it), for metrics.
    pub fn spent_by_dataset(&self) -> Result<Vec<(String, Epsilon)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT consumer, dataset FROM budget ORDER BY dataset")?;
        let lines = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out: Vec<(String, Epsilon)> = Vec::new();
        for (consumer, dataset) in lines {
            let (eps, _) = spent(&self.conn, &consumer, &dataset)?.totals();
            match out.last_mut() {
                Some((d, total)) if *d == dataset => total.0 += eps.0,
                _ => out.push((dataset, eps)),
            }
        }
        Ok(out)
    }

    /// Jobs in each state, for metrics.
    pub fn job_counts(&self) -> Result<Vec<(JobState, u64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(s, n)| Ok((JobState::parse(&s)?, n)))
            .collect()
    }

    /// Every job's metadata (never results or logs), for reviewers.
    pub fn all_jobs(&self) -> Result<Vec<JobInfo>> {
        self.query_jobs("TRUE", &[])
    }

    /// A job's metadata, for its consumer, the dataset's owner, or a reviewer.
    pub fn job(&self, id: &str) -> Result<JobInfo> {
        load_job(&self.conn, id)
    }

    /// Jobs `consumer` submitted.
    pub(crate) fn jobs_of_consumer(&self, consumer: &str) -> Result<Vec<JobInfo>> {
        self.query_jobs("consumer = ?1", &[consumer])
    }

    /// Jobs on the datasets `holder` owns.
    pub(crate) fn jobs_on_datasets_of(&self, holder: &str) -> Result<Vec<JobInfo>> {
        self.query_jobs(
            "dataset IN (SELECT name FROM datasets WHERE owner = ?1)",
            &[holder],
        )
    }

    fn query_jobs(&self, condition: &str, args: &[&str]) -> Result<Vec<JobInfo>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE {condition} ORDER BY seq"
        ))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), job_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(mut j, s)| {
                j.state = JobState::parse(&s)?;
                Ok(j)
            })
            .collect()
    }

    /// The released result of a job, for its consumer only.
    pub fn job_result(&self, id: &str, consumer: &str) -> Result<Release> {
        let job = load_job(&self.conn, id)?;
        // Another consumer's job answers like a missing one.
        if job.consumer != consumer {
            return Err(no_such_job(id));
        }
        if job.state != JobState::Released {
            return Err(bad(format!("job {id} has no result: it is {}", job.state)));
        }
        let text: String =
            self.conn
                .query_row("SELECT result FROM jobs WHERE id = ?1", [id], |r| r.get(0))?;
        serde_json::from_str(&text).map_err(|e| EngineError::Internal(e.to_string()))
    }

    /// The signed receipt of a released job, for its consumer (see `veil_audit::Receipt`).
    pub fn job_receipt(&self, id: &str, consumer: &str) -> Result<veil_audit::Receipt> {
        let job = load_job(&self.conn, id)?;
        // Another consumer's job answers like a missing one.
        if job.consumer != consumer {
            return Err(no_such_job(id));
        }
        if job.state != JobState::Released {
            return Err(bad(format!("job {id} has no receipt: it is {}", job.state)));
        }
        let text: String =
            self.conn
                .query_row("SELECT result FROM jobs WHERE id = ?1", [id], |r| r.get(0))?;
        Ok(veil_audit::issue_receipt(&self.conn, &self.key, id, &text)?)
    }

    /// The holder-only log of a job (module log text, trap messages, bounding statistics).
    pub fn job_logs(&self, id: &str, holder: &str) -> Result<Vec<String>> {
        let job = load_job(&self.conn, id)?;
        let owner = self.dataset(&job.dataset)?.owner;
        if owner != holder {
            return Err(no_such_job(id));
        }
        let mut stmt = self
            .conn
            .prepare("SELECT line FROM job_logs WHERE job = ?1 ORDER BY seq")?;
        let lines = stmt
            .query_map([id], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(lines)
    }

    /// Budget of `consumer` on every dataset whose policy lets them in.
    pub fn budget(&self, consumer: &str) -> Result<Vec<BudgetLine>> {
        let mut out = Vec::new();
        for d in self.datasets()? {
            let Some(p) = self.policy(&d.name)? else {
                continue;
            };
            let used = spent(&self.conn, consumer, &d.name)?;
            if !p.policy.allows_consumer(consumer) && used == Spent::default() {
                continue;
            }
            let (eps, delta) = used.totals();
            let for_jobs = jobs_epsilon_total(&self.conn, &d.name, &p.policy)?;
            let published = crate::datasets::published_count(&self.conn, &d.name)?;
            out.push(BudgetLine {
                dataset: d.name,
                spent: eps.to_string(),
                remaining: for_jobs.saturating_sub(eps).to_string(),
                published: published.map(|p| p.epsilon.to_string()),
                total: p.policy.epsilon_total.to_string(),
                per_job_cap: p.policy.epsilon_per_job.to_string(),
                delta_spent: delta.to_string(),
                delta_remaining: p.policy.delta_total.saturating_sub(delta).to_string(),
                delta_total: p.policy.delta_total.to_string(),
            });
        }
        Ok(out)
    }
}

/// Longest rejection reason a holder may give, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// A holder's rejection reason: one line of at most [`MAX_REASON_CHARS`] characters.
fn check_reason(reason: &str) -> Result<()> {
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(bad(format!(
            "the reason is at most {MAX_REASON_CHARS} characters; shorten it"
        )));
    }
    if reason.chars().any(char::is_control) {
        return Err(bad(
            "the reason may not hold control characters (newlines, tabs, terminal escapes); \
             write it on one line",
        ));
    }
    Ok(())
}

/// The consumer and dataset of job `id`, if it exists.
pub(crate) fn job_owners(conn: &Connection, id: &str) -> Result<Option<(String, String)>> {
    Ok(conn
        .query_row(
            "SELECT consumer, dataset FROM jobs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

fn write_logs(conn: &Connection, job: &str, lines: &[String]) -> Result<()> {
    for (i, line) in lines.iter().enumerate() {
        conn.execute(
            "INSERT INTO job_logs (job, seq, line) VALUES (?1, ?2, ?3)",
            params![job, i as u64, line],
        )?;
    }
    Ok(())
}

/// The kernel's start time (clock ticks since boot) of process `pid`, which with the pid names
/// one process for good; `None` where `/proc` cannot tell (the process is gone, or not Linux).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the command name (field 2) may hold spaces, so count after its closing ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// `t` cut to whole milliseconds: public job times are shown to the millisecond.
fn to_the_millisecond(t: time::OffsetDateTime) -> time::OffsetDateTime {
    t.replace_millisecond(t.millisecond())
        .expect("a valid millisecond")
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("UTC time formats")
}

/// Sleeps until `at`; returns whether `at` had already passed (the run overran its schedule).
fn wait_until(at: time::OffsetDateTime) -> bool {
    let left = at - time::OffsetDateTime::now_utc();
    if left.is_negative() {
        return true;
    }
    std::thread::sleep(left.unsigned_abs());
    false
}

fn internal(msg: &str) -> EngineError {
    EngineError::Internal(msg.into())
}
