//! The objects of an nftables table, on the anchor of knftables' objects: the
//! table itself, chains (base chains with their type, hook and priority), rules,
//! sets, verdict maps and their elements, each with its comment.

use std::net::IpAddr;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::names::{Name, NftComment};
use super::stmt::{Stmt, Verdict};
use crate::model::{IpFamily, Protocol};

/// The address family of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    /// `ip`: IPv4.
    Ip,
    /// `ip6`: IPv6.
    Ip6,
}

impl Family {
    /// `ip` or `ip6`: the family's keyword, which is also its address matches'
    /// prefix (`ip daddr`, `ip6 daddr`).
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    /// The set key type of this family's addresses.
    pub fn addr_type(self) -> KeyType {
        match self {
            Family::Ip => KeyType::Ipv4Addr,
            Family::Ip6 => KeyType::Ipv6Addr,
        }
    }

    /// The address family of this table family's addresses.
    pub fn ip_family(self) -> IpFamily {
        match self {
            Family::Ip => IpFamily::Ipv4,
            Family::Ip6 => IpFamily::Ipv6,
        }
    }
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ChainType {
    /// `filter`.
    Filter,
    /// `nat`.
    Nat,
}

/// The netfilter hook a base chain is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Hook {
    /// `prerouting`.
    Prerouting,
    /// `input`.
    Input,
    /// `forward`.
    Forward,
    /// `output`.
    Output,
    /// `postrouting`.
    Postrouting,
}

/// What makes a chain a base chain: the packets of a hook enter it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BaseChain {
    /// The chain's type.
    pub kind: ChainType,
    /// The hook.
    pub hook: Hook,
    /// The priority, as a number (`dstnat` is -100, `srcnat` 100, `filter` 0).
    pub priority: i32,
}

/// A rule: statements and an optional comment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// The statements, run left to right.
    pub stmts: Vec<Stmt>,
    /// The rule's comment.
    pub comment: Option<NftComment>,
}

impl Rule {
    /// A rule without a comment.
    pub fn new(stmts: Vec<Stmt>) -> Rule {
        Rule {
            stmts,
            comment: None,
        }
    }

    /// The same rule with a comment.
    pub fn with_comment(mut self, comment: NftComment) -> Rule {
        self.comment = Some(comment);
        self
    }
}

/// A chain: regular, or a base chain with its hook; its rules in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Chain {
    /// Set for base chains.
    pub base: Option<BaseChain>,
    /// The chain's comment.
    pub comment: Option<NftComment>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

/// The type of one field of a set's or map's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KeyType {
    /// `ipv4_addr`.
    Ipv4Addr,
    /// `ipv6_addr`.
    Ipv6Addr,
    /// `inet_proto`.
    InetProto,
    /// `inet_service`.
    InetService,
}

/// One field of an element's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KeyValue {
    /// An address.
    Addr(IpAddr),
    /// A protocol.
    Proto(Protocol),
    /// A port.
    Port(u16),
}

/// A set's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SetFlag {
    /// `dynamic`: rules may add elements (`update @set`).
    Dynamic,
    /// `timeout`: elements expire.
    Timeout,
}

/// An element of a set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Element {
    /// The key, one value per field of the set's type.
    pub key: Vec<KeyValue>,
    /// The element's comment.
    pub comment: Option<NftComment>,
}

/// An element of a verdict map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MapElement {
    /// The key, one value per field of the map's type.
    pub key: Vec<KeyValue>,
    /// The verdict for packets whose key this is.
    pub verdict: Verdict,
    /// The element's comment.
    pub comment: Option<NftComment>,
}

/// A named set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Set {
    /// The key's fields.
    pub key: Vec<KeyType>,
    /// The flags.
    pub flags: Vec<SetFlag>,
    /// How long an element lives, in seconds (with [`SetFlag::Timeout`]).
    pub timeout: Option<u32>,
    /// The set's comment.
    pub comment: Option<NftComment>,
    /// The elements, in the order written.
    pub elements: Vec<Element>,
}

impl Set {
    /// An empty set of this key type, without flags.
    pub fn new(key: Vec<KeyType>, comment: Option<NftComment>) -> Set {
        Set {
            key,
            flags: Vec::new(),
            timeout: None,
            comment,
            elements: Vec::new(),
        }
    }
}

/// A named verdict map (`type KEY : verdict`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Map {
    /// The key's fields.
    pub key: Vec<KeyType>,
    /// The map's comment.
    pub comment: Option<NftComment>,
    /// The elements, in the order written.
    pub elements: Vec<MapElement>,
}

impl Map {
    /// An empty verdict map of this key type.
    pub fn new(key: Vec<KeyType>, comment: Option<NftComment>) -> Map {
        Map {
            key,
            comment,
            elements: Vec::new(),
        }
    }
}

/// One nftables table and everything in it: what kube-proxy's nftables mode
/// writes, as values. Maps keep insertion order; the writer
/// ([`Ruleset::write_dump`]) prints objects sorted by name, as knftables' fake
/// `Dump()` does, so equal rulesets print the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    /// The table's family.
    pub family: Family,
    /// The table's name.
    pub table: Name,
    /// The table's comment.
    pub comment: Option<NftComment>,
    /// The chains by name.
    pub chains: IndexMap<Name, Chain>,
    /// The sets by name.
    pub sets: IndexMap<Name, Set>,
    /// The verdict maps by name.
    pub maps: IndexMap<Name, Map>,
}

impl Ruleset {
    /// An empty table.
    pub fn new(family: Family, table: Name, comment: Option<NftComment>) -> Ruleset {
        Ruleset {
            family,
            table,
            comment,
            chains: IndexMap::new(),
            sets: IndexMap::new(),
            maps: IndexMap::new(),
        }
    }

    /// Every rule, with the name of its chain, chains in name order.
    pub fn rules(&self) -> impl Iterator<Item = (&Name, &Rule)> {
        let mut names: Vec<&Name> = self.chains.keys().collect();
        names.sort();
        names
            .into_iter()
            .flat_map(move |name| self.chains[name].rules.iter().map(move |r| (name, r)))
    }
}
