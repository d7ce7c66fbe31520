//! The rules of one service: captures in the shared chains, its own nat chains,
//! and the filter rules that reject or drop what it cannot serve.

use std::net::IpAddr;

use smallvec::SmallVec;

use super::context::Context;
use super::endpoints::PortPlan;
use super::input::{PortEndpoint, PortInput, ServiceInput};
use super::naming::PortChains;
use super::{KUBE_MARK_MASQ, SharedChain};
use crate::error::{CompileError, Problem};
use crate::model::{Protocol, ServiceKey};
use crate::ruleset::{
    AddrType, Address, Chain, ChainName, Match, NfacctCounter, Not, Probability, RecentAction,
    Rule, Target,
};

/// Everything one service contributes to a family's ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceRules {
    /// The service.
    pub key: ServiceKey,
    /// Rules appended to the shared top-level chains, in order.
    pub shared: Vec<(SharedChain, Rule)>,
    /// The service's own nat chains (`KUBE-SVC-…`, `KUBE-SVL-…`, `KUBE-EXT-…`,
    /// `KUBE-FW-…`, `KUBE-SEP-…`), in the order they are declared.
    pub chains: Vec<Chain>,
    /// Where each port's traffic arrives and goes, for conntrack cleanup.
    pub ports: Vec<PortFlows>,
    /// Every endpoint of every port, usable or not (kube-proxy's cluster-size count).
    pub endpoint_count: usize,
}

/// Where one service port's traffic arrives and which endpoints it may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortFlows {
    /// The port's protocol.
    pub protocol: Protocol,
    /// Cluster IP, external IPs and load-balancer IPs, with the service port.
    pub destinations: Vec<std::net::SocketAddr>,
    /// The node port, if any.
    pub node_port: Option<u16>,
    /// The endpoints traffic can be sent to (those with a `KUBE-SEP-…` chain).
    pub endpoints: Vec<std::net::SocketAddr>,
}

/// Where a service's rules go as they are built, in order: typed
/// ([`ServiceRules`]) or rendered on the spot (`sink::TextSink`), so a full text
/// compile never holds a service's typed rules.
pub(crate) trait Sink {
    /// A new service starts: whatever an abandoned one left is dropped.
    fn begin(&mut self);
    /// The service started last failed: drop what it wrote.
    fn abandon(&mut self);
    /// Start again: drop every service written.
    fn reset(&mut self);
    /// A rule appended to one of the shared chains.
    fn shared(&mut self, which: SharedChain, rule: Rule);
    /// The service's next own chain starts; it will have `rules` rules.
    fn chain(&mut self, name: &ChainName, rules: usize);
    /// A rule appended to the chain started last.
    fn rule(&mut self, rule: &Rule);
    /// An endpoint's own chain with its two rules: [`Sink::chain`] and
    /// [`Sink::rule`] with [`EndpointChain::rules`], which a sink may write
    /// another way with the same result.
    fn endpoint_chain(&mut self, ep: &EndpointChain<'_>) {
        self.chain(&ep.endpoint.chain, 2);
        let [hairpin, dnat] = ep.rules();
        self.rule(&hairpin);
        self.rule(&dnat);
    }
    /// A capture rule appended to a shared chain: [`Sink::shared`] with
    /// [`Capture::rule`], which a sink may write another way with the same result.
    fn shared_capture(&mut self, which: SharedChain, capture: &Capture<'_>) {
        self.shared(which, capture.rule());
    }
    /// A capture rule appended to the chain started last: [`Sink::rule`] with
    /// [`Capture::rule`], which a sink may write another way with the same result.
    fn capture(&mut self, capture: &Capture<'_>) {
        self.rule(&capture.rule());
    }
    /// A service chain's random jump to one endpoint: [`Sink::rule`] with
    /// [`Dispatch::rule`], which a sink may write another way with the same result.
    ///
    /// # Errors
    /// Those of [`Dispatch::rule`].
    fn dispatch(&mut self, jump: &Dispatch<'_>) -> Result<(), Problem> {
        self.rule(&jump.rule()?);
        Ok(())
    }
    /// Where the ports' flows go, if the sink keeps them.
    fn flows(&mut self) -> Option<&mut Vec<PortFlows>>;
}

