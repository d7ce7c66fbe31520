//! Services and their ports.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::ParseValueError;

/// The namespace and name of a Service: kube-proxy's `NamespacedName`.
///
/// Ordered by namespace, then name; this is the order in which the compiler
/// visits services.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
}

impl ServiceKey {
    /// A key from a namespace and a name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Reads `namespace/name`, as [`ServiceKey`]'s `Display` writes it: exactly one
/// slash, with a non-empty part on each side. The parts are not checked further.
///
/// ```
/// use svcnat::model::ServiceKey;
/// let key: ServiceKey = "kube-system/kube-dns".parse()?;
/// assert_eq!(key, ServiceKey::new("kube-system", "kube-dns"));
/// assert!("kube-dns".parse::<ServiceKey>().is_err());
/// assert!("a/b/c".parse::<ServiceKey>().is_err());
/// # Ok::<(), svcnat::ParseValueError>(())
/// ```
impl FromStr for ServiceKey {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(ServiceKey::new(namespace, name))
            }
            _ => Err(ParseValueError::new(s, "a service key (namespace/name)")),
        }
    }
}

/// The Service's `spec.type`. ExternalName services carry no rules and are not modelled.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[non_exhaustive]
pub enum ServiceType {
    /// Reachable on its cluster IPs only.
    #[default]
    #[serde(rename = "ClusterIP")]
    ClusterIp,
    /// Also reachable on a port of every node.
    NodePort,
    /// Also reachable on load-balancer ingress IPs (and on node ports).
    LoadBalancer,
}

/// A transport protocol a service port uses.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum Protocol {
    /// TCP, the Kubernetes default.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The lower-case name iptables uses (`tcp`, `udp`, `sctp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads iptables' `tcp`, `udp`, `sctp` or Kubernetes' `TCP`, `UDP`, `SCTP`.
///
/// ```
/// use svcnat::model::Protocol;
/// assert_eq!("udp".parse(), Ok(Protocol::Udp));
/// assert_eq!("SCTP".parse(), Ok(Protocol::Sctp));
/// assert!("Tcp".parse::<Protocol>().is_err());
/// ```
impl FromStr for Protocol {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" | "TCP" => Ok(Protocol::Tcp),
            "udp" | "UDP" => Ok(Protocol::Udp),
            "sctp" | "SCTP" => Ok(Protocol::Sctp),
            _ => Err(ParseValueError::new(s, "a protocol (tcp, udp or sctp)")),
        }
    }
}

/// A service port's `targetPort`: a number, or the name of a container port.
///
/// The compiler does not read it: the port an endpoint listens on comes from its
/// endpoint slice, exactly as in kube-proxy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A named container port.
    Name(String),
}

/// One entry of a Service's `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct ServicePort {
    /// The port's name; empty for the single unnamed port a Service may have.
    #[serde(default)]
    pub name: String,
    /// The transport protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// The port on the cluster IP (and external IPs, load-balancer IPs).
    pub port: u16,
    /// Where the traffic goes on the endpoints; informational (see [`TargetPort`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<TargetPort>,
    /// The node port, for NodePort and LoadBalancer services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

impl ServicePort {
    /// A TCP port with the given name and number.
    pub fn tcp(name: impl Into<String>, port: u16) -> Self {
        ServicePort::new(name, Protocol::Tcp, port)
    }

    /// A UDP port with the given name and number.
    ///
    /// ```
    /// use svcnat::model::{Protocol, ServicePort};
    /// let dns = ServicePort::udp("dns", 53);
    /// assert_eq!((dns.protocol, dns.port), (Protocol::Udp, 53));
    /// ```
    pub fn udp(name: impl Into<String>, port: u16) -> Self {
        ServicePort::new(name, Protocol::Udp, port)
    }

    /// An SCTP port with the given name and number.
    pub fn sctp(name: impl Into<String>, port: u16) -> Self {
        ServicePort::new(name, Protocol::Sctp, port)
    }

    /// A port with the given name, protocol and number, no target port and no
    /// node port.
    pub fn new(name: impl Into<String>, protocol: Protocol, port: u16) -> Self {
        ServicePort {
            name: name.into(),
            protocol,
            port,
            ..ServicePort::default()
        }
    }

    /// The same port with another protocol.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The same port with a node port.
    pub fn with_node_port(mut self, node_port: u16) -> Self {
        self.node_port = Some(node_port);
        self
    }
}

/// `spec.sessionAffinity` with its timeout.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub enum SessionAffinity {
    /// No affinity: every connection is balanced afresh.
    #[default]
    None,
    /// A client IP sticks to one endpoint for `timeout_seconds` after its last packet.
    #[serde(rename = "ClientIP")]
    ClientIp {
        /// `sessionAffinityConfig.clientIP.timeoutSeconds` (Kubernetes defaults it to 10800).
        timeout_seconds: u32,
    },
}

/// `spec.externalTrafficPolicy` or `spec.internalTrafficPolicy`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on this node.
    Local,
}

/// `status.loadBalancer.ingress[].ipMode`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[non_exhaustive]
pub enum IpMode {
    /// The load balancer delivers packets with the VIP as destination (the default).
    #[default]
    #[serde(rename = "VIP")]
    Vip,
    /// The load balancer proxies; kube-proxy installs no rules for such an IP.
    Proxy,
}

/// One load-balancer ingress entry that has an IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LoadBalancerIngress {
    /// The ingress IP.
    pub ip: IpAddr,
    /// How the load balancer delivers traffic to it.
    #[serde(default)]
    pub ip_mode: IpMode,
}

/// A Kubernetes Service, reduced to what kube-proxy reads from it.
///
/// ```
/// use svcnat::model::{Service, ServicePort};
/// let svc = Service::cluster_ip("ns1", "svc1", "172.30.0.41".parse().unwrap())
///     .with_port(ServicePort::tcp("p80", 80));
/// assert_eq!(svc.key().to_string(), "ns1/svc1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Service {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.type`.
    #[serde(default, rename = "type")]
    pub service_type: ServiceType,
    /// `spec.clusterIPs`: at most one per IP family. Empty for a headless service,
    /// which gets no rules.
    #[serde(default)]
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ports`.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `spec.sessionAffinity` and its timeout.
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    /// `spec.externalTrafficPolicy`.
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    #[serde(default)]
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.externalIPs`.
    #[serde(default)]
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress` entries that carry an IP.
    #[serde(default)]
    pub load_balancer_ingress: Vec<LoadBalancerIngress>,
    /// `spec.loadBalancerSourceRanges`.
    #[serde(default)]
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `spec.healthCheckNodePort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<u16>,
}

impl Service {
    /// A ClusterIP service with one cluster IP and no ports yet.
    pub fn cluster_ip(namespace: impl Into<String>, name: impl Into<String>, ip: IpAddr) -> Self {
        Service {
            namespace: namespace.into(),
            name: name.into(),
            cluster_ips: vec![ip],
            ..Service::default()
        }
    }

    /// This service's key.
    pub fn key(&self) -> ServiceKey {
        ServiceKey::new(self.namespace.clone(), self.name.clone())
    }

    /// The same service with another type.
    pub fn with_type(mut self, service_type: ServiceType) -> Self {
        self.service_type = service_type;
        self
    }

    /// The same service with one more port.
    pub fn with_port(mut self, port: ServicePort) -> Self {
        self.ports.push(port);
        self
    }
}
