//! Read models: job lists and metadata, results, receipts, holder logs, the budget report and
//! the operator's metrics. Who may see what is decided in `access.rs`.
use super::*;

impl Veil {
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

    /// Jobs on the datasets `holder` owns, linked jobs on either side included.
    pub(crate) fn jobs_on_datasets_of(&self, holder: &str) -> Result<Vec<JobInfo>> {
        self.query_jobs(
            "dataset IN (SELECT name FROM datasets WHERE owner = ?1)
               OR linked_dataset IN (SELECT name FROM datasets WHERE owner = ?1)",
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

    /// The stored release of job `id`. Requires the caller to have checked who may read it.
    pub(crate) fn stored_result(&self, id: &str) -> Result<String> {
        Ok(self
            .conn
            .query_row("SELECT result FROM jobs WHERE id = ?1", [id], |r| r.get(0))?)
    }

    /// The stored holder log of job `id`. Requires the caller to have checked who may read it.
    pub(crate) fn stored_logs(&self, id: &str) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT line FROM job_logs WHERE job = ?1 ORDER BY seq")?;
        let lines = stmt
            .query_map([id], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(lines)
    }

    /// Budget of `consumer` on every dataset whose policy lets them in, or on which it spent.
    pub fn budget(&self, caller: &Caller) -> Result<Vec<BudgetLine>> {
        require(caller, Operation::ReadBudget)?;
        let consumer = caller.name.as_str();
        let mut out = Vec::new();
        for d in self.datasets()? {
            let Some(p) = self.policy(&d.name)? else {
                continue;
            };
            let used = spent(&self.conn, consumer, &d.name)?;
            if !p.policy.allows_consumer(consumer) && used == Spent::default() {
                continue;
            }
            out.push(self.budget_line(&d.name, &p.policy, used)?);
        }
        Ok(out)
    }

    /// Every consumer's ledger on one dataset (those the policy admits, and those that spent on
    /// it under an earlier policy), for its owner, reviewers and admins. ε charges are functions
    /// of manifests and policies, never of the data.
    pub fn dataset_budgets_as(
        &self,
        caller: &Caller,
        reference: &str,
    ) -> Result<Vec<ConsumerBudget>> {
        require(caller, Operation::ReadLedgers)?;
        let dataset = self.find_dataset(caller, reference)?.name;
        let Some(p) = self.policy(&dataset)? else {
            return Ok(Vec::new());
        };
        let mut consumers: Vec<String> = self
            .conn
            .prepare("SELECT consumer FROM budget WHERE dataset = ?1")?
            .query_map([&dataset], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        consumers.extend(p.policy.consumers.iter().cloned());
        consumers.sort();
        consumers.dedup();
        consumers
            .into_iter()
            .map(|consumer| {
                let used = spent(&self.conn, &consumer, &dataset)?;
                let line = self.budget_line(&dataset, &p.policy, used)?;
                Ok(ConsumerBudget { consumer, line })
            })
            .collect()
    }

    /// One ledger line: what `used` leaves of `policy`'s budget on `dataset`.
    fn budget_line(
        &self,
        dataset: &str,
        policy: &veil_policy::Policy,
        used: Spent,
    ) -> Result<BudgetLine> {
        let (eps, delta) = used.totals();
        let for_jobs = jobs_epsilon_total(&self.conn, dataset, policy)?;
        let published = crate::datasets::published_count(&self.conn, dataset)?;
        Ok(BudgetLine {
            dataset: dataset.to_owned(),
            spent: eps.to_string(),
            remaining: for_jobs.saturating_sub(eps).to_string(),
            published: published.map(|p| p.epsilon.to_string()),
            total: policy.epsilon_total.to_string(),
            per_job_cap: policy.epsilon_per_job.to_string(),
            delta_spent: delta.to_string(),
            delta_remaining: policy.delta_total.saturating_sub(delta).to_string(),
            delta_total: policy.delta_total.to_string(),
        })
    }
}
