//! [`Target`], what a rule does with a packet it matches, and [`MarkOp`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::{ChainName, Mark, PortRange, RawText, Word, flag, text};

/// A change to the packet mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MarkOp {
    /// `--or-mark V`.
    Or(u32),
    /// `--xor-mark V`.
    Xor(u32),
    /// `--and-mark V`.
    And(u32),
    /// `--set-xmark V/M`: clear the bits of M, then XOR V (what `iptables-save` prints
    /// for every MARK target: `--or-mark V` is `V/V`, `--xor-mark V` is `V/0x0`).
    SetXmark {
        /// The value XORed in.
        value: u32,
        /// The bits cleared first.
        mask: u32,
    },
    /// `--set-mark V[/M]`.
    Set(Mark),
}

impl MarkOp {
    /// `(value, mask)` of the `--set-xmark V/M` this operation is: the kernel
    /// computes `(mark & !mask) ^ value` for every MARK target.
    pub(crate) fn xmark(&self) -> (u32, u32) {
        match *self {
            MarkOp::Or(v) => (v, v),
            MarkOp::Xor(v) => (v, 0),
            MarkOp::And(v) => (0, !v),
            MarkOp::SetXmark { value, mask } => (value, mask),
            MarkOp::Set(Mark { value, mask }) => (value, value | mask.unwrap_or(u32::MAX)),
        }
    }

    /// The one operation for what this one does to a mark: `--or-mark`,
    /// `--xor-mark` or `--and-mark` when one of them says it, else `--set-xmark`.
    /// Equal effects give equal values.
    pub(crate) fn normalized(&self) -> MarkOp {
        let (value, mask) = self.xmark();
        if mask == value {
            MarkOp::Or(value)
        } else if mask == 0 {
            MarkOp::Xor(value)
        } else if value == 0 {
            MarkOp::And(!mask)
        } else {
            MarkOp::SetXmark { value, mask }
        }
    }
}

/// What a rule does with a packet it matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Target {
    /// `-j CHAIN`.
    Jump(ChainName),
    /// `-g CHAIN`.
    Goto(ChainName),
    /// `-j ACCEPT`.
    Accept,
    /// `-j DROP`.
    Drop,
    /// `-j RETURN`.
    Return,
    /// `-j REJECT`.
    Reject,
    /// `-j DNAT --to-destination ADDR:PORT` (IPv6 bracketed).
    Dnat(SocketAddr),
    /// `-j DNAT --to-destination ADDR` without a port: the packet keeps its
    /// destination port (what Docker, CNI portmap and hand-written rules use).
    DnatAddress(IpAddr),
    /// `-j MASQUERADE [--random-fully]`.
    Masquerade {
        /// Adds `--random-fully`.
        random_fully: bool,
    },
    /// `-j MARK --or-mark V` or `--xor-mark V`.
    Mark(MarkOp),
    /// `-j REJECT --reject-with TYPE`.
    RejectWith(Word),
    /// `-j SNAT --to-source ADDR[:PORT[-PORT]] [--random-fully]`.
    Snat {
        /// The new source address.
        to: IpAddr,
        /// The new source ports, if restricted.
        ports: Option<PortRange>,
        /// Adds `--random-fully`.
        random_fully: bool,
    },
    /// Any other target, verbatim with its options (`-j LOG --log-prefix "x: "`).
    Other(RawText),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

impl Target {
    /// Writes `-j …` with its options; the common ones without `core::fmt` machinery.
    pub(crate) fn write_to<W: fmt::Write>(&self, f: &mut W) -> fmt::Result {
        match self {
            Target::Jump(c) => {
                f.write_str(flag::JUMP)?;
                f.write_str(c.as_str())
            }
            Target::Goto(c) => write!(f, "-g {c}"),
            Target::Accept => f.write_str("-j ACCEPT"),
            Target::Drop => f.write_str("-j DROP"),
            Target::Return => f.write_str("-j RETURN"),
            Target::Reject => f.write_str("-j REJECT"),
            Target::Dnat(to) => {
                f.write_str(flag::DNAT)?;
                text::socket(f, *to)
            }
            Target::DnatAddress(to) => {
                f.write_str(flag::DNAT)?;
                write!(f, "{to}")
            }
            Target::Masquerade { random_fully } => {
                f.write_str("-j MASQUERADE")?;
                if *random_fully {
                    f.write_str(" --random-fully")?;
                }
                Ok(())
            }
            Target::Mark(MarkOp::Or(v)) => write!(f, "-j MARK --or-mark {v:#x}"),
            Target::Mark(MarkOp::Xor(v)) => write!(f, "-j MARK --xor-mark {v:#x}"),
            Target::Mark(MarkOp::And(v)) => write!(f, "-j MARK --and-mark {v:#x}"),
            Target::Mark(MarkOp::SetXmark { value, mask }) => {
                write!(f, "-j MARK --set-xmark {value:#x}/{mask:#x}")
            }
            Target::Mark(MarkOp::Set(m)) => write!(f, "-j MARK --set-mark {m}"),
            Target::RejectWith(with) => write!(f, "-j REJECT --reject-with {with}"),
            Target::Snat {
                to,
                ports,
                random_fully,
            } => {
                f.write_str("-j SNAT --to-source ")?;
                match (to, ports) {
                    (IpAddr::V6(ip), Some(_)) => write!(f, "[{ip}]")?,
                    _ => write!(f, "{to}")?,
                }
                if let Some(p) = ports {
                    write!(f, ":{}", p.first)?;
                    if p.last != p.first {
                        write!(f, "-{}", p.last)?;
                    }
                }
                if *random_fully {
                    f.write_str(" --random-fully")?;
                }
                Ok(())
            }
            Target::Other(raw) => write!(f, "{raw}"),
        }
    }
}
