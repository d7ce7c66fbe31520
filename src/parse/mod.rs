//! `iptables-save` / `iptables-restore` text -> the typed [`Ruleset`], and back to
//! a canonical form for comparison.
//!
//! Pure: text in, values out. Three entry points:
//!
//! * [`parse`] / [`parse_as`]: a dump (or a restore payload) -> the [`Ruleset`] it
//!   describes, as the compiler would produce it for svcnat's own text
//!   (`parse(render(r)) == r`). [`parse_bytes`] / [`parse_bytes_as`] read a
//!   dump that is not all UTF-8 (a comment holds the bytes it was given),
//!   replacing each invalid sequence by U+FFFD.
//! * [`parse_restore`]: the same text as the sequence of restore operations it
//!   holds (`:CHAIN`, `-A`, `-I`, `-D`, `-N`, `-X`, `-F`, `-P`), for callers that
//!   need to see what a payload *does* (a `-X` of a stale chain, say);
//!   [`Restore::to_ruleset`] applies them to empty tables.
//! * [`canonicalize`]: a semantic normal form, so that a dump read back from the
//!   kernel with `iptables-save` compares equal to the ruleset that was loaded.
//!
//! What is understood: tables, chain lines with policies and counters, rules with
//! an optional `[p:b]` counter prefix, `!` negations, words split as
//! `iptables-restore` splits them (`"…"` groups, `\x` inside it is a literal `x`, a
//! single quote is an ordinary character, a quoted word is a value, not an option
//! or `!`), the core options (`-s -d -p -i -o -f`, and `-4`/`-6`: a rule of the
//! other family is skipped as `iptables-restore` skips it), the modules `tcp udp
//! sctp comment mark conntrack state addrtype statistic recent nfacct multiport set
//! physdev`, and the targets `-j CHAIN`, `-g CHAIN`, `ACCEPT DROP RETURN REJECT
//! DNAT SNAT MASQUERADE MARK`. A comment svcnat's
//! [`Comment`](crate::ruleset::Comment) cannot hold (quotes, backslashes, a leading
//! `-`) is kept verbatim as
//! [`Match::OtherComment`](crate::ruleset::Match::OtherComment). Any other module
//! or target, and options of a known one that svcnat does not model, are kept
//! verbatim as [`Match::Other`](crate::ruleset::Match::Other) / [`Target::Other`]
//! and print back unchanged, so real dumps load. Counters are read and dropped.
//!
//! ```
//! let text = "*nat\n\
//!     :PREROUTING ACCEPT [0:0]\n\
//!     :KUBE-SERVICES - [0:0]\n\
//!     -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
//!     -A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -m limit --limit 5/min -j ACCEPT\n\
//!     COMMIT\n";
//! let ruleset = svcnat::parse::parse(text)?;
//! let chain = ruleset.chain(svcnat::ruleset::Table::Nat, "KUBE-SERVICES").unwrap();
//! assert_eq!(
//!     chain.rules[0].to_string(),
//!     "-d 10.96.0.1/32 -p tcp -m tcp --dport 443 -m limit --limit 5/min -j ACCEPT"
//! );
//! # Ok::<(), svcnat::parse::ParseError>(())
//! ```

mod canon;
mod declared;
mod rule;

pub mod nft;

pub use declared::declared_chains;

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub(crate) use canon::canonicalize_in_place;
pub(crate) use canon::module_order;
pub use canon::{canonical_rule, canonicalize};

use crate::model::IpFamily;
use crate::ruleset::lex::{Token, tokenize};
use crate::ruleset::restore::{self, RuleLine};
use crate::ruleset::{
    ChainName, IrError, Policy, RawText, Rule, Ruleset, Table, TableRules, Target,
};
use rule::{Fail, FamilyCheck, parse_rule};

