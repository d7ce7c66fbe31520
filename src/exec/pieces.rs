//! A large restore payload cut into pieces in dependency order, for backends that
//! take one large `--noflush` payload slowly (iptables-nft-restore 1.8.9 keeps the
//! chain names a payload mentions in a sorted list, walked per line: quadratic).
//!
//! Pure: [`pieces`] and [`pieces_over`] read the payload with
//! [`parse`](crate::parse) and return the payloads to send one after the other; an
//! executor only runs them. Each `*table … COMMIT` section of the payload is cut on
//! its own, in the payload's order (a table may appear twice: the
//! [`Syncer`](crate::sync::Syncer) writes some filter rules before nat and the
//! rest after it). Within a section, a chain is written (declared, which flushes
//! it, and filled) only once every chain its rules jump to has been written, so the
//! capture chains (`KUBE-SERVICES`, `KUBE-NODEPORTS`) come after the service
//! chains they reach, and those after their endpoint chains. A chain that jumps to
//! one of a service port's chains (`KUBE-FW-`, `KUBE-EXT-`, `KUBE-SVC-`,
//! `KUBE-SVL-` and one hash) also comes after every other of them the payload
//! writes, as it may reach them through one the payload leaves as it is. Each
//! chain is written whole within one piece, so no packet meets a half-written
//! chain, but for a large chain that is known to be new (`KUBE-SERVICES` of a
//! first sync), which goes in parts before anything that jumps to it (see
//! [`pieces_over`]). Within a piece each chain is declared just before its
//! rules, but in a piece that holds a group (see below), whose declarations come
//! first (iptables-nft-restore looks each line's chain up in a sorted list of
//! the chains named so far). Chains the payload deletes (declared, to flush
//! them, then `-X`) are flushed and deleted in a last piece of their table, after every rule that
//! jumped to them has been rewritten. Sending the pieces in order leaves exactly
//! the tables the whole payload leaves.
//!
//! A chain rewritten in place for another role is written in one piece with its
//! callers whose rules into it change: see [`pieces_over`].

use std::collections::{HashMap, HashSet};

use crate::compile::incremental::is_service_chain;
use crate::model::IpFamily;
use crate::parse::{Op, ParseError, canonical_rule, parse_restore_as};
use crate::ruleset::restore;
use crate::ruleset::{ChainName, Rule, Table};

