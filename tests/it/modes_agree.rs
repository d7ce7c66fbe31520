//! Issue 16 part 6: the iptables and the nftables rulesets of one cluster agree.
//!
//! For random clusters and configs (the generators of [`crate::properties`],
//! plus service CIDRs, localhost node ports on or off, the INVALID drop on or
//! off, node port addresses, and the bridge detector of pods), the same state
//! is compiled both ways, `compile::compile` (traced with `trace::traceable`
//! and `compile::jump_rules`) and `compile::nftables` (traced with
//! `trace::nft`). For every service port of the proxy's family,
//! new connections are traced in both: to its cluster IP, its external IPs,
//! its load-balancer IPs and its node port on the node's address; from a pod
//! (inside the cluster CIDR, arriving on `veth9`), from an endpoint of the
//! service (hairpin), from the node itself, and from outside, inside each of
//! the service's source ranges and outside them; with the port's protocol.
//!
//! Each flow must end the same way in both modes: the same set of
//! [`End`]s (verdict, final destination, masquerade, and the mark of an
//! accepted packet; a dropped or rejected packet's mark is never seen), each
//! with the same probability within 1e-9. Both tracers take session affinity
//! as "no affinity yet", and report that they did for the same flows; neither
//! may leave a match or target unevaluated.
//!
//! ## Where kube-proxy's two modes differ
//!
//! The rulesets follow kube-proxy's `pkg/proxy/iptables/proxier.go` and
//! `pkg/proxy/nftables/proxier.go` (kubernetes commit
//! 531be81208e2274ef42e72525a26610a9622bcdf), and where those differ, so do the
//! flows. Each difference is an [`Exception`] that says what **each** mode does
//! with the flow, so that a change on either side fails the property:
//!
//! 1. **A cluster IP on a port it does not serve** (probed on port 65000):
//!    nftables rejects it in `cluster-ips-check` (`setupNFTables`: "Reject
//!    traffic to invalid ports of ClusterIPs", jumped to from `filter-forward`
//!    and `filter-output` in `nftablesJumpChains`); iptables has no such rule and
//!    lets it through untouched.
//! 2. **An address of a service CIDR that no service has**: nftables drops it
//!    in `cluster-ips-check` ("Drop traffic to unallocated ClusterIPs", written
//!    only when `serviceCIDRs` is not empty); iptables lets it through. Without
//!    a service CIDR of the family, both let it through.
//! 3. **A node port on an address nftables does not serve node ports on**
//!    (loopback, 127.0.0.1 or `::1` from the node itself; or the node's
//!    address when `--nodeport-addresses` leaves it out): nftables never
//!    touches it (`noLocalhost` in the `services` and
//!    `nodeport-endpoints-check` rules, loopback left out of `nodeport-ips`,
//!    and both rules limited to `@nodeport-ips` when the addresses are
//!    restricted). iptables captures loopback on IPv4 when localhost node
//!    ports are on and loopback is among the node port addresses
//!    (`NewProxier`; the last `KUBE-SERVICES` rule, `! -d 127.0.0.0/8` when
//!    `localhostNodePorts` is off, `! -d ::1/128` on IPv6), just as the node's
//!    own address; and, captured or not, its no-endpoints rule for the node
//!    port (`-m addrtype --dst-type LOCAL` in `KUBE-EXTERNAL-SERVICES`, whatever
//!    the node port addresses) rejects or drops it on every local address.
//! 4. **Health-check node ports**: iptables accepts them with a rule of its
//!    own (filter `KUBE-NODEPORTS`, "Capture healthCheckNodePorts", jumped to
//!    from `INPUT`); nftables writes nothing for them. Both end the same way
//!    (accepted, untouched), so this is asserted on the path: iptables' goes
//!    through filter `KUBE-NODEPORTS`.
//! 5. **The INVALID drop**: iptables drops `--ctstate INVALID` in
//!    `KUBE-FORWARD` unless `nf_conntrack_tcp_be_liberal` is set; nftables has
//!    no such rule. A traced flow is a new connection, so no flow meets it:
//!    asserted on the ruleset (the rule is there, or not, as the config says)
//!    and on every iptables path (never through it).
//! 6. **An external IP or load-balancer IP of a port with no endpoints, from
//!    the node itself**: nftables rejects it (`service-endpoints-check` is
//!    jumped to from `filter-output` too), or drops it first when the
//!    load-balancer source ranges do not allow the node (`firewall-check`);
//!    iptables lets it through untouched, as `KUBE-EXTERNAL-SERVICES`, which
//!    holds those reject rules, is jumped to from `INPUT` and `FORWARD` only
//!    (`iptablesJumpChains`).
//! 7. **A load-balancer IP with source ranges, of a port with no endpoints,
//!    from a source the ranges do not allow**: nftables drops it
//!    (`usesFWChain` does not depend on endpoints: `firewall-check` runs before
//!    anything else); iptables rejects it, as it writes its firewall only for a
//!    port with endpoints (`usesFWChain := hasEndpoints && …`).
//!
//! One more difference is kept out of the random clusters and shown in a
//! fixed case instead, [`a_destination_claimed_twice_is_resolved_differently`]:
//! when one `ip:port` is both an external IP (or another service's address)
//! and a load-balancer IP with source ranges, iptables' firewall chain lets a
//! packet it does not allow fall through to the next capture rule, while
//! nftables' `firewall-check` drops it before any capture. The generator
//! therefore gives each `ip`, protocol and port to one service and one kind
//! of destination ([`unshared`]).
//!
//! The fixed cases at the end show the property on concrete clusters: a
//! `Local` policy without local endpoints, source ranges holding the node's
//! address, only terminating endpoints, session affinity, IPv6.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use svcnat::compile::{compile, jump_rules, nftables};
use svcnat::model::*;
use svcnat::ruleset::{CtState, Match, Table, Target};
use svcnat::trace::{Node, Packet, Trace, Verdict, trace, traceable};

use crate::fixtures::{config, ip, one, ready, slice};
use crate::properties::{rich_cluster, rich_config, state_of};

/// Tolerance on probabilities.
const EPSILON: f64 = 1e-9;

/// A port no generated service serves.
const UNSERVED_PORT: u16 = 65000;

/// Exception 4's label: the modes agree on the end, not on the rules.
const HEALTH_CHECK: &str =
    "4. a health-check node port (both untouched, by a rule only iptables has)";

