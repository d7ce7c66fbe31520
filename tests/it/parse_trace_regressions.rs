//! Regressions from the parser and tracer review: each test states the
//! behaviour a real dump needs (escaped quotes, DNAT without a port, loopback
//! traffic, `-f`/`-4`/`-6`, …).

use svcnat::model::IpFamily;
use svcnat::parse::parse;
use svcnat::ruleset::{Match, Table, Target};
use svcnat::trace::{Node, Packet, Verdict, trace};

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

// iptables-save escapes `'` (and `"`, `\`) inside a quoted comment; ufw writes
// comments like 'dapp_OpenSSH'. A comment never affects matching.
#[test]
fn a_rule_with_an_escaped_quote_in_its_comment_still_matches() {
    let text = "*filter\n:INPUT DROP [0:0]\n\
        -A INPUT -p tcp -m tcp --dport 22 -m comment --comment \"\\'dapp_OpenSSH\\'\" -j ACCEPT\n\
        -A INPUT -p tcp -m tcp --dport 80 -m comment --comment \"a \\\"b\\\" c\" -j ACCEPT\n\
        COMMIT\n";
    let r = parse(text).unwrap();
    let node = Node::new([ip("192.168.0.2")]);
    for port in [22, 80] {
        let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), port);
        let t = trace(&r, &p, &node).unwrap();
        assert_eq!(t.outcomes.len(), 1);
        assert_eq!(t.outcomes[0].verdict, Verdict::Accept, "port {port}: {t:?}");
    }
}

// `--to-destination IP` without a port is what iptables-save prints for a DNAT
// that keeps the port (Docker, CNI portmap, hand-written rules).
#[test]
fn dnat_without_a_port_is_a_dnat() {
    let text = "*nat\n:PREROUTING ACCEPT [0:0]\n\
        -A PREROUTING -d 192.168.0.2/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.9\n\
        -A PREROUTING -d 192.168.0.2/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.7:8080\n\
        COMMIT\n";
    let r = parse(text).unwrap();
    let rule = &r.chain(Table::Nat, "PREROUTING").unwrap().rules[0];
    assert!(!matches!(rule.target, Some(Target::Other(_))), "{rule:?}");
    let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 80);
    let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
    assert_eq!(t.outcomes.len(), 1);
    assert_eq!(
        t.outcomes[0].destination,
        "10.0.0.9:80".parse().unwrap(),
        "{t:?}"
    );
}

// A packet a local process sends to the node itself comes back in on `lo`;
// `-A INPUT -i lo -j ACCEPT` is the first rule of nearly every host firewall.
#[test]
fn local_traffic_to_the_node_enters_filter_input_on_lo() {
    let text = "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        -A INPUT -i lo -j ACCEPT\nCOMMIT\n";
    let r = parse(text).unwrap();
    let node = Node::new([ip("192.168.0.2")]);
    for dst in ["127.0.0.1", "192.168.0.2"] {
        let p = Packet::tcp(ip("127.0.0.1"), ip(dst), 8080).from_local();
        let t = trace(&r, &p, &node).unwrap();
        assert_eq!(t.outcomes.len(), 1);
        assert_eq!(t.outcomes[0].verdict, Verdict::Accept, "{dst}: {t:?}");
    }
}

// `-f` is a core option (iptables-save prints it for fragment rules, common in
// hardening scripts); `-4`/`-6` are valid in restore input.
#[test]
fn core_options_f_4_6_are_accepted() {
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

// MASQUERADE with an option other than --random-fully is still a MASQUERADE.
#[test]
fn masquerade_with_options_is_detected() {
    for opts in ["--random", "--to-ports 1024-65535"] {
        let text = format!(
            "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.244.0.0/16 -j MASQUERADE {opts}\n\
             -A POSTROUTING -s 10.244.0.0/16 -j ACCEPT\nCOMMIT\n"
        );
        let r = parse(&text).unwrap();
        let p = Packet::tcp(ip("10.244.1.5"), ip("8.8.8.8"), 53).arriving_on("cni0");
        let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
        assert!(t.outcomes[0].masquerade, "{opts}: {t:?}");
    }
}

// Many matching rules that let the packet go on: the walk must not overflow the
// stack (today: one stack frame pair per matched rule).
#[test]
fn a_long_chain_of_matching_rules_does_not_overflow_the_stack() {
    let mut text = String::from("*filter\n:INPUT ACCEPT [0:0]\n");
    for _ in 0..50_000 {
        text.push_str("-A INPUT -j MARK --or-mark 0x1\n");
    }
    text.push_str("COMMIT\n");
    let r = parse(&text).unwrap();
    let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 80);
    // Run on an 8 MiB stack, like a program's main thread.
    let t = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(t.outcomes.len(), 1);
}

