//! What syncing a large cluster costs in the kernel: a first full sync of a generated
//! cluster into an empty network namespace with the real `iptables-restore`, a full
//! resync on top of those rules, and a one-endpoint partial sync, for the nft and the
//! legacy backend, then removing it all again (`svcnat::exec::cleanup`); the same for
//! the nftables mode with `--backend nftables|all` (see
//! [below](#--backend-nftables)). Prints one JSON object on stdout, and one progress
//! line per sync on stderr.
//!
//! ```text
//! sudo cargo run --release --features synthetic --example kernel_cost -- [--services S (10000)] \
//!     [--endpoints E (10)] [--mix cluster-ip|load-balancer] [--seed N (1)] \
//!     [--backend nft|legacy|both|nftables|all (both)] [--runs N (3)] [--no-resync] \
//!     [--no-cleanup] [--no-baseline] [--restore-pieces N (the executor's default; 0: one restore)] \
//!     [--nft-piece-operations N (the transport's default; 0: one transaction)] \
//!     [--nft-transport netlink|nft (netlink)]
//! ```
//!
//! `--backend`: `both` is nft then legacy (the iptables backends), `nftables` the
//! nftables mode alone, `all` nft, legacy and nftables, in that order; each has its
//! object in the JSON (`nft`, `legacy`, `nftables`).
//!
//! Needs root, `ip` (iproute2) and the chosen backends' `iptables-*-restore`,
//! `iptables-*-save` and `iptables-*` binaries (`nft` for nftables); without them it
//! prints one line on stderr and exits 1 (this is a measurement: it never skips). Bad
//! flags: one line on stderr, exit 2. Any failure of iptables or nft, or a kernel that
//! does not hold the rules the library compiled: one line on stderr, exit 1.
//!
//! The cluster is [`svcnat::synthetic`]'s, seen from its node `node-0`, IPv4. Each of
//! the `--runs` runs, per backend, creates its own network namespace
//! (`svcnat-cost-<pid>-<backend>-<run>`) and deletes it afterwards, also on an error
//! or a panic; every iptables command runs inside it through `ip netns exec`, so the
//! host's own tables are never touched. In each run:
//!
//! 1. `empty_restore`: an empty nat restore (`*nat` / `COMMIT`), the fixed cost of
//!    one `ip netns exec iptables-*-restore` in an empty namespace.
//! 2. `full`: a new `Syncer` with [`IptablesRestore`] loaded with the cluster, its first
//!    `sync()`: into the empty namespace, as a node's first sync. Afterwards
//!    `iptables-*-save -t nat` must show exactly the nat rules the library compiled
//!    (its chains plus the jump rules from the built-in chains), or the run fails.
//! 3. `partial`: one endpoint of one service moved (`synthetic::endpoint_change`, a
//!    different service every run), then `sync()`; afterwards the kernel must DNAT to
//!    the new address and no longer to the old one, with the rule count unchanged.
//! 4. `resync` (unless `--no-resync`): `request_full_sync()` then `sync()`, every
//!    chain rewritten on top of the rules already there (as after a failure, or
//!    kube-proxy's periodic resync).
//! 5. `cleanup` (unless `--no-cleanup`): [`svcnat::exec::cleanup`] on the loaded
//!    namespace, through the same executor, as kube-proxy's `--cleanup` would run on
//!    the node. Afterwards `iptables-*-save` of the nat and the filter table must
//!    show no chain svcnat wrote (any of the first sync's chains, or any `KUBE-`
//!    chain) but the two that cleanup keeps by design, `KUBE-MARK-MASQ` and
//!    `KUBE-FIREWALL`, and no rule in a built-in chain may jump to one of them;
//!    cleanup must keep no chain as reached by someone else's rule (nothing else
//!    writes to the namespace), or the run fails.
//!
//! Every figure is the median over the runs, in nanoseconds or bytes, per backend:
//!
//! | key | what |
//! |---|---|
//! | `*_sync_ns` | wall time of `Syncer::sync()`: compiling, planning, and every executor call |
//! | `*_restore_ns` | of that, inside the executor's `restore` (one `iptables-restore` run) |
//! | `*_save_ns` | of that, inside `save` (a full sync reads the nat table first, to find stale chains) |
//! | `*_jumps_ns` | of that, inside `ensure_jumps` (a full sync makes sure the jump rules are in place: one `iptables-save` per table, and one `iptables-restore` inserting those missing) |
//! | `*_bytes` | the restore payload |
//! | `rules_compiled`, `rules_in_kernel` | nat `-A` rules: compiled (chains, jumps and the drift canary) and read back after the full sync |
//! | `chains_in_kernel` | nat chains read back, built-in ones included |
//! | `drift_check_ns` | one drift check after the syncs ([`Executor::first_missing_rule`](svcnat::exec::Executor::first_missing_rule) over `sync::drift_rules`: the canaries and jump rules, which must all be found), as `Syncer::with_drift_check` makes it |
//! | `cleanup_ns` | wall time of `exec::cleanup` on the loaded namespace (nat and filter: a save of each table, a restore for each that holds svcnat's rules) |
//! | `cleanup_save_ns`, `cleanup_restore_ns` | of that, inside `save` and inside `restore` |
//! | `cleanup_bytes` | the restore payloads cleanup sent, added up |
//! | `cleanup_chains_removed`, `cleanup_jumps_removed` | what cleanup reports it removed: chains (both tables) and jump rules from the built-in chains |
//!
//! `partial_*` are null for a cluster without endpoints, `resync_*` with `--no-resync`,
//! `cleanup_*` with `--no-cleanup`.
//!
//! ## `--backend nftables`
//!
//! The same steps through an [`NftSyncer`](svcnat::sync::NftSyncer) over
//! [`NftCommand`](svcnat::exec::NftCommand) (`nft -f -`, behind `ip netns exec`),
//! in a namespace per run (`svcnat-cost-<pid>-nftables-<run>`), the table `ip
//! kube-proxy` of [`svcnat::compile::nftables`]. The `nftables` object has the
//! iptables backends' keys, each meaning the nearest thing, and a few of its own:
//!
//! | key | what |
//! |---|---|
//! | `empty_restore_ns` | one `nft -f` in the empty namespace ([`cleanup_transaction`](svcnat::sync::cleanup_transaction): `add table`, `delete table`, which leaves it empty) |
//! | `*_sync_ns` | wall time of `NftSyncer::sync()` |
//! | `*_restore_ns` | of that, inside the executor's `run`: every transaction of the sync (a netlink batch, or an `nft -f` with `--nft-transport nft`), added up |
//! | `*_save_ns` | of that, inside the listings (`list_chains`, `list_sets`, `list_maps`, ...: a full sync lists the table's objects first, to find stale ones) |
//! | `*_jumps_ns`, `cleanup_jumps_removed` | null: no jump rules in built-in chains |
//! | `*_bytes` | the `nft -f` text the sync sent ([`NftSyncReport::bytes`](svcnat::sync::NftSyncReport::bytes)); for cleanup, counted by the executor |
//! | `rules_compiled`, `chains_compiled` | rules and chains of the compiled table |
//! | `rules_in_kernel`, `chains_in_kernel` | read back after the full sync with `nft list table ip kube-proxy`; the table listed, read ([`svcnat::parse::nft`]) and made canonical must equal the compiled one, or the run fails |
//! | `list_table_ns` | that `nft list table` (a check, in no sync's figure) |
//! | `drift_check_ns` | the drift check: `NftSyncer`'s is private and made inside a sync, so this is a sync with nothing changed and the check due (its clock [`DEFAULT_DRIFT_CHECK`](svcnat::sync::DEFAULT_DRIFT_CHECK) ahead), made right after the full sync (before the partial one, so that no chain is stale yet and the clock ahead deletes nothing); the figure is the time inside its one `check` (`nft --check -f -`, or a netlink batch the kernel drops whole with `--nft-transport netlink`), which must find the table in place with nothing to send |
//! | `cleanup_ns` | wall time of [`nft_cleanup`](svcnat::sync::nft_cleanup) (one `nft -f` that deletes the table whole); afterwards `nft list tables` must not show it |
//! | `cleanup_restore_ns`, `cleanup_save_ns` | of that, inside `run` and inside the listings (none: 0) |
//! | `cleanup_chains_removed` | the chains the table held as the syncer last applied it, stale ones included (the table goes whole) |
//! | `one_transaction_ns` | the baseline: the compiled table as ONE `nft -f` transaction (the text a full plan sends, [`nft_full_plan`](svcnat::sync::nft_full_plan) with nothing listed), into a fresh namespace of its own (`svcnat-cost-<pid>-nftables-<run>-one`) after each run's; afterwards `nft list chains` must show every chain. Null with `--no-baseline`: at 10,000 services x 10 endpoints it takes minutes |
//! | `transport` | how the syncer's transactions reached the kernel (`--nft-transport`): `netlink` ([`NftNetlink`](svcnat::exec::NftNetlink), netlink batches without `nft`'s cache; the default) or `nft` ([`NftCommand`](svcnat::exec::NftCommand), `nft -f`). With netlink the drift check's `check` is a netlink batch the kernel drops whole; listings and the baseline use `nft` either way |
//! | `piece_operations` | the largest transaction the nftables syncer sends at once (`--nft-piece-operations`, else the transport's: [`NftNetlink::PIECE_OPERATIONS`](svcnat::exec::NftNetlink::PIECE_OPERATIONS) or [`DEFAULT_PIECE_OPERATIONS`](svcnat::sync::DEFAULT_PIECE_OPERATIONS) for `nft`; 0: never cut): a first sync or a full resync larger than that runs in pieces ([`NftPlan::pieces`](svcnat::sync::NftPlan::pieces)) |
//!
//! After the partial sync, `nft list chain` of the chains that DNAT to the moved
//! endpoint's new address, and of the chains that jump to them, must show what was
//! applied (at least one DNAT to the new address), and none of them, nor the chains
//! that DNATed to the old address (gone, or flushed as stale), may DNAT to the old
//! one.
//!
//! The top-level `machine` object says where the figures come from: CPU model,
//! cores, memory, OS, kernel (`uname -r`), the iptables and nft versions; `date` says
//! when (UTC, when the measurement started).
//!
//! Caveats:
//!
//! - Every time includes starting the processes (`ip netns exec`, which enters the
//!   namespace, then the iptables binary or `nft`); `empty_restore_ns` shows that floor.
//! - The two backends do different work for the same payload. Legacy's
//!   `iptables-restore` reads the whole table from the kernel as one blob, edits it in
//!   user space and writes the whole table back, so even a one-rule change costs time
//!   in proportion to the table, and so does each `iptables-legacy -C`/`-I` of a jump
//!   rule. nft's turns the payload into one nftables transaction, but with
//!   `--noflush` (which svcnat always passes) iptables-nft-restore 1.8.9 first puts the
//!   name of every chain the payload mentions into a sorted linked list, walked once
//!   per line, so a payload that writes every chain costs time in proportion to lines
//!   times chains: quadratic in the size of the cluster. [`IptablesRestore`] therefore
//!   cuts a large nft payload into pieces (`--restore-pieces`); sent whole
//!   (`--restore-pieces 0`), the nft first sync at 10,000 services with 10 endpoints
//!   each (110,000 chains) takes most of an hour, and a full resync as long again:
//!   use `--runs 1 --no-resync --no-cleanup` there. Cleanup sends its rule deletions
//!   apart from its chains, so that the chains' payload can be cut too.
//! - nftables: any `nft -f` or `nft --check` in a large table first reads nft's cache
//!   of the table back from the kernel (about 0.5 s at 10,000 services x 10
//!   endpoints), and the check after the full sync lists the whole table (about
//!   12 to 20 s there), outside every sync figure but not outside the run's wall time.
//! - Kernel cleanup of a deleted namespace's rules is asynchronous and may overlap the
//!   next run; other load on the machine shows in every figure.
//! - A process killed by a signal cannot delete its namespaces: remove leftovers with
//!   `ip netns del svcnat-cost-<pid>-…`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use svcnat::compile::JumpRule;
use svcnat::exec::{
    self, Backend, ExecError, Executor, IptablesRestore, RestoreFailed, RestoreOptions,
};
use svcnat::model::IpFamily;
use svcnat::ruleset::{NfacctCounter, Table};
use svcnat::sync::{StaleFlow, Syncer};
use svcnat::synthetic::{self, Spec};

