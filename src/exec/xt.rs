//! iptables-nft's rules as netlink messages: the batch `iptables-nft-restore`
//! 1.8.9 sends for a `--noflush` payload of declarations, appended rules,
//! flushes and chain deletions, written without it. Pure: parsed restore text in, bytes out.
//!
//! `iptables-nft-restore` keeps the names of the chains a payload mentions in a
//! sorted list that it walks for every line, so a payload costs the square of
//! its chains; cut into pieces, each piece is a commit, and each commit costs
//! the kernel a walk over every chain of the table. Written here, a payload
//! costs what its bytes cost, and many pieces go in one commit
//! ([`XtBatch`]).
//!
//! The messages are those of iptables-nft 1.8.9, expression for expression
//! (the tests compare them with a batch recorded from it with `strace`), so
//! `iptables-nft-save`, `-C` and `-D` see the rules as their own:
//!
//! - `:CHAIN - [0:0]` is a `NEWCHAIN` (created if missing) and a flush of the
//!   chain (`DELRULE` naming only the chain), as the declaration means;
//! - `-A` is a `NEWRULE` whose expressions follow `nft_ipv4_add`: interfaces,
//!   protocol (`meta l4proto`), source and destination (a `payload` of the
//!   prefix's whole bytes, a `bitwise` mask for a prefix that ends inside a
//!   byte), then each `-m` match in order (`tcp`/`udp` ports and `mark` as
//!   native expressions, the others as `match` expressions holding the
//!   extension's struct: `comment`, `statistic`, `addrtype`, `recent`), a
//!   `counter`, and the verdict or the `target` (`DNAT`).
//!
//! - `-F CHAIN` is the same flush; `-X CHAIN` a `DELCHAIN` the kernel refuses
//!   while anything jumps to the chain (`NLM_F_NONREC`), as iptables sends it
//!   (without the use count iptables copies from its cache, which the kernel
//!   does not read).
//!
//! Anything else (another match or target, `-I`, `-D`, a built-in chain, a
//! policy) is [`Unsupported`]: the caller sends that payload as text.

use std::net::IpAddr;

use crate::model::Protocol;
use crate::nft::Family;
use crate::nft::wire::{
    BASE_NETWORK, BASE_TRANSPORT, Batch, META_L4PROTO, META_MARK, NF_ACCEPT, NF_DROP,
    NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFT_GOTO, NFT_JUMP, NFT_MSG_DELCHAIN,
    NFT_MSG_DELRULE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_RETURN, NLM_F_APPEND, NLM_F_CREATE,
    NLM_F_REQUEST, REG_1, Writer,
};
use crate::parse::{Op, Restore};
use crate::ruleset::{
    AddrType, Address, ChainName, DnatTo, Match, Not, PortRange, ProtocolMatch, ProtocolName,
    RecentAction, Rule, Target,
};

/// What the encoder does not write, named for the caller's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unsupported(pub &'static str);

/// `meta oifname` (`linux/netfilter/nf_tables.h`).
const META_IIFNAME: u32 = 6;
const META_OIFNAME: u32 = 7;
/// `nft_cmp_ops`.
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const CMP_LTE: u32 = 3;
const CMP_GT: u32 = 4;
/// `nft_range_ops`.
const RANGE_EQ: u32 = 0;
const RANGE_NEQ: u32 = 1;
/// `NLM_F_NONREC`: delete the object only, refused if anything refers to it.
const NLM_F_NONREC: u16 = 0x100;
/// `NFT_RULE_COMPAT_F_INV`.
const COMPAT_INV: u32 = 1 << 1;
/// `NF_NAT_RANGE_MAP_IPS`, `NF_NAT_RANGE_PROTO_SPECIFIED`.
const NAT_MAP_IPS: u32 = 1;
const NAT_PROTO_SPECIFIED: u32 = 2;
/// `XT_ADDRTYPE_LOCAL` (`1 << RTN_LOCAL`).
const ADDRTYPE_LOCAL: u16 = 1 << 2;
/// `XT_RECENT_CHECK`, `XT_RECENT_SET`, `XT_RECENT_REAP`.
const RECENT_CHECK: u8 = 1 << 0;
const RECENT_SET: u8 = 1 << 1;
const RECENT_REAP: u8 = 1 << 5;
/// `XT_RECENT_NAME_LEN`.
const RECENT_NAME_SIZE: usize = 200;
/// The size of `xt_comment_info`.
const COMMENT_SIZE: usize = 256;