/// How a flow can end, as both modes can tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct End {
    verdict: Verdict,
    /// Where the packet goes at the end (after DNAT).
    destination: SocketAddr,
    masquerade: bool,
    /// The mark of an accepted packet; `None` for a dropped or rejected one.
    mark: Option<u32>,
}

/// A flow's ends with their probabilities (merged by [`End`]).
type Ends = BTreeMap<End, f64>;

fn ends(t: &Trace) -> Ends {
    let mut out = Ends::new();
    for o in &t.outcomes {
        let end = End {
            verdict: o.verdict,
            destination: o.destination,
            masquerade: o.masquerade,
            mark: (o.verdict == Verdict::Accept).then_some(o.mark),
        };
        *out.entry(end).or_insert(0.0) += o.probability;
    }
    out
}

/// True if `a` and `b` hold the same ends with probabilities within [`EPSILON`].
fn same_ends(a: &Ends, b: &Ends) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ea, pa), (eb, pb))| ea == eb && (pa - pb).abs() < EPSILON)
}

/// Shows ends, one per line.
fn show(e: &Ends) -> String {
    e.iter()
        .map(|(end, p)| {
            format!(
                "  p={p:.6} {} -> {} masquerade={} mark={}",
                end.verdict,
                end.destination,
                end.masquerade,
                end.mark
                    .map_or_else(|| "-".to_owned(), |m| format!("{m:#x}"))
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What one mode does with a flow where kube-proxy's modes differ.
#[derive(Debug, Clone)]
enum Expect {
    /// Accepted, not DNATed, not masqueraded, mark unchanged.
    Untouched,
    /// Dropped or rejected, every way.
    Only(Verdict),
    /// What the same mode does with this other packet (loopback node ports
    /// that iptables captures as it captures the node's address).
    As(Packet),
}

/// A flow where kube-proxy's two modes really differ: what each does.
#[derive(Debug, Clone)]
struct Exception {
    /// Which one of the module docs' list.
    name: &'static str,
    iptables: Expect,
    nftables: Expect,
}

impl Expect {
    fn short(&self) -> &'static str {
        match self {
            Expect::Untouched => "untouched",
            Expect::Only(v) => v.as_str(),
            Expect::As(_) => "as the node's address",
        }
    }
}

impl Exception {
    /// The exception and what each mode does.
    fn label(&self) -> String {
        format!(
            "{} (iptables: {}, nftables: {})",
            self.name,
            self.iptables.short(),
            self.nftables.short()
        )
    }
}

/// The same state, compiled both ways, ready to trace.
struct Modes {
    iptables: svcnat::ruleset::Ruleset,
    nftables: svcnat::nft::Ruleset,
    node: Node,
}

impl Modes {
    fn new(state: &ClusterState, config: &ProxyConfig) -> Self {
        let iptables = traceable(
            &compile(state, config).unwrap(),
            &jump_rules(config).unwrap(),
        );
        let nftables = nftables(state, config).unwrap();
        crate::nft_check::nft_check("modes_agree", &nftables.to_dump());
        Modes {
            iptables,
            nftables,
            node: Node::new(config.node_ips.iter().copied()),
        }
    }

    fn iptables(&self, p: &Packet) -> Trace {
        trace(&self.iptables, p, &self.node).unwrap()
    }

    fn nftables(&self, p: &Packet) -> Trace {
        svcnat::trace::nft::trace(&self.nftables, p, &self.node).unwrap()
    }

    /// The ends `expect` stands for, for packet `p`, in the mode `trace` runs.
    fn expected(&self, p: &Packet, expect: &Expect, trace: impl Fn(&Packet) -> Trace) -> Ends {
        let one = |end| Ends::from([(end, 1.0)]);
        let to = SocketAddr::new(p.destination, p.destination_port);
        match expect {
            Expect::Untouched => one(End {
                verdict: Verdict::Accept,
                destination: to,
                masquerade: false,
                mark: Some(p.mark),
            }),
            Expect::Only(v) => one(End {
                verdict: *v,
                destination: to,
                masquerade: false,
                mark: None,
            }),
            Expect::As(other) => ends(&trace(other)),
        }
    }
}

/// Addresses the probes use, per family.
struct Addresses {
    /// The node's primary address.
    node: IpAddr,
    loopback: IpAddr,
    /// A pod of this node, in the cluster CIDR.
    pod: IpAddr,
    /// A client outside every source range.
    outside: IpAddr,
    /// An address of the service CIDR that no service has.
    unallocated: IpAddr,
}

fn addresses(family: IpFamily) -> Addresses {
    match family {
        IpFamily::Ipv4 => Addresses {
            node: ip("192.168.0.2"),
            loopback: ip("127.0.0.1"),
            pod: ip("10.180.250.1"),
            outside: ip("198.51.100.9"),
            unallocated: ip("172.30.0.200"),
        },
        IpFamily::Ipv6 => Addresses {
            node: ip("2001:db8::1"),
            loopback: ip("::1"),
            pod: ip("fd00:10:180:fa::1"),
            outside: ip("2001:db8:ffff::9"),
            unallocated: ip("fd00:172:30::c8"),
        },
    }
}

/// Where a probe comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    /// A pod of this node.
    Pod,
    /// An endpoint of the service itself (hairpin).
    Endpoint,
    /// A process on the node.
    Node,
    /// A client outside the cluster (inside a source range or not).
    Outside,
}

/// What a probe is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum To {
    ClusterIp,
    ExternalIp,
    LoadBalancerIp,
    /// A load-balancer ingress IP in `Proxy` mode, which neither mode captures.
    ProxyModeIp,
    /// The node port on the node's address.
    NodePort,
    /// The node port on loopback, from the node.
    LoopbackNodePort,
    /// The cluster IP on [`UNSERVED_PORT`].
    UnservedPort,
    /// An address of the service CIDR no service has.
    Unallocated,
    /// The health-check node port on the node's address.
    HealthCheck,
}

/// What kube-proxy derives about a service port that decides where the modes
/// differ: `CategorizeEndpoints`' `hasEndpoints`, and whether external
/// traffic has endpoints to go to.
#[derive(Debug, Clone, Default)]
struct PortFacts {
    has_any: bool,
    has_external: bool,
    /// The service's load-balancer source ranges of the family (its
    /// load-balancer IPs go through a firewall when there are some).
    source_ranges: Vec<IpNet>,
}

/// One flow to trace in both modes.
#[derive(Debug, Clone)]
struct Probe {
    /// `ns/name:port`, or what the probe is for.
    port: String,
    from: From,
    to: To,
    packet: Packet,
    facts: PortFacts,
}

/// A service port's endpoints (of the family), one copy of each address as
/// the compiler (and kube-proxy) picks among copies: one on this node first,
/// then the most usable one. Whether each is on this node, and its conditions.
fn endpoints(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    config: &ProxyConfig,
) -> Vec<(bool, Conditions)> {
    let node = config.node_name.as_deref();
    let mut best: BTreeMap<SocketAddr, (bool, bool, bool, bool)> = BTreeMap::new();
    for s in slices {
        if s.address_type != config.ip_family {
            continue;
        }
        let Some(p) = s
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol && p.port != 0)
        else {
            continue;
        };
        for e in &s.endpoints {
            let local = node.is_some() && e.node_name.as_deref() == node;
            let c = e.conditions;
            let rank = (local, c.ready, c.serving, !c.terminating);
            let at = SocketAddr::new(e.address, p.port);
            let kept = best.entry(at).or_insert(rank);
            if rank > *kept {
                *kept = rank;
            }
        }
    }
    best.values()
        .map(|&(local, ready, serving, not_terminating)| {
            (
                local,
                Conditions {
                    ready,
                    serving,
                    terminating: !not_terminating,
                },
            )
        })
        .collect()
}

