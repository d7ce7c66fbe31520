//! Issue 17, part 1: the nftables executors. A table of transactions, each
//! accepted or refused with a kind at an operation, run through [`NftFake`]
//! (always) and through the kernel with [`NftCommand`] in a network namespace of
//! the test's own (root and `nft` needed; skipped otherwise, failed with
//! `SVCNAT_REQUIRE_KERNEL=1`): both must give the expected answer, and after each
//! accepted one both must list the same chains, sets, maps and elements.

use std::collections::BTreeSet;
use std::net::IpAddr;

use svcnat::exec::{NftCommand, NftExecError, NftExecutor, NftFake, RefusalKind};
use svcnat::model::Protocol;
use svcnat::nft::*;

use crate::kernel::{Netns, nft_available};

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn chain(name: &str) -> Operation {
    Operation::AddChain {
        name: n(name),
        base: None,
        comment: None,
    }
}

fn base_chain(name: &str, hook: Hook) -> Operation {
    Operation::AddChain {
        name: n(name),
        base: Some(BaseChain {
            kind: ChainType::Filter,
            hook,
            priority: 0,
        }),
        comment: None,
    }
}

fn rule(chain: &str, stmts: Vec<Stmt>) -> Operation {
    Operation::AddRule {
        chain: n(chain),
        rule: Rule::new(stmts),
    }
}

fn jump(to: &str) -> Stmt {
    Stmt::Verdict(Verdict::Jump(n(to)))
}

fn goto(to: &str) -> Verdict {
    Verdict::Goto(n(to))
}

fn lookup(set: &str) -> Stmt {
    Stmt::Addr {
        dir: Dir::Daddr,
        op: Op::Eq,
        value: AddrValue::Set(n(set)),
    }
}

fn vmap(map: &str) -> Stmt {
    Stmt::Vmap {
        key: vec![KeyField::Daddr, KeyField::L4Proto, KeyField::ThDport],
        map: n(map),
    }
}

fn drop_() -> Stmt {
    Stmt::Verdict(Verdict::Drop)
}

fn svc_key(addr: &str, port: u16) -> Vec<KeyValue> {
    vec![
        KeyValue::Addr(ip(addr)),
        KeyValue::Proto(Protocol::Tcp),
        KeyValue::Port(port),
    ]
}

fn map_element(map: &str, addr: &str, port: u16, verdict: Verdict) -> Operation {
    Operation::AddMapElement {
        map: n(map),
        element: MapElement {
            key: svc_key(addr, port),
            verdict,
            comment: None,
        },
    }
}

fn set_element(set: &str, addr: &str) -> Operation {
    Operation::AddElement {
        set: n(set),
        element: Element {
            key: vec![KeyValue::Addr(ip(addr))],
            comment: None,
        },
    }
}

fn add_set(name: &str, key: Vec<KeyType>, flags: Vec<SetFlag>, timeout: Option<u32>) -> Operation {
    Operation::AddSet {
        name: n(name),
        key,
        flags,
        timeout,
        comment: None,
    }
}

fn svc_map_type(addr: KeyType) -> Vec<KeyType> {
    vec![addr, KeyType::InetProto, KeyType::InetService]
}

fn tx_on(family: Family, table: &str, ops: Vec<Operation>) -> Transaction {
    let mut tx = Transaction::new(family, n(table));
    tx.extend(ops);
    tx
}

fn tx(ops: Vec<Operation>) -> Transaction {
    tx_on(Family::Ip, "t", ops)
}

