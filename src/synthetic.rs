//! Generated clusters of any size, deterministic by seed, for benchmarks, load tests
//! and the `scale` example.
//!
//! A [`Spec`] says how many services, how many ready endpoints each, which
//! [`Mix`] of service types, and the seed; [`Spec::build`] gives the same
//! [`ClusterState`] for the same spec, on every machine. [`endpoint_change`] and
//! [`config`] give the changes and the node the benchmarks use.
//!
//! ```
//! use svcnat::synthetic::{Mix, Spec};
//! let spec = Spec::new(100, 10).with_mix(Mix::LoadBalancer).with_seed(7);
//! let state = spec.build();
//! assert_eq!(state.service_count(), 100);
//! assert_eq!(state, spec.build());
//! let ruleset = svcnat::compile::compile(&state, &svcnat::synthetic::config()).unwrap();
//! assert!(ruleset.rule_count() > 100 * 10);
//! ```

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::model::{
    ClusterState, Endpoint, EndpointPort, EndpointSlice, IpFamily, IpMode, LoadBalancerIngress,
    Protocol, ProxyConfig, Service, ServiceKey, ServicePort, ServiceType, SessionAffinity,
    TrafficPolicy,
};

/// The namespace every generated service is in.
pub const NAMESPACE: &str = "scale";

/// The node the generated cluster is seen from (see [`config`]).
pub const NODE: &str = "node-0";

/// How many nodes the endpoints are spread over.
const NODES: usize = 10;

/// Kubernetes puts at most 100 endpoints in one slice by default.
const SLICE_SIZE: usize = 100;

/// The default node-port range has this many ports, per protocol.
const NODE_PORTS: usize = 2768;

/// Which service types a generated cluster has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Mix {
    /// Every service is a ClusterIP service with one TCP port.
    #[default]
    ClusterIp,
    /// About 30% LoadBalancer services (a third of them with
    /// `externalTrafficPolicy: Local`), the rest ClusterIP; about 10% of all services
    /// have a second, UDP port and 5% ClientIP session affinity. Node ports are
    /// handed out from the default range while it lasts; later LoadBalancer
    /// services have none, as with `allocateLoadBalancerNodePorts: false`.
    LoadBalancer,
}

/// The shape of a generated cluster: made with [`Spec::new`] and the `with_`
/// setters, so that later shapes (another family, more service types) can add
/// fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Spec {
    /// The number of services.
    pub services: usize,
    /// Ready endpoints per service.
    pub endpoints: usize,
    /// The service types.
    pub mix: Mix,
    /// The seed of every random choice.
    pub seed: u64,
}

impl Spec {
    /// `services` ClusterIP services with `endpoints` ready endpoints each, seed 1.
    pub fn new(services: usize, endpoints: usize) -> Self {
        Spec {
            services,
            endpoints,
            mix: Mix::ClusterIp,
            seed: 1,
        }
    }

