//! Local mode: the [`Backend`] on a data directory, acting as a stored principal (`--as NAME`; its
//! role decides what it may do) or, without `--as`, as the host's operator. Every call goes to the
//! engine's caller-checked operations, the same ones the server's handlers call.
use std::path::Path;

use anyhow::{Context, Result};
use veil_audit::{Certificate, Proof, Receipt};
use veil_engine::JobCheck;
use veil_engine::{
    AuditEntry, BudgetLine, Caller, DatasetView, EngineConfig, JobView, PolicyDocument,
    PolicyVersion, Principal, Registered, Release, Role, Submission, Veil,
};

use crate::backend::{
    Backend, Identity, JobFiles, LogQuery, ProofRequest, PublicKeys, Registration,
};

pub(crate) struct Local {
    veil: Veil,
    caller: Caller,
}

/// Opens (creating on first use) the data directory `dir`.
pub(crate) fn open(dir: &Path) -> Result<Veil> {
    Veil::open(dir, EngineConfig::default())
        .with_context(|| format!("opening data directory {}", dir.display()))
}

impl Local {
    /// The store at `dir`, acting as the stored principal `name` (unknown or revoked: an error)
    /// or as the operator without one.
    pub(crate) fn open(dir: &Path, name: Option<&str>) -> Result<Local> {
        let veil = open(dir)?;
        let caller = match name {
            Some(name) => veil.local_caller(name)?,
            None => Caller::operator(),
        };
        Ok(Local { veil, caller })
    }
}

impl Backend for Local {
    fn whoami(&mut self) -> Result<Identity> {
        Ok(Identity {
            name: self.caller.name.clone(),
            role: self.caller.role,
        })
    }

    fn register_dataset(&mut self, r: Registration<'_>) -> Result<Registered> {
        let options = veil_engine::RegisterOptions {
            privacy_unit: r.privacy_unit,
            csv: r.csv.options()?,
            link_keys: r.link_keys,
            replace: r.replace,
        };
        Ok(self
            .veil
            .register_with(&self.caller, r.file, r.name, &options)?)
    }

    fn link_key(&mut self) -> Result<veil_engine::LinkKey> {
        Ok(self.veil.link_key())
    }

    fn evaluate_link(&mut self, blinded: &[String]) -> Result<veil_engine::LinkEvaluation> {
        Ok(self.veil.evaluate_link(&self.caller, blinded)?)
    }

    fn propose_link(&mut self, p: &crate::backend::LinkProposal) -> Result<veil_engine::Link> {
        Ok(self
            .veil
            .propose_link(&self.caller, &p.dataset, &p.key, &p.other, &p.their_key)?)
    }

    fn decide_link(&mut self, link: &str, reject: Option<&str>) -> Result<veil_engine::Link> {
        Ok(self.veil.decide_link(&self.caller, link, reject)?)
    }

    fn links(&mut self) -> Result<Vec<veil_engine::Link>> {
        Ok(self.veil.links_as(&self.caller)?)
    }

    fn revoke_link(&mut self, link: &str, reason: &str) -> Result<veil_engine::Link> {
        Ok(self.veil.revoke_link(&self.caller, link, reason)?)
    }

    fn remove_dataset(&mut self, name: &str) -> Result<u64> {
        Ok(self.veil.remove_dataset(&self.caller, name)?)
    }

    fn datasets(&mut self) -> Result<Vec<DatasetView>> {
        Ok(self.veil.datasets_as(&self.caller)?)
    }

    fn dataset_certificate(&mut self, name: &str) -> Result<Certificate> {
        Ok(self.veil.dataset_certificate(&self.caller, name)?)
    }

    fn set_policy(&mut self, dataset: &str, toml: &str) -> Result<PolicyVersion> {
        let stored = self.veil.set_policy_text(&self.caller, dataset, toml)?;
        Ok(stored.version_info())
    }

    fn policy(&mut self, dataset: &str) -> Result<PolicyDocument> {
        Ok(self.veil.policy_as(&self.caller, dataset)?)
    }

    fn budget(&mut self) -> Result<Vec<BudgetLine>> {
        Ok(self.veil.budget(&self.caller)?)
    }

    fn check(&mut self, job: &JobFiles) -> Result<JobCheck> {
        Ok(self
            .veil
            .check_job(&self.caller, &job.manifest, &job.module)?)
    }

    fn submit(&mut self, job: &JobFiles) -> Result<Submission> {
        Ok(self
            .veil
            .submit_as(&self.caller, &job.manifest, &job.module, true)?)
    }

    fn approve(&mut self, job: &str) -> Result<JobView> {
        self.veil.approve_job(&self.caller, job)?;
        self.job(job)
    }

    fn reject(&mut self, job: &str, reason: &str) -> Result<()> {
        Ok(self.veil.reject_job(&self.caller, job, reason)?)
    }

    fn job(&mut self, job: &str) -> Result<JobView> {
        Ok(self.veil.job_as(&self.caller, job)?)
    }

    fn jobs(&mut self) -> Result<Vec<JobView>> {
        Ok(self.veil.jobs_as(&self.caller, None)?)
    }

    fn job_logs(&mut self, job: &str) -> Result<Vec<String>> {
        Ok(self.veil.job_logs(&self.caller, job)?)
    }

    fn job_receipt(&mut self, job: &str) -> Result<Receipt> {
        Ok(self.veil.job_receipt(&self.caller, job)?)
    }

    fn job_result(&mut self, job: &str) -> Result<Release> {
        Ok(self.veil.job_result(&self.caller, job)?)
    }

    fn audit_export(&mut self) -> Result<String> {
        Ok(self.veil.export_audit_for(&self.caller)?)
    }

    fn audit_checkpoint(&mut self) -> Result<String> {
        Ok(self.veil.audit_checkpoint()?)
    }

    fn audit_log(&mut self, q: &LogQuery) -> Result<Vec<AuditEntry>> {
        let filter = veil_audit::review::Filter {
            dataset: q.dataset.clone(),
            consumer: q.consumer.clone(),
            module_hash: q.module.clone(),
            decision: q.decision,
            since: q.since.clone(),
            until: q.until.clone(),
        };
        Ok(self.veil.audit_log_as(&self.caller, filter)?)
    }

    fn prove(&mut self, request: ProofRequest) -> Result<Proof> {
        Ok(match request {
            ProofRequest::Inclusion { entry, size } => {
                self.veil.prove_inclusion_as(&self.caller, entry, size)?
            }
            ProofRequest::Consistency { from, size } => self.veil.prove_consistency(from, size)?,
        })
    }

    fn public_keys(&mut self) -> Result<PublicKeys> {
        Ok(PublicKeys {
            public_key: self.veil.public_key().to_string(),
            first_public_key: self.veil.first_public_key()?.to_string(),
        })
    }

    fn add_principal(&mut self, name: &str, role: Role) -> Result<String> {
        Ok(self.veil.create_principal(&self.caller, name, role)?)
    }

    fn principals(&mut self) -> Result<Vec<Principal>> {
        Ok(self.veil.principals_as(&self.caller)?)
    }

    fn revoke(&mut self, name: &str) -> Result<()> {
        Ok(self.veil.revoke_principal(&self.caller, name)?)
    }

    fn reissue_token(&mut self, name: &str) -> Result<String> {
        Ok(self.veil.reissue_token(&self.caller, name)?)
    }
}
