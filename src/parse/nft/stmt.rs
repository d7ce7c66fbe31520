//! A rule's body: statements in either spelling (svcnat's writer's, which is
//! knftables' and kube-proxy's, or the one `nft list` prints), then an optional
//! comment.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

use super::cursor::{Cursor, addr_or_net, check_family};
use super::lex::Tok;
use super::{NftErrorKind, R, Spot, bad_value};
use crate::nft::{
    AddrItem, AddrValue, Dir, Family, IfName, KeyField, MarkOp, Op, Rule, Stmt, Verdict,
};

/// A rule's statements and comment, up to the end of the line (not taken).
pub(super) fn rule(c: &mut Cursor<'_>, family: Family) -> R<Rule> {
    let mut stmts = Vec::new();
    let mut comment = None;
    while !c.done() && c.peek() != Tok::Newline {
        if c.eat("comment") {
            comment = Some(c.comment()?);
            if !c.done() && c.peek() != Tok::Newline {
                return c.expected("the end of the rule after its comment");
            }
        } else {
            stmts.push(stmt(c, family)?);
        }
    }
    if stmts.is_empty() {
        return c.expected("a statement");
    }
    Ok(Rule { stmts, comment })
}

fn unsupported<T>(spot: Spot, what: impl Into<String>) -> R<T> {
    Err((spot, NftErrorKind::Unsupported(what.into())))
}

fn stmt(c: &mut Cursor<'_>, family: Family) -> R<Stmt> {
    let spot = c.spot();
    let Tok::Word(first) = c.peek() else {
        return c.expected("a statement");
    };
    match first {
        "ip" | "ip6" | "th" => {
            let field = key_field(c, family)?;
            match field {
                KeyField::Daddr | KeyField::Saddr
                    if c.peek() != Tok::Word(".") && c.peek() != Tok::Word("vmap") =>
                {
                    let dir = if field == KeyField::Daddr {
                        Dir::Daddr
                    } else {
                        Dir::Saddr
                    };
                    addr_match(c, family, dir)
                }
                KeyField::ThDport
                    if c.peek() != Tok::Word(".") && c.peek() != Tok::Word("vmap") =>
                {
                    unsupported(spot, "a th dport match")
                }
                field => vmap(c, family, field),
            }
        }
        "meta" => match c.peek2() {
            Tok::Word("l4proto") => {
                let field = key_field(c, family)?;
                if c.peek() == Tok::Word(".") || c.peek() == Tok::Word("vmap") {
                    vmap(c, family, field)
                } else {
                    Ok(Stmt::L4Proto(c.protocol()?))
                }
            }
            Tok::Word("mark") => {
                c.bump();
                c.bump();
                meta_mark(c)
            }
            _ => {
                c.bump();
                let spot = c.spot();
                let key = c.word("a meta key")?;
                unsupported(spot, format!("meta {key}"))
            }
        },
        "mark" => {
            c.bump();
            if c.eat("and") {
                let bits = c.number("a mark mask")?;
                c.expect("==")?;
                let value = c.number("a mark value")?;
                Ok(Stmt::MarkAnd { bits, value })
            } else if c.eat("set") {
                c.expect("mark")?;
                let op = match c.word("or or xor")? {
                    "or" => MarkOp::Or,
                    "xor" => MarkOp::Xor,
                    other => return unsupported(spot, format!("mark set mark {other}")),
                };
                let bits = c.number("mark bits")?;
                Ok(Stmt::MarkSet { op, bits })
            } else {
                c.expected("and or set")
            }
        }
        "ct" => {
            c.bump();
            c.expect("state")?;
            let spot = c.spot();
            match c.word("a conntrack state")? {
                "new" if !matches!(c.peek(), Tok::Punct(',')) => Ok(Stmt::CtStateNew),
                other => unsupported(spot, format!("ct state {other}")),
            }
        }
        "fib" => {
            c.bump();
            let dir = direction(c)?;
            c.expect("type")?;
            let spot = c.spot();
            match c.word("an address type")? {
                "local" => Ok(Stmt::FibLocal(dir)),
                other => unsupported(spot, format!("fib type {other}")),
            }
        }
        "iifname" => {
            c.bump();
            let op = op(c);
            let spot = c.spot();
            let raw = c.word_or_string("an interface name")?;
            let (name, prefix) = match raw.strip_suffix('*') {
                Some(name) => (name, true),
                None => (raw, false),
            };
            let name = IfName::new(name, prefix).map_err(|e| (spot, NftErrorKind::Invalid(e)))?;
            Ok(Stmt::Iifname { op, name })
        }
        "numgen" => {
            c.bump();
            c.expect("random")?;
            c.expect("mod")?;
            let spot = c.spot();
            let n = c.number("a modulus")?;
            if n == 0 {
                return Err(bad_value(spot, "0", "a modulus of at least 1"));
            }
            c.expect("vmap")?;
            c.expect_punct('{', "{")?;
            let mut verdicts = Vec::new();
            loop {
                let spot = c.spot();
                let key = c.number("a numgen value")?;
                if key as usize != verdicts.len() || key >= n {
                    return unsupported(
                        spot,
                        "numgen values other than 0 to N-1, in order, once each",
                    );
                }
                c.expect(":")?;
                verdicts.push(c.verdict()?);
                if !c.eat_punct(',') {
                    break;
                }
            }
            c.expect_punct('}', "} or ,")?;
            if verdicts.len() != n as usize {
                return unsupported(
                    spot,
                    "numgen values other than 0 to N-1, in order, once each",
                );
            }
            Ok(Stmt::Numgen(verdicts))
        }
        "update" => {
            c.bump();
            c.expect_punct('@', "@SET")?;
            let set = c.name("a set name")?;
            c.expect_punct('{', "{")?;
            let field_spot = c.spot();
            match key_field(c, family)? {
                KeyField::Saddr => {}
                _ => return unsupported(field_spot, "an update key other than the source address"),
            }
            c.expect_punct('}', "}")?;
            Ok(Stmt::UpdateSaddr(set))
        }
        "dnat" => {
            c.bump();
            c.expect("to")?;
            let spot = c.spot();
            let w = c.word("an address and port")?;
            let Ok(to) = SocketAddr::from_str(w) else {
                return match addr_or_net(w) {
                    Some(Ok(_)) => unsupported(spot, "dnat without a port"),
                    _ => Err(bad_value(spot, w, "an address and port")),
                };
            };
            check_family(spot, family, &to.ip())?;
            Ok(Stmt::DnatTo(to))
        }
        "masquerade" => {
            c.bump();
            let fully_random = c.eat("fully-random");
            if let Tok::Word(w @ ("random" | "persistent" | "to" | "fully-random")) = c.peek() {
                return unsupported(c.spot(), format!("masquerade {w}"));
            }
            if c.peek() == Tok::Punct(',') {
                return unsupported(c.spot(), "masquerade flags");
            }
            Ok(Stmt::Masquerade { fully_random })
        }
        "accept" | "drop" | "return" | "reject" | "jump" | "goto" | "continue" | "queue" => {
            let v = c.verdict()?;
            if v == Verdict::Reject && c.peek() == Tok::Word("with") {
                return unsupported(c.spot(), "reject with");
            }
            Ok(Stmt::Verdict(v))
        }
        other => unsupported(spot, format!("the statement {other:?}")),
    }
}

