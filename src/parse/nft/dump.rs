//! The dump form: one `add …` command a line, as knftables' fake `Dump()`
//! (and svcnat's [`Ruleset::write_dump`](crate::nft::Ruleset::write_dump))
//! writes it.

use super::cursor::Cursor;
use super::{
    Decl, NftErrorKind, R, add_elements, base_chain, container, decl_clause, declare,
    declare_chain, elements, policy, stmt, table_again,
};
use crate::nft::Ruleset;

pub(super) fn parse(mut c: Cursor<'_>) -> R<Ruleset> {
    let mut ruleset: Option<Ruleset> = None;
    loop {
        c.skip_newlines();
        if c.done() {
            break;
        }
        let spot = c.spot();
        c.command("add")?;
        let what = c.word("table, chain, set, map, rule or element")?;
        if !matches!(what, "table" | "chain" | "set" | "map" | "rule" | "element") {
            return Err((spot, NftErrorKind::UnknownCommand(format!("add {what}"))));
        }
        let table_spot = c.spot();
        let family = c.family()?;
        let table = c.name("a table name")?;
        if what == "table" {
            let comment = if c.eat_punct('{') {
                let comment = if c.eat("comment") {
                    let comment = c.comment()?;
                    c.expect_punct(';', ";")?;
                    Some(comment)
                } else {
                    None
                };
                c.expect_punct('}', "comment or }")?;
                comment
            } else {
                None
            };
            match &mut ruleset {
                None => ruleset = Some(Ruleset::new(family, table, comment)),
                Some(rs) if rs.family == family && rs.table == table => {
                    table_again(rs, spot, comment)?;
                }
                Some(_) => {
                    return Err((
                        table_spot,
                        NftErrorKind::OtherTable(format!("{} {table}", family.as_str())),
                    ));
                }
            }
            c.expect_newline()?;
            continue;
        }
        let rs = match &mut ruleset {
            None => return Err((spot, NftErrorKind::OutsideTable(format!("add {what}")))),
            Some(rs) if rs.family == family && rs.table == table => rs,
            Some(_) => {
                return Err((
                    table_spot,
                    NftErrorKind::OtherTable(format!("{} {table}", family.as_str())),
                ));
            }
        };
        match what {
            "chain" => {
                let name = c.name("a chain name")?;
                let (mut base, mut comment) = (None, None);
                if c.eat_punct('{') {
                    while !c.eat_punct('}') {
                        if c.eat("type") {
                            base = Some(base_chain(&mut c)?);
                        } else if c.eat("policy") {
                            policy(&mut c)?;
                        } else if c.eat("comment") {
                            comment = Some(c.comment()?);
                        } else {
                            return c.expected("type, policy, comment or }");
                        }
                        c.expect_punct(';', ";")?;
                    }
                }
                declare_chain(rs, spot, name, base, comment)?;
            }
            "set" | "map" => {
                let name = c.name("a set or map name")?;
                c.expect_punct('{', "{")?;
                let mut decl = Decl::default();
                while !c.eat_punct('}') {
                    if !decl_clause(&mut c, &mut decl)? {
                        return c.expected("type, flags, timeout, comment or }");
                    }
                    c.expect_punct(';', ";")?;
                }
                let built = decl.build(spot, what == "map")?;
                declare(rs, spot, name, built)?;
            }
            "rule" => {
                let name = c.name("a chain name")?;
                let rule = stmt::rule(&mut c, family)?;
                match rs.chains.get_mut(&name) {
                    Some(chain) => chain.rules.push(rule),
                    None => return Err((spot, NftErrorKind::UndeclaredChain(name.to_string()))),
                }
            }
            _ => {
                let name_spot = c.spot();
                let name = c.name("a set or map name")?;
                let kind = container(rs, name_spot, &name)?;
                c.expect_punct('{', "{")?;
                let read = elements(&mut c, &kind)?;
                add_elements(rs, spot, &name, read)?;
            }
        }
        c.expect_newline()?;
    }
    ruleset.ok_or((c.spot(), NftErrorKind::NoTable))
}
