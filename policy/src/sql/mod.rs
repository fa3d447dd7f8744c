//! DP SQL: an aggregate question in SQL, answered through the same gate as a module job.
//!
//! A SQL job's manifest carries `sql = "SELECT ..."` instead of a module (docs/sql.md). Trusted
//! code here
//! 1. parses and plans the query with DataFusion's SQL planner against a world that holds only the
//!    job's dataset and the built-in functions ([`provider`]), and refuses — before anything is
//!    recorded or spent — every plan that is not `SELECT <group expressions>, <aggregates> FROM
//!    <dataset> [WHERE <row predicate>] [GROUP BY ...]` ([`dissect`]), naming the construct, with
//!    `HAVING`, `ORDER BY` and `LIMIT` as post-processing of the noisy release ([`post`]);
//! 2. derives from it what a module job's manifest declares: the keys (the group expressions'
//!    names), the released values with their bounds (the manifest's `[bounds]`, else the column's
//!    policy bounds) and weights, and the columns read ([`shape`]), so the pre-check, the price,
//!    the forecast and the gate work on it unchanged;
//! 3. at run time rewrites the plan ([`rewrite::contributions`]) into one row per (privacy unit,
//!    group): the row-level filter and expressions, then each unit's own aggregate per group —
//!    and hands those rows to the gate's [`Bounder`](crate::gate::Bounder), which keeps at most
//!    `max_groups_per_unit` groups per unit, clamps each value to its bounds and drops keys
//!    outside the public partitions, exactly as for a module's output. DataFusion then aggregates
//!    and the gate adds the noise.
//!
//! # Sensitivity argument
//! The query's expressions only ever act on one row at a time (projection and filter): no plan
//! node that combines rows is accepted below the aggregate. Each unit's rows in a group are
//! combined by trusted code into one contribution per (unit, group), and the [`Bounder`] then
//! enforces what the gate's argument needs (crate::gate, "Sensitivity argument"): at most `G`
//! groups per unit, one merged value per group clamped to `[lo, hi]`. So the query cannot change
//! how far one person moves any released cell, whatever its expressions compute:
//! - `COUNT(*)`, `COUNT(1)` and `COUNT(DISTINCT <privacy unit>)` are the gate's distinct-unit
//!   count: a person adds 1 to at most `G` groups. A `COUNT(*)`-only query spends all of ε on it.
//! - `SUM(x)`: the unit's sum of `x` over its rows in the group, clamped to `[lo, hi]`; the gate
//!   noises the centred sum (sensitivity `⌈(hi − lo)/2⌉` per group).
//! - `AVG(x)`: the mean over units of each unit's own mean of `x`, clamped; released as
//!   `mid + C'/N'` from the noisy centred sum and count (post-processing).
//! - `COUNT(x)`: the number of units with at least one non-null `x` in the group — each unit's
//!   indicator in `[0, 1]`, a sum with bounds `[0, 1]`.
//! - `MEDIAN(x)`, `PERCENTILE_CONT(x, q)`, `APPROX_PERCENTILE_CONT(x, q)`: the q-quantile of the
//!   units' own means, from the gate's noisy histogram (a unit moves one bin count by 1).
//! - `VARIANCE(x)`, `STDDEV(x)` (and their `_SAMP`/`_POP` forms): two gate statistics — the
//!   units' means, and their squared deviations from the bounds' centre clamped to
//!   `[0, ((hi − lo)/2)²]` — each bounded as above and each spending the aggregate's weight;
//!   the spread is post-processing of those noisy sums and the count ([`spread`]).
//!
//! A unit's value that is NULL (all its rows NULL in the group) contributes 0, clamped to the
//! bounds; `WHERE x IS NOT NULL` leaves such units out.
mod linked;
mod lookup;
mod post;
mod provider;
mod rewrite;
mod rows;
mod spread;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::planner::{ParserOptions, SqlToRel};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use serde::{Deserialize, Serialize};

use crate::error::{PolicyError, Result};
use crate::manifest::{Aggregate, MAX_KEY_PARTS, MAX_VALUES, ValueSpec};
use crate::model::{ColumnClass, Policy};

pub use linked::{Coverage, Partner};
pub use lookup::Lookup;

/// What a SQL job may read besides its dataset: the public tables its policy declares and the
/// datasets linked to it that the consumer is admitted to.
#[derive(Clone, Copy, Default)]
pub struct Tables<'a> {
    pub lookups: &'a [Lookup],
    pub partners: &'a [Partner],
}

/// How a SQL job reads a linked dataset (docs/linking.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlLink {
    /// The linked dataset's id.
    pub partner: String,
    pub coverage: Coverage,
    /// The job dataset's link key (the job's privacy unit) and the partner's.
    pub key: String,
    pub partner_key: String,
    /// The partner's columns the query reads, its key aside.
    pub partner_columns: Vec<String>,
}

/// The names of the tables a query's text reads (as written, unquoted), or none when it does not
/// parse (planning then says why). Lets the engine read only the public tables a query names.
pub fn referenced_tables(text: &str) -> Vec<String> {
    use std::ops::ControlFlow;
    let Ok(statements) = DFParserBuilder::new(text)
        .with_recursion_limit(MAX_SQL_NESTING * 2)
        .build()
        .and_then(|mut p| p.parse_statements())
    else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for statement in statements {
        if let DfStatement::Statement(s) = statement {
            let _ = datafusion::sql::sqlparser::ast::visit_relations(&*s, |name| {
                let parts: Vec<String> = name
                    .0
                    .iter()
                    .filter_map(|p| p.as_ident().map(|i| i.value.clone()))
                    .collect();
                names.push(parts.join("."));
                ControlFlow::<()>::Continue(())
            });
        }
    }
    names
}

