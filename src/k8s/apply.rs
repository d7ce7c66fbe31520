//! Watch events applied to a [`Syncer`] or an [`NftSyncer`]: an upsert, or a
//! removal when an update takes the object out of what kube-proxy models.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;

use super::{ConvertError, endpoint_slice, headless_service, service, service_key, slice_key};
use crate::exec::{Executor, NftExecutor};
use crate::model::{ClusterState, EndpointSlice, Service, ServiceKey, SliceKey};
use crate::sync::{NftSyncer, Syncer};

/// A Service or an EndpointSlice, as a watch delivers it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Object<'a> {
    /// A `v1` Service.
    Service(&'a core::Service),
    /// A `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice(&'a discovery::EndpointSlice),
}

impl<'a> From<&'a core::Service> for Object<'a> {
    fn from(svc: &'a core::Service) -> Self {
        Object::Service(svc)
    }
}

impl<'a> From<&'a discovery::EndpointSlice> for Object<'a> {
    fn from(slice: &'a discovery::EndpointSlice) -> Self {
        Object::EndpointSlice(slice)
    }
}

/// What happened to an object: what a watch reports (kube-rs' `Apply` and
/// `InitApply` are [`Event::Applied`], its `Delete` is [`Event::Deleted`]).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The object was created or updated; this is its new version.
    Applied(Object<'a>),
    /// The object was deleted; this is its last version (only its namespace and
    /// name are read).
    Deleted(Object<'a>),
}

impl<'a> Event<'a> {
    /// [`Event::Applied`] of a Service or an EndpointSlice.
    pub fn applied(object: impl Into<Object<'a>>) -> Self {
        Event::Applied(object.into())
    }

    /// [`Event::Deleted`] of a Service or an EndpointSlice.
    pub fn deleted(object: impl Into<Object<'a>>) -> Self {
        Event::Deleted(object.into())
    }
}

/// What [`Syncer::apply_k8s`] did to the desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// The object was added or replaced.
    Upserted,
    /// The object's rules were removed: it was deleted, or an update took it out
    /// of what kube-proxy serves (a Service became ExternalName, or headless, which
    /// stays in the state without rules so its slices keep their service; a slice
    /// lost its `kubernetes.io/service-name` label or became FQDN).
    Removed,
    /// Nothing changed: the object is one kube-proxy ignores and the state did not
    /// hold it.
    Ignored,
}

impl<E: Executor> Syncer<E> {
    /// Applies a Kubernetes watch event to the desired state: the one call that
    /// keeps a syncer in step with a cluster (feature `k8s`). The next
    /// [`Syncer::sync`] writes what changed.
    ///
    /// An update that [`k8s::service`](crate::k8s::service) or
    /// [`k8s::endpoint_slice`](crate::k8s::endpoint_slice) skips removes what the state held
    /// under the object's key: a Service that became headless (kept, without
    /// cluster IPs, see [`headless_service`]) or
    /// ExternalName loses its rules, a slice that lost its service label or became FQDN leaves its
    /// service. A slice whose service label changed moves to its new service.
    /// Slices are known by namespace and name, as in Kubernetes.
    ///
    /// ```
    /// use k8s_openapi::api::core::v1::Service;
    /// use svcnat::exec::Recorder;
    /// use svcnat::k8s::{Action, Event};
    /// use svcnat::model::ProxyConfig;
    /// use svcnat::sync::Syncer;
    ///
    /// let mut svc: Service = serde_json::from_str(r#"{
    ///     "metadata": {"namespace": "ns1", "name": "svc1"},
    ///     "spec": {"clusterIP": "172.30.0.41", "ports": [{"name": "p80", "port": 80}]}
    /// }"#)?;
    /// let mut syncer = Syncer::new(Recorder::new(), ProxyConfig::default())?;
    /// assert_eq!(syncer.apply_k8s(Event::applied(&svc))?, Action::Upserted);
    /// syncer.sync()?;
    ///
    /// // The Service becomes headless: the update removes its rules; it stays in
    /// // the state without cluster IPs, so its slices keep their service.
    /// svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    /// assert_eq!(syncer.apply_k8s(Event::applied(&svc))?, Action::Removed);
    /// let kept = syncer.state().services().next().unwrap();
    /// assert!(kept.cluster_ips.is_empty());
    /// let report = syncer.sync()?;
    /// assert!(!report.payload.text().contains("172.30.0.41"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// An object that does not convert ([`ConvertError`]: a missing name or
    /// namespace, a malformed field); the state is left as it was, holding the
    /// object's last good version if it had one.
    pub fn apply_k8s(&mut self, event: Event<'_>) -> Result<Action, ConvertError> {
        apply(self, event)
    }
}

