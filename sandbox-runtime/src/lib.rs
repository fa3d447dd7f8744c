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
mod config;
mod limits;
mod runner;
mod validate;
pub use component::{
    COMPONENT_CLOCK_INTERFACE, COMPONENT_EXPORT, COMPONENT_LOG, COMPONENT_SLEEP_IMPORTS,
    HOST_CALL_FUEL,
};
use component::{CompiledComponent, ComponentHost};
pub use config::{SandboxConfig, SandboxConfigBuilder};
pub use limits::{GROWTH_BYTES_PER_FUEL, LOG_BYTE_FUEL, LOG_CALL_FUEL, LimitExceeded};
use limits::{UnitLimits, host_log};
pub use runner::UnitRunner;
use runner::classify;
use validate::is_component;
pub use validate::{MAX_FUNCTION_BODY_BYTES, MAX_NESTING_DEPTH, MAX_TABLE_ELEMENTS};

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
    Cache, CacheConfig, Caller, Config, Enabled, Engine, InstanceAllocationStrategy, InstancePre,
    Linker, Module, ModuleExport, PoolingAllocationConfig, Store, Trap,
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
                declared_columns: None,
            });
        }
        let declared_columns = validate::prescan(wasm, &self.config)?;
        let module = Module::from_binary(&self.shards[0].engine, wasm)
            .map_err(|e| SandboxError::ModuleRejected(format!("invalid module: {e:#}")))?;

        validate::check_interface(&module, &self.config)?;

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
            declared_columns,
        })
    }
}

/// SHA-256 of a module's bytes, hex: the module's identity in manifests, approvals and the log.
pub fn module_hash(wasm: &[u8]) -> String {
    hex::encode(Sha256::digest(wasm))
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
    /// The columns the module declares it reads ([`veil_abi::SECTION_COLUMNS`]), if it declares.
    declared_columns: Option<Vec<String>>,
}
