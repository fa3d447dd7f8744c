//! Durable execution under the service: SIGKILL at random points during job processing, again and
//! again, must leave a store whose audit log verifies, whose ledger equals the debits the log
//! records, where no job ran twice and no result exists without its audit record. SIGTERM finishes
//! running jobs, or closes them as failed once the grace period is over.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use veil_audit::AuditEvent;
use veil_engine::{EngineConfig, JobState, Veil};
use veil_policy::{Delta, Epsilon, Spent};

use crate::common::*;

/// A census like `people_csv`, with `n` people.
fn census(n: usize) -> String {
    let mut s = String::from("person_id,year,state,age,educ,weekly_income,ssn\n");
    for id in 0..n {
        let educ = [9, 12, 14, 16, 18][id % 5];
        let state = ["CA", "NY", "TX", "OH"][id % 4];
        let age = 20 + (id * 7) % 60;
        let income = 200 + (id * 37) % 1800;
        s += &format!("{id},2024,{state},{age},{educ},{income},900-00-{id:04}\n");
    }
    s
}

fn setup(env: &Env, people: usize) -> String {
    let policy_text = policy("auto")
        .replace(
            "epsilon_total = 1.5",
            "epsilon_total = 100.0\ndelta_total = 1e-3",
        )
        .replace("min_units_per_group = 20", "min_units_per_group = 5")
        .replace("max_units = 500", &format!("max_units = {}", people.max(1)));
    env.setup_with(&census(people), &policy_text);
    token_for(env, CONSUMER, "consumer")
}

/// Waits until none of the consumer's jobs is queued or running.
fn drain(http: &Http, consumer: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let jobs = http.json("/v1/jobs", consumer);
        let busy = jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["state"] == "queued" || j["state"] == "running");
        if !busy {
            return;
        }
        assert!(Instant::now() < deadline, "the queue did not drain");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the store says after a crash and a restart, read while the restarted server is idle.
/// Panics on any inconsistency.
#[derive(Debug, Default)]
struct Checked {
    started: usize,
    released: usize,
    interrupted: usize,
}

fn check_store(env: &Env) -> Checked {
    let veil = Veil::open(&env.data_dir(), EngineConfig::default()).expect("reopen the store");
    veil.verify_audit().expect("the audit log verifies");
    let entries = veil.audit_entries().unwrap();
    let mut started: BTreeMap<String, usize> = BTreeMap::new();
    let mut closed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut released_hash: BTreeMap<String, String> = BTreeMap::new();
    let mut debits = Spent::default();
    let mut last_after = 0;
    for e in &entries {
        match &e.event {
            AuditEvent::JobStarted {
                job,
                epsilon_micro,
                spent_micro_after,
                rho_pico,
                delta_conversion_femto,
                delta_selection_femto,
                ..
            } => {
                *started.entry(job.clone()).or_default() += 1;
                if *rho_pico == 0 {
                    debits.epsilon_pure.0 += epsilon_micro;
                }
                debits.rho += rho_pico;
                debits.delta_conversion.0 += delta_conversion_femto;
                debits.delta_selection.0 += delta_selection_femto;
                last_after = *spent_micro_after;
            }
            AuditEvent::ReleaseCreated {
                job, result_hash, ..
            } => {
                closed
                    .entry(job.clone())
                    .or_default()
                    .push("released".into());
                released_hash.insert(job.clone(), result_hash.clone());
            }
            AuditEvent::ReleaseDenied { job, code, .. } => {
                closed.entry(job.clone()).or_default().push(code.clone());
            }
            _ => {}
        }
    }
    // No job started twice; every start closed exactly once; nothing closed that never started.
    for (job, n) in &started {
        assert_eq!(*n, 1, "{job} started {n} times");
        assert_eq!(
            closed.get(job).map(Vec::len),
            Some(1),
            "{job} closed {:?}",
            closed.get(job)
        );
    }
    for job in closed.keys() {
        assert!(started.contains_key(job), "{job} closed without starting");
    }
    // The ledger equals the sum of the debits in the log.
    let (eps, delta) = debits.totals();
    assert_eq!(last_after, debits.epsilon_pure.0, "the log's running total");
    let ledger = veil.budget(&consumer()).unwrap();
    let line = ledger
        .iter()
        .find(|l| l.dataset == format!("{HOLDER}:people"));
    let (spent, delta_spent) = line.map_or(("0".into(), "0".into()), |l| {
        (l.spent.clone(), l.delta_spent.clone())
    });
    assert_eq!(spent, Epsilon(eps.0).to_string(), "ledger ε vs log debits");
    assert_eq!(
        delta_spent,
        Delta(delta.0).to_string(),
        "ledger δ vs log debits"
    );
    // Job states agree with the log: nothing is left running (the server is dead), a released job
    // has its release record with the same hash, a started job is released or failed.
    let jobs = veil.all_jobs().unwrap();
    let mut checked = Checked::default();
    let ids: BTreeSet<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    for job in &jobs {
        match job.state {
            JobState::Running => panic!("{} still running after recovery", job.id),
            JobState::Released => {
                assert_eq!(
                    released_hash.get(&job.id),
                    job.result_hash.as_ref(),
                    "{} released without its audit record",
                    job.id
                );
                checked.released += 1;
            }
            JobState::Failed => {
                assert!(started.contains_key(&job.id));
                if job.code == Some(veil_engine::JobCode::Interrupted) {
                    checked.interrupted += 1;
                }
            }
            JobState::Queued => assert!(
                !started.contains_key(&job.id),
                "{} queued after starting",
                job.id
            ),
            _ => {}
        }
    }
    for job in started.keys() {
        assert!(
            ids.contains(job.as_str()),
            "{job} in the log but not in the store"
        );
    }
    checked.started = started.len();
    checked
}

