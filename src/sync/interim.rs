//! The filter rules a sync holds while nat changes.
//!
//! Nat and filter commit one after the other, so some packets meet one table's
//! new rules and the other's old ones. Every filter rule svcnat writes refuses
//! (or, for a health-check node port, accepts) packets to one destination that
//! nat did not DNAT: a cluster IP, external IP or load-balancer IP with its port,
//! or a node port on the node's addresses. Filter before nat would refuse packets
//! that nat, still old, has yet to DNAT the new way (a service's first endpoints,
//! while its REJECT is gone... or a source range's DROP already in, for a packet
//! the old nat does not DNAT yet); filter after nat lets the old filter refuse
//! packets the new nat no longer DNATs and the new filter would let through (a
//! load balancer that loses its last endpoint: its source-range DROP, meant for
//! packets nat left alone, catches the node's own connection, which the new
//! state leaves alone).
//!
//! So a sync writes three states of filter: the old one, the one [`interim`]
//! picks, held while nat changes, and the new one. Per destination:
//!
//! * where the new filter REJECTs (a port with no endpoints: nat captures nothing
//!   there once it is new), the new rules, before nat: what the new nat does not
//!   DNAT is refused as the new state refuses it, and the old nat still DNATs what
//!   it did;
//! * where the old filter REJECTs (nat captured nothing there), the old rules,
//!   until after nat: what the old nat does not DNAT is refused as before, and the
//!   new nat DNATs what it will;
//! * elsewhere, both: the new rules added before nat, the old ones removed after
//!   it. These are DROPs (source ranges, no local endpoint) and health-check
//!   ACCEPTs, and each state with endpoints that has a DROP at a destination
//!   DROPs there every packet its nat does not DNAT: a packet one state DNATs and
//!   the other does not is DROPped by the other, so a DROP of either is one of the
//!   two states' ways for it.
//!
//! A packet that both states refuse is refused at every step, and one that
//! neither refuses is refused at none: with nat old or new, each packet is
//! refused, DNATed or left alone as the old or the new state does it.
//!
//! The fixed filter chains (`KUBE-FORWARD`, `KUBE-FIREWALL`, the canary) hold
//! no rule about one destination, and change only with the config. Their
//! ACCEPTs (the masquerade mark's, RELATED and ESTABLISHED) let through what
//! nat marked or DNATed; with the masquerade bit changed, the old nat marks
//! one bit and the new nat the other, and on a host whose `FORWARD` policy is
//! DROP either state's forwarded service traffic needs its own bit's ACCEPT.
//! So while nat changes a fixed chain holds the ACCEPTs of both states (the
//! new rules in order, then the old ACCEPTs the new chain lacks), and its
//! other rules only where both states have them (compared without comments
//! and counters, written as new): `KUBE-FORWARD`'s INVALID DROP sees packets
//! nat never sees, and `KUBE-FIREWALL`'s guard drops what its state's nat
//! does not DNAT to 127.0.0.0/8, so the state without it is the one held. A
//! packet carrying the other state's mark bit before nat (set by another
//! program) is accepted as the state with that bit accepts it.

use std::collections::HashSet;

use crate::compile::incremental::Shared;
use crate::model::IpFamily;
use crate::parse::{Op, canonical_rule, parse_restore_as};
use crate::ruleset::restore;
use crate::ruleset::{ChainName, Match, Rule, Table, Target};

/// A filter rule as read: its chain, the rule in canonical form, and its line.
struct Read<'t> {
    chain: ChainName,
    rule: Rule,
    line: &'t str,
}

impl Read<'_> {
    /// The chain and rule as one string, to compare rules.
    fn text(&self) -> String {
        format!("{} {}", self.chain, self.rule)
    }
}

/// Which rule of the old or of the new list [`interim`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    Old(usize),
    New(usize),
}

/// How [`interim`] treats one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The new filter REJECTs there: its rules.
    New,
    /// The old filter REJECTs there: its rules.
    Old,
    /// Both states' rules.
    Both,
    /// One state has no rule there: none.
    Neither,
}

