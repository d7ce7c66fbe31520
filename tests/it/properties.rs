//! Invariants over random clusters.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use svcnat::compile::naming::{PortChains, service_port_name};
use svcnat::compile::{compile, compile_lenient};
use svcnat::error::{CompileError, Problem};
use svcnat::model::*;
use svcnat::ruleset::{Ruleset, Table, Target};

use crate::fixtures::config;

fn conditions() -> impl Strategy<Value = Conditions> {
    prop_oneof![
        4 => Just(Conditions::READY),
        1 => Just(Conditions::SERVING_TERMINATING),
        1 => Just(Conditions::NOT_READY),
    ]
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (
        0u8..4,
        1u8..30,
        conditions(),
        prop::option::of(prop_oneof![Just("test-node"), Just("other")]),
    )
        .prop_map(|(net, host, conditions, node)| Endpoint {
            address: IpAddr::V4(Ipv4Addr::new(10, 180, net, host)),
            conditions,
            node_name: node.map(str::to_owned),
            zone: None,
            hints: Hints::default(),
        })
}

/// A valid service with its slices (several slices per service, endpoints may repeat).
fn service(index: usize) -> impl Strategy<Value = (Service, Vec<EndpointSlice>)> {
    (
        prop::sample::select(vec!["ns1", "ns2", "kube-system"]),
        1usize..4,
        any::<bool>(),
        prop::collection::vec(prop::collection::vec(endpoint(), 0..5), 0..3),
        prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]),
        1u16..2000,
    )
        .prop_map(move |(ns, nports, node_port, slices, proto, base)| {
            let name = format!("svc{index}");
            let ports: Vec<ServicePort> = (0..nports)
                .map(|p| ServicePort {
                    name: if nports == 1 {
                        String::new()
                    } else {
                        format!("p{p}")
                    },
                    protocol: proto,
                    port: base + p as u16,
                    target_port: None,
                    node_port: node_port.then_some(30000 + index as u16 * 10 + p as u16),
                })
                .collect();
            let svc = Service {
                namespace: ns.to_owned(),
                name: name.clone(),
                service_type: if node_port {
                    ServiceType::NodePort
                } else {
                    ServiceType::ClusterIp
                },
                cluster_ips: vec![IpAddr::V4(Ipv4Addr::new(172, 30, 0, index as u8 + 1))],
                ports: ports.clone(),
                ..Service::default()
            };
            let slices = slices
                .into_iter()
                .enumerate()
                .map(|(i, endpoints)| EndpointSlice {
                    namespace: ns.to_owned(),
                    service_name: name.clone(),
                    name: format!("{name}-{i}"),
                    address_type: IpFamily::Ipv4,
                    ports: ports
                        .iter()
                        .map(|p| EndpointPort {
                            name: p.name.clone(),
                            protocol: p.protocol,
                            port: p.port + 8000,
                        })
                        .collect(),
                    endpoints,
                })
                .collect();
            (svc, slices)
        })
}

pub(crate) fn cluster() -> impl Strategy<Value = Vec<(Service, Vec<EndpointSlice>)>> {
    (1usize..8).prop_flat_map(|n| (0..n).map(service).collect::<Vec<_>>())
}

/// The same services and slices in another order, driven by `seed`: services
/// shuffled, each service's slices and each slice's endpoints reversed.
pub(crate) fn shuffled(
    parts: &[(Service, Vec<EndpointSlice>)],
    seed: u64,
) -> Vec<(Service, Vec<EndpointSlice>)> {
    let mut shuffled: Vec<_> = parts.to_vec();
    // A deterministic shuffle driven by the seed.
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in (1..shuffled.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        shuffled.swap(i, j);
    }
    for (_, slices) in &mut shuffled {
        slices.reverse();
        for s in slices.iter_mut() {
            s.endpoints.reverse();
        }
    }
    shuffled
}

pub(crate) fn state_of(parts: &[(Service, Vec<EndpointSlice>)]) -> ClusterState {
    let mut state = ClusterState::new();
    for (svc, slices) in parts {
        state.upsert_service(svc.clone());
        for s in slices {
            state.upsert_slice(s.clone());
        }
    }
    state
}

