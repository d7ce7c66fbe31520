//! What a new TCP connection costs on the data plane, through each proxy mode:
//! the time from `connect()` to an established connection, from a client network
//! namespace through a node namespace holding svcnat's rules to a server in a pod
//! namespace, for clusters of several sizes. Prints one JSON object on stdout, and
//! one progress line per step on stderr.
//!
//! ```text
//! sudo cargo run --release --features synthetic --example dataplane_cost -- \
//!     [--modes iptables-nft,iptables-legacy,nftables (all three)] \
//!     [--services 1000,10000,30000 (those three)] [--endpoints E (10)] \
//!     [--connections N (300)] [--svg FILE]
//! ```
//!
//! Needs root, `ip` (iproute2), `sysctl`, `taskset`, and each chosen mode's tools
//! (`iptables-nft*`, `iptables-legacy*`, `nft`); without them it prints one line on
//! stderr and exits 1 (this is a measurement: it never skips). Bad flags: one line
//! on stderr, exit 2. A mode that cannot load its rules, a connection that fails, a
//! rule order other than the one picked: one line on stderr, exit 1.
//!
//! Per size, the cluster is [`svcnat::synthetic`]'s (`--services` ClusterIP
//! services with `--endpoints` made-up endpoints each, node `node-0`, IPv4). The
//! iptables ruleset [`svcnat::compile::compile`] writes for it is read to find the
//! service whose jump comes first in nat `KUBE-SERVICES` and the one whose jump
//! comes last: the first and the last service a new connection is matched against.
//! Those two services get one endpoint each, the real server (`10.200.0.2:8080`);
//! the others keep their made-up endpoints, which no connection reaches. The same
//! two services are measured in every mode (in nftables mode a service is found by
//! a map lookup, wherever it is).
//!
//! Per mode and size (a point), three new namespaces
//! (`svcnat-dp-<pid>-<mode>-<size>-cli`, `-node`, `-pod`), joined by veth pairs:
//! client `192.168.50.2` -- node (`192.168.50.1`, `10.200.0.1`, forwarding on) --
//! pod `10.200.0.2`. They are deleted at the end, also on an error or a panic. The
//! node's rules are loaded through the library, with every command behind `ip netns
//! exec NODE`:
//!
//! - `iptables-nft`, `iptables-legacy`: a [`Syncer`] over [`IptablesRestore`] with
//!   that backend, one full sync; then the applied ruleset's `KUBE-SERVICES` must
//!   still have the two picked services first and last;
//! - `nftables`: an [`NftSyncer`] over [`NftCommand`] ([`svcnat::compile::nftables`]'s
//!   ruleset), one full sync.
//!
//! Every point is loaded first; then they are measured in 5 rounds, each round
//! visiting every point in turn with a fifth of the `--connections`, so that load
//! on the machine that comes and goes falls on all points alike rather than on
//! the one measured at the time. In a round, the example runs itself inside the
//! point's client namespace (`ip netns exec CLI dataplane_cost --connect FIRST
//! --connect LAST --count N`, a sub-mode for this use only), which connects to the
//! two ClusterIPs in turn, `N` times each after 10 warm-ups each, and prints one
//! line per connection: the target, the nanoseconds `connect()` took until the
//! connection was established, and the source port. Each connection is closed
//! before the next one (the close is not timed) and has its own source port, so
//! each is a new conntrack entry in the node, whose first packet walks the NAT
//! rules; a source port seen twice for one target in a point fails the run. The
//! server is the example too (`--serve ADDR:PORT`, run in the pod namespace), which
//! accepts and closes. The client and the server run on one CPU (`taskset -c`, the
//! first this process may use; `cpu` in the JSON): left to the scheduler, a
//! point's base time was about 28 or about 42 µs on a 2-vCPU VM, by where its
//! processes were placed, and stayed so for all its rounds: it measured placement,
//! not rules. Pinned, every point's base was the same (39 to 50 µs over runs).
//!
//! The JSON: `date` (UTC, when the measurement started), `machine` (as
//! `kernel_cost`'s), `load_average` (`/proc/loadavg` at the start), `cpu`, the flags, and
//! per mode (`iptables-nft`, `iptables-legacy`, `nftables`) per size (the number of
//! services, as a string) an object with `load_s` (the sync's wall time) and per
//! position (`first`, `last`) `service` (`NAMESPACE/NAME:PORT`, from the comment of
//! its `KUBE-SERVICES` rule), `address`, `median_us`, `p90_us` and `samples` (the
//! warm-ups left out).
//!
//! `--svg FILE` also writes a plot of the medians: x the number of services (log
//! scale), y the median connect time, one line per mode and position (dashed:
//! `first`, solid: `last`).
//!
//! Caveats: the times include two veth hops each way and the client's own
//! `connect()`, about 30-45 µs on a busy 2-vCPU VM; only the first packet of a
//! connection walks the NAT rules. All points stay loaded until the end (at 30,000
//! services, three full tables at once). A process killed by a signal cannot
//! delete its namespaces: remove leftovers with `ip netns del svcnat-dp-<pid>-…`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use svcnat::exec::{Backend, IptablesRestore, NftCommand};
use svcnat::model::{ClusterState, Endpoint, ServiceKey};
use svcnat::ruleset::{Ruleset, Table};
use svcnat::sync::{NftSyncer, Syncer};
use svcnat::synthetic::{self, Spec};

