//! Tests against the real kernel, inside network namespaces the test creates and
//! removes. Without root or the iptables binaries they print why and skip, unless
//! `SVCNAT_REQUIRE_KERNEL=1`, which turns a missing capability into a failure.

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
    match missing_capability() {
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
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
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
        (IpFamily::IPv4, "iptables", "10.244.0.0/16", "192.168.0.10"),
        (IpFamily::IPv6, "ip6tables", "fd00:244::/48", "fd00::10"),
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
            let rules =
                svcnat::render::to_string(&svcnat::compile::compile(&state, &config).unwrap());
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
