//! Accuracy of the gate's mechanisms on real data: mean absolute error of a count and a mean by
//! state at ε = 1 over the census extract in `../shared/data/census2000.csv` (one row per
//! person), 200 releases each, before and after issue 15's mechanisms.
//!
//! "Before" is emulated on today's gate with the old costs: a count had to share ε with a value
//! (`W = 2` for a count), and a sum's sensitivity was `max(|lo|, |hi|)`, which the centred sum
//! with bounds `[−hi, hi]` reproduces exactly. "After" is a count-only job (`W = 1`) and the
//! centred sum with bounds `[lo, hi]`. States are the holder's public partitions, so every state
//! is released every time and the errors are over the same cells.
//!
//! Run with `cargo bench -p veil-benches --bench accuracy` (`VEIL_CENSUS` overrides the file);
//! the figures go to benches/README.md by hand.
use std::collections::BTreeMap;
use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use veil_abi::Contribution;
use veil_policy::gate::{self, Bounder, ExactGroups};
use veil_policy::manifest::GateValue;
use veil_policy::{Aggregate, Charge, Epsilon, JobPlan, Noise};

const REPETITIONS: u64 = 200;
/// Bounds of log weekly income for the mean (the extract's range is about −1.6 to 11.7).
const LO: i64 = 0;
const HI: i64 = 12;

/// (state, log weekly income) per person.
fn people() -> Vec<(String, f64)> {
    let path = std::env::var("VEIL_CENSUS").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/census2000.csv"
        )
        .into()
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (state, income) = (col("state"), col("lweekinc"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[state].to_owned(), f[income].parse().expect("a number"))
        })
        .collect()
}

fn plan(states: &[String], values: Vec<GateValue>, count_weight: u32) -> Arc<JobPlan> {
    Arc::new(JobPlan {
        privacy_unit: None,
        columns: vec![],
        keys: vec!["state".into()],
        count_weight,
        values,
        epsilon: Epsilon(1_000_000),
        max_groups_per_unit: 1,
        min_units_per_group: 1,
        max_rows_per_unit: 1,
        blocks: None,
        noise: Noise::Laplace,
        charge: Charge {
            epsilon_pure: Epsilon(1_000_000),
            ..Charge::default()
        },
        public_groups: Some(states.iter().map(|s| vec![s.clone()]).collect()),
        schedule: Default::default(),
        sql: None,
        join: None,
    })
}

fn mean_value(lo: i64, hi: i64) -> GateValue {
    GateValue {
        name: "lweekinc".into(),
        aggregate: Aggregate::Mean,
        lo: lo * 1000,
        hi: hi * 1000,
        weight: 1,
    }
}

/// The exact aggregates of `plan` over the people (computed once; noise is drawn per release).
fn exact(
    plan: &Arc<JobPlan>,
    people: &[(String, f64)],
    rt: &tokio::runtime::Runtime,
) -> ExactGroups {
    let mut bounder = Bounder::new(plan.clone());
    for (unit, (state, income)) in people.iter().enumerate() {
        let values = plan.values.iter().map(|_| *income).collect();
        bounder.add_unit(
            unit as u64,
            vec![Contribution {
                key: vec![state.clone()],
                values,
            }],
        );
    }
    rt.block_on(gate::aggregate(plan, vec![bounder]))
        .expect("aggregates")
        .0
}

/// Mean absolute errors (count, mean) of `REPETITIONS` releases against the true figures.
fn errors(
    plan: &Arc<JobPlan>,
    exact: &ExactGroups,
    truth: &BTreeMap<String, (f64, f64)>,
) -> (f64, Option<f64>) {
    let (mut count_err, mut mean_err, mut cells, mut means) = (0.0, 0.0, 0u64, 0u64);
    for seed in 0..REPETITIONS {
        let release = gate::add_noise(plan, exact, &mut ChaCha20Rng::seed_from_u64(seed));
        for row in &release.rows {
            let (n, mean) = truth[&row.key[0]];
            count_err += (row.units.value - n).abs();
            cells += 1;
            if let Some(m) = row.values.first().and_then(|v| v.mean.as_ref()) {
                mean_err += (m.value() - mean).abs();
                means += 1;
            }
        }
    }
    let has_mean = plan.values.iter().any(|v| v.aggregate == Aggregate::Mean);
    (
        count_err / cells as f64,
        has_mean.then(|| mean_err / means.max(1) as f64),
    )
}

fn main() {
    let people = people();
    let mut truth: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (state, income) in &people {
        let e = truth.entry(state.clone()).or_default();
        e.0 += 1.0;
        e.1 += income;
    }
    for (n, sum) in truth.values_mut() {
        *sum /= *n;
    }
    let states: Vec<String> = truth.keys().cloned().collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    println!(
        "{} people, {} states, ε = 1, G = 1, {REPETITIONS} releases each; mean bounds [{LO}, {HI}]",
        people.len(),
        states.len()
    );
    let cases = [
        (
            "count, before (shares ε with a value: W = 2)",
            plan(&states, vec![mean_value(LO, HI)], 1),
        ),
        ("count, after (count-only: W = 1)", plan(&states, vec![], 1)),
        (
            "mean, before (sensitivity max(|lo|,|hi|) = 12)",
            plan(&states, vec![mean_value(-HI, HI)], 1),
        ),
        (
            "mean, after (centred: (hi − lo)/2 = 6)",
            plan(&states, vec![mean_value(LO, HI)], 1),
        ),
    ];
    for (name, plan) in &cases {
        let exact = exact(plan, &people, &rt);
        let (count, mean) = errors(plan, &exact, &truth);
        match (name.starts_with("count"), mean) {
            (true, _) => println!("{name:<50} count MAE {count:.3}"),
            (false, Some(mean)) => println!("{name:<50} mean MAE {mean:.4}"),
            (false, None) => unreachable!("mean cases have a mean"),
        }
    }
}
