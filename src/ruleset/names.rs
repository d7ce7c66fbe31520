//! The validated names and words of rule text: chain names, comments, interface
//! names, probabilities, words and verbatim text, and [`IrError`] for what they
//! refuse. Each is checked once, when built, so nothing printed from it can break
//! a rule line.

use std::fmt;

use arrayvec::ArrayString;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::text;

/// Why a name, comment or value was refused by the IR.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IrError {
    /// A chain name that iptables would refuse or that could break a rule line.
    #[error("invalid chain name {name:?}: {reason}")]
    ChainName {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A comment that could not be written safely.
    #[error("invalid comment {comment:?}: {reason}")]
    Comment {
        /// The refused comment.
        comment: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An interface name the kernel would refuse.
    #[error("invalid interface name {name:?}: {reason}")]
    Interface {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A probability outside [0, 1] (or `1/0`).
    #[error("invalid probability {0}: not between 0 and 1")]
    Probability(String),
    /// A word of rule text (set name, protocol, reject type) that could break a rule line.
    #[error("invalid word {word:?}: {reason}")]
    Word {
        /// The refused text.
        word: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Verbatim rule text that is empty, spans lines or leaves a quote open.
    #[error("invalid verbatim rule text {text:?}: {reason}")]
    RawText {
        /// The refused text.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Characters allowed in chain names, interface names and nfacct names:
/// nothing that the restore tokenizer treats specially.
fn is_plain_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'@' | b':'))
}

/// A chain name: 1 to 28 bytes of `[A-Za-z0-9._+@:-]`, not starting with `-` or `!`.
///
/// Stored inline (no heap allocation, cheap to clone), so rules can name chains
/// freely: a large cluster's ruleset holds hundreds of thousands of them.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChainName(Name);

/// A fixed name of the crate's, or any other, stored inline.
#[derive(Clone)]
enum Name {
    Fixed(&'static str),
    Inline(ArrayString<{ ChainName::MAX_LEN }>),
}

impl ChainName {
    /// The longest chain name iptables accepts.
    pub const MAX_LEN: usize = 28;

    /// Validates a chain name.
    ///
    /// # Errors
    /// [`IrError::ChainName`] if the name is empty, too long, or has characters that
    /// iptables or the restore format would treat specially.
    pub fn new(name: impl Into<String>) -> Result<Self, IrError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > Self::MAX_LEN {
            Some("longer than 28 bytes")
        } else if name.starts_with('-') || name.starts_with('!') {
            Some("starts with '-' or '!'")
        } else if !is_plain_token(&name) {
            Some("has a character other than A-Z a-z 0-9 . _ + @ : -")
        } else {
            None
        };
        match (reason, ArrayString::from(&name)) {
            (None, Ok(inline)) => Ok(ChainName(Name::Inline(inline))),
            (reason, _) => Err(IrError::ChainName {
                name,
                reason: reason.unwrap_or("longer than 28 bytes"),
            }),
        }
    }

    /// A name known valid when the crate is written (the fixed `KUBE-*` and built-in
    /// chains); a unit test checks each one with [`ChainName::new`].
    pub(crate) const fn fixed(name: &'static str) -> Self {
        ChainName(Name::Fixed(name))
    }

    /// A name the crate built from a fixed prefix and a hash (ASCII by
    /// construction, at most 25 bytes).
    pub(crate) fn from_parts(prefix: &str, hash: &str) -> Self {
        let mut name = ArrayString::new();
        name.push_str(prefix);
        name.push_str(hash);
        debug_assert!(ChainName::new(name.as_str()).is_ok(), "{name}");
        ChainName(Name::Inline(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Name::Fixed(name) => name,
            Name::Inline(name) => name,
        }
    }
}

impl fmt::Debug for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ChainName").field(&self.as_str()).finish()
    }
}

// Equality, order and hash are the name's, however it is stored; hashing as `str`
// hashes lets maps keyed by name be searched with a `&str`.
impl PartialEq for ChainName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ChainName {}

impl PartialOrd for ChainName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ChainName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for ChainName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for ChainName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl TryFrom<String> for ChainName {
    type Error = IrError;
    fn try_from(s: String) -> Result<Self, IrError> {
        ChainName::new(s)
    }
}

impl From<ChainName> for String {
    fn from(c: ChainName) -> String {
        c.as_str().to_owned()
    }
}

impl fmt::Display for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text of a `-m comment --comment` match: at most 255 bytes of printable ASCII
/// without quotes or backslashes, not starting with `-` or `!`. It prints quoted
/// when it contains a space, as kube-proxy writes it; this is the one place where
/// rule text is quoted. (A comment read from a dump that does not fit is kept
/// verbatim as [`Match::OtherComment`](super::Match::OtherComment).)
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Comment(CommentText);

/// A comment's text: inline when short (most are: `ns/svc:port -> ip:port`), so
/// the hundreds of thousands of rules of a large cluster allocate none.
#[derive(Clone)]
enum CommentText {
    Inline(ArrayString<{ Comment::INLINE }>),
    Heap(Box<str>),
}

impl Comment {
    /// The longest comment the kernel's comment match stores.
    pub const MAX_LEN: usize = 255;

    /// The longest comment stored without a heap allocation.
    const INLINE: usize = 56;

    /// Validates a comment.
    ///
    /// # Errors
    /// [`IrError::Comment`] if it is empty, longer than 255 bytes, starts with `-`
    /// or `!` (it would print unquoted and read back as an option or a negation),
    /// or has a character outside printable ASCII or one of `"`, `'`, `\`.
    pub fn new(text: impl Into<String>) -> Result<Self, IrError> {
        let text = text.into();
        match Self::problem(&text) {
            Some(reason) => Err(IrError::Comment {
                comment: text,
                reason,
            }),
            None => Ok(Comment(match ArrayString::from(&text) {
                Ok(inline) => CommentText::Inline(inline),
                Err(_) => CommentText::Heap(text.into_boxed_str()),
            })),
        }
    }

    /// The comment made of `parts` written one after the other, validated as
    /// [`Comment::new`] validates, without an intermediate `String` when it is short.
    ///
    /// # Errors
    /// As [`Comment::new`], for the joined text.
    pub fn from_parts(parts: &[&str]) -> Result<Self, IrError> {
        let mut inline = ArrayString::<{ Self::INLINE }>::new();
        for part in parts {
            if inline.try_push_str(part).is_err() {
                return Self::new(parts.concat());
            }
        }
        match Self::problem(&inline) {
            Some(reason) => Err(IrError::Comment {
                comment: inline.as_str().to_owned(),
                reason,
            }),
            None => Ok(Comment(CommentText::Inline(inline))),
        }
    }

    /// What is wrong with `text` as a comment, if anything.
    fn problem(text: &str) -> Option<&'static str> {
        if text.is_empty() {
            Some("empty")
        } else if text.len() > Self::MAX_LEN {
            Some("longer than 255 bytes")
        } else if text.starts_with('-') || text.starts_with('!') {
            Some("starts with '-' or '!'")
        } else if !text
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && !matches!(b, b'"' | b'\'' | b'\\'))
        {
            Some("has a character other than printable ASCII, or a quote or backslash")
        } else {
            None
        }
    }

    /// The comment's text, unquoted.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            CommentText::Inline(text) => text,
            CommentText::Heap(text) => text,
        }
    }
}

