//! How rules reach the kernel: the [`Executor`] trait and its implementations.
//!
//! This is the only module that starts processes. [`IptablesRestore`] runs the real
//! `iptables-restore`/`iptables-save`/`iptables` binaries (nft or legacy, IPv4 or
//! IPv6); [`DryRun`] keeps the payloads it was handed; [`Recorder`] records every call
//! and keeps a model of the tables, so tests can check the state a series of syncs
//! leaves without root. Embedders implement [`Executor`] for their own transport
//! (netlink, a remote agent).

mod cleanup;
mod iptables;
mod lock;
mod nft;
mod pieces;
mod process;
mod recorder;
mod xt;
mod xt_socket;

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

pub use cleanup::{Cleanup, cleanup, cleanup_payload};
pub use iptables::{
    Backend, DEFAULT_LOCK_DIR, DEFAULT_LOCK_WAIT, IptablesRestore, NFT_CHAINS_PER_RESTORE,
};
pub use lock::SyncLock;
#[cfg(target_os = "linux")]
pub use nft::NftNetlink;
pub use nft::{NftCommand, NftExecError, NftExecutor, NftFake, NftRefusal, RefusalKind};
pub use pieces::{pieces, pieces_over};
pub use recorder::{Call, DryRun, Recorder};

use crate::flows::StaleFlow;
use crate::model::IpFamily;
use crate::ruleset::JumpRule;
use crate::ruleset::NfacctCounter;
use crate::ruleset::Table;

/// Why an executor call failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The binary could not be started.
    #[error("{binary}: cannot run: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The binary ran and failed.
    #[error("{binary} {args} failed ({status}): {stderr}", args = .args.join(" "), status = status_text(*.status))]
    Failed {
        /// The binary.
        binary: String,
        /// Its arguments.
        args: Vec<String>,
        /// Its exit code (`None` if killed by a signal).
        status: Option<i32>,
        /// What it wrote on stderr.
        stderr: String,
        /// The restore payload it was given, if any.
        payload: Option<String>,
    },
    /// A netlink socket call failed ([`NftNetlink`]): opening the socket in its
    /// namespace, sizing its buffers, sending a batch or reading the answer.
    #[error("netlink {operation}: {source}")]
    Netlink {
        /// The call, and what it was doing.
        operation: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The executor refused the call (a scripted failure, or an invalid payload in
    /// [`Recorder`]'s table model).
    #[error("{0}")]
    Refused(String),
    /// The executor does not support this operation.
    #[error("{0}: not supported by this executor")]
    Unsupported(&'static str),
    /// An nfacct counter the rules count packets in could not be made to exist
    /// ([`Executor::ensure_nfacct`]): the kernel would refuse the rules.
    #[error("nfacct counter {counter} is needed by the rules and cannot be created: {source}")]
    Nfacct {
        /// The counter (the first one that could not be made sure of).
        counter: NfacctCounter,
        /// Why: the tool could not run or failed, or the executor cannot create counters.
        source: Box<ExecError>,
    },
    /// The sync lock ([`Executor::lock`]) could not be taken: its directory or file
    /// could not be made or opened, or the network namespace it is named after
    /// could not be read (then `path` is the namespace's `/proc` link).
    #[error("sync lock {}: {source}", path.display())]
    Lock {
        /// The lock file, or the link naming the namespace.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process held the sync lock ([`Executor::lock`]) for as long as the
    /// executor waits for it (see [`IptablesRestore::with_lock_wait`]).
    #[error(
        "sync lock {}: held by another process{} for more than {} ms",
        path.display(),
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
        waited.as_millis()
    )]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long this process waited.
        waited: Duration,
        /// The process id the holder wrote into the file, if it did.
        holder: Option<u32>,
    },
}

