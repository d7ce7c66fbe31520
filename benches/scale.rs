//! The scale grid of issue 6 (criterion): generated clusters of S = 1k, 10k, 30k
//! services with E = 1, 10, 50 ready endpoints each, in both mixes
//! ([`Mix::ClusterIp`], [`Mix::LoadBalancer`]), seen from `synthetic::config()`.
//!
//! ```text
//! cargo bench --features synthetic --bench scale    # the whole grid (about 17 min on 2 cores)
//! SVCNAT_BENCH_GRID=10000x10 cargo bench --features synthetic --bench scale     # one S x E, both mixes
//! SVCNAT_BENCH_GRID=1000x1/cluster-ip cargo bench --features synthetic --bench scale -- full
//! SVCNAT_BENCH_GRID=1000x50,3000x5/load-balancer cargo bench --features synthetic --bench scale
//! cargo bench --features synthetic --bench scale -- --test   # each benchmark once, 1k points only
//! ```
//!
//! Every grid point is a criterion group `scale/<S>x<E>/<mix>` (mix `cluster-ip` or
//! `load-balancer`) with these benchmarks:
//!
//! | id | what | throughput |
//! |---|---|---|
//! | `full` | compile + render into the caller's output `Vec<u8>`: `compile_text`, then `write_to_vec` into a buffer that outlives the compile (as the floor's copy's does) | bytes of output |
//! | `full-fresh` | [`full`]: the same into a new `Vec<u8>` each time (`to_bytes`), fresh memory included | bytes of output |
//! | `full-reuse` | `full`, also reusing the last compile's memory (`compile_text_reusing`) | bytes of output |
//! | `compile` | `compile::compile_text` alone (each service compiled and rendered) | rules |
//! | `render` | `CompiledText::write_to_vec`: the full text put together in the kept output buffer | bytes of output |
//! | `floor-copy` | copying the output into a buffer of its size already in memory (no allocation, no page faults) | bytes of output |
//! | `floor-hash` | SHA-256 of every chain name the output declares | chains |
//! | `parse` | `parse::parse` of the full output | bytes of output |
//! | `partial-1` | one endpoint of one service changed: `upsert_slice` + `sync()` of a `Syncer<DryRun>` holding the cluster | bytes of payload |
//! | `partial-100` | the same for 100 services changed at once | bytes of payload |
//!
//! Times exclude dropping what the routine returns (the output, the ruleset), as the
//! `scale` example's do; `full` and `full-fresh` include dropping the intermediate
//! text they build on the way, since a caller of a state-to-bytes entry point pays
//! for it. Partial-sync
//! iterations prepare their slices (`synthetic::endpoint_change`, with a round number
//! that increases every iteration, so every sync really changes something) outside
//! the timed part, and check that the sync was partial and wrote something.
//!
//! After each point, besides criterion's report, one line goes to stdout, and all of
//! them again at the end:
//!
//! ```text
//! ratio 10000x10 cluster-ip: full 554.2 ms / floor 12.1 ms (copy 2.2 ms + hash 9.9 ms) = 45.8x
//! ```
//!
//! The floor is what any implementation pays at least for this output: writing its
//! bytes (a copy into memory already mapped; the allocator's and the kernel's share
//! of fresh memory, which varies with the heap's history, is left out) and hashing
//! its chain names (kube-proxy names chains by SHA-256); `common/floor.rs` holds it,
//! for this bench and the `scale` example alike. The times are medians over the
//! per-iteration times of the samples criterion took *in this run* (recorded
//! through `iter_custom`, the last [`SAMPLES`] calls of each routine, which are the
//! measurement samples after criterion's warm-up); no `target/criterion` file is
//! read, so no earlier run can leak in. A point where `full` or the floor was filtered out prints no ratio.
//!
//! Each point's cluster is built once, used by all its benchmarks, and dropped before
//! the next (30000x50 holds about 5 GB at its peak). The first `full` result is
//! checked to be byte for byte what the typed path (`compile::compile` + `render::write_io`) gives.
//!
//! The bench's own settings are environment variables; its command line is
//! criterion's alone (`cargo bench --features synthetic --bench scale -- --help` lists
//! it):
//!
//! * `SVCNAT_BENCH_GRID`, a comma-separated list of `<S>x<E>` (both mixes) or
//!   `<S>x<E>/<mix>`, replaces the grid; any S and E will do (`3000x5`). It says
//!   which points are built. Criterion's filter (`-- full`, `-- 'floor-.*'`)
//!   says which benchmarks run, but every point of the grid is built all the same,
//!   so select points with `SVCNAT_BENCH_GRID`, not with the filter: a filter
//!   alone would build the whole grid to run a part of it.
//! * In criterion's test mode (`-- --test`, or `cargo test --features synthetic
//!   --benches`) the grid is only its 1k points unless `SVCNAT_BENCH_GRID` says
//!   otherwise; with `--list` nothing is built.
//!
//! Other settings, environment variables too:
//!
//! * `SVCNAT_BENCH_PARSE_MAX_CHAINS` (a number, or `all`, the default): `parse`
//!   is benchmarked only where the output declares at most this many chains, and a
//!   `parse skipped at ...` line says where it was not (parsing 30000x50, 450 MB,
//!   takes seconds per iteration).
//! * `SVCNAT_BENCH_PLOTS` (any value): criterion's HTML plots, off by default (they
//!   cost about 7 s per benchmark without gnuplot). Its estimates and the comparison
//!   with the previous run are kept either way.
//! * criterion's own options (`--sample-size`, `--measurement-time`, ...) override
//!   this bench's defaults: 10 samples, 0.3 s warm-up, 1.5 s measurement; points
//!   from 100k endpoints sample flat.
//!
//! Large points take one iteration per sample, so criterion warns that it cannot
//! complete 10 samples in the measurement time; that is expected, it takes them anyway.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{Bencher, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use svcnat::exec::DryRun;
use svcnat::model::{ClusterState, ProxyConfig};
use svcnat::sync::Syncer;
use svcnat::synthetic::{self, Mix, Spec};

