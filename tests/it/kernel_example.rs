//! The `sync` example's drift flags: `--drift-check SECONDS` and
//! `--step-on-stdin`, whose contract other tools rely on. Bad values are refused
//! without root; the drift run needs the kernel.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::fixtures::{example, run_example};
use crate::kernel::{Netns, kernel_available};

const CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster.json");

#[test]
fn bad_drift_check_values_exit_2_with_one_line() {
    for (value, what) in [("soon", "\"soon\""), ("-1", "\"-1\""), ("NaN", "\"NaN\"")] {
        let (code, stdout, stderr) = run_example("sync", &["--drift-check", value, CLUSTER], "");
        assert_eq!(code, 2, "{value}: {stderr}");
        assert!(stdout.is_empty(), "{value}: {stdout}");
        assert_eq!(
            stderr.trim_end(),
            format!("sync: --drift-check: {what} is not a number of seconds"),
        );
    }
    let (code, _, stderr) = run_example("sync", &["--drift-check"], "");
    assert_eq!(code, 2);
    assert_eq!(stderr.trim_end(), "sync: --drift-check: missing value");
}

/// Without `--apply`, `--step-on-stdin` waits for a line before each state after
/// the first, and end of input ends the run with exit 0 (before the third state).
#[test]
fn step_on_stdin_waits_for_a_line_per_step_and_stops_at_eof() {
    let (code, stdout, stderr) = run_example(
        "sync",
        &[
            "--step-on-stdin",
            "--drift-check",
            "0",
            CLUSTER,
            CLUSTER,
            CLUSTER,
        ],
        "go\n",
    );
    assert_eq!(code, 0, "{stderr}");
    let steps: Vec<&str> = stdout.lines().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(steps.len(), 2, "{stdout}");
    assert!(steps[0].starts_with("step 1: full, "), "{stdout}");
    // A dry run has no kernel to drift from.
    assert_eq!(
        steps[1],
        "step 2: partial, 0 bytes, 0 chains written, 0 chains deleted"
    );
}

fn drift_run(backend: &str) {
    let ns = Netns::new(&format!("drift-ex-{backend}"));
    let sync = example("sync");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&sync)
        .args([
            "--cluster-cidr",
            "10.244.0.0/16",
            "--apply",
            "--backend",
            backend,
            "--drift-check",
            "0",
            "--step-on-stdin",
            CLUSTER,
            CLUSTER,
            CLUSTER,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = || lines.next().unwrap().unwrap();
    assert!(next_line().starts_with("step 1: full, "));
    // Nothing changed: the check finds everything in place.
    writeln!(stdin).unwrap();
    assert_eq!(
        next_line(),
        "step 2: partial, 0 bytes, 0 chains written, 0 chains deleted"
    );
    // An admin flushes nat: the next step is a full one, and says why.
    let (ok, out) = ns.run(&[&format!("iptables-{backend}"), "-t", "nat", "-F"], "");
    assert!(ok, "{out}");
    writeln!(stdin).unwrap();
    let third = next_line();
    assert!(
        third.starts_with("step 3: full, ") && third.ends_with(" chains deleted (drift)"),
        "{third}"
    );
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, saved) = ns.run(&[&format!("iptables-{backend}-save"), "-t", "nat"], "");
    assert!(
        saved.contains(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ) && saved.contains("-A KUBE-PROXY-CANARY"),
        "{saved}"
    );
}

#[test]
fn a_flushed_table_makes_the_next_step_full_drift_nft() {
    if kernel_available("a_flushed_table_makes_the_next_step_full_drift_nft") {
        drift_run("nft");
    }
}

#[test]
fn a_flushed_table_makes_the_next_step_full_drift_legacy() {
    if kernel_available("a_flushed_table_makes_the_next_step_full_drift_legacy") {
        drift_run("legacy");
    }
}
