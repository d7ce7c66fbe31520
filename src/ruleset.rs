//! The typed rule IR: tables, chains, rules made of [`Match`]es and a [`Target`].
//!
//! Values are validated when built ([`ChainName`], [`Comment`], [`Probability`]),
//! so anything that reaches [`crate::render`] can be printed without further checks
//! and no name or comment can inject text into a rule.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use arrayvec::ArrayString;
use indexmap::IndexMap;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use thiserror::Error;

use crate::model::ParseValueError;
use crate::model::{IpFamily, Protocol};

mod extra;
pub(crate) mod lex;
pub(crate) mod restore;
pub(crate) mod text;
pub use extra::{
    AddrKind, Direction, PhysdevOption, PortRange, PortsOf, ProtocolName, RawText, SetMatch, Word,
};

/// Why a name, comment or value was refused by the IR.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IrError {
    /// A chain name that iptables would refuse or that could break a rule line.
    #[error("invalid chain name {name:?}: {reason}")]
    ChainName {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A comment that could not be written safely.
    #[error("invalid comment {comment:?}: {reason}")]
    Comment {
        /// The refused comment.
        comment: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An interface name the kernel would refuse.
    #[error("invalid interface name {name:?}: {reason}")]
    Interface {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A probability outside [0, 1] (or `1/0`).
    #[error("invalid probability {0}: not between 0 and 1")]
    Probability(String),
    /// A word of rule text (set name, protocol, reject type) that could break a rule line.
    #[error("invalid word {word:?}: {reason}")]
    Word {
        /// The refused text.
        word: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Verbatim rule text that is empty, spans lines or leaves a quote open.
    #[error("invalid verbatim rule text {text:?}: {reason}")]
    RawText {
        /// The refused text.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// An iptables table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Table {
    /// `filter`.
    Filter,
    /// `nat`.
    Nat,
    /// `mangle`.
    Mangle,
    /// `raw`.
    Raw,
    /// `security`.
    Security,
}

impl Table {
    /// The table's name as iptables writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
            Table::Mangle => "mangle",
            Table::Raw => "raw",
            Table::Security => "security",
        }
    }

    /// The table's built-in chains, in the order `iptables-save` lists them.
    ///
    /// ```
    /// use svcnat::ruleset::Table;
    /// assert_eq!(Table::Raw.builtin_chains(), ["PREROUTING", "OUTPUT"]);
    /// ```
    pub fn builtin_chains(self) -> &'static [&'static str] {
        match self {
            Table::Filter | Table::Security => &["INPUT", "FORWARD", "OUTPUT"],
            Table::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
            Table::Mangle => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
            Table::Raw => &["PREROUTING", "OUTPUT"],
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads a table's name as iptables writes it (`filter`, `nat`, `mangle`, `raw`,
/// `security`; iptables' table names are lower-case only).
///
/// ```
/// use svcnat::ruleset::Table;
/// assert_eq!("nat".parse(), Ok(Table::Nat));
/// assert!("NAT".parse::<Table>().is_err());
/// ```
impl FromStr for Table {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "filter" => Ok(Table::Filter),
            "nat" => Ok(Table::Nat),
            "mangle" => Ok(Table::Mangle),
            "raw" => Ok(Table::Raw),
            "security" => Ok(Table::Security),
            _ => Err(ParseValueError::new(
                s,
                "a table (filter, nat, mangle, raw or security)",
            )),
        }
    }
}

/// Characters allowed in chain names, interface names and nfacct names:
/// nothing that the restore tokenizer treats specially.
fn is_plain_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'@' | b':'))
}

/// A chain name: 1 to 28 bytes of `[A-Za-z0-9._+@:-]`, not starting with `-` or `!`.
///
/// Stored inline (no heap allocation, cheap to clone), so rules can name chains
/// freely: a large cluster's ruleset holds hundreds of thousands of them.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChainName(Name);

