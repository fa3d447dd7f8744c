//! The output gate: the only path from module output to a consumer.
//!
//! Everything here is trusted code; the module's word counts for nothing:
//! 1. [`Bounder::add_unit`] tags each contribution with the privacy unit it came from (the host knows
//!    which unit it was running — a module cannot claim another unit), drops contributions whose
//!    shape does not match the manifest (or whose key lies outside the holder's public partitions),
//!    merges repeated keys, keeps at most `max_groups_per_unit` groups per unit (the first ones
//!    emitted), and clamps each merged value to the manifest's bounds in fixed point
//!    ([`crate::fixed`]).
//! 2. [`aggregate`] computes exact aggregates with DataFusion — `COUNT(DISTINCT unit)` and exact
//!    `SUM`s per group ([`ExactGroups`]).
//! 3. [`add_noise`] adds exact discrete Laplace or discrete Gaussian noise
//!    ([`crate::mechanisms`]) to every aggregate and decides which groups to release: all of the
//!    public groups, or — when keys come from the data — those whose noisy unit count passes the
//!    partition-selection threshold. [`release`] is steps 2 and 3.
//!
//! # Sensitivity argument
//! Adding or removing one privacy unit changes at most `G = max_groups_per_unit` groups, and in each
//! group it has exactly one merged row (repeated keys merge, see [`Bounder::add_unit`]). In each it
//! changes the distinct-unit count by exactly 1. For a sum or mean value the gate noises the
//! *centred* sum `C = Σ (x − mid)` over the group's rows, `mid` = [`midpoint`] of `[lo, hi]`: the
//! unit's merged value was clamped to `[lo, hi]`, so its term `x − mid` lies in
//! `[lo − mid, hi − mid]` and adding or removing it moves `C` by at most
//! `M = max(hi − mid, mid − lo) = ⌈(hi − lo)/2⌉` fixed-point units ([`sensitivity`]) — in the
//! bounded-contribution (add/remove) model, where the count of rows changes along with the sum;
//! that is why `C` is noised, not `Σ x` (whose sensitivity is `max(|lo|, |hi|)`). The released sum
//! `C' + mid · N'` and mean `mid + C'/N'` are post-processing of the noisy `C'` and count `N'`. A
//! quantile value moves each of its bins' counts by at most 1 in total. So the count vector has L1
//! sensitivity `G` and L2 `√G`; each value's vector `G·M` and `M·√G`.
//!
//! The budget is split by the manifest's weights: with `w` the statistic's weight and `W` the sum
//! of all weights (the count's and every value's; [`total_weight`]), Laplace noise gets scale
//! `Δ₁·W/(ε·w)`, so the shares `ε·w/W` add up to ε (basic composition: ε-DP in all); Gaussian noise
//! gets `σ² = Δ₂²·W/(2ρ·w)`, shares `ρ·w/W` adding up to ρ (zCDP composition: ρ-zCDP in all). A
//! count-only job has `W = w_count`: the counts get all of it.
//!
//! # Partition selection
//! When keys come from the module, the set of groups itself depends on the data. A group is
//! released only if its noisy unit count reaches `τ = max(min_units_per_group, τ_δ)`, where `τ_δ`
//! is the smallest threshold with `G · P[1 + noise ≥ τ_δ] ≤ δ_selection`. A neighbouring dataset
//! differs by one unit, which alone can create at most `G` groups, each with true count 1: the
//! chance that any of them is released is at most `δ_selection`; groups present in both datasets
//! are covered by the noise on their counts. So the release is (ε, δ_selection)-DP (Korolova,
//! Kenthapadi, Mishra, Ntoulas, "Releasing search queries and clicks privately", WWW 2009; Wilson
//! et al., "Differentially private SQL with bounded user contribution", PETS 2020). When the holder
//! declares the key domain (public partitions) or the job has no keys, exactly those groups are
//! released — empty ones too, with noise — and no δ is spent.
//!
//! # Intervals and suppression
//! Every released cell carries its mechanism, its noise scale and an exact 95% interval for that
//! mechanism's noise. The consumer learns the rule that withheld groups, never how many it withheld.
use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Decimal128Array, Int64Array, Int64Builder, RecordBatch, StringArray,
    StringBuilder, UInt64Array, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use rand::{CryptoRng, Rng};
use serde::{Deserialize, Serialize};

use num_bigint::BigUint;

use crate::accountant::{Delta, RHO_PER_ONE};
use crate::error::{PolicyError, Result};
use crate::fixed;
use crate::manifest::{Aggregate, GateValue, JobPlan, Noise};
use crate::mechanisms::{DiscreteGaussian, DiscreteLaplace, normal_upper_quantile, quantile};
/// The gate takes contributions in the ABI's own type, as decoded from the module.
pub use veil_abi::Contribution as GateContribution;

mod forecast;
pub use forecast::{CellForecast, Forecast, QuantileForecast, ValueForecast, forecast};

/// Counts of what bounding did. They describe the data, so they go to the holder log only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundingStats {
    pub units: u64,
    pub contributions: u64,
    pub malformed_dropped: u64,
    pub over_group_limit_dropped: u64,
    /// Contributions whose key is not one of the holder's public partitions.
    pub outside_partitions_dropped: u64,
    pub values_clamped: u64,
}

/// Rows per batch the bounder hands to DataFusion.
const BATCH_ROWS: usize = 1 << 16;

