//! What the [`Syncer`](crate::sync::Syncer) asks of the compiler, and all it
//! asks: a whole cluster or one service compiled into per-service text, whether a
//! change of the endpoint total changes every service's rules, and the full text
//! or one shared chain's text put together from the services kept. The rest of
//! the compiler (sinks, passes, the fixed chains, the text assembly) stays behind
//! this door.

pub(crate) use super::assembly::Extras;
use super::context::Context;
use super::fixed::fixed_tables;
use super::naming;
use super::{Compiled, SharedChain, TextSink};
use super::{shared_chain_text, write_full, write_sections};
use crate::error::CompileError;
use crate::model::{ClusterState, IpFamily, ProxyConfig, ServiceKey};
use crate::ruleset::{ChainName, Table};

pub(crate) use super::PortFlows;
pub(crate) use super::SharedChain as Shared;
pub(crate) use super::compiled::Counter;
pub(crate) use super::nftables::incremental::{NftDelta, NftTable};
pub(crate) use super::sink::ServiceText;

/// The compiler as the `Syncer` uses it: its buffers, kept from one service to
/// the next, and the cluster-wide facts a compile is made under.
#[derive(Debug)]
pub(crate) struct Incremental {
    sink: TextSink,
}

/// The facts every service's rules were compiled under: the config's, adjusted
/// to the cluster's size. Services compiled under one `Rules` fit together.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    ctx: Context,
}

impl Rules {
    /// The family the rules are for.
    pub fn family(&self) -> IpFamily {
        self.ctx.family
    }

    /// True if a cluster of `endpoints` endpoints needs other rules than these
    /// (the large-cluster rule drops per-endpoint comments): every service must
    /// then be compiled again.
    pub fn changes_at(&self, endpoints: usize) -> bool {
        self.ctx
            .clone()
            .for_endpoint_total(endpoints)
            .endpoint_comments
            != self.ctx.endpoint_comments
    }
}

/// A whole cluster compiled: each valid service's text, the services left out and
/// the slice parts ignored.
pub(crate) struct All {
    pub rules: Rules,
    pub services: Vec<ServiceText>,
    pub rejected: Vec<CompileError>,
    pub warnings: Vec<CompileError>,
}

impl Incremental {
    /// A compiler that keeps each service's flows (for conntrack cleanup).
    pub fn new() -> Self {
        Incremental {
            sink: TextSink::per_service(true),
        }
    }

    /// Checks a config as every compile does.
    pub fn check(config: &ProxyConfig) -> Result<(), CompileError> {
        Context::new(config).map(drop)
    }

    /// Every service of `state`; invalid ones are left out and returned.
    pub fn all(&mut self, state: &ClusterState, config: &ProxyConfig) -> Result<All, CompileError> {
        let Compiled {
            ctx,
            services,
            rejected,
            warnings,
        } = super::compile_services(state, config, false, &mut self.sink, |sink, key, count| {
            sink.take_service(key.clone(), count)
        })?;
        Ok(All {
            rules: Rules { ctx },
            services,
            rejected,
            warnings,
        })
    }

    /// One service of `state` under `rules`: `Ok(None)` when it is absent or gets
    /// no rules (headless, other family).
    pub fn one(
        &mut self,
        state: &ClusterState,
        key: &ServiceKey,
        config: &ProxyConfig,
        rules: &Rules,
        warnings: &mut Vec<CompileError>,
    ) -> Result<Option<ServiceText>, CompileError> {
        let count = super::compile_one(state, key, config, &rules.ctx, &mut self.sink, warnings)?;
        Ok(count.map(|count| self.sink.take_service(key.clone(), count)))
    }
}

/// The full restore text of `services` under `rules`, nat first, with the
/// `extras` (canaries, stale chains flushed or deleted), in a buffer of its exact
/// size; and every chain it writes, nat before filter.
pub(crate) fn full_text<'a>(
    rules: &Rules,
    services: impl Iterator<Item = &'a ServiceText> + Clone,
    extras: Extras<'_>,
) -> (String, Vec<(Table, ChainName)>) {
    let mut counter = Counter::default();
    // Counting cannot fail; sizing the text first keeps its buffer exact.
    let _ = write_full(&rules.ctx, services.clone(), extras, &mut counter);
    let mut text = String::with_capacity(counter.0);
    // Writing into a String cannot fail.
    let _ = write_full(&rules.ctx, services.clone(), extras, &mut text);
    let (filter, nat) = fixed_tables(&rules.ctx);
    let extra = |table: Table| {
        extras
            .chains
            .iter()
            .filter(move |(t, _, _)| *t == table)
            .map(|(t, n, _)| (*t, n.clone()))
    };
    let mut written: Vec<(Table, ChainName)> =
        nat.chains.keys().map(|n| (Table::Nat, n.clone())).collect();
    written.extend(
        services
            .flat_map(|s| s.chains())
            .map(|(n, _)| (Table::Nat, n.clone())),
    );
    written.extend(extra(Table::Nat));
    written.extend(filter.chains.keys().map(|n| (Table::Filter, n.clone())));
    written.extend(extra(Table::Filter));
    (text, written)
}

/// The filter section of [`full_text`] without extras: what the kernel's filter
/// table holds of svcnat's chains once `services` are applied under `rules`.
pub(crate) fn filter_text<'a>(
    rules: &Rules,
    services: impl Iterator<Item = &'a ServiceText> + Clone,
) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = write_sections(
        &rules.ctx,
        services,
        Extras::default(),
        &[Table::Filter],
        &mut text,
    );
    text
}

/// The `-A` lines of one shared chain: each service's part of it, in service
/// order (its [`ServiceText::shared_text`], or the part a sync holds in between,
/// see [`Syncer`](crate::sync::Syncer)), and the chain's fixed tail.
pub(crate) fn shared_text<'a>(
    rules: &Rules,
    which: SharedChain,
    parts: impl Iterator<Item = &'a str>,
) -> String {
    shared_chain_text(&rules.ctx, which, parts)
}

/// True for a chain svcnat owns per service (`KUBE-SVC-`, `KUBE-SEP-`, …) and a
/// hash, named exactly as svcnat (and kube-proxy) name them: the only chains a
/// full sync deletes when it finds them in the kernel.
pub(crate) fn is_hashed_chain(name: &str) -> bool {
    naming::is_hashed_chain(name)
}

/// True for a chain svcnat writes: a fixed one or a service's.
pub(crate) fn is_owned_chain(name: &str) -> bool {
    super::fixed::is_owned_chain(name)
}

/// True for a chain svcnat owns per service (`KUBE-SVC-`, `KUBE-SEP-`, …): the
/// only chains a sync ever deletes.
pub(crate) fn is_service_chain(name: &str) -> bool {
    naming::is_service_chain(name)
}
