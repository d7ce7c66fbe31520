//! How nftables transactions reach the kernel: the [`NftExecutor`] trait (the
//! nftables sibling of [`Executor`](super::Executor)), `NftNetlink` (Linux),
//! which sends netlink batches on a socket of its own, [`NftCommand`], which
//! runs the `nft` binary, and [`NftFake`], an in-memory table for tests without
//! root.
//!
//! On the anchor of knftables' `Interface`: a [`Transaction`] is run whole
//! (`nft -f -`) or checked (`nft --check -f -`), and what a table holds is listed
//! by name (chains, sets, maps) and elements by set or map, so that a sync never
//! needs to read a whole table (`nft list table` takes seconds at 10,000
//! services; see [`NftCommand`]).

mod fake;
mod list;
#[cfg(target_os = "linux")]
pub(crate) mod netlink;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use super::lock::{lock_file, lock_path};
use super::process::{Prefixed, failed};
use super::{DEFAULT_LOCK_DIR, DEFAULT_LOCK_WAIT, ExecError, SyncLock};
use crate::nft::{Element, Family, MapElement, Name, Transaction};

pub use fake::NftFake;
#[cfg(target_os = "linux")]
pub use netlink::NftNetlink;

/// What kind of refusal an operation met: the kernel's error, or nft's own
/// check before anything reached the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalKind {
    /// The table, chain, set, map or element the operation names does not exist
    /// (`No such file or directory`).
    NotFound,
    /// It exists with another type, hook, priority, key or flags, or the element
    /// with another verdict (`File exists`).
    Exists,
    /// A chain, set or map still referenced by a rule or a map element is deleted
    /// (`Device or resource busy`).
    Busy,
    /// A jump or goto to a base chain (`Operation not supported`).
    Unsupported,
    /// Chains that jump to each other in a loop a base chain reaches (`Too many
    /// links`).
    Loop,
    /// A value that does not fit: an element's key of the wrong type, a map
    /// looked up as a set or the reverse, an address of the other family.
    Invalid,
    /// Anything else.
    Other,
}

impl RefusalKind {
    /// The kind of nft's message (`Could not process rule: File exists`, `Error:
    /// No such file or directory`, `Expression is not a map`, ...).
    pub fn of_message(message: &str) -> RefusalKind {
        const KINDS: [(&str, RefusalKind); 11] = [
            ("No such file or directory", RefusalKind::NotFound),
            ("File exists", RefusalKind::Exists),
            ("Device or resource busy", RefusalKind::Busy),
            ("Operation not supported", RefusalKind::Unsupported),
            ("Too many links", RefusalKind::Loop),
            // The kernel's ELOOP for a jump loop, as netlink reports it.
            ("Too many levels of symbolic links", RefusalKind::Loop),
            ("Invalid argument", RefusalKind::Invalid),
            ("is not a map", RefusalKind::Invalid),
            ("datatype mismatch", RefusalKind::Invalid),
            ("Could not resolve", RefusalKind::Invalid),
            ("syntax error", RefusalKind::Invalid),
        ];
        KINDS
            .iter()
            .find(|(text, _)| message.contains(text))
            .map_or(RefusalKind::Other, |(_, kind)| *kind)
    }
}

/// An operation of a transaction that nft or the kernel refused: nothing of the
/// transaction was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRefusal {
    /// What kind of refusal.
    pub kind: RefusalKind,
    /// The refused operation's index in the transaction (0-based), if known;
    /// its line in the text is one more.
    pub index: Option<usize>,
    /// That operation's line of text, if known.
    pub command: Option<String>,
    /// Why, in nft's words (or [`NftFake`]'s).
    pub message: String,
}

impl NftRefusal {
    /// The refused operation's line in the transaction's text (1-based).
    pub fn line(&self) -> Option<usize> {
        self.index.map(|i| i + 1)
    }
}

