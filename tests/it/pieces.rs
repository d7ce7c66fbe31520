//! A payload cut into pieces (`exec::pieces_over`, over the tables it is
//! applied to) is safe at every step: driven
//! through the `Recorder` piece by piece from one state to the next, each piece
//! is accepted (no rule jumps to a missing chain), every service that has a
//! destination before and after has one in between, and only to an endpoint of
//! the old state or of the new one; the last piece leaves exactly what the whole
//! payload leaves. `in_between` drives the `Syncer` itself, over every service
//! feature, partial syncs and config changes.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use svcnat::exec::{Executor, Recorder, RestoreOptions, pieces_over};
use svcnat::model::*;
use svcnat::ruleset::Table;
use svcnat::sync::Syncer;
use svcnat::trace::{Node, Packet, Verdict};

use crate::fixtures::{config, recorder_tables};

/// `n` services `svc{i}` on `172.30.0.{i+1}:80`, the endpoints of each given.
fn cluster(endpoints: &[Vec<u8>]) -> ClusterState {
    let mut state = ClusterState::new();
    for (i, eps) in endpoints.iter().enumerate() {
        let name = format!("svc{i}");
        let ip = IpAddr::from([172, 30, 0, i as u8 + 1]);
        state.upsert_service(
            Service::cluster_ip("ns1", &name, ip).with_port(ServicePort::tcp("p80", 80)),
        );
        let mut slice = EndpointSlice::new("ns1", &name, format!("{name}-a"), IpFamily::Ipv4)
            .with_port(EndpointPort::tcp("p80", 8080));
        for e in eps {
            slice = slice.with_endpoint(Endpoint::ready(IpAddr::from([10, 180, i as u8, *e])));
        }
        state.upsert_slice(slice);
    }
    state
}

/// Where a new connection to each service's cluster IP goes in the Recorder's
/// tables: the set of destinations, or `None` if some way is not DNATed to an
/// endpoint (rejected, dropped, or left on the cluster IP).
fn destinations(rec: &mut Recorder, services: usize) -> Vec<Option<BTreeSet<SocketAddr>>> {
    let mut text = rec.save(IpFamily::Ipv4, Table::Filter).unwrap();
    text.push_str(&rec.save(IpFamily::Ipv4, Table::Nat).unwrap());
    let ruleset = svcnat::parse::parse_as(&text, IpFamily::Ipv4).unwrap();
    let node = Node::new([IpAddr::from([192, 168, 0, 2])]);
    (0..services)
        .map(|i| {
            let vip = IpAddr::from([172, 30, 0, i as u8 + 1]);
            let packet = Packet::tcp(IpAddr::from([10, 0, 9, 9]), vip, 80);
            let trace = svcnat::trace::trace(&ruleset, &packet, &node).unwrap();
            trace
                .outcomes
                .iter()
                .map(|o| {
                    (o.verdict == Verdict::Accept && o.destination.ip() != vip)
                        .then_some(o.destination)
                })
                .collect()
        })
        .collect()
}

/// The full payload a sync of `state` writes on a node whose tables are `rec`'s
/// (it reads them, so the chains `old` had and `state` has not are deleted).
fn full_payload(rec: &Recorder, old: &ClusterState, state: &ClusterState) -> String {
    let mut syncer = Syncer::new(rec.clone(), config()).unwrap();
    syncer.replace_state(old.clone());
    syncer.sync().unwrap();
    syncer.replace_state(state.clone());
    syncer.request_full_sync();
    syncer.sync().unwrap().payload.text().to_owned()
}

fn check(before: &[Vec<u8>], after: &[Vec<u8>], max_chains: usize) -> Result<(), TestCaseError> {
    let (old, new) = (cluster(before), cluster(after));
    let mut rec = Recorder::new();
    let mut syncer = Syncer::new(&mut rec, config()).unwrap();
    syncer.replace_state(old.clone());
    syncer.sync().unwrap();
    drop(syncer);
    let services = before.len().max(after.len());
    let was = destinations(&mut rec, services);

    let payload = full_payload(&rec, &old, &new);
    let mut whole = rec.clone();
    whole
        .restore(IpFamily::Ipv4, &payload, RestoreOptions::default())
        .unwrap();
    let will = destinations(&mut whole, services);

    // Planned over the tables as they are, as the Syncer plans them.
    let before = rec.save(IpFamily::Ipv4, Table::Nat).unwrap();
    let parts = pieces_over(&payload, &before, IpFamily::Ipv4, max_chains).unwrap();
    prop_assert!(parts.len() > 1 || payload.matches(" - [0:0]").count() <= max_chains);
    for (k, part) in parts.iter().enumerate() {
        rec.restore(IpFamily::Ipv4, part, RestoreOptions::default())
            .map_err(|e| TestCaseError::fail(format!("piece {k}: {e}\n{part}")))?;
        let now = destinations(&mut rec, services);
        for i in 0..services {
            let (Some(Some(was)), Some(Some(will))) = (was.get(i), will.get(i)) else {
                continue;
            };
            let Some(now) = &now[i] else {
                return Err(TestCaseError::fail(format!(
                    "piece {k}: svc{i} lost its destination"
                )));
            };
            prop_assert!(
                now.iter().all(|d| was.contains(d) || will.contains(d)),
                "piece {}: svc{} goes to {:?}, not in {:?} or {:?}",
                k,
                i,
                now,
                was,
                will
            );
        }
    }
    prop_assert_eq!(recorder_tables(&rec), recorder_tables(&whole));
    Ok(())
}

