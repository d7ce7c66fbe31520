//! What the proxy knows about its node and how it was told to behave.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::IpFamily;

/// How the compiler tells traffic from this cluster's pods apart from other traffic
/// (kube-proxy's `--detect-local-mode`). Off-cluster traffic to a cluster IP is
/// masqueraded; pod traffic to an external destination of an
/// `externalTrafficPolicy: Local` service is short-circuited to the cluster chain.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum LocalTrafficDetector {
    /// No detection (`None` mode): the off-cluster masquerade rule is not written.
    #[default]
    None,
    /// Pod traffic comes from these CIDRs (`ClusterCIDR` and `NodeCIDR` modes); at most
    /// one per IP family, the one of the proxy's family is used.
    Cidrs(Vec<IpNet>),
    /// Pod traffic enters through this bridge (`BridgeInterface` mode).
    BridgeInterface(String),
    /// Pod traffic enters through interfaces whose names start with this prefix
    /// (`InterfaceNamePrefix` mode).
    InterfaceNamePrefix(String),
}

/// One entry of kube-proxy's `--nodeport-addresses`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodePortAddress {
    /// Node addresses inside this CIDR accept node ports.
    Cidr(IpNet),
    /// The node's primary address of the proxy's family (`primary`).
    Primary,
}

/// The proxy's configuration: node facts and output options.
///
/// Built from [`Default`] with chained setters; the defaults are kube-proxy's.
///
/// ```
/// use svcnat::model::{IpFamily, ProxyConfig};
/// let config = ProxyConfig::default()
///     .with_node_name("node-a")
///     .with_node_ips(["192.168.0.2".parse().unwrap()])
///     .with_cluster_cidrs(["10.0.0.0/8".parse().unwrap()]);
/// assert_eq!(config.ip_family, IpFamily::Ipv4);
/// assert_eq!(config.masquerade_mark(), 0x4000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// This node's name (`--hostname-override`): endpoints on it are local.
    pub node_name: Option<String>,
    /// Every address of this node, of either family, the primary one first
    /// (`--node-ip`, plus loopback addresses if they should count).
    pub node_ips: Vec<IpAddr>,
    /// The family this ruleset is for; services and endpoints of the other family are skipped.
    pub ip_family: IpFamily,
    /// The bit of the packet mark that asks for masquerade (`--iptables-masquerade-bit`, 0-31).
    pub masquerade_bit: u8,
    /// Masquerade all traffic to cluster IPs (`--masquerade-all`).
    pub masquerade_all: bool,
    /// Add `--random-fully` to the MASQUERADE rule (iptables mode; nftables mode
    /// always writes `masquerade fully-random`, as kube-proxy does).
    pub masquerade_random_fully: bool,
    /// How pod traffic is recognised.
    pub local_traffic: LocalTrafficDetector,
    /// Which node addresses accept node ports (`--nodeport-addresses`); empty means all.
    pub nodeport_addresses: Vec<NodePortAddress>,
    /// Accept node ports on 127.0.0.0/8 (`--iptables-localhost-nodeports`); IPv4
    /// only, iptables mode only (kube-proxy's nftables mode never accepts them).
    pub localhost_nodeports: bool,
    /// The service CIDRs (kube-proxy's `--service-cluster-ip-range`, or the
    /// cluster's ServiceCIDR objects), of either family. nftables mode only: its
    /// `cluster-ips-check` chain drops traffic to an address in one of these CIDRs
    /// (of the proxy's family) that no service has, and writes no such rule when
    /// there is none. Empty by default.
    #[serde(default)]
    pub service_cidrs: Vec<IpNet>,
    /// Write `-m comment` matches (iptables mode; nftables mode always writes
    /// kube-proxy's few comments, none of them per endpoint).
    pub comments: bool,
    /// Above this many endpoints in all, drop the comments of per-endpoint rules, as
    /// kube-proxy does (its threshold is 1000); `None` never drops them. iptables
    /// mode only.
    pub large_cluster_endpoints: Option<usize>,
    /// If set, node ports outside this range are rejected (`--service-node-port-range`).
    pub node_port_range: Option<RangeInclusive<u16>>,
    /// Add kube-proxy's nfacct counter matches
    /// ([`NfacctCounter`](crate::ruleset::NfacctCounter):
    /// `ct_state_invalid_dropped_pkts` on the INVALID drop,
    /// `localhost_nps_accepted_pkts` on node ports reached on 127.0.0.0/8). The
    /// kernel refuses a rule whose counter does not exist, so the
    /// [`Syncer`](crate::sync::Syncer) has the executor create the counters a
    /// payload names before applying it
    /// ([`Executor::ensure_nfacct`](crate::exec::Executor::ensure_nfacct):
    /// [`IptablesRestore`](crate::exec::IptablesRestore) runs the `nfacct` tool
    /// inside the rules' namespace), and fails the sync, writing nothing, if it
    /// cannot. kube-proxy instead leaves out the matches of a counter it could not
    /// create. Whoever applies compiled rules some other way creates the counters
    /// first (`nfacct add NAME`). iptables mode only.
    pub nfacct_counters: bool,
    /// `nf_conntrack_tcp_be_liberal` is set, so the INVALID-drop rule is left out
    /// (iptables mode; nftables mode has no such rule).
    pub conntrack_tcp_be_liberal: bool,
    /// This node's `topology.kubernetes.io/zone`, for topology hints.
    pub node_zone: Option<String>,
    /// Honour per-node hints (kube-proxy's `PreferSameTrafficDistribution` gate).
    pub prefer_same_node_hints: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            node_name: None,
            node_ips: Vec::new(),
            ip_family: IpFamily::Ipv4,
            masquerade_bit: 14,
            masquerade_all: false,
            masquerade_random_fully: false,
            local_traffic: LocalTrafficDetector::None,
            nodeport_addresses: Vec::new(),
            localhost_nodeports: true,
            service_cidrs: Vec::new(),
            comments: true,
            large_cluster_endpoints: Some(1000),
            node_port_range: None,
            nfacct_counters: false,
            conntrack_tcp_be_liberal: false,
            node_zone: None,
            prefer_same_node_hints: true,
        }
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident, $field:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.$field = value;
            self
        }
    };
}