fn usable(c: &Conditions) -> bool {
    c.ready || (c.serving && c.terminating)
}

/// The [`PortFacts`] of `port` of `svc` for `config`.
fn port_facts(
    svc: &Service,
    slices: &[&EndpointSlice],
    port: &ServicePort,
    config: &ProxyConfig,
) -> PortFacts {
    let family = config.ip_family;
    let externally_accessible = port.node_port.is_some()
        || svc.external_ips.iter().any(|a| family.contains(a))
        || svc
            .load_balancer_ingress
            .iter()
            .any(|i| i.ip_mode == IpMode::Vip && family.contains(&i.ip));
    let external_local = svc.external_traffic_policy == TrafficPolicy::Local
        && (svc.service_type != ServiceType::ClusterIp || !svc.external_ips.is_empty())
        && externally_accessible;
    let copies = endpoints(slices, port, config);
    let has_any = copies.iter().any(|(_, c)| usable(c));
    let has_local = copies.iter().any(|(local, c)| *local && usable(c));
    PortFacts {
        has_any,
        has_external: has_any && (!external_local || has_local),
        source_ranges: svc
            .load_balancer_source_ranges
            .iter()
            .filter(|n| family.contains(&n.addr()))
            .copied()
            .collect(),
    }
}

/// A source inside `net`: its 9th address.
fn inside(net: &IpNet) -> IpAddr {
    net.hosts().nth(8).unwrap_or(net.addr())
}

/// Every flow to trace for `state` under `config`.
fn probes(state: &ClusterState, config: &ProxyConfig) -> Vec<Probe> {
    let family = config.ip_family;
    let a = addresses(family);
    let mut out = Vec::new();
    let pod = |p: Packet| p.arriving_on("veth9");
    for svc in state.services() {
        let Some(&vip) = svc.cluster_ips.iter().find(|c| family.contains(c)) else {
            continue;
        };
        let key = svc.key();
        let slices: Vec<&EndpointSlice> = state.slices_of(&key).collect();
        let hairpin = slices
            .iter()
            .filter(|s| s.address_type == family)
            .flat_map(|s| &s.endpoints)
            .map(|e| e.address)
            .next();
        let external: Vec<IpAddr> = svc
            .external_ips
            .iter()
            .copied()
            .filter(|x| family.contains(x))
            .collect();
        // Load-balancer IPs, once each: a `Proxy`-mode ingress IP is one
        // only when no `Vip`-mode ingress has that IP too.
        let ingress = |mode: IpMode| -> BTreeSet<IpAddr> {
            let ips = svc.load_balancer_ingress.iter();
            ips.filter(|i| i.ip_mode == mode && family.contains(&i.ip))
                .map(|i| i.ip)
                .collect()
        };
        let vips = ingress(IpMode::Vip);
        let lb: Vec<(To, IpAddr)> = vips
            .iter()
            .map(|&x| (To::LoadBalancerIp, x))
            .chain(
                ingress(IpMode::Proxy)
                    .difference(&vips)
                    .map(|&x| (To::ProxyModeIp, x)),
            )
            .collect();
        for port in &svc.ports {
            let facts = port_facts(svc, &slices, port, config);
            let name = format!("{}/{}:{}", key.namespace, key.name, port.name);
            let mut push = |from, to, packet: Packet| {
                out.push(Probe {
                    port: name.clone(),
                    from,
                    to,
                    packet,
                    facts: facts.clone(),
                });
            };
            let packet = |src: IpAddr, dst: IpAddr, p: u16| Packet::new(port.protocol, src, dst, p);
            // Every source, to `dst:p`.
            let sources = |dst: IpAddr, p: u16| {
                let mut v = vec![
                    (From::Pod, pod(packet(a.pod, dst, p))),
                    (From::Node, packet(a.node, dst, p).from_local()),
                    (From::Outside, packet(a.outside, dst, p)),
                ];
                v.extend(hairpin.map(|h| (From::Endpoint, pod(packet(h, dst, p)))));
                v.extend(
                    facts
                        .source_ranges
                        .iter()
                        .map(|net| (From::Outside, packet(inside(net), dst, p))),
                );
                v
            };
            let mut destinations = vec![(To::ClusterIp, vip, port.port)];
            destinations.extend(external.iter().map(|&x| (To::ExternalIp, x, port.port)));
            destinations.extend(lb.iter().map(|&(to, x)| (to, x, port.port)));
            destinations.extend(port.node_port.map(|np| (To::NodePort, a.node, np)));
            for (to, dst, p) in destinations {
                for (from, packet) in sources(dst, p) {
                    push(from, to, packet);
                }
            }
            if let Some(np) = port.node_port {
                push(
                    From::Node,
                    To::LoopbackNodePort,
                    packet(a.loopback, a.loopback, np).from_local(),
                );
            }
        }
        let name = format!("{}/{} (other ports)", key.namespace, key.name);
        let facts = PortFacts::default();
        for (from, p) in [
            (From::Pod, pod(Packet::tcp(a.pod, vip, UNSERVED_PORT))),
            (
                From::Node,
                Packet::tcp(a.node, vip, UNSERVED_PORT).from_local(),
            ),
            (From::Outside, Packet::tcp(a.outside, vip, UNSERVED_PORT)),
        ] {
            out.push(Probe {
                port: name.clone(),
                from,
                to: To::UnservedPort,
                packet: p,
                facts: facts.clone(),
            });
        }
        if let Some(hc) = svc.health_check_node_port {
            out.push(Probe {
                port: format!("{}/{} (health check)", key.namespace, key.name),
                from: From::Outside,
                to: To::HealthCheck,
                packet: Packet::tcp(a.outside, a.node, hc),
                facts: facts.clone(),
            });
        }
    }
    for (from, p) in [
        (
            From::Pod,
            Packet::tcp(a.pod, a.unallocated, 80).arriving_on("veth9"),
        ),
        (
            From::Node,
            Packet::tcp(a.node, a.unallocated, 80).from_local(),
        ),
        (From::Outside, Packet::tcp(a.outside, a.unallocated, 80)),
    ] {
        out.push(Probe {
            port: "an unallocated service address".into(),
            from,
            to: To::Unallocated,
            packet: p,
            facts: PortFacts::default(),
        });
    }
    out
}

