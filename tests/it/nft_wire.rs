//! The netlink batches of `nft::wire` against the ones nft 1.0.6 sent for the
//! same text, recorded with `strace` (tests/data/nft/wire/README.md): the same
//! messages with the same attributes, once the numbers nft gives anonymous sets
//! are set aside and the elements nft sends in another order are sorted.

use std::collections::HashMap;
use std::fmt::Write as _;

use svcnat::nft::wire::{AnonNames, WireError, encode};
use svcnat::nft::*;
use svcnat::parse::nft::parse_dump;

fn data(name: &str) -> String {
    let path = format!("{}/tests/data/nft/wire/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn recorded(name: &str) -> Vec<u8> {
    let hex: String = data(name).split_whitespace().collect();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// An attribute: its type and either bytes or nested attributes.
#[derive(Debug, Clone)]
enum Node {
    Bytes(Vec<u8>),
    Nest(Vec<(u16, Node)>),
}

fn attrs(mut b: &[u8]) -> Vec<(u16, Node)> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let kind = u16::from_ne_bytes([b[2], b[3]]);
        assert!(
            len >= 4 && len <= b.len(),
            "attribute length {len} of {}",
            b.len()
        );
        let value = &b[4..len];
        let node = if kind & 0x8000 != 0 {
            Node::Nest(attrs(value))
        } else {
            Node::Bytes(value.to_vec())
        };
        out.push((kind & 0x3fff, node));
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    assert!(b.is_empty(), "{} bytes left after the attributes", b.len());
    out
}

/// One message: its type, flags, family and attributes.
struct Message {
    kind: u16,
    flags: u16,
    family: u8,
    res_id: u16,
    attrs: Vec<(u16, Node)>,
}

fn messages(mut b: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
        assert!(
            len >= 20 && len <= b.len() && len.is_multiple_of(4),
            "message length {len}"
        );
        out.push(Message {
            kind: u16::from_ne_bytes([b[4], b[5]]),
            flags: u16::from_ne_bytes([b[6], b[7]]),
            family: b[16],
            res_id: u16::from_be_bytes([b[18], b[19]]),
            attrs: attrs(&b[20..len]),
        });
        b = &b[len..];
    }
    out
}

fn get(attrs: &[(u16, Node)], kind: u16) -> Option<&Node> {
    attrs.iter().find(|(k, _)| *k == kind).map(|(_, n)| n)
}

/// Set ids renumbered in the order they first appear: nft skips numbers.
struct Ids(HashMap<Vec<u8>, u32>);

impl Ids {
    fn renumber(&mut self, node: &mut Node) {
        if let Node::Bytes(b) = node {
            let next = self.0.len() as u32 + 1;
            let id = *self.0.entry(b.clone()).or_insert(next);
            *b = id.to_be_bytes().to_vec();
        }
    }

