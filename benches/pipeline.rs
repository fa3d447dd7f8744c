//! Pipeline benchmark over 1,000,000 generated rows: throughput of each stage and end to end.
//!
//! Run with `cargo bench -p veil-benches` (release profile). Set `VEIL_BENCH_ROWS` to change the
//! size and `VEIL_BENCH_PEOPLE` the number of people (default: half the rows, 2 rows each).
//! The last stage runs the same question as a module job and as a DP SQL job on the same data
//! and compares their run times (the engine's `JobRun::sandbox_time`: scan, grouping, the
//! module or the query, the gate — not the wait for the scheduled release).
//! Results are recorded by hand in benches/README.md.
mod gate_plan;

use std::fmt::Write as _;
use std::time::Instant;

use veil_abi::{ColumnType, Contribution, UnitEncoder};
use veil_engine::{Caller, EngineConfig, Role, Veil};
use veil_policy::Aggregate;
use veil_policy::gate::{Bounder, release};
use veil_sandbox::{Sandbox, SandboxConfig};

const POLICY: &str = r#"privacy_unit = "person_id"
consumers = ["bench"]
approval = "auto"
min_units_per_group = 50
max_groups_per_unit = 1
[dp]
epsilon_per_job = 1.0
epsilon_total = 100.0
[columns]
educ = { class = "public", bounds = [0, 40] }
weekly_income = { class = "sensitive", bounds = [0, 10000] }
"#;

const MANIFEST: &str = r#"dataset = "bench"
module = "income_by_education.wasm"
columns = ["educ", "weekly_income"]
epsilon = 1.0
[output]
keys = ["education"]
values = [{ name = "weekly_income", bounds = [0, 5000], aggregate = "mean" }]
"#;

fn rate(n: u64, secs: f64) -> String {
    let r = n as f64 / secs;
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else {
        format!("{:.0} k/s", r / 1e3)
    }
}

