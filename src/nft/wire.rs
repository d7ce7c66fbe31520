//! The netlink form of a [`Transaction`]: the batch of `nf_tables` messages the
//! `nft` binary would send for the same text, so an executor can talk to the
//! kernel without `nft` and its cache of the table (see
//! [`NftNetlink`](crate::exec::NftNetlink)). Pure: a transaction in, bytes out.
//!
//! The batch is what nft 1.0.6 sends for the same `nft -f` text, message for
//! message and attribute for attribute: the tests compare the two, from nft's
//! own batches recorded with `strace` for two tables that hold every statement
//! form of the IR, with nft's numbering of sets set aside and the element
//! messages it sends in another order sorted; the kernel tests compare `nft
//! list` after both (deletions and flushes included). So the kernel holds the
//! same objects and `nft list` prints them the same way:
//!
//! - a match on one address or prefix is a `payload` load and a `cmp` (a prefix
//!   on whole bytes loads only those bytes, another one is masked by a
//!   `bitwise`); an anonymous set of one element is written as that element's
//!   match, as nft does; several addresses make a constant anonymous set, and
//!   any prefix among them an interval set;
//! - concatenated keys (`ip daddr . meta l4proto . th dport`) use nft's
//!   32-bit registers, each field from a 4-byte boundary;
//! - the verdict map of `numgen random mod N vmap { ... }` is an anonymous
//!   constant map written just before its rule.
//!
//! Anonymous sets are named by [`AnonNames`]: [`AnonNames::Kernel`] asks the
//! kernel to number them (`__set%d`, as nft does), which costs the kernel a
//! `sscanf` of every set name of the table per set; [`AnonNames::Tagged`] names
//! them itself, short and different from their second byte, which the kernel
//! takes as they are (it still compares each with every set's name, as for
//! any set).
//!
//! Ranges of an anonymous set that overlap or touch are merged, as nft does,
//! and the elements of a large anonymous set or map go in as many messages as
//! their size needs (an attribute's length is 16 bits), as nft splits them.
//! The kernel checks a key's length, not its type: a key of the wrong types
//! but the right length, which nft refuses before sending, goes through here
//! (the compiler writes none).
//!
//! What nft would write differently from the cases above (a prefix of length 0,
//! a prefix with host bits, a `reject` verdict in a map) is not guessed at: [`encode`] refuses it with
//! [`WireError::Unsupported`], and the caller sends that transaction as text.

use std::collections::HashMap;
use std::net::IpAddr;

use thiserror::Error;

use super::names::{Name, NftComment};
use super::objects::{BaseChain, ChainType, Family, Hook, KeyType, KeyValue, SetFlag};
use super::stmt::{AddrItem, AddrValue, Dir, KeyField, MarkOp, Op, Stmt, Verdict};
use super::transaction::{Operation, Transaction};
use super::{Element, MapElement, Rule};
use crate::model::Protocol;

/// How the anonymous sets and maps of rules are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnonNames {
    /// `__set%d` and `__map%d`: the kernel picks the number, as for nft. It
    /// reads every set name of the table to find a free one, for each set.
    Kernel,
    /// `_N_TAG` (both in hex), N counting up from `next`: names no other
    /// writer uses, which the kernel takes without numbering them. `tag` must differ
    /// between writers of one table (a process's start time and id, for
    /// example) so that a restarted writer never reuses a name still in the
    /// table. The names are short and differ from their second byte: the
    /// kernel compares the name with every set of the table when it adds one.
    Tagged {
        /// What sets this writer's names apart.
        tag: u32,
        /// The number of the next set.
        next: u64,
    },
}

impl AnonNames {
    fn next(&mut self, map: bool) -> String {
        match self {
            AnonNames::Kernel => if map { "__map%d" } else { "__set%d" }.to_owned(),
            AnonNames::Tagged { tag, next } => {
                *next += 1;
                format!("_{:x}_{tag:x}", *next - 1)
            }
        }
    }
}

/// A transaction that cannot be written as a batch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The operation at `index` holds something this encoder does not write
    /// the way nft would; send the transaction as text instead.
    #[error("operation {index}: {what} is not encoded for netlink")]
    Unsupported {
        /// The operation's index in the transaction (0-based).
        index: usize,
        /// What it holds.
        what: &'static str,
    },
}

/// A transaction as one netlink batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The bytes to send: a batch-begin message, the operations' messages, a
    /// batch-end message.
    pub bytes: Vec<u8>,
    /// The sequence number of the batch-begin message; the others follow it.
    pub first_seq: u32,
    /// For each message after the batch-begin one, in order, the index of the
    /// operation it belongs to (an `add rule` with an anonymous set is three
    /// messages).
    pub operations: Vec<usize>,
    /// The sequence number of the message [`encode_check`] adds, which the
    /// kernel always refuses.
    pub sentinel: Option<u32>,
}

impl Batch {
    /// Whether `seq` is one of this batch's messages (the batch-begin and
    /// batch-end ones included); sequence numbers wrap.
    pub fn holds(&self, seq: u32) -> bool {
        (seq.wrapping_sub(self.first_seq) as usize) <= self.operations.len() + 1
    }

    /// The index of the operation whose message had sequence number `seq`.
    pub fn operation_of(&self, seq: u32) -> Option<usize> {
        let n = seq.wrapping_sub(self.first_seq).checked_sub(1)?;
        self.operations.get(n as usize).copied()
    }
}

/// Encodes `tx` as one batch whose messages are numbered from `first_seq`,
/// naming anonymous sets with `names`.
///
/// # Errors
/// [`WireError::Unsupported`] for a statement this encoder does not write
/// (see the module's documentation); nothing is returned then, and `names` may
/// have advanced.
pub fn encode(tx: &Transaction, first_seq: u32, names: &mut AnonNames) -> Result<Batch, WireError> {
    encode_batch(tx, first_seq, names, false)
}