#[path = "common/flags.rs"]
mod flags;
#[path = "kernel_cost/nftables.rs"]
mod nftables;
use flags::{CommandLine, SpecFlags};
#[path = "common/measure.rs"]
mod measure;
use measure::{Netns, date, machine, one_line};

const USAGE: &str = "usage: kernel_cost [--services S] [--endpoints E] [--mix cluster-ip|load-balancer] [--seed N] [--backend nft|legacy|both|nftables|all] [--runs N] [--no-resync] [--no-cleanup] [--no-baseline] [--restore-pieces N] [--nft-piece-operations N] [--nft-transport netlink|nft]";

fn main() {
    let args = Args::parse(CommandLine::from_env()).unwrap_or_else(|e| {
        eprintln!("kernel_cost: {e}; {USAGE}");
        std::process::exit(2)
    });
    if let Some(why) = missing_capability(&args.backends, args.nftables) {
        eprintln!("kernel_cost: cannot measure: {why}");
        std::process::exit(1);
    }
    // Every namespace guard is dropped inside `measure`, before any exit.
    match measure(&args) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("kernel_cost: {}", one_line(&e));
            std::process::exit(1);
        }
    }
}

#[derive(Debug)]
struct Args {
    spec: Spec,
    /// The iptables backends, measured in this order.
    backends: Vec<Backend>,
    /// True to measure the nftables mode too (after the iptables backends).
    nftables: bool,
    runs: usize,
    resync: bool,
    /// False with `--no-cleanup`.
    cleanup: bool,
    /// False with `--no-baseline`: no `one_transaction_ns` (nftables only).
    baseline: bool,
    /// `--restore-pieces N` (0: one restore); the executor's default when absent.
    pieces: Option<Option<usize>>,
    /// `--nft-piece-operations N`: the nftables syncer's largest transaction
    /// (0: never cut); the library's default when absent.
    nft_pieces: Option<usize>,
    /// `--nft-transport`: how the nftables syncer's transactions reach the
    /// kernel.
    nft_transport: NftTransport,
}

