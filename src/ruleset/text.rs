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

/// "000" to "999", three digits each, for writing numbers without `core::fmt`
/// (and without checking UTF-8 at run time: the table is checked once, at
/// compile time).
const DIGITS: &str = {
    const BYTES: [u8; 3000] = {
        let mut out = [0u8; 3000];
        let mut n = 0;
        while n < 1000 {
            out[3 * n] = b'0' + (n / 100) as u8;
            out[3 * n + 1] = b'0' + (n / 10 % 10) as u8;
            out[3 * n + 2] = b'0' + (n % 10) as u8;
            n += 1;
        }
        out
    };
    match std::str::from_utf8(&BYTES) {
        Ok(digits) => digits,
        Err(_) => panic!("digits are ASCII"),
    }
};

/// The decimal digits of `n < 1000`, without leading zeros.
fn small(n: u32) -> &'static str {
    let n = n as usize;
    let skip = if n >= 100 {
        0
    } else if n >= 10 {
        1
    } else {
        2
    };
    &DIGITS[3 * n + skip..3 * n + 3]
}

/// Writes `n` in decimal.
pub(crate) fn dec<W: Write + ?Sized>(out: &mut W, n: u32) -> fmt::Result {
    if n < 1000 {
        return out.write_str(small(n));
    }
    dec(out, n / 1000)?;
    let low = (n % 1000) as usize;
    out.write_str(&DIGITS[3 * low..3 * low + 3])
}

/// Writes an IPv4 address as `a.b.c.d`.
pub(crate) fn ipv4<W: Write + ?Sized>(out: &mut W, ip: Ipv4Addr) -> fmt::Result {
    let [a, b, c, d] = ip.octets();
    out.write_str(small(u32::from(a)))?;
    out.write_str(".")?;
    out.write_str(small(u32::from(b)))?;
    out.write_str(".")?;
    out.write_str(small(u32::from(c)))?;
    out.write_str(".")?;
    out.write_str(small(u32::from(d)))
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

/// `1/n` printed with ten decimals, for `n` up to [`ONE_IN_CACHED`] (index 0 holds 1/1).
fn one_in_table() -> &'static [String] {
    static ONE_IN: OnceLock<Vec<String>> = OnceLock::new();
    ONE_IN.get_or_init(|| {
        (0..=ONE_IN_CACHED)
            .map(|n| format!("{:.10}", 1.0 / n.max(1) as f64))
            .collect()
    })
}

/// Writes a probability with ten decimals, as Go's `%0.10f` does. The `1/n` values
/// the compiler makes are printed once and kept.
pub(crate) fn probability<W: Write + ?Sized>(out: &mut W, p: f64) -> fmt::Result {
    if p > 0.0 {
        let n = (1.0 / p).round();
        if n >= 1.0 && n <= ONE_IN_CACHED as f64 && (1.0 / n).to_bits() == p.to_bits() {
            return out.write_str(&one_in_table()[n as usize]);
        }
    }
    // Rust rounds the exact binary value half-to-even, as Go's %0.10f does.
    write!(out, "{p:.10}")
}

/// Writes the probability `1/n` (`n >= 1`) as [`probability`] writes it, without
/// working out which `n` it is.
pub(crate) fn one_in<W: Write + ?Sized>(out: &mut W, n: usize) -> fmt::Result {
    match one_in_table().get(n) {
        Some(text) if n > 0 => out.write_str(text),
        _ => probability(out, 1.0 / n as f64),
    }
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
    fn one_in_prints_as_probability_does() {
        for n in (1..=ONE_IN_CACHED + 20).chain([4096, 1_000_000]) {
            let want = text(|s| probability(s, 1.0 / n as f64));
            assert_eq!(text(|s| one_in(s, n)), want, "1/{n}");
        }
        assert_eq!(text(|s| one_in(s, 3)), "0.3333333333");
    }

    #[test]
    fn numbers_and_addresses_print_as_display_does() {
        for n in [
            0u32,
            7,
            10,
            99,
            100,
            999,
            1000,
            1001,
            10_010,
            65535,
            4_294_967_295,
        ] {
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
        for n in 0..=255u8 {
            let v4 = Ipv4Addr::new(n, 255 - n, n / 2, n % 10);
            assert_eq!(text(|s| ipv4(s, v4)), v4.to_string());
            for port in [0, 9, 10, 99, 100, 999, 1000, 9999, 10_000, 65_535] {
                let sa = SocketAddr::new(IpAddr::V4(v4), port);
                assert_eq!(text(|s| socket(s, sa)), sa.to_string());
            }
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
