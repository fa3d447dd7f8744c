//! Guest SDK for Veil *map* modules.
//!
//! A map module sees the rows of one privacy unit at a time and emits contributions: a group key
//! and numeric values. Veil's trusted gate — not the module — bounds, clamps, aggregates and noises
//! them, so a module only says *what* a person contributes, never how much that may weigh.
//!
//! ```no_run
//! use veil_guest::{Emitter, Unit};
//!
//! fn map(unit: &Unit, out: &mut Emitter) {
//!     let (Some(educ), Some(income)) = (unit.column("educ"), unit.column("weekly_income")) else {
//!         return;
//!     };
//!     for row in unit.rows() {
//!         if let (Some(e), Some(w)) = (row[educ].as_i64(), row[income].as_f64()) {
//!             out.emit(&[&e.to_string()], &[w]);
//!         }
//!     }
//! }
//! veil_guest::export_map!(map);
//! ```
//!
//! Build with `cargo build --release --target wasm32-unknown-unknown` and a `cdylib` crate type.
//! The module then exports exactly the names of the version-1 ABI (see `veil-abi`) and imports at
//! most `veil_abi_v1.log`. `log` text goes to the data holder and reviewers only, never to the
//! consumer, so a module author cannot debug against real data by printing it to themselves.
//!
//! This is the one crate in Veil that contains `unsafe`: the guest side of the ABI necessarily turns
//! host-provided pointers into slices, and the guest's allocator hands out raw memory.
//!
//! On wasm32 the SDK installs its own global allocator (a bump allocator, see `heap.rs`), because
//! each unit's instance lives for one call only; a module must not declare another
//! `#[global_allocator]`.

#[cfg(target_arch = "wasm32")]
mod heap;

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: heap::BumpAllocator = heap::BumpAllocator::new();

pub use veil_abi::{ColumnType, Contribution, Value};
use veil_abi::{UnitView, encode_contributions};

/// One privacy unit's rows, as the policy and the job's manifest allow the module to see them.
pub struct Unit<'a> {
    view: UnitView<'a>,
}

impl<'a> Unit<'a> {
    /// Index of a column by name, for use with [`Unit::rows`].
    pub fn column(&self, name: &str) -> Option<usize> {
        self.view.column_index(name)
    }
    /// Column names and types in the order of each row.
    pub fn columns(&self) -> &[(&'a str, ColumnType)] {
        self.view.columns()
    }
    /// Number of rows that belong to this unit.
    pub fn row_count(&self) -> usize {
        self.view.row_count()
    }
    /// The rows, each a slice with one value per column.
    pub fn rows(&self) -> impl Iterator<Item = &[Value<'a>]> {
        self.view.rows()
    }
}

/// Collects the contributions of one unit.
#[derive(Default)]
pub struct Emitter {
    contributions: Vec<Contribution>,
}

impl Emitter {
    /// Contributes `values` to the group named by `key`. The gate keeps at most the policy's number of
    /// groups per unit and clamps each value to the bounds the manifest declares.
    pub fn emit(&mut self, key: &[&str], values: &[f64]) {
        self.contributions.push(Contribution {
            key: key.iter().map(|k| (*k).to_owned()).collect(),
            values: values.to_vec(),
        });
    }
}

/// Writes a diagnostic line to the holder-only module log.
pub fn log(message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        #[link(wasm_import_module = "veil_abi_v1")]
        unsafe extern "C" {
            #[link_name = "log"]
            fn veil_log(ptr: *const u8, len: usize);
        }
        // SAFETY: the host reads `len` bytes from our own memory at `ptr`, which `message` owns.
        unsafe { veil_log(message.as_ptr(), message.len()) }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = message;
    }
}

/// Implementation of [`export_map!`]'s allocation export. Each unit runs in a fresh instance, so the
/// memory is never freed: the whole instance is thrown away after the call.
#[doc(hidden)]
pub fn __alloc(len: i32) -> i32 {
    let Ok(len) = usize::try_from(len) else {
        return 0;
    };
    let buf = vec![0u8; len].leak();
    buf.as_mut_ptr() as usize as i32
}

/// Implementation of [`export_map!`]'s map export.
#[doc(hidden)]
pub fn __run_map(ptr: i32, len: i32, f: fn(&Unit, &mut Emitter)) -> i64 {
    install_panic_logger();
    // SAFETY: the host wrote `len` bytes at `ptr`, a buffer it obtained from `__alloc` in this instance.
    let input = unsafe { core::slice::from_raw_parts(ptr as usize as *const u8, len as usize) };
    let view = match UnitView::decode(input) {
        Ok(v) => v,
        Err(e) => {
            log(&format!("veil-guest: bad unit encoding: {e}"));
            return -1;
        }
    };
    let unit = Unit { view };
    let mut out = Emitter::default();
    f(&unit, &mut out);
    let mut bytes = Vec::new();
    encode_contributions(&out.contributions, &mut bytes);
    let bytes = bytes.leak();
    ((bytes.as_ptr() as usize as i64) << 32) | bytes.len() as i64
}

fn install_panic_logger() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| log(&format!("panic: {info}"))));
    });
}

/// Exports `$f: fn(&Unit, &mut Emitter)` as this module's map function under the version-1 ABI names.
#[macro_export]
macro_rules! export_map {
    ($f:path) => {
        #[unsafe(export_name = "veil_abi_v1_alloc")]
        pub extern "C" fn __veil_abi_v1_alloc(len: i32) -> i32 {
            $crate::__alloc(len)
        }
        #[unsafe(export_name = "veil_abi_v1_map")]
        pub extern "C" fn __veil_abi_v1_map(ptr: i32, len: i32) -> i64 {
            $crate::__run_map(ptr, len, $f)
        }
    };
}

/// Declares the columns this module reads, in the module's `veil_abi_v1_columns` custom section
/// (see `veil_abi::SECTION_COLUMNS`). Veil then refuses, at submission and in `veil job check`,
/// a manifest that does not deliver one of them — before any ε is spent — instead of running a
/// module whose lookups find nothing. Name every column the module looks up with
/// [`Unit::column`]:
///
/// ```no_run
/// veil_guest::reads_columns!("educ", "weekly_income");
/// ```
#[macro_export]
macro_rules! reads_columns {
    ($($name:literal),+ $(,)?) => {
        const _: () = {
            const TEXT: &str = concat!($($name, "\n"),+);
            #[unsafe(link_section = "veil_abi_v1_columns")]
            #[used]
            static COLUMNS: [u8; TEXT.len()] = {
                let bytes = TEXT.as_bytes();
                let mut out = [0u8; TEXT.len()];
                let mut i = 0;
                while i < bytes.len() {
                    out[i] = bytes[i];
                    i += 1;
                }
                out
            };
        };
    };
}