#[path = "common/floor.rs"]
mod floor;

/// The full restore text of `state` in a new buffer: `compile_text` (each service
/// compiled and rendered in turn), then `to_bytes`. The bench checks that it gives
/// the same bytes as the typed path, `compile::compile` + `render::write_io`, and
/// times it as `full-fresh`.
fn full(state: &ClusterState, config: &ProxyConfig) -> Vec<u8> {
    svcnat::compile::compile_text(state, config)
        .expect("generated cluster is valid")
        .to_bytes()
}

const SERVICES: [usize; 3] = [1_000, 10_000, 30_000];
const ENDPOINTS: [usize; 3] = [1, 10, 50];
const MIXES: [Mix; 2] = [Mix::ClusterIp, Mix::LoadBalancer];

/// Criterion's sample count (its minimum), and the number of trailing routine calls
/// the ratio's medians are taken over.
const SAMPLES: usize = 10;

/// Points with at least this many endpoints sample flat (one or a few iterations
/// per sample); smaller ones let criterion choose.
const FLAT_FROM_ENDPOINTS: usize = 100_000;

/// Above this many chains the grid skips `parse` and says so. No limit by default
/// since the parser became linear in the chain count (its jump check was a `Vec`
/// search, 4.6 s at 1000x50; a set now, 0.26 s).
const PARSE_MAX_CHAINS: usize = usize::MAX;

/// The benchmark names of every point, in the order they run, for `--list`.
const BENCHES: [&str; 10] = [
    "full",
    "full-fresh",
    "full-reuse",
    "compile",
    "render",
    "floor-copy",
    "floor-hash",
    "parse",
    "partial-1",
    "partial-100",
];

fn mix_name(mix: Mix) -> &'static str {
    match mix {
        Mix::ClusterIp => "cluster-ip",
        Mix::LoadBalancer => "load-balancer",
        // `Mix` is non-exhaustive; a new shape gets its name here when a bench uses it.
        _ => "other",
    }
}

/// `10000x10/cluster-ip`.
fn point_name(spec: &Spec) -> String {
    format!(
        "{}x{}/{}",
        spec.services,
        spec.endpoints,
        mix_name(spec.mix)
    )
}

fn group_name(spec: &Spec) -> String {
    format!("scale/{}", point_name(spec))
}

fn scale(c: &mut Criterion) {
    let mode = Mode::of(std::env::args().skip(1));
    let points = match std::env::var("SVCNAT_BENCH_GRID") {
        Ok(list) => parse_grid(&list).unwrap_or_else(|e| panic!("SVCNAT_BENCH_GRID: {e}")),
        Err(_) => default_grid(mode == Mode::Test),
    };
    let mut ratios = Vec::new();
    for spec in points {
        if mode == Mode::List {
            list_point(c, &spec);
        } else {
            ratios.extend(bench_point(c, mode, spec));
        }
    }
    if ratios.len() > 1 {
        println!("\nfull compile+render against the floor, this run:");
        for line in &ratios {
            println!("{line}");
        }
    }
}

