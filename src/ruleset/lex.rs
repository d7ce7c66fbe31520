//! Splitting one line into words, as `iptables-restore` does: whitespace separates,
//! `"…"` groups (the quotes are removed), and inside double quotes a backslash
//! makes the next character literal (`\"`, `\\`, `\'` as `iptables-save`
//! writes them). A single quote is an ordinary character, as in
//! `iptables-restore`.
//!
//! The one lexer of rule text: [`crate::parse`] reads lines with it, and
//! [`RawText`](super::RawText) uses it to refuse text whose quotes do not close.

/// One word of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    /// The word with quotes removed.
    pub text: String,
    /// Byte offset of its first character in the line.
    pub start: usize,
    /// Byte offset just after its last character.
    pub end: usize,
    /// True if any part of it was quoted (a quoted word is never an option).
    pub quoted: bool,
}

impl Token {
    /// True for an option word (`-s`, `--dport`), not a value.
    pub fn is_option(&self) -> bool {
        !self.quoted
            && self.text.starts_with('-')
            && self.text.len() > 1
            && !self.text[1..].bytes().all(|b| b.is_ascii_digit())
    }
}

/// Splits a line into tokens.
///
/// # Errors
/// The byte offset of a double quote that is not closed on the line.
pub(crate) fn tokenize(line: &str) -> Result<Vec<Token>, usize> {
    let mut out = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut text = String::new();
        let mut quote: Option<usize> = None;
        let mut quoted = false;
        let mut end = start;
        while let Some(&(i, c)) = chars.peek() {
            match quote {
                None if c.is_whitespace() => break,
                None if c == '"' => {
                    quote = Some(i);
                    quoted = true;
                }
                None => text.push(c),
                Some(_) if c == '"' => quote = None,
                Some(_) if c == '\\' => {
                    chars.next();
                    end = i + 1;
                    // Any escaped character is taken literally; a backslash at
                    // the end of the line leaves the quote open.
                    if let Some(&(j, n)) = chars.peek() {
                        text.push(n);
                        chars.next();
                        end = j + n.len_utf8();
                    }
                    continue;
                }
                Some(_) => text.push(c),
            }
            chars.next();
            end = i + c.len_utf8();
        }
        if let Some(at) = quote {
            return Err(at);
        }
        out.push(Token {
            text,
            start,
            end,
            quoted,
        });
    }
    Ok(out)
}

/// True if `text` splits into words without an unterminated double quote.
pub(crate) fn quotes_balanced(text: &str) -> bool {
    tokenize(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        tokenize(line)
            .unwrap()
            .into_iter()
            .map(|t| t.text)
            .collect()
    }

    #[test]
    fn quotes_group_and_disappear() {
        assert_eq!(
            words(r#"-A X -m comment --comment "a b" -j Y"#),
            ["-A", "X", "-m", "comment", "--comment", "a b", "-j", "Y"]
        );
        // A single quote is an ordinary character (iptables-restore does not
        // group with it).
        assert_eq!(words(r#"--comment it's"#), ["--comment", "it's"]);
        assert_eq!(words(r#"--comment 'a b'"#), ["--comment", "'a", "b'"]);
        assert_eq!(
            words(r#"--comment "say \"hi\"""#),
            ["--comment", "say \"hi\""]
        );
    }

    #[test]
    fn backslash_escapes_any_character_inside_double_quotes() {
        assert_eq!(
            words(r#"--comment "\'dapp_OpenSSH\'""#),
            ["--comment", "'dapp_OpenSSH'"]
        );
        assert_eq!(words(r#""a\\b" "\x""#), ["a\\b", "x"]);
        // Outside quotes a backslash is an ordinary character.
        assert_eq!(words(r#"a\"b""#), ["a\\b"]);
        assert_eq!(tokenize(r#"--comment "abc\"#).unwrap_err(), 10);
    }

    #[test]
    fn spans_cover_the_quotes() {
        let line = r#"-m comment --comment "a b""#;
        let t = tokenize(line).unwrap();
        assert_eq!(&line[t[3].start..t[3].end], "\"a b\"");
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        assert_eq!(tokenize(r#"-A X --comment "abc"#).unwrap_err(), 15);
    }
}