/// Collects bounded, unit-tagged contributions. One per worker; combine them in [`release`].
#[derive(Debug)]
pub struct Bounder {
    plan: Arc<JobPlan>,
    units: UInt64Builder,
    keys: Vec<StringBuilder>,
    values: Vec<Int64Builder>,
    rows: usize,
    /// Batches already cut from the builders (DataFusion aggregates many moderate batches faster
    /// than one huge one).
    done: Vec<RecordBatch>,
    pub stats: BoundingStats,
    scratch: Vec<(Vec<String>, Vec<f64>)>,
    public: Option<std::collections::HashSet<Vec<String>>>,
}

impl Bounder {
    pub fn new(plan: Arc<JobPlan>) -> Self {
        let keys = plan.keys.iter().map(|_| StringBuilder::new()).collect();
        let values = plan.values.iter().map(|_| Int64Builder::new()).collect();
        Bounder {
            units: UInt64Builder::new(),
            keys,
            values,
            rows: 0,
            done: Vec::new(),
            stats: BoundingStats::default(),
            scratch: Vec::new(),
            public: plan
                .public_groups
                .as_ref()
                .map(|g| g.iter().cloned().collect()),
            plan,
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
            // A count-only job counts units per key: values the module emits are not used.
            if c.key.len() != nkeys || (nvals > 0 && c.values.len() != nvals) {
                self.stats.malformed_dropped += 1;
                continue;
            }
            if self.public.as_ref().is_some_and(|p| !p.contains(&c.key)) {
                self.stats.outside_partitions_dropped += 1;
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
                // Counted as clamped when the quantized value is not the value itself.
                if !v.is_finite() || (v * fixed::SCALE as f64).round() != x as f64 {
                    self.stats.values_clamped += 1;
                }
                builder.append_value(x);
            }
            self.rows += 1;
        }
        if self.rows >= BATCH_ROWS {
            let batch = self.cut();
            self.done.push(batch);
        }
    }

    /// Turns the rows in the builders into a batch and empties them.
    fn cut(&mut self) -> RecordBatch {
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
        self.rows = 0;
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .expect("columns match the schema by construction")
    }

    fn finish(mut self) -> Result<(Vec<RecordBatch>, BoundingStats)> {
        let last = self.cut();
        let mut batches = std::mem::take(&mut self.done);
        if last.num_rows() > 0 || batches.is_empty() {
            batches.push(last);
        }
        Ok((batches, self.stats))
    }
}

/// A noisy number with how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoisyCell {
    pub value: f64,
    /// `"discrete Laplace"` or `"discrete Gaussian"`.
    #[serde(default)]
    pub mechanism: String,
    /// Scale of the noise in the cell's units: `b` for Laplace, `σ` for Gaussian.
    pub noise_scale: f64,
    /// Exact 95% interval for the noiseless value: `value ± k` with `P[|noise| ≤ k] ≥ 0.95`.
    pub ci95: [f64; 2],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleasedValue {
    pub name: String,
    /// The noisy sum (for `sum` and `mean` values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<NoisyCell>,
    /// The mean, when the manifest asked for one and the group's noisy count is at least 1
    /// (post-processing of the noisy centred sum and count, clamped to the bounds).
    pub mean: Option<Mean>,
    /// The quantile, for `median` and `quantile` values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantile: Option<QuantileCell>,
    /// The variance of the units' values (SQL `VARIANCE`, `VAR_POP`), post-processing of noisy
    /// sums (`veil_policy::sql`), when the group's noisy count is at least 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variance: Option<NoisyCell>,
    /// The standard deviation (SQL `STDDEV`, `STDDEV_POP`), likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stddev: Option<NoisyCell>,
}

/// A released mean: a cell with its interval, or — in results released before intervals were
/// given for means — the bare number, shown as it was released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Mean {
    Cell(NoisyCell),
    Point(f64),
}

impl Mean {
    pub fn value(&self) -> f64 {
        match self {
            Mean::Cell(c) => c.value,
            Mean::Point(v) => *v,
        }
    }

    /// The cell with scale and interval, if the result has them.
    pub fn cell(&self) -> Option<&NoisyCell> {
        match self {
            Mean::Cell(c) => Some(c),
            Mean::Point(_) => None,
        }
    }
}

/// A number, or (in results released before ε and δ were numbers) its decimal text.
fn number_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
    }
    match Repr::deserialize(d)? {
        Repr::Number(x) => Ok(x),
        Repr::Text(t) => t.parse().map_err(serde::de::Error::custom),
    }
}

/// A quantile read from a noisy histogram ([`crate::mechanisms::quantile`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantileCell {
    /// Which quantile (0.5 for a median).
    pub q: f64,
    pub value: f64,
    pub mechanism: String,
    /// Noise scale of each bin count (units).
    pub noise_scale: f64,
    /// Width of the histogram's bins: the estimate's resolution.
    pub bin_width: f64,
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
    /// ε the job spent.
    #[serde(deserialize_with = "number_or_text")]
    pub epsilon: f64,
    /// δ the job spent (partition selection, Gaussian conversion); 0 for pure-DP jobs.
    #[serde(default, deserialize_with = "number_or_text")]
    pub delta: f64,
    /// The rule that withheld groups, stated without saying how many it withheld.
    pub suppression_rule: String,
    pub granularity: f64,
    /// Sample-and-aggregate jobs release one estimate per value instead of grouped rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub estimates: Vec<BlockEstimate>,
    /// The name a SQL job's query gave the count of people (`COUNT(*) AS people`); the table
    /// and CSV head the `units` column with it. Absent for module jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_name: Option<String>,
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