#[test]
fn sigkill_at_random_points_leaves_budget_and_log_consistent() {
    let env = Env::new();
    let consumer = setup(&env, 3000);
    let wasm = std::fs::read(env.path().join("modules/income_by_education.wasm")).unwrap();
    // Little fuel per person keeps each job's schedule short (3000 people are scheduled for).
    let manifest =
        income_manifest(0.01).replace("epsilon = 0.01", "epsilon = 0.01\nfuel_per_unit = 10000");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5e1f);
    const KILLS: usize = 50;
    let mut last = Checked::default();
    let mut interrupted_runs = 0;
    let workers = [("VEIL_WORKERS", "2")];
    let mut server = Server::start(&env.data_dir(), &workers);
    for round in 0..KILLS {
        // Submit in the background while the workers run; the kill may land mid-request too.
        let url = server.url();
        let (token, text, module) = (consumer.clone(), manifest.clone(), wasm.clone());
        let submitter = std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            use base64::Engine as _;
            let body = serde_json::json!({
                "manifest": text,
                "module": base64::engine::general_purpose::STANDARD.encode(&module),
            })
            .to_string();
            for _ in 0..3 {
                let sent = agent
                    .post(format!("{url}/v1/jobs"))
                    .header("Authorization", format!("Bearer {token}"))
                    .header("Content-Type", "application/json")
                    .send(body.as_bytes());
                if sent.is_err() {
                    return; // the server is gone
                }
            }
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        server.kill();
        let _ = submitter.join();
        // Restart: opening the store closes the runs the kill interrupted; queued jobs then run.
        server = Server::start(&env.data_dir(), &workers);
        drain(&Http::new(&server), &consumer);
        let now = check_store(&env);
        assert!(
            now.started >= last.started,
            "round {round}: started jobs vanished"
        );
        interrupted_runs += now.interrupted - last.interrupted;
        last = now;
    }
    assert!(server.terminate().success());
    let end = check_store(&env);
    // Most submissions got in and ran (the budget never ran dry), and the kills really landed
    // during processing, not only between jobs.
    assert!(end.started >= 100 && end.released > 0, "{end:?}");
    assert!(
        interrupted_runs >= 10,
        "only {interrupted_runs} of {KILLS} kills interrupted a running job"
    );
    eprintln!("{KILLS} kills: {end:?}, runs interrupted by a kill: {interrupted_runs}");
}

/// A module that burns CPU on each unit (about `spins` loop iterations), then emits one
/// contribution, so a job stays running for a while and still releases.
fn slow_module(spins: u32) -> Vec<u8> {
    let (data, emit) = emitting(&[contribution(&["all"], &[5.0])]);
    wat_module(
        &data,
        &format!(
            "(local $i i32) (local.set $i (i32.const {spins})) \
             (block $done (loop $spin \
                (br_if $done (i32.eqz (local.get $i))) \
                (local.set $i (i32.sub (local.get $i) (i32.const 1))) \
                (br $spin))) \
             {emit}"
        ),
    )
}

