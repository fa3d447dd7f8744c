//! The sandbox stage and the gate: raw rows in, a noisy release (or a coded failure) out.
//!
//! Trusted code here reads only the columns the plan allows, groups rows by privacy unit, clamps
//! numeric inputs to the policy's bounds, and runs the module once per unit in a fresh instance on
//! several threads. Each thread owns a [`Bounder`], so the gate's bounding happens as units finish;
//! DataFusion then aggregates the workers' batches together.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt32Array,
};
use datafusion::arrow::compute::kernels::cmp::neq;
use datafusion::arrow::compute::{
    cast, concat_batches, filter_record_batch, is_not_null, sort_to_indices, take_record_batch,
};
use datafusion::arrow::datatypes::DataType;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use veil_abi::{ColumnType, UnitEncoder};

use crate::JobCode;
use veil_catalog::DatasetRecord;
use veil_policy::gate::{self, Bounder};
use veil_policy::mechanisms::{SampleAggregate, assign_blocks};
use veil_policy::{DeliveredType, JobPlan, Release};
use veil_sandbox::CompiledModule;

use crate::Veil;

pub(crate) struct RunRequest<'a> {
    pub plan: JobPlan,
    pub record: &'a DatasetRecord,
    pub wasm: &'a [u8],
    /// The public tables a SQL job joins (none for a module job).
    pub lookups: &'a [veil_policy::sql::Lookup],
    /// A linked SQL job's linked dataset.
    pub partner: Option<&'a crate::links::LinkedPartner>,
    /// Fuel each unit gets, fixed by the job's schedule before the run.
    pub fuel_per_unit: u64,
}

pub(crate) struct RunOutput {
    pub release: Release,
    pub units: u64,
    pub unit_faults: u64,
    pub holder_log: Vec<String>,
}

/// A run that released nothing, for a reason that has nothing to do with the data or with what the
/// module did on it (the module could not be loaded, the stored data could not be read, the
/// aggregation failed). Module faults never end a run: a faulting unit contributes nothing.
pub(crate) struct ExecutionFailure {
    pub code: JobCode,
    pub public_reason: String,
    pub holder_log: Vec<String>,
    pub units: u64,
    pub unit_faults: u64,
}

fn failure(code: JobCode, public_reason: &str, holder_log: Vec<String>) -> ExecutionFailure {
    ExecutionFailure {
        code,
        public_reason: public_reason.into(),
        holder_log,
        units: 0,
        unit_faults: 0,
    }
}

/// The CSPRNG every random choice of a run draws from (row subsets, blocks, noise): ChaCha20
/// seeded from the OS.
///
/// Test-only hook: in a debug build, `VEIL_INSECURE_TEST_NOISE_SEED=<u64>` seeds it instead, so
/// the noninterference test can run a session twice with the same noise. The code does not exist
/// in release builds (`debug_assertions` off), so no configuration can enable it there.
pub(crate) fn noise_rng() -> ChaCha20Rng {
    #[cfg(debug_assertions)]
    if let Some(seed) = std::env::var("VEIL_INSECURE_TEST_NOISE_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        return ChaCha20Rng::seed_from_u64(seed);
    }
    ChaCha20Rng::from_os_rng()
}

/// Log lines kept per worker, so a hostile module cannot fill the store through faults.
const MAX_LOG_LINES_PER_WORKER: usize = 50;
/// Units handed to a worker at a time.
const CHUNK: usize = 256;

/// A delivered column, cast once to the type the module receives, with the policy's clamp.
enum Column {
    Int(Int64Array, Option<(i64, i64)>),
    Float(Float64Array, Option<(f64, f64)>),
    Text(StringArray),
    Bool(BooleanArray),
}

impl Column {
    fn is_null(&self, row: usize) -> bool {
        match self {
            Column::Int(a, _) => a.is_null(row),
            Column::Float(a, _) => a.is_null(row),
            Column::Text(a) => a.is_null(row),
            Column::Bool(a) => a.is_null(row),
        }
    }

