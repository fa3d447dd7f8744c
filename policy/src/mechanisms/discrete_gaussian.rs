//! The discrete Gaussian mechanism with an exact sampler.
//!
//! # Privacy guarantee
//! For an integer-valued query `f` with L2 sensitivity `Δ₂` (over add/remove-one-unit neighbours),
//! releasing `f(D) + Y` with `Y ~ N_Z(0, σ²)`, `P[Y = y] ∝ exp(-y² / (2σ²))` on the integers,
//! satisfies `ρ`-zero-concentrated differential privacy with `ρ = Δ₂² / (2σ²)` (Canonne, Kamath,
//! Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020, Theorem 4; zCDP from
//! Bun and Steinke, "Concentrated Differential Privacy", TCC 2016). ρ-zCDP implies
//! `(ρ + 2·sqrt(ρ·ln(1/δ)), δ)`-DP for every `δ > 0` (Bun–Steinke, Proposition 1.3); the accountant
//! ([`crate::accountant`]) adds ρ over jobs and converts once, which is why Gaussian jobs cost less
//! than the same jobs under pure ε composition when a consumer runs many of them.
//!
//! # Sensitivity argument
//! The gate bounds one unit's influence: it reaches at most `G` groups and, in each, changes the
//! distinct-unit count by 1 and a value sum by at most `M` (its clamp). So the count vector has
//! `Δ₂ = sqrt(G)` and each value's sum vector `Δ₂ = M·sqrt(G)`: the Gaussian pays for `G` only as a
//! square root, where Laplace pays linearly.
//!
//! # Why exact
//! σ² is a rational `n / d` held as big integers; randomness comes from a CSPRNG through uniform
//! integers; every Bernoulli trial compares a uniform integer with a rational. This is Algorithm 3
//! of Canonne, Kamath and Steinke (2020): propose from the discrete Laplace with integer scale
//! `t = ⌊σ⌋ + 1`, accept with probability `exp(-(|Y| - σ²/t)² / (2σ²))`. No floating point is used
//! in sampling (Mironov, CCS 2012, shows why that matters).
//!
//! # Running time
//! Each proposal costs `O(1 + V)` Bernoulli trials, where `V` is the geometric part of the proposal,
//! and a proposal is accepted with probability at least about `1 / (1 + 2/√(2π)·…)` — in practice
//! under two proposals on average (CKS20, §5.3). Time therefore grows with `|Y| / t`, i.e. it
//! leaks something about the size of the noise drawn (Jin et al., IEEE S&P 2022). Veil samples noise
//! after the module has finished, in the gate, and shows consumers no timing figures.
use num_bigint::BigUint;
use rand::{CryptoRng, Rng};

use super::normal_upper_quantile;

/// `N_Z(0, n / d)`: the discrete Gaussian with variance parameter `σ² = n / d`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscreteGaussian {
    /// `σ²` numerator and denominator; `n = 0` means no noise.
    n: BigUint,
    d: BigUint,
    /// `t = ⌊σ⌋ + 1`, the integer scale of the discrete Laplace proposal.
    t: BigUint,
}

impl DiscreteGaussian {
    /// `σ² = n / d`.
    pub fn new(n: u128, d: u128) -> Self {
        Self::with_variance(BigUint::from(n), BigUint::from(d))
    }

    /// `σ² = n / d` for variances whose terms exceed `u128`.
    pub fn with_variance(n: BigUint, d: BigUint) -> Self {
        assert!(d > BigUint::ZERO, "variance denominator must be positive");
        // ⌊σ⌋ = ⌊sqrt(⌊n / d⌋)⌋ (exact: floor of sqrt of a rational equals isqrt of its floor).
        let t = (&n / &d).sqrt() + 1u32;
        DiscreteGaussian { n, d, t }
    }

