//! Conversion from k8s-openapi's `Service` and `EndpointSlice` (feature `k8s`).
//!
//! Kubernetes' own defaulting applies: a missing protocol is TCP, a missing
//! `ready` or `serving` condition is true, a Service with only `clusterIP` has that
//! one address. Objects kube-proxy ignores are returned as `Ok(None)`: ExternalName
//! and headless services, FQDN slices, slices without the
//! `kubernetes.io/service-name` label.
//!
//! Addresses are read as kube-proxy reads them: IPv4 parts with leading zeros are
//! decimal (`010.0.0.1` is `10.0.0.1`), source ranges may carry whitespace.
//! Anything else malformed is a [`ConvertError`] naming the object and field.
//!
//! An update can take an object out of what kube-proxy models (a Service that
//! becomes headless, a slice that loses its label): [`Syncer::apply_k8s`] applies
//! watch events and turns such updates into removals.
//!
//! The crate selects no Kubernetes version of k8s-openapi: the embedder does, as
//! with any library built on k8s-openapi.
//!
//! [`Syncer::apply_k8s`]: crate::sync::Syncer::apply_k8s

mod read;

pub use read::{ItemProblem, Loaded, ReadError, ReadReport, SkipReason, Skipped, read, read_slice};

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use thiserror::Error;

use crate::error::Problem;
use crate::model::{
    ClusterState, Conditions, Endpoint, EndpointPort, EndpointSlice, Hints, IpFamily, IpMode,
    LoadBalancerIngress, Protocol, Service, ServiceKey, ServicePort, ServiceType, SessionAffinity,
    SliceKey, TargetPort, TrafficPolicy,
};

mod apply;
pub use apply::{Action, Event, Object};

/// The label that joins an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

/// A Kubernetes object that could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{} {name}: {field}: {problem}", kind_words(.kind))]
pub struct ConvertError {
    /// `Service` or `EndpointSlice`.
    pub kind: &'static str,
    /// `namespace/name` (what is known of it).
    pub name: String,
    /// The field, as a path into the object (`spec.ports[1].port`).
    pub field: String,
    /// What is wrong.
    pub problem: Problem,
}

/// A kind as the crate's other messages name objects: `service`, `endpoint slice`.
fn kind_words(kind: &str) -> &str {
    match kind {
        "Service" => "service",
        "EndpointSlice" => "endpoint slice",
        other => other,
    }
}

struct Obj {
    kind: &'static str,
    name: String,
}

impl Obj {
    fn err(&self, field: impl Into<String>, problem: Problem) -> ConvertError {
        ConvertError {
            kind: self.kind,
            name: self.name.clone(),
            field: field.into(),
            problem,
        }
    }
}

