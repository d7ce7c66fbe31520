//! [`NftFake`]: nftables tables in memory, applying transactions as the kernel
//! does (Linux 6.18 with nft 1.0.6, checked case by case against it in
//! `tests/it/nft_exec.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{NftExecError, NftExecutor, NftRefusal, RefusalKind};
use crate::nft::{
    AddrValue, BaseChain, Chain, Element, Family, KeyField, KeyType, KeyValue, Map, MapElement,
    Name, NftComment, Operation, Rule, Ruleset, Set, Stmt, Transaction, Verdict,
};

/// nftables tables in memory, for tests without root, on the anchor of
/// knftables' fake.
///
/// [`run`](NftExecutor::run) applies a transaction to a copy of its table and
/// keeps the copy only if every operation succeeded, as the kernel commits a
/// transaction whole or not at all. An operation is refused as the kernel (or
/// nft, before it) refuses it, with the [`RefusalKind`] and the operation's index:
///
/// - anything in a table that does not exist, a flush or delete of a missing
///   chain, set, map or element ([`RefusalKind::NotFound`]);
/// - a rule or map element that jumps or goes to a missing chain
///   ([`RefusalKind::NotFound`]) or to a base chain
///   ([`RefusalKind::Unsupported`]); a rule that looks up a missing set
///   (`@name`, [`RefusalKind::NotFound`]), or a set or map whose key is not an
///   address of the table's family, or uses a set as a verdict map
///   ([`RefusalKind::Invalid`]);
/// - an element whose key does not fit its set's or map's type, a set's element
///   added to a map or the reverse, an address of the other family in a rule, a
///   map looked up with a key of another type ([`RefusalKind::Invalid`]);
/// - `add` of a base chain that exists with another hook or priority
///   ([`RefusalKind::Unsupported`]);
/// - `add` of a chain that exists with another type, of a set
///   with another type or flags, of a map with another type, of a set or map
///   where the other kind has the name, of an element whose key is in the map
///   with another verdict ([`RefusalKind::Exists`]); the same `add` again
///   changes nothing (not even the comment: the kernel keeps the first), except
///   a set's timeout, which the kernel updates;
/// - `delete` of a chain still referenced by a rule (its own included) or a map
///   element, or of a set or map a rule looks up ([`RefusalKind::Busy`]); a
///   chain's own rules go with it;
/// - at the end, chains that jump to each other in a loop a base chain reaches
///   ([`RefusalKind::Loop`], named at the transaction's last rule or element).
///
/// Every transaction [`run`](NftExecutor::run) is handed is kept
/// ([`NftFake::transactions`], [`NftFake::last_transaction`], as knftables'
/// `LastTransaction`, refused or not), so tests can count operations. Listings
/// list what the tables hold; [`list_table`](NftExecutor::list_table) and
/// [`NftFake::dump`] give [`Ruleset::to_dump`]'s text, elements in the order they
/// were added.
///
/// ```
/// use svcnat::exec::{NftExecutor, NftFake, RefusalKind};
/// use svcnat::nft::*;
///
/// let table = Name::new("kube-proxy")?;
/// let mut fake = NftFake::new();
/// let mut tx = Transaction::new(Family::Ip, table.clone());
/// tx.push(Operation::AddTable { comment: None });
/// tx.push(Operation::AddChain { name: Name::new("a")?, base: None, comment: None });
/// tx.push(Operation::AddRule {
///     chain: Name::new("a")?,
///     rule: Rule::new(vec![Stmt::Verdict(Verdict::Goto(Name::new("b")?))]),
/// });
/// let refused = fake.run(&tx).unwrap_err();
/// assert_eq!(refused.refusal().unwrap().kind, RefusalKind::NotFound);
/// assert_eq!(refused.refusal().unwrap().line(), Some(3));
/// assert_eq!(fake.dump(), ""); // all or nothing
/// # Ok::<(), NftError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct NftFake {
    tables: BTreeMap<(Family, Name), Ruleset>,
    transactions: Vec<Transaction>,
}

impl NftFake {
    /// No tables.
    pub fn new() -> Self {
        NftFake::default()
    }

    /// The table `family name`, if it exists.
    pub fn table(&self, family: Family, name: &Name) -> Option<&Ruleset> {
        self.tables.get(&(family, name.clone()))
    }

    /// Puts a table in place as it is (replacing one of the same family and
    /// name), as if another program had written it; nothing is checked.
    pub fn set_table(&mut self, table: Ruleset) {
        self.tables
            .insert((table.family, table.table.clone()), table);
    }