#[path = "common/flags.rs"]
mod flags;
use flags::{CommandLine, number};
#[path = "common/measure.rs"]
mod measure;
use measure::{Netns, date, machine, one_line};

const PROGRAM: &str = "dataplane_cost";
const USAGE: &str = "usage: dataplane_cost [--modes iptables-nft,iptables-legacy,nftables] [--services 1000,10000,30000] [--endpoints E] [--connections N] [--svg FILE]";

/// Connections per target made before the measured ones, and left out.
const WARMUPS: usize = 10;
/// Every point is measured in this many rounds, each round visiting every point.
const ROUNDS: usize = 5;
/// How long one `connect()` may take before the run fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
const NODE_TO_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
/// The real server; in the cluster CIDR, above every made-up endpoint (see
/// [`Args::parse`]).
const POD: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const NODE_TO_POD: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// The made-up endpoints are `10.0.0.0 + n`: they stay below [`POD`] while
/// services x endpoints is under this.
const MADE_UP_ENDPOINTS: usize = 0x00c8_0000;

fn main() {
    let run = Run::parse(CommandLine::from_env()).unwrap_or_else(|e| {
        eprintln!("{PROGRAM}: {e}; {USAGE}");
        std::process::exit(2)
    });
    let result = match run {
        Run::Connect { targets, count } => connect(&targets, count).map(|()| None),
        Run::Serve(addr) => serve(addr).map(|()| None),
        Run::Measure(args) => {
            if let Some(why) = missing_capability(&args.modes) {
                eprintln!("{PROGRAM}: cannot measure: {why}");
                std::process::exit(1);
            }
            // Every namespace guard is dropped inside `measure`, before any exit.
            measure(&args).map(Some)
        }
    };
    match result {
        Ok(Some(report)) => println!("{report}"),
        Ok(None) => {}
        Err(e) => {
            eprintln!("{PROGRAM}: {}", one_line(&e));
            std::process::exit(1);
        }
    }
}

/// What this process does: measure, or one of the two sub-modes it runs itself in.
#[derive(Debug)]
enum Run {
    Measure(Args),
    /// `--connect ADDR:PORT [--connect …] --count N`, in the client namespace.
    Connect {
        targets: Vec<SocketAddr>,
        count: usize,
    },
    /// `--serve ADDR:PORT`, in the pod namespace.
    Serve(SocketAddr),
}

#[derive(Debug)]
struct Args {
    modes: Vec<Mode>,
    services: Vec<usize>,
    endpoints: usize,
    connections: usize,
    /// `--svg FILE`, created before the measurement starts.
    svg: Option<(String, std::fs::File)>,
}

