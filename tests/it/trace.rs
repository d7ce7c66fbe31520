//! The tracer: snapshots of readable traces, "trace agrees with the model" over
//! random clusters and the shipped example cluster, and a cross-check against
//! what real traffic does in network namespaces.

use std::fmt::Write as _;
use std::net::SocketAddr;

use insta::assert_snapshot;
use proptest::prelude::*;
use svcnat::compile::{compile, jump_rules};
use svcnat::model::*;
use svcnat::parse::parse;
use svcnat::ruleset::{ChainName, DnatTo, Match, Rule, Ruleset, Table, TableRules, Target};
use svcnat::trace::{Node, Packet, Trace, TraceError, Verdict, trace, traceable};

use crate::fixtures::{config, filter_input, ip, verdict};
use crate::kernel::{Netns, kernel_available};
use crate::parse::{family_config, rich_state};

/// A trace as text: one block per outcome, then what was not evaluated or assumed.
fn show(t: &Trace) -> String {
    let mut s = String::new();
    let total: f64 = t.outcomes.iter().map(|o| o.probability).sum();
    writeln!(
        s,
        "{} outcome(s), probabilities sum to {total:.12}",
        t.outcomes.len()
    )
    .unwrap();
    for o in &t.outcomes {
        writeln!(
            s,
            "- p={:.10} {} -> {} masquerade={} mark={:#x}{}",
            o.probability,
            o.verdict,
            o.destination,
            o.masquerade,
            o.mark,
            o.note
                .as_ref()
                .map(|n| format!(" note: {n}"))
                .unwrap_or_default()
        )
        .unwrap();
        for r in &o.path {
            writeln!(s, "    {r}").unwrap();
        }
    }
    for u in &t.unevaluated {
        writeln!(s, "unevaluated: {u}").unwrap();
    }
    for a in &t.assumptions {
        writeln!(s, "assumed: {a}").unwrap();
    }
    s
}

fn rich(family: IpFamily) -> (Ruleset, Node) {
    let config = family_config(family);
    // The traced rules are the fixture's text, whichever way it is written.
    crate::fixtures::render(&rich_state(family), &config);
    let ruleset = traceable(
        &compile(&rich_state(family), &config).unwrap(),
        &jump_rules(&config).unwrap(),
    );
    (ruleset, Node::new(config.node_ips.iter().copied()))
}

#[test]
fn snapshot_cluster_ip_from_a_pod_with_affinity() {
    let (r, node) = rich(IpFamily::Ipv4);
    let p = Packet::tcp(ip("10.0.5.5"), ip("172.30.0.41"), 80).arriving_on("cbr0");
    assert_snapshot!(show(&trace(&r, &p, &node).unwrap()));
}

#[test]
fn snapshot_node_port_from_outside() {
    let (r, node) = rich(IpFamily::Ipv4);
    let p = Packet::new(Protocol::Udp, ip("203.0.113.9"), ip("192.168.0.2"), 30053);
    assert_snapshot!(show(&trace(&r, &p, &node).unwrap()));
}

#[test]
fn snapshot_no_endpoints_from_the_node() {
    let (r, node) = rich(IpFamily::Ipv4);
    let p = Packet::tcp(ip("192.168.0.2"), ip("172.30.0.43"), 80).from_local();
    assert_snapshot!(show(&trace(&r, &p, &node).unwrap()));
}

#[test]
fn snapshot_load_balancer_outside_source_ranges() {
    let (r, node) = rich(IpFamily::Ipv4);
    let p = Packet::tcp(ip("198.51.100.1"), ip("1.2.3.4"), 80);
    assert_snapshot!(show(&trace(&r, &p, &node).unwrap()));
}

#[test]
fn snapshot_ipv6_cluster_ip_from_outside() {
    let (r, node) = rich(IpFamily::Ipv6);
    let p = Packet::tcp(ip("2001:db8:99::9"), ip("fd00:172:30::41"), 80);
    assert_snapshot!(show(&trace(&r, &p, &node).unwrap()));
}

#[test]
fn snapshot_mixed_node_dump() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/dumps/node-mixed-v4.save"
    ))
    .unwrap();
    let r = svcnat::parse::parse(&text).unwrap();
    let node = Node::new([ip("192.168.0.10")]);
    let p = Packet::tcp(ip("172.17.0.5"), ip("10.96.0.1"), 443).arriving_on("docker0");
    assert_snapshot!(show(&trace(&r, &p, &node).unwrap()));
}

#[test]
fn loops_end_in_a_drop_with_a_reason_and_missing_chains_are_errors() {
    let a = ChainName::new("A").unwrap();
    let b = ChainName::new("B").unwrap();
    let mut nat = TableRules::new(Table::Nat);
    nat.append(&a, Rule::new().to(Target::Jump(b.clone())));
    nat.append(&b, Rule::new().to(Target::Jump(a.clone())));
    let r = traceable(
        &Ruleset {
            family: IpFamily::Ipv4,
            tables: vec![nat],
        },
        &[svcnat::compile::JumpRule {
            table: Table::Nat,
            chain: ChainName::new("PREROUTING").unwrap(),
            rule: Rule::new().to(Target::Jump(a.clone())),
        }],
    );
    let t = trace(
        &r,
        &Packet::tcp(ip("1.1.1.1"), ip("2.2.2.2"), 80),
        &Node::default(),
    )
    .unwrap();
    assert_eq!(t.outcomes.len(), 1);
    assert_eq!(t.outcomes[0].verdict, Verdict::Drop);
    assert!(
        t.outcomes[0].note.as_deref().unwrap().contains("loop"),
        "{t:?}"
    );

    let mut nat = TableRules::new(Table::Nat);
    nat.append(
        &a,
        Rule::new().to(Target::Goto(ChainName::new("MISSING").unwrap())),
    );
    let r = traceable(
        &Ruleset {
            family: IpFamily::Ipv4,
            tables: vec![nat],
        },
        &[svcnat::compile::JumpRule {
            table: Table::Nat,
            chain: ChainName::new("OUTPUT").unwrap(),
            rule: Rule::new().to(Target::Jump(a)),
        }],
    );
    let e = trace(
        &r,
        &Packet::tcp(ip("1.1.1.1"), ip("2.2.2.2"), 80).from_local(),
        &Node::default(),
    )
    .unwrap_err();
    assert!(matches!(e, TraceError::MissingChain { .. }), "{e}");
    let e = trace(
        &r,
        &Packet::tcp(ip("::1"), ip("2.2.2.2"), 80),
        &Node::default(),
    )
    .unwrap_err();
    assert!(matches!(e, TraceError::Family { .. }), "{e}");
}

