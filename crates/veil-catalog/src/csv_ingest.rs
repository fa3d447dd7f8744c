//! CSV ingest that never guesses silently: a dialect (delimiter, quote, header, trimming, null
//! tokens), column types inferred from every row (or given), and a refusal — naming the row and the
//! flag to use — whenever the file does not say clearly what it holds.
//!
//! Read with the `csv` crate (RFC 4180 quoting, quoted newlines, CRLF), typed by Veil: a column is
//! `bool`, `int`, `float` or `text`, the narrowest type every non-null value parses as. Padding
//! around values is trimmed by default (public data often separates with `", "`); the number of
//! padded values per column goes into the registration report either way.
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

use crate::{CatalogError, LoadedTable, Result};

/// Tokens that mean "no value" unless the holder says otherwise (compared after trimming).
pub const DEFAULT_NULL_TOKENS: [&str; 5] = ["", "NA", "N/A", "NULL", "?"];

/// Rows per Arrow batch.
const BATCH_ROWS: usize = 1 << 16;

/// Whether the first row holds column names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Header {
    /// Decide from the file: a first row whose values parse as the types of the columns below is
    /// refused as ambiguous (say which it is).
    #[default]
    Detect,
    Present,
    Absent,
}

/// A column type the holder can name (`--columns name:type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Bool,
    Int,
    Float,
    Text,
}

impl ColumnType {
    pub fn parse(text: &str) -> Option<ColumnType> {
        Some(match text {
            "bool" => ColumnType::Bool,
            "int" => ColumnType::Int,
            "float" => ColumnType::Float,
            "text" => ColumnType::Text,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            ColumnType::Bool => "bool",
            ColumnType::Int => "int",
            ColumnType::Float => "float",
            ColumnType::Text => "text",
        }
    }

    /// Whether `v` (trimmed, not a null token) is a value of this type.
    fn accepts(self, v: &str) -> bool {
        match self {
            ColumnType::Bool => parse_bool(v).is_some(),
            ColumnType::Int => v.parse::<i64>().is_ok(),
            ColumnType::Float => parse_float(v).is_some(),
            ColumnType::Text => true,
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// A finite decimal number; `inf`, `NaN` and the like are text, not numbers.
fn parse_float(v: &str) -> Option<f64> {
    let numeric = v
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
    v.parse::<f64>().ok().filter(|x| numeric && x.is_finite())
}

/// One column as the holder declares it: a name and, optionally, its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: String,
    pub ty: Option<ColumnType>,
}

impl ColumnSpec {
    /// `name` or `name:type`.
    pub fn parse(text: &str) -> Result<ColumnSpec> {
        let (name, ty) = match text.split_once(':') {
            None => (text, None),
            Some((name, ty)) => {
                let t = ColumnType::parse(ty).ok_or_else(|| {
                    CatalogError::BadInput(format!(
                        "`{text}`: the type `{ty}` is not one of bool, int, float, text"
                    ))
                })?;
                (name, Some(t))
            }
        };
        Ok(ColumnSpec {
            name: name.trim().to_owned(),
            ty,
        })
    }
}

/// How to read a CSV file.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    /// Field separator; default `,`.
    pub delimiter: u8,
    /// Quote character; default `"`.
    pub quote: u8,
    pub header: Header,
    /// Trim spaces and tabs around every value and name (default on).
    pub trim: bool,
    /// Values that mean "no value", compared after trimming; default [`DEFAULT_NULL_TOKENS`].
    pub null_tokens: Vec<String>,
    /// Column names (and types): required for a file without a header; with a header, they
    /// replace its names.
    pub columns: Option<Vec<ColumnSpec>>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: b',',
            quote: b'"',
            header: Header::Detect,
            trim: true,
            null_tokens: DEFAULT_NULL_TOKENS.map(String::from).to_vec(),
            columns: None,
        }
    }
}

/// The CSV options as a person types them — the CLI's flags and the upload's query parameters,
/// read by one parser so both answer alike. Every field is optional; an absent one is the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvFlags {
    /// `name,...` or `name:type,...`.
    pub columns: Option<String>,
    /// `detect` (default), `present` or `absent`.
    pub header: Option<String>,
    /// One character; `tab` or `\t` for a tab.
    pub delimiter: Option<String>,
    /// One character.
    pub quote: Option<String>,
    /// `true` (default) or `false`.
    pub trim: Option<bool>,
    /// Comma-separated tokens that mean "no value" (an empty token is written as two commas or
    /// a leading one); replaces the default list.
    pub null: Option<String>,
}

