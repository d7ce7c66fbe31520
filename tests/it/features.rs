//! One snapshot per service feature of kube-proxy's iptables mode beyond the basic
//! ClusterIP/NodePort cases (which are in `snapshots.rs`).

use insta::assert_snapshot;
use svcnat::model::*;

use crate::fixtures::*;

fn svc(name: &str, cluster_ip: &str) -> Service {
    service("ns1", name, cluster_ip, &[("p80", 80)])
}

fn local(addr: &str) -> Endpoint {
    ready(addr).on_node(NODE)
}

fn remote(addr: &str) -> Endpoint {
    ready(addr).on_node("other-node")
}

/// Only the rules a service adds: the fixed chains' own rules are left out.
fn service_rules(state: &ClusterState, config: &ProxyConfig) -> String {
    let text = render(state, config);
    let fixed = [
        "KUBE-FORWARD",
        "KUBE-FIREWALL",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ];
    text.lines()
        .filter(|l| {
            !fixed
                .iter()
                .any(|f| l.starts_with(&format!("-A {f} ")) || l.starts_with(&format!(":{f} ")))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn lb(name: &str) -> Service {
    Service {
        service_type: ServiceType::LoadBalancer,
        ports: vec![ServicePort::tcp("p80", 80).with_node_port(3005)],
        load_balancer_ingress: vec![LoadBalancerIngress {
            ip: ip("1.2.3.4"),
            ip_mode: IpMode::Vip,
        }],
        ..svc(name, "172.30.0.45")
    }
}

#[test]
fn load_balancer_with_source_ranges() {
    let mut s = lb("svc5");
    s.load_balancer_source_ranges = vec!["203.0.113.0/25".parse().unwrap()];
    assert_snapshot!(service_rules(
        &one(s, vec![remote("10.180.0.3")]),
        &config()
    ));
}

#[test]
fn load_balancer_source_range_containing_the_node_allows_the_vip() {
    let mut s = lb("svc5");
    s.load_balancer_source_ranges = vec![
        "192.168.0.0/24".parse().unwrap(),
        "203.0.113.0/25".parse().unwrap(),
    ];
    assert_snapshot!(service_rules(
        &one(s, vec![remote("10.180.0.3")]),
        &config()
    ));
}

#[test]
fn load_balancer_proxy_mode_ingress_is_ignored() {
    let mut s = lb("svc5");
    s.load_balancer_ingress.push(LoadBalancerIngress {
        ip: ip("5.6.7.8"),
        ip_mode: IpMode::Proxy,
    });
    let text = service_rules(&one(s, vec![remote("10.180.0.3")]), &config());
    assert!(text.contains("-d 1.2.3.4 "));
    assert!(!text.contains("5.6.7.8"), "{text}");
}

#[test]
fn external_ips_without_endpoints() {
    let s = Service {
        external_ips: vec![ip("192.168.99.33")],
        ..svc("svc6", "172.30.0.46")
    };
    assert_snapshot!(service_rules(&one(s, vec![]), &config()));
}

#[test]
fn external_traffic_policy_local() {
    let s = Service {
        external_traffic_policy: TrafficPolicy::Local,
        health_check_node_port: Some(30000),
        external_ips: vec![ip("192.168.99.22")],
        ..lb("svc2")
    };
    assert_snapshot!(service_rules(
        &one(s, vec![local("10.180.0.2"), remote("10.180.1.2")]),
        &config()
    ));
}

#[test]
fn external_traffic_policy_local_without_local_endpoints() {
    let s = Service {
        external_traffic_policy: TrafficPolicy::Local,
        health_check_node_port: Some(30000),
        ..lb("svc2")
    };
    assert_snapshot!(service_rules(
        &one(s, vec![remote("10.180.1.2")]),
        &config()
    ));
}

#[test]
fn internal_traffic_policy_local() {
    let s = Service {
        internal_traffic_policy: TrafficPolicy::Local,
        ..svc("svc1", "172.30.1.1")
    };
    assert_snapshot!(service_rules(
        &one(s, vec![local("10.180.0.1"), remote("10.180.1.1")]),
        &config()
    ));
}

#[test]
fn internal_traffic_policy_local_without_local_endpoints() {
    let s = Service {
        internal_traffic_policy: TrafficPolicy::Local,
        ..svc("svc1", "172.30.1.1")
    };
    assert_snapshot!(service_rules(
        &one(s, vec![remote("10.180.1.1")]),
        &config()
    ));
}

#[test]
fn session_affinity() {
    let s = Service {
        session_affinity: SessionAffinity::ClientIp {
            timeout_seconds: 10800,
        },
        ..svc("svc5", "172.30.0.45")
    };
    assert_snapshot!(service_rules(
        &one(s, vec![remote("10.180.0.3"), remote("10.180.0.4")]),
        &config()
    ));
}

#[test]
fn terminating_local_fallback_with_external_traffic_policy_local() {
    // Local endpoints are only terminating: Local policy falls back to them, while
    // Cluster policy keeps the ready remote one. The two fall back independently.
    let s = Service {
        external_traffic_policy: TrafficPolicy::Local,
        ..lb("svc1")
    };
    let eps = vec![
        local("10.180.0.1").with_conditions(Conditions::SERVING_TERMINATING),
        remote("10.180.1.1"),
    ];
    assert_snapshot!(service_rules(&one(s, eps), &config()));
}

#[test]
fn topology_zone_hints() {
    let hinted = |addr: &str, zone: &str| {
        let mut e = remote(addr);
        e.zone = Some(zone.into());
        e.hints.for_zones = vec![zone.into()];
        e
    };
    let eps = vec![
        hinted("10.180.0.1", "zone-a"),
        hinted("10.180.0.2", "zone-b"),
        hinted("10.180.0.3", "zone-a"),
    ];
    let s = one(svc("svc1", "172.30.0.41"), eps);
    // In zone-a only the zone-a endpoints are used.
    assert_snapshot!(service_rules(&s, &config().with_node_zone("zone-a")));
    // A node in a zone no hint names uses every endpoint.
    let unhinted = service_rules(&s, &config().with_node_zone("zone-c"));
    assert_eq!(unhinted.matches("-j DNAT").count(), 3);
}

#[test]
fn topology_node_hints() {
    let mut a = remote("10.180.0.1");
    a.hints.for_nodes = vec![NODE.into()];
    let mut b = remote("10.180.0.2");
    b.hints.for_nodes = vec!["other-node".into()];
    let s = one(svc("svc1", "172.30.0.41"), vec![a, b]);
    let text = service_rules(&s, &config());
    assert_eq!(text.matches("-j DNAT").count(), 1, "{text}");
    assert!(text.contains("--to-destination 10.180.0.1:80"));
    // Without the feature gate node hints are ignored.
    let off = service_rules(&s, &config().with_prefer_same_node_hints(false));
    assert_eq!(off.matches("-j DNAT").count(), 2, "{off}");
}

#[test]
fn local_detection_by_bridge_and_interface_prefix() {
    let s = Service {
        external_traffic_policy: TrafficPolicy::Local,
        ..lb("svc2")
    };
    let state = one(s, vec![local("10.180.0.2")]);
    let bridge = config().with_local_traffic(LocalTrafficDetector::BridgeInterface("cbr0".into()));
    let prefix =
        config().with_local_traffic(LocalTrafficDetector::InterfaceNamePrefix("veth".into()));
    assert_snapshot!(format!(
        "# BridgeInterface cbr0\n{}\n# InterfaceNamePrefix veth\n{}",
        service_rules(&state, &bridge),
        service_rules(&state, &prefix)
    ));
}

#[test]
fn random_fully_nfacct_and_liberal_conntrack() {
    let s = Service {
        ports: vec![ServicePort::tcp("p80", 80).with_node_port(3001)],
        ..svc("svc3", "172.30.0.43")
    }
    .with_type(ServiceType::NodePort);
    let config = config()
        .with_masquerade_random_fully(true)
        .with_nfacct_counters(true)
        .with_conntrack_tcp_be_liberal(true);
    assert_snapshot!(render(&one(s, vec![remote("10.180.0.3")]), &config));
}

#[test]
fn nodeport_addresses_and_primary() {
    let s = Service {
        ports: vec![ServicePort::tcp("p80", 80).with_node_port(3001)],
        ..svc("svc3", "172.30.0.43")
    }
    .with_type(ServiceType::NodePort);
    let state = one(s, vec![remote("10.180.0.3")]);
    let cidrs = config()
        .with_node_ips([
            ip("192.168.0.2"),
            ip("192.168.1.2"),
            ip("10.1.1.1"),
            ip("127.0.0.1"),
        ])
        .with_nodeport_addresses([
            NodePortAddress::Cidr("192.168.0.0/16".parse().unwrap()),
            NodePortAddress::Cidr("127.0.0.0/8".parse().unwrap()),
        ]);
    let primary = config().with_nodeport_addresses([NodePortAddress::Primary]);
    let no_localhost = config().with_localhost_nodeports(false);
    let last_rules = |c: &ProxyConfig| {
        render(&state, c)
            .lines()
            .filter(|l| l.contains("-j KUBE-NODEPORTS") || l.starts_with("-A KUBE-FIREWALL"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_snapshot!(format!(
        "# 192.168.0.0/16,127.0.0.0/8\n{}\n# primary\n{}\n# localhost node ports off\n{}",
        last_rules(&cidrs),
        last_rules(&primary),
        last_rules(&no_localhost)
    ));
}

#[test]
fn sctp_and_udp_ports() {
    let s = Service {
        ports: vec![
            ServicePort::tcp("sctp", 9000)
                .with_protocol(Protocol::Sctp)
                .with_node_port(3009),
            ServicePort::tcp("udp", 53).with_protocol(Protocol::Udp),
        ],
        service_type: ServiceType::NodePort,
        ..svc("svc7", "172.30.0.47")
    };
    let mut sl = slice("ns1", "svc7", &[], vec![remote("10.180.0.7")]);
    sl.ports = vec![
        EndpointPort {
            name: "sctp".into(),
            protocol: Protocol::Sctp,
            port: 9000,
        },
        EndpointPort {
            name: "udp".into(),
            protocol: Protocol::Udp,
            port: 5353,
        },
    ];
    assert_snapshot!(service_rules(&state(vec![s], vec![sl]), &config()));
}

fn v6_config() -> ProxyConfig {
    config()
        .with_ip_family(IpFamily::Ipv6)
        .with_node_ips([ip("2001:db8::1"), ip("192.168.0.2"), ip("::1")])
        .with_cluster_cidrs([
            "10.0.0.0/8".parse().unwrap(),
            "fd00:10::/64".parse().unwrap(),
        ])
}

#[test]
fn ipv6_node_port() {
    let s = Service {
        cluster_ips: vec![ip("fd00:172:30::41")],
        ports: vec![ServicePort::tcp("p80", 80).with_node_port(3001)],
        service_type: ServiceType::NodePort,
        ..svc("svc1", "172.30.0.41")
    };
    let sl = slice(
        "ns1",
        "svc1",
        &[("p80", 80)],
        vec![remote("fd00:10:180::1"), remote("fd00:10:180::2")],
    );
    let text = render(&state(vec![s], vec![sl]), &v6_config());
    assert!(text.contains("--to-destination [fd00:10:180::1]:80"));
    assert!(text.contains("! -d ::1/128 -j KUBE-NODEPORTS"));
    assert!(!text.contains("KUBE-FIREWALL"), "no localnet guard on IPv6");
    assert_snapshot!(text);
}

#[test]
fn dual_stack_service_in_each_family() {
    let s = Service {
        cluster_ips: vec![ip("172.30.0.41"), ip("fd00:172:30::41")],
        ..svc("svc1", "172.30.0.41")
    };
    let v4 = slice("ns1", "svc1", &[("p80", 80)], vec![remote("10.180.0.1")]);
    let mut v6 = slice(
        "ns1",
        "svc1",
        &[("p80", 80)],
        vec![remote("fd00:10:180::1")],
    );
    v6.name = "svc1-v6".into();
    let state = state(vec![s], vec![v4, v6]);
    let ipv4 = service_rules(&state, &config());
    let ipv6 = service_rules(&state, &v6_config());
    assert!(
        ipv4.contains("10.180.0.1:80") && !ipv4.contains("fd00"),
        "{ipv4}"
    );
    assert!(
        ipv6.contains("[fd00:10:180::1]:80") && !ipv6.contains("10.180.0.1"),
        "{ipv6}"
    );
    assert_snapshot!(format!("# IPv4\n{ipv4}\n# IPv6\n{ipv6}"));
}

#[test]
fn large_cluster_drops_endpoint_comments_only() {
    let s = svc("svc1", "172.30.0.41");
    let state = one(
        s,
        vec![
            remote("10.180.0.1"),
            remote("10.180.0.2"),
            remote("10.180.0.3"),
        ],
    );
    // The threshold is explicit: kube-proxy's is 1000 endpoints (the default).
    assert_eq!(ProxyConfig::default().large_cluster_endpoints, Some(1000));
    let below = service_rules(&state, &config().with_large_cluster_endpoints(Some(3)));
    assert!(below.contains("--comment \"ns1/svc1:p80 -> 10.180.0.1:80\""));
    let above = service_rules(&state, &config().with_large_cluster_endpoints(Some(2)));
    assert_snapshot!(above);
    let never = service_rules(&state, &config().with_large_cluster_endpoints(None));
    assert_eq!(never, below);
}

/// The cluster-size rule counts what the rules use: each `ip:port` of a service
/// port once, of the proxy's family, of services that exist. The compiler starts
/// from a bound that counts every endpoint of every slice of the family once per
/// port, so this state (bound 9, count 3) is the case where it has to write
/// everything again.
#[test]
fn large_cluster_counts_each_used_endpoint_once() {
    let eps = || {
        vec![
            remote("10.180.0.1"),
            remote("10.180.0.2"),
            remote("10.180.0.3"),
        ]
    };
    let mut again = slice("ns1", "svc1", &[("p80", 80)], eps());
    again.name = "svc1-again".into();
    let state = state(
        vec![svc("svc1", "172.30.0.41")],
        vec![
            slice("ns1", "svc1", &[("p80", 80)], eps()),
            again,
            slice("ns1", "gone", &[("p80", 80)], eps()),
            slice("ns1", "svc1-v6", &[("p80", 80)], vec![ready("fd00::1")]),
        ],
    );
    let comment = "--comment \"ns1/svc1:p80 -> 10.180.0.1:80\"";
    for (limit, commented) in [(3, true), (2, false)] {
        let config = config().with_large_cluster_endpoints(Some(limit));
        // `render` also checks that compile_text writes the same bytes.
        let typed = render(&state, &config);
        assert_eq!(
            typed.contains(comment),
            commented,
            "limit {limit}:\n{typed}"
        );
    }
}

#[test]
fn comments_off() {
    let state = one(svc("svc1", "172.30.0.41"), vec![remote("10.180.0.1")]);
    let text = render(&state, &config().with_comments(false));
    assert!(!text.contains("comment"), "{text}");
    assert!(text.contains("-j DNAT --to-destination 10.180.0.1:80"));
}

#[test]
fn jump_rules_from_builtin_chains() {
    let rules = svcnat::compile::jump_rules(&config()).unwrap();
    let text: Vec<String> = rules
        .iter()
        .map(|j| format!("{} {} {}", j.table, j.chain, j.rule))
        .collect();
    assert_snapshot!(text.join("\n"));
    let v6 = svcnat::compile::jump_rules(&v6_config()).unwrap();
    assert!(
        v6.iter()
            .all(|j| j.rule.jump_target().unwrap().as_str() != "KUBE-FIREWALL")
    );
}

#[test]
fn source_ranges_print_masked_as_kube_proxy_does() {
    let mut s = lb("svc5");
    s.load_balancer_source_ranges = vec!["203.0.113.5/25".parse().unwrap()];
    let text = service_rules(&one(s, vec![remote("10.180.0.3")]), &config());
    assert!(text.contains("-s 203.0.113.0/25 -j KUBE-EXT-"), "{text}");
}

#[test]
fn nodeport_addresses_loopback_detection_matches_kube_proxy() {
    // kube-proxy keeps localhost node ports for a CIDR inside 127.0.0.0/8.
    let cfg = config()
        .with_node_ips([ip("192.168.0.2"), ip("127.0.0.5")])
        .with_nodeport_addresses([NodePortAddress::Cidr("127.0.0.5/32".parse().unwrap())]);
    let text = render(&ClusterState::new(), &cfg);
    assert!(text.contains("-d 127.0.0.5 -j KUBE-NODEPORTS"), "{text}");
    assert!(text.contains(":KUBE-FIREWALL - [0:0]"), "{text}");
}
