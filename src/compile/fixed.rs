//! The top-level chains every ruleset has, and how the services' rules are put
//! together with them.

use std::net::IpAddr;

use crate::ruleset::JumpRule;

use super::context::Context;
use super::service::ServiceRules;
use super::{
    KUBE_EXTERNAL_SERVICES, KUBE_FIREWALL, KUBE_FORWARD, KUBE_MARK_MASQ, KUBE_NODEPORTS,
    KUBE_POSTROUTING, KUBE_PROXY_FIREWALL, KUBE_SERVICES, SharedChain,
};
use crate::error::CompileError;
use crate::model::{IpFamily, ProxyConfig};
use crate::ruleset::{
    AddrType, Address, ChainName, Comment, CtState, Mark, MarkOp, Match, NfacctCounter, Not, Rule,
    Ruleset, Table, TableRules, Target,
};

fn net(text: &str) -> Address {
    Address::Net(text.parse().expect("valid CIDR literal"))
}

/// A comment the crate writes itself; its text is a literal known to be valid.
fn fixed_comment(ctx_comments: bool, text: &'static str) -> Option<Match> {
    ctx_comments.then(|| Match::Comment(Comment::new(text).expect("valid comment literal")))
}

fn masq_mark(ctx: &Context) -> Mark {
    Mark {
        value: ctx.mark,
        mask: Some(ctx.mark),
    }
}

/// Puts the fixed chains and the services' rules together into one ruleset:
/// filter first, then nat, as kube-proxy writes them.
pub(crate) fn assemble_owned(
    ctx: &Context,
    services: impl Iterator<Item = ServiceRules>,
) -> Ruleset {
    let (mut filter, mut nat) = fixed_tables(ctx);
    let mut shared: [Vec<Rule>; SharedChain::ALL.len()] = Default::default();
    let mut own = Vec::new();
    for svc in services {
        for (which, rule) in svc.shared {
            shared[which as usize].push(rule);
        }
        own.extend(svc.chains);
    }
    for (which, mut rules) in SharedChain::ALL.into_iter().zip(shared) {
        rules.extend(shared_tail(ctx, which));
        let table = match which.table() {
            Table::Nat => &mut nat,
            _ => &mut filter,
        };
        table.chain_mut(&which.chain()).rules = rules;
    }
    for chain in own {
        nat.chains.insert(chain.name.clone(), chain);
    }
    Ruleset {
        family: ctx.family,
        tables: vec![filter, nat],
    }
}

/// True for a chain svcnat writes: a top-level chain of the fixed tables or a
/// per-service chain. Cleanup removes these (and the jumps to them) and nothing
/// else.
pub(crate) fn is_owned_chain(name: &str) -> bool {
    super::FIXED_CHAINS.iter().any(|c| c.as_str() == name) || super::naming::is_service_chain(name)
}

/// The rules a shared chain ends with, after every service's: the node-port jumps
/// go last in nat `KUBE-SERVICES`, as kube-proxy writes them; the other shared
/// chains end with the services' rules. The typed and the text assembly both ask
/// here.
pub(crate) fn shared_tail(ctx: &Context, which: SharedChain) -> Vec<Rule> {
    match which {
        SharedChain::NatServices => nodeport_jumps(ctx),
        _ => Vec::new(),
    }
}

