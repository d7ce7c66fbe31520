//! The `sync` example with `--proxy-mode nftables` (issue 17, part 4): the
//! dry run's step lines and transaction text, the bad-input contract, and a
//! kernel run in a netns with `--apply` and `--cleanup`.

use std::path::PathBuf;

use crate::fixtures::{example, run_example};
use crate::kernel::{Netns, nft_available};

const CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster.json");

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("svcnat-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The example cluster without its EndpointSlices, written into `dir`.
fn without_slices(dir: &TempDir) -> String {
    let text = std::fs::read_to_string(CLUSTER).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["items"]
        .as_array_mut()
        .unwrap()
        .retain(|i| i["kind"] != "EndpointSlice");
    let path = dir.0.join("no-slices.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The dry run's output cut into steps: each step line and the text after it.
fn steps(out: &str) -> Vec<(&str, String)> {
    let mut steps: Vec<(&str, String)> = Vec::new();
    for line in out.lines() {
        if line.starts_with("step ") {
            steps.push((line, String::new()));
        } else {
            let (_, text) = steps.last_mut().expect("text before the first step line");
            text.push_str(line);
            text.push('\n');
        }
    }
    steps
}

#[test]
fn dry_run_prints_step_lines_and_each_transaction() {
    let dir = TempDir::new("sync-nft-dry");
    let second = without_slices(&dir);
    let (code, out, err) = run_example(
        "sync",
        &[
            "--proxy-mode",
            "nftables",
            "--cluster-cidr",
            "10.244.0.0/16",
            CLUSTER,
            &second,
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let steps = steps(&out);
    assert_eq!(steps.len(), 2, "{out}");
    // The bytes said are the bytes printed: the dry run shows all it would send.
    for (line, text) in &steps {
        let bytes = format!(", {} bytes, ", text.len());
        assert!(line.contains(&bytes), "{line}: printed {}", text.len());
    }
    // The first step writes the table whole: every chain of it (as compiled) is
    // added; nothing was there to delete.
    let (first, text) = &steps[0];
    let compiled = run_example(
        "compile",
        &[
            "--proxy-mode",
            "nftables",
            "--cluster-cidr",
            "10.244.0.0/16",
            CLUSTER,
        ],
        "",
    );
    let chains = compiled
        .1
        .lines()
        .filter(|l| l.starts_with("add chain "))
        .count();
    assert!(chains > 0, "{}", compiled.1);
    assert!(
        first.starts_with("step 1: full, ")
            && first.ends_with(&format!(
                " bytes, {chains} chains written, 0 chains deleted"
            )),
        "{first}"
    );
    assert!(text.starts_with("add table ip kube-proxy "), "{text}");
    // The second one drops every endpoint: elements change, the endpoint chains
    // are flushed as stale (deleted by a later step), no chain is written.
    let (second_line, text) = &steps[1];
    assert!(
        second_line.starts_with("step 2: partial, ")
            && second_line.ends_with(" bytes, 0 chains written, 0 chains deleted"),
        "{second_line}"
    );
    insta::assert_snapshot!("sync_nft_dry_run_second_step", text);
}

#[test]
fn bad_input_exits_2_with_one_line_in_nftables_mode() {
    let nft = ["--proxy-mode", "nftables"];
    let with = |more: &[&str]| -> Vec<String> {
        nft.iter().chain(more).map(|s| (*s).to_owned()).collect()
    };
    for (args, message) in [
        (
            with(&[CLUSTER, "/no/such/file.json"]),
            "sync: /no/such/file.json: ",
        ),
        (
            with(&["--backend", "nft", CLUSTER]),
            "sync: --backend: names an iptables binary, which --proxy-mode nftables does not use",
        ),
        // The order of the flags does not matter.
        (
            vec![
                "--backend".into(),
                "legacy".into(),
                "--proxy-mode".into(),
                "nftables".into(),
                "--cleanup".into(),
            ],
            "sync: --backend: names an iptables binary",
        ),
        (with(&[]), "sync: no STATE.json given; usage: "),
        (
            with(&["--frobnicate", CLUSTER]),
            "sync: unknown flag \"--frobnicate\"",
        ),
        (
            with(&["--ip-family", "ipv5", CLUSTER]),
            "sync: --ip-family: \"ipv5\" is not ipv4 or ipv6",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run_example("sync", &args, "");
        assert_eq!((code, out.as_str()), (2, ""), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with(message), "{args:?}: {err}");
    }
    // A state that is wrong only for the second file: nothing is printed for
    // the first (every file is checked before the first step).
    let (code, out, _) = run_example(
        "sync",
        &with(&[CLUSTER, "-"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "{\"kind\": \"List\", \"items\": 3}",
    );
    assert_eq!((code, out.as_str()), (2, ""));
}

/// Syncs two states into a fresh netns with `--apply`, compares the table the
/// kernel lists with the compiled table of the last state, then `--cleanup`
/// removes it.
#[test]
fn apply_two_states_then_cleanup_in_a_netns() {
    if !nft_available("apply_two_states_then_cleanup_in_a_netns") {
        return;
    }
    let dir = TempDir::new("sync-nft-kernel");
    let first = without_slices(&dir);
    let sync = example("sync");
    let sync = sync.to_str().unwrap();
    let flags = [
        "--proxy-mode",
        "nftables",
        "--cluster-cidr",
        "10.244.0.0/16",
    ];
    let ns = Netns::new("sync-nft");
    // A table of another program, which neither the sync nor the cleanup touch.
    let (ok, out) = ns.run(
        &["nft", "-f", "-"],
        "table ip foreign {\n\tchain c {\n\t}\n}\n",
    );
    assert!(ok, "{out}");

    let mut args = vec![sync];
    args.extend(flags);
    args.extend(["--apply", &first, CLUSTER]);
    let (ok, out) = ns.run(&args, "");
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("step 1: full, "), "{out}");
    // Endpoints appear: nothing goes stale, so the table holds just what the
    // last state compiles to.
    assert!(
        lines[1].starts_with("step 2: partial, ") && lines[1].ends_with(" 0 chains deleted"),
        "{out}"
    );

    let (code, compiled, err) = run_example("compile", &[&flags[..], &[CLUSTER]].concat(), "");
    assert_eq!(code, 0, "{err}");
    let canonical = |text: &str| {
        svcnat::parse::nft::canonicalize(&svcnat::parse::nft::parse(text).unwrap()).to_dump()
    };
    let (ok, listed) = ns.run(&["nft", "list", "table", "ip", "kube-proxy"], "");
    assert!(ok, "{listed}");
    assert_eq!(canonical(&listed), canonical(&compiled));

    let chains = compiled
        .lines()
        .filter(|l| l.starts_with("add chain "))
        .count();
    let (ok, out) = ns.run(&[sync, "--proxy-mode", "nftables", "--cleanup"], "");
    assert!(ok, "{out}");
    assert_eq!(
        out,
        format!("cleanup: 0 jump rules removed, {chains} chains removed, 0 chains kept\n")
    );
    let (ok, out) = ns.run(&["nft", "list", "table", "ip", "kube-proxy"], "");
    assert!(!ok, "{out}");
    let (ok, out) = ns.run(&["nft", "list", "tables"], "");
    assert!(ok, "{out}");
    assert_eq!(out, "table ip foreign\n");
    // An executor failure: exit 1, one line naming nft and why, nothing applied.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "env",
            "PATH=/nonexistent-svcnat",
            sync,
        ])
        .args(flags)
        .args(["--apply", CLUSTER])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("sync: step 1: ") && stderr.contains("nft"),
        "{stderr}"
    );
    let (ok, _) = ns.run(&["nft", "list", "table", "ip", "kube-proxy"], "");
    assert!(!ok);
    // A second cleanup finds nothing and says so.
    let (ok, out) = ns.run(&[sync, "--proxy-mode", "nftables", "--cleanup"], "");
    assert!(ok, "{out}");
    assert_eq!(
        out,
        "cleanup: 0 jump rules removed, 0 chains removed, 0 chains kept\n"
    );
}

/// `--nft-transport netlink`: the same two steps as netlink batches give the
/// same step lines and the same table; without `--proxy-mode nftables` the flag
/// is refused.
#[test]
fn apply_through_netlink() {
    let (code, out, err) = run_example("sync", &["--nft-transport", "netlink", CLUSTER], "");
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.contains("--nft-transport"), "{err}");
    let args = [
        "--proxy-mode",
        "nftables",
        "--nft-transport",
        "ipc",
        CLUSTER,
    ];
    let (code, out, err) = run_example("sync", &args, "");
    assert_eq!(
        (code, out.as_str(), err.lines().count()),
        (2, "", 1),
        "{err}"
    );
    assert!(
        err.contains("--nft-transport: \"ipc\" is not netlink or nft"),
        "{err}"
    );
    if !nft_available("apply_through_netlink") {
        return;
    }
    let dir = TempDir::new("sync-nft-netlink");
    let first = without_slices(&dir);
    let sync = example("sync");
    let sync = sync.to_str().unwrap();
    let flags = [
        "--proxy-mode",
        "nftables",
        "--cluster-cidr",
        "10.244.0.0/16",
    ];
    let mut outputs = Vec::new();
    let mut tables = Vec::new();
    for transport in ["nft", "netlink"] {
        let ns = Netns::new(&format!("sync-via-{transport}"));
        let mut args = vec![sync];
        args.extend(flags);
        args.extend(["--apply", "--nft-transport", transport, &first, CLUSTER]);
        let (ok, out) = ns.run(&args, "");
        assert!(ok, "{transport}: {out}");
        outputs.push(out);
        let (ok, listed) = ns.run(&["nft", "list", "table", "ip", "kube-proxy"], "");
        assert!(ok, "{listed}");
        tables.push(listed);
    }
    assert!(outputs[0].starts_with("step 1: full, "), "{}", outputs[0]);
    assert_eq!(outputs[1], outputs[0], "the same step lines");
    assert_eq!(tables[1], tables[0], "the same table, as nft lists it");
}
