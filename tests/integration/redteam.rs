//! The red-team suite: hostile modules submitted as real jobs against the real engine (wasmtime,
//! DataFusion, SQLite). SECURITY.md lists the threats; each test here is one attack.
//!
//! Every attack ends in one of three outcomes, and each outcome has one checker that asserts all of
//! what the issue demands:
//! - [`Range::rejected`]: refused before anything runs, with a clear error for the submitter (also
//!   through the `veil` binary); no job, no audit entry, no budget spent — bad input changes nothing.
//! - [`Range::faulted`]: the job fails with a generic code; the consumer sees that code and nothing
//!   else (no result, no logs, no trap text); the holder's log says what happened; the budget is
//!   charged (it was debited before the run); the audit log records the start, the failure and the
//!   denied release.
//! - [`Range::released`]: the module's output went through the gate; the budget is charged and the
//!   audit log records the release and its hash; the test then checks what the gate let through.
//!
//! After every attack [`Range::survives`] proves the host is intact: the audit log verifies and a
//! well-behaved job still runs and releases in the same process.
use std::time::Duration;

use veil_abi::{Contribution, encode_contributions};

use veil_engine::{AuditEntry, EngineConfig, EngineError, JobInfo, JobState, Release, Veil};
use veil_sandbox::{SandboxConfig, SandboxError};

use crate::common::*;

/// ε each attack asks for. The policy's total is large so that every attack can be charged.
const EPSILON: f64 = 0.5;
const EPSILON_MICRO: u64 = 500_000;
/// Groups with fewer (noisy) people are withheld. The largest group one person's age can single
/// out holds 7 people; with count noise of scale 4 (ε = 0.5) it would need noise above +93 to be
/// released, which has probability below 1e-10.
const MIN_UNITS: u64 = 100;

