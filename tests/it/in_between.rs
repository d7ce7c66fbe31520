//! Issue 15, "every state in between is safe", over random clusters and random
//! changes, without root.
//!
//! The real `Syncer` drives [`Snapshots`]: the `Recorder`, asking for pieces of
//! one to seven chains (`Executor::chains_per_restore`), committing each table
//! of a restore on its own as iptables-restore commits at each `COMMIT` (so "nat
//! written, filter not yet" is a state), and keeping the tables after every
//! commit and every jump rule it inserts. Clusters are built and changed by
//! `sync::change`s: ClusterIP, NodePort and LoadBalancer services, source ranges,
//! external IPs, both traffic policies `Local`, session affinity, a second (UDP)
//! port, services without endpoints, endpoints ready, terminating or not ready,
//! on this node or another. A sync is partial, full on request, full after a
//! config change (masquerade-all, cluster CIDR, local-traffic detection,
//! localhost node ports, node port addresses, masquerade bit, the large-cluster
//! threshold, which a partial sync can also cross, comments), or the first of a restarted
//! proxy over the tables the last one left; the very first is on empty tables.
//! The host's filter `FORWARD` policy is ACCEPT or, in half the runs, DROP (as
//! Docker and firewalld set it), where forwarded service traffic passes only by
//! `KUBE-FORWARD`'s ACCEPTs.
//!
//! For each sync, packets to every service port of the cluster before and after
//! it (its cluster IP, external IPs, load-balancer IPs, and node port on the
//! node's address and on 127.0.0.1; from a pod, from an endpoint of the service,
//! from outside inside and outside the source ranges, from the node) are traced
//! with `svcnat::trace` through the tables before the sync (*old*), after it
//! (*new*) and every state in between. A way a packet ends is its verdict,
//! destination, masquerade and mark, for a new connection of a client without
//! session affinity yet (the tracer takes `recent --rcheck` as not matching).
//! What holds, at every state in between, for partial syncs, full syncs and
//! first syncs over old tables alike, without exception:
//!
//! 1. Every restore was accepted and no chain was kept: no rule jumped to a
//!    missing chain, no `-X` met a chain still jumped to; the tracer meets no
//!    jump to a missing chain either.
//! 2. A packet that old and new both DNAT to an endpoint, every way, is DNATed
//!    to an endpoint every way.
//! 3. A packet DNATed goes to an endpoint of its own service port: one that old
//!    or new DNATs some packet to that port to.
//! 4. A packet that old and new both DNAT and masquerade, every way, is
//!    masqueraded.
//! 5. The sentence, per packet: a way that captures the packet (DNATs,
//!    masquerades or marks it) is a way old or new has for it.
//! 6. A way that refuses the packet (DROP or REJECT) is a way old or new has
//!    for it (the same verdict: where nat sent a packet refused does not
//!    matter), and a packet that old and new both refuse, every way, is refused
//!    every way.
//!
//! What the rules leave open is a packet passing untouched where one end
//! refuses it and the other DNATs or passes it: nothing captures it, so the
//! issue's sentence does not bind it, and not both ends refuse it. It happens
//! for a moment where a destination has filter rules in one state only (a port
//! newly exposed with a DROP, or one that loses its traffic policy's DROP):
//! filter cannot tell whether the other state's nat captures there, so such
//! rules go in after nat and out before it (see below). And on a node's first
//! sync the jump rules go in nat first (POSTROUTING's first), filter's last, so
//! a packet the new state refuses passes untouched until filter's jumps are in,
//! as it did on the empty tables; on a host whose `FORWARD` policy is DROP, a
//! packet the new nat DNATs to another node is dropped until `KUBE-FORWARD`'s
//! jump is in (the runs set that policy after the first sync, see `Forward`).
//! A packet svcnat lets through and the host's `FORWARD` policy drops is not
//! refused by svcnat, in rule 6's "both refuse": where one end's filter DROPs a
//! node port (no local endpoint) and the other's nat DNATs it to a local pod
//! that the policy drops, the DROP still goes out before nat, and the packet
//! passes untouched for a moment, the open case above.
//!
//! How the Syncer makes them hold: nat and filter commit one after the other,
//! so a sync writes three states of filter, the old one, one held while nat
//! changes (`sync::interim`: per destination, the new rules where the new
//! filter REJECTs, the old ones where the old filter did, both states' DROPs
//! where both have rules, none where one has none; in the fixed chains,
//! both states' ACCEPTs, so a new masquerade bit's traffic passes `KUBE-FORWARD`
//! on a host whose `FORWARD` policy is DROP, which half the runs trace), and
//! the new one. And a
//! chain rewritten in place goes in one piece with the chains whose old rules
//! jump to it and whose new rules do not (`exec::pieces_over`, told what the
//! tables held before), so no old caller sends a packet into a chain rewritten
//! for another role ([`a_policy_turned_local_mixes_old_dispatch_and_new_chains`],
//! [`narrowed_node_port_addresses_capture_what_neither_state_captures`]); the
//! filter's three states keep nat's commit from letting the old filter refuse
//! what the new nat no longer DNATs
//! ([`nat_before_filter_drops_what_neither_state_drops`]).
//!
//! After each sync the tables are the ones one full sync of the same state
//! writes into empty tables (less jump rules and fixed chains an earlier config
//! wanted, which nothing removes).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use svcnat::exec::{ExecError, Executor, Recorder, RestoreOptions};
use svcnat::model::*;
use svcnat::ruleset::{JumpRule, Ruleset, Table};
use svcnat::sync::{FullReason, Syncer};
use svcnat::trace::{Node, Packet, TraceError, Verdict, trace, traceable};