    /// Takes a table away, as if another program had deleted it.
    pub fn remove_table(&mut self, family: Family, name: &Name) -> Option<Ruleset> {
        self.tables.remove(&(family, name.clone()))
    }

    /// Every table's dump ([`Ruleset::to_dump`]), by family and then name.
    pub fn dump(&self) -> String {
        self.tables.values().map(Ruleset::to_dump).collect()
    }

    /// Every transaction [`run`](NftExecutor::run) was handed, in order, the
    /// refused ones too.
    pub fn transactions(&self) -> &[Transaction] {
        &self.transactions
    }

    /// The last transaction [`run`](NftExecutor::run) was handed.
    pub fn last_transaction(&self) -> Option<&Transaction> {
        self.transactions.last()
    }

    /// The table as `tx` would leave it (`None`: no table), or the refusal.
    fn apply(&self, tx: &Transaction) -> Result<Option<Ruleset>, NftRefusal> {
        let mut table = self.table(tx.family(), tx.table()).cloned();
        let mut last_edge = None;
        for (i, op) in tx.operations().iter().enumerate() {
            let refuse = |(kind, message): (RefusalKind, String)| NftRefusal {
                kind,
                index: Some(i),
                command: tx.to_text().lines().nth(i).map(str::to_owned),
                message,
            };
            apply_op(&mut table, tx, op).map_err(refuse)?;
            if matches!(
                op,
                Operation::AddRule { .. } | Operation::AddMapElement { .. }
            ) {
                last_edge = Some(i);
            }
        }
        if let Some(t) = &table
            && let Some(chain) = loop_from_base(t)
        {
            return Err(NftRefusal {
                kind: RefusalKind::Loop,
                index: last_edge,
                command: last_edge.and_then(|i| tx.to_text().lines().nth(i).map(str::to_owned)),
                message: format!("chain {chain} is in a loop a base chain reaches"),
            });
        }
        Ok(table)
    }

    fn table_of(&self, family: Family, name: &Name) -> Result<&Ruleset, NftExecError> {
        self.table(family, name)
            .ok_or_else(|| not_found(format!("no table {} {name}", family.as_str())))
    }
}

fn not_found(message: String) -> NftExecError {
    NftExecError::Refused(NftRefusal {
        kind: RefusalKind::NotFound,
        index: None,
        command: None,
        message,
    })
}

impl NftExecutor for NftFake {
    fn run(&mut self, tx: &Transaction) -> Result<(), NftExecError> {
        self.transactions.push(tx.clone());
        let after = self.apply(tx).map_err(NftExecError::Refused)?;
        let key = (tx.family(), tx.table().clone());
        match after {
            Some(t) => self.tables.insert(key, t),
            None => self.tables.remove(&key),
        };
        Ok(())
    }

    fn check(&mut self, tx: &Transaction) -> Result<(), NftExecError> {
        self.apply(tx).map(drop).map_err(NftExecError::Refused)
    }

    fn list_chains(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
        Ok(sorted_names(self.table(family, table).map(|t| &t.chains)))
    }

    fn list_sets(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
        Ok(sorted_names(self.table(family, table).map(|t| &t.sets)))
    }

    fn list_maps(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
        Ok(sorted_names(self.table(family, table).map(|t| &t.maps)))
    }

    fn list_set_elements(
        &mut self,
        family: Family,
        table: &Name,
        set: &Name,
    ) -> Result<Vec<Element>, NftExecError> {
        let t = self.table_of(family, table)?;
        t.sets
            .get(set)
            .map(|s| s.elements.clone())
            .ok_or_else(|| not_found(format!("no set {set}")))
    }

    fn list_map_elements(
        &mut self,
        family: Family,
        table: &Name,
        map: &Name,
    ) -> Result<Vec<MapElement>, NftExecError> {
        let t = self.table_of(family, table)?;
        t.maps
            .get(map)
            .map(|m| m.elements.clone())
            .ok_or_else(|| not_found(format!("no map {map}")))
    }

    fn list_table(&mut self, family: Family, table: &Name) -> Result<String, NftExecError> {
        Ok(self.table_of(family, table)?.to_dump())
    }
}

fn sorted_names<V>(objects: Option<&indexmap::IndexMap<Name, V>>) -> Vec<Name> {
    let mut names: Vec<Name> = objects
        .into_iter()
        .flat_map(|o| o.keys().cloned())
        .collect();
    names.sort();
    names
}

