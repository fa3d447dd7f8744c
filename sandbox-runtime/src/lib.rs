//! The Veil sandbox: runs an untrusted map module once per privacy unit, each time in a fresh
//! wasmtime instance, and hands back only decoded, size-checked contributions.
//!
//! ```no_run
//! use veil_sandbox::{Sandbox, SandboxConfig};
//!
//! # fn main() -> Result<(), veil_sandbox::SandboxError> {
//! let sandbox = Sandbox::new(SandboxConfig::builder().fuel_per_unit(5_000_000).build())?;
//! let wasm = std::fs::read("income_by_education.wasm").unwrap();
//! let module = sandbox.compile(&wasm)?; // validates imports/exports and limits, before any run
//! let input: &[u8] = &[]; // one unit's rows, encoded with `veil_abi::UnitEncoder`
//! let outcome = module.run_unit(input);
//! match outcome.result {
//!     Ok(contributions) => println!("{} contributions", contributions.len()),
//!     // Fault details and `outcome.log` are for the data holder only.
//!     Err(fault) => println!("unit failed: {}", fault.code()),
//! }
//! # Ok(()) }
//! ```
//!
//! # Security model
//! The module is hostile. What stops it:
//! - **Imports.** Instantiation goes through a [`wasmtime::Linker`] that defines only
//!   `veil_abi_v1.log`; [`Sandbox::compile`] rejects any other import, and any module without the
//!   version-1 exports, before it runs. There is no WASI: no files, sockets, environment, clocks or
//!   randomness exist for the guest.
//! - **CPU.** Fuel bounds the instructions per unit (deterministic), host calls included
//!   ([`LOG_CALL_FUEL`]); an epoch deadline, advanced by a ticker thread, bounds wall-clock time per
//!   unit, including a start function.
//! - **Memory.** A resource limiter caps linear memory and tables per instance and lets a unit
//!   grow its memory only by what its fuel pays for ([`GROWTH_BYTES_PER_FUEL`]), so fuel bounds the
//!   time spent touching fresh pages too; a pooling allocator caps memory per engine, the wasm
//!   stack is capped, and module size is capped before compilation.
//! - **State.** Every unit gets a new instance from a pre-linked [`wasmtime::InstancePre`]: its own
//!   memory, globals and tables; nothing survives from one person to the next. Consecutive units
//!   of one [`UnitRunner`] share the `Store` that owns their instances, never an instance.
//! - **Output.** The returned pointer/length are bounds-checked against the guest's memory and
//!   decoded by `veil_abi::decode_contributions` under [`SandboxConfig`] limits. NaN is
//!   canonicalised by Cranelift; the gate clamps every value anyway.
//! - **Side paths.** Trap messages and `log` text land in [`UnitOutcome`] for the holder log; the
//!   consumer only ever sees [`UnitFault::code`] summaries decided by the engine.
#![forbid(unsafe_code)]

mod component;
pub use component::{
    COMPONENT_CLOCK_INTERFACE, COMPONENT_EXPORT, COMPONENT_LOG, COMPONENT_SLEEP_IMPORTS,
    HOST_CALL_FUEL,
};
use component::{CompiledComponent, ComponentHost};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use veil_abi::{
    Contribution, DecodeLimits, EXPORT_ALLOC, EXPORT_MAP, EXPORT_PREFIX, IMPORT_LOG, IMPORT_MODULE,
    decode_contributions,
};
use wasmtime::{
    Cache, CacheConfig, Caller, Config, Enabled, Engine, ExternType, InstanceAllocationStrategy,
    InstancePre, Linker, Module, ModuleExport, PoolingAllocationConfig, Store, Trap, ValType,
};

const WASM_PAGE: u64 = 65_536;

/// Errors of the sandbox crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The module is not acceptable; the message is meant for the module's submitter.
    #[error("module rejected: {0}")]
    ModuleRejected(String),
    /// wasmtime could not be configured (a deployment problem, not the module's fault).
    #[error("sandbox configuration error: {0}")]
    Config(String),
}