/// An additive noise mechanism on integers, as the gate uses it.
pub trait IntegerNoise {
    fn sample_noise(&self, rng: &mut dyn GateRng) -> i128;
    /// Smallest `k` with `P[|noise| > k] ≤ 1 − confidence`.
    fn half_width(&self, confidence: f64) -> u128;
    /// `b` (Laplace) or `σ` (Gaussian), in integer units.
    fn scale(&self) -> f64;
    fn name(&self) -> &'static str;
    /// Smallest `τ` with `groups · P[1 + noise ≥ τ] ≤ delta`: the partition-selection threshold.
    fn selection_threshold(&self, groups: u32, delta: Delta) -> u64;
}

/// The dyn-compatible CSPRNG the gate's mechanisms draw from.
pub trait GateRng: rand::RngCore + CryptoRng {}
impl<T: rand::RngCore + CryptoRng> GateRng for T {}

impl IntegerNoise for DiscreteLaplace {
    fn sample_noise(&self, rng: &mut dyn GateRng) -> i128 {
        self.sample(&mut DynRng(rng))
    }
    fn half_width(&self, confidence: f64) -> u128 {
        DiscreteLaplace::half_width(self, confidence)
    }
    fn scale(&self) -> f64 {
        DiscreteLaplace::scale(self)
    }
    fn name(&self) -> &'static str {
        "discrete Laplace"
    }
    fn selection_threshold(&self, groups: u32, delta: Delta) -> u64 {
        // P[Y ≥ k] = q^k / (1 + q) for k ≥ 1, q = exp(−1/b).
        let q = (-1.0 / self.scale()).exp();
        let target = delta.as_f64() * (1.0 + q) / f64::from(groups);
        let k = (target.ln() / q.ln()).ceil().max(1.0);
        // One more for floating-point slack: a higher threshold only spends less δ.
        k as u64 + 2
    }
}

impl IntegerNoise for DiscreteGaussian {
    fn sample_noise(&self, rng: &mut dyn GateRng) -> i128 {
        self.sample(&mut DynRng(rng))
    }
    fn half_width(&self, confidence: f64) -> u128 {
        DiscreteGaussian::half_width(self, confidence)
    }
    fn scale(&self) -> f64 {
        self.sigma()
    }
    fn name(&self) -> &'static str {
        "discrete Gaussian"
    }
    fn selection_threshold(&self, groups: u32, delta: Delta) -> u64 {
        // P[Y ≥ m] ≤ P[N(0, σ²) ≥ m − 1] (CKS20, Proposition 25): with m = τ − 1, τ = 2 + σ·z.
        let z = normal_upper_quantile(delta.as_f64() / f64::from(groups));
        (self.sigma() * z).ceil() as u64 + 2
    }
}

/// Lets the samplers' generic `R: Rng + CryptoRng` take a `&mut dyn GateRng`.
struct DynRng<'a>(&'a mut dyn GateRng);
impl rand::RngCore for DynRng<'_> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.0.fill_bytes(dst)
    }
}
impl CryptoRng for DynRng<'_> {}

/// One noisy cell. `half_width` is `mech.half_width(0.95)`, computed once per mechanism by the
/// caller (for a discrete Gaussian it sums the pmf).
/// `per_one`: the value's units per 1.0 (1 for counts, [`fixed::SCALE`] for fixed-point sums).
pub(crate) fn cell(
    true_value: i128,
    mech: &dyn IntegerNoise,
    half_width: u128,
    per_one: i64,
    rng: &mut dyn GateRng,
) -> NoisyCell {
    let noisy = true_value + mech.sample_noise(rng);
    fixed_cell(noisy, mech, half_width, per_one)
}

/// A noisy value `noisy` (in units of `1 / per_one`) with interval `noisy ± half_width`, as a
/// cell. Dividing (not multiplying by `1 / per_one`) gives the nearest double to the exact
/// decimal, so `660.637` prints as `660.637`.
fn fixed_cell(noisy: i128, mech: &dyn IntegerNoise, half_width: u128, per_one: i64) -> NoisyCell {
    let k = half_width as i128;
    let real = |x: i128| x as f64 / per_one as f64;
    NoisyCell {
        value: real(noisy),
        mechanism: mech.name().into(),
        noise_scale: mech.scale() / per_one as f64,
        ci95: [real(noisy - k), real(noisy + k)],
    }
}

/// `x` rounded to the fixed-point grid (`1 / SCALE`): released values carry no more digits than
/// the granularity (and no float artefacts).
pub(crate) fn on_grid(x: f64) -> f64 {
    (x * fixed::SCALE as f64).round() / fixed::SCALE as f64
}

/// An interval's ends rounded outwards to the grid, so that rounding never narrows it.
pub(crate) fn outward(low: f64, high: f64) -> [f64; 2] {
    let s = fixed::SCALE as f64;
    [(low * s).floor() / s, (high * s).ceil() / s]
}

/// Exact aggregates of one group. Never leaves the gate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExactGroup {
    /// Distinct privacy units.
    pub units: i128,
    /// Per value: the fixed-point sum (0 for quantile values).
    pub sums: Vec<i128>,
    /// Per value: the histogram of units' values over the quantile bins (empty unless quantile).
    pub bins: Vec<Vec<i128>>,
}

/// Exact aggregates per group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExactGroups {
    pub groups: BTreeMap<Vec<String>, ExactGroup>,
}