/// Parses an IP address as Go's `ParseIPSloppy` does: IPv4 parts with leading
/// zeros are read as decimal. The result is normalised.
pub fn parse_ip_sloppy(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (o, p) in octets.iter_mut().zip(&parts) {
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

/// Parses a CIDR as Go's `ParseCIDRSloppy` does (leading zeros read as decimal,
/// in the address and the prefix length), keeping the address bits as given.
pub fn parse_cidr_sloppy(text: &str) -> Option<IpNet> {
    let (addr, len) = text.split_once('/')?;
    let ip = parse_ip_sloppy(addr)?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    IpNet::new(ip, len.parse().ok()?).ok()
}

fn port_number(obj: &Obj, field: String, value: i32) -> Result<u16, ConvertError> {
    match value {
        0 => Err(obj.err(field, Problem::PortZero)),
        1..=65535 => Ok(value as u16),
        _ => Err(obj.err(
            field,
            Problem::PortOutOfRange {
                value: i64::from(value),
            },
        )),
    }
}

fn protocol(obj: &Obj, field: String, value: Option<&str>) -> Result<Protocol, ConvertError> {
    match value {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(obj.err(
            field,
            Problem::Unsupported {
                value: other.to_owned(),
            },
        )),
    }
}

fn ip(obj: &Obj, field: String, text: &str) -> Result<IpAddr, ConvertError> {
    parse_ip_sloppy(text).ok_or_else(|| {
        obj.err(
            field,
            Problem::BadAddress {
                value: text.to_owned(),
                expected: "IP address",
            },
        )
    })
}

fn policy(obj: &Obj, field: &str, value: Option<&str>) -> Result<TrafficPolicy, ConvertError> {
    match value {
        None | Some("Cluster") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(obj.err(
            field,
            Problem::Unsupported {
                value: other.to_owned(),
            },
        )),
    }
}

type ObjectMeta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The object's error context, and its namespace and name (both required).
fn identify(kind: &'static str, meta: &ObjectMeta) -> Result<(Obj, String, String), ConvertError> {
    let obj = Obj {
        kind,
        name: format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or(""),
            meta.name.as_deref().unwrap_or("")
        ),
    };
    let namespace = meta
        .namespace
        .clone()
        .ok_or_else(|| obj.err("metadata.namespace", Problem::Missing))?;
    let name = meta
        .name
        .clone()
        .ok_or_else(|| obj.err("metadata.name", Problem::Missing))?;
    Ok((obj, namespace, name))
}

/// A Service's key (namespace and name), whatever its spec: what a delete event,
/// or an update that [`service`] skips, removes.
///
/// # Errors
/// A missing name or namespace.
pub fn service_key(svc: &core::Service) -> Result<ServiceKey, ConvertError> {
    let (_, namespace, name) = identify("Service", &svc.metadata)?;
    Ok(ServiceKey::new(namespace, name))
}

/// An EndpointSlice's own key (namespace and slice name), whatever its labels: its
/// identity in Kubernetes, what a delete event removes.
///
/// # Errors
/// A missing name or namespace.
pub fn slice_key(slice: &discovery::EndpointSlice) -> Result<SliceKey, ConvertError> {
    let (_, namespace, name) = identify("EndpointSlice", &slice.metadata)?;
    Ok(SliceKey::new(namespace, name))
}

/// Converts a Service. `Ok(None)` for a service kube-proxy skips: ExternalName,
/// headless (`clusterIP: None`) or without a cluster IP. [`read`] and
/// [`Syncer::apply_k8s`](crate::sync::Syncer::apply_k8s) keep a headless service
/// in the state all the same, as a service without cluster IPs (see
/// [`headless_service`]), so its slices belong to a service.
///
/// # Errors
/// A missing name or namespace, an unknown type, protocol or policy, a port out of
/// range, an address that does not parse.
pub fn service(svc: &core::Service) -> Result<Option<Service>, ConvertError> {
    let (obj, namespace, name) = identify("Service", &svc.metadata)?;
    let Some(spec) = &svc.spec else {
        return Ok(None);
    };
    let Some(service_type) = service_type(&obj, spec)? else {
        return Ok(None);
    };
    let Some(cluster_ips) = cluster_ips(&obj, spec)? else {
        return Ok(None);
    };
    let ports = service_ports(&obj, spec)?;
    let session_affinity = session_affinity(&obj, spec)?;
    let external_ips = external_ips(&obj, spec)?;
    let load_balancer_source_ranges = source_ranges(&obj, spec)?;
    let load_balancer_ingress = load_balancer_ingress(&obj, svc.status.as_ref())?;
    let health_check_node_port = node_port(
        &obj,
        "spec.healthCheckNodePort".into(),
        spec.health_check_node_port,
    )?;
    Ok(Some(Service {
        namespace,
        name,
        service_type,
        cluster_ips,
        ports,
        session_affinity,
        external_traffic_policy: policy(
            &obj,
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        )?,
        internal_traffic_policy: policy(
            &obj,
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        )?,
        external_ips,
        load_balancer_ingress,
        load_balancer_source_ranges,
        health_check_node_port,
    }))
}

/// `spec.type`; `None` for ExternalName, which kube-proxy skips.
fn service_type(obj: &Obj, spec: &core::ServiceSpec) -> Result<Option<ServiceType>, ConvertError> {
    match spec.type_.as_deref() {
        None | Some("ClusterIP") => Ok(Some(ServiceType::ClusterIp)),
        Some("NodePort") => Ok(Some(ServiceType::NodePort)),
        Some("LoadBalancer") => Ok(Some(ServiceType::LoadBalancer)),
        Some("ExternalName") => Ok(None),
        Some(other) => Err(obj.err(
            "spec.type",
            Problem::Unsupported {
                value: other.to_owned(),
            },
        )),
    }
}

/// A headless Service (or one without a cluster IP) as the model keeps it: its
/// namespace and name, no cluster IP, no ports. It gets no rules, and nothing in
/// it or its slices is checked, as kube-proxy reads none of it; but its slices
/// have a service, so they are not taken for the slices of a missing one. `None`
/// for any other Service, ExternalName ones included.
pub fn headless_service(svc: &core::Service) -> Option<Service> {
    let meta = &svc.metadata;
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let obj = Obj {
        kind: "Service",
        name: String::new(),
    };
    match cluster_ips(&obj, spec) {
        Ok(None) => Some(Service {
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            ..Service::default()
        }),
        _ => None,
    }
}

/// `spec.clusterIPs`, else `spec.clusterIP`; `None` for a headless service or
/// one without a cluster IP.
fn cluster_ips(obj: &Obj, spec: &core::ServiceSpec) -> Result<Option<Vec<IpAddr>>, ConvertError> {
    let (ips_field, ip_texts): (&str, Vec<&str>) = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => {
            ("spec.clusterIPs", ips.iter().map(String::as_str).collect())
        }
        _ => (
            "spec.clusterIP",
            spec.cluster_ip.as_deref().into_iter().collect(),
        ),
    };
    if ip_texts.is_empty() || ip_texts.iter().any(|t| t.is_empty() || *t == "None") {
        return Ok(None);
    }
    ip_texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let field = if ips_field == "spec.clusterIP" {
                ips_field.to_owned()
            } else {
                format!("{ips_field}[{i}]")
            };
            ip(obj, field, t)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// `spec.ports`, in order.
fn service_ports(obj: &Obj, spec: &core::ServiceSpec) -> Result<Vec<ServicePort>, ConvertError> {
    spec.ports
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, p)| service_port(obj, i, p))
        .collect()
}

