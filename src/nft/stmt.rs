//! The statements a rule is made of: the matches, maps and verdicts that
//! kube-proxy's nftables rules use, each a value, written in one place
//! ([`super::text`]).

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::names::{IfName, Name, NftError};
use crate::model::Protocol;

/// A verdict: what a rule, a map element or a `numgen` pick does with a packet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `return`.
    Return,
    /// `reject` (the kernel's default: ICMP port unreachable, TCP reset for TCP).
    Reject,
    /// `jump CHAIN`: run the chain, then come back.
    Jump(Name),
    /// `goto CHAIN`: run the chain and do not come back.
    Goto(Name),
}

impl Verdict {
    /// The chain this verdict runs, if any.
    pub fn chain(&self) -> Option<&Name> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }
}

/// Which address of the packet a match or key looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Dir {
    /// The source (`saddr`).
    Saddr,
    /// The destination (`daddr`).
    Daddr,
}

/// `==` (written as nothing) or `!=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Op {
    /// Equal (or: in the set).
    Eq,
    /// Not equal (or: not in the set).
    Ne,
}

/// An address or a prefix, written as given: kube-proxy writes a load balancer's
/// address bare and a source range with its length, even `/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AddrItem {
    /// An address (`1.2.3.4`).
    Ip(IpAddr),
    /// A prefix (`203.0.113.0/25`, `1.2.3.4/32`).
    Net(IpNet),
}

/// What an address is compared with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AddrValue {
    /// One address (`172.30.0.41`, `::1`).
    Ip(IpAddr),
    /// One prefix (`10.0.0.0/8`), always written with its length.
    Net(IpNet),
    /// A named set (`@cluster-ips`).
    Set(Name),
    /// An anonymous set written `{ A , B }`, in the order given (the source ranges
    /// of a firewall chain).
    Anon(Vec<AddrItem>),
    /// An anonymous set of prefixes written `{ A,B }` (the service CIDRs of
    /// `cluster-ips-check`, as kube-proxy joins its flag's value).
    Cidrs(Vec<IpNet>),
}

/// A field of a concatenated map key (`ip daddr . meta l4proto . th dport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KeyField {
    /// The destination address (`ip daddr` / `ip6 daddr`).
    Daddr,
    /// The source address (`ip saddr` / `ip6 saddr`).
    Saddr,
    /// The layer-4 protocol (`meta l4proto`).
    L4Proto,
    /// The transport destination port (`th dport`).
    ThDport,
}

/// How a mark is changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MarkOp {
    /// `mark set mark or BITS`.
    Or,
    /// `mark set mark xor BITS`.
    Xor,
}

/// One statement of a rule. A rule's statements run left to right; a match that
/// fails ends the rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Stmt {
    /// `ip daddr 172.30.0.41`, `ip saddr != 10.0.0.0/8`, `ip daddr @cluster-ips`,
    /// `ip saddr != { 203.0.113.0/25 }` (`ip6` in an `ip6` table).
    Addr {
        /// Source or destination.
        dir: Dir,
        /// Equal or not.
        op: Op,
        /// What the address is compared with.
        value: AddrValue,
    },
    /// `meta l4proto tcp`.
    L4Proto(Protocol),
    /// `ct state new`.
    CtStateNew,
    /// `fib saddr type local` / `fib daddr type local`: the address is one of this
    /// host's.
    FibLocal(Dir),
    /// `iifname cbr0`, `iifname != veth*`.
    Iifname {
        /// Equal or not.
        op: Op,
        /// The interface or prefix.
        name: IfName,
    },
    /// `mark and BITS == VALUE`.
    MarkAnd {
        /// The bits looked at.
        bits: u32,
        /// What they must equal.
        value: u32,
    },
    /// `mark set mark or BITS` / `xor`.
    MarkSet {
        /// How.
        op: MarkOp,
        /// The bits.
        bits: u32,
    },
    /// `KEY vmap @MAP`: the verdict of the map's element for the packet's key, or
    /// nothing if it has none.
    Vmap {
        /// The key's fields, in order.
        key: Vec<KeyField>,
        /// The map.
        map: Name,
    },
    /// `numgen random mod N vmap { 0 : goto A , 1 : goto B }`: one of the
    /// verdicts, each as likely.
    Numgen(Vec<Verdict>),
    /// `update @SET { ip saddr }`: add the source address to a dynamic set (or
    /// refresh its timeout).
    UpdateSaddr(Name),
    /// `dnat to 10.180.0.1:80` (`[fd00::1]:80` for IPv6).
    DnatTo(SocketAddr),
    /// `masquerade fully-random` (or plain `masquerade`).
    Masquerade {
        /// Randomise the source port fully.
        fully_random: bool,
    },
    /// The rule's verdict.
    Verdict(Verdict),
}

impl Stmt {
    /// `ip daddr ADDR` / `ip saddr ADDR`.
    pub fn addr(dir: Dir, ip: IpAddr) -> Stmt {
        Stmt::Addr {
            dir,
            op: Op::Eq,
            value: AddrValue::Ip(ip),
        }
    }

    /// `numgen random mod N vmap { ... }`.
    ///
    /// # Errors
    /// [`NftError::Rule`] if there are no verdicts.
    pub fn numgen(verdicts: Vec<Verdict>) -> Result<Stmt, NftError> {
        if verdicts.is_empty() {
            return Err(NftError::Rule("numgen with no verdicts"));
        }
        Ok(Stmt::Numgen(verdicts))
    }

    /// Every chain this statement can run.
    pub fn chains(&self) -> impl Iterator<Item = &Name> {
        let (one, many): (Option<&Verdict>, &[Verdict]) = match self {
            Stmt::Verdict(v) => (Some(v), &[]),
            Stmt::Numgen(vs) => (None, vs),
            _ => (None, &[]),
        };
        one.into_iter().chain(many).filter_map(Verdict::chain)
    }

    /// The set or map this statement reads or writes, if any.
    pub fn set(&self) -> Option<&Name> {
        match self {
            Stmt::Addr {
                value: AddrValue::Set(s),
                ..
            }
            | Stmt::Vmap { map: s, .. }
            | Stmt::UpdateSaddr(s) => Some(s),
            _ => None,
        }
    }
}
