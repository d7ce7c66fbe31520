//! The names of the per-service chains and sets of kube-proxy's nftables mode,
//! derived as kube-proxy derives them.
//!
//! A service port's chains share a base, `HASH-ns/svc/proto/port`; an endpoint's
//! chain and affinity set share `HASH-ns/svc/proto/port__IP/port` (an IPv6
//! address with `.` for `:`, which a name cannot hold). `HASH` is the first 8
//! characters of the RFC 4648 base32 encoding of SHA-256 over the rest. A base
//! longer than 240 bytes (knftables' 256-byte name limit less 16 for the prefix)
//! is cut to 237 bytes and ends in `...`; the hash keeps it unique.

use super::super::naming::hash16;
use crate::model::Protocol;
use crate::nft::{Name, NftError};

/// The longest base name: knftables' `NameLengthMax` (256) less 16, kube-proxy's
/// room for the longest prefix.
pub const BASE_MAX: usize = 240;

/// kube-proxy's `hashAndTruncate`: `name` after the first 8 base32 characters of
/// its SHA-256 and a `-`, cut to [`BASE_MAX`] bytes with `...` at the end.
fn hash_and_truncate(name: &str) -> String {
    // The first 8 base32 characters encode the digest's first 5 bytes, which the
    // 16 of hash16 start with.
    let hash = hash16(&[name]);
    let mut out = String::with_capacity(9 + name.len());
    out.extend(hash[..8].iter().map(|&b| char::from(b)));
    out.push('-');
    out.push_str(name);
    if out.len() > BASE_MAX {
        // Names are ASCII once validated; a boundary keeps any other text whole.
        let mut end = BASE_MAX - 3;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str("...");
    }
    out
}

/// The base of a service port's chain names (kube-proxy's
/// `servicePortChainNameBase`): `HASH-namespace/name/protocol/port`.
///
/// ```
/// use svcnat::compile::naming::nft_service_base;
/// use svcnat::model::Protocol;
/// assert_eq!(nft_service_base("ns1", "svc1", Protocol::Tcp, "p80"), "ULMVA6XW-ns1/svc1/tcp/p80");
/// ```
pub fn nft_service_base(namespace: &str, name: &str, protocol: Protocol, port: &str) -> String {
    hash_and_truncate(&[namespace, "/", name, "/", protocol.as_str(), "/", port].concat())
}

/// The base of an endpoint's chain and affinity set names (kube-proxy's
/// `servicePortEndpointChainNameBase`): `HASH-namespace/name/protocol/port__IP/port`
/// for the endpoint `IP:port` (`[IP]:port` for IPv6, whose `:` become `.`).
///
/// ```
/// use svcnat::compile::naming::nft_endpoint_base;
/// use svcnat::model::Protocol;
/// let base = nft_endpoint_base("ns1", "svc1", Protocol::Tcp, "p80", "10.180.0.1:80");
/// assert_eq!(base, "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80");
/// ```
pub fn nft_endpoint_base(
    namespace: &str,
    name: &str,
    protocol: Protocol,
    port: &str,
    endpoint: &str,
) -> String {
    // Go's net.SplitHostPort, for what JoinHostPort wrote.
    let (ip, number) = match endpoint.strip_prefix('[') {
        Some(rest) => rest.split_once("]:").unwrap_or((rest, "")),
        None => endpoint.rsplit_once(':').unwrap_or((endpoint, "")),
    };
    let ip = ip.replace(':', ".");
    hash_and_truncate(
        &[
            namespace,
            "/",
            name,
            "/",
            protocol.as_str(),
            "/",
            port,
            "__",
            &ip,
            "/",
            number,
        ]
        .concat(),
    )
}

