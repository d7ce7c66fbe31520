//! Small builders for test clusters, in kube-proxy's test conventions: cluster IPs
//! in 172.30.0.0/16, pods in 10.180.0.0/16 (cluster CIDR 10.0.0.0/8), node
//! `test-node` at 192.168.0.2.

use std::net::IpAddr;

use svcnat::model::*;

pub const NODE: &str = "test-node";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// kube-proxy's test proxier config: cluster CIDR 10.0.0.0/8, node IP 192.168.0.2.
pub fn config() -> ProxyConfig {
    ProxyConfig::default()
        .with_node_name(NODE)
        .with_node_ips([ip("192.168.0.2"), ip("127.0.0.1")])
        .with_cluster_cidrs(["10.0.0.0/8".parse().unwrap()])
}

pub fn service(ns: &str, name: &str, cluster_ip: &str, ports: &[(&str, u16)]) -> Service {
    let mut svc = Service::cluster_ip(ns, name, ip(cluster_ip));
    for (port_name, port) in ports {
        svc = svc.with_port(ServicePort::tcp(*port_name, *port));
    }
    svc
}

pub fn slice(
    ns: &str,
    svc: &str,
    ports: &[(&str, u16)],
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let family = endpoints
        .first()
        .map(|e| IpFamily::of(&e.address))
        .unwrap_or(IpFamily::Ipv4);
    let mut slice = EndpointSlice::new(ns, svc, format!("{svc}-slice"), family);
    for (name, port) in ports {
        slice = slice.with_port(EndpointPort::tcp(*name, *port));
    }
    slice.endpoints = endpoints;
    slice
}

pub fn ready(addr: &str) -> Endpoint {
    Endpoint::ready(ip(addr))
}

pub fn state(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ClusterState {
    let mut state = ClusterState::new();
    for s in services {
        state.upsert_service(s);
    }
    for s in slices {
        state.upsert_slice(s);
    }
    state
}

/// One service in `ns1` with these endpoints on its port `p80` (port 80).
pub fn one(s: Service, endpoints: Vec<Endpoint>) -> ClusterState {
    let name = s.name.clone();
    state(
        vec![s],
        vec![slice("ns1", &name, &[("p80", 80)], endpoints)],
    )
}

/// The rules of `state` as `iptables-restore` text, after checking that both ways
/// of writing them agree byte for byte: the typed ruleset rendered
/// (`render(compile(..))`) and the fast path (`compile_text(..)`); or the error both
/// give.
pub fn try_render(
    state: &ClusterState,
    config: &ProxyConfig,
) -> Result<String, Box<svcnat::error::CompileError>> {
    let typed = svcnat::compile::compile(state, config).map(|r| svcnat::render::to_string(&r));
    let fast = svcnat::compile::compile_text(state, config).map(|t| t.to_bytes());
    match (typed, fast) {
        (Ok(typed), Ok(fast)) => {
            assert_same_text(&fast, &typed);
            Ok(typed)
        }
        (Err(typed), Err(fast)) => {
            assert_eq!(fast, typed, "compile_text and compile refuse differently");
            Err(Box::new(typed))
        }
        (typed, fast) => panic!(
            "compile and compile_text disagree: compile gives {:?}, compile_text {:?}",
            typed.map(|_| "text"),
            fast.map(|_| "text")
        ),
    }
}

/// [`try_render`] for a state that compiles.
pub fn render(state: &ClusterState, config: &ProxyConfig) -> String {
    try_render(state, config).unwrap()
}

/// Fails, showing the first line that differs, unless `fast` (from `compile_text`)
/// is `typed` (from `render(compile(..))`) byte for byte.
pub fn assert_same_text(fast: &[u8], typed: &str) {
    if fast == typed.as_bytes() {
        return;
    }
    let fast = String::from_utf8_lossy(fast);
    let lines = fast.lines().count().max(typed.lines().count());
    let (n, (f, t)) = fast
        .lines()
        .chain(std::iter::repeat("<end>"))
        .zip(typed.lines().chain(std::iter::repeat("<end>")))
        .take(lines)
        .enumerate()
        .find(|(_, (f, t))| f != t)
        .unwrap_or((lines, ("<same lines, other bytes>", "")));
    panic!(
        "compile_text differs from render(compile) at line {}:\n  compile_text:    {f}\n  render(compile): {t}\n\
         ({} bytes vs {} bytes)",
        n + 1,
        fast.len(),
        typed.len()
    );
}

/// A filter table whose INPUT policy is DROP, with `rules` (`-A …` lines) in it.
pub fn filter_input(rules: &str) -> String {
    format!(
        "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{rules}COMMIT\n"
    )
}

/// The one verdict of tracing `p` through `r` on a node at 192.168.0.2.
pub fn verdict(r: &svcnat::ruleset::Ruleset, p: &svcnat::trace::Packet) -> svcnat::trace::Verdict {
    let t = svcnat::trace::trace(r, p, &svcnat::trace::Node::new([ip("192.168.0.2")])).unwrap();
    assert_eq!(t.outcomes.len(), 1, "{t:?}");
    t.outcomes[0].verdict
}

/// Runs `cmd` with `stdin`; returns its output (status, stdout, stderr).
pub fn run_with_stdin(cmd: &mut std::process::Command, stdin: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    // A program that exits without reading its input closes the pipe early.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// The path of an example binary built for this test run (every example needs a
/// feature).
#[cfg(any(feature = "k8s", feature = "synthetic"))]
pub(crate) fn example(name: &str) -> std::path::PathBuf {
    // target/debug/deps/it-… -> target/debug/examples/NAME
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

/// Runs an example: exit code, stdout, stderr.
#[cfg(any(feature = "k8s", feature = "synthetic"))]
pub(crate) fn run_example(name: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    let out = run_with_stdin(std::process::Command::new(example(name)).args(args), stdin);
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Every chain of filter and nat in a Recorder's IPv4 model, with its rules.
pub fn recorder_tables(
    rec: &svcnat::exec::Recorder,
) -> std::collections::BTreeMap<(svcnat::ruleset::Table, String), Vec<String>> {
    use svcnat::ruleset::Table;
    let mut out = std::collections::BTreeMap::new();
    for table in [Table::Filter, Table::Nat] {
        for chain in rec.chains(IpFamily::Ipv4, table) {
            let rules = rec.rules(IpFamily::Ipv4, table, &chain).unwrap();
            out.insert((table, chain), rules);
        }
    }
    out
}

/// A `Syncer`'s full payload as `compile_text` writes the same state: without the
/// drift canaries (`KUBE-PROXY-CANARY`, which only the `Syncer` writes), filter's
/// section first (the `Syncer` writes nat first).
pub fn as_compiled(payload: &str) -> String {
    let mut sections: Vec<String> = Vec::new();
    for line in payload.lines() {
        if line.starts_with('*') {
            sections.push(String::new());
        }
        if line.contains(svcnat::sync::CANARY_CHAIN) {
            continue;
        }
        let current = sections.last_mut().expect("a payload opens with a table");
        current.push_str(line);
        current.push('\n');
    }
    sections.sort_by_key(|s| !s.starts_with("*filter\n"));
    sections.concat()
}
