//! Fast writers for the numbers and addresses in rule text.
//!
//! Rendering a large cluster writes hundreds of thousands of ports and addresses;
//! `core::fmt`'s padding-aware integer and address printing is several times slower
//! than these, which write the same characters (a unit test checks them against
//! `Display`).

use std::fmt::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;

use ipnet::IpNet;

/// Writes `n` in decimal.
pub(crate) fn dec<W: Write + ?Sized>(out: &mut W, mut n: u32) -> fmt::Result {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.write_str(std::str::from_utf8(&buf[i..]).map_err(|_| fmt::Error)?)
}

/// Writes an IPv4 address as `a.b.c.d`.
pub(crate) fn ipv4<W: Write + ?Sized>(out: &mut W, ip: Ipv4Addr) -> fmt::Result {
    let mut buf = [0u8; 15];
    let mut len = 0;
    for (k, octet) in ip.octets().into_iter().enumerate() {
        if k > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        len += 1;
    }
    out.write_str(std::str::from_utf8(&buf[..len]).map_err(|_| fmt::Error)?)
}

/// Writes an address as `Display` does.
pub(crate) fn ip<W: Write + ?Sized>(out: &mut W, ip: IpAddr) -> fmt::Result {
    match ip {
        IpAddr::V4(v4) => ipv4(out, v4),
        IpAddr::V6(v6) => write!(out, "{v6}"),
    }
}

/// Writes `ip:port` (`[ip]:port` for IPv6) as `Display` does.
pub(crate) fn socket<W: Write + ?Sized>(out: &mut W, addr: SocketAddr) -> fmt::Result {
    match addr {
        SocketAddr::V4(a) => {
            ipv4(out, *a.ip())?;
            out.write_str(":")?;
            dec(out, u32::from(a.port()))
        }
        SocketAddr::V6(a) => write!(out, "{a}"),
    }
}

/// Writes a network as `addr/len`.
pub(crate) fn net<W: Write + ?Sized>(out: &mut W, net: IpNet) -> fmt::Result {
    match net {
        IpNet::V4(n) => {
            ipv4(out, n.addr())?;
            out.write_str("/")?;
            dec(out, u32::from(n.prefix_len()))
        }
        IpNet::V6(n) => write!(out, "{n}"),
    }
}

/// The largest `n` whose `1/n` is kept printed.
const ONE_IN_CACHED: usize = 1024;

/// Writes a probability with ten decimals, as Go's `%0.10f` does. The `1/n` values
/// the compiler makes are printed once and kept.
pub(crate) fn probability<W: Write + ?Sized>(out: &mut W, p: f64) -> fmt::Result {
    static ONE_IN: OnceLock<Vec<String>> = OnceLock::new();
    if p > 0.0 {
        let n = (1.0 / p).round();
        if n >= 1.0 && n <= ONE_IN_CACHED as f64 && (1.0 / n).to_bits() == p.to_bits() {
            let table = ONE_IN.get_or_init(|| {
                (0..=ONE_IN_CACHED)
                    .map(|n| format!("{:.10}", 1.0 / n.max(1) as f64))
                    .collect()
            });
            return out.write_str(&table[n as usize]);
        }
    }
    // Rust rounds the exact binary value half-to-even, as Go's %0.10f does.
    write!(out, "{p:.10}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut String) -> fmt::Result) -> String {
        let mut s = String::new();
        f(&mut s).unwrap();
        s
    }

    #[test]
    fn numbers_and_addresses_print_as_display_does() {
        for n in [0u32, 7, 10, 99, 100, 65535, 4_294_967_295] {
            assert_eq!(text(|s| dec(s, n)), n.to_string());
        }
        for a in [
            "0.0.0.0",
            "10.0.0.9",
            "172.30.10.255",
            "255.255.255.255",
            "1.20.100.3",
        ] {
            let v4: Ipv4Addr = a.parse().unwrap();
            assert_eq!(text(|s| ipv4(s, v4)), a);
        }
        for a in ["10.180.0.1:80", "[fd00::1]:8080", "1.2.3.4:0"] {
            let sa: SocketAddr = a.parse().unwrap();
            assert_eq!(text(|s| socket(s, sa)), a);
        }
        for n in ["10.0.0.0/8", "0.0.0.0/0", "fd00::/64"] {
            let net: IpNet = n.parse().unwrap();
            assert_eq!(text(|s| super::net(s, net)), n);
        }
        for n in 1..=2000usize {
            let p = 1.0 / n as f64;
            assert_eq!(text(|s| probability(s, p)), format!("{p:.10}"), "1/{n}");
        }
        for p in [0.0, 1.0, 0.3, 0.123456789012] {
            assert_eq!(text(|s| probability(s, p)), format!("{p:.10}"));
        }
    }
}
