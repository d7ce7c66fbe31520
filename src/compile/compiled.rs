//! [`CompiledText`]: a whole cluster's restore text, compiled service by service
//! and kept as a few large parts, and the functions that make it.

use std::fmt;
use std::io;

use super::assembly::{ServiceLines, write_head, write_tail};
use super::context::Context;
use super::fixed::fixed_tables;
use super::sink::{SHARED, TextSink};
use super::{SharedChain, compile_services};
use crate::error::CompileError;
use crate::model::{ClusterState, IpFamily, ProxyConfig};
use crate::render::IoAdapter;

/// A cluster's full `iptables-restore` text, compiled and rendered service by
/// service (see [`compile_text`]): kept as a few large parts, put together when
/// written.
#[derive(Debug, Clone)]
pub struct CompiledText {
    pub(super) ctx: Context,
    /// Every service's `:NAME - [0:0]` lines.
    pub(super) decls: String,
    /// Every service's lines in each shared chain.
    pub(super) shared: [String; SHARED],
    /// Every service's own chains' `-A …` lines, in chunks: most of the text.
    pub(super) own: Vec<String>,
    /// The number of service chains.
    pub(super) chains: usize,
    pub(super) len: usize,
    /// What was ignored as kube-proxy ignores it.
    pub(super) warnings: Vec<CompileError>,
}

/// A [`CompiledText`]'s service lines, every service's merged into one buffer
/// per part (the own chains' lines in chunks).
struct MergedServices<'a> {
    decls: &'a str,
    shared: &'a [String; SHARED],
    own: &'a [String],
}

impl ServiceLines for MergedServices<'_> {
    fn decls<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        out.write_str(self.decls)
    }

    fn shared<W: fmt::Write>(&self, which: SharedChain, out: &mut W) -> fmt::Result {
        out.write_str(&self.shared[which as usize])
    }

    fn own<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        for chunk in self.own {
            out.write_str(chunk)?;
        }
        Ok(())
    }
}

impl CompiledText {
    /// The family.
    pub fn family(&self) -> IpFamily {
        self.ctx.family
    }

    /// The text's exact length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: every ruleset has its tables' headers.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn services(&self) -> MergedServices<'_> {
        MergedServices {
            decls: &self.decls,
            shared: &self.shared,
            own: &self.own,
        }
    }

    /// Writes the text into a `fmt::Write`.
    ///
    /// # Errors
    /// Only those of the writer.
    pub fn write_fmt<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        let services = self.services();
        write_head(&self.ctx, &services, out)?;
        services.own(out)?;
        write_tail(out)
    }

    /// Writes the text into an `io::Write`, streaming.
    ///
    /// # Errors
    /// Those of the writer.
    pub fn write_io<W: io::Write>(&self, out: W) -> io::Result<()> {
        let mut adapter = IoAdapter::new(out);
        let result = self.write_fmt(&mut adapter);
        adapter.finish(result)
    }

    /// The text as bytes, in a new buffer of exactly its size.
    ///
    /// A new buffer of tens of megabytes is fresh memory, which the kernel faults
    /// in page by page (with glibc, always so above 32 MiB): a daemon that compiles
    /// again and again does better to keep one buffer ([`CompiledText::write_to_vec`])
    /// or to stream the text where it goes ([`CompiledText::write_io`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_text().into_bytes()
    }

    /// The text, in a new buffer of exactly its size.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.len);
        // Writing into a String cannot fail.
        let _ = self.write_fmt(&mut out);
        out
    }

    /// Writes the text into `out`, replacing what it held and reusing its
    /// capacity: a caller that keeps one buffer between compiles writes into
    /// memory it already has.
    pub fn write_to_vec(&self, out: &mut Vec<u8>) {
        out.clear();
        out.reserve_exact(self.len);
        // Writing into a Vec cannot fail.
        let _ = self.write_fmt(&mut VecWriter(out));
    }

    /// The parts of the state left out as kube-proxy leaves them out, as in
    /// [`Warned::warnings`](super::Warned::warnings), in the same order.
    pub fn warnings(&self) -> &[CompileError] {
        &self.warnings
    }

    /// The number of chains the text declares.
    pub fn chain_count(&self) -> usize {
        let (filter, nat) = fixed_tables(&self.ctx);
        filter.chains.len() + nat.chains.len() + self.chains
    }
}

