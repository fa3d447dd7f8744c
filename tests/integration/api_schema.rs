//! The API against its own OpenAPI document: schemathesis (installed by scripts/test.sh) generates
//! requests for every operation — valid and invalid — as each role, and checks every answer:
//! no server errors, only documented statuses and content types, bodies that match the schemas,
//! invalid input rejected, authentication enforced. Afterwards the store still verifies.
use std::path::PathBuf;
use std::process::Command;

use crate::common::*;

/// `VEIL_SCHEMATHESIS`, or the venv scripts/test.sh installs beside the build.
pub(crate) fn schemathesis() -> PathBuf {
    if let Ok(p) = std::env::var("VEIL_SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe.ancestors().nth(3).expect("target dir");
    let bin = target.join("api-tools/bin/schemathesis");
    assert!(
        bin.exists(),
        "schemathesis not found at {}: run scripts/test.sh (it installs it) or set VEIL_SCHEMATHESIS",
        bin.display()
    );
    bin
}

#[test]
fn the_api_conforms_to_its_openapi_document_for_every_role() {
    let tool = schemathesis();
    let env = Env::new();
    env.setup("manual");
    let tokens = [
        ("holder", token_for(&env, HOLDER, "holder")),
        ("consumer", token_for(&env, CONSUMER, "consumer")),
        ("reviewer", token_for(&env, "rev", "reviewer")),
        ("admin", token_for(&env, "ops", "admin")),
    ];
    let server = Server::start(&env.data_dir(), &[]);
    let http = Http::new(&server);
    // Objects for the operations to find: a released job and one awaiting approval.
    let wasm = std::fs::read(env.path().join("modules/income_by_education.wasm")).unwrap();
    let job = http.submit(&tokens[1].1, &income_manifest(0.5), &wasm);
    let id = job["id"].as_str().unwrap();
    http.call(
        "POST",
        &format!("/v1/jobs/{id}/approve"),
        Some(&tokens[0].1),
        None,
    );
    http.json(&format!("/v1/jobs/{id}?wait=30"), &tokens[1].1);
    http.submit(&tokens[1].1, &income_manifest(0.5), &wasm);

    let server_crate = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/veil-server");
    let config = server_crate.join("schemathesis.toml");
    let document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(server_crate.join("openapi.json")).unwrap())
            .unwrap();
    let operations: usize = document["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    // The document in the repository is the one served.
    let served = http.json("/v1/openapi.json", &tokens[0].1);
    assert!(
        served == document,
        "the served document differs from crates/veil-server/openapi.json"
    );
    let schema = server_crate.join("openapi.json");
    for (role, token) in &tokens {
        let out = Command::new(&tool)
            .arg("--config-file")
            .arg(&config)
            .args(["--no-color", "run"])
            .arg(&schema)
            .args([
                "--url",
                &server.url(),
                "--checks",
                "all",
                "--max-examples",
                "25",
            ])
            .args(["--seed", "20261130", "--request-timeout", "60"])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .current_dir(env.path())
            .output()
            .expect("run schemathesis");
        let report = text(&out.stdout) + &text(&out.stderr);
        assert!(
            out.status.success(),
            "schemathesis as {role} found failures:\n{report}"
        );
        assert!(
            report.contains(&format!("Tested: {operations}")),
            "not all {operations} operations were tested:\n{report}"
        );
    }
    drop(server);
    let out = env.ok(&["audit", "verify"]);
    assert!(out.starts_with("audit log intact"), "{out}");
}
