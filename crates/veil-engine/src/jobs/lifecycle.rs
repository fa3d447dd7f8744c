//! A job's life as transactions: submission and pre-check, the holder's decision, the debit and
//! start, the run, and the release or denial committed at the scheduled time.
use super::check::{Verdict, verdict};
use super::*;
use crate::execute::{ExecutionFailure, RunOutput};

/// Reads a job's manifest at `manifest_path` and the module it names (relative to the manifest's
/// folder): what a client uploads. A file that cannot be read or a manifest that does not parse
/// is bad input naming the file.
pub fn read_job_files(manifest_path: &Path) -> Result<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(manifest_path).map_err(|e| {
        bad(format!(
            "cannot read manifest {}: {e}",
            manifest_path.display()
        ))
    })?;
    let manifest = JobManifest::from_toml(&text)?;
    if manifest.sql.is_some() {
        return Ok((text, Vec::new()));
    }
    let module_path = manifest_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(&manifest.module);
    let wasm = std::fs::read(&module_path)
        .map_err(|e| bad(format!("cannot read module {}: {e}", module_path.display())))?;
    Ok((text, wasm))
}

impl Veil {
    /// Submits the job described by the manifest at `manifest_path` (its `module` is read relative
    /// to the manifest) as `consumer`, and runs it at once if no approval is needed: the local
    /// CLI's way. The service records jobs with [`Veil::submit`] and leaves running to its workers.
    pub fn submit_job(&mut self, consumer: &Caller, manifest_path: &Path) -> Result<SubmitOutcome> {
        require(consumer, Operation::SubmitJob)?;
        let (text, wasm) = read_job_files(manifest_path)?;
        let outcome = self.submit(consumer, &text, &wasm)?;
        if outcome.state == JobState::Queued {
            let state = self.run_job(&outcome.job)?.state;
            return Ok(SubmitOutcome {
                job: outcome.job,
                state,
            });
        }
        Ok(outcome)
    }

    /// [`Veil::submit`] answered as [`Submission`]: a refusal by policy or budget is an answer
    /// (the job is recorded), not an error. `run_now` runs a `queued` job at once, as the local CLI
    /// does; the service leaves it to its workers.
    pub fn submit_as(
        &mut self,
        caller: &Caller,
        text: &str,
        wasm: &[u8],
        run_now: bool,
    ) -> Result<Submission> {
        let (job, refusal) = match self.submit(caller, text, wasm) {
            Ok(outcome) => {
                if run_now && outcome.state == JobState::Queued {
                    self.run_job(&outcome.job)?;
                }
                (outcome.job, None)
            }
            Err(EngineError::Refused { job, reason, .. }) => (job, Some(reason)),
            Err(e) => return Err(e),
        };
        Ok(Submission {
            job: self.job(&job)?.consumer_view(),
            refusal,
        })
    }

