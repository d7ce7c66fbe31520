//! Which way a new connection goes through an nftables table (kube-proxy's
//! nftables mode, as a [`crate::nft::Ruleset`]): the same [`Trace`] as the
//! iptables tracer gives, so the same outcomes, paths and reports.
//!
//! Pure: a table, a [`Packet`] and the [`Node`]'s addresses in, a [`Trace`]
//! out. The table's base chains are walked by hook in netfilter's order, and
//! within a hook by priority (lowest first; equal priorities by name), each
//! base chain in turn (an `accept` ends one base chain, not the hook):
//!
//! * a packet arriving on an interface: the `prerouting` chains (kube-proxy's
//!   `filter-prerouting-pre-dnat` at -110, then `nat-prerouting` at -100);
//!   then, if its destination (after DNAT) is a node address, the `input`
//!   chains, otherwise the `forward` chains and then the `postrouting` ones;
//! * a packet sent by a local process: the `output` chains (-110, -100, 0),
//!   the `postrouting` chains, and, if it is addressed to the node itself, the
//!   `input` chains, arriving on `lo`.
//!
//! Evaluated: `jump`, `goto`, `return`, `accept`, `drop`, `reject`; address
//! matches against addresses, prefixes, anonymous sets and named sets;
//! verdict maps with concatenated keys (`ip daddr . meta l4proto . th dport
//! vmap @service-ips`); `numgen random mod N vmap { … }`, which **branches**,
//! each verdict with probability 1/N, so the outcomes' probabilities sum to 1;
//! `ct state new` (the packet is the first of a new connection); `fib saddr|daddr
//! type local` (the [`Node`]'s addresses and loopback); `meta l4proto`;
//! `iifname`, `*` prefixes included; `mark and … == …` and `mark set mark
//! or|xor …`; `dnat to` and `masquerade` (each ends the nat hook for the
//! packet, as in the kernel). `update @SET { ip saddr }` lets the packet go on:
//! the rule is on the path, where the record it makes can be seen; the set is
//! not changed (each trace is one first packet).
//!
//! A lookup in a set with the `dynamic` flag (kube-proxy's `affinity-…` sets,
//! filled by `update` as traffic flows) is taken as the set not holding the
//! client, as for a client with no affinity yet, exactly as the iptables tracer
//! takes `recent --rcheck`: listed in [`Trace::affinity`] and
//! [`Trace::assumptions`]. A set or map whose key type does not fit its lookup
//! (which the kernel refuses) is not guessed at: the lookup is taken as not
//! matching and listed in [`Trace::unevaluated`]. As in the iptables tracer, a
//! rule's leading matches are all evaluated first, so a match that is not
//! evaluated is reported only when no other match rules the rule out.
//!
//! A table the kernel refuses is an error, not a guess: a chain, set or map
//! that a rule names and the table does not have ([`TraceError::NftMissing`]),
//! a chain that reaches itself, or jumps nested more than [`MAX_DEPTH`] deep
//! below a base chain ([`TraceError::NftChains`]).
//!
//! **Cost.** As in the iptables tracer, a chain's results for the packet state
//! entering it (addresses, mark, hook) are memoised and a chain's branches
//! advance rule by rule, merging when their states agree: the walk is linear in
//! the table. A set's or map's elements are indexed on first use, so a lookup
//! in kube-proxy's `service-ips` map costs the same with 30,000 services as
//! with one.
//!
//! ```
//! use svcnat::nft::*;
//! use svcnat::trace::{Node, Packet, Verdict as Final};
//! let dump = "add table ip kube-proxy\n\
//!     add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }\n\
//!     add chain ip kube-proxy svc\n\
//!     add chain ip kube-proxy ep1\n\
//!     add chain ip kube-proxy ep2\n\
//!     add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }\n\
//!     add rule ip kube-proxy nat-prerouting ip daddr . meta l4proto . th dport vmap @service-ips\n\
//!     add rule ip kube-proxy svc numgen random mod 2 vmap { 0 : goto ep1 , 1 : goto ep2 }\n\
//!     add rule ip kube-proxy ep1 meta l4proto tcp dnat to 10.180.0.1:80\n\
//!     add rule ip kube-proxy ep2 meta l4proto tcp dnat to 10.180.0.2:80\n\
//!     add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto svc }\n";
//! let table = svcnat::parse::nft::parse(dump)?;
//! let packet = Packet::tcp("10.0.0.2".parse()?, "172.30.0.41".parse()?, 80);
//! let node = Node::new(["192.168.0.2".parse()?]);
//! let trace = svcnat::trace::nft::trace(&table, &packet, &node)?;
//! assert_eq!(trace.outcomes.len(), 2);
//! assert!(trace.outcomes.iter().all(|o| o.verdict == Final::Accept && o.probability == 0.5));
//! assert_eq!(trace.outcomes[0].destination, "10.180.0.1:80".parse()?);
//! let path: Vec<String> = trace.outcomes[0].path.iter().map(|r| r.to_string()).collect();
//! assert_eq!(path, ["kube-proxy/nat-prerouting:1", "kube-proxy/svc:1", "kube-proxy/ep1:1"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;

