//! One rule's words -> a typed [`Rule`].

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

mod modules;

use super::ErrorKind;
use crate::model::{IpFamily, Protocol};
use crate::ruleset::lex::Token;
use crate::ruleset::{
    Address, ChainName, Comment, DnatTo, Interface, Mark, MarkOp, Match, Not, PortRange,
    Probability, ProtocolMatch, ProtocolName, RawText, Rule, Target, Word,
};

/// A parse failure at a byte offset of the line, before the line is known.
#[derive(Debug)]
pub(crate) struct Fail {
    /// The byte offset in the line.
    pub at: usize,
    /// What is wrong.
    pub kind: ErrorKind,
}

impl Fail {
    pub(crate) fn new(at: usize, kind: ErrorKind) -> Self {
        Fail { at, kind }
    }
}

/// The family of the addresses seen so far: fixed by the caller, or set by the
/// first address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FamilyCheck {
    pub family: Option<IpFamily>,
}

impl FamilyCheck {
    fn check(&mut self, ip: &IpAddr, at: usize) -> Result<(), Fail> {
        let found = IpFamily::of(ip);
        match self.family {
            None => {
                self.family = Some(found);
                Ok(())
            }
            Some(expected) if expected == found => Ok(()),
            Some(expected) => Err(Fail::new(at, ErrorKind::FamilyMismatch { expected, found })),
        }
    }
}

const CORE: &[&str] = &[
    "-s",
    "--source",
    "--src",
    "-d",
    "--destination",
    "--dst",
    "-p",
    "--protocol",
    "-i",
    "--in-interface",
    "-o",
    "--out-interface",
    "-f",
    "--fragment",
    "-c",
    "--set-counters",
    "-m",
    "--match",
    "-j",
    "--jump",
    "-g",
    "--goto",
    "-4",
    "--ipv4",
    "-6",
    "--ipv6",
];

/// True for an unquoted `!` (a quoted `"!"` is a value).
fn is_bang(t: &Token) -> bool {
    !t.quoted && t.text == "!"
}

/// True for an unquoted core option (a quoted `"-j"` is a value).
fn is_core(t: &Token) -> bool {
    !t.quoted && CORE.contains(&t.text.as_str())
}

const PORT_OPTIONS: &[&str] = &["--dport", "--destination-port", "--sport", "--source-port"];

/// One option inside a module or target segment: `[!] --name ARG…`.
struct Opt<'t> {
    negated: bool,
    name: &'t Token,
    args: Vec<&'t Token>,
}

struct Parser<'a> {
    line: &'a str,
    toks: &'a [Token],
    i: usize,
    family: &'a mut FamilyCheck,
    /// The protocol whose port options are available (`-p tcp` or `-m tcp` seen).
    proto: Option<Protocol>,
    rule: Rule,
}

/// Parses the words of a rule (everything after `-A CHAIN`).
pub(crate) fn parse_rule(
    line: &str,
    toks: &[Token],
    family: &mut FamilyCheck,
) -> Result<Rule, Fail> {
    let mut p = Parser {
        line,
        toks,
        i: 0,
        family,
        proto: None,
        rule: Rule::new(),
    };
    p.run()?;
    Ok(p.rule)
}

fn bad(tok: &Token, option: &str, reason: impl Into<String>) -> Fail {
    Fail::new(
        tok.start,
        ErrorKind::BadValue {
            option: option.to_owned(),
            value: tok.text.clone(),
            reason: reason.into(),
        },
    )
}

fn neg<T>(negated: bool, value: T) -> Not<T> {
    Not { negated, value }
}

fn ir(tok: &Token, e: crate::ruleset::IrError) -> Fail {
    Fail::new(tok.start, ErrorKind::Invalid(e))
}

impl<'a> Parser<'a> {
    fn is_stop(&self, i: usize) -> bool {
        let Some(t) = self.toks.get(i) else {
            return true;
        };
        if is_bang(t) {
            return self.toks.get(i + 1).is_some_and(is_core);
        }
        is_core(t)
    }

    /// The index just after the segment that starts at `from` (options up to the
    /// next core option, match or target).
    fn segment_end(&self, from: usize) -> usize {
        let mut j = from;
        while !self.is_stop(j) {
            j += 1;
        }
        j
    }

    fn raw(&self, from: usize, to: usize) -> Result<RawText, Fail> {
        let (a, b) = (self.toks[from].start, self.toks[to - 1].end);
        RawText::new(&self.line[a..b]).map_err(|e| ir(&self.toks[from], e))
    }

