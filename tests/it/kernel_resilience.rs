//! The kernel twins of `resilience`: what a sync does when the real tables are
//! not what it left, on both backends, in namespaces the tests create. Drift (the
//! nat table replaced or flushed, a jump rule deleted) repaired by the next sync;
//! a sync that fails in nat leaving filter as it was; filter's rules held while
//! nat changes, in the same restores; stale chains that something
//! else jumps to never wedging a sync; a sync cut into pieces failing at any
//! piece. Each compares the tables (`iptables-save` of nat and filter, parsed and
//! canonicalized) with those of a fresh namespace after one full sync of the same
//! state, and sends TCP traffic through the services.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use svcnat::exec::{Backend, ExecError, Executor, IptablesRestore, RestoreOptions};
use svcnat::model::*;
use svcnat::parse::{canonicalize, parse_as};
use svcnat::ruleset::{JumpRule, NfacctCounter, Table};
use svcnat::sync::{
    CANARY_CHAIN, FullReason, RETRY_AFTER, StaleFlow, SyncError, Syncer, drift_rules,
};

use crate::fixtures::ip;
use crate::kernel::{Lab, Netns, kernel_available};

/// The lab's node: its address on the client's link, and its pods' network.
fn config() -> ProxyConfig {
    ProxyConfig::default()
        .with_node_name("node")
        .with_node_ips([ip("192.168.50.1"), ip("127.0.0.1")])
        .with_cluster_cidrs(["10.244.0.0/16".parse().unwrap()])
}

/// A ClusterIP service `test/NAME` at `vip`, TCP port 80.
fn svc(name: &str, vip: &str) -> Service {
    Service::cluster_ip("test", name, ip(vip)).with_port(ServicePort::tcp("tcp", 80))
}

/// The slice of `test/NAME`: the lab's pods `pods` (1 to 3), on port 8080.
fn slice(name: &str, pods: &[u8]) -> EndpointSlice {
    let mut s = EndpointSlice::new("test", name, format!("{name}-1"), IpFamily::Ipv4)
        .with_port(EndpointPort::tcp("tcp", 8080));
    s.endpoints = pods
        .iter()
        .map(|i| Endpoint::ready(ip(&format!("10.244.{i}.2"))).on_node("node"))
        .collect();
    s
}

/// Services and their pods, as one state.
fn cluster(services: &[(&str, &str, &[u8])]) -> ClusterState {
    let mut state = ClusterState::new();
    for (name, vip, pods) in services {
        state.upsert_service(svc(name, vip));
        state.upsert_slice(slice(name, pods));
    }
    state
}

const WEB: &str = "172.30.0.10";
const EMPTY: &str = "172.30.0.20";

/// `web` on every pod, `empty` without endpoints (a REJECT rule in filter).
fn web_and_empty() -> ClusterState {
    cluster(&[("web", WEB, &[1, 2, 3]), ("empty", EMPTY, &[])])
}

/// A nat table as another program writes it, without a KUBE chain: restored
/// without `--noflush`, it replaces the nat table, as a firewall reload does.
const FOREIGN_NAT: &str = "*nat\n:FOREIGN - [0:0]\n-A FOREIGN -s 192.0.2.1/32 -j RETURN\nCOMMIT\n";

/// `iptables-nft`, `iptables-legacy-save`, …
fn bin(backend: Backend, tool: &str) -> String {
    format!("iptables-{backend}{tool}")
}

fn exec(backend: Backend, ns: &Netns) -> IptablesRestore {
    IptablesRestore::new(backend).with_command_prefix(["ip", "netns", "exec", ns.name.as_str()])
}

/// Runs `args` in `ns` (an iptables command: `-w` waits for the legacy lock,
/// which every namespace shares), panicking with its output if it fails.
fn run(ns: &Netns, args: &[&str], stdin: &str) {
    let (ok, out) = ns.run(args, stdin);
    assert!(ok, "{}: {out}\n{stdin}", args.join(" "));
}

/// Restores `text` in `ns`, with `--noflush` or (replacing the tables it names)
/// without.
fn restore(ns: &Netns, backend: Backend, text: &str, noflush: bool) {
    let restore = bin(backend, "-restore");
    let mut args = vec![restore.as_str(), "-w", "10"];
    if noflush {
        args.push("--noflush");
    }
    run(ns, &args, text);
}

/// Tables as [`tables`] reads them: `table chain` -> rules.
type Tables = BTreeMap<String, Vec<String>>;

