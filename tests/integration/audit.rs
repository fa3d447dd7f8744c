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
        text(&out.stdout).contains("entry 3:"),
        "{}",
        text(&out.stdout)
    );
}

/// Edits the stored line of entry 3 (the dataset's registration, after the key and the two
/// parties' creation) using the sqlite3 shell if present, else Python's sqlite3.
fn rusqlite_free_edit(db: &std::path::Path) -> bool {
    let sql = "UPDATE audit_log SET line = replace(line, '\"owner\":\"clinic\"', '\"owner\":\"mallory\"') WHERE idx = 3;";
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

/// Runs `veil audit verify-proof` on `proof` (JSON text); returns the exit code and output.
fn verify_proof(env: &Env, proof: &str, key: &str, old: Option<&std::path::Path>) -> (i32, String) {
    let path = env.path().join("proof.json");
    std::fs::write(&path, proof).unwrap();
    let mut args = vec![
        "audit",
        "verify-proof",
        "--proof",
        path.to_str().unwrap(),
        "--public-key",
        key,
    ];
    if let Some(old) = old {
        args.extend(["--old-checkpoint", old.to_str().unwrap()]);
    }
    let out = env.veil(&args);
    (
        out.status.code().unwrap(),
        text(&out.stdout) + &text(&out.stderr),
    )
}

#[test]
fn inclusion_proofs_verify_offline_and_tampered_ones_fail() {
    let env = Env::new();
    let (lines, key) = exported(&env);
    let entries = lines.len() - 1; // the last line is the checkpoint
    for (i, line) in lines.iter().enumerate().take(entries) {
        let proof = env.ok(&["audit", "prove", "--entry", &i.to_string()]);
        let (code, msg) = verify_proof(&env, &proof, &key, None);
        assert_eq!(code, 0, "entry {i}: {msg}");
        assert!(
            msg.contains(&format!("entry {i} is in the signed log")),
            "{msg}"
        );
        // The operator's proof carries the entry exactly as exported, beside its public part.
        let v: serde_json::Value = serde_json::from_str(&proof).unwrap();
        assert_eq!(v["full"].as_str().unwrap(), line);
        let full: veil_audit::Entry = serde_json::from_str(line).unwrap();
        assert_eq!(v["entry"].as_str().unwrap(), full.public().to_line());
    }
    // Against an earlier tree size too.
    let proof = env.ok(&["audit", "prove", "--entry", "1", "--size", "3"]);
    assert!(
        verify_proof(&env, &proof, &key, None)
            .1
            .contains("log of 3 entries")
    );

    let proof = env.ok(&["audit", "prove", "--entry", "2"]);
    let mut v: serde_json::Value = serde_json::from_str(&proof).unwrap();
    // An edited entry, a wrong index, a broken path, another domain's key: each fails, named.
    let mut edited = v.clone();
    let line = edited["entry"]
        .as_str()
        .unwrap()
        .replacen("\"v\":2", "\"v\":3", 1);
    edited["entry"] = line.into();
    let (code, msg) = verify_proof(&env, &edited.to_string(), &key, None);
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("entry 2"), "{msg}");
    // A sealed field of the full entry changed: it no longer opens the proven commitment.
    let mut sealed = v.clone();
    let full = sealed["full"].as_str().unwrap().to_owned();
    let recorded = full.split("\"recorded_at\":\"").nth(1).unwrap()[..4].to_owned();
    sealed["full"] = full
        .replacen(
            &format!("\"recorded_at\":\"{recorded}"),
            "\"recorded_at\":\"1999",
            1,
        )
        .into();
    let (code, msg) = verify_proof(&env, &sealed.to_string(), &key, None);
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("sealed"), "{msg}");
    let mut moved = v.clone();
    moved["index"] = 3.into();
    assert_eq!(verify_proof(&env, &moved.to_string(), &key, None).0, 1);
    if let Some(first) = v["path"].as_array_mut().and_then(|p| p.first_mut()) {
        *first = "00".repeat(32).into();
        let (code, msg) = verify_proof(&env, &v.to_string(), &key, None);
        assert_eq!(code, 1);
        assert!(msg.contains("does not lead to the checkpoint"), "{msg}");
    }
    let other = Env::new();
    other.ok(&["init"]);
    let other_key = other.ok(&["keys", "public"]).trim().to_owned();
    assert_eq!(verify_proof(&env, &proof, &other_key, None).0, 1);
}

