//! The whole pipeline through the real binary: register, policy, submit, approve, gate, budget,
//! audit, release.
use serde_json::Value;

use crate::common::*;

fn result_json(env: &Env, job: &str) -> Value {
    serde_json::from_str(&env.ok(&["--as", CONSUMER, "job", "result", job, "--format", "json"]))
        .unwrap()
}

#[test]
fn end_to_end_release_with_small_group_withheld() {
    let env = Env::new();
    env.setup("auto");
    let listing = env.ok(&["dataset", "list"]);
    assert!(
        listing.contains("people") && listing.contains("weekly_income: Float64"),
        "{listing}"
    );
    assert!(
        !listing.contains("900-00-"),
        "the catalog must never show rows"
    );

    // ε = 1 makes count noise of scale 2: the 2 graduates would need noise of +18 to pass the
    // threshold of 20 (probability 0.5·e^-9, about 6e-5), so the withheld group is reliably withheld.
    let out = env.submit_manifest("income.toml", &income_manifest(1.0));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let job = text(&out.stdout).trim().to_owned();
    assert_eq!(
        env.ok(&["--as", CONSUMER, "job", "status", &job]).trim(),
        format!("{job} released")
    );

    let r = result_json(&env, &job);
    let rows = r["rows"].as_array().unwrap();
    let keys: Vec<&str> = rows
        .iter()
        .map(|row| row["key"][0].as_str().unwrap())
        .collect();
    // 200 high-school and 200 bachelor people are released; the 2 graduates are withheld.
    assert_eq!(keys, ["bachelor", "high school"], "{r}");
    for row in rows {
        let units = &row["units"];
        let (v, lo, hi) = (
            units["value"].as_f64().unwrap(),
            units["ci95"][0].as_f64().unwrap(),
            units["ci95"][1].as_f64().unwrap(),
        );
        // Count noise has scale 2, so its exact 95% half-width is 6.
        assert!(
            (v - 200.0).abs() < 30.0 && v - lo == 6.0 && hi - v == 6.0,
            "{units}"
        );
        assert_eq!(units["noise_scale"].as_f64().unwrap(), 2.0); // G·(1+m)/ε = 1·2/1
        let mean = row["values"][0]["mean"]["value"].as_f64().unwrap();
        let expected = if row["key"][0] == "bachelor" {
            1304.5
        } else {
            704.5
        };
        // The centred sum's noise has scale (2000/2)·2/1 = 2000 on a sum near 200·expected: ±600 is
        // far more than the mean's error.
        assert!((mean - expected).abs() < 600.0, "{mean} vs {expected}");
    }
    // The threshold is the larger of the policy's 20 and partition selection's: with count noise
    // of scale 2 (q = e^-1/2) and the default δ = 1e-8, the smallest k with q^k/(1+q) ≤ δ is 36,
    // plus the gate's 2 of slack: 38.
    let rule = r["suppression_rule"].as_str().unwrap();
    assert!(
        rule.contains("below 38") && rule.contains("δ = 1e-8"),
        "{rule}"
    );
    assert_eq!(r["delta"].as_f64(), Some(1e-8));

    // CSV and table renderings for people and machines.
    let csv = env.ok(&["--as", CONSUMER, "job", "result", &job, "--format", "csv"]);
    assert!(csv.starts_with("education,units,units_ci95_low"), "{csv}");
    assert_eq!(csv.lines().count(), 3);
    let table = env.ok(&["--as", CONSUMER, "job", "result", &job]);
    assert!(
        table.contains("units (95% CI)") && table.contains("discrete Laplace"),
        "{table}"
    );

    // Budget: 1 of 1.5 spent.
    let budget = env.ok(&["--as", CONSUMER, "budget", "--format", "json"]);
    let b: Value = serde_json::from_str(&budget).unwrap();
    assert_eq!(
        (b[0]["spent"].as_str(), b[0]["remaining"].as_str()),
        (Some("1"), Some("0.5"))
    );

    // The audit log verifies, on the store and offline.
    assert!(env.ok(&["audit", "verify"]).contains("intact"));
    let log = env.ok(&["audit", "log", "--format", "json"]);
    for kind in [
        "dataset_registered",
        "policy_set",
        "job_submitted",
        "job_started",
        "job_finished",
        "release_created",
    ] {
        assert!(
            log.contains(&format!("\"kind\":\"{kind}\"")),
            "missing {kind}"
        );
    }
    // Data values as values: `1300` as a token of its own, not inside the log's hex hashes and
    // salts (where four digits turn up by chance).
    let has_token = |t: &str| {
        log.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| w == t)
    };
    assert!(
        !log.contains("900-00-") && !has_token("1300"),
        "the log must not contain data"
    );
}

