//! Privacy engine speed: samples per second for each exact sampler, and the private gate against
//! the plain DataFusion query it replaces, on the same contributions.
//!
//! Run with `cargo bench -p veil-benches --bench privacy`. `VEIL_BENCH_ROWS` sets the number of
//! contributions for the gate comparison (default 20,000,000: one per privacy unit, 13 groups).
//! Each figure is the median of three runs. Results are recorded by hand in benches/README.md.
mod gate_plan;

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Int64Array, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use veil_abi::Contribution;
use veil_policy::Aggregate;
use veil_policy::gate::{self, Bounder};
use veil_policy::mechanisms::{DiscreteGaussian, DiscreteLaplace};

fn median_of_three(mut f: impl FnMut() -> f64) -> f64 {
    let mut runs = [f(), f(), f()];
    runs.sort_by(f64::total_cmp);
    runs[1]
}

/// Samples per second of `sample`, one core, median of three runs of `n` draws.
fn rate(n: u64, mut sample: impl FnMut(&mut ChaCha20Rng) -> i128) -> f64 {
    let mut rng = ChaCha20Rng::from_os_rng();
    let secs = median_of_three(|| {
        let start = Instant::now();
        let mut acc = 0i128;
        for _ in 0..n {
            acc = acc.wrapping_add(sample(&mut rng));
        }
        std::hint::black_box(acc);
        start.elapsed().as_secs_f64()
    });
    n as f64 / secs
}

fn samplers() {
    println!(
        "sampler                                              samples/s (median of 3, one core)"
    );
    for (label, t, s) in [
        ("discrete Laplace b = 1", 1u128, 1u128),
        (
            "discrete Laplace b = 2 (gate: Δ 1, ε 1, 1 value)",
            2_000_000,
            1_000_000,
        ),
        ("discrete Laplace b = 10", 10, 1),
        ("discrete Laplace b = 1000", 1000, 1),
        (
            "discrete Laplace b = 2e6 (fixed-point sum)",
            2_000_000_000_000,
            1_000_000,
        ),
    ] {
        let m = DiscreteLaplace::new(t, s);
        println!("{label:<52} {:>10.0}", rate(2_000_000, |rng| m.sample(rng)));
    }
    for (label, num, den) in [
        ("discrete Gaussian σ = 1", 1u128, 1u128),
        ("discrete Gaussian σ = 10", 100, 1),
        ("discrete Gaussian σ = 1000", 1_000_000, 1),
        (
            "discrete Gaussian σ ≈ 1.4e13 (fixed-point sum)",
            2 * 10u128.pow(26),
            1,
        ),
    ] {
        let m = DiscreteGaussian::new(num, den);
        println!("{label:<52} {:>10.0}", rate(200_000, |rng| m.sample(rng)));
    }
}

fn key(u: u64) -> String {
    format!("level {}", u % 13)
}

fn gate_against_plain(rows: u64) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let plan = gate_plan::income_by_education(Aggregate::Sum);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .build()
        .unwrap();

    // The plain query: what an unprotected system would run on the same contributions.
    let schema = Arc::new(Schema::new(vec![
        Field::new("unit", DataType::UInt64, false),
        Field::new("k0", DataType::Utf8, false),
        Field::new("v0", DataType::Int64, false),
    ]));
    let chunk = 1_000_000u64;
    let partitions: Vec<Vec<RecordBatch>> = (0..cores as u64)
        .map(|c| {
            let mut batches = Vec::new();
            let mut start = c * chunk;
            while start < rows {
                let end = (start + chunk).min(rows);
                let units: Vec<u64> = (start..end).collect();
                batches.push(
                    RecordBatch::try_new(
                        schema.clone(),
                        vec![
                            Arc::new(UInt64Array::from(units.clone())),
                            Arc::new(StringArray::from_iter_values(units.iter().map(|&u| key(u)))),
                            Arc::new(Int64Array::from_iter_values(
                                units.iter().map(|&u| ((u % 3000) * 1000) as i64),
                            )),
                        ],
                    )
                    .unwrap(),
                );
                start += chunk * cores as u64;
            }
            batches
        })
        .collect();
    let plain = median_of_three(|| {
        let ctx = SessionContext::new();
        let table = MemTable::try_new(schema.clone(), partitions.clone()).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        let start = Instant::now();
        let out = rt.block_on(async {
            ctx.sql(
                "SELECT k0, COUNT(DISTINCT unit) AS units, SUM(v0) AS s FROM t \
                 GROUP BY k0 HAVING COUNT(DISTINCT unit) >= 50",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
        });
        std::hint::black_box(out);
        start.elapsed().as_secs_f64()
    });

    // The private gate: bounding in parallel workers, then aggregation, noise and partition
    // selection. In a job each unit's contributions arrive one at a time, freshly decoded from the
    // sandbox; the bench makes them the same way, and measures that making alone (`make`) so it
    // can be taken out: the gate's own cost is `private − make`.
    let per = (rows as usize).div_ceil(cores);
    let make = |u: u64| {
        vec![Contribution {
            key: vec![key(u)],
            values: vec![(u % 3000) as f64],
        }]
    };
    let making = median_of_three(|| {
        let start = Instant::now();
        std::thread::scope(|s| {
            for w in 0..cores {
                s.spawn(move || {
                    let lo = (w * per) as u64;
                    for u in lo..(lo + per as u64).min(rows) {
                        std::hint::black_box(make(u));
                    }
                });
            }
        });
        start.elapsed().as_secs_f64()
    });
    let private = median_of_three(|| {
        let start = Instant::now();
        let bounders: Vec<Bounder> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..cores)
                .map(|w| {
                    let plan = plan.clone();
                    s.spawn(move || {
                        let mut b = Bounder::new(plan);
                        let lo = (w * per) as u64;
                        for u in lo..(lo + per as u64).min(rows) {
                            b.add_unit(u, make(u));
                        }
                        b
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let bounded = start.elapsed().as_secs_f64();
        let mut rng = ChaCha20Rng::from_os_rng();
        let (release, _) = rt
            .block_on(gate::release(&plan, bounders, &mut rng))
            .unwrap();
        assert_eq!(release.rows.len(), 13);
        let total = start.elapsed().as_secs_f64();
        eprintln!(
            "  (one run: making and bounding {bounded:.3} s, aggregation and noise {:.3} s)",
            total - bounded
        );
        total
    });
    let gate_only = private - making;
    println!(
        "gate on {rows} contributions, 13 groups, {cores} cores (median of 3):\n  \
         plain DataFusion COUNT(DISTINCT) … GROUP BY … HAVING  {plain:>7.3} s  ({:.2} M rows/s)\n  \
         private gate incl. making the contributions         {private:>7.3} s\n  \
         making the contributions alone (as the decoder does) {making:>7.3} s\n  \
         private gate (bound, aggregate, noise, select)       {gate_only:>7.3} s  ({:.2} M rows/s)\n  \
         ratio private / plain: {:.2}x",
        rows as f64 / plain / 1e6,
        rows as f64 / gate_only / 1e6,
        gate_only / plain
    );
}

fn main() {
    let rows: u64 = std::env::var("VEIL_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000_000);
    samplers();
    gate_against_plain(rows);
}
