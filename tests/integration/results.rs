//! Released results: their JSON matches the schema in `openapi.json` for every kind of job, the
//! noise scales follow docs/jobs.md's formulas (count-only jobs spend all of ε on the counts,
//! sums are noised around the middle of their bounds), and every format renders every kind.
use std::process::Command;

use serde_json::Value;

use crate::api_schema::schemathesis;
use crate::common::*;

fn manifest(epsilon: f64, values: &str) -> String {
    format!(
        r#"dataset = "people"
module = "modules/income_by_education.wasm"
purpose = "wages"
columns = ["educ", "weekly_income"]
epsilon = {epsilon}

[output]
keys = ["education"]
{values}
"#
    )
}

/// Submits `manifest` and returns the released result as JSON.
fn released(env: &Env, name: &str, manifest: &str) -> Value {
    let path = env.write(name, manifest);
    let job = env.ok(&["--as", CONSUMER, "job", "submit", path.to_str().unwrap()]);
    let job = job.trim();
    let json = env.ok(&["--as", CONSUMER, "job", "result", job, "--format", "json"]);
    for format in ["table", "csv"] {
        env.ok(&["--as", CONSUMER, "job", "result", job, "--format", format]);
    }
    serde_json::from_str(&json).unwrap()
}

/// What the JSON Schema validator of the tools scripts/test.sh installs (jsonschema-rs, beside
/// schemathesis) finds wrong in `results` against the API document's `Release` schema; empty if
/// nothing.
fn schema_errors(results: &[Value]) -> String {
    let python = schemathesis().with_file_name("python");
    let document: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../crates/veil-server/openapi.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let schema = serde_json::json!({
        "$ref": "#/components/schemas/Release",
        "components": document["components"],
    });
    let script = r#"
import json, sys, jsonschema_rs
schema, results = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
validator = jsonschema_rs.Draft202012Validator(schema)
for r in results:
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(r)]
    if errors:
        sys.exit("\n".join(errors))
"#;
    let dir = tempfile::tempdir().unwrap();
    let (schema_path, results_path) = (dir.path().join("schema.json"), dir.path().join("r.json"));
    std::fs::write(&schema_path, schema.to_string()).unwrap();
    std::fs::write(&results_path, Value::from(results.to_vec()).to_string()).unwrap();
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&schema_path)
        .arg(&results_path)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    if out.status.success() {
        String::new()
    } else {
        assert!(
            !out.stderr.is_empty(),
            "the validator failed without saying why"
        );
        text(&out.stderr)
    }
}

fn scales(r: &Value, pick: impl Fn(&Value) -> &Value) -> Vec<f64> {
    r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| pick(row)["noise_scale"].as_f64().unwrap())
        .collect()
}

#[test]
fn results_match_their_schema_and_scales_follow_the_manifest() {
    let env = Env::new();
    env.setup("auto");
    let mut policy = policy("auto").replace("epsilon_total = 1.5", "epsilon_total = 10.0");
    policy = policy.replace(
        "[columns]",
        "[partitions]\neducation = [\"high school\", \"bachelor\", \"graduate\"]\n\n[columns]",
    );
    assert!(env.set_policy("p.toml", &policy).status.success());

    // Count-only at ε = 1: all of ε on the counts, scale G·W/ε = 1 (with one value it is 2).
    let count = released(&env, "count.toml", &manifest(1.0, ""));
    assert_eq!(scales(&count, |row| &row["units"]), vec![1.0; 3], "{count}");
    assert!(count["rows"][0]["values"].as_array().unwrap().is_empty());

    // A sum over [1000, 1010]: noised around 1005, scale (hi − lo)/2 · G · W / ε = 5 · 1 · 2 / 1.
    let sum = released(
        &env,
        "sum.toml",
        &manifest(
            1.0,
            r#"values = [{ name = "w", bounds = [1000, 1010], aggregate = "sum" }]"#,
        ),
    );
    assert_eq!(scales(&sum, |row| &row["values"][0]["sum"]), vec![10.0; 3]);
    assert_eq!(scales(&sum, |row| &row["units"]), vec![2.0; 3]);

    // Weights: the count 1, the value 3, so W = 4: count scale 4, value scale 5 · 4 / 3.
    let weighted = released(
        &env,
        "weighted.toml",
        &manifest(
            1.0,
            r#"values = [{ name = "w", bounds = [1000, 1010], aggregate = "mean", weight = 3 }]"#,
        ),
    );
    assert_eq!(scales(&weighted, |row| &row["units"]), vec![4.0; 3]);
    for s in scales(&weighted, |row| &row["values"][0]["sum"]) {
        assert!((s - 20.0 / 3.0).abs() < 1e-9, "{s}");
    }
    for row in weighted["rows"].as_array().unwrap() {
        let mean = &row["values"][0]["mean"];
        if mean.is_null() {
            continue; // `graduate` has 2 people: its noisy count may be below 1
        }
        let (v, lo, hi) = (
            mean["value"].as_f64().unwrap(),
            mean["ci95"][0].as_f64().unwrap(),
            mean["ci95"][1].as_f64().unwrap(),
        );
        assert!(
            (1000.0..=1010.0).contains(&v) && lo <= v && v <= hi,
            "{mean}"
        );
        assert!(
            lo >= 1000.0 && hi <= 1010.0,
            "clamped to the bounds: {mean}"
        );
    }
    assert_eq!(weighted["epsilon"], 1.0);
    assert_eq!(weighted["delta"], 0.0);

    let mean = released(&env, "mean.toml", &income_manifest(1.0));
    // A result in the old shape (ε as text) is what the schema exists to catch.
    let mut old = mean.clone();
    old["epsilon"] = "1".into();
    assert!(schema_errors(&[old]).contains("epsilon"));
    // A SQL job's release: the same shape, with its name for the count.
    let sql = released(
        &env,
        "sql.toml",
        "dataset = \"people\"\nsql = \"SELECT educ, COUNT(*) AS people, AVG(weekly_income) AS m, \
         STDDEV(weekly_income) AS sd FROM people GROUP BY educ ORDER BY people DESC\"\nepsilon = 1.0\n",
    );
    assert_eq!(sql["count_name"], "people", "{sql}");
    assert!(
        sql["rows"][0]["values"][1]["stddev"]["ci95"].is_array(),
        "{sql}"
    );
    let errors = schema_errors(&[count, sum, weighted, mean, sql]);
    assert!(errors.is_empty(), "{errors}");
}

#[test]
fn bad_weights_and_bounds_are_refused_naming_the_field() {
    let env = Env::new();
    env.setup("auto");
    for (values, field, says) in [
        (
            r#"values = [{ name = "w", bounds = [0, 10, 20] }]"#,
            "output.values[0].bounds",
            "exactly two numbers",
        ),
        (
            r#"values = [{ name = "w", bounds = [0, 10], weight = 0 }]"#,
            "output.values[0].weight",
            "from 1 to 1000",
        ),
    ] {
        let path = env.write("bad.toml", &manifest(0.5, values));
        let out = env.veil(&["--as", CONSUMER, "job", "submit", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(err.contains(field) && err.contains(says), "{err}");
    }
    // Nothing was recorded.
    let jobs = env.ok(&["--as", CONSUMER, "job", "list"]);
    assert!(!jobs.contains("job-"), "{jobs}");
}
