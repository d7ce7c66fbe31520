//! `IptablesRestore` on nft writing pieces as netlink batches (`src/exec/xt.rs`):
//! the kernel ends up holding what `iptables-nft-restore` leaves for the same
//! payloads, as `iptables-nft-save` and `nft list` print it and as
//! `iptables -C` finds it; a batch the kernel refuses applied nothing and goes
//! again as text, which fails with iptables' own error.

use svcnat::exec::{Backend, Executor, IptablesRestore, RestoreOptions};
use svcnat::model::IpFamily;
#[cfg(feature = "synthetic")]
use svcnat::sync::Syncer;

use crate::kernel::{Netns, kernel_available};

fn exec(ns: &Netns) -> IptablesRestore {
    IptablesRestore::new(Backend::Nft).with_command_prefix([
        "ip",
        "netns",
        "exec",
        ns.name.as_str(),
    ])
}

/// `iptables-nft-save -t TABLE`, its lines sorted, the comment lines left out.
fn saved(ns: &Netns, table: &str) -> Vec<String> {
    let (ok, text) = ns.run(&["iptables-nft-save", "-t", table], "");
    assert!(ok, "{text}");
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// `nft list table ip TABLE`: the expressions as nft reads them back.
#[cfg(feature = "synthetic")]
fn listed(ns: &Netns, table: &str) -> String {
    let (ok, text) = ns.run(&["nft", "list", "table", "ip", table], "");
    assert!(ok, "{text}");
    text
}

#[cfg(feature = "synthetic")]
fn assert_same_tables(a: &Netns, b: &Netns, what: &str) {
    for table in ["nat", "filter"] {
        let (x, y) = (saved(a, table), saved(b, table));
        assert!(x.len() > 4, "{what}: {table}: {x:?}");
        if x != y {
            let only_a: Vec<&String> = x.iter().filter(|l| !y.contains(l)).take(5).collect();
            let only_b: Vec<&String> = y.iter().filter(|l| !x.contains(l)).take(5).collect();
            panic!("{what}: {table} differs: netlink only {only_a:#?}, text only {only_b:#?}");
        }
        assert_eq!(
            listed(a, table),
            listed(b, table),
            "{what}: nft list table ip {table}"
        );
    }
}

/// A load-balancer cluster (affinity, local traffic policy, UDP, node ports)
/// synced in pieces of four chains, once with netlink batches and once all as
/// text, then changed (endpoints moved, a service gone) and synced again, then
/// back to the first state by restarted syncers: both namespaces hold the same
/// tables each time, and iptables finds the netlink-written rules with `-C`.
#[cfg(feature = "synthetic")]
#[test]
fn netlink_rules_are_iptables_own() {
    use crate::kernel::nft_available;
    use svcnat::synthetic::{self, Mix, Spec};
    if !nft_available("netlink_rules_are_iptables_own") {
        return;
    }
    let spec = Spec::new(40, 3).with_mix(Mix::LoadBalancer).with_seed(3);
    let state = spec.build();
    let config = synthetic::config();
    let text = String::from_utf8(
        svcnat::compile::compile_text(&state, &config)
            .unwrap()
            .to_bytes(),
    )
    .unwrap();
    for form in [
        "-m recent",
        "--rcheck",
        "-m statistic",
        "--src-type LOCAL",
        "-m udp",
        "-j KUBE-EXT-",
        "! -s",
    ] {
        assert!(text.contains(form), "the cluster has no {form:?}");
    }
    let (a, b) = (Netns::new("xt-nl"), Netns::new("xt-text"));
    let mut netlink = Syncer::new(exec(&a).with_restore_pieces(Some(4)), config.clone())
        .unwrap()
        .with_drift_check(None);
    let mut text_only = Syncer::new(
        exec(&b)
            .with_restore_pieces(Some(4))
            .with_netlink_rules(false),
        config,
    )
    .unwrap()
    .with_drift_check(None);
    for s in [&mut netlink, &mut text_only] {
        s.replace_state(state.clone());
        assert!(s.sync().unwrap().full);
    }
    let (batches, _) = netlink.executor().restore_counts();
    assert!(batches > 0, "no netlink batch");
    assert_eq!(text_only.executor().restore_counts().0, 0);
    assert_same_tables(&a, &b, "first sync");

    // iptables reads the rules back as its own: -C finds them, as written
    // (iptables 1.8.9 cannot -C its own saved form of a recent match).
    let rules: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SEP-") || l.starts_with("-A KUBE-SVC-"))
        .collect();
    let mut checked = 0;
    for form in ["--set", "--rcheck", "-m statistic", "DNAT", "-s "] {
        let rule = rules
            .iter()
            .find(|l| l.contains(form))
            .unwrap_or_else(|| panic!("no rule with {form}"));
        let command = format!("iptables-nft -t nat -C {}", &rule[3..]);
        let (ok, out) = a.run(&["sh", "-c", &command], "");
        assert!(ok, "{command}: {out}");
        checked += 1;
    }
    assert_eq!(checked, 5);

    // A partial sync: existing chains rewritten (declared again, so flushed)
    // and stale ones deleted.
    let mut changed = state.clone();
    for i in [1, 5, 9] {
        if let Some(slice) = synthetic::endpoint_change(&changed, i, 1) {
            changed.upsert_slice(slice);
        }
    }
    changed.remove_service(&synthetic::service_key(7));
    for s in [&mut netlink, &mut text_only] {
        s.replace_state(changed.clone());
        assert!(!s.sync().unwrap().full);
    }
    assert_same_tables(&a, &b, "partial sync");

    // Restarted syncers, back to the first state: a first sync in pieces
    // over the tables in place (chains declared again, so flushed, and
    // rewritten).
    let (mut netlink, mut text_only) = (
        Syncer::new(exec(&a).with_restore_pieces(Some(4)), synthetic::config()).unwrap(),
        Syncer::new(
            exec(&b)
                .with_restore_pieces(Some(4))
                .with_netlink_rules(false),
            synthetic::config(),
        )
        .unwrap(),
    );
    for s in [&mut netlink, &mut text_only] {
        s.replace_state(state.clone());
        assert!(s.sync().unwrap().full);
    }
    assert!(netlink.executor().restore_counts().0 > 0);
    assert_same_tables(&a, &b, "restart");
}

/// A namespace whose nat table exists (batches need it; iptables makes it),
/// and an executor for it.
fn with_nat(tag: &str) -> (Netns, IptablesRestore) {
    let ns = Netns::new(tag);
    let mut exec = exec(&ns);
    exec.restore(
        IpFamily::Ipv4,
        "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n",
        RestoreOptions::default(),
    )
    .unwrap();
    (ns, exec)
}

/// A piece the encoder writes, which the kernel takes.
const GOOD: &str = "*nat\n:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\n\
    -A KUBE-SVC-AAAAAAAAAAAAAAAA -d 172.30.0.1/32 -j RETURN\nCOMMIT\n";

/// Two pieces the encoder writes, the second jumping to a chain that does not
/// exist: the kernel refuses their batch whole, both go again as text, the
/// first applies, the second fails with iptables' message.
#[test]
fn a_refused_batch_goes_as_text() {
    if !kernel_available("a_refused_batch_goes_as_text") {
        return;
    }
    let (ns, mut exec) = with_nat("xt-refused");
    let good = GOOD;
    let bad = "*nat\n:KUBE-SVC-BBBBBBBBBBBBBBBB - [0:0]\n\
        -A KUBE-SVC-BBBBBBBBBBBBBBBB -j KUBE-SEP-MISSINGMISSINGM\nCOMMIT\n";
    let options = RestoreOptions::default().with_cut(false);
    let failed = exec
        .restore_all(IpFamily::Ipv4, &[good, bad], options)
        .unwrap_err();
    assert_eq!(failed.applied, 1);
    let message = failed.error.to_string();
    assert!(message.contains("KUBE-SEP-MISSINGMISSINGM"), "{message}");
    // One batch tried (refused, not counted), then two restores.
    assert_eq!(exec.restore_counts(), (0, 3));
    let nat = saved(&ns, "nat").join("\n");
    assert!(
        nat.contains("-A KUBE-SVC-AAAAAAAAAAAAAAAA -d 172.30.0.1/32 -j RETURN"),
        "{nat}"
    );
    assert!(!nat.contains("KUBE-SVC-BBBBBBBBBBBBBBBB"), "{nat}");

    // The same good piece again, alone: one batch, nothing as text.
    exec.restore_all(IpFamily::Ipv4, &[good], options).unwrap();
    assert_eq!(exec.restore_counts(), (1, 3));
    assert_eq!(saved(&ns, "nat").join("\n"), nat);
}

/// A batch of 40,000 rules that all jump to a missing chain: the kernel answers
/// each (with a copy of the message), more than the socket's queue holds. Lost
/// answers still mean refused: the piece goes again as text and fails with
/// iptables' message, and the next batch goes as a batch.
#[test]
fn a_refusal_too_long_to_read_is_a_refusal() {
    if !kernel_available("a_refusal_too_long_to_read_is_a_refusal") {
        return;
    }
    let (ns, mut exec) = with_nat("xt-flood");
    let options = RestoreOptions::default().with_cut(false);
    let mut bad = String::from("*nat\n:KUBE-SVC-CCCCCCCCCCCCCCCC - [0:0]\n");
    for i in 0..40_000 {
        bad.push_str(&format!(
            "-A KUBE-SVC-CCCCCCCCCCCCCCCC -m comment --comment \"rule {i}\" \
             -j KUBE-SEP-MISSINGMISSINGM\n"
        ));
    }
    bad.push_str("COMMIT\n");
    let failed = exec
        .restore_all(IpFamily::Ipv4, &[bad.as_str()], options)
        .unwrap_err();
    assert_eq!(failed.applied, 0);
    let message = failed.error.to_string();
    assert!(message.contains("KUBE-SEP-MISSINGMISSINGM"), "{message}");
    assert_eq!(exec.restore_counts(), (0, 2));

    let good = GOOD;
    exec.restore_all(IpFamily::Ipv4, &[good], options).unwrap();
    assert_eq!(exec.restore_counts(), (1, 2));
    let nat = saved(&ns, "nat").join("\n");
    assert!(
        nat.contains("-A KUBE-SVC-AAAAAAAAAAAAAAAA -d 172.30.0.1/32 -j RETURN"),
        "{nat}"
    );
    assert!(!nat.contains("KUBE-SVC-CCCCCCCCCCCCCCCC"), "{nat}");
}
