//! The HTTP service over real loopback HTTP: the endpoint × caller matrix (no token, a wrong token,
//! each role, another party's object), the whole flow, bad input, what a consumer may learn, and
//! metrics.
use serde_json::Value;

use crate::common::*;

/// The people dataset with a manual-approval policy, and one released job by the consumer.
struct World {
    env: Env,
    server: Server,
    http: Http,
    holder: String,
    other_holder: String,
    consumer: String,
    stranger: String,
    reviewer: String,
    admin: String,
    job: String,
}

fn world() -> World {
    let env = Env::new();
    env.setup("manual");
    let holder = token_for(&env, HOLDER, "holder");
    let other_holder = token_for(&env, "hospital", "holder");
    let consumer = token_for(&env, CONSUMER, "consumer");
    let stranger = token_for(&env, "stranger", "consumer");
    let reviewer = token_for(&env, "rev", "reviewer");
    let admin = token_for(&env, "ops", "admin");
    let server = Server::start(&env.data_dir(), &[]);
    let http = Http::new(&server);
    let wasm = std::fs::read(env.path().join("modules/income_by_education.wasm")).unwrap();
    let submitted = http.submit(&consumer, &income_manifest(1.0), &wasm);
    assert_eq!(submitted["state"], "awaiting_approval", "{submitted}");
    let job = submitted["id"].as_str().unwrap().to_owned();
    let (status, body) = http.call(
        "POST",
        &format!("/v1/jobs/{job}/approve"),
        Some(&holder),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let done = http.json(&format!("/v1/jobs/{job}?wait=30"), &consumer);
    assert_eq!(done["state"], "released", "{done}");
    World {
        env,
        server,
        http,
        holder,
        other_holder,
        consumer,
        stranger,
        reviewer,
        admin,
        job,
    }
}

#[test]
fn every_endpoint_checks_token_role_and_ownership() {
    let w = world();
    let wrong = "veil_".to_owned() + &"0".repeat(64);
    let callers: [(&str, Option<&str>); 8] = [
        ("no token", None),
        ("wrong token", Some(&wrong)),
        ("holder", Some(&w.holder)),
        ("other holder", Some(&w.other_holder)),
        ("consumer", Some(&w.consumer)),
        ("stranger", Some(&w.stranger)),
        ("reviewer", Some(&w.reviewer)),
        ("admin", Some(&w.admin)),
    ];
    let job = &w.job;
    let policy_text = policy("manual");
    let csv = people_csv();
    let wasm = std::fs::read(w.env.path().join("modules/income_by_education.wasm")).unwrap();
    let submit_body = {
        use base64::Engine as _;
        serde_json::json!({
            "manifest": income_manifest(0.5),
            "module": base64::engine::general_purpose::STANDARD.encode(&wasm),
        })
        .to_string()
    };
    let principal_body = r#"{"name": "newcomer", "role": "consumer"}"#;
    let reject_body = r#"{"reason": "no"}"#;
    type Row<'a> = (&'a str, String, Option<(&'a str, &'a [u8])>, [u16; 8]);
    #[rustfmt::skip]
    let matrix: Vec<Row> = vec![
        ("GET", "/v1/whoami".into(), None,                                   [401, 401, 200, 200, 200, 200, 200, 200]),
        ("GET", "/v1/datasets".into(), None,                                 [401, 401, 200, 200, 200, 200, 200, 200]),
        // Names are scoped per holder: the other holder's `people` is its own, whatever exists.
        ("POST", "/v1/datasets?name=people".into(), Some(("text/csv", csv.as_bytes())),
                                                                             [401, 401, 409, 201, 403, 403, 403, 403]),
        ("GET", "/v1/datasets/clinic:people".into(), None,                          [401, 401, 200, 404, 200, 404, 200, 200]),
        ("GET", "/v1/datasets/clinic:people/policy".into(), None,                   [401, 401, 200, 404, 200, 404, 200, 200]),
        ("PUT", "/v1/datasets/clinic:people/policy".into(), Some(("application/toml", policy_text.as_bytes())),
                                                                             [401, 401, 200, 404, 403, 403, 403, 403]),
        ("GET", "/v1/datasets/clinic:people/certificate".into(), None,              [401, 401, 200, 404, 403, 404, 403, 403]),
        ("GET", "/v1/jobs".into(), None,                                     [401, 401, 200, 200, 200, 200, 200, 200]),
        ("POST", "/v1/jobs".into(), Some(("application/json", submit_body.as_bytes())),
                                                                             [401, 401, 403, 403, 201, 404, 403, 403]),
        ("GET", format!("/v1/jobs/{job}"), None,                             [401, 401, 200, 404, 200, 404, 200, 200]),
        ("POST", format!("/v1/jobs/{job}/approve"), None,                    [401, 401, 409, 404, 403, 403, 403, 403]),
        ("POST", format!("/v1/jobs/{job}/reject"), Some(("application/json", reject_body.as_bytes())),
                                                                             [401, 401, 409, 404, 403, 403, 403, 403]),
        ("GET", format!("/v1/jobs/{job}/result"), None,                      [401, 401, 403, 404, 200, 404, 403, 403]),
        // Receipts: the consumer's, and each holder's record of what was released about its data.
        ("GET", format!("/v1/jobs/{job}/receipt"), None,                     [401, 401, 200, 404, 200, 404, 403, 403]),
        ("GET", format!("/v1/jobs/{job}/logs"), None,                        [401, 401, 200, 404, 403, 404, 403, 403]),
        ("GET", "/v1/budget".into(), None,                                   [401, 401, 403, 403, 200, 200, 403, 403]),
        ("GET", "/v1/audit/log".into(), None,                                [401, 401, 403, 403, 403, 403, 200, 200]),
        ("GET", "/v1/audit/summary".into(), None,                            [401, 401, 403, 403, 403, 403, 200, 200]),
        ("GET", "/v1/audit/export".into(), None,                             [401, 401, 403, 403, 403, 403, 200, 200]),
        // Entry 0 (the log's creation) is nobody's job: only reviewers and admins may see it.
        ("GET", "/v1/audit/proof/inclusion?entry=0".into(), None,            [401, 401, 404, 404, 404, 404, 200, 200]),
        ("GET", "/v1/audit/proof/consistency?from=2".into(), None,           [401, 401, 200, 200, 200, 200, 200, 200]),
        ("GET", "/v1/admin/principals".into(), None,                         [401, 401, 403, 403, 403, 403, 403, 200]),
        ("POST", "/v1/admin/principals".into(), Some(("application/json", principal_body.as_bytes())),
                                                                             [401, 401, 403, 403, 403, 403, 403, 201]),
        ("DELETE", "/v1/admin/principals/nobody".into(), None,              [401, 401, 403, 403, 403, 403, 403, 404]),
        ("POST", "/v1/admin/principals/nobody/token".into(), None,          [401, 401, 403, 403, 403, 403, 403, 404]),
        ("GET", "/metrics".into(), None,                                     [401, 401, 403, 403, 403, 403, 200, 200]),
        ("GET", "/v1/health".into(), None,                                   [200; 8]),
        ("GET", "/v1/public-key".into(), None,                               [200; 8]),
        ("GET", "/v1/audit/checkpoint".into(), None,                         [200; 8]),
        ("GET", "/v1/openapi.json".into(), None,                             [200; 8]),
        ("GET", "/v2/anything".into(), None,                                 [404; 8]),
        ("DELETE", "/v1/jobs".into(), None,                                  [405; 8]),
    ];
    for (method, path, body, statuses) in &matrix {
        for ((who, token), want) in callers.iter().zip(statuses) {
            let (status, text) = w.http.call(method, path, *token, *body);
            assert_eq!(status, *want, "{method} {path} as {who}: {text}");
            if status >= 400 {
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{method} {path} as {who}: {e}: {text}"));
                let code = v["error"]["code"].as_str().unwrap_or_default();
                let expected: &[&str] = match status {
                    401 => &["unauthenticated"],
                    403 => &["forbidden"],
                    404 => &["not_found"],
                    405 => &["method_not_allowed"],
                    409 => &["conflict", "not_ready"],
                    _ => &[],
                };
                assert!(expected.contains(&code), "{method} {path} as {who}: {text}");
            }
        }
    }

    // Per-object visibility in lists: each principal sees what it may use, and no rows.
    let names = |token: &str| -> Vec<String> {
        w.http.json("/v1/datasets", token)["datasets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&w.holder), ["clinic:people"]);
    assert_eq!(names(&w.consumer), ["clinic:people"]);
    // The other holder registered a `people` of its own in the matrix above.
    assert_eq!(names(&w.other_holder), ["hospital:people"]);
    assert!(names(&w.stranger).is_empty());
    assert_eq!(names(&w.reviewer), ["clinic:people", "hospital:people"]);
    let jobs = |token: &str| {
        w.http.json("/v1/jobs", token)["jobs"]
            .as_array()
            .unwrap()
            .len()
    };
    // The consumer's job and their matrix submission (awaiting approval); the stranger could not
    // even learn that the dataset exists, so nothing of theirs was recorded.
    assert_eq!((jobs(&w.consumer), jobs(&w.stranger)), (2, 0));
    assert_eq!(
        (jobs(&w.holder), jobs(&w.other_holder), jobs(&w.reviewer)),
        (2, 0, 2)
    );
    let queue = w.http.json("/v1/jobs?state=awaiting_approval", &w.holder)["jobs"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(queue, 1, "the holder's approval queue");
    let me = w.http.json("/v1/whoami", &w.reviewer);
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str()),
        (Some("rev"), Some("reviewer"))
    );
    // Responses carry a request id: the caller's own when it is plain, a fresh one otherwise.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let id_of = |sent: &str| {
        let response = agent
            .get(format!("{}/v1/whoami", w.server.url()))
            .header("x-request-id", sent)
            .call()
            .unwrap();
        response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(id_of("trace-42"), "trace-42");
    let fresh = id_of("bad id\twith junk");
    assert_eq!(fresh.len(), 16, "{fresh}");
    assert!(fresh.bytes().all(|b| b.is_ascii_hexdigit()));
}

/// Dataset names are scoped per holder, and a dataset the caller may not see answers exactly like
/// one that does not exist, on reads and on writes: the answer's status and body are the same
/// (up to the name asked for), so no request tells a hidden dataset from a missing one.
#[test]
fn hidden_and_missing_datasets_answer_alike_and_names_are_per_holder() {
    let w = world();
    let csv = people_csv();
    // The other holder takes the name `people` too: its own namespace, so no clash is reported.
    let (status, body) = w.http.call(
        "POST",
        "/v1/datasets?name=people",
        Some(&w.other_holder),
        Some(("text/csv", csv.as_bytes())),
    );
    assert_eq!(status, 201, "{body}");
    let theirs: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(theirs["name"], "hospital:people");

    // For each request: the hidden dataset (clinic:people, to the other holder and the stranger)
    // against one that does not exist (clinic:absent).
    let policy_text = policy("manual");
    let wasm = std::fs::read(w.env.path().join("modules/income_by_education.wasm")).unwrap();
    let submit = |dataset: &str| {
        use base64::Engine as _;
        serde_json::json!({
            "manifest": income_manifest(0.5).replace("dataset = \"people\"", &format!("dataset = \"{dataset}\"")),
            "module": base64::engine::general_purpose::STANDARD.encode(&wasm),
        })
        .to_string()
    };
    type Probe<'a> = (&'a str, &'a str, fn(&str) -> String, &'a str);
    let probes: [Probe; 5] = [
        ("other holder", "GET", |d| format!("/v1/datasets/{d}"), ""),
        (
            "other holder",
            "GET",
            |d| format!("/v1/datasets/{d}/policy"),
            "",
        ),
        (
            "other holder",
            "PUT",
            |d| format!("/v1/datasets/{d}/policy"),
            "policy",
        ),
        (
            "other holder",
            "GET",
            |d| format!("/v1/datasets/{d}/certificate"),
            "",
        ),
        ("stranger", "POST", |_| "/v1/jobs".into(), "submit"),
    ];
    for (who, method, path, body) in probes {
        let token = if who == "stranger" {
            &w.stranger
        } else {
            &w.other_holder
        };
        let answer = |dataset: &str| {
            let body = match body {
                "policy" => Some(("application/toml", policy_text.clone().into_bytes())),
                "submit" => Some(("application/json", submit(dataset).into_bytes())),
                _ => None,
            };
            let (status, text) = w.http.call(
                method,
                &path(dataset),
                Some(token),
                body.as_ref().map(|(t, b)| (*t, b.as_slice())),
            );
            (status, text.replace(dataset, "DATASET"))
        };
        let hidden = answer("clinic:people");
        let missing = answer("clinic:absent");
        assert_eq!(hidden, missing, "{method} as {who}");
        assert_eq!(hidden.0, 404, "{method} as {who}: {}", hidden.1);
    }
    // Nothing the probes did reached the log or the job list.
    let jobs = w.http.json("/v1/jobs", &w.stranger);
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 0, "{jobs}");

    // A short name means the one dataset the caller may see by that name: each holder its own.
    let mine = w.http.json("/v1/datasets/people", &w.holder);
    assert_eq!(mine["name"], "clinic:people");
    let own = w.http.json("/v1/datasets/people", &w.other_holder);
    assert_eq!(own["name"], "hospital:people");
    // A consumer admitted to both must say which one; the error names only those it may see.
    let (status, text) = w.http.call(
        "PUT",
        "/v1/datasets/people/policy",
        Some(&w.other_holder),
        Some((
            "application/toml",
            policy_text
                .replace("max_units = 500", "max_units = 1000")
                .as_bytes(),
        )),
    );
    assert_eq!(status, 200, "{text}");
    let (status, text) = w.http.get("/v1/datasets/people", Some(&w.consumer));
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("`clinic:people`") && text.contains("`hospital:people`"),
        "{text}"
    );
    let theirs = w.http.json("/v1/datasets/hospital:people", &w.consumer);
    assert_eq!(theirs["owner"], "hospital");
}

