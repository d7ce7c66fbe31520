//! The nftables compiler beyond kube-proxy's literal dumps (those are in
//! `nft_kube_proxy`): each feature's rules, the same validation as the iptables
//! mode, the shipped example cluster, and invariants over random clusters.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use insta::assert_snapshot;
use proptest::prelude::*;
use svcnat::compile::{compile, compile_with_warnings, nftables, nftables_lenient};
use svcnat::error::{CompileError, Problem};
use svcnat::model::*;
use svcnat::nft::{self, Stmt};

use crate::fixtures::{NODE, ip, one, ready, service, slice, state};
use crate::nft_kube_proxy::{fake_config, sort_transaction};
use crate::properties::{rich_cluster, rich_config, shuffled, state_of};

fn svc(name: &str, cluster_ip: &str) -> Service {
    service("ns1", name, cluster_ip, &[("p80", 80)])
}

/// A LoadBalancer with node port 3001, ingress 1.2.3.4 and external IP
/// 192.168.99.11, `externalTrafficPolicy: Local`.
fn local_lb() -> Service {
    Service {
        service_type: ServiceType::LoadBalancer,
        ports: vec![ServicePort::tcp("p80", 80).with_node_port(3001)],
        load_balancer_ingress: vec![LoadBalancerIngress {
            ip: ip("1.2.3.4"),
            ip_mode: IpMode::Vip,
        }],
        external_ips: vec![ip("192.168.99.11")],
        external_traffic_policy: TrafficPolicy::Local,
        health_check_node_port: Some(30000),
        ..svc("svc1", "172.30.0.41")
    }
}

fn dump(state: &ClusterState, config: &ProxyConfig) -> String {
    let text = nftables(state, config).unwrap().to_dump();
    crate::nft_check::nft_check("nft_compile", &text);
    text
}

/// The rules of one chain, as written after `add rule FAMILY kube-proxy CHAIN `.
fn rules_of(dump: &str, chain: &str) -> Vec<String> {
    dump.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("add rule ")?;
            let rest = rest.split_once(" kube-proxy ")?.1;
            rest.strip_prefix(chain)?
                .strip_prefix(' ')
                .map(str::to_owned)
        })
        .collect()
}

const SERVICE: &str = "service-ULMVA6XW-ns1/svc1/tcp/p80";
const EXTERNAL: &str = "external-ULMVA6XW-ns1/svc1/tcp/p80";

#[test]
fn local_traffic_detectors() {
    let state = one(local_lb(), vec![ready("10.180.0.1").on_node(NODE)]);
    let cases = [
        (
            LocalTrafficDetector::Cidrs(vec!["10.0.0.0/8".parse().unwrap()]),
            Some(("ip saddr 10.0.0.0/8", "ip saddr != 10.0.0.0/8")),
        ),
        (
            LocalTrafficDetector::BridgeInterface("cbr0".into()),
            Some(("iifname cbr0", "iifname != cbr0")),
        ),
        (
            LocalTrafficDetector::InterfaceNamePrefix("veth".into()),
            Some(("iifname veth*", "iifname != veth*")),
        ),
        (LocalTrafficDetector::None, None),
    ];
    for (detector, matches) in cases {
        let config = fake_config(IpFamily::Ipv4).with_local_traffic(detector.clone());
        let out = dump(&state, &config);
        let service = rules_of(&out, SERVICE);
        let external = rules_of(&out, EXTERNAL);
        match matches {
            Some((local, not_local)) => {
                assert_eq!(
                    service[0],
                    format!("ip daddr 172.30.0.41 {not_local} jump mark-for-masquerade"),
                    "{detector:?}"
                );
                assert_eq!(
                    external[0],
                    format!("{local} goto {SERVICE} comment \"short-circuit pod traffic\""),
                    "{detector:?}"
                );
                assert_eq!(external.len(), 4, "{detector:?}");
            }
            None => {
                // No masquerade rule, no pod short-circuit.
                assert!(service[0].starts_with("numgen "), "{service:?}");
                assert_eq!(
                    external,
                    [
                        "fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"".to_owned(),
                        format!("fib saddr type local goto {SERVICE} comment \"short-circuit local traffic\""),
                        "goto local-ULMVA6XW-ns1/svc1/tcp/p80".to_owned(),
                    ]
                );
            }
        }
    }
}

