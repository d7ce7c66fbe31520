//! The parser: svcnat's own text round-trips exactly; real `iptables-save` dumps
//! (the corpus under `tests/data/dumps/`, and rules read back from the kernel)
//! load, keep what svcnat does not model verbatim, and canonicalise to what was
//! compiled.

use std::net::IpAddr;

use proptest::prelude::*;
use svcnat::compile::{compile, jump_rules};
use svcnat::model::*;
use svcnat::parse::{ErrorKind, Op, canonicalize, parse, parse_as, parse_restore};
use svcnat::render::to_string;
use svcnat::ruleset::{Match, Ruleset, Table, Target};
use svcnat::trace::{Node, Packet, Verdict, trace};

use crate::fixtures::{config, filter_input, ip, verdict};
use crate::kernel::{Netns, kernel_available};

const DUMPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dumps");

/// A cluster that uses every kind of rule the compiler writes: several endpoints
/// with session affinity, a node port, a service without endpoints, UDP and SCTP,
/// a load balancer with source ranges and an external IP under
/// `externalTrafficPolicy: Local`.
pub fn rich_state(family: IpFamily) -> ClusterState {
    let v6 = family == IpFamily::Ipv6;
    let a = |v4: &str, v6s: &str| -> IpAddr { if v6 { ip(v6s) } else { ip(v4) } };
    let mut state = ClusterState::new();
    let mut slice = |ns: &str, svc: &str, ports: &[(&str, Protocol, u16)], eps: Vec<Endpoint>| {
        let mut s = EndpointSlice::new(ns, svc, format!("{svc}-1"), family);
        for (name, proto, port) in ports {
            s = s.with_port(EndpointPort {
                name: (*name).to_owned(),
                protocol: *proto,
                port: *port,
            });
        }
        s.endpoints = eps;
        state.upsert_slice(s);
    };
    let ep = |v4: &str, v6s: &str| Endpoint::ready(a(v4, v6s));
    slice(
        "ns1",
        "svc1",
        &[("p80", Protocol::Tcp, 8080)],
        vec![
            ep("10.180.0.1", "fd00:10::1"),
            ep("10.180.0.2", "fd00:10::2"),
            ep("10.180.1.3", "fd00:10::103"),
        ],
    );
    slice(
        "ns2",
        "svc2",
        &[("dns", Protocol::Udp, 53), ("sctp", Protocol::Sctp, 9999)],
        vec![ep("10.180.0.5", "fd00:10::5")],
    );
    slice(
        "ns4",
        "lb",
        &[("http", Protocol::Tcp, 8080)],
        vec![
            ep("10.180.0.7", "fd00:10::7").on_node(crate::fixtures::NODE),
            ep("10.180.2.7", "fd00:10::207").on_node("other"),
        ],
    );
    let mut svc1 = Service::cluster_ip("ns1", "svc1", a("172.30.0.41", "fd00:172:30::41"))
        .with_port(ServicePort::tcp("p80", 80));
    svc1.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 10800,
    };
    state.upsert_service(svc1);
    state.upsert_service(
        Service::cluster_ip("ns2", "svc2", a("172.30.0.42", "fd00:172:30::42"))
            .with_type(ServiceType::NodePort)
            .with_port(
                ServicePort::tcp("dns", 53)
                    .with_protocol(Protocol::Udp)
                    .with_node_port(30053),
            )
            .with_port(ServicePort::tcp("sctp", 9999).with_protocol(Protocol::Sctp)),
    );
    state.upsert_service(
        Service::cluster_ip("ns3", "empty", a("172.30.0.43", "fd00:172:30::43"))
            .with_type(ServiceType::NodePort)
            .with_port(ServicePort::tcp("http", 80).with_node_port(30080)),
    );
    let mut lb = Service::cluster_ip("ns4", "lb", a("172.30.0.44", "fd00:172:30::44"))
        .with_type(ServiceType::LoadBalancer)
        .with_port(ServicePort::tcp("http", 80).with_node_port(30044));
    lb.external_traffic_policy = TrafficPolicy::Local;
    lb.health_check_node_port = Some(30000);
    lb.external_ips = vec![a("192.168.99.22", "2001:db8:99::22")];
    lb.load_balancer_ingress = vec![LoadBalancerIngress {
        ip: a("1.2.3.4", "2001:db8:1234::4"),
        ip_mode: IpMode::Vip,
    }];
    lb.load_balancer_source_ranges = vec![if v6 {
        "2001:db8:203::/64".parse().unwrap()
    } else {
        "203.0.113.0/25".parse().unwrap()
    }];
    state.upsert_service(lb);
    state
}

/// The test config for a family.
pub fn family_config(family: IpFamily) -> ProxyConfig {
    match family {
        IpFamily::Ipv4 => config(),
        IpFamily::Ipv6 => config()
            .with_ip_family(IpFamily::Ipv6)
            .with_node_ips([ip("2001:db8::2"), ip("::1")])
            .with_cluster_cidrs(["fd00:10::/64".parse().unwrap()]),
    }
}

