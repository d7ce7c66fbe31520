//! What kube-proxy's nftables mode writes whatever the services (its
//! `setupNFTables`): the table, the base chains and their jumps, masquerading,
//! the reject helper, the checks of the filter hooks, and the empty sets and maps
//! the services fill.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};

use crate::compile::context::{Context, LOCAL_TRAFFIC, PodTraffic, config_err};
use crate::error::CompileError;
use crate::model::{IpFamily, ProxyConfig};
use crate::nft::{
    AddrValue, BaseChain, Chain, ChainType, Dir, Element, Family, Hook, IfName, KeyField, KeyType,
    KeyValue, Map, MarkOp, Name, NftComment, Op, Rule, Ruleset, Set, Stmt, Verdict,
};

/// The table's name.
pub(crate) const TABLE: &str = "kube-proxy";
/// The chain that sets the masquerade mark.
pub(crate) const MARK_MASQ: &str = "mark-for-masquerade";
/// The chain that rejects what a no-endpoints map sends to it.
pub(crate) const REJECT_CHAIN: &str = "reject-chain";
/// The set of every cluster IP.
pub(crate) const CLUSTER_IPS: &str = "cluster-ips";
/// The node addresses that accept node ports (unless all do).
const NODEPORT_IPS: &str = "nodeport-ips";
const SERVICES: &str = "services";
const MASQUERADING: &str = "masquerading";
const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
const FIREWALL_CHECK: &str = "firewall-check";

/// The verdict maps the services fill, one per kind of destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum MapId {
    /// `service-ips`: cluster, external and load-balancer IPs with endpoints.
    ServiceIps,
    /// `service-nodeports`: node ports with endpoints.
    ServiceNodePorts,
    /// `no-endpoint-services`: destinations without (usable) endpoints.
    NoEndpointServices,
    /// `no-endpoint-nodeports`: node ports without (usable) endpoints.
    NoEndpointNodePorts,
    /// `firewall-ips`: load-balancer IPs with source ranges.
    FirewallIps,
}

impl MapId {
    /// The map's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            MapId::ServiceIps => "service-ips",
            MapId::ServiceNodePorts => "service-nodeports",
            MapId::NoEndpointServices => "no-endpoint-services",
            MapId::NoEndpointNodePorts => "no-endpoint-nodeports",
            MapId::FirewallIps => "firewall-ips",
        }
    }

    /// Keyed by destination address, protocol and port; else by protocol and port.
    fn by_address(self) -> bool {
        !matches!(self, MapId::ServiceNodePorts | MapId::NoEndpointNodePorts)
    }

    fn comment(self) -> &'static str {
        match self {
            MapId::ServiceIps => "ClusterIP, ExternalIP and LoadBalancer IP traffic",
            MapId::ServiceNodePorts => "NodePort traffic",
            MapId::NoEndpointServices => {
                "vmap to drop or reject packets to services with no endpoints"
            }
            MapId::NoEndpointNodePorts => {
                "vmap to drop or reject packets to service nodeports with no endpoints"
            }
            MapId::FirewallIps => "destinations that are subject to LoadBalancerSourceRanges",
        }
    }

    pub(crate) const ALL: [MapId; 5] = [
        MapId::ServiceIps,
        MapId::ServiceNodePorts,
        MapId::NoEndpointServices,
        MapId::NoEndpointNodePorts,
        MapId::FirewallIps,
    ];
}

/// The config, checked, with what the nftables rules derive from it.
#[derive(Debug, Clone)]
pub(crate) struct NftContext {
    /// What both modes derive (node, policies, topology).
    pub base: Context,
    /// The table's family.
    pub family: Family,
    /// Matches pod traffic (`ip saddr 10.0.0.0/8`, `iifname cbr0`, `iifname veth*`).
    pub if_local: Option<Stmt>,
    /// Matches traffic not from a pod.
    pub if_not_local: Option<Stmt>,
    /// The service CIDRs of the family, host bits cleared, in the order given.
    service_cidrs: Vec<IpNet>,
    /// The node addresses that accept node ports, loopback left out; `None` when
    /// every local address does (no `--nodeport-addresses` filter).
    nodeport_ips: Option<Vec<IpAddr>>,
}