/// Checks that a trace sends the packet to exactly `expected`, each once, with
/// probability 1/n (kube-proxy's ten-decimal probabilities: within 1e-9·n).
fn assert_balanced(t: &Trace, expected: &[SocketAddr], what: &str) -> Result<(), TestCaseError> {
    let total: f64 = t.outcomes.iter().map(|o| o.probability).sum();
    prop_assert!(
        (total - 1.0).abs() < 1e-9,
        "{what}: probabilities sum to {total}"
    );
    let mut got: Vec<SocketAddr> = t.outcomes.iter().map(|o| o.destination).collect();
    got.sort();
    let mut want = expected.to_vec();
    want.sort();
    prop_assert_eq!(&got, &want, "{}:\n{}", what, show(t));
    let n = expected.len() as f64;
    for o in &t.outcomes {
        prop_assert_eq!(o.verdict, Verdict::Accept, "{}", what);
        prop_assert!(
            (o.probability - 1.0 / n).abs() <= 1e-9 * n,
            "{what}: p={} for {} of {n}",
            o.probability,
            o.destination
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A pod's packet to each service port reaches exactly its usable endpoints
    /// with equal probability, or is rejected when there are none; a port
    /// nothing serves is not DNATed.
    #[test]
    fn trace_agrees_with_the_model(parts in crate::properties::cluster()) {
        let state = crate::properties::state_of(&parts);
        let config = config();
        let ruleset = traceable(&compile(&state, &config).unwrap(), &jump_rules(&config).unwrap());
        let node = Node::new(config.node_ips.iter().copied());
        for (svc, slices) in &parts {
            for port in &svc.ports {
                let expected = crate::properties::usable_endpoints(slices.iter(), &port.name, "test-node");
                let packet = Packet::new(port.protocol, ip("10.1.2.3"), svc.cluster_ips[0], port.port)
                    .arriving_on("cni0");
                let t = trace(&ruleset, &packet, &node).unwrap();
                let what = format!("{}/{} port {}", svc.namespace, svc.name, port.port);
                if expected.is_empty() {
                    prop_assert_eq!(t.outcomes.len(), 1, "{}", what);
                    prop_assert_eq!(t.outcomes[0].verdict, Verdict::Reject, "{}", what);
                } else {
                    assert_balanced(&t, &expected, &what)?;
                    for o in &t.outcomes {
                        // From inside the cluster CIDR: no masquerade.
                        prop_assert!(!o.masquerade, "{}", what);
                    }
                }
            }
            // A port nothing serves on that IP is forwarded untouched (port 1,
            // unless the service has it: the generated ports are below 2004).
            let free = if svc.ports.iter().any(|p| p.port == 1) { 65535 } else { 1 };
            let unserved = Packet::tcp(ip("10.1.2.3"), svc.cluster_ips[0], free).arriving_on("cni0");
            let t = trace(&ruleset, &unserved, &node).unwrap();
            prop_assert_eq!(t.outcomes.len(), 1);
            prop_assert_eq!(t.outcomes[0].destination, SocketAddr::new(svc.cluster_ips[0], free));
            prop_assert_eq!(t.outcomes[0].verdict, Verdict::Accept);
        }
    }
}

#[cfg(feature = "k8s")]
#[test]
fn every_service_of_the_example_cluster_traces_as_the_model_says() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/cluster.json"
    ))
    .unwrap();
    let state = crate::kube_proxy::state_from_list(&text);
    let mut checked = 0;
    for (family, node_ip, cidr, pod, outside) in [
        (
            IpFamily::Ipv4,
            "192.168.0.10",
            "10.244.0.0/16",
            "10.244.0.99",
            "203.0.113.7",
        ),
        (
            IpFamily::Ipv6,
            "fd00::10",
            "fd00:244::/48",
            "fd00:244::99",
            "2001:db8:113::7",
        ),
    ] {
        let config = ProxyConfig::default()
            .with_ip_family(family)
            .with_node_name("node-a")
            .with_node_ips([ip(node_ip), ip("127.0.0.1"), ip("::1")])
            .with_cluster_cidrs([cidr.parse().unwrap()]);
        let ruleset = traceable(
            &compile(&state, &config).unwrap(),
            &jump_rules(&config).unwrap(),
        );
        let node = Node::new(config.node_ips.iter().copied());
        for svc in state.services() {
            let Some(cluster_ip) = svc.cluster_ips.iter().copied().find(|a| family.contains(a))
            else {
                continue;
            };
            for port in &svc.ports {
                let name = format!("{} {}/{}:{}", family, svc.namespace, svc.name, port.name);
                let expected = crate::properties::usable_endpoints(
                    state
                        .slices_of(&svc.key())
                        .filter(|s| s.address_type == family),
                    &port.name,
                    "node-a",
                );
                let from_pod =
                    Packet::new(port.protocol, ip(pod), cluster_ip, port.port).arriving_on("cni0");
                let t = trace(&ruleset, &from_pod, &node).unwrap();
                if expected.is_empty() {
                    assert_eq!(t.outcomes.len(), 1, "{name}");
                    assert_eq!(
                        t.outcomes[0].verdict,
                        Verdict::Reject,
                        "{name}: {}",
                        show(&t)
                    );
                    assert_eq!(format!("{}/{}", svc.namespace, svc.name), "shop/payments");
                } else {
                    assert_balanced(&t, &expected, &name).unwrap();
                }
                if let Some(node_port) = port.node_port {
                    let outside = Packet::new(port.protocol, ip(outside), ip(node_ip), node_port);
                    let t = trace(&ruleset, &outside, &node).unwrap();
                    assert_balanced(&t, &expected, &format!("{name} node port")).unwrap();
                    assert!(
                        t.outcomes.iter().all(|o| o.masquerade),
                        "{name}: {}",
                        show(&t)
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} service ports checked");
}

// ---- Kernel cross-check -------------------------------------------------------

/// A child process killed (by its own pid) when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sh(args: &[&str]) {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a client in `ns` sees connecting to `to` (2 s timeout), in the trace's
/// terms: `peer=IP` (the source address the pod saw), `refused` or `timeout`.
fn connect(ns: &Netns, to: SocketAddr) -> String {
    let answer =
        crate::kernel::connect_from(ns, "tcp", &to.ip().to_string(), to.port(), 1).remove(0);
    match answer.as_str() {
        "REFUSED" => "refused".to_owned(),
        "TIMEOUT" => "timeout".to_owned(),
        _ => match answer.split_once(' ') {
            Some(("pod", peer)) => format!("peer={peer}"),
            _ => answer,
        },
    }
}

#[test]
fn kernel_traffic_agrees_with_the_trace_nft() {
    if kernel_available("kernel_traffic_agrees_with_the_trace_nft") {
        traffic_agrees_with_the_trace("nft");
    }
}

#[test]
fn kernel_traffic_agrees_with_the_trace_legacy() {
    if kernel_available("kernel_traffic_agrees_with_the_trace_legacy") {
        traffic_agrees_with_the_trace("legacy");
    }
}

fn traffic_agrees_with_the_trace(backend: &str) {
    // node: vp0 10.244.0.1 -> pod 10.244.0.2 (the endpoint), vq0 10.244.1.1 ->
    // pc 10.244.1.2 (a pod client), vc0 192.168.50.1 -> client 192.168.50.2 (off
    // cluster), vu0 192.168.60.1 -> up 192.168.60.2 (the node's default route).
    // The default route must not point back at the client: a forwarded packet
    // that would leave by the interface it came in on draws an ICMP redirect,
    // and the client then ignores the REJECT's port-unreachable (seen on these
    // machines: a timeout instead of "connection refused").
    let node = Netns::new(&format!("tr-node-{backend}"));
    let pod = Netns::new(&format!("tr-pod-{backend}"));
    let pc = Netns::new(&format!("tr-pc-{backend}"));
    let client = Netns::new(&format!("tr-cli-{backend}"));
    let up = Netns::new(&format!("tr-up-{backend}"));
    for (dev, addr, peer_ns, peer_addr) in [
        ("vp0", "10.244.0.1/24", &pod, "10.244.0.2/24"),
        ("vq0", "10.244.1.1/24", &pc, "10.244.1.2/24"),
        ("vc0", "192.168.50.1/24", &client, "192.168.50.2/24"),
        ("vu0", "192.168.60.1/24", &up, "192.168.60.2/24"),
    ] {
        sh(&[
            "ip",
            "-n",
            &node.name,
            "link",
            "add",
            dev,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &peer_ns.name,
        ]);
        sh(&["ip", "-n", &node.name, "addr", "add", addr, "dev", dev]);
        sh(&["ip", "-n", &node.name, "link", "set", dev, "up"]);
        sh(&[
            "ip",
            "-n",
            &peer_ns.name,
            "addr",
            "add",
            peer_addr,
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &peer_ns.name, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &peer_ns.name, "link", "set", "lo", "up"]);
        let gw = addr.split('/').next().unwrap();
        sh(&[
            "ip",
            "-n",
            &peer_ns.name,
            "route",
            "add",
            "default",
            "via",
            gw,
        ]);
    }
    sh(&["ip", "-n", &node.name, "link", "set", "lo", "up"]);
    // Locally generated traffic to service IPs needs a route before nat OUTPUT.
    sh(&[
        "ip",
        "-n",
        &node.name,
        "route",
        "add",
        "default",
        "via",
        "192.168.60.2",
    ]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &node.name,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);

    let mut state = ClusterState::new();
    state.upsert_service(
        Service::cluster_ip("ns", "web", ip("172.30.0.10"))
            .with_type(ServiceType::NodePort)
            .with_port(ServicePort::tcp("http", 80).with_node_port(30080)),
    );
    state.upsert_slice(
        EndpointSlice::new("ns", "web", "web-1", IpFamily::Ipv4)
            .with_port(EndpointPort::tcp("http", 8080))
            .with_endpoint(Endpoint::ready(ip("10.244.0.2")).on_node("node-a")),
    );
    state.upsert_service(
        Service::cluster_ip("ns", "empty", ip("172.30.0.11"))
            .with_port(ServicePort::tcp("http", 80)),
    );
    let config = ProxyConfig::default()
        .with_node_name("node-a")
        .with_node_ips([ip("192.168.50.1"), ip("127.0.0.1")])
        .with_cluster_cidrs(["10.244.0.0/16".parse().unwrap()]);
    let ruleset = traceable(
        &compile(&state, &config).unwrap(),
        &jump_rules(&config).unwrap(),
    );
    let (ok, out) = node.run(
        &[&format!("iptables-{backend}-restore")],
        &svcnat::render::to_string(&ruleset),
    );
    assert!(ok, "restore: {out}");
    let facts = Node::new(["192.168.50.1", "10.244.0.1", "10.244.1.1", "192.168.60.1"].map(ip));

    let server = Child(crate::kernel::spawn_echo_server(&pod, "pod", 8080, false));
    let ready = (0..50).any(|_| {
        let answer = crate::kernel::connect_from(&node, "tcp", "10.244.0.2", 8080, 1);
        if answer[0].starts_with("pod ") {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        false
    });
    assert!(ready, "echo server did not start");

    let cases: [(&str, &Netns, Packet); 6] = [
        (
            "off-cluster client to cluster IP",
            &client,
            Packet::tcp(ip("192.168.50.2"), ip("172.30.0.10"), 80).arriving_on("vc0"),
        ),
        (
            "off-cluster client to node port",
            &client,
            Packet::tcp(ip("192.168.50.2"), ip("192.168.50.1"), 30080).arriving_on("vc0"),
        ),
        (
            "pod to cluster IP",
            &pc,
            Packet::tcp(ip("10.244.1.2"), ip("172.30.0.10"), 80).arriving_on("vq0"),
        ),
        (
            "node process to cluster IP",
            &node,
            Packet::tcp(ip("192.168.60.1"), ip("172.30.0.10"), 80).from_local(),
        ),
        (
            "client to service without endpoints",
            &client,
            Packet::tcp(ip("192.168.50.2"), ip("172.30.0.11"), 80).arriving_on("vc0"),
        ),
        (
            "node process to service without endpoints",
            &node,
            Packet::tcp(ip("192.168.60.1"), ip("172.30.0.11"), 80).from_local(),
        ),
    ];
    for (what, ns, packet) in cases {
        let t = trace(&ruleset, &packet, &facts).unwrap();
        assert_eq!(t.outcomes.len(), 1, "{what}: {}", show(&t));
        let o = &t.outcomes[0];
        let expected = match o.verdict {
            Verdict::Reject => "refused".to_owned(),
            Verdict::Accept => {
                assert_eq!(o.destination, "10.244.0.2:8080".parse().unwrap(), "{what}");
                // Masquerade: the pod sees the node's address on its link.
                let seen = if o.masquerade {
                    ip("10.244.0.1")
                } else {
                    packet.source
                };
                format!("peer={seen}")
            }
            Verdict::Drop => "timeout".to_owned(),
            other => panic!("{what}: verdict {other} has no kernel check yet"),
        };
        let got = connect(
            ns,
            SocketAddr::new(packet.destination, packet.destination_port),
        );
        assert_eq!(
            got,
            expected,
            "{what}: the kernel disagrees with the trace:\n{}",
            show(&t)
        );
    }
    drop(server);
}

#[test]
fn unknown_matches_are_reported_not_guessed() {
    let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:X - [0:0]\n\
        -A PREROUTING -m set --match-set allowed src -j X\n\
        -A PREROUTING -m limit --limit 1/s -j DNAT --to-destination 10.0.0.9:80\n\
        -A PREROUTING -p tcp -m tcp --dport 80 -j LOG --log-prefix \"seen \"\n\
        -A PREROUTING -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:8080\n\
        -A X -j DNAT --to-destination 10.0.0.2:80\nCOMMIT\n";
    let r = svcnat::parse::parse(text).unwrap();
    let t = trace(
        &r,
        &Packet::tcp(ip("10.1.1.1"), ip("10.9.9.9"), 80),
        &Node::default(),
    )
    .unwrap();
    assert_eq!(t.outcomes.len(), 1);
    assert_eq!(
        t.outcomes[0].destination,
        "10.0.0.1:8080".parse::<SocketAddr>().unwrap()
    );
    let what: Vec<String> = t.unevaluated.iter().map(|u| u.to_string()).collect();
    assert_eq!(
        what,
        [
            "nat/PREROUTING:1: -m set --match-set allowed src (not evaluated: the rule is taken as not matching)",
            "nat/PREROUTING:2: -m limit --limit 1/s (not evaluated: the rule is taken as not matching)",
            "nat/PREROUTING:3: -j LOG --log-prefix \"seen \" (target not evaluated: the packet continues)",
        ]
    );
}

/// A dump whose chains `C0` … `C{n-1}` each enter the next twice (by `-j`,
/// with `how` in front), the last one ending in `last`; `INPUT` or
/// `PREROUTING` enters `C0`.
fn doubled(table: &str, n: usize, how: &str, last: &str) -> Ruleset {
    let hook = if table == "nat" {
        "PREROUTING"
    } else {
        "INPUT"
    };
    let mut dump = format!("*{table}\n:{hook} ACCEPT [0:0]\n");
    for i in 0..n {
        dump.push_str(&format!(":C{i} - [0:0]\n"));
    }
    dump.push_str(&format!("-A {hook} -j C0\n"));
    for i in 0..n - 1 {
        for _ in 0..2 {
            dump.push_str(&format!("-A C{i} {how}-j C{}\n", i + 1));
        }
    }
    dump.push_str(&format!("-A C{} {last}\nCOMMIT\n", n - 1));
    svcnat::parse::parse(&dump).unwrap()
}

// Each chain entering the next twice makes a path of 2^n rules, which the
// tracer used to walk rule by rule (24 chains: 13 s and 3.9 GB). Memoised, each
// chain is walked once; the path is cut and says how long it is.
#[test]
fn a_deep_shared_chain_graph_is_walked_once_per_chain() {
    for n in [40usize, 200] {
        let r = doubled("filter", n, "", "-m comment --comment last");
        let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 22);
        let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
        assert_eq!(t.outcomes.len(), 1, "{n}");
        let o = &t.outcomes[0];
        assert_eq!(o.verdict, Verdict::Accept);
        assert_eq!(o.probability, 1.0);
        assert_eq!(o.ways, 1);
        // INPUT:1, then C0 … C{n-2} twice each: 2^n - 2 rules, and the last
        // chain's rule 2^(n-1) times.
        let expected = 1u64
            .checked_shl(n as u32)
            .map(|all| all - 2 + all / 2 + 1)
            .unwrap_or(u64::MAX);
        assert_eq!(o.path_len, expected, "{n}");
        assert_eq!(o.path.len(), svcnat::trace::MAX_PATH);
        let first: Vec<String> = o.path[..3].iter().map(|r| r.short()).collect();
        assert_eq!(first, ["INPUT:1", "C0:1", "C1:1"]);
        // Two rules per chain, looked at once each, and once more for a rule
        // entering a chain not walked yet (the old walk: 2^n).
        assert!(
            t.rules_evaluated <= 4 * n as u64,
            "{n}: {}",
            t.rules_evaluated
        );
    }
}

// The same graph with each jump taken at random forks 4^n ways; ways that end
// the same are one outcome, with their chances added.
#[test]
fn a_deep_random_shared_chain_graph_merges_its_ways() {
    let how = "-m statistic --mode random --probability 0.50000000000 ";
    for n in [40usize, 200] {
        let r = doubled("nat", n, how, "-p tcp -j DNAT --to-destination 10.0.0.9:80");
        let p = Packet::tcp(ip("10.1.2.3"), ip("172.30.0.1"), 80);
        let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
        let dests: Vec<String> = t
            .outcomes
            .iter()
            .map(|o| o.destination.to_string())
            .collect();
        assert_eq!(dests, ["10.0.0.9:80", "172.30.0.1:80"], "{n}");
        let total: f64 = t.outcomes.iter().map(|o| o.probability).sum();
        assert!((total - 1.0).abs() < 1e-9, "{n}: {total}");
        assert!(t.outcomes.iter().all(|o| o.verdict == Verdict::Accept));
        assert!(t.outcomes.iter().all(|o| o.ways > 1 << 20), "{n}");
        // The DNAT ends the hook; the fall-through keeps going: each chain
        // is walked for one packet state.
        assert!(
            t.rules_evaluated <= 4 * n as u64,
            "{n}: {}",
            t.rules_evaluated
        );
    }
}

// Two random ways to the same endpoint are one outcome, with both chances.
#[test]
fn ways_that_end_the_same_are_one_outcome() {
    let dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:SEP - [0:0]\n\
        -A PREROUTING -m statistic --mode random --probability 0.25000000000 -j SEP\n\
        -A PREROUTING -j SEP\n\
        -A SEP -p tcp -j DNAT --to-destination 10.0.0.9:80\nCOMMIT\n";
    let r = svcnat::parse::parse(dump).unwrap();
    let p = Packet::tcp(ip("10.1.2.3"), ip("172.30.0.1"), 80);
    let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
    assert_eq!(t.outcomes.len(), 1);
    let o = &t.outcomes[0];
    assert_eq!(o.destination.to_string(), "10.0.0.9:80");
    assert_eq!((o.probability, o.ways, o.path_len), (1.0, 2, 2));
    let path: Vec<String> = o.path.iter().map(|r| r.short()).collect();
    assert_eq!(path, ["PREROUTING:1", "SEP:1"]);
}

// ---- Dumps a real node holds: comments, DNAT forms, loopback, long chains. ----

// iptables-save escapes `'` (and `"`, `\`) inside a quoted comment; ufw writes
// comments like 'dapp_OpenSSH'. A comment never affects matching.
#[test]
fn a_rule_with_an_escaped_quote_in_its_comment_still_matches() {
    let text = "*filter\n:INPUT DROP [0:0]\n\
        -A INPUT -p tcp -m tcp --dport 22 -m comment --comment \"\\'dapp_OpenSSH\\'\" -j ACCEPT\n\
        -A INPUT -p tcp -m tcp --dport 80 -m comment --comment \"a \\\"b\\\" c\" -j ACCEPT\n\
        COMMIT\n";
    let r = parse(text).unwrap();
    let node = Node::new([ip("192.168.0.2")]);
    for port in [22, 80] {
        let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), port);
        let t = trace(&r, &p, &node).unwrap();
        assert_eq!(t.outcomes.len(), 1);
        assert_eq!(t.outcomes[0].verdict, Verdict::Accept, "port {port}: {t:?}");
    }
}

// `--to-destination IP` without a port is what iptables-save prints for a DNAT
// that keeps the port (Docker, CNI portmap, hand-written rules).
#[test]
fn a_dnat_without_a_port_keeps_the_packets_port() {
    let text = "*nat\n:PREROUTING ACCEPT [0:0]\n\
        -A PREROUTING -d 192.168.0.2/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.9\n\
        -A PREROUTING -d 192.168.0.2/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.7:8080\n\
        COMMIT\n";
    let r = parse(text).unwrap();
    let rule = &r.chain(Table::Nat, "PREROUTING").unwrap().rules[0];
    assert!(!matches!(rule.target, Some(Target::Other(_))), "{rule:?}");
    let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 80);
    let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
    assert_eq!(t.outcomes.len(), 1);
    assert_eq!(
        t.outcomes[0].destination,
        "10.0.0.9:80".parse().unwrap(),
        "{t:?}"
    );
}