    /// The ids in a message: NEWSET's `NFTA_SET_ID`, NEWSETELEM's
    /// `NFTA_SET_ELEM_LIST_SET_ID`, and in a rule's `lookup` and `dynset`.
    fn message(&mut self, m: &mut Message) {
        let id_attr = match m.kind & 0xff {
            9 => Some(10),
            12 => Some(4),
            _ => None,
        };
        for (kind, node) in &mut m.attrs {
            if Some(*kind) == id_attr {
                self.renumber(node);
            }
            if m.kind & 0xff == 6
                && *kind == 4
                && let Node::Nest(exprs) = node
            {
                for (_, expr) in exprs {
                    let Node::Nest(e) = expr else { continue };
                    let name = match get(e, 1) {
                        Some(Node::Bytes(n)) => n.clone(),
                        _ => continue,
                    };
                    let attr = match &name[..] {
                        b"lookup\0" => 4,
                        b"dynset\0" => 2,
                        _ => continue,
                    };
                    for (k, data) in e.iter_mut() {
                        if *k == 2
                            && let Node::Nest(d) = data
                        {
                            for (k, v) in d.iter_mut() {
                                if *k == attr {
                                    self.renumber(v);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn show(node: &Node, out: &mut String) {
    match node {
        Node::Bytes(b)
            if b.len() > 1
                && b.last() == Some(&0)
                && b[..b.len() - 1].iter().all(|c| (32..127).contains(c)) =>
        {
            write!(out, "{:?}", String::from_utf8_lossy(&b[..b.len() - 1])).unwrap();
        }
        Node::Bytes(b) => b.iter().for_each(|x| write!(out, "{x:02x}").unwrap()),
        Node::Nest(attrs) => {
            out.push('{');
            for (i, (k, n)) in attrs.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                write!(out, "{k}=").unwrap();
                show(n, out);
            }
            out.push('}');
        }
    }
}

/// The batch as one line a message, ids renumbered, and each run of
/// `NEWSETELEM` messages to one set sorted (nft sends some in reverse).
fn lines(batch: &[u8]) -> Vec<String> {
    let mut ids = Ids(HashMap::new());
    let mut out: Vec<(Option<Vec<u8>>, String)> = Vec::new();
    for mut m in messages(batch) {
        ids.message(&mut m);
        let mut line = format!(
            "type={:#06x} flags={:#x} family={} res_id={} ",
            m.kind, m.flags, m.family, m.res_id
        );
        show(&Node::Nest(m.attrs.clone()), &mut line);
        let set = match (m.kind & 0xff, get(&m.attrs, 2)) {
            (12, Some(Node::Bytes(name))) if m.kind >> 8 == 10 => Some(name.clone()),
            _ => None,
        };
        out.push((set, line));
    }
    let mut sorted = Vec::with_capacity(out.len());
    let mut i = 0;
    while i < out.len() {
        let mut j = i + 1;
        if out[i].0.is_some() {
            while j < out.len() && out[j].0 == out[i].0 {
                j += 1;
            }
        }
        let mut run: Vec<String> = out[i..j].iter().map(|(_, l)| l.clone()).collect();
        run.sort();
        sorted.extend(run);
        i = j;
    }
    sorted
}

fn transaction(text: &str) -> Transaction {
    let ruleset = parse_dump(text).unwrap();
    let tx = Transaction::from(&ruleset);
    assert_eq!(tx.to_text(), text, "the recorded text is the transaction's");
    tx
}

#[test]
fn batches_are_the_ones_nft_sends_for_the_same_text() {
    for name in ["dump-v4", "dump-v6"] {
        let tx = transaction(&data(&format!("{name}.nft")));
        let batch = encode(&tx, 0, &mut AnonNames::Kernel).unwrap();
        let ours = lines(&batch.bytes);
        let nfts = lines(&recorded(&format!("{name}.batch.hex")));
        assert_eq!(ours.len(), nfts.len(), "{name}: messages");
        for (i, (a, b)) in ours.iter().zip(&nfts).enumerate() {
            assert_eq!(a, b, "{name}: message {i}");
        }
        assert_eq!(
            batch.bytes.len(),
            recorded(&format!("{name}.batch.hex")).len()
        );
    }
}

#[test]
fn each_message_names_its_operation() {
    let tx = transaction(&data("dump-v4.nft"));
    let batch = encode(&tx, 100, &mut AnonNames::Kernel).unwrap();
    let n = messages(&batch.bytes).len();
    // Begin and end, and one message an operation but three for each rule
    // with an anonymous set or map (five in this dump).
    assert_eq!(n, tx.len() + 2 + 2 * 5);
    assert_eq!(batch.operation_of(100), None, "the batch-begin message");
    assert_eq!(batch.operation_of(101), Some(0));
    assert_eq!(batch.operation_of(100 + n as u32 - 2), Some(tx.len() - 1));
    assert_eq!(
        batch.operation_of(100 + n as u32 - 1),
        None,
        "the batch-end message"
    );
    let rule_with_map = tx
        .operations()
        .iter()
        .position(|op| matches!(op, Operation::AddRule { rule, .. } if rule.stmts.iter().any(|s| matches!(s, Stmt::Numgen(_)))))
        .unwrap();
    let seqs: Vec<u32> = (101..100 + n as u32 - 1)
        .filter(|s| batch.operation_of(*s) == Some(rule_with_map))
        .collect();
    assert_eq!(seqs.len(), 3, "NEWSET, NEWSETELEM and NEWRULE");
}

#[test]
fn tagged_names_are_the_writers_own_and_count_up() {
    let tx = transaction(&data("dump-v4.nft"));
    let mut names = AnonNames::Tagged {
        tag: 0xabc,
        next: 7,
    };
    let batch = encode(&tx, 0, &mut names).unwrap();
    assert_eq!(
        names,
        AnonNames::Tagged {
            tag: 0xabc,
            next: 12
        }
    );
    let text = String::from_utf8_lossy(&batch.bytes);
    for n in 7..12 {
        assert!(text.contains(&format!("\0_{n:x}_abc\0")), "{n}");
    }
    assert!(!text.contains("%d"));
}

#[test]
fn what_nft_would_write_otherwise_is_refused_with_its_operation() {
    let table = Name::new("t").unwrap();
    let chain = Name::new("c").unwrap();
    let rule = |stmt: Stmt| {
        let mut tx = Transaction::new(Family::Ip, table.clone());
        tx.push(Operation::AddChain {
            name: chain.clone(),
            base: None,
            comment: None,
        });
        tx.push(Operation::AddRule {
            chain: chain.clone(),
            rule: Rule::new(vec![stmt]),
        });
        tx
    };
    let refused = |tx: Transaction| match encode(&tx, 0, &mut AnonNames::Kernel) {
        Err(WireError::Unsupported { index, what }) => (index, what),
        other => panic!("{other:?}"),
    };
    let zero = Stmt::Addr {
        dir: Dir::Saddr,
        op: Op::Eq,
        value: AddrValue::Net("0.0.0.0/0".parse().unwrap()),
    };
    assert_eq!(refused(rule(zero)), (1, "a prefix of length 0"));
    let host_bits = Stmt::Addr {
        dir: Dir::Saddr,
        op: Op::Eq,
        value: AddrValue::Net("10.0.0.1/8".parse().unwrap()),
    };
    assert_eq!(refused(rule(host_bits)).1, "a prefix with host bits set");
    let v6 = Stmt::addr(Dir::Daddr, "fd00::1".parse().unwrap());
    assert_eq!(refused(rule(v6)).1, "an address of the other family");
    let reject_in_map = Stmt::Numgen(vec![Verdict::Reject]);
    assert_eq!(
        refused(rule(reject_in_map)).1,
        "a verdict other than accept, drop, return, jump or goto"
    );
}

#[test]
fn ranges_that_touch_overlap_or_reach_an_end_are_merged_as_nft_does() {
    // nft 1.0.6 sent, for `ip saddr { 10.0.0.0/8, 10.1.0.0/16, 11.0.0.0/8 }`,
    // one range 10.0.0.0-11.255.255.255; for `{ 0.0.0.0/8, 255.0.0.0/8 }`, no
    // first end at zero and an open last range (its element's user data says
    // so).
    let table = Name::new("t").unwrap();
    let chain = Name::new("c").unwrap();
    let elements = |items: &[&str]| {
        let items = items
            .iter()
            .map(|i| AddrItem::Net(i.parse().unwrap()))
            .collect();
        let mut tx = Transaction::new(Family::Ip, table.clone());
        let stmt = Stmt::Addr {
            dir: Dir::Saddr,
            op: Op::Eq,
            value: AddrValue::Anon(items),
        };
        tx.push(Operation::AddRule {
            chain: chain.clone(),
            rule: Rule::new(vec![stmt, Stmt::Verdict(Verdict::Drop)]),
        });
        let batch = encode(&tx, 0, &mut AnonNames::Kernel).unwrap();
        let m = &messages(&batch.bytes)[2];
        let mut s = String::new();
        show(get(&m.attrs, 3).unwrap(), &mut s);
        s
    };
    assert_eq!(
        elements(&["10.0.0.0/8", "10.1.0.0/16", "11.0.0.0/8"]),
        "{1={3=00000001 1={1=00000000}} 2={1={1=0a000000}} 3={3=00000001 1={1=0c000000}}}"
    );
    assert_eq!(
        elements(&["0.0.0.0/8", "255.0.0.0/8"]),
        "{1={1={1=00000000}} 2={3=00000001 1={1=01000000}} 3={1={1=ff000000} 6=010401000000}}"
    );
}

/// A `numgen` map of many long-named endpoints: its elements go in as many
/// messages as their size needs (an attribute's length is 16 bits), every
/// message numbers its elements from 1, and all of them are there.
#[test]
fn large_anonymous_maps_are_split_over_messages() {
    let chains: Vec<Name> = (0..2000)
        .map(|i| {
            Name::new(format!(
                "endpoint-ABCDEFGH-namespace/service/tcp/port__10.180.{}.{}/8080",
                i / 256,
                i % 256
            ))
            .unwrap()
        })
        .collect();
    let mut tx = Transaction::new(Family::Ip, Name::new("t").unwrap());
    tx.push(Operation::AddRule {
        chain: Name::new("c").unwrap(),
        rule: Rule::new(vec![Stmt::Numgen(
            chains.iter().cloned().map(Verdict::Goto).collect(),
        )]),
    });
    let batch = encode(&tx, 0, &mut AnonNames::Kernel).unwrap();
    let msgs = messages(&batch.bytes);
    let elems: Vec<&Message> = msgs.iter().filter(|m| m.kind == 0x0a0c).collect();
    assert!(elems.len() > 2, "{} element messages", elems.len());
    let mut seen = 0;
    for m in &elems {
        let Some(Node::Nest(list)) = get(&m.attrs, 3) else {
            panic!("no list")
        };
        let numbers: Vec<u16> = list.iter().map(|(k, _)| *k).collect();
        assert_eq!(numbers, (1..=list.len() as u16).collect::<Vec<_>>());
        for (_, e) in list {
            let Node::Nest(e) = e else { panic!() };
            let Some(Node::Nest(key)) = get(e, 1) else {
                panic!()
            };
            let Some(Node::Bytes(k)) = get(key, 1) else {
                panic!()
            };
            assert_eq!(u32::from_ne_bytes(k[..4].try_into().unwrap()), seen);
            seen += 1;
        }
    }
    assert_eq!(seen, 2000);
    // One operation: every message is its, and the batch holds their numbers.
    assert!((1..msgs.len() as u32 - 1).all(|s| batch.operation_of(s) == Some(0)));
    assert!(batch.holds(msgs.len() as u32 - 1) && !batch.holds(msgs.len() as u32));
    // The set's description counts them all.
    let set = msgs.iter().find(|m| m.kind == 0x0a09).unwrap();
    let Some(Node::Nest(desc)) = get(&set.attrs, 9) else {
        panic!()
    };
    assert_eq!(
        get(desc, 1).map(|n| match n {
            Node::Bytes(b) => b.clone(),
            _ => vec![],
        }),
        Some(2000u32.to_be_bytes().to_vec())
    );
}

#[test]
fn an_attribute_too_long_for_its_length_is_refused() {
    let mut tx = Transaction::new(Family::Ip, Name::new("t").unwrap());
    tx.push(Operation::AddTable { comment: None });
    let stmts = vec![Stmt::Verdict(Verdict::Accept); 6000];
    tx.push(Operation::AddRule {
        chain: Name::new("c").unwrap(),
        rule: Rule::new(stmts),
    });
    match encode(&tx, 0, &mut AnonNames::Kernel) {
        Err(WireError::Unsupported { index: 1, what }) => {
            assert!(what.contains("65,535"), "{what}")
        }
        other => panic!("{other:?}"),
    }
}

/// `encode_check` is `encode` and one message more, a table's unknown flags,
/// which the kernel refuses whatever the table holds.
#[test]
fn a_check_batch_ends_with_a_message_the_kernel_refuses() {
    let tx = transaction(&data("dump-v4.nft"));
    let run = encode(&tx, 10, &mut AnonNames::Kernel).unwrap();
    let check = svcnat::nft::wire::encode_check(&tx, 10, &mut AnonNames::Kernel).unwrap();
    assert_eq!(run.sentinel, None);
    let (a, b) = (messages(&run.bytes), messages(&check.bytes));
    assert_eq!(b.len(), a.len() + 1);
    let sentinel = &b[b.len() - 2];
    assert_eq!(sentinel.kind, 0x0a00, "NEWTABLE");
    let flags = get(&sentinel.attrs, 2).map(|n| match n {
        Node::Bytes(b) => b.clone(),
        Node::Nest(_) => vec![],
    });
    assert_eq!(flags, Some(vec![0xff; 4]));
    assert_eq!(check.sentinel, Some(10 + a.len() as u32 - 1));
    assert_eq!(check.operation_of(check.sentinel.unwrap()), Some(tx.len()));
    assert_eq!(
        lines(&check.bytes[..run.bytes.len() - 20]),
        lines(&run.bytes[..run.bytes.len() - 20])
    );
}
