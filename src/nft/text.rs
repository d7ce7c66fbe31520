//! The one writer of nftables text: a [`Ruleset`] as the `add ...` commands of
//! knftables' fake `Dump()`, which `nft -f` accepts and kube-proxy's tests compare.
//! Every keyword, separator and quote of the nftables output is spelt here and
//! nowhere else.

use std::fmt::{self, Write};

use ipnet::IpNet;

use super::names::{Name, NftComment};
use super::objects::{
    BaseChain, ChainType, Element, Family, Hook, KeyType, KeyValue, MapElement, Rule, Ruleset,
    SetFlag,
};
use super::stmt::{AddrItem, AddrValue, Dir, KeyField, MarkOp, Op, Stmt, Verdict};
use super::transaction::{Item, Operation, Transaction, visit_dump};
use crate::ruleset::text as num;

impl Ruleset {
    /// Writes the whole table as `add` commands: the table, then chains, sets and
    /// maps by name, then each chain's rules, then each set's and map's elements
    /// (the order of knftables' fake `Dump()`).
    ///
    /// # Errors
    /// Only the writer's.
    pub fn write_dump<W: Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        let prefix = Prefix {
            family: self.family,
            table: &self.table,
        };
        visit_dump(self, |item| match item {
            Item::Table(comment) => prefix.table(out, comment),
            Item::Chain(name, chain) => {
                prefix.chain(out, name, chain.base.as_ref(), chain.comment.as_ref())
            }
            Item::Set(name, set) => prefix.set(
                out,
                name,
                &set.key,
                &set.flags,
                set.timeout,
                set.comment.as_ref(),
            ),
            Item::Map(name, map) => prefix.map(out, name, &map.key, map.comment.as_ref()),
            Item::Rule(chain, rule) => prefix.rule(out, chain, rule),
            Item::Element(set, element) => prefix.element(out, set, element),
            Item::MapElement(map, element) => prefix.map_element(out, map, element),
        })
    }

    /// [`Ruleset::write_dump`] into a `String`.
    pub fn to_dump(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_dump(&mut out);
        out
    }
}

impl Transaction {
    /// Writes the transaction as `nft -f` input, one line per operation.
    ///
    /// # Errors
    /// Only the writer's.
    pub fn write_text<W: Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        let prefix = Prefix {
            family: self.family(),
            table: self.table(),
        };
        for op in self.operations() {
            prefix.operation(out, op)?;
        }
        Ok(())
    }

    /// [`Transaction::write_text`] into a `String`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_text(&mut out);
        out
    }
}

/// The `nft -f` text ([`Transaction::write_text`]).
impl fmt::Display for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_text(f)
    }
}

/// The `FAMILY TABLE` every command names, and the commands that start with it.
#[derive(Clone, Copy)]
pub(crate) struct Prefix<'a> {
    /// The table's family.
    pub(crate) family: Family,
    /// The table's name.
    pub(crate) table: &'a Name,
}

