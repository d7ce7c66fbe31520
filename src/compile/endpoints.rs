//! Which endpoints a service port uses, as kube-proxy's `CategorizeEndpoints` decides.

use super::context::Context;
use super::input::{PortEndpoint, PortInput, ServiceInput};

/// The endpoint sets of one service port. All lists stay sorted by `ip:port`.
#[derive(Debug, Default)]
pub(crate) struct Categorized<'p, 'a> {
    /// Endpoints for the Cluster policy chain (`KUBE-SVC-…`).
    pub cluster: Vec<&'p PortEndpoint<'a>>,
    /// Endpoints for the Local policy chain (`KUBE-SVL-…`).
    pub local: Vec<&'p PortEndpoint<'a>>,
    /// Every endpoint that gets a `KUBE-SEP-…` chain: see [`Categorized::reachable`].
    reachable: Reachable<'p, 'a>,
    /// True if any endpoint anywhere can serve.
    pub has_any: bool,
}

/// Which endpoints get a `KUBE-SEP-…` chain: most often the cluster set, kept once.
#[derive(Debug, Default)]
enum Reachable<'p, 'a> {
    #[default]
    Cluster,
    Local,
    Both(Vec<&'p PortEndpoint<'a>>),
}

impl<'p, 'a> Categorized<'p, 'a> {
    /// Every endpoint that gets a `KUBE-SEP-…` chain, sorted by `ip:port`.
    pub fn reachable(&self) -> &[&'p PortEndpoint<'a>] {
        match &self.reachable {
            Reachable::Cluster => &self.cluster,
            Reachable::Local => &self.local,
            Reachable::Both(all) => all,
        }
    }
}

/// Facts about the service port and node that endpoint selection reads.
pub(crate) struct Selection<'c> {
    pub uses_cluster: bool,
    pub uses_local: bool,
    pub node_name: Option<&'c str>,
    pub zone: Option<&'c str>,
    pub prefer_same_node: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Topology {
    None,
    SameNode,
    SameZone,
}

fn is_ready(ep: &PortEndpoint<'_>) -> bool {
    ep.endpoint.conditions.ready
}

fn is_serving_terminating(ep: &PortEndpoint<'_>) -> bool {
    ep.endpoint.conditions.serving && ep.endpoint.conditions.terminating
}

