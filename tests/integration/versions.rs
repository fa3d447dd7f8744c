//! Dataset versions: `dataset add --replace` registers the next version under the same name with
//! its own commitment and certificate; the policy carries over when it still fits; jobs and
//! receipts record the version they read; `dataset remove` deletes the files and keeps the log.
use serde_json::Value;

use crate::common::*;

fn add(env: &Env, csv: &str, extra: &[&str]) -> std::process::Output {
    let path = env.write("next.csv", csv);
    let mut args = vec![
        "--as",
        HOLDER,
        "dataset",
        "add",
        path.to_str().unwrap(),
        "--name",
        "people",
        "--privacy-unit",
        "person_id",
    ];
    args.extend_from_slice(extra);
    env.veil(&args)
}

fn released_job(env: &Env) -> String {
    let manifest = env.write("job.toml", &income_manifest(0.2));
    env.ok(&[
        "--as",
        CONSUMER,
        "job",
        "submit",
        manifest.to_str().unwrap(),
    ])
    .trim()
    .to_owned()
}

fn receipt(env: &Env, job: &str) -> Value {
    serde_json::from_str(&env.ok(&["--as", CONSUMER, "job", "receipt", job])).unwrap()
}

fn stored_files(env: &Env) -> usize {
    std::fs::read_dir(env.data_dir().join("datasets"))
        .map(|d| d.flatten().count())
        .unwrap_or(0)
}