impl ProxyConfig {
    /// The masquerade mark value, `1 << masquerade_bit` (0 if the bit is out of range;
    /// [`crate::compile`] rejects such a config).
    pub fn masquerade_mark(&self) -> u32 {
        1u32.checked_shl(u32::from(self.masquerade_bit))
            .unwrap_or(0)
    }

    /// Sets this node's name.
    pub fn with_node_name(mut self, name: impl Into<String>) -> Self {
        self.node_name = Some(name.into());
        self
    }

    /// Sets this node's addresses, the primary one first.
    pub fn with_node_ips(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.node_ips = ips.into_iter().collect();
        self
    }

    /// Detects pod traffic by source CIDR (at most one per family).
    pub fn with_cluster_cidrs(mut self, cidrs: impl IntoIterator<Item = IpNet>) -> Self {
        self.local_traffic = LocalTrafficDetector::Cidrs(cidrs.into_iter().collect());
        self
    }

    /// Limits node ports to these addresses.
    pub fn with_nodeport_addresses(
        mut self,
        addresses: impl IntoIterator<Item = NodePortAddress>,
    ) -> Self {
        self.nodeport_addresses = addresses.into_iter().collect();
        self
    }

    /// Sets the service CIDRs (`--service-cluster-ip-range`), of either family.
    pub fn with_service_cidrs(mut self, cidrs: impl IntoIterator<Item = IpNet>) -> Self {
        self.service_cidrs = cidrs.into_iter().collect();
        self
    }

    /// Sets the node's zone.
    pub fn with_node_zone(mut self, zone: impl Into<String>) -> Self {
        self.node_zone = Some(zone.into());
        self
    }

    setter!(
        /// Sets the family the ruleset is for.
        with_ip_family, ip_family: IpFamily
    );
    setter!(
        /// Sets the masquerade bit (0-31).
        with_masquerade_bit, masquerade_bit: u8
    );
    setter!(
        /// Masquerades all cluster-IP traffic.
        with_masquerade_all, masquerade_all: bool
    );
    setter!(
        /// Adds `--random-fully` to MASQUERADE.
        with_masquerade_random_fully, masquerade_random_fully: bool
    );
    setter!(
        /// Sets how pod traffic is recognised.
        with_local_traffic, local_traffic: LocalTrafficDetector
    );
    setter!(
        /// Accepts node ports on localhost (IPv4).
        with_localhost_nodeports, localhost_nodeports: bool
    );
    setter!(
        /// Writes comments or not.
        with_comments, comments: bool
    );
    setter!(
        /// Sets the endpoint count above which per-endpoint comments are dropped.
        with_large_cluster_endpoints, large_cluster_endpoints: Option<usize>
    );
    setter!(
        /// Rejects node ports outside this range.
        with_node_port_range, node_port_range: Option<RangeInclusive<u16>>
    );
    setter!(
        /// Adds kube-proxy's nfacct counter matches.
        with_nfacct_counters, nfacct_counters: bool
    );
    setter!(
        /// Leaves out the INVALID-drop rule.
        with_conntrack_tcp_be_liberal, conntrack_tcp_be_liberal: bool
    );
    setter!(
        /// Honours per-node topology hints.
        with_prefer_same_node_hints, prefer_same_node_hints: bool
    );
}
