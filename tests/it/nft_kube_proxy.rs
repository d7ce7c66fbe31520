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

use crate::fixtures::{ip, ready, service, slice, state};

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

/// The sort places objects by type and name and keeps the rules of a chain in
/// their order, so a reordered chain differs.
#[test]
fn the_sort_keeps_rule_order_only() {
    let a = "add element ip kube-proxy m { 1 }\nadd chain ip kube-proxy b\n\
             add chain ip kube-proxy a\nadd rule ip kube-proxy a x y\n\
             add rule ip kube-proxy b y z\nadd rule ip kube-proxy a z z\n";
    assert_eq!(
        sort_transaction(a),
        [
            "add chain ip kube-proxy a",
            "add chain ip kube-proxy b",
            "add rule ip kube-proxy a x y",
            "add rule ip kube-proxy a z z",
            "add rule ip kube-proxy b y z",
            "add element ip kube-proxy m { 1 }",
        ]
    );
    let b = "# svc\n\n  add rule ip kube-proxy b y z\nadd rule ip kube-proxy a x y\n\
             add chain ip kube-proxy a\nadd element ip kube-proxy m { 1 }\n\
             add rule ip kube-proxy a z z\nadd chain ip kube-proxy b\n";
    assert_eq!(sort_transaction(a), sort_transaction(b));
    let swapped = a
        .replace("a x y", "a q q")
        .replace("a z z", "a x y")
        .replace("a q q", "a z z");
    assert_ne!(sort_transaction(a), sort_transaction(&swapped));
}

/// The compiled table's dump, which the kernel must accept too
/// ([`crate::nft_check`]).
fn dump(state: &ClusterState) -> String {
    let text = svcnat::compile::nftables(state, &fake_config(IpFamily::Ipv4))
        .unwrap()
        .to_dump();
    crate::nft_check::nft_check("kube-proxy conformance", &text);
    text
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

/// The services and slices of `TestOverallNFTablesRules`.
pub fn overall_state() -> ClusterState {
    let mut svc2 =
        service("ns2", "svc2", "172.30.0.42", &[("p80", 80)]).with_type(ServiceType::LoadBalancer);
    svc2.external_traffic_policy = TrafficPolicy::Local;
    svc2.ports[0].node_port = Some(3001);
    svc2.load_balancer_ingress = vec![LoadBalancerIngress {
        ip: ip("1.2.3.4"),
        ip_mode: IpMode::Vip,
    }];
    svc2.external_ips = vec![ip("192.168.99.22")];
    svc2.health_check_node_port = Some(30000);
    let mut svc3 =
        service("ns3", "svc3", "172.30.0.43", &[("p80", 80)]).with_type(ServiceType::NodePort);
    svc3.ports[0].node_port = Some(3003);
    let mut svc4 =
        service("ns4", "svc4", "172.30.0.44", &[("p80", 80)]).with_type(ServiceType::NodePort);
    svc4.external_ips = vec![ip("192.168.99.33")];
    let mut svc5 =
        service("ns5", "svc5", "172.30.0.45", &[("p80", 80)]).with_type(ServiceType::LoadBalancer);
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
    state(
        vec![
            service("ns1", "svc1", "172.30.0.41", &[("p80", 80)]),
            svc2,
            svc3,
            svc4,
            svc5,
            service("ns6", "svc6", "172.30.0.46", &[("p80", 80)]),
        ],
        vec![
            slice("ns1", "svc1", &[("p80", 80)], vec![ready("10.180.0.1")]),
            // Not on this node: non-local, so the Local policy has no endpoint.
            slice("ns2", "svc2", &[("p80", 80)], vec![ready("10.180.0.2")]),
            slice("ns3", "svc3", &[("p80", 80)], vec![ready("10.180.0.3")]),
            slice(
                "ns4",
                "svc4",
                &[("p80", 80)],
                vec![
                    ready("10.180.0.4"),
                    ready("10.180.0.5").on_node("test-node"),
                ],
            ),
            slice("ns5", "svc5", &[("p80", 80)], vec![ready("10.180.0.3")]),
        ],
    )
}

/// `TestOverallNFTablesRules`: a variety of services in one sync.
#[test]
fn overall_nftables_rules() {
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
    assert_same(
        "TestOverallNFTablesRules",
        &expected,
        &dump(&overall_state()),
    );
}

/// The chains and rules of `svc1` in `TestSyncProxyRulesRepeated` and
/// `TestSyncProxyRulesStartup` (one endpoint, 10.0.1.1).
const SVC1: &str = r#"
add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5TPGNJF2-ns1/svc1/tcp/p80__10.0.1.1/80 }
add chain ip kube-proxy endpoint-5TPGNJF2-ns1/svc1/tcp/p80__10.0.1.1/80
add rule ip kube-proxy endpoint-5TPGNJF2-ns1/svc1/tcp/p80__10.0.1.1/80 ip saddr 10.0.1.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5TPGNJF2-ns1/svc1/tcp/p80__10.0.1.1/80 meta l4proto tcp dnat to 10.0.1.1:80
"#;

