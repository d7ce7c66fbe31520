//! The nftables sync plan: from what the kernel holds after the last sync and the
//! next ruleset, the transactions that take the table from one to the other, as
//! kube-proxy's nftables proxier does (`syncProxyRules` in
//! `pkg/proxy/nftables/proxier.go` at kubernetes commit
//! 531be81208e2274ef42e72525a26610a9622bcdf), and sending less where it can.
//! Pure: values in, values out; the clock is an argument.
//!
//! An incremental plan ([`nft_plan`] with what was applied):
//!
//! - **elements** of every set and map are diffed against what was applied:
//!   new ones added, changed ones (another verdict or comment) deleted and added,
//!   leftovers deleted;
//! - **chains** whose rules changed (or that are new) are written whole: `add
//!   chain`, `flush chain`, their rules. kube-proxy rewrites every chain of a
//!   service that changed; here a chain is left out unless its own rules changed
//!   (an endpoint added to a service rewrites the service's chain and the new
//!   endpoint's, not the other endpoints'). A base chain whose type, hook or
//!   priority changed is deleted and added again (the kernel cannot change it in
//!   place);
//! - **stale chains** (applied, no longer wanted) are flushed, and deleted by a
//!   later plan at least [`STALE_CHAIN_AGE`] later, in a transaction of their own
//!   that runs first ([`NftPlan::delete_stale`]): kernels before 6.2 notice late
//!   that a map element no longer goes to a chain, and refuse its deletion until
//!   then. A stale chain wanted again is written again instead of deleted;
//! - **sets and maps** no longer wanted (a service's affinity sets) are deleted
//!   at once, after the chains whose rules used them are flushed or rewritten;
//!   new ones are added before any rule uses them. A set's elements added by the
//!   kernel (`update @set`) are never touched: only elements of the rulesets are
//!   diffed.
//!
//! The [`NftSyncer`](super::NftSyncer) makes the same incremental plan from the
//! chains, sets and elements its incremental compile changed, without walking
//! either table (`delta_plan`; both go through one writer of the changes).
//!
//! A full plan ([`nft_full_plan`], or [`nft_plan`] with nothing applied) writes
//! the whole table over whatever is there: `add table`, each base chain added,
//! deleted and added again (so a changed hook or priority applies, as kube-proxy
//! does on its first sync), every chain written whole, the maps and the sets
//! that are not dynamic flushed and filled again (dynamic sets keep the affinity
//! the kernel recorded), and, given a listing of what the table holds, the chains
//! it does not want flushed as stale and its sets and maps deleted.
//!
//! The main transaction lists its operations in this order: sets and maps added,
//! chains added and flushed, rules, element changes, stale chains flushed, sets
//! and maps deleted; so a rule or element is written after the chain, set or map
//! it names. Each set's, map's and chain's operations follow the next ruleset's
//! order, and objects go by name: the same inputs give the same transactions.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::compile::incremental::{NftDelta, NftTable};
use crate::nft::{Chain, Map, Name, Operation, Ruleset, Set, SetFlag, Transaction};

/// How long a flushed chain waits before a plan deletes it: kube-proxy's one
/// second, for kernels before 6.2.
pub const STALE_CHAIN_AGE: Duration = Duration::from_secs(1);

/// Chains a sync flushed and a later one is to delete, with when each was
/// flushed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaleChains {
    flushed: BTreeMap<Name, Instant>,
}

impl StaleChains {
    /// None.
    pub fn new() -> Self {
        StaleChains::default()
    }

    /// The chains, by name.
    pub fn names(&self) -> impl Iterator<Item = &Name> {
        self.flushed.keys()
    }

    /// When `chain` was flushed, if it is stale.
    pub fn flushed_at(&self, chain: &Name) -> Option<Instant> {
        self.flushed.get(chain).copied()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.flushed.len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.flushed.is_empty()
    }
}

/// What the kernel holds after a sync whose transactions all succeeded: the
/// ruleset applied, and the chains flushed and not yet deleted (empty, in the
/// same table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftApplied {
    /// The ruleset the sync applied.
    pub ruleset: Ruleset,
    /// The stale chains.
    pub stale: StaleChains,
}

