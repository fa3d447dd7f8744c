//! Guests in other languages: the C example (built by scripts/build-guests.sh with clang) computes
//! exactly what the Rust example computes, unit for unit, and runs as a job like any module.
use std::path::PathBuf;

use veil_abi::{ColumnType, UnitEncoder};
use veil_engine::{EngineConfig, JobState, Veil};
use veil_sandbox::{Sandbox, SandboxConfig};

use crate::common::*;

fn built_guest(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guests")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; scripts/build-guests.sh builds it (scripts/test.sh runs it)",
            path.display()
        )
    })
}

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
    let outcome = veil.submit_job(&path, CONSUMER).unwrap();
    assert_eq!(outcome.state, JobState::Released);
    let release = veil.job_result(&outcome.job, CONSUMER).unwrap();
    let keys: Vec<&str> = release.rows.iter().map(|r| r.key[0].as_str()).collect();
    assert_eq!(keys, ["bachelor", "high school"]);
    veil.verify_audit().unwrap();
}