impl fmt::Debug for Comment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Comment").field(&self.as_str()).finish()
    }
}

// Equality, order and hash are the text's, however it is stored.
impl PartialEq for Comment {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Comment {}

impl PartialOrd for Comment {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Comment {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for Comment {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl TryFrom<String> for Comment {
    type Error = IrError;
    fn try_from(s: String) -> Result<Self, IrError> {
        Comment::new(s)
    }
}

impl From<Comment> for String {
    fn from(c: Comment) -> String {
        match c.0 {
            CommentText::Inline(text) => text.as_str().to_owned(),
            CommentText::Heap(text) => text.into_string(),
        }
    }
}

impl Comment {
    /// Writes the comment, quoted when it contains a space.
    pub(crate) fn write_to<W: fmt::Write>(&self, f: &mut W) -> fmt::Result {
        let text = self.as_str();
        if text.contains(' ') {
            f.write_str("\"")?;
            f.write_str(text)?;
            f.write_str("\"")
        } else {
            f.write_str(text)
        }
    }
}

impl fmt::Display for Comment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

/// A network interface name (at most 15 bytes), optionally a prefix (`veth+`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Interface {
    name: String,
    prefix: bool,
}

impl Interface {
    /// Validates an interface name; `prefix` matches every interface whose name starts with it.
    ///
    /// # Errors
    /// [`IrError::Interface`] if the name is empty, longer than 15 bytes, or has a
    /// character outside `[A-Za-z0-9._@:-]`.
    pub fn new(name: impl Into<String>, prefix: bool) -> Result<Self, IrError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > 15 {
            Some("longer than 15 bytes")
        } else if name.contains('+') || !is_plain_token(&name) || name.starts_with('-') {
            Some("has a character other than A-Z a-z 0-9 . _ @ : - or starts with '-'")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(IrError::Interface { name, reason }),
            None => Ok(Interface { name, prefix }),
        }
    }

