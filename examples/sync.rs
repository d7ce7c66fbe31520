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
//!
//! ## `--proxy-mode nftables`
//!
//! ```text
//! cargo run --example sync --features k8s -- --proxy-mode nftables [COMPILE FLAGS] [--apply] \
//!     [--nft-transport nft|netlink] [--drift-check SECONDS] [--step-on-stdin] STATE.json [STATE.json ...]
//! cargo run --example sync --features k8s -- --proxy-mode nftables [--ip-family ipv4|ipv6] --cleanup
//! ```
//!
//! The same run through an [`NftSyncer`] over the `kube-proxy` table of
//! `--ip-family` ([`NftCommand`] with `--apply`; without it an [`NftFake`], which
//! keeps the table in memory so that later steps are partial, and each step's
//! transaction text, the stale chains' deletion first, is printed after its step
//! line). The step line has the same shape, from the [`NftSyncReport`]:
//!
//! - `B bytes`: the `nft -f` text of both transactions ([`NftSyncReport::bytes`]);
//! - `W chains written`: the chains the main transaction adds (`add chain`, then
//!   written whole); stale chains it only flushes are not counted;
//! - `D chains deleted`: the stale chains deleted
//!   ([`NftSyncReport::stale_chains_deleted`]). A chain no longer wanted is
//!   flushed in its step and deleted by the first step at least
//!   [`STALE_CHAIN_AGE`](svcnat::sync::STALE_CHAIN_AGE) later (kube-proxy's
//!   wait for kernels before 6.2), so it is counted there, not where it went;
//! - ` (drift)`: the drift check found the table gone or flushed
//!   ([`NftSyncer::with_drift_check`]).
//!
//! With `--apply`, `--nft-transport netlink` sends each transaction as a netlink
//! batch ([`NftNetlink`]: no `nft` process, no reading of the whole table
//! first); the default, `nft`, runs `nft -f` ([`NftCommand`]). The step lines are
//! the same either way. `--nft-transport` without `--proxy-mode nftables` is
//! refused (exit 2).
//!
//! `--backend` names an iptables binary and means nothing here: it is refused
//! (exit 2). The stale UDP/SCTP flows are deleted with `conntrack` as in
//! iptables mode. `--cleanup` runs [`nft_cleanup`] for `--ip-family` (both
//! families when it is not given) and prints the same line with `0 jump rules
//! removed` and `0 chains kept` (the table goes whole, and nftables needs no jump
//! rules in foreign chains); `C` counts the chains the tables held, listed just
//! before.

mod common;

use common::{Arg, CommandLine, ProxyFlags, ProxyMode, bad_input};
use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::time::Duration;

use svcnat::exec::{
    Backend, DryRun, Executor, IptablesRestore, NftCommand, NftExecutor, NftFake, NftNetlink,
};
use svcnat::model::{ClusterState, IpFamily};
use svcnat::nft::{Family, Name, Operation};
use svcnat::sync::{
    DEFAULT_DRIFT_CHECK, FullReason, NFT_TABLE, NftSyncReport, NftSyncer, StaleFlow, SyncReport,
    Syncer, nft_cleanup,
};

const USAGE: &str = "usage: sync [COMPILE FLAGS] [--apply] [--backend nft|legacy] [--drift-check SECONDS] [--step-on-stdin] STATE.json [STATE.json ...] | sync [--backend nft|legacy] [--ip-family ipv4|ipv6] --cleanup | sync --proxy-mode nftables [COMPILE FLAGS] [--apply] [--nft-transport nft|netlink] [--drift-check SECONDS] [--step-on-stdin] STATE.json [STATE.json ...] | sync --proxy-mode nftables [--ip-family ipv4|ipv6] --cleanup";

/// How the steps are run.
#[derive(Debug, Default, Clone, Copy)]
struct Steps {
    /// `--drift-check`: `None` keeps the library's default.
    drift_check: Option<Duration>,
    /// `--step-on-stdin`.
    on_stdin: bool,
}

