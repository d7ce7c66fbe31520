//! The [`Syncer`]: the desired state, the rules last applied (per service, as
//! text), the executor, and the syncs that turn changes into payloads.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::compile::incremental::{
    self, All, Extras, Incremental, Rules, ServiceText, Shared as SharedChain, is_hashed_chain,
    is_owned_chain, is_service_chain,
};
use crate::compile::{CANARY_CHAIN, canaries, jump_rules};
use crate::error::CompileError;
use crate::exec::{ExecError, Executor, RestoreFailed, RestoreOptions, pieces_over};
use crate::model::{
    ClusterState, EndpointSlice, IpFamily, ProxyConfig, Service, ServiceKey, SliceKey,
};
use crate::ruleset::lex::tokenize;
use crate::ruleset::restore;
use crate::ruleset::{ChainName, JumpRule, NfacctCounter, Ruleset, Table};

use super::desired::Desired;
use super::interim;
use super::plan::{Payload, PayloadBuilder, diff_chains, without_deletes_at, without_unchanged};
use super::stale::{stale_flows_of, take_flows};
use crate::flows::StaleFlow;

/// The drift check's default period. The check costs one `iptables-restore` of
/// `-C` lines, which on legacy reads each table whole: 0.63 s at 10,000 services
/// on legacy and 0.10 s on nft (iptables 1.8.9, `kernel_cost`'s `drift_check_ns`,
/// PERFORMANCE.md), so a check every 30 seconds costs a legacy node about 2% of
/// one core at that size. kube-proxy checks its canary once per sync period, 30
/// seconds by default. The `Syncer` has no timer: the check is made by the first
/// `sync()` after the period, so a daemon that wants drift found within it calls
/// `sync()` at least that often, changes or not (as kube-proxy's sync loop does).
pub const DEFAULT_DRIFT_CHECK: Duration = Duration::from_secs(30);

/// How long a partial sync waits before it first tries again to delete a stale
/// chain whose `-X` failed, in a restore of its own; the wait doubles with each
/// try that fails, up to [`MAX_DELETE_RETRY`].
pub const DELETE_RETRY: Duration = Duration::from_secs(60);

/// The longest wait between two tries to delete a chain that stays referenced.
pub const MAX_DELETE_RETRY: Duration = Duration::from_secs(3600);

/// What the drift check looks for ([`Syncer::with_drift_check`]): the
/// [`canaries`], then the jump rules from the built-in chains.
///
/// # Errors
/// An invalid config.
pub fn drift_rules(config: &ProxyConfig) -> Result<Vec<JumpRule>, CompileError> {
    let mut rules = canaries();
    rules.extend(jump_rules(config)?);
    Ok(rules)
}

/// Why a sync was a full one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FullReason {
    /// The syncer's first sync.
    FirstSync,
    /// A sync before this one failed, so what the kernel holds is not known.
    AfterFailure,
    /// The periodic full resync was due ([`Syncer::with_full_resync_period`]).
    ResyncPeriod,
    /// The drift check ([`Syncer::with_drift_check`]) found a canary or a jump
    /// rule gone: something else flushed, replaced or edited the tables.
    Drift,
    /// The caller asked for it ([`Syncer::request_full_sync`]).
    Requested,
    /// The config changed ([`Syncer::set_config`]).
    ConfigChanged,
    /// The endpoint total crossed the large-cluster threshold, which changes
    /// every service's rules.
    ClusterSize,
}

impl FullReason {
    /// `first sync`, `after a failure`, `resync period`, `drift`, `requested`,
    /// `config changed` or `cluster size`.
    pub fn as_str(self) -> &'static str {
        match self {
            FullReason::FirstSync => "first sync",
            FullReason::AfterFailure => "after a failure",
            FullReason::ResyncPeriod => "resync period",
            FullReason::Drift => "drift",
            FullReason::Requested => "requested",
            FullReason::ConfigChanged => "config changed",
            FullReason::ClusterSize => "cluster size",
        }
    }
}

impl fmt::Display for FullReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stale chain svcnat flushed but did not delete, because a rule it did not
/// write still jumps to it (another program's, or an older proxy's): `-X` would
/// fail, and must not hold up the sync. A later full sync, which reads the
/// kernel's chains, deletes it once nothing jumps to it any more.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeptChain {
    /// The table.
    pub table: Table,
    /// The chain.
    pub chain: ChainName,
    /// Why it was kept: the rule found jumping to it, or the executor's error.
    pub reason: String,
}

/// What one sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// True for a full sync.
    pub full: bool,
    /// Why the sync was full (`None` for a partial one).
    pub full_reason: Option<FullReason>,
    /// For a full sync caused by drift: the rule the check found missing (a
    /// canary, see [`drift_rules`], or a jump rule from a built-in chain).
    pub drifted: Option<JumpRule>,
    /// Stale chains flushed but not deleted (see [`KeptChain`]).
    pub kept_chains: Vec<KeptChain>,
    /// A drift check that was due but could not be made (the executor failed):
    /// the sync went on without it, and the next one checks again.
    pub drift_check_error: Option<String>,
    /// The payload applied (empty if nothing changed; then nothing was applied).
    pub payload: Payload,
    /// The payload's size in bytes.
    pub bytes: usize,
    /// Conntrack entries the caller should delete (see [`Executor::clear_conntrack`]).
    pub stale_flows: Vec<StaleFlow>,
    /// Services left out because they are invalid, with the reason. A partial sync
    /// reports only the services it recompiled.
    pub rejected: Vec<CompileError>,
    /// Parts of the state ignored, as kube-proxy ignores them, without dropping a
    /// service (as [`compile_with_warnings`](crate::compile::compile_with_warnings)
    /// reports them): a slice port that matches no service port (the usual state
    /// while a Service's ports change and its slices catch up), port 0, an address
    /// of the other family, a duplicate endpoint, a slice whose service does not
    /// exist. A partial sync reports only those of the services it recompiled.
    pub warnings: Vec<CompileError>,
    /// How many services this sync compiled: the changed ones, or every one when
    /// the config, the cluster-size rule or the first sync required it. The others'
    /// chain names and rule text were reused from the sync before.
    pub recompiled: usize,
}

