//! kube-proxy's nftables packet-flow tests, traced through the tables svcnat's
//! compiler writes for the same Services and EndpointSlices.
//!
//! Ported from the `runPacketFlowTests` tables of `pkg/proxy/nftables/proxier_test.go`
//! at kubernetes commit 030880a5dc5449403c6d1f0aa146a7dc21d6c6dc: TestNoEndpointsReject,
//! TestClusterIPGeneral, TestLoadBalancer, TestNodePorts,
//! TestExternalTrafficPolicyLocal, TestExternalTrafficPolicyCluster,
//! TestInternalTrafficPolicy, TestTerminatingEndpointsTrafficPolicyLocal,
//! TestTerminatingEndpointsTrafficPolicyCluster and TestInternalExternalMasquerade
//! (TestOverallNFTablesRules has none there; its table is traced in
//! `nft_trace`). Each case is compiled with the config of kube-proxy's
//! `NewFakeProxier` ([`fake_config`]) and its flows traced with
//! `svcnat::trace::nft::trace`.
//!
//! kube-proxy's tracer (`tracePacket` in `helpers_test.go`) runs every packet
//! into the node from outside, through the prerouting chains, then the
//! forward chain; its result is the DNAT destinations of all the endpoints
//! the packet can reach ("10.180.0.1:80, 10.180.0.2:80"), or "DROP" or
//! "REJECT", or "" when nothing catches the packet; masquerade when the
//! packet was marked for it. The same view of a svcnat trace: each packet
//! arrives on `eth0` at a node with kube-proxy's test addresses; an outcome
//! gives its destination if DNATed, its verdict if dropped or rejected,
//! nothing otherwise; masquerade if any outcome is masqueraded or carries the
//! mark. Outputs are compared as sets (kube-proxy's order is its endpoint
//! order).

use svcnat::model::*;
use svcnat::trace::nft::trace;
use svcnat::trace::{Packet, Trace, Verdict};

use crate::fixtures::{ip, ready, service, slice, state};
use crate::nft_kube_proxy::fake_config;
use crate::nft_trace::test_node;

const TEST_NODE: &str = "test-node";
const EXTERNAL_CLIENT: &str = "203.0.113.2";
const EXTERNAL_CLIENT_BLOCKED: &str = "203.0.113.130";
const NODE_IP: &str = "192.168.0.2";

/// One flow of a `runPacketFlowTests` table.
#[derive(Debug, Clone)]
struct Flow {
    name: &'static str,
    source: &'static str,
    protocol: Protocol,
    destination: &'static str,
    port: u16,
    output: String,
    masq: bool,
}

fn flow(
    name: &'static str,
    source: &'static str,
    destination: &'static str,
    port: u16,
    output: &str,
    masq: bool,
) -> Flow {
    Flow {
        name,
        source,
        protocol: Protocol::Tcp,
        destination,
        port,
        output: output.to_owned(),
        masq,
    }
}

impl Flow {
    fn with_protocol(mut self, protocol: Protocol) -> Flow {
        self.protocol = protocol;
        self
    }
}

/// kube-proxy's tracer's view of a trace: the outputs, sorted and joined, and
/// whether the packet is masqueraded.
fn kube_proxy_view(t: &Trace, original: std::net::SocketAddr, mark: u32) -> (String, bool) {
    let mut outputs: Vec<String> = Vec::new();
    let mut masq = false;
    for o in &t.outcomes {
        masq |= o.masquerade || o.mark & mark != 0;
        let out = match o.verdict {
            Verdict::Drop => "DROP".to_owned(),
            Verdict::Reject => "REJECT".to_owned(),
            _ if o.destination != original => o.destination.to_string(),
            _ => String::new(),
        };
        if !outputs.contains(&out) {
            outputs.push(out);
        }
    }
    outputs.sort();
    (outputs.join(", "), masq)
}

/// Compiles `state` with `config` and traces every flow; the failures, one line
/// each, prefixed with `case`.
fn run(case: &str, state: &ClusterState, config: &ProxyConfig, flows: &[Flow]) -> Vec<String> {
    let ruleset = match svcnat::compile::nftables(state, config) {
        Ok(r) => r,
        Err(e) => return vec![format!("{case}: does not compile: {e}")],
    };
    crate::nft_check::nft_check(case, &ruleset.to_dump());
    let node = test_node();
    let mut failures = Vec::new();
    for f in flows {
        let packet =
            Packet::new(f.protocol, ip(f.source), ip(f.destination), f.port).arriving_on("eth0");
        let t = match trace(&ruleset, &packet, &node) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{case}: {}: {e}", f.name));
                continue;
            }
        };
        let total: f64 = t.outcomes.iter().map(|o| o.probability).sum();
        assert!(
            (total - 1.0).abs() < 1e-9,
            "{case}: {}: probabilities sum to {total}",
            f.name
        );
        let original = std::net::SocketAddr::new(ip(f.destination), f.port);
        let (output, masq) = kube_proxy_view(&t, original, config.masquerade_mark());
        let mut expected: Vec<&str> = f.output.split(", ").collect();
        expected.sort();
        let expected = expected.join(", ");
        if output != expected || masq != f.masq {
            failures.push(format!(
                "{case}: {}: {} -> {}:{} expected {expected:?} masq {}, got {output:?} masq {masq}",
                f.name, f.source, f.destination, f.port, f.masq
            ));
        }
    }
    failures
}