/// `spec.ports[i]`.
fn service_port(obj: &Obj, i: usize, p: &core::ServicePort) -> Result<ServicePort, ConvertError> {
    let node_port = node_port(obj, format!("spec.ports[{i}].nodePort"), p.node_port)?;
    let target_port = match &p.target_port {
        None => None,
        Some(IntOrString::Int(n)) => Some(TargetPort::Number(port_number(
            obj,
            format!("spec.ports[{i}].targetPort"),
            *n,
        )?)),
        Some(IntOrString::String(s)) => Some(TargetPort::Name(s.clone())),
    };
    Ok(ServicePort {
        name: p.name.clone().unwrap_or_default(),
        protocol: protocol(
            obj,
            format!("spec.ports[{i}].protocol"),
            p.protocol.as_deref(),
        )?,
        port: port_number(obj, format!("spec.ports[{i}].port"), p.port)?,
        target_port,
        node_port,
    })
}

/// A node port field, where 0 (or nothing) means none.
fn node_port(obj: &Obj, field: String, value: Option<i32>) -> Result<Option<u16>, ConvertError> {
    match value {
        None | Some(0) => Ok(None),
        Some(n) => port_number(obj, field, n).map(Some),
    }
}

/// `spec.sessionAffinity`, with the timeout of `spec.sessionAffinityConfig`
/// (Kubernetes' default when it has none).
fn session_affinity(obj: &Obj, spec: &core::ServiceSpec) -> Result<SessionAffinity, ConvertError> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => Ok(SessionAffinity::None),
        Some("ClientIP") => {
            let field = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
            let seconds = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            let timeout_seconds = match seconds {
                None => DEFAULT_AFFINITY_SECONDS,
                Some(s) => u32::try_from(s).map_err(|_| {
                    obj.err(
                        field,
                        Problem::OutOfRange {
                            value: i64::from(s),
                            range: "1-86400",
                        },
                    )
                })?,
            };
            Ok(SessionAffinity::ClientIp { timeout_seconds })
        }
        Some(other) => Err(obj.err(
            "spec.sessionAffinity",
            Problem::Unsupported {
                value: other.to_owned(),
            },
        )),
    }
}

/// `spec.externalIPs`.
fn external_ips(obj: &Obj, spec: &core::ServiceSpec) -> Result<Vec<IpAddr>, ConvertError> {
    spec.external_ips
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, t)| ip(obj, format!("spec.externalIPs[{i}]"), t))
        .collect()
}

/// `spec.loadBalancerSourceRanges`, read as kube-proxy reads them (surrounding
/// whitespace allowed).
fn source_ranges(obj: &Obj, spec: &core::ServiceSpec) -> Result<Vec<IpNet>, ConvertError> {
    spec.load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, t)| {
            parse_cidr_sloppy(t.trim()).ok_or_else(|| {
                obj.err(
                    format!("spec.loadBalancerSourceRanges[{i}]"),
                    Problem::BadAddress {
                        value: t.clone(),
                        expected: "CIDR",
                    },
                )
            })
        })
        .collect()
}

/// `status.loadBalancer.ingress`: the entries with an IP (a hostname-only entry
/// is skipped).
fn load_balancer_ingress(
    obj: &Obj,
    status: Option<&core::ServiceStatus>,
) -> Result<Vec<LoadBalancerIngress>, ConvertError> {
    let mut out = Vec::new();
    let ingress = status
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        let Some(text) = ing.ip.as_deref().filter(|t| !t.is_empty()) else {
            continue;
        };
        let ip_mode = match ing.ip_mode.as_deref() {
            None | Some("VIP") => IpMode::Vip,
            Some("Proxy") => IpMode::Proxy,
            Some(other) => {
                return Err(obj.err(
                    format!("status.loadBalancer.ingress[{i}].ipMode"),
                    Problem::Unsupported {
                        value: other.to_owned(),
                    },
                ));
            }
        };
        out.push(LoadBalancerIngress {
            ip: ip(obj, format!("status.loadBalancer.ingress[{i}].ip"), text)?,
            ip_mode,
        });
    }
    Ok(out)
}

