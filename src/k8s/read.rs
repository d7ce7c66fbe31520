//! Reading a cluster dump: the JSON `kubectl get services,endpointslices -A -o json`
//! prints, or what the API server returns for a list, into a [`ClusterState`].
//!
//! [`read`] takes any [`io::Read`] and accepts:
//!
//! | top level | items |
//! |---|---|
//! | a `List` (what `kubectl get -o json` prints) | each item names its `kind` |
//! | a `ServiceList` (`GET /api/v1/services`) | items without `kind` are Services |
//! | an `EndpointSliceList` (`GET /apis/discovery.k8s.io/v1/endpointslices`) | items without `kind` are EndpointSlices |
//! | a single `Service` or `EndpointSlice` | |
//!
//! Items are decoded one at a time, straight into typed objects: no tree of the
//! whole document is built, so reading takes the input's text and the
//! [`ClusterState`] it fills, and little more.
//!
//! What it leaves out is reported in [`Loaded::report`], not refused: items of other
//! kinds (counted per kind), v1 `Endpoints` (svcnat reads EndpointSlices), and the
//! objects kube-proxy skips (headless and ExternalName services, FQDN slices, slices
//! without the `kubernetes.io/service-name` label). A headless service is kept in
//! the state as a service without cluster IPs, which gets no rules, so that its
//! slices are not taken for a missing service's. Anything else that is not a
//! cluster dump is a [`ReadError`] naming the item (`items[3]`) and the field.
//!
//! ```
//! let json = r#"{"kind": "ServiceList", "apiVersion": "v1", "items": [
//!   {"metadata": {"namespace": "ns1", "name": "svc1"},
//!    "spec": {"clusterIP": "172.30.0.41", "ports": [{"name": "p80", "port": 80}]}},
//!   {"metadata": {"namespace": "ns1", "name": "db"},
//!    "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}
//! ]}"#;
//! let loaded = svcnat::k8s::read(json.as_bytes())?;
//! // The headless service is kept without cluster IPs (its slices are its own)
//! // and gets no rules; the report says so.
//! assert_eq!(loaded.state.service_count(), 2);
//! assert_eq!(loaded.report.to_string(), "skipped headless service ns1/db");
//! # Ok::<(), svcnat::k8s::ReadError>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use thiserror::Error;

use super::{
    ConvertError, SERVICE_NAME_LABEL, endpoint_slice, headless_service, kind_words, service,
};
use crate::model::ClusterState;

/// The kinds a top level may have, for messages.
const READABLE: &str = "List, ServiceList, EndpointSliceList, Service or EndpointSlice";

/// What [`read`] returns: the state, and what it left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Loaded {
    /// The Services and EndpointSlices read.
    pub state: ClusterState,
    /// What was left out, and why.
    pub report: ReadReport,
}

/// What [`read`] left out of the state, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadReport {
    /// Items of kinds svcnat does not read (Pods, ConfigMaps, ...), counted per kind.
    /// A kind of another API group than svcnat reads is named with its
    /// `apiVersion`: `Service (serving.knative.dev/v1)`.
    pub other_kinds: BTreeMap<String, usize>,
    /// Objects of the kinds svcnat reads that it left out, in input order.
    pub skipped: Vec<Skipped>,
}

/// One object [`read`] left out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Skipped {
    /// Where it was: `items[3]`, or empty for a top-level object.
    pub item: String,
    /// `namespace/name`.
    pub name: String,
    /// Why.
    pub reason: SkipReason,
}

/// Why [`read`] left an object out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum SkipReason {
    /// A headless Service (`clusterIP: None`) or one without a cluster IP: kube-proxy
    /// writes no rules for it.
    Headless,
    /// An ExternalName Service: a DNS name, no rules.
    ExternalName,
    /// An EndpointSlice of address type FQDN, which kube-proxy ignores.
    FqdnSlice,
    /// An EndpointSlice without the `kubernetes.io/service-name` label, which
    /// kube-proxy ignores.
    NoServiceLabel,
    /// A v1 `Endpoints` object: svcnat reads EndpointSlices, as kube-proxy does.
    EndpointsV1,
}

