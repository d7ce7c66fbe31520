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

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::compile::JumpRule;
use crate::model::{IpFamily, Protocol};
use crate::ruleset::{
    AddrKind, AddrType, Address, Chain, ChainName, CtState, Direction, Interface, Match, Not,
    Policy, PortsOf, ProtocolName, RecentAction, Rule, Ruleset, Table, TableRules, Target,
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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleRef {
    /// The table.
    pub table: Table,
    /// The chain.
    pub chain: ChainName,
    /// The 1-based position of the rule in the chain.
    pub index: usize,
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
    /// The rules that matched and acted, in order (jumps included).
    pub path: Vec<RuleRef>,
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
    /// More branches than [`MAX_OUTCOMES`].
    #[error("more than {MAX_OUTCOMES} outcomes")]
    TooManyOutcomes,
}

/// The most outcomes a trace may have.
pub const MAX_OUTCOMES: usize = 100_000;

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
        let builtins = crate::parse::builtin_chains(t.table);
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

/// One branch of the walk.
#[derive(Debug, Clone)]
struct State {
    probability: f64,
    dst: SocketAddr,
    src: SocketAddr,
    mark: u32,
    dnat: bool,
    masquerade: bool,
    path: Vec<RuleRef>,
    /// Set when a NAT target the tracer could not apply ended a nat hook.
    nat_unevaluated: Option<String>,
}

/// How a chain walk ended for a branch.
#[derive(Debug, Clone)]
enum Flow {
    /// Fell off a user chain or hit RETURN: continue in the caller.
    Continue,
    /// ACCEPT, or a NAT target: this hook is done, the packet goes on.
    HookDone,
    /// The packet is dropped or rejected.
    Final(Verdict, Option<String>),
}

struct Walker<'a> {
    ruleset: &'a Ruleset,
    packet: &'a Packet,
    node: &'a Node,
    unevaluated: BTreeSet<Unevaluated>,
    affinity: BTreeSet<Unevaluated>,
    assumptions: BTreeSet<String>,
    branches: usize,
    /// The hook being walked (decides `-i lo` / `-o lo` for local traffic).
    hook: Hook,
}

/// Traces `packet` through `ruleset` on `node`.
///
/// # Errors
/// [`TraceError::Family`] if the packet is not of the ruleset's family,
/// [`TraceError::MissingChain`] for a jump to a chain that does not exist,
/// [`TraceError::TooManyOutcomes`] past [`MAX_OUTCOMES`]. A chain that jumps back
/// into itself is not an error: that branch ends in a [`Verdict::Drop`] with a
/// [`Outcome::note`] (the kernel refuses to load such loops).
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
        branches: 0,
        hook: Hook::Done,
    };
    if let Entry::Interface(name) = &packet.entry
        && !node.interfaces.is_empty()
        && !node.interfaces.contains(name)
    {
        w.assumptions.insert(format!(
            "interface {name} is not one of the node's interfaces"
        ));
    }
    let start = State {
        probability: 1.0,
        dst: SocketAddr::new(packet.destination, packet.destination_port),
        src: SocketAddr::new(packet.source, packet.source_port),
        mark: packet.mark,
        dnat: false,
        masquerade: false,
        path: Vec::new(),
        nat_unevaluated: None,
    };
    let mut outcomes = Vec::new();
    w.run(start, &mut outcomes)?;
    Ok(Trace {
        outcomes,
        unevaluated: w.unevaluated.into_iter().collect(),
        affinity: w.affinity.into_iter().collect(),
        assumptions: w.assumptions.into_iter().collect(),
    })
}

