//! The real binaries: `iptables-restore`, `iptables-save`, `iptables`, `conntrack`,
//! `nfacct`.

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use super::lock::{lock_file, lock_path};
use super::process::{Prefixed, failed};
use super::xt::XtBatch;
use super::xt_socket::{Sent, XtSocket, netns_file};
use super::{
    ExecError, Executor, RestoreFailed, RestoreOptions, SyncLock, restore_each, rule_args,
};
use crate::error::ParseValueError;
use crate::flows::{FlowDestination, StaleFlow};
use crate::model::{IpFamily, Protocol};
use crate::parse::{builtin_chains, parse_as};
use crate::ruleset::JumpRule;
use crate::ruleset::restore::{self, RuleLine};
use crate::ruleset::{NfacctCounter, Rule, Table};

/// Which iptables variant to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// Pick nft or legacy by looking at which one holds rules already (the one with
    /// more rules wins, nft on a tie), as kube-proxy's image wrapper does.
    #[default]
    Auto,
    /// `iptables-nft*`.
    Nft,
    /// `iptables-legacy*`.
    Legacy,
    /// Plain `iptables*`: whatever the system's alternatives point at.
    System,
}

impl Backend {
    /// `auto`, `nft`, `legacy` or `system`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
            Backend::System => "system",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Backend::Nft => "-nft",
            Backend::Legacy => "-legacy",
            Backend::System | Backend::Auto => "",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads `auto`, `nft`, `legacy` or `system` (what `Display` writes), as a
/// `--backend` flag would take it.
///
/// ```
/// use svcnat::exec::Backend;
/// assert_eq!("legacy".parse(), Ok(Backend::Legacy));
/// assert_eq!(
///     "iptables".parse::<Backend>().unwrap_err().to_string(),
///     r#""iptables" is not a backend (auto, nft, legacy or system)"#
/// );
/// ```
impl FromStr for Backend {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Backend::Auto),
            "nft" => Ok(Backend::Nft),
            "legacy" => Ok(Backend::Legacy),
            "system" => Ok(Backend::System),
            _ => Err(ParseValueError::new(
                s,
                "a backend (auto, nft, legacy or system)",
            )),
        }
    }
}

/// Runs the real iptables binaries, optionally behind a command prefix such as
/// `ip netns exec NS` or `nsenter -n -t PID`.
///
/// Restores run as `iptables-restore -w 5 --noflush --counters` (the lock wait needs
/// iptables 1.6.2 or newer; [`IptablesRestore::with_wait`]`(None)` leaves it out for
/// older versions, which then fail rather than wait if another program holds the
/// xtables lock). Jump rules are checked with `-C` and inserted with `-I` (a
/// full sync's missing ones with one restore); with the
/// legacy backend, a full sync's jump rules are checked against one `iptables-save`
/// per table and the missing ones inserted by one restore
/// ([`Executor::ensure_jumps`]), and a payload's chain declarations are sent in
/// descending name order, which iptables-legacy-restore takes in faster (the
/// payload does the same either way).
///
/// nfacct counters ([`Executor::ensure_nfacct`]) are created with the `nfacct`
/// tool (Debian's and Ubuntu's package `nfacct`), run behind the same prefix:
/// nfacct counters belong to the network namespace (checked on Linux 6.18: a
/// counter added inside one namespace is listed neither in another nor on the
/// host; Linux 3.x kept one list for the whole host), so with `ip netns exec NS`
/// the counters are made in `NS`, next to its rules.
///
/// A jump rule svcnat writes that is in its chain more than once (two processes
/// that checked for it at the same time, or an older version) is deleted until one
/// copy is left (`-D`, which deletes the first copy, so the last stays): on legacy
/// from the same `iptables-save` the check reads, on nft from one
/// `iptables -S CHAIN` per built-in chain after the `-C` checks (which costs a few
/// milliseconds even at 10,000 services, where a `-C` costs 70 ms and more).
///
/// # Netlink
///
/// On the nft backend, with iptables-nft 1.8.9 behind the prefix, a
/// `--noflush` piece that only declares user chains, appends rules of the
/// forms svcnat writes (addresses, protocols, ports, interfaces, comments,
/// `statistic`, `addrtype`, `recent`, `mark`, jumps, verdicts, `DNAT`),
/// flushes and deletes chains is not given to `iptables-nft-restore`: it goes
/// to the kernel as the netlink messages iptables-nft 1.8.9 sends for it (the
/// tests compare them byte for byte with recorded batches), so the kernel holds
/// the same rules and `iptables-save`, `-C` and `-D` see them as iptables' own.
/// A run of such pieces goes as one batch of up to 64 MiB, one commit (a piece
/// that deletes chains in a batch of its own): `iptables-nft-restore` costs the
/// square of the chains one restore names and the kernel walks every chain of
/// the table at each commit, so a first sync in restores grew as the 1.5th
/// power of the cluster; in batches it grows with it (PERFORMANCE.md,
/// "iptables-nft rules over netlink"). Anything else (`MARK`, `MASQUERADE`,
/// `REJECT`, `-m conntrack`, built-in chains, `-I`, `-D`, rule counters) goes as
/// text, and so does a batch the kernel refuses (it applied nothing: the error
/// is then iptables' own).
///
/// The socket is opened in the namespace the prefix enters, which must be one
/// this process can name: no prefix (this thread's), `ip netns exec NAME`, or
/// `nsenter` with `-n` and `-t PID` (or `--net=PATH`); it is opened again
/// when the namespace at that name is another one. With any other prefix
/// (`ssh`, `kubectl exec`), another iptables version, or without
/// `CAP_NET_ADMIN` (the first batch is refused, and no other is tried),
/// everything goes as text. [`IptablesRestore::with_netlink_rules`] turns it
/// off; [`IptablesRestore::restore_counts`] says which way restores went.
///
/// # Exclusion
///
/// Two svcnat processes syncing one network namespace at once would both insert
/// the jump rules they both found missing, and could leave one table from one
/// process and the other table from the other. [`Executor::lock`] prevents it: an
/// exclusive `flock` on `/run/svcnat/netns-INODE.lock` ([`DEFAULT_LOCK_DIR`]), where
/// INODE identifies the network namespace the executor's commands run in (read
/// from `/proc/thread-self/ns/net` without a prefix, and by running
/// `readlink /proc/self/ns/net` behind the prefix once, at the first lock), so two
/// processes that reach one namespace by different means (`ip netns exec NS`,
/// `nsenter`, running inside it) take the same lock. The `Syncer` holds it for a
/// whole sync, [`cleanup`](super::cleanup) for a whole cleanup. A process that
/// does not get it within [`DEFAULT_LOCK_WAIT`] fails with
/// [`ExecError::LockTimeout`] (see [`IptablesRestore::with_lock_wait`]). The
/// processes must see the same lock directory: a containerised svcnat mounts the
/// host's (see [`IptablesRestore::with_lock_dir`]). The lock is svcnat's own:
/// iptables' `/run/xtables.lock` is the host's file even behind `ip netns exec`,
/// iptables-nft ignores it, and it is held for one command, not for a sync.
/// Lock files stay in place (removing one another process may be opening would
/// break the exclusion); the kernel reuses namespace inodes, so they stay few.
///
/// ```no_run
/// use svcnat::exec::{Backend, Executor, IptablesRestore, RestoreOptions};
/// use svcnat::model::IpFamily;
/// let mut exec = IptablesRestore::new(Backend::Nft)
///     .with_command_prefix(["ip", "netns", "exec", "test-node"]);
/// let guard = exec.lock()?;
/// exec.restore(IpFamily::Ipv4, "*nat\n:MY-CHAIN - [0:0]\nCOMMIT\n", RestoreOptions::default())?;
/// drop(guard);
/// # Ok::<(), svcnat::exec::ExecError>(())
/// ```
#[derive(Debug, Clone)]
pub struct IptablesRestore {
    backend: Backend,
    resolved: Option<Backend>,
    wait_seconds: Option<u32>,
    prefix: Prefixed,
    /// `None`: the backend's default; `Some(None)`: one restore whatever the size;
    /// `Some(Some(n))`: pieces of at most `n` chains.
    pieces: Option<Option<usize>>,
    /// The nfacct counters seen listed or created, not to run `nfacct` again for
    /// them; forgotten when a restore fails (a counter may have been deleted).
    nfacct_known: Vec<NfacctCounter>,
    /// Where the sync lock files are; `None`: no lock.
    lock_dir: Option<PathBuf>,
    lock_wait: Duration,
    /// The socket iptables-nft's rules are written on; `None`: always text.
    xt: Option<XtSocket>,
    /// Netlink batches applied, `iptables-restore` runs.
    counts: (u64, u64),
    /// Whether the iptables behind the prefix is the version whose batches
    /// the encoder writes (asked once).
    xt_version: Option<bool>,
}

