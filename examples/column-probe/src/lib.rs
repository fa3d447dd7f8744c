//! A test fixture, not an analysis: contributes once to a group per column name it can see, plus
//! its row count. Tests use it to prove that columns the policy withholds never reach a module.
use veil_guest::{Emitter, Unit};

fn map(unit: &Unit, out: &mut Emitter) {
    for (name, _) in unit.columns() {
        out.emit(&[name], &[unit.row_count() as f64]);
    }
}

veil_guest::export_map!(map);
