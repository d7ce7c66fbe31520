//! The [`Syncer`]: the desired state, the rules last applied (per service, as
//! text), the executor, and the syncs that turn changes into payloads.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::compile::incremental::{
    self, All, Incremental, PortFlows, Rules, ServiceText, Shared as SharedChain, is_service_chain,
};
use crate::compile::jump_rules;
use crate::error::CompileError;
use crate::exec::{ExecError, Executor, RestoreOptions};
use crate::model::{
    ClusterState, EndpointSlice, IpFamily, Protocol, ProxyConfig, Service, ServiceKey, SliceKey,
};
use crate::ruleset::{ChainName, Ruleset, Table};

use super::plan::{Payload, PayloadBuilder, diff_chains};
use crate::flows::{FlowDestination, StaleFlow};

/// What one sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// True for a full sync.
    pub full: bool,
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
    /// One line for a log: `full|partial, B bytes, W chains written, D chains
    /// deleted`, then the services recompiled, and the stale flows, rejected
    /// services and warnings when there are any.
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
        write!(
            f,
            "{}, {} bytes, {} chains written, {} chains deleted, {} services recompiled",
            if self.full { "full" } else { "partial" },
            self.bytes,
            self.payload.chains_written(),
            self.payload.chains_deleted(),
            self.recompiled,
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

/// Why a sync failed. The [`Syncer`] is left ready: its next sync is a full one.
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
    state: ClusterState,
    dirty: BTreeSet<ServiceKey>,
    applied: Option<Applied>,
    trusted: bool,
    full_resync_period: Option<Duration>,
    last_full: Option<Instant>,
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
            state: ClusterState::new(),
            dirty: BTreeSet::new(),
            applied: None,
            trusted: false,
            full_resync_period: None,
            last_full: None,
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

    /// The desired state.
    pub fn state(&self) -> &ClusterState {
        &self.state
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
        self.trusted = false;
        Ok(())
    }

    /// The config.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Makes the next sync a full one.
    pub fn request_full_sync(&mut self) {
        self.trusted = false;
    }

    /// Adds or replaces a Service.
    pub fn upsert_service(&mut self, service: Service) {
        let key = service.key();
        if self.state.service(&key) != Some(&service) {
            self.state.upsert_service(service);
            self.dirty.insert(key);
        }
    }

    /// Deletes a Service.
    pub fn remove_service(&mut self, key: &ServiceKey) {
        if self.state.remove_service(key).is_some() {
            self.dirty.insert(key.clone());
        }
    }

    /// Adds or replaces an EndpointSlice. A slice whose service label changed
    /// moves: the service it left is recompiled too.
    pub fn upsert_slice(&mut self, slice: EndpointSlice) {
        let key = slice.service();
        if self.state.slice(&slice.key()) == Some(&slice) {
            return;
        }
        if let Some(old) = self.state.upsert_slice(slice) {
            self.dirty.insert(old.service());
        }
        self.dirty.insert(key);
    }

    /// Deletes the EndpointSlice `name` of service `key`.
    pub fn remove_slice(&mut self, key: &ServiceKey, name: &str) {
        if self.state.remove_slice(key, name).is_some() {
            self.dirty.insert(key.clone());
        }
    }

    /// Deletes the EndpointSlice with this namespace and name, whichever service it
    /// belonged to (what a Kubernetes delete event names); returns it.
    pub fn remove_slice_by_key(&mut self, key: &SliceKey) -> Option<EndpointSlice> {
        let removed = self.state.remove_slice_by_key(key)?;
        self.dirty.insert(removed.service());
        Some(removed)
    }

    /// Replaces the whole state; the services that differ are marked dirty.
    pub fn replace_state(&mut self, state: ClusterState) {
        let old = &self.state;
        let keys: BTreeSet<ServiceKey> = old
            .services()
            .chain(state.services())
            .map(Service::key)
            .chain(
                old.slices()
                    .chain(state.slices())
                    .map(EndpointSlice::service),
            )
            .collect();
        for key in keys {
            let same = old.service(&key) == state.service(&key)
                && old.slices_of(&key).eq(state.slices_of(&key));
            if !same {
                self.dirty.insert(key);
            }
        }
        self.state = state;
    }

    /// The ruleset svcnat last compiled, which the kernel holds after a successful
    /// sync (read back from the rendered text on demand, for checks).
    pub fn applied_ruleset(&self) -> Option<Ruleset> {
        let a = self.applied.as_ref()?;
        let (text, _) = incremental::full_text(&a.rules, a.services.values(), &[]);
        crate::parse::parse_as(&text, a.rules.family()).ok()
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
    /// full resync is due. Holds the executor's lock ([`Executor::lock`]) for the
    /// whole sync: every executor call of the sync is made under it.
    ///
    /// # Errors
    /// An executor failure, or the executor's lock not taken (another process may
    /// have changed the tables meanwhile); the next sync is then a full one.
    pub fn sync_at(&mut self, now: Instant) -> Result<SyncReport, SyncError> {
        // Another process may have synced the tables while this one could not.
        let _lock = self.executor.lock().inspect_err(|_| self.trusted = false)?;
        let period_due = match (self.full_resync_period, self.last_full) {
            (Some(period), Some(last)) => now.saturating_duration_since(last) >= period,
            _ => false,
        };
        if !self.trusted || self.applied.is_none() || period_due {
            return self.full_sync(now);
        }
        match self.partial_sync()? {
            Some(report) => Ok(report),
            // The cluster crossed the large-cluster threshold: every comment changes.
            None => self.full_sync(now),
        }
    }

    fn family(&self) -> IpFamily {
        self.config.ip_family
    }

    /// This sync's stale flows plus those of failed syncs before it.
    fn take_flows(&mut self, flows: Vec<StaleFlow>) -> Vec<StaleFlow> {
        let mut all = std::mem::take(&mut self.pending_flows);
        all.extend(flows);
        all.sort();
        all.dedup();
        all
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
        let mut compiled = Vec::with_capacity(self.dirty.len());
        let mut total = applied.endpoint_total;
        let mut round_rejected = Vec::new();
        let mut round_warnings = Vec::new();
        for key in &self.dirty {
            let mut service_warnings = Vec::new();
            let new = match self.compiler.one(
                &self.state,
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
        self.dirty.clear();
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
    fn full_sync(&mut self, now: Instant) -> Result<SyncReport, SyncError> {
        let family = self.family();
        let round = self.compile_for_full()?;
        let applied = self.applied.as_ref().expect("compiled above");
        // Read: the chains the kernel's nat table declares. A failed read only
        // means chains an earlier run left stay (unreferenced, so harmless).
        let saved = self.executor.save(family, Table::Nat).ok();
        // Plan, without IO: every chain written, the left-over ones deleted.
        let stale = stale_chains(applied, saved.as_deref());
        let payload = full_payload(&applied.rules, &applied.services, &stale);
        let jumps = jump_rules(&self.config)?;
        // Apply.
        self.trusted = false;
        let applied_ok = self
            .executor
            .restore(family, payload.text(), RestoreOptions::default())
            .and_then(|()| self.executor.ensure_jumps(family, &jumps));
        if let Err(e) = applied_ok {
            // The rules are not known to be applied, but the flows they make stale
            // are: keep them for the next successful sync.
            self.pending_flows.extend(round.stale_flows);
            return Err(e.into());
        }
        self.trusted = true;
        self.last_full = Some(now);
        Ok(SyncReport {
            full: true,
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
                round.recompiled = self.state.service_count();
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
        } = self.compiler.all(&self.state, &self.config)?;
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
        self.dirty.clear();
        Ok(Round {
            stale_flows,
            rejected,
            warnings,
            recompiled: 0,
        })
    }

    /// `Ok(None)` when a full sync is needed instead.
    fn partial_sync(&mut self) -> Result<Option<SyncReport>, SyncError> {
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
        // A shared chain whose part of some service changed is written whole.
        let shared: Vec<(Table, ChainName, String)> = dirty_shared
            .into_iter()
            .map(|which| {
                let text =
                    incremental::shared_text(&applied.rules, which, applied.services.values());
                (which.table(), which.chain(), text)
            })
            .collect();
        let shared_of = |table: Table| {
            shared
                .iter()
                .filter(move |(t, _, _)| *t == table)
                .map(|(_, name, text)| (name, text.as_str()))
        };
        let mut builder = PayloadBuilder::default();
        builder.table(Table::Filter, shared_of(Table::Filter), &[]);
        builder.table(
            Table::Nat,
            shared_of(Table::Nat).chain(written.iter().copied()),
            &deleted,
        );
        let payload = builder.finish(family, false);
        let stale_flows = flows_of(&changes, &applied.services);
        if !payload.is_empty()
            && let Err(e) = self
                .executor
                .restore(family, payload.text(), RestoreOptions::default())
        {
            // The rules are not known to be applied, but the flows they make stale
            // are: keep them for the next successful sync.
            self.pending_flows.extend(stale_flows);
            self.trusted = false;
            return Err(e.into());
        }
        Ok(Some(SyncReport {
            full: false,
            bytes: payload.text().len(),
            payload,
            stale_flows: self.take_flows(stale_flows),
            rejected,
            warnings,
            recompiled: changes.len(),
        }))
    }
}

/// What one sync's compile gives its report: the flows it makes stale, the
/// services left out, the slice parts ignored, and how many services were compiled.
struct Round {
    stale_flows: Vec<StaleFlow>,
    rejected: Vec<CompileError>,
    warnings: Vec<CompileError>,
    recompiled: usize,
}

/// The service chains a nat table dump (`saved`, from the kernel) declares that
/// the applied state does not have: left by an earlier run, to be flushed and
/// deleted. Only chains svcnat names (`KUBE-SVC-`, `KUBE-SEP-`, …) are ever
/// touched; in name order.
fn stale_chains(applied: &Applied, saved: Option<&str>) -> Vec<ChainName> {
    let Some(saved) = saved else {
        return Vec::new();
    };
    let mut wanted: Option<HashSet<&ChainName>> = None;
    let mut stale: BTreeSet<ChainName> = BTreeSet::new();
    for (table, name) in crate::parse::declared_chains(saved) {
        if table != Table::Nat || !is_service_chain(name.as_str()) {
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
    stale.into_iter().collect()
}

/// The full payload: every chain of the applied state, and `stale` nat chains
/// deleted.
fn full_payload(
    rules: &Rules,
    services: &BTreeMap<ServiceKey, ServiceText>,
    stale: &[ChainName],
) -> Payload {
    let (text, written) = incremental::full_text(rules, services.values(), stale);
    Payload {
        family: rules.family(),
        full: true,
        written,
        deleted: stale.iter().map(|n| (Table::Nat, n.clone())).collect(),
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

/// The conntrack entries a change of one service makes stale (UDP and SCTP only):
/// flows to endpoints that are gone, and flows to ports that have just gained
/// endpoints.
fn stale_flows_of(old: Option<&[PortFlows]>, new: Option<&[PortFlows]>) -> Vec<StaleFlow> {
    let mut out = Vec::new();
    let (old_ports, new_ports) = (old.unwrap_or_default(), new.unwrap_or_default());
    let same_port = |a: &PortFlows, b: &PortFlows| {
        a.protocol == b.protocol && a.destinations.first() == b.destinations.first()
    };
    let mut push = |port: &PortFlows, endpoint: Option<IpAddr>| {
        for d in &port.destinations {
            out.push(StaleFlow {
                protocol: port.protocol,
                destination: FlowDestination::Service(*d),
                endpoint,
            });
        }
        if let Some(np) = port.node_port {
            out.push(StaleFlow {
                protocol: port.protocol,
                destination: FlowDestination::NodePort(np),
                endpoint,
            });
        }
    };
    for port in old_ports.iter().filter(|p| p.protocol != Protocol::Tcp) {
        let now: Vec<SocketAddr> = new_ports
            .iter()
            .find(|n| same_port(port, n))
            .map(|n| n.endpoints.clone())
            .unwrap_or_default();
        let gone: BTreeSet<IpAddr> = port
            .endpoints
            .iter()
            .filter(|e| !now.contains(e))
            .map(SocketAddr::ip)
            .collect();
        for ip in gone {
            push(port, Some(ip));
        }
    }
    for port in new_ports.iter().filter(|p| p.protocol != Protocol::Tcp) {
        let had = old_ports
            .iter()
            .find(|o| same_port(o, port))
            .is_some_and(|o| !o.endpoints.is_empty());
        if !had && !port.endpoints.is_empty() {
            push(port, None);
        }
    }
    out.sort();
    out.dedup();
    out
}