/// A refusal's kind and message.
type Refused = (RefusalKind, String);

fn refused<T>(kind: RefusalKind, message: String) -> Result<T, Refused> {
    Err((kind, message))
}

/// Applies one operation to the table (`None`: it does not exist).
fn apply_op(table: &mut Option<Ruleset>, tx: &Transaction, op: &Operation) -> Result<(), Refused> {
    let family = tx.family();
    match op {
        Operation::AddTable { comment } => {
            if table.is_none() {
                *table = Some(Ruleset::new(family, tx.table().clone(), comment.clone()));
            }
            return Ok(());
        }
        Operation::DeleteTable if table.is_some() => {
            *table = None;
            return Ok(());
        }
        _ => {}
    }
    let Some(t) = table.as_mut() else {
        return refused(
            RefusalKind::NotFound,
            format!("no table {} {}", family.as_str(), tx.table()),
        );
    };
    match op {
        Operation::AddTable { .. } | Operation::DeleteTable => Ok(()),
        Operation::AddChain {
            name,
            base,
            comment,
        } => add_chain(t, name, *base, comment),
        Operation::FlushChain(name) => {
            chain_mut(t, name)?.rules.clear();
            Ok(())
        }
        Operation::DeleteChain(name) => delete_chain(t, name),
        Operation::AddRule { chain, rule } => {
            check_rule(t, rule)?;
            chain_mut(t, chain)?.rules.push(rule.clone());
            Ok(())
        }
        Operation::AddSet {
            name,
            key,
            flags,
            timeout,
            comment,
        } => {
            if t.maps.contains_key(name) {
                return refused(RefusalKind::Exists, format!("{name} is a map"));
            }
            match t.sets.get_mut(name) {
                Some(s) if s.key != *key || s.flags != *flags => refused(
                    RefusalKind::Exists,
                    format!("set {name} exists with another type or flags"),
                ),
                Some(s) => {
                    s.timeout = *timeout;
                    Ok(())
                }
                None => {
                    let mut set = Set::new(key.clone(), comment.clone());
                    set.flags.clone_from(flags);
                    set.timeout = *timeout;
                    t.sets.insert(name.clone(), set);
                    Ok(())
                }
            }
        }
        Operation::AddMap { name, key, comment } => {
            if t.sets.contains_key(name) {
                return refused(RefusalKind::Exists, format!("{name} is a set"));
            }
            match t.maps.get(name) {
                Some(m) if m.key != *key => refused(
                    RefusalKind::Exists,
                    format!("map {name} exists with another type"),
                ),
                Some(_) => Ok(()),
                None => {
                    t.maps
                        .insert(name.clone(), Map::new(key.clone(), comment.clone()));
                    Ok(())
                }
            }
        }
        Operation::FlushSet(name) => {
            set_mut(t, name)?.elements.clear();
            Ok(())
        }
        Operation::FlushMap(name) => {
            map_mut(t, name)?.elements.clear();
            Ok(())
        }
        // nft deletes by name whichever of the two holds it.
        Operation::DeleteSet(name) | Operation::DeleteMap(name) => delete_set(t, name),
        Operation::AddElement { set, element } => {
            if t.maps.contains_key(set) {
                return refused(RefusalKind::Invalid, format!("{set} is a map"));
            }
            let s = set_mut(t, set)?;
            fits(&element.key, &s.key)?;
            if !s.elements.iter().any(|e| e.key == element.key) {
                s.elements.push(element.clone());
            }
            Ok(())
        }
        Operation::AddMapElement { map, element } => {
            if t.sets.contains_key(map) {
                return refused(RefusalKind::Invalid, format!("{map} is a set"));
            }
            check_verdict(t, &element.verdict)?;
            let m = map_mut(t, map)?;
            fits(&element.key, &m.key)?;
            match m.elements.iter().find(|e| e.key == element.key) {
                Some(e) if e.verdict != element.verdict => refused(
                    RefusalKind::Exists,
                    format!("the key is in map {map} with another verdict"),
                ),
                Some(_) => Ok(()),
                None => {
                    m.elements.push(element.clone());
                    Ok(())
                }
            }
        }
        Operation::DeleteElement { set, key } => {
            let elements_of = |t: &mut Ruleset| -> Option<(Vec<KeyType>, Vec<Vec<KeyValue>>)> {
                if let Some(s) = t.sets.get(set) {
                    return Some((
                        s.key.clone(),
                        s.elements.iter().map(|e| e.key.clone()).collect(),
                    ));
                }
                let m = t.maps.get(set)?;
                Some((
                    m.key.clone(),
                    m.elements.iter().map(|e| e.key.clone()).collect(),
                ))
            };
            let Some((types, keys)) = elements_of(t) else {
                return refused(RefusalKind::NotFound, format!("no set or map {set}"));
            };
            fits(key, &types)?;
            let Some(at) = keys.iter().position(|k| k == key) else {
                return refused(RefusalKind::NotFound, format!("no such element in {set}"));
            };
            if let Some(s) = t.sets.get_mut(set) {
                s.elements.remove(at);
            } else if let Some(m) = t.maps.get_mut(set) {
                m.elements.remove(at);
            }
            Ok(())
        }
    }
}