/// What one table's section of the payload holds, in the payload's words.
struct Section<'p> {
    table: Table,
    /// Chains declared, in order, with their declaration line.
    declared: Vec<(ChainName, &'p str)>,
    /// Each chain's rules, in order: the line, and the rule as parsed.
    rules: HashMap<ChainName, Vec<(&'p str, Rule)>>,
    /// Each chain's targets that are chains of this section.
    jumps: HashMap<ChainName, Vec<ChainName>>,
    /// The hashes of the service ports whose chains each chain jumps to,
    /// written in this section or not (see [`port_chain`]).
    into_ports: HashMap<ChainName, Vec<String>>,
    /// The `-X` lines, with their chain.
    deleted: Vec<(ChainName, &'p str)>,
}

/// The payload as pieces of at most `max_chains` chains each, to be restored in
/// order, taking every chain it writes as new: [`pieces_over`] with nothing
/// known of the tables before it, so no chain is grouped with its callers.
///
/// # Errors
/// The payload is too large to send whole and does not parse.
pub fn pieces(
    payload: &str,
    family: IpFamily,
    max_chains: usize,
) -> Result<Vec<String>, ParseError> {
    pieces_over(payload, "", family, max_chains)
}

/// The payload as pieces of at most `max_chains` chains each (more only to keep
/// a group whole, see below), to be restored in order onto tables that hold
/// `before`; the payload whole (one piece) when it is small enough, or when it
/// holds anything but declarations, appended rules and chain deletions (a
/// payload this crate does not write), or a jump cycle. Each `*table … COMMIT`
/// section is cut on its own, in dependency order: each chain written whole
/// (but a large new one, below) after the chains it jumps to (the capture
/// chains last), the fixed chains
/// first and together, the chains the payload deletes flushed and removed at
/// the end of their table. And one more rule:
///
/// A chain rewritten in place keeps its old callers until they are rewritten too.
/// When its callers stay as they were (a service's endpoints change: `KUBE-SVC-`
/// is rewritten, the rule of `KUBE-SERVICES` that jumps to it is not), a packet
/// that reaches it reaches it in the new state too, and the new chain sends it
/// where the new state does. When they change (a traffic policy turned `Local`
/// moves the cluster IP from `KUBE-SVC-` to `KUBE-SVL-`, which leaves `KUBE-SVC-`
/// to external traffic; an external IP or node port taken away; narrower node
/// port addresses), an old caller would send packets into the new chain that the
/// new state sends elsewhere. Told what the tables held before, this function
/// writes such a chain in the same piece as every chain whose old
/// rules reach it and whose new rules do not the same way: one `COMMIT` is
/// atomic, so no packet sees one without the other. It finds them walking back
/// from each chain the payload rewrites over the old rules that jump to it: a
/// caller the payload writes with the same rule (compared after
/// [`canonical_rule`](crate::parse::canonical_rule), without comments: a rule
/// that only loses its comment sends packets as before) is followed further back, as
/// is one it leaves as it is or deletes; a caller it writes without that rule is
/// grouped with the chain. Endpoint chains (`KUBE-SEP-`, named after their
/// endpoint) and the fixed chains that jump nowhere (`KUBE-MARK-MASQ`,
/// `KUBE-POSTROUTING`) do the same for every caller and are not walked from.
///
/// A group is kept whole, with every chain that must be written between two of
/// its members, so a piece may hold more than the chains asked for: at most
/// `KUBE-SERVICES`, `KUBE-NODEPORTS`, and, for every service port whose chains'
/// callers change in this payload, its `KUBE-SVC-`, `KUBE-SVL-`, `KUBE-EXT-` and
/// `KUBE-FW-` (the endpoint chains they reach go in earlier pieces). An ordinary
/// sync (endpoints change, services come and go) changes no chain's callers and
/// groups nothing.
///
/// `before` is `iptables-save` or restore text of the tables as they are before
/// the payload, or of the part of them that matters: every chain the payload
/// writes that exists already (declared; its rules are not needed), and every
/// rule that jumps to one of them or to a chain on the way to one of them. A
/// chain the payload writes that `before` does not declare is taken as new (no
/// old rule jumps to it); a rule `before` leaves out is taken as one the payload
/// does not change. An `iptables-save` dump of the table serves; so does empty
/// text, which groups nothing.
///
/// A chain that `before` shows to be new (it holds the chain's table, and not
/// the chain), and that no earlier section of the payload writes, with more
/// than four times `max_chains` rules (at most 4,000) is written in parts of
/// that many rules, one piece each, the first with its declaration: no rule can
/// jump to a chain that does not exist, so nothing reaches it before the chains
/// written after it, in later pieces. iptables-nft-restore 1.8.9 took one piece
/// with the 30,000 rules of a 30,000-service `KUBE-SERVICES` in 18 s of its time
/// (the same sorted list; PERFORMANCE.md).
///
/// A payload that declares at most `max_chains` chains is returned whole without
/// being parsed, so cutting a piece again costs one pass over its lines.
///
/// # Errors
/// The payload is too large to send whole and does not parse.
pub fn pieces_over(
    payload: &str,
    before: &str,
    family: IpFamily,
    max_chains: usize,
) -> Result<Vec<String>, ParseError> {
    let max_chains = max_chains.max(1);
    if payload.lines().filter(|l| l.starts_with(':')).count() <= max_chains {
        return Ok(vec![payload.to_owned()]);
    }
    let whole = || vec![payload.to_owned()];
    let Some(texts) = table_sections(payload) else {
        // Not a sequence of `*table … COMMIT` sections: the parser says why.
        parse_restore_as(payload, family)?;
        return Ok(whole());
    };
    let mut parsed = Vec::with_capacity(texts.len());
    for (first_line, text) in &texts {
        let restore = parse_restore_as(text, family).map_err(|mut e| {
            e.line += first_line;
            e
        })?;
        parsed.push((*text, restore));
    }
    let mut sections = Vec::new();
    let mut total = 0;
    for (text, restore) in parsed {
        let Some(s) = restore
            .tables
            .into_iter()
            .next()
            .and_then(|t| section(text, t))
        else {
            return Ok(whole());
        };
        total += s.declared.len();
        sections.push(s);
    }
    if total <= max_chains {
        return Ok(whole());
    }
    let before = Before::new(before);
    let mut out = Vec::new();
    // The chains an earlier section of the payload writes: they exist by the
    // time a later section of their table writes them again.
    let mut earlier: HashSet<(Table, &ChainName)> = HashSet::new();
    for s in &sections {
        let Some(units) = units(s, &before, family) else {
            return Ok(whole());
        };
        let old = before.table(s.table);
        let new = |c: &ChainName| {
            !earlier.contains(&(s.table, c))
                && old.is_some_and(|o| !o.declared.contains(c.as_str()))
        };
        write_section(s, &units, &new, max_chains, &mut out);
        earlier.extend(s.declared.iter().map(|(c, _)| (s.table, c)));
    }
    Ok(out)
}

/// The `*table … COMMIT` sections of `payload`, each with the number of lines
/// before it; `None` if anything but blank lines and comments is outside them.
fn table_sections(payload: &str) -> Option<Vec<(usize, &str)>> {
    let mut out = Vec::new();
    // The byte offset and line number where the open section starts.
    let mut open: Option<(usize, usize)> = None;
    let mut offset = 0;
    for (n, line) in payload.split_inclusive('\n').enumerate() {
        let trimmed = line.trim();
        match open {
            None if trimmed.is_empty() || trimmed.starts_with('#') => {}
            None if trimmed.starts_with('*') => open = Some((offset, n)),
            None => return None,
            Some((start, first)) if trimmed == restore::COMMIT => {
                out.push((first, &payload[start..offset + line.len()]));
                open = None;
            }
            Some(_) => {}
        }
        offset += line.len();
    }
    open.is_none().then_some(out)
}

/// One section's chains, rules and deletions; `None` when it holds anything the
/// pieces could not keep the meaning of.
fn section(text: &str, table: crate::parse::RestoreTable) -> Option<Section<'_>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut s = Section {
        table: table.table,
        declared: Vec::new(),
        rules: HashMap::new(),
        jumps: HashMap::new(),
        into_ports: HashMap::new(),
        deleted: Vec::new(),
    };
    // Looked up per line: sets, as a full payload has 100k chains and more.
    let mut declared: HashSet<ChainName> = HashSet::new();
    let mut deleted: HashSet<ChainName> = HashSet::new();
    for op in table.ops {
        let line = op.line.checked_sub(1).and_then(|i| lines.get(i))?;
        match op.op {
            Op::Declare { chain, .. } => {
                // Declared twice, or again after its rules or its deletion: the
                // order of those lines matters, and only the whole payload keeps it.
                if deleted.contains(&chain) || !declared.insert(chain.clone()) {
                    return None;
                }
                s.declared.push((chain, line));
            }
            Op::Append { chain, rule } => {
                // A rule for a chain the payload does not declare (a built-in chain,
                // or one it leaves as it is), or for one it deletes: sent whole.
                if !declared.contains(&chain) || deleted.contains(&chain) {
                    return None;
                }
                // Typed only where the payload declares the chain: the others
                // exist already and are no dependency.
                if let Some(to) = rule.jump_target() {
                    s.jumps.entry(chain.clone()).or_default().push(to.clone());
                }
                if let Some((hash, _)) = rule.target_name().and_then(port_chain) {
                    let into = s.into_ports.entry(chain.clone()).or_default();
                    into.push(hash.to_owned());
                }
                s.rules.entry(chain).or_default().push((line, rule));
            }
            Op::DeleteChain(Some(chain)) => {
                // A chain deleted with rules of its own would fail whole; pieces
                // would not say so.
                if s.rules.contains_key(&chain) {
                    return None;
                }
                deleted.insert(chain.clone());
                s.deleted.push((chain, line));
            }
            _ => return None,
        }
    }
    Some(s)
}

