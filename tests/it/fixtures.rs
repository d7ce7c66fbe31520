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

pub fn render(state: &ClusterState, config: &ProxyConfig) -> String {
    svcnat::render::to_string(&svcnat::compile::compile(state, config).unwrap())
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

/// The path of an example binary built for this test run.
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
pub(crate) fn run_example(name: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    let out = run_with_stdin(std::process::Command::new(example(name)).args(args), stdin);
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}