/// The table every case starts from: `ip t` with a base chain `b` that jumps to
/// `c`, chains `c` and `d`, a set `s` with one address, a dynamic set `a`, a
/// verdict map `m` whose one element goes to `d`, a map `np` keyed by
/// protocol and port and a map `m1` keyed by address; and `ip6 t6` with an IPv6 set `s6`.
fn setup() -> Vec<Transaction> {
    let v4 = tx(vec![
        Operation::AddTable {
            comment: Some(NftComment::new("svcnat test").unwrap()),
        },
        base_chain("b", Hook::Input),
        chain("c"),
        chain("d"),
        add_set("s", vec![KeyType::Ipv4Addr], vec![], None),
        add_set(
            "a",
            vec![KeyType::Ipv4Addr],
            vec![SetFlag::Dynamic, SetFlag::Timeout],
            Some(10800),
        ),
        Operation::AddMap {
            name: n("m"),
            key: svc_map_type(KeyType::Ipv4Addr),
            comment: None,
        },
        Operation::AddMap {
            name: n("np"),
            key: vec![KeyType::InetProto, KeyType::InetService],
            comment: None,
        },
        Operation::AddMap {
            name: n("m1"),
            key: vec![KeyType::Ipv4Addr],
            comment: None,
        },
        rule("b", vec![jump("c")]),
        map_element("m", "1.2.3.4", 80, goto("d")),
        set_element("s", "10.0.0.1"),
    ]);
    let v6 = tx_on(
        Family::Ip6,
        "t6",
        vec![
            Operation::AddTable { comment: None },
            chain("c"),
            add_set("s6", vec![KeyType::Ipv6Addr], vec![], None),
        ],
    );
    vec![v4, v6]
}

/// What a case expects: accepted, or refused with this kind at this operation.
type Expect = Result<(), (RefusalKind, usize)>;

const OK: Expect = Ok(());

fn refused(kind: RefusalKind, index: usize) -> Expect {
    Err((kind, index))
}

