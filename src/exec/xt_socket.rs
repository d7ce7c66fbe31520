//! The netlink socket [`IptablesRestore`](super::IptablesRestore) writes
//! iptables-nft's rules on ([`super::xt`]), in the network namespace its
//! commands run in.

#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

#[cfg(target_os = "linux")]
use nix::errno::Errno;
#[cfg(target_os = "linux")]
use nix::sys::socket::{MsgFlags, NetlinkAddr, recv, sendto, setsockopt, sockopt};

#[cfg(target_os = "linux")]
use super::nft::netlink::{errors, identity, open};
use crate::nft::wire::Batch;

/// How many bytes of the kernel's answers are read at a time.
#[cfg(target_os = "linux")]
const RECEIVE_BUFFER: usize = 1 << 20;

/// The namespace file of the calling thread.
#[cfg(target_os = "linux")]
const OWN_NETNS: &str = "/proc/thread-self/ns/net";

/// What became of a batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// The kernel committed it.
    Applied,
    /// The kernel refused a message of it (the errno's text): nothing of it
    /// was applied.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Refused(String),
    /// It could not be sent, or not whole, or the answer could not be read, or
    /// the kernel refused it for want of permission (why): nothing should be
    /// sent this way again.
    Broken(String),
}

/// A socket opened on first use, in the namespace asked, and opened again
/// when that namespace is another one than it was opened in.
#[derive(Debug, Default)]
pub(crate) struct XtSocket {
    /// The socket and the device and inode of its namespace.
    socket: Option<(OwnedFd, (u64, u64))>,
    /// Set when no batch should go this way any more.
    broken: bool,
    seq: u32,
}

impl Clone for XtSocket {
    /// A copy opens a socket of its own.
    fn clone(&self) -> Self {
        XtSocket {
            socket: None,
            broken: self.broken,
            seq: self.seq,
        }
    }
}

impl XtSocket {
    /// Whether batches may be sent: none was found impossible.
    pub(crate) fn usable(&self) -> bool {
        !self.broken
    }

    /// The sequence number the next batch starts at.
    pub(crate) fn next_seq(&self) -> u32 {
        self.seq
    }

    /// Sends `batch` into the namespace at `netns` (`None`: the calling
    /// thread's), on a socket opened there unless the one held is there.
    pub(crate) fn send(&mut self, batch: &Batch, netns: Option<&Path>) -> Sent {
        self.seq = batch
            .first_seq
            .wrapping_add(batch.operations.len() as u32 + 2);
        self.send_batch(batch, netns)
    }

    /// Netfilter's netlink is Linux's: elsewhere every payload goes as text.
    #[cfg(not(target_os = "linux"))]
    fn send_batch(&mut self, _: &Batch, _: Option<&Path>) -> Sent {
        self.broken = true;
        self.socket = None;
        Sent::Broken("netfilter netlink needs Linux".into())
    }

    #[cfg(target_os = "linux")]
    fn send_batch(&mut self, batch: &Batch, netns: Option<&Path>) -> Sent {
        let Ok(id) = identity(netns.unwrap_or(Path::new(OWN_NETNS))) else {
            return Sent::Broken("the namespace file cannot be read".into());
        };
        if self.socket.as_ref().is_some_and(|(_, held)| *held != id) {
            self.socket = None;
        }
        if self.socket.is_none() {
            match open(netns.map(Path::to_path_buf)) {
                Ok(fd) => self.socket = Some((fd, id)),
                Err(e) => {
                    self.broken = true;
                    return Sent::Broken(format!("opening the socket: {}", e.desc()));
                }
            }
        }
        let Some((fd, _)) = &self.socket else {
            return Sent::Broken("no socket".into());
        };
        let sent = send_on(fd, batch);
        if matches!(sent, Sent::Broken(_)) {
            self.socket = None;
            self.broken = true;
        }
        sent
    }
}