#[test]
fn masquerade_all_marks_every_cluster_ip_packet() {
    let state = one(svc("svc1", "172.30.0.41"), vec![ready("10.180.0.1")]);
    for detector in [
        LocalTrafficDetector::None,
        LocalTrafficDetector::Cidrs(vec!["10.0.0.0/8".parse().unwrap()]),
    ] {
        let config = fake_config(IpFamily::Ipv4)
            .with_local_traffic(detector)
            .with_masquerade_all(true);
        let rules = rules_of(&dump(&state, &config), SERVICE);
        assert_eq!(rules[0], "ip daddr 172.30.0.41 jump mark-for-masquerade");
    }
}

#[test]
fn node_port_addresses() {
    let state = one(
        svc("svc1", "172.30.0.41").with_type(ServiceType::NodePort),
        vec![ready("10.180.0.1")],
    );
    // No filter: any local address but loopback, and no set.
    let all = dump(
        &state,
        &fake_config(IpFamily::Ipv4).with_nodeport_addresses([]),
    );
    assert!(!all.contains("nodeport-ips"), "{all}");
    assert_eq!(
        rules_of(&all, "services")[1],
        "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
    );
    assert_eq!(
        rules_of(&all, "nodeport-endpoints-check"),
        ["ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"]
    );
    let v6 = dump(
        &state,
        &fake_config(IpFamily::Ipv6).with_nodeport_addresses([]),
    );
    assert_eq!(
        rules_of(&v6, "nodeport-endpoints-check"),
        ["ip6 daddr != ::1 meta l4proto . th dport vmap @no-endpoint-nodeports"]
    );
    // `primary`, and a filter that holds loopback: nftables mode never takes
    // node ports on 127.0.0.0/8, even with localhost node ports on.
    let some = dump(
        &state,
        &fake_config(IpFamily::Ipv4)
            .with_nodeport_addresses([
                NodePortAddress::Primary,
                NodePortAddress::Cidr("127.0.0.0/8".parse().unwrap()),
                NodePortAddress::Cidr("192.168.99.0/24".parse().unwrap()),
            ])
            .with_localhost_nodeports(true),
    );
    let elements: Vec<&str> = some
        .lines()
        .filter(|l| l.starts_with("add element ip kube-proxy nodeport-ips "))
        .collect();
    assert_eq!(
        elements,
        [
            "add element ip kube-proxy nodeport-ips { 192.168.0.2 }",
            "add element ip kube-proxy nodeport-ips { 192.168.99.11 }",
        ]
    );
}

#[test]
fn internal_traffic_policy_local() {
    let mut s = svc("svc1", "172.30.0.41");
    s.internal_traffic_policy = TrafficPolicy::Local;
    let config = fake_config(IpFamily::Ipv4);
    let with_local = dump(
        &one(
            s.clone(),
            vec![ready("10.180.0.1").on_node(NODE), ready("10.180.0.2")],
        ),
        &config,
    );
    let local = "local-ULMVA6XW-ns1/svc1/tcp/p80";
    assert!(with_local.contains(&format!(
        "add element ip kube-proxy service-ips {{ 172.30.0.41 . tcp . 80 : goto {local} }}"
    )));
    assert_eq!(
        rules_of(&with_local, local),
        [
            "ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade",
            "numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }",
        ]
    );
    assert!(!with_local.contains("10.180.0.2"), "{with_local}");
    // No local endpoint: dropped, not rejected, and no chain at all.
    let without = dump(&one(s, vec![ready("10.180.0.2")]), &config);
    assert!(without.contains(
        "add element ip kube-proxy no-endpoint-services { 172.30.0.41 . tcp . 80 comment \"ns1/svc1:p80\" : drop }"
    ));
    assert!(!without.contains("ULMVA6XW"), "{without}");
}

#[test]
fn terminating_endpoints_serve_when_none_is_ready() {
    let terminating = |a: &str| ready(a).with_conditions(Conditions::SERVING_TERMINATING);
    let state = one(
        svc("svc1", "172.30.0.41"),
        vec![terminating("10.180.0.1"), terminating("10.180.0.2")],
    );
    let rules = rules_of(&dump(&state, &fake_config(IpFamily::Ipv4)), SERVICE);
    assert!(
        rules[1].starts_with("numgen random mod 2 vmap"),
        "{rules:?}"
    );
    let ready_too = one(
        svc("svc1", "172.30.0.41"),
        vec![terminating("10.180.0.1"), ready("10.180.0.2")],
    );
    let rules = rules_of(&dump(&ready_too, &fake_config(IpFamily::Ipv4)), SERVICE);
    assert_eq!(
        rules[1],
        "numgen random mod 1 vmap { 0 : goto endpoint-2ZNDXFAB-ns1/svc1/tcp/p80__10.180.0.2/80 }"
    );
}