impl Run {
    fn parse(mut line: CommandLine) -> Result<Run, String> {
        let mut modes = Mode::ALL.to_vec();
        let mut services = vec![1_000, 10_000, 30_000];
        let mut endpoints = 10;
        let mut connections = 300;
        let mut svg = None;
        let mut targets = Vec::new();
        let mut count = None;
        let mut serve_at = None;
        let mut measuring = false;
        while let Some(flag) = line.next_flag(USAGE)? {
            let count_of = |flag: &str, v: &str, max: usize| {
                let n = number(flag, v)? as usize;
                if n == 0 || n > max {
                    return Err(format!("{flag}: {v:?} is not 1 to {max}"));
                }
                Ok(n)
            };
            let address = |flag: &str, v: &str| {
                v.parse::<SocketAddr>()
                    .map_err(|_| format!("{flag}: {v:?} is not ADDR:PORT"))
            };
            measuring |= !matches!(flag.as_str(), "--connect" | "--count" | "--serve");
            match flag.as_str() {
                "--modes" => {
                    modes = Vec::new();
                    for key in line.value(&flag)?.split(',') {
                        let mode = Mode::ALL
                            .into_iter()
                            .find(|m| m.key() == key)
                            .ok_or_else(|| format!("--modes: unknown mode {key:?}"))?;
                        if !modes.contains(&mode) {
                            modes.push(mode);
                        }
                    }
                }
                "--services" => {
                    let v = line.value(&flag)?;
                    services = v
                        .split(',')
                        .map(|s| count_of(&flag, s, 1_000_000))
                        .collect::<Result<_, _>>()?;
                    services.sort_unstable();
                    services.dedup();
                }
                "--endpoints" => endpoints = count_of(&flag, &line.value(&flag)?, 1_000)?,
                "--connections" => connections = count_of(&flag, &line.value(&flag)?, 100_000)?,
                "--svg" => svg = Some(line.value(&flag)?),
                "--connect" => targets.push(address(&flag, &line.value(&flag)?)?),
                "--count" => count = Some(count_of(&flag, &line.value(&flag)?, 1_000_000)?),
                "--serve" => serve_at = Some(address(&flag, &line.value(&flag)?)?),
                _ => return Err(format!("unexpected argument {:?}", line.typed(&flag))),
            }
        }
        match (targets.is_empty(), count, serve_at) {
            (true, None, None) => {}
            (false, Some(count), None) if !measuring => {
                return Ok(Run::Connect { targets, count });
            }
            (true, None, Some(addr)) if !measuring => return Ok(Run::Serve(addr)),
            _ => {
                return Err(
                    "--connect ADDR:PORT --count N and --serve ADDR:PORT are sub-modes of their own".into(),
                );
            }
        }
        if let Some(&most) = services.last()
            && most * endpoints >= MADE_UP_ENDPOINTS
        {
            return Err(format!(
                "{most} services x {endpoints} endpoints would reach the server's address {POD}"
            ));
        }
        let svg = match svg {
            None => None,
            Some(path) => {
                let file =
                    std::fs::File::create(&path).map_err(|e| format!("--svg: {path}: {e}"))?;
                Some((path, file))
            }
        };
        Ok(Run::Measure(Args {
            modes,
            services,
            endpoints,
            connections,
            svg,
        }))
    }
}

/// A proxy mode, as the JSON names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    IptablesNft,
    IptablesLegacy,
    Nftables,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::IptablesNft, Mode::IptablesLegacy, Mode::Nftables];

    fn key(self) -> &'static str {
        match self {
            Mode::IptablesNft => "iptables-nft",
            Mode::IptablesLegacy => "iptables-legacy",
            Mode::Nftables => "nftables",
        }
    }

    /// In namespace names, which `ip` shows in full.
    fn short(self) -> &'static str {
        match self {
            Mode::IptablesNft => "ipt-nft",
            Mode::IptablesLegacy => "ipt-legacy",
            Mode::Nftables => "nft",
        }
    }

    /// The binaries its executor runs.
    fn binaries(self) -> &'static [&'static str] {
        match self {
            Mode::IptablesNft => &["iptables-nft", "iptables-nft-save", "iptables-nft-restore"],
            Mode::IptablesLegacy => &[
                "iptables-legacy",
                "iptables-legacy-save",
                "iptables-legacy-restore",
            ],
            Mode::Nftables => &["nft"],
        }
    }

    /// The plot's colour for its lines.
    fn colour(self) -> &'static str {
        match self {
            Mode::IptablesNft => "#d62728",
            Mode::IptablesLegacy => "#ff7f0e",
            Mode::Nftables => "#1f77b4",
        }
    }
}

