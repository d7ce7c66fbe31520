//! Bad input: a typed error naming the object, port and field; never a panic,
//! never part of a ruleset.

use svcnat::compile::{compile, compile_lenient, compile_text, compile_with_warnings};
use svcnat::error::{CompileError, Problem};
use svcnat::exec::Recorder;
use svcnat::model::*;
use svcnat::sync::Syncer;

use crate::fixtures::*;

fn svc1() -> Service {
    service("ns1", "svc1", "172.30.0.41", &[("p80", 80)])
}

fn err(state: &ClusterState) -> CompileError {
    compile(state, &config()).expect_err("input should be refused")
}

fn service_err(e: &CompileError) -> (&ServiceKey, Option<&str>, &str, &Problem) {
    match e {
        CompileError::Service {
            service,
            port,
            field,
            problem,
        } => (service, port.as_deref(), field.as_str(), problem),
        other => panic!("not a service error: {other}"),
    }
}

#[test]
fn port_zero() {
    let svc = service("ns1", "svc1", "172.30.0.41", &[("p80", 0)]);
    let e = err(&state(vec![svc], vec![]));
    let (key, port, field, problem) = service_err(&e);
    assert_eq!(key.to_string(), "ns1/svc1");
    assert_eq!(port, Some("p80"));
    assert_eq!(field, "spec.ports[0].port");
    assert_eq!(problem, &Problem::PortZero);
    assert_eq!(
        e.to_string(),
        "service ns1/svc1 port p80: spec.ports[0].port: port 0 is not allowed"
    );
}

#[test]
fn node_port_outside_configured_range() {
    let svc = Service {
        ports: vec![ServicePort::tcp("p80", 80).with_node_port(40000)],
        ..svc1().with_type(ServiceType::NodePort)
    };
    let config = config().with_node_port_range(Some(30000..=32767));
    let e = compile(&state(vec![svc.clone()], vec![]), &config).unwrap_err();
    assert_eq!(
        e.to_string(),
        "service ns1/svc1 port p80: spec.ports[0].nodePort: node port 40000 is outside the node port range 30000-32767"
    );
    // Without a configured range any node port is accepted.
    assert!(compile(&state(vec![svc], vec![]), &super::fixtures::config()).is_ok());
}

#[test]
fn duplicate_port_names() {
    let svc = service("ns1", "svc1", "172.30.0.41", &[("p80", 80), ("p80", 81)]);
    let e = err(&state(vec![svc], vec![]));
    let (_, port, field, problem) = service_err(&e);
    assert_eq!((port, field), (Some("p80"), "spec.ports[1].name"));
    assert!(matches!(problem, Problem::DuplicatePortName { name } if name == "p80"));
}

#[test]
fn names_must_be_dns_labels() {
    for (ns, name, field) in [
        ("NS1", "svc1", "metadata.namespace"),
        ("ns1", "svc_1", "metadata.name"),
        ("ns1", "1svc", "metadata.name"),
        // A quote or a newline would break out of the comment.
        ("ns1", "svc\" -j ACCEPT", "metadata.name"),
        ("ns1\n-A INPUT", "svc1", "metadata.namespace"),
        ("ns1", &"a".repeat(64), "metadata.name"),
    ] {
        let svc =
            Service::cluster_ip(ns, name, ip("172.30.0.41")).with_port(ServicePort::tcp("p80", 80));
        let e = err(&state(vec![svc], vec![]));
        let (_, port, f, problem) = service_err(&e);
        assert_eq!((port, f), (None, field), "{ns}/{name}");
        assert!(matches!(problem, Problem::InvalidName { .. }), "{problem}");
    }
    let bad_port = service("ns1", "svc1", "172.30.0.41", &[("P 80", 80)]);
    let e = err(&state(vec![bad_port], vec![]));
    assert_eq!(service_err(&e).2, "spec.ports[0].name");
}

/// A state kube-proxy accepts with a log line: every entry point compiles it, to
/// the same rules, with the same warnings in the same order; returns them.
fn warnings_everywhere(state: &ClusterState) -> Vec<String> {
    let warned = compile_with_warnings(state, &config()).expect("a warning is not an error");
    let text: Vec<String> = warned.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(compile(state, &config()).unwrap(), warned.ruleset);
    let lenient = compile_lenient(state, &config()).unwrap();
    assert!(lenient.rejected.is_empty(), "{:?}", lenient.rejected);
    assert_eq!(lenient.ruleset, warned.ruleset);
    assert_eq!(lenient.warnings, warned.warnings);
    let compiled = compile_text(state, &config()).unwrap();
    assert_eq!(compiled.warnings(), warned.warnings.as_slice());
    assert_eq!(
        compiled.to_text(),
        svcnat::render::to_string(&warned.ruleset)
    );
    // The syncer: on a full sync, and on a partial sync of the service's key.
    let mut syncer = Syncer::new(Recorder::new(), config()).unwrap();
    syncer.replace_state(state.clone());
    let report = syncer.sync().unwrap();
    assert!(report.full && report.rejected.is_empty());
    assert_eq!(report.warnings, warned.warnings);
    let mut partial = Syncer::new(Recorder::new(), config()).unwrap();
    partial.sync().unwrap();
    for svc in state.services() {
        partial.upsert_service(svc.clone());
    }
    for slice in state.slices() {
        partial.upsert_slice(slice.clone());
    }
    let report = partial.sync().unwrap();
    assert!(!report.full);
    assert_eq!(report.warnings, warned.warnings);
    text
}

