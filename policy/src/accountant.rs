//! Privacy accounting: what a job costs and how costs add up per (consumer, dataset).
//!
//! Two composition rules, each exact for its mechanism family:
//! - **Pure DP (discrete Laplace)**: ε adds up (basic composition; Dwork and Roth, "The Algorithmic
//!   Foundations of Differential Privacy", 2014, Theorem 3.16).
//! - **Zero-concentrated DP (discrete Gaussian)**: ρ adds up (Bun and Steinke, TCC 2016, Lemma
//!   2.3), and the sum is converted to (ε, δ) once: ρ-zCDP implies `(ρ + 2·sqrt(ρ·ln(1/δ)), δ)`-DP
//!   (ibid., Proposition 1.3). Converting the sum rather than each job is what makes Gaussian jobs
//!   cheaper over many jobs.
//!
//! The consumer's spend on a dataset is therefore `ε = ε_pure + ε_zCDP(ρ_total, δ_conversion)` and
//! `δ = δ_conversion + δ_selection`, where `δ_conversion` is the sum of the δ each Gaussian job set
//! aside for conversion (ε_zCDP is decreasing in δ, so converting the total ρ at the total
//! conversion δ is valid) and `δ_selection` the sum of the δ spent on partition selection (basic
//! composition of approximate DP). The holder's `epsilon_total` and `delta_total` bound both.
//!
//! All quantities are integers in fixed units — ε in millionths ([`Epsilon`]), δ in 1e-15
//! ([`Delta`]), ρ in 1e-12 — so ledgers add exactly. Conversions round against the consumer: a
//! job's ρ is rounded down before noise is calibrated to it (more noise), and ε derived from ρ is
//! rounded up.
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::Epsilon;

/// A δ in units of 1e-15, so that sums are exact.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Delta(pub u64);

impl Delta {
    pub const PER_ONE: f64 = 1e15;
    /// Largest δ a policy may allow; beyond it (ε, δ)-DP promises little.
    pub const MAX: f64 = 1e-3;
    /// Smallest non-zero δ representable.
    pub const MIN: f64 = 1e-15;

    /// Converts a decimal δ, rounding down to the unit; rejects values outside `[MIN, MAX]`.
    pub fn from_f64(value: f64) -> Option<Self> {
        if !value.is_finite() || !(Self::MIN..=Self::MAX).contains(&value) {
            return None;
        }
        let units = (value * Self::PER_ONE).floor() as u64;
        (units > 0).then_some(Delta(units))
    }
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / Self::PER_ONE
    }
    pub fn saturating_sub(self, other: Delta) -> Delta {
        Delta(self.0.saturating_sub(other.0))
    }
    /// Half of this δ (rounded down), for jobs that spend δ on two things.
    pub fn half(self) -> Delta {
        Delta(self.0 / 2)
    }
}

impl fmt::Display for Delta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            write!(f, "0")
        } else {
            write!(f, "{:e}", self.as_f64())
        }
    }
}

/// ρ (zCDP) in units of 1e-12.
pub const RHO_PER_ONE: f64 = 1e12;

/// The largest ρ whose conversion at `delta` gives at most `epsilon`:
/// `ρ = (sqrt(ε + ln(1/δ)) − sqrt(ln(1/δ)))²`, in units of 1e-12, rounded down.
pub fn rho_for(epsilon: Epsilon, delta: Delta) -> u64 {
    let l = (1.0 / delta.as_f64()).ln();
    let root = (epsilon.as_f64() + l).sqrt() - l.sqrt();
    let mut rho = (root * root * RHO_PER_ONE).floor() as u64;
    // Guard against floating-point slack: the conversion of the result must not exceed ε.
    while rho > 0 && epsilon_of_rho(rho, delta) > epsilon {
        rho -= 1;
    }
    rho
}

/// `ε` of ρ-zCDP at `δ` (Bun–Steinke Proposition 1.3), rounded up to a millionth. `ρ = 0` costs 0.
pub fn epsilon_of_rho(rho: u64, delta: Delta) -> Epsilon {
    if rho == 0 {
        return Epsilon(0);
    }
    if delta.0 == 0 {
        return Epsilon(u64::MAX);
    }
    let r = rho as f64 / RHO_PER_ONE;
    let eps = r + 2.0 * (r * (1.0 / delta.as_f64()).ln()).sqrt();
    // Round up, plus one unit of slack for the floating-point evaluation.
    Epsilon((eps * Epsilon::MICRO as f64).ceil() as u64 + 1)
}

/// What one job costs, decided at pre-check from the manifest and the policy (never from data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Charge {
    /// ε of pure-DP (Laplace) mechanisms.
    pub epsilon_pure: Epsilon,
    /// ρ of zCDP (Gaussian) mechanisms, in 1e-12.
    pub rho: u64,
    /// δ set aside to convert ρ to (ε, δ).
    pub delta_conversion: Delta,
    /// δ spent on choosing which groups to release (partition selection).
    pub delta_selection: Delta,
}

