//! Executors that do not touch the system: [`DryRun`] and [`Recorder`].

use std::collections::BTreeMap;

use indexmap::IndexMap;

use super::{ExecError, Executor, RestoreOptions, rule_args};
use crate::compile::JumpRule;
use crate::flows::StaleFlow;
use crate::model::IpFamily;
use crate::ruleset::Table;
use crate::ruleset::restore::{self, RuleLine};

/// Keeps every payload it is handed and applies nothing. `save` returns empty
/// tables, so a sync through it deletes no stale chains.
#[derive(Debug, Default, Clone)]
pub struct DryRun {
    /// The restore payloads, in order.
    pub payloads: Vec<(IpFamily, String)>,
    /// The jump rules it was asked to ensure.
    pub jumps: Vec<(IpFamily, JumpRule)>,
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

    fn ensure_jump(&mut self, family: IpFamily, jump: &JumpRule) -> Result<(), ExecError> {
        self.jumps.push((family, jump.clone()));
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
    /// [`Executor::clear_conntrack`].
    ClearConntrack {
        /// The family.
        family: IpFamily,
        /// The flows.
        flows: Vec<StaleFlow>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ModelChain {
    policy: Option<String>,
    rules: Vec<String>,
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

fn builtin_chains(table: Table) -> &'static [&'static str] {
    match table {
        Table::Filter => &["INPUT", "FORWARD", "OUTPUT"],
        Table::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        Table::Mangle => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        Table::Raw => &["PREROUTING", "OUTPUT"],
        Table::Security => &["INPUT", "FORWARD", "OUTPUT"],
    }
}

fn table_named(name: &str) -> Option<Table> {
    [
        Table::Filter,
        Table::Nat,
        Table::Mangle,
        Table::Raw,
        Table::Security,
    ]
    .into_iter()
    .find(|t| t.as_str() == name)
}

fn new_table(table: Table) -> ModelTable {
    builtin_chains(table)
        .iter()
        .map(|c| {
            (
                (*c).to_owned(),
                ModelChain {
                    policy: Some("ACCEPT".into()),
                    rules: Vec::new(),
                },
            )
        })
        .collect()
}

fn jump_of(rule: &str) -> Option<&str> {
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" {
            return words.next();
        }
    }
    None
}

/// Records every call and keeps a model of the kernel's tables that applies
/// restore payloads with `--noflush` semantics: a chain line creates or flushes a
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

    /// The rules of one chain (the text after `-A CHAIN `), if the chain exists.
    pub fn rules(&self, family: IpFamily, table: Table, chain: &str) -> Option<Vec<String>> {
        self.tables
            .get(&(family, table))?
            .get(chain)
            .map(|c| c.rules.clone())
    }

    /// Adds a rule outside svcnat, as another program on the node would.
    pub fn append_foreign(&mut self, family: IpFamily, table: Table, chain: &str, rule: &str) {
        self.table_mut(family, table)
            .entry(chain.to_owned())
            .or_default()
            .rules
            .push(rule.to_owned());
    }

    fn table_mut(&mut self, family: IpFamily, table: Table) -> &mut ModelTable {
        self.tables
            .entry((family, table))
            .or_insert_with(|| new_table(table))
    }

    fn apply(&mut self, family: IpFamily, payload: &str) -> Result<(), String> {
        let mut current: Option<(Table, ModelTable, Vec<String>)> = None;
        for (i, raw) in payload.lines().enumerate() {
            let line = raw.trim();
            let n = i + 1;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                if current.is_some() {
                    return Err(format!("line {n}: table {name} opened before COMMIT"));
                }
                let table =
                    table_named(name).ok_or_else(|| format!("line {n}: unknown table {name}"))?;
                let copy = self.table_mut(family, table).clone();
                current = Some((table, copy, Vec::new()));
                continue;
            }
            let Some((table, work, deleted)) = current.as_mut() else {
                return Err(format!("line {n}: {line:?} outside a table"));
            };
            if line == "COMMIT" {
                for (chain, c) in work.iter() {
                    for rule in &c.rules {
                        if let Some(target) = jump_of(rule)
                            && !TARGETS.contains(&target)
                            && !work.contains_key(target)
                        {
                            return Err(format!(
                                "line {n}: rule in {chain} jumps to missing chain {target}"
                            ));
                        }
                    }
                }
                let (table, work, _) = current.take().expect("checked above");
                self.tables.insert((family, table), work);
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let mut parts = decl.split_whitespace();
                let name = parts
                    .next()
                    .ok_or_else(|| format!("line {n}: empty chain line"))?;
                let policy = parts.next().filter(|p| *p != "-").map(str::to_owned);
                let chain = work.entry(name.to_owned()).or_default();
                chain.rules.clear();
                if policy.is_some() {
                    chain.policy = policy;
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
                if deleted.iter().any(|d| d == chain) {
                    return Err(format!("line {n}: rule added to deleted chain {chain}"));
                }
                work.get_mut(chain)
                    .ok_or_else(|| format!("line {n}: no chain {chain} in table {table}"))?
                    .rules
                    .push(rule.to_owned());
                continue;
            }
            if let Some(chain) = line.strip_prefix("-X ") {
                let chain = chain.trim();
                let c = work
                    .get(chain)
                    .ok_or_else(|| format!("line {n}: -X of missing chain {chain}"))?;
                if c.policy.is_some() || !c.rules.is_empty() {
                    return Err(format!(
                        "line {n}: -X of built-in or non-empty chain {chain}"
                    ));
                }
                if work
                    .values()
                    .flat_map(|c| &c.rules)
                    .any(|r| jump_of(r) == Some(chain))
                {
                    return Err(format!("line {n}: -X of chain {chain}, still referenced"));
                }
                work.shift_remove(chain);
                deleted.push(chain.to_owned());
                continue;
            }
            return Err(format!("line {n}: unsupported line {line:?}"));
        }
        match current {
            Some((table, _, _)) => Err(format!("table {table} has no COMMIT")),
            None => Ok(()),
        }
    }
}

impl Executor for Recorder {
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
                let policy = c.policy.as_deref().unwrap_or("-");
                let _ = restore::declare_with_policy(&mut out, name, policy);
            }
            for (name, c) in t {
                for r in &c.rules {
                    let _ = RuleLine::append(&mut out, name).and_then(|mut line| {
                        line.raw(r)?;
                        line.end()
                    });
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
        let rule = rule_args(&jump.rule)
            .iter()
            .map(|a| {
                if a.contains(' ') {
                    format!("\"{a}\"")
                } else {
                    a.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
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
                policy: Some("ACCEPT".into()),
                rules: Vec::new(),
            });
        if !chain.rules.contains(&rule) {
            chain.rules.insert(0, rule);
        }
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
