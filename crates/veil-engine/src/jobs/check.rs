//! Vetting a submission before anything is recorded, and `job check`: every check that needs no
//! data — manifest, module, columns, policy, budget — and the noise the release would carry, with
//! nothing spent.
use datafusion::arrow::datatypes::SchemaRef;
use veil_policy::gate::{Forecast, forecast};
use veil_policy::manifest::JobPlan;

use super::*;
use crate::datasets::StoredPolicy;

/// A submission that passed every check made before the store is written: the manifest parses,
/// the dataset is visible to the consumer and has a policy, the module compiles and reads only
/// delivered columns, the time budget fits.
pub(super) struct Vetted {
    /// Names the dataset by its id.
    pub manifest: JobManifest,
    pub stored: StoredPolicy,
    pub module_hash: String,
    pub manifest_hash: String,
    pub schema: SchemaRef,
    /// A SQL job's public tables (the policy's `public_tables`, read whole), for it to join.
    pub lookups: Vec<veil_policy::sql::Lookup>,
    /// A SQL job's linked datasets the consumer is admitted to (schemas only), for it to join.
    pub partners: Vec<crate::links::LinkedPartner>,
    /// Whether the module declares the columns it reads (so its lookups were checked).
    pub declares_columns: bool,
}

/// What the pre-check and the consumer's ledgers say about a vetted job.
pub(super) enum Verdict {
    Admitted {
        plan: Box<JobPlan>,
        /// The consumer's ledger on the job's dataset after the job.
        after: Spent,
        /// A linked job's linked dataset, and the consumer's ledger on it after the job.
        linked: Option<(String, Spent)>,
    },
    Refused(JobCode, String),
}

impl Verdict {
    /// Whether the job needs its holders' approval: either dataset's policy asks for it.
    pub(super) fn approval(&self, vetted: &Vetted) -> Approval {
        let partner = match self {
            Verdict::Admitted {
                linked: Some((dataset, _)),
                ..
            } => vetted
                .partners
                .iter()
                .find(|p| &p.record.name == dataset)
                .map(|p| p.policy.policy.approval),
            _ => None,
        };
        match (vetted.stored.policy.approval, partner) {
            (Approval::Manual, _) | (_, Some(Approval::Manual)) => Approval::Manual,
            _ => Approval::Auto,
        }
    }
}

/// The answer to `veil job check` (`POST /v1/jobs/check`): whether the job would be admitted and,
/// if so, what its release would carry. Everything here is a function of the manifest, the
/// module, the policy and the consumer's own ledger — never of the data (SECURITY.md's
/// inventory) — so it is safe to show and costs nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCheck {
    /// The dataset's id.
    pub dataset: String,
    pub module_hash: String,
    pub manifest_hash: String,
    /// Whether a submission would wait for the holder's approval.
    pub approval: Approval,
    /// Why a submission would be refused (the policy rule, or the budget left), if it would be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// The noise each released cell would carry, the withholding threshold and the ε/δ spent;
    /// absent when the job would be refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<Forecast>,
    /// ε and δ the consumer would have left on the dataset after the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_left_after: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_left_after: Option<f64>,
    /// A job over a link: the linked dataset and ε and δ the consumer would have left on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked: Option<LinkedLeft>,
    /// What could not be checked before the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What a job over a link would leave of the consumer's budget on the linked dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkedLeft {
    pub dataset: String,
    pub epsilon_left_after: f64,
    pub delta_left_after: f64,
}

