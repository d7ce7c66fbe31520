//! Which way a new connection goes through a ruleset: every outcome, with its
//! probability, final destination, mark, masquerade and the rules it took.
//!
//! Pure: a [`Ruleset`] (with its built-in chains, see [`traceable`]), a [`Packet`]
//! and the [`Node`]'s addresses in, a [`Trace`] out. The walk follows netfilter's
//! order for the nat and filter tables:
//!
//! * a packet arriving on an interface: nat `PREROUTING`; then, if its
//!   destination (after DNAT) is a node address, filter `INPUT` and nat `INPUT`,
//!   otherwise filter `FORWARD` and nat `POSTROUTING`;
//! * a packet sent by a local process: nat `OUTPUT`, filter `OUTPUT`, nat
//!   `POSTROUTING`, and, if it is addressed to the node itself, filter `INPUT`.
//!
//! Jumps, gotos, `RETURN` and built-in policies are followed. The packet is the
//! first of a new connection: conntrack state `NEW`, plus `DNAT` once it has been
//! DNATed. `-m statistic --mode random` **branches**: the rule matches with
//! probability p and falls through with 1-p, so the outcomes' probabilities sum
//! to 1. `-m recent --rcheck` (session affinity) is taken as *not* matching, as
//! for a client that has no affinity yet; this is listed in [`Trace::affinity`]
//! and [`Trace::assumptions`]. The packet is never a later fragment (`-f`).
//! Local traffic to the node leaves by `lo` (`-o lo` in nat `OUTPUT`, filter
//! `OUTPUT`, nat `POSTROUTING`) and loops back into filter `INPUT` on `lo`
//! (`-i lo`).
//!
//! Matches the tracer cannot decide (ipsets, physdev, `-o` without a known output
//! interface, any verbatim [`Match::Other`]) are **treated as not matching** and
//! listed in [`Trace::unevaluated`] with the rule they were met in, unless another
//! match of the rule already rules it out. A comment never affects matching,
//! verbatim ([`Match::OtherComment`]) or not. A verbatim [`Target::Other`]
//! (`LOG`, `CT`, …) is taken as letting the packet continue, and listed too;
//! a verbatim `MASQUERADE` (with `--random`, `--to-ports`) masquerades; a
//! verbatim `DNAT`, `SNAT`, `REDIRECT` or `NETMAP` (a range, `--random`,
//! `--persistent`) ends the nat hook with the addresses unchanged, is listed,
//! and marks the outcome ([`Outcome::nat_unevaluated`]). Only the nat and
//! filter tables are walked.
//!
//! **Cost and merging.** The walk is linear in the dump on any chain graph the
//! kernel accepts, however the chains share each other: a chain's results for
//! the packet state entering it (addresses, mark, conntrack `DNAT`, hook) are
//! memoised, and the branches inside a chain advance rule by rule and merge
//! when their states agree. So ways through the rules that end the same are
//! **one outcome**: two outcomes differ in verdict, destination, source, mark,
//! masquerade or note, and a merged outcome's probability is the sum of its
//! ways', [`Outcome::ways`] counts them, and its path is the first one's (the
//! matching side of each fork first). A path keeps at most [`MAX_PATH`] rules
//! ([`Outcome::path_len`] gives the full length, which can be 2^n for n chains
//! that each enter the next twice). [`Trace::rules_evaluated`] is the work
//! done. A graph with jump cycles (refused by the kernel) is walked without
//! sharing across the chains of a cycle, within [`MAX_EVALUATIONS`].
//!
//! ```
//! use svcnat::model::*;
//! use svcnat::trace::{Entry, Node, Packet, Verdict};
//! let mut state = ClusterState::new();
//! state.upsert_service(
//!     Service::cluster_ip("ns1", "svc1", "172.30.0.41".parse().unwrap())
//!         .with_port(ServicePort::tcp("p80", 80)),
//! );
//! state.upsert_slice(
//!     EndpointSlice::new("ns1", "svc1", "svc1-1", IpFamily::Ipv4)
//!         .with_port(EndpointPort::tcp("p80", 8080))
//!         .with_endpoint(Endpoint::ready("10.180.0.1".parse().unwrap()))
//!         .with_endpoint(Endpoint::ready("10.180.0.2".parse().unwrap())),
//! );
//! let config = ProxyConfig::default().with_cluster_cidrs(["10.0.0.0/8".parse().unwrap()]);
//! let ruleset = svcnat::compile::compile(&state, &config)?;
//! let ruleset = svcnat::trace::traceable(&ruleset, &svcnat::compile::jump_rules(&config)?);
//!
//! let packet = Packet::tcp("10.1.2.3".parse().unwrap(), "172.30.0.41".parse().unwrap(), 80)
//!     .arriving_on("eth0");
//! let node = Node::new(["192.168.0.2".parse().unwrap()]);
//! let trace = svcnat::trace::trace(&ruleset, &packet, &node).unwrap();
//! assert_eq!(trace.outcomes.len(), 2);
//! for o in &trace.outcomes {
//!     assert!((o.probability - 0.5).abs() < 1e-12);
//!     assert_eq!(o.verdict, Verdict::Accept);
//!     assert_eq!(o.destination.port(), 8080);
//!     assert!(!o.masquerade); // pod traffic keeps its source
//! }
//! # Ok::<(), svcnat::Error>(())
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{IpFamily, Protocol};
use crate::ruleset::JumpRule;

pub mod nft;
use crate::ruleset::{
    AddrKind, AddrType, Address, Chain, ChainName, CtState, Direction, Interface, Match, Not,
    Policy, PortsOf, ProtocolMatch, ProtocolName, RecentAction, Rule, Ruleset, Table, TableRules,
    Target,
};

/// Where a packet enters the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Entry {
    /// Sent by a process on the node.
    Local,
    /// Arriving on this interface.
    Interface(String),
}

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Packet {
    /// Source address.
    pub source: IpAddr,
    /// Destination address.
    pub destination: IpAddr,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Source port.
    pub source_port: u16,
    /// Destination port.
    pub destination_port: u16,
    /// Where it enters.
    pub entry: Entry,
    /// The interface it leaves by, if known (for `-o`); routing is not modelled.
    pub out_interface: Option<String>,
    /// Its mark when it enters.
    pub mark: u32,
}

impl Packet {
    /// A packet of `protocol` from `source` (port 40000) to `destination:port`,
    /// arriving on `eth0`, mark 0.
    pub fn new(protocol: Protocol, source: IpAddr, destination: IpAddr, port: u16) -> Self {
        Packet {
            source,
            destination,
            protocol,
            source_port: 40000,
            destination_port: port,
            entry: Entry::Interface("eth0".into()),
            out_interface: None,
            mark: 0,
        }
    }

