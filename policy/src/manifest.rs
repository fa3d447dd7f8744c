//! The job manifest a consumer submits (`docs/jobs.md`) and the pre-check that turns a manifest plus
//! a policy into a [`JobPlan`] — or a refusal — before anything runs.
use datafusion::arrow::datatypes::{DataType, Schema};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::accountant::{Charge, Delta, rho_for};
use crate::error::{Location, PolicyError, Result, line_of};
use crate::fixed;
use crate::model::{ColumnClass, Epsilon, MAX_EPSILON, Policy, check_bounds, is_numeric};
use crate::sql::{SqlPlan, SqlSpec};

/// Most key parts and values a job may declare; keeps the gate's work and the output shape bounded.
pub const MAX_KEY_PARTS: usize = 8;
pub const MAX_VALUES: usize = 16;
/// Range of `blocks` in sample-and-aggregate mode.
pub const MIN_BLOCKS: u32 = 2;
pub const MAX_BLOCKS: u32 = 100_000;

/// How a released value column is aggregated. `sum` and `mean` release a noisy sum; `mean` adds
/// the ratio of the noisy sum to the noisy count (post-processing, no extra privacy cost).
/// `quantile` releases the q-quantile (in millionths) of the units' values from a noisy histogram
/// ([`crate::mechanisms::quantile`]); `aggregate = "median"` is q = 0.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    Sum,
    Mean,
    Quantile(u32),
}

/// Which noise the gate adds. Both are exact discrete samplers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Noise {
    /// Discrete Laplace: pure ε-DP; ε adds up over jobs.
    #[default]
    Laplace,
    /// Discrete Gaussian: ρ-zCDP calibrated so the job alone is (ε, δ)-DP; ρ adds up over jobs and
    /// is converted once, so many jobs cost less, and noise grows with sqrt(groups per unit).
    Gaussian,
}

/// Largest weight a released statistic may declare (`weight`, `output.count_weight`).
pub const MAX_WEIGHT: u32 = 1000;

/// One numeric output of the module, with the range the gate clamps it to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueSpec {
    pub name: String,
    pub bounds: (f64, f64),
    pub aggregate: Aggregate,
    /// Its share of ε relative to the other released statistics (`weight`, default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// A validated job manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobManifest {
    pub dataset: String,
    /// Path of the `.wasm` module, relative to the manifest file.
    pub module: String,
    pub purpose: String,
    pub columns: Vec<String>,
    pub epsilon: Epsilon,
    pub keys: Vec<String>,
    /// The values to release besides the unit counts; empty for a count-only job.
    pub values: Vec<ValueSpec>,
    /// The unit counts' share of ε relative to the values' weights (`output.count_weight`,
    /// default 1).
    #[serde(default = "one")]
    pub count_weight: u32,
    /// Sample-and-aggregate mode with this many blocks (`None`: one run per privacy unit).
    pub blocks: Option<u32>,
    pub noise: Noise,
    /// δ the job may spend (partition selection, Gaussian conversion); `None`: the policy's
    /// per-job δ, if the job needs any.
    pub delta: Option<Delta>,
    /// Time from the job's start to its release (`time_budget_ms`); each unit's fuel follows
    /// from it (see [`crate::schedule`]).
    pub time_budget: Option<std::time::Duration>,
    /// Fuel each privacy unit gets (`fuel_per_unit`), when no time budget is declared.
    pub fuel_per_unit: Option<u64>,
    /// A SQL job's query (`sql`, with `[bounds]` and `[weights]`); its columns, keys and values
    /// are derived from the query by the pre-check ([`crate::sql::shape`]). `None`: a module job.
    #[serde(default)]
    pub sql: Option<SqlSpec>,
    /// A module job over a link (`[join]`, docs/linking.md): the linked dataset, the columns of
    /// it the module reads (delivered as `joined.<name>`) and which people the job covers.
    #[serde(default)]
    pub join: Option<JoinSpec>,
}

/// The prefix a module job over a link sees the linked dataset's columns under.
pub const JOINED_PREFIX: &str = "joined.";

/// A module job's `[join]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinSpec {
    /// The linked dataset's id.
    pub dataset: String,
    pub columns: Vec<String>,
    pub coverage: crate::sql::Coverage,
}

