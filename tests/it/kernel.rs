//! Tests against the real kernel, inside network namespaces the test creates and
//! removes. Without root or the iptables binaries they print why and skip, unless
//! `SVCNAT_REQUIRE_KERNEL=1`, which turns a missing capability into a failure.

// The traffic helpers (namespaces, echo server, client) serve the tests that build
// their clusters from Kubernetes objects; without `k8s` those tests are not built.
#![cfg_attr(not(feature = "k8s"), allow(dead_code))]

use std::process::{Command, Stdio};

/// Why kernel tests cannot run here, if they cannot.
fn missing_capability() -> Option<String> {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !is_root {
        return Some("not running as root".into());
    }
    for bin in [
        "ip",
        "python3",
        "conntrack",
        "iptables-nft-restore",
        "iptables-legacy-restore",
        "ip6tables-nft-restore",
        "ip6tables-legacy-restore",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "{bin} not found (apt-get install iptables iproute2)"
            ));
        }
    }
    None
}

/// True if the test may go on; false (after saying why) if it must skip.
pub fn kernel_available(test: &str) -> bool {
    available_or_skip(test, missing_capability())
}

/// [`kernel_available`], for a test that also needs `nft` (Debian's `nftables`).
pub fn nft_available(test: &str) -> bool {
    let missing = missing_capability().or_else(|| {
        let found = Command::new("sh")
            .args(["-c", "command -v nft"])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        (!found).then(|| "nft not found (apt-get install nftables)".to_owned())
    });
    available_or_skip(test, missing)
}

fn available_or_skip(test: &str, missing: Option<String>) -> bool {
    match missing {
        None => true,
        Some(why) => {
            if std::env::var("SVCNAT_REQUIRE_KERNEL").as_deref() == Ok("1") {
                panic!("{test}: kernel test required (SVCNAT_REQUIRE_KERNEL=1) but {why}");
            }
            eprintln!("{test}: skipped: {why}");
            false
        }
    }
}

/// A network namespace that is deleted when dropped, even if the test fails.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("svcnat-{}-{tag}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(status.success(), "ip netns add {name}");
        Netns { name }
    }

    /// Runs a command inside the namespace with `stdin`; returns (success, stdout+stderr).
    pub fn run(&self, args: &[&str], stdin: &str) -> (bool, String) {
        let out = crate::fixtures::run_with_stdin(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(args),
            stdin,
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[cfg(feature = "k8s")]
#[test]
fn example_output_is_accepted_by_iptables_restore() {
    if !kernel_available("example_output_is_accepted_by_iptables_restore") {
        return;
    }
    use svcnat::model::IpFamily;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/cluster.json"
    ))
    .unwrap();
    let state = crate::kube_proxy::state_from_list(&text);
    let ns = Netns::new("restore-test");
    for (family, tool, cidr, node_ip) in [
        (IpFamily::Ipv4, "iptables", "10.244.0.0/16", "192.168.0.10"),
        (IpFamily::Ipv6, "ip6tables", "fd00:244::/48", "fd00::10"),
    ] {
        let config = svcnat::model::ProxyConfig::default()
            .with_ip_family(family)
            .with_node_name("node-a")
            .with_node_ips([node_ip.parse().unwrap()])
            .with_cluster_cidrs([cidr.parse().unwrap()]);
        for extra in [false, true] {
            // Once plain, once with every option that adds rule syntax.
            let config = config
                .clone()
                .with_masquerade_random_fully(extra)
                .with_nfacct_counters(false)
                .with_masquerade_all(extra);
            let rules = crate::fixtures::render(&state, &config);
            assert!(
                rules.contains("-j DNAT"),
                "the example must produce DNAT rules"
            );
            for backend in ["nft", "legacy"] {
                let bin = format!("{tool}-{backend}-restore");
                let (ok, out) = ns.run(&[&bin, "--test"], &rules);
                assert!(ok, "{bin} --test refused the rules: {out}\n{rules}");
                // --test really parses: a broken payload is refused.
                let broken = rules.replacen("-j DNAT", "-j DNAT --no-such-option", 1);
                let (ok, _) = ns.run(&[&bin, "--test"], &broken);
                assert!(!ok, "{bin} --test accepted a broken payload");
            }
        }
    }
}

/// Runs `ip ARGS`, panicking with its output if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Answers each TCP connection and UDP datagram with "NAME PEER-IP", for two minutes at most.
const ECHO_SERVER: &str = r#"
import socket, sys, threading, signal
signal.alarm(120)
name, port, six = sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["6"]
F, ANY = (socket.AF_INET6, "::") if six else (socket.AF_INET, "0.0.0.0")
def udp():
    u = socket.socket(F, socket.SOCK_DGRAM)
    u.bind((ANY, port))
    while True:
        d, a = u.recvfrom(100)
        u.sendto(("%s %s" % (name, a[0])).encode(), a)
threading.Thread(target=udp, daemon=True).start()
s = socket.socket(F)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ANY, port))
s.listen(64)
while True:
    c, a = s.accept()
    c.sendall(("%s %s" % (name, a[0])).encode())
    c.close()
"#;

/// Makes N connections (or datagrams) and prints one line each: the answer,
/// REFUSED or TIMEOUT.
const CLIENT: &str = r#"
import socket, sys
proto, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for i in range(n):
    try:
        if proto == "tcp":
            s = socket.create_connection((host, port), timeout=2)
            print(s.recv(100).decode().strip())
            s.close()
        else:
            u = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            u.settimeout(2)
            u.sendto(b"x", (host, port))
            print(u.recv(100).decode().strip())
            u.close()
    except ConnectionRefusedError:
        print("REFUSED")
    except socket.timeout:
        print("TIMEOUT")
    except OSError as e:
        print("ERROR %s" % e)