    /// Splits `toks[from..to]` into options; `None` if a word is not where an
    /// option belongs (such a segment is kept verbatim).
    fn options(&self, from: usize, to: usize) -> Option<Vec<Opt<'a>>> {
        let toks: &'a [Token] = self.toks;
        let mut out = Vec::new();
        let mut j = from;
        while j < to {
            let negated = is_bang(&toks[j]);
            if negated {
                j += 1;
            }
            let name = toks.get(j).filter(|t| j < to && t.is_option())?;
            j += 1;
            let mut args = Vec::new();
            while j < to && !is_bang(&toks[j]) && !toks[j].is_option() {
                args.push(&toks[j]);
                j += 1;
            }
            out.push(Opt {
                negated,
                name,
                args,
            });
        }
        Some(out)
    }

    fn value(&mut self, option: &Token) -> Result<&'a Token, Fail> {
        let toks: &'a [Token] = self.toks;
        match toks.get(self.i) {
            Some(t) if !is_bang(t) && !t.is_option() => {
                self.i += 1;
                Ok(t)
            }
            _ => Err(Fail::new(
                option.start,
                ErrorKind::MissingArgument {
                    option: option.text.clone(),
                },
            )),
        }
    }

    fn address(&mut self, tok: &Token, option: &str) -> Result<Address, Fail> {
        let text = tok.text.as_str();
        let addr = if let Some((ip, len)) = text.split_once('/') {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| bad(tok, option, "not an IP address"))?;
            let prefix = match len.parse::<u8>() {
                Ok(p) => p,
                Err(_) => mask_len(len).ok_or_else(|| bad(tok, option, "not a prefix length"))?,
            };
            Address::Net(
                IpNet::new(ip, prefix).map_err(|_| bad(tok, option, "prefix length too long"))?,
            )
        } else {
            Address::Ip(
                text.parse()
                    .map_err(|_| bad(tok, option, "not an IP address or CIDR"))?,
            )
        };
        let ip = match addr {
            Address::Ip(ip) => ip,
            Address::Net(n) => n.addr(),
        };
        self.family.check(&ip, tok.start)?;
        Ok(addr)
    }

    fn push(&mut self, m: Match) {
        self.rule.matches.push(m);
    }

    fn run(&mut self) -> Result<(), Fail> {
        while self.i < self.toks.len() {
            let start = self.i;
            let tok = &self.toks[self.i];
            self.i += 1;
            let negated = is_bang(tok);
            let opt = if negated {
                let Some(next) = self.toks.get(self.i) else {
                    return Err(Fail::new(
                        tok.start,
                        ErrorKind::UnexpectedToken(tok.text.clone()),
                    ));
                };
                if is_bang(next) {
                    return Err(Fail::new(next.start, ErrorKind::DoubleNegation));
                }
                self.i += 1;
                next
            } else {
                tok
            };
            match opt.text.as_str() {
                "-s" | "--source" | "--src" | "-d" | "--destination" | "--dst" => {
                    let v = self.value(opt)?;
                    let a = self.address(v, &opt.text)?;
                    if opt.text.starts_with("-s") || opt.text.starts_with("--s") {
                        self.push(Match::Source(neg(negated, a)));
                    } else {
                        self.push(Match::Destination(neg(negated, a)));
                    }
                }
                "-i" | "--in-interface" | "-o" | "--out-interface" => {
                    let v = self.value(opt)?;
                    let (name, prefix) = match v.text.strip_suffix('+') {
                        Some(n) => (n, true),
                        None => (v.text.as_str(), false),
                    };
                    let iface = Interface::new(name, prefix).map_err(|e| ir(v, e))?;
                    if opt.text == "-i" || opt.text == "--in-interface" {
                        self.push(Match::InInterface(neg(negated, iface)));
                    } else {
                        self.push(Match::OutInterface(neg(negated, iface)));
                    }
                }
                "-p" | "--protocol" => {
                    let v = self.value(opt)?;
                    let name = ProtocolName::new(&v.text).map_err(|e| ir(v, e))?;
                    let merged = match (&name, self.rule.matches.last()) {
                        (
                            ProtocolName::Known(p),
                            Some(Match::Protocol(ProtocolMatch::ModuleOnly(m))),
                        ) if !negated
                            && p == m
                            && start >= 2
                            && self.toks[start - 2].text == "-m"
                            && self.toks[start - 1].text == p.as_str() =>
                        {
                            Some(*p)
                        }
                        _ => None,
                    };
                    if let Some(p) = merged {
                        self.rule.matches.pop();
                        self.push(Match::protocol(p));
                    } else {
                        self.push(Match::Protocol(ProtocolMatch::Plain(neg(
                            negated,
                            name.clone(),
                        ))));
                    }
                    if let ProtocolName::Known(p) = name
                        && !negated
                    {
                        self.proto = Some(p);
                    }
                }
                "-m" | "--match" if !negated => {
                    let v = self.value(opt)?;
                    self.module(start, v)?;
                }
                "-j" | "--jump" if !negated => {
                    let v = self.value(opt)?;
                    self.target(start, v)?;
                }
                "-g" | "--goto" if !negated => {
                    let v = self.value(opt)?;
                    let chain = ChainName::new(v.text.clone()).map_err(|e| ir(v, e))?;
                    self.set_target(opt, Target::Goto(chain))?;
                }
                "-f" | "--fragment" => self.push(Match::Fragment { negated }),
                // The family flags: a rule of the other family was dropped before
                // parsing (see `rule_family`); for this family they say nothing.
                "-4" | "--ipv4" | "-6" | "--ipv6" if !negated => {}
                "-c" | "--set-counters" if !negated => {
                    // Counters are not rules: read and dropped.
                    self.value(opt)?;
                    self.value(opt)?;
                }
                name if PORT_OPTIONS.contains(&name) && self.proto.is_some() => {
                    let v = self.value(opt)?;
                    let range = port_range(v, name)?;
                    let m = if name == "--dport" || name == "--destination-port" {
                        Match::DestinationPort(neg(negated, range))
                    } else {
                        Match::SourcePort(neg(negated, range))
                    };
                    self.push(m);
                }
                _ if opt.is_option() && self.proto.is_some() => {
                    // An option of the protocol module svcnat does not model
                    // (`--tcp-flags`, `--syn`): kept verbatim.
                    let end = self.segment_end(self.i);
                    let end = (self.i..end)
                        .find(|&j| is_bang(&self.toks[j]) || self.toks[j].is_option())
                        .unwrap_or(end);
                    self.i = end;
                    let raw = self.raw(start, end)?;
                    self.push(Match::Other(raw));
                }
                _ if opt.is_option() => {
                    return Err(Fail::new(
                        opt.start,
                        ErrorKind::UnknownOption(opt.text.clone()),
                    ));
                }
                _ => {
                    return Err(Fail::new(
                        opt.start,
                        ErrorKind::UnexpectedToken(opt.text.clone()),
                    ));
                }
            }
        }
        Ok(())
    }

    fn set_target(&mut self, at: &Token, target: Target) -> Result<(), Fail> {
        if self.rule.target.is_some() {
            return Err(Fail::new(
                at.start,
                ErrorKind::UnexpectedToken(at.text.clone()),
            ));
        }
        self.rule.target = Some(target);
        Ok(())
    }

    /// `-m NAME …` starting at token `start`; `self.i` is just after NAME.
    fn module(&mut self, start: usize, name: &'a Token) -> Result<(), Fail> {
        if let Ok(ProtocolName::Known(p)) = ProtocolName::new(&name.text)
            && name.text == p.as_str()
        {
            self.push(Match::Protocol(ProtocolMatch::ModuleOnly(p)));
            self.proto = Some(p);
            return Ok(());
        }
        if name.text == "comment" && self.comment(start)? {
            return Ok(());
        }
        let mut end = self.segment_end(self.i);
        // Port options of an already loaded protocol module may follow another
        // module's options (`-m tcp -p tcp -m comment --comment x --dport 80`).
        if self.proto.is_some()
            && let Some(j) = (self.i..end).find(|&j| {
                PORT_OPTIONS.contains(&self.toks[j].text.as_str())
                    && !matches!(name.text.as_str(), "multiport")
            })
        {
            end = if j > self.i && self.toks[j - 1].text == "!" {
                j - 1
            } else {
                j
            };
        }
        let from = self.i;
        self.i = end;
        let parsed = match self.options(from, end) {
            Some(opts) => modules::known(&name.text, &opts)?,
            None => None,
        };
        match parsed {
            Some(ms) => self.rule.matches.extend(ms),
            None => {
                let raw = self.raw(start, end)?;
                self.push(Match::Other(raw));
            }
        }
        Ok(())
    }

    /// `-m comment --comment VALUE`: the word after `--comment` is its value
    /// whatever it looks like (`-x`, `"-j"`, `"!"`), as iptables' option parser
    /// takes it. A value [`Comment`] refuses is kept verbatim as
    /// [`Match::OtherComment`]. `Ok(false)` if the segment is not that shape.
    fn comment(&mut self, start: usize) -> Result<bool, Fail> {
        let toks: &'a [Token] = self.toks;
        let Some(flag) = toks
            .get(self.i)
            .filter(|t| !t.quoted && t.text == "--comment")
        else {
            return Ok(false);
        };
        let Some(value) = toks.get(self.i + 1) else {
            return Err(Fail::new(
                flag.start,
                ErrorKind::MissingArgument {
                    option: flag.text.clone(),
                },
            ));
        };
        self.i += 2;
        match Comment::new(value.text.clone()) {
            Ok(c) => self.push(Match::Comment(c)),
            Err(_) => {
                let raw = self.raw(start, self.i)?;
                self.push(Match::OtherComment(raw));
            }
        }
        Ok(true)
    }

    /// `-j NAME …` starting at token `start`; `self.i` is just after NAME.
    fn target(&mut self, start: usize, name: &'a Token) -> Result<(), Fail> {
        let end = self.segment_end(self.i);
        let from = self.i;
        self.i = end;
        let opts = self.options(from, end);
        let known = match opts {
            Some(opts) => self.known_target(&name.text, &opts)?,
            None => None,
        };
        let target = match known {
            Some(t) => t,
            None => Target::Other(self.raw(start, end)?),
        };
        self.set_target(&self.toks[start], target)
    }

    fn known_target(&mut self, name: &str, opts: &[Opt<'_>]) -> Result<Option<Target>, Fail> {
        if opts.iter().any(|o| o.negated) {
            return Ok(None);
        }
        let only = |flag: &str| -> Option<&Token> {
            match opts {
                [o] if o.name.text == flag && o.args.len() == 1 => Some(o.args[0]),
                _ => None,
            }
        };
        let flags_only = |allowed: &[&str]| {
            opts.iter()
                .all(|o| o.args.is_empty() && allowed.contains(&o.name.text.as_str()))
        };
        Ok(match name {
            "ACCEPT" if opts.is_empty() => Some(Target::Accept),
            "DROP" if opts.is_empty() => Some(Target::Drop),
            "RETURN" if opts.is_empty() => Some(Target::Return),
            "REJECT" if opts.is_empty() => Some(Target::Reject),
            "REJECT" => match only("--reject-with") {
                Some(w) => Some(Target::RejectWith(
                    Word::new(w.text.clone()).map_err(|e| ir(w, e))?,
                )),
                None => None,
            },
            "DNAT" => match only("--to-destination") {
                Some(to) => match dnat_to(&to.text) {
                    Some(dnat) => {
                        self.family.check(&dnat.addr, to.start)?;
                        Some(Target::Dnat(dnat))
                    }
                    None => None,
                },
                None => None,
            },
            "MASQUERADE" if flags_only(&["--random-fully"]) && opts.len() <= 1 => {
                Some(Target::Masquerade {
                    random_fully: !opts.is_empty(),
                })
            }
            "SNAT" => {
                let random_fully = opts
                    .iter()
                    .any(|o| o.name.text == "--random-fully" && o.args.is_empty());
                let rest: Vec<&Opt<'_>> = opts
                    .iter()
                    .filter(|o| o.name.text != "--random-fully")
                    .collect();
                match rest.as_slice() {
                    [o] if o.name.text == "--to-source" && o.args.len() == 1 => {
                        match snat_to(&o.args[0].text) {
                            Some((to, ports)) => {
                                self.family.check(&to, o.args[0].start)?;
                                Some(Target::Snat {
                                    to,
                                    ports,
                                    random_fully,
                                })
                            }
                            None => None,
                        }
                    }
                    _ => None,
                }
            }
            "MARK" => match opts {
                [o] if o.args.len() == 1 => {
                    let a = o.args[0];
                    let flag = o.name.text.as_str();
                    match flag {
                        "--or-mark" => Some(MarkOp::Or(number(a, flag)?)),
                        "--xor-mark" => Some(MarkOp::Xor(number(a, flag)?)),
                        "--and-mark" => Some(MarkOp::And(number(a, flag)?)),
                        "--set-xmark" => {
                            let m = mark(a, flag)?;
                            Some(MarkOp::SetXmark {
                                value: m.value,
                                mask: m.mask.unwrap_or(u32::MAX),
                            })
                        }
                        "--set-mark" => Some(MarkOp::Set(mark(a, flag)?)),
                        _ => None,
                    }
                    .map(Target::Mark)
                }
                _ => None,
            },
            _ if opts.is_empty() => ChainName::new(name).ok().map(Target::Jump),
            _ => None,
        })
    }
}

