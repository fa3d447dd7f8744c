//! The release policy a data holder sets on a dataset (TOML; every field in `docs/policy.md`).
//!
//! Parsing is strict: unknown fields are errors, every semantic problem names its field and line, and
//! columns the policy does not mention are treated as `forbidden` (default deny).
use std::collections::BTreeMap;
use std::fmt;

use datafusion::arrow::datatypes::{DataType, Schema};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::accountant::Delta;
use crate::error::{Location, PolicyError, Result, line_of};

/// Largest ε the model accepts anywhere; beyond it "differential privacy" means nothing.
pub const MAX_EPSILON: f64 = 100.0;

/// A privacy-loss parameter in millionths, so budgets add up exactly.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Epsilon(pub u64);

impl Epsilon {
    pub const MICRO: u64 = 1_000_000;

    /// Converts a decimal ε, rounding to the nearest millionth; rejects non-finite, non-positive or
    /// absurdly large values.
    pub fn from_f64(value: f64) -> Option<Self> {
        if !value.is_finite() || value <= 0.0 || value > MAX_EPSILON {
            return None;
        }
        let micro = (value * Self::MICRO as f64).round() as u64;
        (micro > 0).then_some(Epsilon(micro))
    }
    pub fn micro(self) -> u64 {
        self.0
    }
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / Self::MICRO as f64
    }
    pub fn saturating_sub(self, other: Epsilon) -> Epsilon {
        Epsilon(self.0.saturating_sub(other.0))
    }
    pub fn saturating_add(self, other: Epsilon) -> Epsilon {
        Epsilon(self.0.saturating_add(other.0))
    }
}

impl fmt::Display for Epsilon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / Self::MICRO;
        let frac = self.0 % Self::MICRO;
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{frac:06}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

/// How sensitive a column is; decides whether it may enter the sandbox at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnClass {
    /// Not personal; any allowed consumer may use it.
    Public,
    /// Identifies people in combination with other columns (age, region, ...).
    Quasi,
    /// Personal and sensitive (income, diagnosis, ...): numeric ones must carry bounds.
    Sensitive,
    /// Never enters the sandbox, whatever a job asks.
    Forbidden,
}

impl ColumnClass {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "public" => Self::Public,
            "quasi" => Self::Quasi,
            "sensitive" => Self::Sensitive,
            "forbidden" => Self::Forbidden,
            _ => return None,
        })
    }
}

/// Whether a job runs as soon as it passes the checks or waits for the holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    Auto,
    Manual,
}

/// What the policy says about one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnRule {
    pub class: ColumnClass,
    /// Inclusive range numeric values are clamped into before a module sees them.
    pub bounds: Option<(f64, f64)>,
}

/// A validated release policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Policy {
    /// Column whose distinct values are the privacy units (people); `None`: each row is a unit.
    pub privacy_unit: Option<String>,
    /// Consumers allowed to submit jobs on the dataset.
    pub consumers: Vec<String>,
    pub approval: Approval,
    /// A released group needs at least this many distinct units (after noise).
    pub min_units_per_group: u64,
    /// Contributions of one unit beyond this many groups are dropped by the gate.
    pub max_groups_per_unit: u32,
    /// A unit with more rows than this has that many of them, chosen at random, delivered to the
    /// module.
    #[serde(default = "default_max_rows_per_unit")]
    pub max_rows_per_unit: u32,
    /// Public upper bound on the number of privacy units (people) in the dataset. Jobs are
    /// scheduled for this many units, never for the actual count, which stays secret; the engine
    /// refuses a policy whose bound the dataset exceeds.
    #[serde(default = "default_max_units")]
    pub max_units: u64,
    pub epsilon_per_job: Epsilon,
    pub epsilon_total: Epsilon,
    /// Largest δ one job may spend (on partition selection or Gaussian conversion).
    #[serde(default = "default_delta_per_job")]
    pub delta_per_job: Delta,
    /// Total δ each consumer may spend on this dataset.
    #[serde(default = "default_delta_total")]
    pub delta_total: Delta,
    /// ε the holder spends, once per dataset, to show admitted consumers a noisy count of its
    /// privacy units in the catalog (`None`: consumers see no count at all). Everyone admitted
    /// sees that one count, so its ε comes out of every consumer's `epsilon_total`.
    #[serde(default)]
    pub unit_count_epsilon: Option<Epsilon>,
    /// Public partitions: for an output key name, every value it may take. When all of a job's keys
    /// are listed here, exactly these groups are released (empty ones too, with noise) and no δ is
    /// spent choosing them.
    #[serde(default)]
    pub partitions: BTreeMap<String, Vec<String>>,
    pub columns: BTreeMap<String, ColumnRule>,
    /// Other datasets of the same holder that the holder declares public: SQL jobs on this
    /// dataset may join them as lookup tables (docs/sql.md). Their rows are treated as public —
    /// they shape results without noise — so only tables the holder would publish belong here.
    /// Dataset ids once the engine has resolved them (`holder:name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_tables: Vec<String>,
}

