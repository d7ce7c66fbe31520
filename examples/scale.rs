//! Measures svcnat on a generated cluster and prints one JSON object.
//!
//! ```text
//! cargo run --release --features synthetic --example scale -- --services S --endpoints E \
//!     [--mix cluster-ip|load-balancer] [--seed N] [--runs N]
//! ```
//!
//! The cluster is [`svcnat::synthetic`]'s, seen from its node `node-0`. Every time is
//! the median of `--runs` runs (default 5) on one thread, in nanoseconds:
//!
//! | key | what |
//! |---|---|
//! | `full_bytes`, `full_rules`, `full_chains` | the full restore text: bytes, `-A` rules, chains |
//! | `full_ns` | compile + render into the caller's output `Vec<u8>`: `compile_ns` for [`svcnat::compile::compile_text`] (each service compiled and rendered), `render_ns` for [`write_to_vec`](svcnat::compile::CompiledText::write_to_vec) (the full text put together in a buffer that outlives the compile, as the floor's copy's does) and dropping the per-service text |
//! | `fresh_ns`, `fresh_ratio` | the same into a new `Vec<u8>` each time (`to_bytes`), fresh memory included; its ratio to `floor_ns` |
//! | `reuse_ns`, `reuse_ratio` | compile + render as a daemon does it again and again: [`svcnat::compile::compile_text_reusing`] into the last text's buffers, then [`write_to_vec`](svcnat::compile::CompiledText::write_to_vec) into a kept output buffer; its ratio to `floor_ns` |
//! | `typed_ns` | the same bytes through the typed path: [`svcnat::compile::compile`] to a whole `Ruleset`, then [`svcnat::render::write_io`] |
//! | `floor_ns` | `copy_ns` + `hash_ns`: copying `full_bytes` into a buffer of that size already in memory (the copy alone: no allocation, no page faults), and SHA-256 over every chain name the output declares |
//! | `ratio` | `full_ns / floor_ns` |
//! | `partial_one_ns`, `partial_one_bytes` | one endpoint of one service changed: from handing the slice to the `Syncer` to having its payload |
//! | `partial_one_fraction` | `partial_one_bytes / full_bytes` |
//! | `partial_100_ns`, `partial_100_bytes` | the same for 100 services changed at once |
//! | `peak_bytes`, `peak_ratio` | heap in use at the peak of one compile + render, above what was in use before (the cluster itself), and its ratio to `full_bytes` |
//! | `typed_peak_bytes` | the same peak for the typed path (`typed_ns`) |
//! | `syncer_bytes` | heap the `Syncer` keeps between syncs (its copy of the cluster and the applied rules) |
//!
//! Partial times are null for a cluster without endpoints. Exit code 0, or 2 with one
//! line on stderr for bad flags.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::Instant;

use serde_json::json;
use svcnat::exec::DryRun;
use svcnat::model::ClusterState;
use svcnat::sync::Syncer;
use svcnat::synthetic::{self, Spec};

#[path = "common/flags.rs"]
mod flags;
#[path = "../benches/common/floor.rs"]
mod floor;
use flags::{CommandLine, SpecFlags};

const USAGE: &str = "usage: scale --services S --endpoints E [--mix cluster-ip|load-balancer] [--seed N] [--runs N]";

fn main() {
    let args = Args::parse(CommandLine::from_env()).unwrap_or_else(|e| {
        eprintln!("scale: {e}; {USAGE}");
        std::process::exit(2)
    });
    let report = measure(&args);
    println!("{report}");
}

#[derive(Debug)]
struct Args {
    spec: Spec,
    runs: usize,
}

impl Args {
    fn parse(mut line: CommandLine) -> Result<Args, String> {
        let mut flags = SpecFlags::default();
        while let Some(flag) = line.next_flag(USAGE)? {
            if !flags.take(&flag, &mut line)? {
                return Err(format!("unexpected argument {:?}", line.typed(&flag)));
            }
        }
        let services = flags.services.ok_or("--services is required")?;
        let endpoints = flags.endpoints.ok_or("--endpoints is required")?;
        if services > 1_000_000 || endpoints > 1_000 {
            return Err("at most 1000000 services and 1000 endpoints each".into());
        }
        Ok(Args {
            spec: Spec::new(services, endpoints)
                .with_mix(flags.mix)
                .with_seed(flags.seed.unwrap_or(1)),
            runs: flags.runs.unwrap_or(5).max(1),
        })
    }
}