    fn encode(&self, row: usize, enc: &mut UnitEncoder) {
        if self.is_null(row) {
            enc.push_null();
            return;
        }
        match self {
            Column::Int(a, clamp) => {
                let v = a.value(row);
                enc.push_int(clamp.map_or(v, |(lo, hi)| v.clamp(lo, hi)));
            }
            Column::Float(a, clamp) => {
                let v = a.value(row);
                // NaN in the raw data becomes null rather than passing through the clamp unchanged.
                if v.is_nan() {
                    enc.push_null();
                } else {
                    enc.push_float(clamp.map_or(v, |(lo, hi)| v.clamp(lo, hi)));
                }
            }
            Column::Text(a) => enc.push_text(a.value(row)),
            Column::Bool(a) => enc.push_bool(a.value(row)),
        }
    }
}

fn prepare_column(
    array: &ArrayRef,
    ty: DeliveredType,
    clamp: Option<(f64, f64)>,
) -> Result<Column, String> {
    let err = |e: datafusion::arrow::error::ArrowError| e.to_string();
    Ok(match ty {
        DeliveredType::Int => {
            let a = cast(array, &DataType::Int64).map_err(err)?;
            let clamp = clamp.map(|(lo, hi)| (lo.ceil() as i64, hi.floor() as i64));
            Column::Int(
                a.as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("cast to Int64")
                    .clone(),
                clamp,
            )
        }
        DeliveredType::Float => {
            let a = cast(array, &DataType::Float64).map_err(err)?;
            Column::Float(
                a.as_any()
                    .downcast_ref::<Float64Array>()
                    .expect("cast to Float64")
                    .clone(),
                clamp,
            )
        }
        DeliveredType::Text => {
            let a = cast(array, &DataType::Utf8).map_err(err)?;
            Column::Text(
                a.as_any()
                    .downcast_ref::<StringArray>()
                    .expect("cast to Utf8")
                    .clone(),
            )
        }
        DeliveredType::Bool => {
            let a = cast(array, &DataType::Boolean).map_err(err)?;
            Column::Bool(
                a.as_any()
                    .downcast_ref::<BooleanArray>()
                    .expect("cast to Boolean")
                    .clone(),
            )
        }
    })
}

fn abi_type(t: DeliveredType) -> ColumnType {
    match t {
        DeliveredType::Int => ColumnType::Int,
        DeliveredType::Float => ColumnType::Float,
        DeliveredType::Text => ColumnType::Text,
        DeliveredType::Bool => ColumnType::Bool,
    }
}

/// The allowed columns sorted by privacy unit, with the `[start, end)` row range of each unit.
struct GroupedByUnit {
    batch: RecordBatch,
    ranges: Vec<(usize, usize)>,
    /// Rows dropped because their privacy unit is null (they belong to nobody we can bound).
    null_unit_rows: usize,
}

/// Groups rows by privacy unit; without a unit column every row is its own unit.
fn units_of(batch: RecordBatch, has_unit: bool) -> Result<GroupedByUnit, String> {
    let err = |e: datafusion::arrow::error::ArrowError| e.to_string();
    if !has_unit {
        let n = batch.num_rows();
        return Ok(GroupedByUnit {
            batch,
            ranges: (0..n).map(|i| (i, i + 1)).collect(),
            null_unit_rows: 0,
        });
    }
    let before = batch.num_rows();
    let mask = is_not_null(batch.column(0)).map_err(err)?;
    let batch = filter_record_batch(&batch, &mask).map_err(err)?;
    let dropped = before - batch.num_rows();
    let order = sort_to_indices(batch.column(0), None, None).map_err(err)?;
    let batch = take_record_batch(&batch, &order).map_err(err)?;
    let n = batch.num_rows();
    let mut ranges = Vec::new();
    if n > 0 {
        let unit = batch.column(0);
        let changed = neq(&unit.slice(1, n - 1), &unit.slice(0, n - 1)).map_err(err)?;
        let mut start = 0;
        for i in 0..n - 1 {
            if changed.value(i) {
                ranges.push((start, i + 1));
                start = i + 1;
            }
        }
        ranges.push((start, n));
    }
    Ok(GroupedByUnit {
        batch,
        ranges,
        null_unit_rows: dropped,
    })
}

