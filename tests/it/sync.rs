//! Incremental sync through the Recorder's table model: partial syncs leave the
//! state a full sync would, failures recover, payloads stay small.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use svcnat::exec::{Call, ExecError, Executor, IptablesRestore, Recorder};
use svcnat::model::*;
use svcnat::ruleset::Table;
use svcnat::sync::{FlowDestination, StaleFlow, SyncError, Syncer, plan};

use crate::fixtures::*;

use crate::fixtures::recorder_tables as tables;

/// The tables a single full sync of `state` leaves in a fresh model.
fn full_sync_tables(state: &ClusterState) -> BTreeMap<(Table, String), Vec<String>> {
    let mut syncer = Syncer::new(Recorder::new(), config()).unwrap();
    syncer.replace_state(state.clone());
    let report = syncer.sync().unwrap();
    assert!(report.full);
    tables(syncer.executor())
}

fn svc(i: u8, ports: &[(&str, u16)]) -> Service {
    service("ns1", &format!("svc{i}"), &format!("172.30.0.{i}"), ports)
}

fn eps(svc_name: &str, ips: &[&str]) -> EndpointSlice {
    slice(
        "ns1",
        svc_name,
        &[("p80", 80)],
        ips.iter().map(|i| ready(i)).collect(),
    )
}

#[test]
fn first_sync_is_full_then_partial_and_noop_is_empty() {
    let mut syncer = Syncer::new(Recorder::new(), config()).unwrap();
    syncer.upsert_service(svc(1, &[("p80", 80)]));
    syncer.upsert_slice(eps("svc1", &["10.180.0.1"]));
    let first = syncer.sync().unwrap();
    assert!(first.full);
    assert_eq!(
        as_compiled(first.payload.text()),
        render(syncer.state(), &config())
    );
    // Nat first, and the canaries in both tables.
    assert!(first.payload.text().starts_with("*nat\n"));
    assert_eq!(
        first
            .payload
            .text()
            .matches(
                "-A KUBE-PROXY-CANARY -m comment --comment \"svcnat drift canary\" -j RETURN\n"
            )
            .count(),
        2
    );
    assert_eq!(first.full_reason, Some(svcnat::sync::FullReason::FirstSync));
    // Jump rules were ensured after the restore.
    let jumps = syncer
        .executor()
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::EnsureJump { .. }))
        .count();
    assert_eq!(jumps, svcnat::compile::jump_rules(&config()).unwrap().len());

    // The same objects again: nothing to do, nothing sent.
    syncer.upsert_service(svc(1, &[("p80", 80)]));
    syncer.upsert_slice(eps("svc1", &["10.180.0.1"]));
    let restores = syncer.executor().payloads().count();
    let noop = syncer.sync().unwrap();
    assert!(!noop.full);
    assert!(noop.payload.is_empty());
    assert_eq!(noop.bytes, 0);
    assert_eq!(
        syncer.executor().payloads().count(),
        restores,
        "an empty payload is not applied"
    );

    // One more endpoint: only the service chain and the new endpoint chain.
    syncer.upsert_slice(eps("svc1", &["10.180.0.1", "10.180.0.2"]));
    let partial = syncer.sync().unwrap();
    assert!(!partial.full);
    let written: Vec<String> = partial
        .payload
        .written
        .iter()
        .map(|(_, c)| c.to_string())
        .collect();
    assert_eq!(written.len(), 2, "{written:?}");
    assert!(
        written[0].starts_with("KUBE-SVC-") && written[1].starts_with("KUBE-SEP-"),
        "{written:?}"
    );
    assert_eq!(tables(syncer.executor()), full_sync_tables(syncer.state()));
}

#[test]
fn deleting_a_service_deletes_its_chains_and_only_those() {
    let mut rec = Recorder::new();
    // Someone else's chain and rule in the same tables.
    rec.restore(
        IpFamily::Ipv4,
        "*nat\n:MY-CHAIN - [0:0]\n-A MY-CHAIN -j RETURN\n-A PREROUTING -j MY-CHAIN\nCOMMIT\n",
        Default::default(),
    )
    .unwrap();
    let mut syncer = Syncer::new(rec, config()).unwrap();
    syncer.upsert_service(svc(1, &[("p80", 80)]));
    syncer.upsert_slice(eps("svc1", &["10.180.0.1"]));
    syncer.upsert_service(svc(2, &[("p80", 80)]));
    syncer.upsert_slice(eps("svc2", &["10.180.0.2"]));
    syncer.sync().unwrap();
    syncer.remove_service(&ServiceKey::new("ns1", "svc2"));
    syncer.remove_slice(&ServiceKey::new("ns1", "svc2"), "svc2-slice");
    let report = syncer.sync().unwrap();
    assert_eq!(
        report.payload.chains_deleted(),
        2,
        "{}",
        report.payload.to_text()
    );
    assert!(report.payload.to_text().contains("-X KUBE-SVC-"));
    let rec = syncer.executor();
    assert_eq!(
        rec.rules(IpFamily::Ipv4, Table::Nat, "MY-CHAIN").unwrap(),
        ["-j RETURN"]
    );
    assert!(
        rec.rules(IpFamily::Ipv4, Table::Nat, "PREROUTING")
            .unwrap()
            .contains(&"-j MY-CHAIN".to_owned())
    );
    let mut expected = full_sync_tables(syncer.state());
    expected.insert((Table::Nat, "MY-CHAIN".into()), vec!["-j RETURN".into()]);
    expected
        .get_mut(&(Table::Nat, "PREROUTING".into()))
        .unwrap()
        .push("-j MY-CHAIN".into());
    assert_eq!(tables(rec), expected);
}