"#;

/// Starts [`ECHO_SERVER`] in `ns` on `port` (IPv6 if `six`), answering as `name`.
/// The child is `python3` itself (`ip netns exec` execs it): kill it by its pid.
pub(crate) fn spawn_echo_server(
    ns: &Netns,
    name: &str,
    port: u16,
    six: bool,
) -> std::process::Child {
    let fam = if six { "6" } else { "4" };
    Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", ECHO_SERVER])
        .args([name, &port.to_string(), fam])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs the echo servers")
}

/// `n` connections (or datagrams) from `from` to `host:port` by [`CLIENT`]; one
/// answer line each: the server's "NAME PEER-IP", REFUSED, TIMEOUT or ERROR ….
pub(crate) fn connect_from(
    from: &Netns,
    proto: &str,
    host: &str,
    port: u16,
    n: usize,
) -> Vec<String> {
    let (_, out) = from.run(
        &[
            "python3",
            "-c",
            CLIENT,
            proto,
            host,
            &port.to_string(),
            &n.to_string(),
        ],
        "",
    );
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), n, "client output: {out}");
    lines
}

/// A node namespace with three pod namespaces and an outside client, on veth pairs,
/// with an echo server on port 8080 in every pod. IPv4: pod N at 10.244.N.2 (node
/// side 10.244.N.1), client 192.168.50.2 (node 192.168.50.1). IPv6: pod N at
/// fd00:244:N::2 (node side fd00:244:N::1), client fd00:50::2 (node fd00:50::1).
/// Everything is removed on drop.
pub(crate) struct Lab {
    servers: Vec<std::process::Child>,
    pub(crate) node: Netns,
    pub(crate) client: Netns,
    // Kept for their Drop.
    _pods: Vec<Netns>,
}

impl Lab {
    /// Pod `i` (1 to 3).
    pub(crate) fn pod(&self, i: usize) -> &Netns {
        &self._pods[i - 1]
    }
}

/// The lab's addresses for one family.
pub(crate) struct Plan {
    pub(crate) six: bool,
}

impl Plan {
    pub(crate) fn pod(&self, i: usize) -> String {
        if self.six {
            format!("fd00:244:{i}::2")
        } else {
            format!("10.244.{i}.2")
        }
    }
    pub(crate) fn pod_gw(&self, i: usize) -> String {
        if self.six {
            format!("fd00:244:{i}::1")
        } else {
            format!("10.244.{i}.1")
        }
    }
    pub(crate) fn client(&self) -> &'static str {
        if self.six {
            "fd00:50::2"
        } else {
            "192.168.50.2"
        }
    }
    pub(crate) fn node(&self) -> &'static str {
        if self.six {
            "fd00:50::1"
        } else {
            "192.168.50.1"
        }
    }
    fn len(&self) -> &'static str {
        if self.six { "64" } else { "24" }
    }
}

impl Lab {
    pub(crate) fn new(tag: &str, family: svcnat::model::IpFamily) -> Lab {
        let plan = Plan {
            six: family == svcnat::model::IpFamily::Ipv6,
        };
        let node = Netns::new(&format!("{tag}-node"));
        let client = Netns::new(&format!("{tag}-cli"));
        let pods: Vec<Netns> = (1..=3)
            .map(|i| Netns::new(&format!("{tag}-pod{i}")))
            .collect();
        let n = node.name.as_str();
        // An address without duplicate address detection, usable at once.
        let addr = |ns: &str, a: String, dev: &str| {
            let cidr = format!("{a}/{}", plan.len());
            let mut args = vec!["-n", ns, "addr", "add", cidr.as_str(), "dev", dev];
            if plan.six {
                args.push("nodad");
            }
            ip(&args);
        };
        let link_up = |ns: &str, dev: &str| ip(&["-n", ns, "link", "set", dev, "up"]);
        let default_via =
            |ns: &str, gw: &str| ip(&["-n", ns, "route", "add", "default", "via", gw]);
        link_up(n, "lo");
        for (i, pod) in pods.iter().enumerate() {
            let i = i + 1;
            let p = pod.name.as_str();
            let vp = format!("vp{i}");
            ip(&[
                "link", "add", &vp, "netns", n, "type", "veth", "peer", "name", "eth0", "netns", p,
            ]);
            addr(n, plan.pod_gw(i), &vp);
            link_up(n, &vp);
            addr(p, plan.pod(i), "eth0");
            link_up(p, "eth0");
            link_up(p, "lo");
            default_via(p, &plan.pod_gw(i));
        }
        let c = client.name.as_str();
        ip(&[
            "link", "add", "vcli", "netns", n, "type", "veth", "peer", "name", "eth0", "netns", c,
        ]);
        addr(n, plan.node().to_owned(), "vcli");
        link_up(n, "vcli");
        addr(c, plan.client().to_owned(), "eth0");
        link_up(c, "eth0");
        link_up(c, "lo");
        default_via(c, plan.node());
        // Locally generated traffic to a service IP needs a route before nat OUTPUT sees it.
        default_via(n, plan.client());
        for sysctl in [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            let (ok, out) = node.run(&["sysctl", "-w", sysctl], "");
            assert!(ok, "{out}");
        }
        let servers = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| spawn_echo_server(pod, &format!("pod{}", i + 1), 8080, plan.six))
            .collect();
        let lab = Lab {
            servers,
            node,
            client,
            _pods: pods,
        };
        // Wait until every server answers directly.
        for i in 1..=3 {
            let addr = plan.pod(i);
            let ready = (0..50).any(|_| {
                let answers = lab.connect(&lab.node, "tcp", &addr, 8080, 1);
                if answers[0].starts_with("pod") {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                false
            });
            assert!(ready, "echo server in pod{i} did not start");
        }
        lab
    }