/// The schema of `schema` as queries read it ([`as_queried`] for every column).
pub fn queried_schema(schema: &Schema) -> Schema {
    Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| queried_field(f))
            .collect::<Vec<_>>(),
    )
}

/// A column as queries read it ([`as_queried`]).
pub fn queried_field(field: &Field) -> Field {
    field.clone().with_data_type(as_queried(field.data_type()))
}

pub use rewrite::{aggregate, release};

/// Longest query text accepted, in bytes.
pub const MAX_SQL_BYTES: usize = 16 * 1024;
/// Deepest nesting of parentheses accepted: deeper queries are refused before parsing, so that
/// no query can exhaust the planner's stack.
pub const MAX_SQL_NESTING: usize = 32;
/// The column name a dataset without a privacy unit is given for the per-row unit (each row is
/// its own unit).
pub const ROW_UNIT: &str = "__veil_row";

/// The SQL part of a manifest: the query and what it declares for its aggregates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlSpec {
    pub text: String,
    /// `[bounds]`: per output name of a `SUM`, `AVG` or quantile, the range each unit's value is
    /// clamped to (overrides the column's policy bounds).
    pub bounds: BTreeMap<String, (f64, f64)>,
    /// `[weights]`: per output name of an aggregate, its share of ε relative to the others
    /// (default 1).
    pub weights: BTreeMap<String, u32>,
}

/// How one released value's per-unit contribution is computed from the unit's rows in a group.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum PerUnit {
    /// The sum of the unit's values (`SUM`).
    Sum,
    /// The mean of the unit's values (`AVG` and the quantiles).
    Mean,
    /// Whether the unit has a non-null value: its count of them, clamped to `[0, 1]` (`COUNT(x)`).
    Count,
    /// The squared distance of the unit's mean from `mid`: the second statistic of a
    /// `VARIANCE` or `STDDEV` (the first is the mean), which [`spread`] combines into one cell.
    SquaredDeviation {
        mid: f64,
        stddev: bool,
        sample: bool,
    },
    /// A `VARIANCE` or `STDDEV` as the query states it, before it is split into its mean and
    /// its squared deviation (never in a plan).
    Spread { stddev: bool, sample: bool },
}

/// What the run needs of a SQL job besides the ordinary plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlPlan {
    pub text: String,
    /// The names the query may use for the dataset: its short name, then its id.
    pub tables: Vec<String>,
    /// The column that identifies units: the policy's privacy unit, or [`ROW_UNIT`].
    pub unit: String,
    /// Per released value, in the plan's order.
    pub per_unit: Vec<PerUnit>,
    /// The public tables the query joins (dataset ids), which the run reads whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lookups: Vec<String>,
    /// The linked dataset the query joins, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<SqlLink>,
}

/// What a SQL query releases, in the terms of a module job's manifest.
#[derive(Debug, Clone)]
pub struct Shape {
    pub keys: Vec<String>,
    pub values: Vec<ValueSpec>,
    pub count_weight: u32,
    /// The dataset columns the query reads, the unit aside (lookups' columns are not among them).
    pub columns: Vec<String>,
    /// The rows of the public tables the query joins (public; the schedule counts them).
    pub lookup_rows: u64,
    /// The most rows one person can have in the query's input (public; the schedule counts
    /// them): the policy's `max_rows_per_unit`, times the partner's over a link.
    pub rows_per_unit: u32,
    /// The policy the job runs under: the dataset's, or with a linked dataset the conjunction of
    /// both holders' policies ([`Policy::conjunction`]).
    pub policy: Policy,
    pub plan: SqlPlan,
}

/// The names a dataset with id `dataset` (`owner:name`, or a bare name) answers to in SQL.
pub fn table_names(dataset: &str) -> Vec<String> {
    let short = dataset.rsplit(':').next().unwrap_or(dataset).to_owned();
    let mut names = vec![short];
    if names[0] != dataset {
        names.push(dataset.to_owned());
    }
    names
}