/// The rules to hold while nat changes (see the module docs), as picks from
/// `old` and `new`: every new rule kept, in order, then every old rule not in
/// `new` that is kept, in order. Rules in both are kept once. Rules of the
/// shared chains are held per destination, those of the fixed chains as the
/// module docs say.
fn interim(old: &[Read<'_>], new: &[Read<'_>]) -> Vec<Pick> {
    let per_service = |r: &&Read<'_>| {
        Shared::ALL
            .iter()
            .any(|w| w.table() == Table::Filter && w.chain() == r.chain)
    };
    let rejecting = |rules: &[Read<'_>]| -> HashSet<String> {
        rules
            .iter()
            .filter(per_service)
            .filter(|r| matches!(r.rule.target, Some(Target::Reject | Target::RejectWith(_))))
            .map(|r| destination(&r.rule))
            .collect()
    };
    let (old_rejects, new_rejects) = (rejecting(old), rejecting(new));
    let at = |rules: &[Read<'_>]| -> HashSet<String> {
        rules
            .iter()
            .filter(per_service)
            .map(|r| destination(&r.rule))
            .collect()
    };
    let (old_at, new_at) = (at(old), at(new));
    let mode = |rule: &Rule| {
        let d = destination(rule);
        if new_rejects.contains(&d) {
            Mode::New
        } else if old_rejects.contains(&d) {
            Mode::Old
        } else if old_at.contains(&d) && new_at.contains(&d) {
            Mode::Both
        } else {
            Mode::Neither
        }
    };
    let effects = |rules: &[Read<'_>]| -> HashSet<String> {
        rules
            .iter()
            .filter(|r| !per_service(r))
            .map(effect)
            .collect()
    };
    let (old_effects, new_effects) = (effects(old), effects(new));
    let old_texts: HashSet<String> = old.iter().map(Read::text).collect();
    let new_texts: HashSet<String> = new.iter().map(Read::text).collect();
    let mut out: Vec<Pick> = Vec::new();
    for (i, r) in new.iter().enumerate() {
        let held = if per_service(&r) {
            matches!(mode(&r.rule), Mode::New | Mode::Both) || old_texts.contains(&r.text())
        } else {
            // Every ACCEPT; other rules where the old chain has them too.
            r.rule.target == Some(Target::Accept) || old_effects.contains(&effect(r))
        };
        if held {
            out.push(Pick::New(i));
        }
    }
    for (i, r) in old.iter().enumerate() {
        let held = if per_service(&r) {
            matches!(mode(&r.rule), Mode::Old | Mode::Both) && !new_texts.contains(&r.text())
        } else {
            // The old ACCEPTs the new chain lacks; the rest it holds as new.
            r.rule.target == Some(Target::Accept) && !new_effects.contains(&effect(r))
        };
        if held {
            out.push(Pick::Old(i));
        }
    }
    out
}

/// A fixed chain's rule as it acts: its chain, matches and target, without its
/// comment or counter (a rule that only gains or loses one acts the same).
fn effect(r: &Read<'_>) -> String {
    let bare = r
        .rule
        .without(|m| m.is_comment() || matches!(m, Match::Nfacct(_)));
    format!("{} {bare}", r.chain)
}

/// What a rule matches on, without its comment: the destination it is about.
fn destination(rule: &Rule) -> String {
    let mut bare = rule.without(Match::is_comment);
    bare.target = None;
    bare.to_string()
}

/// The `-A` rules of the filter table in `text` (restore or `iptables-save`
/// text), canonical, with the chains it declares; `None` if it does not parse.
fn read(text: &str, family: IpFamily) -> Option<(Vec<ChainName>, Vec<Read<'_>>)> {
    let parsed = parse_restore_as(text, family).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let mut declared = Vec::new();
    let mut rules = Vec::new();
    let table = parsed.tables.into_iter().find(|t| t.table == Table::Filter);
    for op in table.into_iter().flat_map(|t| t.ops) {
        match op.op {
            Op::Declare { chain, .. } => declared.push(chain),
            Op::Append { chain, rule } => rules.push(Read {
                rule: canonical_rule(&rule, family),
                chain,
                line: lines.get(op.line.checked_sub(1)?)?,
            }),
            _ => {}
        }
    }
    Some((declared, rules))
}

