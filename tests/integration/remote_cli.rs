//! Remote mode: the same `veil` commands against a server (`--server URL`, `VEIL_TOKEN`) answer as
//! they do on the store (`--as NAME`), and remote mode refuses what only the host may do.
use std::process::{Command, Output};

use crate::common::*;

/// A DP SQL question (docs/sql.md) for the local-and-remote matrix.
const SQL_COUNT: &str = "SELECT educ, COUNT(*) AS n FROM people GROUP BY educ";

fn remote(env: &Env, server: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(veil_bin())
        .args(["--server", &server.url()])
        .args(args)
        .env("VEIL_TOKEN", token)
        .env_remove("VEIL_DATA_DIR")
        .current_dir(env.path())
        .output()
        .expect("run veil")
}

fn remote_ok(env: &Env, server: &Server, token: &str, args: &[&str]) -> String {
    let out = remote(env, server, token, args);
    assert!(
        out.status.success(),
        "veil --server {args:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn remote_commands_answer_like_local_ones() {
    let env = Env::new();
    env.setup("manual");
    let holder = token_for(&env, HOLDER, "holder");
    let consumer = token_for(&env, CONSUMER, "consumer");
    let reviewer = token_for(&env, "rev", "reviewer");
    let admin = token_for(&env, "ops", "admin");
    let server = Server::start(&env.data_dir(), &[]);
    let manifest = env.write("job.toml", &income_manifest(0.5));
    let manifest = manifest.to_str().unwrap();

    // Submit and approve remotely; reject a second one.
    let job = remote_ok(&env, &server, &consumer, &["job", "submit", manifest]);
    let job = job.trim();
    remote_ok(&env, &server, &holder, &["job", "approve", job]);
    let second = remote_ok(&env, &server, &consumer, &["job", "submit", manifest]);
    remote_ok(
        &env,
        &server,
        &holder,
        &["job", "reject", second.trim(), "--reason", "later"],
    );

    // Read-only commands: remote output equals local output, party by party.
    let same: Vec<(&str, &str, Vec<&str>)> = vec![
        (HOLDER, &holder, vec!["dataset", "list", "--format", "json"]),
        (CONSUMER, &consumer, vec!["dataset", "list"]),
        (CONSUMER, &consumer, vec!["policy", "show", "people"]),
        (CONSUMER, &consumer, vec!["budget", "--format", "json"]),
        (
            CONSUMER,
            &consumer,
            vec!["job", "result", job, "--format", "json"],
        ),
        (
            CONSUMER,
            &consumer,
            vec!["job", "result", job, "--format", "csv"],
        ),
        (HOLDER, &holder, vec!["job", "list"]),
        (HOLDER, &holder, vec!["job", "status", job]),
        (HOLDER, &holder, vec!["job", "show", job]),
        (HOLDER, &holder, vec!["job", "logs", job]),
        ("rev", &reviewer, vec!["audit", "log", "--format", "json"]),
        (
            "rev",
            &reviewer,
            vec!["audit", "log", "--decision", "rejected"],
        ),
        (
            "rev",
            &reviewer,
            vec!["audit", "summary", "--format", "json"],
        ),
        ("rev", &reviewer, vec!["keys", "public"]),
        ("rev", &reviewer, vec!["keys", "first"]),
    ];
    for (name, token, args) in &same {
        let mut local_args = vec!["--as", name];
        local_args.extend(args.iter().copied());
        let local = env.ok(&local_args);
        let far = remote_ok(&env, &server, token, args);
        assert_eq!(
            far, local,
            "veil {args:?} differs between remote and local mode"
        );
    }

    // Documents fetched remotely verify offline.
    let receipt = env.path().join("receipt.json");
    remote_ok(
        &env,
        &server,
        &consumer,
        &["job", "receipt", job, "--out", receipt.to_str().unwrap()],
    );
    let key = remote_ok(&env, &server, &consumer, &["keys", "public"]);
    let out = env.ok(&[
        "receipt",
        "verify",
        receipt.to_str().unwrap(),
        "--public-key",
        key.trim(),
    ]);
    assert!(out.starts_with("receipt holds"), "{out}");
    let cert = env.path().join("cert.json");
    remote_ok(
        &env,
        &server,
        &holder,
        &[
            "dataset",
            "certificate",
            "people",
            "--out",
            cert.to_str().unwrap(),
        ],
    );
    let out = env.ok(&[
        "certificate",
        "verify",
        cert.to_str().unwrap(),
        "--public-key",
        key.trim(),
    ]);
    assert!(out.starts_with("certificate holds"), "{out}");
    let proof = env.path().join("proof.json");
    remote_ok(
        &env,
        &server,
        &reviewer,
        &[
            "audit",
            "prove",
            "--from",
            "3",
            "--out",
            proof.to_str().unwrap(),
        ],
    );
    let first = env.ok(&["keys", "first"]);
    let out = env.ok(&[
        "audit",
        "verify-proof",
        "--proof",
        proof.to_str().unwrap(),
        "--public-key",
        first.trim(),
    ]);
    assert!(out.starts_with("proof holds"), "{out}");

    // The consumer's remote status is the coarse one; a rejected job reads `refused (rejected)`.
    let status = remote_ok(&env, &server, &consumer, &["job", "status", second.trim()]);
    assert_eq!(
        status.trim(),
        format!("{} refused (rejected)", second.trim())
    );
    assert_eq!(
        remote_ok(&env, &server, &admin, &["whoami"]).trim(),
        "ops (admin)"
    );

    // Errors carry the server's code; refusals exit 3 like local mode; host-only commands refuse.
    let out = remote(&env, &server, &consumer, &["job", "logs", job]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("(forbidden, HTTP 403)"),
        "{}",
        text(&out.stderr)
    );
    let big = env.write("big.toml", &income_manifest(2.0)); // over the per-job cap
    let out = remote(
        &env,
        &server,
        &consumer,
        &["job", "submit", big.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // The refusal says why, as in local mode, and the job id is still printed.
    assert!(
        text(&out.stderr).contains("caps each job at ε"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).trim().starts_with("job-"));
    let out = remote(&env, &server, &admin, &["keys", "rotate"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("local mode"),
        "{}",
        text(&out.stderr)
    );
    let out = remote(&env, &server, "veil_nonsense", &["whoami"]);
    assert!(
        text(&out.stderr).contains("unauthenticated"),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(veil_bin())
        .args(["--server", &server.url(), "--as", HOLDER, "dataset", "list"])
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("--as is for local mode"),
        "{}",
        text(&out.stderr)
    );
}

/// The commands that work on the store's host only are refused with `--server`, before any
/// request, each with the same message naming them.
#[test]
fn host_only_commands_are_refused_in_remote_mode() {
    let env = Env::new();
    let server = Server::start(&env.data_dir(), &[]);
    for args in [
        vec!["init"],
        vec!["demo"],
        vec!["serve"],
        vec!["keys", "rotate"],
        vec!["audit", "verify"],
    ] {
        let out = remote(&env, &server, "veil_unused", &args);
        assert!(!out.status.success(), "{args:?}");
        let msg = text(&out.stderr);
        assert!(
            msg.contains("works on the store's host only"),
            "{args:?}: {msg}"
        );
    }
}

/// How a cell of the mode matrix is compared.
#[derive(Clone, Copy, PartialEq)]
enum Compare {
    /// Same exit code and the same bytes on stdout (or the same error message).
    Exact,
    /// Same exit code and error message; a success's output carries fresh signatures or times.
    Outcome,
}

/// The error message of a failed command: local mode prints `error: MESSAGE`, remote mode
/// `error: MESSAGE (code, HTTP status)`.
fn message(out: &Output) -> String {
    let line = text(&out.stderr);
    let line = line.trim().strip_prefix("error: ").unwrap_or(line.trim());
    match line.rfind(" (") {
        Some(i) if line.ends_with(')') && line[i..].contains("HTTP ") => line[..i].to_owned(),
        _ => line.to_owned(),
    }
}

/// Every command a principal may try, × every kind of caller, in local mode (`--as NAME` on the
/// store) and remote mode (its token against a server on the same store): the same outcome in
/// each cell — same exit code, same error message, and for deterministic answers the same bytes.
/// The access rules live in the engine (`veil_engine::access`); this is what proves both modes
/// reach them the same way.
#[test]
fn local_and_remote_mode_answer_alike_for_every_command_and_caller() {
    let env = Env::new();
    env.setup("manual");
    let callers = [
        (HOLDER, "holder"),
        ("hospital", "holder"),
        (CONSUMER, "consumer"),
        ("stranger", "consumer"),
        ("rev", "reviewer"),
        ("ops", "admin"),
    ];
    let tokens: Vec<(&str, String)> = callers
        .iter()
        .map(|(name, role)| (*name, token_for(&env, name, role)))
        .collect();
    let manifest = env.write("job.toml", &income_manifest(0.5));
    let manifest = manifest.to_str().unwrap();
    let job = env.ok(&["--as", CONSUMER, "job", "submit", manifest]);
    let job = job.trim().to_owned();
    env.ok(&["--as", HOLDER, "job", "approve", &job]);
    let pending = env.ok(&["--as", CONSUMER, "job", "submit", manifest]);
    let pending = pending.trim().to_owned();
    let policy = env.write("again.toml", &policy("manual"));
    let policy = policy.to_str().unwrap();
    let server = Server::start(&env.data_dir(), &[]);

    use Compare::*;
    let commands: Vec<(Vec<&str>, Compare)> = vec![
        (vec!["dataset", "list", "--format", "json"], Exact),
        (vec!["dataset", "certificate", "people"], Outcome),
        (vec!["policy", "show", "people"], Exact),
        (vec!["job", "status", &job], Exact),
        (vec!["job", "show", &job], Exact),
        (vec!["job", "show", &pending], Exact),
        (vec!["job", "show", "job-999999"], Exact),
        (vec!["job", "list"], Exact),
        (vec!["job", "check", manifest], Exact),
        (
            vec![
                "job",
                "check",
                "--sql",
                SQL_COUNT,
                "--dataset",
                "people",
                "--epsilon",
                "0.5",
            ],
            Exact,
        ),
        (
            vec![
                "job",
                "check",
                "--sql",
                "SELECT * FROM people",
                "--dataset",
                "people",
                "--epsilon",
                "0.5",
            ],
            Exact,
        ),
        (vec!["job", "logs", &job], Exact),
        (vec!["job", "result", &job, "--format", "json"], Exact),
        (vec!["job", "result", &pending], Exact),
        (vec!["job", "receipt", &job], Outcome),
        (vec!["job", "approve", &job], Exact),
        (vec!["job", "reject", &job], Exact),
        (vec!["budget", "--format", "json"], Exact),
        (vec!["audit", "log", "--format", "json"], Exact),
        (vec!["audit", "summary", "--format", "json"], Exact),
        (vec!["audit", "prove", "--entry", "3"], Outcome),
        (vec!["admin", "principals"], Exact),
        (vec!["whoami"], Exact),
    ];
    let mut checked = 0;
    for (name, token) in &tokens {
        let mut cells = commands.clone();
        // Setting a policy succeeds for its owner (and changes the store): try it as the others.
        if *name != HOLDER {
            cells.push((vec!["policy", "set", "people", policy], Exact));
        }
        for (args, compare) in &cells {
            let mut local_args = vec!["--as", name];
            local_args.extend(args.iter().copied());
            let local = env.veil(&local_args);
            let remote = remote(&env, &server, token, args);
            let cell = format!("{args:?} as {name}");
            assert_eq!(
                local.status.code(),
                remote.status.code(),
                "{cell}: {} | {}",
                text(&local.stderr),
                text(&remote.stderr)
            );
            if local.status.success() {
                if *compare == Exact {
                    assert_eq!(text(&local.stdout), text(&remote.stdout), "{cell}");
                }
            } else {
                assert_eq!(message(&local), message(&remote), "{cell}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 6 * commands.len() + 5);
}