/// δ per job when the policy does not say.
pub const DEFAULT_DELTA_PER_JOB: f64 = 1e-8;
/// δ per consumer and dataset when the policy does not say.
pub const DEFAULT_DELTA_TOTAL: f64 = 1e-6;
/// Most groups a policy's public partitions may describe (the product of the domains).
pub const MAX_PUBLIC_GROUPS: usize = 10_000;

/// Rows of one unit delivered to a module when the policy does not say.
pub const DEFAULT_MAX_ROWS_PER_UNIT: u32 = 1000;

fn default_max_rows_per_unit() -> u32 {
    DEFAULT_MAX_ROWS_PER_UNIT
}

/// Public bound on privacy units when the policy does not say.
pub const DEFAULT_MAX_UNITS: u64 = 10_000;
/// Largest `max_units` a policy may declare.
pub const MAX_MAX_UNITS: i64 = 1_000_000_000;

fn default_max_units() -> u64 {
    DEFAULT_MAX_UNITS
}

fn default_delta_per_job() -> Delta {
    Delta::from_f64(DEFAULT_DELTA_PER_JOB).expect("valid default")
}
fn default_delta_total() -> Delta {
    Delta::from_f64(DEFAULT_DELTA_TOTAL).expect("valid default")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    privacy_unit: Option<Spanned<String>>,
    consumers: Spanned<Vec<String>>,
    approval: Spanned<String>,
    min_units_per_group: Spanned<i64>,
    max_groups_per_unit: Spanned<i64>,
    max_rows_per_unit: Option<Spanned<i64>>,
    max_units: Option<Spanned<i64>>,
    dp: RawDp,
    #[serde(default)]
    partitions: BTreeMap<String, Spanned<Vec<String>>>,
    columns: BTreeMap<Spanned<String>, Spanned<RawColumn>>,
    public_tables: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDp {
    epsilon_per_job: Spanned<f64>,
    epsilon_total: Spanned<f64>,
    delta_per_job: Option<Spanned<f64>>,
    delta_total: Option<Spanned<f64>>,
    unit_count_epsilon: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    class: String,
    /// Exactly `[lo, hi]` (checked: `[18, 50, 90]` is an error, not `[18, 50]`).
    bounds: Option<Vec<f64>>,
}

/// The `[dp]` section, checked: each ε within (0, [`MAX_EPSILON`]], each δ within
/// [`Delta::MIN`, `Delta::MAX`], per-job caps within the totals, and room left for a job beside
/// a published unit count.
struct Dp {
    epsilon_per_job: Epsilon,
    epsilon_total: Epsilon,
    delta_per_job: Delta,
    delta_total: Delta,
    unit_count_epsilon: Option<Epsilon>,
}

/// The privacy unit column, if named: it must not be blank.
fn parse_privacy_unit(src: &Src<'_>, unit: Option<Spanned<String>>) -> Result<Option<String>> {
    match unit {
        Some(u) if u.get_ref().trim().is_empty() => {
            src.err(u.span(), "privacy_unit", "must name a column")
        }
        Some(u) => Ok(Some(u.into_inner())),
        None => Ok(None),
    }
}

/// The admitted consumers: at least one, each a valid principal name.
fn parse_consumers(src: &Src<'_>, consumers: Spanned<Vec<String>>) -> Result<Vec<String>> {
    let span = consumers.span();
    let consumers = consumers.into_inner();
    if consumers.is_empty() {
        return src.err(span, "consumers", "list at least one consumer");
    }
    if let Some(bad) = consumers.iter().find(|c| !valid_principal(c)) {
        return src.err(
            span,
            "consumers",
            format!("`{bad}` is not a principal name (letters, digits, '-', '_', '.')"),
        );
    }
    Ok(consumers)
}

fn parse_approval(src: &Src<'_>, approval: &Spanned<String>) -> Result<Approval> {
    match approval.get_ref().as_str() {
        "auto" => Ok(Approval::Auto),
        "manual" => Ok(Approval::Manual),
        other => src.err(
            approval.span(),
            "approval",
            format!("`{other}` is not one of \"auto\", \"manual\""),
        ),
    }
}

/// The policy's size limits, each checked against its range.
struct Limits {
    min_units_per_group: u64,
    max_groups_per_unit: u32,
    max_rows_per_unit: u32,
    max_units: u64,
}

impl Limits {
    fn parse(
        src: &Src<'_>,
        min_units: &Spanned<i64>,
        max_groups: &Spanned<i64>,
        max_rows: Option<&Spanned<i64>>,
        max_units: Option<&Spanned<i64>>,
    ) -> Result<Limits> {
        let in_range = |value: &Spanned<i64>, field: &'static str, max: i64| -> Result<i64> {
            if (1..=max).contains(value.get_ref()) {
                Ok(*value.get_ref())
            } else {
                src.err(value.span(), field, format!("must be between 1 and {max}"))
            }
        };
        let min_units_per_group = in_range(min_units, "min_units_per_group", 1_000_000)? as u64;
        let max_groups_per_unit = in_range(max_groups, "max_groups_per_unit", 10_000)? as u32;
        let max_rows_per_unit = match max_rows {
            None => DEFAULT_MAX_ROWS_PER_UNIT,
            Some(m) => in_range(m, "max_rows_per_unit", 1_000_000)? as u32,
        };
        let max_units = match max_units {
            None => DEFAULT_MAX_UNITS,
            Some(m) => in_range(m, "max_units", MAX_MAX_UNITS)? as u64,
        };
        Ok(Limits {
            min_units_per_group,
            max_groups_per_unit,
            max_rows_per_unit,
            max_units,
        })
    }
}