/// The part of each filter chain one service holds while nat changes, given its
/// old and new part of each (`(chain, old lines, new lines)`, its `-A` lines in
/// the shared filter chains): its lines for each chain, in the order given.
/// `None` when that is its old part in every chain, or a part does not parse
/// (then the old parts stay until after nat, as before this step existed).
pub(super) fn service_parts(
    parts: &[(ChainName, &str, &str)],
    family: IpFamily,
) -> Option<Vec<String>> {
    let section = |lines: &mut dyn Iterator<Item = &str>| -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = restore::open_table(&mut text, Table::Filter);
        lines.for_each(|l| text.push_str(l));
        let _ = restore::commit(&mut text);
        text
    };
    let old_text = section(&mut parts.iter().map(|p| p.1));
    let new_text = section(&mut parts.iter().map(|p| p.2));
    let (_, old) = read(&old_text, family)?;
    let (_, new) = read(&new_text, family)?;
    let picks = interim(&old, &new);
    let mut out: Vec<String> = vec![String::new(); parts.len()];
    for pick in picks {
        let r = match pick {
            Pick::Old(i) => &old[i],
            Pick::New(i) => &new[i],
        };
        if let Some(k) = parts.iter().position(|(c, _, _)| *c == r.chain) {
            out[k].push_str(r.line);
            out[k].push('\n');
        }
    }
    let unchanged = parts.iter().zip(&out).all(|((_, old, _), now)| old == now);
    (!unchanged).then_some(out)
}

