//! nftables text -> the typed [`nft::Ruleset`](crate::nft::Ruleset), and a
//! canonical form to compare what the kernel lists with what was written.
//!
//! Pure: text in, values out. Two text forms are read, both into the same
//! values:
//!
//! * the **dump form**: the `add table|chain|set|map|rule|element …` commands
//!   that [`Ruleset::to_dump`](crate::nft::Ruleset::to_dump) writes and
//!   kube-proxy's tests hold (knftables' fake `Dump()`); `parse(to_dump(r)) ==
//!   r` (see [below](#what-the-text-cannot-tell-apart) for the one spelling two
//!   values share). Blank lines and `#` comments are skipped, as kube-proxy's
//!   test texts have them.
//! * the **listing**: what `nft list table ip kube-proxy` prints (nft 1.0.6),
//!   nested in braces: `meta mark & 0x00004000 == 0x00000000`, `meta mark set
//!   meta mark | 0x00004000`, `iifname "veth*"`, `priority dstnat - 10; policy
//!   accept;`, `timeout 3h`, `elements = { … }` over several lines, a
//!   one-element set printed bare, adjacent set elements merged into a range
//!   (`fd00::1-fd00::2`, read as the prefixes that cover it), a dynamic set's
//!   `size` and its elements' `timeout`/`expires` (read and dropped: they are
//!   state, not configuration).
//!
//! [`parse`] tells the forms apart by their first word (`add` or `table`);
//! [`parse_dump`] and [`parse_listing`] read one form only. Statements are
//! read in either spelling in both forms. What svcnat's IR cannot hold (a
//! `policy drop`, the verdict `continue`, `reject with …`, counters, other
//! `meta` keys, anonymous verdict maps, …) is refused with
//! [`NftErrorKind::Unsupported`], never dropped. Errors carry the line and
//! column and show the line; nothing panics on any input.
//!
//! The kernel does not keep the order of set and map elements and rewrites
//! some values (a `/32` prefix as an address, merged address sets, a `mark or
//! 0`); [`canonicalize`] maps both sides to one form, so that a table loaded
//! with `nft -f` and listed back compares equal to the ruleset written:
//! `canonicalize(&parse(listing)?) == canonicalize(&ruleset)`.
//!
//! ```
//! use svcnat::nft::*;
//! let listing = "table ip kube-proxy {\n\
//!     \tchain masquerading {\n\
//!     \t\tmeta mark & 0x00004000 == 0x00000000 return\n\
//!     \t\tmeta mark set meta mark ^ 0x00004000\n\
//!     \t\tmasquerade fully-random\n\
//!     \t}\n\
//!     }\n";
//! let ruleset = svcnat::parse::nft::parse(listing)?;
//! assert_eq!(
//!     ruleset.to_dump(),
//!     "add table ip kube-proxy\n\
//!      add chain ip kube-proxy masquerading\n\
//!      add rule ip kube-proxy masquerading mark and 0x4000 == 0 return\n\
//!      add rule ip kube-proxy masquerading mark set mark xor 0x4000\n\
//!      add rule ip kube-proxy masquerading masquerade fully-random\n"
//! );
//! # Ok::<(), svcnat::parse::nft::NftParseError>(())
//! ```
//!
//! ## What the text cannot tell apart
//!
//! kube-proxy writes its service CIDRs joined with commas (`{ a,b }`,
//! [`AddrValue::Cidrs`](crate::nft::AddrValue::Cidrs)) and its source ranges
//! spaced (`{ a , b }`, [`AddrValue::Anon`](crate::nft::AddrValue::Anon)). With
//! one element both are `{ a }`: a lone prefix reads as `Cidrs`, a lone
//! address as `Anon`, so `Anon` of one prefix is the one value whose dump
//! parses to another (equal under [`canonicalize`], and the same rule to nft).

mod canon;
mod cursor;
mod dump;
mod lex;
mod listing;
mod stmt;

pub use canon::canonicalize;

use thiserror::Error;

