//! Executors that do not touch the system: [`DryRun`] and [`Recorder`].

use std::collections::BTreeMap;

use indexmap::IndexMap;

use super::{ExecError, Executor, RestoreOptions, SyncLock};
use crate::flows::StaleFlow;
use crate::model::IpFamily;
use crate::parse::{Op, Operation, parse_restore_as};
use crate::ruleset::restore::{self, RuleLine};
use crate::ruleset::{ChainName, JumpRule, NfacctCounter, Policy, Rule, Table};

/// Keeps every payload it is handed and applies nothing. `save` returns empty
/// tables, so a sync through it deletes no stale chains, and the drift check
/// finds every rule in place.
#[derive(Debug, Default, Clone)]
pub struct DryRun {
    /// The restore payloads, in order.
    pub payloads: Vec<(IpFamily, String)>,
    /// The jump rules it was asked to ensure.
    pub jumps: Vec<(IpFamily, JumpRule)>,
    /// The nfacct counters it was asked to ensure, each once, in the order first
    /// asked for: the counters the kernel would need.
    pub counters: Vec<NfacctCounter>,
}

impl Executor for DryRun {
    fn restore(
        &mut self,
        family: IpFamily,
        payload: &str,
        _: RestoreOptions,
    ) -> Result<(), ExecError> {
        self.payloads.push((family, payload.to_owned()));
        Ok(())
    }

    fn save(&mut self, _: IpFamily, _: Table) -> Result<String, ExecError> {
        Ok(String::new())
    }

    /// Nothing: a dry run has no tables to drift from.
    fn first_missing_rule(
        &mut self,
        _: IpFamily,
        _: &[JumpRule],
    ) -> Result<Option<usize>, ExecError> {
        Ok(None)
    }

    fn ensure_jump(&mut self, family: IpFamily, jump: &JumpRule) -> Result<(), ExecError> {
        self.jumps.push((family, jump.clone()));
        Ok(())
    }

    fn ensure_nfacct(&mut self, counters: &[NfacctCounter]) -> Result<(), ExecError> {
        for c in counters {
            if !self.counters.contains(c) {
                self.counters.push(*c);
            }
        }
        Ok(())
    }

    fn clear_conntrack(&mut self, _: IpFamily, _: &[StaleFlow]) -> Result<(), ExecError> {
        Ok(())
    }
}

/// One call an executor received.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Call {
    /// [`Executor::lock`] (the [`Recorder`]'s guard holds nothing).
    Lock,
    /// [`Executor::restore`].
    Restore {
        /// The family.
        family: IpFamily,
        /// The payload.
        payload: String,
    },
    /// [`Executor::save`].
    Save {
        /// The family.
        family: IpFamily,
        /// The table.
        table: Table,
    },
    /// [`Executor::ensure_jump`].
    EnsureJump {
        /// The family.
        family: IpFamily,
        /// The rule (boxed: a rule is large next to the other calls).
        jump: Box<JumpRule>,
    },
    /// [`Executor::ensure_nfacct`].
    EnsureNfacct {
        /// The counters, as asked for.
        counters: Vec<NfacctCounter>,
    },
    /// [`Executor::clear_conntrack`].
    ClearConntrack {
        /// The family.
        family: IpFamily,
        /// The flows.
        flows: Vec<StaleFlow>,
    },
}

/// A chain of the model: its policy (`None` for a user chain) and its rules, typed
/// as [`parse`](crate::parse) reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ModelChain {
    policy: Option<Policy>,
    rules: Vec<Rule>,
}

type ModelTable = IndexMap<String, ModelChain>;

/// Targets that are not chains.
const TARGETS: &[&str] = &[
    "ACCEPT",
    "DROP",
    "RETURN",
    "REJECT",
    "DNAT",
    "SNAT",
    "MASQUERADE",
    "MARK",
    "LOG",
    "QUEUE",
    "NFQUEUE",
    "CT",
    "CONNMARK",
    "TPROXY",
    "REDIRECT",
    "NOTRACK",
    "TCPMSS",
];

fn new_table(table: Table) -> ModelTable {
    table
        .builtin_chains()
        .iter()
        .map(|c| {
            (
                (*c).to_owned(),
                ModelChain {
                    policy: Some(Policy::Accept),
                    rules: Vec::new(),
                },
            )
        })
        .collect()
}

/// A payload's `*table … COMMIT` sections, each with the number of its first
/// line. Blank and comment lines between sections are skipped; anything else
/// outside a section, or a section without its `COMMIT`, is refused.
fn sections(payload: &str) -> Result<Vec<(usize, String)>, String> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in payload.lines().enumerate() {
        let line = raw.trim();
        let (_, text) = match &mut current {
            Some(section) => section,
            None if line.is_empty() || line.starts_with('#') => continue,
            None if line.starts_with('*') => current.insert((i + 1, String::new())),
            None => return Err(format!("line {}: {line:?} outside a table", i + 1)),
        };
        text.push_str(raw);
        text.push('\n');
        if line == restore::COMMIT {
            out.extend(current.take());
        }
    }
    match current {
        Some((first, _)) => Err(format!("line {first}: the table has no COMMIT")),
        None => Ok(out),
    }
}