/// [`encode`], and one message more that the kernel always refuses: the
/// kernel handles every message of a batch and answers each refusal before
/// it drops the batch whole, so the answers say whether `tx` would apply
/// (`nft --check`) and nothing is applied.
///
/// # Errors
/// As [`encode`].
pub fn encode_check(
    tx: &Transaction,
    first_seq: u32,
    names: &mut AnonNames,
) -> Result<Batch, WireError> {
    encode_batch(tx, first_seq, names, true)
}

fn encode_batch(
    tx: &Transaction,
    first_seq: u32,
    names: &mut AnonNames,
    check: bool,
) -> Result<Batch, WireError> {
    let mut w = Writer::new(tx.family(), first_seq, 256 + tx.len() * 160);
    let mut ctx = Ctx {
        family: tx.family(),
        table: tx.table().as_str(),
        names,
        set_ids: HashMap::new(),
        next_set_id: 1,
    };
    w.batch_marker(NFNL_MSG_BATCH_BEGIN);
    for (index, op) in tx.operations().iter().enumerate() {
        w.index = index;
        ctx.operation(&mut w, op)
            .map_err(|what| WireError::Unsupported { index, what })?;
        if w.overflow {
            return Err(WireError::Unsupported {
                index,
                what: "an attribute longer than 65,535 bytes",
            });
        }
    }
    let sentinel = check.then(|| {
        // A table's flags the kernel does not know: refused whether the
        // table exists or not, so the batch never commits.
        w.index = tx.len();
        let seq = w.seq;
        let m = w.message(NFT_MSG_NEWTABLE, NLM_F_REQUEST);
        w.str(1, tx.table().as_str());
        w.u32(2, u32::MAX);
        w.finish(m);
        seq
    });
    w.batch_marker(NFNL_MSG_BATCH_END);
    Ok(Batch {
        bytes: w.buf,
        first_seq,
        operations: w.operations,
        sentinel,
    })
}

/// What a dump request ([`encode_dump`]) asks the kernel for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Only the netlink transport, which is Linux's, dumps.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) enum DumpOf {
    /// Every chain of the family (`NFT_MSG_GETCHAIN`).
    Chains,
    /// Every set and map of the family (`NFT_MSG_GETSET`).
    Sets,
}

/// A request for a dump (`NLM_F_DUMP`) of `family`'s chains or sets, naming
/// `table` (the kernel may or may not filter by it: read the table of each
/// answer).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn encode_dump(what: DumpOf, family: Family, table: &Name, seq: u32) -> Vec<u8> {
    const NFT_MSG_GETCHAIN: u16 = 4;
    const NFT_MSG_GETSET: u16 = 10;
    const NLM_F_DUMP: u16 = 0x300;
    let mut w = Writer::new(family, seq, 0);
    let msg = match what {
        DumpOf::Chains => NFT_MSG_GETCHAIN,
        DumpOf::Sets => NFT_MSG_GETSET,
    };
    let m = w.message(msg, NLM_F_REQUEST | NLM_F_DUMP);
    // NFTA_CHAIN_TABLE / NFTA_SET_TABLE.
    w.str(1, table.as_str());
    w.finish(m);
    w.buf
}

// Netlink and nf_tables numbers (linux/netlink.h, linux/netfilter/nfnetlink.h,
// linux/netfilter/nf_tables.h).
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
pub(crate) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(crate) const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
pub(crate) const NFT_MSG_NEWCHAIN: u16 = 3;
pub(crate) const NFT_MSG_DELCHAIN: u16 = 5;
pub(crate) const NFT_MSG_NEWRULE: u16 = 6;
pub(crate) const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

pub(crate) const NFT_JUMP: i32 = -3;
pub(crate) const NFT_GOTO: i32 = -4;
pub(crate) const NFT_RETURN: i32 = -5;
pub(crate) const NF_DROP: i32 = 0;
pub(crate) const NF_ACCEPT: i32 = 1;

const REG_VERDICT: u32 = 0;
pub(crate) const REG_1: u32 = 1;
const REG_2: u32 = 2;

// nft's datatype numbers, folded six bits a field for a concatenation.
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;

/// nft's user data of a set: a byte of type, a byte of length, the value.
mod udata {
    pub const KEYBYTEORDER: u8 = 0;
    pub const DATABYTEORDER: u8 = 1;
    pub const MERGE_ELEMENTS: u8 = 2;
    pub const KEY_TYPEOF: u8 = 3;
    pub const DATA_TYPEOF: u8 = 4;
    pub const DATA_INTERVAL: u8 = 6;
    pub const SET_COMMENT: u8 = 7;
    /// The comment of a table, chain, rule or element.
    pub const COMMENT: u8 = 0;
    pub const BYTEORDER_HOST: u32 = 1;
    pub const BYTEORDER_BIG: u32 = 2;
}

/// What an element of an anonymous set is to nft: a key (or the start of a
/// range), the end of a range (one past its last address), or the start of a
/// range that runs to the last address.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bound {
    Start,
    End,
    Open,
}

/// The bytes of a message being written, and which operation each message
/// belongs to.
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
    pub(crate) seq: u32,
    family: u8,
    pub(crate) operations: Vec<usize>,
    pub(crate) index: usize,
    /// Set when an attribute came out longer than its 16-bit length.
    pub(crate) overflow: bool,
}

/// The longest list of elements one message carries before the rest go in
/// another (an attribute's length is 16 bits; nft splits the same way).
const ELEMENTS_PER_MESSAGE_BYTES: usize = 60_000;