/// A state the API server refuses: strict entry points fail with this error, and
/// lenient ones (compile_lenient, the syncer) leave out its service and report it.
fn refused_everywhere(state: &ClusterState) -> CompileError {
    let e = err(state);
    assert_eq!(compile_with_warnings(state, &config()).unwrap_err(), e);
    assert_eq!(compile_text(state, &config()).unwrap_err(), e);
    let lenient = compile_lenient(state, &config()).unwrap();
    assert_eq!(lenient.rejected, std::slice::from_ref(&e));
    let mut without = state.clone();
    without.remove_service(e.service().unwrap());
    for slice in state.slices_of(e.service().unwrap()) {
        without.remove_slice(e.service().unwrap(), &slice.name);
    }
    assert_eq!(lenient.ruleset, compile(&without, &config()).unwrap());
    assert!(lenient.warnings.iter().all(|w| w.service() != e.service()));
    let mut syncer = Syncer::new(Recorder::new(), config()).unwrap();
    syncer.replace_state(state.clone());
    let report = syncer.sync().unwrap();
    assert_eq!(report.rejected, std::slice::from_ref(&e));
    e
}

#[test]
fn endpoint_port_matching_no_service_port() {
    let sl = slice("ns1", "svc1", &[("p81", 80)], vec![ready("10.180.0.1")]);
    let s = state(vec![svc1()], vec![sl]);
    assert_eq!(
        warnings_everywhere(&s),
        [
            "endpoint slice svc1-slice of service ns1/svc1: ports[0]: endpoint port \"p81\"/tcp matches no service port"
        ]
    );
    // The service has no endpoints: it rejects, as in kube-proxy.
    assert!(render(&s, &config()).contains("ns1/svc1:p80 has no endpoints"));
}

#[test]
fn unnamed_endpoint_port_for_a_named_service_port() {
    // kube-proxy skips it; it used to fail the whole strict compile.
    let svc = service("ns1", "svc1", "172.30.0.41", &[("http", 80)]);
    let sl = slice("ns1", "svc1", &[("", 8080)], vec![ready("10.180.0.1")]);
    assert_eq!(
        warnings_everywhere(&state(vec![svc], vec![sl])),
        [
            "endpoint slice svc1-slice of service ns1/svc1: ports[0]: endpoint port \"\"/tcp matches no service port"
        ]
    );
}

#[test]
fn endpoint_port_zero() {
    let sl = slice("ns1", "svc1", &[("p80", 0)], vec![ready("10.180.0.1")]);
    let s = state(vec![svc1()], vec![sl]);
    assert_eq!(
        warnings_everywhere(&s),
        ["endpoint slice svc1-slice of service ns1/svc1: ports[0].port: port 0 is not allowed"]
    );
    assert!(render(&s, &config()).contains("ns1/svc1:p80 has no endpoints"));
}

#[test]
fn endpoint_address_of_the_wrong_family() {
    let mut sl = slice(
        "ns1",
        "svc1",
        &[("p80", 80)],
        vec![ready("10.180.0.1"), ready("fd00::1")],
    );
    sl.address_type = IpFamily::Ipv4;
    let s = state(vec![svc1()], vec![sl]);
    assert_eq!(
        warnings_everywhere(&s),
        [
            "endpoint slice svc1-slice of service ns1/svc1: endpoints[1].addresses[0]: fd00::1 is not an IPv4 address"
        ]
    );
    let clean = one(svc1(), vec![ready("10.180.0.1")]);
    assert_eq!(
        compile(&s, &config()).unwrap(),
        compile(&clean, &config()).unwrap()
    );
}

#[test]
fn duplicate_endpoints_are_used_once_and_reported() {
    let mut a = slice(
        "ns1",
        "svc1",
        &[("p80", 80)],
        vec![ready("10.180.0.2"), ready("10.180.0.1")],
    );
    a.name = "svc1-a".into();
    let mut b = slice(
        "ns1",
        "svc1",
        &[("p80", 80)],
        vec![
            ready("10.180.0.3"),
            ready("10.180.0.1"),
            ready("10.180.0.1"),
        ],
    );
    b.name = "svc1-b".into();
    let s = state(vec![svc1()], vec![b, a]);
    assert_eq!(
        warnings_everywhere(&s),
        [
            "endpoint slice svc1-b of service ns1/svc1: endpoints[1].addresses[0]: 10.180.0.1:80 is listed again (first in endpoint slice svc1-a endpoints[1]); one copy is used",
            "endpoint slice svc1-b of service ns1/svc1: endpoints[2].addresses[0]: 10.180.0.1:80 is listed again (first in endpoint slice svc1-a endpoints[1]); one copy is used",
        ]
    );
    let clean = one(
        svc1(),
        ["10.180.0.1", "10.180.0.2", "10.180.0.3"]
            .map(ready)
            .to_vec(),
    );
    assert_eq!(
        compile(&s, &config()).unwrap(),
        compile(&clean, &config()).unwrap()
    );
}

