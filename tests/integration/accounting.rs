//! Accounting through the real engine: Gaussian jobs compose under zCDP, public partitions release
//! every declared group without spending δ, and concurrent submissions from one consumer can never
//! overspend.
use std::sync::{Arc, Barrier};

use serde_json::Value;
use veil_engine::{EngineConfig, EngineError, JobState, Veil};
use veil_sandbox::SandboxConfig;

use crate::common::*;

const LEVELS: [&str; 5] = [
    "below high school",
    "high school",
    "some college",
    "bachelor",
    "graduate",
];

fn engine(env: &Env) -> Veil {
    let config = EngineConfig::builder()
        .sandbox(SandboxConfig::builder().max_concurrent_instances(2).build())
        .workers(1)
        .build();
    Veil::open(&env.data_dir(), config).unwrap()
}

fn policy_with_partitions() -> String {
    let levels: Vec<String> = LEVELS.iter().map(|l| format!("\"{l}\"")).collect();
    policy("auto").replace(
        "[columns]",
        &format!(
            "[partitions]\neducation = [{}]\n\n[columns]",
            levels.join(", ")
        ),
    )
}

#[test]
fn gaussian_jobs_compose_under_zcdp_and_public_partitions_release_every_group() {
    let env = Env::new();
    env.setup_with_policy(&policy_with_partitions());
    let manifest =
        income_manifest(0.7).replace("epsilon = 0.7", "epsilon = 0.7\nnoise = \"gaussian\"");
    let path = env.write("gauss.toml", &manifest);

    // Under pure composition two jobs of ε = 0.7 would already leave only 0.1 of 1.5. Under zCDP
    // (ρ ≈ 0.00653 each at δ = 1e-8), four fit: 4ρ at δ = 4e-8 converts to ε ≈ 1.36.
    let mut released = Vec::new();
    for _ in 0..4 {
        let out = env.veil(&["--as", CONSUMER, "job", "submit", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        released.push(text(&out.stdout).trim().to_owned());
    }
    let out = env.veil(&["--as", CONSUMER, "job", "submit", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "the fifth job must be refused");
    assert!(
        text(&out.stderr).contains("only ε = "),
        "{}",
        text(&out.stderr)
    );

    let budget: Value =
        serde_json::from_str(&env.ok(&["--as", CONSUMER, "budget", "--format", "json"])).unwrap();
    let spent: f64 = budget[0]["spent"].as_str().unwrap().parse().unwrap();
    assert!((1.3..1.45).contains(&spent), "ε spent {spent}");
    assert_eq!(budget[0]["delta_spent"], "4e-8");

    // Every declared partition is released, the empty ones too, each cell Gaussian with its σ.
    let r: Value = serde_json::from_str(&env.ok(&[
        "--as",
        CONSUMER,
        "job",
        "result",
        &released[0],
        "--format",
        "json",
    ]))
    .unwrap();
    let keys: Vec<&str> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["key"][0].as_str().unwrap())
        .collect();
    let mut expected = LEVELS.to_vec();
    expected.sort();
    assert_eq!(keys, expected, "{r}");
    assert!(
        r["suppression_rule"]
            .as_str()
            .unwrap()
            .contains("public partitions")
    );
    assert_eq!(r["delta"], 1e-8, "δ only for the Gaussian conversion");
    for row in r["rows"].as_array().unwrap() {
        assert_eq!(row["units"]["mechanism"], "discrete Gaussian");
        // σ² = G·(1+m)/(2ρ) = 2/(2·0.00653): σ ≈ 12.4.
        let sigma = row["units"]["noise_scale"].as_f64().unwrap();
        assert!((sigma - 12.4).abs() < 0.3, "σ = {sigma}");
    }
    assert!(env.ok(&["audit", "verify"]).contains("intact"));
    // The log records each job's ρ and δ.
    let log = env.ok(&["audit", "log", "--format", "json"]);
    assert!(log.contains("rho_pico") && log.contains("delta_conversion_femto"));
}

#[test]
fn keys_from_the_data_spend_delta_on_selection_and_laplace_counts_it() {
    let env = Env::new();
    env.setup_with_policy(&policy("auto").replace(
        "epsilon_total = 1.5",
        "epsilon_total = 10.0\ndelta_per_job = 1e-7\ndelta_total = 2.5e-7",
    ));
    let manifest = income_manifest(0.5).replace("epsilon = 0.5", "epsilon = 0.5\ndelta = 1e-7");
    let path = env.write("laplace.toml", &manifest);
    for _ in 0..2 {
        let out = env.veil(&["--as", CONSUMER, "job", "submit", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // ε is plentiful, but a third job would need δ = 1e-7 with only 5e-8 left.
    let out = env.veil(&["--as", CONSUMER, "job", "submit", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("needs δ = 1e-7"),
        "{}",
        text(&out.stderr)
    );
    // A job asking more δ than the per-job cap is refused by the pre-check.
    let greedy = env.write(
        "greedy.toml",
        &manifest.replace("delta = 1e-7", "delta = 1e-6"),
    );
    let out = env.veil(&["--as", CONSUMER, "job", "submit", greedy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("caps each job at δ"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn concurrent_submissions_never_overspend() {
    let env = Env::new();
    env.setup("auto");
    let path = env.write("job.toml", &income_manifest(0.5));
    // Twelve submissions of ε = 0.5 race for a total of 1.5: exactly three may run.
    let threads = 12;
    let barrier = Arc::new(Barrier::new(threads));
    let outcomes: Vec<Result<JobState, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = barrier.clone();
                let (env, path) = (&env, &path);
                s.spawn(move || {
                    let mut veil = engine(env);
                    barrier.wait();
                    match veil.submit_job(&consumer(), path) {
                        Ok(o) => Ok(o.state),
                        Err(EngineError::Refused { code, .. }) => Err(code.to_string()),
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let released = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(JobState::Released)))
        .count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Err(code) if code == "budget"))
        .count();
    assert_eq!((released, refused), (3, threads - 3), "{outcomes:?}");

    // The ledger says 1.5, and so does the sum of the debits in the verified log.
    let veil = engine(&env);
    let line = &veil.budget(&consumer()).unwrap()[0];
    assert_eq!((line.spent.as_str(), line.remaining.as_str()), ("1.5", "0"));
    let debits: u64 = veil
        .audit_entries()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let v = serde_json::to_value(&e.event).unwrap();
            (v["kind"] == "job_started").then(|| v["epsilon_micro"].as_u64().unwrap())
        })
        .sum();
    assert_eq!(debits, 1_500_000);
    veil.verify_audit().unwrap();
}

/// A holder may publish a noisy count of its privacy units: drawn once, shown to admitted
/// consumers with its interval, logged, and taken out of every consumer's budget; never redrawn.
#[test]
fn a_published_unit_count_is_drawn_once_and_charged_to_every_consumer() {
    let env = Env::new();
    // ε = 20 makes the discrete Laplace noise 0 except with probability 2e^-20/(1+e^-20) ≈ 4e-9,
    // so the test can check the count itself; the mechanism's distribution is tested in
    // veil-policy's sampler tests.
    let publishing = policy("auto").replace(
        "epsilon_total = 1.5",
        "epsilon_total = 21.5\nunit_count_epsilon = 20",
    );
    env.setup_with_policy(&publishing);
    // Local mode shows a consumer's view to a registered consumer (setup created it).
    let units = 402; // people_csv has 603 rows of 402 people
    let catalog = |who: &str| -> Value {
        let listing = env.ok(&["--as", who, "dataset", "list", "--format", "json"]);
        serde_json::from_str::<Value>(&listing).unwrap()[0].clone()
    };
    let entry = catalog(CONSUMER);
    assert_eq!(entry["units"]["noisy"], units, "{entry}");
    assert_eq!(entry["units"]["epsilon"], 20.0);
    assert_eq!(entry["units"]["ci95"], serde_json::json!([units, units]));
    assert!(entry.get("rows").is_none(), "{entry}");
    // The table view says what it is.
    let table = env.ok(&["--as", CONSUMER, "dataset", "list"]);
    assert!(table.contains(&format!("units≈{units}")), "{table}");

    // The release is in the log, public part included.
    let log = env.ok(&["audit", "log", "--format", "json"]);
    let published: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"]["kind"] == "unit_count_published")
        .collect();
    assert_eq!(published.len(), 1, "{log}");
    assert_eq!(published[0]["event"]["noisy_units"], units);

    // Every consumer's jobs have ε = 1.5 left, not 21.5.
    let budget = env.ok(&["--as", CONSUMER, "budget", "--format", "json"]);
    let line = &serde_json::from_str::<Value>(&budget).unwrap()[0];
    assert_eq!(
        (&line["remaining"], &line["total"], &line["published"]),
        (&"1.5".into(), &"21.5".into(), &"20".into()),
        "{line}"
    );

    // A new policy version keeps the count (same ε); another ε would redraw it and is refused.
    let same = env.set_policy(
        "same.toml",
        &publishing.replace("min_units_per_group = 20", "min_units_per_group = 25"),
    );
    assert!(same.status.success(), "{}", text(&same.stderr));
    let before = env.snapshot();
    let out = env.set_policy(
        "redraw.toml",
        &publishing.replace("unit_count_epsilon = 20", "unit_count_epsilon = 10"),
    );
    assert!(!out.status.success());
    let msg = text(&out.stderr);
    assert!(
        msg.contains("dp.unit_count_epsilon") && msg.contains("drawn once"),
        "{msg}"
    );
    assert_eq!(env.snapshot(), before, "a refused policy changes nothing");

    // Without the field the count is no longer shown, but its ε stays spent.
    let hidden = env.set_policy(
        "hidden.toml",
        &publishing.replace("\nunit_count_epsilon = 20", ""),
    );
    assert!(hidden.status.success(), "{}", text(&hidden.stderr));
    assert!(catalog(CONSUMER).get("units").is_none());
    let budget = env.ok(&["--as", CONSUMER, "budget", "--format", "json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&budget).unwrap()[0]["remaining"],
        "1.5"
    );
}

/// A policy whose published count would leave no room for a job is refused, naming the field.
#[test]
fn a_unit_count_that_leaves_no_budget_for_jobs_is_refused() {
    let err = veil_policy::Policy::from_toml(&policy("auto").replace(
        "epsilon_total = 1.5",
        "epsilon_total = 1.5\nunit_count_epsilon = 0.6",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("dp.unit_count_epsilon") && err.contains("exceeds dp.epsilon_total"),
        "{err}"
    );
}