/// Keeps at most `max` rows of each unit, chosen uniformly at random with a CSPRNG (in the dataset's
/// order within the unit), so that no unit's input — and the module's work on it — is unbounded.
/// Returns the grouping and how many units were capped.
fn cap_rows_per_unit(grouped: GroupedByUnit, max: usize) -> Result<(GroupedByUnit, usize), String> {
    let max = max.max(1);
    if grouped.ranges.iter().all(|(lo, hi)| hi - lo <= max) {
        return Ok((grouped, 0));
    }
    let mut rng = noise_rng();
    let mut indices: Vec<u32> = Vec::with_capacity(grouped.batch.num_rows());
    let mut ranges = Vec::with_capacity(grouped.ranges.len());
    let mut capped = 0;
    for &(lo, hi) in &grouped.ranges {
        let start = indices.len();
        if hi - lo > max {
            capped += 1;
            let mut chosen: Vec<usize> = rand::seq::index::sample(&mut rng, hi - lo, max)
                .into_iter()
                .collect();
            chosen.sort_unstable();
            indices.extend(chosen.into_iter().map(|i| (lo + i) as u32));
        } else {
            indices.extend((lo..hi).map(|i| i as u32));
        }
        ranges.push((start, indices.len()));
    }
    let batch = take_record_batch(&grouped.batch, &UInt32Array::from(indices))
        .map_err(|e| e.to_string())?;
    Ok((
        GroupedByUnit {
            batch,
            ranges,
            null_unit_rows: grouped.null_unit_rows,
        },
        capped,
    ))
}

impl Veil {
    /// Runs a started job's module over its units (or blocks) and passes the output through the
    /// gate: the release, or a failure that has nothing to do with what the module did.
    pub(crate) fn execute(&mut self, req: RunRequest<'_>) -> Result<RunOutput, ExecutionFailure> {
        if req.plan.sql.is_some() {
            return self.execute_sql(&req.plan, req.record, req.lookups, req.partner);
        }
        let Some(partner) = req.plan.join.as_ref().map(|j| j.partner.clone()) else {
            return self.execute_module(req);
        };
        // A module over a link sees both holders' rows: what it logs, and the counters that
        // describe the joined data (how many people the two share), are for neither holder.
        let withheld = vec![format!(
            "linked with `{partner}`: the module's log and the counters are withheld, since \
             they describe both holders' data"
        )];
        match self.execute_module(req) {
            Ok(run) => Ok(RunOutput {
                holder_log: withheld,
                ..run
            }),
            Err(failure) => Err(ExecutionFailure {
                holder_log: withheld,
                ..failure
            }),
        }
    }

    /// [`Veil::execute`] of a module job: the per-unit (or per-block) run and the gate.
    fn execute_module(&mut self, req: RunRequest<'_>) -> Result<RunOutput, ExecutionFailure> {
        let workers = self.config.workers;
        let fuel = req.fuel_per_unit;
        let module = self.load_module(req.wasm)?;
        let plan = Arc::new(req.plan);
        let Prepared {
            columns,
            ranges,
            notes: prep_notes,
        } = self.prepare_units(&plan, req.record, req.partner)?;
        let joined_names: Vec<String> = plan
            .join
            .iter()
            .flat_map(|j| &j.columns)
            .map(|c| format!("{}{}", veil_policy::manifest::JOINED_PREFIX, c.name))
            .collect();
        let abi_columns: Vec<(&str, ColumnType)> = plan
            .columns
            .iter()
            .map(|c| (c.name.as_str(), abi_type(c.ty)))
            .chain(
                plan.join
                    .iter()
                    .flat_map(|j| &j.columns)
                    .zip(&joined_names)
                    .map(|(c, name)| (name.as_str(), abi_type(c.ty))),
            )
            .collect();

        if let Some(sample_aggregate) = SampleAggregate::for_plan(&plan) {
            let run = BlockRun {
                module: &module,
                columns: &columns,
                ranges: &ranges,
                abi_columns: &abi_columns,
                workers,
                fuel,
            };
            return run.release(&sample_aggregate, prep_notes);
        }
        if module.is_component() {
            // Submission refuses this; a policy change cannot make it reachable, but stay safe.
            return Err(failure(
                JobCode::ModuleRejected,
                "the module was rejected",
                vec!["components run in block mode only".into()],
            ));
        }
        let faults = AtomicU64::new(0);
        let results = map_units(
            &plan,
            &module,
            &columns,
            &ranges,
            &abi_columns,
            &faults,
            workers,
            fuel,
        );
        let unit_faults = faults.load(Ordering::Relaxed);
        self.release_through_gate(&plan, results, prep_notes, ranges.len() as u64, unit_faults)
    }

