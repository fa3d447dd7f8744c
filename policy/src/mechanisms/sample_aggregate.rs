//! Sample-and-aggregate: differentially private release of any computation that is stable on
//! random subsamples (a median, a regression coefficient, a model parameter).
//!
//! # How it works
//! Trusted code splits the privacy units into `ℓ` disjoint blocks, assigning each unit to a block
//! uniformly at random with a CSPRNG ([`assign_blocks`]). The untrusted module runs once per block,
//! in a fresh instance, on that block's rows and returns `d` numbers. [`SampleAggregate::release`]
//! clamps the `j`-th number of every block to the manifest's range `[lo_j, hi_j]` (in fixed point;
//! a block whose module faulted or returned the wrong shape counts as the midpoint of the range),
//! sums over blocks, adds discrete Laplace noise and divides by `ℓ`.
//!
//! # Sensitivity argument
//! `ℓ` comes from the manifest, never from the data. Adding or removing one privacy unit changes
//! the contents of exactly one block (each unit lives in one block; block membership of the other
//! units is unchanged under the coupling that draws each unit's block independently). That block's
//! output can move anywhere inside `[lo_j, hi_j]`, whatever the module computes — including a
//! fault, which maps to a fixed value in the range. So the sum over blocks of the clamped `j`-th
//! outputs has L1 sensitivity `hi_j − lo_j` (fixed-point units), and the vector of `d` sums has
//! sensitivity `Σ_j (hi_j − lo_j)` if each is released with its share of ε.
//!
//! # Privacy guarantee
//! The job's ε is split evenly over the `d` values (basic composition). Value `j`'s sum gets
//! discrete Laplace noise of scale `b_j = d · (hi_j − lo_j) / ε` ([`DiscreteLaplace`]), so each is
//! `ε/d`-DP and the whole release is `ε`-DP under add/remove-one-unit neighbours. Dividing by the
//! public `ℓ` is post-processing. Nothing the module returns besides the clamped numbers reaches the
//! consumer, and faults do not stop the job, so whether the module failed on some block is not
//! observable either.
//!
//! # Accuracy
//! The estimate's noise has scale `b_j / ℓ`: more blocks mean less noise but smaller blocks, whose
//! outputs are noisier estimates of the statistic. GUPT suggests blocks of about `n^0.6` units (so
//! `ℓ ≈ n^0.4`). The released interval covers the noise only, not the subsampling error.
//!
//! # Source
//! Smith, "Privacy-preserving statistical estimation with optimal convergence rates", STOC 2011;
//! Mohan, Thakurta, Shi, Song, Culler, "GUPT: privacy preserving data analysis made easy", SIGMOD
//! 2012 (which also clamps block outputs to an analyst-declared range, as here).
use rand::{CryptoRng, Rng};

use crate::fixed;
use crate::gate::{BlockEstimate, Release, cell, on_grid, outward};
use crate::manifest::{GateValue, JobPlan};
use crate::mechanisms::DiscreteLaplace;

/// Assigns each of `units` privacy units to one of `blocks` blocks, independently and uniformly at
/// random; returns the unit indices of each block.
pub fn assign_blocks<R: Rng + CryptoRng>(
    units: usize,
    blocks: u32,
    rng: &mut R,
) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); blocks as usize];
    for unit in 0..units {
        out[rng.random_range(0..blocks as usize)].push(unit);
    }
    out
}

/// The sample-and-aggregate release for one job plan.
#[derive(Debug, Clone)]
pub struct SampleAggregate<'a> {
    values: &'a [GateValue],
    blocks: u32,
    epsilon_micro: u64,
}

