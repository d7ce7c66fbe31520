//! [`NftNetlink`]: transactions sent to the kernel as netlink batches
//! ([`crate::nft::wire`]), without the `nft` binary and its cache.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use super::{NftCommand, NftExecError, NftExecutor, NftRefusal, RefusalKind};
use crate::exec::{ExecError, SyncLock};
use crate::nft::wire::{AnonNames, Batch, DumpOf, encode, encode_check, encode_dump};
use crate::nft::{Element, Family, MapElement, Name, Transaction};

/// How many bytes of replies are read at a time.
const RECEIVE_BUFFER: usize = 1 << 20;
/// The size asked of the socket's receive queue: the kernel reports every
/// refused message of a batch.
const RECEIVE_QUEUE: usize = 8 << 20;

/// Runs transactions as `nf_tables` netlink batches on a socket of its own,
/// the way `nft -f` sends them but without reading the table first: `nft`
/// reads its cache of the whole table before every transaction (half a second
/// at 10,000 services, whatever the transaction holds), this sends the batch
/// and reads the kernel's answer. The batch is the one nft would send for the
/// transaction's text ([`crate::nft::wire`]), so the kernel holds the same
/// objects and `nft list` shows them the same way.
///
/// `check` sends the batch with one more message the kernel always refuses,
/// so that its answers say whether the transaction would apply and nothing is
/// applied (`nft --check` reads the whole table first: 10 s at 30,000
/// services); chains, sets and maps are listed with netlink dumps. Everything
/// else goes through an [`NftCommand`]: the lock, the listings of elements and
/// of the whole table, and any transaction the encoder does not write
/// ([`WireError::Unsupported`](crate::nft::wire::WireError::Unsupported)),
/// which runs (or is checked) as text.
///
/// Anonymous sets and maps are named by this executor
/// ([`AnonNames::Tagged`], with a tag from the time and the process id), which
/// the kernel takes without scanning every set name of the table; see
/// [`NftNetlink::with_anon_names`].
///
/// Needs `CAP_NET_ADMIN` (as `nft` does) in the network namespace it works
/// on. Outside the first user namespace (a rootless container) the socket's
/// buffers cannot be raised past the system's limits; a batch larger than
/// the send buffer then goes as text, as does any transaction the encoder does
/// not write. The socket stays in the namespace it was opened in: if the
/// namespace at the path is deleted and made again, the next transaction opens
/// a new one there.
///
/// ```no_run
/// use svcnat::exec::{NftExecutor, NftNetlink};
/// use svcnat::nft::*;
/// let mut nft = NftNetlink::in_netns("test-node");
/// let mut tx = Transaction::new(Family::Ip, Name::new("kube-proxy")?);
/// tx.push(Operation::AddTable { comment: None });
/// let guard = nft.lock()?;
/// nft.run(&tx)?;
/// drop(guard);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct NftNetlink {
    command: NftCommand,
    netns: Option<PathBuf>,
    /// The socket, and the device and inode of the namespace it was opened in.
    socket: Option<(OwnedFd, Option<(u64, u64)>)>,
    names: AnonNames,
    seq: u32,
    batches: u64,
    as_text: u64,
}

impl Default for NftNetlink {
    fn default() -> Self {
        NftNetlink::new()
    }
}

impl NftNetlink {
    /// The largest piece, in operations, this transport asks a first sync or
    /// a full resync to be cut into ([`NftExecutor::piece_operations`]).
    /// Measured on kernel 6.18 at 10,000 services x 10 endpoints
    /// (PERFORMANCE.md, "Netlink instead of `nft -f`"): first syncs take
    /// about as long in pieces of 10,000 to 40,000 operations; a full resync
    /// took 23 s in pieces of 10,000, 26 s of 20,000, 31 s of 5,000 and 46 s
    /// of 50,000. Two kernel costs pull apart: each commit that rewrites
    /// chains the packets reach validates the whole table (fewer pieces are
    /// better), and each anonymous map walks the transaction it is in
    /// (smaller pieces are better). At 30,000 services a validation costs
    /// three times as much and there are three times as many commits, so the
    /// larger of the two good sizes.
    pub const PIECE_OPERATIONS: usize = 20_000;

