//! Row expressions that cannot fail: whether a SQL job releases or fails must not depend on the
//! data, or the outcome itself would leak a bit about some row (a query that fails only when
//! one person's income exceeds a threshold). So the row-level expressions a query may use are
//! built from functions that are total — defined, without error, on every input — and whose
//! output is at most a constant factor larger than their input ([`ALLOWED_FUNCTIONS`]); and
//! before running, trusted code rewrites the two operations DataFusion makes fail on some
//! values ([`total`]): `CAST` becomes `TRY_CAST` (a value that does not convert is NULL) and a
//! division or remainder by zero is NULL. A failure that still happened would be a bug; it
//! fails the job with the generic code `internal` (SECURITY.md, "Known limits").
use datafusion::common::tree_node::{Transformed, TreeNode};
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
