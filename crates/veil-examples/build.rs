//! Builds the example guests in `examples/` for wasm32-unknown-unknown so that the `veil` binary
//! (its demo) and the tests can embed them. Runs a nested cargo with its own target directory.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUESTS: &[&str] = &[
    "income_by_education",
    "people_by_age_region",
    "column_probe",
    "trivial",
    "leaky",
    "median_income",
];
const TARGET: &str = "wasm32-unknown-unknown";

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = crate_dir.join("../..");
    let examples = root.join("examples");
    for watched in [
        "examples",
        "crates/veil-guest",
        "crates/veil-abi",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let target_dir = out.join("guest-target");

    if !build(&examples, &target_dir) {
        // A fresh machine may lack the wasm target if the toolchain predates rust-toolchain.toml's
        // list; add it once and retry.
        let _ = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status();
        if !build(&examples, &target_dir) {
            panic!(
                "building the example guests failed; is the {TARGET} target installed (rustup target add {TARGET})?"
            );
        }
    }
    for g in GUESTS {
        let built = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{g}.wasm"));
        std::fs::copy(&built, out.join(format!("{g}.wasm")))
            .unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
    }
}

fn build(examples: &Path, target_dir: &Path) -> bool {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(examples)
        .args([
            "build",
            "--release",
            "--offline",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        // Same setting as .cargo/config.toml: a 16 KiB guest stack keeps per-unit instances small.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Clink-arg=-zstack-size=16384");
    matches!(cmd.status(), Ok(s) if s.success())
}