impl SkipReason {
    /// How the report names objects skipped for this reason, one or many, and why
    /// they were, where the name does not say.
    fn describe(self, one: bool) -> (&'static str, &'static str) {
        match self {
            SkipReason::Headless if one => ("headless service", ""),
            SkipReason::Headless => ("headless services", ""),
            SkipReason::ExternalName if one => ("ExternalName service", ""),
            SkipReason::ExternalName => ("ExternalName services", ""),
            SkipReason::FqdnSlice if one => ("FQDN endpoint slice", ""),
            SkipReason::FqdnSlice => ("FQDN endpoint slices", ""),
            SkipReason::NoServiceLabel if one => {
                ("endpoint slice", " (no kubernetes.io/service-name label)")
            }
            SkipReason::NoServiceLabel => {
                ("endpoint slices", " (no kubernetes.io/service-name label)")
            }
            SkipReason::EndpointsV1 if one => (
                "v1 Endpoints object",
                " (svcnat reads EndpointSlices, discovery.k8s.io/v1)",
            ),
            SkipReason::EndpointsV1 => (
                "v1 Endpoints objects",
                " (svcnat reads EndpointSlices, discovery.k8s.io/v1)",
            ),
        }
    }
}

impl ReadReport {
    /// True if nothing was left out.
    pub fn is_empty(&self) -> bool {
        self.other_kinds.is_empty() && self.skipped.is_empty()
    }

    /// The line that deserves a warning: v1 `Endpoints` objects were read, so the
    /// dump probably lacks the EndpointSlices that would give their services
    /// endpoints. `None` if there were none.
    pub fn endpoints_warning(&self) -> Option<String> {
        let only = ReadReport {
            other_kinds: BTreeMap::new(),
            skipped: self
                .skipped
                .iter()
                .filter(|s| s.reason == SkipReason::EndpointsV1)
                .cloned()
                .collect(),
        };
        only.lines().pop()
    }

    /// The report as lines, one per reason and one for the other kinds; empty if
    /// nothing was left out. At most three names are listed per line.
    ///
    /// `skipped 2 headless services: ns1/db, ns2/cache`,
    /// `skipped 5 items of other kinds: ConfigMap 2, Pod 3`.
    pub fn lines(&self) -> Vec<String> {
        let mut by_reason: BTreeMap<SkipReason, Vec<&str>> = BTreeMap::new();
        for s in &self.skipped {
            by_reason.entry(s.reason).or_default().push(&s.name);
        }
        let mut lines = Vec::new();
        for (reason, names) in by_reason {
            let shown = names.iter().take(3).copied().collect::<Vec<_>>().join(", ");
            let more = names.len().saturating_sub(3);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            let (noun, why) = reason.describe(names.len() == 1);
            lines.push(if names.len() == 1 {
                format!("skipped {noun} {shown}{why}")
            } else {
                format!("skipped {} {noun}: {shown}{more}{why}", names.len())
            });
        }
        if !self.other_kinds.is_empty() {
            let total: usize = self.other_kinds.values().sum();
            let kinds = self
                .other_kinds
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let items = if total == 1 { "item" } else { "items" };
            lines.push(format!("skipped {total} {items} of other kinds: {kinds}"));
        }
        lines
    }
}