fn measure(args: &Args) -> serde_json::Value {
    let spec = args.spec;
    let config = synthetic::config();
    let state = spec.build();

    // Peak heap of one compile + render, above the cluster already in memory.
    HEAP.start();
    let bytes = full(&state, &config);
    let (_, peak_bytes) = HEAP.stop();
    drop(bytes);
    // The same for the typed path, for comparison.
    HEAP.start();
    let ruleset = svcnat::compile::compile(&state, &config).expect("generated cluster is valid");
    let mut typed = Vec::new();
    svcnat::render::write_io(&ruleset, &mut typed).expect("a Vec takes every write");
    let (_, typed_peak_bytes) = HEAP.stop();
    drop((ruleset, typed));

    // Each path is timed in a loop of its own, so that no run inherits another
    // path's heap.
    let mut compile_ns = Vec::new();
    let mut render_ns = Vec::new();
    let mut full_ns = Vec::new();
    // The output buffer is the caller's and outlives the compile, as the floor's
    // copy's buffer does: neither pays for fresh memory (see `fresh_ns` for that).
    let mut bytes = full(&state, &config);
    for _ in 0..args.runs {
        let t0 = Instant::now();
        let text =
            svcnat::compile::compile_text(&state, &config).expect("generated cluster is valid");
        let t1 = Instant::now();
        text.write_to_vec(&mut bytes);
        // The intermediate text is the caller's to drop: counted, as in the bench.
        drop(text);
        let t2 = Instant::now();
        compile_ns.push(nanos(t1 - t0));
        render_ns.push(nanos(t2 - t1));
        full_ns.push(nanos(t2 - t0));
    }
    // The same into a new buffer each time (`to_bytes`): what a caller that keeps
    // no buffer pays, fresh memory included.
    let mut fresh_ns = Vec::new();
    for _ in 0..args.runs {
        let t0 = Instant::now();
        let out = full(&state, &config);
        fresh_ns.push(nanos(t0.elapsed()));
        assert!(out == bytes, "a new buffer changed the text");
    }
    // A daemon compiling again and again: the last text's buffers and one output
    // buffer are reused.
    let mut reuse_ns = Vec::new();
    let mut kept =
        svcnat::compile::compile_text(&state, &config).expect("generated cluster is valid");
    let mut out = Vec::new();
    for _ in 0..args.runs {
        let t0 = Instant::now();
        kept = svcnat::compile::compile_text_reusing(&state, &config, kept)
            .expect("generated cluster is valid");
        kept.write_to_vec(&mut out);
        reuse_ns.push(nanos(t0.elapsed()));
        assert!(out == bytes, "reusing buffers changed the text");
    }
    drop((kept, out));
    // The typed path: the whole Ruleset, then rendered.
    let mut typed_ns = Vec::new();
    let mut chains = 0;
    let mut rules = 0;
    for run in 0..args.runs {
        let t0 = Instant::now();
        let ruleset =
            svcnat::compile::compile(&state, &config).expect("generated cluster is valid");
        let mut typed = Vec::new();
        svcnat::render::write_io(&ruleset, &mut typed).expect("a Vec takes every write");
        typed_ns.push(nanos(t0.elapsed()));
        assert!(typed == bytes, "the fast path and the typed path differ");
        if run == 0 {
            rules = ruleset.rule_count();
            chains = ruleset.tables.iter().map(|t| t.chains.len()).sum();
        }
        drop((ruleset, typed));
    }

    // The floor, as the bench measures it (`benches/common/floor.rs`).
    let names = floor::chain_names(&bytes);
    assert_eq!(names.len(), chains, "every declared chain is named once");
    let mut copy_ns = Vec::new();
    let mut hash_ns = Vec::new();
    let mut copy = bytes.clone();
    for _ in 0..args.runs {
        let t0 = Instant::now();
        floor::copy(&mut copy, &bytes);
        let t1 = Instant::now();
        floor::hash(&names);
        let t2 = Instant::now();
        copy_ns.push(nanos(t1 - t0));
        hash_ns.push(nanos(t2 - t1));
    }

    let (compile_ns, render_ns, full_ns) = (median(compile_ns), median(render_ns), median(full_ns));
    let fresh_ns = median(fresh_ns);
    let typed_ns = median(typed_ns);
    let reuse_ns = median(reuse_ns);
    drop(copy);
    let (copy_ns, hash_ns) = (median(copy_ns), median(hash_ns));
    let floor_ns = copy_ns + hash_ns;
    let full_bytes = bytes.len();
    let full_chains = names.len();
    drop(names);
    drop(bytes);

    HEAP.start();
    let mut syncer = Syncer::new(DryRun::default(), config).expect("valid config");
    syncer.replace_state(state.clone());
    syncer.sync().expect("a dry run cannot fail");
    syncer.executor_mut().payloads.clear();
    syncer.executor_mut().payloads.shrink_to_fit();
    let (syncer_bytes, _) = HEAP.stop();

    let one = partial(&mut syncer, &spec, args.runs, 1);
    let hundred = partial(&mut syncer, &spec, args.runs, 100);

    json!({
        "services": spec.services,
        "endpoints": spec.endpoints,
        "mix": spec.mix,
        "seed": spec.seed,
        "runs": args.runs,
        "full_bytes": full_bytes,
        "full_rules": rules,
        "full_chains": full_chains,
        "full_ns": full_ns,
        "compile_ns": compile_ns,
        "render_ns": render_ns,
        "fresh_ns": fresh_ns,
        "fresh_ratio": fresh_ns as f64 / floor_ns.max(1) as f64,
        "typed_ns": typed_ns,
        "reuse_ns": reuse_ns,
        "reuse_ratio": reuse_ns as f64 / floor_ns.max(1) as f64,
        "floor_ns": floor_ns,
        "copy_ns": copy_ns,
        "hash_ns": hash_ns,
        "ratio": full_ns as f64 / floor_ns.max(1) as f64,
        "partial_one_ns": one.map(|p| p.0),
        "partial_one_bytes": one.map(|p| p.1),
        "partial_one_fraction": one.map(|p| p.1 as f64 / full_bytes.max(1) as f64),
        "partial_100_ns": hundred.map(|p| p.0),
        "partial_100_bytes": hundred.map(|p| p.1),
        "peak_bytes": peak_bytes,
        "peak_ratio": peak_bytes as f64 / full_bytes.max(1) as f64,
        "typed_peak_bytes": typed_peak_bytes,
        "syncer_bytes": syncer_bytes,
    })
}