/// Why this machine cannot run the measurement, if it cannot.
fn missing_capability(modes: &[Mode]) -> Option<String> {
    if !measure::is_root() {
        return Some("not running as root (network namespaces and rules need it)".into());
    }
    let binaries = ["ip", "sysctl", "taskset"]
        .into_iter()
        .chain(modes.iter().flat_map(|m| m.binaries().iter().copied()));
    measure::missing_binary(binaries).map(|bin| {
        format!("{bin} not found in PATH (apt-get install iproute2 procps iptables nftables)")
    })
}

/// The `--connect` sub-mode: `count` connections to each target, in turn, after
/// [`WARMUPS`] each; one line per connection on stdout: `TARGET NANOS PORT`.
fn connect(targets: &[SocketAddr], count: usize) -> Result<(), String> {
    let mut out = String::new();
    for i in 0..WARMUPS + count {
        for (t, addr) in targets.iter().enumerate() {
            let t0 = Instant::now();
            let stream = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)
                .map_err(|e| format!("connection {} to {addr}: {e}", i + 1))?;
            let took = t0.elapsed();
            let port = stream.local_addr().map_err(|e| e.to_string())?.port();
            drop(stream);
            let _ = writeln!(out, "{t} {} {port}", took.as_nanos());
        }
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| format!("stdout: {e}"))
}

/// The `--serve` sub-mode: accepts and closes connections until killed; says
/// `listening` on stdout once it does.
fn serve(addr: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("listening");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    for stream in listener.incoming() {
        drop(stream);
    }
    Ok(())
}

/// One of the two services measured: where its rule is in `KUBE-SERVICES`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    /// `NAMESPACE/NAME:PORT`, from its rule's comment.
    port: String,
    service: ServiceKey,
    address: SocketAddr,
}

/// The services whose ClusterIP jumps come first and last in nat `KUBE-SERVICES`.
fn first_and_last(ruleset: &Ruleset) -> Result<(Probe, Probe), String> {
    let chain = ruleset
        .table(Table::Nat)
        .and_then(|t| {
            t.chains
                .values()
                .find(|c| c.name.as_str() == "KUBE-SERVICES")
        })
        .ok_or("the compiled ruleset has no nat KUBE-SERVICES")?;
    let mut jumps = chain.rules.iter().filter_map(|rule| {
        let mut text = String::new();
        svcnat::render::write_rule(&chain.name, rule, &mut text).ok()?;
        text.contains(" -j KUBE-SVC-").then_some(text)
    });
    let first = jumps.next().ok_or("KUBE-SERVICES jumps to no service")?;
    let last = jumps
        .next_back()
        .ok_or("KUBE-SERVICES jumps to one service only")?;
    let read =
        |line: String| probe(&line).ok_or_else(|| format!("cannot read the service of {line:?}"));
    Ok((read(first)?, read(last)?))
}

/// The probe of one `-A KUBE-SERVICES … --comment "…" … -d IP --dport P -j KUBE-SVC-…` line.
fn probe(line: &str) -> Option<Probe> {
    let mut words = line.split_whitespace();
    let mut ip = None;
    let mut port = None;
    while let Some(word) = words.next() {
        match word {
            "-d" => {
                let d = words.next()?;
                ip = d.strip_suffix("/32").unwrap_or(d).parse::<Ipv4Addr>().ok();
            }
            "--dport" => port = words.next()?.parse::<u16>().ok(),
            _ => {}
        }
    }
    let comment = line.split_once("--comment \"")?.1.split_once('"')?.0;
    let service_port = comment.split(' ').next()?;
    let (namespace, rest) = service_port.split_once('/')?;
    let (name, _) = rest.split_once(':')?;
    Some(Probe {
        port: service_port.to_owned(),
        service: ServiceKey::new(namespace, name),
        address: SocketAddr::V4(SocketAddrV4::new(ip?, port?)),
    })
}

