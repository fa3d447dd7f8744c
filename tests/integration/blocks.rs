//! Sample-and-aggregate mode (GUPT): a median, which per-unit mode cannot compute, released as
//! the noisy average of per-block medians; hostile block outputs are clamped and faulting blocks
//! neither stop the job nor show.
use veil_engine::{EngineConfig, EngineError, JobState, Veil};
use veil_sandbox::SandboxConfig;

use crate::common::*;

const BLOCKS: u32 = 40;

fn block_manifest(module: &str, epsilon: f64, extra: &str) -> String {
    format!(
        r#"dataset = "people"
module = "{module}"
purpose = "median wage"
columns = ["weekly_income"]
epsilon = {epsilon}
blocks = {BLOCKS}
{extra}
[output]
keys = []
values = [{{ name = "median_income", bounds = [500, 2000] }}]
"#
    )
}

fn open(env: &Env) -> Veil {
    env.setup_with_policy(&policy("auto").replace("epsilon_total = 1.5", "epsilon_total = 10.0"));
    let config = EngineConfig::builder()
        .sandbox(
            SandboxConfig::builder()
                .fuel_per_unit(2_000_000)
                .max_concurrent_instances(4)
                .build(),
        )
        .workers(2)
        .build();
    Veil::open(&env.data_dir(), config).unwrap()
}

#[test]
fn median_by_sample_and_aggregate() {
    let env = Env::new();
    let mut veil = open(&env);
    let path = env.write(
        "median.toml",
        &block_manifest("modules/median_income.wasm", 1.0, ""),
    );
    let outcome = veil.submit_job(&consumer(), &path).unwrap();
    assert_eq!(outcome.state, JobState::Released);
    let release = veil.job_result(&consumer(), &outcome.job).unwrap();
    assert!(release.rows.is_empty());
    assert!(release.mechanism.contains("sample-and-aggregate"));
    assert_eq!(release.estimates.len(), 1);
    let e = &release.estimates[0];
    assert_eq!((e.name.as_str(), e.blocks), ("median_income", BLOCKS));
    // Sensitivity of the sum over blocks is the range (1,500); ε = 1 and one value: scale 1,500 on
    // the sum, 1,500 / 40 = 37.5 on the average.
    assert_eq!(e.estimate.noise_scale, 37.5);
    assert!(e.estimate.ci95[0] < e.estimate.value && e.estimate.value < e.estimate.ci95[1]);
    // Two thirds of the income rows lie in 1,301–1,309 and a third in 700–708, so block medians
    // sit near 1,300 (a few blocks lower); noise beyond ±600 has probability e^-16.
    assert!(
        (e.estimate.value - 1300.0).abs() < 600.0,
        "median estimate {}",
        e.estimate.value
    );
    // Charged, audited, rendered for the consumer.
    assert_eq!(veil.budget(&consumer()).unwrap()[0].spent, "1");
    veil.verify_audit().unwrap();
    let table = env.ok(&["--as", CONSUMER, "job", "result", &outcome.job]);
    assert!(
        table.contains("median_income") && table.contains("sample-and-aggregate"),
        "{table}"
    );
    let csv = env.ok(&[
        "--as",
        CONSUMER,
        "job",
        "result",
        &outcome.job,
        "--format",
        "csv",
    ]);
    assert!(csv.starts_with("value,estimate,ci95_low"), "{csv}");
    // The holder sees how blocks were formed; the consumer cannot.
    let logs = veil.job_logs(&holder(), &outcome.job).unwrap().join("\n");
    assert!(logs.contains(&format!("in {BLOCKS} blocks")), "{logs}");
}

#[test]
fn hostile_block_outputs_are_clamped_and_faults_do_not_show() {
    let env = Env::new();
    let mut veil = open(&env);
    // Every block claims a huge median: clamped to the upper bound.
    let (data, ret) = emitting(&[contribution(&[], &[1e300])]);
    let huge = wat_module(&data, &ret);
    std::fs::write(env.path().join("modules/huge.wasm"), huge).unwrap();
    let path = env.write("huge.toml", &block_manifest("modules/huge.wasm", 1.0, ""));
    let outcome = veil.submit_job(&consumer(), &path).unwrap();
    let e = &veil
        .job_result(&consumer(), &outcome.job)
        .unwrap()
        .estimates[0];
    assert!(
        (e.estimate.value - 2000.0).abs() < 600.0,
        "{}",
        e.estimate.value
    );
    // Every block loops forever: the job still releases (faulting blocks count as the midpoint,
    // 1,250), so whether the module failed on the data is not something the consumer can see.
    let looping = wat_module("", "(loop br 0) i64.const 0");
    std::fs::write(env.path().join("modules/loop.wasm"), looping).unwrap();
    let path = env.write("loop.toml", &block_manifest("modules/loop.wasm", 1.0, ""));
    let outcome = veil.submit_job(&consumer(), &path).unwrap();
    assert_eq!(outcome.state, JobState::Released);
    let e = &veil
        .job_result(&consumer(), &outcome.job)
        .unwrap()
        .estimates[0];
    assert!(
        (e.estimate.value - 1250.0).abs() < 600.0,
        "{}",
        e.estimate.value
    );
    let logs = veil.job_logs(&holder(), &outcome.job).unwrap().join("\n");
    assert!(
        logs.contains("out_of_fuel") && logs.contains("40 blocks counted as the midpoint"),
        "{logs}"
    );
    veil.verify_audit().unwrap();
}

#[test]
fn malformed_block_manifests_change_nothing() {
    let env = Env::new();
    let mut veil = open(&env);
    let before = veil.audit_entries().unwrap().len();
    let cases = [
        (
            block_manifest("modules/median_income.wasm", 1.0, "")
                .replace("keys = []", "keys = [\"g\"]"),
            "declare no keys",
        ),
        (
            block_manifest("modules/median_income.wasm", 1.0, "")
                .replace(&format!("blocks = {BLOCKS}"), "blocks = 1"),
            "blocks",
        ),
        (
            block_manifest("modules/median_income.wasm", 1.0, "").replace(
                "bounds = [500, 2000] }",
                "bounds = [500, 2000], aggregate = \"sum\" }",
            ),
            "averages over blocks",
        ),
    ];
    for (i, (manifest, expect)) in cases.iter().enumerate() {
        let path = env.write(&format!("bad{i}.toml"), manifest);
        let err = veil.submit_job(&consumer(), &path).unwrap_err();
        assert!(
            matches!(err, EngineError::Policy(_)) && err.to_string().contains(expect),
            "{err}"
        );
    }
    assert_eq!(veil.audit_entries().unwrap().len(), before);
    assert!(veil.all_jobs().unwrap().is_empty());
}
