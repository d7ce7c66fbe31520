//! The objects of one service (kube-proxy's per-service-port part of
//! `syncProxyRules`): its chains and affinity sets, and the elements it adds to
//! the shared set and maps.

use std::net::IpAddr;

use super::fixed::{MapId, NftContext, REJECT_CHAIN};
use super::naming::{nft_endpoint_base, nft_service_base, prefixed};
use crate::compile::endpoints::PortPlan;
use crate::compile::input::{PortEndpoint, PortInput, ServiceInput};
use crate::error::CompileError;
use crate::model::{Protocol, ServiceKey};
use crate::nft::{
    AddrItem, AddrValue, Chain, Dir, KeyValue, MapElement, Name, NftComment, NftError, Op, Rule,
    Set, SetFlag, Stmt, Verdict,
};

/// Everything one service adds to the table, in the order kube-proxy adds it.
#[derive(Debug, Default)]
pub(crate) struct ServiceObjects {
    /// Its chains.
    pub chains: Vec<(Name, Chain)>,
    /// Its affinity sets.
    pub sets: Vec<(Name, Set)>,
    /// Its cluster IP, once per port (for `cluster-ips`).
    pub cluster_ips: Vec<IpAddr>,
    /// Its elements of the shared verdict maps.
    pub elements: Vec<(MapId, MapElement)>,
}

impl ServiceObjects {
    /// Empty, keeping the allocations.
    pub(crate) fn clear(&mut self) {
        self.chains.clear();
        self.sets.clear();
        self.cluster_ips.clear();
        self.elements.clear();
    }
}

/// Writes the objects of service `key` into `out` (cleared first). On an error
/// `out` holds part of the service, which the caller drops.
///
/// # Errors
/// A name or comment of one of its ports that the IR refuses, as a
/// [`CompileError::Service`] naming the port.
pub(crate) fn emit_service(
    key: &ServiceKey,
    svc: &ServiceInput<'_>,
    ctx: &NftContext,
    out: &mut ServiceObjects,
) -> Result<(), CompileError> {
    out.clear();
    for port in &svc.ports {
        PortBuilder {
            key,
            svc,
            port,
            ctx,
            out: &mut *out,
        }
        .build()
        .map_err(|e| CompileError::Service {
            service: key.clone(),
            port: Some(port.port.name.clone()),
            field: "metadata.name".into(),
            problem: e.into(),
        })?;
    }
    Ok(())
}

/// The chains of one service port.
struct PortNames {
    /// `service-…`: the Cluster-policy endpoints.
    service: Name,
    /// `local-…`: this node's endpoints.
    local: Name,
    /// `external-…`: external destinations.
    external: Name,
    /// `firewall-…`: load-balancer source ranges.
    firewall: Name,
}

/// The chain and affinity set of one endpoint.
struct EndpointNames {
    chain: Name,
    affinity: Name,
}

/// `goto CHAIN`, as a verdict.
fn to_chain(chain: &Name) -> Verdict {
    Verdict::Goto(chain.clone())
}

/// `goto CHAIN`, as a statement.
fn goto(chain: &Name) -> Stmt {
    Stmt::Verdict(to_chain(chain))
}

fn rule(stmts: Vec<Stmt>) -> Rule {
    Rule::new(stmts)
}

/// A kube-proxy rule comment (all of them are short, fixed ASCII).
fn noted(stmts: Vec<Stmt>, text: &'static str) -> Rule {
    Rule {
        stmts,
        comment: NftComment::new(text).ok(),
    }
}

struct PortBuilder<'s, 'p, 'a> {
    key: &'s ServiceKey,
    svc: &'s ServiceInput<'a>,
    port: &'p PortInput<'a>,
    ctx: &'s NftContext,
    out: &'s mut ServiceObjects,
}