// A packet a local process sends to the node itself comes back in on `lo`;
// `-A INPUT -i lo -j ACCEPT` is the first rule of nearly every host firewall.
#[test]
fn local_traffic_to_the_node_enters_filter_input_on_lo() {
    let text = "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        -A INPUT -i lo -j ACCEPT\nCOMMIT\n";
    let r = parse(text).unwrap();
    let node = Node::new([ip("192.168.0.2")]);
    for dst in ["127.0.0.1", "192.168.0.2"] {
        let p = Packet::tcp(ip("127.0.0.1"), ip(dst), 8080).from_local();
        let t = trace(&r, &p, &node).unwrap();
        assert_eq!(t.outcomes.len(), 1);
        assert_eq!(t.outcomes[0].verdict, Verdict::Accept, "{dst}: {t:?}");
    }
}

// `-o lo` holds for local traffic to the node on its way out.
#[test]
fn local_traffic_to_the_node_leaves_by_lo() {
    let text = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT DROP [0:0]\n\
        -A OUTPUT -o lo -j ACCEPT\nCOMMIT\n";
    let r = parse(text).unwrap();
    let local = Packet::tcp(ip("127.0.0.1"), ip("192.168.0.2"), 8080).from_local();
    assert_eq!(verdict(&r, &local), Verdict::Accept);
    // To another host the output interface is unknown: not evaluated, no match.
    let away = Packet::tcp(ip("192.168.0.2"), ip("8.8.8.8"), 53).from_local();
    let t = trace(&r, &away, &Node::new([ip("192.168.0.2")])).unwrap();
    assert_eq!(t.outcomes[0].verdict, Verdict::Drop);
    assert_eq!(t.unevaluated.len(), 1, "{t:?}");
    // Given, the output interface is used.
    let t = trace(&r, &away.leaving_by("lo"), &Node::new([ip("192.168.0.2")])).unwrap();
    assert_eq!(t.outcomes[0].verdict, Verdict::Accept);
    // Packets arriving from outside do not come in on lo.
    let text = filter_input("-A INPUT -i lo -j ACCEPT\n");
    let r = parse(&text).unwrap();
    let outside = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 22);
    assert_eq!(verdict(&r, &outside), Verdict::Drop);
}