    /// The mechanism giving `ρ_micro / 1e6`-zCDP for L2 sensitivity `sqrt(l2_squared)` integer units:
    /// `σ² = Δ₂² / (2ρ) = l2_squared · 1e6 / (2 · ρ_micro)`.
    pub fn for_zcdp(l2_squared: u128, rho_micro: u64) -> Self {
        Self::new(l2_squared * 1_000_000, 2 * u128::from(rho_micro.max(1)))
    }

    /// `σ` as a real number (for reports; sampling never uses it).
    pub fn sigma(&self) -> f64 {
        (big_to_f64(&self.n) / big_to_f64(&self.d)).sqrt()
    }

    /// Draws one sample.
    pub fn sample<R: Rng + CryptoRng + ?Sized>(&self, rng: &mut R) -> i128 {
        if self.n == BigUint::ZERO {
            return 0;
        }
        let t = &self.t;
        // Acceptance exponent: (|Y|·d·t − n)² / (2·n·d·t²).
        let den = BigUint::from(2u32) * &self.n * &self.d * t * t;
        loop {
            let y = discrete_laplace_integer(t, rng);
            let abs = BigUint::from(y.unsigned_abs());
            let a = &abs * &self.d * t;
            let diff = if a >= self.n {
                a - &self.n
            } else {
                &self.n - a
            };
            if bernoulli_exp_neg(&(&diff * &diff), &den, rng) {
                return y;
            }
        }
    }

    /// Smallest `k` with `P[|Y| > k] ≤ 1 - confidence`. For σ ≤ 2,000 it sums the exact
    /// (normalised) mass; above, it uses the bound `P[Y ≥ m] ≤ P[N(0, σ²) ≥ m − 1]` (CKS20,
    /// Proposition 25), so the interval still covers with at least the stated probability.
    pub fn half_width(&self, confidence: f64) -> u128 {
        let sigma = self.sigma();
        if sigma == 0.0 {
            return 0;
        }
        let alpha = 1.0 - confidence;
        if sigma > 2000.0 {
            return (normal_upper_quantile(alpha / 2.0) * sigma).ceil() as u128 + 1;
        }
        let pmf = self.pmf_table();
        let total: f64 = pmf[0] + 2.0 * pmf[1..].iter().sum::<f64>();
        let mut inside = pmf[0];
        let mut k = 0usize;
        while 1.0 - inside / total > alpha && k + 1 < pmf.len() {
            k += 1;
            inside += 2.0 * pmf[k];
        }
        k as u128
    }

    /// Unnormalised mass `exp(-y²/(2σ²))` for `y = 0, 1, ...` up to 40σ (for intervals and tests).
    fn pmf_table(&self) -> Vec<f64> {
        let s2 = big_to_f64(&self.n) / big_to_f64(&self.d);
        let end = (40.0 * s2.sqrt()).ceil() as usize + 2;
        (0..end)
            .map(|y| (-((y * y) as f64) / (2.0 * s2)).exp())
            .collect()
    }

    /// Exact probability mass at `y` (as `f64`, for tests).
    pub fn pmf(&self, y: i128) -> f64 {
        let table = self.pmf_table();
        let total: f64 = table[0] + 2.0 * table[1..].iter().sum::<f64>();
        table
            .get(y.unsigned_abs() as usize)
            .map_or(0.0, |p| p / total)
    }
}

fn big_to_f64(x: &BigUint) -> f64 {
    // Exact for the magnitudes used here (≤ 2^128), up to f64 rounding of the digits.
    x.to_u64_digits().iter().rev().fold(0.0, |acc, &digit| {
        acc * 18_446_744_073_709_551_616.0 + digit as f64
    })
}

