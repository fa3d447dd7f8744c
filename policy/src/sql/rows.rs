//! Row expressions that cannot fail: whether a SQL job releases or fails must not depend on the
//! data, or the outcome itself would leak a bit about some row (a query that fails only when
//! one person's income exceeds a threshold). So the row-level expressions a query may use are
//! built from functions that are total — defined, without error, on every input — and whose
//! output is at most a constant factor larger than their input ([`ALLOWED_FUNCTIONS`]); and
//! before running, trusted code rewrites the two operations DataFusion makes fail on some
//! values ([`total`]): `CAST` becomes `TRY_CAST` (a value that does not convert is NULL) and a
//! division or remainder by zero is NULL. A failure that still happened would be a bug; it
//! fails the job with the generic code `internal` (SECURITY.md, "Known limits").
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TryCast, lit};

use crate::error::{PolicyError, Result};

/// Scalar functions a SQL job's row expressions may call (DataFusion names and aliases).
pub const ALLOWED_FUNCTIONS: &[&str] = &[
    // Maths: NaN or ±inf at the edges, never an error.
    "abs",
    "ceil",
    "floor",
    "round",
    "trunc",
    "signum",
    "sqrt",
    "cbrt",
    "exp",
    "ln",
    "log",
    "log2",
    "log10",
    "power",
    "pow",
    "pi",
    "degrees",
    "radians",
    "sin",
    "cos",
    "tan",
    "greatest",
    "least",
    "isnan",
    "iszero",
    "nanvl",
    // NULL handling.
    "coalesce",
    "nullif",
    "nvl",
    "nvl2",
    "ifnull",
    // Text: output within a constant factor of the input.
    "upper",
    "lower",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "char_length",
    "character_length",
    "length",
    "octet_length",
    "bit_length",
    "concat",
    "concat_ws",
    "starts_with",
    "ends_with",
    "replace",
    "initcap",
    "reverse",
    "strpos",
    "instr",
    "left",
    "right",
    "translate",
    "ascii",
    // Dates.
    "date_part",
    "datepart",
    "date_trunc",
    "datetrunc",
];

/// `Ok` for a function in [`ALLOWED_FUNCTIONS`]; else its name.
pub(super) fn check_function(name: &str) -> std::result::Result<(), String> {
    let lower = name.to_ascii_lowercase();
    if ALLOWED_FUNCTIONS.contains(&lower.as_str()) {
        Ok(())
    } else {
        Err(lower)
    }
}

/// Most a row expression may multiply the length of a text it reads, through nested `replace`
/// calls: each row's work must stay within a constant factor of the row, since the job's release
/// time is fixed from the number of rows alone (`policy/src/schedule.rs`).
pub const MAX_TEXT_GROWTH: u64 = 16;
/// Longest text literal a row expression may hold, in bytes: a literal is copied into every row
/// it is concatenated with.
pub const MAX_LITERAL_BYTES: usize = 256;

/// Requires `expr` to hold no text literal over [`MAX_LITERAL_BYTES`], only `replace` calls that
/// search for a non-empty literal and put a literal instead, and at most [`MAX_TEXT_GROWTH`]
/// growth through nested `replace`s (the other allowed functions grow text by a constant factor
/// at most once: case mapping, translate). Else what is wrong and how to write it.
pub(super) fn check_text_growth(expr: &Expr) -> std::result::Result<(), String> {
    let growth = text_growth(expr)?;
    if growth > MAX_TEXT_GROWTH {
        return Err(format!(
            "nested replace() calls could make a row's text {growth}× longer; at most \
             {MAX_TEXT_GROWTH}× is allowed (each row's work must stay bounded, since the job's \
             release time is fixed in advance)"
        ));
    }
    Ok(())
}

/// The factor by which `expr` may lengthen the longest text it reads (saturating).
fn text_growth(expr: &Expr) -> std::result::Result<u64, String> {
    let own = match expr {
        Expr::ScalarFunction(f) if f.func.name().eq_ignore_ascii_case("replace") => {
            replace_growth(&f.args)?
        }
        Expr::Literal(v, _) => {
            if let Some(Some(text)) = v.try_as_str()
                && text.len() > MAX_LITERAL_BYTES
            {
                return Err(format!(
                    "a text literal of {} bytes; row expressions of SQL jobs hold at most \
                     {MAX_LITERAL_BYTES}",
                    text.len()
                ));
            }
            1
        }
        _ => 1,
    };
    let mut inner = 1u64;
    let mut failed = None;
    let _ = expr.apply_children(|child| {
        match text_growth(child) {
            Ok(g) => inner = inner.max(g),
            Err(e) => failed = Some(e),
        }
        Ok(if failed.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(own.saturating_mul(inner)),
    }
}

/// How much one `replace(text, from, to)` may lengthen `text`: `⌈|to| / |from|⌉` (at least 1).
/// Requires `from` and `to` to be text literals, `from` non-empty — an empty one would put `to`
/// between every two characters, a column `to` would multiply the row by another.
fn replace_growth(args: &[Expr]) -> std::result::Result<u64, String> {
    let literal = |e: &Expr| match e {
        Expr::Literal(v, _) => v.try_as_str().flatten().map(str::len),
        _ => None,
    };
    match (args.get(1).and_then(literal), args.get(2).and_then(literal)) {
        (Some(from), Some(to)) if from > 0 => Ok((to as u64).div_ceil(from as u64).max(1)),
        _ => Err(
            "replace() needs a non-empty text literal to search for and a text literal to \
             put in its place, as `replace(name, '-', ' ')`"
                .into(),
        ),
    }
}

/// `expr` with every `CAST` turned into `TRY_CAST` and every divisor `d` of `/` and `%` into
/// `NULLIF(d, 0)`: the same answer wherever the original is defined, NULL where it would fail.
pub(super) fn total(expr: Expr) -> Result<Expr> {
    expr.transform_up(|e| {
        Ok(match e {
            Expr::Cast(c) => {
                Transformed::yes(Expr::TryCast(TryCast::new_from_field(c.expr, c.field)))
            }
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: op @ (Operator::Divide | Operator::Modulo),
                right,
            }) => Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
                left,
                op,
                Box::new(datafusion::functions::core::expr_fn::nullif(
                    *right,
                    lit(0i64),
                )),
            ))),
            other => Transformed::no(other),
        })
    })
    .map(|t| t.data)
    .map_err(|e| PolicyError::Aggregation(e.to_string()))
}
