//! Guests in other languages: the C example (built by scripts/build-guests.sh with clang) computes
//! exactly what the Rust example computes, unit for unit, and runs as a job like any module.

use veil_abi::{ColumnType, UnitEncoder};
use veil_engine::{EngineConfig, JobState, Veil};
use veil_sandbox::{Sandbox, SandboxConfig};

use crate::common::*;

#[test]
fn c_guest_matches_the_rust_guest_unit_for_unit() {
    let sandbox =
        Sandbox::new(SandboxConfig::builder().max_concurrent_instances(2).build()).unwrap();
    let c = sandbox
        .compile(&built_guest("income_by_education_c.wasm"))
        .unwrap();
    let rust = sandbox.compile(veil_examples::INCOME_BY_EDUCATION).unwrap();
    let (mut c_runner, mut rust_runner) = (c.runner(), rust.runner());
    let mut enc = UnitEncoder::new(&[
        ("educ", ColumnType::Int),
        ("weekly_income", ColumnType::Float),
    ]);
    for unit in 0..200u32 {
        enc.reset();
        // 0–3 rows with a mix of values and nulls, so both guests see the same edge cases.
        for row in 0..unit % 4 {
            enc.begin_row();
            if (unit + row) % 5 == 0 {
                enc.push_null();
            } else {
                enc.push_int(8 + i64::from(unit % 12));
            }
            if (unit * 7 + row) % 6 == 0 {
                enc.push_null();
            } else {
                enc.push_float(f64::from(unit) * 13.5 + f64::from(row));
            }
        }
        let input = enc.finish();
        let (from_c, from_rust) = (c_runner.run_unit(input), rust_runner.run_unit(input));
        assert_eq!(
            from_c.result.as_ref().unwrap(),
            from_rust.result.as_ref().unwrap(),
            "unit {unit}"
        );
    }
}

#[test]
fn c_guest_runs_as_a_job() {
    let env = Env::new();
    env.setup("auto");
    std::fs::write(
        env.path().join("modules/income_by_education_c.wasm"),
        built_guest("income_by_education_c.wasm"),
    )
    .unwrap();
    let mut veil = Veil::open(&env.data_dir(), EngineConfig::default()).unwrap();
    let manifest = income_manifest(1.0).replace(
        "modules/income_by_education.wasm",
        "modules/income_by_education_c.wasm",
    );
    let path = env.write("c.toml", &manifest);
    let outcome = veil.submit_job(&consumer(), &path).unwrap();
    assert_eq!(outcome.state, JobState::Released);
    let release = veil.job_result(&consumer(), &outcome.job).unwrap();
    let keys: Vec<&str> = release.rows.iter().map(|r| r.key[0].as_str()).collect();
    assert_eq!(keys, ["bachelor", "high school"]);
    veil.verify_audit().unwrap();
}

#[test]
fn python_guest_matches_the_rust_guest_block_for_block() {
    let sandbox = Sandbox::new(
        SandboxConfig::builder()
            .max_concurrent_instances(2)
            .disk_cache_dir(shared_cache())
            .build(),
    )
    .unwrap();
    let python = sandbox
        .compile(&built_guest("median_income_py.wasm"))
        .unwrap();
    assert!(python.is_component());
    let rust = sandbox.compile(veil_examples::MEDIAN_INCOME).unwrap();
    let (mut py_runner, mut rust_runner) = (python.runner(), rust.runner());
    let mut enc = UnitEncoder::new(&[("weekly_income", ColumnType::Float)]);
    for block in 0..6u32 {
        enc.reset();
        for row in 0..(block * 7 + 1) {
            enc.begin_row();
            if row % 9 == 4 {
                enc.push_null();
            } else {
                enc.push_float(f64::from((row * 37 + block * 11) % 1000) + 0.25);
            }
        }
        let input = enc.finish();
        let (from_py, from_rust) = (
            py_runner.run_block(input, 10),
            rust_runner.run_block(input, 10),
        );
        assert_eq!(
            from_py.result.as_ref().unwrap(),
            from_rust.result.as_ref().unwrap(),
            "block {block}: {}",
            from_py.log
        );
    }
}

#[test]
fn python_guest_runs_in_block_mode_only() {
    let env = Env::new();
    env.setup_with_policy(&policy("auto").replace("epsilon_total = 1.5", "epsilon_total = 10.0"));
    std::fs::write(
        env.path().join("modules/median_income_py.wasm"),
        built_guest("median_income_py.wasm"),
    )
    .unwrap();
    let config = EngineConfig::builder()
        .sandbox(
            SandboxConfig::builder()
                .max_concurrent_instances(4)
                .disk_cache_dir(shared_cache())
                .build(),
        )
        .workers(2)
        .build();
    let mut veil = Veil::open(&env.data_dir(), config).unwrap();
    let block_manifest = &python_median_manifest();
    // Per-unit mode is refused at submission, with the way out in the message; nothing recorded.
    let before = veil.audit_entries().unwrap().len();
    let per_unit = env.write(
        "per_unit.toml",
        &block_manifest.replace("blocks = 20\n", ""),
    );
    let err = veil.submit_job(&consumer(), &per_unit).unwrap_err();
    assert!(err.to_string().contains("add `blocks = N`"), "{err}");
    assert_eq!(veil.audit_entries().unwrap().len(), before);

    let path = env.write("py.toml", block_manifest);
    let outcome = veil.submit_job(&consumer(), &path).unwrap();
    assert_eq!(outcome.state, JobState::Released);
    let release = veil.job_result(&consumer(), &outcome.job).unwrap();
    let e = &release.estimates[0];
    // Block medians sit near 1,300 (see blocks.rs); noise scale 1,500 / 20 = 75, so ±600 is 8 scales.
    assert!(
        (e.estimate.value - 1300.0).abs() < 600.0,
        "{}",
        e.estimate.value
    );
    let logs = veil.job_logs(&holder(), &outcome.job).unwrap().join("\n");
    assert!(logs.contains("0 blocks counted as the midpoint"), "{logs}");
    veil.verify_audit().unwrap();
}