fn parse_dp(src: &Src<'_>, dp: &RawDp) -> Result<Dp> {
    let eps = |s: &Spanned<f64>, field: &str| -> Result<Epsilon> {
        match Epsilon::from_f64(*s.get_ref()) {
            Some(e) => Ok(e),
            None => src.err(
                s.span(),
                field,
                format!("must be a number in (0, {MAX_EPSILON}]"),
            ),
        }
    };
    let epsilon_per_job = eps(&dp.epsilon_per_job, "dp.epsilon_per_job")?;
    let epsilon_total = eps(&dp.epsilon_total, "dp.epsilon_total")?;
    if epsilon_per_job > epsilon_total {
        return src.err(
            dp.epsilon_per_job.span(),
            "dp.epsilon_per_job",
            format!("{epsilon_per_job} exceeds dp.epsilon_total ({epsilon_total})"),
        );
    }

    let unit_count_epsilon = match &dp.unit_count_epsilon {
        None => None,
        Some(s) => {
            let e = eps(s, "dp.unit_count_epsilon")?;
            if e.saturating_add(epsilon_per_job) > epsilon_total {
                return src.err(
                    s.span(),
                    "dp.unit_count_epsilon",
                    format!(
                        "{e} plus dp.epsilon_per_job ({epsilon_per_job}) exceeds \
                         dp.epsilon_total ({epsilon_total}); the published count's ε comes \
                         out of every consumer's total"
                    ),
                );
            }
            Some(e)
        }
    };

    let delta = |s: &Option<Spanned<f64>>, field: &str, default: Delta| -> Result<Delta> {
        match s {
            None => Ok(default),
            Some(s) => match Delta::from_f64(*s.get_ref()) {
                Some(d) => Ok(d),
                None => src.err(
                    s.span(),
                    field,
                    format!("must be a number in [{:e}, {:e}]", Delta::MIN, Delta::MAX),
                ),
            },
        }
    };
    let delta_per_job = delta(
        &dp.delta_per_job,
        "dp.delta_per_job",
        default_delta_per_job(),
    )?;
    let delta_total = delta(&dp.delta_total, "dp.delta_total", default_delta_total())?;
    if delta_per_job > delta_total {
        let span = dp
            .delta_per_job
            .as_ref()
            .or(dp.delta_total.as_ref())
            .map(|s| s.span())
            .unwrap_or(0..0);
        return src.err(
            span,
            "dp.delta_per_job",
            format!("{delta_per_job} exceeds dp.delta_total ({delta_total})"),
        );
    }
    Ok(Dp {
        epsilon_per_job,
        epsilon_total,
        delta_per_job,
        delta_total,
        unit_count_epsilon,
    })
}