/// A uniform integer in `[0, n)`, by rejection from the CSPRNG's bytes (exact, no modulo bias).
fn uniform_below<R: Rng + ?Sized>(n: &BigUint, rng: &mut R) -> BigUint {
    let bits = n.bits();
    let bytes = bits.div_ceil(8) as usize;
    let mut buf = vec![0u8; bytes];
    loop {
        rng.fill_bytes(&mut buf);
        let extra = (bytes as u64 * 8) - bits;
        if extra > 0 {
            // Little-endian: the last byte holds the top bits.
            buf[bytes - 1] &= 0xffu8 >> extra;
        }
        let x = BigUint::from_bytes_le(&buf);
        if &x < n {
            return x;
        }
    }
}

/// `Bernoulli(num / den)`, `num ≤ den`.
fn bernoulli<R: Rng + ?Sized>(num: &BigUint, den: &BigUint, rng: &mut R) -> bool {
    &uniform_below(den, rng) < num
}

/// `Bernoulli(exp(-num/den))` for `num/den ∈ [0, 1]` (CKS20, Algorithm 1, first case).
fn bernoulli_exp_neg_unit<R: Rng + ?Sized>(num: &BigUint, den: &BigUint, rng: &mut R) -> bool {
    let mut k = 1u32;
    loop {
        if bernoulli(num, &(den * k), rng) {
            k += 1;
        } else {
            return k % 2 == 1;
        }
    }
}

/// `Bernoulli(exp(-num/den))` for any `num/den ≥ 0` (CKS20, Algorithm 1): `⌊γ⌋` trials of
/// `Bernoulli(exp(-1))`, then one of the fractional part.
fn bernoulli_exp_neg<R: Rng + ?Sized>(num: &BigUint, den: &BigUint, rng: &mut R) -> bool {
    let one = BigUint::from(1u32);
    let whole = num / den;
    let mut i = BigUint::ZERO;
    while i < whole {
        if !bernoulli_exp_neg_unit(&one, &one, rng) {
            return false;
        }
        i += 1u32;
    }
    bernoulli_exp_neg_unit(&(num % den), den, rng)
}

/// Discrete Laplace with integer scale `t` (CKS20, Algorithm 2 with `s = 1`).
fn discrete_laplace_integer<R: Rng + ?Sized>(t: &BigUint, rng: &mut R) -> i128 {
    let one = BigUint::from(1u32);
    loop {
        let u = uniform_below(t, rng);
        if !bernoulli_exp_neg(&u, t, rng) {
            continue;
        }
        let mut v = BigUint::ZERO;
        while bernoulli_exp_neg_unit(&one, &one, rng) {
            v += 1u32;
        }
        let x = u + t * v;
        let x = i128::try_from(x).expect("noise beyond i128 has probability < 2^-100");
        let negative = rng.random::<bool>();
        if negative && x == 0 {
            continue;
        }
        return if negative { -x } else { x };
    }
}

#[cfg(test)]
mod tests {
    //! Goodness of fit at α = 1e-6 with fixed seeds, as OpenDP's `samplers/test.rs` does.
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// `scipy.stats.kstwo(5000).isf(1e-6)`.
    const KS_CRITICAL_5000: f64 = 0.038051617888080105;