/// The one value of an option.
fn one_arg<'t>(o: &Opt<'t>) -> Result<&'t Token, Fail> {
    match o.args.as_slice() {
        [a] => Ok(a),
        [] => Err(Fail::new(
            o.name.start,
            ErrorKind::MissingArgument {
                option: o.name.text.clone(),
            },
        )),
        [_, extra, ..] => Err(Fail::new(
            extra.start,
            ErrorKind::UnexpectedToken(extra.text.clone()),
        )),
    }
}

/// The prefix length of a contiguous dotted or colon mask.
fn mask_len(mask: &str) -> Option<u8> {
    let bits: u128 = match mask.parse::<IpAddr>().ok()? {
        IpAddr::V4(m) => u128::from(u32::from(m)) << 96,
        IpAddr::V6(m) => u128::from(m),
    };
    let len = bits.leading_ones();
    (bits.checked_shl(len).unwrap_or(0) == 0).then_some(len as u8)
}

fn number(tok: &Token, option: &str) -> Result<u32, Fail> {
    let t = tok.text.as_str();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => t.parse::<u32>(),
    };
    parsed.map_err(|_| bad(tok, option, "not a 32-bit number"))
}

fn mark(tok: &Token, option: &str) -> Result<Mark, Fail> {
    let sub = |text: &str| Token {
        text: text.to_owned(),
        start: tok.start,
        end: tok.end,
        quoted: false,
    };
    match tok.text.split_once('/') {
        Some((v, m)) => Ok(Mark {
            value: number(&sub(v), option)?,
            mask: Some(number(&sub(m), option)?),
        }),
        None => Ok(Mark {
            value: number(tok, option)?,
            mask: None,
        }),
    }
}