fn redteam_policy() -> String {
    format!(
        r#"privacy_unit = "person_id"
consumers = ["{CONSUMER}"]
approval = "auto"
min_units_per_group = {MIN_UNITS}
max_groups_per_unit = 1
max_units = 500

[dp]
epsilon_per_job = 1.0
epsilon_total = 100.0

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

/// A manifest for `module` reading `columns`, with `keys` key parts and one value in [0, 1000].
fn manifest(module: &str, columns: &[&str], keys: usize) -> String {
    let cols: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
    let keys: Vec<String> = (0..keys).map(|i| format!("\"k{i}\"")).collect();
    format!(
        r#"dataset = "people"
module = "{module}"
purpose = "red team"
columns = [{}]
epsilon = {EPSILON}

[output]
keys = [{}]
values = [{{ name = "v", bounds = [0, 1000], aggregate = "mean" }}]
"#,
        cols.join(", "),
        keys.join(", ")
    )
}

fn default_sandbox() -> SandboxConfig {
    SandboxConfig::builder()
        .fuel_per_unit(2_000_000)
        .memory_per_instance(4 << 20)
        .unit_deadline(Duration::from_millis(500))
        .max_concurrent_instances(4)
        .build()
}

/// One attacker's view of a fresh domain: the people dataset (402 people) under the red-team
/// policy, and an engine with tight sandbox limits.
struct Range {
    env: Env,
    veil: Veil,
    attempts: usize,
}

/// Everything a failed or refused attempt must leave unchanged.
#[derive(Debug, PartialEq)]
struct Footprint {
    audit_entries: usize,
    jobs: usize,
    spent: String,
}

impl Range {
    fn new() -> Range {
        Range::with(default_sandbox())
    }

    fn with(sandbox: SandboxConfig) -> Range {
        let env = Env::new();
        env.setup_with_policy(&redteam_policy());
        let config = EngineConfig::builder().sandbox(sandbox).workers(2).build();
        let veil = Veil::open(&env.data_dir(), config).expect("open engine");
        Range {
            env,
            veil,
            attempts: 0,
        }
    }

    fn footprint(&self) -> Footprint {
        Footprint {
            audit_entries: self.veil.audit_entries().unwrap().len(),
            jobs: self.veil.all_jobs().unwrap().len(),
            spent: self.spent(),
        }
    }

    fn spent(&self) -> String {
        let lines = self.veil.budget(&consumer()).unwrap();
        lines
            .iter()
            .find(|l| l.dataset == format!("{HOLDER}:people"))
            .map(|l| l.spent.clone())
            .unwrap_or_else(|| "0".into())
    }

    /// Writes the module and its manifest; returns the manifest path.
    fn stage(&mut self, wasm: &[u8], columns: &[&str], keys: usize) -> std::path::PathBuf {
        self.attempts += 1;
        let name = format!("attack-{}", self.attempts);
        std::fs::write(self.env.path().join(format!("modules/{name}.wasm")), wasm).unwrap();
        self.env.write(
            &format!("{name}.toml"),
            &manifest(&format!("modules/{name}.wasm"), columns, keys),
        )
    }

    /// The module is refused before it runs: returns the submitter's error text.
    fn rejected(&mut self, wasm: &[u8], expect: &str) -> String {
        let before = self.footprint();
        let path = self.stage(wasm, &["educ"], 1);
        let err = match self.veil.submit_job(&consumer(), &path) {
            Err(EngineError::Sandbox(SandboxError::ModuleRejected(m))) => m,
            Err(other) => panic!("expected a module rejection, got {other:?}"),
            Ok(outcome) => panic!("module accepted: {outcome:?}"),
        };
        assert!(
            err.contains(expect),
            "rejection should mention {expect:?}: {err}"
        );
        assert_eq!(
            self.footprint(),
            before,
            "a rejected module changes nothing"
        );
        // The same answer reaches a submitter using the binary.
        let out = self
            .env
            .veil(&["--as", CONSUMER, "job", "submit", path.to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(expect), "{}", text(&out.stderr));
        assert_eq!(self.footprint(), before);
        self.survives();
        err
    }

    /// Submits a module that is accepted; returns the job as stored.
    fn run(&mut self, wasm: &[u8], columns: &[&str], keys: usize) -> JobInfo {
        let spent_before = self.spent();
        let path = self.stage(wasm, columns, keys);
        let outcome = self
            .veil
            .submit_job(&consumer(), &path)
            .expect("module accepted");
        let info = self.veil.job(&outcome.job).unwrap();
        assert_eq!(info.state, outcome.state);
        // Budget is charged before the run, whatever the outcome.
        let charged = micro(&self.spent()) - micro(&spent_before);
        assert_eq!(
            charged, EPSILON_MICRO,
            "budget charged as the manifest says"
        );
        let events = self.events_of(&info.id);
        assert!(
            events.iter().any(|e| e["kind"] == "job_started"
                && e["epsilon_micro"] == EPSILON_MICRO
                && e["module_hash"] == info.module_hash.as_str()),
            "{events:?}"
        );
        info
    }

    /// The module faulted on units: each faulting unit contributed nothing, and the job released
    /// as any other would — the consumer cannot tell a fault from an honest run. The audit log's
    /// sealed part counts the faults for reviewers; returns the holder's log, which says why.
    fn faulted(&mut self, wasm: &[u8], columns: &[&str], holder_sees: &[&str]) -> String {
        let info = self.run(wasm, columns, 1);
        assert_eq!(info.state, JobState::Released, "{info:?}");
        assert!(info.code.is_none());
        self.veil.job_result(&consumer(), &info.id).unwrap();
        // The logs are for the dataset's owner only: the job's consumer is refused them, and a
        // holder of another dataset is told the job does not exist.
        assert!(matches!(
            self.veil.job_logs(&consumer(), &info.id),
            Err(EngineError::Forbidden(_))
        ));
        let stranger = veil_engine::Caller::new("stranger", veil_engine::Role::Holder);
        assert!(matches!(
            self.veil.job_logs(&stranger, &info.id),
            Err(EngineError::NotFound(_))
        ));
        let events = self.events_of(&info.id);
        assert!(
            events.iter().any(|e| e["kind"] == "job_finished"
                && e["status"] == "completed"
                && e["unit_faults"].as_u64() > Some(0)),
            "{events:?}"
        );
        assert!(events.iter().any(|e| e["kind"] == "release_created"));
        assert!(!events.iter().any(|e| e["kind"] == "release_denied"));
        // What the consumer's binary shows: the state, as for any released job.
        let status = self.env.ok(&["--as", CONSUMER, "job", "status", &info.id]);
        assert_eq!(status.trim(), format!("{} released", info.id));
        let logs = self.veil.job_logs(&holder(), &info.id).unwrap().join("\n");
        for needle in holder_sees {
            assert!(
                logs.contains(needle),
                "holder log lacks {needle:?}:\n{logs}"
            );
        }
        self.survives();
        logs
    }

    /// The job released; returns what the consumer received.
    fn released(&mut self, wasm: &[u8], columns: &[&str], keys: usize) -> Release {
        let info = self.run(wasm, columns, keys);
        assert_eq!(info.state, JobState::Released, "{info:?}");
        let release = self.veil.job_result(&consumer(), &info.id).unwrap();
        let events = self.events_of(&info.id);
        assert!(
            events.iter().any(|e| e["kind"] == "release_created"
                && Some(e["result_hash"].as_str().unwrap()) == info.result_hash.as_deref()),
            "{events:?}"
        );
        for row in &release.rows {
            assert!(row.units.value.is_finite());
            for v in &row.values {
                assert!(
                    v.sum.as_ref().unwrap().value.is_finite()
                        && v.mean.as_ref().is_none_or(|m| m.value().is_finite())
                );
            }
        }
        self.survives();
        release
    }

    fn events_of(&self, job: &str) -> Vec<serde_json::Value> {
        self.veil
            .audit_entries()
            .unwrap()
            .iter()
            .map(|e: &AuditEntry| serde_json::to_value(&e.event).unwrap())
            .filter(|e| e["job"] == job)
            .collect()
    }

    /// The host is intact: the log verifies and an honest job still runs in this process.
    fn survives(&mut self) {
        self.veil.verify_audit().expect("audit log verifies");
        let path = self.env.write(
            "honest.toml",
            &manifest("modules/trivial.wasm", &["educ"], 1),
        );
        let outcome = self
            .veil
            .submit_job(&consumer(), &path)
            .expect("honest job");
        assert_eq!(outcome.state, JobState::Released);
        let release = self.veil.job_result(&consumer(), &outcome.job).unwrap();
        assert_eq!(release.rows.len(), 1);
        assert_eq!(release.rows[0].key, ["all"]);
    }
}

fn micro(eps: &str) -> u64 {
    (eps.parse::<f64>().unwrap() * 1e6).round() as u64
}

/// The map body returns a fixed, valid output after running `prelude`.
fn valid_after(prelude: &str, extra: &str) -> Vec<u8> {
    let (data, ret) = emitting(&[contribution(&["all"], &[1.0])]);
    wat_module(&format!("{extra} {data}"), &format!("{prelude} {ret}"))
}

/// A bare module with Veil's exports but the given memory and table declarations.
fn with_declarations(decls: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module {decls}
             (func (export "veil_abi_v1_alloc") (param i32) (result i32) i32.const 0)
             (func (export "veil_abi_v1_map") (param i32 i32) (result i64) i64.const 0))"#
    ))
    .expect("valid WAT")
}

