//! Transactions as values, on the anchor of knftables' `Transaction`: an ordered
//! list of [`Operation`]s on one table, each on a typed object of the IR. `nft -f`
//! applies a transaction whole or not at all; [`Transaction::len`] is knftables'
//! `NumOperations()`, one operation per line of the text
//! ([`Transaction::write_text`], in [`super::text`]).

use super::names::{Name, NftComment};
use super::objects::{
    BaseChain, Chain, Element, Family, KeyType, KeyValue, Map, MapElement, Rule, Ruleset, Set,
    SetFlag,
};

/// One command of a transaction. Each names its object in the transaction's
/// table; `add` of an object that exists leaves it as it is (for a set, a map or
/// an element, only if it is the same), `flush` empties a chain, set or map,
/// `delete` removes an object that must exist.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// `add table F T [{ comment "C" ; }]`.
    AddTable {
        /// The table's comment.
        comment: Option<NftComment>,
    },
    /// `delete table F T`: the table and everything in it.
    DeleteTable,
    /// `add chain F T NAME [{ type .. hook .. priority .. ; comment "C" ; }]`.
    AddChain {
        /// The chain.
        name: Name,
        /// Its type, hook and priority, for a base chain.
        base: Option<BaseChain>,
        /// Its comment.
        comment: Option<NftComment>,
    },
    /// `flush chain F T NAME`: its rules deleted.
    FlushChain(Name),
    /// `delete chain F T NAME`: refused while a rule or a map element jumps to it.
    DeleteChain(Name),
    /// `add rule F T CHAIN BODY`: appended to the chain.
    AddRule {
        /// The chain.
        chain: Name,
        /// The rule.
        rule: Rule,
    },
    /// `add set F T NAME { type K ; [flags F ;] [timeout Ns ;] [comment "C" ;] }`.
    AddSet {
        /// The set.
        name: Name,
        /// Its key's fields.
        key: Vec<KeyType>,
        /// Its flags.
        flags: Vec<SetFlag>,
        /// How long an element lives, in seconds.
        timeout: Option<u32>,
        /// Its comment.
        comment: Option<NftComment>,
    },
    /// `flush set F T NAME`.
    FlushSet(Name),
    /// `delete set F T NAME`: refused while a rule looks it up.
    DeleteSet(Name),
    /// `add map F T NAME { type K : verdict ; [comment "C" ;] }`.
    AddMap {
        /// The map.
        name: Name,
        /// Its key's fields.
        key: Vec<KeyType>,
        /// Its comment.
        comment: Option<NftComment>,
    },
    /// `flush map F T NAME`.
    FlushMap(Name),
    /// `delete map F T NAME`: refused while a rule looks it up.
    DeleteMap(Name),
    /// `add element F T SET { KEY [comment "C"] }`.
    AddElement {
        /// The set.
        set: Name,
        /// The element.
        element: Element,
    },
    /// `add element F T MAP { KEY [comment "C"] : VERDICT }`: refused if the key
    /// is in the map with another verdict.
    AddMapElement {
        /// The map.
        map: Name,
        /// The element.
        element: MapElement,
    },
    /// `delete element F T SET_OR_MAP { KEY }`.
    DeleteElement {
        /// The set or map.
        set: Name,
        /// The element's key.
        key: Vec<KeyValue>,
    },
}

impl Operation {
    /// `add chain` for `chain`'s name, type and comment (not its rules).
    pub fn add_chain(name: &Name, chain: &Chain) -> Operation {
        Operation::AddChain {
            name: name.clone(),
            base: chain.base,
            comment: chain.comment.clone(),
        }
    }

    /// `add set` for `set`'s type, flags, timeout and comment (not its elements).
    pub fn add_set(name: &Name, set: &Set) -> Operation {
        Operation::AddSet {
            name: name.clone(),
            key: set.key.clone(),
            flags: set.flags.clone(),
            timeout: set.timeout,
            comment: set.comment.clone(),
        }
    }

    /// `add map` for `map`'s type and comment (not its elements).
    pub fn add_map(name: &Name, map: &Map) -> Operation {
        Operation::AddMap {
            name: name.clone(),
            key: map.key.clone(),
            comment: map.comment.clone(),
        }
    }
}

/// Operations on one table, in order: what one `nft -f` applies, all or nothing.
///
/// ```
/// use svcnat::nft::*;
///
/// let mut tx = Transaction::new(Family::Ip, Name::new("kube-proxy")?);
/// let chain = Name::new("endpoint-A")?;
/// tx.push(Operation::AddChain { name: chain.clone(), base: None, comment: None });
/// tx.push(Operation::FlushChain(chain.clone()));
/// tx.push(Operation::DeleteChain(chain));
/// assert_eq!(tx.len(), 3);
/// assert_eq!(
///     tx.to_text(),
///     "add chain ip kube-proxy endpoint-A\n\
///      flush chain ip kube-proxy endpoint-A\n\
///      delete chain ip kube-proxy endpoint-A\n"
/// );
/// # Ok::<(), NftError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    family: Family,
    table: Name,
    operations: Vec<Operation>,
}

