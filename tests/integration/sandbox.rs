//! Hostile modules against the real wasmtime host: the host survives, the consumer learns only a
//! status code, and the budget and the audit log say what happened.
use std::time::Duration;

use veil_engine::{EngineConfig, JobState, Veil};
use veil_sandbox::{Sandbox, SandboxConfig, SandboxError, UnitFault};

use crate::common::*;

/// A module with the version-1 exports whose map body is `body` (a WAT instruction sequence that
/// must leave an i64 on the stack).
fn module(body: &str) -> Vec<u8> {
    module_with("", body)
}

fn module_with(extra: &str, body: &str) -> Vec<u8> {
    wat_module(extra, body)
}

fn small_sandbox() -> Sandbox {
    Sandbox::new(
        SandboxConfig::builder()
            .fuel_per_unit(2_000_000)
            .memory_per_instance(4 << 20)
            .unit_deadline(Duration::from_millis(200))
            .max_concurrent_instances(4)
            .build(),
    )
    .unwrap()
}

fn rejected(sandbox: &Sandbox, wasm: &[u8]) -> String {
    match sandbox.compile(wasm) {
        Err(SandboxError::ModuleRejected(m)) => m,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("module accepted"),
    }
}

#[test]
fn cpu_bombs_are_stopped_by_fuel_and_by_the_deadline() {
    let sb = small_sandbox();
    let looping = sb.compile(&module("(loop br 0) i64.const 0")).unwrap();
    assert_eq!(
        looping.run_unit(&[]).result.unwrap_err(),
        UnitFault::OutOfFuel
    );
    // Infinite loop in the start function: stopped during instantiation.
    let start = sb
        .compile(&module_with(
            "(func $spin (loop br 0)) (start $spin)",
            "i64.const 0",
        ))
        .unwrap();
    assert_eq!(
        start.run_unit(&[]).result.unwrap_err(),
        UnitFault::OutOfFuel
    );
    // With effectively unlimited fuel the epoch deadline ends it instead.
    let sb2 = Sandbox::new(
        SandboxConfig::builder()
            .fuel_per_unit(u64::MAX / 2)
            .unit_deadline(Duration::from_millis(50))
            .max_concurrent_instances(2)
            .build(),
    )
    .unwrap();
    let looping2 = sb2.compile(&module("(loop br 0) i64.const 0")).unwrap();
    assert_eq!(
        looping2.run_unit(&[]).result.unwrap_err(),
        UnitFault::Deadline
    );
}

#[test]
fn memory_and_stack_bombs_are_contained() {
    let sb = small_sandbox();
    let grow = sb
        .compile(&module(
            "(loop (drop (memory.grow (i32.const 16))) br 0) i64.const 0",
        ))
        .unwrap();
    assert!(matches!(
        grow.run_unit(&[]).result.unwrap_err(),
        UnitFault::ResourceLimit(_) | UnitFault::OutOfFuel
    ));
    let recurse = sb
        .compile(&module_with("(func $r (call $r))", "call $r i64.const 0"))
        .unwrap();
    assert!(matches!(
        recurse.run_unit(&[]).result.unwrap_err(),
        UnitFault::ResourceLimit(_)
    ));
    // A huge declared initial memory is rejected before anything runs.
    let huge = wat::parse_str(
        r#"(module (memory (export "memory") 1000)
             (func (export "veil_abi_v1_alloc") (param i32) (result i32) i32.const 0)
             (func (export "veil_abi_v1_map") (param i32 i32) (result i64) i64.const 0))"#,
    )
    .unwrap();
    let why = rejected(&sb, &huge);
    assert!(why.contains("initial memory"), "{why}");
}