impl Prefix<'_> {
    /// `add table FAMILY TABLE [{ comment "C" ; }]`.
    pub(crate) fn table<W: Write + ?Sized>(
        &self,
        out: &mut W,
        comment: Option<&NftComment>,
    ) -> fmt::Result {
        write!(out, "add table {} {}", self.family.as_str(), self.table)?;
        if let Some(c) = comment {
            write!(out, " {{ comment \"{c}\" ; }}")?;
        }
        out.write_str("\n")
    }

    /// `VERB KIND FAMILY TABLE NAME`: `flush chain ...`, `delete set ...`.
    fn named<W: Write + ?Sized>(&self, out: &mut W, verb_kind: &str, name: &Name) -> fmt::Result {
        writeln!(
            out,
            "{verb_kind} {} {} {name}",
            self.family.as_str(),
            self.table
        )
    }

    /// `add chain FAMILY TABLE NAME [{ type T hook H priority P ; comment "C" ; }]`.
    pub(crate) fn chain<W: Write + ?Sized>(
        &self,
        out: &mut W,
        name: &Name,
        base: Option<&BaseChain>,
        comment: Option<&NftComment>,
    ) -> fmt::Result {
        write!(
            out,
            "add chain {} {} {name}",
            self.family.as_str(),
            self.table
        )?;
        if base.is_some() || comment.is_some() {
            out.write_str(" {")?;
            if let Some(base) = base {
                write_base(out, base)?;
            }
            if let Some(c) = comment {
                write!(out, " comment \"{c}\" ;")?;
            }
            out.write_str(" }")?;
        }
        out.write_str("\n")
    }

    /// `add set FAMILY TABLE NAME { type T ; [flags F ;] [timeout Ns ;] [comment "C" ;] }`.
    pub(crate) fn set<W: Write + ?Sized>(
        &self,
        out: &mut W,
        name: &Name,
        key: &[KeyType],
        flags: &[SetFlag],
        timeout: Option<u32>,
        comment: Option<&NftComment>,
    ) -> fmt::Result {
        write!(
            out,
            "add set {} {} {name} {{ type ",
            self.family.as_str(),
            self.table
        )?;
        write_key_type(out, key)?;
        out.write_str(" ;")?;
        if !flags.is_empty() {
            out.write_str(" flags ")?;
            for (i, flag) in flags.iter().enumerate() {
                if i > 0 {
                    out.write_str(",")?;
                }
                out.write_str(match flag {
                    SetFlag::Dynamic => "dynamic",
                    SetFlag::Timeout => "timeout",
                })?;
            }
            out.write_str(" ;")?;
        }
        if let Some(t) = timeout {
            write!(out, " timeout {t}s ;")?;
        }
        if let Some(c) = comment {
            write!(out, " comment \"{c}\" ;")?;
        }
        out.write_str(" }\n")
    }

    /// `add map FAMILY TABLE NAME { type K : verdict ; [comment "C" ;] }`.
    pub(crate) fn map<W: Write + ?Sized>(
        &self,
        out: &mut W,
        name: &Name,
        key: &[KeyType],
        comment: Option<&NftComment>,
    ) -> fmt::Result {
        write!(
            out,
            "add map {} {} {name} {{ type ",
            self.family.as_str(),
            self.table
        )?;
        write_key_type(out, key)?;
        out.write_str(" : verdict ;")?;
        if let Some(c) = comment {
            write!(out, " comment \"{c}\" ;")?;
        }
        out.write_str(" }\n")
    }

    /// `add rule FAMILY TABLE CHAIN BODY [comment "C"]`.
    pub(crate) fn rule<W: Write + ?Sized>(
        &self,
        out: &mut W,
        chain: &Name,
        rule: &Rule,
    ) -> fmt::Result {
        write!(
            out,
            "add rule {} {} {chain} ",
            self.family.as_str(),
            self.table
        )?;
        write_rule(out, self.family, rule)?;
        out.write_str("\n")
    }

    /// `add element FAMILY TABLE SET { KEY [comment "C"] }`.
    pub(crate) fn element<W: Write + ?Sized>(
        &self,
        out: &mut W,
        set: &Name,
        element: &Element,
    ) -> fmt::Result {
        self.element_head(out, set, &element.key, element.comment.as_ref())?;
        out.write_str(" }\n")
    }

    /// `add element FAMILY TABLE NAME { KEY [comment "C"]`: an element's start,
    /// the same for sets and maps.
    fn element_head<W: Write + ?Sized>(
        &self,
        out: &mut W,
        name: &Name,
        key: &[KeyValue],
        comment: Option<&NftComment>,
    ) -> fmt::Result {
        write!(
            out,
            "add element {} {} {name} {{ ",
            self.family.as_str(),
            self.table
        )?;
        write_key(out, key)?;
        if let Some(c) = comment {
            write!(out, " comment \"{c}\"")?;
        }
        Ok(())
    }

    /// `add element FAMILY TABLE MAP { KEY [comment "C"] : VERDICT }`.
    pub(crate) fn map_element<W: Write + ?Sized>(
        &self,
        out: &mut W,
        map: &Name,
        element: &MapElement,
    ) -> fmt::Result {
        self.element_head(out, map, &element.key, element.comment.as_ref())?;
        out.write_str(" : ")?;
        write_verdict(out, &element.verdict)?;
        out.write_str(" }\n")
    }

    /// One operation of a transaction, as one line.
    fn operation<W: Write + ?Sized>(&self, out: &mut W, op: &Operation) -> fmt::Result {
        match op {
            Operation::AddTable { comment } => self.table(out, comment.as_ref()),
            Operation::DeleteTable => {
                writeln!(out, "delete table {} {}", self.family.as_str(), self.table)
            }
            Operation::AddChain {
                name,
                base,
                comment,
            } => self.chain(out, name, base.as_ref(), comment.as_ref()),
            Operation::FlushChain(name) => self.named(out, "flush chain", name),
            Operation::DeleteChain(name) => self.named(out, "delete chain", name),
            Operation::AddRule { chain, rule } => self.rule(out, chain, rule),
            Operation::AddSet {
                name,
                key,
                flags,
                timeout,
                comment,
            } => self.set(out, name, key, flags, *timeout, comment.as_ref()),
            Operation::FlushSet(name) => self.named(out, "flush set", name),
            Operation::DeleteSet(name) => self.named(out, "delete set", name),
            Operation::AddMap { name, key, comment } => self.map(out, name, key, comment.as_ref()),
            Operation::FlushMap(name) => self.named(out, "flush map", name),
            Operation::DeleteMap(name) => self.named(out, "delete map", name),
            Operation::AddElement { set, element } => self.element(out, set, element),
            Operation::AddMapElement { map, element } => self.map_element(out, map, element),
            Operation::DeleteElement { set, key } => {
                write!(
                    out,
                    "delete element {} {} {set} {{ ",
                    self.family.as_str(),
                    self.table
                )?;
                write_key(out, key)?;
                out.write_str(" }\n")
            }
        }
    }
}

