//! A semantic normal form of rules, so that what `iptables-save` prints back and
//! what svcnat compiled compare equal.

use crate::model::IpFamily;
use crate::ruleset::{
    Address, CtState, Match, Not, Probability, ProtocolMatch, ProtocolName, Rule, Ruleset, Target,
};

/// The ruleset in canonical form: every rule through [`canonical_rule`]; tables,
/// chains, their order and policies unchanged.
///
/// `iptables-save` prints rules differently from the restore text that loaded
/// them: `-s`/`-d`/`-p` first and quoted comments, `/32` on single addresses,
/// `-p tcp … -m tcp` for `-m tcp -p tcp`, `MARK --set-xmark V/M` for
/// `--or-mark`/`--xor-mark`, `REJECT --reject-with icmp-port-unreachable` for
/// `REJECT`, and the statistic probability the kernel stored (31-bit fixed
/// point) with 11 decimals. Canonicalising both sides makes them equal:
///
/// ```
/// use svcnat::model::IpFamily;
/// let loaded = "*nat\n:KUBE-X - [0:0]\n\
///     -A KUBE-X -m comment --comment \"ns/svc:p cluster IP\" -m tcp -p tcp -d 10.96.0.1 --dport 80 -j DNAT --to-destination 10.0.0.1:80\n\
///     -A KUBE-X -m statistic --mode random --probability 0.3333333333 -j MARK --or-mark 0x4000\nCOMMIT\n";
/// let saved = "*nat\n:KUBE-X - [0:0]\n\
///     -A KUBE-X -d 10.96.0.1/32 -p tcp -m comment --comment \"ns/svc:p cluster IP\" -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:80\n\
///     -A KUBE-X -m statistic --mode random --probability 0.33333333349 -j MARK --set-xmark 0x4000/0x4000\nCOMMIT\n";
/// let a = svcnat::parse::canonicalize(&svcnat::parse::parse(loaded)?);
/// let b = svcnat::parse::canonicalize(&svcnat::parse::parse(saved)?);
/// assert_eq!(a, b);
/// # Ok::<(), svcnat::parse::ParseError>(())
/// ```
pub fn canonicalize(ruleset: &Ruleset) -> Ruleset {
    let mut out = ruleset.clone();
    canonicalize_in_place(&mut out);
    out
}

/// [`canonicalize`] without the copy, for a ruleset the caller owns.
pub(crate) fn canonicalize_in_place(ruleset: &mut Ruleset) {
    let family = ruleset.family;
    for table in &mut ruleset.tables {
        for chain in table.chains.values_mut() {
            for rule in &mut chain.rules {
                *rule = canonical_rule(rule, family);
            }
        }
    }
}

/// One rule in canonical form:
///
/// 1. `-p P` together with `-m P` (tcp, udp, sctp) becomes the compiler's
///    `-m P -p P` ([`Match::protocol`]).
/// 2. A `/32` (IPv4) or `/128` (IPv6) network becomes a single address; other
///    networks lose their host bits, as the kernel stores them.
/// 3. A statistic probability becomes the value the kernel stores for its
///    ten-decimal text (`round(p·2³¹)/2³¹`), so 11-digit `iptables-save` output
///    and svcnat's 10-digit text agree.
/// 4. conntrack states are put in the order iptables prints them.
/// 5. Matches are stably sorted by the rank order the compiler writes them in:
///    comment, addrtype, recent, statistic, protocol, destination, ports, source
///    and interfaces, conntrack, mark, nfacct; anything else keeps its relative
///    order after those.
/// 6. `MARK` targets become `--or-mark`/`--xor-mark`/`--and-mark` when
///    `--set-xmark V/M` means one of them; `REJECT --reject-with` the family's
///    default becomes plain `REJECT`.
pub fn canonical_rule(rule: &Rule, family: IpFamily) -> Rule {
    let mut matches: crate::ruleset::Matches = rule.matches.iter().map(canonical_match).collect();
    merge_protocol(&mut matches);
    matches.sort_by_key(rank);
    Rule {
        matches,
        target: rule.target.as_ref().map(|t| canonical_target(t, family)),
    }
}