use crate::model::IpFamily;
use crate::nft::{
    BaseChain, Element, KeyType, KeyValue, Map, MapElement, Name, NftComment, NftError, Ruleset,
    Set, Verdict,
};
use cursor::Cursor;
use lex::Tok;

/// A line that could not be read, with where and why. It displays on one
/// line: `line 3, column 33: …, in "add rule …"`, the line quoted and escaped
/// as Rust escapes a string, so no character in it can break the message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}, column {column}: {kind}, in {text:?}")]
#[non_exhaustive]
pub struct NftParseError {
    /// The 1-based line number.
    pub line: usize,
    /// The 1-based column (in characters) of the offending word.
    pub column: usize,
    /// The offending line.
    pub text: String,
    /// What is wrong.
    pub kind: NftErrorKind,
}

/// What is wrong with a line of nftables text.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NftErrorKind {
    /// A quote that is not closed on its line.
    #[error("unterminated quote")]
    UnterminatedQuote,
    /// A text with no table in it.
    #[error("no table (no `add table` or `table` command)")]
    NoTable,
    /// A line that starts with no known command.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// A command before the table is declared.
    #[error("{0} before `add table`")]
    OutsideTable(String),
    /// A second table: one text holds one table.
    #[error("a second table, {0} (one text holds one table)")]
    OtherTable(String),
    /// Something else where a word or sign was expected.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What was expected.
        expected: &'static str,
        /// What was found, as written.
        found: String,
    },
    /// A word that is not the value it should be.
    #[error("{value:?} is not {expected}")]
    BadValue {
        /// The word.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// Valid nftables that svcnat's IR has no place for.
    #[error("{0} is not supported (svcnat's nftables IR cannot hold it)")]
    Unsupported(String),
    /// An address, or `ip`/`ip6`, of the other family than the table's.
    #[error("{found} value in an {expected} table")]
    FamilyMismatch {
        /// The table's family.
        expected: IpFamily,
        /// The value's family.
        found: IpFamily,
    },
    /// A rule for a chain that is not declared before it.
    #[error("chain {0} is not declared")]
    UndeclaredChain(String),
    /// An element for a set or map that is not declared before it.
    #[error("set or map {0} is not declared")]
    UndeclaredSet(String),
    /// An object declared again with other properties, a set and a map of one
    /// name, or an element added again with another verdict or comment.
    #[error("{what} {name} is declared again differently")]
    Redeclared {
        /// `chain`, `set`, `map`, `element` or `table`.
        what: &'static str,
        /// Its name (an element's set and key).
        name: String,
    },
    /// A name, comment or interface the IR refuses.
    #[error(transparent)]
    Invalid(NftError),
}

/// Where an error is: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spot {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

/// The parsers' result: errors are placed, the line is added at the top.
type R<T> = Result<T, (Spot, NftErrorKind)>;

/// Reads either text form: the dump form if its first word is `add`, the
/// listing if it is `table`.
///
/// # Errors
/// [`NftParseError`] for the first line that cannot be read (see
/// [`NftErrorKind`]); [`NftErrorKind::NoTable`] for a text without a table.
pub fn parse(text: &str) -> Result<Ruleset, NftParseError> {
    let tokens = lex::tokenize(text).map_err(|e| place(text, e))?;
    match tokens.iter().map(|t| t.tok).find(|t| *t != Tok::Newline) {
        Some(Tok::Word("table")) => parse_listing(text),
        _ => parse_dump(text),
    }
}

/// Reads the dump form (`add table …`, `add chain …`, …, one command a line).
///
/// # Errors
/// As [`parse`]; a command other than `add`, or a listing, is
/// [`NftErrorKind::UnknownCommand`].
pub fn parse_dump(text: &str) -> Result<Ruleset, NftParseError> {
    let tokens = lex::tokenize(text).map_err(|e| place(text, e))?;
    dump::parse(Cursor::new(tokens)).map_err(|e| place(text, e))
}

/// Reads what `nft list table FAMILY NAME` prints.
///
/// # Errors
/// As [`parse`]; more than one table is [`NftErrorKind::OtherTable`].
pub fn parse_listing(text: &str) -> Result<Ruleset, NftParseError> {
    let tokens = lex::tokenize(text).map_err(|e| place(text, e))?;
    listing::parse(Cursor::new(tokens)).map_err(|e| place(text, e))
}