    /// Records a job: manifest text (TOML; its `module` field is ignored) and module bytes, as
    /// `consumer`. Malformed manifests, invalid modules and unknown datasets are errors that change
    /// nothing. A job the policy or the budget refuses is recorded (with its audit entries) and
    /// returned as [`EngineError::Refused`]. Otherwise the job is `queued` for a worker
    /// ([`Veil::run_job`]) or `awaiting_approval`.
    pub fn submit(&mut self, caller: &Caller, text: &str, wasm: &[u8]) -> Result<SubmitOutcome> {
        require(caller, Operation::SubmitJob)?;
        let consumer = caller.name.as_str();
        let vetted = self.vet(caller, text, wasm)?;
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
        let hour_ago = rfc3339(time::OffsetDateTime::now_utc() - time::Duration::HOUR);
        let refused: u64 = tx.query_row(
            "SELECT COUNT(*) FROM jobs WHERE consumer = ?1 AND state = 'refused'
               AND created_at > ?2",
            params![consumer, hour_ago],
            |r| r.get(0),
        )?;
        if refused >= self.config.max_refused_per_hour {
            return Err(EngineError::Busy(format!(
                "`{consumer}` had {refused} submissions refused in the last hour (at most {}); \
                 try jobs with `veil job check` first, which spends and stores nothing",
                self.config.max_refused_per_hour
            )));
        }
        let seq: u64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs", [], |r| {
            r.get(0)
        })?;
        let job = format!("job-{seq:06}");
        let verdict = verdict(&tx, &vetted, consumer)?;
        // The state the job has unless the pre-check refused it.
        let admitted = match verdict.approval(&vetted) {
            Approval::Manual => JobState::AwaitingApproval,
            Approval::Auto => JobState::Queued,
        };
        let linked_dataset = match &verdict {
            Verdict::Admitted {
                linked: Some((dataset, _)),
                ..
            } => Some(dataset.clone()),
            _ => None,
        };
        // A SQL job's algorithm is its query's text.
        let algorithm = match &vetted.manifest.sql {
            Some(sql) => sql.text.as_bytes(),
            None => wasm,
        };
        store_module(&tx, &vetted.module_hash, algorithm, &verdict)?;
        let ts = now();
        let manifest = &vetted.manifest;
        tx.execute(
            "INSERT INTO jobs (id, seq, consumer, dataset, manifest, manifest_hash, module_hash, epsilon_micro, policy_version, state, created_at, updated_at, linked_dataset)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12)",
            params![job, seq, consumer, manifest.dataset, text, vetted.manifest_hash, vetted.module_hash, manifest.epsilon.micro(), vetted.stored.version, admitted.as_str(), ts, linked_dataset],
        )?;
        AuditLog::append(
            &tx,
            &self.key,
            AuditEvent::JobSubmitted {
                job: job.clone(),
                consumer: consumer.into(),
                dataset: manifest.dataset.clone(),
                module_hash: vetted.module_hash.clone(),
                manifest_hash: vetted.manifest_hash.clone(),
                epsilon_micro: manifest.epsilon.micro(),
                purpose: manifest.purpose.clone(),
            },
        )?;
        if let Verdict::Refused(code, reason) = verdict {
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
    pub fn approve_job(&mut self, holder: &Caller, job: &str) -> Result<JobState> {
        self.approve(holder, job)?;
        // A linked job may still wait for the other holder.
        match self.job(job)?.state {
            JobState::Queued => Ok(self.run_job(job)?.state),
            other => Ok(other),
        }
    }

    /// Approves a job waiting for `holder` (the dataset's owner): it is queued for a worker.
    pub fn approve(&mut self, holder: &Caller, job: &str) -> Result<()> {
        self.decide(holder, job, None)
    }

    /// Rejects a job waiting for `holder`. Nothing is charged.
    pub fn reject_job(&mut self, holder: &Caller, job: &str, reason: &str) -> Result<()> {
        self.decide(holder, job, Some(reason))
    }

    /// Approves (`reject` = `None`) or rejects a job on `holder`'s dataset.
    fn decide(&mut self, holder: &Caller, job_id: &str, reject: Option<&str>) -> Result<()> {
        require(holder, Operation::DecideJob)?;
        let holder = holder.name.as_str();
        if let Some(reason) = reject {
            check_reason(reason)?;
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let job = load_job(&tx, job_id)?;
        let owners = job_holders(&tx, &job)?;
        // Another holder's job answers like a missing one.
        if !owners.iter().any(|o| o == holder) {
            return Err(no_such_job(job_id));
        }
        if job.state != JobState::AwaitingApproval {
            return Err(EngineError::Conflict(format!(
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
                // A linked job waits for every holder it reads.
                tx.execute(
                    "INSERT OR IGNORE INTO job_approvals (job, holder, at) VALUES (?1, ?2, ?3)",
                    params![job_id, holder, now()],
                )?;
                let approved: u64 = tx.query_row(
                    "SELECT COUNT(*) FROM job_approvals WHERE job = ?1",
                    [job_id],
                    |r| r.get(0),
                )?;
                if approved >= owners.len() as u64 {
                    set_state(&tx, job_id, JobState::Queued, None)?;
                }
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
    /// the gate, and commits the release with its audit record at the scheduled time.
    ///
    /// Only a `queued` job starts; the check and the debit share one write transaction, so of two
    /// workers (or processes) that try the same job exactly one runs it. If the job is closed
    /// meanwhile (graceful shutdown gave up on it), its outcome is discarded: it stays failed.
    /// The caller's thread is held until the release time, on purpose: a worker freed earlier
    /// would start its next job at a time that depends on how long this module ran on its data.
    pub fn run_job(&mut self, job_id: &str) -> Result<JobRun> {
        let started = self.start_run(job_id)?;
        let wasm: Vec<u8> = self.conn.query_row(
            "SELECT bytes FROM modules WHERE hash = ?1",
            [&started.job.module_hash],
            |r| r.get(0),
        )?;
        let clock = std::time::Instant::now();
        let outcome = self.execute(RunRequest {
            plan: started.plan.clone(),
            record: &started.record,
            wasm: &wasm,
            lookups: &started.lookups,
            partner: started.partner.as_ref(),
            fuel_per_unit: started.fuel_per_unit,
        });
        let sandbox_time = clock.elapsed();
        let units = match &outcome {
            Ok(run) => run.units,
            Err(failure) => failure.units,
        };
        let overran = wait_until(started.release_at);
        if overran {
            tracing::warn!(job = job_id, "the run overran its schedule; released late");
        }
        let state = self.close_run(&started, outcome)?;
        Ok(JobRun {
            state,
            units,
            sandbox_time,
            overran,
        })
    }

    /// Step 1 of a run: the pre-check again (the policy may have changed since submission), then
    /// the debit, the schedule and `job_started`, committed together before anything runs. A
    /// refusal is recorded and returned as [`EngineError::Refused`].
    fn start_run(&mut self, job_id: &str) -> Result<StartedRun> {
        let job = load_job(&self.conn, job_id)?;
        let record = veil_catalog::get(&self.conn, &job.dataset)?
            .ok_or_else(|| internal("dataset vanished"))?;
        let Some(stored) = self.policy(&job.dataset)? else {
            // A replacement the policy no longer fits suspends it until the holder sets it again.
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let reason = format!(
                "the policy of `{}` does not apply to its current version; its holder must set \
                 it again",
                job.dataset
            );
            return Err(refuse(tx, &self.key, job_id, JobCode::Policy, reason)?);
        };
        let mut manifest = JobManifest::from_toml(&job.manifest)?;
        manifest.dataset = job.dataset.clone();
        let schema = veil_catalog::schema_of(&self.data_dir, &record)?;
        let named = crate::links::tables_named(&manifest);
        let (lookups, lookup_records): (Vec<_>, Vec<_>) = match &manifest.sql {
            Some(_) => self
                .lookups_for(&stored.policy.public_tables, &named)?
                .into_iter()
                .unzip(),
            None => Default::default(),
        };
        let mut partners = self.partners_for(&job.consumer, &job.dataset, &named)?;
        let planned: Vec<veil_policy::sql::Partner> =
            partners.iter().map(|p| p.partner.clone()).collect();
        let readable = veil_policy::sql::Tables {
            lookups: &lookups,
            partners: &planned,
        };
        let plan =
            precheck_with_lookups(&stored.policy, &manifest, &schema, &readable, &job.consumer);

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
        let (plan, after) = match plan {
            Err(PolicyError::Refused(reason)) => {
                return Err(refuse(tx, &self.key, job_id, JobCode::Policy, reason)?);
            }
            // A query checked at submission no longer plans against the dataset's current
            // version (a column's type changed): the reason depends on the schema, not on rows.
            Err(e @ PolicyError::Invalid { .. })
                if manifest.sql.is_some() || manifest.join.is_some() =>
            {
                let reason = format!(
                    "the query no longer applies to the current version of `{}` (or a link it \
                     joins was revoked, or a table it joins is gone): {e}",
                    job.dataset
                );
                return Err(refuse(tx, &self.key, job_id, JobCode::Policy, reason)?);
            }
            Err(e) => return Err(EngineError::Internal(e.to_string())),
            Ok(plan) => match used.admit(&plan.charge, epsilon_total, stored.policy.delta_total) {
                Ok(after) => (plan, after),
                Err(why) => {
                    let reason = format!("{why} for `{}` on `{}`", job.consumer, job.dataset);
                    return Err(refuse(tx, &self.key, job_id, JobCode::Budget, reason)?);
                }
            },
        };
        // A linked job is charged on the linked dataset too, in this same transaction.
        let partner = match plan.linked_dataset().map(str::to_owned) {
            None => None,
            Some(linked) => {
                // Re-read under the write lock: the link may have been revoked since the plan.
                if !crate::links::accepted_between(&tx, &job.dataset, &linked)? {
                    let reason = format!(
                        "the link between `{}` and `{linked}` was revoked before the job started",
                        job.dataset
                    );
                    return Err(refuse(tx, &self.key, job_id, JobCode::Policy, reason)?);
                }
                let at = partners
                    .iter()
                    .position(|p| p.record.name == linked)
                    .ok_or_else(|| internal("linked dataset vanished"))?;
                let p = partners.swap_remove(at);
                match super::check::charge_after(
                    &tx,
                    &job.consumer,
                    &p.record.name,
                    &p.policy.policy,
                    &plan,
                )? {
                    Ok(after) => Some((p, after)),
                    Err(reason) => {
                        return Err(refuse(tx, &self.key, job_id, JobCode::Budget, reason)?);
                    }
                }
            }
        };
        let schedule = veil_policy::schedule::schedule(&plan.schedule, &self.config.cost_model())
            .map_err(|e| EngineError::Internal(format!("schedule: {e}")))?;
        let started_at = to_the_millisecond(time::OffsetDateTime::now_utc());
        let release_at = started_at + schedule.duration;
        debit(&tx, &job, &after)?;
        tx.execute(
            "UPDATE jobs SET state = ?2, policy_version = ?3, runner_pid = ?4, runner_start = ?5, updated_at = ?6, release_at = ?7, dataset_version = ?8 WHERE id = ?1",
            params![job_id, JobState::Running.as_str(), stored.version, std::process::id(), process_start(std::process::id()), now(), rfc3339(release_at), record.version],
        )?;
        let (after_epsilon, after_delta) = after.totals();
        AuditLog::append_at(
            &tx,
            &self.key,
            AuditEvent::JobStarted {
                job: job_id.into(),
                consumer: job.consumer.clone(),
                dataset: job.dataset.clone(),
                dataset_commitment: record.content_commitment.clone(),
                dataset_version: record.version,
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
                public_tables: tables_read(&plan, &lookup_records),
            },
            started_at,
        )?;
        if let Some((p, after)) = &partner {
            debit_on(&tx, &job.consumer, &p.record.name, after)?;
            AuditLog::append_at(
                &tx,
                &self.key,
                linked_charge(job_id, &manifest, &plan, p, after),
                started_at,
            )?;
        }
        tx.commit()?;
        Ok(StartedRun {
            job,
            record,
            plan,
            lookups,
            partner: partner.map(|(p, _)| p),
            fuel_per_unit: schedule.fuel_per_unit,
            release_at,
        })
    }

    /// Step 3 of a run, at its release time: the release or the denial with their audit entries
    /// (public time: the scheduled instant), in one transaction. A job closed while it ran
    /// (shutdown gave up on it) keeps its state and releases nothing.
    fn close_run(
        &mut self,
        started: &StartedRun,
        outcome: std::result::Result<RunOutput, ExecutionFailure>,
    ) -> Result<JobState> {
        let job_id = started.job.id.as_str();
        let release_at = started.release_at;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now_state = load_job(&tx, job_id)?.state;
        if now_state != JobState::Running {
            return Ok(now_state);
        }
        let (holder_log, finished, last, state) = match outcome {
            Ok(run) => {
                let result = serde_json::to_string(&run.release)
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                let result_hash = veil_audit::sha256_hex(result.as_bytes());
                tx.execute(
                    "UPDATE jobs SET state = ?2, result = ?3, result_hash = ?4, updated_at = ?5 WHERE id = ?1",
                    params![job_id, JobState::Released.as_str(), result, result_hash, now()],
                )?;
                let finished = AuditEvent::JobFinished {
                    job: job_id.into(),
                    status: "completed".into(),
                    units: run.units,
                    unit_faults: run.unit_faults,
                };
                let released = AuditEvent::ReleaseCreated {
                    job: job_id.into(),
                    result_hash,
                    groups: run.release.rows.len() as u64,
                };
                (run.holder_log, finished, released, JobState::Released)
            }
            Err(failure) => {
                set_state(&tx, job_id, JobState::Failed, Some(failure.code))?;
                let finished = AuditEvent::JobFinished {
                    job: job_id.into(),
                    status: format!("failed:{}", failure.code),
                    units: failure.units,
                    unit_faults: failure.unit_faults,
                };
                let denied = AuditEvent::ReleaseDenied {
                    job: job_id.into(),
                    code: failure.code.to_string(),
                    reason: failure.public_reason,
                };
                (failure.holder_log, finished, denied, JobState::Failed)
            }
        };
        write_logs(&tx, job_id, &holder_log)?;
        AuditLog::append_at(&tx, &self.key, finished, release_at)?;
        AuditLog::append_at(&tx, &self.key, last, release_at)?;
        tx.commit()?;
        Ok(state)
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
}

/// The holders a job reads: its dataset's, and a linked job's linked dataset's (once if one holder
/// owns both).
fn job_holders(conn: &Connection, job: &JobInfo) -> Result<Vec<String>> {
    let mut owners = Vec::new();
    for dataset in std::iter::once(&job.dataset).chain(&job.linked_dataset) {
        let owner = veil_catalog::get(conn, dataset)?
            .map(|d| d.owner)
            .unwrap_or_default();
        if !owners.contains(&owner) {
            owners.push(owner);
        }
    }
    Ok(owners)
}

/// The linked dataset's share of a linked job's start: its version and policy, and the
/// consumer's ledger on it after the job.
fn linked_charge(
    job: &str,
    manifest: &JobManifest,
    plan: &veil_policy::JobPlan,
    partner: &crate::links::LinkedPartner,
    after: &Spent,
) -> AuditEvent {
    let (after_epsilon, after_delta) = after.totals();
    AuditEvent::JobCharged {
        job: job.into(),
        dataset: partner.record.name.clone(),
        dataset_commitment: partner.record.content_commitment.clone(),
        dataset_version: partner.record.version,
        policy_version: partner.policy.version,
        policy_hash: partner.policy.hash.clone(),
        epsilon_micro: manifest.epsilon.micro(),
        spent_micro_after: after_epsilon.micro(),
        total_micro: partner.policy.policy.epsilon_total.micro(),
        rho_pico: plan.charge.rho,
        delta_conversion_femto: plan.charge.delta_conversion.0,
        delta_selection_femto: plan.charge.delta_selection.0,
        spent_delta_femto_after: after_delta.0,
    }
}

/// The public tables a SQL job's plan joins, as the audit names them: id, version, commitment.
fn tables_read(
    plan: &veil_policy::JobPlan,
    records: &[veil_catalog::DatasetRecord],
) -> Vec<veil_audit::TableRead> {
    let joined = plan.sql.iter().flat_map(|s| s.lookups.iter());
    joined
        .filter_map(|id| records.iter().find(|r| &r.name == id))
        .map(|r| veil_audit::TableRead {
            dataset: r.name.clone(),
            version: r.version,
            commitment: r.content_commitment.clone(),
        })
        .collect()
}

/// Records a submission's module. Only an admitted job's module is kept whole (a run needs its
/// bytes); a refused one is recorded by its hash alone (an empty `bytes`), so refused submissions
/// cannot grow the store by their modules' size. A module first refused and later admitted gets
/// its bytes then.
fn store_module(conn: &Connection, hash: &str, wasm: &[u8], verdict: &Verdict) -> Result<()> {
    let bytes: &[u8] = match verdict {
        Verdict::Admitted { .. } => wasm,
        Verdict::Refused(..) => &[],
    };
    conn.execute(
        "INSERT INTO modules (hash, bytes) VALUES (?1, ?2)
         ON CONFLICT (hash) DO UPDATE SET bytes = excluded.bytes
           WHERE length(modules.bytes) = 0",
        params![hash, bytes],
    )?;
    Ok(())
}