impl CsvFlags {
    /// The options these flags ask for; a malformed flag is bad input naming it.
    pub fn options(&self) -> Result<CsvOptions> {
        let mut o = CsvOptions::default();
        if let Some(c) = &self.columns {
            o.columns = Some(c.split(',').map(ColumnSpec::parse).collect::<Result<_>>()?);
        }
        if let Some(h) = &self.header {
            o.header = match h.as_str() {
                "detect" => Header::Detect,
                "present" => Header::Present,
                "absent" => Header::Absent,
                _ => return Err(bad_flag("header", "detect, present or absent")),
            };
        }
        if let Some(d) = &self.delimiter {
            o.delimiter = one_byte(if d == "tab" { "\t" } else { d }, "delimiter")?;
        }
        if let Some(q) = &self.quote {
            o.quote = one_byte(q, "quote")?;
        }
        if let Some(t) = self.trim {
            o.trim = t;
        }
        if let Some(n) = &self.null {
            o.null_tokens = n.split(',').map(|t| t.trim().to_owned()).collect();
        }
        Ok(o)
    }
}

fn bad_flag(flag: &str, expected: &str) -> CatalogError {
    CatalogError::BadInput(format!("`{flag}` must be {expected}"))
}

fn one_byte(text: &str, flag: &str) -> Result<u8> {
    match text.as_bytes() {
        [b] if b.is_ascii() && *b != b'\n' && *b != b'\r' => Ok(*b),
        _ => Err(bad_flag(
            flag,
            "one ASCII character other than a line break",
        )),
    }
}

/// What ingest saw in one column, beyond the statistics every format gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvColumnFacts {
    /// Values that had spaces or tabs around them (trimmed unless trimming was off).
    pub padded: u64,
    /// For a text column: values that parse as numbers (a column mostly of numbers with a few
    /// words in it is probably mis-typed).
    pub numeric_looking: u64,
}

/// Records of a file: the header row (if any) and the data rows, as trimmed strings with nulls.
struct Cells {
    names: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
    facts: Vec<CsvColumnFacts>,
}

/// Reads a whole CSV file per `opts`. Every refusal names the row (counting the file's records
/// from 1) or the column and how to fix it, and never quotes a value except the first row when the
/// header is ambiguous (the holder's own file, shown to the holder).
pub fn read(
    path: &std::path::Path,
    opts: &CsvOptions,
) -> Result<(LoadedTable, Vec<CsvColumnFacts>)> {
    let records = records(path, opts)?;
    let cells = split_header(records, opts)?;
    let types = column_types(&cells, opts)?;
    let table = to_arrow(&cells, &types)?;
    Ok((table, cells.facts))
}

/// Every record of the file as raw strings, all of one width.
fn records(path: &std::path::Path, opts: &CsvOptions) -> Result<Vec<Vec<String>>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(opts.delimiter)
        .quote(opts.quote)
        .flexible(true)
        .from_path(path)
        .map_err(|e| CatalogError::BadInput(format!("cannot open {}: {e}", path.display())))?;
    let mut out: Vec<Vec<String>> = Vec::new();
    for (i, record) in reader.byte_records().enumerate() {
        let record = record.map_err(|e| {
            CatalogError::BadInput(format!("record {} is not valid CSV: {e}", i + 1))
        })?;
        let mut fields = Vec::with_capacity(record.len());
        for (j, raw) in record.iter().enumerate() {
            let mut text = std::str::from_utf8(raw).map_err(|_| {
                CatalogError::BadInput(format!(
                    "record {}, field {}: not UTF-8 text (convert the file to UTF-8)",
                    i + 1,
                    j + 1
                ))
            })?;
            if i == 0 && j == 0 {
                text = text.strip_prefix('\u{feff}').unwrap_or(text);
            }
            fields.push(text.to_owned());
        }
        if let Some(first) = out.first()
            && first.len() != fields.len()
        {
            return Err(CatalogError::BadInput(format!(
                "record {} has {} fields but the first has {}: check the delimiter (`--delimiter`) \
                 and quoting",
                i + 1,
                fields.len(),
                first.len()
            )));
        }
        out.push(fields);
    }
    if out.is_empty() {
        return Err(CatalogError::BadInput(format!(
            "{} has no rows",
            path.display()
        )));
    }
    Ok(out)
}

