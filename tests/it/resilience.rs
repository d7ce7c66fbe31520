//! What a sync does when the tables are not what it left, without root: through
//! the Recorder's table model. Drift (flushed, replaced, a jump rule gone), nat
//! before filter, stale chains something else still jumps to, and a sync cut into
//! pieces failing part way. The kernel twins of these tests are in
//! `kernel_resilience`.

use std::time::{Duration, Instant};

use svcnat::exec::{Call, ExecError, Executor, Recorder, RestoreOptions};
use svcnat::model::*;
use svcnat::ruleset::{JumpRule, Table};
use svcnat::sync::{FullReason, SyncError, Syncer};

use crate::fixtures::recorder_tables as tables;
use crate::fixtures::*;

fn svc(i: u8) -> Service {
    service(
        "ns1",
        &format!("svc{i}"),
        &format!("172.30.0.{i}"),
        &[("p80", 80)],
    )
}

fn eps(i: u8, ips: &[&str]) -> EndpointSlice {
    slice(
        "ns1",
        &format!("svc{i}"),
        &[("p80", 80)],
        ips.iter().map(|a| ready(a)).collect(),
    )
}

/// Three services, the second without endpoints (a filter REJECT rule).
fn cluster() -> ClusterState {
    state(
        vec![svc(1), svc(2), svc(3)],
        vec![
            eps(1, &["10.180.0.1", "10.180.0.2"]),
            eps(3, &["10.180.0.3"]),
        ],
    )
}

/// The tables one fresh full sync of `state` leaves in a Recorder.
fn full_sync_tables(
    state: &ClusterState,
) -> std::collections::BTreeMap<(Table, String), Vec<String>> {
    let mut s = Syncer::new(Recorder::new(), config()).unwrap();
    s.replace_state(state.clone());
    assert!(s.sync().unwrap().full);
    tables(s.executor())
}

fn tamper<E: Executor>(syncer: &mut Syncer<E>, payload: &str) {
    syncer
        .executor_mut()
        .restore(IpFamily::Ipv4, payload, RestoreOptions::default())
        .unwrap();
}

fn synced(check: Option<Duration>) -> Syncer<Recorder> {
    let mut syncer = Syncer::new(Recorder::new(), config())
        .unwrap()
        .with_drift_check(check);
    syncer.replace_state(cluster());
    let first = syncer.sync().unwrap();
    assert_eq!(first.full_reason, Some(FullReason::FirstSync));
    syncer
}

/// A table flushed (chains kept, rules gone), a table replaced by one without
/// svcnat's chains, one jump rule deleted: each is found by the next check, whose
/// sync is full, says why, and leaves exactly the full-sync state.
#[test]
fn drift_is_found_and_repaired() {
    let portals =
        "-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES";
    let cases: [(&str, String); 4] = [
        ("nat flushed", "*nat\n-F\nCOMMIT\n".into()),
        ("filter flushed", "*filter\n-F\nCOMMIT\n".into()),
        (
            "nat replaced",
            "*nat\n-F\n-X\n:OTHER - [0:0]\nCOMMIT\n".into(),
        ),
        ("jump rule deleted", format!("*nat\n{portals}\nCOMMIT\n")),
    ];
    let want = full_sync_tables(&cluster());
    for (what, payload) in cases {
        let mut syncer = synced(Some(Duration::ZERO));
        tamper(&mut syncer, &payload);
        assert_ne!(
            tables(syncer.executor()),
            want,
            "{what}: the tamper did nothing"
        );
        let report = syncer.sync().unwrap();
        assert!(report.full, "{what}");
        assert_eq!(report.full_reason, Some(FullReason::Drift), "{what}");
        assert!(report.drifted.is_some(), "{what}");
        assert!(
            report.to_string().starts_with("full (drift), "),
            "{what}: {report}"
        );
        let mut got = tables(syncer.executor());
        // A replaced table keeps what replaced it: the chain OTHER stays.
        got.remove(&(Table::Nat, "OTHER".to_owned()));
        assert_eq!(got, want, "{what}");
        // Repaired: the next check finds nothing.
        let next = syncer.sync().unwrap();
        assert!(!next.full && next.payload.is_empty(), "{what}: {next}");
    }
}