use crate::fixtures::{config, ip, recorder_tables};
use crate::sync::{Change, apply_change, change};

const V4: IpFamily = IpFamily::Ipv4;

/// A state of the tables, and the restore section or jump rule that made it.
struct Snapshot {
    text: String,
    ruleset: Ruleset,
    made_by: String,
}

/// A Recorder that asks for pieces of `max_chains` chains, commits each table
/// section of a restore on its own (as iptables-restore commits each `COMMIT`),
/// and keeps the tables after each section and each jump rule inserted.
#[derive(Default)]
struct Snapshots {
    rec: Recorder,
    max_chains: usize,
    states: Vec<Snapshot>,
}

impl Snapshots {
    fn snapshot(&mut self, made_by: String) {
        let text = tables_text(&mut self.rec);
        if self.states.last().is_some_and(|s| s.text == text) {
            return;
        }
        let ruleset = traceable(&svcnat::parse::parse_as(&text, V4).unwrap(), &[]);
        self.states.push(Snapshot {
            text,
            ruleset,
            made_by,
        });
    }
}

fn tables_text(rec: &mut Recorder) -> String {
    let mut text = rec.save(V4, Table::Nat).unwrap();
    text.push_str(&rec.save(V4, Table::Filter).unwrap());
    text
}

/// A restore payload's `*table … COMMIT` sections.
fn sections(payload: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in payload.lines() {
        if line.starts_with('*') {
            out.push(String::new());
        }
        if let Some(section) = out.last_mut() {
            section.push_str(line);
            section.push('\n');
        }
    }
    out
}

impl Executor for Snapshots {
    fn restore(
        &mut self,
        family: IpFamily,
        payload: &str,
        options: RestoreOptions,
    ) -> Result<(), ExecError> {
        for section in sections(payload) {
            self.rec.restore(family, &section, options)?;
            self.snapshot(section);
        }
        Ok(())
    }
    fn save(&mut self, family: IpFamily, table: Table) -> Result<String, ExecError> {
        self.rec.save(family, table)
    }
    fn ensure_jump(&mut self, family: IpFamily, jump: &JumpRule) -> Result<(), ExecError> {
        self.rec.ensure_jump(family, jump)?;
        self.snapshot(format!(
            "ensure_jump {} {} {}",
            jump.table, jump.chain, jump.rule
        ));
        Ok(())
    }
    fn chains_per_restore(&mut self, _: IpFamily) -> Option<usize> {
        Some(self.max_chains)
    }
}

/// The configs a round may switch to (each switch makes a full sync).
fn configs() -> Vec<ProxyConfig> {
    vec![
        config(),
        config().with_masquerade_all(true),
        // The client pod 10.180.250.1 is off-cluster here; the endpoints are not.
        config().with_cluster_cidrs(["10.180.0.0/17".parse().unwrap()]),
        config().with_local_traffic(LocalTrafficDetector::InterfaceNamePrefix("veth".into())),
        config().with_local_traffic(LocalTrafficDetector::None),
        config().with_localhost_nodeports(false),
        config().with_nodeport_addresses([NodePortAddress::Primary]),
        config().with_masquerade_bit(13),
        // A few endpoints cross it: the cluster-size rule makes a sync full.
        config().with_large_cluster_endpoints(Some(4)),
        // Every comment gone: no caller's rule changes but for its comment.
        config().with_comments(false),
    ]
}

