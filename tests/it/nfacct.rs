//! nfacct counters through the Recorder: with `nfacct_counters` on, the Syncer asks
//! the executor for the counters a payload names before it applies the payload, and
//! writes nothing when the executor cannot provide them.

use svcnat::compile::JumpRule;
use svcnat::exec::{Call, ExecError, Executor, Recorder, RestoreOptions};
use svcnat::model::*;
use svcnat::ruleset::{NfacctCounter, Table};
use svcnat::sync::{SyncError, Syncer};

use crate::fixtures::recorder_tables as tables;
use crate::fixtures::*;

use NfacctCounter::{CtStateInvalidDropped as Invalid, LocalhostNodePortsAccepted as Localhost};

/// kube-proxy's test config (127.0.0.1 among the node IPs, so localhost node ports
/// are on) with the counters.
fn counting() -> ProxyConfig {
    config().with_nfacct_counters(true)
}

fn node_port(i: u8) -> (Service, EndpointSlice) {
    let name = format!("np{i}");
    let mut svc = service("ns1", &name, &format!("172.30.1.{i}"), &[("p80", 80)]);
    svc.service_type = ServiceType::NodePort;
    svc.ports[0].node_port = Some(31000 + u16::from(i));
    let eps = slice("ns1", &name, &[("p80", 80)], vec![ready("10.180.1.1")]);
    (svc, eps)
}

