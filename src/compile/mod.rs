//! Model + config -> typed [`Ruleset`], as kube-proxy's iptables mode writes it;
//! or, with [`nftables`], the [`nft::Ruleset`](crate::nft::Ruleset) its nftables
//! mode writes, from the same validated input.
//!
//! Pure and deterministic: services are visited in [`ServiceKey`] order, ports in
//! their declared order, endpoints sorted by their `ip:port` string, so the same
//! state gives the same ruleset whatever order it was built in.
//!
//! The layout follows the pipeline: [`naming`] derives chain names, `input`
//! validates a service and its slices, `endpoints` picks the endpoints a port
//! uses (and what kube-proxy derives from them in either mode), `service` writes
//! one service's rules, `fixed` the top-level chains; `nftables` is the other
//! backend, with its own `fixed`, `service` and `naming`.
//!
//! ```
//! use svcnat::compile::compile;
//! use svcnat::model::*;
//! let mut state = ClusterState::new();
//! state.upsert_service(
//!     Service::cluster_ip("ns1", "svc1", "172.30.0.41".parse().unwrap())
//!         .with_port(ServicePort::tcp("p80", 80)),
//! );
//! state.upsert_slice(
//!     EndpointSlice::new("ns1", "svc1", "svc1-1", IpFamily::Ipv4)
//!         .with_port(EndpointPort::tcp("p80", 80))
//!         .with_endpoint(Endpoint::ready("10.180.0.1".parse().unwrap())),
//! );
//! let config = ProxyConfig::default().with_cluster_cidrs(["10.0.0.0/8".parse().unwrap()]);
//! let ruleset = compile(&state, &config).unwrap();
//! let text = svcnat::render::to_string(&ruleset);
//! assert!(text.contains("-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -j KUBE-SEP-SXIVWICOYRO3J4NJ"));
//! ```

mod assembly;
mod compiled;
pub(crate) mod context;
mod endpoints;
pub(crate) mod fixed;
pub(crate) mod incremental;
mod input;
pub mod naming;
mod nftables;
mod service;
mod sink;

pub use crate::ruleset::JumpRule;
use assembly::{shared_chain_text, write_full, write_sections};
pub use compiled::{CompiledText, compile_text, compile_text_reusing};
pub use context::check_config;
pub(crate) use fixed::is_owned_chain;
pub use fixed::{CANARY_CHAIN, canaries, jump_rules};
pub(crate) use nftables::TABLE as NFT_TABLE;
pub use nftables::{check_nftables_config, nftables, nftables_lenient, nftables_with_warnings};
pub(crate) use service::{PortFlows, ServiceRules};
use sink::TextSink;

use crate::error::CompileError;
use crate::model::{ClusterState, EndpointSlice, ProxyConfig, Service, ServiceKey};
use crate::ruleset::{ChainName, Ruleset, Table};
use context::Context;
use input::ServiceInput;
pub(crate) use service::Sink;

pub(crate) const KUBE_SERVICES: ChainName = ChainName::fixed("KUBE-SERVICES");
pub(crate) const KUBE_EXTERNAL_SERVICES: ChainName = ChainName::fixed("KUBE-EXTERNAL-SERVICES");
pub(crate) const KUBE_NODEPORTS: ChainName = ChainName::fixed("KUBE-NODEPORTS");
pub(crate) const KUBE_POSTROUTING: ChainName = ChainName::fixed("KUBE-POSTROUTING");
pub(crate) const KUBE_MARK_MASQ: ChainName = ChainName::fixed("KUBE-MARK-MASQ");
pub(crate) const KUBE_FORWARD: ChainName = ChainName::fixed("KUBE-FORWARD");
pub(crate) const KUBE_PROXY_FIREWALL: ChainName = ChainName::fixed("KUBE-PROXY-FIREWALL");
pub(crate) const KUBE_FIREWALL: ChainName = ChainName::fixed("KUBE-FIREWALL");

/// Every top-level chain svcnat writes.
pub(crate) const FIXED_CHAINS: [ChainName; 8] = [
    KUBE_SERVICES,
    KUBE_EXTERNAL_SERVICES,
    KUBE_NODEPORTS,
    KUBE_POSTROUTING,
    KUBE_MARK_MASQ,
    KUBE_FORWARD,
    KUBE_PROXY_FIREWALL,
    KUBE_FIREWALL,
];

