//! [`Match`], one match of a rule, and the values it is made of.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    AddrKind, ChainName, Comment, Direction, Interface, PhysdevOption, PortsOf, Probability,
    ProtocolName, RawText, SetMatch, flag, text,
};
use crate::model::Protocol;

/// A source or destination: one address (printed bare, as kube-proxy writes
/// service IPs) or a network (printed as a CIDR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Address {
    /// One address.
    Ip(IpAddr),
    /// A network.
    Net(IpNet),
}

impl Address {
    /// True if `ip` is this address or inside this network.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match self {
            Address::Ip(a) => a == ip,
            Address::Net(n) => n.contains(ip),
        }
    }
}

impl Address {
    pub(crate) fn write_to<W: fmt::Write>(&self, f: &mut W) -> fmt::Result {
        match self {
            Address::Ip(ip) => text::ip(f, *ip),
            Address::Net(net) => text::net(f, *net),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

/// A match value that may be negated with `!`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Not<T> {
    /// True when the match is inverted.
    pub negated: bool,
    /// The matched value.
    pub value: T,
}

impl<T> Not<T> {
    /// A plain (not negated) match.
    pub fn is(value: T) -> Self {
        Not {
            negated: false,
            value,
        }
    }

    /// A negated match.
    pub fn is_not(value: T) -> Self {
        Not {
            negated: true,
            value,
        }
    }

    fn bang(&self) -> &'static str {
        if self.negated { "! " } else { "" }
    }
}

/// An `addrtype` address type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AddrType {
    /// An address of this host.
    Local,
}

impl fmt::Display for AddrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddrType::Local => "LOCAL",
        })
    }
}

/// A mark value with an optional mask, printed as iptables-save prints it (`0x4000/0x4000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mark {
    /// The value.
    pub value: u32,
    /// The mask; `None` means all bits.
    pub mask: Option<u32>,
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.value)?;
        if let Some(mask) = self.mask {
            write!(f, "/{mask:#x}")?;
        }
        Ok(())
    }
}

/// A conntrack state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CtState {
    /// `NEW`.
    New,
    /// `INVALID`.
    Invalid,
    /// `RELATED`.
    Related,
    /// `ESTABLISHED`.
    Established,
    /// `DNAT`.
    Dnat,
}

impl fmt::Display for CtState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CtState::New => "NEW",
            CtState::Invalid => "INVALID",
            CtState::Related => "RELATED",
            CtState::Established => "ESTABLISHED",
            CtState::Dnat => "DNAT",
        })
    }
}

/// What a `recent` match does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RecentAction {
    /// `--set`: record the source address.
    Set,
    /// `--rcheck --seconds N --reap`: the source was recorded in the last N seconds.
    Check {
        /// The window.
        seconds: u32,
    },
}