/// How a round's sync comes about.
#[derive(Debug, Clone)]
enum How {
    /// Just the changes: a partial sync (or a full one on the cluster-size rule).
    Changes,
    /// `request_full_sync`.
    Requested,
    /// `set_config` to `configs()[i]`.
    Config(usize),
    /// The proxy restarts: a new Syncer, over the same tables, whose first sync
    /// is full and deletes the chains the old one left that it does not want.
    Restart,
}

/// One sync: the changes before it, how it comes about, the pieces' size.
#[derive(Debug, Clone)]
struct Round {
    changes: Vec<Change>,
    how: How,
    max_chains: usize,
}

fn round() -> impl Strategy<Value = Round> {
    (
        prop::collection::vec(change(), 0..4),
        prop_oneof![
            5 => Just(How::Changes),
            1 => Just(How::Requested),
            2 => (0..configs().len()).prop_map(How::Config),
            1 => Just(How::Restart),
        ],
        1usize..8,
    )
        .prop_map(|(changes, how, max_chains)| Round {
            changes,
            how,
            max_chains,
        })
}

/// The first round builds a random cluster (its sync is the Syncer's first, on
/// empty tables); the others change it.
fn rounds() -> impl Strategy<Value = Vec<Round>> {
    (
        prop::collection::vec(change(), 1..10),
        1usize..8,
        prop::collection::vec(round(), 1..5),
    )
        .prop_map(|(changes, max_chains, rest)| {
            std::iter::once(Round {
                changes,
                how: How::Changes,
                max_chains,
            })
            .chain(rest)
            .collect()
        })
}

/// The node's address (`fixtures::config`).
fn node() -> Node {
    Node::new([ip("192.168.0.2")])
}

/// A packet to trace, and the service port it is addressed to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    /// `ns/name:port`.
    port: String,
    packet: Packet,
}

/// The packets to trace for a sync: to each service port's cluster IP,
/// external IPs, load-balancer IPs and node port (on the node's address, and on
/// 127.0.0.1 from the node itself); from a pod, from an endpoint of the service
/// (hairpin), from outside inside the source ranges and outside them, and from
/// the node; for the services before the sync and after it.
fn probes(before: &ClusterState, after: &ClusterState) -> Vec<Probe> {
    let pod = |p: Packet| p.arriving_on("veth9");
    let mut out: Vec<Probe> = Vec::new();
    for state in [before, after] {
        for svc in state.services() {
            let key = svc.key();
            let hairpin = state
                .slices_of(&key)
                .flat_map(|s| &s.endpoints)
                .map(|e| e.address)
                .next();
            for port in &svc.ports {
                let mut push = |packet: Packet| {
                    if !out.iter().any(|p| p.packet == packet) {
                        out.push(Probe {
                            port: format!("{}/{}:{}", key.namespace, key.name, port.name),
                            packet,
                        });
                    }
                };
                let to =
                    |src: &str, dst: IpAddr, p: u16| Packet::new(port.protocol, ip(src), dst, p);
                for &vip in &svc.cluster_ips {
                    push(pod(to("10.180.250.1", vip, port.port)));
                    push(to("203.0.113.9", vip, port.port));
                    push(to("192.168.0.2", vip, port.port).from_local());
                    if let Some(h) = hairpin {
                        push(pod(Packet::new(port.protocol, h, vip, port.port)));
                    }
                }
                for &a in &svc.external_ips {
                    push(pod(to("10.180.250.1", a, port.port)));
                    push(to("198.51.100.9", a, port.port));
                    push(to("192.168.0.2", a, port.port).from_local());
                }
                for a in svc.load_balancer_ingress.iter().map(|i| i.ip) {
                    push(pod(to("10.180.250.1", a, port.port)));
                    // Inside the source ranges and outside them.
                    push(to("203.0.113.9", a, port.port));
                    push(to("198.51.100.9", a, port.port));
                    push(to("192.168.0.2", a, port.port).from_local());
                }
                if let Some(np) = port.node_port {
                    push(pod(to("10.180.250.1", ip("192.168.0.2"), np)));
                    push(to("203.0.113.9", ip("192.168.0.2"), np));
                    push(to("192.168.0.2", ip("192.168.0.2"), np).from_local());
                    push(to("127.0.0.1", ip("127.0.0.1"), np).from_local());
                }
            }
        }
    }
    out
}

