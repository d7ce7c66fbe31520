//! The [`NftSyncer`]'s incremental syncs, which recompile only the services
//! that changed and change the applied table in place, against a whole compile
//! of the same state after every sync: the applied ruleset (and its dump), the
//! rejected services and the warnings are the whole compile's; the transactions
//! are those [`nft_plan`] makes from the table before to the whole compile; and
//! the [`NftFake`] they went to holds what a full sync into an empty fake
//! writes (the stale chains, flushed, aside). Full syncs asked for, config
//! changes and refused transactions come in between: the syncs after them are
//! full, and those after that incremental again.
//!
//! The services share a few cluster IPs, external IPs, load-balancer IPs and
//! node ports, so that which service keeps a key ("first in key order wins")
//! changes as they come and go; some are invalid (a loopback cluster IP).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use svcnat::compile::nftables_lenient;
use svcnat::model::*;
use svcnat::nft::{Family, Operation};
use svcnat::sync::{FullReason, NftSyncer, nft_plan};

use crate::fixtures::{NODE, config, ip};
use crate::nft_sync::{Failing, fresh, normalized};

/// A service's shape: an index into each shared pool, or a flag.
#[derive(Debug, Clone)]
struct Shape {
    /// Cluster IP 172.30.0.(1 + n); 3: 127.0.0.1, which is invalid.
    cluster_ip: u8,
    /// Bits: 1 `p80` tcp/80, 2 `p443` tcp/443, 4 `dns` udp/53 (none: `p80`).
    ports: u8,
    /// Node ports from 30000 + n (a NodePort service).
    node_port: Option<u8>,
    /// External IP 192.168.99.(1 + n).
    external_ip: Option<u8>,
    /// A load balancer with ingress IP 1.2.3.(1 + n) (node ports too).
    load_balancer: Option<u8>,
    source_ranges: bool,
    external_local: bool,
    internal_local: bool,
    affinity: bool,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        (0u8..4, 0u8..8, prop::option::of(0u8..2)),
        (prop::option::of(0u8..2), prop::option::of(0u8..2)),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (cluster_ip, ports, node_port),
                (external_ip, load_balancer),
                (source_ranges, external_local, internal_local, affinity),
            )| Shape {
                cluster_ip,
                ports,
                node_port,
                external_ip,
                load_balancer,
                source_ranges,
                external_local,
                internal_local,
                affinity,
            },
        )
}

const PORTS: [(&str, Protocol, u16); 3] = [
    ("p80", Protocol::Tcp, 80),
    ("p443", Protocol::Tcp, 443),
    ("dns", Protocol::Udp, 53),
];

/// Service `i`'s key: `a/svc{i}` or `b/svc{i}`.
fn key(i: u8) -> ServiceKey {
    ServiceKey::new(
        if i.is_multiple_of(2) { "a" } else { "b" },
        format!("svc{i}"),
    )
}

fn service(i: u8, s: &Shape) -> Service {
    let key = key(i);
    let cluster_ip = match s.cluster_ip {
        3 => ip("127.0.0.1"),
        n => IpAddr::from([172, 30, 0, 1 + n]),
    };
    let mut svc = Service::cluster_ip(&key.namespace, &key.name, cluster_ip);
    let bits = if s.ports & 7 == 0 { 1 } else { s.ports };
    for (j, (name, protocol, port)) in PORTS.iter().enumerate() {
        if bits & (1 << j) != 0 {
            svc = svc.with_port(ServicePort::tcp(*name, *port).with_protocol(*protocol));
        }
    }
    let node_port = s.node_port.or(s.load_balancer);
    if let Some(n) = node_port {
        svc.service_type = ServiceType::NodePort;
        for (j, p) in svc.ports.iter_mut().enumerate() {
            p.node_port = Some(30000 + u16::from(n) + 10 * j as u16);
        }
    }
    if let Some(n) = s.load_balancer {
        svc.service_type = ServiceType::LoadBalancer;
        svc.load_balancer_ingress = vec![LoadBalancerIngress {
            ip: IpAddr::from([1, 2, 3, 1 + n]),
            ip_mode: IpMode::Vip,
        }];
        if s.source_ranges {
            svc.load_balancer_source_ranges = vec!["203.0.113.0/25".parse().unwrap()];
        }
    }
    if let Some(n) = s.external_ip {
        svc.external_ips = vec![IpAddr::from([192, 168, 99, 1 + n])];
    }
    if s.external_local {
        svc.external_traffic_policy = TrafficPolicy::Local;
    }
    if s.internal_local {
        svc.internal_traffic_policy = TrafficPolicy::Local;
    }
    if s.affinity {
        svc.session_affinity = SessionAffinity::ClientIp {
            timeout_seconds: 10800,
        };
    }
    svc
}

