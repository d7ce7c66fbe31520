//! The List reader against generated dumps: the order of the items, items of other
//! kinds, where the top-level `kind` is written, and splitting a `List` into a
//! `ServiceList` and an `EndpointSliceList` never change the ruleset (issue 13).

use std::collections::BTreeMap;
use std::io;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};
use svcnat::k8s::{ItemProblem, Loaded, ReadError, SkipReason, read, read_slice};
use svcnat::model::ClusterState;
use svcnat::synthetic::{self, Mix, Spec};

/// A generated cluster: up to 30 services of either mix, up to 4 endpoints each.
fn spec() -> impl Strategy<Value = Spec> {
    (
        0usize..30,
        0usize..5,
        prop_oneof![Just(Mix::ClusterIp), Just(Mix::LoadBalancer)],
        any::<u64>(),
    )
        .prop_map(|(services, endpoints, mix, seed)| {
            Spec::new(services, endpoints).with_mix(mix).with_seed(seed)
        })
}

/// A generated cluster, and the items `write_kubectl_list` writes for it in an
/// order drawn by proptest.
fn shuffled() -> impl Strategy<Value = (Spec, ClusterState, Vec<Value>)> {
    spec().prop_flat_map(|spec| {
        let state = spec.build();
        let items = items_of(&state);
        (Just(spec), Just(state), Just(items).prop_shuffle())
    })
}

/// The items of the `List` that `write_kubectl_list` writes for `state`.
fn items_of(state: &ClusterState) -> Vec<Value> {
    let mut json = Vec::new();
    synthetic::write_kubectl_list(state, &mut json).expect("writing to a Vec");
    let mut list: Value = serde_json::from_slice(&json).expect("write_kubectl_list writes JSON");
    match list["items"].take() {
        Value::Array(items) => items,
        other => panic!("items: {other}"),
    }
}

/// The rendered ruleset of `state` (the same bytes both ways, see
/// [`try_render`](crate::fixtures::try_render)).
fn ruleset(state: &ClusterState) -> String {
    crate::fixtures::try_render(state, &synthetic::config()).expect("a generated cluster compiles")
}

/// The kinds of object a dump may hold that svcnat does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Other {
    Pod,
    ConfigMap,
    /// v1 `Endpoints`: reported as skipped, not counted as another kind.
    Endpoints,
    Node,
}

fn other_kind() -> impl Strategy<Value = Other> {
    prop::sample::select(vec![
        Other::Pod,
        Other::ConfigMap,
        Other::Endpoints,
        Other::Node,
    ])
}

/// Items of other kinds and where to insert them.
fn others() -> impl Strategy<Value = Vec<(Other, Index)>> {
    prop::collection::vec((other_kind(), any::<Index>()), 0..8)
}

/// A minimal, realistic object of kind `kind`; `n` tells it apart from the others.
/// Names and addresses overlap those of the generated services on purpose.
fn other_object(kind: Other, n: usize) -> Value {
    let ns = synthetic::NAMESPACE;
    let svc = synthetic::service_name(n);
    match kind {
        Other::Pod => json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{svc}-7d4b9c-x{n}"), "namespace": ns,
                         "labels": {"app": svc}, "uid": format!("0000-pod-{n}")},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
                                     "ports": [{"containerPort": 8080, "protocol": "TCP"}]}],
                     "nodeName": format!("node-{}", n % 10)},
            "status": {"phase": "Running", "podIP": format!("10.0.0.{}", n % 250 + 1)}
        }),
        Other::ConfigMap => json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("config-{n}"), "namespace": ns},
            "data": {"ports": "80,53", "kind": "Service"}
        }),
        Other::Endpoints => json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": svc, "namespace": ns, "labels": {"app": svc}},
            "subsets": [{"addresses": [{"ip": format!("10.0.0.{}", n % 250 + 1),
                                        "nodeName": format!("node-{}", n % 10)}],
                         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]
        }),
        Other::Node => json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": format!("node-{n}"),
                         "labels": {"kubernetes.io/hostname": format!("node-{n}")}},
            "spec": {"podCIDR": format!("10.244.{}.0/24", n % 250)},
            "status": {"addresses": [{"type": "InternalIP",
                                      "address": format!("192.168.0.{}", n % 250 + 10)}]}
        }),
    }
}