impl fmt::Display for SyncReport {
    /// One line for a log: `full (REASON)|partial, B bytes, W chains written, D
    /// chains deleted`, then the services recompiled, and the stale flows,
    /// rejected services, warnings and chains kept when there are any.
    ///
    /// ```
    /// use svcnat::exec::Recorder;
    /// use svcnat::model::*;
    /// use svcnat::sync::Syncer;
    ///
    /// let mut syncer = Syncer::new(Recorder::new(), ProxyConfig::default())?;
    /// syncer.upsert_service(
    ///     Service::cluster_ip("ns1", "svc1", "172.30.0.41".parse().unwrap())
    ///         .with_port(ServicePort::tcp("p80", 80)),
    /// );
    /// syncer.sync()?;
    /// syncer.remove_service(&ServiceKey::new("ns1", "svc1"));
    /// let report = syncer.sync()?;
    /// assert_eq!(
    ///     report.to_string(),
    ///     format!("partial, {} bytes, 1 chains written, 0 chains deleted, 1 services recompiled", report.bytes)
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.full, self.full_reason) {
            (true, Some(reason)) => write!(f, "full ({reason})")?,
            (true, None) => f.write_str("full")?,
            (false, _) => f.write_str("partial")?,
        }
        write!(
            f,
            ", {} bytes, {} chains written, {} chains deleted, {} services recompiled",
            self.bytes,
            self.payload.chains_written(),
            self.payload.chains_deleted(),
            self.recompiled,
        )?;
        for (count, what) in [
            (self.stale_flows.len(), "stale flows"),
            (self.rejected.len(), "services rejected"),
            (self.warnings.len(), "warnings"),
            (self.kept_chains.len(), "stale chains kept"),
        ] {
            if count > 0 {
                write!(f, ", {count} {what}")?;
            }
        }
        Ok(())
    }
}

/// Why a sync failed. The [`Syncer`] is left ready: its next sync is a full one,
/// which repairs whatever the failed one left half done (see [`Syncer::sync_at`]).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The executor failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] CompileError),
}

/// How long to wait before calling [`Syncer::sync`] again after an executor
/// failure: what kube-proxy waits before it retries a failed restore is its sync
/// period; a second is enough for a held lock or a busy kernel to clear, and
/// short enough that traffic is not left on half-written rules for long.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

impl SyncError {
    /// When to call [`Syncer::sync`] again: after [`RETRY_AFTER`] for an
    /// executor failure (the next sync is full and repairs what this one left);
    /// `None` for an invalid config, which no retry mends (fix it with
    /// [`Syncer::set_config`] first).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SyncError::Exec(_) => Some(RETRY_AFTER),
            SyncError::Config(_) => None,
        }
    }
}

/// What svcnat compiled for the state, per service, rendered; the kernel holds it
/// when the syncer is trusted.
#[derive(Debug, Clone)]
struct Applied {
    /// The config it was compiled with: a full sync reuses the services' text only
    /// under the same config (any field may change which services are valid).
    config: ProxyConfig,
    /// What the services were compiled under: the config, adjusted to the
    /// cluster's size.
    rules: Rules,
    services: BTreeMap<ServiceKey, ServiceText>,
    endpoint_total: usize,
    /// Why each left-out service was left out.
    rejected: BTreeMap<ServiceKey, CompileError>,
    /// The slice parts ignored, per service.
    warnings: BTreeMap<ServiceKey, Vec<CompileError>>,
}

impl Applied {
    fn rejected(&self) -> Vec<CompileError> {
        self.rejected.values().cloned().collect()
    }

    fn warnings(&self) -> Vec<CompileError> {
        self.warnings.values().flatten().cloned().collect()
    }
}

/// One recompiled service, with what it was before.
struct Change {
    key: ServiceKey,
    old: Option<ServiceText>,
}

/// Groups errors by the service they name.
fn by_service(errors: Vec<CompileError>) -> BTreeMap<ServiceKey, Vec<CompileError>> {
    let mut out: BTreeMap<ServiceKey, Vec<CompileError>> = BTreeMap::new();
    for e in errors {
        if let Some(key) = e.service().cloned() {
            out.entry(key).or_default().push(e);
        }
    }
    out
}

/// Owns the desired cluster state, the last applied rules and an executor; turns
/// changes into the smallest restore payload. One `Syncer` serves one IP family
/// (`config.ip_family`); a dual-stack node runs two.
#[derive(Debug)]
pub struct Syncer<E: Executor> {
    executor: E,
    config: ProxyConfig,
    desired: Desired,
    applied: Option<Applied>,
    /// Why the next sync must be full; `None` while the kernel is known to hold
    /// what `applied` says.
    pending_full: Option<FullReason>,
    /// True while the kernel's filter table is known to hold what `applied`
    /// renders of it: after a successful sync, until a failure (or a lock not
    /// taken) or drift. A full sync then plans the rules it holds while nat
    /// changes over `applied`, not over a read of the kernel's filter table
    /// (which on nft fetches every table: 0.4 s beside 100k nat rules).
    filter_known: bool,
    full_resync_period: Option<Duration>,
    last_full: Option<Instant>,
    drift_check: Option<Duration>,
    last_drift_check: Option<Instant>,
    /// Stale nat chains flushed but not deleted, tried again by a partial sync
    /// [`DELETE_RETRY`] after the last try (a full sync reads the kernel and
    /// tries every stale chain anyway).
    undeleted: BTreeSet<ChainName>,
    last_delete_try: Option<Instant>,
    delete_backoff: Duration,
    /// Stale flows of syncs that failed, reported with the next successful one.
    pending_flows: Vec<StaleFlow>,
    /// The compiler, with its buffers reused to render each recompiled service.
    compiler: Incremental,
}

impl<E: Executor> Syncer<E> {
    /// A syncer with an empty cluster state; its first sync is full.
    ///
    /// # Errors
    /// An invalid config.
    pub fn new(executor: E, config: ProxyConfig) -> Result<Self, CompileError> {
        Incremental::check(&config)?;
        Ok(Syncer {
            executor,
            config,
            desired: Desired::default(),
            applied: None,
            pending_full: Some(FullReason::FirstSync),
            filter_known: false,
            full_resync_period: None,
            last_full: None,
            drift_check: Some(DEFAULT_DRIFT_CHECK),
            last_drift_check: None,
            undeleted: BTreeSet::new(),
            last_delete_try: None,
            delete_backoff: DELETE_RETRY,
            pending_flows: Vec::new(),
            compiler: Incremental::new(),
        })
    }