/// What a table holds, as an [`NftExecutor`](crate::exec::NftExecutor) lists it:
/// the names of its chains, sets and maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftListed {
    /// The chains.
    pub chains: Vec<Name>,
    /// The sets.
    pub sets: Vec<Name>,
    /// The maps.
    pub maps: Vec<Name>,
}

/// The transactions of one sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftPlan {
    /// Deletes the stale chains flushed at least [`STALE_CHAIN_AGE`] ago, if
    /// any: run it first, on its own. If it is refused, the next sync should be
    /// a full one (as in kube-proxy): the chains are still there, flushed, and a
    /// full plan finds them in the listing.
    pub delete_stale: Option<Transaction>,
    /// The sync itself; it may be empty (nothing changed).
    pub transaction: Transaction,
    /// The stale chains once both transactions succeeded: those not deleted yet,
    /// and those the transaction flushes (flushed at `now`).
    pub stale: StaleChains,
    /// True for a full plan.
    pub full: bool,
}

impl NftPlan {
    /// What the kernel holds once both transactions succeeded, `next` being the
    /// ruleset the plan was made for.
    pub fn applied(&self, next: Ruleset) -> NftApplied {
        NftApplied {
            ruleset: next,
            stale: self.stale.clone(),
        }
    }
}

/// The plan that takes the kernel from `applied` (what the last successful sync
/// left; `None` for a first sync, or after a failure) to `next`, at `now`.
/// Without `applied`, or if it is another table, the plan is a full one that
/// lists nothing ([`nft_full_plan`] without a listing).
pub fn nft_plan(applied: Option<&NftApplied>, next: &Ruleset, now: Instant) -> NftPlan {
    match applied {
        Some(a) if a.ruleset.family == next.family && a.ruleset.table == next.table => {
            incremental(a, next, now)
        }
        _ => nft_full_plan(next, None, now),
    }
}

/// The plan that writes `next` whole over whatever its table holds (see the
/// module's docs). With `listed` (what the table holds now), the chains it does
/// not want are flushed and become stale (flushed at `now`), and its sets and
/// maps are deleted; without, nothing it does not name is touched.
pub fn nft_full_plan(next: &Ruleset, listed: Option<&NftListed>, now: Instant) -> NftPlan {
    let mut tx = Transaction::new(next.family, next.table.clone());
    tx.push(Operation::AddTable {
        comment: next.comment.clone(),
    });
    for (name, _) in by_name(&next.chains).filter(|(_, c)| c.base.is_some()) {
        tx.push(Operation::AddChain {
            name: name.clone(),
            base: None,
            comment: None,
        });
        tx.push(Operation::DeleteChain(name.clone()));
    }
    for (name, set) in by_name(&next.sets) {
        tx.push(Operation::add_set(name, set));
        if !set.flags.contains(&SetFlag::Dynamic) {
            tx.push(Operation::FlushSet(name.clone()));
        }
    }
    for (name, map) in by_name(&next.maps) {
        tx.push(Operation::add_map(name, map));
        tx.push(Operation::FlushMap(name.clone()));
    }
    let chains: Vec<(&Name, &Chain)> = by_name(&next.chains).collect();
    write_chains(&mut tx, &chains);
    for (name, set) in by_name(&next.sets) {
        tx.extend(set.elements.iter().map(|element| Operation::AddElement {
            set: name.clone(),
            element: element.clone(),
        }));
    }
    for (name, map) in by_name(&next.maps) {
        tx.extend(map.elements.iter().map(|element| Operation::AddMapElement {
            map: name.clone(),
            element: element.clone(),
        }));
    }
    let mut stale = StaleChains::new();
    if let Some(listed) = listed {
        for chain in sorted(&listed.chains) {
            if !next.chains.contains_key(chain) {
                tx.push(Operation::FlushChain(chain.clone()));
                stale.flushed.insert(chain.clone(), now);
            }
        }
        for set in sorted(&listed.sets) {
            if !next.sets.contains_key(set) {
                tx.push(Operation::DeleteSet(set.clone()));
            }
        }
        for map in sorted(&listed.maps) {
            if !next.maps.contains_key(map) {
                tx.push(Operation::DeleteMap(map.clone()));
            }
        }
    }
    NftPlan {
        delete_stale: None,
        transaction: tx,
        stale,
        full: true,
    }
}

