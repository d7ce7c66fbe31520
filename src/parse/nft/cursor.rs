//! A cursor over the tokens, and the values both text forms share: names,
//! comments, numbers, addresses, verdicts, key types and key values, durations
//! and chain priorities.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use super::lex::{Tok, Token};
use super::{NftErrorKind, R, Spot, bad_value};
use crate::model::Protocol;
use crate::nft::{Family, KeyType, KeyValue, Name, NftComment, Verdict};

/// The tokens of a text, read front to back.
pub(super) struct Cursor<'a> {
    tokens: Vec<Token<'a>>,
    pos: usize,
}

/// A description of a token for a message: the word or string as written.
fn describe(tok: Tok<'_>) -> String {
    match tok {
        Tok::Word(w) => format!("{w:?}"),
        Tok::Str(s) => format!("\"{s}\""),
        Tok::Punct(c) => format!("{:?}", c.to_string()),
        Tok::Newline => "the end of the line".to_owned(),
    }
}

impl<'a> Cursor<'a> {
    pub(super) fn new(tokens: Vec<Token<'a>>) -> Self {
        Cursor { tokens, pos: 0 }
    }

    /// The next token, not taken; the end of the text reads as a line end.
    pub(super) fn peek(&self) -> Tok<'a> {
        self.tokens.get(self.pos).map_or(Tok::Newline, |t| t.tok)
    }

    /// The token after the next one, not taken.
    pub(super) fn peek2(&self) -> Tok<'a> {
        self.tokens
            .get(self.pos + 1)
            .map_or(Tok::Newline, |t| t.tok)
    }

    /// Whether white space comes before the next token.
    pub(super) fn spaced(&self) -> bool {
        self.tokens.get(self.pos).is_none_or(|t| t.spaced)
    }

    /// Takes the word `w` that starts a command; another word is an unknown
    /// command.
    pub(super) fn command(&mut self, w: &'static str) -> R<()> {
        match self.peek() {
            Tok::Word(found) if found == w => {
                self.pos += 1;
                Ok(())
            }
            Tok::Word(found) => self.fail(NftErrorKind::UnknownCommand(found.to_owned())),
            _ => self.expected(w),
        }
    }

    /// Where the next token is (the last line's end at the end of the text).
    pub(super) fn spot(&self) -> Spot {
        match self.tokens.get(self.pos).or(self.tokens.last()) {
            Some(t) => Spot {
                line: t.line,
                column: t.column,
            },
            None => Spot { line: 1, column: 1 },
        }
    }

    /// True at the end of the text.
    pub(super) fn done(&self) -> bool {
        self.pos >= self.tokens.len()
    }

    /// Takes the next token.
    pub(super) fn bump(&mut self) -> Tok<'a> {
        let tok = self.peek();
        self.pos += 1;
        tok
    }

    /// Skips empty lines.
    pub(super) fn skip_newlines(&mut self) {
        while !self.done() && self.peek() == Tok::Newline {
            self.pos += 1;
        }
    }

    /// An error at the next token.
    pub(super) fn fail<T>(&self, kind: NftErrorKind) -> R<T> {
        Err((self.spot(), kind))
    }

    /// "expected `expected`" at the next token.
    pub(super) fn expected<T>(&self, expected: &'static str) -> R<T> {
        self.fail(NftErrorKind::Expected {
            expected,
            found: describe(self.peek()),
        })
    }

    /// Takes the word `w` if it is next.
    pub(super) fn eat(&mut self, w: &str) -> bool {
        if self.peek() == Tok::Word(w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Takes the punctuation `c` if it is next.
    pub(super) fn eat_punct(&mut self, c: char) -> bool {
        if self.peek() == Tok::Punct(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Takes the word `w`.
    pub(super) fn expect(&mut self, w: &'static str) -> R<()> {
        if self.eat(w) {
            Ok(())
        } else {
            self.expected(w)
        }
    }

    /// Takes the punctuation `c` (`what` names it for a message).
    pub(super) fn expect_punct(&mut self, c: char, what: &'static str) -> R<()> {
        if self.eat_punct(c) {
            Ok(())
        } else {
            self.expected(what)
        }
    }

    /// Takes the end of a line (or of the text).
    pub(super) fn expect_newline(&mut self) -> R<()> {
        if self.done() || self.eat_newline() {
            Ok(())
        } else {
            self.expected("the end of the line")
        }
    }

    fn eat_newline(&mut self) -> bool {
        if self.peek() == Tok::Newline {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Takes a word (`what` names it for a message).
    pub(super) fn word(&mut self, what: &'static str) -> R<&'a str> {
        match self.peek() {
            Tok::Word(w) => {
                self.pos += 1;
                Ok(w)
            }
            _ => self.expected(what),
        }
    }

    /// Takes a word or a quoted string (nft quotes interface names).
    pub(super) fn word_or_string(&mut self, what: &'static str) -> R<&'a str> {
        match self.peek() {
            Tok::Word(w) | Tok::Str(w) => {
                self.pos += 1;
                Ok(w)
            }
            _ => self.expected(what),
        }
    }

    /// A table, chain, set or map name.
    pub(super) fn name(&mut self, what: &'static str) -> R<Name> {
        let spot = self.spot();
        let w = self.word(what)?;
        Name::new(w).map_err(|e| (spot, NftErrorKind::Invalid(e)))
    }

    /// `"TEXT"`, as a comment.
    pub(super) fn comment(&mut self) -> R<NftComment> {
        let spot = self.spot();
        match self.peek() {
            Tok::Str(s) => {
                self.pos += 1;
                NftComment::new(s).map_err(|e| (spot, NftErrorKind::Invalid(e)))
            }
            _ => self.expected("a quoted comment"),
        }
    }

    /// A word parsed as `T` (`expected` says what it should be).
    pub(super) fn parsed<T>(
        &mut self,
        expected: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> R<T> {
        let spot = self.spot();
        let w = self.word(expected)?;
        parse(w).ok_or_else(|| bad_value(spot, w, expected))
    }

    /// `ip` or `ip6`.
    pub(super) fn family(&mut self) -> R<Family> {
        self.parsed("a family (ip or ip6)", |w| match w {
            "ip" => Some(Family::Ip),
            "ip6" => Some(Family::Ip6),
            _ => None,
        })
    }

    /// A number, decimal or `0x` hexadecimal, that fits in 32 bits.
    pub(super) fn number(&mut self, expected: &'static str) -> R<u32> {
        self.parsed(expected, number)
    }

    /// An address of `family`.
    pub(super) fn address(&mut self, family: Family) -> R<IpAddr> {
        let spot = self.spot();
        let ip = self.parsed("an IP address", |w| IpAddr::from_str(w).ok())?;
        check_family(spot, family, &ip)?;
        Ok(ip)
    }

    /// A verdict: `accept`, `drop`, `return`, `reject`, `jump CHAIN`, `goto
    /// CHAIN`.
    pub(super) fn verdict(&mut self) -> R<Verdict> {
        let spot = self.spot();
        Ok(match self.word("a verdict")? {
            "accept" => Verdict::Accept,
            "drop" => Verdict::Drop,
            "return" => Verdict::Return,
            "reject" => Verdict::Reject,
            "jump" => Verdict::Jump(self.name("a chain name")?),
            "goto" => Verdict::Goto(self.name("a chain name")?),
            other @ ("continue" | "queue") => {
                return Err((
                    spot,
                    NftErrorKind::Unsupported(format!("the verdict {other}")),
                ));
            }
            other => {
                return Err(bad_value(spot, other, "a verdict"));
            }
        })
    }

    /// `T [. T]*`: a set's or map's key type.
    pub(super) fn key_types(&mut self) -> R<Vec<KeyType>> {
        let mut out = vec![self.key_type()?];
        while self.eat(".") {
            out.push(self.key_type()?);
        }
        Ok(out)
    }

    fn key_type(&mut self) -> R<KeyType> {
        let spot = self.spot();
        match self.word("a key type")? {
            "ipv4_addr" => Ok(KeyType::Ipv4Addr),
            "ipv6_addr" => Ok(KeyType::Ipv6Addr),
            "inet_proto" => Ok(KeyType::InetProto),
            "inet_service" => Ok(KeyType::InetService),
            other => Err((
                spot,
                NftErrorKind::Unsupported(format!("the key type {other}")),
            )),
        }
    }

    /// `V [. V]*`, one value per field of `types`.
    pub(super) fn key(&mut self, types: &[KeyType]) -> R<Vec<KeyValue>> {
        let mut out = Vec::with_capacity(types.len());
        for (i, t) in types.iter().enumerate() {
            if i > 0 {
                self.expect(".")?;
            }
            out.push(match t {
                KeyType::Ipv4Addr => KeyValue::Addr(self.address(Family::Ip)?),
                KeyType::Ipv6Addr => KeyValue::Addr(self.address(Family::Ip6)?),
                KeyType::InetProto => KeyValue::Proto(self.protocol()?),
                KeyType::InetService => {
                    KeyValue::Port(self.parsed("a port (0-65535)", |w| w.parse().ok())?)
                }
            });
        }
        Ok(out)
    }

    /// `tcp`, `udp` or `sctp`.
    pub(super) fn protocol(&mut self) -> R<Protocol> {
        self.parsed("a protocol (tcp, udp or sctp)", |w| match w {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        })
    }

    /// A duration as nft writes it (`10800s`, `3h`, `1m30s`, `2h59m59s996ms`),
    /// in milliseconds.
    pub(super) fn duration(&mut self) -> R<u64> {
        self.parsed("a duration (like 10800s or 3h)", duration_ms)
    }

    /// A timeout in whole seconds.
    pub(super) fn timeout(&mut self) -> R<u32> {
        let spot = self.spot();
        let ms = self.duration()?;
        if ms % 1000 != 0 {
            return Err((
                spot,
                NftErrorKind::Unsupported("a timeout that is not whole seconds".into()),
            ));
        }
        u32::try_from(ms / 1000).map_err(|_| {
            bad_value(
                spot,
                &format!("{ms}ms"),
                "a timeout of at most 2^32-1 seconds",
            )
        })
    }

    /// A base chain's priority: a number (`-110`), or a standard name with an
    /// offset (`dstnat - 10`, `filter`, `srcnat`).
    pub(super) fn priority(&mut self) -> R<i32> {
        let spot = self.spot();
        let w = self.word("a priority")?;
        let base = match w {
            "raw" => -300,
            "mangle" => -150,
            "dstnat" => -100,
            "filter" => 0,
            "security" => 50,
            "srcnat" => 100,
            _ => {
                return w.parse().map_err(|_| bad_value(spot, w, "a priority"));
            }
        };
        let sign = match self.peek() {
            Tok::Word("+") => 1,
            Tok::Word("-") => -1,
            _ => return Ok(base),
        };
        self.bump();
        let spot = self.spot();
        let n = self.number("a priority offset")?;
        i32::try_from(n)
            .ok()
            .and_then(|n| base.checked_add(sign * n))
            .ok_or(bad_value(spot, &n.to_string(), "a priority offset"))
    }
}

/// A number, decimal or `0x` hexadecimal, that fits in 32 bits.
pub(super) fn number(w: &str) -> Option<u32> {
    match w.strip_prefix("0x") {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u32::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) => w.parse().ok(),
        None => None,
    }
}

/// `3h`, `1m30s`, `10800s`, `2h59m59s996ms`: milliseconds.
fn duration_ms(w: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = w;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.bytes().next()? {
                b'd' => (86_400_000, 1),
                b'h' => (3_600_000, 1),
                b'm' => (60_000, 1),
                b's' => (1000, 1),
                _ => return None,
            }
        };
        rest = &rest[len..];
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    Some(total)
}

/// An address or prefix (`10.0.0.0/8`); the prefix keeps its host bits, as
/// written.
pub(super) fn addr_or_net(w: &str) -> Option<Result<IpAddr, IpNet>> {
    match w.split_once('/') {
        Some((ip, len)) => {
            let ip = IpAddr::from_str(ip).ok()?;
            if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            IpNet::new(ip, len.parse().ok()?).ok().map(Err)
        }
        None => IpAddr::from_str(w).ok().map(Ok),
    }
}

/// Refuses an address of the other family.
pub(super) fn check_family(spot: Spot, family: Family, ip: &IpAddr) -> R<()> {
    let found = crate::model::IpFamily::of(ip);
    if found == family.ip_family() {
        Ok(())
    } else {
        Err((
            spot,
            NftErrorKind::FamilyMismatch {
                expected: family.ip_family(),
                found,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations() {
        assert_eq!(number("0x4000"), Some(0x4000));
        assert_eq!(number("0x00004000"), Some(0x4000));
        assert_eq!(number("16384"), Some(16384));
        assert_eq!(number("4294967296"), None);
        for bad in ["", "0x", "-1", "1e3", "0xg", "+1"] {
            assert_eq!(number(bad), None, "{bad}");
        }
        assert_eq!(duration_ms("3h"), Some(10_800_000));
        assert_eq!(duration_ms("10800s"), Some(10_800_000));
        assert_eq!(duration_ms("1m30s"), Some(90_000));
        assert_eq!(duration_ms("1d"), Some(86_400_000));
        assert_eq!(duration_ms("2h59m59s996ms"), Some(10_799_996));
        for bad in ["", "h", "3", "3x", "3hh", "99999999999999999999d"] {
            assert_eq!(duration_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn addresses_and_prefixes() {
        assert_eq!(addr_or_net("1.2.3.4"), Some(Ok("1.2.3.4".parse().unwrap())));
        assert_eq!(
            addr_or_net("10.0.0.1/8"),
            Some(Err(IpNet::new("10.0.0.1".parse().unwrap(), 8).unwrap()))
        );
        for bad in ["1.2.3.4/33", "1.2.3.4/", "1.2.3.4/+8", "x/8", "fd00::/129"] {
            assert_eq!(addr_or_net(bad), None, "{bad}");
        }
    }
}