/// One way a packet can end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Way {
    verdict: Verdict,
    destination: SocketAddr,
    masquerade: bool,
    mark: u32,
    /// Dropped by the host's `FORWARD` policy, not by a rule of svcnat's.
    by_policy: bool,
}

impl Way {
    /// Accepted, DNATed away from where it was sent.
    fn dnat(&self, p: &Packet) -> bool {
        self.verdict == Verdict::Accept
            && self.destination != SocketAddr::new(p.destination, p.destination_port)
    }

    /// The rules did nothing to it: accepted, unchanged.
    fn untouched(&self, p: &Packet) -> bool {
        self.verdict == Verdict::Accept && !self.dnat(p) && !self.masquerade && self.mark == p.mark
    }

    /// The same way: for a packet let through, the same destination,
    /// masquerade and mark; for one refused, the same verdict (a packet dropped
    /// or rejected leaves nothing behind, neither a flow nor its mark, wherever
    /// nat sent it first: the first sync of a host whose FORWARD policy is DROP
    /// drops, after DNAT and before filter's jumps are in, what the empty
    /// tables dropped before DNAT).
    fn same(&self, other: &Way) -> bool {
        match self.verdict {
            Verdict::Accept => self == other,
            _ => self.verdict == other.verdict,
        }
    }
}

/// Every way `p` can end in `r` (with a chance above 0).
fn ways(r: &Ruleset, p: &Packet) -> Result<BTreeSet<Way>, TraceError> {
    Ok(trace(r, p, &node())?
        .outcomes
        .iter()
        .filter(|o| o.probability > 0.0)
        .map(|o| Way {
            verdict: o.verdict,
            destination: o.destination,
            masquerade: o.masquerade,
            mark: o.mark,
            by_policy: o.note.as_deref() == Some("filter FORWARD policy DROP"),
        })
        .collect())
}

/// One sync, as the test saw it.
struct Sync {
    /// Which round, how it came about, why it was full: for messages.
    what: String,
    /// Why the sync was full, if it was.
    reason: Option<FullReason>,
    /// The tables before the sync (as saved, and parsed) and the cluster before
    /// and after it.
    old_text: String,
    old: Ruleset,
    old_state: ClusterState,
    new_state: ClusterState,
    /// Every state of the tables the sync went through; the last one is the
    /// state after it (none if it wrote nothing).
    states: Vec<Snapshot>,
}

impl Sync {
    fn new_tables(&self) -> &Ruleset {
        self.states.last().map_or(&self.old, |s| &s.ruleset)
    }

    /// The states in between (all but the last).
    fn between(&self) -> &[Snapshot] {
        &self.states[..self.states.len().saturating_sub(1)]
    }
}

fn full_sync_tables(
    state: &ClusterState,
    config: &ProxyConfig,
) -> BTreeMap<(Table, String), Vec<String>> {
    let mut s = Syncer::new(Recorder::new(), config.clone()).unwrap();
    s.replace_state(state.clone());
    s.sync().unwrap();
    recorder_tables(s.executor())
}

/// A chain named as svcnat names a service's chains.
fn is_hashed(chain: &str) -> bool {
    [
        "KUBE-SVC-",
        "KUBE-SVL-",
        "KUBE-EXT-",
        "KUBE-FW-",
        "KUBE-SEP-",
    ]
    .iter()
    .any(|p| chain.starts_with(p))
}

/// The policy of the host's filter `FORWARD` chain: ACCEPT, or DROP as Docker
/// and firewalld set it, where a forwarded packet passes only by an ACCEPT
/// (`KUBE-FORWARD`'s masquerade mark, say). DROP is set after the node's first
/// sync: during that one, nat's jumps go in before filter's, so a packet the
/// new nat DNATs to another node is dropped by the policy until
/// `KUBE-FORWARD`'s jump is in (the first sync's gap, which the module docs
/// leave open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forward {
    Accept,
    Drop,
}

