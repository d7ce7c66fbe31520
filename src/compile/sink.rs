//! The compiler's text sink: each service's rules rendered as they are built,
//! into a few large buffers for a whole cluster ([`compile_text`](super::compile_text))
//! or one service at a time for the [`Syncer`](crate::sync::Syncer), which keeps
//! each service's text apart ([`ServiceText`]) to replace it alone. No service's
//! rules are ever held typed here. The bytes are exactly those of
//! [`render`](crate::render) over [`compile`](super::compile)'s ruleset (a
//! property test checks it).

use std::fmt;

use super::SharedChain;
use super::compiled::{CompiledText, Counter};
use super::context::Context;
use super::service::{Capture, Dispatch, EndpointChain, PortFlows, Sink};
use crate::error::CompileError;
use crate::error::Problem;
use crate::model::ServiceKey;
use crate::ruleset::restore::{self, RuleLine};
use crate::ruleset::{ChainName, Match, RecentAction, Rule};

pub(super) const SHARED: usize = SharedChain::ALL.len();

/// How a [`TextSink`] keeps the services' own chains.
#[derive(Debug)]
enum Chains {
    /// One service at a time (the `Syncer`): each chain and where its lines start.
    Listed(Vec<(ChainName, usize)>),
    /// Every service (`compile_text`): the `:NAME - [0:0]` lines, and how many.
    Declared { text: String, count: usize },
}

/// The capacity of each buffer a whole cluster's own lines are written into: large
/// enough that there are few, small enough that the allocator reuses them from one
/// compile to the next instead of mapping (and faulting in) fresh memory each time.
const CHUNK: usize = 1 << 20;

/// The length of a service chain's `:KUBE-SEP-0123456789ABCDEF - [0:0]` line.
const DECLARATION: usize = 35;

/// The room a chunk must have left for another rule line; a longer line just grows
/// the chunk.
const LINE_ROOM: usize = 2048;

/// A [`Sink`] that renders each rule as it comes.
#[derive(Debug)]
pub(crate) struct TextSink {
    /// The own chains' `-A …` lines being written: the last chunk of them, for a
    /// whole cluster, or all of them, for one service.
    open_chunk: String,
    /// The chunks filled before `open_chunk`, for a whole cluster.
    full_chunks: Vec<String>,
    /// Empty chunks to fill before allocating new ones.
    free_chunks: Vec<String>,
    /// The capacity of each chunk; 0 writes everything into `open_chunk`.
    chunk_capacity: usize,
    /// Each shared chain's `-A …` lines, in [`SharedChain::ALL`] order.
    shared: [String; SHARED],
    chains: Chains,
    /// The chain started last.
    current: ChainName,
    /// The ports' flows, when kept.
    flows: Option<Vec<PortFlows>>,
    /// The lengths when the current service began, to abandon it.
    marks: Marks,
}

/// How far a [`TextSink`]'s parts reached when the current service began: cutting
/// each back to its mark abandons the service.
#[derive(Debug, Clone, Copy, Default)]
struct Marks {
    /// The number of full chunks.
    full_chunks: usize,
    /// The length of the open chunk.
    open_chunk: usize,
    /// The length of each shared chain's lines.
    shared: [usize; SHARED],
    /// The length of the declarations' text (a whole cluster).
    decls: usize,
    /// The number of own chains.
    chains: usize,
    /// The number of ports' flows kept.
    flows: usize,
}

impl TextSink {
    fn new(chains: Chains, flows: bool, chunk_capacity: usize) -> Self {
        TextSink {
            open_chunk: String::with_capacity(chunk_capacity),
            full_chunks: Vec::new(),
            free_chunks: Vec::new(),
            chunk_capacity,
            shared: Default::default(),
            chains,
            current: super::KUBE_SERVICES,
            flows: flows.then(Vec::new),
            marks: Marks::default(),
        }
    }

    /// A sink for one service at a time, taken out with [`TextSink::take_service`];
    /// `flows` keeps the ports' flows (the `Syncer` needs them for conntrack
    /// cleanup).
    pub fn per_service(flows: bool) -> Self {
        TextSink::new(Chains::Listed(Vec::new()), flows, 0)
    }

