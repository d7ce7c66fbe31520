//! What the rule builders need from the [`ProxyConfig`], checked and derived once.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use crate::error::{CompileError, Problem};
use crate::model::{IpFamily, LocalTrafficDetector, NodePortAddress, ProxyConfig};
use crate::ruleset::{Address, Comment, Interface, Match, Not};

/// The config, validated, with everything the builders derive from it.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub family: IpFamily,
    pub mark: u32,
    pub node_name: Option<String>,
    /// The primary node address of this family (for the load-balancer allow-from-node rule).
    pub primary_ip: Option<IpAddr>,
    pub masquerade_all: bool,
    pub random_fully: bool,
    /// How pod traffic is recognised, for either backend; `None` when no detector
    /// is configured (or none of the proxy's family).
    pub pod: Option<PodTraffic>,
    /// Matches pod traffic; `None` when no detector is configured.
    pub if_local: Option<Match>,
    /// Matches traffic that is not from a pod.
    pub if_not_local: Option<Match>,
    /// Localhost node ports in effect (IPv4, enabled, and 127.0.0.1 inside the node-port addresses).
    pub localhost_nodeports: bool,
    /// No node-port address filter: every local address accepts node ports.
    pub nodeport_all: bool,
    /// With a filter: the node addresses that accept node ports, sorted.
    pub nodeport_ips: Vec<IpAddr>,
    pub comments: bool,
    /// Comments on per-endpoint rules (off in large clusters).
    pub endpoint_comments: bool,
    pub large_cluster_endpoints: Option<usize>,
    pub nfacct: bool,
    pub tcp_liberal: bool,
    pub zone: Option<String>,
    pub prefer_same_node: bool,
}

pub(crate) fn config_err(field: &'static str, problem: impl Into<Problem>) -> CompileError {
    CompileError::Config {
        field,
        problem: problem.into(),
    }
}

/// Checks a config as every compile does, without compiling: an embedder (or a
/// command line) can refuse a bad config before it reads any cluster data.
///
/// ```
/// use svcnat::model::ProxyConfig;
/// let config = ProxyConfig::default()
///     .with_cluster_cidrs(["10.0.0.0/16".parse().unwrap(), "10.1.0.0/16".parse().unwrap()]);
/// let err = svcnat::compile::check_config(&config).unwrap_err();
/// assert_eq!(err.to_string(), "config: local_traffic: more than one IPv4 value");
/// ```
///
/// # Errors
/// The [`CompileError::Config`] a compile with this config would return.
pub fn check_config(config: &ProxyConfig) -> Result<(), CompileError> {
    Context::new(config).map(drop)
}