/// The DNAT destinations reachable from a chain (following jumps into SEP chains).
fn dnat_targets(ruleset: &Ruleset, chain: &str) -> Vec<SocketAddr> {
    let Some(c) = ruleset.chain(Table::Nat, chain) else {
        return Vec::new();
    };
    c.rules
        .iter()
        .filter_map(|r| r.jump_target())
        .filter(|t| t.as_str().starts_with("KUBE-SEP-"))
        .flat_map(|sep| {
            ruleset
                .chain(Table::Nat, sep.as_str())
                .unwrap()
                .rules
                .iter()
                .filter_map(|r| match &r.target {
                    Some(Target::Dnat(to)) => to.socket_addr(),
                    _ => None,
                })
        })
        .collect()
}

/// The endpoints a service port sends traffic to, as the model says: the ready
/// ones, or the serving-terminating ones when none is ready; an endpoint listed
/// twice counts once (a copy on `node` first, then the most usable one).
pub(crate) fn usable_endpoints<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    port_name: &str,
    node: &str,
) -> Vec<SocketAddr> {
    let rank = |e: &Endpoint| {
        let c = e.conditions;
        (
            e.node_name.as_deref() == Some(node),
            c.ready,
            c.serving,
            !c.terminating,
        )
    };
    let mut usable: BTreeMap<SocketAddr, (_, Conditions)> = BTreeMap::new();
    for s in slices {
        let Some(ep_port) = s.ports.iter().find(|p| p.name == port_name) else {
            continue;
        };
        for e in &s.endpoints {
            let entry = usable
                .entry(SocketAddr::new(e.address, ep_port.port))
                .or_insert((rank(e), e.conditions));
            if rank(e) > entry.0 {
                *entry = (rank(e), e.conditions);
            }
        }
    }
    let ready: Vec<SocketAddr> = usable
        .iter()
        .filter(|(_, (_, c))| c.ready)
        .map(|(a, _)| *a)
        .collect();
    if ready.is_empty() {
        usable
            .iter()
            .filter(|(_, (_, c))| c.serving && c.terminating)
            .map(|(a, _)| *a)
            .collect()
    } else {
        ready
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The same objects in any insertion order (services, slices, endpoints within
    /// a slice) give the same bytes.
    #[test]
    fn deterministic_under_shuffling(parts in cluster(), seed in any::<u64>()) {
        let forward = state_of(&parts);
        let backward = state_of(&shuffled(&parts, seed));
        let a = svcnat::render::to_string(&compile(&forward, &config()).unwrap());
        let b = svcnat::render::to_string(&compile(&backward, &config()).unwrap());
        prop_assert_eq!(a, b);
    }

    /// Every ready endpoint of every service port is a DNAT target of the port's
    /// service chain exactly once; with none ready, every serving-terminating one is.
    #[test]
    fn every_usable_endpoint_is_reached_once(parts in cluster()) {
        let state = state_of(&parts);
        let ruleset = compile(&state, &config()).unwrap();
        for (svc, slices) in &parts {
            for port in &svc.ports {
                let expected = usable_endpoints(slices.iter(), &port.name, "test-node");
                let spn = service_port_name(&svc.key(), &port.name);
                let chains = PortChains::new(&spn, port.protocol);
                let mut got = dnat_targets(&ruleset, chains.svc.as_str());
                got.sort();
                prop_assert_eq!(&got, &expected, "{}", spn);
                if expected.is_empty() {
                    // Nothing serves: a REJECT in filter, no nat chain.
                    prop_assert!(ruleset.chain(Table::Nat, chains.svc.as_str()).is_none());
                    let rejects = ruleset.chain(Table::Filter, "KUBE-SERVICES").unwrap().rules.iter()
                        .filter(|r| r.target == Some(Target::Reject)
                            && r.comment().is_some_and(|c| c.as_str() == format!("{spn} has no endpoints")))
                        .count();
                    prop_assert_eq!(rejects, 1);
                }
            }
        }
    }

    /// Arbitrary model values, valid or not, never panic: compile returns a ruleset
    /// or an error, and lenient mode never refuses a valid config.
    #[test]
    fn arbitrary_input_never_panics(
        ns in "\\PC{0,70}",
        name in "[a-z0-9\"' \\-\n]{0,70}",
        port_name in "\\PC{0,20}",
        port in any::<u16>(),
        node_port in any::<Option<u16>>(),
        kind in 0u8..3,
        ips in prop::collection::vec(any::<IpAddr>(), 0..3),
        ep_addrs in prop::collection::vec(any::<IpAddr>(), 0..4),
        ep_port in any::<u16>(),
        family_v6 in any::<bool>(),
        timeout in any::<u32>(),
    ) {
        let svc = Service {
            namespace: ns.clone(),
            name: name.clone(),
            service_type: [ServiceType::ClusterIp, ServiceType::NodePort, ServiceType::LoadBalancer][kind as usize],
            cluster_ips: ips,
            ports: vec![ServicePort { name: port_name.clone(), protocol: Protocol::Tcp, port, target_port: None, node_port }],
            session_affinity: SessionAffinity::ClientIp { timeout_seconds: timeout },
            ..Service::default()
        };
        let slice = EndpointSlice {
            namespace: ns,
            service_name: name,
            name: "s".into(),
            address_type: if family_v6 { IpFamily::Ipv6 } else { IpFamily::Ipv4 },
            ports: vec![EndpointPort { name: port_name, protocol: Protocol::Tcp, port: ep_port }],
            endpoints: ep_addrs.into_iter().map(Endpoint::ready).collect(),
        };
        let mut state = ClusterState::new();
        state.upsert_service(svc);
        state.upsert_slice(slice);
        for family in [IpFamily::Ipv4, IpFamily::Ipv6] {
            let config = config().with_ip_family(family);
            if let Ok(ruleset) = compile(&state, &config) {
                // Whatever compiles renders to lines that each start a known record.
                let text = svcnat::render::to_string(&ruleset);
                for line in text.lines() {
                    prop_assert!(line.starts_with("-A ") || line.starts_with(':') || line.starts_with('*') || line == "COMMIT", "{}", line);
                }
            }
            prop_assert!(compile_lenient(&state, &config).is_ok());
            // nftables mode refuses what iptables mode refuses, with the same
            // error, and on top only what the nftables IR cannot hold.
            match (compile(&state, &config), svcnat::compile::nftables(&state, &config)) {
                (Err(theirs), ours) => prop_assert_eq!(ours.err(), Some(theirs)),
                (Ok(_), Err(ours)) => prop_assert!(
                    matches!(&ours, CompileError::Service { problem: Problem::Nft(_), .. }),
                    "{:?}", ours
                ),
                (Ok(_), Ok(_)) => {}
            }
            prop_assert!(svcnat::compile::nftables_lenient(&state, &config).is_ok());
        }
    }
}

/// An endpoint of `family`, maybe on this node or another, maybe in a zone, with
/// topology hints when `hinted`.
fn rich_endpoint(family: IpFamily, hinted: bool) -> impl Strategy<Value = Endpoint> {
    // Hints count only when every endpoint has them: zone hints always, node
    // hints mostly.
    let zones = || prop::sample::subsequence(vec!["zone-a", "zone-b"], 1..=2);
    let nodes = || prop::sample::subsequence(vec!["test-node", "other"], 0..=2);
    (
        0u8..3,
        1u8..20,
        conditions(),
        prop::option::of(prop_oneof![Just("test-node"), Just("other")]),
        prop::option::of(prop_oneof![Just("zone-a"), Just("zone-b")]),
        zones(),
        nodes(),
    )
        .prop_map(
            move |(net, host, conditions, node, zone, for_zones, for_nodes)| {
                let address = match family {
                    IpFamily::Ipv4 => IpAddr::V4(Ipv4Addr::new(10, 180, net, host)),
                    IpFamily::Ipv6 => IpAddr::V6(Ipv6Addr::new(
                        0xfd00,
                        0x10,
                        0x180,
                        0,
                        0,
                        0,
                        u16::from(net),
                        u16::from(host),
                    )),
                };
                let hints = if hinted {
                    Hints {
                        for_zones: for_zones.into_iter().map(str::to_owned).collect(),
                        for_nodes: for_nodes.into_iter().map(str::to_owned).collect(),
                    }
                } else {
                    Hints::default()
                };
                Endpoint {
                    address,
                    conditions,
                    node_name: node.map(str::to_owned),
                    zone: zone.map(str::to_owned),
                    hints,
                }
            },
        )
}

/// Addresses of both families outside the cluster's, for external IPs and load
/// balancer ingress.
fn outside_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (1u8..4).prop_map(|h| IpAddr::V4(Ipv4Addr::new(192, 168, 99, h))),
        (1u8..4).prop_map(|h| IpAddr::V4(Ipv4Addr::new(1, 2, 3, h))),
        (1u16..4).prop_map(|h| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, h))),
    ]
}

