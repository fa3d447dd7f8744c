//! Quantiles (a median, a 90th percentile) from a noisy histogram.
//!
//! # How it works
//! Trusted code puts each privacy unit's clamped value (one per group, after the gate's merging)
//! into one of [`QUANTILE_BINS`] equal-width bins over the manifest's declared range `[lo, hi]`. The
//! bins are fixed by the manifest, never by the data. Each bin count gets the same exact discrete
//! noise as a unit count; [`estimate`] clips negative noisy counts to zero, walks the noisy
//! cumulative distribution to the `q`-th fraction of the noisy total and interpolates linearly
//! inside that bin.
//!
//! # Sensitivity argument
//! Adding or removing one unit adds or removes exactly one entry in one bin of each of at most
//! `G = max_groups_per_unit` groups, whatever its value (values are clamped into the range first).
//! So the histograms of one value, over all groups, have L1 sensitivity `G` and L2 sensitivity
//! `√G` — the same as the unit counts — and the value is released with one share of the job's
//! budget, exactly as a sum would be (see [`crate::gate`]).
//!
//! # Privacy guarantee
//! The noisy histogram is ε_share-DP (Laplace) or ρ_share-zCDP (Gaussian) by the argument above
//! (Dwork, McSherry, Nissim, Smith, "Calibrating noise to sensitivity in private data analysis",
//! TCC 2006, for histograms); the quantile is post-processing of it, at no further cost. Reading
//! quantiles off a noisy histogram or CDF is the approach of Hay, Rastogi, Miklau, Suciu
//! ("Boosting the accuracy of differentially private histograms through consistency", VLDB 2010)
//! without their hierarchy; Smith's exponential-mechanism quantile (STOC 2011) is the alternative
//! we did not take because it needs exact sampling of `exp(ε·score)` weights.
//!
//! # Accuracy
//! The error has two parts: the bin width `(hi − lo) / 64` (resolution) and the noise, which moves
//! the noisy CDF (the estimator soft-thresholds each bin by the 99% half-width of its noise first) by about `scale · sqrt(bins)` units — small against groups of thousands of units,
//! large against groups of tens. No exact confidence interval is given for a quantile: the
//! released figure carries its bin width and the noise scale of its bin counts instead.

/// Number of equal-width bins a quantile's range is cut into.
pub const QUANTILE_BINS: i64 = 64;

/// The bin of a clamped fixed-point value in `[lo, hi]`: `⌊(v − lo) · B / (hi − lo + 1)⌋ ∈ [0, B)`.
pub fn bin_of(value: i64, lo: i64, hi: i64) -> usize {
    let v = i128::from(value.clamp(lo, hi)) - i128::from(lo);
    let width = i128::from(hi) - i128::from(lo) + 1;
    (v * i128::from(QUANTILE_BINS) / width) as usize
}

/// The `q`-quantile (0 < q < 1) read from noisy bin counts over `[lo, hi]` (fixed-point units),
/// in fixed-point units. Each count is first lowered by `floor` and clipped at zero (soft
/// thresholding), so that the positive noise of many empty bins does not add up to spurious mass;
/// the gate passes the 99% half-width of the bin noise. With no mass left, the range's midpoint.
pub fn estimate(noisy_bins: &[i128], q: f64, lo: i64, hi: i64, floor: u128) -> f64 {
    let floor = i128::try_from(floor).unwrap_or(i128::MAX);
    let clipped: Vec<f64> = noisy_bins
        .iter()
        .map(|&c| c.saturating_sub(floor).max(0) as f64)
        .collect();
    let total: f64 = clipped.iter().sum();
    let (lo, hi) = (lo as f64, hi as f64);
    if total <= 0.0 {
        return (lo + hi) / 2.0;
    }
    let width = (hi - lo + 1.0) / clipped.len() as f64;
    let target = q * total;
    let mut below = 0.0;
    for (i, &c) in clipped.iter().enumerate() {
        if c > 0.0 && below + c >= target {
            let inside = (target - below) / c;
            return (lo + (i as f64 + inside) * width).min(hi);
        }
        below += c;
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_the_range_evenly() {
        assert_eq!(bin_of(0, 0, 63), 0);
        assert_eq!(bin_of(63, 0, 63), 63);
        assert_eq!(bin_of(10_000, 0, 63), 63, "clamped");
        assert_eq!(bin_of(-5, -5, 58), 0);
        let counts = (0..6400).fold(vec![0; 64], |mut acc, v| {
            acc[bin_of(v, 0, 6399)] += 1;
            acc
        });
        assert!(counts.iter().all(|&c| c == 100));
    }

    #[test]
    fn estimate_interpolates_the_cdf() {
        // Uniform mass over [0, 6399]: the median is near 3200, the 90th percentile near 5760.
        let bins = vec![100i128; 64];
        assert!((estimate(&bins, 0.5, 0, 6399, 0) - 3200.0).abs() < 1.0);
        assert!((estimate(&bins, 0.9, 0, 6399, 0) - 5760.0).abs() < 1.0);
        // Negative noisy counts are clipped; all-negative falls back to the midpoint.
        let mut skew = vec![-3i128; 64];
        skew[10] = 50;
        let m = estimate(&skew, 0.5, 0, 6399, 0);
        assert!((1000.0..1100.0).contains(&m), "{m}");
        assert_eq!(estimate(&[-1, -2], 0.5, 0, 99, 0), 49.5);
        // Soft thresholding: small positive noise in empty bins no longer drags the 90th
        // percentile away from the one bin that holds the mass.
        let mut noisy = vec![3i128; 64];
        noisy[10] = 200;
        let unfloored = estimate(&noisy, 0.9, 0, 6399, 0);
        let floored = estimate(&noisy, 0.9, 0, 6399, 5);
        assert!(
            unfloored > 1100.0 && (1000.0..1100.0).contains(&floored),
            "{unfloored} {floored}"
        );
    }
}