/// How many rules of one new chain a piece holds at most, in chains asked for
/// per piece (see [`pieces_over`]). Each part costs a commit, which walks every
/// chain of the table (PERFORMANCE.md); the sorted list costs the square of a
/// part's rules.
const RULES_PER_PART: usize = 4;

/// The most rules of one new chain a piece holds, whatever the piece size.
const PART_RULES_MAX: usize = 4000;

/// One chain in a piece: its rules `from..to`, with its declaration (which
/// creates or flushes it) if `declare`.
struct Part<'c> {
    chain: &'c ChainName,
    from: usize,
    to: usize,
    declare: bool,
}

/// Writes a section's pieces: the fixed chains first, together; then the units
/// in order, packed into pieces of `max_chains` chains without cutting a unit;
/// then the deleted chains flushed, then removed.
///
/// A chain that is `new` (the tables before hold its table and not it, and no
/// earlier section of the payload writes it) and that has more than
/// [`RULES_PER_PART`] `* max_chains` rules (at most [`PART_RULES_MAX`]) is
/// written in parts, each a piece of its own, in order, the first with its
/// declaration.
/// No packet meets one half-written: only chains written after it jump to it
/// (no rule can jump to a chain that does not exist), and they come in later
/// pieces.
fn write_section(
    s: &Section<'_>,
    units: &[Vec<&ChainName>],
    new: &dyn Fn(&ChainName) -> bool,
    max_chains: usize,
    out: &mut Vec<String>,
) {
    let declaration: HashMap<&ChainName, &str> = s.declared.iter().map(|(c, l)| (c, *l)).collect();
    let rules_of = |c: &ChainName| s.rules.get(c).map_or(0, Vec::len);
    let whole = |chain| Part {
        chain,
        from: 0,
        to: rules_of(chain),
        declare: true,
    };
    let per_part = max_chains
        .saturating_mul(RULES_PER_PART)
        .min(PART_RULES_MAX);
    let split = |c: &ChainName| rules_of(c) > per_part && new(c);
    // The chains that jump nowhere in the payload and are not per-service (the
    // fixed ones: KUBE-MARK-MASQ sets the mark KUBE-POSTROUTING tests) go first,
    // together, so no piece has one at a new setting and the other at an old one.
    let (fixed, rest): (Vec<&Vec<&ChainName>>, Vec<&Vec<&ChainName>>) = units
        .iter()
        .partition(|u| matches!(u.as_slice(), [c] if is_fixed(s, c)));
    let fixed: Vec<Part<'_>> = fixed.into_iter().flatten().map(|c| whole(c)).collect();
    // Each piece's chains, and whether each chain may be declared just before
    // its rules: not when the piece holds a group, whose members may jump to
    // one another in either order (singles come after what they jump to).
    let mut chunks: Vec<(Vec<Part<'_>>, bool)> = Vec::new();
    if !fixed.is_empty() {
        chunks.push((fixed, true));
    }
    let mut current: (Vec<Part<'_>>, bool) = (Vec::new(), true);
    for unit in rest {
        if let [chain] = unit.as_slice()
            && split(chain)
        {
            if !current.0.is_empty() {
                chunks.push(std::mem::replace(&mut current, (Vec::new(), true)));
            }
            let total = rules_of(chain);
            for from in (0..total).step_by(per_part) {
                let part = Part {
                    chain,
                    from,
                    to: (from + per_part).min(total),
                    declare: from == 0,
                };
                chunks.push((vec![part], true));
            }
            continue;
        }
        if !current.0.is_empty() && current.0.len() + unit.len() > max_chains {
            chunks.push(std::mem::replace(&mut current, (Vec::new(), true)));
        }
        current.0.extend(unit.iter().map(|c| whole(c)));
        current.1 &= unit.len() == 1;
        if current.0.len() >= max_chains {
            chunks.push(std::mem::replace(&mut current, (Vec::new(), true)));
        }
    }
    if !current.0.is_empty() {
        chunks.push(current);
    }
    for (chunk, interleave) in &chunks {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = restore::open_table(&mut text, s.table);
        let rules = |part: &Part<'_>| {
            let all = s
                .rules
                .get(part.chain)
                .map(Vec::as_slice)
                .unwrap_or_default();
            &all[part.from..part.to]
        };
        if *interleave {
            // Each chain declared just before its rules: iptables-nft-restore
            // looks each line's chain up in its sorted list of the chains the
            // piece names so far, not yet in the list of all of them.
            for part in chunk {
                if part.declare {
                    push_line(&mut text, declaration[part.chain]);
                }
                for (line, _) in rules(part) {
                    push_line(&mut text, line);
                }
            }
        } else {
            for part in chunk.iter().filter(|p| p.declare) {
                push_line(&mut text, declaration[part.chain]);
            }
            for part in chunk {
                for (line, _) in rules(part) {
                    push_line(&mut text, line);
                }
            }
        }
        let _ = restore::commit(&mut text);
        out.push(text);
    }
    // Every rule that jumped to a deleted chain is rewritten by now: the deleted
    // chains are flushed, then removed, both in pieces of `max_chains`.
    let deleted: HashSet<&ChainName> = s.deleted.iter().map(|(c, _)| c).collect();
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

/// A chain that jumps nowhere in the payload and is not per-service: one of the
/// fixed chains (`KUBE-MARK-MASQ`, `KUBE-POSTROUTING`, the canary, every filter
/// chain).
fn is_fixed(s: &Section<'_>, chain: &ChainName) -> bool {
    !is_service_chain(chain.as_str())
        && s.jumps.get(chain).is_none_or(Vec::is_empty)
        && !s.into_ports.contains_key(chain)
}

fn push_line(text: &mut String, line: &str) {
    text.push_str(line);
    text.push('\n');
}

/// The section's written chains (declared and not deleted) as units to write
/// whole, in an order where each comes after every unit it jumps to; among
/// units free to go, the payload's order. A unit is one chain, or a chain
/// grouped with the callers it must be written with (see the module docs) and
/// every chain written between them. `None` on a jump cycle.
fn units<'s>(
    s: &'s Section<'_>,
    before: &Before<'_>,
    family: IpFamily,
) -> Option<Vec<Vec<&'s ChainName>>> {
    let deleted: HashSet<&ChainName> = s.deleted.iter().map(|(c, _)| c).collect();
    let written: Vec<&ChainName> = s
        .declared
        .iter()
        .map(|(c, _)| c)
        .filter(|c| !deleted.contains(c))
        .collect();
    let index: HashMap<&str, usize> = written
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut edges = dependencies(s, &written, &index);
    // A jump cycle: no order writes each chain after what it jumps to.
    let cyclic = |components: &[Vec<usize>], edges: &[Vec<usize>]| {
        components
            .iter()
            .any(|c| c.len() > 1 || edges[c[0]].contains(&c[0]))
    };
    let plain = components(&edges);
    if cyclic(&plain, &edges) {
        return None;
    }
    let groups = match before.table(s.table) {
        Some(old) => grouped(s, &written, &index, old, family),
        None => Vec::new(),
    };
    let components = if groups.is_empty() {
        plain
    } else {
        // Each group as a ring of edges: one strongly connected component, with
        // whatever lies on a path between two of its members.
        for group in &groups {
            for (k, &from) in group.iter().enumerate() {
                edges[from].push(group[(k + 1) % group.len()]);
            }
        }
        components(&edges)
    };
    Some(
        components
            .into_iter()
            .map(|mut c| {
                c.sort_unstable();
                c.into_iter().map(|i| written[i]).collect()
            })
            .collect(),
    )
}

