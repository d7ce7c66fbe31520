//! A plan's transaction cut into pieces ([`NftPlan::pieces`]), each its own
//! `nft -f`, so that a first sync or a full resync of a large table is never one
//! huge transaction (the kernel's cost of a transaction grows faster than its
//! size: the first sync of 10,000 services x 10 endpoints took 200 to 269 s as
//! one transaction and 18 to 20 s in pieces of 50,000 operations, PERFORMANCE.md),
//! while every state in between stays safe: each packet is treated as the state
//! before or the state after the sync treats it.
//!
//! The operations go in this order (each chain's, and the switch's, in the
//! order the plan wrote them):
//!
//! 1. **Heads**: the table, sets and maps added, and every chain added (an `add
//!    chain` of a chain that exists changes nothing; a new chain is empty and
//!    nothing reaches it yet). These may be cut anywhere.
//! 2. **Service chains** (the per-service-port chains of kube-proxy's layout,
//!    whose names hold the service's `namespace/name/protocol/port`: `service-`,
//!    `external-`, `local-`, `endpoint-` and `firewall-` chains), each flushed and written
//!    whole in one piece, a chain after every service chain its rules jump or go
//!    to (endpoints before their service, a service before its external chain),
//!    so that a chain written is never reached while what it reaches is still
//!    empty; one service's chains after another's, so that the services'
//!    anonymous verdict maps, whose cost in the kernel grows with the size of
//!    the transaction, spread over the pieces. Only chains the kernel does
//!    not hold yet, or holds with the same rules, are written here: a chain
//!    rewritten in place (its rules changed) waits for the switch, with the
//!    chains that reach it. Until the switch the old table's elements and
//!    chains still send packets there, for the role the old rules had, and the
//!    new rules may not fit it (a `service-` chain whose cluster IP moves to a
//!    `local-` chain when its internal traffic policy turns `Local`; an
//!    `external-` chain that masquerades before the switch adds the firewall
//!    element that drops). A full resync of an unchanged cluster cuts
//!    everything but the switch; after a config change that rewrites every
//!    service's chains, all but the heads and the stale objects is the switch.
//! 3. **The switch**, one piece however large: every element change (a map
//!    flushed and filled again stays whole), the fixed chains (every chain that
//!    is not a service's: base chains, `services`, `masquerading`,
//!    `mark-for-masquerade`, the checks) written or deleted and added again.
//!    Fixed chains depend on the config and on each other (the mark one sets and
//!    another tests), so they change together, and together with the elements
//!    that route to the new service chains.
//! 4. **Stale objects**: chains no longer wanted flushed, sets and maps deleted.
//!    Nothing reaches them once step 3 is in. These may be cut anywhere.
//!
//! A transaction no larger than the limit stays one piece, in its own order.
//!
//! Where the table the kernel holds is not known (a first sync over a table
//! another process left, or a sync after a failure), a chain rewritten in place
//! cannot be told from a new one, and every service chain is written before the
//! switch: until it, a packet the old table sends to such a chain may meet rules
//! written for another role (DNATed to an endpoint of its own service port,
//! without the masquerade or the drop its role had).

use std::collections::{BTreeSet, HashMap, HashSet};

use super::nft_plan::NftPlan;
use crate::nft::{Name, Operation, Ruleset, Transaction};

/// The default largest piece, in operations, for [`NftPlan::pieces`]. Measured
/// with nft 1.0.6 on kernel 6.18 (PERFORMANCE.md), a first sync of 10,000
/// services x 10 endpoints (460,000 operations) took 19.8 s in pieces of 50,000
/// and 24.5 s in pieces of 20,000 on the same busy machine, against about 150 s
/// as one transaction: each `nft -f` first reads its cache of the table, which
/// favours fewer pieces; each anonymous verdict map costs the kernel a walk of
/// the transaction it is in, which favours smaller ones.
pub const DEFAULT_PIECE_OPERATIONS: usize = 50_000;

