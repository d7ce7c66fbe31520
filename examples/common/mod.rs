//! What the examples share: kube-proxy-style flags, and where input comes from.
//!
//! Flags (named after kube-proxy's; `--flag value` or `--flag=value`):
//!
//! | flag | meaning |
//! |---|---|
//! | `--hostname-override NAME` | this node's name (endpoints on it are local) |
//! | `--node-ip IP` | an address of this node, repeatable, the first one primary |
//! | `--cluster-cidr CIDR` | the pod CIDR (one per family), repeatable |
//! | `--detect-local-mode M` | `ClusterCIDR`, `NodeCIDR`, `BridgeInterface`, `InterfaceNamePrefix` or `None` |
//! | `--pod-interface-name-prefix P` | for `InterfaceNamePrefix` |
//! | `--pod-bridge-interface B` | for `BridgeInterface` |
//! | `--masquerade-all` | masquerade all cluster-IP traffic |
//! | `--masquerade-random-fully` | `--random-fully` on MASQUERADE |
//! | `--iptables-masquerade-bit N` | the masquerade mark bit (default 14) |
//! | `--nodeport-addresses CIDR[,CIDR…]` | node addresses that accept node ports (`primary` allowed; default: all, or `primary` in nftables mode, as kube-proxy) |
//! | `--iptables-localhost-nodeports true\|false` | node ports on 127.0.0.0/8 (default true) |
//! | `--conntrack-tcp-be-liberal` | leave out the INVALID-drop rule |
//! | `--nfacct-counters` | emit kube-proxy's nfacct matches |
//! | `--ip-family ipv4\|ipv6` | the family to write rules for (default ipv4) |
//! | `--proxy-mode iptables\|nftables` | which ruleset to write (default iptables) |
//! | `--service-cluster-ip-range CIDR[,CIDR]` | the service CIDRs (nftables mode drops traffic to their unallocated addresses) |
//! | `--lenient` | leave invalid services out with a warning (as kube-proxy does) instead of refusing the input |

#![allow(dead_code)]

mod flags;

pub use flags::{Arg, CommandLine};

use std::net::IpAddr;

use ipnet::IpNet;
use svcnat::CompileError;
use svcnat::compile::{Lenient, Warned};
use svcnat::model::{ClusterState, IpFamily, LocalTrafficDetector, NodePortAddress, ProxyConfig};
use svcnat::ruleset::Ruleset;

/// The shipped example cluster.
pub const EXAMPLE_CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster.json");

/// Exit code for bad input or bad flags.
pub const EXIT_BAD_INPUT: i32 = 2;

/// kube-proxy's `--proxy-mode`: which ruleset to write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProxyMode {
    /// `iptables-restore` text (`svcnat::compile::compile`).
    #[default]
    Iptables,
    /// The nftables table (`svcnat::compile::nftables`).
    Nftables,
}

/// The proxy flags, as given.
#[derive(Debug, Default)]
pub struct ProxyFlags {
    pub hostname: Option<String>,
    pub node_ips: Vec<IpAddr>,
    pub cluster_cidrs: Vec<IpNet>,
    pub detect_local_mode: Option<String>,
    pub interface_prefix: Option<String>,
    pub bridge_interface: Option<String>,
    pub masquerade_all: bool,
    pub random_fully: bool,
    pub masquerade_bit: Option<u8>,
    pub nodeport_addresses: Vec<NodePortAddress>,
    pub localhost_nodeports: Option<bool>,
    pub tcp_liberal: bool,
    pub nfacct: bool,
    pub family: IpFamily,
    /// `--proxy-mode`.
    pub proxy_mode: ProxyMode,
    /// Whether the example takes `--proxy-mode nftables` (see
    /// [`ProxyFlags::with_nftables`]).
    pub nftables_ok: bool,
    /// `--service-cluster-ip-range`.
    pub service_cidrs: Vec<IpNet>,
    /// `--lenient`: invalid services are left out with a warning, not refused.
    pub lenient: bool,
    /// Whether `--ip-family` was given.
    pub family_given: bool,
}