impl NftContext {
    /// Checks `config` as the iptables mode does, then what only nftables needs.
    ///
    /// # Errors
    /// [`CompileError::Config`] naming the field.
    pub(crate) fn new(config: &ProxyConfig) -> Result<Self, CompileError> {
        let base = Context::new(config)?;
        let family = match base.family {
            IpFamily::Ipv4 => Family::Ip,
            IpFamily::Ipv6 => Family::Ip6,
        };
        let (if_local, if_not_local) = match &base.pod {
            None => (None, None),
            Some(PodTraffic::Source(net)) => {
                let source = |op| Stmt::Addr {
                    dir: Dir::Saddr,
                    op,
                    value: AddrValue::Net(*net),
                };
                (Some(source(Op::Eq)), Some(source(Op::Ne)))
            }
            Some(PodTraffic::Interface { name, prefix }) => {
                let name =
                    IfName::new(name.clone(), *prefix).map_err(|e| config_err(LOCAL_TRAFFIC, e))?;
                let iif = |op| Stmt::Iifname {
                    op,
                    name: name.clone(),
                };
                (Some(iif(Op::Eq)), Some(iif(Op::Ne)))
            }
        };
        let service_cidrs = config
            .service_cidrs
            .iter()
            .filter(|c| base.family.contains(&c.addr()))
            .map(IpNet::trunc)
            .collect();
        // kube-proxy's nftables mode has no localhost node ports.
        let nodeport_ips = (!base.nodeport_all).then(|| {
            base.nodeport_ips
                .iter()
                .copied()
                .filter(|ip| !ip.is_loopback())
                .collect()
        });
        Ok(NftContext {
            base,
            family,
            if_local,
            if_not_local,
            service_cidrs,
            nodeport_ips,
        })
    }

    /// `jump mark-for-masquerade`.
    pub(crate) fn mark_masq(&self) -> Stmt {
        Stmt::Verdict(Verdict::Jump(Name::fixed(MARK_MASQ)))
    }
}

/// The base chains: name, type, hook, priority (`dstnat - 10` is -110).
const BASE_CHAINS: [(&str, ChainType, Hook, i32); 8] = [
    (
        "filter-prerouting-pre-dnat",
        ChainType::Filter,
        Hook::Prerouting,
        -110,
    ),
    (
        "filter-output-pre-dnat",
        ChainType::Filter,
        Hook::Output,
        -110,
    ),
    ("filter-input", ChainType::Filter, Hook::Input, 0),
    ("filter-forward", ChainType::Filter, Hook::Forward, 0),
    ("filter-output", ChainType::Filter, Hook::Output, 0),
    ("nat-prerouting", ChainType::Nat, Hook::Prerouting, -100),
    ("nat-output", ChainType::Nat, Hook::Output, -100),
    ("nat-postrouting", ChainType::Nat, Hook::Postrouting, 100),
];

/// The jumps from the base chains, in kube-proxy's order: target, base chain, and
/// whether only new connections jump.
const JUMPS: [(&str, &str, bool); 11] = [
    (NODEPORT_ENDPOINTS_CHECK, "filter-input", true),
    (SERVICE_ENDPOINTS_CHECK, "filter-input", true),
    (SERVICE_ENDPOINTS_CHECK, "filter-forward", true),
    (SERVICE_ENDPOINTS_CHECK, "filter-output", true),
    (FIREWALL_CHECK, "filter-prerouting-pre-dnat", true),
    (FIREWALL_CHECK, "filter-output-pre-dnat", true),
    (SERVICES, "nat-output", false),
    (SERVICES, "nat-prerouting", false),
    (MASQUERADING, "nat-postrouting", false),
    (CLUSTER_IPS_CHECK, "filter-forward", true),
    (CLUSTER_IPS_CHECK, "filter-output", true),
];

