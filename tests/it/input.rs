//! The input boundary, through the examples as a user meets it: every row of issue
//! 13's table (what a new user handed svcnat, and what it did), with the exact
//! lines on stderr, in one snapshot.
//!
//! Bad input: exit code 2, one line on stderr naming the file, the item and the
//! field, nothing on stdout. Input kube-proxy would accept with a log line: exit
//! code 0, the rules on stdout, one `warning: ...` line each on stderr.
//!
//! Rows covered elsewhere, with their exact messages: the 74 MB dump's memory
//! (`tests/read_memory.rs`, and `benches/read.rs` for its time), `trace --save` of
//! a file that is not a dump and of a non-UTF-8 dump
//! (`trace::example`), the shared-chain graph
//! (`trace::a_deep_*shared_chain_graph_*`), the 65,535-port service
//! (`errors::a_service_with_every_port_number_compiles`).

use std::fmt::Write;

use crate::fixtures::run_example;

/// What an example run printed, for the snapshot.
fn outcome(name: &str, program: &str, args: &[&str], stdin: &str) -> (i32, String, String, String) {
    let (code, stdout, stderr) = run_example(program, args, stdin);
    let mut shown = String::new();
    writeln!(shown, "== {name}").unwrap();
    writeln!(shown, "$ {program} {}", args.join(" ")).unwrap();
    writeln!(shown, "exit {code}, {} bytes on stdout", stdout.len()).unwrap();
    for line in stderr.lines() {
        writeln!(shown, "  {line}").unwrap();
    }
    (code, stdout, stderr, shown)
}

/// Bad input: exit 2, nothing on stdout, one line on stderr.
fn refused(name: &str, program: &str, args: &[&str], stdin: &str, all: &mut String) -> String {
    let (code, stdout, stderr, shown) = outcome(name, program, args, stdin);
    assert_eq!(code, 2, "{shown}");
    assert_eq!(stdout, "", "{shown}");
    assert_eq!(stderr.lines().count(), 1, "{shown}");
    all.push_str(&shown);
    stderr
}

/// Accepted: exit 0, the rules on stdout, and only `warning:` lines on stderr.
fn accepted(name: &str, program: &str, args: &[&str], stdin: &str, all: &mut String) -> String {
    let (code, stdout, stderr, shown) = outcome(name, program, args, stdin);
    assert_eq!(code, 0, "{shown}");
    assert!(
        stderr.lines().all(|l| l.starts_with("warning: ")),
        "{shown}"
    );
    all.push_str(&shown);
    stdout
}

const TRACE: [&str; 9] = [
    "--src",
    "10.0.0.1",
    "--dst",
    "172.30.0.41",
    "--proto",
    "tcp",
    "--dport",
    "80",
    "--cluster",
];

/// A `List` of one Service, `ns1/web` on `cluster_ip`, port `http` 22.
fn web_on(cluster_ip: &str) -> String {
    format!(
        r#"{{"kind":"List","items":[{{"apiVersion":"v1","kind":"Service",
        "metadata":{{"namespace":"ns1","name":"web"}},
        "spec":{{"clusterIP":"{cluster_ip}","ports":[{{"name":"http","port":22}}]}}}}]}}"#
    )
}

/// A `List` of the Service `ns1/web` (port `http` 80) and a slice with one
/// endpoint, `address`.
fn web_with_endpoint(address: &str) -> String {
    format!(
        r#"{{"kind":"List","items":[{{"apiVersion":"v1","kind":"Service",
        "metadata":{{"namespace":"ns1","name":"web"}},
        "spec":{{"clusterIP":"172.30.0.41","ports":[{{"name":"http","port":80}}]}}}},
        {{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","addressType":"IPv4",
        "metadata":{{"namespace":"ns1","name":"web-x","labels":{{"kubernetes.io/service-name":"web"}}}},
        "ports":[{{"name":"http","port":8080}}],"endpoints":[{{"addresses":["{address}"]}}]}}]}}"#
    )
}