    /// Makes every sync at least `period` after the last full one a full one
    /// (kube-proxy uses one hour).
    pub fn with_full_resync_period(mut self, period: Option<Duration>) -> Self {
        self.full_resync_period = period;
        self
    }

    /// How often [`Self::sync`] checks that the tables still hold svcnat's rules:
    /// `Some(period)` checks in the first sync at least `period` after the last
    /// check or full sync (`Duration::ZERO`: in every sync), `None` never. The
    /// default is [`DEFAULT_DRIFT_CHECK`].
    ///
    /// The check looks for the canaries (a `KUBE-PROXY-CANARY` chain with one
    /// rule, in nat and in filter, written by every full sync) and the jump rules
    /// from the built-in chains ([`drift_rules`]), with
    /// [`Executor::first_missing_rule`]. A table replaced by a firewall reload, or
    /// by a file saved before svcnat wrote it, loses its canary; a flush
    /// (`iptables -t nat -F`) keeps the chain but empties it; a deleted jump rule
    /// is missed itself. Any of them makes that sync a full one
    /// ([`FullReason::Drift`]) even if nothing in the cluster changed. (A file
    /// saved after a sync holds the canary and the jump rules: restoring it is
    /// not seen, and needs no repair unless the cluster changed since.) A check
    /// the executor cannot make does not fail the sync: it is reported in
    /// [`SyncReport::drift_check_error`] and made again in the next sync; an
    /// executor that does not support it ([`ExecError::Unsupported`]) is not
    /// asked again. The check runs only inside `sync()`: see
    /// [`DEFAULT_DRIFT_CHECK`].
    pub fn with_drift_check(mut self, period: Option<Duration>) -> Self {
        self.drift_check = period;
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

    /// Replaces the config (a new node address or zone, say); the next sync is a full
    /// one, as kube-proxy resyncs fully on a topology change.
    ///
    /// # Errors
    /// An invalid config; the old one stays.
    pub fn set_config(&mut self, config: ProxyConfig) -> Result<(), CompileError> {
        Incremental::check(&config)?;
        self.config = config;
        self.require_full(FullReason::ConfigChanged);
        Ok(())
    }

    /// The config.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Makes the next sync a full one.
    pub fn request_full_sync(&mut self) {
        self.require_full(FullReason::Requested);
    }

    /// Makes the next sync full for `reason`, unless it is full for another
    /// reason already (the first one is reported).
    fn require_full(&mut self, reason: FullReason) {
        if matches!(reason, FullReason::AfterFailure | FullReason::Drift) {
            self.filter_known = false;
        }
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
    /// moves: the service it left is recompiled too.
    pub fn upsert_slice(&mut self, slice: EndpointSlice) {
        self.desired.upsert_slice(slice);
    }

    /// Deletes the EndpointSlice `name` of service `key`.
    pub fn remove_slice(&mut self, key: &ServiceKey, name: &str) {
        self.desired.remove_slice(key, name);
    }

    /// Deletes the EndpointSlice with this namespace and name, whichever service it
    /// belonged to (what a Kubernetes delete event names); returns it.
    pub fn remove_slice_by_key(&mut self, key: &SliceKey) -> Option<EndpointSlice> {
        self.desired.remove_slice_by_key(key)
    }

    /// Replaces the whole state; the services that differ are marked dirty.
    pub fn replace_state(&mut self, state: ClusterState) {
        self.desired.replace_state(state);
    }

    /// The ruleset svcnat last compiled, which the kernel holds after a successful
    /// sync (read back from the rendered text on demand, for checks).
    pub fn applied_ruleset(&self) -> Option<Ruleset> {
        let a = self.applied.as_ref()?;
        let (text, _) = incremental::full_text(&a.rules, a.services.values(), Extras::default());
        let mut ruleset = crate::parse::parse_as(&text, a.rules.family()).ok()?;
        // As `compile` orders them: filter, then nat.
        ruleset.tables.sort_by_key(|t| t.table != Table::Filter);
        Some(ruleset)
    }

    /// Brings the kernel in step with the state now. Holds the executor's lock
    /// ([`Executor::lock`]) for the whole sync, so another svcnat process syncing
    /// the same tables waits for it (or this one for the other).
    ///
    /// # Errors
    /// See [`Syncer::sync_at`].
    pub fn sync(&mut self) -> Result<SyncReport, SyncError> {
        self.sync_at(Instant::now())
    }

    /// Brings the kernel in step with the state; `now` decides whether the periodic
    /// full resync and the drift check are due. Holds the executor's lock
    /// ([`Executor::lock`]) for the whole sync: every executor call of the sync,
    /// the drift check included, is made under it.
    ///
    /// Every state a sync goes through treats each packet as the state before
    /// it or the state after it does (tests/it/in_between.rs states this
    /// exactly): a sync writes filter's rules to hold while nat changes (per
    /// destination, the new ones where the new filter REJECTs, the old ones where
    /// the old one did, both states' DROPs where both have some, none where one
    /// has none; in the fixed chains, both states' ACCEPTs and the other rules
    /// both have; a full sync takes the old ones from what it applied last, or
    /// reads the kernel's filter table when it does not know it: on the first
    /// sync, after a failure, after drift),
    /// then nat, then filter's new rules; each table's chains in dependency
    /// order, in pieces when the executor asks for them (see
    /// [`Executor::chains_per_restore_for`] and
    /// [`pieces_over`](crate::exec::pieces_over), which keeps a chain rewritten
    /// for another role in one piece with the callers whose rules into it
    /// change). A stale chain whose `-X` fails (a rule svcnat did not write still
    /// jumps to it) is left flushed and reported in [`SyncReport::kept_chains`];
    /// the rest of the sync goes on.
    ///
    /// # Errors
    /// An executor failure, or the executor's lock not taken (another process may
    /// have changed the tables meanwhile). The kernel may then hold part of this
    /// sync's rules: whole pieces, each leaving one of the states in between
    /// (filter's rules held while nat changes, never its new rules before nat's).
    /// The next sync is a full one and brings the kernel in step: call `sync()`
    /// again after [`SyncError::retry_after`], whether or not the cluster
    /// changed.
    pub fn sync_at(&mut self, now: Instant) -> Result<SyncReport, SyncError> {
        let started = Instant::now();
        let report = self.sync_inner(now)?;
        if report.full {
            self.last_full = Some(now);
            // The drift check's period counts from the end of the full sync, which
            // wrote the canaries: at 30k services one can take longer than that.
            self.last_drift_check = Some(now + started.elapsed());
        }
        Ok(report)
    }

    fn sync_inner(&mut self, now: Instant) -> Result<SyncReport, SyncError> {
        // Another process may have synced the tables while this one could not.
        let _lock = self
            .executor
            .lock()
            .inspect_err(|_| self.require_full(FullReason::AfterFailure))?;
        if self.applied.is_none() {
            self.require_full(FullReason::FirstSync);
        }
        let period_due = match (self.full_resync_period, self.last_full) {
            (Some(period), Some(last)) => now.saturating_duration_since(last) >= period,
            _ => false,
        };
        if period_due {
            self.require_full(FullReason::ResyncPeriod);
        }
        if let Some(reason) = self.pending_full {
            return self.full_sync(now, reason, None);
        }
        let drift_check_error = match self.check_drift(now)? {
            DriftCheck::Drifted(missing) => {
                self.filter_known = false;
                return self.full_sync(now, FullReason::Drift, Some(*missing));
            }
            DriftCheck::Failed(error) => Some(error),
            DriftCheck::NotDue | DriftCheck::InPlace => None,
        };
        let mut report = match self.partial_sync(now)? {
            Some(report) => report,
            // The cluster crossed the large-cluster threshold: every comment changes.
            None => self.full_sync(now, FullReason::ClusterSize, None)?,
        };
        report.drift_check_error = drift_check_error;
        Ok(report)
    }

    /// The drift check, when due: the first canary or jump rule found missing.
    /// A check that cannot be made does not fail the sync: an executor that does
    /// not support it (an embedder's write-only transport) is not asked again,
    /// and any other failure (a lock held elsewhere, say) is returned to be
    /// reported with this sync, and the check is tried again in the next one.
    fn check_drift(&mut self, now: Instant) -> Result<DriftCheck, SyncError> {
        let due = match (self.drift_check, self.last_drift_check) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(period), Some(last)) => now.saturating_duration_since(last) >= period,
        };
        if !due {
            return Ok(DriftCheck::NotDue);
        }
        let rules = drift_rules(&self.config)?;
        match self.executor.first_missing_rule(self.family(), &rules) {
            Ok(missing) => {
                self.last_drift_check = Some(now);
                Ok(match missing.and_then(|i| rules.into_iter().nth(i)) {
                    Some(rule) => DriftCheck::Drifted(Box::new(rule)),
                    None => DriftCheck::InPlace,
                })
            }
            Err(ExecError::Unsupported(_)) => {
                self.drift_check = None;
                Ok(DriftCheck::NotDue)
            }
            Err(e) => Ok(DriftCheck::Failed(e.to_string().replace('\n', " "))),
        }
    }

