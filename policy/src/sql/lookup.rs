//! Lookup joins: a SQL job may join its dataset to the public tables the dataset's policy
//! declares (`public_tables`), as `FROM people p JOIN regions r ON p.region = r.code`.
//!
//! # Why a lookup join keeps the sensitivity argument
//! A lookup's rows are public (its holder declared them so), and each join must match every
//! dataset row to at most one lookup row: the lookup's columns in the join's equalities must
//! identify its rows ([`check_unique_keys`], checked against the lookup's current rows before
//! anything is spent). So the join only adds public columns to each dataset row — a row-level
//! projection, like any row expression — and one person's rows stay that person's: the
//! per-(unit, group) bounding in [`super::rewrite`] applies unchanged. Nor can a join multiply
//! rows, so the SQL schedule's bound on rows holds (the build side adds the lookup's public row
//! count to it).
use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::TableProvider;
use datafusion::common::{Column, TableReference};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, JoinType, LogicalPlan, Operator};

use super::linked::{LinkJoin, link_join};
use super::{SUPPORTED, Tables, check_row_expr, unsupported};
use crate::error::Result;

/// A public table, as a SQL job may join it: its dataset id and its rows as queries read them.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// Its dataset id (`holder:name`); queries name it by its short name or this id.
    pub dataset: String,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl Lookup {
    /// Its rows (public: the table is).
    pub fn rows(&self) -> u64 {
        self.batches.iter().map(|b| b.num_rows() as u64).sum()
    }

    /// The table a query plans and runs against.
    pub(super) fn provider(&self) -> Result<Arc<dyn TableProvider>> {
        Ok(Arc::new(MemTable::try_new(
            self.schema.clone(),
            vec![self.batches.clone()],
        )?))
    }
}

/// One lookup join of an accepted query.
#[derive(Debug, Clone)]
pub(super) struct Joined {
    /// The lookup's dataset id.
    pub dataset: String,
    /// The lookup's columns its equalities match on (they must identify its rows).
    pub keys: Vec<String>,
    /// The join's conditions: row-level expressions, checked like `WHERE`.
    pub conditions: Vec<Expr>,
}

/// The sources of an accepted query, taken apart: the dataset's scan (its qualifier), the
/// lookups joined to it and the linked dataset, if the query joins one.
pub(super) struct Sources {
    /// How the query's columns name the dataset: its alias, else the name it was read by.
    pub dataset: TableReference,
    pub joins: Vec<Joined>,
    pub link: Option<LinkJoin>,
}

impl Sources {
    /// Whether `c` is a column of the dataset (not of a lookup or the linked dataset).
    pub(super) fn is_dataset_column(&self, c: &Column) -> bool {
        c.relation.as_ref().is_none_or(|r| *r == self.dataset)
    }

    /// Whether `c` is a column of the linked dataset.
    pub(super) fn is_partner_column(&self, c: &Column) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| c.relation.as_ref() == Some(&l.qualifier))
    }
}

/// Takes the `FROM` clause apart: the dataset's scan, or `<sources> [INNER|LEFT] JOIN <lookup>`
/// with equalities on the lookup's columns, or `<sources> [INNER|LEFT|FULL] JOIN <partner>` on
/// the link keys (at most one). `dataset_names` are the names the dataset answers to; `tables`
/// what else the query may join.
pub(super) fn sources(
    plan: &LogicalPlan,
    dataset_names: &[String],
    tables: &Tables<'_>,
) -> Result<Sources> {
    match plan {
        LogicalPlan::Join(join) => {
            let mut left = sources(&join.left, dataset_names, tables)?;
            let (qualifier, dataset) = scanned(&join.right).ok_or_else(|| {
                unsupported(format!(
                    "a join's right side must be a public table or a linked dataset, not a \
                     subquery or another join; {SUPPORTED}"
                ))
            })?;
            if let Some(partner) = tables
                .partners
                .iter()
                .find(|p| super::table_names(&p.dataset).contains(&dataset))
            {
                if left.link.is_some() {
                    return Err(unsupported("a job joins at most one linked dataset"));
                }
                left.link = Some(link_join(join, &left.dataset, &qualifier, partner)?);
                return Ok(left);
            }
            let lookups = tables.lookups;
            let Some(lookup) = lookups
                .iter()
                .find(|l| super::table_names(&l.dataset).contains(&dataset))
            else {
                return Err(unsupported(format!(
                    "the query joins `{dataset}`, which is not a public table of this \
                     dataset's policy: put the dataset first (`FROM {} JOIN <public table> ON \
                     ...`); a job may join only the tables its holder declares public \
                     (`public_tables`)",
                    dataset_names[0]
                )));
            };
            if !matches!(join.join_type, JoinType::Inner | JoinType::Left) {
                return Err(unsupported(format!(
                    "{} JOIN is not supported: join a public table with JOIN or LEFT JOIN, the \
                     dataset first",
                    join.join_type
                )));
            }
            left.joins.push(joined(join, &qualifier, &lookup.dataset)?);
            Ok(left)
        }
        other => match scanned(other) {
            Some((qualifier, table)) if dataset_names.contains(&table) => Ok(Sources {
                dataset: qualifier,
                joins: Vec::new(),
                link: None,
            }),
            Some((_, table)) => Err(unsupported(format!(
                "the query reads `{table}` first; start FROM the dataset (`FROM {} JOIN {table} \
                 ON ...`)",
                dataset_names[0]
            ))),
            None => Err(super::construct(other)),
        },
    }
}