/// A fixed name of the crate's, or any other, stored inline.
#[derive(Clone)]
enum Name {
    Fixed(&'static str),
    Inline(ArrayString<{ ChainName::MAX_LEN }>),
}

impl ChainName {
    /// The longest chain name iptables accepts.
    pub const MAX_LEN: usize = 28;

    /// Validates a chain name.
    ///
    /// # Errors
    /// [`IrError::ChainName`] if the name is empty, too long, or has characters that
    /// iptables or the restore format would treat specially.
    pub fn new(name: impl Into<String>) -> Result<Self, IrError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > Self::MAX_LEN {
            Some("longer than 28 bytes")
        } else if name.starts_with('-') || name.starts_with('!') {
            Some("starts with '-' or '!'")
        } else if !is_plain_token(&name) {
            Some("has a character other than A-Z a-z 0-9 . _ + @ : -")
        } else {
            None
        };
        match (reason, ArrayString::from(&name)) {
            (None, Ok(inline)) => Ok(ChainName(Name::Inline(inline))),
            (reason, _) => Err(IrError::ChainName {
                name,
                reason: reason.unwrap_or("longer than 28 bytes"),
            }),
        }
    }

    /// A name known valid when the crate is written (the fixed `KUBE-*` and built-in
    /// chains); a unit test checks each one with [`ChainName::new`].
    pub(crate) const fn fixed(name: &'static str) -> Self {
        ChainName(Name::Fixed(name))
    }

    /// A name the crate built from a fixed prefix and a hash (ASCII by
    /// construction, at most 25 bytes).
    pub(crate) fn from_parts(prefix: &str, hash: &str) -> Self {
        let mut name = ArrayString::new();
        name.push_str(prefix);
        name.push_str(hash);
        debug_assert!(ChainName::new(name.as_str()).is_ok(), "{name}");
        ChainName(Name::Inline(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Name::Fixed(name) => name,
            Name::Inline(name) => name,
        }
    }
}

impl fmt::Debug for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ChainName").field(&self.as_str()).finish()
    }
}

// Equality, order and hash are the name's, however it is stored; hashing as `str`
// hashes lets maps keyed by name be searched with a `&str`.
impl PartialEq for ChainName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ChainName {}

impl PartialOrd for ChainName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ChainName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for ChainName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for ChainName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl TryFrom<String> for ChainName {
    type Error = IrError;
    fn try_from(s: String) -> Result<Self, IrError> {
        ChainName::new(s)
    }
}

impl From<ChainName> for String {
    fn from(c: ChainName) -> String {
        c.as_str().to_owned()
    }
}

impl fmt::Display for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text of a `-m comment --comment` match: at most 255 bytes of printable ASCII
/// without quotes or backslashes, not starting with `-` or `!`. It prints quoted
/// when it contains a space, as kube-proxy writes it; this is the one place where
/// rule text is quoted. (A comment read from a dump that does not fit is kept
/// verbatim as [`Match::OtherComment`].)
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Comment(CommentText);

/// A comment's text: inline when short (most are: `ns/svc:port -> ip:port`), so
/// the hundreds of thousands of rules of a large cluster allocate none.
#[derive(Clone)]
enum CommentText {
    Inline(ArrayString<{ Comment::INLINE }>),
    Heap(Box<str>),
}

impl Comment {
    /// The longest comment the kernel's comment match stores.
    pub const MAX_LEN: usize = 255;

    /// The longest comment stored without a heap allocation.
    const INLINE: usize = 56;

    /// Validates a comment.
    ///
    /// # Errors
    /// [`IrError::Comment`] if it is empty, longer than 255 bytes, starts with `-`
    /// or `!` (it would print unquoted and read back as an option or a negation),
    /// or has a character outside printable ASCII or one of `"`, `'`, `\`.
    pub fn new(text: impl Into<String>) -> Result<Self, IrError> {
        let text = text.into();
        match Self::problem(&text) {
            Some(reason) => Err(IrError::Comment {
                comment: text,
                reason,
            }),
            None => Ok(Comment(match ArrayString::from(&text) {
                Ok(inline) => CommentText::Inline(inline),
                Err(_) => CommentText::Heap(text.into_boxed_str()),
            })),
        }
    }

