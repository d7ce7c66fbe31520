//! The conntrack flows a sync makes stale, the same in both modes: they follow
//! from the services and endpoints (the compiler's per-port facts), not from the
//! backend.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use crate::compile::incremental::PortFlows;
use crate::flows::{FlowDestination, StaleFlow};
use crate::model::Protocol;

/// The conntrack entries a change of one service makes stale (UDP and SCTP
/// only): flows to endpoints that are gone, and flows to ports that have just
/// gained endpoints.
pub(crate) fn stale_flows_of(
    old: Option<&[PortFlows]>,
    new: Option<&[PortFlows]>,
) -> Vec<StaleFlow> {
    let mut out = Vec::new();
    let (old_ports, new_ports) = (old.unwrap_or_default(), new.unwrap_or_default());
    let same_port = |a: &PortFlows, b: &PortFlows| {
        a.protocol == b.protocol && a.destinations.first() == b.destinations.first()
    };
    let mut push = |port: &PortFlows, endpoint: Option<IpAddr>| {
        let destinations = port
            .destinations
            .iter()
            .map(|d| FlowDestination::Service(*d));
        let node_port = port.node_port.map(FlowDestination::NodePort);
        for destination in destinations.chain(node_port) {
            out.push(StaleFlow {
                protocol: port.protocol,
                destination,
                endpoint,
            });
        }
    };
    for port in old_ports.iter().filter(|p| p.protocol != Protocol::Tcp) {
        let now: &[SocketAddr] = new_ports
            .iter()
            .find(|n| same_port(port, n))
            .map_or(&[], |n| &n.endpoints);
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

/// `flows` plus those `pending` kept from failed syncs (taken), sorted, without
/// repeats.
pub(crate) fn take_flows(pending: &mut Vec<StaleFlow>, flows: Vec<StaleFlow>) -> Vec<StaleFlow> {
    let mut all = std::mem::take(pending);
    all.extend(flows);
    all.sort();
    all.dedup();
    all
}