#[allow(dead_code)]
fn _unused(_: IpFamily, _: Match) {}

// iptables accepts `--probability 0` and iptables-save prints it back as
// `0.00000000000`; the whole dump must still load.
#[test]
fn a_zero_probability_loads() {
    let text = "*nat\n:PREROUTING ACCEPT [0:0]\n\
        -A PREROUTING -m statistic --mode random --probability 0.00000000000 -j ACCEPT\nCOMMIT\n";
    assert!(parse(text).is_ok(), "{:?}", parse(text));
}

// A comment that starts with '-' is printed unquoted by iptables-save
// (all its characters are in iptables' no-quote set) and by svcnat's Comment.
#[test]
fn a_comment_starting_with_a_dash_is_a_comment() {
    let text = "*filter\n:INPUT ACCEPT [0:0]\n\
        -A INPUT -m comment --comment \"-x\" -j ACCEPT\nCOMMIT\n";
    let r = parse(text).unwrap();
    let again = parse(&svcnat::render::to_string(&r)).unwrap();
    assert_eq!(again, r);
}

// ---- Further regressions, one per fix that the review's tests leave open. ----

fn filter_input(rules: &str) -> String {
    format!(
        "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{rules}COMMIT\n"
    )
}

fn verdict(r: &svcnat::ruleset::Ruleset, p: &Packet) -> Verdict {
    let t = trace(r, p, &Node::new([ip("192.168.0.2")])).unwrap();
    assert_eq!(t.outcomes.len(), 1, "{t:?}");
    t.outcomes[0].verdict
}