/// The jump rule named in the report is the one that went missing.
#[test]
fn the_report_names_the_rule_that_drifted() {
    let mut syncer = synced(Some(Duration::ZERO));
    tamper(
        &mut syncer,
        "*nat\n-D POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\nCOMMIT\n",
    );
    let report = syncer.sync().unwrap();
    let JumpRule { table, chain, rule } = report.drifted.unwrap();
    assert_eq!(
        (table, chain.as_str(), rule.to_string().as_str()),
        (
            Table::Nat,
            "POSTROUTING",
            "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
        )
    );
}

/// Without a check nothing notices; with a period the check runs only once the
/// period has passed since the last check or full sync.
#[test]
fn the_drift_check_runs_when_due() {
    let mut off = synced(None);
    tamper(&mut off, "*nat\n-F\nCOMMIT\n");
    let report = off.sync().unwrap();
    assert!(!report.full && report.payload.is_empty());

    let start = Instant::now();
    let mut syncer = Syncer::new(Recorder::new(), config())
        .unwrap()
        .with_drift_check(Some(Duration::from_secs(30)));
    syncer.replace_state(cluster());
    assert!(syncer.sync_at(start).unwrap().full);
    tamper(&mut syncer, "*nat\n-F\nCOMMIT\n");
    let early = syncer.sync_at(start + Duration::from_secs(29)).unwrap();
    assert!(!early.full, "checked before the period passed");
    // The period counts from the end of the full sync (a few milliseconds in).
    let due = syncer.sync_at(start + Duration::from_secs(31)).unwrap();
    assert_eq!(due.full_reason, Some(FullReason::Drift));
    // Nothing drifted: the check runs, finds nothing, and waits a period again.
    // (The Recorder's check reads each table with `save`.)
    let saves = |s: &Syncer<Recorder>| {
        s.executor()
            .calls()
            .iter()
            .filter(|c| matches!(c, svcnat::exec::Call::Save { .. }))
            .count()
    };
    let before = saves(&syncer);
    let quiet = syncer.sync_at(start + Duration::from_secs(62)).unwrap();
    assert!(!quiet.full);
    assert!(saves(&syncer) > before, "no check was made");
    let before = saves(&syncer);
    syncer.sync_at(start + Duration::from_secs(63)).unwrap();
    assert_eq!(saves(&syncer), before, "checked again too soon");
}

/// A syncer of `cluster()` with a full resync every hour and no drift check,
/// not synced yet.
fn hourly() -> Syncer<Recorder> {
    let mut syncer = Syncer::new(Recorder::new(), config())
        .unwrap()
        .with_drift_check(None)
        .with_full_resync_period(Some(Duration::from_secs(3600)));
    syncer.replace_state(cluster());
    syncer
}

/// Every reason a sync is full is reported as it happened.
#[test]
fn full_syncs_say_why() {
    let start = Instant::now();
    let mut syncer = hourly();
    let reason = |r: svcnat::sync::SyncReport| r.full_reason;
    assert_eq!(
        reason(syncer.sync_at(start).unwrap()),
        Some(FullReason::FirstSync)
    );
    syncer.request_full_sync();
    assert_eq!(
        reason(syncer.sync_at(start).unwrap()),
        Some(FullReason::Requested)
    );
    syncer.set_config(config().with_comments(false)).unwrap();
    assert_eq!(
        reason(syncer.sync_at(start).unwrap()),
        Some(FullReason::ConfigChanged)
    );
    syncer.executor_mut().fail_next_restores(1);
    syncer.upsert_slice(eps(2, &["10.180.0.9"]));
    assert!(syncer.sync_at(start).is_err());
    assert_eq!(
        reason(syncer.sync_at(start).unwrap()),
        Some(FullReason::AfterFailure)
    );
    assert_eq!(
        reason(syncer.sync_at(start + Duration::from_secs(7200)).unwrap()),
        Some(FullReason::ResyncPeriod)
    );
    assert_eq!(reason(syncer.sync_at(start).unwrap()), None);
}