#[test]
fn every_row_of_the_input_table() {
    let mut all = String::new();

    // Not a cluster dump at all: refused by all three examples.
    for text in [
        "[1,2,3]",
        "{}",
        "\"x\"",
        "null",
        "42",
        r#"{"kind":"List","items":[1,2,3]}"#,
    ] {
        refused(text, "compile", &["-"], text, &mut all);
        let mut trace = TRACE.to_vec();
        trace.push("-");
        refused(text, "trace", &trace, text, &mut all);
        refused(text, "sync", &["-"], text, &mut all);
    }

    // A ServiceList as the API server returns it: items without kind are Services.
    let out = accepted(
        "ServiceList without item kinds",
        "compile",
        &["tests/data/input/servicelist.json"],
        "",
        &mut all,
    );
    for port in ["dns", "dns-tcp", "metrics"] {
        assert!(
            out.contains(&format!(
                "\"kube-system/kube-dns:{port} has no endpoints\" -m"
            )),
            "{out}"
        );
    }

    // A bare array of 30 Services.
    let services: Vec<String> = (0..30)
        .map(|i| {
            format!(
                r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"namespace":"ns1","name":"svc{i}"}},
                "spec":{{"clusterIP":"172.30.0.{i}","ports":[{{"port":80}}]}}}}"#
            )
        })
        .collect();
    let array = format!("[{}]", services.join(","));
    refused(
        "a bare array of 30 Services",
        "compile",
        &["-"],
        &array,
        &mut all,
    );

    // A kind spelt in lower case, as an item and as the top level.
    refused(
        "an item of kind \"service\"",
        "compile",
        &["-"],
        r#"{"kind":"List","items":[{"kind":"service","metadata":{"namespace":"ns1","name":"web"}}]}"#,
        &mut all,
    );
    refused(
        "a top level of kind \"service\"",
        "compile",
        &["-"],
        r#"{"kind":"service","metadata":{"namespace":"ns1","name":"web"}}"#,
        &mut all,
    );

    // v1 Endpoints where EndpointSlices were meant: compiled, and said.
    let out = accepted(
        "v1 Endpoints",
        "compile",
        &["tests/data/input/endpoints-v1.json"],
        "",
        &mut all,
    );
    assert!(out.contains("\"ns1/web:http has no endpoints\""), "{out}");

    // A slice port renamed to "" while the service's is "http": that port is
    // skipped, as kube-proxy skips it, and the rest of the cluster compiles.
    let out = accepted(
        "a slice port named \"\" during a rename",
        "compile",
        &["tests/data/input/renamed-port.json"],
        "",
        &mut all,
    );
    assert!(out.contains("\"ns1/web:http has no endpoints\""), "{out}");

    // Flags: the culprit is the flag, not the file.
    refused(
        "an unknown short flag",
        "compile",
        &["-x", "tests/data/input/good.json"],
        "",
        &mut all,
    );
    refused(
        "two IPv4 cluster CIDRs",
        "compile",
        &[
            "--cluster-cidr",
            "10.0.0.0/16",
            "--cluster-cidr",
            "10.1.0.0/16",
            "tests/data/input/good.json",
        ],
        "",
        &mut all,
    );

    // YAML: a hint to ask kubectl for JSON.
    refused(
        "a YAML file",
        "compile",
        &["tests/data/input/cluster.yaml"],
        "",
        &mut all,
    );

    // Addresses the API server refuses.
    refused(
        "cluster IP 127.0.0.1",
        "compile",
        &["-"],
        &web_on("127.0.0.1"),
        &mut all,
    );
    for ep in ["127.0.0.1", "169.254.169.254", "0.0.0.0"] {
        refused(
            &format!("endpoint {ep}"),
            "compile",
            &["-"],
            &web_with_endpoint(ep),
            &mut all,
        );
    }

    // A kind of another API group: a Knative Service beside a v1 one, as
    // `kubectl get all -o json` lists them.
    let out = accepted(
        "a Knative Service",
        "compile",
        &["-"],
        r#"{"kind":"List","items":[
            {"apiVersion":"v1","kind":"Service","metadata":{"namespace":"ns1","name":"web"},
             "spec":{"clusterIP":"172.30.0.41","ports":[{"name":"http","port":80}]}},
            {"apiVersion":"serving.knative.dev/v1","kind":"Service",
             "metadata":{"namespace":"ns1","name":"hello"},
             "spec":{"template":{"spec":{"containers":[{"image":"hello"}]}}}}]}"#,
        &mut all,
    );
    assert!(out.contains("ns1/web:http has no endpoints"), "{out}");

    // A warning and then an error: only the error, on its one line.
    refused(
        "v1 Endpoints and a loopback cluster IP",
        "compile",
        &["-"],
        r#"{"kind":"List","items":[
            {"apiVersion":"v1","kind":"Endpoints","metadata":{"namespace":"ns1","name":"web"}},
            {"apiVersion":"v1","kind":"Service","metadata":{"namespace":"ns1","name":"web"},
             "spec":{"clusterIP":"127.0.0.1","ports":[{"name":"http","port":80}]}}]}"#,
        &mut all,
    );

    insta::assert_snapshot!(all);
}

/// The shipped example cluster, which has a headless service with its slice, reads
/// and compiles without a word on stderr.
#[test]
fn the_example_cluster_compiles_without_warnings() {
    let (code, stdout, stderr) = run_example("compile", &[], "");
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert!(stdout.starts_with("*filter\n"));
}