/// One match of a rule. Each prints as the flags kube-proxy writes for it, in the
/// order they appear in [`Rule::matches`](super::Rule::matches).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Match {
    /// `-m comment --comment TEXT`.
    Comment(Comment),
    /// The packet's protocol, spelt `-m P -p P` (what the compiler writes),
    /// `[!] -p NAME` or `-m P` (see [`ProtocolMatch`]).
    Protocol(ProtocolMatch),
    /// `[!] -s ADDR`.
    Source(Not<Address>),
    /// `[!] -d ADDR`.
    Destination(Not<Address>),
    /// `[!] --dport N[:M]` (after a [`Match::Protocol`]); the compiler writes one
    /// port ([`Match::destination_port`]).
    DestinationPort(Not<PortRange>),
    /// `[!] -i IFACE`.
    InInterface(Not<Interface>),
    /// `-m addrtype --src-type T`.
    SrcType(AddrType),
    /// `-m addrtype --dst-type T`.
    DstType(AddrType),
    /// `-m mark [!] --mark V/M`.
    Mark(Not<Mark>),
    /// `-m conntrack [!] --ctstate S,S`.
    Conntrack(Not<Vec<CtState>>),
    /// `-m statistic --mode random --probability P`.
    Statistic(Probability),
    /// `-m recent --name NAME (--set | --rcheck --seconds N --reap)`.
    Recent {
        /// The list's name (kube-proxy uses the endpoint chain's name).
        name: ChainName,
        /// What the match does.
        action: RecentAction,
    },
    /// `-m nfacct --nfacct-name NAME`.
    Nfacct(NfacctCounter),
    /// `[!] -o IFACE`.
    OutInterface(Not<Interface>),
    /// `[!] --sport N[:M]`.
    SourcePort(Not<PortRange>),
    /// `-m multiport [!] --dports|--sports|--ports P,P:Q`.
    Multiport {
        /// Which ports are looked at.
        of: PortsOf,
        /// The ports and ranges.
        ports: Not<Vec<PortRange>>,
    },
    /// `-m addrtype [!] --src-type|--dst-type T`, when negated or not `LOCAL`
    /// (plain `LOCAL` is [`Match::SrcType`] / [`Match::DstType`]).
    AddressType {
        /// Source or destination address.
        of: Direction,
        /// The type.
        kind: Not<AddrKind>,
    },
    /// `-m set [!] --match-set NAME FLAGS`.
    Set(Not<SetMatch>),
    /// `-m physdev OPTIONS…`.
    Physdev(Vec<PhysdevOption>),
    /// Any other match, verbatim (`-m limit --limit 5/min`).
    Other(RawText),
    /// `-m comment --comment TEXT` whose text [`Comment`] refuses (quotes,
    /// backslashes, a leading `-`), verbatim as it appeared, quotes and escapes
    /// included (`-m comment --comment "\'dapp_OpenSSH\'"`). Like any comment it
    /// never affects matching.
    OtherComment(RawText),
    /// `-m state [!] --state S,S`: the older name of [`Match::Conntrack`]'s
    /// `--ctstate`, as firewalls written for it keep using.
    State(Not<Vec<CtState>>),
    /// `[!] -f`: the packet is a second or later fragment (`negated`: it is not).
    Fragment {
        /// True for `! -f`.
        negated: bool,
    },
}

/// The nfacct counters kube-proxy counts packets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum NfacctCounter {
    /// `ct_state_invalid_dropped_pkts`: packets dropped by the INVALID rule.
    CtStateInvalidDropped,
    /// `localhost_nps_accepted_pkts`: node-port packets accepted on 127.0.0.0/8.
    LocalhostNodePortsAccepted,
}

impl NfacctCounter {
    /// Every counter, in declaration order.
    pub const ALL: [NfacctCounter; 2] = [
        NfacctCounter::CtStateInvalidDropped,
        NfacctCounter::LocalhostNodePortsAccepted,
    ];

    /// The counter's name in the kernel (what `--nfacct-name` takes).
    pub fn as_str(self) -> &'static str {
        match self {
            NfacctCounter::CtStateInvalidDropped => "ct_state_invalid_dropped_pkts",
            NfacctCounter::LocalhostNodePortsAccepted => "localhost_nps_accepted_pkts",
        }
    }

    /// The counters `text` (restore payload or rule text) names in a
    /// `--nfacct-name NAME` match, each once, in [`Self::ALL`]'s order; names
    /// kube-proxy does not use are not counters of this type and are skipped. One
    /// pass over the text.
    ///
    /// ```
    /// use svcnat::ruleset::NfacctCounter;
    /// let payload = "*filter\n-A KUBE-FORWARD -m conntrack --ctstate INVALID \
    ///     -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP\nCOMMIT\n";
    /// assert_eq!(NfacctCounter::named_in(payload), [NfacctCounter::CtStateInvalidDropped]);
    /// assert!(NfacctCounter::named_in("*nat\nCOMMIT\n").is_empty());
    /// ```
    pub fn named_in(text: &str) -> Vec<NfacctCounter> {
        const FLAG: &str = "--nfacct-name ";
        let mut seen = [false; Self::ALL.len()];
        for (at, _) in text.match_indices(FLAG) {
            let rest = &text[at + FLAG.len()..];
            let name = rest
                .split(|c: char| c.is_ascii_whitespace())
                .next()
                .unwrap_or_default();
            if let Some(i) = Self::ALL.iter().position(|c| c.as_str() == name) {
                seen[i] = true;
                if seen.iter().all(|s| *s) {
                    break;
                }
            }
        }
        Self::ALL
            .into_iter()
            .zip(seen)
            .filter_map(|(c, s)| s.then_some(c))
            .collect()
    }
}

