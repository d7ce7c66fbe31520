//! The chains a dump declares, without reading its rules: what a full sync needs
//! of the kernel's table to find the chains an earlier run left behind, at a
//! fraction of a full parse's cost (a 10k-service nat table has 320k rules).

use std::str::FromStr;

use crate::ruleset::{ChainName, Table};

/// Every chain `text` (an `iptables-save` dump or restore text) declares, with
/// its table, in order: the `:NAME POLICY [packets:bytes]` lines under each
/// `*table` line. Rule lines are not read. A name the IR refuses, or a
/// declaration outside a known table, is left out.
///
/// ```
/// use svcnat::ruleset::Table;
/// let dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-X - [0:0]\n-A KUBE-SVC-X -j RETURN\nCOMMIT\n";
/// let chains: Vec<_> = svcnat::parse::declared_chains(dump)
///     .map(|(t, c)| (t, c.to_string()))
///     .collect();
/// assert_eq!(chains, [(Table::Nat, "PREROUTING".into()), (Table::Nat, "KUBE-SVC-X".into())]);
/// ```
pub fn declared_chains(text: &str) -> impl Iterator<Item = (Table, ChainName)> + '_ {
    let mut table = None;
    text.lines().filter_map(move |line| {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('*') {
            table = Table::from_str(name).ok();
            return None;
        }
        let declared = line.strip_prefix(':')?.split_whitespace().next()?;
        Some((table?, ChainName::new(declared).ok()?))
    })
}