#[test]
fn consistency_proofs_show_growth_and_expose_a_forked_log() {
    let env = Env::new();
    let (_, key) = exported(&env);
    // Reviewer A keeps the checkpoint they saw.
    let seen = env.path().join("seen-by-a.note");
    env.ok(&["audit", "checkpoint", "--out", seen.to_str().unwrap()]);
    let seen_size: u64 = std::fs::read_to_string(&seen)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();

    // The operator forks the store: one copy goes on honestly, the other rewrites history from a
    // point before A's checkpoint (here: it drops the last job and runs a different one).
    let fork = Env::new();
    let fork_dir = fork.data_dir();
    std::fs::remove_dir_all(&fork_dir).ok();
    copy_dir(&env.data_dir(), &fork_dir);

    let m = env.write("more.toml", &income_manifest(0.25));
    env.ok(&["--as", CONSUMER, "job", "submit", m.to_str().unwrap()]);
    // Honest growth: the proof from A's size holds against A's own checkpoint.
    let proof = env.ok(&["audit", "prove", "--from", &seen_size.to_string()]);
    let (code, msg) = verify_proof(&env, &proof, &key, Some(&seen));
    assert_eq!(code, 0, "{msg}");
    assert!(
        msg.contains(&format!("extends the one of {seen_size}")),
        "{msg}"
    );

    // The fork: the copy (key included, as an operator has it) drops its last two entries in
    // SQLite, so its history differs inside A's checkpoint from then on.
    let db = fork_dir.join("veil.db");
    let conn_ok = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; c = sqlite3.connect('{}'); \
             c.execute(\"DELETE FROM audit_log WHERE idx >= {}\"); c.commit()",
            db.display(),
            seen_size - 2
        ))
        .status()
        .unwrap()
        .success();
    assert!(conn_ok);
    // The forked store appends its own, validly signed, different entries.
    let m2 = fork.write("other.toml", &income_manifest(0.25));
    fork.ok(&["--as", CONSUMER, "job", "submit", m2.to_str().unwrap()]);
    // B reviews the fork: its log verifies on its own...
    assert!(fork.ok(&["audit", "verify"]).contains("intact"));
    // ...but when A and B compare, the fork cannot prove it extends what A saw.
    let forked_proof = fork.ok(&["audit", "prove", "--from", &seen_size.to_string()]);
    let (code, msg) = verify_proof(&fork, &forked_proof, &key, Some(&seen));
    assert_eq!(code, 1, "a forked log must not pass: {msg}");
    assert!(msg.contains("NOT an extension"), "{msg}");
    // Bad sizes are clear errors.
    let out = env.veil(&["audit", "prove", "--from", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("a proof needs a size"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn job_receipts_verify_offline_and_bind_what_ran() {
    let env = Env::new();
    env.setup("auto");
    let m = env.write("m.toml", &income_manifest(0.5));
    let job = env.ok(&["--as", CONSUMER, "job", "submit", m.to_str().unwrap()]);
    let job = job.trim();
    let key = env.ok(&["keys", "public"]).trim().to_owned();
    let path = env.path().join("receipt.json");
    env.ok(&[
        "--as",
        CONSUMER,
        "job",
        "receipt",
        job,
        "--out",
        path.to_str().unwrap(),
    ]);
    let verify = |text: &str| {
        let p = env.path().join("check.json");
        std::fs::write(&p, text).unwrap();
        let out = env.veil(&[
            "receipt",
            "verify",
            p.to_str().unwrap(),
            "--public-key",
            &key,
        ]);
        (out.status.code().unwrap(), text_of(&out))
    };
    let original = std::fs::read_to_string(&path).unwrap();
    let (code, msg) = verify(&original);
    assert_eq!(code, 0, "{msg}");
    assert!(
        msg.contains(&format!("job {job} by {CONSUMER}")) && msg.contains("ε = 0.5"),
        "{msg}"
    );

    // The receipt binds what the log says: the module, the dataset version, the charge, the result.
    let r: serde_json::Value = serde_json::from_str(&original).unwrap();
    let module_file = std::fs::read(env.path().join("modules/income_by_education.wasm")).unwrap();
    assert_eq!(
        r["facts"]["module_hash"],
        veil_audit::sha256_hex(&module_file)
    );
    assert_eq!(r["facts"]["epsilon_micro"], 500_000);
    let result_json = env.ok(&["--as", CONSUMER, "job", "result", job, "--format", "json"]);
    let shown: serde_json::Value = serde_json::from_str(&result_json).unwrap();
    let carried: serde_json::Value = serde_json::from_str(r["result"].as_str().unwrap()).unwrap();
    assert_eq!(shown, carried, "the receipt carries the released result");

    // Any change is caught: a fact (signature), the result, a swapped proof.
    for (pointer, value) in [
        ("/facts/epsilon_micro", serde_json::json!(1)),
        ("/facts/module_hash", serde_json::json!("00".repeat(32))),
        ("/result", serde_json::json!("{}")),
    ] {
        let mut t = r.clone();
        *t.pointer_mut(pointer).unwrap() = value;
        let (code, msg) = verify(&t.to_string());
        assert_eq!(code, 1, "{pointer}: {msg}");
    }
    let mut swapped = r.clone();
    let proofs = swapped["proofs"].as_array_mut().unwrap();
    proofs.swap(0, 2);
    let (code, msg) = verify(&swapped.to_string());
    assert_eq!(code, 1);
    assert!(msg.contains("disagrees with the receipt"), "{msg}");
    // Only the job's consumer gets a receipt.
    let out = env.veil(&["--as", "someone-else", "job", "receipt", job]);
    assert_ne!(out.status.code(), Some(0));
}

fn text_of(out: &std::process::Output) -> String {
    text(&out.stdout) + &text(&out.stderr)
}

#[test]
fn registration_certificates_verify_offline_for_the_owner_only() {
    let env = Env::new();
    env.setup("auto");
    let key = env.ok(&["keys", "public"]).trim().to_owned();
    let path = env.path().join("cert.json");
    env.ok(&[
        "--as",
        HOLDER,
        "dataset",
        "certificate",
        "people",
        "--out",
        path.to_str().unwrap(),
    ]);
    let out = env.veil(&[
        "certificate",
        "verify",
        path.to_str().unwrap(),
        "--public-key",
        &key,
    ]);
    let msg = text_of(&out);
    assert_eq!(out.status.code(), Some(0), "{msg}");
    let listing: serde_json::Value =
        serde_json::from_str(&env.ok(&["dataset", "list", "--format", "json"])).unwrap();
    let content = listing[0]["content_commitment"].as_str().unwrap();
    assert!(
        msg.contains(&format!("dataset {HOLDER}:people registered")) && msg.contains(content),
        "{msg}"
    );

    // A changed fact fails.
    let mut cert: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cert["facts"]["rows"] = 1.into();
    std::fs::write(&path, cert.to_string()).unwrap();
    let out = env.veil(&[
        "certificate",
        "verify",
        path.to_str().unwrap(),
        "--public-key",
        &key,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text_of(&out));
    // Someone other than the owner gets none.
    let out = env.veil(&["--as", CONSUMER, "dataset", "certificate", "people"]);
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn reviewer_filters_and_summary_flag_what_deserves_a_look() {
    let env = Env::new();
    env.setup("auto");
    let submit = |eps: f64| {
        let m = env.write("job.toml", &income_manifest(eps));
        env.veil(&["--as", CONSUMER, "job", "submit", m.to_str().unwrap()])
    };
    assert!(submit(1.0).status.success());
    assert!(submit(0.4).status.success()); // 1.4 of 1.5: nearly spent
    // Five refusals in a burst, the same manifest each time with the module file swapped (for
    // modules that do not declare other columns than the manifest delivers).
    let modules = env.path().join("modules");
    let variants = ["leaky.wasm", "column_probe.wasm", "trivial.wasm"];
    for i in 0..5 {
        std::fs::copy(
            modules.join(variants[i % 3]),
            modules.join("income_by_education.wasm"),
        )
        .unwrap();
        assert_eq!(submit(0.5).status.code(), Some(3));
    }

    let summary: serde_json::Value =
        serde_json::from_str(&env.ok(&["audit", "summary", "--format", "json"])).unwrap();
    assert_eq!(summary["jobs_by_outcome"]["released"], 2, "{summary}");
    assert_eq!(summary["jobs_by_outcome"]["refused"], 5, "{summary}");
    let spend = &summary["spending"][0];
    assert_eq!(
        (
            spend["spent_micro"].as_u64(),
            spend["jobs_started"].as_u64()
        ),
        (Some(1_400_000), Some(2))
    );
    assert_eq!(spend["over_time"].as_array().unwrap().len(), 2);
    let refusals = summary["refusals"].as_object().unwrap();
    assert_eq!(
        refusals.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        5
    );
    assert!(
        refusals.keys().all(|k| k.starts_with("budget: ")),
        "{refusals:?}"
    );
    let anomalies: Vec<&str> = summary["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        anomalies.iter().any(|a| a.contains("93% of its budget")),
        "{anomalies:?}"
    );
    assert!(
        anomalies
            .iter()
            .any(|a| a.contains("jobs refused within an hour")),
        "{anomalies:?}"
    );
    assert!(
        anomalies
            .iter()
            .any(|a| a.contains("3 different module hashes")),
        "{anomalies:?}"
    );
    let table = env.ok(&["audit", "summary"]);
    assert!(
        table.contains("anomalies:") && table.contains("! "),
        "{table}"
    );

    // Filters.
    let lines = |args: &[&str]| {
        let mut all = vec!["audit", "log", "--format", "json"];
        all.extend_from_slice(args);
        env.ok(&all).lines().count()
    };
    assert_eq!(lines(&["--decision", "refused"]), 5);
    assert_eq!(
        lines(&["--decision", "released", "--consumer", CONSUMER]),
        2
    );
    assert_eq!(lines(&["--consumer", "nobody"]), 0);
    assert_eq!(lines(&["--since", "2999-01-01"]), 0);
    let all = lines(&[]);
    assert_eq!(lines(&["--since", "2000-01-01"]), all);
    let people = lines(&["--dataset", "people"]);
    // Registration, policy and the seven jobs' entries concern `people`; key events do not.
    assert!(people >= 2 + 7 && people <= all, "{people} of {all}");
    assert_eq!(lines(&["--dataset", "elsewhere"]), 0);
    let trivial = veil_audit::sha256_hex(&std::fs::read(modules.join("trivial.wasm")).unwrap());
    // The trivial module was in one refused submission (i = 2): submitted + refused.
    assert_eq!(lines(&["--module", &trivial]), 2);
    let out = env.veil(&["audit", "log", "--decision", "maybe"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "usage error for an unknown decision"
    );
}

/// Every way of changing one value in an entry.
fn mutations(value: &serde_json::Value) -> Vec<serde_json::Value> {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            let mut changed = s.clone();
            match changed.pop() {
                Some(c) => changed.push(if c == '0' { '1' } else { '0' }),
                None => changed.push('x'),
            }
            vec![Value::String(changed)]
        }
        Value::Number(n) => vec![serde_json::json!(n.as_u64().map_or(1, |x| x + 1))],
        Value::Bool(b) => vec![Value::Bool(!b)],
        Value::Null => vec![Value::String("x".into())],
        _ => vec![],
    }
}

#[test]
fn tamper_suite_every_field_of_every_entry_and_the_checkpoint() {
    let env = Env::new();
    let (lines, key) = exported(&env);
    let entries = lines.len() - 1;
    let mut cases = 0;
    for (i, line) in lines.iter().enumerate().take(entries) {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        // Top-level fields and every field of the event.
        let mut pointers: Vec<String> = entry
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "event")
            .map(|k| format!("/{k}"))
            .collect();
        pointers.extend(
            entry["event"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| format!("/event/{k}")),
        );
        for pointer in pointers {
            for value in mutations(entry.pointer(&pointer).unwrap()) {
                let mut t = entry.clone();
                *t.pointer_mut(&pointer).unwrap() = value;
                let mut changed = lines.clone();
                changed[i] = t.to_string();
                let (code, msg) = verify(&env, &changed, &key);
                assert_eq!(code, Some(1), "entry {i}{pointer} changed: {msg}");
                // The broken entry is named (an edited index names where it was found).
                assert!(
                    msg.contains(&format!("entry {i}")),
                    "entry {i}{pointer}: {msg}"
                );
                cases += 1;
            }
        }
    }
    assert!(cases > 40, "only {cases} mutations");

    // The checkpoint: a replaced signature, another tree size, a checkpoint of another history.
    let cp_line: serde_json::Value = serde_json::from_str(&lines[entries]).unwrap();
    let note = cp_line["checkpoint"].as_str().unwrap();
    let (body, sig) = note.split_once("\n\n").unwrap();
    let forged_sig = sig.replacen(|c: char| c.is_ascii_alphanumeric(), "A", 3);
    let size_line = body.lines().nth(1).unwrap().to_owned();
    let changed_size = body.replacen(
        &format!("\n{size_line}\n"),
        &format!("\n{}\n", entries + 1),
        1,
    );
    for bad_note in [
        format!("{body}\n\n{forged_sig}"),
        format!("{changed_size}\n\n{sig}"),
    ] {
        let mut t = lines.clone();
        t[entries] = serde_json::json!({ "checkpoint": bad_note }).to_string();
        let (code, msg) = verify(&env, &t, &key);
        assert_eq!(code, Some(1), "{msg}");
        assert!(msg.contains("signature"), "{msg}");
    }
    // A forked history: the same key signs a different log; its checkpoint does not fit ours.
    let fork = Env::new();
    let fork_dir = fork.data_dir();
    std::fs::remove_dir_all(&fork_dir).ok();
    copy_dir(&env.data_dir(), &fork_dir);
    let m = fork.write("m2.toml", &income_manifest(0.25));
    fork.ok(&["--as", CONSUMER, "job", "submit", m.to_str().unwrap()]);
    let fork_export = fork.path().join("fork.jsonl");
    fork.ok(&["audit", "export", "--out", fork_export.to_str().unwrap()]);
    let fork_lines: Vec<String> = std::fs::read_to_string(&fork_export)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let mut mixed = lines[..entries].to_vec();
    mixed.push(fork_lines.last().unwrap().clone());
    let (code, msg) = verify(&env, &mixed, &key);
    assert_eq!(code, Some(1));
    assert!(
        msg.contains("truncated") || msg.contains("differs"),
        "{msg}"
    );
}

#[test]
fn key_rotation_hands_over_and_verification_follows_the_chain() {
    let env = Env::new();
    env.setup("auto");
    let first = env.ok(&["keys", "first"]).trim().to_owned();
    assert_eq!(env.ok(&["keys", "public"]).trim(), first);
    let m = env.write("m.toml", &income_manifest(0.5));
    env.ok(&["--as", CONSUMER, "job", "submit", m.to_str().unwrap()]);

    let rotated = env.ok(&["keys", "rotate"]);
    assert!(
        rotated.contains("key fingerprint:      SHA256:"),
        "{rotated}"
    );
    let second = env.ok(&["keys", "public"]).trim().to_owned();
    assert_ne!(second, first);
    assert_eq!(env.ok(&["keys", "first"]).trim(), first);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(env.data_dir().join("keys/audit-signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the new key is private");
        assert!(!env.data_dir().join("keys/audit-signing.key.next").exists());
    }
    // Work goes on under the new key.
    env.ok(&["--as", CONSUMER, "job", "submit", m.to_str().unwrap()]);
    assert!(env.ok(&["audit", "verify"]).contains("intact"));

    let out = env.path().join("audit.jsonl");
    env.ok(&["audit", "export", "--out", out.to_str().unwrap()]);
    let lines: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    // From the first key, the chain verifies; the new key alone cannot vouch for older entries.
    let (code, msg) = verify(&env, &lines, &first);
    assert_eq!(code, Some(0), "{msg}");
    let (code, msg) = verify(&env, &lines, &second);
    assert_eq!(code, Some(1), "{msg}");
    assert!(msg.contains("entry 0"), "{msg}");
    // A hand-over to some other key breaks the hand-over entry's signature, named.
    let i = lines
        .iter()
        .position(|l| l.contains("\"kind\":\"key_rotated\""))
        .unwrap();
    let other = Env::new();
    other.ok(&["init"]);
    let intruder = other.ok(&["keys", "public"]).trim().to_owned();
    let mut forged = lines.clone();
    let mut entry: serde_json::Value = serde_json::from_str(&forged[i]).unwrap();
    entry["event"]["new_public_key"] = intruder.into();
    forged[i] = entry.to_string();
    let (code, msg) = verify(&env, &forged, &first);
    assert_eq!(code, Some(1));
    assert!(msg.contains(&format!("entry {i}")), "{msg}");
    // Proofs of entries from before the rotation verify under the new key's checkpoint.
    let proof = env.ok(&["audit", "prove", "--entry", "1"]);
    let p = env.write("p.json", &proof);
    let out = env.veil(&[
        "audit",
        "verify-proof",
        "--proof",
        p.to_str().unwrap(),
        "--public-key",
        &second,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out));
}

#[test]
fn a_process_holding_a_rotated_key_cannot_sign() {
    let env = Env::new();
    env.setup("auto");
    let config = veil_engine::EngineConfig::builder().workers(1).build();
    let mut stale = veil_engine::Veil::open(&env.data_dir(), config).unwrap();
    env.ok(&["keys", "rotate"]);
    let m = env.write("m.toml", &income_manifest(0.5));
    let err = stale.submit_job(&consumer(), &m).unwrap_err();
    assert!(
        err.to_string().contains("rotated by another process"),
        "{err}"
    );
    // Nothing was written with the old key; the log still verifies.
    assert!(env.ok(&["audit", "verify"]).contains("intact"));
    // A key file left by a rotation that never committed is discarded on the next open.
    let next = env.data_dir().join("keys/audit-signing.key.next");
    std::fs::write(&next, "00".repeat(32)).unwrap();
    let before = env.ok(&["keys", "public"]);
    assert!(!next.exists());
    assert_eq!(env.ok(&["keys", "public"]), before);
}