/// Longest `purpose` a manifest may state, in characters (it is shown to holders and reviewers).
pub const MAX_PURPOSE_CHARS: usize = 500;
/// Longest time budget a manifest may declare: one day.
pub const MAX_TIME_BUDGET_MS: i64 = 86_400_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    dataset: String,
    /// A module job's module; a SQL job has `sql` instead.
    module: Option<Spanned<String>>,
    sql: Option<Spanned<String>>,
    /// A SQL job's per-aggregate bounds and weights, by output name.
    bounds: Option<Spanned<std::collections::BTreeMap<String, Vec<f64>>>>,
    weights: Option<Spanned<std::collections::BTreeMap<String, i64>>>,
    purpose: Option<Spanned<String>>,
    columns: Option<Spanned<Vec<String>>>,
    time_budget_ms: Option<Spanned<i64>>,
    fuel_per_unit: Option<Spanned<i64>>,
    epsilon: Spanned<f64>,
    blocks: Option<Spanned<i64>>,
    noise: Option<Spanned<String>>,
    delta: Option<Spanned<f64>>,
    output: Option<Spanned<RawOutput>>,
    join: Option<Spanned<RawJoin>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJoin {
    dataset: String,
    columns: Spanned<Vec<String>>,
    coverage: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    keys: Spanned<Vec<String>>,
    /// Omitted or empty: a count-only job.
    values: Option<Spanned<Vec<Spanned<RawValue>>>>,
    count_weight: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValue {
    name: String,
    /// Exactly `[lo, hi]` (checked, so that `[0, 10, 20]` is an error, not `[0, 10]`).
    bounds: Vec<f64>,
    aggregate: Option<String>,
    weight: Option<i64>,
    /// For `aggregate = "quantile"`: which one, in (0, 1).
    quantile: Option<f64>,
}

const WHAT: &str = "manifest";

fn invalid<T>(
    text: &str,
    span: std::ops::Range<usize>,
    field: &str,
    msg: impl Into<String>,
) -> Result<T> {
    Err(PolicyError::Invalid {
        what: WHAT,
        location: Location {
            line: Some(line_of(text, span.start)),
            field: field.into(),
        },
        message: msg.into(),
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl JobManifest {
    /// Parses and validates a manifest on its own (no policy yet): a module job (`module`,
    /// `columns`, `[output]`) or a SQL job (`sql`, optional `[bounds]` and `[weights]`).
    pub fn from_toml(text: &str) -> Result<JobManifest> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| PolicyError::Syntax {
            what: WHAT,
            message: e.to_string(),
        })?;
        let epsilon = match Epsilon::from_f64(*raw.epsilon.get_ref()) {
            Some(e) => e,
            None => {
                return invalid(
                    text,
                    raw.epsilon.span(),
                    "epsilon",
                    format!("must be a number in (0, {MAX_EPSILON}]"),
                );
            }
        };
        let purpose = parse_purpose(text, raw.purpose.clone())?;
        let delta = parse_delta(text, raw.delta.clone())?;
        let (time_budget, fuel_per_unit) =
            parse_schedule(text, raw.time_budget_ms.clone(), raw.fuel_per_unit.clone())?;
        let common = JobManifest {
            dataset: raw.dataset.clone(),
            module: String::new(),
            purpose,
            time_budget,
            fuel_per_unit,
            columns: Vec::new(),
            epsilon,
            keys: Vec::new(),
            values: Vec::new(),
            count_weight: 1,
            blocks: None,
            noise: Noise::Laplace,
            delta,
            sql: None,
            join: None,
        };
        if let (Some(join), Some(_)) = (&raw.join, &raw.sql) {
            return invalid(
                text,
                join.span(),
                "join",
                "a SQL job joins a linked dataset in its query (`JOIN ... USING (key)`), not in \
                 `[join]`",
            );
        }
        match (&raw.module, &raw.sql) {
            (Some(_), None) => module_job(text, raw, common),
            (None, Some(_)) => sql_job(text, raw, common),
            (Some(m), Some(_)) => invalid(
                text,
                m.span(),
                "module",
                "a job has a `module` or a `sql` query, not both",
            ),
            (None, None) => Err(PolicyError::Invalid {
                what: WHAT,
                location: Location {
                    line: None,
                    field: "module".into(),
                },
                message: "missing: name the job's `module` (a .wasm file) or give a `sql` query"
                    .into(),
            }),
        }
    }
}

/// The module job's fields of `raw` on top of `common`.
fn module_job(text: &str, raw: RawManifest, mut common: JobManifest) -> Result<JobManifest> {
    for (present, field) in [
        (raw.bounds.as_ref().map(|b| b.span()), "bounds"),
        (raw.weights.as_ref().map(|w| w.span()), "weights"),
    ] {
        if let Some(span) = present {
            return invalid(
                text,
                span,
                field,
                format!(
                    "`[{field}]` belongs to SQL jobs; a module job declares bounds and weights in `output.values`"
                ),
            );
        }
    }
    let module = raw.module.expect("checked by the caller");
    let Some(columns) = raw.columns else {
        return invalid(
            text,
            module.span(),
            "columns",
            "missing: list the columns the module reads",
        );
    };
    let Some(output) = raw.output else {
        return invalid(
            text,
            module.span(),
            "output",
            "missing: declare `[output]` with `keys` and `values`",
        );
    };
    let output = output.into_inner();
    common.columns = parse_columns(text, columns)?;
    let keys_span = output.keys.span();
    let keys = parse_keys(text, output.keys)?;
    let blocks = match raw.blocks {
        None => None,
        Some(b) => {
            let n = *b.get_ref();
            if !(i64::from(MIN_BLOCKS)..=i64::from(MAX_BLOCKS)).contains(&n) {
                return invalid(
                    text,
                    b.span(),
                    "blocks",
                    format!("must be a whole number from {MIN_BLOCKS} to {MAX_BLOCKS}"),
                );
            }
            if !keys.is_empty() {
                return invalid(
                    text,
                    keys_span,
                    "output.keys",
                    "sample-and-aggregate jobs release one estimate per value: declare no keys",
                );
            }
            Some(n as u32)
        }
    };
    common.noise = parse_noise(text, raw.noise, blocks.is_some())?;
    common.values = parse_values(text, output.values, &keys, blocks)?;
    common.count_weight = match output.count_weight {
        None => 1,
        Some(w) if blocks.is_some() => {
            return invalid(
                text,
                w.span(),
                "output.count_weight",
                "sample-and-aggregate jobs release no counts: remove `count_weight`",
            );
        }
        Some(w) => parse_weight(text, w.span(), "output.count_weight", *w.get_ref())?,
    };
    common.module = module.into_inner();
    common.keys = keys;
    common.blocks = blocks;
    common.join = raw.join.map(|j| parse_join(text, j)).transpose()?;
    Ok(common)
}

/// `[join]`: the linked dataset, the columns the module reads of it, and the coverage
/// (`inner`, the default; `left`; `full`).
fn parse_join(text: &str, raw: Spanned<RawJoin>) -> Result<JoinSpec> {
    let raw = raw.into_inner();
    let coverage = match raw.coverage {
        None => crate::sql::Coverage::Inner,
        Some(c) => match c.get_ref().as_str() {
            "inner" => crate::sql::Coverage::Inner,
            "left" => crate::sql::Coverage::Left,
            "full" => crate::sql::Coverage::Full,
            other => {
                return invalid(
                    text,
                    c.span(),
                    "join.coverage",
                    format!("`{other}` is not one of \"inner\", \"left\", \"full\""),
                );
            }
        },
    };
    Ok(JoinSpec {
        dataset: raw.dataset,
        columns: parse_columns(text, raw.columns)?,
        coverage,
    })
}

/// The SQL job's fields of `raw` on top of `common`; what the query reads and releases is
/// derived later, against the dataset's schema and policy ([`crate::sql::shape`]).
fn sql_job(text: &str, raw: RawManifest, mut common: JobManifest) -> Result<JobManifest> {
    let sql = raw.sql.expect("checked by the caller");
    for (present, field, instead) in [
        (
            raw.columns.as_ref().map(|c| c.span()),
            "columns",
            "the columns the query names are the ones it reads",
        ),
        (
            raw.output.as_ref().map(|o| o.span()),
            "output",
            "the query's GROUP BY and aggregates say what it releases; bounds and weights go in `[bounds]` and `[weights]`",
        ),
        (
            raw.blocks.as_ref().map(|b| b.span()),
            "blocks",
            "sample-and-aggregate is for modules",
        ),
        (
            raw.fuel_per_unit.as_ref().map(|f| f.span()),
            "fuel_per_unit",
            "a query runs no module",
        ),
    ] {
        if let Some(span) = present {
            return invalid(text, span, field, format!("not for SQL jobs: {instead}"));
        }
    }
    if sql.get_ref().trim().is_empty() {
        return invalid(text, sql.span(), "sql", "the query is empty");
    }
    common.noise = parse_noise(text, raw.noise, false)?;
    let mut bounds = std::collections::BTreeMap::new();
    if let Some(raw_bounds) = raw.bounds {
        let span = raw_bounds.span();
        for (name, b) in raw_bounds.into_inner() {
            let field = format!("bounds.{name}");
            let [lo, hi] = b[..] else {
                return invalid(text, span, &field, "must be exactly `[lo, hi]`");
            };
            if let Err(message) = check_bounds(lo, hi) {
                return invalid(text, span, &field, message);
            }
            bounds.insert(name, (lo, hi));
        }
    }
    let mut weights = std::collections::BTreeMap::new();
    if let Some(raw_weights) = raw.weights {
        let span = raw_weights.span();
        for (name, w) in raw_weights.into_inner() {
            let weight = parse_weight(text, span.clone(), &format!("weights.{name}"), w)?;
            weights.insert(name, weight);
        }
    }
    common.sql = Some(SqlSpec {
        text: sql.into_inner(),
        bounds,
        weights,
    });
    Ok(common)
}

/// `columns`: at least one, none twice (whether the policy allows them is the pre-check's).
fn parse_columns(text: &str, columns_raw: Spanned<Vec<String>>) -> Result<Vec<String>> {
    let columns_span = columns_raw.span();
    let columns = columns_raw.into_inner();
    if columns.is_empty() {
        return invalid(text, columns_span, "columns", "request at least one column");
    }
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].contains(c) {
            return invalid(
                text,
                columns_span.clone(),
                "columns",
                format!("`{c}` is listed twice"),
            );
        }
    }
    Ok(columns)
}