use super::{
    Branch, ChainId, Core, End, Ends, Entry, Flow, MAX_EVALUATIONS, MAX_OUTCOMES, Merged, Node,
    Packet, Reported, Results, RuleRef, TableId, Trace, TraceError, Unevaluated, Verdict, finish,
    unknown_interface,
};
use crate::nft::{
    AddrItem, AddrValue, ChainType, Dir, Hook, KeyField, KeyType, KeyValue, MarkOp, Name, Op, Rule,
    Ruleset, SetFlag, Stmt, Verdict as NftVerdict,
};

/// The most jumps and gotos nested below a base chain (the kernel's jump
/// stack, `NFT_JUMP_STACK_SIZE`); a deeper table is refused.
pub const MAX_DEPTH: usize = 16;

/// Traces `packet` through the nftables table `ruleset` on `node`.
///
/// # Errors
/// [`TraceError::Family`] if the packet is not of the table's family;
/// [`TraceError::NftMissing`] for a rule that names a chain, set or map the
/// table does not have; [`TraceError::NftChains`] for a chain that reaches
/// itself, or jumps nested deeper than [`MAX_DEPTH`]; [`TraceError::TooManyOutcomes`]
/// and [`TraceError::TooManyEvaluations`] past the tracer's limits.
pub fn trace(ruleset: &Ruleset, packet: &Packet, node: &Node) -> Result<Trace, TraceError> {
    let family = ruleset.family.ip_family();
    if !family.contains(&packet.source) || !family.contains(&packet.destination) {
        return Err(TraceError::Family {
            family,
            source_ip: packet.source,
            destination: packet.destination,
        });
    }
    check_graph(ruleset)?;
    let mut w = Walker {
        ruleset,
        packet,
        node,
        reported: Reported::default(),
        stage: Stage::Prerouting,
        memo: HashMap::new(),
        maps: HashMap::new(),
        sets: HashMap::new(),
    };
    if let Some(note) = unknown_interface(packet, node) {
        w.reported.assumptions.insert(note);
    }
    let ends = w.run(Branch::start(Core::of(packet)))?;
    finish(ends, w.reported)
}

fn rule_ref(rs: &Ruleset, chain: &Name, index: usize) -> RuleRef {
    RuleRef {
        table: TableId::Nft(rs.family, rs.table.clone()),
        chain: ChainId::Nft(chain.clone()),
        index: index + 1,
    }
}

/// Refuses what the kernel refuses to load: a rule naming a chain, set or map
/// the table does not have, a chain that reaches itself, jumps nested deeper
/// than [`MAX_DEPTH`] below a base chain.
fn check_graph(rs: &Ruleset) -> Result<(), TraceError> {
    let missing =
        |kind: &'static str, name: &Name, chain: &Name, index: usize| TraceError::NftMissing {
            kind,
            name: name.to_string(),
            from: rule_ref(rs, chain, index),
        };
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); rs.chains.len()];
    for (from, (name, chain)) in rs.chains.iter().enumerate() {
        for (i, rule) in chain.rules.iter().enumerate() {
            for stmt in &rule.stmts {
                let mut targets: Vec<&Name> = stmt.chains().collect();
                match stmt {
                    Stmt::Vmap { map, .. } => {
                        let m = rs
                            .maps
                            .get(map)
                            .ok_or_else(|| missing("map", map, name, i))?;
                        targets.extend(m.elements.iter().filter_map(|e| e.verdict.chain()));
                    }
                    Stmt::Addr {
                        value: AddrValue::Set(set),
                        ..
                    }
                    | Stmt::UpdateSaddr(set)
                        if !rs.sets.contains_key(set) =>
                    {
                        return Err(missing("set", set, name, i));
                    }
                    _ => {}
                }
                for t in targets {
                    let to = rs
                        .chains
                        .get_index_of(t)
                        .ok_or_else(|| missing("chain", t, name, i))?;
                    edges[from].push(to);
                }
            }
        }
    }
    let mut graph = Graph {
        rs,
        edges,
        height: vec![None; rs.chains.len()],
        on_path: vec![false; rs.chains.len()],
    };
    for (i, chain) in rs.chains.values().enumerate() {
        if chain.base.is_some() {
            graph.visit(i, 0)?;
        }
    }
    Ok(())
}

