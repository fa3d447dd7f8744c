//! Who may do what, and who may see which object: the one place these rules live. The server
//! and the local CLI both call the engine's operations with a [`Caller`]; every rule below is
//! applied by the engine, so the two modes give the same answers.
//!
//! Two kinds of rule:
//! - **Roles** ([`Operation`]): registering datasets and setting policies is for holders,
//!   submitting jobs and reading budgets for consumers, reading the audit log for reviewers and
//!   admins, managing principals for admins. A caller in another role gets
//!   [`EngineError::Forbidden`] before anything is looked up, so the refusal says nothing about
//!   any object.
//! - **Objects** (`may_see_*`, `find_*`): a dataset is visible to its owner, to consumers its
//!   current policy admits and to auditors; a job to its consumer, the owner of its dataset and
//!   auditors. An object the caller may not see answers exactly like one that does not exist
//!   ([`EngineError::NotFound`], same message); one it may see but not use this way (a holder
//!   asking for a consumer's result) is [`EngineError::Forbidden`].
//!
//! Dataset ids are `owner:name` ([`veil_catalog::dataset_id`]). A caller may name a dataset by its
//! id or, where it is unambiguous among the datasets the caller may see, by its short name.
//! Resolving a name does the same work whether or not it exists (it scans what the caller may
//! see), so neither the answer nor its time tells a hidden dataset from a missing one.
use serde::{Deserialize, Serialize};
use veil_catalog::{CatalogEntry, DatasetRecord};

use veil_policy::Release;

use crate::datasets::PolicyDocument;
use crate::jobs::{ConsumerJobView, JobInfo, JobState, no_such_job};

use crate::principals::{Principal, Role};
use crate::{EngineError, Result, Veil};

/// Who is asking: an authenticated principal's name and role. Only trusted code makes one — the
/// server from a bearer token ([`Veil::authenticate`]), the local CLI from a principal stored in
/// the data directory, or [`Caller::operator`] for the host's operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// The name the host's operator acts under in the log (see [`Caller::operator`]).
pub const OPERATOR: &str = "operator";

impl Caller {
    pub fn new(name: &str, role: Role) -> Caller {
        Caller {
            name: name.to_owned(),
            role,
        }
    }

    /// The operator on the store's host: whoever can open the data directory can read and change
    /// everything in it anyway, so it acts as an admin (named [`OPERATOR`] in the log). This is how
    /// the first principals are created.
    pub fn operator() -> Caller {
        Caller::new(OPERATOR, Role::Admin)
    }

    /// Whose view of the catalog and the jobs this caller has.
    pub fn viewer(&self) -> Viewer<'_> {
        match self.role {
            Role::Holder => Viewer::Holder(&self.name),
            Role::Consumer => Viewer::Consumer(&self.name),
            Role::Reviewer | Role::Admin => Viewer::Auditor,
        }
    }
}

impl From<&Principal> for Caller {
    fn from(p: &Principal) -> Caller {
        Caller::new(&p.name, p.role)
    }
}

/// Operations only some roles may call. Operations open to every role (listing datasets and
/// jobs, reading one, proofs) check objects instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Register a dataset (the caller owns it).
    RegisterDataset,
    /// Retire one's own dataset (its files deleted, its history kept).
    RemoveDataset,
    /// Set a policy on one's own dataset.
    SetPolicy,
    /// Obtain the registration certificate of one's own dataset.
    ReadCertificate,
    /// Have the domain evaluate its link OPRF on blinded identifiers (to derive join tokens).
    EvaluateLink,
    /// Propose a link from one's own dataset, or accept or reject one proposed to it.
    ManageLinks,
    /// Submit a job.
    SubmitJob,
    /// Approve or reject a job on one's own dataset.
    DecideJob,
    /// Read one's own budget.
    ReadBudget,
    /// Read the consumers' ledgers and the policy history of a dataset: its owner's own, or any
    /// for reviewers and admins (what the holder's console shows beside its approval queue).
    ReadLedgers,
    /// Read the whole audit log, its summary, its export and the metrics.
    ReadAudit,
    /// Create, list, revoke principals and reissue their tokens.
    ManagePrincipals,
}

