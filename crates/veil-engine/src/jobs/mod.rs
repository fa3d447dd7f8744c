//! Jobs: the job model and the store helpers its rooms share. Each state change is committed
//! together with its audit entry. The rooms: `lifecycle.rs` (submission, pre-check, approval,
//! debit, run, release — the transactions), `recovery.rs` (closing runs a dead or stopping process
//! left behind), `views.rs` (read models: job lists, results, receipts, logs, budget, metrics).
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use veil_audit::{AuditEvent, AuditLog};
use veil_policy::{
    Approval, Delta, Epsilon, JobManifest, PolicyError, Spent, document_hash,
    model::valid_principal, precheck_with_lookups,
};

use crate::access::{Caller, Operation, require};
use crate::codes::{ConsumerCode, ConsumerState, JobCode};
use crate::error::bad;
use crate::execute::RunRequest;
use crate::store::now;
use crate::{EngineError, Result, Veil};

mod check;
pub(crate) mod lifecycle;
pub use check::{JobCheck, LinkedLeft};
mod recovery;
mod views;

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
    /// Whether a job in this state has left `queued` and `running`.
    pub fn settled(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }

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
    #[serde(with = "crate::codes::epsilon_text")]
    pub epsilon: Epsilon,
    pub policy_version: Option<u64>,
    pub result_hash: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// When the job's outcome becomes visible: fixed at its start from public values only (the
    /// manifest's time budget and the policy's `max_units`), whatever the module does.
    pub release_at: Option<String>,
    /// The linked dataset a SQL job over a link also reads and is charged on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_dataset: Option<String>,
}

/// What a consumer may learn about a job: a coarse state and a generic reason code — never module
/// logs, trap text, unit counts or timings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumerJobView {
    pub id: String,
    pub dataset: String,
    pub state: ConsumerState,
    /// Why a job was refused (only for [`ConsumerState::Refused`]).
    pub code: Option<ConsumerCode>,
    pub module_hash: String,
    pub manifest_hash: String,
    #[serde(with = "crate::codes::epsilon_text")]
    pub epsilon: Epsilon,
    /// When the consumer submitted it, to the second. No update time: it would time the run.
    pub created_at: String,
    /// Once started: when the outcome becomes visible (fixed at the start, see [`JobInfo`]).
    pub release_at: Option<String>,
    /// The linked dataset the job's query joins (the consumer's own query names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_dataset: Option<String>,
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
            epsilon: self.epsilon,
            created_at: veil_catalog::to_the_second(&self.created_at),
            release_at: self.release_at.clone(),
            linked_dataset: self.linked_dataset.clone(),
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

/// The answer to a submission, the same from the API and the CLI: the job as its consumer sees it
/// and, when the pre-check refused it, why. The reason names the policy rule or the ε/δ left in
/// the consumer's own ledger: a function of the manifest, the policy and the consumer's earlier
/// charges, never of the data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    #[serde(flatten)]
    pub job: ConsumerJobView,
    #[serde(default)]
    pub refusal: Option<String>,
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

/// One consumer's ledger line on a dataset, for the dataset's owner (`GET
/// /v1/datasets/{name}/budgets`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumerBudget {
    pub consumer: String,
    #[serde(flatten)]
    pub line: BudgetLine,
}

const JOB_COLUMNS: &str = "id, consumer, dataset, state, code, module_hash, manifest_hash, manifest, epsilon_micro, policy_version, result_hash, created_at, updated_at, release_at, linked_dataset";

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
            epsilon: Epsilon(r.get(8)?),
            policy_version: r.get(9)?,
            result_hash: r.get(10)?,
            created_at: r.get(11)?,
            updated_at: r.get(12)?,
            release_at: r.get(13)?,
            linked_dataset: r.get(14)?,
        },
        state,
    ))
}

/// A job whose start is committed (budget debited, `job_started` logged), with what its run needs.
struct StartedRun {
    job: JobInfo,
    record: veil_catalog::DatasetRecord,
    plan: veil_policy::JobPlan,
    /// The public tables a SQL job joins, as read at the start (the versions its audit names).
    lookups: Vec<veil_policy::sql::Lookup>,
    /// A linked job's linked dataset, charged at the start.
    partner: Option<crate::links::LinkedPartner>,
    /// Fuel each unit gets, fixed by the schedule.
    fuel_per_unit: u64,
    /// When the outcome is committed and becomes visible, fixed at the start.
    release_at: time::OffsetDateTime,
}

/// Writes the consumer's ledger line on the job's dataset as `after` (the sums including this
/// job's charge), in the start transaction.
fn debit(conn: &Connection, job: &JobInfo, after: &Spent) -> Result<()> {
    debit_on(conn, &job.consumer, &job.dataset, after)
}

/// Writes `consumer`'s ledger line on `dataset` as `after`, in the caller's transaction.
fn debit_on(conn: &Connection, consumer: &str, dataset: &str, after: &Spent) -> Result<()> {
    conn.execute(
        "INSERT INTO budget (consumer, dataset, spent_micro, rho_pico, delta_conversion_femto, delta_selection_femto)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(consumer, dataset) DO UPDATE SET spent_micro = excluded.spent_micro,
           rho_pico = excluded.rho_pico, delta_conversion_femto = excluded.delta_conversion_femto,
           delta_selection_femto = excluded.delta_selection_femto",
        params![
            consumer,
            dataset,
            after.epsilon_pure.micro(),
            after.rho,
            after.delta_conversion.0,
            after.delta_selection.0
        ],
    )?;
    Ok(())
}

/// Jobs on `dataset` that have not started: queued or waiting for approval.
pub(crate) fn waiting_jobs(conn: &Connection, dataset: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT id FROM jobs WHERE dataset = ?1 AND state IN ('queued', 'awaiting_approval')
         ORDER BY seq",
    )?;
    let ids = stmt
        .query_map([dataset], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(ids)
}

/// Records a refusal of `job` in the caller's transaction (state, code, `job_refused`), without
/// committing.
pub(crate) fn refuse_in(
    conn: &Connection,
    key: &veil_audit::DomainKey,
    job: &str,
    code: JobCode,
    reason: String,
) -> Result<()> {
    set_state(conn, job, JobState::Refused, Some(code))?;
    AuditLog::append(
        conn,
        key,
        AuditEvent::JobRefused {
            job: job.into(),
            code: code.to_string(),
            reason,
        },
    )?;
    Ok(())
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
    refuse_in(&tx, key, job, code, reason.clone())?;
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

/// Longest rejection reason a holder may give, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// A holder's rejection reason: one line of at most [`MAX_REASON_CHARS`] characters.
pub(crate) fn check_reason(reason: &str) -> Result<()> {
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

pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
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