    /// Runs a SQL job: reads the unit column and the columns the query names (checking the
    /// content hash) and releases the query through the gate (`veil_policy::sql`).
    fn execute_sql(
        &self,
        plan: &JobPlan,
        record: &DatasetRecord,
        lookups: &[veil_policy::sql::Lookup],
        partner: Option<&crate::links::LinkedPartner>,
    ) -> Result<RunOutput, ExecutionFailure> {
        let sql = plan.sql.as_ref().expect("checked by the caller");
        let internal =
            |m: String| failure(JobCode::Internal, "the data could not be prepared", vec![m]);
        let mut names: Vec<String> = plan.privacy_unit.iter().cloned().collect();
        names.extend(plan.columns.iter().map(|c| c.name.clone()));
        let table = self
            .queried_table(record, &names, plan.privacy_unit.is_none())
            .map_err(internal)?;
        let partners = match (partner, &sql.link) {
            (Some(p), Some(link)) => {
                let mut names = vec![link.partner_key.clone()];
                names.extend(link.partner_columns.iter().cloned());
                let table = self
                    .queried_table(&p.record, &names, false)
                    .map_err(internal)?;
                vec![veil_policy::sql::Partner {
                    table,
                    ..p.partner.clone()
                }]
            }
            _ => Vec::new(),
        };
        let readable = veil_policy::sql::Tables {
            lookups,
            partners: &partners,
        };
        let mut rng = noise_rng();
        let (release, stats) = self
            .block_on(veil_policy::sql::release(plan, table, &readable, &mut rng))
            .map_err(|e| failure(JobCode::Internal, "aggregation failed", vec![e.to_string()]))?;
        let mut holder_log = vec![format!("sql: {}", sql.text)];
        match &sql.link {
            // The counters of a linked job describe both holders' data (how many people the two
            // share): no holder may read them.
            Some(link) => holder_log.push(format!(
                "linked with `{}` ({:?} coverage): the gate's counters are withheld, since they \
                 describe both holders' data",
                link.partner, link.coverage
            )),
            None => holder_log.push(gate_summary(&stats)),
        }
        Ok(RunOutput {
            release,
            units: stats.units,
            unit_faults: 0,
            holder_log,
        })
    }

