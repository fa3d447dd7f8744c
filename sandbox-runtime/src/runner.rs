//! Running compiled modules: a [`UnitRunner`] per thread, a fresh instance per unit, and faults
//! classified by wasmtime's error types.
use super::*;

/// Runs units of one module on the calling thread, each in a fresh instance.
///
/// Instances of consecutive units share a wasmtime `Store` (up to
/// [`SandboxConfigBuilder::units_per_store`] of them), which is only the container that owns
/// instances: each unit's instance has its own linear memory, globals and tables, no export of one
/// instance is ever linked into another, and fuel, deadline and log are reset before each unit.
/// After a fault the store is discarded.
pub struct UnitRunner<'a> {
    module: &'a CompiledModule,
    fuel_per_unit: u64,
    /// `None` for a component.
    shard: Option<&'a ShardModule>,
    store: Option<Store<UnitState>>,
    units_in_store: u32,
}

impl UnitRunner<'_> {
    /// Runs the module on one privacy unit in a fresh instance.
    pub fn run_unit(&mut self, input: &[u8]) -> UnitOutcome {
        self.run_weighted(input, 1)
    }

    /// Runs the module once on the rows of `units` privacy units together (a block in
    /// sample-and-aggregate mode), in a fresh instance, with `units` times a unit's fuel and
    /// deadline. Memory and output limits stay those of one unit.
    pub fn run_block(&mut self, input: &[u8], units: u32) -> UnitOutcome {
        self.run_weighted(input, units)
    }

    fn run_weighted(&mut self, input: &[u8], weight: u32) -> UnitOutcome {
        let module = self.module;
        let Some(shard) = self.shard else {
            return module.run_component(input, self.fuel_per_unit, weight);
        };
        if self.units_in_store >= module.config.units_per_store {
            self.store = None;
        }
        let store = match &mut self.store {
            Some(store) => store,
            None => {
                self.units_in_store = 0;
                self.store.insert(module.new_store(shard))
            }
        };
        self.units_in_store += 1;
        let state = store.data_mut();
        state.log.clear();
        state.log_truncated = false;
        let result = module.run_in(shard, store, input, self.fuel_per_unit, weight);
        let state = store.data_mut();
        let mut log = String::from_utf8_lossy(&state.log).into_owned();
        if state.log_truncated {
            log.push_str("[log truncated]\n");
        }
        if result.is_err() {
            self.store = None;
        }
        UnitOutcome { result, log }
    }
}

/// Which engine shard the current thread uses: assigned round-robin on a thread's first unit and
/// kept, so one thread never contends with another on a shard's pool.
pub(crate) fn thread_shard(shards: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SHARD.with(|s| *s % shards)
}

impl CompiledModule {
    /// SHA-256 of the module bytes.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Runs the module on one privacy unit in a fresh instance. To run many units on one
    /// thread, [`CompiledModule::runner`] is faster.
    pub fn run_unit(&self, input: &[u8]) -> UnitOutcome {
        self.runner().run_unit(input)
    }

    /// The columns the module declares it reads (its [`veil_abi::SECTION_COLUMNS`] section), or
    /// `None` if it declares none (then its lookups cannot be checked before it runs).
    pub fn declared_columns(&self) -> Option<&[String]> {
        self.declared_columns.as_deref()
    }

    /// Whether this is a component (Python and other interpreted guests): block mode only.
    pub fn is_component(&self) -> bool {
        self.component.is_some()
    }

    fn budget(&self, fuel_per_unit: u64, weight: u32) -> (u64, u64) {
        let weight = u64::from(weight.max(1));
        let ticks = (self
            .config
            .unit_deadline
            .as_millis()
            .div_ceil(TICK.as_millis())
            .max(1) as u64)
            .saturating_mul(weight);
        (fuel_per_unit.saturating_mul(weight), ticks)
    }

    fn run_component(&self, input: &[u8], fuel_per_unit: u64, weight: u32) -> UnitOutcome {
        let component = self.component.as_ref().expect("called for components only");
        let (fuel, ticks) = self.budget(fuel_per_unit, weight);
        let (bytes, log) = component.run(&self.config, input, fuel, ticks);
        let result = bytes.and_then(|b| {
            decode_contributions(&b, &self.config.decode_limits)
                .map_err(|e| UnitFault::BadOutput(format!("undecodable output: {e}")))
        });
        UnitOutcome { result, log }
    }

