//! The output gate: the only path from module output to a consumer.
//!
//! Everything here is trusted code; the module's word counts for nothing:
//! 1. [`Bounder::add_unit`] tags each contribution with the privacy unit it came from (the host knows
//!    which unit it was running — a module cannot claim another unit), drops contributions whose
//!    shape does not match the manifest, merges repeated keys, keeps at most `max_groups_per_unit`
//!    groups per unit (the first ones emitted), and clamps each merged value to the manifest's bounds
//!    in fixed point ([`crate::fixed`]).
//! 2. [`release`] aggregates with DataFusion — `COUNT(DISTINCT unit)` and exact `SUM`s per group —
//!    then adds discrete Laplace noise ([`crate::mechanisms::DiscreteLaplace`]) and withholds groups
//!    whose noisy unit count is below the policy minimum.
//!
//! # Sensitivity argument
//! Adding or removing one privacy unit changes at most `G = max_groups_per_unit` groups. In each it
//! changes the distinct-unit count by exactly 1 and each value sum by at most `M = max(|lo|, |hi|)`
//! fixed-point units, because the unit's merged value was clamped to `[lo, hi]`. So the L1
//! sensitivity of the vector of counts is `G`, and of each value's vector of sums is `G·M`. The job's
//! ε is split evenly between the count and the `m` value sums (basic composition), so each is
//! released with discrete Laplace noise of scale `Δ·(1 + m)/ε`, and the whole release is ε-DP for
//! the *released values given the set of groups*.
//!
//! # What is not yet covered
//! Group keys come from the module, so the set of groups is data-dependent. Thresholding the noisy
//! count hides small groups in practice, but a formal (ε, δ) guarantee for key selection needs a
//! calibrated partition-selection threshold (tracked separately). Until then, holders should keep
//! `min_units_per_group` well above the count's noise scale.
use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Decimal128Array, Int64Array, Int64Builder, RecordBatch, StringArray,
    StringBuilder, UInt64Array, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use rand::{CryptoRng, Rng};
use serde::{Deserialize, Serialize};

use crate::error::{PolicyError, Result};
use crate::fixed;
use crate::manifest::{Aggregate, JobPlan};
use crate::mechanisms::DiscreteLaplace;
/// The gate takes contributions in the ABI's own type, as decoded from the module.
pub use veil_abi::Contribution as GateContribution;

/// Counts of what bounding did. They describe the data, so they go to the holder log only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundingStats {
    pub units: u64,
    pub contributions: u64,
    pub malformed_dropped: u64,
    pub over_group_limit_dropped: u64,
    pub values_clamped: u64,
}

/// Collects bounded, unit-tagged contributions. One per worker; combine them in [`release`].
#[derive(Debug)]
pub struct Bounder {
    plan: Arc<JobPlan>,
    units: UInt64Builder,
    keys: Vec<StringBuilder>,
    values: Vec<Int64Builder>,
    rows: usize,
    pub stats: BoundingStats,
    scratch: Vec<(Vec<String>, Vec<f64>)>,
}

impl Bounder {
    pub fn new(plan: Arc<JobPlan>) -> Self {
        let keys = plan.keys.iter().map(|_| StringBuilder::new()).collect();
        let values = plan.values.iter().map(|_| Int64Builder::new()).collect();
        Bounder {
            plan,
            units: UInt64Builder::new(),
            keys,
            values,
            rows: 0,
            stats: BoundingStats::default(),
            scratch: Vec::new(),
        }
    }