impl Charge {
    /// The job's cost on its own, as (ε, δ): what the per-job cap limits.
    pub fn standalone(&self) -> (Epsilon, Delta) {
        Spent::default().plus(self).totals()
    }
}

/// What a consumer has spent on a dataset: the sums of its jobs' [`Charge`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Spent {
    pub epsilon_pure: Epsilon,
    pub rho: u64,
    pub delta_conversion: Delta,
    pub delta_selection: Delta,
}

impl Spent {
    pub fn plus(&self, c: &Charge) -> Spent {
        Spent {
            epsilon_pure: Epsilon(self.epsilon_pure.0.saturating_add(c.epsilon_pure.0)),
            rho: self.rho.saturating_add(c.rho),
            delta_conversion: Delta(self.delta_conversion.0.saturating_add(c.delta_conversion.0)),
            delta_selection: Delta(self.delta_selection.0.saturating_add(c.delta_selection.0)),
        }
    }

    /// Total (ε, δ) under the composition rules above.
    pub fn totals(&self) -> (Epsilon, Delta) {
        let eps = self
            .epsilon_pure
            .0
            .saturating_add(epsilon_of_rho(self.rho, self.delta_conversion).0);
        let delta = self
            .delta_conversion
            .0
            .saturating_add(self.delta_selection.0);
        (Epsilon(eps), Delta(delta))
    }

    /// Whether `charge` fits in the remaining budget; `Err` says which limit it breaks.
    pub fn admit(
        &self,
        charge: &Charge,
        epsilon_total: Epsilon,
        delta_total: Delta,
    ) -> Result<Spent, String> {
        let after = self.plus(charge);
        let (eps, delta) = after.totals();
        let (eps_now, delta_now) = self.totals();
        let (job_eps, job_delta) = charge.standalone();
        if eps > epsilon_total {
            return Err(format!(
                "the job needs ε = {job_eps} but only ε = {} of {epsilon_total} remains",
                epsilon_total.saturating_sub(eps_now)
            ));
        }
        if delta > delta_total {
            return Err(format!(
                "the job needs δ = {job_delta} but only δ = {} of {delta_total} remains",
                delta_total.saturating_sub(delta_now)
            ));
        }
        Ok(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pure_epsilon_adds_exactly() {
        let c = Charge {
            epsilon_pure: Epsilon(300_000),
            ..Charge::default()
        };
        let mut s = Spent::default();
        for _ in 0..3 {
            s = s.admit(&c, Epsilon(1_000_000), Delta(0)).unwrap();
        }
        assert_eq!(s.totals(), (Epsilon(900_000), Delta(0)));
        let err = s.admit(&c, Epsilon(1_000_000), Delta(0)).unwrap_err();
        assert!(err.contains("only ε = 0.1 of 1 remains"), "{err}");
    }

    #[test]
    fn zcdp_conversion_round_trips_conservatively() {
        let delta = Delta::from_f64(1e-7).unwrap();
        for eps in [10_000u64, 100_000, 1_000_000, 5_000_000] {
            let rho = rho_for(Epsilon(eps), delta);
            assert!(rho > 0);
            let back = epsilon_of_rho(rho, delta);
            assert!(back <= Epsilon(eps), "{back} > {eps}");
            assert!(
                back.0 + 20 >= eps,
                "{back} much below {eps}: rounding too coarse"
            );
        }
        // ε = 1, δ = 1e-7: ρ = (sqrt(1 + ln 1e7) − sqrt(ln 1e7))² ≈ 0.01497.
        let rho = rho_for(Epsilon(1_000_000), delta) as f64 / RHO_PER_ONE;
        assert!((rho - 0.014_97).abs() < 1e-4, "{rho}");
    }

    #[test]
    fn gaussian_jobs_compose_better_than_their_epsilons_added() {
        // Ten Gaussian jobs of ε = 0.5 each at δ = 1e-8: adding ρ and converting once costs far
        // less than 10 × 0.5.
        let delta = Delta::from_f64(1e-8).unwrap();
        let job = Charge {
            rho: rho_for(Epsilon(500_000), delta),
            delta_conversion: delta,
            ..Charge::default()
        };
        let mut s = Spent::default();
        for _ in 0..10 {
            s = s
                .admit(&job, Epsilon(100_000_000), Delta::from_f64(1e-3).unwrap())
                .unwrap();
        }
        let (eps, d) = s.totals();
        assert!(eps.as_f64() < 2.5, "ε after ten jobs: {eps}");
        assert_eq!(d, Delta(delta.0 * 10));
    }

    #[test]
    fn delta_limit_is_enforced() {
        let c = Charge {
            epsilon_pure: Epsilon(1),
            delta_selection: Delta::from_f64(4e-7).unwrap(),
            ..Charge::default()
        };
        let total = Delta::from_f64(1e-6).unwrap();
        let s = Spent::default().plus(&c).plus(&c);
        let err = s.admit(&c, Epsilon(1_000_000), total).unwrap_err();
        assert!(err.contains("needs δ = 4e-7"), "{err}");
        assert!(Delta::from_f64(0.5).is_none() && Delta::from_f64(f64::NAN).is_none());
    }
}