fn write_base<W: Write + ?Sized>(out: &mut W, base: &BaseChain) -> fmt::Result {
    let kind = match base.kind {
        ChainType::Filter => "filter",
        ChainType::Nat => "nat",
    };
    let hook = match base.hook {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
    };
    write!(out, " type {kind} hook {hook} priority {} ;", base.priority)
}

fn write_key_type<W: Write + ?Sized>(out: &mut W, key: &[KeyType]) -> fmt::Result {
    for (i, t) in key.iter().enumerate() {
        if i > 0 {
            out.write_str(" . ")?;
        }
        out.write_str(match t {
            KeyType::Ipv4Addr => "ipv4_addr",
            KeyType::Ipv6Addr => "ipv6_addr",
            KeyType::InetProto => "inet_proto",
            KeyType::InetService => "inet_service",
        })?;
    }
    Ok(())
}

fn write_key<W: Write + ?Sized>(out: &mut W, key: &[KeyValue]) -> fmt::Result {
    for (i, v) in key.iter().enumerate() {
        if i > 0 {
            out.write_str(" . ")?;
        }
        match v {
            KeyValue::Addr(ip) => num::ip(out, *ip)?,
            KeyValue::Proto(p) => out.write_str(p.as_str())?,
            KeyValue::Port(p) => num::dec(out, u32::from(*p))?,
        }
    }
    Ok(())
}

/// Writes a verdict (`drop`, `goto CHAIN`, ...).
pub(crate) fn write_verdict<W: Write + ?Sized>(out: &mut W, v: &Verdict) -> fmt::Result {
    match v {
        Verdict::Accept => out.write_str("accept"),
        Verdict::Drop => out.write_str("drop"),
        Verdict::Return => out.write_str("return"),
        Verdict::Reject => out.write_str("reject"),
        Verdict::Jump(c) => write!(out, "jump {c}"),
        Verdict::Goto(c) => write!(out, "goto {c}"),
    }
}

/// Writes a rule's body: its statements, then ` comment "C"`.
pub(crate) fn write_rule<W: Write + ?Sized>(
    out: &mut W,
    family: Family,
    rule: &Rule,
) -> fmt::Result {
    for (i, stmt) in rule.stmts.iter().enumerate() {
        if i > 0 {
            out.write_str(" ")?;
        }
        write_stmt(out, family, stmt)?;
    }
    if let Some(c) = &rule.comment {
        write!(out, " comment \"{c}\"")?;
    }
    Ok(())
}