    /// A sink for a whole cluster, read with [`TextSink::into_compiled`], with room
    /// for the declarations of about `chains` chains (more only grows the buffer).
    pub(super) fn whole(chains: usize) -> Self {
        TextSink::new(
            Chains::Declared {
                text: String::with_capacity(chains * DECLARATION),
                count: 0,
            },
            false,
            CHUNK,
        )
    }

    /// A sink for a whole cluster that writes into `old`'s buffers.
    pub(super) fn whole_reusing(old: CompiledText) -> Self {
        let CompiledText {
            mut decls,
            mut shared,
            own: mut chunks,
            ..
        } = old;
        decls.clear();
        shared.iter_mut().for_each(String::clear);
        chunks.iter_mut().for_each(String::clear);
        // The first chunk is filled first.
        chunks.reverse();
        let first = chunks.pop().unwrap_or_else(|| String::with_capacity(CHUNK));
        TextSink {
            open_chunk: first,
            full_chunks: Vec::new(),
            free_chunks: chunks,
            chunk_capacity: CHUNK,
            shared,
            chains: Chains::Declared {
                text: decls,
                count: 0,
            },
            current: super::KUBE_SERVICES,
            flows: None,
            marks: Marks::default(),
        }
    }

    /// Starts a new chunk when the current one has no room for another line.
    #[inline]
    fn make_room(&mut self) {
        if self.chunk_capacity != 0
            && self.open_chunk.capacity() - self.open_chunk.len() < LINE_ROOM
        {
            let next = self
                .free_chunks
                .pop()
                .unwrap_or_else(|| String::with_capacity(self.chunk_capacity));
            self.full_chunks
                .push(std::mem::replace(&mut self.open_chunk, next));
        }
    }

    /// The service written since [`Sink::begin`], at its exact size; the sink is
    /// left empty for the next one.
    pub fn take_service(&mut self, key: ServiceKey, endpoint_count: usize) -> ServiceText {
        let shared_len: usize = self.shared.iter().map(String::len).sum();
        let mut text = String::with_capacity(self.open_chunk.len() + shared_len);
        text.push_str(&self.open_chunk);
        let mut shared_ends = [0; SHARED];
        for (part, end) in self.shared.iter_mut().zip(&mut shared_ends) {
            text.push_str(part);
            *end = text.len();
            part.clear();
        }
        let chains = match &mut self.chains {
            Chains::Listed(listed) => {
                let ends = listed
                    .iter()
                    .skip(1)
                    .map(|(_, start)| *start)
                    .chain([self.open_chunk.len()]);
                let chains = listed
                    .iter()
                    .map(|(name, _)| name.clone())
                    .zip(ends)
                    .collect();
                listed.clear();
                chains
            }
            Chains::Declared { .. } => Vec::new(),
        };
        self.open_chunk.clear();
        ServiceText {
            key,
            text,
            chains,
            shared_ends,
            ports: self.flows.as_mut().map(std::mem::take).unwrap_or_default(),
            endpoint_count,
        }
    }

    pub(super) fn into_compiled(
        mut self,
        ctx: Context,
        warnings: Vec<CompileError>,
    ) -> CompiledText {
        let mut chunks = std::mem::take(&mut self.full_chunks);
        chunks.push(self.open_chunk);
        let (decls, count) = match self.chains {
            Chains::Declared { text, count } => (text, count),
            Chains::Listed(listed) => (String::new(), listed.len()),
        };
        let mut text = CompiledText {
            ctx,
            decls,
            shared: self.shared,
            own: chunks,
            chains: count,
            len: 0,
            warnings,
        };
        let mut counter = Counter::default();
        // Counting cannot fail; the parts are counted whole, not copied.
        let _ = text.write_fmt(&mut counter);
        text.len = counter.0;
        text
    }
}

impl Sink for TextSink {
    fn begin(&mut self) {
        let (decls, count) = match &self.chains {
            Chains::Listed(listed) => (0, listed.len()),
            Chains::Declared { text, count } => (text.len(), *count),
        };
        let flows = self.flows.as_ref().map_or(0, Vec::len);
        self.marks = Marks {
            full_chunks: self.full_chunks.len(),
            open_chunk: self.open_chunk.len(),
            shared: self.shared.each_ref().map(String::len),
            decls,
            chains: count,
            flows,
        };
    }