impl Operation {
    /// The roles that may call this operation: the one table of role rules.
    pub fn roles(self) -> &'static [Role] {
        match self {
            Operation::RegisterDataset
            | Operation::RemoveDataset
            | Operation::SetPolicy
            | Operation::ReadCertificate
            | Operation::EvaluateLink
            | Operation::ManageLinks
            | Operation::DecideJob => &[Role::Holder],
            Operation::SubmitJob | Operation::ReadBudget => &[Role::Consumer],
            Operation::ReadAudit => &[Role::Reviewer, Role::Admin],
            Operation::ReadLedgers => &[Role::Holder, Role::Reviewer, Role::Admin],
            Operation::ManagePrincipals => &[Role::Admin],
        }
    }
}

/// `Ok` if `caller`'s role may call `operation`; otherwise [`EngineError::Forbidden`] naming the
/// roles that may.
pub fn require(caller: &Caller, operation: Operation) -> Result<()> {
    let roles = operation.roles();
    if roles.contains(&caller.role) {
        return Ok(());
    }
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    Err(EngineError::Forbidden(format!(
        "this needs the role {}",
        names.join(" or ")
    )))
}

/// Whose view of the catalog a request is made in (derived from a [`Caller`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer<'a> {
    /// A data holder: sees its own datasets only.
    Holder(&'a str),
    /// A data consumer: sees the datasets whose current policy admits it.
    Consumer(&'a str),
    /// A reviewer, an admin, or the operator on the host: sees every dataset.
    Auditor,
}

/// A dataset as a caller may see it. (Deserializing tries the record first: an entry lacks its
/// required row count, so it cannot be mistaken for one.)
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DatasetView {
    /// For its owner, reviewers and admins: the catalog record.
    Record(DatasetRecord),
    /// For consumers: the catalog entry, without anything computed from the rows (no row count,
    /// no content hash or salt; a noisy unit count where the policy publishes one).
    Entry(CatalogEntry),
}

/// A job as a caller may see it. (Read back from JSON, the fuller view is tried first: a
/// consumer's view lacks its fields.)
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JobView {
    /// For the owner of its dataset, reviewers and admins: the job's metadata.
    Full(JobInfo),
    /// For its consumer: the coarse view (state, generic code, submission time to the second).
    Consumer(ConsumerJobView),
}

impl JobView {
    pub fn id(&self) -> &str {
        match self {
            JobView::Consumer(v) => &v.id,
            JobView::Full(j) => &j.id,
        }
    }
    /// The state as this view shows it (a consumer's coarse state).
    pub fn state(&self) -> &'static str {
        match self {
            JobView::Consumer(v) => v.state.as_str(),
            JobView::Full(j) => j.state.as_str(),
        }
    }
    /// The reason code as this view shows it, if any.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            JobView::Consumer(v) => v.code.map(|c| c.as_str()),
            JobView::Full(j) => j.code.map(|c| c.as_str()),
        }
    }
    /// Whether the job has left `queued` and `running`.
    pub fn settled(&self) -> bool {
        match self {
            JobView::Consumer(v) => v.state.settled(),
            JobView::Full(j) => j.state.settled(),
        }
    }
}

/// The one answer for a dataset that does not exist or that the caller may not see.
pub(crate) fn no_such_dataset(reference: &str) -> EngineError {
    EngineError::NotFound(format!("no dataset named `{reference}`"))
}

impl Veil {
    /// Whether `viewer` may see `record`'s catalog entry.
    pub(crate) fn may_see_dataset(
        &self,
        viewer: Viewer<'_>,
        record: &DatasetRecord,
    ) -> Result<bool> {
        Ok(match viewer {
            Viewer::Holder(holder) => record.owner == holder,
            Viewer::Consumer(consumer) => self
                .policy(&record.name)?
                .is_some_and(|p| p.policy.allows_consumer(consumer)),
            Viewer::Auditor => true,
        })
    }