    /// Tries again to delete the stale chains whose `-X` failed before, in a
    /// restore of their own, once the back-off since the last try has passed (it
    /// doubles with every try that fails, from [`DELETE_RETRY`] up to an hour, so
    /// a chain that stays referenced costs a restore less and less often). The
    /// chains still kept; a failure of the restore itself only waits for the
    /// next try.
    fn retry_deletes(&mut self, now: Instant) -> Vec<KeptChain> {
        let due = !self.undeleted.is_empty()
            && self
                .last_delete_try
                .is_none_or(|last| now.saturating_duration_since(last) >= self.delete_backoff);
        if !due {
            return Vec::new();
        }
        self.last_delete_try = Some(now);
        // Only the `-X` lines: the chains were flushed when they were kept.
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = restore::open_table(&mut text, Table::Nat);
        for chain in &self.undeleted {
            let _ = restore::delete(&mut text, chain.as_str());
        }
        let _ = restore::commit(&mut text);
        let payload = Payload {
            family: self.family(),
            full: false,
            written: Vec::new(),
            deleted: self
                .undeleted
                .iter()
                .map(|c| (Table::Nat, c.clone()))
                .collect(),
            text,
        };
        match apply(&mut self.executor, &payload, "") {
            Ok(kept) => {
                self.undeleted = kept.iter().map(|k| k.chain.clone()).collect();
                self.delete_backoff = if kept.is_empty() {
                    DELETE_RETRY
                } else {
                    (self.delete_backoff * 2).min(MAX_DELETE_RETRY)
                };
                kept
            }
            Err(_) => {
                self.delete_backoff = (self.delete_backoff * 2).min(MAX_DELETE_RETRY);
                Vec::new()
            }
        }
    }

    fn family(&self) -> IpFamily {
        self.config.ip_family
    }

    /// Makes sure the nfacct counters `payload` names exist, before it is applied
    /// (with `nfacct_counters` off it names none: nothing is looked for).
    fn ensure_counters(&mut self, payload: &Payload) -> Result<(), ExecError> {
        if !self.config.nfacct_counters {
            return Ok(());
        }
        let counters = NfacctCounter::named_in(payload.text());
        if counters.is_empty() {
            return Ok(());
        }
        self.executor.ensure_nfacct(&counters)
    }

    /// This sync's stale flows plus those of failed syncs before it.
    fn take_flows(&mut self, flows: Vec<StaleFlow>) -> Vec<StaleFlow> {
        take_flows(&mut self.pending_flows, flows)
    }