/// A list of `kind` as the API server writes it (`kind` first) or as kubectl does
/// (`kind` after `items`).
fn list(kind: &str, api_version: &str, items: &[Value], kind_first: bool) -> Vec<u8> {
    let items = serde_json::to_string(items).expect("Values serialise");
    let (kind, api_version) = (json!(kind), json!(api_version));
    if kind_first {
        format!(
            r#"{{"kind":{kind},"apiVersion":{api_version},"metadata":{{"resourceVersion":"1"}},"items":{items}}}"#
        )
    } else {
        format!(
            r#"{{"apiVersion":{api_version},"items":{items},"kind":{kind},"metadata":{{"resourceVersion":""}}}}"#
        )
    }
    .into_bytes()
}

/// An `io::Read` that gives at most `step` bytes a call, as a pipe does.
struct Trickle<'a> {
    bytes: &'a [u8],
    step: usize,
}

impl io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

/// Reads `bytes` with `read_slice`, and with `read` both from a slice and through
/// a reader giving `step` bytes at a time; all three must agree.
fn load(bytes: &[u8], step: usize) -> Result<Loaded, TestCaseError> {
    let text = || String::from_utf8_lossy(&bytes[..bytes.len().min(400)]).into_owned();
    let loaded = read_slice(bytes)
        .map_err(|e| TestCaseError::fail(format!("read_slice: {e} in {}", text())))?;
    let from_slice = read(bytes).map_err(|e| TestCaseError::fail(format!("read: {e}")))?;
    prop_assert_eq!(&from_slice, &loaded, "read(&[u8]) and read_slice disagree");
    let trickled = read(Trickle { bytes, step })
        .map_err(|e| TestCaseError::fail(format!("read (trickled): {e}")))?;
    prop_assert_eq!(&trickled, &loaded, "read(trickle) and read_slice disagree");
    Ok(loaded)
}

fn kind_of(item: &Value) -> &str {
    item["kind"]
        .as_str()
        .expect("every written item names its kind")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A kubectl `List` read back, its items in any order, with Pods, ConfigMaps,
    /// Nodes and v1 Endpoints among them and the top-level `kind` before or after
    /// `items`, gives the state written and so its ruleset; the report counts
    /// exactly the items added, and names each v1 Endpoints object where it is.
    #[test]
    fn list_order_and_other_kinds_do_not_change_the_ruleset(
        (spec, state, mut items) in shuffled(),
        extras in others(),
        kind_first in any::<bool>(),
        step in 1usize..4096,
    ) {
        let expected = ruleset(&state);
        for (n, (kind, at)) in extras.iter().enumerate() {
            items.insert(at.index(items.len() + 1), other_object(*kind, n));
        }
        let mut other_kinds = BTreeMap::new();
        let mut endpoints = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match kind_of(item) {
                "Service" | "EndpointSlice" => {}
                "Endpoints" => endpoints.push((
                    format!("items[{i}]"),
                    format!("{}/{}", item["metadata"]["namespace"].as_str().unwrap(),
                        item["metadata"]["name"].as_str().unwrap()),
                    SkipReason::EndpointsV1,
                )),
                kind => *other_kinds.entry(kind.to_owned()).or_default() += 1,
            }
        }
        prop_assert_eq!(
            other_kinds.values().sum::<usize>() + endpoints.len(),
            extras.len(),
            "the test counts every item it added"
        );

        let loaded = load(&list("List", "v1", &items, kind_first), step)?;
        prop_assert_eq!(ruleset(&loaded.state), expected, "{:?}", spec);
        prop_assert!(loaded.state == state, "the state read is not the state written");
        prop_assert_eq!(&loaded.report.other_kinds, &other_kinds);
        let skipped: Vec<_> = loaded
            .report
            .skipped
            .iter()
            .map(|s| (s.item.clone(), s.name.clone(), s.reason))
            .collect();
        prop_assert_eq!(skipped, endpoints);
    }

    /// The same items split into a `ServiceList` and an `EndpointSliceList` whose
    /// items lack `kind` and `apiVersion` (as `GET /api/v1/services` returns them),
    /// each list's `kind` before or after its `items` (so the reader must buffer
    /// the items until it knows their kind), read apart and merged either way
    /// round, give the same ruleset.
    #[test]
    fn split_into_typed_lists_does_not_change_the_ruleset(
        (spec, state, items) in shuffled(),
        services_kind_first in any::<bool>(),
        slices_kind_first in any::<bool>(),
        slices_into_services in any::<bool>(),
        step in 1usize..4096,
    ) {
        let expected = ruleset(&state);
        let (mut services, mut slices) = (Vec::new(), Vec::new());
        for mut item in items {
            let to = match kind_of(&item) {
                "Service" => &mut services,
                "EndpointSlice" => &mut slices,
                kind => panic!("write_kubectl_list wrote a {kind}"),
            };
            let fields = item.as_object_mut().expect("items are objects");
            fields.remove("kind");
            fields.remove("apiVersion");
            to.push(item);
        }
        let services = load(&list("ServiceList", "v1", &services, services_kind_first), step)?;
        let slices = load(
            &list("EndpointSliceList", "discovery.k8s.io/v1", &slices, slices_kind_first),
            step,
        )?;
        prop_assert!(services.report.is_empty(), "{}", services.report);
        prop_assert!(slices.report.is_empty(), "{}", slices.report);
        prop_assert_eq!(services.state.slices().count(), 0);
        prop_assert_eq!(slices.state.service_count(), 0);

        let merged = if slices_into_services {
            let mut merged = services.state;
            for slice in slices.state.slices() {
                merged.upsert_slice(slice.clone());
            }
            merged
        } else {
            let mut merged = slices.state;
            for service in services.state.services() {
                merged.upsert_service(service.clone());
            }
            merged
        };
        prop_assert_eq!(ruleset(&merged), expected, "{:?}", spec);
        prop_assert!(merged == state, "the merged state is not the state written");
    }
}

