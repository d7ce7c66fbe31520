//! The nftables ruleset compared with what kube-proxy's own nftables tests expect,
//! the way they compare it.
//!
//! Ported from `pkg/proxy/nftables/proxier_test.go` and `helpers_test.go` of
//! kubernetes at commit 030880a5dc5449403c6d1f0aa146a7dc21d6c6dc: the tests that
//! assert a complete dump (`TestOverallNFTablesRules`, `TestSyncProxyRulesRepeated`,
//! `TestSyncProxyRulesStartup`, `TestBadIPs`). Each builds the test's Services and
//! EndpointSlices as model values, compiles them with the config of kube-proxy's
//! `NewFakeProxier`, and compares with the test's expected text (verbatim but for
//! indentation) after a port of `sortNFTablesTransaction` applied to both sides:
//! blank and `#` lines dropped, lines stably sorted by object type (table, chain,
//! rule, set, map, element), then object name, then the whole line, except that
//! the rules of one chain keep their order.

use std::cmp::Ordering;
use std::net::IpAddr;

use svcnat::model::*;

/// kube-proxy's `NewFakeProxier`: node `test-node` with its addresses (the primary
/// one of each family first), pod CIDR, service CIDR, node-port addresses
/// 192.168.0.2/32 and 2001:db8::1/128, mark 0x4000.
pub fn fake_config(family: IpFamily) -> ProxyConfig {
    let ips: Vec<IpAddr> = [
        "192.168.0.2",
        "192.168.1.2",
        "192.168.99.11",
        "2001:db8::1",
        "2001:db8:1::2",
        "127.0.0.1",
        "::1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let (pods, services) = match family {
        IpFamily::Ipv4 => ("10.0.0.0/8", "172.30.0.0/16"),
        IpFamily::Ipv6 => ("fd00:10::/64", "fd00:10:96::/112"),
    };
    ProxyConfig::default()
        .with_node_name("test-node")
        .with_node_ips(ips)
        .with_ip_family(family)
        .with_cluster_cidrs([pods.parse().unwrap()])
        .with_service_cidrs([services.parse().unwrap()])
        .with_nodeport_addresses([
            NodePortAddress::Cidr("192.168.0.2/32".parse().unwrap()),
            NodePortAddress::Cidr("2001:db8::1/128".parse().unwrap()),
        ])
}

/// The port of `sortNFTablesTransaction` (helpers_test.go), with dedent: lines
/// trimmed, blank and `#` lines dropped, then sorted.
pub fn sort_transaction(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for line in &lines {
        // kube-proxy's sort leaves shorter lines where they are; none occurs.
        assert!(line.split(' ').count() >= 5, "{line:?}");
    }
    lines.sort_by(|a, b| compare_lines(a, b));
    lines
}

fn object_order(kind: &str) -> u8 {
    match kind {
        "table" => 10,
        "chain" => 9,
        "rule" => 8,
        "set" => 7,
        "map" => 6,
        "element" => 5,
        _ => 0,
    }
}

/// `add TYPE FAMILY TABLE NAME ...`: by type (in `object_order`, highest first),
/// then name; rules of one chain are equal (the stable sort keeps their order),
/// other lines by the whole line.
fn compare_lines(a: &str, b: &str) -> Ordering {
    let wa: Vec<&str> = a.split(' ').collect();
    let wb: Vec<&str> = b.split(' ').collect();
    object_order(wb[1])
        .cmp(&object_order(wa[1]))
        .then_with(|| wa[4].cmp(wb[4]))
        .then_with(|| match wa[1] {
            "rule" => Ordering::Equal,
            _ => a.cmp(b),
        })
}