#[test]
fn imports_beyond_the_interface_are_rejected_before_running() {
    let sb = small_sandbox();
    let wasi = module_with(
        r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
        "i64.const 0",
    );
    assert!(rejected(&sb, &wasi).contains("wasi_snapshot_preview1.fd_write"));
    let unknown = module_with(
        r#"(import "veil_abi_v1" "read_file" (func (param i32)))"#,
        "i64.const 0",
    );
    assert!(rejected(&sb, &unknown).contains("veil_abi_v1.read_file"));
    let wrong_type = module_with(
        r#"(import "veil_abi_v1" "log" (func (param i64)))"#,
        "i64.const 0",
    );
    assert!(rejected(&sb, &wrong_type).contains("wrong type"));
    let v2 = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "veil_abi_v2_alloc") (param i32) (result i32) i32.const 0)
             (func (export "veil_abi_v2_map") (param i32 i32) (result i64) i64.const 0))"#,
    )
    .unwrap();
    assert!(rejected(&sb, &v2).contains("another Veil ABI version"));
    assert!(rejected(&sb, b"not wasm at all").contains("not a WebAssembly"));
}

#[test]
fn bad_output_is_refused_and_logs_stay_bounded() {
    let sb = small_sandbox();
    // Output pointer far outside memory.
    let oob = sb.compile(&module("i64.const 0x7fff000000000010")).unwrap();
    assert!(matches!(
        oob.run_unit(&[]).result.unwrap_err(),
        UnitFault::BadOutput(_)
    ));
    // A hostile count in the output header: refused by the decoder, nothing allocated.
    let count = sb
        .compile(&module_with(
            r#"(data (i32.const 0) "\ff\ff\ff\ff")"#,
            "i64.const 4",
        ))
        .unwrap();
    assert!(
        matches!(count.run_unit(&[]).result.unwrap_err(), UnitFault::BadOutput(m) if m.contains("contributions"))
    );
    // Log spam is truncated.
    let spam = sb.compile(&module_with(
        r#"(import "veil_abi_v1" "log" (func $log (param i32 i32)))"#,
        "(local $i i32) (loop (call $log (i32.const 0) (i32.const 1000)) (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if 0 (i32.lt_u (local.get $i) (i32.const 100)))) i64.const 0",
    ))
    .unwrap();
    let out = spam.run_unit(&[]);
    assert!(out.log.len() < 4096 + 100 && out.log.ends_with("[log truncated]\n"));
}

#[test]
fn state_does_not_carry_between_units() {
    // A module that counts calls in a global and emits the count: every unit must see 1.
    let sb = small_sandbox();
    let counter = sb
        .compile(&module_with(
            r#"(global $n (mut i32) (i32.const 0))
               (data (i32.const 0) "\01\00\00\00\00\00\00\00\00\00\00\00")"#,
            // out = [count=1][nkeys=0][nvals=0]: then emit the global as a second... keep it simple:
            // increment and trap if the global was already non-zero.
            "(if (i32.ne (global.get $n) (i32.const 0)) (then unreachable)) (global.set $n (i32.const 1)) i64.const 12",
        ))
        .unwrap();
    for _ in 0..5 {
        assert!(
            counter.run_unit(&[]).result.is_ok(),
            "state leaked between instances"
        );
    }
    // A runner shares a store between consecutive units (16 by default), never an instance: a
    // memory cell and a global set by one unit are unset for the next, across store changes.
    let marker = sb
        .compile(&module_with(
            r#"(global $g (mut i32) (i32.const 0))
               (data (i32.const 0) "\01\00\00\00\00\00\00\00\00\00\00\00")"#,
            "(if (i32.or (global.get $g) (i32.load (i32.const 4000))) (then unreachable)) \
             (global.set $g (i32.const 1)) (i32.store (i32.const 4000) (i32.const 1)) \
             (if (local.get $len) (then unreachable)) i64.const 12",
        ))
        .unwrap();
    let mut runner = marker.runner();
    for unit in 0..40 {
        assert!(
            runner.run_unit(&[]).result.is_ok(),
            "unit {unit} saw the previous unit's state"
        );
    }
    // A unit that marks its state and then traps (non-empty input) leaves nothing for the next.
    assert!(runner.run_unit(&[1]).result.is_err());
    assert!(runner.run_unit(&[]).result.is_ok());
}

