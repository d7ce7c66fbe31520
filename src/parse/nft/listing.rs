//! The listing: what `nft list table FAMILY NAME` prints, one table nested in
//! braces, one clause or rule a line, a set's elements over as many lines as
//! they take.

use super::cursor::Cursor;
use super::lex::Tok;
use super::{
    Decl, NftErrorKind, R, ReadElement, add_elements, base_chain, decl_clause, declare,
    declare_chain, elements, policy, stmt, table_again,
};
use crate::nft::{Family, Ruleset};

pub(super) fn parse(mut c: Cursor<'_>) -> R<Ruleset> {
    c.skip_newlines();
    if c.done() {
        return Err((c.spot(), NftErrorKind::NoTable));
    }
    c.command("table")?;
    let family = c.family()?;
    let name = c.name("a table name")?;
    c.expect_punct('{', "{")?;
    c.expect_newline()?;
    let mut rs = Ruleset::new(family, name, None);
    loop {
        c.skip_newlines();
        let spot = c.spot();
        match c.peek() {
            Tok::Punct('}') => {
                c.bump();
                c.expect_newline()?;
                break;
            }
            Tok::Word("comment") => {
                c.bump();
                let comment = c.comment()?;
                table_again(&mut rs, spot, Some(comment))?;
            }
            Tok::Word(what @ ("set" | "map")) => {
                c.bump();
                set_or_map(&mut c, &mut rs, what == "map")?;
            }
            Tok::Word("chain") => {
                c.bump();
                chain(&mut c, &mut rs, family)?;
            }
            Tok::Word("flags") => {
                return Err((spot, NftErrorKind::Unsupported("table flags".into())));
            }
            _ => return c.expected("set, map, chain, comment or }"),
        }
        c.expect_newline()?;
    }
    c.skip_newlines();
    if c.done() {
        return Ok(rs);
    }
    let spot = c.spot();
    if c.eat("table") {
        let other = format!(
            "{} {}",
            c.word("a family").unwrap_or("?"),
            c.word("a table name").unwrap_or("?")
        );
        return Err((spot, NftErrorKind::OtherTable(other)));
    }
    c.expected("the end of the text after the table")
}

/// `NAME {` clause lines, `elements = { … }`, `}`: after `set` or `map`.
fn set_or_map(c: &mut Cursor<'_>, rs: &mut Ruleset, map: bool) -> R<()> {
    let spot = c.spot();
    let name = c.name("a set or map name")?;
    c.expect_punct('{', "{")?;
    c.expect_newline()?;
    let mut decl = Decl::default();
    let mut read: Vec<ReadElement> = Vec::new();
    loop {
        c.skip_newlines();
        if c.eat_punct('}') {
            break;
        }
        if c.eat("elements") {
            c.expect("=")?;
            c.expect_punct('{', "{")?;
            // The type comes first in nft's listing; the elements are read by it.
            let kind = super::Container {
                key: decl.key.clone().ok_or_else(|| {
                    (
                        spot,
                        NftErrorKind::Expected {
                            expected: "a type clause before the elements",
                            found: "elements".into(),
                        },
                    )
                })?,
                map: decl.verdict,
            };
            read.extend(elements(c, &kind)?);
        } else if !decl_clause(c, &mut decl)? {
            return c.expected("type, flags, timeout, comment, size, elements or }");
        }
        c.expect_newline()?;
    }
    let built = decl.build(spot, map)?;
    declare(rs, spot, name.clone(), built)?;
    add_elements(rs, spot, &name, read)
}

/// `NAME {`, an optional `comment` line, an optional `type …; policy accept;`
/// line, rule lines, `}`: after `chain`.
fn chain(c: &mut Cursor<'_>, rs: &mut Ruleset, family: Family) -> R<()> {
    let spot = c.spot();
    let name = c.name("a chain name")?;
    c.expect_punct('{', "{")?;
    c.expect_newline()?;
    let (mut base, mut comment, mut rules) = (None, None, Vec::new());
    loop {
        c.skip_newlines();
        if c.eat_punct('}') {
            break;
        }
        if rules.is_empty() && comment.is_none() && base.is_none() && c.eat("comment") {
            comment = Some(c.comment()?);
        } else if rules.is_empty() && base.is_none() && c.eat("type") {
            base = Some(base_chain(c)?);
            c.expect_punct(';', ";")?;
            if c.eat("policy") {
                policy(c)?;
                c.expect_punct(';', ";")?;
            }
        } else {
            rules.push(stmt::rule(c, family)?);
        }
        c.expect_newline()?;
    }
    declare_chain(rs, spot, name.clone(), base, comment)?;
    if let Some(chain) = rs.chains.get_mut(&name) {
        chain.rules.extend(rules);
    }
    Ok(())
}
