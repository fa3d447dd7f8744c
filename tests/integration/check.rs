//! `veil job check`: every check of a submission that needs no data, and the noise the release
//! will carry, with nothing spent. Its figures are the released job's figures; a module that
//! reads a column the manifest does not deliver is refused before anything is spent.
use serde_json::Value;

use crate::common::*;

fn check_json(env: &Env, manifest: &std::path::Path) -> Value {
    let out = env.ok(&[
        "--as",
        CONSUMER,
        "job",
        "check",
        manifest.to_str().unwrap(),
        "--json",
    ]);
    serde_json::from_str(&out).unwrap()
}

fn half_width(cell: &Value) -> f64 {
    (cell["ci95"][1].as_f64().unwrap() - cell["ci95"][0].as_f64().unwrap()) / 2.0
}

#[test]
fn check_forecasts_exactly_what_the_job_releases_and_spends_nothing() {
    let env = Env::new();
    env.setup("auto");
    let manifest = env.write("job.toml", &income_manifest(0.5));
    let budget = env.ok(&["--as", CONSUMER, "budget", "--format", "json"]);

    let check = check_json(&env, &manifest);
    assert!(check.get("refusal").is_none(), "{check}");
    assert_eq!(check["approval"], "auto");
    assert!(
        check.get("notes").is_none(),
        "the module declares its columns: {check}"
    );
    let forecast = &check["forecast"];
    assert_eq!(forecast["epsilon"], 0.5);
    let threshold = forecast["threshold"].as_u64().expect("keys from the data");
    // Nothing spent, nothing recorded but the check's own audit entry.
    assert_eq!(
        env.ok(&["--as", CONSUMER, "budget", "--format", "json"]),
        budget
    );
    let log = env.ok(&["audit", "log", "--format", "json"]);
    assert!(log.contains("\"job_checked\""), "{log}");
    assert!(!log.contains("\"job_submitted\""), "{log}");
    let text = env.ok(&["--as", CONSUMER, "job", "check", manifest.to_str().unwrap()]);
    assert!(text.starts_with("admissible on `clinic:people`"), "{text}");
    assert!(
        text.contains(&format!("below {threshold} are withheld")),
        "{text}"
    );

    // The same job, submitted: every released cell carries the forecast's scale and interval.
    let job = env.ok(&[
        "--as",
        CONSUMER,
        "job",
        "submit",
        manifest.to_str().unwrap(),
    ]);
    let result = env.ok(&[
        "--as",
        CONSUMER,
        "job",
        "result",
        job.trim(),
        "--format",
        "json",
    ]);
    let result: Value = serde_json::from_str(&result).unwrap();
    let grid = result["granularity"].as_f64().unwrap();
    let units = &forecast["units"];
    let sum = &forecast["values"][0]["sum"];
    let numerator = &forecast["values"][0]["mean_numerator"];
    let rows = result["rows"].as_array().unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        assert_eq!(row["units"]["noise_scale"], units["noise_scale"]);
        assert!(
            (half_width(&row["units"]) - units["ci95_half_width"].as_f64().unwrap()).abs() <= grid
        );
        let released_sum = &row["values"][0]["sum"];
        assert_eq!(released_sum["noise_scale"], sum["noise_scale"]);
        assert!(
            (half_width(released_sum) - sum["ci95_half_width"].as_f64().unwrap()).abs() <= grid
        );
        let n = row["units"]["value"].as_f64().unwrap();
        let mean_scale = row["values"][0]["mean"]["noise_scale"].as_f64().unwrap();
        assert!((mean_scale - numerator["noise_scale"].as_f64().unwrap() / n).abs() < 1e-9);
        assert!(row["units"]["value"].as_f64().unwrap() >= threshold as f64);
    }
    assert_eq!(result["epsilon"], forecast["epsilon"]);
    assert_eq!(result["suppression_rule"], forecast["suppression_rule"]);
}