/// Where [`IptablesRestore`] keeps its sync lock files unless
/// [`IptablesRestore::with_lock_dir`] says otherwise: `/run/svcnat`.
pub const DEFAULT_LOCK_DIR: &str = "/run/svcnat";

/// How long [`IptablesRestore::lock`](Executor::lock) waits for another process's
/// sync to end unless [`IptablesRestore::with_lock_wait`] says otherwise: 60 s.
/// The longest sync measured is a first sync of 10,000 services on nft, about
/// 13 s (PERFORMANCE.md), so a minute covers it several times over on a slower or
/// busier node, while a process that hangs holding the lock (a dying process
/// releases it) still turns into an error within a minute rather than never.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(60);

/// The fewest chains per restore on the nft backend, when a payload is cut into
/// pieces (see [`IptablesRestore::with_restore_pieces`]; larger payloads get
/// larger pieces). Chosen by measurement with
/// iptables-nft 1.8.9 (`kernel_cost --restore-pieces`, one run each, 2026-12-06,
/// PERFORMANCE.md): a 10k-service first sync took 12.6 s in pieces of 1,000 chains
/// and 14.6 s in pieces of 500 (36.6 min whole); at 2k services 500 and 1,000
/// were within 7% of each other (2.1 s and 2.2 s, 27 s whole).
pub const NFT_CHAINS_PER_RESTORE: usize = 1000;

/// What `iptables --version` prints for the iptables-nft whose netlink
/// messages [`super::xt`] writes.
const XT_VERSION: &str = "v1.8.9 (nf_tables)";

/// Whether a piece holds nothing the parser reads more loosely than
/// iptables does, so that its parse says all the piece says: no rule
/// counters (`[p:b]`, `-c`, `--set-counters`), no `recent` options svcnat does not write
/// (`--mask`, `--rsource`, `--rdest`).
fn plain(part: &str) -> bool {
    !part.starts_with('[')
        && ![
            "\n[",
            " -c ",
            "--set-counters",
            "--mask",
            "--rsource",
            "--rdest",
        ]
        .iter()
        .any(|s| part.contains(s))
}

/// The largest netlink batch [`IptablesRestore`] sends at once: a commit
/// costs the kernel a walk over every chain of the table, so few large ones;
/// the batch is built in memory and copied into the kernel whole.
const XT_BATCH_BYTES: usize = 64 << 20;

/// The chains per restore on nft for a payload of `chains` chains, unless
/// [`IptablesRestore::with_restore_pieces`] says otherwise: about 110 pieces,
/// of at least [`NFT_CHAINS_PER_RESTORE`] and at most 4,000 chains. Every
/// iptables-nft commit walks every chain of the namespace in the kernel (about
/// 0.5 µs each: at 300,000 chains a piece costs 0.15 s more than in an empty
/// namespace), while a piece costs iptables-nft-restore the square of its
/// chains in user space; so the larger the table, the larger the pieces that
/// pay. Measured on a 30,000-service first sync (330,000 chains, 2026-12-07,
/// PERFORMANCE.md): 60.5 s in pieces of 1,000, 53.7 s in pieces of 2,000, 49.5
/// s in pieces of 3,000; at 10,000 services 1,000 stays the best. Pieces
/// that go as netlink batches (see [Netlink](IptablesRestore#netlink)) are
/// merged into large commits whatever their size; it still sizes the rest.
fn nft_chains_per_restore(chains: usize) -> usize {
    (chains / 110).clamp(NFT_CHAINS_PER_RESTORE, 4000)
}

impl IptablesRestore {
    /// An executor for `backend`, waiting up to 5 seconds for the xtables lock.
    pub fn new(backend: Backend) -> Self {
        IptablesRestore {
            backend,
            resolved: None,
            wait_seconds: Some(5),
            prefix: Prefixed::default(),
            pieces: None,
            nfacct_known: Vec::new(),
            lock_dir: Some(PathBuf::from(DEFAULT_LOCK_DIR)),
            lock_wait: DEFAULT_LOCK_WAIT,
            xt: Some(XtSocket::default()),
            counts: (0, 0),
            xt_version: None,
        }
    }

    /// How this executor's restores reached the kernel so far: the netlink
    /// batches the kernel applied (see [Netlink](IptablesRestore#netlink)),
    /// and the `iptables-restore` processes run.
    pub fn restore_counts(&self) -> (u64, u64) {
        self.counts
    }

    /// Whether, on the nft backend, pieces of declarations and appended rules
    /// are written as netlink batches instead of `iptables-nft-restore` input
    /// (on by default; see [Netlink](IptablesRestore#netlink)). Off, every
    /// payload goes through `iptables-nft-restore`.
    pub fn with_netlink_rules(mut self, on: bool) -> Self {
        self.xt = on.then(XtSocket::default);
        self
    }