/// The nat table replaced by a file without svcnat's chains, then a change that
/// touches both tables: the sync fails in nat, which is written first, so filter
/// is left as it was, not ahead of nat; the next sync is full and repairs both.
#[test]
fn a_failure_in_nat_leaves_filter_as_it_was() {
    let mut syncer = synced(None);
    tamper(&mut syncer, "*nat\n-F\n-X\nCOMMIT\n");
    let filter_before: Vec<_> = tables(syncer.executor())
        .into_iter()
        .filter(|((t, _), _)| *t == Table::Filter)
        .collect();
    // svc2 gains an endpoint: its REJECT leaves filter, its chains enter nat.
    syncer.upsert_slice(eps(2, &["10.180.0.9"]));
    let err = syncer.sync().unwrap_err();
    assert_eq!(err.retry_after(), Some(svcnat::sync::RETRY_AFTER));
    let filter_after: Vec<_> = tables(syncer.executor())
        .into_iter()
        .filter(|((t, _), _)| *t == Table::Filter)
        .collect();
    assert_eq!(filter_after, filter_before, "filter went ahead of nat");
    let repair = syncer.sync().unwrap();
    assert_eq!(repair.full_reason, Some(FullReason::AfterFailure));
    let mut want_state = cluster();
    want_state.upsert_slice(eps(2, &["10.180.0.9"]));
    assert_eq!(tables(syncer.executor()), full_sync_tables(&want_state));
}

/// The service chains of the one endpoint of svc3.
fn sep_of_svc3(syncer: &Syncer<Recorder>) -> String {
    tables(syncer.executor())
        .into_iter()
        .find(|((t, name), rules)| {
            *t == Table::Nat
                && name.starts_with("KUBE-SEP-")
                && rules.iter().any(|r| r.contains("10.180.0.3:80"))
        })
        .map(|((_, name), _)| name)
        .expect("svc3 has an endpoint chain")
}

/// A rule svcnat did not write jumps to one of its chains: when the chain goes
/// stale, a partial sync still applies everything else, flushes the chain, keeps
/// it and says so; a full sync keeps it too (it reads the reference from the
/// kernel first); once the foreign rule is gone, the next full sync deletes it.
#[test]
fn a_stale_chain_that_something_jumps_to_never_blocks_a_sync() {
    let mut syncer = synced(None);
    let sep = sep_of_svc3(&syncer);
    tamper(
        &mut syncer,
        &format!("*nat\n:FOREIGN - [0:0]\n-A FOREIGN -j {sep}\nCOMMIT\n"),
    );
    // svc3 loses its endpoint, and svc1 changes too.
    syncer.remove_slice(&ServiceKey::new("ns1", "svc3"), "svc3-slice");
    syncer.upsert_slice(eps(1, &["10.180.0.1"]));
    let partial = syncer.sync().unwrap();
    assert!(!partial.full);
    assert_eq!(partial.kept_chains.len(), 1, "{:?}", partial.kept_chains);
    assert_eq!(partial.kept_chains[0].chain.as_str(), sep);
    assert!(
        partial.kept_chains[0].reason.contains("still referenced"),
        "{}",
        partial.kept_chains[0].reason
    );
    assert!(
        partial.to_string().ends_with(", 1 stale chains kept"),
        "{partial}"
    );
    let mut want_state = cluster();
    want_state.remove_slice(&ServiceKey::new("ns1", "svc3"), "svc3-slice");
    want_state.upsert_slice(eps(1, &["10.180.0.1"]));
    let mut want = full_sync_tables(&want_state);
    want.insert((Table::Nat, "FOREIGN".into()), vec![format!("-j {sep}")]);
    want.insert((Table::Nat, sep.clone()), vec![]);
    assert_eq!(tables(syncer.executor()), want);

    syncer.request_full_sync();
    let full = syncer.sync().unwrap();
    assert_eq!(full.kept_chains.len(), 1);
    assert!(full.kept_chains[0].reason.contains("in FOREIGN"));
    assert_eq!(tables(syncer.executor()), want);

    tamper(&mut syncer, "*nat\n-F FOREIGN\nCOMMIT\n");
    syncer.request_full_sync();
    let clean = syncer.sync().unwrap();
    assert!(clean.kept_chains.is_empty());
    assert!(
        clean.payload.deleted.iter().any(|(_, c)| c.as_str() == sep),
        "{:?}",
        clean.payload.deleted
    );
    want.remove(&(Table::Nat, sep));
    want.insert((Table::Nat, "FOREIGN".into()), vec![]);
    assert_eq!(tables(syncer.executor()), want);
}