fn main() {
    let mut flags = ProxyFlags::with_nftables();
    let mut apply = false;
    let mut clean = false;
    let mut steps = Steps::default();
    let mut backend = Backend::Auto;
    let mut backend_given = false;
    let (mut netlink, mut transport_given) = (false, false);
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
            "--nft-transport" => {
                let v = args.value(&flag).unwrap_or_else(|e| bad_input("sync", &e));
                netlink = match v.as_str() {
                    "netlink" => true,
                    "nft" => false,
                    _ => bad_input(
                        "sync",
                        &format!("--nft-transport: {v:?} is not netlink or nft"),
                    ),
                };
                transport_given = true;
            }
            "--backend" => {
                let v = args.value(&flag).unwrap_or_else(|e| bad_input("sync", &e));
                // auto and system are accepted too (`Backend`'s names).
                backend_given = true;
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
    let nftables = flags.proxy_mode == ProxyMode::Nftables;
    if !nftables && transport_given {
        bad_input(
            "sync",
            "--nft-transport: how nftables transactions reach the kernel, which needs --proxy-mode nftables",
        );
    }
    if nftables && backend_given {
        bad_input(
            "sync",
            "--backend: names an iptables binary, which --proxy-mode nftables does not use",
        );
    }
    if clean {
        // Both families unless one is named: a dual-stack node wrote both.
        let families = if flags.family_given {
            vec![flags.family]
        } else {
            vec![IpFamily::Ipv4, IpFamily::Ipv6]
        };
        if nftables {
            cleanup_nft(&families);
        } else {
            cleanup(backend, &families);
        }
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
            let compiled = if nftables {
                common::compile_nftables(f, &state, &config, flags.lenient, &mut warnings).map(drop)
            } else {
                common::compile(f, &state, &config, flags.lenient, &mut warnings).map(drop)
            };
            if let Err(e) = compiled {
                bad_input("sync", &e);
            }
            state
        })
        .collect();
    common::print_warnings(&warnings);
    let error = |e: svcnat::CompileError| -> ! { bad_input("sync", &e.to_string()) };
    // Without `--drift-check`, the library's default (the same in both modes).
    let drift = Some(steps.drift_check.unwrap_or(DEFAULT_DRIFT_CHECK));
    let family = config.ip_family;
    let mut syncer: Box<dyn Stepper> = match (nftables, apply) {
        (false, true) => Box::new(
            Syncer::new(IptablesRestore::new(backend), config)
                .unwrap_or_else(|e| error(e))
                .with_drift_check(drift),
        ),
        (false, false) => Box::new(
            Syncer::new(DryRun::default(), config)
                .unwrap_or_else(|e| error(e))
                .with_drift_check(drift),
        ),
        (true, true) if netlink => Box::new(
            NftSyncer::new(NftNetlink::new(), config)
                .unwrap_or_else(|e| error(e))
                .with_drift_check(drift),
        ),
        (true, true) => Box::new(
            NftSyncer::new(NftCommand::new(), config)
                .unwrap_or_else(|e| error(e))
                .with_drift_check(drift),
        ),
        (true, false) => Box::new(
            NftSyncer::new(NftFake::new(), config)
                .unwrap_or_else(|e| error(e))
                .with_drift_check(drift),
        ),
    };
    run(syncer.as_mut(), family, states, steps, !apply);
}

/// One step's facts, in either mode.
struct Step {
    full: bool,
    full_reason: Option<FullReason>,
    bytes: usize,
    /// `W chains written`.
    written: usize,
    /// `D chains deleted`.
    deleted: usize,
    /// What the step sent (printed by the dry run).
    text: String,
    stale_flows: Vec<StaleFlow>,
    /// A failure the step went on after, for stderr.
    note: Option<String>,
}

/// What the step loop needs of a syncer: a [`Syncer`] or an [`NftSyncer`].
trait Stepper {
    /// Replaces the state and syncs; the error as one line.
    fn step(&mut self, state: ClusterState) -> Result<Step, String>;
    /// Deletes stale conntrack flows.
    fn clear_flows(&mut self, family: IpFamily, flows: &[StaleFlow]) -> Result<(), String>;
}

impl<E: Executor> Stepper for Syncer<E> {
    fn step(&mut self, state: ClusterState) -> Result<Step, String> {
        self.replace_state(state);
        let report: SyncReport = self.sync().map_err(|e| e.to_string())?;
        Ok(Step {
            full: report.full,
            full_reason: report.full_reason,
            bytes: report.bytes,
            written: report.payload.chains_written(),
            deleted: report.payload.chains_deleted(),
            text: report.payload.to_text(),
            stale_flows: report.stale_flows,
            note: None,
        })
    }

    fn clear_flows(&mut self, family: IpFamily, flows: &[StaleFlow]) -> Result<(), String> {
        self.executor_mut()
            .clear_conntrack(family, flows)
            .map_err(|e| e.to_string())
    }
}