#[test]
fn first_full_sync_deletes_stale_service_chains_of_an_earlier_run() {
    let mut rec = Recorder::new();
    rec.restore(
        IpFamily::Ipv4,
        "*nat\n:KUBE-SVC-OLDOLDOLDOLDOLDO - [0:0]\n:KUBE-SEP-OLDOLDOLDOLDOLDO - [0:0]\n:KEEP-ME - [0:0]\n-A KUBE-SVC-OLDOLDOLDOLDOLDO -j KUBE-SEP-OLDOLDOLDOLDOLDO\nCOMMIT\n",
        Default::default(),
    )
    .unwrap();
    let mut syncer = Syncer::new(rec, config()).unwrap();
    syncer.upsert_service(svc(1, &[("p80", 80)]));
    let report = syncer.sync().unwrap();
    assert_eq!(report.payload.chains_deleted(), 2);
    let chains = syncer.executor().chains(IpFamily::Ipv4, Table::Nat);
    assert!(!chains.iter().any(|c| c.contains("OLD")), "{chains:?}");
    assert!(chains.contains(&"KEEP-ME".to_owned()));
}

#[test]
fn executor_failure_is_typed_and_the_next_sync_is_full() {
    let mut syncer = Syncer::new(Recorder::new(), config()).unwrap();
    syncer.upsert_service(svc(1, &[("p80", 80)]));
    syncer.upsert_slice(eps("svc1", &["10.180.0.1"]));
    syncer.sync().unwrap();

    syncer.upsert_slice(eps("svc1", &["10.180.0.1", "10.180.0.2"]));
    syncer.executor_mut().fail_next_restores(1);
    let err = syncer.sync().unwrap_err();
    assert!(
        matches!(err, SyncError::Exec(ExecError::Refused(_))),
        "{err}"
    );

    // Nothing else changed, yet the recovery sync is full and leaves the full state.
    let recovery = syncer.sync().unwrap();
    assert!(recovery.full);
    assert_eq!(tables(syncer.executor()), full_sync_tables(syncer.state()));
    let next = syncer.sync().unwrap();
    assert!(!next.full && next.payload.is_empty());
}

