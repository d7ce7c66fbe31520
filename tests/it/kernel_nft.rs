//! Issue 16, part 5: real TCP and UDP traffic through the nftables ruleset the
//! compiler writes, loaded with `nft -f` into the node namespace of the same lab
//! the iptables kernel tests use (a node, three pods, an outside client, veth
//! pairs). IPv4 and IPv6.

use std::collections::BTreeSet;

use svcnat::model::*;

use crate::fixtures::ip as addr;
use crate::kernel::{Lab, Plan, nft_available};

/// The lab's addresses for one family ([`Plan`]), and the cluster and config
/// the traffic runs against.
pub(crate) struct Fam {
    pub(crate) six: bool,
}

impl Fam {
    fn plan(&self) -> Plan {
        Plan { six: self.six }
    }
    pub(crate) fn pod(&self, i: u8) -> String {
        self.plan().pod(usize::from(i))
    }
    fn pod_gw(&self, i: u8) -> String {
        self.plan().pod_gw(usize::from(i))
    }
    fn node(&self) -> &'static str {
        self.plan().node()
    }
    fn client(&self) -> &'static str {
        self.plan().client()
    }
    /// Service address number `n` (1 to 99).
    pub(crate) fn vip(&self, n: u8) -> String {
        if self.six {
            format!("fd00:30::{n:x}")
        } else {
            format!("172.30.0.{n}")
        }
    }
    fn family(&self) -> IpFamily {
        if self.six {
            IpFamily::Ipv6
        } else {
            IpFamily::Ipv4
        }
    }

    pub(crate) fn config(&self) -> ProxyConfig {
        let (pods, services) = if self.six {
            ("fd00:244::/32", "fd00:30::/112")
        } else {
            ("10.244.0.0/16", "172.30.0.0/16")
        };
        ProxyConfig::default()
            .with_ip_family(self.family())
            .with_node_name("node")
            .with_node_ips([addr(self.node())])
            .with_cluster_cidrs([pods.parse().unwrap()])
            .with_service_cidrs([services.parse().unwrap()])
    }

    pub(crate) fn endpoint(&self, i: u8, node: &str) -> Endpoint {
        Endpoint::ready(addr(&self.pod(i))).on_node(node)
    }

    pub(crate) fn svc(&self, name: &str, vip: u8) -> Service {
        Service::cluster_ip("test", name, addr(&self.vip(vip)))
            .with_port(ServicePort::tcp("tcp", 80))
            .with_port(ServicePort::tcp("udp", 80).with_protocol(Protocol::Udp))
    }

    pub(crate) fn slice(&self, svc: &str, pods: &[Endpoint]) -> EndpointSlice {
        let mut s = EndpointSlice::new("test", svc, format!("{svc}-1"), self.family())
            .with_port(EndpointPort::tcp("tcp", 8080))
            .with_port(EndpointPort {
                name: "udp".into(),
                protocol: Protocol::Udp,
                port: 8080,
            });
        s.endpoints = pods.to_vec();
        s
    }

    /// A NodePort service on every pod, one without endpoints, one with session
    /// affinity, and one with `externalTrafficPolicy: Local` whose second endpoint
    /// is on another node.
    fn cluster(&self) -> ClusterState {
        let mut state = ClusterState::new();
        let mut spread = self.svc("spread", 10);
        spread.service_type = ServiceType::NodePort;
        spread.ports[0].node_port = Some(30080);
        spread.ports[1].node_port = Some(30080);
        state.upsert_service(spread);
        let all = [
            self.endpoint(1, "node"),
            self.endpoint(2, "node"),
            self.endpoint(3, "node"),
        ];
        state.upsert_slice(self.slice("spread", &all));
        state.upsert_service(self.svc("empty", 20));
        let mut sticky = self.svc("sticky", 30);
        sticky.session_affinity = SessionAffinity::ClientIp {
            timeout_seconds: 300,
        };
        state.upsert_service(sticky);
        state.upsert_slice(self.slice("sticky", &all));
        let mut local = self.svc("local", 40);
        local.service_type = ServiceType::NodePort;
        local.external_traffic_policy = TrafficPolicy::Local;
        local.ports[0].node_port = Some(30081);
        state.upsert_service(local);
        state.upsert_slice(self.slice(
            "local",
            &[self.endpoint(1, "node"), self.endpoint(2, "other-node")],
        ));
        state
    }
}

fn names(answers: &[String]) -> BTreeSet<String> {
    answers
        .iter()
        .map(|a| a.split(' ').next().unwrap().to_owned())
        .collect()
}

