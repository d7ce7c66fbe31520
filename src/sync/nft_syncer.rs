//! The [`NftSyncer`]: the [`Syncer`](super::Syncer)'s shape for the nftables
//! mode. It owns the desired state, what the last sync applied
//! ([`NftApplied`]) and an [`NftExecutor`], and drives [`nft_plan`]: the first
//! sync, and any sync after a failure, is full ([`nft_full_plan`] over what the
//! executor lists); later ones send what changed.
//!
//! A full sync compiles the whole table; an incremental one recompiles only the
//! services changed since the last sync (added, changed, removed, or whose
//! slices changed), as the iptables [`Syncer`](super::Syncer) does, and changes
//! the applied table in place: it stays equal to what a whole compile
//! ([`nftables_lenient`](crate::compile::nftables_lenient)) of the state gives,
//! down to which service keeps a cluster IP or map key two services claim and
//! the order of every set's and map's elements (its chains', sets' and maps'
//! order, which no output depends on, may differ). The plan is made from the
//! changed chains, sets and elements alone, and is the one [`nft_plan`] makes
//! from the whole tables. So the CPU cost of an incremental sync grows with the
//! change, not with the table (PERFORMANCE.md). The stale UDP/SCTP flows are
//! the iptables mode's, computed from the model per changed service (they
//! depend on the services and endpoints, not on the backend).
//!
//! [`nft_plan`]: super::nft_plan

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::desired::Desired;
use super::nft_pieces::DEFAULT_PIECE_OPERATIONS;
use super::nft_plan::{NftApplied, NftListed, NftPlan, delta_chains, delta_plan, nft_full_plan};
use super::stale::{stale_flows_of, take_flows};
use super::syncer::{DEFAULT_DRIFT_CHECK, FullReason, RETRY_AFTER};
use crate::compile::check_nftables_config;
use crate::compile::incremental::{Counter, Incremental, NftTable, PortFlows, Rules};
use crate::error::CompileError;
use crate::exec::{NftExecError, NftExecutor, RefusalKind};
use crate::flows::StaleFlow;
use crate::model::{ClusterState, EndpointSlice, ProxyConfig, Service, ServiceKey, SliceKey};
use crate::nft::{Family, Name, Operation, Ruleset, Transaction};

/// The name of the table svcnat's nftables mode writes, in each family (as
/// kube-proxy's).
pub const NFT_TABLE: &str = crate::compile::NFT_TABLE;

/// What one [`NftSyncer::sync`] did: what [`SyncReport`](super::SyncReport) says
/// for the iptables mode, where it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NftSyncReport {
    /// True for a full sync.
    pub full: bool,
    /// Why the sync was full (`None` for an incremental one).
    pub full_reason: Option<FullReason>,
    /// For a full sync caused by drift: what the check found.
    pub drifted: Option<String>,
    /// A drift check that was due but could not be made: the sync went on
    /// without it, and the next one checks again.
    pub drift_check_error: Option<String>,
    /// The transaction that deleted stale chains, run first, if there was one.
    pub delete_stale: Option<Transaction>,
    /// Why the stale chains' deletion was refused, if it was: the chains stay,
    /// flushed, and the next sync is full (it lists and deletes them later).
    pub delete_stale_error: Option<String>,
    /// The main transaction (empty if nothing changed; then nothing was run).
    pub transaction: Transaction,
    /// How many transactions the main one was run as: it is cut into pieces
    /// when larger than the piece size ([`NftSyncer::with_piece_operations`],
    /// else the executor's [`NftExecutor::piece_operations`]; see
    /// [`NftPlan::pieces`]); 0 when it was empty.
    pub pieces: usize,
    /// Operations sent: both transactions'.
    pub operations: usize,
    /// Bytes of `nft -f` text sent: both transactions'.
    pub bytes: usize,
    /// Chains this sync flushed as stale (deleted by a later sync, at least
    /// [`STALE_CHAIN_AGE`](super::STALE_CHAIN_AGE) later).
    pub stale_chains_flushed: Vec<Name>,
    /// Stale chains this sync deleted.
    pub stale_chains_deleted: Vec<Name>,
    /// Conntrack entries the caller should delete.
    pub stale_flows: Vec<StaleFlow>,
    /// Services left out because they are invalid, with the reason: every
    /// invalid service of the state, as a whole compile reports them, in every
    /// sync (incremental or not) while it is in the state.
    pub rejected: Vec<CompileError>,
    /// Parts of the state ignored, as in [`SyncReport::warnings`](super::SyncReport::warnings)
    /// (all of the state's).
    pub warnings: Vec<CompileError>,
}

