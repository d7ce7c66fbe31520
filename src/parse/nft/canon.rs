//! The canonical form: what is left of a ruleset once the differences the
//! kernel makes (or ignores) are taken out.

use std::net::IpAddr;

use ipnet::IpNet;

use super::stmt::cover;
use crate::nft::{AddrItem, AddrValue, MarkOp, Ruleset, SetFlag, Stmt};

/// A ruleset in a form where two rulesets the kernel holds the same way are
/// equal, so that what `nft list table` prints (read with
/// [`parse`](super::parse)) compares equal to the ruleset that was loaded:
///
/// * set and map elements sorted (the kernel keeps no order), set flags
///   sorted, and a set with a timeout has the `timeout` flag (the kernel sets
///   it; nft lists it only beside another flag);
/// * an address match's value reduced to the fewest prefixes that cover the
///   same addresses, sorted: a `/32` (`/128`) prefix is an address, host bits
///   are cleared, an anonymous set (`{ … }`, either spelling) of one prefix is
///   that prefix, adjacent prefixes merge (as nft merges them, printing a
///   range);
/// * `mark set mark xor 0` is `mark set mark or 0` (both leave the mark, and
///   nft prints both as `meta mark set meta mark`);
/// * chains, sets and maps in name order (equality ignores their order; this
///   makes the value print the same way too).
///
/// Rules keep their order, and everything else is kept as it is.
pub fn canonicalize(ruleset: &Ruleset) -> Ruleset {
    let mut rs = ruleset.clone();
    rs.chains.sort_keys();
    rs.sets.sort_keys();
    rs.maps.sort_keys();
    for set in rs.sets.values_mut() {
        if set.timeout.is_some() {
            set.flags.push(SetFlag::Timeout);
        }
        set.flags.sort();
        set.flags.dedup();
        set.elements.sort();
    }
    for map in rs.maps.values_mut() {
        map.elements.sort();
    }
    for chain in rs.chains.values_mut() {
        for rule in &mut chain.rules {
            for stmt in &mut rule.stmts {
                match stmt {
                    Stmt::Addr { value, .. } => *value = canonical_addr(value),
                    Stmt::MarkSet { op, bits: 0 } => *op = MarkOp::Or,
                    _ => {}
                }
            }
        }
    }
    rs
}

/// An address match's value as the fewest sorted prefixes (one prefix alone
/// bare, a full-length one as an address).
fn canonical_addr(value: &AddrValue) -> AddrValue {
    let nets: Vec<IpNet> = match value {
        AddrValue::Ip(ip) => vec![IpNet::from(*ip)],
        AddrValue::Net(net) => vec![*net],
        AddrValue::Anon(items) => items
            .iter()
            .map(|i| match i {
                AddrItem::Ip(ip) => IpNet::from(*ip),
                AddrItem::Net(net) => *net,
            })
            .collect(),
        AddrValue::Cidrs(nets) => nets.clone(),
        AddrValue::Set(_) => return value.clone(),
    };
    let merged = merge(&nets);
    match merged.as_slice() {
        [one] => match item(*one) {
            AddrItem::Ip(ip) => AddrValue::Ip(ip),
            AddrItem::Net(net) => AddrValue::Net(net),
        },
        _ => AddrValue::Anon(merged.into_iter().map(item).collect()),
    }
}

fn item(net: IpNet) -> AddrItem {
    if net.prefix_len() == net.max_prefix_len() {
        AddrItem::Ip(net.addr())
    } else {
        AddrItem::Net(net)
    }
}

/// The fewest prefixes covering the union of `nets`, IPv4 first, each family
/// sorted.
fn merge(nets: &[IpNet]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for bits in [32u8, 128] {
        let mut ranges: Vec<(u128, u128)> = nets
            .iter()
            .filter(|n| n.max_prefix_len() == bits)
            .map(|n| (number(n.network()), number(n.broadcast())))
            .collect();
        ranges.sort_unstable();
        let mut joined: Vec<(u128, u128)> = Vec::new();
        for (lo, hi) in ranges {
            match joined.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => joined.push((lo, hi)),
            }
        }
        for (lo, hi) in joined {
            out.extend(cover(lo, hi, bits));
        }
    }
    out
}

fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(value: AddrValue) -> AddrValue {
        canonical_addr(&value)
    }

    #[test]
    fn address_values_reduce_to_the_fewest_prefixes() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            canon(AddrValue::Net(net("1.2.3.4/32"))),
            AddrValue::Ip(ip("1.2.3.4"))
        );
        assert_eq!(
            canon(AddrValue::Net(net("10.0.0.1/8"))),
            AddrValue::Net(net("10.0.0.0/8"))
        );
        assert_eq!(
            canon(AddrValue::Cidrs(vec![net("172.30.0.0/16")])),
            AddrValue::Net(net("172.30.0.0/16"))
        );
        assert_eq!(
            canon(AddrValue::Anon(vec![
                AddrItem::Net(net("10.0.0.128/25")),
                AddrItem::Net(net("10.0.0.0/25")),
            ])),
            AddrValue::Net(net("10.0.0.0/24"))
        );
        assert_eq!(
            canon(AddrValue::Anon(vec![
                AddrItem::Ip(ip("5.6.7.8")),
                AddrItem::Net(net("203.0.113.0/25")),
                AddrItem::Net(net("1.2.3.4/32")),
            ])),
            AddrValue::Anon(vec![
                AddrItem::Ip(ip("1.2.3.4")),
                AddrItem::Ip(ip("5.6.7.8")),
                AddrItem::Net(net("203.0.113.0/25")),
            ])
        );
        // nft lists `{ fd00::1 , fd00::2/128 }` as the range fd00::1-fd00::2.
        assert_eq!(
            canon(AddrValue::Anon(vec![
                AddrItem::Ip(ip("fd00::1")),
                AddrItem::Net(net("fd00::2/128")),
            ])),
            AddrValue::Anon(vec![
                AddrItem::Ip(ip("fd00::1")),
                AddrItem::Ip(ip("fd00::2"))
            ])
        );
        let set = AddrValue::Set(crate::nft::Name::new("cluster-ips").unwrap());
        assert_eq!(canon(set.clone()), set);
    }
}