fn all_pods() -> BTreeSet<String> {
    BTreeSet::from(["pod1".into(), "pod2".into(), "pod3".into()])
}

fn traffic(six: bool, tag: &str) {
    if !nft_available(tag) {
        return;
    }
    let fam = Fam { six };
    let lab = Lab::new(tag, fam.family());
    let ruleset = svcnat::compile::nftables(&fam.cluster(), &fam.config()).unwrap();
    let dump = ruleset.to_dump();
    let (ok, out) = lab.node.run(&["nft", "-f", "-"], &dump);
    assert!(ok, "nft -f refused the compiled ruleset: {out}\n{dump}");
    // The client's packets to a cluster IP come back out of the interface they
    // came in on (the node's default route is the client): without this the node
    // sends an ICMP redirect, and the client ignores the REJECT's port unreachable.
    for sysctl in [
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.vcli.send_redirects=0",
    ] {
        let (ok, out) = lab.node.run(&["sysctl", "-w", sysctl], "");
        assert!(ok, "{out}");
    }

    // ClusterIP from a process on the node: every endpoint answers, TCP and UDP,
    // masqueraded (the pod sees the node's address on its own link).
    let vip = fam.vip(10);
    let tcp = lab.connect(&lab.node, "tcp", &vip, 80, 30);
    assert_eq!(names(&tcp), all_pods(), "{tcp:?}");
    for a in &tcp {
        let (name, src) = a.split_once(' ').unwrap();
        let i: u8 = name[3..].parse().unwrap();
        assert_eq!(
            src,
            fam.pod_gw(i),
            "node traffic to a cluster IP is masqueraded: {a}"
        );
    }
    let udp = lab.connect(&lab.node, "udp", &vip, 80, 30);
    assert_eq!(names(&udp), all_pods(), "{udp:?}");

    // From a pod (inside the cluster CIDR): not masqueraded, except the hairpin
    // back to itself.
    for a in &lab.connect(lab.pod(1), "tcp", &vip, 80, 30) {
        let (name, src) = a.split_once(' ').unwrap();
        if name == "pod1" {
            assert_eq!(src, fam.pod_gw(1), "hairpin is masqueraded: {a}");
        } else {
            assert_eq!(src, fam.pod(1), "pod traffic keeps its source: {a}");
        }
    }

    // NodePort from outside the node, TCP and UDP: every endpoint, masqueraded
    // (externalTrafficPolicy Cluster).
    for proto in ["tcp", "udp"] {
        let np = lab.connect(&lab.client, proto, fam.node(), 30080, 30);
        assert_eq!(names(&np), all_pods(), "{proto} {np:?}");
        for a in &np {
            let (name, src) = a.split_once(' ').unwrap();
            let i: u8 = name[3..].parse().unwrap();
            assert_eq!(src, fam.pod_gw(i), "a node port is masqueraded: {a}");
        }
    }

    // No endpoints: rejected at once, from the node and from outside.
    assert_eq!(
        lab.connect(&lab.node, "tcp", &fam.vip(20), 80, 1),
        ["REFUSED"]
    );
    assert_eq!(
        lab.connect(&lab.client, "tcp", &fam.vip(20), 80, 1),
        ["REFUSED"]
    );
    // A port the cluster IP does not serve: rejected (cluster-ips-check).
    assert_eq!(lab.connect(&lab.node, "tcp", &vip, 81, 1), ["REFUSED"]);
    // An address of the service range that no service has: dropped.
    assert_eq!(
        lab.connect(&lab.node, "tcp", &fam.vip(99), 80, 1),
        ["TIMEOUT"]
    );

    // Session affinity: one endpoint for one client.
    let sticky = lab.connect(&lab.node, "tcp", &fam.vip(30), 80, 15);
    assert_eq!(names(&sticky).len(), 1, "{sticky:?}");

    // externalTrafficPolicy Local: only this node's endpoint, the client's source
    // kept.
    let local = lab.connect(&lab.client, "tcp", fam.node(), 30081, 15);
    let want = format!("pod1 {}", fam.client());
    assert_eq!(
        local.iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([&want]),
        "{local:?}"
    );
    // Its cluster IP still reaches every endpoint (internal policy Cluster).
    let inside = lab.connect(&lab.node, "tcp", &fam.vip(40), 80, 20);
    assert_eq!(
        names(&inside),
        BTreeSet::from(["pod1".into(), "pod2".into()]),
        "{inside:?}"
    );
}

#[test]
fn nftables_traffic_ipv4() {
    traffic(false, "nft4");
}

#[test]
fn nftables_traffic_ipv6() {
    traffic(true, "nft6");
}