impl fmt::Display for NftSyncReport {
    /// One line for a log: `full (REASON)|partial, B bytes, O operations, F
    /// stale chains flushed, D stale chains deleted`, then the stale flows,
    /// rejected services and warnings when there are any.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.full, self.full_reason) {
            (true, Some(reason)) => write!(f, "full ({reason})")?,
            (true, None) => f.write_str("full")?,
            (false, _) => f.write_str("partial")?,
        }
        write!(
            f,
            ", {} bytes, {} operations, {} stale chains flushed, {} stale chains deleted",
            self.bytes,
            self.operations,
            self.stale_chains_flushed.len(),
            self.stale_chains_deleted.len(),
        )?;
        for (count, what) in [
            (self.stale_flows.len(), "stale flows"),
            (self.rejected.len(), "services rejected"),
            (self.warnings.len(), "warnings"),
        ] {
            if count > 0 {
                write!(f, ", {count} {what}")?;
            }
        }
        Ok(())
    }
}

/// Why an [`NftSyncer::sync`] failed. The syncer is left ready: its next sync
/// is a full one.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NftSyncError {
    /// The executor failed (nothing of the refused transaction was applied).
    #[error(transparent)]
    Exec(#[from] NftExecError),
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] CompileError),
}

impl NftSyncError {
    /// When to call [`NftSyncer::sync`] again: after [`RETRY_AFTER`] for an
    /// executor failure; `None` for an invalid config, which no retry mends.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            NftSyncError::Exec(_) => Some(RETRY_AFTER),
            NftSyncError::Config(_) => None,
        }
    }
}

/// What a drift check found.
enum DriftCheck {
    NotDue,
    InPlace,
    Drifted(String),
    Failed(String),
}

/// Owns the desired state, what the last sync applied and an [`NftExecutor`];
/// turns changes into nftables transactions. One `NftSyncer` serves one family's
/// table (`ip kube-proxy` or `ip6 kube-proxy`, from `config.ip_family`).
///
/// ```
/// use svcnat::exec::NftFake;
/// use svcnat::model::*;
/// use svcnat::sync::NftSyncer;
///
/// let config = ProxyConfig::default().with_cluster_cidrs(["10.0.0.0/8".parse().unwrap()]);
/// let mut syncer = NftSyncer::new(NftFake::new(), config)?;
/// syncer.upsert_service(
///     Service::cluster_ip("ns1", "svc1", "172.30.0.41".parse().unwrap())
///         .with_port(ServicePort::tcp("p80", 80)),
/// );
/// assert!(syncer.sync()?.full);
/// syncer.upsert_slice(
///     EndpointSlice::new("ns1", "svc1", "svc1-a", IpFamily::Ipv4)
///         .with_port(EndpointPort::tcp("p80", 80))
///         .with_endpoint(Endpoint::ready("10.180.0.1".parse().unwrap())),
/// );
/// let second = syncer.sync()?;
/// assert!(!second.full);
/// assert!(syncer.executor().dump().contains("dnat to 10.180.0.1:80"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct NftSyncer<E: NftExecutor> {
    executor: E,
    config: ProxyConfig,
    desired: Desired,
    applied: Option<NftApplied>,
    /// The applied table service by service, for incremental syncs (`None`
    /// when `applied` is).
    table: Option<NftTable>,
    pending_full: Option<FullReason>,
    full_resync_period: Option<Duration>,
    last_full: Option<Instant>,
    drift_check: Option<Duration>,
    last_drift_check: Option<Instant>,
    piece_operations: Option<usize>,
    /// Each service's ports as last compiled, for its stale flows.
    flows: BTreeMap<ServiceKey, Vec<PortFlows>>,
    /// Stale flows of syncs that failed, reported with the next successful one.
    pending_flows: Vec<StaleFlow>,
    /// The iptables compiler, for the services' flows only.
    compiler: Incremental,
    rules: Rules,
}

impl<E: NftExecutor> NftSyncer<E> {
    /// A syncer with an empty cluster state; its first sync is full.
    ///
    /// # Errors
    /// An invalid config.
    pub fn new(executor: E, config: ProxyConfig) -> Result<Self, CompileError> {
        let mut compiler = Incremental::new();
        let rules = flow_rules(&mut compiler, &config)?;
        Ok(NftSyncer {
            executor,
            config,
            desired: Desired::default(),
            applied: None,
            table: None,
            pending_full: Some(FullReason::FirstSync),
            full_resync_period: None,
            last_full: None,
            drift_check: Some(DEFAULT_DRIFT_CHECK),
            last_drift_check: None,
            piece_operations: None,
            flows: BTreeMap::new(),
            pending_flows: Vec::new(),
            compiler,
            rules,
        })
    }