    fn samples(m: &DiscreteGaussian, n: usize, seed: u64) -> Vec<i128> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        (0..n).map(|_| m.sample(&mut rng)).collect()
    }

    fn ks_statistic(m: &DiscreteGaussian, xs: &[i128]) -> f64 {
        let mut sorted = xs.to_vec();
        sorted.sort_unstable();
        let n = sorted.len() as f64;
        let reach = (45.0 * m.sigma()).ceil() as i128 + 2;
        let mut cdf = 0.0;
        let mut idx = 0;
        let mut d: f64 = 0.0;
        for y in -reach..=reach {
            cdf += m.pmf(y);
            while idx < sorted.len() && sorted[idx] <= y {
                idx += 1;
            }
            d = d.max((idx as f64 / n - cdf).abs());
        }
        d
    }

    /// Chi-square over bins with expected count ≥ 5 (tails merged); critical value
    /// df + 6·sqrt(2·df), beyond the 1 - 1e-6 quantile for these df.
    fn chi_square_passes(m: &DiscreteGaussian, xs: &[i128]) -> bool {
        let n = xs.len() as f64;
        let mut k: i128 = 0;
        while m.pmf(k + 1) * n >= 5.0 {
            k += 1;
        }
        let tail = (1.0 - (-k..=k).map(|y| m.pmf(y)).sum::<f64>()) / 2.0;
        let mut observed = vec![0f64; (2 * k + 3) as usize];
        for &x in xs {
            observed[(x.clamp(-k - 1, k + 1) + k + 1) as usize] += 1.0;
        }
        let mut stat = 0.0;
        for (i, obs) in observed.iter().enumerate() {
            let y = i as i128 - k - 1;
            let e = n * if y.abs() == k + 1 { tail } else { m.pmf(y) };
            if e > 0.0 {
                stat += (obs - e).powi(2) / e;
            }
        }
        let df = (observed.len() - 1) as f64;
        stat < df + 6.0 * (2.0 * df).sqrt()
    }

    #[test]
    fn fits_exact_distribution_at_several_scales() {
        for (i, (n, d)) in [(1u128, 1u128), (1, 4), (9, 1), (50, 3), (400, 1)]
            .into_iter()
            .enumerate()
        {
            let m = DiscreteGaussian::new(n, d);
            let xs = samples(&m, 5000, 17 + i as u64);
            let stat = ks_statistic(&m, &xs);
            assert!(stat < KS_CRITICAL_5000, "KS {stat} for σ² = {n}/{d}");
            let xs = samples(&m, 50_000, 1700 + i as u64);
            assert!(chi_square_passes(&m, &xs), "chi-square for σ² = {n}/{d}");
        }
    }

    #[test]
    fn wrong_variance_is_caught() {
        // Negative control: σ² = 4 samples must fail the test for σ² = 16.
        let xs = samples(&DiscreteGaussian::new(4, 1), 50_000, 3);
        assert!(!chi_square_passes(&DiscreteGaussian::new(16, 1), &xs));
        let xs = samples(&DiscreteGaussian::new(4, 1), 5000, 4);
        assert!(ks_statistic(&DiscreteGaussian::new(16, 1), &xs) > KS_CRITICAL_5000);
    }

    #[test]
    fn huge_variances_stay_exact_and_fast() {
        // σ ≈ 1.4e13: a fixed-point sum's noise; products overflow u128, the sampler must not.
        let m = DiscreteGaussian::new(2 * 10u128.pow(26), 1);
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let xs: Vec<i128> = (0..2000).map(|_| m.sample(&mut rng)).collect();
        let sd = (xs.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
        assert!(
            (sd / m.sigma() - 1.0).abs() < 0.1,
            "sd {sd} vs σ {}",
            m.sigma()
        );
    }

    #[test]
    fn interval_covers_95_percent() {
        let m = DiscreteGaussian::new(100, 1);
        let k = m.half_width(0.95) as i128;
        let mass: f64 = (-k..=k).map(|y| m.pmf(y)).sum();
        let smaller: f64 = (-(k - 1)..=(k - 1)).map(|y| m.pmf(y)).sum();
        assert!(mass >= 0.95 && smaller < 0.95, "k = {k}: {mass} {smaller}");
        // Above the exact range: the normal-tail bound, never narrower than 1.96σ.
        let big = DiscreteGaussian::new(10u128.pow(10), 1);
        assert!(big.half_width(0.95) as f64 >= 1.959_964 * 1e5);
        assert_eq!(DiscreteGaussian::new(0, 1).half_width(0.95), 0);
    }

    #[test]
    fn zcdp_calibration() {
        // Δ₂² = 1, ρ = 0.5 ⇒ σ² = 1.
        let m = DiscreteGaussian::for_zcdp(1, 500_000);
        assert!((m.sigma() - 1.0).abs() < 1e-12);
    }
}
