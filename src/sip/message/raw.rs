//! The light pre-parse every message goes through before validation: start
//! line, unfolded header lines with canonical names, and the body.
//!
//! It never fails on a header it cannot read: such a header is kept with a
//! defect, so the message can still be answered from its other headers
//! (RFC 3261 §8.2: a UAS answers a malformed request with 400 where it can).

use std::borrow::Cow;

use super::grammar::{is_token, text_defect};
use super::Defect;

/// One header line after unfolding (RFC 3261 §7.3.1).
#[derive(Debug, Clone)]
pub(crate) struct RawHeader {
    /// The canonical name (`Call-ID` for `i`, `Max-Forwards` for
    /// `MaX-fOrWaRdS`), or the name as sent for headers we do not know;
    /// borrowed for the known names, so no allocation per header line.
    pub name: Cow<'static, str>,
    /// The value, folding replaced by one SP, outer whitespace trimmed.
    pub value: String,
    /// Why the value cannot be trusted (invalid UTF-8, control octets);
    /// such a value is never echoed into a response.
    pub defect: Option<Defect>,
}

impl RawHeader {
    /// Whether the header has the canonical `name`.
    pub fn is(&self, name: &str) -> bool {
        self.name == name
    }
}

/// A message split into start line, headers and body, nothing validated yet.
#[derive(Debug)]
pub(crate) struct RawMessage<'a> {
    /// The start line without its CRLF.
    pub start_line: &'a [u8],
    /// Header lines in order.
    pub headers: Vec<RawHeader>,
    /// Everything after the empty line, before any Content-Length cut.
    pub body: &'a [u8],
    /// Octets from the start line through the empty line.
    pub head_len: usize,
    /// A structural defect of the header section (a line without a colon,
    /// a bad header name, a continuation with nothing to continue).
    pub defect: Option<Defect>,
}

impl RawMessage<'_> {
    /// All headers with the canonical `name`.
    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s RawHeader> + 's {
        self.headers.iter().filter(move |h| h.is(name))
    }

    /// The first header named `name`.
    pub fn first(&self, name: &str) -> Option<&RawHeader> {
        self.headers.iter().find(|h| h.is(name))
    }
}

/// Where the header section ends: the index just past the CRLFCRLF.
pub(crate) fn head_end(bytes: &[u8]) -> Option<usize> {
    // Looks at every LF once rather than comparing a 4-octet window at
    // every offset: this runs over every message received.
    let mut from = 0;
    while let Some(lf) = bytes.get(from..)?.iter().position(|&b| b == b'\n') {
        let at = from + lf;
        if at >= 3 && &bytes[at - 3..=at] == b"\r\n\r\n" {
            return Some(at + 1);
        }
        from = at + 1;
    }
    None
}

/// Number of leading CRLF pairs (RFC 3261 §7.5: ignored before a start
/// line on streams; RFC 5626 §3.5.1 keep-alives).
pub(crate) fn leading_crlf(bytes: &[u8]) -> usize {
    let mut i = 0;
    while bytes.get(i..i + 2) == Some(b"\r\n") {
        i += 2;
    }
    i
}