/// The grid of the issue; in test mode only its 1k points.
fn default_grid(test: bool) -> Vec<Spec> {
    let mut points = Vec::new();
    for services in SERVICES {
        if test && services > 1_000 {
            continue;
        }
        for endpoints in ENDPOINTS {
            for mix in MIXES {
                points.push(Spec::new(services, endpoints).with_mix(mix));
            }
        }
    }
    points
}

/// `1000x1,10000x10/load-balancer`: the points of `SVCNAT_BENCH_GRID`.
fn parse_grid(list: &str) -> Result<Vec<Spec>, String> {
    let mut points = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (size, mix) = match item.split_once('/') {
            Some((size, mix)) => (size, Some(mix)),
            None => (item, None),
        };
        let mixes = match mix {
            None => MIXES.to_vec(),
            Some("cluster-ip") => vec![Mix::ClusterIp],
            Some("load-balancer") => vec![Mix::LoadBalancer],
            Some(other) => {
                return Err(format!(
                    "{item:?}: unknown mix {other:?} (cluster-ip or load-balancer)"
                ));
            }
        };
        let (s, e) = size
            .split_once('x')
            .and_then(|(s, e)| Some((s.parse().ok()?, e.parse().ok()?)))
            .ok_or_else(|| format!("{item:?} is not <services>x<endpoints>[/<mix>]"))?;
        for mix in mixes {
            points.push(Spec::new(s, e).with_mix(mix));
        }
    }
    Ok(points)
}

/// Criterion's mode, which decides what to build: criterion keeps it to itself,
/// so it is read here from the two flags that set it, as criterion reads them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Measuring (`cargo bench`, which passes `--bench`).
    Bench,
    /// Each benchmark once: `--test`, or without `--bench` (`cargo test --benches`).
    Test,
    /// `--list`: names only, nothing built.
    List,
}

impl Mode {
    /// No list of criterion's options is needed: these flags take no value, and
    /// criterion's parser (clap) takes no value that starts with `--`, so an
    /// argument that is exactly `--list` before any `--` is that flag.
    fn of(args: impl Iterator<Item = String>) -> Mode {
        let flags: Vec<String> = args.take_while(|a| a != "--").collect();
        let has = |flag: &str| flags.iter().any(|a| a == flag);
        if has("--list") {
            Mode::List
        } else if has("--test") || !has("--bench") {
            Mode::Test
        } else {
            Mode::Bench
        }
    }
}

fn list_point(c: &mut Criterion, spec: &Spec) {
    let mut group = c.benchmark_group(group_name(spec));
    for name in BENCHES {
        group.bench_function(name, |b| b.iter(|| ()));
    }
    group.finish();
}

/// Per-iteration times (seconds) of every call criterion made of one routine.
#[derive(Default)]
struct Times(Vec<f64>);

impl Times {
    /// The median of the measurement samples: the last [`SAMPLES`] calls.
    fn median(&self) -> Option<f64> {
        let mut last = self.0[self.0.len().saturating_sub(SAMPLES)..].to_vec();
        last.sort_by(f64::total_cmp);
        last.get(last.len() / 2).copied()
    }
}

/// Benchmarks `routine`, timing each call alone; its result is dropped untimed.
fn timed<O>(b: &mut Bencher<'_>, times: &mut Times, routine: impl FnMut() -> O) {
    timed_then(b, times, routine, drop);
}

/// [`timed`], handing each result to `after`, untimed.
fn timed_then<O>(
    b: &mut Bencher<'_>,
    times: &mut Times,
    mut routine: impl FnMut() -> O,
    mut after: impl FnMut(O),
) {
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let start = Instant::now();
            let out = black_box(routine());
            total += start.elapsed();
            after(out);
        }
        times.0.push(total.as_secs_f64() / iters as f64);
        total
    });
}