/// Plans `spec` against a dataset with `schema` under `policy`, with the public tables
/// `lookups` the policy declares (their current rows), and says what it releases.
/// Unsupported SQL, and a lookup join on columns that do not identify the lookup's rows, are
/// [`PolicyError::Invalid`] (bad input: nothing recorded); a column the policy forbids, or a
/// misuse of the privacy unit, is [`PolicyError::Refused`].
pub fn shape(
    spec: &SqlSpec,
    dataset: &str,
    schema: &Schema,
    policy: &Policy,
    readable: &Tables<'_>,
) -> Result<Shape> {
    let lookups = readable.lookups;
    let mut unit = policy
        .privacy_unit
        .clone()
        .unwrap_or_else(|| ROW_UNIT.to_owned());
    let table_schema = with_row_unit(schema, &unit);
    let table = MemTable::try_new(Arc::new(table_schema), vec![vec![]])?;
    let tables = table_names(dataset);
    let logical = plan_query(
        &spec.text,
        &tables,
        Arc::new(table),
        readable,
        &policy.public_tables,
    )?;
    let mut dissected = dissect(&logical, &unit, &tables, readable)?;
    // A linked query's unit is the link key (the token): one person across both datasets.
    let own_rows = policy.max_rows_per_unit;
    let mut policy = policy.clone();
    let mut rows_per_unit = own_rows;
    let link = dissected.sources.link.clone();
    let partner = link.as_ref().map(|l| {
        readable
            .partners
            .iter()
            .find(|p| p.dataset == l.partner)
            .expect("sources() found it")
    });
    if let (Some(link), Some(partner)) = (&link, partner) {
        policy = policy.conjunction(&partner.policy, &link.key);
        unit = link.key.clone();
        dissected = dissect(&logical, &unit, &tables, readable)?;
        check_partner_columns(&dissected, link, &partner.policy)?;
        // A person's joined rows: each of theirs with each of the partner's.
        rows_per_unit = own_rows.saturating_mul(partner.policy.max_rows_per_unit);
    }
    let policy = &policy;
    check_columns(&dissected, &unit, policy)?;
    let mut joined = Vec::new();
    let mut lookup_rows = 0;
    for join in &dissected.sources.joins {
        let lookup = lookups
            .iter()
            .find(|l| l.dataset == join.dataset)
            .expect("sources() found it");
        lookup::check_unique_keys(lookup, &join.keys)?;
        if !joined.contains(&join.dataset) {
            joined.push(join.dataset.clone());
            lookup_rows += lookup.rows();
        }
    }
    let partner_policy = partner.map(|p| &p.policy);
    let (values, per_unit) = released_values(&dissected, spec, policy, partner_policy)?;
    check_declared_names(&dissected, spec)?;
    let count_weight = dissected
        .count_name
        .as_ref()
        .and_then(|n| spec.weights.get(n).copied())
        .unwrap_or(1);
    Ok(Shape {
        keys: dissected
            .keys
            .iter()
            .map(|(name, _)| name.clone())
            .collect(),
        values,
        count_weight,
        columns: dissected.columns(&unit),
        lookup_rows,
        rows_per_unit,
        policy: policy.clone(),
        plan: SqlPlan {
            text: spec.text.clone(),
            tables,
            per_unit,
            lookups: joined,
            link: dissected.sources.link.as_ref().map(|l| SqlLink {
                partner: l.partner.clone(),
                coverage: l.coverage,
                key: l.key.clone(),
                partner_key: l.partner_key.clone(),
                partner_columns: dissected.partner_columns(&l.partner_key),
            }),
            unit,
        },
    })
}

/// The schema a query is planned against: the dataset's, with DECIMAL columns read as DOUBLE
/// ([`as_queried`]) and the per-row unit column added when the dataset has no privacy unit.
fn with_row_unit(schema: &Schema, unit: &str) -> Schema {
    let mut fields: Vec<Field> = queried_schema(schema)
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    if unit == ROW_UNIT {
        fields.push(Field::new(
            ROW_UNIT,
            datafusion::arrow::datatypes::DataType::UInt64,
            false,
        ));
    }
    Schema::new(fields)
}

/// The type a column of type `t` has in a query: DECIMAL columns are read as DOUBLE, because
/// decimal arithmetic fails on overflow and a job's outcome must never depend on the data.
pub fn as_queried(t: &DataType) -> DataType {
    if is_decimal(t) {
        DataType::Float64
    } else {
        t.clone()
    }
}

fn unsupported(message: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        what: "SQL query",
        location: crate::error::Location {
            line: None,
            field: "sql".into(),
        },
        message: message.into(),
    }
}

/// What every refusal of a construct adds: what is supported instead.
const SUPPORTED: &str = "a SQL job is `SELECT <group expressions>, <aggregates> FROM <dataset> \
     [JOIN <public table> ON ...] [WHERE ...] [GROUP BY ...] [HAVING ...] [ORDER BY ...] \
     [LIMIT ...]` with COUNT(*), \
     COUNT(col), COUNT(DISTINCT <privacy unit>), SUM, AVG, MEDIAN, PERCENTILE_CONT, \
     APPROX_PERCENTILE_CONT, VARIANCE and STDDEV (docs/sql.md)";

/// Parses one `SELECT` statement and plans it against `table` under the names `tables`, with
/// the public tables `lookups`. `declared` (the policy's public tables) only names them in the
/// error for a table the query may not read.
fn plan_query(
    text: &str,
    tables: &[String],
    table: Arc<dyn datafusion::catalog::TableProvider>,
    readable: &Tables<'_>,
    declared: &[String],
) -> Result<LogicalPlan> {
    check_size(text)?;
    let mut statements = DFParserBuilder::new(text)
        .with_recursion_limit(MAX_SQL_NESTING * 2)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| unsupported(format!("the query does not parse: {}", strip_prefix(&e))))?;
    if statements.len() != 1 {
        return Err(unsupported(format!(
            "the query holds {} statements; send exactly one SELECT",
            statements.len()
        )));
    }
    let statement = match statements.pop_front() {
        Some(DfStatement::Statement(s)) => *s,
        Some(other) => {
            return Err(unsupported(format!(
                "`{}` is not a query; {SUPPORTED}",
                first_words(&other.to_string())
            )));
        }
        None => return Err(unsupported("the query is empty")),
    };
    if !matches!(statement, SqlStatement::Query(_)) {
        return Err(unsupported(format!(
            "`{}` is not a SELECT; {SUPPORTED}",
            first_words(&statement.to_string())
        )));
    }
    let mut sources = vec![(tables.to_vec(), table)];
    for l in readable.lookups {
        sources.push((table_names(&l.dataset), l.provider()?));
    }
    for p in readable.partners {
        sources.push((table_names(&p.dataset), p.table.clone()));
    }
    let provider = provider::DatasetOnly::new(sources, declared);
    SqlToRel::new_with_options(&provider, ParserOptions::default())
        .sql_statement_to_plan(statement)
        .map_err(|e| unsupported(strip_prefix(&e)))
}

