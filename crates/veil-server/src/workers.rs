//! The job worker pool: threads that each own an engine (their own store connection and sandbox)
//! and run queued jobs, oldest first.
//!
//! Jobs live in the store, not in memory: a job is `queued` by the request that submitted or
//! approved it, and any worker — in this process or another one on the same store — may take it.
//! Starting a job re-checks its state and debits the budget in one write transaction, so a job
//! runs at most once however many workers race for it. Workers wake when a request queues a job
//! and also poll, to pick up jobs queued by other processes (the CLI in local mode).
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use veil_engine::{EngineError, Runtime, Veil};

use crate::telemetry::Metrics;

/// How often idle workers look for jobs queued by other processes.
const POLL: Duration = Duration::from_millis(250);

/// Attempts to start a job that keep failing (not refusals) before it is given up on.
const MAX_START_ATTEMPTS: u32 = 3;

#[derive(Default)]
struct Shared {
    /// Jobs a worker of this pool has taken and not finished.
    claimed: HashSet<String>,
    stopping: bool,
}

/// A pool of job workers. Cloning shares the pool.
#[derive(Clone)]
pub(crate) struct Pool {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    /// Counts finished runs; requests waiting for a job watch it.
    finished: watch::Sender<u64>,
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

impl Pool {
    /// Starts `workers` threads, each with its own engine handle on `data_dir`, all on `runtime`.
    pub(crate) fn start(
        data_dir: PathBuf,
        workers: usize,
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
    ) -> Result<Pool, EngineError> {
        let pool = Pool {
            shared: Arc::default(),
            finished: watch::Sender::new(0),
            threads: Arc::default(),
        };
        for i in 0..workers {
            // Open on this thread so a broken store fails the start, not a worker later.
            let veil = Veil::open_with(&data_dir, runtime.clone())?;
            let worker = pool.clone();
            let metrics = metrics.clone();
            let handle = std::thread::Builder::new()
                .name(format!("veil-worker-{i}"))
                .spawn(move || worker.work(veil, &metrics))?;
            pool.threads.lock().expect("not poisoned").push(handle);
        }
        Ok(pool)
    }

    /// Wakes a worker: a job was queued.
    pub(crate) fn wake(&self) {
        // Taking the lock first means no worker is between looking at the queue and waiting.
        drop(self.lock());
        self.shared.1.notify_one();
    }

    /// A receiver that changes each time a run finishes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.finished.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn work(&self, mut veil: Veil, metrics: &Metrics) {
        // Failed attempts to start each job, so a job whose inputs are unusable is given up on.
        let mut failures: std::collections::HashMap<String, u32> = Default::default();
        loop {
            let Some(job) = self.next_job(&veil) else {
                return;
            };
            let started = Instant::now();
            match veil.run_job(&job) {
                Ok(run) => {
                    metrics.job_ran(run.units, run.sandbox_time);
                    tracing::info!(job, state = %run.state, units = run.units,
                        seconds = started.elapsed().as_secs_f64(), "job finished");
                }
                Err(EngineError::Refused { code, .. }) => {
                    tracing::info!(job, code = code.as_str(), "job refused at start");
                }
                // Another worker or process started it first.
                Err(EngineError::Conflict(reason)) => {
                    tracing::debug!(job, reason, "job not started");
                }
                Err(e) => {
                    let attempts = failures.entry(job.clone()).or_default();
                    *attempts += 1;
                    tracing::error!(job, error = %e, attempts = *attempts, "job could not start");
                    if *attempts >= MAX_START_ATTEMPTS {
                        failures.remove(&job);
                        match veil
                            .abandon_queued_job(&job, "the job's stored inputs could not be used")
                        {
                            Ok(()) => tracing::error!(job, "job abandoned after repeated failures"),
                            Err(e) => tracing::error!(job, error = %e, "cannot abandon the job"),
                        }
                    } else {
                        std::thread::sleep(POLL);
                    }
                }
            }
            self.lock().claimed.remove(&job);
            self.shared.1.notify_all();
            self.finished.send_modify(|n| *n += 1);
        }
    }

    /// Blocks until there is a queued job nobody in this pool has taken, and takes it; `None`
    /// once the pool is stopping.
    fn next_job(&self, veil: &Veil) -> Option<String> {
        let mut shared = self.lock();
        loop {
            if shared.stopping {
                return None;
            }
            match veil.queued_jobs(shared.claimed.len() + 1) {
                Ok(ids) => {
                    if let Some(id) = ids.into_iter().find(|id| !shared.claimed.contains(id)) {
                        shared.claimed.insert(id.clone());
                        return Some(id);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read the job queue"),
            }
            shared = self
                .shared
                .1
                .wait_timeout(shared, POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Stops taking jobs and waits up to `grace` for running ones to finish. Returns the number
    /// still running when the grace ran out.
    pub(crate) fn stop(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let mut shared = self.lock();
        shared.stopping = true;
        self.shared.1.notify_all();
        while !shared.claimed.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return shared.claimed.len();
            }
            shared = self
                .shared
                .1
                .wait_timeout(shared, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(shared);
        for handle in self.threads.lock().expect("not poisoned").drain(..) {
            let _ = handle.join();
        }
        0
    }
}
