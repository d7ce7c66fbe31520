//! Validation: a service and its slices become the per-port facts the rule
//! builders read, or a [`CompileError`] naming the field at fault.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use arrayvec::ArrayString;
use ipnet::IpNet;
use smallvec::SmallVec;

use super::naming::{EndpointNamer, endpoint_text, spn_of};
use crate::error::{CompileError, Problem};
use crate::model::{
    Endpoint, EndpointSlice, IpFamily, IpMode, Protocol, ProxyConfig, Service, ServicePort,
    ServiceType, SessionAffinity, TrafficPolicy,
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
    /// Where it is listed: the index of its slice among the service's slices, and
    /// its index in that slice's endpoints (to name a duplicate's copies).
    pub origin: (u32, u32),
}

/// One service port of the proxy's family, with its endpoints.
#[derive(Debug, Clone)]
pub(crate) struct PortInput<'a> {
    pub port: &'a ServicePort,
    /// `ns/name:port`.
    pub spn: String,
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

/// Up to this many ports, duplicates are found by comparing every pair (no
/// allocation, and faster for the few ports most services have); above it, by
/// hashing, so a service with tens of thousands of ports is checked in O(n).
const PAIRWISE_MAX: usize = 16;

/// Why the API server refuses `ip` where it validates with `ValidateNonSpecialIP`
/// (endpoint addresses, external IPs): unspecified, loopback, link-local or
/// link-local multicast, as Go's `net.IP` methods decide (an IPv4-mapped IPv6
/// address counts as its IPv4 address). `None` for any other address.
pub(crate) fn special_kind(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            if a.is_unspecified() {
                Some("unspecified")
            } else if a.is_loopback() {
                Some("loopback")
            } else if a.is_link_local() {
                Some("link-local")
            } else if o[..3] == [224, 0, 0] {
                Some("link-local multicast")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            let o = a.octets();
            if a.is_unspecified() {
                Some("unspecified")
            } else if a.is_loopback() {
                Some("loopback")
            } else if o[0] == 0xfe && o[1] & 0xc0 == 0x80 {
                Some("link-local")
            } else if o[0] == 0xff && o[1] & 0x0f == 0x02 {
                Some("link-local multicast")
            } else {
                None
            }
        }
    }
}

/// A cluster IP the API server never allocates: loopback or unspecified (a
/// cluster IP must lie in a service CIDR; Service validation itself checks only
/// that it is an IP).
fn special_cluster_ip(ip: IpAddr) -> Option<&'static str> {
    special_kind(ip).filter(|kind| matches!(*kind, "loopback" | "unspecified"))
}

/// A service's ports by name and protocol, to look slice ports up in.
pub(crate) struct ServicePortKeys<'s> {
    ports: &'s [ServicePort],
    /// Built only for a service with many ports.
    hashed: Option<HashSet<(&'s str, Protocol)>>,
}

impl<'s> ServicePortKeys<'s> {
    pub(crate) fn new(svc: &'s Service) -> Self {
        let hashed = (svc.ports.len() > PAIRWISE_MAX).then(|| {
            svc.ports
                .iter()
                .map(|p| (p.name.as_str(), p.protocol))
                .collect()
        });
        ServicePortKeys {
            ports: &svc.ports,
            hashed,
        }
    }