/// Chains named like svcnat's but not with its hash (another program's
/// `KUBE-SEP-MYOWNCHAIN`) are never flushed or deleted, even when nothing
/// jumps to them.
#[test]
fn chains_svcnat_did_not_name_are_left_alone() {
    let mut syncer = Syncer::new(Recorder::new(), config()).unwrap();
    syncer.replace_state(cluster());
    tamper(
        &mut syncer,
        "*nat\n:KUBE-SEP-MYOWNCHAIN - [0:0]\n:KUBE-SVC-LOWERcase1234567 - [0:0]\n-A KUBE-SEP-MYOWNCHAIN -j RETURN\nCOMMIT\n",
    );
    let first = syncer.sync().unwrap();
    assert!(
        first.payload.deleted.is_empty(),
        "{:?}",
        first.payload.deleted
    );
    let t = tables(syncer.executor());
    assert_eq!(
        t[&(Table::Nat, "KUBE-SEP-MYOWNCHAIN".to_owned())],
        ["-j RETURN"]
    );
    assert!(t.contains_key(&(Table::Nat, "KUBE-SVC-LOWERcase1234567".to_owned())));
}

/// An executor that asks for pieces of three chains and can be told to fail its
/// k-th restore, the way an executor that wraps another does.
struct Pieces {
    inner: Recorder,
    fail_at: Option<usize>,
    restores: usize,
}

impl Executor for Pieces {
    fn restore(
        &mut self,
        family: IpFamily,
        payload: &str,
        options: RestoreOptions,
    ) -> Result<(), ExecError> {
        self.restores += 1;
        if self.fail_at == Some(self.restores) {
            return Err(ExecError::Refused("the k-th piece fails".into()));
        }
        self.inner.restore(family, payload, options)
    }
    fn save(&mut self, family: IpFamily, table: Table) -> Result<String, ExecError> {
        self.inner.save(family, table)
    }
    fn ensure_jump(&mut self, family: IpFamily, jump: &JumpRule) -> Result<(), ExecError> {
        self.inner.ensure_jump(family, jump)
    }
    fn chains_per_restore(&mut self, _: IpFamily) -> Option<usize> {
        Some(3)
    }
}

/// A sync cut into pieces that fails at any piece leaves a state the next sync
/// (a full one) turns into exactly the full-sync state, with no chain left over.
#[test]
fn a_failure_between_pieces_is_repaired_by_the_next_sync() {
    let before = cluster();
    let mut after = state(
        vec![svc(1), svc(3), svc(4), svc(5)],
        vec![
            eps(1, &["10.180.0.5"]),
            eps(3, &["10.180.0.3", "10.180.0.6"]),
            eps(4, &["10.180.0.7", "10.180.0.8"]),
            eps(5, &["10.180.0.1"]),
        ],
    );
    after.upsert_service(svc(5));
    let want = full_sync_tables(&after);
    let mut k = 1;
    loop {
        let mut syncer = Syncer::new(
            Pieces {
                inner: Recorder::new(),
                fail_at: None,
                restores: 0,
            },
            config(),
        )
        .unwrap();
        syncer.replace_state(before.clone());
        syncer.sync().unwrap();
        let pieces_before = syncer.executor().restores;
        assert!(pieces_before > 2, "the first sync was not cut");
        syncer.executor_mut().fail_at = Some(pieces_before + k);
        syncer.replace_state(after.clone());
        match syncer.sync() {
            Err(SyncError::Exec(_)) => {}
            // Past the last piece: nothing failed, and the test has seen them all.
            Ok(_) => {
                assert!(k > 1);
                break;
            }
            Err(other) => panic!("{other}"),
        }
        let repair = syncer.sync().unwrap();
        assert_eq!(repair.full_reason, Some(FullReason::AfterFailure));
        assert_eq!(tables(&syncer.executor().inner), want, "piece {k} failed");
        k += 1;
    }
}

/// Restored in pieces, a full sync writes only the nat chains the kernel does not
/// already hold as they should be: a resync of an untouched table writes none of
/// them, and one chain changed behind svcnat's back is the one written again.
#[test]
fn a_full_sync_in_pieces_writes_only_what_differs() {
    let mut syncer = Syncer::new(
        Pieces {
            inner: Recorder::new(),
            fail_at: None,
            restores: 0,
        },
        config(),
    )
    .unwrap()
    .with_drift_check(None);
    syncer.replace_state(cluster());
    let first = syncer.sync().unwrap();
    let want = tables(&syncer.executor().inner);
    let nat_written = |r: &svcnat::sync::SyncReport| {
        r.payload
            .written
            .iter()
            .filter(|(t, _)| *t == Table::Nat)
            .count()
    };
    assert!(nat_written(&first) > 5);

    syncer.request_full_sync();
    let resync = syncer.sync().unwrap();
    assert!(resync.full);
    assert_eq!(nat_written(&resync), 0, "{:?}", resync.payload.written);
    assert_eq!(tables(&syncer.executor().inner), want);

    // One endpoint chain flushed by someone else: the next full sync writes it.
    let sep = sep_of_svc3_in(&syncer.executor().inner);
    syncer
        .executor_mut()
        .inner
        .restore(
            IpFamily::Ipv4,
            &format!("*nat\n-F {sep}\nCOMMIT\n"),
            RestoreOptions::default(),
        )
        .unwrap();
    syncer.request_full_sync();
    let repair = syncer.sync().unwrap();
    let written: Vec<String> = repair
        .payload
        .written
        .iter()
        .filter(|(t, _)| *t == Table::Nat)
        .map(|(_, c)| c.to_string())
        .collect();
    assert_eq!(written, [sep]);
    assert_eq!(tables(&syncer.executor().inner), want);
}