fn add_chain(
    t: &mut Ruleset,
    name: &Name,
    base: Option<BaseChain>,
    comment: &Option<NftComment>,
) -> Result<(), Refused> {
    match (t.chains.get(name).map(|c| c.base), base) {
        // `add chain NAME` of a base chain is taken as it is (kube-proxy's add
        // and delete of its base chains relies on it).
        (Some(_), None) => Ok(()),
        (Some(Some(old)), Some(new)) if old.kind == new.kind && old != new => refused(
            RefusalKind::Unsupported,
            format!("chain {name} cannot change its hook or priority"),
        ),
        (Some(old), Some(new)) if old != Some(new) => refused(
            RefusalKind::Exists,
            format!("chain {name} exists with another type"),
        ),
        (Some(_), Some(_)) => Ok(()),
        (None, _) => {
            t.chains.insert(
                name.clone(),
                Chain {
                    base,
                    comment: comment.clone(),
                    rules: Vec::new(),
                },
            );
            Ok(())
        }
    }
}

fn chain_mut<'a>(t: &'a mut Ruleset, name: &Name) -> Result<&'a mut Chain, Refused> {
    t.chains
        .get_mut(name)
        .ok_or_else(|| (RefusalKind::NotFound, format!("no chain {name}")))
}

fn set_mut<'a>(t: &'a mut Ruleset, name: &Name) -> Result<&'a mut Set, Refused> {
    t.sets
        .get_mut(name)
        .ok_or_else(|| (RefusalKind::NotFound, format!("no set {name}")))
}

fn map_mut<'a>(t: &'a mut Ruleset, name: &Name) -> Result<&'a mut Map, Refused> {
    t.maps
        .get_mut(name)
        .ok_or_else(|| (RefusalKind::NotFound, format!("no map {name}")))
}

fn delete_chain(t: &mut Ruleset, name: &Name) -> Result<(), Refused> {
    if !t.chains.contains_key(name) {
        return refused(RefusalKind::NotFound, format!("no chain {name}"));
    }
    let by_rule = t.chains.iter().find(|(_, c)| {
        c.rules
            .iter()
            .any(|r| r.stmts.iter().any(|s| s.chains().any(|c| c == name)))
    });
    if let Some((from, _)) = by_rule {
        return refused(
            RefusalKind::Busy,
            format!("chain {name} is jumped to from chain {from}"),
        );
    }
    let by_element = t
        .maps
        .iter()
        .find(|(_, m)| m.elements.iter().any(|e| e.verdict.chain() == Some(name)));
    if let Some((map, _)) = by_element {
        return refused(
            RefusalKind::Busy,
            format!("chain {name} is the verdict of an element of map {map}"),
        );
    }
    t.chains.shift_remove(name);
    Ok(())
}

fn delete_set(t: &mut Ruleset, name: &Name) -> Result<(), Refused> {
    if !t.sets.contains_key(name) && !t.maps.contains_key(name) {
        return refused(RefusalKind::NotFound, format!("no set or map {name}"));
    }
    let user = t.chains.iter().find(|(_, c)| {
        c.rules
            .iter()
            .any(|r| r.stmts.iter().any(|s| s.set() == Some(name)))
    });
    if let Some((chain, _)) = user {
        return refused(
            RefusalKind::Busy,
            format!("{name} is looked up by a rule of chain {chain}"),
        );
    }
    t.sets.shift_remove(name);
    t.maps.shift_remove(name);
    Ok(())
}