/// A change to the cluster of services 0..6, slices 0..2 each.
#[derive(Debug, Clone)]
enum Change {
    Service(u8, Shape),
    RemoveService(u8),
    /// Slice `j` of service `i`: endpoints 10.180.i.h, ready or not, on this
    /// node or another; every port of [`PORTS`].
    Slice(u8, u8, Vec<(u8, bool, bool)>),
    RemoveSlice(u8, u8),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (0u8..6, shape()).prop_map(|(i, s)| Change::Service(i, s)),
        1 => (0u8..6).prop_map(Change::RemoveService),
        4 => (0u8..6, 0u8..2, prop::collection::vec((1u8..5, any::<bool>(), any::<bool>()), 0..4))
            .prop_map(|(i, j, e)| Change::Slice(i, j, e)),
        1 => (0u8..6, 0u8..2).prop_map(|(i, j)| Change::RemoveSlice(i, j)),
    ]
}

fn apply(syncer: &mut NftSyncer<Failing>, change: Change) {
    match change {
        Change::Service(i, s) => syncer.upsert_service(service(i, &s)),
        Change::RemoveService(i) => syncer.remove_service(&key(i)),
        Change::Slice(i, j, endpoints) => {
            let key = key(i);
            let mut slice = EndpointSlice::new(
                &key.namespace,
                &key.name,
                format!("{}-{j}", key.name),
                IpFamily::Ipv4,
            );
            for (name, protocol, port) in PORTS {
                slice = slice.with_port(EndpointPort {
                    name: name.into(),
                    protocol,
                    port: port + 8000,
                });
            }
            for (h, ready, local) in endpoints {
                let e = Endpoint::ready(IpAddr::from([10, 180, i, h]));
                let e = if ready {
                    e
                } else {
                    e.with_conditions(Conditions::NOT_READY)
                };
                slice = slice.with_endpoint(e.on_node(if local { NODE } else { "other-node" }));
            }
            syncer.upsert_slice(slice);
        }
        Change::RemoveSlice(i, j) => {
            let key = key(i);
            let name = format!("{}-{j}", key.name);
            syncer.remove_slice(&key, &name);
        }
    }
}

/// Checks what the last sync left against a whole compile of the state.
fn check(
    syncer: &NftSyncer<Failing>,
    report: &svcnat::sync::NftSyncReport,
    what: &str,
) -> Result<(), TestCaseError> {
    let (state, config) = (syncer.state(), syncer.config());
    let whole = nftables_lenient(state, config).unwrap();
    let applied = syncer.applied().unwrap();
    prop_assert_eq!(
        &applied.ruleset.to_dump(),
        &whole.ruleset.to_dump(),
        "{}",
        what
    );
    prop_assert_eq!(&applied.ruleset, &whole.ruleset, "{}", what);
    prop_assert_eq!(&report.rejected, &whole.rejected, "{}", what);
    prop_assert_eq!(&report.warnings, &whole.warnings, "{}", what);
    // The fake holds the table a full sync writes into an empty fake, and the
    // stale chains, flushed.
    let family = applied.ruleset.family;
    let mut held = syncer
        .executor()
        .fake
        .table(family, &applied.ruleset.table)
        .cloned()
        .unwrap();
    // A refused deletion of stale chains leaves them, flushed, for the next
    // (full) sync to find.
    let refused = report
        .delete_stale
        .iter()
        .filter(|_| report.delete_stale_error.is_some())
        .flat_map(|tx| tx.operations())
        .filter_map(|op| match op {
            Operation::DeleteChain(name) => Some(name),
            _ => None,
        });
    for name in applied.stale.names().chain(refused) {
        let chain = held.chains.shift_remove(name);
        prop_assert!(
            chain.is_some_and(|c| c.rules.is_empty()),
            "{}: stale chain {} not there, flushed",
            what,
            name
        );
    }
    prop_assert_eq!(normalized(held), fresh(state, config), "{}", what);
    Ok(())
}

