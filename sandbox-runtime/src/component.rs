//! Component guests: WebAssembly components (Python through componentize-py) in block mode.
//!
//! Interpreted languages ship as components that carry their runtime and import WASI 0.2. An
//! instance costs milliseconds rather than microseconds (a CPython image is tens of MB), so
//! components run only in sample-and-aggregate mode, once per block, never once per person.
//!
//! The contract is the `map-block` world of `wit/veil-analysis.wit`: export
//! `run-block: func(input: list<u8>) -> list<u8>` (the same byte encodings as ABI version 1:
//! a unit in, contributions out) and optionally import `log-line: func(message: string)`.
//!
//! WASI is linked against an empty context, so every interface exists but reaches nothing: no
//! preopened directories (the filesystem is empty), no environment or arguments, stdin empty,
//! stdout and stderr discarded, every socket address refused and no name lookup. Clocks and
//! randomness can be read; they give a module nothing to read about the data. Waiting is not
//! possible: a pollable on the monotonic clock ([`COMPONENT_SLEEP_IMPORTS`]) is ready at once, so
//! `time.sleep` returns immediately instead of holding a worker for as long as the guest likes
//! (time a guest could spend on one person only: a channel the schedule would have to absorb).
//! Every call into the host costs [`HOST_CALL_FUEL`] (and `log-line` one more per byte), so
//! cheap host calls cannot buy time beyond what fuel pays for. Fuel, an epoch deadline and
//! `StoreLimits` bound each instance as for core modules; a fresh `Store` and instance serve each
//! block. Any import outside WASI 0.2 and `log-line` fails linking at submission.
use std::future::Future;
use std::pin::Pin;

use wasmtime::component::{Component, InstancePre, Linker, Resource, ResourceTable};
use wasmtime::{CallHook, Engine, Store, StoreContextMut, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::{LOG_BYTE_FUEL, SandboxConfig, SandboxError, UnitFault, classify};

/// Name of the block export and the log import in the `map-block` world.
pub const COMPONENT_EXPORT: &str = "run-block";
pub const COMPONENT_LOG: &str = "log-line";

/// The WASI interface whose waits Veil answers at once, and the functions of it that would
/// otherwise sleep (`wasi:clocks/monotonic-clock`, as wasmtime-wasi links it; guests built for an
/// earlier 0.2 release are matched to it by semver).
pub const COMPONENT_CLOCK_INTERFACE: &str = "wasi:clocks/monotonic-clock@0.2.12";
pub const COMPONENT_SLEEP_IMPORTS: [&str; 2] = ["subscribe-duration", "subscribe-instant"];

/// Fuel every call from a component into the host costs (WASI and `log-line`): the price of the
/// cheapest way to spend time without executing instructions, as `LOG_CALL_FUEL` is for core
/// modules.
pub const HOST_CALL_FUEL: u64 = 200;

pub(crate) struct ComponentState {
    ctx: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    log: Vec<u8>,
    log_cap: usize,
    log_truncated: bool,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// The engine and linker for components (on-demand allocation: a component's several memories
/// and large tables do not fit the per-unit pool's slots).
pub(crate) struct ComponentHost {
    pub(crate) engine: Engine,
    linker: Linker<ComponentState>,
}

pub(crate) struct CompiledComponent {
    engine: Engine,
    pre: InstancePre<ComponentState>,
}

impl ComponentHost {
    pub(crate) fn new(engine: Engine) -> Result<Self, SandboxError> {
        let config_error = |e: wasmtime::Error| SandboxError::Config(format!("{e:#}"));
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(config_error)?;
        // Replace the clock's sleeps with pollables that are ready at once.
        linker.allow_shadowing(true);
        let mut clock = linker
            .instance(COMPONENT_CLOCK_INTERFACE)
            .map_err(config_error)?;
        for name in COMPONENT_SLEEP_IMPORTS {
            clock
                .func_wrap(name, |store, (_when,): (u64,)| Ok((ready_now(store)?,)))
                .map_err(config_error)?;
        }
        linker.allow_shadowing(false);
        linker
            .root()
            .func_wrap(
                COMPONENT_LOG,
                |mut store: wasmtime::StoreContextMut<'_, ComponentState>,
                 (message,): (String,)| {
                    charge(
                        &mut store,
                        LOG_BYTE_FUEL.saturating_mul(message.len() as u64),
                    )?;
                    let state = store.data_mut();
                    // Each line costs its bytes plus the newline, as for core modules.
                    let room = state.log_cap.saturating_sub(state.log.len() + 1);
                    let mut end = message.len().min(room);
                    while !message.is_char_boundary(end) {
                        end -= 1;
                    }
                    if end < message.len() {
                        state.log_truncated = true;
                    }
                    if room > 0 {
                        state.log.extend_from_slice(&message.as_bytes()[..end]);
                        state.log.push(b'\n');
                    }
                    Ok(())
                },
            )
            .map_err(config_error)?;
        Ok(ComponentHost { engine, linker })
    }

    pub(crate) fn compile(&self, wasm: &[u8]) -> Result<CompiledComponent, SandboxError> {
        let reject = |m: String| SandboxError::ModuleRejected(m);
        let component = Component::from_binary(&self.engine, wasm)
            .map_err(|e| reject(format!("invalid component: {e:#}")))?;
        if component.get_export_index(None, COMPONENT_EXPORT).is_none() {
            return Err(reject(format!(
                "the component does not export `{COMPONENT_EXPORT}`; build it for the `map-block` \
                 world of wit/veil-analysis.wit (docs/guests.md)"
            )));
        }
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            reject(format!(
                "the component imports something Veil does not provide (only WASI 0.2 and \
                 `{COMPONENT_LOG}` exist): {e:#}"
            ))
        })?;
        Ok(CompiledComponent {
            engine: self.engine.clone(),
            pre,
        })
    }
}