    /// The comment made of `parts` written one after the other, validated as
    /// [`Comment::new`] validates, without an intermediate `String` when it is short.
    ///
    /// # Errors
    /// As [`Comment::new`], for the joined text.
    pub fn from_parts(parts: &[&str]) -> Result<Self, IrError> {
        let mut inline = ArrayString::<{ Self::INLINE }>::new();
        for part in parts {
            if inline.try_push_str(part).is_err() {
                return Self::new(parts.concat());
            }
        }
        match Self::problem(&inline) {
            Some(reason) => Err(IrError::Comment {
                comment: inline.as_str().to_owned(),
                reason,
            }),
            None => Ok(Comment(CommentText::Inline(inline))),
        }
    }

    /// What is wrong with `text` as a comment, if anything.
    fn problem(text: &str) -> Option<&'static str> {
        if text.is_empty() {
            Some("empty")
        } else if text.len() > Self::MAX_LEN {
            Some("longer than 255 bytes")
        } else if text.starts_with('-') || text.starts_with('!') {
            Some("starts with '-' or '!'")
        } else if !text
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && !matches!(b, b'"' | b'\'' | b'\\'))
        {
            Some("has a character other than printable ASCII, or a quote or backslash")
        } else {
            None
        }
    }

    /// The comment's text, unquoted.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            CommentText::Inline(text) => text,
            CommentText::Heap(text) => text,
        }
    }
}

impl fmt::Debug for Comment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Comment").field(&self.as_str()).finish()
    }
}

// Equality, order and hash are the text's, however it is stored.
impl PartialEq for Comment {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Comment {}

impl PartialOrd for Comment {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Comment {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for Comment {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl TryFrom<String> for Comment {
    type Error = IrError;
    fn try_from(s: String) -> Result<Self, IrError> {
        Comment::new(s)
    }
}

impl From<Comment> for String {
    fn from(c: Comment) -> String {
        match c.0 {
            CommentText::Inline(text) => text.as_str().to_owned(),
            CommentText::Heap(text) => text.into_string(),
        }
    }
}

impl Comment {
    /// Writes the comment, quoted when it contains a space.
    pub(crate) fn write_to<W: fmt::Write>(&self, f: &mut W) -> fmt::Result {
        let text = self.as_str();
        if text.contains(' ') {
            f.write_str("\"")?;
            f.write_str(text)?;
            f.write_str("\"")
        } else {
            f.write_str(text)
        }
    }
}

impl fmt::Display for Comment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

/// A network interface name (at most 15 bytes), optionally a prefix (`veth+`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Interface {
    name: String,
    prefix: bool,
}

impl Interface {
    /// Validates an interface name; `prefix` matches every interface whose name starts with it.
    ///
    /// # Errors
    /// [`IrError::Interface`] if the name is empty, longer than 15 bytes, or has a
    /// character outside `[A-Za-z0-9._@:-]`.
    pub fn new(name: impl Into<String>, prefix: bool) -> Result<Self, IrError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > 15 {
            Some("longer than 15 bytes")
        } else if name.contains('+') || !is_plain_token(&name) || name.starts_with('-') {
            Some("has a character other than A-Z a-z 0-9 . _ @ : - or starts with '-'")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(IrError::Interface { name, reason }),
            None => Ok(Interface { name, prefix }),
        }
    }