impl fmt::Display for ReadReport {
    /// The [`ReadReport::lines`], joined by newlines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

/// Why [`read`] refused its input.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The reader failed.
    #[error("reading: {0}")]
    Io(#[from] io::Error),
    /// The text is not JSON.
    #[error("not JSON: {message} at line {line} column {column}{}", yaml_hint(*.looks_like_yaml))]
    Syntax {
        /// serde_json's description.
        message: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The text starts as YAML does (`apiVersion: v1`, `---`, a comment).
        looks_like_yaml: bool,
    },
    /// The top level is not an object.
    #[error("the top level is {found}, not an object: expected a {READABLE}{}", array_hint(.found))]
    NotAnObject {
        /// What it is: `an array`, `a number`, `a string`, `null`, `a boolean`.
        found: &'static str,
    },
    /// The top-level object has no `kind` and no `items`.
    #[error("kind: missing: expected a {READABLE}")]
    MissingKind,
    /// The top-level object's kind is not one svcnat reads.
    #[error("kind: {kind:?} is not a kind svcnat reads: expected a {READABLE}{}", kind_hint(.kind))]
    UnknownKind {
        /// The kind.
        kind: String,
    },
    /// A top-level field has the wrong type.
    #[error("{field}: {problem}")]
    Field {
        /// The field (`kind`, `items`).
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// One item (or the single top-level object) is wrong.
    #[error("{}{}{problem}", item_label(.item), object_label(.kind, .name))]
    Item {
        /// `items[3]`, or empty for a single top-level object.
        item: String,
        /// The item's kind, where it is known.
        kind: Option<String>,
        /// The item's `namespace/name`, where it is known.
        name: Option<String>,
        /// What is wrong.
        problem: ItemProblem,
    },
}

/// What is wrong with one item.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ItemProblem {
    /// The item is not a JSON object.
    #[error("{found} is not an object")]
    NotAnObject {
        /// What it is.
        found: &'static str,
    },
    /// An item of a generic `List` has no `kind`.
    #[error("kind: missing (items of a List name their kind)")]
    MissingKind,
    /// A kind spelt with the wrong case (`service`).
    #[error("kind: {kind:?} is not a kind: did you mean {expected:?}")]
    KindCase {
        /// The kind as given.
        kind: String,
        /// The kind it resembles.
        expected: &'static str,
    },
    /// An item of another kind in a typed list (a Pod in a `ServiceList`).
    #[error("kind: {kind:?} in a {list}")]
    KindInList {
        /// The item's kind.
        kind: String,
        /// The list's kind.
        list: &'static str,
    },
    /// A field has the wrong JSON type or value for its kind.
    #[error("{field}: {message}")]
    Decode {
        /// The field, as a path (`spec.ports[0].port`); `.` for the whole object.
        field: String,
        /// serde's description.
        message: String,
    },
    /// The object decoded, but a field is not valid (a port out of range, an
    /// address that does not parse).
    #[error("{field}: {problem}", field = .0.field, problem = .0.problem)]
    Convert(ConvertError),
}

fn yaml_hint(looks_like_yaml: bool) -> &'static str {
    if looks_like_yaml {
        " (this looks like YAML: svcnat reads JSON, from `kubectl get ... -o json`)"
    } else {
        ""
    }
}

fn array_hint(found: &str) -> &'static str {
    if found == "an array" {
        " (wrap the items in {\"kind\": \"List\", \"items\": [...]})"
    } else {
        ""
    }
}

fn kind_hint(kind: &str) -> String {
    if matches!(kind, "Endpoints" | "EndpointsList") {
        return " (svcnat reads EndpointSlices, discovery.k8s.io/v1)".to_owned();
    }
    let known = [
        "List",
        "ServiceList",
        "EndpointSliceList",
        "Service",
        "EndpointSlice",
    ];
    match known.iter().find(|k| k.eq_ignore_ascii_case(kind)) {
        Some(k) => format!(" (kinds are case-sensitive: did you mean {k:?})"),
        None => String::new(),
    }
}

fn item_label(item: &str) -> String {
    if item.is_empty() {
        String::new()
    } else {
        format!("{item}: ")
    }
}

