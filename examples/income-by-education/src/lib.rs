//! Mean weekly income by education level.
//!
//! Each person contributes once, to the group of their education level, with the average of their
//! weekly income records. The gate clamps that value to the manifest's bounds, counts distinct
//! people per group and releases noisy sums and counts; the mean is their ratio.
use veil_guest::{Emitter, Unit};

fn map(unit: &Unit, out: &mut Emitter) {
    let (Some(educ), Some(income)) = (unit.column("educ"), unit.column("weekly_income")) else {
        veil_guest::log("income-by-education needs columns educ and weekly_income");
        return;
    };
    let mut education = None;
    let (mut total, mut n) = (0.0, 0u32);
    for row in unit.rows() {
        if let Some(e) = row[educ].as_i64() {
            education = Some(e);
        }
        if let Some(w) = row[income].as_f64() {
            total += w;
            n += 1;
        }
    }
    if let (Some(e), true) = (education, n > 0) {
        out.emit(&[level(e)], &[total / f64::from(n)]);
    }
}

/// Years of schooling to a coarse level, so that groups stay large.
fn level(years: i64) -> &'static str {
    match years {
        ..=11 => "below high school",
        12 => "high school",
        13..=15 => "some college",
        16 => "bachelor",
        _ => "graduate",
    }
}

veil_guest::export_map!(map);
veil_guest::reads_columns!("educ", "weekly_income");
