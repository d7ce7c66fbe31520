//! Validation: a service and its slices become the per-port facts the rule
//! builders read, or a [`CompileError`] naming the field at fault.

use std::net::{IpAddr, SocketAddr};

use arrayvec::ArrayString;
use ipnet::IpNet;

use super::naming::{EndpointNamer, PortChains, endpoint_text, spn_of};
use crate::error::{CompileError, Problem};
use crate::model::{
    Endpoint, EndpointSlice, IpFamily, IpMode, ProxyConfig, Service, ServicePort, ServiceType,
    SessionAffinity, TrafficPolicy,
};
use crate::ruleset::ChainName;

/// One usable endpoint of one service port.
#[derive(Debug, Clone)]
pub(crate) struct PortEndpoint<'a> {
    /// `ip:port` as kube-proxy writes it; endpoints are sorted by this string.
    pub text: ArrayString<56>,
    pub addr: SocketAddr,
    pub chain: ChainName,
    pub endpoint: &'a Endpoint,
    /// On this node, for a port that picks endpoints by locality (false for others).
    pub local: bool,
}

/// One service port of the proxy's family, with its endpoints.
#[derive(Debug, Clone)]
pub(crate) struct PortInput<'a> {
    pub port: &'a ServicePort,
    /// `ns/name:port`.
    pub spn: String,
    pub chains: PortChains,
    pub endpoints: Vec<PortEndpoint<'a>>,
}

/// A validated service, reduced to the proxy's family.
#[derive(Debug, Clone)]
pub(crate) struct ServiceInput<'a> {
    pub cluster_ip: IpAddr,
    pub external_ips: Vec<IpAddr>,
    pub lb_vips: Vec<IpAddr>,
    pub source_ranges: Vec<IpNet>,
    pub affinity_seconds: Option<u32>,
    pub external_policy_local: bool,
    pub internal_policy_local: bool,
    pub health_check_node_port: Option<u16>,
    pub ports: Vec<PortInput<'a>>,
}

impl ServiceInput<'_> {
    /// The endpoints of all its ports (kube-proxy's cluster-size count).
    pub fn endpoint_count(&self) -> usize {
        self.ports.iter().map(|p| p.endpoints.len()).sum()
    }

    /// Reachable from outside through a node port, an LB VIP or an external IP.
    pub fn externally_accessible(&self, port: &ServicePort) -> bool {
        port.node_port.is_some() || !self.lb_vips.is_empty() || !self.external_ips.is_empty()
    }

    /// Whether the port's endpoints are picked by locality (a Local traffic policy
    /// applies to it).
    pub fn uses_local(&self, port: &ServicePort) -> bool {
        self.internal_policy_local
            || (self.external_policy_local && self.externally_accessible(port))
    }
}

/// A DNS-1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1035 label: a DNS-1123 label that starts with a letter.
pub(crate) fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 bytes.
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Makes the errors of one service; its key is only built for an error.
struct ServiceErr<'s> {
    svc: &'s Service,
}

impl ServiceErr<'_> {
    fn at(&self, port: Option<&str>, field: impl Into<String>, problem: Problem) -> CompileError {
        CompileError::Service {
            service: self.svc.key(),
            port: port.map(str::to_owned),
            field: field.into(),
            problem,
        }
    }
}

fn slice_err(slice: &EndpointSlice, field: impl Into<String>, problem: Problem) -> CompileError {
    CompileError::EndpointSlice {
        service: slice.service(),
        slice: slice.name.clone(),
        field: field.into(),
        problem,
    }
}

/// Checks a port number; `field` names it, and is only called for an error.
fn check_port_number(
    e: &ServiceErr<'_>,
    port_name: Option<&str>,
    field: impl FnOnce() -> String,
    value: u16,
    range: Option<&std::ops::RangeInclusive<u16>>,
) -> Result<(), CompileError> {
    if value == 0 {
        return Err(e.at(port_name, field(), Problem::PortZero));
    }
    if let Some(range) = range
        && !range.contains(&value)
    {
        return Err(e.at(
            port_name,
            field(),
            Problem::NodePortOutOfRange {
                port: value,
                low: *range.start(),
                high: *range.end(),
            },
        ));
    }
    Ok(())
}