/// Engine-level: a looping module on a real dataset. Every unit faults and contributes nothing;
/// the job releases like any other (faults never change what the consumer observes), the host
/// lives on, the budget is charged, the holder's log says why, and the consumer sees no trap text.
#[test]
fn hostile_job_releases_like_any_other_and_host_lives_on() {
    let env = Env::new();
    env.setup("auto");
    let loop_wasm = module("(loop br 0) i64.const 0");
    std::fs::write(env.path().join("modules/loop.wasm"), &loop_wasm).unwrap();
    let bomb = module("(loop (drop (memory.grow (i32.const 16))) br 0) i64.const 0");
    std::fs::write(env.path().join("modules/bomb.wasm"), &bomb).unwrap();
    let config = EngineConfig::builder()
        .sandbox(
            SandboxConfig::builder()
                .fuel_per_unit(1_000_000)
                .memory_per_instance(8 << 20)
                .max_concurrent_instances(8)
                .build(),
        )
        .workers(2)
        .build();
    let mut veil = Veil::open(&env.data_dir(), config).unwrap();
    for (name, file) in [("loop", "loop.wasm"), ("bomb", "bomb.wasm")] {
        let m = env.write(
            &format!("{name}.toml"),
            &manifest_for(&format!("modules/{file}"), &["educ"], 1, 0.1),
        );
        let outcome = veil.submit_job(&consumer(), &m).unwrap();
        assert_eq!(outcome.state, JobState::Released, "{name}");
        let info = veil.job(&outcome.job).unwrap();
        assert_eq!(info.code, None);
        // No unit contributed, so no data-chosen group passed partition selection.
        assert!(
            veil.job_result(&consumer(), &outcome.job)
                .unwrap()
                .rows
                .is_empty()
        );
        let logs = veil.job_logs(&holder(), &outcome.job).unwrap().join("\n");
        assert!(
            logs.contains("out_of_fuel") || logs.contains("resource_limit"),
            "{logs}"
        );
    }
    // Both jobs were charged (budget is spent before the run, whatever the outcome).
    let b = veil.budget(&consumer()).unwrap();
    assert_eq!(b[0].spent, "0.2");
    // The host is alive: a good job still runs in the same process.
    let good = env.write("good.toml", &income_manifest(0.5));
    assert_eq!(
        veil.submit_job(&consumer(), &good).unwrap().state,
        JobState::Released
    );
    veil.verify_audit().unwrap();
    // Compiled code went to the store's on-disk module cache, so other processes skip compiling.
    let cached = walk_files(&env.data_dir().join("module-cache"));
    assert!(cached > 0, "no compiled modules cached on disk");
    // The consumer's view through the binary: released, as for an honest job.
    let status = env.ok(&["--as", CONSUMER, "job", "status", "job-000001"]);
    assert_eq!(status.trim(), "job-000001 released");
}