    /// A TCP packet, see [`Packet::new`].
    pub fn tcp(source: IpAddr, destination: IpAddr, port: u16) -> Self {
        Packet::new(Protocol::Tcp, source, destination, port)
    }

    /// The same packet, sent by a local process.
    pub fn from_local(mut self) -> Self {
        self.entry = Entry::Local;
        self
    }

    /// The same packet, arriving on `iface`.
    pub fn arriving_on(mut self, iface: impl Into<String>) -> Self {
        self.entry = Entry::Interface(iface.into());
        self
    }

    /// The same packet with this source port.
    pub fn with_source_port(mut self, port: u16) -> Self {
        self.source_port = port;
        self
    }

    /// The same packet, leaving by `iface` (evaluates `-o`).
    pub fn leaving_by(mut self, iface: impl Into<String>) -> Self {
        self.out_interface = Some(iface.into());
        self
    }

    /// The same packet with this mark.
    pub fn with_mark(mut self, mark: u32) -> Self {
        self.mark = mark;
        self
    }
}

/// What the tracer knows about the node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Node {
    /// The node's addresses; loopback (127.0.0.0/8, ::1) always counts as local.
    pub addresses: Vec<IpAddr>,
    /// The node's interface names, if known (an entry interface outside them is
    /// noted as an assumption).
    pub interfaces: Vec<String>,
}

impl Node {
    /// A node with these addresses (plus loopback).
    pub fn new(addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        Node {
            addresses: addresses.into_iter().collect(),
            interfaces: Vec::new(),
        }
    }

    /// The same node with these interface names.
    pub fn with_interfaces(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.interfaces = names.into_iter().collect();
        self
    }

    /// True if `ip` is an address of the node (`addrtype LOCAL`).
    pub fn is_local(&self, ip: &IpAddr) -> bool {
        ip.is_loopback() || self.addresses.contains(ip)
    }
}

/// What finally happens to the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Verdict {
    /// Delivered locally or forwarded.
    Accept,
    /// Dropped silently.
    Drop,
    /// Rejected (the client sees an ICMP error or a reset: "connection refused").
    Reject,
}

impl Verdict {
    /// `accept`, `drop` or `reject`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Drop => "drop",
            Verdict::Reject => "reject",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rule of a ruleset: table, chain and 1-based index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RuleRef {
    /// The table.
    pub table: TableId,
    /// The chain.
    pub chain: ChainId,
    /// The 1-based position of the rule in the chain.
    pub index: usize,
}

/// The table of a [`RuleRef`]: an iptables table, or an nftables table.
/// Serialised as the iptables table alone (`"Nat"`), or as the nftables family
/// and name (`["Ip", "kube-proxy"]`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum TableId {
    /// An iptables table (`nat`, `filter`, …).
    Iptables(Table),
    /// An nftables table: its family and name (`ip kube-proxy`).
    Nft(crate::nft::Family, crate::nft::Name),
}

impl From<Table> for TableId {
    fn from(t: Table) -> Self {
        TableId::Iptables(t)
    }
}

impl PartialEq<Table> for TableId {
    fn eq(&self, other: &Table) -> bool {
        *self == TableId::Iptables(*other)
    }
}

impl fmt::Display for TableId {
    /// The iptables table (`nat`), or the nftables table's name (`kube-proxy`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableId::Iptables(t) => write!(f, "{t}"),
            TableId::Nft(_, name) => write!(f, "{name}"),
        }
    }
}

/// The chain of a [`RuleRef`]: an iptables chain, or an nftables chain (whose
/// names are longer and may hold `/`). Serialised as the name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum ChainId {
    /// An iptables chain.
    Iptables(ChainName),
    /// An nftables chain.
    Nft(crate::nft::Name),
}

impl ChainId {
    /// The name.
    pub fn as_str(&self) -> &str {
        match self {
            ChainId::Iptables(c) => c.as_str(),
            ChainId::Nft(c) => c.as_str(),
        }
    }
}

impl From<ChainName> for ChainId {
    fn from(c: ChainName) -> Self {
        ChainId::Iptables(c)
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RuleRef {
    /// The chain's kind follows the table's: an nftables table's chains are
    /// nftables names.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            table: TableId,
            chain: String,
            index: usize,
        }
        let raw = Raw::deserialize(d)?;
        let chain = match raw.table {
            TableId::Iptables(_) => ChainName::new(raw.chain)
                .map(ChainId::Iptables)
                .map_err(serde::de::Error::custom)?,
            TableId::Nft(..) => crate::nft::Name::new(raw.chain)
                .map(ChainId::Nft)
                .map_err(serde::de::Error::custom)?,
        };
        Ok(RuleRef {
            table: raw.table,
            chain,
            index: raw.index,
        })
    }
}

impl RuleRef {
    /// `CHAIN:INDEX`, without the table.
    pub fn short(&self) -> String {
        format!("{}:{}", self.chain, self.index)
    }
}

impl fmt::Display for RuleRef {
    /// `TABLE/CHAIN:INDEX`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.table, self.chain, self.index)
    }
}

/// One way the packet can go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Outcome {
    /// The chance of this outcome.
    pub probability: f64,
    /// What happens to the packet.
    pub verdict: Verdict,
    /// Its destination at the end (after DNAT).
    pub destination: SocketAddr,
    /// Its source at the end, after SNAT (not after MASQUERADE, whose address is
    /// the outgoing interface's, which the tracer does not know).
    pub source: SocketAddr,
    /// Its mark at the end.
    pub mark: u32,
    /// True if a MASQUERADE target was reached in nat `POSTROUTING`.
    pub masquerade: bool,
    /// The rules that matched and acted, in order (jumps included): the first
    /// [`MAX_PATH`] of them (fewer when there are many outcomes, see
    /// [`MAX_PATH_TOTAL`]); [`Outcome::path_len`] says how many there are.
    /// When outcomes were merged, the path of the first one found.
    pub path: Vec<RuleRef>,
    /// How many rules the whole path has (saturating at `u64::MAX`): more than
    /// `path.len()` when the path was cut.
    #[serde(default)]
    pub path_len: u64,
    /// How many ways through the rules lead to this outcome (saturating at
    /// `u64::MAX`): 1 unless outcomes that end the same way were merged.
    #[serde(default)]
    pub ways: u64,
    /// Why the walk stopped early (a chain loop), or which NAT target was not
    /// evaluated, if any.
    pub note: Option<String>,
    /// True if a NAT target the tracer cannot apply (`DNAT` to a range,
    /// `--random`, `REDIRECT`, …) was reached: its nat hook ended there and the
    /// addresses shown are the ones before it, so they may be wrong.
    pub nat_unevaluated: bool,
}

