//! # svcnat
//!
//! Kubernetes Services in, `iptables-restore` text out: what kube-proxy's iptables
//! mode writes, as an embeddable library. An embedder that watches a cluster
//! starts at [Keeping a node in step with a cluster](#keeping-a-node-in-step-with-a-cluster);
//! one that has a dump of it (`kubectl get services,endpointslices -A -o json`, or
//! what the API server returns for a list) reads it with `k8s::read` (feature
//! `k8s`) into the [`model::ClusterState`] the pipeline starts from.
//!
//! The crate is a pipeline of pure stages:
//!
//! 1. [`model`]: services, endpoint slices and the proxy's config as plain data.
//! 2. [`compile`]: model -> typed [`ruleset::Ruleset`] (tables, chains, rules made of
//!    typed matches and targets), with kube-proxy's chain names and rule layout; or,
//!    with [`compile::nftables`], model -> the typed [`nft::Ruleset`] of kube-proxy's
//!    nftables mode (its table, chains, sets, verdict maps and elements), which its
//!    one writer prints as `nft -f` input ([`nft::Ruleset::to_dump`]).
//! 3. [`render`]: ruleset -> `iptables-restore` text, streaming into any writer.
//! 4. [`sync`]: the smallest payload from one state to the next ([`sync::plan`]), and a
//!    [`sync::Syncer`] that keeps a node in step with a changing cluster; in
//!    nftables mode, the transactions from one table to the next
//!    ([`sync::nft_plan`]) and the [`sync::NftSyncer`] that runs them.
//! 5. [`exec`]: the [`exec::Executor`] trait and its nftables sibling
//!    [`exec::NftExecutor`], the only place that starts processes.
//!
//! And back again, to check and explain what a node really has:
//!
//! 6. [`parse`]: `iptables-save` / `iptables-restore` text -> the same typed ruleset
//!    (`parse(render(r)) == r`), with a canonical form that makes a dump read back
//!    from the kernel compare equal to what was compiled; [`parse::nft`] does the
//!    same for nftables text (the dump form and `nft list table` output).
//! 7. [`trace`]: a ruleset and a packet -> every way the packet can go (DNAT
//!    destination, masquerade, verdict, probability, the rules taken);
//!    [`trace::nft`] through an nftables table.
//!
//! ```
//! use svcnat::model::*;
//!
//! let mut state = ClusterState::new();
//! state.upsert_service(
//!     Service::cluster_ip("ns1", "svc1", "172.30.0.41".parse().unwrap())
//!         .with_port(ServicePort::tcp("p80", 80)),
//! );
//! state.upsert_slice(
//!     EndpointSlice::new("ns1", "svc1", "svc1-abcde", IpFamily::Ipv4)
//!         .with_port(EndpointPort::tcp("p80", 80))
//!         .with_endpoint(Endpoint::ready("10.180.0.1".parse().unwrap())),
//! );
//! let config = ProxyConfig::default()
//!     .with_node_name("node-a")
//!     .with_cluster_cidrs(["10.0.0.0/8".parse().unwrap()]);
//!
//! let ruleset = svcnat::compile::compile(&state, &config)?;
//! let text = svcnat::render::to_string(&ruleset);
//! assert!(text.contains(
//!     "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 \
//!      -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80"
//! ));
//! # Ok::<(), svcnat::Error>(())
//! ```
//!
//! ## Keeping a node in step with a cluster
//!
//! Hand every watch event of Services and EndpointSlices to
//! [`Syncer::apply_k8s`](sync::Syncer::apply_k8s) (feature `k8s`), then call
//! [`Syncer::sync`](sync::Syncer::sync): each sync writes only the chains that
//! changed, through an [`exec::Executor`] ([`exec::IptablesRestore`] on a node,
//! [`exec::Recorder`] in tests). The call turns updates that take an object out of
//! what kube-proxy models into removals: a Service that becomes headless or
//! ExternalName, a slice that loses its service label or becomes FQDN. A slice
//! whose label changes moves to its new service.
//!
//! ```
//! # #[cfg(feature = "k8s")] {
//! use k8s_openapi::api::core::v1::Service;
//! use k8s_openapi::api::discovery::v1::EndpointSlice;
//! use svcnat::exec::Recorder;
//! use svcnat::k8s::{Action, Event};
//! use svcnat::model::ProxyConfig;
//! use svcnat::sync::Syncer;
//!
//! // Objects as a watch delivers them.
//! let mut svc: Service = serde_json::from_str(r#"{
//!     "metadata": {"namespace": "ns1", "name": "svc1"},
//!     "spec": {"clusterIP": "172.30.0.41", "ports": [{"name": "p80", "port": 80}]}}"#)?;
//! let slice: EndpointSlice = serde_json::from_str(r#"{
//!     "metadata": {"namespace": "ns1", "name": "svc1-abcde",
//!                  "labels": {"kubernetes.io/service-name": "svc1"}},
//!     "addressType": "IPv4", "ports": [{"name": "p80", "port": 8080}],
//!     "endpoints": [{"addresses": ["10.180.0.1"]}]}"#)?;
//!
//! let config = ProxyConfig::default().with_cluster_cidrs(["10.0.0.0/8".parse()?]);
//! let mut syncer = Syncer::new(Recorder::new(), config)?;
//! for event in [Event::applied(&svc), Event::applied(&slice)] {
//!     assert_eq!(syncer.apply_k8s(event)?, Action::Upserted);
//! }
//! let report = syncer.sync()?;
//! // A log line: "full (first sync), B bytes, W chains written, 0 chains deleted,
//! // 1 services recompiled".
//! assert!(report.to_string().starts_with("full (first sync), "));
//!
//! // The Service becomes headless: the same call removes its rules.
//! svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
//! assert_eq!(syncer.apply_k8s(Event::applied(&svc))?, Action::Removed);
//! let report = syncer.sync()?;
//! assert!(!report.payload.text().contains("172.30.0.41"));
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Determinism
//!
//! Services are compiled in `namespace/name` order, ports in their declared order,
//! endpoints sorted by their `ip:port` string (kube-proxy's order); chains and rules
//! live in ordered containers. The same state gives the same bytes, whatever order
//! its objects were inserted in. Nothing in the core reads a clock, a random number
//! generator or the system.
//!
//! ## Errors
//!
//! Invalid input never panics and never yields part of a ruleset: [`compile::compile`]
//! returns a [`CompileError`] that names the service, port and field.
//! [`compile::compile_lenient`] instead leaves out the invalid services and reports
//! them, as kube-proxy does.
//!
//! ## What is an error and what is a warning
//!
//! Tolerant like kube-proxy, strict like a compiler: what kube-proxy accepts with a
//! log line is a *warning* (the part is left out, the rest compiles); what the API
//! server's validation refuses is an *error*. Every entry point agrees:
//!
//! | entry point | on a warning | on an error |
//! |---|---|---|
//! | [`compile::compile`], [`compile::compile_text`], [`compile::compile_text_reusing`], [`compile::nftables`] | compiles; the warnings are dropped ([`compile::CompiledText::warnings`] keeps them for the text path) | `Err`, the first error, nothing compiled |
//! | [`compile::compile_with_warnings`], [`compile::nftables_with_warnings`] | compiles; [`compile::Warned::warnings`] | as `compile` |
//! | [`compile::compile_lenient`], [`compile::nftables_lenient`] | compiles; [`compile::Lenient::warnings`] | the service is left out (no rules at all) and its error is in [`compile::Lenient::rejected`]; its warnings are not reported |
//! | [`sync::Syncer`] | [`sync::SyncReport::warnings`] | as `compile_lenient`, in [`sync::SyncReport::rejected`] |
//!
//! Warnings come in service (`namespace/name`) order, then in field order within a
//! service; errors in field order, the first one wins. The cases:
//!
//! | state | kind | field | what happens |
//! |---|---|---|---|
//! | a slice port with no service port of its name and protocol (e.g. `""` beside a service port `http`) | warning | `ports[i]` | the slice port is unused |
//! | a slice port numbered 0 | warning | `ports[i].port` | the slice port is unused |
//! | an endpoint address of the other family than the slice's `addressType` | warning | `endpoints[i].addresses[0]` | the endpoint is unused |
//! | the same `ip:port` listed twice for one service port (in one slice or two) | warning | `endpoints[i].addresses[0]` of each copy after the first (by slice name, then position) | one copy is used: a local one, else the most ready |
//! | a slice whose Service does not exist | warning | `metadata.labels[kubernetes.io/service-name]` | the slice is unused until the Service appears |
//! | a headless Service, or one with no cluster IP of the proxy's family | neither | – | skipped, as kube-proxy skips it |
//! | an invalid namespace, Service, port or slice name | error | `metadata.namespace`, `metadata.name`, `spec.ports[i].name` | |
//! | an unnamed port in a multi-port Service; a repeated port name, or number and protocol | error | `spec.ports[i].name`, `spec.ports[i].port` | |
//! | port 0; a node port on a ClusterIP Service, or outside the configured range | error | `spec.ports[i].port`, `spec.ports[i].nodePort`, `spec.healthCheckNodePort` | |
//! | two cluster IPs of one family | error | `spec.clusterIPs` | |
//! | a loopback or unspecified cluster IP | error | `spec.clusterIPs[i]` | |
//! | an external IP or endpoint address that is unspecified, loopback, link-local or link-local multicast (`ValidateNonSpecialIP`) | error | `spec.externalIPs[i]`, `endpoints[i].addresses[0]` | |
//! | a session affinity timeout outside 1-86400 | error | `spec.sessionAffinityConfig.clientIP.timeoutSeconds` | |
//! | a slice port name and protocol repeated in one slice | error | `ports[i].name` | |
//! | a name or comment the rule IR refuses | error | the field it came from | |
//! | in nftables mode only: an interface name nft cannot take | error | the config field | |
//! | in nftables mode only: a port whose `ns/name:port` is longer than an nftables comment (128 bytes) | compiled, the comment cut to 128 bytes as kube-proxy cuts it | | |
//! | an invalid [`model::ProxyConfig`] field | error, in every mode ([`CompileError::Config`]) | the config field | nothing is compiled |
//!
//! ## Crate features
//!
//! | feature | what it adds |
//! |---|---|
//! | `k8s` | [`k8s`]: the List reader (`k8s::read`: a kubectl `List`, a `ServiceList`, an `EndpointSliceList`, or one object, with a report of what it left out), conversion from k8s-openapi `Service` and `EndpointSlice`, and [`Syncer::apply_k8s`](sync::Syncer::apply_k8s) for watch events (the embedder selects the Kubernetes version feature of k8s-openapi) |
//! | `synthetic` | `synthetic`: generated clusters of any size for benchmarks and load tests (the `scale` and `kernel_cost` examples and the benches need it); with `k8s` too, `synthetic::write_kubectl_list` writes one as a kubectl `List` |
//!
//! The documentation with every feature, as docs.rs builds it:
//! `cargo doc --no-deps --features k8s,synthetic,k8s-openapi/latest --open`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Errors carry the object, port and field by value so they stand alone in a log
// line; they are built once per refused object, off the hot path.
#![allow(clippy::result_large_err)]