// iptables-restore does not group with single quotes: `it's` is one word.
#[test]
fn a_single_quote_is_an_ordinary_character() {
    let text =
        filter_input("-A INPUT -p tcp -m tcp --dport 22 -m comment --comment it's -j ACCEPT\n");
    let r = parse(&text).unwrap();
    let rule = &r.chain(Table::Filter, "INPUT").unwrap().rules[0];
    assert!(
        rule.matches.iter().any(
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
            rule.matches
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

// Unterminated quotes in verbatim text would swallow the rest of the line.
#[test]
fn raw_text_refuses_an_open_quote() {
    use svcnat::ruleset::RawText;
    assert!(RawText::new("-j LOG --log-prefix \"open").is_err());
    assert!(RawText::new("-j LOG --log-prefix \"a \\\" b\"").is_ok());
    assert!(RawText::new("-m comment --comment it's").is_ok());
}

// `-o lo` holds for local traffic to the node on its way out.
#[test]
fn local_traffic_to_the_node_leaves_by_lo() {
    let text = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT DROP [0:0]\n\
        -A OUTPUT -o lo -j ACCEPT\nCOMMIT\n";
    let r = parse(text).unwrap();
    let local = Packet::tcp(ip("127.0.0.1"), ip("192.168.0.2"), 8080).from_local();
    assert_eq!(verdict(&r, &local), Verdict::Accept);
    // To another host the output interface is unknown: not evaluated, no match.
    let away = Packet::tcp(ip("192.168.0.2"), ip("8.8.8.8"), 53).from_local();
    let t = trace(&r, &away, &Node::new([ip("192.168.0.2")])).unwrap();
    assert_eq!(t.outcomes[0].verdict, Verdict::Drop);
    assert_eq!(t.unevaluated.len(), 1, "{t:?}");
    // Given, the output interface is used.
    let t = trace(&r, &away.leaving_by("lo"), &Node::new([ip("192.168.0.2")])).unwrap();
    assert_eq!(t.outcomes[0].verdict, Verdict::Accept);
    // Packets arriving from outside do not come in on lo.
    let text = filter_input("-A INPUT -i lo -j ACCEPT\n");
    let r = parse(&text).unwrap();
    let outside = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 22);
    assert_eq!(verdict(&r, &outside), Verdict::Drop);
}

// DNAT/SNAT/REDIRECT that the IR does not model end the nat hook, flagged.
#[test]
fn nat_targets_not_understood_end_the_hook_unevaluated() {
    for target in [
        "DNAT --to-destination 10.0.0.9-10.0.0.10",
        "DNAT --to-destination 10.0.0.9:80-90",
        "DNAT --to-destination 10.0.0.9:80 --random",
        "DNAT --to-destination 10.0.0.9:80 --persistent",
        "REDIRECT --to-ports 8080",
    ] {
        let text = format!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n\
             -A PREROUTING -p tcp -m tcp --dport 80 -j {target}\n\
             -A PREROUTING -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:8080\nCOMMIT\n"
        );
        let r = parse(&text).unwrap();
        let rule = &r.chain(Table::Nat, "PREROUTING").unwrap().rules[0];
        assert!(matches!(rule.target, Some(Target::Other(_))), "{target}");
        assert_eq!(
            rule.to_string(),
            format!("-p tcp -m tcp --dport 80 -j {target}")
        );
        let p = Packet::tcp(ip("10.1.2.3"), ip("10.9.9.9"), 80);
        let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
        assert_eq!(t.outcomes.len(), 1, "{target}");
        let o = &t.outcomes[0];
        assert!(o.nat_unevaluated, "{target}: {t:?}");
        assert!(
            o.note
                .as_deref()
                .is_some_and(|n| n.contains("PREROUTING:1")),
            "{o:?}"
        );
        // The later DNAT is not applied.
        assert_eq!(o.destination, "10.9.9.9:80".parse().unwrap(), "{target}");
        assert_eq!(o.path.len(), 1, "{target}: {o:?}");
        assert_eq!(t.unevaluated.len(), 1, "{target}");
        assert!(t.unevaluated[0].taken_as.contains("nat hook ends"), "{t:?}");
    }
    // IPv6 without a port, bracketed or not.
    for to in ["fd00::9", "[fd00::9]"] {
        let text = format!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d fd00::1/128 -j DNAT --to-destination {to}\nCOMMIT\n"
        );
        let r = parse(&text).unwrap();
        let rule = &r.chain(Table::Nat, "PREROUTING").unwrap().rules[0];
        assert_eq!(rule.target, Some(Target::DnatAddress(ip("fd00::9"))));
        assert_eq!(parse(&svcnat::render::to_string(&r)).unwrap(), r);
    }
}