/// `output.keys`: at most [`MAX_KEY_PARTS`] valid names.
fn parse_keys(text: &str, keys_raw: Spanned<Vec<String>>) -> Result<Vec<String>> {
    let keys_span = keys_raw.span();
    let keys = keys_raw.into_inner();
    if keys.len() > MAX_KEY_PARTS {
        return invalid(
            text,
            keys_span,
            "output.keys",
            format!("at most {MAX_KEY_PARTS} key parts"),
        );
    }
    if let Some(bad) = keys.iter().find(|k| !valid_name(k)) {
        return invalid(
            text,
            keys_span,
            "output.keys",
            format!("`{bad}` is not a valid name"),
        );
    }
    Ok(keys)
}

/// `noise`: Laplace (the default) or Gaussian; `in_blocks`: sample-and-aggregate, Laplace only.
fn parse_noise(text: &str, noise: Option<Spanned<String>>, in_blocks: bool) -> Result<Noise> {
    Ok(match noise {
        None => Noise::Laplace,
        Some(n) => match n.get_ref().as_str() {
            "laplace" => Noise::Laplace,
            "gaussian" if in_blocks => {
                return invalid(
                    text,
                    n.span(),
                    "noise",
                    "sample-and-aggregate jobs use Laplace noise",
                );
            }
            "gaussian" => Noise::Gaussian,
            other => {
                return invalid(
                    text,
                    n.span(),
                    "noise",
                    format!("`{other}` is not one of \"laplace\", \"gaussian\""),
                );
            }
        },
    })
}

