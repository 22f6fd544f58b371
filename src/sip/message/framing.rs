//! Cutting a TCP byte stream into SIP messages (RFC 3261 §18.3).

use bytes::{Buf, Bytes, BytesMut};

use super::grammar::parse_digits;
use super::raw::{self, head_end};
use super::syntax;

/// The default bound on one message, header section and body (16 KiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024;

/// Why a stream cannot be framed. Every error is final: the driver closes
/// the connection (RFC 3261 §18.3: without framing there is no way to
/// find the next message).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FramingError {
    /// A header section, or header section plus declared body, over the
    /// bound. `response` is a 413 to send before closing when the header
    /// section was complete and addressable (§21.4.11).
    #[error("message over the {limit}-octet limit")]
    TooLarge {
        /// The bound.
        limit: usize,
        /// The 413 to send, if the request could be addressed.
        response: Option<Box<syntax::Response>>,
    },
    /// No Content-Length: required on streams (§18.3, §20.14).
    #[error("missing Content-Length on a stream")]
    MissingContentLength,
    /// Content-Length not `1*DIGIT`, or given twice with different values.
    #[error("malformed Content-Length")]
    BadContentLength,
    /// The first line is not a SIP start line (§7.1, §7.2).
    #[error("not a SIP message")]
    NotSip,
    /// An earlier error ended this stream.
    #[error("stream already failed")]
    Failed,
}

/// A TCP framer: push octets as they arrive, pull complete messages
/// (RFC 3261 §18.3). Leading CRLFs are skipped (§7.5) and counted as
/// RFC 5626 §3.5.1 keep-alive pings. Pure: no I/O.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    max_size: usize,
    /// How far the search for CRLFCRLF got, so byte-by-byte pushes stay
    /// linear.
    scanned: usize,
    pings: usize,
    failed: bool,
}

impl Default for StreamFramer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_SIZE)
    }
}

impl StreamFramer {
    /// A framer bounding each message to `max_size` octets.
    pub fn new(max_size: usize) -> Self {
        StreamFramer {
            buf: BytesMut::new(),
            max_size,
            scanned: 0,
            pings: 0,
            failed: false,
        }
    }

    /// Append octets read from the connection.
    pub fn push(&mut self, data: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(data);
        }
    }

    /// Octets held that are not yet part of a returned message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Double-CRLF keep-alive pings seen since the last call; the driver
    /// answers each with a CRLF pong (RFC 5626 §4.4.1).
    pub fn take_pings(&mut self) -> usize {
        std::mem::take(&mut self.pings)
    }

    /// The next complete message, `Ok(None)` if more octets are needed.
    /// After an error the stream is finished: close it.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, FramingError> {
        if self.failed {
            return Err(FramingError::Failed);
        }
        let result = self.frame();
        if result.is_err() {
            self.failed = true;
            self.buf.clear();
        }
        result
    }

    fn frame(&mut self) -> Result<Option<Bytes>, FramingError> {
        let crlfs = raw::leading_crlf(&self.buf);
        if crlfs > 0 {
            self.pings += crlfs / 4;
            self.buf.advance(crlfs);
            self.scanned = 0;
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        if let Some(lf) = self.buf.iter().position(|&b| b == b'\n') {
            if !looks_like_start_line(&self.buf[..lf]) {
                return Err(FramingError::NotSip);
            }
        }
        let from = self.scanned.saturating_sub(3);
        let Some(end) = head_end(&self.buf[from..]).map(|e| e + from) else {
            self.scanned = self.buf.len();
            if self.buf.len() > self.max_size {
                return Err(FramingError::TooLarge {
                    limit: self.max_size,
                    response: None,
                });
            }
            return Ok(None);
        };
        if end > self.max_size {
            return Err(FramingError::TooLarge {
                limit: self.max_size,
                response: None,
            });
        }
        let head = &self.buf[..end];
        let length = content_length(head)?;
        let total = end.saturating_add(length);
        if total > self.max_size {
            return Err(FramingError::TooLarge {
                limit: self.max_size,
                response: super::oversized_response(head, total, self.max_size).map(Box::new),
            });
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        self.scanned = 0;
        Ok(Some(self.buf.split_to(total).freeze()))
    }
}

/// A Request-Line or Status-Line shape, checked before the whole header
/// section arrives so garbage is refused early: `SIP/` or a method token
/// followed by SP, ending in CR.
fn looks_like_start_line(line: &[u8]) -> bool {
    let Some(line) = line.strip_suffix(b"\r") else {
        return false;
    };
    if line.starts_with(b"SIP/") {
        return true;
    }
    let Some(sp) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    sp > 0
        && line[..sp].iter().all(|&b| super::grammar::is_token_char(b))
        && line.windows(4).any(|w| w.eq_ignore_ascii_case(b"SIP/"))
}

/// The Content-Length of a header section (`Content-Length` or `l`, any
/// case, §7.3.3); repeated equal values are tolerated here and refused by
/// `inspect`.
fn content_length(head: &[u8]) -> Result<usize, FramingError> {
    let msg = raw::split(head).map_err(|_| FramingError::NotSip)?;
    let mut found: Option<usize> = None;
    for h in msg.all("Content-Length") {
        let n = parse_digits(&h.value)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(FramingError::BadContentLength)?;
        if found.is_some_and(|f| f != n) {
            return Err(FramingError::BadContentLength);
        }
        found = Some(n);
    }
    found.ok_or(FramingError::MissingContentLength)
}