    /// The datasets `viewer` may see, ordered by id.
    pub(crate) fn visible_datasets(&self, viewer: Viewer<'_>) -> Result<Vec<DatasetRecord>> {
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
    pub(crate) fn resolve_dataset(
        &self,
        viewer: Viewer<'_>,
        reference: &str,
    ) -> Result<DatasetRecord> {
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

    /// The dataset `reference` (an id or a short name) names for `caller`; one `caller` may not
    /// see is [`EngineError::NotFound`] like a missing one (see [`Veil::resolve_dataset`]).
    pub fn find_dataset(&self, caller: &Caller, reference: &str) -> Result<DatasetRecord> {
        self.resolve_dataset(caller.viewer(), reference)
    }

    /// `record` as `caller` may see it (the caller must be able to see it at all).
    fn dataset_view(&self, caller: &Caller, record: DatasetRecord) -> Result<DatasetView> {
        Ok(match caller.role {
            Role::Consumer => DatasetView::Entry(self.catalog_entry(&record)?),
            _ => DatasetView::Record(record),
        })
    }

    /// The datasets `caller` may see, as it may see them, ordered by id.
    pub fn datasets_as(&self, caller: &Caller) -> Result<Vec<DatasetView>> {
        self.visible_datasets(caller.viewer())?
            .into_iter()
            .map(|d| self.dataset_view(caller, d))
            .collect()
    }

    /// One dataset as `caller` may see it.
    pub fn dataset_as(&self, caller: &Caller, reference: &str) -> Result<DatasetView> {
        let record = self.find_dataset(caller, reference)?;
        self.dataset_view(caller, record)
    }

    /// The current policy of a dataset `caller` may see, as it may see it: a consumer reads it
    /// with the `consumers` list cut to itself (admitted consumers do not learn each other's
    /// names; `hash` stays that of the holder's text, which receipts and the audit name).
    /// [`EngineError::NotFound`] if it has none.
    pub fn policy_as(&self, caller: &Caller, reference: &str) -> Result<PolicyDocument> {
        let id = self.find_dataset(caller, reference)?.name;
        let stored = self
            .policy(&id)?
            .ok_or_else(|| EngineError::NotFound(format!("dataset `{id}` has no policy yet")))?;
        let mut document = stored.document();
        if let Viewer::Consumer(consumer) = caller.viewer() {
            document.toml = veil_policy::consumer_view_of_text(&document.toml, consumer);
            document.consumers_withheld = true;
        }
        Ok(document)
    }

    /// Whether `viewer` may see `job`: its consumer, the owner of its dataset, an auditor.
    fn may_see_job(&self, viewer: Viewer<'_>, job: &JobInfo) -> Result<bool> {
        Ok(match viewer {
            Viewer::Consumer(consumer) => job.consumer == consumer,
            Viewer::Holder(holder) => {
                self.dataset(&job.dataset)?.owner == holder
                    || match &job.linked_dataset {
                        Some(linked) => self.dataset(linked)?.owner == holder,
                        None => false,
                    }
            }
            Viewer::Auditor => true,
        })
    }

    /// The job `id` if `caller` may see it; otherwise the same [`EngineError::NotFound`] as for a
    /// job that does not exist.
    pub(crate) fn find_job(&self, caller: &Caller, id: &str) -> Result<JobInfo> {
        let job = self.job(id)?;
        if self.may_see_job(caller.viewer(), &job)? {
            Ok(job)
        } else {
            Err(no_such_job(id))
        }
    }

    /// `job` as `caller` may see it (the caller must be able to see it at all).
    pub(crate) fn job_view(caller: &Caller, job: JobInfo) -> JobView {
        match caller.role {
            Role::Consumer => JobView::Consumer(job.consumer_view()),
            _ => JobView::Full(job),
        }
    }

    /// The job `id` as `caller` may see it (see [`Veil::find_job`]).
    pub fn job_as(&self, caller: &Caller, id: &str) -> Result<JobView> {
        Ok(Self::job_view(caller, self.find_job(caller, id)?))
    }

    /// The jobs `viewer` may see ([`Veil::may_see_job`]), oldest first.
    pub(crate) fn visible_jobs(&self, viewer: Viewer<'_>) -> Result<Vec<JobInfo>> {
        match viewer {
            Viewer::Consumer(consumer) => self.jobs_of_consumer(consumer),
            Viewer::Holder(holder) => self.jobs_on_datasets_of(holder),
            Viewer::Auditor => self.all_jobs(),
        }
    }

    /// The jobs `caller` may see, as it may see them, oldest first; with `state`, only those in
    /// that state as the caller sees states (a consumer's coarse ones: `refused` covers rejected
    /// and failed jobs too).
    pub fn jobs_as(&self, caller: &Caller, state: Option<JobState>) -> Result<Vec<JobView>> {
        Ok(self
            .visible_jobs(caller.viewer())?
            .into_iter()
            .map(|j| Self::job_view(caller, j))
            .filter(|v| state.is_none_or(|s| v.state() == s.as_str()))
            .collect())
    }

    /// The dataset id an auditor's filter `reference` means: the id of the one dataset it names,
    /// or `reference` itself when it names none (it then matches no entry). Ambiguous short names
    /// are refused as in [`Veil::resolve_dataset`].
    pub fn dataset_filter(&self, reference: &str) -> Result<String> {
        match self.resolve_dataset(Viewer::Auditor, reference) {
            Ok(record) => Ok(record.name),
            Err(EngineError::NotFound(_)) => Ok(reference.to_owned()),
            Err(e) => Err(e),
        }
    }

    /// A released job whose result and receipt `caller` may read: its consumer's. A job `caller`
    /// may not see is [`EngineError::NotFound`]; one it may see but not read (its holder, an
    /// auditor) is [`EngineError::Forbidden`]; one not released yet is [`EngineError::Conflict`].
    fn released_job_for(&self, caller: &Caller, id: &str) -> Result<JobInfo> {
        let job = self.find_job(caller, id)?;
        if caller.viewer() != Viewer::Consumer(&job.consumer) {
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
    pub fn job_result(&self, caller: &Caller, id: &str) -> Result<Release> {
        self.released_job_for(caller, id)?;
        serde_json::from_str(&self.stored_result(id)?)
            .map_err(|e| EngineError::Internal(e.to_string()))
    }

    /// The signed receipt of job `id`: for its consumer, and for the holder of each dataset it
    /// read (a job over a link has two), who may see the job at all ([`Veil::find_job`]) — each
    /// holder gets its own record of what was released about its data.
    pub fn job_receipt(&self, caller: &Caller, id: &str) -> Result<veil_audit::Receipt> {
        if caller.role == Role::Holder {
            let job = self.find_job(caller, id)?;
            if job.state != JobState::Released {
                return Err(EngineError::Conflict(format!(
                    "job {id} has no receipt: it is {}",
                    job.state
                )));
            }
        } else {
            self.released_job_for(caller, id)?;
        }
        let text = self.stored_result(id)?;
        Ok(veil_audit::issue_receipt(&self.conn, &self.key, id, &text)?)
    }

    /// The holder-only log of job `id` (module log text, traps, bounding statistics): for the
    /// owner of its dataset only, since a module may print raw values there. A job `caller` may
    /// not see is [`EngineError::NotFound`]; one it may see but not own (its consumer, an
    /// auditor) is [`EngineError::Forbidden`].
    pub fn job_logs(&self, caller: &Caller, id: &str) -> Result<Vec<String>> {
        self.find_job(caller, id)?;
        if caller.role != Role::Holder {
            return Err(EngineError::Forbidden(
                "job logs are for the owner of the job's dataset only".into(),
            ));
        }
        self.stored_logs(id)
    }

    /// Every audit entry, for reviewers and admins.
    pub fn audit_entries_for(&self, caller: &Caller) -> Result<Vec<veil_audit::Entry>> {
        require(caller, Operation::ReadAudit)?;
        self.audit_entries()
    }

    /// The audit entries `filter` selects, for reviewers and admins. Its `dataset` may be a short
    /// name ([`Veil::dataset_filter`]).
    pub fn audit_log_as(
        &self,
        caller: &Caller,
        mut filter: veil_audit::review::Filter,
    ) -> Result<Vec<veil_audit::Entry>> {
        let entries = self.audit_entries_for(caller)?;
        filter.dataset = filter
            .dataset
            .map(|d| self.dataset_filter(&d))
            .transpose()?;
        Ok(filter.apply(&entries).into_iter().cloned().collect())
    }

    /// The log as JSON lines with a fresh signed checkpoint, for reviewers and admins.
    pub fn export_audit_for(&self, caller: &Caller) -> Result<String> {
        require(caller, Operation::ReadAudit)?;
        self.export_audit()
    }
}
