//! A large restore payload cut into pieces in dependency order, for backends that
//! take one large `--noflush` payload slowly (iptables-nft-restore 1.8.9 keeps the
//! chain names a payload mentions in a sorted list, walked per line: quadratic).
//!
//! Pure: [`pieces`] reads the payload with [`parse`](crate::parse) and returns the
//! payloads to send one after the other; an executor only runs them. Within each
//! table, a chain is written (declared, which flushes it, and filled) only once
//! every chain its rules jump to has been written, so the capture chains
//! (`KUBE-SERVICES`, `KUBE-NODEPORTS`) come after the service chains they reach,
//! and those after their endpoint chains. A chain that jumps to one of a service
//! port's chains (`KUBE-FW-`, `KUBE-EXT-`, `KUBE-SVC-`, `KUBE-SVL-` and one hash)
//! also comes after every other of them the payload writes, as it may reach them
//! through one the payload leaves as it is. Each chain is written whole within one
//! piece, so no packet meets a half-written chain. Chains the payload deletes
//! (declared, to flush them, then `-X`) are flushed and deleted in a last piece of
//! their table, after every rule that jumped to them has been rewritten. Sending
//! the pieces in order leaves exactly the tables the whole payload leaves.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::compile::incremental::is_service_chain;
use crate::model::IpFamily;
use crate::parse::{Op, ParseError, parse_restore_as};
use crate::ruleset::restore;
use crate::ruleset::{ChainName, Table};

