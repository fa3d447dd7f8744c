//! What a job will release, known before it runs: the noise each released cell will carry, the
//! threshold that withholds groups and the ε/δ it spends — all functions of the job's plan (policy
//! and manifest), none of the data. `veil job check` shows it; the figures come from the same
//! [`Noisers`] the release is made with, so they are the released cells' figures exactly.
use serde::{Deserialize, Serialize};

use super::{Noisers, midpoint, selection_threshold, sum_half_width, suppression_rule};
use crate::fixed;
use crate::manifest::{Aggregate, GateValue, JobPlan};
use crate::mechanisms::SampleAggregate;

/// The noise one kind of released cell carries: every released cell of that kind has exactly this
/// mechanism and scale, and its `ci95` is its value ± `ci95_half_width` (for a count or a sum;
/// see [`ValueForecast`] for means).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellForecast {
    pub mechanism: String,
    /// `b` (Laplace) or `σ` (Gaussian), in the cell's units.
    pub noise_scale: f64,
    /// Half the width of the cell's 95% interval.
    pub ci95_half_width: f64,
}

/// The forecast of one value the manifest asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueForecast {
    pub name: String,
    /// `sum`, `mean` or `quantile`.
    pub aggregate: String,
    /// The bounds each unit's value is clamped to.
    pub bounds: [f64; 2],
    /// Its weight, and so its share of ε: `weight / total_weight`.
    pub weight: u32,
    /// The released sum (sum and mean values; block estimates in sample-and-aggregate mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<CellForecast>,
    /// A mean is `mid + C'/N'` (noisy centred sum over noisy count): its scale is
    /// `centred_sum_scale / N'`, so it shrinks as the group grows, and its interval depends on
    /// `N'`. This is the numerator's scale and 97.5% half-width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_numerator: Option<CellForecast>,
    /// For a quantile: the noise on each histogram bin's unit count, and the bins' width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantile_bins: Option<QuantileForecast>,
}

/// The histogram a quantile is read from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantileForecast {
    pub q: f64,
    pub bin_noise_scale: f64,
    pub bin_width: f64,
}

/// Everything a job's release will carry that is fixed before it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    pub mechanism: String,
    pub epsilon: f64,
    pub delta: f64,
    /// The noise on each group's count of distinct units (absent in sample-and-aggregate mode,
    /// which releases no counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<CellForecast>,
    /// The count's weight (its share of ε is `count_weight / total_weight`).
    pub count_weight: u32,
    pub total_weight: u64,
    pub values: Vec<ValueForecast>,
    /// Groups whose noisy unit count is below this are withheld; absent when every group is
    /// released (public partitions, no keys, or sample-and-aggregate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u64>,
    /// The number of groups the release will have when they are fixed in advance (the holder's
    /// public partitions, or one group for a job without keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<u64>,
    pub suppression_rule: String,
    pub granularity: f64,
}

/// The forecast of `plan`'s release. Requires a plan made by [`crate::precheck`].
pub fn forecast(plan: &JobPlan) -> Forecast {
    if let Some(blocks) = SampleAggregate::for_plan(plan) {
        return block_forecast(plan, &blocks);
    }
    let noisers = Noisers::new(plan);
    let threshold = selection_threshold(plan, &noisers);
    let (epsilon, delta) = plan.epsilon_delta();
    Forecast {
        mechanism: format!("{} (exact sampler, ChaCha20 CSPRNG)", noisers.count.name()),
        epsilon: epsilon.as_f64(),
        delta: delta.as_f64(),
        units: Some(CellForecast {
            mechanism: noisers.count.name().into(),
            noise_scale: noisers.count.scale(),
            ci95_half_width: noisers.count_k95 as f64,
        }),
        count_weight: plan.count_weight,
        total_weight: super::total_weight(plan) as u64,
        values: (0..plan.values.len())
            .map(|i| value_forecast(plan, i, &noisers))
            .collect(),
        threshold,
        groups: plan.public_groups.as_ref().map(|g| g.len() as u64),
        suppression_rule: suppression_rule(plan, threshold),
        granularity: 1.0 / fixed::SCALE as f64,
    }
}

fn bounds(v: &GateValue) -> [f64; 2] {
    [fixed::to_f64(v.lo.into()), fixed::to_f64(v.hi.into())]
}

/// Value `i`'s cells, with the same half-widths [`super::centred_sum`] gives them.
fn value_forecast(plan: &JobPlan, i: usize, noisers: &Noisers) -> ValueForecast {
    let spec = &plan.values[i];
    let mech = noisers.values[i].as_ref();
    let per_one = fixed::SCALE as f64;
    let mut forecast = ValueForecast {
        name: spec.name.clone(),
        aggregate: String::new(),
        bounds: bounds(spec),
        weight: spec.weight,
        sum: None,
        mean_numerator: None,
        quantile_bins: None,
    };
    match spec.aggregate {
        Aggregate::Quantile(q_micro) => {
            forecast.aggregate = "quantile".into();
            let width =
                (spec.hi - spec.lo + 1) as f64 / crate::mechanisms::quantile::QUANTILE_BINS as f64;
            forecast.quantile_bins = Some(QuantileForecast {
                q: f64::from(q_micro) / 1e6,
                bin_noise_scale: mech.scale(),
                bin_width: width / per_one,
            });
        }
        Aggregate::Sum | Aggregate::Mean => {
            let k = sum_half_width(noisers, i, midpoint(spec));
            forecast.sum = Some(CellForecast {
                mechanism: mech.name().into(),
                noise_scale: mech.scale() / per_one,
                ci95_half_width: k as f64 / per_one,
            });
            forecast.aggregate = "sum".into();
            if spec.aggregate == Aggregate::Mean {
                forecast.aggregate = "mean".into();
                forecast.mean_numerator = Some(CellForecast {
                    mechanism: mech.name().into(),
                    noise_scale: mech.scale() / per_one,
                    ci95_half_width: noisers.value_k975[i] as f64 / per_one,
                });
            }
        }
    }
    forecast
}

/// Sample-and-aggregate: one estimate per value, the noisy sum over blocks divided by their number.
fn block_forecast(plan: &JobPlan, blocks: &SampleAggregate<'_>) -> Forecast {
    let l = f64::from(blocks.blocks());
    let per_one = fixed::SCALE as f64;
    let values = plan
        .values
        .iter()
        .enumerate()
        .map(|(j, v)| {
            let mech = blocks.mechanism(j);
            ValueForecast {
                name: v.name.clone(),
                aggregate: "block estimate".into(),
                bounds: bounds(v),
                weight: v.weight,
                sum: Some(CellForecast {
                    mechanism: "discrete Laplace".into(),
                    noise_scale: mech.scale() / per_one / l,
                    ci95_half_width: mech.half_width(0.95) as f64 / per_one / l,
                }),
                mean_numerator: None,
                quantile_bins: None,
            }
        })
        .collect();
    Forecast {
        mechanism:
            "sample-and-aggregate (GUPT) with discrete Laplace (exact sampler, ChaCha20 CSPRNG)"
                .into(),
        epsilon: plan.epsilon.as_f64(),
        delta: 0.0,
        units: None,
        count_weight: 0,
        total_weight: plan.values.len() as u64,
        values,
        threshold: None,
        groups: Some(1),
        suppression_rule: "none: one estimate per value, averaged over blocks".into(),
        granularity: 1.0 / per_one,
    }
}
