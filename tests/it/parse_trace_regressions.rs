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
    assert_eq!(t.outcomes[0].destination, "10.0.0.9:80".parse().unwrap(), "{t:?}");
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
    for rule in ["-f -j DROP", "! -f -j ACCEPT", "-4 -s 10.0.0.1/32 -j ACCEPT", "-6 -j ACCEPT"] {
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
