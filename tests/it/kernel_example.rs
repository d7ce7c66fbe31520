//! The `sync` example's drift flags: `--drift-check SECONDS` and
//! `--step-on-stdin`, whose contract other tools rely on, and `kernel_cost`'s
//! three backends in one run (with `synthetic`). Bad values are refused without
//! root; the drift run and the measurement need the kernel.

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

#[cfg(feature = "synthetic")]
#[test]
fn kernel_cost_refuses_an_unknown_backend_with_exit_2() {
    let (code, stdout, stderr) = run_example("kernel_cost", &["--backend", "iptables"], "");
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with("kernel_cost: --backend: unknown backend \"iptables\"; usage: ")
            && stderr.contains("[--backend nft|legacy|both|nftables|all]")
            && stderr.contains("[--no-baseline]")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
}

/// `--backend all` at a tiny size: the three objects, the `nftables` one with
/// every key of the iptables ones (null where nftables has no such thing) and
/// its own, its kernel checks passed and its figures measured.
#[cfg(feature = "synthetic")]
#[test]
fn kernel_cost_measures_all_three_backends_in_one_run() {
    if !crate::kernel::nft_available("kernel_cost_measures_all_three_backends_in_one_run") {
        return;
    }
    let args = [
        "--backend",
        "all",
        "--services",
        "20",
        "--endpoints",
        "2",
        "--runs",
        "1",
    ];
    let (code, stdout, stderr) = run_example("kernel_cost", &args, "");
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let nftables = report["nftables"].as_object().unwrap();
    for backend in ["nft", "legacy"] {
        let keys: Vec<&String> = report[backend].as_object().unwrap().keys().collect();
        for key in keys {
            assert!(
                nftables.contains_key(key),
                "nftables lacks {backend}'s {key}"
            );
        }
    }
    let null = ["full_jumps_ns", "resync_jumps_ns", "cleanup_jumps_removed"];
    for (key, value) in nftables {
        if null.contains(&key.as_str()) {
            assert!(value.is_null(), "{key}: {value}");
        } else if key == "transport" {
            // The default: netlink batches (`NftNetlink`).
            assert_eq!(value.as_str(), Some("netlink"), "{key}");
        } else if key == "cleanup_save_ns" {
            // nft_cleanup lists nothing: one `nft -f`.
            assert_eq!(value.as_u64(), Some(0), "{key}");
        } else {
            assert!(value.as_u64().is_some_and(|v| v > 0), "{key}: {value}");
        }
    }
    for key in [
        "one_transaction_ns",
        "list_table_ns",
        "chains_compiled",
        "partial_sync_ns",
        "resync_sync_ns",
        "drift_check_ns",
    ] {
        assert!(nftables.contains_key(key), "nftables lacks {key}");
    }
    assert_eq!(nftables["rules_in_kernel"], nftables["rules_compiled"]);
    assert_eq!(nftables["chains_in_kernel"], nftables["chains_compiled"]);
    // The table goes whole, with any stale chain the partial sync left.
    assert!(
        nftables["cleanup_chains_removed"].as_u64() >= nftables["chains_compiled"].as_u64(),
        "{nftables:?}"
    );
    assert!(
        report["machine"]["nft"].is_string(),
        "{}",
        report["machine"]
    );
    assert!(
        stderr.contains("-nftables-0-one: one transaction: "),
        "{stderr}"
    );
}

/// `--nft-transport nft` measures the nftables mode over `nft -f` and says
/// so; an unknown transport is bad input (exit 2, one line).
#[test]
fn kernel_cost_measures_either_nftables_transport() {
    let (code, stdout, stderr) = run_example("kernel_cost", &["--nft-transport", "ipc"], "");
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--nft-transport: unknown transport \"ipc\""),
        "{stderr}"
    );
    if !crate::kernel::nft_available("kernel_cost_measures_either_nftables_transport") {
        return;
    }
    let args = [
        "--backend",
        "nftables",
        "--services",
        "20",
        "--endpoints",
        "2",
        "--runs",
        "1",
        "--no-baseline",
        "--nft-transport",
        "nft",
    ];
    let (code, stdout, stderr) = run_example("kernel_cost", &args, "");
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["nftables"]["transport"], "nft");
    assert_eq!(report["nftables"]["piece_operations"], 50_000);
    assert_eq!(
        report["nftables"]["rules_in_kernel"],
        report["nftables"]["rules_compiled"]
    );
}
