//! The memory bound of `svcnat::k8s::read`: reading a cluster dump takes less than
//! three times the dump's size at its peak (the text, the state it fills, and what
//! one item needs), where a tree of the whole document took 25 times.
//!
//! A test binary of its own, because it counts every allocation through a global
//! allocator. That allocator is the one `unsafe` in the project: a `GlobalAlloc`
//! cannot be written without it, and it only forwards to the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use svcnat::synthetic::{Spec, write_kubectl_list};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` with the same arguments; the counters
// do not touch the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The heap's peak above what is live now, while `f` runs.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - base)
}

#[test]
fn reading_a_dump_peaks_under_three_times_its_size() {
    // 5,000 ClusterIP services x 10 endpoints with realistic metadata: 19.5 MB, the
    // benchmark's 78 MB dump at a quarter of the size (the ratio does not depend on it).
    let state = Spec::new(5_000, 10).build();
    let mut dump = Vec::new();
    write_kubectl_list(&state, &mut dump).unwrap();
    assert!(dump.len() > 15_000_000, "{} bytes", dump.len());

    let (loaded, peak) = peak_during(|| svcnat::k8s::read(&dump[..]).unwrap());
    assert_eq!(loaded.state, state);
    let ratio = peak as f64 / dump.len() as f64;
    eprintln!(
        "read: {} bytes in, peak {peak} bytes, {ratio:.2}x",
        dump.len()
    );
    assert!(ratio < 3.0, "peak {peak} bytes is {ratio:.2}x the dump");

    // The state alone, kept after the read, is part of that peak.
    drop(loaded);
    let (loaded, peak) = peak_during(|| svcnat::k8s::read_slice(&dump).unwrap());
    let ratio = peak as f64 / dump.len() as f64;
    eprintln!("read_slice: peak {peak} bytes, {ratio:.2}x");
    assert!(ratio < 2.0, "peak {peak} bytes is {ratio:.2}x the dump");
    drop(loaded);
}