/// Builds one point's cluster, runs its benchmarks, drops it; the ratio line.
fn bench_point(c: &mut Criterion, mode: Mode, spec: Spec) -> Option<String> {
    let config = synthetic::config();
    let t0 = Instant::now();
    let state = spec.build();
    println!(
        "\npoint {}: built in {}",
        point_name(&spec),
        secs(t0.elapsed().as_secs_f64())
    );
    let mut group = c.benchmark_group(group_name(&spec));
    if spec.services * spec.endpoints >= FLAT_FROM_ENDPOINTS {
        group.sampling_mode(SamplingMode::Flat);
    }
    let medians = bench_output(&mut group, &spec, &state, &config);
    bench_partial(&mut group, &spec, state, config);
    group.finish();

    let (whole, copy, hash) = (medians.full?, medians.copy?, medians.hash?);
    let floor = copy + hash;
    let mut line = format!(
        "ratio {}x{} {}: full {} / floor {} (copy {} + hash {}) = {:.1}x",
        spec.services,
        spec.endpoints,
        mix_name(spec.mix),
        secs(whole),
        secs(floor),
        secs(copy),
        secs(hash),
        whole / floor
    );
    if mode == Mode::Test {
        line.push_str(" (test mode: one unwarmed run, not a measurement)");
    }
    println!("{line}");
    Some(line)
}

/// The medians the ratio needs, where measured.
#[derive(Default)]
struct Medians {
    full: Option<f64>,
    copy: Option<f64>,
    hash: Option<f64>,
}

/// `full`, `compile`, `render`, the floor and `parse`: everything about the full
/// output. Holds the output and the chain names while it runs (the typed ruleset
/// only until the sizes are known).
fn bench_output(
    group: &mut BenchmarkGroup<'_, WallTime>,
    spec: &Spec,
    state: &ClusterState,
    config: &ProxyConfig,
) -> Medians {
    // Sizes for the throughputs, and the bytes `full` must give.
    let t0 = Instant::now();
    let ruleset = svcnat::compile::compile(state, config).expect("generated cluster is valid");
    let mut bytes = Vec::new();
    svcnat::render::write_io(&ruleset, &mut bytes).expect("a Vec takes every write");
    let once = t0.elapsed();
    let rules = ruleset.rule_count();
    // The declared chains' names, for the floor's hash.
    let names = floor::chain_names(&bytes);
    assert_eq!(
        names.len(),
        ruleset.tables.iter().map(|t| t.chains.len()).sum::<usize>(),
        "every declared chain is named once"
    );
    println!(
        "output {}: {} bytes, {rules} rules, {} chains; one compile+render {}",
        point_name(spec),
        bytes.len(),
        names.len(),
        secs(once.as_secs_f64()),
    );
    // The typed ruleset is not needed any more; kept alive, it would make every
    // `full` iteration grow the heap into fresh pages (and hand them back after),
    // a heap state neither a daemon nor the floor's copy is in.
    drop(ruleset);
    let out_bytes = Throughput::Bytes(bytes.len() as u64);
    let (mut t_full, mut t_copy, mut t_hash) =
        (Times::default(), Times::default(), Times::default());

    group.throughput(out_bytes.clone());
    // The caller's output buffer, already holding a text of this size.
    let mut out = full(state, config);
    assert!(
        out == bytes,
        "full() differs from the typed compile + render"
    );
    group.bench_function("full", |b| {
        timed(b, &mut t_full, || {
            let text =
                svcnat::compile::compile_text(state, config).expect("generated cluster is valid");
            text.write_to_vec(&mut out);
            // The intermediate text is the caller's to drop: counted.
            drop(text);
            out.len()
        })
    });
    assert!(out == bytes, "full differs from the typed compile + render");

    group.bench_function("full-fresh", |b| {
        timed(b, &mut Times::default(), || full(state, config))
    });

    // What a daemon that keeps its buffers pays: the last compile's memory is
    // reused and the text lands in the same Vec every time.
    let mut kept =
        Some(svcnat::compile::compile_text(state, config).expect("generated cluster is valid"));
    group.bench_function("full-reuse", |b| {
        timed(b, &mut Times::default(), || {
            let old = kept.take().expect("put back after every call");
            let text = svcnat::compile::compile_text_reusing(state, config, old)
                .expect("generated cluster is valid");
            text.write_to_vec(&mut out);
            kept = Some(text);
            out.len()
        })
    });
    assert!(out == bytes, "full-reuse differs from full");
    drop(kept);

    group.throughput(Throughput::Elements(rules as u64));
    group.bench_function("compile", |b| {
        timed(b, &mut Times::default(), || {
            svcnat::compile::compile_text(state, config).expect("generated cluster is valid")
        })
    });

    let text = svcnat::compile::compile_text(state, config).expect("generated cluster is valid");
    group.throughput(out_bytes.clone());
    group.bench_function("render", |b| {
        timed(b, &mut Times::default(), || {
            text.write_to_vec(&mut out);
            out.len()
        })
    });
    drop((text, out));

    // The floor (`common/floor.rs`, which the scale example measures too).
    let mut copy = bytes.clone();
    group.bench_function("floor-copy", |b| {
        timed(b, &mut t_copy, || floor::copy(&mut copy, &bytes))
    });
    drop(copy);

    group.throughput(Throughput::Elements(names.len() as u64));
    group.bench_function("floor-hash", |b| {
        timed(b, &mut t_hash, || floor::hash(&names))
    });

    let parse_max = parse_max_chains();
    if names.len() <= parse_max {
        let text = std::str::from_utf8(&bytes).expect("the output is UTF-8");
        group.throughput(out_bytes);
        group.bench_function("parse", |b| {
            timed_then(
                b,
                &mut Times::default(),
                || svcnat::parse::parse(text).expect("svcnat's own output parses"),
                |parsed| assert_eq!(parsed.rule_count(), rules, "parse lost rules"),
            )
        });
    } else {
        println!(
            "parse skipped at {}: {} chains > SVCNAT_BENCH_PARSE_MAX_CHAINS={parse_max}",
            point_name(spec),
            names.len()
        );
    }
    Medians {
        full: t_full.median(),
        copy: t_copy.median(),
        hash: t_hash.median(),
    }
}