    /// `n` connections from `from` to `host:port`; one answer line each.
    pub(crate) fn connect(
        &self,
        from: &Netns,
        proto: &str,
        host: &str,
        port: u16,
        n: usize,
    ) -> Vec<String> {
        connect_from(from, proto, host, port, n)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

/// The svcnat-owned chains of a table as `iptables-save` prints them: chain -> rules.
pub(crate) fn owned_chains(
    ns: &Netns,
    save: &str,
    table: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let (ok, out) = ns.run(&[save, "-t", table], "");
    assert!(ok, "{save}: {out}");
    let mut chains = std::collections::BTreeMap::<String, Vec<String>>::new();
    for line in out.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap();
            if name.starts_with("KUBE-") {
                chains.entry(name.to_owned()).or_default();
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
            if chain.starts_with("KUBE-") || rule.contains("-j KUBE-") {
                chains
                    .entry(chain.to_owned())
                    .or_default()
                    .push(rule.to_owned());
            }
        }
    }
    chains
}

#[cfg(feature = "k8s")]
#[test]
fn sync_example_applies_and_reports_executor_failures() {
    if !kernel_available("sync_example_applies_and_reports_executor_failures") {
        return;
    }
    let sync = crate::errors::example_cli::example("sync");
    let sync = sync.to_str().unwrap();
    let cluster = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster.json");
    let ns = Netns::new("sync-example");
    for backend in ["nft", "legacy"] {
        let (ok, out) = ns.run(
            &[
                sync,
                "--cluster-cidr",
                "10.244.0.0/16",
                "--apply",
                "--backend",
                backend,
                cluster,
                cluster,
            ],
            "",
        );
        assert!(ok, "{out}");
        assert!(
            out.contains("step 1: full,")
                && out.contains("step 2: partial, 0 bytes, 0 chains written, 0 chains deleted"),
            "{out}"
        );
        let (_, saved) = ns.run(&[&format!("iptables-{backend}-save"), "-t", "nat"], "");
        assert!(
            saved.contains(
                "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
            ),
            "{saved}"
        );
    }
    // The nfacct counters do not exist in a fresh namespace, and with no binary on
    // the PATH the executor cannot create them: the example says which counter,
    // which binary failed and how, and exits 1.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "env",
            "PATH=/nonexistent-svcnat",
            sync,
            "--nfacct-counters",
            "--apply",
            "--backend",
            "nft",
            cluster,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("nfacct counter ct_state_invalid_dropped_pkts")
            && stderr.contains("nfacct: cannot run"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[cfg(feature = "k8s")]
mod traffic {
    use std::collections::BTreeSet;

    use svcnat::exec::{Backend, IptablesRestore};
    use svcnat::model::*;
    use svcnat::sync::Syncer;

    use super::*;
    use crate::fixtures::ip as addr;

    fn config() -> ProxyConfig {
        ProxyConfig::default()
            .with_node_name("node")
            .with_node_ips([addr("192.168.50.1"), addr("127.0.0.1")])
            .with_cluster_cidrs(["10.244.0.0/16".parse().unwrap()])
    }

    fn pod(i: u8, node: &str) -> Endpoint {
        Endpoint::ready(addr(&format!("10.244.{i}.2"))).on_node(node)
    }

    fn svc(name: &str, ip: &str) -> Service {
        Service::cluster_ip("test", name, addr(ip))
            .with_port(ServicePort::tcp("tcp", 80))
            .with_port(ServicePort::tcp("udp", 80).with_protocol(Protocol::Udp))
    }

    fn slice(svc: &str, pods: &[Endpoint]) -> EndpointSlice {
        let mut s = EndpointSlice::new("test", svc, format!("{svc}-1"), IpFamily::Ipv4)
            .with_port(EndpointPort::tcp("tcp", 8080))
            .with_port(EndpointPort {
                name: "udp".into(),
                protocol: Protocol::Udp,
                port: 8080,
            });
        s.endpoints = pods.to_vec();
        s
    }

    /// The cluster the traffic checks run against.
    fn cluster() -> ClusterState {
        let mut state = ClusterState::new();
        let mut spread = svc("spread", "172.30.0.10");
        spread.service_type = ServiceType::NodePort;
        spread.ports[0].node_port = Some(30080);
        state.upsert_service(spread);
        state.upsert_slice(slice(
            "spread",
            &[pod(1, "node"), pod(2, "node"), pod(3, "node")],
        ));
        state.upsert_service(svc("empty", "172.30.0.20"));
        let mut sticky = svc("sticky", "172.30.0.30");
        sticky.session_affinity = SessionAffinity::ClientIp {
            timeout_seconds: 300,
        };
        state.upsert_service(sticky);
        state.upsert_slice(slice(
            "sticky",
            &[pod(1, "node"), pod(2, "node"), pod(3, "node")],
        ));
        let mut local = svc("local", "172.30.0.40");
        local.service_type = ServiceType::NodePort;
        local.external_traffic_policy = TrafficPolicy::Local;
        local.ports[0].node_port = Some(30081);
        state.upsert_service(local);
        state.upsert_slice(slice("local", &[pod(1, "node"), pod(2, "other-node")]));
        state
    }

    /// One change to the cluster between two syncs.
    type Step = Box<dyn Fn(&mut ClusterState)>;

    fn names(answers: &[String]) -> BTreeSet<String> {
        answers
            .iter()
            .map(|a| a.split(' ').next().unwrap().to_owned())
            .collect()
    }

    fn sources(answers: &[String]) -> BTreeSet<String> {
        answers
            .iter()
            .map(|a| a.split(' ').nth(1).unwrap_or("").to_owned())
            .collect()
    }

    /// Each jump rule is in its built-in chain once, and the chain starts with them
    /// in kube-proxy's order (the last inserted first), above whatever else it holds.
    fn assert_jumps_in_place(ns: &Netns, save: &str) {
        use svcnat::parse::{builtin_chains, canonical_rule, parse_as};
        use svcnat::ruleset::{Rule, Table};
        let jumps = svcnat::compile::jump_rules(&config()).unwrap();
        for table in [Table::Nat, Table::Filter] {
            let (ok, out) = ns.run(&[save, "-t", table.as_str()], "");
            assert!(ok, "{save}: {out}");
            let saved = parse_as(&out, IpFamily::Ipv4).unwrap();
            let rules = saved.table(table).unwrap();
            for chain in builtin_chains(table) {
                let canonical = |r: &Rule| canonical_rule(r, IpFamily::Ipv4);
                let want: Vec<Rule> = jumps
                    .iter()
                    .rev()
                    .filter(|j| j.table == table && j.chain.as_str() == *chain)
                    .map(|j| canonical(&j.rule))
                    .collect();
                let have: Vec<Rule> = rules
                    .chain(chain)
                    .map(|c| c.rules.iter().map(canonical).collect())
                    .unwrap_or_default();
                assert!(
                    have.starts_with(&want),
                    "{table} {chain}: {have:?}, want first {want:?}"
                );
                for rule in &want {
                    let times = have.iter().filter(|h| *h == rule).count();
                    assert_eq!(times, 1, "{table} {chain}: {rule} is there {times} times");
                }
            }
        }
    }

    fn traffic_and_churn(backend: Backend, tag: &str) {
        let lab = Lab::new(tag, IpFamily::Ipv4);
        let n = lab.node.name.clone();
        let save = match backend {
            Backend::Legacy => "iptables-legacy-save",
            _ => "iptables-nft-save",
        };
        // A user's own chain and rule in the tables svcnat writes to.
        let (ok, out) = lab.node.run(
            &[save.replace("-save", "-restore").as_str(), "--noflush"],
            "*nat\n:USER-CHAIN - [0:0]\n-A USER-CHAIN -s 192.0.2.1/32 -j RETURN\n-A PREROUTING -j USER-CHAIN\nCOMMIT\n*filter\n:USER-FILTER - [0:0]\n-A USER-FILTER -s 192.0.2.1/32 -j DROP\nCOMMIT\n",
        );
        assert!(ok, "{out}");
        let user_rules = |lab: &Lab| {
            let (_, nat) = lab.node.run(&[save, "-t", "nat"], "");
            let (_, filter) = lab.node.run(&[save, "-t", "filter"], "");
            let lines: Vec<String> = nat
                .lines()
                .chain(filter.lines())
                .filter(|l| l.contains("USER-"))
                .map(str::to_owned)
                .collect();
            lines
        };
        let user_before = user_rules(&lab);
        assert_eq!(user_before.len(), 5, "{user_before:?}");

        // Payloads cut into pieces of three chains (exec::pieces), so the real
        // kernel takes each sync piece by piece: the rules and the traffic below
        // are those of the whole payload.
        let exec = IptablesRestore::new(backend)
            .with_command_prefix(["ip", "netns", "exec", n.as_str()])
            .with_restore_pieces(Some(3));
        let mut syncer = Syncer::new(exec, config()).unwrap();
        syncer.replace_state(cluster());
        assert!(syncer.sync().unwrap().full);
        if backend == Backend::Nft {
            // The service and endpoint chains (affinity's among them) went as
            // netlink batches: the traffic below goes through them.
            assert!(syncer.executor().restore_counts().0 > 0, "no netlink batch");
        }
        assert_jumps_in_place(&lab.node, save);
        // A second full sync finds every jump rule in place and adds none.
        syncer.request_full_sync();
        assert!(syncer.sync().unwrap().full);
        assert_jumps_in_place(&lab.node, save);
        // With the top jump of nat PREROUTING and of filter FORWARD deleted, a full
        // sync puts back exactly those two, on top, and adds nothing else.
        let jumps = svcnat::compile::jump_rules(&config()).unwrap();
        for chain in ["PREROUTING", "FORWARD"] {
            let top = jumps
                .iter()
                .rev()
                .find(|j| j.chain.as_str() == chain)
                .unwrap();
            // `-D` in a `--noflush` restore deletes the rule as written.
            let payload = format!("*{}\n-D {chain} {}\nCOMMIT\n", top.table, top.rule);
            let (ok, out) = lab.node.run(
                &[save.replace("-save", "-restore").as_str(), "--noflush"],
                &payload,
            );
            assert!(ok, "{payload}: {out}");
        }
        syncer.request_full_sync();
        assert!(syncer.sync().unwrap().full);
        assert_jumps_in_place(&lab.node, save);

        // ClusterIP from a process on the node: every endpoint answers, TCP and UDP,
        // masqueraded (the pod sees the node's address on its link, not 192.168.50.1).
        let tcp = lab.connect(&lab.node, "tcp", "172.30.0.10", 80, 30);
        assert_eq!(
            names(&tcp),
            BTreeSet::from(["pod1".into(), "pod2".into(), "pod3".into()]),
            "{tcp:?}"
        );
        for a in &tcp {
            let (name, src) = a.split_once(' ').unwrap();
            let i = &name[3..];
            assert_eq!(
                src,
                format!("10.244.{i}.1"),
                "node traffic to a cluster IP is masqueraded: {a}"
            );
        }
        let udp = lab.connect(&lab.node, "udp", "172.30.0.10", 80, 30);
        assert_eq!(names(&udp).len(), 3, "{udp:?}");

        // The UDP flows left conntrack entries; clearing the stale flows of the three
        // endpoints removes them.
        let entries = |lab: &Lab| {
            let (_, out) = lab.node.run(
                &["conntrack", "-L", "-p", "udp", "--orig-dst", "172.30.0.10"],
                "",
            );
            out.lines().filter(|l| l.starts_with("udp")).count()
        };
        assert!(
            entries(&lab) > 0,
            "UDP traffic should leave conntrack entries"
        );
        let flows: Vec<svcnat::sync::StaleFlow> = (1..=3)
            .map(|i| svcnat::sync::StaleFlow {
                protocol: Protocol::Udp,
                destination: svcnat::sync::FlowDestination::Service(
                    "172.30.0.10:80".parse().unwrap(),
                ),
                endpoint: Some(addr(&format!("10.244.{i}.2"))),
            })
            .collect();
        use svcnat::exec::Executor;
        syncer
            .executor_mut()
            .clear_conntrack(IpFamily::Ipv4, &flows)
            .unwrap();
        assert_eq!(entries(&lab), 0, "stale flows were not cleared");

        // From a pod (inside the cluster CIDR): not masqueraded, except the hairpin
        // back to itself.
        let pod1 = &lab._pods[0];
        let from_pod = lab.connect(pod1, "tcp", "172.30.0.10", 80, 30);
        for a in &from_pod {
            let (name, src) = a.split_once(' ').unwrap();
            if name == "pod1" {
                assert_eq!(src, "10.244.1.1", "hairpin is masqueraded: {a}");
            } else {
                assert_eq!(src, "10.244.1.2", "pod traffic keeps its source: {a}");
            }
        }

        // NodePort from outside the node: every endpoint, masqueraded (eTP Cluster).
        let np = lab.connect(&lab.client, "tcp", "192.168.50.1", 30080, 30);
        assert_eq!(names(&np).len(), 3, "{np:?}");
        assert!(!sources(&np).contains("192.168.50.2"), "{np:?}");

        // No endpoints: rejected at once.
        assert_eq!(
            lab.connect(&lab.node, "tcp", "172.30.0.20", 80, 1),
            ["REFUSED"]
        );

        // Session affinity: one endpoint for one client.
        let sticky = lab.connect(&lab.node, "tcp", "172.30.0.30", 80, 15);
        assert_eq!(names(&sticky).len(), 1, "{sticky:?}");

        // externalTrafficPolicy Local: only this node's endpoint, client source kept.
        let local = lab.connect(&lab.client, "tcp", "192.168.50.1", 30081, 15);
        assert_eq!(
            local.iter().collect::<BTreeSet<_>>(),
            BTreeSet::from([&"pod1 192.168.50.2".to_owned()]),
            "{local:?}"
        );

        // Churn: partial syncs, each compared with a full sync of the same state in a
        // fresh namespace.
        let mut state = cluster();
        let steps: Vec<Step> = vec![
            Box::new(|s| {
                s.upsert_slice(slice("sticky", &[pod(1, "node"), pod(2, "node")]));
            }),
            Box::new(|s| {
                s.upsert_slice(slice("empty", &[pod(3, "node")]));
            }),
            Box::new(|s| {
                s.remove_service(&ServiceKey::new("test", "spread"));
                s.remove_slice(&ServiceKey::new("test", "spread"), "spread-1");
            }),
            Box::new(|s| {
                s.upsert_service(svc("fresh", "172.30.0.50"));
                s.upsert_slice(slice("fresh", &[pod(2, "node"), pod(3, "node")]));
            }),
        ];
        for (i, step) in steps.iter().enumerate() {
            step(&mut state);
            syncer.replace_state(state.clone());
            let report = syncer.sync().unwrap();
            assert!(!report.full, "step {i}");
            let reference = Netns::new(&format!("{tag}-ref{i}"));
            let exec = IptablesRestore::new(backend).with_command_prefix([
                "ip",
                "netns",
                "exec",
                reference.name.as_str(),
            ]);
            let mut fresh = Syncer::new(exec, config()).unwrap();
            fresh.replace_state(state.clone());
            assert!(fresh.sync().unwrap().full);
            for table in ["nat", "filter"] {
                let ours = owned_chains(&lab.node, save, table);
                let want = owned_chains(&reference, save, table);
                assert_eq!(ours, want, "step {i}: {table} differs from a full sync");
            }
            // No stale chain: exactly the service chains the compiler produces.
            let compiled = svcnat::compile::compile(&state, &config()).unwrap();
            let want: BTreeSet<String> = compiled
                .table(svcnat::ruleset::Table::Nat)
                .unwrap()
                .chains
                .keys()
                .map(|c| c.to_string())
                .collect();
            let have: BTreeSet<String> = owned_chains(&lab.node, save, "nat")
                .into_keys()
                .filter(|c| c.starts_with("KUBE-") && c != svcnat::sync::CANARY_CHAIN)
                .collect();
            assert_eq!(have, want, "step {i}");
            assert_eq!(
                user_rules(&lab),
                user_before,
                "step {i}: the user's rules were touched"
            );
        }
        // The service added by the last step serves traffic.
        let fresh = lab.connect(&lab.node, "tcp", "172.30.0.50", 80, 20);
        assert_eq!(
            names(&fresh),
            BTreeSet::from(["pod2".into(), "pod3".into()]),
            "{fresh:?}"
        );
        assert_eq!(
            lab.connect(&lab.node, "tcp", "172.30.0.10", 80, 1)[0],
            "TIMEOUT",
            "deleted service still answers"
        );
    }

    /// IPv6: ip6tables rules with bracketed DNAT targets carry real traffic;
    /// with `pieces`, the sync is cut into pieces of that many chains (on nft,
    /// the service and endpoint chains then go as netlink batches).
    fn ipv6_traffic(backend: Backend, tag: &str, pieces: Option<usize>) {
        let lab = Lab::new(tag, IpFamily::Ipv6);
        let pod6 =
            |i: u8, node: &str| Endpoint::ready(addr(&format!("fd00:244:{i}::2"))).on_node(node);
        let mut state = ClusterState::new();
        let mut spread = svc("spread", "fd00:96::10");
        spread.service_type = ServiceType::NodePort;
        spread.ports[0].node_port = Some(30080);
        state.upsert_service(spread);
        let mut sl = slice(
            "spread",
            &[pod6(1, "node"), pod6(2, "node"), pod6(3, "node")],
        );
        sl.address_type = IpFamily::Ipv6;
        state.upsert_slice(sl);
        state.upsert_service(svc("empty", "fd00:96::20"));
        let config = ProxyConfig::default()
            .with_ip_family(IpFamily::Ipv6)
            .with_node_name("node")
            .with_node_ips([addr("fd00:50::1"), addr("::1")])
            .with_cluster_cidrs(["fd00:244::/48".parse().unwrap()]);
        let exec = IptablesRestore::new(backend).with_command_prefix([
            "ip",
            "netns",
            "exec",
            lab.node.name.as_str(),
        ]);
        let exec = match pieces {
            Some(n) => exec.with_restore_pieces(Some(n)),
            None => exec,
        };
        let mut syncer = Syncer::new(exec, config).unwrap();
        syncer.replace_state(state);
        assert!(syncer.sync().unwrap().full);
        if pieces.is_some() && backend == Backend::Nft {
            assert!(syncer.executor().restore_counts().0 > 0, "no netlink batch");
        }

        // From the node: every endpoint, masqueraded to the node's address on the pod link.
        let tcp = lab.connect(&lab.node, "tcp", "fd00:96::10", 80, 30);
        assert_eq!(names(&tcp).len(), 3, "{tcp:?}");
        for a in &tcp {
            let (name, src) = a.split_once(' ').unwrap();
            assert_eq!(src, format!("fd00:244:{}::1", &name[3..]), "{a}");
        }
        let udp = lab.connect(&lab.node, "udp", "fd00:96::10", 80, 30);
        assert_eq!(names(&udp).len(), 3, "{udp:?}");
        // NodePort from outside.
        let np = lab.connect(&lab.client, "tcp", "fd00:50::1", 30080, 30);
        assert_eq!(names(&np).len(), 3, "{np:?}");
        // No endpoints: rejected.
        assert_eq!(
            lab.connect(&lab.node, "tcp", "fd00:96::20", 80, 1),
            ["REFUSED"]
        );
    }

    #[test]
    fn ipv6_traffic_nft() {
        if kernel_available("ipv6_traffic_nft") {
            ipv6_traffic(Backend::Nft, "v6nft", None);
        }
    }

    #[test]
    fn ipv6_traffic_nft_netlink() {
        if kernel_available("ipv6_traffic_nft_netlink") {
            ipv6_traffic(Backend::Nft, "v6nl", Some(1));
        }
    }

    #[test]
    fn ipv6_traffic_legacy() {
        if kernel_available("ipv6_traffic_legacy") {
            ipv6_traffic(Backend::Legacy, "v6leg", None);
        }
    }

    #[test]
    fn traffic_and_churn_nft() {
        if kernel_available("traffic_and_churn_nft") {
            traffic_and_churn(Backend::Nft, "nft");
        }
    }

    #[test]
    fn traffic_and_churn_legacy() {
        if kernel_available("traffic_and_churn_legacy") {
            traffic_and_churn(Backend::Legacy, "leg");
        }
    }
}

/// Random clusters with every feature on, for either family: the output is the same
/// for shuffled input and the real restore binaries accept it.
mod every_feature {
    use std::net::IpAddr;

    use proptest::prelude::*;
    use svcnat::model::*;

    use super::{Netns, kernel_available};

    fn addr(family: IpFamily, net: u16, host: u16) -> IpAddr {
        match family {
            IpFamily::Ipv4 => IpAddr::from([10, 180, net as u8, host as u8]),
            IpFamily::Ipv6 => IpAddr::from([0xfd00, 0x10, 0x180, net, 0, 0, 0, host]),
        }
    }

    fn vip(family: IpFamily, i: u16) -> IpAddr {
        match family {
            IpFamily::Ipv4 => IpAddr::from([172, 30, (i >> 8) as u8, i as u8]),
            IpFamily::Ipv6 => IpAddr::from([0xfd00, 0x172, 0x30, 0, 0, 0, 0, i]),
        }
    }

    #[derive(Debug, Clone)]
    struct Knobs {
        kind: u8,
        etp_local: bool,
        itp_local: bool,
        affinity: bool,
        external_ip: bool,
        source_range: bool,
        protocol: Protocol,
        endpoints: Vec<(u16, Conditions, bool)>,
    }

    fn knobs() -> impl Strategy<Value = Knobs> {
        let conds = prop_oneof![
            Just(Conditions::READY),
            Just(Conditions::SERVING_TERMINATING),
            Just(Conditions::NOT_READY)
        ];
        (
            0u8..3,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]),
            prop::collection::vec((1u16..20, conds, any::<bool>()), 0..4),
        )
            .prop_map(
                |(
                    kind,
                    etp_local,
                    itp_local,
                    affinity,
                    external_ip,
                    source_range,
                    protocol,
                    endpoints,
                )| Knobs {
                    kind,
                    etp_local,
                    itp_local,
                    affinity,
                    external_ip,
                    source_range,
                    protocol,
                    endpoints,
                },
            )
    }

    fn cluster(family: IpFamily, all: &[Knobs]) -> (Vec<Service>, Vec<EndpointSlice>) {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for (i, k) in all.iter().enumerate() {
            let i16 = i as u16 + 1;
            let name = format!("svc{i}");
            let service_type = [
                ServiceType::ClusterIp,
                ServiceType::NodePort,
                ServiceType::LoadBalancer,
            ][k.kind as usize];
            let mut port = ServicePort::tcp("p", 80 + i16).with_protocol(k.protocol);
            if service_type != ServiceType::ClusterIp {
                port = port.with_node_port(30000 + i16);
            }
            let lb = service_type == ServiceType::LoadBalancer;
            services.push(Service {
                namespace: "ns".into(),
                name: name.clone(),
                service_type,
                cluster_ips: vec![vip(family, i16)],
                ports: vec![port],
                session_affinity: if k.affinity {
                    SessionAffinity::ClientIp {
                        timeout_seconds: 10800,
                    }
                } else {
                    SessionAffinity::None
                },
                external_traffic_policy: if k.etp_local {
                    TrafficPolicy::Local
                } else {
                    TrafficPolicy::Cluster
                },
                internal_traffic_policy: if k.itp_local {
                    TrafficPolicy::Local
                } else {
                    TrafficPolicy::Cluster
                },
                external_ips: if k.external_ip {
                    vec![vip(family, 1000 + i16)]
                } else {
                    vec![]
                },
                load_balancer_ingress: if lb {
                    vec![LoadBalancerIngress {
                        ip: vip(family, 2000 + i16),
                        ip_mode: IpMode::Vip,
                    }]
                } else {
                    vec![]
                },
                load_balancer_source_ranges: if lb && k.source_range {
                    vec![
                        ipnet::IpNet::new(
                            addr(family, 99, 0),
                            if family == IpFamily::Ipv4 { 24 } else { 112 },
                        )
                        .unwrap(),
                    ]
                } else {
                    vec![]
                },
                health_check_node_port: (lb && k.etp_local).then_some(31000 + i16),
            });
            let mut slice = EndpointSlice::new("ns", name.clone(), format!("{name}-1"), family);
            slice.ports.push(EndpointPort {
                name: "p".into(),
                protocol: k.protocol,
                port: 8080,
            });
            for (host, c, local) in &k.endpoints {
                let mut e = Endpoint::ready(addr(family, i16, *host)).with_conditions(*c);
                e.node_name = Some(if *local { "node-a" } else { "node-b" }.into());
                slice.endpoints.push(e);
            }
            slices.push(slice);
        }
        (services, slices)
    }

    fn config(family: IpFamily, switches: (bool, bool, bool, u8)) -> ProxyConfig {
        let (nfacct, random_fully, masquerade_all, detector) = switches;
        let detector = match detector {
            0 => LocalTrafficDetector::Cidrs(vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00:10::/32".parse().unwrap(),
            ]),
            1 => LocalTrafficDetector::BridgeInterface("cbr0".into()),
            2 => LocalTrafficDetector::InterfaceNamePrefix("veth".into()),
            _ => LocalTrafficDetector::None,
        };
        ProxyConfig::default()
            .with_ip_family(family)
            .with_node_name("node-a")
            .with_node_ips([
                "192.168.0.2".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
                "127.0.0.1".parse().unwrap(),
            ])
            .with_local_traffic(detector)
            .with_nfacct_counters(nfacct)
            .with_masquerade_random_fully(random_fully)
            .with_masquerade_all(masquerade_all)
    }