fn place(text: &str, (spot, kind): (Spot, NftErrorKind)) -> NftParseError {
    NftParseError {
        line: spot.line,
        column: spot.column,
        text: text
            .lines()
            .nth(spot.line.saturating_sub(1))
            .unwrap_or_default()
            .to_owned(),
        kind,
    }
}

/// An element as read: its key, comment and (in a map) verdict.
struct ReadElement {
    key: Vec<KeyValue>,
    comment: Option<NftComment>,
    verdict: Option<Verdict>,
}

/// What a set or map's elements look like: their key and whether they carry a
/// verdict.
struct Container {
    key: Vec<KeyType>,
    map: bool,
}

/// The error for `value`, which is not `expected`.
fn bad_value(spot: Spot, value: &str, expected: &'static str) -> (Spot, NftErrorKind) {
    (
        spot,
        NftErrorKind::BadValue {
            value: value.to_owned(),
            expected,
        },
    )
}

fn redeclared<T>(spot: Spot, what: &'static str, name: &Name) -> R<T> {
    Err((
        spot,
        NftErrorKind::Redeclared {
            what,
            name: name.to_string(),
        },
    ))
}

/// Takes `new` where `old` has nothing; refuses a different value.
fn merge<T: PartialEq + Clone>(old: &mut Option<T>, new: &Option<T>) -> bool {
    match (old.as_ref(), new) {
        (_, None) => true,
        (None, Some(n)) => {
            *old = Some(n.clone());
            true
        }
        (Some(o), Some(n)) => o == n,
    }
}

/// A repeated `add table` of the table being read: its comment may be added,
/// not changed.
fn table_again(rs: &mut Ruleset, spot: Spot, comment: Option<NftComment>) -> R<()> {
    if merge(&mut rs.comment, &comment) {
        Ok(())
    } else {
        redeclared(spot, "table", &rs.table.clone())
    }
}

/// Declares a chain, or merges a repeated declaration into it (as `nft add`
/// does): a property given twice must agree.
fn declare_chain(
    rs: &mut Ruleset,
    spot: Spot,
    name: Name,
    base: Option<BaseChain>,
    comment: Option<NftComment>,
) -> R<()> {
    let chain = rs.chains.entry(name.clone()).or_default();
    if merge(&mut chain.base, &base) && merge(&mut chain.comment, &comment) {
        Ok(())
    } else {
        redeclared(spot, "chain", &name)
    }
}

/// Declares a set, or checks a repeated declaration.
fn declare_set(rs: &mut Ruleset, spot: Spot, name: Name, set: Set) -> R<()> {
    if rs.maps.contains_key(&name) {
        return redeclared(spot, "set", &name);
    }
    match rs.sets.get_mut(&name) {
        None => {
            rs.sets.insert(name, set);
            Ok(())
        }
        Some(old) => {
            let flags = if set.flags.is_empty() {
                None
            } else {
                Some(set.flags)
            };
            let mut old_flags = (!old.flags.is_empty()).then(|| old.flags.clone());
            if old.key == set.key
                && merge(&mut old_flags, &flags)
                && merge(&mut old.timeout, &set.timeout)
                && merge(&mut old.comment, &set.comment)
            {
                old.flags = old_flags.unwrap_or_default();
                Ok(())
            } else {
                redeclared(spot, "set", &name)
            }
        }
    }
}

/// Declares a verdict map, or checks a repeated declaration.
fn declare_map(rs: &mut Ruleset, spot: Spot, name: Name, map: Map) -> R<()> {
    if rs.sets.contains_key(&name) {
        return redeclared(spot, "map", &name);
    }
    match rs.maps.get_mut(&name) {
        None => {
            rs.maps.insert(name, map);
            Ok(())
        }
        Some(old) => {
            if old.key == map.key && merge(&mut old.comment, &map.comment) {
                Ok(())
            } else {
                redeclared(spot, "map", &name)
            }
        }
    }
}