/// Asserts that `ours` equals kube-proxy's `expected` after the sort, listing the
/// lines only one side has.
pub fn assert_same(step: &str, expected: &str, ours: &str) {
    let (theirs, mine) = (sort_transaction(expected), sort_transaction(ours));
    if theirs == mine {
        return;
    }
    let missing: Vec<&&str> = theirs.iter().filter(|l| !mine.contains(l)).collect();
    let extra: Vec<&&str> = mine.iter().filter(|l| !theirs.contains(l)).collect();
    panic!(
        "{step}: the dumps differ\nonly kube-proxy's:\n{}\nonly ours:\n{}\nours, sorted:\n{}",
        missing
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
        extra
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
        mine.join("\n"),
    );
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A one-port TCP service `ns/name` on `cluster_ip`.
fn service(ns: &str, name: &str, cluster_ip: &str, port: &str, number: u16) -> Service {
    Service::cluster_ip(ns, name, ip(cluster_ip)).with_port(ServicePort::tcp(port, number))
}

/// The slice `name-1` of service `ns/name`, one TCP port, these endpoints.
fn slice(ns: &str, name: &str, port: &str, number: u16, endpoints: Vec<Endpoint>) -> EndpointSlice {
    let mut slice = EndpointSlice::new(ns, name, format!("{name}-1"), IpFamily::Ipv4)
        .with_port(EndpointPort::tcp(port, number));
    slice.endpoints = endpoints;
    slice
}

fn ready(address: &str) -> Endpoint {
    Endpoint::ready(ip(address))
}

fn state(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ClusterState {
    let mut state = ClusterState::new();
    for s in services {
        state.upsert_service(s);
    }
    for s in slices {
        state.upsert_slice(s);
    }
    state
}

fn dump(state: &ClusterState) -> String {
    svcnat::compile::nftables(state, &fake_config(IpFamily::Ipv4))
        .unwrap()
        .to_dump()
}

/// proxier_test.go's `baseRules`: what every IPv4 sync of `NewFakeProxier` writes.
const BASE_RULES: &str = r#"
add table ip kube-proxy { comment "rules for kube-proxy" ; }

add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }

add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }

add chain ip kube-proxy cluster-ips-check
add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }
add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }
add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }
add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }
add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }
add chain ip kube-proxy firewall-check
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy masquerading
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy nodeport-endpoints-check
add chain ip kube-proxy reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }
add chain ip kube-proxy services
add chain ip kube-proxy service-endpoints-check

add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy cluster-ips-check ip daddr { 172.30.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"
add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-output ct state new jump cluster-ips-check
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports

add element ip kube-proxy nodeport-ips { 192.168.0.2 }
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
"#;

/// `TestOverallNFTablesRules`: a variety of services in one sync.
#[test]
fn overall_nftables_rules() {
    let mut svc2 =
        service("ns2", "svc2", "172.30.0.42", "p80", 80).with_type(ServiceType::LoadBalancer);
    svc2.external_traffic_policy = TrafficPolicy::Local;
    svc2.ports[0].node_port = Some(3001);
    svc2.load_balancer_ingress = vec![LoadBalancerIngress {
        ip: ip("1.2.3.4"),
        ip_mode: IpMode::Vip,
    }];
    svc2.external_ips = vec![ip("192.168.99.22")];
    svc2.health_check_node_port = Some(30000);
    let mut svc3 =
        service("ns3", "svc3", "172.30.0.43", "p80", 80).with_type(ServiceType::NodePort);
    svc3.ports[0].node_port = Some(3003);
    let mut svc4 =
        service("ns4", "svc4", "172.30.0.44", "p80", 80).with_type(ServiceType::NodePort);
    svc4.external_ips = vec![ip("192.168.99.33")];
    let mut svc5 =
        service("ns5", "svc5", "172.30.0.45", "p80", 80).with_type(ServiceType::LoadBalancer);
    svc5.ports[0].node_port = Some(3002);
    svc5.load_balancer_ingress = vec![LoadBalancerIngress {
        ip: ip("5.6.7.8"),
        ip_mode: IpMode::Vip,
    }];
    svc5.health_check_node_port = Some(30000);
    svc5.load_balancer_source_ranges = vec!["203.0.113.0/25".parse().unwrap()];
    svc5.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 10800,
    };
    let state = state(
        vec![
            service("ns1", "svc1", "172.30.0.41", "p80", 80),
            svc2,
            svc3,
            svc4,
            svc5,
            service("ns6", "svc6", "172.30.0.46", "p80", 80),
        ],
        vec![
            slice("ns1", "svc1", "p80", 80, vec![ready("10.180.0.1")]),
            // Not on this node: non-local, so the Local policy has no endpoint.
            slice("ns2", "svc2", "p80", 80, vec![ready("10.180.0.2")]),
            slice("ns3", "svc3", "p80", 80, vec![ready("10.180.0.3")]),
            slice(
                "ns4",
                "svc4",
                "p80",
                80,
                vec![
                    ready("10.180.0.4"),
                    ready("10.180.0.5").on_node("test-node"),
                ],
            ),
            slice("ns5", "svc5", "p80", 80, vec![ready("10.180.0.3")]),
        ],
    );
    let expected = BASE_RULES.to_owned()
        + r#"
# svc1
add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }

add chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80

add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }

# svc2
add chain ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80
add rule ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80 ip daddr 172.30.0.42 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 }
add chain ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80
add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 ip saddr 10.0.0.0/8 goto service-42NFTM6N-ns2/svc2/tcp/p80 comment "short-circuit pod traffic"
add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"
add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 fib saddr type local goto service-42NFTM6N-ns2/svc2/tcp/p80 comment "short-circuit local traffic"
add chain ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80
add rule ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 ip saddr 10.180.0.2 jump mark-for-masquerade
add rule ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 meta l4proto tcp dnat to 10.180.0.2:80

add element ip kube-proxy cluster-ips { 172.30.0.42 }
add element ip kube-proxy service-ips { 172.30.0.42 . tcp . 80 : goto service-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy service-ips { 192.168.99.22 . tcp . 80 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy service-ips { 1.2.3.4 . tcp . 80 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 3001 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }

add element ip kube-proxy no-endpoint-nodeports { tcp . 3001 comment "ns2/svc2:p80" : drop }
add element ip kube-proxy no-endpoint-services { 1.2.3.4 . tcp . 80 comment "ns2/svc2:p80" : drop }
add element ip kube-proxy no-endpoint-services { 192.168.99.22 . tcp . 80 comment "ns2/svc2:p80" : drop }

# svc3
add chain ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 ip daddr 172.30.0.43 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 }
add chain ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80
add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 goto service-4AT6LBPK-ns3/svc3/tcp/p80
add chain ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80
add rule ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 ip saddr 10.180.0.3 jump mark-for-masquerade
add rule ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 meta l4proto tcp dnat to 10.180.0.3:80

add element ip kube-proxy cluster-ips { 172.30.0.43 }
add element ip kube-proxy service-ips { 172.30.0.43 . tcp . 80 : goto service-4AT6LBPK-ns3/svc3/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 3003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80 }

# svc4
add chain ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 ip daddr 172.30.0.44 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 , 1 : goto endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 }
add chain ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80
add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 goto service-LAUZTJTB-ns4/svc4/tcp/p80
add chain ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80
add rule ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 ip saddr 10.180.0.5 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 meta l4proto tcp dnat to 10.180.0.5:80
add chain ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80
add rule ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 ip saddr 10.180.0.4 jump mark-for-masquerade
add rule ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 meta l4proto tcp dnat to 10.180.0.4:80

add element ip kube-proxy cluster-ips { 172.30.0.44 }
add element ip kube-proxy service-ips { 172.30.0.44 . tcp . 80 : goto service-LAUZTJTB-ns4/svc4/tcp/p80 }
add element ip kube-proxy service-ips { 192.168.99.33 . tcp . 80 : goto external-LAUZTJTB-ns4/svc4/tcp/p80 }

# svc5
add set ip kube-proxy affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }
add chain ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 ip daddr 172.30.0.45 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 ip saddr @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 goto endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 }
add chain ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80 goto service-HVFWP5L3-ns5/svc5/tcp/p80

add chain ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 ip saddr 10.180.0.3 jump mark-for-masquerade
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 update @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { ip saddr }
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 meta l4proto tcp dnat to 10.180.0.3:80

add chain ip kube-proxy firewall-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy firewall-HVFWP5L3-ns5/svc5/tcp/p80 ip saddr != { 203.0.113.0/25 } drop

add element ip kube-proxy cluster-ips { 172.30.0.45 }
add element ip kube-proxy service-ips { 172.30.0.45 . tcp . 80 : goto service-HVFWP5L3-ns5/svc5/tcp/p80 }
add element ip kube-proxy service-ips { 5.6.7.8 . tcp . 80 : goto external-HVFWP5L3-ns5/svc5/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 3002 : goto external-HVFWP5L3-ns5/svc5/tcp/p80 }
add element ip kube-proxy firewall-ips { 5.6.7.8 . tcp . 80 : goto firewall-HVFWP5L3-ns5/svc5/tcp/p80 }

# svc6
add element ip kube-proxy cluster-ips { 172.30.0.46 }
add element ip kube-proxy no-endpoint-services { 172.30.0.46 . tcp . 80 comment "ns6/svc6:p80" : goto reject-chain }
"#;
    assert_same("TestOverallNFTablesRules", &expected, &dump(&state));
}
