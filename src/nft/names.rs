//! The validated names and comments of nftables objects. Each is checked once, when
//! built, so nothing printed from it can end a command or start another one.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a name, comment or value was refused by the nftables IR.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NftError {
    /// A table, chain, set or map name that nft would refuse or that could break a
    /// command.
    #[error("invalid nftables name {name:?}: {reason}")]
    Name {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A comment that could not be written safely.
    #[error("invalid nftables comment {comment:?}: {reason}")]
    Comment {
        /// The refused comment.
        comment: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An interface name (or prefix) that could break a rule.
    #[error("invalid interface name {name:?}: {reason}")]
    Interface {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A rule that cannot be built as asked (a `numgen` map with no targets, a
    /// vmap key with no fields).
    #[error("invalid nftables rule: {0}")]
    Rule(&'static str),
}

/// The name of a table, chain, set or map: 1 to 256 bytes of `[A-Za-z0-9_./-]`,
/// starting with a letter, `_` or `.` (knftables' `NameLengthMax`; the characters
/// nft's scanner takes as one word).
///
/// ```
/// use svcnat::nft::Name;
/// assert!(Name::new("service-ULMVA6XW-ns1/svc1/tcp/p80").is_ok());
/// assert!(Name::new("x ; delete table ip filter").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(Box<str>);

impl Name {
    /// The longest name knftables writes.
    pub const MAX_LEN: usize = 256;

    /// Validates a name.
    ///
    /// # Errors
    /// [`NftError::Name`] if it is empty, longer than 256 bytes, does not start
    /// with a letter, `_` or `.`, or has a character outside `[A-Za-z0-9_./-]`.
    pub fn new(name: impl Into<String>) -> Result<Self, NftError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > Self::MAX_LEN {
            Some("longer than 256 bytes")
        } else if !name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'.')
        {
            Some("does not start with a letter, '_' or '.'")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-'))
        {
            Some("has a character other than A-Z a-z 0-9 _ . / -")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(NftError::Name { name, reason }),
            None => Ok(Name(name.into_boxed_str())),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name the crate spells itself (`services`, `mark-for-masquerade`): valid by
    /// construction, which a unit test of each user checks.
    pub(crate) fn fixed(name: &'static str) -> Name {
        debug_assert!(Name::new(name).is_ok(), "{name:?}");
        Name(name.into())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Name").field(&self.as_str()).finish()
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = NftError;
    fn try_from(s: String) -> Result<Self, NftError> {
        Name::new(s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0.into()
    }
}

/// A comment on a table, chain, set, map, rule or element: at most 128 bytes
/// (knftables' `CommentLengthMax`) of printable ASCII without `"` or `\`. It is
/// always written inside double quotes, so spaces and `;` cannot end the command.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NftComment(Box<str>);

impl NftComment {
    /// The longest comment knftables writes.
    pub const MAX_LEN: usize = 128;

    /// Validates a comment.
    ///
    /// # Errors
    /// [`NftError::Comment`] if it is empty, longer than 128 bytes, or has a
    /// character outside printable ASCII, or a `"` or `\`.
    pub fn new(text: impl Into<String>) -> Result<Self, NftError> {
        let text = text.into();
        let reason = if text.is_empty() {
            Some("empty")
        } else if text.len() > Self::MAX_LEN {
            Some("longer than 128 bytes")
        } else if !text
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && !matches!(b, b'"' | b'\\'))
        {
            Some("has a character other than printable ASCII, or a double quote or backslash")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(NftError::Comment {
                comment: text,
                reason,
            }),
            None => Ok(NftComment(text.into_boxed_str())),
        }
    }

    /// [`NftComment::new`] for the first 128 bytes of `text` (cut on a character
    /// boundary): for a comment that only describes, where a long name should not
    /// make the whole object fail.
    ///
    /// ```
    /// use svcnat::nft::NftComment;
    /// let long = format!("{}/{}:http", "n".repeat(62), "s".repeat(63));
    /// assert_eq!(NftComment::truncated(&long).unwrap().as_str().len(), 128);
    /// ```
    ///
    /// # Errors
    /// As [`NftComment::new`], for the kept part.
    pub fn truncated(text: &str) -> Result<Self, NftError> {
        let mut end = text.len().min(Self::MAX_LEN);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Self::new(&text[..end])
    }

    /// The text, unquoted.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NftComment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NftComment").field(&self.as_str()).finish()
    }
}

impl fmt::Display for NftComment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for NftComment {
    type Error = NftError;
    fn try_from(s: String) -> Result<Self, NftError> {
        NftComment::new(s)
    }
}

impl From<NftComment> for String {
    fn from(c: NftComment) -> String {
        c.0.into()
    }
}

/// An interface name for `iifname`, or a prefix of one (written `veth*`): 1 to 15
/// bytes of `[A-Za-z0-9_.-]`, starting with a letter (written unquoted, as
/// kube-proxy writes it, nft would read a leading digit as a number).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IfName {
    name: Box<str>,
    prefix: bool,
}

impl IfName {
    /// Validates an interface name; `prefix` matches every interface whose name
    /// starts with it.
    ///
    /// # Errors
    /// [`NftError::Interface`] if it is empty, longer than 15 bytes, has a
    /// character outside `[A-Za-z0-9_.-]`, or does not start with a letter.
    pub fn new(name: impl Into<String>, prefix: bool) -> Result<Self, NftError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > 15 {
            Some("longer than 15 bytes")
        } else if !name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            // Written unquoted, as kube-proxy writes it, a name that starts with a
            // digit reads as a number (`0x10` is interface "16").
            Some("has a character other than A-Z a-z 0-9 _ . - or does not start with a letter")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(NftError::Interface { name, reason }),
            None => Ok(IfName {
                name: name.into_boxed_str(),
                prefix,
            }),
        }
    }

    /// The name (without `*`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True if this matches every interface whose name starts with [`Self::name`].
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.prefix {
            f.write_str("*")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_what_could_end_a_command() {
        for bad in [
            "", "1abc", "-x", "a b", "a;b", "a\"b", "a{b", "a\nb", "a@b", "a#b",
        ] {
            assert!(Name::new(bad).is_err(), "{bad:?}");
        }
        assert!(Name::new("a".repeat(257)).is_err());
        for good in [
            "services",
            "_x",
            ".x",
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80",
        ] {
            assert!(Name::new(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn comments_refuse_quotes_and_control_characters() {
        for bad in ["", "a\"b", "a\\b", "a\nb", "\u{e9}"] {
            assert!(NftComment::new(bad).is_err(), "{bad:?}");
        }
        assert!(NftComment::new("x".repeat(129)).is_err());
        assert!(NftComment::new("ns1/svc1:p80 ; add rule x").is_ok());
    }

    #[test]
    fn interface_names() {
        assert_eq!(IfName::new("veth", true).unwrap().to_string(), "veth*");
        assert_eq!(IfName::new("cbr0", false).unwrap().to_string(), "cbr0");
        for bad in ["", "a*", "-a", "a b", "abcdefghijklmnop", "0x10", "1ab"] {
            assert!(IfName::new(bad, false).is_err(), "{bad:?}");
        }
    }
}
