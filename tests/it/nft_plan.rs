//! Issue 17: the nftables sync plan (`sync::nft_plan`), applied through
//! [`NftFake`]: after every plan the fake's table is the next ruleset plus the
//! chains flushed and not yet deleted, over kube-proxy's
//! `TestSyncProxyRulesRepeated` (its dumps and operation counts, kubernetes
//! commit 030880a5dc5449403c6d1f0aa146a7dc21d6c6dc) and over random clusters and
//! changes; and kube-proxy's steps once more through the kernel.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use svcnat::exec::{DryRun, NftExecutor, NftFake};
use svcnat::model::*;
use svcnat::nft::*;
use svcnat::sync::{NftApplied, NftListed, NftPlan, StaleChains, Syncer, nft_full_plan, nft_plan};

use crate::kernel::{Netns, nft_available};
use crate::nft_exec::{listing, nft_in};
use crate::nft_kube_proxy::{RepeatedStep, assert_same, fake_config, repeated_steps};

/// `rs` with every set's and map's elements sorted: the fake keeps them in the
/// order they were added, which a plan changes.
fn normalized(mut rs: Ruleset) -> Ruleset {
    for set in rs.sets.values_mut() {
        set.elements.sort();
    }
    for map in rs.maps.values_mut() {
        map.elements.sort();
    }
    rs
}

/// Asserts that the fake holds `next` and, empty, the stale chains.
fn assert_holds(fake: &NftFake, next: &Ruleset, stale: &StaleChains, what: &str) {
    let mut expected = next.clone();
    for chain in stale.names() {
        assert!(
            expected
                .chains
                .insert(chain.clone(), Chain::default())
                .is_none(),
            "{what}: a stale chain the ruleset wants: {chain}"
        );
    }
    let got = fake
        .table(next.family, &next.table)
        .cloned()
        .unwrap_or_else(|| panic!("{what}: no table"));
    let (got, expected) = (normalized(got).to_dump(), normalized(expected).to_dump());
    if got != expected {
        let g: BTreeSet<&str> = got.lines().collect();
        let e: BTreeSet<&str> = expected.lines().collect();
        panic!(
            "{what}: the fake holds\n  {}\nand lacks\n  {}",
            g.difference(&e).copied().collect::<Vec<_>>().join("\n  "),
            e.difference(&g).copied().collect::<Vec<_>>().join("\n  "),
        );
    }
}

/// Runs a plan's transactions; both must succeed.
fn run_plan<E: NftExecutor>(exec: &mut E, plan: &NftPlan, what: &str) {
    if let Some(delete) = &plan.delete_stale {
        exec.run(delete)
            .unwrap_or_else(|e| panic!("{what}: stale chains: {e}\n{delete}"));
    }
    exec.run(&plan.transaction)
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", plan.transaction));
}

/// What a full sync lists of the table before planning.
fn listed<E: NftExecutor>(exec: &mut E, rs: &Ruleset) -> NftListed {
    NftListed {
        chains: exec.list_chains(rs.family, &rs.table).unwrap(),
        sets: exec.list_sets(rs.family, &rs.table).unwrap(),
        maps: exec.list_maps(rs.family, &rs.table).unwrap(),
    }
}

/// Our operation count for each of kube-proxy's: the same, except where it
/// rewrites a chain that did not change. Adding 10.0.3.3 to svc3 changes its
/// service chain and adds an endpoint chain (2 x 4 operations); kube-proxy also
/// rewrites the unchanged chain of 10.0.3.2 (4 more, 12).
fn our_operations(step: &str, kube_proxy: usize) -> usize {
    match step {
        "svc3's endpoint added" => 8,
        _ => kube_proxy,
    }
}

/// kube-proxy's steps through `exec`, which starts empty: after each plan,
/// `look` is shown the executor, the step, the ruleset and the stale chains; the
/// main transaction must have kube-proxy's operation count and the stale chains
/// be kube-proxy's. Returns the size of each plan's stale-chain deletion.
fn repeated_steps_through<E: NftExecutor>(
    exec: &mut E,
    look: impl Fn(&mut E, &RepeatedStep, &Ruleset, &StaleChains),
) -> Vec<usize> {
    let config = fake_config(IpFamily::Ipv4);
    let mut now = Instant::now();
    let mut applied: Option<NftApplied> = None;
    let mut deleted = Vec::new();
    for step in repeated_steps() {
        now += if step.aged {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(10)
        };
        let next = svcnat::compile::nftables(&step.state, &config).unwrap();
        let plan = nft_plan(applied.as_ref(), &next, now);
        assert_eq!(plan.full, applied.is_none(), "{}", step.name);
        run_plan(exec, &plan, step.name);
        let stale: BTreeSet<&str> = plan.stale.names().map(Name::as_str).collect();
        assert_eq!(
            stale,
            step.stale.iter().copied().collect::<BTreeSet<_>>(),
            "{}: the stale chains",
            step.name
        );
        look(exec, &step, &next, &plan.stale);
        if let Some(kube_proxy) = step.operations {
            assert_eq!(
                plan.transaction.len(),
                our_operations(step.name, kube_proxy),
                "{}: operations\n{}",
                step.name,
                plan.transaction
            );
        }
        deleted.push(plan.delete_stale.as_ref().map_or(0, Transaction::len));
        applied = Some(plan.applied(next));
    }
    deleted
}