#[test]
fn slice_without_its_service() {
    let orphan = slice("ns2", "gone", &[("p80", 80)], vec![ready("10.180.0.9")]);
    let s = state(vec![svc1()], vec![orphan]);
    assert_eq!(
        warnings_everywhere(&s),
        [
            "endpoint slice gone-slice of service ns2/gone: metadata.labels[kubernetes.io/service-name]: no such service; the slice is ignored"
        ]
    );
    assert_eq!(
        compile(&s, &config()).unwrap(),
        compile(&state(vec![svc1()], vec![]), &config()).unwrap()
    );
}

#[test]
fn warnings_come_in_service_order_then_field_order() {
    let mut a = slice(
        "ns1",
        "svc1",
        &[("p80", 0), ("p81", 80)],
        vec![ready("10.180.0.1"), ready("fd00::1")],
    );
    a.address_type = IpFamily::Ipv4;
    let orphan = slice("ns0", "gone", &[("p80", 80)], vec![ready("10.180.0.9")]);
    let b = slice("ns2", "svc2", &[("x", 80)], vec![ready("10.180.0.2")]);
    let svc2 = service("ns2", "svc2", "172.30.0.42", &[("p80", 80)]);
    let fields: Vec<String> = warnings_everywhere(&state(vec![svc2, svc1()], vec![b, a, orphan]))
        .iter()
        .map(|w| w.split(": ").take(2).collect::<Vec<_>>().join(": "))
        .collect();
    assert_eq!(
        fields,
        [
            "endpoint slice gone-slice of service ns0/gone: metadata.labels[kubernetes.io/service-name]",
            "endpoint slice svc1-slice of service ns1/svc1: ports[0].port",
            "endpoint slice svc1-slice of service ns1/svc1: ports[1]",
            "endpoint slice svc1-slice of service ns1/svc1: endpoints[1].addresses[0]",
            "endpoint slice svc2-slice of service ns2/svc2: ports[0]",
        ]
    );
}

#[test]
fn invalid_slice_name_is_an_error() {
    let mut sl = slice("ns1", "svc1", &[("p80", 80)], vec![ready("10.180.0.1")]);
    sl.name = "Svc1_x".into();
    let e = refused_everywhere(&state(vec![svc1()], vec![sl]));
    assert_eq!(
        e.to_string(),
        "endpoint slice Svc1_x of service ns1/svc1: metadata.name: \"Svc1_x\" is not a valid DNS-1123 subdomain"
    );
}

#[test]
fn repeated_slice_port_name_is_an_error() {
    let sl = slice(
        "ns1",
        "svc1",
        &[("p80", 80), ("p80", 81)],
        vec![ready("10.180.0.1")],
    );
    let e = refused_everywhere(&state(vec![svc1()], vec![sl]));
    assert_eq!(
        e.to_string(),
        "endpoint slice svc1-slice of service ns1/svc1: ports[1].name: duplicate port name \"p80\""
    );
}

#[test]
fn special_endpoint_addresses_are_errors() {
    for (address, kind) in [
        ("127.0.0.1", "a loopback"),
        ("127.255.0.3", "a loopback"),
        ("0.0.0.0", "an unspecified"),
        ("169.254.169.254", "a link-local"),
        ("224.0.0.251", "a link-local multicast"),
        ("::1", "a loopback"),
        ("::", "an unspecified"),
        ("fe80::1", "a link-local"),
        ("febf::1", "a link-local"),
        ("ff02::fb", "a link-local multicast"),
        ("ff12::1", "a link-local multicast"),
        ("::ffff:127.0.0.1", "a loopback"),
    ] {
        let sl = slice(
            "ns1",
            "svc1",
            &[("p80", 80)],
            vec![ready("10.180.0.1"), ready("10.180.0.2"), ready(address)],
        );
        let e = refused_everywhere(&state(vec![svc1()], vec![sl]));
        assert_eq!(
            e.to_string(),
            format!(
                "endpoint slice svc1-slice of service ns1/svc1: endpoints[2].addresses[0]: {address} is {kind} address, which the API server refuses"
            )
        );
        match e {
            CompileError::EndpointSlice {
                problem: Problem::SpecialAddress { address: a, .. },
                ..
            } => {
                assert_eq!(a, ip(address))
            }
            other => panic!("{other}"),
        }
    }
    // Global multicast and the addresses next to the special ranges are accepted,
    // as the API server accepts them.
    for address in [
        "10.180.0.1",
        "128.0.0.1",
        "169.255.0.1",
        "224.0.1.1",
        "239.1.1.1",
        "fec0::1",
        "ff05::1",
        "ff0e::1",
        "::2",
    ] {
        let sl = slice("ns1", "svc1", &[("p80", 80)], vec![ready(address)]);
        let s = state(vec![svc1()], vec![sl]);
        assert!(compile(&s, &config()).is_ok(), "{address}");
    }
}

#[test]
fn special_cluster_and_external_ips_are_errors() {
    for (address, kind) in [("127.0.0.1", "a loopback"), ("0.0.0.0", "an unspecified")] {
        let svc = service("ns1", "svc1", address, &[("p80", 80)]);
        let e = refused_everywhere(&state(vec![svc], vec![]));
        assert_eq!(
            e.to_string(),
            format!(
                "service ns1/svc1: spec.clusterIPs[0]: {address} is {kind} address, which the API server refuses"
            )
        );
    }
    let mut dual = svc1();
    dual.cluster_ips.push(ip("::1"));
    assert_eq!(
        service_err(&err(&state(vec![dual], vec![]))).2,
        "spec.clusterIPs[1]"
    );
    let mut external = svc1();
    external.external_ips = vec![ip("192.168.99.22"), ip("169.254.169.254")];
    let e = refused_everywhere(&state(vec![external], vec![]));
    assert_eq!(
        e.to_string(),
        "service ns1/svc1: spec.externalIPs[1]: 169.254.169.254 is a link-local address, which the API server refuses"
    );
}