impl ExecError {
    /// The line of the payload a restore failed at, when the binary (or
    /// [`Recorder`]) said so (`line 3 failed`, `line 3: CHAIN_DEL failed …`,
    /// `Error occurred at line: 3`).
    ///
    /// ```
    /// use svcnat::exec::ExecError;
    /// let e = ExecError::Refused("line 3: -X of chain KUBE-SEP-A, still referenced".into());
    /// assert_eq!(e.failed_line(), Some(3));
    /// ```
    pub fn failed_line(&self) -> Option<usize> {
        self.failed_lines().first().copied()
    }

    /// Every line of the payload the error names, in the order named: nft names
    /// each `-X` that failed in one transaction.
    ///
    /// ```
    /// use svcnat::exec::ExecError;
    /// let e = ExecError::Refused(
    ///     "line 4: CHAIN_DEL failed (Device or resource busy): chain A\n\
    ///      line 5: CHAIN_DEL failed (Device or resource busy): chain B".into(),
    /// );
    /// assert_eq!(e.failed_lines(), [4, 5]);
    /// ```
    pub fn failed_lines(&self) -> Vec<usize> {
        let text = match self {
            ExecError::Failed { stderr, .. } => stderr.as_str(),
            ExecError::Refused(message) => message.as_str(),
            _ => return Vec::new(),
        };
        text.match_indices("line")
            .filter_map(|(at, word)| {
                let rest = text[at + word.len()..].trim_start_matches([':', ' ']);
                let end = rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                rest[..end].parse().ok()
            })
            .collect()
    }
}

fn status_text(status: Option<i32>) -> String {
    match status {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_owned(),
    }
}

/// How a restore payload is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// `--noflush`: leave chains the payload does not mention alone (svcnat always sets it).
    pub noflush: bool,
    /// `--counters`: keep packet counters of rewritten chains.
    pub counters: bool,
    /// The executor may cut a large payload into the pieces its
    /// [`Executor::chains_per_restore_for`] asks for (the default). The
    /// [`Syncer`](crate::sync::Syncer) plans its pieces itself, some of them
    /// larger on purpose (see [`pieces_over`]), and sends each with `false`:
    /// one restore, one `COMMIT` per table.
    pub cut: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            noflush: true,
            counters: true,
            cut: true,
        }
    }
}

impl RestoreOptions {
    /// The options with [`RestoreOptions::cut`] set to `cut`.
    pub fn with_cut(self, cut: bool) -> Self {
        RestoreOptions { cut, ..self }
    }
}

/// Where [`Executor::restore_all`] stopped.
#[derive(Debug)]
pub struct RestoreFailed {
    /// How many of the payloads were applied: the one that failed is
    /// `payloads[applied]`, and none after it was applied.
    pub applied: usize,
    /// Why it failed.
    pub error: ExecError,
}

/// Applies rules and reads them back. Implementations decide the transport.
pub trait Executor {
    /// Takes the lock that keeps other svcnat processes from syncing the same
    /// tables at the same time; it is held until the returned guard is dropped.
    /// The [`Syncer`](crate::sync::Syncer) holds it for the whole of each sync,
    /// and [`cleanup`] for the whole cleanup. It is not reentrant: a second `lock`
    /// while a guard lives waits for that guard, even in the same process.
    ///
    /// The default holds nothing: for a transport that excludes other writers
    /// itself, or that only one process uses. [`IptablesRestore`] locks a file
    /// named after the network namespace its commands run in. An executor that
    /// wraps another (to time or log its calls) must forward this method, or it
    /// gets the default and the inner executor's lock is never taken.
    ///
    /// # Errors
    /// The lock could not be taken ([`ExecError::Lock`]), or another process held
    /// it too long ([`ExecError::LockTimeout`]).
    fn lock(&mut self) -> Result<SyncLock, ExecError> {
        Ok(SyncLock::none())
    }

