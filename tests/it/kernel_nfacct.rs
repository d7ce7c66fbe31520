//! nfacct counters in the kernel: with `nfacct_counters` on, `IptablesRestore`
//! creates the counters the rules name (with the `nfacct` tool, inside the
//! namespace) before the restore, so the kernel accepts the rules; without the tool
//! the sync fails naming the counter and writes no rule. Only namespaces the tests
//! create are touched.

use std::process::{Command, Stdio};

use svcnat::exec::{Backend, ExecError, IptablesRestore};
use svcnat::model::*;
use svcnat::ruleset::NfacctCounter;
use svcnat::sync::{SyncError, Syncer};

use crate::fixtures::*;
use crate::kernel::{Netns, kernel_available};

/// [`kernel_available`], and the `nfacct` tool (Debian's package `nfacct`, which
/// `.ci/run` installs) on the PATH.
fn nfacct_available(test: &str) -> bool {
    if !kernel_available(test) {
        return false;
    }
    let found = Command::new("sh")
        .args(["-c", "command -v nfacct"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("SVCNAT_REQUIRE_KERNEL").as_deref() == Ok("1") {
            panic!("{test}: kernel test required (SVCNAT_REQUIRE_KERNEL=1) but nfacct not found");
        }
        eprintln!("{test}: skipped: nfacct not found (apt-get install nfacct)");
        return false;
    }
    true
}

/// kube-proxy's test config with the counters: 127.0.0.1 is a node IP, so node
/// ports are open on localhost and a node-port service uses both counters.
fn counting() -> ProxyConfig {
    config().with_nfacct_counters(true)
}

fn node_port_service(i: u8) -> (Service, EndpointSlice) {
    let name = format!("np{i}");
    let mut svc = service("ns1", &name, &format!("172.30.1.{i}"), &[("p80", 80)]);
    svc.service_type = ServiceType::NodePort;
    svc.ports[0].node_port = Some(31000 + u16::from(i));
    let eps = slice("ns1", &name, &[("p80", 80)], vec![ready("10.180.1.1")]);
    (svc, eps)
}

fn syncer_in(prefix: &[&str], backend: Backend) -> Syncer<IptablesRestore> {
    let exec = IptablesRestore::new(backend).with_command_prefix(prefix.iter().copied());
    let mut syncer = Syncer::new(exec, counting()).unwrap();
    let (svc, eps) = node_port_service(1);
    syncer.upsert_service(svc);
    syncer.upsert_slice(eps);
    syncer
}

/// `iptables-save -t TABLE` inside `ns`, each run of spaces made one
/// (`iptables-save` prints `--nfacct-name  NAME` with two).
fn saved(ns: &Netns, backend: Backend, table: &str) -> String {
    let (ok, out) = ns.run(&[&format!("iptables-{backend}-save"), "-t", table], "");
    assert!(ok, "{out}");
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") + "\n")
        .collect()
}

/// The counter names `nfacct list` prints inside `ns`.
fn listed(ns: &Netns) -> Vec<String> {
    let (ok, out) = ns.run(&["nfacct", "list"], "");
    assert!(ok, "nfacct list: {out}");
    out.lines()
        .filter_map(|l| l.trim_end().strip_suffix(';')?.rsplit_once("} = "))
        .map(|(_, name)| name.to_owned())
        .collect()
}

fn counters_are_created_and_the_rules_accepted(backend: Backend, tag: &str) {
    let ns = Netns::new(&format!("nfacct-{tag}"));
    let other = Netns::new(&format!("nfacct-{tag}-other"));
    assert!(listed(&ns).is_empty(), "a fresh namespace has no counters");

    let mut syncer = syncer_in(&["ip", "netns", "exec", &ns.name], backend);
    let report = syncer.sync().unwrap_or_else(|e| panic!("{backend}: {e}"));
    assert!(report.full);
    let names = listed(&ns);
    for counter in NfacctCounter::ALL {
        assert!(
            names.iter().any(|n| n == counter.as_str()),
            "{counter}: {names:?}"
        );
    }
    // The counters belong to the namespace: another one does not see them.
    assert!(listed(&other).is_empty(), "{:?}", listed(&other));
    // The kernel holds the rules that count in them.
    let filter = saved(&ns, backend, "filter");
    assert!(
        filter.contains(
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID \
             -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP"
        ),
        "{filter}"
    );
    let nat = saved(&ns, backend, "nat");
    let localhost = nat
        .lines()
        .find(|l| l.contains("--nfacct-name localhost_nps_accepted_pkts"))
        .unwrap_or_else(|| panic!("no localhost node-port rule:\n{nat}"));
    assert!(
        localhost.starts_with("-A KUBE-NODEPORTS ")
            && localhost.contains("-d 127.0.0.0/8")
            && localhost.contains("--dport 31001"),
        "{localhost}"
    );

    // A partial sync that rewrites the node-port chain, and a fresh executor (one
    // that has not created them) finding the counters there already.
    let (svc, eps) = node_port_service(2);
    syncer.upsert_service(svc);
    syncer.upsert_slice(eps);
    let partial = syncer.sync().unwrap_or_else(|e| panic!("{backend}: {e}"));
    assert!(!partial.full);
    let mut again = syncer_in(&["ip", "netns", "exec", &ns.name], backend);
    again.replace_state(syncer.state().clone());
    assert!(
        again
            .sync()
            .unwrap_or_else(|e| panic!("{backend}: {e}"))
            .full
    );
    let nat = saved(&ns, backend, "nat");
    assert_eq!(
        nat.matches("--nfacct-name localhost_nps_accepted_pkts")
            .count(),
        2,
        "{nat}"
    );
    assert_eq!(
        listed(&ns).len(),
        NfacctCounter::ALL.len(),
        "each counter once"
    );
}

/// Without `nfacct` on the PATH inside the namespace, the first sync fails naming
/// the counter, and neither table holds a svcnat chain.
fn a_missing_tool_fails_the_sync_before_any_rule(backend: Backend, tag: &str) {
    let ns = Netns::new(&format!("nfacct-{tag}-none"));
    let empty = format!("PATH=/nonexistent-svcnat-{}", std::process::id());
    let mut syncer = syncer_in(
        &["ip", "netns", "exec", &ns.name, "env", empty.as_str()],
        backend,
    );
    // The lock reads the namespace with `readlink`, which this PATH hides too.
    *syncer.executor_mut() = syncer.executor().clone().with_lock_dir(None);
    let err = syncer.sync().unwrap_err();
    let SyncError::Exec(ExecError::Nfacct { counter, source }) = &err else {
        panic!("{backend}: {err:?}");
    };
    assert_eq!(*counter, NfacctCounter::CtStateInvalidDropped);
    assert!(
        matches!(**source, ExecError::Failed { ref binary, .. } if binary == "nfacct"),
        "{source:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(
            "nfacct counter ct_state_invalid_dropped_pkts is needed by the rules and cannot \
             be created: nfacct list failed (exit status 127): "
        ) && text.contains("No such file or directory"),
        "{text}"
    );
    assert!(listed(&ns).is_empty());
    for table in ["nat", "filter"] {
        let saved = saved(&ns, backend, table);
        assert!(!saved.contains("KUBE-"), "{backend} {table}:\n{saved}");
    }
}

#[test]
fn nfacct_counters_nft() {
    if nfacct_available("nfacct_counters_nft") {
        counters_are_created_and_the_rules_accepted(Backend::Nft, "nft");
        a_missing_tool_fails_the_sync_before_any_rule(Backend::Nft, "nft");
    }
}

#[test]
fn nfacct_counters_legacy() {
    if nfacct_available("nfacct_counters_legacy") {
        counters_are_created_and_the_rules_accepted(Backend::Legacy, "leg");
        a_missing_tool_fails_the_sync_before_any_rule(Backend::Legacy, "leg");
    }
}