fn is_padded(v: &str) -> bool {
    v.trim_matches([' ', '\t']).len() != v.len()
}

/// Separates names from data, trims and nulls the values, and counts padding.
fn split_header(mut records: Vec<Vec<String>>, opts: &CsvOptions) -> Result<Cells> {
    let width = records[0].len();
    let mut facts = vec![CsvColumnFacts::default(); width];
    let trim = |v: &str| -> String {
        if opts.trim {
            v.trim_matches([' ', '\t']).to_owned()
        } else {
            v.to_owned()
        }
    };
    let header = match (opts.header, &opts.columns) {
        (Header::Present, _) => true,
        (Header::Absent, _) => false,
        (Header::Detect, Some(specs)) => {
            if first_row_looks_like_names(&records, specs, opts) {
                let shown: String = records[0].join(",").chars().take(200).collect();
                return Err(CatalogError::BadInput(format!(
                    "the first row looks like column names, not data: `{shown}`. To use the names \
                     of `--columns` instead, add `--header`; if the row is data, add `--no-header`"
                )));
            }
            false
        }
        (Header::Detect, None) => {
            if first_row_looks_like_data(&records, opts) {
                let shown: String = records[0].join(",").chars().take(200).collect();
                return Err(CatalogError::BadInput(format!(
                    "the first row looks like data, not column names: `{shown}` (its values have \
                     the types of the columns below). If the file has no header, name the columns: \
                     `--columns name,...` (or `name:type,...`); if that row is the header, say \
                     `--header`"
                )));
            }
            true
        }
    };
    let file_names: Option<Vec<String>> =
        header.then(|| records.remove(0).iter().map(|n| trim(n)).collect());
    let names: Vec<String> = match (&opts.columns, file_names) {
        (Some(specs), _) => {
            if specs.len() != width {
                return Err(CatalogError::BadInput(format!(
                    "--columns names {} columns but the file has {width}",
                    specs.len()
                )));
            }
            specs.iter().map(|s| s.name.clone()).collect()
        }
        (None, Some(names)) => names,
        (None, None) => {
            return Err(CatalogError::BadInput(
                "a file without a header needs its column names: `--columns name,...`".into(),
            ));
        }
    };
    let rows = records
        .into_iter()
        .map(|fields| {
            fields
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    if is_padded(v) {
                        facts[j].padded += 1;
                    }
                    let v = trim(v);
                    let null = opts.null_tokens.contains(&v);
                    (!null).then_some(v)
                })
                .collect()
        })
        .collect();
    Ok(Cells { names, rows, facts })
}

/// A value as header detection reads it: trimmed, `None` for a null token.
fn detected<'a>(v: &'a str, opts: &CsvOptions) -> Option<&'a str> {
    let v = v.trim_matches([' ', '\t']);
    (!opts.null_tokens.iter().any(|t| t == v)).then_some(v)
}

/// How the first record fits the columns below it: how many columns are not text (by the records
/// below), and in how many of those the first record holds a value of another type. Requires at
/// least two records.
fn first_row_fit(records: &[Vec<String>], opts: &CsvOptions) -> (usize, usize) {
    let (mut typed, mut misfits) = (0, 0);
    for j in 0..records[0].len() {
        let below = records[1..]
            .iter()
            .filter_map(|r| detected(&r[j], opts).map(str::to_owned));
        let ty = infer(below);
        if ty == ColumnType::Text {
            continue;
        }
        typed += 1;
        if detected(&records[0][j], opts).is_some_and(|v| !ty.accepts(v)) {
            misfits += 1;
        }
    }
    (typed, misfits)
}

/// Whether the first record's values parse as the types the other records' columns have, in
/// every column that is not text — and at least one column is not text (an all-text file cannot
/// tell, and its first row is taken as the header).
fn first_row_looks_like_data(records: &[Vec<String>], opts: &CsvOptions) -> bool {
    if records.len() < 2 {
        return false;
    }
    let (typed, misfits) = first_row_fit(records, opts);
    typed > 0 && misfits == 0
}

/// Whether the first record, in a file the holder named the columns of, looks like a header: its
/// values are the given names, or one of them does not parse as the type the records below have.
fn first_row_looks_like_names(
    records: &[Vec<String>],
    specs: &[ColumnSpec],
    opts: &CsvOptions,
) -> bool {
    let names = records[0]
        .iter()
        .zip(specs)
        .all(|(v, s)| v.trim_matches([' ', '\t']).eq_ignore_ascii_case(&s.name));
    names || (records.len() >= 2 && first_row_fit(records, opts).1 > 0)
}

