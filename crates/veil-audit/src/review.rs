//! The reviewer's view of the log: filters and a summary with anomalies worth a look. Pure
//! functions over entries (no I/O), so they work the same on a store and on an exported log.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::entry::{AuditEvent, Entry};

/// What a job's entries share, learnt from its `job_submitted` entry.
#[derive(Debug, Clone, Default)]
struct JobFacts {
    consumer: String,
    dataset: String,
    module_hash: String,
}

fn job_of(event: &AuditEvent) -> Option<&str> {
    match event {
        AuditEvent::JobSubmitted { job, .. }
        | AuditEvent::JobRefused { job, .. }
        | AuditEvent::JobApproved { job, .. }
        | AuditEvent::JobRejected { job, .. }
        | AuditEvent::JobStarted { job, .. }
        | AuditEvent::JobCharged { job, .. }
        | AuditEvent::JobFinished { job, .. }
        | AuditEvent::ReleaseCreated { job, .. }
        | AuditEvent::ReleaseDenied { job, .. } => Some(job),
        _ => None,
    }
}

fn jobs(entries: &[Entry]) -> BTreeMap<String, JobFacts> {
    entries
        .iter()
        .filter_map(|e| match &e.event {
            AuditEvent::JobSubmitted {
                job,
                consumer,
                dataset,
                module_hash,
                ..
            } => Some((
                job.clone(),
                JobFacts {
                    consumer: consumer.clone(),
                    dataset: dataset.clone(),
                    module_hash: module_hash.clone(),
                },
            )),
            _ => None,
        })
        .collect()
}

/// A decision an entry can record: what `audit log --decision` and `?decision=` select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The pre-check or the ledger refused a job.
    Refused,
    /// Its holder approved a job.
    Approved,
    /// Its holder rejected a job.
    Rejected,
    /// A result was released.
    Released,
    /// A release was denied (the run failed).
    Denied,
}

impl Decision {
    pub const ALL: [Decision; 5] = [
        Decision::Refused,
        Decision::Approved,
        Decision::Rejected,
        Decision::Released,
        Decision::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Refused => "refused",
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
            Decision::Released => "released",
            Decision::Denied => "denied",
        }
    }

    pub fn parse(text: &str) -> Option<Decision> {
        Decision::ALL.into_iter().find(|d| d.as_str() == text)
    }
}

/// The decision an entry records, if it records one.
pub fn decision(event: &AuditEvent) -> Option<Decision> {
    Some(match event {
        AuditEvent::JobRefused { .. } => Decision::Refused,
        AuditEvent::JobApproved { .. } => Decision::Approved,
        AuditEvent::JobRejected { .. } => Decision::Rejected,
        AuditEvent::ReleaseCreated { .. } => Decision::Released,
        AuditEvent::ReleaseDenied { .. } => Decision::Denied,
        _ => return None,
    })
}

/// Which entries to show. Empty fields match everything; times are RFC 3339 instants or dates
/// (`2026-11-29`), compared against the entry's time (`until` is exclusive).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub dataset: Option<String>,
    pub consumer: Option<String>,
    pub module_hash: Option<String>,
    pub decision: Option<Decision>,
    pub since: Option<String>,
    pub until: Option<String>,
}

impl Filter {
    /// The entries that match, in log order.
    pub fn apply<'a>(&self, entries: &'a [Entry]) -> Vec<&'a Entry> {
        let jobs = jobs(entries);
        entries
            .iter()
            .filter(|e| {
                let facts = job_of(&e.event).and_then(|j| jobs.get(j));
                let dataset = match &e.event {
                    AuditEvent::DatasetRegistered { dataset, .. }
                    | AuditEvent::PolicySet { dataset, .. }
                    | AuditEvent::UnitCountPublished { dataset, .. } => Some(dataset.as_str()),
                    _ => facts.map(|f| f.dataset.as_str()),
                };
                let ok = |want: &Option<String>, have: Option<&str>| {
                    want.as_deref().is_none_or(|w| have == Some(w))
                };
                ok(&self.dataset, dataset)
                    && ok(&self.consumer, facts.map(|f| f.consumer.as_str()))
                    && ok(&self.module_hash, facts.map(|f| f.module_hash.as_str()))
                    && self.decision.is_none_or(|d| decision(&e.event) == Some(d))
                    && self.since.as_deref().is_none_or(|s| e.time.as_str() >= s)
                    && self.until.as_deref().is_none_or(|u| e.time.as_str() < u)
            })
            .collect()
    }
}

/// ε spent by one consumer on one dataset, as the log records it.
#[derive(Debug, Clone, Serialize)]
pub struct SpendLine {
    pub consumer: String,
    pub dataset: String,
    pub jobs_started: u64,
    /// (time, ε spent in all after that job), in millionths — the budget over time.
    pub over_time: Vec<(String, u64)>,
    pub spent_micro: u64,
    pub total_micro: u64,
}