/// One endpoint's `KUBE-SEP-…` chain: its hairpin masquerade and its DNAT.
pub(crate) struct EndpointChain<'a> {
    /// The endpoint, its chain's name included.
    pub endpoint: &'a PortEndpoint<'a>,
    /// The per-endpoint comment, when written.
    pub comment: Option<&'a Match>,
    pub protocol: Protocol,
    /// Session affinity: the DNAT records the client (`-m recent --set`).
    pub affinity: bool,
}

impl EndpointChain<'_> {
    /// The chain's two rules: `-s IP -j KUBE-MARK-MASQ`, then the DNAT.
    pub fn rules(&self) -> [Rule; 2] {
        let (mut hairpin, mut dnat) = (Rule::new(), Rule::new());
        hairpin.push_opt(self.comment.cloned());
        hairpin
            .matches
            .push(Match::Source(Not::is(Address::Ip(self.endpoint.addr.ip()))));
        hairpin.target = Some(jump(&KUBE_MARK_MASQ));
        dnat.push_opt(self.comment.cloned());
        if self.affinity {
            dnat.matches.push(Match::Recent {
                name: self.endpoint.chain.clone(),
                action: RecentAction::Set,
            });
        }
        dnat.matches.push(Match::protocol(self.protocol));
        dnat.target = Some(Target::Dnat(self.endpoint.addr.into()));
        [hairpin, dnat]
    }
}

/// A rule that picks a service port's traffic by destination:
/// `[comment] -m P -p P -d IP --dport N [extra] TARGET`. Every service has some
/// (its cluster IP's jump and masquerade rules; external and load-balancer IPs).
pub(crate) struct Capture<'a> {
    pub comment: Option<Match>,
    pub protocol: Protocol,
    pub ip: IpAddr,
    pub port: u16,
    /// A match after the port (the masquerade rule's "not from a pod").
    pub extra: Option<&'a Match>,
    pub target: Target,
}

impl Capture<'_> {
    /// The rule's matches, in order, before the optional ones are left out.
    pub fn matches(&self) -> [Option<Match>; 5] {
        [
            self.comment.clone(),
            Some(Match::protocol(self.protocol)),
            Some(addr(self.ip)),
            Some(Match::destination_port(self.port)),
            self.extra.cloned(),
        ]
    }

    /// The rule.
    pub fn rule(&self) -> Rule {
        let mut rule = Rule::new();
        for m in self.matches() {
            rule.push_opt(m);
        }
        rule.target = Some(self.target.clone());
        rule
    }
}

/// A service chain's jump to one endpoint, taken with probability 1/`remaining`
/// (always when it is the last one).
pub(crate) struct Dispatch<'a> {
    pub comment: Option<Match>,
    /// The endpoints from this one to the last, at least 1.
    pub remaining: usize,
    pub endpoint: &'a ChainName,
}

impl Dispatch<'_> {
    /// The rule: `[comment] [-m statistic …] -j KUBE-SEP-…`.
    pub fn rule(&self) -> Result<Rule, Problem> {
        let mut rule = Rule::new();
        rule.push_opt(self.comment.clone());
        if self.remaining > 1 {
            let p = Probability::one_in(self.remaining)?;
            rule.matches.push(Match::Statistic(p));
        }
        rule.target = Some(jump(self.endpoint));
        Ok(rule)
    }
}

impl ServiceRules {
    /// No rules yet, for `key`.
    pub(crate) fn empty(key: ServiceKey) -> Self {
        ServiceRules {
            key,
            shared: Vec::new(),
            chains: Vec::new(),
            ports: Vec::new(),
            endpoint_count: 0,
        }
    }
}

impl Sink for ServiceRules {
    fn begin(&mut self) {
        self.abandon();
    }

    fn abandon(&mut self) {
        self.shared.clear();
        self.chains.clear();
        self.ports.clear();
    }

    fn reset(&mut self) {
        self.abandon();
    }

    fn shared(&mut self, which: SharedChain, rule: Rule) {
        self.shared.push((which, rule));
    }