/// The position of each call: `N` for a restore, `J` for a jump rule, `C(..)` for
/// the counters asked for, `S` for a read.
fn calls(rec: &Recorder) -> Vec<String> {
    rec.calls()
        .iter()
        // Every sync takes the lock first; not what these tests are about.
        .filter(|c| !matches!(c, Call::Lock))
        .map(|c| match c {
            Call::Restore { .. } => "N".to_owned(),
            Call::EnsureJump { .. } => "J".to_owned(),
            Call::EnsureNfacct { counters } => format!("C{counters:?}"),
            Call::Save { .. } => "S".to_owned(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn counters_are_ensured_before_the_restore_that_needs_them() {
    let mut syncer = Syncer::new(Recorder::new(), counting()).unwrap();
    let (svc, eps) = node_port(1);
    syncer.upsert_service(svc);
    syncer.upsert_slice(eps);
    let first = syncer.sync().unwrap();
    assert!(first.full);
    // Both counters are in the rules: the INVALID drop and the localhost node port.
    let text = first.payload.to_text();
    assert_eq!(NfacctCounter::named_in(&text), [Invalid, Localhost]);
    let seen = calls(syncer.executor());
    let ensured = format!("C{:?}", [Invalid, Localhost]);
    assert_eq!(
        seen.iter().filter(|c| **c == ensured).count(),
        1,
        "{seen:?}"
    );
    let at = seen.iter().position(|c| *c == ensured).unwrap();
    let first_restore = seen.iter().position(|c| c == "N").unwrap();
    assert!(at < first_restore, "{seen:?}");

    // A partial sync whose payload names no counter does not ask for any.
    let before = calls(syncer.executor()).len();
    syncer.upsert_service(service("ns1", "plain", "172.30.0.9", &[("p80", 80)]));
    syncer.upsert_slice(slice(
        "ns1",
        "plain",
        &[("p80", 80)],
        vec![ready("10.180.0.9")],
    ));
    let partial = syncer.sync().unwrap();
    assert!(!partial.full && !partial.payload.is_empty());
    assert!(NfacctCounter::named_in(&partial.payload.to_text()).is_empty());
    assert_eq!(calls(syncer.executor())[before..], ["N"]);

    // One whose payload rewrites the node-port chain asks for its counter first.
    let before = calls(syncer.executor()).len();
    let (svc, eps) = node_port(2);
    syncer.upsert_service(svc);
    syncer.upsert_slice(eps);
    let partial = syncer.sync().unwrap();
    assert!(!partial.full);
    assert_eq!(
        calls(syncer.executor())[before..],
        [format!("C{:?}", [Localhost]), "N".to_owned()]
    );
}

#[test]
fn without_the_switch_no_counter_is_asked_for() {
    let mut syncer = Syncer::new(Recorder::new(), config()).unwrap();
    let (svc, eps) = node_port(1);
    syncer.upsert_service(svc);
    syncer.upsert_slice(eps);
    let report = syncer.sync().unwrap();
    assert!(NfacctCounter::named_in(&report.payload.to_text()).is_empty());
    assert!(
        !calls(syncer.executor()).iter().any(|c| c.starts_with('C')),
        "{:?}",
        syncer.executor().calls()
    );
}

/// A Recorder whose counters can be made to fail.
struct Counters {
    rec: Recorder,
    fail: bool,
}

impl Executor for Counters {
    fn restore(
        &mut self,
        family: IpFamily,
        payload: &str,
        options: RestoreOptions,
    ) -> Result<(), ExecError> {
        self.rec.restore(family, payload, options)
    }
    fn save(&mut self, family: IpFamily, table: Table) -> Result<String, ExecError> {
        self.rec.save(family, table)
    }
    fn ensure_jump(&mut self, family: IpFamily, jump: &JumpRule) -> Result<(), ExecError> {
        self.rec.ensure_jump(family, jump)
    }
    fn ensure_nfacct(&mut self, counters: &[NfacctCounter]) -> Result<(), ExecError> {
        self.rec.ensure_nfacct(counters)?;
        match counters.first() {
            Some(&counter) if self.fail => Err(ExecError::Nfacct {
                counter,
                source: Box::new(ExecError::Refused("scripted".into())),
            }),
            _ => Ok(()),
        }
    }
}

#[test]
fn a_counter_that_cannot_be_created_fails_the_sync_before_any_rule() {
    // A full sync: the rules are not written, the error names the counter.
    let mut syncer = Syncer::new(
        Counters {
            rec: Recorder::new(),
            fail: true,
        },
        counting(),
    )
    .unwrap();
    let (svc, eps) = node_port(1);
    syncer.upsert_service(svc);
    syncer.upsert_slice(eps);
    let err = syncer.sync().unwrap_err();
    assert!(
        matches!(
            err,
            SyncError::Exec(ExecError::Nfacct {
                counter: Invalid,
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "nfacct counter ct_state_invalid_dropped_pkts is needed by the rules and cannot be \
         created: scripted"
    );
    let rec = &syncer.executor().rec;
    assert!(
        !calls(rec).iter().any(|c| c == "N" || c == "J"),
        "{:?}",
        rec.calls()
    );
    assert!(rec.chains(IpFamily::Ipv4, Table::Nat).is_empty());

    // Once the counters can be made, the sync goes through, in full.
    syncer.executor_mut().fail = false;
    let report = syncer.sync().unwrap();
    assert!(report.full);

    // A partial sync that needs a counter fails the same way and writes nothing...
    let before = tables(&syncer.executor().rec);
    let restores = syncer.executor().rec.payloads().count();
    syncer.executor_mut().fail = true;
    let (svc, eps) = node_port(2);
    syncer.upsert_service(svc);
    syncer.upsert_slice(eps);
    let err = syncer.sync().unwrap_err();
    assert!(
        err.to_string()
            .starts_with("nfacct counter localhost_nps_accepted_pkts "),
        "{err}"
    );
    assert_eq!(syncer.executor().rec.payloads().count(), restores);
    assert_eq!(tables(&syncer.executor().rec), before);
    // ...and the next sync is full, leaving what a fresh full sync leaves.
    syncer.executor_mut().fail = false;
    let recovery = syncer.sync().unwrap();
    assert!(recovery.full);
    let mut fresh = Syncer::new(Recorder::new(), counting()).unwrap();
    fresh.replace_state(syncer.state().clone());
    fresh.sync().unwrap();
    assert_eq!(tables(&syncer.executor().rec), tables(fresh.executor()));
}

/// An embedder's executor that does not implement `ensure_nfacct`.
struct Plain(Recorder);

impl Executor for Plain {
    fn restore(
        &mut self,
        family: IpFamily,
        payload: &str,
        options: RestoreOptions,
    ) -> Result<(), ExecError> {
        self.0.restore(family, payload, options)
    }
    fn save(&mut self, family: IpFamily, table: Table) -> Result<String, ExecError> {
        self.0.save(family, table)
    }
    fn ensure_jump(&mut self, family: IpFamily, jump: &JumpRule) -> Result<(), ExecError> {
        self.0.ensure_jump(family, jump)
    }
}

#[test]
fn an_executor_without_counter_support_says_so_before_writing() {
    let (svc, eps) = node_port(1);
    let mut syncer = Syncer::new(Plain(Recorder::new()), counting()).unwrap();
    syncer.upsert_service(svc.clone());
    syncer.upsert_slice(eps.clone());
    let err = syncer.sync().unwrap_err();
    assert_eq!(
        err.to_string(),
        "nfacct counter ct_state_invalid_dropped_pkts is needed by the rules and cannot be \
         created: ensure_nfacct: not supported by this executor"
    );
    assert_eq!(syncer.executor().0.payloads().count(), 0);
    // Nothing asked for: nothing to support.
    assert!(Plain(Recorder::new()).ensure_nfacct(&[]).is_ok());
    // Without the counters the same executor syncs.
    let mut syncer = Syncer::new(Plain(Recorder::new()), config()).unwrap();
    syncer.upsert_service(svc);
    syncer.upsert_slice(eps);
    syncer.sync().unwrap();
}

#[test]
fn dry_run_and_mutable_references_record_the_counters() {
    let (svc, eps) = node_port(1);
    let mut dry = svcnat::exec::DryRun::default();
    {
        // Through `&mut E`, as an embedder lends its executor.
        let mut syncer = Syncer::new(&mut dry, counting()).unwrap();
        syncer.upsert_service(svc);
        syncer.upsert_slice(eps);
        syncer.sync().unwrap();
    }
    assert_eq!(dry.counters, [Invalid, Localhost]);
    dry.ensure_nfacct(&[Localhost, Invalid]).unwrap();
    assert_eq!(dry.counters, [Invalid, Localhost], "each once");
}