impl<'p, 'a> PortBuilder<'_, 'p, 'a> {
    fn proto(&self) -> Protocol {
        self.port.port.protocol
    }

    /// `KEY : VERDICT` in `map`.
    fn element(
        &mut self,
        map: MapId,
        key: Vec<KeyValue>,
        verdict: Verdict,
        comment: Option<&NftComment>,
    ) {
        self.out.elements.push((
            map,
            MapElement {
                key,
                verdict,
                comment: comment.cloned(),
            },
        ));
    }

    /// `IP . PROTO . PORT : VERDICT` in `map`, for the port's destination `ip`.
    fn to(&mut self, map: MapId, ip: IpAddr, verdict: Verdict, comment: Option<&NftComment>) {
        let key = vec![
            KeyValue::Addr(ip),
            KeyValue::Proto(self.proto()),
            KeyValue::Port(self.port.port.port),
        ];
        self.element(map, key, verdict, comment);
    }

    fn names(&self) -> Result<PortNames, NftError> {
        let (ns, name) = (&self.key.namespace, &self.key.name);
        let base = nft_service_base(ns, name, self.proto(), &self.port.port.name);
        Ok(PortNames {
            service: prefixed("service-", &base)?,
            local: prefixed("local-", &base)?,
            external: prefixed("external-", &base)?,
            firewall: prefixed("firewall-", &base)?,
        })
    }

    fn endpoint_names(&self, ep: &PortEndpoint<'_>) -> Result<EndpointNames, NftError> {
        let (ns, name) = (&self.key.namespace, &self.key.name);
        let base = nft_endpoint_base(ns, name, self.proto(), &self.port.port.name, &ep.text);
        Ok(EndpointNames {
            chain: prefixed("endpoint-", &base)?,
            affinity: prefixed("affinity-", &base)?,
        })
    }

    fn build(mut self) -> Result<(), NftError> {
        let plan = PortPlan::new(self.svc, self.port, &self.ctx.base);
        let names = self.names()?;
        // Written only on a no-endpoints element. Kubernetes allows a
        // `ns/name:port` of up to 143 bytes, nft 128: cut, as kube-proxy does since
        // kubernetes#139516 (the comment only describes).
        let comment = NftComment::truncated(self.port.spn.as_str())?;
        let eps: Vec<EndpointNames> = plan
            .eps
            .reachable()
            .iter()
            .map(|ep| self.endpoint_names(ep))
            .collect::<Result<_, _>>()?;
        self.elements(&plan, &names, &comment);
        self.chains(&plan, &names, &eps)
    }

    /// A load balancer with source ranges goes through the firewall chain, with
    /// endpoints or without.
    fn uses_firewall(&self) -> bool {
        !self.svc.lb_vips.is_empty() && !self.svc.source_ranges.is_empty()
    }

    /// The port's elements of the shared set and maps, destination by
    /// destination: cluster IP, external IPs, load-balancer IPs, node port.
    fn elements(&mut self, plan: &PortPlan<'_, '_>, names: &PortNames, comment: &NftComment) {
        let svc = self.svc;
        let internal = match plan.internal_local {
            true => &names.local,
            false => &names.service,
        };
        // What happens to traffic with nowhere to go: rejected without any
        // endpoint, dropped without a local one.
        let filter = match plan.eps.has_any {
            false => Verdict::Goto(Name::fixed(REJECT_CHAIN)),
            true => Verdict::Drop,
        };
        let no_endpoints = |b: &mut Self, ip| {
            b.to(MapId::NoEndpointServices, ip, filter.clone(), Some(comment));
        };
        self.out.cluster_ips.push(svc.cluster_ip);
        match plan.has_internal {
            true => self.to(MapId::ServiceIps, svc.cluster_ip, to_chain(internal), None),
            false => no_endpoints(self, svc.cluster_ip),
        }
        let to_external = to_chain(&names.external);
        for &ip in &svc.external_ips {
            if plan.eps.has_any {
                self.to(MapId::ServiceIps, ip, to_external.clone(), None);
            }
            if !plan.has_external {
                no_endpoints(self, ip);
            }
        }
        for &ip in &svc.lb_vips {
            if plan.eps.has_any {
                self.to(MapId::ServiceIps, ip, to_external.clone(), None);
            }
            if self.uses_firewall() {
                self.to(MapId::FirewallIps, ip, to_chain(&names.firewall), None);
            }
        }
        if !plan.has_external {
            for &ip in &svc.lb_vips {
                no_endpoints(self, ip);
            }
        }
        if let Some(node_port) = self.port.port.node_port {
            let proto = self.proto();
            let key = || vec![KeyValue::Proto(proto), KeyValue::Port(node_port)];
            if plan.eps.has_any {
                self.element(MapId::ServiceNodePorts, key(), to_external, None);
            }
            if !plan.has_external {
                let comment = Some(comment);
                self.element(MapId::NoEndpointNodePorts, key(), filter, comment);
            }
        }
    }

    /// The port's chains and affinity sets; `eps` names the reachable endpoints,
    /// in their order.
    fn chains(
        &mut self,
        plan: &PortPlan<'_, '_>,
        names: &PortNames,
        eps: &[EndpointNames],
    ) -> Result<(), NftError> {
        let mut service_rules = Vec::new();
        let mut local_rules = Vec::new();
        if plan.has_internal
            && let Some(masquerade) = self.masquerade_rule()
        {
            match plan.internal_local {
                true => local_rules.push(masquerade),
                false => service_rules.push(masquerade),
            }
        }
        if plan.uses_ext_chain {
            let policy = match plan.external_local {
                true => &names.local,
                false => &names.service,
            };
            let rules = self.external_rules(names, plan.has_external, policy);
            self.out.chains.push((names.external.clone(), chain(rules)));
        }
        if self.uses_firewall() {
            let rules = vec![self.firewall_rule()];
            self.out.chains.push((names.firewall.clone(), chain(rules)));
        }
        if let Some(seconds) = self.svc.affinity_seconds {
            for ep in eps {
                let mut set = Set::new(vec![self.ctx.family.addr_type()], None);
                set.flags = vec![SetFlag::Dynamic, SetFlag::Timeout];
                set.timeout = Some(seconds);
                self.out.sets.push((ep.affinity.clone(), set));
            }
        }
        let reachable = plan.eps.reachable();
        // The names of a policy chain's endpoints, which are all reachable.
        let pick = |list: &[&PortEndpoint<'_>]| -> Result<Vec<&EndpointNames>, NftError> {
            list.iter()
                .map(|ep| {
                    reachable
                        .binary_search_by(|r| r.text.cmp(&ep.text))
                        .map(|i| &eps[i])
                        .map_err(|_| NftError::Rule("an endpoint without a chain"))
                })
                .collect()
        };
        if plan.uses_cluster_chain {
            service_rules.extend(self.dispatch(&pick(&plan.eps.cluster)?)?);
            let rules = chain(service_rules);
            self.out.chains.push((names.service.clone(), rules));
        }
        if plan.uses_local_chain {
            local_rules.extend(self.dispatch(&pick(&plan.eps.local)?)?);
            let rules = chain(local_rules);
            self.out.chains.push((names.local.clone(), rules));
        }
        for (ep, names) in reachable.iter().zip(eps) {
            let rules = self.endpoint_rules(ep, names);
            self.out.chains.push((names.chain.clone(), chain(rules)));
        }
        Ok(())
    }

    /// Masquerades cluster-IP traffic from outside the cluster (or all of it with
    /// masquerade-all); none without a detector.
    fn masquerade_rule(&self) -> Option<Rule> {
        let daddr = Stmt::addr(Dir::Daddr, self.svc.cluster_ip);
        let mark = self.ctx.mark_masq();
        if self.ctx.base.masquerade_all {
            Some(rule(vec![daddr, mark]))
        } else {
            let not_local = self.ctx.if_not_local.clone()?;
            Some(rule(vec![daddr, not_local, mark]))
        }
    }

    /// The external-destinations chain: masquerade for the Cluster policy; for the
    /// Local policy, pod and node traffic short-circuited to the cluster chain.
    fn external_rules(&self, names: &PortNames, has_external: bool, policy: &Name) -> Vec<Rule> {
        let mut rules = Vec::with_capacity(4);
        let mark = self.ctx.mark_masq();
        if !self.svc.external_policy_local {
            rules.push(rule(vec![mark]));
        } else {
            if let Some(if_local) = &self.ctx.if_local {
                rules.push(noted(
                    vec![if_local.clone(), goto(&names.service)],
                    "short-circuit pod traffic",
                ));
            }
            let local_source = Stmt::FibLocal(Dir::Saddr);
            rules.push(noted(
                vec![local_source.clone(), mark],
                "masquerade local traffic",
            ));
            rules.push(noted(
                vec![local_source, goto(&names.service)],
                "short-circuit local traffic",
            ));
        }
        if has_external {
            rules.push(rule(vec![goto(policy)]));
        }
        rules
    }

    /// The firewall chain's one rule: drop what comes from outside the source
    /// ranges (and, when a range holds the node's address, the load-balancer IPs).
    fn firewall_rule(&self) -> Rule {
        let svc = self.svc;
        let mut sources: Vec<AddrItem> = svc
            .source_ranges
            .iter()
            .map(|n| AddrItem::Net(*n))
            .collect();
        let allow_from_node = self
            .ctx
            .base
            .primary_ip
            .is_some_and(|ip| svc.source_ranges.iter().any(|n| n.contains(&ip)));
        if allow_from_node {
            sources.extend(svc.lb_vips.iter().map(|ip| AddrItem::Ip(*ip)));
        }
        rule(vec![
            Stmt::Addr {
                dir: Dir::Saddr,
                op: Op::Ne,
                value: AddrValue::Anon(sources),
            },
            Stmt::Verdict(Verdict::Drop),
        ])
    }

    /// A policy chain's dispatch: affinity checks, then a random pick.
    fn dispatch(&self, endpoints: &[&EndpointNames]) -> Result<Vec<Rule>, NftError> {
        let mut rules = Vec::with_capacity(endpoints.len() + 1);
        if self.svc.affinity_seconds.is_some() {
            rules.extend(endpoints.iter().map(|ep| {
                rule(vec![
                    Stmt::Addr {
                        dir: Dir::Saddr,
                        op: Op::Eq,
                        value: AddrValue::Set(ep.affinity.clone()),
                    },
                    goto(&ep.chain),
                ])
            }));
        }
        let targets = endpoints
            .iter()
            .map(|ep| Verdict::Goto(ep.chain.clone()))
            .collect();
        rules.push(rule(vec![Stmt::numgen(targets)?]));
        Ok(rules)
    }

    /// An endpoint's chain: hairpin masquerade, affinity record, DNAT.
    fn endpoint_rules(&self, ep: &PortEndpoint<'_>, names: &EndpointNames) -> Vec<Rule> {
        let mut rules = Vec::with_capacity(3);
        rules.push(rule(vec![
            Stmt::addr(Dir::Saddr, ep.addr.ip()),
            self.ctx.mark_masq(),
        ]));
        if self.svc.affinity_seconds.is_some() {
            rules.push(rule(vec![Stmt::UpdateSaddr(names.affinity.clone())]));
        }
        rules.push(rule(vec![
            Stmt::L4Proto(self.proto()),
            Stmt::DnatTo(ep.addr),
        ]));
        rules
    }
}

fn chain(rules: Vec<Rule>) -> Chain {
    Chain {
        rules,
        ..Chain::default()
    }
}
