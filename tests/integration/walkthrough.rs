//! The README's multi-party walkthrough, run as written: a real server, three principals created
//! over HTTP, and every step in remote mode (`--server`, `VEIL_TOKEN`).
use std::process::Command;

use crate::common::*;

/// The `sh` block after the `<!-- walkthrough` marker in README.md.
fn walkthrough_script() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let start = readme.find("<!-- walkthrough").expect("walkthrough marker");
    let block = &readme[start..];
    let body = block.split_once("```sh\n").expect("sh block").1;
    body.split_once("```").expect("end of block").0.to_owned()
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let env = Env::new();
    // The repository layout the walkthrough expects: examples/walkthrough beside target/guests.
    let root = env.path().join("repo");
    let walk = root.join("examples/walkthrough");
    std::fs::create_dir_all(&walk).unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/walkthrough");
    for file in ["people.csv", "policy.toml", "job.toml"] {
        std::fs::copy(source.join(file), walk.join(file)).unwrap();
    }
    let guests = root.join("target/guests");
    std::fs::create_dir_all(&guests).unwrap();
    std::fs::copy(
        env.path().join("modules/income_by_education.wasm"),
        guests.join("income_by_education.wasm"),
    )
    .unwrap();
    // The built binary stands in for target/release; a free port stands in for 8420.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = walkthrough_script()
        .replace(
            "$PWD/target/release",
            veil_bin().parent().unwrap().to_str().unwrap(),
        )
        .replace("127.0.0.1:8420", &format!("127.0.0.1:{port}"));
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &format!("set -m\n{script}\nwait")])
        .current_dir(&root)
        .env_remove("VEIL_SERVER")
        .env_remove("VEIL_TOKEN")
        .env_remove("VEIL_DATA_DIR")
        .output()
        .expect("run bash");
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "walkthrough failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // Each party saw what it should.
    for expected in [
        "registered dataset `clinic:people`: 1200 rows",
        "policy version 1 set on `clinic:people`",
        "awaiting_approval",
        "approved; it is now released",
        "receipt holds: job job-000001 by researcher",
        "audit log intact",
        "jobs by outcome:",
    ] {
        assert!(
            stdout.contains(expected) || stderr.contains(expected),
            "missing {expected:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    // The result table has rows with intervals, and no raw values leaked into the consumer's view.
    assert!(stdout.contains("units (95% CI)"), "{stdout}");
    let log = std::fs::read_to_string(walk.join("serve.log")).unwrap();
    assert!(
        log.contains("stopped"),
        "the server did not shut down cleanly:\n{log}"
    );
}