impl NftPlan {
    /// The main transaction cut into transactions of at most `max_operations`
    /// operations each where it can be cut, in an order whose every state in
    /// between treats each packet as the state before or after the sync does:
    /// the table, sets, maps and chains added first; then the service chains
    /// (`service-`, `external-`, `local-`, `endpoint-`, `firewall-`) the kernel
    /// does not hold yet or holds with the same rules, each flushed and written
    /// whole, a chain after those it reaches; then one transaction, the switch,
    /// with every element change, every other chain, and every service chain
    /// the kernel holds with other rules (they are reached by the old elements
    /// until then); stale chains, sets and maps last. `next` is the ruleset the
    /// plan was made for, `old` the one the kernel holds, if known (what the
    /// last sync applied): a service chain `old` holds with other rules waits
    /// for the switch. Without `old`, every service chain is written before
    /// it (see the module docs for what that leaves open). Run [`NftPlan::delete_stale`] first, then each piece in
    /// turn. A transaction of at most `max_operations` (or an empty one) is
    /// returned whole; so is `max_operations == 0`. Only the switch is never cut:
    /// it holds every element change and every fixed chain.
    ///
    /// ```
    /// use svcnat::model::*;
    /// use svcnat::sync::nft_full_plan;
    ///
    /// let config = ProxyConfig::default().with_cluster_cidrs(["10.0.0.0/8".parse().unwrap()]);
    /// let mut state = ClusterState::new();
    /// for i in 0..20u8 {
    ///     let name = format!("svc{i}");
    ///     state.upsert_service(
    ///         Service::cluster_ip("ns", &name, [172, 30, 0, i].into())
    ///             .with_port(ServicePort::tcp("p80", 80)),
    ///     );
    ///     state.upsert_slice(
    ///         EndpointSlice::new("ns", &name, format!("{name}-a"), IpFamily::Ipv4)
    ///             .with_port(EndpointPort::tcp("p80", 80))
    ///             .with_endpoint(Endpoint::ready([10, 1, 0, i].into())),
    ///     );
    /// }
    /// let next = svcnat::compile::nftables(&state, &config)?;
    /// let plan = nft_full_plan(&next, None, std::time::Instant::now());
    /// let pieces = plan.pieces(None, &next, 50);
    /// assert!(pieces.len() > 1);
    /// let all: usize = pieces.iter().map(|p| p.len()).sum();
    /// assert_eq!(all, plan.transaction.len());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pieces(
        &self,
        old: Option<&Ruleset>,
        next: &Ruleset,
        max_operations: usize,
    ) -> Vec<Transaction> {
        let tx = &self.transaction;
        if max_operations == 0 || tx.len() <= max_operations {
            return vec![tx.clone()];
        }
        let groups = groups(tx, old, next);
        pack(tx, groups, max_operations)
    }
}

/// Where an operation goes (a service chain's go with the chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Heads,
    Switch,
    Stale,
}

/// A service chain: its name holds the service port's `namespace/name/...`,
/// which no fixed chain's does (see the module docs).
fn is_service_chain(name: &Name) -> bool {
    name.as_str().contains('/')
}

/// The operations in groups that go whole into one piece, in the order they
/// are to run: heads one by one, service chains (each flushed with its rules)
/// leaves first, the switch, then stale operations one by one.
fn groups(tx: &Transaction, old: Option<&Ruleset>, next: &Ruleset) -> Vec<Vec<usize>> {
    let ops = tx.operations();
    // Chains the transaction deletes and adds again (a base chain, or one
    // that changes type): every operation on them belongs to the switch.
    let recreated: HashSet<&Name> = ops
        .iter()
        .filter_map(|op| match op {
            Operation::DeleteChain(name) => Some(name),
            _ => None,
        })
        .collect();
    let mut heads = Vec::new();
    let mut switch = Vec::new();
    let mut stale = Vec::new();
    // Each service chain's operations (flush and rules), and the chains in
    // the order their first operation comes.
    let mut chains: HashMap<&Name, Vec<usize>> = HashMap::new();
    let mut chain_order: Vec<&Name> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let step = match op {
            Operation::AddTable { .. } | Operation::AddSet { .. } | Operation::AddMap { .. } => {
                Step::Heads
            }
            Operation::AddChain { name, base, .. } => {
                if base.is_none() && !recreated.contains(name) {
                    Step::Heads
                } else {
                    Step::Switch
                }
            }
            Operation::FlushChain(name) | Operation::AddRule { chain: name, .. } => {
                if !next.chains.contains_key(name) {
                    Step::Stale
                } else if is_service_chain(name) && !recreated.contains(name) {
                    let group = chains.entry(name).or_insert_with(|| {
                        chain_order.push(name);
                        Vec::new()
                    });
                    group.push(i);
                    continue;
                } else {
                    Step::Switch
                }
            }
            Operation::DeleteChain(_) => Step::Switch,
            Operation::DeleteSet(_) | Operation::DeleteMap(_) => Step::Stale,
            Operation::FlushSet(_)
            | Operation::FlushMap(_)
            | Operation::AddElement { .. }
            | Operation::AddMapElement { .. }
            | Operation::DeleteElement { .. } => Step::Switch,
            // Nothing else is planned; were it, it would wait for the switch.
            _ => Step::Switch,
        };
        match step {
            Step::Heads => heads.push(i),
            Step::Switch => switch.push(i),
            Step::Stale => stale.push(i),
        }
    }

    // The service chains written here that each one's rules jump or go to.
    let targets: HashMap<&Name, Vec<&Name>> = chains
        .keys()
        .map(|&name| {
            let to: BTreeSet<&Name> = next.chains[name]
                .rules
                .iter()
                .flat_map(|r| &r.stmts)
                .flat_map(|stmt| stmt.chains())
                .filter(|c| chains.contains_key(*c))
                .collect();
            (name, to.into_iter().collect())
        })
        .collect();

    // Chains rewritten in place go with the switch, and so do the chains
    // written here that reach them.
    if let Some(old) = old {
        let late = rewritten_in_place(old, next, &chains, &targets);
        for name in &late {
            if let Some(group) = chains.remove(name) {
                switch.extend(group);
            }
        }
        chain_order.retain(|name| !late.contains(*name));
        switch.sort_unstable();
    }

    let mut out: Vec<Vec<usize>> = heads.into_iter().map(|i| vec![i]).collect();
    for name in leaves_first(&chain_order, &targets) {
        out.push(chains.remove(name).unwrap_or_default());
    }
    if !switch.is_empty() {
        out.push(switch);
    }
    out.extend(stale.into_iter().map(|i| vec![i]));
    out
}