/// The midpoint of a value's bounds in fixed point, rounded down: the centre its sum is noised
/// around. Requires `lo ≤ hi`.
pub fn midpoint(v: &GateValue) -> i128 {
    let (lo, hi) = (i128::from(v.lo), i128::from(v.hi));
    lo + (hi - lo).div_euclid(2)
}

/// How far one unit can move value `v`'s noised aggregate in one group: for a sum or mean, the
/// distance from the midpoint to the farther bound, `⌈(hi − lo)/2⌉` (the centred sum); for a
/// quantile, one histogram entry.
pub fn sensitivity(v: &GateValue) -> u128 {
    match v.aggregate {
        Aggregate::Quantile(_) => 1,
        Aggregate::Sum | Aggregate::Mean => {
            let mid = midpoint(v);
            (i128::from(v.hi) - mid).max(mid - i128::from(v.lo)) as u128
        }
    }
}

/// The sum of the weights of everything a grouped job releases: the unit counts' and each
/// value's.
pub fn total_weight(plan: &JobPlan) -> u128 {
    u128::from(plan.count_weight)
        + plan
            .values
            .iter()
            .map(|v| u128::from(v.weight))
            .sum::<u128>()
}

/// The noise mechanisms of one plan: one for the counts, one per value. Statistic `s` with weight
/// `w_s` gets the share `w_s / W` of the budget (`W` = [`total_weight`]); see the module docs.
pub fn mechanisms(plan: &JobPlan) -> (Box<dyn IntegerNoise>, Vec<Box<dyn IntegerNoise>>) {
    let g = u128::from(plan.max_groups_per_unit);
    let total = total_weight(plan);
    let count_weight = u128::from(plan.count_weight);
    match plan.noise {
        Noise::Laplace => {
            // Scale Δ₁ · W / (ε · w): ε in millionths, so the numerator carries 10⁶.
            let eps = u128::from(plan.charge.epsilon_pure.micro().max(1));
            let laplace = |l1: u128, weight: u128| -> Box<dyn IntegerNoise> {
                Box::new(DiscreteLaplace::new(l1 * total * 1_000_000, eps * weight))
            };
            let count = laplace(g, count_weight);
            let values = plan
                .values
                .iter()
                .map(|v| laplace(g * sensitivity(v), u128::from(v.weight)))
                .collect();
            (count, values)
        }
        Noise::Gaussian => {
            // Share w/W of ρ: σ² = Δ₂² · W / (2ρ · w), ρ in units of 1e-12.
            let rho = BigUint::from(plan.charge.rho.max(1)) * 2u32;
            let per_one = BigUint::from(RHO_PER_ONE as u64);
            let gaussian = |l2_squared: BigUint, weight: u128| -> Box<dyn IntegerNoise> {
                Box::new(DiscreteGaussian::with_variance(
                    l2_squared * total * &per_one,
                    rho.clone() * BigUint::from(weight),
                ))
            };
            let count = gaussian(BigUint::from(g), count_weight);
            let values = plan
                .values
                .iter()
                .map(|v| {
                    let m = BigUint::from(sensitivity(v));
                    gaussian(&m * &m * g, u128::from(v.weight))
                })
                .collect();
            (count, values)
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Lets tests exercise the DECIMAL path without billions of rows.
    static FORCE_DECIMAL_SUMS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn force_decimal_sums() -> bool {
    #[cfg(test)]
    return FORCE_DECIMAL_SUMS.with(|f| f.get());
    #[cfg(not(test))]
    false
}

/// The group key of `row`: the first `parts` columns of an aggregation result (always Utf8).
fn key_at(batch: &RecordBatch, parts: usize, row: usize) -> Vec<String> {
    (0..parts)
        .map(|i| {
            let a = batch
                .column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("k is utf8");
            a.value(row).to_owned()
        })
        .collect()
}

/// Aggregates the bounded contributions of all workers exactly (DataFusion): per group the
/// count of distinct units, the exact sums, and for quantile values the units per bin.
pub async fn aggregate(
    plan: &JobPlan,
    bounders: Vec<Bounder>,
) -> Result<(ExactGroups, BoundingStats)> {
    let (batches, schema, stats) = finish_bounders(bounders)?;
    let rows: i128 = batches.iter().flatten().map(|b| b.num_rows() as i128).sum();
    let ctx = SessionContext::new();
    ctx.register_table(
        "contributions",
        Arc::new(MemTable::try_new(schema, batches)?),
    )?;
    let keys: Vec<String> = (0..plan.keys.len()).map(|i| format!("k{i}")).collect();
    let batches = ctx
        .sql(&sums_sql(plan, &keys, rows))
        .await?
        .collect()
        .await?;
    let mut groups = read_groups(plan, &keys, &batches);
    for (i, v) in plan.values.iter().enumerate() {
        if let Aggregate::Quantile(_) = v.aggregate {
            add_quantile_bins(&ctx, &keys, i, v, &mut groups).await?;
        }
    }
    Ok((ExactGroups { groups }, stats))
}

/// Each worker's bounded contributions (one table per worker) and the bounding statistics
/// summed over the workers. Requires at least one worker.
fn finish_bounders(
    bounders: Vec<Bounder>,
) -> Result<(Vec<Vec<RecordBatch>>, SchemaRef, BoundingStats)> {
    let mut stats = BoundingStats::default();
    let mut batches = Vec::new();
    let mut schema = None;
    for b in bounders {
        let (bounded, s) = b.finish()?;
        stats.units += s.units;
        stats.contributions += s.contributions;
        stats.malformed_dropped += s.malformed_dropped;
        stats.over_group_limit_dropped += s.over_group_limit_dropped;
        stats.outside_partitions_dropped += s.outside_partitions_dropped;
        stats.values_clamped += s.values_clamped;
        schema = Some(bounded[0].schema());
        batches.push(bounded);
    }
    let schema = schema.ok_or_else(|| PolicyError::Aggregation("no workers".into()))?;
    Ok((batches, schema, stats))
}

/// The query for counts and sums per group over `rows` contributions. Sums are exact. When no
/// sum can exceed i64 (rows × max |value| < 2^63, both known before aggregating), SUM runs on
/// Int64; otherwise on DECIMAL(38,0), which cannot overflow for any realistic input but is several
/// times slower.
fn sums_sql(plan: &JobPlan, keys: &[String], rows: i128) -> String {
    let mut select = keys.to_vec();
    select.push("COUNT(DISTINCT unit) AS units".into());
    for (i, v) in plan.values.iter().enumerate() {
        let m = i128::from(v.lo.unsigned_abs().max(v.hi.unsigned_abs()));
        let int64 = m.saturating_mul(rows) < i128::from(i64::MAX) && !force_decimal_sums();
        select.push(if int64 {
            format!("SUM(v{i}) AS s{i}")
        } else {
            format!("SUM(CAST(v{i} AS DECIMAL(38,0))) AS s{i}")
        });
    }
    let mut sql = format!("SELECT {} FROM contributions", select.join(", "));
    if !keys.is_empty() {
        sql += &format!(" GROUP BY {}", keys.join(", "));
    }
    sql
}

/// The groups of the counts-and-sums query's result, without quantile bins yet. A global
/// aggregate over no rows yields one row with count 0: not a group.
fn read_groups(
    plan: &JobPlan,
    keys: &[String],
    batches: &[RecordBatch],
) -> BTreeMap<Vec<String>, ExactGroup> {
    let mut groups: BTreeMap<Vec<String>, ExactGroup> = BTreeMap::new();
    for batch in batches {
        let units = batch
            .column(keys.len())
            .as_any()
            .downcast_ref::<Int64Array>();
        for row in 0..batch.num_rows() {
            let key = key_at(batch, keys.len(), row);
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
                    if a.is_null(row) {
                        0
                    } else if let Some(d) = a.as_any().downcast_ref::<Decimal128Array>() {
                        d.value(row)
                    } else {
                        let d = a
                            .as_any()
                            .downcast_ref::<Int64Array>()
                            .expect("sum is Int64 or Decimal128");
                        i128::from(d.value(row))
                    }
                })
                .collect();
            // A global aggregate over no rows yields one row with count 0: not a group.
            if count > 0 {
                groups.insert(
                    key,
                    ExactGroup {
                        units: count,
                        sums,
                        bins: vec![Vec::new(); plan.values.len()],
                    },
                );
            }
        }
    }
    groups
}

/// Adds quantile value `i`'s histogram to each group: the number of units per (group, bin).
/// Each unit has one merged row per group, so rows are distinct units.
async fn add_quantile_bins(
    ctx: &SessionContext,
    keys: &[String],
    i: usize,
    v: &GateValue,
    groups: &mut BTreeMap<Vec<String>, ExactGroup>,
) -> Result<()> {
    let width = i128::from(v.hi) - i128::from(v.lo) + 1;
    let bin = format!(
        "CAST((CAST(v{i} AS DECIMAL(38,0)) - {lo}) * {b} / {width} AS BIGINT)",
        lo = v.lo,
        b = quantile::QUANTILE_BINS,
    );
    let mut select = keys.to_vec();
    select.push(format!("{bin} AS bin"));
    select.push("COUNT(*) AS n".into());
    let mut group_by = keys.to_vec();
    group_by.push("bin".into());
    let sql = format!(
        "SELECT {} FROM contributions GROUP BY {}",
        select.join(", "),
        group_by.join(", ")
    );
    for batch in ctx.sql(&sql).await?.collect().await? {
        let bins = batch
            .column(keys.len())
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| PolicyError::Aggregation("bin is not Int64".into()))?;
        let counts = batch
            .column(keys.len() + 1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| PolicyError::Aggregation("count is not Int64".into()))?;
        for row in 0..batch.num_rows() {
            let key = key_at(&batch, keys.len(), row);
            if let Some(group) = groups.get_mut(&key) {
                let hist = &mut group.bins[i];
                hist.resize(quantile::QUANTILE_BINS as usize, 0);
                let b = (bins.value(row).clamp(0, quantile::QUANTILE_BINS - 1)) as usize;
                hist[b] += i128::from(counts.value(row));
            }
        }
    }
    Ok(())
}

