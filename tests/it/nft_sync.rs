//! The nftables [`NftSyncer`] through [`NftFake`] (no root): churn leaves the
//! table a fresh full sync writes, a refused transaction makes the next sync
//! full and repairs, drift (a deleted or flushed table) is repaired with reason
//! `Drift`, cleanup leaves foreign tables alone; and one kernel test.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use svcnat::exec::{
    DryRun, ExecError, NftExecError, NftExecutor, NftFake, NftRefusal, RefusalKind, SyncLock,
};
use svcnat::model::*;
use svcnat::nft::*;
use svcnat::sync::{FullReason, NftSyncer, Syncer, nft_cleanup};

use crate::kernel::{Netns, nft_available};
use crate::nft_exec::nft_in;

/// `rs` with every set's and map's elements sorted (the fake keeps them in the
/// order they were added, which an incremental sync changes).
pub(crate) fn normalized(mut rs: Ruleset) -> String {
    for set in rs.sets.values_mut() {
        set.elements.sort();
    }
    for map in rs.maps.values_mut() {
        map.elements.sort();
    }
    rs.to_dump()
}

/// The table of `family` in `fake`, normalized ("" if there is none).
fn table_of(fake: &NftFake, family: Family) -> String {
    fake.table(family, &Name::new("kube-proxy").unwrap())
        .cloned()
        .map_or_else(String::new, normalized)
}

/// What a fresh syncer's first sync of `state` writes into an empty fake.
pub(crate) fn fresh(state: &ClusterState, config: &ProxyConfig) -> String {
    let mut syncer = NftSyncer::new(NftFake::new(), config.clone()).unwrap();
    syncer.replace_state(state.clone());
    let report = syncer.sync_at(Instant::now()).unwrap();
    assert_eq!(report.full_reason, Some(FullReason::FirstSync));
    table_of(syncer.executor(), family(config))
}

fn family(config: &ProxyConfig) -> Family {
    match config.ip_family {
        IpFamily::Ipv4 => Family::Ip,
        IpFamily::Ipv6 => Family::Ip6,
    }
}

/// Syncs twice, [`svcnat::sync::STALE_CHAIN_AGE`] apart and more, with nothing
/// changed: the stale chains of the syncs before are deleted (the first may be
/// full, and flush some more).
pub(crate) fn age_out<E: NftExecutor>(syncer: &mut NftSyncer<E>, now: &mut Instant) {
    for _ in 0..2 {
        *now += Duration::from_secs(2);
        syncer.sync_at(*now).unwrap();
    }
    let stale = syncer.applied().unwrap().stale.len();
    assert_eq!(stale, 0, "stale chains left after aging");
}

/// The listing methods of an [`NftExecutor`] whose `fake` field, an
/// [`NftFake`], answers them (for test executors that wrap the fake).
macro_rules! listing_of_the_fake {
    () => {
        fn list_chains(
            &mut self,
            family: svcnat::nft::Family,
            table: &svcnat::nft::Name,
        ) -> Result<Vec<svcnat::nft::Name>, svcnat::exec::NftExecError> {
            self.fake.list_chains(family, table)
        }
        fn list_sets(
            &mut self,
            family: svcnat::nft::Family,
            table: &svcnat::nft::Name,
        ) -> Result<Vec<svcnat::nft::Name>, svcnat::exec::NftExecError> {
            self.fake.list_sets(family, table)
        }
        fn list_maps(
            &mut self,
            family: svcnat::nft::Family,
            table: &svcnat::nft::Name,
        ) -> Result<Vec<svcnat::nft::Name>, svcnat::exec::NftExecError> {
            self.fake.list_maps(family, table)
        }
        fn list_set_elements(
            &mut self,
            family: svcnat::nft::Family,
            table: &svcnat::nft::Name,
            set: &svcnat::nft::Name,
        ) -> Result<Vec<svcnat::nft::Element>, svcnat::exec::NftExecError> {
            self.fake.list_set_elements(family, table, set)
        }
        fn list_map_elements(
            &mut self,
            family: svcnat::nft::Family,
            table: &svcnat::nft::Name,
            map: &svcnat::nft::Name,
        ) -> Result<Vec<svcnat::nft::MapElement>, svcnat::exec::NftExecError> {
            self.fake.list_map_elements(family, table, map)
        }
        fn list_table(
            &mut self,
            family: svcnat::nft::Family,
            table: &svcnat::nft::Name,
        ) -> Result<String, svcnat::exec::NftExecError> {
            self.fake.list_table(family, table)
        }
    };
}
pub(crate) use listing_of_the_fake;

