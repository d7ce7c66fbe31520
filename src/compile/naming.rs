//! Chain names, derived exactly as kube-proxy derives them.
//!
//! A service port's chains share one hash: the first 16 characters of the RFC 4648
//! base32 encoding of SHA-256 over the port's name string (`ns/svc:port`, or
//! `ns/svc` for an unnamed port) followed by the lower-case protocol. An endpoint's
//! chain hashes the same string followed by the endpoint's `ip:port`
//! (`[ip]:port` for IPv6).

use std::net::SocketAddr;

use arrayvec::ArrayString;
use data_encoding::BASE32;
use sha2::{Digest, Sha256};

use crate::model::{Protocol, ServiceKey};
use crate::ruleset::ChainName;

/// kube-proxy's `ServicePortName.String()`: `ns/name:port`, or `ns/name` when unnamed.
pub fn service_port_name(service: &ServiceKey, port_name: &str) -> String {
    spn_of(&service.namespace, &service.name, port_name)
}

/// [`service_port_name`] from the key's parts.
pub(crate) fn spn_of(namespace: &str, name: &str, port_name: &str) -> String {
    let parts = [
        namespace,
        "/",
        name,
        if port_name.is_empty() { "" } else { ":" },
        port_name,
    ];
    let mut spn = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|p| spn.push_str(p));
    spn
}

/// The first 16 base32 characters of SHA-256 over `parts`: the first 10 bytes of
/// the digest encode to exactly 16 characters.
fn hash16(parts: &[&str]) -> [u8; 16] {
    let mut hasher = Sha256::new();
    for p in parts {
        hasher.update(p.as_bytes());
    }
    let digest = hasher.finalize();
    let mut encoded = [0u8; 16];
    BASE32.encode_mut(&digest[..10], &mut encoded);
    encoded
}

fn chain(prefix: &str, hash: &[u8; 16]) -> ChainName {
    // Prefix (at most 9 bytes) + 16 base32 characters: always valid, at most 25 bytes.
    ChainName::from_parts(prefix, std::str::from_utf8(hash).unwrap_or_default())
}

/// The four chains of one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortChains {
    /// `KUBE-SVC-…`: cluster-wide endpoints.
    pub svc: ChainName,
    /// `KUBE-SVL-…`: this node's endpoints.
    pub svl: ChainName,
    /// `KUBE-EXT-…`: external destinations.
    pub ext: ChainName,
    /// `KUBE-FW-…`: load-balancer source ranges.
    pub fw: ChainName,
}

impl PortChains {
    /// The chains of the service port named `spn` (see [`service_port_name`]).
    ///
    /// ```
    /// use svcnat::compile::naming::PortChains;
    /// use svcnat::model::Protocol;
    /// let chains = PortChains::new("ns1/svc1:p80", Protocol::Tcp);
    /// assert_eq!(chains.svc.as_str(), "KUBE-SVC-XPGD46QRK7WJZT7O");
    /// ```
    pub fn new(spn: &str, protocol: Protocol) -> Self {
        let hash = hash16(&[spn, protocol.as_str()]);
        PortChains {
            svc: chain("KUBE-SVC-", &hash),
            svl: chain("KUBE-SVL-", &hash),
            ext: chain("KUBE-EXT-", &hash),
            fw: chain("KUBE-FW-", &hash),
        }
    }
}

/// `ip:port` as Go's `net.JoinHostPort` writes it (IPv6 bracketed).
pub fn endpoint_string(endpoint: &SocketAddr) -> String {
    endpoint_text(endpoint).as_str().to_owned()
}

/// The longest `[ip]:port`: a 45-byte IPv6 address, brackets, `:65535`.
const ENDPOINT_TEXT_MAX: usize = 56;