/// A line that could not be read, with where and why. It displays on one
/// line: `line 3, column 33: … , in "-A …"`, the offending line quoted and
/// escaped as Rust escapes a string, so no character in it can break the
/// message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}, column {column}: {kind}, in {text:?}")]
#[non_exhaustive]
pub struct ParseError {
    /// The 1-based line number.
    pub line: usize,
    /// The 1-based column (in characters) of the offending word.
    pub column: usize,
    /// The offending line.
    pub text: String,
    /// What is wrong.
    pub kind: ErrorKind,
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A quote that is not closed on its line.
    #[error("unterminated quote")]
    UnterminatedQuote,
    /// A line that is none of `*table`, `:CHAIN`, a command, `COMMIT` or a comment.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// A chain or rule line before any `*table` line.
    #[error("not inside a table (missing *filter, *nat, …)")]
    OutsideTable,
    /// A `*table` line naming no known table.
    #[error("unknown table {0:?}")]
    UnknownTable(String),
    /// A `*table` line before the previous table's `COMMIT`.
    #[error("table {0} is not committed")]
    NotCommitted(Table),
    /// The text ends before a table's `COMMIT`.
    #[error("table {0} is not committed before the end of the text")]
    MissingCommit(Table),
    /// An option without its value.
    #[error("{option} needs a value")]
    MissingArgument {
        /// The option.
        option: String,
    },
    /// An option whose value cannot be read.
    #[error("{option} {value:?}: {reason}")]
    BadValue {
        /// The option.
        option: String,
        /// The value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A word where an option was expected.
    #[error("unexpected {0:?}")]
    UnexpectedToken(String),
    /// An option that belongs to no core option or loaded module.
    #[error("unknown option {0:?}")]
    UnknownOption(String),
    /// `! !`.
    #[error("double negation")]
    DoubleNegation,
    /// An address of the other family.
    #[error("{found} address in an {expected} ruleset")]
    FamilyMismatch {
        /// The ruleset's family.
        expected: IpFamily,
        /// The address's family.
        found: IpFamily,
    },
    /// A rule for a user chain that was never declared.
    #[error("chain {0} is not declared")]
    UndeclaredChain(String),
    /// `-N` of a chain that exists.
    #[error("chain {0} already exists")]
    ChainExists(String),
    /// `-D` of a rule that is not in the chain, or a position past its end.
    #[error("chain {0} has no such rule")]
    NoSuchRule(String),
    /// A value the typed IR refuses (chain name too long, bad interface name, …).
    #[error(transparent)]
    Invalid(IrError),
}

/// Restore text read as what it does: each table's operations, in order (not
/// yet applied; [`Restore::to_ruleset`] applies them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    /// The family, from the addresses in the text (or as given to [`parse_restore_as`]).
    pub family: IpFamily,
    /// The tables, in the order they appear (a table appearing twice is merged).
    pub tables: Vec<RestoreTable>,
}

/// One table's operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreTable {
    /// The table.
    pub table: Table,
    /// The operations, in order.
    pub ops: Vec<Operation>,
}

/// One restore line, with its line number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// The 1-based line it came from.
    pub line: usize,
    /// What it does.
    pub op: Op,
}

/// What a restore line does to its table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Op {
    /// `:CHAIN POLICY [p:b]`: create the chain, or flush it if it exists; `policy`
    /// is `None` for `-` (a user chain).
    Declare {
        /// The chain.
        chain: ChainName,
        /// Its policy.
        policy: Option<Policy>,
    },
    /// `-A CHAIN RULE`.
    Append {
        /// The chain.
        chain: ChainName,
        /// The rule.
        rule: Rule,
    },
    /// `-I CHAIN [N] RULE` (1-based position, 1 when omitted).
    Insert {
        /// The chain.
        chain: ChainName,
        /// Where.
        position: usize,
        /// The rule.
        rule: Rule,
    },
    /// `-D CHAIN RULE`: delete the first equal rule.
    Delete {
        /// The chain.
        chain: ChainName,
        /// The rule.
        rule: Rule,
    },
    /// `-D CHAIN N`.
    DeleteAt {
        /// The chain.
        chain: ChainName,
        /// The 1-based position.
        position: usize,
    },
    /// `-N CHAIN`.
    NewChain(ChainName),
    /// `-X [CHAIN]`: delete one user chain, or all of them.
    DeleteChain(Option<ChainName>),
    /// `-F [CHAIN]`: flush one chain, or all of them.
    Flush(Option<ChainName>),
    /// `-P CHAIN POLICY`.
    SetPolicy {
        /// The built-in chain.
        chain: ChainName,
        /// The policy.
        policy: Policy,
    },
}

