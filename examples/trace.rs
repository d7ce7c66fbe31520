//! Traces one new connection through a node's rules and prints every way it can
//! go: final destination, verdict, masquerade, probability, and the rules taken.
//!
//! ```text
//! cargo run --example trace --features k8s -- [FLAGS] (--cluster FILE | --save FILE) \
//!     --src IP --dst IP --proto tcp|udp|sctp --dport N [--sport N] [--from local|IFACE] \
//!     [--out IFACE] [--json]
//! ```
//!
//! FLAGS are the `compile` example's (see `examples/common/mod.rs`), `--proxy-mode
//! iptables|nftables` among them (default iptables).
//! `--cluster FILE` compiles a Kubernetes `List` (`-` reads stdin) with those flags
//! and adds kube-proxy's jump rules from the built-in chains; `--save FILE` reads
//! an `iptables-save` dump instead. With `--proxy-mode nftables`, `--cluster`
//! compiles kube-proxy's nftables table and `--save` reads one, as `nft list table`
//! prints it or in the `add …` form the `compile` example writes (see
//! `svcnat::parse::nft`); the packet goes through the table's base chains in
//! netfilter's order (see `svcnat::trace::nft`). `--from local` traces a packet sent by a
//! process on the node, `--from IFACE` one arriving on that interface (the
//! default is arriving on `eth0`). `--out IFACE` names the interface the packet
//! leaves by, for `-o` matches (without it, `-o` is evaluated only for local
//! traffic to the node, which leaves by `lo`). The node's addresses are the
//! `--node-ip` values plus loopback. `--dport` is 1-65535.
//!
//! Without `--json` a table is printed; with `--json` exactly one JSON object:
//! `{"outcomes":[{"probability":P,"verdict":"accept|drop|reject","destination":"IP:PORT",
//! "masquerade":BOOL,"path":["CHAIN:RULE-INDEX",…]},…],"unevaluated":["…",…],
//! "assumed":["…",…]}`; `unevaluated` also lists the session-affinity checks
//! taken as "no affinity", `assumed` what the table prints as `assumed:` lines.
//! The `--save` file is read as bytes (a comment may hold any, see
//! `svcnat::parse::parse_bytes`); one holding no table is refused. In nftables
//! mode the paths name nftables chains (`services:1`) and `unevaluated` lists the
//! dynamic-set (session affinity) lookups taken as "no affinity"; an nftables
//! `--save` file must be UTF-8.
//! Bad input: one line on stderr, nothing on stdout, exit code 2.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::{Arg, CommandLine, ProxyFlags, ProxyMode, bad_input};
use svcnat::model::Protocol;
use svcnat::trace::{Node, Packet, Trace};

const USAGE: &str = "usage: trace [compile's flags] [--proxy-mode iptables|nftables] \
(--cluster FILE | --save FILE) --src IP --dst IP --proto tcp|udp|sctp --dport N [--sport N] \
[--from local|IFACE] [--out IFACE] [--json]";

/// A ruleset to trace through: iptables tables, or an nftables table.
enum Rules {
    Iptables(svcnat::ruleset::Ruleset),
    Nftables(Box<svcnat::nft::Ruleset>),
}

#[derive(Default)]
struct Args {
    cluster: Option<String>,
    save: Option<String>,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<Protocol>,
    dport: Option<u16>,
    sport: Option<u16>,
    from: Option<String>,
    out: Option<String>,
    json: bool,
}

fn fail(message: &str) -> ! {
    bad_input("trace", message)
}

/// A destination port: 1-65535 (no connection goes to port 0).
fn port(flag: &str, v: &str) -> u16 {
    match v.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => fail(&format!("{flag}: {v:?} is not a port (1-65535)")),
    }
}

fn parsed<T: std::str::FromStr>(flag: &str, v: &str, what: &str) -> T {
    v.parse()
        .unwrap_or_else(|_| fail(&format!("{flag}: {v:?} is not {what}")))
}