fn sep_of_svc3_in(rec: &Recorder) -> String {
    tables(rec)
        .into_iter()
        .find(|((t, name), rules)| {
            *t == Table::Nat
                && name.starts_with("KUBE-SEP-")
                && rules.iter().any(|r| r.contains("10.180.0.3:80"))
        })
        .map(|((_, name), _)| name)
        .expect("svc3 has an endpoint chain")
}

// Found by a review of this changes.

fn restores(rec: &Recorder) -> usize {
    rec.calls()
        .iter()
        .filter(|c| matches!(c, Call::Restore { .. }))
        .count()
}

const STALE: &str = "KUBE-SEP-AAAAAAAAAAAAAAAA";

/// A `-j` inside a quoted comment is part of the comment: the foreign rule's real
/// target is read from the dump, and its stale chain kept from the plan on, in
/// one restore (it used to be planned for deletion, fail, and cost the whole
/// payload a second time).
#[test]
fn a_dash_j_inside_a_comment_hides_the_real_target() {
    let mut syncer = Syncer::new(Recorder::new(), config())
        .unwrap()
        .with_drift_check(None);
    syncer.replace_state(cluster());
    syncer.sync().unwrap();
    tamper(
        &mut syncer,
        &format!(
            "*nat\n:{STALE} - [0:0]\n:FOREIGN - [0:0]\n\
             -A FOREIGN -m comment --comment \"see -j docs\" -j {STALE}\nCOMMIT\n"
        ),
    );
    let before = restores(syncer.executor());
    syncer.request_full_sync();
    let full = syncer.sync().unwrap();
    assert_eq!(full.kept_chains.len(), 1, "{:?}", full.kept_chains);
    // What a correct reading of the dump gives: kept from the plan, one restore.
    assert!(
        full.kept_chains[0].reason.contains("in FOREIGN"),
        "kept only after a failed restore: {}",
        full.kept_chains[0].reason
    );
    assert_eq!(restores(syncer.executor()) - before, 1);
}

/// A chain kept because a foreign rule jumps to it is tried again in a restore of
/// its own, never in the sync's own restore, and less and less often: after
/// DELETE_RETRY, then twice as long after each try that fails.
#[test]
fn a_kept_chain_costs_a_failed_restore_every_minute_forever() {
    let start = Instant::now();
    let mut syncer = Syncer::new(Recorder::new(), config())
        .unwrap()
        .with_drift_check(None);
    syncer.replace_state(cluster());
    syncer.sync_at(start).unwrap();
    tamper(
        &mut syncer,
        &format!("*nat\n:{STALE} - [0:0]\n:FOREIGN - [0:0]\n-A FOREIGN -j {STALE}\nCOMMIT\n"),
    );
    syncer.request_full_sync();
    let full = syncer.sync_at(start).unwrap();
    assert_eq!(full.kept_chains.len(), 1);
    let mut per_sync = Vec::new();
    for k in 1..=5u64 {
        let before = restores(syncer.executor());
        // A real change every time (an endpoint of svc1 moves).
        syncer.upsert_slice(eps(1, &["10.180.0.1", &format!("10.180.1.{k}")]));
        syncer.sync_at(start + Duration::from_secs(61 * k)).unwrap();
        per_sync.push(restores(syncer.executor()) - before);
    }
    // Tries at 61 s (then wait 120 s) and 183 s (then wait 240 s).
    assert_eq!(per_sync, [2, 1, 2, 1, 1]);
}

/// A Recorder that takes `delay` per restore: a full sync that takes longer than
/// the drift-check period.
struct Slow {
    inner: Recorder,
    delay: Duration,
    checks: usize,
}