/// A top-level chain that every service appends its capture, reject and drop rules to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum SharedChain {
    /// nat `KUBE-SERVICES`: cluster, external and load-balancer IP captures.
    NatServices,
    /// nat `KUBE-NODEPORTS`: node-port captures.
    NatNodePorts,
    /// filter `KUBE-SERVICES`: cluster IPs with no (local) endpoints.
    FilterServices,
    /// filter `KUBE-EXTERNAL-SERVICES`: external destinations with no (local) endpoints.
    FilterExternalServices,
    /// filter `KUBE-NODEPORTS`: health-check node ports.
    FilterNodePorts,
    /// filter `KUBE-PROXY-FIREWALL`: load-balancer traffic outside the source ranges.
    FilterProxyFirewall,
}

impl SharedChain {
    /// Every shared chain, in the order their rules are assembled.
    pub const ALL: [SharedChain; 6] = [
        SharedChain::NatServices,
        SharedChain::NatNodePorts,
        SharedChain::FilterServices,
        SharedChain::FilterExternalServices,
        SharedChain::FilterNodePorts,
        SharedChain::FilterProxyFirewall,
    ];

    /// The table the chain is in.
    pub fn table(self) -> Table {
        match self {
            SharedChain::NatServices | SharedChain::NatNodePorts => Table::Nat,
            _ => Table::Filter,
        }
    }

    /// The chain's name.
    pub fn chain(self) -> ChainName {
        match self {
            SharedChain::NatServices | SharedChain::FilterServices => KUBE_SERVICES,
            SharedChain::NatNodePorts | SharedChain::FilterNodePorts => KUBE_NODEPORTS,
            SharedChain::FilterExternalServices => KUBE_EXTERNAL_SERVICES,
            SharedChain::FilterProxyFirewall => KUBE_PROXY_FIREWALL,
        }
    }
}

/// The result of [`compile_lenient`] (and, with an [`nft::Ruleset`](crate::nft::Ruleset),
/// of [`nftables_lenient`]): the rules of every valid service, and the services
/// left out with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lenient<R = Ruleset> {
    /// The rules of the services that compiled.
    pub ruleset: R,
    /// One error per service left out, in service order.
    pub rejected: Vec<CompileError>,
    /// Parts of the state ignored without dropping a service, as kube-proxy ignores
    /// them (as in [`Warned::warnings`]): a slice port that matches no service port
    /// (usual while a Service's ports change and its slices catch up), port 0, an
    /// address of the other family, a duplicate endpoint, a slice whose service
    /// does not exist.
    pub warnings: Vec<CompileError>,
}

/// The result of [`compile_with_warnings`] (and, with an
/// [`nft::Ruleset`](crate::nft::Ruleset), of [`nftables_with_warnings`]): the
/// ruleset, and what was ignored on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warned<R = Ruleset> {
    /// The rules of every service.
    pub ruleset: R,
    /// The parts of the state ignored as kube-proxy ignores them (see the crate
    /// docs' table), in service order, then in the order they were found.
    pub warnings: Vec<CompileError>,
}

/// Compiles a cluster state into the ruleset for `config.ip_family`.
///
/// Headless services and services without a cluster IP of the family are skipped,
/// as kube-proxy skips them. What kube-proxy ignores with a log line (a slice port
/// matching no service port, port 0 in a slice, an endpoint of the other family, a
/// duplicate endpoint, a slice whose service does not exist) is ignored here too;
/// [`compile_with_warnings`] also returns what was ignored.
///
/// # Errors
/// The first invalid service, slice or config field, as a [`CompileError`] naming
/// the object and field. Nothing is returned in that case: no partial ruleset.
pub fn compile(state: &ClusterState, config: &ProxyConfig) -> Result<Ruleset, CompileError> {
    Ok(compile_with_warnings(state, config)?.ruleset)
}