    /// In this process's network namespace, with `nft` from the `PATH` for
    /// what is not sent as a batch.
    pub fn new() -> Self {
        let tag = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u32)
            ^ std::process::id().rotate_left(16);
        NftNetlink {
            command: NftCommand::new(),
            netns: None,
            socket: None,
            names: AnonNames::Tagged { tag, next: 0 },
            seq: 1,
            batches: 0,
            as_text: 0,
        }
    }

    /// In the named network namespace (`/run/netns/NAME`, as `ip netns`
    /// makes them), with `ip netns exec NAME nft` for what is not sent as a
    /// batch.
    pub fn in_netns(name: &str) -> Self {
        NftNetlink::new()
            .with_netns_path(format!("/run/netns/{name}"))
            .with_command(NftCommand::new().with_command_prefix(["ip", "netns", "exec", name]))
    }

    /// The network namespace the socket is opened in (a path such as
    /// `/run/netns/NAME` or `/proc/PID/ns/net`); this process's own if never
    /// set. Its [`NftCommand`] must reach the same namespace.
    pub fn with_netns_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = Some(path.into());
        self.socket = None;
        self
    }

    /// The [`NftCommand`] for the lock, checks, listings and transactions run
    /// as text.
    pub fn with_command(mut self, command: NftCommand) -> Self {
        self.command = command;
        self
    }

    /// How anonymous sets are named: [`AnonNames::Kernel`] sends nft's
    /// `__set%d` (the kernel numbers them, reading every set name of the
    /// table each time: seconds at 10,000 services); the default is
    /// [`AnonNames::Tagged`] with this process's tag.
    pub fn with_anon_names(mut self, names: AnonNames) -> Self {
        self.names = names;
        self
    }

    /// The [`NftCommand`] this executor uses besides its socket.
    pub fn command(&self) -> &NftCommand {
        &self.command
    }

    /// How many transactions went as netlink batches, and how many as text
    /// (through the [`NftCommand`]).
    pub fn counts(&self) -> (u64, u64) {
        (self.batches, self.as_text)
    }

    /// The socket, opened (again) if there is none or the namespace at the
    /// path is another one than it was opened in (deleted and made again).
    fn socket(&mut self) -> Result<RawFd, NftExecError> {
        let netns = match &self.netns {
            Some(path) => Some(identity(path).map_err(|e| io_error("the namespace", e))?),
            None => None,
        };
        if self.socket.as_ref().is_some_and(|(_, id)| *id != netns) {
            self.socket = None;
        }
        if self.socket.is_none() {
            let fd = open(self.netns.clone()).map_err(|e| io_error("opening the socket", e))?;
            self.socket = Some((fd, netns));
        }
        Ok(self.socket.as_ref().map_or(-1, |(fd, _)| fd.as_raw_fd()))
    }

    /// Sends the batch and reads the kernel's answers: `Ok(false)` if the
    /// batch is larger than the socket can send (then it goes as text).
    fn send(&mut self, tx: &Transaction, batch: &Batch) -> Result<bool, NftExecError> {
        let fd = self.socket()?;
        let size = batch.bytes.len() + 4096;
        // A batch must fit the send buffer whole. Root in the first user
        // namespace may raise the limit; elsewhere the ordinary option stops at
        // the system's maximum, and a larger batch goes as text.
        if let Some((sock, _)) = &self.socket
            && setsockopt(sock, sockopt::SndBufForce, &size).is_err()
        {
            let _ = setsockopt(sock, sockopt::SndBuf, &size);
        }
        let kernel = NetlinkAddr::new(0, 0);
        match sendto(fd, &batch.bytes, &kernel, MsgFlags::empty()) {
            Ok(n) if n == batch.bytes.len() => {}
            Err(Errno::EMSGSIZE) => return Ok(false),
            Ok(n) => {
                self.socket = None;
                return Err(io_error("sendto", Errno::EMSGSIZE)
                    .with_context(format!("sent {n} of {} bytes", batch.bytes.len())));
            }
            Err(e) => {
                // The socket may be unusable now: open another next time.
                self.socket = None;
                return Err(io_error("sendto", e));
            }
        }
        // The kernel handles the batch inside `sendto`: its answers are all
        // queued now. No answer is success; the first error is the refusal.
        let mut buf = vec![0u8; RECEIVE_BUFFER];
        let mut refusal = None;
        let mut broken = None;
        let mut sentinel_refused = false;
        loop {
            // MSG_TRUNC: the answer's real length, even if the buffer is
            // shorter (an answer carries a copy of the refused message).
            let n = match recv(fd, &mut buf, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC) {
                Ok(0) => break,
                Ok(n) if n > buf.len() => {
                    broken = Some(format!("an answer of {n} bytes, more than {}", buf.len()));
                    break;
                }
                Ok(n) => n,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    broken = Some(format!("reading the kernel's answer: {}", e.desc()));
                    break;
                }
            };
            let Some(answers) = errors(&buf[..n]) else {
                broken = Some(format!("an answer of {n} bytes that does not parse"));
                break;
            };
            // Only this batch's answers count (none of an earlier one should
            // be left, but a sequence number says whose an answer is).
            for (seq, errno) in answers.into_iter().filter(|(seq, _)| batch.holds(*seq)) {
                if Some(seq) == batch.sentinel {
                    sentinel_refused = true;
                    continue;
                }
                if refusal.is_none() {
                    let index = batch.operation_of(seq);
                    let message =
                        format!("Could not process rule: {}", Errno::from_raw(errno).desc());
                    refusal = Some(NftRefusal {
                        kind: RefusalKind::of_message(&message),
                        index,
                        command: index.and_then(|i| tx.to_text().lines().nth(i).map(str::to_owned)),
                        message,
                    });
                }
            }
        }
        if let Some(message) = broken {
            // What is left on the socket cannot be read: start afresh, and
            // count the batch as refused (the kernel may have refused it).
            self.socket = None;
            refusal.get_or_insert(NftRefusal {
                kind: RefusalKind::Other,
                index: None,
                command: None,
                message,
            });
        }
        if batch.sentinel.is_some() && !sentinel_refused && refusal.is_none() {
            // Never seen: the kernel took the message that cannot be taken.
            return Err(io_error("check", Errno::EPROTO)
                .with_context("the kernel did not refuse the check's last message".into()));
        }
        match refusal {
            Some(r) => Err(NftExecError::Refused(r)),
            None => Ok(true),
        }
    }
}