    /// Applies an `iptables-restore` payload for `family`.
    ///
    /// # Errors
    /// The transport failed or the kernel refused the payload.
    fn restore(
        &mut self,
        family: IpFamily,
        payload: &str,
        options: RestoreOptions,
    ) -> Result<(), ExecError>;

    /// Applies several payloads for `family` in order, as many calls of
    /// [`Self::restore`] would: the [`Syncer`](crate::sync::Syncer) hands it
    /// the pieces of a sync at once, so that an executor may commit several
    /// pieces together (each piece is a safe state, and so is any run of them
    /// committed at once). [`IptablesRestore`] on nft writes runs of pieces it
    /// can encode as one netlink batch (see its documentation).
    ///
    /// The default calls [`Self::restore`] for each payload. An executor that
    /// wraps another should forward this method too, or it gets the default
    /// and the inner executor sees one payload at a time.
    ///
    /// # Errors
    /// The first payload that failed and why ([`RestoreFailed`]): the ones
    /// before it are applied, the ones after it are not, and it is not or in
    /// part, as [`Self::restore`] leaves a payload that fails (a payload of
    /// several tables commits each on its own).
    fn restore_all(
        &mut self,
        family: IpFamily,
        payloads: &[&str],
        options: RestoreOptions,
    ) -> Result<(), RestoreFailed> {
        restore_each(self, family, payloads, options)
    }

    /// Reads one table back, as `iptables-save -t TABLE` prints it.
    ///
    /// # Errors
    /// The transport failed.
    fn save(&mut self, family: IpFamily, table: Table) -> Result<String, ExecError>;

    /// Makes sure a jump rule exists at the top of its built-in chain: checks for it
    /// and inserts it (`-I`) if missing. The chain it jumps to exists already. A
    /// rule found more than once in its chain (two processes that both found it
    /// missing, before [`Self::lock`]) has its extra copies deleted where the
    /// executor can count them ([`IptablesRestore`] and [`Recorder`] do).
    ///
    /// # Errors
    /// The transport failed or the kernel refused the rule.
    fn ensure_jump(&mut self, family: IpFamily, jump: &JumpRule) -> Result<(), ExecError>;

    /// [`Self::ensure_jump`] for several rules, in order: each missing one is
    /// inserted at the top of its chain, so of the rules missing from one chain the
    /// last ends up first. The `Syncer` calls this once per full sync.
    ///
    /// The default calls `ensure_jump` for each rule; an executor for which reading a
    /// table costs as much as checking one rule overrides it (as
    /// [`IptablesRestore`] does). An executor that wraps another (to time or log
    /// its calls) should forward this method too, or it gets the default and the
    /// inner executor's batching is lost.
    ///
    /// # Errors
    /// As [`Self::ensure_jump`].
    fn ensure_jumps(&mut self, family: IpFamily, jumps: &[JumpRule]) -> Result<(), ExecError> {
        ensure_each(self, family, jumps)
    }

    /// The most chains one restore should write, if this executor wants large
    /// payloads cut into dependency-ordered pieces (see [`pieces`]); `None`
    /// (the default) takes every payload whole. What
    /// [`Self::chains_per_restore_for`] answers by default; the
    /// [`Syncer`](crate::sync::Syncer) asks that one before each restore and
    /// calls [`Self::restore`] once per piece, so an executor that wraps another
    /// should forward both methods, and `Some` from one means `Some` from the
    /// other.
    fn chains_per_restore(&mut self, family: IpFamily) -> Option<usize> {
        let _ = family;
        None
    }

    /// The most chains one restore should write for a payload that declares
    /// `chains` chains: what the [`Syncer`](crate::sync::Syncer) asks. By
    /// default [`Self::chains_per_restore`]; an executor whose best piece size
    /// grows with the payload ([`IptablesRestore`] on nft) answers per payload.
    /// An executor that wraps another should forward this method too.
    fn chains_per_restore_for(&mut self, family: IpFamily, chains: usize) -> Option<usize> {
        let _ = chains;
        self.chains_per_restore(family)
    }