/// The service chains of `chains` (rewritten) that `old` holds with other
/// rules than `next`'s, and the chains of `chains` that reach those in
/// `next`. Until the switch, the old table's elements and chains still send
/// packets to them, for the role the old rules had: a `service-` chain whose
/// cluster IP moves to a `local-` chain, an `external-` chain that masquerades
/// before the switch adds the firewall element that drops.
fn rewritten_in_place(
    old: &Ruleset,
    next: &Ruleset,
    chains: &HashMap<&Name, Vec<usize>>,
    targets: &HashMap<&Name, Vec<&Name>>,
) -> BTreeSet<Name> {
    let mut late: Vec<&Name> = chains
        .keys()
        .copied()
        .filter(|name| {
            old.chains
                .get(*name)
                .is_some_and(|o| Some(o) != next.chains.get(*name))
        })
        .collect();
    late.sort();
    // Who reaches each of them, among the chains written here.
    let mut callers: HashMap<&Name, Vec<&Name>> = HashMap::new();
    for (&name, to) in targets {
        for &t in to {
            callers.entry(t).or_default().push(name);
        }
    }
    let mut out: BTreeSet<Name> = BTreeSet::new();
    while let Some(name) = late.pop() {
        if out.insert(name.clone()) {
            late.extend(callers.get(name).into_iter().flatten().copied());
        }
    }
    out
}

/// The service chains written, each after those of them its rules jump or go
/// to (depth first, in `order` otherwise, so the result is deterministic).
fn leaves_first<'a>(
    order: &[&'a Name],
    targets: &HashMap<&'a Name, Vec<&'a Name>>,
) -> Vec<&'a Name> {
    let targets = |name: &Name| -> Vec<&'a Name> { targets.get(name).cloned().unwrap_or_default() };
    // Roots first (chains none of the others reaches: a service's chain, or
    // its external one), so each service's chains come together and the
    // services' costly rules (an anonymous verdict map each) spread evenly
    // over the pieces instead of filling the last ones; then the rest.
    let reached: HashSet<&Name> = order.iter().flat_map(|&c| targets(c)).collect();
    let roots = order.iter().filter(|c| !reached.contains(**c));
    let mut done: HashSet<&Name> = HashSet::new();
    let mut out = Vec::with_capacity(order.len());
    for &root in roots.chain(order) {
        if done.contains(root) {
            continue;
        }
        // Depth first without recursion; a chain on the path is not entered
        // again (the compiler makes no loops, and the kernel refuses one).
        let mut path: Vec<(&Name, Vec<&Name>)> = vec![(root, targets(root))];
        let mut on_path: HashSet<&Name> = HashSet::from([root]);
        while let Some((_, next)) = path.last_mut() {
            match next.pop() {
                None => {
                    let (finished, _) = path.pop().expect("not empty");
                    on_path.remove(finished);
                    if done.insert(finished) {
                        out.push(finished);
                    }
                }
                Some(to) if done.contains(to) || on_path.contains(to) => {}
                Some(to) => {
                    on_path.insert(to);
                    path.push((to, targets(to)));
                }
            }
        }
    }
    out
}

