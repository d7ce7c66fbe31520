//! Match parts that only rules written by other programs use: multiport and
//! other port lists, ipset and physdev matches, bare `-p` with any protocol, and
//! address types other than `LOCAL`. The compiler never writes them; they exist
//! so [`crate::parse`] can load a whole `iptables-save` dump into a
//! [`Ruleset`](super::Ruleset), and each prints back as iptables writes it.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Interface, IrError, Not, Word};
use crate::model::Protocol;

/// Which address or port of a packet a match looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// The source.
    Source,
    /// The destination.
    Destination,
}

/// Which ports a `multiport` match looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PortsOf {
    /// `--sports`.
    Source,
    /// `--dports`.
    Destination,
    /// `--ports`: either the source or the destination port.
    Either,
}

/// A protocol given with `-p` on its own: one of svcnat's, or any other name or
/// number iptables accepts (`icmp`, `all`, `47`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProtocolName {
    /// `tcp`, `udp` or `sctp`.
    Known(Protocol),
    /// Any other name or number.
    Other(Word),
}

impl ProtocolName {
    /// The protocol a name means: `tcp`/`udp`/`sctp` (or 6/17/132) are
    /// [`ProtocolName::Known`].
    ///
    /// # Errors
    /// [`IrError::Word`] if the name is not a [`Word`].
    pub fn new(name: &str) -> Result<Self, IrError> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "tcp" | "6" => ProtocolName::Known(Protocol::Tcp),
            "udp" | "17" => ProtocolName::Known(Protocol::Udp),
            "sctp" | "132" => ProtocolName::Known(Protocol::Sctp),
            _ => ProtocolName::Other(Word::new(name)?),
        })
    }
}

impl fmt::Display for ProtocolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolName::Known(p) => write!(f, "{p}"),
            ProtocolName::Other(w) => write!(f, "{w}"),
        }
    }
}

/// An `addrtype` type, as the kernel names route types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AddrKind {
    /// `UNSPEC`.
    Unspec,
    /// `UNICAST`.
    Unicast,
    /// `LOCAL`.
    Local,
    /// `BROADCAST`.
    Broadcast,
    /// `ANYCAST`.
    Anycast,
    /// `MULTICAST`.
    Multicast,
    /// `BLACKHOLE`.
    Blackhole,
    /// `UNREACHABLE`.
    Unreachable,
    /// `PROHIBIT`.
    Prohibit,
    /// `THROW`.
    Throw,
    /// `NAT`.
    Nat,
    /// `XRESOLVE`.
    Xresolve,
}

impl AddrKind {
    const ALL: [(AddrKind, &'static str); 12] = [
        (AddrKind::Unspec, "UNSPEC"),
        (AddrKind::Unicast, "UNICAST"),
        (AddrKind::Local, "LOCAL"),
        (AddrKind::Broadcast, "BROADCAST"),
        (AddrKind::Anycast, "ANYCAST"),
        (AddrKind::Multicast, "MULTICAST"),
        (AddrKind::Blackhole, "BLACKHOLE"),
        (AddrKind::Unreachable, "UNREACHABLE"),
        (AddrKind::Prohibit, "PROHIBIT"),
        (AddrKind::Throw, "THROW"),
        (AddrKind::Nat, "NAT"),
        (AddrKind::Xresolve, "XRESOLVE"),
    ];

    /// The kind with this (case-insensitive) name.
    pub fn from_name(name: &str) -> Option<Self> {
        AddrKind::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(k, _)| *k)
    }

    /// The name iptables prints.
    pub fn as_str(self) -> &'static str {
        AddrKind::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map(|(_, n)| *n)
            .unwrap_or("UNSPEC")
    }
}

impl fmt::Display for AddrKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `-m set [!] --match-set NAME FLAGS`: an ipset lookup.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SetMatch {
    /// The set's name.
    pub name: Word,
    /// Which packet fields form the lookup key, in order (`src,dst`).
    pub flags: Vec<Direction>,
}

impl fmt::Display for SetMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.name)?;
        for (i, d) in self.flags.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(match d {
                Direction::Source => "src",
                Direction::Destination => "dst",
            })?;
        }
        Ok(())
    }
}

/// One option of a `physdev` match (bridge ports).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PhysdevOption {
    /// `[!] --physdev-in IFACE`.
    In(Not<Interface>),
    /// `[!] --physdev-out IFACE`.
    Out(Not<Interface>),
    /// `[!] --physdev-is-in` (the value is `negated`).
    IsIn(bool),
    /// `[!] --physdev-is-out`.
    IsOut(bool),
    /// `[!] --physdev-is-bridged`.
    IsBridged(bool),
}

impl fmt::Display for PhysdevOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bang = |n: bool| if n { "! " } else { "" };
        match self {
            PhysdevOption::In(i) => write!(f, "{}--physdev-in {}", bang(i.negated), i.value),
            PhysdevOption::Out(i) => write!(f, "{}--physdev-out {}", bang(i.negated), i.value),
            PhysdevOption::IsIn(n) => write!(f, "{}--physdev-is-in", bang(*n)),
            PhysdevOption::IsOut(n) => write!(f, "{}--physdev-is-out", bang(*n)),
            PhysdevOption::IsBridged(n) => write!(f, "{}--physdev-is-bridged", bang(*n)),
        }
    }
}