/// The chain a rule jumps or goes to, if it names a chain rather than a target.
/// The parser reads `-j NAME` as a jump only where it knows NAME to be a chain
/// (declared in the same text); elsewhere, as a partial payload's jumps to chains
/// the kernel already holds, the target is kept as written, and is read here.
fn jump_of(rule: &Rule) -> Option<&str> {
    rule.target_name().filter(|name| !TARGETS.contains(name))
}

/// Records every call and keeps a model of the kernel's tables that applies
/// restore payloads, read by [`parse`](crate::parse) into typed operations, with
/// `--noflush` semantics: a chain line creates or flushes a
/// chain, `-A` appends, `-X` deletes, and `COMMIT` refuses a table in which a rule
/// jumps to a missing chain or a deleted chain is still referenced (the whole table
/// is then left as it was, as `iptables-restore` does). Failures can be scripted.
///
/// ```
/// use svcnat::exec::{Executor, Recorder, RestoreOptions};
/// use svcnat::model::IpFamily;
/// use svcnat::ruleset::Table;
/// let mut rec = Recorder::new();
/// rec.restore(IpFamily::Ipv4, "*nat\n:A - [0:0]\n-A A -j RETURN\nCOMMIT\n", RestoreOptions::default())?;
/// assert!(rec.save(IpFamily::Ipv4, Table::Nat)?.contains("-A A -j RETURN"));
/// assert!(rec.restore(IpFamily::Ipv4, "*nat\n-A B -j A\nCOMMIT\n", RestoreOptions::default()).is_err());
/// // A jump to a chain that does not exist refuses the whole table.
/// let missing = "*nat\n:B - [0:0]\n-A B -j KUBE-SVC-MISSING\nCOMMIT\n";
/// assert!(rec.restore(IpFamily::Ipv4, missing, RestoreOptions::default()).is_err());
/// assert!(rec.chains(IpFamily::Ipv4, Table::Nat).iter().all(|c| c != "B"));
/// # Ok::<(), svcnat::exec::ExecError>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    /// Every call, in order.
    calls: Vec<Call>,
    tables: BTreeMap<(IpFamily, Table), ModelTable>,
    fail_restores: usize,
}

impl Recorder {
    /// A recorder with empty tables.
    pub fn new() -> Self {
        Recorder::default()
    }

    /// Makes the next `n` restore calls fail (and change nothing).
    pub fn fail_next_restores(&mut self, n: usize) {
        self.fail_restores = n;
    }

    /// Every call received, in order.
    pub fn calls(&self) -> &[Call] {
        &self.calls
    }

    /// The restore payloads received, in order.
    pub fn payloads(&self) -> impl Iterator<Item = &str> {
        self.calls.iter().filter_map(|c| match c {
            Call::Restore { payload, .. } => Some(payload.as_str()),
            _ => None,
        })
    }

