//! `HAVING`, `ORDER BY` and `LIMIT`: post-processing of the noisy released table. They act on
//! released cells only — never on exact values — so they cost no ε and change no guarantee
//! (post-processing of a DP release is DP). `HAVING` is a condition of comparisons between a
//! selected output and a literal, joined by `AND`, `OR` and `NOT`; `ORDER BY` names selected
//! outputs; `LIMIT`/`OFFSET` are literals.
use std::cmp::Ordering;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::logical_plan::{FetchType, SkipType};
use datafusion::logical_expr::{BinaryExpr, Expr, Limit, Operator, SortExpr};

use super::{Output, strip_alias, unsupported};
use crate::Release;
use crate::error::Result;
use crate::gate::ReleasedRow;

/// A condition on one released row.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Condition {
    Compare(Output, Operator, Literal),
    And(Box<Condition>, Box<Condition>),
    Or(Box<Condition>, Box<Condition>),
    Not(Box<Condition>),
}

/// A literal a condition compares with.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Literal {
    Number(f64),
    Text(String),
}

/// The post-processing a query asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Post {
    pub having: Option<Condition>,
    /// Outputs to sort by, each ascending or not, in order.
    pub order: Vec<(Output, bool)>,
    pub skip: usize,
    pub fetch: Option<usize>,
    /// The query's name for the count of people, when it selects it.
    pub count_name: Option<String>,
}

/// The condition a `HAVING` predicate states; `output_of` resolves a column of the aggregate's
/// output to the selected output it is.
pub(super) fn condition(
    expr: &Expr,
    output_of: &dyn Fn(&datafusion::common::Column) -> Option<Output>,
) -> Result<Condition> {
    let refuse = || {
        unsupported(format!(
            "HAVING `{expr}`: a HAVING condition compares selected outputs with literals \
             (`HAVING people > 100 AND mean_income < 2000`), joined by AND, OR and NOT"
        ))
    };
    match strip_alias(expr) {
        Expr::Not(inner) => Ok(Condition::Not(Box::new(condition(inner, output_of)?))),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => {
                let (l, r) = (condition(left, output_of)?, condition(right, output_of)?);
                Ok(if *op == Operator::And {
                    Condition::And(Box::new(l), Box::new(r))
                } else {
                    Condition::Or(Box::new(l), Box::new(r))
                })
            }
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq => {
                let side = |e: &Expr| match strip_casts(e) {
                    Expr::Column(c) => output_of(c).map(Side::Output),
                    Expr::Literal(v, _) => literal(v).map(Side::Literal),
                    Expr::Negative(inner) => match strip_casts(inner) {
                        Expr::Literal(v, _) => match literal(v) {
                            Some(Literal::Number(x)) => Some(Side::Literal(Literal::Number(-x))),
                            _ => None,
                        },
                        _ => None,
                    },
                    _ => None,
                };
                match (side(left), side(right)) {
                    (Some(Side::Output(o)), Some(Side::Literal(l))) => {
                        Ok(Condition::Compare(o, *op, l))
                    }
                    (Some(Side::Literal(l)), Some(Side::Output(o))) => {
                        Ok(Condition::Compare(o, op.swap().ok_or_else(refuse)?, l))
                    }
                    _ => Err(refuse()),
                }
            }
            _ => Err(refuse()),
        },
        _ => Err(refuse()),
    }
}

enum Side {
    Output(Output),
    Literal(Literal),
}

fn strip_casts(e: &Expr) -> &Expr {
    match e {
        Expr::Cast(c) => strip_casts(&c.expr),
        Expr::TryCast(c) => strip_casts(&c.expr),
        Expr::Alias(a) => strip_casts(&a.expr),
        other => other,
    }
}

fn literal(v: &ScalarValue) -> Option<Literal> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(Literal::Text(s.clone())),
        other if !other.is_null() => other.to_string().parse().ok().map(Literal::Number),
        _ => None,
    }
}

/// The sort order `ORDER BY` states, as outputs.
pub(super) fn order(
    sorts: &[SortExpr],
    output_of: &dyn Fn(&datafusion::common::Column) -> Option<Output>,
) -> Result<Vec<(Output, bool)>> {
    sorts
        .iter()
        .map(|s| match strip_alias(&s.expr) {
            Expr::Column(c) => output_of(c).map(|o| (o, s.asc)).ok_or(()),
            _ => Err(()),
        })
        .collect::<std::result::Result<_, ()>>()
        .map_err(|_| {
            unsupported(
                "ORDER BY names selected outputs only (`ORDER BY people DESC, educ`), as they \
                 are released",
            )
        })
}