#[test]
fn a_cluster_changing_under_small_pieces() {
    // svc1 loses an endpoint, svc2 loses all (their chains are deleted), svc3 is new.
    let (old, new) = (
        cluster(&[vec![1, 2], vec![1, 2, 3], vec![1]]),
        cluster(&[vec![1, 2], vec![2, 3], vec![], vec![4, 5]]),
    );
    let mut rec = Recorder::new();
    let mut syncer = Syncer::new(&mut rec, config()).unwrap();
    syncer.replace_state(old.clone());
    syncer.sync().unwrap();
    drop(syncer);
    let payload = full_payload(&rec, &old, &new);
    assert_eq!(payload.matches("\n-X KUBE-SEP-").count(), 2, "{payload}");
    check(
        &[vec![1, 2], vec![1, 2, 3], vec![1]],
        &[vec![1, 2], vec![2, 3], vec![], vec![4, 5]],
        2,
    )
    .unwrap();
}

/// An executor whose piece size depends on the payload, as `IptablesRestore`'s
/// on nft does: the `Syncer` asks with the number of chains the payload declares.
struct PerPayload {
    inner: Recorder,
    asked: Vec<usize>,
}

impl Executor for PerPayload {
    fn restore(
        &mut self,
        family: IpFamily,
        payload: &str,
        options: RestoreOptions,
    ) -> Result<(), svcnat::exec::ExecError> {
        self.inner.restore(family, payload, options)
    }
    fn save(&mut self, family: IpFamily, table: Table) -> Result<String, svcnat::exec::ExecError> {
        self.inner.save(family, table)
    }
    fn ensure_jump(
        &mut self,
        family: IpFamily,
        jump: &svcnat::ruleset::JumpRule,
    ) -> Result<(), svcnat::exec::ExecError> {
        self.inner.ensure_jump(family, jump)
    }
    fn chains_per_restore(&mut self, _: IpFamily) -> Option<usize> {
        Some(1000)
    }
    fn chains_per_restore_for(&mut self, _: IpFamily, chains: usize) -> Option<usize> {
        self.asked.push(chains);
        Some((chains / 4).max(1))
    }
}

#[test]
fn the_syncer_asks_for_a_piece_size_per_payload() {
    let state = cluster(&[vec![1, 2], vec![1, 2, 3], vec![1], vec![4, 5]]);
    let exec = PerPayload {
        inner: Recorder::new(),
        asked: Vec::new(),
    };
    let mut syncer = Syncer::new(exec, config()).unwrap();
    syncer.replace_state(state);
    let report = syncer.sync().unwrap();
    let declared = report
        .payload
        .text()
        .lines()
        .filter(|l| l.starts_with(':'))
        .count();
    assert!(declared > 12, "{}", report.payload.text());
    // Asked with the payload's chains (and with none, whether it cuts at all).
    let asked = &syncer.executor().asked;
    assert!(asked.contains(&declared), "{asked:?}");
    assert!(asked.iter().all(|&n| n == declared || n == 0), "{asked:?}");
    // Cut at a quarter of its chains: more than four restores, every one taken.
    assert!(syncer.executor().inner.payloads().count() > 4);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn every_state_in_between_is_safe(
        before in prop::collection::vec(prop::collection::btree_set(1u8..6, 0..4), 0..6),
        after in prop::collection::vec(prop::collection::btree_set(1u8..6, 0..4), 0..6),
        max_chains in 1usize..6,
    ) {
        let to_vec = |v: Vec<BTreeSet<u8>>| v.into_iter().map(|s| s.into_iter().collect()).collect::<Vec<Vec<u8>>>();
        check(&to_vec(before), &to_vec(after), max_chains)?;
    }
}