    /// Recompiles the dirty services into the applied state and returns what each
    /// was before, with this round's rejected services and warnings. `None`, with
    /// nothing changed, when the change crosses the large-cluster threshold (which
    /// changes every service's rules) or nothing was compiled yet.
    fn recompile_dirty(
        &mut self,
        rejected: &mut Vec<CompileError>,
        warnings: &mut Vec<CompileError>,
    ) -> Option<Vec<Change>> {
        let applied = self.applied.as_mut()?;
        let mut compiled = Vec::with_capacity(self.desired.dirty.len());
        let mut total = applied.endpoint_total;
        let mut round_rejected = Vec::new();
        let mut round_warnings = Vec::new();
        for key in &self.desired.dirty {
            let mut service_warnings = Vec::new();
            let new = match self.compiler.one(
                &self.desired.state,
                key,
                &self.config,
                &applied.rules,
                &mut service_warnings,
            ) {
                Ok(text) => text,
                Err(e) => {
                    round_rejected.push(e);
                    None
                }
            };
            round_warnings.extend(service_warnings);
            let old_count = applied.services.get(key).map_or(0, |s| s.endpoint_count);
            total = total - old_count + new.as_ref().map_or(0, |s| s.endpoint_count);
            compiled.push((key.clone(), new));
        }
        if applied.rules.changes_at(total) {
            return None;
        }
        applied.endpoint_total = total;
        for (key, _) in &compiled {
            applied.rejected.remove(key);
            applied.warnings.remove(key);
        }
        for e in &round_rejected {
            if let Some(key) = e.service() {
                applied.rejected.insert(key.clone(), e.clone());
            }
        }
        applied.warnings.extend(by_service(round_warnings.clone()));
        rejected.extend(round_rejected);
        warnings.extend(round_warnings);
        self.desired.dirty.clear();
        Some(
            compiled
                .into_iter()
                .map(|(key, new)| {
                    let old = match new {
                        Some(text) => applied.services.insert(key.clone(), text),
                        None => applied.services.remove(&key),
                    };
                    Change { key, old }
                })
                .collect(),
        )
    }

    /// A full sync, in three steps: compile (only what changed, when the config
    /// did not), read the kernel's nat table, plan the payload without IO, apply.
    fn full_sync(
        &mut self,
        now: Instant,
        reason: FullReason,
        drifted: Option<JumpRule>,
    ) -> Result<SyncReport, SyncError> {
        let family = self.family();
        // What the kernel's filter table holds, when the syncer knows it: what
        // it applied last, rendered before this sync compiles over it. Not
        // known again until this sync succeeds.
        let remembered = match (&self.applied, self.filter_known) {
            (Some(a), true) => Some(incremental::filter_text(&a.rules, a.services.values())),
            _ => None,
        };
        self.filter_known = false;
        let round = self.compile_for_full()?;
        let applied = self.applied.as_ref().expect("compiled above");
        // Read: the chains the kernel's nat table declares. A failed read only
        // means chains an earlier run left stay (unreferenced, so harmless).
        let saved = self.executor.save(family, Table::Nat).ok();
        // Plan, without IO: every chain written, the left-over ones deleted (or
        // flushed and kept, when something else still jumps to them).
        let stale = stale_chains(applied, saved.as_deref());
        let mut payload = full_payload(&applied.rules, &applied.services, &stale);
        // Restored in pieces, each one costly (nft): leave out what the kernel
        // already holds as it should be.
        if self.executor.chains_per_restore_for(family, 0).is_some()
            && let Some(saved) = saved.as_deref()
            && let Some(smaller) = without_unchanged(&payload, saved)
        {
            payload = smaller;
        }
        // The filter rules to hold while nat changes (see `interim`), over the
        // kernel's filter table: as remembered, or read when it is not known
        // (the first sync, after a failure or drift); none if the read fails.
        let filter = match remembered {
            Some(text) => Ok(text),
            None => self.executor.save(family, Table::Filter),
        };
        if let Ok(filter) = filter {
            payload.put_first(&interim::full_section(&filter, payload.text(), family));
        }
        let mut jumps = jump_rules(&self.config)?;
        // Missing jumps (a first sync) go in nat first, POSTROUTING's first: no
        // packet is DNATed without its masquerade, or dropped by filter before
        // nat could DNAT it. Stable: each chain's jumps keep their order.
        jumps.sort_by_key(|j| (j.table != Table::Nat, j.chain.as_str() != "POSTROUTING"));
        // Apply.
        self.pending_full = Some(FullReason::AfterFailure);
        let applied_ok = self
            .ensure_counters(&payload)
            .and_then(|()| apply(&mut self.executor, &payload, saved.as_deref().unwrap_or("")))
            .and_then(|kept| self.executor.ensure_jumps(family, &jumps).map(|()| kept));
        let kept = match applied_ok {
            Ok(kept) => kept,
            Err(e) => {
                // The rules are not known to be applied, but the flows they make
                // stale are: keep them for the next successful sync.
                self.pending_flows.extend(round.stale_flows);
                return Err(e.into());
            }
        };
        self.pending_full = None;
        self.filter_known = true;
        let kept_names: HashSet<&ChainName> = kept.iter().map(|k| &k.chain).collect();
        payload.deleted.retain(|(_, c)| !kept_names.contains(c));
        let mut kept_chains = stale.kept;
        kept_chains.extend(kept);
        self.undeleted = kept_chains.iter().map(|k| k.chain.clone()).collect();
        self.last_delete_try = Some(now);
        Ok(SyncReport {
            full: true,
            full_reason: Some(reason),
            drifted,
            kept_chains,
            drift_check_error: None,
            bytes: payload.text().len(),
            payload,
            stale_flows: self.take_flows(round.stale_flows),
            rejected: round.rejected,
            warnings: round.warnings,
            recompiled: round.recompiled,
        })
    }

    /// The compile of a full sync: unchanged services keep their text and only the
    /// dirty ones are recompiled, unless the config or the cluster-size rule
    /// changes every service.
    fn compile_for_full(&mut self) -> Result<Round, SyncError> {
        let mut rejected = Vec::new();
        let mut warnings = Vec::new();
        let reused = if self
            .applied
            .as_ref()
            .is_some_and(|a| a.config == self.config)
        {
            self.recompile_dirty(&mut rejected, &mut warnings)
        } else {
            None
        };
        Ok(match reused {
            Some(changes) => {
                let applied = self.applied.as_ref().expect("recompiled into it");
                Round {
                    stale_flows: flows_of(&changes, &applied.services),
                    rejected: applied.rejected(),
                    warnings: applied.warnings(),
                    recompiled: changes.len(),
                }
            }
            None => {
                let mut round = self.compile_all()?;
                round.recompiled = self.desired.state.service_count();
                round
            }
        })
    }