/// Several restore payloads as one netlink batch: one commit for all of them.
/// Each payload goes in whole or not at all ([`XtBatch::push`]).
pub(crate) struct XtBatch {
    w: Writer,
    payloads: usize,
}

impl XtBatch {
    /// An empty batch for `family` whose messages are numbered from `first_seq`.
    pub(crate) fn new(family: crate::model::IpFamily, first_seq: u32) -> XtBatch {
        let family = match family {
            crate::model::IpFamily::Ipv4 => Family::Ip,
            crate::model::IpFamily::Ipv6 => Family::Ip6,
        };
        let mut w = Writer::new(family, first_seq, 1 << 16);
        w.batch_marker(NFNL_MSG_BATCH_BEGIN);
        XtBatch { w, payloads: 0 }
    }

    /// How many bytes the batch holds so far.
    pub(crate) fn len(&self) -> usize {
        self.w.buf.len()
    }

    /// How many payloads the batch holds.
    pub(crate) fn payloads(&self) -> usize {
        self.payloads
    }

    /// Adds the messages of one parsed payload; the batch is as it was if the
    /// payload holds anything this encoder does not write.
    pub(crate) fn push(&mut self, restore: &Restore) -> Result<(), Unsupported> {
        let (len, seq, ops) = (self.w.buf.len(), self.w.seq, self.w.operations.len());
        let result = self.write(restore);
        let result = match result {
            Ok(()) if self.w.overflow => Err(Unsupported("an attribute longer than 65,535 bytes")),
            other => other,
        };
        if result.is_err() {
            self.w.buf.truncate(len);
            self.w.seq = seq;
            self.w.operations.truncate(ops);
            self.w.overflow = false;
        } else {
            self.payloads += 1;
        }
        result
    }

    fn write(&mut self, restore: &Restore) -> Result<(), Unsupported> {
        let v6 = restore.family == crate::model::IpFamily::Ipv6;
        for table in &restore.tables {
            let name = table.table.as_str();
            let builtin =
                |chain: &ChainName| table.table.builtin_chains().contains(&chain.as_str());
            for op in &table.ops {
                self.w.index = op.line;
                match &op.op {
                    Op::Declare {
                        chain,
                        policy: None,
                    } if !builtin(chain) => {
                        let m = self
                            .w
                            .message(NFT_MSG_NEWCHAIN, NLM_F_REQUEST | NLM_F_CREATE);
                        self.w.str(1, name);
                        self.w.str(3, chain.as_str());
                        self.w.finish(m);
                        // The declaration empties a chain that exists.
                        let m = self.w.message(NFT_MSG_DELRULE, NLM_F_REQUEST);
                        self.w.str(1, name);
                        self.w.str(2, chain.as_str());
                        self.w.finish(m);
                    }
                    Op::Append { chain, rule } => {
                        let m = self
                            .w
                            .message(NFT_MSG_NEWRULE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND);
                        self.w.str(1, name);
                        self.w.str(2, chain.as_str());
                        rule_body(&mut self.w, rule, v6)?;
                        self.w.finish(m);
                    }
                    // iptables updates a built-in chain named here, never flushes it.
                    Op::Declare { .. } => return Err(Unsupported("a built-in chain")),
                    Op::Flush(Some(chain)) if !builtin(chain) => {
                        let m = self.w.message(NFT_MSG_DELRULE, NLM_F_REQUEST);
                        self.w.str(1, name);
                        self.w.str(2, chain.as_str());
                        self.w.finish(m);
                    }
                    // Refused while anything jumps to the chain (NLM_F_NONREC),
                    // as `iptables -X` is. iptables also sends the use count its
                    // cache read, which the kernel does not look at.
                    Op::DeleteChain(Some(chain)) if !builtin(chain) => {
                        let m = self
                            .w
                            .message(NFT_MSG_DELCHAIN, NLM_F_REQUEST | NLM_F_NONREC);
                        self.w.str(1, name);
                        self.w.str(3, chain.as_str());
                        self.w.finish(m);
                    }
                    _ => return Err(Unsupported("an operation other than :CHAIN, -A, -F and -X")),
                }
            }
        }
        Ok(())
    }

    /// The batch, ended.
    pub(crate) fn finish(mut self, first_seq: u32) -> Batch {
        self.w.batch_marker(NFNL_MSG_BATCH_END);
        Batch {
            bytes: self.w.buf,
            first_seq,
            operations: self.w.operations,
            sentinel: None,
        }
    }
}