    fn abandon(&mut self) {
        let marks = self.marks;
        if self.full_chunks.len() > marks.full_chunks {
            let mut later = self.full_chunks.split_off(marks.full_chunks);
            self.open_chunk = later.swap_remove(0);
        }
        self.open_chunk.truncate(marks.open_chunk);
        for (part, len) in self.shared.iter_mut().zip(marks.shared) {
            part.truncate(len);
        }
        match &mut self.chains {
            Chains::Listed(listed) => listed.truncate(marks.chains),
            Chains::Declared { text, count } => {
                text.truncate(marks.decls);
                *count = marks.chains;
            }
        }
        if let Some(kept) = &mut self.flows {
            kept.truncate(marks.flows);
        }
    }

    fn reset(&mut self) {
        self.marks = Marks::default();
        self.abandon();
    }

    #[inline]
    fn shared(&mut self, which: SharedChain, rule: Rule) {
        // Writing into a String cannot fail.
        let _ = restore::rule(
            &mut self.shared[which as usize],
            which.chain().as_str(),
            &rule,
        );
    }

    #[inline]
    fn chain(&mut self, name: &ChainName, _rules: usize) {
        match &mut self.chains {
            Chains::Listed(listed) => listed.push((name.clone(), self.open_chunk.len())),
            Chains::Declared { text, count } => {
                let _ = restore::declare(text, name.as_str());
                *count += 1;
            }
        }
        self.current = name.clone();
    }

    #[inline]
    fn rule(&mut self, rule: &Rule) {
        self.make_room();
        let _ = restore::rule(&mut self.open_chunk, self.current.as_str(), rule);
    }

    fn shared_capture(&mut self, which: SharedChain, capture: &Capture<'_>) {
        write_capture(&which.chain(), capture, &mut self.shared[which as usize]);
    }

    fn capture(&mut self, capture: &Capture<'_>) {
        self.make_room();
        write_capture(&self.current, capture, &mut self.open_chunk);
    }

    /// The same lines as [`EndpointChain::rules`] rendered (a unit test holds them
    /// to it), without building the rules: a cluster has one such chain per
    /// endpoint.
    fn endpoint_chain(&mut self, ep: &EndpointChain<'_>) {
        self.chain(&ep.endpoint.chain, 2);
        self.make_room();
        // Writing into a String cannot fail.
        let _ = endpoint_lines(ep, &mut self.open_chunk);
    }

    /// The same line as [`Dispatch::rule`] rendered (a unit test holds it to it),
    /// without building the rule.
    fn dispatch(&mut self, jump: &Dispatch<'_>) -> Result<(), Problem> {
        self.make_room();
        // Writing into a String cannot fail.
        let _ = dispatch_line(self.current.as_str(), jump, &mut self.open_chunk);
        Ok(())
    }

    fn flows(&mut self) -> Option<&mut Vec<PortFlows>> {
        self.flows.as_mut()
    }
}

/// [`EndpointChain::rules`] rendered: the hairpin masquerade and the DNAT, with
/// the addresses written once as `ip:port` text and the rest by the typed matches.
fn endpoint_lines(ep: &EndpointChain<'_>, out: &mut String) -> fmt::Result {
    let name = ep.endpoint.chain.as_str();
    let socket = ep.endpoint.text.as_str();
    let mut hairpin = RuleLine::append(out, name)?;
    if let Some(comment) = ep.comment {
        hairpin.matching(comment)?;
    }
    // For IPv4 the hairpin's address is the `ip:port` text less the colon and
    // the port's digits; an IPv6 one is written anew.
    let ip_len = socket
        .len()
        .saturating_sub(1 + digits(ep.endpoint.addr.port()));
    match (ep.endpoint.addr, socket.get(..ip_len)) {
        (std::net::SocketAddr::V4(_), Some(ip)) => hairpin.source_text(ip)?,
        (addr, _) => hairpin.source_ip(addr.ip())?,
    }
    hairpin.jump(super::KUBE_MARK_MASQ.as_str())?;
    hairpin.end()?;
    let mut dnat = RuleLine::append(out, name)?;
    if let Some(comment) = ep.comment {
        dnat.matching(comment)?;
    }
    if ep.affinity {
        dnat.matching(&Match::Recent {
            name: ep.endpoint.chain.clone(),
            action: RecentAction::Set,
        })?;
    }
    dnat.matching(&Match::protocol(ep.protocol))?;
    dnat.dnat_text(socket)?;
    dnat.end()
}