/// Consecutive groups packed into transactions of at most `max` operations (a
/// larger group alone).
fn pack(tx: &Transaction, groups: Vec<Vec<usize>>, max: usize) -> Vec<Transaction> {
    let ops = tx.operations();
    let mut pieces = Vec::new();
    let mut piece = Transaction::new(tx.family(), tx.table().clone());
    for group in groups {
        if !piece.is_empty() && piece.len() + group.len() > max {
            pieces.push(std::mem::replace(
                &mut piece,
                Transaction::new(tx.family(), tx.table().clone()),
            ));
        }
        piece.extend(group.into_iter().map(|i| ops[i].clone()));
    }
    if !piece.is_empty() {
        pieces.push(piece);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::model::*;
    use crate::sync::{nft_full_plan, nft_plan};

    /// `n` services with `eps` endpoints each.
    fn ruleset(n: u8, eps: u8) -> Ruleset {
        let config = ProxyConfig::default().with_cluster_cidrs(["10.0.0.0/8".parse().unwrap()]);
        let mut state = ClusterState::new();
        for i in 0..n {
            let name = format!("svc{i}");
            state.upsert_service(
                Service::cluster_ip("ns", &name, [172, 30, 0, i].into())
                    .with_port(ServicePort::tcp("p80", 80)),
            );
            let mut slice = EndpointSlice::new("ns", &name, format!("{name}-a"), IpFamily::Ipv4)
                .with_port(EndpointPort::tcp("p80", 80));
            for e in 0..eps {
                slice = slice.with_endpoint(Endpoint::ready([10, 1, i, e].into()));
            }
            state.upsert_slice(slice);
        }
        crate::compile::nftables(&state, &config).unwrap()
    }

    fn lines(pieces: &[Transaction]) -> Vec<String> {
        pieces
            .iter()
            .flat_map(|p| p.to_text().lines().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    #[test]
    fn every_operation_once_the_same_every_time() {
        let next = ruleset(6, 3);
        let plan = nft_full_plan(&next, None, Instant::now());
        let whole = lines(std::slice::from_ref(&plan.transaction));
        for max in [1, 7, 50] {
            let pieces = plan.pieces(None, &next, max);
            assert!(pieces.len() > 1);
            let (mut a, mut b) = (lines(&pieces), whole.clone());
            // Each call builds its hash maps with new keys: an order that
            // leaked from one would show here.
            assert_eq!(a, lines(&plan.pieces(None, &next, max)));
            a.sort();
            b.sort();
            assert_eq!(a, b, "max {max}");
        }
    }

    /// Two services gain an endpoint and a third comes. Without the old
    /// table, the first's service chain is written before the switch, after
    /// the new endpoint chain it reaches; with it, the rewritten service chain
    /// goes with the switch (the new service's elements), whatever the size.
    #[test]
    fn leaves_first_and_rewritten_chains_with_the_switch() {
        let (old, next) = (ruleset(2, 1), ruleset(3, 2));
        let applied = nft_full_plan(&old, None, Instant::now()).applied(old.clone());
        let plan = nft_plan(Some(&applied), &next, Instant::now());
        let service = "flush chain ip kube-proxy service-L2M7ATPH-ns/svc0/tcp/p80";
        let endpoint = "add rule ip kube-proxy endpoint-3X3OW6CK-ns/svc0/tcp/p80__10.1.0.1/80";
        let element = "add element ip kube-proxy service-ips";
        let piece_of = |pieces: &[Transaction], what: &str| {
            pieces
                .iter()
                .position(|p| p.to_text().contains(what))
                .unwrap_or_else(|| panic!("no {what:?} in {}", lines(pieces).join("\n")))
        };

        let unknown = plan.pieces(None, &next, 1);
        assert!(piece_of(&unknown, endpoint) < piece_of(&unknown, service));
        assert!(piece_of(&unknown, service) < piece_of(&unknown, element));

        let known = plan.pieces(Some(&old), &next, 1);
        assert!(piece_of(&known, endpoint) < piece_of(&known, service));
        assert_eq!(piece_of(&known, service), piece_of(&known, element));
    }
}
