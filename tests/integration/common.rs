//! Shared helpers: a temporary data directory, the real `veil` binary, small datasets.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const HOLDER: &str = "clinic";
pub const CONSUMER: &str = "researcher";

/// The test holder, as the engine's caller (for tests that drive the engine directly).
pub fn holder() -> veil_engine::Caller {
    veil_engine::Caller::new(HOLDER, veil_engine::Role::Holder)
}

/// The test consumer, as the engine's caller.
pub fn consumer() -> veil_engine::Caller {
    veil_engine::Caller::new(CONSUMER, veil_engine::Role::Consumer)
}

/// The `veil` binary built by `cargo build -p veil-cli` (scripts/test.sh does it first).
pub fn veil_bin() -> PathBuf {
    if let Ok(p) = std::env::var("VEIL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("veil");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p veil-cli` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        veil_examples::write_all(&env.path().join("modules")).expect("write modules");
        env
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }
    /// Runs `veil --data-dir <data> <args>`.
    pub fn veil(&self, args: &[&str]) -> Output {
        Command::new(veil_bin())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .output()
            .expect("run veil")
    }
    /// Runs veil and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.veil(args);
        assert!(
            out.status.success(),
            "veil {args:?} failed:\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, contents).expect("write file");
        p
    }
    /// Registers the people dataset and sets the standard policy (approval as given).
    pub fn setup(&self, approval: &str) {
        self.setup_with_policy(&policy(approval));
    }
    /// Registers the people dataset and sets the given policy text.
    pub fn setup_with_policy(&self, policy_text: &str) {
        self.setup_with(&people_csv(), policy_text);
    }
    /// Registers `csv` as the dataset `people` (privacy unit `person_id`) owned by the holder, and
    /// sets the given policy text.
    pub fn setup_with(&self, csv_text: &str, policy_text: &str) {
        self.add_parties();
        let csv = self.write("people.csv", csv_text);
        self.ok(&[
            "dataset",
            "add",
            csv.to_str().unwrap(),
            "--name",
            "people",
            "--as",
            HOLDER,
            "--privacy-unit",
            "person_id",
        ]);
        let policy = self.write("policy.toml", policy_text);
        self.ok(&[
            "--as",
            HOLDER,
            "policy",
            "set",
            "people",
            policy.to_str().unwrap(),
        ]);
    }
    /// Creates the test's holder and consumer principals (as the host's operator), as a real
    /// deployment does before they act.
    pub fn add_parties(&self) {
        for (name, role) in [(HOLDER, "holder"), (CONSUMER, "consumer")] {
            self.ok(&["admin", "add-principal", name, "--role", role]);
        }
    }
    /// Writes the job manifest `text` to `file` and submits it as the consumer; the command's
    /// output, for callers that expect it to fail.
    pub fn submit_manifest(&self, file: &str, text: &str) -> Output {
        let path = self.write(file, text);
        self.veil(&["--as", CONSUMER, "job", "submit", path.to_str().unwrap()])
    }
    /// Writes `text` to `file` and sets it as the holder's policy on `people`; the command's
    /// output, for callers that expect it to fail.
    pub fn set_policy(&self, file: &str, text: &str) -> Output {
        let path = self.write(file, text);
        self.veil(&[
            "--as",
            HOLDER,
            "policy",
            "set",
            "people",
            path.to_str().unwrap(),
        ])
    }
    /// A snapshot of everything a failed command must leave unchanged.
    pub fn snapshot(&self) -> String {
        let mut s = self.ok(&["audit", "log", "--format", "json"]);
        s += &self.ok(&["dataset", "list", "--format", "json"]);
        let mut files: Vec<String> = walk(&self.data_dir().join("datasets"));
        files.sort();
        s += &files.join("\n");
        s
    }
}