/// The mechanisms of one plan with their interval half-widths, computed once per release.
struct Noisers {
    count: Box<dyn IntegerNoise>,
    values: Vec<Box<dyn IntegerNoise>>,
    /// The count's 95% half-width (its own interval) and 97.5% half-width (its share of a
    /// centred sum's or a mean's interval).
    count_k95: u128,
    count_k975: u128,
    /// Per value: the 95% half-width (a sum whose midpoint is 0), the 97.5% one (the centred
    /// sum's share of a combined interval), and the 99% one (the quantile floor).
    value_k95: Vec<u128>,
    value_k975: Vec<u128>,
    value_k99: Vec<u128>,
}

impl Noisers {
    fn new(plan: &JobPlan) -> Noisers {
        let (count, values) = mechanisms(plan);
        let widths = |c: f64| values.iter().map(|m| m.half_width(c)).collect::<Vec<_>>();
        Noisers {
            count_k95: count.half_width(0.95),
            count_k975: count.half_width(0.975),
            value_k95: widths(0.95),
            value_k975: widths(0.975),
            value_k99: widths(0.99),
            count,
            values,
        }
    }
}

/// The noisy unit count of one group, as an integer (the sums and means are built on it) and as a
/// cell.
struct NoisyCount {
    noisy: i128,
    cell: NoisyCell,
}

