//! Bad input: a typed error naming the object, port and field; never a panic,
//! never part of a ruleset.

use svcnat::compile::{compile, compile_lenient};
use svcnat::error::{CompileError, Problem};
use svcnat::model::*;

use crate::fixtures::*;

fn svc1() -> Service {
    service("ns1", "svc1", "172.30.0.41", &[("p80", 80)])
}

fn err(state: &ClusterState) -> CompileError {
    compile(state, &config()).expect_err("input should be refused")
}

fn service_err(e: &CompileError) -> (&ServiceKey, Option<&str>, &str, &Problem) {
    match e {
        CompileError::Service {
            service,
            port,
            field,
            problem,
        } => (service, port.as_deref(), field.as_str(), problem),
        other => panic!("not a service error: {other}"),
    }
}

#[test]
fn port_zero() {
    let svc = service("ns1", "svc1", "172.30.0.41", &[("p80", 0)]);
    let e = err(&state(vec![svc], vec![]));
    let (key, port, field, problem) = service_err(&e);
    assert_eq!(key.to_string(), "ns1/svc1");
    assert_eq!(port, Some("p80"));
    assert_eq!(field, "spec.ports[0].port");
    assert_eq!(problem, &Problem::PortZero);
    assert_eq!(
        e.to_string(),
        "service ns1/svc1 port p80: spec.ports[0].port: port 0 is not allowed"
    );
}

#[test]
fn node_port_outside_configured_range() {
    let svc = Service {
        ports: vec![ServicePort::tcp("p80", 80).with_node_port(40000)],
        ..svc1().with_type(ServiceType::NodePort)
    };
    let config = config().with_node_port_range(Some(30000..=32767));
    let e = compile(&state(vec![svc.clone()], vec![]), &config).unwrap_err();
    assert_eq!(
        e.to_string(),
        "service ns1/svc1 port p80: spec.ports[0].nodePort: node port 40000 is outside the node port range 30000-32767"
    );
    // Without a configured range any node port is accepted.
    assert!(compile(&state(vec![svc], vec![]), &super::fixtures::config()).is_ok());
}

#[test]
fn duplicate_port_names() {
    let svc = service("ns1", "svc1", "172.30.0.41", &[("p80", 80), ("p80", 81)]);
    let e = err(&state(vec![svc], vec![]));
    let (_, port, field, problem) = service_err(&e);
    assert_eq!((port, field), (Some("p80"), "spec.ports[1].name"));
    assert!(matches!(problem, Problem::DuplicatePortName { name } if name == "p80"));
}

#[test]
fn names_must_be_dns_labels() {
    for (ns, name, field) in [
        ("NS1", "svc1", "metadata.namespace"),
        ("ns1", "svc_1", "metadata.name"),
        ("ns1", "1svc", "metadata.name"),
        // A quote or a newline would break out of the comment.
        ("ns1", "svc\" -j ACCEPT", "metadata.name"),
        ("ns1\n-A INPUT", "svc1", "metadata.namespace"),
        ("ns1", &"a".repeat(64), "metadata.name"),
    ] {
        let svc =
            Service::cluster_ip(ns, name, ip("172.30.0.41")).with_port(ServicePort::tcp("p80", 80));
        let e = err(&state(vec![svc], vec![]));
        let (_, port, f, problem) = service_err(&e);
        assert_eq!((port, f), (None, field), "{ns}/{name}");
        assert!(matches!(problem, Problem::InvalidName { .. }), "{problem}");
    }
    let bad_port = service("ns1", "svc1", "172.30.0.41", &[("P 80", 80)]);
    let e = err(&state(vec![bad_port], vec![]));
    assert_eq!(service_err(&e).2, "spec.ports[0].name");
}

#[test]
fn endpoint_port_matching_no_service_port() {
    let sl = slice("ns1", "svc1", &[("p81", 80)], vec![ready("10.180.0.1")]);
    let e = err(&state(vec![svc1()], vec![sl]));
    assert_eq!(
        e.to_string(),
        "endpoint slice svc1-slice of service ns1/svc1: ports[0]: endpoint port \"p81\"/tcp matches no service port"
    );
}

#[test]
fn endpoint_address_of_the_wrong_family() {
    let mut sl = slice(
        "ns1",
        "svc1",
        &[("p80", 80)],
        vec![ready("10.180.0.1"), ready("fd00::1")],
    );
    sl.address_type = IpFamily::Ipv4;
    let e = err(&state(vec![svc1()], vec![sl]));
    match e {
        CompileError::EndpointSlice { field, problem, .. } => {
            assert_eq!(field, "endpoints[1].addresses[0]");
            assert_eq!(
                problem,
                Problem::WrongFamily {
                    address: ip("fd00::1"),
                    expected: IpFamily::Ipv4
                }
            );
        }
        other => panic!("{other}"),
    }
}