/// Source ranges of both families, some of which hold the node's own IPs.
fn source_range() -> impl Strategy<Value = ipnet::IpNet> {
    prop::sample::select(vec![
        "203.0.113.0/25",
        "192.168.0.0/24",
        "10.0.0.0/8",
        "2001:db8::/64",
        "2001:db8:1::/48",
    ])
    .prop_map(|n| n.parse().unwrap())
}

/// Which families a service has cluster IPs of.
#[derive(Debug, Clone, Copy)]
enum Stack {
    V4,
    V6,
    Dual,
}

/// A valid service of any type and family, with every feature that changes the
/// rules (load balancers, external IPs, affinity, Local policies, topology
/// hints), and its slices of each of its families.
fn rich_service(index: usize) -> impl Strategy<Value = (Service, Vec<EndpointSlice>)> {
    let stack = prop_oneof![2 => Just(Stack::V4), 1 => Just(Stack::V6), 2 => Just(Stack::Dual)];
    let kind = prop_oneof![
        1 => Just(ServiceType::ClusterIp),
        1 => Just(ServiceType::NodePort),
        2 => Just(ServiceType::LoadBalancer),
    ];
    let policy = || prop_oneof![2 => Just(TrafficPolicy::Cluster), 1 => Just(TrafficPolicy::Local)];
    let ingress = prop::collection::vec(
        (
            outside_ip(),
            prop_oneof![3 => Just(IpMode::Vip), 1 => Just(IpMode::Proxy)],
        )
            .prop_map(|(ip, ip_mode)| LoadBalancerIngress { ip, ip_mode }),
        1..4,
    );
    (
        (
            prop::sample::select(vec!["ns1", "ns2"]),
            stack,
            kind,
            1usize..3,
            prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]),
            1u16..2000,
        ),
        (
            prop::collection::vec(outside_ip(), 0..3),
            ingress,
            prop::collection::vec(source_range(), 0..3),
            prop::option::of(30900u16..30910),
            prop::option::of(1u32..=86400),
            policy(),
            policy(),
        ),
        // Per family: whether its endpoints carry hints, and its slices.
        (any::<bool>(), any::<bool>()).prop_flat_map(|(h4, h6)| {
            (
                prop::collection::vec(
                    prop::collection::vec(rich_endpoint(IpFamily::Ipv4, h4), 0..4),
                    0..3,
                ),
                prop::collection::vec(
                    prop::collection::vec(rich_endpoint(IpFamily::Ipv6, h6), 0..4),
                    0..3,
                ),
            )
        }),
    )
        .prop_map(
            move |(
                (ns, stack, service_type, nports, proto, base),
                (external_ips, ingress, ranges, health, affinity, etp, itp),
                (v4_slices, v6_slices),
            )| {
                let name = format!("svc{index}");
                let i = index as u8 + 1;
                let ports: Vec<ServicePort> = (0..nports)
                    .map(|p| ServicePort {
                        name: if nports == 1 {
                            String::new()
                        } else {
                            format!("p{p}")
                        },
                        protocol: proto,
                        port: base + p as u16,
                        target_port: None,
                        node_port: (service_type != ServiceType::ClusterIp)
                            .then_some(30000 + index as u16 * 10 + p as u16),
                    })
                    .collect();
                let v4 = IpAddr::V4(Ipv4Addr::new(172, 30, 0, i));
                let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x172, 0x30, 0, 0, 0, 0, u16::from(i)));
                let cluster_ips = match stack {
                    Stack::V4 => vec![v4],
                    Stack::V6 => vec![v6],
                    Stack::Dual if index.is_multiple_of(2) => vec![v4, v6],
                    Stack::Dual => vec![v6, v4],
                };
                let lb = service_type == ServiceType::LoadBalancer;
                let svc = Service {
                    namespace: ns.to_owned(),
                    name: name.clone(),
                    service_type,
                    cluster_ips,
                    ports: ports.clone(),
                    session_affinity: match affinity {
                        Some(timeout_seconds) => SessionAffinity::ClientIp { timeout_seconds },
                        None => SessionAffinity::None,
                    },
                    external_traffic_policy: etp,
                    internal_traffic_policy: itp,
                    external_ips,
                    load_balancer_ingress: if lb { ingress } else { Vec::new() },
                    load_balancer_source_ranges: if lb { ranges } else { Vec::new() },
                    health_check_node_port: if lb && etp == TrafficPolicy::Local {
                        health
                    } else {
                        None
                    },
                };
                let families = [
                    (IpFamily::Ipv4, v4_slices, "v4"),
                    (IpFamily::Ipv6, v6_slices, "v6"),
                ];
                let slices = families
                    .into_iter()
                    .flat_map(|(family, slices, tag)| {
                        let ports = &ports;
                        let name = &name;
                        slices
                            .into_iter()
                            .enumerate()
                            .map(move |(i, endpoints)| EndpointSlice {
                                namespace: ns.to_owned(),
                                service_name: name.clone(),
                                name: format!("{name}-{tag}-{i}"),
                                address_type: family,
                                ports: ports
                                    .iter()
                                    .map(|p| EndpointPort {
                                        name: p.name.clone(),
                                        protocol: p.protocol,
                                        port: p.port + 8000,
                                    })
                                    .collect(),
                                endpoints,
                            })
                    })
                    .collect();
                (svc, slices)
            },
        )
}

