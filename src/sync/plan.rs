//! The restore payload: the chains a sync writes and deletes, and the text that
//! does it, built in one place for the [`plan`] function and the
//! [`Syncer`](super::Syncer).

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::compile::incremental::is_service_chain;
use crate::model::IpFamily;
use crate::ruleset::restore;
use crate::ruleset::{Chain, ChainName, Ruleset, Table};

/// A restore payload for one family, applied with `--noflush`: its text, and the
/// chains it writes and deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The family.
    pub family: IpFamily,
    /// True for a full sync (every chain written).
    pub full: bool,
    /// The chains written whole (declared, which flushes them, then their rules),
    /// nat before filter in a [`Syncer`](super::Syncer)'s payload. Its text may
    /// open with a filter section that is not listed here: the filter rules the
    /// sync holds while nat changes, written again by the filter section at its
    /// end.
    pub written: Vec<(Table, ChainName)>,
    /// The chains flushed and deleted.
    pub deleted: Vec<(Table, ChainName)>,
    pub(super) text: String,
}

impl Payload {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty() && self.deleted.is_empty()
    }

    /// The number of chains written.
    pub fn chains_written(&self) -> usize {
        self.written.len()
    }

    /// The number of chains deleted.
    pub fn chains_deleted(&self) -> usize {
        self.deleted.len()
    }

    /// The `iptables-restore` text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Writes the `iptables-restore` text.
    ///
    /// # Errors
    /// Only those of the writer.
    pub fn write_fmt<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        out.write_str(&self.text)
    }

    /// The `iptables-restore` text, copied.
    pub fn to_text(&self) -> String {
        self.text.clone()
    }

    /// Puts `section` (a table's section, or nothing) before the text: the
    /// filter rules a [`Syncer`](super::Syncer) holds while nat changes.
    pub(super) fn put_first(&mut self, section: &str) {
        if !section.is_empty() {
            self.text.insert_str(0, section);
        }
    }
}

/// Builds a payload's text table by table: the chains written, each with its
/// `-A` lines already rendered, and the chains deleted.
#[derive(Default)]
pub(super) struct PayloadBuilder {
    written: Vec<(Table, ChainName)>,
    deleted: Vec<(Table, ChainName)>,
    text: String,
}

impl PayloadBuilder {
    /// Adds one table: `written` chains with their rule lines, `deleted` chains.
    pub(super) fn table<'a>(
        &mut self,
        table: Table,
        written: impl Iterator<Item = (&'a ChainName, &'a str)> + Clone,
        deleted: &[ChainName],
    ) {
        if written.clone().next().is_none() && deleted.is_empty() {
            return;
        }
        // Writing into a String cannot fail.
        let out = &mut self.text;
        let _ = restore::open_table(out, table);
        for (name, _) in written.clone() {
            let _ = restore::declare(out, name.as_str());
            self.written.push((table, name.clone()));
        }
        for name in deleted {
            let _ = restore::declare(out, name.as_str());
            self.deleted.push((table, name.clone()));
        }
        for (_, rules) in written {
            out.push_str(rules);
        }
        for name in deleted {
            let _ = restore::delete(out, name.as_str());
        }
        let _ = restore::commit(out);
    }

    pub(super) fn finish(self, family: IpFamily, full: bool) -> Payload {
        Payload {
            family,
            full,
            written: self.written,
            deleted: self.deleted,
            text: self.text,
        }
    }
}

/// `step` (a restore payload) without those of its lines `lines` (1-based) names
/// that delete a chain (`-X CHAIN`): the tables and chains they deleted, and the
/// rest of the text; `None` if no line named is a deletion. The chains'
/// declarations, which flush them, stay.
pub(super) fn without_deletes_at(
    step: &str,
    lines: &[usize],
) -> Option<(Vec<(Table, ChainName)>, String)> {
    let mut table = None;
    let mut removed = Vec::new();
    let mut rest = String::with_capacity(step.len());
    for (i, text) in step.split_inclusive('\n').enumerate() {
        if let Some(name) = text.strip_prefix('*') {
            table = name.trim_end().parse::<Table>().ok();
        }
        let deletion = lines
            .contains(&(i + 1))
            .then(|| text.trim_end().strip_prefix("-X "))
            .flatten()
            .and_then(|chain| Some((table?, ChainName::new(chain).ok()?)));
        match deletion {
            Some(deleted) => removed.push(deleted),
            None => rest.push_str(text),
        }
    }
    (!removed.is_empty()).then_some((removed, rest))
}

