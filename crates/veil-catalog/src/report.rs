//! The registration report: what a holder should know about a file it just registered — per column
//! the type, null and distinct counts and the numeric range. It describes the data, so it is for
//! the holder (and reviewers) only, never for consumers; the engine stores it with the dataset and
//! checks policies against it.
use std::collections::HashSet;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use serde::{Deserialize, Serialize};

use crate::LoadedTable;
use crate::csv_ingest::CsvColumnFacts;

/// Distinct values counted per text column before the count is reported as "more than".
pub const DISTINCT_CAP: usize = 1000;

/// One column of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnReport {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub nulls: u64,
    /// Distinct non-null values of a text column, up to [`DISTINCT_CAP`] (`distinct_capped`: more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct: Option<u64>,
    #[serde(default)]
    pub distinct_capped: bool,
    /// Smallest and largest value of a numeric column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[f64; 2]>,
    /// CSV only: values that had spaces around them.
    #[serde(default)]
    pub padded: u64,
    /// CSV only, text columns: values that parse as numbers.
    #[serde(default)]
    pub numeric_looking: u64,
}

/// The report on one registered file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestReport {
    pub rows: u64,
    /// Whether padding was trimmed (CSV read with trimming on; other formats: no).
    pub trimmed: bool,
    pub columns: Vec<ColumnReport>,
}

impl IngestReport {
    /// Builds the report for `table`; `csv` holds what CSV ingest counted and whether it trimmed.
    pub fn of(table: &LoadedTable, csv: Option<(&[CsvColumnFacts], bool)>) -> IngestReport {
        let columns = table
            .schema
            .fields()
            .iter()
            .enumerate()
            .map(|(j, f)| {
                let arrays: Vec<&ArrayRef> = table.batches.iter().map(|b| b.column(j)).collect();
                let facts = csv.map(|(f, _)| f[j].clone()).unwrap_or_default();
                column_report(f.name(), f.data_type(), &arrays, facts)
            })
            .collect();
        IngestReport {
            rows: table.rows,
            trimmed: csv.is_some_and(|(_, trimmed)| trimmed),
            columns,
        }
    }

    /// Why a policy should think twice about classifying `column`, if anything: values that keep
    /// their padding, a text column of mostly numbers, a column mostly null.
    pub fn warnings_for(&self, column: &str) -> Vec<String> {
        let Some(c) = self.columns.iter().find(|c| c.name == column) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if !self.trimmed && c.padded > 0 {
            out.push(format!(
                "column `{column}`: {} values have spaces around them (register with trimming on)",
                c.padded
            ));
        }
        let present = self.rows.saturating_sub(c.nulls);
        if c.data_type == "Utf8" && present > 0 && c.numeric_looking * 2 > present {
            out.push(format!(
                "column `{column}` is text but most of its values are numbers: a few non-numbers \
                 (missing-value markers?) made it text; give `--null` or `--columns {column}:float`"
            ));
        }
        if self.rows > 0 && c.nulls * 2 > self.rows {
            out.push(format!("column `{column}` is mostly null"));
        }
        out
    }
}

fn column_report(
    name: &str,
    ty: &DataType,
    arrays: &[&ArrayRef],
    facts: CsvColumnFacts,
) -> ColumnReport {
    let nulls = arrays.iter().map(|a| a.null_count() as u64).sum();
    let (distinct, distinct_capped) = if matches!(ty, DataType::Utf8) {
        let (n, capped) = distinct_text(arrays);
        (Some(n), capped)
    } else {
        (None, false)
    };
    ColumnReport {
        name: name.to_owned(),
        data_type: ty.to_string(),
        nulls,
        distinct,
        distinct_capped,
        range: numeric_range(ty, arrays),
        padded: facts.padded,
        numeric_looking: facts.numeric_looking,
    }
}

fn distinct_text(arrays: &[&ArrayRef]) -> (u64, bool) {
    let mut seen: HashSet<&str> = HashSet::new();
    for a in arrays {
        let Some(a) = a.as_any().downcast_ref::<StringArray>() else {
            continue;
        };
        for v in a.iter().flatten() {
            seen.insert(v);
            if seen.len() > DISTINCT_CAP {
                return (DISTINCT_CAP as u64, true);
            }
        }
    }
    (seen.len() as u64, false)
}

fn numeric_range(ty: &DataType, arrays: &[&ArrayRef]) -> Option<[f64; 2]> {
    if !ty.is_numeric() {
        return None;
    }
    let mut range: Option<[f64; 2]> = None;
    for a in arrays {
        let Ok(f) = cast(a, &DataType::Float64) else {
            return None;
        };
        for v in f.as_primitive::<Float64Type>().iter().flatten() {
            range = Some(match range {
                None => [v, v],
                Some([lo, hi]) => [lo.min(v), hi.max(v)],
            });
        }
    }
    range
}
