//! The discrete Laplace (two-sided geometric) mechanism with an exact sampler.
//!
//! # Privacy guarantee
//! For an integer-valued query `f` with L1 sensitivity `Δ` (the most `f` can change when one privacy
//! unit is added or removed), releasing `f(D) + Y` with `Y ~ DLap(b)`,
//! `P[Y = y] ∝ exp(-|y| / b)`, `b = Δ / ε`, satisfies pure `ε`-differential privacy: the ratio of
//! the probabilities of any output under neighbouring datasets is at most `exp(|f(D) - f(D')| / b)
//! ≤ exp(ε)` (Ghosh, Roughgarden, Sundararajan, "Universally utility-maximizing privacy mechanisms",
//! STOC 2009; Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy",
//! NeurIPS 2020, §2).
//!
//! # Why exact
//! Floating-point Laplace leaks through the set of representable outputs (Mironov, "On significance
//! of the least significant bits for differential privacy", CCS 2012). This sampler works only with
//! integers: the scale is a rational `t / s` (`u128`), randomness comes from a CSPRNG through
//! uniform integers, and every Bernoulli trial compares a uniform integer with a rational — so the
//! output distribution is exactly `DLap(t / s)`. It is Algorithm 2 of Canonne, Kamath and Steinke
//! (2020), with their Algorithm 1 for `Bernoulli(exp(-γ))`.
//!
//! # Running time
//! The loop that draws the geometric part `V` runs `V + 1` times, so the time grows with the size of
//! the noise drawn (Jin et al., "Are we there yet? Timing and floating-point attacks on differential
//! privacy systems", IEEE S&P 2022). Veil samples noise in the gate after the module has finished
//! and shows consumers no timing figures; the expected number of iterations is `O(1 + b / t)`.
use rand::{CryptoRng, Rng};

/// `DLap(t / s)`: `P[y] ∝ exp(-|y| · s / t)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscreteLaplace {
    t: u128,
    s: u128,
}

impl DiscreteLaplace {
    /// Scale `b = t / s`. `t = 0` means no noise (a query with sensitivity 0).
    pub fn new(t: u128, s: u128) -> Self {
        assert!(s > 0, "scale denominator must be positive");
        DiscreteLaplace { t, s }
    }

    /// The mechanism for a query with L1 sensitivity `sensitivity` (integer units) answered with
    /// privacy loss `epsilon_micro / 1e6`: `b = sensitivity · 1e6 / epsilon_micro`.
    pub fn for_sensitivity(sensitivity: u128, epsilon_micro: u64) -> Self {
        Self::new(sensitivity * 1_000_000, u128::from(epsilon_micro.max(1)))
    }

    /// The scale `b` as a real number (for reports; sampling never uses it).
    pub fn scale(&self) -> f64 {
        self.t as f64 / self.s as f64
    }

    /// Draws one sample.
    pub fn sample<R: Rng + CryptoRng + ?Sized>(&self, rng: &mut R) -> i128 {
        if self.t == 0 {
            return 0;
        }
        if let (Ok(t), Ok(s)) = (u64::try_from(self.t), u64::try_from(self.s)) {
            // The same algorithm on u64: uniform u64 draws are several times cheaper than u128.
            return sample_u64(t, s, rng);
        }
        loop {
            let u = rng.random_range(0..self.t);
            if !bernoulli_exp_neg(u, self.t, rng) {
                continue;
            }
            let mut v: u128 = 0;
            while bernoulli_exp_neg(1, 1, rng) {
                v += 1;
            }
            let x = u + self.t * v;
            let y = (x / self.s) as i128;
            let negative = rng.random::<bool>();
            if negative && y == 0 {
                continue;
            }
            return if negative { -y } else { y };
        }
    }

    /// Smallest `k` with `P[|Y| > k] ≤ 1 - confidence`: the half-width of an exact two-sided
    /// interval `[x - k, x + k]` that covers the true value with at least that probability.
    ///
    /// `P[|Y| > k] = 2 q^(k+1) / (1 + q)` with `q = exp(-1/b)`.
    pub fn half_width(&self, confidence: f64) -> u128 {
        if self.t == 0 {
            return 0;
        }
        let alpha = 1.0 - confidence;
        let q = (-(self.s as f64) / self.t as f64).exp();
        let tail = |k: u128| 2.0 * q.powf(k as f64 + 1.0) / (1.0 + q);
        let guess = ((alpha * (1.0 + q) / 2.0).ln() / q.ln()).ceil() - 1.0;
        let mut k = if guess.is_finite() && guess > 0.0 {
            guess as u128
        } else {
            0
        };
        // Correct any floating-point slack in the closed form.
        while k > 0 && tail(k - 1) <= alpha {
            k -= 1;
        }
        while tail(k) > alpha {
            k += 1;
        }
        k
    }

