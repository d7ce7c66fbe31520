//! The `iptables-restore` text format, written in one place: a table's framing
//! (`*table`, chain declarations, `-X`, `COMMIT`) and a rule's line (`-A CHAIN`,
//! its matches and target, the end of the line).
//!
//! Everything that writes restore text goes through here: [`render`](crate::render)
//! for a typed [`Ruleset`], the compiler's text path for its rules, the sync's
//! payloads, the executors' insertions and the recorder's saves. The flags a rule
//! line takes are those of [`Match`] and [`Target`]; [`RuleLine`] also takes the
//! pieces of the few lines the compiler writes most (an endpoint's hairpin and
//! DNAT, a dispatch jump) already formatted, with the same flag strings.

use std::fmt;

use super::{Chain, Match, Policy, Rule, Ruleset, Table, TableRules, Target, flag, text};

/// The line that ends a table.
pub(crate) const COMMIT: &str = "COMMIT";

/// `*table`: the line that opens a table.
pub(crate) fn open_table<W: fmt::Write>(out: &mut W, table: Table) -> fmt::Result {
    out.write_str("*")?;
    out.write_str(table.as_str())?;
    out.write_str("\n")
}

/// `:NAME - [0:0]`: the line that declares (and, under `--noflush`, flushes) a user
/// chain.
pub(crate) fn declare<W: fmt::Write>(out: &mut W, name: &str) -> fmt::Result {
    out.write_str(":")?;
    out.write_str(name)?;
    out.write_str(" - [0:0]\n")
}

/// `:NAME POLICY [0:0]`: a built-in chain's line, `policy` being `ACCEPT`, `DROP`
/// or `-` for none.
pub(crate) fn declare_with_policy<W: fmt::Write>(
    out: &mut W,
    name: &str,
    policy: &str,
) -> fmt::Result {
    out.write_str(":")?;
    out.write_str(name)?;
    out.write_str(" ")?;
    out.write_str(policy)?;
    out.write_str(" [0:0]\n")
}

/// A typed chain's declaration: with its policy for a built-in chain.
pub(crate) fn declaration<W: fmt::Write>(out: &mut W, chain: &Chain) -> fmt::Result {
    match chain.policy {
        Some(Policy::Accept) => declare_with_policy(out, chain.name.as_str(), "ACCEPT"),
        Some(Policy::Drop) => declare_with_policy(out, chain.name.as_str(), "DROP"),
        None => declare(out, chain.name.as_str()),
    }
}

/// `-X NAME`: deletes a chain (flushed by its declaration before).
pub(crate) fn delete<W: fmt::Write>(out: &mut W, name: &str) -> fmt::Result {
    out.write_str("-X ")?;
    out.write_str(name)?;
    out.write_str("\n")
}

/// `COMMIT`: ends a table.
pub(crate) fn commit<W: fmt::Write>(out: &mut W) -> fmt::Result {
    out.write_str(COMMIT)?;
    out.write_str("\n")
}

/// One rule line, written piece by piece: begun with [`RuleLine::append`] or
/// [`RuleLine::insert`], ended with [`RuleLine::end`]. Each piece writes its own
/// leading space.
pub(crate) struct RuleLine<'w, W: fmt::Write> {
    out: &'w mut W,
}

impl<'w, W: fmt::Write> RuleLine<'w, W> {
    /// `-A CHAIN`.
    pub fn append(out: &'w mut W, chain: &str) -> Result<Self, fmt::Error> {
        out.write_str("-A ")?;
        out.write_str(chain)?;
        Ok(RuleLine { out })
    }

    /// `-I CHAIN POSITION`.
    pub fn insert(out: &'w mut W, chain: &str, position: u32) -> Result<Self, fmt::Error> {
        out.write_str("-I ")?;
        out.write_str(chain)?;
        out.write_str(" ")?;
        text::dec(out, position)?;
        Ok(RuleLine { out })
    }