/// `svc2` of the same tests (one endpoint, 10.0.2.1).
const SVC2: &str = r#"
add chain ip kube-proxy service-MHHHYRWA-ns2/svc2/tcp/p8080
add rule ip kube-proxy service-MHHHYRWA-ns2/svc2/tcp/p8080 ip daddr 172.30.0.42 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-MHHHYRWA-ns2/svc2/tcp/p8080 numgen random mod 1 vmap { 0 : goto endpoint-7RVP4LUQ-ns2/svc2/tcp/p8080__10.0.2.1/8080 }
add chain ip kube-proxy endpoint-7RVP4LUQ-ns2/svc2/tcp/p8080__10.0.2.1/8080
add rule ip kube-proxy endpoint-7RVP4LUQ-ns2/svc2/tcp/p8080__10.0.2.1/8080 ip saddr 10.0.2.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-7RVP4LUQ-ns2/svc2/tcp/p8080__10.0.2.1/8080 meta l4proto tcp dnat to 10.0.2.1:8080
"#;

/// `svc3` of `TestSyncProxyRulesRepeated` with its first endpoint, 10.0.3.1.
const SVC3_FIRST: &str = r#"
add chain ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 ip daddr 172.30.0.43 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-2OCDJSZQ-ns3/svc3/tcp/p80__10.0.3.1/80 }
add chain ip kube-proxy endpoint-2OCDJSZQ-ns3/svc3/tcp/p80__10.0.3.1/80
add rule ip kube-proxy endpoint-2OCDJSZQ-ns3/svc3/tcp/p80__10.0.3.1/80 ip saddr 10.0.3.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-2OCDJSZQ-ns3/svc3/tcp/p80__10.0.3.1/80 meta l4proto tcp dnat to 10.0.3.1:80
"#;

/// `svc3` with two endpoints, 10.0.3.2 and 10.0.3.3.
const SVC3_TWO: &str = r#"
add chain ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 ip daddr 172.30.0.43 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-SWWHDC7X-ns3/svc3/tcp/p80__10.0.3.2/80 , 1 : goto endpoint-TQ2QKHCZ-ns3/svc3/tcp/p80__10.0.3.3/80 }
add chain ip kube-proxy endpoint-SWWHDC7X-ns3/svc3/tcp/p80__10.0.3.2/80
add rule ip kube-proxy endpoint-SWWHDC7X-ns3/svc3/tcp/p80__10.0.3.2/80 ip saddr 10.0.3.2 jump mark-for-masquerade
add rule ip kube-proxy endpoint-SWWHDC7X-ns3/svc3/tcp/p80__10.0.3.2/80 meta l4proto tcp dnat to 10.0.3.2:80
add chain ip kube-proxy endpoint-TQ2QKHCZ-ns3/svc3/tcp/p80__10.0.3.3/80
add rule ip kube-proxy endpoint-TQ2QKHCZ-ns3/svc3/tcp/p80__10.0.3.3/80 ip saddr 10.0.3.3 jump mark-for-masquerade
add rule ip kube-proxy endpoint-TQ2QKHCZ-ns3/svc3/tcp/p80__10.0.3.3/80 meta l4proto tcp dnat to 10.0.3.3:80
"#;