/// Limits and knobs for running modules. Build with [`SandboxConfig::builder`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    fuel_per_unit: u64,
    unit_deadline: Duration,
    memory_per_instance: usize,
    max_module_bytes: usize,
    max_output_bytes: u32,
    decode_limits: DecodeLimits,
    max_log_bytes_per_unit: usize,
    max_concurrent_instances: u32,
    units_per_store: u32,
    max_wasm_stack: usize,
    engine_shards: usize,
    compiled_cache_entries: usize,
    disk_cache_dir: Option<PathBuf>,
    max_component_bytes: usize,
    component_memory: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            fuel_per_unit: 20_000_000,
            unit_deadline: Duration::from_secs(1),
            memory_per_instance: 32 << 20,
            max_module_bytes: 8 << 20,
            max_output_bytes: 1 << 20,
            decode_limits: DecodeLimits {
                max_contributions: 1024,
                max_key_parts: 8,
                max_key_part_bytes: 256,
                max_values: 16,
            },
            max_log_bytes_per_unit: 4096,
            max_concurrent_instances: 16,
            units_per_store: 16,
            max_wasm_stack: 512 << 10,
            engine_shards: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            compiled_cache_entries: 32,
            disk_cache_dir: None,
            max_component_bytes: 64 << 20,
            component_memory: 256 << 20,
        }
    }
}

impl SandboxConfig {
    pub fn builder() -> SandboxConfigBuilder {
        SandboxConfigBuilder(SandboxConfig::default())
    }
    pub fn fuel_per_unit(&self) -> u64 {
        self.fuel_per_unit
    }
    pub fn memory_per_instance(&self) -> usize {
        self.memory_per_instance
    }
    pub fn max_concurrent_instances(&self) -> u32 {
        self.max_concurrent_instances
    }
    pub fn units_per_store(&self) -> u32 {
        self.units_per_store
    }
    pub fn engine_shards(&self) -> usize {
        self.engine_shards
    }
    pub fn disk_cache_dir(&self) -> Option<&Path> {
        self.disk_cache_dir.as_deref()
    }
    pub fn component_memory(&self) -> usize {
        self.component_memory
    }
    /// A builder starting from these settings, to change a few of them.
    pub fn into_builder(self) -> SandboxConfigBuilder {
        SandboxConfigBuilder(self)
    }
}

/// Typed builder for [`SandboxConfig`].
#[derive(Debug, Clone)]
pub struct SandboxConfigBuilder(SandboxConfig);

impl SandboxConfigBuilder {
    /// Instructions (fuel units) one privacy unit may use.
    pub fn fuel_per_unit(mut self, fuel: u64) -> Self {
        self.0.fuel_per_unit = fuel;
        self
    }
    /// Wall-clock time one privacy unit may use (enforced by epoch interruption, 10 ms ticks).
    pub fn unit_deadline(mut self, d: Duration) -> Self {
        self.0.unit_deadline = d;
        self
    }
    /// Linear memory one instance may grow to, in bytes.
    pub fn memory_per_instance(mut self, bytes: usize) -> Self {
        self.0.memory_per_instance = bytes;
        self
    }
    /// Largest module accepted for compilation, in bytes.
    pub fn max_module_bytes(mut self, bytes: usize) -> Self {
        self.0.max_module_bytes = bytes;
        self
    }
    /// Largest encoded output one unit may return, in bytes.
    pub fn max_output_bytes(mut self, bytes: u32) -> Self {
        self.0.max_output_bytes = bytes;
        self
    }
    /// Bounds for decoding a unit's contributions.
    pub fn decode_limits(mut self, limits: DecodeLimits) -> Self {
        self.0.decode_limits = limits;
        self
    }
    /// Holder-log bytes kept per unit; the rest is truncated.
    pub fn max_log_bytes_per_unit(mut self, bytes: usize) -> Self {
        self.0.max_log_bytes_per_unit = bytes;
        self
    }
    /// Unit runners (threads running units) that may be active at once in each engine shard;
    /// sizes its pooling allocator together with [`Self::units_per_store`].
    pub fn max_concurrent_instances(mut self, n: u32) -> Self {
        self.0.max_concurrent_instances = n.max(1);
        self
    }
    /// Units a [`UnitRunner`] runs in one wasmtime `Store` before replacing it. Every unit
    /// still gets its own instance (memory, globals, tables); sharing the store only saves
    /// creating it and registering the module per unit. The instance pool holds
    /// `max_concurrent_instances × units_per_store` instances.
    pub fn units_per_store(mut self, n: u32) -> Self {
        self.0.units_per_store = n.max(1);
        self
    }
    /// Independent wasmtime engines; each thread that runs units sticks to one. Instantiation
    /// touches engine-wide reference counts and pool locks, so threads sharing one engine
    /// contend; one shard per core lets units scale with cores. Defaults to the core count.
    pub fn engine_shards(mut self, n: usize) -> Self {
        self.0.engine_shards = n.max(1);
        self
    }
    /// Compiled modules kept in memory, keyed by module hash, so a module compiles once per
    /// process however many jobs use it.
    pub fn compiled_cache_entries(mut self, n: usize) -> Self {
        self.0.compiled_cache_entries = n.max(1);
        self
    }
    /// Directory for wasmtime's on-disk cache of compiled code, so a module compiles once per
    /// machine. Entries are keyed by the module bytes and by the engine's compiler version and
    /// settings, so a cache written by another engine configuration is never used. The
    /// directory holds native code: it must be as trusted as the store itself.
    pub fn disk_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.0.disk_cache_dir = Some(dir.into());
        self
    }
    /// Largest component accepted (components carry their language's runtime: a CPython
    /// component is about 18 MB).
    pub fn max_component_bytes(mut self, bytes: usize) -> Self {
        self.0.max_component_bytes = bytes;
        self
    }
    /// Linear memory cap for each memory of a component instance.
    pub fn component_memory(mut self, bytes: usize) -> Self {
        self.0.component_memory = bytes;
        self
    }
    pub fn build(self) -> SandboxConfig {
        self.0
    }
}