/// The parts of a rule iptables puts first, whatever their place in the text.
#[derive(Default)]
struct Head<'r> {
    iniface: Option<&'r Not<crate::ruleset::Interface>>,
    outiface: Option<&'r Not<crate::ruleset::Interface>>,
    proto: Option<(u8, bool)>,
    src: Option<&'r Not<Address>>,
    dst: Option<&'r Not<Address>>,
}

/// One `-m` match, in the rule's order.
enum Ext<'r> {
    Comment(&'r str),
    /// `-m tcp` / `-m udp` and the ports that follow it.
    Ports {
        proto: Protocol,
        sport: Option<&'r Not<PortRange>>,
        dport: Option<&'r Not<PortRange>>,
    },
    Statistic(u32),
    AddrType {
        src: bool,
    },
    Mark(&'r Not<crate::ruleset::Mark>),
    Recent {
        name: &'r str,
        action: &'r RecentAction,
    },
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// `NFTA_RULE_EXPRESSIONS` and `NFTA_RULE_COMPAT` of one rule.
fn rule_body(w: &mut Writer, rule: &Rule, v6: bool) -> Result<(), Unsupported> {
    let mut head = Head::default();
    let mut exts: Vec<Ext<'_>> = Vec::new();
    for m in rule.matches() {
        match m {
            Match::Comment(c) => exts.push(Ext::Comment(c.as_str())),
            Match::Protocol(ProtocolMatch::WithModule(p)) => {
                once(&mut head.proto, (proto_number(*p), false))?;
                exts.push(module(*p)?);
            }
            Match::Protocol(ProtocolMatch::ModuleOnly(p)) => exts.push(module(*p)?),
            Match::Protocol(ProtocolMatch::Plain(Not { negated, value })) => match value {
                ProtocolName::Known(p) => once(&mut head.proto, (proto_number(*p), *negated))?,
                ProtocolName::Other(_) => return Err(Unsupported("a protocol by another name")),
            },
            // iptables refuses any of these given twice; the parser does not.
            Match::Source(a) => once(&mut head.src, a)?,
            Match::Destination(a) => once(&mut head.dst, a)?,
            Match::InInterface(i) => once(&mut head.iniface, i)?,
            Match::OutInterface(i) => once(&mut head.outiface, i)?,
            Match::DestinationPort(p) | Match::SourcePort(p) => {
                // An option of the last `-m tcp`/`-m udp` before it.
                let Some(Ext::Ports { sport, dport, .. }) = exts
                    .iter_mut()
                    .rev()
                    .find(|e| matches!(e, Ext::Ports { .. }))
                else {
                    return Err(Unsupported("a port without its protocol's module"));
                };
                let slot = if matches!(m, Match::DestinationPort(_)) {
                    dport
                } else {
                    sport
                };
                if slot.replace(p).is_some() {
                    return Err(Unsupported("a port option given twice"));
                }
            }
            Match::Statistic(p) => {
                // What libxt_statistic stores for the printed probability.
                let printed: f64 = p
                    .to_string()
                    .parse()
                    .map_err(|_| Unsupported("a probability that does not print as a number"))?;
                exts.push(Ext::Statistic((2_147_483_648.0 * printed).round() as u32));
            }
            Match::SrcType(AddrType::Local) => exts.push(Ext::AddrType { src: true }),
            Match::DstType(AddrType::Local) => exts.push(Ext::AddrType { src: false }),
            Match::Mark(mark) => exts.push(Ext::Mark(mark)),
            Match::Recent { name, action } => exts.push(Ext::Recent {
                name: name.as_str(),
                action,
            }),
            _ => return Err(Unsupported("a match this encoder does not write")),
        }
    }
    let addrtypes = exts
        .iter()
        .filter(|e| matches!(e, Ext::AddrType { .. }))
        .count();
    if addrtypes > 1 {
        // One `-m addrtype` with both options reads as two matches; iptables
        // writes one.
        return Err(Unsupported("more than one addrtype option"));
    }
    let list = w.nest(4);
    if let Some(i) = head.iniface {
        interface(w, META_IIFNAME, i);
    }
    if let Some(i) = head.outiface {
        interface(w, META_OIFNAME, i);
    }
    if let Some((proto, negated)) = head.proto {
        w.meta_load(META_L4PROTO, REG_1);
        cmp(w, if negated { CMP_NEQ } else { CMP_EQ }, &[proto]);
    }
    let (src_at, dst_at) = if v6 { (8, 24) } else { (12, 16) };
    if let Some(a) = head.src {
        address(w, src_at, a, v6)?;
    }
    if let Some(a) = head.dst {
        address(w, dst_at, a, v6)?;
    }
    for ext in &exts {
        match ext {
            Ext::Comment(text) => {
                if text.len() >= COMMENT_SIZE {
                    return Err(Unsupported("a comment longer than xt_comment takes"));
                }
                let mut info = [0u8; COMMENT_SIZE];
                info[..text.len()].copy_from_slice(text.as_bytes());
                xt(w, "match", "comment", 0, &info);
            }
            Ext::Ports {
                proto,
                sport,
                dport,
            } => ports(w, *proto, head.proto, *sport, *dport)?,
            Ext::Statistic(probability) => {
                // xt_statistic_info: mode, flags, the probability, the nth
                // fields libxt_statistic fills (packet 0, count = probability),
                // the kernel's pointer.
                let mut info = [0u8; 24];
                info[4..8].copy_from_slice(&probability.to_ne_bytes());
                info[12..16].copy_from_slice(&probability.to_ne_bytes());
                xt(w, "match", "statistic", 0, &info);
            }
            Ext::AddrType { src } => {
                // xt_addrtype_info_v1: source, dest, flags.
                let mut info = [0u8; 8];
                let at = if *src { 0 } else { 2 };
                info[at..at + 2].copy_from_slice(&ADDRTYPE_LOCAL.to_ne_bytes());
                xt(w, "match", "addrtype", 1, &info);
            }
            Ext::Recent { name, action } => {
                // xt_recent_mtinfo_v1: seconds, hit_count, check_set, invert,
                // name[200], side (source), the mask (all ones, as
                // libxt_recent starts it), padded to 8 bytes.
                if name.len() >= RECENT_NAME_SIZE {
                    return Err(Unsupported(
                        "a recent list name longer than xt_recent takes",
                    ));
                }
                let mut info = [0u8; 232];
                let (seconds, check_set) = match action {
                    RecentAction::Set => (0, RECENT_SET),
                    RecentAction::Check { seconds } => (*seconds, RECENT_CHECK | RECENT_REAP),
                };
                info[0..4].copy_from_slice(&seconds.to_ne_bytes());
                info[8] = check_set;
                info[10..10 + name.len()].copy_from_slice(name.as_bytes());
                info[212..228].fill(0xff);
                xt(w, "match", "recent", 1, &info);
            }
            Ext::Mark(mark) => {
                w.meta_load(META_MARK, REG_1);
                let mask = mark.value.mask.unwrap_or(u32::MAX);
                if mask != u32::MAX {
                    w.bitwise(4, &mask.to_ne_bytes(), &[0; 4], false);
                }
                let op = if mark.negated { CMP_NEQ } else { CMP_EQ };
                cmp(w, op, &mark.value.value.to_ne_bytes());
            }
        }
    }
    // The counter comes before the verdict, as iptables-nft puts it.
    w.expr("counter", |w| {
        w.attr(1, &0u64.to_be_bytes());
        w.attr(2, &0u64.to_be_bytes());
    });
    match &rule.target {
        None => {}
        Some(Target::Jump(chain)) => w.immediate_verdict(NFT_JUMP, Some(chain.as_str())),
        Some(Target::Goto(chain)) => w.immediate_verdict(NFT_GOTO, Some(chain.as_str())),
        Some(Target::Accept) => w.immediate_verdict(NF_ACCEPT, None),
        Some(Target::Drop) => w.immediate_verdict(NF_DROP, None),
        Some(Target::Return) => w.immediate_verdict(NFT_RETURN, None),
        // iptables wants the protocol of a DNAT to a port.
        Some(Target::Dnat(to))
            if to.port.is_some() && !matches!(head.proto, Some((6 | 17 | 132, false))) =>
        {
            return Err(Unsupported("a DNAT port without its protocol"));
        }
        Some(Target::Dnat(to)) => dnat(w, to, v6)?,
        Some(Target::Other(raw)) => match raw.as_str().strip_prefix("-j ") {
            // A chain the payload does not declare reads as an unknown
            // target; iptables takes a name no extension has as a chain, and
            // no extension's name starts with `KUBE-`.
            Some(name) if name.starts_with("KUBE-") && ChainName::new(name).is_ok() => {
                w.immediate_verdict(NFT_JUMP, Some(name));
            }
            _ => return Err(Unsupported("a target this encoder does not write")),
        },
        Some(_) => return Err(Unsupported("a target this encoder does not write")),
    }
    w.end(list);
    let compat = w.nest(5);
    let (proto, negated) = head.proto.unwrap_or((0, false));
    w.u32(1, u32::from(proto));
    w.u32(2, if negated { COMPAT_INV } else { 0 });
    w.end(compat);
    Ok(())
}

/// Sets `slot`, unless it is set already.
fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), Unsupported> {
    match slot.replace(value) {
        None => Ok(()),
        Some(_) => Err(Unsupported("an option given twice")),
    }
}

fn module(p: Protocol) -> Result<Ext<'static>, Unsupported> {
    match p {
        Protocol::Tcp | Protocol::Udp => Ok(Ext::Ports {
            proto: p,
            sport: None,
            dport: None,
        }),
        Protocol::Sctp => Err(Unsupported("the sctp match")),
    }
}

