//! Keeping a node's tables in step with a changing cluster, sending only what changed.
//!
//! [`plan`] is the pure planner: from the ruleset last applied (or none) and the next
//! one, the restore [`Payload`] that turns one into the other: every chain whose
//! rules changed is written whole (its chain line flushes it under `--noflush`),
//! chains no longer needed are flushed and deleted (`-X`), and only chains svcnat
//! owns (`KUBE-SVC-`, `KUBE-SVL-`, `KUBE-EXT-`, `KUBE-FW-`, `KUBE-SEP-`) are ever
//! deleted. Unlike kube-proxy, which rewrites its top-level chains on every sync,
//! svcnat leaves a chain out unless its content changed.
//!
//! [`Syncer`] owns the last applied state, kept per service, and an [`Executor`].
//! Changes (a Service or EndpointSlice upserted or deleted, or a whole new state,
//! diffed per service) mark services dirty; a sync recompiles only those, so the
//! cost of a one-service change does not grow with the size of the cluster. The
//! first sync, any sync after a failure, and (optionally) a periodic one are full:
//! every chain is written, stale service chains found in the kernel are deleted, and
//! the jump rules from the built-in chains are ensured.
//!
//! ```
//! use svcnat::exec::Recorder;
//! use svcnat::model::*;
//! use svcnat::sync::Syncer;
//!
//! let config = ProxyConfig::default().with_cluster_cidrs(["10.0.0.0/8".parse().unwrap()]);
//! let mut syncer = Syncer::new(Recorder::new(), config)?;
//! syncer.upsert_service(
//!     Service::cluster_ip("ns1", "svc1", "172.30.0.41".parse().unwrap())
//!         .with_port(ServicePort::tcp("p80", 80)),
//! );
//! let first = syncer.sync()?;
//! assert!(first.full);
//!
//! syncer.upsert_slice(
//!     EndpointSlice::new("ns1", "svc1", "svc1-a", IpFamily::IPv4)
//!         .with_port(EndpointPort::tcp("p80", 80))
//!         .with_endpoint(Endpoint::ready("10.180.0.1".parse().unwrap())),
//! );
//! let second = syncer.sync()?;
//! assert!(!second.full);
//! assert!(second.payload.to_text().contains(":KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::compile::context::Context;
use crate::compile::naming::is_service_chain;
use crate::compile::{ServiceRules, SharedChain, compile_one, compile_services, fixed, jump_rules};
use crate::error::CompileError;
use crate::exec::{ExecError, Executor, RestoreOptions};
use crate::model::{
    ClusterState, EndpointSlice, IpFamily, Protocol, ProxyConfig, Service, ServiceKey,
};
use crate::render;
use crate::ruleset::{Chain, ChainName, Rule, Ruleset, Table};

/// Where a stale flow was addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FlowDestination {
    /// A service address (cluster IP, external IP or load-balancer IP) and port.
    Service(SocketAddr),
    /// A node port, on any node address.
    NodePort(u16),
}

/// Conntrack entries the caller should delete after a sync: UDP and SCTP flows
/// keep going to their old destination until their entry expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StaleFlow {
    /// UDP or SCTP.
    pub protocol: Protocol,
    /// Where the flows were addressed.
    pub destination: FlowDestination,
    /// The endpoint they were sent to, which is gone; `None` for a service that has
    /// just gained endpoints (entries made while it had none are stale).
    pub endpoint: Option<IpAddr>,
}

/// One table's part of a restore payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablePayload {
    /// The table.
    pub table: Table,
    /// Chains written whole (declared, which flushes them, then their rules).
    pub written: Vec<Chain>,
    /// Chains flushed and deleted.
    pub deleted: Vec<ChainName>,
}

/// A restore payload for one family, applied with `--noflush`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The family.
    pub family: IpFamily,
    /// True for a full sync (every chain written).
    pub full: bool,
    /// The tables that change, filter before nat.
    pub tables: Vec<TablePayload>,
}