/// The step line's facts from an [`NftSyncReport`]: chains written are the
/// chains the main transaction adds (each is flushed and written whole; a stale
/// chain is only flushed), chains deleted the stale chains deleted.
impl<E: NftExecutor> Stepper for NftSyncer<E> {
    fn step(&mut self, state: ClusterState) -> Result<Step, String> {
        self.replace_state(state);
        let report: NftSyncReport = self.sync().map_err(|e| e.to_string())?;
        let added: BTreeSet<&Name> = report
            .transaction
            .operations()
            .iter()
            .filter_map(|op| match op {
                Operation::AddChain { name, .. } => Some(name),
                _ => None,
            })
            .collect();
        let mut text = report
            .delete_stale
            .as_ref()
            .map(|tx| tx.to_text())
            .unwrap_or_default();
        text.push_str(&report.transaction.to_text());
        Ok(Step {
            full: report.full,
            full_reason: report.full_reason,
            bytes: report.bytes,
            written: added.len(),
            deleted: report.stale_chains_deleted.len(),
            text,
            note: report
                .delete_stale_error
                .map(|e| format!("stale chains kept: {e}")),
            stale_flows: report.stale_flows,
        })
    }

    /// nftables has no conntrack of its own: the `conntrack` tool, as the
    /// iptables executor runs it.
    fn clear_flows(&mut self, family: IpFamily, flows: &[StaleFlow]) -> Result<(), String> {
        IptablesRestore::new(Backend::Auto)
            .clear_conntrack(family, flows)
            .map_err(|e| e.to_string())
    }
}

/// The steps; `print`: the dry run, which prints what each step sends.
fn run(
    syncer: &mut dyn Stepper,
    family: IpFamily,
    states: Vec<ClusterState>,
    steps: Steps,
    print: bool,
) {
    let mut stdin = std::io::stdin().lock();
    for (i, state) in states.into_iter().enumerate() {
        if !steps.wait(&mut stdin, i) {
            return;
        }
        let step = syncer.step(state).unwrap_or_else(|e| {
            eprintln!("sync: step {}: {}", i + 1, e.replace('\n', " "));
            std::process::exit(1);
        });
        println!(
            "step {}: {}, {} bytes, {} chains written, {} chains deleted{}",
            i + 1,
            if step.full { "full" } else { "partial" },
            step.bytes,
            step.written,
            step.deleted,
            if step.full_reason == Some(FullReason::Drift) {
                " (drift)"
            } else {
                ""
            }
        );
        if let Some(note) = &step.note {
            eprintln!("sync: step {}: {}", i + 1, note.replace('\n', " "));
        }
        if print {
            print!("{}", step.text);
        } else if !step.stale_flows.is_empty()
            && let Err(e) = syncer.clear_flows(family, &step.stale_flows)
        {
            eprintln!("sync: step {}: conntrack cleanup: {e}", i + 1);
        }
        // Whoever waits on this line (with `--step-on-stdin`) sees it now.
        let _ = std::io::stdout().flush();
    }
}

impl Steps {
    /// With `--step-on-stdin`, reads one line before step `i` (0-based) if it is
    /// not the first; false at the end of input (the run ends, exit 0).
    fn wait(&self, stdin: &mut impl BufRead, i: usize) -> bool {
        if !self.on_stdin || i == 0 {
            return true;
        }
        let mut line = String::new();
        match stdin.read_line(&mut line) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => {
                eprintln!("sync: step {}: reading stdin: {e}", i + 1);
                std::process::exit(1);
            }
        }
    }
}

/// `--cleanup` in nftables mode: [`nft_cleanup`] of the families' `kube-proxy`
/// tables, after counting their chains; one line, exit 0, or 1 with the failure.
fn cleanup_nft(families: &[IpFamily]) {
    let mut nft = NftCommand::new();
    let families: Vec<Family> = families
        .iter()
        .map(|f| match f {
            IpFamily::Ipv4 => Family::Ip,
            IpFamily::Ipv6 => Family::Ip6,
        })
        .collect();
    let fail = |e: svcnat::exec::NftExecError| -> ! {
        eprintln!("sync: cleanup: {}", e.to_string().replace('\n', " "));
        std::process::exit(1)
    };
    let table = Name::new(NFT_TABLE).unwrap_or_else(|e| bad_input("sync", &e.to_string()));
    let mut chains = 0;
    for &family in &families {
        chains += nft
            .list_chains(family, &table)
            .unwrap_or_else(|e| fail(e))
            .len();
    }
    nft_cleanup(&mut nft, &families).unwrap_or_else(|e| fail(e));
    println!("cleanup: 0 jump rules removed, {chains} chains removed, 0 chains kept");
}

/// `--cleanup`: removes svcnat's jump rules and chains from the filter and nat
/// tables of the family, reading the kernel (no state files), and says what it did
/// on one line; exit 0, or 1 with the failure.
fn cleanup(backend: Backend, families: &[IpFamily]) {
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