fn comment(text: &'static str) -> Option<NftComment> {
    // Every fixed comment is printable ASCII under 128 bytes; a unit test checks.
    NftComment::new(text).ok()
}

/// `ip daddr VALUE` / `ip daddr != VALUE`.
fn daddr(op: Op, value: AddrValue) -> Stmt {
    Stmt::Addr {
        dir: Dir::Daddr,
        op,
        value,
    }
}

fn vmap(key: Vec<KeyField>, map: MapId) -> Stmt {
    Stmt::Vmap {
        key,
        map: Name::fixed(map.name()),
    }
}

/// `ip daddr . meta l4proto . th dport vmap @MAP`.
fn by_destination(map: MapId) -> Stmt {
    vmap(
        vec![KeyField::Daddr, KeyField::L4Proto, KeyField::ThDport],
        map,
    )
}

/// `meta l4proto . th dport vmap @MAP`.
fn by_port(map: MapId) -> Stmt {
    vmap(vec![KeyField::L4Proto, KeyField::ThDport], map)
}

/// The table with everything that does not depend on the services, its sets and
/// maps empty but for `nodeport-ips`.
pub(crate) fn table(ctx: &NftContext) -> Ruleset {
    let family = ctx.family;
    let mut rs = Ruleset::new(family, Name::fixed(TABLE), comment("rules for kube-proxy"));
    let mut add = |name: &'static str, chain: Chain| {
        rs.chains.insert(Name::fixed(name), chain);
    };
    for (name, kind, hook, priority) in BASE_CHAINS {
        add(
            name,
            Chain {
                base: Some(BaseChain {
                    kind,
                    hook,
                    priority,
                }),
                ..Chain::default()
            },
        );
    }
    for name in [
        NODEPORT_ENDPOINTS_CHECK,
        SERVICE_ENDPOINTS_CHECK,
        FIREWALL_CHECK,
        SERVICES,
        MASQUERADING,
        CLUSTER_IPS_CHECK,
        MARK_MASQ,
    ] {
        add(name, Chain::default());
    }
    add(
        REJECT_CHAIN,
        Chain {
            comment: comment("helper for @no-endpoint-services / @no-endpoint-nodeports"),
            rules: vec![Rule::new(vec![Stmt::Verdict(Verdict::Reject)])],
            ..Chain::default()
        },
    );
    let mut rule = |chain: &str, stmts: Vec<Stmt>, note: Option<NftComment>| {
        if let Some(c) = rs.chains.get_mut(chain) {
            c.rules.push(Rule {
                stmts,
                comment: note,
            });
        }
    };
    for (target, from, new_only) in JUMPS {
        let jump = Stmt::Verdict(Verdict::Jump(Name::fixed(target)));
        let stmts = match new_only {
            true => vec![Stmt::CtStateNew, jump],
            false => vec![jump],
        };
        rule(from, stmts, None);
    }
    let bits = ctx.base.mark;
    rule(
        MARK_MASQ,
        vec![Stmt::MarkSet {
            op: MarkOp::Or,
            bits,
        }],
        None,
    );
    rule(
        MASQUERADING,
        vec![
            Stmt::MarkAnd { bits, value: 0 },
            Stmt::Verdict(Verdict::Return),
        ],
        None,
    );
    rule(
        MASQUERADING,
        vec![Stmt::MarkSet {
            op: MarkOp::Xor,
            bits,
        }],
        None,
    );
    rule(
        MASQUERADING,
        vec![Stmt::Masquerade { fully_random: true }],
        None,
    );
    rule(
        CLUSTER_IPS_CHECK,
        vec![
            daddr(Op::Eq, AddrValue::Set(Name::fixed(CLUSTER_IPS))),
            Stmt::Verdict(Verdict::Reject),
        ],
        comment("Reject traffic to invalid ports of ClusterIPs"),
    );
    if !ctx.service_cidrs.is_empty() {
        rule(
            CLUSTER_IPS_CHECK,
            vec![
                daddr(Op::Eq, AddrValue::Cidrs(ctx.service_cidrs.clone())),
                Stmt::Verdict(Verdict::Drop),
            ],
            comment("Drop traffic to unallocated ClusterIPs"),
        );
    }
    // Node ports: to the listed node addresses, or to any local address but
    // loopback.
    let node_port_daddr = match &ctx.nodeport_ips {
        Some(_) => vec![daddr(Op::Eq, AddrValue::Set(Name::fixed(NODEPORT_IPS)))],
        None => vec![daddr(
            Op::Ne,
            match family {
                Family::Ip => AddrValue::Net(IpNet::V4(Ipv4Net::new_assert(
                    Ipv4Addr::new(127, 0, 0, 0),
                    8,
                ))),
                Family::Ip6 => AddrValue::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            },
        )],
    };
    rule(
        SERVICE_ENDPOINTS_CHECK,
        vec![by_destination(MapId::NoEndpointServices)],
        None,
    );
    let mut stmts = node_port_daddr.clone();
    stmts.push(by_port(MapId::NoEndpointNodePorts));
    rule(NODEPORT_ENDPOINTS_CHECK, stmts, None);
    rule(
        FIREWALL_CHECK,
        vec![by_destination(MapId::FirewallIps)],
        None,
    );
    rule(SERVICES, vec![by_destination(MapId::ServiceIps)], None);
    let mut stmts = Vec::with_capacity(3);
    if ctx.nodeport_ips.is_none() {
        stmts.push(Stmt::FibLocal(Dir::Daddr));
    }
    stmts.extend(node_port_daddr);
    stmts.push(by_port(MapId::ServiceNodePorts));
    rule(SERVICES, stmts, None);

    let addr = family.addr_type();
    rs.sets.insert(
        Name::fixed(CLUSTER_IPS),
        Set::new(vec![addr], comment("Active ClusterIPs")),
    );
    if let Some(ips) = &ctx.nodeport_ips {
        let mut set = Set::new(vec![addr], comment("IPs that accept NodePort traffic"));
        set.elements = ips
            .iter()
            .map(|ip| Element {
                key: vec![KeyValue::Addr(*ip)],
                comment: None,
            })
            .collect();
        rs.sets.insert(Name::fixed(NODEPORT_IPS), set);
    }
    for map in MapId::ALL {
        let key = match map.by_address() {
            true => vec![addr, KeyType::InetProto, KeyType::InetService],
            false => vec![KeyType::InetProto, KeyType::InetService],
        };
        rs.maps.insert(
            Name::fixed(map.name()),
            Map::new(key, comment(map.comment())),
        );
    }
    rs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_names_and_comments_are_valid() {
        let names = BASE_CHAINS
            .iter()
            .map(|c| c.0)
            .chain(JUMPS.iter().flat_map(|j| [j.0, j.1]))
            .chain(MapId::ALL.iter().map(|m| m.name()))
            .chain([TABLE, MARK_MASQ, REJECT_CHAIN, CLUSTER_IPS, NODEPORT_IPS]);
        for name in names {
            assert!(Name::new(name).is_ok(), "{name}");
        }
        for map in MapId::ALL {
            assert!(NftComment::new(map.comment()).is_ok(), "{map:?}");
        }
        for text in [
            "rules for kube-proxy",
            "helper for @no-endpoint-services / @no-endpoint-nodeports",
            "Reject traffic to invalid ports of ClusterIPs",
            "Drop traffic to unallocated ClusterIPs",
            "Active ClusterIPs",
            "IPs that accept NodePort traffic",
        ] {
            assert!(NftComment::new(text).is_ok(), "{text}");
        }
    }
}