/// The filter section a full sync writes before nat: `saved` is the kernel's
/// filter table (`iptables-save -t filter`, or the restore text the syncer
/// remembers applying to it), `payload` the full sync's text,
/// whose filter section it ends with. Each chain the payload writes that the
/// kernel holds, with the rules [`interim`] picks, where they differ from the
/// kernel's (chains the kernel does not hold have no callers yet and wait for
/// the payload). Empty when no chain differs, or either side does not parse.
pub(super) fn full_section(saved: &str, payload: &str, family: IpFamily) -> String {
    let mut text = String::new();
    let Some(start) = payload.find("*filter\n") else {
        return text;
    };
    let (Some((declared, new)), Some((there, old))) =
        (read(&payload[start..], family), read(saved, family))
    else {
        return text;
    };
    let there: HashSet<&ChainName> = there.iter().collect();
    let chains: Vec<&ChainName> = declared.iter().filter(|c| there.contains(c)).collect();
    let of = |rules: &[Read<'_>], chain: &ChainName| -> Vec<usize> {
        (0..rules.len())
            .filter(|&i| rules[i].chain == *chain)
            .collect()
    };
    let written: HashSet<&ChainName> = chains.iter().copied().collect();
    let old: Vec<Read<'_>> = old
        .into_iter()
        .filter(|r| written.contains(&r.chain))
        .collect();
    let new: Vec<Read<'_>> = new
        .into_iter()
        .filter(|r| written.contains(&r.chain))
        .collect();
    let picks = interim(&old, &new);
    for chain in chains {
        let held: Vec<Pick> = picks
            .iter()
            .copied()
            .filter(|p| match *p {
                Pick::Old(i) => old[i].chain == *chain,
                Pick::New(i) => new[i].chain == *chain,
            })
            .collect();
        let text_of = |p: &Pick| match *p {
            Pick::Old(i) => old[i].text(),
            Pick::New(i) => new[i].text(),
        };
        let was: Vec<String> = of(&old, chain).into_iter().map(|i| old[i].text()).collect();
        if held.iter().map(text_of).eq(was) {
            continue;
        }
        if text.is_empty() {
            // Writing into a String cannot fail.
            let _ = restore::open_table(&mut text, Table::Filter);
        }
        let _ = restore::declare(&mut text, chain.as_str());
        for p in &held {
            // The kernel's rules are written as svcnat writes them; the
            // payload's, as they are.
            match *p {
                Pick::Old(i) => {
                    let _ = restore::rule(&mut text, chain.as_str(), &old[i].rule);
                }
                Pick::New(i) => {
                    text.push_str(new[i].line);
                    text.push('\n');
                }
            }
        }
    }
    if !text.is_empty() {
        let _ = restore::commit(&mut text);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: IpFamily = IpFamily::Ipv4;

    fn chain(name: &str) -> ChainName {
        ChainName::new(name).unwrap()
    }

    /// A load balancer with source ranges (its DROP in KUBE-PROXY-FIREWALL) that
    /// loses its last endpoint (a REJECT in KUBE-EXTERNAL-SERVICES): the REJECT
    /// goes in and the DROP out before nat.
    #[test]
    fn a_destination_that_gains_a_reject_takes_the_new_rules_first() {
        let drop = "-A KUBE-PROXY-FIREWALL -m comment --comment \"ns/a:p traffic not accepted by KUBE-FW-X\" -m tcp -p tcp -d 1.2.3.1 --dport 80 -j DROP\n";
        let reject = "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns/a:p has no endpoints\" -m tcp -p tcp -d 1.2.3.1 --dport 80 -j REJECT\n";
        let parts = [
            (chain("KUBE-EXTERNAL-SERVICES"), "", reject),
            (chain("KUBE-PROXY-FIREWALL"), drop, ""),
        ];
        assert_eq!(service_parts(&parts, V4).unwrap(), [reject, ""]);
        // The other way round (its first endpoint): the old rules stay.
        let back = [
            (chain("KUBE-EXTERNAL-SERVICES"), reject, ""),
            (chain("KUBE-PROXY-FIREWALL"), "", drop),
        ];
        assert_eq!(service_parts(&back, V4), None);
    }

    /// DROPs of both states are held together.
    #[test]
    fn drops_are_added_before_nat_and_removed_after() {
        let local = "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns/a:p has no local endpoints\" -m tcp -p tcp -d 1.2.3.1 --dport 80 -j DROP\n";
        let fw = "-A KUBE-PROXY-FIREWALL -m comment --comment \"ns/a:p traffic not accepted by KUBE-FW-X\" -m tcp -p tcp -d 1.2.3.1 --dport 80 -j DROP\n";
        let parts = [
            (chain("KUBE-EXTERNAL-SERVICES"), local, ""),
            (chain("KUBE-PROXY-FIREWALL"), "", fw),
        ];
        assert_eq!(service_parts(&parts, V4).unwrap(), [local, fw]);
    }

    /// A full sync over the kernel's table: kernel rules read back in
    /// `iptables-save`'s words, written in svcnat's; chains it does not hold,
    /// and chains the interim state leaves as they are, not written.
    #[test]
    fn a_full_sync_writes_first_only_the_chains_that_differ() {
        let saved = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n\
            :KUBE-PROXY-FIREWALL - [0:0]\n\
            -A KUBE-SERVICES -d 172.30.0.1/32 -p tcp -m comment --comment \"ns/a:p has no endpoints\" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable\n\
            -A KUBE-PROXY-FIREWALL -d 1.2.3.1/32 -p tcp -m comment --comment \"ns/b:p traffic not accepted by KUBE-FW-X\" -m tcp --dport 80 -j DROP\n\
            COMMIT\n";
        // ns/a gains an endpoint (its REJECT stays until after nat); ns/b loses
        // its last (the REJECT in, the DROP out, before nat).
        let reject = "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns/b:p has no endpoints\" -m tcp -p tcp -d 1.2.3.1 --dport 80 -j REJECT\n";
        let payload = format!(
            "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n*filter\n:KUBE-SERVICES - [0:0]\n\
            :KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n:KUBE-FORWARD - [0:0]\n\
            {reject}COMMIT\n"
        );
        assert_eq!(
            full_section(saved, &payload, V4),
            format!(
                "*filter\n:KUBE-EXTERNAL-SERVICES - [0:0]\n{reject}:KUBE-PROXY-FIREWALL - [0:0]\nCOMMIT\n"
            )
        );
        // Nothing held first on empty tables.
        assert_eq!(full_section("", &payload, V4), "");
    }

    /// A new masquerade bit: `KUBE-FORWARD` holds both bits' ACCEPTs while nat
    /// changes (the old nat marks the old bit, the new nat the new one), and
    /// `KUBE-FIREWALL`'s guard, in both states but for its comment, stays.
    #[test]
    fn fixed_chains_hold_both_states_accepts() {
        let saved = "*filter\n:KUBE-FORWARD - [0:0]\n:KUBE-FIREWALL - [0:0]\n\
            -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
            -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
            -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
            -A KUBE-FIREWALL -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n\
            COMMIT\n";
        let new_forward = "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
            -A KUBE-FORWARD -m mark --mark 0x2000/0x2000 -j ACCEPT\n\
            -A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n";
        let guard = "-A KUBE-FIREWALL -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n";
        let payload = format!(
            "*filter\n:KUBE-FORWARD - [0:0]\n:KUBE-FIREWALL - [0:0]\n{new_forward}{guard}COMMIT\n"
        );
        assert_eq!(
            full_section(saved, &payload, V4),
            format!(
                "*filter\n:KUBE-FORWARD - [0:0]\n{new_forward}\
                -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
                :KUBE-FIREWALL - [0:0]\n{guard}COMMIT\n"
            )
        );
        // Without the guard in the new state, it goes before nat.
        let payload = format!(
            "*filter\n:KUBE-FORWARD - [0:0]\n:KUBE-FIREWALL - [0:0]\n{new_forward}COMMIT\n"
        );
        assert!(
            full_section(saved, &payload, V4).contains(":KUBE-FIREWALL - [0:0]\nCOMMIT\n"),
            "{}",
            full_section(saved, &payload, V4)
        );
    }
}
