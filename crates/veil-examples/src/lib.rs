//! The example guest modules, compiled from `examples/` by this crate's build script and embedded,
//! so that `veil demo` and the tests need no separate build step.
#![forbid(unsafe_code)]

/// Mean weekly income by education level (`examples/income-by-education`).
pub const INCOME_BY_EDUCATION: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/income_by_education.wasm"));
/// Number of people by age band and region (`examples/people-by-age-region`).
pub const PEOPLE_BY_AGE_REGION: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/people_by_age_region.wasm"));
/// Test fixture: one group per column name the module can see (`examples/column-probe`).
pub const COLUMN_PROBE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/column_probe.wasm"));

/// The smallest guest: one constant contribution per unit; measures isolation cost (`examples/trivial`).
pub const TRIVIAL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/trivial.wasm"));

/// Median weekly income, for sample-and-aggregate mode (`examples/median-income`).
pub const MEDIAN_INCOME: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/median_income.wasm"));

/// Red-team fixture: leaks a raw value through stdout, the log and a panic (`examples/leaky`).
pub const LEAKY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/leaky.wasm"));

/// Every example as (file name, bytes).
pub const ALL: &[(&str, &[u8])] = &[
    ("income_by_education.wasm", INCOME_BY_EDUCATION),
    ("people_by_age_region.wasm", PEOPLE_BY_AGE_REGION),
    ("column_probe.wasm", COLUMN_PROBE),
    ("trivial.wasm", TRIVIAL),
    ("leaky.wasm", LEAKY),
    ("median_income.wasm", MEDIAN_INCOME),
];

/// Writes every example module into `dir`.
pub fn write_all(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in ALL {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}
