//! Removing what svcnat wrote, as kube-proxy's `--cleanup` does: the rules in the
//! built-in chains that jump to svcnat's chains, then those chains. It reads the
//! kernel, so it works from a fresh process with no [`Syncer`](crate::sync::Syncer),
//! and a second run finds nothing to do.
//!
//! [`cleanup_payload`] is the pure half: from one table's `iptables-save` output,
//! the restore payload that removes svcnat's part of it and leaves every other rule
//! and chain as it was. Only the jump rules svcnat writes (as `compile::jump_rules`
//! writes them, under any config) are removed from the built-in chains. A chain
//! named like svcnat's that a rule svcnat did not write still jumps to (another
//! program's `KUBE-SEP-MINE`, a user's `-j KUBE-SERVICES`) is kept, with every
//! chain it reaches, and reported. As kube-proxy's cleanup does, `KUBE-MARK-MASQ`
//! and `KUBE-FIREWALL`, which kubelet writes too, are left in place.

use std::collections::{BTreeSet, HashSet};

use super::{ExecError, Executor, RestoreOptions};
use crate::compile::{is_owned_chain, jump_rules};
use crate::model::IpFamily;
use crate::model::ProxyConfig;
use crate::parse::{ParseError, parse_as};
use crate::ruleset::restore::{self, RuleLine};
use crate::ruleset::{ChainName, Rule, Table};

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

/// Chains svcnat writes that other programs write too and kube-proxy's cleanup
/// leaves: `KUBE-MARK-MASQ` (kubelet's, in older releases) and `KUBE-FIREWALL`
/// (kubelet's localnet guard).
const SHARED: [&str; 2] = ["KUBE-MARK-MASQ", "KUBE-FIREWALL"];

/// True for a chain cleanup removes.
fn removable(name: &str) -> bool {
    (is_owned_chain(name) && !SHARED.contains(&name)) || name == crate::compile::CANARY_CHAIN
}

/// Every jump rule svcnat may have put in `table`'s built-in chains, as text, under
/// any config (comments on or off, localhost node ports on or off).
fn svcnat_jumps(family: IpFamily, table: Table) -> HashSet<(String, String)> {
    let mut out = HashSet::new();
    for comments in [true, false] {
        for localhost in [true, false] {
            let config = ProxyConfig::default()
                .with_ip_family(family)
                .with_comments(comments)
                .with_localhost_nodeports(localhost);
            for jump in jump_rules(&config).into_iter().flatten() {
                if jump.table == table {
                    out.insert((jump.chain.to_string(), jump.rule.to_string()));
                }
            }
        }
    }
    out
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
    let (parts, report) = cleanup_parts(saved, family, table)?;
    Ok((payload(table, &parts.concat()), report))
}

/// `body` as a restore payload of `table`; empty when `body` is.
fn payload(table: Table, body: &str) -> String {
    let mut text = String::new();
    if !body.is_empty() {
        // Writing into a String cannot fail.
        let _ = restore::open_table(&mut text, table);
        text.push_str(body);
        let _ = restore::commit(&mut text);
    }
    text
}

/// [`cleanup_payload`]'s lines in two parts: the jump rules deleted from the
/// built-in chains, then the chains flushed and deleted.
fn cleanup_parts(
    saved: &str,
    family: IpFamily,
    table: Table,
) -> Result<([String; 2], Cleanup), ParseError> {
    let ruleset = parse_as(saved, family)?;
    let mut report = Cleanup::default();
    let Some(rules) = ruleset.table(table) else {
        return Ok((Default::default(), report));
    };
    let owned: Vec<&ChainName> = rules
        .chains
        .values()
        .filter(|c| c.policy.is_none() && removable(c.name.as_str()))
        .map(|c| &c.name)
        .collect();
    // svcnat's own jump rules in the built-in chains, as it writes them; any other
    // rule there, or in a chain svcnat does not own, is another program's.
    let ours = svcnat_jumps(family, table);
    let is_ours =
        |chain: &ChainName, rule: &Rule| ours.contains(&(chain.to_string(), rule.to_string()));
    // What rules svcnat did not write reach: kept, with all they reach in turn.
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    let mut todo: Vec<&str> = rules
        .chains
        .values()
        .filter(|c| !removable(c.name.as_str()))
        .flat_map(|c| {
            c.rules
                .iter()
                .filter(|r| c.policy.is_none() || !is_ours(&c.name, r))
                .filter_map(Rule::target_name)
        })
        .filter(|t| removable(t))
        .collect();
    while let Some(name) = todo.pop() {
        if kept.insert(name)
            && let Some(chain) = rules.chains.get(name)
        {
            todo.extend(
                chain
                    .rules
                    .iter()
                    .filter_map(Rule::target_name)
                    .filter(|t| removable(t)),
            );
        }
    }
    let removed: Vec<&ChainName> = owned
        .iter()
        .copied()
        .filter(|c| !kept.contains(c.as_str()))
        .collect();
    let mut jumps = String::new();
    // Writing into a String cannot fail.
    for chain in rules.chains.values().filter(|c| c.policy.is_some()) {
        for rule in &chain.rules {
            if is_ours(&chain.name, rule) {
                let _ = RuleLine::delete(&mut jumps, chain.name.as_str()).and_then(|mut l| {
                    l.rule(rule)?;
                    l.end()
                });
                report
                    .jumps_removed
                    .push((table, chain.name.clone(), rule.to_string()));
            }
        }
    }
    let mut chains = String::new();
    for chain in &removed {
        let _ = restore::declare(&mut chains, chain.as_str());
    }
    for chain in &removed {
        let _ = restore::delete(&mut chains, chain.as_str());
        report.chains_removed.push((table, (*chain).clone()));
    }
    report.chains_kept = owned
        .iter()
        .filter(|c| kept.contains(c.as_str()))
        .map(|c| (table, (*c).clone()))
        .collect();
    Ok(([jumps, chains], report))
}

