//! Output compared with what kube-proxy's own tests expect, the way they compare
//! it: chains in any order, rules within a chain in order, with KUBE-SERVICES and
//! KUBE-NODEPORTS rules stably sorted by service name (their order across services
//! is Go map order in kube-proxy).
//!
//! Cases live in `tests/data/kube-proxy/<case>/`: `input.json` (a Kubernetes
//! `List`), `config.json` (see [`CaseConfig`]), `expected.txt` (kube-proxy's
//! expected text, verbatim from `proxier_test.go`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use svcnat::exec::{Executor, Recorder};
use svcnat::model::{LocalTrafficDetector, NodePortAddress, ProxyConfig};
use svcnat::sync::Syncer;

/// A cluster state from a Kubernetes `List` text.
pub fn state_from_list(text: &str) -> svcnat::model::ClusterState {
    svcnat::k8s::read_slice(text.as_bytes()).unwrap().state
}

/// The shipped example cluster, `examples/cluster.json`.
pub fn example_cluster() -> svcnat::model::ClusterState {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster.json");
    state_from_list(&std::fs::read_to_string(path).unwrap())
}

/// The proxier settings of a case (kube-proxy's `NewFakeProxier` by default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseConfig {
    /// Where in kube-proxy's tests the case comes from.
    #[allow(dead_code)]
    pub source: String,
    #[serde(default = "default_node")]
    pub node_name: String,
    #[serde(default = "default_node_ips")]
    pub node_ips: Vec<std::net::IpAddr>,
    #[serde(default)]
    pub ipv6: bool,
    #[serde(default = "default_cidrs")]
    pub cluster_cidrs: Vec<ipnet::IpNet>,
    #[serde(default)]
    pub masquerade_all: bool,
    #[serde(default = "yes")]
    pub localhost_nodeports: bool,
    #[serde(default)]
    pub nodeport_addresses: Vec<String>,
    #[serde(default = "yes")]
    pub nfacct_counters: bool,
    #[serde(default)]
    pub conntrack_tcp_be_liberal: bool,
    #[serde(default)]
    pub random_fully: bool,
    /// Compare only this chain (`"nat KUBE-SERVICES"`), not the whole dump.
    #[serde(default)]
    pub chain: Option<String>,
    /// nat chains the kernel holds before the sync (left by the test's earlier
    /// steps); a full sync must delete them.
    #[serde(default)]
    pub stale_chains: Vec<String>,
}