impl CompiledComponent {
    /// Runs the component once on `input` (a unit encoding) with `weight` units' fuel and
    /// deadline; returns the raw output bytes and the holder-only log.
    pub(crate) fn run(
        &self,
        config: &SandboxConfig,
        input: &[u8],
        fuel: u64,
        ticks: u64,
    ) -> (Result<Vec<u8>, UnitFault>, String) {
        let limits = StoreLimitsBuilder::new()
            .memory_size(config.component_memory)
            .instances(COMPONENT_MAX_PIECES)
            .memories(COMPONENT_MAX_PIECES)
            .tables(COMPONENT_MAX_PIECES)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            ComponentState {
                ctx: WasiCtxBuilder::new().build(),
                table: ResourceTable::new(),
                limits,
                log: Vec::new(),
                log_cap: config.max_log_bytes_per_unit,
                log_truncated: false,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.call_hook(|mut store, hook| match hook {
            CallHook::CallingHost => charge(&mut store, HOST_CALL_FUEL),
            _ => Ok(()),
        });
        let result = (|| {
            store.set_fuel(fuel).map_err(classify)?;
            store.set_epoch_deadline(ticks);
            let instance = self.pre.instantiate(&mut store).map_err(classify)?;
            let run = instance
                .get_typed_func::<(&[u8],), (Vec<u8>,)>(&mut store, COMPONENT_EXPORT)
                .map_err(|e| {
                    UnitFault::BadOutput(format!("`{COMPONENT_EXPORT}` has the wrong type: {e:#}"))
                })?;
            let (out,) = run.call(&mut store, (input,)).map_err(classify)?;
            if out.len() > config.max_output_bytes as usize {
                return Err(UnitFault::BadOutput(format!(
                    "output of {} bytes exceeds the {}-byte limit",
                    out.len(),
                    config.max_output_bytes
                )));
            }
            Ok(out)
        })();
        let state = store.into_data();
        let mut log = String::from_utf8_lossy(&state.log).into_owned();
        if state.log_truncated {
            log.push_str("[log truncated]\n");
        }
        (result, log)
    }
}

/// Takes `cost` fuel from the running block; one that cannot pay runs out of fuel (the same
/// `OutOfFuel` trap as running out in wasm, classified by type).
fn charge(store: &mut StoreContextMut<'_, ComponentState>, cost: u64) -> wasmtime::Result<()> {
    let fuel = store.get_fuel()?;
    if fuel < cost {
        store.set_fuel(0)?;
        return Err(Trap::OutOfFuel.into());
    }
    store.set_fuel(fuel - cost)
}

/// A pollable that is ready at once: what a sleep on the monotonic clock gets.
fn ready_now(
    mut store: StoreContextMut<'_, ComponentState>,
) -> wasmtime::Result<Resource<DynPollable>> {
    let table = &mut store.data_mut().table;
    let immediate = table.push(Immediate)?;
    subscribe(table, immediate)
}

/// The host side of [`ready_now`]'s pollable.
struct Immediate;

impl Pollable for Immediate {
    fn ready<'a, 'b>(&'a mut self) -> Pin<Box<dyn Future<Output = ()> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(std::future::ready(()))
    }
}

/// Core instances, memories and tables one component may create (CPython builds use a handful).
const COMPONENT_MAX_PIECES: usize = 64;