// MASQUERADE with an option other than --random-fully is still a MASQUERADE.
#[test]
fn masquerade_with_options_still_masquerades() {
    for opts in ["--random", "--to-ports 1024-65535"] {
        let text = format!(
            "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.244.0.0/16 -j MASQUERADE {opts}\n\
             -A POSTROUTING -s 10.244.0.0/16 -j ACCEPT\nCOMMIT\n"
        );
        let r = parse(&text).unwrap();
        let p = Packet::tcp(ip("10.244.1.5"), ip("8.8.8.8"), 53).arriving_on("cni0");
        let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
        assert!(t.outcomes[0].masquerade, "{opts}: {t:?}");
    }
}

// Many matching rules that let the packet go on: the walk must not overflow the
// stack (today: one stack frame pair per matched rule).
#[test]
fn a_long_chain_of_matching_rules_does_not_overflow_the_stack() {
    let mut text = String::from("*filter\n:INPUT ACCEPT [0:0]\n");
    for _ in 0..50_000 {
        text.push_str("-A INPUT -j MARK --or-mark 0x1\n");
    }
    text.push_str("COMMIT\n");
    let r = parse(&text).unwrap();
    let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 80);
    // Run on an 8 MiB stack, like a program's main thread.
    let t = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(t.outcomes.len(), 1);
}