impl<E: NftExecutor> NftSyncer<E> {
    /// [`Syncer::apply_k8s`] for the nftables mode: the same event makes the
    /// same change to the desired state and returns the same [`Action`].
    ///
    /// # Errors
    /// As [`Syncer::apply_k8s`].
    pub fn apply_k8s(&mut self, event: Event<'_>) -> Result<Action, ConvertError> {
        apply(self, event)
    }
}

/// What applying an event needs of a syncer: its state and its changes.
trait Target {
    fn state(&self) -> &ClusterState;
    fn upsert_service(&mut self, service: Service);
    fn remove_service(&mut self, key: &ServiceKey);
    fn upsert_slice(&mut self, slice: EndpointSlice);
    fn remove_slice_by_key(&mut self, key: &SliceKey) -> Option<EndpointSlice>;
}

impl<E: Executor> Target for Syncer<E> {
    fn state(&self) -> &ClusterState {
        Syncer::state(self)
    }
    fn upsert_service(&mut self, service: Service) {
        Syncer::upsert_service(self, service);
    }
    fn remove_service(&mut self, key: &ServiceKey) {
        Syncer::remove_service(self, key);
    }
    fn upsert_slice(&mut self, slice: EndpointSlice) {
        Syncer::upsert_slice(self, slice);
    }
    fn remove_slice_by_key(&mut self, key: &SliceKey) -> Option<EndpointSlice> {
        Syncer::remove_slice_by_key(self, key)
    }
}

impl<E: NftExecutor> Target for NftSyncer<E> {
    fn state(&self) -> &ClusterState {
        NftSyncer::state(self)
    }
    fn upsert_service(&mut self, service: Service) {
        NftSyncer::upsert_service(self, service);
    }
    fn remove_service(&mut self, key: &ServiceKey) {
        NftSyncer::remove_service(self, key);
    }
    fn upsert_slice(&mut self, slice: EndpointSlice) {
        NftSyncer::upsert_slice(self, slice);
    }
    fn remove_slice_by_key(&mut self, key: &SliceKey) -> Option<EndpointSlice> {
        NftSyncer::remove_slice_by_key(self, key)
    }
}

/// `event` applied to `target`'s desired state (see [`Syncer::apply_k8s`]).
fn apply<T: Target>(target: &mut T, event: Event<'_>) -> Result<Action, ConvertError> {
    let removed = |gone: bool| {
        if gone {
            Action::Removed
        } else {
            Action::Ignored
        }
    };
    Ok(match event {
        Event::Applied(Object::Service(svc)) => match service(svc)? {
            Some(s) => {
                target.upsert_service(s);
                Action::Upserted
            }
            // Kept without rules, so its slices still have their service.
            None => match headless_service(svc) {
                Some(headless) => {
                    let had_rules = target
                        .state()
                        .service(&headless.key())
                        .is_some_and(|old| !old.cluster_ips.is_empty());
                    target.upsert_service(headless);
                    removed(had_rules)
                }
                None => removed(remove_service_returning(target, &service_key(svc)?)),
            },
        },
        Event::Deleted(Object::Service(svc)) => {
            removed(remove_service_returning(target, &service_key(svc)?))
        }
        Event::Applied(Object::EndpointSlice(slice)) => match endpoint_slice(slice)? {
            Some(s) => {
                target.upsert_slice(s);
                Action::Upserted
            }
            None => removed(target.remove_slice_by_key(&slice_key(slice)?).is_some()),
        },
        Event::Deleted(Object::EndpointSlice(slice)) => {
            removed(target.remove_slice_by_key(&slice_key(slice)?).is_some())
        }
    })
}

/// [`Target::remove_service`], saying whether there was one.
fn remove_service_returning<T: Target>(target: &mut T, key: &ServiceKey) -> bool {
    let had = target.state().service(key).is_some();
    target.remove_service(key);
    had
}
