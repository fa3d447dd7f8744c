//! DP SQL: speed against the plain DataFusion query it rewrites, and accuracy on the census
//! extract.
//!
//! Speed: `VEIL_BENCH_ROWS` rows (default 10 M) of `VEIL_BENCH_PEOPLE` people (default 100 k) in
//! 20 groups; the question is count and mean by group. "Plain" is DataFusion's own
//! `SELECT grp, COUNT(*), AVG(x) ... GROUP BY grp` on the same in-memory table; "DP SQL" is the
//! whole SQL job after planning: the rewrite to one row per (person, group), the gate's bounding,
//! exact aggregation and noise (`veil_policy::sql::release`). For scale, the plain query with
//! `COUNT(DISTINCT person_id)` too, which pays for the same per-person grouping. Each figure is
//! the median of 3 runs.
//!
//! Accuracy (when `../shared/data/census2000.csv` exists, or `VEIL_CENSUS`): count and mean of
//! log weekly income by state at ε = 1 over 200 releases through the SQL path, with the states as
//! public partitions, as `benches/accuracy.rs` measures the module path.
//!
//! Run with `cargo bench -p veil-benches --bench sql`; figures go to benches/README.md by hand.
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::prelude::SessionContext;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use veil_policy::{JobManifest, JobPlan, Policy, precheck};

const GROUPS: usize = 20;
const BATCH: usize = 1 << 16;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("person_id", DataType::Int64, false),
        Field::new("grp", DataType::Utf8, false),
        Field::new("x", DataType::Float64, false),
    ]))
}

/// `rows` rows of `people` people, each person in one group, in batches of 65,536 rows over two
/// partitions (one per core): the layout the engine gives a SQL job's table
/// (`veil_catalog::READ_BATCH_ROWS`, and `spread_over_cores` in `veil-engine`'s `execute.rs`).
fn synthetic(rows: usize, people: usize) -> Arc<MemTable> {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let names: Vec<String> = (0..GROUPS).map(|g| format!("g{g:02}")).collect();
    let mut partitions = vec![Vec::new(), Vec::new()];
    let mut done = 0;
    while done < rows {
        let n = BATCH.min(rows - done);
        let ids: Vec<i64> = (0..n).map(|_| rng.random_range(0..people as i64)).collect();
        let groups: Vec<&str> = ids
            .iter()
            .map(|id| names[*id as usize % GROUPS].as_str())
            .collect();
        let xs: Vec<f64> = (0..n).map(|_| rng.random_range(0.0..100.0)).collect();
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(groups)),
                Arc::new(Float64Array::from(xs)),
            ],
        )
        .expect("batch");
        partitions[(done / BATCH) % 2].push(batch);
        done += n;
    }
    Arc::new(MemTable::try_new(schema(), partitions).expect("table"))
}

fn sql_plan(policy: &str, query: &str, schema: &Schema) -> JobPlan {
    let manifest = JobManifest::from_toml(&format!(
        "dataset = \"t\"\nsql = \"{query}\"\nepsilon = 1.0\n"
    ))
    .expect("manifest");
    let policy = Policy::from_toml(policy).expect("policy");
    precheck(&policy, &manifest, schema, "bench").expect("plan")
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn speed(rt: &tokio::runtime::Runtime) {
    let rows = env_or("VEIL_BENCH_ROWS", 10_000_000);
    let people = env_or("VEIL_BENCH_PEOPLE", 100_000);
    let table = synthetic(rows, people);
    let policy = format!(
        "privacy_unit = \"person_id\"\nconsumers = [\"bench\"]\napproval = \"auto\"\n\
         min_units_per_group = 10\nmax_groups_per_unit = 1\nmax_units = {people}\n\
         [dp]\nepsilon_per_job = 1.0\nepsilon_total = 10.0\n[partitions]\ngrp = [{}]\n\
         [columns]\ngrp = {{ class = \"public\" }}\nx = {{ class = \"sensitive\", bounds = [0, 100] }}\n",
        (0..GROUPS)
            .map(|g| format!("\"g{g:02}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let query = "SELECT grp, COUNT(*) AS n, AVG(x) AS m FROM t GROUP BY grp";
    let plan = sql_plan(&policy, query, &schema());
    let plain = plain_query(rt, &table, query);
    // What counting people (not rows) costs DataFusion itself: the floor of any per-person
    // bounding, for comparison.
    let distinct = plain_query(
        rt,
        &table,
        "SELECT grp, COUNT(DISTINCT person_id) AS n, AVG(x) AS m FROM t GROUP BY grp",
    );
    let mut rng = ChaCha20Rng::from_os_rng();
    let dp = median(
        (0..3)
            .map(|_| {
                let start = Instant::now();
                let (release, _) = rt
                    .block_on(veil_policy::sql::release(
                        &plan,
                        table.clone(),
                        &Default::default(),
                        &mut rng,
                    ))
                    .expect("DP SQL");
                assert_eq!(release.rows.len(), GROUPS);
                start.elapsed()
            })
            .collect(),
    );
    println!(
        "speed: {rows} rows, {people} people, {GROUPS} groups: plain DataFusion {:.0} ms, \
         plain with COUNT(DISTINCT person_id) {:.0} ms, DP SQL {:.0} ms, ratio {:.2} \
         (to the distinct count {:.2})",
        plain.as_secs_f64() * 1e3,
        distinct.as_secs_f64() * 1e3,
        dp.as_secs_f64() * 1e3,
        dp.as_secs_f64() / plain.as_secs_f64(),
        dp.as_secs_f64() / distinct.as_secs_f64()
    );
}

/// The median of 3 runs of `query` by DataFusion itself over `table` (as `t`).
fn plain_query(rt: &tokio::runtime::Runtime, table: &Arc<MemTable>, query: &str) -> Duration {
    median(
        (0..3)
            .map(|_| {
                let ctx = SessionContext::new();
                ctx.register_table("t", table.clone()).expect("register");
                let start = Instant::now();
                let batches = rt
                    .block_on(async { ctx.sql(query).await?.collect().await })
                    .expect("plain query");
                assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), GROUPS);
                start.elapsed()
            })
            .collect(),
    )
}

/// (state, log weekly income) per person of the census extract, if it is there.
fn census() -> Option<Arc<MemTable>> {
    let path = std::env::var("VEIL_CENSUS").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/census2000.csv"
        )
        .into()
    });
    let text = std::fs::read_to_string(&path).ok()?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (state, income) = (col("state"), col("lweekinc"));
    let (mut ids, mut states, mut incomes) = (Vec::new(), Vec::new(), Vec::new());
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        ids.push(i as i64);
        states.push(f[state].to_owned());
        incomes.push(f[income].parse::<f64>().expect("a number"));
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("person_id", DataType::Int64, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("lweekinc", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(states)),
            Arc::new(Float64Array::from(incomes)),
        ],
    )
    .ok()?;
    MemTable::try_new(schema, vec![vec![batch]])
        .ok()
        .map(Arc::new)
}

