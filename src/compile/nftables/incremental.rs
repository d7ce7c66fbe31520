//! The nftables table kept from one sync to the next ([`NftTable`]): what the
//! [`NftSyncer`](crate::sync::NftSyncer) needs to recompile only the services
//! that changed and to keep the applied [`nft::Ruleset`] equal to what a whole
//! compile ([`nftables_lenient`](super::nftables_lenient)) of the same state
//! gives, changing it in place.
//!
//! A whole compile visits the services in key order; each adds its chains and
//! affinity sets, which are its own (their names hold its namespace and name),
//! and its entries of the shared set (`cluster-ips`) and maps, where the first
//! service to claim a key keeps it. So every service's part is kept here: the
//! names of its chains and sets, its entries in the order it emitted them, and,
//! per key of the shared set and maps, every service that claims it with the
//! index of its first claim. The first claimant (the smallest key) wins, and the
//! elements of a set or map are ordered by winner, then by the winner's index:
//! the order of a whole compile, which a binary search finds a place in.
//!
//! Changing one service takes its old entries' elements out, moves its claims,
//! and puts the winners of every key it touched back: its cost grows with the
//! service and the claims it shares, plus a copy within the element vectors
//! when an element moves, not with the table.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use super::fixed::{self, CLUSTER_IPS, MapId, NftContext};
use super::service::{self, ServiceObjects};
use crate::compile::Visit;
use crate::error::CompileError;
use crate::model::{ClusterState, ProxyConfig, ServiceKey};
use crate::nft::{self, Chain, Element, KeyValue, MapElement, Name, Operation, Set};

/// Where an element goes: `cluster-ips` (index 0) or one of the maps.
const TARGETS: usize = 1 + MapId::ALL.len();

fn map_target(map: MapId) -> usize {
    1 + MapId::ALL.iter().position(|m| *m == map).unwrap_or(0)
}

fn target_name(target: usize) -> &'static str {
    match target.checked_sub(1) {
        None => CLUSTER_IPS,
        Some(i) => MapId::ALL[i].name(),
    }
}

/// A claim's place in its set or map: the claiming service and the index of
/// its entry.
type Order = (ServiceKey, usize);

/// One valid service's part of the table.
#[derive(Debug, Default)]
struct Fragment {
    chains: Vec<Name>,
    sets: Vec<Name>,
    cluster_ips: Vec<IpAddr>,
    elements: Vec<(MapId, MapElement)>,
}

impl Fragment {
    /// Its entries, each key once (the first of a key, as a whole compile keeps
    /// it), as `(target, key, index)`.
    fn entries(&self) -> Vec<(usize, Vec<KeyValue>, usize)> {
        let mut seen = HashSet::new();
        let ips = self
            .cluster_ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (0, vec![KeyValue::Addr(*ip)], i));
        let maps = self
            .elements
            .iter()
            .enumerate()
            .map(|(i, (map, e))| (map_target(*map), e.key.clone(), i));
        ips.chain(maps)
            .filter(|(t, k, _)| seen.insert((*t, k.clone())))
            .collect()
    }

    /// The same entries as `other`'s: its claims and elements would not move.
    fn same_entries(&self, other: &Fragment) -> bool {
        self.cluster_ips == other.cluster_ips && self.elements == other.elements
    }
}

/// An element as it was or is in the table: its place and, for a map, its value
/// (a `cluster-ips` element is its key).
#[derive(Debug, Clone, PartialEq)]
struct Placed {
    order: Order,
    value: Option<MapElement>,
}

/// What one [`NftTable::update`] changed in the ruleset, with what was there
/// before: the chains and sets of the services it recompiled (`None`: new), and
/// the elements it touched.
#[derive(Debug, Default)]
pub(crate) struct NftDelta {
    /// Each chain touched, with what the table held before.
    pub chains: BTreeMap<Name, Option<Chain>>,
    /// Each set touched, with what the table held before.
    pub sets: BTreeMap<Name, Option<Set>>,
    /// Each element touched (by target and key), with what it was before.
    elements: HashMap<(usize, Vec<KeyValue>), Option<Placed>>,
}

