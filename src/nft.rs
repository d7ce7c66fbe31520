//! The nftables IR: kube-proxy's nftables ruleset as values, and its one writer.
//!
//! On the anchor of [knftables](https://github.com/kubernetes-sigs/knftables)'
//! objects: a [`Ruleset`] is one table with its [`Chain`]s (base chains carry a
//! [`BaseChain`] type, hook and priority), [`Set`]s and verdict [`Map`]s, each
//! with its comment. Rules are typed: a [`Rule`] is a list of [`Stmt`]s (the
//! matches, maps and verdicts kube-proxy's rules use), not text, so the tracer can
//! evaluate them and the writer is the only place that spells nftables syntax.
//!
//! A [`Transaction`] is an ordered list of [`Operation`]s on one table (`add`,
//! `flush` and `delete` of chains, sets, maps and elements, `add rule`): what one
//! `nft -f` applies, all or nothing. `Transaction::from(&ruleset)` is the whole
//! table as `add` commands, the same text as [`Ruleset::to_dump`].
//!
//! Names ([`Name`]), comments ([`NftComment`]) and interface names ([`IfName`])
//! are validated when built; the writer quotes every comment. No input can end a
//! command or start a second one.
//!
//! ```
//! use svcnat::nft::*;
//!
//! let mut rs = Ruleset::new(Family::Ip, Name::new("kube-proxy")?, None);
//! let chain = Name::new("mark-for-masquerade")?;
//! rs.chains.insert(chain.clone(), Chain {
//!     rules: vec![Rule::new(vec![Stmt::MarkSet { op: MarkOp::Or, bits: 0x4000 }])],
//!     ..Chain::default()
//! });
//! assert_eq!(
//!     rs.to_dump(),
//!     "add table ip kube-proxy\n\
//!      add chain ip kube-proxy mark-for-masquerade\n\
//!      add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000\n"
//! );
//! # Ok::<(), NftError>(())
//! ```

mod names;
mod objects;
mod stmt;
pub(crate) mod text;
mod transaction;
pub mod wire;

pub use names::{IfName, Name, NftComment, NftError};
pub use objects::{
    BaseChain, Chain, ChainType, Element, Family, Hook, KeyType, KeyValue, Map, MapElement, Rule,
    Ruleset, Set, SetFlag,
};
pub use stmt::{AddrItem, AddrValue, Dir, KeyField, MarkOp, Op, Stmt, Verdict};
pub use transaction::{Operation, Transaction};