/// The noisy release of exact aggregates: noise on every cell, then partition selection (or the
/// public groups). This is where the privacy guarantee is made; see the module docs.
pub fn add_noise(plan: &JobPlan, exact: &ExactGroups, rng: &mut dyn GateRng) -> Release {
    let noisers = Noisers::new(plan);
    let threshold = selection_threshold(plan, &noisers);
    let empty = ExactGroup {
        units: 0,
        sums: vec![0; plan.values.len()],
        bins: vec![Vec::new(); plan.values.len()],
    };
    let mut rows = Vec::new();
    for (key, group) in candidates(plan, exact, &empty) {
        let noisy = group.units + noisers.count.sample_noise(rng);
        let count = NoisyCount {
            noisy,
            cell: fixed_cell(noisy, noisers.count.as_ref(), noisers.count_k95, 1),
        };
        // Noise every value even for a group about to be withheld, so the work done per group (and
        // hence timing) does not depend on the threshold decision.
        let values: Vec<ReleasedValue> = (0..plan.values.len())
            .map(|i| noisy_value(plan, i, group, &count, &noisers, rng))
            .collect();
        if threshold.is_none_or(|t| count.noisy >= i128::from(t)) {
            rows.push(ReleasedRow {
                key: key.clone(),
                units: count.cell,
                values,
            });
        }
    }
    let (epsilon, delta) = plan.epsilon_delta();
    Release {
        key_names: plan.keys.clone(),
        rows,
        mechanism: format!("{} (exact sampler, ChaCha20 CSPRNG)", noisers.count.name()),
        epsilon: epsilon.as_f64(),
        delta: delta.as_f64(),
        suppression_rule: suppression_rule(plan, threshold),
        granularity: 1.0 / fixed::SCALE as f64,
        estimates: Vec::new(),
        count_name: None,
    }
}

/// The noisy unit count a group needs to be released when its keys come from the data:
/// `max(min_units_per_group, τ_δ)`; `None` when every group is released (public groups).
fn selection_threshold(plan: &JobPlan, noisers: &Noisers) -> Option<u64> {
    plan.public_groups.is_none().then(|| {
        noisers
            .count
            .selection_threshold(plan.max_groups_per_unit, plan.charge.delta_selection)
            .max(plan.min_units_per_group)
    })
}

/// The 95% half-width of value `i`'s released sum `C' + mid · N'` (see [`centred_sum`]).
fn sum_half_width(noisers: &Noisers, i: usize, mid: i128) -> u128 {
    if mid == 0 {
        noisers.value_k95[i]
    } else {
        noisers.value_k975[i] + mid.unsigned_abs() * noisers.count_k975
    }
}

/// The groups that may be released, in key order (so that output order says nothing about the
/// data): every public group (empty ones as `empty`), or every group the data produced.
fn candidates<'a>(
    plan: &'a JobPlan,
    exact: &'a ExactGroups,
    empty: &'a ExactGroup,
) -> Vec<(&'a Vec<String>, &'a ExactGroup)> {
    match &plan.public_groups {
        Some(public) => {
            let mut public: Vec<&Vec<String>> = public.iter().collect();
            public.sort();
            public
                .into_iter()
                .map(|k| (k, exact.groups.get(k).unwrap_or(empty)))
                .collect()
        }
        None => exact.groups.iter().collect(),
    }
}

/// The rule that withheld groups, stated without saying how many it withheld.
fn suppression_rule(plan: &JobPlan, threshold: Option<u64>) -> String {
    match threshold {
        None if plan.keys.is_empty() => "none: one group, always released".to_owned(),
        None => {
            "none: the holder's public partitions are all released, empty ones included".to_owned()
        }
        Some(t) => format!(
            "groups whose noisy count of distinct units is below {t} are withheld (the larger of \
             the policy minimum {} and the partition-selection threshold for δ = {})",
            plan.min_units_per_group, plan.charge.delta_selection
        ),
    }
}

/// Value `i` of one group, noised.
fn noisy_value(
    plan: &JobPlan,
    i: usize,
    group: &ExactGroup,
    count: &NoisyCount,
    noisers: &Noisers,
    rng: &mut dyn GateRng,
) -> ReleasedValue {
    let spec = &plan.values[i];
    let mech = noisers.values[i].as_ref();
    match spec.aggregate {
        Aggregate::Quantile(q_micro) => {
            let exact = &group.bins[i];
            let noisy: Vec<i128> = (0..quantile::QUANTILE_BINS as usize)
                .map(|b| exact.get(b).copied().unwrap_or(0) + mech.sample_noise(rng))
                .collect();
            let floor = noisers.value_k99[i];
            let estimate =
                quantile::estimate(&noisy, f64::from(q_micro) / 1e6, spec.lo, spec.hi, floor);
            let width = (spec.hi - spec.lo + 1) as f64 / quantile::QUANTILE_BINS as f64;
            ReleasedValue {
                name: spec.name.clone(),
                sum: None,
                mean: None,
                quantile: Some(QuantileCell {
                    q: f64::from(q_micro) / 1e6,
                    value: on_grid(estimate / fixed::SCALE as f64),
                    mechanism: mech.name().into(),
                    noise_scale: mech.scale(),
                    bin_width: width / fixed::SCALE as f64,
                }),
                variance: None,
                stddev: None,
            }
        }
        Aggregate::Sum | Aggregate::Mean => {
            let mid = midpoint(spec);
            // The centred sum Σ(x − mid): each unit moves it by at most `sensitivity(spec)`.
            let centred = group.sums[i] - mid * group.units;
            let noisy_centred = centred + mech.sample_noise(rng);
            let sum = centred_sum(noisy_centred, mid, count, mech, noisers, i);
            let mean = (spec.aggregate == Aggregate::Mean)
                .then(|| mean_cell(spec, noisy_centred, &sum, count, noisers, i))
                .flatten()
                .map(Mean::Cell);
            ReleasedValue {
                name: spec.name.clone(),
                sum: Some(sum),
                mean,
                quantile: None,
                variance: None,
                stddev: None,
            }
        }
    }
}

