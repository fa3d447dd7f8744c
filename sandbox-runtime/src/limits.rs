//! What a running unit may spend beyond instructions: the `log` host call's fuel price and the
//! resource limiter that ties memory growth to fuel.
use super::*;

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
pub(crate) fn host_log(
    mut caller: Caller<'_, UnitState>,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<()> {
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
pub(crate) struct UnitLimits {
    pub(crate) memory_cap: usize,
    pub(crate) table_cap: usize,
    pub(crate) per_store: usize,
    /// Bytes the running unit may still grow its memory by; reset for every unit.
    pub(crate) growth_left: usize,
    /// While instantiating, memories are created at their declared initial size, which
    /// validation already capped; that is not growth the unit pays for.
    pub(crate) instantiating: bool,
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