#[test]
fn a_new_version_keeps_a_fitting_policy_and_jobs_record_the_version_they_read() {
    let env = Env::new();
    env.setup("auto");
    let first = released_job(&env);
    assert!(
        receipt(&env, &first)["facts"]
            .get("dataset_version")
            .is_none(),
        "version 1"
    );

    // Same schema, more people: the policy carries over.
    let more = people_csv() + "999,2023,CA,40,16,1400.00,900-00-0999\n";
    let out = add(&env, &more, &["--replace"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("registered dataset `clinic:people` version 2: 604 rows"),
        "{stdout}"
    );
    assert!(!stdout.contains("must be set again"), "{stdout}");
    let policy = env.ok(&["--as", CONSUMER, "policy", "show", "people"]);
    assert!(policy.starts_with("# policy version 1 "), "{policy}");

    let second = released_job(&env);
    let facts = &receipt(&env, &second)["facts"];
    assert_eq!(facts["dataset_version"], 2, "{facts}");
    assert_ne!(
        facts["dataset_commitment"],
        receipt(&env, &first)["facts"]["dataset_commitment"]
    );
    // The certificate is the new version's, and verifies offline.
    let cert = env.ok(&["--as", HOLDER, "dataset", "certificate", "people"]);
    let cert_json: Value = serde_json::from_str(&cert).unwrap();
    assert_eq!(cert_json["facts"]["version"], 2);
    let cert_path = env.write("cert.json", &cert);
    let key = env.ok(&["keys", "public"]);
    env.ok(&[
        "certificate",
        "verify",
        cert_path.to_str().unwrap(),
        "--public-key",
        key.trim(),
    ]);
    let entry = env.ok(&["audit", "log", "--format", "json"]);
    assert!(entry.contains("\"version\":2"), "{entry}");
    // The catalog shows consumers the version, never the row count.
    let list = env.ok(&["--as", CONSUMER, "dataset", "list", "--format", "json"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["version"], 2);
    assert!(list[0].get("rows").is_none());
}

#[test]
fn a_version_the_policy_no_longer_fits_suspends_it_until_it_is_set_again() {
    let env = Env::new();
    env.setup("auto");
    // Without `weekly_income`, which the policy classifies.
    let csv: String = people_csv()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            format!("{},{},{},{},{},{}\n", f[0], f[1], f[2], f[3], f[4], f[6])
        })
        .collect();
    let out = add(&env, &csv, &["--replace"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("the policy no longer applies and must be set again"),
        "{stdout}"
    );
    assert!(stdout.contains("weekly_income"), "{stdout}");
    let manifest = env.write("job.toml", &income_manifest(0.2));
    let out = env.veil(&["--as", CONSUMER, "job", "check", manifest.to_str().unwrap()]);
    // Without a policy in effect no consumer is admitted, so the dataset answers as unknown.
    assert!(
        text(&out.stderr).contains("no dataset named `people`"),
        "{}",
        text(&out.stderr)
    );
    let log = env.ok(&["audit", "log", "--format", "json"]);
    assert!(log.contains("\"policy_suspended\""), "{log}");
    // Setting a fitting policy again makes the dataset usable.
    let fitting = policy("auto").replace(
        "weekly_income = { class = \"sensitive\", bounds = [0, 10000] }\n",
        "",
    );
    let out = env.set_policy("fitting.toml", &fitting);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = env.ok(&["--as", CONSUMER, "policy", "show", "people"]);
    assert!(shown.starts_with("# policy version 2 "), "{shown}");
}

#[test]
fn replacing_and_adding_say_which_flag_fits() {
    let env = Env::new();
    env.setup("auto");
    let before = env.snapshot();
    let out = add(&env, &people_csv(), &[]);
    assert!(
        text(&out.stderr)
            .contains("already exists (to register a new version of it, add `--replace`)")
    );
    let path = env.write("other.csv", &people_csv());
    let out = env.veil(&[
        "--as",
        HOLDER,
        "dataset",
        "add",
        path.to_str().unwrap(),
        "--name",
        "other",
        "--replace",
    ]);
    assert!(
        text(&out.stderr)
            .contains("no dataset `clinic:other` to replace: register it without --replace"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env.snapshot(), before);
}

#[test]
fn removing_a_dataset_deletes_its_files_refuses_waiting_jobs_and_keeps_the_log() {
    let env = Env::new();
    env.setup("manual");
    let manifest = env.write("job.toml", &income_manifest(0.2));
    let waiting = env.ok(&[
        "--as",
        CONSUMER,
        "job",
        "submit",
        manifest.to_str().unwrap(),
    ]);
    add(
        &env,
        &(people_csv() + "999,2023,CA,40,16,1400.00,900-00-0999\n"),
        &["--replace"],
    );
    assert_eq!(stored_files(&env), 2, "both versions' files");
    let out = env.ok(&["--as", HOLDER, "dataset", "remove", "people"]);
    assert!(
        out.starts_with("removed dataset `people` (2 versions)"),
        "{out}"
    );
    assert_eq!(stored_files(&env), 0, "every version's file is deleted");

    let status = env.ok(&["--as", CONSUMER, "job", "status", waiting.trim()]);
    assert!(status.contains("refused"), "{status}");
    let list = env.ok(&["--as", CONSUMER, "dataset", "list", "--format", "json"]);
    assert_eq!(list.trim(), "[]");
    let out = env.veil(&[
        "--as",
        CONSUMER,
        "job",
        "submit",
        manifest.to_str().unwrap(),
    ]);
    assert!(
        text(&out.stderr).contains("no dataset"),
        "{}",
        text(&out.stderr)
    );
    let log = env.ok(&["audit", "log", "--format", "json"]);
    assert!(log.contains("\"dataset_removed\""), "{log}");
    assert!(
        log.contains("\"dataset_registered\""),
        "the registration stays in the log"
    );
    env.ok(&["audit", "verify"]);
    // The name stays taken; another holder may not remove what it does not own.
    let out = add(&env, &people_csv(), &[]);
    assert!(
        text(&out.stderr).contains("was removed; its name stays taken"),
        "{}",
        text(&out.stderr)
    );
}

/// Remote mode: the same replacement and removal over HTTP.
#[test]
fn versions_and_removal_work_the_same_over_http() {
    let env = Env::new();
    env.setup("auto");
    let holder = token_for(&env, HOLDER, "holder");
    let server = Server::start(&env.data_dir(), &[]);
    let remote = |args: &[&str]| {
        std::process::Command::new(veil_bin())
            .args(["--server", &server.url()])
            .args(args)
            .env("VEIL_TOKEN", &holder)
            .env_remove("VEIL_DATA_DIR")
            .current_dir(env.path())
            .output()
            .unwrap()
    };
    let path = env.write("next.csv", &people_csv());
    let path = path.to_str().unwrap();
    let out = remote(&[
        "dataset",
        "add",
        path,
        "--name",
        "people",
        "--privacy-unit",
        "person_id",
        "--replace",
    ]);
    assert!(
        text(&out.stdout).starts_with("registered dataset `clinic:people` version 2"),
        "{}",
        text(&out.stderr)
    );
    let out = remote(&[
        "dataset",
        "add",
        path,
        "--name",
        "people",
        "--privacy-unit",
        "person_id",
    ]);
    assert!(
        text(&out.stderr).contains("add `--replace`"),
        "{}",
        text(&out.stderr)
    );
    let out = remote(&["dataset", "remove", "people"]);
    assert!(
        text(&out.stdout).starts_with("removed dataset `people` (2 versions)"),
        "{}",
        text(&out.stderr)
    );
    let out = remote(&["dataset", "remove", "people"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no dataset"),
        "{}",
        text(&out.stderr)
    );
}

/// SQL jobs read every row and are scheduled for `max_units × max_rows_per_unit` rows: a policy
/// under which the dataset has more is refused (it would make SQL jobs release late, a timing
/// channel), saying which value fits, and changes nothing.
#[test]
fn a_policy_must_schedule_for_every_row() {
    let env = Env::new();
    env.setup("auto");
    let before = env.snapshot();
    // 603 rows of 402 people; 500 units of one row each are too few rows.
    let tight = policy("auto").replace("max_units = 500", "max_units = 500\nmax_rows_per_unit = 1");
    let out = env.set_policy("tight.toml", &tight);
    assert!(!out.status.success());
    let msg = text(&out.stderr);
    assert!(
        msg.contains("has 603 rows") && msg.contains("max_rows_per_unit to at least 2"),
        "{msg}"
    );
    assert_eq!(env.snapshot(), before, "a refused policy changes nothing");
    let fitting = tight.replace("max_rows_per_unit = 1", "max_rows_per_unit = 2");
    let out = env.set_policy("fitting.toml", &fitting);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