/// The chains' jumps, for [`check_graph`].
struct Graph<'a> {
    rs: &'a Ruleset,
    edges: Vec<Vec<usize>>,
    /// The longest run of nested jumps below each chain, once known.
    height: Vec<Option<usize>>,
    on_path: Vec<bool>,
}

impl Graph<'_> {
    /// The height of chain `c`, entered `depth` jumps below a base chain.
    /// Recursion stops past [`MAX_DEPTH`], so it stays shallow.
    fn visit(&mut self, c: usize, depth: usize) -> Result<usize, TraceError> {
        let refuse = |reason| {
            let chain = self
                .rs
                .chains
                .get_index(c)
                .map_or_else(String::new, |(n, _)| n.to_string());
            Err(TraceError::NftChains { chain, reason })
        };
        let too_deep = "jumps nested more than 16 deep below a base chain";
        if depth > MAX_DEPTH {
            return refuse(too_deep);
        }
        if self.on_path[c] {
            return refuse("the chain reaches itself through jumps, gotos or verdict maps");
        }
        if let Some(h) = self.height[c] {
            return if depth + h > MAX_DEPTH {
                refuse(too_deep)
            } else {
                Ok(h)
            };
        }
        self.on_path[c] = true;
        let mut height = 0;
        for i in 0..self.edges[c].len() {
            let to = self.edges[c][i];
            height = height.max(1 + self.visit(to, depth + 1)?);
        }
        self.on_path[c] = false;
        self.height[c] = Some(height);
        Ok(height)
    }
}

/// Where the packet is in netfilter's order: the hook being walked, and for
/// `input`, whether a local process's packet loops back (it arrives on `lo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Stage {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
    LocalInput,
}

impl Stage {
    fn hook(self) -> Hook {
        match self {
            Stage::Prerouting => Hook::Prerouting,
            Stage::Input | Stage::LocalInput => Hook::Input,
            Stage::Forward => Hook::Forward,
            Stage::Output => Hook::Output,
            Stage::Postrouting => Hook::Postrouting,
        }
    }
}

/// How a rule ends for one of its ways through it.
enum RuleEnd {
    /// On to the next rule.
    Next,
    /// `return`: back to the caller.
    Return,
    /// `jump` (false) or `goto` (true) to a chain.
    Enter(Name, bool),
    /// `accept`, a NAT statement, `drop` or `reject`.
    Flow(Flow),
}

/// One way through a rule: its chance, the packet after it, whether the rule
/// matched and acted (it is then on the path), and how it ends.
struct Arm {
    p: f64,
    core: Core,
    acted: bool,
    end: RuleEnd,
}

/// What a match says about the packet.
enum Eval {
    Yes,
    No,
    /// A lookup in a dynamic set, taken as the set not holding the client;
    /// the match's result under that assumption.
    Affinity(bool),
    /// Not evaluated; why, and the lookup is taken as not matching.
    Unknown(&'static str),
}

struct Walker<'a> {
    ruleset: &'a Ruleset,
    packet: &'a Packet,
    node: &'a Node,
    reported: Reported,
    /// The hook being walked.
    stage: Stage,
    /// Each chain's results, by chain index, hook and entering state.
    memo: HashMap<(usize, Stage, Core), Results>,
    /// Each map's elements by key, once looked up: the element's index.
    maps: HashMap<Name, HashMap<Vec<KeyValue>, usize>>,
    /// Each set's keys, once looked up.
    sets: HashMap<Name, std::collections::HashSet<Vec<KeyValue>>>,
}