    /// Exact probability mass at `y` (as `f64`, for tests and reports).
    pub fn pmf(&self, y: i128) -> f64 {
        let q = (-(self.s as f64) / self.t as f64).exp();
        (1.0 - q) / (1.0 + q) * q.powf(y.unsigned_abs() as f64)
    }
}

/// `Bernoulli(num / den)` from one uniform integer.
fn bernoulli<R: Rng + ?Sized>(num: u128, den: u128, rng: &mut R) -> bool {
    rng.random_range(0..den) < num
}

/// `Bernoulli(exp(-num/den))` for `0 ≤ num/den ≤ 1` (CKS20, Algorithm 1, first case).
fn bernoulli_exp_neg_unit<R: Rng + ?Sized>(num: u128, den: u128, rng: &mut R) -> bool {
    bernoulli_exp_neg_unit_from(num, den, 1, rng)
}

/// The loop of [`bernoulli_exp_neg_unit`] from step `k` on (the u64 path hands over here).
fn bernoulli_exp_neg_unit_from<R: Rng + ?Sized>(
    num: u128,
    den: u128,
    mut k: u128,
    rng: &mut R,
) -> bool {
    loop {
        // Bernoulli(γ / k); the loop ends quickly since P[reach k] = γ^(k-1)/(k-1)!.
        let Some(scaled_den) = den.checked_mul(k) else {
            return k % 2 == 1;
        };
        if bernoulli(num, scaled_den, rng) {
            k += 1;
        } else {
            return k % 2 == 1;
        }
    }
}

/// `Bernoulli(exp(-num/den))` for any `num/den ≥ 0` (CKS20, Algorithm 1).
fn bernoulli_exp_neg<R: Rng + ?Sized>(mut num: u128, den: u128, rng: &mut R) -> bool {
    while num > den {
        if !bernoulli_exp_neg_unit(1, 1, rng) {
            return false;
        }
        num -= den;
    }
    bernoulli_exp_neg_unit(num, den, rng)
}

/// [`DiscreteLaplace::sample`] for `t, s < 2^64`, line for line.
fn sample_u64<R: Rng + ?Sized>(t: u64, s: u64, rng: &mut R) -> i128 {
    loop {
        let u = rng.random_range(0..t);
        if !bernoulli_exp_neg_u64(u, t, rng) {
            continue;
        }
        let mut v: u64 = 0;
        while bernoulli_exp_neg_unit_u64(1, 1, rng) {
            v += 1;
        }
        // u + t·v can exceed u64 for huge draws; fall back to u128 arithmetic there.
        let x = u128::from(u) + u128::from(t) * u128::from(v);
        let y = (x / u128::from(s)) as i128;
        let negative = rng.random::<bool>();
        if negative && y == 0 {
            continue;
        }
        return if negative { -y } else { y };
    }
}

fn bernoulli_exp_neg_unit_u64<R: Rng + ?Sized>(num: u64, den: u64, rng: &mut R) -> bool {
    let mut k: u64 = 1;
    loop {
        let Some(scaled_den) = den.checked_mul(k) else {
            // Beyond u64: continue exactly in u128.
            return bernoulli_exp_neg_unit_from(
                u128::from(num),
                u128::from(den),
                u128::from(k),
                rng,
            );
        };
        if rng.random_range(0..scaled_den) < num {
            k += 1;
        } else {
            return k % 2 == 1;
        }
    }
}

fn bernoulli_exp_neg_u64<R: Rng + ?Sized>(mut num: u64, den: u64, rng: &mut R) -> bool {
    while num > den {
        if !bernoulli_exp_neg_unit_u64(1, 1, rng) {
            return false;
        }
        num -= den;
    }
    bernoulli_exp_neg_unit_u64(num, den, rng)
}

#[cfg(test)]
mod tests {
    //! Goodness-of-fit tests at significance α = 1e-6 with fixed seeds, after OpenDP's
    //! `samplers/test.rs`: a wrong sampler fails them, a right one passes with probability 1 - 1e-6.
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// Critical value of the two-sided KS statistic for n = 5000 at α = 1e-6
    /// (`scipy.stats.kstwo(5000).isf(1e-6)`, as in OpenDP).
    const KS_CRITICAL_5000: f64 = 0.038051617888080105;