fn importing(import: &str) -> Vec<u8> {
    wat_module(import, "i64.const 0")
}

/// Offset of the first value in a unit input whose only column is `name` (see `UnitEncoder`):
/// magic, column count, (type, name length, name), row count, then the value's tag byte.
fn first_value_offset(name: &str) -> usize {
    4 + 4 + 1 + 4 + name.len() + 4 + 1
}

// ───────────────────────────── CPU ─────────────────────────────

#[test]
fn cpu_infinite_loop_in_the_start_function() {
    let mut r = Range::new();
    let wasm = valid_after("", "(func $spin (loop br 0)) (start $spin)");
    r.faulted(&wasm, &["educ"], &["out_of_fuel"]);
}

#[test]
fn cpu_infinite_loop_in_map() {
    let mut r = Range::new();
    r.faulted(&valid_after("(loop br 0)", ""), &["educ"], &["out_of_fuel"]);
}

#[test]
fn cpu_infinite_loop_at_the_end_of_a_deep_call_chain() {
    let mut r = Range::new();
    let depth = 500;
    let mut funcs = String::new();
    for i in 0..depth {
        funcs += &format!("(func $f{i} call $f{})\n", i + 1);
    }
    funcs += &format!("(func $f{depth} (loop br 0))");
    r.faulted(
        &valid_after("call $f0", &funcs),
        &["educ"],
        &["out_of_fuel"],
    );
}

