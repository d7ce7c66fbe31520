//! Endpoint slices: where a service's traffic can go.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{IpFamily, Protocol, ServiceKey};

/// `endpoints[].conditions`, with Kubernetes' defaulting already applied
/// (a missing `ready` or `serving` means true, a missing `terminating` false).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Conditions {
    /// The endpoint is ready for new connections.
    pub ready: bool,
    /// The endpoint can serve, even if it is terminating.
    pub serving: bool,
    /// The endpoint is shutting down.
    pub terminating: bool,
}

impl Default for Conditions {
    fn default() -> Self {
        Conditions::READY
    }
}

impl Conditions {
    /// Ready, serving, not terminating.
    pub const READY: Conditions = Conditions {
        ready: true,
        serving: true,
        terminating: false,
    };
    /// Shutting down but still serving: used only when nothing is ready.
    pub const SERVING_TERMINATING: Conditions = Conditions {
        ready: false,
        serving: true,
        terminating: true,
    };
    /// Not usable at all.
    pub const NOT_READY: Conditions = Conditions {
        ready: false,
        serving: false,
        terminating: false,
    };
}

/// `endpoints[].hints`: topology-aware routing hints.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Hints {
    /// `forZones[].name`.
    #[serde(default)]
    pub for_zones: Vec<String>,
    /// `forNodes[].name`.
    #[serde(default)]
    pub for_nodes: Vec<String>,
}

impl Hints {
    /// True when there are no hints of either kind.
    pub fn is_empty(&self) -> bool {
        self.for_zones.is_empty() && self.for_nodes.is_empty()
    }
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// `addresses[0]`; kube-proxy uses only the first address.
    pub address: IpAddr,
    /// `conditions`.
    #[serde(default)]
    pub conditions: Conditions,
    /// `nodeName`: endpoints on the proxy's own node are "local".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// `zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// `hints`.
    #[serde(default, skip_serializing_if = "Hints::is_empty")]
    pub hints: Hints,
}

impl Endpoint {
    /// A ready endpoint with no node, zone or hints.
    pub fn ready(address: IpAddr) -> Self {
        Endpoint {
            address,
            conditions: Conditions::READY,
            node_name: None,
            zone: None,
            hints: Hints::default(),
        }
    }

    /// The same endpoint with other conditions.
    pub fn with_conditions(mut self, conditions: Conditions) -> Self {
        self.conditions = conditions;
        self
    }

    /// The same endpoint on a node.
    pub fn on_node(mut self, node: impl Into<String>) -> Self {
        self.node_name = Some(node.into());
        self
    }
}

/// One entry of a slice's `ports`: the number endpoints listen on for the
/// service port of the same name and protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointPort {
    /// Matches a service port's `name` (empty for an unnamed port).
    #[serde(default)]
    pub name: String,
    /// Matches a service port's `protocol`.
    #[serde(default)]
    pub protocol: Protocol,
    /// The port the endpoints listen on.
    pub port: u16,
}

impl EndpointPort {
    /// A TCP endpoint port.
    pub fn tcp(name: impl Into<String>, port: u16) -> Self {
        EndpointPort::new(name, Protocol::Tcp, port)
    }

    /// A UDP endpoint port.
    ///
    /// ```
    /// use svcnat::model::{EndpointPort, Protocol};
    /// let dns = EndpointPort::udp("dns", 5353);
    /// assert_eq!((dns.protocol, dns.port), (Protocol::Udp, 5353));
    /// ```
    pub fn udp(name: impl Into<String>, port: u16) -> Self {
        EndpointPort::new(name, Protocol::Udp, port)
    }

    /// An SCTP endpoint port.
    pub fn sctp(name: impl Into<String>, port: u16) -> Self {
        EndpointPort::new(name, Protocol::Sctp, port)
    }

    /// An endpoint port with the given name, protocol and number.
    pub fn new(name: impl Into<String>, protocol: Protocol, port: u16) -> Self {
        EndpointPort {
            name: name.into(),
            protocol,
            port,
        }
    }
}

/// The namespace and name of an EndpointSlice: its identity in Kubernetes, which
/// stays when its `kubernetes.io/service-name` label changes.
///
/// ```
/// use svcnat::model::{EndpointSlice, IpFamily, SliceKey};
/// let slice = EndpointSlice::new("ns1", "svc1", "svc1-abcde", IpFamily::Ipv4);
/// assert_eq!(slice.key(), SliceKey::new("ns1", "svc1-abcde"));
/// assert_eq!(slice.key().to_string(), "ns1/svc1-abcde");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SliceKey {
    /// The slice's namespace.
    pub namespace: String,
    /// The slice's own name.
    pub name: String,
}

impl SliceKey {
    /// A key from a namespace and a slice name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        SliceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for SliceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A `discovery.k8s.io/v1` EndpointSlice, joined to its service.
///
/// ```
/// use svcnat::model::{Endpoint, EndpointPort, EndpointSlice, IpFamily};
/// let slice = EndpointSlice::new("ns1", "svc1", "svc1-abcde", IpFamily::Ipv4)
///     .with_port(EndpointPort::tcp("p80", 80))
///     .with_endpoint(Endpoint::ready("10.180.0.1".parse().unwrap()));
/// assert_eq!(slice.service().to_string(), "ns1/svc1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSlice {
    /// The slice's (and its service's) namespace.
    pub namespace: String,
    /// The service it belongs to (label `kubernetes.io/service-name`).
    pub service_name: String,
    /// The slice's own name, unique within its namespace.
    pub name: String,
    /// `addressType`; slices of the other family are ignored by a proxy.
    pub address_type: IpFamily,
    /// `ports`.
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
    /// `endpoints`.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSlice {
    /// An empty slice.
    pub fn new(
        namespace: impl Into<String>,
        service_name: impl Into<String>,
        name: impl Into<String>,
        address_type: IpFamily,
    ) -> Self {
        EndpointSlice {
            namespace: namespace.into(),
            service_name: service_name.into(),
            name: name.into(),
            address_type,
            ports: Vec::new(),
            endpoints: Vec::new(),
        }
    }

    /// This slice's own key: its namespace and name.
    pub fn key(&self) -> SliceKey {
        SliceKey::new(self.namespace.clone(), self.name.clone())
    }

    /// The key of the service this slice belongs to.
    pub fn service(&self) -> ServiceKey {
        ServiceKey::new(self.namespace.clone(), self.service_name.clone())
    }

    /// The same slice with one more port.
    pub fn with_port(mut self, port: EndpointPort) -> Self {
        self.ports.push(port);
        self
    }

    /// The same slice with one more endpoint.
    pub fn with_endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }
}