/// `endpoints` is a list in some Kubernetes versions of k8s-openapi and an
/// optional list in others; this reads either.
trait EndpointList {
    fn as_list(&self) -> &[discovery::Endpoint];
}

impl EndpointList for Vec<discovery::Endpoint> {
    fn as_list(&self) -> &[discovery::Endpoint] {
        self
    }
}

impl EndpointList for Option<Vec<discovery::Endpoint>> {
    fn as_list(&self) -> &[discovery::Endpoint] {
        self.as_deref().unwrap_or(&[])
    }
}

/// Converts an EndpointSlice. `Ok(None)` for a slice kube-proxy ignores: address
/// type FQDN, or no `kubernetes.io/service-name` label. Endpoints without
/// addresses and ports without a number are skipped, as kube-proxy skips them.
///
/// # Errors
/// A missing name or namespace, an unknown address type or protocol, a port out of
/// range, an address that does not parse.
pub fn endpoint_slice(
    slice: &discovery::EndpointSlice,
) -> Result<Option<EndpointSlice>, ConvertError> {
    let (obj, namespace, name) = identify("EndpointSlice", &slice.metadata)?;
    let Some(service_name) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned()
    else {
        return Ok(None);
    };
    let address_type = match slice.address_type.as_str() {
        "IPv4" => IpFamily::Ipv4,
        "IPv6" => IpFamily::Ipv6,
        "FQDN" => return Ok(None),
        other => {
            return Err(obj.err(
                "addressType",
                Problem::Unsupported {
                    value: other.to_owned(),
                },
            ));
        }
    };
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let Some(number) = p.port else { continue };
        ports.push(EndpointPort {
            name: p.name.clone().unwrap_or_default(),
            protocol: protocol(&obj, format!("ports[{i}].protocol"), p.protocol.as_deref())?,
            port: port_number(&obj, format!("ports[{i}].port"), number)?,
        });
    }
    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.as_list().iter().enumerate() {
        let Some(first) = ep.addresses.first() else {
            continue;
        };
        let address = ip(&obj, format!("endpoints[{i}].addresses[0]"), first)?;
        let c = ep.conditions.as_ref();
        let conditions = Conditions {
            ready: c.and_then(|c| c.ready).unwrap_or(true),
            serving: c.and_then(|c| c.serving).unwrap_or(true),
            terminating: c.and_then(|c| c.terminating).unwrap_or(false),
        };
        let hints = ep
            .hints
            .as_ref()
            .map(|h| Hints {
                for_zones: h
                    .for_zones
                    .iter()
                    .flatten()
                    .map(|z| z.name.clone())
                    .collect(),
                for_nodes: h
                    .for_nodes
                    .iter()
                    .flatten()
                    .map(|n| n.name.clone())
                    .collect(),
            })
            .unwrap_or_default();
        endpoints.push(Endpoint {
            address,
            conditions,
            node_name: ep.node_name.clone(),
            zone: ep.zone.clone(),
            hints,
        });
    }
    Ok(Some(EndpointSlice {
        namespace,
        service_name,
        name,
        address_type,
        ports,
        endpoints,
    }))
}

/// Builds a cluster state from Services and EndpointSlices, skipping what
/// kube-proxy skips.
///
/// # Errors
/// The first object that does not convert.
pub fn cluster_state<'a>(
    services: impl IntoIterator<Item = &'a core::Service>,
    slices: impl IntoIterator<Item = &'a discovery::EndpointSlice>,
) -> Result<ClusterState, ConvertError> {
    let mut state = ClusterState::new();
    for svc in services {
        if let Some(s) = service(svc)? {
            state.upsert_service(s);
        }
    }
    for slice in slices {
        if let Some(s) = endpoint_slice(slice)? {
            state.upsert_slice(s);
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sloppy_addresses() {
        assert_eq!(parse_ip_sloppy("172.30.0.041"), "172.30.0.41".parse().ok());
        assert_eq!(parse_ip_sloppy("1.2.3.004"), "1.2.3.4".parse().ok());
        assert_eq!(parse_ip_sloppy("fd00::1"), "fd00::1".parse().ok());
        assert_eq!(parse_ip_sloppy("1.2.3.256"), None);
        assert_eq!(parse_ip_sloppy("1.2.3"), None);
        assert_eq!(parse_ip_sloppy("1.2.3.+4"), None);
        assert_eq!(
            parse_cidr_sloppy("203.0.113.000/025"),
            "203.0.113.0/25".parse().ok()
        );
        assert_eq!(parse_cidr_sloppy("203.0.113.0/33"), None);
        assert_eq!(parse_cidr_sloppy("203.0.113.0"), None);
    }
}