/// What `veil audit summary` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub entries: u64,
    pub spending: Vec<SpendLine>,
    /// Jobs by how they ended (or where they are): released, refused, rejected, denied, failed,
    /// running, awaiting approval.
    pub jobs_by_outcome: BTreeMap<String, u64>,
    /// Refusals by code and reason.
    pub refusals: BTreeMap<String, u64>,
    pub anomalies: Vec<String>,
}

/// Share of the budget from which a consumer is flagged.
const NEARLY_SPENT: f64 = 0.9;
/// This many refusals of one consumer within `BURST_WINDOW` make a burst.
const BURST_REFUSALS: usize = 5;
const BURST_WINDOW: time::Duration = time::Duration::hours(1);
/// One manifest submitted with this many different module hashes is flagged.
const RESUBMISSIONS: usize = 3;

/// Summarises the log for a reviewer.
pub fn summarize(entries: &[Entry]) -> Summary {
    let jobs = jobs(entries);
    let mut spending: BTreeMap<(String, String), SpendLine> = BTreeMap::new();
    let mut outcome: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut refusals: BTreeMap<String, u64> = BTreeMap::new();
    let mut refusal_times: BTreeMap<String, Vec<OffsetDateTime>> = BTreeMap::new();
    let mut modules_per_manifest: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for e in entries {
        match &e.event {
            AuditEvent::JobSubmitted {
                job,
                consumer,
                module_hash,
                manifest_hash,
                ..
            } => {
                outcome.insert(job.clone(), "awaiting approval");
                modules_per_manifest
                    .entry((consumer.clone(), manifest_hash.clone()))
                    .or_default()
                    .insert(module_hash.clone());
            }
            AuditEvent::JobRefused { job, code, reason } => {
                outcome.insert(job.clone(), "refused");
                *refusals.entry(format!("{code}: {reason}")).or_default() += 1;
                if let (Some(f), Ok(t)) = (jobs.get(job), OffsetDateTime::parse(&e.time, &Rfc3339))
                {
                    refusal_times.entry(f.consumer.clone()).or_default().push(t);
                }
            }
            AuditEvent::JobRejected { job, .. } => {
                outcome.insert(job.clone(), "rejected");
            }
            AuditEvent::JobStarted {
                job,
                consumer,
                dataset,
                spent_micro_after,
                total_micro,
                ..
            } => {
                outcome.insert(job.clone(), "running");
                let line = spending
                    .entry((consumer.clone(), dataset.clone()))
                    .or_insert_with(|| SpendLine {
                        consumer: consumer.clone(),
                        dataset: dataset.clone(),
                        jobs_started: 0,
                        over_time: Vec::new(),
                        spent_micro: 0,
                        total_micro: *total_micro,
                    });
                line.jobs_started += 1;
                line.spent_micro = *spent_micro_after;
                line.total_micro = *total_micro;
                line.over_time.push((e.time.clone(), *spent_micro_after));
            }
            AuditEvent::JobFinished { job, status, .. } if status.starts_with("failed") => {
                outcome.insert(job.clone(), "failed");
            }
            AuditEvent::ReleaseCreated { job, .. } => {
                outcome.insert(job.clone(), "released");
            }
            AuditEvent::ReleaseDenied { job, .. } => {
                outcome.insert(job.clone(), "denied");
            }
            _ => {}
        }
    }
    let mut anomalies = Vec::new();
    for line in spending.values() {
        if line.total_micro > 0 && line.spent_micro as f64 >= NEARLY_SPENT * line.total_micro as f64
        {
            anomalies.push(format!(
                "`{}` has spent {:.0}% of its budget on `{}`",
                line.consumer,
                100.0 * line.spent_micro as f64 / line.total_micro as f64,
                line.dataset
            ));
        }
    }
    for (consumer, mut times) in refusal_times {
        times.sort();
        let burst = times
            .windows(BURST_REFUSALS)
            .any(|w| w[BURST_REFUSALS - 1] - w[0] <= BURST_WINDOW);
        if burst {
            anomalies.push(format!(
                "`{consumer}` had {BURST_REFUSALS} or more jobs refused within an hour"
            ));
        }
    }
    for ((consumer, manifest), modules) in modules_per_manifest {
        if modules.len() >= RESUBMISSIONS {
            anomalies.push(format!(
                "`{consumer}` submitted manifest {}… with {} different module hashes",
                &manifest[..manifest.len().min(12)],
                modules.len()
            ));
        }
    }
    let mut jobs_by_outcome = BTreeMap::new();
    for o in outcome.values() {
        *jobs_by_outcome.entry(o.to_string()).or_default() += 1;
    }
    Summary {
        entries: entries.len() as u64,
        spending: spending.into_values().collect(),
        jobs_by_outcome,
        refusals,
        anomalies,
    }
}
