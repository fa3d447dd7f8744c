//! A job's predictable schedule: when its outcome becomes visible and how much fuel each privacy
//! unit gets, fixed before any module code runs and computed from public values only.
//!
//! Guarantee (Haeberlen, Pierce, Narayan, "Differential Privacy Under Fire", USENIX Security 2011,
//! §5 "predictable transactions"): what the consumer observes of a job's timing is a function of
//! the manifest, the policy and the operator's cost model — never of the rows or of what the module
//! did with them. The release is committed at `start + duration`, faster runs wait; every unit gets
//! the same fuel, and a unit that runs out contributes nothing.
//!
//! Why the duration suffices: the run takes at most `units × (overhead + fuel × time_per_fuel)` on
//! `threads` threads when fuel bounds a unit's time (host calls and memory growth are charged
//! against fuel by the sandbox). The schedule reserves that time for the policy's public bound on
//! the number of units (`max_units`), never for the dataset's actual count, which is secret.
use std::time::Duration;

use crate::error::{Location, PolicyError, Result};

/// Fewest fuel units a schedule may give each privacy unit: below it even a trivial module cannot
/// decode its input, so a job would release only noise.
pub const MIN_FUEL_PER_UNIT: u64 = 10_000;
/// Fuel each privacy unit gets when the manifest declares neither a time budget nor fuel.
pub const DEFAULT_FUEL_PER_UNIT: u64 = 100_000;

/// The operator's model of the machine: how long the sandbox may take, at worst, per unit, per
/// block and per unit of fuel. Chosen conservatively: a run slower than the model (an overloaded
/// machine) releases late, which SECURITY.md names as the residual timing channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostModel {
    /// Fixed host work per unit: encoding its rows, a fresh instance, bounding its output.
    pub unit_overhead: Duration,
    /// Fixed host work per block in sample-and-aggregate mode (a fresh component instance).
    pub block_overhead: Duration,
    /// Worst-case time per unit of fuel, in picoseconds, covering instructions, host calls and
    /// the memory growth fuel pays for.
    pub picos_per_fuel: u64,
    /// Threads that run one job's units.
    pub threads: u32,
    /// Most fuel a unit may get, whatever the time budget (the sandbox's cap).
    pub max_fuel_per_unit: u64,
}

/// What a manifest and policy ask of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScheduleRequest {
    /// The manifest's `time_budget_ms`: the time from start to release.
    pub time_budget: Option<Duration>,
    /// The manifest's `fuel_per_unit`, used when no time budget is given.
    pub fuel_per_unit: Option<u64>,
    /// The policy's public bound on the number of privacy units.
    pub max_units: u64,
    /// Blocks in sample-and-aggregate mode.
    pub blocks: Option<u32>,
    /// A SQL job: no module runs, so no fuel; its time is the SQL cost model's
    /// ([`sql_duration`]).
    #[serde(default)]
    pub sql: bool,
    /// The policy's bound on rows per unit (a SQL job's work is per row).
    #[serde(default = "default_rows_per_unit")]
    pub max_rows_per_unit: u32,
    /// The rows of the public tables a SQL job joins (public), each costing a row's time.
    #[serde(default)]
    pub lookup_rows: u64,
}

fn default_rows_per_unit() -> u32 {
    1000
}

/// A SQL job's fixed time: planning, the run's set-up, the gate's noise and its aggregation.
pub const SQL_FIXED: Duration = Duration::from_millis(50);
/// A SQL job's worst-case time per privacy unit (its contributions through the gate's
/// `Bounder`).
pub const SQL_PER_UNIT: Duration = Duration::from_micros(2);
/// A SQL job's worst-case time per row (DataFusion's filter, projection and grouping).
pub const SQL_PER_ROW: Duration = Duration::from_nanos(200);

impl ScheduleRequest {
    /// The request of a job: its manifest's time budget, fuel and blocks, its policy's bound on
    /// units. The one way it is built, at submission (to refuse impossible budgets early) and at
    /// the start (to fix the release time).
    pub fn for_job(manifest: &crate::JobManifest, policy: &crate::Policy) -> Self {
        ScheduleRequest {
            time_budget: manifest.time_budget,
            fuel_per_unit: manifest.fuel_per_unit,
            max_units: policy.max_units,
            blocks: manifest.blocks,
            sql: manifest.sql.is_some(),
            max_rows_per_unit: policy.max_rows_per_unit,
            lookup_rows: 0,
        }
    }
}

impl Default for ScheduleRequest {
    fn default() -> Self {
        ScheduleRequest {
            time_budget: None,
            fuel_per_unit: None,
            max_units: crate::model::DEFAULT_MAX_UNITS,
            blocks: None,
            sql: false,
            max_rows_per_unit: default_rows_per_unit(),
            lookup_rows: 0,
        }
    }
}