// MASQUERADE with options keeps them when printed.
#[test]
fn masquerade_with_options_renders_back() {
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

// A new connection's first packet is not a later fragment; `-4`/`-6` restrict a
// rule to a family, and a rule of the other family is skipped as
// iptables-restore skips it.
#[test]
fn fragments_and_family_flags() {
    let r = parse(&filter_input(
        "-A INPUT -f -j ACCEPT\n-A INPUT ! -f -p tcp -j REJECT\n",
    ))
    .unwrap();
    let rules = &r.chain(Table::Filter, "INPUT").unwrap().rules;
    assert_eq!(rules[0].matches[..], [Match::Fragment { negated: false }]);
    assert_eq!(rules[1].to_string(), "! -f -p tcp -j REJECT");
    assert_eq!(parse(&svcnat::render::to_string(&r)).unwrap(), r);
    let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 22);
    assert_eq!(verdict(&r, &p), Verdict::Reject);

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

use svcnat::parse::parse_as;

// A zero probability loads, prints back, and its branch is never taken.
#[test]
fn a_zero_probability_branch_is_skipped() {
    let text = "*nat\n:PREROUTING ACCEPT [0:0]\n\
        -A PREROUTING -m statistic --mode random --probability 0.00000000000 -j DNAT --to-destination 10.0.0.9:80\n\
        -A PREROUTING -j DNAT --to-destination 10.0.0.7:80\nCOMMIT\n";
    let r = parse(text).unwrap();
    assert_eq!(parse(&svcnat::render::to_string(&r)).unwrap(), r);
    assert!(svcnat::render::to_string(&r).contains("--probability 0.0000000000 "));
    let p = Packet::tcp(ip("10.1.2.3"), ip("10.9.9.9"), 80);
    let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
    assert_eq!(t.outcomes.len(), 1);
    assert_eq!(t.outcomes[0].destination, "10.0.0.7:80".parse().unwrap());
    assert!(svcnat::ruleset::Probability::new(-0.1).is_err());
    assert!(svcnat::ruleset::Probability::new(f64::NAN).is_err());
    assert!(svcnat::ruleset::Probability::one_in(0).is_err());
}

// Session affinity is listed as not evaluated, not only as an assumption.
#[test]
fn session_affinity_checks_are_listed_as_not_evaluated() {
    let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SEP-A - [0:0]\n\
        -A PREROUTING -m recent --name KUBE-SEP-A --rcheck --seconds 10800 --reap -j KUBE-SEP-A\n\
        -A KUBE-SEP-A -j DNAT --to-destination 10.0.0.7:80\nCOMMIT\n";
    let r = parse(text).unwrap();
    let p = Packet::tcp(ip("10.1.2.3"), ip("10.9.9.9"), 80);
    let t = trace(&r, &p, &Node::default()).unwrap();
    assert_eq!(t.affinity.len(), 1, "{t:?}");
    assert!(t.affinity[0].taken_as.contains("no affinity"), "{t:?}");
    assert_eq!(
        t.assumptions
            .iter()
            .filter(|a| a.contains("--rcheck"))
            .count(),
        1
    );
    assert_eq!(t.outcomes[0].destination, "10.9.9.9:80".parse().unwrap());
}

// A match the tracer cannot decide is reported only if no other match of the
// rule already rules it out.
#[test]
fn unknown_matches_are_reported_only_when_they_decide() {
    let text = filter_input(
        "-A INPUT -m set --match-set allowed src -p udp -j ACCEPT\n\
         -A INPUT -m limit --limit 1/s -p tcp -j ACCEPT\n",
    );
    let r = parse(&text).unwrap();
    let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 22);
    let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
    let at: Vec<String> = t.unevaluated.iter().map(|u| u.at.short()).collect();
    assert_eq!(at, ["INPUT:2"], "{t:?}");
}

// `-m state --state` is conntrack's ctstate under its older name.
#[test]
fn the_state_match_is_evaluated() {
    let text = filter_input(
        "-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT\n\
         -A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT\n",
    );
    let r = parse(&text).unwrap();
    let rules = &r.chain(Table::Filter, "INPUT").unwrap().rules;
    assert!(
        matches!(rules[0].matches[0], Match::State(_)),
        "{:?}",
        rules[0]
    );
    assert_eq!(parse(&svcnat::render::to_string(&r)).unwrap(), r);
    let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 22);
    let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
    assert_eq!(t.outcomes[0].verdict, Verdict::Accept);
    assert_eq!(t.outcomes[0].path[0].short(), "INPUT:2");
    assert!(t.unevaluated.is_empty(), "{t:?}");
    assert_eq!(
        verdict(&r, &Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 23)),
        Verdict::Drop
    );
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

