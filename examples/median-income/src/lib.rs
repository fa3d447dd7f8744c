//! Median weekly income, for sample-and-aggregate mode (`blocks = N` in the manifest).
//!
//! A median is not a sum per group, so per-unit mode cannot compute it. In block mode Veil gives
//! this module the rows of a random block of people at a time; the module returns the block's
//! median as one unkeyed value. Veil clamps each block's answer to the manifest's range, averages
//! over blocks and adds noise scaled to range / blocks (GUPT). The module never sees more than
//! one block, and what it returns beyond that one number is ignored.
use veil_guest::{Emitter, Unit};

fn map(unit: &Unit, out: &mut Emitter) {
    let Some(income) = unit.column("weekly_income") else {
        veil_guest::log("median-income needs the weekly_income column");
        return;
    };
    let mut values: Vec<f64> = unit
        .rows()
        .filter_map(|row| row[income].as_f64())
        .filter(|v| v.is_finite())
        .collect();
    if values.is_empty() {
        return;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    let median = if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    };
    out.emit(&[], &[median]);
}

veil_guest::export_map!(map);
veil_guest::reads_columns!("weekly_income");
