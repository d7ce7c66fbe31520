//! Pure data: services, endpoint slices, the proxy's configuration.
//!
//! Nothing here does IO or validation; [`crate::compile`] validates what it reads.

mod config;
mod endpoints;
mod service;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use thiserror::Error;

pub use config::{LocalTrafficDetector, NodePortAddress, ProxyConfig};
pub use endpoints::{Conditions, Endpoint, EndpointPort, EndpointSlice, Hints, SliceKey};
/// The CIDR type the model takes (cluster CIDRs, node-port addresses, source
/// ranges), re-exported so that an embedder needs no `ipnet` dependency of its own:
///
/// ```
/// use svcnat::model::{IpNet, ProxyConfig};
/// let pods: IpNet = "10.244.0.0/16".parse().unwrap();
/// let config = ProxyConfig::default().with_cluster_cidrs([pods]);
/// ```
pub use ipnet::IpNet;
pub use service::{
    IpMode, LoadBalancerIngress, Protocol, Service, ServiceKey, ServicePort, ServiceType,
    SessionAffinity, TargetPort, TrafficPolicy,
};

/// Text that names none of the values a type has: what the crate's `FromStr`
/// implementations return ([`Protocol`], [`IpFamily`], [`ServiceKey`],
/// [`crate::ruleset::Table`], [`crate::exec::Backend`]).
///
/// ```
/// use svcnat::model::Protocol;
/// let err = "icmp".parse::<Protocol>().unwrap_err();
/// assert_eq!(err.value, "icmp");
/// assert_eq!(err.to_string(), r#""icmp" is not a protocol (tcp, udp or sctp)"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{value:?} is not {expected}")]
#[non_exhaustive]
pub struct ParseValueError {
    /// The text given.
    pub value: String,
    /// What it should have been, e.g. "a protocol (tcp, udp or sctp)".
    pub expected: &'static str,
}

impl ParseValueError {
    pub(crate) fn new(value: &str, expected: &'static str) -> Self {
        ParseValueError {
            value: value.to_owned(),
            expected,
        }
    }
}

/// An IP family: a ruleset is for one of them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub enum IpFamily {
    /// IPv4 (`iptables`).
    #[default]
    #[serde(rename = "IPv4")]
    Ipv4,
    /// IPv6 (`ip6tables`).
    #[serde(rename = "IPv6")]
    Ipv6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::Ipv4,
            IpAddr::V6(_) => IpFamily::Ipv6,
        }
    }

    /// True if `ip` is of this family.
    pub fn contains(self, ip: &IpAddr) -> bool {
        IpFamily::of(ip) == self
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::Ipv4 => "IPv4",
            IpFamily::Ipv6 => "IPv6",
        })
    }
}

/// Reads `ipv4`, `ipv6` or Kubernetes' `IPv4`, `IPv6` (what `Display` writes).
///
/// ```
/// use svcnat::model::IpFamily;
/// assert_eq!("ipv6".parse(), Ok(IpFamily::Ipv6));
/// assert_eq!("IPv4".parse(), Ok(IpFamily::Ipv4));
/// assert!("v4".parse::<IpFamily>().is_err());
/// ```
impl FromStr for IpFamily {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ipv4" | "IPv4" => Ok(IpFamily::Ipv4),
            "ipv6" | "IPv6" => Ok(IpFamily::Ipv6),
            _ => Err(ParseValueError::new(s, "an IP family (ipv4 or ipv6)")),
        }
    }
}