#[test]
fn the_first_error_wins_over_warnings() {
    // A warning before the error in the same slice does not hide the error, and a
    // refused service reports no warnings.
    let mut sl = slice(
        "ns1",
        "svc1",
        &[("gone", 80), ("p80", 80)],
        vec![ready("fd00::1"), ready("127.0.0.1")],
    );
    sl.address_type = IpFamily::Ipv4;
    let e = refused_everywhere(&state(vec![svc1()], vec![sl]));
    assert_eq!(
        e.to_string(),
        "endpoint slice svc1-slice of service ns1/svc1: endpoints[1].addresses[0]: 127.0.0.1 is a loopback address, which the API server refuses"
    );
}

#[test]
fn two_cluster_ips_of_one_family() {
    let mut svc = svc1();
    svc.cluster_ips.push(ip("172.30.0.42"));
    let e = err(&state(vec![svc], vec![]));
    assert_eq!(service_err(&e).2, "spec.clusterIPs");
}

#[test]
fn node_port_on_a_cluster_ip_service() {
    let svc = Service {
        ports: vec![ServicePort::tcp("p80", 80).with_node_port(30001)],
        ..svc1()
    };
    let e = err(&state(vec![svc], vec![]));
    assert!(matches!(
        service_err(&e).3,
        Problem::NodePortNotAllowed { .. }
    ));
}

#[test]
fn bad_config() {
    let s = state(vec![svc1()], vec![]);
    let e = compile(&s, &config().with_masquerade_bit(32)).unwrap_err();
    assert!(
        matches!(
            e,
            CompileError::Config {
                field: "masquerade_bit",
                ..
            }
        ),
        "{e}"
    );
    let e = compile(
        &s,
        &config().with_local_traffic(LocalTrafficDetector::InterfaceNamePrefix("veth\" x".into())),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            CompileError::Config {
                field: "local_traffic",
                ..
            }
        ),
        "{e}"
    );
    let two_v4 = LocalTrafficDetector::Cidrs(vec![
        "10.0.0.0/8".parse().unwrap(),
        "11.0.0.0/8".parse().unwrap(),
    ]);
    assert!(compile(&s, &config().with_local_traffic(two_v4)).is_err());
}

#[test]
fn lenient_mode_keeps_the_valid_services() {
    let good = service("ns1", "svc1", "172.30.0.41", &[("p80", 80)]);
    let bad = service("ns2", "svc2", "172.30.0.42", &[("p80", 0)]);
    let good_slice = slice("ns1", "svc1", &[("p80", 80)], vec![ready("10.180.0.1")]);
    let s = state(vec![good.clone(), bad], vec![good_slice.clone()]);
    assert!(
        compile(&s, &config()).is_err(),
        "strict mode refuses the whole state"
    );
    let lenient = compile_lenient(&s, &config()).unwrap();
    assert_eq!(lenient.rejected.len(), 1);
    assert_eq!(
        lenient.rejected[0].service().unwrap().to_string(),
        "ns2/svc2"
    );
    // The ruleset is exactly the one of the valid services alone.
    let only_good = state(vec![good], vec![good_slice]);
    assert_eq!(lenient.ruleset, compile(&only_good, &config()).unwrap());
}

#[test]
fn lenient_mode_ignores_bad_slice_parts_but_keeps_the_service() {
    let mut sl = slice(
        "ns1",
        "svc1",
        &[("p80", 80), ("gone", 81)],
        vec![ready("10.180.0.1"), ready("fd00::1")],
    );
    sl.address_type = IpFamily::Ipv4;
    let s = state(vec![svc1()], vec![sl]);
    let lenient = compile_lenient(&s, &config()).unwrap();
    assert!(lenient.rejected.is_empty());
    let warnings: Vec<String> = lenient.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("ports[1]: endpoint port \"gone\"/tcp matches no service port"));
    assert!(warnings[1].contains("endpoints[1].addresses[0]: fd00::1 is not an IPv4 address"));
    // The usable parts compile as if the bad ones were not there, in strict mode too.
    let clean = one(svc1(), vec![ready("10.180.0.1")]);
    assert_eq!(lenient.ruleset, compile(&clean, &config()).unwrap());
    assert_eq!(
        compile_with_warnings(&s, &config()).unwrap().warnings,
        lenient.warnings
    );
}

#[test]
fn skipped_services_are_not_errors() {
    // Headless (no cluster IP) and other-family services get no rules.
    let mut headless = svc1();
    headless.cluster_ips.clear();
    let v6 = service("ns2", "svc2", "fd00::2", &[("p80", 80)]);
    let ruleset = compile(&state(vec![headless, v6], vec![]), &config()).unwrap();
    let empty = compile(&ClusterState::new(), &config()).unwrap();
    assert_eq!(ruleset, empty);
}