/// The cases: each is run on [`setup`]'s tables.
fn cases() -> Vec<(&'static str, Transaction, Expect)> {
    use RefusalKind::*;
    vec![
        (
            "new chain, a rule into it, an element to it",
            tx(vec![
                chain("e"),
                rule("e", vec![jump("d")]),
                map_element("m", "5.5.5.5", 80, goto("e")),
            ]),
            OK,
        ),
        (
            "a jump to a missing chain",
            tx(vec![rule("c", vec![jump("nosuch")])]),
            refused(NotFound, 0),
        ),
        (
            "numgen to a missing chain",
            tx(vec![
                chain("e"),
                rule(
                    "c",
                    vec![Stmt::numgen(vec![goto("e"), goto("nosuch")]).unwrap()],
                ),
            ]),
            refused(NotFound, 1),
        ),
        (
            "a map element to a missing chain",
            tx(vec![map_element("m", "5.5.5.5", 80, goto("nosuch"))]),
            refused(NotFound, 0),
        ),
        (
            "a jump to a base chain",
            tx(vec![rule("c", vec![jump("b")])]),
            refused(Unsupported, 0),
        ),
        (
            "a map element to a base chain",
            tx(vec![map_element("m", "5.5.5.5", 80, goto("b"))]),
            refused(Unsupported, 0),
        ),
        (
            "a lookup of a missing set",
            tx(vec![rule("c", vec![lookup("nosuch"), drop_()])]),
            refused(NotFound, 0),
        ),
        (
            "a lookup of a map keyed by address",
            tx(vec![rule("c", vec![lookup("m1"), drop_()])]),
            OK,
        ),
        (
            "a lookup of a map keyed by more than an address",
            tx(vec![rule("c", vec![lookup("m"), drop_()])]),
            refused(Invalid, 0),
        ),
        (
            "a set as a verdict map",
            tx(vec![rule("c", vec![vmap("s")])]),
            refused(Invalid, 0),
        ),
        (
            "a map looked up with a key of another type",
            tx(vec![rule("c", vec![vmap("np")])]),
            refused(Invalid, 0),
        ),
        (
            "update @set of a set without flags",
            tx(vec![rule("c", vec![Stmt::UpdateSaddr(n("s"))])]),
            OK,
        ),
        (
            "an IPv6 address in an IPv4 set",
            tx(vec![set_element("s", "::1")]),
            refused(Invalid, 0),
        ),
        (
            "an IPv4 address in an IPv6 set",
            tx_on(Family::Ip6, "t6", vec![set_element("s6", "10.0.0.1")]),
            refused(Invalid, 0),
        ),
        (
            "an IPv6 address in a rule of an IPv4 table",
            tx(vec![rule(
                "c",
                vec![Stmt::addr(Dir::Daddr, ip("fd00::1")), drop_()],
            )]),
            refused(Invalid, 0),
        ),
        (
            "a set's element in a map",
            tx(vec![Operation::AddElement {
                set: n("m"),
                element: Element {
                    key: svc_key("5.5.5.5", 80),
                    comment: None,
                },
            }]),
            refused(Invalid, 0),
        ),
        (
            "a map's element in a set",
            tx(vec![Operation::AddMapElement {
                map: n("s"),
                element: MapElement {
                    key: vec![KeyValue::Addr(ip("10.0.0.2"))],
                    verdict: Verdict::Drop,
                    comment: None,
                },
            }]),
            refused(Invalid, 0),
        ),
        (
            "a key of the wrong length",
            tx(vec![Operation::AddMapElement {
                map: n("np"),
                element: MapElement {
                    key: svc_key("5.5.5.5", 80),
                    verdict: Verdict::Drop,
                    comment: None,
                },
            }]),
            refused(Invalid, 0),
        ),
        (
            "a key already in the map with another verdict",
            tx(vec![map_element("m", "1.2.3.4", 80, goto("c"))]),
            refused(Exists, 0),
        ),
        (
            "a key already in the map with the same verdict and another comment",
            tx(vec![Operation::AddMapElement {
                map: n("m"),
                element: MapElement {
                    key: svc_key("1.2.3.4", 80),
                    verdict: goto("d"),
                    comment: Some(NftComment::new("another").unwrap()),
                },
            }]),
            OK,
        ),
        (
            "one key twice in one transaction with two verdicts",
            tx(vec![
                map_element("m", "5.5.5.5", 80, goto("c")),
                map_element("m", "5.5.5.5", 80, goto("d")),
            ]),
            refused(Exists, 1),
        ),
        (
            "an element deleted and added again with another verdict",
            tx(vec![
                Operation::DeleteElement {
                    set: n("m"),
                    key: svc_key("1.2.3.4", 80),
                },
                map_element("m", "1.2.3.4", 80, goto("c")),
            ]),
            OK,
        ),
        (
            "delete a chain a rule jumps to",
            tx(vec![Operation::DeleteChain(n("c"))]),
            refused(Busy, 0),
        ),
        (
            "delete a chain a map element goes to",
            tx(vec![Operation::DeleteChain(n("d"))]),
            refused(Busy, 0),
        ),
        (
            "delete a chain after the element that went to it",
            tx(vec![
                Operation::DeleteElement {
                    set: n("m"),
                    key: svc_key("1.2.3.4", 80),
                },
                Operation::DeleteChain(n("d")),
            ]),
            OK,
        ),
        (
            "delete a chain after flushing the chain that jumped to it",
            tx(vec![
                Operation::FlushChain(n("b")),
                Operation::DeleteChain(n("c")),
            ]),
            OK,
        ),
        (
            "delete a chain that goes to itself",
            tx(vec![
                chain("e"),
                rule("e", vec![Stmt::Verdict(goto("e"))]),
                Operation::DeleteChain(n("e")),
            ]),
            refused(Busy, 2),
        ),
        (
            "delete a chain with rules that nothing jumps to",
            tx(vec![
                chain("e"),
                rule("e", vec![jump("d")]),
                Operation::DeleteChain(n("e")),
            ]),
            OK,
        ),
        (
            "delete a set a rule looks up",
            tx(vec![
                rule("c", vec![lookup("s"), drop_()]),
                Operation::DeleteSet(n("s")),
            ]),
            refused(Busy, 1),
        ),
        (
            "delete a map a rule looks up",
            tx(vec![
                rule("c", vec![vmap("m")]),
                Operation::DeleteMap(n("m")),
            ]),
            refused(Busy, 1),
        ),
        (
            "delete a dynamic set a rule updates",
            tx(vec![
                rule("c", vec![Stmt::UpdateSaddr(n("a"))]),
                Operation::DeleteSet(n("a")),
            ]),
            refused(Busy, 1),
        ),
        (
            "delete a map as a set",
            tx(vec![Operation::DeleteSet(n("np"))]),
            OK,
        ),
        (
            "flush a map as a set",
            tx(vec![Operation::FlushSet(n("m"))]),
            refused(NotFound, 0),
        ),
        (
            "flush a set as a map",
            tx(vec![Operation::FlushMap(n("s"))]),
            refused(NotFound, 0),
        ),
        (
            "flush a set and a map, delete them",
            tx(vec![
                Operation::FlushSet(n("s")),
                Operation::FlushMap(n("m")),
                Operation::DeleteSet(n("s")),
                Operation::DeleteMap(n("m")),
            ]),
            OK,
        ),
        (
            "delete a missing chain",
            tx(vec![Operation::DeleteChain(n("nosuch"))]),
            refused(NotFound, 0),
        ),
        (
            "flush a missing chain",
            tx(vec![Operation::FlushChain(n("nosuch"))]),
            refused(NotFound, 0),
        ),
        (
            "delete a missing set",
            tx(vec![Operation::DeleteSet(n("nosuch"))]),
            refused(NotFound, 0),
        ),
        (
            "delete a missing element",
            tx(vec![Operation::DeleteElement {
                set: n("s"),
                key: vec![KeyValue::Addr(ip("9.9.9.9"))],
            }]),
            refused(NotFound, 0),
        ),
        (
            "a rule into a missing chain",
            tx(vec![rule("nosuch", vec![drop_()])]),
            refused(NotFound, 0),
        ),
        (
            "an element into a missing set",
            tx(vec![set_element("nosuch", "1.1.1.1")]),
            refused(NotFound, 0),
        ),
        (
            "a regular chain added again as a base chain",
            tx(vec![base_chain("c", Hook::Input)]),
            refused(Exists, 0),
        ),
        (
            "a base chain added again with another hook",
            tx(vec![base_chain("b", Hook::Forward)]),
            refused(Unsupported, 0),
        ),
        (
            "a base chain added again with another priority",
            tx(vec![Operation::AddChain {
                name: n("b"),
                base: Some(BaseChain {
                    kind: ChainType::Filter,
                    hook: Hook::Input,
                    priority: 10,
                }),
                comment: None,
            }]),
            refused(Unsupported, 0),
        ),
        (
            "a base chain added again with another type",
            tx(vec![Operation::AddChain {
                name: n("b"),
                base: Some(BaseChain {
                    kind: ChainType::Nat,
                    hook: Hook::Input,
                    priority: 0,
                }),
                comment: None,
            }]),
            refused(Exists, 0),
        ),
        (
            "a base chain added again without its hook, deleted, added again",
            tx(vec![
                chain("b"),
                Operation::DeleteChain(n("b")),
                base_chain("b", Hook::Forward),
            ]),
            OK,
        ),
        (
            "a set added again with another type",
            tx(vec![add_set("s", vec![KeyType::Ipv6Addr], vec![], None)]),
            refused(Exists, 0),
        ),
        (
            "a set added again with other flags",
            tx(vec![add_set(
                "a",
                vec![KeyType::Ipv4Addr],
                vec![SetFlag::Timeout],
                Some(10800),
            )]),
            refused(Exists, 0),
        ),
        (
            "a set added again with another timeout",
            tx(vec![add_set(
                "a",
                vec![KeyType::Ipv4Addr],
                vec![SetFlag::Dynamic, SetFlag::Timeout],
                Some(100),
            )]),
            OK,
        ),
        (
            "a map where a set is",
            tx(vec![Operation::AddMap {
                name: n("s"),
                key: svc_map_type(KeyType::Ipv4Addr),
                comment: None,
            }]),
            refused(Exists, 0),
        ),
        (
            "a set where a map is",
            tx(vec![add_set("m", vec![KeyType::Ipv4Addr], vec![], None)]),
            refused(Exists, 0),
        ),
        (
            "a chain in a missing table",
            tx_on(Family::Ip, "nosuch", vec![chain("c")]),
            refused(NotFound, 0),
        ),
        (
            "delete a missing table",
            tx_on(Family::Ip, "nosuch", vec![Operation::DeleteTable]),
            refused(NotFound, 0),
        ),
        (
            "add a table, delete it",
            tx_on(
                Family::Ip,
                "other",
                vec![
                    Operation::AddTable { comment: None },
                    Operation::DeleteTable,
                ],
            ),
            OK,
        ),
        (
            "delete a table with everything in it",
            tx(vec![Operation::DeleteTable]),
            OK,
        ),
        (
            "a loop a base chain reaches",
            tx(vec![
                chain("l1"),
                chain("l2"),
                rule("l1", vec![jump("l2")]),
                rule("l2", vec![jump("l1")]),
                rule("c", vec![jump("l1")]),
            ]),
            refused(Loop, 4),
        ),
        (
            "a loop through a verdict map's element",
            tx(vec![rule("d", vec![jump("c")]), rule("c", vec![vmap("m")])]),
            refused(Loop, 1),
        ),
        (
            "a loop no base chain reaches",
            tx(vec![
                chain("l1"),
                chain("l2"),
                rule("l1", vec![jump("l2")]),
                rule("l2", vec![jump("l1")]),
            ]),
            OK,
        ),
        (
            "all or nothing: a good operation, then a refused one",
            tx(vec![
                chain("e"),
                set_element("s", "10.0.0.2"),
                Operation::DeleteChain(n("c")),
            ]),
            refused(Busy, 2),
        ),
    ]
}

