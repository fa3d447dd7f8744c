//! A test fixture, not an analysis: contributes once, to the group named by the comma-joined list
//! of column names it can see, with its row count. Tests use it to prove that columns the policy
//! withholds never reach a module. One group per unit keeps it within any group limit.
use veil_guest::{Emitter, Unit};

fn map(unit: &Unit, out: &mut Emitter) {
    let names: Vec<&str> = unit.columns().iter().map(|(name, _)| *name).collect();
    out.emit(&[&names.join(",")], &[unit.row_count() as f64]);
}

veil_guest::export_map!(map);