#[cfg(target_os = "linux")]
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
    // None is asked for success, so any answer is a refusal.
    let mut buf = vec![0u8; RECEIVE_BUFFER];
    let mut refused = None;
    loop {
        let n = match recv(
            fd.as_raw_fd(),
            &mut buf,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
        ) {
            Ok(0) | Err(Errno::EAGAIN) => break,
            // An answer cut short, or answers lost (the queue overflowed):
            // there were answers, so the batch was refused. Read on, so that
            // none is left for the next batch (whose reading skips any
            // answer to another batch anyway).
            Ok(n) if n > buf.len() => {
                refused.get_or_insert(Errno::EMSGSIZE);
                continue;
            }
            Err(Errno::ENOBUFS) => {
                refused.get_or_insert(Errno::ENOBUFS);
                continue;
            }
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Sent::Broken(format!("reading the answers: {}", e.desc())),
        };
        let Some(answers) = errors(&buf[..n]) else {
            return Sent::Broken("an answer that does not parse".into());
        };
        for (seq, errno) in answers {
            if batch.holds(seq) && refused.is_none() {
                refused = Some(Errno::from_raw(errno));
            }
        }
    }
    match refused {
        // Without CAP_NET_ADMIN every batch would be refused.
        Some(Errno::EPERM) => Sent::Broken("the kernel refused: no permission".into()),
        Some(e) => Sent::Refused(e.desc().to_owned()),
        None => Sent::Applied,
    }
}

/// The namespace file a command prefix enters, for the prefixes whose
/// namespace can be named here: `ip netns exec NAME` (`/run/netns/NAME`) and
/// `nsenter` with `--net=PATH`, or with `-n`/`--net` and `-t`/`--target PID`
/// (`/proc/PID/ns/net`). `None` for any other prefix (`ssh`, `kubectl exec`,
/// ...): its namespace may not even be on this host.
pub(crate) fn netns_file(prefix: &[String]) -> Option<PathBuf> {
    let (program, args) = prefix.split_first()?;
    let name = Path::new(program).file_name()?.to_str()?;
    match (name, args) {
        // Exactly that: more words would be a command run inside it, which
        // may enter yet another namespace.
        ("ip", [netns, exec, ns]) if netns == "netns" && exec == "exec" => {
            let ok = !ns.is_empty() && !ns.starts_with('-') && !ns.contains('/');
            ok.then(|| Path::new("/run/netns").join(ns))
        }
        ("nsenter", _) => nsenter_file(args),
        _ => None,
    }
}

/// The namespace file of `nsenter ARGS`: every word an option it knows
/// (nothing after them, which would be a command of its own).
fn nsenter_file(args: &[String]) -> Option<PathBuf> {
    const FLAGS: [&str; 17] = [
        "-m",
        "--mount",
        "-u",
        "--uts",
        "-i",
        "--ipc",
        "-p",
        "--pid",
        "-U",
        "--user",
        "-C",
        "--cgroup",
        "-T",
        "--time",
        "-F",
        "--no-fork",
        "--preserve-credentials",
    ];
    let mut net = None;
    let mut target = None;
    let mut args = args.iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-n" | "--net" => net = net.or(Some(None)),
            "-t" | "--target" => target = Some(args.next()?.clone()),
            "-a" | "--all" => return None,
            flag if FLAGS.contains(&flag) => {}
            other => {
                if let Some(path) = other.strip_prefix("--net=") {
                    net = Some(Some(PathBuf::from(path)));
                } else if let Some(pid) = other.strip_prefix("--target=") {
                    target = Some(pid.to_owned());
                } else {
                    return None;
                }
            }
        }
    }
    match net? {
        Some(path) => Some(path),
        None => {
            let pid = target.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))?;
            Some(PathBuf::from(format!("/proc/{pid}/ns/net")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(prefix: &str) -> Option<PathBuf> {
        let words: Vec<String> = prefix.split_whitespace().map(str::to_owned).collect();
        netns_file(&words)
    }

    #[test]
    fn the_namespace_file_is_named_only_for_known_prefixes() {
        assert_eq!(file("ip netns exec node"), Some("/run/netns/node".into()));
        assert_eq!(
            file("/usr/sbin/ip netns exec node"),
            Some("/run/netns/node".into())
        );
        assert_eq!(file("nsenter -n -t 42"), Some("/proc/42/ns/net".into()));
        assert_eq!(
            file("nsenter --target=42 --net"),
            Some("/proc/42/ns/net".into())
        );
        assert_eq!(
            file("nsenter --net=/run/netns/x"),
            Some("/run/netns/x".into())
        );
        for other in [
            "",
            "ip netns exec ../x",
            "nsenter -t 42",
            "nsenter -n",
            "nsenter -m -t 42",
            "ssh node",
            "kubectl exec pod --",
            "sudo",
            "ip netns exec a nsenter -n -t 42",
            "nsenter -n -t 42 ip netns exec b",
            "nsenter -a -t 42",
            "nsenter -n -t",
        ] {
            assert_eq!(file(other), None, "{other}");
        }
    }
}
