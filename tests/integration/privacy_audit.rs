//! The empirical privacy audit: runs releases many times on two neighbouring datasets (one privacy
//! unit added) and tests the (ε, δ) claim with a histogram test in the manner of Gilbert and
//! McMillan ("Property testing for differential privacy", 2018), as Google's DP-Auditorium does.
//!
//! # The test
//! Each release is reduced to a bin (the released value's bucket, whether the group was released
//! at all, and whether the value sits off the mechanism's output lattice — the porosity that
//! betrays floating-point noise, after Mironov 2012). For every bin `E`, one-sided Wilson bounds at
//! confidence `1 − 1e-7` per bin (Bonferroni over bins and both directions) give `p_lo(E)` on one
//! dataset and `p_hi(E)` on the other; the claim is refuted when `p_lo(E) − δ > e^ε · p_hi(E)` for
//! some bin and direction. The exact aggregates come from the real gate (`Bounder` and DataFusion);
//! each trial runs the real noise stage ([`gate::add_noise`]) with a seeded ChaCha20, so results
//! are reproducible.
//!
//! # Power
//! With `N = 40,000` releases per dataset, a bin holding 1% of the mass is estimated to within a
//! factor of about 1.3 at this confidence, so a mechanism whose true privacy loss exceeds the claim
//! by a factor of 2 or more in a bin with ≥ 1% of the mass is caught; the negative controls below
//! (noise ÷ 4: true loss 4× the count's share, 2ε in all; no clamping: loss ≈ 100ε; floating-point Laplace: infinite loss on
//! a bin of about 20% mass; an uncalibrated selection threshold: δ off by 100×) are caught with
//! margins far beyond that. A correct mechanism passes with probability at least `1 − 1e-5`, and
//! with fixed seeds the outcome is fixed.
use std::collections::HashMap;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use veil_abi::Contribution;
use veil_policy::gate::{self, Bounder, ExactGroups};
use veil_policy::manifest::GateValue;
use veil_policy::{Aggregate, Charge, Delta, Epsilon, JobPlan, Noise, Release, fixed};

const TRIALS: usize = 40_000;
/// Upper-tail z for 1e-7 per bin (Bonferroni over at most ~200 bins × 2 directions ≈ 4e-5).
const Z: f64 = 5.199_337_6;

