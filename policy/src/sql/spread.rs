//! `VARIANCE` and `STDDEV`: post-processing of two noisy sums and the noisy count.
//!
//! A spread of `x` with bounds `[lo, hi]` is released through the gate as two statistics, each
//! with the spread's weight of ε: the mean of the units' values `v` (its noisy centred sum `C_a`
//! around the gate's midpoint `a`) and the sum of squared deviations `(v − m)²` from the bounds'
//! centre `m`, each clamped to `[0, h²]` with `h = (hi − lo)/2` (its noisy centred sum `C_b`
//! around `b`). Both have the gate's sensitivity argument (one unit moves each by at most half its
//! range per group). With `N` units, the population variance is
//! `Σ(v − m)²/N − (Σv/N − m)² = (C_b/N + b) − (C_a/N + a − m)²`, computed from the noisy `C_a`,
//! `C_b` and `N` (post-processing: no further privacy cost) and clamped to `[0, h²]`; the sample
//! variance multiplies it by `N/(N − 1)`, the standard deviation is its square root.
//!
//! The interval is conservative: each of `C_a`, `C_b`, `N` lies within its half-width at
//! confidence `1 − 0.05/3` (so all three at once with probability at least 95%, union bound),
//! and the variance is bounded over that box term by term. Groups whose noisy count is below 2
//! release no spread.
use super::{PerUnit, SqlPlan};
use crate::gate::{self, NoisyCell, ReleasedValue, midpoint, on_grid, outward};
use crate::manifest::JobPlan;
use crate::{Release, fixed};

/// Confidence of each of the three noises, so that all three hold at 95% together.
const EACH: f64 = 1.0 - 0.05 / 3.0;

/// Replaces each spread's two released statistics by its one variance or standard deviation
/// cell. Requires `release` to come from `plan`, whose values follow `sql.per_unit`.
pub(super) fn combine(plan: &JobPlan, sql: &SqlPlan, release: &mut Release) {
    if !sql
        .per_unit
        .iter()
        .any(|p| matches!(p, PerUnit::SquaredDeviation { .. }))
    {
        return;
    }
    let (count, values) = gate::mechanisms(plan);
    let kn = count.half_width(EACH) as f64;
    for row in &mut release.rows {
        let mut combined = Vec::with_capacity(row.values.len());
        let mut k = 0;
        while k < row.values.len() {
            let Some(&PerUnit::SquaredDeviation {
                mid,
                stddev,
                sample,
            }) = sql.per_unit.get(k + 1)
            else {
                combined.push(row.values[k].clone());
                k += 1;
                continue;
            };
            let box_ = NoiseBox {
                n: row.units.value,
                kn,
                sum_a: row.values[k].sum.as_ref().map_or(0.0, |c| c.value),
                a: fixed::to_f64(midpoint(&plan.values[k])),
                ka: fixed::to_f64(values[k].half_width(EACH) as i128),
                sum_b: row.values[k + 1].sum.as_ref().map_or(0.0, |c| c.value),
                b: fixed::to_f64(midpoint(&plan.values[k + 1])),
                kb: fixed::to_f64(values[k + 1].half_width(EACH) as i128),
                m: mid,
                h: fixed::to_f64(i128::from(plan.values[k].hi - plan.values[k].lo)) / 2.0,
            };
            let scale = row.values[k + 1]
                .sum
                .as_ref()
                .map_or(0.0, |c| c.noise_scale / row.units.value.max(1.0));
            let mechanism = row.values[k + 1]
                .sum
                .as_ref()
                .map_or_else(String::new, |c| c.mechanism.clone());
            let cell = box_.variance(sample).map(|(value, ci)| {
                let (value, ci) = if stddev {
                    (value.sqrt(), [ci[0].sqrt(), ci[1].sqrt()])
                } else {
                    (value, ci)
                };
                NoisyCell {
                    value: on_grid(value),
                    mechanism,
                    noise_scale: scale,
                    ci95: outward(ci[0], ci[1]),
                }
            });
            combined.push(ReleasedValue {
                name: row.values[k].name.clone(),
                sum: None,
                mean: None,
                quantile: None,
                variance: if stddev { None } else { cell.clone() },
                stddev: if stddev { cell } else { None },
            });
            k += 2;
        }
        row.values = combined;
    }
}