/// Every service and endpoint slice a proxy knows, in a canonical order.
///
/// Services are kept sorted by [`ServiceKey`], a service's slices by slice name, so
/// the same objects give the same state whatever order they were inserted in.
///
/// A slice is one object per [`SliceKey`] (namespace and slice name), as in
/// Kubernetes: upserting a slice whose service label changed moves it from its old
/// service to its new one, and [`ClusterState::remove_slice_by_key`] removes it
/// without knowing which service it was last filed under.
///
/// ```
/// use svcnat::model::{ClusterState, Service, ServicePort};
/// let mut state = ClusterState::default();
/// state.upsert_service(Service::cluster_ip("b", "svc", "172.30.0.2".parse().unwrap()));
/// state.upsert_service(Service::cluster_ip("a", "svc", "172.30.0.1".parse().unwrap()));
/// let names: Vec<_> = state.services().map(|s| s.key().to_string()).collect();
/// assert_eq!(names, ["a/svc", "b/svc"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "StateDocument", into = "StateDocument")]
pub struct ClusterState {
    /// Each service key with its service and slices, in one map: a compile walks
    /// the services with their slices without matching two maps' keys.
    entries: BTreeMap<ServiceKey, Entry>,
    /// The number of services.
    services: usize,
    /// The sum of [`endpoint_ports`] over all slices of each family (IPv4, IPv6),
    /// kept as slices come and go.
    endpoints: [usize; 2],
    /// Each slice's key with the name of the service it is filed under (in the
    /// slice's namespace), kept as slices come and go. A function of `entries`,
    /// so derived equality is unaffected; never iterated, so its order does not
    /// reach any output.
    slice_services: HashMap<SliceKey, String>,
}

/// A slice's endpoints times its ports: how many service port endpoints it can give
/// at most.
fn endpoint_ports(slice: &EndpointSlice) -> usize {
    slice.endpoints.len() * slice.ports.len()
}

/// A service key's service, if it exists, and slices; an entry with neither is
/// removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Entry {
    service: Option<Service>,
    /// Sorted by name. Most services have one slice, kept inline: a compile reads
    /// it next to its service, with no pointer to follow.
    slices: SmallVec<[EndpointSlice; 1]>,
}

impl Entry {
    /// Where the slice `name` is, or would be inserted.
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.slices.binary_search_by(|s| s.name.as_str().cmp(name))
    }
}

impl ClusterState {
    /// An empty state.
    pub fn new() -> Self {
        ClusterState::default()
    }

    /// Adds or replaces a service; returns the one it replaced.
    pub fn upsert_service(&mut self, service: Service) -> Option<Service> {
        let entry = self.entries.entry(service.key()).or_default();
        let old = entry.service.replace(service);
        self.services += usize::from(old.is_none());
        old
    }

    /// Removes a service (its slices stay until they are removed too, as in Kubernetes).
    pub fn remove_service(&mut self, key: &ServiceKey) -> Option<Service> {
        let entry = self.entries.get_mut(key)?;
        let old = entry.service.take();
        if entry.slices.is_empty() {
            self.entries.remove(key);
        }
        self.services -= usize::from(old.is_some());
        old
    }

    /// Adds or replaces an endpoint slice; returns the one with the same
    /// [`SliceKey`] it replaced. If that one was filed under another service (its
    /// `kubernetes.io/service-name` label changed), it leaves that service.
    ///
    /// ```
    /// use svcnat::model::{ClusterState, EndpointSlice, IpFamily, ServiceKey};
    /// let mut state = ClusterState::new();
    /// state.upsert_slice(EndpointSlice::new("ns1", "old", "web-abcde", IpFamily::Ipv4));
    /// let moved = EndpointSlice::new("ns1", "new", "web-abcde", IpFamily::Ipv4);
    /// assert_eq!(state.upsert_slice(moved).unwrap().service_name, "old");
    /// assert_eq!(state.slices_of(&ServiceKey::new("ns1", "old")).count(), 0);
    /// assert_eq!(state.slices_of(&ServiceKey::new("ns1", "new")).count(), 1);
    /// ```
    pub fn upsert_slice(&mut self, slice: EndpointSlice) -> Option<EndpointSlice> {
        let key = slice.key();
        let moved_from = match self.slice_services.get(&key) {
            Some(service) if *service != slice.service_name => {
                Some(ServiceKey::new(key.namespace, service.clone()))
            }
            Some(_) => None,
            None => {
                self.slice_services.insert(key, slice.service_name.clone());
                None
            }
        };
        if let Some(old_service) = moved_from {
            let old = self.remove_slice(&old_service, &slice.name);
            self.upsert_slice(slice);
            return old;
        }
        self.endpoints[slice.address_type as usize] += endpoint_ports(&slice);
        let entry = self.entries.entry(slice.service()).or_default();
        let old = match entry.find(&slice.name) {
            Ok(i) => Some(std::mem::replace(&mut entry.slices[i], slice)),
            Err(i) => {
                entry.slices.insert(i, slice);
                None
            }
        };
        if let Some(old) = &old {
            self.endpoints[old.address_type as usize] -= endpoint_ports(old);
        }
        old
    }