fn walk_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk_files(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A component (the Python guests' shape) whose `run-block` body is `body`, with WASI's
/// monotonic clock and pollables imported. `body` may call `$subscribe` (`(param i64) (result
/// i32)`, a pollable handle), `$ready` (`(param i32) (result i32)`) and `$now` (`(result i64)`),
/// and must leave nothing on the stack; the block then outputs zero contributions.
fn clock_component(body: &str) -> Vec<u8> {
    let text = format!(
        r#"(component
  (import "wasi:io/poll@0.2.0" (instance $poll
    (export "pollable" (type (sub resource)))
    (export "[method]pollable.ready" (func (param "self" (borrow 0)) (result bool)))
  ))
  (alias export $poll "pollable" (type $pollable))
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
    (alias outer 1 $pollable (type $p))
    (export "pollable" (type $pe (eq $p)))
    (export "now" (func (result u64)))
    (export "subscribe-duration" (func (param "when" u64) (result (own $pe))))
  ))
  (core module $mem_m
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (global.get $bump))
      (global.set $bump (i32.add (global.get $bump) (local.get 3)))
      (local.get $at))
  )
  (core instance $mem (instantiate $mem_m))
  (core func $subscribe_l (canon lower (func $clock "subscribe-duration")))
  (core func $now_l (canon lower (func $clock "now")))
  (core func $ready_l (canon lower (func $poll "[method]pollable.ready")))
  (core instance $imports
    (export "subscribe" (func $subscribe_l))
    (export "now" (func $now_l))
    (export "ready" (func $ready_l))
  )
  (core module $main_m
    (import "host" "subscribe" (func $subscribe (param i64) (result i32)))
    (import "host" "now" (func $now (result i64)))
    (import "host" "ready" (func $ready (param i32) (result i32)))
    (import "mem" "memory" (memory 1))
    ;; Output: a pointer/length pair at 16 pointing at four zero bytes at 32 (no contributions).
    (func (export "run") (param i32 i32) (result i32)
      {body}
      (i32.store (i32.const 16) (i32.const 32))
      (i32.store (i32.const 20) (i32.const 4))
      (i32.const 16))
  )
  (core instance $main (instantiate $main_m
    (with "host" (instance $imports))
    (with "mem" (instance $mem))
  ))
  (func (export "run-block") (param "input" (list u8)) (result (list u8))
    (canon lift (core func $main "run") (memory (core memory $mem "memory"))
      (realloc (core func $mem "realloc"))))
)"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Sleeping is not a way to spend time: in a block, a pollable on WASI's monotonic clock is ready
/// at once, so a guest that waits an hour for one person (and a deadline the job cannot miss)
/// waits for nothing; its time stays bounded by fuel.
#[test]
fn a_component_cannot_sleep() {
    let sandbox = small_sandbox();
    let wasm = clock_component(
        "(if (i32.eqz (call $ready (call $subscribe (i64.const 3600000000000)))) (then unreachable))",
    );
    let module = sandbox.compile(&wasm).unwrap();
    let outcome = module.runner().run_block(&[], 1);
    assert!(
        matches!(&outcome.result, Ok(c) if c.is_empty()),
        "{:?}",
        outcome.result
    );
}

/// WASI calls cost fuel like `log` does, so a block cannot buy time with cheap host calls: a loop
/// of clock reads that costs a few hundred thousand instructions runs out of fuel.
#[test]
fn a_components_host_calls_cost_fuel() {
    let sandbox = small_sandbox();
    let reads = |n: u32| {
        clock_component(&format!(
            "(local $i i32) (local.set $i (i32.const {n}))
             (loop $l (drop (call $now)) (local.set $i (i32.sub (local.get $i) (i32.const 1)))
                      (br_if $l (local.get $i)))"
        ))
    };
    // Ten reads fit in a unit's fuel; 100,000 would take ~600,000 instructions, well within the
    // 2,000,000 fuel, but not at the host-call price.
    let few = sandbox.compile(&reads(10)).unwrap();
    assert!(few.runner().run_block(&[], 1).result.is_ok());
    let many = sandbox.compile(&reads(100_000)).unwrap();
    let outcome = many.runner().run_block(&[], 1);
    assert!(
        matches!(outcome.result, Err(UnitFault::OutOfFuel)),
        "{:?}",
        outcome.result
    );
}

/// Bounded fuzzing of the module validator: mutations of a valid module (with a declared-columns
/// section) are compiled or rejected as a bad module — never a panic, never another error — and
/// whatever compiles still runs a unit within its limits.
#[test]
fn mutated_modules_are_compiled_or_rejected_never_a_panic() {
    let sandbox = small_sandbox();
    let valid = module_with(
        r#"(@custom "veil_abi_v1_columns" "educ\0a")
           (func $spin (param i32) (result i32) local.get 0)"#,
        "i64.const 0",
    );
    sandbox.compile(&valid).expect("the seed module is valid");
    let mut m = veil_abi::mutation::Mutator::new(0x3a5d);
    let input = {
        let mut enc = veil_abi::UnitEncoder::new(&[("educ", veil_abi::ColumnType::Int)]);
        enc.begin_row();
        enc.push_int(12);
        enc.finish().to_vec()
    };
    let (mut compiled, mut rejected_count) = (0, 0);
    for case in 0..400 {
        let bytes = m.mutate(&valid);
        match sandbox.compile(&bytes) {
            Ok(module) => {
                compiled += 1;
                let _ = module.run_unit(&input);
            }
            Err(SandboxError::ModuleRejected(_)) => rejected_count += 1,
            Err(e) => panic!("case {case}: {e}"),
        }
    }
    assert!(rejected_count > 0 && compiled + rejected_count == 400);
}