impl Transaction {
    /// An empty transaction on the table `family table`.
    pub fn new(family: Family, table: Name) -> Transaction {
        Transaction {
            family,
            table,
            operations: Vec::new(),
        }
    }

    /// The table's family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The table's name.
    pub fn table(&self) -> &Name {
        &self.table
    }

    /// Appends an operation.
    pub fn push(&mut self, op: Operation) {
        self.operations.push(op);
    }

    /// The operations, in order.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// The number of operations (knftables' `NumOperations()`), which is also
    /// the number of lines of the text.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    /// True if there is no operation.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// Writes `chain` whole, as kube-proxy writes a chain it changed: `add chain`,
    /// `flush chain` (the chain may exist, with other rules), then each rule.
    pub fn write_chain(&mut self, name: &Name, chain: &Chain) {
        self.push(Operation::add_chain(name, chain));
        self.push(Operation::FlushChain(name.clone()));
        self.add_rules(name, &chain.rules);
    }

    /// `add rule` for each of `rules`, in order.
    pub fn add_rules(&mut self, chain: &Name, rules: &[Rule]) {
        self.operations
            .extend(rules.iter().map(|rule| Operation::AddRule {
                chain: chain.clone(),
                rule: rule.clone(),
            }));
    }
}

impl Extend<Operation> for Transaction {
    fn extend<I: IntoIterator<Item = Operation>>(&mut self, iter: I) {
        self.operations.extend(iter);
    }
}

/// The whole table as `add` commands, in the order and with the text of
/// [`Ruleset::to_dump`]: the table, chains, sets and maps by name, each chain's
/// rules, then each set's and map's elements.
impl From<&Ruleset> for Transaction {
    fn from(rs: &Ruleset) -> Transaction {
        let mut tx = Transaction::new(rs.family, rs.table.clone());
        let _ = visit_dump::<()>(rs, |item| {
            tx.push(match item {
                Item::Table(comment) => Operation::AddTable {
                    comment: comment.cloned(),
                },
                Item::Chain(name, chain) => Operation::add_chain(name, chain),
                Item::Set(name, set) => Operation::add_set(name, set),
                Item::Map(name, map) => Operation::add_map(name, map),
                Item::Rule(chain, rule) => Operation::AddRule {
                    chain: chain.clone(),
                    rule: rule.clone(),
                },
                Item::Element(set, element) => Operation::AddElement {
                    set: set.clone(),
                    element: element.clone(),
                },
                Item::MapElement(map, element) => Operation::AddMapElement {
                    map: map.clone(),
                    element: element.clone(),
                },
            });
            Ok(())
        });
        tx
    }
}

/// One `add` line of a dump, borrowed from the ruleset.
pub(super) enum Item<'a> {
    Table(Option<&'a NftComment>),
    Chain(&'a Name, &'a Chain),
    Set(&'a Name, &'a Set),
    Map(&'a Name, &'a Map),
    Rule(&'a Name, &'a Rule),
    Element(&'a Name, &'a Element),
    MapElement(&'a Name, &'a MapElement),
}