fn default_node() -> String {
    "test-node".into()
}
fn default_node_ips() -> Vec<std::net::IpAddr> {
    // NewFakeProxier's network: lo and eth0.
    [
        "127.0.0.1",
        "192.168.0.2",
        "192.168.1.2",
        "192.168.99.11",
        "::1",
        "2001:db8::1",
        "2001:db8:1::2",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect()
}
fn default_cidrs() -> Vec<ipnet::IpNet> {
    vec![
        "10.0.0.0/8".parse().unwrap(),
        "fd00:10::/64".parse().unwrap(),
    ]
}
fn yes() -> bool {
    true
}

impl CaseConfig {
    pub fn proxy_config(&self) -> ProxyConfig {
        let family = if self.ipv6 {
            svcnat::model::IpFamily::Ipv6
        } else {
            svcnat::model::IpFamily::Ipv4
        };
        // The primary node IP of the family goes first.
        let mut ips = self.node_ips.clone();
        ips.sort_by_key(|ip| ip.is_loopback());
        ProxyConfig::default()
            .with_node_name(self.node_name.clone())
            .with_node_ips(ips)
            .with_ip_family(family)
            .with_local_traffic(if self.cluster_cidrs.is_empty() {
                LocalTrafficDetector::None
            } else {
                LocalTrafficDetector::Cidrs(self.cluster_cidrs.clone())
            })
            .with_masquerade_all(self.masquerade_all)
            .with_localhost_nodeports(self.localhost_nodeports)
            .with_nodeport_addresses(self.nodeport_addresses.iter().map(|a| {
                if a == "primary" {
                    NodePortAddress::Primary
                } else {
                    NodePortAddress::Cidr(a.parse().unwrap())
                }
            }))
            .with_nfacct_counters(self.nfacct_counters)
            .with_conntrack_tcp_be_liberal(self.conntrack_tcp_be_liberal)
            .with_masquerade_random_fully(self.random_fully)
    }
}

/// table -> chain -> rules (the text after `-A CHAIN `), plus declared chains.
pub type Dump = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// Parses restore text into a [`Dump`], sorting KUBE-SERVICES and KUBE-NODEPORTS
/// rules by service name as kube-proxy's tests do.
pub fn normalize(text: &str) -> Dump {
    let mut dump = Dump::new();
    let mut table = String::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_owned();
            dump.entry(table.clone()).or_default();
        } else if let Some(c) = line.strip_prefix(':') {
            let name = c.split_whitespace().next().unwrap().to_owned();
            dump.get_mut(&table).unwrap().entry(name).or_default();
        } else if let Some(chain) = line.strip_prefix("-X ") {
            // Deletions are kept apart, as a sorted pseudo-chain.
            let deleted = dump
                .get_mut(&table)
                .unwrap()
                .entry("-X".to_owned())
                .or_default();
            deleted.push(chain.trim().to_owned());
            deleted.sort();
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
            dump.get_mut(&table)
                .unwrap()
                .entry(chain.to_owned())
                .or_default()
                .push(rule.to_owned());
        } else {
            assert!(line == "COMMIT", "unexpected line {line:?}");
        }
    }
    for chains in dump.values_mut() {
        for (name, rules) in chains.iter_mut() {
            if name == "KUBE-SERVICES" || name == "KUBE-NODEPORTS" {
                let last = rules
                    .iter()
                    .position(|r| r.contains("must be the last rule"))
                    .map(|i| rules.remove(i));
                rules.sort_by_key(|r| service_name(r));
                rules.extend(last);
            }
        }
    }
    dump
}

fn service_name(rule: &str) -> String {
    let Some(rest) = rule.split("--comment ").nth(1) else {
        return String::new();
    };
    let rest = rest.trim_start_matches('"');
    rest.split([' ', ':', '"']).next().unwrap_or("").to_owned()
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("{}/{name}: {e}", dir.display()))
}

/// Runs one case directory; returns a description of the difference, if any.
pub fn run_case(dir: &Path) -> Result<(), String> {
    let state = state_from_list(&read(dir, "input.json"));
    let case: CaseConfig = serde_json::from_str(&read(dir, "config.json")).unwrap();
    // The case goes through a full sync, as in kube-proxy's tests: the payload is the
    // compiled ruleset plus the deletion of stale chains the kernel holds.
    let config = case.proxy_config();
    // Also checks that compile_text writes the same bytes as render(compile).
    let rendered = crate::fixtures::try_render(&state, &config).map_err(|e| e.to_string())?;
    let mut kernel = Recorder::new();
    if !case.stale_chains.is_empty() {
        let lines: String = case
            .stale_chains
            .iter()
            .map(|c| format!(":{c} - [0:0]\n"))
            .collect();
        kernel
            .restore(
                config.ip_family,
                &format!("*nat\n{lines}COMMIT\n"),
                Default::default(),
            )
            .unwrap();
    }
    let mut syncer = Syncer::new(kernel, config).unwrap();
    syncer.replace_state(state);
    let report = syncer.sync().map_err(|e| e.to_string())?;
    assert!(
        report.full && report.rejected.is_empty(),
        "{:?}",
        report.rejected
    );
    // Compared as kube-proxy writes it: filter first, without svcnat's canaries.
    let payload = crate::fixtures::as_compiled(report.payload.text());
    if case.stale_chains.is_empty() {
        assert_eq!(
            payload, rendered,
            "a first full sync writes the compiled ruleset"
        );
    }
    if dir.join("assertions.json").exists() {
        return check_assertions(dir, &payload);
    }
    let ours = normalize(&payload);
    let expected_text = read(dir, "expected.txt");
    match &case.chain {
        None => {
            let theirs = normalize(&expected_text);
            diff(&theirs, &ours)
        }
        Some(spec) => {
            let (table, chain) = spec.split_once(' ').unwrap();
            let theirs: Vec<String> = expected_text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("-A "))
                .map(|l| {
                    l.split_once(' ')
                        .map(|(_, r)| r.to_owned())
                        .unwrap_or_default()
                })
                .collect();
            let ours = ours
                .get(table)
                .and_then(|t| t.get(chain))
                .cloned()
                .unwrap_or_default();
            if theirs == ours {
                Ok(())
            } else {
                Err(format!(
                    "{spec}:\nexpected:\n{}\nours:\n{}",
                    theirs.join("\n"),
                    ours.join("\n")
                ))
            }
        }
    }
}