/// A service with `ports` ports (`p1`..., numbered 1...), and one slice with all
/// of them and `endpoints` endpoints.
fn many_ports(ports: u16, endpoints: u8) -> ClusterState {
    let mut svc = svc1();
    svc.ports = (1..=ports)
        .map(|i| ServicePort::tcp(format!("p{i}"), i))
        .collect();
    let mut sl = slice("ns1", "svc1", &[], vec![]);
    sl.ports = (1..=ports)
        .map(|i| EndpointPort::tcp(format!("p{i}"), i))
        .collect();
    sl.endpoints = (1..=endpoints)
        .map(|j| ready(&format!("10.180.0.{j}")))
        .collect();
    state(vec![svc], vec![sl])
}

#[test]
fn a_service_with_every_port_number_compiles() {
    // Validation hashes where it compared every pair: a Service with 65,535 ports
    // (under etcd's object size limit) compiles, one chain per port and endpoint.
    let s = many_ports(u16::MAX, 3);
    let warned = compile_with_warnings(&s, &config()).unwrap();
    assert!(warned.warnings.is_empty());
    let nat = warned.ruleset.table(svcnat::ruleset::Table::Nat).unwrap();
    let named = |prefix: &str| {
        nat.chains
            .keys()
            .filter(|c| c.as_str().starts_with(prefix))
            .count()
    };
    assert_eq!(named("KUBE-SVC-"), 65_535);
    assert_eq!(named("KUBE-SEP-"), 3 * 65_535);
    let chains =
        |r: &svcnat::ruleset::Ruleset| r.tables.iter().map(|t| t.chains.len()).sum::<usize>();
    let empty = compile(&ClusterState::new(), &config()).unwrap();
    assert_eq!(chains(&warned.ruleset), chains(&empty) + 4 * 65_535);
}

#[test]
fn many_ports_keep_the_first_error() {
    // Above the pairwise limit the checks hash; the error is the one comparing
    // every earlier port in turn finds.
    let with = |edit: &dyn Fn(&mut Vec<ServicePort>)| {
        let mut s = many_ports(40, 1);
        let key = ServiceKey::new("ns1", "svc1");
        let mut svc = s.service(&key).unwrap().clone();
        edit(&mut svc.ports);
        s.upsert_service(svc);
        let e = err(&s);
        let (_, port, field, problem) = service_err(&e);
        (port.map(str::to_owned), field.to_owned(), problem.clone())
    };
    // Port 30 repeats the name of port 5 and the number of port 3: the number.
    let (port, field, problem) = with(&|p| {
        p[30].name = "p6".into();
        p[30].port = 4;
    });
    assert_eq!(
        (port.as_deref(), field.as_str()),
        (Some("p6"), "spec.ports[30].port")
    );
    assert_eq!(
        problem,
        Problem::DuplicatePort {
            port: 4,
            protocol: Protocol::Tcp
        }
    );
    // The name of port 3 and the number of port 5: the name.
    let (_, field, problem) = with(&|p| {
        p[30].name = "p4".into();
        p[30].port = 6;
    });
    assert_eq!(field, "spec.ports[30].name");
    assert_eq!(problem, Problem::DuplicatePortName { name: "p4".into() });
    // Both of one earlier port: the name. An earlier invalid port wins over both.
    let (_, field, _) = with(&|p| {
        p[30].name = "p4".into();
        p[30].port = 4;
    });
    assert_eq!(field, "spec.ports[30].name");
    let (_, field, problem) = with(&|p| {
        p[30].name = "p4".into();
        p[20].port = 0;
    });
    assert_eq!(
        (field.as_str(), problem),
        ("spec.ports[20].port", Problem::PortZero)
    );
    // A slice with many ports: a repeated name and protocol is refused; an
    // unknown port only warned about.
    let mut s = many_ports(40, 1);
    let key = ServiceKey::new("ns1", "svc1");
    let mut sl = s.slices_of(&key).next().unwrap().clone();
    sl.ports[33].name = "zz".into();
    s.upsert_slice(sl.clone());
    let warned = compile_with_warnings(&s, &config()).unwrap();
    assert_eq!(warned.warnings.len(), 1);
    assert!(
        warned.warnings[0]
            .to_string()
            .contains("ports[33]: endpoint port \"zz\"/tcp")
    );
    sl.ports[35].name = "p2".into();
    s.upsert_slice(sl);
    assert!(
        err(&s)
            .to_string()
            .contains("ports[35].name: duplicate port name \"p2\"")
    );
}

