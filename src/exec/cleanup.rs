//! Removing what svcnat wrote, as kube-proxy's `--cleanup` does: the rules in the
//! built-in chains that jump to svcnat's chains, then those chains. It reads the
//! kernel, so it works from a fresh process with no [`Syncer`](crate::sync::Syncer),
//! and a second run finds nothing to do.
//!
//! [`cleanup_payload`] is the pure half: from one table's `iptables-save` output,
//! the restore payload that removes svcnat's part of it and leaves every other rule
//! and chain as it was. A chain named like svcnat's that a rule svcnat did not
//! write still jumps to (another program's `KUBE-SEP-MINE`, an old kube-proxy's
//! leftovers) is kept, with every chain it reaches, and reported.

use std::collections::{BTreeSet, HashSet};

use super::{ExecError, Executor, RestoreOptions};
use crate::compile::is_owned_chain;
use crate::model::IpFamily;
use crate::parse::{ParseError, parse_as};
use crate::ruleset::restore::{self, RuleLine};
use crate::ruleset::{ChainName, Rule, Table, Target};

/// What a cleanup removed, and what it left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cleanup {
    /// The jump rules removed from the built-in chains.
    pub jumps_removed: Vec<(Table, ChainName, String)>,
    /// The chains removed.
    pub chains_removed: Vec<(Table, ChainName)>,
    /// Chains named as svcnat names its own that are kept, because a rule svcnat
    /// did not write jumps to them.
    pub chains_kept: Vec<(Table, ChainName)>,
}

/// The tables svcnat writes.
const TABLES: [Table; 2] = [Table::Filter, Table::Nat];

/// The chain a rule jumps or goes to, as the parser read it (typed where the dump
/// declares the chain, as `iptables-save` output does).
fn target(rule: &Rule) -> Option<&str> {
    match &rule.target {
        Some(Target::Jump(c) | Target::Goto(c)) => Some(c.as_str()),
        Some(Target::Other(raw)) => {
            let t = raw.as_str();
            t.strip_prefix("-j ")
                .or_else(|| t.strip_prefix("-g "))
                .filter(|n| !n.contains(' '))
        }
        _ => None,
    }
}

/// The restore payload that removes svcnat's rules and chains from `table`, whose
/// `iptables-save -t TABLE` output is `saved`, and what it removes and keeps. The
/// payload is empty when there is nothing to remove.
///
/// # Errors
/// The dump does not parse.
pub fn cleanup_payload(
    saved: &str,
    family: IpFamily,
    table: Table,
) -> Result<(String, Cleanup), ParseError> {
    let ruleset = parse_as(saved, family)?;
    let mut report = Cleanup::default();
    let Some(rules) = ruleset.table(table) else {
        return Ok((String::new(), report));
    };
    let owned: Vec<&ChainName> = rules
        .chains
        .values()
        .filter(|c| c.policy.is_none() && is_owned_chain(c.name.as_str()))
        .map(|c| &c.name)
        .collect();
    // What rules svcnat did not write reach: kept, with all they reach in turn.
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    let mut todo: Vec<&str> = rules
        .chains
        .values()
        .filter(|c| c.policy.is_none() && !is_owned_chain(c.name.as_str()))
        .flat_map(|c| c.rules.iter().filter_map(target))
        .filter(|t| is_owned_chain(t))
        .collect();
    while let Some(name) = todo.pop() {
        if kept.insert(name)
            && let Some(chain) = rules.chains.get(name)
        {
            todo.extend(
                chain
                    .rules
                    .iter()
                    .filter_map(target)
                    .filter(|t| is_owned_chain(t)),
            );
        }
    }
    let removed: Vec<&ChainName> = owned
        .iter()
        .copied()
        .filter(|c| !kept.contains(c.as_str()))
        .collect();
    let removed_names: HashSet<&str> = removed.iter().map(|c| c.as_str()).collect();
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = restore::open_table(&mut text, table);
    for chain in rules.chains.values().filter(|c| c.policy.is_some()) {
        for rule in &chain.rules {
            if target(rule).is_some_and(|t| removed_names.contains(t)) {
                let _ = RuleLine::delete(&mut text, chain.name.as_str()).and_then(|mut l| {
                    l.rule(rule)?;
                    l.end()
                });
                report
                    .jumps_removed
                    .push((table, chain.name.clone(), rule.to_string()));
            }
        }
    }
    for chain in &removed {
        let _ = restore::declare(&mut text, chain.as_str());
    }
    for chain in &removed {
        let _ = restore::delete(&mut text, chain.as_str());
        report.chains_removed.push((table, (*chain).clone()));
    }
    let _ = restore::commit(&mut text);
    report.chains_kept = owned
        .iter()
        .filter(|c| kept.contains(c.as_str()))
        .map(|c| (table, (*c).clone()))
        .collect();
    if report.jumps_removed.is_empty() && report.chains_removed.is_empty() {
        text.clear();
    }
    Ok((text, report))
}