    /// Where the sync lock files are ([`DEFAULT_LOCK_DIR`] unless set; made, mode
    /// 0755, if missing); `None` turns the lock off, for a process that knows it is
    /// the only one writing the namespace's tables. Every svcnat process that may
    /// sync the same namespace must use the same directory.
    pub fn with_lock_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.lock_dir = dir;
        self
    }

    /// How long [`lock`](Executor::lock) waits for another process to release the
    /// lock before it fails with [`ExecError::LockTimeout`] ([`DEFAULT_LOCK_WAIT`]
    /// unless set; zero tries once).
    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// How large payloads are restored: `Some(n)` cuts a payload of more than `n`
    /// chains into dependency-ordered pieces of at most `n` chains each (see
    /// [`pieces`](crate::exec::pieces)), `None` sends every payload in one restore.
    /// By default nft cuts at [`NFT_CHAINS_PER_RESTORE`] chains, or at a hundred
    /// and tenth of a larger payload's chains, up to 4,000 (iptables-nft-restore
    /// takes one large `--noflush` payload in time quadratic in its chains, and
    /// each piece costs a walk over every chain in the kernel) and legacy
    /// never does (each legacy restore rewrites the whole table, so pieces would
    /// cost more).
    /// `Some(0)` is taken as `None`. Only `--noflush` restores are cut: without it
    /// each restore would empty the table first. A restore with
    /// [`RestoreOptions::cut`] off is not: the [`Syncer`](crate::sync::Syncer)
    /// cuts its payloads itself, knowing the tables before them (see
    /// [`pieces_over`](crate::exec::pieces_over)).
    pub fn with_restore_pieces(mut self, chains: Option<usize>) -> Self {
        self.pieces = Some(chains.filter(|n| *n > 0));
        self
    }

    /// The chains per restore in effect for the backend in use, for a payload
    /// of `chains` chains.
    fn restore_limit(&mut self, chains: usize) -> Option<usize> {
        if let Some(set) = self.pieces {
            return set;
        }
        (self.backend() == Backend::Nft).then(|| nft_chains_per_restore(chains))
    }

    /// Sets the lock wait (`-w N`); `None` passes no wait flag.
    pub fn with_wait(mut self, seconds: Option<u32>) -> Self {
        self.wait_seconds = seconds;
        self
    }

    /// Runs every command behind this prefix (for example `ip netns exec NS`).
    pub fn with_command_prefix<S: Into<String>>(
        mut self,
        prefix: impl IntoIterator<Item = S>,
    ) -> Self {
        self.prefix = Prefixed::new(prefix.into_iter().map(Into::into).collect());
        // Another namespace, perhaps: its counters are not known.
        self.nfacct_known.clear();
        // Nor its iptables, and the socket is the old namespace's.
        self.xt_version = None;
        if self.xt.is_some() {
            self.xt = Some(XtSocket::default());
        }
        self
    }

    /// The inode of the network namespace the executor's commands run in.
    fn netns(&mut self) -> Result<u64, ExecError> {
        self.prefix.netns()
    }

    /// The backend in use, detecting it on first use for [`Backend::Auto`].
    pub fn backend(&mut self) -> Backend {
        if let Some(b) = self.resolved {
            return b;
        }
        let b = match self.backend {
            Backend::Auto => self.detect(),
            other => other,
        };
        self.resolved = Some(b);
        b
    }

    /// The binary that runs `tool` (`""`, `"-save"`, `"-restore"`) for `family`.
    pub fn binary(&mut self, family: IpFamily, tool: &str) -> String {
        let base = match family {
            IpFamily::Ipv4 => "iptables",
            IpFamily::Ipv6 => "ip6tables",
        };
        format!("{base}{}{tool}", self.backend().suffix())
    }

    fn count_rules(&self, binary: &str) -> Option<usize> {
        let out = self.command(binary).stderr(Stdio::null()).output().ok()?;
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("-A "))
                .count()
        })
    }

    fn detect(&self) -> Backend {
        let count = |backend: &str| {
            let v4 = self.count_rules(&format!("iptables-{backend}-save"));
            let v6 = self.count_rules(&format!("ip6tables-{backend}-save"));
            match (v4, v6) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
            }
        };
        match (count("nft"), count("legacy")) {
            (Some(n), Some(l)) if l > n => Backend::Legacy,
            (Some(_), _) => Backend::Nft,
            (None, Some(_)) => Backend::Legacy,
            (None, None) => Backend::System,
        }
    }

    fn command(&self, binary: &str) -> Command {
        self.prefix.command(binary)
    }

    fn wait_args(&self) -> Vec<String> {
        self.wait_seconds
            .map(|s| vec!["-w".to_owned(), s.to_string()])
            .unwrap_or_default()
    }

    /// Runs `binary args` with `stdin`; returns (exit code, stdout, stderr).
    fn run(
        &self,
        binary: &str,
        args: &[String],
        stdin: Option<&str>,
    ) -> Result<(Option<i32>, String, String), ExecError> {
        self.prefix.run(binary, args, stdin)
    }

    /// The arguments of `iptables-restore` for `options`.
    fn restore_args(&self, options: RestoreOptions) -> Vec<String> {
        let mut args = self.wait_args();
        if options.noflush {
            args.push("--noflush".into());
        }
        if options.counters {
            args.push("--counters".into());
        }
        args
    }

    /// Applies `parts` in order: each run of parts the encoder writes
    /// ([`xt`](super::xt)) as one netlink batch of at most [`XT_BATCH_BYTES`]
    /// (a refused batch, which applied nothing, again as text), any other part
    /// as one `iptables-restore` with `args`.
    fn apply_parts(
        &mut self,
        family: IpFamily,
        parts: &[&str],
        options: RestoreOptions,
        args: &[String],
    ) -> Result<(), RestoreFailed> {
        let netlink = options.noflush && self.backend() == Backend::Nft;
        let mut next = 0;
        while next < parts.len() {
            // Asked each time: a batch refused for want of permission turns
            // the socket off.
            let usable = self.xt.as_ref().is_some_and(XtSocket::usable);
            let run = if netlink && usable {
                self.netlink_run(family, &parts[next..])
            } else {
                (0, false)
            };
            let texts = match run {
                // Not written: this part as text.
                (0, _) => next..next + 1,
                (n, true) => {
                    self.counts.0 += 1;
                    next += n;
                    continue;
                }
                // Refused, so nothing of it applied: as text, where the error
                // is iptables' own.
                (n, false) => next..next + n,
            };
            for applied in texts.clone() {
                self.restore_text(family, parts[applied], args)
                    .map_err(|error| RestoreFailed { applied, error })?;
            }
            next = texts.end;
        }
        Ok(())
    }

    /// Encodes the longest run of `parts` from the first that the encoder
    /// writes, up to [`XT_BATCH_BYTES`], and sends it; how many parts it
    /// holds (0: the first is not written, nothing was sent), and whether the
    /// kernel applied it.
    fn netlink_run(&mut self, family: IpFamily, parts: &[&str]) -> (usize, bool) {
        let Some(netns) = self.netlink_target(family) else {
            return (0, false);
        };
        let Some(xt) = &self.xt else {
            return (0, false);
        };
        let first_seq = xt.next_seq();
        let mut batch = XtBatch::new(family, first_seq);
        for part in parts {
            // A piece that deletes chains goes in a batch of its own: a chain
            // something else still jumps to gets it refused, and then only it
            // goes again as text, where the Syncer learns which chain it was.
            let deletes = part.contains("\n-X ") || part.contains("\n--delete-chain ");
            if batch.len() >= XT_BATCH_BYTES || !plain(part) || deletes && batch.payloads() > 0 {
                break;
            }
            let Ok(parsed) = crate::parse::parse_restore_as(part, family) else {
                break;
            };
            if batch.push(&parsed).is_err() || deletes {
                break;
            }
        }
        let n = batch.payloads();
        if n == 0 {
            return (0, false);
        }
        let batch = batch.finish(first_seq);
        let sent = match &mut self.xt {
            Some(xt) => xt.send(&batch, netns.as_deref()),
            None => return (0, false),
        };
        (n, sent == Sent::Applied)
    }

    /// The namespace file batches go to (`Some(None)`: this thread's), or
    /// `None` when they cannot go: the iptables behind the prefix is not
    /// iptables-nft 1.8.9 (whose messages the encoder writes), or the
    /// prefix's namespace cannot be named here (see [`netns_file`]), or is
    /// not the one its commands run in.
    fn netlink_target(&mut self, family: IpFamily) -> Option<Option<PathBuf>> {
        if self.xt_version.is_none() {
            let binary = self.binary(family, "");
            let version = self.run(&binary, &["--version".to_owned()], None);
            let known = matches!(&version, Ok((Some(0), out, _)) if out.contains(XT_VERSION));
            self.xt_version = Some(known);
        }
        if self.xt_version != Some(true) {
            return None;
        }
        if self.prefix.is_empty() {
            return Some(None);
        }
        let file = netns_file(self.prefix.words())?;
        let inode = self.prefix.netns().ok()?;
        let same = std::fs::metadata(&file).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino() == inode
        });
        same.then_some(Some(file))
    }

    /// One `iptables-restore` of `payload` with `args`.
    fn restore_text(
        &mut self,
        family: IpFamily,
        payload: &str,
        args: &[String],
    ) -> Result<(), ExecError> {
        let binary = self.binary(family, "-restore");
        self.counts.1 += 1;
        match self.run(&binary, args, Some(payload))? {
            (Some(0), _, _) => Ok(()),
            (status, _, stderr) => {
                // Perhaps a counter the rules name was deleted: look again next time.
                self.nfacct_known.clear();
                Err(failed(
                    &binary,
                    args.to_vec(),
                    status,
                    stderr,
                    Some(payload),
                ))
            }
        }
    }

    /// `iptables -C` for one jump rule, and `-I` (at the top of its chain) if it
    /// is missing.
    fn check_insert(&mut self, family: IpFamily, jump: &JumpRule) -> Result<(), ExecError> {
        match self.jump_command(family, jump, "-C")? {
            (Some(0), _, _) => return Ok(()),
            // 1: the rule does not exist (or a lookup failed); insert tells which.
            (Some(1), _, _) => {}
            (status, _, stderr) => return Err(self.jump_failed(family, jump, "-C", status, stderr)),
        }
        match self.jump_command(family, jump, "-I")? {
            (Some(0), _, _) => Ok(()),
            (status, _, stderr) => Err(self.jump_failed(family, jump, "-I", status, stderr)),
        }
    }

    /// The arguments of `iptables -t TABLE OP CHAIN RULE` for a jump rule.
    fn jump_args(&self, jump: &JumpRule, op: &str) -> Vec<String> {
        let mut args = self.wait_args();
        args.extend([
            "-t".into(),
            jump.table.as_str().into(),
            op.into(),
            jump.chain.to_string(),
        ]);
        args.extend(rule_args(&jump.rule));
        args
    }

    /// Runs `iptables -t TABLE OP CHAIN RULE` for a jump rule.
    fn jump_command(
        &mut self,
        family: IpFamily,
        jump: &JumpRule,
        op: &str,
    ) -> Result<(Option<i32>, String, String), ExecError> {
        let binary = self.binary(family, "");
        self.run(&binary, &self.jump_args(jump, op), None)
    }

    fn jump_failed(
        &mut self,
        family: IpFamily,
        jump: &JumpRule,
        op: &str,
        status: Option<i32>,
        stderr: String,
    ) -> ExecError {
        let binary = self.binary(family, "");
        failed(&binary, self.jump_args(jump, op), status, stderr, None)
    }

    /// Lists `chain` (`iptables -t TABLE -S CHAIN`) and deletes (`-D`) the copies
    /// of each of `jumps` (all for that chain) beyond one. Nothing is deleted when
    /// the listing does not parse.
    fn remove_extra_copies(
        &mut self,
        family: IpFamily,
        table: Table,
        chain: &str,
        jumps: &[&JumpRule],
    ) -> Result<(), ExecError> {
        let binary = self.binary(family, "");
        let mut args = self.wait_args();
        args.extend([
            "-t".into(),
            table.as_str().into(),
            "-S".into(),
            chain.into(),
        ]);
        let listing = match self.run(&binary, &args, None)? {
            (Some(0), stdout, _) => stdout,
            (status, _, stderr) => return Err(failed(&binary, args, status, stderr, None)),
        };
        let dump = listing_as_dump(&listing, table, chain, jumps);
        let Some(edits) = jump_edits(&dump, family, table, jumps) else {
            return Ok(());
        };
        for jump in edits.extra {
            match self.jump_command(family, jump, "-D")? {
                (Some(0), _, _) => {}
                (status, _, stderr) => {
                    return Err(self.jump_failed(family, jump, "-D", status, stderr));
                }
            }
        }
        Ok(())
    }

    /// The names `nfacct list` prints, one counter a line:
    /// `{ pkts = N, bytes = N } = NAME;` (with `, quota = N` for a quota object).
    fn nfacct_list(&self) -> Result<Vec<String>, ExecError> {
        let args = vec!["list".to_owned()];
        match self.run(NFACCT, &args, None)? {
            (Some(0), stdout, _) => Ok(nfacct_names(&stdout)),
            (status, _, stderr) => Err(failed(NFACCT, args, status, stderr, None)),
        }
    }

    /// `nfacct add NAME`. If it fails but the counter is listed afterwards
    /// (another program created it in between: the kernel refuses to add a name
    /// twice), that is success.
    fn nfacct_add(&self, counter: NfacctCounter) -> Result<(), ExecError> {
        let args = vec!["add".to_owned(), counter.as_str().to_owned()];
        match self.run(NFACCT, &args, None)? {
            (Some(0), _, _) => Ok(()),
            (status, _, stderr) => {
                let there = self
                    .nfacct_list()
                    .is_ok_and(|names| names.iter().any(|n| n == counter.as_str()));
                if there {
                    Ok(())
                } else {
                    Err(failed(NFACCT, args, status, stderr, None))
                }
            }
        }
    }
}