/// kube-proxy's nftables mode serves health-check node ports but writes no rule
/// for them.
#[test]
fn health_check_node_ports_write_nothing() {
    let state = one(local_lb(), vec![ready("10.180.0.1").on_node(NODE)]);
    let out = dump(&state, &fake_config(IpFamily::Ipv4));
    assert!(out.contains(". 3001 "), "{out}");
    assert!(!out.contains("30000"), "{out}");
}

/// Two services claiming one destination: the first in key order keeps it, as
/// its rule comes first in iptables mode.
#[test]
fn a_destination_claimed_twice_goes_to_the_first_service() {
    let mut a = svc("a", "172.30.0.41");
    a.external_ips = vec![ip("192.168.99.11")];
    let mut b = svc("b", "172.30.0.42");
    b.external_ips = vec![ip("192.168.99.11")];
    b.cluster_ips = vec![ip("172.30.0.41")];
    let state = state(
        vec![b, a],
        vec![
            slice("ns1", "a", &[("p80", 80)], vec![ready("10.180.0.1")]),
            slice("ns1", "b", &[("p80", 80)], vec![ready("10.180.0.2")]),
        ],
    );
    let out = dump(&state, &fake_config(IpFamily::Ipv4));
    let lines =
        |prefix: &str| -> Vec<&str> { out.lines().filter(|l| l.starts_with(prefix)).collect() };
    assert_eq!(
        lines("add element ip kube-proxy service-ips { 192.168.99.11 "),
        [
            "add element ip kube-proxy service-ips { 192.168.99.11 . tcp . 80 : goto external-VZNH3DV3-ns1/a/tcp/p80 }"
        ]
    );
    assert_eq!(
        lines("add element ip kube-proxy service-ips { 172.30.0.41 "),
        [
            "add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-VZNH3DV3-ns1/a/tcp/p80 }"
        ]
    );
    assert_eq!(lines("add element ip kube-proxy cluster-ips ").len(), 1);
}

/// A dual-stack load balancer with source ranges and affinity, endpoints of both
/// families.
fn dual_stack_state() -> ClusterState {
    let mut s = local_lb();
    s.cluster_ips = vec![ip("172.30.0.41"), ip("fd00:172:30::41")];
    s.external_ips = vec![ip("192.168.99.11"), ip("2001:db8:99::11")];
    s.load_balancer_ingress.push(LoadBalancerIngress {
        ip: ip("2001:db8:1::4"),
        ip_mode: IpMode::Vip,
    });
    s.load_balancer_source_ranges = vec![
        "203.0.113.0/25".parse().unwrap(),
        "2001:db8::/64".parse().unwrap(),
    ];
    s.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 300,
    };
    let mut v6 = EndpointSlice::new("ns1", "svc1", "svc1-v6", IpFamily::Ipv6)
        .with_port(EndpointPort::tcp("p80", 8080));
    v6.endpoints = vec![
        ready("fd00:10:180::1").on_node(NODE),
        ready("fd00:10:180::2:1"),
    ];
    state(
        vec![s],
        vec![
            slice("ns1", "svc1", &[("p80", 8080)], vec![ready("10.180.0.1")]),
            v6,
        ],
    )
}

/// That load balancer in the IPv6 table.
#[test]
fn ipv6_table() {
    let state = dual_stack_state();
    let out = dump(&state, &fake_config(IpFamily::Ipv6));
    assert!(!out.contains("10.180.0.1"), "no IPv4 endpoint: {out}");
    assert_snapshot!(out);
}

#[cfg(feature = "k8s")]
#[test]
fn shipped_example_cluster() {
    let state = crate::kube_proxy::example_cluster();
    let config = crate::fixtures::config()
        .with_cluster_cidrs(["10.244.0.0/16".parse().unwrap()])
        .with_node_name("node-a")
        .with_service_cidrs(["10.96.0.0/12".parse().unwrap()]);
    assert_snapshot!(dump(&state, &config));
}