    /// The name (without `+`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True if this matches every interface whose name starts with [`Self::name`].
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.prefix {
            f.write_str("+")?;
        }
        Ok(())
    }
}

/// A probability in [0, 1] for the `statistic` match, printed with ten decimals
/// as kube-proxy prints it. The compiler only makes `1/n` ([`Probability::one_in`]);
/// 0 comes from dumps (`iptables` accepts it and prints `0.00000000000`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Probability(f64);

impl Probability {
    /// `1/n`: the chance that the first of `n` remaining endpoints is picked.
    ///
    /// # Errors
    /// [`IrError::Probability`] if `n` is 0.
    pub fn one_in(n: usize) -> Result<Self, IrError> {
        if n == 0 {
            return Err(IrError::Probability("1/0".into()));
        }
        Ok(Probability(1.0 / n as f64))
    }

    /// A probability from its value.
    ///
    /// # Errors
    /// [`IrError::Probability`] unless `0 <= p <= 1`.
    pub fn new(p: f64) -> Result<Self, IrError> {
        if (0.0..=1.0).contains(&p) {
            // -0.0 is 0.0: one value, one bit pattern.
            let p = if p == 0.0 { 0.0 } else { p };
            Ok(Probability(p))
        } else {
            Err(IrError::Probability(p.to_string()))
        }
    }

    /// The value.
    pub fn value(self) -> f64 {
        self.0
    }
}

impl PartialEq for Probability {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Probability {}

impl std::hash::Hash for Probability {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

impl fmt::Display for Probability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        text::probability(f, self.0)
    }
}

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
/// order they appear in [`Rule::matches`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Match {
    /// `-m comment --comment TEXT`.
    Comment(Comment),
    /// `-m P -p P`.
    Protocol(Protocol),
    /// `[!] -s ADDR`.
    Source(Not<Address>),
    /// `[!] -d ADDR`.
    Destination(Not<Address>),
    /// `--dport N` (after a [`Match::Protocol`]).
    DestinationPort(u16),
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
    /// `[!] -p NAME` on its own, as `iptables-save` writes it (`-p tcp … -m tcp --dport 80`);
    /// the compiler's `-m tcp -p tcp` is [`Match::Protocol`].
    PlainProtocol(Not<ProtocolName>),
    /// `-m P` on its own (`tcp`, `udp`, `sctp`), loading the module whose port
    /// options follow.
    ProtocolModule(Protocol),
    /// `[!] --sport N[:M]`.
    SourcePort(Not<PortRange>),
    /// `[!] --dport N[:M]` when negated or a range; a plain port is [`Match::DestinationPort`].
    DestinationPorts(Not<PortRange>),
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

impl fmt::Display for NfacctCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NfacctCounter::CtStateInvalidDropped => "ct_state_invalid_dropped_pkts",
            NfacctCounter::LocalhostNodePortsAccepted => "localhost_nps_accepted_pkts",
        })
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

/// The flags that both the typed rules and [`restore::RuleLine`]'s pieces write,
/// each spelt here once.
pub(crate) mod flag {
    /// A source address.
    pub const SOURCE: &str = "-s ";
    /// A random pick.
    pub const STATISTIC: &str = "-m statistic --mode random --probability ";
    /// A jump.
    pub const JUMP: &str = "-j ";
    /// Destination NAT.
    pub const DNAT: &str = "-j DNAT --to-destination ";
}