/// The nat and filter tables of a namespace, canonical: `iptables-save` parsed,
/// so counters and the order of chains and matches do not count; a built-in
/// chain's rules start with its policy.
fn tables(ns: &Netns, backend: Backend) -> Tables {
    let save = bin(backend, "-save");
    let mut out = Tables::new();
    for table in [Table::Nat, Table::Filter] {
        let (ok, text) = ns.run(&[save.as_str(), "-t", table.as_str()], "");
        assert!(ok, "{save}: {text}");
        let parsed = parse_as(&text, IpFamily::Ipv4)
            .unwrap_or_else(|e| panic!("{save} -t {table} does not parse: {e}\n{text}"));
        let Some(rules) = canonicalize(&parsed).table(table).cloned() else {
            continue;
        };
        for chain in rules.chains.values() {
            let policy = chain.policy.map(|p| format!("policy {p}"));
            out.insert(
                format!("{table} {}", chain.name),
                policy
                    .into_iter()
                    .chain(chain.rules.iter().map(ToString::to_string))
                    .collect(),
            );
        }
    }
    out
}

/// Fails unless `ns` holds exactly `want`, naming the chains leaked, missing or
/// different.
fn assert_tables(ns: &Netns, backend: Backend, want: &Tables, what: &str) {
    let got = tables(ns, backend);
    let leaked: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    assert!(
        leaked.is_empty() && missing.is_empty(),
        "{what}: chains leaked {leaked:?}, missing {missing:?}"
    );
    for (chain, rules) in want {
        assert_eq!(&got[chain], rules, "{what}: {chain} differs");
    }
}

/// The tables a fresh namespace holds after `before` (restored, if any) and one
/// full sync of `state`.
fn reference(backend: Backend, before: Option<&str>, state: &ClusterState) -> Tables {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let ns = Netns::new(&format!(
        "kres-ref{}",
        COUNT.fetch_add(1, Ordering::Relaxed)
    ));
    if let Some(text) = before {
        restore(&ns, backend, text, false);
    }
    let mut fresh = Syncer::new(exec(backend, &ns), config()).unwrap();
    fresh.replace_state(state.clone());
    let first = fresh.sync().unwrap();
    assert_eq!(first.full_reason, Some(FullReason::FirstSync));
    tables(&ns, backend)
}

/// 30 TCP connections from `from` to `vip:80` are each answered, and by exactly
/// the pods `pods` together.
fn assert_serves(lab: &Lab, from: &Netns, vip: &str, pods: &[u8], what: &str) {
    let answers = lab.connect(from, "tcp", vip, 80, 30);
    assert!(
        answers.iter().all(|a| a.starts_with("pod")),
        "{what}: {vip} from {}: {answers:?}",
        from.name
    );
    let names: BTreeSet<String> = answers
        .iter()
        .map(|a| a.split(' ').next().unwrap().to_owned())
        .collect();
    let want: BTreeSet<String> = pods.iter().map(|i| format!("pod{i}")).collect();
    assert_eq!(names, want, "{what}: {vip} from {}", from.name);
}

/// A TCP connection from `from` to `vip:80` reaches no pod.
fn assert_unserved(lab: &Lab, from: &Netns, vip: &str, what: &str) {
    let answer = lab.connect(from, "tcp", vip, 80, 1);
    assert!(
        !answer[0].starts_with("pod"),
        "{what}: {vip} from {} answered: {answer:?}",
        from.name
    );
    // The unanswered flow stays in the node's conntrack table (SYN_SENT, two
    // minutes): a later connection that happens to get the same source port
    // would match it and pass untranslated, as with any proxy. Forget it, so
    // the checks after the repair see only new connections (none found: exit
    // 1, which is fine).
    let _ = lab.node.run(&["conntrack", "-D", "--orig-dst", vip], "");
}

/// One way to tamper with the nat table, and what the drift check then misses.
struct Tamper {
    what: &'static str,
    args: Vec<String>,
    stdin: &'static str,
    /// The rule the check finds missing.
    missing: JumpRule,
    /// What the tamper leaves that a full sync keeps (restored before the
    /// reference's sync).
    left: Option<&'static str>,
    /// The node's own traffic (nat OUTPUT) still works before the repair.
    node_served: bool,
}