/// `service ns/name: `, as conversion and compile errors name an object.
fn object_label(kind: &Option<String>, name: &Option<String>) -> String {
    match (kind.as_deref().map(kind_words), name) {
        (Some(k), Some(n)) => format!("{k} {n}: "),
        (Some(k), None) => format!("{k}: "),
        (None, Some(n)) => format!("{n}: "),
        (None, None) => String::new(),
    }
}

/// Reads a cluster dump from `reader`: the JSON of a `List` (what `kubectl get
/// services,endpointslices -A -o json` prints), a `ServiceList`, an
/// `EndpointSliceList`, or a single `Service` or `EndpointSlice`.
///
/// The text is read into memory first (one buffer the size of the input), then
/// decoded item by item from there; the buffer is freed before this returns.
///
/// # Errors
/// [`ReadError`]: the reader fails, the text is not JSON (with a hint when it looks
/// like YAML), the top level is not an object of a kind svcnat reads, or an item is
/// not an object, lacks its kind, or has a field that does not decode or convert;
/// each names the item and the field.
pub fn read<R: io::Read>(mut reader: R) -> Result<Loaded, ReadError> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes)?;
    read_slice(&bytes)
}

/// [`read`] from bytes already in memory.
///
/// # Errors
/// As [`read`].
pub fn read_slice(bytes: &[u8]) -> Result<Loaded, ReadError> {
    let mut reader = Reader::default();
    let result = {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        de::Deserializer::deserialize_any(&mut de, TopLevel(&mut reader)).and_then(|()| de.end())
    };
    if let Some(e) = reader.error.take() {
        return Err(e);
    }
    match result {
        Ok(()) => Ok(Loaded {
            state: reader.state,
            report: reader.report,
        }),
        Err(e) if e.is_io() => Err(ReadError::Io(e.into())),
        Err(e) => Err(ReadError::Syntax {
            message: without_position(&e),
            line: e.line(),
            column: e.column(),
            looks_like_yaml: looks_like_yaml(bytes),
        }),
    }
}

/// serde_json's message without its " at line L column C", which is given apart
/// (or, inside an item, would count from the item's start).
fn without_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message,
    }
}

/// True if the text starts as a YAML document does and JSON cannot.
fn looks_like_yaml(text: &[u8]) -> bool {
    let text = text.trim_ascii_start();
    text.starts_with(b"---")
        || matches!(text.first(), Some(b'#' | b'%'))
        || (text.first().is_some_and(u8::is_ascii_alphabetic)
            && !text.starts_with(b"true")
            && !text.starts_with(b"false")
            && !text.starts_with(b"null"))
}

/// The kinds of list [`read`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListKind {
    /// `List`: every item names its kind.
    Any,
    Services,
    Slices,
}

impl ListKind {
    fn of(kind: &str) -> Option<ListKind> {
        match kind {
            "List" => Some(ListKind::Any),
            "ServiceList" => Some(ListKind::Services),
            "EndpointSliceList" => Some(ListKind::Slices),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ListKind::Any => "List",
            ListKind::Services => "ServiceList",
            ListKind::Slices => "EndpointSliceList",
        }
    }

    /// The kind of an item that names none.
    fn item_kind(self) -> Option<&'static str> {
        match self {
            ListKind::Any => None,
            ListKind::Services => Some("Service"),
            ListKind::Slices => Some("EndpointSlice"),
        }
    }
}

/// An object's fields, each value still JSON text: an item is walked once to find
/// its kind, and each field is decoded once, as the kind's type.
type Fields<'de> = Vec<(Key<'de>, &'de RawValue)>;

/// A field name, borrowed from the input unless it has escapes.
#[derive(Debug)]
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

fn field<'de>(fields: &Fields<'de>, name: &str) -> Option<&'de RawValue> {
    fields.iter().find(|(k, _)| k.0 == name).map(|(_, v)| *v)
}

