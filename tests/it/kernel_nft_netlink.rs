//! [`NftNetlink`] in the kernel, in namespaces the tests create: what it
//! writes is what `nft -f` writes for the same transactions (`nft list table`
//! prints the same text), through a whole churn of syncs too; traffic keeps
//! flowing while a resync of 1,000 services goes in pieces of netlink batches;
//! and a refused batch applies nothing and names its operation.

use svcnat::exec::{NftExecutor, NftNetlink, RefusalKind};
use svcnat::nft::wire::AnonNames;
use svcnat::nft::*;
use svcnat::parse::nft::parse_dump;

use crate::kernel::{Netns, nft_available};
use crate::kernel_nft_sync::{churn_through, normalized, traffic_during_resync};
use crate::nft_exec::nft_in;

fn netlink_in(ns: &Netns) -> NftNetlink {
    NftNetlink::in_netns(&ns.name).with_command(nft_in(ns))
}

fn list(ns: &Netns, family: &str) -> String {
    let (ok, out) = ns.run(&["nft", "list", "table", family, "kube-proxy"], "");
    assert!(ok, "nft list table {family} kube-proxy: {out}");
    out
}

#[test]
fn the_dumps_load_as_through_nft() {
    if !nft_available("the_dumps_load_as_through_nft") {
        return;
    }
    for (file, family) in [("dump-v4.nft", "ip"), ("dump-v6.nft", "ip6")] {
        let path = format!("{}/tests/data/nft/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let tx = Transaction::from(&parse_dump(&text).unwrap());
        let by_nft = Netns::new("nkn-nft");
        let (ok, out) = by_nft.run(&["nft", "-f", "-"], &tx.to_text());
        assert!(ok, "{file} through nft: {out}");
        let expected = list(&by_nft, family);
        for names in [AnonNames::Tagged { tag: 1, next: 0 }, AnonNames::Kernel] {
            let ns = Netns::new("nkn-wire");
            let mut exec = netlink_in(&ns).with_anon_names(names.clone());
            exec.run(&tx)
                .unwrap_or_else(|e| panic!("{file} ({names:?}): {e}"));
            assert_eq!(exec.counts(), (1, 0), "one batch, nothing as text");
            assert_eq!(list(&ns, family), expected, "{file} ({names:?})");
        }
    }
}

#[test]
fn netlink_churn_leaves_exactly_what_nft_writes() {
    if !nft_available("netlink_churn_leaves_exactly_what_nft_writes") {
        return;
    }
    churn_through("nkn", netlink_in, |exec: &NftNetlink| {
        let (batches, as_text) = exec.counts();
        assert!(batches > 45, "{batches} batches");
        assert_eq!(as_text, 0, "every transaction went as a batch");
    });
}

#[test]
fn traffic_flows_during_a_netlink_resync_of_1000_services() {
    if !nft_available("traffic_flows_during_a_netlink_resync_of_1000_services") {
        return;
    }
    traffic_during_resync("nkn-flow", netlink_in);
}

#[test]
fn a_refused_batch_applies_nothing_and_names_its_operation() {
    if !nft_available("a_refused_batch_applies_nothing_and_names_its_operation") {
        return;
    }
    let ns = Netns::new("nkn-refused");
    let mut exec = netlink_in(&ns);
    let table = Name::new("kube-proxy").unwrap();
    let (a, b) = (Name::new("a").unwrap(), Name::new("b").unwrap());
    let mut tx = Transaction::new(Family::Ip, table.clone());
    tx.push(Operation::AddTable { comment: None });
    tx.push(Operation::AddChain {
        name: a.clone(),
        base: None,
        comment: None,
    });
    exec.run(&tx).unwrap();

    let mut tx = Transaction::new(Family::Ip, table.clone());
    tx.push(Operation::AddChain {
        name: b.clone(),
        base: None,
        comment: None,
    });
    tx.push(Operation::AddRule {
        chain: b.clone(),
        rule: Rule::new(vec![Stmt::Numgen(vec![Verdict::Goto(a.clone())])]),
    });
    tx.push(Operation::AddRule {
        chain: a.clone(),
        rule: Rule::new(vec![Stmt::Verdict(Verdict::Jump(
            Name::new("missing").unwrap(),
        ))]),
    });
    let refusal = exec.run(&tx).unwrap_err();
    let refusal = refusal.refusal().unwrap_or_else(|| panic!("{refusal}"));
    assert_eq!(refusal.kind, RefusalKind::NotFound, "{refusal}");
    assert_eq!(refusal.index, Some(2), "{refusal}");
    assert_eq!(
        refusal.command.as_deref(),
        Some("add rule ip kube-proxy a jump missing")
    );
    assert_eq!(
        exec.list_chains(Family::Ip, &table).unwrap(),
        vec![a.clone()],
        "nothing of it applied"
    );

    let mut tx = Transaction::new(Family::Ip, table.clone());
    tx.push(Operation::AddChain {
        name: b.clone(),
        base: None,
        comment: None,
    });
    tx.push(Operation::AddRule {
        chain: b.clone(),
        rule: Rule::new(vec![Stmt::Verdict(Verdict::Jump(a.clone()))]),
    });
    exec.run(&tx).unwrap();
    let mut tx = Transaction::new(Family::Ip, table.clone());
    tx.push(Operation::DeleteChain(a.clone()));
    let refusal = exec.run(&tx).unwrap_err();
    assert_eq!(
        refusal.refusal().map(|r| r.kind),
        Some(RefusalKind::Busy),
        "{refusal}"
    );
    assert_eq!(exec.counts(), (4, 0));
}

/// A service of 1,000 endpoints: its `numgen` map is larger than one
/// attribute can hold and goes in several messages; the kernel holds what nft
/// writes.
#[test]
fn a_map_of_1000_endpoints_loads_as_through_nft() {
    if !nft_available("a_map_of_1000_endpoints_loads_as_through_nft") {
        return;
    }
    let table = Name::new("kube-proxy").unwrap();
    let mut tx = Transaction::new(Family::Ip, table);
    tx.push(Operation::AddTable { comment: None });
    let service = Name::new("service-ABCDEFGH-namespace/service/tcp/port").unwrap();
    tx.push(Operation::AddChain {
        name: service.clone(),
        base: None,
        comment: None,
    });
    let mut verdicts = Vec::new();
    for i in 0..1000 {
        let name = format!(
            "endpoint-ABCDEFGH-namespace/service/tcp/port__10.180.{}.{}/8080",
            i / 250,
            1 + i % 250
        );
        let chain = Name::new(name).unwrap();
        tx.push(Operation::AddChain {
            name: chain.clone(),
            base: None,
            comment: None,
        });
        verdicts.push(Verdict::Goto(chain));
    }
    tx.push(Operation::AddRule {
        chain: service,
        rule: Rule::new(vec![Stmt::Numgen(verdicts)]),
    });
    let by_nft = Netns::new("nkn-big-nft");
    let (ok, out) = by_nft.run(&["nft", "-f", "-"], &tx.to_text());
    assert!(ok, "{out}");
    let ns = Netns::new("nkn-big");
    let mut exec = netlink_in(&ns);
    exec.run(&tx).unwrap();
    assert_eq!(exec.counts(), (1, 0), "one batch");
    let listed = list(&ns, "ip");
    assert!(
        listed.matches(": goto endpoint-").count() == 1000,
        "{}",
        &listed[..200]
    );
    assert_eq!(listed, list(&by_nft, "ip"));
}

/// The namespace deleted and made again under the same name: the next
/// transaction lands in the new one, not in the old one its socket was in.
#[test]
fn a_namespace_made_again_gets_the_next_transaction() {
    if !nft_available("a_namespace_made_again_gets_the_next_transaction") {
        return;
    }
    let ns = Netns::new("nkn-again");
    let mut exec = netlink_in(&ns);
    let mut tx = Transaction::new(Family::Ip, Name::new("kube-proxy").unwrap());
    tx.push(Operation::AddTable { comment: None });
    exec.run(&tx).unwrap();
    assert!(
        ns.run(&["nft", "list", "tables"], "")
            .1
            .contains("kube-proxy")
    );
    for args in [["netns", "del", &ns.name], ["netns", "add", &ns.name]] {
        let status = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ip {args:?}");
    }
    assert_eq!(
        ns.run(&["nft", "list", "tables"], "").1,
        "",
        "a new, empty namespace"
    );
    exec.run(&tx).unwrap();
    assert_eq!(
        ns.run(&["nft", "list", "tables"], "").1,
        "table ip kube-proxy\n"
    );
}

/// `check` answers as `nft --check` does and applies nothing, whatever it is
/// asked.
#[test]
fn check_says_what_would_apply_and_applies_nothing() {
    if !nft_available("check_says_what_would_apply_and_applies_nothing") {
        return;
    }
    let ns = Netns::new("nkn-check");
    let mut exec = netlink_in(&ns);
    let table = Name::new("kube-proxy").unwrap();
    let (a, b) = (Name::new("a").unwrap(), Name::new("b").unwrap());
    let tx = |ops: Vec<Operation>| {
        let mut tx = Transaction::new(Family::Ip, table.clone());
        ops.into_iter().for_each(|op| tx.push(op));
        tx
    };
    let add = |name: &Name| Operation::AddChain {
        name: name.clone(),
        base: None,
        comment: None,
    };
    let jump = |from: &Name, to: &Name| Operation::AddRule {
        chain: from.clone(),
        rule: Rule::new(vec![Stmt::Numgen(vec![Verdict::Jump(to.clone())])]),
    };
    // Into an empty namespace: it would apply, and nothing is there after.
    let create = tx(vec![
        Operation::AddTable { comment: None },
        add(&a),
        add(&b),
        jump(&b, &a),
    ]);
    exec.check(&create).unwrap();
    assert_eq!(
        ns.run(&["nft", "list", "tables"], "").1,
        "",
        "nothing applied"
    );
    let missing = exec
        .check(&tx(vec![Operation::DeleteChain(a.clone())]))
        .unwrap_err();
    assert_eq!(
        missing.refusal().map(|r| r.kind),
        Some(RefusalKind::NotFound),
        "{missing}"
    );
    exec.run(&create).unwrap();
    let before = list(&ns, "ip");
    // A deletion the kernel refuses while b jumps to a: Busy, at its line.
    let busy = exec
        .check(&tx(vec![add(&b), Operation::DeleteChain(a.clone())]))
        .unwrap_err();
    let busy = busy.refusal().unwrap_or_else(|| panic!("{busy}"));
    assert_eq!(
        (busy.kind, busy.index),
        (RefusalKind::Busy, Some(1)),
        "{busy}"
    );
    // After a flush the same deletion would apply; the check applies nothing.
    exec.check(&tx(vec![
        Operation::FlushChain(b.clone()),
        Operation::DeleteChain(a.clone()),
    ]))
    .unwrap();
    assert_eq!(list(&ns, "ip"), before, "nothing applied");
    assert_eq!(exec.counts(), (1, 0), "checks are not counted as runs");
}

/// The drift check through netlink finds a table flushed or deleted behind
/// the syncer's back, and the full sync it causes repairs it.
#[test]
fn drift_is_found_and_repaired_through_netlink() {
    if !nft_available("drift_is_found_and_repaired_through_netlink") {
        return;
    }
    use std::time::{Duration, Instant};
    use svcnat::sync::{FullReason, NftSyncer};
    let (state, config) = crate::nft_sync::small();
    for (how, tamper) in [
        ("flushed", "flush table ip kube-proxy"),
        ("deleted", "delete table ip kube-proxy"),
    ] {
        let ns = Netns::new("nkn-drift");
        let mut syncer = NftSyncer::new(netlink_in(&ns), config.clone())
            .unwrap()
            .with_drift_check(Some(Duration::from_secs(30)));
        syncer.replace_state(state.clone());
        let mut now = Instant::now();
        assert!(syncer.sync_at(now).unwrap().full);
        let whole = normalized(&list(&ns, "ip"));
        now += Duration::from_secs(31);
        let report = syncer.sync_at(now).unwrap();
        assert_eq!(
            (report.full, report.drifted.as_deref()),
            (false, None),
            "{how}: {report}"
        );
        let (ok, out) = ns.run(&["nft", tamper], "");
        assert!(ok, "{out}");
        now += Duration::from_secs(31);
        let report = syncer.sync_at(now).unwrap();
        assert_eq!(
            report.full_reason,
            Some(FullReason::Drift),
            "{how}: {report}"
        );
        // Base chains are made again: nft lists them in another order.
        assert_eq!(normalized(&list(&ns, "ip")), whole, "{how}: repaired");
        let (batches, as_text) = syncer.executor().counts();
        assert!(
            batches >= 2 && as_text == 0,
            "{how}: {batches} batches, {as_text} as text"
        );
    }
}

/// Chains, sets and maps listed by netlink dumps are `nft`'s listings, in a
/// namespace with tables of both families and another name; a missing table
/// lists nothing.
#[test]
fn listings_are_nfts() {
    if !nft_available("listings_are_nfts") {
        return;
    }
    let ns = Netns::new("nkn-list");
    for file in ["dump-v4.nft", "dump-v6.nft"] {
        let path = format!("{}/tests/data/nft/{file}", env!("CARGO_MANIFEST_DIR"));
        let (ok, out) = ns.run(&["nft", "-f", &path], "");
        assert!(ok, "{file}: {out}");
    }
    let (ok, out) = ns.run(
        &["nft", "-f", "-"],
        "table ip other {\n\tset s {\n\t\ttype ipv4_addr\n\t}\n\tchain c {\n\t}\n}\n",
    );
    assert!(ok, "{out}");
    let mut exec = netlink_in(&ns);
    let mut nft = nft_in(&ns);
    let kube = Name::new("kube-proxy").unwrap();
    let missing = Name::new("missing").unwrap();
    for family in [Family::Ip, Family::Ip6] {
        for table in [&kube, &missing, &Name::new("other").unwrap()] {
            let chains = exec.list_chains(family, table).unwrap();
            assert_eq!(
                chains,
                nft.list_chains(family, table).unwrap(),
                "{family:?} {table}"
            );
            let sets = exec.list_sets(family, table).unwrap();
            assert_eq!(
                sets,
                nft.list_sets(family, table).unwrap(),
                "{family:?} {table}"
            );
            let maps = exec.list_maps(family, table).unwrap();
            assert_eq!(
                maps,
                nft.list_maps(family, table).unwrap(),
                "{family:?} {table}"
            );
            if *table == kube {
                assert!(chains.len() > 10 && !sets.is_empty() && !maps.is_empty());
            }
            if *table == missing {
                assert!(chains.is_empty() && sets.is_empty() && maps.is_empty());
            }
        }
    }
    // The anonymous sets of the dump's rules are not listed.
    assert!(
        exec.list_sets(Family::Ip, &kube)
            .unwrap()
            .iter()
            .all(|s| !s.as_str().starts_with("__"))
    );
}
