//! `--backend nftables`: the same runs as the iptables backends', through an
//! [`NftSyncer`] over [`NftCommand`] (`nft -f -` behind `ip netns exec NS`), and
//! the baseline, the whole first sync as one `nft -f` transaction. The
//! keys it reports are the crate documentation's (`examples/kernel_cost.rs`).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use svcnat::exec::{NftCommand, NftExecError, NftExecutor, NftNetlink, SyncLock};
use svcnat::model::ClusterState;
use svcnat::nft::{Chain, Element, Family, MapElement, Name, Ruleset, Stmt, Transaction};
use svcnat::parse::nft::{canonicalize, parse_listing};
use svcnat::sync::{
    DEFAULT_DRIFT_CHECK, DEFAULT_PIECE_OPERATIONS, NftSyncer, cleanup_transaction, nft_cleanup,
    nft_full_plan,
};
use svcnat::synthetic;

use super::{
    Args, CleanupSample, Measured, Moved, Netns, NftTransport, Run, Sample, full_sync, median,
    moved_endpoint, nanos, resync, summary, timed,
};

/// Forwards every call to `inner` and adds up the time spent in each kind.
#[derive(Debug)]
struct NftTimed<E> {
    inner: E,
    /// Inside `run`: every transaction sent.
    run: Duration,
    /// Inside the listings (`list_chains`, `list_sets`, ...).
    list: Duration,
    /// Inside `check` (the drift check is one).
    check: Duration,
    /// `check` calls.
    checks: usize,
    /// Whether `run` counts the bytes of the text it sends: off during syncs,
    /// whose reports say (rendering a first sync's text again takes time).
    count_bytes: bool,
    /// The bytes `run` sent while `count_bytes` was on.
    bytes: usize,
}

impl<E> NftTimed<E> {
    fn new(inner: E) -> Self {
        NftTimed {
            inner,
            run: Duration::ZERO,
            list: Duration::ZERO,
            check: Duration::ZERO,
            checks: 0,
            count_bytes: false,
            bytes: 0,
        }
    }

    /// The figures so far (run, list, check, checks), reset to zero.
    fn take(&mut self) -> (Duration, Duration, Duration, usize) {
        let t = (self.run, self.list, self.check, self.checks);
        (self.run, self.list, self.check, self.checks) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0);
        t
    }
}

impl<E: NftExecutor> NftExecutor for NftTimed<E> {
    // Forwarded, so that each sync takes the inner executor's lock, as it would
    // unwrapped (its time counts in the sync's only).
    fn lock(&mut self) -> Result<SyncLock, NftExecError> {
        self.inner.lock()
    }

    fn piece_operations(&self) -> Option<usize> {
        self.inner.piece_operations()
    }

    fn run(&mut self, tx: &Transaction) -> Result<(), NftExecError> {
        if self.count_bytes {
            self.bytes += tx.to_text().len();
        }
        let inner = &mut self.inner;
        timed(&mut self.run, || inner.run(tx))
    }

    fn check(&mut self, tx: &Transaction) -> Result<(), NftExecError> {
        self.checks += 1;
        let inner = &mut self.inner;
        timed(&mut self.check, || inner.check(tx))
    }

    fn list_chains(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
        let inner = &mut self.inner;
        timed(&mut self.list, || inner.list_chains(family, table))
    }

    fn list_sets(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
        let inner = &mut self.inner;
        timed(&mut self.list, || inner.list_sets(family, table))
    }

    fn list_maps(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
        let inner = &mut self.inner;
        timed(&mut self.list, || inner.list_maps(family, table))
    }

    fn list_set_elements(
        &mut self,
        family: Family,
        table: &Name,
        set: &Name,
    ) -> Result<Vec<Element>, NftExecError> {
        let inner = &mut self.inner;
        timed(&mut self.list, || {
            inner.list_set_elements(family, table, set)
        })
    }

    fn list_map_elements(
        &mut self,
        family: Family,
        table: &Name,
        map: &Name,
    ) -> Result<Vec<MapElement>, NftExecError> {
        let inner = &mut self.inner;
        timed(&mut self.list, || {
            inner.list_map_elements(family, table, map)
        })
    }