impl Writer {
    pub(crate) fn new(family: Family, seq: u32, capacity: usize) -> Writer {
        Writer {
            buf: Vec::with_capacity(capacity),
            seq,
            family: match family {
                Family::Ip => NFPROTO_IPV4,
                Family::Ip6 => NFPROTO_IPV6,
            },
            operations: Vec::new(),
            index: 0,
            overflow: false,
        }
    }

    pub(crate) fn batch_marker(&mut self, kind: u16) {
        let start = self.header(kind, NLM_F_REQUEST, 0);
        self.buf
            .extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        self.finish(start);
    }

    /// A message header and nfgenmsg's family and version; the caller ends it
    /// with [`Self::finish`] (after `res_id` for the batch markers).
    pub(crate) fn header(&mut self, kind: u16, flags: u16, family: u8) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0);
        self.seq = self.seq.wrapping_add(1);
        start
    }

    pub(crate) fn message(&mut self, msg: u16, flags: u16) -> usize {
        let start = self.header(NFNL_SUBSYS_NFTABLES << 8 | msg, flags, self.family);
        self.buf.extend_from_slice(&0u16.to_be_bytes());
        self.operations.push(self.index);
        start
    }

    pub(crate) fn finish(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// A 16-bit attribute length, or 0 with `overflow` set.
    pub(crate) fn len16(&mut self, len: usize) -> u16 {
        u16::try_from(len).unwrap_or_else(|_| {
            self.overflow = true;
            0
        })
    }

    pub(crate) fn attr(&mut self, kind: u16, value: &[u8]) {
        let len = self.len16(4 + value.len());
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    pub(crate) fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub(crate) fn u32(&mut self, kind: u16, value: u32) {
        self.attr(kind, &value.to_be_bytes());
    }

    pub(crate) fn str(&mut self, kind: u16, value: &str) {
        let len = self.len16(5 + value.len());
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    pub(crate) fn nest(&mut self, kind: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        start
    }

    pub(crate) fn end(&mut self, start: usize) {
        let len = self.len16(self.buf.len() - start);
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// `NFTA_DATA_VALUE` in a nest of `kind`.
    pub(crate) fn data(&mut self, kind: u16, value: &[u8]) {
        let n = self.nest(kind);
        self.attr(1, value);
        self.end(n);
    }

    /// `NFTA_DATA_VERDICT` in a nest of `kind`.
    pub(crate) fn verdict(&mut self, kind: u16, code: i32, chain: Option<&str>) {
        let n = self.nest(kind);
        let v = self.nest(2);
        self.attr(1, &code.to_be_bytes());
        if let Some(chain) = chain {
            self.str(2, chain);
        }
        self.end(v);
        self.end(n);
    }

    /// One expression of a rule: `NFTA_LIST_ELEM { NAME, DATA { ... } }`.
    pub(crate) fn expr(&mut self, name: &str, body: impl FnOnce(&mut Writer)) {
        let e = self.nest(1);
        self.str(1, name);
        let d = self.nest(2);
        body(self);
        self.end(d);
        self.end(e);
    }

    pub(crate) fn payload(&mut self, reg: u32, base: u32, offset: u32, len: u32) {
        self.expr("payload", |w| {
            w.u32(1, reg);
            w.u32(2, base);
            w.u32(3, offset);
            w.u32(4, len);
        });
    }

    pub(crate) fn meta_load(&mut self, key: u32, reg: u32) {
        self.expr("meta", |w| {
            w.u32(2, key);
            w.u32(1, reg);
        });
    }

    pub(crate) fn cmp(&mut self, op: Op, value: &[u8]) {
        self.expr("cmp", |w| {
            w.u32(1, REG_1);
            w.u32(2, if op == Op::Eq { 0 } else { 1 });
            w.data(3, value);
        });
    }

    /// `bitwise` on register 1; `bool_op` adds nft's `NFTA_BITWISE_OP` (its
    /// mark statements carry it, its prefix and flag matches do not).
    pub(crate) fn bitwise(&mut self, len: u32, mask: &[u8], xor: &[u8], bool_op: bool) {
        self.expr("bitwise", |w| {
            w.u32(1, REG_1);
            w.u32(2, REG_1);
            if bool_op {
                w.u32(6, 0);
            }
            w.u32(3, len);
            w.data(4, mask);
            w.data(5, xor);
        });
    }

    pub(crate) fn immediate_verdict(&mut self, code: i32, chain: Option<&str>) {
        self.expr("immediate", |w| {
            w.u32(1, REG_VERDICT);
            w.verdict(2, code, chain);
        });
    }
}

pub(crate) const META_MARK: u32 = 3;
pub(crate) const META_IIFNAME: u32 = 6;
pub(crate) const META_L4PROTO: u32 = 16;
pub(crate) const BASE_NETWORK: u32 = 1;
pub(crate) const BASE_TRANSPORT: u32 = 2;

/// What the encoder knows of the batch so far.
struct Ctx<'a> {
    family: Family,
    table: &'a str,
    names: &'a mut AnonNames,
    /// The sets and maps this batch adds, with their ids.
    set_ids: HashMap<String, u32>,
    next_set_id: u32,
}

type Step = Result<(), &'static str>;

impl Ctx<'_> {
    fn operation(&mut self, w: &mut Writer, op: &Operation) -> Step {
        let table = self.table;
        match op {
            Operation::AddTable { comment } => {
                let m = w.message(NFT_MSG_NEWTABLE, NLM_F_REQUEST);
                w.str(1, table);
                w.u32(2, 0);
                if let Some(c) = comment {
                    w.attr(6, &comment_udata(udata::COMMENT, c));
                }
                w.finish(m);
            }
            Operation::DeleteTable => {
                let m = w.message(NFT_MSG_DELTABLE, NLM_F_REQUEST);
                w.str(1, table);
                w.finish(m);
            }
            Operation::AddChain {
                name,
                base,
                comment,
            } => {
                let m = w.message(NFT_MSG_NEWCHAIN, NLM_F_REQUEST | NLM_F_CREATE);
                w.str(1, table);
                w.str(3, name.as_str());
                if let Some(base) = base {
                    base_chain(w, base);
                }
                if let Some(c) = comment {
                    w.attr(12, &comment_udata(udata::COMMENT, c));
                }
                w.finish(m);
            }
            Operation::FlushChain(name) => {
                let m = w.message(NFT_MSG_DELRULE, NLM_F_REQUEST);
                w.str(1, table);
                w.str(2, name.as_str());
                w.finish(m);
            }
            Operation::DeleteChain(name) => {
                let m = w.message(NFT_MSG_DELCHAIN, NLM_F_REQUEST);
                w.str(1, table);
                w.str(3, name.as_str());
                w.finish(m);
            }
            Operation::AddRule { chain, rule } => self.rule(w, chain, rule)?,
            Operation::AddSet {
                name,
                key,
                flags,
                timeout,
                comment,
            } => self.add_set(w, name, key, flags, *timeout, comment.as_ref(), false),
            Operation::AddMap { name, key, comment } => {
                self.add_set(w, name, key, &[], None, comment.as_ref(), true)
            }
            Operation::FlushSet(name) | Operation::FlushMap(name) => {
                let m = w.message(NFT_MSG_DELSETELEM, NLM_F_REQUEST);
                w.str(2, name.as_str());
                w.str(1, table);
                w.finish(m);
            }
            Operation::DeleteSet(name) | Operation::DeleteMap(name) => {
                let m = w.message(NFT_MSG_DELSET, NLM_F_REQUEST);
                w.str(1, table);
                w.str(2, name.as_str());
                w.finish(m);
            }
            Operation::AddElement { set, element } => {
                let Element { key, comment } = element;
                self.elements(w, set, |w| {
                    let e = w.nest(1);
                    key_value(w, key);
                    if let Some(c) = comment {
                        w.attr(6, &comment_udata(udata::COMMENT, c));
                    }
                    w.end(e);
                    Ok(())
                })?;
            }
            Operation::AddMapElement { map, element } => {
                let MapElement {
                    key,
                    verdict,
                    comment,
                } = element;
                let (code, chain) = verdict_code(verdict)?;
                self.elements(w, map, |w| {
                    let e = w.nest(1);
                    key_value(w, key);
                    w.verdict(2, code, chain);
                    if let Some(c) = comment {
                        w.attr(6, &comment_udata(udata::COMMENT, c));
                    }
                    w.end(e);
                    Ok(())
                })?;
            }
            Operation::DeleteElement { set, key } => {
                let m = w.message(NFT_MSG_DELSETELEM, NLM_F_REQUEST);
                w.str(1, table);
                w.str(2, set.as_str());
                let list = w.nest(3);
                let e = w.nest(1);
                key_value(w, key);
                w.end(e);
                w.end(list);
                w.finish(m);
            }
        }
        Ok(())
    }

    fn set_id(&mut self, name: &str) -> u32 {
        let id = self.next_set_id;
        self.next_set_id += 1;
        self.set_ids.insert(name.to_owned(), id);
        id
    }

    #[allow(clippy::too_many_arguments)]
    fn add_set(
        &mut self,
        w: &mut Writer,
        name: &Name,
        key: &[KeyType],
        flags: &[SetFlag],
        timeout: Option<u32>,
        comment: Option<&NftComment>,
        map: bool,
    ) {
        let id = self.set_id(name.as_str());
        let m = w.message(NFT_MSG_NEWSET, NLM_F_REQUEST | NLM_F_CREATE);
        w.str(1, self.table);
        w.str(2, name.as_str());
        let mut bits = if map { NFT_SET_MAP } else { 0 };
        for flag in flags {
            bits |= match flag {
                SetFlag::Dynamic => NFT_SET_EVAL,
                SetFlag::Timeout => NFT_SET_TIMEOUT,
            };
        }
        if timeout.is_some() {
            // nft adds the flag to a set with a timeout.
            bits |= NFT_SET_TIMEOUT;
        }
        w.u32(3, bits);
        w.u32(4, key_type(key));
        w.u32(5, key_len(key));
        if map {
            w.u32(6, NFT_DATA_VERDICT);
            w.u32(7, 0);
        }
        w.u32(10, id);
        if let Some(t) = timeout {
            w.attr(11, &(u64::from(t) * 1000).to_be_bytes());
        }
        let mut ud = Vec::new();
        let concat = key.len() > 1;
        let order = if concat { 0 } else { udata::BYTEORDER_BIG };
        put_u32(&mut ud, udata::KEYBYTEORDER, order);
        if map {
            put_u32(&mut ud, udata::DATABYTEORDER, 0);
        }
        if concat {
            // nft's description of a concatenation's key.
            ud.extend_from_slice(&[udata::KEY_TYPEOF, 8, 0, 4]);
            ud.extend_from_slice(&13u32.to_ne_bytes());
            ud.extend_from_slice(&[1, 0]);
        }
        if map {
            put_u32(&mut ud, udata::DATA_INTERVAL, 0);
        }
        if let Some(c) = comment {
            ud.extend_from_slice(&comment_udata(udata::SET_COMMENT, c));
        }
        w.attr(13, &ud);
        w.finish(m);
    }

    /// A `NEWSETELEM` message for `set` with the list `list` writes.
    fn elements(
        &mut self,
        w: &mut Writer,
        set: &Name,
        list: impl FnOnce(&mut Writer) -> Step,
    ) -> Step {
        let m = w.message(NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE);
        w.str(1, self.table);
        w.str(2, set.as_str());
        if let Some(id) = self.set_ids.get(set.as_str()) {
            w.u32(4, *id);
        }
        let l = w.nest(3);
        list(w)?;
        w.end(l);
        w.finish(m);
        Ok(())
    }

    fn rule(&mut self, w: &mut Writer, chain: &Name, rule: &Rule) -> Step {
        // The anonymous sets go first, each in a message before the rule's.
        let mut anon = Vec::new();
        for stmt in &rule.stmts {
            match stmt {
                Stmt::Addr { dir, value, .. } => {
                    if let Some(set) = self.anon_addr_set(w, *dir, value)? {
                        anon.push(set);
                    }
                }
                Stmt::Numgen(verdicts) => anon.push(self.anon_map(w, verdicts)?),
                _ => {}
            }
        }
        let m = w.message(NFT_MSG_NEWRULE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND);
        w.str(1, self.table);
        w.str(2, chain.as_str());
        let list = w.nest(4);
        let mut anon = anon.into_iter();
        for stmt in &rule.stmts {
            self.stmt(w, stmt, &mut anon)?;
        }
        w.end(list);
        if let Some(c) = &rule.comment {
            w.attr(7, &comment_udata(udata::COMMENT, c));
        }
        w.finish(m);
        Ok(())
    }

    fn addr_bytes(&self, ip: IpAddr) -> Result<Vec<u8>, &'static str> {
        match (self.family, ip) {
            (Family::Ip, IpAddr::V4(a)) => Ok(a.octets().to_vec()),
            (Family::Ip6, IpAddr::V6(a)) => Ok(a.octets().to_vec()),
            _ => Err("an address of the other family"),
        }
    }

    fn addr_offset(&self, dir: Dir) -> u32 {
        match (self.family, dir) {
            (Family::Ip, Dir::Saddr) => 12,
            (Family::Ip, Dir::Daddr) => 16,
            (Family::Ip6, Dir::Saddr) => 8,
            (Family::Ip6, Dir::Daddr) => 24,
        }
    }

    fn addr_len(&self) -> u32 {
        match self.family {
            Family::Ip => 4,
            Family::Ip6 => 16,
        }
    }

    /// The one item of an anonymous set written as its own match, if it has
    /// one item.
    fn single(value: &AddrValue) -> Option<AddrItem> {
        match value {
            AddrValue::Anon(items) if items.len() == 1 => Some(items[0]),
            AddrValue::Cidrs(nets) if nets.len() == 1 => Some(AddrItem::Net(nets[0])),
            _ => None,
        }
    }

    /// The anonymous set of an address match of several items, sent now; its
    /// name and id.
    fn anon_addr_set(
        &mut self,
        w: &mut Writer,
        dir: Dir,
        value: &AddrValue,
    ) -> Result<Option<(String, u32)>, &'static str> {
        let items: Vec<AddrItem> = match value {
            AddrValue::Anon(items) if items.len() > 1 => items.clone(),
            AddrValue::Cidrs(nets) if nets.len() > 1 => {
                nets.iter().map(|n| AddrItem::Net(*n)).collect()
            }
            AddrValue::Anon(items) if items.is_empty() => return Err("an empty anonymous set"),
            AddrValue::Cidrs(nets) if nets.is_empty() => return Err("an empty anonymous set"),
            _ => return Ok(None),
        };
        let interval = items.iter().any(|i| matches!(i, AddrItem::Net(_)));
        let len = self.addr_len();
        // The elements as nft sends them: plain keys in the order given, or
        // the ranges in order, each a start and an end (one past its last
        // address, flagged), after a first end at address zero.
        let mut elements: Vec<(Vec<u8>, Bound)> = Vec::new();
        if interval {
            let mut ranges = Vec::new();
            for item in &items {
                ranges.push(self.range(*item)?);
            }
            ranges.sort_unstable();
            // nft merges ranges that overlap or touch.
            let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
            for (start, end) in ranges {
                match merged.last_mut() {
                    Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
                    _ => merged.push((start, end)),
                }
            }
            let max = if len == 4 {
                u128::from(u32::MAX)
            } else {
                u128::MAX
            };
            if merged[0].0 != 0 {
                elements.push((to_bytes(0, len), Bound::End));
            }
            for (start, end) in merged {
                if end == max {
                    elements.push((to_bytes(start, len), Bound::Open));
                } else {
                    elements.push((to_bytes(start, len), Bound::Start));
                    elements.push((to_bytes(end + 1, len), Bound::End));
                }
            }
        } else {
            for item in &items {
                let AddrItem::Ip(ip) = item else {
                    unreachable!("an interval set has a prefix")
                };
                let bytes = self.addr_bytes(*ip)?;
                if elements.iter().any(|(b, _)| *b == bytes) {
                    return Err("an address twice in an anonymous set");
                }
                elements.push((bytes, Bound::Start));
            }
        }
        let name = self.names.next(false);
        let id = self.set_id(&name);
        let m = w.message(NFT_MSG_NEWSET, NLM_F_REQUEST | NLM_F_CREATE);
        w.str(1, self.table);
        w.str(2, &name);
        let mut flags = NFT_SET_ANONYMOUS | NFT_SET_CONSTANT;
        if interval {
            flags |= NFT_SET_INTERVAL;
        }
        w.u32(3, flags);
        w.u32(4, key_type(&[self.family.addr_type()]));
        w.u32(5, len);
        w.u32(10, id);
        let desc = w.nest(9);
        w.u32(1, elements.len() as u32);
        w.end(desc);
        let mut ud = Vec::new();
        put_u32(&mut ud, udata::KEYBYTEORDER, udata::BYTEORDER_BIG);
        if interval {
            put_u32(&mut ud, udata::MERGE_ELEMENTS, 1);
        }
        // nft's `typeof` of the key: the payload field the set is matched on.
        let (proto, field) = match (self.family, dir) {
            (Family::Ip, Dir::Saddr) => (12, 11),
            (Family::Ip, Dir::Daddr) => (12, 12),
            (Family::Ip6, Dir::Saddr) => (13, 8),
            (Family::Ip6, Dir::Daddr) => (13, 9),
        };
        ud.extend_from_slice(&[udata::KEY_TYPEOF, 20, 0, 4]);
        ud.extend_from_slice(&7u32.to_ne_bytes());
        ud.extend_from_slice(&[1, 12, 0, 4]);
        ud.extend_from_slice(&(proto as u32).to_ne_bytes());
        ud.extend_from_slice(&[1, 4]);
        ud.extend_from_slice(&(field as u32).to_ne_bytes());
        w.attr(13, &ud);
        w.finish(m);

        self.anon_elements(w, &name, id, elements.len(), |w, i| {
            let (key, bound) = &elements[i];
            if *bound == Bound::End {
                // NFT_SET_ELEM_INTERVAL_END.
                w.u32(3, 1);
            }
            w.data(1, key);
            if *bound == Bound::Open {
                // nft's user data of an element: an interval without an end.
                let mut ud = vec![1, 4];
                ud.extend_from_slice(&1u32.to_ne_bytes());
                w.attr(6, &ud);
            }
        });
        Ok(Some((name, id)))
    }

    /// The `count` elements of the anonymous set `name`, each written by
    /// `element`, in as many `NEWSETELEM` messages as their size needs.
    fn anon_elements(
        &self,
        w: &mut Writer,
        name: &str,
        id: u32,
        count: usize,
        mut element: impl FnMut(&mut Writer, usize),
    ) {
        let mut i = 0;
        while i < count {
            let m = w.message(NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE);
            w.str(1, self.table);
            w.str(2, name);
            w.u32(4, id);
            let list = w.nest(3);
            let mut n = 0;
            while i < count && w.buf.len() - list < ELEMENTS_PER_MESSAGE_BYTES {
                let e = w.nest(list_item(n));
                element(w, i);
                w.end(e);
                (i, n) = (i + 1, n + 1);
            }
            w.end(list);
            w.finish(m);
        }
    }

    /// The first and last address of an item, as numbers.
    fn range(&self, item: AddrItem) -> Result<(u128, u128), &'static str> {
        match item {
            AddrItem::Ip(ip) => {
                let n = to_number(&self.addr_bytes(ip)?);
                Ok((n, n))
            }
            AddrItem::Net(net) => {
                if net.addr() != net.network() {
                    return Err("a prefix with host bits set");
                }
                let first = to_number(&self.addr_bytes(net.network())?);
                let last = to_number(&self.addr_bytes(net.broadcast())?);
                Ok((first, last))
            }
        }
    }

    /// The anonymous verdict map of `numgen`, sent now; its name and id.
    fn anon_map(
        &mut self,
        w: &mut Writer,
        verdicts: &[Verdict],
    ) -> Result<(String, u32), &'static str> {
        let mut codes = Vec::with_capacity(verdicts.len());
        for v in verdicts {
            codes.push(verdict_code(v)?);
        }
        if codes.is_empty() {
            return Err("numgen with no verdicts");
        }
        let name = self.names.next(true);
        let id = self.set_id(&name);
        let m = w.message(NFT_MSG_NEWSET, NLM_F_REQUEST | NLM_F_CREATE);
        w.str(1, self.table);
        w.str(2, &name);
        w.u32(3, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_MAP);
        w.u32(4, TYPE_INTEGER);
        w.u32(5, 4);
        w.u32(6, NFT_DATA_VERDICT);
        w.u32(7, 0);
        w.u32(10, id);
        let desc = w.nest(9);
        w.u32(1, codes.len() as u32);
        w.end(desc);
        let mut ud = Vec::new();
        put_u32(&mut ud, udata::KEYBYTEORDER, udata::BYTEORDER_HOST);
        put_u32(&mut ud, udata::DATABYTEORDER, 0);
        ud.extend_from_slice(&[udata::DATA_TYPEOF, 8, 0, 4]);
        ud.extend_from_slice(&1u32.to_ne_bytes());
        ud.extend_from_slice(&[1, 0]);
        put_u32(&mut ud, udata::DATA_INTERVAL, 0);
        w.attr(13, &ud);
        w.finish(m);

        self.anon_elements(w, &name, id, codes.len(), |w, i| {
            let (code, chain) = codes[i];
            w.data(1, &(i as u32).to_ne_bytes());
            w.verdict(2, code, chain);
        });
        Ok((name, id))
    }

    /// `payload` and `cmp` (and `bitwise` for a prefix not on whole bytes) for
    /// an address or prefix.
    fn addr_match(&self, w: &mut Writer, dir: Dir, op: Op, item: AddrItem) -> Step {
        let offset = self.addr_offset(dir);
        let len = self.addr_len();
        match item {
            AddrItem::Ip(ip) => {
                let bytes = self.addr_bytes(ip)?;
                w.payload(REG_1, BASE_NETWORK, offset, len);
                w.cmp(op, &bytes);
            }
            AddrItem::Net(net) => {
                if net.addr() != net.network() {
                    return Err("a prefix with host bits set");
                }
                let bytes = self.addr_bytes(net.network())?;
                let bits = u32::from(net.prefix_len());
                if bits == 0 {
                    return Err("a prefix of length 0");
                }
                if bits % 8 == 0 {
                    let n = bits / 8;
                    w.payload(REG_1, BASE_NETWORK, offset, n);
                    w.cmp(op, &bytes[..n as usize]);
                } else {
                    let mask = self.addr_bytes(net.netmask())?;
                    w.payload(REG_1, BASE_NETWORK, offset, len);
                    w.bitwise(len, &mask, &vec![0; len as usize], false);
                    w.cmp(op, &bytes);
                }
            }
        }
        Ok(())
    }

    fn stmt(
        &mut self,
        w: &mut Writer,
        stmt: &Stmt,
        anon: &mut impl Iterator<Item = (String, u32)>,
    ) -> Step {
        match stmt {
            Stmt::Addr { dir, op, value } => match value {
                AddrValue::Ip(ip) => self.addr_match(w, *dir, *op, AddrItem::Ip(*ip))?,
                AddrValue::Net(net) => self.addr_match(w, *dir, *op, AddrItem::Net(*net))?,
                AddrValue::Set(set) => {
                    let id = self.set_ids.get(set.as_str()).copied();
                    self.lookup_set(w, *dir, *op, set.as_str(), id);
                }
                _ => match Self::single(value) {
                    Some(item) => self.addr_match(w, *dir, *op, item)?,
                    None => {
                        let (name, id) = anon.next().ok_or("an anonymous set")?;
                        self.lookup_set(w, *dir, *op, &name, Some(id));
                    }
                },
            },
            Stmt::L4Proto(p) => {
                w.meta_load(META_L4PROTO, REG_1);
                w.cmp(Op::Eq, &[proto_number(*p)]);
            }
            Stmt::CtStateNew => {
                w.expr("ct", |w| {
                    w.u32(2, 0);
                    w.u32(1, REG_1);
                });
                w.bitwise(4, &8u32.to_ne_bytes(), &[0; 4], false);
                w.cmp(Op::Ne, &[0; 4]);
            }
            Stmt::FibLocal(dir) => {
                w.expr("fib", |w| {
                    w.u32(3, if *dir == Dir::Saddr { 1 } else { 2 });
                    w.u32(2, 3);
                    w.u32(1, REG_1);
                });
                // RTN_LOCAL.
                w.cmp(Op::Eq, &2u32.to_ne_bytes());
            }
            Stmt::Iifname { op, name } => {
                w.meta_load(META_IIFNAME, REG_1);
                if name.is_prefix() {
                    w.cmp(*op, name.name().as_bytes());
                } else {
                    let mut bytes = [0u8; 16];
                    let n = name.name().as_bytes();
                    if n.len() >= bytes.len() {
                        return Err("an interface name of 16 bytes or more");
                    }
                    bytes[..n.len()].copy_from_slice(n);
                    w.cmp(*op, &bytes);
                }
            }
            Stmt::MarkAnd { bits, value } => {
                w.meta_load(META_MARK, REG_1);
                w.bitwise(4, &bits.to_ne_bytes(), &[0; 4], true);
                w.cmp(Op::Eq, &value.to_ne_bytes());
            }
            Stmt::MarkSet { op, bits } => {
                w.meta_load(META_MARK, REG_1);
                let (mask, xor) = match op {
                    MarkOp::Or => (!bits, *bits),
                    MarkOp::Xor => (u32::MAX, *bits),
                };
                w.bitwise(4, &mask.to_ne_bytes(), &xor.to_ne_bytes(), true);
                w.expr("meta", |w| {
                    w.u32(2, META_MARK);
                    w.u32(3, REG_1);
                });
            }
            Stmt::Vmap { key, map } => {
                // nft's registers: 32-bit slots from the first, each field
                // from a 4-byte boundary; slot 0 is register 1, every fourth
                // one the next 128-bit register, the others NFT_REG32_nn.
                let mut slot = 0u32;
                for field in key {
                    let reg = if slot.is_multiple_of(4) {
                        REG_1 + slot / 4
                    } else {
                        8 + slot
                    };
                    let len = match field {
                        KeyField::Daddr | KeyField::Saddr => {
                            let dir = if *field == KeyField::Daddr {
                                Dir::Daddr
                            } else {
                                Dir::Saddr
                            };
                            w.payload(reg, BASE_NETWORK, self.addr_offset(dir), self.addr_len());
                            self.addr_len()
                        }
                        KeyField::L4Proto => {
                            w.meta_load(META_L4PROTO, reg);
                            1
                        }
                        KeyField::ThDport => {
                            w.payload(reg, BASE_TRANSPORT, 2, 2);
                            2
                        }
                    };
                    slot += len.div_ceil(4);
                }
                let id = self.set_ids.get(map.as_str()).copied();
                w.expr("lookup", |w| {
                    w.u32(2, REG_1);
                    w.u32(3, REG_VERDICT);
                    w.str(1, map.as_str());
                    if let Some(id) = id {
                        w.u32(4, id);
                    }
                });
            }
            Stmt::Numgen(verdicts) => {
                let (name, id) = anon.next().ok_or("an anonymous map")?;
                w.expr("numgen", |w| {
                    w.u32(1, REG_1);
                    w.u32(2, verdicts.len() as u32);
                    w.u32(3, 1);
                    w.u32(4, 0);
                });
                w.expr("lookup", |w| {
                    w.u32(2, REG_1);
                    w.u32(3, REG_VERDICT);
                    w.str(1, &name);
                    w.u32(4, id);
                });
            }
            Stmt::UpdateSaddr(set) => {
                w.payload(
                    REG_1,
                    BASE_NETWORK,
                    self.addr_offset(Dir::Saddr),
                    self.addr_len(),
                );
                let id = self.set_ids.get(set.as_str()).copied();
                w.expr("dynset", |w| {
                    w.u32(4, REG_1);
                    w.u32(3, 1);
                    w.str(1, set.as_str());
                    if let Some(id) = id {
                        w.u32(2, id);
                    }
                });
            }
            Stmt::DnatTo(to) => {
                let addr = self.addr_bytes(to.ip())?;
                w.expr("immediate", |w| {
                    w.u32(1, REG_1);
                    w.data(2, &addr);
                });
                w.expr("immediate", |w| {
                    w.u32(1, REG_2);
                    w.data(2, &to.port().to_be_bytes());
                });
                let family = u32::from(w.family);
                w.expr("nat", |w| {
                    w.u32(1, 1);
                    w.u32(2, family);
                    w.u32(3, REG_1);
                    w.u32(5, REG_2);
                    // NF_NAT_RANGE_PROTO_SPECIFIED.
                    w.u32(7, 2);
                });
            }
            Stmt::Masquerade { fully_random } => {
                w.expr("masq", |w| {
                    if *fully_random {
                        // NF_NAT_RANGE_PROTO_RANDOM_FULLY.
                        w.u32(1, 0x10);
                    }
                });
            }
            Stmt::Verdict(Verdict::Reject) => {
                // ICMP port unreachable (ICMPv6 code 4 in an ip6 table).
                let code = if self.family == Family::Ip { 3u8 } else { 4u8 };
                w.expr("reject", |w| {
                    w.u32(1, 0);
                    w.attr(2, &[code]);
                });
            }
            Stmt::Verdict(v) => {
                let (code, chain) = verdict_code(v)?;
                w.immediate_verdict(code, chain);
            }
        }
        Ok(())
    }

    /// `payload` and `lookup` of an address in a set.
    fn lookup_set(&self, w: &mut Writer, dir: Dir, op: Op, set: &str, id: Option<u32>) {
        w.payload(REG_1, BASE_NETWORK, self.addr_offset(dir), self.addr_len());
        w.expr("lookup", |w| {
            w.u32(2, REG_1);
            w.str(1, set);
            if let Some(id) = id {
                w.u32(4, id);
            }
            if op == Op::Ne {
                // NFT_LOOKUP_F_INV.
                w.u32(5, 1);
            }
        });
    }
}