// DNAT/SNAT/REDIRECT that the IR does not model end the nat hook, flagged.
#[test]
fn nat_targets_not_understood_end_the_hook_unevaluated() {
    for target in [
        "DNAT --to-destination 10.0.0.9-10.0.0.10",
        "DNAT --to-destination 10.0.0.9:80-90",
        "DNAT --to-destination 10.0.0.9:80 --random",
        "DNAT --to-destination 10.0.0.9:80 --persistent",
        "REDIRECT --to-ports 8080",
    ] {
        let text = format!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n\
             -A PREROUTING -p tcp -m tcp --dport 80 -j {target}\n\
             -A PREROUTING -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:8080\nCOMMIT\n"
        );
        let r = parse(&text).unwrap();
        let rule = &r.chain(Table::Nat, "PREROUTING").unwrap().rules[0];
        assert!(matches!(rule.target, Some(Target::Other(_))), "{target}");
        assert_eq!(
            rule.to_string(),
            format!("-p tcp -m tcp --dport 80 -j {target}")
        );
        let p = Packet::tcp(ip("10.1.2.3"), ip("10.9.9.9"), 80);
        let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
        assert_eq!(t.outcomes.len(), 1, "{target}");
        let o = &t.outcomes[0];
        assert!(o.nat_unevaluated, "{target}: {t:?}");
        assert!(
            o.note
                .as_deref()
                .is_some_and(|n| n.contains("PREROUTING:1")),
            "{o:?}"
        );
        // The later DNAT is not applied.
        assert_eq!(o.destination, "10.9.9.9:80".parse().unwrap(), "{target}");
        assert_eq!(o.path.len(), 1, "{target}: {o:?}");
        assert_eq!(t.unevaluated.len(), 1, "{target}");
        assert!(t.unevaluated[0].taken_as.contains("nat hook ends"), "{t:?}");
    }
    // IPv6 without a port, bracketed or not.
    for to in ["fd00::9", "[fd00::9]"] {
        let text = format!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d fd00::1/128 -j DNAT --to-destination {to}\nCOMMIT\n"
        );
        let r = parse(&text).unwrap();
        let rule = &r.chain(Table::Nat, "PREROUTING").unwrap().rules[0];
        assert_eq!(
            rule.target,
            Some(Target::Dnat(DnatTo::address(ip("fd00::9"))))
        );
        assert_eq!(parse(&svcnat::render::to_string(&r)).unwrap(), r);
    }
}