    fn list_table(&mut self, family: Family, table: &Name) -> Result<String, NftExecError> {
        let inner = &mut self.inner;
        timed(&mut self.list, || inner.list_table(family, table))
    }
}

type NftCost = NftSyncer<NftTimed<Box<dyn NftExecutor>>>;

/// What a run measures besides the iptables backends' keys.
#[derive(Debug)]
struct Extra {
    /// `nft list table` after the first sync (the check's, outside every sync figure).
    list_table: Duration,
    /// The baseline: the first sync's ruleset as one `nft -f` (`None` with `--no-baseline`).
    one_transaction: Option<Duration>,
}

/// The `nftables` object of the report: `--runs` runs, each in a namespace of
/// its own, then the baseline in another (unless `--no-baseline`).
pub(super) fn measure(args: &Args, state: &ClusterState) -> Result<Value, String> {
    let config = synthetic::config();
    // What the kernel must hold after the first sync, and the baseline's text.
    let compiled = svcnat::compile::nftables(state, &config).map_err(|e| e.to_string())?;
    let canonical = canonicalize(&compiled);
    let (chains_compiled, _) = size(&compiled);
    let mut runs = Vec::new();
    let mut extras = Vec::new();
    for run in 0..args.runs {
        let failed = |e: String| format!("nftables run {}: {e}", run + 1);
        let ns = Netns::new("kernel_cost", "cost", &format!("nftables-{run}"))?;
        let (one, extra) = one_run(&ns, state, &compiled, &canonical, args, run).map_err(failed)?;
        // The run's namespace goes before the baseline's comes.
        drop(ns);
        let one_transaction = if args.baseline {
            let ns = Netns::new("kernel_cost", "cost", &format!("nftables-{run}-one"))?;
            Some(one_transaction(&ns, &compiled, chains_compiled).map_err(failed)?)
        } else {
            None
        };
        runs.push(one);
        extras.push(Extra {
            one_transaction,
            ..extra
        });
    }
    let mut report = summary(&runs);
    // nftables has no jump rules in built-in chains to ensure or remove.
    for key in ["full_jumps_ns", "resync_jumps_ns", "cleanup_jumps_removed"] {
        report[key] = Value::Null;
    }
    report["chains_compiled"] = chains_compiled.into();
    let transport_default = match args.nft_transport {
        NftTransport::Netlink => NftNetlink::PIECE_OPERATIONS,
        NftTransport::Nft => DEFAULT_PIECE_OPERATIONS,
    };
    report["piece_operations"] = args.nft_pieces.unwrap_or(transport_default).into();
    report["transport"] = args.nft_transport.as_str().into();
    report["list_table_ns"] = median(extras.iter().map(|x| nanos(x.list_table)).collect()).into();
    let baseline: Vec<u64> = extras
        .iter()
        .filter_map(|x| x.one_transaction)
        .map(nanos)
        .collect();
    report["one_transaction_ns"] = (!baseline.is_empty()).then(|| median(baseline)).into();
    Ok(report)
}

/// Chains and rules of a ruleset.
fn size(ruleset: &Ruleset) -> (usize, usize) {
    let rules = ruleset.chains.values().map(|c| c.rules.len()).sum();
    (ruleset.chains.len(), rules)
}