/// Why one unit produced no contributions. [`UnitFault::code`] is the only part that may leave the
/// holder's side, and the engine decides whether even that does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnitFault {
    OutOfFuel,
    Deadline,
    /// Memory or table growth beyond the cap, or a stack overflow.
    ResourceLimit(String),
    /// Any other trap (the message can contain data: holder-only).
    Trap(String),
    /// The module returned something that is not a valid, in-bounds encoding.
    BadOutput(String),
}

impl UnitFault {
    /// A stable code without any data in it.
    pub fn code(&self) -> &'static str {
        match self {
            UnitFault::OutOfFuel => "out_of_fuel",
            UnitFault::Deadline => "deadline",
            UnitFault::ResourceLimit(_) => "resource_limit",
            UnitFault::Trap(_) => "trap",
            UnitFault::BadOutput(_) => "bad_output",
        }
    }
    /// Full detail, for the holder log.
    pub fn detail(&self) -> String {
        match self {
            UnitFault::OutOfFuel => "fuel exhausted".into(),
            UnitFault::Deadline => "wall-clock deadline reached".into(),
            UnitFault::ResourceLimit(m) | UnitFault::Trap(m) | UnitFault::BadOutput(m) => m.clone(),
        }
    }
}

/// What running one unit produced.
#[derive(Debug)]
pub struct UnitOutcome {
    pub result: Result<Vec<Contribution>, UnitFault>,
    /// Text the module wrote through `log`, truncated: holder-only.
    pub log: String,
}

struct UnitState {
    limits: UnitLimits,
    log: Vec<u8>,
    log_cap: usize,
    log_truncated: bool,
}

struct EpochTicker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Epoch tick length: unit deadlines are rounded up to whole ticks.
const TICK: Duration = Duration::from_millis(10);

/// One wasmtime engine with its instance pool and linker.
struct Shard {
    engine: Engine,
    linker: Linker<UnitState>,
}

/// Configured wasmtime engines (one per shard), the ticker that drives their epoch deadlines, and
/// the cache of compiled modules.
pub struct Sandbox {
    shards: Vec<Shard>,
    components: ComponentHost,
    config: SandboxConfig,
    compiled: Mutex<CompiledCache>,
    _ticker: EpochTicker,
}