/// The built-in chains of a table, in the order `iptables-save` lists them: the
/// same as [`Table::builtin_chains`], which owns the list.
pub fn builtin_chains(table: Table) -> &'static [&'static str] {
    table.builtin_chains()
}

/// Parses a dump or restore payload into the ruleset it describes (operations
/// applied to empty tables, see [`Restore::to_ruleset`]). The family is that of the
/// addresses in the text, else that of the first `-4`/`-6` rule (IPv4 when it has
/// neither); rules flagged for the other family are skipped.
///
/// # Errors
/// A [`ParseError`] naming the line, column and problem.
pub fn parse(text: &str) -> Result<Ruleset, ParseError> {
    parse_restore(text)?.to_ruleset()
}

/// Like [`parse`] for a known family; an address of the other family is an error.
///
/// # Errors
/// A [`ParseError`] naming the line, column and problem.
pub fn parse_as(text: &str, family: IpFamily) -> Result<Ruleset, ParseError> {
    parse_restore_as(text, family)?.to_ruleset()
}

/// Like [`parse`], for a dump read as bytes: what `iptables-save` prints is not
/// always UTF-8, since `iptables -m comment --comment` stores the bytes it is
/// given. Each invalid UTF-8 sequence is replaced by U+FFFD (`�`), as
/// [`String::from_utf8_lossy`] does, and the text parsed as [`parse`] parses it.
/// Only invalid sequences change, never a newline, quote or other ASCII byte,
/// so the lines and words are the dump's; a comment holding U+FFFD is not a
/// [`Comment`](crate::ruleset::Comment) (printable ASCII only) and is kept
/// verbatim as [`Match::OtherComment`](crate::ruleset::Match::OtherComment),
/// whose text is checked to hold no line break, control character or unclosed
/// quote, so rendering it again cannot add a rule. Rendered again, the comment
/// holds U+FFFD, not the original bytes.
///
/// # Errors
/// A [`ParseError`] naming the line, column and problem.
pub fn parse_bytes(bytes: &[u8]) -> Result<Ruleset, ParseError> {
    parse(&String::from_utf8_lossy(bytes))
}

/// Like [`parse_as`], for a dump read as bytes (see [`parse_bytes`]).
///
/// # Errors
/// A [`ParseError`] naming the line, column and problem.
pub fn parse_bytes_as(bytes: &[u8], family: IpFamily) -> Result<Ruleset, ParseError> {
    parse_as(&String::from_utf8_lossy(bytes), family)
}

/// Parses restore text into its operations, the family inferred from the addresses.
///
/// # Errors
/// A [`ParseError`] naming the line, column and problem.
pub fn parse_restore(text: &str) -> Result<Restore, ParseError> {
    parse_with(text, FamilyCheck { family: None })
}

/// Parses restore text into its operations, for a known family.
///
/// # Errors
/// A [`ParseError`] naming the line, column and problem.
pub fn parse_restore_as(text: &str, family: IpFamily) -> Result<Restore, ParseError> {
    parse_with(
        text,
        FamilyCheck {
            family: Some(family),
        },
    )
}

fn error_at(line_no: usize, line: &str, offset: usize, kind: ErrorKind) -> ParseError {
    ParseError {
        line: line_no,
        column: line[..offset.min(line.len())].chars().count() + 1,
        text: line.to_owned(),
        kind,
    }
}