fn one_run(
    ns: &Netns,
    state: &ClusterState,
    compiled: &Ruleset,
    canonical: &Ruleset,
    args: &Args,
    run: usize,
) -> Result<(Run, Extra), String> {
    let config = synthetic::config();
    let (family, table) = (compiled.family, compiled.table.as_str());
    let command = NftCommand::new().with_command_prefix(ns.prefix());
    let exec: Box<dyn NftExecutor> = match args.nft_transport {
        NftTransport::Nft => Box::new(command),
        NftTransport::Netlink => Box::new(NftNetlink::in_netns(&ns.name).with_command(command)),
    };
    let mut syncer: NftCost = NftSyncer::new(NftTimed::new(exec), config)
        .map_err(|e| e.to_string())?
        .with_drift_check(Some(DEFAULT_DRIFT_CHECK));
    if let Some(n) = args.nft_pieces {
        syncer = syncer.with_piece_operations(n);
    }

    // The floor: one `nft -f` in an empty namespace, which leaves it empty.
    let t0 = Instant::now();
    syncer
        .executor_mut()
        .inner
        .run(&cleanup_transaction(family))
        .map_err(|e| e.to_string())?;
    let empty_restore = t0.elapsed();

    syncer.replace_state(state.clone());
    let full = full_sync(ns, &mut syncer, "full sync")?;

    // The kernel must hold what the library compiled.
    let t0 = Instant::now();
    let listing = ns.run(&["nft", "list", "table", family.as_str(), table])?;
    let list_table = t0.elapsed();
    eprintln!(
        "kernel_cost: {}: nft list table: {:.3} s",
        ns.name,
        list_table.as_secs_f64()
    );
    let held = parse_listing(&listing).map_err(|e| format!("nft list table: {e}"))?;
    let (chains_in_kernel, rules_in_kernel) = size(&held);
    let (chains_compiled, rules_compiled) = size(compiled);
    if let Some(what) = first_difference(&canonicalize(&held), canonical) {
        return Err(format!(
            "nft list table {} {table} shows {chains_in_kernel} chains and {rules_in_kernel} rules, \
             the library compiled {chains_compiled} and {rules_compiled}; {what}",
            family.as_str()
        ));
    }
    drop((listing, held));

    let drift_check = timed_drift_check(ns, &mut syncer)?;

    let partial = if args.spec.endpoints == 0 {
        None
    } else {
        let moved = moved_endpoint(syncer.state(), args, run)?;
        let before = syncer.applied().ok_or("nothing applied after a sync")?;
        let old_chains = dnat_chains(&before.ruleset, moved.old);
        let t0 = Instant::now();
        syncer.upsert_slice(moved.change.clone());
        let (mut sample, was_full) = syncer.timed_sync()?;
        sample.sync = t0.elapsed();
        if was_full {
            return Err("a one-endpoint change gave a full sync".into());
        }
        check_moved(ns, &syncer, &moved, &old_chains)?;
        NftCost::progress(ns, "partial sync", &sample);
        Some(sample)
    };

    let resync = resync(ns, &mut syncer, args)?;

    let cleanup = if args.cleanup {
        let sample = timed_cleanup(ns, &mut syncer, compiled)?;
        eprintln!(
            "kernel_cost: {}: cleanup: {:.3} s, in run {:.3} s, {} chains removed",
            ns.name,
            sample.total.as_secs_f64(),
            sample.restore.as_secs_f64(),
            sample.chains_removed
        );
        Some(sample)
    } else {
        None
    };

    Ok((
        Run {
            empty_restore,
            full,
            resync,
            partial,
            drift_check,
            cleanup,
            rules_compiled,
            rules_in_kernel,
            chains_in_kernel,
        },
        Extra {
            list_table,
            one_transaction: None,
        },
    ))
}

/// Where the table the kernel `held` first differs from the one `compiled`
/// (both canonical), if it does.
fn first_difference(held: &Ruleset, compiled: &Ruleset) -> Option<String> {
    let chains = compiled.chains.keys().chain(held.chains.keys());
    if let Some(name) = chains
        .filter(|n| held.chains.get(*n) != compiled.chains.get(*n))
        .min()
    {
        let state = match (held.chains.get(name), compiled.chains.get(name)) {
            (None, _) => "missing",
            (_, None) => "not compiled",
            _ => "different",
        };
        return Some(format!("chain {name} is {state} in the kernel"));
    }
    if held.sets != compiled.sets || held.maps != compiled.maps {
        return Some("the sets or maps differ".into());
    }
    (held != compiled).then(|| "the tables differ".into())
}

impl Measured for NftCost {
    fn timed_sync(&mut self) -> Result<(Sample, bool), String> {
        self.executor_mut().take();
        let t0 = Instant::now();
        let report = self.sync().map_err(|e| e.to_string())?;
        let sync = t0.elapsed();
        let (run, list, _, _) = self.executor_mut().take();
        let sample = Sample {
            sync,
            restore: run,
            save: list,
            jumps: Duration::ZERO,
            bytes: report.bytes,
        };
        Ok((sample, report.full))
    }