/// Split `bytes` (leading CRLFs already skipped) into a [`RawMessage`].
/// Fails only when there is no header section at all.
pub(crate) fn split(bytes: &[u8]) -> Result<RawMessage<'_>, Defect> {
    if bytes.is_empty() {
        return Err(Defect::Empty);
    }
    let end = head_end(bytes).ok_or(Defect::NoHeaderEnd)?;
    // Up to and including the last header line's CRLF: every line then
    // ends in CR before the LF we split on, and a bare LF shows as a line
    // without one.
    // Without the last LF: `split` then yields exactly the lines, with no
    // empty piece after the last one.
    let head = &bytes[..end - 3];
    let body = &bytes[end..];
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r"));
    let start_line = match lines.next() {
        Some(Some(l)) => l,
        // A bare LF ends the start line: not a SIP line end (§7).
        _ => return Err(Defect::BadLineEnd),
    };
    // Room for every line at once (continuation lines make it an upper
    // bound): growing the vector by doubling reallocates it two or three
    // times per message, and glibc serves a reallocation past ~1 KiB from
    // its arena rather than the thread cache, consolidating its free lists
    // first — measured as the most expensive allocation of the REGISTER
    // path (`perf record`, BENCHMARKS.md).
    let mut headers: Vec<RawHeader> =
        Vec::with_capacity(head.iter().filter(|&&b| b == b'\n').count());
    let mut defect = None;
    for line in lines {
        let Some(line) = line else {
            defect.get_or_insert(Defect::BadLineEnd);
            continue;
        };
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            match headers.last_mut() {
                Some(last) => {
                    let piece = String::from_utf8_lossy(line);
                    let piece = piece.trim_matches([' ', '\t']);
                    if !piece.is_empty() {
                        if !last.value.is_empty() {
                            last.value.push(' ');
                        }
                        last.value.push_str(piece);
                    }
                    if last.defect.is_none() {
                        last.defect = line_defect(line);
                    }
                }
                None => {
                    defect.get_or_insert(Defect::BadHeaderLine);
                }
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            defect.get_or_insert(Defect::BadHeaderLine);
            continue;
        };
        let name_bytes = trim_ws(&line[..colon]);
        let Some(name) = std::str::from_utf8(name_bytes).ok().filter(|n| is_token(n)) else {
            defect.get_or_insert(Defect::BadHeaderLine);
            continue;
        };
        let value_bytes = &line[colon + 1..];
        // One UTF-8 check per line serves both the value and its defect.
        // SP and HTAB are single octets that UTF-8 never uses inside a
        // character, so trimming the octets first is the same as trimming
        // the text, and neither is a defect.
        let (value, defect) = match std::str::from_utf8(trim_ws(value_bytes)) {
            Ok(text) => (text.to_string(), text_defect(text)),
            Err(_) => (
                String::from_utf8_lossy(trim_ws(value_bytes)).into_owned(),
                Some(Defect::InvalidUtf8),
            ),
        };
        headers.push(RawHeader {
            name: canonical_name(name),
            value,
            defect,
        });
    }
    Ok(RawMessage {
        start_line,
        headers,
        body,
        head_len: end,
        defect,
    })
}

fn trim_ws(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

fn line_defect(bytes: &[u8]) -> Option<Defect> {
    match std::str::from_utf8(bytes) {
        Err(_) => Some(Defect::InvalidUtf8),
        Ok(s) => text_defect(s),
    }
}

/// Canonical spellings, compact forms first (RFC 3261 §7.3.3, RFC 3265,
/// RFC 3515, RFC 3892, RFC 4028).
const NAMES: &[(&str, &str)] = &[
    ("i", "Call-ID"),
    ("f", "From"),
    ("t", "To"),
    ("v", "Via"),
    ("m", "Contact"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("k", "Supported"),
    ("s", "Subject"),
    ("e", "Content-Encoding"),
    ("o", "Event"),
    ("u", "Allow-Events"),
    ("r", "Refer-To"),
    ("b", "Referred-By"),
    ("x", "Session-Expires"),
    ("accept", "Accept"),
    ("allow", "Allow"),
    ("authorization", "Authorization"),
    ("call-id", "Call-ID"),
    ("contact", "Contact"),
    ("content-length", "Content-Length"),
    ("content-type", "Content-Type"),
    ("cseq", "CSeq"),
    ("date", "Date"),
    ("expires", "Expires"),
    ("from", "From"),
    ("max-forwards", "Max-Forwards"),
    ("proxy-require", "Proxy-Require"),
    ("record-route", "Record-Route"),
    ("reply-to", "Reply-To"),
    ("require", "Require"),
    ("route", "Route"),
    ("supported", "Supported"),
    ("to", "To"),
    ("via", "Via"),
];

/// The canonical name for a header name as sent (case-insensitive, RFC
/// 3261 §7.3.1; compact forms §7.3.3).
pub(crate) fn canonical_name(name: &str) -> Cow<'static, str> {
    NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map_or_else(|| Cow::Owned(name.to_string()), |(_, c)| Cow::Borrowed(*c))
}