/// kube-proxy's node port addresses (`NodePortAddresses`) of the family:
/// `None` when every local address accepts node ports (no entry of the
/// family, or a `/0`), else the CIDRs (`primary` as the primary address).
fn node_port_cidrs(config: &ProxyConfig) -> Option<Vec<IpNet>> {
    let family = config.ip_family;
    let primary = config.node_ips.iter().copied().find(|a| family.contains(a));
    let cidrs: Vec<IpNet> = config
        .nodeport_addresses
        .iter()
        .filter_map(|entry| match entry {
            NodePortAddress::Cidr(net) => family.contains(&net.addr()).then_some(*net),
            NodePortAddress::Primary => primary.map(IpNet::from),
        })
        .collect();
    (!cidrs.is_empty() && cidrs.iter().all(|c| c.prefix_len() > 0)).then_some(cidrs)
}

/// Whether `address` (of the node) accepts node ports in nftables mode:
/// never loopback (`noLocalhost`, and loopback left out of `nodeport-ips`).
fn nftables_node_port_address(config: &ProxyConfig, address: IpAddr) -> bool {
    !address.is_loopback()
        && node_port_cidrs(config).is_none_or(|c| c.iter().any(|n| n.contains(&address)))
}

/// Whether `address` (of the node) accepts node ports in iptables mode:
/// loopback only on IPv4 with localhost node ports on and loopback among the
/// node port addresses (`NewProxier`, and the last rule of `KUBE-SERVICES`).
fn iptables_node_port_address(config: &ProxyConfig, address: IpAddr) -> bool {
    let listed = node_port_cidrs(config).is_none_or(|c| c.iter().any(|n| n.contains(&address)));
    match address.is_loopback() {
        true => config.ip_family == IpFamily::Ipv4 && config.localhost_nodeports && listed,
        false => listed,
    }
}