fn incremental(applied: &NftApplied, next: &Ruleset, now: Instant) -> NftPlan {
    let old = &applied.ruleset;
    let mut changes = NftChanges::default();
    for (name, set) in &next.sets {
        if !old.sets.get(name).is_some_and(|o| same_set(o, set)) {
            changes.sets.push((name, set));
        }
    }
    for (name, map) in &next.maps {
        let same = old
            .maps
            .get(name)
            .is_some_and(|o| (&o.key, &o.comment) == (&map.key, &map.comment));
        if !same {
            changes.maps.push((name, map));
        }
    }
    let (changed, gone) = chain_changes(old, next);
    changes.chains = changed
        .into_iter()
        .map(|(name, chain)| {
            // The kernel cannot change a base chain's type, hook or priority, nor
            // make a chain a base chain or the reverse: delete it first.
            let recreate = old.chains.get(name).is_some_and(|o| o.base != chain.base);
            (name, chain, recreate)
        })
        .collect();
    changes.gone_chains = gone;
    for (name, set) in by_name(&next.sets) {
        let before = old.sets.get(name).map_or(&[][..], |o| &o.elements);
        diff_elements(
            &mut changes.elements,
            name,
            before,
            &set.elements,
            |e| &e.key,
            |e| Operation::AddElement {
                set: name.clone(),
                element: e.clone(),
            },
        );
    }
    for (name, map) in by_name(&next.maps) {
        let before = old.maps.get(name).map_or(&[][..], |o| &o.elements);
        diff_elements(
            &mut changes.elements,
            name,
            before,
            &map.elements,
            |e| &e.key,
            |e| Operation::AddMapElement {
                map: name.clone(),
                element: e.clone(),
            },
        );
    }
    changes.gone_sets = old
        .sets
        .keys()
        .filter(|n| !next.sets.contains_key(*n))
        .collect();
    changes.gone_maps = old
        .maps
        .keys()
        .filter(|n| !next.maps.contains_key(*n))
        .collect();
    changes.plan(&applied.stale, next, now)
}

/// True if a set written as `next` leaves `old` as it is (its elements aside).
pub(crate) fn same_set(old: &Set, next: &Set) -> bool {
    (&old.key, &old.flags, old.timeout, &old.comment)
        == (&next.key, &next.flags, next.timeout, &next.comment)
}

/// What differs between the table the kernel holds and the next one, object by
/// object: what an incremental plan writes. A sync that knows what changed
/// fills it without walking either table ([`NftChanges::plan`] sorts what it
/// needs to).
#[derive(Debug, Default)]
pub(crate) struct NftChanges<'a> {
    /// Sets new, or whose type, flags, timeout or comment changed.
    pub sets: Vec<(&'a Name, &'a Set)>,
    /// Maps new, or whose type or comment changed.
    pub maps: Vec<(&'a Name, &'a Map)>,
    /// Chains new or with other rules, each with whether the kernel's must be
    /// deleted first (its base changed).
    pub chains: Vec<(&'a Name, &'a Chain, bool)>,
    /// The element operations, in the order they are to run.
    pub elements: Vec<Operation>,
    /// Chains no longer wanted.
    pub gone_chains: Vec<&'a Name>,
    /// Sets no longer wanted.
    pub gone_sets: Vec<&'a Name>,
    /// Maps no longer wanted.
    pub gone_maps: Vec<&'a Name>,
}