fn cmp(w: &mut Writer, op: u32, value: &[u8]) {
    w.expr("cmp", |w| {
        w.u32(1, REG_1);
        w.u32(2, op);
        w.data(3, value);
    });
}

/// A `match` or `target` expression: the extension's name, revision and struct.
fn xt(w: &mut Writer, kind: &str, name: &str, revision: u32, info: &[u8]) {
    w.expr(kind, |w| {
        w.str(1, name);
        w.u32(2, revision);
        w.attr(3, info);
    });
}

/// `add_iniface` / `add_outiface`: the name with its NUL, or the prefix before
/// a `+` without one.
fn interface(w: &mut Writer, key: u32, iface: &Not<crate::ruleset::Interface>) {
    w.meta_load(key, REG_1);
    let op = if iface.negated { CMP_NEQ } else { CMP_EQ };
    let name = iface.value.name().as_bytes();
    if iface.value.is_prefix() {
        if name.is_empty() {
            // `-i +` matches every interface; `! -i +` none.
            if iface.negated {
                cmp(w, CMP_EQ, b"INVAL/D\0");
            }
        } else {
            cmp(w, op, name);
        }
    } else {
        let mut with_nul = name.to_vec();
        with_nul.push(0);
        cmp(w, op, &with_nul);
    }
}