/// An [`NftFake`] whose `fail_at`-th runs (1-based, counted over its life) are
/// refused, as the kernel refuses one: nothing applied; with `no_lock`, its lock
/// is never taken; with `no_check`, it cannot check.
#[derive(Debug, Default)]
pub(crate) struct Failing {
    pub(crate) fake: NftFake,
    pub(crate) runs: usize,
    pub(crate) fail_at: Vec<usize>,
    no_lock: bool,
    no_check: bool,
    /// What it answers to `piece_operations`.
    pub(crate) prefers: Option<usize>,
}

impl NftExecutor for Failing {
    fn piece_operations(&self) -> Option<usize> {
        self.prefers
    }
    fn lock(&mut self) -> Result<SyncLock, NftExecError> {
        if self.no_lock {
            return Err(ExecError::Unsupported("no lock here").into());
        }
        self.fake.lock()
    }
    fn run(&mut self, tx: &Transaction) -> Result<(), NftExecError> {
        self.runs += 1;
        if self.fail_at.contains(&self.runs) {
            return Err(NftExecError::Refused(NftRefusal {
                kind: RefusalKind::Other,
                index: None,
                command: None,
                message: format!("run {} refused by the test", self.runs),
            }));
        }
        self.fake.run(tx)
    }
    fn check(&mut self, tx: &Transaction) -> Result<(), NftExecError> {
        if self.no_check {
            return Err(ExecError::Unsupported("no check").into());
        }
        self.fake.check(tx)
    }
    crate::nft_sync::listing_of_the_fake!();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the cluster, the config and the changes (some syncs asked to be
    /// full, some runs refused, transactions cut into pieces of any size), once the stale chains have aged the fake holds
    /// exactly what a fresh syncer's first sync of the same state writes; every
    /// sync after a refused one is full (`AfterFailure`) and the others are
    /// incremental unless asked; and the stale flows are the iptables mode's for
    /// the same changes.
    #[test]
    fn churn_leaves_the_table_a_fresh_full_sync_writes(
        parts in crate::properties::rich_cluster(),
        config in crate::properties::rich_config(),
        rounds in prop::collection::vec(
            (crate::sync::change(), any::<bool>(), prop::bool::weighted(0.1)),
            1..10,
        ),
        fail_at in prop::collection::vec(1usize..14, 0..3),
        piece_operations in prop_oneof![Just(0usize), 1usize..60],
    ) {
        let Ok(syncer) = NftSyncer::new(Failing { fail_at, ..Failing::default() }, config.clone()) else {
            return Ok(());
        };
        // Small pieces: the fake refuses any piece that names a chain, set or
        // map an earlier piece has not added, or deletes one still used.
        let mut syncer = syncer.with_piece_operations(piece_operations);
        // The iptables syncer holds the state the changes apply to, and says
        // which flows they make stale.
        let Ok(mut holder) = Syncer::new(DryRun::default(), config.clone()) else {
            return Ok(());
        };
        holder.replace_state(crate::properties::state_of(&parts));
        let mut pending_flows = holder.sync().unwrap().stale_flows;
        syncer.replace_state(holder.state().clone());
        let mut now = Instant::now();
        // The first sync, of the state the holder synced first.
        let mut failed = true;
        let rounds = std::iter::once(None).chain(rounds.into_iter().map(Some));
        for (i, round) in rounds.enumerate() {
            let Some((change, aged, full)) = round else {
                let report = syncer.sync_at(now);
                if let Ok(report) = report {
                    prop_assert_eq!(report.full_reason, Some(FullReason::FirstSync));
                    prop_assert_eq!(&report.stale_flows, &pending_flows);
                    pending_flows.clear();
                    failed = report.delete_stale_error.is_some();
                }
                continue;
            };
            let what = format!("round {i}: {change:?}, aged {aged}, full {full}");
            crate::sync::apply_change(&mut holder, change);
            pending_flows.extend(holder.sync().unwrap().stale_flows);
            syncer.replace_state(holder.state().clone());
            if full {
                syncer.request_full_sync();
            }
            now += if aged { Duration::from_secs(2) } else { Duration::from_millis(10) };
            match syncer.sync_at(now) {
                Ok(report) => {
                    if failed {
                        prop_assert!(report.full, "{}: after a failure: {}", what, report);
                    } else if full {
                        prop_assert_eq!(report.full_reason, Some(FullReason::Requested), "{}", what);
                    } else {
                        prop_assert!(!report.full, "{}: {}", what, report);
                    }
                    failed = report.delete_stale_error.is_some();
                    // What the holder reported since the last successful
                    // sync (its first one included).
                    pending_flows.sort();
                    pending_flows.dedup();
                    prop_assert_eq!(&report.stale_flows, &pending_flows, "{}", what);
                    pending_flows.clear();
                }
                Err(e) => {
                    prop_assert!(e.retry_after().is_some(), "{}: {}", what, e);
                    prop_assert!(syncer.applied().is_none(), "{}", what);
                    failed = true;
                }
            }
        }
        syncer.executor_mut().fail_at.clear();
        age_out(&mut syncer, &mut now);
        prop_assert_eq!(
            table_of(&syncer.executor().fake, family(&config)),
            fresh(syncer.state(), &config)
        );
    }
}

/// A small cluster and the config the hand-written tests use.
pub(crate) fn small() -> (ClusterState, ProxyConfig) {
    let mut state = ClusterState::new();
    for i in 0..3u8 {
        state.upsert_service(crate::sync::service_for(i, 1 | 8 | 64));
    }
    let config = ProxyConfig::default().with_cluster_cidrs(["10.0.0.0/8".parse().unwrap()]);
    (state, config)
}

/// Endpoints for service `i`: hosts `hosts`.
fn endpoints(syncer: &mut NftSyncer<impl NftExecutor>, i: u8, hosts: &[u8]) {
    let mut holder = Syncer::new(DryRun::default(), syncer.config().clone()).unwrap();
    holder.replace_state(syncer.state().clone());
    let eps = hosts
        .iter()
        .map(|h| (*h, Conditions::READY, false))
        .collect();
    crate::sync::apply_change(&mut holder, crate::sync::Change::Upsert(i, eps));
    syncer.replace_state(holder.state().clone());
}

/// Each run refused in turn, in a scripted churn: the sync that meets it fails
/// (the main transaction) or goes on (the stale chains' deletion), and the next
/// one is full and repairs.
#[test]
fn a_refused_run_makes_the_next_sync_full_and_repairs() {
    let (state, config) = small();
    let script: [&[u8]; 6] = [&[1, 2], &[2, 3], &[], &[4], &[4, 5, 6], &[1]];
    for k in 1..=10 {
        let failing = Failing {
            fail_at: vec![k],
            ..Failing::default()
        };
        let mut syncer = NftSyncer::new(failing, config.clone()).unwrap();
        syncer.replace_state(state.clone());
        let mut now = Instant::now();
        let mut refused = false;
        let mut must_be_full = false;
        for (step, hosts) in script.iter().enumerate() {
            endpoints(&mut syncer, (step % 3) as u8, hosts);
            now += Duration::from_millis(1500);
            let what = format!("refusing run {k}, step {step}");
            match syncer.sync_at(now) {
                Ok(report) => {
                    if must_be_full {
                        // The first reason is reported: a first sync refused
                        // stays the first sync.
                        let reason = report.full_reason;
                        assert!(
                            matches!(
                                reason,
                                Some(FullReason::AfterFailure | FullReason::FirstSync)
                            ),
                            "{what}: {report}"
                        );
                    }
                    must_be_full = report.delete_stale_error.is_some();
                    if must_be_full {
                        refused = true;
                        assert!(report.stale_chains_deleted.is_empty(), "{what}");
                    }
                }
                Err(e) => {
                    assert!(
                        e.to_string().contains(&format!("run {k} refused")),
                        "{what}: {e}"
                    );
                    refused = true;
                    must_be_full = true;
                }
            }
        }
        if !refused {
            // Every run of the script was refused once.
            assert!(k > 6, "only {} runs", k - 1);
            break;
        }
        age_out(&mut syncer, &mut now);
        assert_eq!(
            table_of(&syncer.executor().fake, Family::Ip),
            fresh(syncer.state(), &config),
            "refusing run {k}"
        );
    }
}

/// A sync whose lock is not taken fails, and says to retry.
#[test]
fn a_lock_not_taken_fails_the_sync() {
    let (state, config) = small();
    let no_lock = Failing {
        no_lock: true,
        ..Failing::default()
    };
    let mut syncer = NftSyncer::new(no_lock, config).unwrap();
    syncer.replace_state(state);
    let e = syncer.sync().unwrap_err();
    assert!(e.retry_after().is_some(), "{e}");
}

/// The table deleted, or flushed, behind the syncer's back: the next sync with
/// the drift check due is full, for `Drift`, and writes the table again; with
/// the table in place the check finds nothing and the sync stays incremental.
#[test]
fn drift_is_repaired() {
    let (state, config) = small();
    let table = Name::new("kube-proxy").unwrap();
    type Tamper = fn(&mut NftFake, &Name);
    let tampers: [(&str, Tamper); 2] = [
        ("deleted", |fake, table| {
            fake.remove_table(Family::Ip, table).unwrap();
        }),
        ("flushed", |fake, table| {
            let mut t = fake.table(Family::Ip, table).unwrap().clone();
            for chain in t.chains.values_mut() {
                chain.rules.clear();
            }
            fake.set_table(t);
        }),
    ];
    for (how, tamper) in tampers {
        let mut syncer = NftSyncer::new(NftFake::new(), config.clone())
            .unwrap()
            .with_drift_check(Some(Duration::from_secs(30)));
        syncer.replace_state(state.clone());
        let mut now = Instant::now();
        assert!(syncer.sync_at(now).unwrap().full);
        endpoints(&mut syncer, 0, &[1]);
        now += Duration::from_secs(31);
        let report = syncer.sync_at(now).unwrap();
        assert!(!report.full, "{how}: in place: {report}");
        assert_eq!(report.drifted, None);
        assert!(!report.transaction.is_empty(), "{how}: the change is sent");

        tamper(syncer.executor_mut(), &table);
        now += Duration::from_secs(10);
        let report = syncer.sync_at(now).unwrap();
        assert!(!report.full, "{how}: the check is not due yet");
        now += Duration::from_secs(30);
        let report = syncer.sync_at(now).unwrap();
        assert_eq!(
            report.full_reason,
            Some(FullReason::Drift),
            "{how}: {report}"
        );
        assert!(report.drifted.is_some(), "{how}");
        age_out(&mut syncer, &mut now);
        assert_eq!(
            table_of(syncer.executor(), Family::Ip),
            fresh(syncer.state(), &config),
            "{how}"
        );
    }
}

/// A drift check that cannot be made does not fail the sync: it is reported,
/// and the sync goes on incrementally.
#[test]
fn a_drift_check_that_fails_is_reported() {
    let (state, config) = small();
    let mut syncer = NftSyncer::new(
        Failing {
            no_check: true,
            ..Failing::default()
        },
        config,
    )
    .unwrap()
    .with_drift_check(Some(Duration::ZERO));
    syncer.replace_state(state);
    let now = Instant::now();
    syncer.sync_at(now).unwrap();
    let report = syncer.sync_at(now + Duration::from_secs(1)).unwrap();
    assert!(!report.full);
    assert!(report.drift_check_error.unwrap().contains("no check"));
}

/// Cleanup removes `kube-proxy` in the families asked, and no other table;
/// with nothing to remove it succeeds.
#[test]
fn cleanup_leaves_foreign_tables_alone() {
    let (state, config) = small();
    let mut fake = NftFake::new();
    for family in [IpFamily::Ipv4, IpFamily::Ipv6] {
        let mut syncer = NftSyncer::new(&mut fake, config.clone().with_ip_family(family)).unwrap();
        syncer.replace_state(state.clone());
        syncer.sync().unwrap();
    }
    let foreign = [
        Ruleset::new(Family::Ip, Name::new("filter").unwrap(), None),
        Ruleset::new(Family::Ip6, Name::new("kube-proxy-other").unwrap(), None),
    ];
    for t in &foreign {
        fake.set_table(t.clone());
    }
    nft_cleanup(&mut fake, &[Family::Ip]).unwrap();
    assert_eq!(table_of(&fake, Family::Ip), "");
    assert_ne!(table_of(&fake, Family::Ip6), "", "ip6 was not asked for");
    nft_cleanup(&mut fake, &[Family::Ip, Family::Ip6]).unwrap();
    let left: String = foreign.iter().map(Ruleset::to_dump).collect();
    assert_eq!(fake.dump(), left);
}

/// In the kernel: a few syncs with churn, then the namespace's table is what a
/// fresh full sync writes in a second namespace (after the stale chains aged);
/// a foreign table is untouched by the syncs and by cleanup.
#[test]
fn churn_in_the_kernel_leaves_the_fresh_table() {
    if !nft_available("churn_in_the_kernel_leaves_the_fresh_table") {
        return;
    }
    let (state, config) = small();
    let (ns, reference) = (Netns::new("nsync-churn"), Netns::new("nsync-ref"));
    let foreign = "table ip foreign {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tcounter\n\t}\n}\n";
    let (ok, out) = ns.run(&["nft", "-f", "-"], foreign);
    assert!(ok, "{out}");
    let list = |ns: &Netns, table: &str| {
        let (ok, out) = ns.run(&["nft", "list", "table", "ip", table], "");
        assert!(ok, "{out}");
        out
    };
    let foreign_before = list(&ns, "foreign");

    // The drift check in every sync: the kernel must find the table in place.
    let mut syncer = NftSyncer::new(nft_in(&ns), config.clone())
        .unwrap()
        .with_drift_check(Some(Duration::ZERO));
    syncer.replace_state(state.clone());
    let mut now = Instant::now();
    let script: [&[u8]; 5] = [&[1, 2], &[2, 3], &[], &[4, 5], &[1]];
    for (step, hosts) in script.iter().enumerate() {
        endpoints(&mut syncer, (step % 3) as u8, hosts);
        if step == 3 {
            syncer.remove_service(&ServiceKey::new("ns1", "svc2"));
        }
        now += Duration::from_millis(700);
        let report = syncer.sync_at(now).unwrap();
        assert_eq!(report.full, step == 0, "step {step}: {report}");
    }
    // The stale chains age for real: the kernel may refuse their deletion
    // before a second has passed (kernels before 6.2).
    std::thread::sleep(svcnat::sync::STALE_CHAIN_AGE);
    age_out(&mut syncer, &mut now);

    let mut first = NftSyncer::new(nft_in(&reference), config).unwrap();
    first.replace_state(syncer.state().clone());
    first.sync().unwrap();
    let canonical = |text: String| {
        svcnat::parse::nft::canonicalize(&svcnat::parse::nft::parse(&text).unwrap()).to_dump()
    };
    assert_eq!(
        canonical(list(&ns, "kube-proxy")),
        canonical(list(&reference, "kube-proxy"))
    );
    assert_eq!(list(&ns, "foreign"), foreign_before);

    // A flushed table is drift, repaired.
    let (ok, out) = ns.run(&["nft", "flush", "table", "ip", "kube-proxy"], "");
    assert!(ok, "{out}");
    now += Duration::from_secs(1);
    let report = syncer.sync_at(now).unwrap();
    assert_eq!(report.full_reason, Some(FullReason::Drift), "{report}");
    std::thread::sleep(svcnat::sync::STALE_CHAIN_AGE);
    age_out(&mut syncer, &mut now);
    assert_eq!(
        canonical(list(&ns, "kube-proxy")),
        canonical(list(&reference, "kube-proxy"))
    );
    assert_eq!(list(&ns, "foreign"), foreign_before);

    nft_cleanup(&mut nft_in(&ns), &[Family::Ip, Family::Ip6]).unwrap();
    let (ok, _) = ns.run(&["nft", "list", "table", "ip", "kube-proxy"], "");
    assert!(!ok, "the table is gone");
    assert_eq!(list(&ns, "foreign"), foreign_before);
}

/// A chain no longer wanted is reported flushed, kept while younger than
/// `STALE_CHAIN_AGE`, then reported deleted; the report's line says so.
#[test]
fn stale_chains_are_flushed_then_deleted() {
    let (state, config) = small();
    let mut syncer = NftSyncer::new(NftFake::new(), config).unwrap();
    syncer.replace_state(state);
    endpoints(&mut syncer, 0, &[1, 2]);
    let start = Instant::now();
    syncer.sync_at(start).unwrap();
    endpoints(&mut syncer, 0, &[1]);
    let report = syncer.sync_at(start).unwrap();
    // The endpoint's chain for each of the service's two ports.
    let gone = report.stale_chains_flushed.clone();
    assert_eq!(gone.len(), 2, "{report}");
    assert!(
        gone.iter().all(|c| c.as_str().contains("10.180.0.2")),
        "{gone:?}"
    );
    assert!(report.stale_chains_deleted.is_empty());
    assert!(
        report
            .to_string()
            .contains("2 stale chains flushed, 0 stale chains deleted")
    );
    let early = syncer.sync_at(start + Duration::from_millis(900)).unwrap();
    assert!(early.delete_stale.is_none() && early.stale_chains_deleted.is_empty());
    let later = syncer
        .sync_at(start + svcnat::sync::STALE_CHAIN_AGE)
        .unwrap();
    assert_eq!(later.stale_chains_deleted, gone);
    assert_eq!(later.operations, 2);
    let table = syncer
        .executor()
        .table(Family::Ip, &Name::new("kube-proxy").unwrap())
        .unwrap();
    assert!(gone.iter().all(|c| !table.chains.contains_key(c)));
}

/// A new config, a request and the resync period each make the next sync
/// full, with their reason; the first reason is the one reported.
#[test]
fn full_syncs_say_why() {
    let (state, config) = small();
    let mut syncer = NftSyncer::new(NftFake::new(), config.clone())
        .unwrap()
        .with_full_resync_period(Some(Duration::from_secs(3600)));
    syncer.replace_state(state);
    let start = Instant::now();
    syncer.sync_at(start).unwrap();
    syncer.set_config(config.with_masquerade_all(true)).unwrap();
    syncer.request_full_sync();
    let report = syncer.sync_at(start).unwrap();
    assert_eq!(report.full_reason, Some(FullReason::ConfigChanged));
    assert!(
        report.to_string().starts_with("full (config changed), "),
        "{report}"
    );
    syncer.request_full_sync();
    let report = syncer.sync_at(start).unwrap();
    assert_eq!(report.full_reason, Some(FullReason::Requested));
    assert!(!syncer.sync_at(start).unwrap().full);
    let report = syncer.sync_at(start + Duration::from_secs(3600)).unwrap();
    assert_eq!(report.full_reason, Some(FullReason::ResyncPeriod));
    let bad = ProxyConfig::default().with_masquerade_bit(40);
    assert!(syncer.set_config(bad).is_err());
    assert!(
        !syncer
            .sync_at(start + Duration::from_secs(3601))
            .unwrap()
            .full
    );
}

/// Watch events reach the nftables syncer as they reach the iptables one.
#[cfg(feature = "k8s")]
#[test]
fn watch_events_apply_to_the_nft_syncer() {
    use k8s_openapi::api::core::v1::Service as K8sService;
    use svcnat::k8s::{Action, Event};
    let mut svc: K8sService = serde_json::from_str(
        r#"{"metadata": {"namespace": "ns1", "name": "svc1"},
            "spec": {"clusterIP": "172.30.0.41", "ports": [{"name": "p80", "port": 80}]}}"#,
    )
    .unwrap();
    let (_, config) = small();
    let mut syncer = NftSyncer::new(NftFake::new(), config).unwrap();
    assert_eq!(
        syncer.apply_k8s(Event::applied(&svc)).unwrap(),
        Action::Upserted
    );
    syncer.sync().unwrap();
    assert!(syncer.executor().dump().contains("172.30.0.41 . tcp . 80"));
    svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    assert_eq!(
        syncer.apply_k8s(Event::applied(&svc)).unwrap(),
        Action::Removed
    );
    let report = syncer.sync().unwrap();
    assert!(!report.full);
    assert!(!syncer.executor().dump().contains("172.30.0.41"));
    assert_eq!(
        syncer.apply_k8s(Event::deleted(&svc)).unwrap(),
        Action::Removed
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the cluster and the config, the drift check finds the table in
    /// place after a sync, and finds a flushed or deleted one.
    #[test]
    fn the_drift_check_sees_a_flush_in_any_table(
        parts in crate::properties::rich_cluster(),
        config in crate::properties::rich_config(),
        delete in any::<bool>(),
    ) {
        let Ok(syncer) = NftSyncer::new(NftFake::new(), config.clone()) else {
            return Ok(());
        };
        let mut syncer = syncer.with_drift_check(Some(Duration::ZERO));
        syncer.replace_state(crate::properties::state_of(&parts));
        let now = Instant::now();
        syncer.sync_at(now).unwrap();
        let in_place = syncer.sync_at(now).unwrap();
        prop_assert!(!in_place.full, "{}", in_place);
        let table = Name::new("kube-proxy").unwrap();
        let fake = syncer.executor_mut();
        if delete {
            fake.remove_table(family(&config), &table).unwrap();
        } else {
            let mut t = fake.table(family(&config), &table).unwrap().clone();
            for chain in t.chains.values_mut() {
                chain.rules.clear();
            }
            fake.set_table(t);
        }
        let report = syncer.sync_at(now).unwrap();
        prop_assert_eq!(report.full_reason, Some(FullReason::Drift));
    }
}

/// The executor's piece size is the syncer's default, and `with_piece_operations`
/// overrides it.
#[test]
fn the_executor_chooses_the_piece_size_unless_told() {
    let sync = |prefers: Option<usize>, told: Option<usize>| {
        let exec = Failing {
            prefers,
            ..Failing::default()
        };
        let mut syncer = NftSyncer::new(exec, crate::fixtures::config()).unwrap();
        if let Some(n) = told {
            syncer = syncer.with_piece_operations(n);
        }
        for i in 0..3 {
            syncer.upsert_service(crate::sync::service_for(i, 0));
        }
        let report = syncer.sync().unwrap();
        assert!(report.full, "{report}");
        (report.pieces, syncer.executor().runs)
    };
    let (whole, _) = sync(None, None);
    assert_eq!(whole, 1, "a small first sync goes whole by default");
    let (cut, runs) = sync(Some(5), None);
    assert!(cut > 3, "{cut} pieces of at most 5 operations");
    assert_eq!(runs, cut);
    assert_eq!(sync(Some(5), Some(0)).0, 1, "told never to cut");
    assert_eq!(sync(None, Some(5)).0, cut);
}