    /// Sets the mix of service types.
    pub fn with_mix(mut self, mix: Mix) -> Self {
        self.mix = mix;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The cluster. Service `i` is `scale/svc-<i>`; its cluster IP is
    /// `172.16.0.0 + i`, its endpoints `10.0.0.0 + i * endpoints + j`, its
    /// load-balancer IP (if any) `100.64.0.0 + i`.
    pub fn build(&self) -> ClusterState {
        let mut rng = SplitMix64(self.seed);
        let mut state = ClusterState::new();
        let mut tcp_node_ports = 0usize;
        let mut udp_node_ports = 0usize;
        for i in 0..self.services {
            let shape = match self.mix {
                Mix::ClusterIp => Shape::default(),
                Mix::LoadBalancer => Shape {
                    load_balancer: rng.chance(30),
                    local: rng.chance(33),
                    udp: rng.chance(10),
                    affinity: rng.chance(5),
                },
            };
            let (service, slices) =
                self.service(i, shape, &mut tcp_node_ports, &mut udp_node_ports);
            state.upsert_service(service);
            for slice in slices {
                state.upsert_slice(slice);
            }
        }
        state
    }

    fn service(
        &self,
        i: usize,
        shape: Shape,
        tcp_node_ports: &mut usize,
        udp_node_ports: &mut usize,
    ) -> (Service, Vec<EndpointSlice>) {
        let name = service_name(i);
        let mut svc = Service::cluster_ip(NAMESPACE, name.clone(), v4(0xac10_0000, i));
        let mut ports = vec![ServicePort::tcp("http", 80)];
        if shape.udp {
            ports.push(ServicePort::tcp("dns", 53).with_protocol(Protocol::Udp));
        }
        if shape.load_balancer {
            svc = svc.with_type(ServiceType::LoadBalancer);
            svc.load_balancer_ingress = vec![LoadBalancerIngress {
                ip: v4(0x6440_0000, i),
                ip_mode: IpMode::Vip,
            }];
            let mut with_node_port = true;
            for port in &mut ports {
                let next = match port.protocol {
                    Protocol::Udp => &mut *udp_node_ports,
                    _ => &mut *tcp_node_ports,
                };
                with_node_port &= *next < NODE_PORTS;
                if *next < NODE_PORTS {
                    port.node_port = Some(30000 + *next as u16);
                    *next += 1;
                }
            }
            if shape.local {
                svc.external_traffic_policy = TrafficPolicy::Local;
                if with_node_port && *tcp_node_ports < NODE_PORTS {
                    svc.health_check_node_port = Some(30000 + *tcp_node_ports as u16);
                    *tcp_node_ports += 1;
                }
            }
        }
        if shape.affinity {
            svc.session_affinity = SessionAffinity::ClientIp {
                timeout_seconds: 10800,
            };
        }
        svc.ports = ports;
        let mut slices = Vec::new();
        for (n, chunk) in (0..self.endpoints)
            .collect::<Vec<_>>()
            .chunks(SLICE_SIZE)
            .enumerate()
        {
            let mut slice = EndpointSlice::new(
                NAMESPACE,
                name.clone(),
                format!("{name}-{n}"),
                IpFamily::Ipv4,
            )
            .with_port(EndpointPort::tcp("http", 8080));
            if shape.udp {
                slice = slice.with_port(EndpointPort {
                    protocol: Protocol::Udp,
                    ..EndpointPort::tcp("dns", 5353)
                });
            }
            for &j in chunk {
                let ip = v4(0x0a00_0000, i * self.endpoints + j);
                slice = slice.with_endpoint(Endpoint::ready(ip).on_node(node_name(i + j)));
            }
            slices.push(slice);
        }
        (svc, slices)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Shape {
    load_balancer: bool,
    local: bool,
    udp: bool,
    affinity: bool,
}

/// The name of service `i`.
pub fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

/// The key of service `i`.
pub fn service_key(i: usize) -> ServiceKey {
    ServiceKey::new(NAMESPACE, service_name(i))
}

fn node_name(n: usize) -> String {
    format!("node-{}", n % NODES)
}

/// `base + offset` as an IPv4 address, wrapping within the 32-bit space.
fn v4(base: u32, offset: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(base.wrapping_add(offset as u32)))
}

/// The config of the node the generated cluster is seen from: `node-0`, address
/// `192.168.0.10`, pods in `10.0.0.0/8`.
pub fn config() -> ProxyConfig {
    ProxyConfig::default()
        .with_node_name(NODE)
        .with_node_ips([IpAddr::V4(Ipv4Addr::new(192, 168, 0, 10))])
        .with_cluster_cidrs(["10.0.0.0/8".parse().expect("valid CIDR literal")])
}

/// Service `i`'s first slice with its first endpoint moved to a new address, chosen
/// by `round` (so successive rounds keep changing it). The number of endpoints
/// stays the same, so only that service's own chains change. `None` if the service
/// has no endpoints in `state`.
pub fn endpoint_change(state: &ClusterState, i: usize, round: u64) -> Option<EndpointSlice> {
    let mut slice = state.slices_of(&service_key(i)).next()?.clone();
    let first = slice.endpoints.first_mut()?;
    // 11.0.0.0/8 is outside the generated endpoint range, so the new address is new.
    let offset = (i as u64).wrapping_mul(1 << 10).wrapping_add(round) as usize & 0x00ff_ffff;
    first.address = v4(0x0b00_0000, offset);
    Some(slice)
}

/// [`endpoint_change`] for `count` services spread evenly over the `state` built
/// from a [`Spec`], the spread shifted by `round` so that successive rounds touch
/// other services. `None` if `count` is 0 or more than the services, or a chosen
/// service has no endpoints.
///
/// ```
/// use svcnat::synthetic::{self, Spec};
/// let state = Spec::new(100, 2).build();
/// let slices = synthetic::endpoint_changes(&state, 10, 1).unwrap();
/// assert_eq!(slices.len(), 10);
/// assert!(synthetic::endpoint_changes(&state, 101, 1).is_none());
/// ```
pub fn endpoint_changes(
    state: &ClusterState,
    count: usize,
    round: u64,
) -> Option<Vec<EndpointSlice>> {
    let services = state.service_count();
    if count == 0 || count > services {
        return None;
    }
    let stride = services / count;
    let shift = (round as usize).wrapping_mul(7919);
    (0..count)
        .map(|k| endpoint_change(state, (k * stride).wrapping_add(shift) % services, round))
        .collect()
}

/// A small, fast, well-mixed generator (SplitMix64); no dependency needed for
/// choices that only have to be repeatable.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with a chance of `percent` in 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Writes `state` as a `List` of every Service, then every EndpointSlice, in the
/// compact JSON the API server sends (`kubectl get services,endpointslices -A -o
/// json` prints the same, indented), with the metadata
/// a real cluster's objects carry (uid, resourceVersion, creationTimestamp, labels,
/// a `last-applied-configuration` annotation on Services, a `targetRef` per
/// endpoint). [`crate::k8s::read`] reads it back into `state`.
///
/// About 3.8 kB per ClusterIP service with 10 endpoints: 20,000 of them make the
/// 76 MB dump of the reader's benchmark.
///
/// ```
/// use svcnat::synthetic::{Spec, write_kubectl_list};
/// let state = Spec::new(3, 2).build();
/// let mut json = Vec::new();
/// write_kubectl_list(&state, &mut json).unwrap();
/// assert_eq!(svcnat::k8s::read_slice(&json).unwrap().state, state);
/// ```
///
/// # Errors
/// Those of `out`.
#[cfg(feature = "k8s")]
pub fn write_kubectl_list<W: std::io::Write>(
    state: &ClusterState,
    mut out: W,
) -> std::io::Result<()> {
    out.write_all(b"{\"apiVersion\":\"v1\",\"items\":[")?;
    let mut n = 0usize;
    let mut object = Vec::new();
    for svc in state.services() {
        out.write_all(if n == 0 { b"" } else { b"," })?;
        object.clear();
        write_service(&mut object, svc, n)?;
        out.write_all(&compact(&object))?;
        n += 1;
    }
    for slice in state.slices() {
        out.write_all(if n == 0 { b"" } else { b"," })?;
        object.clear();
        write_slice(&mut object, slice, n)?;
        out.write_all(&compact(&object))?;
        n += 1;
    }
    out.write_all(b"],\"kind\":\"List\",\"metadata\":{\"resourceVersion\":\"\"}}\n")
}

/// JSON text without the whitespace between tokens.
#[cfg(feature = "k8s")]
fn compact(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            in_string = escaped || b != b'"';
            escaped = !escaped && b == b'\\';
        } else if b == b'"' {
            in_string = true;
        } else if b.is_ascii_whitespace() {
            continue;
        }
        out.push(b);
    }
    out
}