/// Most public tables a policy may declare.
pub const MAX_PUBLIC_TABLES: usize = 16;

/// `public_tables`: distinct dataset names (short names or ids), at most [`MAX_PUBLIC_TABLES`].
/// Whether each is one of the holder's datasets is the engine's check, when the policy is set.
fn parse_public_tables(src: &Src<'_>, raw: Option<Spanned<Vec<String>>>) -> Result<Vec<String>> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let span = raw.span();
    let names = raw.into_inner();
    if names.len() > MAX_PUBLIC_TABLES {
        return src.err(
            span,
            "public_tables",
            format!("at most {MAX_PUBLIC_TABLES} public tables"),
        );
    }
    for (i, name) in names.iter().enumerate() {
        if name.trim().is_empty() {
            return src.err(span, "public_tables", "a table name is blank");
        }
        if names[..i].contains(name) {
            return src.err(span, "public_tables", format!("`{name}` is listed twice"));
        }
    }
    Ok(names)
}

/// `[partitions]`: per key, a non-empty list of distinct values; at most [`MAX_PUBLIC_GROUPS`]
/// groups in all.
fn parse_partitions(
    src: &Src<'_>,
    raw_partitions: BTreeMap<String, Spanned<Vec<String>>>,
) -> Result<BTreeMap<String, Vec<String>>> {
    let mut partitions = BTreeMap::new();
    let mut groups: usize = 1;
    for (name, values) in raw_partitions {
        let field = format!("partitions.{name}");
        let span = values.span();
        let values = values.into_inner();
        if values.is_empty() {
            return src.err(span, &field, "list at least one value");
        }
        if let Some(dup) = values
            .iter()
            .enumerate()
            .find(|(i, v)| values[..*i].contains(v))
        {
            return src.err(span, &field, format!("`{}` is listed twice", dup.1));
        }
        groups = groups.saturating_mul(values.len());
        if groups > MAX_PUBLIC_GROUPS {
            return src.err(
                span,
                &field,
                format!("the public partitions describe more than {MAX_PUBLIC_GROUPS} groups"),
            );
        }
        partitions.insert(name, values);
    }
    Ok(partitions)
}

/// `[columns]`: at least one, each with a known class and sound bounds when given.
fn parse_column_rules(
    src: &Src<'_>,
    raw_columns: BTreeMap<Spanned<String>, Spanned<RawColumn>>,
) -> Result<BTreeMap<String, ColumnRule>> {
    let mut columns = BTreeMap::new();
    for (name, rule) in raw_columns {
        let field = format!("columns.{}", name.get_ref());
        let class = match ColumnClass::parse(&rule.get_ref().class) {
            Some(c) => c,
            None => {
                return src.err(
                    rule.span(),
                    &format!("{field}.class"),
                    format!(
                        "`{}` is not one of \"public\", \"quasi\", \"sensitive\", \"forbidden\"",
                        rule.get_ref().class
                    ),
                );
            }
        };
        let bounds = match rule.get_ref().bounds.as_deref() {
            Some(&[lo, hi]) => {
                if let Err(m) = check_bounds(lo, hi) {
                    return src.err(rule.span(), &format!("{field}.bounds"), m);
                }
                Some((lo, hi))
            }
            Some(other) => {
                let m = format!("give exactly two numbers, [lo, hi]; found {}", other.len());
                return src.err(rule.span(), &format!("{field}.bounds"), &m);
            }
            None => None,
        };
        columns.insert(name.into_inner(), ColumnRule { class, bounds });
    }
    if columns.is_empty() {
        return Err(PolicyError::Invalid {
            what: WHAT,
            location: Location {
                line: None,
                field: "columns".into(),
            },
            message: "classify at least one column".into(),
        });
    }
    Ok(columns)
}

const WHAT: &str = "policy";

struct Src<'a>(&'a str);

impl Src<'_> {
    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        field: &str,
        msg: impl Into<String>,
    ) -> Result<T> {
        Err(PolicyError::Invalid {
            what: WHAT,
            location: Location {
                line: Some(line_of(self.0, span.start)),
                field: field.into(),
            },
            message: msg.into(),
        })
    }
}