/// A ServiceList item without `kind`, and a Pod that names its kind.
const SERVICE_AND_POD: &str = r#"[
    {"metadata": {"namespace": "ns1", "name": "svc1"},
     "spec": {"clusterIP": "172.30.0.41", "ports": [{"port": 80}]}},
    {"kind": "Pod", "metadata": {"namespace": "ns1", "name": "web-0"}}
]"#;

/// Where the top-level `kind` is written does not change what a document means: a
/// Pod in a `ServiceList` is refused whether the list's `kind` comes before its
/// `items` or after them.
#[test]
fn an_item_of_another_kind_in_a_typed_list_is_refused_wherever_the_list_kind_is() {
    let first = format!(r#"{{"kind": "ServiceList", "items": {SERVICE_AND_POD}}}"#);
    let after = format!(r#"{{"items": {SERVICE_AND_POD}, "kind": "ServiceList"}}"#);
    for text in [first, after] {
        match read_slice(text.as_bytes()) {
            Err(ReadError::Item {
                item,
                problem: ItemProblem::KindInList { kind, list },
                ..
            }) => {
                assert_eq!(
                    (item.as_str(), kind.as_str(), list),
                    ("items[1]", "Pod", "ServiceList")
                );
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

/// Where the top-level `kind` is written does not change which of two items with
/// the same name is read last: the one that names its kind is not read before an
/// earlier one that does not.
#[test]
fn items_are_read_in_input_order_wherever_the_list_kind_is() {
    let items = r#"[
        {"metadata": {"namespace": "ns1", "name": "svc1"},
         "spec": {"clusterIP": "172.30.0.41", "ports": [{"port": 80}]}},
        {"kind": "Service", "metadata": {"namespace": "ns1", "name": "svc1"},
         "spec": {"clusterIP": "172.30.0.42", "ports": [{"port": 80}]}}
    ]"#;
    let first = format!(r#"{{"kind": "ServiceList", "items": {items}}}"#);
    let after = format!(r#"{{"items": {items}, "kind": "ServiceList"}}"#);
    let first = read_slice(first.as_bytes()).unwrap();
    let after = read_slice(after.as_bytes()).unwrap();
    assert_eq!(after, first);
}