/// A match or target the tracer could not evaluate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Unevaluated {
    /// The rule it is in.
    pub at: RuleRef,
    /// Its text.
    pub what: String,
    /// What the tracer did instead.
    pub taken_as: String,
}

impl fmt::Display for Unevaluated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.at, self.what, self.taken_as)
    }
}

/// Every outcome of a packet, and what the tracer assumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Trace {
    /// The outcomes, in the order the walk found them; probabilities sum to 1.
    pub outcomes: Vec<Outcome>,
    /// Matches and targets that were not evaluated, once each.
    pub unevaluated: Vec<Unevaluated>,
    /// Session-affinity checks (`-m recent --rcheck`) that were not evaluated
    /// and taken as not matching (a client with no affinity yet), once each;
    /// also summarised in [`Trace::assumptions`].
    pub affinity: Vec<Unevaluated>,
    /// Assumptions the result depends on (session affinity, missing chains).
    pub assumptions: Vec<String>,
    /// How many times a rule was evaluated for a branch: the tracer's work,
    /// at most the rules of the chains walked times the distinct packet
    /// states entering each (not the number of ways through them).
    #[serde(default)]
    pub rules_evaluated: u64,
}

/// Why a packet cannot be traced.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TraceError {
    /// The packet's addresses are not of the ruleset's family.
    #[error("packet {source_ip} -> {destination} is not {family}")]
    Family {
        /// The ruleset's family.
        family: IpFamily,
        /// The packet's source.
        source_ip: IpAddr,
        /// The packet's destination.
        destination: IpAddr,
    },
    /// A rule jumps to a chain the table does not have.
    #[error("{from} jumps to {chain}, which {table} does not have")]
    MissingChain {
        /// The table.
        table: Table,
        /// The missing chain.
        chain: ChainName,
        /// The jumping rule.
        from: RuleRef,
    },
    /// An nftables rule names a chain, set or map its table does not have
    /// (the kernel refuses to load such a table).
    #[error("{from} names the {kind} {name}, which the table does not have")]
    NftMissing {
        /// `chain`, `set` or `map`.
        kind: &'static str,
        /// The missing object's name.
        name: String,
        /// The rule that names it (for a map element's chain, the rule that
        /// looks the map up).
        from: RuleRef,
    },
    /// An nftables table the kernel refuses to load because of its chain
    /// graph: a chain that reaches itself through jumps, gotos and verdict
    /// maps, or more than [`nft::MAX_DEPTH`] nested jumps below a base chain.
    #[error("chain {chain}: {reason} (the kernel refuses such a table)")]
    NftChains {
        /// The chain where it was found.
        chain: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// More distinct outcomes (or branches alive in one chain) than
    /// [`MAX_OUTCOMES`].
    #[error("more than {MAX_OUTCOMES} outcomes")]
    TooManyOutcomes,
    /// More rule evaluations than [`MAX_EVALUATIONS`]: only a chain graph with
    /// jump cycles (which the kernel refuses to load) can need that many.
    #[error("more than {MAX_EVALUATIONS} rule evaluations")]
    TooManyEvaluations,
}

/// The most outcomes a trace may have, after merging.
pub const MAX_OUTCOMES: usize = 100_000;

/// The most rules an [`Outcome::path`] keeps.
pub const MAX_PATH: usize = 10_000;

/// The most rules all the paths of a trace keep together: with more than
/// `MAX_PATH_TOTAL / MAX_PATH` outcomes, each keeps `MAX_PATH_TOTAL / n` (at
/// least one).
pub const MAX_PATH_TOTAL: usize = 1_000_000;

/// The most rule evaluations ([`Trace::rules_evaluated`]) a trace may make.
pub const MAX_EVALUATIONS: u64 = 50_000_000;

/// A ruleset ready for tracing: `ruleset` plus the built-in chains (nat
/// `PREROUTING INPUT OUTPUT POSTROUTING`, filter `INPUT FORWARD OUTPUT`, policy
/// ACCEPT, placed first) holding `jumps` (from [`crate::compile::jump_rules`]),
/// each inserted at the top of its chain as kube-proxy does, so the last one
/// listed for a chain ends up first. Built-in chains the ruleset already has are
/// kept, with the jumps inserted above their rules.
pub fn traceable(ruleset: &Ruleset, jumps: &[JumpRule]) -> Ruleset {
    let mut out = ruleset.clone();
    for table in [Table::Filter, Table::Nat] {
        if out.table(table).is_none() {
            out.tables.push(TableRules::new(table));
        }
    }
    for t in &mut out.tables {
        if !matches!(t.table, Table::Filter | Table::Nat) {
            continue;
        }
        let builtins = t.table.builtin_chains();
        let mut chains = indexmap::IndexMap::new();
        for name in builtins {
            let name = ChainName::fixed(name);
            let mut chain = t.chains.shift_remove(&name).unwrap_or_else(|| Chain {
                name: name.clone(),
                policy: Some(Policy::Accept),
                rules: Vec::new(),
            });
            if chain.policy.is_none() {
                chain.policy = Some(Policy::Accept);
            }
            chains.insert(name, chain);
        }
        chains.extend(std::mem::take(&mut t.chains));
        t.chains = chains;
        for j in jumps.iter().filter(|j| j.table == t.table) {
            if let Some(chain) = t.chains.get_mut(&j.chain) {
                chain.rules.insert(0, j.rule.clone());
            }
        }
    }
    out
}

/// What a branch carries that rules read or change: everything but its chance
/// and its path. Two branches with equal cores at the same rule have the same
/// future, which is what lets the walk merge them and memoise chains.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Core {
    dst: SocketAddr,
    src: SocketAddr,
    mark: u32,
    dnat: bool,
    masquerade: bool,
    /// Set when a NAT target the tracer could not apply ended a nat hook.
    nat_unevaluated: Option<String>,
}

impl Core {
    /// The packet as it enters the node.
    fn of(packet: &Packet) -> Self {
        Core {
            dst: SocketAddr::new(packet.destination, packet.destination_port),
            src: SocketAddr::new(packet.source, packet.source_port),
            mark: packet.mark,
            dnat: false,
            masquerade: false,
            nat_unevaluated: None,
        }
    }
}

/// One branch of the walk, or one result of a chain walked from probability 1
/// (then `probability`, `path` and `ways` are relative to the branch entering
/// the chain).
#[derive(Debug, Clone)]
struct Branch {
    probability: f64,
    core: Core,
    path: Path,
    /// How many ways through the rules were merged into this branch.
    ways: u64,
}

impl Branch {
    fn start(core: Core) -> Self {
        Branch {
            probability: 1.0,
            core,
            path: Path::default(),
            ways: 1,
        }
    }

    /// This branch, followed by `sub`, a result of a chain it entered.
    fn then(&self, sub: &Branch) -> Branch {
        Branch {
            probability: self.probability * sub.probability,
            core: sub.core.clone(),
            path: self.path.cat(&sub.path),
            ways: self.ways.saturating_mul(sub.ways),
        }
    }
}