/// How the nftables mode's transactions reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NftTransport {
    /// [`NftNetlink`](svcnat::exec::NftNetlink): netlink batches (the default).
    Netlink,
    /// [`NftCommand`](svcnat::exec::NftCommand): `nft -f`.
    Nft,
}

impl NftTransport {
    fn as_str(self) -> &'static str {
        match self {
            NftTransport::Netlink => "netlink",
            NftTransport::Nft => "nft",
        }
    }
}

impl Args {
    fn parse(mut line: CommandLine) -> Result<Args, String> {
        let mut flags = SpecFlags::default();
        let mut backends = vec![Backend::Nft, Backend::Legacy];
        let mut nftables = false;
        let mut resync = true;
        let mut cleanup = true;
        let mut baseline = true;
        let mut pieces = None;
        let mut nft_pieces = None;
        let mut nft_transport = NftTransport::Netlink;
        while let Some(flag) = line.next_flag(USAGE)? {
            if flag == "--no-resync" && !line.has_joined() {
                resync = false;
                continue;
            }
            if flag == "--no-cleanup" && !line.has_joined() {
                cleanup = false;
                continue;
            }
            if flag == "--no-baseline" && !line.has_joined() {
                baseline = false;
                continue;
            }
            if flags.take(&flag, &mut line)? {
                continue;
            }
            match flag.as_str() {
                "--backend" => {
                    (backends, nftables) = match line.value(&flag)?.as_str() {
                        "nft" => (vec![Backend::Nft], false),
                        "legacy" => (vec![Backend::Legacy], false),
                        "both" => (vec![Backend::Nft, Backend::Legacy], false),
                        "nftables" => (vec![], true),
                        "all" => (vec![Backend::Nft, Backend::Legacy], true),
                        other => return Err(format!("--backend: unknown backend {other:?}")),
                    }
                }
                "--restore-pieces" => {
                    let v = line.value(&flag)?;
                    let n: usize = v
                        .parse()
                        .map_err(|_| format!("{flag}: {v:?} is not a number"))?;
                    pieces = Some((n > 0).then_some(n));
                }
                "--nft-piece-operations" => {
                    let v = line.value(&flag)?;
                    nft_pieces = Some(
                        v.parse()
                            .map_err(|_| format!("{flag}: {v:?} is not a number"))?,
                    );
                }
                "--nft-transport" => {
                    nft_transport = match line.value(&flag)?.as_str() {
                        "netlink" => NftTransport::Netlink,
                        "nft" => NftTransport::Nft,
                        other => {
                            return Err(format!("--nft-transport: unknown transport {other:?}"));
                        }
                    }
                }
                _ => return Err(format!("unexpected argument {:?}", line.typed(&flag))),
            }
        }
        let services = flags.services.unwrap_or(10_000);
        let endpoints = flags.endpoints.unwrap_or(10);
        let runs = flags.runs.unwrap_or(3);
        if services == 0 || services > 1_000_000 || endpoints > 1_000 {
            return Err("1 to 1000000 services and at most 1000 endpoints each".into());
        }
        if runs == 0 || runs > 100 {
            return Err("--runs: 1 to 100".into());
        }
        Ok(Args {
            spec: Spec::new(services, endpoints)
                .with_mix(flags.mix)
                .with_seed(flags.seed.unwrap_or(1)),
            backends,
            nftables,
            runs,
            resync,
            cleanup,
            baseline,
            pieces,
            nft_pieces,
            nft_transport,
        })
    }
}