fn wait_for_state(http: &Http, token: &str, job: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.json(&format!("/v1/jobs/{job}"), token)["state"] != state {
        assert!(Instant::now() < deadline, "{job} never became {state}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_finishes_running_jobs_or_closes_them_after_the_grace() {
    let env = Env::new();
    let consumer = setup(&env, 400);
    let slow = slow_module(2_000_000);
    let manifest = manifest_for("m.wasm", &["educ"], 1, 0.5);

    // With time to spare, a running job finishes and is released before the process exits.
    let mut server = Server::start(&env.data_dir(), &[("VEIL_SHUTDOWN_GRACE_SECS", "60")]);
    let http = Http::new(&server);
    let id = http.submit(&consumer, &manifest, &slow)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for_state(&http, &consumer, &id, "running");
    assert!(server.terminate().success(), "exit status after SIGTERM");
    let veil = Veil::open(&env.data_dir(), EngineConfig::default()).unwrap();
    let job = veil.job(&id).unwrap();
    assert_eq!(
        job.state,
        JobState::Released,
        "{job:?} {:?}",
        veil.job_logs(&holder(), &id)
    );
    drop(veil);

    // With no grace, the running job is closed as failed (`shutdown`): its budget stays spent and
    // the log says why; the consumer sees only `refused (failed)`.
    let mut server = Server::start(&env.data_dir(), &[("VEIL_SHUTDOWN_GRACE_SECS", "0")]);
    let http = Http::new(&server);
    let id = http.submit(&consumer, &manifest, &slow)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for_state(&http, &consumer, &id, "running");
    assert!(server.terminate().success());
    let checked = check_store(&env);
    assert_eq!((checked.started, checked.released), (2, 1));
    let veil = Veil::open(&env.data_dir(), EngineConfig::default()).unwrap();
    let job = veil.job(&id).unwrap();
    assert_eq!(
        (job.state, job.code.map(|c| c.as_str())),
        (JobState::Failed, Some("shutdown"))
    );
    assert_eq!(
        veil.budget(&crate::common::consumer()).unwrap()[0].spent,
        "1"
    );
    drop(veil);
    let server = Server::start(&env.data_dir(), &[]);
    let http = Http::new(&server);
    let seen = http.json(&format!("/v1/jobs/{id}"), &consumer);
    assert_eq!(
        (seen["state"].as_str(), seen["code"].as_str()),
        (Some("refused"), Some("failed"))
    );
}

#[test]
fn a_job_whose_stored_inputs_are_damaged_is_given_up_not_retried_forever() {
    let env = Env::new();
    env.setup("manual");
    let consumer = token_for(&env, CONSUMER, "consumer");
    let holder = token_for(&env, HOLDER, "holder");
    let server = Server::start(&env.data_dir(), &[]);
    let http = Http::new(&server);
    let wasm = std::fs::read(env.path().join("modules/income_by_education.wasm")).unwrap();
    let id = http.submit(&consumer, &income_manifest(0.5), &wasm)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The stored dataset is damaged after the job was accepted (disk corruption, a bad restore).
    for file in std::fs::read_dir(env.data_dir().join("datasets")).unwrap() {
        std::fs::write(file.unwrap().path(), b"not parquet any more").unwrap();
    }
    let (status, _) = http.call(
        "POST",
        &format!("/v1/jobs/{id}/approve"),
        Some(&holder),
        None,
    );
    assert_eq!(status, 200);
    // Workers try a few times, then give up: refused with an internal code, nothing charged.
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let seen = http.json(&format!("/v1/jobs/{id}?wait=5"), &consumer);
        if seen["state"] != "queued" {
            break seen;
        }
        assert!(Instant::now() < deadline, "the job was retried for 30 s");
    };
    assert_eq!(
        (seen["state"].as_str(), seen["code"].as_str()),
        (Some("refused"), Some("failed")),
        "{seen}"
    );
    assert_eq!(
        http.json("/v1/budget", &consumer)["budget"][0]["spent"],
        "0"
    );
    drop(server);
    let veil = Veil::open(&env.data_dir(), EngineConfig::default()).unwrap();
    assert_eq!(
        veil.job(&id).unwrap().code,
        Some(veil_engine::JobCode::Internal)
    );
    veil.verify_audit().unwrap();
}