impl fmt::Display for CompiledText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_fmt(f)
    }
}

/// `fmt::Write` into a byte buffer.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Counts the bytes written.
#[derive(Default)]
pub(crate) struct Counter(pub usize);

impl fmt::Write for Counter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// Compiles a cluster state straight to its `iptables-restore` text, the same bytes
/// as [`render`](crate::render) over [`compile`](super::compile)'s ruleset, in
/// about a quarter of the time and half the memory: each rule is written as soon
/// as it is built, and no service's typed rules are kept.
///
/// ```
/// use svcnat::model::*;
/// let mut state = ClusterState::new();
/// state.upsert_service(
///     Service::cluster_ip("ns1", "svc1", "172.30.0.41".parse().unwrap())
///         .with_port(ServicePort::tcp("p80", 80)),
/// );
/// let config = ProxyConfig::default();
/// let text = svcnat::compile::compile_text(&state, &config).unwrap();
/// let ruleset = svcnat::compile::compile(&state, &config).unwrap();
/// assert_eq!(text.to_bytes(), svcnat::render::to_string(&ruleset).into_bytes());
/// ```
///
/// What was ignored on the way, as [`compile_with_warnings`](super::compile_with_warnings)
/// reports it, is in [`CompiledText::warnings`].
///
/// # Errors
/// As [`compile`](super::compile): the first invalid service, slice or config
/// field, and no text at all.
pub fn compile_text(
    state: &ClusterState,
    config: &ProxyConfig,
) -> Result<CompiledText, CompileError> {
    // Room for a chain per endpoint and two per service: a bound for most clusters,
    // so the declarations are not copied as they grow.
    let chains = state.endpoint_bound(config.ip_family) + 2 * state.service_count();
    compile_text_into(state, config, TextSink::whole(chains))
}

/// [`compile_text`], writing into the buffers of an earlier text, which it
/// replaces: a daemon that compiles again and again reuses the same memory instead
/// of asking the allocator for (and faulting in) tens of megabytes each time.
///
/// ```
/// use svcnat::model::*;
/// let mut state = ClusterState::new();
/// state.upsert_service(
///     Service::cluster_ip("ns1", "svc1", "172.30.0.41".parse().unwrap())
///         .with_port(ServicePort::tcp("p80", 80)),
/// );
/// let config = ProxyConfig::default();
/// let first = svcnat::compile::compile_text(&state, &config).unwrap();
/// state.upsert_service(
///     Service::cluster_ip("ns1", "svc2", "172.30.0.42".parse().unwrap())
///         .with_port(ServicePort::tcp("p80", 80)),
/// );
/// let mut out = Vec::new();
/// let second = svcnat::compile::compile_text_reusing(&state, &config, first).unwrap();
/// second.write_to_vec(&mut out);
/// assert_eq!(out, svcnat::compile::compile_text(&state, &config).unwrap().to_bytes());
/// ```
///
/// # Errors
/// As [`compile_text`]; `old` is dropped.
pub fn compile_text_reusing(
    state: &ClusterState,
    config: &ProxyConfig,
    old: CompiledText,
) -> Result<CompiledText, CompileError> {
    compile_text_into(state, config, TextSink::whole_reusing(old))
}

fn compile_text_into(
    state: &ClusterState,
    config: &ProxyConfig,
    mut sink: TextSink,
) -> Result<CompiledText, CompileError> {
    let compiled = compile_services(state, config, true, &mut sink, |_, _, _| ())?;
    Ok(sink.into_compiled(compiled.ctx, compiled.warnings))
}