/// Drives the rounds through a Syncer over [`Snapshots`], on a host whose
/// `FORWARD` policy is `forward`, and hands each sync to `each`. Checks on the way that every sync succeeds without keeping a
/// chain (no restore refused, no `-X` of a chain still jumped to) and leaves
/// the tables one full sync of the same state leaves.
fn drive(
    rounds: Vec<Round>,
    forward: Forward,
    mut each: impl FnMut(&Sync) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let mut syncer = Syncer::new(Snapshots::default(), config())
        .unwrap()
        .with_drift_check(None);
    let mut old_text = tables_text(&mut Recorder::new());
    let mut old = traceable(&svcnat::parse::parse_as(&old_text, V4).unwrap(), &[]);
    let mut config_changed_ever = false;
    for (r, round) in rounds.into_iter().enumerate() {
        let old_state = syncer.state().clone();
        let mut config_changed = false;
        match round.how {
            How::Changes => {}
            How::Requested => syncer.request_full_sync(),
            How::Config(i) => {
                config_changed = syncer.config() != &configs()[i];
                syncer.set_config(configs()[i].clone()).unwrap();
            }
            How::Restart => {
                let exec = std::mem::take(syncer.executor_mut());
                let config = syncer.config().clone();
                syncer = Syncer::new(exec, config).unwrap().with_drift_check(None);
                syncer.replace_state(old_state.clone());
            }
        }
        config_changed_ever |= config_changed;
        for c in round.changes {
            apply_change(&mut syncer, c);
        }
        syncer.executor_mut().max_chains = round.max_chains;
        let report = syncer
            .sync()
            .map_err(|e| TestCaseError::fail(format!("round {r}: sync failed: {e}")))?;
        prop_assert!(
            report.kept_chains.is_empty(),
            "round {}: chains kept: {:?}",
            r,
            report.kept_chains
        );
        let sync = Sync {
            what: format!(
                "round {r} ({:?}, {}, pieces of {})",
                round.how,
                report
                    .full_reason
                    .map_or_else(|| "partial".to_owned(), |f| format!("full: {f}")),
                round.max_chains
            ),
            reason: report.full_reason,
            old_text,
            old,
            old_state,
            new_state: syncer.state().clone(),
            states: std::mem::take(&mut syncer.executor_mut().states),
        };
        each(&sync)?;
        let mut got = recorder_tables(&syncer.executor().rec);
        let mut want = full_sync_tables(syncer.state(), syncer.config());
        if config_changed_ever {
            // A config change leaves the jump rules and fixed chains the old
            // config wanted and the new one does not (KUBE-FIREWALL, with
            // localhost node ports turned off): nothing removes them. A jump
            // both configs want stays where it was, below the ones the new
            // config inserted (KUBE-FIREWALL's, which has no comment, once
            // comments are off): built-in chains are compared unordered.
            for ((table, chain), rules) in got.iter_mut().chain(want.iter_mut()) {
                if table.builtin_chains().contains(&chain.as_str()) {
                    rules.sort();
                }
            }
            got.retain(
                |(table, chain), rules| match want.get(&(*table, chain.clone())) {
                    None => !chain.starts_with("KUBE-") || is_hashed(chain),
                    Some(wanted) => {
                        if table.builtin_chains().contains(&chain.as_str()) {
                            rules.retain(|rule| wanted.contains(rule));
                        }
                        true
                    }
                },
            );
        }
        prop_assert_eq!(got, want, "round {}: not the tables of a full sync", r);
        old = sync.new_tables().clone();
        old_text = match sync.states.last() {
            Some(last) => last.text.clone(),
            None => sync.old_text,
        };
        if r == 0 && forward == Forward::Drop {
            // Only after the node's first sync: see [`Forward`].
            // Declaring the chain flushes it: its rules go back in.
            let rec = &mut syncer.executor_mut().rec;
            let mut policy = "*filter\n:FORWARD DROP [0:0]\n".to_owned();
            for rule in rec.rules(V4, Table::Filter, "FORWARD").unwrap_or_default() {
                policy.push_str(&format!("-A FORWARD {rule}\n"));
            }
            policy.push_str("COMMIT\n");
            rec.restore(V4, &policy, RestoreOptions::default()).unwrap();
            old_text = tables_text(rec);
            old = traceable(&svcnat::parse::parse_as(&old_text, V4).unwrap(), &[]);
        }
    }
    Ok(())
}

/// What the runs covered, so that the property is known not to hold vacuously.
#[derive(Debug, Default)]
struct Seen {
    /// Full syncs, by reason, and partial ones.
    full: BTreeSet<String>,
    partial: usize,
    /// States in between traced, and those in which some packet goes as
    /// before the sync and not as after it, and another as after it and not
    /// as before.
    between: usize,
    mixed: usize,
    /// Packets that the states before and after both DNAT, and both refuse,
    /// traced in between.
    both_dnat: usize,
    both_refuse: usize,
}