/// How a chain walk ended for a branch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Flow {
    /// Fell off a user chain or hit RETURN: continue in the caller.
    Continue,
    /// ACCEPT, or a NAT target: this hook is done, the packet goes on.
    HookDone,
    /// The packet is dropped or rejected.
    Final(Verdict, Option<String>),
}

/// Branches with their flows, where two with the same core and flow are one:
/// their chances and ways add up and the first one's path is kept. First-seen
/// order.
#[derive(Debug, Default)]
struct Merged {
    items: Vec<(Branch, Flow)>,
    index: HashMap<(Core, Flow), usize>,
}

impl Merged {
    fn push(&mut self, b: Branch, flow: Flow) {
        match self.index.entry((b.core.clone(), flow)) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let kept = &mut self.items[*e.get()].0;
                kept.probability += b.probability;
                kept.ways = kept.ways.saturating_add(b.ways);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                let flow = e.key().1.clone();
                e.insert(self.items.len());
                self.items.push((b, flow));
            }
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// The results of walking one chain from one core, relative to the branch
/// entering it.
type Results = Rc<[(Branch, Flow)]>;

/// What a chain's results depend on: the chain, the hook (`-i lo`, `-o lo`),
/// the entering core and, for a chain that can reach a jump cycle, the chains
/// below it (a jump back into one of them ends the branch as a loop).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    table: Table,
    chain: usize,
    hook: Hook,
    core: Core,
    below: Vec<usize>,
}

/// One chain being walked: all its live branches stand before rule `next`.
struct Call<'a> {
    key: Key,
    chain: &'a Chain,
    index: usize,
    next: usize,
    live: Merged,
    results: Merged,
    /// What rule `next` does for the first `callees.len()` live branches,
    /// kept while a chain it enters is walked, so that the rule resumes at
    /// the branch that needed it rather than looking at every branch again.
    callees: Vec<Callee>,
    /// The branch after those enters a chain whose results were not known:
    /// the rule's chance for it, that chain's key (its results are memoised
    /// once it is walked) and whether it is a goto.
    pending: Option<(f64, Key, bool)>,
}

/// What a jumping rule leads to for one branch.
enum Callee {
    /// The rule does not match the branch.
    NoMatch,
    /// It matches with this chance; the target is not a jump.
    Plain(f64),
    /// It matches with this chance and jumps back into a chain being walked.
    Loop(f64, ChainName),
    /// It matches with this chance and enters a chain with these results.
    Enter(f64, Results, bool),
}

struct Walker<'a> {
    ruleset: &'a Ruleset,
    packet: &'a Packet,
    node: &'a Node,
    unevaluated: BTreeSet<Unevaluated>,
    affinity: BTreeSet<Unevaluated>,
    assumptions: BTreeSet<String>,
    /// Rule evaluations so far (one per branch and rule looked at).
    evaluations: u64,
    /// The hook being walked (decides `-i lo` / `-o lo` for local traffic).
    hook: Hook,
    /// Each chain's results, by [`Key`].
    memo: HashMap<Key, Results>,
    /// Per table, by chain index: true if the chain can reach a jump cycle.
    cyclic: HashMap<Table, Vec<bool>>,
}

/// Traces `packet` through `ruleset` on `node`.
///
/// # Errors
/// [`TraceError::Family`] if the packet is not of the ruleset's family,
/// [`TraceError::MissingChain`] for a jump to a chain that does not exist,
/// [`TraceError::TooManyOutcomes`] past [`MAX_OUTCOMES`],
/// [`TraceError::TooManyEvaluations`] past [`MAX_EVALUATIONS`] (only a chain
/// graph with jump cycles, which the kernel refuses, can get there). A chain
/// that jumps back into itself is not an error: that branch ends in a
/// [`Verdict::Drop`] with a [`Outcome::note`] (the kernel refuses to load such
/// loops).
pub fn trace(ruleset: &Ruleset, packet: &Packet, node: &Node) -> Result<Trace, TraceError> {
    let family = ruleset.family;
    if !family.contains(&packet.source) || !family.contains(&packet.destination) {
        return Err(TraceError::Family {
            family,
            source_ip: packet.source,
            destination: packet.destination,
        });
    }
    let mut w = Walker {
        ruleset,
        packet,
        node,
        unevaluated: BTreeSet::new(),
        affinity: BTreeSet::new(),
        assumptions: BTreeSet::new(),
        evaluations: 0,
        hook: Hook::Done,
        memo: HashMap::new(),
        cyclic: ruleset
            .tables
            .iter()
            .map(|t| (t.table, reaches_cycle(t)))
            .collect(),
    };
    if let Some(note) = unknown_interface(packet, node) {
        w.assumptions.insert(note);
    }
    let ends = w.run(Branch::start(Core::of(packet)))?;
    finish(
        ends,
        Reported {
            unevaluated: w.unevaluated,
            affinity: w.affinity,
            assumptions: w.assumptions,
            evaluations: w.evaluations,
        },
    )
}

/// The assumption noted when the packet enters by an interface the node does
/// not list.
fn unknown_interface(packet: &Packet, node: &Node) -> Option<String> {
    match &packet.entry {
        Entry::Interface(name)
            if !node.interfaces.is_empty() && !node.interfaces.contains(name) =>
        {
            Some(format!(
                "interface {name} is not one of the node's interfaces"
            ))
        }
        _ => None,
    }
}

/// What a walk reports besides its outcomes.
#[derive(Default)]
struct Reported {
    unevaluated: BTreeSet<Unevaluated>,
    affinity: BTreeSet<Unevaluated>,
    assumptions: BTreeSet<String>,
    evaluations: u64,
}

/// The [`Trace`] of a walk's merged ends.
fn finish(ends: Vec<End>, reported: Reported) -> Result<Trace, TraceError> {
    if ends.len() > MAX_OUTCOMES {
        return Err(TraceError::TooManyOutcomes);
    }
    let keep = MAX_PATH.min((MAX_PATH_TOTAL / ends.len().max(1)).max(1));
    let outcomes = ends
        .into_iter()
        .map(|(b, verdict, note)| Outcome {
            probability: b.probability,
            verdict,
            destination: b.core.dst,
            source: b.core.src,
            mark: b.core.mark,
            masquerade: b.core.masquerade,
            path: b.path.first(keep),
            path_len: b.path.len(),
            ways: b.ways,
            nat_unevaluated: b.core.nat_unevaluated.is_some(),
            note,
        })
        .collect();
    Ok(Trace {
        outcomes,
        unevaluated: reported.unevaluated.into_iter().collect(),
        affinity: reported.affinity.into_iter().collect(),
        assumptions: reported.assumptions.into_iter().collect(),
        rules_evaluated: reported.evaluations,
    })
}