impl NftNetlink {
    /// `tx` sent as a batch (`check`: as a check batch) and the kernel's
    /// answer; `None` if it goes as text instead: the encoder does not write
    /// it ([`WireError::Unsupported`](crate::nft::wire::WireError::Unsupported)),
    /// or it is larger than the socket may send.
    fn as_batch(&mut self, tx: &Transaction, check: bool) -> Option<Result<(), NftExecError>> {
        let encoded = if check {
            encode_check(tx, self.seq, &mut self.names)
        } else {
            encode(tx, self.seq, &mut self.names)
        };
        let batch = encoded.ok()?;
        self.seq = self.seq.wrapping_add(batch.operations.len() as u32 + 2);
        match self.send(tx, &batch) {
            Ok(false) => None,
            sent => Some(sent.map(drop)),
        }
    }
}

/// What a listing dumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dump {
    Chains,
    Sets,
    Maps,
}

impl NftNetlink {
    /// The names of `table`'s chains, sets or maps, sorted: a netlink dump
    /// (`NLM_F_DUMP`) of the family's, read until its end.
    fn dump(
        &mut self,
        what: Dump,
        family: Family,
        table: &Name,
    ) -> Result<Vec<Name>, NftExecError> {
        let fd = self.socket()?;
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let of = if what == Dump::Chains {
            DumpOf::Chains
        } else {
            DumpOf::Sets
        };
        let request = encode_dump(of, family, table, seq);
        if let Err(e) = sendto(fd, &request, &NetlinkAddr::new(0, 0), MsgFlags::empty()) {
            self.socket = None;
            return Err(io_error("sendto", e));
        }
        let mut names = Vec::new();
        let mut buf = vec![0u8; RECEIVE_BUFFER];
        loop {
            // The kernel fills the dump as it is read: wait for each part.
            let n = match recv(fd, &mut buf, MsgFlags::MSG_TRUNC) {
                Ok(n) if n > 0 && n <= buf.len() => n,
                Ok(n) => {
                    self.socket = None;
                    return Err(io_error("recv", Errno::EMSGSIZE)
                        .with_context(format!("a dump part of {n} bytes")));
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    self.socket = None;
                    return Err(io_error("recv", e));
                }
            };
            match dump_part(&buf[..n], seq, what, table.as_str()) {
                Some(Part::More(found)) => names.extend(found),
                Some(Part::Done(found)) => {
                    names.extend(found);
                    break;
                }
                Some(Part::Error(errno)) if errno == Errno::ENOENT as i32 => return Ok(Vec::new()),
                Some(Part::Error(errno)) => {
                    return Err(io_error("dump", Errno::from_raw(errno)));
                }
                None => {
                    self.socket = None;
                    return Err(io_error("recv", Errno::EPROTO)
                        .with_context(format!("a dump part of {n} bytes that does not parse")));
                }
            }
        }
        let mut names: Vec<Name> = names
            .into_iter()
            .filter_map(|n| Name::new(n).ok())
            .collect();
        names.sort();
        Ok(names)
    }
}