fn parse_with(text: &str, mut family: FamilyCheck) -> Result<Restore, ParseError> {
    let mut tables: Vec<RestoreTable> = Vec::new();
    // The table being read (index into `tables`) and the line of its header.
    let mut current: Option<(usize, usize, String)> = None;
    let mut last_line = (0, String::new());
    // Per table, per operation: the family a `-4`/`-6` rule was written for, when
    // the ruleset's family was not known yet; decided at the end.
    let mut tags: Vec<Vec<Option<IpFamily>>> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        last_line = (line_no, line.to_owned());
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let fail = |offset: usize, kind| error_at(line_no, line, offset, kind);
        if let Some(name) = trimmed.strip_prefix('*') {
            if let Some((idx, _, _)) = &current {
                return Err(fail(0, ErrorKind::NotCommitted(tables[*idx].table)));
            }
            let name = name.trim();
            let Ok(table) = name.parse::<Table>() else {
                return Err(fail(1, ErrorKind::UnknownTable(name.to_owned())));
            };
            let idx = match tables.iter().position(|t| t.table == table) {
                Some(i) => i,
                None => {
                    tables.push(RestoreTable {
                        table,
                        ops: Vec::new(),
                    });
                    tags.push(Vec::new());
                    tables.len() - 1
                }
            };
            current = Some((idx, line_no, line.to_owned()));
            continue;
        }
        if trimmed.trim_end() == "COMMIT" {
            let Some((idx, _, _)) = current.take() else {
                return Err(fail(0, ErrorKind::OutsideTable));
            };
            resolve_jumps(&mut tables[idx]);
            continue;
        }
        let Some((idx, _, _)) = &current else {
            return Err(fail(0, ErrorKind::OutsideTable));
        };
        let idx = *idx;
        let toks = tokenize(line).map_err(|at| fail(at, ErrorKind::UnterminatedQuote))?;
        let parsed = parse_line(line, &toks, &mut family).map_err(|f| fail(f.at, f.kind))?;
        if let Some(FamilyTagged {
            value: op,
            family: tag,
        }) = parsed
        {
            tables[idx].ops.push(Operation { line: line_no, op });
            tags[idx].push(tag);
        }
    }
    if let Some((idx, _, _)) = current {
        let (n, line) = last_line;
        return Err(error_at(
            n,
            &line,
            line.len(),
            ErrorKind::MissingCommit(tables[idx].table),
        ));
    }
    // No address outside `-4`/`-6` rules decided the family: the first such
    // rule does (a dump of `-6` rules only is IPv6), else IPv4.
    let first_tag = tags.iter().flatten().flatten().next().copied();
    let family = family.family.or(first_tag).unwrap_or_default();
    for (t, tags) in tables.iter_mut().zip(tags) {
        let mut tags = tags.into_iter();
        t.ops
            .retain(|_| tags.next().flatten().is_none_or(|f| f == family));
    }
    Ok(Restore { family, tables })
}

fn chain_name(tok: &Token) -> Result<ChainName, Fail> {
    ChainName::new(tok.text.clone()).map_err(|e| Fail::new(tok.start, ErrorKind::Invalid(e)))
}

/// The family a rule is restricted to by `-4`/`--ipv4` or `-6`/`--ipv6`.
fn rule_family(toks: &[Token]) -> Option<IpFamily> {
    toks.iter().enumerate().find_map(|(i, t)| {
        let after_comment = i > 0 && !toks[i - 1].quoted && toks[i - 1].text == "--comment";
        if t.quoted || after_comment {
            return None;
        }
        match t.text.as_str() {
            "-4" | "--ipv4" => Some(IpFamily::Ipv4),
            "-6" | "--ipv6" => Some(IpFamily::Ipv6),
            _ => None,
        }
    })
}

/// A line's rule or operation, with the family of its rule's `-4`/`-6` flag when
/// the ruleset's family is not known yet (decided once the whole text is read).
struct FamilyTagged<T> {
    /// The rule or operation.
    value: T,
    /// The family its `-4`/`-6` flag restricts it to, while still undecided.
    family: Option<IpFamily>,
}

impl<T> FamilyTagged<T> {
    /// A value no family flag restricts (or whose family is already checked).
    fn any(value: T) -> Self {
        FamilyTagged {
            value,
            family: None,
        }
    }