// A zero probability loads, prints back, and its branch is never taken.
#[test]
fn a_zero_probability_branch_is_never_taken() {
    let text = "*nat\n:PREROUTING ACCEPT [0:0]\n\
        -A PREROUTING -m statistic --mode random --probability 0.00000000000 -j DNAT --to-destination 10.0.0.9:80\n\
        -A PREROUTING -j DNAT --to-destination 10.0.0.7:80\nCOMMIT\n";
    let r = parse(text).unwrap();
    assert_eq!(parse(&svcnat::render::to_string(&r)).unwrap(), r);
    assert!(svcnat::render::to_string(&r).contains("--probability 0.0000000000 "));
    let p = Packet::tcp(ip("10.1.2.3"), ip("10.9.9.9"), 80);
    let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
    assert_eq!(t.outcomes.len(), 1);
    assert_eq!(t.outcomes[0].destination, "10.0.0.7:80".parse().unwrap());
    assert!(svcnat::ruleset::Probability::new(-0.1).is_err());
    assert!(svcnat::ruleset::Probability::new(f64::NAN).is_err());
    assert!(svcnat::ruleset::Probability::one_in(0).is_err());
}

// Session affinity is listed as not evaluated, not only as an assumption.
#[test]
fn session_affinity_checks_are_listed_as_not_evaluated() {
    let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SEP-A - [0:0]\n\
        -A PREROUTING -m recent --name KUBE-SEP-A --rcheck --seconds 10800 --reap -j KUBE-SEP-A\n\
        -A KUBE-SEP-A -j DNAT --to-destination 10.0.0.7:80\nCOMMIT\n";
    let r = parse(text).unwrap();
    let p = Packet::tcp(ip("10.1.2.3"), ip("10.9.9.9"), 80);
    let t = trace(&r, &p, &Node::default()).unwrap();
    assert_eq!(t.affinity.len(), 1, "{t:?}");
    assert!(t.affinity[0].taken_as.contains("no affinity"), "{t:?}");
    assert_eq!(
        t.assumptions
            .iter()
            .filter(|a| a.contains("--rcheck"))
            .count(),
        1
    );
    assert_eq!(t.outcomes[0].destination, "10.9.9.9:80".parse().unwrap());
}