/// One compile + render, the bytes kept.
fn full(state: &ClusterState, config: &svcnat::model::ProxyConfig) -> Vec<u8> {
    svcnat::compile::compile_text(state, config)
        .expect("generated cluster is valid")
        .to_bytes()
}

/// Median time and payload size of `runs` partial syncs, each changing one endpoint
/// of `count` services spread over the cluster. `None` without endpoints.
fn partial(
    syncer: &mut Syncer<DryRun>,
    spec: &Spec,
    runs: usize,
    count: usize,
) -> Option<(u64, usize)> {
    if spec.services == 0 || spec.endpoints == 0 {
        return None;
    }
    let count = count.min(spec.services);
    let mut times = Vec::new();
    let mut sizes = Vec::new();
    // Odd run counts give a true median; a few more runs cost little here.
    for run in 0..runs.max(11) {
        let changes = synthetic::endpoint_changes(syncer.state(), count, run as u64 + 1)
            .expect("every service has endpoints");
        let t0 = Instant::now();
        for slice in changes {
            syncer.upsert_slice(slice);
        }
        let report = syncer.sync().expect("a dry run cannot fail");
        let t1 = Instant::now();
        assert!(
            !report.full,
            "a change of {count} services gave a full sync"
        );
        times.push(nanos(t1 - t0));
        sizes.push(report.bytes);
        syncer.executor_mut().payloads.clear();
    }
    Some((median(times), median(sizes)))
}

fn nanos(d: std::time::Duration) -> u64 {
    d.as_nanos().try_into().unwrap_or(u64::MAX)
}

fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The system allocator, counting, while switched on, the change in bytes in use
/// and its peak. Switched off it costs one relaxed load per call, so the timed runs
/// are not slowed by the counting.
struct Counting {
    on: AtomicBool,
    delta: AtomicIsize,
    peak: AtomicIsize,
}

#[global_allocator]
static HEAP: Counting = Counting {
    on: AtomicBool::new(false),
    delta: AtomicIsize::new(0),
    peak: AtomicIsize::new(0),
};

impl Counting {
    /// Starts counting from zero.
    fn start(&self) {
        self.delta.store(0, Ordering::Relaxed);
        self.peak.store(0, Ordering::Relaxed);
        self.on.store(true, Ordering::SeqCst);
    }

    /// Stops counting: the bytes in use now, and at the peak, above the start.
    fn stop(&self) -> (usize, usize) {
        self.on.store(false, Ordering::SeqCst);
        let delta = self.delta.load(Ordering::Relaxed).max(0) as usize;
        let peak = self.peak.load(Ordering::Relaxed).max(0) as usize;
        (delta, peak)
    }

    fn add(&self, size: usize) {
        if self.on.load(Ordering::Relaxed) {
            let now = self.delta.fetch_add(size as isize, Ordering::Relaxed) + size as isize;
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    fn sub(&self, size: usize) {
        if self.on.load(Ordering::Relaxed) {
            self.delta.fetch_sub(size as isize, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is passed to `System` unchanged; the counters only observe.
// (svcnat itself forbids unsafe code; this measuring example needs a global
// allocator, which only an `unsafe impl` provides.)
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is System's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            self.add(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) };
        self.sub(layout.size());
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is System's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            self.add(layout.size());
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is System's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        // Counted as the net change: large blocks grow by remapping their pages, so
        // old and new do not both occupy memory.
        if !p.is_null() {
            self.sub(layout.size());
            self.add(new_size);
        }
        p
    }
}