/// Compiled modules by hash, oldest use first out.
#[derive(Default)]
struct CompiledCache {
    entries: Vec<(String, Arc<CompiledModule>)>,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let config_error = |e: wasmtime::Error| SandboxError::Config(format!("{e:#}"));
        let mut cfg = Config::new();
        cfg.consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            .cranelift_nan_canonicalization(true)
            .wasm_relaxed_simd(false);
        if let Some(dir) = &config.disk_cache_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                SandboxError::Config(format!("module cache directory {}: {e}", dir.display()))
            })?;
            let mut cache = CacheConfig::new();
            cache.with_directory(dir);
            cfg.cache(Some(Cache::new(cache).map_err(config_error)?));
        }
        let mut pool = PoolingAllocationConfig::default();
        let slots = config
            .max_concurrent_instances
            .saturating_mul(config.units_per_store);
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .table_elements(MAX_TABLE_ELEMENTS as usize)
            .max_memory_size(config.memory_per_instance)
            // Reset by zeroing in place rather than unmapping: the per-unit reset is the hot path.
            // Guests built with the SDK start at one or two pages (16 KiB stack); the kept prefix
            // covers them with room to grow, and a larger one only lengthens the dirty-page scan
            // (2 MiB cost about 1 µs more per unit). Memory beyond it is returned to the kernel.
            .linear_memory_keep_resident(256 << 10)
            .table_keep_resident(64 << 10)
            // Where the kernel can say which pages a unit dirtied (Linux 6.7+), reset only those
            // instead of zeroing the whole kept-resident prefix (a 64 KiB memset per unit).
            .pagemap_scan(Enabled::Auto);
        // Components (block mode) get their own engine with on-demand allocation; same limits
        // on fuel, deadline, stack and NaN, same compiled-code cache.
        let mut component_cfg = cfg.clone();
        component_cfg.wasm_component_model(true);
        let components = ComponentHost::new(Engine::new(&component_cfg).map_err(config_error)?)?;
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

        let mut shards = Vec::with_capacity(config.engine_shards);
        for _ in 0..config.engine_shards {
            let engine = Engine::new(&cfg).map_err(config_error)?;
            let mut linker = Linker::new(&engine);
            linker
                .func_wrap(IMPORT_MODULE, IMPORT_LOG, host_log)
                .map_err(config_error)?;
            shards.push(Shard { engine, linker });
        }

        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engines: Vec<Engine> = shards
            .iter()
            .map(|s| s.engine.clone())
            .chain([components.engine.clone()])
            .collect();
        let ticker_stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name("veil-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    for engine in &ticker_engines {
                        engine.increment_epoch();
                    }
                }
            })
            .map_err(|e| SandboxError::Config(e.to_string()))?;
        Ok(Sandbox {
            shards,
            components,
            config,
            compiled: Mutex::new(CompiledCache::default()),
            _ticker: EpochTicker {
                stop,
                handle: Some(handle),
            },
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Validates and compiles a module: size, imports (only `veil_abi_v1.log`), exports (the
    /// version-1 ABI), initial memory within the cap. Nothing of the module runs here. A module
    /// already compiled by this sandbox (same hash) comes from the cache.
    pub fn compile(&self, wasm: &[u8]) -> Result<Arc<CompiledModule>, SandboxError> {
        let hash = module_hash(wasm);
        {
            let mut cache = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = cache.entries.iter().position(|(h, _)| *h == hash) {
                let entry = cache.entries.remove(i);
                let module = entry.1.clone();
                cache.entries.push(entry);
                return Ok(module);
            }
        }
        let module = Arc::new(self.compile_uncached(wasm, hash.clone())?);
        let mut cache = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if !cache.entries.iter().any(|(h, _)| *h == hash) {
            if cache.entries.len() >= self.config.compiled_cache_entries {
                cache.entries.remove(0);
            }
            cache.entries.push((hash, module.clone()));
        }
        Ok(module)
    }

    fn compile_uncached(&self, wasm: &[u8], hash: String) -> Result<CompiledModule, SandboxError> {
        let reject = |m: String| Err(SandboxError::ModuleRejected(m));
        if is_component(wasm) {
            if wasm.len() > self.config.max_component_bytes {
                return reject(format!(
                    "component is {} bytes; the limit is {} bytes",
                    wasm.len(),
                    self.config.max_component_bytes
                ));
            }
            return Ok(CompiledModule {
                shards: Vec::new(),
                component: Some(self.components.compile(wasm)?),
                config: self.config.clone(),
                hash,
            });
        }
        if wasm.len() > self.config.max_module_bytes {
            return reject(format!(
                "module is {} bytes; the limit is {} bytes",
                wasm.len(),
                self.config.max_module_bytes
            ));
        }
        if !wasm.starts_with(b"\0asm") {
            return reject("not a WebAssembly binary module".into());
        }
        // Read the module once before compiling: an oversized or abusive module gets a plain
        // answer and costs no compile time. Malformed bytes are left to the compiler's error.
        for payload in wasmparser::Parser::new(0).parse_all(wasm) {
            let memories = match payload {
                Ok(wasmparser::Payload::Version {
                    encoding: wasmparser::Encoding::Component,
                    ..
                }) => {
                    return reject(
                        "this is a WebAssembly component; Veil ABI version 1 takes a core module \
                         (see docs/guests.md)"
                            .into(),
                    );
                }
                Ok(wasmparser::Payload::CodeSectionEntry(body)) => {
                    check_function_body(&body).map_err(SandboxError::ModuleRejected)?;
                    continue;
                }
                Ok(wasmparser::Payload::TableSection(tables)) => {
                    if tables.count() > 1 {
                        return reject("module declares more than one memory or table".into());
                    }
                    for table in tables.into_iter().flatten() {
                        if table.ty.initial > MAX_TABLE_ELEMENTS {
                            return reject(format!(
                                "module declares a table of {} elements; the limit is {MAX_TABLE_ELEMENTS}",
                                table.ty.initial
                            ));
                        }
                    }
                    continue;
                }
                Ok(wasmparser::Payload::MemorySection(memories)) => {
                    if memories.count() > 1 {
                        return reject("module declares more than one memory or table".into());
                    }
                    memories
                }
                _ => continue,
            };
            for memory in memories.into_iter().flatten() {
                if memory.memory64 || memory.shared {
                    return reject("`memory` must be a non-shared 32-bit memory".into());
                }
                if memory.initial.saturating_mul(WASM_PAGE) > self.config.memory_per_instance as u64
                {
                    return reject(format!(
                        "module declares {} initial memory pages ({} MiB); the limit is {} MiB",
                        memory.initial,
                        memory.initial.saturating_mul(WASM_PAGE) >> 20,
                        self.config.memory_per_instance >> 20
                    ));
                }
            }
        }
        let module = Module::from_binary(&self.shards[0].engine, wasm)
            .map_err(|e| SandboxError::ModuleRejected(format!("invalid module: {e:#}")))?;

        for import in module.imports() {
            let ok_name = import.module() == IMPORT_MODULE && import.name() == IMPORT_LOG;
            let ok_type = match import.ty() {
                ExternType::Func(f) => {
                    f.params()
                        .map(|p| matches!(p, ValType::I32))
                        .collect::<Vec<_>>()
                        == [true, true]
                        && f.results().len() == 0
                }
                _ => false,
            };
            if !ok_name {
                return reject(format!(
                    "module imports `{}.{}`; Veil modules may import only `{IMPORT_MODULE}.{IMPORT_LOG}` \
                     (no WASI: files, sockets, clocks, randomness and environment do not exist here)",
                    import.module(),
                    import.name()
                ));
            }
            if !ok_type {
                return reject(format!(
                    "module imports `{IMPORT_MODULE}.{IMPORT_LOG}` with the wrong type; it must be (i32, i32) -> ()"
                ));
            }
        }

        let mut other_versions = Vec::new();
        for export in module.exports() {
            if let Some(rest) = export.name().strip_prefix(EXPORT_PREFIX)
                && !rest.starts_with("1_")
            {
                other_versions.push(export.name().to_owned());
            }
        }
        let find_func = |name: &str, params: &[ValType], results: &[ValType]| {
            let Some(ExternType::Func(f)) = module.get_export(name) else {
                return Err(SandboxError::ModuleRejected(if other_versions.is_empty() {
                    format!(
                        "module does not export `{name}`; build it with the Veil guest SDK (ABI version 1)"
                    )
                } else {
                    format!(
                        "module exports {other_versions:?}: it was built for another Veil ABI version; \
                         this host speaks version 1"
                    )
                }));
            };
            let same = |a: &mut dyn ExactSizeIterator<Item = ValType>, b: &[ValType]| {
                a.len() == b.len() && a.zip(b).all(|(x, y)| ValType::eq(&x, y))
            };
            if !same(&mut f.params(), params) || !same(&mut f.results(), results) {
                return Err(SandboxError::ModuleRejected(format!(
                    "export `{name}` has type {f}; ABI version 1 needs params {params:?} and results {results:?}"
                )));
            }
            Ok(())
        };
        find_func(EXPORT_ALLOC, &[ValType::I32], &[ValType::I32])?;
        find_func(EXPORT_MAP, &[ValType::I32, ValType::I32], &[ValType::I64])?;
        match module.get_export("memory") {
            Some(ExternType::Memory(m)) if m.is_64() || m.is_shared() => {
                return reject("`memory` must be a non-shared 32-bit memory".into());
            }
            Some(ExternType::Memory(_)) => {}
            _ => return reject("module does not export its linear memory as `memory`".into()),
        }
        let resources = module.resources_required();
        if let Some(pages) = resources.max_initial_memory_size
            && pages.saturating_mul(WASM_PAGE) > self.config.memory_per_instance as u64
        {
            return reject(format!(
                "module declares {pages} initial memory pages ({} MiB); the limit is {} MiB",
                (pages * WASM_PAGE) >> 20,
                self.config.memory_per_instance >> 20
            ));
        }
        if resources.num_memories > 1 || resources.num_tables > 1 {
            return reject("module declares more than one memory or table".into());
        }
        if let Some(elements) = resources.max_initial_table_size
            && elements > MAX_TABLE_ELEMENTS
        {
            return reject(format!(
                "module declares a table of {elements} elements; the limit is {MAX_TABLE_ELEMENTS}"
            ));
        }

        // The other shards compile the same bytes for their own engine (from the disk cache when
        // one is configured); validation above does not depend on the engine.
        let mut shards = Vec::with_capacity(self.shards.len());
        for (i, shard) in self.shards.iter().enumerate() {
            let module = if i == 0 {
                module.clone()
            } else {
                Module::from_binary(&shard.engine, wasm)
                    .map_err(|e| SandboxError::ModuleRejected(format!("invalid module: {e:#}")))?
            };
            let export = |name: &str| module.get_export_index(name).expect("validated above");
            shards.push(ShardModule {
                engine: shard.engine.clone(),
                alloc: export(EXPORT_ALLOC),
                map: export(EXPORT_MAP),
                memory: export("memory"),
                pre: shard.linker.instantiate_pre(&module).map_err(|e| {
                    SandboxError::ModuleRejected(format!("cannot link module: {e:#}"))
                })?,
            });
        }
        Ok(CompiledModule {
            shards,
            component: None,
            config: self.config.clone(),
            hash,
        })
    }
}

/// Most table elements an instance may have (declared or grown).
pub const MAX_TABLE_ELEMENTS: u64 = 10_000;

/// Largest function body accepted, in bytes. Compile time and memory grow with a function's size;
/// real analyses stay far below this.
pub const MAX_FUNCTION_BODY_BYTES: usize = 1 << 20;
/// Deepest nesting of blocks, loops and ifs accepted in one function. Compilers emit a few dozen
/// levels; thousands are only good for stressing the compiler.
pub const MAX_NESTING_DEPTH: usize = 1024;

fn check_function_body(body: &wasmparser::FunctionBody<'_>) -> Result<(), String> {
    let size = body.range().len();
    if size > MAX_FUNCTION_BODY_BYTES {
        return Err(format!(
            "a function body is {size} bytes; the limit is {MAX_FUNCTION_BODY_BYTES} bytes"
        ));
    }
    // Unreadable operators are left for the compiler's validation to report.
    let Ok(mut ops) = body.get_operators_reader() else {
        return Ok(());
    };
    let mut depth = 0usize;
    while !ops.eof() {
        let Ok(op) = ops.read() else {
            return Ok(());
        };
        use wasmparser::Operator as Op;
        match op {
            Op::Block { .. } | Op::Loop { .. } | Op::If { .. } | Op::TryTable { .. } => {
                depth += 1;
                if depth > MAX_NESTING_DEPTH {
                    return Err(format!(
                        "a function nests blocks more than {MAX_NESTING_DEPTH} deep"
                    ));
                }
            }
            Op::End => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Whether the bytes are a WebAssembly component (layer 1) rather than a core module.
fn is_component(wasm: &[u8]) -> bool {
    wasm.len() >= 8 && wasm[..4] == *b"\0asm" && wasm[6..8] == [0x01, 0x00]
}

/// SHA-256 of a module's bytes, hex: the module's identity in manifests, approvals and the log.
pub fn module_hash(wasm: &[u8]) -> String {
    hex::encode(Sha256::digest(wasm))
}

/// Fuel one `log` call costs before its bytes: about what the host's work for an empty call takes
/// in instructions, so that no call pattern buys more time per unit of fuel than plain code.
pub const LOG_CALL_FUEL: u64 = 200;
/// Fuel each byte a `log` call passes costs.
pub const LOG_BYTE_FUEL: u64 = 1;
/// Bytes of linear-memory growth one unit of fuel pays for: a unit may grow its memory by
/// `fuel × GROWTH_BYTES_PER_FUEL` bytes beyond its initial size, so that touching fresh pages (page
/// faults the fuel counter does not see) is bounded by fuel too.
pub const GROWTH_BYTES_PER_FUEL: u64 = 4;

/// `veil_abi_v1.log(ptr, len)`: appends a line to the unit's holder-only log. Charged
/// [`LOG_CALL_FUEL`] plus [`LOG_BYTE_FUEL`] per byte; a unit that cannot pay runs out of fuel.
fn host_log(mut caller: Caller<'_, UnitState>, ptr: i32, len: i32) -> wasmtime::Result<()> {
    let len = len as u32 as usize;
    let cost = LOG_CALL_FUEL.saturating_add(LOG_BYTE_FUEL.saturating_mul(len as u64));
    let fuel = caller.get_fuel()?;
    if fuel < cost {
        caller.set_fuel(0)?;
        return Err(Trap::OutOfFuel.into());
    }
    caller.set_fuel(fuel - cost)?;
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return Ok(());
    };
    let (data, state) = memory.data_and_store_mut(&mut caller);
    // Each line costs its bytes plus the newline, so no call pattern (not even empty lines) can
    // grow the log beyond its cap.
    let room = state.log_cap.saturating_sub(state.log.len() + 1);
    let start = ptr as u32 as usize;
    let take = len.min(room);
    if take < len || state.log.len() >= state.log_cap {
        state.log_truncated = true;
    }
    if state.log.len() >= state.log_cap {
        return Ok(());
    }
    if let Some(bytes) = start.checked_add(take).and_then(|end| data.get(start..end)) {
        state.log.extend_from_slice(bytes);
        state.log.push(b'\n');
    }
    Ok(())
}

/// Which resource a unit tried to take beyond its cap: the typed error behind
/// [`UnitFault::ResourceLimit`], so faults are classified by type, not by message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("linear memory beyond the per-instance cap")]
    Memory,
    #[error("table beyond the per-instance cap")]
    Table,
}

/// A store's resource limiter: the caps of [`SandboxConfig`] per instance and per store, plus the
/// unit's memory-growth allowance (see [`GROWTH_BYTES_PER_FUEL`]).
struct UnitLimits {
    memory_cap: usize,
    table_cap: usize,
    per_store: usize,
    /// Bytes the running unit may still grow its memory by; reset for every unit.
    growth_left: usize,
    /// While instantiating, memories are created at their declared initial size, which
    /// validation already capped; that is not growth the unit pays for.
    instantiating: bool,
}

impl wasmtime::ResourceLimiter for UnitLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            return Err(LimitExceeded::Memory.into());
        }
        if self.instantiating {
            return Ok(true);
        }
        let grow = desired.saturating_sub(current);
        if grow > self.growth_left {
            // `memory.grow` answers -1; the module may try a smaller step.
            return Ok(false);
        }
        self.growth_left -= grow;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_cap {
            return Err(LimitExceeded::Table.into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.per_store
    }
    fn tables(&self) -> usize {
        self.per_store
    }
    fn memories(&self) -> usize {
        self.per_store
    }
}

/// A module compiled for one engine shard, with its exports resolved once.
struct ShardModule {
    engine: Engine,
    pre: InstancePre<UnitState>,
    alloc: ModuleExport,
    map: ModuleExport,
    memory: ModuleExport,
}

/// A module that passed validation, linked and ready to instantiate once per unit.
pub struct CompiledModule {
    shards: Vec<ShardModule>,
    /// Set for a component (block mode only); then `shards` is empty.
    component: Option<CompiledComponent>,
    config: SandboxConfig,
    hash: String,
}

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
fn thread_shard(shards: usize) -> usize {
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
fn classify(err: wasmtime::Error) -> UnitFault {
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