/// Stale chains are deleted in a transaction of their own once aged: svc2's two,
/// then the old endpoint chain of svc3; svc3's three chains are wanted again
/// when they have aged, and written again rather than deleted.
const DELETED: [usize; 13] = [0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0];

#[test]
fn kube_proxy_s_repeated_syncs_through_the_fake() {
    let deleted = repeated_steps_through(&mut NftFake::new(), |fake, step, next, stale| {
        // kube-proxy's own dump after its sync, flushed chains and all.
        assert_same(step.name, &step.expected, &fake.dump());
        assert_holds(fake, next, stale, step.name);
    });
    assert_eq!(deleted, DELETED);
}

#[test]
fn kube_proxy_s_repeated_syncs_in_the_kernel() {
    if !nft_available("kube_proxy_s_repeated_syncs_in_the_kernel") {
        return;
    }
    let ns = Netns::new("nftx-plan");
    let mut nft = nft_in(&ns);
    let deleted = repeated_steps_through(&mut nft, |nft, step, next, stale| {
        // The kernel lists what a fake holding the ruleset and the stale chains
        // lists.
        let mut expected = next.clone();
        for chain in stale.names() {
            expected.chains.insert(chain.clone(), Chain::default());
        }
        let mut fake = NftFake::new();
        fake.set_table(expected);
        let tables = [(next.family, next.table.clone())];
        assert_eq!(
            listing(nft, &tables),
            listing(&mut fake, &tables),
            "{}",
            step.name
        );
    });
    assert_eq!(deleted, DELETED);
}

/// `rs` with its chains, sets and maps in the reverse order (the elements of
/// each set and map as they are).
fn reversed(rs: &Ruleset) -> Ruleset {
    let mut r = rs.clone();
    r.chains.reverse();
    r.sets.reverse();
    r.maps.reverse();
    r
}