    fn chain(&mut self, name: &ChainName, rules: usize) {
        self.chains
            .push(Chain::with_rules(name.clone(), Vec::with_capacity(rules)));
    }

    fn rule(&mut self, rule: &Rule) {
        debug_assert!(!self.chains.is_empty(), "a rule before any chain");
        if let Some(chain) = self.chains.last_mut() {
            chain.rules.push(rule.clone());
        }
    }

    fn flows(&mut self) -> Option<&mut Vec<PortFlows>> {
        Some(&mut self.ports)
    }
}

/// Writes the rules of service `key` into `sink` (after [`Sink::begin`]); returns
/// its endpoint count (kube-proxy's cluster-size count). On an error the sink
/// holds part of the service: the caller abandons it.
pub(crate) fn emit_service<S: Sink>(
    key: &ServiceKey,
    input: ServiceInput<'_>,
    ctx: &Context,
    sink: &mut S,
) -> Result<usize, CompileError> {
    let svc = &input;
    for port in &svc.ports {
        let chains = PortChains::new(&port.spn, port.port.protocol);
        PortBuilder {
            svc,
            port,
            chains: &chains,
            ctx,
            out: &mut *sink,
        }
        .build()
        .map_err(|problem| CompileError::Service {
            service: key.clone(),
            port: Some(port.port.name.clone()),
            field: "metadata.name".into(),
            problem,
        })?;
    }
    Ok(svc.endpoint_count())
}

fn addr(ip: IpAddr) -> Match {
    Match::Destination(Not::is(Address::Ip(ip)))
}

fn jump(chain: &ChainName) -> Target {
    Target::Jump(chain.clone())
}

/// What the filter table does with a port's traffic that has nowhere to go, and why.
#[derive(Clone)]
struct Filter {
    target: Target,
    why: &'static str,
}

/// The state kube-proxy derives per service port before writing its rules, with
/// the iptables chains it names.
struct Plan<'p, 'a> {
    /// What both modes derive.
    port: PortPlan<'p, 'a>,
    internal_chain: ChainName,
    external_policy_chain: ChainName,
    uses_fw_chain: bool,
}

struct PortBuilder<'s, 'p, 'a, S> {
    svc: &'s ServiceInput<'a>,
    port: &'p PortInput<'a>,
    /// The port's hashed chain names (iptables mode only: the nftables compiler
    /// shares the input but names its chains itself).
    chains: &'p PortChains,
    ctx: &'s Context,
    out: &'s mut S,
}

impl<'s, 'p, 'a, S: Sink> PortBuilder<'s, 'p, 'a, S> {
    fn proto(&self) -> Protocol {
        self.port.port.protocol
    }

    fn spn(&self) -> &str {
        &self.port.spn
    }

    fn comment(&self, parts: &[&str]) -> Result<Option<Match>, Problem> {
        self.ctx.comment(parts)
    }

    fn filter_comment(&self, filter: &Filter) -> Result<Option<Match>, Problem> {
        if !self.ctx.comments {
            return Ok(None);
        }
        self.comment(&[self.spn(), " ", filter.why])
    }

    fn shared(&mut self, chain: SharedChain, rule: Rule) {
        self.out.shared(chain, rule);
    }