/// `prefix` + `base` as a name.
///
/// # Errors
/// The IR's, for a base no valid service gives (the prefix starts with a letter;
/// a valid base is at most 240 bytes of `[A-Za-z0-9./_-]`).
pub(crate) fn prefixed(prefix: &str, base: &str) -> Result<Name, NftError> {
    Name::new([prefix, base].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG_NS: &str = "very-long-namespace-name-abcdefghijklmnopqrstuvwxyz0123456789xx";
    const LONG_SVC: &str = "very-long-service-name-why-would-you-even-do-this-i-mean-really";
    const LONG_PORT: &str = "port-443-providing-the-hypertext-transmission-protocol-with-tls";

    /// kube-proxy's `Test_servicePortChainNameBase` (proxier_test.go at
    /// 030880a5dc5449403c6d1f0aa146a7dc21d6c6dc), and the issue's vector.
    #[test]
    fn service_bases() {
        let cases = [
            (
                "testing",
                "service",
                Protocol::Tcp,
                "http",
                "P4ZYZVCF-testing/service/tcp/http",
            ),
            (
                "testing",
                "service",
                Protocol::Tcp,
                "https",
                "LZBRENCP-testing/service/tcp/https",
            ),
            (
                "ns1",
                "svc1",
                Protocol::Tcp,
                "p80",
                "ULMVA6XW-ns1/svc1/tcp/p80",
            ),
        ];
        for (ns, svc, proto, port, want) in cases {
            assert_eq!(nft_service_base(ns, svc, proto, port), want);
        }
        let long = nft_service_base(LONG_NS, LONG_SVC, Protocol::Sctp, LONG_PORT);
        assert_eq!(
            long,
            format!("KR6NACJP-{LONG_NS}/{LONG_SVC}/sctp/{LONG_PORT}")
        );
        assert!(long.len() <= BASE_MAX);
    }

    /// kube-proxy's `Test_servicePortEndpointChainNameBase`.
    #[test]
    fn endpoint_bases() {
        let short = [
            (
                "10.180.0.1:80",
                "JO2XBXZR-testing/service/tcp/http__10.180.0.1/80",
            ),
            (
                "10.180.0.2:80",
                "5S6H3H22-testing/service/tcp/http__10.180.0.2/80",
            ),
            (
                "[fd80:abcd:12::a1b2:c3d4:e5f6:9999]:80",
                "U7E2ET36-testing/service/tcp/http__fd80.abcd.12..a1b2.c3d4.e5f6.9999/80",
            ),
        ];
        for (endpoint, want) in short {
            let got = nft_endpoint_base("testing", "service", Protocol::Tcp, "http", endpoint);
            assert_eq!(got, want);
        }
        let prefix = format!("{LONG_NS}/{LONG_SVC}/sctp/{LONG_PORT}__");
        let long = [
            (
                "[1234:5678:9abc:def0::abc:1234]:443",
                format!("5YS7AFEA-{prefix}1234.5678.9abc.def0..abc.1234/443"),
            ),
            (
                "[1234:5678:9abc:def0::abcd:1234:5678]:443",
                format!("CI6C53Q3-{prefix}1234.5678.9abc.def0..abcd.1234..."),
            ),
            (
                "[1234:5678:9abc:def0::abcd:1234:8765]:443",
                format!("2FLXFK6X-{prefix}1234.5678.9abc.def0..abcd.1234..."),
            ),
        ];
        for (endpoint, want) in long {
            let got = nft_endpoint_base(LONG_NS, LONG_SVC, Protocol::Sctp, LONG_PORT, endpoint);
            assert_eq!(got, want);
            assert!(got.len() <= BASE_MAX);
        }
        assert_eq!(
            nft_endpoint_base("ns1", "svc1", Protocol::Tcp, "p80", "10.180.0.1:80"),
            "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    #[test]
    fn every_prefixed_base_is_a_name() {
        let base = nft_endpoint_base(
            LONG_NS,
            LONG_SVC,
            Protocol::Sctp,
            LONG_PORT,
            "[1234:5678:9abc:def0::abcd:1234:8765]:443",
        );
        for prefix in [
            "service-",
            "local-",
            "external-",
            "firewall-",
            "endpoint-",
            "affinity-",
        ] {
            assert!(prefixed(prefix, &base).is_ok(), "{prefix}");
        }
    }

    #[test]
    fn truncation_keeps_text_whole() {
        let name = "é".repeat(200);
        let out = hash_and_truncate(&name);
        assert!(out.len() <= BASE_MAX && out.ends_with("..."));
    }
}