fn walk(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    rd.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// 400 people in two big education groups plus 2 graduates (a group too small to release).
/// Each person has 1–2 income rows; `ssn` is forbidden by the policy.
pub fn people_csv() -> String {
    let mut s = String::from("person_id,year,state,age,educ,weekly_income,ssn\n");
    for id in 0..402 {
        let educ = if id >= 400 {
            20
        } else if id % 2 == 0 {
            12
        } else {
            16
        };
        let state = ["CA", "NY", "TX", "OH"][id % 4];
        let age = 20 + (id * 7) % 60;
        let income = if educ == 12 {
            700.0
        } else if educ == 16 {
            1300.0
        } else {
            2500.0
        } + (id % 10) as f64;
        for year in 0..(1 + id % 2) {
            s += &format!(
                "{id},{},{state},{age},{educ},{income:.2},900-00-{id:04}\n",
                2022 + year
            );
        }
    }
    s
}

pub fn policy(approval: &str) -> String {
    format!(
        r#"privacy_unit = "person_id"
consumers = ["{CONSUMER}"]
approval = "{approval}"
min_units_per_group = 20
max_groups_per_unit = 1
max_units = 500

[dp]
epsilon_per_job = 1.0
epsilon_total = 1.5

[columns]
year = {{ class = "public" }}
state = {{ class = "quasi" }}
age = {{ class = "quasi", bounds = [16, 99] }}
educ = {{ class = "public", bounds = [0, 20] }}
weekly_income = {{ class = "sensitive", bounds = [0, 10000] }}
ssn = {{ class = "forbidden" }}
"#
    )
}

pub fn income_manifest(epsilon: f64) -> String {
    format!(
        r#"dataset = "people"
module = "modules/income_by_education.wasm"
purpose = "wages"
columns = ["educ", "weekly_income"]
epsilon = {epsilon}

[output]
keys = ["education"]
values = [{{ name = "weekly_income", bounds = [0, 2000], aggregate = "mean" }}]
"#
    )
}

pub fn manifest_for(module: &str, columns: &[&str], keys: usize, epsilon: f64) -> String {
    let cols: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
    let keys: Vec<String> = (0..keys).map(|i| format!("\"k{i}\"")).collect();
    format!(
        r#"dataset = "people"
module = "{module}"
columns = [{}]
epsilon = {epsilon}

[output]
keys = [{}]
values = [{{ name = "v", bounds = [0, 1000] }}]
"#,
        cols.join(", "),
        keys.join(", ")
    )
}

/// A core module with Veil's version-1 exports: `extra` adds declarations (imports, globals, data,
/// helper functions) and `body` is the map function's body, which must leave an i64 on the stack.
/// The unit's input is placed at 32 KiB, so data segments below that stay intact.
pub fn wat_module(extra: &str, body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
             {extra}
             (memory (export "memory") 1)
             (func (export "veil_abi_v1_alloc") (param i32) (result i32) i32.const 32768)
             (func (export "veil_abi_v1_map") (param $in i32) (param $len i32) (result i64) {body}))"#
    ))
    .expect("valid WAT")
}

/// A WAT data segment at offset 0 holding `contributions` as the ABI encodes them, and the map
/// body that returns it.
pub fn emitting(contributions: &[veil_abi::Contribution]) -> (String, String) {
    let mut bytes = Vec::new();
    veil_abi::encode_contributions(contributions, &mut bytes);
    (
        format!("(data (i32.const 0) \"{}\")", wat_bytes(&bytes)),
        format!("i64.const {}", bytes.len()),
    )
}

pub fn wat_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

pub fn contribution(key: &[&str], values: &[f64]) -> veil_abi::Contribution {
    veil_abi::Contribution {
        key: key.iter().map(|k| k.to_string()).collect(),
        values: values.to_vec(),
    }
}

/// A `veil serve` process on a loopback port, its log in the environment's folder. Killed (SIGKILL)
/// when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub addr: String,
}