impl Executor for Slow {
    fn restore(&mut self, f: IpFamily, p: &str, o: RestoreOptions) -> Result<(), ExecError> {
        std::thread::sleep(self.delay);
        self.inner.restore(f, p, o)
    }
    fn save(&mut self, f: IpFamily, t: Table) -> Result<String, ExecError> {
        self.inner.save(f, t)
    }
    fn ensure_jump(&mut self, f: IpFamily, j: &JumpRule) -> Result<(), ExecError> {
        self.inner.ensure_jump(f, j)
    }
    fn first_missing_rule(
        &mut self,
        f: IpFamily,
        r: &[JumpRule],
    ) -> Result<Option<usize>, ExecError> {
        self.checks += 1;
        self.inner.first_missing_rule(f, r)
    }
}

/// The drift check's period counts from the end of a full sync: one longer than
/// the period (30k services: 65 s nft, 74 s legacy, against 30 s) is not followed
/// at once by a check of the canaries it has just written (2.0 s on legacy).
#[test]
fn a_long_full_sync_is_followed_at_once_by_a_drift_check() {
    let mut syncer = Syncer::new(
        Slow {
            inner: Recorder::new(),
            delay: Duration::from_millis(300),
            checks: 0,
        },
        config(),
    )
    .unwrap()
    .with_drift_check(Some(Duration::from_millis(200)));
    syncer.replace_state(cluster());
    assert!(syncer.sync().unwrap().full);
    let report = syncer.sync().unwrap();
    assert!(!report.full);
    assert_eq!(
        syncer.executor().checks,
        0,
        "checked right after the full sync"
    );
}

/// An executor that cannot read tables back (a write-only transport) syncs as it
/// always did: the drift check, on by default, needs `save` through the default
/// `first_missing_rule`; unsupported, it is not made, and no sync fails for it.
struct WriteOnly(Recorder);

impl Executor for WriteOnly {
    fn restore(&mut self, f: IpFamily, p: &str, o: RestoreOptions) -> Result<(), ExecError> {
        self.0.restore(f, p, o)
    }
    fn save(&mut self, _: IpFamily, _: Table) -> Result<String, ExecError> {
        Err(ExecError::Unsupported("save"))
    }
    fn ensure_jump(&mut self, f: IpFamily, j: &JumpRule) -> Result<(), ExecError> {
        self.0.ensure_jump(f, j)
    }
}

#[test]
fn an_executor_without_save_syncs_without_a_drift_check() {
    let start = Instant::now();
    let mut syncer = Syncer::new(WriteOnly(Recorder::new()), config()).unwrap();
    syncer.replace_state(cluster());
    assert!(syncer.sync_at(start).unwrap().full);
    syncer.upsert_slice(eps(1, &["10.180.0.9"]));
    let later = syncer.sync_at(start + Duration::from_secs(31));
    let later = later.unwrap_or_else(|e| panic!("{e}"));
    assert!(!later.full && later.drift_check_error.is_none(), "{later}");
}

/// An executor whose drift check fails (a lock held elsewhere, say): the sync
/// goes on, says why there was no check, and the next sync checks again.
struct CheckFails(Recorder, usize);

impl Executor for CheckFails {
    fn restore(&mut self, f: IpFamily, p: &str, o: RestoreOptions) -> Result<(), ExecError> {
        self.0.restore(f, p, o)
    }
    fn save(&mut self, f: IpFamily, t: Table) -> Result<String, ExecError> {
        self.0.save(f, t)
    }
    fn ensure_jump(&mut self, f: IpFamily, j: &JumpRule) -> Result<(), ExecError> {
        self.0.ensure_jump(f, j)
    }
    fn first_missing_rule(
        &mut self,
        _: IpFamily,
        _: &[JumpRule],
    ) -> Result<Option<usize>, ExecError> {
        self.1 += 1;
        Err(ExecError::Refused("the xtables lock is held".into()))
    }
}

#[test]
fn a_drift_check_that_fails_does_not_fail_the_sync() {
    let mut syncer = Syncer::new(CheckFails(Recorder::new(), 0), config())
        .unwrap()
        .with_drift_check(Some(Duration::ZERO));
    syncer.replace_state(cluster());
    assert!(syncer.sync().unwrap().full);
    syncer.upsert_slice(eps(1, &["10.180.0.9"]));
    let report = syncer.sync().unwrap();
    assert!(!report.full && !report.payload.is_empty());
    assert_eq!(
        report.drift_check_error.as_deref(),
        Some("the xtables lock is held")
    );
    let again = syncer.sync().unwrap();
    assert!(!again.full);
    assert_eq!(syncer.executor().1, 2, "the check was not tried again");
}