    /// Adds the output of the module run for privacy unit `unit` (an id assigned by trusted code).
    pub fn add_unit(&mut self, unit: u64, contributions: Vec<GateContribution>) {
        self.stats.units += 1;
        self.stats.contributions += contributions.len() as u64;
        let max_groups = self.plan.max_groups_per_unit as usize;
        let (nkeys, nvals) = (self.plan.keys.len(), self.plan.values.len());
        self.scratch.clear();
        for c in contributions {
            if c.key.len() != nkeys || c.values.len() != nvals {
                self.stats.malformed_dropped += 1;
                continue;
            }
            // Repeated keys merge, so a unit cannot escape the clamp by splitting its value.
            if let Some((_, sums)) = self.scratch.iter_mut().find(|(k, _)| *k == c.key) {
                for (s, v) in sums.iter_mut().zip(&c.values) {
                    *s += v;
                }
            } else if self.scratch.len() < max_groups {
                self.scratch.push((c.key, c.values));
            } else {
                self.stats.over_group_limit_dropped += 1;
            }
        }
        for (key, sums) in self.scratch.drain(..) {
            self.units.append_value(unit);
            for (builder, part) in self.keys.iter_mut().zip(&key) {
                builder.append_value(part);
            }
            for ((builder, spec), v) in self.values.iter_mut().zip(&self.plan.values).zip(&sums) {
                let x = fixed::to_fixed(*v, spec.lo, spec.hi);
                let unclamped = if v.is_finite() {
                    (v * fixed::SCALE as f64).round()
                } else {
                    f64::NAN
                };
                if unclamped != x as f64 {
                    self.stats.values_clamped += 1;
                }
                builder.append_value(x);
            }
            self.rows += 1;
        }
    }

    fn finish(mut self) -> Result<(RecordBatch, BoundingStats)> {
        let mut fields = vec![Field::new("unit", DataType::UInt64, false)];
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.units.finish())];
        for (i, b) in self.keys.iter_mut().enumerate() {
            fields.push(Field::new(format!("k{i}"), DataType::Utf8, false));
            columns.push(Arc::new(b.finish()));
        }
        for (i, b) in self.values.iter_mut().enumerate() {
            fields.push(Field::new(format!("v{i}"), DataType::Int64, false));
            columns.push(Arc::new(b.finish()));
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        Ok((batch, self.stats))
    }
}

/// A noisy number with how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoisyCell {
    pub value: f64,
    /// Scale `b` of the discrete Laplace noise, in the cell's units.
    pub noise_scale: f64,
    /// Exact 95% interval for the noiseless value: `value ± k` with `P[|noise| ≤ k] ≥ 0.95`.
    pub ci95: [f64; 2],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleasedValue {
    pub name: String,
    pub sum: NoisyCell,
    /// `sum / units` when the manifest asked for a mean (post-processing of two noisy cells).
    pub mean: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleasedRow {
    pub key: Vec<String>,
    /// Noisy number of distinct privacy units in the group.
    pub units: NoisyCell,
    pub values: Vec<ReleasedValue>,
}

/// What a consumer receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub key_names: Vec<String>,
    pub rows: Vec<ReleasedRow>,
    pub mechanism: String,
    pub epsilon: String,
    /// The rule that withheld groups, stated without saying how many it withheld.
    pub suppression_rule: String,
    pub granularity: f64,
    /// Sample-and-aggregate jobs release one estimate per value instead of grouped rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub estimates: Vec<BlockEstimate>,
}

/// One value released by sample-and-aggregate: the noisy average of the blocks' clamped outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockEstimate {
    pub name: String,
    pub estimate: NoisyCell,
    /// Number of disjoint blocks averaged (fixed by the manifest, not by the data).
    pub blocks: u32,
    /// The range each block's output was clamped to.
    pub bounds: [f64; 2],
}

pub(crate) fn cell(
    true_value: i128,
    mech: &DiscreteLaplace,
    unit: f64,
    rng: &mut (impl Rng + CryptoRng),
) -> NoisyCell {
    let noisy = true_value + mech.sample(rng);
    let k = mech.half_width(0.95) as i128;
    NoisyCell {
        value: noisy as f64 * unit,
        noise_scale: mech.scale() * unit,
        ci95: [(noisy - k) as f64 * unit, (noisy + k) as f64 * unit],
    }
}