#[test]
fn lenient_leaves_an_invalid_service_out_with_a_warning() {
    let list = r#"{"kind":"List","items":[
        {"apiVersion":"v1","kind":"Service","metadata":{"namespace":"ns1","name":"web"},
         "spec":{"clusterIP":"172.30.0.41","ports":[{"name":"http","port":80}]}},
        {"apiVersion":"v1","kind":"Service","metadata":{"namespace":"ns1","name":"bad"},
         "spec":{"clusterIP":"127.0.0.1","ports":[{"name":"ssh","port":22}]}}]}"#;
    let (code, stdout, stderr) = run_example("compile", &["-"], list);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    let (code, stdout, stderr) = run_example("compile", &["--lenient", "-"], list);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stderr,
        "warning: -: service ns1/bad: spec.clusterIPs[0]: 127.0.0.1 is a loopback address, \
         which the API server refuses (the service is left out)\n"
    );
    assert!(stdout.contains("ns1/web:http has no endpoints"));
    assert!(!stdout.contains("ns1/bad"));
    // The same with sync's dry run and trace.
    let (code, _, stderr) = run_example("sync", &["--lenient", "-"], list);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.starts_with("warning: -: service ns1/bad"),
        "{stderr}"
    );
    let mut trace = TRACE.to_vec();
    trace.extend(["-", "--lenient"]);
    let (code, stdout, stderr) = run_example("trace", &trace, list);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("reject"), "{stdout}");
}

/// `sync --apply=false` is a dry run (it printed its payloads, and applied them
/// too, when the value was ignored); a value that is not a boolean is refused.
#[test]
fn sync_apply_reads_its_value() {
    let (code, stdout, stderr) =
        run_example("sync", &["--apply=false", "tests/data/input/good.json"], "");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("step 1: full, "), "{stdout}");
    assert!(
        stdout.contains("\n*nat\n"),
        "a dry run prints its payload: {stdout}"
    );
    let (code, stdout, stderr) =
        run_example("sync", &["--apply=maybe", "tests/data/input/good.json"], "");
    assert_eq!((code, stdout.as_str()), (2, ""));
    assert_eq!(stderr, "sync: --apply: \"maybe\" is not true or false\n");
}

/// `compile --proxy-mode nftables` keeps the bad-input contract: what iptables
/// mode refuses it refuses with the same line and exit code, what iptables mode
/// warns about it warns about in the same words, and a mode it does not know is a
/// bad flag like any other.
#[test]
fn nftables_mode_keeps_the_input_contract() {
    let loopback = web_on("127.0.0.1");
    let link_local = web_with_endpoint("169.254.169.254");
    let refused: [(&[&str], &str); 9] = [
        (&["-"], "[1,2,3]"),
        (&["-"], "{}"),
        (
            &["-"],
            r#"{"kind":"service","metadata":{"namespace":"ns1","name":"web"}}"#,
        ),
        (&["tests/data/input/cluster.yaml"], ""),
        (&["-"], &loopback),
        (&["-"], &link_local),
        (&["-x", "tests/data/input/good.json"], ""),
        (
            &[
                "--cluster-cidr",
                "10.0.0.0/16",
                "--cluster-cidr",
                "10.1.0.0/16",
                "tests/data/input/good.json",
            ],
            "",
        ),
        (&["--nodeport-addresses", "x", "-"], "{}"),
    ];
    // compile and sync refuse the same inputs in both modes, with the same line.
    for (example, (args, stdin)) in ["compile", "sync"]
        .into_iter()
        .flat_map(|e| refused.map(|r| (e, r)))
    {
        let iptables = run_example(example, args, stdin);
        let mut nft_args = vec!["--proxy-mode", "nftables"];
        nft_args.extend(args);
        let nftables = run_example(example, &nft_args, stdin);
        assert_eq!(iptables.0, 2, "{example} {args:?}: {}", iptables.2);
        assert_eq!(nftables, iptables, "{example} {args:?}");
    }
    let accepted: [(&[&str], &str); 4] = [
        (&["tests/data/input/endpoints-v1.json"], ""),
        (&["tests/data/input/renamed-port.json"], ""),
        (&["tests/data/input/good.json"], ""),
        (&["--lenient", "-"], &loopback),
    ];
    for (args, stdin) in accepted {
        let (code, _, stderr) = run_example("compile", args, stdin);
        let mut nft_args = vec!["--proxy-mode", "nftables"];
        nft_args.extend(args);
        let (nft_code, stdout, nft_stderr) = run_example("compile", &nft_args, stdin);
        assert_eq!((nft_code, nft_stderr), (code, stderr), "{args:?}");
        assert!(
            stdout.starts_with("add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n"),
            "{stdout}"
        );
    }

    let (code, stdout, stderr) = run_example(
        "compile",
        &["--proxy-mode", "ipvs", "tests/data/input/good.json"],
        "",
    );
    assert_eq!((code, stdout.as_str()), (2, ""));
    assert_eq!(
        stderr,
        "compile: --proxy-mode: \"ipvs\" is not iptables or nftables\n"
    );
    // The service CIDRs reach the rules.
    let (code, stdout, _) = run_example(
        "compile",
        &[
            "--proxy-mode=nftables",
            "--service-cluster-ip-range",
            "172.30.0.0/16,fd00:10:96::/112",
            "tests/data/input/good.json",
        ],
        "",
    );
    assert_eq!(code, 0);
    assert!(
        stdout.contains(
            "add rule ip kube-proxy cluster-ips-check ip daddr { 172.30.0.0/16 } drop comment \"Drop traffic to unallocated ClusterIPs\"\n"
        ),
        "{stdout}"
    );
}