/// `delta`: within [`Delta::MIN`, `Delta::MAX`] when given.
fn parse_delta(text: &str, delta: Option<Spanned<f64>>) -> Result<Option<Delta>> {
    Ok(match delta {
        None => None,
        Some(d) => match Delta::from_f64(*d.get_ref()) {
            Some(d) => Some(d),
            None => {
                return invalid(
                    text,
                    d.span(),
                    "delta",
                    format!("must be a number in [{:e}, {:e}]", Delta::MIN, Delta::MAX),
                );
            }
        },
    })
}

/// `output.values`: up to [`MAX_VALUES`] values with valid, unique names (not a key's), sound
/// bounds, a weight and an aggregate (only `mean` in block mode, where at least one is needed);
/// none at all is a count-only job.
fn parse_values(
    text: &str,
    raw_values: Option<Spanned<Vec<Spanned<RawValue>>>>,
    keys: &[String],
    blocks: Option<u32>,
) -> Result<Vec<ValueSpec>> {
    let Some(raw_values) = raw_values else {
        return match blocks {
            None => Ok(Vec::new()),
            Some(_) => invalid(
                text,
                0..0,
                "output.values",
                "sample-and-aggregate jobs release one estimate per value: declare at least one",
            ),
        };
    };
    let values_span = raw_values.span();
    let raw_values = raw_values.into_inner();
    let least = usize::from(blocks.is_some());
    if raw_values.len() < least || raw_values.len() > MAX_VALUES {
        return invalid(
            text,
            values_span,
            "output.values",
            format!("declare {least} to {MAX_VALUES} values"),
        );
    }
    let mut values = Vec::new();
    for (i, v) in raw_values.into_iter().enumerate() {
        let span = v.span();
        let v = v.into_inner();
        let field = format!("output.values[{i}]");
        if !valid_name(&v.name)
            || keys.contains(&v.name)
            || values.iter().any(|x: &ValueSpec| x.name == v.name)
        {
            return invalid(
                text,
                span,
                &format!("{field}.name"),
                format!("`{}` is not a valid, unique name", v.name),
            );
        }
        let &[lo, hi] = v.bounds.as_slice() else {
            return invalid(
                text,
                span,
                &format!("{field}.bounds"),
                format!(
                    "give exactly two numbers, [lo, hi]; found {}",
                    v.bounds.len()
                ),
            );
        };
        if let Err(m) = check_bounds(lo, hi) {
            return invalid(text, span, &format!("{field}.bounds"), m);
        }
        let weight = match v.weight {
            None => 1,
            Some(_) if blocks.is_some() => {
                return invalid(
                    text,
                    span,
                    &format!("{field}.weight"),
                    "sample-and-aggregate jobs split ε evenly over their values: remove `weight`",
                );
            }
            Some(w) => parse_weight(text, span.clone(), &format!("{field}.weight"), w)?,
        };
        let aggregate = parse_aggregate(text, span.clone(), &field, &v, blocks.is_some())?;
        if v.quantile.is_some() && !matches!(aggregate, Aggregate::Quantile(_)) {
            return invalid(
                text,
                span,
                &format!("{field}.quantile"),
                "`quantile` applies only with `aggregate = \"quantile\"`",
            );
        }
        values.push(ValueSpec {
            name: v.name,
            bounds: (lo, hi),
            aggregate,
            weight,
        });
    }
    Ok(values)
}

/// A weight: a whole number from 1 to [`MAX_WEIGHT`].
fn parse_weight(text: &str, span: std::ops::Range<usize>, field: &str, w: i64) -> Result<u32> {
    match u32::try_from(w) {
        Ok(w) if (1..=MAX_WEIGHT).contains(&w) => Ok(w),
        _ => invalid(
            text,
            span,
            field,
            format!("a weight is a whole number from 1 to {MAX_WEIGHT}"),
        ),
    }
}

