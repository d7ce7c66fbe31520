//! Putting the restore text together: the fixed tables' framing and rules, the
//! services' parts in their places, the stale chains' deletions, written the same
//! way for a whole cluster's [`CompiledText`](super::CompiledText) and for the
//! services the [`Syncer`](crate::sync::Syncer) keeps.

use std::fmt;

use super::SharedChain;
use super::context::Context;
use super::fixed::{fixed_tables, shared_tail};
use super::sink::ServiceText;
use crate::ruleset::restore::{self};
use crate::ruleset::{ChainName, Table, TableRules};

/// The services' lines of a full text, however they are stored: kept apart per
/// service ([`Services`]) or merged into a few large buffers (a
/// [`CompiledText`](super::CompiledText)'s).
pub(super) trait ServiceLines {
    /// The `:NAME - [0:0]` lines of the own chains.
    fn decls<W: fmt::Write>(&self, out: &mut W) -> fmt::Result;
    /// The `-A …` lines of one shared chain.
    fn shared<W: fmt::Write>(&self, which: SharedChain, out: &mut W) -> fmt::Result;
    /// The `-A …` lines of the own chains.
    fn own<W: fmt::Write>(&self, out: &mut W) -> fmt::Result;
}

/// Services kept apart, in order.
struct Services<I>(I);

impl<'a, I: Iterator<Item = &'a ServiceText> + Clone> ServiceLines for Services<I> {
    fn decls<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        for svc in self.0.clone() {
            for (name, _) in svc.chains() {
                restore::declare(out, name.as_str())?;
            }
        }
        Ok(())
    }

    fn shared<W: fmt::Write>(&self, which: SharedChain, out: &mut W) -> fmt::Result {
        for svc in self.0.clone() {
            out.write_str(svc.shared_text(which))?;
        }
        Ok(())
    }

    fn own<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        for svc in self.0.clone() {
            out.write_str(svc.own_text())?;
        }
        Ok(())
    }
}

/// What a [`Syncer`](crate::sync::Syncer)'s full text holds besides the compiled
/// chains.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Extras<'a> {
    /// Chains written after the compiled ones of their table, with their rule
    /// lines (the drift canaries).
    pub chains: &'a [(Table, ChainName, String)],
    /// Stale nat chains flushed and kept: a rule svcnat did not write still jumps
    /// to them, so `-X` would fail.
    pub flushed: &'a [ChainName],
    /// Stale nat chains flushed and deleted (`-X`), as [`plan`](crate::sync::plan)
    /// writes deletions.
    pub deleted: &'a [ChainName],
}

/// Writes a [`Syncer`](crate::sync::Syncer)'s full restore text of `services`:
/// nat first, then filter (each `COMMIT` is applied on its own: the `Syncer`
/// puts the filter rules to hold while nat changes before both), with the
/// `extras` in their tables.
/// Without extras each table's section is what `render::write_fmt` over
/// `fixed::assemble_owned(ctx, …)` writes for it.
pub(crate) fn write_full<'a, W, I>(
    ctx: &Context,
    services: I,
    extras: Extras<'_>,
    out: &mut W,
) -> fmt::Result
where
    W: fmt::Write,
    I: Iterator<Item = &'a ServiceText> + Clone,
{
    write_sections(ctx, services, extras, &[Table::Nat, Table::Filter], out)
}

/// Writes the sections of `tables` (nat, filter) of [`write_full`]'s text.
pub(crate) fn write_sections<'a, W, I>(
    ctx: &Context,
    services: I,
    extras: Extras<'_>,
    tables: &[Table],
    out: &mut W,
) -> fmt::Result
where
    W: fmt::Write,
    I: Iterator<Item = &'a ServiceText> + Clone,
{
    let services = Services(services);
    let (filter, nat) = fixed_tables(ctx);
    let extra = |table: Table| extras.chains.iter().filter(move |(t, _, _)| *t == table);
    for table in [&nat, &filter]
        .into_iter()
        .filter(|t| tables.contains(&t.table))
    {
        let t = table.table;
        restore::open_table(out, t)?;
        write_declarations(table, &services, out)?;
        for (_, name, _) in extra(t) {
            restore::declare(out, name.as_str())?;
        }
        if t == Table::Nat {
            for name in extras.flushed.iter().chain(extras.deleted) {
                restore::declare(out, name.as_str())?;
            }
        }
        write_rules(ctx, table, &services, out)?;
        if t == Table::Nat {
            services.own(out)?;
        }
        for (_, _, rules) in extra(t) {
            out.write_str(rules)?;
        }
        if t == Table::Nat {
            for name in extras.deleted {
                restore::delete(out, name.as_str())?;
            }
        }
        restore::commit(out)?;
    }
    Ok(())
}

/// Everything before the services' own `-A …` lines, as `render` writes a
/// compiled ruleset: the filter table, then the nat table's declarations and its
/// top-level chains' rules.
pub(super) fn write_head<S: ServiceLines, W: fmt::Write>(
    ctx: &Context,
    services: &S,
    out: &mut W,
) -> fmt::Result {
    let (filter, nat) = fixed_tables(ctx);
    for table in [filter, nat] {
        restore::open_table(out, table.table)?;
        write_declarations(&table, services, out)?;
        write_rules(ctx, &table, services, out)?;
        if table.table == Table::Filter {
            restore::commit(out)?;
        }
    }
    Ok(())
}

/// A table's fixed chains' declarations, and in nat the services' own chains'.
fn write_declarations<S: ServiceLines, W: fmt::Write>(
    table: &TableRules,
    services: &S,
    out: &mut W,
) -> fmt::Result {
    for chain in table.chains.values() {
        restore::declaration(out, chain)?;
    }
    if table.table == Table::Nat {
        services.decls(out)?;
    }
    Ok(())
}

/// A table's fixed chains' rules, the services' parts of the shared chains in
/// their places.
fn write_rules<S: ServiceLines, W: fmt::Write>(
    ctx: &Context,
    table: &TableRules,
    services: &S,
    out: &mut W,
) -> fmt::Result {
    for chain in table.chains.values() {
        match shared_chain(table.table, &chain.name) {
            Some(which) => {
                services.shared(which, out)?;
                for rule in shared_tail(ctx, which) {
                    restore::rule(out, chain.name.as_str(), &rule)?;
                }
            }
            None => restore::rules(out, chain)?,
        }
    }
    Ok(())
}

/// Everything after the services' own `-A …` lines: the nat table's end.
pub(super) fn write_tail<W: fmt::Write>(out: &mut W) -> fmt::Result {
    restore::commit(out)
}

/// The `-A` lines of one shared chain: each service's part of it (its
/// [`ServiceText::shared_text`]), in service order, then the chain's fixed tail
/// (the node-port jumps of nat `KUBE-SERVICES`).
pub(crate) fn shared_chain_text<'a>(
    ctx: &Context,
    which: SharedChain,
    parts: impl Iterator<Item = &'a str>,
) -> String {
    let chain = which.chain();
    let mut out = String::new();
    // Writing into a String cannot fail.
    for part in parts {
        out.push_str(part);
    }
    for rule in shared_tail(ctx, which) {
        let _ = restore::rule(&mut out, chain.as_str(), &rule);
    }
    out
}

/// Which shared chain `name` is in `table`, if any.
pub(crate) fn shared_chain(table: Table, name: &ChainName) -> Option<SharedChain> {
    SharedChain::ALL
        .into_iter()
        .find(|w| w.table() == table && w.chain() == *name)
}
