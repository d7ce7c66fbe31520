//! nftables text back to the IR (`svcnat::parse::nft`) and packets traced
//! through it (`svcnat::trace::nft`): round trips of the dump form over random
//! IR values and kube-proxy's own expected dumps, nft 1.0.6's listing read back
//! (saved listings, and a table loaded into a real kernel and listed again),
//! garbled text, and the tracer's walk over kube-proxy's TestOverallNFTablesRules
//! table.
//!
//! kube-proxy's texts are in `tests/data/nft/kube-proxy/` (kubernetes commit
//! 030880a5dc5449403c6d1f0aa146a7dc21d6c6dc).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use proptest::prelude::*;
use svcnat::model::Protocol;
use svcnat::nft::*;
use svcnat::parse::nft::{NftErrorKind, canonicalize, parse, parse_dump, parse_listing};
use svcnat::trace::nft::trace;
use svcnat::trace::{Node, Packet, Trace, TraceError};

use crate::fixtures::ip;
use crate::kernel::{Netns, nft_available};
use crate::nft_kube_proxy::sort_transaction;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/nft");

fn data(name: &str) -> String {
    std::fs::read_to_string(format!("{DATA}/{name}")).unwrap()
}

/// kube-proxy's `baseRules` followed by one of its test texts.
fn kube_proxy(name: &str) -> String {
    data("kube-proxy/base.nft") + &data(&format!("kube-proxy/{name}"))
}

// ---------------------------------------------------------------------------
// The dump form

#[test]
fn kube_proxys_expected_dumps_parse_and_dump_back() {
    for name in [
        "overall.nft",
        "bad-ips.nft",
        "sync-repeated-emptied.nft",
        "startup-loaded.nft",
    ] {
        let text = kube_proxy(name);
        let ruleset = parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            sort_transaction(&ruleset.to_dump()),
            sort_transaction(&text),
            "{name}"
        );
        let again = parse(&ruleset.to_dump()).unwrap();
        assert_eq!(again, ruleset, "{name}");
        let canonical = canonicalize(&ruleset);
        assert_eq!(canonicalize(&canonical), canonical, "{name}");
    }
    // The texts are what they say: a few spot checks of the values read.
    let overall = parse(&kube_proxy("overall.nft")).unwrap();
    assert_eq!(overall.family, Family::Ip);
    assert_eq!(overall.chains.len(), 16 + 16);
    assert_eq!(
        overall.chains["filter-prerouting-pre-dnat"].base,
        Some(BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Prerouting,
            priority: -110
        })
    );
    let affinity = &overall.sets["affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"];
    assert_eq!(affinity.flags, [SetFlag::Dynamic, SetFlag::Timeout]);
    assert_eq!(affinity.timeout, Some(10800));
    assert_eq!(overall.maps["service-ips"].elements.len(), 9);
    let svc4 = &overall.chains["service-LAUZTJTB-ns4/svc4/tcp/p80"].rules[1];
    assert!(matches!(&svc4.stmts[..], [Stmt::Numgen(v)] if v.len() == 2));
    let emptied = parse(&kube_proxy("sync-repeated-emptied.nft")).unwrap();
    assert!(
        emptied.chains["service-4AT6LBPK-ns3/svc3/tcp/p80"]
            .rules
            .is_empty()
    );
}

#[test]
fn kube_proxys_spellings_read_as_the_ir_writes_them() {
    let text = kube_proxy("overall.nft");
    let rs = parse_dump(&text).unwrap();
    let check = &rs.chains["cluster-ips-check"].rules;
    assert_eq!(
        check[1].stmts[0],
        Stmt::Addr {
            dir: Dir::Daddr,
            op: Op::Eq,
            value: AddrValue::Cidrs(vec!["172.30.0.0/16".parse().unwrap()])
        }
    );
    assert_eq!(
        check[1].comment.as_ref().map(NftComment::as_str),
        Some("Drop traffic to unallocated ClusterIPs")
    );
    let masq = &rs.chains["masquerading"].rules;
    assert_eq!(
        masq[0].stmts,
        [
            Stmt::MarkAnd {
                bits: 0x4000,
                value: 0
            },
            Stmt::Verdict(Verdict::Return)
        ]
    );
    assert_eq!(masq[2].stmts, [Stmt::Masquerade { fully_random: true }]);
    // Two CIDRs joined with a comma, as kube-proxy joins its flag's value.
    let joined = parse_dump(
        "add table ip t\nadd chain ip t c\nadd rule ip t c ip daddr { 172.30.0.0/16,172.50.0.0/16 } drop\n\
         add rule ip t c ip saddr != { 203.0.113.0/25 , 1.2.3.4 } drop\n",
    )
    .unwrap();
    let rules = &joined.chains["c"].rules;
    assert!(
        matches!(&rules[0].stmts[0], Stmt::Addr { value: AddrValue::Cidrs(n), .. } if n.len() == 2)
    );
    assert!(
        matches!(&rules[1].stmts[0], Stmt::Addr { op: Op::Ne, value: AddrValue::Anon(i), .. } if i.len() == 2)
    );
}

/// Whether an error is of the expected kind.
type IsKind = fn(&NftErrorKind) -> bool;

#[test]
fn errors_name_the_line_and_column_and_show_it() {
    let base = "add table ip kube-proxy\nadd chain ip kube-proxy c\n";
    let cases: &[(&str, usize, usize, IsKind)] = &[
        (
            "add rule ip kube-proxy c ip daddr 1.2.3.4 counter",
            3,
            43,
            |k| matches!(k, NftErrorKind::Unsupported(s) if s.contains("counter")),
        ),
        (
            "add rule ip kube-proxy nope accept",
            3,
            1,
            |k| matches!(k, NftErrorKind::UndeclaredChain(c) if c == "nope"),
        ),
        (
            "add rule ip kube-proxy c ip6 daddr ::1 accept",
            3,
            26,
            |k| matches!(k, NftErrorKind::FamilyMismatch { .. }),
        ),
        ("add rule ip kube-proxy c ip daddr ::1 accept", 3, 35, |k| {
            matches!(k, NftErrorKind::FamilyMismatch { .. })
        }),
        (
            "add rule ip kube-proxy c ip daddr 1.2.3.4 comment \"open",
            3,
            51,
            |k| *k == NftErrorKind::UnterminatedQuote,
        ),
        (
            "add element ip kube-proxy m { tcp . 80 : accept }",
            3,
            27,
            |k| matches!(k, NftErrorKind::UndeclaredSet(_)),
        ),
        ("delete chain ip kube-proxy c", 3, 1, |k| {
            matches!(k, NftErrorKind::UnknownCommand(_))
        }),
        ("add chain ip other c", 3, 11, |k| {
            matches!(k, NftErrorKind::OtherTable(_))
        }),
        (
            "add chain ip kube-proxy c { type filter hook input priority 0 ; policy drop ; }",
            3,
            72,
            |k| matches!(k, NftErrorKind::Unsupported(s) if s == "policy drop"),
        ),
        (
            "add rule ip kube-proxy c reject with icmp type port-unreachable",
            3,
            33,
            |k| matches!(k, NftErrorKind::Unsupported(_)),
        ),
        ("add rule ip kube-proxy c", 3, 25, |k| {
            matches!(k, NftErrorKind::Expected { .. })
        }),
        (
            "add rule ip kube-proxy c mark and 0x4000 == 0x1ffffffff accept",
            3,
            45,
            |k| matches!(k, NftErrorKind::BadValue { .. }),
        ),
        (
            "add rule ip kube-proxy c numgen random mod 2 vmap { 0 : goto c , 2 : goto c }",
            3,
            66,
            |k| matches!(k, NftErrorKind::Unsupported(_)),
        ),
        (
            "add rule ip kube-proxy c iifname \"a b\" accept",
            3,
            34,
            |k| matches!(k, NftErrorKind::Invalid(_)),
        ),
    ];
    for (line, l, c, kind) in cases {
        let text = format!("{base}{line}\n");
        let e = parse(&text).unwrap_err();
        assert!(kind(&e.kind), "{line}: {e}");
        assert_eq!((e.line, e.column), (*l, *c), "{line}: {e}");
        assert_eq!(e.text, *line);
        assert!(
            e.to_string()
                .starts_with(&format!("line {l}, column {c}: ")),
            "{e}"
        );
    }
    for (text, kind) in [
        ("", NftErrorKind::NoTable),
        ("\n# nothing\n", NftErrorKind::NoTable),
    ] {
        assert_eq!(parse(text).unwrap_err().kind, kind);
    }
    let before = parse("add chain ip kube-proxy c\n").unwrap_err();
    assert!(
        matches!(before.kind, NftErrorKind::OutsideTable(_)),
        "{before}"
    );
    // A second declaration may not change what the first said.
    let again = parse(&format!(
        "{base}add chain ip kube-proxy c {{ type nat hook output priority -100 ; }}\n\
         add chain ip kube-proxy c {{ type nat hook output priority 100 ; }}\n"
    ))
    .unwrap_err();
    assert!(
        matches!(again.kind, NftErrorKind::Redeclared { what: "chain", .. }),
        "{again}"
    );
}