/// The cluster of `services` x `endpoints`, with the services matched first and
/// last given the real server as their one endpoint; and those two.
fn cluster(services: usize, endpoints: usize) -> Result<(ClusterState, [Probe; 2]), String> {
    let mut state = Spec::new(services, endpoints).build();
    let ruleset =
        svcnat::compile::compile(&state, &synthetic::config()).map_err(|e| e.to_string())?;
    let (first, last) = first_and_last(&ruleset)?;
    for probe in [&first, &last] {
        let slices: Vec<_> = state.slices_of(&probe.service).cloned().collect();
        let mut slice = slices
            .first()
            .cloned()
            .ok_or_else(|| format!("{} has no endpoint slice", probe.port))?;
        for other in &slices[1..] {
            state.remove_slice(&probe.service, &other.name);
        }
        slice.endpoints = vec![Endpoint::ready(POD.into())];
        if slice.ports.iter().any(|p| p.port != SERVER_PORT) {
            return Err(format!(
                "{}: an endpoint port other than {SERVER_PORT}",
                probe.port
            ));
        }
        state.upsert_slice(slice);
    }
    Ok((state, [first, last]))
}

/// The port of the synthetic endpoints, where the server listens.
const SERVER_PORT: u16 = 8080;

/// One mode at one size: its namespaces, what it connects to, what it measured.
struct Point {
    mode: Mode,
    services: usize,
    lab: Lab,
    probes: [Probe; 2],
    load_s: f64,
    /// Per probe, the connect times so far (nanoseconds).
    times: [Vec<u64>; 2],
    /// Per probe, every source port used so far.
    ports: [HashSet<u16>; 2],
}

/// The three namespaces of one measurement and the server, removed on drop.
struct Lab {
    server: Child,
    /// The CPU the server and the client run on (`taskset -c`).
    cpu: String,
    client: Netns,
    node: Netns,
    // Kept for its Drop, after the server's.
    _pod: Netns,
}