#[test]
fn two_cluster_ips_of_one_family() {
    let mut svc = svc1();
    svc.cluster_ips.push(ip("172.30.0.42"));
    let e = err(&state(vec![svc], vec![]));
    assert_eq!(service_err(&e).2, "spec.clusterIPs");
}

#[test]
fn node_port_on_a_cluster_ip_service() {
    let svc = Service {
        ports: vec![ServicePort::tcp("p80", 80).with_node_port(30001)],
        ..svc1()
    };
    let e = err(&state(vec![svc], vec![]));
    assert!(matches!(
        service_err(&e).3,
        Problem::NodePortNotAllowed { .. }
    ));
}

#[test]
fn bad_config() {
    let s = state(vec![svc1()], vec![]);
    let e = compile(&s, &config().with_masquerade_bit(32)).unwrap_err();
    assert!(
        matches!(
            e,
            CompileError::Config {
                field: "masquerade_bit",
                ..
            }
        ),
        "{e}"
    );
    let e = compile(
        &s,
        &config().with_local_traffic(LocalTrafficDetector::InterfaceNamePrefix("veth\" x".into())),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            CompileError::Config {
                field: "local_traffic",
                ..
            }
        ),
        "{e}"
    );
    let two_v4 = LocalTrafficDetector::Cidrs(vec![
        "10.0.0.0/8".parse().unwrap(),
        "11.0.0.0/8".parse().unwrap(),
    ]);
    assert!(compile(&s, &config().with_local_traffic(two_v4)).is_err());
}

#[test]
fn lenient_mode_keeps_the_valid_services() {
    let good = service("ns1", "svc1", "172.30.0.41", &[("p80", 80)]);
    let bad = service("ns2", "svc2", "172.30.0.42", &[("p80", 0)]);
    let good_slice = slice("ns1", "svc1", &[("p80", 80)], vec![ready("10.180.0.1")]);
    let s = state(vec![good.clone(), bad], vec![good_slice.clone()]);
    assert!(
        compile(&s, &config()).is_err(),
        "strict mode refuses the whole state"
    );
    let lenient = compile_lenient(&s, &config()).unwrap();
    assert_eq!(lenient.rejected.len(), 1);
    assert_eq!(
        lenient.rejected[0].service().unwrap().to_string(),
        "ns2/svc2"
    );
    // The ruleset is exactly the one of the valid services alone.
    let only_good = state(vec![good], vec![good_slice]);
    assert_eq!(lenient.ruleset, compile(&only_good, &config()).unwrap());
}

#[test]
fn lenient_mode_ignores_bad_slice_parts_but_keeps_the_service() {
    let mut sl = slice(
        "ns1",
        "svc1",
        &[("p80", 80), ("gone", 81)],
        vec![ready("10.180.0.1"), ready("fd00::1")],
    );
    sl.address_type = IpFamily::Ipv4;
    let s = state(vec![svc1()], vec![sl]);
    assert!(
        compile(&s, &config()).is_err(),
        "strict mode refuses the slice"
    );
    let lenient = compile_lenient(&s, &config()).unwrap();
    assert!(lenient.rejected.is_empty());
    let warnings: Vec<String> = lenient.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("ports[1]: endpoint port \"gone\"/tcp matches no service port"));
    assert!(warnings[1].contains("endpoints[1].addresses[0]: fd00::1 is not an IPv4 address"));
    // The usable parts compile as if the bad ones were not there.
    let clean = one(svc1(), vec![ready("10.180.0.1")]);
    assert_eq!(lenient.ruleset, compile(&clean, &config()).unwrap());
}

#[test]
fn skipped_services_are_not_errors() {
    // Headless (no cluster IP) and other-family services get no rules.
    let mut headless = svc1();
    headless.cluster_ips.clear();
    let v6 = service("ns2", "svc2", "fd00::2", &[("p80", 80)]);
    let ruleset = compile(&state(vec![headless, v6], vec![]), &config()).unwrap();
    let empty = compile(&ClusterState::new(), &config()).unwrap();
    assert_eq!(ruleset, empty);
}

