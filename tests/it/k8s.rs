//! Conversion from k8s-openapi objects: Kubernetes defaulting, kube-proxy's
//! tolerances, and typed errors.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use svcnat::error::Problem;
use svcnat::k8s::{endpoint_slice, service};
use svcnat::model::{self, Conditions, IpFamily, IpMode, ServiceType, SessionAffinity};

fn svc(json: &str) -> Service {
    serde_json::from_str(json).unwrap()
}

fn slice(json: &str) -> EndpointSlice {
    serde_json::from_str(json).unwrap()
}

#[test]
fn service_defaults_and_tolerances() {
    let s = service(&svc(r#"{"metadata":{"namespace":"ns1","name":"svc1"},
        "spec":{"type":"LoadBalancer","clusterIP":"172.30.0.041",
            "ports":[{"name":"p80","port":80,"nodePort":3001}],
            "sessionAffinity":"ClientIP",
            "loadBalancerSourceRanges":[" 203.0.113.000/025 "],
            "externalIPs":["192.168.099.022"]},
        "status":{"loadBalancer":{"ingress":[{"ip":"1.2.3.004"},{"ip":"5.6.7.8","ipMode":"Proxy"},{"hostname":"lb.example.com"}]}}}"#))
    .unwrap()
    .unwrap();
    assert_eq!(s.service_type, ServiceType::LoadBalancer);
    assert_eq!(
        s.cluster_ips,
        vec!["172.30.0.41".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(s.ports[0].protocol, model::Protocol::Tcp);
    assert_eq!(s.ports[0].node_port, Some(3001));
    assert_eq!(
        s.session_affinity,
        SessionAffinity::ClientIp {
            timeout_seconds: 10800
        }
    );
    assert_eq!(
        s.load_balancer_source_ranges,
        vec!["203.0.113.0/25".parse().unwrap()]
    );
    assert_eq!(
        s.external_ips,
        vec!["192.168.99.22".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        s.load_balancer_ingress.len(),
        2,
        "the hostname-only entry has no IP"
    );
    assert_eq!(s.load_balancer_ingress[1].ip_mode, IpMode::Proxy);
}

#[test]
fn skipped_services() {
    for spec in [
        r#"{"clusterIP":"None","ports":[{"port":80}]}"#,
        r#"{"type":"ExternalName","externalName":"example.com"}"#,
        r#"{"ports":[{"port":80}]}"#,
    ] {
        let json = format!(r#"{{"metadata":{{"namespace":"ns1","name":"svc1"}},"spec":{spec}}}"#);
        assert_eq!(service(&svc(&json)).unwrap(), None, "{spec}");
    }
}

#[test]
fn service_errors_name_object_and_field() {
    let e = service(&svc(r#"{"metadata":{"namespace":"ns1","name":"svc1"},
        "spec":{"clusterIP":"172.30.0.41","ports":[{"port":80},{"port":81,"protocol":"ICMP"}]}}"#))
    .unwrap_err();
    assert_eq!(e.kind, "Service");
    assert_eq!(e.name, "ns1/svc1");
    assert_eq!(e.field, "spec.ports[1].protocol");
    assert_eq!(
        e.to_string(),
        "service ns1/svc1: spec.ports[1].protocol: \"ICMP\" is not supported"
    );
    let e = service(&svc(r#"{"metadata":{"namespace":"ns1","name":"svc1"},
        "spec":{"clusterIP":"172.30.0.41","externalIPs":["1.2.3"],"ports":[{"port":80}]}}"#))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "service ns1/svc1: spec.externalIPs[0]: \"1.2.3\" is not a valid IP address"
    );
    let e = service(&svc(
        r#"{"metadata":{"name":"svc1"},"spec":{"clusterIP":"172.30.0.41"}}"#,
    ))
    .unwrap_err();
    assert_eq!(
        (e.field.as_str(), &e.problem),
        ("metadata.namespace", &Problem::Missing)
    );
}

#[test]
fn slice_defaults() {
    let s = endpoint_slice(&slice(r#"{"metadata":{"namespace":"ns1","name":"svc1-a","labels":{"kubernetes.io/service-name":"svc1"}},
        "addressType":"IPv4",
        "ports":[{"name":"p80","port":80},{"name":"noport"}],
        "endpoints":[
            {"addresses":["10.180.0.1"]},
            {"addresses":["10.180.0.2"],"conditions":{"ready":false,"terminating":true}},
            {"addresses":[]},
            {"addresses":["10.180.0.3"],"nodeName":"node-a","zone":"z1","hints":{"forZones":[{"name":"z1"}]}}]}"#))
    .unwrap()
    .unwrap();
    assert_eq!(s.service_name, "svc1");
    assert_eq!(s.address_type, IpFamily::Ipv4);
    assert_eq!(s.ports.len(), 1, "a port without a number is skipped");
    assert_eq!(
        s.endpoints.len(),
        3,
        "an endpoint without addresses is skipped"
    );
    assert_eq!(
        s.endpoints[0].conditions,
        Conditions::READY,
        "missing conditions mean ready"
    );
    assert_eq!(s.endpoints[1].conditions, Conditions::SERVING_TERMINATING);
    assert_eq!(s.endpoints[2].hints.for_zones, ["z1"]);
}

#[test]
fn ignored_slices_and_slice_errors() {
    let fqdn = r#"{"metadata":{"namespace":"ns1","name":"x","labels":{"kubernetes.io/service-name":"svc1"}},"addressType":"FQDN","endpoints":[]}"#;
    assert_eq!(endpoint_slice(&slice(fqdn)).unwrap(), None);
    let unlabelled =
        r#"{"metadata":{"namespace":"ns1","name":"x"},"addressType":"IPv4","endpoints":[]}"#;
    assert_eq!(endpoint_slice(&slice(unlabelled)).unwrap(), None);
    let bad = r#"{"metadata":{"namespace":"ns1","name":"x","labels":{"kubernetes.io/service-name":"svc1"}},"addressType":"IPv4","endpoints":[{"addresses":["10.0.0.1"]},{"addresses":["nope"]}]}"#;
    let e = endpoint_slice(&slice(bad)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "endpoint slice ns1/x: endpoints[1].addresses[0]: \"nope\" is not a valid IP address"
    );
}