/// The tool that lists and creates nfacct counters.
const NFACCT: &str = "nfacct";

/// The counter names in `nfacct list` output (`{ pkts = …, bytes = … } = NAME;`
/// per line); lines of another shape are skipped.
fn nfacct_names(listed: &str) -> Vec<String> {
    listed
        .lines()
        .filter_map(|line| {
            let (_, name) = line.trim_end().strip_suffix(';')?.rsplit_once("} = ")?;
            Some(name.to_owned())
        })
        .collect()
}

impl Executor for IptablesRestore {
    /// An exclusive `flock` on the lock file of the network namespace the commands
    /// run in (see [Exclusion](IptablesRestore#exclusion)); a guard that holds
    /// nothing when [`IptablesRestore::with_lock_dir`] turned the lock off.
    fn lock(&mut self) -> Result<SyncLock, ExecError> {
        let Some(dir) = self.lock_dir.clone() else {
            return Ok(SyncLock::none());
        };
        let path = lock_path(&dir, self.netns()?);
        lock_file(&path, self.lock_wait)
    }

    fn restore(
        &mut self,
        family: IpFamily,
        payload: &str,
        options: RestoreOptions,
    ) -> Result<(), ExecError> {
        let args = self.restore_args(options);
        // Legacy only: with nft the sorted declarations are taken in faster too
        // (2k services: 48 s to 11 s), but at 10k services they leave a table
        // that iptables-nft-save 1.8.9 crashes on, ascending or descending (a stack
        // overflow: with an unlimited stack it prints the table).
        let sorted = if self.backend() == Backend::Legacy {
            declarations_descending(payload)
        } else {
            None
        };
        let payload = sorted.as_deref().unwrap_or(payload);
        // A payload the parser cannot read is sent whole, for the binary to judge.
        let chains = payload.lines().filter(|l| l.starts_with(':')).count();
        let pieces = match self.restore_limit(chains) {
            Some(n) if options.noflush && options.cut => super::pieces(payload, family, n).ok(),
            _ => None,
        };
        // Each piece is a restore of its own: a failure leaves the pieces before it
        // applied, every one of them a safe state, and the Syncer syncs in full next.
        let parts: Vec<&str> = match &pieces {
            Some(pieces) => pieces.iter().map(String::as_str).collect(),
            None => vec![payload],
        };
        self.apply_parts(family, &parts, options, &args)
            .map_err(|f| f.error)
    }

    fn restore_all(
        &mut self,
        family: IpFamily,
        payloads: &[&str],
        options: RestoreOptions,
    ) -> Result<(), RestoreFailed> {
        if options.cut || self.backend() == Backend::Legacy {
            // Cut here, or declarations sorted: one at a time.
            return restore_each(self, family, payloads, options);
        }
        let args = self.restore_args(options);
        self.apply_parts(family, payloads, options, &args)
    }

    /// What [`IptablesRestore::with_restore_pieces`] sets, or the backend's
    /// default; `None` unless payloads are restored with `--noflush` (the
    /// `Syncer` always does).
    fn chains_per_restore(&mut self, _: IpFamily) -> Option<usize> {
        self.restore_limit(0)
    }

    /// As [`Self::chains_per_restore`], scaled on nft to the payload (see
    /// [`IptablesRestore::with_restore_pieces`]).
    fn chains_per_restore_for(&mut self, _: IpFamily, chains: usize) -> Option<usize> {
        self.restore_limit(chains)
    }