fn parse<T: std::str::FromStr>(flag: &str, v: &str, what: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: {v:?} is not {what}"))
}

impl ProxyFlags {
    /// The flags of an example that writes or reads nftables rules too: it takes
    /// `--proxy-mode nftables`, which the others refuse.
    pub fn with_nftables() -> Self {
        ProxyFlags {
            nftables_ok: true,
            ..ProxyFlags::default()
        }
    }

    /// Takes `flag` if it is a proxy flag, with its value; `Ok(false)` if it is
    /// not one.
    pub fn take(&mut self, flag: &str, args: &mut CommandLine) -> Result<bool, String> {
        match flag {
            "--hostname-override" => self.hostname = Some(args.value(flag)?),
            "--node-ip" => {
                let v = args.value(flag)?;
                self.node_ips.push(parse(flag, &v, "an IP address")?);
            }
            "--cluster-cidr" => {
                let v = args.value(flag)?;
                for part in v.split(',').filter(|p| !p.is_empty()) {
                    self.cluster_cidrs.push(parse(flag, part.trim(), "a CIDR")?);
                }
            }
            "--detect-local-mode" => {
                let v = args.value(flag)?;
                match v.as_str() {
                    "ClusterCIDR"
                    | "NodeCIDR"
                    | "BridgeInterface"
                    | "InterfaceNamePrefix"
                    | "None" => self.detect_local_mode = Some(v),
                    _ => {
                        return Err(format!(
                            "{flag}: {v:?} is not one of ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix, None"
                        ));
                    }
                }
            }
            "--pod-interface-name-prefix" => self.interface_prefix = Some(args.value(flag)?),
            "--pod-bridge-interface" => self.bridge_interface = Some(args.value(flag)?),
            "--masquerade-all" => self.masquerade_all = args.switch(flag)?,
            "--masquerade-random-fully" => self.random_fully = args.switch(flag)?,
            "--conntrack-tcp-be-liberal" => self.tcp_liberal = args.switch(flag)?,
            "--nfacct-counters" => self.nfacct = args.switch(flag)?,
            "--lenient" => self.lenient = args.switch(flag)?,
            "--iptables-masquerade-bit" => {
                let v = args.value(flag)?;
                let bit: u8 = parse(flag, &v, "a bit number (0-31)")?;
                if bit > 31 {
                    return Err(format!("{flag}: {bit} is not a bit number (0-31)"));
                }
                self.masquerade_bit = Some(bit);
            }
            "--nodeport-addresses" => {
                let v = args.value(flag)?;
                for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    self.nodeport_addresses.push(if part == "primary" {
                        NodePortAddress::Primary
                    } else {
                        NodePortAddress::Cidr(parse(flag, part, "a CIDR or \"primary\"")?)
                    });
                }
            }
            "--iptables-localhost-nodeports" => {
                let v = args.value(flag)?;
                self.localhost_nodeports = Some(parse(flag, &v, "true or false")?);
            }
            "--proxy-mode" => {
                let v = args.value(flag)?;
                self.proxy_mode = match v.as_str() {
                    "iptables" => ProxyMode::Iptables,
                    "nftables" if self.nftables_ok => ProxyMode::Nftables,
                    "nftables" => {
                        return Err(format!("{flag}: nftables is not supported by this example"));
                    }
                    _ => return Err(format!("{flag}: {v:?} is not iptables or nftables")),
                };
            }
            "--service-cluster-ip-range" => {
                let v = args.value(flag)?;
                for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    self.service_cidrs.push(parse(flag, part, "a CIDR")?);
                }
            }
            "--ip-family" => {
                let v = args.value(flag)?;
                self.family = v
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|_| format!("{flag}: {v:?} is not ipv4 or ipv6"))?;
                self.family_given = true;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The library config these flags describe. The node's loopback addresses
    /// count as its own, after the `--node-ip` values.
    pub fn config(&self) -> Result<ProxyConfig, String> {
        let mut node_ips = self.node_ips.clone();
        node_ips.extend([
            "127.0.0.1".parse::<IpAddr>().unwrap(),
            "::1".parse().unwrap(),
        ]);
        let default_mode = if self.cluster_cidrs.is_empty() {
            "None"
        } else {
            "ClusterCIDR"
        };
        let mode = self.detect_local_mode.as_deref().unwrap_or(default_mode);
        let local_traffic = match mode {
            "ClusterCIDR" | "NodeCIDR" => {
                if self.cluster_cidrs.is_empty() {
                    return Err(format!("--detect-local-mode {mode}: needs --cluster-cidr"));
                }
                LocalTrafficDetector::Cidrs(self.cluster_cidrs.clone())
            }
            "BridgeInterface" => LocalTrafficDetector::BridgeInterface(
                self.bridge_interface
                    .clone()
                    .ok_or("--detect-local-mode BridgeInterface: needs --pod-bridge-interface")?,
            ),
            "InterfaceNamePrefix" => {
                LocalTrafficDetector::InterfaceNamePrefix(self.interface_prefix.clone().ok_or(
                    "--detect-local-mode InterfaceNamePrefix: needs --pod-interface-name-prefix",
                )?)
            }
            _ => LocalTrafficDetector::None,
        };
        let mut config = ProxyConfig::default()
            .with_node_ips(node_ips)
            .with_ip_family(self.family)
            .with_masquerade_all(self.masquerade_all)
            .with_masquerade_random_fully(self.random_fully)
            .with_local_traffic(local_traffic)
            .with_nodeport_addresses(self.nodeport_addresses.clone())
            .with_service_cidrs(self.service_cidrs.clone())
            .with_conntrack_tcp_be_liberal(self.tcp_liberal)
            .with_nfacct_counters(self.nfacct);
        if let Some(name) = &self.hostname {
            config = config.with_node_name(name.clone());
        }
        if let Some(bit) = self.masquerade_bit {
            config = config.with_masquerade_bit(bit);
        }
        if let Some(on) = self.localhost_nodeports {
            config = config.with_localhost_nodeports(on);
        }
        // kube-proxy's nftables mode accepts node ports on the primary address
        // only unless told otherwise (its `platformApplyDefaults`).
        if self.proxy_mode == ProxyMode::Nftables && self.nodeport_addresses.is_empty() {
            config = config.with_nodeport_addresses([NodePortAddress::Primary]);
        }
        match self.proxy_mode {
            ProxyMode::Iptables => svcnat::compile::check_config(&config),
            ProxyMode::Nftables => svcnat::compile::check_nftables_config(&config),
        }
        .map_err(|e| self.flag_error(e))?;
        Ok(config)
    }