/// Checks everything about a service that does not depend on the proxy's family.
pub(crate) fn validate_service(svc: &Service, config: &ProxyConfig) -> Result<(), CompileError> {
    let e = ServiceErr { svc };
    if !is_dns1123_label(&svc.namespace) {
        return Err(e.at(
            None,
            "metadata.namespace",
            Problem::InvalidName {
                value: svc.namespace.clone(),
                expected: "DNS-1123 label",
            },
        ));
    }
    if !is_dns1035_label(&svc.name) {
        return Err(e.at(
            None,
            "metadata.name",
            Problem::InvalidName {
                value: svc.name.clone(),
                expected: "DNS-1035 label",
            },
        ));
    }
    for family in [IpFamily::Ipv4, IpFamily::Ipv6] {
        if svc
            .cluster_ips
            .iter()
            .filter(|ip| family.contains(ip))
            .count()
            > 1
        {
            return Err(e.at(None, "spec.clusterIPs", Problem::DuplicateFamily { family }));
        }
    }
    let range = config.node_port_range.as_ref();
    for (i, p) in svc.ports.iter().enumerate() {
        let name = p.name.as_str();
        if name.is_empty() {
            if svc.ports.len() > 1 {
                return Err(e.at(
                    Some(name),
                    format!("spec.ports[{i}].name"),
                    Problem::UnnamedPort,
                ));
            }
        } else if !is_dns1123_label(name) {
            return Err(e.at(
                Some(name),
                format!("spec.ports[{i}].name"),
                Problem::InvalidName {
                    value: name.to_owned(),
                    expected: "DNS-1123 label",
                },
            ));
        }
        check_port_number(
            &e,
            Some(name),
            || format!("spec.ports[{i}].port"),
            p.port,
            None,
        )?;
        if let Some(np) = p.node_port {
            if svc.service_type == ServiceType::ClusterIp {
                return Err(e.at(
                    Some(name),
                    format!("spec.ports[{i}].nodePort"),
                    Problem::NodePortNotAllowed {
                        service_type: "ClusterIP",
                    },
                ));
            }
            check_port_number(
                &e,
                Some(name),
                || format!("spec.ports[{i}].nodePort"),
                np,
                range,
            )?;
        }
        for q in &svc.ports[..i] {
            if q.name == p.name {
                return Err(e.at(
                    Some(name),
                    format!("spec.ports[{i}].name"),
                    Problem::DuplicatePortName {
                        name: name.to_owned(),
                    },
                ));
            }
            if q.port == p.port && q.protocol == p.protocol {
                return Err(e.at(
                    Some(name),
                    format!("spec.ports[{i}].port"),
                    Problem::DuplicatePort {
                        port: p.port,
                        protocol: p.protocol,
                    },
                ));
            }
        }
    }
    if let Some(hc) = svc.health_check_node_port {
        check_port_number(&e, None, || "spec.healthCheckNodePort".into(), hc, range)?;
    }
    if let SessionAffinity::ClientIp { timeout_seconds } = svc.session_affinity
        && !(1..=86400).contains(&timeout_seconds)
    {
        return Err(e.at(
            None,
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            Problem::OutOfRange {
                value: i64::from(timeout_seconds),
                range: "1-86400",
            },
        ));
    }
    Ok(())
}

/// Every problem of a slice, checked against its service (its ports must match
/// service ports).
pub(crate) fn slice_problems(slice: &EndpointSlice, svc: &Service) -> Vec<CompileError> {
    let mut out = Vec::new();
    if !is_dns1123_subdomain(&slice.name) {
        out.push(slice_err(
            slice,
            "metadata.name",
            Problem::InvalidName {
                value: slice.name.clone(),
                expected: "DNS-1123 subdomain",
            },
        ));
    }
    for (i, p) in slice.ports.iter().enumerate() {
        if p.port == 0 {
            out.push(slice_err(
                slice,
                format!("ports[{i}].port"),
                Problem::PortZero,
            ));
        }
        if !svc
            .ports
            .iter()
            .any(|sp| sp.name == p.name && sp.protocol == p.protocol)
        {
            out.push(slice_err(
                slice,
                format!("ports[{i}]"),
                Problem::UnknownEndpointPort {
                    name: p.name.clone(),
                    protocol: p.protocol,
                },
            ));
        }
        if slice.ports[..i]
            .iter()
            .any(|q| q.name == p.name && q.protocol == p.protocol)
        {
            out.push(slice_err(
                slice,
                format!("ports[{i}].name"),
                Problem::DuplicatePortName {
                    name: p.name.clone(),
                },
            ));
        }
    }
    for (i, ep) in slice.endpoints.iter().enumerate() {
        if !slice.address_type.contains(&ep.address) {
            out.push(slice_err(
                slice,
                format!("endpoints[{i}].addresses[0]"),
                Problem::WrongFamily {
                    address: ep.address,
                    expected: slice.address_type,
                },
            ));
        }
    }
    out
}

