//! The `dataplane_cost` example's contract: bad flags exit 2 with one line (no root
//! needed); a tiny run through all three modes prints the figures it promises, for
//! the two services it picked, and leaves none of its namespaces behind.

use std::process::Command;

use crate::fixtures::{example, run_example};
use crate::kernel::nft_available;

#[test]
fn bad_flags_exit_2_with_one_line() {
    for (args, message) in [
        (
            &["--modes", "iptables,nftables"][..],
            "dataplane_cost: --modes: unknown mode \"iptables\"",
        ),
        (
            &["--services", "1000,0"][..],
            "dataplane_cost: --services: \"0\" is not 1 to 1000000",
        ),
        (
            &["--connections", "many"][..],
            "dataplane_cost: --connections: \"many\" is not a number",
        ),
        (
            &["--services", "20000", "--endpoints", "1000"][..],
            "dataplane_cost: 20000 services x 1000 endpoints would reach the server's address 10.200.0.2",
        ),
        (
            &["--connect", "10.0.0.1:80", "--services", "10"][..],
            "dataplane_cost: --connect ADDR:PORT --count N and --serve ADDR:PORT are sub-modes of their own",
        ),
    ] {
        let (code, stdout, stderr) = run_example("dataplane_cost", args, "");
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        let (first, usage) = stderr.trim_end().split_once("; usage: ").unwrap();
        assert_eq!(first, message, "{args:?}");
        assert!(usage.starts_with("dataplane_cost "), "{stderr}");
    }
}

#[test]
fn a_tiny_run_measures_first_and_last_in_every_mode() {
    if !nft_available("a_tiny_run_measures_first_and_last_in_every_mode") {
        return;
    }
    let svg = std::env::temp_dir().join(format!("svcnat-dp-{}.svg", std::process::id()));
    let child = Command::new(example("dataplane_cost"))
        .args([
            "--services",
            "50",
            "--endpoints",
            "3",
            "--connections",
            "20",
        ])
        .arg("--svg")
        .arg(&svg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(report["services"], serde_json::json!([50]));
    assert!(report["machine"]["kernel"].is_string(), "{report}");
    // The CPU the client and the server were pinned to.
    assert!(
        report["cpu"]
            .as_str()
            .is_some_and(|c| c.parse::<u32>().is_ok()),
        "{report}"
    );
    for mode in ["iptables-nft", "iptables-legacy", "nftables"] {
        let point = &report[mode]["50"];
        // Services sort by name: svc-0, svc-1, svc-10, …, svc-9.
        for (position, service, address) in [
            ("first", "scale/svc-0:http", "172.16.0.0:80"),
            ("last", "scale/svc-9:http", "172.16.0.9:80"),
        ] {
            let p = &point[position];
            assert_eq!(p["service"], service, "{mode} {position}: {p}");
            assert_eq!(p["address"], address, "{mode} {position}: {p}");
            assert_eq!(p["samples"], 20, "{mode} {position}: {p}");
            let (median, p90) = (
                p["median_us"].as_f64().unwrap(),
                p["p90_us"].as_f64().unwrap(),
            );
            assert!(median > 0.0 && p90 >= median, "{mode} {position}: {p}");
        }
        assert!(point["load_s"].as_f64().unwrap() > 0.0, "{mode}: {point}");
    }

    let plot = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    assert!(
        plot.starts_with("<svg ") && plot.ends_with("</svg>\n"),
        "{plot}"
    );
    // One line per mode and position.
    assert_eq!(plot.matches("<polyline ").count(), 6, "{plot}");

    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains(&format!("svcnat-dp-{pid}-")), "{left}");
}
