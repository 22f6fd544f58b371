//! Tokens of the Smart View query language (SPEC §3).

use super::QueryError;

/// What a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `,`
    Comma,
    /// `:`
    Colon,
    /// `<`
    Lt,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `>=`
    Ge,
    /// A run of characters without whitespace or punctuation: field names,
    /// keywords, bare values (`Lost`, `0`, `-created`, `custom.Source`).
    Word(String),
    /// A double-quoted string, escapes resolved.
    Str(String),
}

/// A token and the char offsets it spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// What it is.
    pub kind: TokenKind,
    /// The char offset of its first character.
    pub start: usize,
    /// The char offset just past its last character.
    pub end: usize,
}

/// Characters that end a bare word.
fn ends_word(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | '"' | ':' | ',' | '<' | '>' | '=')
}

/// Splits `input` into tokens; positions are char offsets (SPEC §3: a syntax
/// error names its position).
pub fn tokenize(input: &str) -> Result<Vec<Token>, QueryError> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let start = i;
        let simple = match c {
            '(' => Some(TokenKind::LParen),
            ')' => Some(TokenKind::RParen),
            ',' => Some(TokenKind::Comma),
            ':' => Some(TokenKind::Colon),
            _ => None,
        };
        if let Some(kind) = simple {
            i += 1;
            tokens.push(Token {
                kind,
                start,
                end: i,
            });
            continue;
        }
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let kind = match c {
            '<' | '>' => {
                let with_eq = chars.get(i + 1) == Some(&'=');
                i += if with_eq { 2 } else { 1 };
                match (c, with_eq) {
                    ('<', false) => TokenKind::Lt,
                    ('<', true) => TokenKind::Le,
                    ('>', false) => TokenKind::Gt,
                    _ => TokenKind::Ge,
                }
            }
            '=' => {
                return Err(QueryError::new(
                    start,
                    "':' or a comparison (<, >, <=, >=)",
                    "'='",
                ))
            }
            '"' => {
                let (text, next) = read_string(&chars, i)?;
                i = next;
                TokenKind::Str(text)
            }
            _ => {
                while chars.get(i).is_some_and(|&c| !ends_word(c)) {
                    i += 1;
                }
                TokenKind::Word(chars[start..i].iter().collect())
            }
        };
        tokens.push(Token {
            kind,
            start,
            end: i,
        });
    }
    Ok(tokens)
}

/// Reads the string whose opening quote is at `open`; returns its text and
/// the offset after the closing quote.
fn read_string(chars: &[char], open: usize) -> Result<(String, usize), QueryError> {
    let mut text = String::new();
    let mut i = open + 1;
    loop {
        match chars.get(i) {
            None => {
                return Err(QueryError::new(
                    chars.len(),
                    format!("a closing '\"' for the string opened at {open}"),
                    "end of query",
                ))
            }
            Some('"') => return Ok((text, i + 1)),
            Some('\\') => {
                let escaped = match chars.get(i + 1) {
                    Some('"') => '"',
                    Some('\\') => '\\',
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some('r') => '\r',
                    Some(other) => {
                        return Err(QueryError::new(
                            i,
                            r#"an escape (\" \\ \n \t \r)"#,
                            format!("'\\{other}'"),
                        ))
                    }
                    None => {
                        return Err(QueryError::new(
                            i + 1,
                            "an escaped character after '\\'",
                            "end of query",
                        ))
                    }
                };
                text.push(escaped);
                i += 2;
            }
            Some(&c) => {
                text.push(c);
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<TokenKind> {
        tokenize(s)
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.kind)
            .collect()
    }

    #[test]
    fn words_strings_and_operators() {
        assert_eq!(
            kinds(r#"custom."Lead Source":"a\"b" x<=-1 sort:-"N""#),
            vec![
                TokenKind::Word("custom.".into()),
                TokenKind::Str("Lead Source".into()),
                TokenKind::Colon,
                TokenKind::Str("a\"b".into()),
                TokenKind::Word("x".into()),
                TokenKind::Le,
                TokenKind::Word("-1".into()),
                TokenKind::Word("sort".into()),
                TokenKind::Colon,
                TokenKind::Word("-".into()),
                TokenKind::Str("N".into()),
            ]
        );
    }

    #[test]
    fn positions_are_char_offsets() {
        let toks = tokenize("é \"ü\" >").unwrap_or_default();
        let spans: Vec<(usize, usize)> = toks.iter().map(|t| (t.start, t.end)).collect();
        assert_eq!(spans, vec![(0, 1), (2, 5), (6, 7)]);
    }
}
