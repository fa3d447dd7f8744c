//! Service benchmark: a small job over HTTP on loopback, with the module already compiled (the
//! "cached job" case) — latency from submission to release (p50, p99) for one client, and
//! sustained jobs per second under concurrent clients.
//!
//! Run with `cargo bench -p veil-benches --bench service`. `VEIL_BENCH_PEOPLE` sets the dataset
//! size (default 200 people), `VEIL_BENCH_CLIENTS` the concurrent clients (default 8),
//! `VEIL_BENCH_SECONDS` the throughput run (default 10); `VEIL_BENCH_SQL=1` asks the same question
//! as a DP SQL job instead of the module. Results are recorded in benches/README.md.
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use base64::Engine as _;
use veil_engine::{Caller, EngineConfig, Role, Veil};
use veil_server::{LogFormat, ServerConfig, Service};

const POLICY: &str = r#"privacy_unit = "person_id"
consumers = ["bench"]
approval = "auto"
min_units_per_group = 5
max_groups_per_unit = 1
# 200 people of one row each; jobs are scheduled for these public bounds.
max_units = 256
max_rows_per_unit = 1
[dp]
epsilon_per_job = 1.0
epsilon_total = 100.0
# Public partitions: repeated jobs spend no δ choosing groups (a run submits thousands).
[partitions]
education = ["below high school", "high school", "some college", "bachelor", "graduate"]
[columns]
educ = { class = "public", bounds = [0, 20] }
weekly_income = { class = "sensitive", bounds = [0, 10000] }
"#;

const MANIFEST: &str = r#"dataset = "bench"
module = "income_by_education.wasm"
columns = ["educ", "weekly_income"]
epsilon = 0.0001
# The release is visible exactly this long after the start (predictable transactions).
time_budget_ms = 20
[output]
keys = ["education"]
values = [{ name = "weekly_income", bounds = [0, 5000], aggregate = "mean" }]
"#;

/// The same question as DP SQL (docs/sql.md): the module's levels as a CASE expression.
const SQL_MANIFEST: &str = r#"dataset = "bench"
sql = """SELECT CASE WHEN educ <= 11 THEN 'below high school' WHEN educ = 12 THEN 'high school'
  WHEN educ <= 15 THEN 'some college' WHEN educ = 16 THEN 'bachelor' ELSE 'graduate' END
  AS education, AVG(weekly_income) AS weekly_income FROM bench GROUP BY education"""
epsilon = 0.0001
# No time budget: a SQL job is scheduled from the policy's bounds (51 ms here) and may not be
# shortened below them (docs/sql.md).
[bounds]
weekly_income = [0, 5000]
"#;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Client {
    base: String,
    auth: String,
    agent: ureq::Agent,
    body: String,
}

impl Client {
    /// Submits the job and waits for its release; returns the time both took.
    fn run_job(&self) -> Duration {
        let t = Instant::now();
        let mut response = self
            .agent
            .post(format!("{}/v1/jobs", self.base))
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json")
            .send(self.body.as_bytes())
            .expect("submit");
        let job: serde_json::Value = response.body_mut().read_json().expect("job");
        let id = job["id"].as_str().expect("id");
        let mut state = job["state"].as_str().unwrap_or_default().to_owned();
        while state != "released" {
            assert!(
                state == "queued" || state == "running",
                "job {id} is {state}"
            );
            let mut response = self
                .agent
                .get(format!("{}/v1/jobs/{id}?wait=30", self.base))
                .header("Authorization", &self.auth)
                .call()
                .expect("wait");
            let job: serde_json::Value = response.body_mut().read_json().expect("job");
            state = job["state"].as_str().unwrap_or_default().to_owned();
        }
        t.elapsed()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    let people = env_or("VEIL_BENCH_PEOPLE", 200);
    let clients = env_or("VEIL_BENCH_CLIENTS", 8) as usize;
    let seconds = env_or("VEIL_BENCH_SECONDS", 10);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("Veil service benchmark: {people} people, {clients} clients, {cores} cores");

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut csv = String::from("person_id,educ,weekly_income\n");
    for person in 0..people {
        let _ = writeln!(
            csv,
            "{person},{},{}",
            8 + person % 13,
            300 + (person * 7919) % 2500
        );
    }
    std::fs::write(dir.path().join("bench.csv"), csv).expect("csv");
    std::fs::write(dir.path().join("policy.toml"), POLICY).expect("policy");
    let token = {
        let mut veil = Veil::open(&data, EngineConfig::default()).expect("open");
        let holder = Caller::new("holder", Role::Holder);
        veil.register_dataset(
            &holder,
            &dir.path().join("bench.csv"),
            "bench",
            Some("person_id"),
            Default::default(),
        )
        .expect("register");
        veil.set_policy(&holder, "bench", &dir.path().join("policy.toml"))
            .expect("policy");
        veil.create_principal(&Caller::operator(), "bench", Role::Consumer)
            .expect("principal")
    };
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data,
        workers: cores,
        log_format: LogFormat::Text,
        ..ServerConfig::default()
    };
    let service = Service::start(&config).expect("start the service");
    let sql = env_or("VEIL_BENCH_SQL", 0) == 1;
    println!("job: {}", if sql { "DP SQL" } else { "module" });
    let body = if sql {
        serde_json::json!({ "manifest": SQL_MANIFEST })
    } else {
        serde_json::json!({
            "manifest": MANIFEST,
            "module": base64::engine::general_purpose::STANDARD
                .encode(veil_examples::INCOME_BY_EDUCATION),
        })
    }
    .to_string();
    let client = || Client {
        base: format!("http://{}", service.local_addr()),
        auth: format!("Bearer {token}"),
        agent: ureq::Agent::config_builder().build().into(),
        body: body.clone(),
    };

    // Warm up: the first job compiles the module; later ones find it cached.
    let one = client();
    for _ in 0..20 {
        one.run_job();
    }
    // Latency: one client, one job at a time.
    let mut latencies: Vec<Duration> = (0..300).map(|_| one.run_job()).collect();
    latencies.sort();
    println!(
        "latency (submit → released, 1 client, {} jobs): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );

    // Throughput: `clients` clients, each submitting and waiting in a loop.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let (done, mut all) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let c = client();
                s.spawn(move || {
                    let mut times = Vec::new();
                    while Instant::now() < deadline {
                        times.push(c.run_job());
                    }
                    times
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().expect("client"));
        }
        (all.len(), all)
    });
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    println!(
        "throughput ({clients} clients, {elapsed:.1} s): {:.0} jobs/s released; latency p50 {:.2} ms, p99 {:.2} ms",
        done as f64 / elapsed,
        percentile(&all, 0.50),
        percentile(&all, 0.99)
    );
    service.shutdown().expect("shutdown");
}