// Gotos and returns still unwind correctly with the iterative walk.
#[test]
fn goto_returns_to_the_callers_caller() {
    let text = "*filter\n:INPUT DROP [0:0]\n:A - [0:0]\n:B - [0:0]\n:C - [0:0]\n\
        -A INPUT -j A\n-A INPUT -j ACCEPT\n\
        -A A -g B\n-A A -j DROP\n\
        -A B -j C\n-A B -j RETURN\n-A B -j DROP\n\
        -A C -m mark --mark 0x0 -j RETURN\n-A C -j DROP\nCOMMIT\n";
    let r = parse(text).unwrap();
    let p = Packet::tcp(ip("10.1.2.3"), ip("192.168.0.2"), 22);
    let t = trace(&r, &p, &Node::new([ip("192.168.0.2")])).unwrap();
    assert_eq!(t.outcomes.len(), 1);
    let path: Vec<String> = t.outcomes[0].path.iter().map(|r| r.short()).collect();
    assert_eq!(path, ["INPUT:1", "A:1", "B:1", "C:1", "B:2", "INPUT:2"]);
    assert_eq!(t.outcomes[0].verdict, Verdict::Accept);
}

/// The trace example on review-shaped dumps (the examples need `k8s`).
#[cfg(feature = "k8s")]
mod trace_example {
    use crate::errors::example_cli::run_example;

    fn run(dump: &str, extra: &[&str]) -> (i32, String, String) {
        let mut args = vec![
            "--node-ip",
            "192.168.0.2",
            "--save",
            "-",
            "--src",
            "10.1.2.3",
            "--dst",
            "192.168.0.2",
            "--proto",
            "tcp",
        ];
        args.extend(extra);
        run_example("trace", &args, dump)
    }