impl Match {
    /// Writes the match's flags; the common ones without `core::fmt` machinery.
    pub(crate) fn write_to<W: fmt::Write>(&self, f: &mut W) -> fmt::Result {
        match self {
            Match::Comment(c) => {
                f.write_str("-m comment --comment ")?;
                c.write_to(f)
            }
            Match::Protocol(p) => {
                f.write_str("-m ")?;
                f.write_str(p.as_str())?;
                f.write_str(" -p ")?;
                f.write_str(p.as_str())
            }
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
                f.write_str("--dport ")?;
                text::dec(f, u32::from(*p))
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
                text::probability(f, p.0)
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
            Match::PlainProtocol(p) => write!(f, "{}-p {}", p.bang(), p.value),
            Match::ProtocolModule(p) => write!(f, "-m {p}"),
            Match::SourcePort(p) => write!(f, "{}--sport {}", p.bang(), p.value),
            Match::DestinationPorts(p) => write!(f, "{}--dport {}", p.bang(), p.value),
            Match::Multiport { of, ports } => {
                let flag = match of {
                    PortsOf::Source => "--sports",
                    PortsOf::Destination => "--dports",
                    PortsOf::Either => "--ports",
                };
                write!(f, "-m multiport {}{flag} ", ports.bang())?;
                extra::write_ports(f, &ports.value)
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

/// A change to the packet mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MarkOp {
    /// `--or-mark V`.
    Or(u32),
    /// `--xor-mark V`.
    Xor(u32),
    /// `--and-mark V`.
    And(u32),
    /// `--set-xmark V/M`: clear the bits of M, then XOR V (what `iptables-save` prints
    /// for every MARK target: `--or-mark V` is `V/V`, `--xor-mark V` is `V/0x0`).
    SetXmark {
        /// The value XORed in.
        value: u32,
        /// The bits cleared first.
        mask: u32,
    },
    /// `--set-mark V[/M]`.
    Set(Mark),
}

impl MarkOp {
    /// `(value, mask)` of the `--set-xmark V/M` this operation is: the kernel
    /// computes `(mark & !mask) ^ value` for every MARK target.
    pub(crate) fn xmark(&self) -> (u32, u32) {
        match *self {
            MarkOp::Or(v) => (v, v),
            MarkOp::Xor(v) => (v, 0),
            MarkOp::And(v) => (0, !v),
            MarkOp::SetXmark { value, mask } => (value, mask),
            MarkOp::Set(Mark { value, mask }) => (value, value | mask.unwrap_or(u32::MAX)),
        }
    }

    /// The one operation for what this one does to a mark: `--or-mark`,
    /// `--xor-mark` or `--and-mark` when one of them says it, else `--set-xmark`.
    /// Equal effects give equal values.
    pub(crate) fn normalized(&self) -> MarkOp {
        let (value, mask) = self.xmark();
        if mask == value {
            MarkOp::Or(value)
        } else if mask == 0 {
            MarkOp::Xor(value)
        } else if value == 0 {
            MarkOp::And(!mask)
        } else {
            MarkOp::SetXmark { value, mask }
        }
    }
}

/// What a rule does with a packet it matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Target {
    /// `-j CHAIN`.
    Jump(ChainName),
    /// `-g CHAIN`.
    Goto(ChainName),
    /// `-j ACCEPT`.
    Accept,
    /// `-j DROP`.
    Drop,
    /// `-j RETURN`.
    Return,
    /// `-j REJECT`.
    Reject,
    /// `-j DNAT --to-destination ADDR:PORT` (IPv6 bracketed).
    Dnat(SocketAddr),
    /// `-j DNAT --to-destination ADDR` without a port: the packet keeps its
    /// destination port (what Docker, CNI portmap and hand-written rules use).
    DnatAddress(IpAddr),
    /// `-j MASQUERADE [--random-fully]`.
    Masquerade {
        /// Adds `--random-fully`.
        random_fully: bool,
    },
    /// `-j MARK --or-mark V` or `--xor-mark V`.
    Mark(MarkOp),
    /// `-j REJECT --reject-with TYPE`.
    RejectWith(Word),
    /// `-j SNAT --to-source ADDR[:PORT[-PORT]] [--random-fully]`.
    Snat {
        /// The new source address.
        to: IpAddr,
        /// The new source ports, if restricted.
        ports: Option<PortRange>,
        /// Adds `--random-fully`.
        random_fully: bool,
    },
    /// Any other target, verbatim with its options (`-j LOG --log-prefix "x: "`).
    Other(RawText),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

impl Target {
    /// Writes `-j …` with its options; the common ones without `core::fmt` machinery.
    pub(crate) fn write_to<W: fmt::Write>(&self, f: &mut W) -> fmt::Result {
        match self {
            Target::Jump(c) => {
                f.write_str(flag::JUMP)?;
                f.write_str(c.as_str())
            }
            Target::Goto(c) => write!(f, "-g {c}"),
            Target::Accept => f.write_str("-j ACCEPT"),
            Target::Drop => f.write_str("-j DROP"),
            Target::Return => f.write_str("-j RETURN"),
            Target::Reject => f.write_str("-j REJECT"),
            Target::Dnat(to) => {
                f.write_str(flag::DNAT)?;
                text::socket(f, *to)
            }
            Target::DnatAddress(to) => {
                f.write_str(flag::DNAT)?;
                write!(f, "{to}")
            }
            Target::Masquerade { random_fully } => {
                f.write_str("-j MASQUERADE")?;
                if *random_fully {
                    f.write_str(" --random-fully")?;
                }
                Ok(())
            }
            Target::Mark(MarkOp::Or(v)) => write!(f, "-j MARK --or-mark {v:#x}"),
            Target::Mark(MarkOp::Xor(v)) => write!(f, "-j MARK --xor-mark {v:#x}"),
            Target::Mark(MarkOp::And(v)) => write!(f, "-j MARK --and-mark {v:#x}"),
            Target::Mark(MarkOp::SetXmark { value, mask }) => {
                write!(f, "-j MARK --set-xmark {value:#x}/{mask:#x}")
            }
            Target::Mark(MarkOp::Set(m)) => write!(f, "-j MARK --set-mark {m}"),
            Target::RejectWith(with) => write!(f, "-j REJECT --reject-with {with}"),
            Target::Snat {
                to,
                ports,
                random_fully,
            } => {
                f.write_str("-j SNAT --to-source ")?;
                match (to, ports) {
                    (IpAddr::V6(ip), Some(_)) => write!(f, "[{ip}]")?,
                    _ => write!(f, "{to}")?,
                }
                if let Some(p) = ports {
                    write!(f, ":{}", p.first)?;
                    if p.last != p.first {
                        write!(f, "-{}", p.last)?;
                    }
                }
                if *random_fully {
                    f.write_str(" --random-fully")?;
                }
                Ok(())
            }
            Target::Other(raw) => write!(f, "{raw}"),
        }
    }
}

/// A rule's matches: a vector that keeps up to three inline, as most of the
/// rules a large cluster has (endpoint jumps, DNAT, hairpin masquerade) need no
/// heap allocation for their matches.
pub type Matches = SmallVec<[Match; 3]>;

/// One rule: matches in order, then an optional target (a rule without a target
/// only counts packets, like kube-proxy's "will be dropped" marker rule).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Rule {
    /// The matches, printed in this order (up to three stored inline).
    pub matches: Matches,
    /// The target.
    pub target: Option<Target>,
}

impl Rule {
    /// A rule with no matches and no target; add them with the builder methods.
    pub fn new() -> Self {
        Rule::default()
    }

    /// Adds a match.
    pub fn with(mut self, m: Match) -> Self {
        self.matches.push(m);
        self
    }

    /// Adds a match if it is `Some`.
    pub fn with_opt(mut self, m: Option<Match>) -> Self {
        self.push_opt(m);
        self
    }

    /// Adds a match in place if it is `Some`.
    pub(crate) fn push_opt(&mut self, m: Option<Match>) {
        if let Some(m) = m {
            self.matches.push(m);
        }
    }

    /// Sets the target.
    pub fn to(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    /// The chain this rule jumps or goes to, if any.
    pub fn jump_target(&self) -> Option<&ChainName> {
        match &self.target {
            Some(Target::Jump(c) | Target::Goto(c)) => Some(c),
            _ => None,
        }
    }

    /// The rule's comment, if it has one.
    pub fn comment(&self) -> Option<&Comment> {
        self.matches.iter().find_map(|m| match m {
            Match::Comment(c) => Some(c),
            _ => None,
        })
    }
}

impl fmt::Display for Rule {
    /// The rule's arguments after `-A CHAIN`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

impl Rule {
    /// Writes the rule's arguments after `-A CHAIN`.
    pub(crate) fn write_to<W: fmt::Write>(&self, f: &mut W) -> fmt::Result {
        let mut first = true;
        for m in &self.matches {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            m.write_to(f)?;
        }
        if let Some(t) = &self.target {
            if !first {
                f.write_str(" ")?;
            }
            t.write_to(f)?;
        }
        Ok(())
    }
}

/// A built-in chain's policy (`:INPUT ACCEPT [0:0]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Policy {
    /// `ACCEPT`.
    Accept,
    /// `DROP`.
    Drop,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Accept => "ACCEPT",
            Policy::Drop => "DROP",
        })
    }
}