/// A job's schedule (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// From start to the moment the outcome is committed and visible.
    pub duration: Duration,
    /// Fuel each privacy unit gets (a block gets its units' sum).
    pub fuel_per_unit: u64,
}

impl CostModel {
    /// Worst-case time of one unit with `fuel`.
    fn unit_time(&self, fuel: u64) -> Duration {
        self.unit_overhead + Duration::from_nanos(fuel.saturating_mul(self.picos_per_fuel) / 1000)
    }

    /// Worst-case time of the fixed work: `units` units' and `blocks` blocks' overhead, spread
    /// over the threads.
    fn fixed_time(&self, units: u64, blocks: u32) -> Duration {
        let total = self
            .unit_overhead
            .saturating_mul(units.min(u32::MAX as u64) as u32)
            + self.block_overhead.saturating_mul(blocks);
        total / self.threads.max(1)
    }
}

/// Computes the schedule of a job. Requires `cost.threads ≥ 1` and `request.max_units ≥ 1`.
///
/// With a time budget, each unit's fuel is what fits: `(budget − fixed) × threads / max_units`
/// worth of fuel, capped by the sandbox; a budget too small for [`MIN_FUEL_PER_UNIT`] is refused
/// with the smallest budget that would do. Without one, the duration follows from the declared
/// (or default) fuel.
pub fn schedule(request: &ScheduleRequest, cost: &CostModel) -> Result<Schedule> {
    if request.sql {
        return Ok(Schedule {
            duration: sql_schedule(request)?,
            fuel_per_unit: 0,
        });
    }
    let units = request.max_units.max(1);
    let blocks = request.blocks.unwrap_or(0);
    let threads = u64::from(cost.threads.max(1));
    let fixed = cost.fixed_time(units, blocks);
    let per_fuel_total = |fuel: u64| {
        // All units' fuel time, spread over the threads, in nanoseconds.
        Duration::from_nanos(
            (u128::from(units) * u128::from(fuel) * u128::from(cost.picos_per_fuel)
                / 1000
                / u128::from(threads))
            .min(u128::from(u64::MAX)) as u64,
        )
    };
    match request.time_budget {
        Some(budget) => {
            let spare = budget.saturating_sub(fixed);
            let fuel = (spare.as_nanos() * 1000 * u128::from(threads)
                / (u128::from(units) * u128::from(cost.picos_per_fuel.max(1))))
            .min(u128::from(cost.max_fuel_per_unit)) as u64;
            if fuel < MIN_FUEL_PER_UNIT {
                let needed = fixed + per_fuel_total(MIN_FUEL_PER_UNIT);
                return Err(budget_too_short(format!(
                    "time_budget_ms = {} is too short for up to {units} privacy units (the \
                     policy's max_units): each would get {fuel} fuel, at least {MIN_FUEL_PER_UNIT} \
                     are needed; set time_budget_ms to at least {}",
                    budget.as_millis(),
                    needed.as_millis() + 1
                )));
            }
            Ok(Schedule {
                duration: budget,
                fuel_per_unit: fuel,
            })
        }
        None => {
            let fuel = request
                .fuel_per_unit
                .unwrap_or(DEFAULT_FUEL_PER_UNIT)
                .min(cost.max_fuel_per_unit);
            // Round up to whole milliseconds: public times are shown to the millisecond.
            let duration = fixed + per_fuel_total(fuel);
            let millis = duration.as_nanos().div_ceil(1_000_000).max(1) as u64;
            Ok(Schedule {
                duration: Duration::from_millis(millis),
                fuel_per_unit: fuel,
            })
        }
    }
}

/// A SQL job's duration from public bounds alone: [`SQL_FIXED`] plus, for the policy's
/// `max_units` units of `max_rows_per_unit` rows each, [`SQL_PER_UNIT`] per unit and
/// [`SQL_PER_ROW`] per row and per row of the public tables it joins, rounded up to whole
/// milliseconds. A manifest's `time_budget_ms` may only lengthen it ([`sql_schedule`]).
pub fn sql_duration(request: &ScheduleRequest) -> Duration {
    let units = u128::from(request.max_units.max(1));
    let rows =
        units * u128::from(request.max_rows_per_unit.max(1)) + u128::from(request.lookup_rows);
    let nanos =
        SQL_FIXED.as_nanos() + units * SQL_PER_UNIT.as_nanos() + rows * SQL_PER_ROW.as_nanos();
    Duration::from_millis(nanos.div_ceil(1_000_000).min(u128::from(u64::MAX)) as u64)
}