#[derive(Default)]
struct Reader<'de> {
    state: ClusterState,
    report: ReadReport,
    /// The top level's kind, once read.
    kind: Option<String>,
    /// Items read before the list's kind was known.
    pending: Vec<(usize, Fields<'de>)>,
    /// The first error, when it arose inside serde's walk.
    error: Option<ReadError>,
}

/// The part of `metadata` the errors and the report name an object by.
#[derive(Deserialize)]
struct HeadMeta {
    namespace: Option<String>,
    name: Option<String>,
}

/// `namespace/name` of an object, if its metadata says.
fn name_of(fields: &Fields<'_>) -> Option<String> {
    let meta: HeadMeta = serde_json::from_str(field(fields, "metadata")?.get()).ok()?;
    Some(format!(
        "{}/{}",
        meta.namespace.unwrap_or_default(),
        meta.name.unwrap_or_default()
    ))
}

fn json_type(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    }
}

/// Decodes an object's fields as `T`; on an error, names the failing field.
fn decode<'de, T: Deserialize<'de>>(fields: &Fields<'de>) -> Result<T, ItemProblem> {
    let map = || {
        de::value::MapDeserializer::<_, serde_json::Error>::new(
            fields.iter().map(|(k, v)| (k.0.as_ref(), *v)),
        )
    };
    // Tracking the path costs; it is done again only to say where the error is.
    T::deserialize(map()).map_err(
        |first| match serde_path_to_error::deserialize::<_, T>(map()) {
            Err(e) => ItemProblem::Decode {
                field: e.path().to_string(),
                message: without_position(e.inner()),
            },
            Ok(_) => ItemProblem::Decode {
                field: ".".to_owned(),
                message: without_position(&first),
            },
        },
    )
}