#[test]
fn repeated_declarations_and_elements_are_one() {
    let text = "add table ip t\nadd table ip t { comment \"c\" ; }\nadd chain ip t c\n\
        add chain ip t c { comment \"x\" ; }\nadd set ip t s { type ipv4_addr ; }\n\
        add set ip t s { type ipv4_addr ; }\nadd element ip t s { 1.2.3.4 }\n\
        add element ip t s { 1.2.3.4, 5.6.7.8 }\n";
    let rs = parse(text).unwrap();
    assert_eq!(rs.comment.as_ref().map(NftComment::as_str), Some("c"));
    assert_eq!(
        rs.chains["c"].comment.as_ref().map(NftComment::as_str),
        Some("x")
    );
    assert_eq!(rs.sets["s"].elements.len(), 2);
    let clash = "add table ip t\nadd map ip t m { type inet_proto . inet_service : verdict ; }\n\
        add element ip t m { tcp . 1 : accept }\nadd element ip t m { tcp . 1 : drop }\n";
    let e = parse(clash).unwrap_err();
    assert!(
        matches!(
            e.kind,
            NftErrorKind::Redeclared {
                what: "element",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.line, 4);
}

// ---------------------------------------------------------------------------
// Random IR values: the dump round trip, and garbled text

fn name() -> impl Strategy<Value = Name> {
    prop_oneof![
        Just("services".to_owned()),
        Just("service-ULMVA6XW-ns1/svc1/tcp/p80".to_owned()),
        Just("accept".to_owned()),
        Just("comment".to_owned()),
        "[a-zA-Z_.][a-zA-Z0-9_./-]{0,30}",
    ]
    .prop_map(|s| Name::new(s).unwrap())
}

fn comment() -> impl Strategy<Value = NftComment> {
    "[ -!#-\\[\\]-~]{1,40}".prop_map(|s| NftComment::new(s).unwrap())
}

fn addr(family: Family) -> BoxedStrategy<IpAddr> {
    match family {
        Family::Ip => any::<u32>()
            .prop_map(|n| IpAddr::V4(Ipv4Addr::from(n)))
            .boxed(),
        Family::Ip6 => any::<u128>()
            .prop_map(|n| IpAddr::V6(Ipv6Addr::from(n)))
            .boxed(),
    }
}

fn net(family: Family) -> BoxedStrategy<IpNet> {
    let max: u8 = match family {
        Family::Ip => 32,
        Family::Ip6 => 128,
    };
    (addr(family), 0..=max)
        .prop_map(|(a, len)| IpNet::new(a, len).unwrap())
        .boxed()
}

fn verdict() -> impl Strategy<Value = Verdict> {
    prop_oneof![
        Just(Verdict::Accept),
        Just(Verdict::Drop),
        Just(Verdict::Return),
        Just(Verdict::Reject),
        name().prop_map(Verdict::Jump),
        name().prop_map(Verdict::Goto),
    ]
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Sctp)
    ]
}

/// Every value the dump form tells apart: all but `Anon` of one prefix
/// (written as `Cidrs` of it is).
fn addr_value(family: Family) -> BoxedStrategy<AddrValue> {
    let item = prop_oneof![
        addr(family).prop_map(AddrItem::Ip),
        net(family).prop_map(AddrItem::Net)
    ];
    prop_oneof![
        addr(family).prop_map(AddrValue::Ip),
        net(family).prop_map(AddrValue::Net),
        name().prop_map(AddrValue::Set),
        addr(family).prop_map(|a| AddrValue::Anon(vec![AddrItem::Ip(a)])),
        prop::collection::vec(item, 2..5).prop_map(AddrValue::Anon),
        prop::collection::vec(net(family), 1..4).prop_map(AddrValue::Cidrs),
    ]
    .boxed()
}

fn stmt(family: Family) -> BoxedStrategy<Stmt> {
    let dir = prop_oneof![Just(Dir::Saddr), Just(Dir::Daddr)];
    let op = prop_oneof![Just(Op::Eq), Just(Op::Ne)];
    let field = prop_oneof![
        Just(KeyField::Daddr),
        Just(KeyField::Saddr),
        Just(KeyField::L4Proto),
        Just(KeyField::ThDport)
    ];
    let iface = ("[a-z][a-z0-9_.-]{0,13}", any::<bool>())
        .prop_map(|(n, prefix)| IfName::new(n, prefix).unwrap());
    prop_oneof![
        (dir.clone(), op.clone(), addr_value(family)).prop_map(|(dir, op, value)| Stmt::Addr {
            dir,
            op,
            value
        }),
        protocol().prop_map(Stmt::L4Proto),
        Just(Stmt::CtStateNew),
        dir.prop_map(Stmt::FibLocal),
        (op, iface).prop_map(|(op, name)| Stmt::Iifname { op, name }),
        (any::<u32>(), any::<u32>()).prop_map(|(bits, value)| Stmt::MarkAnd { bits, value }),
        (
            prop_oneof![Just(MarkOp::Or), Just(MarkOp::Xor)],
            any::<u32>()
        )
            .prop_map(|(op, bits)| Stmt::MarkSet { op, bits }),
        (prop::collection::vec(field, 1..5), name()).prop_map(|(key, map)| Stmt::Vmap { key, map }),
        prop::collection::vec(verdict(), 1..5).prop_map(Stmt::Numgen),
        name().prop_map(Stmt::UpdateSaddr),
        (addr(family), any::<u16>()).prop_map(|(a, p)| Stmt::DnatTo(SocketAddr::new(a, p))),
        any::<bool>().prop_map(|fully_random| Stmt::Masquerade { fully_random }),
        verdict().prop_map(Stmt::Verdict),
    ]
    .boxed()
}

fn key_types(family: Family) -> BoxedStrategy<Vec<KeyType>> {
    prop::collection::vec(
        prop_oneof![
            Just(family.addr_type()),
            Just(KeyType::InetProto),
            Just(KeyType::InetService)
        ],
        1..4,
    )
    .boxed()
}

fn key_value(family: Family, t: KeyType) -> BoxedStrategy<KeyValue> {
    match t {
        KeyType::Ipv4Addr | KeyType::Ipv6Addr => addr(family).prop_map(KeyValue::Addr).boxed(),
        KeyType::InetProto => protocol().prop_map(KeyValue::Proto).boxed(),
        KeyType::InetService => any::<u16>().prop_map(KeyValue::Port).boxed(),
    }
}

fn keys(family: Family, types: &[KeyType]) -> BoxedStrategy<Vec<Vec<KeyValue>>> {
    let one: Vec<_> = types.iter().map(|t| key_value(family, *t)).collect();
    prop::collection::vec(one, 0..5)
        .prop_map(|mut keys| {
            // A key once: the kernel holds no duplicate.
            let mut seen = BTreeSet::new();
            keys.retain(|k| seen.insert(k.clone()));
            keys
        })
        .boxed()
}

fn set(family: Family) -> BoxedStrategy<Set> {
    key_types(family)
        .prop_flat_map(move |key| {
            let flags = prop::collection::vec(
                prop_oneof![Just(SetFlag::Dynamic), Just(SetFlag::Timeout)],
                0..3,
            );
            (
                keys(family, &key),
                prop::collection::vec(prop::option::of(comment()), 5),
                Just(key),
                flags,
                prop::option::of(1u32..1_000_000),
                prop::option::of(comment()),
            )
        })
        .prop_map(|(keys, comments, key, flags, timeout, comment)| Set {
            elements: keys
                .into_iter()
                .zip(comments)
                .map(|(key, comment)| Element { key, comment })
                .collect(),
            key,
            flags,
            timeout,
            comment,
        })
        .boxed()
}

fn map(family: Family) -> BoxedStrategy<Map> {
    key_types(family)
        .prop_flat_map(move |key| {
            (
                keys(family, &key),
                prop::collection::vec((verdict(), prop::option::of(comment())), 5),
                Just(key),
                prop::option::of(comment()),
            )
        })
        .prop_map(|(keys, data, key, comment)| Map {
            elements: keys
                .into_iter()
                .zip(data)
                .map(|(key, (verdict, comment))| MapElement {
                    key,
                    verdict,
                    comment,
                })
                .collect(),
            key,
            comment,
        })
        .boxed()
}

/// Base chains of either type, at any hook, with a priority in `priority`.
fn base_chain(priority: std::ops::Range<i32>) -> impl Strategy<Value = BaseChain> {
    (
        prop_oneof![Just(ChainType::Filter), Just(ChainType::Nat)],
        prop_oneof![
            Just(Hook::Prerouting),
            Just(Hook::Input),
            Just(Hook::Forward),
            Just(Hook::Output),
            Just(Hook::Postrouting)
        ],
        priority,
    )
        .prop_map(|(kind, hook, priority)| BaseChain {
            kind,
            hook,
            priority,
        })
}