/// The noisy sums and count of one spread in one group, with their half-widths.
struct NoiseBox {
    n: f64,
    kn: f64,
    /// The released sum of the values and the gate's midpoint and half-width for them.
    sum_a: f64,
    a: f64,
    ka: f64,
    /// The released sum of squared deviations, its midpoint and half-width.
    sum_b: f64,
    b: f64,
    kb: f64,
    /// The centre the deviations are measured from, and the bounds' half-range.
    m: f64,
    h: f64,
}

impl NoiseBox {
    /// The variance and its interval, or `None` when the noisy count is below 2.
    fn variance(&self, sample: bool) -> Option<(f64, [f64; 2])> {
        if self.n < 2.0 {
            return None;
        }
        let (ca, cb) = (self.sum_a - self.a * self.n, self.sum_b - self.b * self.n);
        let population =
            |ca: f64, cb: f64, n: f64| cb / n + self.b - (ca / n + self.a - self.m).powi(2);
        let correction = |n: f64| if sample { n / (n - 1.0) } else { 1.0 };
        let cap = self.h * self.h * correction(self.n);
        let value = (population(ca, cb, self.n) * correction(self.n)).clamp(0.0, cap);
        let (n_lo, n_hi) = (self.n - self.kn, self.n + self.kn);
        if n_lo < 2.0 {
            return Some((value, [0.0, cap]));
        }
        let corners = |f: &dyn Fn(f64, f64) -> f64, (lo, hi): (f64, f64)| {
            let v = [f(lo, n_lo), f(lo, n_hi), f(hi, n_lo), f(hi, n_hi)];
            (
                v.iter().copied().fold(f64::INFINITY, f64::min),
                v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            )
        };
        // Term by term over the box: E[(v − m)²] and (E[v] − m)².
        let (first_lo, first_hi) = corners(&|cb, n| cb / n + self.b, (cb - self.kb, cb + self.kb));
        let (t_lo, t_hi) = corners(
            &|ca, n| ca / n + self.a - self.m,
            (ca - self.ka, ca + self.ka),
        );
        let square_lo = if t_lo <= 0.0 && 0.0 <= t_hi {
            0.0
        } else {
            t_lo.powi(2).min(t_hi.powi(2))
        };
        let square_hi = t_lo.powi(2).max(t_hi.powi(2));
        let (c_lo, c_hi) = (correction(n_hi), correction(n_lo));
        let low = ((first_lo - square_hi) * c_lo).clamp(0.0, cap);
        let high = ((first_hi - square_lo) * c_hi).clamp(0.0, cap);
        Some((value, [low.min(value), high.max(value)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without noise (zero half-widths) the box gives the exact population and sample variance.
    #[test]
    fn the_variance_of_exact_sums_is_exact() {
        // Values 1, 3, 5 with bounds [0, 10]: m = 5, mean 3, population variance 8/3.
        let b = NoiseBox {
            n: 3.0,
            kn: 0.0,
            sum_a: 9.0,
            a: 5.0,
            ka: 0.0,
            sum_b: 16.0 + 4.0,
            b: 12.5,
            kb: 0.0,
            m: 5.0,
            h: 5.0,
        };
        let (pop, ci) = b.variance(false).unwrap();
        assert!((pop - 8.0 / 3.0).abs() < 1e-9, "{pop}");
        assert!((ci[0] - pop).abs() < 1e-9 && (ci[1] - pop).abs() < 1e-9);
        let (samp, _) = b.variance(true).unwrap();
        assert!((samp - 4.0).abs() < 1e-9, "{samp}");
        let noisy = NoiseBox {
            ka: 2.0,
            kb: 3.0,
            kn: 0.5,
            ..b
        };
        let (v, ci) = noisy.variance(false).unwrap();
        assert!(
            ci[0] < v && v < ci[1] && ci[0] >= 0.0 && ci[1] <= 25.0,
            "{ci:?}"
        );
    }
}