/// A verdict's chain must exist and not be a base chain.
fn check_verdict(t: &Ruleset, verdict: &Verdict) -> Result<(), Refused> {
    let Some(chain) = verdict.chain() else {
        return Ok(());
    };
    match t.chains.get(chain) {
        None => refused(RefusalKind::NotFound, format!("no chain {chain}")),
        Some(c) if c.base.is_some() => {
            refused(RefusalKind::Unsupported, format!("{chain} is a base chain"))
        }
        Some(_) => Ok(()),
    }
}

/// What nft and the kernel check of a rule: the chains it runs, the sets and
/// maps it looks up (their kind and key), the family of its addresses.
fn check_rule(t: &Ruleset, rule: &Rule) -> Result<(), Refused> {
    let addr = [t.family.addr_type()];
    for stmt in &rule.stmts {
        if let Stmt::Numgen(verdicts) = stmt {
            for v in verdicts {
                check_verdict(t, v)?;
            }
        }
        if let Stmt::Verdict(v) = stmt {
            check_verdict(t, v)?;
        }
        match stmt {
            // A lookup takes a map as well as a set (of the same key).
            Stmt::Addr {
                value: AddrValue::Set(name),
                ..
            } => {
                let key = (t.sets.get(name).map(|s| &s.key)).or(t.maps.get(name).map(|m| &m.key));
                lookup_key(name, key, &addr)?;
            }
            Stmt::UpdateSaddr(name) => lookup_key(name, t.sets.get(name).map(|s| &s.key), &addr)?,
            Stmt::Vmap { key, map } => match t.maps.get(map) {
                None if t.sets.contains_key(map) => {
                    return refused(RefusalKind::Invalid, format!("{map} is not a map"));
                }
                None => return refused(RefusalKind::NotFound, format!("no map {map}")),
                Some(m) => {
                    let looked_up: Vec<KeyType> = key
                        .iter()
                        .map(|f| match f {
                            KeyField::Daddr | KeyField::Saddr => t.family.addr_type(),
                            KeyField::L4Proto => KeyType::InetProto,
                            KeyField::ThDport => KeyType::InetService,
                        })
                        .collect();
                    if looked_up != m.key {
                        return refused(
                            RefusalKind::Invalid,
                            format!("map {map} is looked up with a key of another type"),
                        );
                    }
                }
            },
            _ => {}
        }
        for ip in stmt_addresses(stmt) {
            if ip.is_ipv4() != (t.family == Family::Ip) {
                return refused(
                    RefusalKind::Invalid,
                    format!("{ip} is not an address of the table's family"),
                );
            }
        }
    }
    Ok(())
}

/// A set (or map) looked up by address: it must exist, keyed by an address
/// of the table's family.
fn lookup_key(name: &Name, key: Option<&Vec<KeyType>>, addr: &[KeyType]) -> Result<(), Refused> {
    match key {
        None => refused(RefusalKind::NotFound, format!("no set {name}")),
        Some(key) if key != addr => refused(
            RefusalKind::Invalid,
            format!("{name}'s type is not an address of the table's family"),
        ),
        Some(_) => Ok(()),
    }
}

/// The literal addresses of a statement.
fn stmt_addresses(stmt: &Stmt) -> Vec<IpAddr> {
    use crate::nft::AddrItem;
    match stmt {
        Stmt::Addr { value, .. } => match value {
            AddrValue::Ip(ip) => vec![*ip],
            AddrValue::Net(net) => vec![net.addr()],
            AddrValue::Anon(items) => items
                .iter()
                .map(|i| match i {
                    AddrItem::Ip(ip) => *ip,
                    AddrItem::Net(net) => net.addr(),
                })
                .collect(),
            AddrValue::Cidrs(nets) => nets.iter().map(|n| n.addr()).collect(),
            _ => Vec::new(),
        },
        Stmt::DnatTo(to) => vec![to.ip()],
        _ => Vec::new(),
    }
}

/// An element's key must have one value of the right type per field.
fn fits(key: &[KeyValue], types: &[KeyType]) -> Result<(), Refused> {
    let ok = key.len() == types.len()
        && key.iter().zip(types).all(|(v, t)| match (v, t) {
            (KeyValue::Addr(ip), KeyType::Ipv4Addr) => ip.is_ipv4(),
            (KeyValue::Addr(ip), KeyType::Ipv6Addr) => ip.is_ipv6(),
            (KeyValue::Proto(_), KeyType::InetProto) => true,
            (KeyValue::Port(_), KeyType::InetService) => true,
            _ => false,
        });
    if ok {
        Ok(())
    } else {
        refused(
            RefusalKind::Invalid,
            format!("the key {key:?} does not fit the type {types:?}"),
        )
    }
}