/// Refuses texts too long or too deeply nested to plan safely.
fn check_size(text: &str) -> Result<()> {
    if text.len() > MAX_SQL_BYTES {
        return Err(unsupported(format!(
            "the query is {} bytes long; at most {MAX_SQL_BYTES}",
            text.len()
        )));
    }
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '(' => {
                depth += 1;
                if depth > MAX_SQL_NESTING {
                    return Err(unsupported(format!(
                        "the query nests parentheses more than {MAX_SQL_NESTING} deep"
                    )));
                }
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A DataFusion error's message without its `Error during planning: ` style prefix.
fn strip_prefix(e: &datafusion::error::DataFusionError) -> String {
    let text = e.to_string();
    for prefix in [
        "Error during planning: ",
        "SQL error: ",
        "This feature is not implemented: ",
        "Schema error: ",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return rest.to_owned();
        }
    }
    text
}

fn first_words(text: &str) -> String {
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a released aggregate of the query is.
#[derive(Debug, Clone, PartialEq)]
enum Released {
    /// The distinct-unit count (`COUNT(*)`, `COUNT(1)`, `COUNT(DISTINCT unit)`).
    Units,
    /// A value: how it aggregates, the argument expression, and the column it reads directly
    /// (for the policy's bounds) if it is a plain column.
    Value {
        aggregate: Aggregate,
        per_unit: PerUnit,
        arg: Expr,
    },
}

/// The accepted plan, taken apart.
struct Dissected {
    /// The group expressions' output names and expressions, in the aggregate's order.
    keys: Vec<(String, Expr)>,
    /// The released values' output names and definitions, in SELECT order.
    values: Vec<(String, Released)>,
    /// The unit count's output name, when the query selects it.
    count_name: Option<String>,
    /// The row predicates (WHERE).
    filters: Vec<Expr>,
    /// The dataset's scan (under its alias, if the query gives one) and the lookups joined to
    /// it: what the rows come from.
    base: LogicalPlan,
    /// `base`, taken apart.
    sources: lookup::Sources,
    /// Per column of the aggregate's output, the selected output it is (if selected).
    by_aggregate: Vec<Option<Output>>,
    /// Per SELECT item, the output it is.
    selected: Vec<Output>,
    /// HAVING, ORDER BY and LIMIT, applied to the noisy release.
    post: post::Post,
}

impl Dissected {
    /// Every row-level expression of the query: group expressions, aggregate arguments, WHERE,
    /// join conditions.
    fn row_exprs(&self) -> impl Iterator<Item = &Expr> {
        self.keys
            .iter()
            .map(|(_, e)| e)
            .chain(self.values.iter().filter_map(|(_, r)| match r {
                Released::Value { arg, .. } => Some(arg),
                Released::Units => None,
            }))
            .chain(self.filters.iter())
            .chain(self.sources.joins.iter().flat_map(|j| j.conditions.iter()))
    }

    /// Whether `c` is the dataset's privacy unit (a lookup's column of that name is not), or
    /// the linked dataset's link key (the same person's token).
    fn is_unit(&self, c: &Column, unit: &str) -> bool {
        (c.name == unit && self.sources.is_dataset_column(c))
            || self
                .sources
                .link
                .as_ref()
                .is_some_and(|l| self.sources.is_partner_column(c) && c.name == l.partner_key)
    }

    /// Every column of the linked dataset the query reads, in first-use order, its key aside.
    fn partner_columns(&self, partner_key: &str) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for e in self.row_exprs() {
            let mut refs: Vec<&Column> = e.column_refs().into_iter().collect();
            refs.sort_by(|a, b| a.name.cmp(&b.name));
            for c in refs {
                if self.sources.is_partner_column(c)
                    && c.name != partner_key
                    && !names.contains(&c.name)
                {
                    names.push(c.name.clone());
                }
            }
        }
        names
    }

    /// Every dataset column the query reads, in first-use order, the unit aside.
    fn columns(&self, unit: &str) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for e in self.row_exprs() {
            let mut refs: Vec<&Column> = e.column_refs().into_iter().collect();
            refs.sort_by(|a, b| a.name.cmp(&b.name));
            for c in refs {
                if self.sources.is_dataset_column(c) && c.name != unit && !names.contains(&c.name) {
                    names.push(c.name.clone());
                }
            }
        }
        names
    }
}

/// Which released column a selected output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Output {
    /// Key part `i`.
    Key(usize),
    /// The count of people.
    Units,
    /// Released value `j` (in the plan's order of values).
    Value(usize),
}