/// [`compile`], returning the warnings too: the parts of the state left out as
/// kube-proxy leaves them out, each naming the object and field.
///
/// ```
/// use svcnat::model::*;
/// let mut state = ClusterState::new();
/// state.upsert_service(
///     Service::cluster_ip("ns1", "svc1", "172.30.0.41".parse().unwrap())
///         .with_port(ServicePort::tcp("http", 80)),
/// );
/// // The slice's port is unnamed: kube-proxy finds no service port for it.
/// state.upsert_slice(
///     EndpointSlice::new("ns1", "svc1", "svc1-1", IpFamily::Ipv4)
///         .with_port(EndpointPort::tcp("", 8080))
///         .with_endpoint(Endpoint::ready("10.180.0.1".parse().unwrap())),
/// );
/// let warned = svcnat::compile::compile_with_warnings(&state, &ProxyConfig::default()).unwrap();
/// assert_eq!(
///     warned.warnings[0].to_string(),
///     "endpoint slice svc1-1 of service ns1/svc1: ports[0]: endpoint port \"\"/tcp matches no service port"
/// );
/// assert!(svcnat::render::to_string(&warned.ruleset).contains("ns1/svc1:http has no endpoints"));
/// ```
///
/// # Errors
/// As [`compile`].
pub fn compile_with_warnings(
    state: &ClusterState,
    config: &ProxyConfig,
) -> Result<Warned, CompileError> {
    let Compiled {
        ctx,
        services,
        warnings,
        ..
    } = compile_typed(state, config, true)?;
    Ok(Warned {
        ruleset: fixed::assemble_owned(&ctx, services.into_iter()),
        warnings,
    })
}

/// Like [`compile_with_warnings`], but a service with an error (in its own fields
/// or in one of its slices) is left out and reported in [`Lenient::rejected`], so a
/// daemon keeps serving every valid service. The warnings are those of
/// [`compile_with_warnings`], for the services kept.
///
/// # Errors
/// Only an invalid config, which affects every service.
pub fn compile_lenient(
    state: &ClusterState,
    config: &ProxyConfig,
) -> Result<Lenient, CompileError> {
    let Compiled {
        ctx,
        services,
        rejected,
        warnings,
    } = compile_typed(state, config, false)?;
    Ok(Lenient {
        ruleset: fixed::assemble_owned(&ctx, services.into_iter()),
        rejected,
        warnings,
    })
}

/// Compiles one service of `state` with an existing context into `sink` (begun
/// here, abandoned on an error): `Ok(None)` when the service is absent or skipped
/// (headless, other family), else its endpoint count. The service's warnings (or,
/// when it is absent, its slices') are pushed to `warnings`, none on an error.
fn compile_one<S: Sink>(
    state: &ClusterState,
    key: &ServiceKey,
    config: &ProxyConfig,
    ctx: &Context,
    sink: &mut S,
    warnings: &mut Vec<CompileError>,
) -> Result<Option<usize>, CompileError> {
    let Some(svc) = state.service(key) else {
        warnings.extend(state.slices_of(key).map(input::orphan_warning));
        return Ok(None);
    };
    let before = warnings.len();
    let Some(input) = inputs_of(state, svc, config, warnings)? else {
        return Ok(None);
    };
    sink.begin();
    match service::emit_service(key, input, ctx, sink) {
        Ok(count) => Ok(Some(count)),
        Err(e) => {
            sink.abandon();
            // A service left out has no warnings.
            warnings.truncate(before);
            Err(e)
        }
    }
}

/// [`compile_services`] into typed rules, one [`ServiceRules`] per service.
fn compile_typed(
    state: &ClusterState,
    config: &ProxyConfig,
    strict: bool,
) -> Result<Compiled<ServiceRules>, CompileError> {
    let mut sink = ServiceRules::empty(ServiceKey::new("", ""));
    compile_services(state, config, strict, &mut sink, |rules, key, count| {
        let mut done = std::mem::replace(rules, ServiceRules::empty(ServiceKey::new("", "")));
        done.key = key.clone();
        done.endpoint_count = count;
        done
    })
}

/// What [`compile_services`] returns.
#[derive(Debug)]
pub(crate) struct Compiled<T> {
    /// The context the services were compiled with (the cluster-size rule applied).
    pub ctx: Context,
    /// Each valid service's rules, as `each` made them, in service order.
    pub services: Vec<T>,
    /// One error per service left out, in service order (none when strict).
    pub rejected: Vec<CompileError>,
    /// The parts of the state ignored as kube-proxy ignores them, in service order.
    pub warnings: Vec<CompileError>,
}