/// The filter and nat tables with every fixed chain declared, in kube-proxy's order,
/// and the rules that depend only on the config.
pub(crate) fn fixed_tables(ctx: &Context) -> (TableRules, TableRules) {
    let mut filter = TableRules::new(Table::Filter);
    let mut nat = TableRules::new(Table::Nat);
    let has_kubelet_firewall = ctx.family == IpFamily::Ipv4 && ctx.localhost_nodeports;
    for chain in [
        KUBE_SERVICES,
        KUBE_EXTERNAL_SERVICES,
        KUBE_FORWARD,
        KUBE_NODEPORTS,
        KUBE_PROXY_FIREWALL,
    ] {
        filter.chain_mut(&chain);
    }
    for chain in [
        KUBE_SERVICES,
        KUBE_NODEPORTS,
        KUBE_POSTROUTING,
        KUBE_MARK_MASQ,
    ] {
        nat.chain_mut(&chain);
    }
    let c = ctx.comments;

    // nat KUBE-POSTROUTING and KUBE-MARK-MASQ.
    nat.append(
        &KUBE_POSTROUTING,
        Rule::new()
            .with(Match::Mark(Not::is_not(masq_mark(ctx))))
            .to(Target::Return),
    );
    nat.append(
        &KUBE_POSTROUTING,
        Rule::new().to(Target::Mark(MarkOp::Xor(ctx.mark))),
    );
    nat.append(
        &KUBE_POSTROUTING,
        Rule::new()
            .with_opt(fixed_comment(
                c,
                "kubernetes service traffic requiring SNAT",
            ))
            .to(Target::Masquerade {
                random_fully: ctx.random_fully,
            }),
    );
    nat.append(
        &KUBE_MARK_MASQ,
        Rule::new().to(Target::Mark(MarkOp::Or(ctx.mark))),
    );

    // filter KUBE-FIREWALL: kube-proxy's copy of kubelet's localnet guard.
    if has_kubelet_firewall {
        filter.append(
            &KUBE_FIREWALL,
            Rule::new()
                .with_opt(fixed_comment(c, "block incoming localnet connections"))
                .with(Match::Destination(Not::is(net("127.0.0.0/8"))))
                .with(Match::Source(Not::is_not(net("127.0.0.0/8"))))
                .with(Match::Conntrack(Not::is_not(vec![
                    CtState::Related,
                    CtState::Established,
                    CtState::Dnat,
                ])))
                .to(Target::Drop),
        );
    }

    // filter KUBE-FORWARD.
    if !ctx.tcp_liberal {
        filter.append(
            &KUBE_FORWARD,
            Rule::new()
                .with(Match::Conntrack(Not::is(vec![CtState::Invalid])))
                .with_opt(
                    ctx.nfacct
                        .then_some(Match::Nfacct(NfacctCounter::CtStateInvalidDropped)),
                )
                .to(Target::Drop),
        );
    }
    filter.append(
        &KUBE_FORWARD,
        Rule::new()
            .with_opt(fixed_comment(c, "kubernetes forwarding rules"))
            .with(Match::Mark(Not::is(masq_mark(ctx))))
            .to(Target::Accept),
    );
    filter.append(
        &KUBE_FORWARD,
        Rule::new()
            .with_opt(fixed_comment(c, "kubernetes forwarding conntrack rule"))
            .with(Match::Conntrack(Not::is(vec![
                CtState::Related,
                CtState::Established,
            ])))
            .to(Target::Accept),
    );

    (filter, nat)
}

/// The final `KUBE-SERVICES -> KUBE-NODEPORTS` rule(s): one on every local address,
/// or one per node address allowed by `--nodeport-addresses`.
fn nodeport_jumps(ctx: &Context) -> Vec<Rule> {
    let comment = fixed_comment(
        ctx.comments,
        "kubernetes service nodeports; NOTE: this must be the last rule in this chain",
    );
    if ctx.nodeport_all {
        let exclude = match ctx.family {
            IpFamily::Ipv6 => Some(net("::1/128")),
            IpFamily::Ipv4 if !ctx.localhost_nodeports => Some(net("127.0.0.0/8")),
            IpFamily::Ipv4 => None,
        };
        vec![
            Rule::new()
                .with_opt(comment)
                .with(Match::DstType(AddrType::Local))
                .with_opt(exclude.map(|a| Match::Destination(Not::is_not(a))))
                .to(Target::Jump(KUBE_NODEPORTS)),
        ]
    } else {
        ctx.nodeport_ips
            .iter()
            .map(|ip: &IpAddr| {
                Rule::new()
                    .with_opt(comment.clone())
                    .with(Match::Destination(Not::is(Address::Ip(*ip))))
                    .to(Target::Jump(KUBE_NODEPORTS))
            })
            .collect()
    }
}