/// `add_addr`: the prefix's whole bytes, or the whole address masked when the
/// prefix ends inside a byte.
fn address(w: &mut Writer, offset: u32, a: &Not<Address>, v6: bool) -> Result<(), Unsupported> {
    let (addr, prefix) = match a.value {
        Address::Ip(ip) => (ip, if v6 { 128 } else { 32 }),
        Address::Net(net) => (net.network(), net.prefix_len()),
    };
    let bytes = match (addr, v6) {
        (IpAddr::V4(a), false) => a.octets().to_vec(),
        (IpAddr::V6(a), true) => a.octets().to_vec(),
        _ => return Err(Unsupported("an address of the other family")),
    };
    if prefix == 0 {
        return Err(Unsupported("a prefix of length 0"));
    }
    let op = if a.negated { CMP_NEQ } else { CMP_EQ };
    let prefix = usize::from(prefix);
    if prefix.is_multiple_of(8) {
        let len = prefix / 8;
        w.payload(REG_1, BASE_NETWORK, offset, len as u32);
        cmp(w, op, &bytes[..len]);
    } else {
        let mut mask = vec![0u8; bytes.len()];
        for (i, m) in mask.iter_mut().enumerate() {
            let bits = prefix.saturating_sub(i * 8).min(8);
            *m = (0xff_u16 << (8 - bits)) as u8;
        }
        let masked: Vec<u8> = bytes.iter().zip(&mask).map(|(b, m)| b & m).collect();
        w.payload(REG_1, BASE_NETWORK, offset, bytes.len() as u32);
        w.bitwise(bytes.len() as u32, &mask, &vec![0; bytes.len()], false);
        cmp(w, op, &masked);
    }
    Ok(())
}