/// Validates a service and its slices, then reduces them to the proxy's family.
/// `Ok(None)` for a service kube-proxy skips: headless, or no cluster IP of this family.
///
/// A slice's problems are errors when `strict`; otherwise the invalid parts are
/// skipped (the first matching port of a name wins, a port 0 or an address of the
/// wrong family is ignored) and the problems are pushed to `warnings`.
pub(crate) fn service_input<'a>(
    svc: &'a Service,
    slices: &[&'a EndpointSlice],
    config: &ProxyConfig,
    strict: bool,
    warnings: &mut Vec<CompileError>,
) -> Result<Option<ServiceInput<'a>>, CompileError> {
    check_service(svc, slices, config, strict, warnings)?;
    Ok(checked_service_input(svc, slices, config))
}

/// The validation half of [`service_input`].
pub(crate) fn check_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    config: &ProxyConfig,
    strict: bool,
    warnings: &mut Vec<CompileError>,
) -> Result<(), CompileError> {
    validate_service(svc, config)?;
    for slice in slices {
        let mut problems = slice_problems(slice, svc);
        if strict && !problems.is_empty() {
            return Err(problems.swap_remove(0));
        }
        warnings.extend(problems);
    }
    Ok(())
}

/// The cluster IP of the proxy's family; `None` for a service kube-proxy skips.
fn family_cluster_ip(svc: &Service, family: IpFamily) -> Option<IpAddr> {
    svc.cluster_ips
        .iter()
        .copied()
        .find(|ip| family.contains(ip))
}

/// Every `ip:port` a service port's slices of the family offer, with its endpoint,
/// duplicates included: a slice counts only if one of its ports matches the service
/// port (by name and protocol, port not 0), an endpoint only if it is of the family.
/// Both the endpoint count and the endpoint list come from here, so they agree.
fn port_addresses<'s, 'a>(
    port: &'s ServicePort,
    slices: &'s [&'a EndpointSlice],
    family: IpFamily,
) -> impl Iterator<Item = (SocketAddr, &'a Endpoint)> + 's {
    slices
        .iter()
        .filter(move |s| s.address_type == family)
        .filter_map(move |slice| {
            let ep_port = slice
                .ports
                .iter()
                .find(|p| p.name == port.name && p.protocol == port.protocol && p.port != 0)?;
            Some((*slice, ep_port.port))
        })
        .flat_map(move |(slice, number)| {
            slice
                .endpoints
                .iter()
                .filter(move |e| family.contains(&e.address))
                .map(move |e| (SocketAddr::new(e.address, number), e))
        })
}

/// The building half of [`service_input`], for a service [`check_service`] passed.
pub(crate) fn checked_service_input<'a>(
    svc: &'a Service,
    slices: &[&'a EndpointSlice],
    config: &ProxyConfig,
) -> Option<ServiceInput<'a>> {
    let family = config.ip_family;
    let cluster_ip = family_cluster_ip(svc, family)?;
    let external_policy_local = svc.external_traffic_policy == TrafficPolicy::Local
        && (svc.service_type != ServiceType::ClusterIp || !svc.external_ips.is_empty());
    let needs_health_check = svc.service_type == ServiceType::LoadBalancer && external_policy_local;
    let mut input = ServiceInput {
        cluster_ip,
        external_ips: svc
            .external_ips
            .iter()
            .copied()
            .filter(|ip| family.contains(ip))
            .collect(),
        lb_vips: svc
            .load_balancer_ingress
            .iter()
            .filter(|i| i.ip_mode == IpMode::Vip && family.contains(&i.ip))
            .map(|i| i.ip)
            .collect(),
        source_ranges: svc
            .load_balancer_source_ranges
            .iter()
            .copied()
            .filter(|n| family.contains(&n.addr()))
            // Printed as kube-proxy prints a parsed network: host bits cleared.
            .map(|n| n.trunc())
            .collect(),
        affinity_seconds: match svc.session_affinity {
            SessionAffinity::None => None,
            SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds),
        },
        external_policy_local,
        internal_policy_local: svc.internal_traffic_policy == TrafficPolicy::Local,
        health_check_node_port: svc.health_check_node_port.filter(|_| needs_health_check),
        ports: Vec::with_capacity(svc.ports.len()),
    };
    // Whether an endpoint is on this node is only looked at when a port picks its
    // endpoints by locality.
    let node_name = config.node_name.as_deref();
    for port in &svc.ports {
        let spn = spn_of(&svc.namespace, &svc.name, &port.name);
        let chains = PortChains::new(&spn, port.protocol);
        let local_to = node_name.filter(|_| input.uses_local(port));
        let endpoints = port_endpoints(&spn, port, slices, family, node_name, local_to);
        input.ports.push(PortInput {
            port,
            spn,
            chains,
            endpoints,
        });
    }
    Some(input)
}