/// `payload` (a full sync's) without the nat chains the kernel already holds as
/// the payload writes them: `saved` is the kernel's nat table (`iptables-save -t
/// nat`), and a chain is left out when it is there with the same rules, in the
/// same order, after [`canonicalize`](crate::parse::canonicalize) on both sides.
/// Chains the payload deletes, and the filter table, stay as they are. `None`
/// when there is nothing to leave out, or either side does not parse (then every
/// chain is written).
///
/// For an executor that restores in pieces: on nft each restore that adds a jump
/// makes the kernel check every chain reachable from the built-in ones, so
/// rewriting 110,000 unchanged chains in 110 pieces costs most of a minute, while
/// this comparison costs about as much as one parse of the table.
pub(super) fn without_unchanged(payload: &Payload, saved: &str) -> Option<Payload> {
    use crate::parse::{canonicalize_in_place, declared_chains, parse_as};
    let family = payload.family;
    // The kernel holds none of the payload's nat chains (a first sync, a table
    // replaced): nothing can be left out, and neither side is parsed.
    let there: HashSet<ChainName> = declared_chains(saved)
        .filter(|(t, _)| *t == Table::Nat)
        .map(|(_, c)| c)
        .collect();
    if !payload
        .written
        .iter()
        .any(|(t, c)| *t == Table::Nat && there.contains(c))
    {
        return None;
    }
    let canonical = |mut ruleset: crate::ruleset::Ruleset| {
        canonicalize_in_place(&mut ruleset);
        ruleset
    };
    let ours = canonical(parse_as(&payload.text, family).ok()?);
    let kernel = canonical(parse_as(saved, family).ok()?);
    let (ours, kernel) = (ours.table(Table::Nat)?, kernel.table(Table::Nat));
    let deleted: HashSet<&ChainName> = payload
        .deleted
        .iter()
        .filter(|(t, _)| *t == Table::Nat)
        .map(|(_, c)| c)
        .collect();
    let unchanged: HashSet<&str> = ours
        .chains
        .values()
        .filter(|c| c.policy.is_none() && !deleted.contains(&c.name))
        .filter(|c| {
            kernel
                .and_then(|k| k.chain(c.name.as_str()))
                .is_some_and(|k| k.policy.is_none() && k.rules == c.rules)
        })
        .map(|c| c.name.as_str())
        .collect();
    if unchanged.is_empty() {
        return None;
    }
    // The chain a nat line declares or appends to, if any (a rule with no
    // match and no target, a load balancer's last `KUBE-FW-` rule with
    // comments off, is `-A CHAIN` and its line end).
    fn chain_of(line: &str) -> Option<&str> {
        line.strip_prefix(':')
            .or_else(|| line.strip_prefix("-A "))
            .and_then(|rest| rest.split_whitespace().next())
    }
    let mut text = String::with_capacity(payload.text.len());
    let mut in_nat = false;
    for line in payload.text.split_inclusive('\n') {
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table.trim_end() == Table::Nat.as_str();
        }
        let skip = in_nat && chain_of(line).is_some_and(|c| unchanged.contains(c));
        if !skip {
            text.push_str(line);
        }
    }
    Some(Payload {
        family,
        full: payload.full,
        written: payload
            .written
            .iter()
            .filter(|(t, c)| *t != Table::Nat || !unchanged.contains(c.as_str()))
            .cloned()
            .collect(),
        deleted: payload.deleted.clone(),
        text,
    })
}

/// The rule lines of a chain.
fn rules_text(chain: &Chain) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = restore::rules(&mut s, chain);
    s
}

/// Which chains to write and which to delete when one table's chains go from
/// `old` to `new`, each given as its rendered text: a chain is written when it is
/// new or its text changed, and one that is gone is deleted if svcnat owns it
/// (`KUBE-SVC-`, `KUBE-SEP-`, …). The one diff both [`plan`] and the
/// [`Syncer`](super::Syncer) make; written in `new`'s order, deleted in `old`'s.
pub(super) fn diff_chains<'a>(
    old: impl IntoIterator<Item = (&'a ChainName, &'a str)>,
    new: impl IntoIterator<Item = (&'a ChainName, &'a str)>,
) -> ChainDiff<'a> {
    let old: Vec<(&ChainName, &str)> = old.into_iter().collect();
    let before: HashMap<&ChainName, &str> = old.iter().copied().collect();
    let mut after: HashSet<&ChainName> = HashSet::new();
    let mut written = Vec::new();
    for (name, text) in new {
        after.insert(name);
        if before.get(name) != Some(&text) {
            written.push(name);
        }
    }
    let deleted = old
        .iter()
        .filter(|(name, _)| is_service_chain(name.as_str()) && !after.contains(name))
        .map(|(name, _)| (*name).clone())
        .collect();
    ChainDiff { written, deleted }
}

/// What [`diff_chains`] found.
pub(super) struct ChainDiff<'a> {
    /// The chains to write whole.
    pub written: Vec<&'a ChainName>,
    /// The chains to flush and delete.
    pub deleted: Vec<ChainName>,
}

/// A chain's text for [`diff_chains`]: its declaration (with a built-in chain's
/// policy) and its rule lines.
fn chain_text(chain: &Chain) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = restore::declaration(&mut s, chain);
    let _ = restore::rules(&mut s, chain);
    s
}

/// The payload that turns `previous` (what the kernel holds, `None` if unknown)
/// into `next`: each table's chains rendered and diffed as the [`Syncer`](super::Syncer)
/// diffs them (a chain is written when new or changed, deleted when gone and
/// svcnat owns it). Without a previous ruleset every chain is written (a full
/// sync).
pub fn plan(previous: Option<&Ruleset>, next: &Ruleset) -> Payload {
    let mut out = PayloadBuilder::default();
    for t in &next.tables {
        let before = previous.and_then(|p| p.table(t.table));
        let old: Vec<(&ChainName, String)> = before
            .iter()
            .flat_map(|b| b.chains.values())
            .map(|c| (&c.name, chain_text(c)))
            .collect();
        let new: Vec<(&ChainName, String)> = t
            .chains
            .values()
            .map(|c| (&c.name, chain_text(c)))
            .collect();
        let diff = diff_chains(
            old.iter().map(|(n, s)| (*n, s.as_str())),
            new.iter().map(|(n, s)| (*n, s.as_str())),
        );
        let written: Vec<(&ChainName, String)> = diff
            .written
            .iter()
            .filter_map(|name| t.chains.get(name.as_str()))
            .map(|c| (&c.name, rules_text(c)))
            .collect();
        out.table(
            t.table,
            written.iter().map(|(n, r)| (*n, r.as_str())),
            &diff.deleted,
        );
    }
    out.finish(next.family, previous.is_none())
}