    /// The capture rule of this port for `ip:port`, with `target`.
    fn capture(
        &self,
        comment: Option<Match>,
        ip: IpAddr,
        port: u16,
        target: Target,
    ) -> Capture<'s> {
        Capture {
            comment,
            protocol: self.proto(),
            ip,
            port,
            extra: None,
            target,
        }
    }

    /// Appends a capture rule to a shared chain.
    fn shared_capture(&mut self, which: SharedChain, capture: Capture<'_>) {
        self.out.shared_capture(which, &capture);
    }

    fn plan(&self) -> Plan<'p, 'a> {
        let svc = self.svc;
        let chains = self.chains;
        let port = PortPlan::new(svc, self.port, self.ctx);
        let pick = |local: bool| match local {
            true => chains.svl.clone(),
            false => chains.svc.clone(),
        };
        Plan {
            internal_chain: pick(port.internal_local),
            external_policy_chain: pick(port.external_local),
            uses_fw_chain: port.eps.has_any
                && !svc.lb_vips.is_empty()
                && !svc.source_ranges.is_empty(),
            port,
        }
    }

    fn build(mut self) -> Result<(), Problem> {
        let plan = self.plan();
        // What the filter table does with traffic that has nowhere to go (the
        // comment is written only when a filter rule is).
        let filter = if !plan.port.eps.has_any {
            Filter {
                target: Target::Reject,
                why: "has no endpoints",
            }
        } else {
            Filter {
                target: Target::Drop,
                why: "has no local endpoints",
            }
        };
        let (internal_filter, external_filter) = (filter.clone(), filter);
        self.cluster_ip(&plan, internal_filter)?;
        self.external_ips(&plan, &external_filter)?;
        self.load_balancer(&plan, &external_filter)?;
        self.node_port(&plan, &external_filter)?;
        self.health_check()?;
        // Chains in kube-proxy's order: EXT, FW, SVC, SVL, then the endpoints.
        if plan.port.uses_ext_chain {
            self.ext_chain(&plan)?;
        }
        if plan.uses_fw_chain {
            self.fw_chain()?;
        }
        // The off-cluster masquerade rule opens the internal chain. has_internal
        // implies that chain has endpoints, so it is always written below.
        let mut masquerade = if plan.port.has_internal {
            self.masquerade_rule()?
        } else {
            None
        };
        let chain_names = self.chains;
        for (used, name, endpoints) in [
            (
                plan.port.uses_cluster_chain,
                &chain_names.svc,
                &plan.port.eps.cluster,
            ),
            (
                plan.port.uses_local_chain,
                &chain_names.svl,
                &plan.port.eps.local,
            ),
        ] {
            if used {
                let affinity = usize::from(self.svc.affinity_seconds.is_some());
                self.out.chain(name, 1 + endpoints.len() * (1 + affinity));
                if *name == plan.internal_chain
                    && let Some(rule) = masquerade.take()
                {
                    self.out.capture(&rule);
                }
                self.dispatch_rules(endpoints)?;
            }
        }
        // One comment for every endpoint chain of the port.
        let comment = match plan.port.eps.reachable().is_empty() {
            true => None,
            false => self.ctx.endpoint_comment(&[self.spn()])?,
        };
        for ep in plan.port.eps.reachable() {
            self.endpoint_chain(ep, comment.as_ref());
        }
        let (svc, port) = (self.svc, self.port);
        if let Some(flows) = self.out.flows() {
            let destinations = std::iter::once(svc.cluster_ip)
                .chain(svc.external_ips.iter().copied())
                .chain(svc.lb_vips.iter().copied())
                .map(|ip| std::net::SocketAddr::new(ip, port.port.port))
                .collect();
            flows.push(PortFlows {
                protocol: port.port.protocol,
                destinations,
                node_port: port.port.node_port,
                endpoints: plan.port.eps.reachable().iter().map(|e| e.addr).collect(),
            });
        }
        Ok(())
    }

    fn cluster_ip(&mut self, plan: &Plan<'_, '_>, filter: Filter) -> Result<(), Problem> {
        let (ip, port) = (self.svc.cluster_ip, self.port.port.port);
        if plan.port.has_internal {
            let c = self.comment(&[self.spn(), " cluster IP"])?;
            let rule = self.capture(c, ip, port, jump(&plan.internal_chain));
            self.shared_capture(SharedChain::NatServices, rule);
        } else {
            let c = self.filter_comment(&filter)?;
            let rule = self.capture(c, ip, port, filter.target);
            self.shared_capture(SharedChain::FilterServices, rule);
        }
        Ok(())
    }

    fn external_ips(&mut self, plan: &Plan<'_, '_>, filter: &Filter) -> Result<(), Problem> {
        let port = self.port.port.port;
        for &ip in &self.svc.external_ips {
            if plan.port.eps.has_any {
                let c = self.comment(&[self.spn(), " external IP"])?;
                let rule = self.capture(c, ip, port, jump(&self.chains.ext));
                self.shared_capture(SharedChain::NatServices, rule);
            }
            if !plan.port.has_external {
                let c = self.filter_comment(filter)?;
                let rule = self.capture(c, ip, port, filter.target.clone());
                self.shared_capture(SharedChain::FilterExternalServices, rule);
            }
        }
        Ok(())
    }

    fn load_balancer(&mut self, plan: &Plan<'_, '_>, filter: &Filter) -> Result<(), Problem> {
        let port = self.port.port.port;
        let chains = self.chains;
        let target = if plan.uses_fw_chain {
            &chains.fw
        } else {
            &chains.ext
        };
        for &ip in &self.svc.lb_vips {
            if plan.port.eps.has_any {
                let c = self.comment(&[self.spn(), " loadbalancer IP"])?;
                let rule = self.capture(c, ip, port, jump(target));
                self.shared_capture(SharedChain::NatServices, rule);
            }
            if plan.uses_fw_chain {
                let c =
                    self.comment(&[self.spn(), " traffic not accepted by ", chains.fw.as_str()])?;
                let rule = self.capture(c, ip, port, Target::Drop);
                self.shared_capture(SharedChain::FilterProxyFirewall, rule);
            }
        }
        if !plan.port.has_external {
            for &ip in &self.svc.lb_vips {
                let c = self.filter_comment(filter)?;
                let rule = self.capture(c, ip, port, filter.target.clone());
                self.shared_capture(SharedChain::FilterExternalServices, rule);
            }
        }
        Ok(())
    }

    fn node_port(&mut self, plan: &Plan<'_, '_>, filter: &Filter) -> Result<(), Problem> {
        let Some(node_port) = self.port.port.node_port else {
            return Ok(());
        };
        let proto = self.proto();
        let ext = &self.chains.ext;
        if plan.port.eps.has_any {
            if self.ctx.localhost_nodeports && self.ctx.nfacct {
                let rule = Rule::new()
                    .with_opt(self.comment(&[self.spn()])?)
                    .with(Match::protocol(proto))
                    .with(Match::Destination(Not::is(Address::Net(
                        "127.0.0.0/8".parse().expect("valid CIDR"),
                    ))))
                    .with(Match::destination_port(node_port))
                    .with(Match::Nfacct(NfacctCounter::LocalhostNodePortsAccepted))
                    .to(jump(ext));
                self.shared(SharedChain::NatNodePorts, rule);
            }
            let rule = Rule::new()
                .with_opt(self.comment(&[self.spn()])?)
                .with(Match::protocol(proto))
                .with(Match::destination_port(node_port))
                .to(jump(ext));
            self.shared(SharedChain::NatNodePorts, rule);
        }
        if !plan.port.has_external {
            let rule = Rule::new()
                .with_opt(self.filter_comment(filter)?)
                .with(Match::DstType(AddrType::Local))
                .with(Match::protocol(proto))
                .with(Match::destination_port(node_port))
                .to(filter.target.clone());
            self.shared(SharedChain::FilterExternalServices, rule);
        }
        Ok(())
    }

    fn health_check(&mut self) -> Result<(), Problem> {
        if let Some(hc) = self.svc.health_check_node_port {
            let rule = Rule::new()
                .with_opt(self.comment(&[self.spn(), " health check node port"])?)
                .with(Match::protocol(Protocol::Tcp))
                .with(Match::destination_port(hc))
                .to(Target::Accept);
            self.shared(SharedChain::FilterNodePorts, rule);
        }
        Ok(())
    }

    /// Masquerades cluster-IP traffic from outside the cluster (or all of it with
    /// masquerade-all); no rule without a detector.
    fn masquerade_rule(&self) -> Result<Option<Capture<'s>>, Problem> {
        let detect = if self.ctx.masquerade_all {
            None
        } else if let Some(m) = &self.ctx.if_not_local {
            Some(m)
        } else {
            return Ok(None);
        };
        let c = self.comment(&[self.spn(), " cluster IP"])?;
        let (ip, port) = (self.svc.cluster_ip, self.port.port.port);
        Ok(Some(Capture {
            extra: detect,
            ..self.capture(c, ip, port, jump(&KUBE_MARK_MASQ))
        }))
    }

    fn ext_chain(&mut self, plan: &Plan<'_, '_>) -> Result<(), Problem> {
        let chains = self.chains;
        let spn = self.spn();
        let mut rules: SmallVec<[Rule; 4]> = SmallVec::new();
        if !self.svc.external_policy_local {
            rules.push(
                Rule::new()
                    .with_opt(self.comment(&[
                        "masquerade traffic for ",
                        spn,
                        " external destinations",
                    ])?)
                    .to(jump(&KUBE_MARK_MASQ)),
            );
        } else {
            if let Some(if_local) = &self.ctx.if_local {
                rules.push(
                    Rule::new()
                        .with_opt(self.comment(&[
                            "pod traffic for ",
                            spn,
                            " external destinations",
                        ])?)
                        .with(if_local.clone())
                        .to(jump(&chains.svc)),
                );
            }
            rules.push(
                Rule::new()
                    .with_opt(self.comment(&[
                        "masquerade LOCAL traffic for ",
                        spn,
                        " external destinations",
                    ])?)
                    .with(Match::SrcType(AddrType::Local))
                    .to(jump(&KUBE_MARK_MASQ)),
            );
            rules.push(
                Rule::new()
                    .with_opt(self.comment(&[
                        "route LOCAL traffic for ",
                        spn,
                        " external destinations",
                    ])?)
                    .with(Match::SrcType(AddrType::Local))
                    .to(jump(&chains.svc)),
            );
        }
        if plan.port.has_external {
            rules.push(Rule::new().to(jump(&plan.external_policy_chain)));
        }
        self.out.chain(&chains.ext, rules.len());
        for rule in &rules {
            self.out.rule(rule);
        }
        Ok(())
    }

    fn fw_chain(&mut self) -> Result<(), Problem> {
        let chains = self.chains;
        let spn = self.spn();
        let comment = self.comment(&[spn, " loadbalancer IP"])?;
        let from = |source: Address| {
            Rule::new()
                .with_opt(comment.clone())
                .with(Match::Source(Not::is(source)))
                .to(jump(&chains.ext))
        };
        let mut rules: Vec<Rule> = self
            .svc
            .source_ranges
            .iter()
            .map(|net| from(Address::Net(*net)))
            .collect();
        let allow_from_node = self
            .ctx
            .primary_ip
            .is_some_and(|ip| self.svc.source_ranges.iter().any(|n| n.contains(&ip)));
        if allow_from_node {
            rules.extend(self.svc.lb_vips.iter().map(|ip| from(Address::Ip(*ip))));
        }
        rules.push(Rule::new().with_opt(self.comment(&[
            "other traffic to ",
            spn,
            " will be dropped by KUBE-PROXY-FIREWALL",
        ])?));
        self.out.chain(&chains.fw, rules.len());
        for rule in &rules {
            self.out.rule(rule);
        }
        Ok(())
    }

    /// The service chain's jumps to its endpoints: affinity checks first, then a
    /// random pick with probability 1/(remaining endpoints).
    fn dispatch_rules(&mut self, endpoints: &[&PortEndpoint<'_>]) -> Result<(), Problem> {
        let spn = self.port.spn.as_str();
        if let Some(seconds) = self.svc.affinity_seconds {
            for ep in endpoints {
                self.out.rule(
                    &Rule::new()
                        .with_opt(self.ctx.endpoint_comment(&[spn, " -> ", &ep.text])?)
                        .with(Match::Recent {
                            name: ep.chain.clone(),
                            action: RecentAction::Check { seconds },
                        })
                        .to(jump(&ep.chain)),
                );
            }
        }
        let n = endpoints.len();
        for (i, ep) in endpoints.iter().enumerate() {
            self.out.dispatch(&Dispatch {
                comment: self.ctx.endpoint_comment(&[spn, " -> ", &ep.text])?,
                remaining: n - i,
                endpoint: &ep.chain,
            })?;
        }
        Ok(())
    }

    fn endpoint_chain(&mut self, ep: &PortEndpoint<'_>, comment: Option<&Match>) {
        self.out.endpoint_chain(&EndpointChain {
            endpoint: ep,
            comment,
            protocol: self.proto(),
            affinity: self.svc.affinity_seconds.is_some(),
        });
    }
}