fn name(backend: Backend) -> &'static str {
    match backend {
        Backend::Legacy => "legacy",
        _ => "nft",
    }
}

/// Why this machine cannot run the measurement, if it cannot.
fn missing_capability(backends: &[Backend], nftables: bool) -> Option<String> {
    if !measure::is_root() {
        return Some("not running as root (network namespaces, iptables and nft need it)".into());
    }
    let mut binaries = vec!["ip".to_owned()];
    for b in backends {
        for tool in ["", "-save", "-restore"] {
            binaries.push(format!("iptables-{}{tool}", name(*b)));
        }
    }
    if nftables {
        binaries.push("nft".to_owned());
    }
    measure::missing_binary(binaries.iter().map(String::as_str)).map(|bin| {
        let package = if bin == "nft" {
            "nftables"
        } else {
            "iptables iproute2"
        };
        format!("{bin} not found in PATH (apt-get install {package})")
    })
}

/// Forwards every call to `inner` and adds up the time spent in each kind.
#[derive(Debug, Default)]
struct Timed<E> {
    inner: E,
    restore: Duration,
    save: Duration,
    jumps: Duration,
    /// The restore payloads' bytes.
    restored: usize,
}

impl<E> Timed<E> {
    fn new(inner: E) -> Self {
        Timed {
            inner,
            restore: Duration::ZERO,
            save: Duration::ZERO,
            jumps: Duration::ZERO,
            restored: 0,
        }
    }

    /// The restore payloads' bytes so far, reset to zero.
    fn take_bytes(&mut self) -> usize {
        std::mem::take(&mut self.restored)
    }