/// The narrowest type all `values` parse as (text if there are none).
fn infer<'a>(values: impl Iterator<Item = String> + 'a) -> ColumnType {
    let mut candidates = [ColumnType::Bool, ColumnType::Int, ColumnType::Float].to_vec();
    let mut any = false;
    for v in values {
        any = true;
        candidates.retain(|t| t.accepts(&v));
        if candidates.is_empty() {
            return ColumnType::Text;
        }
    }
    if !any {
        return ColumnType::Text;
    }
    candidates[0]
}

/// Each column's type: the declared one (every value must parse as it) or the inferred one.
fn column_types(cells: &Cells, opts: &CsvOptions) -> Result<Vec<ColumnType>> {
    let declared = |j: usize| opts.columns.as_ref().and_then(|c| c[j].ty);
    (0..cells.names.len())
        .map(|j| {
            let values = cells.rows.iter().filter_map(|r| r[j].clone());
            match declared(j) {
                None => Ok(infer(values)),
                Some(ty) => {
                    for (i, row) in cells.rows.iter().enumerate() {
                        if let Some(v) = &row[j]
                            && !ty.accepts(v)
                        {
                            return Err(CatalogError::BadInput(format!(
                                "data row {}, column `{}`: not a {} value (fix the file, declare \
                                 the column `text`, or add the token to the null tokens)",
                                i + 1,
                                cells.names[j],
                                ty.as_str()
                            )));
                        }
                    }
                    Ok(ty)
                }
            }
        })
        .collect()
}

/// The typed table, in batches.
fn to_arrow(cells: &Cells, types: &[ColumnType]) -> Result<LoadedTable> {
    let fields: Vec<Field> = cells
        .names
        .iter()
        .zip(types)
        .map(|(n, t)| Field::new(n, data_type(*t), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let mut batches = Vec::new();
    for chunk in cells.rows.chunks(BATCH_ROWS) {
        let columns: Vec<ArrayRef> = types
            .iter()
            .enumerate()
            .map(|(j, t)| column(chunk, j, *t))
            .collect();
        batches.push(
            RecordBatch::try_new(schema.clone(), columns)
                .map_err(|e| CatalogError::Read(e.to_string()))?,
        );
    }
    Ok(LoadedTable {
        schema,
        rows: cells.rows.len() as u64,
        batches,
    })
}

fn data_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Int => DataType::Int64,
        ColumnType::Float => DataType::Float64,
        ColumnType::Text => DataType::Utf8,
    }
}

/// Column `j` of `rows` as an array of type `t`. Requires every non-null value to parse as `t`.
fn column(rows: &[Vec<Option<String>>], j: usize, t: ColumnType) -> ArrayRef {
    let values = rows.iter().map(|r| r[j].as_deref());
    match t {
        ColumnType::Bool => {
            let mut b = BooleanBuilder::new();
            values.for_each(|v| b.append_option(v.and_then(parse_bool)));
            Arc::new(b.finish())
        }
        ColumnType::Int => {
            let mut b = Int64Builder::new();
            values.for_each(|v| b.append_option(v.and_then(|v| v.parse().ok())));
            Arc::new(b.finish())
        }
        ColumnType::Float => {
            let mut b = Float64Builder::new();
            values.for_each(|v| b.append_option(v.and_then(parse_float)));
            Arc::new(b.finish())
        }
        ColumnType::Text => {
            let mut b = StringBuilder::new();
            values.for_each(|v| b.append_option(v));
            Arc::new(b.finish())
        }
    }
}

/// Counts, per text column, the values that parse as numbers.
pub(crate) fn count_numeric_looking(table: &LoadedTable, facts: &mut [CsvColumnFacts]) {
    use datafusion::arrow::array::{Array, StringArray};
    for (j, field) in table.schema.fields().iter().enumerate() {
        if field.data_type() != &DataType::Utf8 {
            continue;
        }
        for batch in &table.batches {
            let a = batch.column(j).as_any().downcast_ref::<StringArray>();
            for i in 0..a.map_or(0, |a| a.len()) {
                let a = a.expect("checked");
                if a.is_valid(i) && parse_float(a.value(i)).is_some() {
                    facts[j].numeric_looking += 1;
                }
            }
        }
    }
}