    fn map<U>(self, f: impl FnOnce(T) -> U) -> FamilyTagged<U> {
        FamilyTagged {
            value: f(self.value),
            family: self.family,
        }
    }
}

/// A rule's words as a [`Rule`], tagged with the family of its `-4`/`-6` flag
/// when the ruleset's family is not known yet; `None` for a rule of the other
/// family, which `iptables-restore` skips (`-6` in IPv4 input, `-4` in IPv6 input).
fn family_rule(
    line: &str,
    toks: &[Token],
    before: Option<IpFamily>,
    family: &mut FamilyCheck,
) -> Result<Option<FamilyTagged<Rule>>, Fail> {
    match (before.or_else(|| rule_family(toks)), family.family) {
        (None, _) => Ok(Some(FamilyTagged::any(parse_rule(line, toks, family)?))),
        (Some(f), Some(known)) if f != known => Ok(None),
        (Some(_), Some(_)) => Ok(Some(FamilyTagged::any(parse_rule(line, toks, family)?))),
        (Some(f), None) => {
            let mut own = FamilyCheck { family: Some(f) };
            Ok(Some(FamilyTagged {
                value: parse_rule(line, toks, &mut own)?,
                family: Some(f),
            }))
        }
    }
}

/// One line as an operation, tagged with the family its rule is restricted to
/// (see [`family_rule`]); `None` for a rule skipped as of the other family.
fn parse_line(
    line: &str,
    toks: &[Token],
    family: &mut FamilyCheck,
) -> Result<Option<FamilyTagged<Op>>, Fail> {
    let (toks, before) = strip_prefixes(toks);
    let Some(first) = toks.first() else {
        return Err(Fail::new(0, ErrorKind::UnknownCommand(String::new())));
    };
    if let Some(name) = first.text.strip_prefix(':') {
        return Ok(Some(FamilyTagged::any(declare(first, name, toks)?)));
    }
    let cmd = Command { line, toks, before };
    let op = match first.text.as_str() {
        "-A" | "--append" => return append(&cmd, family),
        "-I" | "--insert" => return insert(&cmd, family),
        "-D" | "--delete" => return delete(&cmd, family),
        "-N" | "--new-chain" => new_chain(&cmd)?,
        "-X" | "--delete-chain" => Op::DeleteChain(cmd.optional_chain()?),
        "-F" | "--flush" => Op::Flush(cmd.optional_chain()?),
        "-P" | "--policy" => set_policy(&cmd)?,
        _ => {
            return Err(Fail::new(
                first.start,
                ErrorKind::UnknownCommand(first.text.clone()),
            ));
        }
    };
    Ok(Some(FamilyTagged::any(op)))
}

/// The words of a line without what may come before its command: the rule's
/// counters (`[12:345] -A CHAIN …`) and `-4`/`-6` flags (`-6 -A INPUT …`), with
/// the family of the last such flag.
fn strip_prefixes(toks: &[Token]) -> (&[Token], Option<IpFamily>) {
    let mut toks = toks;
    if let Some(first) = toks.first()
        && first.text.starts_with('[')
        && first.text.ends_with(']')
    {
        toks = &toks[1..];
    }
    let mut before = None;
    while let Some(f) = toks
        .first()
        .and_then(|t| rule_family(std::slice::from_ref(t)))
    {
        before = Some(f);
        toks = &toks[1..];
    }
    (toks, before)
}

/// `:CHAIN POLICY [p:b]`, whose first word is `first` and chain `name`.
fn declare(first: &Token, name: &str, toks: &[Token]) -> Result<Op, Fail> {
    let name_tok = Token {
        text: name.to_owned(),
        start: first.start + 1,
        end: first.end,
        quoted: first.quoted,
    };
    let chain = chain_name(&name_tok)?;
    let policy = match toks.get(1).map(|t| t.text.as_str()) {
        None | Some("-") => None,
        Some("ACCEPT") => Some(Policy::Accept),
        Some("DROP") => Some(Policy::Drop),
        Some(other) => {
            return Err(Fail::new(
                toks[1].start,
                ErrorKind::BadValue {
                    option: "policy".into(),
                    value: other.to_owned(),
                    reason: "not ACCEPT, DROP or -".into(),
                },
            ));
        }
    };
    if let Some(extra) = toks.get(3) {
        return Err(Fail::new(
            extra.start,
            ErrorKind::UnexpectedToken(extra.text.clone()),
        ));
    }
    Ok(Op::Declare { chain, policy })
}