/// Takes an accepted plan apart, or names the construct that makes it unacceptable: optional
/// `LIMIT`, `ORDER BY` and `HAVING` (post-processing, [`post`]) around the `SELECT`.
fn dissect(
    plan: &LogicalPlan,
    unit: &str,
    tables: &[String],
    readable: &Tables<'_>,
) -> Result<Dissected> {
    let mut node = plan;
    let mut post = post::Post::default();
    if let LogicalPlan::Limit(l) = node {
        (post.skip, post.fetch) = post::limit(l)?;
        node = l.input.as_ref();
    }
    let mut sorts = None;
    if let LogicalPlan::Sort(s) = node {
        if let Some(fetch) = s.fetch {
            post.fetch = Some(post.fetch.map_or(fetch, |f| f.min(fetch)));
        }
        sorts = Some(&s.expr);
        node = s.input.as_ref();
    }
    let projection = match node {
        LogicalPlan::Projection(p) => p,
        LogicalPlan::Distinct(_) => {
            return Err(unsupported(format!(
                "SELECT DISTINCT releases rows; {SUPPORTED}"
            )));
        }
        other => return Err(construct(other)),
    };
    let (aggregate, having) = match projection.input.as_ref() {
        LogicalPlan::Aggregate(a) => (a, None),
        LogicalPlan::Filter(f) => match f.input.as_ref() {
            LogicalPlan::Aggregate(a) => (a, Some(&f.predicate)),
            _ => {
                return Err(unsupported(format!(
                    "the query releases rows, not aggregates: {SUPPORTED}"
                )));
            }
        },
        LogicalPlan::Sort(_) => {
            return Err(unsupported(
                "ORDER BY names selected outputs only (`ORDER BY people DESC, educ`), as they \
                 are released",
            ));
        }
        LogicalPlan::Window(_) => {
            return Err(unsupported(format!(
                "window functions are not supported; {SUPPORTED}"
            )));
        }
        _ => {
            return Err(unsupported(format!(
                "the query releases rows, not aggregates: {SUPPORTED}"
            )));
        }
    };
    let mut d = dissect_select(projection, aggregate, unit, tables, readable)?;
    let by_aggregate = &d.by_aggregate;
    let aggregate_output = |c: &Column| {
        aggregate
            .schema
            .index_of_column(c)
            .ok()
            .and_then(|i| by_aggregate.get(i).copied().flatten())
    };
    if let Some(predicate) = having {
        post.having = Some(post::condition(predicate, &aggregate_output)?);
    }
    if let Some(sorts) = sorts {
        let selected = &d.selected;
        let select_output = |c: &Column| {
            projection
                .schema
                .index_of_column(c)
                .ok()
                .and_then(|i| selected.get(i).copied())
        };
        post.order = post::order(sorts, &select_output)?;
    }
    post.count_name = d.count_name.clone();
    d.post = post;
    Ok(d)
}