    /// The name (without `+`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True if this matches every interface whose name starts with [`Self::name`].
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.prefix {
            f.write_str("+")?;
        }
        Ok(())
    }
}

/// A probability in [0, 1] for the `statistic` match, printed with ten decimals
/// as kube-proxy prints it. The compiler only makes `1/n` ([`Probability::one_in`]);
/// 0 comes from dumps (`iptables` accepts it and prints `0.00000000000`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Probability(f64);

impl Probability {
    /// `1/n`: the chance that the first of `n` remaining endpoints is picked.
    ///
    /// # Errors
    /// [`IrError::Probability`] if `n` is 0.
    pub fn one_in(n: usize) -> Result<Self, IrError> {
        if n == 0 {
            return Err(IrError::Probability("1/0".into()));
        }
        Ok(Probability(1.0 / n as f64))
    }

    /// A probability from its value.
    ///
    /// # Errors
    /// [`IrError::Probability`] unless `0 <= p <= 1`.
    pub fn new(p: f64) -> Result<Self, IrError> {
        if (0.0..=1.0).contains(&p) {
            // -0.0 is 0.0: one value, one bit pattern.
            let p = if p == 0.0 { 0.0 } else { p };
            Ok(Probability(p))
        } else {
            Err(IrError::Probability(p.to_string()))
        }
    }

    /// The value.
    pub fn value(self) -> f64 {
        self.0
    }
}

impl PartialEq for Probability {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Probability {}

impl std::hash::Hash for Probability {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

impl fmt::Display for Probability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        text::probability(f, self.0)
    }
}

/// One word of rule text: printable ASCII without spaces, quotes or backslashes,
/// not starting with `-` or `!` (ipset names, `--reject-with` types, protocol names).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Word(String);

impl Word {
    /// Validates a word.
    ///
    /// # Errors
    /// [`IrError::Word`] if it is empty, longer than 255 bytes, starts with `-` or
    /// `!`, or has a character outside printable ASCII or one of space, `"`, `'`, `\`.
    ///
    /// ```
    /// use svcnat::ruleset::Word;
    /// assert!(Word::new("icmp-port-unreachable").is_ok());
    /// assert!(Word::new("two words").is_err());
    /// ```
    pub fn new(text: impl Into<String>) -> Result<Self, IrError> {
        let text = text.into();
        let reason = if text.is_empty() {
            Some("empty")
        } else if text.len() > 255 {
            Some("longer than 255 bytes")
        } else if text.starts_with('-') || text.starts_with('!') {
            Some("starts with '-' or '!'")
        } else if !text
            .bytes()
            .all(|b| (b'!'..=b'~').contains(&b) && !matches!(b, b'"' | b'\'' | b'\\'))
        {
            Some("has a space, a quote, a backslash or a character outside printable ASCII")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(IrError::Word { word: text, reason }),
            None => Ok(Word(text)),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Word {
    type Error = IrError;
    fn try_from(s: String) -> Result<Self, IrError> {
        Word::new(s)
    }
}

impl From<Word> for String {
    fn from(w: Word) -> String {
        w.0
    }
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Rule text kept verbatim (a match or target svcnat does not model), exactly as
/// it appeared on its line, quotes included. One line: no line break or NUL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RawText(String);

impl RawText {
    /// Validates verbatim text.
    ///
    /// # Errors
    /// [`IrError::RawText`] if it is empty (or only spaces), contains a line break,
    /// a NUL or another control character, or has a double quote that is not
    /// closed (as `iptables-restore` splits words), which would swallow the rest
    /// of the rendered line.
    ///
    /// ```
    /// use svcnat::ruleset::RawText;
    /// assert!(RawText::new("-m limit --limit 5/min").is_ok());
    /// assert!(RawText::new("-j LOG --log-prefix \"a \\\" b\"").is_ok());
    /// assert!(RawText::new("-j ACCEPT\n-A X").is_err());
    /// assert!(RawText::new("-j LOG --log-prefix \"open").is_err());
    /// ```
    pub fn new(text: impl Into<String>) -> Result<Self, IrError> {
        let text = text.into();
        let reason = if text.trim().is_empty() {
            Some("empty")
        } else if text.chars().any(|c| c.is_control()) {
            Some("has a line break or another control character")
        } else if !super::lex::quotes_balanced(&text) {
            Some("has an unterminated quote")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(IrError::RawText { text, reason }),
            None => Ok(RawText(text)),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RawText {
    type Error = IrError;
    fn try_from(s: String) -> Result<Self, IrError> {
        RawText::new(s)
    }
}

impl From<RawText> for String {
    fn from(w: RawText) -> String {
        w.0
    }
}

impl fmt::Display for RawText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
