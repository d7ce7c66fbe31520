//! Compiles a cluster's Services and EndpointSlices into the `iptables-restore`
//! text kube-proxy's iptables mode would write on a node, or with
//! `--proxy-mode nftables` into the table its nftables mode would write, as the
//! `add table/chain/set/map/rule/element` commands of knftables' `Dump()` (which
//! `nft -f` reads).
//!
//! ```text
//! cargo run --example compile --features k8s -- [FLAGS] [FILE|-]
//! ```
//!
//! FILE is a Kubernetes `List` as `kubectl get services,endpointslices -A -o json`
//! prints it (`-` reads stdin); without it, the shipped `examples/cluster.json`.
//! FLAGS are kube-proxy's (see `examples/common/mod.rs`). The full restore text for
//! the family goes to stdout (filter table, then nat), or the nftables commands,
//! and the exit code is 0. What
//! kube-proxy would ignore with a log line (a slice port no service port has, ...)
//! is one `warning: FILE: ...` line each on stderr, exit code 0; so is each
//! invalid service with `--lenient`, which leaves it out. Bad input or flags: one
//! line on stderr naming the file, the object and the field, nothing on stdout,
//! exit code 2; the same in both modes (nftables mode refuses a few inputs more: a
//! port's `ns/name:port` longer than an nftables comment, an interface name nft
//! cannot take).

mod common;

use std::io::Write;

use common::{Arg, CommandLine, EXAMPLE_CLUSTER, ProxyFlags, ProxyMode, bad_input};

const USAGE: &str = "usage: compile [--hostname-override NAME] [--node-ip IP]... [--cluster-cidr CIDR]... \
[--detect-local-mode MODE] [--pod-interface-name-prefix P] [--pod-bridge-interface B] \
[--masquerade-all] [--masquerade-random-fully] [--iptables-masquerade-bit N] \
[--nodeport-addresses CIDR[,CIDR...]] [--iptables-localhost-nodeports true|false] \
[--conntrack-tcp-be-liberal] [--nfacct-counters] [--ip-family ipv4|ipv6] \
[--proxy-mode iptables|nftables] [--service-cluster-ip-range CIDR[,CIDR]] [--lenient] [FILE|-]";

fn main() {
    let mut flags = ProxyFlags::with_nftables();
    let mut input: Option<String> = None;
    let mut args = CommandLine::from_env();
    while let Some(arg) = args.next().unwrap_or_else(|e| bad_input("compile", &e)) {
        match arg {
            Arg::Flag(flag) => match flags.take(&flag, &mut args) {
                Ok(true) => {}
                Err(e) => bad_input("compile", &e),
                Ok(false) if (flag == "-h" || flag == "--help") && !args.has_joined() => {
                    println!("{USAGE}");
                    return;
                }
                Ok(false) => {
                    let typed = args.typed(&flag);
                    bad_input("compile", &format!("unknown flag {typed:?}; {USAGE}"))
                }
            },
            Arg::Value(v) => {
                if let Some(first) = &input {
                    bad_input(
                        "compile",
                        &format!(
                            "unexpected argument {v:?}: {first:?} is the input already; {USAGE}"
                        ),
                    );
                }
                input = Some(v);
            }
        }
    }
    let path = input.unwrap_or_else(|| EXAMPLE_CLUSTER.to_owned());
    let config = flags.config().unwrap_or_else(|e| bad_input("compile", &e));
    let mut warnings = Vec::new();
    let state =
        common::load_state(&path, &mut warnings).unwrap_or_else(|e| bad_input("compile", &e));
    let stdout = std::io::stdout().lock();
    let mut out = std::io::BufWriter::new(stdout);
    let written = match flags.proxy_mode {
        ProxyMode::Iptables => {
            let ruleset = common::compile(&path, &state, &config, flags.lenient, &mut warnings)
                .unwrap_or_else(|e| bad_input("compile", &e));
            common::print_warnings(&warnings);
            svcnat::render::write_io(&ruleset, &mut out)
        }
        ProxyMode::Nftables => {
            let ruleset =
                common::compile_nftables(&path, &state, &config, flags.lenient, &mut warnings)
                    .unwrap_or_else(|e| bad_input("compile", &e));
            common::print_warnings(&warnings);
            out.write_all(ruleset.to_dump().as_bytes())
        }
    };
    if let Err(e) = written.and_then(|()| out.flush()) {
        eprintln!("compile: writing stdout: {e}");
        std::process::exit(1);
    }
}