impl Walker<'_> {
    /// Walks the hooks in netfilter's order; the ends are merged when they
    /// agree on everything an outcome shows but the chance and path.
    fn run(&mut self, start: Branch) -> Result<Vec<End>, TraceError> {
        let first = match self.packet.entry {
            Entry::Local => Stage::Output,
            Entry::Interface(_) => Stage::Prerouting,
        };
        let mut ends = Ends::default();
        let mut work = vec![(start, first)];
        while let Some((state, stage)) = work.pop() {
            let results = self.hook(stage, &state.core)?;
            for (sub, flow) in results.into_iter().rev() {
                let s = state.then(&sub);
                match flow {
                    Flow::Final(verdict, note) => ends.push(s, verdict, note),
                    Flow::Continue | Flow::HookDone => match self.after(stage, &s.core) {
                        Some(next) => work.push((s, next)),
                        None => ends.push(s, Verdict::Accept, None),
                    },
                }
            }
        }
        Ok(ends.ends)
    }

    /// The stage after `stage`, for a packet now addressed as `core` says.
    fn after(&self, stage: Stage, core: &Core) -> Option<Stage> {
        let to_node = self.node.is_local(&core.dst.ip());
        match stage {
            Stage::Prerouting if to_node => Some(Stage::Input),
            Stage::Prerouting => Some(Stage::Forward),
            Stage::Forward | Stage::Output => Some(Stage::Postrouting),
            Stage::Postrouting if self.packet.entry == Entry::Local && to_node => {
                Some(Stage::LocalInput)
            }
            Stage::Input | Stage::Postrouting | Stage::LocalInput => None,
        }
    }

    /// Walks the base chains of `stage`'s hook in priority order: a branch
    /// that is not dropped or rejected goes on to the next one. Results are
    /// relative to the entering branch; all but the dropped and rejected
    /// ones end in [`Flow::HookDone`].
    fn hook(&mut self, stage: Stage, core: &Core) -> Result<Vec<(Branch, Flow)>, TraceError> {
        self.stage = stage;
        let mut chains: Vec<(i32, &Name, usize, bool)> = self
            .ruleset
            .chains
            .iter()
            .enumerate()
            .filter_map(|(i, (name, c))| {
                c.base
                    .filter(|b| b.hook == stage.hook())
                    .map(|b| (b.priority, name, i, b.kind == ChainType::Nat))
            })
            .collect();
        chains.sort();
        let mut out = Vec::new();
        let mut live = vec![Branch::start(core.clone())];
        for (_, _, chain, nat) in chains {
            let mut next = Merged::default();
            for b in live {
                // The kernel runs a hook's nat chains until one sets up the
                // NAT of the hook's kind (destination before routing,
                // source after): later ones do not see the packet.
                let nat_done = match stage {
                    Stage::Prerouting | Stage::Output => b.core.dnat,
                    _ => b.core.masquerade,
                };
                if nat && nat_done {
                    next.push(b, Flow::Continue);
                    continue;
                }
                let results = self.walk(chain, &b.core, 0)?;
                for (sub, flow) in results.iter() {
                    let s = b.then(sub);
                    match flow {
                        Flow::Final(..) => out.push((s, flow.clone())),
                        Flow::Continue | Flow::HookDone => next.push(s, Flow::Continue),
                    }
                }
            }
            live = next.items.into_iter().map(|(b, _)| b).collect();
        }
        out.extend(live.into_iter().map(|b| (b, Flow::HookDone)));
        Ok(out)
    }

    /// Walks chain `index` from `core`, and the chains it enters (memoised):
    /// its branches advance rule by rule and merge when their states agree.
    /// `Flow::Continue` means the packet fell off (or returned from) the
    /// chain.
    fn walk(&mut self, index: usize, core: &Core, depth: usize) -> Result<Results, TraceError> {
        let key = (index, self.stage, core.clone());
        if let Some(hit) = self.memo.get(&key) {
            return Ok(hit.clone());
        }
        let ruleset = self.ruleset;
        let Some((name, chain)) = ruleset.chains.get_index(index) else {
            return Ok(std::rc::Rc::from(Vec::new()));
        };
        if depth > MAX_DEPTH + 1 {
            // Not reached: check_graph refused such a table.
            return Err(TraceError::NftChains {
                chain: name.to_string(),
                reason: "jumps nested more than 16 deep below a base chain",
            });
        }
        let mut live = Merged::default();
        live.push(Branch::start(core.clone()), Flow::Continue);
        let mut results = Merged::default();
        for (i, rule) in chain.rules.iter().enumerate() {
            if live.len() == 0 {
                break;
            }
            let at = rule_ref(ruleset, name, i);
            let mut next = Merged::default();
            for (b, _) in std::mem::take(&mut live.items) {
                self.reported.evaluations += 1;
                if self.reported.evaluations > MAX_EVALUATIONS {
                    return Err(TraceError::TooManyEvaluations);
                }
                for arm in self.rule(rule, &b.core, &at)? {
                    let mut nb = b.clone();
                    nb.probability *= arm.p;
                    nb.core = arm.core;
                    if arm.acted {
                        nb.path = nb.path.push(at.clone());
                    }
                    match arm.end {
                        RuleEnd::Next => next.push(nb, Flow::Continue),
                        RuleEnd::Return => results.push(nb, Flow::Continue),
                        RuleEnd::Flow(flow) => results.push(nb, flow),
                        RuleEnd::Enter(target, goto) => {
                            let Some(to) = ruleset.chains.get_index_of(&target) else {
                                return Err(TraceError::NftMissing {
                                    kind: "chain",
                                    name: target.to_string(),
                                    from: at,
                                });
                            };
                            let sub = self.walk(to, &nb.core, depth + 1)?;
                            for (s, flow) in sub.iter() {
                                let c = nb.then(s);
                                match flow {
                                    Flow::Continue if !goto => next.push(c, Flow::Continue),
                                    other => results.push(c, other.clone()),
                                }
                            }
                        }
                    }
                }
            }
            if next.len() > MAX_OUTCOMES || results.len() > MAX_OUTCOMES {
                return Err(TraceError::TooManyOutcomes);
            }
            live = next;
        }
        for (b, _) in live.items {
            results.push(b, Flow::Continue);
        }
        let results: Results = std::rc::Rc::from(results.items);
        self.memo.insert(key, results.clone());
        Ok(results)
    }

    /// The ways through `rule` for a packet in state `core`: its leading
    /// matches decide whether it matches at all; then its statements run in
    /// order, a `numgen` forking the way.
    fn rule(&mut self, rule: &Rule, core: &Core, at: &RuleRef) -> Result<Vec<Arm>, TraceError> {
        let skip = |core: &Core| {
            vec![Arm {
                p: 1.0,
                core: core.clone(),
                acted: false,
                end: RuleEnd::Next,
            }]
        };
        let lead = rule.stmts.iter().take_while(|s| is_match(s)).count();
        let mut held = true;
        let mut assumed = Vec::new();
        let mut unknown = Vec::new();
        for s in &rule.stmts[..lead] {
            match self.eval(s, core, at)? {
                Eval::Yes => {}
                Eval::No => return Ok(skip(core)),
                Eval::Affinity(m) => {
                    held &= m;
                    assumed.push((s, m));
                }
                Eval::Unknown(why) => unknown.push((s, why)),
            }
        }
        for (s, m) in assumed {
            self.affinity(s, m, at);
        }
        if !held {
            return Ok(skip(core));
        }
        if !unknown.is_empty() {
            for (s, why) in unknown {
                self.unknown(s, why, at);
            }
            return Ok(skip(core));
        }
        // (chance, state, whether a statement acted) of each live way.
        let mut ways = vec![(1.0, core.clone(), false)];
        let mut arms = Vec::new();
        for stmt in &rule.stmts[lead..] {
            let mut next = Vec::new();
            for (p, mut c, did) in ways {
                let stop = |c: Core, end| Arm {
                    p,
                    core: c,
                    acted: true,
                    end,
                };
                match stmt {
                    Stmt::MarkSet { op, bits } => {
                        c.mark = match op {
                            MarkOp::Or => c.mark | bits,
                            MarkOp::Xor => c.mark ^ bits,
                        };
                        next.push((p, c, true));
                    }
                    Stmt::UpdateSaddr(_) => next.push((p, c, true)),
                    Stmt::DnatTo(to) => {
                        c.dst = *to;
                        c.dnat = true;
                        arms.push(stop(c, RuleEnd::Flow(Flow::HookDone)));
                    }
                    Stmt::Masquerade { .. } => {
                        c.masquerade = true;
                        arms.push(stop(c, RuleEnd::Flow(Flow::HookDone)));
                    }
                    Stmt::Verdict(v) => arms.push(stop(c, verdict(v))),
                    Stmt::Numgen(verdicts) => {
                        let share = p / verdicts.len().max(1) as f64;
                        for v in verdicts {
                            arms.push(Arm {
                                p: share,
                                core: c.clone(),
                                acted: true,
                                end: verdict(v),
                            });
                        }
                    }
                    Stmt::Vmap { key, map } => match self.lookup(key, map, &c, stmt, at)? {
                        Some(v) => arms.push(stop(c, verdict(&v))),
                        None => arms.push(Arm {
                            p,
                            core: c,
                            acted: did,
                            end: RuleEnd::Next,
                        }),
                    },
                    Stmt::Addr { .. }
                    | Stmt::L4Proto(_)
                    | Stmt::CtStateNew
                    | Stmt::FibLocal(_)
                    | Stmt::Iifname { .. }
                    | Stmt::MarkAnd { .. } => {
                        let holds = match self.eval(stmt, &c, at)? {
                            Eval::Yes => true,
                            Eval::No => false,
                            Eval::Affinity(m) => {
                                self.affinity(stmt, m, at);
                                m
                            }
                            Eval::Unknown(why) => {
                                self.unknown(stmt, why, at);
                                false
                            }
                        };
                        if holds {
                            next.push((p, c, did));
                        } else {
                            arms.push(Arm {
                                p,
                                core: c,
                                acted: did,
                                end: RuleEnd::Next,
                            });
                        }
                    }
                }
            }
            ways = next;
        }
        arms.extend(ways.into_iter().map(|(p, c, _)| Arm {
            p,
            core: c,
            acted: true,
            end: RuleEnd::Next,
        }));
        Ok(arms)
    }

    /// What a match says about the packet in state `c`.
    fn eval(&mut self, stmt: &Stmt, c: &Core, at: &RuleRef) -> Result<Eval, TraceError> {
        let yes = |b: bool| if b { Eval::Yes } else { Eval::No };
        let with_op = |op: &Op, b: bool| yes(b == (*op == Op::Eq));
        Ok(match stmt {
            Stmt::Addr { dir, op, value } => {
                let ip = match dir {
                    Dir::Saddr => c.src.ip(),
                    Dir::Daddr => c.dst.ip(),
                };
                let hit = match value {
                    AddrValue::Ip(x) => *x == ip,
                    AddrValue::Net(n) => n.contains(&ip),
                    AddrValue::Anon(items) => items.iter().any(|i| match i {
                        AddrItem::Ip(x) => *x == ip,
                        AddrItem::Net(n) => n.contains(&ip),
                    }),
                    AddrValue::Cidrs(nets) => nets.iter().any(|n| n.contains(&ip)),
                    AddrValue::Set(name) => {
                        let Some(set) = self.ruleset.sets.get(name) else {
                            return Err(TraceError::NftMissing {
                                kind: "set",
                                name: name.to_string(),
                                from: at.clone(),
                            });
                        };
                        if set.key != [self.ruleset.family.addr_type()] {
                            return Ok(Eval::Unknown(
                                "the set's type is not the family's addresses: taken as not matching",
                            ));
                        }
                        if set.flags.contains(&SetFlag::Dynamic) {
                            return Ok(Eval::Affinity(*op == Op::Ne));
                        }
                        let keys = self.sets.entry(name.clone()).or_insert_with(|| {
                            set.elements.iter().map(|e| e.key.clone()).collect()
                        });
                        keys.contains(&[KeyValue::Addr(ip)][..])
                    }
                };
                with_op(op, hit)
            }
            Stmt::L4Proto(p) => yes(*p == self.packet.protocol),
            Stmt::CtStateNew => Eval::Yes,
            Stmt::FibLocal(dir) => yes(self.node.is_local(&match dir {
                Dir::Saddr => c.src.ip(),
                Dir::Daddr => c.dst.ip(),
            })),
            Stmt::Iifname { op, name } => {
                let hit = self.in_interface().is_some_and(|iface| {
                    if name.is_prefix() {
                        iface.starts_with(name.name())
                    } else {
                        iface == name.name()
                    }
                });
                with_op(op, hit)
            }
            Stmt::MarkAnd { bits, value } => yes(c.mark & bits == *value),
            // Not matches: `rule` runs them.
            Stmt::MarkSet { .. }
            | Stmt::Vmap { .. }
            | Stmt::Numgen(_)
            | Stmt::UpdateSaddr(_)
            | Stmt::DnatTo(_)
            | Stmt::Masquerade { .. }
            | Stmt::Verdict(_) => Eval::Yes,
        })
    }

    /// The interface the packet came in by: its own, or `lo` for a local
    /// process's packet looping back into `input`; none in the output path.
    fn in_interface(&self) -> Option<&str> {
        match &self.packet.entry {
            Entry::Interface(name) => Some(name),
            Entry::Local if self.stage == Stage::LocalInput => Some("lo"),
            Entry::Local => None,
        }
    }

    /// The verdict of `map`'s element for the packet's key, if it has one.
    fn lookup(
        &mut self,
        key: &[KeyField],
        map: &Name,
        c: &Core,
        stmt: &Stmt,
        at: &RuleRef,
    ) -> Result<Option<NftVerdict>, TraceError> {
        let ruleset = self.ruleset;
        let Some(m) = ruleset.maps.get(map) else {
            return Err(TraceError::NftMissing {
                kind: "map",
                name: map.to_string(),
                from: at.clone(),
            });
        };
        let addr = ruleset.family.addr_type();
        let types: Vec<KeyType> = key
            .iter()
            .map(|f| match f {
                KeyField::Daddr | KeyField::Saddr => addr,
                KeyField::L4Proto => KeyType::InetProto,
                KeyField::ThDport => KeyType::InetService,
            })
            .collect();
        if types != m.key {
            self.unknown(
                stmt,
                "the map's key type does not fit the lookup: taken as no element",
                at,
            );
            return Ok(None);
        }
        let value: Vec<KeyValue> = key
            .iter()
            .map(|f| match f {
                KeyField::Daddr => KeyValue::Addr(c.dst.ip()),
                KeyField::Saddr => KeyValue::Addr(c.src.ip()),
                KeyField::L4Proto => KeyValue::Proto(self.packet.protocol),
                KeyField::ThDport => KeyValue::Port(c.dst.port()),
            })
            .collect();
        let index = self.maps.entry(map.clone()).or_insert_with(|| {
            let mut index = HashMap::new();
            for (i, e) in m.elements.iter().enumerate() {
                index.entry(e.key.clone()).or_insert(i);
            }
            index
        });
        Ok(index.get(&value).map(|&i| m.elements[i].verdict.clone()))
    }

    fn text(&self, stmt: &Stmt) -> String {
        let mut s = String::new();
        let _ = crate::nft::text::write_stmt(&mut s, self.ruleset.family, stmt);
        s
    }

    /// Notes a dynamic-set lookup taken as the set not holding the client.
    fn affinity(&mut self, stmt: &Stmt, matched: bool, at: &RuleRef) {
        let what = self.text(stmt);
        self.reported.assumptions.insert(format!(
            "{what} (a dynamic set: session affinity) taken as not holding the client: a client with no affinity yet (at {at})"
        ));
        let taken_as = if matched {
            "session affinity not evaluated: taken as no affinity, the match holds"
        } else {
            "session affinity not evaluated: taken as no affinity, the rule does not match"
        };
        self.reported.affinity.insert(Unevaluated {
            at: at.clone(),
            what,
            taken_as: taken_as.into(),
        });
    }

    /// Notes a match or lookup that was not evaluated.
    fn unknown(&mut self, stmt: &Stmt, why: &'static str, at: &RuleRef) {
        let what = self.text(stmt);
        self.reported.unevaluated.insert(Unevaluated {
            at: at.clone(),
            what,
            taken_as: why.into(),
        });
    }
}

/// Whether a statement only tests the packet.
fn is_match(s: &Stmt) -> bool {
    matches!(
        s,
        Stmt::Addr { .. }
            | Stmt::L4Proto(_)
            | Stmt::CtStateNew
            | Stmt::FibLocal(_)
            | Stmt::Iifname { .. }
            | Stmt::MarkAnd { .. }
    )
}

/// How a verdict ends a rule.
fn verdict(v: &NftVerdict) -> RuleEnd {
    match v {
        NftVerdict::Accept => RuleEnd::Flow(Flow::HookDone),
        NftVerdict::Drop => RuleEnd::Flow(Flow::Final(Verdict::Drop, None)),
        NftVerdict::Reject => RuleEnd::Flow(Flow::Final(Verdict::Reject, None)),
        NftVerdict::Return => RuleEnd::Return,
        NftVerdict::Jump(c) => RuleEnd::Enter(c.clone(), false),
        NftVerdict::Goto(c) => RuleEnd::Enter(c.clone(), true),
    }
}