struct PiecesOf2(Recorder);

impl Executor for PiecesOf2 {
    fn restore(&mut self, f: IpFamily, p: &str, o: RestoreOptions) -> Result<(), ExecError> {
        self.0.restore(f, p, o)
    }
    fn save(&mut self, f: IpFamily, t: Table) -> Result<String, ExecError> {
        self.0.save(f, t)
    }
    fn ensure_jump(&mut self, f: IpFamily, j: &JumpRule) -> Result<(), ExecError> {
        self.0.ensure_jump(f, j)
    }
    fn chains_per_restore(&mut self, _: IpFamily) -> Option<usize> {
        Some(2)
    }
}

/// Sanity: tampers of every kind, then a full sync in pieces (with
/// `without_unchanged`): the tables end as a fresh full sync leaves them.
#[test]
fn tampered_tables_are_repaired_by_a_full_sync_in_pieces() {
    let fresh = {
        let mut s = Syncer::new(Recorder::new(), config()).unwrap();
        s.replace_state(cluster());
        s.sync().unwrap();
        tables(s.executor())
    };
    let svc_of_1 = fresh
        .iter()
        .find(|((t, n), r)| *t == Table::Nat && n.starts_with("KUBE-SVC-") && r.len() == 2)
        .map(|((_, n), r)| (n.clone(), r.clone()))
        .unwrap();
    let (svc1, rules) = svc_of_1;
    let reversed: String = rules
        .iter()
        .rev()
        .map(|r| format!("-A {svc1} {r}\n"))
        .collect();
    let tampers = [
        format!("*nat\n:{svc1} - [0:0]\n{reversed}COMMIT\n"),
        {
            let svcs = &fresh[&(Table::Nat, "KUBE-SERVICES".to_owned())];
            let rest: String = svcs[1..].iter().map(|r| format!("-A KUBE-SERVICES {r}\n")).collect();
            format!("*nat\n:KUBE-SERVICES - [0:0]\n{rest}COMMIT\n")
        },
        "*nat\n:KUBE-SVC-BBBBBBBBBBBBBBBB - [0:0]\n-A KUBE-SVC-BBBBBBBBBBBBBBBB -j RETURN\nCOMMIT\n".to_owned(),
        "*nat\n:KUBE-SEP-CCCCCCCCCCCCCCCC - [0:0]\n:KUBE-SVC-DDDDDDDDDDDDDDDD - [0:0]\n:FOREIGN - [0:0]\n\
         -A KUBE-SVC-DDDDDDDDDDDDDDDD -j KUBE-SEP-CCCCCCCCCCCCCCCC\n\
         -A FOREIGN -j KUBE-SVC-DDDDDDDDDDDDDDDD\nCOMMIT\n".to_owned(),
        "*nat\n-F KUBE-MARK-MASQ\nCOMMIT\n".to_owned(),
        "*nat\n-A KUBE-POSTROUTING -j RETURN\nCOMMIT\n".to_owned(),
        "*nat\n-F KUBE-PROXY-CANARY\nCOMMIT\n".to_owned(),
    ];
    for tamper_text in tampers {
        let mut syncer = Syncer::new(PiecesOf2(Recorder::new()), config())
            .unwrap()
            .with_drift_check(None);
        syncer.replace_state(cluster());
        syncer.sync().unwrap();
        tamper(&mut syncer, &tamper_text);
        syncer.request_full_sync();
        let report = syncer.sync().unwrap();
        let mut got = tables(&syncer.executor().0);
        got.retain(|(_, n), _| !n.starts_with("FOREIGN"));
        if tamper_text.contains("FOREIGN") {
            assert_eq!(
                got.remove(&(Table::Nat, "KUBE-SVC-DDDDDDDDDDDDDDDD".into())),
                Some(vec![])
            );
            assert_eq!(report.kept_chains.len(), 1, "{:?}", report.kept_chains);
        }
        assert_eq!(got, fresh, "{tamper_text}");
    }
}