/// Bad input gives the iptables mode's error, and what kube-proxy ignores the
/// iptables mode's warnings.
#[test]
fn the_same_errors_and_warnings_as_iptables_mode() {
    let config = fake_config(IpFamily::Ipv4);
    let mut node_port = svc("svc1", "172.30.0.41");
    node_port.ports[0].node_port = Some(30000);
    let bad = [
        // A loopback cluster IP, a name that is no DNS label, port 0, a
        // repeated port name, a link-local endpoint, a node port on a ClusterIP
        // service.
        one(svc("svc1", "127.0.0.1"), vec![]),
        one(svc("Svc1", "172.30.0.41"), vec![]),
        one(service("ns1", "svc1", "172.30.0.41", &[("p80", 0)]), vec![]),
        one(
            svc("svc1", "172.30.0.41").with_port(ServicePort::tcp("p80", 81)),
            vec![],
        ),
        one(svc("svc1", "172.30.0.41"), vec![ready("169.254.169.254")]),
        one(node_port, vec![]),
    ];
    for state in &bad {
        let theirs = compile(state, &config).unwrap_err();
        assert_eq!(nftables(state, &config).unwrap_err(), theirs);
        let lenient = nftables_lenient(state, &config).unwrap();
        assert_eq!(lenient.rejected, [theirs]);
    }
    let two_cidrs = config.clone().with_cluster_cidrs([
        "10.0.0.0/16".parse().unwrap(),
        "10.1.0.0/16".parse().unwrap(),
    ]);
    assert_eq!(
        nftables(&bad[0], &two_cidrs).unwrap_err(),
        compile(&bad[0], &two_cidrs).unwrap_err()
    );

    // An orphan slice, a slice port of no service port, an address of the other
    // family, a duplicate endpoint.
    let mut warned = one(
        svc("svc1", "172.30.0.41"),
        vec![ready("10.180.0.1"), ready("fd00::1"), ready("10.180.0.1")],
    );
    warned.upsert_slice(slice("ns1", "gone", &[("p80", 80)], vec![]));
    warned.upsert_slice(slice("ns1", "svc1-b", &[("other", 80)], vec![]));
    let theirs = compile_with_warnings(&warned, &config).unwrap().warnings;
    assert_eq!(theirs.len(), 4, "{theirs:?}");
    let ours = svcnat::compile::nftables_with_warnings(&warned, &config).unwrap();
    assert_eq!(ours.warnings, theirs);
}

/// A port whose `ns/name:port` is longer than an nftables comment (128 bytes;
/// Kubernetes allows 143) compiles, its no-endpoints element's comment cut to 128
/// bytes, as kube-proxy cuts it since kubernetes#139516; an interface name nft
/// cannot take is refused in nftables mode only.
#[test]
fn long_port_names_are_cut_and_odd_interfaces_refused() {
    let long = |c: char| std::iter::repeat_n(c, 63).collect::<String>();
    let (ns, name, port) = (
        long('n'),
        format!("s{}", long('v')[1..].to_owned()),
        long('p'),
    );
    let state = state(
        vec![
            service(&ns, &name, "172.30.0.41", &[(&port, 80)]),
            svc("svc1", "172.30.0.42"),
        ],
        vec![],
    );
    let config = fake_config(IpFamily::Ipv4);
    assert!(compile(&state, &config).is_ok());
    let text = dump(&state, &config);
    let full = format!("{ns}/{name}:{port}");
    assert!(full.len() > 128);
    let cut = &full[..128];
    assert!(
        text.contains(&format!(
            "172.30.0.41 . tcp . 80 comment \"{cut}\" : goto reject-chain"
        )),
        "{text}"
    );

    let odd = fake_config(IpFamily::Ipv4)
        .with_local_traffic(LocalTrafficDetector::BridgeInterface("br@0".into()));
    assert!(svcnat::compile::check_config(&odd).is_ok());
    let err = svcnat::compile::check_nftables_config(&odd).unwrap_err();
    assert!(
        matches!(
            &err,
            CompileError::Config {
                field: "local_traffic",
                problem: Problem::Nft(_)
            }
        ),
        "{err:?}"
    );
    assert_eq!(nftables(&state, &odd).unwrap_err(), err);
}