/// `svc4` of `TestSyncProxyRulesRepeated` once it has its endpoint, 10.0.4.1.
const SVC4: &str = r#"
add chain ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 ip daddr 172.30.0.44 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-WAHRBT2B-ns4/svc4/tcp/p80__10.0.4.1/80 }
add chain ip kube-proxy endpoint-WAHRBT2B-ns4/svc4/tcp/p80__10.0.4.1/80
add rule ip kube-proxy endpoint-WAHRBT2B-ns4/svc4/tcp/p80__10.0.4.1/80 ip saddr 10.0.4.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-WAHRBT2B-ns4/svc4/tcp/p80__10.0.4.1/80 meta l4proto tcp dnat to 10.0.4.1:80
"#;

/// kube-proxy's expected dump with the flushed, not yet deleted, chains named in
/// `stale` taken out: kube-proxy deletes them a second later, in a transaction
/// of their own; a full compile never has them.
fn without_stale(expected: &str, stale: &[&str]) -> String {
    let mut removed = 0;
    let kept: Vec<&str> = expected
        .lines()
        .filter(|line| {
            let is_stale = stale
                .iter()
                .any(|chain| line.trim() == format!("add chain ip kube-proxy {chain}"));
            removed += usize::from(is_stale);
            !is_stale
        })
        .collect();
    assert_eq!(
        removed,
        stale.len(),
        "every stale chain is in the expectation"
    );
    kept.join("\n")
}

/// One sync of `TestSyncProxyRulesRepeated`.
pub(crate) struct RepeatedStep {
    /// What changed before the sync.
    pub name: &'static str,
    /// The cluster after the change.
    pub state: ClusterState,
    /// kube-proxy's fake table after the sync, as the test expects it: with the
    /// chains flushed and not yet deleted (`stale`).
    pub expected: String,
    /// The chains of `expected` flushed and not yet deleted.
    pub stale: Vec<&'static str>,
    /// Whether the test ages the stale chains (`ageStaleChains()`, two seconds)
    /// before the sync.
    pub aged: bool,
    /// The operations the test expects in the sync's last transaction
    /// (`NumOperations()`), where it says.
    pub operations: Option<usize>,
}