#[test]
fn the_flow_over_http_and_what_each_party_sees() {
    let w = world();
    let job = &w.job;
    // The consumer's view is coarse: state and code, no logs, figures or manifest internals.
    let mine = w.http.json(&format!("/v1/jobs/{job}"), &w.consumer);
    let keys: Vec<&str> = mine
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "code",
            "created_at",
            "dataset",
            "epsilon",
            "id",
            "manifest_hash",
            "module_hash",
            "release_at",
            "state"
        ]
    );
    let submitted = mine["created_at"].as_str().unwrap();
    assert!(
        submitted.ends_with('Z') && !submitted.contains('.'),
        "{submitted}"
    );
    // The holder and reviewer see the metadata (manifest, policy version), never the result.
    let theirs = w.http.json(&format!("/v1/jobs/{job}"), &w.reviewer);
    assert!(theirs["manifest"].as_str().unwrap().contains("income"));
    assert!(theirs.get("result").is_none());

    // Result and receipt for the consumer; the receipt verifies offline with the public key.
    let result = w.http.json(&format!("/v1/jobs/{job}/result"), &w.consumer);
    assert!(!result["rows"].as_array().unwrap().is_empty(), "{result}");
    let receipt = w.http.json(&format!("/v1/jobs/{job}/receipt"), &w.consumer);
    let path = w.env.write("receipt.json", &receipt.to_string());
    let key = w.http.json("/v1/public-key", &w.consumer)["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = w.env.ok(&[
        "receipt",
        "verify",
        path.to_str().unwrap(),
        "--public-key",
        &key,
    ]);
    assert!(out.starts_with("receipt holds"), "{out}");

    // The reviewer's export verifies offline from the log's first key, and holds the whole story.
    let (status, export) = w.http.get("/v1/audit/export", Some(&w.reviewer));
    assert_eq!(status, 200);
    let path = w.env.write("export.jsonl", &export);
    let first = w.env.ok(&["keys", "first"]);
    let out = w.env.ok(&[
        "audit",
        "verify",
        "--log",
        path.to_str().unwrap(),
        "--public-key",
        first.trim(),
    ]);
    assert!(out.starts_with("audit log intact"), "{out}");
    for kind in [
        "job_submitted",
        "job_approved",
        "job_started",
        "release_created",
    ] {
        assert!(export.contains(kind), "{kind} missing from the export");
    }
    // Proofs from the API check offline too. The consumer may prove its own job's entries and
    // gets their public part only; any other entry answers like one beyond the log.
    let own = export
        .lines()
        .position(|l| l.contains("\"job_submitted\"") && l.contains(job.as_str()))
        .expect("the job's submission is logged");
    let proof = w.http.json(
        &format!("/v1/audit/proof/inclusion?entry={own}"),
        &w.consumer,
    );
    assert!(proof.get("full").is_none(), "{proof}");
    let entry = proof["entry"].as_str().unwrap();
    assert!(
        !entry.contains("purpose") && !entry.contains("recorded_at"),
        "{entry}"
    );
    let (status, other) = w
        .http
        .get("/v1/audit/proof/inclusion?entry=0", Some(&w.consumer));
    assert_eq!(status, 404, "{other}");
    let (_, beyond) = w
        .http
        .get("/v1/audit/proof/inclusion?entry=99999", Some(&w.consumer));
    assert_eq!(
        other.replace("entry 0", "entry N"),
        beyond.replace("entry 99999", "entry N"),
        "a hidden entry answers like a missing one"
    );
    let path = w.env.write("proof.json", &proof.to_string());
    let out = w.env.ok(&[
        "audit",
        "verify-proof",
        "--proof",
        path.to_str().unwrap(),
        "--public-key",
        first.trim(),
    ]);
    assert!(out.starts_with("proof holds"), "{out}");

    // The budget was spent once.
    let budget = w.http.json("/v1/budget", &w.consumer);
    assert_eq!(budget["budget"][0]["spent"], "1", "{budget}");

    // Metrics: jobs by state, budget spent, sandbox units, request latency.
    let (status, metrics) = w.http.get("/metrics", Some(&w.reviewer));
    assert_eq!(status, 200);
    for line in [
        "veil_jobs{state=\"released\"} 1",
        "veil_budget_spent_epsilon{dataset=\"clinic:people\"} 1.0",
        "veil_sandbox_units_total 402",
        "veil_http_request_duration_seconds_count{",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    // A rejected job: nothing charged, the consumer sees `refused (rejected)`.
    let wasm = std::fs::read(w.env.path().join("modules/income_by_education.wasm")).unwrap();
    let second = w.http.submit(&w.consumer, &income_manifest(0.5), &wasm);
    let id = second["id"].as_str().unwrap();
    let (status, _) = w.http.call(
        "POST",
        &format!("/v1/jobs/{id}/reject"),
        Some(&w.holder),
        Some(("application/json", br#"{"reason": "not this quarter"}"#)),
    );
    assert_eq!(status, 200);
    let seen = w.http.json(&format!("/v1/jobs/{id}"), &w.consumer);
    assert_eq!(
        (seen["state"].as_str(), seen["code"].as_str()),
        (Some("refused"), Some("rejected"))
    );
    let budget = w.http.json("/v1/budget", &w.consumer);
    assert_eq!(budget["budget"][0]["spent"], "1");
}

#[test]
fn a_faulting_module_tells_the_consumer_nothing() {
    let env = Env::new();
    env.setup("auto");
    let consumer = token_for(&env, CONSUMER, "consumer");
    let holder = token_for(&env, HOLDER, "holder");
    let server = Server::start(&env.data_dir(), &[("VEIL_LOG_FORMAT", "json")]);
    let http = Http::new(&server);
    // Every unit traps with a message the module chose.
    let trap = wat_module(
        r#"(import "veil_abi_v1" "log" (func $log (param i32 i32)))
           (data (i32.const 16) "SECRET-FROM-ROW")"#,
        "(call $log (i32.const 16) (i32.const 15)) unreachable",
    );
    let submitted = http.submit(&consumer, &manifest_for("m.wasm", &["educ"], 1, 0.1), &trap);
    let id = submitted["id"].as_str().unwrap();
    let seen = http.json(&format!("/v1/jobs/{id}?wait=30"), &consumer);
    // Faults never change the outcome: every unit contributed nothing, the job released.
    assert_eq!(
        (seen["state"].as_str(), seen["code"].as_str()),
        (Some("released"), None),
        "{seen}"
    );
    let (status, body) = http.get(&format!("/v1/jobs/{id}/result"), Some(&consumer));
    assert_eq!(status, 200, "{body}");
    let (status, _) = http.get(&format!("/v1/jobs/{id}/logs"), Some(&consumer));
    assert_eq!(status, 403);
    // Nothing the consumer can read mentions the trap, the module's log or unit counts.
    for path in [
        format!("/v1/jobs/{id}"),
        "/v1/jobs".into(),
        format!("/v1/jobs/{id}/result"),
    ] {
        let (_, body) = http.get(&path, Some(&consumer));
        // (A released table names its noisy `units` cells; the job views must not.)
        let units = if path.ends_with("/result") {
            "SECRET"
        } else {
            "units"
        };
        for secret in [
            "SECRET",
            "unreachable",
            "trap",
            "fuel",
            units,
            "module_faults",
        ] {
            assert!(!body.contains(secret), "{path} shows {secret}: {body}");
        }
    }
    // The holder's log has the details.
    let logs = http.json(&format!("/v1/jobs/{id}/logs"), &holder);
    assert!(
        logs["lines"].to_string().contains("SECRET-FROM-ROW"),
        "{logs}"
    );
}

#[test]
fn bad_requests_get_json_errors_and_change_nothing() {
    let env = Env::new();
    env.setup("auto");
    let holder = token_for(&env, HOLDER, "holder");
    let consumer = token_for(&env, CONSUMER, "consumer");
    let server = Server::start(&env.data_dir(), &[("VEIL_MAX_UPLOAD_BYTES", "4096")]);
    let http = Http::new(&server);
    let before = env.snapshot();
    let wasm = std::fs::read(env.path().join("modules/income_by_education.wasm")).unwrap();
    let b64 = |bytes: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let big = "a,b\n".to_owned() + &"1,2\n".repeat(2000);
    /// Method, path, token, body, expected status and code.
    type Case<'a> = (&'a str, String, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("POST", "/v1/datasets?name=junk".into(), &holder, b"\x00\x01 not a table".to_vec(), 400, "bad_request"),
        ("POST", "/v1/datasets?name=big".into(), &holder, big.clone().into_bytes(), 413, "too_large"),
        // Reading options are checked before the body: a bad one is 400 even on an oversized body.
        ("POST", "/v1/datasets?name=big&delimiter=ab".into(), &holder, big.into_bytes(), 400, "bad_request"),
        ("POST", "/v1/datasets?name=bad%20name".into(), &holder, b"a\n1\n".to_vec(), 400, "bad_request"),
        ("POST", "/v1/datasets".into(), &holder, b"a\n1\n".to_vec(), 400, "bad_request"),
        ("POST", "/v1/datasets?name=x&privacy_unit=nope".into(), &holder, b"a\n1\n".to_vec(), 400, "bad_request"),
        ("PUT", "/v1/datasets/clinic:people/policy".into(), &holder, b"epsilon = \"lots\"".to_vec(), 400, "bad_request"),
        ("PUT", "/v1/datasets/clinic:people/policy".into(), &holder, vec![0xff, 0xfe], 400, "bad_request"),
        ("POST", "/v1/jobs".into(), &consumer, b"{not json".to_vec(), 400, "bad_request"),
        ("POST", "/v1/jobs".into(), &consumer, br#"{"manifest": "x"}"#.to_vec(), 400, "bad_request"),
        ("POST", "/v1/jobs".into(), &consumer,
            serde_json::json!({"manifest": income_manifest(1.0), "module": "%%%"}).to_string().into_bytes(), 400, "bad_request"),
        ("POST", "/v1/jobs".into(), &consumer,
            serde_json::json!({"manifest": income_manifest(1.0), "module": b64(b"not wasm")}).to_string().into_bytes(), 400, "bad_request"),
        ("POST", "/v1/jobs".into(), &consumer,
            serde_json::json!({"manifest": "dataset = 3", "module": b64(&wasm)}).to_string().into_bytes(), 400, "bad_request"),
        ("POST", "/v1/jobs".into(), &consumer,
            serde_json::json!({"manifest": income_manifest(1.0).replace("\"people\"", "\"nobody\""), "module": b64(&wasm)}).to_string().into_bytes(), 404, "not_found"),
        ("GET", "/v1/audit/log?decision=maybe".into(), &consumer, vec![], 400, "bad_request"),
        ("GET", "/v1/jobs/job-000001?wait=soon".into(), &consumer, vec![], 400, "bad_request"),
        ("GET", "/v1/audit/proof/inclusion?entry=1&from=1".into(), &consumer, vec![], 400, "bad_request"),
        ("GET", "/v1/audit/proof/inclusion?entry=999".into(), &consumer, vec![], 404, "not_found"),
        ("GET", "/v1/jobs/job-000001?wait=31".into(), &consumer, vec![], 400, "bad_request"),
    ];
    for (method, path, token, body, want, code) in &cases {
        let kind = if path.starts_with("/v1/jobs") && *method == "POST" {
            "application/json"
        } else {
            "application/octet-stream"
        };
        let body = (!body.is_empty()).then_some((kind, body.as_slice()));
        let (status, text) = http.call(method, path, Some(token), body);
        assert_eq!(status, *want, "{method} {path}: {text}");
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
        assert_eq!(v["error"]["code"], *code, "{method} {path}: {text}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(!message.is_empty());
        // Errors never name the server's files.
        let data_dir = env.data_dir().display().to_string();
        assert!(!message.contains(&data_dir), "{method} {path}: {message}");
    }
    // A JSON route refuses a body labelled as something else.
    let (status, text) = http.call(
        "POST",
        "/v1/jobs",
        Some(&consumer),
        Some(("text/plain", b"{}")),
    );
    assert_eq!(status, 415, "{text}");
    assert!(text.contains("unsupported_media_type"), "{text}");
    drop(server);
    assert_eq!(env.snapshot(), before, "a bad request changed the store");
    // Uploads left no temporary files behind.
    let uploads = env.data_dir().join("uploads");
    let left = std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        left,
        0,
        "temporary upload files left in {}",
        uploads.display()
    );
}

#[test]
fn revoked_tokens_stop_working_at_once_and_reissued_ones_replace_them() {
    let env = Env::new();
    env.setup("auto");
    let consumer = token_for(&env, CONSUMER, "consumer");
    let admin = token_for(&env, "ops", "admin");
    let server = Server::start(&env.data_dir(), &[]);
    let http = Http::new(&server);
    assert_eq!(http.get("/v1/budget", Some(&consumer)).0, 200);

    let path = format!("/v1/admin/principals/{CONSUMER}");
    let (status, body) = http.call("DELETE", &path, Some(&admin), None);
    assert_eq!(status, 200, "{body}");
    let revoked: Value = serde_json::from_str(&body).unwrap();
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    assert_eq!(http.get("/v1/budget", Some(&consumer)).0, 401);
    // Revoking twice is a conflict; the name stays taken.
    assert_eq!(http.call("DELETE", &path, Some(&admin), None).0, 409);
    let again = format!(r#"{{"name": "{CONSUMER}", "role": "consumer"}}"#);
    let (status, _) = http.call(
        "POST",
        "/v1/admin/principals",
        Some(&admin),
        Some(("application/json", again.as_bytes())),
    );
    assert_eq!(status, 409);

    // A reissued token works; the old one stays dead.
    let (status, body) = http.call("POST", &format!("{path}/token"), Some(&admin), None);
    assert_eq!(status, 200, "{body}");
    let fresh = serde_json::from_str::<Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(fresh, consumer);
    assert_eq!(http.get("/v1/budget", Some(&fresh)).0, 200);
    assert_eq!(http.get("/v1/budget", Some(&consumer)).0, 401);
    // The log records both acts, by whom, and never a token.
    let (_, export) = http.get("/v1/audit/export", Some(&admin));
    assert!(export.contains("principal_revoked") && export.contains("principal_token_reissued"));
    assert!(!export.contains(&fresh) && !export.contains(&consumer));
    drop(server);
    let out = env.ok(&["audit", "verify"]);
    assert!(out.starts_with("audit log intact"), "{out}");
}

#[test]
fn a_consumer_cannot_flood_the_queue() {
    let env = Env::new();
    env.setup("manual");
    let consumer = token_for(&env, CONSUMER, "consumer");
    let server = Server::start(&env.data_dir(), &[("VEIL_MAX_OPEN_JOBS", "2")]);
    let http = Http::new(&server);
    let wasm = std::fs::read(env.path().join("modules/income_by_education.wasm")).unwrap();
    for _ in 0..2 {
        assert_eq!(
            http.submit(&consumer, &income_manifest(0.1), &wasm)["state"],
            "awaiting_approval"
        );
    }
    let before = env.snapshot();
    use base64::Engine as _;
    let body = serde_json::json!({
        "manifest": income_manifest(0.1),
        "module": base64::engine::general_purpose::STANDARD.encode(&wasm),
    })
    .to_string();
    let (status, text) = http.call(
        "POST",
        "/v1/jobs",
        Some(&consumer),
        Some(("application/json", body.as_bytes())),
    );
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("\"code\":\"busy\""), "{text}");
    drop(server);
    assert_eq!(
        env.snapshot(),
        before,
        "a refused submission changed the store"
    );
}

#[test]
fn a_python_component_job_runs_over_http() {
    let env = Env::new();
    env.setup_with_policy(&policy("auto").replace("epsilon_total = 1.5", "epsilon_total = 10.0"));
    let consumer = token_for(&env, CONSUMER, "consumer");
    // Compiled components are cached across test runs: the server's module cache is the shared one.
    std::fs::create_dir_all(shared_cache()).unwrap();
    std::os::unix::fs::symlink(shared_cache(), env.data_dir().join("module-cache")).unwrap();
    let component = built_guest("median_income_py.wasm");
    let server = Server::start(&env.data_dir(), &[]);
    let http = Http::new(&server);
    let manifest = &python_median_manifest();
    // An 18 MB component travels as 24 MB of base64, within the default request limit.
    let submitted = http.submit(&consumer, manifest, &component);
    let id = submitted["id"].as_str().unwrap();
    let mut seen = http.json(&format!("/v1/jobs/{id}?wait=30"), &consumer);
    while seen["state"] == "queued" || seen["state"] == "running" {
        seen = http.json(&format!("/v1/jobs/{id}?wait=30"), &consumer);
    }
    assert_eq!(seen["state"], "released", "{seen}");
    let result = http.json(&format!("/v1/jobs/{id}/result"), &consumer);
    let estimate = result["estimates"][0]["estimate"]["value"]
        .as_f64()
        .unwrap();
    // Block medians sit near 1,300 (see blocks.rs); noise scale 75, so ±600 is 8 scales.
    assert!((estimate - 1300.0).abs() < 600.0, "{result}");
}

#[test]
fn the_api_keeps_answering_while_a_large_upload_registers() {
    let env = Env::new();
    let holder = token_for(&env, HOLDER, "holder");
    let server = Server::start(&env.data_dir(), &[]);
    let mut csv = String::from("person_id,educ,weekly_income\n");
    for i in 0..2_000_000u64 {
        csv += &format!("{i},{},{}\n", 8 + i % 13, 300 + (i * 7919) % 2500);
    }
    let body_len = csv.len() as u64;
    let url = server.url();
    let token = holder.clone();
    let upload = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let response = agent
            .post(format!("{url}/v1/datasets?name=big&privacy_unit=person_id"))
            .header("Authorization", format!("Bearer {token}"))
            .send(csv.as_bytes())
            .unwrap();
        (response.status().as_u16(), std::time::Instant::now())
    });
    // Once the whole body is on disk the server is reading and converting it; ask meanwhile.
    let uploads = env.data_dir().join("uploads");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let size: u64 = std::fs::read_dir(&uploads)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if size >= body_len || upload.is_finished() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never arrived"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let http = Http::new(&server);
    let me = http.json("/v1/whoami", &holder);
    let answered = std::time::Instant::now();
    assert_eq!(me["name"], HOLDER);
    let (status, registered) = upload.join().unwrap();
    assert_eq!(status, 201);
    assert!(
        answered < registered,
        "whoami waited for the registration to finish"
    );
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let env = Env::new();
    env.setup("auto");
    let token = token_for(&env, CONSUMER, "consumer");
    let server = Server::start(&env.data_dir(), &[]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for (scheme, want) in [
        ("Bearer", 200),
        ("bearer", 200),
        ("BEARER", 200),
        ("Basic", 401),
    ] {
        let response = agent
            .get(format!("{}/v1/whoami", server.url()))
            .header("Authorization", format!("{scheme} {token}"))
            .call()
            .unwrap();
        assert_eq!(response.status().as_u16(), want, "{scheme}");
    }
}

/// Bodies are read only after the token is checked: a tokenless request is answered 401 however
/// large its body, and an authenticated one is held to the request limit (413).
#[test]
fn bodies_are_read_only_after_authentication() {
    let env = Env::new();
    env.setup("auto");
    let consumer = token_for(&env, CONSUMER, "consumer");
    let holder = token_for(&env, HOLDER, "holder");
    let server = Server::start(&env.data_dir(), &[("VEIL_MAX_REQUEST_BYTES", "1024")]);
    let http = Http::new(&server);
    let big = vec![b'x'; 4096];
    let body = Some(("application/json", big.as_slice()));
    for path in ["/v1/jobs", "/v1/jobs/check"] {
        let (status, text) = http.call("POST", path, None, body);
        assert_eq!(status, 401, "{path}: {text}");
        let (status, text) = http.call("POST", path, Some(&consumer), body);
        assert_eq!(status, 413, "{path}: {text}");
    }
    for (method, path) in [
        ("PUT", "/v1/datasets/clinic:people/policy"),
        ("POST", "/v1/jobs/job-000001/reject"),
        ("POST", "/v1/admin/principals"),
    ] {
        let (status, text) = http.call(method, path, None, body);
        assert_eq!(status, 401, "{path}: {text}");
    }
    let (status, _) = http.call(
        "PUT",
        "/v1/datasets/clinic:people/policy",
        Some(&holder),
        body,
    );
    assert_eq!(status, 413);
}

/// One raw HTTP/1.1 exchange on its own connection: writes `head` (and `body`), then reads the
/// whole answer until the server closes (`Connection: close` is asked for).
fn raw_exchange(addr: &str, head: &str, body: &[u8], wait: std::time::Duration) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Bodies in flight share one memory budget: while one authenticated body holds it, another is
/// answered 503 at once; a body that stalls for the idle timeout is answered 408 and gives its
/// share back.
#[test]
fn bodies_in_flight_share_a_budget_and_stalled_bodies_time_out() {
    use std::io::Write as _;
    let env = Env::new();
    env.setup("auto");
    let consumer = token_for(&env, CONSUMER, "consumer");
    let server = Server::start(
        &env.data_dir(),
        &[
            ("VEIL_MAX_REQUEST_BYTES", "1024"),
            ("VEIL_MAX_BUFFERED_BYTES", "1024"),
            ("VEIL_IDLE_TIMEOUT_SECS", "2"),
        ],
    );
    let http = Http::new(&server);
    // A slow sender: declares 1000 bytes, sends 10, then trickles a byte per poll (at most 500)
    // until a poll finds the budget spent, then nothing. Its share is reserved once its token is
    // checked; a poll that happens to hold the budget at that moment makes the slow sender the
    // one refused (the server then closes its connection), and the attempt starts again.
    let slow_sender = || {
        let mut slow = std::net::TcpStream::connect(&server.addr).unwrap();
        write!(
            slow,
            "POST /v1/jobs/check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {consumer}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{{\"manifest"
        )
        .unwrap();
        slow
    };
    let body = Some(("application/json", &b"{}"[..]));
    let (mut slow, busy) = (0..5)
        .find_map(|_| {
            let mut slow = slow_sender();
            let started = std::time::Instant::now();
            loop {
                let (status, text) = http.call("POST", "/v1/jobs/check", Some(&consumer), body);
                if status == 503 {
                    return Some((slow, (status, text)));
                }
                if slow.write_all(b" ").is_err()
                    || started.elapsed() > std::time::Duration::from_secs(10)
                {
                    return None;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
        .expect("a slow body holding the budget within five attempts");
    assert_eq!(busy.0, 503, "{}", busy.1);
    assert!(busy.1.contains("\"code\":\"unavailable\""), "{}", busy.1);
    assert!(busy.1.contains("retry shortly"), "{}", busy.1);
    // The stalled body is answered 408 after the idle timeout.
    use std::io::Read as _;
    slow.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    // Its share is back: the next body is read (and is a bad request, not a busy server).
    let (status, text) = http.call("POST", "/v1/jobs/check", Some(&consumer), body);
    assert_eq!(status, 400, "{text}");
}

/// At most `max_connections` connections are open: another waits, unaccepted, until one closes;
/// connections that send no request head are closed after the idle timeout.
#[test]
fn connections_are_capped_and_silent_ones_closed() {
    let env = Env::new();
    env.setup("auto");
    let server = Server::start(
        &env.data_dir(),
        &[
            ("VEIL_MAX_CONNECTIONS", "2"),
            ("VEIL_IDLE_TIMEOUT_SECS", "2"),
        ],
    );
    let health = "GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let silent: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(&server.addr).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Both slots are taken: a third connection is not served while they last.
    let waited = raw_exchange(
        &server.addr,
        health,
        b"",
        std::time::Duration::from_millis(700),
    );
    assert_eq!(waited, "", "served past the cap");
    // The silent ones are closed after 2 s; then a request is served.
    let started = std::time::Instant::now();
    let served = raw_exchange(
        &server.addr,
        health,
        b"",
        std::time::Duration::from_secs(10),
    );
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    drop(silent);
}