/// Calls `f` with each line of `rs`'s dump, in knftables' fake `Dump()` order:
/// the table, then chains, sets and maps by name, then each chain's rules, then
/// each set's and map's elements in their order. The one place that order is
/// decided, for [`Ruleset::write_dump`] and for `Transaction::from`.
pub(super) fn visit_dump<'a, E>(
    rs: &'a Ruleset,
    mut f: impl FnMut(Item<'a>) -> Result<(), E>,
) -> Result<(), E> {
    let mut chains: Vec<(&Name, &Chain)> = rs.chains.iter().collect();
    chains.sort_by(|a, b| a.0.cmp(b.0));
    let mut sets: Vec<(&Name, &Set)> = rs.sets.iter().collect();
    sets.sort_by(|a, b| a.0.cmp(b.0));
    let mut maps: Vec<(&Name, &Map)> = rs.maps.iter().collect();
    maps.sort_by(|a, b| a.0.cmp(b.0));
    f(Item::Table(rs.comment.as_ref()))?;
    for &(name, chain) in &chains {
        f(Item::Chain(name, chain))?;
    }
    for &(name, set) in &sets {
        f(Item::Set(name, set))?;
    }
    for &(name, map) in &maps {
        f(Item::Map(name, map))?;
    }
    for &(name, chain) in &chains {
        for rule in &chain.rules {
            f(Item::Rule(name, rule))?;
        }
    }
    for &(name, set) in &sets {
        for element in &set.elements {
            f(Item::Element(name, element))?;
        }
    }
    for &(name, map) in &maps {
        for element in &map.elements {
            f(Item::MapElement(name, element))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use crate::nft::{ChainType, Hook, Stmt, Verdict};

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    /// A table with one of everything the writer spells.
    fn table() -> Ruleset {
        let mut rs = Ruleset::new(
            Family::Ip,
            n("kube-proxy"),
            Some(NftComment::new("rules for kube-proxy").unwrap()),
        );
        rs.chains.insert(
            n("nat-output"),
            Chain {
                base: Some(BaseChain {
                    kind: ChainType::Nat,
                    hook: Hook::Output,
                    priority: -100,
                }),
                comment: None,
                rules: vec![Rule::new(vec![Stmt::Verdict(Verdict::Jump(n("services")))])],
            },
        );
        rs.chains.insert(n("services"), Chain::default());
        let mut aff = Set::new(vec![KeyType::Ipv4Addr], None);
        aff.flags = vec![SetFlag::Dynamic, SetFlag::Timeout];
        aff.timeout = Some(10800);
        aff.elements.push(Element {
            key: vec![KeyValue::Addr("10.0.0.1".parse().unwrap())],
            comment: Some(NftComment::new("a, b").unwrap()),
        });
        rs.sets.insert(n("affinity-X"), aff);
        let mut map = Map::new(
            vec![KeyType::InetProto, KeyType::InetService],
            Some(NftComment::new("NodePort traffic").unwrap()),
        );
        map.elements.push(MapElement {
            key: vec![KeyValue::Proto(Protocol::Tcp), KeyValue::Port(3001)],
            verdict: Verdict::Goto(n("services")),
            comment: None,
        });
        rs.maps.insert(n("service-nodeports"), map);
        rs
    }

    #[test]
    fn a_ruleset_as_a_transaction_is_its_dump() {
        let rs = table();
        let tx = Transaction::from(&rs);
        assert_eq!(tx.to_text(), rs.to_dump());
        assert_eq!(tx.len(), rs.to_dump().lines().count());
        assert_eq!(tx.to_string(), tx.to_text());
    }

    #[test]
    fn every_verb_is_one_line() {
        let rs = table();
        let mut tx = Transaction::new(Family::Ip6, n("kube-proxy"));
        tx.push(Operation::AddTable { comment: None });
        tx.write_chain(&n("nat-output"), &rs.chains["nat-output"]);
        tx.push(Operation::DeleteChain(n("services")));
        tx.push(Operation::add_set(&n("affinity-X"), &rs.sets["affinity-X"]));
        tx.push(Operation::FlushSet(n("affinity-X")));
        tx.push(Operation::DeleteSet(n("affinity-X")));
        tx.push(Operation::add_map(
            &n("service-nodeports"),
            &rs.maps["service-nodeports"],
        ));
        tx.push(Operation::FlushMap(n("service-nodeports")));
        tx.push(Operation::DeleteMap(n("service-nodeports")));
        tx.push(Operation::AddElement {
            set: n("affinity-X"),
            element: rs.sets["affinity-X"].elements[0].clone(),
        });
        tx.push(Operation::AddMapElement {
            map: n("service-nodeports"),
            element: rs.maps["service-nodeports"].elements[0].clone(),
        });
        tx.push(Operation::DeleteElement {
            set: n("service-nodeports"),
            key: vec![KeyValue::Proto(Protocol::Udp), KeyValue::Port(53)],
        });
        tx.push(Operation::DeleteTable);
        assert_eq!(
            tx.to_text(),
            "add table ip6 kube-proxy\n\
             add chain ip6 kube-proxy nat-output { type nat hook output priority -100 ; }\n\
             flush chain ip6 kube-proxy nat-output\n\
             add rule ip6 kube-proxy nat-output jump services\n\
             delete chain ip6 kube-proxy services\n\
             add set ip6 kube-proxy affinity-X { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }\n\
             flush set ip6 kube-proxy affinity-X\n\
             delete set ip6 kube-proxy affinity-X\n\
             add map ip6 kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }\n\
             flush map ip6 kube-proxy service-nodeports\n\
             delete map ip6 kube-proxy service-nodeports\n\
             add element ip6 kube-proxy affinity-X { 10.0.0.1 comment \"a, b\" }\n\
             add element ip6 kube-proxy service-nodeports { tcp . 3001 : goto services }\n\
             delete element ip6 kube-proxy service-nodeports { udp . 53 }\n\
             delete table ip6 kube-proxy\n"
        );
        assert_eq!(tx.len(), 15);
        assert!(!tx.is_empty());
        assert!(Transaction::new(Family::Ip, n("t")).is_empty());
    }
}
