//! Splitting one line into words, as `iptables-restore` does: whitespace separates,
//! `"…"` and `'…'` group (the quotes are removed), `\"` inside double quotes is a
//! literal quote.

use super::ErrorKind;

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
/// [`ErrorKind::UnterminatedQuote`] at the opening quote, with its byte offset.
pub(crate) fn tokenize(line: &str) -> Result<Vec<Token>, (usize, ErrorKind)> {
    let mut out = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut text = String::new();
        let mut quote: Option<(char, usize)> = None;
        let mut quoted = false;
        let mut end = start;
        while let Some(&(i, c)) = chars.peek() {
            match quote {
                None if c.is_whitespace() => break,
                None if c == '"' || c == '\'' => {
                    quote = Some((c, i));
                    quoted = true;
                }
                None => text.push(c),
                Some((q, _)) if c == q => quote = None,
                Some(('"', _)) if c == '\\' => {
                    chars.next();
                    end = i + 1;
                    match chars.peek() {
                        Some(&(j, n)) if n == '"' || n == '\\' => {
                            text.push(n);
                            chars.next();
                            end = j + 1;
                        }
                        _ => text.push('\\'),
                    }
                    continue;
                }
                Some(_) => text.push(c),
            }
            chars.next();
            end = i + c.len_utf8();
        }
        if let Some((_, at)) = quote {
            return Err((at, ErrorKind::UnterminatedQuote));
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
        assert_eq!(words(r#"--comment 'it''s'"#), ["--comment", "its"]);
        assert_eq!(
            words(r#"--comment "say \"hi\"""#),
            ["--comment", "say \"hi\""]
        );
    }

    #[test]
    fn spans_cover_the_quotes() {
        let line = r#"-m comment --comment "a b""#;
        let t = tokenize(line).unwrap();
        assert_eq!(&line[t[3].start..t[3].end], "\"a b\"");
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        assert_eq!(
            tokenize(r#"-A X --comment "abc"#).unwrap_err(),
            (15, ErrorKind::UnterminatedQuote)
        );
    }
}