/// Each `FromStr` reads back what `Display` writes, and refuses anything else
/// with the text and what was expected.
#[test]
fn values_from_text() {
    use svcnat::ParseValueError;
    use svcnat::exec::Backend;
    use svcnat::ruleset::Table;

    fn round_trip<T>(values: &[T])
    where
        T: std::str::FromStr<Err = ParseValueError>
            + std::fmt::Display
            + PartialEq
            + std::fmt::Debug,
    {
        for v in values {
            assert_eq!(&v.to_string().parse::<T>().unwrap(), v);
        }
    }
    round_trip(&[Protocol::Tcp, Protocol::Udp, Protocol::Sctp]);
    round_trip(&[IpFamily::Ipv4, IpFamily::Ipv6]);
    round_trip(&[
        Table::Filter,
        Table::Nat,
        Table::Mangle,
        Table::Raw,
        Table::Security,
    ]);
    round_trip(&[
        Backend::Auto,
        Backend::Nft,
        Backend::Legacy,
        Backend::System,
    ]);
    round_trip(&[ServiceKey::new("ns1", "svc1")]);

    // Kubernetes' spellings too.
    assert_eq!("TCP".parse(), Ok(Protocol::Tcp));
    assert_eq!("UDP".parse(), Ok(Protocol::Udp));
    assert_eq!("ipv4".parse(), Ok(IpFamily::Ipv4));
    assert_eq!("ipv6".parse(), Ok(IpFamily::Ipv6));

    let refused = |e: ParseValueError| e.to_string();
    assert_eq!(
        refused("icmp".parse::<Protocol>().unwrap_err()),
        r#""icmp" is not a protocol (tcp, udp or sctp)"#
    );
    assert_eq!(
        refused("IPV4".parse::<IpFamily>().unwrap_err()),
        r#""IPV4" is not an IP family (ipv4 or ipv6)"#
    );
    assert_eq!(
        refused("Nat".parse::<Table>().unwrap_err()),
        r#""Nat" is not a table (filter, nat, mangle, raw or security)"#
    );
    assert_eq!(
        refused("".parse::<Backend>().unwrap_err()),
        r#""" is not a backend (auto, nft, legacy or system)"#
    );
    for bad in ["", "svc1", "/svc1", "ns1/", "/", "ns1/svc1/x", "ns1//svc1"] {
        let e = bad.parse::<ServiceKey>().unwrap_err();
        assert_eq!(e.value, bad);
        assert_eq!(e.expected, "a service key (namespace/name)");
    }
}

#[cfg(feature = "k8s")]
pub(crate) mod example_cli {
    pub(crate) use crate::fixtures::{example, run_example};

    fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
        run_example("compile", args, stdin)
    }

    #[test]
    fn default_run_prints_the_example_cluster() {
        let (code, stdout, stderr) = run(&[], "");
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.starts_with("*filter\n"));
        assert!(stdout.contains("\n*nat\n"));
        assert!(stdout.contains("shop/payments:http has no endpoints"));
    }

    #[test]
    fn bad_service_exits_2_with_one_line() {
        let list = r#"{"kind":"List","items":[{"apiVersion":"v1","kind":"Service",
            "metadata":{"namespace":"ns1","name":"svc1"},
            "spec":{"clusterIP":"172.30.0.41","ports":[{"name":"p80","port":70000}]}}]}"#;
        let (code, stdout, stderr) = run(&["-"], list);
        assert_eq!(code, 2);
        assert_eq!(stdout, "");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("service ns1/svc1: spec.ports[0].port: 70000 is not a port number"),
            "{stderr}"
        );
    }

    #[test]
    fn bad_flag_and_bad_json_exit_2() {
        let (code, stdout, _) = run(&["--iptables-masquerade-bit", "40"], "");
        assert_eq!((code, stdout.as_str()), (2, ""));
        let (code, stdout, stderr) = run(&["-"], "{not json");
        assert_eq!((code, stdout.as_str()), (2, ""));
        assert_eq!(stderr.lines().count(), 1);
        let (code, _, _) = run(&["--no-such-flag"], "");
        assert_eq!(code, 2);
    }

    /// The command line's forms, where a getopt-style reader would differ: `--`
    /// is an unknown flag (not the end of the flags), short flags are not bundled,
    /// a boolean flag's value is only ever joined with `=`, and an argument that
    /// is not UTF-8 is bad input like any other.
    #[test]
    fn flag_forms_keep_their_meaning() {
        let good = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/input/good.json");
        let refused = |args: &[&str], line: &str| {
            let (code, stdout, stderr) = run(args, "");
            assert_eq!((code, stdout.as_str()), (2, ""), "{args:?}: {stderr}");
            assert!(stderr.starts_with(line), "{args:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        };
        refused(&["--", good], "compile: unknown flag \"--\"; usage: ");
        refused(&["-hx", good], "compile: unknown flag \"-hx\"; usage: ");
        refused(&["-x=3", good], "compile: unknown flag \"-x=3\"; usage: ");
        refused(&["--help=1"], "compile: unknown flag \"--help=1\"; usage: ");
        refused(
            &["--no-such-flag=3"],
            "compile: unknown flag \"--no-such-flag=3\"; usage: ",
        );
        refused(&["--node-ip"], "compile: --node-ip: missing value\n");
        refused(
            &["--masquerade-all=yes"],
            "compile: --masquerade-all: \"yes\" is not true or false\n",
        );
        // `false` after a boolean flag is the input, not the flag's value.
        refused(
            &["--masquerade-all", "false"],
            "compile: false: No such file or directory",
        );
        let (code, on, e) = run(&["--masquerade-all", good], "");
        assert_eq!(code, 0, "{e}");
        let (code, off, e) = run(&["--masquerade-all=false", good], "");
        assert_eq!(code, 0, "{e}");
        assert_ne!(on, off);
        let (_, on_again, _) = run(&["--masquerade-all=true", good], "");
        assert_eq!(on, on_again);
        let (_, plain, _) = run(&[good], "");
        assert_eq!(off, plain);
        // A value is taken even when it looks like a flag; `-` is stdin.
        let (code, out, e) = run(
            &["--hostname-override", "--masquerade-all", "-"],
            &std::fs::read_to_string(good).unwrap(),
        );
        assert_eq!((code, out.as_str()), (0, plain.as_str()), "{e}");

        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let out = std::process::Command::new(example("compile"))
                .arg(std::ffi::OsStr::from_bytes(b"--hostname-override=\xff"))
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2));
            assert_eq!(
                String::from_utf8_lossy(&out.stderr),
                "compile: --hostname-override: \"\\xFF\" is not UTF-8\n"
            );
        }
    }

    #[test]
    fn invalid_object_names_field_in_compile_error() {
        let list = r#"{"kind":"List","items":[
            {"apiVersion":"v1","kind":"Service","metadata":{"namespace":"ns1","name":"svc1"},
             "spec":{"clusterIP":"172.30.0.41","ports":[{"name":"p80","port":80}]}},
            {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","addressType":"IPv4",
             "metadata":{"namespace":"ns1","name":"svc1-x","labels":{"kubernetes.io/service-name":"svc1"}},
             "ports":[{"name":"p80","port":80}],"endpoints":[{"addresses":["127.0.0.1"]}]}]}"#;
        let (code, stdout, stderr) = run(&["-"], list);
        assert_eq!((code, stdout.as_str()), (2, ""));
        assert!(
            stderr.contains("endpoint slice svc1-x of service ns1/svc1: endpoints[0].addresses[0]: 127.0.0.1 is a loopback address"),
            "{stderr}"
        );
        // A port matching no service port is only skipped, as kube-proxy skips it.
        let (code, stdout, stderr) = run(
            &["-"],
            &list.replace("127.0.0.1", "10.180.0.1").replace(
                "p80\",\"port\":80}],\"endpoints",
                "p81\",\"port\":80}],\"endpoints",
            ),
        );
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("ns1/svc1:p80 has no endpoints"), "{stdout}");
    }

    #[test]
    fn parity_flags() {
        let (code, v6, e) = run(
            &[
                "--ip-family",
                "ipv6",
                "--cluster-cidr",
                "10.244.0.0/16",
                "--cluster-cidr",
                "fd00:244::/48",
            ],
            "",
        );
        assert_eq!(code, 0, "{e}");
        assert!(v6.contains("--to-destination [fd00:244::50]:8080"), "{v6}");
        assert!(v6.contains("! -s fd00:244::/48 -j KUBE-MARK-MASQ"));
        assert!(v6.contains("! -d ::1/128 -j KUBE-NODEPORTS"));
        assert!(!v6.contains("10.244."));

        let (code, out, _) = run(
            &[
                "--detect-local-mode",
                "InterfaceNamePrefix",
                "--pod-interface-name-prefix",
                "veth",
            ],
            "",
        );
        assert_eq!(code, 0);
        assert!(out.contains("! -i veth+ -j KUBE-MARK-MASQ"));
        let (code, out, _) = run(
            &[
                "--detect-local-mode=BridgeInterface",
                "--pod-bridge-interface=cbr0",
            ],
            "",
        );
        assert_eq!(code, 0);
        assert!(out.contains("! -i cbr0 -j KUBE-MARK-MASQ"));
        let (code, out, _) = run(
            &[
                "--cluster-cidr",
                "10.244.0.0/16",
                "--detect-local-mode",
                "None",
            ],
            "",
        );
        assert_eq!(code, 0);
        assert!(!out.contains("! -s 10.244.0.0/16"));
        let (code, out, err) = run(&["--detect-local-mode", "BridgeInterface"], "");
        assert_eq!((code, out.as_str()), (2, ""), "{err}");

        let (_, plain, _) = run(&[], "");
        assert!(plain.contains("-m conntrack --ctstate INVALID -j DROP"));
        let (code, out, _) = run(
            &[
                "--masquerade-random-fully",
                "--nfacct-counters",
                "--conntrack-tcp-be-liberal",
            ],
            "",
        );
        assert_eq!(code, 0);
        assert!(out.contains("-j MASQUERADE --random-fully"));
        assert!(out.contains("-m nfacct --nfacct-name localhost_nps_accepted_pkts"));
        assert!(!out.contains("--ctstate INVALID"));
        let (_, out, _) = run(
            &[
                "--iptables-localhost-nodeports",
                "false",
                "--iptables-masquerade-bit",
                "3",
            ],
            "",
        );
        assert!(
            out.contains("! -d 127.0.0.0/8 -j KUBE-NODEPORTS") && !out.contains("KUBE-FIREWALL")
        );
        assert!(out.contains("--or-mark 0x8"));
        let (_, out, _) = run(
            &[
                "--nodeport-addresses",
                "primary",
                "--node-ip",
                "192.168.0.10",
            ],
            "",
        );
        assert!(out.contains("-d 192.168.0.10 -j KUBE-NODEPORTS"), "{out}");
    }

    #[test]
    fn sync_example_dry_run_steps() {
        let cluster = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster.json");
        let dir = std::env::temp_dir().join(format!("svcnat-sync-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The second state drops every EndpointSlice of the first.
        let text = std::fs::read_to_string(cluster).unwrap();
        let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        doc["items"]
            .as_array_mut()
            .unwrap()
            .retain(|i| i["kind"] != "EndpointSlice");
        let second = dir.join("second.json");
        std::fs::write(&second, doc.to_string()).unwrap();
        let second = second.to_str().unwrap();
        let (code, out, err) = run_example(
            "sync",
            &["--cluster-cidr", "10.244.0.0/16", cluster, second, cluster],
            "",
        );
        assert_eq!(code, 0, "{err}");
        let steps: Vec<&str> = out.lines().filter(|l| l.starts_with("step ")).collect();
        assert_eq!(steps.len(), 3, "{out}");
        let shape = |l: &str| {
            let rest = l.split_once(": ").unwrap().1;
            let parts: Vec<&str> = rest.split(", ").collect();
            assert_eq!(parts.len(), 4, "{l}");
            assert!(
                parts[1].ends_with(" bytes")
                    && parts[2].ends_with(" chains written")
                    && parts[3].ends_with(" chains deleted"),
                "{l}"
            );
            parts[0].to_owned()
        };
        assert_eq!(shape(steps[0]), "full");
        assert_eq!(shape(steps[1]), "partial");
        assert!(!steps[1].ends_with(" 0 chains deleted"), "{}", steps[1]);
        // The dry run prints each payload after its step line.
        assert!(out.contains("\n*nat\n"));
        assert!(out.contains("-X KUBE-SEP-"));
        // Bad input: exit 2, one line, nothing on stdout.
        let (code, out, err) = run_example("sync", &[cluster, "/no/such/file.json"], "");
        assert_eq!((code, out.as_str()), (2, ""));
        assert_eq!(err.lines().count(), 1);
        let (code, _, _) = run_example("sync", &["--backend", "iptables"], "");
        assert_eq!(code, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn trace_example_contract() {
        let cluster = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster.json");
        let base = [
            "--node-ip",
            "192.168.0.10",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--cluster",
            cluster,
        ];
        // A NodePort from outside: both ready endpoints, half each, masqueraded.
        let mut args = base.to_vec();
        args.extend([
            "--src",
            "203.0.113.7",
            "--dst",
            "192.168.0.10",
            "--proto",
            "tcp",
            "--dport",
            "30080",
            "--json",
        ]);
        let (code, out, err) = run_example("trace", &args, "");
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.lines().count(), 1, "one JSON object: {out}");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        let keys: Vec<&str> = doc
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 3);
        assert!(out.starts_with("{\"outcomes\":[{\"probability\":"), "{out}");
        assert!(out.contains("],\"unevaluated\":[],\"assumed\":["), "{out}");
        let outcomes = doc["outcomes"].as_array().unwrap();
        let total: f64 = outcomes
            .iter()
            .map(|o| o["probability"].as_f64().unwrap())
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let mut dests: Vec<&str> = outcomes
            .iter()
            .map(|o| o["destination"].as_str().unwrap())
            .collect();
        dests.sort();
        assert_eq!(dests, ["10.244.0.12:8080", "10.244.1.13:8080"]);
        for o in outcomes {
            assert_eq!(o["verdict"], "accept");
            assert_eq!(o["masquerade"], true);
            assert!(
                o["path"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p.as_str().unwrap().contains(':'))
            );
        }
        assert!(doc["unevaluated"].as_array().unwrap().is_empty());
        // The service without endpoints is rejected, shown as a table without --json.
        let mut args = base.to_vec();
        args.extend([
            "--src",
            "10.244.1.5",
            "--dst",
            "10.96.7.40",
            "--proto",
            "tcp",
            "--dport",
            "8080",
            "--from",
            "local",
        ]);
        let (code, out, _) = run_example("trace", &args, "");
        assert_eq!(code, 0);
        assert!(out.lines().next().unwrap().contains("probability"), "{out}");
        assert!(out.contains("reject"), "{out}");
        // Bad input: exit 2, one line.
        let mut args = base.to_vec();
        args.extend([
            "--src",
            "10.244.1.5",
            "--dst",
            "nope",
            "--proto",
            "tcp",
            "--dport",
            "80",
        ]);
        let (code, out, err) = run_example("trace", &args, "");
        assert_eq!(
            (code, out.as_str(), err.lines().count()),
            (2, "", 1),
            "{err}"
        );
        let (code, _, _) = run_example("trace", &["--src", "1.2.3.4"], "");
        assert_eq!(code, 2);
    }
}

/// Every stage's errors read alike: lower-case, `subject: problem`, no period.
#[test]
fn messages_of_the_other_stages() {
    use svcnat::exec::{ExecError, Executor, Recorder};
    use svcnat::ruleset::Probability;

    assert_eq!(
        Probability::one_in(0).unwrap_err().to_string(),
        "invalid probability 1/0: not between 0 and 1"
    );
    assert_eq!(
        Probability::new(1.5).unwrap_err().to_string(),
        "invalid probability 1.5: not between 0 and 1"
    );
    // An executor without conntrack support says which call it does not support.
    struct NoConntrack(Recorder);
    impl Executor for NoConntrack {
        fn restore(
            &mut self,
            family: IpFamily,
            payload: &str,
            options: svcnat::exec::RestoreOptions,
        ) -> Result<(), ExecError> {
            self.0.restore(family, payload, options)
        }
        fn save(
            &mut self,
            family: IpFamily,
            table: svcnat::ruleset::Table,
        ) -> Result<String, ExecError> {
            self.0.save(family, table)
        }
        fn ensure_jump(
            &mut self,
            family: IpFamily,
            jump: &svcnat::compile::JumpRule,
        ) -> Result<(), ExecError> {
            self.0.ensure_jump(family, jump)
        }
    }
    let e = NoConntrack(Recorder::new())
        .clear_conntrack(IpFamily::Ipv4, &[])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "clear_conntrack: not supported by this executor"
    );
}
