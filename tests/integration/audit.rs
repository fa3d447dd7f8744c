//! The audit log through the binary: export, offline verification, and tampering detected with the
//! first bad entry named.
use crate::common::*;

fn exported(env: &Env) -> (Vec<String>, String) {
    env.setup("auto");
    let m = env.write("m.toml", &income_manifest(0.5));
    env.ok(&["--as", CONSUMER, "job", "submit", m.to_str().unwrap()]);
    let out = env.path().join("audit.jsonl");
    env.ok(&["audit", "export", "--out", out.to_str().unwrap()]);
    let key = env.ok(&["keys", "public"]).trim().to_owned();
    let lines = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    (lines, key)
}

fn verify(env: &Env, lines: &[String], key: &str) -> (Option<i32>, String) {
    let path = env.path().join("tampered.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let out = env.veil(&[
        "audit",
        "verify",
        "--log",
        path.to_str().unwrap(),
        "--public-key",
        key,
    ]);
    (out.status.code(), text(&out.stdout) + &text(&out.stderr))
}

#[test]
fn offline_verification_detects_every_tampering() {
    let env = Env::new();
    let (lines, key) = exported(&env);
    assert!(lines.len() > 7);
    let (code, msg) = verify(&env, &lines, &key);
    assert_eq!(code, Some(0), "{msg}");
    // The key can also come from a file.
    let key_file = env.write("key.pub", &key);
    let (code, _) = verify(&env, &lines, key_file.to_str().unwrap());
    assert_eq!(code, Some(0));

    // A changed field: entry 4 (job submitted) claims a smaller ε.
    let i = lines
        .iter()
        .position(|l| l.contains("\"kind\":\"job_submitted\""))
        .unwrap();
    let mut changed = lines.clone();
    changed[i] = changed[i].replace("\"epsilon_micro\":500000", "\"epsilon_micro\":1");
    assert_ne!(changed[i], lines[i]);
    let (code, msg) = verify(&env, &changed, &key);
    assert_eq!(code, Some(1));
    assert!(
        msg.contains(&format!("entry {i}:")) && msg.contains("altered"),
        "{msg}"
    );

    // A deleted entry.
    let mut deleted = lines.clone();
    deleted.remove(2);
    let (code, msg) = verify(&env, &deleted, &key);
    assert_eq!(code, Some(1));
    assert!(msg.contains("entry 2:") && msg.contains("missing"), "{msg}");

    // Two entries swapped.
    let mut reordered = lines.clone();
    reordered.swap(3, 4);
    let (code, msg) = verify(&env, &reordered, &key);
    assert_eq!(code, Some(1));
    assert!(msg.contains("entry 3:"), "{msg}");

    // The tail cut off (keeping the checkpoint).
    let mut truncated = lines.clone();
    let n = truncated.len();
    truncated.remove(n - 2);
    let (code, msg) = verify(&env, &truncated, &key);
    assert_eq!(code, Some(1));
    assert!(msg.contains("truncated"), "{msg}");

    // Another domain's key does not verify this log.
    let other = Env::new();
    other.ok(&["init"]);
    let other_key = other.ok(&["keys", "public"]).trim().to_owned();
    let (code, _) = verify(&env, &lines, &other_key);
    assert_eq!(code, Some(1));

    // The store's own log still verifies.
    assert!(env.ok(&["audit", "verify"]).contains("intact"));
}

#[test]
fn store_verification_catches_a_row_edited_in_sqlite() {
    let env = Env::new();
    let _ = exported(&env);
    // Someone with write access to the database edits an entry in place.
    let db = rusqlite_free_edit(&env.data_dir().join("veil.db"));
    assert!(db, "could not edit the store");
    let out = env.veil(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("entry 1:"),
        "{}",
        text(&out.stdout)
    );
}

/// Edits the stored line of entry 1 using the sqlite3 shell if present, else Python's sqlite3.
fn rusqlite_free_edit(db: &std::path::Path) -> bool {
    let sql = "UPDATE audit_log SET line = replace(line, '\"owner\":\"clinic\"', '\"owner\":\"mallory\"') WHERE idx = 1;";
    std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute({sql:?}); c.commit()"
            ),
            db.to_str().unwrap(),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
