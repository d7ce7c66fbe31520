//! The containers: [`Rule`], [`Chain`], [`TableRules`] and [`Ruleset`], and the
//! [`Table`] and [`Policy`] names they use.

use std::fmt;
use std::str::FromStr;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::{ChainName, Comment, Match, Target, restore};
use crate::model::{IpFamily, ParseValueError};

/// An iptables table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Table {
    /// `filter`.
    Filter,
    /// `nat`.
    Nat,
    /// `mangle`.
    Mangle,
    /// `raw`.
    Raw,
    /// `security`.
    Security,
}

impl Table {
    /// The table's name as iptables writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
            Table::Mangle => "mangle",
            Table::Raw => "raw",
            Table::Security => "security",
        }
    }

    /// The table's built-in chains, in the order `iptables-save` lists them.
    ///
    /// ```
    /// use svcnat::ruleset::Table;
    /// assert_eq!(Table::Raw.builtin_chains(), ["PREROUTING", "OUTPUT"]);
    /// ```
    pub fn builtin_chains(self) -> &'static [&'static str] {
        match self {
            Table::Filter | Table::Security => &["INPUT", "FORWARD", "OUTPUT"],
            Table::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
            Table::Mangle => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
            Table::Raw => &["PREROUTING", "OUTPUT"],
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads a table's name as iptables writes it (`filter`, `nat`, `mangle`, `raw`,
/// `security`; iptables' table names are lower-case only).
///
/// ```
/// use svcnat::ruleset::Table;
/// assert_eq!("nat".parse(), Ok(Table::Nat));
/// assert!("NAT".parse::<Table>().is_err());
/// ```
impl FromStr for Table {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "filter" => Ok(Table::Filter),
            "nat" => Ok(Table::Nat),
            "mangle" => Ok(Table::Mangle),
            "raw" => Ok(Table::Raw),
            "security" => Ok(Table::Security),
            _ => Err(ParseValueError::new(
                s,
                "a table (filter, nat, mangle, raw or security)",
            )),
        }
    }
}

/// A rule's matches: a vector that keeps up to three inline, as most of the
/// rules a large cluster has (endpoint jumps, DNAT, hairpin masquerade) need no
/// heap allocation for their matches. Kept inside the crate: [`Rule::matches`]
/// shows them as a slice.
pub(crate) type Matches = SmallVec<[Match; 3]>;

/// One rule: matches in order, then an optional target (a rule without a target
/// only counts packets, like kube-proxy's "will be dropped" marker rule).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Rule {
    /// The matches, printed in this order (up to three stored inline); read
    /// with [`Rule::matches`], added with [`Rule::with`] and [`Rule::push`].
    pub(crate) matches: Matches,
    /// The target.
    pub target: Option<Target>,
}

impl Rule {
    /// A rule with no matches and no target; add them with the builder methods.
    pub fn new() -> Self {
        Rule::default()
    }

    /// Adds a match.
    pub fn with(mut self, m: Match) -> Self {
        self.matches.push(m);
        self
    }

    /// The matches, in the order they are printed.
    pub fn matches(&self) -> &[Match] {
        &self.matches
    }

    /// Adds a match in place.
    pub fn push(&mut self, m: Match) {
        self.matches.push(m);
    }

    /// Adds a match if it is `Some`.
    pub fn with_opt(mut self, m: Option<Match>) -> Self {
        self.push_opt(m);
        self
    }

    /// Adds a match in place if it is `Some`.
    pub(crate) fn push_opt(&mut self, m: Option<Match>) {
        if let Some(m) = m {
            self.matches.push(m);
        }
    }

    /// Sets the target.
    pub fn to(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    /// The rule without the matches `drop` takes: its comments, say, to
    /// compare what two rules do.
    pub(crate) fn without(&self, drop: impl Fn(&Match) -> bool) -> Rule {
        Rule {
            matches: self.matches.iter().filter(|m| !drop(m)).cloned().collect(),
            target: self.target.clone(),
        }
    }

    /// The chain this rule jumps or goes to, if any.
    pub fn jump_target(&self) -> Option<&ChainName> {
        match &self.target {
            Some(Target::Jump(c) | Target::Goto(c)) => Some(c),
            _ => None,
        }
    }

    /// The name this rule jumps or goes to, typed or as written: the parser keeps
    /// `-j NAME` as text where it cannot know NAME to be a chain (a restore that
    /// does not declare it). A target with options (`-j DNAT …`) names none.
    pub(crate) fn target_name(&self) -> Option<&str> {
        match &self.target {
            Some(Target::Jump(c) | Target::Goto(c)) => Some(c.as_str()),
            Some(Target::Other(raw)) => {
                let text = raw.as_str();
                text.strip_prefix(super::flag::JUMP)
                    .or_else(|| text.strip_prefix("-g "))
                    .filter(|name| !name.contains(' '))
            }
            _ => None,
        }
    }

    /// The rule's comment, if it has one.
    pub fn comment(&self) -> Option<&Comment> {
        self.matches.iter().find_map(|m| match m {
            Match::Comment(c) => Some(c),
            _ => None,
        })
    }
}

impl fmt::Display for Rule {
    /// The rule's arguments after `-A CHAIN`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

impl Rule {
    /// Writes the rule's arguments after `-A CHAIN`.
    pub(crate) fn write_to<W: fmt::Write>(&self, f: &mut W) -> fmt::Result {
        let mut first = true;
        for m in &self.matches {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            m.write_to(f)?;
        }
        if let Some(t) = &self.target {
            if !first {
                f.write_str(" ")?;
            }
            t.write_to(f)?;
        }
        Ok(())
    }
}

/// A built-in chain's policy (`:INPUT ACCEPT [0:0]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Policy {
    /// `ACCEPT`.
    Accept,
    /// `DROP`.
    Drop,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Accept => "ACCEPT",
            Policy::Drop => "DROP",
        })
    }
}