/// Issue 15, part 4: the nat table flushed, its PREROUTING jump rule deleted, or
/// the table replaced by a firewall reload. Each time traffic from the client
/// fails until the next sync, which (with nothing changed in the cluster) is a
/// full one for drift, names the rule the check missed, and leaves exactly the
/// full-sync state; traffic flows again.
fn drift_is_found_and_repaired(backend: Backend, tag: &str) {
    let lab = Lab::new(tag, IpFamily::Ipv4);
    let state = web_and_empty();
    let mut syncer = Syncer::new(exec(backend, &lab.node), config())
        .unwrap()
        .with_drift_check(Some(Duration::ZERO));
    syncer.replace_state(state.clone());
    let first = syncer.sync().unwrap();
    assert_eq!(first.full_reason, Some(FullReason::FirstSync));
    let synced = reference(backend, None, &state);
    assert_tables(&lab.node, backend, &synced, "the first sync");
    // Nothing drifted: the check runs and finds nothing.
    let quiet = syncer.sync().unwrap();
    assert!(!quiet.full && quiet.payload.is_empty(), "{quiet}");
    assert_serves(&lab, &lab.client, WEB, &[1, 2, 3], "the first sync");

    let drift = drift_rules(&config()).unwrap();
    let nat_canary = drift
        .iter()
        .find(|r| r.table == Table::Nat && r.chain.as_str() == CANARY_CHAIN)
        .unwrap()
        .clone();
    let portals = drift
        .iter()
        .find(|r| r.table == Table::Nat && r.chain.as_str() == "PREROUTING")
        .unwrap()
        .clone();
    let portals_args = [
        "-m",
        "comment",
        "--comment",
        "kubernetes service portals",
        "-j",
        "KUBE-SERVICES",
    ];
    assert_eq!(
        portals.rule.to_string(),
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "the rule deleted below is not svcnat's"
    );
    let iptables = |args: &[&str]| -> Vec<String> {
        [bin(backend, "").as_str(), "-w", "10", "-t", "nat"]
            .iter()
            .chain(args)
            .map(|a| a.to_string())
            .collect()
    };
    let cases = [
        Tamper {
            what: "nat flushed",
            args: iptables(&["-F"]),
            stdin: "",
            missing: nat_canary.clone(),
            left: None,
            node_served: false,
        },
        Tamper {
            what: "the PREROUTING jump deleted",
            args: iptables(&[["-D", "PREROUTING"].as_slice(), &portals_args].concat()),
            stdin: "",
            missing: portals,
            left: None,
            node_served: true,
        },
        Tamper {
            what: "nat replaced",
            args: vec![bin(backend, "-restore"), "-w".into(), "10".into()],
            stdin: FOREIGN_NAT,
            missing: nat_canary,
            left: Some(FOREIGN_NAT),
            node_served: false,
        },
    ];
    for case in cases {
        let what = case.what;
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        run(&lab.node, &args, case.stdin);
        let want = match case.left {
            None => synced.clone(),
            Some(left) => reference(backend, Some(left), &state),
        };
        assert_ne!(
            tables(&lab.node, backend),
            want,
            "{what}: the tamper changed nothing"
        );
        // The tamper mattered: traffic from outside the node reaches no pod.
        assert_unserved(&lab, &lab.client, WEB, what);
        if case.node_served {
            assert_serves(&lab, &lab.node, WEB, &[1, 2, 3], what);
        }

        let report = syncer.sync().unwrap();
        assert!(report.full, "{what}: {report}");
        assert_eq!(report.full_reason, Some(FullReason::Drift), "{what}");
        assert_eq!(report.drifted.as_ref(), Some(&case.missing), "{what}");
        assert_tables(&lab.node, backend, &want, what);
        assert_serves(&lab, &lab.client, WEB, &[1, 2, 3], what);
        assert_serves(&lab, &lab.node, WEB, &[1, 2, 3], what);
        assert_eq!(
            lab.connect(&lab.node, "tcp", EMPTY, 80, 1),
            ["REFUSED"],
            "{what}"
        );
        // Repaired: the next check finds nothing.
        let next = syncer.sync().unwrap();
        assert!(!next.full && next.payload.is_empty(), "{what}: {next}");
    }
}

#[test]
fn drift_is_found_and_repaired_nft() {
    if kernel_available("drift_is_found_and_repaired_nft") {
        drift_is_found_and_repaired(Backend::Nft, "kdrift-nft");
    }
}

#[test]
fn drift_is_found_and_repaired_legacy() {
    if kernel_available("drift_is_found_and_repaired_legacy") {
        drift_is_found_and_repaired(Backend::Legacy, "kdrift-leg");
    }
}

