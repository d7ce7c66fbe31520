//! What the measuring examples (`kernel_cost`, `dataplane_cost`) share: a network
//! namespace deleted on drop, where the figures come from (`machine`, `date`), and
//! an error cut to one line. Nothing here needs a cargo feature.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// True if this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // "Uid: real effective saved fs"
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0")
}

/// The first of `binaries` not found in the `PATH`, if any.
pub fn missing_binary<'a>(binaries: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    binaries
        .into_iter()
        .find(|bin| !std::env::split_paths(&path).any(|dir| dir.join(bin).is_file()))
}

/// A network namespace that is deleted when dropped, also on an error or a panic.
pub struct Netns {
    pub name: String,
    /// The example's name, for the line that says a deletion failed.
    program: &'static str,
}

impl Netns {
    /// `svcnat-KIND-PID-TAG`, created now.
    ///
    /// # Errors
    /// `ip netns add` failed: its stderr.
    pub fn new(program: &'static str, kind: &str, tag: &str) -> Result<Netns, String> {
        let name = format!("svcnat-{kind}-{}-{tag}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("ip netns add {name}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Netns { name, program })
    }

    /// `ip netns exec NAME`, the prefix of every command run inside.
    pub fn prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// Runs `args` inside the namespace; its stdout, or why it failed.
    ///
    /// # Errors
    /// The command could not start or failed: its status and stderr.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("ip netns exec {} {}: {e}", self.name, args.join(" ")))?;
        if !out.status.success() {
            return Err(format!(
                "ip netns exec {} {}: {}: {}",
                self.name,
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let ok = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "{}: could not delete network namespace {}",
                self.program, self.name
            );
        }
    }
}

/// The machine the figures come from.
pub fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_kib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned());
    let version = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    json!({
        "cpu": cpu,
        "cores": cores,
        "memory_kib": memory_kib,
        "os": os,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "iptables": version("iptables"),
        "iptables_nft": version("iptables-nft"),
        "iptables_legacy": version("iptables-legacy"),
        "nft": version("nft"),
    })
}

/// Now, in UTC, as `date -u +%Y-%m-%dT%H:%M:%SZ` prints it; null if `date` fails.
pub fn date() -> Option<String> {
    let out = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%dT%H:%M:%SZ")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The first line of an error, with a note if there was more (an executor's error
/// carries the tool's whole stderr, which at this size can be long).
pub fn one_line(e: &str) -> String {
    let mut lines = e.lines();
    let first = lines.next().unwrap_or_default();
    let rest = lines.count();
    if rest == 0 {
        first.to_owned()
    } else {
        format!("{first} (and {rest} more lines)")
    }
}