/// What one table's section of the payload holds, in the payload's words.
struct Section<'p> {
    table: Table,
    /// Chains declared, in order, with their declaration line.
    declared: Vec<(ChainName, &'p str)>,
    /// Each chain's rule lines, in order.
    rules: HashMap<ChainName, Vec<&'p str>>,
    /// Each chain's targets that are chains of this section.
    jumps: HashMap<ChainName, Vec<ChainName>>,
    /// The hashes of the service ports whose chains each chain jumps to,
    /// written in this section or not (see [`port_chain`]).
    into_ports: HashMap<ChainName, Vec<String>>,
    /// The `-X` lines, with their chain.
    deleted: Vec<(ChainName, &'p str)>,
}

/// The payload as pieces of at most `max_chains` chains each, to be restored in
/// order; the payload whole (one piece) when it is small enough, or when it holds
/// anything but declarations, appended rules and chain deletions (a payload this
/// crate does not write), or a jump cycle.
///
/// A payload that declares at most `max_chains` chains is returned whole without
/// being parsed, so cutting a piece again costs one pass over its lines.
///
/// # Errors
/// The payload is too large to send whole and does not parse.
pub fn pieces(
    payload: &str,
    family: IpFamily,
    max_chains: usize,
) -> Result<Vec<String>, ParseError> {
    let max_chains = max_chains.max(1);
    if payload.lines().filter(|l| l.starts_with(':')).count() <= max_chains {
        return Ok(vec![payload.to_owned()]);
    }
    let parsed = parse_restore_as(payload, family)?;
    let lines: Vec<&str> = payload.lines().collect();
    let whole = || vec![payload.to_owned()];
    let mut sections = Vec::new();
    let mut total = 0;
    for table in &parsed.tables {
        let mut s = Section {
            table: table.table,
            declared: Vec::new(),
            rules: HashMap::new(),
            jumps: HashMap::new(),
            into_ports: HashMap::new(),
            deleted: Vec::new(),
        };
        // Looked up per line: sets, as a full payload has 100k chains and more.
        let mut declared: HashSet<&ChainName> = HashSet::new();
        let mut deleted: HashSet<&ChainName> = HashSet::new();
        for op in &table.ops {
            let Some(line) = op.line.checked_sub(1).and_then(|i| lines.get(i)) else {
                return Ok(whole());
            };
            match &op.op {
                Op::Declare { chain, .. } => {
                    // Declared twice, or again after its rules or its deletion: the
                    // order of those lines matters, and only the whole payload keeps it.
                    if deleted.contains(chain) || !declared.insert(chain) {
                        return Ok(whole());
                    }
                    s.declared.push((chain.clone(), line));
                }
                Op::Append { chain, rule } => {
                    // A rule for a chain the payload does not declare (a built-in chain,
                    // or one it leaves as it is), or for one it deletes: sent whole.
                    if !declared.contains(chain) || deleted.contains(chain) {
                        return Ok(whole());
                    }
                    s.rules.entry(chain.clone()).or_default().push(line);
                    // Typed only where the payload declares the chain: the others
                    // exist already and are no dependency.
                    if let Some(to) = rule.jump_target() {
                        s.jumps.entry(chain.clone()).or_default().push(to.clone());
                    }
                    if let Some((hash, _)) = rule.target_name().and_then(port_chain) {
                        let into = s.into_ports.entry(chain.clone()).or_default();
                        into.push(hash.to_owned());
                    }
                }
                Op::DeleteChain(Some(chain)) => {
                    // A chain deleted with rules of its own would fail whole; pieces
                    // would not say so.
                    if s.rules.contains_key(chain) {
                        return Ok(whole());
                    }
                    deleted.insert(chain);
                    s.deleted.push((chain.clone(), line));
                }
                _ => return Ok(whole()),
            }
        }
        total += s.declared.len();
        sections.push(s);
    }
    if total <= max_chains {
        return Ok(whole());
    }
    let mut out = Vec::new();
    for s in &sections {
        let Some(order) = dependency_order(s) else {
            return Ok(whole());
        };
        let deleted: HashSet<&ChainName> = s.deleted.iter().map(|(c, _)| c).collect();
        let declaration: HashMap<&ChainName, &str> =
            s.declared.iter().map(|(c, l)| (c, *l)).collect();
        // The chains that jump nowhere in the payload and are not per-service (the
        // fixed ones: KUBE-MARK-MASQ sets the mark KUBE-POSTROUTING tests) go first,
        // together, so no piece has one at a new setting and the other at an old one.
        let (fixed, rest): (Vec<&ChainName>, Vec<&ChainName>) = order.iter().partition(|c| {
            !is_service_chain(c.as_str())
                && s.jumps.get(**c).is_none_or(Vec::is_empty)
                && !s.into_ports.contains_key(**c)
        });
        let chunks = std::iter::once(fixed.as_slice())
            .filter(|f| !f.is_empty())
            .chain(rest.chunks(max_chains));
        for chunk in chunks {
            let mut text = String::new();
            // Writing into a String cannot fail.
            let _ = restore::open_table(&mut text, s.table);
            for chain in chunk {
                push_line(&mut text, declaration[chain]);
            }
            for chain in chunk {
                for line in s.rules.get(*chain).into_iter().flatten() {
                    push_line(&mut text, line);
                }
            }
            let _ = restore::commit(&mut text);
            out.push(text);
        }
        // Every rule that jumped to a deleted chain is rewritten by now: the deleted
        // chains are flushed, then removed, both in pieces of `max_chains`.
        let doomed: Vec<&str> = s
            .declared
            .iter()
            .filter(|(c, _)| deleted.contains(c))
            .map(|(_, line)| *line)
            .collect();
        for lines in [doomed, s.deleted.iter().map(|(_, l)| *l).collect()] {
            for chunk in lines.chunks(max_chains) {
                let mut text = String::new();
                let _ = restore::open_table(&mut text, s.table);
                for line in chunk {
                    push_line(&mut text, line);
                }
                let _ = restore::commit(&mut text);
                out.push(text);
            }
        }
    }
    Ok(out)
}

fn push_line(text: &mut String, line: &str) {
    text.push_str(line);
    text.push('\n');
}

/// The section's written chains (declared and not deleted) in an order where each
/// comes after every chain of the section it jumps to; among chains free to go,
/// the payload's order. `None` on a cycle.
fn dependency_order<'s>(s: &'s Section<'_>) -> Option<Vec<&'s ChainName>> {
    let deleted: HashSet<&ChainName> = s.deleted.iter().map(|(c, _)| c).collect();
    let written: Vec<&ChainName> = s
        .declared
        .iter()
        .map(|(c, _)| c)
        .filter(|c| !deleted.contains(c))
        .collect();
    let index: HashMap<&ChainName, usize> =
        written.iter().enumerate().map(|(i, c)| (*c, i)).collect();
    // A service port's chain the payload leaves as it is may jump to one it
    // writes (an unchanged KUBE-EXT- to a rewritten KUBE-SVC-), out of sight of
    // the payload's jumps: a chain that jumps into a service port's chains comes
    // after all of them the payload writes, and each of them after those below it.
    let mut ports: HashMap<&str, Vec<(u8, &ChainName)>> = HashMap::new();
    for c in &written {
        if let Some((hash, rank)) = port_chain(c.as_str()) {
            ports.entry(hash).or_default().push((rank, c));
        }
    }
    let mut below: HashMap<&ChainName, Vec<&ChainName>> = HashMap::new();
    for &chain in &written {
        let own = port_chain(chain.as_str());
        let into = s
            .into_ports
            .get(chain)
            .into_iter()
            .flatten()
            .map(String::as_str)
            .filter(|hash| own.is_none_or(|(own, _)| own != *hash))
            .map(|hash| (hash, u8::MAX));
        for (hash, rank) in own.into_iter().chain(into) {
            let port = ports.get(hash).map(Vec::as_slice).unwrap_or_default();
            let lower = port.iter().filter(|(r, _)| *r < rank).map(|(_, c)| *c);
            below.entry(chain).or_default().extend(lower);
        }
    }
    let deps = |chain: &ChainName, i: usize| {
        let jumps = s.jumps.get(chain).map(Vec::as_slice).unwrap_or_default();
        let below = below.get(chain).map(Vec::as_slice).unwrap_or_default();
        jumps.get(i).or_else(|| below.get(i - jumps.len()).copied())
    };
    // Depth-first, each chain after its dependencies; `state`: 1 on the path, 2 done.
    let mut state: BTreeMap<usize, u8> = BTreeMap::new();
    let mut order = Vec::with_capacity(written.len());
    for start in 0..written.len() {
        if state.contains_key(&start) {
            continue;
        }
        // An explicit stack of (chain, next dependency to look at).
        let mut stack = vec![(start, 0usize)];
        state.insert(start, 1);
        while let Some((at, next)) = stack.last_mut() {
            let chain = written[*at];
            match deps(chain, *next) {
                Some(dep) => {
                    *next += 1;
                    let Some(&d) = index.get(dep) else { continue };
                    match state.get(&d) {
                        Some(1) => return None,
                        Some(_) => {}
                        None => {
                            state.insert(d, 1);
                            stack.push((d, 0));
                        }
                    }
                }
                None => {
                    state.insert(*at, 2);
                    order.push(chain);
                    stack.pop();
                }
            }
        }
    }
    Some(order)
}

/// A service port's chain (`KUBE-SVC-`, `KUBE-SVL-`, `KUBE-EXT-` or `KUBE-FW-`
/// and the port's hash): the hash, and its rank among the port's chains, each
/// jumping only to lower ones (FW to EXT, EXT to SVC and SVL).
fn port_chain(name: &str) -> Option<(&str, u8)> {
    [
        ("KUBE-SVC-", 0),
        ("KUBE-SVL-", 0),
        ("KUBE-EXT-", 1),
        ("KUBE-FW-", 2),
    ]
    .into_iter()
    .find_map(|(prefix, rank)| name.strip_prefix(prefix).map(|hash| (hash, rank)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &str = "*nat\n\
        :KUBE-SERVICES - [0:0]\n\
        :KUBE-MARK-MASQ - [0:0]\n\
        :KUBE-SVC-A - [0:0]\n\
        :KUBE-SEP-A - [0:0]\n\
        :KUBE-SVC-OLD - [0:0]\n\
        -A KUBE-SERVICES -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-A\n\
        -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
        -A KUBE-SVC-A -j KUBE-SEP-A\n\
        -A KUBE-SEP-A -s 10.1.0.1 -j KUBE-MARK-MASQ\n\
        -A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination 10.1.0.1:80\n\
        -X KUBE-SVC-OLD\n\
        COMMIT\n";

    #[test]
    fn small_payloads_stay_whole() {
        assert_eq!(pieces(PAYLOAD, IpFamily::Ipv4, 100).unwrap(), [PAYLOAD]);
    }

    #[test]
    fn chains_come_after_what_they_jump_to_and_deletions_last() {
        let got = pieces(PAYLOAD, IpFamily::Ipv4, 1).unwrap();
        let chain_of = |p: &str| p.lines().nth(1).unwrap().to_owned();
        let order: Vec<String> = got.iter().map(|p| chain_of(p)).collect();
        assert_eq!(
            order,
            [
                ":KUBE-MARK-MASQ - [0:0]",
                ":KUBE-SEP-A - [0:0]",
                ":KUBE-SVC-A - [0:0]",
                ":KUBE-SERVICES - [0:0]",
                ":KUBE-SVC-OLD - [0:0]",
                "-X KUBE-SVC-OLD",
            ]
        );
        // Every line of the payload is in exactly one piece.
        let mut sent: Vec<&str> = got
            .iter()
            .flat_map(|p| p.lines())
            .filter(|l| !l.starts_with('*') && *l != "COMMIT")
            .collect();
        let mut whole: Vec<&str> = PAYLOAD
            .lines()
            .filter(|l| !l.starts_with('*') && *l != "COMMIT")
            .collect();
        sent.sort_unstable();
        whole.sort_unstable();
        assert_eq!(sent, whole);
    }

    #[test]
    fn the_fixed_chains_go_first_together() {
        let payload = "*nat\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-SEP-A - [0:0]\n\
            -A KUBE-POSTROUTING -m mark ! --mark 0x8/0x8 -j RETURN\n\
            -A KUBE-MARK-MASQ -j MARK --or-mark 0x8\n\
            -A KUBE-SEP-A -s 10.1.0.1/32 -j KUBE-MARK-MASQ\nCOMMIT\n";
        let got = pieces(payload, IpFamily::Ipv4, 1).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got[0].contains(":KUBE-POSTROUTING") && got[0].contains(":KUBE-MARK-MASQ"));
        assert!(got[1].contains(":KUBE-SEP-A"));
    }

    #[test]
    fn a_chain_that_jumps_into_a_service_port_comes_after_all_its_chains() {
        // KUBE-FW-H and KUBE-EXT-H are left as they are; through them the new
        // KUBE-SERVICES reaches the rewritten KUBE-SVC-H, which must be in place
        // first.
        let payload = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-H - [0:0]\n:KUBE-SEP-A - [0:0]\n\
            -A KUBE-SERVICES -d 1.2.3.4/32 -j KUBE-FW-H\n\
            -A KUBE-SVC-H -j KUBE-SEP-A\n\
            -A KUBE-SEP-A -p tcp -j DNAT --to-destination 10.1.0.1:80\nCOMMIT\n";
        let got = pieces(payload, IpFamily::Ipv4, 1).unwrap();
        let chain_of = |p: &str| p.lines().nth(1).unwrap().to_owned();
        let order: Vec<String> = got.iter().map(|p| chain_of(p)).collect();
        assert_eq!(
            order,
            [
                ":KUBE-SEP-A - [0:0]",
                ":KUBE-SVC-H - [0:0]",
                ":KUBE-SERVICES - [0:0]",
            ]
        );
        // Within a port, each chain after those below it: FW, then EXT, then SVC.
        let payload = "*nat\n:KUBE-FW-H - [0:0]\n:KUBE-SVC-H - [0:0]\n\
            -A KUBE-FW-H -s 203.0.113.0/25 -j KUBE-EXT-H\n\
            -A KUBE-SVC-H -j RETURN\nCOMMIT\n";
        let got = pieces(payload, IpFamily::Ipv4, 1).unwrap();
        let order: Vec<String> = got.iter().map(|p| chain_of(p)).collect();
        assert_eq!(order, [":KUBE-SVC-H - [0:0]", ":KUBE-FW-H - [0:0]"]);
    }

    #[test]
    fn what_it_cannot_order_it_sends_whole() {
        let cycle = "*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j B\n-A B -j A\nCOMMIT\n";
        assert_eq!(pieces(cycle, IpFamily::Ipv4, 1).unwrap(), [cycle]);
        let insert = "*nat\n:A - [0:0]\n:B - [0:0]\n-I A 1 -j B\nCOMMIT\n";
        assert_eq!(pieces(insert, IpFamily::Ipv4, 1).unwrap(), [insert]);
        // A rule for a chain the payload does not declare, a chain declared twice,
        // a chain deleted with rules: only the whole payload keeps their meaning.
        for odd in [
            "*nat\n:A - [0:0]\n:B - [0:0]\n-A PREROUTING -j A\nCOMMIT\n",
            "*nat\n:A - [0:0]\n-A A -j RETURN\n:A - [0:0]\n:B - [0:0]\nCOMMIT\n",
            "*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j RETURN\n-X A\nCOMMIT\n",
        ] {
            assert_eq!(pieces(odd, IpFamily::Ipv4, 1).unwrap(), [odd]);
        }
    }
}