fn main() {
    let rows: u64 = std::env::var("VEIL_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let people: u64 = std::env::var("VEIL_BENCH_PEOPLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(rows / 2)
        .clamp(1, rows);
    // Education levels (the groups): `VEIL_BENCH_GROUPS`, default 13, at most 32.
    let groups: u64 = std::env::var("VEIL_BENCH_GROUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(13)
        .clamp(1, 32);
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "Veil pipeline benchmark: {rows} rows, {people} people, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    // Input file.
    let mut csv = String::with_capacity(rows as usize * 24);
    csv.push_str("person_id,educ,weekly_income\n");
    for i in 0..rows {
        let person = i % people;
        let _ = writeln!(
            csv,
            "{person},{},{}.{:02}",
            8 + person % groups,
            300 + (person * 7919) % 2500,
            i % 100
        );
    }
    let csv_path = dir.path().join("bench.csv");
    std::fs::write(&csv_path, csv).expect("write csv");
    let per_person = rows.div_ceil(people);
    let policy = POLICY.replace(
        "max_groups_per_unit = 1",
        &format!("max_groups_per_unit = 1\nmax_units = {people}\nmax_rows_per_unit = {per_person}"),
    );
    std::fs::write(dir.path().join("policy.toml"), policy).expect("write policy");
    std::fs::write(dir.path().join("job.toml"), MANIFEST).expect("write manifest");
    std::fs::write(
        dir.path().join("income_by_education.wasm"),
        veil_examples::INCOME_BY_EDUCATION,
    )
    .expect("write module");

    // Stage 1: ingest (CSV → Parquet, content hash, catalog).
    let mut veil = Veil::open(&dir.path().join("data"), EngineConfig::default()).expect("open");
    let holder = Caller::new("holder", Role::Holder);
    let t = Instant::now();
    veil.register_dataset(
        &holder,
        &csv_path,
        "bench",
        Some("person_id"),
        Default::default(),
    )
    .expect("register");
    let ingest = t.elapsed().as_secs_f64();
    println!(
        "ingest      {:>8.3} s  {:>12} rows",
        ingest,
        rate(rows, ingest)
    );
    veil.set_policy(&holder, "bench", &dir.path().join("policy.toml"))
        .expect("policy");

    // Stage 2: sandbox alone — one fresh instance per unit, all cores.
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let sandbox = Sandbox::new(
        SandboxConfig::builder()
            .max_concurrent_instances(workers as u32 * 2)
            .build(),
    )
    .expect("sandbox");
    for (name, wasm) in [
        ("income_by_education", veil_examples::INCOME_BY_EDUCATION),
        ("column_probe", veil_examples::COLUMN_PROBE),
    ] {
        let module = sandbox.compile(wasm).expect("compile");
        let t = Instant::now();
        let per_worker = people / workers as u64;
        std::thread::scope(|s| {
            for w in 0..workers {
                let module = &module;
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
                        assert!(out.result.is_ok());
                    }
                });
            }
        });
        let secs = t.elapsed().as_secs_f64();
        let units = per_worker * workers as u64;
        println!(
            "sandbox     {:>8.3} s  {:>12} units ({name}, {:.2} µs/unit/core)",
            secs,
            rate(units, secs),
            secs * 1e6 * workers as f64 / units as f64
        );
    }

    // Stage 3: the gate alone — bounding, DataFusion aggregation, noise, threshold.
    let plan = gate_plan::income_by_education(Aggregate::Mean);
    let contributions: Vec<Vec<Contribution>> = (0..people)
        .map(|u| {
            vec![Contribution {
                key: vec![format!("level {}", u % 13)],
                values: vec![(u % 3000) as f64],
            }]
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let t = Instant::now();
    let mut bounders: Vec<Bounder> = (0..workers).map(|_| Bounder::new(plan.clone())).collect();
    for (u, c) in contributions.into_iter().enumerate() {
        bounders[u % workers].add_unit(u as u64, c);
    }
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::from_os_rng();
    let (rel, _) = rt
        .block_on(release(&plan, bounders, &mut rng))
        .expect("gate");
    let gate = t.elapsed().as_secs_f64();
    println!(
        "gate        {:>8.3} s  {:>12} contributions ({} groups released)",
        gate,
        rate(people, gate),
        rel.rows.len()
    );

    // End to end: submit → pre-check → debit → sandbox → gate → audit → release.
    let t = Instant::now();
    let outcome = veil
        .submit_job(
            &Caller::new("bench", Role::Consumer),
            &dir.path().join("job.toml"),
        )
        .expect("job");
    let e2e = t.elapsed().as_secs_f64();
    println!(
        "end to end  {:>8.3} s  {:>12} rows  ({:?})",
        e2e,
        rate(rows, e2e),
        outcome.state
    );
    module_against_sql(&mut veil, dir.path());
    sql_against_plain(&mut veil, &dir.path().join("data"));
}

/// The DP SQL job against the plain DataFusion query it rewrites, on the same registered
/// Parquet file in the same run: medians of 3 (the DP runs are the engine's run times).
fn sql_against_plain(veil: &mut Veil, data_dir: &std::path::Path) {
    let consumer = Caller::new("bench", Role::Consumer);
    let sql = "dataset = \"bench\"\nsql = 'SELECT educ AS education, COUNT(*) AS people, \
               AVG(weekly_income) AS weekly_income FROM bench GROUP BY educ'\nepsilon = 1.0\n\
               [bounds]\nweekly_income = [0, 5000]\n";
    let record = veil.dataset("holder:bench").expect("dataset");
    let parquet = data_dir
        .join("datasets")
        .join(format!("{}.parquet", record.content_hash));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let time_plain = |query: &str| {
        median(
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    rt.block_on(async {
                        let ctx = datafusion::prelude::SessionContext::new();
                        ctx.register_parquet("t", parquet.to_str().unwrap(), Default::default())
                            .await
                            .unwrap();
                        ctx.sql(query).await.unwrap().collect().await.unwrap()
                    });
                    t.elapsed().as_secs_f64()
                })
                .collect(),
        )
    };
    let plain = time_plain("SELECT educ, COUNT(*), AVG(weekly_income) FROM t GROUP BY educ");
    // The plain query that counts people as the DP job does (each person once per group).
    let distinct = time_plain(
        "SELECT educ, COUNT(DISTINCT person_id), AVG(weekly_income) FROM t GROUP BY educ",
    );
    let dp = median(
        (0..3)
            .map(|_| {
                let job = veil.submit(&consumer, sql, &[]).expect("submit").job;
                veil.run_job(&job).expect("run").sandbox_time.as_secs_f64()
            })
            .collect(),
    );
    println!(
        "plain DataFusion {plain:>8.3} s (COUNT(DISTINCT person): {distinct:.3} s), DP SQL job \
         {dp:>8.3} s (all from the Parquet file): {:.1}× ({:.1}× the distinct count)",
        dp / plain,
        dp / distinct
    );
}

/// The same question — mean weekly income and people by education — as a module job and as a
/// DP SQL job, run by the engine; prints each run's time and their ratio.
fn module_against_sql(veil: &mut Veil, dir: &std::path::Path) {
    let consumer = Caller::new("bench", Role::Consumer);
    let sql = "dataset = \"bench\"\nsql = 'SELECT educ AS education, COUNT(*) AS people, \
               AVG(weekly_income) AS weekly_income FROM bench GROUP BY educ'\nepsilon = 1.0\n\
               [bounds]\nweekly_income = [0, 5000]\n";
    let module = std::fs::read(dir.join("income_by_education.wasm")).expect("module");
    let mut times = Vec::new();
    for (name, text, wasm) in [
        ("module job", MANIFEST, module.as_slice()),
        ("DP SQL job", sql, &[]),
    ] {
        let job = veil.submit(&consumer, text, wasm).expect("submit").job;
        let run = veil.run_job(&job).expect("run");
        let secs = run.sandbox_time.as_secs_f64();
        println!(
            "{name:<11} {secs:>8.3} s  {:>12} units ({:?})",
            run.units, run.state
        );
        times.push(secs);
    }
    println!("module job / DP SQL job: {:.1}×", times[0] / times[1]);
}