    /// The index of a rule of `rules` that is not in place (its chain missing, or
    /// the chain without it), or `None` when every one is: the
    /// [`Syncer`](crate::sync::Syncer)'s drift check, over its canaries and jump
    /// rules. Each rule is looked for in its table and chain, compared as
    /// `iptables -C` compares.
    ///
    /// The default reads each table once with [`Self::save`]; [`IptablesRestore`]
    /// checks them all with one `iptables-restore` of `-C` lines.
    ///
    /// # Errors
    /// The transport failed, or a table read back does not parse.
    fn first_missing_rule(
        &mut self,
        family: IpFamily,
        rules: &[JumpRule],
    ) -> Result<Option<usize>, ExecError> {
        first_missing_by_save(self, family, rules)
    }

    /// Makes sure the nfacct counters exist that rules about to be applied count
    /// packets in (`-m nfacct --nfacct-name NAME`, written with
    /// [`ProxyConfig::nfacct_counters`](crate::model::ProxyConfig::nfacct_counters)):
    /// the kernel refuses a rule that names a missing counter, so the `Syncer`
    /// calls this before the restore of any payload that names one, and writes
    /// nothing if it fails. Counters that exist already are left as they are (their
    /// counts too). nfacct counters belong to the network namespace, not to an IP
    /// family: one call serves both families' rules.
    ///
    /// [`IptablesRestore`] runs the `nfacct` tool; [`DryRun`] and [`Recorder`]
    /// record the call and succeed. The default fails, naming the first counter,
    /// so that an executor that cannot create counters says so before any rule is
    /// written rather than through the kernel's refusal of the restore; an executor
    /// whose counters are created some other way (by the embedder at start-up, say)
    /// overrides it to return `Ok(())`. An executor that wraps another should
    /// forward it. Empty `counters` succeed at once.
    ///
    /// # Errors
    /// [`ExecError::Nfacct`], naming the counter that could not be created and why.
    fn ensure_nfacct(&mut self, counters: &[NfacctCounter]) -> Result<(), ExecError> {
        match counters.first() {
            None => Ok(()),
            Some(&counter) => Err(ExecError::Nfacct {
                counter,
                source: Box::new(ExecError::Unsupported("ensure_nfacct")),
            }),
        }
    }

    /// Deletes the conntrack entries of stale UDP/SCTP flows. Optional: the default
    /// returns [`ExecError::Unsupported`].
    ///
    /// # Errors
    /// The transport failed, or the executor does not support it.
    fn clear_conntrack(&mut self, family: IpFamily, flows: &[StaleFlow]) -> Result<(), ExecError> {
        let _ = (family, flows);
        Err(ExecError::Unsupported("clear_conntrack"))
    }
}

impl<E: Executor + ?Sized> Executor for &mut E {
    fn lock(&mut self) -> Result<SyncLock, ExecError> {
        (**self).lock()
    }
    fn restore(
        &mut self,
        family: IpFamily,
        payload: &str,
        options: RestoreOptions,
    ) -> Result<(), ExecError> {
        (**self).restore(family, payload, options)
    }
    fn restore_all(
        &mut self,
        family: IpFamily,
        payloads: &[&str],
        options: RestoreOptions,
    ) -> Result<(), RestoreFailed> {
        (**self).restore_all(family, payloads, options)
    }
    fn save(&mut self, family: IpFamily, table: Table) -> Result<String, ExecError> {
        (**self).save(family, table)
    }
    fn ensure_jump(&mut self, family: IpFamily, jump: &JumpRule) -> Result<(), ExecError> {
        (**self).ensure_jump(family, jump)
    }
    fn ensure_jumps(&mut self, family: IpFamily, jumps: &[JumpRule]) -> Result<(), ExecError> {
        (**self).ensure_jumps(family, jumps)
    }
    fn chains_per_restore(&mut self, family: IpFamily) -> Option<usize> {
        (**self).chains_per_restore(family)
    }
    fn chains_per_restore_for(&mut self, family: IpFamily, chains: usize) -> Option<usize> {
        (**self).chains_per_restore_for(family, chains)
    }
    fn first_missing_rule(
        &mut self,
        family: IpFamily,
        rules: &[JumpRule],
    ) -> Result<Option<usize>, ExecError> {
        (**self).first_missing_rule(family, rules)
    }
    fn ensure_nfacct(&mut self, counters: &[NfacctCounter]) -> Result<(), ExecError> {
        (**self).ensure_nfacct(counters)
    }
    fn clear_conntrack(&mut self, family: IpFamily, flows: &[StaleFlow]) -> Result<(), ExecError> {
        (**self).clear_conntrack(family, flows)
    }
}