/// Which copy of an endpoint listed twice (in two slices) is used: a local copy wins,
/// as in kube-proxy; kube-proxy's choice among the rest follows Go map order, so
/// svcnat picks the most usable copy (ready, then serving, then not terminating) and
/// finally the greatest by value, the same whatever order the copies arrive in.
fn preference(local: bool, e: &Endpoint) -> (bool, bool, bool, bool, &Endpoint) {
    let c = e.conditions;
    (local, c.ready, c.serving, !c.terminating, e)
}

/// True if `endpoint` is on the node named `node_name`.
fn on_node(endpoint: &Endpoint, node_name: Option<&str>) -> bool {
    node_name.is_some() && endpoint.node_name.as_deref() == node_name
}

/// The endpoints of one service port across all slices of the family, deduplicated by
/// `ip:port` (see [`preference`]) and sorted by that string. Each endpoint's
/// [`PortEndpoint::local`] is whether it is on node `local_to`, and `None` leaves
/// them all false, for a port that does not pick endpoints by locality
/// (`node_name` still decides which copy of a duplicate is kept).
fn port_endpoints<'a>(
    spn: &str,
    port: &ServicePort,
    slices: &[&'a EndpointSlice],
    family: IpFamily,
    node_name: Option<&str>,
    local_to: Option<&str>,
) -> Vec<PortEndpoint<'a>> {
    let mut endpoints = Vec::with_capacity(
        slices
            .iter()
            .filter(|s| s.address_type == family)
            .map(|s| s.endpoints.len())
            .sum(),
    );
    endpoints.extend(
        port_addresses(port, slices, family).map(|(addr, endpoint)| PortEndpoint {
            text: endpoint_text(&addr),
            addr,
            // Named below, once duplicates are gone.
            chain: ChainName::fixed("KUBE-SEP-"),
            endpoint,
            local: on_node(endpoint, local_to),
        }),
    );
    // By text, the preferred copy of each first (the sort is stable and mostly
    // finds the slices' order sorted already); then the first of each text is kept.
    let preferred = |e: &PortEndpoint<'a>| preference(on_node(e.endpoint, node_name), e.endpoint);
    endpoints.sort_by(|a, b| {
        a.text
            .cmp(&b.text)
            .then_with(|| preferred(b).cmp(&preferred(a)))
    });
    endpoints.dedup_by(|later, first| later.text == first.text);
    let namer = EndpointNamer::new(spn, port.protocol);
    for ep in &mut endpoints {
        ep.chain = namer.chain(&ep.text);
    }
    endpoints
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(is_dns1123_label("ns-1"));
        assert!(is_dns1123_label("1ns"));
        assert!(!is_dns1123_label("-ns"));
        assert!(!is_dns1123_label("Ns"));
        assert!(!is_dns1123_label(""));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1035_label("svc1"));
        assert!(!is_dns1035_label("1svc"));
        assert!(!is_dns1035_label("svc\"x"));
        assert!(is_dns1123_subdomain("svc1-abc.x"));
        assert!(!is_dns1123_subdomain("svc1..x"));
    }
}