/// The ruleset of `state` (the services that compile; `None` if the config
/// does not).
fn compiled(state: &ClusterState, config: &ProxyConfig) -> Option<Ruleset> {
    svcnat::compile::nftables_lenient(state, config)
        .ok()
        .map(|l| l.ruleset)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Whatever the cluster, the config and the changes, each plan takes the
    /// fake to the next ruleset (and the stale chains, empty), both of its
    /// transactions accepted; a plan again with nothing changed is empty; and a
    /// full plan over the table, listed first, does the same.
    #[test]
    fn every_plan_takes_the_table_to_the_next_ruleset(
        parts in crate::properties::rich_cluster(),
        config in crate::properties::rich_config(),
        rounds in prop::collection::vec(
            (crate::sync::change(), any::<bool>(), prop::bool::weighted(0.15)),
            1..10,
        ),
    ) {
        // A syncer that never syncs holds the state the changes apply to.
        let mut holder = Syncer::new(DryRun::default(), config.clone()).unwrap();
        holder.replace_state(crate::properties::state_of(&parts));
        let Some(mut next) = compiled(holder.state(), &config) else {
            return Ok(());
        };
        let mut fake = NftFake::new();
        let mut now = Instant::now();
        let plan = nft_plan(None, &next, now);
        run_plan(&mut fake, &plan, "first sync");
        assert_holds(&fake, &next, &plan.stale, "first sync");
        let mut applied = plan.applied(next.clone());
        for (i, (change, aged, full)) in rounds.into_iter().enumerate() {
            let what = format!("round {i}: {change:?}, aged {aged}, full {full}");
            crate::sync::apply_change(&mut holder, change);
            now += if aged { Duration::from_secs(2) } else { Duration::from_millis(10) };
            next = compiled(holder.state(), &config).unwrap();
            let plan = if full {
                nft_full_plan(&next, Some(&listed(&mut fake, &next)), now)
            } else {
                nft_plan(Some(&applied), &next, now)
            };
            if !full {
                // The chains', sets' and maps' order in either ruleset changes nothing.
                let mut reordered = applied.clone();
                reordered.ruleset = reversed(&reordered.ruleset);
                for (old, new) in [(&reordered, next.clone()), (&applied, reversed(&next))] {
                    let other = nft_plan(Some(old), &new, now);
                    prop_assert_eq!(&other, &plan, "{}: reordered", what);
                }
            }
            run_plan(&mut fake, &plan, &what);
            assert_holds(&fake, &next, &plan.stale, &what);
            applied = plan.applied(next.clone());
            let again = nft_plan(Some(&applied), &next, now);
            prop_assert!(again.transaction.is_empty(), "{what}: again\n{}", again.transaction);
            prop_assert!(again.delete_stale.is_none(), "{what}");
        }
        // Once every stale chain has aged, the table is exactly the ruleset.
        now += Duration::from_secs(2);
        let plan = nft_plan(Some(&applied), &next, now);
        run_plan(&mut fake, &plan, "aged");
        prop_assert!(plan.stale.is_empty());
        assert_holds(&fake, &next, &plan.stale, "aged");
    }

    /// A full plan over another cluster's table, listed first: the other's
    /// chains are flushed and stale, its sets and maps that this one has not
    /// are gone; the next plan deletes the stale chains once they have aged.
    #[test]
    fn a_full_plan_over_another_cluster_s_table(
        before in crate::properties::rich_cluster(),
        after in crate::properties::rich_cluster(),
        config in crate::properties::rich_config(),
    ) {
        let state = |parts: &[(Service, Vec<EndpointSlice>)]| crate::properties::state_of(parts);
        let (Some(old), Some(next)) = (compiled(&state(&before), &config), compiled(&state(&after), &config)) else {
            return Ok(());
        };
        let mut fake = NftFake::new();
        let now = Instant::now();
        run_plan(&mut fake, &nft_plan(None, &old, now), "the other cluster");
        let plan = nft_full_plan(&next, Some(&listed(&mut fake, &next)), now);
        run_plan(&mut fake, &plan, "full");
        let gone: BTreeSet<&Name> = old.chains.keys().filter(|c| !next.chains.contains_key(*c)).collect();
        prop_assert_eq!(plan.stale.names().collect::<BTreeSet<_>>(), gone);
        assert_holds(&fake, &next, &plan.stale, "full");
        let later = nft_plan(Some(&plan.applied(next.clone())), &next, now + Duration::from_secs(1));
        prop_assert_eq!(later.delete_stale.map_or(0, |d| d.len()), plan.stale.len());
        prop_assert!(later.transaction.is_empty());
    }
}

/// A base chain whose priority changes is deleted and added again: the kernel
/// (and the fake) refuse to change it in place.
#[test]
fn a_base_chain_with_another_priority_is_added_again() {
    let config = fake_config(IpFamily::Ipv4);
    let first = svcnat::compile::nftables(&ClusterState::new(), &config).unwrap();
    let mut next = first.clone();
    let chain = next.chains.get_mut("nat-prerouting").unwrap();
    chain.base.as_mut().unwrap().priority = -90;
    let mut fake = NftFake::new();
    let now = Instant::now();
    let plan = nft_plan(None, &first, now);
    run_plan(&mut fake, &plan, "first");
    let plan = nft_plan(Some(&plan.applied(first)), &next, now);
    assert_eq!(
        plan.transaction
            .to_text()
            .lines()
            .take(3)
            .collect::<Vec<_>>(),
        [
            "delete chain ip kube-proxy nat-prerouting",
            "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -90 ; }",
            "flush chain ip kube-proxy nat-prerouting",
        ]
    );
    run_plan(&mut fake, &plan, "priority");
    assert_holds(&fake, &next, &plan.stale, "priority");
}

/// A plan for another table than the one applied is a full one.
#[test]
fn a_plan_for_another_table_is_full() {
    let v4 = svcnat::compile::nftables(&ClusterState::new(), &fake_config(IpFamily::Ipv4)).unwrap();
    let v6 = svcnat::compile::nftables(&ClusterState::new(), &fake_config(IpFamily::Ipv6)).unwrap();
    let now = Instant::now();
    let applied = nft_plan(None, &v4, now).applied(v4.clone());
    let plan = nft_plan(Some(&applied), &v6, now);
    assert!(plan.full);
    assert_eq!(plan.transaction.family(), Family::Ip6);
    assert!(!nft_plan(Some(&applied), &v4, now).full);
}