/// `!=` (taken) or nothing; `==` is taken too.
fn op(c: &mut Cursor<'_>) -> Op {
    if c.eat("!=") {
        Op::Ne
    } else {
        c.eat("==");
        Op::Eq
    }
}

fn direction(c: &mut Cursor<'_>) -> R<Dir> {
    let dir = match c.peek() {
        Tok::Word("saddr") => Dir::Saddr,
        Tok::Word("daddr") => Dir::Daddr,
        _ => return c.expected("saddr or daddr"),
    };
    c.bump();
    Ok(dir)
}

/// One field of a key: `ip daddr`, `ip6 saddr`, `meta l4proto`, `th dport`.
fn key_field(c: &mut Cursor<'_>, family: Family) -> R<KeyField> {
    let spot = c.spot();
    match c.word("a key field")? {
        w @ ("ip" | "ip6") => {
            let found = if w == "ip" { Family::Ip } else { Family::Ip6 };
            if found != family {
                return Err((
                    spot,
                    NftErrorKind::FamilyMismatch {
                        expected: family.ip_family(),
                        found: found.ip_family(),
                    },
                ));
            }
            Ok(match direction(c)? {
                Dir::Saddr => KeyField::Saddr,
                Dir::Daddr => KeyField::Daddr,
            })
        }
        "meta" => {
            c.expect("l4proto")?;
            Ok(KeyField::L4Proto)
        }
        "th" => {
            let spot = c.spot();
            match c.word("dport")? {
                "dport" => Ok(KeyField::ThDport),
                other => unsupported(spot, format!("th {other}")),
            }
        }
        other => unsupported(spot, format!("the key field {other:?}")),
    }
}