impl Context {
    pub fn new(config: &ProxyConfig) -> Result<Self, CompileError> {
        let family = config.ip_family;
        if config.masquerade_bit > 31 {
            return Err(config_err(
                "masquerade_bit",
                Problem::OutOfRange {
                    value: i64::from(config.masquerade_bit),
                    range: "0-31",
                },
            ));
        }
        if let Some(range) = &config.node_port_range
            && (range.start() > range.end() || *range.start() == 0)
        {
            return Err(config_err(
                "node_port_range",
                Problem::Unsupported {
                    value: format!("{}-{}", range.start(), range.end()),
                },
            ));
        }
        let primary_ip = config
            .node_ips
            .iter()
            .copied()
            .find(|ip| family.contains(ip));
        let pod = detector(&config.local_traffic, family)?;
        let (if_local, if_not_local) = match &pod {
            None => (None, None),
            Some(pod) => {
                let (is, is_not) = pod.iptables()?;
                (Some(is), Some(is_not))
            }
        };

        // kube-proxy's NodePortAddresses: entries of this family ("primary" is the
        // primary node IP); none left, or a zero CIDR, means every address.
        let mut cidrs: Vec<IpNet> = Vec::new();
        for entry in &config.nodeport_addresses {
            match entry {
                NodePortAddress::Cidr(net) if family.contains(&net.addr()) => {
                    cidrs.push(net.trunc())
                }
                NodePortAddress::Cidr(_) => {}
                NodePortAddress::Primary => {
                    if let Some(ip) = primary_ip {
                        cidrs.push(IpNet::from(ip));
                    }
                }
            }
        }
        let nodeport_all = cidrs.is_empty() || cidrs.iter().any(|c| c.prefix_len() == 0);
        // kube-proxy: a CIDR inside 127.0.0.0/8, or one that holds 127.0.0.0.
        let loopback_start = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0));
        let contains_loopback4 = family == IpFamily::Ipv4
            && (nodeport_all
                || cidrs
                    .iter()
                    .any(|c| c.network().is_loopback() || c.contains(&loopback_start)));
        let localhost_nodeports = config.localhost_nodeports && contains_loopback4;
        let mut nodeport_ips: Vec<IpAddr> = if nodeport_all {
            Vec::new()
        } else {
            config
                .node_ips
                .iter()
                .copied()
                .filter(|ip| family.contains(ip) && cidrs.iter().any(|c| c.contains(ip)))
                .filter(|ip| !ip.is_loopback() || localhost_nodeports)
                .collect()
        };
        nodeport_ips.sort();
        nodeport_ips.dedup();

        Ok(Context {
            family,
            mark: config.masquerade_mark(),
            node_name: config.node_name.clone(),
            primary_ip,
            pod,
            masquerade_all: config.masquerade_all,
            random_fully: config.masquerade_random_fully,
            if_local,
            if_not_local,
            localhost_nodeports,
            nodeport_all,
            nodeport_ips,
            comments: config.comments,
            endpoint_comments: config.comments,
            large_cluster_endpoints: config.large_cluster_endpoints,
            nfacct: config.nfacct_counters,
            tcp_liberal: config.conntrack_tcp_be_liberal,
            zone: config.node_zone.clone(),
            prefer_same_node: config.prefer_same_node_hints,
        })
    }

    /// The context for a cluster with `total` endpoints: per-endpoint comments are
    /// dropped above the large-cluster threshold.
    pub fn for_endpoint_total(mut self, total: usize) -> Self {
        self.endpoint_comments = self.comments
            && self
                .large_cluster_endpoints
                .is_none_or(|limit| total <= limit);
        self
    }

    /// A comment match of `parts` joined, or nothing when comments are off.
    pub fn comment(&self, parts: &[&str]) -> Result<Option<Match>, Problem> {
        if !self.comments {
            return Ok(None);
        }
        Ok(Some(Match::Comment(Comment::from_parts(parts)?)))
    }

    /// A comment match for a per-endpoint rule (dropped in large clusters).
    pub fn endpoint_comment(&self, parts: &[&str]) -> Result<Option<Match>, Problem> {
        if !self.endpoint_comments {
            return Ok(None);
        }
        self.comment(parts)
    }
}

/// What marks pod traffic, as kube-proxy's local-traffic detectors see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PodTraffic {
    /// Pod traffic comes from this CIDR (host bits cleared).
    Source(IpNet),
    /// Pod traffic enters through this interface, or (`prefix`) any interface
    /// whose name starts with it.
    Interface { name: String, prefix: bool },
}

impl PodTraffic {
    /// The iptables IfLocal and IfNotLocal matches.
    fn iptables(&self) -> Result<(Match, Match), CompileError> {
        Ok(match self {
            PodTraffic::Source(net) => {
                let addr = Address::Net(*net);
                (
                    Match::Source(Not::is(addr)),
                    Match::Source(Not::is_not(addr)),
                )
            }
            PodTraffic::Interface { name, prefix } => {
                let iface = Interface::new(name.clone(), *prefix)
                    .map_err(|e| config_err(LOCAL_TRAFFIC, e))?;
                (
                    Match::InInterface(Not::is(iface.clone())),
                    Match::InInterface(Not::is_not(iface)),
                )
            }
        })
    }
}

/// The config field of the local-traffic detector, for its errors.
pub(crate) const LOCAL_TRAFFIC: &str = "local_traffic";

/// The detector of kube-proxy's `--detect-local-mode` for `family`: `None` when
/// there is none, or no CIDR of the family.
fn detector(
    detector: &LocalTrafficDetector,
    family: IpFamily,
) -> Result<Option<PodTraffic>, CompileError> {
    Ok(match detector {
        LocalTrafficDetector::None => None,
        LocalTrafficDetector::Cidrs(cidrs) => {
            let mine: Vec<&IpNet> = cidrs
                .iter()
                .filter(|c| family.contains(&c.addr()))
                .collect();
            if mine.len() > 1 {
                return Err(config_err(
                    LOCAL_TRAFFIC,
                    Problem::DuplicateFamily { family },
                ));
            }
            mine.first().map(|net| PodTraffic::Source(net.trunc()))
        }
        LocalTrafficDetector::BridgeInterface(name) => Some(PodTraffic::Interface {
            name: name.clone(),
            prefix: false,
        }),
        LocalTrafficDetector::InterfaceNamePrefix(prefix) => Some(PodTraffic::Interface {
            name: prefix.clone(),
            prefix: true,
        }),
    })
}