/// The `SELECT` over the aggregate, taken apart: keys, values, the count, the row filters.
fn dissect_select(
    projection: &datafusion::logical_expr::Projection,
    aggregate: &datafusion::logical_expr::Aggregate,
    unit: &str,
    tables: &[String],
    readable: &Tables<'_>,
) -> Result<Dissected> {
    let (filters, base) = row_filters(&aggregate.input)?;
    let sources = lookup::sources(&base, tables, readable)?;
    for e in aggregate.group_expr.iter() {
        check_row_expr(e, "GROUP BY")?;
    }
    let mut keys: Vec<Option<String>> = vec![None; aggregate.group_expr.len()];
    let mut values = Vec::new();
    let mut count_name = None;
    let schema = aggregate.schema.clone();
    let mut by_aggregate: Vec<Option<Output>> = vec![None; schema.fields().len()];
    let mut selected = Vec::new();
    for expr in &projection.expr {
        let (column, name) = selected_column(expr)?;
        let index = schema.index_of_column(&column).map_err(|_| {
            unsupported(format!(
                "`{expr}` is computed from aggregates; the SELECT list names group expressions \
                 and aggregates only (arithmetic on released values is post-processing, done on \
                 the result)"
            ))
        })?;
        let name = output_name(&name, expr)?;
        let output = if index < keys.len() {
            if keys[index].replace(name.clone()).is_some() {
                return Err(unsupported(format!(
                    "group expression `{name}` is selected twice"
                )));
            }
            Output::Key(index)
        } else {
            match classify(&aggregate.aggr_expr[index - keys.len()], unit, &sources)? {
                Released::Units => {
                    if count_name.replace(name.clone()).is_some() {
                        return Err(unsupported(
                            "the query selects the count of people twice (COUNT(*), COUNT(1) \
                             and COUNT(DISTINCT <privacy unit>) are the same released count)",
                        ));
                    }
                    Output::Units
                }
                value => {
                    values.push((name, value));
                    Output::Value(values.len() - 1)
                }
            }
        };
        by_aggregate[index] = Some(output);
        selected.push(output);
    }
    let keys = keys
        .into_iter()
        .zip(&aggregate.group_expr)
        .map(|(name, e)| {
            name.map(|n| (n, e.clone())).ok_or_else(|| {
                unsupported(format!(
                    "GROUP BY `{e}` is not in the SELECT list: select every group expression \
                     (with a name), so that each released row says which group it is"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    check_counts(keys.len(), values.len())?;
    Ok(Dissected {
        keys,
        values,
        count_name,
        filters,
        base,
        sources,
        by_aggregate,
        selected,
        post: post::Post::default(),
    })
}

/// A refusal naming the plan node the query needs.
fn construct(node: &LogicalPlan) -> PolicyError {
    let what = match node {
        LogicalPlan::Join(_) => "joins other than with a public table",
        LogicalPlan::Union(_) => "UNION",
        LogicalPlan::Values(_) => "VALUES",
        LogicalPlan::Subquery(_) | LogicalPlan::SubqueryAlias(_) => "subqueries in FROM",
        LogicalPlan::Projection(_) => "subqueries in FROM",
        LogicalPlan::Window(_) => "window functions",
        LogicalPlan::Unnest(_) => "UNNEST",
        LogicalPlan::RecursiveQuery(_) => "recursive queries",
        LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => "EXPLAIN",
        LogicalPlan::EmptyRelation(_) => "SELECT without FROM",
        LogicalPlan::Aggregate(_) => "nested aggregation",
        _ => "this construct",
    };
    unsupported(
        format!("{what} are not supported; {SUPPORTED}")
            .replace("this construct are", "this construct is"),
    )
}

/// The row predicates between the aggregate and the sources, checked, and the sources (the
/// dataset's scan with its alias, or lookup joins: [`lookup::sources`] checks them).
fn row_filters(plan: &LogicalPlan) -> Result<(Vec<Expr>, LogicalPlan)> {
    let mut filters = Vec::new();
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Filter(f) => {
                check_row_expr(&f.predicate, "WHERE")?;
                filters.push(f.predicate.clone());
                node = f.input.as_ref();
            }
            LogicalPlan::SubqueryAlias(a)
                if matches!(a.input.as_ref(), LogicalPlan::TableScan(_)) =>
            {
                return Ok((filters, node.clone()));
            }
            LogicalPlan::TableScan(_) | LogicalPlan::Join(_) => {
                return Ok((filters, node.clone()));
            }
            other => return Err(construct(other)),
        }
    }
}

fn is_decimal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
    )
}

/// Requires a row-level expression: deterministic, no subquery, no aggregate or window call,
/// only functions that cannot fail on any row ([`rows::check_function`]).
fn check_row_expr(expr: &Expr, clause: &str) -> Result<()> {
    let mut found: Option<&'static str> = None;
    let mut refused_function: Option<String> = None;
    let _ = expr.apply(|e| {
        if let Expr::ScalarFunction(f) = e
            && let Err(name) = rows::check_function(f.func.name())
        {
            refused_function = Some(name);
        }
        found = match e {
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => Some("subqueries"),
            Expr::OuterReferenceColumn(..) => Some("correlated subqueries"),
            Expr::Placeholder(_) => Some("placeholders"),
            Expr::AggregateFunction(_) => Some("aggregates"),
            Expr::WindowFunction(_) => Some("window functions"),
            // Decimal arithmetic fails on overflow, which would make a job's outcome depend on
            // the data; use floating point (`CAST(x AS DOUBLE)`).
            Expr::Cast(c) if is_decimal(c.field.data_type()) => Some("casts to DECIMAL"),
            Expr::TryCast(c) if is_decimal(c.field.data_type()) => Some("casts to DECIMAL"),
            Expr::Literal(v, _) if is_decimal(&v.data_type()) => Some("DECIMAL literals"),
            _ => None,
        };
        Ok(if found.is_some() || refused_function.is_some() {
            datafusion::common::tree_node::TreeNodeRecursion::Stop
        } else {
            datafusion::common::tree_node::TreeNodeRecursion::Continue
        })
    });
    if let Some(what) = found {
        return Err(unsupported(format!(
            "{what} are not allowed in {clause}; {SUPPORTED}"
        )));
    }
    if let Some(name) = refused_function {
        return Err(unsupported(format!(
            "function `{name}` is not available in SQL jobs: only deterministic functions that \
             cannot fail or grow without bound on any value are (whether a job fails must never \
             depend on the data). Available: {}",
            rows::ALLOWED_FUNCTIONS.join(", ")
        )));
    }
    rows::check_text_growth(expr).map_err(|e| unsupported(format!("{clause}: {e}")))?;
    if expr.is_volatile() {
        return Err(unsupported(format!(
            "`{expr}` in {clause} is not deterministic (random(), uuid(), ...): a released \
             group or filter must depend on the data only"
        )));
    }
    Ok(())
}

use datafusion::common::tree_node::TreeNode as _;

/// The aggregate-output column a SELECT item names, and its outermost alias if it has one (the
/// planner adds aliases of its own: `count(Int64(1)) AS count(*) AS n`).
fn selected_column(expr: &Expr) -> Result<(Column, Option<String>)> {
    let computed = |inner: &Expr| {
        unsupported(format!(
            "`{inner}` is computed from aggregates; the SELECT list names group expressions and \
             aggregates only (arithmetic on released values is post-processing, done on the \
             result)"
        ))
    };
    match expr {
        Expr::Column(c) => Ok((c.clone(), None)),
        Expr::Alias(a) => match strip_alias(&a.expr) {
            Expr::Column(c) => Ok((c.clone(), Some(a.name.clone()))),
            _ => Err(computed(&a.expr)),
        },
        other => Err(unsupported(format!(
            "`{other}` is not a group expression or an aggregate; {SUPPORTED}"
        ))),
    }
}

/// The released name of a SELECT item: its alias, else the plain column name; it must be a
/// valid name (letters, digits, `_`, `-`; at most 64).
fn output_name(alias: &Option<String>, expr: &Expr) -> Result<String> {
    let name = match (alias, expr) {
        (Some(a), _) => a.clone(),
        (None, Expr::Column(c)) => c.name.clone(),
        _ => String::new(),
    };
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return Err(unsupported(format!(
            "`{expr}` needs a name: write `... AS name` (letters, digits, `_` or `-`)"
        )));
    }
    Ok(name)
}

/// What one aggregate expression releases, or why it is refused.
fn classify(expr: &Expr, unit: &str, sources: &lookup::Sources) -> Result<Released> {
    let Expr::AggregateFunction(f) = strip_alias(expr) else {
        return Err(unsupported(format!(
            "`{expr}` is not an aggregate; {SUPPORTED}"
        )));
    };
    let params = &f.params;
    if params.filter.is_some() {
        return Err(unsupported(
            "FILTER (WHERE ...) on an aggregate is not supported; put the condition in WHERE",
        ));
    }
    let name = f.func.name().to_ascii_lowercase();
    for a in &params.args {
        check_row_expr(a, &format!("{}()", name.to_uppercase()))?;
    }
    let value = |aggregate, per_unit, arg: &Expr| -> Result<Released> {
        if params.distinct {
            return Err(unsupported(format!(
                "{}(DISTINCT ...) is not supported; {SUPPORTED}",
                name.to_uppercase()
            )));
        }
        Ok(Released::Value {
            aggregate,
            per_unit,
            arg: arg.clone(),
        })
    };
    match (name.as_str(), params.args.as_slice()) {
        ("count", []) => Ok(Released::Units),
        ("count", [Expr::Literal(v, _)]) if !params.distinct && !v.is_null() => Ok(Released::Units),
        ("count", [Expr::Column(c)])
            if params.distinct && c.name == unit && sources.is_dataset_column(c) =>
        {
            Ok(Released::Units)
        }
        ("count", [_]) if params.distinct => Err(unsupported(
            "COUNT(DISTINCT ...) counts only the privacy unit (people); COUNT(DISTINCT x) of \
             another column is not supported",
        )),
        ("count", [arg]) => value(Aggregate::Sum, PerUnit::Count, arg),
        ("sum", [arg]) => value(Aggregate::Sum, PerUnit::Sum, arg),
        ("avg" | "mean", [arg]) => value(Aggregate::Mean, PerUnit::Mean, arg),
        ("median", [arg]) => value(Aggregate::Quantile(500_000), PerUnit::Mean, arg),
        ("percentile_cont" | "approx_percentile_cont", args) => {
            let (arg, q) = percentile_args(args, &params.order_by)?;
            value(Aggregate::Quantile(q), PerUnit::Mean, &arg)
        }
        ("var" | "var_samp" | "variance", [arg]) => value(
            Aggregate::Mean,
            PerUnit::Spread {
                stddev: false,
                sample: true,
            },
            arg,
        ),
        ("var_pop", [arg]) => value(
            Aggregate::Mean,
            PerUnit::Spread {
                stddev: false,
                sample: false,
            },
            arg,
        ),
        ("stddev" | "stddev_samp", [arg]) => value(
            Aggregate::Mean,
            PerUnit::Spread {
                stddev: true,
                sample: true,
            },
            arg,
        ),
        ("stddev_pop", [arg]) => value(
            Aggregate::Mean,
            PerUnit::Spread {
                stddev: true,
                sample: false,
            },
            arg,
        ),
        _ => Err(unsupported(format!(
            "aggregate `{expr}` is not supported; {SUPPORTED}"
        ))),
    }
}

fn strip_alias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(a) => strip_alias(&a.expr),
        e => e,
    }
}