fn write_net<W: Write + ?Sized>(out: &mut W, net: &IpNet) -> fmt::Result {
    num::ip(out, net.addr())?;
    out.write_str("/")?;
    num::dec(out, u32::from(net.prefix_len()))
}

fn dir(d: Dir) -> &'static str {
    match d {
        Dir::Saddr => "saddr",
        Dir::Daddr => "daddr",
    }
}

/// Writes one statement as kube-proxy spells it.
pub(crate) fn write_stmt<W: Write + ?Sized>(
    out: &mut W,
    family: Family,
    stmt: &Stmt,
) -> fmt::Result {
    match stmt {
        Stmt::Addr { dir: d, op, value } => {
            write!(out, "{} {}", family.as_str(), dir(*d))?;
            if *op == Op::Ne {
                out.write_str(" !=")?;
            }
            out.write_str(" ")?;
            match value {
                AddrValue::Ip(ip) => num::ip(out, *ip),
                AddrValue::Net(net) => write_net(out, net),
                AddrValue::Set(name) => write!(out, "@{name}"),
                AddrValue::Anon(items) => {
                    out.write_str("{ ")?;
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.write_str(" , ")?;
                        }
                        match item {
                            AddrItem::Ip(ip) => num::ip(out, *ip)?,
                            AddrItem::Net(net) => write_net(out, net)?,
                        }
                    }
                    out.write_str(" }")
                }
                AddrValue::Cidrs(nets) => {
                    out.write_str("{ ")?;
                    for (i, net) in nets.iter().enumerate() {
                        if i > 0 {
                            out.write_str(",")?;
                        }
                        write_net(out, net)?;
                    }
                    out.write_str(" }")
                }
            }
        }
        Stmt::L4Proto(p) => write!(out, "meta l4proto {}", p.as_str()),
        Stmt::CtStateNew => out.write_str("ct state new"),
        Stmt::FibLocal(d) => write!(out, "fib {} type local", dir(*d)),
        Stmt::Iifname { op, name } => match op {
            Op::Eq => write!(out, "iifname {name}"),
            Op::Ne => write!(out, "iifname != {name}"),
        },
        Stmt::MarkAnd { bits, value } => write!(out, "mark and {bits:#x} == {value}"),
        Stmt::MarkSet { op, bits } => {
            let op = match op {
                MarkOp::Or => "or",
                MarkOp::Xor => "xor",
            };
            write!(out, "mark set mark {op} {bits:#x}")
        }
        Stmt::Vmap { key, map } => {
            for (i, field) in key.iter().enumerate() {
                if i > 0 {
                    out.write_str(" . ")?;
                }
                match field {
                    KeyField::Daddr => write!(out, "{} daddr", family.as_str())?,
                    KeyField::Saddr => write!(out, "{} saddr", family.as_str())?,
                    KeyField::L4Proto => out.write_str("meta l4proto")?,
                    KeyField::ThDport => out.write_str("th dport")?,
                }
            }
            write!(out, " vmap @{map}")
        }
        Stmt::Numgen(verdicts) => {
            out.write_str("numgen random mod ")?;
            num::dec(out, verdicts.len() as u32)?;
            out.write_str(" vmap { ")?;
            for (i, v) in verdicts.iter().enumerate() {
                if i > 0 {
                    out.write_str(" , ")?;
                }
                num::dec(out, i as u32)?;
                out.write_str(" : ")?;
                write_verdict(out, v)?;
            }
            out.write_str(" }")
        }
        Stmt::UpdateSaddr(set) => write!(out, "update @{set} {{ {} saddr }}", family.as_str()),
        Stmt::DnatTo(addr) => {
            out.write_str("dnat to ")?;
            num::socket(out, *addr)
        }
        Stmt::Masquerade { fully_random } => {
            out.write_str("masquerade")?;
            if *fully_random {
                out.write_str(" fully-random")?;
            }
            Ok(())
        }
        Stmt::Verdict(v) => write_verdict(out, v),
    }
}