/// What happens before a round's sync besides its changes.
#[derive(Debug, Clone, Copy)]
enum Event {
    None,
    /// `request_full_sync`.
    Full,
    /// `set_config` with the other of the two configs.
    Config,
    /// The sync's first run refused.
    Refuse,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => Just(Event::None),
        1 => Just(Event::Full),
        1 => Just(Event::Config),
        1 => Just(Event::Refuse),
    ]
}

/// [`config`], or one that changes every service's rules and node ports.
fn config_of(other: bool) -> ProxyConfig {
    if other {
        config()
            .with_masquerade_all(true)
            .with_nodeport_addresses([NodePortAddress::Cidr("192.168.0.0/16".parse().unwrap())])
    } else {
        config()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// After every sync of random changes (batched, some syncs late enough to
    /// delete stale chains, transactions cut into pieces of any size), the
    /// applied table, the report and the fake are those of a whole compile of
    /// the state, and the transactions of an incremental sync are those the
    /// whole-table plan makes. A sync is full exactly when it is the first, was
    /// asked to be, follows a config change or a refused sync.
    #[test]
    fn incremental_syncs_equal_a_whole_compile(
        first in prop::collection::vec(change(), 0..12),
        rounds in prop::collection::vec(
            (prop::collection::vec(change(), 1..4), any::<bool>(), event()),
            1..10,
        ),
        mut other_config in any::<bool>(),
        piece_operations in prop_oneof![Just(0usize), 1usize..40],
    ) {
        let mut syncer = NftSyncer::new(Failing::default(), config_of(other_config))
            .unwrap()
            .with_drift_check(None)
            .with_piece_operations(piece_operations);
        for c in first {
            apply(&mut syncer, c);
        }
        let mut now = Instant::now();
        let report = syncer.sync_at(now).unwrap();
        prop_assert_eq!(report.full_reason, Some(FullReason::FirstSync));
        check(&syncer, &report, "first sync")?;
        let mut failed = false;
        for (i, (changes, aged, event)) in rounds.into_iter().enumerate() {
            let what = format!("round {i}: {changes:?}, {event:?}");
            for c in changes {
                apply(&mut syncer, c);
            }
            match event {
                Event::None => {}
                Event::Full => syncer.request_full_sync(),
                Event::Config => {
                    other_config = !other_config;
                    syncer.set_config(config_of(other_config)).unwrap();
                }
                Event::Refuse => {
                    let next = syncer.executor().runs + 1;
                    syncer.executor_mut().fail_at = vec![next];
                }
            }
            now += if aged { Duration::from_secs(2) } else { Duration::from_millis(10) };
            let before = syncer.applied().cloned();
            let result = syncer.sync_at(now);
            syncer.executor_mut().fail_at.clear();
            let report = match result {
                Ok(report) => report,
                Err(e) => {
                    prop_assert!(matches!(event, Event::Refuse), "{}: {}", what, e);
                    prop_assert!(syncer.applied().is_none(), "{}", what);
                    failed = true;
                    continue;
                }
            };
            let full = failed || !matches!(event, Event::None | Event::Refuse);
            prop_assert_eq!(report.full, full, "{}", what);
            // A refused deletion of stale chains makes the next sync full.
            failed = report.delete_stale_error.is_some();
            check(&syncer, &report, &what)?;
            if !full {
                let whole = nftables_lenient(syncer.state(), syncer.config()).unwrap().ruleset;
                let plan = nft_plan(before.as_ref(), &whole, now);
                prop_assert_eq!(&report.transaction, &plan.transaction, "{}", what);
                prop_assert_eq!(&report.delete_stale, &plan.delete_stale, "{}", what);
                prop_assert_eq!(&syncer.applied().unwrap().stale, &plan.stale, "{}", what);
            }
        }
        prop_assert!(syncer.applied().is_none_or(|a| a.ruleset.family == Family::Ip));
    }
}