    /// The names of the chains of a table, in order.
    pub fn chains(&self, family: IpFamily, table: Table) -> Vec<String> {
        self.tables
            .get(&(family, table))
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The rules of one chain (the text after `-A CHAIN `, as svcnat renders the
    /// rule it read), if the chain exists.
    pub fn rules(&self, family: IpFamily, table: Table, chain: &str) -> Option<Vec<String>> {
        self.tables
            .get(&(family, table))?
            .get(chain)
            .map(|c| c.rules.iter().map(ToString::to_string).collect())
    }

    /// Adds a rule outside svcnat, as another program on the node would (`rule` is
    /// the text after `-A CHAIN `, read by [`parse`](crate::parse)).
    ///
    /// ```
    /// use svcnat::exec::{Executor, Recorder, RestoreOptions};
    /// use svcnat::model::IpFamily;
    /// use svcnat::ruleset::Table;
    /// let (v4, nat) = (IpFamily::Ipv4, Table::Nat);
    /// let mut rec = Recorder::new();
    /// rec.restore(v4, "*nat\n:KUBE-SVC-X - [0:0]\nCOMMIT\n", RestoreOptions::default())?;
    /// rec.append_foreign(v4, nat, "PREROUTING", "-p tcp -m tcp --dport 80 -j KUBE-SVC-X")
    ///     .unwrap();
    /// assert_eq!(
    ///     rec.rules(v4, nat, "PREROUTING").unwrap(),
    ///     ["-p tcp -m tcp --dport 80 -j KUBE-SVC-X"]
    /// );
    /// // The chain is still referenced: deleting it is refused, as the kernel refuses it.
    /// let gone = rec.restore(v4, "*nat\n:KUBE-SVC-X - [0:0]\n-X KUBE-SVC-X\nCOMMIT\n", RestoreOptions::default());
    /// assert!(gone.unwrap_err().to_string().contains("still referenced"));
    /// # Ok::<(), svcnat::exec::ExecError>(())
    /// ```
    ///
    /// # Errors
    /// The rule's [`ParseError`](crate::parse::ParseError), as text.
    pub fn append_foreign(
        &mut self,
        family: IpFamily,
        table: Table,
        chain: &str,
        rule: &str,
    ) -> Result<(), String> {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = restore::open_table(&mut text, table);
        let _ = restore::declare(&mut text, chain);
        let _ = RuleLine::append(&mut text, chain).and_then(|mut line| {
            line.raw(rule)?;
            line.end()
        });
        let _ = restore::commit(&mut text);
        let parsed = parse_restore_as(&text, family).map_err(|e| e.to_string())?;
        let rule = parsed
            .tables
            .into_iter()
            .flat_map(|t| t.ops)
            .find_map(|op| match op.op {
                Op::Append { rule, .. } => Some(rule),
                _ => None,
            })
            .ok_or_else(|| format!("{rule:?} is not a rule"))?;
        self.table_mut(family, table)
            .entry(chain.to_owned())
            .or_default()
            .rules
            .push(rule);
        Ok(())
    }

    fn table_mut(&mut self, family: IpFamily, table: Table) -> &mut ModelTable {
        self.tables
            .entry((family, table))
            .or_insert_with(|| new_table(table))
    }

    /// Applies a restore payload to the model, read by [`parse`](crate::parse)
    /// into its operations: each table's section is checked at its end as
    /// `COMMIT` checks it and replaces the table only then.
    fn apply(&mut self, family: IpFamily, payload: &str) -> Result<(), String> {
        // Each `*table … COMMIT` section commits on its own, as in
        // iptables-restore: parsed, checked and applied before the next is read.
        for (first, text) in sections(payload)? {
            let parsed = parse_restore_as(&text, family)
                .map_err(|e| format!("the section from line {first}: {e}"))?;
            self.apply_section(family, parsed, first)?;
        }
        Ok(())
    }

    /// Applies one parsed section; `first` is its first line in the payload.
    fn apply_section(
        &mut self,
        family: IpFamily,
        parsed: crate::parse::Restore,
        first: usize,
    ) -> Result<(), String> {
        for section in parsed.tables {
            let table = section.table;
            let mut work = self.table_mut(family, table).clone();
            let mut deleted: Vec<ChainName> = Vec::new();
            for Operation { line, op } in section.ops {
                let n = first + line - 1;
                match op {
                    Op::Declare { chain, policy } => {
                        let c = work.entry(chain.to_string()).or_default();
                        c.rules.clear();
                        if policy.is_some() {
                            c.policy = policy;
                        }
                    }
                    Op::Append { chain, rule } => {
                        if deleted.contains(&chain) {
                            return Err(format!("line {n}: rule added to deleted chain {chain}"));
                        }
                        work.get_mut(chain.as_str())
                            .ok_or_else(|| format!("line {n}: no chain {chain} in table {table}"))?
                            .rules
                            .push(rule);
                    }
                    Op::DeleteChain(Some(chain)) => {
                        let c = work
                            .get(chain.as_str())
                            .ok_or_else(|| format!("line {n}: -X of missing chain {chain}"))?;
                        if c.policy.is_some() || !c.rules.is_empty() {
                            return Err(format!(
                                "line {n}: -X of built-in or non-empty chain {chain}"
                            ));
                        }
                        if work
                            .values()
                            .flat_map(|c| &c.rules)
                            .any(|r| jump_of(r) == Some(chain.as_str()))
                        {
                            return Err(format!("line {n}: -X of chain {chain}, still referenced"));
                        }
                        work.shift_remove(chain.as_str());
                        deleted.push(chain);
                    }
                    Op::Delete { chain, rule } => {
                        // The first rule equal to the one given, compared as written
                        // (a jump may be typed on one side and kept as text on the other).
                        let text = rule.to_string();
                        let c = work.get_mut(chain.as_str()).ok_or_else(|| {
                            format!("line {n}: no chain {chain} in table {table}")
                        })?;
                        let at = c
                            .rules
                            .iter()
                            .position(|r| r.to_string() == text)
                            .ok_or_else(|| format!("line {n}: no such rule in {chain}: {text}"))?;
                        c.rules.remove(at);
                    }
                    Op::DeleteChain(None) => {
                        // Every user chain, as `iptables -X` deletes them: each must
                        // be empty, and no rule left may jump to one.
                        let users: Vec<String> = work
                            .iter()
                            .filter(|(_, c)| c.policy.is_none())
                            .map(|(name, _)| name.clone())
                            .collect();
                        for name in &users {
                            if !work[name].rules.is_empty() {
                                return Err(format!("line {n}: -X of non-empty chain {name}"));
                            }
                            if work
                                .values()
                                .flat_map(|c| &c.rules)
                                .any(|r| jump_of(r) == Some(name.as_str()))
                            {
                                return Err(format!(
                                    "line {n}: -X of chain {name}, still referenced"
                                ));
                            }
                        }
                        for name in users {
                            work.shift_remove(&name);
                        }
                    }
                    Op::Flush(chain) => match chain {
                        None => work.values_mut().for_each(|c| c.rules.clear()),
                        Some(chain) => work
                            .get_mut(chain.as_str())
                            .ok_or_else(|| format!("line {n}: no chain {chain} in table {table}"))?
                            .rules
                            .clear(),
                    },
                    other => return Err(format!("line {n}: unsupported operation {other:?}")),
                }
            }
            for (chain, c) in &work {
                for rule in &c.rules {
                    if let Some(target) = jump_of(rule)
                        && !work.contains_key(target)
                    {
                        return Err(format!(
                            "table {table}: rule in {chain} jumps to missing chain {target}"
                        ));
                    }
                }
            }
            self.tables.insert((family, table), work);
        }
        Ok(())
    }
}

impl Executor for Recorder {
    fn lock(&mut self) -> Result<SyncLock, ExecError> {
        self.calls.push(Call::Lock);
        Ok(SyncLock::none())
    }

    fn restore(
        &mut self,
        family: IpFamily,
        payload: &str,
        _: RestoreOptions,
    ) -> Result<(), ExecError> {
        self.calls.push(Call::Restore {
            family,
            payload: payload.to_owned(),
        });
        if self.fail_restores > 0 {
            self.fail_restores -= 1;
            return Err(ExecError::Refused("scripted restore failure".into()));
        }
        self.apply(family, payload).map_err(ExecError::Refused)
    }

    fn save(&mut self, family: IpFamily, table: Table) -> Result<String, ExecError> {
        self.calls.push(Call::Save { family, table });
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = restore::open_table(&mut out, table);
        if let Some(t) = self.tables.get(&(family, table)) {
            for (name, c) in t {
                let policy = match c.policy {
                    Some(Policy::Accept) => "ACCEPT",
                    Some(Policy::Drop) => "DROP",
                    None => "-",
                };
                let _ = restore::declare_with_policy(&mut out, name, policy);
            }
            for (name, c) in t {
                for r in &c.rules {
                    let _ = restore::rule(&mut out, name, r);
                }
            }
        }
        let _ = restore::commit(&mut out);
        Ok(out)
    }

    fn ensure_jump(&mut self, family: IpFamily, jump: &JumpRule) -> Result<(), ExecError> {
        self.calls.push(Call::EnsureJump {
            family,
            jump: Box::new(jump.clone()),
        });
        let rule = jump.rule.clone();
        let target = jump.rule.jump_target().map(|t| t.to_string());
        let table = self.table_mut(family, jump.table);
        if let Some(t) = &target
            && !table.contains_key(t)
        {
            return Err(ExecError::Refused(format!("jump to missing chain {t}")));
        }
        let chain = table
            .entry(jump.chain.to_string())
            .or_insert_with(|| ModelChain {
                policy: Some(Policy::Accept),
                rules: Vec::new(),
            });
        // Compared as text, as `iptables -C` compares: a rule read from text
        // may hold its jump as written (see `jump_of`) where this one is typed.
        let text = rule.to_string();
        let copies = chain.rules.iter().filter(|r| r.to_string() == text).count();
        if copies == 0 {
            chain.rules.insert(0, rule);
        }
        // Copies beyond one are deleted first to last, as `-D` deletes them.
        for _ in 1..copies {
            if let Some(at) = chain.rules.iter().position(|r| r.to_string() == text) {
                chain.rules.remove(at);
            }
        }
        Ok(())
    }

    /// Records the call and succeeds: the model holds no counters, and its
    /// restores do not check the rules' counter names.
    fn ensure_nfacct(&mut self, counters: &[NfacctCounter]) -> Result<(), ExecError> {
        self.calls.push(Call::EnsureNfacct {
            counters: counters.to_vec(),
        });
        Ok(())
    }

    fn clear_conntrack(&mut self, family: IpFamily, flows: &[StaleFlow]) -> Result<(), ExecError> {
        self.calls.push(Call::ClearConntrack {
            family,
            flows: flows.to_vec(),
        });
        Ok(())
    }
}