#[test]
fn over_budget_is_refused_before_running_and_changes_no_budget() {
    let env = Env::new();
    env.setup("auto");
    assert!(
        env.submit_manifest("a.toml", &income_manifest(1.0))
            .status
            .success()
    );
    let before = env.ok(&["--as", CONSUMER, "budget", "--format", "json"]);
    // 1.0 spent of 1.5: a second ε = 1.0 job must be refused.
    let out = env.submit_manifest("b.toml", &income_manifest(1.0));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("only ε = 0.5 of 1.5 remains"), "{err}");
    let job = "job-000002";
    assert_eq!(
        env.ok(&["--as", CONSUMER, "job", "status", job]).trim(),
        format!("{job} refused (budget)")
    );
    assert_eq!(
        env.ok(&["--as", CONSUMER, "budget", "--format", "json"]),
        before
    );
    let res = env.veil(&["--as", CONSUMER, "job", "result", job]);
    assert!(!res.status.success() && res.stdout.is_empty());
    let log = env.ok(&["audit", "log", "--format", "json"]);
    assert!(
        log.contains("\"kind\":\"job_refused\"")
            && !log.contains(&format!("\"kind\":\"job_started\",\"job\":\"{job}\""))
    );
    // A job above the per-job cap is refused too, also before running.
    let out = env.submit_manifest("c.toml", &income_manifest(1.2));
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("caps each job"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn manual_approval_flow_and_holder_only_logs() {
    let env = Env::new();
    env.setup("manual");
    let out = env.submit_manifest("m.toml", &income_manifest(0.5));
    assert!(out.status.success());
    let job = text(&out.stdout).trim().to_owned();
    assert!(
        env.ok(&["--as", CONSUMER, "job", "status", &job])
            .contains("awaiting_approval")
    );
    // Nothing charged while waiting.
    assert!(env.ok(&["--as", CONSUMER, "budget"]).contains(" 0 "));
    // The holder sees module hash, manifest and ε.
    let show = env.ok(&["--as", HOLDER, "job", "show", &job]);
    assert!(
        show.contains("module sha256")
            && show.contains("requested ε    0.5")
            && show.contains("weekly_income"),
        "{show}"
    );
    // The consumer cannot approve their own job, nor can a stranger.
    assert!(
        !env.veil(&["--as", CONSUMER, "job", "approve", &job])
            .status
            .success()
    );
    assert!(
        !env.veil(&["--as", "mallory", "job", "approve", &job])
            .status
            .success()
    );
    assert!(
        env.ok(&["--as", HOLDER, "job", "approve", &job])
            .contains("released")
    );
    assert!(
        env.ok(&["--as", CONSUMER, "job", "status", &job])
            .contains("released")
    );

    // Logs are for the holder only.
    let logs = env.ok(&["--as", HOLDER, "job", "logs", &job]);
    assert!(logs.contains("gate: 402 units"), "{logs}");
    assert!(
        !env.veil(&["--as", CONSUMER, "job", "logs", &job])
            .status
            .success()
    );

    // A rejected job is never run or charged.
    let job2 = text(&env.submit_manifest("m2.toml", &income_manifest(0.5)).stdout)
        .trim()
        .to_owned();
    env.ok(&[
        "--as",
        HOLDER,
        "job",
        "reject",
        &job2,
        "--reason",
        "purpose unclear",
    ]);
    assert!(
        env.ok(&["--as", CONSUMER, "job", "status", &job2])
            .contains("rejected")
    );
    let b: Value =
        serde_json::from_str(&env.ok(&["--as", CONSUMER, "budget", "--format", "json"])).unwrap();
    assert_eq!(b[0]["spent"], "0.5");
}

#[test]
fn forbidden_and_unit_columns_never_reach_the_module() {
    let env = Env::new();
    env.setup("auto");
    // Asking for the forbidden column is refused before anything runs.
    let out = env.submit_manifest(
        "f.toml",
        &manifest_for("modules/column_probe.wasm", &["educ", "ssn"], 1, 0.3),
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("`ssn` is forbidden"),
        "{}",
        text(&out.stderr)
    );
    // So is the privacy unit itself.
    let out = env.submit_manifest(
        "u.toml",
        &manifest_for("modules/column_probe.wasm", &["person_id"], 1, 0.3),
    );
    assert_eq!(out.status.code(), Some(3));
    // The probe names the columns it can see in its group key: only the requested, allowed ones.
    let out = env.submit_manifest(
        "p.toml",
        &manifest_for("modules/column_probe.wasm", &["educ", "state"], 1, 0.3),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let job = text(&out.stdout).trim().to_owned();
    let r = result_json(&env, &job);
    let seen: Vec<&str> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["key"][0].as_str().unwrap())
        .collect();
    assert_eq!(seen, ["educ,state"]);
}

#[test]
fn real_census_2000_data_when_shared_material_is_present() {
    let Some(csv) = [
        "../shared/data/census2000.csv",
        "../../shared/data/census2000.csv",
    ]
    .iter()
    .map(std::path::Path::new)
    .find(|p| p.exists()) else {
        eprintln!("skipping: ../shared/data/census2000.csv not present");
        return;
    };
    let env = Env::new();
    env.add_parties();
    env.ok(&[
        "dataset",
        "add",
        csv.to_str().unwrap(),
        "--name",
        "census2000",
        "--as",
        HOLDER,
    ]);
    let policy = r#"consumers = ["researcher"]
approval = "auto"
min_units_per_group = 100
max_groups_per_unit = 1
max_units = 30000
[dp]
epsilon_per_job = 1.0
epsilon_total = 1.0
[columns]
educ = { class = "public", bounds = [0, 20] }
lweekinc = { class = "sensitive", bounds = [0, 10] }
state = { class = "quasi" }
"#;
    let p = env.write("p.toml", policy);
    env.ok(&[
        "--as",
        HOLDER,
        "policy",
        "set",
        "census2000",
        p.to_str().unwrap(),
    ]);
    // Reuse the income module by renaming columns through the manifest? Columns must match; use the
    // probe module to count people per visible column instead, plus a sum of row counts.
    let m = r#"dataset = "census2000"
module = "modules/column_probe.wasm"
columns = ["educ", "lweekinc"]
epsilon = 1.0
fuel_per_unit = 20000
[output]
keys = ["column"]
values = [{ name = "rows", bounds = [0, 1] }]
"#;
    let mp = env.write("m.toml", m);
    let job = env
        .ok(&["--as", CONSUMER, "job", "submit", mp.to_str().unwrap()])
        .trim()
        .to_owned();
    let r = result_json(&env, &job);
    for row in r["rows"].as_array().unwrap() {
        // Each row of the file is a unit: 29,501 people.
        let units = row["units"]["value"].as_f64().unwrap();
        assert!((units - 29_501.0).abs() < 50.0, "{row}");
    }
}

#[test]
fn median_and_quantile_values_come_from_a_noisy_histogram() {
    let env = Env::new();
    env.setup_with_policy(&policy("auto").replace("epsilon_total = 1.5", "epsilon_total = 10.0"));
    // Each person's mean weekly income: high school 700–709, bachelor 1300–1309.
    let with_value = |value: &str| {
        income_manifest(1.0).replace(
            r#"values = [{ name = "weekly_income", bounds = [0, 2000], aggregate = "mean" }]"#,
            &format!("values = [{value}]"),
        )
    };
    let median =
        with_value(r#"{ name = "median_income", bounds = [0, 2000], aggregate = "median" }"#);
    let p90 = with_value(
        r#"{ name = "p90_income", bounds = [0, 2000], aggregate = "quantile", quantile = 0.9 }"#,
    );
    for (manifest, name, q) in [(&median, "median_income", 0.5), (&p90, "p90_income", 0.9)] {
        let out = env.submit_manifest("quantile.toml", manifest);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let job = text(&out.stdout).trim().to_owned();
        let r = result_json(&env, &job);
        let rows = r["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{r}");
        for row in rows {
            // All of a group's units sit in one bin (e.g. [687.5, 718.75) for 700–709), so any
            // quantile interpolates inside it.
            let (lo, hi) = if row["key"][0] == "bachelor" {
                (1281.0, 1313.0)
            } else {
                (687.0, 720.0)
            };
            let v = &row["values"][0];
            assert_eq!(v["name"], name);
            assert!(
                v.get("sum").is_none(),
                "a quantile spends no share on a sum: {v}"
            );
            let cell = &v["quantile"];
            assert_eq!(cell["q"].as_f64(), Some(q));
            // 64 bins over [0, 2000] (2,000,001 grid points of 0.001); each bin count gets noise
            // of scale G·(1+m)/ε = 2.
            assert!(
                (cell["bin_width"].as_f64().unwrap() - 31.250_015_625).abs() < 1e-9,
                "{cell}"
            );
            assert_eq!(cell["noise_scale"].as_f64(), Some(2.0));
            assert_eq!(cell["mechanism"], "discrete Laplace");
            let value = cell["value"].as_f64().unwrap();
            // ~200 units in one bin against noise of scale 2 in 63 others: the estimate stays
            // within a bin of the truth unless the noise sum is wildly off.
            assert!(
                (lo - 32.0..hi + 32.0).contains(&value),
                "{name} = {value}, expected in [{lo}, {hi}]"
            );
        }
        let table = env.ok(&["--as", CONSUMER, "job", "result", &job]);
        assert!(table.contains(&format!("{name} q{q}")), "{table}");
        let csv = env.ok(&["--as", CONSUMER, "job", "result", &job, "--format", "csv"]);
        assert!(
            csv.lines()
                .next()
                .unwrap()
                .contains(&format!("{name}_quantile")),
            "{csv}"
        );
    }
    // A quantile needs its q.
    let bad = env.submit_manifest("bad_quantile.toml", &p90.replace(", quantile = 0.9", ""));
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("needs `quantile = q`"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn rows_beyond_the_policy_cap_are_not_delivered() {
    let env = Env::new();
    // Odd-numbered people have two yearly rows; the policy lets one of them through. (Its
    // max_units makes room for all 603 rows at one per unit, as SQL jobs read every row.)
    env.setup_with_policy(
        &policy("manual")
            .replace(
                "max_groups_per_unit = 1",
                "max_groups_per_unit = 1\nmax_rows_per_unit = 1",
            )
            .replace("max_units = 500", "max_units = 1000"),
    );
    let out = env.submit_manifest("income.toml", &income_manifest(0.5));
    let job = text(&out.stdout).trim().to_owned();
    env.ok(&["--as", HOLDER, "job", "approve", &job]);
    let logs = env.ok(&["--as", HOLDER, "job", "logs", &job]);
    assert!(
        logs.contains("201 units had more than 1 rows"),
        "the holder is told how many units were capped: {logs}"
    );
    // The consumer learns nothing of it.
    let r = result_json(&env, &job);
    assert!(!r.to_string().contains("more than"), "{r}");
    // A cap outside its range is a policy error naming the field.
    let bad = env.write(
        "bad_policy.toml",
        &policy("auto").replace(
            "max_groups_per_unit = 1",
            "max_groups_per_unit = 1\nmax_rows_per_unit = 0",
        ),
    );
    let out = env.veil(&[
        "--as",
        HOLDER,
        "policy",
        "set",
        "people",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("max_rows_per_unit"),
        "{}",
        text(&out.stderr)
    );
}