/// One value's `aggregate` (and `quantile`); `in_blocks`: sample-and-aggregate mode, where
/// values are averages over blocks.
fn parse_aggregate(
    text: &str,
    span: std::ops::Range<usize>,
    field: &str,
    v: &RawValue,
    in_blocks: bool,
) -> Result<Aggregate> {
    let aggregate = match v.aggregate.as_deref() {
        // In block mode each value is the noisy average of the blocks' clamped outputs.
        None | Some("mean") if in_blocks => Aggregate::Mean,
        Some(_) if in_blocks => {
            return invalid(
                text,
                span.clone(),
                &format!("{field}.aggregate"),
                "sample-and-aggregate values are averages over blocks: use \"mean\" or leave it out",
            );
        }
        None | Some("sum") => Aggregate::Sum,
        Some("mean") => Aggregate::Mean,
        Some("median") => Aggregate::Quantile(500_000),
        Some("quantile") => match v.quantile {
            Some(q) if q > 0.0 && q < 1.0 => {
                Aggregate::Quantile(((q * 1e6).round() as u32).clamp(1, 999_999))
            }
            _ => {
                return invalid(
                    text,
                    span.clone(),
                    &format!("{field}.quantile"),
                    "`aggregate = \"quantile\"` needs `quantile = q` with 0 < q < 1",
                );
            }
        },
        Some(other) => {
            return invalid(
                text,
                span.clone(),
                &format!("{field}.aggregate"),
                format!("`{other}` is not one of \"sum\", \"mean\", \"median\", \"quantile\""),
            );
        }
    };
    Ok(aggregate)
}

/// `purpose`: one line of at most [`MAX_PURPOSE_CHARS`] characters (it is shown to the holder
/// and reviewers, in terminals too).
fn parse_purpose(text: &str, purpose: Option<Spanned<String>>) -> Result<String> {
    Ok(match purpose {
        None => String::new(),
        Some(p) => {
            let span = p.span();
            let p = p.into_inner();
            if p.chars().count() > MAX_PURPOSE_CHARS {
                return invalid(
                    text,
                    span,
                    "purpose",
                    format!("at most {MAX_PURPOSE_CHARS} characters; shorten it"),
                );
            }
            if p.chars().any(char::is_control) {
                return invalid(
                    text,
                    span,
                    "purpose",
                    "control characters (newlines, tabs, terminal escapes) are not allowed; \
                     write it on one line",
                );
            }
            p
        }
    })
}

/// `time_budget_ms` or `fuel_per_unit` (not both): what the job's schedule follows from.
fn parse_schedule(
    text: &str,
    time_budget_ms: Option<Spanned<i64>>,
    fuel_per_unit: Option<Spanned<i64>>,
) -> Result<(Option<std::time::Duration>, Option<u64>)> {
    let time_budget = match time_budget_ms {
        None => None,
        Some(t) => {
            let ms = *t.get_ref();
            if !(1..=MAX_TIME_BUDGET_MS).contains(&ms) {
                return invalid(
                    text,
                    t.span(),
                    "time_budget_ms",
                    format!(
                        "must be a whole number of milliseconds from 1 to {MAX_TIME_BUDGET_MS}"
                    ),
                );
            }
            Some(std::time::Duration::from_millis(ms as u64))
        }
    };
    let fuel_per_unit = match fuel_per_unit {
        None => None,
        Some(f) => {
            let n = *f.get_ref();
            let min = crate::schedule::MIN_FUEL_PER_UNIT as i64;
            if n < min {
                return invalid(
                    text,
                    f.span(),
                    "fuel_per_unit",
                    format!("must be a whole number of at least {min}"),
                );
            }
            if time_budget.is_some() {
                return invalid(
                    text,
                    f.span(),
                    "fuel_per_unit",
                    "give either time_budget_ms (fuel follows from it) or fuel_per_unit, not both",
                );
            }
            Some(n as u64)
        }
    };
    Ok((time_budget, fuel_per_unit))
}

/// The type a column is delivered to the module as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveredType {
    Int,
    Float,
    Text,
    Bool,
}

/// One column the sandbox will deliver, with the clamp the policy puts on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveredColumn {
    pub name: String,
    pub ty: DeliveredType,
    pub clamp: Option<(f64, f64)>,
}

/// Fixed-point form of a [`ValueSpec`] used by the gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateValue {
    pub name: String,
    pub aggregate: Aggregate,
    pub lo: i64,
    pub hi: i64,
    /// Its share of ε relative to the other released statistics.
    #[serde(default = "one")]
    pub weight: u32,
}