impl NftChanges<'_> {
    /// The incremental plan of these changes, `stale` being the chains the
    /// kernel holds flushed and `next` the table (only asked whether it has a
    /// chain): see the module's docs.
    pub(crate) fn plan(
        mut self,
        stale_before: &StaleChains,
        next: &Ruleset,
        now: Instant,
    ) -> NftPlan {
        let (family, table) = (next.family, &next.table);
        // Stale chains old enough go first, in a transaction of their own; those
        // wanted again are written again below instead.
        let mut stale = StaleChains::new();
        let mut delete = Transaction::new(family, table.clone());
        for (chain, &at) in &stale_before.flushed {
            if next.chains.contains_key(chain) {
                continue;
            }
            if now.saturating_duration_since(at) >= STALE_CHAIN_AGE {
                delete.push(Operation::DeleteChain(chain.clone()));
            } else {
                stale.flushed.insert(chain.clone(), at);
            }
        }

        let mut tx = Transaction::new(family, table.clone());
        self.sets.sort_by(|a, b| a.0.cmp(b.0));
        for (name, set) in &self.sets {
            tx.push(Operation::add_set(name, set));
        }
        self.maps.sort_by(|a, b| a.0.cmp(b.0));
        for (name, map) in &self.maps {
            tx.push(Operation::add_map(name, map));
        }
        self.chains.sort_by(|a, b| a.0.cmp(b.0));
        for (name, _, recreate) in &self.chains {
            if *recreate {
                tx.push(Operation::DeleteChain((*name).clone()));
            }
        }
        let chains: Vec<(&Name, &Chain)> = self.chains.iter().map(|(n, c, _)| (*n, *c)).collect();
        write_chains(&mut tx, &chains);
        tx.extend(self.elements);
        self.gone_chains.sort();
        for name in self.gone_chains {
            tx.push(Operation::FlushChain(name.clone()));
            stale.flushed.insert(name.clone(), now);
        }
        self.gone_sets.sort();
        tx.extend(
            self.gone_sets
                .into_iter()
                .map(|n| Operation::DeleteSet(n.clone())),
        );
        self.gone_maps.sort();
        tx.extend(
            self.gone_maps
                .into_iter()
                .map(|n| Operation::DeleteMap(n.clone())),
        );

        NftPlan {
            delete_stale: (!delete.is_empty()).then_some(delete),
            transaction: tx,
            stale,
            full: false,
        }
    }
}

/// The chains of `next` that differ from `old`'s (or are new), and the chains of
/// `old` that `next` has not. Both tables are walked side by side, names compared
/// as they come: a compiled table keeps its order from one sync to the next, so
/// a name is looked up only where the two differ, and a plan at 110,000 chains
/// costs a walk, not 220,000 hash lookups (30 ms each way, measured). Any order
/// gives the same answer.
fn chain_changes<'a>(
    old: &'a Ruleset,
    next: &'a Ruleset,
) -> (Vec<(&'a Name, &'a Chain)>, Vec<&'a Name>) {
    let (mut changed, mut gone) = (Vec::new(), Vec::new());
    let gone_between = |from: usize, to: usize, gone: &mut Vec<&'a Name>| {
        for i in from..to {
            if let Some((name, _)) = old.chains.get_index(i)
                && !next.chains.contains_key(name)
            {
                gone.push(name);
            }
        }
    };
    // old's chains before `j` are matched with next's or known to be gone.
    let mut j = 0;
    for (name, chain) in &next.chains {
        let before = match old.chains.get_index(j) {
            Some((n, c)) if n == name => {
                j += 1;
                Some(c)
            }
            _ => match old.chains.get_full(name) {
                Some((k, _, c)) => {
                    if k >= j {
                        gone_between(j, k, &mut gone);
                        j = k + 1;
                    }
                    Some(c)
                }
                None => None,
            },
        };
        if before != Some(chain) {
            changed.push((name, chain));
        }
    }
    gone_between(j, old.chains.len(), &mut gone);
    (changed, gone)
}

/// Writes `chains` whole: each added and flushed first, then the rules of each,
/// so a rule that jumps to another of them finds it.
fn write_chains(tx: &mut Transaction, chains: &[(&Name, &Chain)]) {
    for (name, chain) in chains {
        tx.push(Operation::add_chain(name, chain));
        tx.push(Operation::FlushChain((*name).clone()));
    }
    for (name, chain) in chains {
        tx.add_rules(name, &chain.rules);
    }
}