/// A command line (`-A`, `-I`, `-D`, `-N`, `-X`, `-F`, `-P`), after its prefixes.
struct Command<'t> {
    /// The whole line, for verbatim rule text.
    line: &'t str,
    /// The words from the command on; never empty.
    toks: &'t [Token],
    /// The family of a `-4`/`-6` flag before the command.
    before: Option<IpFamily>,
}

impl Command<'_> {
    /// The command word.
    fn word(&self) -> &Token {
        &self.toks[0]
    }

    /// The chain the command names; an error if it names none.
    fn chain(&self) -> Result<ChainName, Fail> {
        match self.toks.get(1) {
            Some(t) => chain_name(t),
            None => Err(Fail::new(
                self.word().start,
                ErrorKind::MissingArgument {
                    option: self.word().text.clone(),
                },
            )),
        }
    }

    /// The chain of `-X`/`-F`, which may name none (then all chains); nothing
    /// may follow it.
    fn optional_chain(&self) -> Result<Option<ChainName>, Fail> {
        match self.toks.get(1) {
            Some(t) => {
                self.nothing_after(1)?;
                chain_name(t).map(Some)
            }
            None => Ok(None),
        }
    }

    /// An error at the word after index `i`, if there is one.
    fn nothing_after(&self, i: usize) -> Result<(), Fail> {
        match self.toks.get(i + 1) {
            Some(extra) => Err(Fail::new(
                extra.start,
                ErrorKind::UnexpectedToken(extra.text.clone()),
            )),
            None => Ok(()),
        }
    }

    /// True if the word at `i` is all digits (a rule position).
    fn is_number(&self, i: usize) -> bool {
        self.toks
            .get(i)
            .is_some_and(|t| t.text.bytes().all(|b| b.is_ascii_digit()))
    }

    /// The 1-based rule position at `tok`.
    fn position(&self, tok: &Token) -> Result<usize, Fail> {
        tok.text
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                Fail::new(
                    tok.start,
                    ErrorKind::BadValue {
                        option: self.word().text.clone(),
                        value: tok.text.clone(),
                        reason: "not a rule position (1, 2, …)".into(),
                    },
                )
            })
    }

    /// The rule in `rest`, as [`family_rule`] reads it.
    fn rule(
        &self,
        rest: &[Token],
        family: &mut FamilyCheck,
    ) -> Result<Option<FamilyTagged<Rule>>, Fail> {
        family_rule(self.line, rest, self.before, family)
    }
}

/// `-A CHAIN RULE`.
fn append(cmd: &Command<'_>, family: &mut FamilyCheck) -> Result<Option<FamilyTagged<Op>>, Fail> {
    let chain = cmd.chain()?;
    let rule = cmd.rule(&cmd.toks[2..], family)?;
    Ok(rule.map(|r| r.map(|rule| Op::Append { chain, rule })))
}

/// `-I CHAIN [N] RULE`.
fn insert(cmd: &Command<'_>, family: &mut FamilyCheck) -> Result<Option<FamilyTagged<Op>>, Fail> {
    let chain = cmd.chain()?;
    let (position, rest) = if cmd.is_number(2) {
        (cmd.position(&cmd.toks[2])?, &cmd.toks[3..])
    } else {
        (1, cmd.toks.get(2..).unwrap_or(&[]))
    };
    let rule = cmd.rule(rest, family)?;
    Ok(rule.map(|r| {
        r.map(|rule| Op::Insert {
            chain,
            position,
            rule,
        })
    }))
}