/// The canary chain's name, in nat and in filter: kube-proxy's.
pub const CANARY_CHAIN: &str = "KUBE-PROXY-CANARY";

/// The canary rule's comment.
const CANARY_COMMENT: &str = "svcnat drift canary";

/// The canaries every full sync writes: a [`CANARY_CHAIN`] in nat and in filter,
/// each with one rule (`-m comment --comment "svcnat drift canary" -j RETURN`).
/// Unlike kube-proxy's empty canary, the rule also shows a flush (`-F`), which
/// leaves chains in place.
pub fn canaries() -> Vec<JumpRule> {
    let rule = Rule::new()
        .with(Match::Comment(
            crate::ruleset::Comment::new(CANARY_COMMENT).expect("a valid comment"),
        ))
        .to(Target::Return);
    [Table::Nat, Table::Filter]
        .into_iter()
        .map(|table| JumpRule {
            table,
            chain: ChainName::fixed(CANARY_CHAIN),
            rule: rule.clone(),
        })
        .collect()
}

/// The jump rules from the built-in chains for `config`, in kube-proxy's order.
/// Each is inserted at the top of its chain, so the last one for a chain ends up
/// first.
///
/// # Errors
/// An invalid config, as [`super::compile`] reports it.
pub fn jump_rules(config: &ProxyConfig) -> Result<Vec<JumpRule>, CompileError> {
    let ctx = Context::new(config)?;
    let new = || Match::Conntrack(Not::is(vec![CtState::New]));
    let c = ctx.comments;
    let mut out = Vec::new();
    let mut add =
        |table, chain: &'static str, ct: bool, comment: Option<&'static str>, to: ChainName| {
            out.push(JumpRule {
                table,
                chain: ChainName::fixed(chain),
                rule: Rule::new()
                    .with_opt(ct.then(new))
                    .with_opt(comment.and_then(|t| fixed_comment(c, t)))
                    .to(Target::Jump(to)),
            });
        };
    let external = Some("kubernetes externally-visible service portals");
    let portals = Some("kubernetes service portals");
    let firewall = Some("kubernetes load balancer firewall");
    add(
        Table::Filter,
        "INPUT",
        true,
        external,
        KUBE_EXTERNAL_SERVICES,
    );
    add(
        Table::Filter,
        "FORWARD",
        true,
        external,
        KUBE_EXTERNAL_SERVICES,
    );
    add(
        Table::Filter,
        "INPUT",
        false,
        Some("kubernetes health check service ports"),
        KUBE_NODEPORTS,
    );
    add(Table::Filter, "FORWARD", true, portals, KUBE_SERVICES);
    add(Table::Filter, "OUTPUT", true, portals, KUBE_SERVICES);
    add(
        Table::Filter,
        "FORWARD",
        false,
        Some("kubernetes forwarding rules"),
        KUBE_FORWARD,
    );
    add(Table::Filter, "INPUT", true, firewall, KUBE_PROXY_FIREWALL);
    add(Table::Filter, "OUTPUT", true, firewall, KUBE_PROXY_FIREWALL);
    add(
        Table::Filter,
        "FORWARD",
        true,
        firewall,
        KUBE_PROXY_FIREWALL,
    );
    add(Table::Nat, "OUTPUT", false, portals, KUBE_SERVICES);
    add(Table::Nat, "PREROUTING", false, portals, KUBE_SERVICES);
    add(
        Table::Nat,
        "POSTROUTING",
        false,
        Some("kubernetes postrouting rules"),
        KUBE_POSTROUTING,
    );
    if ctx.family == IpFamily::Ipv4 && ctx.localhost_nodeports {
        add(Table::Filter, "INPUT", false, None, KUBE_FIREWALL);
        add(Table::Filter, "OUTPUT", false, None, KUBE_FIREWALL);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_names_are_valid() {
        for name in super::super::FIXED_CHAINS {
            assert!(ChainName::new(name.as_str()).is_ok(), "{name}");
        }
    }
}