    /// Makes every sync at least `period` after the last full one a full one.
    pub fn with_full_resync_period(mut self, period: Option<Duration>) -> Self {
        self.full_resync_period = period;
        self
    }

    /// How often a sync checks that the table still holds what was applied:
    /// `Some(period)` checks in the first sync at least `period` after the last
    /// check or full sync (`Duration::ZERO`: in every sync), `None` never. The
    /// default is [`DEFAULT_DRIFT_CHECK`].
    ///
    /// The check is one [`NftExecutor::check`] of a transaction that deletes the
    /// chain a base chain's rule jumps to first (`services`, in the table
    /// svcnat compiles): the kernel refuses it as busy while the jump is there.
    /// If the table was deleted (not found) or flushed (the deletion would
    /// succeed), the sync is a full one ([`FullReason::Drift`]). A chain or
    /// element another program deleted inside the table is not seen.
    ///
    /// Measured through `nft` 1.0.6 on kernel 6.18 in a table of 10,000
    /// services x 2 endpoints (30,000 chains): the check takes 0.12 s, `nft
    /// list chains` 0.10 s (and would miss a flush: the chains stay), `nft list
    /// table` 3.8 s. The check is what nft's cache read costs, as for any
    /// transaction in that table. Through [`NftNetlink`](crate::exec::NftNetlink),
    /// whose check is a netlink batch the kernel drops whole, it took 5 to 8 ms
    /// at 10,000 services x 10 endpoints (110,000 chains).
    pub fn with_drift_check(mut self, period: Option<Duration>) -> Self {
        self.drift_check = period;
        self
    }

    /// The largest transaction a sync sends at once, in operations (0: never
    /// cut). By default the executor's choice
    /// ([`NftExecutor::piece_operations`]: 20,000 for
    /// [`NftNetlink`](crate::exec::NftNetlink)), else
    /// [`DEFAULT_PIECE_OPERATIONS`] (measured for `nft -f`). A larger one, as a first
    /// sync or a full resync of a large cluster is, runs as several
    /// transactions in an order whose every state in between is safe
    /// ([`NftPlan::pieces`]); if one of them fails, the kernel holds the pieces
    /// before it and the next sync is a full one.
    pub fn with_piece_operations(mut self, operations: usize) -> Self {
        self.piece_operations = Some(operations);
        self
    }

    /// The desired state.
    pub fn state(&self) -> &ClusterState {
        &self.desired.state
    }

    /// The executor.
    pub fn executor(&self) -> &E {
        &self.executor
    }

    /// The executor, mutably (for example to script a failure in tests).
    pub fn executor_mut(&mut self) -> &mut E {
        &mut self.executor
    }

    /// The config.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// What the last sync applied, if the kernel is known to hold it.
    pub fn applied(&self) -> Option<&NftApplied> {
        self.applied.as_ref()
    }

    /// Replaces the config; the next sync is a full one.
    ///
    /// # Errors
    /// An invalid config; the old one stays.
    pub fn set_config(&mut self, config: ProxyConfig) -> Result<(), CompileError> {
        self.rules = flow_rules(&mut self.compiler, &config)?;
        self.config = config;
        self.desired.dirty.extend(
            self.desired
                .state
                .services()
                .map(Service::key)
                .chain(self.flows.keys().cloned()),
        );
        self.require_full(FullReason::ConfigChanged);
        Ok(())
    }

    /// Makes the next sync a full one.
    pub fn request_full_sync(&mut self) {
        self.require_full(FullReason::Requested);
    }

    fn require_full(&mut self, reason: FullReason) {
        self.pending_full.get_or_insert(reason);
    }

    /// Adds or replaces a Service.
    pub fn upsert_service(&mut self, service: Service) {
        self.desired.upsert_service(service);
    }

    /// Deletes a Service.
    pub fn remove_service(&mut self, key: &ServiceKey) {
        self.desired.remove_service(key);
    }

    /// Adds or replaces an EndpointSlice. A slice whose service label changed
    /// moves: the service it left changes too.
    pub fn upsert_slice(&mut self, slice: EndpointSlice) {
        self.desired.upsert_slice(slice);
    }