/// `FIELD [. FIELD]* vmap @MAP`, after the first field.
fn vmap(c: &mut Cursor<'_>, family: Family, first: KeyField) -> R<Stmt> {
    let mut key = vec![first];
    while c.eat(".") {
        key.push(key_field(c, family)?);
    }
    let spot = c.spot();
    if !c.eat("vmap") {
        return c.expected("vmap");
    }
    if c.peek() == Tok::Punct('{') {
        return unsupported(spot, "an anonymous verdict map");
    }
    c.expect_punct('@', "@MAP")?;
    let map = c.name("a map name")?;
    Ok(Stmt::Vmap { key, map })
}

/// `[!=] VALUE` after `ip daddr` / `ip saddr`.
fn addr_match(c: &mut Cursor<'_>, family: Family, dir: Dir) -> R<Stmt> {
    let op = op(c);
    let value = if c.eat_punct('@') {
        AddrValue::Set(c.name("a set name")?)
    } else if c.eat_punct('{') {
        addr_set(c, family)?
    } else {
        match item(c, family)? {
            Item::One(AddrItem::Ip(ip)) => AddrValue::Ip(ip),
            Item::One(AddrItem::Net(net)) => AddrValue::Net(net),
            Item::Range(nets) => match nets.as_slice() {
                [one] => AddrValue::Net(*one),
                _ => AddrValue::Anon(nets.into_iter().map(AddrItem::Net).collect()),
            },
        }
    };
    Ok(Stmt::Addr { dir, op, value })
}

/// One element of an address match: an address, a prefix, or a range
/// (`a-b`, as nft lists merged set elements) as the prefixes that cover it.
enum Item {
    One(AddrItem),
    Range(Vec<IpNet>),
}

fn item(c: &mut Cursor<'_>, family: Family) -> R<Item> {
    let spot = c.spot();
    let w = c.word("an address, prefix or range")?;
    let bad = || bad_value(spot, w, "an address, prefix or range");
    let item = match addr_or_net(w) {
        Some(Ok(ip)) => Item::One(AddrItem::Ip(ip)),
        Some(Err(net)) => Item::One(AddrItem::Net(net)),
        None => {
            let (a, b) = w.split_once('-').ok_or_else(bad)?;
            let (a, b) = (
                IpAddr::from_str(a).map_err(|_| bad())?,
                IpAddr::from_str(b).map_err(|_| bad())?,
            );
            check_family(spot, family, &a)?;
            Item::Range(range_to_nets(a, b).ok_or_else(bad)?)
        }
    };
    match &item {
        Item::One(AddrItem::Ip(ip)) => check_family(spot, family, ip)?,
        Item::One(AddrItem::Net(net)) => check_family(spot, family, &net.addr())?,
        Item::Range(_) => {}
    }
    Ok(item)
}

/// The rest of `{ A , B }` (svcnat's `Anon`), `{ A,B }` (kube-proxy's joined
/// CIDRs: `Cidrs`) or nft's `{ A, B }`, after the `{`. One prefix alone reads
/// as `Cidrs`, one address alone as `Anon` (the text cannot tell more).
fn addr_set(c: &mut Cursor<'_>, family: Family) -> R<AddrValue> {
    let mut items = Vec::new();
    let mut joined = true;
    let mut ranges = false;
    loop {
        if !items.is_empty() && c.spaced() {
            joined = false;
        }
        match item(c, family)? {
            Item::One(i) => items.push(i),
            Item::Range(nets) => {
                ranges = true;
                items.extend(nets.into_iter().map(AddrItem::Net));
            }
        }
        if c.peek() != Tok::Punct(',') {
            break;
        }
        if c.spaced() {
            joined = false;
        }
        c.bump();
    }
    c.expect_punct('}', "} or ,")?;
    let nets: Option<Vec<IpNet>> = items
        .iter()
        .map(|i| match i {
            AddrItem::Net(n) => Some(*n),
            AddrItem::Ip(_) => None,
        })
        .collect();
    Ok(match nets {
        Some(nets) if joined && !ranges => AddrValue::Cidrs(nets),
        _ => AddrValue::Anon(items),
    })
}