/// `partial-1` and `partial-100`, on a `Syncer` that takes over the cluster.
fn bench_partial(
    group: &mut BenchmarkGroup<'_, WallTime>,
    spec: &Spec,
    state: ClusterState,
    config: ProxyConfig,
) {
    if spec.services == 0 || spec.endpoints == 0 {
        return;
    }
    let mut syncer = Syncer::new(DryRun::default(), config).expect("valid config");
    syncer.replace_state(state);
    assert!(syncer.sync().expect("a dry run cannot fail").full);
    syncer.executor_mut().payloads = Vec::new();
    syncer.executor_mut().jumps = Vec::new();
    let mut round = 0;
    for count in [1, 100] {
        let count = count.min(spec.services);
        // One round first, for the payload's size.
        round += 1;
        let (probe, _) = partial_sync(&mut syncer, count, round);
        group.throughput(Throughput::Bytes(probe as u64));
        group.bench_function(format!("partial-{count}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    total += partial_sync(&mut syncer, count, round).1;
                }
                total
            })
        });
    }
}

/// One partial sync after changing one endpoint of `count` services spread over the
/// cluster (`synthetic::endpoint_changes`, as the `scale` example does): payload bytes, and the
/// time from handing over the slices to having the payload. Preparing the slices and
/// the checks are not timed.
fn partial_sync(syncer: &mut Syncer<DryRun>, count: usize, round: u64) -> (usize, Duration) {
    let changes = synthetic::endpoint_changes(syncer.state(), count, round)
        .expect("every service has endpoints");
    let start = Instant::now();
    for slice in changes {
        syncer.upsert_slice(slice);
    }
    let report = syncer.sync().expect("a dry run cannot fail");
    let elapsed = start.elapsed();
    assert!(
        !report.full,
        "a change of {count} services gave a full sync"
    );
    assert!(
        report.payload.chains_written() > 0,
        "round {round} changed nothing"
    );
    syncer.executor_mut().payloads.clear();
    (report.bytes, elapsed)
}

/// `92.1 ms`.
fn secs(s: f64) -> String {
    match s {
        s if s >= 1.0 => format!("{s:.2} s"),
        s if s >= 1e-3 => format!("{:.1} ms", s * 1e3),
        s => format!("{:.1} µs", s * 1e6),
    }
}

/// Criterion's defaults for this bench (its command line still overrides them).
/// Plots are off unless `SVCNAT_BENCH_PLOTS` is set: without gnuplot, criterion's
/// plotters backend takes about 7 s per benchmark here, more than the measuring.
fn config() -> Criterion {
    let c = Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500));
    if std::env::var_os("SVCNAT_BENCH_PLOTS").is_some() {
        c
    } else {
        c.without_plots()
    }
}

/// The most chains a point's output may declare for `parse` to be benchmarked
/// there: `SVCNAT_BENCH_PARSE_MAX_CHAINS` (a number or `all`), default
/// [`PARSE_MAX_CHAINS`].
fn parse_max_chains() -> usize {
    match std::env::var("SVCNAT_BENCH_PARSE_MAX_CHAINS") {
        Ok(v) if v == "all" => usize::MAX,
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("SVCNAT_BENCH_PARSE_MAX_CHAINS={v:?}: a number or all")),
        Err(_) => PARSE_MAX_CHAINS,
    }
}

criterion::criterion_group! {
    name = benches;
    config = config();
    targets = scale
}
criterion::criterion_main!(benches);
