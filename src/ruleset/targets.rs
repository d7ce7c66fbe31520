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

/// Where DNAT sends a packet: a new address, and a new port unless the packet
/// keeps its own (what Docker, CNI portmap and hand-written rules do).
///
/// `Debug` and `Display` print it as `--to-destination` takes it: `10.0.0.1:80`,
/// `[fd00::1]:80`, `10.0.0.1`. (Ranges, where the kernel picks the address or
/// port, are kept verbatim as [`Target::Other`]: a trace could not follow them.)
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DnatTo {
    /// The new destination address.
    pub addr: IpAddr,
    /// The new destination port; `None` keeps the packet's port.
    pub port: Option<u16>,
}

impl DnatTo {
    /// To an address, keeping the packet's port.
    pub fn address(addr: IpAddr) -> Self {
        DnatTo { addr, port: None }
    }

    /// The address and port this sends to, if it names a port.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.port.map(|port| SocketAddr::new(self.addr, port))
    }

    /// Writes the destination without `core::fmt` machinery.
    fn write_to<W: fmt::Write>(&self, f: &mut W) -> fmt::Result {
        match self.socket_addr() {
            Some(to) => text::socket(f, to),
            None => text::ip(f, self.addr),
        }
    }
}

impl From<SocketAddr> for DnatTo {
    /// To one address and port, as the compiler writes it.
    fn from(to: SocketAddr) -> Self {
        DnatTo {
            addr: to.ip(),
            port: Some(to.port()),
        }
    }
}

impl fmt::Display for DnatTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

impl fmt::Debug for DnatTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
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
    /// `-j DNAT --to-destination ADDR[:PORT]` (IPv6 bracketed when a port
    /// follows); the compiler writes `ADDR:PORT` (`DnatTo::from(SocketAddr)`).
    Dnat(DnatTo),
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
                to.write_to(f)
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