/// Everything trusted code needs to run and release a job, derived from policy + manifest alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobPlan {
    pub privacy_unit: Option<String>,
    pub columns: Vec<DeliveredColumn>,
    pub keys: Vec<String>,
    pub values: Vec<GateValue>,
    /// The unit counts' share of ε relative to the values' weights.
    #[serde(default = "one")]
    pub count_weight: u32,
    pub epsilon: Epsilon,
    pub max_groups_per_unit: u32,
    /// Rows of one unit delivered to the module (a random subset beyond it).
    pub max_rows_per_unit: u32,
    pub min_units_per_group: u64,
    /// Sample-and-aggregate mode: the number of blocks (see [`crate::mechanisms::SampleAggregate`]).
    pub blocks: Option<u32>,
    pub noise: Noise,
    /// What the job costs (decided here, charged by the ledger before the run).
    pub charge: Charge,
    /// The groups to release when the keys are public (policy partitions, or no keys at all): every
    /// one is released, empty or not. `None`: keys come from the data and pass partition
    /// selection, spending `charge.delta_selection`.
    pub public_groups: Option<Vec<Vec<String>>>,
    /// What the job's schedule is computed from (all public: manifest and policy).
    pub schedule: crate::schedule::ScheduleRequest,
    /// A SQL job's query and how each value is aggregated per unit; `None`: a module job.
    #[serde(default)]
    pub sql: Option<SqlPlan>,
    /// A module job over a link: how its units are formed from both datasets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<ModuleJoin>,
}

/// How a module job over a link reads the linked dataset (docs/linking.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleJoin {
    pub partner: String,
    pub coverage: crate::sql::Coverage,
    /// The job dataset's link key (the job's unit) and the partner's.
    pub key: String,
    pub partner_key: String,
    /// The partner's columns, delivered as `joined.<name>` after the job dataset's.
    pub columns: Vec<DeliveredColumn>,
}

impl JobPlan {
    /// The linked dataset the job also reads and is charged on, if it runs over a link.
    pub fn linked_dataset(&self) -> Option<&str> {
        match (&self.join, &self.sql) {
            (Some(j), _) => Some(&j.partner),
            (None, Some(sql)) => sql.link.as_ref().map(|l| l.partner.as_str()),
            _ => None,
        }
    }
}

impl JobPlan {
    /// The job's own (ε, δ), as the per-job caps see it.
    pub fn epsilon_delta(&self) -> (Epsilon, Delta) {
        self.charge.standalone()
    }
}

/// The pre-check: may `consumer` run `manifest` under `policy` on a dataset with `schema`?
/// Refusals carry messages that are safe for the consumer (they depend on the policy and schema,
/// never on data). Budget is checked separately by the ledger.
pub fn precheck(
    policy: &Policy,
    manifest: &JobManifest,
    schema: &Schema,
    consumer: &str,
) -> Result<JobPlan> {
    precheck_with_lookups(policy, manifest, schema, &Default::default(), consumer)
}

/// [`precheck`] of a SQL job that may join more than its dataset: `readable` holds the public
/// tables its policy declares (their current rows) and the linked datasets the consumer is
/// admitted to. A query joining a linked dataset runs under both holders' policies
/// ([`Policy::conjunction`]).
pub fn precheck_with_lookups(
    policy: &Policy,
    manifest: &JobManifest,
    schema: &Schema,
    readable: &crate::sql::Tables<'_>,
    consumer: &str,
) -> Result<JobPlan> {
    // A SQL job declares nothing of what it reads and releases: that comes from its query.
    let Some(spec) = &manifest.sql else {
        return match &manifest.join {
            Some(join) => precheck_module_join(policy, manifest, schema, join, readable, consumer),
            None => precheck_declared(policy, manifest, schema, consumer, None),
        };
    };
    if !policy.allows_consumer(consumer) {
        return Err(PolicyError::Refused(format!(
            "consumer `{consumer}` is not allowed to use dataset `{}`",
            manifest.dataset
        )));
    }
    let shape = crate::sql::shape(spec, &manifest.dataset, schema, policy, readable)?;
    let derived = JobManifest {
        columns: shape.columns,
        keys: shape.keys,
        values: shape.values,
        count_weight: shape.count_weight,
        ..manifest.clone()
    };
    let mut plan = precheck_declared(&shape.policy, &derived, schema, consumer, Some(shape.plan))?;
    plan.schedule.lookup_rows = shape.lookup_rows;
    plan.schedule.max_rows_per_unit = shape.rows_per_unit;
    // A time budget too short for the query's bounds is bad input, before anything is recorded.
    crate::schedule::sql_schedule(&plan.schedule)?;
    Ok(plan)
}