impl fmt::Display for NfacctCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a rule matches the packet's protocol. One meaning, three spellings that
/// iptables accepts and prints back as they were written.
///
/// `Debug` shows the compiler's spelling as the protocol alone (`Tcp`), the
/// others as their variant (`Plain(..)`, `ModuleOnly(Tcp)`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProtocolMatch {
    /// `-m P -p P`, as the compiler writes it ([`Match::protocol`]): loads the
    /// protocol's module, whose port options may follow, and matches the protocol.
    WithModule(Protocol),
    /// `[!] -p NAME` on its own, as `iptables-save` writes it
    /// (`-p tcp … -m tcp --dport 80`), with any protocol name or number.
    Plain(Not<ProtocolName>),
    /// `-m P` on its own (`tcp`, `udp`, `sctp`), loading the module whose port
    /// options follow; the protocol itself is matched by a [`ProtocolMatch::Plain`]
    /// elsewhere in the rule.
    ModuleOnly(Protocol),
}

impl ProtocolMatch {
    fn write_to<W: fmt::Write>(&self, f: &mut W) -> fmt::Result {
        match self {
            ProtocolMatch::WithModule(p) => {
                f.write_str("-m ")?;
                f.write_str(p.as_str())?;
                f.write_str(" -p ")?;
                f.write_str(p.as_str())
            }
            ProtocolMatch::Plain(p) => write!(f, "{}-p {}", p.bang(), p.value),
            ProtocolMatch::ModuleOnly(p) => {
                f.write_str("-m ")?;
                f.write_str(p.as_str())
            }
        }
    }
}

impl fmt::Debug for ProtocolMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolMatch::WithModule(p) => fmt::Debug::fmt(p, f),
            ProtocolMatch::Plain(p) => f.debug_tuple("Plain").field(p).finish(),
            ProtocolMatch::ModuleOnly(p) => f.debug_tuple("ModuleOnly").field(p).finish(),
        }
    }
}

impl From<Protocol> for ProtocolMatch {
    /// The compiler's `-m P -p P`.
    fn from(protocol: Protocol) -> Self {
        ProtocolMatch::WithModule(protocol)
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

impl Match {
    /// A comment (`-m comment`, typed or as written): it matches every packet.
    pub(crate) fn is_comment(&self) -> bool {
        matches!(self, Match::Comment(_) | Match::OtherComment(_))
    }

    /// `-m P -p P`: the protocol match the compiler writes, which loads the
    /// protocol's module for the port matches that follow it.
    pub fn protocol(protocol: Protocol) -> Self {
        Match::Protocol(ProtocolMatch::WithModule(protocol))
    }

    /// `--dport N`: one destination port, as the compiler writes it.
    pub fn destination_port(port: u16) -> Self {
        Match::DestinationPort(Not::is(PortRange::one(port)))
    }

    /// Writes the match's flags; the common ones without `core::fmt` machinery.
    pub(crate) fn write_to<W: fmt::Write>(&self, f: &mut W) -> fmt::Result {
        match self {
            Match::Comment(c) => {
                f.write_str("-m comment --comment ")?;
                c.write_to(f)
            }
            Match::Protocol(p) => p.write_to(f),
            Match::Source(a) => {
                f.write_str(a.bang())?;
                f.write_str(flag::SOURCE)?;
                a.value.write_to(f)
            }
            Match::Destination(a) => {
                f.write_str(a.bang())?;
                f.write_str("-d ")?;
                a.value.write_to(f)
            }
            Match::DestinationPort(p) => {
                f.write_str(p.bang())?;
                f.write_str("--dport ")?;
                p.value.write_to(f)
            }
            Match::InInterface(i) => write!(f, "{}-i {}", i.bang(), i.value),
            Match::SrcType(t) => write!(f, "-m addrtype --src-type {t}"),
            Match::DstType(t) => write!(f, "-m addrtype --dst-type {t}"),
            Match::Mark(m) => write!(f, "-m mark {}--mark {}", m.bang(), m.value),
            Match::Conntrack(s) => {
                write!(f, "-m conntrack {}--ctstate ", s.bang())?;
                write_states(f, &s.value)
            }
            Match::State(s) => {
                write!(f, "-m state {}--state ", s.bang())?;
                write_states(f, &s.value)
            }
            Match::Statistic(p) => {
                f.write_str(flag::STATISTIC)?;
                text::probability(f, p.value())
            }
            Match::Recent { name, action } => match action {
                RecentAction::Set => {
                    f.write_str("-m recent --name ")?;
                    f.write_str(name.as_str())?;
                    f.write_str(" --set")
                }
                RecentAction::Check { seconds } => {
                    write!(
                        f,
                        "-m recent --name {name} --rcheck --seconds {seconds} --reap"
                    )
                }
            },
            Match::Nfacct(name) => write!(f, "-m nfacct --nfacct-name {name}"),
            Match::OutInterface(i) => write!(f, "{}-o {}", i.bang(), i.value),
            Match::SourcePort(p) => {
                f.write_str(p.bang())?;
                f.write_str("--sport ")?;
                p.value.write_to(f)
            }
            Match::Multiport { of, ports } => {
                let flag = match of {
                    PortsOf::Source => "--sports",
                    PortsOf::Destination => "--dports",
                    PortsOf::Either => "--ports",
                };
                write!(f, "-m multiport {}{flag} ", ports.bang())?;
                write_ports(f, &ports.value)
            }
            Match::AddressType { of, kind } => {
                let flag = match of {
                    Direction::Source => "--src-type",
                    Direction::Destination => "--dst-type",
                };
                write!(f, "-m addrtype {}{flag} {}", kind.bang(), kind.value)
            }
            Match::Set(s) => write!(f, "-m set {}--match-set {}", s.bang(), s.value),
            Match::Physdev(options) => {
                f.write_str("-m physdev")?;
                for o in options {
                    write!(f, " {o}")?;
                }
                Ok(())
            }
            Match::Other(raw) | Match::OtherComment(raw) => write!(f, "{raw}"),
            Match::Fragment { negated } => f.write_str(if *negated { "! -f" } else { "-f" }),
        }
    }
}

/// Writes conntrack states separated by commas.
fn write_states<W: fmt::Write>(f: &mut W, states: &[CtState]) -> fmt::Result {
    for (i, state) in states.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "{state}")?;
    }
    Ok(())
}

