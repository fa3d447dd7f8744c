//! The run of a SQL job: the accepted plan rewritten into one contribution per (unit, group),
//! bounded by the gate's [`Bounder`] and released by the gate.
use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::Column;
use datafusion::functions_aggregate::expr_fn::{avg, count, sum};
use datafusion::logical_expr::{
    Expr, LogicalPlan, LogicalPlanBuilder, cast as cast_expr, col, lit,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use rand::seq::SliceRandom;
use rand::{CryptoRng, Rng};

use super::post::Post;
use super::rows::total;
use super::{PerUnit, Released, SqlPlan, Tables, dissect, plan_query};
use crate::Release;
use crate::error::{PolicyError, Result};
use crate::gate::{self, Bounder, BoundingStats, ExactGroups, GateContribution};
use crate::manifest::JobPlan;

/// Rows per batch inside the rewritten plan. With DataFusion's default (8,192) the per-(unit,
/// group) grouping took about 196 ms on `benches/sql.rs` (10 M rows in 65,536-row batches, 2
/// cores) against 140 ms with this; the plain query was unaffected.
const BATCH_ROWS: usize = 65_536;

/// Runs a SQL job's query over `table` (the dataset's rows: the unit column and the columns the
/// query reads) and the public tables `lookups` it joins, and releases it through the gate with
/// noise from `rng`. Requires `plan.sql`.
pub async fn release<R: Rng + CryptoRng>(
    plan: &JobPlan,
    table: Arc<dyn TableProvider>,
    readable: &Tables<'_>,
    rng: &mut R,
) -> Result<(Release, BoundingStats)> {
    let (exact, stats, post) = aggregate_with_post(plan, table, readable, rng).await?;
    let mut release = gate::add_noise(plan, &exact, rng);
    super::spread::combine(plan, sql_of(plan)?, &mut release);
    post.apply(&mut release);
    Ok((release, stats))
}

/// The plan's SQL part. Requires a SQL job's plan (an aggregation error otherwise).
fn sql_of(plan: &JobPlan) -> Result<&SqlPlan> {
    plan.sql
        .as_ref()
        .ok_or_else(|| PolicyError::Aggregation("not a SQL job".into()))
}

/// The exact aggregates a SQL job's release is noised from: the query's contributions per
/// (unit, group), bounded by the gate's [`Bounder`] (`rng` picks the groups a unit keeps when
/// it has more than `max_groups_per_unit`) and aggregated by the gate. Never leaves the gate.
/// Requires `plan.sql`.
pub async fn aggregate<R: Rng + CryptoRng>(
    plan: &JobPlan,
    table: Arc<dyn TableProvider>,
    readable: &Tables<'_>,
    rng: &mut R,
) -> Result<(ExactGroups, BoundingStats)> {
    let (exact, stats, _) = aggregate_with_post(plan, table, readable, rng).await?;
    Ok((exact, stats))
}

/// [`aggregate`], with the post-processing the query asks of the release.
async fn aggregate_with_post<R: Rng + CryptoRng>(
    plan: &JobPlan,
    table: Arc<dyn TableProvider>,
    readable: &Tables<'_>,
    rng: &mut R,
) -> Result<(ExactGroups, BoundingStats, Post)> {
    let (contributions, post) = contributions(sql_of(plan)?, table, readable)?;
    let config = SessionConfig::new().with_batch_size(BATCH_ROWS);
    let batches = SessionContext::new_with_config(config)
        .execute_logical_plan(contributions)
        .await?
        .collect()
        .await?;
    let bounder = bound(plan, &batches, rng)?;
    let (exact, stats) = gate::aggregate(plan, vec![bounder]).await?;
    Ok((exact, stats, post))
}

/// The plan of one row per (unit, group): `unit`, the key parts `k0..` as text and the values
/// `v0..` as Float64, each the unit's own aggregate of its rows in the group (see the module
/// docs of `sql`), ordered by unit. `readable` must hold every table in `sql.lookups` and the
/// partner of `sql.link`.
pub(super) fn contributions(
    sql: &SqlPlan,
    table: Arc<dyn TableProvider>,
    readable: &Tables<'_>,
) -> Result<(LogicalPlan, Post)> {
    let lookups: Vec<String> = readable.lookups.iter().map(|l| l.dataset.clone()).collect();
    let logical = plan_query(&sql.text, &sql.tables, table, readable, &lookups)?;
    let dissected = dissect(&logical, &sql.unit, &sql.tables, readable)?;
    // The dataset's rows under the query's filters, made total (see `rows`).
    let mut input = LogicalPlanBuilder::from(dissected.base.clone());
    for predicate in &dissected.filters {
        input = input.filter(total(predicate.clone())?)?;
    }
    let input = input.build()?;
    let unit = match &dissected.sources.link {
        Some(link) => super::linked::unit_expr(&dissected.sources.dataset, link),
        None => Expr::Column(Column::new(
            Some(dissected.sources.dataset.clone()),
            sql.unit.clone(),
        )),
    };
    let mut rows = vec![unit.alias("__unit")];
    for (i, (_, e)) in dissected.keys.iter().enumerate() {
        rows.push(total(e.clone())?.alias(format!("__k{i}")));
    }
    // One gate value per plain value, two per spread (its mean and its squared deviation).
    let mut per_unit = Vec::new();
    let mut kinds = Vec::new();
    for (_, released) in &dissected.values {
        let Released::Value {
            arg,
            per_unit: asked,
            ..
        } = released
        else {
            continue;
        };
        let parts = if matches!(asked, PerUnit::Spread { .. }) {
            2
        } else {
            1
        };
        for _ in 0..parts {
            let j = per_unit.len();
            rows.push(total(arg.clone())?.alias(format!("__a{j}")));
            let a = col(format!("__a{j}"));
            let kind = sql.per_unit.get(j).copied().ok_or_else(|| {
                PolicyError::Aggregation("the plan's values differ from the query's".into())
            })?;
            per_unit.push(
                match kind {
                    PerUnit::Sum => sum(a),
                    PerUnit::Count => count(a),
                    PerUnit::Mean | PerUnit::SquaredDeviation { .. } | PerUnit::Spread { .. } => {
                        avg(a)
                    }
                }
                .alias(format!("__v{j}")),
            );
            kinds.push(kind);
        }
    }
    let mut group = vec![col("__unit")];
    group.extend((0..dissected.keys.len()).map(|i| col(format!("__k{i}"))));
    let mut out = vec![cast_expr(col("__unit"), DataType::Utf8).alias("unit")];
    for i in 0..dissected.keys.len() {
        out.push(
            datafusion::functions::core::expr_fn::coalesce(vec![
                cast_expr(col(format!("__k{i}")), DataType::Utf8),
                lit("NULL"),
            ])
            .alias(format!("k{i}")),
        );
    }
    for (j, kind) in kinds.iter().enumerate() {
        let value = datafusion::functions::core::expr_fn::coalesce(vec![
            cast_expr(col(format!("__v{j}")), DataType::Float64),
            lit(0.0f64),
        ]);
        let value = match kind {
            PerUnit::SquaredDeviation { mid, .. } => {
                let deviation = value - lit(*mid);
                deviation.clone() * deviation
            }
            _ => value,
        };
        out.push(value.alias(format!("v{j}")));
    }
    // Rows without a unit belong to nobody the gate can bound: they are not used (as for
    // module jobs).
    let plan = LogicalPlanBuilder::from(input)
        .project(rows)?
        .filter(col("__unit").is_not_null())?
        .aggregate(group, per_unit)?
        .project(out)?
        .sort(vec![col("unit").sort(true, false)])?
        .build()?;
    Ok((plan, dissected.post))
}

/// Feeds the per-(unit, group) rows to a [`Bounder`], one unit at a time, each unit's groups in
/// a random order: the Bounder keeps a unit's first `max_groups_per_unit` groups, so they are a
/// uniformly random choice rather than whichever the data listed first. Requires the rows to be
/// ordered by unit, with columns `unit`, `k0..` and `v0..`.
pub(super) fn bound<R: Rng + CryptoRng>(
    plan: &JobPlan,
    batches: &[RecordBatch],
    rng: &mut R,
) -> Result<Bounder> {
    let mut bounder = Bounder::new(Arc::new(plan.clone()));
    let (nkeys, nvalues) = (plan.keys.len(), plan.values.len());
    let mut current: Option<String> = None;
    let mut pending: Vec<GateContribution> = Vec::new();
    let mut next_id: u64 = 0;
    let mut flush = |pending: &mut Vec<GateContribution>, rng: &mut R| {
        pending.shuffle(rng);
        bounder.add_unit(next_id, std::mem::take(pending));
        next_id += 1;
    };
    for batch in batches {
        let units = text_column(batch, 0)?;
        let keys = (0..nkeys)
            .map(|i| text_column(batch, 1 + i))
            .collect::<Result<Vec<_>>>()?;
        let values = (0..nvalues)
            .map(|j| float_column(batch, 1 + nkeys + j))
            .collect::<Result<Vec<_>>>()?;
        for row in 0..batch.num_rows() {
            let unit = units.value(row);
            if current.as_deref() != Some(unit) {
                if current.is_some() {
                    flush(&mut pending, rng);
                }
                current = Some(unit.to_owned());
            }
            pending.push(GateContribution {
                key: keys.iter().map(|k| k.value(row).to_owned()).collect(),
                values: values.iter().map(|v| v.value(row)).collect(),
            });
        }
    }
    if current.is_some() {
        flush(&mut pending, rng);
    }
    Ok(bounder)
}

fn text_column(batch: &RecordBatch, i: usize) -> Result<StringArray> {
    let a = cast(batch.column(i), &DataType::Utf8)?;
    a.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| PolicyError::Aggregation(format!("column {i} is not text")))
}

fn float_column(batch: &RecordBatch, i: usize) -> Result<Float64Array> {
    let a = batch.column(i);
    if a.null_count() > 0 {
        return Err(PolicyError::Aggregation(format!("column {i} has nulls")));
    }
    a.as_any()
        .downcast_ref::<Float64Array>()
        .cloned()
        .ok_or_else(|| PolicyError::Aggregation(format!("column {i} is not Float64")))
}