    /// A runner for this thread: runs units one after another, each in a fresh instance, with
    /// the configured [`SandboxConfigBuilder::fuel_per_unit`].
    pub fn runner(&self) -> UnitRunner<'_> {
        self.runner_with_fuel(self.config.fuel_per_unit)
    }

    /// A runner whose units each get `fuel_per_unit` fuel (capped by the configured fuel): the
    /// engine's way, with the fuel its schedule fixed before the run.
    pub fn runner_with_fuel(&self, fuel_per_unit: u64) -> UnitRunner<'_> {
        UnitRunner {
            fuel_per_unit: fuel_per_unit.min(self.config.fuel_per_unit),
            module: self,
            shard: (!self.shards.is_empty()).then(|| &self.shards[thread_shard(self.shards.len())]),
            store: None,
            units_in_store: 0,
        }
    }

    fn new_store(&self, shard: &ShardModule) -> Store<UnitState> {
        // Limits count per store: each instance may have one memory and one table, each capped.
        let limits = UnitLimits {
            memory_cap: self.config.memory_per_instance,
            table_cap: MAX_TABLE_ELEMENTS as usize,
            per_store: self.config.units_per_store as usize,
            growth_left: 0,
            instantiating: false,
        };
        let mut store = Store::new(
            &shard.engine,
            UnitState {
                limits,
                log: Vec::new(),
                log_cap: self.config.max_log_bytes_per_unit,
                log_truncated: false,
            },
        );
        store.limiter(|s| &mut s.limits);
        store
    }

    fn run_in(
        &self,
        shard: &ShardModule,
        store: &mut Store<UnitState>,
        input: &[u8],
        fuel_per_unit: u64,
        weight: u32,
    ) -> Result<Vec<Contribution>, UnitFault> {
        let (fuel, ticks) = self.budget(fuel_per_unit, weight);
        store.set_fuel(fuel).map_err(classify)?;
        store.set_epoch_deadline(ticks);
        let limits = &mut store.data_mut().limits;
        limits.growth_left =
            usize::try_from(fuel.saturating_mul(GROWTH_BYTES_PER_FUEL)).unwrap_or(usize::MAX);
        limits.instantiating = true;
        // A start function runs inside `instantiate`, under the fuel and deadline just set.
        let instance = shard.pre.instantiate(&mut *store);
        store.data_mut().limits.instantiating = false;
        let instance = instance.map_err(classify)?;
        let memory = instance
            .get_module_export(&mut *store, &shard.memory)
            .and_then(|e| e.into_memory())
            .ok_or_else(|| UnitFault::BadOutput("memory export missing".into()))?;
        let func = |export: &ModuleExport, store: &mut Store<UnitState>| {
            instance
                .get_module_export(&mut *store, export)
                .and_then(|e| e.into_func())
                .ok_or_else(|| UnitFault::BadOutput("function export missing".into()))
        };
        let alloc = func(&shard.alloc, store)?
            .typed::<i32, i32>(&*store)
            .map_err(classify)?;
        let map = func(&shard.map, store)?
            .typed::<(i32, i32), i64>(&*store)
            .map_err(classify)?;

        let len = i32::try_from(input.len())
            .map_err(|_| UnitFault::ResourceLimit("unit input too large".into()))?;
        let ptr = alloc.call(&mut *store, len).map_err(classify)?;
        memory
            .write(&mut *store, ptr as u32 as usize, input)
            .map_err(|_| UnitFault::BadOutput(format!("alloc returned {ptr}, outside memory")))?;
        let packed = map.call(&mut *store, (ptr, len)).map_err(classify)?;
        if packed < 0 {
            return Err(UnitFault::Trap(format!("module reported error {packed}")));
        }
        let (out_ptr, out_len) = (
            (packed >> 32) as u32 as usize,
            (packed & 0xffff_ffff) as u32,
        );
        if out_len > self.config.max_output_bytes {
            return Err(UnitFault::BadOutput(format!(
                "output of {out_len} bytes exceeds the {}-byte limit",
                self.config.max_output_bytes
            )));
        }
        let data = memory.data(&*store);
        let bytes = out_ptr
            .checked_add(out_len as usize)
            .and_then(|end| data.get(out_ptr..end))
            .ok_or_else(|| UnitFault::BadOutput("output range lies outside memory".into()))?;
        decode_contributions(bytes, &self.config.decode_limits)
            .map_err(|e| UnitFault::BadOutput(format!("undecodable output: {e}")))
    }
}

/// Maps a wasmtime error to a fault by its type and trap code, never by its message.
pub(crate) fn classify(err: wasmtime::Error) -> UnitFault {
    if let Some(limit) = err.downcast_ref::<LimitExceeded>() {
        return UnitFault::ResourceLimit(limit.to_string());
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => UnitFault::OutOfFuel,
        Some(Trap::Interrupt) => UnitFault::Deadline,
        Some(Trap::StackOverflow) => UnitFault::ResourceLimit("wasm stack exhausted".into()),
        Some(Trap::AllocationTooLarge) => UnitFault::ResourceLimit(format!("{err:#}")),
        Some(t) => UnitFault::Trap(format!("{t}: {err:#}")),
        None => UnitFault::Trap(format!("{err:#}")),
    }
}