// A match the tracer cannot decide is reported only if no other match of the
// rule already rules it out.
#[test]
fn unknown_matches_are_reported_only_when_they_decide() {
    let text = filter_input(
        "-A INPUT -m set --match-set allowed src -p udp -j ACCEPT\n\
         -A INPUT -m limit --limit 1/s -p tcp -j ACCEPT\n",
    );
    let r = parse(&text).unwrap();
    let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 22);
    let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
    let at: Vec<String> = t.unevaluated.iter().map(|u| u.at.short()).collect();
    assert_eq!(at, ["INPUT:2"], "{t:?}");
}

// `-m state --state` is conntrack's ctstate under its older name.
#[test]
fn the_state_match_is_evaluated_as_ctstate() {
    let text = filter_input(
        "-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT\n\
         -A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT\n",
    );
    let r = parse(&text).unwrap();
    let rules = &r.chain(Table::Filter, "INPUT").unwrap().rules;
    assert!(
        matches!(rules[0].matches()[0], Match::State(_)),
        "{:?}",
        rules[0]
    );
    assert_eq!(parse(&svcnat::render::to_string(&r)).unwrap(), r);
    let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 22);
    let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
    assert_eq!(t.outcomes[0].verdict, Verdict::Accept);
    assert_eq!(t.outcomes[0].path[0].short(), "INPUT:2");
    assert!(t.unevaluated.is_empty(), "{t:?}");
    assert_eq!(
        verdict(&r, &Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 23)),
        Verdict::Drop
    );
}

// Gotos and returns still unwind correctly with the iterative walk.
#[test]
fn a_return_after_a_goto_goes_back_to_the_callers_caller() {
    let text = "*filter\n:INPUT DROP [0:0]\n:A - [0:0]\n:B - [0:0]\n:C - [0:0]\n\
        -A INPUT -j A\n-A INPUT -j ACCEPT\n\
        -A A -g B\n-A A -j DROP\n\
        -A B -j C\n-A B -j RETURN\n-A B -j DROP\n\
        -A C -m mark --mark 0x0 -j RETURN\n-A C -j DROP\nCOMMIT\n";
    let r = parse(text).unwrap();
    let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 22);
    let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
    assert_eq!(t.outcomes.len(), 1);
    let path: Vec<String> = t.outcomes[0].path.iter().map(|r| r.short()).collect();
    assert_eq!(path, ["INPUT:1", "A:1", "B:1", "C:1", "B:2", "INPUT:2"]);
    assert_eq!(t.outcomes[0].verdict, Verdict::Accept);
}

// A new connection's first packet is not a later fragment.
#[test]
fn a_first_packet_is_never_a_later_fragment() {
    let r = parse(&filter_input(
        "-A INPUT -f -j ACCEPT\n-A INPUT ! -f -p tcp -j REJECT\n",
    ))
    .unwrap();
    let rules = &r.chain(Table::Filter, "INPUT").unwrap().rules;
    assert_eq!(rules[0].matches(), [Match::Fragment { negated: false }]);
    assert_eq!(rules[1].to_string(), "! -f -p tcp -j REJECT");
    assert_eq!(parse(&svcnat::render::to_string(&r)).unwrap(), r);
    let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 22);
    assert_eq!(verdict(&r, &p), Verdict::Reject);
}

/// The trace example on dumps with the shapes above (the examples need `k8s`).
#[cfg(feature = "k8s")]
mod example {
    use crate::errors::example_cli::run_example;

    fn run(dump: &str, extra: &[&str]) -> (i32, String, String) {
        let mut args = vec![
            "--node-ip",
            "192.168.0.2",
            "--save",
            "-",
            "--src",
            "10.1.2.3",
            "--dst",
            "192.168.0.2",
            "--proto",
            "tcp",
        ];
        args.extend(extra);
        run_example("trace", &args, dump)
    }

