//! [`NftNetlink`]: transactions sent to the kernel as netlink batches
//! ([`crate::nft::wire`]), without the `nft` binary and its cache.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
    setsockopt, socket, sockopt,
};

use super::{NftCommand, NftExecError, NftExecutor, NftRefusal, RefusalKind};
use crate::exec::{ExecError, SyncLock};
use crate::nft::wire::{AnonNames, Batch, WireError, encode};
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
/// Everything else goes through an [`NftCommand`]: the lock, `check` (`nft
/// --check`), the listings, and any transaction the encoder does not write
/// ([`WireError::Unsupported`]), which runs as text.
///
/// Anonymous sets and maps are named by this executor
/// ([`AnonNames::Tagged`], with a tag from the time and the process id), which
/// the kernel takes without scanning every set name of the table; see
/// [`NftNetlink::with_anon_names`].
///
/// Needs `CAP_NET_ADMIN` (as `nft` does), in the network namespace it works
/// on.
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
    socket: Option<OwnedFd>,
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
    /// (PERFORMANCE.md): first syncs take about as long in pieces of 10,000
    /// to 40,000; a full resync took 23 s in pieces of 10,000, 26 s of 20,000,
    /// 31 s of 5,000 and 46 s of 50,000. Each commit that rewrites chains the
    /// packets reach makes the kernel validate the whole table (fewer pieces
    /// are better), and each anonymous map makes it walk the transaction it is
    /// in (smaller pieces are better); at 30,000 services the first weighs
    /// three times more, so the larger of the two good sizes.
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

    fn socket(&mut self) -> Result<&OwnedFd, NftExecError> {
        if self.socket.is_none() {
            self.socket = Some(open(self.netns.clone()).map_err(|e| io_error("open", e))?);
        }
        Ok(self.socket.as_ref().expect("opened above"))
    }

    fn send(&mut self, tx: &Transaction, batch: &Batch) -> Result<(), NftExecError> {
        let size = batch.bytes.len() + 4096;
        let sock = self.socket()?;
        // A batch must fit the send buffer whole; root may raise it.
        setsockopt(sock, sockopt::SndBufForce, &size).map_err(|e| io_error("SO_SNDBUFFORCE", e))?;
        let fd = sock.as_raw_fd();
        let kernel = NetlinkAddr::new(0, 0);
        match sendto(fd, &batch.bytes, &kernel, MsgFlags::empty()) {
            Ok(n) if n == batch.bytes.len() => {}
            Ok(n) => {
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
        loop {
            let n = match recv(fd, &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => break,
                Ok(n) => n,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    self.socket = None;
                    refusal.get_or_insert(NftRefusal {
                        kind: RefusalKind::Other,
                        index: None,
                        command: None,
                        message: format!("reading the kernel's answer: {}", e.desc()),
                    });
                    break;
                }
            };
            for (seq, errno) in errors(&buf[..n]) {
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
        match refusal {
            Some(r) => Err(NftExecError::Refused(r)),
            None => Ok(()),
        }
    }
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
fn open(netns: Option<PathBuf>) -> Result<OwnedFd, Errno> {
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
        setsockopt(&fd, sockopt::RcvBufForce, &RECEIVE_QUEUE)?;
        Ok(fd)
    };
    match std::thread::spawn(opener).join() {
        Ok(result) => result,
        Err(_) => Err(Errno::EIO),
    }
}

/// The errors among the kernel's answers: each `NLMSG_ERROR` with a non-zero
/// code, as the sequence number of the message it answers and the errno.
fn errors(mut b: &[u8]) -> Vec<(u32, i32)> {
    const NLMSG_ERROR: u16 = 2;
    let mut out = Vec::new();
    while b.len() >= 16 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < 16 || len > b.len() {
            break;
        }
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if kind == NLMSG_ERROR && len >= 16 + 4 + 16 {
            let code = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
            // The answered message's header follows the code; its sequence
            // number is 8 bytes in.
            let seq = u32::from_ne_bytes([b[28], b[29], b[30], b[31]]);
            if code != 0 {
                out.push((seq, -code));
            }
        }
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    out
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
        match encode(tx, self.seq, &mut self.names) {
            Ok(batch) => {
                self.seq = self.seq.wrapping_add(batch.operations.len() as u32 + 2);
                self.batches += 1;
                self.send(tx, &batch)
            }
            Err(WireError::Unsupported { .. }) => {
                self.as_text += 1;
                self.command.run(tx)
            }
        }
    }

    fn check(&mut self, tx: &Transaction) -> Result<(), NftExecError> {
        self.command.check(tx)
    }

    fn list_chains(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
        self.command.list_chains(family, table)
    }

    fn list_sets(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
        self.command.list_sets(family, table)
    }

    fn list_maps(&mut self, family: Family, table: &Name) -> Result<Vec<Name>, NftExecError> {
        self.command.list_maps(family, table)
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

    #[test]
    fn errors_name_the_answered_message_and_skip_acks() {
        let mut b = answer(7, -2);
        b.extend(answer(8, 0));
        b.extend(answer(9, -16));
        assert_eq!(errors(&b), vec![(7, 2), (9, 16)]);
        assert_eq!(errors(&b[..20]), vec![], "a cut answer is not read");
    }
}