pub mod compile;
pub mod error;
pub mod exec;
pub mod flows;
#[cfg(feature = "k8s")]
pub mod k8s;
pub mod model;
pub mod nft;
pub mod parse;
pub mod render;
pub mod ruleset;
pub mod sync;
#[cfg(feature = "synthetic")]
pub mod synthetic;
pub mod trace;

pub use error::{CompileError, ParseValueError, Problem};
pub use model::IpNet;

/// Every error the crate returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input could not be compiled.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// A Kubernetes object could not be converted.
    #[cfg(feature = "k8s")]
    #[error(transparent)]
    Convert(#[from] k8s::ConvertError),
    /// A sync failed.
    #[error(transparent)]
    Sync(#[from] sync::SyncError),
    /// An executor call failed.
    #[error(transparent)]
    Exec(#[from] exec::ExecError),
    /// An nftables executor call failed.
    #[error(transparent)]
    NftExec(#[from] exec::NftExecError),
    /// Rule text could not be parsed.
    #[error(transparent)]
    Parse(#[from] parse::ParseError),
    /// nftables text could not be parsed.
    #[error(transparent)]
    NftParse(#[from] parse::nft::NftParseError),
    /// A packet could not be traced.
    #[error(transparent)]
    Trace(#[from] trace::TraceError),
    /// Writing the rules failed.
    #[error("writing rules: {0}")]
    Io(#[from] std::io::Error),
}

/// README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