impl Lab {
    fn new(tag: &str, cpu: &str) -> Result<Lab, String> {
        let ns = |role: &str| Netns::new(PROGRAM, "dp", &format!("{tag}-{role}"));
        let (client, node, pod) = (ns("cli")?, ns("node")?, ns("pod")?);
        let (c, n, p) = (&client.name, &node.name, &pod.name);
        let cidr = |a: Ipv4Addr| format!("{a}/24");
        let steps: [&[&str]; 15] = [
            &[
                "link", "add", "vcli", "netns", n, "type", "veth", "peer", "name", "eth0", "netns",
                c,
            ],
            &[
                "link", "add", "vpod", "netns", n, "type", "veth", "peer", "name", "eth0", "netns",
                p,
            ],
            &["-n", n, "addr", "add", &cidr(NODE_TO_CLIENT), "dev", "vcli"],
            &["-n", n, "addr", "add", &cidr(NODE_TO_POD), "dev", "vpod"],
            &["-n", c, "addr", "add", &cidr(CLIENT), "dev", "eth0"],
            &["-n", p, "addr", "add", &cidr(POD), "dev", "eth0"],
            &["-n", n, "link", "set", "lo", "up"],
            &["-n", n, "link", "set", "vcli", "up"],
            &["-n", n, "link", "set", "vpod", "up"],
            &["-n", c, "link", "set", "lo", "up"],
            &["-n", c, "link", "set", "eth0", "up"],
            &["-n", p, "link", "set", "lo", "up"],
            &["-n", p, "link", "set", "eth0", "up"],
            &[
                "-n",
                c,
                "route",
                "add",
                "default",
                "via",
                &NODE_TO_CLIENT.to_string(),
            ],
            &[
                "-n",
                p,
                "route",
                "add",
                "default",
                "via",
                &NODE_TO_POD.to_string(),
            ],
        ];
        for args in steps {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
            if !out.status.success() {
                return Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        for sysctl in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            node.run(&["sysctl", "-q", "-w", sysctl])?;
        }
        let server = spawn_server(&pod, cpu)?;
        Ok(Lab {
            server,
            cpu: cpu.to_owned(),
            client,
            node,
            _pod: pod,
        })
    }

    /// `connections` new connections to each target in turn, from the client
    /// namespace, after the warm-ups: their connect times are added to `times`, per
    /// target, and every source port (warm-ups too) to `ports`, where it must be new.
    fn connect(
        &self,
        targets: &[SocketAddr],
        connections: usize,
        times: &mut [Vec<u64>],
        ports: &mut [HashSet<u16>],
    ) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
        let exe = exe.to_string_lossy();
        let mut args = vec!["taskset", "-c", &self.cpu, exe.as_ref()];
        let addrs: Vec<String> = targets.iter().map(SocketAddr::to_string).collect();
        for a in &addrs {
            args.extend(["--connect", a]);
        }
        let count = connections.to_string();
        args.extend(["--count", &count]);
        let out = self.client.run(&args)?;
        let mut made = vec![0; targets.len()];
        for line in out.lines() {
            let parsed = (|| {
                let mut w = line.split_whitespace();
                let t: usize = w.next()?.parse().ok()?;
                let ns: u64 = w.next()?.parse().ok()?;
                let port: u16 = w.next()?.parse().ok()?;
                Some((t, ns, port))
            })();
            let (t, ns, port) = parsed
                .filter(|(t, _, _)| *t < targets.len())
                .ok_or_else(|| format!("the client printed {line:?}"))?;
            if !ports[t].insert(port) {
                return Err(format!(
                    "source port {port} used twice for {}: not a new conntrack entry each time",
                    targets[t]
                ));
            }
            made[t] += 1;
            if made[t] > WARMUPS {
                times[t].push(ns);
            }
        }
        if let Some(t) = made.iter().position(|&n| n != WARMUPS + connections) {
            return Err(format!(
                "the client made {} connections to {}, not {}",
                made[t],
                targets[t],
                WARMUPS + connections
            ));
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// The example in `--serve` mode in `pod` on `cpu`, once it listens.
fn spawn_server(pod: &Netns, cpu: &str) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
    let addr = SocketAddr::V4(SocketAddrV4::new(POD, SERVER_PORT)).to_string();
    let [ip, prefix @ ..] = pod.prefix();
    let mut child = Command::new(ip)
        .args(prefix)
        .args(["taskset", "-c", cpu])
        .arg(exe)
        .args(["--serve", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("the server in {}: {e}", pod.name))?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or("the server's stdout")?;
    let read = BufReader::new(stdout).read_line(&mut line);
    if read.is_err() || line.trim() != "listening" {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("the server in {} did not start", pod.name));
    }
    Ok(child)
}

/// Loads the cluster's rules into the node namespace through the library, in
/// `mode`; for iptables, checks that the picked services are still first and last.
fn load(mode: Mode, node: &Netns, state: &ClusterState, probes: &[Probe; 2]) -> Result<(), String> {
    let config = synthetic::config();
    let backend = match mode {
        Mode::IptablesNft => Backend::Nft,
        Mode::IptablesLegacy => Backend::Legacy,
        Mode::Nftables => {
            let nft = NftCommand::new().with_command_prefix(node.prefix());
            let mut syncer = NftSyncer::new(nft, config).map_err(|e| e.to_string())?;
            syncer.replace_state(state.clone());
            syncer.sync().map_err(|e| e.to_string())?;
            return Ok(());
        }
    };
    let exec = IptablesRestore::new(backend).with_command_prefix(node.prefix());
    let mut syncer = Syncer::new(exec, config).map_err(|e| e.to_string())?;
    syncer.replace_state(state.clone());
    syncer.sync().map_err(|e| e.to_string())?;
    let applied = syncer
        .applied_ruleset()
        .ok_or("no applied ruleset after a successful sync")?;
    let (first, last) = first_and_last(&applied)?;
    if [&first, &last] != [&probes[0], &probes[1]] {
        return Err(format!(
            "the loaded KUBE-SERVICES has {} first and {} last, not the services picked",
            first.port, last.port
        ));
    }
    Ok(())
}

/// The first CPU this process may run on (`Cpus_allowed_list`), where the
/// client and the server are pinned; `0` if that cannot be read.
fn first_cpu() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let list = s
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
            let first = list.trim().split([',', '-']).next()?;
            first.parse::<u32>().ok().map(|n| n.to_string())
        })
        .unwrap_or_else(|| "0".to_owned())
}