/// Config variants that change rule syntax.
fn variants(family: IpFamily) -> Vec<ProxyConfig> {
    let base = family_config(family);
    vec![
        base.clone(),
        base.clone()
            .with_masquerade_all(true)
            .with_masquerade_random_fully(true)
            .with_nfacct_counters(true),
        base.clone().with_comments(false),
        base.clone()
            .with_local_traffic(LocalTrafficDetector::BridgeInterface("cbr0".into()))
            .with_localhost_nodeports(false),
        base.clone()
            .with_local_traffic(LocalTrafficDetector::InterfaceNamePrefix("veth".into()))
            .with_nodeport_addresses([NodePortAddress::Primary]),
    ]
}

fn assert_round_trip(ruleset: &Ruleset) {
    let text = to_string(ruleset);
    let parsed =
        parse_as(&text, ruleset.family).unwrap_or_else(|e| panic!("{e}\n--- text ---\n{text}"));
    assert_eq!(&parsed, ruleset, "parse(render(r)) != r for\n{text}");
    assert_eq!(to_string(&parsed), text, "render(parse(t)) != t");
    // Inferring the family gives the same.
    assert_eq!(parse(&text).unwrap().family, ruleset.family);
}

#[test]
fn compiled_text_round_trips_exactly() {
    for family in [IpFamily::Ipv4, IpFamily::Ipv6] {
        for config in variants(family) {
            let ruleset = compile(&rich_state(family), &config).unwrap();
            assert_round_trip(&ruleset);
            // The fast path writes the same bytes as rendering the ruleset.
            crate::fixtures::render(&rich_state(family), &config);
            // With the built-in chains and jump rules too.
            let traceable = svcnat::trace::traceable(&ruleset, &jump_rules(&config).unwrap());
            assert_round_trip(&traceable);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random clusters -> compile -> render -> parse gives the same ruleset, and
    /// rendering that gives the same bytes.
    #[test]
    fn random_clusters_round_trip(parts in crate::properties::cluster(), all in any::<bool>()) {
        let state = crate::properties::state_of(&parts);
        let config = config().with_masquerade_all(all);
        let ruleset = compile(&state, &config).unwrap();
        let text = to_string(&ruleset);
        let parsed = parse(&text).unwrap();
        prop_assert_eq!(&parsed, &ruleset);
        prop_assert_eq!(to_string(&parsed), text);
        // Canonical form is a fixed point and leaves compiled rules' meaning alone.
        let canonical = canonicalize(&ruleset);
        prop_assert_eq!(canonicalize(&canonical), canonical);
    }
}

fn corpus() -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(DUMPS)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "save"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_dump_in_the_corpus_parses() {
    let files = corpus();
    assert!(files.len() >= 4, "corpus missing: {files:?}");
    for (name, text) in &files {
        let ruleset = parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(ruleset.rule_count() > 0, "{name}");
        let expect_v6 = name.contains("v6");
        assert_eq!(ruleset.family == IpFamily::Ipv6, expect_v6, "{name}");
        // Rendering what was read and reading it again means the same: only
        // quoting, recent's restated defaults and the 11th decimal of a
        // probability are lost.
        let again = parse(&to_string(&ruleset)).unwrap();
        assert_eq!(
            rules_text(&canonicalize(&again)),
            rules_text(&canonicalize(&ruleset)),
            "{name}: parse(render(parse(t))) means something else"
        );
    }
}

fn rules_text(ruleset: &Ruleset) -> Vec<String> {
    ruleset
        .tables
        .iter()
        .flat_map(|t| {
            t.chains.values().flat_map(move |c| {
                c.rules
                    .iter()
                    .map(move |r| format!("{} -A {} {r}", t.table, c.name))
            })
        })
        .collect()
}

#[test]
fn a_mixed_node_keeps_what_svcnat_does_not_model_verbatim() {
    let text = std::fs::read_to_string(format!("{DUMPS}/node-mixed-v4.save")).unwrap();
    let ruleset = parse(&text).unwrap();
    let lines = rules_text(&ruleset);
    let has = |needle: &str| {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "no rule contains {needle:?}:\n{}",
            lines.join("\n")
        )
    };
    // Docker.
    has("filter -A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT");
    has(
        "filter -A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT",
    );
    has("nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE");
    has(
        "nat -A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80",
    );
    // Calico: sets, marks, multiport, unknown modules and targets verbatim.
    has("-m set --match-set cali40masq-ipam-pools src");
    has("-m set ! --match-set cali40all-ipam-pools dst");
    has("-m mark --mark 0x10000/0x10000");
    has("-m multiport --dports 179,2379:2380");
    has("-m physdev --physdev-is-bridged");
    has("-m limit --limit 5/min --limit-burst 10");
    has("-j LOG --log-prefix \"calico-drop: \" --log-level 4");
    has("-m conntrack --ctstate INVALID");
    has("-j MARK --set-xmark 0x0/0xf0000");
    has("-g cali-wl-to-host");
    has("-m rpfilter --validmark --invert");
    has("-m hashlimit --hashlimit-upto 50/sec");
    // The typed pieces are typed.
    let fwd = ruleset.chain(Table::Filter, "cali-FORWARD").unwrap();
    assert!(
        fwd.rules
            .iter()
            .any(|r| r.matches().iter().any(|m| matches!(m, Match::Mark(_))))
    );
    let others: Vec<String> = ruleset
        .tables
        .iter()
        .flat_map(|t| t.chains.values())
        .flat_map(|c| &c.rules)
        .flat_map(|r| r.matches())
        .filter_map(|m| match m {
            Match::Other(raw) => Some(raw.to_string()),
            _ => None,
        })
        .collect();
    assert!(
        others.contains(&"-m limit --limit 5/min --limit-burst 10".to_owned()),
        "{others:?}"
    );
    assert!(
        ruleset
            .tables
            .iter()
            .flat_map(|t| t.chains.values())
            .flat_map(|c| &c.rules)
            .any(|r| matches!(&r.target, Some(Target::Other(raw)) if raw.as_str().starts_with("-j LOG")))
    );
}

#[test]
fn saved_kube_proxy_dumps_canonicalise_to_the_compiled_rules() {
    // The corpus dumps were made by `regenerate_dumps` from rich_state() with
    // the first variant's config: they must still describe what svcnat compiles.
    for (name, family) in [
        ("kube-proxy-v4-nft.save", IpFamily::Ipv4),
        ("kube-proxy-v4-legacy.save", IpFamily::Ipv4),
        ("kube-proxy-v6-nft.save", IpFamily::Ipv6),
        ("kube-proxy-v6-legacy.save", IpFamily::Ipv6),
    ] {
        let text = std::fs::read_to_string(format!("{DUMPS}/{name}")).unwrap();
        let saved = parse(&text).unwrap();
        assert_eq!(saved.family, family);
        let config = family_config(family);
        let compiled = svcnat::trace::traceable(
            &compile(&rich_state(family), &config).unwrap(),
            &jump_rules(&config).unwrap(),
        );
        compare_canonical(&compiled, &saved, name);
    }
}

/// Compares the KUBE-* chains and the built-in chains' KUBE jump rules of two
/// rulesets in canonical form.
fn compare_canonical(compiled: &Ruleset, saved: &Ruleset, what: &str) {
    let (a, b) = (canonicalize(compiled), canonicalize(saved));
    for table in [Table::Filter, Table::Nat] {
        let ta = a.table(table).unwrap();
        let tb = b.table(table).unwrap();
        for (name, chain) in &ta.chains {
            let other = tb
                .chain(name.as_str())
                .unwrap_or_else(|| panic!("{what}: {table} {name} missing after save"));
            if name.as_str().starts_with("KUBE-") {
                assert_eq!(
                    chain.rules,
                    other.rules,
                    "{what}: {table} {name} differs:\ncompiled:\n{}\nsaved:\n{}",
                    chain
                        .rules
                        .iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                    other
                        .rules
                        .iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
            } else {
                // Built-in chains: the saved one holds our jump rules, in order.
                let ours: Vec<_> = other
                    .rules
                    .iter()
                    .filter(|r| {
                        r.jump_target()
                            .is_some_and(|t| t.as_str().starts_with("KUBE-"))
                    })
                    .cloned()
                    .collect();
                assert_eq!(chain.rules, ours, "{what}: {table} {name} jump rules");
            }
        }
        let kube = |t: &svcnat::ruleset::TableRules| {
            t.chains
                .keys()
                .filter(|n| n.as_str().starts_with("KUBE-"))
                .count()
        };
        assert_eq!(kube(ta), kube(tb), "{what}: {table} KUBE-* chain count");
    }
}

fn restore_and_save(ns: &Netns, ruleset: &Ruleset, backend: &str) -> String {
    let tool = match ruleset.family {
        IpFamily::Ipv4 => "iptables",
        IpFamily::Ipv6 => "ip6tables",
    };
    let text = to_string(ruleset);
    let (ok, out) = ns.run(&[&format!("{tool}-{backend}-restore")], &text);
    assert!(ok, "{tool}-{backend}-restore refused:\n{out}\n{text}");
    let (ok, saved) = ns.run(&[&format!("{tool}-{backend}-save")], "");
    assert!(ok, "{tool}-{backend}-save: {saved}");
    saved
}

#[test]
fn kernel_round_trip_through_iptables_save() {
    if !kernel_available("kernel_round_trip_through_iptables_save") {
        return;
    }
    for family in [IpFamily::Ipv4, IpFamily::Ipv6] {
        // nfacct objects do not exist in a fresh namespace: leave those matches out.
        for config in variants(family)
            .into_iter()
            .map(|c| c.with_nfacct_counters(false))
        {
            let compiled = svcnat::trace::traceable(
                &compile(&rich_state(family), &config).unwrap(),
                &jump_rules(&config).unwrap(),
            );
            for backend in ["nft", "legacy"] {
                let ns = Netns::new(&format!("parse-{backend}"));
                let saved = restore_and_save(&ns, &compiled, backend);
                let parsed = parse(&saved).unwrap_or_else(|e| panic!("{e}\n{saved}"));
                assert_eq!(parsed.family, family);
                compare_canonical(&compiled, &parsed, &format!("{family} {backend}"));
            }
        }
    }
}

/// Writes the kube-proxy dumps of the corpus from the kernel:
/// `cargo test --all-features --test it regenerate_dumps -- --ignored`.
#[test]
#[ignore = "writes tests/data/dumps; run by hand"]
fn regenerate_dumps() {
    assert!(kernel_available("regenerate_dumps"));
    for family in [IpFamily::Ipv4, IpFamily::Ipv6] {
        let config = family_config(family);
        let compiled = svcnat::trace::traceable(
            &compile(&rich_state(family), &config).unwrap(),
            &jump_rules(&config).unwrap(),
        );
        for backend in ["nft", "legacy"] {
            let ns = Netns::new(&format!("dump-{backend}"));
            let saved = restore_and_save(&ns, &compiled, backend);
            // The header and footer carry the date: drop them for stable files.
            let saved: String = saved
                .lines()
                .filter(|l| !l.starts_with("# "))
                .map(|l| format!("{l}\n"))
                .collect();
            let v = if family == IpFamily::Ipv4 { "v4" } else { "v6" };
            std::fs::write(format!("{DUMPS}/kube-proxy-{v}-{backend}.save"), saved).unwrap();
        }
    }
}

fn error_of(text: &str) -> svcnat::parse::ParseError {
    parse(text).expect_err("must not parse")
}

#[test]
fn syntax_errors_name_line_column_and_text() {
    let e =
        error_of("*nat\n:KUBE-X - [0:0]\n-A KUBE-X -m tcp -p tcp --dport http -j ACCEPT\nCOMMIT\n");
    assert_eq!((e.line, e.column), (3, 33));
    assert_eq!(e.text, "-A KUBE-X -m tcp -p tcp --dport http -j ACCEPT");
    assert!(matches!(e.kind, ErrorKind::BadValue { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("line 3, column 33: --dport \"http\""),
        "{e}"
    );

    let e = error_of("*nat\n-A KUBE-X -m comment --comment \"open\nCOMMIT\n");
    assert_eq!(
        (e.line, e.column, &e.kind),
        (2, 32, &ErrorKind::UnterminatedQuote)
    );

    let e = error_of("-A KUBE-X -j ACCEPT\n");
    assert_eq!((e.line, e.kind), (1, ErrorKind::OutsideTable));

    let e = error_of("*nat\n:KUBE-X - [0:0]\n");
    assert!(
        matches!(e.kind, ErrorKind::MissingCommit(Table::Nat)),
        "{e}"
    );

    let e = error_of("*broken\nCOMMIT\n");
    assert_eq!(e.kind, ErrorKind::UnknownTable("broken".into()));

    let e = error_of("*nat\n:X - [0:0]\n-A X --dport 80 -j ACCEPT\nCOMMIT\n");
    assert_eq!(
        (e.column, &e.kind),
        (6, &ErrorKind::UnknownOption("--dport".into()))
    );

    let e = error_of("*nat\n:X - [0:0]\n-A X -s 10.0.0.1 -d fd00::1 -j ACCEPT\nCOMMIT\n");
    assert!(matches!(e.kind, ErrorKind::FamilyMismatch { .. }), "{e}");

    let e = error_of("*nat\n:X - [0:0]\n-A X ! ! -s 10.0.0.1 -j ACCEPT\nCOMMIT\n");
    assert_eq!(e.kind, ErrorKind::DoubleNegation);

    let e = error_of("*nat\n-A NOT-DECLARED -j ACCEPT\nCOMMIT\n");
    assert_eq!(
        (e.line, &e.kind),
        (2, &ErrorKind::UndeclaredChain("NOT-DECLARED".into()))
    );

    let e = error_of("*nat\n:THIS-CHAIN-NAME-IS-FAR-TOO-LONG-FOR-IPTABLES - [0:0]\nCOMMIT\n");
    assert!(matches!(e.kind, ErrorKind::Invalid(_)), "{e}");

    let e = error_of("*filter\n:X - [0:0]\n-A X -s 10.0.0.1 -j\nCOMMIT\n");
    assert!(matches!(e.kind, ErrorKind::MissingArgument { .. }), "{e}");

    let e = error_of("*filter\n:X - [0:0]\n-Q X\nCOMMIT\n");
    assert_eq!(e.kind, ErrorKind::UnknownCommand("-Q".into()));
}

#[test]
fn arbitrary_text_never_panics() {
    // A few hostile shapes; the proptest below covers random text.
    for text in [
        "",
        "*",
        "*nat\n:",
        "*nat\n: - [0:0]\nCOMMIT\n",
        "*nat\n-A\nCOMMIT\n",
        "*nat\n:X - [0:0]\n-A X !\nCOMMIT\n",
        "*nat\n:X - [0:0]\n-A X -m\nCOMMIT\n",
        "*nat\n:X - [0:0]\n-A X -m statistic --mode random --probability 7 -j X\nCOMMIT\n",
        "*nat\n:X - [0:0]\n[1:2]\nCOMMIT\n",
        "*nat\n:X - [0:0]\n-I X 0 -j ACCEPT\nCOMMIT\n",
        "*nat\n:X - [0:0]\n-D X 3\nCOMMIT\n",
        "*nat\n:X - [0:0]\n-A X -m mark --mark 0x1/zz\nCOMMIT\n",
    ] {
        let _ = parse(text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_lines_never_panic(lines in prop::collection::vec(
        prop_oneof![
            Just("*nat".to_owned()), Just("*filter".to_owned()), Just("COMMIT".to_owned()),
            Just(":KUBE-X - [0:0]".to_owned()),
            "-A KUBE-X( (!|-s|-d|-p|-m|-j|-g|--dport|tcp|comment|--comment|\"a b|mark|--mark|0x1/0x1|10\\.0\\.0\\.1|::1|statistic|--probability|0\\.5|DNAT|--to-destination|KUBE-X|\\[1:2\\]|-i|eth0\\+|multiport|--dports|1:2,3)){0,8}",
            "\\PC{0,40}",
        ], 0..8)) {
        let _ = parse(&lines.join("\n"));
    }
}

#[test]
fn restore_payload_operations_are_kept_and_applied() {
    let text = "*nat\n\
        :KUBE-SERVICES - [0:0]\n\
        :KUBE-SEP-STALE - [0:0]\n\
        :KUBE-SVC-A - [0:0]\n\
        -A KUBE-SERVICES -j KUBE-SVC-A\n\
        -X KUBE-SEP-STALE\n\
        -I KUBE-SERVICES -j RETURN\n\
        -I KUBE-SERVICES 2 -j ACCEPT\n\
        -N KUBE-NEW\n\
        -D KUBE-SERVICES -j ACCEPT\n\
        [5:300] -A KUBE-SVC-A -j KUBE-NEW\n\
        COMMIT\n";
    let payload = parse_restore(text).unwrap();
    let ops: Vec<&Op> = payload.tables[0].ops.iter().map(|o| &o.op).collect();
    assert!(matches!(ops[4], Op::DeleteChain(Some(c)) if c.as_str() == "KUBE-SEP-STALE"));
    assert_eq!(payload.tables[0].ops[4].line, 6);
    assert_eq!(ops[4].to_string(), "-X KUBE-SEP-STALE");
    let ruleset = payload.to_ruleset().unwrap();
    let nat = ruleset.table(Table::Nat).unwrap();
    let names: Vec<&str> = nat.chains.keys().map(|c| c.as_str()).collect();
    assert_eq!(names, ["KUBE-SERVICES", "KUBE-SVC-A", "KUBE-NEW"]);
    let services: Vec<String> = nat.chains[0].rules.iter().map(|r| r.to_string()).collect();
    assert_eq!(services, ["-j RETURN", "-j KUBE-SVC-A"]);
    // -X of a chain that is not there is an error at its line.
    let e = parse("*nat\n-X KUBE-GONE\nCOMMIT\n").unwrap_err();
    assert_eq!(
        (e.line, e.kind),
        (2, ErrorKind::UndeclaredChain("KUBE-GONE".into()))
    );
}

// A parse error is one line: where, what, and the offending line quoted (its
// control characters escaped, so none can break the line).
#[test]
fn parse_errors_display_on_one_line() {
    let e =
        error_of("*nat\n:KUBE-X - [0:0]\n-A KUBE-X -m tcp -p tcp --dport http -j ACCEPT\nCOMMIT\n");
    assert_eq!(
        e.to_string(),
        "line 3, column 33: --dport \"http\": not a port number or range, \
         in \"-A KUBE-X -m tcp -p tcp --dport http -j ACCEPT\""
    );
    let e = error_of("*nat\nbogus\rline \"x\"\nCOMMIT\n");
    let shown = e.to_string();
    assert_eq!(shown.lines().count(), 1, "{shown}");
    assert!(shown.ends_with(r#", in "bogus\rline \"x\"""#), "{shown}");
}

// `iptables -m comment --comment` stores bytes as given, and iptables-save
// prints them back: a dump that is not UTF-8 still reads, each invalid
// sequence as U+FFFD, and the comment prints back verbatim, one rule still.
#[test]
fn a_dump_with_non_utf8_bytes_in_a_comment_reads() {
    let mut dump = b"*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment \"caf".to_vec();
    dump.extend([0xe9, b' ', 0xff, 0xfe]);
    dump.extend(b"\" -j ACCEPT\n-A INPUT -m comment --comment \xc3 -j DROP\nCOMMIT\n");
    assert!(std::str::from_utf8(&dump).is_err());
    let r = svcnat::parse::parse_bytes(&dump).unwrap();
    let rules = &r.chain(Table::Filter, "INPUT").unwrap().rules;
    let shown: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        shown,
        [
            "-m comment --comment \"caf\u{fffd} \u{fffd}\u{fffd}\" -j ACCEPT",
            "-m comment --comment \u{fffd} -j DROP",
        ]
    );
    let rendered = svcnat::render::to_string(&r);
    assert_eq!(rendered.lines().filter(|l| l.starts_with("-A")).count(), 2);
    assert_eq!(svcnat::parse::parse(&rendered).unwrap(), r);
    let r6 = svcnat::parse::parse_bytes_as(&dump, IpFamily::Ipv6).unwrap();
    assert_eq!(r6.family, IpFamily::Ipv6);
    // Valid UTF-8 reads as the text does.
    let text = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m comment --comment \"naïve\" -j ACCEPT\nCOMMIT\n";
    assert_eq!(
        svcnat::parse::parse_bytes(text.as_bytes()).unwrap(),
        svcnat::parse::parse(text).unwrap()
    );
}

// ---- Restore input as iptables reads it: quoting, flags, odd values. ----

// `-f` is a core option (iptables-save prints it for fragment rules, common in
// hardening scripts); `-4`/`-6` are valid in restore input.
#[test]
fn fragment_and_family_flags_parse() {
    for rule in [
        "-f -j DROP",
        "! -f -j ACCEPT",
        "-4 -s 10.0.0.1/32 -j ACCEPT",
        "-6 -j ACCEPT",
    ] {
        let text = format!("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT {rule}\nCOMMIT\n");
        assert!(parse(&text).is_ok(), "{rule}: {:?}", parse(&text));
    }
}

// iptables accepts `--probability 0` and iptables-save prints it back as
// `0.00000000000`; the whole dump must still load.
#[test]
fn a_zero_probability_parses() {
    let text = "*nat\n:PREROUTING ACCEPT [0:0]\n\
        -A PREROUTING -m statistic --mode random --probability 0.00000000000 -j ACCEPT\nCOMMIT\n";
    assert!(parse(text).is_ok(), "{:?}", parse(text));
}

// A comment that starts with '-' is printed unquoted by iptables-save
// (all its characters are in iptables' no-quote set) and by svcnat's Comment.
#[test]
fn a_comment_starting_with_a_dash_round_trips() {
    let text = "*filter\n:INPUT ACCEPT [0:0]\n\
        -A INPUT -m comment --comment \"-x\" -j ACCEPT\nCOMMIT\n";
    let r = parse(text).unwrap();
    let again = parse(&svcnat::render::to_string(&r)).unwrap();
    assert_eq!(again, r);
}

// iptables-restore does not group with single quotes: `it's` is one word.
#[test]
fn a_single_quote_is_an_ordinary_character() {
    let text =
        filter_input("-A INPUT -p tcp -m tcp --dport 22 -m comment --comment it's -j ACCEPT\n");
    let r = parse(&text).unwrap();
    let rule = &r.chain(Table::Filter, "INPUT").unwrap().rules[0];
    assert!(
        rule.matches().iter().any(
            |m| matches!(m, Match::OtherComment(raw) if raw.as_str() == "-m comment --comment it's")
        ),
        "{rule:?}"
    );
    let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 22);
    assert_eq!(verdict(&r, &p), Verdict::Accept);
}

// A comment Comment refuses is kept as written, escapes included, and prints back
// the same.
#[test]
fn escaped_comments_render_back_verbatim() {
    let line =
        "-A INPUT -p tcp -m tcp --dport 22 -m comment --comment \"\\'dapp_OpenSSH\\'\" -j ACCEPT";
    let r = parse(&filter_input(&format!("{line}\n"))).unwrap();
    let text = svcnat::render::to_string(&r);
    assert!(text.contains(line), "{text}");
    assert_eq!(parse(&text).unwrap(), r);
}

// A quoted word is a value even when it looks like an option or `!`; an
// unquoted one after `--comment` is the comment too, as getopt takes it.
#[test]
fn comments_that_look_like_options_are_comments() {
    for comment in ["\"-j\"", "\"!\"", "\"-x y\"", "-x", "--dport"] {
        let text = filter_input(&format!(
            "-A INPUT -p tcp -m comment --comment {comment} -m tcp --dport 22 -j ACCEPT\n"
        ));
        let r = parse(&text).unwrap_or_else(|e| panic!("{comment}: {e}"));
        let rule = &r.chain(Table::Filter, "INPUT").unwrap().rules[0];
        assert!(
            rule.matches()
                .iter()
                .any(|m| matches!(m, Match::OtherComment(raw) if raw.as_str().ends_with(comment))),
            "{comment}: {rule:?}"
        );
        assert_eq!(rule.target, Some(Target::Accept), "{comment}");
        let again = parse(&svcnat::render::to_string(&r)).unwrap();
        assert_eq!(again, r, "{comment}");
        let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 22);
        assert_eq!(verdict(&r, &p), Verdict::Accept, "{comment}");
    }
    let e = parse(&filter_input("-A INPUT -m comment --comment\n")).unwrap_err();
    assert!(
        matches!(e.kind, svcnat::parse::ErrorKind::MissingArgument { .. }),
        "{e}"
    );
    // The IR refuses what would print as an option or a negation.
    assert!(svcnat::ruleset::Comment::new("-x").is_err());
    assert!(svcnat::ruleset::Comment::new("!x").is_err());
    assert!(svcnat::ruleset::Comment::new("ns1/svc1:p80").is_ok());
}

// A comment joined from parts is validated as a whole, inline or on the heap, and
// equals the same text made in one piece.
#[test]
fn comments_from_parts_are_checked_whole() {
    use svcnat::ruleset::Comment;
    let short = Comment::from_parts(&["ns1/svc1:p80", " -> ", "10.0.0.1:80"]).unwrap();
    assert_eq!(short, Comment::new("ns1/svc1:p80 -> 10.0.0.1:80").unwrap());
    let long_text = format!("{} -> 10.0.0.1:80", "a".repeat(100));
    let long = Comment::from_parts(&[&"a".repeat(100), " -> 10.0.0.1:80"]).unwrap();
    assert_eq!(long.as_str(), long_text);
    assert_eq!(long, Comment::new(long_text).unwrap());
    assert!(Comment::from_parts(&["x", "\" -j ACCEPT"]).is_err());
    assert!(Comment::from_parts(&["-", "x"]).is_err());
    assert!(Comment::from_parts(&[&"a".repeat(200), &"b".repeat(56)]).is_err());
    assert!(Comment::from_parts(&["", ""]).is_err());
    // Serde and Debug see the text, however it is stored.
    assert_eq!(
        format!("{short:?}"),
        "Comment(\"ns1/svc1:p80 -> 10.0.0.1:80\")"
    );
    let json = serde_json::to_string(&long).unwrap();
    assert_eq!(serde_json::from_str::<Comment>(&json).unwrap(), long);
}

// Unterminated quotes in verbatim text would swallow the rest of the line.
#[test]
fn raw_text_refuses_an_open_quote() {
    use svcnat::ruleset::RawText;
    assert!(RawText::new("-j LOG --log-prefix \"open").is_err());
    assert!(RawText::new("-j LOG --log-prefix \"a \\\" b\"").is_ok());
    assert!(RawText::new("-m comment --comment it's").is_ok());
}

// MASQUERADE with options keeps them when printed.
#[test]
fn masquerade_options_are_kept_when_printed() {
    let text = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.244.0.0/16 -j MASQUERADE --to-ports 1024-65535\nCOMMIT\n";
    let r = parse(text).unwrap();
    assert_eq!(
        svcnat::render::to_string(&r)
            .matches("-j MASQUERADE --to-ports 1024-65535")
            .count(),
        1
    );
    let p = Packet::tcp(ip("10.244.1.5"), ip("8.8.8.8"), 53).arriving_on("cni0");
    let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
    assert!(t.outcomes[0].masquerade && !t.outcomes[0].nat_unevaluated);
    assert!(t.unevaluated.is_empty(), "{t:?}");
}

// `-4`/`-6` restrict a rule to a family, and a rule of the other family is
// skipped as iptables-restore skips it.
#[test]
fn a_rule_of_the_other_family_is_skipped_as_iptables_restore_skips_it() {
    let both = filter_input(
        "-A INPUT -4 -s 10.0.0.1/32 -j ACCEPT\n-A INPUT -6 -s fd00::1/128 -j ACCEPT\n-A INPUT --ipv6 -j DROP\n-A INPUT -s 10.0.0.2/32 -j ACCEPT\n",
    );
    let v4 = parse(&both).unwrap();
    assert_eq!(v4.family, IpFamily::Ipv4);
    let rules: Vec<String> = v4
        .chain(Table::Filter, "INPUT")
        .unwrap()
        .rules
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(
        rules,
        ["-s 10.0.0.1/32 -j ACCEPT", "-s 10.0.0.2/32 -j ACCEPT"]
    );
    let v4_only = filter_input("-A INPUT -4 -j ACCEPT\n-A INPUT -6 -s fd00::1/128 -j ACCEPT\n");
    let v6 = parse_as(&v4_only, IpFamily::Ipv6).unwrap();
    let rules: Vec<String> = v6
        .chain(Table::Filter, "INPUT")
        .unwrap()
        .rules
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(rules, ["-s fd00::1/128 -j ACCEPT"]);
    // Without other addresses, the first flagged rule decides the family.
    let v4 = parse(&v4_only).unwrap();
    assert_eq!(v4.family, IpFamily::Ipv4);
    assert_eq!(v4.chain(Table::Filter, "INPUT").unwrap().rules.len(), 1);
    let v6 = parse(&filter_input(
        "-6 -A INPUT -s fd00::1 -j ACCEPT
-A INPUT -4 -j DROP
",
    ))
    .unwrap();
    assert_eq!(v6.family, IpFamily::Ipv6);
    let rules: Vec<String> = v6
        .chain(Table::Filter, "INPUT")
        .unwrap()
        .rules
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(rules, ["-s fd00::1 -j ACCEPT"]);
}

// The kernel keeps networks without host bits; canonical forms agree.
#[test]
fn canonical_networks_have_no_host_bits() {
    let a = parse(&filter_input("-A INPUT -s 10.1.2.3/8 -j ACCEPT\n")).unwrap();
    let b = parse(&filter_input("-A INPUT -s 10.0.0.0/8 -j ACCEPT\n")).unwrap();
    assert_ne!(a, b);
    assert_eq!(
        svcnat::parse::canonicalize(&a),
        svcnat::parse::canonicalize(&b)
    );
}

/// Hand-written restore input with every shape once refused or mis-read;
/// iptables-restore 1.8.9 accepts all of it.
const QUIRKY_RULES: &str = "*filter\n:INPUT ACCEPT [0:0]\n\
    -A INPUT -p tcp -m tcp --dport 22 -m comment --comment \"\\'dapp_OpenSSH\\'\" -j ACCEPT\n\
    -A INPUT -m comment --comment \"a \\\"b\\\" c\" -j ACCEPT\n\
    -A INPUT -m comment --comment it's -j ACCEPT\n\
    -A INPUT -m comment --comment -x -j ACCEPT\n\
    -A INPUT -m comment --comment \"-j\" -j ACCEPT\n\
    -A INPUT -m comment --comment \"!\" -j ACCEPT\n\
    -A INPUT -f -j DROP\n\
    -A INPUT ! -f -j ACCEPT\n\
    -4 -A INPUT -s 10.0.0.1 -j ACCEPT\n\
    -6 -A INPUT -s fd00::1 -j ACCEPT\n\
    -A INPUT -6 -j DROP\n\
    -A INPUT -m state --state NEW -j ACCEPT\n\
    -A INPUT -m statistic --mode random --probability 0 -j ACCEPT\n\
    COMMIT\n";

/// What iptables-save 1.8.9 (nft) prints back for [`QUIRKY_RULES`].
const QUIRKY_RULES_SAVED: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
    -A INPUT -p tcp -m tcp --dport 22 -m comment --comment \"\\'dapp_OpenSSH\\'\" -j ACCEPT\n\
    -A INPUT -m comment --comment \"a \\\"b\\\" c\" -j ACCEPT\n\
    -A INPUT -m comment --comment \"it\\'s\" -j ACCEPT\n\
    -A INPUT -m comment --comment -x -j ACCEPT\n\
    -A INPUT -m comment --comment -j -j ACCEPT\n\
    -A INPUT -m comment --comment \"!\" -j ACCEPT\n\
    -A INPUT -f -j DROP\n\
    -A INPUT ! -f -j ACCEPT\n\
    -A INPUT -s 10.0.0.1/32 -j ACCEPT\n\
    -A INPUT -m state --state NEW -j ACCEPT\n\
    -A INPUT -m statistic --mode random --probability 0.00000000000 -j ACCEPT\n\
    COMMIT\n";

#[test]
fn quirky_restore_input_loads_as_iptables_loads_it() {
    for text in [QUIRKY_RULES, QUIRKY_RULES_SAVED] {
        let r = parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.family, IpFamily::Ipv4);
        let rules = &r.chain(Table::Filter, "INPUT").unwrap().rules;
        assert_eq!(rules.len(), 11, "{rules:#?}");
        assert_eq!(
            rules[8].to_string().replace("/32", ""),
            "-s 10.0.0.1 -j ACCEPT"
        );
        assert_eq!(parse(&svcnat::render::to_string(&r)).unwrap(), r);
        // Every rule but the fragment and zero-chance ones accepts at its own
        // place: the first is the one taken.
        let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 22);
        let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
        assert_eq!(t.outcomes.len(), 1);
        assert_eq!(t.outcomes[0].path[0].short(), "INPUT:1");
        assert!(t.unevaluated.is_empty(), "{t:?}");
    }
}

// What svcnat renders from a dump iptables-restore accepts, and iptables-save
// prints it back unchanged (both backends).
#[test]
fn quirky_restore_input_round_trips_through_the_kernel() {
    if !crate::kernel::kernel_available("quirky_restore_input_round_trips_through_the_kernel") {
        return;
    }
    let body = |saved: &str| -> String {
        saved
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    for backend in ["nft", "legacy"] {
        let ns = crate::kernel::Netns::new(&format!("quirky-{backend}"));
        let restore = format!("iptables-{backend}-restore");
        let save = format!("iptables-{backend}-save");
        let (ok, out) = ns.run(&[&restore], QUIRKY_RULES);
        assert!(ok, "{backend}: {out}");
        let (ok, first) = ns.run(&[&save, "-t", "filter"], "");
        assert!(ok, "{backend}: {first}");
        let parsed = parse(&first).unwrap_or_else(|e| panic!("{backend}: {e}\n{first}"));
        let rendered = svcnat::render::to_string(&parsed);
        let (ok, out) = ns.run(&[&restore], &rendered);
        assert!(ok, "{backend}: {out}\n{rendered}");
        let (ok, second) = ns.run(&[&save, "-t", "filter"], "");
        assert!(ok, "{backend}: {second}");
        assert_eq!(body(&second), body(&first), "{backend}");
        assert_eq!(parse(&second).unwrap(), parsed, "{backend}");
    }
}

/// A scoped IPv6 DNAT destination has no typed form: kept as written, it prints
/// back unchanged.
#[test]
fn a_scoped_ipv6_dnat_destination_prints_back_as_it_was() {
    let text = "*nat\n:X - [0:0]\n-A X -p tcp -j DNAT --to-destination [fe80::1%2]:80\nCOMMIT\n";
    let ruleset = svcnat::parse::parse(text).unwrap();
    assert!(svcnat::render::to_string(&ruleset).contains("--to-destination [fe80::1%2]:80"));
}