/// A SQL job's duration: its `time_budget_ms` when that covers [`sql_duration`], else the bound
/// itself. A shorter budget is refused, naming the one that would do: the run could outlast it
/// and release late by a time that grows with the rows — what a consumer must never observe.
pub fn sql_schedule(request: &ScheduleRequest) -> Result<Duration> {
    let needed = sql_duration(request);
    match request.time_budget {
        Some(budget) if budget < needed => Err(budget_too_short(format!(
            "time_budget_ms = {} is shorter than a SQL job over up to {} privacy units (the \
             policy's max_units) of up to {} rows each may take: set time_budget_ms to at least \
             {}, or leave it out",
            budget.as_millis(),
            request.max_units,
            request.max_rows_per_unit,
            needed.as_millis()
        ))),
        Some(budget) => Ok(budget),
        None => Ok(needed),
    }
}

/// The bad-input error for a manifest's `time_budget_ms` that the schedule cannot honour.
fn budget_too_short(message: String) -> PolicyError {
    PolicyError::Invalid {
        what: "manifest",
        location: Location {
            line: None,
            field: "time_budget_ms".into(),
        },
        message,
    }
}

impl Schedule {
    /// Whether a run of `units` units at `fuel_per_unit` fits the schedule on this cost model;
    /// used by tests and by the operator's overrun metric, never to change an outcome.
    pub fn fits(&self, units: u64, cost: &CostModel) -> bool {
        cost.unit_time(self.fuel_per_unit)
            .saturating_mul(units.min(u32::MAX as u64) as u32)
            / cost.threads.max(1)
            <= self.duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost() -> CostModel {
        CostModel {
            unit_overhead: Duration::from_micros(20),
            block_overhead: Duration::from_millis(10),
            picos_per_fuel: 5_000,
            threads: 2,
            max_fuel_per_unit: 20_000_000,
        }
    }

    fn request(budget_ms: Option<u64>, fuel: Option<u64>, max_units: u64) -> ScheduleRequest {
        ScheduleRequest {
            time_budget: budget_ms.map(Duration::from_millis),
            fuel_per_unit: fuel,
            max_units,
            blocks: None,
            sql: false,
            max_rows_per_unit: 1,
            lookup_rows: 0,
        }
    }

    #[test]
    fn a_sql_job_is_scheduled_from_its_bounds_alone() {
        let mut r = request(None, None, 10_000);
        r.sql = true;
        r.max_rows_per_unit = 10;
        // 50 ms + 10,000 × 2 µs + 100,000 rows × 200 ns = 50 + 20 + 20 ms.
        let s = schedule(&r, &cost()).unwrap();
        assert_eq!(s.duration, Duration::from_millis(90));
        r.time_budget = Some(Duration::from_millis(500));
        assert_eq!(
            schedule(&r, &cost()).unwrap().duration,
            Duration::from_millis(500)
        );
        // A shorter budget would let the run outlast it by a time that depends on the rows.
        r.time_budget = Some(Duration::from_millis(89));
        let text = schedule(&r, &cost()).unwrap_err().to_string();
        assert!(
            text.contains("time_budget_ms = 89") && text.contains("at least 90"),
            "{text}"
        );
    }

    #[test]
    fn a_time_budget_decides_the_fuel_and_the_run_fits() {
        // 256 units, 40 ms on 2 threads: 20 µs fixed each leaves 292.5 µs per unit of fuel time.
        let s = schedule(&request(Some(40), None, 256), &cost()).unwrap();
        assert_eq!(s.duration, Duration::from_millis(40));
        assert_eq!(s.fuel_per_unit, 58_500);
        assert!(s.fits(256, &cost()));
        assert!(!s.fits(300, &cost()));
    }

    #[test]
    fn without_a_budget_the_duration_follows_from_the_fuel() {
        let s = schedule(&request(None, Some(20_000), 1_000), &cost()).unwrap();
        // 1000 × (20 µs + 100 µs) / 2 = 60 ms.
        assert_eq!(s.duration, Duration::from_millis(60));
        assert!(s.fits(1_000, &cost()));
        let d = schedule(&request(None, None, 1_000), &cost()).unwrap();
        assert_eq!(d.fuel_per_unit, DEFAULT_FUEL_PER_UNIT);
    }

    #[test]
    fn a_budget_too_short_names_the_one_that_would_do() {
        let err = schedule(&request(Some(1), None, 100_000), &cost()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("time_budget_ms = 1"), "{text}");
        assert!(text.contains("at least"), "{text}");
        // The suggested budget is accepted.
        let ms: u64 = text
            .rsplit("at least ")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(schedule(&request(Some(ms), None, 100_000), &cost()).is_ok());
    }

    #[test]
    fn the_schedule_depends_on_public_values_only() {
        // Same request, same schedule: nothing else goes in (the type has no other input).
        let a = schedule(&request(Some(25), None, 500), &cost()).unwrap();
        let b = schedule(&request(Some(25), None, 500), &cost()).unwrap();
        assert_eq!(a, b);
    }
}