impl<'de> Reader<'de> {
    /// Reads one object: `index` is its place in `items`, `None` for a single
    /// top-level object.
    fn item(&mut self, index: Option<usize>, fields: Fields<'de>) -> Result<(), ReadError> {
        // Before the list's kind is known (kubectl writes it after the items), no
        // item can be checked against it: all wait, in order. They are borrowed
        // from the input, so waiting costs a few words per field.
        if let Some(index) = index
            && self.kind.is_none()
        {
            self.pending.push((index, fields));
            return Ok(());
        }
        let label = index.map(|i| format!("items[{i}]")).unwrap_or_default();
        let fail = |kind: Option<&str>, problem| ReadError::Item {
            item: label.clone(),
            kind: kind.map(str::to_owned),
            name: name_of(&fields),
            problem,
        };
        let own_kind = match field(&fields, "kind") {
            None => None,
            Some(raw) => match serde_json::from_str::<Cow<'_, str>>(raw.get()) {
                Ok(kind) => Some(kind),
                Err(_) => {
                    return Err(fail(
                        None,
                        ItemProblem::Decode {
                            field: "kind".to_owned(),
                            message: format!("{} is not a string", json_type(raw.get())),
                        },
                    ));
                }
            },
        };
        let list = index.and_then(|_| self.kind.as_deref().and_then(ListKind::of));
        let kind: Cow<'_, str> = match (own_kind, list) {
            (Some(kind), Some(list)) if list != ListKind::Any => {
                if Some(kind.as_ref()) != list.item_kind() {
                    return Err(fail(
                        None,
                        ItemProblem::KindInList {
                            kind: kind.into_owned(),
                            list: list.name(),
                        },
                    ));
                }
                kind
            }
            (Some(kind), _) => kind,
            (None, Some(list)) => match list.item_kind() {
                Some(kind) => Cow::Borrowed(kind),
                None => return Err(fail(None, ItemProblem::MissingKind)),
            },
            // A single top-level object without a kind (refused before it gets here).
            (None, None) => return Err(fail(None, ItemProblem::MissingKind)),
        };
        let skip = |reason| Skipped {
            item: label.clone(),
            name: name_of(&fields).unwrap_or_default(),
            reason,
        };
        // A kind names an object only with its API group: a Knative `Service`
        // (serving.knative.dev) is another kind.
        let api_version = field(&fields, "apiVersion")
            .and_then(|raw| serde_json::from_str::<Cow<'_, str>>(raw.get()).ok());
        let core = match (kind.as_ref(), api_version.as_deref()) {
            (_, None) => true,
            ("Service" | "Endpoints", Some(v)) => v == "v1",
            ("EndpointSlice", Some(v)) => v == "discovery.k8s.io/v1",
            _ => true,
        };
        if !core {
            if index.is_none() {
                return Err(ReadError::UnknownKind {
                    kind: format!("{kind} ({})", api_version.unwrap_or_default()),
                });
            }
            let other = format!("{kind} ({})", api_version.unwrap_or_default());
            *self.report.other_kinds.entry(other).or_default() += 1;
            return Ok(());
        }
        match kind.as_ref() {
            "Service" => {
                let svc: core::Service = decode(&fields).map_err(|p| fail(Some("Service"), p))?;
                match service(&svc) {
                    Ok(Some(s)) => {
                        self.state.upsert_service(s);
                    }
                    Ok(None) => match headless_service(&svc) {
                        // Kept, without rules, so its slices have their service.
                        Some(headless) => {
                            self.state.upsert_service(headless);
                            self.report.skipped.push(skip(SkipReason::Headless));
                        }
                        None => self.report.skipped.push(skip(SkipReason::ExternalName)),
                    },
                    Err(e) => return Err(fail(Some("Service"), ItemProblem::Convert(e))),
                }
            }
            "EndpointSlice" => {
                let slice: discovery::EndpointSlice =
                    decode(&fields).map_err(|p| fail(Some("EndpointSlice"), p))?;
                match endpoint_slice(&slice) {
                    Ok(Some(s)) => {
                        self.state.upsert_slice(s);
                    }
                    Ok(None) => {
                        let labelled = slice
                            .metadata
                            .labels
                            .as_ref()
                            .is_some_and(|l| l.contains_key(SERVICE_NAME_LABEL));
                        self.report.skipped.push(skip(if labelled {
                            SkipReason::FqdnSlice
                        } else {
                            SkipReason::NoServiceLabel
                        }));
                    }
                    Err(e) => return Err(fail(Some("EndpointSlice"), ItemProblem::Convert(e))),
                }
            }
            "Endpoints" => self.report.skipped.push(skip(SkipReason::EndpointsV1)),
            other => {
                for expected in ["Service", "EndpointSlice", "Endpoints"] {
                    if other.eq_ignore_ascii_case(expected) {
                        return Err(fail(
                            None,
                            ItemProblem::KindCase {
                                kind: other.to_owned(),
                                expected,
                            },
                        ));
                    }
                }
                if index.is_none() {
                    return Err(ReadError::UnknownKind {
                        kind: other.to_owned(),
                    });
                }
                *self
                    .report
                    .other_kinds
                    .entry(kind.into_owned())
                    .or_default() += 1;
            }
        }
        Ok(())
    }

    /// Keeps `e` and returns the serde error that stops the walk.
    fn stop<E: de::Error>(&mut self, e: ReadError) -> E {
        self.error = Some(e);
        E::custom("svcnat: stopped")
    }
}

/// The top level of a dump.
struct TopLevel<'r, 'de>(&'r mut Reader<'de>);