/// The table as a whole compile would build it, kept service by service (see
/// the module's docs).
#[derive(Debug)]
pub(crate) struct NftTable {
    ctx: NftContext,
    services: HashMap<ServiceKey, Fragment>,
    /// Per target, per key: the claims, by service.
    claims: Vec<HashMap<Vec<KeyValue>, Vec<Order>>>,
    rejected: BTreeMap<ServiceKey, CompileError>,
    warnings: BTreeMap<ServiceKey, Vec<CompileError>>,
    objects: ServiceObjects,
}

impl NftTable {
    /// The whole table of `state`, as [`nftables_lenient`](super::nftables_lenient)
    /// compiles it, and what it takes to change it later.
    ///
    /// # Errors
    /// An invalid config.
    pub(crate) fn all(
        state: &ClusterState,
        config: &ProxyConfig,
    ) -> Result<(NftTable, nft::Ruleset), CompileError> {
        let ctx = NftContext::new(config)?;
        let mut ruleset = fixed::table(&ctx);
        let mut table = NftTable {
            ctx,
            services: HashMap::new(),
            claims: vec![HashMap::new(); TARGETS],
            rejected: BTreeMap::new(),
            warnings: BTreeMap::new(),
            objects: ServiceObjects::default(),
        };
        let keys: Vec<ServiceKey> = state.services_with_slices().map(|e| e.0.clone()).collect();
        for key in &keys {
            table.one(state, config, key, &mut ruleset, None);
        }
        Ok((table, ruleset))
    }

