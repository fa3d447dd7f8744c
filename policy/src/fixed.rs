//! Fixed-point representation of released values.
//!
//! Module outputs are `f64`, but noise must be added to integers (exact discrete samplers), so the
//! gate quantizes every value to a multiple of the granularity `1 / SCALE` = 0.001 after clamping.
//! A bound of ±1e9 (the model's maximum) becomes ±1e12 units; sums are kept in `i128`, so no
//! realistic number of contributions can overflow.

/// Fixed-point units per 1.0: values are released with a granularity of 0.001.
pub const SCALE: i64 = 1000;

/// Turns declared real bounds into fixed-point bounds that lie inside them.
pub fn bounds_to_fixed(lo: f64, hi: f64) -> (i64, i64) {
    let flo = (lo * SCALE as f64).ceil() as i64;
    let fhi = (hi * SCALE as f64).floor() as i64;
    if flo <= fhi {
        (flo, fhi)
    } else {
        // Both bounds fall between two grid points (lo == hi off the grid): use the nearest one.
        let mid = (lo * SCALE as f64).round() as i64;
        (mid, mid)
    }
}

/// Clamps an untrusted value into `[lo, hi]` (fixed point) and quantizes it.
/// `NaN` — whatever its payload — becomes `lo`; infinities clamp to the nearer bound.
pub fn to_fixed(value: f64, lo: i64, hi: i64) -> i64 {
    if value.is_nan() {
        return lo;
    }
    let scaled = (value * SCALE as f64).round();
    // `as` saturates for out-of-range floats, and the clamp does the rest.
    (scaled as i64).clamp(lo, hi)
}

/// Back to a real number for display.
pub fn to_f64(value: i128) -> f64 {
    value as f64 / SCALE as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_and_quantizes() {
        let (lo, hi) = bounds_to_fixed(0.0, 10.0);
        assert_eq!((lo, hi), (0, 10_000));
        assert_eq!(to_fixed(1.23456, lo, hi), 1235);
        assert_eq!(to_fixed(1e300, lo, hi), hi);
        assert_eq!(to_fixed(f64::NEG_INFINITY, lo, hi), lo);
        assert_eq!(to_fixed(f64::NAN, lo, hi), lo);
        // A NaN with a payload (a covert channel) is still just `lo`.
        assert_eq!(to_fixed(f64::from_bits(0x7ff8_0000_dead_beef), lo, hi), lo);
        assert_eq!(bounds_to_fixed(0.0004, 0.0004), (0, 0));
        assert_eq!(bounds_to_fixed(-1.5, 2.25), (-1500, 2250));
    }
}