/// A table scan (under its alias, if any): how its columns are qualified, and the table's name.
fn scanned(plan: &LogicalPlan) -> Option<(TableReference, String)> {
    match plan {
        LogicalPlan::TableScan(s) => Some((s.table_name.clone(), s.table_name.table().to_owned())),
        LogicalPlan::SubqueryAlias(a) => match a.input.as_ref() {
            LogicalPlan::TableScan(s) => Some((a.alias.clone(), s.table_name.table().to_owned())),
            _ => None,
        },
        _ => None,
    }
}

/// A join's equalities on the lookup's columns (`USING` pairs, and `a = r.k` conjuncts of `ON`),
/// its other conditions, all checked as row expressions. Requires at least one equality.
fn joined(
    join: &datafusion::logical_expr::Join,
    lookup: &TableReference,
    dataset: &str,
) -> Result<Joined> {
    let of_lookup = |e: &Expr| match e {
        Expr::Column(c) if c.relation.as_ref() == Some(lookup) => Some(c.name.clone()),
        _ => None,
    };
    let mut keys = Vec::new();
    let mut conditions = Vec::new();
    for (l, r) in &join.on {
        keys.extend(of_lookup(r).or_else(|| of_lookup(l)));
        conditions.push(l.clone().eq(r.clone()));
    }
    for conjunct in join.filter.iter().flat_map(split_conjunction) {
        if let Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) = conjunct
        {
            let other_side = |e: &Expr| {
                e.column_refs()
                    .iter()
                    .all(|c| c.relation.as_ref() != Some(lookup))
            };
            match (of_lookup(left), of_lookup(right)) {
                (Some(k), None) if other_side(right) => keys.push(k),
                (None, Some(k)) if other_side(left) => keys.push(k),
                _ => {}
            }
        }
        conditions.push(conjunct.clone());
    }
    for c in &conditions {
        check_row_expr(c, "JOIN ... ON")?;
    }
    if keys.is_empty() {
        return Err(unsupported(format!(
            "the join with `{dataset}` needs an equality between a column of the dataset's side \
             and a plain column of the public table (`ON p.region = r.code`, or `USING (code)`)"
        )));
    }
    keys.sort();
    keys.dedup();
    Ok(Joined {
        dataset: dataset.to_owned(),
        keys,
        conditions,
    })
}

/// Requires the lookup's `keys` to identify its rows: no two rows with equal keys (rows with a
/// NULL key part match nothing and are ignored). The lookup is public, so saying which key
/// repeats tells nobody anything private.
pub(super) fn check_unique_keys(lookup: &Lookup, keys: &[String]) -> Result<()> {
    let indices = keys
        .iter()
        .map(|k| lookup.schema.index_of(k))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let fields = indices
        .iter()
        .map(|&i| SortField::new(lookup.schema.field(i).data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields)?;
    let mut seen = HashSet::new();
    for batch in &lookup.batches {
        let columns: Vec<_> = indices.iter().map(|&i| batch.column(i).clone()).collect();
        let rows = converter.convert_columns(&columns)?;
        for (i, row) in rows.iter().enumerate() {
            if columns.iter().any(|c| c.is_null(i)) {
                continue;
            }
            if !seen.insert(row.owned()) {
                return Err(unsupported(format!(
                    "public table `{}` has two rows with the same {}: a lookup join must match \
                     each row to at most one row of the public table, so join on columns that \
                     identify its rows",
                    lookup.dataset,
                    keys.iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    Ok(())
}
