//! The rows a module job over a link sees (docs/linking.md): each person's rows of both
//! datasets, one after the other — never paired up, so no person's input grows to the product of
//! their rows on the two sides. A row of the job's dataset carries its columns and NULL for the
//! linked dataset's; a row of the linked dataset the reverse. Which people are in is the job's
//! coverage.
use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::{cast, concat, filter};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use veil_policy::sql::Coverage;

/// `ours` (the job dataset's token column first, then its delivered columns) and `theirs` (the
/// linked dataset's token, then its delivered columns) as one batch: the token as text, our
/// columns, their columns, with the people `coverage` takes.
pub(crate) fn joined_rows(
    ours: &RecordBatch,
    theirs: &RecordBatch,
    coverage: Coverage,
) -> Result<RecordBatch, String> {
    let err = |e: datafusion::arrow::error::ArrowError| e.to_string();
    let our_unit = tokens(ours)?;
    let their_unit = tokens(theirs)?;
    let our_set: HashSet<&str> = our_unit.iter().flatten().collect();
    let their_set: HashSet<&str> = their_unit.iter().flatten().collect();
    let keep_ours = keep(&our_unit, |t| match coverage {
        Coverage::Inner => their_set.contains(t),
        Coverage::Left | Coverage::Full => true,
    });
    let keep_theirs = keep(&their_unit, |t| match coverage {
        Coverage::Inner | Coverage::Left => our_set.contains(t),
        Coverage::Full => true,
    });
    let (n_ours, n_theirs) = (keep_ours.true_count(), keep_theirs.true_count());
    let unit = concat(&[
        &filter(&our_unit, &keep_ours).map_err(err)?,
        &filter(&their_unit, &keep_theirs).map_err(err)?,
    ])
    .map_err(err)?;
    let mut fields = vec![Field::new("__unit", DataType::Utf8, true)];
    let mut columns: Vec<ArrayRef> = vec![unit];
    for (i, field) in ours.schema().fields().iter().enumerate().skip(1) {
        let kept = filter(ours.column(i), &keep_ours).map_err(err)?;
        let nulls = datafusion::arrow::array::new_null_array(field.data_type(), n_theirs);
        columns.push(concat(&[&kept, &nulls]).map_err(err)?);
        fields.push(field.as_ref().clone().with_nullable(true));
    }
    for (i, field) in theirs.schema().fields().iter().enumerate().skip(1) {
        let kept = filter(theirs.column(i), &keep_theirs).map_err(err)?;
        let nulls = datafusion::arrow::array::new_null_array(field.data_type(), n_ours);
        columns.push(concat(&[&nulls, &kept]).map_err(err)?);
        let name = format!("{}{}", veil_policy::manifest::JOINED_PREFIX, field.name());
        fields.push(field.as_ref().clone().with_name(name).with_nullable(true));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(err)
}

/// A batch's first column (the token) as text.
fn tokens(batch: &RecordBatch) -> Result<StringArray, String> {
    let text = cast(batch.column(0), &DataType::Utf8).map_err(|e| e.to_string())?;
    text.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| "token column is not text".to_owned())
}

/// Which rows to keep: those with a token that `wanted` takes (rows without one belong to
/// nobody and are dropped later either way).
fn keep(units: &StringArray, wanted: impl Fn(&str) -> bool) -> BooleanArray {
    units.iter().map(|t| Some(t.is_some_and(&wanted))).collect()
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Int64Array;

    use super::*;

    fn batch(tokens: &[&str], values: &[i64], name: &str) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("token", DataType::Utf8, true),
            Field::new(name, DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(tokens.to_vec())),
                Arc::new(Int64Array::from(values.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn coverage_decides_who_is_in_and_rows_are_never_paired() {
        let ours = batch(&["a", "a", "b"], &[1, 2, 3], "x");
        let theirs = batch(&["a", "c", "a"], &[10, 30, 11], "y");
        for (coverage, units, rows) in [
            (Coverage::Inner, vec!["a"], 4),
            (Coverage::Left, vec!["a", "b"], 5),
            (Coverage::Full, vec!["a", "b", "c"], 6),
        ] {
            let joined = joined_rows(&ours, &theirs, coverage).unwrap();
            assert_eq!(
                joined.num_rows(),
                rows,
                "{coverage:?}: one row per input row"
            );
            let unit = joined
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            let mut seen: Vec<&str> = unit.iter().flatten().collect();
            seen.sort();
            seen.dedup();
            assert_eq!(seen, units, "{coverage:?}");
            assert_eq!(joined.schema().field(2).name(), "joined.y");
            // Each row carries one side's value and NULL for the other's.
            for r in 0..joined.num_rows() {
                assert_ne!(joined.column(1).is_null(r), joined.column(2).is_null(r));
            }
        }
    }
}
