//! Each service's rules rendered once, and the full restore text put together
//! from them: the fast path for a full sync and what the [`Syncer`] keeps between
//! syncs.
//!
//! The typed rules of a service live only while it is rendered; what stays is its
//! own chains' text, its few rules in the shared chains (typed, as those chains are
//! rewritten whole when one service's part changes), and its flows. The bytes are
//! exactly those of [`render`](crate::render) over [`compile`](super::compile)'s
//! ruleset (a property test checks it).
//!
//! [`Syncer`]: crate::sync::Syncer

use std::fmt;
use std::io;

use super::context::Context;
use super::fixed::{fixed_tables, nodeport_jumps};
use super::service::{PortFlows, ServiceRules};
use super::{SharedChain, compile_services};
use crate::error::CompileError;
use crate::model::{ClusterState, IpFamily, ProxyConfig, ServiceKey};
use crate::render::{self, IoAdapter};
use crate::ruleset::{ChainName, Table};

/// One service's rules, rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceText {
    pub key: ServiceKey,
    /// The `-A …` lines of the service's own nat chains, chain after chain, then
    /// its lines in each shared chain, in [`SharedChain::ALL`] order.
    text: String,
    /// The own chains in declaration order, with the end of their lines in `text`.
    chains: Vec<(ChainName, usize)>,
    /// The end of each shared chain's lines in `text`, in [`SharedChain::ALL`] order.
    shared_ends: [usize; SharedChain::ALL.len()],
    pub ports: Vec<PortFlows>,
    pub endpoint_count: usize,
}

impl ServiceText {
    /// Renders `rules`; `scratch` is a buffer reused from service to service, so
    /// the text is stored at its exact size. `flows` keeps the ports' flows (the
    /// `Syncer` needs them for conntrack cleanup; a one-off text does not).
    pub fn new(rules: ServiceRules, scratch: &mut String, flows: bool) -> Self {
        scratch.clear();
        let mut chains = Vec::with_capacity(rules.chains.len());
        // Writing into a String cannot fail.
        for chain in &rules.chains {
            let _ = render::write_rules(chain, scratch);
            chains.push((chain.name.clone(), scratch.len()));
        }
        let mut shared_ends = [0; SharedChain::ALL.len()];
        for (which, end) in SharedChain::ALL.into_iter().zip(&mut shared_ends) {
            let name = which.chain();
            for (_, rule) in rules.shared.iter().filter(|(w, _)| *w == which) {
                let _ = render::write_rule(&name, rule, scratch);
            }
            *end = scratch.len();
        }
        ServiceText {
            key: rules.key,
            text: scratch.as_str().to_owned(),
            chains,
            shared_ends,
            ports: if flows { rules.ports } else { Vec::new() },
            endpoint_count: rules.endpoint_count,
        }
    }

    /// The own chains, in declaration order, with their `-A …` lines.
    pub fn chains(&self) -> impl Iterator<Item = (&ChainName, &str)> {
        let mut start = 0;
        self.chains.iter().map(move |(name, end)| {
            let text = &self.text[start..*end];
            start = *end;
            (name, text)
        })
    }

    /// The `-A …` lines of all the own chains.
    fn own_text(&self) -> &str {
        &self.text[..self.chains.last().map_or(0, |(_, end)| *end)]
    }

    /// The service's `-A …` lines in one shared chain.
    pub fn shared_text(&self, which: SharedChain) -> &str {
        let i = which as usize;
        let start = match i {
            0 => self.own_text().len(),
            _ => self.shared_ends[i - 1],
        };
        &self.text[start..self.shared_ends[i]]
    }
}