    /// One `iptables-restore --noflush` of `-C` lines, one per rule, each table's
    /// in a section of its own; the first line that fails names the missing rule.
    /// With legacy it runs with `--test`, which checks without writing the table
    /// back (a legacy restore otherwise rewrites every table it names); with nft
    /// and the system's binary it runs without, as iptables-nft-restore 1.8.9
    /// `--test` does not run `-C` and always succeeds (an empty nft commit
    /// changes nothing).
    fn first_missing_rule(
        &mut self,
        family: IpFamily,
        rules: &[JumpRule],
    ) -> Result<Option<usize>, ExecError> {
        if rules.is_empty() {
            return Ok(None);
        }
        let (text, line_of) = check_payload(rules);
        let binary = self.binary(family, "-restore");
        let mut args = self.wait_args();
        args.push("--noflush".into());
        if self.backend() == Backend::Legacy {
            args.push("--test".into());
        }
        match self.run(&binary, &args, Some(&text))? {
            (Some(0), _, _) => Ok(None),
            (status, _, stderr) => {
                let error = failed(&binary, args, status, stderr, Some(&text));
                // Exit 1 (a rule not there) or 2 (a chain or jump target not
                // there) at a line of the check: a rule is missing. nft reports a
                // missing jump target at the section's COMMIT, naming the chain
                // (`Chain 'X' does not exist`): the first rule jumping to it (or in
                // it) is the one taken, else the section's last.
                let missing = error.failed_line().and_then(|n| {
                    if let Some(index) = line_of.get(&n) {
                        return Some(*index);
                    }
                    let (_, last) = line_of
                        .range(..=n)
                        .next_back()
                        .filter(|(line, _)| n - **line <= 1)?;
                    let named = match &error {
                        ExecError::Failed { stderr, .. } => stderr
                            .split_once("Chain '")
                            .and_then(|(_, rest)| rest.split_once('\''))
                            .map(|(chain, _)| chain),
                        _ => None,
                    };
                    let section = rules[*last].table;
                    named
                        .and_then(|chain| {
                            let in_section =
                                || rules.iter().enumerate().filter(|(_, r)| r.table == section);
                            in_section()
                                .find(|(_, r)| r.rule.target_name() == Some(chain))
                                .or_else(|| in_section().find(|(_, r)| r.chain.as_str() == chain))
                                .map(|(i, _)| i)
                        })
                        .or(Some(*last))
                });
                match (status, missing) {
                    (Some(1 | 2), Some(index)) => Ok(Some(index)),
                    _ => Err(error),
                }
            }
        }
    }

    fn save(&mut self, family: IpFamily, table: Table) -> Result<String, ExecError> {
        let binary = self.binary(family, "-save");
        let args = vec!["-t".to_owned(), table.as_str().to_owned()];
        match self.run(&binary, &args, None)? {
            (Some(0), stdout, _) => Ok(stdout),
            (status, _, stderr) => Err(failed(&binary, args, status, stderr, None)),
        }
    }

    /// Checks with `-C` and inserts with `-I` if missing; then deletes the copies
    /// beyond the first of the rule in its chain, read with `iptables -S CHAIN`.
    fn ensure_jump(&mut self, family: IpFamily, jump: &JumpRule) -> Result<(), ExecError> {
        self.check_insert(family, jump)?;
        self.remove_extra_copies(family, jump.table, jump.chain.as_str(), &[jump])
    }

    /// With the legacy backend, reads each table the rules are for once
    /// (`iptables-save -t TABLE`) instead of running `iptables -C` per rule, then
    /// inserts all missing rules, and deletes the extra copies of rules that are
    /// there more than once, with one `iptables-restore --noflush`. Legacy's
    /// every `-C` and `-I` reads (and `-I` writes) the whole table: at 10,000
    /// services each costs about half a second, and one save about as much as one
    /// check. With nft a check reads only what it needs (milliseconds) while a save
    /// of a large table takes seconds, so the rules are checked one by one, as with
    /// [`Backend::System`], whose variant is not known, and the missing ones
    /// inserted with one restore, a commit per table (each nft commit walks every
    /// chain of the namespace); then each built-in chain they are for is listed
    /// once (`iptables -S CHAIN`, as cheap as a check) and the extra copies are
    /// deleted with `-D`.
    ///
    /// A rule counts as present when a rule of its chain in the dump is the same
    /// after [`canonical_rule`](crate::parse::canonical_rule), with its modules in the same order (as `-C` tells
    /// them apart); a rule given twice is inserted once. If a dump does not parse,
    /// or a rule is for a chain that is not built in, that table's rules are checked
    /// one by one, as [`Executor::ensure_jump`] checks them.
    fn ensure_jumps(&mut self, family: IpFamily, jumps: &[JumpRule]) -> Result<(), ExecError> {
        if self.backend() != Backend::Legacy {
            let mut missing = Vec::new();
            for jump in jumps {
                match self.jump_command(family, jump, "-C")? {
                    (Some(0), _, _) => {}
                    // 1: the rule does not exist (or a lookup failed).
                    (Some(1), _, _) if !missing.contains(&jump) => missing.push(jump),
                    (Some(1), _, _) => {}
                    (status, _, stderr) => {
                        return Err(self.jump_failed(family, jump, "-C", status, stderr));
                    }
                }
            }
            // The missing ones in one restore, a commit per table: each nft
            // commit walks every chain of the namespace, and one with a jump
            // checks every chain the built-in chains reach (a first sync's 14
            // inserts took 2.9 s at 30,000 services one by one). A refusal is
            // looked at rule by rule, to name the rule.
            if !missing.is_empty()
                && self
                    .restore(family, &insertions(&missing), RestoreOptions::default())
                    .is_err()
            {
                for jump in missing {
                    self.check_insert(family, jump)?;
                }
            }
            let mut chains: Vec<(Table, &str)> = Vec::new();
            for jump in jumps {
                let at = (jump.table, jump.chain.as_str());
                if !chains.contains(&at) {
                    chains.push(at);
                }
            }
            for (table, chain) in chains {
                let there: Vec<&JumpRule> = jumps
                    .iter()
                    .filter(|j| j.table == table && j.chain.as_str() == chain)
                    .collect();
                self.remove_extra_copies(family, table, chain, &there)?;
            }
            return Ok(());
        }
        let tables = super::tables_of(jumps);
        let mut edits = String::new();
        for table in tables {
            let wanted: Vec<&JumpRule> = jumps.iter().filter(|j| j.table == table).collect();
            let saved = self.save(family, table)?;
            let Some(JumpEdits { missing, extra }) = jump_edits(&saved, family, table, &wanted)
            else {
                for jump in wanted {
                    self.ensure_jump(family, jump)?;
                }
                continue;
            };
            if missing.is_empty() && extra.is_empty() {
                continue;
            }
            // Writing into a String cannot fail.
            let _ = restore::open_table(&mut edits, table);
            for jump in extra {
                let _ = RuleLine::delete(&mut edits, jump.chain.as_str()).and_then(|mut line| {
                    line.rule(&jump.rule)?;
                    line.end()
                });
            }
            for jump in missing {
                let _ =
                    RuleLine::insert(&mut edits, jump.chain.as_str(), 1).and_then(|mut line| {
                        line.rule(&jump.rule)?;
                        line.end()
                    });
            }
            let _ = restore::commit(&mut edits);
        }
        if edits.is_empty() {
            return Ok(());
        }
        let options = RestoreOptions {
            counters: false,
            ..RestoreOptions::default()
        };
        self.restore(family, &edits, options)
    }

    /// Runs `nfacct list` once, then `nfacct add NAME` for each counter not
    /// listed, behind the command prefix (so in the namespace of the rules). The
    /// counters listed or created are remembered and not looked for again until a
    /// restore fails: a counter that rules name cannot be deleted (the kernel
    /// refuses with "Device or resource busy"), so after a successful restore it
    /// is still there.
    ///
    /// # Errors
    /// [`ExecError::Nfacct`] naming the counter, with the failure of `nfacct`
    /// (it cannot be started, say: `nfacct: cannot run: No such file or
    /// directory`; behind a prefix, the prefix's report that `nfacct` was not
    /// found; or the kernel's refusal, as without the `nfnetlink_acct` module).
    fn ensure_nfacct(&mut self, counters: &[NfacctCounter]) -> Result<(), ExecError> {
        let wanted: Vec<NfacctCounter> = counters
            .iter()
            .copied()
            .filter(|c| !self.nfacct_known.contains(c))
            .collect();
        let Some(&first) = wanted.first() else {
            return Ok(());
        };
        let nfacct_error = |counter, e| ExecError::Nfacct {
            counter,
            source: Box::new(e),
        };
        let listed = self.nfacct_list().map_err(|e| nfacct_error(first, e))?;
        for counter in wanted {
            if !listed.iter().any(|n| n == counter.as_str()) {
                self.nfacct_add(counter)
                    .map_err(|e| nfacct_error(counter, e))?;
            }
            if !self.nfacct_known.contains(&counter) {
                self.nfacct_known.push(counter);
            }
        }
        Ok(())
    }