#[test]
fn check_tells_a_refusal_without_recording_a_job() {
    let env = Env::new();
    env.setup("auto");
    // The standard policy caps each job at ε = 1.
    let manifest = env.write("greedy.toml", &income_manifest(1.2));
    let out = env.veil(&["--as", CONSUMER, "job", "check", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("would be refused: the job asks for ε = 1.2"),
        "{stdout}"
    );
    let jobs = env.ok(&["--as", CONSUMER, "job", "list"]);
    assert!(!jobs.contains("job-"), "a check records no job: {jobs}");
}

/// A module that declares it reads `education` (the manifest delivers `educ`).
fn reads_education() -> Vec<u8> {
    wat_module(
        r#"(@custom "veil_abi_v1_columns" "education\0a")"#,
        "i64.const 0",
    )
}

#[test]
fn a_module_reading_an_undelivered_column_is_refused_before_anything_is_spent() {
    let env = Env::new();
    env.setup("auto");
    std::fs::write(
        env.path().join("modules/reads_education.wasm"),
        reads_education(),
    )
    .unwrap();
    let manifest = env.write(
        "job.toml",
        &income_manifest(0.5).replace("income_by_education.wasm", "reads_education.wasm"),
    );
    let before = env.snapshot();
    for command in ["submit", "check"] {
        let out = env.veil(&["--as", CONSUMER, "job", command, manifest.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        let err = text(&out.stderr);
        assert!(
            err.contains(
                "the module reads column `education` that the manifest does not \
                          deliver: add it to the manifest's `columns` (it delivers: `educ`, \
                          `weekly_income`)"
            ),
            "{command}: {err}"
        );
    }
    assert_eq!(env.snapshot(), before, "a bad submission changes nothing");
}

#[test]
fn an_unusable_columns_section_is_a_module_error() {
    let env = Env::new();
    env.setup("auto");
    let bad = wat_module(r#"(@custom "veil_abi_v1_columns" "educ")"#, "i64.const 0");
    std::fs::write(env.path().join("modules/bad.wasm"), bad).unwrap();
    let manifest = env.write(
        "job.toml",
        &income_manifest(0.5).replace("income_by_education.wasm", "bad.wasm"),
    );
    let out = env.veil(&["--as", CONSUMER, "job", "check", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "`veil_abi_v1_columns` section is unusable: its last name does not end with a newline"
        ),
        "{err}"
    );
}

#[test]
fn a_module_that_declares_nothing_gets_a_note() {
    let env = Env::new();
    env.setup("auto");
    std::fs::write(
        env.path().join("modules/silent.wasm"),
        wat_module("", "i64.const 0"),
    )
    .unwrap();
    let manifest = env.write(
        "job.toml",
        &income_manifest(0.5).replace("income_by_education.wasm", "silent.wasm"),
    );
    let check = check_json(&env, &manifest);
    let notes = check["notes"].as_array().unwrap();
    assert!(
        notes[0]
            .as_str()
            .unwrap()
            .contains("does not declare the columns it reads"),
        "{check}"
    );
}

/// The holder sees every bounding counter, the contributions the public partitions dropped
/// included: keys that miss the holder's partitions (padding, spelling) show up there.
#[test]
fn the_holder_log_counts_contributions_outside_the_public_partitions() {
    let env = Env::new();
    env.setup_with_policy(&policy("auto").replace(
        "[columns]",
        "[partitions]\neducation = [\"bachelor\"]\n\n[columns]",
    ));
    let manifest = env.write("job.toml", &income_manifest(0.5));
    let job = env.ok(&[
        "--as",
        CONSUMER,
        "job",
        "submit",
        manifest.to_str().unwrap(),
    ]);
    let log = env.ok(&["--as", HOLDER, "job", "logs", job.trim()]);
    // 402 people: 200 bachelors; 200 high school and 2 graduates fall outside.
    assert!(
        log.contains(
            "gate: 402 units, 402 contributions, 0 malformed dropped, 0 over the group limit \
             dropped, 202 outside the public partitions dropped, 0 values clamped"
        ),
        "{log}"
    );
}

/// A refused submission records its job and its module's hash (the log refers to it), not the
/// module's bytes; refusals per consumer are capped per hour; a check stores nothing and is the
/// way to try.
#[test]
fn refused_submissions_are_capped_per_consumer() {
    let env = Env::new();
    env.setup("auto");
    let config = veil_engine::EngineConfig::builder()
        .max_refused_per_hour(2)
        .workers(1)
        .build();
    let mut veil = veil_engine::Veil::open(&env.data_dir(), config).unwrap();
    let wasm = std::fs::read(env.path().join("modules/income_by_education.wasm")).unwrap();
    // Over the per-job cap of ε = 1: refused by policy, recorded.
    let greedy = income_manifest(1.2);
    for _ in 0..2 {
        let s = veil.submit_as(&consumer(), &greedy, &wasm, false).unwrap();
        assert!(s.refusal.is_some());
    }
    let jobs_before = veil.all_jobs().unwrap().len();
    match veil.submit_as(&consumer(), &greedy, &wasm, false) {
        Err(veil_engine::EngineError::Busy(m)) => {
            assert!(
                m.contains("2 submissions refused in the last hour (at most 2)"),
                "{m}"
            )
        }
        other => panic!("expected busy, got {other:?}"),
    }
    assert_eq!(
        veil.all_jobs().unwrap().len(),
        jobs_before,
        "nothing recorded"
    );
    // Checking still works.
    let check = veil.check_job(&consumer(), &greedy, &wasm).unwrap();
    assert!(check.refusal.is_some());
    let stored = || -> i64 {
        let conn = rusqlite::Connection::open(env.data_dir().join("veil.db")).unwrap();
        conn.query_row(
            "SELECT COALESCE(SUM(length(bytes)), 0) FROM modules",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(stored(), 0, "refused modules are kept by hash only");
    // The same module admitted later is stored whole, and runs.
    drop(veil);
    let job = env.ok(&[
        "--as",
        CONSUMER,
        "job",
        "submit",
        env.write("ok.toml", &income_manifest(0.5))
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(stored(), wasm.len() as i64);
    let status = env.ok(&["--as", CONSUMER, "job", "status", job.trim()]);
    assert!(status.contains("released"), "{status}");
}