impl Veil {
    /// Every check of a submission that writes nothing: malformed manifests, invalid modules,
    /// unknown datasets and modules reading undelivered columns are errors (bad input).
    pub(super) fn vet(&mut self, caller: &Caller, text: &str, wasm: &[u8]) -> Result<Vetted> {
        let consumer = caller.name.as_str();
        if !valid_principal(consumer) {
            return Err(bad(format!("`{consumer}` is not a valid principal name")));
        }
        let mut manifest = JobManifest::from_toml(text)?;
        // A dataset the consumer is not admitted to answers like a missing one; from here on the
        // manifest names the dataset by its id.
        let record = self.find_dataset(caller, &manifest.dataset)?;
        manifest.dataset = record.name.clone();
        let stored = self.policy(&manifest.dataset)?.ok_or_else(|| {
            bad(format!(
                "dataset `{}` has no release policy yet",
                manifest.dataset
            ))
        })?;
        let schema = veil_catalog::schema_of(&self.data_dir, &record)?;
        let named = crate::links::tables_named(&manifest);
        let partners = self.partners_for(consumer, &manifest.dataset, &named)?;
        if let Some(sql) = &manifest.sql {
            // The query itself is planned and checked by the pre-check (bad SQL is bad input
            // there, before anything is recorded); its text is the job's algorithm.
            if !wasm.is_empty() {
                return Err(bad(
                    "a SQL job runs no module: send the manifest's `sql` without a module",
                ));
            }
            let lookups = self
                .lookups_for(&stored.policy.public_tables, &named)?
                .into_iter()
                .map(|(lookup, _)| lookup)
                .collect();
            return Ok(Vetted {
                module_hash: veil_policy::document_hash(&sql.text),
                manifest_hash: document_hash(text),
                declares_columns: true,
                manifest,
                stored,
                schema,
                lookups,
                partners,
            });
        }
        // Validate and compile before recording anything: a bad module is bad input.
        let compiled = self.sandbox()?.compile(wasm)?;
        if compiled.is_component() && manifest.blocks.is_none() {
            return Err(bad(
                "the module is a WebAssembly component (Python and other interpreted guests): \
                 components run in sample-and-aggregate mode only; add `blocks = N` to the \
                 manifest (docs/jobs.md)",
            ));
        }
        if let Some(declared) = compiled.declared_columns() {
            check_declared_columns(declared, &delivered_names(&manifest))?;
        }
        // A time budget too short for the policy's bound on units is bad input, told before
        // anything is recorded (it depends on public values only).
        let request = veil_policy::schedule::ScheduleRequest::for_job(&manifest, &stored.policy);
        veil_policy::schedule::schedule(&request, &self.config.cost_model())?;
        Ok(Vetted {
            module_hash: compiled.hash().to_owned(),
            manifest_hash: document_hash(text),
            declares_columns: compiled.declared_columns().is_some(),
            manifest,
            stored,
            schema,
            lookups: Vec::new(),
            partners,
        })
    }

    /// Runs every check a submission of `text` + `wasm` would pass through and answers what the
    /// job would release, as `caller`; records a `job_checked` audit entry and nothing else.
    pub fn check_job(&mut self, caller: &Caller, text: &str, wasm: &[u8]) -> Result<JobCheck> {
        require(caller, Operation::SubmitJob)?;
        let vetted = self.vet(caller, text, wasm)?;
        let consumer = caller.name.as_str();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let verdict = verdict(&tx, &vetted, consumer)?;
        let mut check = JobCheck {
            dataset: vetted.manifest.dataset.clone(),
            module_hash: vetted.module_hash.clone(),
            manifest_hash: vetted.manifest_hash.clone(),
            approval: vetted.stored.policy.approval,
            refusal: None,
            forecast: None,
            epsilon_left_after: None,
            delta_left_after: None,
            linked: None,
            notes: Vec::new(),
        };
        if !vetted.declares_columns {
            check.notes.push(
                "the module does not declare the columns it reads (veil_guest::reads_columns!, \
                 docs/guests.md), so its lookups could not be checked: a lookup of a column the \
                 manifest does not deliver finds nothing when the job runs"
                    .into(),
            );
        }
        let outcome = match verdict {
            Verdict::Refused(code, reason) => {
                check.refusal = Some(reason);
                format!("refused ({code})")
            }
            Verdict::Admitted {
                plan,
                after,
                linked,
            } => {
                if let Some((dataset, after)) = linked
                    && let Some(p) = vetted.partners.iter().find(|p| p.record.name == dataset)
                {
                    let (eps, delta) = after.totals();
                    let total = jobs_epsilon_total(&tx, &dataset, &p.policy.policy)?;
                    check.linked = Some(LinkedLeft {
                        epsilon_left_after: total.saturating_sub(eps).as_f64(),
                        delta_left_after: p
                            .policy
                            .policy
                            .delta_total
                            .saturating_sub(delta)
                            .as_f64(),
                        dataset,
                    });
                }
                let (eps, delta) = after.totals();
                let eps_total =
                    jobs_epsilon_total(&tx, &vetted.manifest.dataset, &vetted.stored.policy)?;
                check.epsilon_left_after = Some(eps_total.saturating_sub(eps).as_f64());
                check.delta_left_after = Some(
                    vetted
                        .stored
                        .policy
                        .delta_total
                        .saturating_sub(delta)
                        .as_f64(),
                );
                check.forecast = Some(forecast(&plan));
                "admissible".to_owned()
            }
        };
        AuditLog::append(
            &tx,
            &self.key,
            AuditEvent::JobChecked {
                consumer: consumer.into(),
                dataset: vetted.manifest.dataset.clone(),
                module_hash: vetted.module_hash,
                manifest_hash: vetted.manifest_hash,
                epsilon_micro: vetted.manifest.epsilon.micro(),
                outcome,
            },
        )?;
        tx.commit()?;
        Ok(check)
    }
}