/// The value expression and q (in millionths) of a percentile: `f(x, q)`, or `f(q) WITHIN
/// GROUP (ORDER BY x)`. Requires 0 < q < 1.
fn percentile_args(
    args: &[Expr],
    order_by: &[datafusion::logical_expr::SortExpr],
) -> Result<(Expr, u32)> {
    let literal_q = |e: &Expr| match strip_alias(e) {
        Expr::Literal(ScalarValue::Float64(Some(q)), _) => Some(*q),
        Expr::Literal(v, _) => v.to_string().parse::<f64>().ok(),
        _ => None,
    };
    let (arg, q) = match (args, order_by) {
        ([x, q], []) => (x.clone(), literal_q(q)),
        ([x, q, ..], [s]) if literal_q(x).is_none() => (s.expr.clone(), literal_q(q)),
        ([q, ..], [s]) => (s.expr.clone(), literal_q(q)),
        _ => (Expr::Literal(ScalarValue::Null, None), None),
    };
    match q {
        Some(q) if q > 0.0 && q < 1.0 => Ok((arg, (q * 1e6).round() as u32)),
        _ => Err(unsupported(
            "a percentile needs a literal fraction strictly between 0 and 1: \
             PERCENTILE_CONT(x, 0.9)",
        )),
    }
}

/// At most [`MAX_KEY_PARTS`] group expressions and [`MAX_VALUES`] values.
fn check_counts(keys: usize, values: usize) -> Result<()> {
    if keys > MAX_KEY_PARTS {
        return Err(unsupported(format!(
            "the query groups by {keys} expressions; at most {MAX_KEY_PARTS}"
        )));
    }
    if values > MAX_VALUES {
        return Err(unsupported(format!(
            "the query releases {values} values; at most {MAX_VALUES}"
        )));
    }
    Ok(())
}

