//! The sandbox's knobs: [`SandboxConfig`] and its builder. Each knob states its default and what
//! happens at the limit.
use super::*;

/// Limits and knobs for running modules. Build with [`SandboxConfig::builder`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub(crate) fuel_per_unit: u64,
    pub(crate) unit_deadline: Duration,
    pub(crate) memory_per_instance: usize,
    pub(crate) max_module_bytes: usize,
    pub(crate) max_output_bytes: u32,
    pub(crate) decode_limits: DecodeLimits,
    pub(crate) max_log_bytes_per_unit: usize,
    pub(crate) max_concurrent_instances: u32,
    pub(crate) units_per_store: u32,
    pub(crate) max_wasm_stack: usize,
    pub(crate) engine_shards: usize,
    pub(crate) compiled_cache_entries: usize,
    pub(crate) disk_cache_dir: Option<PathBuf>,
    pub(crate) max_component_bytes: usize,
    pub(crate) component_memory: usize,
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
    /// Most fuel (≈ wasm instructions, plus host-call prices) one privacy unit may use; the
    /// engine's schedule gives each unit at most this. Default 20,000,000. At the limit the unit
    /// traps with [`UnitFault::OutOfFuel`] and contributes nothing; the job goes on.
    pub fn fuel_per_unit(mut self, fuel: u64) -> Self {
        self.0.fuel_per_unit = fuel;
        self
    }
    /// Wall-clock time one privacy unit may use, rounded up to 10 ms epoch ticks; a backstop
    /// behind fuel. Default 1 s. At the limit the unit is interrupted ([`UnitFault::Deadline`])
    /// and contributes nothing.
    pub fn unit_deadline(mut self, d: Duration) -> Self {
        self.0.unit_deadline = d;
        self
    }
    /// Linear memory one instance may grow to, in bytes (also sizes the instance pool's slots).
    /// Default 32 MiB. A module declaring more initial memory is rejected at submission; a
    /// `memory.grow` past it (or past what the unit's fuel pays for) returns -1.
    pub fn memory_per_instance(mut self, bytes: usize) -> Self {
        self.0.memory_per_instance = bytes;
        self
    }
    /// Largest core module accepted for compilation, in bytes. Default 8 MiB. A larger module is
    /// rejected at submission, before the compiler sees it.
    pub fn max_module_bytes(mut self, bytes: usize) -> Self {
        self.0.max_module_bytes = bytes;
        self
    }
    /// Largest encoded output one unit may return, in bytes. Default 1 MiB. A larger output is
    /// [`UnitFault::BadOutput`]: the unit contributes nothing.
    pub fn max_output_bytes(mut self, bytes: u32) -> Self {
        self.0.max_output_bytes = bytes;
        self
    }
    /// Bounds for decoding a unit's contributions. Default: 1,024 contributions, 8 key parts of
    /// at most 256 bytes, 16 values. Output beyond any bound is [`UnitFault::BadOutput`].
    pub fn decode_limits(mut self, limits: DecodeLimits) -> Self {
        self.0.decode_limits = limits;
        self
    }
    /// Holder-log bytes kept per unit, newlines included. Default 4,096. Past it the rest of the
    /// unit's log is dropped and `[log truncated]` is noted (each call still costs its fuel).
    pub fn max_log_bytes_per_unit(mut self, bytes: usize) -> Self {
        self.0.max_log_bytes_per_unit = bytes;
        self
    }
    /// Unit runners (threads running units) that may be active at once in each engine shard;
    /// sizes its pooling allocator together with [`Self::units_per_store`]. Default 16 (never
    /// less than 1). Past it, instantiation finds no free pool slot and the unit faults, so size
    /// it for the engine's threads.
    pub fn max_concurrent_instances(mut self, n: u32) -> Self {
        self.0.max_concurrent_instances = n.max(1);
        self
    }
    /// Units a [`UnitRunner`] runs in one wasmtime `Store` before replacing it. Every unit
    /// still gets its own instance (memory, globals, tables); sharing the store only saves
    /// creating it and registering the module per unit. The instance pool holds
    /// `max_concurrent_instances × units_per_store` instances. Default 16 (never less than 1).
    pub fn units_per_store(mut self, n: u32) -> Self {
        self.0.units_per_store = n.max(1);
        self
    }
    /// Independent wasmtime engines; each thread that runs units sticks to one. Instantiation
    /// touches engine-wide reference counts and pool locks, so threads sharing one engine
    /// contend; one shard per core lets units scale with cores. Default: the core count (never
    /// less than one). Each shard compiles each module once.
    pub fn engine_shards(mut self, n: usize) -> Self {
        self.0.engine_shards = n.max(1);
        self
    }
    /// Compiled modules kept in memory, keyed by module hash, so a module compiles once per
    /// process however many jobs use it. Default 32 (never less than 1). Past it the least recently used
    /// module is dropped and compiles again (or loads from the disk cache) when next used.
    pub fn compiled_cache_entries(mut self, n: usize) -> Self {
        self.0.compiled_cache_entries = n.max(1);
        self
    }
    /// Directory for wasmtime's on-disk cache of compiled code, so a module compiles once per
    /// machine. Entries are keyed by the module bytes and by the engine's compiler version and
    /// settings, so a cache written by another engine configuration is never used. The
    /// directory holds native code: it must be as trusted as the store itself. Default: none
    /// (compiled code lives in memory only).
    pub fn disk_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.0.disk_cache_dir = Some(dir.into());
        self
    }
    /// Largest component accepted (components carry their language's runtime: a CPython
    /// component is about 18 MB). Default 64 MiB. A larger one is rejected at submission.
    pub fn max_component_bytes(mut self, bytes: usize) -> Self {
        self.0.max_component_bytes = bytes;
        self
    }
    /// Linear memory cap for each memory of a component instance. Default 256 MiB. Growth past it
    /// traps, and the block contributes nothing.
    pub fn component_memory(mut self, bytes: usize) -> Self {
        self.0.component_memory = bytes;
        self
    }
    /// The configuration; every knob not set keeps its default.
    pub fn build(self) -> SandboxConfig {
        self.0
    }
}
