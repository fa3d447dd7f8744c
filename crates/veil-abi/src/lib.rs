//! Veil's guest ABI, version 1: the bytes that cross the sandbox boundary.
//!
//! A Veil *map* module is a core WebAssembly module. The contract (written as WIT in
//! `wit/veil-analysis.wit`, explained in `docs/guests.md`) is lowered to three names:
//!
//! | direction | name | signature | meaning |
//! |---|---|---|---|
//! | export | `memory` | memory | the guest's linear memory |
//! | export | [`EXPORT_ALLOC`] | `(len: i32) -> i32` | reserve `len` bytes for the host to write the unit into |
//! | export | [`EXPORT_MAP`] | `(ptr: i32, len: i32) -> i64` | map one unit; returns `(out_ptr << 32) \| out_len` |
//! | import (optional) | [`IMPORT_MODULE`]`.`[`IMPORT_LOG`] | `(ptr: i32, len: i32)` | append text to the holder-only log |
//!
//! Nothing else may be imported. The version is part of every name, so a module built for another
//! interface version fails the import/export check before it runs.
//!
//! The input is one privacy unit's rows encoded by [`UnitEncoder`] and read by [`UnitView`]; the
//! output is a list of [`Contribution`]s encoded by [`encode_contributions`] and read back by the host
//! with [`decode_contributions`], which treats the bytes as hostile: every length is checked against
//! [`DecodeLimits`] before anything is allocated.
//!
//! All integers are little-endian. The crate has no dependencies and no `unsafe`, so both the host and
//! the guest SDK can use it.
#![no_std]
#![forbid(unsafe_code)]
extern crate alloc;

pub mod mutation;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The interface version these names and encodings belong to.
pub const ABI_VERSION: u32 = 1;
/// Prefix every Veil export carries; the digits after it name the interface version.
pub const EXPORT_PREFIX: &str = "veil_abi_v";
/// Export the host calls to reserve input space.
pub const EXPORT_ALLOC: &str = "veil_abi_v1_alloc";
/// Export the host calls once per privacy unit.
pub const EXPORT_MAP: &str = "veil_abi_v1_map";
/// The only import module a guest may name.
pub const IMPORT_MODULE: &str = "veil_abi_v1";
/// The only function in [`IMPORT_MODULE`]: holder-only diagnostics.
pub const IMPORT_LOG: &str = "log";

/// Optional custom section in which a module declares the columns it reads: their names, each
/// followed by `\n`, in UTF-8 (the guest SDK's `reads_columns!` writes it). The host checks them
/// against the manifest's `columns` at submission, so a lookup that would find nothing is an
/// error before anything is spent rather than a silent empty result. Read by
/// [`decode_declared_columns`].
pub const SECTION_COLUMNS: &str = "veil_abi_v1_columns";
/// Most names a [`SECTION_COLUMNS`] section may list.
pub const MAX_DECLARED_COLUMNS: usize = 256;
/// Longest name (bytes) a [`SECTION_COLUMNS`] section may list.
pub const MAX_DECLARED_COLUMN_BYTES: usize = 128;

const UNIT_MAGIC: &[u8; 4] = b"VUN1";

/// Why a [`SECTION_COLUMNS`] section is unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeclaredColumnsError {
    /// The section is not UTF-8.
    NotUtf8,
    /// The last name is not followed by `\n`.
    Unterminated,
    /// A name is empty (two `\n` in a row, or a leading one).
    EmptyName,
    /// A name is longer than [`MAX_DECLARED_COLUMN_BYTES`].
    NameTooLong(usize),
    /// More than [`MAX_DECLARED_COLUMNS`] names.
    TooMany(usize),
    /// A name is listed twice.
    Duplicate(String),
    /// A name holds a control character (no column name does).
    ControlCharacter,
}