    /// The times so far, reset to zero.
    fn take(&mut self) -> (Duration, Duration, Duration) {
        let t = (self.restore, self.save, self.jumps);
        (self.restore, self.save, self.jumps) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        t
    }
}

fn timed<T>(total: &mut Duration, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let out = f();
    *total += t0.elapsed();
    out
}

impl<E: Executor> Executor for Timed<E> {
    // Forwarded, so that each sync takes the inner executor's lock, as it would
    // unwrapped (its time counts in the sync's, not in restore, save or jumps).
    fn lock(&mut self) -> Result<svcnat::exec::SyncLock, ExecError> {
        self.inner.lock()
    }

    fn restore(
        &mut self,
        family: IpFamily,
        payload: &str,
        options: RestoreOptions,
    ) -> Result<(), ExecError> {
        let inner = &mut self.inner;
        self.restored += payload.len();
        timed(&mut self.restore, || {
            inner.restore(family, payload, options)
        })
    }

    // Forwarded, so that the inner executor commits pieces together as it would
    // unwrapped.
    fn restore_all(
        &mut self,
        family: IpFamily,
        payloads: &[&str],
        options: RestoreOptions,
    ) -> Result<(), RestoreFailed> {
        let inner = &mut self.inner;
        self.restored += payloads.iter().map(|p| p.len()).sum::<usize>();
        timed(&mut self.restore, || {
            inner.restore_all(family, payloads, options)
        })
    }

    fn save(&mut self, family: IpFamily, table: Table) -> Result<String, ExecError> {
        let inner = &mut self.inner;
        timed(&mut self.save, || inner.save(family, table))
    }

    fn ensure_jump(&mut self, family: IpFamily, jump: &JumpRule) -> Result<(), ExecError> {
        let inner = &mut self.inner;
        timed(&mut self.jumps, || inner.ensure_jump(family, jump))
    }

    // Forwarded, so that the inner executor's batched check is the one measured.
    fn ensure_jumps(&mut self, family: IpFamily, jumps: &[JumpRule]) -> Result<(), ExecError> {
        let inner = &mut self.inner;
        timed(&mut self.jumps, || inner.ensure_jumps(family, jumps))
    }

    fn ensure_nfacct(&mut self, counters: &[NfacctCounter]) -> Result<(), ExecError> {
        self.inner.ensure_nfacct(counters)
    }

    // Forwarded, so that the Syncer cuts payloads as it would unwrapped.
    fn chains_per_restore(&mut self, family: IpFamily) -> Option<usize> {
        self.inner.chains_per_restore(family)
    }
    fn chains_per_restore_for(&mut self, family: IpFamily, chains: usize) -> Option<usize> {
        self.inner.chains_per_restore_for(family, chains)
    }

    // Forwarded, so that the inner executor's one-restore check is the one measured.
    fn first_missing_rule(
        &mut self,
        family: IpFamily,
        rules: &[JumpRule],
    ) -> Result<Option<usize>, ExecError> {
        self.inner.first_missing_rule(family, rules)
    }

    fn clear_conntrack(&mut self, family: IpFamily, flows: &[StaleFlow]) -> Result<(), ExecError> {
        self.inner.clear_conntrack(family, flows)
    }
}

/// One sync's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    sync: Duration,
    restore: Duration,
    save: Duration,
    jumps: Duration,
    bytes: usize,
}

/// One cleanup's figures.
#[derive(Debug, Clone, Copy, Default)]
struct CleanupSample {
    total: Duration,
    restore: Duration,
    save: Duration,
    bytes: usize,
    chains_removed: usize,
    jumps_removed: usize,
}

/// One run's figures (`partial` is `None` without endpoints).
#[derive(Debug)]
struct Run {
    empty_restore: Duration,
    full: Sample,
    resync: Option<Sample>,
    partial: Option<Sample>,
    drift_check: Duration,
    cleanup: Option<CleanupSample>,
    rules_compiled: usize,
    rules_in_kernel: usize,
    chains_in_kernel: usize,
}

type Cost = Syncer<Timed<IptablesRestore>>;

fn measure(args: &Args) -> Result<Value, String> {
    let state = args.spec.build();
    let mut report = json!({
        "services": args.spec.services,
        "endpoints": args.spec.endpoints,
        "mix": args.spec.mix,
        "seed": args.spec.seed,
        "runs": args.runs,
        "full_sync": "first sync into a new, empty namespace, one per run",
        "date": date(),
        "machine": machine(),
    });
    for &backend in &args.backends {
        let mut runs = Vec::new();
        for run in 0..args.runs {
            let ns = Netns::new("kernel_cost", "cost", &format!("{}-{run}", name(backend)))?;
            runs.push(
                one_run(&ns, backend, &state, args, run)
                    .map_err(|e| format!("{} run {}: {e}", name(backend), run + 1))?,
            );
            // The namespace is deleted here, before the next run starts.
        }
        report[name(backend)] = summary(&runs);
    }
    if args.nftables {
        report["nftables"] = nftables::measure(args, &state)?;
    }
    Ok(report)
}