    fn clear_conntrack(&mut self, family: IpFamily, flows: &[StaleFlow]) -> Result<(), ExecError> {
        for flow in flows {
            let args = conntrack_args(family, flow);
            match self.run("conntrack", &args, None)? {
                (Some(0), _, _) => {}
                // conntrack exits 1 when nothing matched.
                (Some(1), _, stderr) if stderr.contains("0 flow entries") => {}
                (status, _, stderr) => {
                    return Err(failed("conntrack", args, status, stderr, None));
                }
            }
        }
        Ok(())
    }
}

/// The `-C` payload that checks `rules`, a section per table in the order the
/// tables first appear, and which rule each of its lines checks (1-based).
fn check_payload(rules: &[JumpRule]) -> (String, std::collections::BTreeMap<usize, usize>) {
    let tables = super::tables_of(rules);
    let mut text = String::new();
    let mut line_of = std::collections::BTreeMap::new();
    let mut line = 0;
    for table in tables {
        // Writing into a String cannot fail.
        let _ = restore::open_table(&mut text, table);
        line += 1;
        for (i, rule) in rules.iter().enumerate().filter(|(_, r)| r.table == table) {
            let _ = RuleLine::check(&mut text, rule.chain.as_str()).and_then(|mut l| {
                l.rule(&rule.rule)?;
                l.end()
            });
            line += 1;
            line_of.insert(line, i);
        }
        let _ = restore::commit(&mut text);
        line += 1;
    }
    (text, line_of)
}

/// The payload with each run of user-chain declarations (`:NAME - [0:0]` lines in a
/// row) in descending name order, or `None` if every run is in that order already.
///
/// iptables-legacy-restore takes declarations in descending order faster: at 10,000
/// services 3.4 s instead of 4.9 s (iptables 1.8.9). A declaration only creates (or
/// flushes) its own chain, so the reordered payload does exactly what the original
/// does; every other line keeps its place.
fn declarations_descending(payload: &str) -> Option<String> {
    if !payload.ends_with('\n') {
        return None;
    }
    let is_declaration = |line: &str| line.starts_with(':') && line.ends_with(" - [0:0]\n");
    let mut lines = payload.split_inclusive('\n').peekable();
    let mut out: Option<String> = None;
    let mut done = 0;
    let mut run: Vec<&str> = Vec::new();
    while let Some(line) = lines.next() {
        if !is_declaration(line) {
            if let Some(out) = &mut out {
                out.push_str(line);
            }
            done += line.len();
            continue;
        }
        let start = done;
        run.clear();
        run.push(line);
        while let Some(next) = lines.next_if(|l| is_declaration(l)) {
            run.push(next);
        }
        done += run.iter().map(|l| l.len()).sum::<usize>();
        if run.is_sorted_by(|a, b| a >= b) {
            if let Some(out) = &mut out {
                run.iter().for_each(|l| out.push_str(l));
            }
            continue;
        }
        let out = out.get_or_insert_with(|| {
            let mut text = String::with_capacity(payload.len());
            text.push_str(&payload[..start]);
            text
        });
        run.sort_unstable_by(|a, b| b.cmp(a));
        run.iter().for_each(|l| out.push_str(l));
    }
    out
}

/// What [`Executor::ensure_jumps`] changes in one table.
#[derive(Debug, Default, PartialEq)]
struct JumpEdits<'j> {
    /// The rules to insert: those not in their chain yet, each once.
    missing: Vec<&'j JumpRule>,
    /// The rules to delete once per entry: each copy beyond the first of a rule
    /// that is in its chain more than once.
    extra: Vec<&'j JumpRule>,
}

/// What `ensure_jump` one rule after the other would change in the table `saved`
/// shows, for `wanted` (all for `table`): the rules not in their chain yet, each
/// once, and the copies beyond one of those there more than once. `None` when that
/// cannot be told from the dump (it does not parse, or a rule is for a chain that
/// is not built in), and the rules must be checked one by one.
fn jump_edits<'j>(
    saved: &str,
    family: IpFamily,
    table: Table,
    wanted: &[&'j JumpRule],
) -> Option<JumpEdits<'j>> {
    let builtin = builtin_chains(table);
    if wanted.iter().any(|j| !builtin.contains(&j.chain.as_str())) {
        return None;
    }
    let present = builtin_rules(saved, family, table)?;
    // What `-C` compares: the canonical rule, and the order of its modules.
    let same = |a: &Rule, b: &Rule| super::same_rule(a, b, family);
    let mut edits = JumpEdits::default();
    let mut seen: Vec<&JumpRule> = Vec::new();
    for jump in wanted {
        if seen
            .iter()
            .any(|m| m.chain == jump.chain && same(&m.rule, &jump.rule))
        {
            continue;
        }
        seen.push(jump);
        let copies = present
            .iter()
            .filter(|(chain, rule)| chain == jump.chain.as_str() && same(rule, &jump.rule))
            .count();
        match copies {
            0 => edits.missing.push(jump),
            n => edits.extra.extend(std::iter::repeat_n(*jump, n - 1)),
        }
    }
    Some(edits)
}

/// A restore payload inserting `jumps` at the top of their chains, in order
/// (as one `-I` each would: the last for a chain ends up first), a section per
/// table in the order the tables first come.
fn insertions(jumps: &[&JumpRule]) -> String {
    let mut tables: Vec<Table> = Vec::new();
    for jump in jumps {
        if !tables.contains(&jump.table) {
            tables.push(jump.table);
        }
    }
    let mut text = String::new();
    for table in tables {
        // Writing into a String cannot fail.
        let _ = restore::open_table(&mut text, table);
        for jump in jumps.iter().filter(|j| j.table == table) {
            let _ = RuleLine::insert(&mut text, jump.chain.as_str(), 1).and_then(|mut line| {
                line.rule(&jump.rule)?;
                line.end()
            });
        }
        let _ = restore::commit(&mut text);
    }
    text
}

/// An `iptables -S CHAIN` listing of a built-in chain as an `iptables-save` dump
/// of `table` that [`jump_edits`] reads: the chain with its policy, the chains
/// `jumps` go to declared (so their jumps read as jumps), and the listed rules.
fn listing_as_dump(listing: &str, table: Table, chain: &str, jumps: &[&JumpRule]) -> String {
    let mut policy = "ACCEPT";
    let mut rules = String::new();
    for line in listing.lines() {
        if let Some(rest) = line.strip_prefix("-P ") {
            if let Some((name, p)) = rest.split_once(' ')
                && name == chain
            {
                policy = p.trim();
            }
        } else if line.starts_with("-A ") {
            rules.push_str(line);
            rules.push('\n');
        }
    }
    let mut text = String::with_capacity(rules.len() + 200);
    // Writing into a String cannot fail.
    let _ = restore::open_table(&mut text, table);
    let _ = restore::declare_with_policy(&mut text, chain, policy);
    let mut targets: Vec<&str> = Vec::new();
    for jump in jumps {
        if let Some(target) = jump.rule.target_name()
            && target != chain
            && !targets.contains(&target)
        {
            targets.push(target);
            let _ = restore::declare(&mut text, target);
        }
    }
    text.push_str(&rules);
    let _ = restore::commit(&mut text);
    text
}