    fn contains(&self, name: &str, protocol: Protocol) -> bool {
        match &self.hashed {
            Some(set) => set.contains(&(name, protocol)),
            None => self
                .ports
                .iter()
                .any(|p| p.name == name && p.protocol == protocol),
        }
    }
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
    for (i, &address) in svc.cluster_ips.iter().enumerate() {
        if let Some(kind) = special_cluster_ip(address) {
            return Err(e.at(
                None,
                format!("spec.clusterIPs[{i}]"),
                Problem::SpecialAddress { address, kind },
            ));
        }
    }
    for (i, &address) in svc.external_ips.iter().enumerate() {
        if let Some(kind) = special_kind(address) {
            return Err(e.at(
                None,
                format!("spec.externalIPs[{i}]"),
                Problem::SpecialAddress { address, kind },
            ));
        }
    }
    let range = config.node_port_range.as_ref();
    // The earlier ports by name and by number and protocol, for a service with
    // many ports; the ports before the one checked are distinct (a duplicate
    // returns at once), so each key maps to its only index.
    let many = svc.ports.len() > PAIRWISE_MAX;
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut numbers: HashMap<(u16, Protocol), usize> = HashMap::new();
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
        // The first earlier port that repeats the name or the number wins, the name
        // when one port repeats both (as comparing each earlier port in turn finds).
        let (same_name, same_number) = if many {
            (
                names.get(name).copied(),
                numbers.get(&(p.port, p.protocol)).copied(),
            )
        } else {
            let earlier = &svc.ports[..i];
            (
                earlier.iter().position(|q| q.name == p.name),
                earlier
                    .iter()
                    .position(|q| q.port == p.port && q.protocol == p.protocol),
            )
        };
        let name_first = match (same_name, same_number) {
            (Some(j), Some(k)) => Some(j <= k),
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (None, None) => None,
        };
        match name_first {
            Some(true) => {
                return Err(e.at(
                    Some(name),
                    format!("spec.ports[{i}].name"),
                    Problem::DuplicatePortName {
                        name: name.to_owned(),
                    },
                ));
            }
            Some(false) => {
                return Err(e.at(
                    Some(name),
                    format!("spec.ports[{i}].port"),
                    Problem::DuplicatePort {
                        port: p.port,
                        protocol: p.protocol,
                    },
                ));
            }
            None => {}
        }
        if many {
            names.insert(name, i);
            numbers.insert((p.port, p.protocol), i);
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

/// Checks a slice against its service's ports: pushes to `warnings` what
/// kube-proxy ignores with a log line (a port matching no service port, port 0, an
/// address of the other family), and returns the first problem the API server
/// would have refused (an invalid name, a repeated port name, a special address).
pub(crate) fn check_slice(
    slice: &EndpointSlice,
    svc_ports: &ServicePortKeys<'_>,
    warnings: &mut Vec<CompileError>,
) -> Result<(), CompileError> {
    if !is_dns1123_subdomain(&slice.name) {
        return Err(slice_err(
            slice,
            "metadata.name",
            Problem::InvalidName {
                value: slice.name.clone(),
                expected: "DNS-1123 subdomain",
            },
        ));
    }
    let mut seen: HashSet<(&str, Protocol)> = HashSet::new();
    let many = slice.ports.len() > PAIRWISE_MAX;
    for (i, p) in slice.ports.iter().enumerate() {
        let repeated = if many {
            !seen.insert((p.name.as_str(), p.protocol))
        } else {
            slice.ports[..i]
                .iter()
                .any(|q| q.name == p.name && q.protocol == p.protocol)
        };
        if repeated {
            return Err(slice_err(
                slice,
                format!("ports[{i}].name"),
                Problem::DuplicatePortName {
                    name: p.name.clone(),
                },
            ));
        }
        if p.port == 0 {
            warnings.push(slice_err(
                slice,
                format!("ports[{i}].port"),
                Problem::PortZero,
            ));
        }
        if !svc_ports.contains(&p.name, p.protocol) {
            warnings.push(slice_err(
                slice,
                format!("ports[{i}]"),
                Problem::UnknownEndpointPort {
                    name: p.name.clone(),
                    protocol: p.protocol,
                },
            ));
        }
    }
    for (i, ep) in slice.endpoints.iter().enumerate() {
        if let Some(kind) = special_kind(ep.address) {
            return Err(slice_err(
                slice,
                format!("endpoints[{i}].addresses[0]"),
                Problem::SpecialAddress {
                    address: ep.address,
                    kind,
                },
            ));
        }
        if !slice.address_type.contains(&ep.address) {
            warnings.push(slice_err(
                slice,
                format!("endpoints[{i}].addresses[0]"),
                Problem::WrongFamily {
                    address: ep.address,
                    expected: slice.address_type,
                },
            ));
        }
    }
    Ok(())
}

/// The warning for a slice whose service does not exist.
pub(crate) fn orphan_warning(slice: &EndpointSlice) -> CompileError {
    slice_err(
        slice,
        "metadata.labels[kubernetes.io/service-name]",
        Problem::NoSuchService,
    )
}

/// Validates a service and its slices, then reduces them to the proxy's family.
/// `Ok(None)` for a service kube-proxy skips: headless, or no cluster IP of this family.
///
/// What kube-proxy ignores with a log line is skipped and pushed to `warnings`
/// (see [`check_slice`] and [`port_endpoints`]); what the API server refuses is an
/// error, and the service's warnings are not pushed.
pub(crate) fn service_input<'a>(
    svc: &'a Service,
    slices: &[&'a EndpointSlice],
    config: &ProxyConfig,
    warnings: &mut Vec<CompileError>,
) -> Result<Option<ServiceInput<'a>>, CompileError> {
    check_service(svc, slices, config, warnings)?;
    Ok(checked_service_input(svc, slices, config, warnings))
}

/// The validation half of [`service_input`]: the first error, in field order
/// (the service, then its slices by name); otherwise the slices' warnings are
/// pushed to `warnings`.
pub(crate) fn check_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    config: &ProxyConfig,
    warnings: &mut Vec<CompileError>,
) -> Result<(), CompileError> {
    validate_service(svc, config)?;
    let svc_ports = ServicePortKeys::new(svc);
    // A headless service (no cluster IP at all) gets no rules, so kube-proxy
    // never reads its slices: what it would ignore in them is not worth a word.
    // What the API server refuses is refused all the same.
    let mut unread = Vec::new();
    let warnings = if svc.cluster_ips.is_empty() {
        &mut unread
    } else {
        warnings
    };
    let before = warnings.len();
    for slice in slices {
        if let Err(e) = check_slice(slice, &svc_ports, warnings) {
            warnings.truncate(before);
            return Err(e);
        }
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

/// A slice of the proxy's family, with its ports looked up by name and protocol.
struct FamilySlice<'a> {
    slice: &'a EndpointSlice,
    /// Its index among the service's slices.
    index: u32,
    /// For a slice with many ports: the first non-zero number of each name and
    /// protocol (what a scan finds).
    hashed: Option<HashMap<(&'a str, Protocol), u16>>,
}

impl<'a> FamilySlice<'a> {
    fn new(slice: &'a EndpointSlice, index: u32) -> Self {
        let hashed = (slice.ports.len() > PAIRWISE_MAX).then(|| {
            let mut map = HashMap::with_capacity(slice.ports.len());
            for p in slice.ports.iter().filter(|p| p.port != 0) {
                map.entry((p.name.as_str(), p.protocol)).or_insert(p.port);
            }
            map
        });
        FamilySlice {
            slice,
            index,
            hashed,
        }
    }

    /// The number this slice gives `port` (by name and protocol, not 0).
    fn number_of(&self, port: &ServicePort) -> Option<u16> {
        match &self.hashed {
            Some(map) => map.get(&(port.name.as_str(), port.protocol)).copied(),
            None => self
                .slice
                .ports
                .iter()
                .find(|p| p.name == port.name && p.protocol == port.protocol && p.port != 0)
                .map(|p| p.port),
        }
    }
}

/// The slices of `family` among a service's `slices`, ready to look ports up in.
fn family_slices<'a>(
    slices: &[&'a EndpointSlice],
    family: IpFamily,
) -> SmallVec<[FamilySlice<'a>; 1]> {
    slices
        .iter()
        .zip(0u32..)
        .filter(|(s, _)| s.address_type == family)
        .map(|(s, i)| FamilySlice::new(s, i))
        .collect()
}

/// Every `ip:port` a service port's slices of the family offer, with its endpoint
/// and where it is listed, duplicates included: a slice counts only if one of its
/// ports matches the service port (by name and protocol, port not 0), an endpoint
/// only if it is of the family.
fn port_addresses<'s, 'a>(
    port: &'s ServicePort,
    slices: &'s [FamilySlice<'a>],
    family: IpFamily,
) -> impl Iterator<Item = (SocketAddr, &'a Endpoint, (u32, u32))> + 's {
    slices
        .iter()
        .filter_map(move |s| Some((s, s.number_of(port)?)))
        .flat_map(move |(s, number)| {
            s.slice
                .endpoints
                .iter()
                .zip(0u32..)
                .filter(move |(e, _)| family.contains(&e.address))
                .map(move |(e, i)| (SocketAddr::new(e.address, number), e, (s.index, i)))
        })
}

/// The building half of [`service_input`], for a service [`check_service`] passed.
///
/// Pushes a warning for each endpoint listed again for a port (see
/// [`port_endpoints`]).
pub(crate) fn checked_service_input<'a>(
    svc: &'a Service,
    slices: &[&'a EndpointSlice],
    config: &ProxyConfig,
    warnings: &mut Vec<CompileError>,
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
    let own = family_slices(slices, family);
    for port in &svc.ports {
        let spn = spn_of(&svc.namespace, &svc.name, &port.name);
        let local_to = node_name.filter(|_| input.uses_local(port));
        let endpoints = port_endpoints(
            &spn, port, slices, &own, family, node_name, local_to, warnings,
        );
        input.ports.push(PortInput {
            port,
            spn,
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
///
/// Each copy of an `ip:port` after the first (by slice name, then position) is
/// pushed to `warnings`, naming the first.
#[allow(clippy::too_many_arguments)]
fn port_endpoints<'a>(
    spn: &str,
    port: &ServicePort,
    slices: &[&'a EndpointSlice],
    own: &[FamilySlice<'a>],
    family: IpFamily,
    node_name: Option<&str>,
    local_to: Option<&str>,
    warnings: &mut Vec<CompileError>,
) -> Vec<PortEndpoint<'a>> {
    let mut endpoints = Vec::with_capacity(own.iter().map(|s| s.slice.endpoints.len()).sum());
    endpoints.extend(
        port_addresses(port, own, family).map(|(addr, endpoint, origin)| PortEndpoint {
            text: endpoint_text(&addr),
            addr,
            // Named below, once duplicates are gone.
            chain: ChainName::fixed("KUBE-SEP-"),
            endpoint,
            local: on_node(endpoint, local_to),
            origin,
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
    if endpoints.windows(2).any(|w| w[0].text == w[1].text) {
        duplicate_warnings(&endpoints, slices, warnings);
    }
    endpoints.dedup_by(|later, first| later.text == first.text);
    let namer = EndpointNamer::new(spn, port.protocol);
    for ep in &mut endpoints {
        ep.chain = namer.chain(&ep.text);
    }
    endpoints
}

/// A warning for each copy of an `ip:port` in `endpoints` (sorted by text) but the
/// first listed, in text order and then where each copy is listed.
fn duplicate_warnings(
    endpoints: &[PortEndpoint<'_>],
    slices: &[&EndpointSlice],
    warnings: &mut Vec<CompileError>,
) {
    for group in endpoints.chunk_by(|a, b| a.text == b.text) {
        if group.len() < 2 {
            continue;
        }
        let mut origins: SmallVec<[(u32, u32); 4]> = group.iter().map(|e| e.origin).collect();
        origins.sort_unstable();
        let (first_slice, first_index) = origins[0];
        let first = slices[first_slice as usize];
        for &(slice, index) in &origins[1..] {
            warnings.push(slice_err(
                slices[slice as usize],
                format!("endpoints[{index}].addresses[0]"),
                Problem::DuplicateEndpoint {
                    endpoint: group[0].addr,
                    slice: first.name.clone(),
                    index: first_index as usize,
                },
            ));
        }
    }
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
