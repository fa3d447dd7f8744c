//! Noninterference: the guard of SECURITY.md's information-flow inventory.
//!
//! One scripted consumer session — catalog, policy, budget, submit, polls while the job runs,
//! result, receipt, every proof and checkpoint the consumer can fetch, and the error paths it can
//! reach — runs over HTTP against a dataset and against its neighbour (one person added), with the
//! noise CSPRNG seeded identically (a debug-build-only hook) and a hostile module that faults and
//! burns all its fuel only on the added person. Every byte the consumer receives must be the same
//! in both runs except the released noisy cells and the salted commitments (and the hashes and
//! signatures over them), which are uniformly random-looking; times are compared as the schedule
//! they follow (release time minus start time), not as wall-clock instants.
use serde_json::Value;

use crate::common::*;

/// The added person's state: the module looks for it in its input.
const TARGET_STATE: &str = "ZZ";

/// Fields whose values are noise or salted commitments, or hashes and signatures over them.
const MASKED: &[&str] = &[
    "value",
    "ci95",
    "mean",
    "sealed",
    "prev",
    "sig",
    "signature",
    "path",
    "result_hash",
    "content_commitment",
    "dataset_commitment",
    "checkpoint",
    "old_checkpoint",
    "new_checkpoint",
];

/// A module that spins until its fuel is gone on the person whose state is `ZZ`, and contributes
/// `("all", 1)` for everyone else.
fn hostile_module() -> Vec<u8> {
    let (data, ret) = emitting(&[contribution(&["all"], &[1.0])]);
    let body = format!(
        "(local $i i32)
         (block $done
           (loop $scan
             (br_if $done (i32.ge_u (i32.add (local.get $i) (i32.const 1)) (local.get $len)))
             (if (i32.and
                   (i32.eq (i32.load8_u (i32.add (local.get $in) (local.get $i))) (i32.const 90))
                   (i32.eq (i32.load8_u (i32.add (i32.add (local.get $in) (local.get $i)) (i32.const 1)))
                           (i32.const 90)))
               (then (loop $burn (br $burn))))
             (local.set $i (i32.add (local.get $i) (i32.const 1)))
             (br $scan)))
         {ret}"
    );
    wat_module(&data, &body)
}

fn manifest() -> String {
    r#"dataset = "people"
module = "hostile.wasm"
purpose = "noninterference"
columns = ["state"]
epsilon = 0.5
time_budget_ms = 400

[output]
keys = ["k0"]
values = [{ name = "v", bounds = [0, 1], aggregate = "sum" }]
"#
    .into()
}

/// The neighbour: the people dataset with one more person, whose state is `ZZ`.
fn with_target() -> String {
    let mut csv = people_csv();
    csv += &format!("402,2022,{TARGET_STATE},40,12,705.00,900-00-0402\n");
    csv
}

/// Everything the consumer received, in order, as (what, status, body).
type Transcript = Vec<(String, u16, String)>;