/// What `e` says of `tx`: accepted, or the refusal's kind and operation.
fn outcome<E: NftExecutor>(e: &mut E, tx: &Transaction) -> Expect {
    match e.run(tx) {
        Ok(()) => Ok(()),
        Err(NftExecError::Refused(r)) => Err((r.kind, r.index.expect("the operation is named"))),
        Err(other) => panic!("not a refusal: {other}\n{tx}"),
    }
}

/// Everything `e` lists of `tables`, elements sorted (the kernel lists them in
/// its own order).
pub(crate) fn listing<E: NftExecutor>(e: &mut E, tables: &[(Family, Name)]) -> String {
    let mut out = String::new();
    for (family, table) in tables {
        let (family, table) = (*family, table);
        let chains = e.list_chains(family, table).unwrap();
        out += &format!("{family:?} {table} chains {chains:?}\n");
        for set in e.list_sets(family, table).unwrap() {
            let elements: BTreeSet<Element> = e
                .list_set_elements(family, table, &set)
                .unwrap()
                .into_iter()
                .collect();
            out += &format!("set {set}: {elements:?}\n");
        }
        for map in e.list_maps(family, table).unwrap() {
            let elements: BTreeSet<MapElement> = e
                .list_map_elements(family, table, &map)
                .unwrap()
                .into_iter()
                .collect();
            out += &format!("map {map}: {elements:?}\n");
        }
    }
    out
}