/// The rules of `table`'s built-in chains in an `iptables-save -t TABLE` dump, as
/// `(chain, rule)`; `None` if the dump does not hold the table or does not parse.
/// Only the declarations and the built-in chains' rules are parsed.
fn builtin_rules(saved: &str, family: IpFamily, table: Table) -> Option<Vec<(String, Rule)>> {
    let builtin = builtin_chains(table);
    let mut text = String::with_capacity(saved.len() / 8);
    for line in saved.lines() {
        let keep = line.starts_with('*')
            || line.starts_with(':')
            || line == "COMMIT"
            || line
                .strip_prefix("-A ")
                .and_then(|rest| rest.split(' ').next())
                .is_some_and(|chain| builtin.contains(&chain));
        if keep {
            text.push_str(line);
            text.push('\n');
        }
    }
    let ruleset = parse_as(&text, family).ok()?;
    let rules = ruleset.table(table)?;
    Some(
        builtin
            .iter()
            .filter_map(|name| rules.chain(name))
            .flat_map(|chain| {
                chain
                    .rules
                    .iter()
                    .map(|rule| (chain.name.to_string(), rule.clone()))
            })
            .collect(),
    )
}

/// The `conntrack -D` arguments that delete one stale flow's entries.
pub(crate) fn conntrack_args(family: IpFamily, flow: &StaleFlow) -> Vec<String> {
    let mut args: Vec<String> = vec!["-D".into()];
    if family == IpFamily::Ipv6 {
        args.extend(["-f".into(), "ipv6".into()]);
    }
    let proto = match flow.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    };
    args.extend(["-p".into(), proto.into()]);
    match flow.destination {
        FlowDestination::Service(addr) => {
            args.extend(["--orig-dst".into(), addr.ip().to_string()]);
            args.extend(["--orig-port-dst".into(), addr.port().to_string()]);
        }
        FlowDestination::NodePort(port) => {
            args.extend(["--orig-port-dst".into(), port.to_string()]);
        }
    }
    if let Some(ep) = flow.endpoint {
        args.extend(["--dst-nat".into(), ep.to_string()]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "svcnat-{}-{tag}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
            ));
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Two executors for the same namespace (here: the test's own, no prefix) take
    /// one lock: the second waits, fails with the typed error naming the file and
    /// the holder, and gets the lock once the first guard is dropped. The
    /// directory is made, mode 0755, and the file is 0600.
    #[test]
    fn a_second_executor_waits_for_the_lock_then_gets_it() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = TempDir::new("lock");
        let dir = tmp.0.join("run").join("svcnat");
        let exec = || {
            IptablesRestore::new(Backend::Nft)
                .with_lock_dir(Some(dir.clone()))
                .with_lock_wait(Duration::from_millis(100))
        };
        let (mut first, mut second) = (exec(), exec());
        let guard = first.lock().unwrap();
        assert!(guard.is_held());
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o755);
        let started = std::time::Instant::now();
        let err = second.lock().unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(100));
        let ExecError::LockTimeout {
            path,
            waited,
            holder,
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(path.parent(), Some(dir.as_path()));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("netns-") && name.ends_with(".lock"),
            "{name}"
        );
        assert_eq!(mode(path), 0o600);
        assert!(*waited >= Duration::from_millis(100), "{waited:?}");
        assert_eq!(*holder, Some(std::process::id()));
        let pid = std::process::id();
        assert_eq!(
            err.to_string(),
            format!(
                "sync lock {}: held by another process (pid {pid}) for more than {} ms",
                path.display(),
                waited.as_millis()
            )
        );
        // Not reentrant either: the first executor waits for its own guard too.
        assert!(matches!(
            first.clone().with_lock_wait(Duration::ZERO).lock(),
            Err(ExecError::LockTimeout { .. })
        ));
        drop(guard);
        let again = second.lock().unwrap();
        assert!(again.is_held());
        // With the lock turned off, nothing is held and nothing waits.
        let mut off = exec().with_lock_dir(None);
        assert!(!off.lock().unwrap().is_held());
        drop(again);
        assert!(first.lock().unwrap().is_held());
    }

    /// A lock file that cannot be made is an error that names it.
    #[test]
    fn an_unusable_lock_dir_is_a_typed_error() {
        let tmp = TempDir::new("lockfile");
        std::fs::create_dir_all(&tmp.0).unwrap();
        // A file where the directory should be.
        let file = tmp.0.join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let err = IptablesRestore::new(Backend::Nft)
            .with_lock_dir(Some(file.clone()))
            .lock()
            .unwrap_err();
        let ExecError::Lock { path, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(path.starts_with(&file), "{err}");
        assert!(err.to_string().starts_with("sync lock "), "{err}");
    }

    #[test]
    fn nfacct_list_output_is_read_by_name() {
        let listed = "{ pkts = 00000000000000000000, bytes = 00000000000000000000 } = foo;\n\
            { pkts = 00000000000000000012, bytes = 00000000000000003456 } = localhost_nps_accepted_pkts;\n\
            { pkts = 00000000000000000000, bytes = 00000000000000000000, quota = 10 } = with = sign;\n\
            not a counter line\n";
        assert_eq!(
            nfacct_names(listed),
            ["foo", "localhost_nps_accepted_pkts", "with = sign"]
        );
        assert!(nfacct_names("").is_empty());
    }

    /// Without the tool, the error names the counter and says why; nothing is
    /// remembered, so the next call tries again.
    #[test]
    fn ensure_nfacct_without_the_tool_names_the_counter() {
        let mut exec = IptablesRestore::new(Backend::Nft)
            .with_command_prefix(["/nonexistent/svcnat-no-such-prefix"]);
        let err = exec
            .ensure_nfacct(&[NfacctCounter::LocalhostNodePortsAccepted])
            .unwrap_err();
        assert!(
            matches!(
                &err,
                ExecError::Nfacct { counter: NfacctCounter::LocalhostNodePortsAccepted, source }
                    if matches!(**source, ExecError::Spawn { .. })
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(
                "nfacct counter localhost_nps_accepted_pkts is needed by the rules and cannot be \
                 created: /nonexistent/svcnat-no-such-prefix: cannot run: "
            ),
            "{err}"
        );
        assert!(exec.nfacct_known.is_empty());
        // Nothing asked for: nothing run.
        assert!(exec.ensure_nfacct(&[]).is_ok());
    }

    #[test]
    fn nft_pieces_grow_with_the_payload() {
        let v4 = IpFamily::Ipv4;
        let mut nft = IptablesRestore::new(Backend::Nft);
        // 10,000 services of 10 endpoints: 110,000 chains; 30,000: 330,000.
        for (chains, per_piece) in [
            (5, 1000),
            (110_000, 1000),
            (330_000, 3000),
            (10_000_000, 4000),
        ] {
            assert_eq!(
                nft.chains_per_restore_for(v4, chains),
                Some(per_piece),
                "{chains}"
            );
        }
        assert_eq!(nft.chains_per_restore(v4), Some(NFT_CHAINS_PER_RESTORE));
        // Set, it is what was set; legacy never cuts.
        let mut set = IptablesRestore::new(Backend::Nft).with_restore_pieces(Some(7));
        assert_eq!(set.chains_per_restore_for(v4, 330_000), Some(7));
        let mut legacy = IptablesRestore::new(Backend::Legacy);
        assert_eq!(legacy.chains_per_restore_for(v4, 330_000), None);
    }

    #[test]
    fn declarations_are_sent_in_descending_order() {
        let payload = "*filter\n:KUBE-B - [0:0]\n:KUBE-A - [0:0]\n-A KUBE-A -j DROP\nCOMMIT\n\
            *nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SEP-A - [0:0]\n:KUBE-SVC-B - [0:0]\n\
            :KUBE-SEP-AB - [0:0]\n-A KUBE-SVC-B -j KUBE-SEP-A\n:KUBE-X - [0:0]\n\
            :KUBE-Z - [0:0]\n-X KUBE-OLD\nCOMMIT\n";
        let sorted = declarations_descending(payload).unwrap();
        assert_eq!(
            sorted,
            "*filter\n:KUBE-B - [0:0]\n:KUBE-A - [0:0]\n-A KUBE-A -j DROP\nCOMMIT\n\
            *nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-B - [0:0]\n:KUBE-SEP-AB - [0:0]\n\
            :KUBE-SEP-A - [0:0]\n-A KUBE-SVC-B -j KUBE-SEP-A\n:KUBE-Z - [0:0]\n\
            :KUBE-X - [0:0]\n-X KUBE-OLD\nCOMMIT\n"
        );
        // The same lines, only the declarations of each run permuted.
        let lines = |t: &str| {
            let mut l: Vec<String> = t.lines().map(str::to_owned).collect();
            l.sort();
            l
        };
        assert_eq!(lines(&sorted), lines(payload));
        // In order already (or nothing to order): sent as it is.
        assert_eq!(declarations_descending(&sorted), None);
        assert_eq!(declarations_descending("*nat\nCOMMIT\n"), None);
        // A payload whose last line is cut short is sent as it is.
        assert_eq!(
            declarations_descending(":KUBE-A - [0:0]\n:KUBE-B - [0:0]\nCOMMIT"),
            None
        );
    }

    fn jump(table: Table, chain: &str, conntrack_first: bool, comment: &str, to: &str) -> JumpRule {
        use crate::ruleset::{ChainName, Comment, CtState, Match, Not, Target};
        let ct = Match::Conntrack(Not::is(vec![CtState::New]));
        let c = Match::Comment(Comment::new(comment).unwrap());
        let (a, b) = if conntrack_first { (ct, c) } else { (c, ct) };
        JumpRule {
            table,
            chain: ChainName::new(chain).unwrap(),
            rule: Rule::new()
                .with(a)
                .with(b)
                .to(Target::Jump(ChainName::new(to).unwrap())),
        }
    }

    /// What `ensure_jump` one rule after the other would insert: the rules not in
    /// their chain, each once, telling modules in another order apart as `-C` does.
    #[test]
    fn missing_jumps_are_what_checking_one_by_one_would_insert() {
        fn missing_jumps<'j>(
            saved: &str,
            table: Table,
            wanted: &[&'j JumpRule],
        ) -> Option<Vec<&'j JumpRule>> {
            jump_edits(saved, IpFamily::Ipv4, table, wanted).map(|e| {
                // Each rule here is in its chain at most once.
                assert!(e.extra.is_empty(), "{e:?}");
                e.missing
            })
        }
        let saved = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
            :KUBE-A - [0:0]\n:KUBE-B - [0:0]\n\
            -A INPUT -m conntrack --ctstate NEW -m comment --comment \"portals a\" -j KUBE-A\n\
            -A FORWARD -m comment --comment \"portals b\" -m conntrack --ctstate NEW -j KUBE-B\n\
            -A OUTPUT -j DROP\nCOMMIT\n";
        let present = jump(Table::Filter, "INPUT", true, "portals a", "KUBE-A");
        let reordered = jump(Table::Filter, "FORWARD", true, "portals b", "KUBE-B");
        let elsewhere = jump(Table::Filter, "OUTPUT", true, "portals a", "KUBE-A");
        let wanted = [&present, &reordered, &elsewhere, &elsewhere];
        let missing = missing_jumps(saved, Table::Filter, &wanted).unwrap();
        assert_eq!(missing, [&reordered, &elsewhere]);
        // The same rules in the order the dump has them are all there.
        let as_saved = jump(Table::Filter, "FORWARD", false, "portals b", "KUBE-B");
        let wanted = [&present, &as_saved];
        let missing = missing_jumps(saved, Table::Filter, &wanted).unwrap();
        assert!(missing.is_empty(), "{missing:?}");
        // A rule for a chain that is not built in, or a dump that does not parse:
        // checked one by one instead.
        let user = jump(Table::Filter, "KUBE-B", true, "portals a", "KUBE-A");
        assert_eq!(missing_jumps(saved, Table::Filter, &[&user]), None);
        let broken = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j\nCOMMIT\n";
        assert_eq!(missing_jumps(broken, Table::Filter, &[&present]), None);
    }

    /// A rule in its chain more than once (two processes that inserted it at
    /// once) has its copies beyond one deleted: one entry per copy, whatever else
    /// is in the chain, and however many times it is wanted.
    #[test]
    fn extra_copies_of_a_jump_are_deleted_down_to_one() {
        let a = jump(Table::Filter, "INPUT", true, "portals a", "KUBE-A");
        let b = jump(Table::Filter, "INPUT", true, "portals b", "KUBE-B");
        let c = jump(Table::Filter, "OUTPUT", true, "portals a", "KUBE-A");
        let line = |j: &JumpRule| format!("-A {} {}\n", j.chain, j.rule);
        let saved = format!(
            "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-A - [0:0]\n\
             :KUBE-B - [0:0]\n{}{}{}-A INPUT -j DROP\n{}{}{}COMMIT\n",
            line(&b),
            line(&b),
            line(&a),
            line(&a),
            line(&b),
            line(&c),
        );
        let edits = jump_edits(&saved, IpFamily::Ipv4, Table::Filter, &[&a, &b, &c, &b]).unwrap();
        assert_eq!(
            edits,
            JumpEdits {
                missing: vec![],
                extra: vec![&a, &b, &b],
            }
        );
        // Modules in another order are another rule to `-C`: not a copy.
        let reordered = jump(Table::Filter, "OUTPUT", false, "portals a", "KUBE-A");
        let saved = saved.replace("COMMIT", &line(&reordered)) + "COMMIT\n";
        let edits = jump_edits(&saved, IpFamily::Ipv4, Table::Filter, &[&c]).unwrap();
        assert_eq!(edits, JumpEdits::default());
    }

    /// `iptables -S CHAIN` (as iptables-nft 1.8.9 prints it) reads as a dump in
    /// which the jumps are typed, so copies are counted as in a save.
    #[test]
    fn a_chain_listing_counts_copies_as_a_save_does() {
        let portals = jump(Table::Nat, "PREROUTING", true, "portals", "KUBE-SERVICES");
        let mut portals_plain = portals.clone();
        portals_plain.rule = Rule::new()
            .with(crate::ruleset::Match::Comment(
                crate::ruleset::Comment::new("kubernetes service portals").unwrap(),
            ))
            .to(crate::ruleset::Target::Jump(
                crate::ruleset::ChainName::new("KUBE-SERVICES").unwrap(),
            ));
        let listing = "-P PREROUTING DROP\n\
            -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A PREROUTING -j DOCKER\n\
            -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n";
        let wanted = [&portals_plain, &portals];
        let dump = listing_as_dump(listing, Table::Nat, "PREROUTING", &wanted);
        assert_eq!(
            dump,
            "*nat\n:PREROUTING DROP [0:0]\n:KUBE-SERVICES - [0:0]\n\
             -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A PREROUTING -j DOCKER\n\
             -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             COMMIT\n"
        );
        let edits = jump_edits(&dump, IpFamily::Ipv4, Table::Nat, &wanted).unwrap();
        assert_eq!(
            edits,
            JumpEdits {
                missing: vec![&portals],
                extra: vec![&portals_plain],
            }
        );
    }

    #[test]
    fn builtin_rules_reads_only_the_builtin_chains_of_a_dump() {
        let saved = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n\
            :OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:USER - [0:0]\n\
            -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A PREROUTING -j USER\n\
            -A KUBE-SERVICES -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j RETURN\nCOMMIT\n";
        let rules = builtin_rules(saved, IpFamily::Ipv4, Table::Nat).unwrap();
        let text: Vec<String> = rules.iter().map(|(c, r)| format!("{c} {r}")).collect();
        assert_eq!(
            text,
            [
                "PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
                "PREROUTING -j USER",
            ]
        );
        // Another table, or a dump that does not parse: the caller checks rule by rule.
        assert_eq!(builtin_rules(saved, IpFamily::Ipv4, Table::Filter), None);
        let broken = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j\nCOMMIT\n";
        assert_eq!(builtin_rules(broken, IpFamily::Ipv4, Table::Nat), None);
    }
}