fn chain(family: Family) -> BoxedStrategy<Chain> {
    let base = base_chain(-400..400);
    let rule = (
        prop::collection::vec(stmt(family), 1..5),
        prop::option::of(comment()),
    )
        .prop_map(|(stmts, comment)| Rule { stmts, comment });
    (
        prop::option::of(base),
        prop::option::of(comment()),
        prop::collection::vec(rule, 0..4),
    )
        .prop_map(|(base, comment, rules)| Chain {
            base,
            comment,
            rules,
        })
        .boxed()
}

/// Random rulesets: every value the IR holds that nft would take (no empty
/// rule, set or numgen), sets and maps under distinct names.
pub(crate) fn ruleset() -> impl Strategy<Value = Ruleset> {
    prop_oneof![Just(Family::Ip), Just(Family::Ip6)].prop_flat_map(|family| {
        (
            name(),
            prop::option::of(comment()),
            prop::collection::vec((name(), chain(family)), 0..5),
            prop::collection::vec((name(), set(family)), 0..3),
            prop::collection::vec((name(), map(family)), 0..3),
        )
            .prop_map(move |(table, comment, chains, sets, maps)| {
                let mut rs = Ruleset::new(family, table, comment);
                rs.chains.extend(chains);
                for (name, set) in sets {
                    rs.sets.insert(name, set);
                }
                for (name, map) in maps {
                    if !rs.sets.contains_key(&name) {
                        rs.maps.insert(name, map);
                    }
                }
                rs
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `parse(to_dump(r)) == r`, and dumping what was parsed gives the same
    /// bytes; the canonical form is a fixed point and survives the trip.
    #[test]
    fn dumps_round_trip(rs in ruleset()) {
        let text = rs.to_dump();
        let parsed = parse_dump(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&parsed, &rs);
        prop_assert_eq!(parsed.to_dump(), text);
        let canonical = canonicalize(&rs);
        prop_assert_eq!(canonicalize(&canonical), canonical.clone());
        prop_assert_eq!(canonicalize(&parsed), canonical);
    }

    /// Any text, however garbled, gives a ruleset or a placed error.
    #[test]
    fn garbled_text_never_panics(lines in prop::collection::vec(
        prop_oneof![
            Just("add table ip t".to_owned()),
            Just("add chain ip t c".to_owned()),
            Just("table ip t {".to_owned()),
            Just("}".to_owned()),
            "add (rule|chain|set|map|element) ip6? t c( (ip|ip6|daddr|saddr|!=|==|@s|\\{|\\}|,|:|;|\\.|vmap|numgen|random|mod|2|0|1|goto|c|meta|mark|&|\\||\\^|set|0x4000|l4proto|tcp|th|dport|dnat|to|1\\.2\\.3\\.4:80|\\[::1\\]:80|masquerade|fully-random|update|iifname|\"veth\\*\"|comment|\"x\"|type|ipv4_addr|inet_proto|verdict|flags|dynamic|timeout|3h|elements|=|fib|local|ct|state|new|accept|drop|reject|return|jump|1\\.2\\.3\\.4-1\\.2\\.3\\.9|10\\.0\\.0\\.0/8|priority|dstnat|-|10|hook|filter|nat|prerouting|policy)){0,12}",
            "\t*(set|map|chain|type|elements|comment|flags|timeout|size|meta|ip|ip6) [ -~]{0,30}",
            "\\PC{0,40}",
        ], 0..10)) {
        let text = lines.join("\n");
        if let Err(e) = parse(&text) {
            prop_assert!(e.line >= 1 && e.column >= 1, "{e:?}");
            prop_assert!(e.line <= lines.len().max(1), "{e:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// nft's listing

#[test]
fn saved_listings_read_back_as_what_was_loaded() {
    for (dump, listing) in [
        ("dump-v4.nft", "listing-v4.txt"),
        ("dump-v6.nft", "listing-v6.txt"),
    ] {
        let written = parse_dump(&data(dump)).unwrap();
        let listed = parse_listing(&data(listing)).unwrap();
        assert_ne!(listed, written, "{listing}: the kernel's spelling differs");
        assert_eq!(canonicalize(&listed), canonicalize(&written), "{listing}");
    }
}

#[test]
fn the_listings_spellings() {
    let text = "table ip6 kube-proxy {\n\
        \tcomment \"rules for kube-proxy\"\n\
        \tset affinity-X {\n\t\ttype ipv6_addr\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 3h\n\
        \t\telements = { fd00::1 timeout 3h expires 2h59m59s996ms,\n\t\t\t     fd00::2 expires 1s comment \"x\" }\n\t}\n\n\
        \tmap m {\n\t\ttype ipv6_addr . inet_proto . inet_service : verdict\n\
        \t\telements = { fd00::1 . tcp . 80 comment \"c\" : goto ep,\n\t\t\t     fd00::2 . udp . 53 : drop }\n\t}\n\n\
        \tchain ep {\n\t\tcomment \"pre dnat\"\n\t\ttype filter hook prerouting priority dstnat - 10; policy accept;\n\
        \t\tip6 saddr != { 2001:db8::/64, fd00::1-fd00::2 } drop\n\
        \t\tmeta mark 0xffffffff drop\n\t\tmeta mark 0x00000000/0 drop\n\
        \t\tmeta mark set meta mark\n\t\tiifname != \"veth*\" accept\n\t}\n}\n";
    let rs = parse(text).unwrap();
    assert_eq!(rs.family, Family::Ip6);
    let set = &rs.sets["affinity-X"];
    assert_eq!((set.timeout, set.elements.len()), (Some(10800), 2));
    assert_eq!(
        set.elements[1].comment.as_ref().map(NftComment::as_str),
        Some("x")
    );
    assert_eq!(
        rs.maps["m"].elements[0].verdict,
        Verdict::Goto(Name::new("ep").unwrap())
    );
    let ep = &rs.chains["ep"];
    assert_eq!(ep.base.map(|b| b.priority), Some(-110));
    let stmts: Vec<&Stmt> = ep.rules.iter().map(|r| &r.stmts[0]).collect();
    assert_eq!(
        *stmts[0],
        Stmt::Addr {
            dir: Dir::Saddr,
            op: Op::Ne,
            value: AddrValue::Anon(vec![
                AddrItem::Net("2001:db8::/64".parse().unwrap()),
                AddrItem::Net("fd00::1/128".parse().unwrap()),
                AddrItem::Net("fd00::2/128".parse().unwrap()),
            ])
        }
    );
    assert_eq!(
        *stmts[1],
        Stmt::MarkAnd {
            bits: u32::MAX,
            value: u32::MAX
        }
    );
    assert_eq!(*stmts[2], Stmt::MarkAnd { bits: 0, value: 0 });
    assert_eq!(
        *stmts[3],
        Stmt::MarkSet {
            op: MarkOp::Or,
            bits: 0
        }
    );
    assert_eq!(
        *stmts[4],
        Stmt::Iifname {
            op: Op::Ne,
            name: IfName::new("veth", true).unwrap()
        }
    );
    // A second table is refused: one text, one table.
    let two = format!("{text}table ip t {{\n}}\n");
    let e = parse(&two).unwrap_err();
    assert!(matches!(e.kind, NftErrorKind::OtherTable(_)), "{e}");
}

/// A table with every statement kind, set and map shape the IR has, in one
/// family, built from IR values.
fn rich(family: Family) -> Ruleset {
    let n = |s: &str| Name::new(s).unwrap();
    let c = |s: &str| NftComment::new(s).unwrap();
    let (a, b, net, other) = match family {
        Family::Ip => (
            ip("10.180.0.1"),
            ip("10.180.0.2"),
            "10.0.0.0/8",
            "203.0.113.0/25",
        ),
        Family::Ip6 => (
            ip("fd00::1"),
            ip("fd00::2"),
            "fd00:10::/64",
            "2001:db8::/64",
        ),
    };
    let net: IpNet = net.parse().unwrap();
    let other: IpNet = other.parse().unwrap();
    let mut rs = Ruleset::new(family, n("kube-proxy"), Some(c("rules for kube-proxy")));
    let base = |kind, hook, priority| {
        Some(BaseChain {
            kind,
            hook,
            priority,
        })
    };
    let chain = |base, comment, rules| Chain {
        base,
        comment,
        rules,
    };
    let r = Rule::new;
    let goto = |s: &str| Verdict::Goto(n(s));
    rs.chains.insert(
        n("filter-prerouting-pre-dnat"),
        chain(
            base(ChainType::Filter, Hook::Prerouting, -110),
            Some(c("pre dnat")),
            vec![r(vec![
                Stmt::CtStateNew,
                Stmt::Verdict(Verdict::Jump(n("firewall-check"))),
            ])],
        ),
    );
    rs.chains.insert(
        n("filter-input"),
        chain(
            base(ChainType::Filter, Hook::Input, 0),
            None,
            vec![r(vec![
                Stmt::FibLocal(Dir::Daddr),
                Stmt::L4Proto(Protocol::Sctp),
                Stmt::Verdict(Verdict::Accept),
            ])],
        ),
    );
    rs.chains.insert(
        n("filter-forward"),
        chain(base(ChainType::Filter, Hook::Forward, -7), None, vec![]),
    );
    rs.chains.insert(
        n("nat-prerouting"),
        chain(
            base(ChainType::Nat, Hook::Prerouting, -100),
            None,
            vec![
                r(vec![Stmt::Vmap {
                    key: vec![KeyField::Daddr, KeyField::L4Proto, KeyField::ThDport],
                    map: n("service-ips"),
                }]),
                r(vec![
                    Stmt::FibLocal(Dir::Daddr),
                    Stmt::Addr {
                        dir: Dir::Daddr,
                        op: Op::Ne,
                        value: AddrValue::Net(match family {
                            Family::Ip => "127.0.0.0/8".parse().unwrap(),
                            Family::Ip6 => "::1/128".parse().unwrap(),
                        }),
                    },
                    Stmt::Vmap {
                        key: vec![KeyField::L4Proto, KeyField::ThDport],
                        map: n("service-nodeports"),
                    },
                ]),
            ],
        ),
    );
    rs.chains.insert(
        n("nat-output"),
        chain(
            base(ChainType::Nat, Hook::Output, -100),
            None,
            vec![r(vec![
                Stmt::Addr {
                    dir: Dir::Daddr,
                    op: Op::Eq,
                    value: AddrValue::Set(n("cluster-ips")),
                },
                Stmt::Verdict(Verdict::Jump(n("mark-for-masquerade"))),
            ])],
        ),
    );
    rs.chains.insert(
        n("nat-postrouting"),
        chain(
            base(ChainType::Nat, Hook::Postrouting, 100),
            None,
            vec![
                r(vec![
                    Stmt::MarkAnd {
                        bits: 0x4000,
                        value: 0,
                    },
                    Stmt::Verdict(Verdict::Return),
                ]),
                r(vec![Stmt::MarkSet {
                    op: MarkOp::Xor,
                    bits: 0x4000,
                }]),
                r(vec![Stmt::Masquerade { fully_random: true }]),
            ],
        ),
    );
    rs.chains.insert(
        n("firewall-check"),
        chain(
            None,
            None,
            vec![
                r(vec![
                    Stmt::Addr {
                        dir: Dir::Saddr,
                        op: Op::Ne,
                        value: AddrValue::Anon(vec![
                            AddrItem::Net(other),
                            AddrItem::Ip(a),
                            AddrItem::Net(IpNet::from(b)),
                        ]),
                    },
                    Stmt::Verdict(Verdict::Drop),
                ])
                .with_comment(c("source ranges")),
                r(vec![
                    Stmt::Addr {
                        dir: Dir::Daddr,
                        op: Op::Eq,
                        value: AddrValue::Cidrs(vec![net, other]),
                    },
                    Stmt::Verdict(Verdict::Reject),
                ]),
                r(vec![
                    Stmt::Addr {
                        dir: Dir::Daddr,
                        op: Op::Eq,
                        value: AddrValue::Cidrs(vec![net]),
                    },
                    Stmt::Verdict(Verdict::Drop),
                ]),
                r(vec![
                    Stmt::Iifname {
                        op: Op::Ne,
                        name: IfName::new("veth", true).unwrap(),
                    },
                    Stmt::Iifname {
                        op: Op::Eq,
                        name: IfName::new("cbr0", false).unwrap(),
                    },
                    Stmt::Verdict(Verdict::Accept),
                ]),
            ],
        ),
    );
    rs.chains.insert(
        n("mark-for-masquerade"),
        chain(
            None,
            None,
            vec![r(vec![Stmt::MarkSet {
                op: MarkOp::Or,
                bits: 0x4000,
            }])],
        ),
    );
    rs.chains.insert(
        n("service-X/ns1/svc1/tcp/p80"),
        chain(
            None,
            None,
            vec![
                r(vec![
                    Stmt::Addr {
                        dir: Dir::Saddr,
                        op: Op::Ne,
                        value: AddrValue::Net(net),
                    },
                    Stmt::Verdict(Verdict::Jump(n("mark-for-masquerade"))),
                ]),
                r(vec![
                    Stmt::Addr {
                        dir: Dir::Saddr,
                        op: Op::Eq,
                        value: AddrValue::Set(n("affinity-A")),
                    },
                    Stmt::Verdict(goto("endpoint-A")),
                ]),
                r(vec![Stmt::Numgen(vec![
                    goto("endpoint-A"),
                    goto("endpoint-B"),
                ])]),
            ],
        ),
    );
    for (chain_name, set, to) in [
        ("endpoint-A", "affinity-A", a),
        ("endpoint-B", "affinity-B", b),
    ] {
        rs.chains.insert(
            n(chain_name),
            chain(
                None,
                None,
                vec![
                    r(vec![
                        Stmt::addr(Dir::Saddr, to),
                        Stmt::Verdict(Verdict::Jump(n("mark-for-masquerade"))),
                    ]),
                    r(vec![Stmt::UpdateSaddr(n(set))]),
                    r(vec![
                        Stmt::L4Proto(Protocol::Tcp),
                        Stmt::DnatTo(SocketAddr::new(to, 8080)),
                    ]),
                ],
            ),
        );
        let mut affinity = Set::new(vec![family.addr_type()], None);
        affinity.flags = vec![SetFlag::Dynamic, SetFlag::Timeout];
        affinity.timeout = Some(10800);
        rs.sets.insert(n(set), affinity);
    }
    let mut cluster_ips = Set::new(vec![family.addr_type()], Some(c("Active ClusterIPs")));
    let vip = |i: u16| match family {
        Family::Ip => IpAddr::V4(Ipv4Addr::new(172, 30, 0, i as u8)),
        Family::Ip6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x172, 0x30, 0, 0, 0, 0, i)),
    };
    for i in [41, 42, 43] {
        cluster_ips.elements.push(Element {
            key: vec![KeyValue::Addr(vip(i))],
            comment: (i == 42).then(|| c("ns1/svc1:p80")),
        });
    }
    rs.sets.insert(n("cluster-ips"), cluster_ips);
    let mut service_ips = Map::new(
        vec![family.addr_type(), KeyType::InetProto, KeyType::InetService],
        Some(c("ClusterIP, ExternalIP and LoadBalancer IP traffic")),
    );
    for (i, (proto, port, verdict)) in [
        (Protocol::Tcp, 80, goto("service-X/ns1/svc1/tcp/p80")),
        (Protocol::Udp, 53, Verdict::Drop),
        (Protocol::Sctp, 65535, Verdict::Accept),
        (Protocol::Tcp, 1, Verdict::Jump(n("mark-for-masquerade"))),
        (Protocol::Tcp, 2, Verdict::Return),
    ]
    .into_iter()
    .enumerate()
    {
        service_ips.elements.push(MapElement {
            key: vec![
                KeyValue::Addr(vip(41 + i as u16)),
                KeyValue::Proto(proto),
                KeyValue::Port(port),
            ],
            verdict,
            comment: (i == 1).then(|| c("ns2/svc2:dns")),
        });
    }
    rs.maps.insert(n("service-ips"), service_ips);
    let mut nodeports = Map::new(vec![KeyType::InetProto, KeyType::InetService], None);
    nodeports.elements.push(MapElement {
        key: vec![KeyValue::Proto(Protocol::Tcp), KeyValue::Port(30001)],
        verdict: goto("service-X/ns1/svc1/tcp/p80"),
        comment: None,
    });
    rs.maps.insert(n("service-nodeports"), nodeports);
    rs
}

/// Loads `dump` with `nft -f` into a namespace of its own and lists the table
/// back.
fn load_and_list(tag: &str, dump: &str, family: Family) -> String {
    let ns = Netns::new(tag);
    let (ok, out) = ns.run(&["nft", "-f", "-"], dump);
    assert!(ok, "nft -f refused the table: {out}\n{dump}");
    let (ok, listing) = ns.run(&["nft", "list", "table", family.as_str(), "kube-proxy"], "");
    assert!(ok, "nft list table failed: {listing}");
    listing
}

#[test]
fn kernel_lists_back_what_was_loaded() {
    if !nft_available("kernel_lists_back_what_was_loaded") {
        return;
    }
    let mut tables = vec![("rich4", rich(Family::Ip)), ("rich6", rich(Family::Ip6))];
    for name in [
        "overall.nft",
        "bad-ips.nft",
        "sync-repeated-emptied.nft",
        "startup-loaded.nft",
    ] {
        tables.push((name, parse(&kube_proxy(name)).unwrap()));
    }
    let compiled = svcnat::compile::nftables(
        &crate::nft_kube_proxy::overall_state(),
        &crate::nft_kube_proxy::fake_config(svcnat::model::IpFamily::Ipv4),
    )
    .unwrap();
    tables.push(("compiled overall", compiled));
    for (i, (what, ruleset)) in tables.iter().enumerate() {
        let listing = load_and_list(&format!("nftrt{i}"), &ruleset.to_dump(), ruleset.family);
        let listed = parse(&listing).unwrap_or_else(|e| panic!("{what}: {e}\n{listing}"));
        assert_eq!(
            canonicalize(&listed).to_dump(),
            canonicalize(ruleset).to_dump(),
            "{what}: listed back differently:\n{listing}"
        );
        assert_eq!(canonicalize(&listed), canonicalize(ruleset), "{what}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random compiled tables (both families, every feature and config
    /// option), loaded into the kernel, listed back and read: equal to what
    /// was compiled, up to the canonical form.
    #[test]
    fn compiled_tables_list_back(
        parts in crate::properties::rich_cluster(),
        config in crate::properties::rich_config(),
    ) {
        if !nft_available("compiled_tables_list_back") {
            return Ok(());
        }
        let state = crate::properties::state_of(&parts);
        let Ok(ruleset) = svcnat::compile::nftables(&state, &config) else {
            return Ok(());
        };
        let listing = load_and_list("nftrtp", &ruleset.to_dump(), ruleset.family);
        let listed = parse(&listing).map_err(|e| TestCaseError::fail(format!("{e}\n{listing}")))?;
        prop_assert_eq!(canonicalize(&listed).to_dump(), canonicalize(&ruleset).to_dump());
    }
}

// ---------------------------------------------------------------------------
// The tracer

/// kube-proxy's test node: its addresses (`testNodeIPs`).
pub(crate) fn test_node() -> Node {
    Node::new(
        [
            "192.168.0.2",
            "192.168.1.2",
            "192.168.99.11",
            "2001:db8::1",
            "2001:db8:1::2",
        ]
        .map(ip),
    )
}

fn overall() -> Ruleset {
    parse(&kube_proxy("overall.nft")).unwrap()
}

/// The outcomes as `verdict destination masquerade probability`, sorted.
fn outcomes(t: &Trace) -> Vec<String> {
    let total: f64 = t.outcomes.iter().map(|o| o.probability).sum();
    assert!((total - 1.0).abs() < 1e-9, "probabilities sum to {total}");
    let mut out: Vec<String> = t
        .outcomes
        .iter()
        .map(|o| {
            format!(
                "{} {} masq={} p={:.3}",
                o.verdict, o.destination, o.masquerade, o.probability
            )
        })
        .collect();
    out.sort();
    out
}

fn run(rs: &Ruleset, src: &str, dst: &str, port: u16) -> Vec<String> {
    let packet = Packet::tcp(ip(src), ip(dst), port);
    outcomes(&trace(rs, &packet, &test_node()).unwrap())
}

#[test]
fn the_overall_table_traces_as_kube_proxy_means_it() {
    let rs = overall();
    // svc1, ClusterIP: a pod keeps its source, another source is masqueraded,
    // the endpoint itself hairpins (masqueraded).
    assert_eq!(
        run(&rs, "10.0.0.2", "172.30.0.41", 80),
        ["accept 10.180.0.1:80 masq=false p=1.000"]
    );
    assert_eq!(
        run(&rs, "203.0.113.2", "172.30.0.41", 80),
        ["accept 10.180.0.1:80 masq=true p=1.000"]
    );
    assert_eq!(
        run(&rs, "10.180.0.1", "172.30.0.41", 80),
        ["accept 10.180.0.1:80 masq=true p=1.000"]
    );
    // svc1 has no port 443: rejected; an unallocated cluster IP is dropped.
    assert_eq!(
        run(&rs, "10.0.0.2", "172.30.0.41", 443),
        ["reject 172.30.0.41:443 masq=false p=1.000"]
    );
    assert_eq!(
        run(&rs, "10.0.0.2", "172.30.0.99", 80),
        ["drop 172.30.0.99:80 masq=false p=1.000"]
    );
    // svc2, Local policy with no local endpoint: pods are short-circuited to
    // the cluster chain, outside clients are dropped (node port and LB IP).
    assert_eq!(
        run(&rs, "10.0.0.2", "1.2.3.4", 80),
        ["accept 10.180.0.2:80 masq=false p=1.000"]
    );
    assert_eq!(
        run(&rs, "203.0.113.2", "1.2.3.4", 80),
        ["drop 1.2.3.4:80 masq=false p=1.000"]
    );
    assert_eq!(
        run(&rs, "203.0.113.2", "192.168.0.2", 3001),
        ["drop 192.168.0.2:3001 masq=false p=1.000"]
    );
    // svc3, NodePort: masqueraded; the node port on another node address is
    // not a service (nodeport-ips holds 192.168.0.2 only).
    assert_eq!(
        run(&rs, "203.0.113.2", "192.168.0.2", 3003),
        ["accept 10.180.0.3:80 masq=true p=1.000"]
    );
    assert_eq!(
        run(&rs, "203.0.113.2", "192.168.1.2", 3003),
        ["accept 192.168.1.2:3003 masq=false p=1.000"]
    );
    // svc4: two endpoints, half each; its external IP masquerades.
    assert_eq!(
        run(&rs, "10.0.0.2", "172.30.0.44", 80),
        [
            "accept 10.180.0.4:80 masq=false p=0.500",
            "accept 10.180.0.5:80 masq=false p=0.500"
        ]
    );
    assert_eq!(
        run(&rs, "10.0.0.2", "192.168.99.33", 80),
        [
            "accept 10.180.0.4:80 masq=true p=0.500",
            "accept 10.180.0.5:80 masq=true p=0.500"
        ]
    );
    // svc5: the LB IP from inside its source ranges, and from outside them.
    assert_eq!(
        run(&rs, "203.0.113.2", "5.6.7.8", 80),
        ["accept 10.180.0.3:80 masq=true p=1.000"]
    );
    assert_eq!(
        run(&rs, "203.0.113.130", "5.6.7.8", 80),
        ["drop 5.6.7.8:80 masq=false p=1.000"]
    );
    // svc6: no endpoints.
    assert_eq!(
        run(&rs, "10.0.0.2", "172.30.0.46", 80),
        ["reject 172.30.0.46:80 masq=false p=1.000"]
    );
}

#[test]
fn paths_name_the_rules_taken() {
    let rs = overall();
    let packet = Packet::tcp(ip("203.0.113.2"), ip("192.168.0.2"), 3003);
    let t = trace(&rs, &packet, &test_node()).unwrap();
    let path: Vec<String> = t.outcomes[0].path.iter().map(|r| r.short()).collect();
    assert_eq!(
        path,
        [
            "filter-prerouting-pre-dnat:1",
            "nat-prerouting:1",
            "services:2",
            "external-4AT6LBPK-ns3/svc3/tcp/p80:1",
            "mark-for-masquerade:1",
            "external-4AT6LBPK-ns3/svc3/tcp/p80:2",
            "service-4AT6LBPK-ns3/svc3/tcp/p80:2",
            "endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80:2",
            "filter-forward:1",
            "filter-forward:2",
            "nat-postrouting:1",
            "masquerading:2",
            "masquerading:3",
        ]
    );
    assert_eq!(
        t.outcomes[0].path[0].to_string(),
        "kube-proxy/filter-prerouting-pre-dnat:1"
    );
}

#[test]
fn session_affinity_is_taken_as_none_and_reported() {
    let rs = overall();
    let packet = Packet::tcp(ip("10.0.0.2"), ip("172.30.0.45"), 80);
    let t = trace(&rs, &packet, &test_node()).unwrap();
    assert_eq!(outcomes(&t), ["accept 10.180.0.3:80 masq=false p=1.000"]);
    assert_eq!(t.affinity.len(), 1, "{:?}", t.affinity);
    let a = &t.affinity[0];
    assert_eq!(a.at.short(), "service-HVFWP5L3-ns5/svc5/tcp/p80:2");
    assert_eq!(
        a.what,
        "ip saddr @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"
    );
    assert!(
        t.assumptions.iter().any(|s| s.contains("session affinity")),
        "{:?}",
        t.assumptions
    );
    assert!(t.unevaluated.is_empty());
    // The endpoint chain's `update` is on the path: the record it makes.
    let path: Vec<String> = t.outcomes[0].path.iter().map(|r| r.short()).collect();
    assert!(
        path.contains(&"endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80:2".to_owned()),
        "{path:?}"
    );
}

#[test]
fn local_traffic_walks_the_output_path() {
    let rs = overall();
    let node = test_node();
    // The node to a cluster IP: nat-output DNATs, masqueraded (not a pod).
    let packet = Packet::tcp(ip("192.168.0.2"), ip("172.30.0.41"), 80).from_local();
    let t = trace(&rs, &packet, &node).unwrap();
    assert_eq!(outcomes(&t), ["accept 10.180.0.1:80 masq=true p=1.000"]);
    let path: Vec<String> = t.outcomes[0].path.iter().map(|r| r.short()).collect();
    assert_eq!(path[0], "filter-output-pre-dnat:1", "{path:?}");
    assert_eq!(path[1], "nat-output:1", "{path:?}");
    // The node to its own node port with no service: to the node, through
    // filter-input on lo.
    let packet = Packet::tcp(ip("192.168.0.2"), ip("192.168.0.2"), 9999).from_local();
    let t = trace(&rs, &packet, &node).unwrap();
    assert_eq!(outcomes(&t), ["accept 192.168.0.2:9999 masq=false p=1.000"]);
    let chains: BTreeSet<String> = t.outcomes[0]
        .path
        .iter()
        .map(|r| r.chain.to_string())
        .collect();
    assert!(chains.contains("filter-input"), "{chains:?}");
}

/// A table of hand-written rules in the dump form.
fn table(body: &str) -> Ruleset {
    parse(&format!("add table ip t\n{body}")).unwrap()
}

#[test]
fn base_chains_run_by_priority_and_accept_ends_one_chain_only() {
    let rs = table(
        "add chain ip t late { type filter hook prerouting priority 10 ; }\n\
         add chain ip t early { type filter hook prerouting priority -300 ; }\n\
         add rule ip t early mark set mark or 0x1\n\
         add rule ip t early accept\n\
         add rule ip t late mark and 0x1 == 0x1 drop\n",
    );
    let t = trace(
        &rs,
        &Packet::tcp(ip("1.1.1.1"), ip("2.2.2.2"), 80),
        &test_node(),
    )
    .unwrap();
    assert_eq!(outcomes(&t), ["drop 2.2.2.2:80 masq=false p=1.000"]);
    let path: Vec<String> = t.outcomes[0].path.iter().map(|r| r.short()).collect();
    assert_eq!(path, ["early:1", "early:2", "late:1"]);
}

#[test]
fn jumps_gotos_returns_and_interfaces() {
    let rs = table(
        "add chain ip t in { type filter hook prerouting priority 0 ; }\n\
         add chain ip t a\nadd chain ip t b\n\
         add rule ip t in jump a\n\
         add rule ip t in mark and 0x2 == 0x2 drop\n\
         add rule ip t in mark and 0x4 == 0x4 reject\n\
         add rule ip t a goto b\n\
         add rule ip t a mark set mark or 0x4\n\
         add rule ip t b iifname veth* return\n\
         add rule ip t b mark set mark or 0x2\n",
    );
    let node = test_node();
    let from = |iface: &str| Packet::tcp(ip("1.1.1.1"), ip("2.2.2.2"), 80).arriving_on(iface);
    // goto b, b returns at once (veth*), and `a`'s rule after the goto is not
    // run: back in `in`, neither mark is set.
    let t = trace(&rs, &from("veth12"), &node).unwrap();
    assert_eq!(outcomes(&t), ["accept 2.2.2.2:80 masq=false p=1.000"]);
    assert_eq!(t.outcomes[0].mark, 0);
    let t = trace(&rs, &from("eth0"), &node).unwrap();
    assert_eq!(outcomes(&t), ["drop 2.2.2.2:80 masq=false p=1.000"]);
}

#[test]
fn numgen_branches_sum_to_one_and_merge() {
    let rs = table(
        "add chain ip t nat { type nat hook prerouting priority -100 ; }\n\
         add chain ip t a\nadd chain ip t b\n\
         add rule ip t nat numgen random mod 3 vmap { 0 : goto a , 1 : goto b , 2 : goto a }\n\
         add rule ip t a dnat to 10.0.0.1:80\n\
         add rule ip t b dnat to 10.0.0.2:80\n",
    );
    let t = trace(
        &rs,
        &Packet::tcp(ip("1.1.1.1"), ip("2.2.2.2"), 80),
        &test_node(),
    )
    .unwrap();
    assert_eq!(
        outcomes(&t),
        [
            "accept 10.0.0.1:80 masq=false p=0.667",
            "accept 10.0.0.2:80 masq=false p=0.333"
        ]
    );
    let merged = t
        .outcomes
        .iter()
        .find(|o| o.destination.port() == 80 && o.ways == 2);
    assert!(merged.is_some(), "{:?}", t.outcomes);
}

#[test]
fn what_cannot_be_evaluated_is_reported_not_guessed() {
    // A map whose key does not fit the lookup: nft refuses it; the tracer
    // takes it as no element and says so.
    let rs = table(
        "add chain ip t in { type filter hook prerouting priority 0 ; }\n\
         add map ip t m { type inet_proto . inet_service : verdict ; }\n\
         add set ip t s { type inet_service ; }\n\
         add rule ip t in ip daddr . meta l4proto . th dport vmap @m\n\
         add rule ip t in ip daddr @s drop\n\
         add rule ip t in ip daddr 9.9.9.9 ip saddr @s drop\n\
         add element ip t m { tcp . 80 : drop }\n",
    );
    let t = trace(
        &rs,
        &Packet::tcp(ip("1.1.1.1"), ip("2.2.2.2"), 80),
        &test_node(),
    )
    .unwrap();
    assert_eq!(outcomes(&t), ["accept 2.2.2.2:80 masq=false p=1.000"]);
    let at: Vec<String> = t.unevaluated.iter().map(|u| u.at.short()).collect();
    // The third rule is ruled out by its address match: nothing to report.
    assert_eq!(at, ["in:1", "in:2"]);
    assert_eq!(
        t.unevaluated[0].what,
        "ip daddr . meta l4proto . th dport vmap @m"
    );
    assert!(
        t.unevaluated[0].taken_as.contains("key type"),
        "{:?}",
        t.unevaluated
    );
}

#[test]
fn tables_the_kernel_refuses_are_errors() {
    let node = test_node();
    let packet = Packet::tcp(ip("1.1.1.1"), ip("2.2.2.2"), 80);
    let err = |body: &str| trace(&table(body), &packet, &node).unwrap_err();
    let missing = err(
        "add chain ip t in { type filter hook prerouting priority 0 ; }\n\
         add rule ip t in jump nowhere\n",
    );
    assert!(
        matches!(&missing, TraceError::NftMissing { kind: "chain", name, from } if name == "nowhere" && from.short() == "in:1"),
        "{missing}"
    );
    let missing_map = err(
        "add chain ip t in { type filter hook prerouting priority 0 ; }\n\
         add rule ip t in meta l4proto . th dport vmap @m\n",
    );
    assert!(
        matches!(missing_map, TraceError::NftMissing { kind: "map", .. }),
        "{missing_map}"
    );
    let missing_set = err("add chain ip t x\nadd rule ip t x ip saddr @s accept\n");
    assert!(
        matches!(missing_set, TraceError::NftMissing { kind: "set", .. }),
        "{missing_set}"
    );
    let in_map = err(
        "add chain ip t in { type filter hook prerouting priority 0 ; }\n\
         add map ip t m { type inet_proto . inet_service : verdict ; }\n\
         add rule ip t in meta l4proto . th dport vmap @m\n\
         add element ip t m { tcp . 80 : goto gone }\n",
    );
    assert!(
        matches!(&in_map, TraceError::NftMissing { kind: "chain", from, .. } if from.short() == "in:1"),
        "{in_map}"
    );
    let looped = err(
        "add chain ip t in { type filter hook prerouting priority 0 ; }\n\
         add chain ip t a\nadd chain ip t b\n\
         add rule ip t in jump a\nadd rule ip t a jump b\nadd rule ip t b goto a\n",
    );
    assert!(matches!(looped, TraceError::NftChains { .. }), "{looped}");
    // 17 nested jumps below the base chain.
    let mut deep = "add chain ip t in { type filter hook prerouting priority 0 ; }\nadd rule ip t in jump c0\n".to_owned();
    for i in 0..17 {
        deep += &format!("add chain ip t c{i}\n");
    }
    for i in 0..16 {
        deep += &format!("add rule ip t c{i} jump c{}\n", i + 1);
    }
    let too_deep = err(&deep);
    assert!(
        matches!(too_deep, TraceError::NftChains { .. }),
        "{too_deep}"
    );
    // 16 are fine.
    let fine = deep.replace("add rule ip t c15 jump c16\n", "");
    trace(&table(&fine), &packet, &node).unwrap();
    // A packet of the other family.
    let v6 = Packet::tcp(ip("::1"), ip("::2"), 80);
    assert!(matches!(
        trace(&table(""), &v6, &node),
        Err(TraceError::Family { .. })
    ));
}

#[test]
fn a_shared_chain_graph_is_walked_in_linear_work() {
    // 15 chains, each forking into the next twice (2^15 ways to the end), all
    // ending the same: one outcome, the memo keeps the work to a few
    // evaluations per chain.
    let mut body = "add chain ip t in { type filter hook prerouting priority 0 ; }\nadd rule ip t in jump c0\n".to_owned();
    let n = 15;
    for i in 0..=n {
        body += &format!("add chain ip t c{i}\n");
    }
    for i in 0..n {
        body += &format!(
            "add rule ip t c{i} numgen random mod 2 vmap {{ 0 : jump c{j} , 1 : jump c{j} }}\n",
            j = i + 1
        );
    }
    body += &format!("add rule ip t c{n} mark set mark xor 0x1\n");
    let t = trace(
        &table(&body),
        &Packet::tcp(ip("1.1.1.1"), ip("2.2.2.2"), 80),
        &test_node(),
    )
    .unwrap();
    assert_eq!(t.outcomes.len(), 1, "{:?}", t.outcomes);
    assert_eq!(t.outcomes[0].ways, 1 << n);
    assert_eq!(t.outcomes[0].mark, 1);
    assert!(t.rules_evaluated < 100, "{} evaluations", t.rules_evaluated);
}

#[test]
fn a_hooks_later_nat_chains_pass_over_a_packet_already_nated() {
    let rs = table(
        "add chain ip t first { type nat hook prerouting priority -100 ; }\n\
         add chain ip t second { type nat hook prerouting priority -90 ; }\n\
         add chain ip t after { type filter hook prerouting priority 0 ; }\n\
         add rule ip t first ip daddr 2.2.2.2 dnat to 10.0.0.1:80\n\
         add rule ip t second dnat to 10.0.0.2:80\n\
         add rule ip t after mark set mark or 0x1\n",
    );
    let node = test_node();
    let t = trace(&rs, &Packet::tcp(ip("1.1.1.1"), ip("2.2.2.2"), 80), &node).unwrap();
    assert_eq!(outcomes(&t), ["accept 10.0.0.1:80 masq=false p=1.000"]);
    assert_eq!(t.outcomes[0].mark, 1);
    // A packet the first one leaves alone meets the second.
    let t = trace(&rs, &Packet::tcp(ip("1.1.1.1"), ip("3.3.3.3"), 80), &node).unwrap();
    assert_eq!(outcomes(&t), ["accept 10.0.0.2:80 masq=false p=1.000"]);
}

/// Random tables the kernel would load: chains `c0..cN` where a chain only
/// enters chains after it (jumps, gotos, numgen, and the maps the first half
/// looks up, whose verdicts name the second half), a static and a dynamic set.
fn traceable_table() -> impl Strategy<Value = Ruleset> {
    const N: usize = 8;
    let n = |s: String| Name::new(s).unwrap();
    let later = move |i: usize| {
        (i + 1..N)
            .prop_map(move |j| Name::new(format!("c{j}")).unwrap())
            .boxed()
    };
    let verdict_after = move |i: usize| {
        let mut arms: Vec<BoxedStrategy<Verdict>> = vec![
            Just(Verdict::Accept).boxed(),
            Just(Verdict::Drop).boxed(),
            Just(Verdict::Reject).boxed(),
            Just(Verdict::Return).boxed(),
        ];
        if i + 1 < N {
            arms.push(later(i).prop_map(Verdict::Jump).boxed());
            arms.push(later(i).prop_map(Verdict::Goto).boxed());
        }
        prop::strategy::Union::new(arms).boxed()
    };
    let addr = || {
        prop::sample::select(vec!["10.0.0.1", "10.0.0.2", "192.168.0.2", "1.2.3.4"]).prop_map(ip)
    };
    let stmt = move |i: usize| {
        let dir = prop_oneof![Just(Dir::Saddr), Just(Dir::Daddr)];
        let op = prop_oneof![Just(Op::Eq), Just(Op::Ne)];
        let mut arms: Vec<BoxedStrategy<Stmt>> = vec![
            (dir.clone(), op.clone(), addr())
                .prop_map(|(dir, op, a)| Stmt::Addr {
                    dir,
                    op,
                    value: AddrValue::Ip(a),
                })
                .boxed(),
            (
                dir.clone(),
                op.clone(),
                prop::sample::select(vec!["static", "affinity"]),
            )
                .prop_map(|(dir, op, s)| Stmt::Addr {
                    dir,
                    op,
                    value: AddrValue::Set(Name::new(s).unwrap()),
                })
                .boxed(),
            (dir.clone(), op)
                .prop_map(|(dir, op)| Stmt::Addr {
                    dir,
                    op,
                    value: AddrValue::Anon(vec![
                        AddrItem::Net("10.0.0.0/8".parse().unwrap()),
                        AddrItem::Ip(ip("1.2.3.4")),
                    ]),
                })
                .boxed(),
            protocol().prop_map(Stmt::L4Proto).boxed(),
            Just(Stmt::CtStateNew).boxed(),
            dir.prop_map(Stmt::FibLocal).boxed(),
            (
                prop_oneof![Just(Op::Eq), Just(Op::Ne)],
                "eth[01]|veth",
                any::<bool>(),
            )
                .prop_map(|(op, name, prefix)| Stmt::Iifname {
                    op,
                    name: IfName::new(name, prefix).unwrap(),
                })
                .boxed(),
            (0u32..4, 0u32..4)
                .prop_map(|(bits, value)| Stmt::MarkAnd { bits, value })
                .boxed(),
            (prop_oneof![Just(MarkOp::Or), Just(MarkOp::Xor)], 0u32..4)
                .prop_map(|(op, bits)| Stmt::MarkSet { op, bits })
                .boxed(),
            Just(Stmt::UpdateSaddr(Name::new("affinity").unwrap())).boxed(),
            (addr(), prop::sample::select(vec![80u16, 8080]))
                .prop_map(|(a, p)| Stmt::DnatTo(SocketAddr::new(a, p)))
                .boxed(),
            any::<bool>()
                .prop_map(|fully_random| Stmt::Masquerade { fully_random })
                .boxed(),
            verdict_after(i).prop_map(Stmt::Verdict).boxed(),
        ];
        if i + 1 < N {
            arms.push(
                prop::collection::vec(verdict_after(i), 1..4)
                    .prop_map(Stmt::Numgen)
                    .boxed(),
            );
        }
        if i < N / 2 {
            arms.push(
                Just(Stmt::Vmap {
                    key: vec![KeyField::Daddr, KeyField::L4Proto, KeyField::ThDport],
                    map: Name::new("m").unwrap(),
                })
                .boxed(),
            );
        }
        prop::strategy::Union::new(arms).boxed()
    };
    let chain = move |i: usize| {
        let rule = prop::collection::vec(stmt(i), 1..4).prop_map(Rule::new);
        prop::collection::vec(rule, 0..4).boxed()
    };
    let chains: Vec<_> = (0..N).map(chain).collect();
    let base = (
        prop::sample::subsequence((0..N).collect::<Vec<_>>(), 1..4),
        prop::collection::vec(base_chain(-200..200), 4),
    );
    let elements = prop::collection::vec(
        (
            addr(),
            protocol(),
            prop::sample::select(vec![80u16, 8080]),
            verdict_after(N / 2 - 1),
        ),
        0..6,
    );
    (chains, base, elements, prop::collection::vec(addr(), 0..3)).prop_map(
        move |(rules, (bases, kinds), elements, members)| {
            let mut rs = Ruleset::new(Family::Ip, n("t".into()), None);
            for (i, rules) in rules.into_iter().enumerate() {
                rs.chains.insert(
                    n(format!("c{i}")),
                    Chain {
                        rules,
                        ..Chain::default()
                    },
                );
            }
            for (base, i) in kinds.into_iter().zip(bases) {
                rs.chains[i].base = Some(base);
            }
            let mut stat = Set::new(vec![KeyType::Ipv4Addr], None);
            for a in members {
                let e = Element {
                    key: vec![KeyValue::Addr(a)],
                    comment: None,
                };
                if !stat.elements.contains(&e) {
                    stat.elements.push(e);
                }
            }
            rs.sets.insert(n("static".into()), stat);
            let mut affinity = Set::new(vec![KeyType::Ipv4Addr], None);
            affinity.flags = vec![SetFlag::Dynamic, SetFlag::Timeout];
            rs.sets.insert(n("affinity".into()), affinity);
            let mut m = Map::new(
                vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
                None,
            );
            for (a, p, port, verdict) in elements {
                let key = vec![KeyValue::Addr(a), KeyValue::Proto(p), KeyValue::Port(port)];
                if !m.elements.iter().any(|e| e.key == key) {
                    m.elements.push(MapElement {
                        key,
                        verdict,
                        comment: None,
                    });
                }
            }
            rs.maps.insert(n("m".into()), m);
            rs
        },
    )
}

fn packet() -> impl Strategy<Value = Packet> {
    let addr = prop::sample::select(vec![
        "10.0.0.1",
        "10.0.0.2",
        "192.168.0.2",
        "1.2.3.4",
        "8.8.8.8",
    ]);
    (
        addr.clone(),
        addr,
        protocol(),
        prop::sample::select(vec![80u16, 8080]),
        0u8..3,
    )
        .prop_map(|(src, dst, proto, port, entry)| {
            let p = Packet::new(proto, ip(src), ip(dst), port);
            match entry {
                0 => p.from_local(),
                1 => p.arriving_on("eth0"),
                _ => p.arriving_on("veth7"),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any table the kernel would load traces: the outcomes' probabilities sum
    /// to 1, every rule on a path exists, and neither the order of the table's
    /// chains, sets and maps nor a trip through the dump form changes the
    /// trace.
    #[test]
    fn traces_are_whole_and_do_not_depend_on_declaration_order(rs in traceable_table(), p in packet()) {
        let node = Node::new([ip("192.168.0.2")]);
        let t = trace(&rs, &p, &node).map_err(|e| TestCaseError::fail(format!("{e}\n{}", rs.to_dump())))?;
        let total: f64 = t.outcomes.iter().map(|o| o.probability).sum();
        prop_assert!((total - 1.0).abs() < 1e-9, "{total}");
        for o in &t.outcomes {
            prop_assert!(o.probability > 0.0 && o.probability <= 1.0 + 1e-12);
            for r in &o.path {
                let chain = &rs.chains[r.chain.as_str()];
                prop_assert!(r.index >= 1 && r.index <= chain.rules.len(), "{r}");
            }
        }
        let mut reversed = rs.clone();
        reversed.chains.reverse();
        reversed.sets.reverse();
        reversed.maps.reverse();
        prop_assert_eq!(&trace(&reversed, &p, &node).unwrap(), &t);
        let reread = parse_dump(&rs.to_dump()).unwrap();
        prop_assert_eq!(&trace(&reread, &p, &node).unwrap(), &t);
    }
}

/// The `trace` example in nftables mode.
#[cfg(feature = "k8s")]
mod example {
    use crate::fixtures::run_example;

    const CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster.json");

    fn json(out: &str) -> serde_json::Value {
        serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn overall_dump() -> String {
        super::kube_proxy("overall.nft")
    }

    fn save(extra: &[&str], stdin: &str) -> (i32, String, String) {
        let mut args = vec![
            "--proxy-mode",
            "nftables",
            "--node-ip",
            "192.168.0.2",
            "--save",
            "-",
        ];
        args.extend(extra);
        run_example("trace", &args, stdin)
    }

    #[test]
    fn a_saved_table_traces_with_the_same_json() {
        let flow = [
            "--src",
            "10.0.0.2",
            "--dst",
            "172.30.0.44",
            "--proto",
            "tcp",
            "--dport",
            "80",
            "--json",
        ];
        let (code, out, err) = save(&flow, &overall_dump());
        assert_eq!(code, 0, "{err}");
        let doc = json(&out);
        let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["assumed", "outcomes", "unevaluated"]);
        let outcomes = doc["outcomes"].as_array().unwrap();
        assert_eq!(outcomes.len(), 2, "{out}");
        for (o, to) in outcomes.iter().zip(["10.180.0.4:80", "10.180.0.5:80"]) {
            assert_eq!(o["probability"], 0.5);
            assert_eq!(o["verdict"], "accept");
            assert_eq!(o["destination"], to);
            assert_eq!(o["masquerade"], false);
        }
        let path: Vec<&str> = outcomes[0]["path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(
            path[..3],
            [
                "filter-prerouting-pre-dnat:1",
                "nat-prerouting:1",
                "services:1"
            ]
        );
        assert!(
            out.starts_with("{\"outcomes\":[{\"probability\":0.5,\"verdict\":\"accept\""),
            "{out}"
        );
        // The table form too.
        let (code, table, err) = save(&flow[..flow.len() - 1], &overall_dump());
        assert_eq!(code, 0, "{err}");
        assert!(
            table.lines().next().unwrap().contains("probability"),
            "{table}"
        );
        assert!(table.contains("kube-proxy/services:1"), "{table}");
    }

    #[test]
    fn a_listed_table_and_affinity() {
        // nft's listing of the same rules, and a session-affinity service:
        // the dynamic set's lookup is printed as unevaluated.
        let listing = super::data("listing-v4.txt");
        let flow = [
            "--src",
            "10.0.0.2",
            "--dst",
            "172.30.0.41",
            "--proto",
            "tcp",
            "--dport",
            "80",
            "--json",
        ];
        let (code, out, err) = save(&flow, &listing);
        assert_eq!(code, 0, "{err}");
        let doc = json(&out);
        let unevaluated = doc["unevaluated"].as_array().unwrap();
        assert_eq!(unevaluated.len(), 1, "{out}");
        let line = unevaluated[0].as_str().unwrap();
        assert!(
            line.contains("ip saddr @affinity-X") && line.contains("no affinity"),
            "{line}"
        );
        let (code, out, err) = save(
            &[
                "--src",
                "10.0.0.2",
                "--dst",
                "172.30.0.45",
                "--proto",
                "tcp",
                "--dport",
                "80",
                "--json",
            ],
            &overall_dump(),
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            json(&out)["unevaluated"].as_array().unwrap().len(),
            1,
            "{out}"
        );
    }

    #[test]
    fn bad_tables_and_packets_are_one_line_and_exit_2() {
        let flow = [
            "--src",
            "10.0.0.2",
            "--dst",
            "172.30.0.44",
            "--proto",
            "tcp",
            "--dport",
            "80",
        ];
        for (what, stdin) in [
            ("garbage", "hello world\n".to_owned()),
            ("empty", String::new()),
            ("unsupported", "add table ip t\nadd chain ip t c\nadd rule ip t c counter\n".to_owned()),
            ("a loop", "add table ip t\nadd chain ip t c { type nat hook prerouting priority -100 ; }\nadd rule ip t c jump c\n".to_owned()),
        ] {
            let (code, out, err) = save(&flow, &stdin);
            assert_eq!((code, out.as_str(), err.lines().count()), (2, "", 1), "{what}: {err}");
            assert!(err.starts_with("trace: "), "{what}: {err}");
        }
        // An IPv6 packet through an IPv4 table.
        let v6 = [
            "--src", "fd00::2", "--dst", "fd00::3", "--proto", "tcp", "--dport", "80",
        ];
        let (code, out, err) = save(&v6, &overall_dump());
        assert_eq!(
            (code, out.as_str(), err.lines().count()),
            (2, "", 1),
            "{err}"
        );
        // Not UTF-8.
        let path =
            std::env::temp_dir().join(format!("svcnat-nft-trace-{}-latin1", std::process::id()));
        std::fs::write(&path, b"add table ip t { comment \"caf\xe9\" ; }\n").unwrap();
        let mut args = vec!["--proxy-mode", "nftables", "--save", path.to_str().unwrap()];
        args.extend(flow);
        let (code, out, err) = run_example("trace", &args, "");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            (code, out.as_str(), err.lines().count()),
            (2, "", 1),
            "{err}"
        );
        assert!(err.contains("not UTF-8"), "{err}");
        // An unknown mode is a usage error like any bad flag.
        let (code, out, err) = run_example("trace", &["--proxy-mode", "ipvs", "--save", "-"], "");
        assert_eq!(
            (code, out.as_str(), err.lines().count()),
            (2, "", 1),
            "{err}"
        );
    }

    /// The example cluster traced both ways: every served port of every
    /// service, from a pod and (node ports) from outside, ends the same in
    /// both modes, paths aside.
    #[test]
    fn both_modes_agree_on_the_example_cluster() {
        let flows: &[(&str, &str, &str, &str)] = &[
            ("10.244.0.99", "10.96.0.1", "tcp", "443"),
            ("10.244.0.99", "10.96.0.10", "udp", "53"),
            ("10.244.0.99", "10.96.0.10", "tcp", "53"),
            ("10.244.0.99", "10.96.0.10", "tcp", "9153"),
            ("10.244.0.99", "10.96.12.34", "tcp", "80"),
            ("203.0.113.9", "192.168.0.2", "tcp", "30080"),
            ("10.244.0.99", "10.96.7.21", "tcp", "50051"),
            ("10.244.0.99", "10.96.7.40", "tcp", "8080"),
            ("10.244.0.99", "10.96.7.55", "tcp", "80"),
            ("203.0.113.9", "10.96.7.55", "tcp", "80"),
            ("10.244.0.99", "10.96.33.3", "tcp", "9090"),
            ("203.0.113.9", "192.168.0.2", "tcp", "30090"),
            ("10.244.0.99", "10.96.50.50", "tcp", "80"),
            ("10.244.0.99", "10.96.50.50", "tcp", "9100"),
        ];
        for (src, dst, proto, port) in flows {
            let mut results = Vec::new();
            for mode in ["iptables", "nftables"] {
                let args = [
                    "--proxy-mode",
                    mode,
                    "--hostname-override",
                    "node-a",
                    "--node-ip",
                    "192.168.0.2",
                    "--cluster-cidr",
                    "10.244.0.0/16",
                    "--cluster",
                    CLUSTER,
                    "--src",
                    src,
                    "--dst",
                    dst,
                    "--proto",
                    proto,
                    "--dport",
                    port,
                    "--json",
                ];
                let (code, out, err) = run_example("trace", &args, "");
                assert_eq!(code, 0, "{mode} {dst}:{port}: {err}");
                let doc = json(&out);
                let mut outcomes: Vec<String> = doc["outcomes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| {
                        format!(
                            "{} {} {} p={:.6}",
                            o["verdict"],
                            o["destination"],
                            o["masquerade"],
                            o["probability"].as_f64().unwrap()
                        )
                    })
                    .collect();
                outcomes.sort();
                results.push(outcomes);
            }
            assert_eq!(results[0], results[1], "{src} -> {dst}:{port} ({proto})");
        }
    }
}