fn accuracy(rt: &tokio::runtime::Runtime) {
    let Some(table) = census() else {
        println!("accuracy: skipped (no census extract; set VEIL_CENSUS)");
        return;
    };
    let ctx = SessionContext::new();
    ctx.register_table("census", table.clone())
        .expect("register");
    let exact = rt
        .block_on(async {
            ctx.sql("SELECT state, COUNT(*), AVG(LEAST(GREATEST(lweekinc, 0), 12)) FROM census GROUP BY state ORDER BY state")
                .await?
                .collect()
                .await
        })
        .expect("exact");
    let mut truth = std::collections::BTreeMap::new();
    for b in &exact {
        let s = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8).expect("cast");
        let s = s.as_any().downcast_ref::<StringArray>().expect("text");
        let n = b
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("count");
        let m = b
            .column(2)
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("mean");
        for r in 0..b.num_rows() {
            truth.insert(s.value(r).to_owned(), (n.value(r) as f64, m.value(r)));
        }
    }
    let states: Vec<String> = truth.keys().map(|s| format!("\"{s}\"")).collect();
    let policy = format!(
        "privacy_unit = \"person_id\"\nconsumers = [\"bench\"]\napproval = \"auto\"\n\
         min_units_per_group = 1\nmax_groups_per_unit = 1\nmax_units = 100000\n\
         [dp]\nepsilon_per_job = 1.0\nepsilon_total = 100.0\n[partitions]\nstate = [{}]\n\
         [columns]\nstate = {{ class = \"public\" }}\nlweekinc = {{ class = \"sensitive\", bounds = [0, 12] }}\n",
        states.join(", ")
    );
    let schema = table.schema();
    let mut rng = ChaCha20Rng::from_os_rng();
    for (label, query) in [
        (
            "count only",
            "SELECT state, COUNT(*) AS n FROM t GROUP BY state",
        ),
        (
            "count and mean",
            "SELECT state, COUNT(*) AS n, AVG(lweekinc) AS m FROM t GROUP BY state",
        ),
    ] {
        let plan = sql_plan(&policy, query, &schema);
        let (mut count_err, mut mean_err, mut cells, mut means) = (0.0, 0.0, 0usize, 0usize);
        for _ in 0..200 {
            let (release, _) = rt
                .block_on(veil_policy::sql::release(
                    &plan,
                    table.clone(),
                    &Default::default(),
                    &mut rng,
                ))
                .expect("release");
            for row in &release.rows {
                let (n, m) = truth[&row.key[0]];
                count_err += (row.units.value - n).abs();
                cells += 1;
                if let Some(mean) = row.values.first().and_then(|v| v.mean.as_ref()) {
                    mean_err += (mean.value() - m).abs();
                    means += 1;
                }
            }
        }
        print!(
            "accuracy ({label}, ε = 1, 200 releases, {} states): count MAE {:.3}",
            truth.len(),
            count_err / cells as f64
        );
        if means > 0 {
            print!(", mean MAE {:.4}", mean_err / means as f64);
        }
        println!();
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    speed(&rt);
    accuracy(&rt);
}