/// Writes the full restore text (filter, then nat) of `services`, in order, as
/// `render::write_fmt` over `fixed::assemble_owned(ctx, …)` would, with `stale` nat chains
/// flushed and deleted (`-X`) as [`plan`](crate::sync::plan) writes deletions.
pub(crate) fn write_full<'a, W, I>(
    ctx: &Context,
    services: I,
    stale: &[ChainName],
    out: &mut W,
) -> fmt::Result
where
    W: fmt::Write,
    I: Iterator<Item = &'a ServiceText> + Clone,
{
    let (filter, nat) = fixed_tables(ctx);
    for table in [filter, nat] {
        out.write_str("*")?;
        out.write_str(table.table.as_str())?;
        out.write_str("\n")?;
        for chain in table.chains.values() {
            render::write_declaration(chain, out)?;
        }
        if table.table == Table::Nat {
            for svc in services.clone() {
                for (name, _) in &svc.chains {
                    render::write_chain_line(name, out)?;
                }
            }
            for name in stale {
                render::write_chain_line(name, out)?;
            }
        }
        for chain in table.chains.values() {
            match shared_chain(table.table, &chain.name) {
                Some(which) => {
                    for svc in services.clone() {
                        out.write_str(svc.shared_text(which))?;
                    }
                    if which == SharedChain::NatServices {
                        for rule in nodeport_jumps(ctx) {
                            render::write_rule(&chain.name, &rule, out)?;
                        }
                    }
                }
                None => render::write_rules(chain, out)?,
            }
        }
        if table.table == Table::Nat {
            for svc in services.clone() {
                out.write_str(svc.own_text())?;
            }
            for name in stale {
                out.write_str("-X ")?;
                out.write_str(name.as_str())?;
                out.write_str("\n")?;
            }
        }
        out.write_str("COMMIT\n")?;
    }
    Ok(())
}

/// The `-A` lines of one shared chain: every service's rules for it, in service
/// order, then the chain's fixed tail (the node-port jumps of nat `KUBE-SERVICES`).
pub(crate) fn shared_chain_text<'a>(
    ctx: &Context,
    which: SharedChain,
    services: impl Iterator<Item = &'a ServiceText>,
) -> String {
    let chain = which.chain();
    let mut out = String::new();
    // Writing into a String cannot fail.
    for svc in services {
        out.push_str(svc.shared_text(which));
    }
    if which == SharedChain::NatServices {
        for rule in nodeport_jumps(ctx) {
            let _ = render::write_rule(&chain, &rule, &mut out);
        }
    }
    out
}

/// Which shared chain `name` is in `table`, if any.
pub(crate) fn shared_chain(table: Table, name: &ChainName) -> Option<SharedChain> {
    SharedChain::ALL
        .into_iter()
        .find(|w| w.table() == table && w.chain() == *name)
}

/// A cluster's full `iptables-restore` text, compiled and rendered service by
/// service (see [`compile_text`]).
#[derive(Debug, Clone)]
pub struct CompiledText {
    ctx: Context,
    services: Vec<ServiceText>,
    len: usize,
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

    /// Writes the text into a `fmt::Write`.
    ///
    /// # Errors
    /// Only those of the writer.
    pub fn write_fmt<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        write_full(&self.ctx, self.services.iter(), &[], out)
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

    /// The text as bytes, in a buffer of exactly its size.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_text().into_bytes()
    }

    /// The text, in a buffer of exactly its size.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.len);
        // Writing into a String cannot fail.
        let _ = self.write_fmt(&mut out);
        out
    }

    /// The number of chains the text declares.
    pub fn chain_count(&self) -> usize {
        let (filter, nat) = fixed_tables(&self.ctx);
        filter.chains.len()
            + nat.chains.len()
            + self.services.iter().map(|s| s.chains.len()).sum::<usize>()
    }
}

impl fmt::Display for CompiledText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_fmt(f)
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
/// as [`render`](crate::render) over [`compile`](super::compile)'s ruleset, in about
/// half the time and memory: each service's typed rules
/// live only while it is rendered.
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
/// # Errors
/// As [`compile`](super::compile): the first invalid service, slice or config
/// field, and no text at all.
pub fn compile_text(
    state: &ClusterState,
    config: &ProxyConfig,
) -> Result<CompiledText, CompileError> {
    let mut scratch = String::new();
    let (ctx, services, _, _) = compile_services(state, config, true, |rules| {
        ServiceText::new(rules, &mut scratch, false)
    })?;
    let mut counter = Counter::default();
    // Counting cannot fail; the services' own text is most of it and is not copied.
    let _ = write_full(&ctx, std::iter::empty(), &[], &mut counter);
    let mut len = counter.0;
    for svc in &services {
        let declared: usize = svc
            .chains
            .iter()
            .map(|(name, _)| ":".len() + name.as_str().len() + " - [0:0]\n".len())
            .sum();
        // The text holds the own chains' lines and the shared ones, each written once.
        len += declared + svc.text.len();
    }
    Ok(CompiledText { ctx, services, len })
}
