//! The match modules svcnat models (`-m NAME …`), one function per module.
//!
//! Each takes the module's options, already split by [`Parser::options`](super::Parser),
//! and gives its matches, or `Ok(None)` when the options are not a shape
//! svcnat models: the caller then keeps the whole segment verbatim as
//! [`Match::Other`]. An error is a value that is wrong whatever the shape.

use super::{Fail, Opt, bad, ir, mark, one_arg, port_range_text, probability};
use crate::parse::ErrorKind;
use crate::ruleset::{
    AddrKind, AddrType, ChainName, CtState, Direction, Interface, Match, NfacctCounter, Not,
    PhysdevOption, PortsOf, RecentAction, SetMatch, Word,
};

/// The matches of a module svcnat models; `Ok(None)` keeps it verbatim.
pub(super) fn known(module: &str, opts: &[Opt<'_>]) -> Result<Option<Vec<Match>>, Fail> {
    let one = match module {
        "mark" => mark_match(opts)?,
        "conntrack" => states(opts, "--ctstate", Match::Conntrack)?,
        "state" => states(opts, "--state", Match::State)?,
        "addrtype" => return addrtype(opts),
        "statistic" => statistic(opts)?,
        "recent" => recent(opts)?,
        "nfacct" => nfacct(opts)?,
        "multiport" => multiport(opts)?,
        "set" => set(opts)?,
        "physdev" => physdev(opts)?,
        _ => None,
    };
    Ok(one.map(|m| vec![m]))
}

/// True if the module has one option, `name`.
fn single(opts: &[Opt<'_>], name: &str) -> bool {
    opts.len() == 1 && opts[0].name.text == name
}

/// `-m mark [!] --mark V[/M]`.
fn mark_match(opts: &[Opt<'_>]) -> Result<Option<Match>, Fail> {
    if !single(opts, "--mark") {
        return Ok(None);
    }
    let a = one_arg(&opts[0])?;
    Ok(Some(Match::Mark(Not {
        negated: opts[0].negated,
        value: mark(a, "--mark")?,
    })))
}

/// `-m conntrack [!] --ctstate S,…` or `-m state [!] --state S,…` (`flag`),
/// made into a match by `make`.
fn states(
    opts: &[Opt<'_>],
    flag: &str,
    make: fn(Not<Vec<CtState>>) -> Match,
) -> Result<Option<Match>, Fail> {
    if !single(opts, flag) {
        return Ok(None);
    }
    let a = one_arg(&opts[0])?;
    let mut states = Vec::new();
    for s in a.text.split(',') {
        states.push(match s {
            "NEW" => CtState::New,
            "INVALID" => CtState::Invalid,
            "RELATED" => CtState::Related,
            "ESTABLISHED" => CtState::Established,
            "DNAT" => CtState::Dnat,
            // UNTRACKED, SNAT: valid, not modelled.
            _ => return Ok(None),
        });
    }
    Ok(Some(make(Not {
        negated: opts[0].negated,
        value: states,
    })))
}

/// `-m addrtype [!] --src-type T [!] --dst-type T`: one match per option, the
/// compiler's `LOCAL` ones as [`Match::SrcType`] / [`Match::DstType`].
fn addrtype(opts: &[Opt<'_>]) -> Result<Option<Vec<Match>>, Fail> {
    let mut out = Vec::new();
    for o in opts {
        let of = match o.name.text.as_str() {
            "--src-type" => Direction::Source,
            "--dst-type" => Direction::Destination,
            _ => return Ok(None),
        };
        let a = one_arg(o)?;
        let Some(kind) = AddrKind::from_name(&a.text) else {
            return Ok(None);
        };
        out.push(match (of, kind, o.negated) {
            (Direction::Source, AddrKind::Local, false) => Match::SrcType(AddrType::Local),
            (Direction::Destination, AddrKind::Local, false) => Match::DstType(AddrType::Local),
            _ => Match::AddressType {
                of,
                kind: Not {
                    negated: o.negated,
                    value: kind,
                },
            },
        });
    }
    Ok(Some(out))
}

/// `-m statistic --mode random --probability P`.
fn statistic(opts: &[Opt<'_>]) -> Result<Option<Match>, Fail> {
    let [mode, prob] = opts else {
        return Ok(None);
    };
    if mode.name.text != "--mode"
        || one_arg(mode)?.text != "random"
        || prob.name.text != "--probability"
        || prob.negated
        || mode.negated
    {
        return Ok(None);
    }
    let a = one_arg(prob)?;
    Ok(Some(Match::Statistic(probability(a)?)))
}

/// `recent` as the compiler writes it, in any option order, with the options
/// `iptables-save` adds that only restate defaults (`--mask` all ones,
/// `--rsource`) dropped. Anything else is kept verbatim.
fn recent(opts: &[Opt<'_>]) -> Result<Option<Match>, Fail> {
    let (mut name, mut set, mut rcheck, mut seconds, mut reap) = (None, false, false, None, false);
    for o in opts {
        if o.negated {
            return Ok(None);
        }
        match (o.name.text.as_str(), o.args.as_slice()) {
            ("--name", [n]) => name = Some(*n),
            ("--set", []) => set = true,
            ("--rcheck", []) => rcheck = true,
            ("--reap", []) => reap = true,
            ("--rsource", []) => {}
            ("--seconds", [s]) => {
                seconds = Some(
                    s.text
                        .parse::<u32>()
                        .map_err(|_| bad(s, "--seconds", "not a number of seconds"))?,
                )
            }
            ("--mask", [m])
                if m.text == "255.255.255.255"
                    || m.text
                        .eq_ignore_ascii_case("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") => {}
            _ => return Ok(None),
        }
    }
    let Some(name) = name.and_then(|n| ChainName::new(n.text.clone()).ok()) else {
        return Ok(None);
    };
    let action = match (set, rcheck, seconds, reap) {
        (true, false, None, false) => RecentAction::Set,
        (false, true, Some(seconds), true) => RecentAction::Check { seconds },
        _ => return Ok(None),
    };
    Ok(Some(Match::Recent { name, action }))
}

/// `-m nfacct --nfacct-name NAME`, for the counters kube-proxy names.
fn nfacct(opts: &[Opt<'_>]) -> Result<Option<Match>, Fail> {
    if !single(opts, "--nfacct-name") || opts[0].negated {
        return Ok(None);
    }
    let a = one_arg(&opts[0])?;
    Ok(Some(Match::Nfacct(match a.text.as_str() {
        "ct_state_invalid_dropped_pkts" => NfacctCounter::CtStateInvalidDropped,
        "localhost_nps_accepted_pkts" => NfacctCounter::LocalhostNodePortsAccepted,
        _ => return Ok(None),
    })))
}

/// `-m multiport [!] --dports|--sports|--ports P[:Q],…`.
fn multiport(opts: &[Opt<'_>]) -> Result<Option<Match>, Fail> {
    let [o] = opts else {
        return Ok(None);
    };
    let of = match o.name.text.as_str() {
        "--dports" | "--destination-ports" => PortsOf::Destination,
        "--sports" | "--source-ports" => PortsOf::Source,
        "--ports" => PortsOf::Either,
        _ => return Ok(None),
    };
    let a = one_arg(o)?;
    let ports = a
        .text
        .split(',')
        .map(|p| port_range_text(a, p, &o.name.text))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Match::Multiport {
        of,
        ports: Not {
            negated: o.negated,
            value: ports,
        },
    }))
}

/// `-m set [!] --match-set NAME src|dst,…`.
fn set(opts: &[Opt<'_>]) -> Result<Option<Match>, Fail> {
    let [o] = opts else {
        return Ok(None);
    };
    if o.name.text != "--match-set" {
        return Ok(None);
    }
    let [name, flags] = o.args.as_slice() else {
        return Err(Fail::new(
            o.name.start,
            ErrorKind::MissingArgument {
                option: o.name.text.clone(),
            },
        ));
    };
    let name = Word::new(name.text.clone()).map_err(|e| ir(name, e))?;
    let mut dirs = Vec::new();
    for f in flags.text.split(',') {
        dirs.push(match f {
            "src" => Direction::Source,
            "dst" => Direction::Destination,
            _ => return Err(bad(flags, "--match-set", "flags are src or dst")),
        });
    }
    Ok(Some(Match::Set(Not {
        negated: o.negated,
        value: SetMatch { name, flags: dirs },
    })))
}

/// `-m physdev` with any of its options, at least one.
fn physdev(opts: &[Opt<'_>]) -> Result<Option<Match>, Fail> {
    let mut options = Vec::new();
    for o in opts {
        options.push(match o.name.text.as_str() {
            "--physdev-in" => PhysdevOption::In(physdev_interface(o)?),
            "--physdev-out" => PhysdevOption::Out(physdev_interface(o)?),
            "--physdev-is-in" => match physdev_flag(o) {
                Some(n) => PhysdevOption::IsIn(n),
                None => return Ok(None),
            },
            "--physdev-is-out" => match physdev_flag(o) {
                Some(n) => PhysdevOption::IsOut(n),
                None => return Ok(None),
            },
            "--physdev-is-bridged" => match physdev_flag(o) {
                Some(n) => PhysdevOption::IsBridged(n),
                None => return Ok(None),
            },
            _ => return Ok(None),
        });
    }
    if options.is_empty() {
        return Ok(None);
    }
    Ok(Some(Match::Physdev(options)))
}

/// `[!] --physdev-in|--physdev-out IFACE[+]`.
fn physdev_interface(o: &Opt<'_>) -> Result<Not<Interface>, Fail> {
    let a = one_arg(o)?;
    let (name, prefix) = match a.text.strip_suffix('+') {
        Some(n) => (n, true),
        None => (a.text.as_str(), false),
    };
    Ok(Not {
        negated: o.negated,
        value: Interface::new(name, prefix).map_err(|e| ir(a, e))?,
    })
}

/// `[!] --physdev-is-…`: whether it is negated; `None` if it has a value.
fn physdev_flag(o: &Opt<'_>) -> Option<bool> {
    o.args.is_empty().then_some(o.negated)
}