#[test]
fn cpu_loop_under_a_generous_sandbox_meets_the_schedules_fuel() {
    // The sandbox would allow nearly unlimited fuel; the job's schedule gives each unit only what
    // its time slot pays for, so the loop runs out of that (the epoch deadline is tested on the
    // sandbox itself, tests/integration/sandbox.rs).
    let sandbox = SandboxConfig::builder()
        .fuel_per_unit(u64::MAX / 2)
        .unit_deadline(Duration::from_millis(50))
        .memory_per_instance(4 << 20)
        .max_concurrent_instances(4)
        .build();
    let mut r = Range::with(sandbox);
    r.faulted(&valid_after("(loop br 0)", ""), &["educ"], &["out_of_fuel"]);
}

#[test]
fn cpu_slow_units_change_neither_outcome_nor_release_time() {
    // Each unit would spin ten million times; the schedule's fuel stops every one of them, the
    // units contribute nothing, and the job releases exactly at the time fixed when it started.
    let sandbox = SandboxConfig::builder()
        .fuel_per_unit(200_000_000)
        .unit_deadline(Duration::from_secs(2))
        .memory_per_instance(4 << 20)
        .max_concurrent_instances(4)
        .build();
    let mut r = Range::with(sandbox);
    let spin = "(local $i i32) (loop (local.set $i (i32.add (local.get $i) (i32.const 1))) \
                (br_if 0 (i32.lt_u (local.get $i) (i32.const 10000000))))";
    r.faulted(&valid_after(spin, ""), &["educ"], &["out_of_fuel"]);
}

// ───────────────────────────── memory and tables ─────────────────────────────

#[test]
fn memory_grow_loop() {
    let mut r = Range::new();
    // Growth beyond what the unit's fuel pays for fails softly (`memory.grow` answers -1), so
    // the loop spins until its fuel is gone.
    let grow = "(loop (drop (memory.grow (i32.const 1))) br 0)";
    r.faulted(&valid_after(grow, ""), &["educ"], &["out_of_fuel"]);
}