    // The debug-built example used to abort on this dump (stack overflow).
    #[test]
    fn a_dump_with_many_comment_rules_traces() {
        let mut dump = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n");
        for n in 0..1500 {
            dump.push_str(&format!("-A INPUT -m comment --comment \"count {n}\"\n"));
        }
        dump.push_str("COMMIT\n");
        let (code, out, err) = run(&dump, &["--dport", "22", "--json"]);
        assert_eq!(code, 0, "{err}");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["outcomes"][0]["verdict"], "accept");
        assert_eq!(doc["outcomes"][0]["path"].as_array().unwrap().len(), 1500);
    }

    #[test]
    fn port_zero_is_refused_and_out_is_used() {
        let dump = "*filter\n:OUTPUT DROP [0:0]\n-A OUTPUT -o eth1 -j ACCEPT\nCOMMIT\n";
        let (code, out, err) = run(dump, &["--dport", "0"]);
        assert_eq!(
            (code, out.as_str(), err.lines().count()),
            (2, "", 1),
            "{err}"
        );
        let args = ["--dport", "22", "--from", "local", "--json"];
        let (code, out, _) = run(dump, &args);
        assert_eq!(code, 0);
        assert!(out.contains("\"verdict\":\"drop\""), "{out}");
        let (code, out, _) = run(dump, &[&args[..], &["--out", "eth1"]].concat());
        assert_eq!(code, 0);
        assert!(out.contains("\"verdict\":\"accept\""), "{out}");
    }

    /// `contents` in a file of its own, for `--save FILE`.
    fn save_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("svcnat-trace-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn run_file(path: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
        let mut args = vec![
            "--node-ip",
            "192.168.0.2",
            "--save",
            path.to_str().unwrap(),
            "--src",
            "10.1.2.3",
            "--dst",
            "192.168.0.2",
            "--proto",
            "tcp",
            "--dport",
            "22",
        ];
        args.extend(extra);
        run_example("trace", &args, "")
    }

    // A file with no table is not a dump: one line naming the file, exit 2.
    #[test]
    fn a_save_file_without_a_table_is_refused() {
        for (name, contents) in [("empty", ""), ("comments", "# iptables-save\n\n")] {
            let path = save_file(name, contents.as_bytes());
            let (code, out, err) = run_file(&path, &["--json"]);
            let expected = format!(
                "trace: {}: no table (no *filter, *nat, … line): not an iptables-save dump\n",
                path.display()
            );
            assert_eq!(
                (code, out.as_str(), err.as_str()),
                (2, "", expected.as_str())
            );
            std::fs::remove_file(path).unwrap();
        }
        // Text that is not a dump fails to parse, on one line too.
        let path = save_file("text", b"hello world\n-A INPUT -j ACCEPT\n");
        let (code, out, err) = run_file(&path, &[]);
        let expected = format!(
            "trace: {}: line 1, column 1: not inside a table (missing *filter, *nat, …), \
             in \"hello world\"\n",
            path.display()
        );
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (2, "", expected.as_str())
        );
        std::fs::remove_file(path).unwrap();
    }

    // A comment that is not UTF-8 (iptables stores it as given) used to refuse
    // the whole dump (exit 2).
    #[test]
    fn a_dump_with_non_utf8_bytes_traces() {
        let mut dump =
            b"*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment \"caf".to_vec();
        dump.extend([0xe9, b'"']);
        dump.extend(b" -j DROP\nCOMMIT\n");
        let path = save_file("latin1", &dump);
        let (code, out, err) = run_file(&path, &["--json"]);
        assert_eq!(code, 0, "{err}");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["outcomes"][0]["verdict"], "drop");
        assert_eq!(doc["outcomes"][0]["path"][0], "INPUT:1");
        std::fs::remove_file(path).unwrap();
    }

    // `--json` lists the assumptions, as the table's `assumed:` lines, after
    // the keys it had.
    #[test]
    fn json_lists_what_was_assumed() {
        let dump = "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n";
        let (code, out, err) = run(dump, &["--dport", "22", "--json"]);
        assert_eq!(code, 0, "{err}");
        let assumed = [
            "nat INPUT is not in the ruleset: taken as empty, policy ACCEPT",
            "nat PREROUTING is not in the ruleset: taken as empty, policy ACCEPT",
        ];
        let tail = format!(
            "],\"unevaluated\":[],\"assumed\":{}}}\n",
            serde_json::to_string(&assumed).unwrap()
        );
        assert!(out.ends_with(&tail), "{out}");
        let (code, table, _) = run(dump, &["--dport", "22"]);
        assert_eq!(code, 0);
        let lines: Vec<&str> = table
            .lines()
            .filter_map(|l| l.strip_prefix("assumed: "))
            .collect();
        assert_eq!(lines, assumed);
    }

    // `--json` prints the session-affinity checks under `unevaluated`.
    #[test]
    fn affinity_is_printed_as_unevaluated() {
        let dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SEP-A - [0:0]\n\
            -A PREROUTING -m recent --name KUBE-SEP-A --rcheck --seconds 10800 --reap -j KUBE-SEP-A\n\
            -A KUBE-SEP-A -j DNAT --to-destination 10.0.0.7:80\nCOMMIT\n";
        let (code, out, err) = run(dump, &["--dport", "80", "--json"]);
        assert_eq!(code, 0, "{err}");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        let unevaluated = doc["unevaluated"].as_array().unwrap();
        assert_eq!(unevaluated.len(), 1, "{out}");
        assert!(
            unevaluated[0].as_str().unwrap().contains("--rcheck"),
            "{out}"
        );
        assert!(
            unevaluated[0].as_str().unwrap().contains("no affinity"),
            "{out}"
        );
    }
}

/// Hand-written restore input with everything the review found refused or
/// mis-read; iptables-restore 1.8.9 accepts all of it.
const REVIEW_RULES: &str = "*filter\n:INPUT ACCEPT [0:0]\n\
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

/// What iptables-save 1.8.9 (nft) prints back for [`REVIEW_RULES`].
const REVIEW_RULES_SAVED: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
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
fn the_review_rules_load_as_iptables_loads_them() {
    for text in [REVIEW_RULES, REVIEW_RULES_SAVED] {
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
fn the_review_rules_round_trip_through_the_kernel() {
    if !crate::kernel::kernel_available("the_review_rules_round_trip_through_the_kernel") {
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
        let ns = crate::kernel::Netns::new(&format!("review-{backend}"));
        let restore = format!("iptables-{backend}-restore");
        let save = format!("iptables-{backend}-save");
        let (ok, out) = ns.run(&[&restore], REVIEW_RULES);
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