/// A chain in a loop of jumps, gotos and verdict-map elements that a base chain
/// reaches, if there is one.
fn loop_from_base(t: &Ruleset) -> Option<Name> {
    fn targets<'a>(t: &'a Ruleset, chain: &'a Chain) -> Vec<&'a Name> {
        let mut to = BTreeSet::new();
        for stmt in chain.rules.iter().flat_map(|r| &r.stmts) {
            to.extend(stmt.chains());
            if let Stmt::Vmap { map, .. } = stmt
                && let Some(m) = t.maps.get(map)
            {
                to.extend(m.elements.iter().filter_map(|e| e.verdict.chain()));
            }
        }
        to.into_iter().collect()
    }
    // Depth-first, with the chains on the current path and those done.
    let mut done: BTreeSet<&Name> = BTreeSet::new();
    for (root, _) in t.chains.iter().filter(|(_, c)| c.base.is_some()) {
        let mut path: Vec<(&Name, Vec<&Name>)> = Vec::new();
        if done.contains(root) {
            continue;
        }
        path.push((root, targets(t, &t.chains[root])));
        while let Some((_, next)) = path.last_mut() {
            match next.pop() {
                None => {
                    let (finished, _) = path.pop().expect("not empty");
                    done.insert(finished);
                }
                Some(to) if path.iter().any(|(on, _)| *on == to) => return Some(to.clone()),
                Some(to) if done.contains(to) => {}
                Some(to) => {
                    let more = t.chains.get(to).map(|c| targets(t, c));
                    path.push((to, more.unwrap_or_default()));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn chain(name: &str) -> Operation {
        Operation::AddChain {
            name: n(name),
            base: None,
            comment: None,
        }
    }

    fn rule(chain: &str, stmt: Stmt) -> Operation {
        Operation::AddRule {
            chain: n(chain),
            rule: Rule::new(vec![stmt]),
        }
    }

    fn tx(ops: Vec<Operation>) -> Transaction {
        let mut tx = Transaction::new(Family::Ip, n("t"));
        tx.extend(ops);
        tx
    }

    fn base() -> Operation {
        Operation::AddChain {
            name: n("b"),
            base: Some(BaseChain {
                kind: crate::nft::ChainType::Filter,
                hook: crate::nft::Hook::Input,
                priority: 0,
            }),
            comment: None,
        }
    }

    #[test]
    fn a_loop_through_numgen_is_refused_at_the_last_rule() {
        let mut fake = NftFake::new();
        let looped = tx(vec![
            Operation::AddTable { comment: None },
            base(),
            chain("x"),
            chain("y"),
            rule("b", Stmt::Verdict(Verdict::Jump(n("x")))),
            rule(
                "x",
                Stmt::numgen(vec![Verdict::Goto(n("y")), Verdict::Drop]).unwrap(),
            ),
            rule("y", Stmt::Verdict(Verdict::Jump(n("x")))),
            chain("z"),
        ]);
        let e = fake.run(&looped).unwrap_err();
        let r = e.refusal().unwrap();
        assert_eq!((r.kind, r.index), (RefusalKind::Loop, Some(6)));
        assert!(r.message.contains("loop"), "{e}");
        // Refused transactions are kept too; checks are not.
        assert_eq!(fake.transactions().len(), 1);
        assert!(fake.check(&looped).is_err());
        assert_eq!(fake.transactions().len(), 1);
        assert_eq!(fake.dump(), "");
    }

    #[test]
    fn tables_put_in_place_and_taken_away() {
        let mut fake = NftFake::new();
        let mut rs = Ruleset::new(Family::Ip6, n("kube-proxy"), None);
        rs.chains.insert(n("c"), Chain::default());
        fake.set_table(rs.clone());
        assert_eq!(fake.table(Family::Ip6, &n("kube-proxy")), Some(&rs));
        assert_eq!(fake.dump(), rs.to_dump());
        assert_eq!(
            fake.list_chains(Family::Ip6, &n("kube-proxy")).unwrap(),
            [n("c")]
        );
        assert!(
            fake.list_chains(Family::Ip, &n("kube-proxy"))
                .unwrap()
                .is_empty()
        );
        assert_eq!(fake.remove_table(Family::Ip6, &n("kube-proxy")), Some(rs));
        assert_eq!(fake.dump(), "");
        assert!(fake.last_transaction().is_none());
    }
}