/// The key and kind of a declared set or map.
fn container(rs: &Ruleset, spot: Spot, name: &Name) -> R<Container> {
    if let Some(s) = rs.sets.get(name) {
        Ok(Container {
            key: s.key.clone(),
            map: false,
        })
    } else if let Some(m) = rs.maps.get(name) {
        Ok(Container {
            key: m.key.clone(),
            map: true,
        })
    } else {
        Err((spot, NftErrorKind::UndeclaredSet(name.to_string())))
    }
}

/// Adds elements to a declared set or map: the same element again is one
/// element, another verdict or comment for its key is refused.
fn add_elements(rs: &mut Ruleset, spot: Spot, name: &Name, read: Vec<ReadElement>) -> R<()> {
    for e in read {
        let again = |key: &[KeyValue]| {
            let key: Vec<String> = key.iter().map(key_text).collect();
            Err((
                spot,
                NftErrorKind::Redeclared {
                    what: "element",
                    name: format!("{name} {{ {} }}", key.join(" . ")),
                },
            ))
        };
        if let Some(set) = rs.sets.get_mut(name) {
            let element = Element {
                key: e.key,
                comment: e.comment,
            };
            match set.elements.iter().find(|x| x.key == element.key) {
                None => set.elements.push(element),
                Some(old) if *old == element => {}
                Some(_) => return again(&element.key),
            }
        } else if let (Some(map), Some(verdict)) = (rs.maps.get_mut(name), e.verdict) {
            let element = MapElement {
                key: e.key,
                verdict,
                comment: e.comment,
            };
            match map.elements.iter().find(|x| x.key == element.key) {
                None => map.elements.push(element),
                Some(old) if *old == element => {}
                Some(_) => return again(&element.key),
            }
        } else {
            return Err((spot, NftErrorKind::UndeclaredSet(name.to_string())));
        }
    }
    Ok(())
}

fn key_text(v: &KeyValue) -> String {
    match v {
        KeyValue::Addr(ip) => ip.to_string(),
        KeyValue::Proto(p) => p.as_str().to_owned(),
        KeyValue::Port(p) => p.to_string(),
    }
}

/// The elements inside `{ … }` (after the `{`, up to and with the `}`),
/// separated by `,`, over as many lines as they take: `KEY [timeout T]
/// [expires T] [comment "C"] [: VERDICT]`, a verdict exactly when `map`.
fn elements(c: &mut Cursor<'_>, container: &Container) -> R<Vec<ReadElement>> {
    let mut out = Vec::new();
    c.skip_newlines();
    if c.eat_punct('}') {
        return Ok(out);
    }
    loop {
        c.skip_newlines();
        let key = c.key(&container.key)?;
        // Dynamic elements' state, as nft lists it: dropped.
        if c.eat("timeout") {
            c.duration()?;
        }
        if c.eat("expires") {
            c.duration()?;
        }
        let comment = if c.eat("comment") {
            Some(c.comment()?)
        } else {
            None
        };
        let verdict = if container.map {
            c.expect(":")?;
            Some(c.verdict()?)
        } else {
            None
        };
        out.push(ReadElement {
            key,
            comment,
            verdict,
        });
        c.skip_newlines();
        if c.eat_punct(',') {
            continue;
        }
        c.expect_punct('}', "} or ,")?;
        return Ok(out);
    }
}

/// `type T hook H priority P` (after `type`), as both forms write it.
fn base_chain(c: &mut Cursor<'_>) -> R<BaseChain> {
    use crate::nft::{ChainType, Hook};
    let spot = c.spot();
    let kind = match c.word("a chain type")? {
        "filter" => ChainType::Filter,
        "nat" => ChainType::Nat,
        other => {
            return Err((
                spot,
                NftErrorKind::Unsupported(format!("the chain type {other}")),
            ));
        }
    };
    c.expect("hook")?;
    let spot = c.spot();
    let hook = match c.word("a hook")? {
        "prerouting" => Hook::Prerouting,
        "input" => Hook::Input,
        "forward" => Hook::Forward,
        "output" => Hook::Output,
        "postrouting" => Hook::Postrouting,
        other => return Err((spot, NftErrorKind::Unsupported(format!("the hook {other}")))),
    };
    c.expect("priority")?;
    let priority = c.priority()?;
    Ok(BaseChain {
        kind,
        hook,
        priority,
    })
}

