//! Who may see which dataset, and what a dataset name means to whom: the one place these rules
//! live, used by the server and the local CLI alike.
//!
//! Dataset ids are `owner:name` ([`veil_catalog::dataset_id`]). A caller may name a dataset by its
//! id or, where it is unambiguous among the datasets the caller may see, by its short name. A
//! dataset the caller may not see answers exactly like one that does not exist — same error, same
//! message — and resolving a name does the same work whether or not it exists (it scans what the
//! caller may see), so neither the answer nor its time tells a hidden dataset from a missing one.
use veil_catalog::DatasetRecord;

use veil_policy::Release;

use crate::jobs::{JobInfo, JobState, no_such_job};

use crate::principals::{Principal, Role};
use crate::{EngineError, Result, Veil};

/// Whose view of the catalog a request is made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer<'a> {
    /// A data holder: sees its own datasets only.
    Holder(&'a str),
    /// A data consumer: sees the datasets whose current policy admits it.
    Consumer(&'a str),
    /// A reviewer, an admin, or the operator on the host: sees every dataset.
    Auditor,
}

impl<'a> Viewer<'a> {
    /// The view of an authenticated principal.
    pub fn of(principal: &'a Principal) -> Self {
        match principal.role {
            Role::Holder => Viewer::Holder(&principal.name),
            Role::Consumer => Viewer::Consumer(&principal.name),
            Role::Reviewer | Role::Admin => Viewer::Auditor,
        }
    }
}

/// The one answer for a dataset that does not exist or that the caller may not see.
pub(crate) fn no_such_dataset(reference: &str) -> EngineError {
    EngineError::NotFound(format!("no dataset named `{reference}`"))
}

impl Veil {
    /// Whether `viewer` may see `record`'s catalog entry.
    pub fn may_see_dataset(&self, viewer: Viewer<'_>, record: &DatasetRecord) -> Result<bool> {
        Ok(match viewer {
            Viewer::Holder(holder) => record.owner == holder,
            Viewer::Consumer(consumer) => self
                .policy(&record.name)?
                .is_some_and(|p| p.policy.allows_consumer(consumer)),
            Viewer::Auditor => true,
        })
    }

    /// The datasets `viewer` may see, ordered by id.
    pub fn visible_datasets(&self, viewer: Viewer<'_>) -> Result<Vec<DatasetRecord>> {
        let mut visible = Vec::new();
        for record in self.datasets()? {
            if self.may_see_dataset(viewer, &record)? {
                visible.push(record);
            }
        }
        Ok(visible)
    }

    /// The dataset `reference` names for `viewer`: its id (`owner:name`), or a short name that
    /// exactly one dataset `viewer` may see has (a holder's short names are its own datasets').
    /// Not found, or not visible: [`EngineError::NotFound`], the same for both. A short name that
    /// several visible datasets share: [`EngineError::BadInput`] listing their ids.
    pub fn find_dataset(&self, viewer: Viewer<'_>, reference: &str) -> Result<DatasetRecord> {
        let qualified = reference.contains(veil_catalog::ID_SEPARATOR);
        let mut matches: Vec<DatasetRecord> = self
            .visible_datasets(viewer)?
            .into_iter()
            .filter(|d| {
                if qualified {
                    d.name == reference
                } else {
                    d.short_name() == reference
                }
            })
            .collect();
        match matches.len() {
            0 => Err(no_such_dataset(reference)),
            1 => Ok(matches.remove(0)),
            _ => {
                let ids: Vec<String> = matches.iter().map(|d| format!("`{}`", d.name)).collect();
                Err(EngineError::BadInput(format!(
                    "`{reference}` could mean {}: name the dataset by its id",
                    ids.join(" or ")
                )))
            }
        }
    }

    /// Whether `viewer` may see `job`: its consumer, the owner of its dataset, an auditor.
    pub fn may_see_job(&self, viewer: Viewer<'_>, job: &JobInfo) -> Result<bool> {
        Ok(match viewer {
            Viewer::Consumer(consumer) => job.consumer == consumer,
            Viewer::Holder(holder) => self.dataset(&job.dataset)?.owner == holder,
            Viewer::Auditor => true,
        })
    }

    /// The job `id` if `viewer` may see it; otherwise the same [`EngineError::NotFound`] as for a
    /// job that does not exist.
    pub fn find_job(&self, viewer: Viewer<'_>, id: &str) -> Result<JobInfo> {
        let job = self.job(id)?;
        if self.may_see_job(viewer, &job)? {
            Ok(job)
        } else {
            Err(no_such_job(id))
        }
    }

    /// The jobs `viewer` may see ([`Veil::may_see_job`]), oldest first.
    pub fn visible_jobs(&self, viewer: Viewer<'_>) -> Result<Vec<JobInfo>> {
        match viewer {
            Viewer::Consumer(consumer) => self.jobs_of_consumer(consumer),
            Viewer::Holder(holder) => self.jobs_on_datasets_of(holder),
            Viewer::Auditor => self.all_jobs(),
        }
    }

    /// The dataset id an auditor's filter `reference` means: the id of the one dataset it names,
    /// or `reference` itself when it names none (it then matches no entry). Ambiguous short names
    /// are refused as in [`Veil::find_dataset`].
    pub fn dataset_filter(&self, reference: &str) -> Result<String> {
        match self.find_dataset(Viewer::Auditor, reference) {
            Ok(record) => Ok(record.name),
            Err(EngineError::NotFound(_)) => Ok(reference.to_owned()),
            Err(e) => Err(e),
        }
    }

    /// A released job whose result and receipt `viewer` may read: its consumer's. A job `viewer`
    /// may not see is [`EngineError::NotFound`]; one it may see but not read (its holder, an
    /// auditor) is [`EngineError::Forbidden`]; one not released yet is [`EngineError::Conflict`].
    pub fn released_job_for(&self, viewer: Viewer<'_>, id: &str) -> Result<JobInfo> {
        let job = self.find_job(viewer, id)?;
        if viewer != Viewer::Consumer(&job.consumer) {
            return Err(EngineError::Forbidden(
                "results and receipts are for the job's consumer only".into(),
            ));
        }
        if job.state != JobState::Released {
            return Err(EngineError::Conflict(format!(
                "job {id} has no result: it is {}",
                job.consumer_view().state
            )));
        }
        Ok(job)
    }

    /// The released result of job `id`, for its consumer ([`Veil::released_job_for`]).
    pub fn job_result_as(&self, viewer: Viewer<'_>, id: &str) -> Result<Release> {
        self.released_job_for(viewer, id)?;
        serde_json::from_str(&self.stored_result(id)?)
            .map_err(|e| EngineError::Internal(e.to_string()))
    }

    /// The signed receipt of job `id`, for its consumer ([`Veil::released_job_for`]).
    pub fn job_receipt_as(&self, viewer: Viewer<'_>, id: &str) -> Result<veil_audit::Receipt> {
        self.released_job_for(viewer, id)?;
        let text = self.stored_result(id)?;
        Ok(veil_audit::issue_receipt(&self.conn, &self.key, id, &text)?)
    }

    /// The holder-only log of job `id` (module log text, traps, bounding statistics): for the
    /// owner of its dataset only, since a module may print raw values there. A job `viewer` may
    /// not see is [`EngineError::NotFound`]; one it may see but not own (its consumer, an
    /// auditor) is [`EngineError::Forbidden`].
    pub fn job_logs_as(&self, viewer: Viewer<'_>, id: &str) -> Result<Vec<String>> {
        self.find_job(viewer, id)?;
        if !matches!(viewer, Viewer::Holder(_)) {
            return Err(EngineError::Forbidden(
                "job logs are for the owner of the job's dataset only".into(),
            ));
        }
        self.stored_logs(id)
    }
}