impl fmt::Display for DeclaredColumnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotUtf8 => f.write_str("it is not UTF-8"),
            Self::Unterminated => f.write_str("its last name does not end with a newline"),
            Self::EmptyName => f.write_str("it lists an empty name"),
            Self::NameTooLong(n) => write!(
                f,
                "it lists a name of {n} bytes (at most {MAX_DECLARED_COLUMN_BYTES})"
            ),
            Self::TooMany(n) => write!(f, "it lists {n} names (at most {MAX_DECLARED_COLUMNS})"),
            Self::Duplicate(name) => write!(f, "it lists `{name}` twice"),
            Self::ControlCharacter => f.write_str("a name holds a control character"),
        }
    }
}

/// Host side: the column names of a [`SECTION_COLUMNS`] section, which the module wrote and so
/// are hostile bytes: every name is checked, nothing is allocated beyond the section's size.
pub fn decode_declared_columns(bytes: &[u8]) -> Result<Vec<&str>, DeclaredColumnsError> {
    // A C string literal ends with one NUL: allowed, so C guests can write the section plainly.
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    let text = core::str::from_utf8(bytes).map_err(|_| DeclaredColumnsError::NotUtf8)?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let body = text
        .strip_suffix('\n')
        .ok_or(DeclaredColumnsError::Unterminated)?;
    let mut names: Vec<&str> = Vec::new();
    for name in body.split('\n') {
        if name.is_empty() {
            return Err(DeclaredColumnsError::EmptyName);
        }
        if name.len() > MAX_DECLARED_COLUMN_BYTES {
            return Err(DeclaredColumnsError::NameTooLong(name.len()));
        }
        if name.chars().any(char::is_control) {
            return Err(DeclaredColumnsError::ControlCharacter);
        }
        if names.len() == MAX_DECLARED_COLUMNS {
            return Err(DeclaredColumnsError::TooMany(body.split('\n').count()));
        }
        if names.contains(&name) {
            return Err(DeclaredColumnsError::Duplicate(name.into()));
        }
        names.push(name);
    }
    Ok(names)
}

/// Type of a column as the guest sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ColumnType {
    Int = 0,
    Float = 1,
    Text = 2,
    Bool = 3,
}

impl ColumnType {
    fn from_u8(tag: u8) -> Option<Self> {
        Some(match tag {
            0 => Self::Int,
            1 => Self::Float,
            2 => Self::Text,
            3 => Self::Bool,
            _ => return None,
        })
    }
}

/// One cell of a unit's rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Float(f64),
    Text(&'a str),
    Bool(bool),
}

impl Value<'_> {
    /// The cell as a number, if it is one (`Int`, `Float` or `Bool`).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(v) => Some(v as f64),
            Value::Float(v) => Some(v),
            Value::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
            _ => None,
        }
    }
    /// The cell as an integer, if it is an `Int`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(v) => Some(v),
            _ => None,
        }
    }
    /// The cell as text, if it is `Text`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

const TAG_NULL: u8 = 0;
const TAG_INT: u8 = 1;
const TAG_FLOAT: u8 = 2;
const TAG_TEXT: u8 = 3;
const TAG_BOOL: u8 = 4;

/// Why a byte string is not a valid encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AbiError {
    /// The bytes ended before the structure did.
    Truncated,
    /// The unit header does not start with the version-1 magic.
    BadMagic,
    /// An unknown type or value tag.
    BadTag(u8),
    /// Text that is not UTF-8.
    BadUtf8,
    /// Bytes left over after the structure.
    TrailingBytes,
    /// A declared count exceeds the host's limit (`what`, declared, limit).
    LimitExceeded(&'static str, u64, u64),
}

impl fmt::Display for AbiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbiError::Truncated => f.write_str("encoding truncated"),
            AbiError::BadMagic => f.write_str("not a version-1 unit encoding"),
            AbiError::BadTag(t) => write!(f, "unknown tag {t}"),
            AbiError::BadUtf8 => f.write_str("text is not UTF-8"),
            AbiError::TrailingBytes => f.write_str("trailing bytes after encoding"),
            AbiError::LimitExceeded(what, n, max) => write!(f, "{what}: {n} exceeds limit {max}"),
        }
    }
}