/// What one read of a dump held.
#[derive(Debug, PartialEq, Eq)]
enum Part {
    /// Names, and more to come.
    More(Vec<String>),
    /// Names, and the end of the dump.
    Done(Vec<String>),
    /// The kernel's error for the dump.
    Error(i32),
}

/// The names of `table`'s objects in one read of the dump `seq` of `what`
/// (messages of other sequence numbers are skipped); `None` if the bytes are
/// not whole messages.
fn dump_part(b: &[u8], seq: u32, what: Dump, table: &str) -> Option<Part> {
    let mut names = Vec::new();
    for r in replies(b)?.into_iter().filter(|r| r.seq == seq) {
        match r.kind {
            // A dump that failed part way ends with its error in the DONE.
            NLMSG_DONE => match code(r.body) {
                Some(code) if code < 0 => return Some(Part::Error(-code)),
                _ => return Some(Part::Done(names)),
            },
            NLMSG_ERROR => match code(r.body)? {
                0 => {}
                code => return Some(Part::Error(-code)),
            },
            kind if kind >> 8 == 10 => {
                if let Some(name) = dump_name(r.body, what, table)? {
                    names.push(name);
                }
            }
            _ => {}
        }
    }
    Some(Part::More(names))
}

/// The name of the chain, set or map a dump message describes, if it is
/// `table`'s and of the kind asked; `None` if its attributes do not parse.
fn dump_name(body: &[u8], what: Dump, table: &str) -> Option<Option<String>> {
    let (mut table_of, mut name, mut flags) = (None, None, 0u32);
    // After nfgenmsg's four bytes, the attributes.
    let mut a = body.get(4..)?;
    while a.len() >= 4 {
        let alen = usize::from(u16::from_ne_bytes([a[0], a[1]]));
        if alen < 4 || alen > a.len() {
            return None;
        }
        let value = &a[4..alen];
        let text = || std::str::from_utf8(value.strip_suffix(&[0]).unwrap_or(value)).ok();
        match (u16::from_ne_bytes([a[2], a[3]]) & 0x3fff, what) {
            (1, _) => table_of = text(),
            (3, Dump::Chains) | (2, Dump::Sets | Dump::Maps) => name = text(),
            (3, Dump::Sets | Dump::Maps) if value.len() == 4 => {
                flags = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
            }
            _ => {}
        }
        a = &a[alen.next_multiple_of(4).min(a.len())..];
    }
    // NFT_SET_ANONYMOUS, NFT_SET_MAP.
    let wanted = match what {
        Dump::Chains => true,
        Dump::Sets => flags & 0x9 == 0,
        Dump::Maps => flags & 0x1 == 0 && flags & 0x8 != 0,
    };
    Some(match (table_of, name) {
        (Some(t), Some(n)) if wanted && t == table => Some(n.to_owned()),
        _ => None,
    })
}

/// The device and inode of the namespace file at `path`.
pub(crate) fn identity(path: &std::path::Path) -> Result<(u64, u64), Errno> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    Ok((m.dev(), m.ino()))
}

/// An error of a socket call, as the executor's.
fn io_error(what: &str, e: Errno) -> NftExecError {
    NftExecError::Exec(ExecError::Netlink {
        operation: what.to_owned(),
        source: std::io::Error::from_raw_os_error(e as i32),
    })
}

