//! Ruleset -> `iptables-restore` text.
//!
//! Each table is written as `*table`, one `:CHAIN - [0:0]` line per chain, the
//! chains' rules grouped by chain in declaration order, then `COMMIT`. Equal
//! rulesets give identical bytes. Quoting happens in exactly one place, the
//! [`Comment`](crate::ruleset::Comment) printer, and the restore format itself in
//! one other, the IR's restore writer, which every writer of restore text uses.
//!
//! ```
//! use svcnat::ruleset::{Chain, ChainName, Rule, Ruleset, Table, TableRules, Target};
//! use svcnat::model::IpFamily;
//! let mut nat = TableRules::new(Table::Nat);
//! let chain = ChainName::new("MY-CHAIN").unwrap();
//! nat.append(&chain, Rule::new().to(Target::Return));
//! let ruleset = Ruleset { family: IpFamily::Ipv4, tables: vec![nat] };
//! assert_eq!(
//!     svcnat::render::to_string(&ruleset),
//!     "*nat\n:MY-CHAIN - [0:0]\n-A MY-CHAIN -j RETURN\nCOMMIT\n"
//! );
//! ```

use std::fmt;
use std::io;

use crate::ruleset::restore;
use crate::ruleset::{Chain, ChainName, Rule, Ruleset, TableRules};

/// Writes `ruleset` as `iptables-restore` text into a `fmt::Write`.
///
/// # Errors
/// Only those of the writer.
pub fn write_fmt<W: fmt::Write>(ruleset: &Ruleset, out: &mut W) -> fmt::Result {
    restore::ruleset(out, ruleset)
}

/// Writes `ruleset` as `iptables-restore` text into an `io::Write`, streaming.
///
/// # Errors
/// Those of the writer.
pub fn write_io<W: io::Write>(ruleset: &Ruleset, out: W) -> io::Result<()> {
    let mut adapter = IoAdapter::new(out);
    let result = write_fmt(ruleset, &mut adapter);
    adapter.finish(result)
}

/// The `iptables-restore` text of `ruleset`.
pub fn to_string(ruleset: &Ruleset) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = write_fmt(ruleset, &mut s);
    s
}

/// Writes one table: header, chain lines, rules, `COMMIT`.
///
/// # Errors
/// Only those of the writer.
pub fn write_table<W: fmt::Write>(table: &TableRules, out: &mut W) -> fmt::Result {
    restore::table(out, table)
}

/// Writes `:NAME - [0:0]`, the line that declares (and, under `--noflush`, flushes) a
/// user chain.
///
/// # Errors
/// Only those of the writer.
pub fn write_chain_line<W: fmt::Write>(name: &ChainName, out: &mut W) -> fmt::Result {
    restore::declare(out, name.as_str())
}

/// Writes a chain's rules as `-A NAME …` lines.
///
/// # Errors
/// Only those of the writer.
pub fn write_rules<W: fmt::Write>(chain: &Chain, out: &mut W) -> fmt::Result {
    restore::rules(out, chain)
}

/// Writes one `-A CHAIN …` line.
///
/// # Errors
/// Only those of the writer.
pub fn write_rule<W: fmt::Write>(chain: &ChainName, rule: &Rule, out: &mut W) -> fmt::Result {
    restore::rule(out, chain.as_str(), rule)
}

/// Bridges `fmt::Write` onto `io::Write`, keeping the real IO error.
pub(crate) struct IoAdapter<W> {
    inner: W,
    error: Option<io::Error>,
}

impl<W> IoAdapter<W> {
    pub(crate) fn new(inner: W) -> Self {
        IoAdapter { inner, error: None }
    }

    /// The IO result of a write through the adapter.
    pub(crate) fn finish(self, result: fmt::Result) -> io::Result<()> {
        match result {
            Ok(()) => Ok(()),
            Err(fmt::Error) => Err(self
                .error
                .unwrap_or_else(|| io::Error::other("formatter error"))),
        }
    }
}

impl<W: io::Write> fmt::Write for IoAdapter<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.inner.write_all(s.as_bytes()).map_err(|e| {
            self.error = Some(e);
            fmt::Error
        })
    }
}