/// Compiles every service with the cluster-size rule applied into `sink`, one
/// service after the other, calling `each` with the sink, the service's key and
/// endpoint count as soon as a service is written. `strict` stops at the first
/// invalid service or slice; otherwise invalid services are left out (abandoned in
/// the sink) and returned, and invalid slice parts are ignored and returned as
/// warnings.
///
/// The cluster-size rule (no per-endpoint comments above a total endpoint count)
/// needs the total before any rule is written, and counting it exactly means
/// reading every endpoint. So the context is chosen from the state's upper bound
/// ([`ClusterState::endpoint_bound`]), the exact total is counted while the
/// services are written, each service's objects read once, and in the rare case
/// the two fall on different sides of the limit (the bound also counts duplicate
/// endpoints, addresses of the other family, endpoints of no service and for ports
/// no service has) everything is written again.
pub(crate) fn compile_services<S: Sink, T>(
    state: &ClusterState,
    config: &ProxyConfig,
    strict: bool,
    sink: &mut S,
    mut each: impl FnMut(&mut S, &ServiceKey, usize) -> T,
) -> Result<Compiled<T>, CompileError> {
    let base = Context::new(config)?;
    let guess = base
        .clone()
        .for_endpoint_total(state.endpoint_bound(config.ip_family));
    let (compiled, total) = compile_pass(state, config, strict, guess, sink, &mut each)?;
    let exact = base.for_endpoint_total(total);
    if exact.endpoint_comments == compiled.ctx.endpoint_comments {
        return Ok(compiled);
    }
    // Not both passes' services alive at once.
    drop(compiled);
    sink.reset();
    let (compiled, _) = compile_pass(state, config, strict, exact, sink, &mut each)?;
    Ok(compiled)
}

/// One pass of [`compile_services`] with a given context: what it compiled, and
/// the exact endpoint total of the valid services.
fn compile_pass<S: Sink, T>(
    state: &ClusterState,
    config: &ProxyConfig,
    strict: bool,
    ctx: Context,
    sink: &mut S,
    each: &mut impl FnMut(&mut S, &ServiceKey, usize) -> T,
) -> Result<(Compiled<T>, usize), CompileError> {
    let mut rejected = Vec::new();
    let mut warnings = Vec::new();
    let mut services = Vec::with_capacity(state.service_count());
    let mut total = 0;
    let visit = Visit {
        state,
        config,
        strict,
    };
    visit.run(&mut warnings, &mut rejected, |key, input| {
        total += input.endpoint_count();
        sink.begin();
        match service::emit_service(key, input, &ctx, sink) {
            Ok(count) => {
                services.push(each(sink, key, count));
                Ok(())
            }
            Err(e) => {
                sink.abandon();
                Err(e)
            }
        }
    })?;
    let compiled = Compiled {
        ctx,
        services,
        rejected,
        warnings,
    };
    Ok((compiled, total))
}

/// The services of a state, validated one after the other in key order: what
/// every compile of either mode walks.
pub(crate) struct Visit<'s> {
    pub state: &'s ClusterState,
    pub config: &'s ProxyConfig,
    /// Stop at the first invalid service or slice; otherwise an invalid service is
    /// left out, its error pushed to the rejected list (sorted by service at the
    /// end) and its warnings dropped.
    pub strict: bool,
}