/// [`endpoint_string`], stored inline: compiling a cluster makes one per endpoint.
pub(crate) fn endpoint_text(endpoint: &SocketAddr) -> ArrayString<ENDPOINT_TEXT_MAX> {
    let mut s = ArrayString::new();
    // At most 53 bytes: the write cannot overflow.
    let _ = crate::ruleset::text::socket(&mut s, *endpoint);
    s
}

/// The `KUBE-SEP-…` chain of one endpoint of the service port named `spn`.
///
/// ```
/// use svcnat::compile::naming::endpoint_chain;
/// use svcnat::model::Protocol;
/// let chain = endpoint_chain("ns1/svc1:p80", Protocol::Tcp, "10.180.0.1:80");
/// assert_eq!(chain.as_str(), "KUBE-SEP-SXIVWICOYRO3J4NJ");
/// ```
pub fn endpoint_chain(spn: &str, protocol: Protocol, endpoint: &str) -> ChainName {
    chain("KUBE-SEP-", &hash16(&[spn, protocol.as_str(), endpoint]))
}

/// True for the names of chains svcnat creates per service port or endpoint, the
/// only chains a sync ever deletes.
pub fn is_service_chain(name: &str) -> bool {
    [
        "KUBE-SVC-",
        "KUBE-SVL-",
        "KUBE-EXT-",
        "KUBE-FW-",
        "KUBE-SEP-",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_vectors() {
        let cases = [
            ("ns2/svc2:p80", Protocol::Tcp, "KUBE-SVC-GNZBNJ2PO5MGZ6GT"),
            ("ns3/svc3:p80", Protocol::Tcp, "KUBE-SVC-X27LE4BHSL4DOUIK"),
            ("ns4/svc4:p80", Protocol::Tcp, "KUBE-SVC-4SW47YFZTEDKD3PK"),
            ("ns5/svc5:p80", Protocol::Tcp, "KUBE-SVC-NUKIZ6OKUXPJNT4C"),
            ("ns1/svc1:p80", Protocol::Udp, "KUBE-SVC-OJWW7NSBVZTDHXNW"),
            ("ns1/svc1", Protocol::Tcp, "KUBE-SVC-AQI2S6QIMU7PVVRP"),
        ];
        for (spn, proto, want) in cases {
            assert_eq!(PortChains::new(spn, proto).svc.as_str(), want, "{spn}");
        }
        let chains = PortChains::new("ns1/svc1:p80", Protocol::Tcp);
        assert_eq!(chains.svl.as_str(), "KUBE-SVL-XPGD46QRK7WJZT7O");
        assert_eq!(chains.ext.as_str(), "KUBE-EXT-XPGD46QRK7WJZT7O");
        assert_eq!(chains.fw.as_str(), "KUBE-FW-XPGD46QRK7WJZT7O");
        let seps = [
            ("ns2/svc2:p80", "10.180.0.2:80", "KUBE-SEP-RS4RBKLTHTF2IUXJ"),
            ("ns4/svc4:p80", "10.180.0.5:80", "KUBE-SEP-C6EBXVWJJZMIWKLZ"),
            ("ns5/svc5:p80", "10.180.0.3:80", "KUBE-SEP-I77PXRDZVX7PMWMN"),
            ("ns1/svc1:p80", "10.0.0.0:80", "KUBE-SEP-DKGQUZGBKLTPAR56"),
            (
                "ns1/svc1:p80",
                "[fd00:10::1]:80",
                "KUBE-SEP-RT5VHSJR44ZNF7G5",
            ),
        ];
        for (spn, ep, want) in seps {
            assert_eq!(endpoint_chain(spn, Protocol::Tcp, ep).as_str(), want);
        }
    }

    #[test]
    fn endpoint_strings_match_join_host_port() {
        let v6: SocketAddr = "[fd00:10::1]:80".parse().unwrap();
        assert_eq!(endpoint_string(&v6), "[fd00:10::1]:80");
        let v4: SocketAddr = "10.180.0.1:80".parse().unwrap();
        assert_eq!(endpoint_string(&v4), "10.180.0.1:80");
    }
}