/// The tables of the cases.
fn tables() -> [(Family, Name); 2] {
    [(Family::Ip, n("t")), (Family::Ip6, n("t6"))]
}

/// A fake holding [`setup`]'s tables.
fn set_up_fake() -> NftFake {
    let mut fake = NftFake::new();
    for t in setup() {
        fake.run(&t).unwrap();
    }
    fake
}

#[test]
fn the_fake_refuses_what_the_kernel_refuses() {
    for (name, tx, expect) in cases() {
        let mut fake = set_up_fake();
        let before = fake.dump();
        assert_eq!(outcome(&mut fake, &tx), expect, "{name}\n{tx}");
        if expect.is_err() {
            assert_eq!(fake.dump(), before, "{name}: nothing applied");
        }
        assert_eq!(fake.last_transaction(), Some(&tx), "{name}");
        // `check` says the same and applies nothing.
        let mut fresh = set_up_fake();
        let checked = match fresh.check(&tx) {
            Ok(()) => Ok(()),
            Err(e) => Err((
                e.refusal().unwrap().kind,
                e.refusal().unwrap().index.unwrap(),
            )),
        };
        assert_eq!(checked, expect, "{name}: check");
        assert_eq!(fresh.dump(), before, "{name}: check applies nothing");
    }
}

#[test]
fn the_fake_keeps_the_first_comment_and_updates_a_timeout() {
    let mut fake = set_up_fake();
    let cases = cases();
    for wanted in [
        "a key already in the map with the same verdict and another comment",
        "a set added again with another timeout",
    ] {
        let (_, tx, _) = cases.iter().find(|(name, ..)| *name == wanted).unwrap();
        fake.run(tx).unwrap();
    }
    let t = fake.table(Family::Ip, &n("t")).unwrap();
    assert_eq!(t.maps["m"].elements[0].comment, None);
    assert_eq!(t.sets["a"].timeout, Some(100));
    // The fake's listings are its table's.
    assert_eq!(
        fake.list_chains(Family::Ip, &n("t")).unwrap(),
        [n("b"), n("c"), n("d")]
    );
    assert_eq!(
        fake.list_sets(Family::Ip, &n("t")).unwrap(),
        [n("a"), n("s")]
    );
    assert_eq!(
        fake.list_maps(Family::Ip, &n("t")).unwrap(),
        [n("m"), n("m1"), n("np")]
    );
    assert_eq!(
        fake.list_table(Family::Ip, &n("t")).unwrap(),
        fake.table(Family::Ip, &n("t")).unwrap().to_dump()
    );
    let missing = fake
        .list_set_elements(Family::Ip, &n("t"), &n("m"))
        .unwrap_err();
    assert_eq!(missing.refusal().unwrap().kind, RefusalKind::NotFound);
    assert!(
        fake.list_chains(Family::Ip, &n("nosuch"))
            .unwrap()
            .is_empty()
    );
    assert!(fake.list_table(Family::Ip, &n("nosuch")).is_err());
    assert_eq!(fake.transactions().len(), 4);
}

