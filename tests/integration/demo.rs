//! The README's main job, `veil demo`, through the real binary (smaller than the default size so
//! the debug build stays quick; the narration and every step are the same).
use crate::common::*;

#[test]
fn demo_runs_every_step_and_leaves_a_verifiable_store() {
    let env = Env::new();
    let out = env.veil(&["demo", "--people", "3000"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    for step in 1..=8 {
        assert!(
            stdout.contains(&format!("== {step}. ")),
            "step {step} missing:\n{stdout}"
        );
    }
    // Both modules released tables with noise scale and intervals.
    assert!(stdout.contains("is released."), "{stdout}");
    assert!(
        stdout.contains("Approved; the job ran and is released."),
        "{stdout}"
    );
    assert!(stdout.contains("scale per cell"), "{stdout}");
    // The over-budget job was refused before running, and the remaining budget is shown.
    assert!(
        stdout.contains(
            "refused before running: the job needs ε = 0.5 but only ε = 0 of 1.5 remains"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("spent ε = 1.5, left ε = 0 of 1.5"),
        "{stdout}"
    );
    // The store is left for inspection and verifies, both in place and offline.
    env.ok(&["audit", "verify"]);
    let key = env.ok(&["keys", "public"]);
    let log = env.data_dir().join("demo/audit.jsonl");
    let out = std::process::Command::new(veil_bin())
        .args([
            "audit",
            "verify",
            "--log",
            log.to_str().unwrap(),
            "--public-key",
            key.trim(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // No raw value of the synthetic census appears in the exported log.
    let csv = std::fs::read_to_string(env.data_dir().join("demo/census.csv")).unwrap();
    let exported = std::fs::read_to_string(&log).unwrap();
    for row in csv.lines().skip(1).take(200) {
        let ssn = row.rsplit(',').next().unwrap();
        assert_eq!(ssn.len(), 11, "census rows end with an ssn: {row}");
        assert!(!exported.contains(ssn), "an ssn leaked into the audit log");
    }
    // As the README runs it: from a working directory, with the default relative `./veil-data`.
    let cwd = env.path().join("newcomer");
    std::fs::create_dir_all(&cwd).unwrap();
    let out = std::process::Command::new(veil_bin())
        .current_dir(&cwd)
        .args(["demo", "--people", "2000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo with the default data dir failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(cwd.join("veil-data/module-cache").is_dir());
    // Running it again replaces its own previous store, but never a directory it did not make.
    env.ok(&["demo", "--people", "3000"]);
    let foreign = env.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), "keep me").unwrap();
    let out = std::process::Command::new(veil_bin())
        .arg("--data-dir")
        .arg(&foreign)
        .arg("demo")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("was not made by `veil demo`"),
        "{}",
        text(&out.stderr)
    );
    assert!(foreign.join("precious.txt").exists());
}