/// `-D CHAIN N` or `-D CHAIN RULE`.
fn delete(cmd: &Command<'_>, family: &mut FamilyCheck) -> Result<Option<FamilyTagged<Op>>, Fail> {
    let chain = cmd.chain()?;
    if cmd.is_number(2) && cmd.toks.len() == 3 {
        let position = cmd.position(&cmd.toks[2])?;
        return Ok(Some(FamilyTagged::any(Op::DeleteAt { chain, position })));
    }
    let rest = cmd.toks.get(2..).unwrap_or(&[]);
    let rule = cmd.rule(rest, family)?;
    Ok(rule.map(|r| r.map(|rule| Op::Delete { chain, rule })))
}

/// `-N CHAIN`.
fn new_chain(cmd: &Command<'_>) -> Result<Op, Fail> {
    cmd.nothing_after(1)?;
    Ok(Op::NewChain(cmd.chain()?))
}

/// `-P CHAIN ACCEPT|DROP`.
fn set_policy(cmd: &Command<'_>) -> Result<Op, Fail> {
    let chain = cmd.chain()?;
    let policy = match cmd.toks.get(2).map(|t| t.text.as_str()) {
        Some("ACCEPT") => Policy::Accept,
        Some("DROP") => Policy::Drop,
        _ => {
            let at = cmd.toks.get(2).unwrap_or(cmd.word());
            return Err(Fail::new(
                at.start,
                ErrorKind::BadValue {
                    option: "-P".into(),
                    value: at.text.clone(),
                    reason: "not ACCEPT or DROP".into(),
                },
            ));
        }
    };
    Ok(Op::SetPolicy { chain, policy })
}

/// `-j NAME` to a chain the table never declares is a target svcnat does not
/// model (`-j LOG`, `-j NOTRACK`): it becomes [`Target::Other`], which prints the
/// same.
fn resolve_jumps(table: &mut RestoreTable) {
    let builtin = table.table.builtin_chains();
    // A set: a large cluster's dump has a hundred thousand chains and as many jumps.
    let declared: std::collections::HashSet<ChainName> = table
        .ops
        .iter()
        .filter_map(|o| match &o.op {
            Op::Declare { chain, .. } | Op::NewChain(chain) => Some(chain.clone()),
            _ => None,
        })
        .collect();
    for o in &mut table.ops {
        let rule = match &mut o.op {
            Op::Append { rule, .. } | Op::Insert { rule, .. } | Op::Delete { rule, .. } => rule,
            _ => continue,
        };
        if let Some(Target::Jump(to)) = &rule.target
            && !declared.contains(to)
            && !builtin.contains(&to.as_str())
            && let Ok(raw) = RawText::new(format!("{}{to}", crate::ruleset::flag::JUMP))
        {
            rule.target = Some(Target::Other(raw));
        }
    }
}

impl Restore {
    /// The ruleset left by applying the operations to empty tables, in order:
    /// `:CHAIN` creates (or flushes) a chain, `-A`/`-I`/`-D` edit it, `-N`
    /// creates, `-X` deletes, `-F` flushes, `-P` sets a policy. A built-in chain
    /// used without a `:CHAIN` line is created with no policy.
    ///
    /// # Errors
    /// A [`ParseError`] at the operation that cannot apply: a rule for an
    /// undeclared user chain, a `-D` of a missing rule, an insert past the end,
    /// `-N` of an existing chain, `-X` of a missing one.
    pub fn to_ruleset(&self) -> Result<Ruleset, ParseError> {
        let mut tables = Vec::new();
        for t in &self.tables {
            let mut rules = TableRules::new(t.table);
            for o in &t.ops {
                apply(&mut rules, &o.op).map_err(|kind| ParseError {
                    line: o.line,
                    column: 1,
                    text: render_op(&o.op),
                    kind,
                })?;
            }
            tables.push(rules);
        }
        Ok(Ruleset {
            family: self.family,
            tables,
        })
    }
}

