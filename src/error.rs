//! Errors: each names the object and field at fault, and what is wrong.

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use crate::model::{IpFamily, Protocol, ServiceKey};
use crate::nft::NftError;
use crate::ruleset::IrError;

/// What is wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Problem {
    /// A required field is missing.
    #[error("missing")]
    Missing,
    /// A name that is not of the required form.
    #[error("{value:?} is not a valid {expected}")]
    InvalidName {
        /// The name.
        value: String,
        /// What it should be, e.g. "DNS-1123 label".
        expected: &'static str,
    },
    /// Text that is not an IP address or CIDR.
    #[error("{value:?} is not a valid {expected}")]
    BadAddress {
        /// The text.
        value: String,
        /// "IP address" or "CIDR".
        expected: &'static str,
    },
    /// An address of the other family where one family is required.
    #[error("{address} is not an {expected} address")]
    WrongFamily {
        /// The address.
        address: IpAddr,
        /// The family it should be.
        expected: IpFamily,
    },
    /// Two values of one family where at most one is allowed.
    #[error("more than one {family} value")]
    DuplicateFamily {
        /// The family.
        family: IpFamily,
    },
    /// Port 0.
    #[error("port 0 is not allowed")]
    PortZero,
    /// A port number above 65535 or below 0.
    #[error("{value} is not a port number (1-65535)")]
    PortOutOfRange {
        /// The number.
        value: i64,
    },
    /// A node port outside the configured range.
    #[error("node port {port} is outside the node port range {low}-{high}")]
    NodePortOutOfRange {
        /// The node port.
        port: u16,
        /// The range's low end.
        low: u16,
        /// The range's high end.
        high: u16,
    },
    /// Two ports with one name.
    #[error("duplicate port name {name:?}")]
    DuplicatePortName {
        /// The name.
        name: String,
    },
    /// Two ports with one number and protocol.
    #[error("duplicate port {port}/{protocol}")]
    DuplicatePort {
        /// The number.
        port: u16,
        /// The protocol.
        protocol: Protocol,
    },
    /// A service with several ports has an unnamed one.
    #[error("a port must be named when a service has more than one")]
    UnnamedPort,
    /// A node port on a service type that has none.
    #[error("a {service_type} service has no node ports")]
    NodePortNotAllowed {
        /// The type.
        service_type: &'static str,
    },
    /// An endpoint port with no service port of the same name and protocol.
    #[error("endpoint port {name:?}/{protocol} matches no service port")]
    UnknownEndpointPort {
        /// The port's name.
        name: String,
        /// The port's protocol.
        protocol: Protocol,
    },
    /// An address the API server refuses in this field: loopback, unspecified,
    /// link-local or link-local multicast (Kubernetes' `ValidateNonSpecialIP`).
    #[error(
        "{address} is {} {kind} address, which the API server refuses",
        article(kind)
    )]
    SpecialAddress {
        /// The address.
        address: IpAddr,
        /// "loopback", "unspecified", "link-local" or "link-local multicast".
        kind: &'static str,
    },
    /// An endpoint listed more than once for one service port (in one slice or
    /// several); one copy is used.
    #[error(
        "{endpoint} is listed again (first in endpoint slice {slice} endpoints[{index}]); one copy is used"
    )]
    DuplicateEndpoint {
        /// The endpoint, `ip:port`.
        endpoint: SocketAddr,
        /// The slice that lists it first (by slice name, then position).
        slice: String,
        /// Its position in that slice's endpoints.
        index: usize,
    },
    /// An EndpointSlice whose Service does not exist; it is ignored until the
    /// Service appears.
    #[error("no such service; the slice is ignored")]
    NoSuchService,
    /// A number outside its allowed range.
    #[error("{value} is out of range ({range})")]
    OutOfRange {
        /// The value.
        value: i64,
        /// The allowed range.
        range: &'static str,
    },
    /// A value this crate does not support.
    #[error("{value:?} is not supported")]
    Unsupported {
        /// The value.
        value: String,
    },
    /// A name or comment the rule IR refuses (too long, unsafe characters).
    #[error(transparent)]
    Ir(#[from] IrError),
    /// A name, comment or interface the nftables IR refuses (too long, unsafe
    /// characters).
    #[error(transparent)]
    Nft(#[from] NftError),
}

pub use crate::model::ParseValueError;

/// Why [`crate::compile::compile`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CompileError {
    /// A field of a service is invalid.
    #[error("service {service}{}: {field}: {problem}", port_label(.port))]
    Service {
        /// The service.
        service: ServiceKey,
        /// The service port's name, where the problem is in one port.
        port: Option<String>,
        /// The field, as a path into the Kubernetes object (`spec.ports[0].nodePort`).
        field: String,
        /// What is wrong.
        problem: Problem,
    },
    /// A field of an endpoint slice is invalid.
    #[error("endpoint slice {slice} of service {service}: {field}: {problem}")]
    EndpointSlice {
        /// The service the slice belongs to.
        service: ServiceKey,
        /// The slice's name.
        slice: String,
        /// The field, as a path into the Kubernetes object (`endpoints[2].addresses[0]`).
        field: String,
        /// What is wrong.
        problem: Problem,
    },
    /// A field of the proxy configuration is invalid.
    #[error("config: {field}: {problem}")]
    Config {
        /// The field of [`crate::model::ProxyConfig`].
        field: &'static str,
        /// What is wrong.
        problem: Problem,
    },
}

impl CompileError {
    /// The service this error is about, if it is about one.
    pub fn service(&self) -> Option<&ServiceKey> {
        match self {
            CompileError::Service { service, .. } | CompileError::EndpointSlice { service, .. } => {
                Some(service)
            }
            CompileError::Config { .. } => None,
        }
    }
}

/// "an" before a vowel sound, else "a".
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn port_label(port: &Option<String>) -> String {
    match port.as_deref() {
        Some("") => " (unnamed port)".to_owned(),
        Some(name) => format!(" port {name}"),
        None => String::new(),
    }
}