    /// Compiles every service afresh into a new applied state; returns the stale
    /// flows against the old one, the rejected services and the warnings.
    fn compile_all(&mut self) -> Result<Round, SyncError> {
        let All {
            rules,
            services,
            rejected,
            warnings,
        } = self.compiler.all(&self.desired.state, &self.config)?;
        let services: BTreeMap<ServiceKey, ServiceText> =
            services.into_iter().map(|s| (s.key.clone(), s)).collect();
        let mut stale_flows = Vec::new();
        let keys: BTreeSet<&ServiceKey> = services
            .keys()
            .chain(self.applied.iter().flat_map(|a| a.services.keys()))
            .collect();
        for key in keys {
            let old = self.applied.as_ref().and_then(|a| a.services.get(key));
            stale_flows.extend(stale_flows_of(
                old.map(|s| s.ports.as_slice()),
                services.get(key).map(|s| s.ports.as_slice()),
            ));
        }
        let endpoint_total = services.values().map(|s| s.endpoint_count).sum();
        self.applied = Some(Applied {
            config: self.config.clone(),
            rules,
            services,
            endpoint_total,
            rejected: by_service(rejected.clone())
                .into_iter()
                .filter_map(|(k, mut v)| v.pop().map(|e| (k, e)))
                .collect(),
            warnings: by_service(warnings.clone()),
        });
        self.desired.dirty.clear();
        Ok(Round {
            stale_flows,
            rejected,
            warnings,
            recompiled: 0,
        })
    }

    /// `Ok(None)` when a full sync is needed instead.
    fn partial_sync(&mut self, now: Instant) -> Result<Option<SyncReport>, SyncError> {
        let family = self.family();
        let mut rejected = Vec::new();
        let mut warnings = Vec::new();
        let Some(changes) = self.recompile_dirty(&mut rejected, &mut warnings) else {
            return Ok(None);
        };
        let applied = self.applied.as_ref().expect("recompiled into it");
        let mut written: Vec<(&ChainName, &str)> = Vec::new();
        let mut deleted = Vec::new();
        let mut dirty_shared = BTreeSet::new();
        for change in &changes {
            let old = change.old.as_ref();
            let new = applied.services.get(&change.key);
            // Each changed service's own chains, diffed as `plan` diffs chains.
            let diff = diff_chains(
                old.iter().flat_map(|s| s.chains()),
                new.iter().flat_map(|s| s.chains()),
            );
            let new_text: HashMap<&ChainName, &str> = new.iter().flat_map(|s| s.chains()).collect();
            written.extend(diff.written.into_iter().map(|name| (name, new_text[name])));
            deleted.extend(diff.deleted);
            for which in SharedChain::ALL {
                let before = old.map_or("", |s| s.shared_text(which));
                if before != new.map_or("", |s| s.shared_text(which)) {
                    dirty_shared.insert(which);
                }
            }
        }
        // Chains a delete failed for before, that a service wants back: written
        // again, no longer stale.
        let written_names: HashSet<&ChainName> = written.iter().map(|(n, _)| *n).collect();
        let revived: Vec<ChainName> = self
            .undeleted
            .iter()
            .filter(|c| written_names.contains(c))
            .cloned()
            .collect();
        self.undeleted.retain(|c| !written_names.contains(c));
        let filter_changed = dirty_shared.iter().any(|w| w.table() == Table::Filter);
        // A shared chain whose part of some service changed is written whole.
        let shared: Vec<(Table, ChainName, String)> = dirty_shared
            .into_iter()
            .map(|which| {
                let text = incremental::shared_text(
                    &applied.rules,
                    which,
                    applied.services.values().map(|s| s.shared_text(which)),
                );
                (which.table(), which.chain(), text)
            })
            .collect();
        let shared_of = |table: Table| {
            shared
                .iter()
                .filter(move |(t, _, _)| *t == table)
                .map(|(_, name, text)| (name, text.as_str()))
        };
        // Nat, then filter, with the filter rules to hold while nat changes put
        // first (see `interim`): each table commits on its own.
        let mut builder = PayloadBuilder::default();
        builder.table(
            Table::Nat,
            shared_of(Table::Nat).chain(written.iter().copied()),
            &deleted,
        );
        builder.table(Table::Filter, shared_of(Table::Filter), &[]);
        let mut payload = builder.finish(family, false);
        if filter_changed {
            payload.put_first(&interim_filter(applied, &changes, family));
        }
        // What pieces are planned over: the changed services' old nat rules.
        let before = match self.executor.chains_per_restore_for(family, 0) {
            Some(_) => nat_before(&changes, &revived),
            None => String::new(),
        };
        let stale_flows = flows_of(&changes, &applied.services);
        let kept = if payload.is_empty() {
            Vec::new()
        } else {
            match self
                .ensure_counters(&payload)
                .and_then(|()| apply(&mut self.executor, &payload, &before))
            {
                Ok(kept) => kept,
                Err(e) => {
                    // The rules are not known to be applied, but the flows they
                    // make stale are: keep them for the next successful sync.
                    self.pending_flows.extend(stale_flows);
                    self.require_full(FullReason::AfterFailure);
                    return Err(e.into());
                }
            }
        };
        let mut kept = kept;
        if !kept.is_empty() {
            let kept_names: HashSet<&ChainName> = kept.iter().map(|k| &k.chain).collect();
            payload.deleted.retain(|(_, c)| !kept_names.contains(c));
            self.undeleted.extend(kept.iter().map(|k| k.chain.clone()));
            self.last_delete_try = Some(now);
        }
        kept.extend(self.retry_deletes(now));
        Ok(Some(SyncReport {
            full: false,
            full_reason: None,
            drifted: None,
            kept_chains: kept,
            drift_check_error: None,
            bytes: payload.text().len(),
            payload,
            stale_flows: self.take_flows(stale_flows),
            rejected,
            warnings,
            recompiled: changes.len(),
        }))
    }
}