/// Finished branches, merged when they agree on everything an [`Outcome`]
/// shows but the chance and path: their chances and ways add up, the first
/// one's path is kept. First-seen order.
#[derive(Default)]
struct Ends {
    ends: Vec<End>,
    seen: HashMap<(Verdict, Option<String>, Core), usize>,
}

impl Ends {
    /// Adds a finished branch; its note defaults to the NAT target it left
    /// unevaluated.
    fn push(&mut self, b: Branch, verdict: Verdict, note: Option<String>) {
        let note = note.or_else(|| b.core.nat_unevaluated.clone());
        let mut core = b.core.clone();
        // Not shown in an outcome: ends that differ only here are one.
        core.dnat = false;
        match self.seen.entry((verdict, note.clone(), core)) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let kept = &mut self.ends[*e.get()].0;
                kept.probability += b.probability;
                kept.ways = kept.ways.saturating_add(b.ways);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(self.ends.len());
                self.ends.push((b, verdict, note));
            }
        }
    }
}

/// For each chain of `t` (by index), whether it can reach a jump cycle: the
/// chains left once those whose every jump leads to an already removed chain
/// are peeled off, sinks first.
fn reaches_cycle(t: &TableRules) -> Vec<bool> {
    let n = t.chains.len();
    let mut out_degree = vec![0usize; n];
    let mut callers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (from, chain) in t.chains.values().enumerate() {
        for rule in &chain.rules {
            if let Some(Target::Jump(to) | Target::Goto(to)) = &rule.target
                && let Some(to) = t.chains.get_index_of(to.as_str())
            {
                out_degree[from] += 1;
                callers[to].push(from);
            }
        }
    }
    let mut left = vec![true; n];
    let mut sinks: Vec<usize> = (0..n).filter(|&c| out_degree[c] == 0).collect();
    while let Some(c) = sinks.pop() {
        left[c] = false;
        for &from in &callers[c] {
            out_degree[from] -= 1;
            if out_degree[from] == 0 {
                sinks.push(from);
            }
        }
    }
    left
}

/// One step of netfilter's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Hook {
    NatPrerouting,
    Route,
    FilterInput,
    NatInput,
    FilterForward,
    NatOutput,
    FilterOutput,
    NatPostrouting,
    LocalInput,
    Done,
}

/// A finished branch: its verdict and note, merged with the others that end
/// the same way.
type End = (Branch, Verdict, Option<String>);

impl<'a> Walker<'a> {
    /// Walks the hooks in netfilter's order; the ends are merged when they
    /// agree on everything an [`Outcome`] shows but the chance and path.
    fn run(&mut self, start: Branch) -> Result<Vec<End>, TraceError> {
        let first = match self.packet.entry {
            Entry::Local => Hook::NatOutput,
            Entry::Interface(_) => Hook::NatPrerouting,
        };
        let mut ends = Ends::default();
        let mut end =
            |b: Branch, verdict: Verdict, note: Option<String>| ends.push(b, verdict, note);
        let mut work = vec![(start, first)];
        while let Some((state, hook)) = work.pop() {
            let (table, chain, next) = match hook {
                Hook::Done => {
                    end(state, Verdict::Accept, None);
                    continue;
                }
                Hook::Route => {
                    let next = if self.node.is_local(&state.core.dst.ip()) {
                        Hook::FilterInput
                    } else {
                        Hook::FilterForward
                    };
                    work.push((state, next));
                    continue;
                }
                Hook::NatPrerouting => (Table::Nat, "PREROUTING", Hook::Route),
                Hook::FilterInput => (Table::Filter, "INPUT", Hook::NatInput),
                Hook::NatInput => (Table::Nat, "INPUT", Hook::Done),
                Hook::FilterForward => (Table::Filter, "FORWARD", Hook::NatPostrouting),
                Hook::NatOutput => (Table::Nat, "OUTPUT", Hook::FilterOutput),
                Hook::FilterOutput => (Table::Filter, "OUTPUT", Hook::NatPostrouting),
                Hook::NatPostrouting => {
                    let next = if self.packet.entry == Entry::Local
                        && self.node.is_local(&state.core.dst.ip())
                    {
                        Hook::LocalInput
                    } else {
                        Hook::Done
                    };
                    (Table::Nat, "POSTROUTING", next)
                }
                // Local traffic to the node loops back through filter INPUT,
                // arriving on `lo`; its NAT was decided on the way out.
                Hook::LocalInput => (Table::Filter, "INPUT", Hook::Done),
            };
            self.hook = hook;
            let results = self.builtin(table, chain, &state.core)?;
            for (sub, flow) in results.into_iter().rev() {
                let s = state.then(&sub);
                match flow {
                    Flow::Final(verdict, note) => end(s, verdict, note),
                    Flow::Continue | Flow::HookDone => work.push((s, next)),
                }
            }
        }
        Ok(ends.ends)
    }

    /// Walks a built-in chain from `core`; falling off its end applies its
    /// policy. The results are relative to the entering branch.
    fn builtin(
        &mut self,
        table: Table,
        chain: &str,
        core: &Core,
    ) -> Result<Vec<(Branch, Flow)>, TraceError> {
        let found = self
            .ruleset
            .table(table)
            .and_then(|t| Some((t, t.chains.get_full(chain)?)));
        let Some((t, (index, _, c))) = found else {
            self.assumptions.insert(format!(
                "{table} {chain} is not in the ruleset: taken as empty, policy ACCEPT"
            ));
            return Ok(vec![(Branch::start(core.clone()), Flow::Continue)]);
        };
        let policy = c.policy.unwrap_or(Policy::Accept);
        let results = self.walk(t, index, core)?;
        Ok(results
            .iter()
            .cloned()
            .map(|(s, flow)| match flow {
                Flow::Continue => match policy {
                    Policy::Accept => (s, Flow::HookDone),
                    Policy::Drop => (
                        s,
                        Flow::Final(Verdict::Drop, Some(format!("{table} {chain} policy DROP"))),
                    ),
                },
                other => (s, other),
            })
            .collect())
    }

    fn key(&self, table: Table, chain: usize, core: &Core, below: &[usize]) -> Key {
        let cyclic = self
            .cyclic
            .get(&table)
            .and_then(|c| c.get(chain).copied())
            .unwrap_or(true);
        Key {
            table,
            chain,
            hook: self.hook,
            core: core.clone(),
            below: if cyclic { below.to_vec() } else { Vec::new() },
        }
    }

