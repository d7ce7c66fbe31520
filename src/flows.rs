//! Stale conntrack flows: what a sync reports for the caller to clear, and what
//! an [`Executor`](crate::exec::Executor) clears. A module of its own, so the
//! executors do not depend on the syncer that reports the flows.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::model::Protocol;

/// Where a stale flow was addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FlowDestination {
    /// A service address (cluster IP, external IP or load-balancer IP) and port.
    Service(SocketAddr),
    /// A node port, on any node address.
    NodePort(u16),
}

impl fmt::Display for FlowDestination {
    /// `IP:PORT` (`[IP]:PORT` for IPv6), or `node port PORT`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowDestination::Service(addr) => write!(f, "{addr}"),
            FlowDestination::NodePort(port) => write!(f, "node port {port}"),
        }
    }
}

/// Conntrack entries the caller should delete after a sync: UDP and SCTP flows
/// keep going to their old destination until their entry expires.
///
/// Displayed as protocol, destination and endpoint, for a log line:
///
/// ```
/// use svcnat::model::Protocol;
/// use svcnat::flows::{FlowDestination, StaleFlow};
/// let flow = StaleFlow {
///     protocol: Protocol::Udp,
///     destination: FlowDestination::Service("172.30.0.10:53".parse().unwrap()),
///     endpoint: Some("10.180.0.3".parse().unwrap()),
/// };
/// assert_eq!(flow.to_string(), "udp 172.30.0.10:53 -> 10.180.0.3");
/// let flow = StaleFlow {
///     destination: FlowDestination::NodePort(30053),
///     endpoint: None,
///     ..flow
/// };
/// assert_eq!(flow.to_string(), "udp node port 30053 -> no endpoint");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StaleFlow {
    /// UDP or SCTP.
    pub protocol: Protocol,
    /// Where the flows were addressed.
    pub destination: FlowDestination,
    /// The endpoint they were sent to, which is gone; `None` for a service that has
    /// just gained endpoints (entries made while it had none are stale).
    pub endpoint: Option<IpAddr>,
}

impl fmt::Display for StaleFlow {
    /// `PROTOCOL DESTINATION -> ENDPOINT`, `no endpoint` for flows made while the
    /// service had none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> ", self.protocol, self.destination)?;
        match self.endpoint {
            Some(ip) => write!(f, "{ip}"),
            None => f.write_str("no endpoint"),
        }
    }
}