/// Every chain a rule or map element goes to, and every set or map a rule
/// reads, exists; no set or map has a key twice.
fn assert_references_resolve(rs: &nft::Ruleset) {
    let verdict_chains = rs
        .rules()
        .flat_map(|(_, r)| r.stmts.iter().flat_map(Stmt::chains))
        .chain(
            rs.maps
                .values()
                .flat_map(|m| m.elements.iter().filter_map(|e| e.verdict.chain())),
        );
    for chain in verdict_chains {
        assert!(rs.chains.contains_key(chain), "no chain {chain}");
    }
    for set in rs
        .rules()
        .filter_map(|(_, r)| r.stmts.iter().find_map(Stmt::set))
    {
        assert!(
            rs.sets.contains_key(set) || rs.maps.contains_key(set),
            "no set or map {set}"
        );
    }
    for (name, set) in &rs.sets {
        let keys: HashSet<_> = set.elements.iter().map(|e| &e.key).collect();
        assert_eq!(keys.len(), set.elements.len(), "{name}");
    }
    for (name, map) in &rs.maps {
        let keys: HashSet<_> = map.elements.iter().map(|e| &e.key).collect();
        assert_eq!(keys.len(), map.elements.len(), "{name}");
    }
}

/// The DNAT destinations of every endpoint chain (nftables) or `KUBE-SEP-…`
/// chain (iptables), with their protocol, counted.
fn nft_endpoints(rs: &nft::Ruleset) -> BTreeMap<(Protocol, SocketAddr), usize> {
    let mut out = BTreeMap::new();
    for (_, rule) in rs.rules() {
        if let [Stmt::L4Proto(p), Stmt::DnatTo(to)] = rule.stmts.as_slice() {
            *out.entry((*p, *to)).or_default() += 1;
        }
    }
    out
}

fn iptables_endpoints(rs: &svcnat::ruleset::Ruleset) -> BTreeMap<(Protocol, SocketAddr), usize> {
    use svcnat::ruleset::{Match, Table, Target};
    let mut out = BTreeMap::new();
    for table in rs.tables.iter().filter(|t| t.table == Table::Nat) {
        for chain in table.chains.values() {
            for rule in &chain.rules {
                if let Some(Target::Dnat(to)) = &rule.target
                    && let Some(to) = to.socket_addr()
                {
                    let proto = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                        .into_iter()
                        .find(|p| rule.matches().iter().any(|m| *m == Match::protocol(*p)))
                        .expect("a DNAT rule names its protocol");
                    *out.entry((proto, to)).or_default() += 1;
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The same objects in any insertion order give the same bytes; every
    /// reference resolves; the endpoints DNATed to are the iptables mode's.
    #[test]
    fn deterministic_and_consistent(
        parts in rich_cluster(),
        config in rich_config(),
        seed in any::<u64>(),
    ) {
        let forward = state_of(&parts);
        let backward = state_of(&shuffled(&parts, seed));
        let a = nftables(&forward, &config).unwrap();
        let b = nftables(&backward, &config).unwrap();
        prop_assert_eq!(a.to_dump(), b.to_dump());
        assert_references_resolve(&a);
        let theirs = compile(&forward, &config).unwrap();
        prop_assert_eq!(nft_endpoints(&a), iptables_endpoints(&theirs));
        // Every line is one command kube-proxy's sort can place.
        prop_assert_eq!(sort_transaction(&a.to_dump()).len(), a.to_dump().lines().count());
    }
}

/// nft itself accepts what the compiler writes (`nft --check -f`, in a network
/// namespace of its own, see [`crate::nft_check`]): kube-proxy's overall test, the dual-stack load
/// balancer in each family, each detector, no node-port filter, masquerade-all,
/// and the shipped example cluster.
#[test]
fn nft_accepts_the_compiled_tables() {
    let v4 = fake_config(IpFamily::Ipv4);
    let v6 = fake_config(IpFamily::Ipv6);
    let mut cases = vec![
        (crate::nft_kube_proxy::overall_state(), v4.clone()),
        (dual_stack_state(), v4.clone()),
        (dual_stack_state(), v6.clone()),
        (
            dual_stack_state(),
            v6.clone()
                .with_nodeport_addresses([])
                .with_masquerade_all(true),
        ),
    ];
    for detector in [
        LocalTrafficDetector::BridgeInterface("cbr0".into()),
        LocalTrafficDetector::InterfaceNamePrefix("veth".into()),
        LocalTrafficDetector::None,
    ] {
        cases.push((dual_stack_state(), v4.clone().with_local_traffic(detector)));
    }
    #[cfg(feature = "k8s")]
    cases.push((
        crate::kube_proxy::example_cluster(),
        v4.with_nodeport_addresses([]),
    ));
    for (state, config) in &cases {
        let what = format!("{:?} {:?}", config.ip_family, config.local_traffic);
        crate::nft_check::nft_check(&what, &dump(state, config));
    }
}