    /// Walks chain `index` of `t` from `core`, and the chains it jumps to,
    /// without recursion: a stack of [`Call`]s, one per chain being walked.
    /// A chain's branches advance together rule by rule and merge when their
    /// cores agree, so a chain costs its rules times its distinct cores. A
    /// jump to a chain whose results for the branch's core are not known yet
    /// walks that chain first (its results are memoised) and then comes back
    /// to the rule at that branch: what the rule does for the branches before
    /// it is kept in the [`Call`], so each branch meets each rule once, however
    /// many of them enter chains not walked yet. A statistic rule forks a
    /// branch; the matching side comes first. `Flow::Continue` means the
    /// packet fell off (or returned from) the chain.
    fn walk(
        &mut self,
        t: &'a TableRules,
        index: usize,
        core: &Core,
    ) -> Result<Results, TraceError> {
        let key = self.key(t.table, index, core, &[]);
        if let Some(hit) = self.memo.get(&key) {
            return Ok(hit.clone());
        }
        let mut stack = vec![Call::new(key, &t.chains[index], index, core)];
        loop {
            let below: Vec<usize> = stack.iter().map(|c| c.index).collect();
            let Some(top) = stack.last_mut() else {
                // Not reached: the bottom call returns when it ends.
                return Ok(Rc::from(Vec::new()));
            };
            let chain = top.chain;
            let Some(rule) = chain.rules.get(top.next).filter(|_| top.live.len() > 0) else {
                let Some(done) = stack.pop() else { continue };
                let mut results = done.results;
                for (b, _) in done.live.items {
                    results.push(b, Flow::Continue);
                }
                let results: Results = Rc::from(results.items);
                self.memo.insert(done.key, results.clone());
                if stack.is_empty() {
                    return Ok(results);
                }
                continue;
            };
            let at = RuleRef {
                table: t.table.into(),
                chain: chain.name.clone().into(),
                index: top.next + 1,
            };
            // First what the rule does for each branch; a chain it enters
            // whose results are not known yet is walked first, and the rule
            // resumes after the branches already looked at.
            let mut callees = std::mem::take(&mut top.callees);
            if let Some((p, key, goto)) = top.pending.take() {
                // The chain just walked: its results are memoised under `key`
                // (the stack is as it was, so `below` and the key agree; were
                // they not, the branch would simply be looked at again).
                if let Some(results) = self.memo.get(&key) {
                    callees.push(Callee::Enter(p, results.clone(), goto));
                }
            }
            callees.reserve(top.live.len().saturating_sub(callees.len()));
            let mut unknown = None;
            for (b, _) in top.live.items.iter().skip(callees.len()) {
                self.evaluations += 1;
                if self.evaluations > MAX_EVALUATIONS {
                    return Err(TraceError::TooManyEvaluations);
                }
                let p = self.matches(rule, &b.core, &at);
                if p <= 0.0 {
                    callees.push(Callee::NoMatch);
                    continue;
                }
                let (to, goto) = match &rule.target {
                    Some(Target::Jump(to)) => (to, false),
                    Some(Target::Goto(to)) => (to, true),
                    _ => {
                        callees.push(Callee::Plain(p));
                        continue;
                    }
                };
                let Some(to_index) = t.chains.get_index_of(to.as_str()) else {
                    return Err(TraceError::MissingChain {
                        table: t.table,
                        chain: to.clone(),
                        from: at,
                    });
                };
                if below.contains(&to_index) {
                    callees.push(Callee::Loop(p, to.clone()));
                    continue;
                }
                let key = self.key(t.table, to_index, &b.core, &below);
                match self.memo.get(&key) {
                    Some(results) => callees.push(Callee::Enter(p, results.clone(), goto)),
                    None => {
                        unknown = Some((p, key, goto, to_index, b.core.clone()));
                        break;
                    }
                }
            }
            if let Some((p, key, goto, to_index, core)) = unknown {
                top.callees = callees;
                top.pending = Some((p, key.clone(), goto));
                stack.push(Call::new(key, &t.chains[to_index], to_index, &core));
                continue;
            }
            // Then move every branch past the rule.
            let live = std::mem::take(&mut top.live);
            let mut next = Merged::default();
            for ((mut b, _), callee) in live.items.into_iter().zip(callees) {
                let p = match &callee {
                    Callee::NoMatch => {
                        next.push(b, Flow::Continue);
                        continue;
                    }
                    Callee::Plain(p) | Callee::Loop(p, _) | Callee::Enter(p, _, _) => *p,
                };
                let fall = (p < 1.0).then(|| {
                    let mut fall = b.clone();
                    fall.probability *= 1.0 - p;
                    fall
                });
                b.probability *= p;
                b.path = b.path.push(at.clone());
                match callee {
                    Callee::NoMatch => {}
                    Callee::Plain(_) => match self.act(rule, &mut b.core, &at) {
                        Step::Next => next.push(b, Flow::Continue),
                        Step::Return => top.results.push(b, Flow::Continue),
                        Step::End(flow) => top.results.push(b, flow),
                    },
                    Callee::Loop(_, to) => top.results.push(
                        b,
                        Flow::Final(
                            Verdict::Drop,
                            Some(format!("loop: {at} jumps back into {to}")),
                        ),
                    ),
                    Callee::Enter(_, results, goto) => {
                        for (sub, flow) in results.iter() {
                            let s = b.then(sub);
                            match flow {
                                Flow::Continue if !goto => next.push(s, Flow::Continue),
                                other => top.results.push(s, other.clone()),
                            }
                        }
                    }
                }
                if let Some(fall) = fall {
                    next.push(fall, Flow::Continue);
                }
            }
            if next.len() > MAX_OUTCOMES || top.results.len() > MAX_OUTCOMES {
                return Err(TraceError::TooManyOutcomes);
            }
            top.live = next;
            top.next += 1;
        }
    }

