//! Exclusion between svcnat processes that write the same network namespace: the
//! guard [`Executor::lock`](super::Executor::lock) returns, and the lock file
//! [`IptablesRestore`](super::IptablesRestore) takes.

use std::any::Any;
use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions, Permissions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::ExecError;

/// Held for the length of one sync (or cleanup): while it lives, no other svcnat
/// process syncs the same tables through an executor that locks. Dropping it
/// releases the lock. It does not borrow the executor.
///
/// [`Executor::lock`](super::Executor::lock) returns one; [`SyncLock::none`] holds
/// nothing (an executor whose transport excludes other writers itself), and
/// [`SyncLock::holding`] holds any value whose drop releases a lock (a locked file,
/// a lease).
///
/// ```
/// use svcnat::exec::SyncLock;
/// assert!(!SyncLock::none().is_held());
/// let guard = SyncLock::holding(std::sync::Arc::new(()));
/// assert!(guard.is_held());
/// drop(guard); // released here
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Default)]
pub struct SyncLock {
    held: Option<Box<dyn Any + Send>>,
}

impl SyncLock {
    /// A guard that holds nothing.
    pub fn none() -> Self {
        SyncLock { held: None }
    }

    /// A guard that holds `value` until it is dropped, and drops it then.
    pub fn holding<T: Send + 'static>(value: T) -> Self {
        SyncLock {
            held: Some(Box::new(value)),
        }
    }

    /// True if the guard holds something (a lock), false for [`SyncLock::none`].
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }
}

impl fmt::Debug for SyncLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncLock")
            .field("held", &self.is_held())
            .finish()
    }
}

/// How often a lock held by another process is tried again.
const POLL: Duration = Duration::from_millis(20);

/// The lock file of the network namespace with inode `netns` in `dir`.
pub(crate) fn lock_path(dir: &Path, netns: u64) -> PathBuf {
    dir.join(format!("netns-{netns}.lock"))
}

/// The inode of a network namespace from its `/proc/*/ns/net` link, `net:[INODE]`.
pub(crate) fn netns_inode(link: &str) -> Option<u64> {
    link.trim()
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The inode of the network namespace this thread is in (what a command it starts
/// without a prefix runs in).
pub(crate) fn own_netns() -> Result<u64, ExecError> {
    let link = Path::new("/proc/thread-self/ns/net");
    let err = |source| ExecError::Lock {
        path: link.to_owned(),
        source,
    };
    let target = std::fs::read_link(link).map_err(err)?;
    let text = target.to_string_lossy();
    netns_inode(&text).ok_or_else(|| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{text:?} is not net:[INODE]"),
        ))
    })
}

/// Takes an exclusive `flock` on `path`, creating its directory (mode 0755) and the
/// file (mode 0600: whoever can open the file can lock it) if missing, trying again
/// every 20 ms for up to `wait`. The holder writes its process id into the file,
/// so a timeout can name the process that held it.
pub(crate) fn lock_file(path: &Path, wait: Duration) -> Result<SyncLock, ExecError> {
    let err = |source| ExecError::Lock {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(err)?;
        // Whatever the umask: other programs may read what is in it.
        std::fs::set_permissions(dir, Permissions::from_mode(0o755)).map_err(err)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(source)) => return Err(err(source)),
        }
        let waited = start.elapsed();
        if waited >= wait {
            return Err(ExecError::LockTimeout {
                path: path.to_owned(),
                waited,
                holder: holder(&mut file),
            });
        }
        std::thread::sleep(POLL.min(wait - waited));
    }
    // Only for the message of a process that times out: a failure to write it
    // changes nothing about the lock.
    let _ = file
        .set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(SyncLock::holding(file))
}

/// The process id the holder of a lock file wrote into it, if it reads as one.
fn holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    Read::by_ref(file).take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_links_read_as_inodes() {
        assert_eq!(netns_inode("net:[4026531840]\n"), Some(4026531840));
        assert_eq!(netns_inode("net:[]"), None);
        assert_eq!(netns_inode("mnt:[4026531840]"), None);
        assert_eq!(netns_inode("net:[4026531840"), None);
        assert_eq!(
            lock_path(Path::new("/run/svcnat"), 4026531840),
            Path::new("/run/svcnat/netns-4026531840.lock")
        );
        // This thread's namespace reads, without root.
        assert!(own_netns().unwrap() > 0);
    }
}