impl fmt::Display for NftRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line() {
            write!(f, "line {line}: ")?;
        }
        if let Some(command) = &self.command {
            write!(f, "{command}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why an [`NftExecutor`] call failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NftExecError {
    /// nft could not start, or failed without saying which operation it refused,
    /// or the sync lock could not be taken.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// nft or the kernel refused an operation: nothing was applied.
    #[error("nft refused the transaction: {0}")]
    Refused(NftRefusal),
    /// nft's listing was not understood.
    #[error("`{command}`: output not understood: {reason}")]
    Output {
        /// The command, as run.
        command: String,
        /// What was not understood.
        reason: String,
    },
}

impl NftExecError {
    /// The refusal, if the error is one.
    pub fn refusal(&self) -> Option<&NftRefusal> {
        match self {
            NftExecError::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// Runs nftables transactions and lists what tables hold. Implementations decide
/// the transport ([`NftCommand`]: the `nft` binary; [`NftFake`]: memory).
///
/// Listing a missing table gives no names; listing the elements of a missing set
/// or map is a [`RefusalKind::NotFound`] refusal.
pub trait NftExecutor {
    /// Takes the lock that keeps other svcnat processes from syncing the same
    /// network namespace at once, until the guard is dropped (as
    /// [`Executor::lock`](super::Executor::lock)). The default holds nothing.
    ///
    /// # Errors
    /// The lock could not be taken, or another process held it too long
    /// ([`ExecError::Lock`], [`ExecError::LockTimeout`]).
    fn lock(&mut self) -> Result<SyncLock, NftExecError> {
        Ok(SyncLock::none())
    }

    /// Applies a transaction, all of it or nothing.
    ///
    /// # Errors
    /// [`NftExecError::Refused`] if an operation was refused (nothing applied);
    /// otherwise the transport's error.
    fn run(&mut self, tx: &Transaction) -> Result<(), NftExecError>;

    /// Checks a transaction as [`Self::run`] would apply it, applying nothing.
    ///
    /// # Errors
    /// As [`Self::run`].
    fn check(&mut self, tx: &Transaction) -> Result<(), NftExecError>;

    /// The chains of a table, sorted by name.
    ///
    /// # Errors
    /// The transport failed or its output was not understood.
    fn list_chains(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError>;

    /// The sets of a table (not its maps), sorted by name.
    ///
    /// # Errors
    /// As [`Self::list_chains`].
    fn list_sets(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError>;

    /// The maps of a table, sorted by name.
    ///
    /// # Errors
    /// As [`Self::list_chains`].
    fn list_maps(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError>;

    /// The elements of a set, in the order the kernel lists them.
    ///
    /// # Errors
    /// [`RefusalKind::NotFound`] if there is no such set; as
    /// [`Self::list_chains`].
    fn list_set_elements(
        &mut self,
        family: Family,
        table: &Name,
        set: &Name,
    ) -> Result<Vec<Element>, NftExecError>;

    /// The elements of a verdict map, in the order the kernel lists them.
    ///
    /// # Errors
    /// [`RefusalKind::NotFound`] if there is no such map; as
    /// [`Self::list_chains`].
    fn list_map_elements(
        &mut self,
        family: Family,
        table: &Name,
        map: &Name,
    ) -> Result<Vec<MapElement>, NftExecError>;

    /// The whole table as text, for people and tests (never on a sync's path:
    /// it reads every rule). [`NftCommand`] gives `nft list table`'s output,
    /// [`NftFake`] the table's dump.
    ///
    /// # Errors
    /// [`RefusalKind::NotFound`] if there is no such table; as
    /// [`Self::list_chains`].
    fn list_table(&mut self, family: Family, table: &Name) -> Result<String, NftExecError>;

    /// The largest transaction, in operations, this transport prefers a first
    /// sync or a full resync to be cut into
    /// ([`NftSyncer`](crate::sync::NftSyncer) uses it unless
    /// [`with_piece_operations`](crate::sync::NftSyncer::with_piece_operations)
    /// says otherwise); `Some(0)`: never cut; `None` (the default): the
    /// syncer's [`DEFAULT_PIECE_OPERATIONS`](crate::sync::DEFAULT_PIECE_OPERATIONS).
    fn piece_operations(&self) -> Option<usize> {
        None
    }
}

/// The trait's methods, each forwarded to `**self`.
macro_rules! forward_to_deref {
    () => {
        fn piece_operations(&self) -> Option<usize> {
            (**self).piece_operations()
        }
        fn lock(&mut self) -> Result<SyncLock, NftExecError> {
            (**self).lock()
        }
        fn run(&mut self, tx: &Transaction) -> Result<(), NftExecError> {
            (**self).run(tx)
        }
        fn check(&mut self, tx: &Transaction) -> Result<(), NftExecError> {
            (**self).check(tx)
        }
        fn list_chains(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
            (**self).list_chains(family, table)
        }
        fn list_sets(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
            (**self).list_sets(family, table)
        }
        fn list_maps(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
            (**self).list_maps(family, table)
        }
        fn list_set_elements(
            &mut self,
            family: Family,
            table: &Name,
            set: &Name,
        ) -> Result<Vec<Element>, NftExecError> {
            (**self).list_set_elements(family, table, set)
        }
        fn list_map_elements(
            &mut self,
            family: Family,
            table: &Name,
            map: &Name,
        ) -> Result<Vec<MapElement>, NftExecError> {
            (**self).list_map_elements(family, table, map)
        }
        fn list_table(&mut self, family: Family, table: &Name) -> Result<String, NftExecError> {
            (**self).list_table(family, table)
        }
    };
}

impl<E: NftExecutor + ?Sized> NftExecutor for &mut E {
    forward_to_deref!();
}

/// A boxed executor, so that the transport can be chosen at run time
/// (`Box<dyn NftExecutor>`).
impl<E: NftExecutor + ?Sized> NftExecutor for Box<E> {
    forward_to_deref!();
}

/// Runs the `nft` binary (nft 1.0.1 or newer, as knftables requires), optionally
/// behind a command prefix such as `ip netns exec NS`.
///
/// - [`run`](NftExecutor::run) is `nft -f -` with the transaction's text on
///   stdin, [`check`](NftExecutor::check) `nft --check -f -`; an empty
///   transaction starts no process. A refusal names the operation from nft's
///   `/dev/stdin:LINE:COL: Error: ...` (each operation is one line); a few
///   refusals come without a line (`netlink: Error: set is not a map`), and name
///   the operation only when the transaction has one.
/// - Listings read nft's text: `nft list chains FAMILY`, `nft -t list sets
///   FAMILY`, `nft -t list maps FAMILY` (names only, the table's part of them),
///   `nft list set|map FAMILY TABLE NAME` (one set's elements), `nft list table`.
///
/// What they cost, measured on a 2-vCPU VM (Debian 12, kernel 6.18, nft 1.0.6)
/// with a table of 10,000 services x 10 endpoints (110,016 chains, 220,023
/// rules, 20,000 map elements), busy with other builds (load average 5.6): `nft
/// list chains` 1.6-3.6 s, `-t list sets` or `maps` 0.08-0.17 s, one map's
/// 10,000 elements 0.4 s, `nft list table` 41-49 s (12 s on an idle machine).
/// Any `nft -f` in that table, even one element, costs 2.6-3.0 s there (0.6-0.7 s
/// idle): nft reads its cache of the table from the kernel first. A sync should
/// list chains only when it has no record of what it applied, and never list the
/// whole table.
///
/// Its [`lock`](NftExecutor::lock) is [`IptablesRestore`](super::IptablesRestore)'s:
/// the same `flock` on `/run/svcnat/netns-INODE.lock` for the network namespace
/// the commands run in, so the two executors exclude each other in one
/// namespace too.
///
/// ```no_run
/// use svcnat::exec::{NftCommand, NftExecutor};
/// use svcnat::nft::*;
/// let mut nft = NftCommand::new().with_command_prefix(["ip", "netns", "exec", "test-node"]);
/// let table = Name::new("kube-proxy")?;
/// let mut tx = Transaction::new(Family::Ip, table.clone());
/// tx.push(Operation::AddTable { comment: None });
/// let guard = nft.lock()?;
/// nft.run(&tx)?;
/// assert!(nft.list_chains(Family::Ip, &table)?.is_empty());
/// drop(guard);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct NftCommand {
    binary: String,
    prefix: Prefixed,
    lock_dir: Option<PathBuf>,
    lock_wait: Duration,
}

impl Default for NftCommand {
    fn default() -> Self {
        NftCommand::new()
    }
}

impl NftCommand {
    /// Runs `nft` from the `PATH`, with the default lock directory and wait.
    pub fn new() -> Self {
        NftCommand {
            binary: "nft".to_owned(),
            prefix: Prefixed::default(),
            lock_dir: Some(PathBuf::from(DEFAULT_LOCK_DIR)),
            lock_wait: DEFAULT_LOCK_WAIT,
        }
    }

    /// Runs this binary instead of `nft` (a path, or a name looked up behind the
    /// prefix).
    pub fn with_binary(mut self, binary: impl Into<String>) -> Self {
        self.binary = binary.into();
        self
    }

    /// Runs every command behind this prefix (for example `ip netns exec NS`).
    pub fn with_command_prefix<S: Into<String>>(
        mut self,
        prefix: impl IntoIterator<Item = S>,
    ) -> Self {
        self.prefix = Prefixed::new(prefix.into_iter().map(Into::into).collect());
        self
    }

    /// Where the sync lock files are (as
    /// [`IptablesRestore::with_lock_dir`](super::IptablesRestore::with_lock_dir));
    /// `None` turns the lock off.
    pub fn with_lock_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.lock_dir = dir;
        self
    }

    /// How long [`lock`](NftExecutor::lock) waits for another process (as
    /// [`IptablesRestore::with_lock_wait`](super::IptablesRestore::with_lock_wait)).
    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// `nft ARGS` with `stdin`; its stdout if it succeeds, a refusal if nft
    /// names a line of `stdin` or says a listed object does not exist.
    fn nft(&self, args: &[&str], stdin: Option<&str>) -> Result<String, NftExecError> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        match self.prefix.run(&self.binary, &args, stdin)? {
            (Some(0), stdout, _) => Ok(stdout),
            (status, _, stderr) => Err(match refusal(&stderr, stdin) {
                Some(r) => NftExecError::Refused(r),
                None => failed(&self.binary, args, status, stderr, stdin).into(),
            }),
        }
    }

    fn apply(&self, tx: &Transaction, check: bool) -> Result<(), NftExecError> {
        if tx.is_empty() {
            return Ok(());
        }
        let args: &[&str] = if check {
            &["--check", "-f", "-"]
        } else {
            &["-f", "-"]
        };
        self.nft(args, Some(&tx.to_text())).map(drop)
    }

    /// Runs a listing and reads its output with `read`.
    fn listing<T>(
        &self,
        args: &[&str],
        read: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, NftExecError> {
        let out = self.nft(args, None)?;
        read(&out).map_err(|reason| NftExecError::Output {
            command: format!("{} {}", self.binary, args.join(" ")),
            reason,
        })
    }

    /// `nft list set|map FAMILY TABLE NAME`, read by `read`.
    fn elements<T>(
        &self,
        kind: &str,
        family: Family,
        table: &Name,
        name: &Name,
        read: fn(&str) -> Result<Vec<T>, String>,
    ) -> Result<Vec<T>, NftExecError> {
        let args = ["list", kind, family.as_str(), table.as_str(), name.as_str()];
        self.listing(&args, read)
    }
}

/// The refusal nft's stderr describes: the first `/dev/stdin:LINE:COL: Error:
/// MESSAGE` of a transaction; or an `Error: MESSAGE` (`netlink: Error: set is
/// not a map`, a listing's `Error: No such file or directory`) whose kind is
/// known, naming the operation only if `stdin` has just one.
fn refusal(stderr: &str, stdin: Option<&str>) -> Option<NftRefusal> {
    let line_of = |index: usize| stdin.and_then(|s| s.lines().nth(index)).map(str::to_owned);
    for line in stderr.lines() {
        if let Some(rest) = line.strip_prefix("/dev/stdin:") {
            let (number, rest) = rest.split_once(':')?;
            let index = number.parse::<usize>().ok()?.checked_sub(1)?;
            let message = rest.split_once("Error: ")?.1.trim().to_owned();
            return Some(NftRefusal {
                kind: RefusalKind::of_message(&message),
                index: Some(index),
                command: line_of(index),
                message,
            });
        }
    }
    let message = stderr
        .lines()
        .find_map(|line| Some(line.split_once("Error: ")?.1.trim()))?;
    let kind = RefusalKind::of_message(message);
    if kind == RefusalKind::Other {
        return None;
    }
    let index = stdin.filter(|s| s.lines().count() == 1).map(|_| 0);
    Some(NftRefusal {
        kind,
        index,
        command: index.and_then(line_of),
        message: message.to_owned(),
    })
}

impl NftExecutor for NftCommand {
    fn lock(&mut self) -> Result<SyncLock, NftExecError> {
        let Some(dir) = self.lock_dir.clone() else {
            return Ok(SyncLock::none());
        };
        let path = lock_path(&dir, self.prefix.netns()?);
        Ok(lock_file(&path, self.lock_wait)?)
    }

    fn run(&mut self, tx: &Transaction) -> Result<(), NftExecError> {
        self.apply(tx, false)
    }

    fn check(&mut self, tx: &Transaction) -> Result<(), NftExecError> {
        self.apply(tx, true)
    }

    fn list_chains(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
        self.listing(&["list", "chains", family.as_str()], |out| {
            list::names(out, family, table, "chain")
        })
    }

    fn list_sets(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
        self.listing(&["-t", "list", "sets", family.as_str()], |out| {
            list::names(out, family, table, "set")
        })
    }

    fn list_maps(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
        self.listing(&["-t", "list", "maps", family.as_str()], |out| {
            list::names(out, family, table, "map")
        })
    }

    fn list_set_elements(
        &mut self,
        family: Family,
        table: &Name,
        set: &Name,
    ) -> Result<Vec<Element>, NftExecError> {
        self.elements("set", family, table, set, list::set_elements)
    }

    fn list_map_elements(
        &mut self,
        family: Family,
        table: &Name,
        map: &Name,
    ) -> Result<Vec<MapElement>, NftExecError> {
        self.elements("map", family, table, map, list::map_elements)
    }

    fn list_table(&mut self, family: Family, table: &Name) -> Result<String, NftExecError> {
        self.nft(&["list", "table", family.as_str(), table.as_str()], None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_operation_from_nft_s_line() {
        let stdin = "add table ip t\nadd chain ip t c\ndelete chain ip t masquerading\n";
        let stderr = "/dev/stdin:3:18-29: Error: Could not process rule: Device or resource busy\n\
                      delete chain ip t masquerading\n                 ^^^^^^^^^^^^\n";
        let r = refusal(stderr, Some(stdin)).unwrap();
        assert_eq!(r.kind, RefusalKind::Busy);
        assert_eq!(r.index, Some(2));
        assert_eq!(r.line(), Some(3));
        assert_eq!(r.command.as_deref(), Some("delete chain ip t masquerading"));
        assert_eq!(r.message, "Could not process rule: Device or resource busy");
        assert_eq!(
            r.to_string(),
            "line 3: delete chain ip t masquerading: Could not process rule: Device or resource busy"
        );
        let listing = "Error: No such file or directory\nlist set ip6 t m\n               ^\n";
        let r = refusal(listing, None).unwrap();
        assert_eq!((r.kind, r.index), (RefusalKind::NotFound, None));
        // Without a line: the operation is named only if it is the one.
        let one = "add element ip t s { 10.0.0.2 : drop }\n";
        let r = refusal("netlink: Error: set is not a map\n", Some(one)).unwrap();
        assert_eq!((r.kind, r.index), (RefusalKind::Invalid, Some(0)));
        assert_eq!(r.command.as_deref(), Some(one.trim()));
        let r = refusal("netlink: Error: set is not a map\n", Some(stdin)).unwrap();
        assert_eq!((r.index, r.command), (None, None));
        // Not a refusal: an error of another kind, without a line.
        assert!(
            refusal(
                "Error: Could not process rule: Operation not permitted\n",
                None
            )
            .is_none()
        );
        assert!(refusal("netlink: Error: cache initialization failed\n", None).is_none());
    }

    #[test]
    fn kinds_of_nft_s_messages() {
        for (message, kind) in [
            (
                "Could not process rule: No such file or directory",
                RefusalKind::NotFound,
            ),
            ("No such file or directory", RefusalKind::NotFound),
            ("Could not process rule: File exists", RefusalKind::Exists),
            (
                "Could not process rule: Device or resource busy",
                RefusalKind::Busy,
            ),
            (
                "Could not process rule: Operation not supported",
                RefusalKind::Unsupported,
            ),
            ("Could not process rule: Too many links", RefusalKind::Loop),
            (
                "Could not process rule: Invalid argument",
                RefusalKind::Invalid,
            ),
            ("Expression is not a map", RefusalKind::Invalid),
            (
                "Could not resolve hostname: Address family for hostname not supported",
                RefusalKind::Invalid,
            ),
            ("syntax error, unexpected string", RefusalKind::Invalid),
            (
                "Could not process rule: Operation not permitted",
                RefusalKind::Other,
            ),
        ] {
            assert_eq!(RefusalKind::of_message(message), kind, "{message}");
        }
    }
}
