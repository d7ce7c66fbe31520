//! Model + config -> the nftables table kube-proxy's nftables mode writes on a
//! full sync (`pkg/proxy/nftables/proxier.go` at kubernetes commit
//! 531be81208e2274ef42e72525a26610a9622bcdf), as a typed [`nft::Ruleset`].
//!
//! The input is validated and categorized exactly as for the iptables mode (the
//! same errors and warnings for the same state); only the output differs:
//! `fixed` writes the table and what does not depend on the services
//! (`setupNFTables`), `service` one service's chains, affinity sets and map
//! elements, `naming` the hashed names.
//!
//! ## Order
//!
//! Services are visited in [`ServiceKey`](crate::model::ServiceKey) order, ports
//! in their declared order, endpoints by their `ip:port` string. Chains and sets
//! are printed by name ([`nft::Ruleset::write_dump`]); the elements of each set
//! and map keep the order they were added in: by service, then port, then per
//! port the cluster IP, the external IPs, the load-balancer IPs, the node port.
//! An element whose key is already in its set or map (two services claiming one
//! external IP and port, say) is left out: the first service in key order keeps
//! it, as the first matching rule wins in iptables mode. So the same state gives
//! the same bytes whatever order it was built in.
//!
//! ## What differs from the iptables mode
//!
//! As in kube-proxy: no rules for health-check node ports (kube-proxy serves them
//! and opens no port in nftables), no localhost node ports, no INVALID drop, no
//! nfacct counters, no per-endpoint comments and no large-cluster mode;
//! `masquerade fully-random` always; firewall chains for source ranges even while a
//! service has no endpoints. The config fields only iptables reads are said so in
//! [`ProxyConfig`]'s docs; [`ProxyConfig::service_cidrs`] is read only here.
//!
//! ```
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
//! let dump = svcnat::compile::nftables(&state, &config).unwrap().to_dump();
//! assert!(dump.contains(
//!     "add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }"
//! ));
//! assert!(dump.contains(
//!     "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80"
//! ));
//! ```

mod fixed;
pub(crate) mod incremental;
pub(crate) mod naming;
mod service;

use std::collections::HashSet;
use std::net::IpAddr;

use super::{Lenient, Visit, Warned};
use crate::error::CompileError;
use crate::model::{ClusterState, ProxyConfig};
use crate::nft::{self, Element, KeyValue};
pub(crate) use fixed::TABLE;
use fixed::{CLUSTER_IPS, MapId, NftContext};
use service::ServiceObjects;

/// Compiles a cluster state into the nftables table for `config.ip_family`
/// (`ip kube-proxy` or `ip6 kube-proxy`), as kube-proxy's nftables mode writes
/// it on a full sync. Print it with [`nft::Ruleset::to_dump`] (`nft -f` input).
///
/// What is skipped, ignored or refused is what [`compile`](super::compile)
/// skips, ignores or refuses, with the same errors.
///
/// # Errors
/// The first invalid service, slice or config field, as a [`CompileError`]
/// naming the object and field; also an interface name nft cannot take. Nothing
/// is returned in that case. (A port's `ns/name:port` longer than the 128 bytes
/// of an nftables comment is not an error: its comment is cut, as kube-proxy
/// cuts it.)
pub fn nftables(state: &ClusterState, config: &ProxyConfig) -> Result<nft::Ruleset, CompileError> {
    Ok(nftables_with_warnings(state, config)?.ruleset)
}

/// [`nftables`], returning the warnings too (those of
/// [`compile_with_warnings`](super::compile_with_warnings)).
///
/// # Errors
/// As [`nftables`].
pub fn nftables_with_warnings(
    state: &ClusterState,
    config: &ProxyConfig,
) -> Result<Warned<nft::Ruleset>, CompileError> {
    let (ruleset, _, warnings) = build(state, config, true)?;
    Ok(Warned { ruleset, warnings })
}

/// Like [`nftables_with_warnings`], but a service with an error is left out and
/// reported in [`Lenient::rejected`], as in
/// [`compile_lenient`](super::compile_lenient).
///
/// # Errors
/// Only an invalid config, which affects every service.
pub fn nftables_lenient(
    state: &ClusterState,
    config: &ProxyConfig,
) -> Result<Lenient<nft::Ruleset>, CompileError> {
    let (ruleset, rejected, warnings) = build(state, config, false)?;
    Ok(Lenient {
        ruleset,
        rejected,
        warnings,
    })
}

/// Checks a config as [`nftables`] does, without compiling: what
/// [`check_config`](super::check_config) checks, and what only the nftables mode
/// needs (an interface name nft can take).
///
/// # Errors
/// The [`CompileError::Config`] a compile with this config would return.
pub fn check_nftables_config(config: &ProxyConfig) -> Result<(), CompileError> {
    NftContext::new(config).map(drop)
}

/// The table, the rejected services and the warnings.
type Built = (nft::Ruleset, Vec<CompileError>, Vec<CompileError>);

fn build(state: &ClusterState, config: &ProxyConfig, strict: bool) -> Result<Built, CompileError> {
    let ctx = NftContext::new(config)?;
    let mut table = Table::new(fixed::table(&ctx));
    let mut objects = ServiceObjects::default();
    let (mut warnings, mut rejected) = (Vec::new(), Vec::new());
    let visit = Visit {
        state,
        config,
        strict,
    };
    visit.run(&mut warnings, &mut rejected, |key, input| {
        service::emit_service(key, &input, &ctx, &mut objects)?;
        table.add(&mut objects);
        Ok(())
    })?;
    Ok((table.ruleset, rejected, warnings))
}

/// The table being filled, with the keys its set and maps hold.
struct Table {
    ruleset: nft::Ruleset,
    cluster_ips: HashSet<IpAddr>,
    keys: HashSet<(MapId, Vec<KeyValue>)>,
}

impl Table {
    fn new(ruleset: nft::Ruleset) -> Self {
        Table {
            ruleset,
            cluster_ips: HashSet::new(),
            keys: HashSet::new(),
        }
    }

    /// Moves one service's objects in; an element whose key is there already is
    /// left out.
    fn add(&mut self, objects: &mut ServiceObjects) {
        let rs = &mut self.ruleset;
        rs.chains.extend(objects.chains.drain(..));
        rs.sets.extend(objects.sets.drain(..));
        if let Some(set) = rs.sets.get_mut(CLUSTER_IPS) {
            for ip in objects.cluster_ips.drain(..) {
                if self.cluster_ips.insert(ip) {
                    set.elements.push(Element {
                        key: vec![KeyValue::Addr(ip)],
                        comment: None,
                    });
                }
            }
        }
        for (map, element) in objects.elements.drain(..) {
            if !self.keys.insert((map, element.key.clone())) {
                continue;
            }
            if let Some(m) = rs.maps.get_mut(map.name()) {
                m.elements.push(element);
            }
        }
    }
}