/// Upper limit on a bound's magnitude, so fixed-point sums cannot overflow (see `fixed`).
pub const MAX_BOUND: f64 = 1e9;

pub(crate) fn check_bounds(lo: f64, hi: f64) -> std::result::Result<(), String> {
    if !lo.is_finite() || !hi.is_finite() {
        return Err("bounds must be finite numbers".into());
    }
    if lo > hi {
        return Err(format!("lower bound {lo} is above upper bound {hi}"));
    }
    if lo.abs() > MAX_BOUND || hi.abs() > MAX_BOUND {
        return Err(format!("bounds must lie within ±{MAX_BOUND}"));
    }
    Ok(())
}

impl Policy {
    /// Parses and validates a policy document on its own (no dataset yet).
    pub fn from_toml(text: &str) -> Result<Policy> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError::Syntax {
            what: WHAT,
            message: e.to_string(),
        })?;
        let src = Src(text);

        let privacy_unit = parse_privacy_unit(&src, raw.privacy_unit)?;
        let consumers = parse_consumers(&src, raw.consumers)?;
        let approval = parse_approval(&src, &raw.approval)?;
        let Limits {
            min_units_per_group,
            max_groups_per_unit,
            max_rows_per_unit,
            max_units,
        } = Limits::parse(
            &src,
            &raw.min_units_per_group,
            &raw.max_groups_per_unit,
            raw.max_rows_per_unit.as_ref(),
            raw.max_units.as_ref(),
        )?;
        let Dp {
            epsilon_per_job,
            epsilon_total,
            delta_per_job,
            delta_total,
            unit_count_epsilon,
        } = parse_dp(&src, &raw.dp)?;
        let partitions = parse_partitions(&src, raw.partitions)?;
        let columns = parse_column_rules(&src, raw.columns)?;
        let public_tables = parse_public_tables(&src, raw.public_tables)?;

        Ok(Policy {
            privacy_unit,
            consumers,
            approval,
            min_units_per_group,
            max_groups_per_unit,
            max_rows_per_unit,
            max_units,
            epsilon_per_job,
            epsilon_total,
            delta_per_job,
            delta_total,
            unit_count_epsilon,
            partitions,
            columns,
            public_tables,
        })
    }

    /// Checks the policy against the dataset it is set on: every column it names exists, bounds sit
    /// on numeric columns, sensitive numeric columns have bounds, and the privacy unit agrees with
    /// the one the dataset was registered with. Returns the policy with the privacy unit filled in.
    pub fn validate_against(
        mut self,
        schema: &Schema,
        registered_unit: Option<&str>,
    ) -> Result<Policy> {
        let invalid = |field: String, message: String| PolicyError::Invalid {
            what: WHAT,
            location: Location { line: None, field },
            message,
        };
        for (name, rule) in &self.columns {
            let Ok(field) = schema.field_with_name(name) else {
                return Err(invalid(
                    format!("columns.{name}"),
                    format!("the dataset has no column `{name}`"),
                ));
            };
            let numeric = is_numeric(field.data_type());
            if rule.bounds.is_some() && !numeric {
                return Err(invalid(
                    format!("columns.{name}.bounds"),
                    format!(
                        "bounds only apply to numeric columns; `{name}` is {}",
                        field.data_type()
                    ),
                ));
            }
            if rule.class == ColumnClass::Sensitive && numeric && rule.bounds.is_none() {
                return Err(invalid(
                    format!("columns.{name}.bounds"),
                    "a sensitive numeric column needs bounds".into(),
                ));
            }
        }
        match (&self.privacy_unit, registered_unit) {
            (Some(p), Some(r)) if p != r => {
                return Err(invalid(
                    "privacy_unit".into(),
                    format!("`{p}` differs from the dataset's registered privacy unit `{r}`"),
                ));
            }
            (None, Some(r)) => self.privacy_unit = Some(r.to_owned()),
            _ => {}
        }
        if let Some(unit) = &self.privacy_unit
            && schema.field_with_name(unit).is_err()
        {
            return Err(invalid(
                "privacy_unit".into(),
                format!("the dataset has no column `{unit}`"),
            ));
        }
        Ok(self)
    }

    /// The rule for a column; columns the policy does not mention are forbidden.
    pub fn column_rule(&self, name: &str) -> ColumnRule {
        self.columns.get(name).cloned().unwrap_or(ColumnRule {
            class: ColumnClass::Forbidden,
            bounds: None,
        })
    }

    /// The policy of a job over a link between this dataset and another (docs/linking.md): what
    /// both holders' policies allow. Consumers admitted by both; manual approval if either asks
    /// for it; the larger minimum group size and the smaller per-person limits and per-job caps;
    /// public partitions only for keys both declare alike; the units are the link's tokens
    /// (`key`), of which there are at most both bounds together. Column rules stay this
    /// dataset's (the other side's columns are checked against its own policy), as do
    /// `public_tables`; each dataset's ledger is checked against its own totals by the engine,
    /// so the totals here are only the smaller of the two.
    pub fn conjunction(&self, other: &Policy, key: &str) -> Policy {
        let partitions = self
            .partitions
            .iter()
            .filter(|(k, v)| other.partitions.get(*k) == Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Policy {
            privacy_unit: Some(key.to_owned()),
            consumers: self
                .consumers
                .iter()
                .filter(|c| other.allows_consumer(c))
                .cloned()
                .collect(),
            approval: match (self.approval, other.approval) {
                (Approval::Auto, Approval::Auto) => Approval::Auto,
                _ => Approval::Manual,
            },
            min_units_per_group: self.min_units_per_group.max(other.min_units_per_group),
            max_groups_per_unit: self.max_groups_per_unit.min(other.max_groups_per_unit),
            max_rows_per_unit: self.max_rows_per_unit.min(other.max_rows_per_unit),
            max_units: self
                .max_units
                .saturating_add(other.max_units)
                .min(MAX_MAX_UNITS as u64),
            epsilon_per_job: self.epsilon_per_job.min(other.epsilon_per_job),
            epsilon_total: self.epsilon_total.min(other.epsilon_total),
            delta_per_job: self.delta_per_job.min(other.delta_per_job),
            delta_total: self.delta_total.min(other.delta_total),
            unit_count_epsilon: None,
            partitions,
            columns: self.columns.clone(),
            public_tables: self.public_tables.clone(),
        }
    }

    pub fn allows_consumer(&self, consumer: &str) -> bool {
        self.consumers.iter().any(|c| c == consumer)
    }
}

