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
use crate::ruleset::{ChainName, Table};

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

/// Writes the full restore text (filter, then nat) of `services`, in order, as
/// `render::write_fmt` over `fixed::assemble_owned(ctx, …)` would, with `stale` nat chains
/// flushed and deleted (`-X`) as [`plan`](crate::sync::plan) writes deletions.
pub(crate) fn write_full<'a, W, I>(
    ctx: &Context,
    services: I,
    stale: &[ChainName],
    out: &mut W,
) -> fmt::Result
where
    W: fmt::Write,
    I: Iterator<Item = &'a ServiceText> + Clone,
{
    let services = Services(services);
    write_head(ctx, &services, stale, out)?;
    services.own(out)?;
    write_tail(stale, out)
}

/// Everything before the services' own `-A …` lines: the filter table, then the
/// nat table's declarations and its top-level chains' rules.
pub(super) fn write_head<S: ServiceLines, W: fmt::Write>(
    ctx: &Context,
    services: &S,
    stale: &[ChainName],
    out: &mut W,
) -> fmt::Result {
    let (filter, nat) = fixed_tables(ctx);
    for table in [filter, nat] {
        restore::open_table(out, table.table)?;
        for chain in table.chains.values() {
            restore::declaration(out, chain)?;
        }
        if table.table == Table::Nat {
            services.decls(out)?;
            for name in stale {
                restore::declare(out, name.as_str())?;
            }
        }
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
        if table.table == Table::Filter {
            restore::commit(out)?;
        }
    }
    Ok(())
}

/// Everything after the services' own `-A …` lines: the stale chains' deletions
/// and the nat table's end.
pub(super) fn write_tail<W: fmt::Write>(stale: &[ChainName], out: &mut W) -> fmt::Result {
    for name in stale {
        restore::delete(out, name.as_str())?;
    }
    restore::commit(out)
}

/// The `-A` lines of one shared chain: every service's rules for it, in service
/// order, then the chain's fixed tail (the node-port jumps of nat `KUBE-SERVICES`).
pub(crate) fn shared_chain_text<'a>(
    ctx: &Context,
    which: SharedChain,
    services: impl Iterator<Item = &'a ServiceText>,
) -> String {
    let chain = which.chain();
    let mut out = String::new();
    // Writing into a String cannot fail.
    for svc in services {
        out.push_str(svc.shared_text(which));
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
