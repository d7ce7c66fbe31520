//! nft's words: the tokens of both text forms, each with its line and column.
//!
//! A word is a run of characters other than white space, `"` and the
//! punctuation `{ } ; , @`; a quoted string runs to the next `"` on its line;
//! `#` outside a word starts a comment that runs to the end of the line. Each
//! token records whether white space came before it, which is all that tells
//! kube-proxy's `{ a,b }` (one word split at its commas) from `{ a , b }`.

use super::{NftErrorKind, Spot};

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tok<'a> {
    /// A word (`ip`, `172.30.0.41`, `service-ULMVA6XW-ns1/svc1/tcp/p80`, `!=`).
    Word(&'a str),
    /// The inside of a `"…"` string.
    Str(&'a str),
    /// One of `{ } ; , @`.
    Punct(char),
    /// The end of a line.
    Newline,
}

/// A token and where it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Token<'a> {
    /// The token.
    pub(super) tok: Tok<'a>,
    /// The 1-based line.
    pub(super) line: usize,
    /// The 1-based column, in characters.
    pub(super) column: usize,
    /// True if white space (or the start of the line) comes right before it.
    pub(super) spaced: bool,
}

fn is_punct(c: char) -> bool {
    matches!(c, '{' | '}' | ';' | ',' | '@')
}

/// Splits `text` into tokens; every line, even an empty one, ends with a
/// [`Tok::Newline`].
///
/// # Errors
/// A quote not closed on its line.
pub(super) fn tokenize(text: &str) -> Result<Vec<Token<'_>>, (Spot, NftErrorKind)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let mut chars = line.char_indices().enumerate().peekable();
        let mut spaced = true;
        while let Some((col, (start, c))) = chars.next() {
            let column = col + 1;
            if c.is_whitespace() {
                spaced = true;
                continue;
            }
            let token = |tok| Token {
                tok,
                line: line_no,
                column,
                spaced,
            };
            if c == '#' {
                break;
            } else if is_punct(c) {
                out.push(token(Tok::Punct(c)));
            } else if c == '"' {
                let rest = &line[start + 1..];
                let Some(len) = rest.find('"') else {
                    return Err((
                        Spot {
                            line: line_no,
                            column,
                        },
                        NftErrorKind::UnterminatedQuote,
                    ));
                };
                out.push(token(Tok::Str(&rest[..len])));
                // Skip the string and its closing quote.
                let end = start + 1 + len;
                while chars.peek().is_some_and(|&(_, (at, _))| at <= end) {
                    chars.next();
                }
            } else {
                let mut end = start + c.len_utf8();
                while let Some(&(_, (at, next))) = chars.peek() {
                    if next.is_whitespace() || is_punct(next) || next == '"' {
                        break;
                    }
                    end = at + next.len_utf8();
                    chars.next();
                }
                out.push(token(Tok::Word(&line[start..end])));
            }
            spaced = false;
        }
        out.push(Token {
            tok: Tok::Newline,
            line: line_no,
            column: line.chars().count() + 1,
            spaced: true,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<(Tok<'_>, bool)> {
        tokenize(text)
            .unwrap()
            .into_iter()
            .map(|t| (t.tok, t.spaced))
            .collect()
    }

    #[test]
    fn commas_keep_whether_they_were_spaced() {
        assert_eq!(
            words("{ a,b }"),
            vec![
                (Tok::Punct('{'), true),
                (Tok::Word("a"), true),
                (Tok::Punct(','), false),
                (Tok::Word("b"), false),
                (Tok::Punct('}'), true),
                (Tok::Newline, true),
            ]
        );
        assert_eq!(words("a , b")[1], (Tok::Punct(','), true));
    }

    #[test]
    fn strings_comments_and_columns() {
        let t = tokenize("  x \"a ; b\" y # z\n@set;").unwrap();
        let got: Vec<_> = t.iter().map(|t| (t.tok, t.line, t.column)).collect();
        assert_eq!(
            got,
            vec![
                (Tok::Word("x"), 1, 3),
                (Tok::Str("a ; b"), 1, 5),
                (Tok::Word("y"), 1, 13),
                (Tok::Newline, 1, 18),
                (Tok::Punct('@'), 2, 1),
                (Tok::Word("set"), 2, 2),
                (Tok::Punct(';'), 2, 5),
                (Tok::Newline, 2, 6),
            ]
        );
        assert!(tokenize("comment \"open").is_err());
        // Multi-byte characters count as one column.
        let t = tokenize("é x").unwrap();
        assert_eq!((t[1].tok, t[1].column), (Tok::Word("x"), 3));
    }
}