    /// The columns `names` of `record` as a SQL job reads them (checking the content hash), in
    /// memory; with `row_unit`, the per-row unit appended.
    fn queried_table(
        &self,
        record: &DatasetRecord,
        names: &[String],
        row_unit: bool,
    ) -> Result<Arc<dyn datafusion::catalog::TableProvider>, String> {
        let batches = self
            .block_on(veil_catalog::read_columns(&self.data_dir, record, names))
            .map_err(|e| e.to_string())?;
        let batches = as_queried(batches, row_unit)?;
        let Some(schema) = batches.first().map(|b| b.schema()) else {
            return Err("dataset has no batches".into());
        };
        let table = datafusion::datasource::MemTable::try_new(schema, spread_over_cores(batches))
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(table))
    }

    /// The job's module, compiled (from the cache when it was compiled before).
    fn load_module(&self, wasm: &[u8]) -> Result<Arc<CompiledModule>, ExecutionFailure> {
        let module = match self.sandbox() {
            Ok(s) => s.compile(wasm).map_err(|e| {
                failure(
                    JobCode::ModuleRejected,
                    "the module was rejected",
                    vec![e.to_string()],
                )
            })?,
            Err(e) => {
                return Err(failure(
                    JobCode::Internal,
                    "the sandbox could not start",
                    vec![e.to_string()],
                ));
            }
        };
        Ok(module)
    }

    /// The unit column and `columns` of `record` in one batch (checking the content hash).
    fn read_batch(
        &self,
        record: &veil_catalog::DatasetRecord,
        unit: Option<&String>,
        columns: &[veil_policy::DeliveredColumn],
    ) -> Result<RecordBatch, String> {
        let mut names: Vec<String> = unit.into_iter().cloned().collect();
        names.extend(columns.iter().map(|c| c.name.clone()));
        let batches = self
            .block_on(veil_catalog::read_columns(&self.data_dir, record, &names))
            .map_err(|e| e.to_string())?;
        let Some(first) = batches.first() else {
            return Err("dataset has no batches".into());
        };
        concat_batches(&first.schema(), &batches).map_err(|e| e.to_string())
    }

    /// Reads the delivered columns (checking the content hash) — for a job over a link, both
    /// datasets' rows of each person ([`crate::linked_rows`]) — groups rows by privacy unit,
    /// drops rows without a unit, caps each unit's rows and casts and clamps each column.
    fn prepare_units(
        &self,
        plan: &JobPlan,
        record: &veil_catalog::DatasetRecord,
        partner: Option<&crate::links::LinkedPartner>,
    ) -> Result<Prepared, ExecutionFailure> {
        let internal =
            |m: String| failure(JobCode::Internal, "the data could not be prepared", vec![m]);
        let (batch, delivered): (RecordBatch, Vec<&veil_policy::DeliveredColumn>) =
            match (&plan.join, partner) {
                (Some(join), Some(p)) => {
                    let ours = self
                        .read_batch(record, Some(&join.key), &plan.columns)
                        .map_err(internal)?;
                    let theirs = self
                        .read_batch(&p.record, Some(&join.partner_key), &join.columns)
                        .map_err(internal)?;
                    let batch = crate::linked_rows::joined_rows(&ours, &theirs, join.coverage)
                        .map_err(internal)?;
                    (batch, plan.columns.iter().chain(&join.columns).collect())
                }
                _ => (
                    self.read_batch(record, plan.privacy_unit.as_ref(), &plan.columns)
                        .map_err(internal)?,
                    plan.columns.iter().collect(),
                ),
            };
        let has_unit = plan.privacy_unit.is_some() || plan.join.is_some();
        let grouped = units_of(batch, has_unit).map_err(internal)?;
        // Holder-only notes about the data's preparation (they describe the data).
        let mut prep_notes = Vec::new();
        if grouped.null_unit_rows > 0 {
            prep_notes.push(format!(
                "{} rows with a null privacy unit were not used",
                grouped.null_unit_rows
            ));
        }
        let (GroupedByUnit { batch, ranges, .. }, capped) =
            cap_rows_per_unit(grouped, plan.max_rows_per_unit as usize).map_err(internal)?;
        if capped > 0 {
            prep_notes.push(format!(
                "{capped} units had more than {} rows; that many of each, chosen at random, were used",
                plan.max_rows_per_unit
            ));
        }
        let offset = usize::from(has_unit);
        let columns: Vec<Column> = delivered
            .into_iter()
            .enumerate()
            .map(|(i, c)| prepare_column(batch.column(i + offset), c.ty, c.clamp))
            .collect::<Result<_, _>>()
            .map_err(internal)?;
        Ok(Prepared {
            columns,
            ranges,
            notes: prep_notes,
        })
    }

    /// Merges the workers' bounders and logs and releases through the gate with fresh noise.
    fn release_through_gate(
        &self,
        plan: &JobPlan,
        results: Vec<WorkerResult>,
        prep_notes: Vec<String>,
        units: u64,
        unit_faults: u64,
    ) -> Result<RunOutput, ExecutionFailure> {
        let mut holder_log = Vec::new();
        let mut by_code: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut bounders = Vec::new();
        for (b, log, codes) in results {
            bounders.push(b);
            holder_log.extend(log);
            for (k, v) in codes {
                *by_code.entry(k).or_default() += v;
            }
        }
        holder_log.extend(prep_notes.iter().cloned());
        if !by_code.is_empty() {
            holder_log.push(format!("unit faults by kind: {by_code:?}"));
        }
        let mut rng = noise_rng();
        let (release, stats) = self
            .block_on(gate::release(plan, bounders, &mut rng))
            .map_err(|e| ExecutionFailure {
                code: JobCode::Internal,
                public_reason: "aggregation failed".into(),
                holder_log: vec![e.to_string()],
                units,
                unit_faults,
            })?;
        holder_log.push(gate_summary(&stats));
        Ok(RunOutput {
            release,
            units,
            unit_faults,
            holder_log,
        })
    }
}