fn one_run(
    ns: &Netns,
    backend: Backend,
    state: &svcnat::model::ClusterState,
    args: &Args,
    run: usize,
) -> Result<Run, String> {
    let bin = |tool: &str| format!("iptables-{}{tool}", name(backend));
    let mut exec = IptablesRestore::new(backend).with_command_prefix(ns.prefix());
    if let Some(pieces) = args.pieces {
        exec = exec.with_restore_pieces(pieces);
    }
    let config = synthetic::config();
    let mut syncer: Cost =
        Syncer::new(Timed::new(exec), config.clone()).map_err(|e| e.to_string())?;

    // The floor: one process start, nothing to do.
    let t0 = Instant::now();
    syncer
        .executor_mut()
        .inner
        .restore(IpFamily::Ipv4, "*nat\nCOMMIT\n", RestoreOptions::default())
        .map_err(|e| e.to_string())?;
    let empty_restore = t0.elapsed();

    syncer.replace_state(state.clone());
    let full = full_sync(ns, &mut syncer, "full sync")?;

    // The kernel must hold what the library compiled.
    let applied = syncer
        .applied_ruleset()
        .ok_or("no applied ruleset after a successful sync")?;
    let jumps = svcnat::compile::jump_rules(&config).map_err(|e| e.to_string())?;
    // The chains' rules, the jump rules and the drift canary's rule.
    let canaries = svcnat::sync::canaries();
    let rules_compiled = applied.table(Table::Nat).map_or(0, |t| {
        t.chains.values().map(|c| c.rules.len()).sum::<usize>()
    }) + jumps
        .iter()
        .chain(&canaries)
        .filter(|j| j.table == Table::Nat)
        .count();
    // What svcnat wrote, by name, for the check after cleanup; the typed ruleset
    // is large (seconds to build at 30,000 services), so it is built once.
    let written: HashSet<String> = [Table::Nat, Table::Filter]
        .into_iter()
        .filter_map(|t| applied.table(t))
        .flat_map(|t| t.chains.keys().map(|c| c.to_string()))
        .chain(canaries.iter().map(|c| c.chain.to_string()))
        .collect();
    drop(applied);
    let saved = ns.run(&[&bin("-save"), "-t", "nat"])?;
    let (rules_in_kernel, chains_in_kernel) = count(&saved);
    if rules_in_kernel != rules_compiled {
        return Err(format!(
            "{} shows {rules_in_kernel} nat rules, the library compiled {rules_compiled}",
            bin("-save")
        ));
    }

    let partial = if args.spec.endpoints == 0 {
        None
    } else {
        let Moved {
            i,
            change,
            old,
            new,
        } = moved_endpoint(syncer.state(), args, run)?;
        let t0 = Instant::now();
        syncer.upsert_slice(change);
        let (mut sample, was_full) = syncer.timed_sync()?;
        sample.sync = t0.elapsed();
        if was_full {
            return Err("a one-endpoint change gave a full sync".into());
        }
        let saved = ns.run(&[&bin("-save"), "-t", "nat"])?;
        let (rules, _) = count(&saved);
        if !saved.contains(&format!("--to-destination {new}:"))
            || saved.contains(&format!("--to-destination {old}:"))
            || rules != rules_compiled
        {
            return Err(format!(
                "after moving an endpoint of {} from {old} to {new} the kernel does not show it ({rules} nat rules)",
                synthetic::service_name(i)
            ));
        }
        Cost::progress(ns, "partial sync", &sample);
        Some(sample)
    };

    // The drift check a sync makes (`Syncer::with_drift_check`): one restore of
    // `-C` lines for the canaries and jump rules, all of which must be found.
    let rules = svcnat::sync::drift_rules(syncer.config()).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let missing = syncer
        .executor_mut()
        .first_missing_rule(IpFamily::Ipv4, &rules)
        .map_err(|e| e.to_string())?;
    let drift_check = t0.elapsed();
    if let Some(i) = missing {
        return Err(format!(
            "the drift check finds {} {} missing after a sync",
            rules[i].chain, rules[i].rule
        ));
    }
    eprintln!(
        "kernel_cost: {}: drift check: {:.3} s",
        ns.name,
        drift_check.as_secs_f64()
    );

    let resync = resync(ns, &mut syncer, args)?;

    let cleanup = if args.cleanup {
        let sample = timed_cleanup(ns, &mut syncer, backend, &written)?;
        eprintln!(
            "kernel_cost: {}: cleanup: {:.3} s, restore {:.3} s, save {:.3} s, {} chains removed",
            ns.name,
            sample.total.as_secs_f64(),
            sample.restore.as_secs_f64(),
            sample.save.as_secs_f64(),
            sample.chains_removed
        );
        Some(sample)
    } else {
        None
    };

    Ok(Run {
        empty_restore,
        full,
        resync,
        partial,
        drift_check,
        cleanup,
        rules_compiled,
        rules_in_kernel,
        chains_in_kernel,
    })
}

