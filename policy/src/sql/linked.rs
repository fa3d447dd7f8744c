//! SQL jobs over a link (docs/linking.md): the job's dataset joined with a dataset of another
//! holder on their link keys, `FROM patients p JOIN "insurer:claims" c USING (national_id)`.
//!
//! # Why the sensitivity argument holds
//! A link key holds join tokens: one token is one person on both sides. The job's privacy unit
//! is the token — the job dataset's key, or for a FULL join whichever side has it — so all of a
//! person's rows on both sides, and every row the join makes of them, belong to one unit, and
//! the per-(unit, group) bounding of [`super::rewrite`] bounds that person's influence on every
//! released cell exactly as for one dataset. Adding or removing a person on *either* side moves
//! the release by at most that much, so the release is ε-DP with respect to each dataset, and
//! the job is charged to the consumer's ledger on both (by the engine, in one transaction).
//! The join condition must be exactly the equality of the two link keys; no other condition, so
//! that nothing but the person decides which rows meet.
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::{Column, TableReference};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, JoinType, Operator};
use serde::{Deserialize, Serialize};

use super::unsupported;
use crate::error::Result;
use crate::model::Policy;

/// A dataset joined to the job's dataset by an accepted link, as a SQL job may read it.
#[derive(Clone)]
pub struct Partner {
    /// Its dataset id (`holder:name`); queries name it by its id or its short name.
    pub dataset: String,
    /// The job dataset's link-key column on this link.
    pub key: String,
    /// The partner's link-key column.
    pub partner_key: String,
    /// The partner's current policy: its columns keep their classes and bounds.
    pub policy: Policy,
    /// Its rows as queries read them (an empty table with its schema when only planning).
    pub table: Arc<dyn TableProvider>,
}

/// Which persons a linked job covers, as the query's join type says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Coverage {
    /// People on both sides (`JOIN`): the overlap.
    Inner,
    /// People of the job's dataset, with the partner's rows where they have some (`LEFT JOIN`).
    Left,
    /// People on either side (`FULL JOIN`).
    Full,
}

/// The link join of an accepted query.
#[derive(Debug, Clone)]
pub(super) struct LinkJoin {
    /// How the query's columns name the partner.
    pub qualifier: TableReference,
    pub partner: String,
    pub key: String,
    pub partner_key: String,
    pub coverage: Coverage,
}

/// Takes apart the join of the dataset (columns qualified by `dataset`) with `partner` (by
/// `qualifier`): its coverage, and a condition that must be exactly `dataset.key =
/// partner.partner_key` (`USING (key)` when both keys have one name).
pub(super) fn link_join(
    join: &datafusion::logical_expr::Join,
    dataset: &TableReference,
    qualifier: &TableReference,
    partner: &Partner,
) -> Result<LinkJoin> {
    let coverage = match join.join_type {
        JoinType::Inner => Coverage::Inner,
        JoinType::Left => Coverage::Left,
        JoinType::Full => Coverage::Full,
        other => {
            return Err(unsupported(format!(
                "{other} JOIN of a linked dataset is not supported: use JOIN (people on both \
                 sides), LEFT JOIN (people of your dataset) or FULL JOIN (people on either side), \
                 your dataset first"
            )));
        }
    };
    let mut conditions: Vec<Expr> = join
        .on
        .iter()
        .map(|(l, r)| l.clone().eq(r.clone()))
        .collect();
    conditions.extend(join.filter.iter().flat_map(split_conjunction).cloned());
    let is = |e: &Expr, q: &TableReference, name: &str| matches!(e, Expr::Column(Column { relation: Some(r), name: n, .. }) if r == q && n == name);
    let keys_equal = |e: &Expr| match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => {
            (is(left, dataset, &partner.key) && is(right, qualifier, &partner.partner_key))
                || (is(right, dataset, &partner.key) && is(left, qualifier, &partner.partner_key))
        }
        _ => false,
    };
    if conditions.len() != 1 || !keys_equal(&conditions[0]) {
        return Err(unsupported(format!(
            "a linked dataset joins on its link key and nothing else: `JOIN {} USING ({})` or \
             `ON <yours>.{} = <theirs>.{}`",
            partner.dataset, partner.key, partner.key, partner.partner_key
        )));
    }
    Ok(LinkJoin {
        qualifier: qualifier.clone(),
        partner: partner.dataset.clone(),
        key: partner.key.clone(),
        partner_key: partner.partner_key.clone(),
        coverage,
    })
}

/// The unit of a row of the joined view: the job dataset's token, or for a FULL join whichever
/// side has one (they are equal where both do).
pub(super) fn unit_expr(dataset: &TableReference, link: &LinkJoin) -> Expr {
    let ours = Expr::Column(Column::new(Some(dataset.clone()), link.key.clone()));
    match link.coverage {
        Coverage::Inner | Coverage::Left => ours,
        Coverage::Full => datafusion::functions::core::expr_fn::coalesce(vec![
            ours,
            Expr::Column(Column::new(
                Some(link.qualifier.clone()),
                link.partner_key.clone(),
            )),
        ]),
    }
}