/// The holder log's line of bounding counters (they describe the data: holder only).
fn gate_summary(stats: &veil_policy::BoundingStats) -> String {
    format!(
        "gate: {} units, {} contributions, {} malformed dropped, {} over the group limit \
         dropped, {} outside the public partitions dropped, {} values clamped",
        stats.units,
        stats.contributions,
        stats.malformed_dropped,
        stats.over_group_limit_dropped,
        stats.outside_partitions_dropped,
        stats.values_clamped
    )
}

/// The batches as a SQL job's query reads them: each column cast to its queried type
/// (`veil_policy::sql::as_queried`: DECIMAL as DOUBLE) and, with `row_unit`, the per-row unit
/// column (`veil_policy::sql::ROW_UNIT`) appended, so that a dataset without a privacy unit counts
/// each row as one unit. The row count survives even when the query names no column.
pub(crate) fn as_queried(
    batches: Vec<RecordBatch>,
    row_unit: bool,
) -> Result<Vec<RecordBatch>, String> {
    use datafusion::arrow::array::{RecordBatchOptions, UInt64Array};
    use datafusion::arrow::datatypes::{Field, Schema};
    let mut next: u64 = 0;
    batches
        .into_iter()
        .map(|b| {
            let mut fields: Vec<Field> = b
                .schema()
                .fields()
                .iter()
                .map(|f| veil_policy::sql::queried_field(f))
                .collect();
            let mut columns = b
                .columns()
                .iter()
                .zip(&fields)
                .map(|(c, f)| cast(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let n = b.num_rows() as u64;
            if row_unit {
                fields.push(Field::new(
                    veil_policy::sql::ROW_UNIT,
                    DataType::UInt64,
                    false,
                ));
                columns.push(Arc::new(UInt64Array::from_iter_values(next..next + n)));
                next += n;
            }
            let options = RecordBatchOptions::new().with_row_count(Some(n as usize));
            RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// What one worker thread of the per-unit map returns: its bounder, its holder-log lines and
/// its fault counts by kind.
type WorkerResult = (Bounder, Vec<String>, BTreeMap<&'static str, u64>);

/// A job's units, ready for the sandbox.
struct Prepared {
    columns: Vec<Column>,
    /// Each unit's rows, as a range of the prepared columns.
    ranges: Vec<(usize, usize)>,
    /// Holder-only notes about the preparation (they describe the data).
    notes: Vec<String>,
}

/// Runs the module once per unit on `workers` threads, each taking units in chunks; counts the
/// faulting units in `faults`.
#[allow(clippy::too_many_arguments)] // the run's pieces, borrowed for the scoped threads
fn map_units(
    plan: &Arc<JobPlan>,
    module: &CompiledModule,
    columns: &[Column],
    ranges: &[(usize, usize)],
    abi_columns: &[(&str, ColumnType)],
    faults: &AtomicU64,
    workers: usize,
    fuel: u64,
) -> Vec<WorkerResult> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (plan, module, columns, ranges) = (plan.clone(), module, columns, ranges);
                let (next, faults, abi_columns) = (&next, faults, abi_columns);
                scope.spawn(move || {
                    run_worker(
                        WorkerCtx {
                            plan,
                            module,
                            columns,
                            ranges,
                            next,
                            faults,
                            fuel,
                        },
                        abi_columns,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect()
    })
}

struct WorkerCtx<'a> {
    plan: Arc<JobPlan>,
    module: &'a CompiledModule,
    columns: &'a [Column],
    ranges: &'a [(usize, usize)],
    next: &'a AtomicUsize,
    faults: &'a AtomicU64,
    fuel: u64,
}

/// Runs units until none are left. A fault (trap, fuel, deadline, bad output) makes the unit
/// contribute nothing and never stops the run: whether and when a job releases must not depend on
/// what the module did with anyone's data.
fn run_worker(
    ctx: WorkerCtx<'_>,
    abi_columns: &[(&str, ColumnType)],
) -> (Bounder, Vec<String>, BTreeMap<&'static str, u64>) {
    let mut bounder = Bounder::new(ctx.plan.clone());
    let mut enc = UnitEncoder::new(abi_columns);
    let mut runner = ctx.module.runner_with_fuel(ctx.fuel);
    let mut log = Vec::new();
    let mut codes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let note = |line: String, log: &mut Vec<String>| {
        if log.len() < MAX_LOG_LINES_PER_WORKER {
            log.push(line);
        }
    };
    loop {
        let chunk = ctx.next.fetch_add(1, Ordering::Relaxed);
        let start = chunk * CHUNK;
        if start >= ctx.ranges.len() {
            break;
        }
        for (unit_id, &(lo, hi)) in ctx.ranges.iter().enumerate().skip(start).take(CHUNK) {
            enc.reset();
            for row in lo..hi {
                enc.begin_row();
                for c in ctx.columns {
                    c.encode(row, &mut enc);
                }
            }
            let outcome = runner.run_unit(enc.finish());
            if !outcome.log.is_empty() {
                note(
                    format!("unit {unit_id}: module log: {}", outcome.log.trim_end()),
                    &mut log,
                );
            }
            match outcome.result {
                Ok(contributions) => bounder.add_unit(unit_id as u64, contributions),
                Err(fault) => {
                    // The unit contributes nothing (the default output); the holder sees why.
                    bounder.add_unit(unit_id as u64, Vec::new());
                    *codes.entry(fault.code()).or_default() += 1;
                    note(
                        format!("unit {unit_id}: {}: {}", fault.code(), fault.detail()),
                        &mut log,
                    );
                    ctx.faults.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    (bounder, log, codes)
}

/// What one block worker produced: (block index, the block's values if usable) and holder log lines.
type BlockWorkerOutput = (Vec<(usize, Option<Vec<f64>>)>, Vec<String>);

/// Sample-and-aggregate: one run per block of randomly assigned units (see
/// [`veil_policy::mechanisms::SampleAggregate`]). A faulting block counts as the midpoint of each
/// value's range and never stops the job, so failures say nothing to the consumer. Each block
/// gets its units' fuel, so its time is bounded by its size as the schedule assumes.
struct BlockRun<'a> {
    module: &'a CompiledModule,
    columns: &'a [Column],
    ranges: &'a [(usize, usize)],
    abi_columns: &'a [(&'a str, ColumnType)],
    workers: usize,
    fuel: u64,
}

impl BlockRun<'_> {
    fn release(
        &self,
        mechanism: &SampleAggregate<'_>,
        prep_notes: Vec<String>,
    ) -> Result<RunOutput, ExecutionFailure> {
        let mut rng = noise_rng();
        let blocks = assign_blocks(self.ranges.len(), mechanism.blocks(), &mut rng);
        let next = AtomicUsize::new(0);
        let results: Vec<BlockWorkerOutput> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..self.workers)
                .map(|_| {
                    let (next, blocks) = (&next, &blocks);
                    scope.spawn(move || self.worker(blocks, next))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("worker panicked"))
                .collect()
        });
        let mut outputs = vec![None; blocks.len()];
        let mut holder_log = Vec::new();
        for (done, log) in results {
            for (b, out) in done {
                outputs[b] = out;
            }
            holder_log.extend(log);
        }
        let faults = outputs.iter().filter(|o| o.is_none()).count() as u64;
        let units = self.ranges.len() as u64;
        let sizes = blocks.iter().map(Vec::len);
        holder_log.push(format!(
            "sample-and-aggregate: {} units in {} blocks ({}–{} units each); {faults} blocks counted as the midpoint",
            units,
            blocks.len(),
            sizes.clone().min().unwrap_or(0),
            sizes.max().unwrap_or(0),
        ));
        holder_log.extend(prep_notes.iter().cloned());
        Ok(RunOutput {
            release: mechanism.release(&outputs, &mut rng),
            units,
            unit_faults: faults,
            holder_log,
        })
    }

    fn worker(&self, blocks: &[Vec<usize>], next: &AtomicUsize) -> BlockWorkerOutput {
        let mut runner = self.module.runner_with_fuel(self.fuel);
        let mut enc = UnitEncoder::new(self.abi_columns);
        let (mut done, mut log) = (Vec::new(), Vec::new());
        loop {
            let b = next.fetch_add(1, Ordering::Relaxed);
            if b >= blocks.len() {
                break;
            }
            enc.reset();
            for &unit in &blocks[b] {
                let (lo, hi) = self.ranges[unit];
                for row in lo..hi {
                    enc.begin_row();
                    for c in self.columns {
                        c.encode(row, &mut enc);
                    }
                }
            }
            let weight = u32::try_from(blocks[b].len()).unwrap_or(u32::MAX);
            let outcome = runner.run_block(enc.finish(), weight);
            let keep = log.len() < MAX_LOG_LINES_PER_WORKER;
            if keep && !outcome.log.is_empty() {
                log.push(format!("block {b}: module log: {}", outcome.log.trim_end()));
            }
            let output = match outcome.result {
                Ok(mut contributions)
                    if contributions.len() == 1 && contributions[0].key.is_empty() =>
                {
                    Some(contributions.pop().expect("one").values)
                }
                Ok(contributions) => {
                    if keep {
                        log.push(format!(
                            "block {b}: expected one contribution without a key, got {}",
                            contributions.len()
                        ));
                    }
                    None
                }
                Err(fault) => {
                    if keep {
                        log.push(format!("block {b}: {}: {}", fault.code(), fault.detail()));
                    }
                    None
                }
            };
            done.push((b, output));
        }
        (done, log)
    }
}

/// `batches` dealt round-robin into one partition per core: DataFusion scans a memory table's
/// partitions in parallel but never splits one, so a single partition ran a SQL job on one core
/// (about twice as slow on 2 cores, `benches/sql.rs`).
fn spread_over_cores(batches: Vec<RecordBatch>) -> Vec<Vec<RecordBatch>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut partitions = vec![Vec::new(); cores.min(batches.len()).max(1)];
    let n = partitions.len();
    for (i, batch) in batches.into_iter().enumerate() {
        partitions[i % n].push(batch);
    }
    partitions
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::UInt64Array;
    use datafusion::arrow::datatypes::{Field, Schema};

    fn grouped(unit_rows: &[usize]) -> GroupedByUnit {
        let mut units = Vec::new();
        let mut ranges = Vec::new();
        for (u, &n) in unit_rows.iter().enumerate() {
            ranges.push((units.len(), units.len() + n));
            units.extend(std::iter::repeat_n(u as u64, n));
        }
        let rows: Vec<u64> = (0..units.len() as u64).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("unit", DataType::UInt64, false),
            Field::new("row", DataType::UInt64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(UInt64Array::from(units)),
                Arc::new(UInt64Array::from(rows)),
            ],
        )
        .unwrap();
        GroupedByUnit {
            batch,
            ranges,
            null_unit_rows: 0,
        }
    }

    #[test]
    fn caps_each_unit_to_a_random_subset_of_its_rows() {
        let (g, capped) = cap_rows_per_unit(grouped(&[2, 50, 3, 1000]), 3).unwrap();
        assert_eq!(capped, 2);
        let lens: Vec<usize> = g.ranges.iter().map(|(lo, hi)| hi - lo).collect();
        assert_eq!(lens, [2, 3, 3, 3]);
        let units = g
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        let rows = g
            .batch
            .column(1)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        for (u, &(lo, hi)) in g.ranges.iter().enumerate() {
            // Every kept row belongs to its unit, in the dataset's order.
            assert!((lo..hi).all(|i| units.value(i) == u as u64));
            assert!((lo + 1..hi).all(|i| rows.value(i) > rows.value(i - 1)));
        }
        // Random, not the first rows: over many draws of the 1000-row unit, kept rows spread out.
        let mut seen_late = false;
        for _ in 0..20 {
            let (g, _) = cap_rows_per_unit(grouped(&[1000]), 3).unwrap();
            let rows = g
                .batch
                .column(1)
                .as_any()
                .downcast_ref::<UInt64Array>()
                .unwrap();
            seen_late |= rows.values().iter().any(|&r| r >= 500);
        }
        assert!(seen_late);
        // Under the cap, nothing changes.
        let (g, capped) = cap_rows_per_unit(grouped(&[1, 2]), 3).unwrap();
        assert_eq!((capped, g.ranges), (0, vec![(0, 1), (1, 3)]));
    }
}