/// Wilson score bounds for `k` successes out of `n`.
fn wilson(k: usize, n: usize) -> (f64, f64) {
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = Z * Z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The largest privacy loss the histograms prove beyond doubt, with δ subtracted:
/// `max_E ln((p_lo(E) − δ) / p_hi'(E))` over bins and both directions (−∞ if none is positive).
fn proven_epsilon(a: &HashMap<String, usize>, b: &HashMap<String, usize>, delta: f64) -> f64 {
    let mut worst = f64::NEG_INFINITY;
    for (x, y) in [(a, b), (b, a)] {
        for (bin, &k) in x {
            let (lo, _) = wilson(k, TRIALS);
            let (_, hi) = wilson(y.get(bin).copied().unwrap_or(0), TRIALS);
            if lo - delta > 0.0 {
                worst = worst.max(((lo - delta) / hi).ln());
            }
        }
    }
    worst
}

/// Runs `release` TRIALS times for each dataset and bins the outputs with `feature`.
fn histograms(
    seed: u64,
    mut release: impl FnMut(bool, &mut ChaCha20Rng) -> Release,
    feature: impl Fn(&Release) -> String,
) -> (HashMap<String, usize>, HashMap<String, usize>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut run = |neighbour: bool| {
        let mut h = HashMap::new();
        for _ in 0..TRIALS {
            *h.entry(feature(&release(neighbour, &mut rng))).or_insert(0) += 1;
        }
        h
    };
    (run(false), run(true))
}

/// A bin for a released number: its bucket of `width`, and whether it lies off the lattice of
/// `granularity` — split by whether it sits on the 2^-53 grid (exact for |x| < 2^10), which is
/// where floating-point noise shows which integer it was added to.
fn value_bin(x: f64, width: f64, granularity: f64) -> String {
    let bucket = (x / width).floor() as i64;
    let on_lattice = ((x / granularity).round() * granularity - x).abs() < granularity * 1e-9;
    if on_lattice {
        format!("{bucket}")
    } else {
        let on_grid = (x * 2f64.powi(53)).fract() == 0.0;
        format!("{bucket}~{on_grid}")
    }
}

fn plan(noise: Noise, values: Vec<GateValue>, public: Option<Vec<Vec<String>>>) -> JobPlan {
    let charge = match noise {
        Noise::Laplace => Charge {
            epsilon_pure: Epsilon(1_000_000),
            delta_selection: if public.is_none() {
                Delta::from_f64(1e-3).unwrap()
            } else {
                Delta(0)
            },
            ..Charge::default()
        },
        Noise::Gaussian => {
            let d = Delta::from_f64(1e-3).unwrap();
            Charge {
                rho: veil_policy::accountant::rho_for(Epsilon(1_000_000), d),
                delta_conversion: d,
                ..Charge::default()
            }
        }
    };
    JobPlan {
        privacy_unit: Some("id".into()),
        columns: vec![],
        keys: if public.as_ref().is_some_and(|p| p[0].is_empty()) {
            vec![]
        } else {
            vec!["g".into()]
        },
        values,
        count_weight: 1,
        epsilon: Epsilon(1_000_000),
        max_groups_per_unit: 1,
        min_units_per_group: 1,
        max_rows_per_unit: 1000,
        blocks: None,
        noise,
        charge,
        public_groups: public,
        schedule: Default::default(),
        sql: None,
        join: None,
    }
}

fn income(lo: f64, hi: f64, aggregate: Aggregate) -> Vec<GateValue> {
    let (lo, hi) = fixed::bounds_to_fixed(lo, hi);
    vec![GateValue {
        name: "x".into(),
        aggregate,
        lo,
        hi,
        weight: 1,
    }]
}

/// Exact aggregates of a dataset given as one contribution per unit, through the real gate.
fn exact(plan: &JobPlan, units: &[Contribution]) -> ExactGroups {
    let plan = Arc::new(plan.clone());
    let mut bounder = Bounder::new(plan.clone());
    for (i, c) in units.iter().enumerate() {
        bounder.add_unit(i as u64, vec![c.clone()]);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(gate::aggregate(&plan, vec![bounder]))
        .unwrap()
        .0
}

fn contribution(key: &str, value: f64) -> Contribution {
    Contribution {
        key: if key.is_empty() {
            vec![]
        } else {
            vec![key.into()]
        },
        values: vec![value],
    }
}

/// D: 30 units in one group, values spread over [0, 10]; D': D plus one unit at the bound.
fn neighbours(key: &str, extra: f64) -> (Vec<Contribution>, Vec<Contribution>) {
    let d: Vec<Contribution> = (0..30)
        .map(|i| contribution(key, f64::from(i % 11)))
        .collect();
    let mut d2 = d.clone();
    d2.push(contribution(key, extra));
    (d, d2)
}

struct Audit {
    proven: f64,
    claimed: f64,
}

impl Audit {
    fn passes(&self) -> bool {
        self.proven <= self.claimed
    }
}

/// Audits the noise stage on two exact aggregates under one plan.
fn audit_exact(
    seed: u64,
    plan: &JobPlan,
    a: &ExactGroups,
    b: &ExactGroups,
    delta: f64,
    feature: impl Fn(&Release) -> String,
) -> Audit {
    let (ha, hb) = histograms(
        seed,
        |neighbour, rng| gate::add_noise(plan, if neighbour { b } else { a }, rng),
        feature,
    );
    Audit {
        proven: proven_epsilon(&ha, &hb, delta),
        claimed: 1.0,
    }
}

fn count_feature(r: &Release) -> String {
    match r.rows.first() {
        Some(row) => value_bin(row.units.value, 2.0, 1.0),
        None => "withheld".into(),
    }
}

fn sum_feature(r: &Release) -> String {
    match r.rows.first() {
        Some(row) => value_bin(
            row.values[0].sum.as_ref().unwrap().value,
            5.0,
            fixed::to_f64(1),
        ),
        None => "withheld".into(),
    }
}

fn mean_feature(r: &Release) -> String {
    match r.rows.first().and_then(|row| row.values[0].mean.as_ref()) {
        Some(m) => format!("{}", (m.value() * 4.0).floor().clamp(-40.0, 80.0)),
        None => "none".into(),
    }
}

#[test]
fn count_sum_and_mean_meet_their_epsilon() {
    for (i, (aggregate, feature)) in [
        (Aggregate::Sum, count_feature as fn(&Release) -> String),
        (Aggregate::Sum, sum_feature),
        (Aggregate::Mean, mean_feature),
    ]
    .into_iter()
    .enumerate()
    {
        let plan = plan(
            Noise::Laplace,
            income(0.0, 10.0, aggregate),
            Some(vec![vec![]]),
        );
        let (d, d2) = neighbours("", 10.0);
        let audit = audit_exact(
            100 + i as u64,
            &plan,
            &exact(&plan, &d),
            &exact(&plan, &d2),
            0.0,
            feature,
        );
        assert!(audit.passes(), "release {i}: proven ε {}", audit.proven);
    }
}

#[test]
fn median_meets_its_epsilon() {
    let plan = plan(
        Noise::Laplace,
        income(0.0, 10.0, Aggregate::Quantile(500_000)),
        Some(vec![vec![]]),
    );
    // D': one more unit at the top of the range, pulling the median up.
    let (d, d2) = neighbours("", 10.0);
    let feature = |r: &Release| {
        let q = r.rows[0].values[0].quantile.as_ref().unwrap().value;
        format!("{}", (q * 2.0).floor())
    };
    let audit = audit_exact(
        150,
        &plan,
        &exact(&plan, &d),
        &exact(&plan, &d2),
        0.0,
        feature,
    );
    assert!(audit.passes(), "proven ε {}", audit.proven);
}

#[test]
fn gaussian_count_meets_its_epsilon_delta() {
    let plan = plan(
        Noise::Gaussian,
        income(0.0, 10.0, Aggregate::Sum),
        Some(vec![vec![]]),
    );
    let (d, d2) = neighbours("", 10.0);
    let audit = audit_exact(
        200,
        &plan,
        &exact(&plan, &d),
        &exact(&plan, &d2),
        1e-3,
        count_feature,
    );
    assert!(audit.passes(), "proven ε {}", audit.proven);
}

#[test]
fn histogram_over_public_partitions_meets_its_epsilon() {
    let public: Vec<Vec<String>> = ["a", "b", "c"]
        .iter()
        .map(|k| vec![k.to_string()])
        .collect();
    let plan = plan(
        Noise::Laplace,
        income(0.0, 10.0, Aggregate::Sum),
        Some(public),
    );
    // D: units spread over a, b, c; D': one more unit in b. Every partition is always released.
    let d: Vec<Contribution> = (0..45)
        .map(|i| contribution(["a", "b", "c"][i % 3], 1.0))
        .collect();
    let mut d2 = d.clone();
    d2.push(contribution("b", 1.0));
    let feature = |r: &Release| {
        assert_eq!(r.rows.len(), 3, "public partitions are all released");
        let b = r.rows.iter().find(|row| row.key == ["b"]).unwrap();
        value_bin(b.units.value, 2.0, 1.0)
    };
    let audit = audit_exact(
        300,
        &plan,
        &exact(&plan, &d),
        &exact(&plan, &d2),
        0.0,
        feature,
    );
    assert!(audit.passes(), "proven ε {}", audit.proven);
}

fn presence_feature(r: &Release) -> String {
    if r.rows.iter().any(|row| row.key == ["rare"]) {
        "released".into()
    } else {
        "withheld".into()
    }
}

/// D: a common group; D': the same plus a group holding one unit only.
fn selection_datasets(plan: &JobPlan) -> (ExactGroups, ExactGroups) {
    let d: Vec<Contribution> = (0..40).map(|_| contribution("common", 1.0)).collect();
    let mut d2 = d.clone();
    d2.push(contribution("rare", 1.0));
    (exact(plan, &d), exact(plan, &d2))
}

#[test]
fn partition_selection_meets_its_epsilon_delta() {
    let plan = plan(Noise::Laplace, income(0.0, 10.0, Aggregate::Sum), None);
    let (a, b) = selection_datasets(&plan);
    let audit = audit_exact(400, &plan, &a, &b, 1e-3, presence_feature);
    assert!(audit.passes(), "proven ε {}", audit.proven);
}

// ---- Negative controls: each broken release must FAIL the same audit. ----

#[test]
fn control_noise_scaled_down_fourfold_is_caught() {
    // The plan claims ε = 1 but its noise is calibrated for ε = 4.
    let claimed = plan(
        Noise::Laplace,
        income(0.0, 10.0, Aggregate::Sum),
        Some(vec![vec![]]),
    );
    let mut broken = claimed.clone();
    broken.charge.epsilon_pure = Epsilon(4_000_000);
    let (d, d2) = neighbours("", 10.0);
    let audit = audit_exact(
        500,
        &broken,
        &exact(&claimed, &d),
        &exact(&claimed, &d2),
        0.0,
        count_feature,
    );
    // The count's share of the job is ε/2, so its true loss is 2 here: twice the claim.
    assert!(!audit.passes(), "proven ε {} should exceed 1", audit.proven);
}

#[test]
fn control_skipped_clamping_is_caught() {
    let plan = plan(
        Noise::Laplace,
        income(0.0, 10.0, Aggregate::Sum),
        Some(vec![vec![]]),
    );
    let (d, d2) = neighbours("", 10.0);
    let a = exact(&plan, &d);
    // The neighbour's extra unit reports 1,000 and nobody clamps it to 10.
    let mut b = exact(&plan, &d2);
    let group = b.groups.get_mut(&Vec::<String>::new()).unwrap();
    group.sums[0] += (1000 - 10) * fixed::SCALE as i128;
    let audit = audit_exact(600, &plan, &a, &b, 0.0, sum_feature);
    assert!(!audit.passes(), "proven ε {} should exceed 1", audit.proven);
}

#[test]
fn control_floating_point_laplace_is_caught() {
    // The textbook mistake: count + b·Laplace in f64 (inverse CDF from a 53-bit uniform).
    let plan = plan(
        Noise::Laplace,
        income(0.0, 10.0, Aggregate::Sum),
        Some(vec![vec![]]),
    );
    let (mut d, d2) = neighbours("", 10.0);
    // Counts 0 and 1 make the porosity show in the released value's low bits.
    d.clear();
    let d2 = d2[..1].to_vec();
    let (a, b) = (exact(&plan, &d), exact(&plan, &d2));
    let true_count = |e: &ExactGroups| e.groups.values().next().map_or(0, |g| g.units) as f64;
    let (ca, cb) = (true_count(&a), true_count(&b));
    let scale = 2.0; // the same b = G·(1+m)/ε as the exact mechanism
    let (ha, hb) = histograms(
        700,
        |neighbour, rng| {
            let mut r = gate::add_noise(&plan, &a, rng);
            let u: f64 = rng.random::<f64>() - 0.5;
            let noise = -scale * u.signum() * (1.0 - 2.0 * u.abs()).ln();
            r.rows[0].units.value = if neighbour { cb } else { ca } + noise;
            r
        },
        |r: &Release| value_bin(r.rows[0].units.value, 2.0, 1.0),
    );
    let proven = proven_epsilon(&ha, &hb, 0.0);
    assert!(proven > 1.0, "proven ε {proven} should exceed 1");
    // The exact mechanism on the same pair passes.
    let audit = audit_exact(701, &plan, &a, &b, 0.0, count_feature);
    assert!(audit.passes(), "exact mechanism: proven ε {}", audit.proven);
}

#[test]
fn control_uncalibrated_selection_threshold_is_caught() {
    // The plan claims δ = 1e-3, but its threshold was computed for δ = 0.6 (about "2 units").
    let claimed = plan(Noise::Laplace, income(0.0, 10.0, Aggregate::Sum), None);
    let mut broken = claimed.clone();
    broken.charge.delta_selection = Delta(600_000_000_000_000);
    let (a, b) = selection_datasets(&claimed);
    let audit = audit_exact(800, &broken, &a, &b, 1e-3, presence_feature);
    assert!(!audit.passes(), "proven ε {} should exceed 1", audit.proven);
}

#[test]
fn count_only_counts_meet_their_epsilon() {
    // No values: the counts get all of ε (scale G/ε = 1, where a job with one value has 2).
    let plan = plan(Noise::Laplace, Vec::new(), Some(vec![vec![]]));
    let (d, d2) = neighbours("", 10.0);
    let audit = audit_exact(
        700,
        &plan,
        &exact(&plan, &d),
        &exact(&plan, &d2),
        0.0,
        count_feature,
    );
    assert!(audit.passes(), "proven ε {}", audit.proven);
}

#[test]
fn control_count_only_noise_for_twice_epsilon_is_caught() {
    // A count-only plan that claims ε = 1 but noises its counts for ε = 2.5: its true loss is 2.5.
    let claimed = plan(Noise::Laplace, Vec::new(), Some(vec![vec![]]));
    let mut broken = claimed.clone();
    broken.charge.epsilon_pure = Epsilon(2_500_000);
    let (d, d2) = neighbours("", 10.0);
    let audit = audit_exact(
        710,
        &broken,
        &exact(&claimed, &d),
        &exact(&claimed, &d2),
        0.0,
        count_feature,
    );
    assert!(!audit.passes(), "proven ε {} should exceed 1", audit.proven);
}

#[test]
fn centred_sum_far_from_zero_meets_its_epsilon() {
    // Bounds [1000, 1010]: the sum is noised around 1005 with sensitivity 5, and the released
    // estimate adds 1005 × the noisy count back (post-processing of two DP cells).
    let plan = plan(
        Noise::Laplace,
        income(1000.0, 1010.0, Aggregate::Sum),
        Some(vec![vec![]]),
    );
    let d: Vec<Contribution> = (0..30)
        .map(|i| contribution("", 1000.0 + f64::from(i % 11)))
        .collect();
    let mut d2 = d.clone();
    d2.push(contribution("", 1010.0));
    let feature = |r: &Release| {
        let sum = r.rows[0].values[0].sum.as_ref().unwrap().value;
        value_bin(sum, 1500.0, fixed::to_f64(1))
    };
    let audit = audit_exact(
        720,
        &plan,
        &exact(&plan, &d),
        &exact(&plan, &d2),
        0.0,
        feature,
    );
    assert!(audit.passes(), "proven ε {}", audit.proven);
}

/// DP SQL: the query's rewrite bounds each person, whatever rows they have. D: 30 people with
/// 1–3 rows each in group `a`, values in [0, 10]; D': D plus one person with 50 rows at 10 (an
/// unbounded rewrite would move the count by 50 and the sum by 500). The exact aggregates come
/// from the real SQL path (`veil_policy::sql::aggregate`: DataFusion rewrite, Bounder, gate);
/// the noise stage runs per trial.
mod sql {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use veil_policy::{JobManifest, Policy, precheck};

    const POLICY: &str = r#"
privacy_unit = "id"
consumers = ["acme"]
approval = "auto"
min_units_per_group = 1
max_groups_per_unit = 1
[dp]
epsilon_per_job = 1.0
epsilon_total = 3.0
[partitions]
g = ["a"]
[columns]
g = { class = "public" }
x = { class = "sensitive", bounds = [0, 10] }
"#;

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("g", DataType::Utf8, false),
            Field::new("x", DataType::Float64, false),
        ]))
    }

    /// D's rows, and with `neighbour` the added person's 50 rows.
    fn table(neighbour: bool) -> Arc<MemTable> {
        let (mut ids, mut xs) = (Vec::new(), Vec::new());
        for person in 0..30i64 {
            for row in 0..=(person % 3) {
                ids.push(person);
                xs.push(((person * 7 + row * 3) % 11) as f64);
            }
        }
        if neighbour {
            ids.extend([999; 50]);
            xs.extend([10.0; 50]);
        }
        let groups = vec!["a"; ids.len()];
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(groups)),
                Arc::new(Float64Array::from(xs)),
            ],
        )
        .unwrap();
        Arc::new(MemTable::try_new(schema(), vec![vec![batch]]).unwrap())
    }

    fn sql_plan(query: &str) -> JobPlan {
        let manifest = JobManifest::from_toml(&format!(
            "dataset = \"t\"\nsql = \"{query}\"\nepsilon = 1.0\n"
        ))
        .unwrap();
        let policy = Policy::from_toml(POLICY).unwrap();
        precheck(&policy, &manifest, &schema(), "acme").unwrap()
    }

    fn exact_sql(plan: &JobPlan, neighbour: bool) -> ExactGroups {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        rt.block_on(veil_policy::sql::aggregate(
            plan,
            table(neighbour),
            &Default::default(),
            &mut rng,
        ))
        .unwrap()
        .0
    }

    fn quantile_feature(r: &Release) -> String {
        let q = r.rows[0].values[0].quantile.as_ref().unwrap();
        format!("{}", (q.value * 2.0).floor())
    }

    #[test]
    fn sql_count_sum_mean_and_median_meet_their_epsilon() {
        for (i, (query, feature)) in [
            (
                "SELECT g, COUNT(*) AS n FROM t GROUP BY g",
                count_feature as fn(&Release) -> String,
            ),
            ("SELECT g, SUM(x) AS s FROM t GROUP BY g", sum_feature),
            ("SELECT g, AVG(x) AS m FROM t GROUP BY g", mean_feature),
            (
                "SELECT g, MEDIAN(x) AS q FROM t GROUP BY g",
                quantile_feature,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let plan = sql_plan(query);
            let (a, b) = (exact_sql(&plan, false), exact_sql(&plan, true));
            let audit = audit_exact(900 + i as u64, &plan, &a, &b, 0.0, feature);
            assert!(
                audit.passes(),
                "{query}: proven ε {} > {}",
                audit.proven,
                audit.claimed
            );
        }
    }

    /// The partner of a linked job (docs/linking.md): tokens 10..40 with 1–3 rows each, and with
    /// `neighbour` person 5 — already in D's table — added to the intersection with 50 rows.
    fn partner(neighbour: bool) -> veil_policy::sql::Partner {
        let mut ids: Vec<i64> = (10..40i64)
            .flat_map(|p| vec![p; 1 + (p % 3) as usize])
            .collect();
        if neighbour {
            ids.extend([5; 50]);
        }
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(ids))]).unwrap();
        veil_policy::sql::Partner {
            dataset: "other:claims".into(),
            key: "id".into(),
            partner_key: "id".into(),
            policy: Policy::from_toml(POLICY).unwrap(),
            table: Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap()),
        }
    }

    /// The overlap count of a linked job is audited like a count: one person added to the
    /// intersection (with 50 rows on the partner's side) moves it by at most one.
    #[test]
    fn the_overlap_count_meets_its_epsilon() {
        let query = "SELECT COUNT(*) AS overlap FROM t JOIN \"other:claims\" c USING (id)";
        let manifest = JobManifest::from_toml(&format!(
            "dataset = \"t\"\nsql = '{query}'\nepsilon = 1.0\n"
        ))
        .unwrap();
        let policy = Policy::from_toml(POLICY).unwrap();
        let planned = partner(false);
        let readable = veil_policy::sql::Tables {
            partners: std::slice::from_ref(&planned),
            ..Default::default()
        };
        let plan =
            veil_policy::precheck_with_lookups(&policy, &manifest, &schema(), &readable, "acme")
                .unwrap();
        let exact = |neighbour: bool| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let partner = partner(neighbour);
            let readable = veil_policy::sql::Tables {
                partners: std::slice::from_ref(&partner),
                ..Default::default()
            };
            let mut rng = ChaCha20Rng::seed_from_u64(1);
            rt.block_on(veil_policy::sql::aggregate(
                &plan,
                table(false),
                &readable,
                &mut rng,
            ))
            .unwrap()
            .0
        };
        let (a, b) = (exact(false), exact(true));
        assert_eq!(
            b.groups[&Vec::<String>::new()].units,
            a.groups[&Vec::<String>::new()].units + 1
        );
        let audit = audit_exact(970, &plan, &a, &b, 0.0, count_feature);
        assert!(
            audit.passes(),
            "proven ε {} > {}",
            audit.proven,
            audit.claimed
        );
    }

    /// Negative control: the same query aggregated over rows, without per-person bounding (what
    /// a rewrite that forgot the (unit, group) step would release), is caught.
    #[test]
    fn control_sql_without_per_person_bounding_is_caught() {
        let plan = sql_plan("SELECT g, COUNT(*) AS n, SUM(x) AS s FROM t GROUP BY g");
        // The row count as plain DataFusion gives it: COUNT(*) over rows, not people.
        let rows = |neighbour: bool| -> i128 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let ctx = datafusion::prelude::SessionContext::new();
                ctx.register_table("t", table(neighbour)).unwrap();
                let batches = ctx
                    .sql("SELECT COUNT(*) FROM t")
                    .await
                    .unwrap()
                    .collect()
                    .await
                    .unwrap();
                let n = batches[0]
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .value(0);
                i128::from(n)
            })
        };
        let unbounded = |neighbour: bool| {
            let rows = rows(neighbour);
            let mut exact = exact_sql(&plan, neighbour);
            let group = exact.groups.get_mut(&vec!["a".to_owned()]).unwrap();
            group.units = rows;
            exact
        };
        let audit = audit_exact(
            950,
            &plan,
            &unbounded(false),
            &unbounded(true),
            0.0,
            count_feature,
        );
        assert!(
            !audit.passes(),
            "an unbounded count passed: proven ε {}",
            audit.proven
        );
    }
}
