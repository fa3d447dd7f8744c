//! The guest's global allocator: a bump allocator over linear memory.
//!
//! Each privacy unit runs in a fresh instance that is thrown away after one call, so memory never
//! needs to be reused. Rust's default wasm allocator (dlmalloc) asks the host for new pages with
//! `memory.grow` on its first allocation; in the host's pooling allocator every growth is an
//! `mprotect` on grow and another on reset, and those system calls serialise across cores (they
//! were 75% of the per-unit cost). Allocating from the free space after `__heap_base` in the
//! initial memory first avoids them for typical units; larger units still grow, geometrically.
use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::Cell;
use core::ptr::null_mut;

const PAGE: usize = 65_536;

unsafe extern "C" {
    /// First free byte after the stack and the data segments; provided by wasm-ld.
    static __heap_base: u8;
}

pub struct BumpAllocator {
    /// Next free address; 0 until the first allocation.
    next: Cell<usize>,
}

// SAFETY: wasm32-unknown-unknown guests are single-threaded; no two threads can race on `next`.
unsafe impl Sync for BumpAllocator {}

impl BumpAllocator {
    pub const fn new() -> Self {
        BumpAllocator { next: Cell::new(0) }
    }

    /// Makes sure memory reaches `end`, growing at least by the current size to keep the number
    /// of growth steps logarithmic.
    fn reserve(end: usize) -> bool {
        let have = wasm32::memory_size(0) * PAGE;
        if end <= have {
            return true;
        }
        let need = (end - have).div_ceil(PAGE);
        let pages = need.max(wasm32::memory_size(0));
        wasm32::memory_grow(0, pages) != usize::MAX || wasm32::memory_grow(0, need) != usize::MAX
    }
}

impl Default for BumpAllocator {
    fn default() -> Self {
        Self::new()
    }
}

unsafe impl GlobalAlloc for BumpAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut next = self.next.get();
        if next == 0 {
            next = &raw const __heap_base as usize;
        }
        // `Layout` guarantees a power-of-two alignment.
        let Some(start) = next
            .checked_add(layout.align() - 1)
            .map(|n| n & !(layout.align() - 1))
        else {
            return null_mut();
        };
        let Some(end) = start.checked_add(layout.size()) else {
            return null_mut();
        };
        if !Self::reserve(end) {
            return null_mut();
        }
        self.next.set(end);
        start as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Only the most recent allocation can be given back; the instance's end frees the rest.
        if ptr as usize + layout.size() == self.next.get() {
            self.next.set(ptr as usize);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Growing or shrinking the most recent allocation happens in place (a `Vec` being pushed to).
        if ptr as usize + layout.size() == self.next.get() {
            let Some(end) = (ptr as usize).checked_add(new_size) else {
                return null_mut();
            };
            if !Self::reserve(end) {
                return null_mut();
            }
            self.next.set(end);
            return ptr;
        }
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract, which `alloc` needs.
        let new =
            unsafe { self.alloc(Layout::from_size_align_unchecked(new_size, layout.align())) };
        if !new.is_null() {
            // SAFETY: both regions are live, distinct allocations of at least the copied length.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
        }
        new
    }
}