    /// Applies a matched rule's target (not a jump) to `state`: what the walk
    /// does next.
    fn act(&mut self, rule: &Rule, state: &mut Core, at: &RuleRef) -> Step {
        match &rule.target {
            None => Step::Next,
            Some(Target::Accept) => Step::End(Flow::HookDone),
            Some(Target::Drop) => Step::End(Flow::Final(Verdict::Drop, None)),
            Some(Target::Reject | Target::RejectWith(_)) => {
                Step::End(Flow::Final(Verdict::Reject, None))
            }
            Some(Target::Return) => Step::Return,
            Some(Target::Dnat(to)) => {
                state.dst = SocketAddr::new(to.addr, to.port.unwrap_or(state.dst.port()));
                state.dnat = true;
                Step::End(Flow::HookDone)
            }
            Some(Target::Snat { to, ports, .. }) => {
                state.src = SocketAddr::new(*to, ports.map_or(state.src.port(), |p| p.first));
                Step::End(Flow::HookDone)
            }
            Some(Target::Masquerade { .. }) => {
                state.masquerade = true;
                Step::End(Flow::HookDone)
            }
            Some(Target::Mark(op)) => {
                let (value, mask) = op.xmark();
                state.mark = (state.mark & !mask) ^ value;
                Step::Next
            }
            Some(Target::Other(raw)) => match verbatim_target(raw.as_str()) {
                // MASQUERADE's options (`--random`, `--to-ports`) only pick
                // ports: the source is still the outgoing interface's address.
                Some("MASQUERADE") => {
                    state.masquerade = true;
                    Step::End(Flow::HookDone)
                }
                Some(name @ ("DNAT" | "SNAT" | "REDIRECT" | "NETMAP")) => {
                    let taken_as = "NAT target not evaluated: the nat hook ends here, \
                        with the packet's addresses unchanged";
                    self.unevaluated.insert(Unevaluated {
                        at: at.clone(),
                        what: raw.to_string(),
                        taken_as: taken_as.into(),
                    });
                    if name != "SNAT" {
                        state.dnat = true;
                    }
                    state.nat_unevaluated = Some(format!("{at}: {raw} not evaluated"));
                    Step::End(Flow::HookDone)
                }
                _ => {
                    self.unevaluated.insert(Unevaluated {
                        at: at.clone(),
                        what: raw.to_string(),
                        taken_as: "target not evaluated: the packet continues".into(),
                    });
                    Step::Next
                }
            },
            // Walked by `walk`, which never passes a jump here.
            Some(Target::Jump(_) | Target::Goto(_)) => Step::Next,
        }
    }

    /// The probability that every match of `rule` holds (0 or 1 unless a
    /// statistic match is in it). Every match is evaluated first: a match the
    /// tracer cannot decide is reported only when no other match rules the
    /// rule out.
    fn matches(&mut self, rule: &Rule, state: &Core, at: &RuleRef) -> f64 {
        let mut p = 1.0;
        let mut unknown = Vec::new();
        let mut affinity = Vec::new();
        for m in &rule.matches {
            match self.eval(m, state) {
                Eval::Yes => {}
                Eval::No => return 0.0,
                Eval::Chance(q) => p *= q,
                Eval::NoAffinity => affinity.push(m),
                Eval::Unknown => unknown.push(m),
            }
        }
        if !affinity.is_empty() {
            for m in affinity {
                if let Match::Recent { name, .. } = m {
                    self.assumptions.insert(format!(
                        "recent --rcheck {name} (session affinity) taken as not matching: a client with no affinity yet (at {at})"
                    ));
                }
                self.affinity.insert(Unevaluated {
                    at: at.clone(),
                    what: m.to_string(),
                    taken_as: "session affinity not evaluated: taken as no affinity, the rule does not match".into(),
                });
            }
            return 0.0;
        }
        if !unknown.is_empty() {
            for m in unknown {
                self.unevaluated.insert(Unevaluated {
                    at: at.clone(),
                    what: m.to_string(),
                    taken_as: "not evaluated: the rule is taken as not matching".into(),
                });
            }
            return 0.0;
        }
        p
    }

    /// The interface the packet came in by, in the current hook: `lo` for
    /// local traffic looping back into filter `INPUT`, none in the output path.
    fn in_interface(&self) -> Option<&str> {
        match &self.packet.entry {
            Entry::Interface(name) => Some(name),
            Entry::Local if self.hook == Hook::LocalInput => Some("lo"),
            Entry::Local => None,
        }
    }

    /// The interface the packet leaves by, if known: the packet's own, else `lo`
    /// for local traffic to a local address in the output path.
    fn out_interface(&self, s: &Core) -> Option<&str> {
        if let Some(name) = &self.packet.out_interface {
            return Some(name);
        }
        let output = matches!(
            self.hook,
            Hook::NatOutput | Hook::FilterOutput | Hook::NatPostrouting
        );
        (self.packet.entry == Entry::Local && output && self.node.is_local(&s.dst.ip()))
            .then_some("lo")
    }

    fn eval(&self, m: &Match, s: &Core) -> Eval {
        let proto = self.packet.protocol;
        let yes = |b: bool| if b { Eval::Yes } else { Eval::No };
        let not = |n: bool, b: bool| yes(b != n);
        let ct = |states: &Not<Vec<CtState>>| {
            let hit = states.value.iter().any(|st| match st {
                CtState::New => true,
                CtState::Dnat => s.dnat,
                _ => false,
            });
            not(states.negated, hit)
        };
        match m {
            Match::Comment(_) | Match::OtherComment(_) | Match::Nfacct(_) => Eval::Yes,
            // A new connection's first packet is never a second fragment.
            Match::Fragment { negated } => not(*negated, false),
            Match::Protocol(ProtocolMatch::WithModule(p) | ProtocolMatch::ModuleOnly(p)) => {
                yes(*p == proto)
            }
            Match::Protocol(ProtocolMatch::Plain(Not { negated, value })) => match value {
                ProtocolName::Known(p) => not(*negated, *p == proto),
                ProtocolName::Other(w) if w.as_str() == "all" || w.as_str() == "0" => {
                    not(*negated, true)
                }
                // icmp, gre, …: never the traced TCP/UDP/SCTP packet.
                ProtocolName::Other(_) => not(*negated, false),
            },
            Match::Source(a) => not(a.negated, addr_contains(&a.value, &s.src.ip())),
            Match::Destination(a) => not(a.negated, addr_contains(&a.value, &s.dst.ip())),
            Match::DestinationPort(r) => not(r.negated, r.value.contains(s.dst.port())),
            Match::SourcePort(r) => not(r.negated, r.value.contains(s.src.port())),
            Match::Multiport { of, ports } => {
                let hit = |port: u16| ports.value.iter().any(|r| r.contains(port));
                let b = match of {
                    PortsOf::Source => hit(s.src.port()),
                    PortsOf::Destination => hit(s.dst.port()),
                    PortsOf::Either => hit(s.src.port()) || hit(s.dst.port()),
                };
                not(ports.negated, b)
            }
            Match::InInterface(i) => match self.in_interface() {
                Some(name) => not(i.negated, iface_matches(&i.value, name)),
                None => not(i.negated, false),
            },
            Match::OutInterface(i) => match self.out_interface(s) {
                Some(name) => not(i.negated, iface_matches(&i.value, name)),
                None => Eval::Unknown,
            },
            Match::SrcType(AddrType::Local) => yes(self.node.is_local(&s.src.ip())),
            Match::DstType(AddrType::Local) => yes(self.node.is_local(&s.dst.ip())),
            Match::AddressType { of, kind } => {
                let ip = match of {
                    Direction::Source => s.src.ip(),
                    Direction::Destination => s.dst.ip(),
                };
                match kind.value {
                    AddrKind::Local => not(kind.negated, self.node.is_local(&ip)),
                    AddrKind::Multicast => not(kind.negated, ip.is_multicast()),
                    _ => Eval::Unknown,
                }
            }
            Match::Mark(mk) => {
                let mask = mk.value.mask.unwrap_or(u32::MAX);
                not(mk.negated, s.mark & mask == mk.value.value)
            }
            Match::Conntrack(states) | Match::State(states) => ct(states),
            Match::Statistic(p) => Eval::Chance(p.value()),
            Match::Recent { action, .. } => match action {
                RecentAction::Set => Eval::Yes,
                RecentAction::Check { .. } => Eval::NoAffinity,
            },
            Match::Set(_) | Match::Physdev(_) | Match::Other(_) => Eval::Unknown,
        }
    }
}

