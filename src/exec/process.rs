//! The processes the executors start: a binary behind an optional command prefix
//! (`ip netns exec NS`, `nsenter -n -t PID`), its input and output, and the
//! network namespace it runs in. Shared by [`IptablesRestore`](super::IptablesRestore)
//! and [`NftCommand`](super::NftCommand).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::ExecError;
use super::lock::{netns_inode, own_netns};

/// A command prefix and the network namespace behind it (read once).
#[derive(Debug, Clone, Default)]
pub(crate) struct Prefixed {
    prefix: Vec<String>,
    /// The inode of the network namespace behind the prefix, read at the first
    /// [`Prefixed::netns`].
    netns: Option<u64>,
}

impl Prefixed {
    /// Commands run behind `prefix` (none if empty).
    pub(crate) fn new(prefix: Vec<String>) -> Self {
        Prefixed {
            prefix,
            netns: None,
        }
    }

    /// The prefix's words.
    pub(crate) fn words(&self) -> &[String] {
        &self.prefix
    }

    /// Whether there is no prefix: commands run in this process's namespace.
    pub(crate) fn is_empty(&self) -> bool {
        self.prefix.is_empty()
    }

    /// `binary` behind the prefix, without arguments yet.
    pub(crate) fn command(&self, binary: &str) -> Command {
        match self.prefix.split_first() {
            None => Command::new(binary),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary);
                c
            }
        }
    }

    /// Runs `binary args` with `stdin`; returns (exit code, stdout, stderr).
    pub(crate) fn run(
        &self,
        binary: &str,
        args: &[String],
        stdin: Option<&str>,
    ) -> Result<(Option<i32>, String, String), ExecError> {
        // With a prefix, the program that failed to start is the prefix's.
        let program = self.prefix.first().map_or(binary, String::as_str);
        let spawn_err = |source| ExecError::Spawn {
            binary: program.to_owned(),
            source,
        };
        let mut child = self
            .command(binary)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A binary that exits early closes the pipe; its status tells why.
            let _ = pipe.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The inode of the network namespace the commands run in: this thread's
    /// without a prefix (read every time: a thread may move), else what
    /// `readlink /proc/self/ns/net` prints behind the prefix (read once).
    pub(crate) fn netns(&mut self) -> Result<u64, ExecError> {
        if self.prefix.is_empty() {
            return own_netns();
        }
        if let Some(inode) = self.netns {
            return Ok(inode);
        }
        let args = ["/proc/self/ns/net".to_owned()];
        let inode = match self.run("readlink", &args, None)? {
            (Some(0), stdout, _) => netns_inode(&stdout).ok_or_else(|| ExecError::Lock {
                path: PathBuf::from(&args[0]),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "readlink behind `{}` printed {:?}, not net:[INODE]",
                        self.prefix.join(" "),
                        stdout.trim()
                    ),
                ),
            })?,
            (status, _, stderr) => {
                return Err(failed("readlink", args.to_vec(), status, stderr, None));
            }
        };
        self.netns = Some(inode);
        Ok(inode)
    }
}

/// [`ExecError::Failed`] for `binary args` that exited with `status`.
pub(crate) fn failed(
    binary: &str,
    args: Vec<String>,
    status: Option<i32>,
    stderr: String,
    payload: Option<&str>,
) -> ExecError {
    ExecError::Failed {
        binary: binary.to_owned(),
        args,
        status,
        stderr: stderr.trim().to_owned(),
        payload: payload.map(str::to_owned),
    }
}
