//! Closing runs that will never finish: those a crashed process left `running` (found at the next
//! open) and those a stopping service gives up on. Budget stays spent; each is logged.
use super::*;

impl Veil {
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
}