/// Runs the consumer's session against `csv`; returns its transcript and the job's scheduled and
/// observed times.
fn session(csv: &str) -> (Transcript, Value) {
    let env = Env::new();
    env.setup_with(csv, &policy("auto"));
    let consumer = token_for(&env, CONSUMER, "consumer");
    let server = Server::start(&env.data_dir(), &[("VEIL_INSECURE_TEST_NOISE_SEED", "7")]);
    let http = Http::new(&server);
    let seen: std::cell::RefCell<Transcript> = Default::default();
    let mut get = |what: &str, path: &str| {
        let (status, body) = http.get(path, Some(&consumer));
        seen.borrow_mut()
            .push((what.to_owned(), status, body.clone()));
        (status, body)
    };
    get("catalog", "/v1/datasets");
    get("dataset", "/v1/datasets/people");
    get("policy", "/v1/datasets/people/policy");
    get("budget before", "/v1/budget");
    get("missing dataset", "/v1/datasets/nope");
    let submitted = http.submit(&consumer, &manifest(), &hostile_module());
    let job = submitted["id"].as_str().unwrap().to_owned();
    seen.borrow_mut()
        .push(("submitted".into(), 201, submitted.to_string()));
    // Poll until the job runs: what a consumer sees while it runs.
    let running = loop {
        let (_, body) = http.get(&format!("/v1/jobs/{job}"), Some(&consumer));
        let view: Value = serde_json::from_str(&body).unwrap();
        if view["state"] == "running" {
            break view;
        }
        assert_eq!(view["state"], "queued", "{view}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    seen.borrow_mut()
        .push(("running".into(), 200, running.to_string()));
    let (_, checkpoint) = get("checkpoint while running", "/v1/audit/checkpoint");
    prove_everything(&mut get, &checkpoint, "while running");
    let (_, done) = get("released", &format!("/v1/jobs/{job}?wait=30"));
    let done: Value = serde_json::from_str(&done).unwrap();
    assert_eq!(done["state"], "released", "{done}");
    get("result", &format!("/v1/jobs/{job}/result"));
    let (_, receipt) = get("receipt", &format!("/v1/jobs/{job}/receipt"));
    get("jobs", "/v1/jobs");
    get("budget after", "/v1/budget");
    let (_, checkpoint) = get("checkpoint", "/v1/audit/checkpoint");
    prove_everything(&mut get, &checkpoint, "after");
    get("consistency", "/v1/audit/proof/consistency?from=1");
    get("logs", &format!("/v1/jobs/{job}/logs"));
    get("audit log", "/v1/audit/log");
    get("export", "/v1/audit/export");
    get("missing job", "/v1/jobs/job-999999");
    get("missing result", "/v1/jobs/job-999999/result");
    let receipt: Value = serde_json::from_str(&receipt).unwrap();
    let times = serde_json::json!({
        "release_at": done["release_at"],
        "released_at": receipt["facts"]["released_at"],
        "running_release_at": running["release_at"],
    });
    (seen.into_inner(), times)
}

/// Asks for an inclusion proof of every entry of the checkpoint's tree, and one beyond it.
fn prove_everything(
    get: &mut impl FnMut(&str, &str) -> (u16, String),
    checkpoint: &str,
    when: &str,
) {
    let size: u64 = checkpoint.lines().nth(1).unwrap().parse().unwrap();
    for i in 0..=size {
        get(
            &format!("proof {i} {when}"),
            &format!("/v1/audit/proof/inclusion?entry={i}"),
        );
    }
}

/// The transcript with noisy cells, salted commitments and the hashes over them masked, and
/// wall-clock times replaced by a placeholder.
fn normalised(transcript: &Transcript) -> Vec<String> {
    transcript
        .iter()
        .map(|(what, status, body)| {
            let body = match serde_json::from_str::<Value>(body) {
                Ok(v) => mask(v).to_string(),
                // Checkpoint notes: origin and size stay, root and signature are masked.
                Err(_) => body.lines().take(2).collect::<Vec<_>>().join("\n"),
            };
            format!("{what} {status} {}", without_times(&body))
        })
        .collect()
}

/// `text` with every RFC 3339 UTC time (`2026-12-01T21:37:48.123Z`) replaced by `<time>`.
fn without_times(text: &str) -> String {
    let bytes = text.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd";
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let fits = bytes.len() - i >= shape.len()
            && shape.iter().zip(&bytes[i..]).all(|(s, b)| match s {
                b'd' => b.is_ascii_digit(),
                other => other == b,
            });
        if !fits {
            let c = text[i..].chars().next().expect("inside the text");
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        let mut end = i + shape.len();
        while end < bytes.len() && (bytes[end] == b'.' || bytes[end].is_ascii_digit()) {
            end += 1;
        }
        if end < bytes.len() && bytes[end] == b'Z' {
            end += 1;
        }
        out.push_str("<time>");
        i = end;
    }
    out
}

fn mask(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    if MASKED.contains(&k.as_str()) {
                        (k, Value::String("<masked>".into()))
                    } else if k == "result" || k == "entry" || k == "full" {
                        // Documents carried as JSON text: compare their contents masked too.
                        let inner = v
                            .as_str()
                            .and_then(|s| serde_json::from_str::<Value>(s).ok())
                            .map(mask)
                            .unwrap_or(v);
                        (k, inner)
                    } else {
                        (k, mask(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(mask).collect()),
        other => other,
    }
}

fn millis(t: &Value) -> i128 {
    let t = time::OffsetDateTime::parse(
        t.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    t.unix_timestamp_nanos() / 1_000_000
}

#[test]
fn a_consumer_receives_the_same_bytes_whether_or_not_the_target_is_in_the_data() {
    let (without, times_without) = session(&people_csv());
    let (with, times_with) = session(&with_target());
    let (a, b) = (normalised(&without), normalised(&with));
    assert_eq!(a.len(), b.len(), "the sessions differ in length");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "the consumer can tell the neighbours apart");
    }
    // The schedule: the release time seen while the job ran is the one it was released at, and
    // the receipt's release time is the same instant — whatever the module did on the target.
    for times in [&times_without, &times_with] {
        assert_eq!(times["release_at"], times["running_release_at"], "{times}");
        assert_eq!(times["release_at"], times["released_at"], "{times}");
    }
}

#[test]
fn the_release_time_is_fixed_at_the_start_whatever_the_module_does() {
    // The hostile module burns all its fuel on the target: the run takes longer with the target
    // than without, yet the release is committed at start + time_budget_ms in both.
    for csv in [people_csv(), with_target()] {
        let env = Env::new();
        env.setup_with(&csv, &policy("auto"));
        let mut veil = veil_engine::Veil::open(&env.data_dir(), Default::default()).unwrap();
        let m = env.write("m.toml", &manifest());
        std::fs::write(env.path().join("hostile.wasm"), hostile_module()).unwrap();
        let outcome = veil.submit_job(&consumer(), &m).unwrap();
        assert_eq!(outcome.state, veil_engine::JobState::Released);
        let entries = veil.audit_entries().unwrap();
        let of_job: Vec<_> = entries
            .iter()
            .filter(|e| e.public().text("job") == Some(outcome.job.as_str()))
            .collect();
        let time_of = |kind: &str| {
            let e = of_job
                .iter()
                .find(|e| e.public().kind() == kind)
                .unwrap_or_else(|| panic!("no {kind}"));
            millis(&Value::String(e.time.clone()))
        };
        assert_eq!(time_of("release_created") - time_of("job_started"), 400);
        assert_eq!(time_of("job_finished"), time_of("release_created"));
        let info = veil.job(&outcome.job).unwrap();
        assert_eq!(
            millis(&Value::String(info.release_at.unwrap())),
            time_of("release_created")
        );
    }
}

/// The same guard for a job over a link (docs/linking.md): the neighbour adds one person to the
/// intersection of two holders' datasets — a patient with no claims gets two — and a consumer's
/// whole session over HTTP (catalog, links, submission, the running job, result, receipt,
/// budget, every proof) must be byte-for-byte the same except the noisy cells and commitments.
mod linked {
    use super::*;

    const QUERY: &str = "SELECT p.band AS band, COUNT(*) AS people, SUM(c.amount) AS paid \
                         FROM patients p JOIN \\\"insurer:claims\\\" c USING (national_id) GROUP BY p.band";

    fn ids() -> Vec<String> {
        (0..60)
            .map(|i| format!("{:06}-{:04}", 850_101 + i, 1_000 + 37 * i))
            .collect()
    }

    fn policy(columns: &str) -> String {
        format!(
            "privacy_unit = \"national_id\"\nconsumers = [\"{CONSUMER}\"]\napproval = \"auto\"\n\
             min_units_per_group = 5\nmax_groups_per_unit = 1\nmax_rows_per_unit = 3\nmax_units = 200\n\
             [dp]\nepsilon_per_job = 1.0\nepsilon_total = 3.0\n[partitions]\nband = [\"A\", \"B\"]\n\
             [columns]\n{columns}"
        )
    }

    fn add(env: &Env, holder: &str, name: &str, csv: &str, columns: &str) {
        let file = env.write(&format!("{name}.csv"), csv);
        env.ok(&[
            "--as",
            holder,
            "dataset",
            "add",
            file.to_str().unwrap(),
            "--name",
            name,
            "--privacy-unit",
            "national_id",
            "--link-key",
            "national_id",
        ]);
        let p = env.write(&format!("{name}.toml"), &policy(columns));
        env.ok(&["--as", holder, "policy", "set", name, p.to_str().unwrap()]);
    }

    fn session(with_target: bool) -> Transcript {
        let env = Env::new();
        env.add_parties();
        token_for(&env, "insurer", "holder");
        let consumer = token_for(&env, CONSUMER, "consumer");
        let ids = ids();
        let mut patients = String::from("national_id,band\n");
        for (i, id) in ids.iter().enumerate() {
            patients += &format!("{id},{}\n", if i < 30 { "A" } else { "B" });
        }
        let mut claims = String::from("national_id,amount\n");
        let claimants = ids[20..].iter().chain(with_target.then(|| &ids[5]));
        for id in claimants {
            claims += &format!("{id},100\n{id},100\n");
        }
        add(
            &env,
            HOLDER,
            "patients",
            &patients,
            "band = { class = \"public\" }\n",
        );
        add(
            &env,
            "insurer",
            "claims",
            &claims,
            "amount = { class = \"sensitive\", bounds = [0, 500] }\n",
        );
        env.ok(&[
            "--as",
            HOLDER,
            "link",
            "propose",
            "patients",
            "--key",
            "national_id",
            "--with",
            "insurer:claims",
            "--their-key",
            "national_id",
        ]);
        env.ok(&["--as", "insurer", "link", "accept", "link-000001"]);
        let server = Server::start(&env.data_dir(), &[("VEIL_INSECURE_TEST_NOISE_SEED", "7")]);
        let http = Http::new(&server);
        let seen: std::cell::RefCell<Transcript> = Default::default();
        let mut get = |what: &str, path: &str| {
            let (status, body) = http.get(path, Some(&consumer));
            seen.borrow_mut()
                .push((what.to_owned(), status, body.clone()));
            (status, body)
        };
        get("catalog", "/v1/datasets");
        get("links", "/v1/links");
        get("budget before", "/v1/budget");
        let manifest = format!(
            "dataset = \"patients\"\nsql = \"{QUERY}\"\nepsilon = 0.5\ntime_budget_ms = 400\n"
        );
        let body = serde_json::json!({ "manifest": manifest }).to_string();
        let (status, submitted) = http.call(
            "POST",
            "/v1/jobs",
            Some(&consumer),
            Some(("application/json", body.as_bytes())),
        );
        assert_eq!(status, 201, "{submitted}");
        seen.borrow_mut()
            .push(("submitted".into(), status, submitted.clone()));
        let job = serde_json::from_str::<Value>(&submitted).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (_, done) = get("released", &format!("/v1/jobs/{job}?wait=30"));
        assert!(done.contains("released"), "{done}");
        get("result", &format!("/v1/jobs/{job}/result"));
        get("receipt", &format!("/v1/jobs/{job}/receipt"));
        get("jobs", "/v1/jobs");
        get("budget after", "/v1/budget");
        let (_, checkpoint) = get("checkpoint", "/v1/audit/checkpoint");
        prove_everything(&mut get, &checkpoint, "after");
        get("logs", &format!("/v1/jobs/{job}/logs"));
        get("missing job", "/v1/jobs/job-999999");
        seen.into_inner()
    }

    #[test]
    fn a_consumer_cannot_tell_whether_a_person_is_in_the_intersection() {
        let (a, b) = (normalised(&session(false)), normalised(&session(true)));
        assert_eq!(a.len(), b.len(), "the sessions differ in length");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "the consumer can tell the neighbours apart");
        }
    }
}