fn base_chain(w: &mut Writer, base: &BaseChain) {
    w.str(
        7,
        match base.kind {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        },
    );
    let hook = w.nest(4);
    w.u32(
        1,
        match base.hook {
            Hook::Prerouting => 0,
            Hook::Input => 1,
            Hook::Forward => 2,
            Hook::Output => 3,
            Hook::Postrouting => 4,
        },
    );
    w.attr(2, &base.priority.to_be_bytes());
    w.end(hook);
}

fn verdict_code(v: &Verdict) -> Result<(i32, Option<&str>), &'static str> {
    Ok(match v {
        Verdict::Accept => (NF_ACCEPT, None),
        Verdict::Drop => (NF_DROP, None),
        Verdict::Return => (NFT_RETURN, None),
        Verdict::Jump(c) => (NFT_JUMP, Some(c.as_str())),
        Verdict::Goto(c) => (NFT_GOTO, Some(c.as_str())),
        _ => return Err("a verdict other than accept, drop, return, jump or goto"),
    })
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn field_type(t: KeyType) -> (u32, u32) {
    match t {
        KeyType::Ipv4Addr => (TYPE_IPADDR, 4),
        KeyType::Ipv6Addr => (TYPE_IP6ADDR, 16),
        KeyType::InetProto => (TYPE_INET_PROTOCOL, 1),
        KeyType::InetService => (TYPE_INET_SERVICE, 2),
    }
}