impl Payload {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.tables
            .iter()
            .all(|t| t.written.is_empty() && t.deleted.is_empty())
    }

    /// The number of chains written.
    pub fn chains_written(&self) -> usize {
        self.tables.iter().map(|t| t.written.len()).sum()
    }

    /// The number of chains deleted.
    pub fn chains_deleted(&self) -> usize {
        self.tables.iter().map(|t| t.deleted.len()).sum()
    }

    /// Writes the `iptables-restore` text.
    ///
    /// # Errors
    /// Only those of the writer.
    pub fn write_fmt<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        for t in self
            .tables
            .iter()
            .filter(|t| !t.written.is_empty() || !t.deleted.is_empty())
        {
            writeln!(out, "*{}", t.table)?;
            for chain in &t.written {
                render::write_chain_line(&chain.name, out)?;
            }
            for name in &t.deleted {
                render::write_chain_line(name, out)?;
            }
            for chain in &t.written {
                render::write_rules(chain, out)?;
            }
            for name in &t.deleted {
                writeln!(out, "-X {name}")?;
            }
            writeln!(out, "COMMIT")?;
        }
        Ok(())
    }

    /// The `iptables-restore` text.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = self.write_fmt(&mut s);
        s
    }
}

/// The payload that turns `previous` (what the kernel holds, `None` if unknown)
/// into `next`. Without a previous ruleset every chain is written (a full sync).
pub fn plan(previous: Option<&Ruleset>, next: &Ruleset) -> Payload {
    let tables = next
        .tables
        .iter()
        .map(|t| {
            let before = previous.and_then(|p| p.table(t.table));
            let written = t
                .chains
                .values()
                .filter(|c| before.and_then(|b| b.chains.get(c.name.as_str())) != Some(*c))
                .cloned()
                .collect();
            let deleted = before
                .map(|b| {
                    b.chains
                        .keys()
                        .filter(|name| {
                            is_service_chain(name.as_str()) && !t.chains.contains_key(name.as_str())
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            TablePayload {
                table: t.table,
                written,
                deleted,
            }
        })
        .collect();
    Payload {
        family: next.family,
        full: previous.is_none(),
        tables,
    }
}

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
    /// Parts of EndpointSlices ignored, as kube-proxy ignores them, without dropping
    /// their service: a port that matches no service port (the usual state while a
    /// Service's ports change and its slices catch up), port 0, an address of the
    /// other family.
    pub warnings: Vec<CompileError>,
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

/// What svcnat believes the kernel holds, per service.
#[derive(Debug, Clone)]
struct Applied {
    ctx: Context,
    services: BTreeMap<ServiceKey, ServiceRules>,
    endpoint_total: usize,
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
}

impl<E: Executor> Syncer<E> {
    /// A syncer with an empty cluster state; its first sync is full.
    ///
    /// # Errors
    /// An invalid config.
    pub fn new(executor: E, config: ProxyConfig) -> Result<Self, CompileError> {
        Context::new(&config)?;
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
        Context::new(&config)?;
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

    /// Adds or replaces an EndpointSlice.
    pub fn upsert_slice(&mut self, slice: EndpointSlice) {
        let key = slice.service();
        if self.state.slices_of(&key).any(|s| *s == slice) {
            return;
        }
        self.state.upsert_slice(slice);
        self.dirty.insert(key);
    }

    /// Deletes the EndpointSlice `name` of service `key`.
    pub fn remove_slice(&mut self, key: &ServiceKey, name: &str) {
        if self.state.remove_slice(key, name).is_some() {
            self.dirty.insert(key.clone());
        }
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

    /// The ruleset svcnat believes the kernel holds (assembled on demand, for checks).
    pub fn applied_ruleset(&self) -> Option<Ruleset> {
        let a = self.applied.as_ref()?;
        Some(fixed::assemble(&a.ctx, a.services.values()))
    }

    /// Brings the kernel in step with the state now.
    ///
    /// # Errors
    /// See [`Syncer::sync_at`].
    pub fn sync(&mut self) -> Result<SyncReport, SyncError> {
        self.sync_at(Instant::now())
    }

    /// Brings the kernel in step with the state; `now` decides whether the periodic
    /// full resync is due.
    ///
    /// # Errors
    /// An executor failure; the next sync is then a full one.
    pub fn sync_at(&mut self, now: Instant) -> Result<SyncReport, SyncError> {
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

    fn full_sync(&mut self, now: Instant) -> Result<SyncReport, SyncError> {
        let (ctx, services, rejected, warnings) =
            compile_services(&self.state, &self.config, false)?;
        let ruleset = fixed::assemble(&ctx, services.iter());
        let mut payload = plan(None, &ruleset);
        // Service chains left in the kernel by an earlier run: flush and delete. A
        // failed read only means they stay (they are not referenced, so harmless).
        if let Ok(saved) = self.executor.save(self.family(), Table::Nat) {
            let nat = payload.tables.iter_mut().find(|t| t.table == Table::Nat);
            if let (Some(nat), Some(wanted)) = (nat, ruleset.table(Table::Nat)) {
                let mut stale: BTreeSet<&str> = BTreeSet::new();
                for line in saved.lines() {
                    if let Some(name) = line
                        .strip_prefix(':')
                        .and_then(|l| l.split_whitespace().next())
                        && is_service_chain(name)
                        && !wanted.chains.contains_key(name)
                    {
                        stale.insert(name);
                    }
                }
                nat.deleted = stale
                    .into_iter()
                    .filter_map(|n| ChainName::new(n).ok())
                    .collect();
            }
        }
        let jumps = jump_rules(&self.config)?;
        let text = payload.to_text();
        self.trusted = false;
        self.executor
            .restore(self.family(), &text, RestoreOptions::default())?;
        for jump in &jumps {
            self.executor.ensure_jump(self.family(), jump)?;
        }
        let services: BTreeMap<ServiceKey, ServiceRules> =
            services.into_iter().map(|s| (s.key.clone(), s)).collect();
        let mut stale_flows = Vec::new();
        let keys: BTreeSet<&ServiceKey> = services
            .keys()
            .chain(self.applied.iter().flat_map(|a| a.services.keys()))
            .collect();
        for key in keys {
            let old = self.applied.as_ref().and_then(|a| a.services.get(key));
            stale_flows.extend(stale_flows_of(old, services.get(key)));
        }
        let endpoint_total = services.values().map(|s| s.endpoint_count).sum();
        self.applied = Some(Applied {
            ctx,
            services,
            endpoint_total,
        });
        self.trusted = true;
        self.last_full = Some(now);
        self.dirty.clear();
        Ok(SyncReport {
            full: true,
            bytes: text.len(),
            payload,
            stale_flows: self.take_flows(stale_flows),
            rejected,
            warnings,
        })
    }

    /// `Ok(None)` when a full sync is needed instead.
    fn partial_sync(&mut self) -> Result<Option<SyncReport>, SyncError> {
        let family = self.family();
        let applied = self.applied.as_mut().expect("checked by sync_at");
        let mut rejected = Vec::new();
        let mut warnings = Vec::new();
        let mut changes = Vec::new();
        let mut total = applied.endpoint_total;
        for key in &self.dirty {
            let new = match compile_one(&self.state, key, &self.config, &applied.ctx, &mut warnings)
            {
                Ok(rules) => rules,
                Err(e) => {
                    rejected.push(e);
                    None
                }
            };
            let old_count = applied.services.get(key).map_or(0, |s| s.endpoint_count);
            total = total - old_count + new.as_ref().map_or(0, |s| s.endpoint_count);
            changes.push((key.clone(), new));
        }
        if applied
            .ctx
            .clone()
            .for_endpoint_total(total)
            .endpoint_comments
            != applied.ctx.endpoint_comments
        {
            return Ok(None);
        }

        let mut nat = TablePayload {
            table: Table::Nat,
            written: Vec::new(),
            deleted: Vec::new(),
        };
        let mut filter = TablePayload {
            table: Table::Filter,
            written: Vec::new(),
            deleted: Vec::new(),
        };
        let mut dirty_shared = BTreeSet::new();
        let mut stale_flows = Vec::new();
        for (key, new) in changes {
            let old = applied.services.get(&key);
            let old_chains: BTreeMap<&ChainName, &Chain> = old
                .iter()
                .flat_map(|s| &s.chains)
                .map(|c| (&c.name, c))
                .collect();
            let new_chains: BTreeSet<&ChainName> = new
                .iter()
                .flat_map(|s| &s.chains)
                .map(|c| &c.name)
                .collect();
            for chain in new.iter().flat_map(|s| &s.chains) {
                if old_chains.get(&chain.name) != Some(&chain) {
                    nat.written.push(chain.clone());
                }
            }
            for name in old_chains.keys().filter(|n| !new_chains.contains(*n)) {
                nat.deleted.push((*name).clone());
            }
            for which in SharedChain::ALL {
                if shared_segment(old, which) != shared_segment(new.as_ref(), which) {
                    dirty_shared.insert(which);
                }
            }
            stale_flows.extend(stale_flows_of(old, new.as_ref()));
            match new {
                Some(rules) => {
                    applied.services.insert(key, rules);
                }
                None => {
                    applied.services.remove(&key);
                }
            }
        }
        applied.endpoint_total = total;
        // A shared chain whose segments changed is written whole, in service order.
        let mut shared_written = Vec::new();
        for which in dirty_shared {
            let rules = fixed::shared_rules(&applied.ctx, which, applied.services.values());
            shared_written.push((which, Chain::with_rules(which.chain(), rules)));
        }
        for (which, chain) in shared_written.into_iter().rev() {
            match which.table() {
                Table::Nat => nat.written.insert(0, chain),
                _ => filter.written.insert(0, chain),
            }
        }
        let payload = Payload {
            family,
            full: false,
            tables: vec![filter, nat],
        };
        self.dirty.clear();
        let text = payload.to_text();
        if !payload.is_empty()
            && let Err(e) = self
                .executor
                .restore(family, &text, RestoreOptions::default())
        {
            // The rules are not known to be applied, but the flows they make stale
            // are: keep them for the next successful sync.
            self.pending_flows.extend(stale_flows);
            self.trusted = false;
            return Err(e.into());
        }
        Ok(Some(SyncReport {
            full: false,
            bytes: text.len(),
            payload,
            stale_flows: self.take_flows(stale_flows),
            rejected,
            warnings,
        }))
    }
}

fn shared_segment(rules: Option<&ServiceRules>, which: SharedChain) -> Vec<&Rule> {
    rules
        .iter()
        .flat_map(|s| &s.shared)
        .filter(|(w, _)| *w == which)
        .map(|(_, r)| r)
        .collect()
}

/// The conntrack entries a change of one service makes stale (UDP and SCTP only):
/// flows to endpoints that are gone, and flows to ports that have just gained
/// endpoints.
fn stale_flows_of(old: Option<&ServiceRules>, new: Option<&ServiceRules>) -> Vec<StaleFlow> {
    let mut out = Vec::new();
    let ports = |s: Option<&ServiceRules>| -> Vec<crate::compile::PortFlows> {
        s.map(|s| s.ports.clone()).unwrap_or_default()
    };
    let (old_ports, new_ports) = (ports(old), ports(new));
    let same_port = |a: &crate::compile::PortFlows, b: &crate::compile::PortFlows| {
        a.protocol == b.protocol && a.destinations.first() == b.destinations.first()
    };
    let mut push = |port: &crate::compile::PortFlows, endpoint: Option<IpAddr>| {
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
