//! Invariants over random clusters.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use proptest::prelude::*;
use svcnat::compile::naming::{PortChains, service_port_name};
use svcnat::compile::{compile, compile_lenient};
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
                    Some(Target::Dnat(to)) => Some(*to),
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
        let mut shuffled: Vec<_> = parts.clone();
        // A deterministic shuffle driven by the seed.
        let mut x = seed | 1;
        let mut next = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
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
        let backward = state_of(&shuffled);
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
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The service-by-service fast path writes exactly the bytes of rendering the
    /// typed ruleset, with per-endpoint comments on or off (large-cluster mode).
    #[test]
    fn compile_text_is_render_of_compile(parts in cluster(), large in any::<bool>(), nodeports in any::<bool>()) {
        let state = state_of(&parts);
        let mut config = config();
        if large {
            config.large_cluster_endpoints = Some(1);
        }
        if nodeports {
            config = config.with_nodeport_addresses([svcnat::model::NodePortAddress::Primary]);
        }
        let text = svcnat::compile::compile_text(&state, &config).unwrap();
        let typed = svcnat::render::to_string(&compile(&state, &config).unwrap());
        prop_assert_eq!(text.len(), typed.len());
        prop_assert_eq!(text.chain_count(), compile(&state, &config).unwrap().tables.iter().map(|t| t.chains.len()).sum::<usize>());
        prop_assert_eq!(&text.to_string(), &typed);
        prop_assert_eq!(String::from_utf8(text.to_bytes()).unwrap(), typed);
    }
}