    /// Recompiles the services `keys` of `state` (changed, added or removed
    /// since the last call) into `ruleset`, the table [`NftTable::all`] or the
    /// last update left; `config` is the one `all` was given. Returns what it
    /// changed.
    pub(crate) fn update<'k>(
        &mut self,
        state: &ClusterState,
        config: &ProxyConfig,
        keys: impl IntoIterator<Item = &'k ServiceKey>,
        ruleset: &mut nft::Ruleset,
    ) -> NftDelta {
        let mut delta = NftDelta::default();
        for key in keys {
            self.one(state, config, key, ruleset, Some(&mut delta));
        }
        delta
    }

    /// The services left out, each with its error, in key order: those a whole
    /// compile of the state rejects.
    pub(crate) fn rejected(&self) -> Vec<CompileError> {
        self.rejected.values().cloned().collect()
    }

    /// What a whole compile of the state ignores, in its order.
    pub(crate) fn warnings(&self) -> Vec<CompileError> {
        self.warnings.values().flatten().cloned().collect()
    }

    /// Service `key` recompiled into `ruleset`.
    fn one(
        &mut self,
        state: &ClusterState,
        config: &ProxyConfig,
        key: &ServiceKey,
        rs: &mut nft::Ruleset,
        mut delta: Option<&mut NftDelta>,
    ) {
        let (mut warnings, mut rejected) = (Vec::new(), Vec::new());
        let visit = Visit {
            state,
            config,
            strict: false,
        };
        let (ctx, objects) = (&self.ctx, &mut self.objects);
        let mut valid = false;
        // Only an emit can fail, and then the service is rejected.
        let _ = visit.one(key, &mut warnings, &mut rejected, |key, input| {
            service::emit_service(key, &input, ctx, objects)?;
            valid = true;
            Ok(())
        });
        set_or_remove(
            &mut self.warnings,
            key,
            (!warnings.is_empty()).then_some(warnings),
        );
        set_or_remove(&mut self.rejected, key, rejected.pop());

        let old = self.services.remove(key).unwrap_or_default();
        let mut new = Fragment::default();
        // The chains and sets: the service's own.
        for name in &old.chains {
            let before = rs.chains.swap_remove(name);
            if let Some(d) = delta.as_deref_mut() {
                d.chains.entry(name.clone()).or_insert(before);
            }
        }
        for name in &old.sets {
            let before = rs.sets.swap_remove(name);
            if let Some(d) = delta.as_deref_mut() {
                d.sets.entry(name.clone()).or_insert(before);
            }
        }
        if valid {
            for (name, chain) in self.objects.chains.drain(..) {
                if let Some(d) = delta.as_deref_mut() {
                    d.chains.entry(name.clone()).or_insert(None);
                }
                new.chains.push(name.clone());
                rs.chains.insert(name, chain);
            }
            for (name, set) in self.objects.sets.drain(..) {
                if let Some(d) = delta.as_deref_mut() {
                    d.sets.entry(name.clone()).or_insert(None);
                }
                new.sets.push(name.clone());
                rs.sets.insert(name, set);
            }
            new.cluster_ips = std::mem::take(&mut self.objects.cluster_ips);
            new.elements = std::mem::take(&mut self.objects.elements);
        }
        self.objects.clear();

        // The shared set and maps: unchanged entries move nothing.
        if old.same_entries(&new) {
            if valid {
                self.services.insert(key.clone(), new);
            }
            return;
        }
        let (old_entries, new_entries) = (old.entries(), new.entries());
        let mut touched: Vec<(usize, Vec<KeyValue>)> = old_entries
            .iter()
            .chain(&new_entries)
            .map(|(t, k, _)| (*t, k.clone()))
            .collect();
        touched.sort();
        touched.dedup();
        // The old winners out, while the claims still say where they are.
        let old_fragment = Some((key, &old));
        for (target, k) in &touched {
            let Some(order) = self.winner(*target, k) else {
                continue;
            };
            let placed = self.placed(*target, k, order, old_fragment);
            if let Some(d) = delta.as_deref_mut() {
                d.elements
                    .entry((*target, k.clone()))
                    .or_insert(Some(placed));
            }
            self.take_out(rs, *target, k);
        }
        for (target, k, _) in &old_entries {
            let claims = self.claims[*target].get_mut(k);
            if let Some(claims) = claims {
                claims.retain(|(s, _)| s != key);
                if claims.is_empty() {
                    self.claims[*target].remove(k);
                }
            }
        }
        if let Some(d) = delta {
            for slot in &touched {
                d.elements.entry(slot.clone()).or_insert(None);
            }
        }
        for (target, k, i) in new_entries {
            let claims = self.claims[target].entry(k).or_default();
            let at = claims.partition_point(|(s, _)| s < key);
            claims.insert(at, (key.clone(), i));
        }
        if valid {
            self.services.insert(key.clone(), new);
        }
        // The new winners in.
        for (target, k) in &touched {
            if let Some(order) = self.winner(*target, k) {
                let placed = self.placed(*target, k, order, None);
                self.put_in(rs, *target, k, placed);
            }
        }
    }

    /// The first claim of `key` in `target`.
    fn winner(&self, target: usize, key: &[KeyValue]) -> Option<Order> {
        self.claims[target].get(key)?.first().cloned()
    }

    /// The element of claim `order` (`fragment`: a service's part no longer in
    /// `self.services`). A claim's service always has its part, with the entry
    /// the claim names; were it missing, the map would get a `drop` for the key.
    fn placed(
        &self,
        target: usize,
        key: &[KeyValue],
        order: Order,
        fragment: Option<(&ServiceKey, &Fragment)>,
    ) -> Placed {
        let value = (target > 0).then(|| {
            let owner = match fragment {
                Some((k, f)) if *k == order.0 => Some(f),
                _ => self.services.get(&order.0),
            };
            owner.and_then(|f| f.elements.get(order.1)).map_or_else(
                || MapElement {
                    key: key.to_vec(),
                    verdict: nft::Verdict::Drop,
                    comment: None,
                },
                |(_, e)| e.clone(),
            )
        });
        Placed { order, value }
    }

    /// The place of an element of order `order` in `target`'s elements, whose
    /// keys are `keys`: `Ok` if one with that order is there.
    fn position<'a>(
        &self,
        target: usize,
        keys: impl Fn(usize) -> &'a [KeyValue],
        len: usize,
        order: &Order,
    ) -> Result<usize, usize> {
        let claims = &self.claims[target];
        let order_at = |i: usize| claims.get(keys(i)).and_then(|c| c.first());
        // Appending is the common case (a whole compile, a new last service).
        match len.checked_sub(1).and_then(order_at) {
            None => return Err(len),
            Some(last) if last < order => return Err(len),
            _ => {}
        }
        let (mut lo, mut hi) = (0, len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match order_at(mid).map_or(Ordering::Less, |o| o.cmp(order)) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    /// Takes the element of `key` out of `target` (where the claims place it).
    fn take_out(&self, rs: &mut nft::Ruleset, target: usize, key: &[KeyValue]) {
        let Some(order) = self.winner(target, key) else {
            return;
        };
        if target == 0 {
            if let Some(set) = rs.sets.get_mut(CLUSTER_IPS) {
                let els = &set.elements;
                if let Ok(i) = self.position(0, |i| &els[i].key, els.len(), &order) {
                    set.elements.remove(i);
                }
            }
        } else if let Some(map) = rs.maps.get_mut(target_name(target)) {
            let els = &map.elements;
            if let Ok(i) = self.position(target, |i| &els[i].key, els.len(), &order) {
                map.elements.remove(i);
            }
        }
    }

    /// Puts `placed`, the winner of `key`, into `target`.
    fn put_in(&self, rs: &mut nft::Ruleset, target: usize, key: &[KeyValue], placed: Placed) {
        let order = &placed.order;
        match placed.value {
            None => {
                if let Some(set) = rs.sets.get_mut(CLUSTER_IPS) {
                    let els = &set.elements;
                    if let Err(i) = self.position(0, |i| &els[i].key, els.len(), order) {
                        let element = Element {
                            key: key.to_vec(),
                            comment: None,
                        };
                        set.elements.insert(i, element);
                    }
                }
            }
            Some(element) => {
                if let Some(map) = rs.maps.get_mut(target_name(target)) {
                    let els = &map.elements;
                    if let Err(i) = self.position(target, |i| &els[i].key, els.len(), order) {
                        map.elements.insert(i, element);
                    }
                }
            }
        }
    }

    /// The element operations of `delta`, as a diff of the whole sets and maps
    /// gives them ([`nft_plan`](crate::sync::nft_plan)): per set, then per
    /// map, by name; in each, the elements added or changed in their new order,
    /// then those deleted in their old order. Only for sets and maps `ruleset`
    /// has.
    pub(crate) fn element_operations(
        &self,
        delta: &NftDelta,
        ruleset: &nft::Ruleset,
    ) -> Vec<Operation> {
        type Change<'a> = (&'a Option<Placed>, Option<Placed>, &'a [KeyValue]);
        let mut by_target: Vec<Vec<Change<'_>>> = vec![Vec::new(); TARGETS];
        for ((target, key), before) in &delta.elements {
            let after = self
                .winner(*target, key)
                .map(|order| self.placed(*target, key, order, None));
            // An element that only moved is the same element to the kernel.
            let value = |p: &Option<Placed>| p.as_ref().map(|p| p.value.clone());
            if value(before) != value(&after) {
                by_target[*target].push((before, after, key));
            }
        }
        let mut order: Vec<usize> = (0..TARGETS).filter(|t| !by_target[*t].is_empty()).collect();
        // Sets before maps, each by name.
        order.sort_by_key(|t| (*t > 0, target_name(*t)));
        let mut ops = Vec::new();
        for target in order {
            let name = Name::fixed(target_name(target));
            let present = match target {
                0 => ruleset.sets.contains_key(&name),
                _ => ruleset.maps.contains_key(&name),
            };
            if !present {
                continue;
            }
            let changes = &mut by_target[target];
            let mut upserts: Vec<&Change<'_>> = changes.iter().filter(|c| c.1.is_some()).collect();
            upserts.sort_by(|a, b| {
                a.1.as_ref()
                    .map(|p| &p.order)
                    .cmp(&b.1.as_ref().map(|p| &p.order))
            });
            let delete = |key: &[KeyValue]| Operation::DeleteElement {
                set: name.clone(),
                key: key.to_vec(),
            };
            for (before, after, key) in upserts {
                if before.is_some() {
                    ops.push(delete(key));
                }
                ops.push(match after.as_ref().and_then(|p| p.value.clone()) {
                    None => Operation::AddElement {
                        set: name.clone(),
                        element: Element {
                            key: key.to_vec(),
                            comment: None,
                        },
                    },
                    Some(element) => Operation::AddMapElement {
                        map: name.clone(),
                        element,
                    },
                });
            }
            let mut deletes: Vec<&Change<'_>> = changes
                .iter()
                .filter(|c| c.1.is_none() && c.0.is_some())
                .collect();
            deletes.sort_by(|a, b| {
                a.0.as_ref()
                    .map(|p| &p.order)
                    .cmp(&b.0.as_ref().map(|p| &p.order))
            });
            ops.extend(deletes.into_iter().map(|(_, _, key)| delete(key)));
        }
        ops
    }
}

/// `map[key] = value`, or no entry for `None`.
fn set_or_remove<V>(map: &mut BTreeMap<ServiceKey, V>, key: &ServiceKey, value: Option<V>) {
    match value {
        Some(v) => {
            map.insert(key.clone(), v);
        }
        None => {
            map.remove(key);
        }
    }
}
