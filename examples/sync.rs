//! Syncs a series of cluster states into the current network namespace through one
//! `Syncer`: a full sync first (with the jump rules from the built-in chains), then
//! partial ones.
//!
//! ```text
//! cargo run --example sync --features k8s -- [COMPILE FLAGS] [--apply] [--backend nft|legacy] \
//!     [--drift-check SECONDS] [--step-on-stdin] STATE.json [STATE.json ...]
//! ```
//!
//! Each STATE.json is a Kubernetes `List` as for the compile example, whose flags it
//! takes too. Without `--apply` nothing touches the system: each payload is printed
//! after its step line. For each step one line goes to stdout:
//! `step N: full|partial, B bytes, W chains written, D chains deleted`; a full step
//! caused by drift (see below) ends its line with ` (drift)`.
//!
//! `--drift-check SECONDS` (a decimal, `0` for every step) sets how often a sync
//! checks that the tables still hold svcnat's canaries and jump rules
//! ([`Syncer::with_drift_check`]; the library's default without the flag); a step
//! that finds them gone is a full sync even if the state did not change.
//! `--step-on-stdin` reads one line from stdin before each state after the first,
//! so another program can act between steps (stdout is flushed after every step
//! line); end of input ends the run, exit 0.
//!
//! Bad input (checked for every file before anything is applied): one line on stderr,
//! exit 2. An executor failure: the binary, exit status and stderr on stderr, exit 1.
//!
//! `--cleanup` (no STATE.json needed) instead removes what svcnat wrote in the
//! current network namespace, as kube-proxy's `--cleanup` does: the jump rules from
//! the built-in chains and svcnat's chains, in filter and nat of `--ip-family` (both
//! families when it is not given),
//! leaving every other rule. One line on stdout,
//! `cleanup: J jump rules removed, C chains removed, K chains kept`, exit 0.

mod common;

use common::{Arg, CommandLine, ProxyFlags, bad_input};
use std::io::{BufRead, Write};
use std::time::Duration;

use svcnat::exec::{Backend, DryRun, Executor, IptablesRestore};
use svcnat::sync::{FullReason, SyncReport, Syncer};

const USAGE: &str = "usage: sync [COMPILE FLAGS] [--apply] [--backend nft|legacy] [--drift-check SECONDS] [--step-on-stdin] STATE.json [STATE.json ...] | sync [--backend nft|legacy] [--ip-family ipv4|ipv6] --cleanup";

/// How the steps are run.
#[derive(Debug, Default, Clone, Copy)]
struct Steps {
    /// `--drift-check`: `None` keeps the library's default.
    drift_check: Option<Duration>,
    /// `--step-on-stdin`.
    on_stdin: bool,
}

fn main() {
    let mut flags = ProxyFlags::default();
    let mut apply = false;
    let mut clean = false;
    let mut steps = Steps::default();
    let mut backend = Backend::Auto;
    let mut files = Vec::new();
    let mut args = CommandLine::from_env();
    while let Some(arg) = args.next().unwrap_or_else(|e| bad_input("sync", &e)) {
        let flag = match arg {
            Arg::Value(file) => {
                files.push(file);
                continue;
            }
            Arg::Flag(flag) => flag,
        };
        match flags.take(&flag, &mut args) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => bad_input("sync", &e),
        }
        match flag.as_str() {
            // A value joined to `--help` is ignored, as it always was.
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            // `--apply=false` is a dry run and `--apply=true` applies, as every
            // other boolean flag reads its value (the value used to be ignored, so
            // `--apply=false` applied: a surprise no one should meet in a kernel).
            "--apply" => apply = args.switch(&flag).unwrap_or_else(|e| bad_input("sync", &e)),
            "--cleanup" => clean = args.switch(&flag).unwrap_or_else(|e| bad_input("sync", &e)),
            "--step-on-stdin" => {
                steps.on_stdin = args.switch(&flag).unwrap_or_else(|e| bad_input("sync", &e));
            }
            "--drift-check" => {
                let v = args.value(&flag).unwrap_or_else(|e| bad_input("sync", &e));
                let seconds = v
                    .parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .unwrap_or_else(|| {
                        bad_input(
                            "sync",
                            &format!("--drift-check: {v:?} is not a number of seconds"),
                        )
                    });
                steps.drift_check = Some(seconds);
            }
            "--backend" => {
                let v = args.value(&flag).unwrap_or_else(|e| bad_input("sync", &e));
                // auto and system are accepted too (`Backend`'s names).
                backend = v.parse::<Backend>().unwrap_or_else(|_| {
                    bad_input(
                        "sync",
                        &format!("--backend: {v:?} is not nft, legacy, auto or system"),
                    )
                });
            }
            _ => {
                let typed = args.typed(&flag);
                bad_input("sync", &format!("unknown flag {typed:?}; {USAGE}"))
            }
        }
    }
    if clean {
        // Both families unless one is named: a dual-stack node wrote both.
        let families = if flags.family_given {
            vec![flags.family]
        } else {
            vec![svcnat::model::IpFamily::Ipv4, svcnat::model::IpFamily::Ipv6]
        };
        cleanup(backend, &families);
        return;
    }
    if files.is_empty() {
        bad_input("sync", &format!("no STATE.json given; {USAGE}"));
    }
    let config = flags.config().unwrap_or_else(|e| bad_input("sync", &e));
    // Every state is read and checked before anything is applied, and the
    // warnings are printed only when all of them pass.
    let mut warnings = Vec::new();
    let states: Vec<_> = files
        .iter()
        .map(|f| {
            let state =
                common::load_state(f, &mut warnings).unwrap_or_else(|e| bad_input("sync", &e));
            if let Err(e) = common::compile(f, &state, &config, flags.lenient, &mut warnings) {
                bad_input("sync", &e);
            }
            state
        })
        .collect();
    common::print_warnings(&warnings);
    if apply {
        run(IptablesRestore::new(backend), config, states, steps, false);
    } else {
        run(DryRun::default(), config, states, steps, true);
    }
}