/// The `partial` step's change: service `i`'s first endpoint moved from `old`
/// to `new` (`change` is its slice afterwards).
struct Moved {
    i: usize,
    change: svcnat::model::EndpointSlice,
    old: IpAddr,
    new: IpAddr,
}

/// The endpoint run `run` moves: of a different service every run.
fn moved_endpoint(
    state: &svcnat::model::ClusterState,
    args: &Args,
    run: usize,
) -> Result<Moved, String> {
    let i = (run * 7919 + 17) % args.spec.services;
    let change = synthetic::endpoint_change(state, i, run as u64 + 1)
        .ok_or("a service without endpoints")?;
    let old = state
        .slices_of(&synthetic::service_key(i))
        .next()
        .and_then(|s| s.endpoints.first())
        .ok_or("a service without endpoints")?
        .address;
    let new = change.endpoints[0].address;
    Ok(Moved {
        i,
        change,
        old,
        new,
    })
}

/// What the steps every backend makes need of its syncer.
trait Measured {
    /// Runs one sync; its figures, and whether it was full.
    fn timed_sync(&mut self) -> Result<(Sample, bool), String>;

    /// Makes the next sync a full one.
    fn request_full_sync(&mut self);

    /// One line on stderr per sync, so that a long measurement shows where it is.
    fn progress(ns: &Netns, what: &str, s: &Sample);
}

impl Measured for Cost {
    fn timed_sync(&mut self) -> Result<(Sample, bool), String> {
        self.executor_mut().take();
        let t0 = Instant::now();
        let report = self.sync().map_err(|e| e.to_string())?;
        let sync = t0.elapsed();
        let (restore, save, jumps) = self.executor_mut().take();
        let sample = Sample {
            sync,
            restore,
            save,
            jumps,
            bytes: report.bytes,
        };
        Ok((sample, report.full))
    }

    fn request_full_sync(&mut self) {
        Syncer::request_full_sync(self);
    }

    fn progress(ns: &Netns, what: &str, s: &Sample) {
        eprintln!(
            "kernel_cost: {}: {what}: {:.3} s, restore {:.3} s, save {:.3} s, jumps {:.3} s, {} bytes",
            ns.name,
            s.sync.as_secs_f64(),
            s.restore.as_secs_f64(),
            s.save.as_secs_f64(),
            s.jumps.as_secs_f64(),
            s.bytes
        );
    }
}

/// A sync that must be a full one (`what`: which, for the messages).
fn full_sync<S: Measured>(ns: &Netns, syncer: &mut S, what: &str) -> Result<Sample, String> {
    let (sample, was_full) = syncer.timed_sync()?;
    if !was_full {
        return Err(format!("the {what} was a partial one"));
    }
    S::progress(ns, what, &sample);
    Ok(sample)
}

/// The `resync` step (unless `--no-resync`): `request_full_sync()`, then a sync.
fn resync<S: Measured>(ns: &Netns, syncer: &mut S, args: &Args) -> Result<Option<Sample>, String> {
    if !args.resync {
        return Ok(None);
    }
    syncer.request_full_sync();
    full_sync(ns, syncer, "full resync").map(Some)
}

/// The chains cleanup leaves in place by design (kubelet writes them too).
const KEPT_BY_CLEANUP: [&str; 2] = ["KUBE-MARK-MASQ", "KUBE-FIREWALL"];

/// Runs `exec::cleanup` on the namespace the syncer loaded, then checks with
/// `iptables-*-save` that svcnat's chains and jump rules are gone.
/// `written`: the chains of the first sync, nat and filter.
fn timed_cleanup(
    ns: &Netns,
    syncer: &mut Cost,
    backend: Backend,
    written: &HashSet<String>,
) -> Result<CleanupSample, String> {
    // A later sync's new chains are named `KUBE-…` like every chain svcnat writes
    // with the default config.
    let is_ours = |chain: &str| written.contains(chain) || chain.starts_with("KUBE-");

    let executor = syncer.executor_mut();
    executor.take();
    executor.take_bytes();
    let t0 = Instant::now();
    let report = exec::cleanup(executor, IpFamily::Ipv4).map_err(|e| format!("cleanup: {e}"))?;
    let total = t0.elapsed();
    let (restore, save, _) = executor.take();
    let bytes = executor.take_bytes();
    if let Some((table, chain)) = report.chains_kept.first() {
        return Err(format!(
            "cleanup kept {} chains as reached by rules svcnat did not write, {table} {chain} first; nothing else writes to this namespace",
            report.chains_kept.len()
        ));
    }

    let bin = format!("iptables-{}-save", name(backend));
    for table in [Table::Nat, Table::Filter] {
        let saved = ns.run(&[&bin, "-t", table.as_str()])?;
        let (builtin, left) = chains_of(&saved);
        let left: Vec<&str> = left
            .into_iter()
            .filter(|c| is_ours(c) && !KEPT_BY_CLEANUP.contains(c))
            .collect();
        if let Some(first) = left.first() {
            return Err(format!(
                "after cleanup {bin} -t {table} still shows {} of svcnat's chains, {first} first",
                left.len()
            ));
        }
        let jumps: Vec<&str> = saved
            .lines()
            .filter(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some("-A")
                    && words.next().is_some_and(|c| builtin.contains(&c))
                    && jump_target(l).is_some_and(is_ours)
            })
            .collect();
        if let Some(first) = jumps.first() {
            return Err(format!(
                "after cleanup {bin} -t {table} still shows {} jump rules to svcnat's chains in built-in chains, {first:?} first",
                jumps.len()
            ));
        }
    }
    Ok(CleanupSample {
        total,
        restore,
        save,
        bytes,
        chains_removed: report.chains_removed.len(),
        jumps_removed: report.jumps_removed.len(),
    })
}