    /// A config error, said in terms of the flag that set the field.
    fn flag_error(&self, e: CompileError) -> String {
        let CompileError::Config { field, problem } = &e else {
            return e.to_string();
        };
        let flag = match (*field, &self.detect_local_mode.as_deref()) {
            ("masquerade_bit", _) => "--iptables-masquerade-bit".to_owned(),
            ("local_traffic", Some("BridgeInterface")) => {
                format!(
                    "--pod-bridge-interface {:?}",
                    self.bridge_interface.as_deref().unwrap_or("")
                )
            }
            ("local_traffic", Some("InterfaceNamePrefix")) => format!(
                "--pod-interface-name-prefix {:?}",
                self.interface_prefix.as_deref().unwrap_or("")
            ),
            ("local_traffic", _) => {
                let family = self.family;
                let values: Vec<String> = self
                    .cluster_cidrs
                    .iter()
                    .filter(|c| family.contains(&c.addr()))
                    .map(ToString::to_string)
                    .collect();
                format!("--cluster-cidr {}", values.join(","))
            }
            _ => return e.to_string(),
        };
        format!("{flag}: {problem}")
    }
}

/// Reads a cluster dump (see [`svcnat::k8s::read`]) from a path, or stdin for `-`.
/// v1 Endpoints in it give a `warning: FILE: ...` line, pushed to `warnings` (the
/// rules would lack their endpoints); the rest of what the reader leaves out
/// (headless services, other kinds) is left out silently, as kube-proxy does.
pub fn load_state(path: &str, warnings: &mut Vec<String>) -> Result<ClusterState, String> {
    let loaded = if path == "-" {
        svcnat::k8s::read(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
        svcnat::k8s::read(std::io::BufReader::new(file))
    }
    .map_err(|e| format!("{path}: {e}"))?;
    if let Some(line) = loaded.report.endpoints_warning() {
        warnings.push(format!("warning: {path}: {line}"));
    }
    Ok(loaded.state)
}

/// Compiles `state` (read from `path`) as the examples do. Each warning becomes
/// one `warning: FILE: ...` line in `warnings`: the parts of EndpointSlices
/// kube-proxy ignores and, with `--lenient`, the invalid services left out. An
/// error is the bad-input line.
pub fn compile(
    path: &str,
    state: &ClusterState,
    config: &ProxyConfig,
    lenient: bool,
    warnings: &mut Vec<String>,
) -> Result<Ruleset, String> {
    let found = match lenient {
        true => svcnat::compile::compile_lenient(state, config).map(found_leniently),
        false => svcnat::compile::compile_with_warnings(state, config).map(found_strictly),
    };
    finish(path, found, warnings)
}

/// [`compile`] in nftables mode: kube-proxy's nftables table.
pub fn compile_nftables(
    path: &str,
    state: &ClusterState,
    config: &ProxyConfig,
    lenient: bool,
    warnings: &mut Vec<String>,
) -> Result<svcnat::nft::Ruleset, String> {
    let found = match lenient {
        true => svcnat::compile::nftables_lenient(state, config).map(found_leniently),
        false => svcnat::compile::nftables_with_warnings(state, config).map(found_strictly),
    };
    finish(path, found, warnings)
}

/// A lenient compile's ruleset, and its rejected services and warnings as text.
fn found_leniently<R>(out: Lenient<R>) -> (R, Vec<String>) {
    let mut found: Vec<String> = out
        .rejected
        .iter()
        .map(|e| format!("{e} (the service is left out)"))
        .collect();
    found.extend(out.warnings.iter().map(ToString::to_string));
    (out.ruleset, found)
}

/// A strict compile's ruleset and its warnings as text.
fn found_strictly<R>(out: Warned<R>) -> (R, Vec<String>) {
    let found = out.warnings.iter().map(ToString::to_string).collect();
    (out.ruleset, found)
}

/// The ruleset, each warning as a `warning: FILE: ...` line in `warnings`, or the
/// error as the bad-input line.
fn finish<R>(
    path: &str,
    found: Result<(R, Vec<String>), CompileError>,
    warnings: &mut Vec<String>,
) -> Result<R, String> {
    let (ruleset, found) = found.map_err(|e| format!("{path}: {e}"))?;
    warnings.extend(
        found
            .into_iter()
            .map(|w| format!("warning: {path}: {}", w.replace('\n', " "))),
    );
    Ok(ruleset)
}

/// Prints the warnings, once every input has been read and compiled: a run that
/// fails prints its one error line and nothing else.
pub fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("{w}");
    }
}

/// Prints a one-line error and exits with [`EXIT_BAD_INPUT`].
pub fn bad_input(program: &str, message: &str) -> ! {
    eprintln!("{program}: {}", message.replace('\n', " "));
    std::process::exit(EXIT_BAD_INPUT)
}
