//! What a module must be before it is compiled for real: size, shape and nesting caps read by a
//! linear pre-scan, so an abusive module gets a plain answer and costs no compile time; and what
//! its compiled form must import and export (ABI version 1, docs/guests.md).
use wasmtime::{ExternType, Module, ValType};

use crate::{
    EXPORT_ALLOC, EXPORT_MAP, EXPORT_PREFIX, IMPORT_LOG, IMPORT_MODULE, SandboxConfig,
    SandboxError, WASM_PAGE,
};
/// Most table elements an instance may have (declared or grown).
pub const MAX_TABLE_ELEMENTS: u64 = 10_000;

/// Largest function body accepted, in bytes. Compile time and memory grow with a function's size;
/// real analyses stay far below this.
pub const MAX_FUNCTION_BODY_BYTES: usize = 1 << 20;
/// Deepest nesting of blocks, loops and ifs accepted in one function. Compilers emit a few dozen
/// levels; thousands are only good for stressing the compiler.
pub const MAX_NESTING_DEPTH: usize = 1024;

pub(crate) fn check_function_body(body: &wasmparser::FunctionBody<'_>) -> Result<(), String> {
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
pub(crate) fn is_component(wasm: &[u8]) -> bool {
    wasm.len() >= 8 && wasm[..4] == *b"\0asm" && wasm[6..8] == [0x01, 0x00]
}

/// Checks a core module's bytes before compiling: size, magic, at most one memory (32-bit,
/// unshared, initial size within `memory_per_instance`) and table (≤ [`MAX_TABLE_ELEMENTS`]), and
/// every function body's size and nesting, and reads the declared columns
/// ([`veil_abi::SECTION_COLUMNS`]) if the module has that section. Malformed bytes are left to
/// the compiler's error.
pub(crate) fn prescan(
    wasm: &[u8],
    config: &SandboxConfig,
) -> Result<Option<Vec<String>>, SandboxError> {
    let reject = |m: String| Err(SandboxError::ModuleRejected(m));
    if wasm.len() > config.max_module_bytes {
        return reject(format!(
            "module is {} bytes; the limit is {} bytes",
            wasm.len(),
            config.max_module_bytes
        ));
    }
    if !wasm.starts_with(b"\0asm") {
        return reject("not a WebAssembly binary module".into());
    }
    // Read the module once before compiling: an oversized or abusive module gets a plain
    // answer and costs no compile time. Malformed bytes are left to the compiler's error.
    let mut declared = None;
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
            Ok(wasmparser::Payload::CustomSection(section))
                if section.name() == veil_abi::SECTION_COLUMNS =>
            {
                if declared.is_some() {
                    return reject(format!(
                        "module has two `{}` sections; declare its columns once",
                        veil_abi::SECTION_COLUMNS
                    ));
                }
                declared = Some(declared_columns(section.data())?);
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
            if memory.initial.saturating_mul(WASM_PAGE) > config.memory_per_instance as u64 {
                return reject(format!(
                    "module declares {} initial memory pages ({} MiB); the limit is {} MiB",
                    memory.initial,
                    memory.initial.saturating_mul(WASM_PAGE) >> 20,
                    config.memory_per_instance >> 20
                ));
            }
        }
    }
    Ok(declared)
}

/// The names of a declared-columns section, or why the section is unusable.
fn declared_columns(data: &[u8]) -> Result<Vec<String>, SandboxError> {
    veil_abi::decode_declared_columns(data)
        .map(|names| names.into_iter().map(str::to_owned).collect())
        .map_err(|e| {
            SandboxError::ModuleRejected(format!(
                "the module's `{}` section is unusable: {e} (write it with \
                 veil_guest::reads_columns!, docs/guests.md)",
                veil_abi::SECTION_COLUMNS
            ))
        })
}

/// Checks a compiled core module against ABI version 1: it imports at most `veil_abi_v1.log`
/// (i32, i32) → (), exports the alloc and map functions with their types and its memory, and
/// its declared resources fit the limits. Names another ABI version when the exports say so.
pub(crate) fn check_interface(module: &Module, config: &SandboxConfig) -> Result<(), SandboxError> {
    check_imports(module)?;
    check_exports(module)?;
    check_resources(module, config)
}

/// Every import must be `veil_abi_v1.log` with type (i32, i32) → ().
fn check_imports(module: &Module) -> Result<(), SandboxError> {
    let reject = |m: String| Err(SandboxError::ModuleRejected(m));
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
    Ok(())
}

/// The ABI version 1 exports with their types, and the memory; another version's exports are named.
fn check_exports(module: &Module) -> Result<(), SandboxError> {
    let reject = |m: String| Err(SandboxError::ModuleRejected(m));
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
    Ok(())
}

/// Declared memories and tables fit the limits (the compiled module's own account).
fn check_resources(module: &Module, config: &SandboxConfig) -> Result<(), SandboxError> {
    let reject = |m: String| Err(SandboxError::ModuleRejected(m));
    let resources = module.resources_required();
    if let Some(pages) = resources.max_initial_memory_size
        && pages.saturating_mul(WASM_PAGE) > config.memory_per_instance as u64
    {
        return reject(format!(
            "module declares {pages} initial memory pages ({} MiB); the limit is {} MiB",
            (pages * WASM_PAGE) >> 20,
            config.memory_per_instance >> 20
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
    Ok(())
}