/// `add_nft_tcp` / `add_nft_udp`: ports as native expressions, or the
/// extension's struct when the match holds no port.
fn ports(
    w: &mut Writer,
    proto: Protocol,
    head: Option<(u8, bool)>,
    sport: Option<&Not<PortRange>>,
    dport: Option<&Not<PortRange>>,
) -> Result<(), Unsupported> {
    let full = |p: Option<&Not<PortRange>>| {
        p.map_or((0, 0xffff, false), |p| {
            (p.value.first, p.value.last, p.negated)
        })
    };
    let (s, d) = (full(sport), full(dport));
    let any = |(lo, hi, negated): (u16, u16, bool)| lo == 0 && hi == 0xffff && !negated;
    if any(s) && any(d) {
        // xt_tcp (spts, dpts, option, flg_mask, flg_cmp, invflags) or xt_udp
        // (spts, dpts, invflags), padded to 8 bytes.
        let mut info = [0u8; 16];
        info[2..4].copy_from_slice(&0xffff_u16.to_ne_bytes());
        info[6..8].copy_from_slice(&0xffff_u16.to_ne_bytes());
        let name = if proto == Protocol::Tcp { "tcp" } else { "udp" };
        xt(w, "match", name, 0, &info);
        return Ok(());
    }
    if head != Some((proto_number(proto), false)) {
        return Err(Unsupported("ports without their protocol"));
    }
    if s.0 != 0 && s.0 == s.1 && d.0 != 0 && d.0 == d.1 && s.2 == d.2 {
        // Both ports, one each, loaded at once.
        w.payload(REG_1, BASE_TRANSPORT, 0, 4);
        let combined = (u32::from(s.0) << 16) | u32::from(d.0);
        cmp(
            w,
            if s.2 { CMP_NEQ } else { CMP_EQ },
            &combined.to_be_bytes(),
        );
        return Ok(());
    }
    for (offset, (lo, hi, negated)) in [(0, s), (2, d)] {
        if lo == 0 && hi == 0xffff {
            // iptables writes nothing for a full range, negated or not.
            continue;
        }
        w.payload(REG_1, BASE_TRANSPORT, offset, 2);
        if lo == hi {
            cmp(w, if negated { CMP_NEQ } else { CMP_EQ }, &lo.to_be_bytes());
        } else if lo == 0 {
            cmp(w, if negated { CMP_GT } else { CMP_LTE }, &hi.to_be_bytes());
        } else {
            w.expr("range", |w| {
                w.u32(1, REG_1);
                w.u32(2, if negated { RANGE_NEQ } else { RANGE_EQ });
                w.data(3, &lo.to_be_bytes());
                w.data(4, &hi.to_be_bytes());
            });
        }
    }
    Ok(())
}