/// The sum estimate `C' + mid · N'` from the noisy centred sum `C'` and the noisy count `N'`
/// (post-processing). Its interval: with `mid = 0` the centred sum's own 95% interval; otherwise
/// `± (k_C + |mid| · k_N)` with both at 97.5%, which covers the true sum with probability at least
/// 95% (union bound over the two noises).
fn centred_sum(
    noisy_centred: i128,
    mid: i128,
    count: &NoisyCount,
    mech: &dyn IntegerNoise,
    noisers: &Noisers,
    i: usize,
) -> NoisyCell {
    let estimate = noisy_centred + mid * count.noisy;
    fixed_cell(
        estimate,
        mech,
        sum_half_width(noisers, i, mid),
        fixed::SCALE,
    )
}

/// The mean `mid + C' / N'` clamped to the bounds, when `N' ≥ 1` (post-processing). Its interval
/// is conservative: the true mean is `mid + C / N` with `C` in the centred sum's 97.5% interval
/// and `N` in the count's, so it lies between the extreme ratios of those intervals' ends (with
/// probability at least 95%); when the count's interval reaches below 1 it is the bounds. Its
/// `noise_scale` is the centred sum's scale over the noisy count, an approximation.
fn mean_cell(
    spec: &GateValue,
    noisy_centred: i128,
    sum: &NoisyCell,
    count: &NoisyCount,
    noisers: &Noisers,
    i: usize,
) -> Option<NoisyCell> {
    if count.noisy < 1 {
        return None;
    }
    let per_one = fixed::SCALE as f64;
    let (lo, hi) = (spec.lo as f64 / per_one, spec.hi as f64 / per_one);
    let mid = midpoint(spec) as f64 / per_one;
    let n = count.noisy as f64;
    let value = on_grid((mid + noisy_centred as f64 / per_one / n).clamp(lo, hi));
    let (kc, kn) = (
        noisers.value_k975[i] as f64 / per_one,
        noisers.count_k975 as f64,
    );
    let c = noisy_centred as f64 / per_one;
    let (n_lo, n_hi) = (n - kn, n + kn);
    let ci95 = if n_lo >= 1.0 {
        let ratios = [
            (c - kc) / n_lo,
            (c - kc) / n_hi,
            (c + kc) / n_lo,
            (c + kc) / n_hi,
        ];
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        outward((mid + low).clamp(lo, hi), (mid + high).clamp(lo, hi))
    } else {
        [lo, hi]
    };
    Some(NoisyCell {
        value,
        mechanism: sum.mechanism.clone(),
        noise_scale: sum.noise_scale / n,
        ci95,
    })
}