/// The policy text `text` as the admitted consumer `consumer` is shown it: the `consumers`
/// list cut to that consumer alone, everything else byte for byte, so that consumers of one
/// dataset do not learn each other's names from the policy they read. Requires `text` to be a
/// stored (valid) policy; one that does not parse is not shown at all (fails closed).
pub fn consumer_view_of_text(text: &str, consumer: &str) -> String {
    #[derive(Deserialize)]
    struct ConsumersOnly {
        consumers: Spanned<Vec<String>>,
    }
    let Ok(parsed) = toml::from_str::<ConsumersOnly>(text) else {
        return "# this policy's text cannot be shown; ask its holder\n".to_owned();
    };
    let span = parsed.consumers.span();
    let only = toml::Value::String(consumer.to_owned());
    format!(
        "{}[{only}] # other admitted consumers are not shown{}",
        &text[..span.start],
        &text[span.end..]
    )
}

/// SHA-256 of a document's exact bytes, hex: how policies and manifests are identified.
pub fn document_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Principal names: short, printable, no spaces.
pub fn valid_principal(name: &str) -> bool {
    // `.` and `..` would read as paths wherever a name meets one (URLs, files).
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub(crate) fn is_numeric(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Boolean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Field;

    /// Bounded fuzzing of the policy parser: mutations of a valid policy parse or fail with an
    /// error, never a panic.
    #[test]
    fn mutated_policies_parse_or_fail_cleanly() {
        let mut m = veil_abi::mutation::Mutator::new(0xb01c);
        for _ in 0..3000 {
            let bytes = m.mutate(EXAMPLE.as_bytes());
            let _ = Policy::from_toml(&String::from_utf8_lossy(&bytes));
        }
    }

    /// A consumer reads the policy with only its own name in `consumers`; the rest is the
    /// holder's text, and it still parses to the same rules for that consumer.
    #[test]
    fn a_consumer_sees_only_its_own_name() {
        let text = EXAMPLE.replace(
            "consumers = [\"acme\"]",
            "consumers = [\n  \"acme\",\n  \"rival-co\", # since May\n] # two buyers",
        );
        let full = Policy::from_toml(&text).unwrap();
        let shown = consumer_view_of_text(&text, "acme");
        assert!(!shown.contains("rival-co"), "{shown}");
        assert!(!shown.contains("since May"), "{shown}");
        assert!(shown.contains("consumers = [\"acme\"]"), "{shown}");
        let seen = Policy::from_toml(&shown).unwrap();
        assert_eq!(seen.consumers, ["acme"]);
        assert_eq!(
            seen.columns, full.columns,
            "every other rule as the holder wrote it"
        );
        assert_eq!(seen.epsilon_per_job, full.epsilon_per_job);
        let tail = |t: &str| t[t.find("approval").unwrap()..].to_owned();
        assert_eq!(tail(&shown), tail(&text), "the rest byte for byte");
        let broken = consumer_view_of_text("consumers = [\"acme\", \"rival-co\"", "acme");
        assert!(!broken.contains("rival-co"), "fails closed: {broken}");
    }

    pub(crate) const EXAMPLE: &str = r#"
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
            Field::new("notes", DataType::Utf8, true),
        ])
    }

    #[test]
    fn parses_and_defaults_to_forbidden() {
        let p = Policy::from_toml(EXAMPLE)
            .unwrap()
            .validate_against(&schema(), None)
            .unwrap();
        assert_eq!(p.epsilon_total, Epsilon(3_000_000));
        assert_eq!(p.column_rule("income").bounds, Some((0.0, 5000.0)));
        assert_eq!(p.column_rule("notes").class, ColumnClass::Forbidden);
        assert!(p.allows_consumer("acme") && !p.allows_consumer("eve"));
    }

    #[test]
    fn errors_name_line_and_field() {
        let three = EXAMPLE.replace("bounds = [0, 5000]", "bounds = [18, 50, 90]");
        let e = Policy::from_toml(&three).unwrap_err().to_string();
        assert!(
            e.contains("columns.income.bounds") && e.contains("exactly two"),
            "{e}"
        );
        assert!(!valid_principal(".") && !valid_principal("..") && valid_principal("a.b"));
        let bad = EXAMPLE.replace("approval = \"auto\"", "approval = \"sometimes\"");
        let e = Policy::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("approval"), "{e}");
        let bad = EXAMPLE.replace("epsilon_per_job = 1.0", "epsilon_per_job = -1.0");
        let e = Policy::from_toml(&bad).unwrap_err().to_string();
        assert!(
            e.contains("line 9") && e.contains("dp.epsilon_per_job"),
            "{e}"
        );
        let bad = EXAMPLE.replace("bounds = [0, 5000]", "bounds = [5000, 0]");
        let e = Policy::from_toml(&bad).unwrap_err().to_string();
        assert!(
            e.contains("line 14") && e.contains("columns.income.bounds"),
            "{e}"
        );
        let bad = EXAMPLE.replace("min_units_per_group", "min_unit_per_group");
        let e = Policy::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("min_unit_per_group"), "{e}");
        let bad = EXAMPLE.replace("[0, 5000] ", "");
        let e = Policy::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn checks_against_schema() {
        let unknown = EXAMPLE.replace("educ =", "education =");
        let e = Policy::from_toml(&unknown)
            .unwrap()
            .validate_against(&schema(), None)
            .unwrap_err();
        assert!(e.to_string().contains("columns.education"), "{e}");
        let unbounded = EXAMPLE.replace(", bounds = [0, 5000]", "");
        let e = Policy::from_toml(&unbounded)
            .unwrap()
            .validate_against(&schema(), None)
            .unwrap_err();
        assert!(e.to_string().contains("needs bounds"), "{e}");
        let e = Policy::from_toml(EXAMPLE)
            .unwrap()
            .validate_against(&schema(), Some("ssn"))
            .unwrap_err();
        assert!(e.to_string().contains("privacy unit"), "{e}");
    }

    #[test]
    fn epsilon_display_is_exact() {
        assert_eq!(Epsilon::from_f64(0.25).unwrap().to_string(), "0.25");
        assert_eq!(Epsilon::from_f64(3.0).unwrap().to_string(), "3");
        assert!(Epsilon::from_f64(f64::NAN).is_none());
        assert!(Epsilon::from_f64(0.0).is_none());
    }
}
