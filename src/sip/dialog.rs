//! SIP dialogs (RFC 3261 §12), sans-IO: the state both ends of a call keep
//! to build in-dialog requests (BYE, re-INVITE, INFO, OPTIONS, ACK for 2xx)
//! and to check the requests they receive; and [`NameAddr`], the
//! `name-addr`/`addr-spec` parser used for From, To, Contact, Route and
//! Record-Route values (RFC 3261 §20.10, §25.1), which keeps URIs as the
//! peer wrote them (rsipstack's typed Contact drops URI headers).

use std::fmt;

use super::syntax;

/// Why a `name-addr` / `addr-spec` value could not be parsed (RFC 3261 §25.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameAddrError {
    /// Nothing but whitespace.
    #[error("empty address")]
    Empty,
    /// A quoted display name or parameter value is not closed.
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    /// `<` without `>`.
    #[error("unclosed '<'")]
    UnclosedAngle,
    /// Text after the URI that is not `;param`.
    #[error("unexpected text after the address")]
    TrailingGarbage,
    /// `<>` or a parameter-only value.
    #[error("empty URI")]
    EmptyUri,
}

/// One `name-addr` or `addr-spec` with its header parameters (RFC 3261
/// §20.10: without angle brackets, every `;param` belongs to the header,
/// not to the URI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// The display name as written (quotes kept), if any.
    pub display_name: Option<String>,
    /// The URI text, exactly as written between `<` and `>`.
    pub uri: String,
    /// Header parameters in order: lowercase name, value as written.
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    /// Parses one value (RFC 3261 §25.1 `name-addr` / `addr-spec`).
    pub fn parse(input: &str) -> Result<Self, NameAddrError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(NameAddrError::Empty);
        }
        let (display_name, uri, rest) = if let Some(after_quote) = s.strip_prefix('"') {
            let close = find_closing_quote(after_quote).ok_or(NameAddrError::UnterminatedQuote)?;
            let display = &s[..close + 2];
            let after = s[close + 2..].trim_start();
            let inner = after
                .strip_prefix('<')
                .ok_or(NameAddrError::TrailingGarbage)?;
            let end = inner.find('>').ok_or(NameAddrError::UnclosedAngle)?;
            (Some(display.to_string()), &inner[..end], &inner[end + 1..])
        } else if let Some(lt) = s.find('<') {
            let display = s[..lt].trim();
            let inner = &s[lt + 1..];
            let end = inner.find('>').ok_or(NameAddrError::UnclosedAngle)?;
            let display = (!display.is_empty()).then(|| display.to_string());
            (display, &inner[..end], &inner[end + 1..])
        } else {
            let end = s.find(';').unwrap_or(s.len());
            (None, &s[..end], &s[end..])
        };
        let uri = uri.trim();
        if uri.is_empty() {
            return Err(NameAddrError::EmptyUri);
        }
        Ok(NameAddr {
            display_name,
            uri: uri.to_string(),
            params: parse_header_params(rest)?,
        })
    }

    /// Parses a comma-separated list (several Contact / Route values in
    /// one header line, RFC 3261 §7.3.1); commas inside quotes or `<…>`
    /// do not split.
    pub fn parse_list(input: &str) -> Result<Vec<Self>, NameAddrError> {
        split_list(input)?.into_iter().map(Self::parse).collect()
    }

    /// The value of header parameter `name` (case-insensitive): `None` if
    /// absent, `Some(None)` for a flag such as `;lr`.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// The `tag` parameter (RFC 3261 §19.3).
    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }

    /// This address without its `tag` (the dialog's local/remote URI
    /// keeps the other parameters, RFC 3261 §12.1.1).
    pub fn without_tag(&self) -> NameAddr {
        let mut a = self.clone();
        a.params.retain(|(n, _)| n != "tag");
        a
    }

    /// The URI parsed by rsipstack (for user, host and port).
    pub fn parsed_uri(&self) -> Result<syntax::Uri, syntax::Error> {
        syntax::Uri::try_from(self.uri.as_str())
    }
}

impl fmt::Display for NameAddr {
    /// Always prints the `name-addr` form (`<uri>`), which keeps URI
    /// parameters and headers apart from header parameters (RFC 3261 §20.10).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display_name {
            write!(f, "{d} ")?;
        }
        write!(f, "<{}>", self.uri)?;
        for (n, v) in &self.params {
            match v {
                Some(v) => write!(f, ";{n}={v}")?,
                None => write!(f, ";{n}")?,
            }
        }
        Ok(())
    }
}

/// Index, within `s` (which follows an opening quote), of the closing quote.
fn find_closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

fn parse_header_params(rest: &str) -> Result<Vec<(String, Option<String>)>, NameAddrError> {
    let rest = rest.trim();
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let body = rest
        .strip_prefix(';')
        .ok_or(NameAddrError::TrailingGarbage)?;
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut push = |current: &mut String| {
        let part = current.trim();
        if !part.is_empty() {
            match part.split_once('=') {
                Some((n, v)) => {
                    out.push((n.trim().to_ascii_lowercase(), Some(v.trim().to_string())))
                }
                None => out.push((part.to_ascii_lowercase(), None)),
            }
        }
        current.clear();
    };
    for c in body.chars() {
        if escaped {
            escaped = false;
        } else if in_quotes && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
        } else if c == ';' && !in_quotes {
            push(&mut current);
            continue;
        }
        current.push(c);
    }
    if in_quotes {
        return Err(NameAddrError::UnterminatedQuote);
    }
    push(&mut current);
    Ok(out)
}

fn split_list(input: &str) -> Result<Vec<&str>, NameAddrError> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    let mut in_angle = false;
    for (i, c) in input.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '<' if !in_quotes => in_angle = true,
            '>' if !in_quotes => in_angle = false,
            ',' if !in_quotes && !in_angle => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_quotes {
        return Err(NameAddrError::UnterminatedQuote);
    }
    if in_angle {
        return Err(NameAddrError::UnclosedAngle);
    }
    parts.push(&input[start..]);
    Ok(parts.into_iter().filter(|p| !p.trim().is_empty()).collect())
}