    #[test]
    fn accepted_by_iptables_restore() {
        if !kernel_available("every_feature::accepted_by_iptables_restore") {
            return;
        }
        let ns = Netns::new("features");
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24));
        runner
            .run(
                &(
                    prop::collection::vec(knobs(), 1..6),
                    any::<bool>(),
                    (any::<bool>(), any::<bool>(), any::<bool>(), 0u8..4),
                    any::<u64>(),
                ),
                |(all, v6, switches, seed)| {
                    let family = if v6 { IpFamily::Ipv6 } else { IpFamily::Ipv4 };
                    let (services, slices) = cluster(family, &all);
                    let config = config(family, switches);
                    let mut forward = ClusterState::new();
                    services.iter().cloned().for_each(|s| {
                        forward.upsert_service(s);
                    });
                    slices.iter().cloned().for_each(|s| {
                        forward.upsert_slice(s);
                    });
                    // The same objects in another order.
                    let mut backward = ClusterState::new();
                    let rotate = (seed as usize) % slices.len().max(1);
                    slices
                        .iter()
                        .cycle()
                        .skip(rotate)
                        .take(slices.len())
                        .cloned()
                        .for_each(|mut s| {
                            s.endpoints.reverse();
                            backward.upsert_slice(s);
                        });
                    services.iter().rev().cloned().for_each(|s| {
                        backward.upsert_service(s);
                    });
                    let text = crate::fixtures::render(&forward, &config);
                    let again = svcnat::render::to_string(
                        &svcnat::compile::compile(&backward, &config).unwrap(),
                    );
                    prop_assert_eq!(&text, &again);
                    let tool = if v6 { "ip6tables" } else { "iptables" };
                    for backend in ["nft", "legacy"] {
                        let bin = format!("{tool}-{backend}-restore");
                        let (ok, out) = ns.run(&[&bin, "--test"], &text);
                        prop_assert!(ok, "{} refused:\n{}\n{}", bin, out, text);
                    }
                    Ok(())
                },
            )
            .unwrap();
    }
}