/// The `DNAT` target, revision 2: `nf_nat_range2` (flags, min and max address,
/// min and max port, base port), padded to 8 bytes.
fn dnat(w: &mut Writer, to: &DnatTo, v6: bool) -> Result<(), Unsupported> {
    let addr = match (to.addr, v6) {
        (IpAddr::V4(a), false) => a.octets().to_vec(),
        (IpAddr::V6(a), true) => a.octets().to_vec(),
        _ => return Err(Unsupported("a DNAT address of the other family")),
    };
    let mut info = [0u8; 48];
    let mut flags = NAT_MAP_IPS;
    info[4..4 + addr.len()].copy_from_slice(&addr);
    info[20..20 + addr.len()].copy_from_slice(&addr);
    if let Some(port) = to.port {
        flags |= NAT_PROTO_SPECIFIED;
        info[36..38].copy_from_slice(&port.to_be_bytes());
        info[38..40].copy_from_slice(&port.to_be_bytes());
    }
    info[0..4].copy_from_slice(&flags.to_ne_bytes());
    xt(w, "target", "DNAT", 2, &info);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IpFamily;
    use crate::parse::parse_restore_as;

    fn data(name: &str) -> String {
        let path = format!("{}/tests/data/xt/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The messages of a batch of the given nf_tables type, sequence numbers
    /// set to 0.
    fn messages(mut b: &[u8], kind: u16) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while b.len() >= 16 {
            let len = u32::from_ne_bytes(b[..4].try_into().unwrap()) as usize;
            let mut m = b[..len].to_vec();
            m[8..12].fill(0);
            if u16::from_ne_bytes([m[4], m[5]]) == (10 << 8 | kind) {
                out.push(m);
            }
            b = &b[len..];
        }
        assert!(b.is_empty());
        out
    }

    fn recorded(name: &str) -> Vec<u8> {
        let hex: String = data(name).split_whitespace().collect();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    fn encoded(name: &str, family: IpFamily) -> Batch {
        let restore = parse_restore_as(&data(name), family).unwrap();
        let mut batch = XtBatch::new(family, 1);
        batch.push(&restore).unwrap();
        batch.finish(1)
    }

    /// tests/data/xt/README.md says how the batches were recorded.
    #[test]
    fn rules_are_the_messages_iptables_nft_sends() {
        for (family, v) in [(IpFamily::Ipv4, "v4"), (IpFamily::Ipv6, "v6")] {
            let ours = encoded(&format!("rules-{v}.txt"), family);
            let theirs = recorded(&format!("rules-{v}.batch.hex"));
            let (ours, theirs) = (
                messages(&ours.bytes, NFT_MSG_NEWRULE),
                messages(&theirs, NFT_MSG_NEWRULE),
            );
            assert_eq!(ours.len(), theirs.len(), "{v}: rules");
            assert!(ours.len() > 5);
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert_eq!(hex(a), hex(b), "{v}: rule {i}");
            }
        }
    }

    /// The flushes and chain deletions of `delete-v4.txt` (over the chains of
    /// `rules-v4.txt`), as iptables sent them, less the use count iptables
    /// copies from its cache into each `DELCHAIN` (its last attribute).
    #[test]
    fn flushes_and_deletions_are_the_messages_iptables_nft_sends() {
        let ours = encoded("delete-v4.txt", IpFamily::Ipv4);
        let theirs = recorded("delete-v4.batch.hex");
        let deletions = |b: &[u8]| messages(b, NFT_MSG_DELCHAIN);
        let theirs_del: Vec<Vec<u8>> = deletions(&theirs)
            .into_iter()
            .map(|mut m| {
                let at = m.len() - 8;
                // NFTA_CHAIN_USE, 8 bytes.
                assert_eq!(&m[at..at + 4], &[8, 0, 6, 0]);
                m.truncate(at);
                m[..4].copy_from_slice(&(at as u32).to_ne_bytes());
                m
            })
            .collect();
        assert_eq!(theirs_del.len(), 2);
        let ours_del = deletions(&ours.bytes);
        assert_eq!(
            ours_del.iter().map(|m| hex(m)).collect::<Vec<_>>(),
            theirs_del.iter().map(|m| hex(m)).collect::<Vec<_>>()
        );
        // The flushes: iptables' `:KUBE-SEP-A` of an existing chain and
        // `-F KUBE-SVC-B`, ours the same two (after the NEWCHAIN of the
        // declaration).
        let flushes = |b: &[u8]| -> Vec<String> {
            messages(b, NFT_MSG_DELRULE)
                .iter()
                .map(|m| hex(m))
                .collect()
        };
        assert_eq!(flushes(&ours.bytes), flushes(&theirs));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn a_declaration_creates_and_flushes_its_chain() {
        let batch = encoded("rules-v4.txt", IpFamily::Ipv4);
        let chains = messages(&batch.bytes, NFT_MSG_NEWCHAIN);
        let flushes = messages(&batch.bytes, NFT_MSG_DELRULE);
        assert_eq!((chains.len(), flushes.len()), (2, 2));
        // Created if missing, never refused for being there.
        let flags = u16::from_ne_bytes([chains[0][6], chains[0][7]]);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_CREATE);
        assert!(hex(&flushes[1]).contains(&hex(b"KUBE-SVC-B\0")));
    }

    /// What keeps a first sync linear: every chain the compiler writes for a
    /// service, and the capture chains, encode, for clusters of every shape
    /// the synthetic mixes make (affinity, local policies, load balancers,
    /// source ranges, UDP, node ports); only the fixed chains go as text.
    #[cfg(feature = "synthetic")]
    #[test]
    fn every_service_chain_the_compiler_writes_encodes() {
        use crate::synthetic::{self, Mix, Spec};
        let fixed = |name: &str| {
            ![
                "KUBE-SEP-",
                "KUBE-SVC-",
                "KUBE-SVL-",
                "KUBE-EXT-",
                "KUBE-FW-",
            ]
            .iter()
            .any(|p| name.starts_with(p))
                && !["KUBE-SERVICES", "KUBE-NODEPORTS"].contains(&name)
        };
        for (mix, seed) in [
            (Mix::ClusterIp, 1),
            (Mix::LoadBalancer, 2),
            (Mix::LoadBalancer, 3),
        ] {
            let mut state = Spec::new(60, 3).with_mix(mix).with_seed(seed).build();
            // Source ranges (KUBE-FW-) and external IPs, which the mixes leave out.
            let lbs: Vec<crate::model::Service> = state
                .services()
                .filter(|s| s.service_type == crate::model::ServiceType::LoadBalancer)
                .take(2)
                .cloned()
                .collect();
            for (i, mut svc) in lbs.into_iter().enumerate() {
                if i == 0 {
                    svc.load_balancer_source_ranges = vec![
                        "203.0.113.0/24".parse().unwrap(),
                        "198.51.100.7/32".parse().unwrap(),
                    ];
                } else {
                    svc.external_ips = vec!["192.0.2.10".parse().unwrap()];
                }
                state.upsert_service(svc);
            }
            let text = crate::compile::compile_text(&state, &synthetic::config()).unwrap();
            let text = String::from_utf8(text.to_bytes()).unwrap();
            let (mut written, mut as_text) = (0, 0);
            for piece in crate::exec::pieces(&text, IpFamily::Ipv4, 1).unwrap() {
                let restore = parse_restore_as(&piece, IpFamily::Ipv4).unwrap();
                let names: Vec<String> = restore
                    .tables
                    .iter()
                    .filter(|t| t.table == crate::ruleset::Table::Nat)
                    .flat_map(|t| &t.ops)
                    .filter_map(|op| match &op.op {
                        Op::Declare { chain, .. } => Some(chain.as_str().to_owned()),
                        _ => None,
                    })
                    .collect();
                if names.is_empty() || names.iter().any(|n| fixed(n)) {
                    as_text += 1;
                    continue;
                }
                let mut batch = XtBatch::new(IpFamily::Ipv4, 1);
                assert_eq!(batch.push(&restore), Ok(()), "{mix:?} {seed}: {piece}");
                written += 1;
            }
            if mix == Mix::LoadBalancer {
                for form in ["KUBE-FW-", "192.0.2.10", "-m recent", "--src-type LOCAL"] {
                    assert!(text.contains(form), "{mix:?} {seed}: no {form}");
                }
            }
            assert!(written > 60 * 2, "{mix:?} {seed}: {written} pieces written");
            assert!(as_text < 10, "{mix:?} {seed}: {as_text} pieces as text");
        }
    }

    #[test]
    fn what_it_does_not_write_leaves_the_batch_as_it_was() {
        let mut batch = XtBatch::new(IpFamily::Ipv4, 1);
        let good = parse_restore_as(
            "*nat\n:KUBE-SEP-A - [0:0]\n-A KUBE-SEP-A -j RETURN\nCOMMIT\n",
            IpFamily::Ipv4,
        )
        .unwrap();
        batch.push(&good).unwrap();
        let before = batch.len();
        for text in [
            "*nat\n:KUBE-SEP-B - [0:0]\n-A KUBE-SEP-B -j MARK --or-mark 0x4000\nCOMMIT\n",
            "*nat\n-X PREROUTING\nCOMMIT\n",
            "*nat\n-D KUBE-SEP-A -j RETURN\nCOMMIT\n",
            "*nat\n:KUBE-SEP-B - [0:0]\n-A KUBE-SEP-B -m conntrack --ctstate NEW -j RETURN\nCOMMIT\n",
            "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n",
            "*nat\n:PREROUTING - [0:0]\nCOMMIT\n",
            "*nat\n:KUBE-SEP-B - [0:0]\n-A KUBE-SEP-B -s 10.0.0.1 -s 10.0.0.2 -j RETURN\nCOMMIT\n",
            "*nat\n:KUBE-SEP-B - [0:0]\n-A KUBE-SEP-B -j DNAT --to-destination 10.0.0.1:80\nCOMMIT\n",
            "*nat\n:KUBE-SEP-B - [0:0]\n-A KUBE-SEP-B -m addrtype --src-type LOCAL --dst-type LOCAL -j RETURN\nCOMMIT\n",
        ] {
            let restore = parse_restore_as(text, IpFamily::Ipv4).unwrap();
            assert!(batch.push(&restore).is_err(), "{text}");
            assert_eq!(batch.len(), before, "{text}");
        }
        assert_eq!(batch.payloads(), 1);
        let bytes = batch.finish(1).bytes;
        assert_eq!(messages(&bytes, NFT_MSG_NEWRULE).len(), 1);
    }
}