/// Clusters of [`rich_service`]s.
pub(crate) fn rich_cluster() -> impl Strategy<Value = Vec<(Service, Vec<EndpointSlice>)>> {
    (1usize..6).prop_flat_map(|n| (0..n).map(rich_service).collect::<Vec<_>>())
}

/// A proxy config of either family, in a zone or not, with the options that
/// change the rules' text.
pub(crate) fn rich_config() -> impl Strategy<Value = ProxyConfig> {
    (
        any::<bool>(),
        prop::option::of(prop_oneof![Just("zone-a"), Just("zone-b")]),
        any::<bool>(),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        0u8..3,
    )
        .prop_map(
            |(v6, zone, same_node, (large, primary, masquerade_all, comments), local)| {
                let mut config = config();
                if v6 {
                    config = config
                        .with_ip_family(IpFamily::Ipv6)
                        .with_node_ips([
                            "2001:db8::1".parse().unwrap(),
                            "192.168.0.2".parse().unwrap(),
                            "::1".parse().unwrap(),
                        ])
                        .with_cluster_cidrs([
                            "10.0.0.0/8".parse().unwrap(),
                            "fd00:10::/32".parse().unwrap(),
                        ]);
                }
                if let Some(zone) = zone {
                    config = config.with_node_zone(zone);
                }
                if large {
                    config.large_cluster_endpoints = Some(1);
                }
                if primary {
                    config = config.with_nodeport_addresses([NodePortAddress::Primary]);
                }
                config = match local {
                    0 => config,
                    1 => config.with_local_traffic(LocalTrafficDetector::None),
                    _ => config.with_local_traffic(LocalTrafficDetector::InterfaceNamePrefix(
                        "veth".into(),
                    )),
                };
                config
                    .with_prefer_same_node_hints(same_node)
                    .with_masquerade_all(masquerade_all)
                    .with_comments(comments)
            },
        )
}

proptest! {
    // About a second in a debug build.
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The service-by-service fast path writes exactly the bytes of rendering the
    /// typed ruleset, for clusters with every service feature (load balancers,
    /// external IPs, affinity, Local policies, terminating endpoints, topology
    /// hints), in either family, with dual-stack services.
    #[test]
    fn compile_text_is_render_of_compile(parts in rich_cluster(), config in rich_config()) {
        let state = state_of(&parts);
        let text = svcnat::compile::compile_text(&state, &config).unwrap();
        let ruleset = compile(&state, &config).unwrap();
        let typed = svcnat::render::to_string(&ruleset);
        prop_assert_eq!(text.len(), typed.len());
        prop_assert_eq!(text.chain_count(), ruleset.tables.iter().map(|t| t.chains.len()).sum::<usize>());
        // The first differing line, then the other ways out of a CompiledText.
        crate::fixtures::assert_same_text(&text.to_bytes(), &typed);
        prop_assert_eq!(&text.to_string(), &typed);
    }
}