    /// Deletes the EndpointSlice `name` of service `key`.
    pub fn remove_slice(&mut self, key: &ServiceKey, name: &str) {
        self.desired.remove_slice(key, name);
    }

    /// Deletes the EndpointSlice with this namespace and name, whichever service
    /// it belonged to; returns it.
    pub fn remove_slice_by_key(&mut self, key: &SliceKey) -> Option<EndpointSlice> {
        self.desired.remove_slice_by_key(key)
    }

    /// Replaces the whole state; the services that differ are marked changed.
    pub fn replace_state(&mut self, state: ClusterState) {
        self.desired.replace_state(state);
    }

    /// Brings the table in step with the state now.
    ///
    /// # Errors
    /// See [`NftSyncer::sync_at`].
    pub fn sync(&mut self) -> Result<NftSyncReport, NftSyncError> {
        self.sync_at(Instant::now())
    }

    /// Brings the table in step with the state; `now` decides whether the
    /// periodic full resync and the drift check are due, and when stale chains
    /// were flushed (they are deleted by the first sync at least
    /// [`STALE_CHAIN_AGE`](super::STALE_CHAIN_AGE) later). Holds the executor's
    /// lock for the whole sync.
    ///
    /// A full sync lists the table's chains, sets and maps (a listing that fails
    /// is planned as an empty one: nothing the ruleset does not name is
    /// touched), and writes the whole ruleset over it. An incremental one first
    /// runs the deletion of the stale chains old enough, on its own (refused:
    /// the chains stay flushed, the sync goes on, and the next sync is full),
    /// then the main transaction. A main transaction larger than the piece
    /// size ([`Self::with_piece_operations`]) runs in pieces
    /// ([`NftPlan::pieces`]).
    ///
    /// # Errors
    /// The lock not taken, or a piece of the main transaction refused (the
    /// pieces before it applied, nothing of it); an invalid config. The next sync is a full one: call `sync()`
    /// again after [`NftSyncError::retry_after`].
    pub fn sync_at(&mut self, now: Instant) -> Result<NftSyncReport, NftSyncError> {
        let report = self.sync_inner(now)?;
        if report.full {
            self.last_full = Some(now);
            self.last_drift_check = Some(now);
        }
        Ok(report)
    }