fn assert_flows(failures: Vec<String>, at_least: usize, total: usize) {
    assert!(
        failures.is_empty(),
        "{} flows differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total >= at_least, "only {total} flows");
}

fn lb(ip_: &str) -> LoadBalancerIngress {
    LoadBalancerIngress {
        ip: ip(ip_),
        ip_mode: IpMode::Vip,
    }
}

fn v4() -> ProxyConfig {
    fake_config(IpFamily::Ipv4)
}

/// An endpoint on `node` (`""` for none) with these conditions.
fn endpoint(addr: &str, node: &str, conditions: Conditions) -> Endpoint {
    let e = Endpoint::ready(ip(addr)).with_conditions(conditions);
    if node.is_empty() { e } else { e.on_node(node) }
}

#[test]
#[rustfmt::skip]
fn no_endpoints_reject() {
    let mut svc =
        service("ns1", "svc1", "172.30.0.41", &[("p80", 80)]).with_type(ServiceType::LoadBalancer);
    svc.external_ips = vec![ip("192.168.99.11")];
    svc.ports[0].node_port = Some(3001);
    svc.load_balancer_ingress = vec![lb("1.2.3.4")];
    let flows = [
        flow("pod to cluster IP with no endpoints", "10.0.0.2", "172.30.0.41", 80, "REJECT", false),
        flow("external to external IP with no endpoints", EXTERNAL_CLIENT, "192.168.99.11", 80, "REJECT", false),
        flow("pod to NodePort with no endpoints", "10.0.0.2", NODE_IP, 3001, "REJECT", false),
        flow("external to NodePort with no endpoints", EXTERNAL_CLIENT, NODE_IP, 3001, "REJECT", false),
        flow("pod to LoadBalancer IP with no endpoints", "10.0.0.2", "1.2.3.4", 80, "REJECT", false),
        flow("external to LoadBalancer IP with no endpoints", EXTERNAL_CLIENT, "1.2.3.4", 80, "REJECT", false),
    ];
    assert_flows(
        run(
            "TestNoEndpointsReject",
            &state(vec![svc], vec![]),
            &v4(),
            &flows,
        ),
        6,
        flows.len(),
    );
}

#[test]
#[rustfmt::skip]
fn cluster_ip_general() {
    let svc1 = Service::cluster_ip("ns1", "svc1", ip("172.30.0.41"))
        .with_port(ServicePort::tcp("http", 80));
    let svc2 = Service::cluster_ip("ns2", "svc2", ip("172.30.0.42"))
        .with_port(ServicePort::tcp("http", 80))
        .with_port(ServicePort::tcp("https", 443))
        .with_port(ServicePort::udp("dns-udp", 53))
        .with_port(ServicePort::tcp("dns-tcp", 53))
        .with_port(ServicePort::sctp("dns-sctp", 53));
    let slice1 = slice(
        "ns1",
        "svc1",
        &[("http", 80)],
        vec![ready("10.180.0.1").on_node(TEST_NODE)],
    );
    let mut slice2 = EndpointSlice::new("ns2", "svc2", "svc2-1", IpFamily::Ipv4)
        .with_port(EndpointPort::tcp("http", 80))
        .with_port(EndpointPort::tcp("https", 8443))
        .with_port(EndpointPort::udp("dns-udp", 53))
        .with_port(EndpointPort::tcp("dns-tcp", 5353))
        .with_port(EndpointPort::sctp("dns-sctp", 53));
    slice2.endpoints = vec![
        ready("10.180.0.1").on_node(TEST_NODE),
        ready("10.180.2.1").on_node("node2"),
    ];
    let flows = [
        flow("simple clusterIP", "10.180.0.2", "172.30.0.41", 80, "10.180.0.1:80", false),
        flow("hairpin to cluster IP", "10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80", true),
        flow("clusterIP with multiple endpoints", "10.180.0.2", "172.30.0.42", 80, "10.180.0.1:80, 10.180.2.1:80", false),
        flow("clusterIP with TargetPort", "10.180.0.2", "172.30.0.42", 443, "10.180.0.1:8443, 10.180.2.1:8443", false),
        flow("clusterIP with TCP, UDP, and SCTP on same port (TCP)", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:5353, 10.180.2.1:5353", false),
        flow("clusterIP with TCP, UDP, and SCTP on same port (UDP)", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:53, 10.180.2.1:53", false).with_protocol(Protocol::Udp),
        flow("clusterIP with TCP, UDP, and SCTP on same port (SCTP)", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:53, 10.180.2.1:53", false).with_protocol(Protocol::Sctp),
        flow("TCP-only port does not match UDP traffic", "10.180.0.2", "172.30.0.42", 80, "REJECT", false).with_protocol(Protocol::Udp),
        flow("svc1 does not accept svc2's ports", "10.180.0.2", "172.30.0.41", 443, "REJECT", false),
        flow("packet to unallocated cluster ip", "10.180.0.2", "172.30.0.50", 80, "DROP", false),
    ];
    let state = state(vec![svc1, svc2], vec![slice1, slice2]);
    assert_flows(
        run("TestClusterIPGeneral", &state, &v4(), &flows),
        10,
        flows.len(),
    );
}

#[test]
#[rustfmt::skip]
fn load_balancer() {
    let mut svc =
        service("ns1", "svc1", "172.30.0.41", &[("p80", 80)]).with_type(ServiceType::LoadBalancer);
    svc.ports[0].node_port = Some(3001);
    svc.load_balancer_ingress = vec![lb("1.2.3.4"), lb("5.6.7.8")];
    svc.load_balancer_source_ranges = vec![
        "192.168.0.0/24".parse().unwrap(),
        "203.0.113.0/25".parse().unwrap(),
    ];
    let ep = "10.180.0.1:80";
    let flows = [
        flow("pod to cluster IP", "10.0.0.2", "172.30.0.41", 80, ep, false),
        flow("external to nodePort", EXTERNAL_CLIENT, NODE_IP, 3001, ep, true),
        flow("nodePort bypasses LoadBalancerSourceRanges", EXTERNAL_CLIENT_BLOCKED, NODE_IP, 3001, ep, true),
        flow("accepted external to LB1", EXTERNAL_CLIENT, "1.2.3.4", 80, ep, true),
        flow("accepted external to LB2", EXTERNAL_CLIENT, "5.6.7.8", 80, ep, true),
        flow("blocked external to LB1", EXTERNAL_CLIENT_BLOCKED, "1.2.3.4", 80, "DROP", false),
        flow("blocked external to LB2", EXTERNAL_CLIENT_BLOCKED, "5.6.7.8", 80, "DROP", false),
        flow("pod to LB1 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "1.2.3.4", 80, "DROP", false),
        flow("pod to LB2 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "5.6.7.8", 80, "DROP", false),
        flow("node to LB1 (allowed by LoadBalancerSourceRanges)", NODE_IP, "1.2.3.4", 80, ep, true),
        flow("node to LB2 (allowed by LoadBalancerSourceRanges)", NODE_IP, "5.6.7.8", 80, ep, true),
        flow("same node to LB1, SNATted to LB1 (implicitly allowed)", "1.2.3.4", "1.2.3.4", 80, ep, true),
        flow("same node to LB2, SNATted to LB2 (implicitly allowed)", "5.6.7.8", "5.6.7.8", 80, ep, true),
    ];
    let state = state(
        vec![svc],
        vec![slice(
            "ns1",
            "svc1",
            &[("p80", 80)],
            vec![ready("10.180.0.1")],
        )],
    );
    assert_flows(
        run("TestLoadBalancer", &state, &v4(), &flows),
        13,
        flows.len(),
    );
}

#[test]
#[rustfmt::skip]
fn node_ports() {
    struct Case {
        name: &'static str,
        family: IpFamily,
        nodeport_addresses: Option<&'static [&'static str]>,
        allow_alt_node_ip: bool,
    }
    let cases = [
        Case {
            name: "ipv4",
            family: IpFamily::Ipv4,
            nodeport_addresses: None,
            allow_alt_node_ip: false,
        },
        Case {
            name: "ipv4, multiple nodeport-addresses",
            family: IpFamily::Ipv4,
            nodeport_addresses: Some(&["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"]),
            allow_alt_node_ip: true,
        },
        Case {
            name: "ipv6",
            family: IpFamily::Ipv6,
            nodeport_addresses: None,
            allow_alt_node_ip: false,
        },
        Case {
            name: "ipv6, multiple nodeport-addresses",
            family: IpFamily::Ipv6,
            nodeport_addresses: Some(&[
                "192.168.0.0/24",
                "192.168.1.0/24",
                "2001:db8::/64",
                "2001:db8:1::2/128",
            ]),
            allow_alt_node_ip: true,
        },
    ];
    let mut failures = Vec::new();
    let mut total = 0;
    for c in cases {
        let v4 = c.family == IpFamily::Ipv4;
        let (svc_ip, ep1, ep2, node_ip) = if v4 {
            ("172.30.0.41", "10.180.0.1", "10.180.2.1", "192.168.0.2")
        } else {
            (
                "fd00:172:30::41",
                "fd00:10:180::1",
                "fd00:10:180::2:1",
                "2001:db8::1",
            )
        };
        let (pod, external, alt) = if v4 {
            ("10.0.0.2", EXTERNAL_CLIENT, "192.168.1.2")
        } else {
            ("fd00:10::2", "2600:5200::1", "2001:db8:1::2")
        };
        let mut config = fake_config(c.family);
        if let Some(addrs) = c.nodeport_addresses {
            config = config.with_nodeport_addresses(
                addrs
                    .iter()
                    .map(|a| NodePortAddress::Cidr(a.parse().unwrap())),
            );
        }
        let mut svc =
            service("ns1", "svc1", svc_ip, &[("p80", 80)]).with_type(ServiceType::NodePort);
        svc.ports[0].node_port = Some(3001);
        let slice = slice(
            "ns1",
            "svc1",
            &[("p80", 80)],
            vec![ready(ep1), ready(ep2).on_node(TEST_NODE)],
        );
        let join = |a: &str| std::net::SocketAddr::new(ip(a), 80).to_string();
        let output = format!("{}, {}", join(ep1), join(ep2));
        let mut flows = vec![
            flow("pod to cluster IP", pod, svc_ip, 80, &output, false),
            flow("external to nodePort", external, node_ip, 3001, &output, true),
            flow("node to nodePort", node_ip, node_ip, 3001, &output, true),
        ];
        if c.allow_alt_node_ip {
            flows.push(flow("external to nodePort on secondary IP", external, alt, 3001, &output, true));
        } else {
            flows.push(flow("secondary nodeIP ignores NodePorts", external, alt, 3001, "", false));
        }
        total += flows.len();
        failures.extend(run(
            &format!("TestNodePorts {}", c.name),
            &state(vec![svc], vec![slice]),
            &config,
            &flows,
        ));
    }
    assert_flows(failures, 16, total);
}

/// The service of TestExternalTrafficPolicyLocal/Cluster: a LoadBalancer with an
/// external IP, its endpoints one remote and one local.
fn external_policy_state(policy: TrafficPolicy) -> ClusterState {
    let mut svc =
        service("ns1", "svc1", "172.30.0.41", &[("p80", 80)]).with_type(ServiceType::LoadBalancer);
    svc.external_traffic_policy = policy;
    svc.external_ips = vec![ip("192.168.99.11")];
    svc.ports[0].node_port = Some(3001);
    svc.ports[0].target_port = Some(TargetPort::Number(80));
    if policy == TrafficPolicy::Local {
        svc.health_check_node_port = Some(30000);
    }
    svc.load_balancer_ingress = vec![lb("1.2.3.4")];
    let slice = slice(
        "ns1",
        "svc1",
        &[("p80", 80)],
        vec![ready("10.180.0.1"), ready("10.180.2.1").on_node(TEST_NODE)],
    );
    state(vec![svc], vec![slice])
}

#[test]
#[rustfmt::skip]
fn external_traffic_policy_local() {
    let both = "10.180.0.1:80, 10.180.2.1:80";
    let local = "10.180.2.1:80";
    let flows = [
        flow("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80, both, false),
        flow("pod to external IP hits both endpoints, unmasqueraded", "10.0.0.2", "192.168.99.11", 80, both, false),
        flow("external to external IP hits only local endpoint, unmasqueraded", EXTERNAL_CLIENT, "192.168.99.11", 80, local, false),
        flow("pod to LB IP hits only both endpoints, unmasqueraded", "10.0.0.2", "1.2.3.4", 80, both, false),
        flow("external to LB IP hits only local endpoint, unmasqueraded", EXTERNAL_CLIENT, "1.2.3.4", 80, local, false),
        flow("pod to NodePort hits both endpoints, unmasqueraded", "10.0.0.2", NODE_IP, 3001, both, false),
        flow("external to NodePort hits only local endpoint, unmasqueraded", EXTERNAL_CLIENT, NODE_IP, 3001, local, false),
    ];
    let state = external_policy_state(TrafficPolicy::Local);
    assert_flows(
        run("TestExternalTrafficPolicyLocal", &state, &v4(), &flows),
        7,
        flows.len(),
    );
}

#[test]
#[rustfmt::skip]
fn external_traffic_policy_cluster() {
    let both = "10.180.0.1:80, 10.180.2.1:80";
    let flows = [
        flow("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80, both, false),
        flow("pod to external IP hits both endpoints, masqueraded", "10.0.0.2", "192.168.99.11", 80, both, true),
        flow("external to external IP hits both endpoints, masqueraded", EXTERNAL_CLIENT, "192.168.99.11", 80, both, true),
        flow("pod to LB IP hits both endpoints, masqueraded", "10.0.0.2", "1.2.3.4", 80, both, true),
        flow("external to LB IP hits both endpoints, masqueraded", EXTERNAL_CLIENT, "1.2.3.4", 80, both, true),
        flow("pod to NodePort hits both endpoints, masqueraded", "10.0.0.2", NODE_IP, 3001, both, true),
        flow("external to NodePort hits both endpoints, masqueraded", EXTERNAL_CLIENT, NODE_IP, 3001, both, true),
    ];
    let state = external_policy_state(TrafficPolicy::Cluster);
    assert_flows(
        run("TestExternalTrafficPolicyCluster", &state, &v4(), &flows),
        7,
        flows.len(),
    );
}

/// svc1 at 172.30.1.1, one unnamed TCP port 80, with `endpoints` (`(ip, node)`)
/// ready; `itp` its internal traffic policy.
fn internal_policy_state(
    itp: TrafficPolicy,
    endpoints: &[(&str, &str)],
) -> (ClusterState, ClusterState) {
    let mut svc = service("ns1", "svc1", "172.30.1.1", &[("", 80)]);
    svc.internal_traffic_policy = itp;
    let eps = endpoints
        .iter()
        .map(|(a, n)| ready(a).on_node(*n))
        .collect();
    let with = state(
        vec![svc.clone()],
        vec![slice("ns1", "svc1", &[("", 80)], eps)],
    );
    (with, state(vec![svc], vec![]))
}

/// A TestInternalTrafficPolicy case: its name, the policy, the endpoints
/// (`(ip, node)`) and where a pod's packet to the cluster IP goes.
type PolicyCase = (
    &'static str,
    TrafficPolicy,
    [(&'static str, &'static str); 3],
    &'static str,
);

#[test]
#[rustfmt::skip]
fn internal_traffic_policy() {
    let cases: [PolicyCase; 4] = [
        (
            "internalTrafficPolicy is cluster",
            TrafficPolicy::Cluster,
            [
                ("10.0.1.1", TEST_NODE),
                ("10.0.1.2", "node1"),
                ("10.0.1.3", "node2"),
            ],
            "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80",
        ),
        (
            "internalTrafficPolicy is local and there is one local endpoint",
            TrafficPolicy::Local,
            [
                ("10.0.1.1", TEST_NODE),
                ("10.0.1.2", "node1"),
                ("10.0.1.3", "node2"),
            ],
            "10.0.1.1:80",
        ),
        (
            "internalTrafficPolicy is local and there are multiple local endpoints",
            TrafficPolicy::Local,
            [
                ("10.0.1.1", TEST_NODE),
                ("10.0.1.2", TEST_NODE),
                ("10.0.1.3", "node2"),
            ],
            "10.0.1.1:80, 10.0.1.2:80",
        ),
        (
            "internalTrafficPolicy is local and there are no local endpoints",
            TrafficPolicy::Local,
            [
                ("10.0.1.1", "node0"),
                ("10.0.1.2", "node1"),
                ("10.0.1.3", "node2"),
            ],
            "DROP",
        ),
    ];
    let mut failures = Vec::new();
    for (name, itp, eps, output) in cases {
        let (with, without) = internal_policy_state(itp, &eps);
        failures.extend(run(
            name,
            &with,
            &v4(),
            &[flow("pod to ClusterIP", "10.0.0.2", "172.30.1.1", 80, output, false)],
        ));
        failures.extend(run(
            name,
            &without,
            &v4(),
            &[flow("endpoints deleted", "10.0.0.2", "172.30.1.1", 80, "REJECT", false)],
        ));
    }
    assert_flows(failures, 8, 8);
}

/// The service of TestTerminatingEndpointsTrafficPolicyLocal/Cluster: a
/// LoadBalancer at 1.2.3.4 without a node port, with `endpoints`.
fn terminating_state(etp: TrafficPolicy, endpoints: Vec<Endpoint>) -> (ClusterState, ClusterState) {
    let mut svc =
        service("ns1", "svc1", "172.30.1.1", &[("", 80)]).with_type(ServiceType::LoadBalancer);
    svc.external_traffic_policy = etp;
    svc.ports[0].target_port = Some(TargetPort::Number(80));
    svc.health_check_node_port = Some(30000);
    svc.load_balancer_ingress = vec![lb("1.2.3.4")];
    let with = state(
        vec![svc.clone()],
        vec![slice("ns1", "svc1", &[("", 80)], endpoints)],
    );
    (with, state(vec![svc], vec![]))
}

const READY: Conditions = Conditions::READY;
const SERVING_TERMINATING: Conditions = Conditions::SERVING_TERMINATING;
const TERMINATING_NOT_SERVING: Conditions = Conditions {
    ready: false,
    serving: false,
    terminating: true,
};

/// Runs the four cases of a TestTerminatingEndpoints test, each then with its
/// endpoints deleted.
fn terminating_cases(test: &str, etp: TrafficPolicy, cases: Vec<(&str, Vec<Endpoint>, [Flow; 2])>) {
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, endpoints, flows) in cases {
        let (with, without) = terminating_state(etp, endpoints);
        let case = format!("{test} {name}");
        total += flows.len() + 2;
        failures.extend(run(&case, &with, &v4(), &flows));
        failures.extend(run(
            &case,
            &without,
            &v4(),
            &[
                flow(
                    "pod to clusterIP after endpoints deleted",
                    "10.0.0.2",
                    "172.30.1.1",
                    80,
                    "REJECT",
                    false,
                ),
                flow(
                    "external to LB after endpoints deleted",
                    EXTERNAL_CLIENT,
                    "1.2.3.4",
                    80,
                    "REJECT",
                    false,
                ),
            ],
        ));
    }
    assert_flows(failures, 16, total);
}

#[test]
#[rustfmt::skip]
fn terminating_endpoints_traffic_policy_local() {
    let local = TrafficPolicy::Local;
    terminating_cases(
        "TestTerminatingEndpointsTrafficPolicyLocal",
        local,
        vec![
            (
                "ready endpoints exist",
                vec![
                    endpoint("10.0.1.1", TEST_NODE, READY),
                    endpoint("10.0.1.2", TEST_NODE, READY),
                    endpoint("10.0.1.3", TEST_NODE, SERVING_TERMINATING),
                    endpoint("10.0.1.4", TEST_NODE, TERMINATING_NOT_SERVING),
                    endpoint("10.0.1.5", "node-1", READY),
                ],
                [
                    flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80", false),
                    flow("external to LB", EXTERNAL_CLIENT, "1.2.3.4", 80, "10.0.1.1:80, 10.0.1.2:80", false),
                ],
            ),
            (
                "only terminating endpoints exist",
                vec![
                    endpoint("10.0.1.2", TEST_NODE, SERVING_TERMINATING),
                    endpoint("10.0.1.3", TEST_NODE, SERVING_TERMINATING),
                    endpoint("10.0.1.4", TEST_NODE, TERMINATING_NOT_SERVING),
                    endpoint("10.0.1.5", "node-1", READY),
                ],
                [
                    flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "10.0.1.5:80", false),
                    flow("external to LB", EXTERNAL_CLIENT, "1.2.3.4", 80, "10.0.1.2:80, 10.0.1.3:80", false),
                ],
            ),
            (
                "terminating endpoints on remote node",
                vec![endpoint("10.0.1.5", "node-1", SERVING_TERMINATING)],
                [
                    flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "10.0.1.5:80", false),
                    flow("external to LB, no locally-usable endpoints", EXTERNAL_CLIENT, "1.2.3.4", 80, "DROP", false),
                ],
            ),
            (
                "no usable endpoints on any node",
                vec![
                    endpoint("10.0.1.5", TEST_NODE, TERMINATING_NOT_SERVING),
                    endpoint("10.0.1.5", "node-1", TERMINATING_NOT_SERVING),
                ],
                [
                    flow("pod to clusterIP, no usable endpoints", "10.0.0.2", "172.30.1.1", 80, "REJECT", false),
                    flow("external to LB, no usable endpoints", EXTERNAL_CLIENT, "1.2.3.4", 80, "REJECT", false),
                ],
            ),
        ],
    );
}

#[test]
#[rustfmt::skip]
fn terminating_endpoints_traffic_policy_cluster() {
    let cluster = TrafficPolicy::Cluster;
    terminating_cases(
        "TestTerminatingEndpointsTrafficPolicyCluster",
        cluster,
        vec![
            (
                "ready endpoints exist",
                vec![
                    endpoint("10.0.1.1", TEST_NODE, READY),
                    endpoint("10.0.1.2", TEST_NODE, READY),
                    endpoint("10.0.1.3", "another-node", SERVING_TERMINATING),
                    endpoint("10.0.1.4", "another-node", TERMINATING_NOT_SERVING),
                    endpoint("10.0.1.5", "another-node", READY),
                ],
                [
                    flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80", false),
                    flow("external to LB", EXTERNAL_CLIENT, "1.2.3.4", 80, "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80", true),
                ],
            ),
            (
                "only terminating endpoints exist",
                vec![
                    endpoint("10.0.1.2", TEST_NODE, SERVING_TERMINATING),
                    endpoint("10.0.1.3", TEST_NODE, SERVING_TERMINATING),
                    endpoint("10.0.1.4", "another-node", TERMINATING_NOT_SERVING),
                    endpoint("10.0.1.5", "another-node", SERVING_TERMINATING),
                ],
                [
                    flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80", false),
                    flow("external to LB", EXTERNAL_CLIENT, "1.2.3.4", 80, "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80", true),
                ],
            ),
            (
                "terminating endpoints on remote node",
                vec![endpoint("10.0.1.5", "node-1", SERVING_TERMINATING)],
                [
                    flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "10.0.1.5:80", false),
                    flow("external to LB", EXTERNAL_CLIENT, "1.2.3.4", 80, "10.0.1.5:80", true),
                ],
            ),
            (
                "no usable endpoints on any node",
                vec![
                    endpoint("10.0.1.5", TEST_NODE, TERMINATING_NOT_SERVING),
                    endpoint("10.0.1.5", "node-1", TERMINATING_NOT_SERVING),
                ],
                [
                    flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "REJECT", false),
                    flow("external to LB", EXTERNAL_CLIENT, "1.2.3.4", 80, "REJECT", false),
                ],
            ),
        ],
    );
}

/// The services of TestInternalExternalMasquerade: svc1 (plain LoadBalancer),
/// svc2 (eTP Local), svc3 (iTP Local), each with one local and one remote
/// endpoint.
fn masquerade_state() -> ClusterState {
    let lb_svc = |ns: &str, name: &str, vip: &str, np: u16, hc: u16, ingress: &str| {
        let mut s = service(ns, name, vip, &[("p80", 80)]).with_type(ServiceType::LoadBalancer);
        s.ports[0].node_port = Some(np);
        s.health_check_node_port = Some(hc);
        s.load_balancer_ingress = vec![lb(ingress)];
        s
    };
    let svc1 = lb_svc("ns1", "svc1", "172.30.0.41", 3001, 30001, "1.2.3.4");
    let mut svc2 = lb_svc("ns2", "svc2", "172.30.0.42", 3002, 30002, "5.6.7.8");
    svc2.external_traffic_policy = TrafficPolicy::Local;
    let mut svc3 = lb_svc("ns3", "svc3", "172.30.0.43", 3003, 30003, "9.10.11.12");
    svc3.internal_traffic_policy = TrafficPolicy::Local;
    let eps = |ns: &str, name: &str, i: u8| {
        slice(
            ns,
            name,
            &[("p80", 80)],
            vec![
                ready(&format!("10.180.0.{i}")).on_node(TEST_NODE),
                ready(&format!("10.180.1.{i}")).on_node("remote"),
            ],
        )
    };
    state(
        vec![svc1, svc2, svc3],
        vec![
            eps("ns1", "svc1", 1),
            eps("ns2", "svc2", 2),
            eps("ns3", "svc3", 3),
        ],
    )
}

#[test]
#[rustfmt::skip]
fn internal_external_masquerade() {
    let ext = EXTERNAL_CLIENT;
    let one = "10.180.0.1:80, 10.180.1.1:80";
    let two = "10.180.0.2:80, 10.180.1.2:80";
    let three = "10.180.0.3:80, 10.180.1.3:80";
    let base = [
        flow("pod to ClusterIP", "10.0.0.2", "172.30.0.41", 80, one, false),
        flow("pod to NodePort", "10.0.0.2", NODE_IP, 3001, one, true),
        flow("pod to LB", "10.0.0.2", "1.2.3.4", 80, one, true),
        flow("node to ClusterIP", NODE_IP, "172.30.0.41", 80, one, true),
        flow("node to NodePort", NODE_IP, NODE_IP, 3001, one, true),
        flow("node to LB", NODE_IP, "1.2.3.4", 80, one, true),
        flow("external to ClusterIP", ext, "172.30.0.41", 80, one, true),
        flow("external to NodePort", ext, NODE_IP, 3001, one, true),
        flow("external to LB", ext, "1.2.3.4", 80, one, true),
        flow("pod to ClusterIP with eTP:Local", "10.0.0.2", "172.30.0.42", 80, two, false),
        flow("pod to NodePort with eTP:Local", "10.0.0.2", NODE_IP, 3002, two, false),
        flow("pod to LB with eTP:Local", "10.0.0.2", "5.6.7.8", 80, two, false),
        flow("node to ClusterIP with eTP:Local", NODE_IP, "172.30.0.42", 80, two, true),
        // kube-proxy's case sends this one to svc1's node port.
        flow("node to NodePort with eTP:Local", NODE_IP, NODE_IP, 3001, one, true),
        flow("node to LB with eTP:Local", NODE_IP, "5.6.7.8", 80, two, true),
        flow("external to ClusterIP with eTP:Local", ext, "172.30.0.42", 80, two, true),
        flow("external to NodePort with eTP:Local", ext, NODE_IP, 3002, "10.180.0.2:80", false),
        flow("external to LB with eTP:Local", ext, "5.6.7.8", 80, "10.180.0.2:80", false),
        flow("pod to ClusterIP with iTP:Local", "10.0.0.2", "172.30.0.43", 80, "10.180.0.3:80", false),
        flow("pod to NodePort with iTP:Local", "10.0.0.2", NODE_IP, 3003, three, true),
        flow("pod to LB with iTP:Local", "10.0.0.2", "9.10.11.12", 80, three, true),
        flow("node to ClusterIP with iTP:Local", NODE_IP, "172.30.0.43", 80, "10.180.0.3:80", true),
        flow("node to NodePort with iTP:Local", NODE_IP, NODE_IP, 3003, three, true),
        flow("node to LB with iTP:Local", NODE_IP, "9.10.11.12", 80, three, true),
        flow("external to ClusterIP with iTP:Local", ext, "172.30.0.43", 80, "10.180.0.3:80", true),
        flow("external to NodePort with iTP:Local", ext, NODE_IP, 3003, three, true),
        flow("external to LB with iTP:Local", ext, "9.10.11.12", 80, three, true),
    ];
    // (case, masquerade all, local detector, overrides: name -> (output, masq))
    type Overrides = &'static [(&'static str, Option<&'static str>, Option<bool>)];
    let no_detector: Overrides = &[
        ("node to ClusterIP", None, Some(false)),
        ("node to ClusterIP with eTP:Local", None, Some(false)),
        ("node to ClusterIP with iTP:Local", None, Some(false)),
        ("external to ClusterIP", None, Some(false)),
        ("external to ClusterIP with eTP:Local", None, Some(false)),
        ("external to ClusterIP with iTP:Local", None, Some(false)),
        (
            "pod to NodePort with eTP:Local",
            Some("10.180.0.2:80"),
            None,
        ),
        ("pod to LB with eTP:Local", Some("10.180.0.2:80"), None),
    ];
    let masquerade_all: Overrides = &[
        ("pod to ClusterIP", None, Some(true)),
        ("pod to ClusterIP with eTP:Local", None, Some(true)),
        ("pod to ClusterIP with iTP:Local", None, Some(true)),
    ];
    let both: Overrides = &[
        ("pod to ClusterIP", None, Some(true)),
        ("pod to ClusterIP with eTP:Local", None, Some(true)),
        ("pod to ClusterIP with iTP:Local", None, Some(true)),
        (
            "pod to NodePort with eTP:Local",
            Some("10.180.0.2:80"),
            None,
        ),
        ("pod to LB with eTP:Local", Some("10.180.0.2:80"), None),
    ];
    let cases: [(&str, bool, bool, Overrides); 4] = [
        ("base", false, true, &[]),
        ("no LocalTrafficDetector", false, false, no_detector),
        ("masqueradeAll", true, true, masquerade_all),
        ("masqueradeAll, no LocalTrafficDetector", true, false, both),
    ];
    let state = masquerade_state();
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, all, detector, overrides) in cases {
        let mut config = v4().with_masquerade_all(all);
        if !detector {
            config = config.with_local_traffic(LocalTrafficDetector::None);
        }
        let mut flows = base.to_vec();
        let mut applied = 0;
        for f in &mut flows {
            if let Some((_, output, masq)) = overrides.iter().find(|o| o.0 == f.name) {
                applied += 1;
                if let Some(output) = output {
                    assert_ne!(
                        f.output, *output,
                        "{name}: {}: the override changes nothing",
                        f.name
                    );
                    f.output = (*output).to_owned();
                }
                if let Some(masq) = masq {
                    assert_ne!(
                        f.masq, *masq,
                        "{name}: {}: the override changes nothing",
                        f.name
                    );
                    f.masq = *masq;
                }
            }
        }
        assert_eq!(
            applied,
            overrides.len(),
            "{name}: an override names no flow"
        );
        total += flows.len();
        failures.extend(run(
            &format!("TestInternalExternalMasquerade {name}"),
            &state,
            &config,
            &flows,
        ));
    }
    assert_flows(failures, 108, total);
}