/// Requires every column the query reads to be one the policy lets jobs read, and the privacy
/// unit to be used only in `COUNT(DISTINCT ...)`.
fn check_columns(d: &Dissected, unit: &str, policy: &Policy) -> Result<()> {
    let unit_used = d
        .row_exprs()
        .any(|e| e.column_refs().iter().any(|c| d.is_unit(c, unit)));
    if unit_used {
        return Err(PolicyError::Refused(format!(
            "the query uses the privacy unit `{unit}` outside COUNT(DISTINCT {unit}): it may be \
             counted, never grouped on, filtered on or output"
        )));
    }
    for name in d.columns(unit) {
        if policy.column_rule(&name).class == ColumnClass::Forbidden {
            return Err(PolicyError::Refused(format!(
                "column `{name}` is forbidden by the policy"
            )));
        }
    }
    Ok(())
}

/// Requires every column the query reads from the linked dataset to be one its holder's policy
/// lets jobs read.
fn check_partner_columns(d: &Dissected, link: &linked::LinkJoin, partner: &Policy) -> Result<()> {
    for name in d.partner_columns(&link.partner_key) {
        if partner.column_rule(&name).class == ColumnClass::Forbidden {
            return Err(PolicyError::Refused(format!(
                "column `{name}` of `{}` is forbidden by its holder's policy",
                link.partner
            )));
        }
    }
    Ok(())
}

/// The released values as a manifest would declare them, with each one's per-unit aggregate.
/// `partner` is the linked dataset's policy, for the bounds of its columns.
fn released_values(
    d: &Dissected,
    spec: &SqlSpec,
    policy: &Policy,
    partner: Option<&Policy>,
) -> Result<(Vec<ValueSpec>, Vec<PerUnit>)> {
    let mut values = Vec::new();
    let mut per_units = Vec::new();
    for (name, released) in &d.values {
        let Released::Value {
            aggregate,
            per_unit,
            arg,
        } = released
        else {
            continue;
        };
        let bounds = match per_unit {
            PerUnit::Count => (0.0, 1.0),
            _ => value_bounds(name, arg, spec, (policy, partner), &d.sources)?,
        };
        let weight = spec.weights.get(name).copied().unwrap_or(1);
        values.push(ValueSpec {
            name: name.clone(),
            bounds,
            aggregate: *aggregate,
            weight,
        });
        let PerUnit::Spread { stddev, sample } = *per_unit else {
            per_units.push(*per_unit);
            continue;
        };
        // A spread is two statistics, each with the spread's weight: the mean, and the sum of
        // squared deviations from the bounds' centre, within [0, ((hi − lo)/2)²].
        let (mid, half) = ((bounds.0 + bounds.1) / 2.0, (bounds.1 - bounds.0) / 2.0);
        let square = (0.0, half * half);
        crate::model::check_bounds(square.0, square.1)
            .map_err(|m| unsupported(format!("`{name}`: bounds too wide for a spread ({m})")))?;
        per_units.push(PerUnit::Mean);
        values.push(ValueSpec {
            name: format!("{name}{SQUARE_SUFFIX}"),
            bounds: square,
            aggregate: Aggregate::Sum,
            weight,
        });
        per_units.push(PerUnit::SquaredDeviation {
            mid,
            stddev,
            sample,
        });
    }
    Ok((values, per_units))
}

/// The name of a spread's second statistic: the value's name and this suffix (never shown).
pub const SQUARE_SUFFIX: &str = "__squares";

/// A value's bounds: the manifest's `[bounds]` entry, else the policy's bounds of the dataset
/// column it reads directly.
fn value_bounds(
    name: &str,
    arg: &Expr,
    spec: &SqlSpec,
    (policy, partner): (&Policy, Option<&Policy>),
    sources: &lookup::Sources,
) -> Result<(f64, f64)> {
    if let Some(b) = spec.bounds.get(name) {
        return Ok(*b);
    }
    if let Expr::Column(c) = strip_alias(arg) {
        let owner = if sources.is_dataset_column(c) {
            Some(policy)
        } else if sources.is_partner_column(c) {
            partner
        } else {
            None
        };
        if let Some(b) = owner.and_then(|p| p.column_rule(&c.name).bounds) {
            return Ok(b);
        }
    }
    Err(unsupported(format!(
        "`{name}` needs bounds: the policy gives none for `{arg}`; declare them in the \
         manifest's [bounds] table as `{name} = [lo, hi]` (each person's value is clamped to \
         them, and the noise grows with hi − lo)"
    )))
}

/// Requires every `[bounds]` and `[weights]` entry to name an output that takes it.
fn check_declared_names(d: &Dissected, spec: &SqlSpec) -> Result<()> {
    let bounded: Vec<&str> = d
        .values
        .iter()
        .filter(|(_, r)| {
            !matches!(
                r,
                Released::Value {
                    per_unit: PerUnit::Count,
                    ..
                }
            )
        })
        .map(|(n, _)| n.as_str())
        .collect();
    if let Some(extra) = spec.bounds.keys().find(|k| !bounded.contains(&k.as_str())) {
        return Err(unsupported(format!(
            "[bounds] names `{extra}`, which is not a SUM, AVG or quantile of the query (those \
             are: {})",
            list(&bounded)
        )));
    }
    let mut weighted: Vec<&str> = d.values.iter().map(|(n, _)| n.as_str()).collect();
    weighted.extend(d.count_name.as_deref());
    if let Some(extra) = spec
        .weights
        .keys()
        .find(|k| !weighted.contains(&k.as_str()))
    {
        return Err(unsupported(format!(
            "[weights] names `{extra}`, which is not an aggregate of the query (those are: {})",
            list(&weighted)
        )));
    }
    Ok(())
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