/// The pre-check of a vetted job and, if it passes, the consumer's ledgers after it (read in
/// the caller's transaction): on the job's dataset and, for a linked job, on the linked one.
pub(super) fn verdict(conn: &Connection, vetted: &Vetted, consumer: &str) -> Result<Verdict> {
    let policy = &vetted.stored.policy;
    let partners: Vec<veil_policy::sql::Partner> =
        vetted.partners.iter().map(|p| p.partner.clone()).collect();
    let readable = veil_policy::sql::Tables {
        lookups: &vetted.lookups,
        partners: &partners,
    };
    let plan = match precheck_with_lookups(
        policy,
        &vetted.manifest,
        &vetted.schema,
        &readable,
        consumer,
    ) {
        Err(PolicyError::Refused(reason)) => return Ok(Verdict::Refused(JobCode::Policy, reason)),
        Err(other) => return Err(other.into()),
        Ok(plan) => Box::new(plan),
    };
    let dataset = &vetted.manifest.dataset;
    let after = match charge_after(conn, consumer, dataset, policy, &plan)? {
        Ok(after) => after,
        Err(reason) => return Ok(Verdict::Refused(JobCode::Budget, reason)),
    };
    let linked = match plan.linked_dataset() {
        None => None,
        Some(linked) => {
            let partner = vetted
                .partners
                .iter()
                .find(|p| p.record.name == linked)
                .ok_or_else(|| EngineError::Internal("linked dataset vanished".into()))?;
            match charge_after(conn, consumer, linked, &partner.policy.policy, &plan)? {
                Ok(after) => Some((linked.to_owned(), after)),
                Err(reason) => return Ok(Verdict::Refused(JobCode::Budget, reason)),
            }
        }
    };
    Ok(Verdict::Admitted {
        plan,
        after,
        linked,
    })
}

/// The consumer's ledger on `dataset` after `plan`'s charge, or why its budget there refuses it.
pub(super) fn charge_after(
    conn: &Connection,
    consumer: &str,
    dataset: &str,
    policy: &veil_policy::Policy,
    plan: &JobPlan,
) -> Result<std::result::Result<Spent, String>> {
    let used = spent(conn, consumer, dataset)?;
    Ok(used
        .admit(
            &plan.charge,
            jobs_epsilon_total(conn, dataset, policy)?,
            policy.delta_total,
        )
        .map_err(|why| format!("{why} for `{consumer}` on `{dataset}`")))
}

/// The names a module job's columns are delivered under: the manifest's `columns`, then a job
/// over a link's `[join]` columns as `joined.<name>`.
fn delivered_names(manifest: &JobManifest) -> Vec<String> {
    let mut names = manifest.columns.clone();
    if let Some(join) = &manifest.join {
        names.extend(
            join.columns
                .iter()
                .map(|c| format!("{}{c}", veil_policy::manifest::JOINED_PREFIX)),
        );
    }
    names
}

/// Requires every column the module declares it reads to be one the manifest delivers (named
/// as [`delivered_names`] gives them): a lookup of any other would find nothing, silently, once
/// the job runs.
fn check_declared_columns(declared: &[String], delivered: &[String]) -> Result<()> {
    let missing: Vec<&str> = declared
        .iter()
        .filter(|c| !delivered.contains(c))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(bad(format!(
        "the module reads {} that the manifest does not deliver: add {} to the manifest's \
         `columns` (it delivers: {})",
        quoted_list("column", &missing),
        if missing.len() == 1 { "it" } else { "them" },
        if delivered.is_empty() {
            "none".to_owned()
        } else {
            delivered
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    )))
}

/// `column `a`` or `columns `a`, `b``.
fn quoted_list(noun: &str, names: &[&str]) -> String {
    let list = names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let plural = if names.len() == 1 { "" } else { "s" };
    format!("{noun}{plural} {list}")
}
