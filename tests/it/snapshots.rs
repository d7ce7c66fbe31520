//! One insta snapshot of the rendered rules per scenario.

use insta::assert_snapshot;
use svcnat::model::*;

use crate::fixtures::*;

fn svc1() -> Service {
    service("ns1", "svc1", "172.30.0.41", &[("p80", 80)])
}

#[test]
fn cluster_ip_one_endpoint() {
    let s = one(svc1(), vec![ready("10.180.0.1")]);
    assert_snapshot!(render(&s, &config()));
}

#[test]
fn cluster_ip_one_endpoint_typed() {
    let s = one(svc1(), vec![ready("10.180.0.1")]);
    let ruleset = svcnat::compile::compile(&s, &config()).unwrap();
    insta::assert_debug_snapshot!(
        ruleset.chain(svcnat::ruleset::Table::Nat, "KUBE-SEP-SXIVWICOYRO3J4NJ")
    );
}

#[test]
fn cluster_ip_several_endpoints() {
    // Inserted out of order; kube-proxy sorts by the `ip:port` string, so .10 comes before .2.
    let eps = vec![
        ready("10.180.0.2"),
        ready("10.180.0.10"),
        ready("10.180.0.1"),
    ];
    let s = state(
        vec![svc1()],
        vec![slice("ns1", "svc1", &[("p80", 8080)], eps)],
    );
    assert_snapshot!(render(&s, &config()));
}

#[test]
fn cluster_ip_no_endpoints() {
    let s = state(vec![svc1()], vec![]);
    assert_snapshot!(render(&s, &config()));
}

#[test]
fn node_port() {
    let svc = svc1().with_type(ServiceType::NodePort);
    let svc = Service {
        ports: vec![ServicePort::tcp("p80", 80).with_node_port(3001)],
        ..svc
    };
    let s = one(svc, vec![ready("10.180.0.1")]);
    assert_snapshot!(render(&s, &config()));
}

#[test]
fn node_port_without_endpoints() {
    let svc = Service {
        ports: vec![ServicePort::tcp("p80", 80).with_node_port(3001)],
        ..svc1().with_type(ServiceType::NodePort)
    };
    let s = state(vec![svc], vec![]);
    assert_snapshot!(render(&s, &config()));
}

#[test]
fn multi_port_tcp_udp() {
    let svc = Service {
        ports: vec![
            ServicePort::tcp("http", 80),
            ServicePort::tcp("dns", 53).with_protocol(Protocol::Udp),
        ],
        ..svc1()
    };
    let mut sl = slice(
        "ns1",
        "svc1",
        &[("http", 8080)],
        vec![ready("10.180.0.1"), ready("10.180.1.1")],
    );
    sl.ports.push(EndpointPort {
        name: "dns".into(),
        protocol: Protocol::Udp,
        port: 5353,
    });
    let s = state(vec![svc], vec![sl]);
    assert_snapshot!(render(&s, &config()));
}

#[test]
fn masquerade_all() {
    let s = one(svc1(), vec![ready("10.180.0.1")]);
    assert_snapshot!(render(&s, &config().with_masquerade_all(true)));
}

#[test]
fn without_cluster_cidr() {
    let s = one(svc1(), vec![ready("10.180.0.1")]);
    let config = config().with_local_traffic(LocalTrafficDetector::None);
    assert_snapshot!(render(&s, &config));
}

#[test]
fn terminating_only_endpoints() {
    // No ready endpoint: the serving, terminating ones are used; the not-serving one never.
    let eps = vec![
        ready("10.180.0.1").with_conditions(Conditions::SERVING_TERMINATING),
        ready("10.180.0.2").with_conditions(Conditions::SERVING_TERMINATING),
        ready("10.180.0.3").with_conditions(Conditions {
            ready: false,
            serving: false,
            terminating: true,
        }),
    ];
    let s = one(svc1(), eps);
    assert_snapshot!(render(&s, &config()));
}

#[test]
fn ready_endpoints_win_over_terminating() {
    let eps = vec![
        ready("10.180.0.1").with_conditions(Conditions::SERVING_TERMINATING),
        ready("10.180.0.2"),
        ready("10.180.0.3").with_conditions(Conditions::NOT_READY),
    ];
    let s = one(svc1(), eps);
    assert_snapshot!(render(&s, &config()));
}

#[cfg(feature = "k8s")]
#[test]
fn shipped_example_cluster() {
    let state = crate::kube_proxy::example_cluster();
    assert_snapshot!(render(
        &state,
        &config()
            .with_cluster_cidrs(["10.244.0.0/16".parse().unwrap()])
            .with_node_name("node-a")
    ));
}
