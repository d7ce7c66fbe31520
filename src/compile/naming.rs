//! Chain names, derived exactly as kube-proxy derives them.
//!
//! A service port's chains share one hash: the first 16 characters of the RFC 4648
//! base32 encoding of SHA-256 over the port's name string (`ns/svc:port`, or
//! `ns/svc` for an unnamed port) followed by the lower-case protocol. An endpoint's
//! chain hashes the same string followed by the endpoint's `ip:port`
//! (`[ip]:port` for IPv6).

use std::net::SocketAddr;

use arrayvec::ArrayString;
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
///
/// Every chain name of a cluster is hashed, so this is on the compiler's hottest
/// path. A message that fits in [`SHORT_BLOCKS`] blocks (every name a valid
/// service can produce) is padded on the stack and compressed directly, without
/// the streaming hasher's buffering; longer ones take [`Sha256`]. A unit test
/// holds both ways to the same digest.
fn hash16(parts: &[&str]) -> [u8; 16] {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut head = [0u8; 10];
    if len + 9 <= SHORT_BLOCKS * 64 {
        let mut blocks = [[0u8; 64]; SHORT_BLOCKS];
        let used = (len + 9).div_ceil(64);
        let bytes = blocks.as_flattened_mut();
        let mut at = 0;
        for p in parts {
            bytes[at..at + p.len()].copy_from_slice(p.as_bytes());
            at += p.len();
        }
        // FIPS 180-4 padding: one 1 bit, zeros, the message length in bits.
        bytes[at] = 0x80;
        let bits = (len as u64) * 8;
        bytes[used * 64 - 8..used * 64].copy_from_slice(&bits.to_be_bytes());
        let mut state = SHA256_IV;
        sha2::block_api::compress256(&mut state, &blocks[..used]);
        for (chunk, word) in head.chunks_mut(4).zip(state) {
            chunk.copy_from_slice(&word.to_be_bytes()[..chunk.len()]);
        }
    } else {
        let mut hasher = Sha256::new();
        for p in parts {
            hasher.update(p.as_bytes());
        }
        head.copy_from_slice(&hasher.finalize()[..10]);
    }
    base32_16(&head)
}

/// Messages of up to this many 64-byte blocks are hashed on the stack: four
/// blocks hold 247 bytes, more than the longest namespace, name, port name,
/// protocol and `[IPv6]:port` together.
const SHORT_BLOCKS: usize = 4;

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// RFC 4648 base32 of 10 bytes: exactly 16 characters, no padding.
fn base32_16(bytes: &[u8; 10]) -> [u8; 16] {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut wide = [0u8; 16];
    wide[6..].copy_from_slice(bytes);
    let value = u128::from_be_bytes(wide);
    let mut out = [0u8; 16];
    for (i, c) in out.iter_mut().enumerate() {
        *c = ALPHABET[((value >> (75 - 5 * i)) & 31) as usize];
    }
    out
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

    /// The stack path (up to four blocks, every padding boundary) and the
    /// streaming path give the digest's first 10 bytes in RFC 4648 base32.
    #[test]
    fn hash16_is_base32_of_sha256_at_every_length() {
        let text: String = (0..300u32)
            .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
            .collect();
        for len in 0..=300 {
            let message = &text[..len];
            let digest = Sha256::digest(message.as_bytes());
            let want = data_encoding::BASE32.encode(&digest[..10]);
            let (a, b) = message.split_at(len / 3);
            for parts in [&[message][..], &[a, b], &[a, "", b]] {
                let got = hash16(parts);
                assert_eq!(std::str::from_utf8(&got).unwrap(), want, "length {len}");
            }
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