/// Each written chain's dependencies among the written ones, by index: the
/// chains it jumps to, then, for a chain that jumps into a service port's
/// chains, every chain of that port the section writes (a port's chain the
/// payload leaves as it is may jump to one it writes, an unchanged `KUBE-EXT-`
/// to a rewritten `KUBE-SVC-`, out of sight of the payload's jumps), and for a
/// port's chain, its port's chains below it (FW, then EXT, then SVC and SVL).
fn dependencies(
    s: &Section<'_>,
    written: &[&ChainName],
    index: &HashMap<&str, usize>,
) -> Vec<Vec<usize>> {
    let mut ports: HashMap<&str, Vec<(u8, usize)>> = HashMap::new();
    for (i, c) in written.iter().enumerate() {
        if let Some((hash, rank)) = port_chain(c.as_str()) {
            ports.entry(hash).or_default().push((rank, i));
        }
    }
    written
        .iter()
        .map(|&chain| {
            let jumps = s.jumps.get(chain).into_iter().flatten();
            let mut deps: Vec<usize> = jumps
                .filter_map(|c| index.get(c.as_str()).copied())
                .collect();
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
                deps.extend(port.iter().filter(|(r, _)| *r < rank).map(|(_, i)| *i));
            }
            deps
        })
        .collect()
}