/// Where kube-proxy's two modes differ on `probe` (see the module docs), or
/// `None` where they agree.
fn exception(probe: &Probe, config: &ProxyConfig) -> Option<Exception> {
    let facts = &probe.facts;
    let family = config.ip_family;
    let a = addresses(family);
    let p = &probe.packet;
    // The drop or reject of a port without (external) endpoints.
    let no_endpoints = if facts.has_any {
        Verdict::Drop
    } else {
        Verdict::Reject
    };
    match probe.to {
        To::UnservedPort => Some(Exception {
            name: "1. a cluster IP on a port it does not serve",
            iptables: Expect::Untouched,
            nftables: Expect::Only(Verdict::Reject),
        }),
        To::Unallocated => config
            .service_cidrs
            .iter()
            .any(|n| n.contains(&p.destination))
            .then_some(Exception {
                name: "2. an address of a service CIDR no service has",
                iptables: Expect::Untouched,
                nftables: Expect::Only(Verdict::Drop),
            }),
        To::NodePort | To::LoopbackNodePort
            if !nftables_node_port_address(config, p.destination) =>
        {
            let iptables = if iptables_node_port_address(config, p.destination) && facts.has_any {
                // Only loopback gets here, listed in the node port addresses
                // with the node's address (see `agree_config`).
                Expect::As(Packet::new(p.protocol, a.node, a.node, p.destination_port).from_local())
            } else if !facts.has_external {
                Expect::Only(no_endpoints)
            } else {
                Expect::Untouched
            };
            Some(Exception {
                name: "3. a node port on an address nftables does not serve it on",
                iptables,
                nftables: Expect::Untouched,
            })
        }
        To::ExternalIp | To::LoadBalancerIp if !facts.has_any => {
            let firewalled = probe.to == To::LoadBalancerIp && !facts.source_ranges.is_empty();
            let allowed = facts.source_ranges.iter().any(|n| n.contains(&p.source));
            let nft = if firewalled && !allowed {
                Verdict::Drop
            } else {
                Verdict::Reject
            };
            if probe.from == From::Node {
                Some(Exception {
                    name: "6. an external destination without endpoints, from the node",
                    iptables: Expect::Untouched,
                    nftables: Expect::Only(nft),
                })
            } else if nft == Verdict::Drop {
                Some(Exception {
                    name: "7. a firewalled load-balancer IP without endpoints, from a source \
                           the ranges do not allow",
                    iptables: Expect::Only(Verdict::Reject),
                    nftables: Expect::Only(Verdict::Drop),
                })
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Checks one flow: the same ends in both modes, or each mode's own where they
/// differ. Returns the exception that applied, if any, as [`Exception::label`].
fn check(modes: &Modes, probe: &Probe, config: &ProxyConfig) -> Result<Option<String>, String> {
    let p = &probe.packet;
    let (it, nt) = (modes.iptables(p), modes.nftables(p));
    let what = || {
        format!(
            "{} from {:?} to {:?}: {:?} {} -> {}:{} ({:?})",
            probe.port,
            probe.from,
            probe.to,
            p.protocol,
            p.source,
            p.destination,
            p.destination_port,
            p.entry
        )
    };
    for (mode, t) in [("iptables", &it), ("nftables", &nt)] {
        if !t.unevaluated.is_empty() || t.outcomes.iter().any(|o| o.nat_unevaluated) {
            return Err(format!(
                "{}: {mode} left something unevaluated: {:?}",
                what(),
                t.unevaluated
            ));
        }
        let total: f64 = t.outcomes.iter().map(|o| o.probability).sum();
        if (total - 1.0).abs() > EPSILON {
            return Err(format!("{}: {mode}'s probabilities sum to {total}", what()));
        }
    }
    if through_invalid_drop(modes, &it) {
        return Err(format!("{}: iptables took the INVALID drop", what()));
    }
    let (ie, ne) = (ends(&it), ends(&nt));
    match exception(probe, config) {
        None => {
            if !same_ends(&ie, &ne) {
                return Err(format!(
                    "{}: the modes disagree\niptables:\n{}\nnftables:\n{}",
                    what(),
                    show(&ie),
                    show(&ne)
                ));
            }
            if it.affinity.is_empty() != nt.affinity.is_empty() {
                return Err(format!(
                    "{}: only one mode assumed session affinity\niptables: {:?}\nnftables: {:?}",
                    what(),
                    it.affinity,
                    nt.affinity
                ));
            }
            if probe.to == To::HealthCheck {
                // Exception 4: the same end, by a rule only iptables has.
                let by_rule = it.outcomes.iter().all(|o| {
                    o.path
                        .iter()
                        .any(|r| r.table == Table::Filter && r.chain.as_str() == "KUBE-NODEPORTS")
                });
                if !by_rule
                    || !same_ends(&ie, &modes.expected(p, &Expect::Untouched, |_| it.clone()))
                {
                    return Err(format!(
                        "{}: {HEALTH_CHECK}: iptables should accept it in filter KUBE-NODEPORTS\n\
                         iptables:\n{}",
                        what(),
                        show(&ie)
                    ));
                }
                return Ok(Some(HEALTH_CHECK.into()));
            }
            Ok(None)
        }
        Some(e) => {
            let want_i = modes.expected(p, &e.iptables, |q| modes.iptables(q));
            let want_n = modes.expected(p, &e.nftables, |q| modes.nftables(q));
            if !same_ends(&ie, &want_i) || !same_ends(&ne, &want_n) {
                return Err(format!(
                    "{}: exception {:?} does not hold\niptables (want {:?}):\n{}\nnftables (want {:?}):\n{}",
                    what(),
                    e.name,
                    e.iptables,
                    show(&ie),
                    e.nftables,
                    show(&ne)
                ));
            }
            Ok(Some(e.label()))
        }
    }
}

/// iptables' INVALID drop (`-m conntrack --ctstate INVALID -j DROP`).
fn is_invalid_drop(r: &svcnat::ruleset::Rule) -> bool {
    r.target == Some(Target::Drop)
        && r.matches().iter().any(
            |m| matches!(m, Match::Conntrack(s) if !s.negated && s.value == [CtState::Invalid]),
        )
}

/// Exception 5: iptables' INVALID drop is in `KUBE-FORWARD` unless the config
/// says conntrack is liberal.
fn invalid_drop(modes: &Modes, config: &ProxyConfig) -> Result<(), String> {
    let forward = modes
        .iptables
        .chain(Table::Filter, "KUBE-FORWARD")
        .ok_or("no filter KUBE-FORWARD")?;
    let has = forward.rules.iter().any(is_invalid_drop);
    if has == config.conntrack_tcp_be_liberal {
        return Err(format!(
            "5. the INVALID drop: written {has}, nf_conntrack_tcp_be_liberal {}",
            config.conntrack_tcp_be_liberal
        ));
    }
    Ok(())
}

/// Exception 5: a new connection never goes through the INVALID drop.
fn through_invalid_drop(modes: &Modes, t: &Trace) -> bool {
    t.outcomes.iter().flat_map(|o| &o.path).any(|r| {
        r.table == Table::Filter
            && modes
                .iptables
                .chain(Table::Filter, r.chain.as_str())
                .and_then(|c| c.rules.get(r.index - 1))
                .is_some_and(is_invalid_drop)
    })
}

/// Checks every flow of `state`; returns how many flows met each exception
/// (by [`Exception::label`]).
fn agree(state: &ClusterState, config: &ProxyConfig) -> Result<BTreeMap<String, usize>, String> {
    let modes = Modes::new(state, config);
    invalid_drop(&modes, config)?;
    let mut met = BTreeMap::new();
    for probe in probes(state, config) {
        if let Some(label) = check(&modes, &probe, config)? {
            *met.entry(label).or_insert(0) += 1;
        }
    }
    Ok(met)
}

/// The same cluster, each `ip`, protocol and port claimed by one service and
/// one kind of destination: an external IP or load-balancer IP that an
/// earlier service (in the order given), or the same service as an external
/// IP, already claims on one of the port numbers is dropped. See
/// [`a_destination_claimed_twice_is_resolved_differently`] for why.
fn unshared(mut parts: Vec<(Service, Vec<EndpointSlice>)>) -> Vec<(Service, Vec<EndpointSlice>)> {
    let mut claimed: BTreeSet<(IpAddr, Protocol, u16)> = BTreeSet::new();
    for (svc, _) in &mut parts {
        let keys: Vec<(Protocol, u16)> = svc.ports.iter().map(|p| (p.protocol, p.port)).collect();
        let taken = |claimed: &BTreeSet<_>, ip: IpAddr| {
            keys.iter()
                .any(|&(proto, port)| claimed.contains(&(ip, proto, port)))
        };
        svc.external_ips.retain(|x| !taken(&claimed, *x));
        let external = svc.external_ips.clone();
        svc.load_balancer_ingress
            .retain(|i| !taken(&claimed, i.ip) && !external.contains(&i.ip));
        let ips = external
            .iter()
            .copied()
            .chain(svc.load_balancer_ingress.iter().map(|i| i.ip));
        for x in ips {
            for &(proto, port) in &keys {
                claimed.insert((x, proto, port));
            }
        }
    }
    parts
}

/// [`rich_config`] with service CIDRs (none, IPv4's, or both families'),
/// localhost node ports on or off, conntrack liberal or not, and sometimes
/// other node port addresses (CIDRs that hold the node's address and
/// loopback, or no address of the node) or pods detected by the bridge
/// `veth9` they arrive on.
fn agree_config() -> impl Strategy<Value = ProxyConfig> {
    let cidr = |s: &str| NodePortAddress::Cidr(s.parse().unwrap());
    let nodeport_addresses = prop_oneof![
        4 => Just(None),
        1 => Just(Some(vec![
            cidr("192.168.0.0/16"),
            cidr("127.0.0.0/8"),
            cidr("2001:db8::/64"),
            cidr("::1/128"),
        ])),
        1 => Just(Some(vec![cidr("10.99.0.0/16"), cidr("2001:db8:99::/64")])),
    ];
    (
        rich_config(),
        0u8..3,
        (any::<bool>(), any::<bool>()),
        nodeport_addresses,
        prop::bool::weighted(0.2),
    )
        .prop_map(|(config, cidrs, (localhost, liberal), nodeports, bridge)| {
            let cidrs: Vec<IpNet> = match cidrs {
                0 => vec![],
                1 => vec!["172.30.0.0/16".parse().unwrap()],
                _ => vec![
                    "172.30.0.0/16".parse().unwrap(),
                    "fd00:172:30::/112".parse().unwrap(),
                ],
            };
            let mut config = config
                .with_service_cidrs(cidrs)
                .with_localhost_nodeports(localhost)
                .with_conntrack_tcp_be_liberal(liberal);
            if let Some(addresses) = nodeports {
                config = config.with_nodeport_addresses(addresses);
            }
            if bridge {
                config = config
                    .with_local_traffic(LocalTrafficDetector::BridgeInterface("veth9".into()));
            }
            config
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Every flow ends the same way in both modes, but where kube-proxy's two
    /// modes differ (the module docs' list), where each does what its
    /// kube-proxy does.
    #[test]
    fn both_modes_agree_on_random_clusters(parts in rich_cluster(), config in agree_config()) {
        let state = state_of(&unshared(parts));
        if let Err(e) = agree(&state, &config) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// On a fixed sample of random clusters, every exception is met, each way
/// each mode can take it: the property does not pass by never meeting them.
#[test]
fn every_exception_is_met_on_random_clusters() {
    let mut runner = TestRunner::new_with_rng(
        Config::with_cases(64),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let met = RefCell::new(BTreeMap::<String, usize>::new());
    runner
        .run(&(rich_cluster(), agree_config()), |(parts, config)| {
            let state = state_of(&unshared(parts));
            let seen = agree(&state, &config).map_err(TestCaseError::fail)?;
            for (label, n) in seen {
                *met.borrow_mut().entry(label).or_insert(0) += n;
            }
            Ok(())
        })
        .unwrap();
    let met = met.into_inner();
    let want = [
        "1. a cluster IP on a port it does not serve (iptables: untouched, nftables: reject)",
        "2. an address of a service CIDR no service has (iptables: untouched, nftables: drop)",
        "3. a node port on an address nftables does not serve it on (iptables: as the node's address, nftables: untouched)",
        "3. a node port on an address nftables does not serve it on (iptables: drop, nftables: untouched)",
        "3. a node port on an address nftables does not serve it on (iptables: reject, nftables: untouched)",
        "3. a node port on an address nftables does not serve it on (iptables: untouched, nftables: untouched)",
        HEALTH_CHECK,
        "6. an external destination without endpoints, from the node (iptables: untouched, nftables: drop)",
        "6. an external destination without endpoints, from the node (iptables: untouched, nftables: reject)",
        "7. a firewalled load-balancer IP without endpoints, from a source the ranges do not allow (iptables: reject, nftables: drop)",
    ];
    let missing: Vec<&str> = want
        .iter()
        .copied()
        .filter(|w| !met.contains_key(*w))
        .collect();
    assert!(missing.is_empty(), "never met: {missing:#?}\nmet: {met:#?}");
    assert_eq!(met.len(), want.len(), "met: {met:#?}");
}

// ---------------------------------------------------------------------------
// Fixed cases: the property on concrete clusters.

/// A flow's ends as `verdict destination [masquerade] p=…`, sorted.
fn lines(e: &Ends) -> Vec<String> {
    e.iter()
        .map(|(end, p)| {
            let masq = if end.masquerade { " masquerade" } else { "" };
            format!("{} {}{masq} p={p:.3}", end.verdict, end.destination)
        })
        .collect()
}

/// The ends of `p` in both modes, which must be the same, as [`lines`].
fn both(modes: &Modes, p: &Packet) -> Vec<String> {
    let (i, n) = (ends(&modes.iptables(p)), ends(&modes.nftables(p)));
    assert!(
        same_ends(&i, &n),
        "{p:?}\niptables:\n{}\nnftables:\n{}",
        show(&i),
        show(&n)
    );
    lines(&i)
}

/// Asserts that `p` ends one way in each mode, `iptables` and `nftables`,
/// as [`lines`] shows it.
fn differs(modes: &Modes, p: &Packet, iptables: &str, nftables: &str) {
    let (i, n) = (ends(&modes.iptables(p)), ends(&modes.nftables(p)));
    assert_eq!(
        (lines(&i), lines(&n)),
        (vec![iptables.to_owned()], vec![nftables.to_owned()]),
        "{p:?}"
    );
}

/// The property on one cluster: every flow agrees (or meets an exception,
/// whose labels are returned), then its rulesets.
fn agreeing(state: &ClusterState, config: &ProxyConfig) -> (Modes, BTreeSet<String>) {
    let met = agree(state, config).unwrap_or_else(|e| panic!("{e}"));
    (Modes::new(state, config), met.into_keys().collect())
}

/// `ns1/svc1`, a load balancer at 1.2.3.4 (cluster IP 172.30.0.41), TCP port
/// 80 (`p80`) on node port 30080.
fn load_balancer() -> Service {
    Service {
        service_type: ServiceType::LoadBalancer,
        load_balancer_ingress: vec![LoadBalancerIngress {
            ip: ip("1.2.3.4"),
            ip_mode: IpMode::Vip,
        }],
        ..Service::cluster_ip("ns1", "svc1", ip("172.30.0.41"))
            .with_port(ServicePort::tcp("p80", 80).with_node_port(30080))
    }
}

fn pod(src: &str, dst: &str, port: u16) -> Packet {
    Packet::tcp(ip(src), ip(dst), port).arriving_on("veth9")
}

fn outside(src: &str, dst: &str, port: u16) -> Packet {
    Packet::tcp(ip(src), ip(dst), port)
}

fn from_node(dst: &str, port: u16) -> Packet {
    Packet::tcp(ip("192.168.0.2"), ip(dst), port).from_local()
}

#[test]
fn local_policy_without_local_endpoints() {
    let svc = Service {
        external_traffic_policy: TrafficPolicy::Local,
        health_check_node_port: Some(30900),
        ..load_balancer()
    };
    let state = one(svc, vec![ready("10.180.0.1").on_node("other")]);
    let (modes, met) = agreeing(&state, &config());
    // Outside traffic has no local endpoint to go to: dropped, on the
    // load-balancer IP and on the node port.
    assert_eq!(
        both(&modes, &outside("203.0.113.9", "1.2.3.4", 80)),
        ["drop 1.2.3.4:80 p=1.000"]
    );
    assert_eq!(
        both(&modes, &outside("203.0.113.9", "192.168.0.2", 30080)),
        ["drop 192.168.0.2:30080 p=1.000"]
    );
    // A pod is short-circuited to the cluster's endpoints, keeping its source;
    // the node too, masqueraded.
    assert_eq!(
        both(&modes, &pod("10.180.250.1", "1.2.3.4", 80)),
        ["accept 10.180.0.1:80 p=1.000"]
    );
    assert_eq!(
        both(&modes, &from_node("1.2.3.4", 80)),
        ["accept 10.180.0.1:80 masquerade p=1.000"]
    );
    // The cluster IP is not external: served, masqueraded from off the cluster.
    assert_eq!(
        both(&modes, &outside("203.0.113.9", "172.30.0.41", 80)),
        ["accept 10.180.0.1:80 masquerade p=1.000"]
    );
    assert!(met.contains(HEALTH_CHECK), "{met:?}");
}

#[test]
fn source_ranges_holding_the_nodes_address() {
    let svc = Service {
        load_balancer_source_ranges: vec![
            "192.168.0.0/24".parse().unwrap(),
            "203.0.113.0/25".parse().unwrap(),
        ],
        ..load_balancer()
    };
    let state = one(svc, vec![ready("10.180.0.1")]);
    let (modes, _) = agreeing(&state, &config());
    let served = ["accept 10.180.0.1:80 masquerade p=1.000"];
    assert_eq!(both(&modes, &outside("203.0.113.9", "1.2.3.4", 80)), served);
    assert_eq!(
        both(&modes, &outside("198.51.100.9", "1.2.3.4", 80)),
        ["drop 1.2.3.4:80 p=1.000"]
    );
    // The node's address is in a range, so the node, and the load-balancer IP
    // itself as a source (a request from the node looping back with the VIP
    // as its source), are allowed.
    assert_eq!(both(&modes, &from_node("1.2.3.4", 80)), served);
    assert_eq!(both(&modes, &outside("1.2.3.4", "1.2.3.4", 80)), served);
    // Node ports are not subject to the source ranges.
    assert_eq!(
        both(&modes, &outside("198.51.100.9", "192.168.0.2", 30080)),
        ["accept 10.180.0.1:80 masquerade p=1.000"]
    );
}

#[test]
fn terminating_endpoints_only() {
    let svc = Service::cluster_ip("ns1", "svc1", ip("172.30.0.41"))
        .with_port(ServicePort::tcp("p80", 80));
    let terminating = |a: &str| ready(a).with_conditions(Conditions::SERVING_TERMINATING);
    let state = one(
        svc,
        vec![
            terminating("10.180.0.1"),
            terminating("10.180.0.2"),
            ready("10.180.0.3").with_conditions(Conditions::NOT_READY),
        ],
    );
    let (modes, _) = agreeing(&state, &config());
    assert_eq!(
        both(&modes, &pod("10.180.250.1", "172.30.0.41", 80)),
        [
            "accept 10.180.0.1:80 p=0.500",
            "accept 10.180.0.2:80 p=0.500"
        ]
    );
}

#[test]
fn session_affinity() {
    let svc = Service {
        session_affinity: SessionAffinity::ClientIp {
            timeout_seconds: 10800,
        },
        ..Service::cluster_ip("ns1", "svc1", ip("172.30.0.41"))
            .with_port(ServicePort::tcp("p80", 80))
    };
    let state = one(svc, vec![ready("10.180.0.1"), ready("10.180.0.2")]);
    let (modes, _) = agreeing(&state, &config());
    let p = pod("10.180.250.1", "172.30.0.41", 80);
    // A client without affinity yet, in both: the random pick.
    assert_eq!(
        both(&modes, &p),
        [
            "accept 10.180.0.1:80 p=0.500",
            "accept 10.180.0.2:80 p=0.500"
        ]
    );
    // Both say that is what they assumed, once per endpoint.
    let (i, n) = (modes.iptables(&p), modes.nftables(&p));
    assert_eq!((i.affinity.len(), n.affinity.len()), (2, 2), "{i:?}\n{n:?}");
    assert!(
        i.assumptions.iter().all(|a| a.contains("session affinity")),
        "{:?}",
        i.assumptions
    );
    assert!(
        n.assumptions.iter().all(|a| a.contains("session affinity")),
        "{:?}",
        n.assumptions
    );
}

#[test]
fn ipv6() {
    let svc = Service {
        service_type: ServiceType::NodePort,
        cluster_ips: vec![ip("172.30.0.41"), ip("fd00:172:30::41")],
        ..Service::cluster_ip("ns1", "svc1", ip("172.30.0.41"))
            .with_port(ServicePort::tcp("p80", 80).with_node_port(30080))
    };
    let state = crate::fixtures::state(
        vec![svc],
        vec![
            slice("ns1", "svc1", &[("p80", 80)], vec![ready("10.180.0.1")]),
            EndpointSlice {
                name: "svc1-v6".into(),
                ..slice(
                    "ns1",
                    "svc1",
                    &[("p80", 80)],
                    vec![ready("fd00:10:180::1"), ready("fd00:10:180::2")],
                )
            },
        ],
    );
    let config = config()
        .with_ip_family(IpFamily::Ipv6)
        .with_node_ips([ip("2001:db8::1"), ip("::1")])
        .with_cluster_cidrs(["fd00:10::/32".parse().unwrap()])
        .with_service_cidrs(["fd00:172:30::/112".parse().unwrap()]);
    let (modes, met) = agreeing(&state, &config);
    assert_eq!(
        both(&modes, &pod("fd00:10:180:fa::1", "fd00:172:30::41", 80)),
        [
            "accept [fd00:10:180::1]:80 p=0.500",
            "accept [fd00:10:180::2]:80 p=0.500"
        ]
    );
    assert_eq!(
        both(&modes, &outside("2001:db8:ffff::9", "2001:db8::1", 30080)),
        [
            "accept [fd00:10:180::1]:80 masquerade p=0.500",
            "accept [fd00:10:180::2]:80 masquerade p=0.500"
        ]
    );
    // Neither mode serves node ports on ::1 (exception 3, the same both ways
    // on IPv6 when the port has endpoints); nftables drops an unallocated
    // address of the service CIDR (exception 2).
    assert!(
        met.contains(
        "3. a node port on an address nftables does not serve it on (iptables: untouched, nftables: untouched)"
    ),
        "{met:?}"
    );
    differs(
        &modes,
        &pod("fd00:10:180:fa::1", "fd00:172:30::c8", 80),
        "accept [fd00:172:30::c8]:80 p=1.000",
        "drop [fd00:172:30::c8]:80 p=1.000",
    );
}

/// The exceptions of the module docs, one flow each, on one cluster.
#[test]
fn the_exceptions_on_one_cluster() {
    // svc1 as above with endpoints and a health-check node port; svc2 a
    // firewalled load balancer at 1.2.3.5 with an external IP 5.6.7.8 and no
    // endpoints.
    let svc1 = Service {
        external_traffic_policy: TrafficPolicy::Local,
        health_check_node_port: Some(30900),
        ..load_balancer()
    };
    let svc2 = Service {
        external_ips: vec![ip("5.6.7.8")],
        load_balancer_ingress: vec![LoadBalancerIngress {
            ip: ip("1.2.3.5"),
            ip_mode: IpMode::Vip,
        }],
        load_balancer_source_ranges: vec!["203.0.113.0/25".parse().unwrap()],
        ..Service {
            name: "svc2".into(),
            cluster_ips: vec![ip("172.30.0.42")],
            ports: vec![ServicePort::tcp("p80", 80).with_node_port(30081)],
            ..load_balancer()
        }
    };
    let state = crate::fixtures::state(
        vec![svc1, svc2],
        vec![slice(
            "ns1",
            "svc1",
            &[("p80", 80)],
            vec![ready("10.180.0.1").on_node("test-node")],
        )],
    );
    let config = config().with_service_cidrs(["172.30.0.0/16".parse().unwrap()]);
    let (modes, met) = agreeing(&state, &config);
    // 1. A cluster IP on a port it does not serve.
    differs(
        &modes,
        &pod("10.180.250.1", "172.30.0.41", 81),
        "accept 172.30.0.41:81 p=1.000",
        "reject 172.30.0.41:81 p=1.000",
    );
    // 2. An address of the service CIDR no service has.
    differs(
        &modes,
        &pod("10.180.250.1", "172.30.0.99", 80),
        "accept 172.30.0.99:80 p=1.000",
        "drop 172.30.0.99:80 p=1.000",
    );
    // 3. A node port on 127.0.0.1: iptables serves it as on the node's address.
    let loopback = Packet::tcp(ip("127.0.0.1"), ip("127.0.0.1"), 30080).from_local();
    differs(
        &modes,
        &loopback,
        "accept 10.180.0.1:80 masquerade p=1.000",
        "accept 127.0.0.1:30080 p=1.000",
    );
    // 4. The health-check node port: accepted by both, by a rule in iptables.
    assert_eq!(
        both(&modes, &outside("203.0.113.9", "192.168.0.2", 30900)),
        ["accept 192.168.0.2:30900 p=1.000"]
    );
    // 6. svc2's external IP from the node.
    differs(
        &modes,
        &from_node("5.6.7.8", 80),
        "accept 5.6.7.8:80 p=1.000",
        "reject 5.6.7.8:80 p=1.000",
    );
    // 7. svc2's load-balancer IP from outside its ranges; inside them, both
    // reject.
    differs(
        &modes,
        &outside("198.51.100.9", "1.2.3.5", 80),
        "reject 1.2.3.5:80 p=1.000",
        "drop 1.2.3.5:80 p=1.000",
    );
    assert_eq!(
        both(&modes, &outside("203.0.113.9", "1.2.3.5", 80)),
        ["reject 1.2.3.5:80 p=1.000"]
    );
    for n in ["1.", "2.", "3.", "4.", "6.", "7."] {
        assert!(met.iter().any(|m| m.starts_with(n)), "{n} not met: {met:?}");
    }
}

/// One `ip:port` that is both an external IP and a load-balancer IP with
/// source ranges, of one service or of two: iptables lets a source the ranges
/// do not allow through the firewall chain's end to the external IP's capture
/// rule (in the order of `KUBE-SERVICES`), nftables' `firewall-check` drops it
/// before any capture. kube-proxy's sources give no rule for such a conflict;
/// the random clusters of the property are kept free of it ([`unshared`]).
#[test]
fn a_destination_claimed_twice_is_resolved_differently() {
    let firewalled = Service {
        load_balancer_source_ranges: vec!["203.0.113.0/25".parse().unwrap()],
        ..load_balancer()
    };
    let served = "accept 10.180.0.1:80 masquerade p=1.000";
    let ep = || vec![ready("10.180.0.1")];
    // One service: 1.2.3.4 is its external IP too.
    let state = one(
        Service {
            external_ips: vec![ip("1.2.3.4")],
            ..firewalled.clone()
        },
        ep(),
    );
    let modes = Modes::new(&state, &config());
    differs(
        &modes,
        &outside("198.51.100.9", "1.2.3.4", 80),
        served,
        "drop 1.2.3.4:80 p=1.000",
    );
    assert_eq!(
        both(&modes, &outside("203.0.113.9", "1.2.3.4", 80)),
        [served]
    );
    // Two services: ns1/svc1's load-balancer IP is ns1/svc2's external IP.
    let other = Service {
        name: "svc2".into(),
        service_type: ServiceType::ClusterIp,
        cluster_ips: vec![ip("172.30.0.42")],
        external_ips: vec![ip("1.2.3.4")],
        ports: vec![ServicePort::tcp("p80", 80)],
        ..Service::default()
    };
    let other = Service {
        namespace: "ns1".into(),
        ..other
    };
    let state = crate::fixtures::state(
        vec![firewalled, other],
        vec![
            slice("ns1", "svc1", &[("p80", 80)], ep()),
            slice("ns1", "svc2", &[("p80", 80)], vec![ready("10.180.0.2")]),
        ],
    );
    let modes = Modes::new(&state, &config());
    differs(
        &modes,
        &outside("198.51.100.9", "1.2.3.4", 80),
        "accept 10.180.0.2:80 masquerade p=1.000",
        "drop 1.2.3.4:80 p=1.000",
    );
    assert_eq!(
        both(&modes, &outside("203.0.113.9", "1.2.3.4", 80)),
        [served]
    );
}
