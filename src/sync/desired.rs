//! The cluster state a syncer is asked for, and the services changed since it
//! last looked: what [`Syncer`](super::Syncer) and [`NftSyncer`](super::NftSyncer)
//! both keep, changed the same way.

use std::collections::BTreeSet;

use crate::model::{ClusterState, EndpointSlice, Service, ServiceKey, SliceKey};

/// The desired state and its changed services.
#[derive(Debug, Default)]
pub(crate) struct Desired {
    /// The state the next sync brings the kernel to.
    pub(crate) state: ClusterState,
    /// Services changed since the syncer last took them.
    pub(crate) dirty: BTreeSet<ServiceKey>,
}

impl Desired {
    /// Adds or replaces a Service.
    pub(crate) fn upsert_service(&mut self, service: Service) {
        let key = service.key();
        if self.state.service(&key) != Some(&service) {
            self.state.upsert_service(service);
            self.dirty.insert(key);
        }
    }

    /// Deletes a Service.
    pub(crate) fn remove_service(&mut self, key: &ServiceKey) {
        if self.state.remove_service(key).is_some() {
            self.dirty.insert(key.clone());
        }
    }

    /// Adds or replaces an EndpointSlice; a slice whose service label changed
    /// marks the service it left too.
    pub(crate) fn upsert_slice(&mut self, slice: EndpointSlice) {
        let key = slice.service();
        if self.state.slice(&slice.key()) == Some(&slice) {
            return;
        }
        if let Some(old) = self.state.upsert_slice(slice) {
            self.dirty.insert(old.service());
        }
        self.dirty.insert(key);
    }

    /// Deletes the EndpointSlice `name` of service `key`.
    pub(crate) fn remove_slice(&mut self, key: &ServiceKey, name: &str) {
        if self.state.remove_slice(key, name).is_some() {
            self.dirty.insert(key.clone());
        }
    }

    /// Deletes the EndpointSlice with this namespace and name; returns it.
    pub(crate) fn remove_slice_by_key(&mut self, key: &SliceKey) -> Option<EndpointSlice> {
        let removed = self.state.remove_slice_by_key(key)?;
        self.dirty.insert(removed.service());
        Some(removed)
    }

    /// Replaces the whole state; the services that differ are marked.
    pub(crate) fn replace_state(&mut self, state: ClusterState) {
        let old = &self.state;
        let keys: BTreeSet<ServiceKey> = old
            .services()
            .chain(state.services())
            .map(Service::key)
            .chain(
                old.slices()
                    .chain(state.slices())
                    .map(EndpointSlice::service),
            )
            .collect();
        for key in keys {
            let same = old.service(&key) == state.service(&key)
                && old.slices_of(&key).eq(state.slices_of(&key));
            if !same {
                self.dirty.insert(key);
            }
        }
        self.state = state;
    }
}
