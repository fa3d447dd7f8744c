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