/// kube-proxy's large-cluster test counts DNAT rules instead of comparing dumps:
/// `-A KUBE-SEP-… -j DNAT` lines, those with a comment, and the last such line for
/// an address.
fn check_assertions(dir: &Path, payload: &str) -> Result<(), String> {
    #[derive(Deserialize)]
    struct Check {
        check: String,
        #[serde(default)]
        r#match: String,
        expected: serde_json::Value,
    }
    #[derive(Deserialize)]
    struct Assertions {
        checks: Vec<Check>,
    }
    let a: Assertions = serde_json::from_str(&read(dir, "assertions.json")).unwrap();
    let dnat: Vec<&str> = payload
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SEP-") && l.contains("-j DNAT"))
        .collect();
    let mut failures = Vec::new();
    for c in a.checks {
        let got = match c.check.as_str() {
            "num_endpoints" => serde_json::json!(dnat.len()),
            "num_comments" => {
                serde_json::json!(dnat.iter().filter(|l| l.contains("--comment")).count())
            }
            "endpoint_dnat_line" => serde_json::json!(
                dnat.iter()
                    .rev()
                    .find(|l| l.contains(&c.r#match))
                    .copied()
                    .unwrap_or("")
            ),
            other => panic!("unknown check {other}"),
        };
        if got != c.expected {
            failures.push(format!(
                "{} {}: expected {}, got {got}",
                c.check, c.r#match, c.expected
            ));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

fn diff(theirs: &Dump, ours: &Dump) -> Result<(), String> {
    let mut out = String::new();
    for table in theirs
        .keys()
        .chain(ours.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let empty = BTreeMap::new();
        let t = theirs.get(table).unwrap_or(&empty);
        let o = ours.get(table).unwrap_or(&empty);
        for chain in t
            .keys()
            .chain(o.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            match (t.get(chain), o.get(chain)) {
                (Some(a), Some(b)) if a == b => {}
                (a, b) => out.push_str(&format!(
                    "{table} {chain}:\n  expected: {a:#?}\n  ours: {b:#?}\n"
                )),
            }
        }
    }
    if out.is_empty() { Ok(()) } else { Err(out) }
}

/// The case directories holding one of `files`, sorted.
fn case_dirs(files: &[&str]) -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kube-proxy");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| files.iter().any(|f| p.join(f).exists()))
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no cases under {}", root.display());
    dirs
}

#[test]
fn kube_proxy_cases() {
    let dirs = case_dirs(&["expected.txt", "assertions.json"]);
    let failures: Vec<String> = dirs
        .iter()
        .filter_map(|d| {
            run_case(d)
                .err()
                .map(|e| format!("== {}\n{e}", d.display()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
}

/// One packet flow of kube-proxy's tests: where a new connection ends up (the DNAT
/// destinations, or the verdict of a filter rule) and whether it is masqueraded.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Flow {
    name: String,
    #[serde(rename = "sourceIP")]
    source_ip: std::net::IpAddr,
    protocol: String,
    #[serde(rename = "destIP")]
    dest_ip: std::net::IpAddr,
    dest_port: u16,
    output: String,
    masq: bool,
}

/// kube-proxy's tracer in svcnat's terms: the DNAT destinations of all outcomes, or
/// the verdict of an explicit ACCEPT/DROP/REJECT in the filter chains it runs
/// (KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, KUBE-NODEPORTS, KUBE-PROXY-FIREWALL), or
/// nothing; masquerade if any outcome is marked or masqueraded.
fn kube_proxy_view(
    ruleset: &svcnat::ruleset::Ruleset,
    trace: &svcnat::trace::Trace,
    flow: &Flow,
    mark: u32,
) -> (String, bool) {
    use svcnat::ruleset::{Table, Target};
    let original = std::net::SocketAddr::new(flow.dest_ip, flow.dest_port);
    let mut outputs: Vec<String> = Vec::new();
    let mut masq = false;
    for o in &trace.outcomes {
        masq |= o.masquerade || o.mark & mark != 0;
        let out = if o.destination != original {
            o.destination.to_string()
        } else {
            let explicit = o.path.iter().rev().find_map(|r| {
                let filter_chain = [
                    "KUBE-SERVICES",
                    "KUBE-EXTERNAL-SERVICES",
                    "KUBE-NODEPORTS",
                    "KUBE-PROXY-FIREWALL",
                ]
                .contains(&r.chain.as_str());
                if r.table != Table::Filter || !filter_chain {
                    return None;
                }
                let rule = &ruleset.chain(Table::Filter, r.chain.as_str())?.rules[r.index - 1];
                match rule.target {
                    Some(Target::Accept) => Some("ACCEPT"),
                    Some(Target::Drop) => Some("DROP"),
                    Some(Target::Reject) => Some("REJECT"),
                    _ => None,
                }
            });
            explicit.unwrap_or("").to_owned()
        };
        if !outputs.contains(&out) {
            outputs.push(out);
        }
    }
    outputs.sort();
    (outputs.join(", "), masq)
}

fn run_flows(dir: &Path) -> Result<usize, String> {
    use svcnat::trace::{Node, Packet};
    let state = state_from_list(&read(dir, "input.json"));
    let case: CaseConfig = serde_json::from_str(&read(dir, "config.json")).unwrap();
    let flows: Vec<Flow> = serde_json::from_str(&read(dir, "flows.json")).unwrap();
    let config = case.proxy_config();
    let compiled = svcnat::compile::compile(&state, &config).map_err(|e| e.to_string())?;
    let ruleset =
        svcnat::trace::traceable(&compiled, &svcnat::compile::jump_rules(&config).unwrap());
    // kube-proxy's tracer counts 127.0.0.1, ::1 and the node IPs as local.
    let mut local = config.node_ips.clone();
    local.push("::1".parse().unwrap());
    let node = Node::new(local);
    let mut failures = Vec::new();
    for flow in &flows {
        let protocol = match flow.protocol.as_str() {
            "" | "TCP" => svcnat::model::Protocol::Tcp,
            "UDP" => svcnat::model::Protocol::Udp,
            "SCTP" => svcnat::model::Protocol::Sctp,
            other => panic!("protocol {other}"),
        };
        // kube-proxy's tracer starts every packet in nat PREROUTING.
        let packet =
            Packet::new(protocol, flow.source_ip, flow.dest_ip, flow.dest_port).arriving_on("eth0");
        let trace = svcnat::trace::trace(&ruleset, &packet, &node).map_err(|e| e.to_string())?;
        let mut expected: Vec<&str> = flow.output.split(", ").collect();
        expected.sort();
        let expected = expected.join(", ");
        let (output, masq) = kube_proxy_view(&ruleset, &trace, flow, config.masquerade_mark());
        if output != expected || masq != flow.masq {
            failures.push(format!(
                "{}: expected {expected:?} masq {}, got {output:?} masq {masq}",
                flow.name, flow.masq
            ));
        }
    }
    if failures.is_empty() {
        Ok(flows.len())
    } else {
        Err(failures.join("\n"))
    }
}

#[test]
fn kube_proxy_packet_flows() {
    let dirs = case_dirs(&["flows.json"]);
    let mut total = 0;
    let mut failures = Vec::new();
    for d in &dirs {
        match run_flows(d) {
            Ok(n) => total += n,
            Err(e) => failures.push(format!("== {}\n{e}", d.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
    assert!(total > 200, "only {total} flows checked");
}