/// The pre-check of a module job over a link: the linked dataset must be one the consumer may
/// join (in `readable.partners`); the job runs under both policies ([`Policy::conjunction`]),
/// its columns checked against its dataset's policy and its `[join]` columns against the
/// partner's, each clamped to its own holder's bounds.
fn precheck_module_join(
    policy: &Policy,
    manifest: &JobManifest,
    schema: &Schema,
    join: &JoinSpec,
    readable: &crate::sql::Tables<'_>,
    consumer: &str,
) -> Result<JobPlan> {
    let Some(partner) = readable.partners.iter().find(|p| p.dataset == join.dataset) else {
        return Err(PolicyError::Invalid {
            what: WHAT,
            location: Location {
                line: None,
                field: "join.dataset".into(),
            },
            message: format!(
                "`{}` is not linked to `{}` by an accepted link you may use (docs/linking.md)",
                join.dataset, manifest.dataset
            ),
        });
    };
    let effective = policy.conjunction(&partner.policy, &partner.key);
    let mut plan = precheck_declared(&effective, manifest, schema, consumer, None)?;
    let partner_schema = partner.table.schema();
    let mut columns = Vec::new();
    for name in &join.columns {
        if name == &partner.partner_key {
            return Err(PolicyError::Refused(format!(
                "column `{name}` of `{}` is its link key; modules never see unit identifiers",
                join.dataset
            )));
        }
        let field = partner_schema.field_with_name(name).map_err(|_| {
            PolicyError::Refused(format!("`{}` has no column `{name}`", join.dataset))
        })?;
        let rule = partner.policy.column_rule(name);
        if rule.class == ColumnClass::Forbidden {
            return Err(PolicyError::Refused(format!(
                "column `{name}` of `{}` is forbidden by its holder's policy",
                join.dataset
            )));
        }
        columns.push(DeliveredColumn {
            name: name.clone(),
            ty: delivered_type(name, field.data_type())?,
            clamp: rule.bounds,
        });
    }
    plan.join = Some(ModuleJoin {
        partner: partner.dataset.clone(),
        coverage: join.coverage,
        key: partner.key.clone(),
        partner_key: partner.partner_key.clone(),
        columns,
    });
    Ok(plan)
}

/// The type a module receives a column of type `t` as.
fn delivered_type(name: &str, t: &DataType) -> Result<DeliveredType> {
    Ok(match t {
        DataType::Boolean => DeliveredType::Bool,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => DeliveredType::Float,
        DataType::Decimal128(_, _) | DataType::Decimal256(_, _) => DeliveredType::Float,
        t if is_numeric(t) => DeliveredType::Int,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DeliveredType::Text,
        other => {
            return Err(PolicyError::Refused(format!(
                "column `{name}` has type {other}, which modules cannot receive yet"
            )));
        }
    })
}