/// Every way in between of every packet of `sync` that breaks a rule of the
/// module docs, as a message.
///
/// # Errors
/// A trace that fails (a jump to a missing chain).
fn violations(sync: &Sync, seen: &mut Seen) -> Result<Vec<String>, TestCaseError> {
    let mut out = Vec::new();
    let probes = probes(&sync.old_state, &sync.new_state);
    let trace_in = |r: &Ruleset, p: &Packet, at: &dyn Fn() -> String| {
        ways(r, p).map_err(|e| TestCaseError::fail(format!("{}\n  {p:?}: {e}", at())))
    };
    let before_after: Vec<(BTreeSet<Way>, BTreeSet<Way>)> = probes
        .iter()
        .map(|p| {
            let before = trace_in(&sync.old, &p.packet, &|| format!("{} before", sync.what))?;
            let after = trace_in(sync.new_tables(), &p.packet, &|| {
                format!("{} after", sync.what)
            })?;
            Ok((before, after))
        })
        .collect::<Result<_, TestCaseError>>()?;
    // Per service port, every endpoint old or new DNATs some packet to it to.
    let mut endpoints: BTreeMap<&str, BTreeSet<SocketAddr>> = BTreeMap::new();
    for (probe, (before, after)) in probes.iter().zip(&before_after) {
        let dnat = before.iter().chain(after).filter(|w| w.dnat(&probe.packet));
        endpoints
            .entry(&probe.port)
            .or_default()
            .extend(dnat.map(|w| w.destination));
    }
    let new_text = sync.states.last().map(|s| s.text.as_str());
    for (k, state) in sync.between().iter().enumerate() {
        // A piece that rewrote chains as they were (most of a full sync's)
        // leaves the tables of before or after the sync: nothing to trace.
        if state.text == sync.old_text || Some(state.text.as_str()) == new_text {
            continue;
        }
        seen.between += 1;
        let at = || {
            format!(
                "{}, state {} of {} (after {})",
                sync.what,
                k + 1,
                sync.states.len(),
                state.made_by.trim_end()
            )
        };
        let (mut as_before, mut as_after) = (false, false);
        for (probe, (before, after)) in probes.iter().zip(&before_after) {
            let p = &probe.packet;
            let now = trace_in(&state.ruleset, p, &at)?;
            as_before |= now == *before && now != *after;
            as_after |= now == *after && now != *before;
            let both_dnat = before.iter().chain(after).all(|w| w.dnat(p));
            let both_masq = both_dnat && before.iter().chain(after).all(|w| w.masquerade);
            // Refused by svcnat's rules: a packet one end DNATs to a pod and
            // the host's FORWARD policy then drops is let through by svcnat.
            let both_refuse = before
                .iter()
                .chain(after)
                .all(|w| w.verdict != Verdict::Accept && !w.by_policy);
            seen.both_dnat += usize::from(both_dnat);
            seen.both_refuse += usize::from(both_refuse);
            for w in &now {
                let mut broken = |why: &str| {
                    out.push(format!(
                        "{}:\n  {p:?}\n  before {before:?}\n  after  {after:?}\n  in between {w:?}: {why}\n{}",
                        at(),
                        state.text
                    ));
                };
                if both_dnat && !w.dnat(p) {
                    broken("no destination, where before and after have one (2)");
                }
                if w.dnat(p) && !endpoints[probe.port.as_str()].contains(&w.destination) {
                    broken("not an endpoint of its service port (3)");
                }
                if both_masq && !w.masquerade {
                    broken("not masqueraded, where before and after masquerade it (4)");
                }
                if !w.untouched(p) && !before.iter().chain(after).any(|b| b.same(w)) {
                    broken(match w.verdict {
                        Verdict::Accept => "neither before nor after goes this way (5)",
                        _ => "refused, where neither before nor after refuses it this way (6)",
                    });
                }
                if both_refuse && w.verdict == Verdict::Accept {
                    broken("let through, where before and after refuse it (6)");
                }
            }
        }
        seen.mixed += usize::from(as_before && as_after);
    }
    Ok(out)
}