    /// `-C CHAIN`: checks that a rule equal to the one that follows exists.
    pub fn check(out: &'w mut W, chain: &str) -> Result<Self, fmt::Error> {
        out.write_str("-C ")?;
        out.write_str(chain)?;
        Ok(RuleLine { out })
    }

    /// `-D CHAIN`: deletes the first rule equal to the one that follows.
    pub fn delete(out: &'w mut W, chain: &str) -> Result<Self, fmt::Error> {
        out.write_str("-D ")?;
        out.write_str(chain)?;
        Ok(RuleLine { out })
    }

    /// A match.
    pub fn matching(&mut self, m: &Match) -> fmt::Result {
        self.out.write_str(" ")?;
        m.write_to(self.out)
    }

    /// A rule's matches and target.
    pub fn rule(&mut self, rule: &Rule) -> fmt::Result {
        for m in &rule.matches {
            self.matching(m)?;
        }
        match &rule.target {
            Some(t) => self.target(t),
            None => Ok(()),
        }
    }

    /// A target.
    pub fn target(&mut self, t: &Target) -> fmt::Result {
        self.out.write_str(" ")?;
        t.write_to(self.out)
    }

    /// `-s ADDRESS`, the address already written as text (as [`Match::Source`]).
    pub fn source_text(&mut self, address: &str) -> fmt::Result {
        self.out.write_str(flag::SPACED_SOURCE)?;
        self.out.write_str(address)
    }

    /// `-s IP` (as [`Match::Source`] with a single address).
    pub fn source_ip(&mut self, ip: std::net::IpAddr) -> fmt::Result {
        self.out.write_str(flag::SPACED_SOURCE)?;
        text::ip(self.out, ip)
    }

    /// The probability `1/n` of a random pick (as [`Match::Statistic`]).
    pub fn one_in(&mut self, n: usize) -> fmt::Result {
        self.out.write_str(flag::SPACED_STATISTIC)?;
        text::one_in(self.out, n)
    }

    /// `-j CHAIN` (as [`Target::Jump`]).
    pub fn jump(&mut self, chain: &str) -> fmt::Result {
        self.out.write_str(flag::SPACED_JUMP)?;
        self.out.write_str(chain)
    }

    /// `-j DNAT --to-destination IP:PORT`, the destination already written as
    /// text (as [`Target::Dnat`]).
    pub fn dnat_text(&mut self, to: &str) -> fmt::Result {
        self.out.write_str(flag::SPACED_DNAT)?;
        self.out.write_str(to)
    }

    /// Arguments already written as text (a rule kept verbatim).
    pub fn raw(&mut self, args: &str) -> fmt::Result {
        if args.is_empty() {
            return Ok(());
        }
        self.out.write_str(" ")?;
        self.out.write_str(args)
    }

    /// Ends the line.
    pub fn end(self) -> fmt::Result {
        self.out.write_str("\n")
    }
}

/// `-A CHAIN …`: one typed rule's line.
pub(crate) fn rule<W: fmt::Write>(out: &mut W, chain: &str, rule: &Rule) -> fmt::Result {
    let mut line = RuleLine::append(out, chain)?;
    line.rule(rule)?;
    line.end()
}

/// A typed chain's rule lines.
pub(crate) fn rules<W: fmt::Write>(out: &mut W, chain: &Chain) -> fmt::Result {
    for r in &chain.rules {
        rule(out, chain.name.as_str(), r)?;
    }
    Ok(())
}

/// A typed table: its opening line, its chains' declarations, their rules, `COMMIT`.
pub(crate) fn table<W: fmt::Write>(out: &mut W, table: &TableRules) -> fmt::Result {
    open_table(out, table.table)?;
    for chain in table.chains.values() {
        declaration(out, chain)?;
    }
    for chain in table.chains.values() {
        rules(out, chain)?;
    }
    commit(out)
}

/// A typed ruleset: its tables in order.
pub(crate) fn ruleset<W: fmt::Write>(out: &mut W, ruleset: &Ruleset) -> fmt::Result {
    for t in &ruleset.tables {
        table(out, t)?;
    }
    Ok(())
}
