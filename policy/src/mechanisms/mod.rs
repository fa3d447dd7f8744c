//! Differential-privacy mechanisms. Each file documents its guarantee, its sensitivity argument
//! and its sources next to the code, and tests its sampler statistically.
mod discrete_gaussian;
mod discrete_laplace;
pub mod quantile;
mod sample_aggregate;

pub use discrete_gaussian::DiscreteGaussian;
pub use discrete_laplace::DiscreteLaplace;
pub use sample_aggregate::{SampleAggregate, assign_blocks};

/// Upper `p` quantile of the standard normal (Acklam's rational approximation, |error| < 1.2e-9),
/// rounded up a little so intervals stay conservative.
pub(crate) fn normal_upper_quantile(p: f64) -> f64 {
    let q = (-2.0 * p.ln()).sqrt();
    let (c, d) = (
        [
            -7.784894002430293e-03,
            -3.223964580411365e-01,
            -2.400758277161838e+00,
            -2.549732539343734e+00,
            4.374664141464968e+00,
            2.938163982698783e+00,
        ],
        [
            7.784695709041462e-03,
            3.224671290700398e-01,
            2.445134137142996e+00,
            3.754408661907416e+00,
        ],
    );
    let x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
        / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0);
    -x + 1e-5
}