    fn sync_inner(&mut self, now: Instant) -> Result<NftSyncReport, NftSyncError> {
        let _lock = self
            .executor
            .lock()
            .inspect_err(|_| self.require_full(FullReason::AfterFailure))?;
        if self.applied.is_none() {
            self.require_full(FullReason::FirstSync);
        }
        if let (Some(period), Some(last)) = (self.full_resync_period, self.last_full)
            && now.saturating_duration_since(last) >= period
        {
            self.require_full(FullReason::ResyncPeriod);
        }
        let mut drifted = None;
        let mut drift_check_error = None;
        if self.pending_full.is_none() {
            match self.check_drift(now) {
                DriftCheck::Drifted(what) => {
                    drifted = Some(what);
                    self.require_full(FullReason::Drift);
                }
                DriftCheck::Failed(error) => drift_check_error = Some(error),
                DriftCheck::NotDue | DriftCheck::InPlace => {}
            }
        }

        let dirty = std::mem::take(&mut self.desired.dirty);
        let stale_flows = self.compute_flows(&dirty);

        // A full sync compiles the whole table; an incremental one recompiles
        // the changed services into the applied table, in place.
        let full_reason = self.pending_full;
        let mut fresh = None;
        let (plan, parts) = match (full_reason, self.applied.as_mut(), self.table.as_mut()) {
            (None, Some(applied), Some(table)) => {
                let state = &self.desired.state;
                let delta = table.update(state, &self.config, &dirty, &mut applied.ruleset);
                let plan = delta_plan(table, &delta, applied, now);
                (plan, Some(delta_chains(&delta, &applied.ruleset)))
            }
            _ => {
                let (table, next) = NftTable::all(&self.desired.state, &self.config)?;
                let listed = list(&mut self.executor, next.family, &next.table);
                let plan = nft_full_plan(&next, listed.as_ref(), now);
                fresh = Some((table, next));
                (plan, None)
            }
        };
        let (mut operations, mut bytes) = (0, 0);
        let mut delete_stale_error = None;
        let mut stale_chains_deleted = Vec::new();
        if let Some(tx) = &plan.delete_stale {
            operations += tx.len();
            bytes += text_len(tx);
            match self.executor.run(tx) {
                Ok(()) => stale_chains_deleted = deleted_chains(tx),
                Err(e) => {
                    delete_stale_error = Some(e.to_string().replace('\n', " "));
                }
            }
        }
        let mut pieces = 0;
        if !plan.transaction.is_empty() {
            let piece_operations = self
                .piece_operations
                .or_else(|| self.executor.piece_operations())
                .unwrap_or(DEFAULT_PIECE_OPERATIONS);
            operations += plan.transaction.len();
            bytes += text_len(&plan.transaction);
            let cut = match (&fresh, &parts, &self.applied) {
                (Some((_, next)), _, applied) => {
                    // What the kernel holds, as far as the syncer knows:
                    // nothing after a failure (then `applied` is gone), nor
                    // for another table.
                    let old = applied
                        .as_ref()
                        .map(|a| &a.ruleset)
                        .filter(|o| o.family == next.family && o.table == next.table);
                    plan.pieces(old, next, piece_operations)
                }
                (None, Some((before, after)), _) => {
                    plan.pieces(Some(before), after, piece_operations)
                }
                (None, None, _) => vec![plan.transaction.clone()],
            };
            for piece in cut {
                if let Err(e) = self.executor.run(&piece) {
                    self.applied = None;
                    self.table = None;
                    self.pending_flows.extend(stale_flows);
                    self.require_full(FullReason::AfterFailure);
                    return Err(e.into());
                }
                pieces += 1;
            }
        }
        let stale_chains_flushed = flushed_chains(&plan);
        self.pending_full = None;
        if delete_stale_error.is_some() {
            self.require_full(FullReason::AfterFailure);
        }
        let NftPlan {
            delete_stale,
            transaction,
            full,
            ..
        } = plan;
        match (fresh, self.applied.as_mut()) {
            (Some((table, next)), _) => {
                self.table = Some(table);
                self.applied = Some(NftApplied {
                    ruleset: next,
                    stale: plan.stale,
                });
            }
            (None, Some(applied)) => applied.stale = plan.stale,
            // An incremental plan needs what was applied.
            (None, None) => {}
        }
        let (rejected, warnings) = self
            .table
            .as_ref()
            .map(|t| (t.rejected(), t.warnings()))
            .unwrap_or_default();
        Ok(NftSyncReport {
            full,
            full_reason: if full { full_reason } else { None },
            drifted,
            drift_check_error,
            delete_stale,
            delete_stale_error,
            transaction,
            pieces,
            operations,
            bytes,
            stale_chains_flushed,
            stale_chains_deleted,
            stale_flows: self.take_flows(stale_flows),
            rejected,
            warnings,
        })
    }

    /// The drift check, when due (see [`Self::with_drift_check`]).
    fn check_drift(&mut self, now: Instant) -> DriftCheck {
        let due = match (self.drift_check, self.last_drift_check) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(period), Some(last)) => now.saturating_duration_since(last) >= period,
        };
        let Some(applied) = self.applied.as_ref().filter(|_| due) else {
            return DriftCheck::NotDue;
        };
        let Some((from, target)) = first_jump(&applied.ruleset) else {
            return DriftCheck::NotDue;
        };
        let ruleset = &applied.ruleset;
        let mut tx = Transaction::new(ruleset.family, ruleset.table.clone());
        tx.push(Operation::DeleteChain(target.clone()));
        let what = format!(
            "table {} {}",
            ruleset.family.as_str(),
            ruleset.table.as_str()
        );
        let found = match self.executor.check(&tx) {
            Err(e) => match e.refusal().map(|r| r.kind) {
                Some(RefusalKind::Busy) => DriftCheck::InPlace,
                Some(RefusalKind::NotFound) => {
                    DriftCheck::Drifted(format!("{what}: chain {target} (or the table) is gone"))
                }
                _ => return DriftCheck::Failed(e.to_string().replace('\n', " ")),
            },
            Ok(()) => DriftCheck::Drifted(format!(
                "{what}: chain {from} no longer jumps to {target} (flushed?)"
            )),
        };
        self.last_drift_check = Some(now);
        found
    }

    /// The stale flows of the services changed since the last sync, whose
    /// ports are then recorded.
    fn compute_flows(&mut self, dirty: &BTreeSet<ServiceKey>) -> Vec<StaleFlow> {
        let mut out = Vec::new();
        let mut ignored = Vec::new();
        for key in dirty {
            let new = match self.compiler.one(
                &self.desired.state,
                key,
                &self.config,
                &self.rules,
                &mut ignored,
            ) {
                Ok(Some(text)) => Some(text.ports),
                Ok(None) | Err(_) => None,
            };
            let old = self.flows.remove(key);
            out.extend(stale_flows_of(old.as_deref(), new.as_deref()));
            if let Some(ports) = new {
                self.flows.insert(key.clone(), ports);
            }
        }
        out
    }

    /// This sync's stale flows plus those of failed syncs before it.
    fn take_flows(&mut self, flows: Vec<StaleFlow>) -> Vec<StaleFlow> {
        take_flows(&mut self.pending_flows, flows)
    }
}