#[test]
fn failure_of_the_real_binary_reports_binary_status_stderr_and_payload() {
    // The prefix stands in for the binary: it ignores it and fails like iptables-restore.
    // It would fail the lock's `readlink` of the namespace too: the lock is off.
    let exec = IptablesRestore::new(svcnat::exec::Backend::Nft)
        .with_command_prefix([
            "sh",
            "-c",
            "cat >/dev/null; echo 'iptables-restore: line 3 failed' >&2; exit 4",
            "sh",
        ])
        .with_lock_dir(None);
    let mut syncer = Syncer::new(exec, config()).unwrap();
    syncer.upsert_service(svc(1, &[("p80", 80)]));
    match syncer.sync().unwrap_err() {
        SyncError::Exec(ExecError::Failed {
            binary,
            args,
            status,
            stderr,
            payload,
        }) => {
            assert_eq!(binary, "iptables-nft-restore");
            assert!(args.contains(&"--noflush".to_owned()), "{args:?}");
            assert_eq!(status, Some(4));
            assert_eq!(stderr, "iptables-restore: line 3 failed");
            assert!(payload.unwrap().starts_with("*nat\n"));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn periodic_full_resync() {
    let mut syncer = Syncer::new(Recorder::new(), config())
        .unwrap()
        .with_full_resync_period(Some(Duration::from_secs(3600)));
    let t0 = Instant::now();
    assert!(syncer.sync_at(t0).unwrap().full);
    assert!(!syncer.sync_at(t0 + Duration::from_secs(60)).unwrap().full);
    assert!(syncer.sync_at(t0 + Duration::from_secs(3600)).unwrap().full);
}

#[test]
fn stale_udp_flows() {
    let udp = Service {
        ports: vec![ServicePort::tcp("dns", 53).with_protocol(Protocol::Udp)],
        ..service("ns1", "dns", "172.30.0.10", &[])
    };
    let slice_with = |ips: &[&str]| {
        let mut s = slice("ns1", "dns", &[], ips.iter().map(|i| ready(i)).collect());
        s.ports.push(EndpointPort {
            name: "dns".into(),
            protocol: Protocol::Udp,
            port: 5353,
        });
        s
    };
    let mut syncer = Syncer::new(Recorder::new(), config()).unwrap();
    syncer.upsert_service(udp);
    syncer.sync().unwrap();
    // Gaining endpoints: entries made while the service had none are stale.
    syncer.upsert_slice(slice_with(&["10.180.0.1", "10.180.0.2"]));
    let gained = syncer.sync().unwrap();
    let dest = FlowDestination::Service("172.30.0.10:53".parse().unwrap());
    assert_eq!(
        gained.stale_flows,
        vec![StaleFlow {
            protocol: Protocol::Udp,
            destination: dest,
            endpoint: None
        }]
    );
    // Losing one: flows DNATed to it are stale.
    syncer.upsert_slice(slice_with(&["10.180.0.2"]));
    let lost = syncer.sync().unwrap();
    assert_eq!(
        lost.stale_flows,
        vec![StaleFlow {
            protocol: Protocol::Udp,
            destination: dest,
            endpoint: Some(ip("10.180.0.1"))
        }]
    );
}

#[test]
fn thousand_services_one_endpoint_change_is_under_one_percent() {
    let mut state = ClusterState::new();
    for i in 0..1000u32 {
        let name = format!("svc{i}");
        let cluster_ip = std::net::Ipv4Addr::from(0xac1e_0000 + i);
        state.upsert_service(
            Service::cluster_ip("bench", name.clone(), cluster_ip.into())
                .with_port(ServicePort::tcp("http", 80)),
        );
        let mut s = EndpointSlice::new("bench", name.clone(), format!("{name}-1"), IpFamily::Ipv4)
            .with_port(EndpointPort::tcp("http", 8080));
        for j in 0..3u32 {
            s = s.with_endpoint(Endpoint::ready(
                std::net::Ipv4Addr::from(0x0ab4_0000 + i * 4 + j).into(),
            ));
        }
        state.upsert_slice(s);
    }
    let mut syncer = Syncer::new(Recorder::new(), config()).unwrap();
    syncer.replace_state(state.clone());
    let full = syncer.sync().unwrap();
    assert!(full.full);

    let mut changed = state
        .slices_of(&ServiceKey::new("bench", "svc500"))
        .next()
        .unwrap()
        .clone();
    changed.endpoints.push(Endpoint::ready(ip("10.99.0.1")));
    syncer.upsert_slice(changed.clone());
    let partial = syncer.sync().unwrap();
    assert!(!partial.full);
    assert!(
        partial.bytes * 100 < full.bytes,
        "partial {} bytes, full {} bytes",
        partial.bytes,
        full.bytes
    );
    state.upsert_slice(changed);
    assert_eq!(tables(syncer.executor()), full_sync_tables(&state));
    // The planner agrees: the same chains, computed from whole rulesets.
    let before = syncer.applied_ruleset().unwrap();
    assert_eq!(before, svcnat::compile::compile(&state, &config()).unwrap());
}

#[test]
fn plan_writes_changed_chains_and_deletes_gone_service_chains() {
    let one = state(
        vec![svc(1, &[("p80", 80)])],
        vec![eps("svc1", &["10.180.0.1"])],
    );
    let two = state(
        vec![svc(1, &[("p80", 80)])],
        vec![eps("svc1", &["10.180.0.2"])],
    );
    let a = svcnat::compile::compile(&one, &config()).unwrap();
    let b = svcnat::compile::compile(&two, &config()).unwrap();
    let p = plan(Some(&a), &b);
    assert!(!p.full);
    assert_eq!(p.chains_written(), 2); // the SVC chain and the new SEP chain
    assert_eq!(p.chains_deleted(), 1); // the old SEP chain
    assert!(plan(Some(&b), &b).is_empty());
    assert_eq!(
        plan(None, &b).chains_written(),
        b.tables.iter().map(|t| t.chains.len()).sum::<usize>()
    );
}

/// One change an informer could deliver (also driven by `pieces`).
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Upsert(u8, Vec<(u8, Conditions, bool)>),
    DropSlice(u8),
    DropService(u8),
    /// Replace the service with one with these feature bits (see `service_for`).
    Features(u8, u8),
}

pub(crate) fn change() -> impl Strategy<Value = Change> {
    let conds = prop_oneof![
        Just(Conditions::READY),
        Just(Conditions::SERVING_TERMINATING),
        Just(Conditions::NOT_READY)
    ];
    prop_oneof![
        3 => (0u8..6, prop::collection::vec((1u8..8, conds, any::<bool>()), 0..4)).prop_map(|(s, e)| Change::Upsert(s, e)),
        1 => (0u8..6).prop_map(Change::DropSlice),
        1 => (0u8..6).prop_map(Change::DropService),
        2 => (0u8..6, any::<u8>()).prop_map(|(s, f)| Change::Features(s, f)),
    ]
}

/// Service `i` with feature bits: 1 node port, 2 load balancer with an ingress IP,
/// 4 externalTrafficPolicy Local (with a health-check node port), 8 session
/// affinity, 16 a source range, 32 internalTrafficPolicy Local, 64 a second (UDP)
/// port, 128 an external IP.
pub(crate) fn service_for(i: u8, features: u8) -> Service {
    let mut s = service(
        "ns1",
        &format!("svc{i}"),
        &format!("172.30.0.{}", i + 1),
        &[("p80", 80)],
    );
    let bit = |b: u8| features & b != 0;
    if bit(64) {
        s.ports
            .push(ServicePort::tcp("dns", 53).with_protocol(Protocol::Udp));
    }
    if bit(1) || bit(2) {
        s.service_type = if bit(2) {
            ServiceType::LoadBalancer
        } else {
            ServiceType::NodePort
        };
        for (j, p) in s.ports.iter_mut().enumerate() {
            p.node_port = Some(30000 + u16::from(i) * 2 + j as u16);
        }
    }
    if bit(2) {
        s.load_balancer_ingress = vec![LoadBalancerIngress {
            ip: ip(&format!("1.2.3.{}", i + 1)),
            ip_mode: IpMode::Vip,
        }];
        if bit(16) {
            s.load_balancer_source_ranges = vec![
                "203.0.113.0/25".parse().unwrap(),
                "192.168.0.0/24".parse().unwrap(),
            ];
        }
        if bit(4) {
            s.health_check_node_port = Some(31000 + u16::from(i));
        }
    }
    if bit(4) {
        s.external_traffic_policy = TrafficPolicy::Local;
    }
    if bit(8) {
        s.session_affinity = SessionAffinity::ClientIp {
            timeout_seconds: 10800,
        };
    }
    if bit(32) {
        s.internal_traffic_policy = TrafficPolicy::Local;
    }
    if bit(128) {
        s.external_ips = vec![ip(&format!("192.168.99.{}", i + 1))];
    }
    s
}

/// Hands `c` to the syncer as an informer would: an endpoint upsert creates its
/// service (no features) if it is missing; the slice `svc{s}-slice` always lists
/// the UDP port `dns` too, which is ignored with a warning while the service has
/// no such port.
pub(crate) fn apply_change<E: Executor>(syncer: &mut Syncer<E>, c: Change) {
    match c {
        Change::Upsert(s, endpoints) => {
            if syncer
                .state()
                .service(&ServiceKey::new("ns1", format!("svc{s}")))
                .is_none()
            {
                syncer.upsert_service(service_for(s, 0));
            }
            let eps = endpoints
                .into_iter()
                .map(|(h, c, local)| {
                    let e = ready(&format!("10.180.{s}.{h}")).with_conditions(c);
                    if local {
                        e.on_node(NODE)
                    } else {
                        e.on_node("other-node")
                    }
                })
                .collect();
            let mut sl = slice("ns1", &format!("svc{s}"), &[("p80", 80)], eps);
            sl.ports.push(EndpointPort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 5353,
            });
            syncer.upsert_slice(sl);
        }
        Change::DropSlice(s) => syncer.remove_slice(
            &ServiceKey::new("ns1", format!("svc{s}")),
            &format!("svc{s}-slice"),
        ),
        Change::DropService(s) => syncer.remove_service(&ServiceKey::new("ns1", format!("svc{s}"))),
        Change::Features(s, features) => syncer.upsert_service(service_for(s, features)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// After every partial sync the model holds exactly what one full sync of the
    /// same state would leave, and the syncer's view equals a fresh compile.
    #[test]
    fn partial_syncs_leave_the_full_sync_state(changes in prop::collection::vec(change(), 1..12)) {
        let mut syncer = Syncer::new(Recorder::new(), config()).unwrap();
        syncer.sync().unwrap();
        for c in changes {
            apply_change(&mut syncer, c);
            let report = syncer.sync().unwrap();
            prop_assert!(!report.full);
            prop_assert_eq!(tables(syncer.executor()), full_sync_tables(syncer.state()));
            prop_assert_eq!(syncer.applied_ruleset().unwrap(), svcnat::compile::compile_lenient(syncer.state(), &config()).unwrap().ruleset);
        }
    }
}

fn udp_service() -> Service {
    Service {
        ports: vec![ServicePort::tcp("dns", 53).with_protocol(Protocol::Udp)],
        ..service("ns1", "dns", "172.30.0.10", &[])
    }
}

fn udp_slice(ips: &[&str]) -> EndpointSlice {
    let mut s = slice("ns1", "dns", &[], ips.iter().map(|i| ready(i)).collect());
    s.ports.push(EndpointPort {
        name: "dns".into(),
        protocol: Protocol::Udp,
        port: 5353,
    });
    s
}

#[test]
fn stale_flows_survive_a_failed_partial_sync() {
    let mut syncer = Syncer::new(Recorder::new(), config()).unwrap();
    syncer.upsert_service(udp_service());
    syncer.upsert_slice(udp_slice(&["10.180.0.1", "10.180.0.2"]));
    syncer.sync().unwrap();
    syncer.upsert_slice(udp_slice(&["10.180.0.2"]));
    syncer.executor_mut().fail_next_restores(1);
    assert!(syncer.sync().is_err());
    let recovery = syncer.sync().unwrap();
    assert!(recovery.full);
    let gone = StaleFlow {
        protocol: Protocol::Udp,
        destination: FlowDestination::Service("172.30.0.10:53".parse().unwrap()),
        endpoint: Some(ip("10.180.0.1")),
    };
    assert_eq!(
        recovery.stale_flows,
        vec![gone],
        "the failed sync's flows are reported once it recovers"
    );
    assert!(
        syncer.sync().unwrap().stale_flows.is_empty(),
        "and only once"
    );
}

#[test]
fn a_service_port_removed_before_its_slices_keeps_the_other_ports() {
    let mut syncer = Syncer::new(Recorder::new(), config()).unwrap();
    syncer.upsert_service(service(
        "ns1",
        "svc1",
        "172.30.0.41",
        &[("p80", 80), ("p81", 81)],
    ));
    syncer.upsert_slice(slice(
        "ns1",
        "svc1",
        &[("p80", 80), ("p81", 81)],
        vec![ready("10.180.0.1")],
    ));
    syncer.sync().unwrap();
    // The Service update arrives first; the slice still lists p81.
    syncer.upsert_service(service("ns1", "svc1", "172.30.0.41", &[("p80", 80)]));
    let report = syncer.sync().unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0]
            .to_string()
            .contains("\"p81\"/tcp matches no service port")
    );
    let rules = syncer
        .executor()
        .rules(IpFamily::Ipv4, Table::Nat, "KUBE-SERVICES")
        .unwrap();
    assert!(
        rules.iter().any(|r| r.contains("ns1/svc1:p80 cluster IP")),
        "{rules:#?}"
    );
    assert!(!rules.iter().any(|r| r.contains("p81")), "{rules:#?}");
}

#[test]
fn set_config_forces_a_full_sync_with_the_new_rules() {
    let mut syncer = Syncer::new(Recorder::new(), config()).unwrap();
    syncer.upsert_service(svc(1, &[("p80", 80)]));
    syncer.upsert_slice(eps("svc1", &["10.180.0.1"]));
    syncer.sync().unwrap();
    assert!(
        syncer.set_config(config().with_masquerade_bit(40)).is_err(),
        "an invalid config is refused"
    );
    syncer
        .set_config(config().with_masquerade_all(true))
        .unwrap();
    let report = syncer.sync().unwrap();
    assert!(report.full);
    assert_eq!(tables(syncer.executor()), {
        let mut fresh = Syncer::new(Recorder::new(), config().with_masquerade_all(true)).unwrap();
        fresh.replace_state(syncer.state().clone());
        fresh.sync().unwrap();
        tables(fresh.executor())
    });
}

#[test]
fn a_missing_binary_is_a_spawn_error_naming_it() {
    let mut exec =
        IptablesRestore::new(svcnat::exec::Backend::Nft).with_command_prefix(["/no/such/prefix"]);
    match exec.restore(IpFamily::Ipv4, "*nat\nCOMMIT\n", Default::default()) {
        Err(ExecError::Spawn { binary, .. }) => assert_eq!(binary, "/no/such/prefix"),
        other => panic!("{other:?}"),
    }
}

#[test]
#[cfg(feature = "synthetic")]
fn full_resyncs_reuse_unchanged_services_and_write_the_same_bytes() {
    let state = svcnat::synthetic::Spec::new(50, 3).build();
    let config = svcnat::synthetic::config();
    let mut syncer = Syncer::new(Recorder::new(), config.clone()).unwrap();
    syncer.replace_state(state.clone());
    let first = syncer.sync().unwrap();
    assert!(first.full);
    assert_eq!(first.recompiled, 50);
    let whole = svcnat::compile::compile_text(&state, &config)
        .unwrap()
        .to_text();
    assert_eq!(as_compiled(first.payload.text()), whole);

    // A full resync of an unchanged state compiles nothing and writes the same.
    syncer.request_full_sync();
    let again = syncer.sync().unwrap();
    assert!(again.full);
    assert_eq!(again.recompiled, 0);
    assert_eq!(as_compiled(again.payload.text()), whole);

    // One changed service: only it is compiled; the kernel ends as after a fresh
    // full sync, the replaced endpoint's chain (read back from the kernel) deleted.
    let slice = svcnat::synthetic::endpoint_change(&state, 7, 1).unwrap();
    syncer.upsert_slice(slice.clone());
    syncer.request_full_sync();
    let changed = syncer.sync().unwrap();
    assert!(changed.full);
    assert_eq!(changed.recompiled, 1);
    let mut next = state.clone();
    next.upsert_slice(slice);
    assert_eq!(changed.payload.chains_deleted(), 1);
    assert!(
        changed.payload.deleted[0]
            .1
            .as_str()
            .starts_with("KUBE-SEP-")
    );
    assert_eq!(
        tables(syncer.executor()),
        full_sync_tables_with(&next, &config)
    );

    // A new config compiles everything again.
    syncer
        .set_config(config.clone().with_node_name("node-1"))
        .unwrap();
    assert_eq!(syncer.sync().unwrap().recompiled, 50);
}

/// [`full_sync_tables`] with another config.
#[cfg(feature = "synthetic")]
fn full_sync_tables_with(
    state: &ClusterState,
    config: &ProxyConfig,
) -> BTreeMap<(Table, String), Vec<String>> {
    let mut syncer = Syncer::new(Recorder::new(), config.clone()).unwrap();
    syncer.replace_state(state.clone());
    assert!(syncer.sync().unwrap().full);
    tables(syncer.executor())
}

/// The tables and the number of rejected services of one fresh full sync.
fn fresh_sync(
    state: &ClusterState,
    config: &ProxyConfig,
) -> (BTreeMap<(Table, String), Vec<String>>, usize) {
    let mut s = Syncer::new(Recorder::new(), config.clone()).unwrap();
    s.replace_state(state.clone());
    let r = s.sync().unwrap();
    (tables(s.executor()), r.rejected.len())
}

fn node_port_service() -> (Service, EndpointSlice) {
    let mut svc = service("ns1", "svc1", "172.30.0.1", &[("p80", 80)]);
    svc.service_type = ServiceType::NodePort;
    svc.ports[0].node_port = Some(31000);
    let eps = slice("ns1", "svc1", &[("p80", 80)], vec![ready("10.180.0.1")]);
    (svc, eps)
}

/// A new node-port range changes which services are valid, though no rule reads
/// it: the full sync after it must not reuse the services' earlier rules.
#[test]
fn a_narrower_node_port_range_drops_a_service_on_the_next_sync() {
    let (svc, eps) = node_port_service();
    let mut syncer = Syncer::new(Recorder::new(), config()).unwrap();
    syncer.upsert_service(svc);
    syncer.upsert_slice(eps);
    assert!(syncer.sync().unwrap().rejected.is_empty());
    let narrow = config().with_node_port_range(Some(30000..=30100));
    syncer.set_config(narrow.clone()).unwrap();
    let report = syncer.sync().unwrap();
    assert!(report.full);
    let (expected, expected_rejected) = fresh_sync(syncer.state(), &narrow);
    assert_eq!(expected_rejected, 1);
    assert_eq!(report.rejected.len(), 1, "{:?}", report.rejected);
    assert_eq!(tables(syncer.executor()), expected);
}

#[test]
fn a_wider_node_port_range_admits_a_rejected_service_on_the_next_sync() {
    let (svc, eps) = node_port_service();
    let narrow = config().with_node_port_range(Some(30000..=30100));
    let mut syncer = Syncer::new(Recorder::new(), narrow).unwrap();
    syncer.upsert_service(svc);
    syncer.upsert_slice(eps);
    assert_eq!(syncer.sync().unwrap().rejected.len(), 1);
    syncer.set_config(config()).unwrap();
    let report = syncer.sync().unwrap();
    assert!(report.full);
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let (expected, _) = fresh_sync(syncer.state(), &config());
    assert_eq!(tables(syncer.executor()), expected);
}

/// A slice is one object per namespace and name: relabelled, it moves, and both
/// services are rewritten; removed by its key, it leaves whichever service it is
/// under.
#[test]
fn a_relabelled_slice_moves_between_services() {
    let mut syncer = Syncer::new(Recorder::new(), config()).unwrap();
    syncer.upsert_service(svc(1, &[("p80", 80)]));
    syncer.upsert_service(svc(2, &[("p80", 80)]));
    let mut moving = eps("svc1", &["10.180.0.1"]);
    syncer.upsert_slice(moving.clone());
    syncer.sync().unwrap();

    moving.service_name = "svc2".into();
    syncer.upsert_slice(moving.clone());
    let report = syncer.sync().unwrap();
    assert!(!report.full);
    assert_eq!(report.recompiled, 2, "{report}");
    let expected = state(
        vec![svc(1, &[("p80", 80)]), svc(2, &[("p80", 80)])],
        vec![moving.clone()],
    );
    assert_eq!(syncer.state(), &expected);
    assert_eq!(tables(syncer.executor()), full_sync_tables(&expected));

    assert_eq!(syncer.remove_slice_by_key(&moving.key()), Some(moving));
    syncer.sync().unwrap();
    let expected = state(vec![svc(1, &[("p80", 80)]), svc(2, &[("p80", 80)])], vec![]);
    assert_eq!(tables(syncer.executor()), full_sync_tables(&expected));
}

/// The Recorder commits each `*table … COMMIT` section on its own, as
/// iptables-restore does, though its parser merges sections of one table.
#[test]
fn the_recorder_commits_each_section_alone() {
    use svcnat::exec::{Executor, Recorder, RestoreOptions};
    let v4 = IpFamily::Ipv4;
    let opts = RestoreOptions::default;
    // The first section jumps to a chain only the second declares: refused there.
    let mut rec = Recorder::new();
    let split = "*nat\n:B - [0:0]\n-A B -j C\nCOMMIT\n*nat\n:C - [0:0]\nCOMMIT\n";
    assert!(rec.restore(v4, split, opts()).is_err());
    assert!(rec.rules(v4, Table::Nat, "B").is_none());
    // A chain deleted in one section can be declared again in a later one.
    let mut rec = Recorder::new();
    let again =
        "*nat\n:A - [0:0]\nCOMMIT\n*nat\n-X A\nCOMMIT\n*nat\n:A - [0:0]\n-A A -j RETURN\nCOMMIT\n";
    rec.restore(v4, again, opts()).unwrap();
    assert_eq!(rec.rules(v4, Table::Nat, "A").unwrap(), ["-j RETURN"]);
    // A section that fails leaves the ones before it applied.
    let mut rec = Recorder::new();
    let later_bad = "*nat\n:D - [0:0]\nCOMMIT\n*nat\n-A D -j MISSING-CHAIN\nCOMMIT\n";
    assert!(rec.restore(v4, later_bad, opts()).is_err());
    assert_eq!(
        rec.rules(v4, Table::Nat, "D").unwrap(),
        Vec::<String>::new()
    );
}

/// A jump rule already in place, read from text, is not added again.
#[test]
fn the_recorder_keeps_one_copy_of_a_jump_rule_added_from_text() {
    use svcnat::exec::{Executor, Recorder, RestoreOptions};
    let v4 = IpFamily::Ipv4;
    let config = svcnat::model::ProxyConfig::default();
    let jumps = svcnat::compile::jump_rules(&config).unwrap();
    let jump = jumps
        .iter()
        .find(|j| j.table == Table::Nat && j.chain.as_str() == "OUTPUT")
        .unwrap();
    let mut rec = Recorder::new();
    let target = jump.rule.jump_target().unwrap();
    rec.restore(
        v4,
        &format!("*nat\n:{target} - [0:0]\nCOMMIT\n"),
        RestoreOptions::default(),
    )
    .unwrap();
    rec.append_foreign(v4, Table::Nat, "OUTPUT", &jump.rule.to_string())
        .unwrap();
    rec.ensure_jump(v4, jump).unwrap();
    assert_eq!(rec.rules(v4, Table::Nat, "OUTPUT").unwrap().len(), 1);
}

/// Cleanup removes what a sync wrote, from the kernel's tables alone, and leaves
/// every other rule and chain; a second run finds nothing to do.
#[test]
fn cleanup_leaves_only_what_others_wrote() {
    use svcnat::exec::{Executor, Recorder, RestoreOptions, cleanup};
    let v4 = IpFamily::Ipv4;
    let foreign = |rec: &mut Recorder| {
        rec.restore(
            v4,
            "*nat\n:DOCKER - [0:0]\n-A DOCKER -p tcp -m tcp --dport 8080 -j RETURN\nCOMMIT\n\
             *filter\n:CNI-FORWARD - [0:0]\n-A CNI-FORWARD -j ACCEPT\nCOMMIT\n",
            RestoreOptions::default(),
        )
        .unwrap();
        rec.append_foreign(
            v4,
            Table::Nat,
            "PREROUTING",
            "-m addrtype --dst-type LOCAL -j DOCKER",
        )
        .unwrap();
        rec.append_foreign(v4, Table::Nat, "PREROUTING", "-s 10.9.0.0/16 -j RETURN")
            .unwrap();
        rec.append_foreign(v4, Table::Filter, "FORWARD", "-j CNI-FORWARD")
            .unwrap();
    };
    let mut only_foreign = Recorder::new();
    foreign(&mut only_foreign);

    let mut rec = Recorder::new();
    foreign(&mut rec);
    let mut syncer = Syncer::new(&mut rec, config()).unwrap();
    syncer.replace_state(crate::parse::rich_state(IpFamily::Ipv4));
    syncer.sync().unwrap();
    drop(syncer);
    assert_ne!(tables(&rec), tables(&only_foreign));

    let done = cleanup(&mut rec, v4).unwrap();
    assert!(!done.jumps_removed.is_empty() && !done.chains_removed.is_empty());
    assert!(done.chains_kept.is_empty(), "{:?}", done.chains_kept);
    // KUBE-MARK-MASQ and KUBE-FIREWALL, which kubelet writes too, stay, as with
    // kube-proxy's cleanup; everything else is as before the sync.
    let shared = |t: BTreeMap<(Table, String), Vec<String>>| {
        let is_shared = |s: &str| s.contains("KUBE-MARK-MASQ") || s.contains("KUBE-FIREWALL");
        t.into_iter()
            .filter(|((_, c), _)| !is_shared(c))
            .map(|(k, rules)| (k, rules.into_iter().filter(|r| !is_shared(r)).collect()))
            .collect::<BTreeMap<_, Vec<String>>>()
    };
    assert!(tables(&rec).keys().any(|(_, c)| c == "KUBE-MARK-MASQ"));
    assert_eq!(shared(tables(&rec)), shared(tables(&only_foreign)));
    let again = cleanup(&mut rec, v4).unwrap();
    assert_eq!(again, Default::default());
}

/// A Recorder whose lock is refused `refusals` times, as when another process
/// holds it too long.
struct LockRefused {
    rec: Recorder,
    refusals: usize,
}

impl Executor for LockRefused {
    fn lock(&mut self) -> Result<svcnat::exec::SyncLock, ExecError> {
        let guard = self.rec.lock()?;
        if self.refusals == 0 {
            return Ok(guard);
        }
        self.refusals -= 1;
        Err(ExecError::LockTimeout {
            path: "/run/svcnat/netns-1.lock".into(),
            waited: Duration::from_secs(60),
            holder: Some(42),
        })
    }
    fn restore(
        &mut self,
        family: IpFamily,
        payload: &str,
        options: svcnat::exec::RestoreOptions,
    ) -> Result<(), ExecError> {
        self.rec.restore(family, payload, options)
    }
    fn save(&mut self, family: IpFamily, table: Table) -> Result<String, ExecError> {
        self.rec.save(family, table)
    }
    fn ensure_jump(
        &mut self,
        family: IpFamily,
        jump: &svcnat::ruleset::JumpRule,
    ) -> Result<(), ExecError> {
        self.rec.ensure_jump(family, jump)
    }
}

/// Every sync and every cleanup takes the executor's lock once, before any other
/// call; a sync that cannot take it calls nothing else, fails with the lock's
/// error, and the next sync is a full one (another process may have written the
/// tables meanwhile).
#[test]
fn syncs_and_cleanups_take_the_lock_first() {
    let locks_then = |calls: &[Call]| {
        assert_eq!(calls.first(), Some(&Call::Lock), "{calls:?}");
        calls.iter().filter(|c| **c == Call::Lock).count()
    };
    let mut exec = LockRefused {
        rec: Recorder::new(),
        refusals: 0,
    };
    let mut syncer = Syncer::new(&mut exec, config()).unwrap();
    syncer.upsert_service(svc(1, &[("p80", 80)]));
    assert!(syncer.sync().unwrap().full);
    syncer.upsert_slice(eps("svc1", &["10.180.0.1"]));
    assert!(!syncer.sync().unwrap().full);
    assert_eq!(locks_then(syncer.executor().rec.calls()), 2);

    // Refused: nothing else is called, the error names the lock file.
    syncer.executor_mut().refusals = 1;
    let before = syncer.executor().rec.calls().len();
    syncer.upsert_slice(eps("svc1", &["10.180.0.2"]));
    let err = syncer.sync().unwrap_err();
    assert!(
        matches!(
            &err,
            SyncError::Exec(ExecError::LockTimeout {
                holder: Some(42),
                ..
            })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("/run/svcnat/netns-1.lock"),
        "{err}"
    );
    assert_eq!(&syncer.executor().rec.calls()[before..], [Call::Lock]);
    let next = syncer.sync().unwrap();
    assert!(next.full);
    assert_eq!(
        tables(&syncer.executor().rec),
        full_sync_tables(syncer.state())
    );
    drop(syncer);

    let mut rec = exec.rec;
    let before = rec.calls().len();
    svcnat::exec::cleanup(&mut rec, IpFamily::Ipv4).unwrap();
    assert_eq!(locks_then(&rec.calls()[before..]), 1);
}

/// A jump rule left twice in its chain (by two syncers racing before the lock, or
/// an older version) is there once after the next full sync.
#[test]
fn a_full_sync_deletes_extra_copies_of_a_jump_rule() {
    let mut rec = Recorder::new();
    let mut syncer = Syncer::new(&mut rec, config()).unwrap();
    syncer.upsert_service(svc(1, &[("p80", 80)]));
    syncer.sync().unwrap();
    drop(syncer);
    let (v4, nat) = (IpFamily::Ipv4, Table::Nat);
    let before = rec.rules(v4, nat, "PREROUTING").unwrap();
    let portals = before
        .iter()
        .find(|r| r.ends_with("-j KUBE-SERVICES"))
        .unwrap()
        .clone();
    for _ in 0..2 {
        rec.append_foreign(v4, nat, "PREROUTING", &portals).unwrap();
    }
    rec.append_foreign(v4, nat, "PREROUTING", "-j RETURN")
        .unwrap();
    let mut syncer = Syncer::new(&mut rec, config()).unwrap();
    syncer.upsert_service(svc(1, &[("p80", 80)]));
    assert!(syncer.sync().unwrap().full);
    drop(syncer);
    // The first copies go and the last stays, so the chain is as before, with the
    // foreign rule after it.
    let mut want = before.clone();
    want.push("-j RETURN".to_owned());
    assert_eq!(rec.rules(v4, nat, "PREROUTING").unwrap(), want);
}