trait WithContext {
    fn with_context(self, context: String) -> Self;
}

impl WithContext for NftExecError {
    fn with_context(self, context: String) -> Self {
        match self {
            NftExecError::Exec(ExecError::Netlink { operation, source }) => {
                NftExecError::Exec(ExecError::Netlink {
                    operation: format!("{operation} ({context})"),
                    source,
                })
            }
            other => other,
        }
    }
}

/// A netfilter netlink socket, bound, in the namespace at `netns` (a thread
/// of its own enters the namespace, opens the socket and ends; the socket
/// stays in the namespace it was opened in).
pub(crate) fn open(netns: Option<PathBuf>) -> Result<OwnedFd, Errno> {
    let own = netns.is_none();
    let opener = move || -> Result<OwnedFd, Errno> {
        if let Some(path) = &netns {
            let ns =
                File::open(path).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
            setns(ns, CloneFlags::CLONE_NEWNET)?;
        }
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        if setsockopt(&fd, sockopt::RcvBufForce, &RECEIVE_QUEUE).is_err() {
            setsockopt(&fd, sockopt::RcvBuf, &RECEIVE_QUEUE)?;
        }
        // A listing waits for each part of its dump; never for ever.
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(30, 0))?;
        Ok(fd)
    };
    if own {
        return opener();
    }
    // setns changes the calling thread's namespace: a thread of its own does
    // it, so that this one stays where it is.
    std::thread::Builder::new()
        .name("svcnat-netns".into())
        .spawn(opener)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EAGAIN as i32)))?
        .join()
        .unwrap_or(Err(Errno::EIO))
}

/// One message of the kernel's: its type, sequence number and what follows
/// its header.
struct Reply<'a> {
    kind: u16,
    seq: u32,
    body: &'a [u8],
}

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// The kernel's messages in one read; `None` if the bytes are not whole
/// messages.
fn replies(mut b: &[u8]) -> Option<Vec<Reply<'_>>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < 16 || len > b.len() {
            return None;
        }
        out.push(Reply {
            kind: u16::from_ne_bytes([b[4], b[5]]),
            seq: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            body: &b[16..len],
        });
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    Some(out)
}

/// The code an `NLMSG_ERROR` or `NLMSG_DONE` body starts with (negative:
/// an errno), if it has one.
fn code(body: &[u8]) -> Option<i32> {
    body.get(..4)
        .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
}

/// The errors among the kernel's answers: each `NLMSG_ERROR` with a non-zero
/// code, as the sequence number of the message it answers and the errno;
/// `None` if the bytes are not whole messages.
pub(crate) fn errors(b: &[u8]) -> Option<Vec<(u32, i32)>> {
    let mut out = Vec::new();
    for r in replies(b)? {
        if r.kind != NLMSG_ERROR {
            continue;
        }
        // The code, then the answered message's header: its sequence
        // number is 8 bytes in.
        let seq = r.body.get(12..16)?;
        match code(r.body)? {
            0 => {}
            code => out.push((u32::from_ne_bytes([seq[0], seq[1], seq[2], seq[3]]), -code)),
        }
    }
    Some(out)
}

impl NftExecutor for NftNetlink {
    fn piece_operations(&self) -> Option<usize> {
        Some(NftNetlink::PIECE_OPERATIONS)
    }

    fn lock(&mut self) -> Result<SyncLock, NftExecError> {
        self.command.lock()
    }

    fn run(&mut self, tx: &Transaction) -> Result<(), NftExecError> {
        if tx.is_empty() {
            return Ok(());
        }
        if let Some(sent) = self.as_batch(tx, false) {
            self.batches += 1;
            return sent;
        }
        self.as_text += 1;
        self.command.run(tx)
    }

    /// The transaction as a batch with one more message the kernel always
    /// refuses ([`encode_check`]): the kernel's answers to the others say
    /// whether it would apply, and it applies nothing. A transaction the
    /// encoder does not write is checked with `nft --check`.
    fn check(&mut self, tx: &Transaction) -> Result<(), NftExecError> {
        if tx.is_empty() {
            return Ok(());
        }
        match self.as_batch(tx, true) {
            Some(checked) => checked,
            None => self.command.check(tx),
        }
    }

