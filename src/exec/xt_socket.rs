//! The netlink socket [`IptablesRestore`](super::IptablesRestore) writes
//! iptables-nft's rules on ([`super::xt`]), in the network namespace its
//! commands run in.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, NetlinkAddr, recv, sendto, setsockopt, sockopt};

use super::nft::netlink::{errors, open};
use crate::nft::wire::Batch;

/// How many bytes of the kernel's answers are read at a time.
const RECEIVE_BUFFER: usize = 1 << 20;

/// What became of a batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// The kernel committed it.
    Applied,
    /// The kernel refused a message of it (the errno's text): nothing of it
    /// was applied.
    Refused(String),
    /// It could not be sent whole, or the answer could not be read (why):
    /// nothing should be sent this way again.
    Broken(String),
}

/// A socket opened on first use, in the namespace found then.
#[derive(Debug, Default)]
pub(crate) struct XtSocket {
    /// `None`: not opened yet; `Some(None)`: none can be had.
    socket: Option<Option<OwnedFd>>,
    seq: u32,
}

impl XtSocket {
    /// Whether batches may be sent: no socket was found impossible or broken.
    pub(crate) fn usable(&self) -> bool {
        !matches!(self.socket, Some(None))
    }

    /// The sequence number the next batch starts at.
    pub(crate) fn next_seq(&self) -> u32 {
        self.seq
    }

    /// Sends `batch` on the socket, opening it first in the namespace `netns`
    /// gives (`Some(None)`: this thread's; `None`: it cannot be found, and no
    /// batch goes this way).
    pub(crate) fn send(
        &mut self,
        batch: &Batch,
        netns: impl FnOnce() -> Option<Option<PathBuf>>,
    ) -> Sent {
        self.seq = batch
            .first_seq
            .wrapping_add(batch.operations.len() as u32 + 2);
        if self.socket.is_none() {
            self.socket = Some(netns().and_then(|path| open(path).ok()));
        }
        let Some(Some(fd)) = &self.socket else {
            return Sent::Broken("no netlink socket in the namespace".into());
        };
        let sent = send_on(fd, batch);
        if matches!(sent, Sent::Broken(_)) {
            self.socket = Some(None);
        }
        sent
    }
}

fn send_on(fd: &OwnedFd, batch: &Batch) -> Sent {
    // The batch must fit the send buffer whole.
    let size = batch.bytes.len() + 4096;
    if setsockopt(fd, sockopt::SndBufForce, &size).is_err() {
        let _ = setsockopt(fd, sockopt::SndBuf, &size);
    }
    match sendto(
        fd.as_raw_fd(),
        &batch.bytes,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    ) {
        Ok(n) if n == batch.bytes.len() => {}
        Ok(n) => return Sent::Broken(format!("sent {n} of {} bytes", batch.bytes.len())),
        Err(e) => return Sent::Broken(format!("sendto: {}", e.desc())),
    }
    // The kernel handled the batch inside `sendto`: its answers are queued.
    let mut buf = vec![0u8; RECEIVE_BUFFER];
    let mut refused = None;
    loop {
        let n = match recv(
            fd.as_raw_fd(),
            &mut buf,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
        ) {
            Ok(0) | Err(Errno::EAGAIN) => break,
            Ok(n) if n > buf.len() => return Sent::Broken(format!("an answer of {n} bytes")),
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            // Answers lost (the queue overflowed): the batch was refused.
            Err(e) => return Sent::Broken(format!("reading the answers: {}", e.desc())),
        };
        let Some(answers) = errors(&buf[..n]) else {
            return Sent::Broken("an answer that does not parse".into());
        };
        for (seq, errno) in answers {
            if batch.holds(seq) && refused.is_none() {
                refused = Some(Errno::from_raw(errno).desc().to_owned());
            }
        }
    }
    match refused {
        Some(why) => Sent::Refused(why),
        None => Sent::Applied,
    }
}

/// A file that is the network namespace with inode `inode`: a name under
/// `/run/netns` (what `ip netns exec` enters), else a process's
/// `/proc/PID/ns/net`.
pub(crate) fn netns_file(inode: u64) -> Option<PathBuf> {
    let is = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.ino() == inode);
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let processes = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"));
    named.chain(processes).find(|p| is(p))
}

impl Clone for XtSocket {
    /// A copy opens a socket of its own.
    fn clone(&self) -> Self {
        XtSocket {
            socket: None,
            seq: self.seq,
        }
    }
}