/// Aggregates the bounded contributions of all workers, adds noise and selects the groups.
pub async fn release<R: Rng + CryptoRng>(
    plan: &JobPlan,
    bounders: Vec<Bounder>,
    rng: &mut R,
) -> Result<(Release, BoundingStats)> {
    let (exact, stats) = aggregate(plan, bounders).await?;
    Ok((add_noise(plan, &exact, rng), stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::JobPlan;
    use crate::model::Epsilon;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn plan(min_units: u64, max_groups: u32) -> Arc<JobPlan> {
        Arc::new(JobPlan {
            privacy_unit: Some("id".into()),
            columns: vec![],
            keys: vec!["g".into()],
            count_weight: 1,
            values: vec![GateValue {
                name: "x".into(),
                aggregate: Aggregate::Mean,
                lo: 0,
                hi: 10_000,
                weight: 1,
            }],
            epsilon: Epsilon(1_000_000),
            max_groups_per_unit: max_groups,
            min_units_per_group: min_units,
            max_rows_per_unit: 1000,
            blocks: None,
            noise: Noise::Laplace,
            charge: crate::Charge {
                epsilon_pure: Epsilon(1_000_000),
                delta_selection: Delta(1_000),
                ..Default::default()
            },
            public_groups: None,
            schedule: Default::default(),
            sql: None,
            join: None,
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
        // Count noise scale = G·W/ε = 2; the centred sum's scale = 2·(10 − 0)/2 = 10 (real units).
        assert_eq!(row.units.noise_scale, 2.0);
        assert!((row.values[0].sum.as_ref().unwrap().noise_scale - 10.0).abs() < 1e-9);
        assert!(row.units.ci95[0] <= 1000.0 + 40.0 && row.units.ci95[1] >= 1000.0 - 40.0);
        assert!((row.units.value - 1000.0).abs() < 40.0);
        assert!((row.values[0].sum.as_ref().unwrap().value - 10_000.0).abs() < 400.0);
        let mean = row.values[0].mean.as_ref().unwrap().value();
        assert!((mean - 10.0).abs() < 1.0, "{mean}");
    }

    /// `job check`'s figures are the released cells' figures: scale exactly, the interval's
    /// half-width up to the rounding of the interval's ends to the grid.
    #[test]
    fn the_forecast_is_what_the_release_carries() {
        let mut p = (*plan(5, 2)).clone();
        p.values[0].lo = 1_000_000; // [1000, 1010]: a centred sum with a non-zero midpoint
        p.values[0].hi = 1_010_000;
        p.values.push(GateValue {
            name: "total".into(),
            aggregate: Aggregate::Sum,
            lo: -5_000,
            hi: 5_000,
            weight: 3,
        });
        p.public_groups = Some(vec![vec!["a".into()], vec!["b".into()]]);
        let p = Arc::new(p);
        let mut b = Bounder::new(p.clone());
        for u in 0..300u64 {
            b.add_unit(
                u,
                vec![GateContribution {
                    key: vec![if u % 3 == 0 { "a" } else { "b" }.into()],
                    values: vec![1005.0, 2.0],
                }],
            );
        }
        let (rel, _) = run(&p, vec![b]);
        let f = forecast(&p);
        assert_eq!(f.threshold, None);
        assert_eq!(f.groups, Some(2));
        assert_eq!((f.epsilon, f.delta), (rel.epsilon, rel.delta));
        assert_eq!(f.suppression_rule, rel.suppression_rule);
        let close = |cell: &NoisyCell, want: &CellForecast| {
            assert_eq!(cell.noise_scale, want.noise_scale);
            let half = (cell.ci95[1] - cell.ci95[0]) / 2.0;
            assert!(
                (half - want.ci95_half_width).abs() <= rel.granularity,
                "{half} vs {want:?}"
            );
        };
        for row in &rel.rows {
            close(&row.units, f.units.as_ref().unwrap());
            for (v, want) in row.values.iter().zip(&f.values) {
                close(v.sum.as_ref().unwrap(), want.sum.as_ref().unwrap());
            }
            let mean = row.values[0].mean.as_ref().unwrap().cell().unwrap();
            let numerator = f.values[0].mean_numerator.as_ref().unwrap();
            assert!((mean.noise_scale - numerator.noise_scale / row.units.value).abs() < 1e-9);
        }
        // Weights 1 (count), 1 (mean), 3 (total): W = 5, so the total gets 3/5 of ε.
        assert_eq!(f.total_weight, 5);
        let g = 2.0;
        assert_eq!(f.units.as_ref().unwrap().noise_scale, g * 5.0 / 1.0);
        assert!((f.values[0].sum.as_ref().unwrap().noise_scale - g * 5.0 * 5.0).abs() < 1e-9);
        assert!((f.values[1].sum.as_ref().unwrap().noise_scale - g * 5.0 * 5.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn the_forecast_names_the_selection_threshold_the_release_uses() {
        let p = plan(50, 1);
        let f = forecast(&p);
        let t = f.threshold.expect("keys from the data");
        assert!(t >= 50);
        let rel = run(&p, vec![Bounder::new(p.clone())]).0;
        assert!(
            rel.suppression_rule.contains(&format!("below {t} ")),
            "{}",
            rel.suppression_rule
        );
    }

    #[test]
    fn quantiles_come_from_the_units_histogram() {
        let mut p = (*plan(5, 1)).clone();
        p.values[0].aggregate = Aggregate::Quantile(900_000);
        p.values[0].hi = 2_000_000; // [0, 2000]
        let p = Arc::new(p);
        let (mut a, mut b) = (Bounder::new(p.clone()), Bounder::new(p.clone()));
        for u in 0..400u64 {
            let (bounder, key, v) = if u % 2 == 0 {
                (&mut a, "hs", 700.0)
            } else {
                (&mut b, "ba", 1300.0)
            };
            bounder.add_unit(u, vec![c(key, v + (u % 10) as f64)]);
        }
        let (rel, _) = run(&p, vec![a, b]);
        for (row, range) in rel.rows.iter().zip([1281.0..1313.0, 687.0..719.0]) {
            let q = row.values[0].quantile.as_ref().unwrap();
            assert!(range.contains(&q.value), "{:?}: {q:?}", row.key);
            assert!(row.values[0].sum.is_none());
        }
    }

    #[test]
    fn int64_and_decimal_sums_agree() {
        let p = plan(5, 1);
        let exact_with = |decimal: bool| {
            FORCE_DECIMAL_SUMS.with(|f| f.set(decimal));
            let mut b = Bounder::new(p.clone());
            for u in 0..300u64 {
                b.add_unit(u, vec![c(["x", "y"][u as usize % 2], (u % 7) as f64 + 0.5)]);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let out = rt.block_on(aggregate(&p, vec![b])).unwrap().0;
            FORCE_DECIMAL_SUMS.with(|f| f.set(false));
            out
        };
        let (int64, decimal) = (exact_with(false), exact_with(true));
        assert_eq!(int64, decimal);
        assert_eq!(int64.groups[&vec!["x".to_string()]].units, 150);
    }

    #[test]
    fn empty_input_releases_nothing() {
        let p = plan(5, 1);
        let (rel, _) = run(&p, vec![Bounder::new(p.clone())]);
        assert!(rel.rows.is_empty());
        assert!(rel.suppression_rule.contains("below 5"));
    }
}
