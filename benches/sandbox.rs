//! Sandbox stage alone: privacy units per second, one fresh instance per unit, spread over all
//! cores. Guests: a hand-written WAT module (the floor: instance set-up only), the trivial Rust
//! guest, and the example modules. A component (a Python guest given in `VEIL_BENCH_GUESTS`) is
//! measured in blocks per second instead, as it runs only in block mode.
//!
//! Run with `cargo bench -p veil-benches --bench sandbox`. `VEIL_BENCH_UNITS` sets the number of
//! units per guest (default 400,000); `VEIL_BENCH_GUESTS=a.wasm,b.wasm` measures other modules instead
//! of the examples. Each figure is the median of three runs. Results are recorded by hand in
//! benches/README.md.
use std::time::{Duration, Instant};

use veil_abi::{ColumnType, UnitEncoder};
use veil_sandbox::{CompiledModule, Sandbox, SandboxConfig};

/// Returns one contribution `(["all"], [1.0])`, pre-encoded in the data segment.
const WAT_FLOOR: &str = r#"(module
  (memory (export "memory") 1)
  (data (i32.const 0) "\01\00\00\00\01\00\00\00\03\00\00\00all\01\00\00\00\00\00\00\00\00\00\f0\3f")
  (func (export "veil_abi_v1_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "veil_abi_v1_map") (param i32 i32) (result i64) i64.const 27))"#;

fn run(module: &CompiledModule, units: u64, workers: usize) -> Duration {
    let per_worker = units / workers as u64;
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..workers {
            s.spawn(move || {
                let mut enc = UnitEncoder::new(&[
                    ("educ", ColumnType::Int),
                    ("weekly_income", ColumnType::Float),
                ]);
                let mut runner = module.runner();
                for u in 0..per_worker {
                    enc.reset();
                    for r in 0..2 {
                        enc.begin_row();
                        enc.push_int(12 + ((u + w as u64) % 5) as i64);
                        enc.push_float(700.0 + r as f64);
                    }
                    let out = runner.run_unit(enc.finish());
                    assert!(out.result.is_ok(), "{:?}", out.result);
                }
            });
        }
    });
    t.elapsed()
}

/// Components (Python) run once per block: blocks per second, 100 rows each, fresh instance each.
fn run_blocks(name: &str, module: &CompiledModule, cores: usize) {
    let blocks: u64 = 200;
    let mut enc = UnitEncoder::new(&[("weekly_income", ColumnType::Float)]);
    for r in 0..100 {
        enc.begin_row();
        enc.push_float(700.0 + r as f64);
    }
    let input = enc.finish().to_vec();
    let go = |workers: usize| {
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    let mut runner = module.runner();
                    for _ in 0..blocks / workers as u64 {
                        let out = runner.run_block(&input, 100);
                        assert!(out.result.is_ok(), "{:?} {}", out.result, out.log);
                    }
                });
            }
        });
        t.elapsed().as_secs_f64()
    };
    go(cores);
    for workers in [1, cores] {
        let mut runs: Vec<f64> = (0..3).map(|_| go(workers)).collect();
        runs.sort_by(f64::total_cmp);
        println!(
            "{name:<22} {workers} core(s) {:>9.0} blocks/s {:>6.2} ms/block/core",
            blocks as f64 / runs[1],
            runs[1] * 1e3 * workers as f64 / blocks as f64,
        );
    }
}

fn main() {
    let units: u64 = std::env::var("VEIL_BENCH_UNITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400_000);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut config = SandboxConfig::builder().max_concurrent_instances(cores as u32 * 2);
    // For comparisons: VEIL_BENCH_UNITS_PER_STORE=1 gives every unit its own wasmtime store.
    if let Some(n) = std::env::var("VEIL_BENCH_UNITS_PER_STORE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config = config.units_per_store(n);
    }
    let sandbox = Sandbox::new(config.build()).expect("sandbox");
    let floor = wat::parse_str(WAT_FLOOR).expect("wat");
    println!(
        "Veil sandbox benchmark: {units} units per guest, {cores} cores, {} units per store",
        sandbox.config().units_per_store()
    );
    let mut guests: Vec<(String, Vec<u8>)> = vec![
        ("wat floor".into(), floor),
        ("trivial (Rust)".into(), veil_examples::TRIVIAL.to_vec()),
        (
            "income_by_education".into(),
            veil_examples::INCOME_BY_EDUCATION.to_vec(),
        ),
        (
            "people_by_age_region".into(),
            veil_examples::PEOPLE_BY_AGE_REGION.to_vec(),
        ),
    ];
    // Extra guests to compare (for example other languages' builds): paths, comma-separated.
    if let Ok(paths) = std::env::var("VEIL_BENCH_GUESTS") {
        guests.retain(|(name, _)| name == "wat floor");
        for path in paths.split(',').filter(|p| !p.is_empty()) {
            let wasm = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            guests.push((path.to_owned(), wasm));
        }
    }
    for (name, wasm) in &guests {
        let module = sandbox.compile(wasm).expect("compile");
        if module.is_component() {
            run_blocks(name, &module, cores);
            continue;
        }
        // Warm the pool and the caches first.
        run(&module, 2_000, cores);
        for workers in [1, cores] {
            // The median of three runs: this machine's neighbours make single runs vary by ±15%.
            let mut runs: Vec<f64> = (0..3)
                .map(|_| run(&module, units, workers).as_secs_f64())
                .collect();
            runs.sort_by(f64::total_cmp);
            let n = (units / workers as u64 * workers as u64) as f64;
            let rate = |secs: f64| n / secs;
            println!(
                "{name:<22} {workers} core(s) {:>9.0} units/s  {:>6.2} µs/unit/core  (runs: {:.0}–{:.0})",
                rate(runs[1]),
                runs[1] * 1e6 * workers as f64 / n,
                rate(runs[2]),
                rate(runs[0]),
            );
        }
    }
}