impl<'a> Call<'a> {
    fn new(key: Key, chain: &'a Chain, index: usize, core: &Core) -> Self {
        let mut live = Merged::default();
        live.push(Branch::start(core.clone()), Flow::Continue);
        Call {
            key,
            chain,
            index,
            next: 0,
            live,
            results: Merged::default(),
            callees: Vec::new(),
            pending: None,
        }
    }
}

/// What a matched rule's target (other than a jump) makes the walk do.
enum Step {
    /// Go on with the next rule.
    Next,
    /// Leave the chain, as on falling off its end.
    Return,
    /// This hook's walk ends for the branch.
    End(Flow),
}

/// The rules a branch took: a rope of shared pieces, so that entering a chain
/// whose results are memoised costs the same however long its paths are, and
/// the two sides of a fork share their past. Only [`Path::first`] lays it out.
#[derive(Debug, Clone, Default)]
struct Path(Option<Rc<Piece>>);

#[derive(Debug)]
struct Piece {
    /// The number of rules in it (saturating).
    len: u64,
    kind: PieceKind,
}

#[derive(Debug)]
enum PieceKind {
    Rule(RuleRef),
    Cat(Rc<Piece>, Rc<Piece>),
    /// Taken apart by `drop`.
    Gone,
}

impl Drop for Piece {
    /// Takes a long rope apart without recursion.
    fn drop(&mut self) {
        let mut todo = Vec::new();
        if let PieceKind::Cat(a, b) = std::mem::replace(&mut self.kind, PieceKind::Gone) {
            todo.extend([a, b]);
        }
        while let Some(piece) = todo.pop() {
            if let Ok(mut piece) = Rc::try_unwrap(piece)
                && let PieceKind::Cat(a, b) = std::mem::replace(&mut piece.kind, PieceKind::Gone)
            {
                todo.extend([a, b]);
            }
        }
    }
}

impl Path {
    fn len(&self) -> u64 {
        self.0.as_ref().map_or(0, |p| p.len)
    }

    fn push(&self, rule: RuleRef) -> Path {
        self.cat(&Path(Some(Rc::new(Piece {
            len: 1,
            kind: PieceKind::Rule(rule),
        }))))
    }

    fn cat(&self, other: &Path) -> Path {
        match (&self.0, &other.0) {
            (None, _) => other.clone(),
            (_, None) => self.clone(),
            (Some(a), Some(b)) => Path(Some(Rc::new(Piece {
                len: a.len.saturating_add(b.len),
                kind: PieceKind::Cat(a.clone(), b.clone()),
            }))),
        }
    }

    /// The first `max` rules, in order.
    fn first(&self, max: usize) -> Vec<RuleRef> {
        let mut out = Vec::new();
        let mut todo: Vec<&Piece> = self.0.as_deref().into_iter().collect();
        while out.len() < max
            && let Some(piece) = todo.pop()
        {
            match &piece.kind {
                PieceKind::Rule(r) => out.push(r.clone()),
                PieceKind::Cat(a, b) => todo.extend([&**b, &**a]),
                PieceKind::Gone => {}
            }
        }
        out
    }
}

/// The target name of verbatim target text (`-j NAME …` or `--jump NAME …`).
fn verbatim_target(raw: &str) -> Option<&str> {
    let mut words = raw.split_whitespace();
    match words.next()? {
        "-j" | "--jump" => words.next(),
        _ => None,
    }
}

enum Eval {
    Yes,
    No,
    Chance(f64),
    /// `recent --rcheck`: taken as not matching (no affinity yet), reported.
    NoAffinity,
    Unknown,
}

fn addr_contains(a: &Address, ip: &IpAddr) -> bool {
    a.contains(ip)
}

fn iface_matches(i: &Interface, name: &str) -> bool {
    if i.is_prefix() {
        name.starts_with(i.name())
    } else {
        name == i.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // An iptables rule serialises as it always did; an nftables one names its
    // table's family and name, and reads back with an nftables chain.
    #[test]
    fn rule_refs_serialise_by_kind() {
        let ipt = RuleRef {
            table: Table::Nat.into(),
            chain: ChainName::fixed("KUBE-SERVICES").into(),
            index: 3,
        };
        let text = serde_json::to_string(&ipt).unwrap();
        assert_eq!(text, r#"{"table":"Nat","chain":"KUBE-SERVICES","index":3}"#);
        assert_eq!(serde_json::from_str::<RuleRef>(&text).unwrap(), ipt);
        assert_eq!(ipt.to_string(), "nat/KUBE-SERVICES:3");
        let name = |s: &str| crate::nft::Name::new(s).unwrap();
        let nft = RuleRef {
            table: TableId::Nft(crate::nft::Family::Ip6, name("kube-proxy")),
            chain: ChainId::Nft(name("services")),
            index: 1,
        };
        let text = serde_json::to_string(&nft).unwrap();
        assert_eq!(
            text,
            r#"{"table":["Ip6","kube-proxy"],"chain":"services","index":1}"#
        );
        assert_eq!(serde_json::from_str::<RuleRef>(&text).unwrap(), nft);
        assert_eq!(nft.to_string(), "kube-proxy/services:1");
        // A name of the wrong kind for its table is refused.
        let bad = r#"{"table":"Nat","chain":"service-X/ns1/svc1/tcp/p80","index":1}"#;
        assert!(serde_json::from_str::<RuleRef>(bad).is_err());
    }

    // A path of a million rules, each pushed on the last, is laid out and
    // dropped without recursion.
    #[test]
    fn a_long_path_is_cut_and_dropped_without_recursion() {
        let at = RuleRef {
            table: Table::Filter.into(),
            chain: ChainName::fixed("INPUT").into(),
            index: 1,
        };
        let mut path = Path::default();
        for _ in 0..1_000_000 {
            path = path.push(at.clone());
        }
        let doubled = path.cat(&path);
        assert_eq!(doubled.len(), 2_000_000);
        assert_eq!(doubled.first(3), vec![at.clone(), at.clone(), at]);
        drop(path);
        drop(doubled);
    }
}
