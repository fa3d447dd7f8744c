//! Store migrations by `PRAGMA user_version`: a store of every earlier schema version (a fixture
//! under `tests/fixtures/`) opens with the current code, reaches the current version, and keeps
//! every dataset, policy, job, budget line and audit entry.
use std::path::Path;

use serde_json::Value;

use crate::common::*;

/// The schema version the current code writes (`veil-engine`'s `store.rs`).
const CURRENT: u32 = 7;

/// A copy of the fixture store of `version` as the env's data directory.
fn env_with_fixture(version: u32) -> Env {
    let env = Env::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/store-v{version}"));
    copy_dir(&fixture, &env.data_dir());
    for file in ["veil.db", "keys", "datasets"] {
        assert!(env.data_dir().join(file).exists(), "fixture lacks {file}");
    }
    use std::os::unix::fs::PermissionsExt as _;
    let key = env.data_dir().join("keys/audit-signing.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    env
}

fn user_version(env: &Env) -> u32 {
    let conn = rusqlite::Connection::open(env.data_dir().join("veil.db")).unwrap();
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

#[test]
fn a_store_of_schema_version_0_migrates_and_keeps_everything() {
    let env = env_with_fixture(0);
    assert_eq!(user_version(&env), 0);
    // Opening migrates: the dataset now has its owner-scoped id everywhere.
    let listing: Value =
        serde_json::from_str(&env.ok(&["dataset", "list", "--format", "json"])).unwrap();
    assert_eq!(listing[0]["name"], "clinic:people", "{listing}");
    assert_eq!(user_version(&env), CURRENT);
    // Opening again changes nothing.
    env.ok(&["dataset", "list"]);
    assert_eq!(user_version(&env), CURRENT);

    // The log still verifies, with its entries signed under the old names.
    assert!(env.ok(&["audit", "verify"]).contains("audit log intact"));
    // The certificate finds the registration made under the bare name.
    let cert = env.write("cert.json", "");
    env.ok(&[
        "--as",
        HOLDER,
        "dataset",
        "certificate",
        "people",
        "--out",
        cert.to_str().unwrap(),
    ]);
    let key = env.ok(&["keys", "public"]);
    let verdict = env.ok(&[
        "certificate",
        "verify",
        cert.to_str().unwrap(),
        "--public-key",
        key.trim(),
    ]);
    assert!(verdict.contains("certificate holds"), "{verdict}");

    // The consumer's released job, its result, receipt and budget line are all there.
    let status = env.ok(&["--as", CONSUMER, "job", "status", "job-000001"]);
    assert!(status.contains("released"), "{status}");
    let result = env.ok(&[
        "--as",
        CONSUMER,
        "job",
        "result",
        "job-000001",
        "--format",
        "json",
    ]);
    serde_json::from_str::<Value>(&result).unwrap();
    env.ok(&["--as", CONSUMER, "job", "receipt", "job-000001"]);
    let budget: Value =
        serde_json::from_str(&env.ok(&["--as", CONSUMER, "budget", "--format", "json"])).unwrap();
    assert_eq!(
        (&budget[0]["dataset"], &budget[0]["spent"]),
        (&"clinic:people".into(), &"1".into()),
        "{budget}"
    );

    // New work goes on: a new policy version and a new job under the short name.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/store-v0");
    let policy = std::fs::read_to_string(fixture.join("policy.toml")).unwrap();
    let set = env.set_policy("policy.toml", &policy);
    assert!(set.status.success(), "{}", text(&set.stderr));
    let job = std::fs::read_to_string(fixture.join("job.toml"))
        .unwrap()
        .replace(
            "income_by_education.wasm",
            env.path()
                .join("modules/income_by_education.wasm")
                .to_str()
                .unwrap(),
        );
    let job = env.write("job.toml", &job);
    let submitted = env.ok(&["--as", CONSUMER, "job", "submit", job.to_str().unwrap()]);
    assert_eq!(submitted.trim(), "job-000002");
}

#[test]
fn a_store_written_by_a_newer_veil_is_refused_and_left_alone() {
    let env = env_with_fixture(0);
    env.ok(&["dataset", "list"]);
    let db = env.data_dir().join("veil.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", CURRENT + 1)
        .unwrap();
    let before = std::fs::read(&db).unwrap();
    let out = env.veil(&["dataset", "list"]);
    assert!(!out.status.success());
    let msg = text(&out.stderr);
    assert!(msg.contains("newer Veil"), "{msg}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
}