    // The debug-built example used to abort on this dump (stack overflow).
    #[test]
    fn a_dump_with_many_comment_rules_traces() {
        let mut dump = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n");
        for n in 0..1500 {
            dump.push_str(&format!("-A INPUT -m comment --comment \"count {n}\"\n"));
        }
        dump.push_str("COMMIT\n");
        let (code, out, err) = run(&dump, &["--dport", "22", "--json"]);
        assert_eq!(code, 0, "{err}");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["outcomes"][0]["verdict"], "accept");
        assert_eq!(doc["outcomes"][0]["path"].as_array().unwrap().len(), 1500);
    }

    #[test]
    fn port_zero_is_refused_and_out_is_used() {
        let dump = "*filter\n:OUTPUT DROP [0:0]\n-A OUTPUT -o eth1 -j ACCEPT\nCOMMIT\n";
        let (code, out, err) = run(dump, &["--dport", "0"]);
        assert_eq!(
            (code, out.as_str(), err.lines().count()),
            (2, "", 1),
            "{err}"
        );
        let args = ["--dport", "22", "--from", "local", "--json"];
        let (code, out, _) = run(dump, &args);
        assert_eq!(code, 0);
        assert!(out.contains("\"verdict\":\"drop\""), "{out}");
        let (code, out, _) = run(dump, &[&args[..], &["--out", "eth1"]].concat());
        assert_eq!(code, 0);
        assert!(out.contains("\"verdict\":\"accept\""), "{out}");
    }

    /// `contents` in a file of its own, for `--save FILE`.
    fn save_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("svcnat-trace-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn run_file(path: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
        let mut args = vec![
            "--node-ip",
            "192.168.0.2",
            "--save",
            path.to_str().unwrap(),
            "--src",
            "10.1.2.3",
            "--dst",
            "192.168.0.2",
            "--proto",
            "tcp",
            "--dport",
            "22",
        ];
        args.extend(extra);
        run_example("trace", &args, "")
    }

    // A file with no table is not a dump: one line naming the file, exit 2.
    #[test]
    fn a_save_file_without_a_table_is_refused() {
        for (name, contents) in [("empty", ""), ("comments", "# iptables-save\n\n")] {
            let path = save_file(name, contents.as_bytes());
            let (code, out, err) = run_file(&path, &["--json"]);
            let expected = format!(
                "trace: {}: no table (no *filter, *nat, … line): not an iptables-save dump\n",
                path.display()
            );
            assert_eq!(
                (code, out.as_str(), err.as_str()),
                (2, "", expected.as_str())
            );
            std::fs::remove_file(path).unwrap();
        }
        // Text that is not a dump fails to parse, on one line too.
        let path = save_file("text", b"hello world\n-A INPUT -j ACCEPT\n");
        let (code, out, err) = run_file(&path, &[]);
        let expected = format!(
            "trace: {}: line 1, column 1: not inside a table (missing *filter, *nat, …), \
             in \"hello world\"\n",
            path.display()
        );
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (2, "", expected.as_str())
        );
        std::fs::remove_file(path).unwrap();
    }

    // A comment that is not UTF-8 (iptables stores it as given) used to refuse
    // the whole dump (exit 2).
    #[test]
    fn a_dump_with_non_utf8_bytes_traces() {
        let mut dump =
            b"*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment \"caf".to_vec();
        dump.extend([0xe9, b'"']);
        dump.extend(b" -j DROP\nCOMMIT\n");
        let path = save_file("latin1", &dump);
        let (code, out, err) = run_file(&path, &["--json"]);
        assert_eq!(code, 0, "{err}");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["outcomes"][0]["verdict"], "drop");
        assert_eq!(doc["outcomes"][0]["path"][0], "INPUT:1");
        std::fs::remove_file(path).unwrap();
    }

    // `--json` lists the assumptions, as the table's `assumed:` lines, after
    // the keys it had.
    #[test]
    fn json_lists_what_was_assumed() {
        let dump = "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n";
        let (code, out, err) = run(dump, &["--dport", "22", "--json"]);
        assert_eq!(code, 0, "{err}");
        let assumed = [
            "nat INPUT is not in the ruleset: taken as empty, policy ACCEPT",
            "nat PREROUTING is not in the ruleset: taken as empty, policy ACCEPT",
        ];
        let tail = format!(
            "],\"unevaluated\":[],\"assumed\":{}}}\n",
            serde_json::to_string(&assumed).unwrap()
        );
        assert!(out.ends_with(&tail), "{out}");
        let (code, table, _) = run(dump, &["--dport", "22"]);
        assert_eq!(code, 0);
        let lines: Vec<&str> = table
            .lines()
            .filter_map(|l| l.strip_prefix("assumed: "))
            .collect();
        assert_eq!(lines, assumed);
    }

    // `--json` prints the session-affinity checks under `unevaluated`.
    #[test]
    fn affinity_is_printed_as_unevaluated() {
        let dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SEP-A - [0:0]\n\
            -A PREROUTING -m recent --name KUBE-SEP-A --rcheck --seconds 10800 --reap -j KUBE-SEP-A\n\
            -A KUBE-SEP-A -j DNAT --to-destination 10.0.0.7:80\nCOMMIT\n";
        let (code, out, err) = run(dump, &["--dport", "80", "--json"]);
        assert_eq!(code, 0, "{err}");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        let unevaluated = doc["unevaluated"].as_array().unwrap();
        assert_eq!(unevaluated.len(), 1, "{out}");
        assert!(
            unevaluated[0].as_str().unwrap().contains("--rcheck"),
            "{out}"
        );
        assert!(
            unevaluated[0].as_str().unwrap().contains("no affinity"),
            "{out}"
        );
    }
}

// A chain that forks n times at random, setting a mark bit on each matching
// side, then jumps to a chain that drops UDP: 2^n distinct packet states reach
// the jump, each entering the callee with its own mark. The tracer used to
// walk the callee for one state, then look at every state before the jump
// again: (2^n)^2 / 2 evaluations (n = 14: more than `MAX_EVALUATIONS`, where
// the kernel accepts the dump and the walk is 3 * 2^n).
#[test]
fn many_states_entering_a_chain_are_walked_in_linear_work() {
    for n in [10u32, 14, 16] {
        let mut dump = String::from("*filter\n:INPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n");
        dump.push_str("-A INPUT -j A\n");
        for i in 0..n {
            let bit = 1u32 << i;
            dump.push_str(&format!(
                "-A A -m statistic --mode random --probability 0.50000000000 \
                 -j MARK --set-xmark {bit:#x}/{bit:#x}\n"
            ));
        }
        dump.push_str("-A A -j B\n-A B -p udp -j DROP\nCOMMIT\n");
        let r = svcnat::parse::parse(&dump).unwrap();
        let p = Packet::new(Protocol::Udp, ip("10.1.2.3"), ip("192.168.0.2"), 53);
        let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
        let states = 1u64 << n;
        assert_eq!(t.outcomes.len() as u64, states, "{n}");
        let mut marks: Vec<u32> = t.outcomes.iter().map(|o| o.mark).collect();
        marks.sort_unstable();
        assert!(marks.iter().copied().eq(0..1 << n), "{n}");
        for o in &t.outcomes {
            assert_eq!(o.verdict, Verdict::Drop, "{n}");
            assert_eq!(o.probability, 1.0 / states as f64, "{n}");
            assert_eq!(o.ways, 1, "{n}");
            // INPUT:1, A's jump, B:1, and the MARK rules that matched.
            assert_eq!(o.path_len, 3 + u64::from(o.mark.count_ones()), "{n}");
        }
        let total: f64 = t.outcomes.iter().map(|o| o.probability).sum();
        assert!((total - 1.0).abs() < 1e-9, "{n}: {total}");
        // Rule i of A is looked at for its 2^i states, A's jump and B's rule
        // for 2^n each: 3 * 2^n, within rules times states (n + 3 rules).
        assert!(
            t.rules_evaluated <= 4 * states,
            "{n}: {}",
            t.rules_evaluated
        );
    }
}
