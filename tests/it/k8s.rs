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

/// Watch events through `Syncer::apply_k8s`: updates that take an object out of
/// what kube-proxy models become removals, and a relabelled slice moves.
mod apply {

    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use svcnat::error::Problem;
    use svcnat::exec::Recorder;
    use svcnat::k8s::{Action, Event, service_key, slice_key};
    use svcnat::model::{ServiceKey, SliceKey};
    use svcnat::sync::Syncer;

    use crate::fixtures::config;

    use crate::fixtures::recorder_tables as tables;

    fn all_rules(rec: &Recorder) -> String {
        tables(rec)
            .into_values()
            .flatten()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Service `name` with one TCP port `p80`; `spec` fields after the ports.
    fn svc(name: &str, spec: &str) -> Service {
        serde_json::from_str(&format!(
            r#"{{"metadata":{{"namespace":"ns1","name":"{name}"}},
                "spec":{{"ports":[{{"name":"p80","port":80}}],{spec}}}}}"#
        ))
        .unwrap()
    }

    /// Slice `name` with port `p80` and one endpoint, labelled for `service` if given.
    fn slice(name: &str, service: Option<&str>, address_type: &str, ep: &str) -> EndpointSlice {
        let labels = service
            .map(|s| format!(r#","labels":{{"kubernetes.io/service-name":"{s}"}}"#))
            .unwrap_or_default();
        serde_json::from_str(&format!(
            r#"{{"metadata":{{"namespace":"ns1","name":"{name}"{labels}}},
                "addressType":"{address_type}","ports":[{{"name":"p80","port":8080}}],
                "endpoints":[{{"addresses":["{ep}"]}}]}}"#
        ))
        .unwrap()
    }

    fn syncer() -> Syncer<Recorder> {
        Syncer::new(Recorder::new(), config()).unwrap()
    }

    fn apply(syncer: &mut Syncer<Recorder>, event: Event<'_>) -> Action {
        syncer.apply_k8s(event).unwrap()
    }

    #[test]
    fn a_service_that_becomes_headless_or_external_name_leaves_no_rules() {
        let kept = svc("kept", r#""clusterIP":"172.30.0.10""#);
        let goes = svc("goes", r#""clusterIP":"172.30.0.11""#);
        let kept_eps = slice("kept-a", Some("kept"), "IPv4", "10.180.0.10");
        let goes_eps = slice("goes-a", Some("goes"), "IPv4", "10.180.0.11");

        // What a node that never had `goes` holds (its slice, which Kubernetes
        // keeps, is there too).
        let mut never = syncer();
        for event in [
            Event::applied(&kept),
            Event::applied(&kept_eps),
            Event::applied(&goes_eps),
        ] {
            assert_eq!(apply(&mut never, event), Action::Upserted);
        }
        never.sync().unwrap();
        assert!(!all_rules(never.executor()).contains("172.30.0.11"));

        for update in [
            svc("goes", r#""clusterIP":"None""#),
            svc(
                "goes",
                r#""type":"ExternalName","externalName":"example.com""#,
            ),
        ] {
            let mut syncer = syncer();
            for event in [
                Event::applied(&kept),
                Event::applied(&goes),
                Event::applied(&kept_eps),
                Event::applied(&goes_eps),
            ] {
                assert_eq!(apply(&mut syncer, event), Action::Upserted);
            }
            syncer.sync().unwrap();
            assert!(all_rules(syncer.executor()).contains("172.30.0.11"));

            assert_eq!(apply(&mut syncer, Event::applied(&update)), Action::Removed);
            assert_eq!(apply(&mut syncer, Event::applied(&update)), Action::Ignored);
            let report = syncer.sync().unwrap();
            assert!(!report.full, "{report}");
            assert_eq!(tables(syncer.executor()), tables(never.executor()));
            assert_eq!(syncer.applied_ruleset(), never.applied_ruleset());
            // A headless service stays in the state, without rules, so that its
            // slices have their service; an ExternalName one goes.
            // Its slice is then its own, not a missing service's: no warning.
            let mut expected = never.state().clone();
            if let Some(headless) = svcnat::k8s::headless_service(&update) {
                assert!(headless.cluster_ips.is_empty());
                expected.upsert_service(headless);
                assert!(report.warnings.is_empty(), "{:?}", report.warnings);
            }
            assert_eq!(syncer.state(), &expected);
        }
    }

    #[test]
    fn a_slice_that_changes_its_service_label_moves() {
        let one = svc("one", r#""clusterIP":"172.30.0.21""#);
        let two = svc("two", r#""clusterIP":"172.30.0.22""#);
        let under_one = slice("web-abcde", Some("one"), "IPv4", "10.180.0.7");
        let under_two = slice("web-abcde", Some("two"), "IPv4", "10.180.0.7");

        // A node that only ever saw the slice under `two`.
        let mut direct = syncer();
        for event in [
            Event::applied(&one),
            Event::applied(&two),
            Event::applied(&under_two),
        ] {
            apply(&mut direct, event);
        }
        direct.sync().unwrap();

        let mut syncer = syncer();
        for event in [
            Event::applied(&one),
            Event::applied(&two),
            Event::applied(&under_one),
        ] {
            assert_eq!(apply(&mut syncer, event), Action::Upserted);
        }
        syncer.sync().unwrap();
        assert_ne!(tables(syncer.executor()), tables(direct.executor()));

        assert_eq!(
            apply(&mut syncer, Event::applied(&under_two)),
            Action::Upserted
        );
        let report = syncer.sync().unwrap();
        assert!(!report.full, "{report}");
        assert_eq!(report.recompiled, 2, "both services: {report}");
        let (key_one, key_two) = (ServiceKey::new("ns1", "one"), ServiceKey::new("ns1", "two"));
        assert_eq!(syncer.state().slices_of(&key_one).count(), 0);
        assert_eq!(syncer.state().slices_of(&key_two).count(), 1);
        assert_eq!(tables(syncer.executor()), tables(direct.executor()));
        assert_eq!(syncer.state(), direct.state());
    }

    #[test]
    fn a_slice_that_loses_its_label_or_becomes_fqdn_is_removed() {
        let one = svc("one", r#""clusterIP":"172.30.0.21""#);
        let labelled = slice("web-abcde", Some("one"), "IPv4", "10.180.0.7");
        let mut empty = syncer();
        apply(&mut empty, Event::applied(&one));
        empty.sync().unwrap();

        for update in [
            slice("web-abcde", None, "IPv4", "10.180.0.7"),
            slice("web-abcde", Some("one"), "FQDN", "web.example.com"),
        ] {
            let mut syncer = syncer();
            apply(&mut syncer, Event::applied(&one));
            assert_eq!(
                apply(&mut syncer, Event::applied(&labelled)),
                Action::Upserted
            );
            syncer.sync().unwrap();
            assert!(all_rules(syncer.executor()).contains("10.180.0.7:8080"));

            assert_eq!(apply(&mut syncer, Event::applied(&update)), Action::Removed);
            // Its delete event carries the last version, without the label: the
            // slice is known by namespace and name, and is gone already.
            assert_eq!(apply(&mut syncer, Event::deleted(&update)), Action::Ignored);
            syncer.sync().unwrap();
            assert_eq!(tables(syncer.executor()), tables(empty.executor()));
            assert_eq!(syncer.state(), empty.state());
        }
    }

    #[test]
    fn deletes_by_key_and_bad_objects() {
        let one = svc("one", r#""clusterIP":"172.30.0.21""#);
        let eps = slice("web-abcde", Some("one"), "IPv4", "10.180.0.7");
        assert_eq!(service_key(&one).unwrap(), ServiceKey::new("ns1", "one"));
        assert_eq!(slice_key(&eps).unwrap(), SliceKey::new("ns1", "web-abcde"));

        let mut syncer = syncer();
        apply(&mut syncer, Event::applied(&one));
        apply(&mut syncer, Event::applied(&eps));
        // A slice's delete event removes it even if its last version was
        // relabelled.
        let relabelled = slice("web-abcde", Some("other"), "IPv4", "10.180.0.7");
        assert_eq!(
            apply(&mut syncer, Event::deleted(&relabelled)),
            Action::Removed
        );
        assert_eq!(syncer.state().slices().count(), 0);
        assert_eq!(apply(&mut syncer, Event::deleted(&one)), Action::Removed);
        assert_eq!(apply(&mut syncer, Event::deleted(&one)), Action::Ignored);
        assert_eq!(syncer.state(), &svcnat::model::ClusterState::new());

        // An object that does not convert is refused and changes nothing: the
        // state keeps the last good version.
        apply(&mut syncer, Event::applied(&one));
        let bad = svc("one", r#""clusterIP":"172.30.0.300""#);
        let e = syncer.apply_k8s(Event::applied(&bad)).unwrap_err();
        assert_eq!(e.field, "spec.clusterIP");
        assert_eq!(syncer.state().service_count(), 1);
        let mut nameless = one.clone();
        nameless.metadata.namespace = None;
        let e = syncer.apply_k8s(Event::deleted(&nameless)).unwrap_err();
        assert_eq!(
            (e.field.as_str(), &e.problem),
            ("metadata.namespace", &Problem::Missing)
        );
        assert!(service_key(&nameless).is_err());
        assert_eq!(syncer.state().service_count(), 1);
    }
}
