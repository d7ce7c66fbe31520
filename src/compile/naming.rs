//! Chain names, derived exactly as kube-proxy derives them: iptables mode's here,
//! nftables mode's in [`nft_service_base`] and [`nft_endpoint_base`].
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

pub use super::nftables::naming::{nft_endpoint_base, nft_service_base};

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
pub(crate) fn hash16(parts: &[&str]) -> [u8; 16] {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let state = if len + 9 <= 64 {
        // Most names: one block.
        let mut block = [[0u8; 64]; 1];
        compress_padded(&mut block, parts, len)
    } else if len + 9 <= SHORT_BLOCKS * 64 {
        let mut blocks = [[0u8; 64]; SHORT_BLOCKS];
        compress_padded(&mut blocks, parts, len)
    } else {
        let mut hasher = Sha256::new();
        for p in parts {
            hasher.update(p.as_bytes());
        }
        let digest = hasher.finalize();
        let mut state = [0u32; 8];
        for (word, bytes) in state.iter_mut().zip(digest.chunks_exact(4)) {
            *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        state
    };
    base32_16(&state)
}

/// SHA-256 of `parts` (`len` bytes in all), padded in `blocks` (zeroed, with room
/// for the message, the 0x80 byte and the 8-byte length): the final state.
fn compress_padded<const N: usize>(
    blocks: &mut [[u8; 64]; N],
    parts: &[&str],
    len: usize,
) -> [u32; 8] {
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
    state
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

/// RFC 4648 base32 of the digest's first 10 bytes (its first 80 bits, read from
/// the hash state's big-endian words): exactly 16 characters, no padding.
fn base32_16(state: &[u32; 8]) -> [u8; 16] {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let [w0, w1, w2, ..] = state.map(u64::from);
    // Two groups of 40 bits, eight characters each.
    let groups = [
        (w0 << 8) | (w1 >> 24),
        ((w1 & 0xff_ffff) << 16) | (w2 >> 16),
    ];
    let mut out = [0u8; 16];
    for (group, chars) in groups.into_iter().zip(out.chunks_exact_mut(8)) {
        for (i, c) in chars.iter_mut().enumerate() {
            *c = ALPHABET[((group >> (35 - 5 * i)) & 31) as usize];
        }
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
    EndpointNamer::new(spn, protocol).chain(endpoint)
}

/// Names the endpoint chains of one service port: the hash input's first block
/// (`ns/svc:port` and the protocol) is laid out once, and each endpoint only adds
/// its `ip:port`, its padding and one compression.
pub(crate) struct EndpointNamer<'a> {
    spn: &'a str,
    protocol: Protocol,
    /// The block with the port's part written, zeros after it.
    block: [u8; 64],
    /// The length of the port's part.
    len: usize,
}

impl<'a> EndpointNamer<'a> {
    pub fn new(spn: &'a str, protocol: Protocol) -> Self {
        let mut block = [0u8; 64];
        let len = spn.len() + protocol.as_str().len();
        if len <= 64 {
            block[..spn.len()].copy_from_slice(spn.as_bytes());
            block[spn.len()..len].copy_from_slice(protocol.as_str().as_bytes());
        }
        EndpointNamer {
            spn,
            protocol,
            block,
            len,
        }
    }

    /// The `KUBE-SEP-…` chain of the endpoint `ip:port`, as [`endpoint_chain`].
    pub fn chain(&self, endpoint: &str) -> ChainName {
        let len = self.len + endpoint.len();
        let hash = if len + 9 <= 64 {
            let mut block = [self.block];
            let bytes = &mut block[0];
            bytes[self.len..len].copy_from_slice(endpoint.as_bytes());
            bytes[len] = 0x80;
            bytes[56..].copy_from_slice(&((len as u64) * 8).to_be_bytes());
            let mut state = SHA256_IV;
            sha2::block_api::compress256(&mut state, &block);
            base32_16(&state)
        } else {
            hash16(&[self.spn, self.protocol.as_str(), endpoint])
        };
        chain("KUBE-SEP-", &hash)
    }
}

/// True for a per-service chain's name with the 16-character base32 hash svcnat
/// (and kube-proxy) put after the prefix: the names a full sync deletes when it
/// finds them in the kernel and no longer wants them.
pub fn is_hashed_chain(name: &str) -> bool {
    SERVICE_PREFIXES.iter().any(|p| {
        name.strip_prefix(p).is_some_and(|hash| {
            hash.len() == 16
                && hash
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        })
    })
}

/// The prefixes of the chains svcnat writes per service.
const SERVICE_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// True for the names of chains svcnat creates per service port or endpoint, the
/// only chains a sync ever deletes.
pub fn is_service_chain(name: &str) -> bool {
    SERVICE_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_namer_hashes_as_hash16_does() {
        // Around the one-block boundary (55 bytes of message) and past the 64-byte
        // port part, where the namer falls back to hash16.
        for spn_len in [1, 20, 40, 50, 54, 60, 64, 70] {
            let spn = "s".repeat(spn_len);
            for protocol in [Protocol::Tcp, Protocol::Sctp] {
                let namer = EndpointNamer::new(&spn, protocol);
                for ep_len in 0..40 {
                    let endpoint = "1".repeat(ep_len);
                    let want = chain("KUBE-SEP-", &hash16(&[&spn, protocol.as_str(), &endpoint]));
                    assert_eq!(namer.chain(&endpoint), want, "{spn_len} + {ep_len}");
                }
            }
        }
    }

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