/// Applies a payload as [`Syncer::sync_at`] says: in the executor's pieces, one
/// restore each, in order, planned over `before` (what the kernel's tables held,
/// as [`pieces_over`] takes it). A restore that fails at a `-X` line is sent
/// again without it (the chain stays, flushed) and the chain is returned as
/// kept; any other failure ends the apply.
fn apply<E: Executor>(
    exec: &mut E,
    payload: &Payload,
    before: &str,
) -> Result<Vec<KeptChain>, ExecError> {
    let family = payload.family;
    // Pieces planned here are sent as they are: the executor must not cut a
    // group of chains that has to commit at once.
    let options = RestoreOptions::default().with_cut(false);
    let chains = payload
        .text()
        .lines()
        .filter(|l| l.starts_with(':'))
        .count();
    let steps: Vec<Cow<'_, str>> = match exec.chains_per_restore_for(family, chains) {
        Some(n) => match pieces_over(payload.text(), before, family, n) {
            Ok(pieces) => pieces.into_iter().map(Cow::Owned).collect(),
            // Only a payload svcnat did not write fails to parse: sent whole,
            // for the binary to judge.
            Err(_) => vec![Cow::Borrowed(payload.text())],
        },
        None => vec![Cow::Borrowed(payload.text())],
    };
    let mut kept = Vec::new();
    let mut next = 0;
    while next < steps.len() {
        // Handed over together: the executor may commit several at once.
        let rest: Vec<&str> = steps[next..].iter().map(|s| s.as_ref()).collect();
        let RestoreFailed { applied, error } = match exec.restore_all(family, &rest, options) {
            Ok(()) => break,
            Err(failed) => failed,
        };
        let index = next + applied;
        let mut step = steps[index].clone();
        let mut error = error;
        loop {
            // Each pass takes out at least one line: it ends.
            let Some((removed, rest)) = without_deletes_at(&step, &error.failed_lines()) else {
                return Err(error);
            };
            let reason = error.to_string().replace('\n', " ");
            kept.extend(removed.into_iter().map(|(table, chain)| KeptChain {
                table,
                chain,
                reason: reason.clone(),
            }));
            // Nothing left to send but the frame: done.
            if rest
                .lines()
                .all(|l| l.starts_with('*') || l == "COMMIT" || l.is_empty())
            {
                break;
            }
            step = Cow::Owned(rest);
            match exec.restore(family, &step, options) {
                Ok(()) => break,
                Err(e) => error = e,
            }
        }
        next = index + 1;
    }
    Ok(kept)
}

/// The filter section a partial sync writes before nat (see
/// [`interim`](super::interim)): each shared filter chain in which a changed
/// service holds other rules while nat changes than it held before, with every
/// service's part of it, the changed services' parts as they are held in
/// between and the others' as they are. Empty when there is none.
fn interim_filter(applied: &Applied, changes: &[Change], family: IpFamily) -> String {
    let chains: Vec<SharedChain> = SharedChain::ALL
        .into_iter()
        .filter(|w| w.table() == Table::Filter)
        .collect();
    let mut held: BTreeMap<&ServiceKey, Vec<String>> = BTreeMap::new();
    let mut differs = vec![false; chains.len()];
    for change in changes {
        let old = change.old.as_ref();
        let new = applied.services.get(&change.key);
        let parts: Vec<(ChainName, &str, &str)> = chains
            .iter()
            .map(|w| {
                let (before, after) = (
                    old.map_or("", |s| s.shared_text(*w)),
                    new.map_or("", |s| s.shared_text(*w)),
                );
                (w.chain(), before, after)
            })
            .collect();
        if parts.iter().all(|(_, o, n)| o == n) {
            continue;
        }
        let Some(between) = interim::service_parts(&parts, family) else {
            // Its old parts, held until after nat.
            held.insert(&change.key, parts.iter().map(|p| p.1.to_owned()).collect());
            continue;
        };
        for (k, (part, now)) in parts.iter().zip(&between).enumerate() {
            differs[k] |= part.1 != now;
        }
        held.insert(&change.key, between);
    }
    let mut text = String::new();
    if !differs.contains(&true) {
        return text;
    }
    let keys: BTreeSet<&ServiceKey> = applied
        .services
        .keys()
        .chain(held.keys().copied())
        .collect();
    // Writing into a String cannot fail.
    let _ = restore::open_table(&mut text, Table::Filter);
    for (k, which) in chains.iter().enumerate().filter(|(k, _)| differs[*k]) {
        let _ = restore::declare(&mut text, which.chain().as_str());
        let parts = keys.iter().map(|key| match held.get(key) {
            Some(between) => between[k].as_str(),
            None => applied
                .services
                .get(*key)
                .map_or("", |s| s.shared_text(*which)),
        });
        text.push_str(&incremental::shared_text(&applied.rules, *which, parts));
    }
    let _ = restore::commit(&mut text);
    text
}

/// What the nat table held of the changed services before a partial sync, as
/// [`pieces_over`] takes it: the shared nat chains and the services' old own
/// chains declared, and their old rules (the rules of other services jump to
/// none of these services' chains); and `revived` declared, the chains an
/// earlier delete left in place (flushed, as something else jumps to them)
/// that a service writes again: they exist, so they are not new.
fn nat_before(changes: &[Change], revived: &[ChainName]) -> String {
    let nat: Vec<SharedChain> = SharedChain::ALL
        .into_iter()
        .filter(|w| w.table() == Table::Nat)
        .collect();
    let old = || changes.iter().filter_map(|c| c.old.as_ref());
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = restore::open_table(&mut text, Table::Nat);
    for which in &nat {
        let _ = restore::declare(&mut text, which.chain().as_str());
    }
    for (name, _) in old().flat_map(ServiceText::chains) {
        let _ = restore::declare(&mut text, name.as_str());
    }
    for name in revived {
        let _ = restore::declare(&mut text, name.as_str());
    }
    for service in old() {
        for (_, rules) in service.chains() {
            text.push_str(rules);
        }
        for which in &nat {
            text.push_str(service.shared_text(*which));
        }
    }
    let _ = restore::commit(&mut text);
    text
}

/// What a drift check found.
enum DriftCheck {
    /// Not due (or not supported).
    NotDue,
    /// Every canary and jump rule in place.
    InPlace,
    /// This one gone (boxed: a rule is large next to the other variants).
    Drifted(Box<JumpRule>),
    /// The check could not be made; why.
    Failed(String),
}

/// What one sync's compile gives its report: the flows it makes stale, the
/// services left out, the slice parts ignored, and how many services were compiled.
struct Round {
    stale_flows: Vec<StaleFlow>,
    rejected: Vec<CompileError>,
    warnings: Vec<CompileError>,
    recompiled: usize,
}

/// What a full sync does with the chains the kernel holds and svcnat no longer
/// wants.
#[derive(Default)]
struct Stale {
    /// Flushed and deleted.
    deleted: Vec<ChainName>,
    /// Flushed and kept: a rule svcnat does not write still jumps to them.
    kept: Vec<KeptChain>,
}