/// An operation as its restore line (without the newline), for messages: the
/// lines the restore writer also writes are written by it.
fn render_op(op: &Op) -> String {
    let mut line = String::new();
    // Writing into a String cannot fail.
    let _ = match op {
        Op::Declare { chain, policy } => match policy {
            Some(p) => restore::declare_with_policy(&mut line, chain.as_str(), &p.to_string()),
            None => restore::declare(&mut line, chain.as_str()),
        },
        Op::Append { chain, rule } => restore::rule(&mut line, chain.as_str(), rule),
        Op::Insert {
            chain,
            position,
            rule,
        } => RuleLine::insert(
            &mut line,
            chain.as_str(),
            u32::try_from(*position).unwrap_or(u32::MAX),
        )
        .and_then(|mut l| {
            l.rule(rule)?;
            l.end()
        }),
        Op::DeleteChain(Some(c)) => restore::delete(&mut line, c.as_str()),
        Op::Delete { chain, rule } => {
            line = format!("-D {chain} {rule}");
            Ok(())
        }
        Op::DeleteAt { chain, position } => {
            line = format!("-D {chain} {position}");
            Ok(())
        }
        Op::NewChain(c) => {
            line = format!("-N {c}");
            Ok(())
        }
        Op::DeleteChain(None) => {
            line = "-X".into();
            Ok(())
        }
        Op::Flush(c) => {
            line = c.as_ref().map_or("-F".into(), |c| format!("-F {c}"));
            Ok(())
        }
        Op::SetPolicy { chain, policy } => {
            line = format!("-P {chain} {policy}");
            Ok(())
        }
    };
    line.truncate(line.trim_end_matches('\n').len());
    line
}

fn existing<'t>(
    rules: &'t mut TableRules,
    chain: &ChainName,
) -> Result<&'t mut crate::ruleset::Chain, ErrorKind> {
    if !rules.chains.contains_key(chain) {
        if rules.table.builtin_chains().contains(&chain.as_str()) {
            rules.chain_mut(chain);
        } else {
            return Err(ErrorKind::UndeclaredChain(chain.to_string()));
        }
    }
    Ok(rules.chain_mut(chain))
}

fn apply(rules: &mut TableRules, op: &Op) -> Result<(), ErrorKind> {
    match op {
        Op::Declare { chain, policy } => {
            let c = rules.chain_mut(chain);
            c.rules.clear();
            c.policy = *policy;
        }
        Op::Append { chain, rule } => existing(rules, chain)?.rules.push(rule.clone()),
        Op::Insert {
            chain,
            position,
            rule,
        } => {
            let c = existing(rules, chain)?;
            if *position > c.rules.len() + 1 {
                return Err(ErrorKind::NoSuchRule(chain.to_string()));
            }
            c.rules.insert(position - 1, rule.clone());
        }
        Op::Delete { chain, rule } => {
            let c = existing(rules, chain)?;
            let at = c
                .rules
                .iter()
                .position(|r| r == rule)
                .ok_or_else(|| ErrorKind::NoSuchRule(chain.to_string()))?;
            c.rules.remove(at);
        }
        Op::DeleteAt { chain, position } => {
            let c = existing(rules, chain)?;
            if *position > c.rules.len() {
                return Err(ErrorKind::NoSuchRule(chain.to_string()));
            }
            c.rules.remove(position - 1);
        }
        Op::NewChain(chain) => {
            if rules.chains.contains_key(chain) {
                return Err(ErrorKind::ChainExists(chain.to_string()));
            }
            rules.chain_mut(chain);
        }
        Op::DeleteChain(Some(chain)) => {
            if rules.chains.shift_remove(chain).is_none() {
                return Err(ErrorKind::UndeclaredChain(chain.to_string()));
            }
        }
        Op::DeleteChain(None) => {
            let builtin = rules.table.builtin_chains();
            rules
                .chains
                .retain(|name, _| builtin.contains(&name.as_str()));
        }
        Op::Flush(Some(chain)) => existing(rules, chain)?.rules.clear(),
        Op::Flush(None) => rules.chains.values_mut().for_each(|c| c.rules.clear()),
        Op::SetPolicy { chain, policy } => existing(rules, chain)?.policy = Some(*policy),
    }
    Ok(())
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render_op(self))
    }
}
