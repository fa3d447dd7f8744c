//! Invariant 2: a crash at any point leaves budget and log consistent. The runner is killed with
//! SIGKILL mid-run; the next process finds the job, marks it failed, keeps the budget spent (it was
//! committed before the module started) and the log verifies with the whole story in it.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// A valid module that burns most of its per-unit fuel and then contributes nothing.
fn slow_module() -> Vec<u8> {
    wat::parse_str(
        r#"(module
             (memory (export "memory") 1)
             (func (export "veil_abi_v1_alloc") (param i32) (result i32) i32.const 1024)
             (func (export "veil_abi_v1_map") (param i32 i32) (result i64) (local $i i32)
               (loop
                 (local.set $i (i32.add (local.get $i) (i32.const 1)))
                 (br_if 0 (i32.lt_u (local.get $i) (i32.const 2000000))))
               i64.const 0))"#,
    )
    .expect("valid WAT")
}

#[test]
fn killing_the_runner_mid_job_leaves_budget_and_log_consistent() {
    let env = Env::new();
    // Many people, so the run lasts seconds.
    env.add_parties();
    let mut csv = String::from("person_id,educ,weekly_income\n");
    for p in 0..6000 {
        csv += &format!("{p},{},{}\n", p % 16, 300 + p % 900);
    }
    let data = env.write("many.csv", &csv);
    env.ok(&[
        "dataset",
        "add",
        data.to_str().unwrap(),
        "--name",
        "people",
        "--as",
        HOLDER,
        "--privacy-unit",
        "person_id",
    ]);
    let policy = env.write(
        "policy.toml",
        &format!(
            r#"privacy_unit = "person_id"
consumers = ["{CONSUMER}"]
approval = "auto"
min_units_per_group = 20
max_groups_per_unit = 1
max_units = 6000

[dp]
epsilon_per_job = 1.0
epsilon_total = 1.5

[columns]
educ = {{ class = "public", bounds = [0, 20] }}
weekly_income = {{ class = "sensitive", bounds = [0, 10000] }}
"#
        ),
    );
    env.ok(&[
        "--as",
        HOLDER,
        "policy",
        "set",
        "people",
        policy.to_str().unwrap(),
    ]);
    std::fs::write(env.path().join("modules/slow.wasm"), slow_module()).unwrap();
    let manifest = env.write(
        "slow.toml",
        r#"dataset = "people"
module = "modules/slow.wasm"
purpose = "crash test"
columns = ["educ"]
epsilon = 0.7

[output]
keys = ["k"]
values = [{ name = "v", bounds = [0, 1], aggregate = "sum" }]
"#,
    );

    let mut runner = Command::new(veil_bin())
        .arg("--data-dir")
        .arg(env.data_dir())
        .args([
            "--as",
            CONSUMER,
            "job",
            "submit",
            manifest.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the job is running (budget committed, module started), then kill the runner.
    let started = Instant::now();
    loop {
        let out = env.veil(&["--as", CONSUMER, "job", "status", "job-000001"]);
        if text(&out.stdout).contains("running") {
            break;
        }
        assert!(
            runner.try_wait().unwrap().is_none(),
            "the job finished before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the job never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    runner.kill().unwrap();
    runner.wait().unwrap();

    // The next process recovers: the job failed, nothing is released, the budget stays spent.
    let status = env.ok(&["--as", HOLDER, "job", "status", "job-000001"]);
    assert_eq!(status.trim(), "job-000001 failed (interrupted)");
    // Its consumer sees the coarse view, as the server shows it.
    let status = env.ok(&["--as", CONSUMER, "job", "status", "job-000001"]);
    assert_eq!(status.trim(), "job-000001 refused (failed)");
    let out = env.veil(&["--as", CONSUMER, "job", "result", "job-000001"]);
    assert!(!out.status.success());
    let budget: Value =
        serde_json::from_str(&env.ok(&["--as", CONSUMER, "budget", "--format", "json"])).unwrap();
    assert_eq!(budget[0]["spent"], "0.7");
    // The log verifies and tells the whole story, in order.
    env.ok(&["audit", "verify"]);
    let kinds = event_kinds(&env);
    assert_eq!(
        kinds[kinds.len() - 4..],
        [
            "job_submitted",
            "job_started",
            "job_finished",
            "release_denied"
        ],
        "{kinds:?}"
    );
    // Recovery happens once: another process adds nothing.
    env.ok(&["--as", CONSUMER, "job", "status", "job-000001"]);
    assert_eq!(event_kinds(&env), kinds);
}

/// The kinds of the store's audit events, in order (`audit log --format json` prints JSON lines).
fn event_kinds(env: &Env) -> Vec<String> {
    env.ok(&["audit", "log", "--format", "json"])
        .lines()
        .map(|line| {
            let entry: Value = serde_json::from_str(line).expect("one JSON entry per line");
            entry["event"]["kind"]
                .as_str()
                .expect("every event has a kind")
                .to_owned()
        })
        .collect()
}