/// A chain and its rules, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// The chain's name.
    pub name: ChainName,
    /// The policy of a built-in chain; `None` for a user chain (`-`).
    pub policy: Option<Policy>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

impl Chain {
    /// An empty user chain.
    pub fn new(name: ChainName) -> Self {
        Chain::with_rules(name, Vec::new())
    }

    /// A user chain with these rules.
    pub fn with_rules(name: ChainName, rules: Vec<Rule>) -> Self {
        Chain {
            name,
            policy: None,
            rules,
        }
    }
}

/// One table's chains, in the order they are declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRules {
    /// The table.
    pub table: Table,
    /// The chains, by name, in declaration order.
    pub chains: IndexMap<ChainName, Chain>,
}

impl TableRules {
    /// An empty table.
    pub fn new(table: Table) -> Self {
        TableRules {
            table,
            chains: IndexMap::new(),
        }
    }

    /// The chain with this name, created (empty, at the end) if missing.
    pub fn chain_mut(&mut self, name: &ChainName) -> &mut Chain {
        self.chains
            .entry(name.clone())
            .or_insert_with(|| Chain::new(name.clone()))
    }

    /// The chain with this name.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.get(name)
    }

    /// Appends a rule to a chain, creating the chain if needed.
    pub fn append(&mut self, chain: &ChainName, rule: Rule) {
        self.chain_mut(chain).rules.push(rule);
    }
}

/// A family's rules: the tables in the order they are written (filter, then nat).
///
/// Displayed as its `iptables-restore` text, as [`crate::render`] writes it:
///
/// ```
/// use svcnat::model::IpFamily;
/// use svcnat::ruleset::{ChainName, Rule, Ruleset, Table, TableRules, Target};
/// let mut nat = TableRules::new(Table::Nat);
/// nat.append(&ChainName::new("MY-CHAIN")?, Rule::new().to(Target::Return));
/// let ruleset = Ruleset { family: IpFamily::Ipv4, tables: vec![nat] };
/// assert_eq!(ruleset.to_string(), svcnat::render::to_string(&ruleset));
/// assert_eq!(ruleset.to_string(), "*nat\n:MY-CHAIN - [0:0]\n-A MY-CHAIN -j RETURN\nCOMMIT\n");
/// # Ok::<(), svcnat::ruleset::IrError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    /// The family (decides between `iptables-restore` and `ip6tables-restore`).
    pub family: IpFamily,
    /// The tables, in order.
    pub tables: Vec<TableRules>,
}

impl Ruleset {
    /// The rules of one table.
    pub fn table(&self, table: Table) -> Option<&TableRules> {
        self.tables.iter().find(|t| t.table == table)
    }

    /// One chain of one table.
    pub fn chain(&self, table: Table, chain: &str) -> Option<&Chain> {
        self.table(table)?.chain(chain)
    }

    /// The number of rules in all tables.
    pub fn rule_count(&self) -> usize {
        self.tables
            .iter()
            .flat_map(|t| t.chains.values())
            .map(|c| c.rules.len())
            .sum()
    }
}

impl fmt::Display for Ruleset {
    /// The `iptables-restore` text, as [`crate::render::write_fmt`] writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        restore::ruleset(f, self)
    }
}

/// A rule in a built-in chain that sends packets into svcnat's chains. kube-proxy
/// keeps these out of its restore payload and inserts each one at the top of its
/// chain (`-I`) if missing, on full syncs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JumpRule {
    /// The table.
    pub table: Table,
    /// The built-in chain (`PREROUTING`, `INPUT`, …).
    pub chain: ChainName,
    /// The rule; its target jumps to a chain of the ruleset.
    pub rule: Rule,
}