fn port_range_text(tok: &Token, text: &str, option: &str) -> Result<PortRange, Fail> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| bad(tok, option, "not a port number or range"))
    };
    match text.split_once(':') {
        Some((a, b)) => {
            let first = if a.is_empty() { 0 } else { port(a)? };
            let last = if b.is_empty() { u16::MAX } else { port(b)? };
            if first > last {
                return Err(bad(tok, option, "range ends before it starts"));
            }
            Ok(PortRange { first, last })
        }
        None => Ok(PortRange::one(port(text)?)),
    }
}

fn port_range(tok: &Token, option: &str) -> Result<PortRange, Fail> {
    port_range_text(tok, &tok.text, option)
}

/// A probability as written; a value that prints like `1/n` becomes exactly `1/n`,
/// the value the compiler computes, so parsing svcnat's own text gives back its
/// ruleset.
fn probability(tok: &Token) -> Result<Probability, Fail> {
    let p: f64 = tok
        .text
        .parse()
        .map_err(|_| bad(tok, "--probability", "not a number"))?;
    let prob = Probability::new(p).map_err(|e| ir(tok, e))?;
    Ok(snap_one_in(prob))
}

/// `1/n` if `p` prints (to ten decimals) as `1/n` does.
pub(crate) fn snap_one_in(p: Probability) -> Probability {
    let n = (1.0 / p.value()).round();
    if (1.0..1e9).contains(&n) {
        let n = n as usize;
        if let Ok(q) = Probability::one_in(n)
            && q.to_string() == p.to_string()
        {
            return q;
        }
    }
    p
}