/// A port or an inclusive port range (`80`, `1024:65535`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port (equal to `first` for one port).
    pub last: u16,
}

impl PortRange {
    /// One port.
    pub fn one(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// True if `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl PortRange {
    /// Writes `N` or `N:M`, without `core::fmt` machinery.
    fn write_to<W: fmt::Write>(&self, f: &mut W) -> fmt::Result {
        text::dec(f, u32::from(self.first))?;
        if self.last != self.first {
            f.write_str(":")?;
            text::dec(f, u32::from(self.last))?;
        }
        Ok(())
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

/// Writes a list of port ranges separated by commas.
fn write_ports<W: fmt::Write>(f: &mut W, ports: &[PortRange]) -> fmt::Result {
    for (i, p) in ports.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        p.write_to(f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_named_in_text() {
        use NfacctCounter::*;
        let both = "-A KUBE-NODEPORTS -m nfacct --nfacct-name localhost_nps_accepted_pkts -j X\n\
            -A KUBE-FORWARD -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP\n\
            -A KUBE-NODEPORTS -m nfacct --nfacct-name localhost_nps_accepted_pkts -j Y\n";
        assert_eq!(
            NfacctCounter::named_in(both),
            [CtStateInvalidDropped, LocalhostNodePortsAccepted]
        );
        // At the very end of the text.
        assert_eq!(
            NfacctCounter::named_in("--nfacct-name localhost_nps_accepted_pkts"),
            [LocalhostNodePortsAccepted]
        );
        // Another counter, or a longer name that starts like one: not ours.
        assert!(NfacctCounter::named_in("--nfacct-name other -j DROP").is_empty());
        assert!(NfacctCounter::named_in("--nfacct-name ct_state_invalid_dropped_pkts2").is_empty());
        assert!(NfacctCounter::named_in("--nfacct-name ").is_empty());
        for c in NfacctCounter::ALL {
            assert_eq!(c.to_string(), c.as_str());
            let rule = Match::Nfacct(c).to_string();
            assert_eq!(NfacctCounter::named_in(&rule), [c]);
        }
    }
}