    fn request_full_sync(&mut self) {
        NftSyncer::request_full_sync(self);
    }

    fn progress(ns: &Netns, what: &str, s: &Sample) {
        eprintln!(
            "kernel_cost: {}: {what}: {:.3} s, in run {:.3} s, listing {:.3} s, {} bytes",
            ns.name,
            s.sync.as_secs_f64(),
            s.restore.as_secs_f64(),
            s.save.as_secs_f64(),
            s.bytes
        );
    }
}

/// The drift check's time: the `NftSyncer` makes it inside a sync (the check
/// is private), so this is a sync with nothing changed whose check is due (its
/// clock set [`DEFAULT_DRIFT_CHECK`] ahead), and the figure is the time inside
/// the one `check` call it makes. Made before any chain is stale, so that the
/// clock ahead deletes nothing.
fn timed_drift_check(ns: &Netns, syncer: &mut NftCost) -> Result<Duration, String> {
    syncer.executor_mut().take();
    let report = syncer
        .sync_at(Instant::now() + DEFAULT_DRIFT_CHECK)
        .map_err(|e| e.to_string())?;
    let (_, _, check, checks) = syncer.executor_mut().take();
    if let Some(error) = &report.drift_check_error {
        return Err(format!("the drift check failed: {error}"));
    }
    if let Some(what) = &report.drifted {
        return Err(format!("the drift check finds drift after a sync: {what}"));
    }
    if report.full || report.operations != 0 || checks != 1 {
        return Err(format!(
            "a sync with nothing changed and a drift check due made {checks} checks and sent {} operations ({})",
            report.operations,
            if report.full { "full" } else { "partial" }
        ));
    }
    eprintln!(
        "kernel_cost: {}: drift check: {:.3} s",
        ns.name,
        check.as_secs_f64()
    );
    Ok(check)
}

/// Whether a rule of `chain` DNATs to `address`.
fn dnats_to(chain: &Chain, address: IpAddr) -> bool {
    chain.rules.iter().any(|r| {
        r.stmts
            .iter()
            .any(|s| matches!(s, Stmt::DnatTo(to) if to.ip() == address))
    })
}

/// The chains with a rule that DNATs to `address`.
fn dnat_chains(ruleset: &Ruleset, address: IpAddr) -> Vec<Name> {
    ruleset
        .chains
        .iter()
        .filter(|(_, c)| dnats_to(c, address))
        .map(|(name, _)| name.clone())
        .collect()
}