/// The topology mode hints allow: every ready endpoint must carry hints of the kind,
/// and one of them must name this node (or zone).
fn topology(endpoints: &[PortEndpoint<'_>], sel: &Selection<'_>) -> Topology {
    let mut all_node_hints = true;
    let mut node_hit = false;
    let mut all_zone_hints = true;
    let mut zone_hit = false;
    for ep in endpoints.iter().filter(|e| is_ready(e)) {
        let hints = &ep.endpoint.hints;
        if hints.for_nodes.is_empty() {
            all_node_hints = false;
        } else if sel
            .node_name
            .is_some_and(|n| hints.for_nodes.iter().any(|h| h == n))
        {
            node_hit = true;
        }
        if hints.for_zones.is_empty() {
            all_zone_hints = false;
        } else if sel
            .zone
            .is_some_and(|z| hints.for_zones.iter().any(|h| h == z))
        {
            zone_hit = true;
        }
        if !all_node_hints && !all_zone_hints {
            // Neither kind of hint can apply any more.
            return Topology::None;
        }
    }
    if sel.prefer_same_node && all_node_hints && node_hit {
        Topology::SameNode
    } else if all_zone_hints && zone_hit {
        Topology::SameZone
    } else {
        Topology::None
    }
}

fn available(ep: &PortEndpoint<'_>, topo: Topology, sel: &Selection<'_>) -> bool {
    let hints = &ep.endpoint.hints;
    match topo {
        Topology::None => true,
        Topology::SameNode => sel
            .node_name
            .is_some_and(|n| hints.for_nodes.iter().any(|h| h == n)),
        Topology::SameZone => sel
            .zone
            .is_some_and(|z| hints.for_zones.iter().any(|h| h == z)),
    }
}

/// Splits a port's endpoints into the cluster, local and reachable sets.
pub(crate) fn categorize<'p, 'a>(
    endpoints: &'p [PortEndpoint<'a>],
    sel: &Selection<'_>,
) -> Categorized<'p, 'a> {
    let mut out = Categorized::default();
    let mut topo = Topology::None;
    if sel.uses_cluster {
        topo = topology(endpoints, sel);
        out.cluster = endpoints
            .iter()
            .filter(|e| is_ready(e) && available(e, topo, sel))
            .collect();
        if out.cluster.is_empty() {
            out.cluster = endpoints
                .iter()
                .filter(|e| is_serving_terminating(e))
                .collect();
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !sel.uses_local {
        return out;
    }
    let mut local_ready = false;
    let mut local_terminating = false;
    for ep in endpoints {
        if is_ready(ep) {
            out.has_any = true;
            local_ready |= ep.local;
        } else if is_serving_terminating(ep) {
            out.has_any = true;
            local_terminating |= ep.local;
        }
    }
    let mut fell_back = false;
    if local_ready {
        out.local = endpoints
            .iter()
            .filter(|e| e.local && is_ready(e))
            .collect();
    } else if local_terminating {
        fell_back = true;
        out.local = endpoints
            .iter()
            .filter(|e| e.local && is_serving_terminating(e))
            .collect();
    }
    if !sel.uses_cluster {
        out.reachable = Reachable::Local;
    } else if topo == Topology::None && !fell_back {
        // Cluster holds every ready endpoint, local only ready ones: a superset.
        out.reachable = Reachable::Cluster;
    } else {
        let mut all: Vec<&PortEndpoint<'a>> = out
            .cluster
            .iter()
            .chain(out.local.iter())
            .copied()
            .collect();
        all.sort_by_key(|e| e.text);
        all.dedup_by(|a, b| a.text == b.text);
        out.reachable = Reachable::Both(all);
    }
    out
}

/// What kube-proxy decides for one service port before it writes any rule, in
/// either mode: its endpoints, and which of its chains and destinations are used.
#[derive(Debug)]
pub(crate) struct PortPlan<'p, 'a> {
    /// The port's endpoints, categorized.
    pub eps: Categorized<'p, 'a>,
    /// Internal traffic (to the cluster IP) goes to the local chain, not the
    /// cluster one (`internalTrafficPolicy: Local`).
    pub internal_local: bool,
    /// External traffic goes to the local chain, not the cluster one
    /// (`externalTrafficPolicy: Local`).
    pub external_local: bool,
    /// The cluster IP has endpoints to go to (else its traffic is rejected or
    /// dropped).
    pub has_internal: bool,
    /// External destinations have endpoints to go to.
    pub has_external: bool,
    /// The cluster-policy chain is written.
    pub uses_cluster_chain: bool,
    /// The local-policy chain is written.
    pub uses_local_chain: bool,
    /// The external-destinations chain is written.
    pub uses_ext_chain: bool,
}

impl<'p, 'a> PortPlan<'p, 'a> {
    /// The plan of `port` of `svc` on the node `ctx` describes.
    pub fn new(svc: &ServiceInput<'a>, port: &'p PortInput<'a>, ctx: &Context) -> Self {
        let external = svc.externally_accessible(port.port);
        let sel = Selection {
            uses_cluster: !svc.internal_policy_local || external,
            uses_local: svc.uses_local(port.port),
            node_name: ctx.node_name.as_deref(),
            zone: ctx.zone.as_deref(),
            prefer_same_node: ctx.prefer_same_node,
        };
        let eps = categorize(&port.endpoints, &sel);
        let has_any = eps.has_any;
        let has_local = has_any && !eps.local.is_empty();
        PortPlan {
            internal_local: svc.internal_policy_local,
            external_local: svc.external_policy_local,
            has_internal: if svc.internal_policy_local {
                has_local
            } else {
                has_any
            },
            has_external: if svc.external_policy_local {
                has_local
            } else {
                has_any
            },
            uses_cluster_chain: !eps.cluster.is_empty() && sel.uses_cluster,
            uses_local_chain: !eps.local.is_empty() && sel.uses_local,
            uses_ext_chain: has_any && external,
            eps,
        }
    }
}