/// The strongly connected components of the graph on `0..edges.len()`, each
/// after every component it has an edge to. Depth-first from each node in turn,
/// edges in order (Tarjan's algorithm, with an explicit stack): without cycles,
/// each node after its dependencies, the nodes free to go in index order.
fn components(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = edges.len();
    let mut t = Tarjan {
        order: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        counter: 0,
    };
    let mut out = Vec::new();
    for root in 0..n {
        if t.order[root].is_some() {
            continue;
        }
        t.visit(root);
        // (node, next edge to look at)
        let mut path = vec![(root, 0usize)];
        while let Some((v, next)) = path.last_mut() {
            let v = *v;
            if let Some(&w) = edges[v].get(*next) {
                *next += 1;
                match t.order[w] {
                    None => {
                        t.visit(w);
                        path.push((w, 0));
                    }
                    Some(o) if t.on_stack[w] => t.low[v] = t.low[v].min(o),
                    Some(_) => {}
                }
                continue;
            }
            path.pop();
            if let Some(&(u, _)) = path.last() {
                t.low[u] = t.low[u].min(t.low[v]);
            }
            if Some(t.low[v]) == t.order[v] {
                let mut component = Vec::new();
                while let Some(w) = t.stack.pop() {
                    t.on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                out.push(component);
            }
        }
    }
    out
}

/// [`components`]' bookkeeping: each node's visit number and lowest reachable
/// one, and the nodes of the components not closed yet.
struct Tarjan {
    order: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    counter: usize,
}

impl Tarjan {
    fn visit(&mut self, v: usize) {
        self.order[v] = Some(self.counter);
        self.low[v] = self.counter;
        self.counter += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
    }
}

/// The groups of written chains (by index) that must be written in one piece:
/// each chain the payload rewrites, walked from as the module docs say, with
/// the callers it must go with. Only groups of two or more.
fn grouped(
    s: &Section<'_>,
    written: &[&ChainName],
    index: &HashMap<&str, usize>,
    old: &TableBefore<'_>,
    family: IpFamily,
) -> Vec<Vec<usize>> {
    // Union-find over the written chains.
    let mut parent: Vec<usize> = (0..written.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    // Canonical text of old rule lines, and of each written chain's new rules,
    // without comments: a caller whose rule into a chain only gains or loses
    // its comment (a sync that turns comments off) sends packets as before.
    let canonical = |rule: &Rule| {
        canonical_rule(rule, family)
            .without(crate::ruleset::Match::is_comment)
            .to_string()
    };
    let mut old_rules: HashMap<&str, Option<String>> = HashMap::new();
    let mut new_rules: HashMap<usize, HashSet<String>> = HashMap::new();
    for (y, chain) in written.iter().enumerate() {
        let name = chain.as_str();
        if !old.declared.contains(name) || name.starts_with("KUBE-SEP-") || is_fixed(s, chain) {
            continue;
        }
        let mut seen: HashSet<&str> = HashSet::from([name]);
        let mut queue = vec![name];
        while let Some(z) = queue.pop() {
            for &(caller, line) in old.into.get(z).into_iter().flatten() {
                let Some(&x) = index.get(caller) else {
                    // Left as it is, deleted, or built in: its callers in turn.
                    if seen.insert(caller) {
                        queue.push(caller);
                    }
                    continue;
                };
                let rule = old_rules
                    .entry(line)
                    .or_insert_with(|| old_rule(line, s.table, family).map(|r| canonical(&r)));
                let kept = rule.as_ref().is_some_and(|rule| {
                    new_rules
                        .entry(x)
                        .or_insert_with(|| {
                            let rules = s.rules.get(written[x]).into_iter().flatten();
                            rules.map(|(_, r)| canonical(r)).collect()
                        })
                        .contains(rule)
                });
                if kept {
                    if seen.insert(caller) {
                        queue.push(caller);
                    }
                } else {
                    let (a, b) = (root(&mut parent, y), root(&mut parent, x));
                    parent[a] = b;
                }
            }
        }
    }
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for i in 0..written.len() {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().push(i);
    }
    let mut out: Vec<Vec<usize>> = groups.into_values().filter(|g| g.len() > 1).collect();
    out.sort_unstable();
    out
}

/// One old `-A` line read as a rule (`None` if it does not parse: then no new
/// rule is taken as the same).
fn old_rule(line: &str, table: Table, family: IpFamily) -> Option<Rule> {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = restore::open_table(&mut text, table);
    push_line(&mut text, line);
    let _ = restore::commit(&mut text);
    let parsed = parse_restore_as(&text, family).ok()?;
    parsed
        .tables
        .into_iter()
        .next()?
        .ops
        .into_iter()
        .find_map(|o| match o.op {
            Op::Append { rule, .. } => Some(rule),
            _ => None,
        })
}

/// What the tables held before a payload, as [`pieces_over`] reads it.
struct Before<'b> {
    tables: Vec<(Table, TableBefore<'b>)>,
}

/// One table of [`Before`]: the chains declared, and the `-A` lines that jump to
/// a chain, by that chain (a jump to a chain ends its line: `-j NAME`).
#[derive(Default)]
struct TableBefore<'b> {
    declared: HashSet<&'b str>,
    into: HashMap<&'b str, Vec<(&'b str, &'b str)>>,
}

impl<'b> Before<'b> {
    /// Reads `text` line by line, without parsing a rule: the lines that matter
    /// are parsed when a walk reaches them.
    fn new(text: &'b str) -> Self {
        let mut tables: Vec<(Table, TableBefore<'b>)> = Vec::new();
        let mut current: Option<usize> = None;
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('*') {
                current = name.trim().parse::<Table>().ok().map(|table| {
                    match tables.iter().position(|(t, _)| *t == table) {
                        Some(i) => i,
                        None => {
                            tables.push((table, TableBefore::default()));
                            tables.len() - 1
                        }
                    }
                });
                continue;
            }
            let Some(i) = current else { continue };
            let old = &mut tables[i].1;
            if let Some(declared) = line.strip_prefix(':') {
                if let Some(name) = declared.split(' ').next() {
                    old.declared.insert(name);
                }
            } else if let Some(rest) = line.strip_prefix("-A ")
                && let Some((chain, _)) = rest.split_once(' ')
                && let Some((head, target)) = rest.trim_end().rsplit_once(' ')
                && (head.ends_with(" -j") || head.ends_with(" -g"))
            {
                old.into.entry(target).or_default().push((chain, line));
            }
        }
        Before { tables }
    }

    fn table(&self, table: Table) -> Option<&TableBefore<'b>> {
        self.tables
            .iter()
            .find(|(t, _)| *t == table)
            .map(|(_, b)| b)
    }
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

    /// The chains each piece declares.
    fn declared(pieces: &[String]) -> Vec<Vec<&str>> {
        pieces
            .iter()
            .map(|p| {
                p.lines()
                    .filter_map(|l| l.strip_prefix(':')?.split(' ').next())
                    .collect()
            })
            .collect()
    }

    /// What the kernel held: KUBE-SERVICES sends the cluster IP to KUBE-SVC-H
    /// (in `iptables-save`'s words), which sends it to KUBE-SEP-A.
    const BEFORE: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n\
        :KUBE-SVC-H - [0:0]\n:KUBE-SEP-A - [0:0]\n\
        -A PREROUTING -j KUBE-SERVICES\n\
        -A KUBE-SERVICES -d 172.30.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-H\n\
        -A KUBE-SVC-H -j KUBE-SEP-A\n\
        -A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination 10.1.0.1:80\nCOMMIT\n";

    /// Over [`BEFORE`]: the cluster IP moves to KUBE-SVL-H (a traffic policy
    /// turned `Local`); KUBE-SVC-H is rewritten for other traffic.
    const TURNED_LOCAL: &str = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-H - [0:0]\n:KUBE-SVL-H - [0:0]\n:KUBE-SEP-B - [0:0]\n\
        -A KUBE-SERVICES -m tcp -p tcp -d 172.30.0.1 --dport 80 -j KUBE-SVL-H\n\
        -A KUBE-SERVICES -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-SVC-H\n\
        -A KUBE-SVC-H -j KUBE-SEP-B\n\
        -A KUBE-SVL-H -j KUBE-SEP-A\n\
        -A KUBE-SEP-B -m tcp -p tcp -j DNAT --to-destination 10.1.0.2:80\nCOMMIT\n";

    #[test]
    fn a_chain_whose_callers_change_goes_in_with_them() {
        // The cluster IP moves to KUBE-SVL-H; KUBE-SVC-H is rewritten for
        // other traffic. Its old caller must not send the cluster IP into it.
        let got = pieces_over(TURNED_LOCAL, BEFORE, IpFamily::Ipv4, 1).unwrap();
        assert_eq!(
            declared(&got),
            [
                vec!["KUBE-SVL-H"],
                vec!["KUBE-SEP-B"],
                vec!["KUBE-SERVICES", "KUBE-SVC-H"],
            ]
        );
        // Knowing nothing of the tables before, nothing is grouped.
        assert_eq!(
            declared(&pieces(TURNED_LOCAL, IpFamily::Ipv4, 1).unwrap()).len(),
            4
        );
    }

    #[test]
    fn a_chain_whose_callers_stay_goes_alone() {
        // KUBE-SVC-H gets another endpoint; KUBE-SERVICES is rewritten for
        // another service but sends the cluster IP to KUBE-SVC-H as before
        // (in svcnat's words rather than iptables-save's: the same rule).
        let payload = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-H - [0:0]\n:KUBE-SEP-B - [0:0]\n\
            -A KUBE-SERVICES -m tcp -p tcp -d 172.30.0.1 --dport 80 -j KUBE-SVC-H\n\
            -A KUBE-SERVICES -m tcp -p tcp -d 172.30.0.2 --dport 80 -j RETURN\n\
            -A KUBE-SVC-H -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-A\n\
            -A KUBE-SVC-H -j KUBE-SEP-B\n\
            -A KUBE-SEP-B -m tcp -p tcp -j DNAT --to-destination 10.1.0.2:80\nCOMMIT\n";
        let got = pieces_over(payload, BEFORE, IpFamily::Ipv4, 1).unwrap();
        assert_eq!(
            declared(&got),
            [
                vec!["KUBE-SEP-B"],
                vec!["KUBE-SVC-H"],
                vec!["KUBE-SERVICES"]
            ]
        );
    }

    #[test]
    fn callers_are_found_through_chains_left_as_they_are_and_deleted_ones() {
        // Before: KUBE-SERVICES -> KUBE-FW-H -> KUBE-EXT-H -> KUBE-SVC-H. The
        // source ranges go (KUBE-FW-H deleted), KUBE-EXT-H stays as it is,
        // KUBE-SVC-H changes: its old callers reach it through KUBE-EXT-H and
        // KUBE-FW-H from a rule of KUBE-SERVICES the new one does not have.
        let before = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-FW-H - [0:0]\n:KUBE-EXT-H - [0:0]\n:KUBE-SVC-H - [0:0]\n\
            -A KUBE-SERVICES -d 1.2.3.4/32 -p tcp -m tcp --dport 80 -j KUBE-FW-H\n\
            -A KUBE-FW-H -s 203.0.113.0/25 -j KUBE-EXT-H\n\
            -A KUBE-EXT-H -j KUBE-SVC-H\n\
            -A KUBE-SVC-H -j KUBE-SEP-A\nCOMMIT\n";
        let payload = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-H - [0:0]\n:KUBE-SEP-B - [0:0]\n:KUBE-FW-H - [0:0]\n\
            -A KUBE-SERVICES -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-EXT-H\n\
            -A KUBE-SVC-H -j KUBE-SEP-B\n\
            -A KUBE-SEP-B -m tcp -p tcp -j DNAT --to-destination 10.1.0.2:80\n\
            -X KUBE-FW-H\nCOMMIT\n";
        let got = pieces_over(payload, before, IpFamily::Ipv4, 1).unwrap();
        assert_eq!(
            declared(&got),
            [
                vec!["KUBE-SEP-B"],
                vec!["KUBE-SERVICES", "KUBE-SVC-H"],
                vec!["KUBE-FW-H"],
                vec![],
            ]
        );
    }

    /// A first sync's payload: ten service chains, each with one endpoint,
    /// and `KUBE-SERVICES` jumping to each.
    fn ten_services() -> String {
        let mut p = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
        for i in 0..10 {
            p.push_str(&format!(":KUBE-SVC-{i} - [0:0]\n:KUBE-SEP-{i} - [0:0]\n"));
        }
        for i in 0..10 {
            p.push_str(&format!(
                "-A KUBE-SERVICES -d 172.30.0.{i}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i}\n\
                 -A KUBE-SVC-{i} -j KUBE-SEP-{i}\n\
                 -A KUBE-SEP-{i} -p tcp -m tcp -j DNAT --to-destination 10.1.0.{i}:80\n"
            ));
        }
        p.push_str("COMMIT\n");
        p
    }

    #[test]
    fn a_large_new_chain_goes_in_parts_after_what_it_jumps_to() {
        let payload = ten_services();
        let empty = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j DOCKER\nCOMMIT\n";
        // Pieces of one chain: parts of four rules.
        let got = pieces_over(&payload, empty, IpFamily::Ipv4, 1).unwrap();
        let services: Vec<&String> = got
            .iter()
            .filter(|p| p.contains("-A KUBE-SERVICES"))
            .collect();
        let rules = |p: &str| p.lines().filter(|l| l.starts_with("-A ")).count();
        assert_eq!(
            services.iter().map(|p| rules(p)).collect::<Vec<_>>(),
            [4, 4, 2]
        );
        // Only the first part declares (flushes) it; each holds nothing else.
        assert!(services[0].contains(":KUBE-SERVICES - [0:0]"));
        for part in &services[1..] {
            assert!(!part.contains(':'), "{part}");
        }
        // The parts come last, in order, after every chain they jump to.
        assert_eq!(got.len(), 20 + 3);
        let parts: Vec<&str> = got[20..]
            .iter()
            .flat_map(|p| p.lines())
            .filter(|l| l.starts_with("-A "))
            .collect();
        let whole: Vec<&str> = payload
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .collect();
        assert_eq!(parts, whole);
        // Not known to be new, it is written whole: with nothing known of the
        // tables, or when they hold it already.
        let had = "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n";
        for before in ["", had] {
            let got = pieces_over(&payload, before, IpFamily::Ipv4, 1).unwrap();
            let services: Vec<&String> = got
                .iter()
                .filter(|p| p.contains("-A KUBE-SERVICES"))
                .collect();
            assert_eq!(services.len(), 1, "{before}");
            assert_eq!(rules(services[0]), 10);
        }
    }

    #[test]
    fn a_chain_an_earlier_section_wrote_is_not_new() {
        // Written in a first nat section, then again in a second one: by then
        // it exists, and its callers from the first section reach it.
        let first = ten_services();
        let payload = format!("{first}{first}");
        let empty = "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n";
        let got = pieces_over(&payload, empty, IpFamily::Ipv4, 1).unwrap();
        let declaring: Vec<usize> = got
            .iter()
            .enumerate()
            .filter(|(_, p)| p.contains(":KUBE-SERVICES"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(declaring.len(), 2);
        let rules = |p: &str| p.matches("-A KUBE-SERVICES").count();
        // The first time in parts, the second whole.
        assert_eq!(rules(&got[declaring[0]]), 4);
        assert_eq!(rules(&got[declaring[1]]), 10);
    }

    #[test]
    fn each_chain_is_declared_just_before_its_rules() {
        let got = pieces(&ten_services(), IpFamily::Ipv4, 4).unwrap();
        for piece in &got {
            let mut declared: Vec<&str> = Vec::new();
            for line in piece.lines() {
                if let Some(d) = line.strip_prefix(':') {
                    declared.push(d.split(' ').next().unwrap());
                } else if let Some(rule) = line.strip_prefix("-A ") {
                    let chain = rule.split(' ').next().unwrap();
                    assert_eq!(declared.last(), Some(&chain), "{piece}");
                }
            }
        }
        // A group (a chain rewritten in place with its callers) keeps its
        // declarations first: its members may jump to each other either way.
        let got = pieces_over(TURNED_LOCAL, BEFORE, IpFamily::Ipv4, 1).unwrap();
        assert!(got[2].starts_with("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-H - [0:0]\n-A "));
    }

    #[test]
    fn a_table_written_twice_is_cut_section_by_section() {
        let payload = "*filter\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d 10.0.0.1/32 -j DROP\nCOMMIT\n\
            *nat\n:KUBE-SEP-A - [0:0]\n:KUBE-SVC-A - [0:0]\n\
            -A KUBE-SVC-A -j KUBE-SEP-A\n-A KUBE-SEP-A -j DNAT --to-destination 10.1.0.1:80\nCOMMIT\n\
            *filter\n:KUBE-SERVICES - [0:0]\nCOMMIT\n";
        let got = pieces(payload, IpFamily::Ipv4, 1).unwrap();
        assert_eq!(
            declared(&got),
            [
                vec!["KUBE-SERVICES"],
                vec!["KUBE-SEP-A"],
                vec!["KUBE-SVC-A"],
                vec!["KUBE-SERVICES"],
            ]
        );
        assert!(got[0].starts_with("*filter\n") && got[3].starts_with("*filter\n"));
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

    /// Comments turned off over tables written with them: every caller's rule
    /// into a `KUBE-SVC-` loses only its comment, which groups nothing, so the
    /// 2,000 service chains are not sent in one restore with `KUBE-SERVICES`.
    #[cfg(feature = "synthetic")]
    #[test]
    fn callers_that_only_lose_their_comments_group_nothing() {
        use crate::synthetic::{Spec, config};
        let state = Spec::new(2000, 2).build();
        let text = |comments: bool| {
            let ruleset = crate::compile::compile(&state, &config().with_comments(comments));
            crate::render::to_string(&ruleset.unwrap())
        };
        let (before, payload) = (text(true), text(false));
        let got = pieces_over(&payload, &before, IpFamily::Ipv4, 100).unwrap();
        let largest = declared(&got).iter().map(Vec::len).max().unwrap();
        assert!(
            got.len() > 40 && largest <= 100,
            "{} pieces, largest {largest}",
            got.len()
        );
    }
}