/// `nft list chain FAMILY TABLE NAME` of `ruleset`'s table, read; `None` if
/// there is no such chain.
fn list_chain(ns: &Netns, ruleset: &Ruleset, chain: &Name) -> Result<Option<Chain>, String> {
    let (family, table) = (ruleset.family.as_str(), ruleset.table.as_str());
    match ns.run(&["nft", "list", "chain", family, table, chain.as_str()]) {
        Ok(text) => parse_listing(&text)
            .map(|mut r| r.chains.shift_remove(chain))
            .map_err(|e| format!("nft list chain {family} {table} {chain}: {e}")),
        Err(e) if e.contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

/// `chain` as the one chain of `ruleset`'s table, canonical.
fn canonical_chain(ruleset: &Ruleset, name: &Name, chain: &Chain) -> Ruleset {
    let mut one = Ruleset::new(ruleset.family, ruleset.table.clone(), None);
    one.chains.insert(name.clone(), chain.clone());
    canonicalize(&one)
}

/// After the partial sync: the chains that DNAT to the new address, and those
/// that jump to them, hold in the kernel what was applied, with at least one
/// DNAT to the new address; none of them, nor any chain that DNATed to the
/// old address before (deleted, or flushed as stale), DNATs to the old one.
fn check_moved(
    ns: &Netns,
    syncer: &NftCost,
    moved: &Moved,
    old_chains: &[Name],
) -> Result<(), String> {
    let service = synthetic::service_name(moved.i);
    let (old, new) = (moved.old, moved.new);
    let after = &syncer
        .applied()
        .ok_or("nothing applied after a sync")?
        .ruleset;
    let new_chains = dnat_chains(after, new);
    if new_chains.is_empty() {
        return Err(format!(
            "after moving an endpoint of {service} from {old} to {new} the library compiled no DNAT to {new}"
        ));
    }
    let referrers = after.chains.iter().filter(|(_, c)| {
        c.rules
            .iter()
            .flat_map(|r| r.stmts.iter().flat_map(|s| s.chains()))
            .any(|t| new_chains.contains(t))
    });
    let mut wanted: Vec<&Name> = new_chains.iter().collect();
    wanted.extend(referrers.map(|(name, _)| name));
    let mut listed = Vec::new();
    for chain in wanted {
        let held = list_chain(ns, after, chain)?;
        let same = held.as_ref().is_some_and(|held| {
            canonical_chain(after, chain, held)
                == canonical_chain(after, chain, &after.chains[chain])
        });
        if !same {
            return Err(format!(
                "after moving an endpoint of {service} from {old} to {new} the kernel's chain {chain} is not the one applied"
            ));
        }
        listed.extend(held);
    }
    let dnats_new = listed.iter().any(|c| dnats_to(c, new));
    for chain in old_chains {
        listed.extend(list_chain(ns, after, chain)?);
    }
    if !dnats_new || listed.iter().any(|c| dnats_to(c, old)) {
        return Err(format!(
            "after moving an endpoint of {service} from {old} to {new} the kernel does not show it"
        ));
    }
    Ok(())
}

/// Runs `nft_cleanup` on the namespace the syncer loaded, then checks with `nft
/// list tables` that the table is gone.
fn timed_cleanup(
    ns: &Netns,
    syncer: &mut NftCost,
    compiled: &Ruleset,
) -> Result<CleanupSample, String> {
    // The table goes whole: what it held, as the syncer last applied it.
    let chains_removed = syncer
        .applied()
        .map_or(0, |a| a.ruleset.chains.len() + a.stale.len());
    let executor = syncer.executor_mut();
    executor.take();
    executor.count_bytes = true;
    executor.bytes = 0;
    let t0 = Instant::now();
    let result = nft_cleanup(executor, &[compiled.family]);
    let total = t0.elapsed();
    executor.count_bytes = false;
    result.map_err(|e| format!("cleanup: {e}"))?;
    let (restore, save, _, _) = executor.take();
    let bytes = std::mem::take(&mut executor.bytes);

    let tables = ns.run(&["nft", "list", "tables"])?;
    let ours = format!(
        "table {} {}",
        compiled.family.as_str(),
        compiled.table.as_str()
    );
    if tables.lines().any(|l| l.trim() == ours) {
        return Err(format!("after cleanup nft list tables still shows {ours}"));
    }
    Ok(CleanupSample {
        total,
        restore,
        save,
        bytes,
        chains_removed,
        jumps_removed: 0,
    })
}

/// The baseline: the whole compiled ruleset as one `nft -f` transaction, the
/// text a full plan sends, into the empty namespace `ns`; the time inside
/// `run`. Afterwards the table must hold every chain.
fn one_transaction(ns: &Netns, compiled: &Ruleset, chains: usize) -> Result<Duration, String> {
    let tx = nft_full_plan(compiled, None, Instant::now()).transaction;
    let mut nft = NftCommand::new().with_command_prefix(ns.prefix());
    let t0 = Instant::now();
    nft.run(&tx).map_err(|e| format!("one transaction: {e}"))?;
    let took = t0.elapsed();
    let held = nft
        .list_chains(compiled.family, &compiled.table)
        .map_err(|e| e.to_string())?
        .len();
    if held != chains {
        return Err(format!(
            "one transaction: nft list chains shows {held} chains, the library compiled {chains}"
        ));
    }
    eprintln!(
        "kernel_cost: {}: one transaction: {:.3} s, {} operations",
        ns.name,
        took.as_secs_f64(),
        tx.len()
    );
    Ok(took)
}