/// A chain and its rules, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// The chain's name.
    pub name: ChainName,
    /// The policy of a built-in chain; `None` for a user chain (`-`).
    pub policy: Option<Policy>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

impl Chain {
    /// An empty user chain.
    pub fn new(name: ChainName) -> Self {
        Chain::with_rules(name, Vec::new())
    }

    /// A user chain with these rules.
    pub fn with_rules(name: ChainName, rules: Vec<Rule>) -> Self {
        Chain {
            name,
            policy: None,
            rules,
        }
    }
}

/// One table's chains, in the order they are declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRules {
    /// The table.
    pub table: Table,
    /// The chains, by name, in declaration order.
    pub chains: IndexMap<ChainName, Chain>,
}

impl TableRules {
    /// An empty table.
    pub fn new(table: Table) -> Self {
        TableRules {
            table,
            chains: IndexMap::new(),
        }
    }

    /// The chain with this name, created (empty, at the end) if missing.
    pub fn chain_mut(&mut self, name: &ChainName) -> &mut Chain {
        self.chains
            .entry(name.clone())
            .or_insert_with(|| Chain::new(name.clone()))
    }

    /// The chain with this name.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.get(name)
    }

    /// Appends a rule to a chain, creating the chain if needed.
    pub fn append(&mut self, chain: &ChainName, rule: Rule) {
        self.chain_mut(chain).rules.push(rule);
    }
}