/// Host side: encodes one privacy unit's rows. Reuse one encoder across units with [`UnitEncoder::reset`].
#[derive(Debug, Clone)]
pub struct UnitEncoder {
    header: Vec<u8>,
    buf: Vec<u8>,
    rows: u32,
}

impl UnitEncoder {
    /// Starts an encoder for rows with these columns (in order).
    pub fn new(columns: &[(&str, ColumnType)]) -> Self {
        let mut header = Vec::new();
        header.extend_from_slice(UNIT_MAGIC);
        put_u32(&mut header, columns.len() as u32);
        for (name, ty) in columns {
            header.push(*ty as u8);
            put_u32(&mut header, name.len() as u32);
            header.extend_from_slice(name.as_bytes());
        }
        let mut enc = UnitEncoder {
            buf: Vec::new(),
            header,
            rows: 0,
        };
        enc.reset();
        enc
    }

    /// Forgets the rows written so far, keeping the column header.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(&self.header);
        put_u32(&mut self.buf, 0); // row count, patched by `finish`
        self.rows = 0;
    }

    /// Marks the start of a new row; follow with one `push_*` per column.
    pub fn begin_row(&mut self) {
        self.rows += 1;
    }

    pub fn push_null(&mut self) {
        self.buf.push(TAG_NULL);
    }
    pub fn push_int(&mut self, v: i64) {
        self.buf.push(TAG_INT);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn push_float(&mut self, v: f64) {
        self.buf.push(TAG_FLOAT);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn push_bool(&mut self, v: bool) {
        self.buf.push(TAG_BOOL);
        self.buf.push(v as u8);
    }
    pub fn push_text(&mut self, v: &str) {
        self.buf.push(TAG_TEXT);
        put_u32(&mut self.buf, v.len() as u32);
        self.buf.extend_from_slice(v.as_bytes());
    }

    /// The finished encoding; valid until the next `reset`.
    pub fn finish(&mut self) -> &[u8] {
        let at = self.header.len();
        self.buf[at..at + 4].copy_from_slice(&self.rows.to_le_bytes());
        &self.buf
    }
}

/// Guest side: a decoded view of one unit's rows.
#[derive(Debug, Clone)]
pub struct UnitView<'a> {
    columns: Vec<(&'a str, ColumnType)>,
    cells: Vec<Value<'a>>,
}

impl<'a> UnitView<'a> {
    /// Decodes bytes produced by [`UnitEncoder`].
    pub fn decode(bytes: &'a [u8]) -> Result<Self, AbiError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != UNIT_MAGIC {
            return Err(AbiError::BadMagic);
        }
        let ncols = r.u32()? as usize;
        let mut columns = Vec::with_capacity(ncols.min(1024));
        for _ in 0..ncols {
            let tag = r.u8()?;
            let ty = ColumnType::from_u8(tag).ok_or(AbiError::BadTag(tag))?;
            let name = r.text()?;
            columns.push((name, ty));
        }
        let nrows = r.u32()? as usize;
        let ncells = nrows.checked_mul(ncols).ok_or(AbiError::Truncated)?;
        let mut cells = Vec::with_capacity(ncells.min(r.remaining()));
        for _ in 0..ncells {
            let tag = r.u8()?;
            cells.push(match tag {
                TAG_NULL => Value::Null,
                TAG_INT => Value::Int(i64::from_le_bytes(r.array()?)),
                TAG_FLOAT => Value::Float(f64::from_le_bytes(r.array()?)),
                TAG_TEXT => Value::Text(r.text()?),
                TAG_BOOL => Value::Bool(r.u8()? != 0),
                other => return Err(AbiError::BadTag(other)),
            });
        }
        if r.remaining() != 0 {
            return Err(AbiError::TrailingBytes);
        }
        Ok(UnitView { columns, cells })
    }

    /// Column names and types, in order.
    pub fn columns(&self) -> &[(&'a str, ColumnType)] {
        &self.columns
    }

    /// Index of a column by name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|(n, _)| *n == name)
    }

    /// Number of rows in this unit.
    pub fn row_count(&self) -> usize {
        if self.columns.is_empty() {
            0
        } else {
            self.cells.len() / self.columns.len()
        }
    }

    /// The cells of row `i`, one per column.
    pub fn row(&self, i: usize) -> &[Value<'a>] {
        let n = self.columns.len();
        &self.cells[i * n..(i + 1) * n]
    }

    /// Iterates over the rows.
    pub fn rows(&self) -> impl Iterator<Item = &[Value<'a>]> {
        let n = self.columns.len().max(1);
        self.cells.chunks(n)
    }
}