/// Runs `tx` in the namespace, starting from [`setup`]'s tables.
fn in_kernel(nft: &mut NftCommand, tx: &Transaction) -> Expect {
    for t in ["t", "t6", "other"] {
        for family in [Family::Ip, Family::Ip6] {
            let reset = tx_on(
                family,
                t,
                vec![
                    Operation::AddTable { comment: None },
                    Operation::DeleteTable,
                ],
            );
            nft.run(&reset).unwrap();
        }
    }
    for t in setup() {
        nft.run(&t).unwrap();
    }
    outcome(nft, tx)
}

/// `nft` in the namespace, without the sync lock.
pub(crate) fn nft_in(ns: &Netns) -> NftCommand {
    NftCommand::new()
        .with_command_prefix(["ip", "netns", "exec", &ns.name])
        .with_lock_dir(None)
}

#[test]
fn the_kernel_agrees_with_the_fake() {
    if !nft_available("the_kernel_agrees_with_the_fake") {
        return;
    }
    let ns = Netns::new("nftx-agree");
    let mut nft = nft_in(&ns);
    let mut disagreements = Vec::new();
    for (name, tx, expect) in cases() {
        let kernel = in_kernel(&mut nft, &tx);
        let mut fake = set_up_fake();
        let faked = outcome(&mut fake, &tx);
        if kernel != expect || faked != expect {
            disagreements.push(format!(
                "{name}: expected {expect:?}, kernel {kernel:?}, fake {faked:?}"
            ));
            continue;
        }
        let (theirs, ours) = (listing(&mut nft, &tables()), listing(&mut fake, &tables()));
        if theirs != ours {
            disagreements.push(format!(
                "{name}: the kernel lists\n{theirs}the fake\n{ours}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

#[test]
fn nft_runs_checks_and_lists_in_a_namespace() {
    if !nft_available("nft_runs_checks_and_lists_in_a_namespace") {
        return;
    }
    let ns = Netns::new("nftx-run");
    let dir = std::env::temp_dir().join(format!("svcnat-nftx-lock-{}", std::process::id()));
    let mut nft = NftCommand::new()
        .with_command_prefix(["ip", "netns", "exec", &ns.name])
        .with_lock_dir(Some(dir.clone()));
    let guard = nft.lock().unwrap();
    assert!(guard.is_held());
    let [v4, _] = <[Transaction; 2]>::try_from(setup()).unwrap();

    // A check applies nothing, a run applies everything.
    nft.check(&v4).unwrap();
    assert!(nft.list_chains(Family::Ip, &n("t")).unwrap().is_empty());
    assert!(nft.list_table(Family::Ip, &n("t")).is_err());
    nft.run(&v4).unwrap();
    assert_eq!(
        nft.list_chains(Family::Ip, &n("t")).unwrap(),
        [n("b"), n("c"), n("d")]
    );
    assert_eq!(
        nft.list_sets(Family::Ip, &n("t")).unwrap(),
        [n("a"), n("s")]
    );
    assert_eq!(
        nft.list_maps(Family::Ip, &n("t")).unwrap(),
        [n("m"), n("m1"), n("np")]
    );
    assert_eq!(
        nft.list_map_elements(Family::Ip, &n("t"), &n("m")).unwrap(),
        [MapElement {
            key: svc_key("1.2.3.4", 80),
            verdict: goto("d"),
            comment: None
        }]
    );
    let table = nft.list_table(Family::Ip, &n("t")).unwrap();
    assert!(table.contains("comment \"svcnat test\""), "{table}");
    assert!(table.contains("jump c"), "{table}");
    // An empty transaction starts nothing and succeeds.
    nft.run(&tx(Vec::new())).unwrap();

    // A refusal names the operation and its line, in nft's words; a check
    // refuses what a run would.
    let bad = tx(vec![chain("e"), Operation::DeleteChain(n("c"))]);
    for e in [nft.check(&bad).unwrap_err(), nft.run(&bad).unwrap_err()] {
        let r = e.refusal().unwrap();
        assert_eq!((r.kind, r.line()), (RefusalKind::Busy, Some(2)), "{e}");
        assert_eq!(r.command.as_deref(), Some("delete chain ip t c"));
        assert!(r.message.contains("Device or resource busy"), "{e}");
    }
    assert_eq!(
        nft.list_chains(Family::Ip, &n("t")).unwrap(),
        [n("b"), n("c"), n("d")],
        "nothing of the refused transaction applied"
    );
    // Listing a missing set is a refusal too; a missing binary is not.
    let missing = nft
        .list_set_elements(Family::Ip, &n("t"), &n("nosuch"))
        .unwrap_err();
    assert_eq!(missing.refusal().unwrap().kind, RefusalKind::NotFound);
    let mut absent = NftCommand::new()
        .with_binary("/nonexistent/svcnat-no-nft")
        .with_lock_dir(None);
    assert!(matches!(
        absent.run(&v4).unwrap_err(),
        NftExecError::Exec(svcnat::exec::ExecError::Spawn { .. })
    ));
    drop(guard);
    let _ = std::fs::remove_dir_all(dir);
}