/// The built-in chains (declared with a policy) and the user chains (policy `-`)
/// an `iptables-save` dump of one table declares.
fn chains_of(saved: &str) -> (Vec<&str>, Vec<&str>) {
    let mut builtin = Vec::new();
    let mut user = Vec::new();
    for line in saved.lines() {
        let Some(rest) = line.strip_prefix(':') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        if let (Some(chain), Some(policy)) = (words.next(), words.next()) {
            if policy == "-" {
                user.push(chain);
            } else {
                builtin.push(chain);
            }
        }
    }
    (builtin, user)
}

/// The chain or target an `-A` line jumps or goes to.
fn jump_target(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    while let Some(word) = words.next() {
        if matches!(word, "-j" | "--jump" | "-g" | "--goto") {
            return words.next();
        }
    }
    None
}

/// `-A` rules and chains in `iptables-save` output.
fn count(saved: &str) -> (usize, usize) {
    let rules = saved.lines().filter(|l| l.starts_with("-A ")).count();
    let chains = saved.lines().filter(|l| l.starts_with(':')).count();
    (rules, chains)
}

fn summary(runs: &[Run]) -> Value {
    let ns = |f: &dyn Fn(&Run) -> Duration| median(runs.iter().map(|r| nanos(f(r))).collect());
    let size = |f: &dyn Fn(&Run) -> usize| median(runs.iter().map(f).collect());
    // The median of an optional sample: `None` when no run has it.
    let opt = |which: fn(&Run) -> Option<&Sample>, f: &dyn Fn(&Sample) -> u64| {
        let v: Vec<u64> = runs.iter().filter_map(which).map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    let partial = |f: &dyn Fn(&Sample) -> u64| opt(|r| r.partial.as_ref(), f);
    let resync = |f: &dyn Fn(&Sample) -> u64| opt(|r| r.resync.as_ref(), f);
    let cleanup = |f: &dyn Fn(&CleanupSample) -> u64| {
        let v: Vec<u64> = runs
            .iter()
            .filter_map(|r| r.cleanup.as_ref())
            .map(f)
            .collect();
        (!v.is_empty()).then(|| median(v))
    };
    json!({
        "empty_restore_ns": ns(&|r| r.empty_restore),
        "full_sync_ns": ns(&|r| r.full.sync),
        "full_restore_ns": ns(&|r| r.full.restore),
        "full_save_ns": ns(&|r| r.full.save),
        "full_jumps_ns": ns(&|r| r.full.jumps),
        "full_bytes": size(&|r| r.full.bytes),
        "rules_compiled": size(&|r| r.rules_compiled),
        "rules_in_kernel": size(&|r| r.rules_in_kernel),
        "chains_in_kernel": size(&|r| r.chains_in_kernel),
        "partial_sync_ns": partial(&|s| nanos(s.sync)),
        "partial_restore_ns": partial(&|s| nanos(s.restore)),
        "partial_bytes": partial(&|s| s.bytes as u64),
        "drift_check_ns": ns(&|r| r.drift_check),
        "resync_sync_ns": resync(&|s| nanos(s.sync)),
        "resync_restore_ns": resync(&|s| nanos(s.restore)),
        "resync_save_ns": resync(&|s| nanos(s.save)),
        "resync_jumps_ns": resync(&|s| nanos(s.jumps)),
        "resync_bytes": resync(&|s| s.bytes as u64),
        "cleanup_ns": cleanup(&|c| nanos(c.total)),
        "cleanup_save_ns": cleanup(&|c| nanos(c.save)),
        "cleanup_restore_ns": cleanup(&|c| nanos(c.restore)),
        "cleanup_bytes": cleanup(&|c| c.bytes as u64),
        "cleanup_chains_removed": cleanup(&|c| c.chains_removed as u64),
        "cleanup_jumps_removed": cleanup(&|c| c.jumps_removed as u64),
    })
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().try_into().unwrap_or(u64::MAX)
}

fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort_unstable();
    v[v.len() / 2]
}