/// The pre-check of a manifest whose columns, keys and values are declared (a module job's, or
/// a SQL job's as derived from its query, with its `sql` plan).
fn precheck_declared(
    policy: &Policy,
    manifest: &JobManifest,
    schema: &Schema,
    consumer: &str,
    sql: Option<SqlPlan>,
) -> Result<JobPlan> {
    if !policy.allows_consumer(consumer) {
        return Err(PolicyError::Refused(format!(
            "consumer `{consumer}` is not allowed to use dataset `{}`",
            manifest.dataset
        )));
    }
    if manifest.epsilon > policy.epsilon_per_job {
        return Err(PolicyError::Refused(format!(
            "the job asks for ε = {} but the policy caps each job at ε = {}",
            manifest.epsilon, policy.epsilon_per_job
        )));
    }
    let mut columns = Vec::new();
    for name in &manifest.columns {
        if policy.privacy_unit.as_deref() == Some(name.as_str()) {
            return Err(PolicyError::Refused(format!(
                "column `{name}` is the privacy unit; modules never see unit identifiers"
            )));
        }
        let Ok(field) = schema.field_with_name(name) else {
            return Err(PolicyError::Refused(format!(
                "the dataset has no column `{name}`"
            )));
        };
        let rule = policy.column_rule(name);
        if rule.class == ColumnClass::Forbidden {
            return Err(PolicyError::Refused(format!(
                "column `{name}` is forbidden by the policy"
            )));
        }
        // A query reads any column type; only modules need one of the ABI's.
        let ty = match sql {
            Some(_) => DeliveredType::Text,
            None => delivered_type(name, field.data_type())?,
        };
        columns.push(DeliveredColumn {
            name: name.clone(),
            ty,
            clamp: rule.bounds,
        });
    }
    // Public groups: no keys (one group), or every key's domain declared by the holder.
    let public_groups = if manifest.keys.is_empty() {
        Some(vec![Vec::new()])
    } else if manifest
        .keys
        .iter()
        .all(|k| policy.partitions.contains_key(k))
    {
        let mut groups: Vec<Vec<String>> = vec![Vec::new()];
        for k in &manifest.keys {
            groups = groups
                .iter()
                .flat_map(|g| {
                    policy.partitions[k].iter().map(move |v| {
                        let mut g = g.clone();
                        g.push(v.clone());
                        g
                    })
                })
                .collect();
        }
        Some(groups)
    } else {
        None
    };
    let needs_delta = public_groups.is_none() || manifest.noise == Noise::Gaussian;
    let delta = if needs_delta {
        let d = manifest.delta.unwrap_or(policy.delta_per_job);
        if d > policy.delta_per_job {
            return Err(PolicyError::Refused(format!(
                "the job asks for δ = {d} but the policy caps each job at δ = {}",
                policy.delta_per_job
            )));
        }
        d
    } else {
        Delta(0)
    };
    let charge = match (manifest.noise, public_groups.is_none()) {
        (Noise::Laplace, selection) => Charge {
            epsilon_pure: manifest.epsilon,
            delta_selection: if selection { delta } else { Delta(0) },
            ..Charge::default()
        },
        (Noise::Gaussian, selection) => {
            let (conversion, selection) = if selection {
                (delta.half(), Delta(delta.0 - delta.half().0))
            } else {
                (delta, Delta(0))
            };
            Charge {
                rho: rho_for(manifest.epsilon, conversion),
                delta_conversion: conversion,
                delta_selection: selection,
                ..Charge::default()
            }
        }
    };
    let values = manifest
        .values
        .iter()
        .map(|v| {
            let (lo, hi) = fixed::bounds_to_fixed(v.bounds.0, v.bounds.1);
            GateValue {
                name: v.name.clone(),
                aggregate: v.aggregate,
                lo,
                hi,
                weight: v.weight,
            }
        })
        .collect();
    Ok(JobPlan {
        privacy_unit: policy.privacy_unit.clone(),
        columns,
        keys: manifest.keys.clone(),
        values,
        count_weight: manifest.count_weight,
        epsilon: manifest.epsilon,
        max_groups_per_unit: policy.max_groups_per_unit,
        min_units_per_group: policy.min_units_per_group,
        max_rows_per_unit: policy.max_rows_per_unit,
        blocks: manifest.blocks,
        noise: manifest.noise,
        charge,
        public_groups,
        schedule: crate::schedule::ScheduleRequest::for_job(manifest, policy),
        sql,
        join: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Field;

    /// Bounded fuzzing of the manifest parser: mutations of a valid manifest parse or fail with
    /// an error, never a panic.
    #[test]
    fn mutated_manifests_parse_or_fail_cleanly() {
        let mut m = veil_abi::mutation::Mutator::new(0x3a1f);
        for _ in 0..3000 {
            let bytes = m.mutate(MANIFEST.as_bytes());
            let _ = JobManifest::from_toml(&String::from_utf8_lossy(&bytes));
        }
    }

    const MANIFEST: &str = r#"
dataset = "census"
module = "m.wasm"
purpose = "wages"
columns = ["educ", "income"]
epsilon = 0.5

[output]
keys = ["education"]
values = [{ name = "income", bounds = [0, 3000], aggregate = "mean" }]
"#;

    const POLICY: &str = r#"
privacy_unit = "person_id"
consumers = ["acme"]
approval = "auto"
min_units_per_group = 10
max_groups_per_unit = 1
[dp]
epsilon_per_job = 1.0
epsilon_total = 3.0
[columns]
educ = { class = "public" }
income = { class = "sensitive", bounds = [0, 5000] }
ssn = { class = "forbidden" }
"#;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("person_id", DataType::Int64, false),
            Field::new("educ", DataType::Int64, true),
            Field::new("income", DataType::Float64, true),
            Field::new("ssn", DataType::Utf8, true),
        ])
    }

    #[test]
    fn plan_for_allowed_job() {
        let m = JobManifest::from_toml(MANIFEST).unwrap();
        let p = Policy::from_toml(POLICY).unwrap();
        let plan = precheck(&p, &m, &schema(), "acme").unwrap();
        assert_eq!(plan.columns.len(), 2);
        assert_eq!(plan.columns[1].clamp, Some((0.0, 5000.0)));
        assert_eq!(plan.values[0].hi, 3000 * fixed::SCALE);
    }

    #[test]
    fn refusals() {
        let p = Policy::from_toml(POLICY).unwrap();
        let m = JobManifest::from_toml(MANIFEST).unwrap();
        assert!(
            precheck(&p, &m, &schema(), "eve")
                .unwrap_err()
                .to_string()
                .contains("not allowed")
        );
        let forbidden =
            JobManifest::from_toml(&MANIFEST.replace("\"income\"]", "\"ssn\"]")).unwrap();
        assert!(
            precheck(&p, &forbidden, &schema(), "acme")
                .unwrap_err()
                .to_string()
                .contains("forbidden")
        );
        let unit =
            JobManifest::from_toml(&MANIFEST.replace("\"income\"]", "\"person_id\"]")).unwrap();
        assert!(
            precheck(&p, &unit, &schema(), "acme")
                .unwrap_err()
                .to_string()
                .contains("privacy unit")
        );
        let greedy =
            JobManifest::from_toml(&MANIFEST.replace("epsilon = 0.5", "epsilon = 2")).unwrap();
        assert!(
            precheck(&p, &greedy, &schema(), "acme")
                .unwrap_err()
                .to_string()
                .contains("caps each job")
        );
    }

    #[test]
    fn manifest_errors_name_the_field() {
        let e =
            JobManifest::from_toml(&MANIFEST.replace("epsilon = 0.5", "epsilon = 0")).unwrap_err();
        assert!(
            e.to_string().contains("line 6") && e.to_string().contains("epsilon"),
            "{e}"
        );
        let e = JobManifest::from_toml(&MANIFEST.replace("\"mean\"", "\"mode\"")).unwrap_err();
        assert!(e.to_string().contains("output.values[0].aggregate"), "{e}");
        let e = JobManifest::from_toml("dataset = 3").unwrap_err();
        assert!(matches!(e, PolicyError::Syntax { .. }), "{e}");
    }
}