    /// A netlink dump of the family's chains (`nft list chains` reads the
    /// whole table first: 1.4 s at 10,000 services, 18 s at 30,000).
    fn list_chains(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
        self.dump(Dump::Chains, family, table)
    }

    /// A netlink dump of the family's sets, less maps and anonymous sets.
    fn list_sets(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
        self.dump(Dump::Sets, family, table)
    }

    /// A netlink dump of the family's sets, the named maps of them.
    fn list_maps(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
        self.dump(Dump::Maps, family, table)
    }

    fn list_set_elements(
        &mut self,
        family: Family,
        table: &Name,
        set: &Name,
    ) -> Result<Vec<Element>, NftExecError> {
        self.command.list_set_elements(family, table, set)
    }

    fn list_map_elements(
        &mut self,
        family: Family,
        table: &Name,
        map: &Name,
    ) -> Result<Vec<MapElement>, NftExecError> {
        self.command.list_map_elements(family, table, map)
    }

    fn list_table(&mut self, family: Family, table: &Name) -> Result<String, NftExecError> {
        self.command.list_table(family, table)
    }
}

#[cfg(test)]
mod tests {
    use super::errors;

    fn answer(seq: u32, code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&code.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&[0; 4]);
        m
    }

    /// A NEWCHAIN/NEWSET message of a dump: table, name, flags.
    fn object(
        seq: u32,
        msg: u16,
        table: &str,
        name_attr: u16,
        name: &str,
        flags: Option<u32>,
    ) -> Vec<u8> {
        let mut attrs = Vec::new();
        for (kind, text) in [(1u16, table), (name_attr, name)] {
            attrs.extend_from_slice(&((5 + text.len()) as u16).to_ne_bytes());
            attrs.extend_from_slice(&kind.to_ne_bytes());
            attrs.extend_from_slice(text.as_bytes());
            attrs.push(0);
            while attrs.len() % 4 != 0 {
                attrs.push(0);
            }
        }
        if let Some(f) = flags {
            attrs.extend_from_slice(&8u16.to_ne_bytes());
            attrs.extend_from_slice(&3u16.to_ne_bytes());
            attrs.extend_from_slice(&f.to_be_bytes());
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((20 + attrs.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&(10u16 << 8 | msg).to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend(attrs);
        m
    }

    fn done(seq: u32, code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&3u16.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m
    }

    #[test]
    fn dumps_keep_the_tables_named_objects_of_the_kind_asked() {
        use super::{Dump, Part, dump_part};
        let mut b = object(5, 9, "kube-proxy", 2, "cluster-ips", Some(0));
        b.extend(object(5, 9, "kube-proxy", 2, "service-ips", Some(0x8)));
        b.extend(object(5, 9, "kube-proxy", 2, "_1_abc", Some(0xb)));
        b.extend(object(5, 9, "other", 2, "theirs", Some(0)));
        b.extend(object(4, 9, "kube-proxy", 2, "stale", Some(0)));
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            dump_part(&b, 5, Dump::Sets, "kube-proxy"),
            Some(Part::More(strings(&["cluster-ips"])))
        );
        b.extend(done(5, 0));
        assert_eq!(
            dump_part(&b, 5, Dump::Maps, "kube-proxy"),
            Some(Part::Done(strings(&["service-ips"])))
        );
        let chains = [object(6, 3, "kube-proxy", 3, "services", None), done(6, -4)].concat();
        assert_eq!(
            dump_part(&chains, 6, Dump::Chains, "kube-proxy"),
            Some(Part::Error(4))
        );
        assert_eq!(
            dump_part(&chains[..30], 6, Dump::Chains, "kube-proxy"),
            None
        );
    }

    #[test]
    fn errors_name_the_answered_message_and_skip_acks() {
        let mut b = answer(7, -2);
        b.extend(answer(8, 0));
        b.extend(answer(9, -16));
        assert_eq!(errors(&b), Some(vec![(7, 2), (9, 16)]));
        assert_eq!(errors(&b[..20]), None, "a cut answer is no answer");
        assert_eq!(errors(&b[..40]), None, "nor is one cut after a whole one");
        assert_eq!(errors(&[]), Some(vec![]));
    }
}