fn run<E: Executor>(
    executor: E,
    config: svcnat::model::ProxyConfig,
    states: Vec<svcnat::model::ClusterState>,
    steps: Steps,
    print: bool,
) {
    let family = config.ip_family;
    let mut syncer =
        Syncer::new(executor, config).unwrap_or_else(|e| bad_input("sync", &e.to_string()));
    if let Some(period) = steps.drift_check {
        syncer = syncer.with_drift_check(Some(period));
    }
    let mut stdin = std::io::stdin().lock();
    for (i, state) in states.into_iter().enumerate() {
        if steps.on_stdin && i > 0 {
            let mut line = String::new();
            match stdin.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("sync: step {}: reading stdin: {e}", i + 1);
                    std::process::exit(1);
                }
            }
        }
        syncer.replace_state(state);
        let report: SyncReport = match syncer.sync() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("sync: step {}: {}", i + 1, e.to_string().replace('\n', " "));
                std::process::exit(1);
            }
        };
        println!(
            "step {}: {}, {} bytes, {} chains written, {} chains deleted{}",
            i + 1,
            if report.full { "full" } else { "partial" },
            report.bytes,
            report.payload.chains_written(),
            report.payload.chains_deleted(),
            if report.full_reason == Some(FullReason::Drift) {
                " (drift)"
            } else {
                ""
            }
        );
        if print {
            print!("{}", report.payload.to_text());
        } else if !report.stale_flows.is_empty()
            && let Err(e) = syncer
                .executor_mut()
                .clear_conntrack(family, &report.stale_flows)
        {
            eprintln!("sync: step {}: conntrack cleanup: {e}", i + 1);
        }
        // Whoever waits on this line (with `--step-on-stdin`) sees it now.
        let _ = std::io::stdout().flush();
    }
}

/// `--cleanup`: removes svcnat's jump rules and chains from the filter and nat
/// tables of the family, reading the kernel (no state files), and says what it did
/// on one line; exit 0, or 1 with the failure.
fn cleanup(backend: Backend, families: &[svcnat::model::IpFamily]) {
    let mut exec = IptablesRestore::new(backend);
    let mut all = svcnat::exec::Cleanup::default();
    for &family in families {
        match svcnat::exec::cleanup(&mut exec, family) {
            Ok(done) => {
                all.jumps_removed.extend(done.jumps_removed);
                all.chains_removed.extend(done.chains_removed);
                all.chains_kept.extend(done.chains_kept);
            }
            Err(e) => {
                eprintln!("sync: cleanup: {}", e.to_string().replace('\n', " "));
                std::process::exit(1);
            }
        }
    }
    println!(
        "cleanup: {} jump rules removed, {} chains removed, {} chains kept",
        all.jumps_removed.len(),
        all.chains_removed.len(),
        all.chains_kept.len()
    );
}