    fn samples(m: &DiscreteLaplace, n: usize, seed: u64) -> Vec<i128> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        (0..n).map(|_| m.sample(&mut rng)).collect()
    }

    /// Chi-square against the exact pmf, merging tails so every expected count is ≥ 5;
    /// critical value df + 6·sqrt(2·df) (≈ α = 1e-6 for these df).
    fn chi_square_passes(m: &DiscreteLaplace, xs: &[i128]) -> bool {
        let n = xs.len() as f64;
        let mut k: i128 = 0;
        while m.pmf(k + 1) * n >= 5.0 {
            k += 1;
        }
        // Bins: (-inf, -k-1], -k..=k, [k+1, inf)
        let tail_mass = (1.0 - (-k..=k).map(|y| m.pmf(y)).sum::<f64>()) / 2.0;
        let mut observed = vec![0f64; (2 * k + 3) as usize];
        for &x in xs {
            let bin = (x.clamp(-k - 1, k + 1) + k + 1) as usize;
            observed[bin] += 1.0;
        }
        let mut stat = 0.0;
        for (i, obs) in observed.iter().enumerate() {
            let y = i as i128 - k - 1;
            let p = if y.abs() == k + 1 {
                tail_mass
            } else {
                m.pmf(y)
            };
            let e = p * n;
            if e > 0.0 {
                stat += (obs - e).powi(2) / e;
            }
        }
        let df = (observed.len() - 1) as f64;
        stat < df + 6.0 * (2.0 * df).sqrt()
    }

    /// KS statistic of integer samples against the exact CDF, at every integer support point.
    fn ks_statistic(m: &DiscreteLaplace, xs: &[i128]) -> f64 {
        let mut sorted = xs.to_vec();
        sorted.sort_unstable();
        let n = sorted.len() as f64;
        let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
        // CDF at lo-1 from the closed form of the left tail.
        let q = (-(m.s as f64) / m.t as f64).exp();
        let left_tail = |y: i128| q.powf(-(y as f64)) / (1.0 + q); // P[Y <= y] for y <= 0
        let mut cdf = if lo <= 0 {
            left_tail(lo - 1)
        } else {
            1.0 - left_tail(-lo)
        };
        let mut idx = 0;
        let mut d: f64 = 0.0;
        for y in lo..=hi {
            cdf += m.pmf(y);
            while idx < sorted.len() && sorted[idx] <= y {
                idx += 1;
            }
            d = d.max((idx as f64 / n - cdf).abs());
        }
        d
    }

    #[test]
    fn fits_exact_distribution_at_several_scales() {
        for (i, (t, s)) in [(1u128, 1u128), (3, 2), (10, 1), (1, 3), (250, 7)]
            .into_iter()
            .enumerate()
        {
            let m = DiscreteLaplace::new(t, s);
            let xs = samples(&m, 5000, 42 + i as u64);
            let d = ks_statistic(&m, &xs);
            assert!(d < KS_CRITICAL_5000, "KS {d} for scale {t}/{s}");
            let xs = samples(&m, 50_000, 4242 + i as u64);
            assert!(chi_square_passes(&m, &xs), "chi-square for scale {t}/{s}");
        }
    }

    #[test]
    fn scales_beyond_u64_use_the_u128_path() {
        // b = 2^70 / 2^6 = 2^64: the mean absolute value of DLap(b) is close to b.
        let m = DiscreteLaplace::new(1 << 70, 1 << 6);
        let xs = samples(&m, 4000, 99);
        let mean_abs = xs.iter().map(|x| x.unsigned_abs() as f64).sum::<f64>() / 4000.0;
        let b = 2f64.powi(64);
        assert!((mean_abs / b - 1.0).abs() < 0.1, "{}", mean_abs / b);
        assert!(xs.iter().any(|&x| x < 0) && xs.iter().any(|&x| x > 0));
    }

    #[test]
    fn wrong_scale_is_caught() {
        // Negative control: samples at half the scale must fail the test for the claimed scale.
        let xs = samples(&DiscreteLaplace::new(5, 1), 50_000, 7);
        assert!(!chi_square_passes(&DiscreteLaplace::new(10, 1), &xs));
    }

    #[test]
    fn interval_covers_95_percent() {
        let m = DiscreteLaplace::new(20, 1);
        let k = m.half_width(0.95) as i128;
        let mass: f64 = (-k..=k).map(|y| m.pmf(y)).sum();
        let mass_smaller: f64 = (-(k - 1)..=(k - 1)).map(|y| m.pmf(y)).sum();
        assert!(
            mass >= 0.95 && mass_smaller < 0.95,
            "k = {k}, {mass}, {mass_smaller}"
        );
        assert_eq!(DiscreteLaplace::new(0, 1).half_width(0.95), 0);
        assert_eq!(
            DiscreteLaplace::new(0, 1).sample(&mut ChaCha20Rng::seed_from_u64(1)),
            0
        );
    }
}