impl<'a> SampleAggregate<'a> {
    /// `None` if the plan is not a sample-and-aggregate plan.
    pub fn for_plan(plan: &'a JobPlan) -> Option<Self> {
        Some(SampleAggregate {
            values: &plan.values,
            blocks: plan.blocks?,
            epsilon_micro: plan.epsilon.micro(),
        })
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u32 {
        self.blocks
    }

    /// The mechanism for value `j`: scale `d · (hi − lo) / ε` on the sum over blocks.
    pub fn mechanism(&self, j: usize) -> DiscreteLaplace {
        let v = &self.values[j];
        let d = self.values.len() as u128;
        let range = (i128::from(v.hi) - i128::from(v.lo)) as u128;
        DiscreteLaplace::new(d * range * 1_000_000, u128::from(self.epsilon_micro.max(1)))
    }

    /// Releases the noisy averages. `outputs[b]` is block `b`'s module output, or `None` when the
    /// module faulted or returned something of the wrong shape there.
    pub fn release<R: Rng + CryptoRng>(
        &self,
        outputs: &[Option<Vec<f64>>],
        rng: &mut R,
    ) -> Release {
        assert_eq!(outputs.len(), self.blocks as usize, "one output per block");
        let unit = 1.0 / fixed::SCALE as f64;
        let l = f64::from(self.blocks);
        let estimates = self
            .values
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let midpoint = (i128::from(v.lo) + i128::from(v.hi)) / 2;
                let sum: i128 = outputs
                    .iter()
                    .map(|out| match out {
                        Some(values) if values.len() == self.values.len() => {
                            i128::from(fixed::to_fixed(values[j], v.lo, v.hi))
                        }
                        _ => midpoint,
                    })
                    .sum();
                // Noise the sum over blocks in fixed point, then scale by 1/ℓ (post-processing).
                let mech = self.mechanism(j);
                let noisy_sum = cell(sum, &mech, mech.half_width(0.95), fixed::SCALE, rng);
                BlockEstimate {
                    name: v.name.clone(),
                    estimate: crate::gate::NoisyCell {
                        value: on_grid(noisy_sum.value / l),
                        mechanism: noisy_sum.mechanism,
                        noise_scale: noisy_sum.noise_scale / l,
                        ci95: outward(noisy_sum.ci95[0] / l, noisy_sum.ci95[1] / l),
                    },
                    blocks: self.blocks,
                    bounds: [fixed::to_f64(v.lo.into()), fixed::to_f64(v.hi.into())],
                }
            })
            .collect();
        Release {
            key_names: Vec::new(),
            rows: Vec::new(),
            mechanism:
                "sample-and-aggregate (GUPT) with discrete Laplace (exact sampler, ChaCha20 CSPRNG)"
                    .into(),
            epsilon: crate::model::Epsilon(self.epsilon_micro).as_f64(),
            delta: 0.0,
            suppression_rule: "none: one estimate per value, averaged over blocks".into(),
            granularity: unit,
            estimates,
            count_name: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Epsilon;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn plan(blocks: u32) -> JobPlan {
        JobPlan {
            privacy_unit: Some("id".into()),
            columns: vec![],
            keys: vec![],
            count_weight: 1,
            values: vec![GateValue {
                name: "median".into(),
                aggregate: crate::Aggregate::Mean,
                lo: 0,
                hi: 1_000_000, // [0, 1000]
                weight: 1,
            }],
            epsilon: Epsilon(1_000_000),
            max_groups_per_unit: 1,
            min_units_per_group: 1,
            max_rows_per_unit: 1000,
            blocks: Some(blocks),
            noise: crate::Noise::Laplace,
            charge: crate::Charge {
                epsilon_pure: Epsilon(1_000_000),
                ..Default::default()
            },
            public_groups: Some(vec![vec![]]),
            schedule: Default::default(),
            sql: None,
            join: None,
        }
    }

    #[test]
    fn blocks_partition_the_units() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let blocks = assign_blocks(10_000, 25, &mut rng);
        let mut all: Vec<usize> = blocks.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..10_000).collect::<Vec<_>>());
        // Uniform assignment: every block near 400 (χ² with 24 degrees of freedom at α = 1e-6
        // stays below 74).
        let chi2: f64 = blocks
            .iter()
            .map(|b| (b.len() as f64 - 400.0).powi(2) / 400.0)
            .sum();
        assert!(chi2 < 74.0, "χ² = {chi2}");
    }

    #[test]
    fn clamps_block_outputs_and_scales_noise_by_range_over_blocks() {
        let plan = plan(50);
        let sa = SampleAggregate::for_plan(&plan).unwrap();
        // Range 1000 (fixed: 1e6 units), d = 1, ε = 1: scale 1e6 on the sum, 1e6 / 50 units on the
        // average, i.e. 20.0 in real terms.
        assert_eq!(sa.mechanism(0).scale(), 1e6);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        // 49 blocks say 500; one hostile block says 1e300 (clamped to 1000), so the true average is
        // 510; a NaN or a fault would count as the midpoint.
        let mut outputs = vec![Some(vec![500.0]); 49];
        outputs.push(Some(vec![1e300]));
        let mut sum = 0.0;
        let runs = 400;
        for _ in 0..runs {
            let r = sa.release(&outputs, &mut rng);
            let e = &r.estimates[0].estimate;
            assert!((e.noise_scale - 20.0).abs() < 1e-9);
            sum += e.value;
        }
        // The mean of 400 draws has standard deviation 20·√2/20 ≈ 1.4: ±10 is over 7 of them.
        let mean = sum / runs as f64;
        assert!((mean - 510.0).abs() < 10.0, "{mean}");
        // Faults and wrong shapes count as the midpoint (500).
        let faulty = vec![None; 50];
        let wrong = vec![Some(vec![1.0, 2.0]); 50];
        for outputs in [faulty, wrong] {
            let mut sum = 0.0;
            for _ in 0..runs {
                sum += sa.release(&outputs, &mut rng).estimates[0].estimate.value;
            }
            assert!((sum / runs as f64 - 500.0).abs() < 10.0);
        }
    }
}