/// `median_us`, `p90_us` and `samples` of connect times in nanoseconds.
fn stats(mut ns: Vec<u64>) -> Value {
    ns.sort_unstable();
    let us = |i: usize| (ns[i] as f64 / 100.0).round() / 10.0;
    // The nearest rank: the smallest time at least 90% of the samples do not exceed.
    let p90 = (ns.len() * 9).div_ceil(10) - 1;
    json!({
        "median_us": us(ns.len() / 2),
        "p90_us": us(p90),
        "samples": ns.len(),
    })
}

fn measure(args: &Args) -> Result<Value, String> {
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let mut report = json!({
        "date": date(),
        "machine": machine(),
        "load_average": load_average,
        "services": args.services,
        "endpoints": args.endpoints,
        "connections": args.connections,
        "warmups": WARMUPS,
        "rounds": ROUNDS,
        "modes": args.modes.iter().map(|m| m.key()).collect::<Vec<_>>(),
    });
    let cpu = first_cpu();
    report["cpu"] = json!(cpu);
    // Every point is loaded first, then measured in rounds.
    let mut points = Vec::new();
    for &services in &args.services {
        let (state, probes) = cluster(services, args.endpoints)?;
        eprintln!(
            "{PROGRAM}: {services} services: first {} ({}), last {} ({})",
            probes[0].port, probes[0].address, probes[1].port, probes[1].address
        );
        for &mode in &args.modes {
            let lab = Lab::new(&format!("{}-{services}", mode.short()), &cpu)?;
            let t0 = Instant::now();
            load(mode, &lab.node, &state, &probes)
                .map_err(|e| format!("{} at {services} services: {e}", mode.key()))?;
            let load_s = t0.elapsed().as_secs_f64();
            eprintln!(
                "{PROGRAM}: {} at {services} services: loaded in {load_s:.1} s",
                mode.key()
            );
            points.push(Point {
                mode,
                services,
                lab,
                probes: probes.clone(),
                load_s,
                times: [Vec::new(), Vec::new()],
                ports: [HashSet::new(), HashSet::new()],
            });
        }
    }
    for round in 0..ROUNDS {
        // The connections spread over the rounds, the first rounds taking the rest.
        let n = args.connections / ROUNDS + usize::from(round < args.connections % ROUNDS);
        if n == 0 {
            continue;
        }
        for p in &mut points {
            let targets = [p.probes[0].address, p.probes[1].address];
            p.lab
                .connect(&targets, n, &mut p.times, &mut p.ports)
                .map_err(|e| format!("{} at {} services: {e}", p.mode.key(), p.services))?;
        }
        eprintln!("{PROGRAM}: round {}/{ROUNDS} measured", round + 1);
    }
    for p in points {
        let mut point = json!({ "load_s": (p.load_s * 1000.0).round() / 1000.0 });
        for ((position, probe), ns) in ["first", "last"].into_iter().zip(&p.probes).zip(p.times) {
            let mut s = stats(ns);
            s["service"] = json!(probe.port);
            s["address"] = json!(probe.address.to_string());
            point[position] = s;
        }
        eprintln!(
            "{PROGRAM}: {} at {} services: median first {} us, last {} us",
            p.mode.key(),
            p.services,
            point["first"]["median_us"],
            point["last"]["median_us"]
        );
        report[p.mode.key()][p.services.to_string()] = point;
        // The point's namespaces are deleted here.
    }
    if let Some((path, file)) = &args.svg {
        let mut file = file;
        file.write_all(plot(args, &report).as_bytes())
            .map_err(|e| format!("--svg: {path}: {e}"))?;
    }
    Ok(report)
}

