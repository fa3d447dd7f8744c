//! Guards for the structure: the crates depend on each other exactly as ARCHITECTURE.md's
//! dependency table says, read from `cargo metadata`.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

type Edges = BTreeMap<String, BTreeSet<String>>;

/// The table between the `dependency table` markers of ARCHITECTURE.md.
fn documented() -> Edges {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let start = text
        .find("<!-- dependency table -->")
        .expect("dependency table marker");
    let end = text
        .find("<!-- end dependency table -->")
        .expect("end marker");
    let mut edges = Edges::new();
    for line in text[start..end].lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [krate, deps] = cells[..] else {
            panic!("a table row has two cells: {line}")
        };
        let names = |cell: &str| -> BTreeSet<String> {
            cell.split(',')
                .map(|d| d.trim().trim_matches('`').to_owned())
                .filter(|d| !d.is_empty() && d != "—")
                .collect()
        };
        edges.insert(krate.trim_matches('`').to_owned(), names(deps));
    }
    edges
}

/// Each workspace crate's normal dependencies on other workspace crates, as cargo sees them
/// (the test and bench crates are left out: they may use anything).
fn actual() -> Edges {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let ours: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    let mut edges = Edges::new();
    for p in packages {
        let name = p["name"].as_str().unwrap();
        if matches!(name, "veil-tests" | "veil-benches") {
            continue;
        }
        let deps = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .filter(|d| ours.contains(d))
            .collect();
        edges.insert(name.to_owned(), deps);
    }
    edges
}

#[test]
fn crates_depend_on_each_other_as_architecture_md_says() {
    let (documented, actual) = (documented(), actual());
    let mut differences = Vec::new();
    let crates: BTreeSet<&String> = documented.keys().chain(actual.keys()).collect();
    for krate in crates {
        let (doc, real) = (documented.get(krate), actual.get(krate));
        if doc != real {
            differences.push(format!(
                "{krate}: ARCHITECTURE.md says {doc:?}, Cargo.toml has {real:?}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "change the dependency or the table (and say why):\n{}",
        differences.join("\n")
    );
}