fn main() {
    let mut flags = ProxyFlags::with_nftables();
    let mut a = Args::default();
    let mut args = CommandLine::from_env();
    while let Some(arg) = args.next().unwrap_or_else(|e| fail(&e)) {
        let flag = match arg {
            Arg::Value(v) => fail(&format!("unexpected argument {v:?}; {USAGE}")),
            Arg::Flag(flag) => flag,
        };
        match flags.take(&flag, &mut args) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => fail(&e),
        }
        let flag = flag.as_str();
        let mut value = || args.value(flag).unwrap_or_else(|e| fail(&e));
        match flag {
            // A value joined to these is ignored, as it always was.
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            "--cluster" => a.cluster = Some(value()),
            "--save" => a.save = Some(value()),
            "--src" => a.src = Some(parsed(flag, &value(), "an IP address")),
            "--dst" => a.dst = Some(parsed(flag, &value(), "an IP address")),
            "--dport" => a.dport = Some(port(flag, &value())),
            "--sport" => a.sport = Some(parsed(flag, &value(), "a port (0-65535)")),
            "--proto" => {
                let v = value();
                a.proto = Some(
                    v.to_ascii_lowercase()
                        .parse::<Protocol>()
                        .unwrap_or_else(|_| {
                            fail(&format!("--proto: {v:?} is not tcp, udp or sctp"))
                        }),
                );
            }
            "--from" => a.from = Some(value()),
            "--out" => a.out = Some(value()),
            "--json" => {
                let _ = args.joined(flag);
                a.json = true;
            }
            _ => {
                let typed = args.typed(flag);
                fail(&format!("unexpected argument {typed:?}; {USAGE}"))
            }
        }
    }
    let need = |what: &str| -> ! { fail(&format!("missing {what}; {USAGE}")) };
    let (Some(src), Some(dst)) = (a.src, a.dst) else {
        need("--src and --dst")
    };
    let Some(proto) = a.proto else {
        need("--proto")
    };
    let Some(dport) = a.dport else {
        need("--dport")
    };
    let config = flags.config().unwrap_or_else(|e| fail(&e));
    let nftables = flags.proxy_mode == ProxyMode::Nftables;
    let ruleset = match (&a.cluster, &a.save) {
        (Some(path), None) => {
            let mut warnings = Vec::new();
            let state = common::load_state(path, &mut warnings).unwrap_or_else(|e| fail(&e));
            let lenient = flags.lenient;
            let rules = if nftables {
                Rules::Nftables(Box::new(
                    common::compile_nftables(path, &state, &config, lenient, &mut warnings)
                        .unwrap_or_else(|e| fail(&e)),
                ))
            } else {
                let compiled = common::compile(path, &state, &config, lenient, &mut warnings)
                    .unwrap_or_else(|e| fail(&e));
                let jumps =
                    svcnat::compile::jump_rules(&config).unwrap_or_else(|e| fail(&e.to_string()));
                Rules::Iptables(svcnat::trace::traceable(&compiled, &jumps))
            };
            common::print_warnings(&warnings);
            rules
        }
        (None, Some(path)) => {
            // Bytes, not text: a comment may hold any bytes (see parse_bytes).
            let bytes = if path == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                    .unwrap_or_else(|e| fail(&format!("reading stdin: {e}")));
                b
            } else {
                std::fs::read(path).unwrap_or_else(|e| fail(&format!("reading {path}: {e}")))
            };
            if nftables {
                let text = String::from_utf8(bytes)
                    .unwrap_or_else(|e| fail(&format!("{path}: not UTF-8: {e}")));
                Rules::Nftables(Box::new(
                    svcnat::parse::nft::parse(&text)
                        .unwrap_or_else(|e| fail(&format!("{path}: {e}"))),
                ))
            } else {
                let ruleset =
                    svcnat::parse::parse_bytes_as(&bytes, svcnat::model::IpFamily::of(&dst))
                        .unwrap_or_else(|e| fail(&format!("{path}: {e}")));
                if ruleset.tables.is_empty() {
                    fail(&format!(
                        "{path}: no table (no *filter, *nat, … line): not an iptables-save dump"
                    ));
                }
                Rules::Iptables(ruleset)
            }
        }
        _ => need("exactly one of --cluster and --save"),
    };
    let mut packet = Packet::new(proto, src, dst, dport);
    if let Some(sport) = a.sport {
        packet = packet.with_source_port(sport);
    }
    packet = match a.from.as_deref() {
        None => packet,
        Some("local") => packet.from_local(),
        Some(iface) => packet.arriving_on(iface),
    };
    if let Some(iface) = a.out {
        packet = packet.leaving_by(iface);
    }
    let node = Node::new(config.node_ips.iter().copied());
    let trace = match &ruleset {
        Rules::Iptables(r) => svcnat::trace::trace(r, &packet, &node),
        Rules::Nftables(r) => svcnat::trace::nft::trace(r, &packet, &node),
    }
    .unwrap_or_else(|e| fail(&e.to_string()));
    if a.json {
        println!("{}", to_json(&trace));
    } else {
        print_table(&trace);
    }
}

fn destination(d: &SocketAddr) -> String {
    // SocketAddr prints IPv6 as [ip]:port already.
    d.to_string()
}

/// The `--json` object; fields in the order of the contract.
#[derive(serde::Serialize)]
struct JsonTrace {
    outcomes: Vec<JsonOutcome>,
    unevaluated: Vec<String>,
    assumed: Vec<String>,
}

#[derive(serde::Serialize)]
struct JsonOutcome {
    probability: f64,
    verdict: &'static str,
    destination: String,
    masquerade: bool,
    path: Vec<String>,
}

fn to_json(trace: &Trace) -> String {
    let doc = JsonTrace {
        outcomes: trace
            .outcomes
            .iter()
            .map(|o| JsonOutcome {
                probability: o.probability,
                verdict: o.verdict.as_str(),
                destination: destination(&o.destination),
                masquerade: o.masquerade,
                path: o.path.iter().map(|r| r.short()).collect(),
            })
            .collect(),
        unevaluated: trace
            .unevaluated
            .iter()
            .chain(&trace.affinity)
            .map(|u| u.to_string())
            .collect(),
        assumed: trace.assumptions.clone(),
    };
    serde_json::to_string(&doc).expect("plain data serialises")
}

fn print_table(trace: &Trace) {
    println!(
        "{:>11}  {:<7}  {:<45}  {:<10}  path",
        "probability", "verdict", "destination", "masquerade"
    );
    for o in &trace.outcomes {
        let path: Vec<String> = o.path.iter().map(|r| r.to_string()).collect();
        println!(
            "{:>11.9}  {:<7}  {:<45}  {:<10}  {}",
            o.probability,
            o.verdict,
            destination(&o.destination),
            if o.masquerade { "yes" } else { "no" },
            path.join(" > ")
        );
        if let Some(note) = &o.note {
            println!("{:>11}  note: {note}", "");
        }
    }
    for u in &trace.unevaluated {
        println!("unevaluated: {u}");
    }
    for a in &trace.assumptions {
        println!("assumed: {a}");
    }
}