/// `TestSyncProxyRulesRepeated`'s syncs, in order.
pub(crate) fn repeated_steps() -> Vec<RepeatedStep> {
    let svc2_chains = vec![
        "service-MHHHYRWA-ns2/svc2/tcp/p8080",
        "endpoint-7RVP4LUQ-ns2/svc2/tcp/p8080__10.0.2.1/8080",
    ];
    let svc3_chains = vec![
        "service-4AT6LBPK-ns3/svc3/tcp/p80",
        "endpoint-SWWHDC7X-ns3/svc3/tcp/p80__10.0.3.2/80",
        "endpoint-TQ2QKHCZ-ns3/svc3/tcp/p80__10.0.3.3/80",
    ];
    let mut steps = Vec::new();
    let mut step = |name, state: &ClusterState, expected: String, stale, aged, operations| {
        steps.push(RepeatedStep {
            name,
            state: state.clone(),
            expected,
            stale,
            aged,
            operations,
        });
    };

    let mut state = state(
        vec![
            service("ns1", "svc1", "172.30.0.41", &[("p80", 80)]),
            service("ns2", "svc2", "172.30.0.42", &[("p8080", 8080)]),
        ],
        vec![
            slice("ns1", "svc1", &[("p80", 80)], vec![ready("10.0.1.1")]),
            slice("ns2", "svc2", &[("p8080", 8080)], vec![ready("10.0.2.1")]),
        ],
    );
    let expected = BASE_RULES.to_owned()
        + r#"
add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy cluster-ips { 172.30.0.42 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
add element ip kube-proxy service-ips { 172.30.0.42 . tcp . 8080 : goto service-MHHHYRWA-ns2/svc2/tcp/p8080 }
"# + SVC1
        + SVC2;
    step("initial sync", &state, expected, vec![], false, None);

    // Add a new service and its endpoints.
    state.upsert_service(service("ns3", "svc3", "172.30.0.43", &[("p80", 80)]));
    let eps3 = slice("ns3", "svc3", &[("p80", 80)], vec![ready("10.0.3.1")]);
    state.upsert_slice(eps3.clone());
    let expected = BASE_RULES.to_owned()
        + r#"
add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy cluster-ips { 172.30.0.42 }
add element ip kube-proxy cluster-ips { 172.30.0.43 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
add element ip kube-proxy service-ips { 172.30.0.42 . tcp . 8080 : goto service-MHHHYRWA-ns2/svc2/tcp/p8080 }
add element ip kube-proxy service-ips { 172.30.0.43 . tcp . 80 : goto service-4AT6LBPK-ns3/svc3/tcp/p80 }
"# + SVC1
        + SVC2
        + SVC3_FIRST;
    step("svc3 added", &state, expected, vec![], false, Some(10));

    // Delete a service (its slice stays, and gives no rules); kube-proxy flushes
    // its chains and deletes them a sync later.
    state.remove_service(&ServiceKey::new("ns2", "svc2"));
    let elements = r#"
add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy cluster-ips { 172.30.0.43 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
add element ip kube-proxy service-ips { 172.30.0.43 . tcp . 80 : goto service-4AT6LBPK-ns3/svc3/tcp/p80 }
"#;
    let expected = BASE_RULES.to_owned()
        + elements
        + SVC1
        + r#"
add chain ip kube-proxy service-MHHHYRWA-ns2/svc2/tcp/p8080
add chain ip kube-proxy endpoint-7RVP4LUQ-ns2/svc2/tcp/p8080__10.0.2.1/8080
"# + SVC3_FIRST;
    step(
        "svc2 deleted",
        &state,
        expected,
        svc2_chains,
        false,
        Some(4),
    );
    // A sync later (stale chains aged), kube-proxy's own dump has them no more:
    // they went in a transaction of their own.
    let expected = BASE_RULES.to_owned() + elements + SVC1 + SVC3_FIRST;
    step(
        "stale chains deleted",
        &state,
        expected,
        vec![],
        true,
        Some(0),
    );

    // Add a service, sync, then add its endpoints.
    state.upsert_service(service("ns4", "svc4", "172.30.0.44", &[("p80", 80)]));
    let expected = BASE_RULES.to_owned()
        + r#"
add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy cluster-ips { 172.30.0.43 }
add element ip kube-proxy cluster-ips { 172.30.0.44 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
add element ip kube-proxy service-ips { 172.30.0.43 . tcp . 80 : goto service-4AT6LBPK-ns3/svc3/tcp/p80 }
"# + SVC1
        + SVC3_FIRST
        + r#"
add element ip kube-proxy no-endpoint-services { 172.30.0.44 . tcp . 80 comment "ns4/svc4:p80" : goto reject-chain }
"#;
    step(
        "svc4 added without endpoints",
        &state,
        expected,
        vec![],
        false,
        Some(2),
    );
    state.upsert_slice(slice(
        "ns4",
        "svc4",
        &[("p80", 80)],
        vec![ready("10.0.4.1")],
    ));
    let three = r#"
add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy cluster-ips { 172.30.0.43 }
add element ip kube-proxy cluster-ips { 172.30.0.44 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
add element ip kube-proxy service-ips { 172.30.0.43 . tcp . 80 : goto service-4AT6LBPK-ns3/svc3/tcp/p80 }
add element ip kube-proxy service-ips { 172.30.0.44 . tcp . 80 : goto service-LAUZTJTB-ns4/svc4/tcp/p80 }
"#;
    let expected = BASE_RULES.to_owned() + three + SVC1 + SVC3_FIRST + SVC4;
    step(
        "svc4's endpoints added",
        &state,
        expected,
        vec![],
        false,
        Some(10),
    );

    // Change an endpoint of an existing service; the old endpoint chain is
    // flushed, deleted later.
    let mut eps3_update = eps3.clone();
    eps3_update.endpoints[0].address = ip("10.0.3.2");
    state.upsert_slice(eps3_update.clone());
    let expected = BASE_RULES.to_owned()
        + three
        + SVC1
        + r#"
add chain ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 ip daddr 172.30.0.43 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-SWWHDC7X-ns3/svc3/tcp/p80__10.0.3.2/80 }
add chain ip kube-proxy endpoint-2OCDJSZQ-ns3/svc3/tcp/p80__10.0.3.1/80
add chain ip kube-proxy endpoint-SWWHDC7X-ns3/svc3/tcp/p80__10.0.3.2/80
add rule ip kube-proxy endpoint-SWWHDC7X-ns3/svc3/tcp/p80__10.0.3.2/80 ip saddr 10.0.3.2 jump mark-for-masquerade
add rule ip kube-proxy endpoint-SWWHDC7X-ns3/svc3/tcp/p80__10.0.3.2/80 meta l4proto tcp dnat to 10.0.3.2:80
"# + SVC4;
    step(
        "svc3's endpoint changed",
        &state,
        expected,
        vec!["endpoint-2OCDJSZQ-ns3/svc3/tcp/p80__10.0.3.1/80"],
        false,
        Some(9),
    );

    // Add an endpoint to a service (the old chain aged, deleted first).
    let mut eps3_update2 = eps3_update.clone();
    eps3_update2.endpoints.push(ready("10.0.3.3"));
    state.upsert_slice(eps3_update2.clone());
    let both = BASE_RULES.to_owned() + three + SVC1 + SVC3_TWO + SVC4;
    step(
        "svc3's endpoint added",
        &state,
        both.clone(),
        vec![],
        true,
        Some(12),
    );

    // Empty a service's endpoints; its chains are flushed, deleted later.
    let mut eps3_update3 = eps3_update2.clone();
    eps3_update3.endpoints.clear();
    state.upsert_slice(eps3_update3.clone());
    let emptied = BASE_RULES.to_owned()
        + r#"
add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy cluster-ips { 172.30.0.43 }
add element ip kube-proxy cluster-ips { 172.30.0.44 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
add element ip kube-proxy no-endpoint-services { 172.30.0.43 . tcp . 80 comment "ns3/svc3:p80" : goto reject-chain }
add element ip kube-proxy service-ips { 172.30.0.44 . tcp . 80 : goto service-LAUZTJTB-ns4/svc4/tcp/p80 }
"# + SVC1
        + r#"
add chain ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80
add chain ip kube-proxy endpoint-SWWHDC7X-ns3/svc3/tcp/p80__10.0.3.2/80
add chain ip kube-proxy endpoint-TQ2QKHCZ-ns3/svc3/tcp/p80__10.0.3.3/80
"# + SVC4;
    step(
        "svc3's endpoints emptied",
        &state,
        emptied.clone(),
        svc3_chains.clone(),
        false,
        Some(5),
    );

    // Restore them at once: the same rules as before emptying.
    state.upsert_slice(eps3_update2.clone());
    step(
        "svc3's endpoints restored",
        &state,
        both.clone(),
        vec![],
        false,
        Some(14),
    );

    // Empty and restore again, the stale chains aged in between (kube-proxy
    // asserts only the end, the same rules again); the emptied state is the one
    // above.
    state.upsert_slice(eps3_update3);
    step(
        "svc3's endpoints emptied again",
        &state,
        emptied,
        svc3_chains,
        false,
        None,
    );
    state.upsert_slice(eps3_update2);
    step(
        "svc3's endpoints restored again",
        &state,
        both.clone(),
        vec![],
        true,
        None,
    );
    // A sync with no change: no operation.
    step("no change", &state, both, vec![], false, Some(0));
    steps
}

/// `TestSyncProxyRulesRepeated`: the state after each of its syncs, compiled in
/// full, against the dump kube-proxy's fake holds after that (incremental) sync,
/// without the chains it flushed and deletes a sync later (a full compile never
/// has them; `nft_plan` checks the incremental syncs, with them, and their
/// operation counts).
#[test]
fn sync_proxy_rules_repeated() {
    for step in repeated_steps() {
        assert_same(
            step.name,
            &without_stale(&step.expected, &step.stale),
            &dump(&step.state),
        );
    }
}

/// `TestSyncProxyRulesStartup`: the first sync over a table that holds part of
/// the state already; kube-proxy's dump after it is the whole state's (what it
/// skips writing is its operation count, issue 17's).
#[test]
fn sync_proxy_rules_startup() {
    let state = state(
        vec![
            service("ns1", "svc1", "172.30.0.41", &[("p80", 80)]),
            service("ns2", "svc2", "172.30.0.42", &[("p8080", 8080)]),
            service("ns3", "svc3", "172.30.0.43", &[("p80", 80)]),
        ],
        vec![
            slice(
                "ns1",
                "svc1",
                &[("p80", 80)],
                vec![ready("10.0.1.1"), ready("10.0.1.2")],
            ),
            slice("ns2", "svc2", &[("p8080", 8080)], vec![ready("10.0.2.1")]),
        ],
    );
    let expected = BASE_RULES.to_owned()
        + r#"
add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy cluster-ips { 172.30.0.42 }
add element ip kube-proxy cluster-ips { 172.30.0.43 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
add element ip kube-proxy service-ips { 172.30.0.42 . tcp . 8080 : goto service-MHHHYRWA-ns2/svc2/tcp/p8080 }
add element ip kube-proxy no-endpoint-services { 172.30.0.43 . tcp . 80 comment "ns3/svc3:p80" : goto reject-chain }

add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-5TPGNJF2-ns1/svc1/tcp/p80__10.0.1.1/80 , 1 : goto endpoint-ZCZBVNAZ-ns1/svc1/tcp/p80__10.0.1.2/80 }
add chain ip kube-proxy endpoint-5TPGNJF2-ns1/svc1/tcp/p80__10.0.1.1/80
add rule ip kube-proxy endpoint-5TPGNJF2-ns1/svc1/tcp/p80__10.0.1.1/80 ip saddr 10.0.1.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5TPGNJF2-ns1/svc1/tcp/p80__10.0.1.1/80 meta l4proto tcp dnat to 10.0.1.1:80
add chain ip kube-proxy endpoint-ZCZBVNAZ-ns1/svc1/tcp/p80__10.0.1.2/80
add rule ip kube-proxy endpoint-ZCZBVNAZ-ns1/svc1/tcp/p80__10.0.1.2/80 ip saddr 10.0.1.2 jump mark-for-masquerade
add rule ip kube-proxy endpoint-ZCZBVNAZ-ns1/svc1/tcp/p80__10.0.1.2/80 meta l4proto tcp dnat to 10.0.1.2:80
"# + SVC2;
    assert_same("TestSyncProxyRulesStartup", &expected, &dump(&state));
}

/// `TestBadIPs`: addresses and CIDRs written with leading zeros in the API
/// objects come out in their canonical form. They are read as kube-proxy reads
/// them, from a Kubernetes `List`.
#[cfg(feature = "k8s")]
#[test]
fn bad_ips() {
    let list = r#"{"kind": "List", "apiVersion": "v1", "items": [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "svc1", "namespace": "ns1"},
         "spec": {"type": "LoadBalancer", "clusterIP": "172.30.0.041",
                  "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}],
                  "externalIPs": ["192.168.099.022"],
                  "loadBalancerSourceRanges": ["203.0.113.000/025"]},
         "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.004"}]}}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "svc1-1", "namespace": "ns1",
                      "labels": {"kubernetes.io/service-name": "svc1"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": ["10.180.00.001"]}],
         "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}]}
    ]}"#;
    let state = svcnat::k8s::read_slice(list.as_bytes()).unwrap().state;
    let expected = BASE_RULES.to_owned()
        + r#"
# svc1
add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }

add chain ip kube-proxy external-ULMVA6XW-ns1/svc1/tcp/p80
add rule ip kube-proxy external-ULMVA6XW-ns1/svc1/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-ULMVA6XW-ns1/svc1/tcp/p80 goto service-ULMVA6XW-ns1/svc1/tcp/p80

add chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80

add chain ip kube-proxy firewall-ULMVA6XW-ns1/svc1/tcp/p80
add rule ip kube-proxy firewall-ULMVA6XW-ns1/svc1/tcp/p80 ip saddr != { 203.0.113.0/25 } drop

add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
add element ip kube-proxy service-ips { 192.168.99.22 . tcp . 80 : goto external-ULMVA6XW-ns1/svc1/tcp/p80 }
add element ip kube-proxy service-ips { 1.2.3.4 . tcp . 80 : goto external-ULMVA6XW-ns1/svc1/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 3001 : goto external-ULMVA6XW-ns1/svc1/tcp/p80 }
add element ip kube-proxy firewall-ips { 1.2.3.4 . tcp . 80 : goto firewall-ULMVA6XW-ns1/svc1/tcp/p80 }
"#;
    assert_same("TestBadIPs", &expected, &dump(&state));
}
