//! Bad input gets a clear error and changes nothing (SECURITY.md, invariant 5).
use crate::common::*;

#[test]
fn malformed_datasets_are_rejected_without_trace() {
    let env = Env::new();
    env.setup("auto");
    let before = env.snapshot();
    let cases: &[(&str, &str, &[&str], &str)] = &[
        (
            "ragged.csv",
            "a,b\n1,2\n3,4,5\n",
            &[],
            "record 3 has 3 fields",
        ),
        ("empty.csv", "", &[], "empty"),
        ("header.csv", "a,b\n", &[], "no rows"),
        (
            "ok.csv",
            "a,b\n1,2\n",
            &["--privacy-unit", "c"],
            "privacy unit `c`",
        ),
        (
            "nohdr.csv",
            "1,2\n",
            &["--columns", "x"],
            "--columns names 1",
        ),
    ];
    for (name, contents, extra, expect) in cases {
        let path = env.write(name, contents);
        let mut args = vec![
            "dataset",
            "add",
            path.to_str().unwrap(),
            "--name",
            "other",
            "--as",
            HOLDER,
        ];
        args.extend_from_slice(extra);
        let out = env.veil(&args);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(
            text(&out.stderr).contains(expect),
            "{name}: {}",
            text(&out.stderr)
        );
        assert_eq!(env.snapshot(), before, "{name} changed the store");
    }
    // A duplicate name.
    let dup = env.write("dup.csv", "a,b\n1,2\n");
    let out = env.veil(&[
        "dataset",
        "add",
        dup.to_str().unwrap(),
        "--name",
        "people",
        "--as",
        HOLDER,
    ]);
    assert!(text(&out.stderr).contains("already exists"));
    assert_eq!(env.snapshot(), before);
    // A header-less file with names given works.
    let nohdr = env.write("nohdr2.csv", "1,2\n3,4\n");
    env.ok(&[
        "dataset",
        "add",
        nohdr.to_str().unwrap(),
        "--name",
        "pairs",
        "--as",
        HOLDER,
        "--columns",
        "x,y",
    ]);
    assert!(env.ok(&["dataset", "list"]).contains("x: Int64, y: Int64"));
}

#[test]
fn malformed_policies_are_rejected_with_line_and_field() {
    let env = Env::new();
    env.setup("auto");
    let before = env.snapshot();
    let good = policy("auto");
    let cases = [
        (
            good.replace("approval = \"auto\"", "approval = \"maybe\""),
            "line 3, field `approval`",
        ),
        (
            good.replace("epsilon_total = 1.5", "epsilon_total = 0.5"),
            "exceeds dp.epsilon_total",
        ),
        (
            good.replace(
                "ssn = { class = \"forbidden\" }",
                "ssn = { class = \"secret\" }",
            ),
            "columns.ssn.class",
        ),
        (
            good.replace("bounds = [0, 10000]", "bounds = [10000, 0]"),
            "columns.weekly_income.bounds",
        ),
        (good.replace("year =", "yaer ="), "no column `yaer`"),
        (good.replace("[dp]", "[dp"), "not valid"),
    ];
    for (text_, expect) in &cases {
        let p = env.write("bad-policy.toml", text_);
        let out = env.veil(&[
            "--as",
            HOLDER,
            "policy",
            "set",
            "people",
            p.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains(expect),
            "{expect}: {}",
            text(&out.stderr)
        );
        assert_eq!(env.snapshot(), before);
    }
    // Only the owner may set a policy: a consumer is refused by its role, and to another holder the
    // dataset answers like a missing one (the same answers the server gives).
    let p = env.write("p.toml", &good);
    let set_as =
        |who: &str| env.veil(&["--as", who, "policy", "set", "people", p.to_str().unwrap()]);
    let out = set_as(CONSUMER);
    assert!(
        text(&out.stderr).contains("this needs the role holder"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env.snapshot(), before);
    env.ok(&["admin", "add-principal", "other-clinic", "--role", "holder"]);
    let before = env.snapshot();
    let out = set_as("other-clinic");
    assert!(
        text(&out.stderr).contains("no dataset named `people`"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env.snapshot(), before);
}

#[test]
fn malformed_manifests_and_modules_are_rejected_without_trace() {
    let env = Env::new();
    env.setup("auto");
    std::fs::write(
        env.path().join("modules/garbage.wasm"),
        b"\0asm\x01\0\0\0garbage",
    )
    .unwrap();
    let before = env.snapshot();
    let good = income_manifest(0.5);
    let cases = [
        (
            good.replace("epsilon = 0.5", "epsilon = -1"),
            "field `epsilon`",
        ),
        (
            good.replace("aggregate = \"mean\"", "aggregate = \"mode\""),
            "output.values[0].aggregate",
        ),
        (
            good.replace("dataset = \"people\"", "dataset = \"nobody\""),
            "no dataset named `nobody`",
        ),
        (
            good.replace("income_by_education.wasm", "missing.wasm"),
            "cannot read module",
        ),
        (
            good.replace("income_by_education.wasm", "garbage.wasm"),
            "module rejected",
        ),
        (good.replace("[output]", "[outptu]"), "not valid"),
    ];
    for (text_, expect) in &cases {
        let m = env.write("bad.toml", text_);
        let out = env.veil(&["--as", CONSUMER, "job", "submit", m.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{expect}");
        assert!(
            text(&out.stderr).contains(expect),
            "{expect}: {}",
            text(&out.stderr)
        );
        assert_eq!(env.snapshot(), before, "{expect}");
    }
}

#[test]
fn a_headerless_padded_csv_is_refused_until_named_then_registers_typed() {
    let env = Env::new();
    env.add_parties();
    let adult =
        "39, State-gov, 77516, Bachelors\n50, ?, 83311, Bachelors\n38, Private, 215646, HS-grad\n";
    let path = env.write("adult.data", adult);
    let path = path.to_str().unwrap();
    let before = env.snapshot();
    let out = env.veil(&["--as", HOLDER, "dataset", "add", path, "--name", "adult"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("looks like data") && err.contains("--columns"),
        "{err}"
    );
    assert_eq!(env.snapshot(), before, "a refused file changes nothing");
    let cols = "age,workclass,fnlwgt,education";
    let out = env.ok(&[
        "--as",
        HOLDER,
        "dataset",
        "add",
        path,
        "--name",
        "adult",
        "--columns",
        cols,
    ]);
    assert!(
        out.contains("registered dataset `clinic:adult`: 3 rows"),
        "{out}"
    );
    // The report: numbers typed as numbers, `?` a null, padding trimmed.
    assert!(
        out.contains("age") && out.contains("Int64") && out.contains("range=[38, 50]"),
        "{out}"
    );
    assert!(
        out.contains("nulls=1") && out.contains("padded=3 (trimmed)"),
        "{out}"
    );
    let listing = env.ok(&["--as", HOLDER, "dataset", "list", "--format", "json"]);
    assert!(listing.contains("\"type\": \"Int64\""), "{listing}");
}