#[cfg(feature = "k8s")]
fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// A uid of the shape Kubernetes gives, derived from the object's position.
#[cfg(feature = "k8s")]
fn uid(n: usize) -> String {
    let x = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        x >> 32,
        (x >> 16) & 0xffff,
        x & 0xfff,
        (x >> 20) & 0xfff,
        x.rotate_left(17) & 0xffff_ffff_ffff
    )
}

#[cfg(feature = "k8s")]
fn write_service<W: std::io::Write>(out: &mut W, svc: &Service, n: usize) -> std::io::Result<()> {
    let (ns, name) = (json_str(&svc.namespace), json_str(&svc.name));
    let ty = match svc.service_type {
        ServiceType::ClusterIp => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    let ips: Vec<String> = svc
        .cluster_ips
        .iter()
        .map(|ip| format!("\"{ip}\""))
        .collect();
    let families: Vec<String> = svc
        .cluster_ips
        .iter()
        .map(|ip| format!("\"{}\"", IpFamily::of(ip)))
        .collect();
    let mut ports = Vec::new();
    for p in &svc.ports {
        let mut port = format!(
            "{{\"name\": {}, \"port\": {}, \"protocol\": \"{}\"",
            json_str(&p.name),
            p.port,
            p.protocol.as_str().to_ascii_uppercase()
        );
        match &p.target_port {
            Some(crate::model::TargetPort::Number(t)) => port += &format!(", \"targetPort\": {t}"),
            Some(crate::model::TargetPort::Name(t)) => {
                port += &format!(", \"targetPort\": {}", json_str(t))
            }
            None => {}
        }
        if let Some(np) = p.node_port {
            port += &format!(", \"nodePort\": {np}");
        }
        port.push('}');
        ports.push(port);
    }
    let ports = ports.join(", ");
    let policy = |p: TrafficPolicy| match p {
        TrafficPolicy::Cluster => "Cluster",
        TrafficPolicy::Local => "Local",
    };
    let mut spec = format!(
        "\"clusterIP\": {}, \"clusterIPs\": [{}], \"internalTrafficPolicy\": \"{}\", \
         \"ipFamilies\": [{}], \"ipFamilyPolicy\": \"{}\", \"ports\": [{ports}], \
         \"selector\": {{\"app\": {name}}}, \"type\": \"{ty}\"",
        ips.first().map_or("\"None\"", String::as_str),
        ips.join(", "),
        policy(svc.internal_traffic_policy),
        families.join(", "),
        if ips.len() > 1 {
            "PreferDualStack"
        } else {
            "SingleStack"
        },
    );
    if svc.service_type != ServiceType::ClusterIp || !svc.external_ips.is_empty() {
        spec += &format!(
            ", \"externalTrafficPolicy\": \"{}\"",
            policy(svc.external_traffic_policy)
        );
    }
    match svc.session_affinity {
        SessionAffinity::None => spec += ", \"sessionAffinity\": \"None\"",
        SessionAffinity::ClientIp { timeout_seconds } => {
            spec += &format!(
                ", \"sessionAffinity\": \"ClientIP\", \"sessionAffinityConfig\": \
                 {{\"clientIP\": {{\"timeoutSeconds\": {timeout_seconds}}}}}"
            )
        }
    }
    if !svc.external_ips.is_empty() {
        let ips: Vec<String> = svc
            .external_ips
            .iter()
            .map(|ip| format!("\"{ip}\""))
            .collect();
        spec += &format!(", \"externalIPs\": [{}]", ips.join(", "));
    }
    if !svc.load_balancer_source_ranges.is_empty() {
        let r: Vec<String> = svc
            .load_balancer_source_ranges
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect();
        spec += &format!(", \"loadBalancerSourceRanges\": [{}]", r.join(", "));
    }
    if let Some(hc) = svc.health_check_node_port {
        spec += &format!(", \"healthCheckNodePort\": {hc}");
    }
    let ingress: Vec<String> = svc
        .load_balancer_ingress
        .iter()
        .map(|i| {
            let mode = match i.ip_mode {
                IpMode::Vip => "VIP",
                IpMode::Proxy => "Proxy",
            };
            format!("{{\"ip\": \"{}\", \"ipMode\": \"{mode}\"}}", i.ip)
        })
        .collect();
    let applied = json_str(&format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"annotations\":{{}},\
         \"labels\":{{\"app\":{name}}},\"name\":{name},\"namespace\":{ns}}},\"spec\":{{\"ports\":[{}],\
         \"selector\":{{\"app\":{name}}}}}}}\n",
        ports.replace(' ', "")
    ));
    write!(
        out,
        "        {{\n            \"apiVersion\": \"v1\",\n            \"kind\": \"Service\",\n            \"metadata\": {{\n                \"annotations\": {{\n                    \"kubectl.kubernetes.io/last-applied-configuration\": {applied}\n                }},\n                \"creationTimestamp\": \"2026-11-{:02}T{:02}:{:02}:{:02}Z\",\n                \"labels\": {{\n                    \"app\": {name},\n                    \"app.kubernetes.io/part-of\": \"synthetic\"\n                }},\n                \"name\": {name},\n                \"namespace\": {ns},\n                \"resourceVersion\": \"{}\",\n                \"uid\": \"{}\"\n            }},\n            \"spec\": {{{spec}}},\n            \"status\": {{\n                \"loadBalancer\": {{{}}}\n            }}\n        }}",
        1 + n % 28,
        n % 24,
        n % 60,
        (n * 7) % 60,
        1_000_000 + n,
        uid(n),
        if ingress.is_empty() {
            String::new()
        } else {
            format!("\"ingress\": [{}]", ingress.join(", "))
        }
    )
}

