//! `veil dataset add --link-key COL`: the holder's side of join tokens (`veil_link`). Before the
//! file leaves this machine, each identifier in a link-key column is normalised, hashed to the
//! group and blinded; the domain evaluates the blinded points in batches (in local mode the
//! engine in this process, in remote mode the server), the proof of each batch is checked
//! against the domain's published link key, and the identifier is replaced by its token in a
//! temporary copy of the file, which is what gets registered. Raw identifiers never reach the
//! domain's store, logs or Parquet files.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use veil_engine::{CsvHeader as Header, CsvOptions};
use veil_link::{Element, Evaluation, MAX_BATCH, Proof, PublicKey, Request, normalise};

use crate::backend::Backend;

/// Rows read per round trip: every link-key cell of a chunk goes in one batch.
fn rows_per_batch(link_columns: usize) -> usize {
    (MAX_BATCH / link_columns.max(1)).max(1)
}

/// A copy of the CSV `file` with each `link_keys` column's identifiers replaced by tokens, in
/// `dir`; the copy keeps the file's name, delimiter, quoting and header. Empty identifiers (null
/// tokens, or nothing left after normalisation) stay empty: they link to nothing.
pub(crate) fn tokenize(
    backend: &mut dyn Backend,
    file: &Path,
    link_keys: &[String],
    csv: &CsvOptions,
    dir: &Path,
) -> Result<PathBuf> {
    let is_csv = file
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv") || e.eq_ignore_ascii_case("tsv"));
    if !is_csv {
        bail!(
            "--link-key needs a CSV file: {} is not one (export the table as CSV, or register \
             it without --link-key)",
            file.display()
        );
    }
    let key = PublicKey::from_hex(&backend.link_key()?.public_key)
        .context("the domain's link key is not a ristretto255 point")?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(csv.delimiter)
        .quote(csv.quote)
        .has_headers(false)
        .flexible(true)
        .from_path(file)
        .with_context(|| format!("opening {}", file.display()))?;
    let out_path = dir.join(file.file_name().context("the file has no name")?);
    let mut writer = csv::WriterBuilder::new()
        .delimiter(csv.delimiter)
        .quote(csv.quote)
        .from_path(&out_path)?;
    let mut records = reader.records();
    let has_header = csv.header != Header::Absent;
    let names = column_names(&mut records, has_header, csv, &mut writer)?;
    let indices = link_indices(&names, link_keys)?;
    let null = csv.null_tokens.first().cloned().unwrap_or_default();
    let mut chunk: Vec<csv::StringRecord> = Vec::new();
    for record in records {
        chunk.push(record.context("reading the CSV")?);
        if chunk.len() == rows_per_batch(indices.len()) {
            write_tokenized(backend, &key, &mut chunk, &indices, csv, &null, &mut writer)?;
        }
    }
    write_tokenized(backend, &key, &mut chunk, &indices, csv, &null, &mut writer)?;
    writer.flush()?;
    Ok(out_path)
}

/// The file's column names: its header row (copied to `writer`), or `--columns`.
fn column_names(
    records: &mut csv::StringRecordsIter<'_, std::fs::File>,
    has_header: bool,
    csv: &CsvOptions,
    writer: &mut csv::Writer<std::fs::File>,
) -> Result<Vec<String>> {
    let given = csv
        .columns
        .as_ref()
        .map(|c| c.iter().map(|s| s.name.clone()).collect::<Vec<_>>());
    if !has_header {
        return given.context("a CSV without a header row needs --columns");
    }
    let header = records
        .next()
        .context("the CSV is empty")?
        .context("reading the CSV's header")?;
    writer.write_record(&header)?;
    Ok(given.unwrap_or_else(|| header.iter().map(|h| h.trim().to_owned()).collect()))
}

/// The positions of the link-key columns; a name the file lacks is an error listing its columns.
fn link_indices(names: &[String], link_keys: &[String]) -> Result<Vec<usize>> {
    link_keys
        .iter()
        .map(|k| {
            names.iter().position(|n| n == k).with_context(|| {
                format!(
                    "--link-key `{k}`: the file has no such column (it has: {})",
                    names.join(", ")
                )
            })
        })
        .collect()
}

/// Tokenises the link-key cells of `chunk` in one round trip and writes the rows out.
fn write_tokenized(
    backend: &mut dyn Backend,
    key: &PublicKey,
    chunk: &mut Vec<csv::StringRecord>,
    indices: &[usize],
    csv: &CsvOptions,
    null: &str,
    writer: &mut csv::Writer<std::fs::File>,
) -> Result<()> {
    let mut cells: Vec<(usize, usize)> = Vec::new();
    let mut identifiers: Vec<String> = Vec::new();
    for (row, record) in chunk.iter().enumerate() {
        for &col in indices {
            let raw = record.get(col).unwrap_or("");
            let value = if csv.trim { raw.trim() } else { raw };
            if csv.null_tokens.iter().any(|t| t == value) {
                continue;
            }
            if let Some(id) = normalise(value) {
                cells.push((row, col));
                identifiers.push(id);
            }
        }
    }
    let tokens = tokens_of(backend, key, &identifiers)?;
    let mut by_cell = cells.into_iter().zip(tokens).peekable();
    for (row, record) in chunk.drain(..).enumerate() {
        let mut fields: Vec<String> = record.iter().map(str::to_owned).collect();
        for &col in indices {
            if col < fields.len() {
                fields[col] = null.to_owned();
            }
        }
        while let Some(((r, col), token)) = by_cell.next_if(|((r, _), _)| *r == row) {
            debug_assert_eq!(r, row);
            fields[col] = token;
        }
        writer.write_record(&fields)?;
    }
    Ok(())
}

/// The tokens of `identifiers` (normalised), by one evaluation whose proof is checked.
fn tokens_of(
    backend: &mut dyn Backend,
    key: &PublicKey,
    identifiers: &[String],
) -> Result<Vec<String>> {
    if identifiers.is_empty() {
        return Ok(Vec::new());
    }
    let request = Request::new(identifiers, &mut rand::rng())?;
    let blinded: Vec<String> = request.blinded().iter().map(Element::to_hex).collect();
    let answer = backend.evaluate_link(&blinded)?;
    let elements = answer
        .evaluated
        .iter()
        .enumerate()
        .map(|(i, e)| Element::from_hex(e, i))
        .collect::<Result<Vec<_>, _>>()?;
    let evaluation = Evaluation {
        elements,
        proof: Proof::from_hex(&answer.proof)?,
    };
    let tokens = request.finish(&evaluation, key)?;
    Ok(tokens.iter().map(|t| t.to_hex()).collect())
}