/// The filter table's part of `tables`.
fn filter_of(tables: &Tables) -> Tables {
    tables
        .iter()
        .filter(|(k, _)| k.starts_with("filter "))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Issue 15, part 7: with the nat table replaced behind svcnat's back (and no
/// drift check to notice), a change that touches both tables (a service without
/// endpoints gains one: its REJECT leaves filter, its chains enter nat) fails in
/// nat, which is written first, so filter stays exactly as it was: the service
/// is still refused, not a black hole. The next sync is full and repairs both.
fn a_failure_in_nat_leaves_filter_as_it_was(backend: Backend, tag: &str) {
    let lab = Lab::new(tag, IpFamily::Ipv4);
    let mut syncer = Syncer::new(exec(backend, &lab.node), config())
        .unwrap()
        .with_drift_check(None);
    syncer.replace_state(web_and_empty());
    assert!(syncer.sync().unwrap().full);
    restore(&lab.node, backend, FOREIGN_NAT, false);
    let before = tables(&lab.node, backend);
    assert!(!before.contains_key("nat KUBE-SERVICES"), "{before:?}");
    assert_eq!(lab.connect(&lab.node, "tcp", EMPTY, 80, 1), ["REFUSED"]);

    syncer.upsert_slice(slice("empty", &[2]));
    let err = syncer.sync().unwrap_err();
    assert!(matches!(err, SyncError::Exec(_)), "{err}");
    assert_eq!(err.retry_after(), Some(RETRY_AFTER));
    assert_eq!(
        filter_of(&tables(&lab.node, backend)),
        filter_of(&before),
        "filter went ahead of nat"
    );
    assert_eq!(
        lab.connect(&lab.node, "tcp", EMPTY, 80, 1),
        ["REFUSED"],
        "the service lost its REJECT before it had endpoints"
    );

    let repair = syncer.sync().unwrap();
    assert_eq!(repair.full_reason, Some(FullReason::AfterFailure));
    let mut after = web_and_empty();
    after.upsert_slice(slice("empty", &[2]));
    let want = reference(backend, Some(FOREIGN_NAT), &after);
    assert_tables(&lab.node, backend, &want, "the repair");
    assert_serves(&lab, &lab.node, EMPTY, &[2], "the repair");
    assert_serves(&lab, &lab.client, EMPTY, &[2], "the repair");
    assert_serves(&lab, &lab.client, WEB, &[1, 2, 3], "the repair");
}

#[test]
fn a_failure_in_nat_leaves_filter_as_it_was_nft() {
    if kernel_available("a_failure_in_nat_leaves_filter_as_it_was_nft") {
        a_failure_in_nat_leaves_filter_as_it_was(Backend::Nft, "khalf-nft");
    }
}

#[test]
fn a_failure_in_nat_leaves_filter_as_it_was_legacy() {
    if kernel_available("a_failure_in_nat_leaves_filter_as_it_was_legacy") {
        a_failure_in_nat_leaves_filter_as_it_was(Backend::Legacy, "khalf-leg");
    }
}

/// The filter rules a sync holds while nat changes reach the kernel in the
/// same restores as the rest: a payload that names filter twice (before nat and
/// after it). `web` loses its endpoints and `empty` gains one in a partial
/// sync: web's REJECT goes in before nat (empty's stays until after). Then a
/// restarted proxy, in pieces of one chain, turns them back in its first full
/// sync, planned over the kernel's own dump of both tables. Each time the
/// tables are those of one full sync of the state, and traffic follows.
fn filter_held_while_nat_changes(backend: Backend, tag: &str) {
    let lab = Lab::new(tag, IpFamily::Ipv4);
    let mut syncer = Syncer::new(exec(backend, &lab.node), config())
        .unwrap()
        .with_drift_check(None);
    syncer.replace_state(web_and_empty());
    assert!(syncer.sync().unwrap().full);

    let swapped = cluster(&[("web", WEB, &[]), ("empty", EMPTY, &[2])]);
    syncer.replace_state(swapped.clone());
    let report = syncer.sync().unwrap();
    assert!(!report.full);
    let text = report.payload.text();
    assert!(text.starts_with("*filter\n"), "{text}");
    assert_eq!(text.matches("*filter\n").count(), 2, "{text}");
    let want = reference(backend, None, &swapped);
    assert_tables(&lab.node, backend, &want, "the partial sync");
    assert_eq!(lab.connect(&lab.node, "tcp", WEB, 80, 1), ["REFUSED"]);
    assert_serves(&lab, &lab.client, EMPTY, &[2], "the partial sync");

    let exec = exec(backend, &lab.node).with_restore_pieces(Some(1));
    let mut restarted = Syncer::new(exec, config()).unwrap().with_drift_check(None);
    restarted.replace_state(web_and_empty());
    let report = restarted.sync().unwrap();
    assert_eq!(report.full_reason, Some(FullReason::FirstSync));
    assert!(report.payload.text().starts_with("*filter\n"));
    let want = reference(backend, None, &web_and_empty());
    assert_tables(&lab.node, backend, &want, "the restart");
    if backend == Backend::Nft {
        // The pieces of one chain went as netlink batches.
        assert!(restarted.executor().restore_counts().0 > 0);
    }
    assert_eq!(lab.connect(&lab.node, "tcp", EMPTY, 80, 1), ["REFUSED"]);
    assert_serves(&lab, &lab.client, WEB, &[1, 2, 3], "the restart");
}

#[test]
fn filter_held_while_nat_changes_nft() {
    if kernel_available("filter_held_while_nat_changes_nft") {
        filter_held_while_nat_changes(Backend::Nft, "khold-nft");
    }
}

#[test]
fn filter_held_while_nat_changes_legacy() {
    if kernel_available("filter_held_while_nat_changes_legacy") {
        filter_held_while_nat_changes(Backend::Legacy, "khold-leg");
    }
}

/// Another program's chain named like svcnat's but without its hash, and a rule
/// of that program jumping to it.
const MINE: &str = "*nat\n:KUBE-SEP-MYOWNCHAIN - [0:0]\n:FOREIGN - [0:0]\n\
    -A KUBE-SEP-MYOWNCHAIN -s 192.0.2.1/32 -j RETURN\n\
    -A FOREIGN -j KUBE-SEP-MYOWNCHAIN\nCOMMIT\n";

const OLD: &str = "172.30.0.60";
const FRESH: &str = "172.30.0.70";

/// An old kube-proxy's chain, not svcnat's: svcnat never writes `KUBE-XLB-`.
const XLB: &str = "KUBE-XLB-AAAAAAAAAAAAAAAA";

/// Issue 15, part 7: stale chains never wedge a sync. (i) `KUBE-SEP-MYOWNCHAIN`,
/// which a foreign rule jumps to, is not svcnat's (no hash): first, full and
/// partial syncs succeed and leave it and its rules alone. (ii) An old
/// kube-proxy's `KUBE-XLB-…` jumps to the `KUBE-SVC-…` chain of a service that
/// is then removed: the partial sync applies every other change and keeps that
/// chain, flushed; a full sync keeps it too; once the XLB chain is gone, the
/// next full sync deletes it. Traffic to the other services works throughout.
fn stale_chains_never_wedge_a_sync(backend: Backend, tag: &str) {
    let lab = Lab::new(tag, IpFamily::Ipv4);
    restore(&lab.node, backend, MINE, true);
    let mine = |t: &Tables| -> Tables {
        t.iter()
            .filter(|(k, _)| k.contains("MYOWNCHAIN") || *k == "nat FOREIGN")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let mine_before = mine(&tables(&lab.node, backend));
    assert_eq!(mine_before.len(), 2, "{mine_before:?}");
    let assert_mine_untouched = |what: &str| {
        assert_eq!(mine(&tables(&lab.node, backend)), mine_before, "{what}");
    };

    // (i)
    let mut state = cluster(&[
        ("web", WEB, &[1, 2, 3]),
        ("empty", EMPTY, &[]),
        ("old", OLD, &[1, 3]),
    ]);
    let mut syncer = Syncer::new(exec(backend, &lab.node), config())
        .unwrap()
        .with_drift_check(None);
    syncer.replace_state(state.clone());
    let first = syncer.sync().unwrap();
    assert_eq!(first.full_reason, Some(FullReason::FirstSync));
    assert!(first.kept_chains.is_empty(), "{:?}", first.kept_chains);
    assert_mine_untouched("the first sync");
    let want = reference(backend, Some(MINE), &state);
    assert_tables(&lab.node, backend, &want, "the first sync");
    syncer.request_full_sync();
    let full = syncer.sync().unwrap();
    assert_eq!(full.full_reason, Some(FullReason::Requested));
    assert_mine_untouched("a full sync");
    assert_tables(&lab.node, backend, &want, "a full sync");
    state.upsert_slice(slice("empty", &[3]));
    syncer.replace_state(state.clone());
    let partial = syncer.sync().unwrap();
    assert!(!partial.full, "{partial}");
    assert_mine_untouched("a partial sync");
    let want = reference(backend, Some(MINE), &state);
    assert_tables(&lab.node, backend, &want, "a partial sync");
    assert_serves(&lab, &lab.client, WEB, &[1, 2, 3], "(i)");
    assert_serves(&lab, &lab.client, EMPTY, &[3], "(i)");

    // (ii) The old kube-proxy's chain jumps to the service chain of `old`.
    let old_svc = want["nat KUBE-SERVICES"]
        .iter()
        .find(|r| r.contains(&format!("{OLD}/32")) || r.contains(&format!("-d {OLD} ")))
        .and_then(|r| r.split("-j ").nth(1))
        .expect("KUBE-SERVICES jumps to the service chain of old")
        .to_owned();
    assert!(old_svc.starts_with("KUBE-SVC-"), "{old_svc}");
    restore(
        &lab.node,
        backend,
        &format!("*nat\n:{XLB} - [0:0]\n-A {XLB} -j {old_svc}\nCOMMIT\n"),
        true,
    );
    // `old` goes; `web` loses a pod; `fresh` comes.
    state.remove_service(&ServiceKey::new("test", "old"));
    state.remove_slice(&ServiceKey::new("test", "old"), "old-1");
    state.upsert_slice(slice("web", &[1, 2]));
    state.upsert_service(svc("fresh", FRESH));
    state.upsert_slice(slice("fresh", &[2, 3]));
    syncer.replace_state(state.clone());
    let partial = syncer.sync().unwrap();
    assert!(!partial.full, "{partial}");
    let kept: Vec<(Table, &str)> = partial
        .kept_chains
        .iter()
        .map(|k| (k.table, k.chain.as_str()))
        .collect();
    assert_eq!(kept, [(Table::Nat, old_svc.as_str())]);
    let clean = reference(backend, Some(MINE), &state);
    let mut want = clean.clone();
    want.insert(format!("nat {XLB}"), vec![format!("-j {old_svc}")]);
    want.insert(format!("nat {old_svc}"), vec![]);
    assert_tables(&lab.node, backend, &want, "the partial sync");
    assert_mine_untouched("the partial sync");
    assert_serves(&lab, &lab.client, WEB, &[1, 2], "the partial sync");
    assert_serves(&lab, &lab.client, FRESH, &[2, 3], "the partial sync");
    assert_unserved(&lab, &lab.client, OLD, "the partial sync");

    syncer.request_full_sync();
    let full = syncer.sync().unwrap();
    assert!(full.full, "{full}");
    assert_eq!(full.kept_chains.len(), 1, "{:?}", full.kept_chains);
    assert_eq!(full.kept_chains[0].chain.as_str(), old_svc);
    assert!(
        full.kept_chains[0].reason.contains(XLB),
        "{}",
        full.kept_chains[0].reason
    );
    assert_tables(&lab.node, backend, &want, "a full sync");
    assert_serves(&lab, &lab.client, WEB, &[1, 2], "a full sync");

    let iptables = bin(backend, "");
    for op in ["-F", "-X"] {
        run(
            &lab.node,
            &[&iptables, "-w", "10", "-t", "nat", op, XLB],
            "",
        );
    }
    syncer.request_full_sync();
    let full = syncer.sync().unwrap();
    assert!(full.kept_chains.is_empty(), "{:?}", full.kept_chains);
    assert!(
        full.payload
            .deleted
            .iter()
            .any(|(t, c)| *t == Table::Nat && c.as_str() == old_svc),
        "{:?}",
        full.payload.deleted
    );
    assert_tables(
        &lab.node,
        backend,
        &clean,
        "the full sync after the XLB chain went",
    );
    assert_mine_untouched("the full sync after the XLB chain went");
    assert_serves(&lab, &lab.client, WEB, &[1, 2], "the end");
    assert_serves(&lab, &lab.client, FRESH, &[2, 3], "the end");
}

#[test]
fn stale_chains_never_wedge_a_sync_nft() {
    if kernel_available("stale_chains_never_wedge_a_sync_nft") {
        stale_chains_never_wedge_a_sync(Backend::Nft, "kstale-nft");
    }
}

#[test]
fn stale_chains_never_wedge_a_sync_legacy() {
    if kernel_available("stale_chains_never_wedge_a_sync_legacy") {
        stale_chains_never_wedge_a_sync(Backend::Legacy, "kstale-leg");
    }
}

/// An executor wrapping [`IptablesRestore`], as an embedder's timing or logging
/// wrapper does: it forwards every method, and can be told to fail its k-th
/// restore without running it.
struct FailingRestore {
    inner: IptablesRestore,
    restores: usize,
    fail_at: Option<usize>,
}

impl Executor for FailingRestore {
    fn restore(
        &mut self,
        family: IpFamily,
        payload: &str,
        options: RestoreOptions,
    ) -> Result<(), ExecError> {
        self.restores += 1;
        if self.fail_at == Some(self.restores) {
            return Err(ExecError::Refused(format!(
                "restore {} refused by the test",
                self.restores
            )));
        }
        self.inner.restore(family, payload, options)
    }
    fn save(&mut self, family: IpFamily, table: Table) -> Result<String, ExecError> {
        self.inner.save(family, table)
    }
    fn ensure_jump(&mut self, family: IpFamily, jump: &JumpRule) -> Result<(), ExecError> {
        self.inner.ensure_jump(family, jump)
    }
    fn ensure_jumps(&mut self, family: IpFamily, jumps: &[JumpRule]) -> Result<(), ExecError> {
        self.inner.ensure_jumps(family, jumps)
    }
    fn chains_per_restore(&mut self, family: IpFamily) -> Option<usize> {
        self.inner.chains_per_restore(family)
    }
    fn chains_per_restore_for(&mut self, family: IpFamily, chains: usize) -> Option<usize> {
        self.inner.chains_per_restore_for(family, chains)
    }
    fn first_missing_rule(
        &mut self,
        family: IpFamily,
        rules: &[JumpRule],
    ) -> Result<Option<usize>, ExecError> {
        self.inner.first_missing_rule(family, rules)
    }
    fn ensure_nfacct(&mut self, counters: &[NfacctCounter]) -> Result<(), ExecError> {
        self.inner.ensure_nfacct(counters)
    }
    fn clear_conntrack(&mut self, family: IpFamily, flows: &[StaleFlow]) -> Result<(), ExecError> {
        self.inner.clear_conntrack(family, flows)
    }
}

/// Issue 15, part 3: a partial sync from A to B (services removed, added, gaining
/// and losing endpoints, in both tables) cut into pieces of five chains, failing
/// at each of its pieces in turn: the next sync is full and leaves exactly what
/// a fresh full sync of B leaves, no chain leaked, and B's services serve.
fn a_failure_between_pieces_is_repaired(backend: Backend, tag: &str) {
    let lab = Lab::new(tag, IpFamily::Ipv4);
    let a = cluster(&[
        ("s1", "172.30.1.1", &[1, 2]),
        ("s2", "172.30.1.2", &[3]),
        ("s3", "172.30.1.3", &[1, 2, 3]),
        ("s4", "172.30.1.4", &[]),
        ("s5", "172.30.1.5", &[2]),
        ("s6", "172.30.1.6", &[1, 3]),
    ]);
    let b = cluster(&[
        ("s3", "172.30.1.3", &[1]),
        ("s4", "172.30.1.4", &[2, 3]),
        ("s5", "172.30.1.5", &[]),
        ("s6", "172.30.1.6", &[1, 3]),
        ("s7", "172.30.1.7", &[1, 2, 3]),
        ("s8", "172.30.1.8", &[3]),
        ("s9", "172.30.1.9", &[]),
    ]);
    let want_a = reference(backend, None, &a);
    let want_b = reference(backend, None, &b);
    let exec = FailingRestore {
        inner: exec(backend, &lab.node).with_restore_pieces(Some(5)),
        restores: 0,
        fail_at: None,
    };
    let mut syncer = Syncer::new(exec, config()).unwrap().with_drift_check(None);
    syncer.replace_state(a.clone());
    assert!(syncer.sync().unwrap().full);
    assert_tables(&lab.node, backend, &want_a, "A");
    // The pieces of the partial sync from A to B, counted on a sync that works.
    let before = syncer.executor().restores;
    syncer.replace_state(b.clone());
    let report = syncer.sync().unwrap();
    assert!(!report.full, "{report}");
    let pieces = syncer.executor().restores - before;
    assert!(pieces >= 4, "A to B in {pieces} pieces");
    assert_tables(&lab.node, backend, &want_b, "A to B in pieces");

    for k in 1..=pieces {
        let what = format!("piece {k} of {pieces} failed");
        syncer.replace_state(a.clone());
        syncer.request_full_sync();
        assert!(syncer.sync().unwrap().full, "{what}");
        assert_tables(&lab.node, backend, &want_a, &format!("{what}: back to A"));
        let now = syncer.executor().restores;
        syncer.executor_mut().fail_at = Some(now + k);
        syncer.replace_state(b.clone());
        let err = syncer.sync().unwrap_err();
        assert!(
            matches!(&err, SyncError::Exec(ExecError::Refused(m)) if m.contains("refused by the test")),
            "{what}: {err}"
        );
        assert_eq!(syncer.executor().restores, now + k, "{what}: went on");
        if k == 1 {
            assert_tables(&lab.node, backend, &want_a, &what);
        }
        let repair = syncer.sync().unwrap();
        assert_eq!(repair.full_reason, Some(FullReason::AfterFailure), "{what}");
        assert_tables(&lab.node, backend, &want_b, &what);
        assert_serves(&lab, &lab.node, "172.30.1.7", &[1, 2, 3], &what);
        assert_serves(&lab, &lab.node, "172.30.1.4", &[2, 3], &what);
        assert_eq!(
            lab.connect(&lab.node, "tcp", "172.30.1.5", 80, 1),
            ["REFUSED"],
            "{what}"
        );
    }
}

#[test]
fn a_failure_between_pieces_is_repaired_nft() {
    if kernel_available("a_failure_between_pieces_is_repaired_nft") {
        a_failure_between_pieces_is_repaired(Backend::Nft, "kpiece-nft");
    }
}

#[test]
fn a_failure_between_pieces_is_repaired_legacy() {
    if kernel_available("a_failure_between_pieces_is_repaired_legacy") {
        a_failure_between_pieces_is_repaired(Backend::Legacy, "kpiece-leg");
    }
}

// Found by a review of this changes.

fn review_cluster() -> svcnat::model::ClusterState {
    use crate::fixtures::{ready, service, slice, state};
    let svc = |i: u8| {
        service(
            "ns1",
            &format!("svc{i}"),
            &format!("172.30.0.{i}"),
            &[("p80", 80)],
        )
    };
    state(
        vec![svc(1), svc(2)],
        vec![slice(
            "ns1",
            "svc1",
            &[("p80", 80)],
            vec![ready("10.180.0.1")],
        )],
    )
}

/// nft reports a `-C` whose jump target is missing at the section's COMMIT,
/// naming the chain: `SyncReport::drifted` names a rule that is really gone (it
/// used to name the section's last rule, which was in place).
fn drifted_names_the_rule_that_is_missing(backend: svcnat::exec::Backend, tag: &str) {
    use crate::kernel::{Netns, kernel_available};
    use svcnat::exec::IptablesRestore;
    if !kernel_available(tag) {
        return;
    }
    let ns = Netns::new(tag);
    let exec = IptablesRestore::new(backend)
        .with_command_prefix(["ip", "netns", "exec", ns.name.as_str()])
        .with_lock_dir(None);
    let mut syncer = svcnat::sync::Syncer::new(exec, crate::fixtures::config())
        .unwrap()
        .with_drift_check(Some(std::time::Duration::ZERO));
    syncer.replace_state(review_cluster());
    syncer.sync().unwrap();
    let ipt = format!("iptables-{backend}");
    let portals = [
        "-m",
        "comment",
        "--comment",
        "kubernetes service portals",
        "-j",
        "KUBE-SERVICES",
    ];
    for chain in ["PREROUTING", "OUTPUT"] {
        let mut args = vec![ipt.as_str(), "-w", "5", "-t", "nat", "-D", chain];
        args.extend(portals);
        let (ok, out) = ns.run(&args, "");
        assert!(ok, "{out}");
    }
    for op in ["-F", "-X"] {
        let (ok, out) = ns.run(
            &[ipt.as_str(), "-w", "5", "-t", "nat", op, "KUBE-SERVICES"],
            "",
        );
        assert!(ok, "{out}");
    }
    let report = syncer.sync().unwrap();
    let drifted = report.drifted.expect("drift found");
    // OUTPUT's and PREROUTING's jumps are the ones gone (OUTPUT's is checked first).
    assert_eq!(
        (drifted.chain.as_str(), drifted.rule.to_string()),
        (
            "OUTPUT",
            "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".to_owned()
        ),
    );
}

#[test]
fn drifted_names_the_rule_that_is_missing_nft() {
    drifted_names_the_rule_that_is_missing(svcnat::exec::Backend::Nft, "rv-drift-nft");
}

#[test]
fn drifted_names_the_rule_that_is_missing_legacy() {
    drifted_names_the_rule_that_is_missing(svcnat::exec::Backend::Legacy, "rv-drift-leg");
}