impl<'de> Visitor<'de> for TopLevel<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {READABLE}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let reader = self.0;
        let mut items_seen = false;
        // The fields of a single object, kept to decode it once its kind is known.
        let mut fields: Fields<'de> = Vec::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key.0.as_ref() {
                "kind" => {
                    let kind: &'de RawValue = map.next_value()?;
                    match serde_json::from_str::<String>(kind.get()) {
                        Ok(k) => reader.kind = Some(k),
                        Err(_) => {
                            let e = ReadError::Field {
                                field: "kind",
                                problem: format!("{} is not a string", json_type(kind.get())),
                            };
                            return Err(reader.stop(e));
                        }
                    }
                    fields.push((key, kind));
                }
                "items" => {
                    if let Some(kind) = &reader.kind
                        && ListKind::of(kind).is_none()
                    {
                        let e = ReadError::UnknownKind { kind: kind.clone() };
                        return Err(reader.stop(e));
                    }
                    items_seen = true;
                    map.next_value_seed(Items(reader))?;
                }
                _ => {
                    let value: &'de RawValue = map.next_value()?;
                    fields.push((key, value));
                }
            }
        }
        if items_seen {
            let list = match reader.kind.as_deref() {
                None => ListKind::Any,
                Some(kind) => match ListKind::of(kind) {
                    Some(list) => list,
                    None => {
                        let e = ReadError::UnknownKind {
                            kind: kind.to_owned(),
                        };
                        return Err(reader.stop(e));
                    }
                },
            };
            reader.kind = Some(list.name().to_owned());
            for (index, fields) in std::mem::take(&mut reader.pending) {
                if let Err(e) = reader.item(Some(index), fields) {
                    return Err(reader.stop(e));
                }
            }
            return Ok(());
        }
        match reader.kind.as_deref() {
            None => Err(reader.stop(ReadError::MissingKind)),
            // An empty list written without its items.
            Some(kind) if ListKind::of(kind).is_some() => Ok(()),
            Some("Service" | "EndpointSlice") => match reader.item(None, fields) {
                Ok(()) => Ok(()),
                Err(e) => Err(reader.stop(e)),
            },
            Some(kind) => {
                let e = ReadError::UnknownKind {
                    kind: kind.to_owned(),
                };
                Err(reader.stop(e))
            }
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.0.stop(ReadError::NotAnObject { found: "an array" }))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.0.stop(ReadError::NotAnObject { found: "a string" }))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.0.stop(ReadError::NotAnObject { found: "a boolean" }))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.0.stop(ReadError::NotAnObject { found: "a number" }))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.0.stop(ReadError::NotAnObject { found: "a number" }))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.0.stop(ReadError::NotAnObject { found: "a number" }))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.0.stop(ReadError::NotAnObject { found: "null" }))
    }
}

/// A list's `items`, read one at a time.
struct Items<'r, 'de>(&'r mut Reader<'de>);

impl<'de> DeserializeSeed<'de> for Items<'_, 'de> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Items<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let reader = self.0;
        let mut index = 0;
        while let Some(item) = seq.next_element_seed(ItemSeed)? {
            let result = match item {
                Ok(fields) => reader.item(Some(index), fields),
                Err(found) => Err(ReadError::Item {
                    item: format!("items[{index}]"),
                    kind: None,
                    name: None,
                    problem: ItemProblem::NotAnObject { found },
                }),
            };
            if let Err(e) = result {
                return Err(reader.stop(e));
            }
            index += 1;
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.0.stop(not_an_array("a string")))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.0.stop(not_an_array("a boolean")))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.0.stop(not_an_array("a number")))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.0.stop(not_an_array("a number")))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.0.stop(not_an_array("a number")))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        // `"items": null`, as Go writes an empty list it never filled.
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.0.stop(not_an_array("an object")))
    }
}

fn not_an_array(found: &str) -> ReadError {
    ReadError::Field {
        field: "items",
        problem: format!("{found} is not an array"),
    }
}

/// One item: its fields, or what it is if it is not an object.
struct ItemSeed;

impl<'de> DeserializeSeed<'de> for ItemSeed {
    type Value = Result<Fields<'de>, &'static str>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemSeed {
    type Value = Result<Fields<'de>, &'static str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(8);
        while let Some(key) = map.next_key::<Key<'de>>()? {
            fields.push((key, map.next_value::<&'de RawValue>()?));
        }
        Ok(Ok(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(Err("an array"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err("a string"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Err("null"))
    }
}