/// `meta mark …` after `meta mark`: `set meta mark [| B | ^ B]`, `& B == V`,
/// `V` or `V/LEN` (nft's spellings of svcnat's `mark set mark or|xor B` and
/// `mark and B == V`).
fn meta_mark(c: &mut Cursor<'_>) -> R<Stmt> {
    let spot = c.spot();
    if c.eat("set") {
        let spot = c.spot();
        if !(c.eat("meta") && c.eat("mark")) {
            return unsupported(spot, "meta mark set to a value");
        }
        let op = match c.peek() {
            Tok::Word("|") => MarkOp::Or,
            Tok::Word("^") => MarkOp::Xor,
            // `or 0`: the mark is left as it is.
            _ => {
                return Ok(Stmt::MarkSet {
                    op: MarkOp::Or,
                    bits: 0,
                });
            }
        };
        c.bump();
        let bits = c.number("mark bits")?;
        return Ok(Stmt::MarkSet { op, bits });
    }
    if c.eat("&") {
        let bits = c.number("a mark mask")?;
        let spot = c.spot();
        if !c.eat("==") {
            return unsupported(spot, "a mark comparison other than ==");
        }
        let value = c.number("a mark value")?;
        return Ok(Stmt::MarkAnd { bits, value });
    }
    let w = c.word("set, & or a mark value")?;
    let bad = || bad_value(spot, w, "a mark value");
    let (value, bits) = match w.split_once('/') {
        Some((v, len)) => {
            let len: u32 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(bad)?;
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            (v, mask)
        }
        None => (w, u32::MAX),
    };
    let value = super::cursor::number(value).ok_or_else(bad)?;
    Ok(Stmt::MarkAnd { bits, value })
}

/// The fewest prefixes that cover exactly `a` to `b`, or `None` for an empty
/// or mixed-family range.
pub(super) fn range_to_nets(a: IpAddr, b: IpAddr) -> Option<Vec<IpNet>> {
    let (lo, hi, bits) = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return None,
    };
    if lo > hi {
        return None;
    }
    Some(cover(lo, hi, bits))
}

/// The prefixes that cover `lo..=hi` in a `bits`-bit address space.
pub(super) fn cover(mut lo: u128, hi: u128, bits: u8) -> Vec<IpNet> {
    let mut out = Vec::new();
    loop {
        // The largest block starting at `lo` that stays inside the range.
        let mut size = if lo == 0 {
            bits
        } else {
            lo.trailing_zeros().min(u32::from(bits)) as u8
        };
        while size > 0 && block_end(lo, size).is_none_or(|end| end > hi) {
            size -= 1;
        }
        out.push(net_of(lo, bits - size, bits));
        match block_end(lo, size) {
            Some(end) if end < hi => lo = end + 1,
            _ => return out,
        }
    }
}

/// The last address of the block of 2^size addresses starting at `lo`.
fn block_end(lo: u128, size: u8) -> Option<u128> {
    if size >= 128 {
        return (lo == 0).then_some(u128::MAX);
    }
    lo.checked_add((1u128 << size) - 1)
}

/// The prefix `addr/len` of a `bits`-bit family.
pub(super) fn net_of(addr: u128, len: u8, bits: u8) -> IpNet {
    if bits == 32 {
        let ip = std::net::Ipv4Addr::from(addr as u32);
        IpNet::V4(ipnet::Ipv4Net::new(ip, len).unwrap_or_default())
    } else {
        let ip = std::net::Ipv6Addr::from(addr);
        IpNet::V6(ipnet::Ipv6Net::new(ip, len).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(a: &str, b: &str) -> Vec<String> {
        range_to_nets(a.parse().unwrap(), b.parse().unwrap())
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn ranges_become_the_fewest_prefixes() {
        assert_eq!(nets("fd00::1", "fd00::2"), ["fd00::1/128", "fd00::2/128"]);
        assert_eq!(nets("10.0.0.0", "10.0.0.255"), ["10.0.0.0/24"]);
        assert_eq!(
            nets("10.0.0.1", "10.0.0.6"),
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        assert_eq!(nets("0.0.0.0", "255.255.255.255"), ["0.0.0.0/0"]);
        assert_eq!(
            nets("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ["::/0"]
        );
        assert_eq!(
            nets("255.255.255.255", "255.255.255.255"),
            ["255.255.255.255/32"]
        );
        assert!(range_to_nets("10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap()).is_none());
        assert!(range_to_nets("10.0.0.1".parse().unwrap(), "::1".parse().unwrap()).is_none());
    }
}