/// Removes svcnat's jump rules and chains from the filter and nat tables of
/// `family`, reading them first: kube-proxy's `--cleanup`. Every other rule and
/// chain is left as it was; running it again finds nothing to do.
///
/// # Errors
/// A save or restore fails, or a table's dump does not parse (then nothing more
/// is changed in that table).
pub fn cleanup<E: Executor + ?Sized>(
    executor: &mut E,
    family: IpFamily,
) -> Result<Cleanup, ExecError> {
    let mut all = Cleanup::default();
    for table in TABLES {
        let saved = executor.save(family, table)?;
        let (payload, report) = cleanup_payload(&saved, family, table)
            .map_err(|e| ExecError::Refused(format!("{table} table: {e}")))?;
        if !payload.is_empty() {
            executor.restore(family, &payload, RestoreOptions::default())?;
        }
        all.jumps_removed.extend(report.jumps_removed);
        all.chains_removed.extend(report.chains_removed);
        all.chains_kept.extend(report.chains_kept);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "*nat\n\
        :PREROUTING ACCEPT [0:0]\n\
        :OUTPUT ACCEPT [0:0]\n\
        :DOCKER - [0:0]\n\
        :KUBE-SERVICES - [0:0]\n\
        :KUBE-SVC-A - [0:0]\n\
        :KUBE-SEP-A - [0:0]\n\
        :KUBE-MARK-MASQ - [0:0]\n\
        :KUBE-SEP-MINE - [0:0]\n\
        -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
        -A PREROUTING -p tcp -m tcp --dport 8080 -j DOCKER\n\
        -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
        -A DOCKER -j KUBE-SEP-MINE\n\
        -A KUBE-SERVICES -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-A\n\
        -A KUBE-SVC-A -j KUBE-SEP-A\n\
        -A KUBE-SEP-A -s 10.1.0.1/32 -j KUBE-MARK-MASQ\n\
        -A KUBE-SEP-MINE -j KUBE-MARK-MASQ\n\
        COMMIT\n";

    #[test]
    fn removes_svcnat_and_keeps_what_others_reach() {
        let (payload, report) = cleanup_payload(SAVED, IpFamily::Ipv4, Table::Nat).unwrap();
        assert_eq!(
            payload,
            "*nat\n\
             -D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -D OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             :KUBE-SERVICES - [0:0]\n:KUBE-SVC-A - [0:0]\n:KUBE-SEP-A - [0:0]\n\
             -X KUBE-SERVICES\n-X KUBE-SVC-A\n-X KUBE-SEP-A\nCOMMIT\n"
        );
        let kept: Vec<&str> = report.chains_kept.iter().map(|(_, c)| c.as_str()).collect();
        assert_eq!(kept, ["KUBE-MARK-MASQ", "KUBE-SEP-MINE"]);
        assert_eq!(report.jumps_removed.len(), 2);
        assert_eq!(report.chains_removed.len(), 3);
    }

    #[test]
    fn nothing_to_do_is_an_empty_payload() {
        let saved =
            "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j DOCKER\n:DOCKER - [0:0]\nCOMMIT\n";
        let (payload, report) = cleanup_payload(saved, IpFamily::Ipv4, Table::Nat).unwrap();
        assert_eq!(payload, "");
        assert_eq!(report, Cleanup::default());
    }
}