/// Each `FromStr` reads back what `Display` writes, and refuses anything else
/// with the text and what was expected.
#[test]
fn values_from_text() {
    use svcnat::ParseValueError;
    use svcnat::exec::Backend;
    use svcnat::ruleset::Table;

    fn round_trip<T>(values: &[T])
    where
        T: std::str::FromStr<Err = ParseValueError>
            + std::fmt::Display
            + PartialEq
            + std::fmt::Debug,
    {
        for v in values {
            assert_eq!(&v.to_string().parse::<T>().unwrap(), v);
        }
    }
    round_trip(&[Protocol::Tcp, Protocol::Udp, Protocol::Sctp]);
    round_trip(&[IpFamily::Ipv4, IpFamily::Ipv6]);
    round_trip(&[
        Table::Filter,
        Table::Nat,
        Table::Mangle,
        Table::Raw,
        Table::Security,
    ]);
    round_trip(&[
        Backend::Auto,
        Backend::Nft,
        Backend::Legacy,
        Backend::System,
    ]);
    round_trip(&[ServiceKey::new("ns1", "svc1")]);

    // Kubernetes' spellings too.
    assert_eq!("TCP".parse(), Ok(Protocol::Tcp));
    assert_eq!("UDP".parse(), Ok(Protocol::Udp));
    assert_eq!("ipv4".parse(), Ok(IpFamily::Ipv4));
    assert_eq!("ipv6".parse(), Ok(IpFamily::Ipv6));

    let refused = |e: ParseValueError| e.to_string();
    assert_eq!(
        refused("icmp".parse::<Protocol>().unwrap_err()),
        r#""icmp" is not a protocol (tcp, udp or sctp)"#
    );
    assert_eq!(
        refused("IPV4".parse::<IpFamily>().unwrap_err()),
        r#""IPV4" is not an IP family (ipv4 or ipv6)"#
    );
    assert_eq!(
        refused("Nat".parse::<Table>().unwrap_err()),
        r#""Nat" is not a table (filter, nat, mangle, raw or security)"#
    );
    assert_eq!(
        refused("".parse::<Backend>().unwrap_err()),
        r#""" is not a backend (auto, nft, legacy or system)"#
    );
    for bad in ["", "svc1", "/svc1", "ns1/", "/", "ns1/svc1/x", "ns1//svc1"] {
        let e = bad.parse::<ServiceKey>().unwrap_err();
        assert_eq!(e.value, bad);
        assert_eq!(e.expected, "a service key (namespace/name)");
    }
}

#[cfg(feature = "k8s")]
pub(crate) mod example_cli {
    pub(crate) use crate::fixtures::{example, run_example};

    fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
        run_example("compile", args, stdin)
    }

    #[test]
    fn default_run_prints_the_example_cluster() {
        let (code, stdout, stderr) = run(&[], "");
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.starts_with("*filter\n"));
        assert!(stdout.contains("\n*nat\n"));
        assert!(stdout.contains("shop/payments:http has no endpoints"));
    }

    #[test]
    fn bad_service_exits_2_with_one_line() {
        let list = r#"{"kind":"List","items":[{"apiVersion":"v1","kind":"Service",
            "metadata":{"namespace":"ns1","name":"svc1"},
            "spec":{"clusterIP":"172.30.0.41","ports":[{"name":"p80","port":70000}]}}]}"#;
        let (code, stdout, stderr) = run(&["-"], list);
        assert_eq!(code, 2);
        assert_eq!(stdout, "");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("service ns1/svc1: spec.ports[0].port: 70000 is not a port number"),
            "{stderr}"
        );
    }

    #[test]
    fn bad_flag_and_bad_json_exit_2() {
        let (code, stdout, _) = run(&["--iptables-masquerade-bit", "40"], "");
        assert_eq!((code, stdout.as_str()), (2, ""));
        let (code, stdout, stderr) = run(&["-"], "{not json");
        assert_eq!((code, stdout.as_str()), (2, ""));
        assert_eq!(stderr.lines().count(), 1);
        let (code, _, _) = run(&["--no-such-flag"], "");
        assert_eq!(code, 2);
    }

    #[test]
    fn invalid_object_names_field_in_compile_error() {
        let list = r#"{"kind":"List","items":[
            {"apiVersion":"v1","kind":"Service","metadata":{"namespace":"ns1","name":"svc1"},
             "spec":{"clusterIP":"172.30.0.41","ports":[{"name":"p80","port":80}]}},
            {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","addressType":"IPv4",
             "metadata":{"namespace":"ns1","name":"svc1-x","labels":{"kubernetes.io/service-name":"svc1"}},
             "ports":[{"name":"p81","port":80}],"endpoints":[{"addresses":["10.180.0.1"]}]}]}"#;
        let (code, stdout, stderr) = run(&["-"], list);
        assert_eq!((code, stdout.as_str()), (2, ""));
        assert!(
            stderr.contains("endpoint slice svc1-x of service ns1/svc1: ports[0]"),
            "{stderr}"
        );
    }

    #[test]
    fn parity_flags() {
        let (code, v6, e) = run(
            &[
                "--ip-family",
                "ipv6",
                "--cluster-cidr",
                "10.244.0.0/16",
                "--cluster-cidr",
                "fd00:244::/48",
            ],
            "",
        );
        assert_eq!(code, 0, "{e}");
        assert!(v6.contains("--to-destination [fd00:244::50]:8080"), "{v6}");
        assert!(v6.contains("! -s fd00:244::/48 -j KUBE-MARK-MASQ"));
        assert!(v6.contains("! -d ::1/128 -j KUBE-NODEPORTS"));
        assert!(!v6.contains("10.244."));

        let (code, out, _) = run(
            &[
                "--detect-local-mode",
                "InterfaceNamePrefix",
                "--pod-interface-name-prefix",
                "veth",
            ],
            "",
        );
        assert_eq!(code, 0);
        assert!(out.contains("! -i veth+ -j KUBE-MARK-MASQ"));
        let (code, out, _) = run(
            &[
                "--detect-local-mode=BridgeInterface",
                "--pod-bridge-interface=cbr0",
            ],
            "",
        );
        assert_eq!(code, 0);
        assert!(out.contains("! -i cbr0 -j KUBE-MARK-MASQ"));
        let (code, out, _) = run(
            &[
                "--cluster-cidr",
                "10.244.0.0/16",
                "--detect-local-mode",
                "None",
            ],
            "",
        );
        assert_eq!(code, 0);
        assert!(!out.contains("! -s 10.244.0.0/16"));
        let (code, out, err) = run(&["--detect-local-mode", "BridgeInterface"], "");
        assert_eq!((code, out.as_str()), (2, ""), "{err}");

        let (_, plain, _) = run(&[], "");
        assert!(plain.contains("-m conntrack --ctstate INVALID -j DROP"));
        let (code, out, _) = run(
            &[
                "--masquerade-random-fully",
                "--nfacct-counters",
                "--conntrack-tcp-be-liberal",
            ],
            "",
        );
        assert_eq!(code, 0);
        assert!(out.contains("-j MASQUERADE --random-fully"));
        assert!(out.contains("-m nfacct --nfacct-name localhost_nps_accepted_pkts"));
        assert!(!out.contains("--ctstate INVALID"));
        let (_, out, _) = run(
            &[
                "--iptables-localhost-nodeports",
                "false",
                "--iptables-masquerade-bit",
                "3",
            ],
            "",
        );
        assert!(
            out.contains("! -d 127.0.0.0/8 -j KUBE-NODEPORTS") && !out.contains("KUBE-FIREWALL")
        );
        assert!(out.contains("--or-mark 0x8"));
        let (_, out, _) = run(
            &[
                "--nodeport-addresses",
                "primary",
                "--node-ip",
                "192.168.0.10",
            ],
            "",
        );
        assert!(out.contains("-d 192.168.0.10 -j KUBE-NODEPORTS"), "{out}");
    }

    #[test]
    fn sync_example_dry_run_steps() {
        let cluster = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster.json");
        let dir = std::env::temp_dir().join(format!("svcnat-sync-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The second state drops every EndpointSlice of the first.
        let text = std::fs::read_to_string(cluster).unwrap();
        let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        doc["items"]
            .as_array_mut()
            .unwrap()
            .retain(|i| i["kind"] != "EndpointSlice");
        let second = dir.join("second.json");
        std::fs::write(&second, doc.to_string()).unwrap();
        let second = second.to_str().unwrap();
        let (code, out, err) = run_example(
            "sync",
            &["--cluster-cidr", "10.244.0.0/16", cluster, second, cluster],
            "",
        );
        assert_eq!(code, 0, "{err}");
        let steps: Vec<&str> = out.lines().filter(|l| l.starts_with("step ")).collect();
        assert_eq!(steps.len(), 3, "{out}");
        let shape = |l: &str| {
            let rest = l.split_once(": ").unwrap().1;
            let parts: Vec<&str> = rest.split(", ").collect();
            assert_eq!(parts.len(), 4, "{l}");
            assert!(
                parts[1].ends_with(" bytes")
                    && parts[2].ends_with(" chains written")
                    && parts[3].ends_with(" chains deleted"),
                "{l}"
            );
            parts[0].to_owned()
        };
        assert_eq!(shape(steps[0]), "full");
        assert_eq!(shape(steps[1]), "partial");
        assert!(!steps[1].ends_with(" 0 chains deleted"), "{}", steps[1]);
        // The dry run prints each payload after its step line.
        assert!(out.contains("\n*nat\n"));
        assert!(out.contains("-X KUBE-SEP-"));
        // Bad input: exit 2, one line, nothing on stdout.
        let (code, out, err) = run_example("sync", &[cluster, "/no/such/file.json"], "");
        assert_eq!((code, out.as_str()), (2, ""));
        assert_eq!(err.lines().count(), 1);
        let (code, _, _) = run_example("sync", &["--backend", "iptables"], "");
        assert_eq!(code, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn trace_example_contract() {
        let cluster = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster.json");
        let base = [
            "--node-ip",
            "192.168.0.10",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--cluster",
            cluster,
        ];
        // A NodePort from outside: both ready endpoints, half each, masqueraded.
        let mut args = base.to_vec();
        args.extend([
            "--src",
            "203.0.113.7",
            "--dst",
            "192.168.0.10",
            "--proto",
            "tcp",
            "--dport",
            "30080",
            "--json",
        ]);
        let (code, out, err) = run_example("trace", &args, "");
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.lines().count(), 1, "one JSON object: {out}");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        let keys: Vec<&str> = doc
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 2);
        assert!(out.starts_with("{\"outcomes\":[{\"probability\":"), "{out}");
        let outcomes = doc["outcomes"].as_array().unwrap();
        let total: f64 = outcomes
            .iter()
            .map(|o| o["probability"].as_f64().unwrap())
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let mut dests: Vec<&str> = outcomes
            .iter()
            .map(|o| o["destination"].as_str().unwrap())
            .collect();
        dests.sort();
        assert_eq!(dests, ["10.244.0.12:8080", "10.244.1.13:8080"]);
        for o in outcomes {
            assert_eq!(o["verdict"], "accept");
            assert_eq!(o["masquerade"], true);
            assert!(
                o["path"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p.as_str().unwrap().contains(':'))
            );
        }
        assert!(doc["unevaluated"].as_array().unwrap().is_empty());
        // The service without endpoints is rejected, shown as a table without --json.
        let mut args = base.to_vec();
        args.extend([
            "--src",
            "10.244.1.5",
            "--dst",
            "10.96.7.40",
            "--proto",
            "tcp",
            "--dport",
            "8080",
            "--from",
            "local",
        ]);
        let (code, out, _) = run_example("trace", &args, "");
        assert_eq!(code, 0);
        assert!(out.lines().next().unwrap().contains("probability"), "{out}");
        assert!(out.contains("reject"), "{out}");
        // Bad input: exit 2, one line.
        let mut args = base.to_vec();
        args.extend([
            "--src",
            "10.244.1.5",
            "--dst",
            "nope",
            "--proto",
            "tcp",
            "--dport",
            "80",
        ]);
        let (code, out, err) = run_example("trace", &args, "");
        assert_eq!(
            (code, out.as_str(), err.lines().count()),
            (2, "", 1),
            "{err}"
        );
        let (code, _, _) = run_example("trace", &["--src", "1.2.3.4"], "");
        assert_eq!(code, 2);
    }
}

/// Every stage's errors read alike: lower-case, `subject: problem`, no period.
#[test]
fn messages_of_the_other_stages() {
    use svcnat::exec::{ExecError, Executor, Recorder};
    use svcnat::ruleset::Probability;

    assert_eq!(
        Probability::one_in(0).unwrap_err().to_string(),
        "invalid probability 1/0: not between 0 and 1"
    );
    assert_eq!(
        Probability::new(1.5).unwrap_err().to_string(),
        "invalid probability 1.5: not between 0 and 1"
    );
    // An executor without conntrack support says which call it does not support.
    struct NoConntrack(Recorder);
    impl Executor for NoConntrack {
        fn restore(
            &mut self,
            family: IpFamily,
            payload: &str,
            options: svcnat::exec::RestoreOptions,
        ) -> Result<(), ExecError> {
            self.0.restore(family, payload, options)
        }
        fn save(
            &mut self,
            family: IpFamily,
            table: svcnat::ruleset::Table,
        ) -> Result<String, ExecError> {
            self.0.save(family, table)
        }
        fn ensure_jump(
            &mut self,
            family: IpFamily,
            jump: &svcnat::compile::JumpRule,
        ) -> Result<(), ExecError> {
            self.0.ensure_jump(family, jump)
        }
    }
    let e = NoConntrack(Recorder::new())
        .clear_conntrack(IpFamily::Ipv4, &[])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "clear_conntrack: not supported by this executor"
    );
}