/// See the module docs. About 4 seconds in a debug build; `IN_BETWEEN_CASES`
/// sets the number of cases (32 by default).
#[test]
fn every_state_in_between_is_safe() {
    let cases = std::env::var("IN_BETWEEN_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32);
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::with_cases(cases)
    });
    let seen = std::cell::RefCell::new(Seen::default());
    let forward = prop_oneof![Just(Forward::Accept), Just(Forward::Drop)];
    let result = runner.run(&(rounds(), forward), |(rounds, forward)| {
        let mut seen = seen.borrow_mut();
        drive(rounds, forward, |sync| {
            match sync.reason {
                None => seen.partial += 1,
                Some(reason) => {
                    seen.full.insert(reason.to_string());
                }
            }
            match violations(sync, &mut seen)?.into_iter().next() {
                Some(message) => Err(TestCaseError::fail(message)),
                None => Ok(()),
            }
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Not vacuous: syncs of every kind, states in between that route some
    // packets the old way and others the new way, packets both ends DNAT, and
    // both refuse.
    let seen = seen.into_inner();
    for reason in [
        FullReason::FirstSync,
        FullReason::Requested,
        FullReason::ConfigChanged,
    ] {
        assert!(seen.full.contains(reason.as_str()), "{seen:?}");
    }
    assert!(seen.partial > 0 && seen.between > 0, "{seen:?}");
    assert!(seen.mixed > 0 && seen.both_dnat > 0, "{seen:?}");
    assert!(seen.both_refuse > 0, "{seen:?}");
}

/// The rounds' syncs against the module docs: every way in between that breaks
/// a rule.
fn per_packet(rounds: Vec<Round>, forward: Forward) -> Vec<String> {
    let mut out = Vec::new();
    drive(rounds, forward, |sync| {
        out.extend(violations(sync, &mut Seen::default())?);
        Ok(())
    })
    .unwrap();
    out
}

fn endpoint(host: u8, local: bool) -> (u8, Conditions, bool) {
    (host, Conditions::READY, local)
}

/// One round of `changes`, in pieces of one chain.
fn changes(changes: Vec<Change>) -> Round {
    Round {
        changes,
        how: How::Changes,
        max_chains: 1,
    }
}

/// A node's first sync inserts the jump rules from the built-in chains one by
/// one: nat's first, POSTROUTING's before the ones that capture, so no packet
/// is DNATed without the masquerade it needs, or dropped by filter's
/// source-range firewall before nat can DNAT it.
#[test]
fn a_first_sync_hooks_nat_before_filter_and_masquerade_before_capture() {
    // svc0: a load balancer with source ranges, one endpoint on another node.
    let first = changes(vec![
        Change::Features(0, 2 | 16),
        Change::Upsert(0, vec![endpoint(1, false)]),
    ]);
    let broken = per_packet(vec![first], Forward::Accept);
    assert!(broken.is_empty(), "{}", broken.join("\n\n"));
}

/// A chain the sync leaves as it is can lead from a rewritten chain to another
/// rewritten one: svc0, a load balancer with externalTrafficPolicy Local and no
/// endpoint here, loses its source ranges and its endpoint 10.180.0.1 for
/// 10.180.0.2. KUBE-SERVICES now sends the load-balancer IP to KUBE-EXT-
/// (unchanged), which sends a pod's connection on to KUBE-SVC- (rewritten): the
/// new KUBE-SERVICES goes in only after KUBE-SVC-, or for a moment the pod's
/// connection, dropped before and sent to 10.180.0.2 after, goes to 10.180.0.1.
#[test]
fn a_chain_reaches_a_rewritten_one_through_one_left_as_it_is_only_once_it_is_written() {
    let broken = per_packet(
        vec![
            changes(vec![
                Change::Features(0, 2 | 4 | 16 | 32),
                Change::Upsert(0, vec![endpoint(1, false)]),
            ]),
            changes(vec![
                Change::Features(0, 2 | 4 | 32),
                Change::Upsert(0, vec![endpoint(2, false)]),
            ]),
        ],
        Forward::Accept,
    );
    let wrong: Vec<&String> = broken
        .iter()
        .filter(|m| m.contains("10.180.0.1:80") && m.contains("neither before nor after"))
        .collect();
    assert!(wrong.is_empty(), "{}", broken.join("\n\n"));
}

/// Every config change, there and back, in pieces of one chain: the fixed
/// chains go in together (KUBE-MARK-MASQ sets the bit KUBE-POSTROUTING tests, so
/// a new masquerade bit in one and the old in the other would masquerade
/// nothing), and the rules proven hold.
#[test]
fn every_config_change_in_pieces_of_one_chain() {
    for (i, forward) in
        (1..configs().len()).flat_map(|i| [(i, Forward::Accept), (i, Forward::Drop)])
    {
        let cluster = changes(vec![
            Change::Features(0, 1 | 2 | 16 | 128),
            Change::Upsert(0, vec![endpoint(1, true), endpoint(2, false)]),
            Change::Upsert(1, vec![endpoint(1, false)]),
            Change::Features(2, 1),
        ]);
        let switch = |config| Round {
            how: How::Config(config),
            ..changes(vec![])
        };
        drive(
            vec![cluster, switch(i), switch(0)],
            forward,
            |sync| match violations(sync, &mut Seen::default())?.into_iter().next() {
                Some(message) => Err(TestCaseError::fail(message)),
                None => Ok(()),
            },
        )
        .unwrap_or_else(|e| panic!("config {i}, FORWARD {forward:?}: {e}"));
    }
}

/// Nat and filter commit one after the other. svc0, a load balancer whose
/// source ranges hold the node, loses its only endpoint: written nat first, the
/// node's own connection to the load-balancer IP would no longer be DNATed and
/// the old source-range DROP in filter, meant for the sources nat left alone,
/// would drop it, as neither state does (before, it is DNATed; after, left
/// alone). The port's new REJECT goes in, and its DROP out, before nat.
#[test]
fn nat_before_filter_drops_what_neither_state_drops() {
    let broken = per_packet(
        vec![
            changes(vec![
                Change::Features(0, 2 | 16),
                Change::Upsert(0, vec![endpoint(1, false)]),
            ]),
            changes(vec![Change::DropSlice(0)]),
        ],
        Forward::Accept,
    );
    assert!(broken.is_empty(), "{}", broken.join("\n\n"));
}

/// A chain rewritten in place while an old caller still jumps to it. svc0 (a
/// node port, endpoint 10.180.0.1 on another node) gets internalTrafficPolicy
/// Local and endpoints 10.180.0.2 here and 10.180.0.3 elsewhere. Were the new
/// KUBE-SVC- chain (now for external traffic only: every endpoint, no
/// cluster-IP masquerade rule) in while the old KUBE-SERVICES still sends the
/// cluster IP to it, a pod's connection would go to 10.180.0.3 (before:
/// 10.180.0.1; after: 10.180.0.2, via KUBE-SVL-) and the node's own would not
/// be masqueraded (before and after, it is). KUBE-SVC- goes in with
/// KUBE-SERVICES, in one piece.
#[test]
fn a_policy_turned_local_mixes_old_dispatch_and_new_chains() {
    let broken = per_packet(
        vec![
            changes(vec![
                Change::Features(0, 1),
                Change::Upsert(0, vec![endpoint(1, false)]),
            ]),
            changes(vec![
                Change::Features(0, 1 | 32),
                Change::Upsert(0, vec![endpoint(2, true), endpoint(3, false)]),
            ]),
        ],
        Forward::Accept,
    );
    assert!(broken.is_empty(), "{}", broken.join("\n\n"));
}

/// A chain rewritten in place while an old caller still jumps to it. svc0
/// becomes a node port as the node port addresses narrow to the primary
/// address: were the new KUBE-NODEPORTS in while the old KUBE-SERVICES still
/// sends every local address to it, the node's connection to 127.0.0.1:30000
/// would be DNATed; before (no node port) and after (not on 127.0.0.1) it is
/// left alone. KUBE-NODEPORTS goes in with KUBE-SERVICES, in one piece.
#[test]
fn narrowed_node_port_addresses_capture_what_neither_state_captures() {
    let broken = per_packet(
        vec![
            changes(vec![Change::Upsert(0, vec![endpoint(1, false)])]),
            Round {
                how: How::Config(6),
                ..changes(vec![Change::Features(0, 1)])
            },
        ],
        Forward::Accept,
    );
    assert!(broken.is_empty(), "{}", broken.join("\n\n"));
}

/// With comments off a load balancer's last `KUBE-FW-` rule has no match and no
/// target: `-A KUBE-FW-…` alone on its line. A full sync in pieces that left
/// the unchanged chain out still sent that line, without the chain's
/// declaration, so the chain gained a second empty rule.
#[test]
fn an_empty_rule_of_an_unchanged_chain_is_left_out_with_it() {
    let rounds = vec![
        changes(vec![Change::Upsert(4, vec![endpoint(1, false)])]),
        changes(vec![Change::Features(4, 2 | 16 | 128)]),
        Round {
            how: How::Config(9),
            ..changes(vec![])
        },
        Round {
            how: How::Requested,
            ..changes(vec![])
        },
    ];
    drive(rounds, Forward::Accept, |sync| {
        match violations(sync, &mut Seen::default())?.into_iter().next() {
            Some(message) => Err(TestCaseError::fail(message)),
            None => Ok(()),
        }
    })
    .unwrap();
}