/// One output of a map module: a group key (one string per key part) and numeric values.
#[derive(Clone, Debug, PartialEq)]
pub struct Contribution {
    pub key: Vec<String>,
    pub values: Vec<f64>,
}

/// Guest side: encodes contributions for the host.
pub fn encode_contributions(contributions: &[Contribution], out: &mut Vec<u8>) {
    put_u32(out, contributions.len() as u32);
    for c in contributions {
        put_u32(out, c.key.len() as u32);
        for part in &c.key {
            put_u32(out, part.len() as u32);
            out.extend_from_slice(part.as_bytes());
        }
        put_u32(out, c.values.len() as u32);
        for v in &c.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Host-side bounds for decoding untrusted output; every declared length is checked against them
/// before allocation.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    pub max_contributions: u32,
    pub max_key_parts: u32,
    pub max_key_part_bytes: u32,
    pub max_values: u32,
}

/// Host side: decodes contributions written by an untrusted module.
pub fn decode_contributions(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<Vec<Contribution>, AbiError> {
    let mut r = Reader { bytes, at: 0 };
    let n = r.u32()?;
    check("contributions", n, limits.max_contributions)?;
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let nkeys = r.u32()?;
        check("key parts", nkeys, limits.max_key_parts)?;
        let mut key = Vec::with_capacity(nkeys as usize);
        for _ in 0..nkeys {
            let len = r.u32()?;
            check("key part bytes", len, limits.max_key_part_bytes)?;
            let raw = r.take(len as usize)?;
            let s = core::str::from_utf8(raw).map_err(|_| AbiError::BadUtf8)?;
            key.push(String::from(s));
        }
        let nvals = r.u32()?;
        check("values", nvals, limits.max_values)?;
        let mut values = Vec::with_capacity(nvals as usize);
        for _ in 0..nvals {
            values.push(f64::from_le_bytes(r.array()?));
        }
        out.push(Contribution { key, values });
    }
    if r.remaining() != 0 {
        return Err(AbiError::TrailingBytes);
    }
    Ok(out)
}

fn check(what: &'static str, n: u32, max: u32) -> Result<(), AbiError> {
    if n > max {
        Err(AbiError::LimitExceeded(what, n as u64, max as u64))
    } else {
        Ok(())
    }
}

fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], AbiError> {
        if n > self.remaining() {
            return Err(AbiError::Truncated);
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], AbiError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, AbiError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, AbiError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn text(&mut self) -> Result<&'a str, AbiError> {
        let len = self.u32()? as usize;
        core::str::from_utf8(self.take(len)?).map_err(|_| AbiError::BadUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn unit_round_trip() {
        let mut enc = UnitEncoder::new(&[("age", ColumnType::Int), ("name", ColumnType::Text)]);
        enc.begin_row();
        enc.push_int(41);
        enc.push_text("Ada");
        enc.begin_row();
        enc.push_null();
        enc.push_text("");
        let bytes = enc.finish().to_vec();
        let view = UnitView::decode(&bytes).unwrap();
        assert_eq!(view.row_count(), 2);
        assert_eq!(view.column_index("name"), Some(1));
        assert_eq!(view.row(0), &[Value::Int(41), Value::Text("Ada")]);
        assert_eq!(view.row(1), &[Value::Null, Value::Text("")]);
        enc.reset();
        let empty = UnitView::decode(enc.finish()).unwrap();
        assert_eq!(empty.row_count(), 0);
    }

    #[test]
    fn contributions_round_trip_and_limits() {
        let cs = vec![Contribution {
            key: vec!["a".into(), "b".into()],
            values: vec![1.5, -2.0],
        }];
        let mut bytes = Vec::new();
        encode_contributions(&cs, &mut bytes);
        let limits = DecodeLimits {
            max_contributions: 4,
            max_key_parts: 2,
            max_key_part_bytes: 8,
            max_values: 2,
        };
        assert_eq!(decode_contributions(&bytes, &limits).unwrap(), cs);
        let tight = DecodeLimits {
            max_values: 1,
            ..limits
        };
        assert_eq!(
            decode_contributions(&bytes, &tight),
            Err(AbiError::LimitExceeded("values", 2, 1))
        );
        assert_eq!(
            decode_contributions(&bytes[..bytes.len() - 1], &limits),
            Err(AbiError::Truncated)
        );
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            decode_contributions(&extra, &limits),
            Err(AbiError::TrailingBytes)
        );
        // A hostile count must be refused before any allocation is attempted.
        let huge = u32::MAX.to_le_bytes();
        assert!(matches!(
            decode_contributions(&huge, &limits),
            Err(AbiError::LimitExceeded("contributions", _, 4))
        ));
    }

    /// Test vectors for the declared-columns section: (bytes, expected names or error).
    #[test]
    fn declared_columns_vectors() {
        use DeclaredColumnsError as E;
        let long = "x".repeat(MAX_DECLARED_COLUMN_BYTES + 1) + "\n";
        let many: String = (0..=MAX_DECLARED_COLUMNS)
            .map(|i| alloc::format!("c{i}\n"))
            .collect();
        type Vector<'a> = (&'a [u8], Result<&'a [&'a str], E>);
        let cases: &[Vector<'_>] = &[
            (b"", Ok(&[])),
            (b"educ\n", Ok(&["educ"])),
            (b"educ\nweekly income\n", Ok(&["educ", "weekly income"])),
            (b"educ", Err(E::Unterminated)),
            (b"educ\n\0", Ok(&["educ"])),
            (b"educ\0", Err(E::Unterminated)),
            (b"educ\n\0\0", Err(E::Unterminated)),
            (b"a\x1b[2J\n", Err(E::ControlCharacter)),
            (b"\n", Err(E::EmptyName)),
            (b"a\n\nb\n", Err(E::EmptyName)),
            (b"a\na\n", Err(E::Duplicate("a".into()))),
            (b"\xff\n", Err(E::NotUtf8)),
            (
                long.as_bytes(),
                Err(E::NameTooLong(MAX_DECLARED_COLUMN_BYTES + 1)),
            ),
            (many.as_bytes(), Err(E::TooMany(MAX_DECLARED_COLUMNS + 1))),
        ];
        for (bytes, want) in cases {
            let got = decode_declared_columns(bytes);
            assert_eq!(
                got.as_deref().map_err(Clone::clone),
                want.clone(),
                "{bytes:?}"
            );
        }
    }

    /// Bounded fuzzing: mutations of valid encodings and random bytes never make the decoders
    /// panic; whatever decodes respects the limits.
    #[test]
    fn decoders_survive_mutated_input() {
        let limits = DecodeLimits {
            max_contributions: 64,
            max_key_parts: 4,
            max_key_part_bytes: 32,
            max_values: 4,
        };
        let mut valid = Vec::new();
        encode_contributions(
            &[
                Contribution {
                    key: alloc::vec!["a".into()],
                    values: alloc::vec![1.0, 2.0],
                },
                Contribution {
                    key: alloc::vec!["bb".into(), "c".into()],
                    values: alloc::vec![],
                },
            ],
            &mut valid,
        );
        let mut m = mutation::Mutator::new(0x5eed);
        for _ in 0..20_000 {
            let bytes = m.mutate(&valid);
            if let Ok(cs) = decode_contributions(&bytes, &limits) {
                assert!(
                    cs.len() <= 64 && cs.iter().all(|c| c.key.len() <= 4 && c.values.len() <= 4)
                );
            }
            let _ = decode_declared_columns(&m.mutate(b"educ\nweekly_income\n"));
            let _ = UnitView::decode(&bytes);
        }
    }
}
