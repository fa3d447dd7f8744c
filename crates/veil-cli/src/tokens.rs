//! `veil dataset add --link-key COL`: the holder's side of join tokens (`veil_link`), for CSV,
//! Parquet and Arrow IPC files. Before the file leaves this machine, each identifier in a link-key column is normalised, hashed to the
//! group and blinded; the domain evaluates the blinded points in batches (in local mode the
//! engine in this process, in remote mode the server), the proof of each batch is checked
//! against the domain's published link key, and the identifier is replaced by its token in a
//! temporary copy of the file, which is what gets registered. Raw identifiers never reach the
//! domain's store, logs or Parquet files.
use std::path::{Path, PathBuf};

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use veil_engine::{CsvHeader as Header, CsvOptions};
use veil_link::{Element, Evaluation, MAX_BATCH, Proof, PublicKey, Request, normalise};

use crate::backend::Backend;

/// Rows read per round trip: every link-key cell of a chunk goes in one batch.
fn rows_per_batch(link_columns: usize) -> usize {
    (MAX_BATCH / link_columns.max(1)).max(1)
}

/// A copy of `file` with each `link_keys` column's identifiers replaced by tokens, in `dir`: a
/// CSV file stays CSV (same name, delimiter, quoting and header); a Parquet or Arrow IPC file
/// becomes a Parquet file. Empty identifiers (nulls, null tokens, or nothing left after
/// normalisation) stay empty: they link to nothing.
pub(crate) fn tokenize(
    backend: &mut dyn Backend,
    file: &Path,
    link_keys: &[String],
    csv: &CsvOptions,
    dir: &Path,
) -> Result<PathBuf> {
    let key = PublicKey::from_hex(&backend.link_key()?.public_key)
        .context("the domain's link key is not a ristretto255 point")?;
    if let Some(batches) = read_columnar(file)? {
        return tokenize_columnar(backend, &key, file, batches, link_keys, dir);
    }
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

/// The rows of a Parquet or Arrow IPC file (told by their first bytes, as the catalog tells
/// them), or `None` for any other file (read as CSV).
fn read_columnar(file: &Path) -> Result<Option<Vec<RecordBatch>>> {
    use std::io::Read;
    let mut head = [0u8; 6];
    let n = std::fs::File::open(file)
        .with_context(|| format!("opening {}", file.display()))?
        .read(&mut head)?;
    let open = || std::fs::File::open(file).with_context(|| format!("opening {}", file.display()));
    if n >= 4 && &head[..4] == b"PAR1" {
        let reader = ParquetRecordBatchReaderBuilder::try_new(open()?)
            .and_then(|b| b.build())
            .with_context(|| format!("{} is not a valid Parquet file", file.display()))?;
        return Ok(Some(reader.collect::<Result<Vec<_>, _>>()?));
    }
    if n == 6 && &head == b"ARROW1" {
        let reader = datafusion::arrow::ipc::reader::FileReader::try_new(open()?, None)
            .with_context(|| format!("{} is not a valid Arrow IPC file", file.display()))?;
        return Ok(Some(reader.collect::<Result<Vec<_>, _>>()?));
    }
    Ok(None)
}

/// `batches` with each link-key column replaced by its tokens (text), written as Parquet in
/// `dir`.
fn tokenize_columnar(
    backend: &mut dyn Backend,
    key: &PublicKey,
    file: &Path,
    batches: Vec<RecordBatch>,
    link_keys: &[String],
    dir: &Path,
) -> Result<PathBuf> {
    let Some(first) = batches.first() else {
        bail!("{} has no rows", file.display());
    };
    let schema = first.schema();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let indices = link_indices(&names, link_keys)?;
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| match indices.contains(&i) {
            true => Field::new(f.name(), DataType::Utf8, true),
            false => f.as_ref().clone(),
        })
        .collect();
    let out_schema = Arc::new(Schema::new(fields));
    let stem = file.file_stem().context("the file has no name")?;
    let out_path = dir.join(stem).with_extension("parquet");
    let out = std::fs::File::create(&out_path)?;
    let mut writer = ArrowWriter::try_new(out, out_schema.clone(), None)?;
    for batch in &batches {
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for &col in &indices {
            columns[col] = tokenized_column(backend, key, batch.column(col))?;
        }
        writer.write(&RecordBatch::try_new(out_schema.clone(), columns)?)?;
    }
    writer.close()?;
    Ok(out_path)
}

/// A column of identifiers as their tokens, in round trips of at most `MAX_BATCH`.
fn tokenized_column(
    backend: &mut dyn Backend,
    key: &PublicKey,
    column: &ArrayRef,
) -> Result<ArrayRef> {
    let text = cast(column, &DataType::Utf8)?;
    let text = text
        .as_any()
        .downcast_ref::<StringArray>()
        .context("identifiers read as text")?;
    let normal: Vec<Option<String>> = text.iter().map(|v| v.and_then(normalise)).collect();
    let mut tokens: Vec<Option<String>> = vec![None; normal.len()];
    let present: Vec<usize> = (0..normal.len()).filter(|&i| normal[i].is_some()).collect();
    for chunk in present.chunks(MAX_BATCH) {
        let ids: Vec<String> = chunk
            .iter()
            .map(|&i| normal[i].clone().unwrap_or_default())
            .collect();
        for (&i, token) in chunk.iter().zip(tokens_of(backend, key, &ids)?) {
            tokens[i] = Some(token);
        }
    }
    Ok(Arc::new(StringArray::from(tokens)))
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
