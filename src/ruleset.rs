//! The typed rule IR: tables, chains, rules made of [`Match`]es and a [`Target`].
//!
//! Values are validated when built ([`ChainName`], [`Comment`], [`Probability`]),
//! so anything that reaches [`crate::render`] can be printed without further checks
//! and no name or comment can inject text into a rule.
//!
//! The IR is kept in one file per idea: the validated names and words of rule
//! text, the [`Match`]es, the [`Target`]s, and the tables that hold them
//! ([`Rule`], [`Chain`], [`TableRules`], [`Ruleset`]). Everything is re-exported
//! here, so `svcnat::ruleset::X` names every type.

mod foreign;
pub(crate) mod lex;
mod matches;
mod names;
pub(crate) mod restore;
mod tables;
mod targets;
pub(crate) mod text;

pub use foreign::{AddrKind, Direction, PhysdevOption, PortsOf, ProtocolName, SetMatch};
pub use matches::{
    AddrType, Address, CtState, Mark, Match, NfacctCounter, Not, PortRange, ProtocolMatch,
    RecentAction,
};
pub use names::{ChainName, Comment, Interface, IrError, Probability, RawText, Word};
pub(crate) use tables::Matches;
pub use tables::{Chain, JumpRule, Policy, Rule, Ruleset, Table, TableRules};
pub use targets::{DnatTo, MarkOp, Target};

/// The flags that both the typed rules and [`restore::RuleLine`]'s pieces write,
/// each spelt here once.
pub(crate) mod flag {
    /// Each flag's one spelling, as a literal so a writer can join it to the space
    /// before it at compile time (`concat!(" ", spelling!(source))`).
    macro_rules! spelling {
        (source) => {
            "-s "
        };
        (statistic) => {
            "-m statistic --mode random --probability "
        };
        (jump) => {
            "-j "
        };
        (dnat) => {
            "-j DNAT --to-destination "
        };
    }

    /// A source address.
    pub const SOURCE: &str = spelling!(source);
    /// A random pick.
    pub const STATISTIC: &str = spelling!(statistic);
    /// A jump.
    pub const JUMP: &str = spelling!(jump);
    /// Destination NAT.
    pub const DNAT: &str = spelling!(dnat);
    /// The same, each after the space that separates it from what comes before:
    /// one write instead of two on the compiler's most written lines.
    pub const SPACED_SOURCE: &str = concat!(" ", spelling!(source));
    /// See [`SPACED_SOURCE`].
    pub const SPACED_STATISTIC: &str = concat!(" ", spelling!(statistic));
    /// See [`SPACED_SOURCE`].
    pub const SPACED_JUMP: &str = concat!(" ", spelling!(jump));
    /// See [`SPACED_SOURCE`].
    pub const SPACED_DNAT: &str = concat!(" ", spelling!(dnat));
}