/// A family's rules: the tables in the order they are written (filter, then nat).
///
/// Displayed as its `iptables-restore` text, as [`crate::render`] writes it:
///
/// ```
/// use svcnat::model::IpFamily;
/// use svcnat::ruleset::{ChainName, Rule, Ruleset, Table, TableRules, Target};
/// let mut nat = TableRules::new(Table::Nat);
/// nat.append(&ChainName::new("MY-CHAIN")?, Rule::new().to(Target::Return));
/// let ruleset = Ruleset { family: IpFamily::Ipv4, tables: vec![nat] };
/// assert_eq!(ruleset.to_string(), svcnat::render::to_string(&ruleset));
/// assert_eq!(ruleset.to_string(), "*nat\n:MY-CHAIN - [0:0]\n-A MY-CHAIN -j RETURN\nCOMMIT\n");
/// # Ok::<(), svcnat::ruleset::IrError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    /// The family (decides between `iptables-restore` and `ip6tables-restore`).
    pub family: IpFamily,
    /// The tables, in order.
    pub tables: Vec<TableRules>,
}

impl Ruleset {
    /// The rules of one table.
    pub fn table(&self, table: Table) -> Option<&TableRules> {
        self.tables.iter().find(|t| t.table == table)
    }

    /// One chain of one table.
    pub fn chain(&self, table: Table, chain: &str) -> Option<&Chain> {
        self.table(table)?.chain(chain)
    }

    /// The number of rules in all tables.
    pub fn rule_count(&self) -> usize {
        self.tables
            .iter()
            .flat_map(|t| t.chains.values())
            .map(|c| c.rules.len())
            .sum()
    }
}

impl fmt::Display for Ruleset {
    /// The `iptables-restore` text, as [`crate::render::write_fmt`] writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        restore::ruleset(f, self)
    }
}
