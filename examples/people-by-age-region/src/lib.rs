//! Number of people by age band and region.
//!
//! Each person contributes the value 1 to one group: (age band, region of their state). The gate
//! counts distinct people per group anyway; the value lets the same module feed a noisy sum.
use veil_guest::{Emitter, Unit};

fn map(unit: &Unit, out: &mut Emitter) {
    let (Some(age), Some(state)) = (unit.column("age"), unit.column("state")) else {
        veil_guest::log("people-by-age-region needs columns age and state");
        return;
    };
    // A person's rows all carry the same age and state; the first row is enough.
    let Some(row) = unit.rows().next() else { return };
    let (Some(age), Some(state)) = (row[age].as_i64(), row[state].as_str()) else { return };
    out.emit(&[age_band(age), region(state)], &[1.0]);
}

fn age_band(age: i64) -> &'static str {
    match age {
        ..=24 => "16-24",
        25..=34 => "25-34",
        35..=44 => "35-44",
        45..=54 => "45-54",
        55..=64 => "55-64",
        _ => "65+",
    }
}

/// US Census regions.
fn region(state: &str) -> &'static str {
    match state {
        "CT" | "ME" | "MA" | "NH" | "RI" | "VT" | "NJ" | "NY" | "PA" => "Northeast",
        "IL" | "IN" | "MI" | "OH" | "WI" | "IA" | "KS" | "MN" | "MO" | "NE" | "ND" | "SD" => {
            "Midwest"
        }
        "AZ" | "CO" | "ID" | "MT" | "NV" | "NM" | "UT" | "WY" | "AK" | "CA" | "HI" | "OR" | "WA" => {
            "West"
        }
        _ => "South",
    }
}

veil_guest::export_map!(map);
veil_guest::reads_columns!("age", "state");