/// Cleanup from a fresh executor, after a sync on top of another program's rules,
/// leaves the tables exactly as they were before the sync (by `iptables-save`,
/// counters and comments aside), and a second cleanup changes nothing.
fn cleanup_keeps_foreign_rules(backend: svcnat::exec::Backend, tag: &str) {
    use svcnat::exec::{IptablesRestore, cleanup};
    use svcnat::model::IpFamily;
    use svcnat::sync::Syncer;
    let ns = Netns::new(tag);
    let name = match backend {
        svcnat::exec::Backend::Legacy => "legacy",
        _ => "nft",
    };
    let (save, restore) = (
        format!("iptables-{name}-save"),
        format!("iptables-{name}-restore"),
    );
    let foreign = "*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
        -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
        -A PREROUTING -s 10.9.0.0/16 -p udp -m udp --dport 53 -j RETURN\n\
        -A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80\n\
        COMMIT\n*filter\n:FORWARD ACCEPT [0:0]\n:CNI-FORWARD - [0:0]\n\
        -A FORWARD -j CNI-FORWARD\n-A CNI-FORWARD -s 10.88.0.0/16 -j ACCEPT\nCOMMIT\n";
    let (ok, out) = ns.run(&[restore.as_str(), "--noflush"], foreign);
    assert!(ok, "{out}");
    let tables = |ns: &Netns| -> String {
        let mut all = String::new();
        for table in ["nat", "filter"] {
            let (ok, out) = ns.run(&[save.as_str(), "-t", table], "");
            assert!(ok, "{out}");
            // KUBE-MARK-MASQ and KUBE-FIREWALL, which kubelet writes too, are left by
            // cleanup as kube-proxy leaves them.
            let shared = |l: &str| l.contains("KUBE-MARK-MASQ") || l.contains("KUBE-FIREWALL");
            for line in out.lines().filter(|l| !l.starts_with('#') && !shared(l)) {
                // Counters differ between the two reads.
                let line = match line.split_once(" [") {
                    Some((head, _)) if line.starts_with(':') => head,
                    _ => line,
                };
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    };
    let before = tables(&ns);
    let exec = || {
        IptablesRestore::new(backend).with_command_prefix(["ip", "netns", "exec", ns.name.as_str()])
    };
    let mut syncer = Syncer::new(exec(), crate::fixtures::config()).unwrap();
    syncer.replace_state(crate::parse::rich_state(IpFamily::Ipv4));
    assert!(syncer.sync().unwrap().full);
    assert_ne!(tables(&ns), before);
    drop(syncer);

    let done = cleanup(&mut exec(), IpFamily::Ipv4).unwrap();
    assert!(!done.chains_removed.is_empty(), "{done:?}");
    assert!(done.chains_kept.is_empty(), "{done:?}");
    assert_eq!(tables(&ns), before);
    let again = cleanup(&mut exec(), IpFamily::Ipv4).unwrap();
    assert_eq!(again, Default::default());
    assert_eq!(tables(&ns), before);

    // The same through the sync example's --cleanup, from a fresh process.
    #[cfg(feature = "k8s")]
    {
        let mut syncer = Syncer::new(exec(), crate::fixtures::config()).unwrap();
        syncer.replace_state(crate::parse::rich_state(IpFamily::Ipv4));
        assert!(syncer.sync().unwrap().full);
        let sync = crate::fixtures::example("sync");
        let (ok, out) = ns.run(
            &[sync.to_str().unwrap(), "--backend", name, "--cleanup"],
            "",
        );
        assert!(ok, "{out}");
        assert!(
            out.starts_with("cleanup: ") && out.contains(" chains removed, 0 chains kept"),
            "{out}"
        );
        assert_eq!(tables(&ns), before);
    }
}

#[test]
fn cleanup_keeps_foreign_rules_nft() {
    if kernel_available("cleanup_keeps_foreign_rules_nft") {
        cleanup_keeps_foreign_rules(svcnat::exec::Backend::Nft, "clean-nft");
    }
}

#[test]
fn cleanup_keeps_foreign_rules_legacy() {
    if kernel_available("cleanup_keeps_foreign_rules_legacy") {
        cleanup_keeps_foreign_rules(svcnat::exec::Backend::Legacy, "clean-leg");
    }
}