    /// Removes the slice `name` of service `key`.
    pub fn remove_slice(&mut self, key: &ServiceKey, name: &str) -> Option<EndpointSlice> {
        let entry = self.entries.get_mut(key)?;
        let removed = entry.find(name).ok().map(|i| entry.slices.remove(i));
        if entry.slices.is_empty() && entry.service.is_none() {
            self.entries.remove(key);
        }
        if let Some(removed) = &removed {
            self.endpoints[removed.address_type as usize] -= endpoint_ports(removed);
            self.slice_services.remove(&removed.key());
        }
        removed
    }

    /// Removes the slice with this namespace and name, whichever service it is
    /// filed under (what a Kubernetes delete event names).
    ///
    /// ```
    /// use svcnat::model::{ClusterState, EndpointSlice, IpFamily, SliceKey};
    /// let mut state = ClusterState::new();
    /// state.upsert_slice(EndpointSlice::new("ns1", "svc1", "svc1-abcde", IpFamily::Ipv4));
    /// let gone = state.remove_slice_by_key(&SliceKey::new("ns1", "svc1-abcde"));
    /// assert_eq!(gone.unwrap().service_name, "svc1");
    /// assert_eq!(state, ClusterState::new());
    /// ```
    pub fn remove_slice_by_key(&mut self, key: &SliceKey) -> Option<EndpointSlice> {
        let service = ServiceKey::new(key.namespace.clone(), self.slice_services.get(key)?.clone());
        self.remove_slice(&service, &key.name)
    }

    /// The slice with this namespace and name, whichever service it is filed under.
    pub fn slice(&self, key: &SliceKey) -> Option<&EndpointSlice> {
        let service = self.slice_services.get(key)?;
        let entry = self
            .entries
            .get(&ServiceKey::new(key.namespace.clone(), service.clone()))?;
        entry.find(&key.name).ok().map(|i| &entry.slices[i])
    }

    /// The service with this key.
    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.entries.get(key)?.service.as_ref()
    }

    /// All services, sorted by key.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.entries.values().filter_map(|e| e.service.as_ref())
    }

    /// The slices of one service, sorted by slice name.
    pub fn slices_of(&self, key: &ServiceKey) -> impl Iterator<Item = &EndpointSlice> {
        self.entries
            .get(key)
            .into_iter()
            .flat_map(|e| e.slices.iter())
    }

    /// All slices, sorted by service key, then slice name.
    pub fn slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.entries.values().flat_map(|e| e.slices.iter())
    }

    /// Every service key with its service (`None` for slices whose service does not
    /// exist) and its slices, in key order.
    pub(crate) fn services_with_slices(
        &self,
    ) -> impl Iterator<
        Item = (
            &ServiceKey,
            Option<&Service>,
            impl Iterator<Item = &EndpointSlice> + use<'_>,
        ),
    > {
        self.entries
            .iter()
            .map(|(key, entry)| (key, entry.service.as_ref(), entry.slices.iter()))
    }

    /// Every slice's endpoints times its ports, summed over the slices of `family`:
    /// an upper bound of the endpoints a compile for that family counts (each
    /// endpoint once per service port it serves, as kube-proxy counts them), known
    /// without reading the slices. It counts duplicates, endpoints of services that
    /// do not exist and for ports no service has, which a compile does not.
    pub(crate) fn endpoint_bound(&self, family: IpFamily) -> usize {
        self.endpoints[family as usize]
    }

    /// The number of services.
    pub fn service_count(&self) -> usize {
        self.services
    }
}