/// The matches whose order `iptables -C` tells apart and `iptables-save` keeps, in
/// the rule's order and each canonical: every one but the address, interface,
/// protocol and port fields, which iptables-save prints in a fixed place. Two rules
/// with equal [`canonical_rule`]s are the same rule to the kernel only if these are
/// equal too.
pub(crate) fn module_order(rule: &Rule) -> Vec<Match> {
    rule.matches
        .iter()
        .map(canonical_match)
        .filter(|m| !matches!(rank(m), 4..=7))
        .collect()
}

/// A network without host bits (the kernel keeps `addr & mask`, so
/// `10.0.0.5/8` reads back as `10.0.0.0/8`); a full-length one is an address.
fn single(a: Address) -> Address {
    match a {
        Address::Net(n) if n.prefix_len() == n.max_prefix_len() => Address::Ip(n.addr()),
        Address::Net(n) => Address::Net(n.trunc()),
        other => other,
    }
}

/// The kernel's statistic match keeps `round(p * 2^31)`; iptables-save prints that
/// back with 11 decimals.
fn kernel_probability(p: Probability) -> Probability {
    let text: f64 = format!("{p}").parse().unwrap_or(p.value());
    let fixed = (text * 2f64.powi(31)).round() / 2f64.powi(31);
    Probability::new(fixed).unwrap_or(p)
}

fn ct_rank(s: &CtState) -> u8 {
    match s {
        CtState::Invalid => 0,
        CtState::New => 1,
        CtState::Related => 2,
        CtState::Established => 3,
        CtState::Dnat => 4,
    }
}

/// The states in the order iptables prints them, once each.
fn ct_order(s: &Not<Vec<CtState>>) -> Not<Vec<CtState>> {
    let mut states = s.value.clone();
    states.sort_by_key(ct_rank);
    states.dedup();
    Not {
        negated: s.negated,
        value: states,
    }
}

fn canonical_match(m: &Match) -> Match {
    match m {
        Match::Source(a) => Match::Source(Not {
            negated: a.negated,
            value: single(a.value),
        }),
        Match::Destination(a) => Match::Destination(Not {
            negated: a.negated,
            value: single(a.value),
        }),
        Match::Statistic(p) => Match::Statistic(kernel_probability(*p)),
        Match::Conntrack(s) => Match::Conntrack(ct_order(s)),
        Match::State(s) => Match::State(ct_order(s)),
        other => other.clone(),
    }
}

fn merge_protocol(matches: &mut crate::ruleset::Matches) {
    let plain = matches.iter().enumerate().find_map(|(i, m)| match m {
        Match::Protocol(ProtocolMatch::Plain(Not {
            negated: false,
            value: ProtocolName::Known(p),
        })) => Some((i, *p)),
        _ => None,
    });
    let Some((i, p)) = plain else {
        return;
    };
    let module = Match::Protocol(ProtocolMatch::ModuleOnly(p));
    if let Some(j) = matches.iter().position(|m| *m == module) {
        matches[i] = Match::protocol(p);
        matches.remove(j);
    }
}

fn rank(m: &Match) -> u8 {
    match m {
        Match::Comment(_) | Match::OtherComment(_) => 0,
        Match::SrcType(_) | Match::DstType(_) | Match::AddressType { .. } => 1,
        Match::Recent { .. } => 2,
        Match::Statistic(_) => 3,
        Match::Protocol(_) => 4,
        Match::Destination(_) => 5,
        Match::DestinationPort(_) | Match::SourcePort(_) | Match::Multiport { .. } => 6,
        Match::Source(_)
        | Match::InInterface(_)
        | Match::OutInterface(_)
        | Match::Fragment { .. } => 7,
        Match::Conntrack(_) | Match::State(_) => 8,
        Match::Mark(_) => 9,
        Match::Nfacct(_) => 10,
        Match::Set(_) | Match::Physdev(_) | Match::Other(_) => 11,
    }
}

fn canonical_target(t: &Target, family: IpFamily) -> Target {
    match t {
        Target::Mark(op) => Target::Mark(op.normalized()),
        Target::RejectWith(w) => {
            let default = match family {
                IpFamily::Ipv4 => "icmp-port-unreachable",
                IpFamily::Ipv6 => "icmp6-port-unreachable",
            };
            if w.as_str() == default {
                Target::Reject
            } else {
                t.clone()
            }
        }
        other => other.clone(),
    }
}