/// Aggregates the bounded contributions of all workers, adds noise and applies the threshold.
pub async fn release<R: Rng + CryptoRng>(
    plan: &JobPlan,
    bounders: Vec<Bounder>,
    rng: &mut R,
) -> Result<(Release, BoundingStats)> {
    let mut stats = BoundingStats::default();
    let mut batches = Vec::new();
    let mut schema = None;
    for b in bounders {
        let (batch, s) = b.finish()?;
        stats.units += s.units;
        stats.contributions += s.contributions;
        stats.malformed_dropped += s.malformed_dropped;
        stats.over_group_limit_dropped += s.over_group_limit_dropped;
        stats.values_clamped += s.values_clamped;
        schema = Some(batch.schema());
        batches.push(vec![batch]);
    }
    let schema = schema.ok_or_else(|| PolicyError::Aggregation("no workers".into()))?;
    let ctx = SessionContext::new();
    ctx.register_table(
        "contributions",
        Arc::new(MemTable::try_new(schema, batches)?),
    )?;

    let keys: Vec<String> = (0..plan.keys.len()).map(|i| format!("k{i}")).collect();
    let mut select = keys.clone();
    select.push("COUNT(DISTINCT unit) AS units".into());
    for i in 0..plan.values.len() {
        // DECIMAL(38,0) sums are exact and cannot overflow for any realistic input.
        select.push(format!("SUM(CAST(v{i} AS DECIMAL(38,0))) AS s{i}"));
    }
    let mut sql = format!("SELECT {} FROM contributions", select.join(", "));
    if !keys.is_empty() {
        sql += &format!(" GROUP BY {}", keys.join(", "));
    }
    let batches = ctx.sql(&sql).await?.collect().await?;

    // Exact aggregates per group, sorted by key so that output order says nothing about the data.
    let mut groups: BTreeMap<Vec<String>, (i128, Vec<i128>)> = BTreeMap::new();
    for batch in &batches {
        let units = batch
            .column(keys.len())
            .as_any()
            .downcast_ref::<Int64Array>();
        for row in 0..batch.num_rows() {
            let key = (0..keys.len())
                .map(|i| {
                    let a = batch
                        .column(i)
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .expect("k is utf8");
                    a.value(row).to_owned()
                })
                .collect();
            let count = units.map(|a| a.value(row) as i128).unwrap_or_else(|| {
                let a = batch
                    .column(keys.len())
                    .as_any()
                    .downcast_ref::<UInt64Array>();
                a.map(|a| a.value(row) as i128).unwrap_or(0)
            });
            let sums = (0..plan.values.len())
                .map(|i| {
                    let a = batch.column(keys.len() + 1 + i);
                    let d = a
                        .as_any()
                        .downcast_ref::<Decimal128Array>()
                        .expect("sum is decimal");
                    if d.is_null(row) { 0 } else { d.value(row) }
                })
                .collect();
            groups.insert(key, (count, sums));
        }
    }

    let g = u128::from(plan.max_groups_per_unit);
    let shares = 1 + plan.values.len() as u128;
    let eps = plan.epsilon.micro();
    let count_mech = DiscreteLaplace::new(g * shares * 1_000_000, u128::from(eps));
    let value_mechs: Vec<DiscreteLaplace> = plan
        .values
        .iter()
        .map(|v| {
            let m = u128::from(v.lo.unsigned_abs().max(v.hi.unsigned_abs()));
            DiscreteLaplace::new(g * m * shares * 1_000_000, u128::from(eps))
        })
        .collect();
    let unit = 1.0 / fixed::SCALE as f64;

    let mut rows = Vec::new();
    for (key, (count, sums)) in groups {
        let units = cell(count, &count_mech, 1.0, rng);
        // Noise every value even for a group about to be withheld, so the work done per group (and
        // hence timing) does not depend on the threshold decision.
        let values: Vec<ReleasedValue> = plan
            .values
            .iter()
            .zip(&value_mechs)
            .zip(sums)
            .map(|((spec, mech), sum)| {
                let sum = cell(sum, mech, unit, rng);
                let mean = (spec.aggregate == Aggregate::Mean && units.value >= 1.0)
                    .then(|| sum.value / units.value);
                ReleasedValue {
                    name: spec.name.clone(),
                    sum,
                    mean,
                }
            })
            .collect();
        if units.value >= plan.min_units_per_group as f64 {
            rows.push(ReleasedRow { key, units, values });
        }
    }
    let release = Release {
        key_names: plan.keys.clone(),
        rows,
        mechanism: "discrete Laplace (exact sampler, ChaCha20 CSPRNG)".into(),
        epsilon: plan.epsilon.to_string(),
        suppression_rule: format!(
            "groups whose noisy count of distinct units is below {} are withheld",
            plan.min_units_per_group
        ),
        granularity: unit,
        estimates: Vec::new(),
    };
    Ok((release, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{GateValue, JobPlan};
    use crate::model::Epsilon;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn plan(min_units: u64, max_groups: u32) -> Arc<JobPlan> {
        Arc::new(JobPlan {
            privacy_unit: Some("id".into()),
            columns: vec![],
            keys: vec!["g".into()],
            values: vec![GateValue {
                name: "x".into(),
                aggregate: Aggregate::Mean,
                lo: 0,
                hi: 10_000,
            }],
            epsilon: Epsilon(1_000_000),
            max_groups_per_unit: max_groups,
            min_units_per_group: min_units,
            blocks: None,
        })
    }

    fn c(key: &str, v: f64) -> GateContribution {
        GateContribution {
            key: vec![key.into()],
            values: vec![v],
        }
    }

    fn run(plan: &Arc<JobPlan>, bounders: Vec<Bounder>) -> (Release, BoundingStats) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(release(plan, bounders, &mut ChaCha20Rng::seed_from_u64(9)))
            .unwrap()
    }

    #[test]
    fn bounds_clamps_and_thresholds() {
        let p = plan(50, 1);
        let mut a = Bounder::new(p.clone());
        let mut b = Bounder::new(p.clone());
        for u in 0..1000u64 {
            let target = if u % 2 == 0 { &mut a } else { &mut b };
            // Each unit tries to contribute twice to "big" (merged, then clamped to 10) and once to
            // "other" (dropped: one group per unit).
            target.add_unit(u, vec![c("big", 8.0), c("big", 8.0), c("other", 1.0)]);
        }
        // One lonely unit: its group must be withheld.
        a.add_unit(5000, vec![c("lonely", 3.0)]);
        // Malformed: wrong arity.
        a.add_unit(
            5001,
            vec![GateContribution {
                key: vec![],
                values: vec![1.0],
            }],
        );
        let (rel, stats) = run(&p, vec![a, b]);
        assert_eq!(stats.units, 1002);
        assert_eq!(stats.over_group_limit_dropped, 1000);
        assert_eq!(stats.malformed_dropped, 1);
        assert_eq!(stats.values_clamped, 1000);
        assert_eq!(rel.rows.len(), 1, "{rel:?}");
        let row = &rel.rows[0];
        assert_eq!(row.key, vec!["big".to_string()]);
        // Count noise scale = G·(1+m)/ε = 2; sum scale = 2·10 = 20 (real units).
        assert_eq!(row.units.noise_scale, 2.0);
        assert!((row.values[0].sum.noise_scale - 20.0).abs() < 1e-9);
        assert!(row.units.ci95[0] <= 1000.0 + 40.0 && row.units.ci95[1] >= 1000.0 - 40.0);
        assert!((row.units.value - 1000.0).abs() < 40.0);
        assert!((row.values[0].sum.value - 10_000.0).abs() < 400.0);
        let mean = row.values[0].mean.unwrap();
        assert!((mean - 10.0).abs() < 1.0, "{mean}");
    }

    #[test]
    fn empty_input_releases_nothing() {
        let p = plan(5, 1);
        let (rel, _) = run(&p, vec![Bounder::new(p.clone())]);
        assert!(rel.rows.is_empty());
        assert!(rel.suppression_rule.contains("below 5"));
    }
}