/// The serialised form of a [`ClusterState`]: two lists.
#[derive(Serialize, Deserialize)]
struct StateDocument {
    #[serde(default)]
    services: Vec<Service>,
    #[serde(default)]
    endpoint_slices: Vec<EndpointSlice>,
}

impl From<StateDocument> for ClusterState {
    fn from(doc: StateDocument) -> Self {
        let mut state = ClusterState::default();
        doc.services.into_iter().for_each(|s| {
            state.upsert_service(s);
        });
        doc.endpoint_slices.into_iter().for_each(|s| {
            state.upsert_slice(s);
        });
        state
    }
}

impl From<ClusterState> for StateDocument {
    fn from(state: ClusterState) -> Self {
        let mut doc = StateDocument {
            services: Vec::with_capacity(state.services),
            endpoint_slices: Vec::new(),
        };
        for entry in state.entries.into_values() {
            doc.services.extend(entry.service);
            doc.endpoint_slices.extend(entry.slices);
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, endpoints: usize) -> EndpointSlice {
        let mut slice = EndpointSlice::new("ns", "svc", name, IpFamily::Ipv4)
            .with_port(EndpointPort::tcp("p80", 80));
        slice.endpoints = (0..endpoints)
            .map(|i| Endpoint::ready(IpAddr::from([10, 0, 0, i as u8])))
            .collect();
        slice
    }

    #[test]
    fn the_endpoint_bound_follows_the_slices() {
        let mut state = ClusterState::new();
        state.upsert_slice(slice("a", 3));
        state.upsert_slice(slice("b", 2));
        assert_eq!(state.endpoint_bound(IpFamily::Ipv4), 5);
        state.upsert_slice(slice("a", 1));
        assert_eq!(state.endpoint_bound(IpFamily::Ipv4), 3);
        state.remove_slice(&ServiceKey::new("ns", "svc"), "b");
        state.remove_slice(&ServiceKey::new("ns", "svc"), "missing");
        assert_eq!(state.endpoint_bound(IpFamily::Ipv4), 1);
        let json = serde_json::to_string(&state).unwrap();
        let read: ClusterState = serde_json::from_str(&json).unwrap();
        assert_eq!(read.endpoint_bound(IpFamily::Ipv4), 1);
        assert_eq!(read, state);
        // Each endpoint counts once per port, in its slice's family only.
        state.upsert_slice(slice("b", 3).with_port(EndpointPort::tcp("p53", 53)));
        assert_eq!(state.endpoint_bound(IpFamily::Ipv4), 1 + 6);
        let mut v6 = slice("c", 2);
        v6.address_type = IpFamily::Ipv6;
        state.upsert_slice(v6.clone());
        assert_eq!(state.endpoint_bound(IpFamily::Ipv4), 1 + 6);
        assert_eq!(state.endpoint_bound(IpFamily::Ipv6), 2);
        v6.address_type = IpFamily::Ipv4;
        state.upsert_slice(v6);
        assert_eq!(state.endpoint_bound(IpFamily::Ipv4), 1 + 6 + 2);
        assert_eq!(state.endpoint_bound(IpFamily::Ipv6), 0);
    }

    #[test]
    fn a_services_slices_stay_sorted_by_name() {
        let key = ServiceKey::new("ns", "svc");
        let names = |state: &ClusterState| -> Vec<String> {
            state.slices_of(&key).map(|s| s.name.clone()).collect()
        };
        let mut state = ClusterState::new();
        for name in ["b", "c", "a"] {
            assert!(state.upsert_slice(slice(name, 1)).is_none());
        }
        assert_eq!(names(&state), ["a", "b", "c"]);
        let old = state.upsert_slice(slice("b", 2)).unwrap();
        assert_eq!(old.endpoints.len(), 1);
        assert_eq!(state.endpoint_bound(IpFamily::Ipv4), 4);
        assert_eq!(state.remove_slice(&key, "a").unwrap().name, "a");
        assert!(state.remove_slice(&key, "a").is_none());
        assert_eq!(names(&state), ["b", "c"]);
        assert_eq!(state.slices().count(), 2);
    }

    #[test]
    fn a_slice_is_one_object_per_namespace_and_name() {
        let (old, new) = (ServiceKey::new("ns", "svc"), ServiceKey::new("ns", "other"));
        let mut state = ClusterState::new();
        state.upsert_slice(slice("a", 2));
        state.upsert_slice(slice("b", 1));
        // Relabelled: slice "a" now belongs to "other", with three endpoints.
        let mut moved = slice("a", 3);
        moved.service_name = "other".into();
        let replaced = state.upsert_slice(moved.clone()).unwrap();
        assert_eq!(
            (replaced.service(), replaced.endpoints.len()),
            (old.clone(), 2)
        );
        assert_eq!(
            state
                .slices_of(&old)
                .map(|s| &s.name[..])
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(state.slices_of(&new).collect::<Vec<_>>(), [&moved]);
        assert_eq!(state.endpoint_bound(IpFamily::Ipv4), 4);
        assert_eq!(state.slice(&SliceKey::new("ns", "a")), Some(&moved));
        // The same state as one built with the slice where it is now, and the
        // same after a serde round trip.
        let mut direct = ClusterState::new();
        direct.upsert_slice(slice("b", 1));
        direct.upsert_slice(moved.clone());
        assert_eq!(state, direct);
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<ClusterState>(&json).unwrap(), state);
        // Removed by its own key, wherever it is filed.
        assert_eq!(
            state.remove_slice_by_key(&SliceKey::new("ns", "a")),
            Some(moved)
        );
        assert!(
            state
                .remove_slice_by_key(&SliceKey::new("ns", "a"))
                .is_none()
        );
        assert!(state.slice(&SliceKey::new("ns", "a")).is_none());
        assert_eq!(state.slices_of(&new).count(), 0);
        assert_eq!(state.endpoint_bound(IpFamily::Ipv4), 1);
        // A slice of the same name in another namespace is another object.
        let mut elsewhere = slice("b", 1);
        elsewhere.namespace = "ns2".into();
        assert!(state.upsert_slice(elsewhere).is_none());
        assert_eq!(state.slices().count(), 2);
        state.remove_slice(&old, "b");
        state.remove_slice_by_key(&SliceKey::new("ns2", "b"));
        assert_eq!(state, ClusterState::new());
    }

    #[test]
    fn services_and_slices_come_and_go_apart() {
        let key = ServiceKey::new("ns", "svc");
        let svc = || Service::cluster_ip("ns", "svc", IpAddr::from([172, 30, 0, 1]));
        let mut state = ClusterState::new();
        state.upsert_slice(slice("a", 1));
        assert_eq!((state.service_count(), state.services().count()), (0, 0));
        assert!(
            state
                .services_with_slices()
                .all(|(_, svc, _)| svc.is_none())
        );
        assert!(state.upsert_service(svc()).is_none());
        assert!(state.upsert_service(svc()).is_some());
        assert_eq!(state.service_count(), 1);
        let walked: Vec<_> = state
            .services_with_slices()
            .map(|(_, _, slices)| slices.count())
            .collect();
        assert_eq!(walked, [1]);
        // The slice outlives its service, and the reverse.
        assert!(state.remove_service(&key).is_some());
        assert!(state.remove_service(&key).is_none());
        assert_eq!(state.service_count(), 0);
        assert_eq!(state.slices_of(&key).count(), 1);
        state.upsert_service(svc());
        state.remove_slice(&key, "a");
        assert_eq!(state.service(&key), Some(&svc()));
        state.remove_service(&key);
        assert_eq!(state, ClusterState::new());
    }
}