/// One step of netfilter's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl<'a> Walker<'a> {
    fn run(&mut self, start: State, out: &mut Vec<Outcome>) -> Result<(), TraceError> {
        let first = match self.packet.entry {
            Entry::Local => Hook::NatOutput,
            Entry::Interface(_) => Hook::NatPrerouting,
        };
        let mut work = vec![(start, first)];
        while let Some((state, hook)) = work.pop() {
            let (table, chain, next) = match hook {
                Hook::Done => {
                    out.push(self.outcome(state, Verdict::Accept, None));
                    continue;
                }
                Hook::Route => {
                    let next = if self.node.is_local(&state.dst.ip()) {
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
                        && self.node.is_local(&state.dst.ip())
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
            let results = self.builtin(table, chain, state)?;
            for (s, flow) in results.into_iter().rev() {
                match flow {
                    Flow::Final(verdict, note) => out.push(self.outcome(s, verdict, note)),
                    Flow::Continue | Flow::HookDone => work.push((s, next)),
                }
            }
        }
        Ok(())
    }

    fn outcome(&self, s: State, verdict: Verdict, note: Option<String>) -> Outcome {
        let nat_unevaluated = s.nat_unevaluated.is_some();
        Outcome {
            probability: s.probability,
            verdict,
            destination: s.dst,
            source: s.src,
            mark: s.mark,
            masquerade: s.masquerade,
            path: s.path,
            note: note.or(s.nat_unevaluated),
            nat_unevaluated,
        }
    }

    /// Walks a built-in chain; falling off its end applies its policy.
    fn builtin(
        &mut self,
        table: Table,
        chain: &str,
        state: State,
    ) -> Result<Vec<(State, Flow)>, TraceError> {
        let Some(c) = self.ruleset.chain(table, chain) else {
            self.assumptions.insert(format!(
                "{table} {chain} is not in the ruleset: taken as empty, policy ACCEPT"
            ));
            return Ok(vec![(state, Flow::Continue)]);
        };
        let policy = c.policy.unwrap_or(Policy::Accept);
        let results = self.walk(table, c, state)?;
        Ok(results
            .into_iter()
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

    /// Walks a chain and the chains it jumps to, without recursion: each branch
    /// keeps its own stack of chains ([`Frame`]s), so thousands of matching
    /// rules that let the packet go on cost no stack. A statistic rule forks
    /// the branch; the matching side is finished first, so outcomes come in
    /// rule order. The results are in that order; `Flow::Continue` means the
    /// packet fell off (or returned from) `chain`.
    fn walk(
        &mut self,
        table: Table,
        chain: &'a Chain,
        state: State,
    ) -> Result<Vec<(State, Flow)>, TraceError> {
        let mut out = Vec::new();
        let start = Frame {
            chain,
            next: 0,
            goto: false,
        };
        let mut work = vec![(state, vec![start])];
        while let Some((mut state, mut frames)) = work.pop() {
            let flow = loop {
                let Some(top) = frames.last_mut() else {
                    break Flow::Continue;
                };
                let (chain, i) = (top.chain, top.next);
                let Some(rule) = chain.rules.get(i) else {
                    if leave(&mut frames) {
                        break Flow::Continue;
                    }
                    continue;
                };
                top.next += 1;
                let at = RuleRef {
                    table,
                    chain: chain.name.clone(),
                    index: i + 1,
                };
                let p = self.matches(rule, &state, &at);
                if p <= 0.0 {
                    continue;
                }
                if p < 1.0 {
                    // Branch: the rule matches with p, falls through with 1-p.
                    self.count()?;
                    let mut fall = state.clone();
                    fall.probability *= 1.0 - p;
                    work.push((fall, frames.clone()));
                    state.probability *= p;
                }
                state.path.push(at.clone());
                match self.act(table, rule, &mut state, &frames, &at)? {
                    Step::Next => {}
                    Step::Return => {
                        if leave(&mut frames) {
                            break Flow::Continue;
                        }
                    }
                    Step::Enter(frame) => frames.push(frame),
                    Step::End(flow) => break flow,
                }
            };
            out.push((state, flow));
        }
        Ok(out)
    }

    fn count(&mut self) -> Result<(), TraceError> {
        self.branches += 1;
        if self.branches > MAX_OUTCOMES {
            return Err(TraceError::TooManyOutcomes);
        }
        Ok(())
    }

    /// Applies a matched rule's target to `state`: what the walk does next.
    fn act(
        &mut self,
        table: Table,
        rule: &Rule,
        state: &mut State,
        frames: &[Frame<'a>],
        at: &RuleRef,
    ) -> Result<Step<'a>, TraceError> {
        Ok(match &rule.target {
            None => Step::Next,
            Some(Target::Accept) => Step::End(Flow::HookDone),
            Some(Target::Drop) => Step::End(Flow::Final(Verdict::Drop, None)),
            Some(Target::Reject | Target::RejectWith(_)) => {
                Step::End(Flow::Final(Verdict::Reject, None))
            }
            Some(Target::Return) => Step::Return,
            Some(Target::Dnat(to)) => {
                state.dst = *to;
                state.dnat = true;
                Step::End(Flow::HookDone)
            }
            Some(Target::DnatAddress(to)) => {
                state.dst = SocketAddr::new(*to, state.dst.port());
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
                let (value, mask) = crate::parse::xmark_of(op);
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
            Some(Target::Jump(to) | Target::Goto(to)) => {
                let goto = matches!(rule.target, Some(Target::Goto(_)));
                let Some(next) = self.ruleset.chain(table, to.as_str()) else {
                    return Err(TraceError::MissingChain {
                        table,
                        chain: to.clone(),
                        from: at.clone(),
                    });
                };
                if frames.iter().any(|f| f.chain.name == *to) {
                    return Ok(Step::End(Flow::Final(
                        Verdict::Drop,
                        Some(format!("loop: {at} jumps back into {to}")),
                    )));
                }
                Step::Enter(Frame {
                    chain: next,
                    next: 0,
                    goto,
                })
            }
        })
    }

    /// The probability that every match of `rule` holds (0 or 1 unless a
    /// statistic match is in it). Every match is evaluated first: a match the
    /// tracer cannot decide is reported only when no other match rules the
    /// rule out.
    fn matches(&mut self, rule: &Rule, state: &State, at: &RuleRef) -> f64 {
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
    fn out_interface(&self, s: &State) -> Option<&str> {
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

    fn eval(&self, m: &Match, s: &State) -> Eval {
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
            Match::Protocol(p) | Match::ProtocolModule(p) => yes(*p == proto),
            Match::PlainProtocol(Not { negated, value }) => match value {
                ProtocolName::Known(p) => not(*negated, *p == proto),
                ProtocolName::Other(w) if w.as_str() == "all" || w.as_str() == "0" => {
                    not(*negated, true)
                }
                // icmp, gre, …: never the traced TCP/UDP/SCTP packet.
                ProtocolName::Other(_) => not(*negated, false),
            },
            Match::Source(a) => not(a.negated, addr_contains(&a.value, &s.src.ip())),
            Match::Destination(a) => not(a.negated, addr_contains(&a.value, &s.dst.ip())),
            Match::DestinationPort(p) => yes(s.dst.port() == *p),
            Match::DestinationPorts(r) => not(r.negated, r.value.contains(s.dst.port())),
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

/// One chain being walked: the index of the rule to look at next, and whether
/// it was entered by a goto (its end returns to its caller's caller).
#[derive(Debug, Clone, Copy)]
struct Frame<'a> {
    chain: &'a Chain,
    next: usize,
    goto: bool,
}

/// What a matched rule's target makes the walk do.
enum Step<'a> {
    /// Go on with the next rule.
    Next,
    /// Leave the chain, as on falling off its end.
    Return,
    /// Enter a chain (a jump or goto).
    Enter(Frame<'a>),
    /// This hook's walk ends for the branch.
    End(Flow),
}

/// Leaves the innermost chain (its end or `RETURN`), and the chains that went
/// to it by goto; true if that left the built-in chain (its policy applies).
fn leave(frames: &mut Vec<Frame<'_>>) -> bool {
    while let Some(f) = frames.pop() {
        if !f.goto {
            break;
        }
    }
    frames.is_empty()
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