/// `ADDR:PORT` or `ADDR` (also `[V6]`); a range or anything else is `None`
/// (kept verbatim: the kernel picks from a range, which a trace cannot follow).
/// So is a scoped IPv6 address (`[fe80::1%2]:80`): `DnatTo` has no scope, and the
/// text must print back as it was.
fn dnat_to(text: &str) -> Option<DnatTo> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        if let SocketAddr::V6(v6) = sa
            && v6.scope_id() != 0
        {
            return None;
        }
        return Some(sa.into());
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse::<IpAddr>().ok().map(DnatTo::address)
}

/// `ADDR`, `ADDR:PORT`, `ADDR:P-Q`, `[V6]:P-Q`.
fn snat_to(text: &str) -> Option<(IpAddr, Option<PortRange>)> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some((ip, None));
    }
    let (addr, ports) = if let Some(rest) = text.strip_prefix('[') {
        let (a, p) = rest.split_once("]:")?;
        (a, p)
    } else {
        text.rsplit_once(':')?
    };
    let ip: IpAddr = addr.parse().ok()?;
    let range = match ports.split_once('-') {
        Some((a, b)) => PortRange {
            first: a.parse().ok()?,
            last: b.parse().ok()?,
        },
        None => PortRange::one(ports.parse().ok()?),
    };
    (range.first <= range.last).then_some((ip, Some(range)))
}