#[cfg(feature = "k8s")]
fn write_slice<W: std::io::Write>(
    out: &mut W,
    slice: &EndpointSlice,
    n: usize,
) -> std::io::Result<()> {
    let (ns, name) = (json_str(&slice.namespace), json_str(&slice.name));
    let service = json_str(&slice.service_name);
    let ports: Vec<String> = slice
        .ports
        .iter()
        .map(|p| {
            format!(
                "{{\"name\": {}, \"port\": {}, \"protocol\": \"{}\"}}",
                json_str(&p.name),
                p.port,
                p.protocol.as_str().to_ascii_uppercase()
            )
        })
        .collect();
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (i, e) in slice.endpoints.iter().enumerate() {
        let c = e.conditions;
        let mut ep = format!(
            "\n                {{\n                    \"addresses\": [\n                        \"{}\"\n                    ],\n                    \"conditions\": {{\n                        \"ready\": {},\n                        \"serving\": {},\n                        \"terminating\": {}\n                    }}",
            e.address, c.ready, c.serving, c.terminating
        );
        if let Some(node) = &e.node_name {
            ep += &format!(",\n                    \"nodeName\": {}", json_str(node));
        }
        ep += &format!(
            ",\n                    \"targetRef\": {{\n                        \"kind\": \"Pod\",\n                        \"name\": {},\n                        \"namespace\": {ns},\n                        \"uid\": \"{}\"\n                    }}",
            json_str(&format!(
                "{}-{:x}",
                slice.service_name,
                (n * 131 + i) % 0xfffff
            )),
            uid(n * 1000 + i)
        );
        if let Some(zone) = &e.zone {
            ep += &format!(",\n                    \"zone\": {}", json_str(zone));
        }
        if !e.hints.is_empty() {
            let zones: Vec<String> = e
                .hints
                .for_zones
                .iter()
                .map(|z| format!("{{\"name\": {}}}", json_str(z)))
                .collect();
            let nodes: Vec<String> = e
                .hints
                .for_nodes
                .iter()
                .map(|z| format!("{{\"name\": {}}}", json_str(z)))
                .collect();
            ep += &format!(
                ",\n                    \"hints\": {{\"forZones\": [{}], \"forNodes\": [{}]}}",
                zones.join(", "),
                nodes.join(", ")
            );
        }
        ep += "\n                }";
        endpoints.push(ep);
    }
    write!(
        out,
        "        {{\n            \"addressType\": \"{}\",\n            \"apiVersion\": \"discovery.k8s.io/v1\",\n            \"endpoints\": [{}\n            ],\n            \"kind\": \"EndpointSlice\",\n            \"metadata\": {{\n                \"annotations\": {{\n                    \"endpoints.kubernetes.io/last-change-trigger-time\": \"2026-11-{:02}T{:02}:{:02}:{:02}Z\"\n                }},\n                \"creationTimestamp\": \"2026-11-{:02}T{:02}:{:02}:{:02}Z\",\n                \"generateName\": {},\n                \"generation\": {},\n                \"labels\": {{\n                    \"endpointslice.kubernetes.io/managed-by\": \"endpointslice-controller.k8s.io\",\n                    \"kubernetes.io/service-name\": {service}\n                }},\n                \"name\": {name},\n                \"namespace\": {ns},\n                \"ownerReferences\": [\n                    {{\n                        \"apiVersion\": \"v1\",\n                        \"blockOwnerDeletion\": true,\n                        \"controller\": true,\n                        \"kind\": \"Service\",\n                        \"name\": {service},\n                        \"uid\": \"{}\"\n                    }}\n                ],\n                \"resourceVersion\": \"{}\",\n                \"uid\": \"{}\"\n            }},\n            \"ports\": [{}]\n        }}",
        slice.address_type,
        endpoints.join(","),
        1 + n % 28,
        n % 24,
        (n * 3) % 60,
        (n * 11) % 60,
        1 + n % 28,
        n % 24,
        n % 60,
        (n * 7) % 60,
        json_str(&format!("{}-", slice.service_name)),
        1 + n % 9,
        uid(n ^ 0x5555),
        2_000_000 + n,
        uid(n + 7_000_000),
        ports.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_cluster_other_seed_other_cluster() {
        let a = Spec::new(200, 3).with_mix(Mix::LoadBalancer);
        assert_eq!(a.build(), a.build());
        assert_ne!(a.build(), a.with_seed(2).build());
    }

    #[test]
    fn load_balancer_mix_has_every_shape_and_valid_node_ports() {
        let state = Spec::new(10_000, 1).with_mix(Mix::LoadBalancer).build();
        let lbs = state
            .services()
            .filter(|s| s.service_type == ServiceType::LoadBalancer)
            .count();
        assert!((2500..3500).contains(&lbs), "{lbs} load balancers");
        assert!(state.services().any(|s| s.ports.len() == 2));
        assert!(
            state
                .services()
                .any(|s| s.external_traffic_policy == TrafficPolicy::Local)
        );
        // Node ports run out, and none is handed out twice.
        let mut seen = std::collections::BTreeSet::new();
        for s in state.services() {
            for p in &s.ports {
                if let Some(np) = p.node_port {
                    assert!(seen.insert((p.protocol, np)), "node port {np} twice");
                }
            }
            if let Some(hc) = s.health_check_node_port {
                assert!(seen.insert((Protocol::Tcp, hc)), "node port {hc} twice");
            }
        }
        assert!(
            state
                .services()
                .any(|s| s.service_type == ServiceType::LoadBalancer
                    && s.ports.iter().all(|p| p.node_port.is_none()))
        );
        crate::compile::compile(&state, &config()).expect("the generated cluster is valid");
    }

    #[test]
    fn slices_hold_at_most_a_hundred_endpoints() {
        let state = Spec::new(2, 250).build();
        let sizes: Vec<usize> = state.slices().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 100, 50, 100, 100, 50]);
    }

    #[test]
    fn endpoint_change_changes_one_address() {
        let state = Spec::new(10, 5).build();
        let before = state.slices_of(&service_key(3)).next().unwrap();
        let a = endpoint_change(&state, 3, 1).unwrap();
        let b = endpoint_change(&state, 3, 2).unwrap();
        assert_eq!(a.endpoints.len(), 5);
        assert_ne!(a.endpoints[0], before.endpoints[0]);
        assert_ne!(a.endpoints[0], b.endpoints[0]);
        assert_eq!(a.endpoints[1..], before.endpoints[1..]);
        assert!(endpoint_change(&Spec::new(1, 0).build(), 0, 1).is_none());
    }
}