impl<'s> Visit<'s> {
    /// Calls `emit` with each valid service of the proxy's family and its input,
    /// pushing what kube-proxy ignores to `warnings` (a slice of no service
    /// included). An error of `emit` is the service's own, as a validation error
    /// is: returned when strict, else the service is rejected.
    ///
    /// # Errors
    /// When strict, the first invalid service's error, or `emit`'s.
    pub fn run(
        &self,
        warnings: &mut Vec<CompileError>,
        rejected: &mut Vec<CompileError>,
        mut emit: impl FnMut(&ServiceKey, ServiceInput<'s>) -> Result<(), CompileError>,
    ) -> Result<(), CompileError> {
        // Reused from one service to the next.
        let mut slices = Vec::new();
        for (key, svc, own) in self.state.services_with_slices() {
            slices.clear();
            slices.extend(own);
            self.entry(key, svc, &slices, warnings, rejected, &mut emit)?;
        }
        rejected.sort_by(|a, b| a.service().cmp(&b.service()));
        Ok(())
    }

    /// What [`Visit::run`] does for the one service key `key` (a service, or
    /// slices of no service), pushing to `warnings` and `rejected` what `run`
    /// pushes for it.
    ///
    /// # Errors
    /// As [`Visit::run`].
    pub fn one(
        &self,
        key: &ServiceKey,
        warnings: &mut Vec<CompileError>,
        rejected: &mut Vec<CompileError>,
        mut emit: impl FnMut(&ServiceKey, ServiceInput<'s>) -> Result<(), CompileError>,
    ) -> Result<(), CompileError> {
        let slices: Vec<&EndpointSlice> = self.state.slices_of(key).collect();
        let svc = self.state.service(key);
        self.entry(key, svc, &slices, warnings, rejected, &mut emit)
    }

    /// One entry of the state: its service, if any, and its slices.
    fn entry(
        &self,
        key: &ServiceKey,
        svc: Option<&'s Service>,
        slices: &[&'s EndpointSlice],
        warnings: &mut Vec<CompileError>,
        rejected: &mut Vec<CompileError>,
        emit: &mut impl FnMut(&ServiceKey, ServiceInput<'s>) -> Result<(), CompileError>,
    ) -> Result<(), CompileError> {
        let Some(svc) = svc else {
            warnings.extend(slices.iter().map(|s| input::orphan_warning(s)));
            return Ok(());
        };
        let before = warnings.len();
        let input = input::check_service(svc, slices, self.config, warnings)
            .map(|()| input::checked_service_input(svc, slices, self.config, warnings));
        let result = match input {
            Ok(None) => return Ok(()),
            Ok(Some(input)) => emit(key, input),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            if self.strict {
                return Err(e);
            }
            // A service left out has no warnings.
            warnings.truncate(before);
            rejected.push(e);
        }
        Ok(())
    }
}

fn inputs_of<'a>(
    state: &'a ClusterState,
    svc: &'a Service,
    config: &ProxyConfig,
    warnings: &mut Vec<CompileError>,
) -> Result<Option<ServiceInput<'a>>, CompileError> {
    let key = svc.key();
    let slices: Vec<&EndpointSlice> = state.slices_of(&key).collect();
    input::service_input(svc, &slices, config, warnings)
}

#[cfg(test)]
mod tests {
    use super::SharedChain;

    /// The state's endpoint bound is at least the total a compile counts, so the
    /// context chosen from it is right the first time unless the bound counts
    /// endpoints the compile does not (duplicates, other family, no service).
    #[test]
    #[cfg(feature = "synthetic")]
    fn the_endpoint_bound_bounds_the_count() {
        use crate::synthetic::{self, Mix, Spec};
        for mix in [Mix::ClusterIp, Mix::LoadBalancer] {
            for (services, endpoints) in [(1, 1), (40, 3), (300, 1)] {
                let state = Spec::new(services, endpoints).with_mix(mix).build();
                let config = synthetic::config();
                let ctx = super::Context::new(&config).unwrap();
                let mut sink = super::ServiceRules::empty(super::ServiceKey::new("", ""));
                let (_, total) =
                    super::compile_pass(&state, &config, true, ctx, &mut sink, &mut |_, _, _| ())
                        .unwrap();
                assert!(total > 0);
                assert!(
                    total <= state.endpoint_bound(config.ip_family),
                    "{mix:?} {services}x{endpoints}: {total} > {}",
                    state.endpoint_bound(config.ip_family)
                );
                // The generated clusters have no duplicates: the bound is exact.
                assert_eq!(
                    total,
                    state.endpoint_bound(config.ip_family),
                    "{mix:?} {services}x{endpoints}"
                );
            }
        }
    }

    #[test]
    fn shared_chain_order_matches_discriminants() {
        // fixed::assemble_owned indexes an array by discriminant, in ALL's order.
        for (i, which) in SharedChain::ALL.into_iter().enumerate() {
            assert_eq!(which as usize, i);
        }
    }
}