/// The SVG plot of the medians: one line per mode and position.
fn plot(args: &Args, report: &Value) -> String {
    const W: f64 = 640.0;
    const H: f64 = 400.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 180.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 50.0;
    let median = |mode: Mode, s: usize, position: &str| {
        report[mode.key()][s.to_string()][position]["median_us"].as_f64()
    };
    let highest = args
        .modes
        .iter()
        .flat_map(|&m| {
            args.services
                .iter()
                .flat_map(move |&s| [(m, s, "first"), (m, s, "last")])
        })
        .filter_map(|(m, s, p)| median(m, s, p))
        .fold(0.0f64, f64::max);
    let (y_top, y_step) = y_axis(highest);
    let (lo, hi) = (
        (*args.services.first().unwrap_or(&1) as f64).log10(),
        (*args.services.last().unwrap_or(&1) as f64).log10(),
    );
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    // The points stay off the axes by a twentieth of the width on each side.
    let x = |s: usize| {
        if hi > lo {
            LEFT + plot_w * (0.05 + 0.9 * ((s as f64).log10() - lo) / (hi - lo))
        } else {
            LEFT + plot_w / 2.0
        }
    };
    let y = |us: f64| TOP + plot_h - us / y_top * plot_h;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(svg, r##"<rect width="{W}" height="{H}" fill="white"/>"##);
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="22" text-anchor="middle" font-size="14">New TCP connection through each mode: median connect time</text>"##,
        W / 2.0
    );
    // Axes, the y grid and the ticks.
    let _ = writeln!(
        svg,
        r##"<path d="M{LEFT},{TOP} V{} H{}" fill="none" stroke="black"/>"##,
        TOP + plot_h,
        LEFT + plot_w
    );
    let steps = (y_top / y_step).round() as u32;
    for i in 0..=steps {
        let v = y_step * f64::from(i);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{v}</text>"##,
            y(v),
            LEFT + plot_w,
            LEFT - 6.0,
            y(v) + 4.0
        );
    }
    for &s in &args.services {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{}" text-anchor="middle">{s}</text>"##,
            x(s),
            TOP + plot_h + 18.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{}" text-anchor="middle">services (log scale)</text>"##,
        LEFT + plot_w / 2.0,
        H - 10.0
    );
    let _ = writeln!(
        svg,
        r##"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">median connect time (µs)</text>"##,
        TOP + plot_h / 2.0
    );
    // One line per mode and position, and its legend entry.
    let mut row = 0.0;
    for &mode in &args.modes {
        for position in ["first", "last"] {
            let dash = if position == "first" {
                r#" stroke-dasharray="6,4""#
            } else {
                ""
            };
            let points: Vec<String> = args
                .services
                .iter()
                .filter_map(|&s| {
                    median(mode, s, position).map(|us| format!("{:.1},{:.1}", x(s), y(us)))
                })
                .collect();
            let colour = mode.colour();
            let _ = writeln!(
                svg,
                r##"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"##,
                points.join(" ")
            );
            for p in &points {
                let (px, py) = p.split_once(',').unwrap_or_default();
                let _ = writeln!(
                    svg,
                    r##"<circle cx="{px}" cy="{py}" r="3" fill="{colour}"/>"##
                );
            }
            let ly = TOP + 10.0 + row * 20.0;
            let lx = LEFT + plot_w + 15.0;
            let _ = writeln!(
                svg,
                r##"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}">{} {position}</text>"##,
                lx + 25.0,
                lx + 31.0,
                ly + 4.0,
                mode.key()
            );
            row += 1.0;
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// The y axis for values up to `highest`: its top and the step between grid
/// lines, a step of 1, 2, 2.5 or 5 times a power of ten, at most five steps.
fn y_axis(highest: f64) -> (f64, f64) {
    if highest <= 0.0 || !highest.is_finite() {
        return (1.0, 0.25);
    }
    let rough = highest / 5.0;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&c| c >= rough)
        .unwrap_or(10.0 * power);
    ((highest / step).ceil() * step, step)
}