/// How many times the syncer has read the filter table.
fn filter_saves(syncer: &Syncer<Recorder>) -> usize {
    syncer
        .executor()
        .calls()
        .iter()
        .filter(|c| {
            matches!(
                c,
                Call::Save {
                    table: Table::Filter,
                    ..
                }
            )
        })
        .count()
}

/// The filter reads one sync makes.
fn filter_saves_of(syncer: &mut Syncer<Recorder>, now: Instant) -> (Option<FullReason>, usize) {
    let before = filter_saves(syncer);
    let reason = syncer.sync_at(now).unwrap().full_reason;
    (reason, filter_saves(syncer) - before)
}

/// A full sync plans the filter rules it holds while nat changes over the
/// kernel's filter table: read (an `iptables-save -t filter`, which on nft
/// fetches every table) only when the syncer does not know it, on the first
/// sync, after a failure and after drift; remembered on a requested or periodic
/// resync and a config change after a successful sync.
#[test]
fn a_full_sync_reads_the_filter_table_only_when_it_does_not_know_it() {
    let start = Instant::now();
    let mut syncer = hourly();
    let first = filter_saves_of(&mut syncer, start);
    assert_eq!(first, (Some(FullReason::FirstSync), 1));
    syncer.request_full_sync();
    let requested = filter_saves_of(&mut syncer, start);
    assert_eq!(requested, (Some(FullReason::Requested), 0));
    let periodic = filter_saves_of(&mut syncer, start + Duration::from_secs(7200));
    assert_eq!(periodic, (Some(FullReason::ResyncPeriod), 0));
    syncer.set_config(config().with_masquerade_bit(13)).unwrap();
    let changed = filter_saves_of(&mut syncer, start + Duration::from_secs(7200));
    assert_eq!(changed, (Some(FullReason::ConfigChanged), 0));

    // A partial sync that fails: the next sync reads.
    syncer.executor_mut().fail_next_restores(1);
    syncer.upsert_slice(eps(2, &["10.180.0.9"]));
    assert!(syncer.sync_at(start + Duration::from_secs(7200)).is_err());
    let after_failure = filter_saves_of(&mut syncer, start + Duration::from_secs(7200));
    assert_eq!(after_failure, (Some(FullReason::AfterFailure), 1));
    // A full sync that fails too.
    syncer.request_full_sync();
    syncer.executor_mut().fail_next_restores(1);
    assert!(syncer.sync_at(start + Duration::from_secs(7200)).is_err());
    let after_failure = filter_saves_of(&mut syncer, start + Duration::from_secs(7200));
    assert_eq!(after_failure, (Some(FullReason::AfterFailure), 1));

    // Drift: the check (which reads each table once, in the Recorder) finds
    // the filter table flushed, and the full sync reads it again.
    let mut syncer = syncer.with_drift_check(Some(Duration::ZERO));
    let quiet = filter_saves_of(&mut syncer, start + Duration::from_secs(7200));
    assert_eq!(quiet, (None, 1), "the check's read only");
    tamper(&mut syncer, "*filter\n-F\nCOMMIT\n");
    let drift = filter_saves_of(&mut syncer, start + Duration::from_secs(7200));
    assert_eq!(
        drift,
        (Some(FullReason::Drift), 2),
        "the check's read and the sync's"
    );
}

/// What a full sync holds while nat changes is the same whether it read the
/// kernel's filter table or remembered it: a syncer that changes its
/// masquerade bit writes the payload a restarted one, reading the tables,
/// writes for the same change.
#[test]
fn a_remembered_filter_table_plans_what_a_read_one_does() {
    let mut syncer = synced(None);
    let tables_before = syncer.executor().clone();
    let new_config = config().with_masquerade_bit(13);
    syncer.set_config(new_config.clone()).unwrap();
    let remembered = syncer.sync().unwrap();
    let mut restarted = Syncer::new(tables_before, new_config)
        .unwrap()
        .with_drift_check(None);
    restarted.replace_state(cluster());
    let read = restarted.sync().unwrap();
    assert_eq!(read.full_reason, Some(FullReason::FirstSync));
    // Both hold both bits' ACCEPTs in KUBE-FORWARD before nat.
    let first_section = |text: &str| text.split("COMMIT\n").next().unwrap().to_owned();
    let held = first_section(remembered.payload.text());
    assert!(held.contains("0x4000/0x4000 -j ACCEPT") && held.contains("0x2000/0x2000 -j ACCEPT"));
    assert_eq!(held, first_section(read.payload.text()));
    assert_eq!(remembered.payload.text(), read.payload.text());
}
