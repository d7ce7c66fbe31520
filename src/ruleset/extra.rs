//! IR values that the compiler never writes but that real rule dumps contain:
//! port ranges, multiport, ipset and physdev matches, bare `-p`, other address
//! types, and verbatim text for matches and targets svcnat does not model.
//!
//! They exist so [`crate::parse`] can load a whole `iptables-save` dump into a
//! [`Ruleset`](super::Ruleset); each prints back as iptables writes it.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Interface, IrError, Not};
use crate::model::Protocol;

/// One word of rule text: printable ASCII without spaces, quotes or backslashes,
/// not starting with `-` or `!` (ipset names, `--reject-with` types, protocol names).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Word(String);

impl Word {
    /// Validates a word.
    ///
    /// # Errors
    /// [`IrError::Word`] if it is empty, longer than 255 bytes, starts with `-` or
    /// `!`, or has a character outside printable ASCII or one of space, `"`, `'`, `\`.
    ///
    /// ```
    /// use svcnat::ruleset::Word;
    /// assert!(Word::new("icmp-port-unreachable").is_ok());
    /// assert!(Word::new("two words").is_err());
    /// ```
    pub fn new(text: impl Into<String>) -> Result<Self, IrError> {
        let text = text.into();
        let reason = if text.is_empty() {
            Some("empty")
        } else if text.len() > 255 {
            Some("longer than 255 bytes")
        } else if text.starts_with('-') || text.starts_with('!') {
            Some("starts with '-' or '!'")
        } else if !text
            .bytes()
            .all(|b| (b'!'..=b'~').contains(&b) && !matches!(b, b'"' | b'\'' | b'\\'))
        {
            Some("has a space, a quote, a backslash or a character outside printable ASCII")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(IrError::Word { word: text, reason }),
            None => Ok(Word(text)),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Word {
    type Error = IrError;
    fn try_from(s: String) -> Result<Self, IrError> {
        Word::new(s)
    }
}

impl From<Word> for String {
    fn from(w: Word) -> String {
        w.0
    }
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Rule text kept verbatim (a match or target svcnat does not model), exactly as
/// it appeared on its line, quotes included. One line: no line break or NUL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RawText(String);

impl RawText {
    /// Validates verbatim text.
    ///
    /// # Errors
    /// [`IrError::RawText`] if it is empty (or only spaces), contains a line break,
    /// a NUL or another control character, or has a double quote that is not
    /// closed (as `iptables-restore` splits words), which would swallow the rest
    /// of the rendered line.
    ///
    /// ```
    /// use svcnat::ruleset::RawText;
    /// assert!(RawText::new("-m limit --limit 5/min").is_ok());
    /// assert!(RawText::new("-j LOG --log-prefix \"a \\\" b\"").is_ok());
    /// assert!(RawText::new("-j ACCEPT\n-A X").is_err());
    /// assert!(RawText::new("-j LOG --log-prefix \"open").is_err());
    /// ```
    pub fn new(text: impl Into<String>) -> Result<Self, IrError> {
        let text = text.into();
        let reason = if text.trim().is_empty() {
            Some("empty")
        } else if text.chars().any(|c| c.is_control()) {
            Some("has a line break or another control character")
        } else if !super::lex::quotes_balanced(&text) {
            Some("has an unterminated quote")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(IrError::RawText { text, reason }),
            None => Ok(RawText(text)),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RawText {
    type Error = IrError;
    fn try_from(s: String) -> Result<Self, IrError> {
        RawText::new(s)
    }
}

impl From<RawText> for String {
    fn from(w: RawText) -> String {
        w.0
    }
}

impl fmt::Display for RawText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
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

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.first)?;
        if self.last != self.first {
            write!(f, ":{}", self.last)?;
        }
        Ok(())
    }
}

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

/// Writes a list of port ranges separated by commas.
pub(crate) fn write_ports<W: fmt::Write>(f: &mut W, ports: &[PortRange]) -> fmt::Result {
    for (i, p) in ports.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "{p}")?;
    }
    Ok(())
}