/// [`Dispatch::rule`] rendered: `[comment] [-m statistic …] -j KUBE-SEP-…`, the
/// probability printed from its table.
fn dispatch_line(chain: &str, jump: &Dispatch<'_>, out: &mut String) -> fmt::Result {
    let mut line = RuleLine::append(out, chain)?;
    if let Some(comment) = &jump.comment {
        line.matching(comment)?;
    }
    if jump.remaining > 1 {
        line.one_in(jump.remaining)?;
    }
    line.jump(jump.endpoint.as_str())?;
    line.end()
}

/// [`Capture::rule`] rendered without building the rule: the same matches and
/// target, written one after the other.
fn write_capture(chain: &ChainName, capture: &Capture<'_>, out: &mut String) {
    // Writing into a String cannot fail.
    let _ = (|| {
        let mut line = RuleLine::append(out, chain.as_str())?;
        for m in capture.matches().iter().flatten() {
            line.matching(m)?;
        }
        line.target(&capture.target)?;
        line.end()
    })();
}

/// The number of decimal digits of `n`.
fn digits(n: u16) -> usize {
    match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    }
}

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
    shared_ends: [usize; SHARED],
    pub ports: Vec<PortFlows>,
    pub endpoint_count: usize,
}

impl ServiceText {
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
    pub(super) fn own_text(&self) -> &str {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::Target;

    fn write_service(sink: &mut TextSink, chain: &str) {
        sink.begin();
        let name = ChainName::new(chain).unwrap();
        sink.shared(
            SharedChain::NatServices,
            Rule::new().to(Target::Jump(name.clone())),
        );
        sink.chain(&name, 1);
        sink.rule(&Rule::new().to(Target::Accept));
    }

    #[test]
    fn an_abandoned_service_leaves_nothing() {
        for mut sink in [TextSink::whole(0), TextSink::per_service(true)] {
            let written =
                |s: &TextSink| format!("{:?}", (&s.open_chunk, &s.shared, &s.chains, &s.flows));
            write_service(&mut sink, "KUBE-SVC-A");
            let kept = written(&sink);
            write_service(&mut sink, "KUBE-SVC-B");
            assert_ne!(written(&sink), kept);
            sink.abandon();
            assert_eq!(written(&sink), kept);
        }
    }

    /// The endpoint chains and dispatch rules a `TextSink` writes without
    /// building rules are the rules it would otherwise build, rendered.
    #[test]
    fn endpoint_lines_are_the_rules_rendered() {
        use super::super::input::PortEndpoint;
        use super::super::naming::endpoint_text;
        use crate::model::{Endpoint, Protocol};
        use crate::ruleset::Comment;

        fn both(write: impl Fn(&mut TextSink, bool)) -> (String, String) {
            let [fast, typed] = [true, false].map(|fast| {
                let mut sink = TextSink::per_service(false);
                sink.begin();
                sink.chain(&ChainName::new("KUBE-SVC-X").unwrap(), 1);
                write(&mut sink, fast);
                let text = sink.take_service(crate::model::ServiceKey::new("ns", "a"), 1);
                format!("{:?}", text.chains().collect::<Vec<_>>())
            });
            (fast, typed)
        }

        let chain = ChainName::new("KUBE-SEP-ABC").unwrap();
        let mut checked = 0;
        for addr in [
            "10.180.0.1:80",
            "1.2.3.4:1",
            "255.255.255.255:65535",
            "10.0.0.10:1000",
            "[fd00::1]:8080",
            "[::ffff:10.0.0.1]:53",
        ] {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            let endpoint = Endpoint::ready(addr.ip());
            let port_endpoint = PortEndpoint {
                text: endpoint_text(&addr),
                addr,
                chain: chain.clone(),
                endpoint: &endpoint,
                local: false,
                origin: (0, 0),
            };
            let spn = Match::Comment(Comment::new("ns1/svc1:p80").unwrap());
            let to = Match::Comment(
                Comment::from_parts(&["ns1/svc1:p80 -> ", &port_endpoint.text]).unwrap(),
            );
            for (comment, to) in [(None, None), (Some(&spn), Some(&to))] {
                for affinity in [false, true] {
                    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                        let ep = EndpointChain {
                            endpoint: &port_endpoint,
                            comment,
                            protocol,
                            affinity,
                        };
                        let (fast, typed) = both(|sink, fast| {
                            if fast {
                                sink.endpoint_chain(&ep);
                            } else {
                                sink.chain(&chain, 2);
                                ep.rules().iter().for_each(|r| sink.rule(r));
                            }
                        });
                        assert_eq!(fast, typed);
                        assert!(fast.contains(&*port_endpoint.text), "{fast}");
                        checked += 1;
                    }
                }
                for remaining in [1, 3, 2000] {
                    let jump = Dispatch {
                        comment: to.cloned(),
                        remaining,
                        endpoint: &chain,
                    };
                    let (fast, typed) = both(|sink, fast| match fast {
                        true => sink.dispatch(&jump).unwrap(),
                        false => sink.rule(&jump.rule().unwrap()),
                    });
                    assert_eq!(fast, typed);
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 108);
    }

    /// Capture rules written without building them are the rules rendered, in a
    /// shared chain and in the service's own.
    #[test]
    fn capture_lines_are_the_rules_rendered() {
        use super::super::service::Capture;
        use crate::model::Protocol;
        use crate::ruleset::{Address, Comment, Match, Not};

        let comment = Match::Comment(Comment::new("ns1/svc1:p80 cluster IP").unwrap());
        let extra = Match::Source(Not::is_not(Address::Net("10.0.0.0/8".parse().unwrap())));
        let chain = ChainName::new("KUBE-SVC-X").unwrap();
        let mut checked = 0;
        for ip in ["172.30.0.41", "fd00::41"] {
            for (comment, extra) in [(None, None), (Some(&comment), Some(&extra))] {
                for target in [Target::Jump(chain.clone()), Target::Reject, Target::Drop] {
                    for protocol in [Protocol::Tcp, Protocol::Sctp] {
                        let capture = Capture {
                            comment: comment.cloned(),
                            protocol,
                            ip: ip.parse().unwrap(),
                            port: 8080,
                            extra,
                            target: target.clone(),
                        };
                        let [fast, typed] = [true, false].map(|fast| {
                            let mut sink = TextSink::per_service(false);
                            sink.begin();
                            sink.chain(&chain, 1);
                            if fast {
                                sink.capture(&capture);
                                sink.shared_capture(SharedChain::FilterServices, &capture);
                            } else {
                                sink.rule(&capture.rule());
                                sink.shared(SharedChain::FilterServices, capture.rule());
                            }
                            let text =
                                sink.take_service(crate::model::ServiceKey::new("ns", "a"), 1);
                            let own: Vec<_> = text.chains().map(|(_, t)| t.to_owned()).collect();
                            (
                                own,
                                text.shared_text(SharedChain::FilterServices).to_owned(),
                            )
                        });
                        assert_eq!(fast, typed);
                        assert!(fast.1.contains(ip), "{fast:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 24);
    }

    #[test]
    fn a_taken_service_keeps_its_chains_apart() {
        let mut sink = TextSink::per_service(false);
        write_service(&mut sink, "KUBE-SVC-A");
        let name = ChainName::new("KUBE-SEP-A").unwrap();
        sink.chain(&name, 1);
        sink.rule(&Rule::new().to(Target::Drop));
        let text = sink.take_service(crate::model::ServiceKey::new("ns", "a"), 1);
        let chains: Vec<_> = text.chains().map(|(n, t)| (n.as_str(), t)).collect();
        assert_eq!(
            chains,
            [
                ("KUBE-SVC-A", "-A KUBE-SVC-A -j ACCEPT\n"),
                ("KUBE-SEP-A", "-A KUBE-SEP-A -j DROP\n"),
            ]
        );
        assert_eq!(
            text.shared_text(SharedChain::NatServices),
            "-A KUBE-SERVICES -j KUBE-SVC-A\n"
        );
        assert_eq!(text.shared_text(SharedChain::FilterServices), "");
        assert_eq!(format!("{:?}", sink.open_chunk), "\"\"");
    }
}