#[test]
fn memory_huge_declared_initial_size() {
    let mut r = Range::new();
    let wasm = with_declarations(r#"(memory (export "memory") 30000)"#);
    r.rejected(&wasm, "initial memory pages");
}

#[test]
fn memory_64_bit_or_shared() {
    let mut r = Range::new();
    let wasm = with_declarations(r#"(memory (export "memory") i64 1)"#);
    r.rejected(&wasm, "non-shared 32-bit memory");
}

#[test]
fn memory_several_memories() {
    let mut r = Range::new();
    let wasm = with_declarations(r#"(memory (export "memory") 1) (memory 1) (memory 1)"#);
    r.rejected(&wasm, "more than one memory");
}

#[test]
fn table_grow_loop() {
    let mut r = Range::new();
    let grow = "(loop (drop (table.grow $t (ref.null func) (i32.const 1000))) br 0)";
    r.faulted(
        &valid_after(grow, "(table $t 1 funcref)"),
        &["educ"],
        &["resource_limit"],
    );
}

#[test]
fn table_several_tables() {
    let mut r = Range::new();
    let wasm = with_declarations(
        r#"(memory (export "memory") 1) (table 1 funcref) (table 1 funcref) (table 1 funcref)"#,
    );
    r.rejected(&wasm, "more than one memory or table");
}

#[test]
fn table_huge_declared_size() {
    let mut r = Range::new();
    let wasm = with_declarations(r#"(memory (export "memory") 1) (table 5000000 funcref)"#);
    r.rejected(&wasm, "table of 5000000 elements");
}

#[test]
fn stack_overflow_by_deep_recursion() {
    let mut r = Range::new();
    r.faulted(
        &valid_after("call $r", "(func $r call $r)"),
        &["educ"],
        &["resource_limit", "stack"],
    );
}

// ───────────────────────────── imports ─────────────────────────────

#[test]
fn import_wasi_stdout() {
    let mut r = Range::new();
    let wasm = importing(
        r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
    );
    r.rejected(&wasm, "`wasi_snapshot_preview1.fd_write`");
}

#[test]
fn import_wasi_filesystem() {
    let mut r = Range::new();
    let wasm = importing(
        r#"(import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"#,
    );
    r.rejected(&wasm, "`wasi_snapshot_preview1.path_open`");
}

#[test]
fn import_wasi_sockets() {
    let mut r = Range::new();
    let wasm = importing(
        r#"(import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))"#,
    );
    r.rejected(&wasm, "`wasi_snapshot_preview1.sock_accept`");
}

#[test]
fn import_wasi_clock() {
    let mut r = Range::new();
    let wasm = importing(
        r#"(import "wasi_snapshot_preview1" "clock_time_get" (func (param i32 i64 i32) (result i32)))"#,
    );
    r.rejected(&wasm, "`wasi_snapshot_preview1.clock_time_get`");
}

#[test]
fn import_wasi_random() {
    let mut r = Range::new();
    let wasm = importing(
        r#"(import "wasi_snapshot_preview1" "random_get" (func (param i32 i32) (result i32)))"#,
    );
    r.rejected(&wasm, "`wasi_snapshot_preview1.random_get`");
}

#[test]
fn import_wasi_environment() {
    let mut r = Range::new();
    let wasm = importing(
        r#"(import "wasi_snapshot_preview1" "environ_get" (func (param i32 i32) (result i32)))"#,
    );
    r.rejected(&wasm, "`wasi_snapshot_preview1.environ_get`");
}

#[test]
fn import_wasi_preview2_interface() {
    let mut r = Range::new();
    let wasm = importing(
        r#"(import "wasi:filesystem/types@0.2.0" "[method]descriptor.read" (func (param i32 i64 i64 i32)))"#,
    );
    r.rejected(
        &wasm,
        "`wasi:filesystem/types@0.2.0.[method]descriptor.read`",
    );
}

#[test]
fn import_unknown_host_function() {
    let mut r = Range::new();
    let wasm = importing(r#"(import "veil_abi_v1" "read_raw_rows" (func (param i32)))"#);
    r.rejected(&wasm, "`veil_abi_v1.read_raw_rows`");
}

#[test]
fn import_known_function_with_a_wrong_signature() {
    let mut r = Range::new();
    let wasm = importing(r#"(import "veil_abi_v1" "log" (func (param i64) (result i32)))"#);
    r.rejected(&wasm, "wrong type");
}

#[test]
fn import_host_memory_or_global() {
    let mut r = Range::new();
    let wasm = importing(r#"(import "veil_abi_v1" "secrets" (global i64))"#);
    r.rejected(&wasm, "`veil_abi_v1.secrets`");
}

#[test]
fn module_built_for_another_interface_version() {
    let mut r = Range::new();
    let wasm = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "veil_abi_v2_alloc") (param i32) (result i32) i32.const 0)
             (func (export "veil_abi_v2_map") (param i32 i32) (result i64) i64.const 0))"#,
    )
    .unwrap();
    r.rejected(&wasm, "another Veil ABI version");
}

#[test]
fn module_that_is_a_component() {
    let mut r = Range::new();
    let wasm = wat::parse_str("(component)").unwrap();
    r.rejected(&wasm, "component");
}

// ───────────────────────────── output ─────────────────────────────

#[test]
fn output_claims_four_billion_contributions() {
    let mut r = Range::new();
    let wasm = wat_module(r#"(data (i32.const 0) "\ff\ff\ff\ff")"#, "i64.const 4");
    r.faulted(&wasm, &["educ"], &["bad_output", "contributions"]);
}

#[test]
fn output_with_an_oversized_key() {
    let mut r = Range::new();
    let long = "x".repeat(300);
    let (data, ret) = emitting(&[contribution(&[&long], &[1.0])]);
    r.faulted(
        &wat_module(&data, &ret),
        &["educ"],
        &["bad_output", "key part bytes"],
    );
}

#[test]
fn output_with_too_many_values() {
    let mut r = Range::new();
    let (data, ret) = emitting(&[contribution(&["all"], &[1.0; 17])]);
    r.faulted(
        &wat_module(&data, &ret),
        &["educ"],
        &["bad_output", "values"],
    );
}

#[test]
fn output_larger_than_the_limit() {
    let mut r = Range::new();
    // (ptr 0, len 2 MiB): larger than the 1 MiB output limit, though inside a 4 MiB memory.
    let wasm = wat_module("", "(drop (memory.grow (i32.const 40))) i64.const 2097152");
    r.faulted(&wasm, &["educ"], &["bad_output", "exceeds"]);
}

#[test]
fn output_pointing_outside_memory() {
    let mut r = Range::new();
    let wasm = wat_module("", "i64.const 0x7fff000000000010");
    r.faulted(&wasm, &["educ"], &["bad_output", "outside memory"]);
}

#[test]
fn output_key_that_is_not_utf8() {
    let mut r = Range::new();
    // One contribution, one key part of 2 bytes (0xc3 0x28: invalid UTF-8), one value.
    let data = r#"(data (i32.const 0) "\01\00\00\00\01\00\00\00\02\00\00\00\c3\28\01\00\00\00\00\00\00\00\00\00\f0\3f")"#;
    r.faulted(
        &wat_module(data, "i64.const 26"),
        &["educ"],
        &["bad_output"],
    );
}

#[test]
fn output_nan_payload_encoding_a_secret() {
    // Each person's income is smuggled in the payload bits of a NaN value. The gate replaces any
    // NaN by the lower bound, so the released mean is 0 ± noise rather than anything like the
    // incomes (700 to 2,500, clamped to 1,000).
    let mut r = Range::new();
    let at = first_value_offset("weekly_income");
    let (data, ret) = emitting(&[contribution(&["all"], &[f64::NAN])]);
    // The value's 8 bytes sit at the end of the output; overwrite them with
    // 0x7ff8_0000_0000_0000 | (income bits & mantissa mask).
    let value_at = {
        let mut b = Vec::new();
        encode_contributions(&[contribution(&["all"], &[f64::NAN])], &mut b);
        b.len() - 8
    };
    let body = format!(
        "(i64.store (i32.const {value_at}) (i64.or (i64.const 0x7ff8000000000000) \
           (i64.and (i64.load (i32.add (local.get $in) (i32.const {at}))) (i64.const 0x0007ffffffffffff)))) {ret}"
    );
    let release = r.released(&wat_module(&data, &body), &["weekly_income"], 1);
    assert_eq!(release.rows.len(), 1);
    let mean = release.rows[0].values[0].mean.as_ref().unwrap().value();
    assert!(mean.abs() < 300.0, "NaN payload leaked: mean {mean}");
}

#[test]
fn output_infinities_are_clamped() {
    let mut r = Range::new();
    let (data, ret) = emitting(&[contribution(&["all"], &[f64::INFINITY])]);
    let release = r.released(&wat_module(&data, &ret), &["educ"], 1);
    let mean = release.rows[0].values[0].mean.as_ref().unwrap().value();
    assert!(
        (mean - 1000.0).abs() < 300.0,
        "+∞ must clamp to the upper bound: {mean}"
    );
    let (data, ret) = emitting(&[contribution(&["all"], &[f64::NEG_INFINITY])]);
    let release = r.released(&wat_module(&data, &ret), &["educ"], 1);
    let mean = release.rows[0].values[0].mean.as_ref().unwrap().value();
    assert!(
        mean.abs() < 300.0,
        "−∞ must clamp to the lower bound: {mean}"
    );
}

#[test]
fn output_keys_that_encode_a_persons_value_are_withheld() {
    // The key is the person's age as one character: at most 7 people share one, far below the
    // policy's minimum group size, so the threshold withholds every such group.
    let mut r = Range::new();
    let at = first_value_offset("age");
    let (data, ret) = emitting(&[contribution(&["?"], &[1.0])]);
    let key_at = 12; // count, key parts, key length: then the key's one byte
    let body = format!(
        "(i32.store8 (i32.const {key_at}) (i32.load8_u (i32.add (local.get $in) (i32.const {at})))) {ret}"
    );
    let release = r.released(&wat_module(&data, &body), &["age"], 1);
    assert!(
        release.rows.is_empty(),
        "groups keyed by one person's value were released: {:?}",
        release.rows.iter().map(|row| &row.key).collect::<Vec<_>>()
    );
    assert!(release.suppression_rule.contains(&MIN_UNITS.to_string()));
}

#[test]
fn output_posing_as_many_units() {
    // One unit emits 50 groups, as if it were 50 people. The gate tags every contribution with the
    // unit it actually ran for and keeps only its first group (max_groups_per_unit = 1).
    let mut r = Range::new();
    let names: Vec<String> = (0..50).map(|i| format!("unit-{i}")).collect();
    let contributions: Vec<Contribution> =
        names.iter().map(|n| contribution(&[n], &[1.0])).collect();
    let (data, ret) = emitting(&contributions);
    let release = r.released(&wat_module(&data, &ret), &["educ"], 1);
    let keys: Vec<&str> = release.rows.iter().map(|row| row.key[0].as_str()).collect();
    assert_eq!(keys, ["unit-0"]);
    let people = release.rows[0].units.value;
    assert!((people - 402.0).abs() < 60.0, "{people}");
}

#[test]
fn output_splitting_one_value_to_escape_the_clamp() {
    // 100 contributions of 1,000 to the same group: merged to 100,000 then clamped to 1,000.
    let mut r = Range::new();
    let contributions = vec![contribution(&["all"], &[1000.0]); 100];
    let (data, ret) = emitting(&contributions);
    let release = r.released(&wat_module(&data, &ret), &["educ"], 1);
    let mean = release.rows[0].values[0].mean.as_ref().unwrap().value();
    assert!(mean < 1300.0, "clamp escaped: mean {mean}");
}

#[test]
fn output_of_the_wrong_shape_is_dropped() {
    // The manifest promises one key part; contributions with three are dropped by the gate.
    let mut r = Range::new();
    let (data, ret) = emitting(&[contribution(&["a", "b", "c"], &[1.0])]);
    let release = r.released(&wat_module(&data, &ret), &["educ"], 1);
    assert!(release.rows.is_empty());
}

// ───────────────────────────── side paths ─────────────────────────────

#[test]
fn trap_message_and_log_carrying_raw_values() {
    // The module logs its raw input and then traps. The holder can read both; the consumer gets
    // the code `module_faults` and nothing else.
    let mut r = Range::new();
    let wasm = wat_module(
        r#"(import "veil_abi_v1" "log" (func $log (param i32 i32)))"#,
        "(call $log (local.get $in) (local.get $len)) unreachable",
    );
    r.faulted(&wasm, &["weekly_income"], &["VUN1", "trap", "unreachable"]);
}

#[test]
fn panic_stdout_and_log_carrying_raw_values() {
    // A Rust guest prints a person's income to stdout and stderr, logs it and panics with it.
    let mut r = Range::new();
    let logs = r.faulted(
        veil_examples::LEAKY,
        &["weekly_income"],
        &["log: income=", "panic: income=", "trap"],
    );
    // stdout and stderr lead nowhere: wasm32-unknown-unknown has no such streams.
    assert!(!logs.contains("stdout: income=") && !logs.contains("stderr: income="));
    // Nothing the consumer can list or read mentions the value.
    let listing = r.env.ok(&["--as", CONSUMER, "job", "list"]);
    assert!(!listing.contains("income="), "{listing}");
    let job = r.veil.all_jobs().unwrap()[0].id.clone();
    let result = r.env.veil(&["--as", CONSUMER, "job", "result", &job]);
    let shown = text(&result.stdout) + &text(&result.stderr);
    assert!(!shown.contains("income="), "{shown}");
    let logs_as_consumer = r.env.veil(&["--as", CONSUMER, "job", "logs", &job]);
    assert!(!logs_as_consumer.status.success());
    assert!(!text(&logs_as_consumer.stdout).contains("income="));
}

#[test]
fn log_spam_is_bounded_and_for_the_holder_only() {
    // 50 KB of log per unit (what the unit's fuel pays for: each call costs fuel), for every
    // unit: kept to a few KiB per unit and a bounded number of lines per job, all in the holder's
    // log.
    let mut r = Range::new();
    let spam = "(local $i i32) (loop (call $log (i32.const 0) (i32.const 1000)) \
                (local.set $i (i32.add (local.get $i) (i32.const 1))) \
                (br_if 0 (i32.lt_u (local.get $i) (i32.const 50))))";
    let wasm = valid_after(
        spam,
        r#"(import "veil_abi_v1" "log" (func $log (param i32 i32)))"#,
    );
    let release = r.released(&wasm, &["educ"], 1);
    assert_eq!(release.rows.len(), 1);
    let job = r.veil.all_jobs().unwrap()[0].id.clone();
    let lines = r.veil.job_logs(&holder(), &job).unwrap();
    let bytes: usize = lines.iter().map(String::len).sum();
    assert!(lines.iter().any(|l| l.contains("[log truncated]")));
    assert!(lines.len() <= 2 * 50 + 10, "{} lines", lines.len());
    assert!(bytes < 120 * 5000, "{bytes} bytes of holder log");
    assert!(r.veil.job_logs(&consumer(), &job).is_err());
}

#[test]
fn global_counter_does_not_carry_between_units() {
    // The module counts calls in a global and emits the count. Fresh instances mean every person
    // emits 1; a carried counter would push the mean towards 200.
    let mut r = Range::new();
    let (data, ret) = emitting(&[contribution(&["all"], &[0.0])]);
    let body = format!(
        "(global.set $n (i32.add (global.get $n) (i32.const 1))) \
         (f64.store (i32.const 19) (f64.convert_i32_u (global.get $n))) {ret}"
    );
    let wasm = wat_module(
        &format!("(global $n (mut i32) (i32.const 0)) {data}"),
        &body,
    );
    let release = r.released(&wasm, &["educ"], 1);
    let mean = release.rows[0].values[0].mean.as_ref().unwrap().value();
    // The sum's noise has scale 1000·2/0.5 = 4000 over ~400 people: the mean moves by about 10 per
    // scale, so 100 (a carried counter gives ~200) is crossed by chance with probability ~2e-5.
    assert!(mean < 100.0, "state carried between units: mean {mean}");
}

#[test]
fn memory_buffer_does_not_carry_between_units() {
    // The module marks a memory cell and reports whether it found the mark already set.
    let mut r = Range::new();
    let (data, ret) = emitting(&[contribution(&["fresh"], &[1.0])]);
    // "fresh" → "seen!" when the mark is there (same length, so the encoding stays valid).
    let body = format!(
        "(if (i32.load (i32.const 4000)) (then \
           (i32.store (i32.const 12) (i32.const 0x6e656573)) (i32.store8 (i32.const 16) (i32.const 0x21)))) \
         (i32.store (i32.const 4000) (i32.const 1)) {ret}"
    );
    let release = r.released(&wat_module(&data, &body), &["educ"], 1);
    let keys: Vec<&str> = release.rows.iter().map(|row| row.key[0].as_str()).collect();
    assert_eq!(keys, ["fresh"]);
}

// ───────────────────────────── compile-time abuse ─────────────────────────────

#[test]
fn compile_module_too_large() {
    let mut r = Range::new();
    // A valid module padded with a 9 MiB custom section.
    let mut wasm = valid_after("", "");
    let payload = vec![0u8; 9 << 20];
    let name = b"pad";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    wasm.push(0); // custom section id
    leb128(&mut wasm, section.len() as u64);
    wasm.extend_from_slice(&section);
    r.rejected(&wasm, "bytes; the limit is");
}

#[test]
fn compile_deeply_nested_blocks() {
    let mut r = Range::new();
    let depth = 100_000;
    let body = format!("{}{}", "(block ".repeat(depth), ")".repeat(depth));
    r.rejected(&wat_module("", &format!("{body} i64.const 0")), "nest");
}

#[test]
fn compile_huge_function_body() {
    let mut r = Range::new();
    // 2 million instructions in one function.
    let body = "(drop (i32.const 1))".repeat(1_000_000);
    r.rejected(
        &wat_module("", &format!("{body} i64.const 0")),
        "function body",
    );
}

#[test]
fn compile_not_webassembly() {
    let mut r = Range::new();
    r.rejected(b"#!/bin/sh\nrm -rf /\n", "not a WebAssembly");
    r.rejected(b"\0asm\x01\x00\x00\x00\x01\xff", "invalid module");
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