/// `policy accept` (after `policy`): the only policy the IR holds.
fn policy(c: &mut Cursor<'_>) -> R<()> {
    let spot = c.spot();
    match c.word("a policy")? {
        "accept" => Ok(()),
        other => Err((spot, NftErrorKind::Unsupported(format!("policy {other}")))),
    }
}

/// What a set or map declaration says, clause by clause.
#[derive(Default)]
struct Decl {
    key: Option<Vec<KeyType>>,
    /// `type K : verdict`: a verdict map.
    verdict: bool,
    flags: Vec<crate::nft::SetFlag>,
    timeout: Option<u32>,
    comment: Option<NftComment>,
}

/// One clause of a set or map declaration (`type …`, `flags …`, `timeout …`,
/// `comment …`, `size …`, the last read and dropped), without its `;` or line
/// end. `Ok(false)` if the next word starts no clause (it is not taken).
fn decl_clause(c: &mut Cursor<'_>, decl: &mut Decl) -> R<bool> {
    use crate::nft::SetFlag;
    let spot = c.spot();
    match c.peek() {
        Tok::Word("type") => {
            c.bump();
            decl.key = Some(c.key_types()?);
            if c.eat(":") {
                let spot = c.spot();
                if !c.eat("verdict") {
                    let data = c.word("verdict")?;
                    return Err((spot, NftErrorKind::Unsupported(format!("a map to {data}"))));
                }
                decl.verdict = true;
            }
        }
        Tok::Word("flags") => {
            c.bump();
            loop {
                let spot = c.spot();
                decl.flags.push(match c.word("a set flag")? {
                    "dynamic" => SetFlag::Dynamic,
                    "timeout" => SetFlag::Timeout,
                    other => {
                        return Err((
                            spot,
                            NftErrorKind::Unsupported(format!("the set flag {other}")),
                        ));
                    }
                });
                if !c.eat_punct(',') {
                    break;
                }
            }
        }
        Tok::Word("timeout") => {
            c.bump();
            decl.timeout = Some(c.timeout()?);
        }
        Tok::Word("comment") => {
            c.bump();
            decl.comment = Some(c.comment()?);
        }
        Tok::Word("size") => {
            c.bump();
            c.number("a size")?;
        }
        Tok::Word(w @ ("policy" | "gc-interval" | "auto-merge" | "counter")) => {
            return Err((
                spot,
                NftErrorKind::Unsupported(format!("the set option {w}")),
            ));
        }
        _ => return Ok(false),
    }
    Ok(true)
}

impl Decl {
    /// The declared set or map; `map` says which the command declared.
    fn build(self, spot: Spot, map: bool) -> R<Result<Set, Map>> {
        let Some(key) = self.key else {
            return Err((
                spot,
                NftErrorKind::Expected {
                    expected: "a type clause",
                    found: "a declaration without one".into(),
                },
            ));
        };
        if map != self.verdict {
            let what = if map {
                "a map that is not a verdict map"
            } else {
                "a set with a verdict type"
            };
            return Err((spot, NftErrorKind::Unsupported(what.into())));
        }
        if map {
            if !self.flags.is_empty() || self.timeout.is_some() {
                return Err((
                    spot,
                    NftErrorKind::Unsupported("flags or a timeout on a verdict map".into()),
                ));
            }
            Ok(Err(Map::new(key, self.comment)))
        } else {
            let mut set = Set::new(key, self.comment);
            set.flags = self.flags;
            set.timeout = self.timeout;
            Ok(Ok(set))
        }
    }
}

/// Declares what [`Decl::build`] built.
fn declare(rs: &mut Ruleset, spot: Spot, name: Name, built: Result<Set, Map>) -> R<()> {
    match built {
        Ok(set) => declare_set(rs, spot, name, set),
        Err(map) => declare_map(rs, spot, name, map),
    }
}