/// Removes svcnat's jump rules and chains from the filter and nat tables of
/// `family`, reading them first: kube-proxy's `--cleanup`. Every other rule and
/// chain is left as it was; running it again finds nothing to do. Holds the
/// executor's lock ([`Executor::lock`]) throughout, so no svcnat sync runs
/// between its reads and its writes.
///
/// Each table takes up to two restores: the jump rules out of the built-in
/// chains, then svcnat's chains flushed and deleted. Apart, the second payload
/// holds nothing but chain declarations and deletions, which an executor may cut
/// into pieces ([`IptablesRestore`](super::IptablesRestore) does on nft, where one
/// `--noflush` restore naming 100,000 chains takes minutes); together, rule
/// deletions would make it one restore. A failure between the two leaves the
/// chains unreferenced, and the next cleanup removes them.
///
/// # Errors
/// The lock cannot be taken, a save or restore fails, or a table's dump does not
/// parse (then nothing more is changed in that table).
pub fn cleanup<E: Executor + ?Sized>(
    executor: &mut E,
    family: IpFamily,
) -> Result<Cleanup, ExecError> {
    let _lock = executor.lock()?;
    let mut all = Cleanup::default();
    for table in TABLES {
        let saved = executor.save(family, table)?;
        let (parts, report) = cleanup_parts(&saved, family, table)
            .map_err(|e| ExecError::Refused(format!("{table} table: {e}")))?;
        for part in parts {
            let payload = payload(table, &part);
            if !payload.is_empty() {
                executor.restore(family, &payload, RestoreOptions::default())?;
            }
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
        // KUBE-MARK-MASQ is shared with kubelet and stays, as with kube-proxy.
        assert_eq!(kept, ["KUBE-SEP-MINE"]);
        assert_eq!(report.jumps_removed.len(), 2);
        assert_eq!(report.chains_removed.len(), 3);
    }

    #[test]
    fn a_users_jump_to_an_svcnat_chain_keeps_it() {
        let saved = SAVED.replace(
            "-A PREROUTING -p tcp",
            "-A PREROUTING -i eth1 -j KUBE-SERVICES\n-A PREROUTING -p tcp",
        );
        let (payload, report) = cleanup_payload(&saved, IpFamily::Ipv4, Table::Nat).unwrap();
        // svcnat's own two jumps go; the user's stays, and so do the chains it reaches.
        assert_eq!(report.jumps_removed.len(), 2);
        assert!(!payload.contains("-i eth1"), "{payload}");
        let kept: Vec<&str> = report.chains_kept.iter().map(|(_, c)| c.as_str()).collect();
        assert_eq!(
            kept,
            ["KUBE-SERVICES", "KUBE-SVC-A", "KUBE-SEP-A", "KUBE-SEP-MINE"]
        );
        assert!(report.chains_removed.is_empty());
    }

    #[test]
    fn jump_rules_go_first_and_the_chains_alone_can_be_cut() {
        use crate::exec::{Call, Recorder, pieces};
        let v4 = IpFamily::Ipv4;
        let mut rec = Recorder::new();
        rec.restore(v4, SAVED, RestoreOptions::default()).unwrap();
        let before = rec.calls().len();
        let done = cleanup(&mut rec, v4).unwrap();
        let restores: Vec<&str> = rec.calls()[before..]
            .iter()
            .filter_map(|c| match c {
                Call::Restore { payload, .. } => Some(payload.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            restores,
            [
                "*nat\n\
                 -D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                 -D OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                 COMMIT\n",
                "*nat\n\
                 :KUBE-SERVICES - [0:0]\n:KUBE-SVC-A - [0:0]\n:KUBE-SEP-A - [0:0]\n\
                 -X KUBE-SERVICES\n-X KUBE-SVC-A\n-X KUBE-SEP-A\nCOMMIT\n",
            ]
        );
        // The chains' payload holds no rule deletion, so an executor can cut it.
        assert_eq!(pieces(restores[1], v4, 1).unwrap().len(), 6);
        assert_eq!(done.chains_removed.len(), 3);
        assert!(rec.rules(v4, Table::Nat, "KUBE-SVC-A").is_none());
        let again = cleanup(&mut rec, v4).unwrap();
        assert!(again.jumps_removed.is_empty() && again.chains_removed.is_empty());
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