/// [`Executor::first_missing_rule`] by reading each table the rules are in once.
pub(crate) fn first_missing_by_save<E: Executor + ?Sized>(
    exec: &mut E,
    family: IpFamily,
    rules: &[JumpRule],
) -> Result<Option<usize>, ExecError> {
    for table in tables_of(rules) {
        let saved = exec.save(family, table)?;
        let ruleset = crate::parse::parse_as(&saved, family).map_err(|e| {
            ExecError::Refused(format!("the {table} table read back does not parse: {e}"))
        })?;
        let chains = ruleset.table(table);
        for (i, wanted) in rules.iter().enumerate().filter(|(_, r)| r.table == table) {
            let present = chains
                .and_then(|t| t.chain(wanted.chain.as_str()))
                .is_some_and(|c| c.rules.iter().any(|r| same_rule(r, &wanted.rule, family)));
            if !present {
                return Ok(Some(i));
            }
        }
    }
    Ok(None)
}

/// The tables `rules` are for, each once, in the order they first appear.
pub(crate) fn tables_of(rules: &[JumpRule]) -> Vec<Table> {
    let mut tables: Vec<Table> = Vec::new();
    for rule in rules {
        if !tables.contains(&rule.table) {
            tables.push(rule.table);
        }
    }
    tables
}

/// True when `iptables -C` takes the two rules for the same: equal after
/// [`canonical_rule`](crate::parse::canonical_rule), with their modules in the
/// same order.
pub(crate) fn same_rule(
    a: &crate::ruleset::Rule,
    b: &crate::ruleset::Rule,
    family: IpFamily,
) -> bool {
    use crate::parse::{canonical_rule, module_order};
    canonical_rule(a, family) == canonical_rule(b, family) && module_order(a) == module_order(b)
}

/// [`Executor::restore`] of each payload in order, up to the first that fails.
pub(crate) fn restore_each<E: Executor + ?Sized>(
    exec: &mut E,
    family: IpFamily,
    payloads: &[&str],
    options: RestoreOptions,
) -> Result<(), RestoreFailed> {
    for (applied, payload) in payloads.iter().enumerate() {
        exec.restore(family, payload, options)
            .map_err(|error| RestoreFailed { applied, error })?;
    }
    Ok(())
}

/// [`Executor::ensure_jump`] for each rule, in order: what
/// [`Executor::ensure_jumps`] does unless an executor does better.
pub(crate) fn ensure_each<E: Executor + ?Sized>(
    exec: &mut E,
    family: IpFamily,
    jumps: &[JumpRule],
) -> Result<(), ExecError> {
    jumps
        .iter()
        .try_for_each(|jump| exec.ensure_jump(family, jump))
}

/// A rule as the argument list of an `iptables` command: the rendered rule split on
/// spaces, a quoted comment kept as one argument without its quotes.
pub(crate) fn rule_args(rule: &crate::ruleset::Rule) -> Vec<String> {
    let text = rule.to_string();
    let mut args = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !current.is_empty() {
                    args.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        args.push(current);
    }
    args
}