impl Server {
    /// Starts `veil serve` on `data_dir` with an OS-chosen port and waits until it listens.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        use std::io::BufRead;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("server.log"))
            .expect("server log");
        let mut child = Command::new(veil_bin())
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start veil serve");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().expect("piped"))
            .read_line(&mut line)
            .expect("read the server's first line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        Server { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        self.child.wait().expect("wait for the server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small HTTP client for the tests: every answer as (status, body), errors included.
pub struct Http {
    base: String,
    agent: ureq::Agent,
}

impl Http {
    pub fn new(server: &Server) -> Http {
        Http {
            base: server.url(),
            // A fresh connection per request: the server may answer (401, 403, 413) before reading
            // a large body and then close the connection, which a pooled client would reuse.
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_idle_connections(0)
                .build()
                .into(),
        }
    }

    /// One request; `body` is sent as is with `content_type`.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, &[u8])>,
    ) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let request = ureq::http::Request::builder().method(method).uri(&url);
        let request = match token {
            Some(t) => request.header("Authorization", format!("Bearer {t}")),
            None => request,
        };
        let result = match body {
            Some((content_type, bytes)) => self.agent.run(
                request
                    .header("Content-Type", content_type)
                    .body(bytes.to_vec())
                    .expect("request"),
            ),
            None => self.agent.run(request.body(()).expect("request")),
        };
        let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .expect("body");
        (status, text)
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        self.call("GET", path, token, None)
    }

    /// GET that must answer 200 with JSON.
    pub fn json(&self, path: &str, token: &str) -> serde_json::Value {
        let (status, body) = self.get(path, Some(token));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// Submits a job (manifest text and module bytes) as `token`; returns the answer's JSON.
    pub fn submit(&self, token: &str, manifest: &str, wasm: &[u8]) -> serde_json::Value {
        use base64::Engine as _;
        let body = serde_json::json!({
            "manifest": manifest,
            "module": base64::engine::general_purpose::STANDARD.encode(wasm),
        })
        .to_string();
        let (status, text) = self.call(
            "POST",
            "/v1/jobs",
            Some(token),
            Some(("application/json", body.as_bytes())),
        );
        assert_eq!(status, 201, "submit: {text}");
        serde_json::from_str(&text).expect("JSON")
    }
}

/// A token for the principal `name` with the local admin command (as the host's operator):
/// creates it, or reissues the token of one that exists already (it must have `role`).
pub fn token_for(env: &Env, name: &str, role: &str) -> String {
    let listing = env.ok(&["admin", "principals"]);
    let existing = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name));
    let out = match existing {
        Some(line) => {
            assert_eq!(line.split_whitespace().nth(1), Some(role), "{name}'s role");
            env.ok(&["admin", "reissue-token", name])
        }
        None => env.ok(&["admin", "add-principal", name, "--role", role]),
    };
    out.lines().last().expect("token line").trim().to_owned()
}

/// A guest built by scripts/build-guests.sh into `target/guests` (the C and Python examples).
pub fn built_guest(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guests")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; scripts/build-guests.sh builds it (scripts/test.sh runs it)",
            path.display()
        )
    })
}

/// Compiled code for the large Python component is cached under the workspace's target directory,
/// so repeated test runs on one machine compile it once.
pub fn shared_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/module-cache")
}

/// The Python median guest as a sample-and-aggregate job of 20 blocks.
pub fn python_median_manifest() -> String {
    r#"dataset = "people"
module = "modules/median_income_py.wasm"
purpose = "median wage"
columns = ["weekly_income"]
epsilon = 1.0
blocks = 20

[output]
keys = []
values = [{ name = "median_income", bounds = [500, 2000] }]
"#
    .to_owned()
}

/// Copies the directory tree `from` to `to` (created if missing).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Whether a released cell's value lies within three half-widths of its 95% interval of `exact`:
/// a check that several cells of one seeded release can all pass (a miss has probability below
/// 10⁻³ per cell), where the 95% coverage itself is tested on many releases elsewhere.
pub fn near(cell: &serde_json::Value, exact: f64) -> bool {
    let bound = |i: usize| cell["ci95"][i].as_f64().expect("a cell with an interval");
    let half = (bound(1) - bound(0)) / 2.0;
    (cell["value"].as_f64().expect("a noisy value") - exact).abs() <= 3.0 * half
}