/// The element operations from `before` to `after` in one set or map: in
/// `after`'s order, each new element added and each changed one (same key,
/// another verdict or comment) deleted and added; then, in `before`'s order,
/// each leftover deleted.
fn diff_elements<E: PartialEq>(
    tx: &mut Vec<Operation>,
    set: &Name,
    before: &[E],
    after: &[E],
    key: impl Fn(&E) -> &Vec<crate::nft::KeyValue>,
    add: impl Fn(&E) -> Operation,
) {
    // What the two have the same at either end is left alone (a key is in a
    // set once, so those keys are nowhere else in either): a compiled set keeps
    // its order, and a change is in the middle.
    let prefix = before.iter().zip(after).take_while(|(b, a)| b == a).count();
    let (before, after) = (&before[prefix..], &after[prefix..]);
    let suffix = before
        .iter()
        .rev()
        .zip(after.iter().rev())
        .take_while(|(b, a)| b == a)
        .count();
    let (before, after) = (
        &before[..before.len() - suffix],
        &after[..after.len() - suffix],
    );
    let delete = |e: &E| Operation::DeleteElement {
        set: set.clone(),
        key: key(e).clone(),
    };
    let old: HashMap<&Vec<crate::nft::KeyValue>, &E> = before.iter().map(|e| (key(e), e)).collect();
    let mut kept = 0usize;
    for e in after {
        match old.get(key(e)) {
            Some(o) if *o == e => kept += 1,
            Some(o) => {
                kept += 1;
                tx.push(delete(o));
                tx.push(add(e));
            }
            None => tx.push(add(e)),
        }
    }
    if kept < before.len() {
        let new: HashMap<&Vec<crate::nft::KeyValue>, ()> =
            after.iter().map(|e| (key(e), ())).collect();
        tx.extend(
            before
                .iter()
                .filter(|e| !new.contains_key(key(e)))
                .map(delete),
        );
    }
}

/// A map's entries, by name.
fn by_name<V>(objects: &indexmap::IndexMap<Name, V>) -> impl Iterator<Item = (&Name, &V)> {
    let mut all: Vec<(&Name, &V)> = objects.iter().collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    all.into_iter()
}

/// Names, sorted.
fn sorted(names: &[Name]) -> Vec<&Name> {
    let mut all: Vec<&Name> = names.iter().collect();
    all.sort();
    all
}

/// The incremental plan of one [`NftTable::update`]: `applied` is what the kernel
/// holds, its ruleset already changed in place by the update into the next one,
/// `delta` what the update changed. The same plan as [`nft_plan`] from the
/// ruleset before the update to the one after, made from the changed objects
/// alone.
pub(crate) fn delta_plan(
    table: &NftTable,
    delta: &NftDelta,
    applied: &NftApplied,
    now: Instant,
) -> NftPlan {
    let next = &applied.ruleset;
    let mut changes = NftChanges::default();
    for (name, before) in &delta.chains {
        match next.chains.get_key_value(name) {
            Some((name, chain)) if before.as_ref() != Some(chain) => {
                let recreate = before.as_ref().is_some_and(|o| o.base != chain.base);
                changes.chains.push((name, chain, recreate));
            }
            Some(_) => {}
            None if before.is_some() => changes.gone_chains.push(name),
            None => {}
        }
    }
    for (name, before) in &delta.sets {
        match next.sets.get_key_value(name) {
            Some((name, set)) if !before.as_ref().is_some_and(|o| same_set(o, set)) => {
                changes.sets.push((name, set));
            }
            Some(_) => {}
            None if before.is_some() => changes.gone_sets.push(name),
            None => {}
        }
    }
    changes.elements = table.element_operations(delta, next);
    changes.plan(&applied.stale, next, now)
}

/// The chains `delta` names, as the table held them before the update and as it
/// holds them after (`next`): all [`NftPlan::pieces`] reads of the two tables
/// for the plan of the change.
pub(crate) fn delta_chains(delta: &NftDelta, next: &Ruleset) -> (Ruleset, Ruleset) {
    let empty = || Ruleset::new(next.family, next.table.clone(), next.comment.clone());
    let (mut before, mut after) = (empty(), empty());
    for (name, old) in &delta.chains {
        if let Some(old) = old {
            before.chains.insert(name.clone(), old.clone());
        }
        if let Some(chain) = next.chains.get(name) {
            after.chains.insert(name.clone(), chain.clone());
        }
    }
    (before, after)
}