/// nft's number of a key type: six bits a field, the first field highest.
fn key_type(key: &[KeyType]) -> u32 {
    key.iter().fold(0, |acc, t| (acc << 6) | field_type(*t).0)
}

/// A key's length: each field of a concatenation takes a multiple of 4 bytes.
fn key_len(key: &[KeyType]) -> u32 {
    match key {
        [one] => field_type(*one).1,
        _ => key
            .iter()
            .map(|t| field_type(*t).1.next_multiple_of(4))
            .sum(),
    }
}

/// `NFTA_SET_ELEM_KEY` with the key's bytes.
fn key_value(w: &mut Writer, key: &[KeyValue]) {
    let concat = key.len() > 1;
    let mut bytes = Vec::with_capacity(key.len() * 4);
    for value in key {
        match value {
            KeyValue::Addr(IpAddr::V4(a)) => bytes.extend_from_slice(&a.octets()),
            KeyValue::Addr(IpAddr::V6(a)) => bytes.extend_from_slice(&a.octets()),
            KeyValue::Proto(p) => bytes.push(proto_number(*p)),
            KeyValue::Port(port) => bytes.extend_from_slice(&port.to_be_bytes()),
        }
        if concat {
            while !bytes.len().is_multiple_of(4) {
                bytes.push(0);
            }
        }
    }
    w.data(1, &bytes);
}

/// The attribute type of the `i`th element of a list: nft numbers them from 1.
fn list_item(i: usize) -> u16 {
    u16::try_from(i + 1).unwrap_or(u16::MAX)
}

fn put_u32(ud: &mut Vec<u8>, kind: u8, value: u32) {
    ud.extend_from_slice(&[kind, 4]);
    ud.extend_from_slice(&value.to_ne_bytes());
}

/// A comment as one item of user data: type, length, the text and a NUL.
fn comment_udata(kind: u8, comment: &NftComment) -> Vec<u8> {
    let text = comment.as_str().as_bytes();
    let mut ud = Vec::with_capacity(text.len() + 3);
    ud.push(kind);
    // NftComment holds at most 128 bytes.
    ud.push(u8::try_from(text.len() + 1).unwrap_or(u8::MAX));
    ud.extend_from_slice(text);
    ud.push(0);
    ud
}

fn to_number(bytes: &[u8]) -> u128 {
    bytes.iter().fold(0, |acc, b| (acc << 8) | u128::from(*b))
}

fn to_bytes(n: u128, len: u32) -> Vec<u8> {
    n.to_be_bytes()[16 - len as usize..].to_vec()
}