/// The compile facts for the services' flows under `config`, checking it as the
/// nftables compile does.
fn flow_rules(compiler: &mut Incremental, config: &ProxyConfig) -> Result<Rules, CompileError> {
    check_nftables_config(config)?;
    Ok(compiler.all(&ClusterState::new(), config)?.rules)
}

/// What the table holds, or `None` if any listing failed.
fn list<E: NftExecutor>(exec: &mut E, family: Family, table: &Name) -> Option<NftListed> {
    Some(NftListed {
        chains: exec.list_chains(family, table).ok()?,
        sets: exec.list_sets(family, table).ok()?,
        maps: exec.list_maps(family, table).ok()?,
    })
}

/// The first base chain (by name) with a rule that jumps or goes to a regular
/// chain that no element of a verdict map names, and that chain: once the
/// table's rules are flushed nothing refers to it (map elements outlive a
/// flush), so the kernel would let it be deleted.
fn first_jump(ruleset: &Ruleset) -> Option<(&Name, &Name)> {
    let in_maps: BTreeSet<&Name> = ruleset
        .maps
        .values()
        .flat_map(|m| m.elements.iter().filter_map(|e| e.verdict.chain()))
        .collect();
    let mut bases: Vec<_> = ruleset
        .chains
        .iter()
        .filter(|(_, c)| c.base.is_some())
        .collect();
    bases.sort_by(|a, b| a.0.cmp(b.0));
    bases.into_iter().find_map(|(name, chain)| {
        chain
            .rules
            .iter()
            .flat_map(|r| r.stmts.iter().flat_map(|s| s.chains()))
            .find(|t| {
                !in_maps.contains(t) && ruleset.chains.get(*t).is_some_and(|c| c.base.is_none())
            })
            .map(|t| (name, t))
    })
}

/// The bytes of a transaction's `nft -f` text, counted as it is written.
fn text_len(tx: &Transaction) -> usize {
    let mut count = Counter::default();
    // Counting cannot fail.
    let _ = tx.write_text(&mut count);
    count.0
}

/// The chains a deletion transaction deletes.
fn deleted_chains(tx: &Transaction) -> Vec<Name> {
    tx.operations()
        .iter()
        .filter_map(|op| match op {
            Operation::DeleteChain(name) => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// The chains a plan's transaction flushes as stale: those of its stale chains
/// that are not already flushed by an earlier sync, i.e. not in its deletion
/// either, and that it flushes.
fn flushed_chains(plan: &NftPlan) -> Vec<Name> {
    let flushed: BTreeSet<&Name> = plan
        .transaction
        .operations()
        .iter()
        .filter_map(|op| match op {
            Operation::FlushChain(name) => Some(name),
            _ => None,
        })
        .collect();
    plan.stale
        .names()
        .filter(|n| flushed.contains(n))
        .cloned()
        .collect()
}

/// Removes the tables svcnat's nftables mode writes ([`NFT_TABLE`]) in
/// `families`, and nothing else: for each family, one transaction that adds the
/// table and deletes it (so a missing table is not an error). Holds the
/// executor's lock.
///
/// # Errors
/// The lock not taken, or a transaction refused (the tables of the families
/// before it are gone, the others stay).
pub fn nft_cleanup<E: NftExecutor>(
    executor: &mut E,
    families: &[Family],
) -> Result<(), NftExecError> {
    let _lock = executor.lock()?;
    for family in families {
        executor.run(&cleanup_transaction(*family))?;
    }
    Ok(())
}

/// The transaction [`nft_cleanup`] runs for `family`.
pub fn cleanup_transaction(family: Family) -> Transaction {
    // NFT_TABLE is a valid name.
    let table = Name::new(NFT_TABLE).unwrap_or_else(|_| unreachable!("a valid table name"));
    let mut tx = Transaction::new(family, table);
    tx.push(Operation::AddTable { comment: None });
    tx.push(Operation::DeleteTable);
    tx
}