/// The service chains a nat table dump (`saved`, from the kernel) declares that
/// the applied state does not have: left by an earlier run, to be flushed and
/// deleted. Only chains named exactly as svcnat names them (`KUBE-SVC-`,
/// `KUBE-SEP-`, … and a 16-character hash) are ever touched, so another
/// program's `KUBE-SEP-MINE` is left alone; one that a rule in a chain this sync
/// does not rewrite jumps to (an old kube-proxy's `KUBE-XLB-…`) is flushed but
/// kept, as its `-X` would fail. In name order.
fn stale_chains(applied: &Applied, saved: Option<&str>) -> Stale {
    let Some(saved) = saved else {
        return Stale::default();
    };
    let mut wanted: Option<HashSet<&ChainName>> = None;
    let mut stale: BTreeSet<ChainName> = BTreeSet::new();
    for (table, name) in crate::parse::declared_chains(saved) {
        if table != Table::Nat || !is_hashed_chain(name.as_str()) {
            continue;
        }
        let wanted = wanted.get_or_insert_with(|| {
            applied
                .services
                .values()
                .flat_map(|s| s.chains().map(|(n, _)| n))
                .collect()
        });
        if !wanted.contains(&name) {
            stale.insert(name);
        }
    }
    if stale.is_empty() {
        return Stale::default();
    }
    let wanted: HashSet<&str> = wanted
        .unwrap_or_default()
        .into_iter()
        .map(ChainName::as_str)
        .collect();
    // Chains this sync rewrites (so their rules' jumps go away first): the
    // wanted service chains, the fixed ones, the stale ones themselves.
    let rewritten = |chain: &str| {
        (is_owned_chain(chain) && !is_service_chain(chain))
            || chain == CANARY_CHAIN
            || stale.contains(chain)
            || wanted.contains(chain)
    };
    let mut referenced: BTreeMap<ChainName, String> = BTreeMap::new();
    for (chain, target) in jumps_in_dump(saved, |chain| !rewritten(chain)) {
        if let Some(to) = stale.get(target.as_str())
            && !referenced.contains_key(to)
        {
            referenced.insert(to.clone(), chain.to_owned());
        }
    }
    let mut out = Stale::default();
    for name in stale {
        match referenced.remove(&name) {
            Some(from) => out.kept.push(KeptChain {
                table: Table::Nat,
                reason: format!("a rule svcnat did not write, in {from}, jumps to it"),
                chain: name,
            }),
            None => out.deleted.push(name),
        }
    }
    out
}

/// Every `(chain, target)` of the `-A CHAIN … -j|-g TARGET` lines of a dump
/// whose chain `from` takes, words split as `iptables-restore` splits them (the
/// crate's lexer): a `-j` inside a quoted comment is part of the comment, not the
/// rule's target. Only the lines `from` takes are split into words.
fn jumps_in_dump<'a>(
    saved: &'a str,
    from: impl Fn(&str) -> bool + 'a,
) -> impl Iterator<Item = (&'a str, String)> + 'a {
    saved.lines().filter_map(move |line| {
        let (chain, _) = line.strip_prefix("-A ")?.split_once(' ')?;
        if !from(chain) {
            return None;
        }
        let mut words = tokenize(line).ok()?.into_iter();
        words.find(|w| !w.quoted && (w.text == "-j" || w.text == "-g"))?;
        words.next().map(|target| (chain, target.text))
    })
}

/// The full payload: every chain of the applied state, the canaries, and the
/// `stale` nat chains flushed and deleted (or kept).
fn full_payload(
    rules: &Rules,
    services: &BTreeMap<ServiceKey, ServiceText>,
    stale: &Stale,
) -> Payload {
    let canaries: Vec<(Table, ChainName, String)> = canaries()
        .into_iter()
        .map(|c| {
            let mut text = String::new();
            // Writing into a String cannot fail.
            let _ = restore::rule(&mut text, c.chain.as_str(), &c.rule);
            (c.table, c.chain, text)
        })
        .collect();
    let flushed: Vec<ChainName> = stale.kept.iter().map(|k| k.chain.clone()).collect();
    let extras = Extras {
        chains: &canaries,
        flushed: &flushed,
        deleted: &stale.deleted,
    };
    let (text, written) = incremental::full_text(rules, services.values(), extras);
    Payload {
        family: rules.family(),
        full: true,
        written,
        deleted: stale
            .deleted
            .iter()
            .map(|n| (Table::Nat, n.clone()))
            .collect(),
        text,
    }
}

/// The stale flows of a set of changes; `services` holds the new state.
fn flows_of(changes: &[Change], services: &BTreeMap<ServiceKey, ServiceText>) -> Vec<StaleFlow> {
    changes
        .iter()
        .flat_map(|c| {
            stale_flows_of(
                c.old.as_ref().map(|s| s.ports.as_slice()),
                services.get(&c.key).map(|s| s.ports.as_slice()),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain an earlier delete left in place (flushed: another program's rule
    /// jumps to it) that a partial sync writes again exists: it is declared in
    /// what the pieces are planned over, so it is not written in parts while
    /// that rule still reaches it.
    #[test]
    fn a_revived_chain_is_not_taken_as_new() {
        let kept = ChainName::new("KUBE-SVC-KEPT").unwrap();
        let before = nat_before(&[], std::slice::from_ref(&kept));
        assert!(before.contains("\n:KUBE-SVC-KEPT - [0:0]\n"), "{before}");
        let mut payload = String::from("*nat\n:KUBE-SEP-A - [0:0]\n:KUBE-SVC-KEPT - [0:0]\n");
        payload.push_str("-A KUBE-SEP-A -j DNAT --to-destination 10.1.0.1:80\n");
        for _ in 0..10 {
            payload.push_str("-A KUBE-SVC-KEPT -j KUBE-SEP-A\n");
        }
        payload.push_str("COMMIT\n");
        let written_in = |before: &str| {
            let pieces = pieces_over(&payload, before, IpFamily::Ipv4, 1).unwrap();
            pieces
                .iter()
                .filter(|p| p.contains("-A KUBE-SVC-KEPT"))
                .count()
        };
        assert_eq!(written_in(&before), 1);
        // Not declared, it would be taken as new and written in parts.
        assert_eq!(written_in(&nat_before(&[], &[])), 3);
    }
}
