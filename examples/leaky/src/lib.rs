//! A red-team fixture, not an analysis: tries every side path to carry a person's raw income out
//! of the sandbox. It prints it to stdout, writes it to the holder log, and then panics with it in
//! the message. The tests check that the consumer sees none of it: only a status code.
use veil_guest::{Emitter, Unit};

fn map(unit: &Unit, _out: &mut Emitter) {
    let income = unit
        .column("weekly_income")
        .and_then(|c| unit.rows().next().and_then(|row| row[c].as_f64()))
        .unwrap_or(f64::NAN);
    println!("stdout: income={income}");
    eprintln!("stderr: income={income}");
    veil_guest::log(&format!("log: income={income}"));
    panic!("panic: income={income}");
}

veil_guest::export_map!(map);