/// `LIMIT n OFFSET m`, as literals.
pub(super) fn limit(l: &Limit) -> Result<(usize, Option<usize>)> {
    let refuse = || unsupported("LIMIT and OFFSET take whole-number literals");
    let skip = match l.get_skip_type().map_err(|_| refuse())? {
        SkipType::Literal(n) => n,
        SkipType::UnsupportedExpr => return Err(refuse()),
    };
    let fetch = match l.get_fetch_type().map_err(|_| refuse())? {
        FetchType::Literal(n) => n,
        FetchType::UnsupportedExpr => return Err(refuse()),
    };
    Ok((skip, fetch))
}

impl Post {
    /// Filters, sorts and cuts the released rows and names the count as the query does. Key
    /// order (the gate's) breaks ties, so the result is a function of the released cells alone.
    pub(super) fn apply(&self, release: &mut Release) {
        release.count_name = self.count_name.clone();
        if let Some(having) = &self.having {
            release.rows.retain(|row| holds(having, row));
        }
        if !self.order.is_empty() {
            release.rows.sort_by(|a, b| {
                for (output, asc) in &self.order {
                    let o = compare_cells(&cell(*output, a), &cell(*output, b));
                    let o = if *asc { o } else { o.reverse() };
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                a.key.cmp(&b.key)
            });
        }
        let rows = std::mem::take(&mut release.rows);
        release.rows = rows
            .into_iter()
            .skip(self.skip)
            .take(self.fetch.unwrap_or(usize::MAX))
            .collect();
    }
}

/// A released cell's value, for comparing.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Number(f64),
    Text(String),
    Null,
}

fn cell(output: Output, row: &ReleasedRow) -> Cell {
    match output {
        Output::Key(i) => row
            .key
            .get(i)
            .map_or(Cell::Null, |k| match k.parse::<f64>() {
                Ok(x) => Cell::Number(x),
                Err(_) => Cell::Text(k.clone()),
            }),
        Output::Units => Cell::Number(row.units.value),
        Output::Value(j) => {
            let Some(v) = row.values.get(j) else {
                return Cell::Null;
            };
            let number = v
                .quantile
                .as_ref()
                .map(|q| q.value)
                .or_else(|| v.mean.as_ref().map(|m| m.value()))
                .or_else(|| v.sum.as_ref().map(|s| s.value));
            number.map_or(Cell::Null, Cell::Number)
        }
    }
}

/// Nulls sort last; numbers before text.
fn compare_cells(a: &Cell, b: &Cell) -> Ordering {
    match (a, b) {
        (Cell::Number(x), Cell::Number(y)) => x.total_cmp(y),
        (Cell::Text(x), Cell::Text(y)) => x.cmp(y),
        (Cell::Null, Cell::Null) => Ordering::Equal,
        (Cell::Null, _) => Ordering::Greater,
        (_, Cell::Null) => Ordering::Less,
        (Cell::Number(_), Cell::Text(_)) => Ordering::Less,
        (Cell::Text(_), Cell::Number(_)) => Ordering::Greater,
    }
}

fn holds(c: &Condition, row: &ReleasedRow) -> bool {
    match c {
        Condition::And(a, b) => holds(a, row) && holds(b, row),
        Condition::Or(a, b) => holds(a, row) || holds(b, row),
        Condition::Not(a) => !holds(a, row),
        Condition::Compare(output, op, literal) => {
            let ordering = match (cell(*output, row), literal) {
                (Cell::Number(x), Literal::Number(y)) => x.partial_cmp(y),
                (Cell::Text(x), Literal::Text(y)) => Some(x.as_str().cmp(y.as_str())),
                (Cell::Number(x), Literal::Text(y)) => {
                    y.parse::<f64>().ok().and_then(|y| x.partial_cmp(&y))
                }
                (Cell::Text(x), Literal::Number(y)) => Some(x.cmp(&y.to_string())),
                (Cell::Null, _) => None,
            };
            let Some(o) = ordering else {
                return false;
            };
            match op {
                Operator::Eq => o == Ordering::Equal,
                Operator::NotEq => o != Ordering::Equal,
                Operator::Lt => o == Ordering::Less,
                Operator::LtEq => o != Ordering::Greater,
                Operator::Gt => o == Ordering::Greater,
                Operator::GtEq => o != Ordering::Less,
                _ => false,
            }
        }
    }
}
