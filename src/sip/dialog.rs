//! SIP dialogs (RFC 3261 §12), sans-IO: the state both ends of a call keep
//! to build in-dialog requests (BYE, re-INVITE, INFO, OPTIONS, ACK for 2xx)
//! and to check the requests they receive; and [`NameAddr`], the
//! `name-addr`/`addr-spec` parser used for From, To, Contact, Route and
//! Record-Route values (RFC 3261 §20.10, §25.1), which keeps URIs as the
//! peer wrote them (rsipstack's typed Contact drops URI headers).

use std::fmt;

use std::collections::HashMap;

use super::syntax::{self, HeadersExt, Method, StatusCode};

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
        } else if let Some(lt) = s
            .find('<')
            .filter(|&lt| s.find(';').is_none_or(|semi| lt < semi))
        {
            // A `<` after the first `;` is inside a parameter of an addr-spec.
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

/// A dialog's identity (RFC 3261 §12: Call-ID, local tag, remote tag).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    /// The Call-ID.
    pub call_id: String,
    /// Our tag (From tag on requests we send).
    pub local_tag: String,
    /// The peer's tag (To tag on requests we send).
    pub remote_tag: String,
}

impl DialogId {
    /// The dialog a received request belongs to (RFC 3261 §12.2.2: local
    /// tag is the To tag, remote tag the From tag); `None` when the request
    /// has no To tag (it is outside any dialog).
    pub fn of_request(request: &syntax::Request) -> Option<DialogId> {
        let to = NameAddr::parse(request.to_header().ok()?.value()).ok()?;
        let from = NameAddr::parse(request.from_header().ok()?.value()).ok()?;
        Some(DialogId {
            call_id: request.call_id_header().ok()?.value().trim().to_string(),
            local_tag: to.tag()?.to_string(),
            remote_tag: from.tag().unwrap_or("").to_string(),
        })
    }

    /// The dialog a received response belongs to (local tag: From tag,
    /// remote tag: To tag); `None` without both tags.
    pub fn of_response(response: &syntax::Response) -> Option<DialogId> {
        let to = NameAddr::parse(response.to_header().ok()?.value()).ok()?;
        let from = NameAddr::parse(response.from_header().ok()?.value()).ok()?;
        Some(DialogId {
            call_id: response.call_id_header().ok()?.value().trim().to_string(),
            local_tag: from.tag()?.to_string(),
            remote_tag: to.tag()?.to_string(),
        })
    }
}

/// Where a dialog stands (RFC 3261 §12: early after a 1xx with a To tag,
/// confirmed after a 2xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// Created by a provisional response.
    Early,
    /// Created or confirmed by a 2xx.
    Confirmed,
    /// Ended by a BYE, a failure of the INVITE, or a 481/408 in-dialog.
    Terminated,
}

/// Why a dialog could not be created or used (RFC 3261 §12).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// A header the dialog needs is missing or does not parse.
    #[error("missing or malformed {0} header")]
    BadHeader(&'static str),
    /// The response does not create a dialog (only 101–299 do, RFC 3261 §12.1).
    #[error("status {0} does not create a dialog")]
    NotDialogCreating(u16),
    /// A tag that must be present is not (`To` on a dialog-creating
    /// response, `From` on the request).
    #[error("missing {0} tag")]
    MissingTag(&'static str),
    /// A received request's CSeq is lower than the last one (RFC 3261
    /// §12.2.2: answer 500).
    #[error("CSeq {got} is lower than the remote sequence number {last}")]
    CSeqOutOfOrder {
        /// The request's CSeq number.
        got: u32,
        /// The dialog's remote sequence number.
        last: u32,
    },
    /// The method is not sent through a dialog (CANCEL belongs to the
    /// INVITE's transaction, RFC 3261 §9.1).
    #[error("{0} is not built as an in-dialog request")]
    NotInDialog(Method),
    /// The dialog has ended (RFC 3261 §12.3): in-dialog requests get 481.
    #[error("dialog terminated")]
    Terminated,
    /// The built request did not parse back: a peer-supplied URI is unusable.
    #[error("built request does not parse: {0}")]
    Build(syntax::Error),
}

impl DialogError {
    /// The response a UAS sends when a received request fails this way
    /// (RFC 3261 §12.2.2: 500 for out-of-order CSeq; 481 once terminated).
    pub fn status(&self) -> StatusCode {
        match self {
            DialogError::CSeqOutOfOrder { .. } => StatusCode::ServerInternalError,
            DialogError::Terminated => StatusCode::CallTransactionDoesNotExist,
            _ => StatusCode::BadRequest,
        }
    }
}

/// What a confirmed UAC dialog needs to send one more request after a
/// restart (RFC 3261 §12.2.1.1): its identity, addresses, remote target,
/// route set and local sequence number. Kept in the leg journal so a BYE
/// can end the call after a crash (§15.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedDialog {
    /// Call-ID, local tag, remote tag.
    pub id: DialogId,
    /// Our From address, without tag (`name-addr` text).
    pub local_uri: String,
    /// The peer's To address, without tag (`name-addr` text).
    pub remote_uri: String,
    /// The Request-URI of in-dialog requests.
    pub remote_target: String,
    /// The route set in request order (`name-addr` texts).
    pub route_set: Vec<String>,
    /// The last CSeq we used.
    pub local_seq: u32,
}

/// A message body for [`Dialog::new_request`].
#[derive(Debug, Clone, Copy)]
pub struct Body<'a> {
    /// The Content-Type value, e.g. `application/sdp`.
    pub content_type: &'a str,
    /// The bytes.
    pub bytes: &'a [u8],
}

/// One SIP dialog (RFC 3261 §12.1), UAC or UAS side.
#[derive(Debug, Clone)]
pub struct Dialog {
    id: DialogId,
    state: DialogState,
    is_uac: bool,
    local: NameAddr,
    remote: NameAddr,
    local_seq: u32,
    remote_seq: Option<u32>,
    remote_target: String,
    route_set: Vec<NameAddr>,
    local_contact: Option<String>,
    invite_seq: u32,
}

fn header_name_addr(
    value: Result<&str, syntax::Error>,
    name: &'static str,
) -> Result<NameAddr, DialogError> {
    let v = value.map_err(|_| DialogError::BadHeader(name))?;
    NameAddr::parse(v).map_err(|_| DialogError::BadHeader(name))
}

fn cseq_number(headers: &impl HeadersExt) -> Result<(u32, String), DialogError> {
    let v = headers
        .cseq_header()
        .map_err(|_| DialogError::BadHeader("CSeq"))?
        .value();
    let mut it = v.split_whitespace();
    let n = it
        .next()
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or(DialogError::BadHeader("CSeq"))?;
    let method = it.next().ok_or(DialogError::BadHeader("CSeq"))?;
    Ok((n, method.to_ascii_uppercase()))
}

/// The first Contact URI of a message, if any.
fn first_contact(headers: &impl HeadersExt) -> Result<Option<String>, DialogError> {
    match headers.contact_headers().first() {
        None => Ok(None),
        Some(c) => {
            let list =
                NameAddr::parse_list(c.value()).map_err(|_| DialogError::BadHeader("Contact"))?;
            Ok(list.into_iter().next().map(|a| a.uri))
        }
    }
}

/// Every Record-Route value, in message order (RFC 3261 §12.1.1).
fn record_routes(headers: &impl HeadersExt) -> Result<Vec<NameAddr>, DialogError> {
    let mut out = Vec::new();
    for rr in headers.record_route_headers() {
        out.extend(
            NameAddr::parse_list(rr.value()).map_err(|_| DialogError::BadHeader("Record-Route"))?,
        );
    }
    Ok(out)
}

fn call_id(headers: &impl HeadersExt) -> Result<String, DialogError> {
    Ok(headers
        .call_id_header()
        .map_err(|_| DialogError::BadHeader("Call-ID"))?
        .value()
        .trim()
        .to_string())
}

impl Dialog {
    /// The UAC side, from the INVITE we sent and a 101–299 response with a
    /// To tag (RFC 3261 §12.1.2): route set is the response's
    /// Record-Route reversed, remote target its Contact, local sequence
    /// number the INVITE's CSeq. Early for 1xx, confirmed for 2xx.
    pub fn from_uac_response(
        invite: &syntax::Request,
        response: &syntax::Response,
    ) -> Result<Dialog, DialogError> {
        let code = response.status_code.code();
        if !(101..=299).contains(&code) {
            return Err(DialogError::NotDialogCreating(code));
        }
        let from = header_name_addr(invite.from_header().map(|h| h.value()), "From")?;
        let to = header_name_addr(response.to_header().map(|h| h.value()), "To")?;
        let local_tag = from
            .tag()
            .ok_or(DialogError::MissingTag("From"))?
            .to_string();
        let remote_tag = to.tag().ok_or(DialogError::MissingTag("To"))?.to_string();
        let (seq, _) = cseq_number(invite)?;
        let remote_target = match first_contact(response)? {
            Some(uri) => uri,
            // A 1xx may lack Contact; a 2xx must carry it (RFC 3261 §13.3.1.4).
            None if code < 200 => invite.uri.to_string(),
            None => return Err(DialogError::BadHeader("Contact")),
        };
        let mut route_set = record_routes(response)?;
        route_set.reverse();
        Ok(Dialog {
            id: DialogId {
                call_id: call_id(invite)?,
                local_tag,
                remote_tag,
            },
            state: if code < 200 {
                DialogState::Early
            } else {
                DialogState::Confirmed
            },
            is_uac: true,
            local: from.without_tag(),
            remote: to.without_tag(),
            local_seq: seq,
            remote_seq: None,
            remote_target,
            route_set,
            local_contact: invite
                .contact_headers()
                .first()
                .map(|c| c.value().to_string()),
            invite_seq: seq,
        })
    }

    /// The UAS side, from the INVITE we received and our 101–299 response
    /// carrying our To tag (RFC 3261 §12.1.1): route set is the INVITE's
    /// Record-Route in order, remote target its Contact, remote sequence
    /// number its CSeq; the local sequence starts empty (first request: 1).
    pub fn from_uas_response(
        invite: &syntax::Request,
        response: &syntax::Response,
    ) -> Result<Dialog, DialogError> {
        let code = response.status_code.code();
        if !(101..=299).contains(&code) {
            return Err(DialogError::NotDialogCreating(code));
        }
        let from = header_name_addr(invite.from_header().map(|h| h.value()), "From")?;
        let to = header_name_addr(response.to_header().map(|h| h.value()), "To")?;
        let remote_tag = from
            .tag()
            .ok_or(DialogError::MissingTag("From"))?
            .to_string();
        let local_tag = to.tag().ok_or(DialogError::MissingTag("To"))?.to_string();
        let (seq, _) = cseq_number(invite)?;
        let remote_target = first_contact(invite)?.ok_or(DialogError::BadHeader("Contact"))?;
        Ok(Dialog {
            id: DialogId {
                call_id: call_id(invite)?,
                local_tag,
                remote_tag,
            },
            state: if code < 200 {
                DialogState::Early
            } else {
                DialogState::Confirmed
            },
            is_uac: false,
            local: to.without_tag(),
            remote: from.without_tag(),
            local_seq: 0,
            remote_seq: Some(seq),
            remote_target,
            route_set: record_routes(invite)?,
            local_contact: response
                .contact_headers()
                .first()
                .map(|c| c.value().to_string()),
            invite_seq: 0,
        })
    }

    /// The dialog id.
    pub fn id(&self) -> &DialogId {
        &self.id
    }

    /// Early, confirmed or terminated.
    pub fn state(&self) -> DialogState {
        self.state
    }

    /// Whether we sent the INVITE that created it.
    pub fn is_uac(&self) -> bool {
        self.is_uac
    }

    /// The remote target: the Request-URI of in-dialog requests (RFC 3261 §12.2.1.1).
    pub fn remote_target(&self) -> &str {
        &self.remote_target
    }

    /// The route set, in the order requests list it.
    pub fn route_set(&self) -> &[NameAddr] {
        &self.route_set
    }

    /// The local address (From of our requests), without tag.
    pub fn local_uri(&self) -> &NameAddr {
        &self.local
    }

    /// The remote address (To of our requests), without tag.
    pub fn remote_uri(&self) -> &NameAddr {
        &self.remote
    }

    /// The last CSeq we used (0 when none yet).
    pub fn local_seq(&self) -> u32 {
        self.local_seq
    }

    /// The last CSeq the peer used, if any.
    pub fn remote_seq(&self) -> Option<u32> {
        self.remote_seq
    }

    /// The state [`Dialog::restore`] needs (see [`SavedDialog`]).
    pub fn save(&self) -> SavedDialog {
        SavedDialog {
            id: self.id.clone(),
            local_uri: self.local.to_string(),
            remote_uri: self.remote.to_string(),
            remote_target: self.remote_target.clone(),
            route_set: self.route_set.iter().map(|r| r.to_string()).collect(),
            local_seq: self.local_seq,
        }
    }

    /// A confirmed UAC dialog from its saved state, able to send the next
    /// request with CSeq `local_seq + 1` over the same route set (RFC 3261
    /// §12.2.1.1); used after a restart to BYE a call we lost (§15.1.1).
    pub fn restore(saved: &SavedDialog) -> Result<Dialog, DialogError> {
        let local =
            NameAddr::parse(&saved.local_uri).map_err(|_| DialogError::BadHeader("From"))?;
        let remote =
            NameAddr::parse(&saved.remote_uri).map_err(|_| DialogError::BadHeader("To"))?;
        let route_set = saved
            .route_set
            .iter()
            .map(|r| NameAddr::parse(r).map_err(|_| DialogError::BadHeader("Route")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Dialog {
            id: saved.id.clone(),
            state: DialogState::Confirmed,
            is_uac: true,
            local,
            remote,
            local_seq: saved.local_seq,
            remote_seq: None,
            remote_target: saved.remote_target.clone(),
            route_set,
            local_contact: None,
            invite_seq: 0,
        })
    }

    /// Marks the dialog ended (e.g. after sending a BYE, RFC 3261 §15).
    pub fn terminate(&mut self) {
        self.state = DialogState::Terminated;
    }

    /// Sets the Contact value we put in target-refresh requests
    /// (re-INVITE, UPDATE), e.g. `<sip:powerdial@10.0.0.1:5060>`.
    pub fn set_local_contact(&mut self, contact: impl Into<String>) {
        self.local_contact = Some(contact.into());
    }

    /// Applies a response to a request we sent in this dialog (RFC 3261
    /// §12.1.2, §12.2.1.2, §13.2.2.4): a 2xx to INVITE confirms an early
    /// dialog (its Record-Route, reversed, becomes the route set) and
    /// refreshes the remote target; a 1xx with Contact on an early dialog
    /// refreshes it too; a failure of the initial INVITE, or 481/408 to
    /// any request, terminates the dialog.
    pub fn handle_response(&mut self, response: &syntax::Response) -> Result<(), DialogError> {
        let (_, method) = cseq_number(response)?;
        let code = response.status_code.code();
        let is_invite = method == "INVITE";
        if code == 481 || code == 408 {
            self.state = DialogState::Terminated;
            return Ok(());
        }
        if !is_invite {
            return Ok(());
        }
        match (self.state, code) {
            (DialogState::Early, 101..=199) => {
                if let Some(t) = first_contact(response)? {
                    self.remote_target = t;
                }
            }
            (DialogState::Early, 200..=299) => {
                let mut rr = record_routes(response)?;
                if self.is_uac {
                    rr.reverse();
                    self.route_set = rr;
                }
                if let Some(t) = first_contact(response)? {
                    self.remote_target = t;
                }
                self.state = DialogState::Confirmed;
            }
            (DialogState::Early, 300..) => self.state = DialogState::Terminated,
            (DialogState::Confirmed, 200..=299) => {
                if let Some(t) = first_contact(response)? {
                    self.remote_target = t;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks and applies a request received in this dialog (RFC 3261
    /// §12.2.2): a CSeq lower than the remote sequence number is refused
    /// ([`DialogError::CSeqOutOfOrder`], answer 500); ACK and CANCEL carry
    /// the INVITE's number and are not checked; a re-INVITE or UPDATE with
    /// Contact refreshes the remote target; a BYE terminates the dialog.
    pub fn handle_request(&mut self, request: &syntax::Request) -> Result<(), DialogError> {
        if self.state == DialogState::Terminated {
            return Err(DialogError::Terminated);
        }
        if matches!(request.method, Method::Ack | Method::Cancel) {
            return Ok(());
        }
        let (seq, _) = cseq_number(request)?;
        if let Some(last) = self.remote_seq {
            if seq < last {
                return Err(DialogError::CSeqOutOfOrder { got: seq, last });
            }
        }
        if matches!(request.method, Method::Invite | Method::Update) {
            if let Some(t) = first_contact(request)? {
                self.remote_target = t;
            }
        }
        self.remote_seq = Some(seq);
        if request.method == Method::Bye {
            self.state = DialogState::Terminated;
        }
        Ok(())
    }

    /// Builds an in-dialog request (RFC 3261 §12.2.1.1): From/To with the
    /// dialog's tags, Call-ID, the next local CSeq (ACK reuses the
    /// INVITE's number, RFC 3261 §13.2.2.4), Request-URI and Route from
    /// the remote target and route set — loose routing (`;lr`) as is;
    /// a strict first hop becomes the Request-URI and the remote target is
    /// appended as the last Route (§12.2.1.1). `via` is the whole Via
    /// value with a fresh branch (the transaction layer's). A re-INVITE or
    /// UPDATE carries our Contact.
    pub fn new_request(
        &mut self,
        method: Method,
        via: &str,
        body: Option<Body<'_>>,
    ) -> Result<syntax::Request, DialogError> {
        self.new_request_with(method, via, &[], body)
    }

    /// [`new_request`](Self::new_request) with extra header lines (e.g.
    /// `Session-Expires: 1800;refresher=uac` on a session refresh, RFC 4028).
    pub fn new_request_with(
        &mut self,
        method: Method,
        via: &str,
        extra: &[String],
        body: Option<Body<'_>>,
    ) -> Result<syntax::Request, DialogError> {
        if method == Method::Cancel {
            return Err(DialogError::NotInDialog(method));
        }
        if self.state == DialogState::Terminated {
            return Err(DialogError::Terminated);
        }
        let seq = if method == Method::Ack {
            self.invite_seq
        } else {
            self.local_seq = self.local_seq.wrapping_add(1);
            if method == Method::Invite {
                self.invite_seq = self.local_seq;
            }
            self.local_seq
        };
        let (ruri, routes): (String, Vec<String>) = match self.route_set.first() {
            Some(first) if first.parsed_uri().is_ok() && !is_loose(first) => {
                let mut routes: Vec<String> =
                    self.route_set[1..].iter().map(|r| r.to_string()).collect();
                routes.push(format!("<{}>", self.remote_target));
                (first.uri.clone(), routes)
            }
            _ => (
                self.remote_target.clone(),
                self.route_set.iter().map(|r| r.to_string()).collect(),
            ),
        };
        let mut text = format!(
            "{method} {ruri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
             From: {};tag={}\r\nTo: {};tag={}\r\nCall-ID: {}\r\nCSeq: {seq} {method}\r\n",
            self.local, self.id.local_tag, self.remote, self.id.remote_tag, self.id.call_id
        );
        for r in &routes {
            text.push_str("Route: ");
            text.push_str(r);
            text.push_str("\r\n");
        }
        if matches!(method, Method::Invite | Method::Update) {
            if let Some(c) = &self.local_contact {
                text.push_str("Contact: ");
                text.push_str(c);
                text.push_str("\r\n");
            }
        }
        for line in extra {
            text.push_str(line);
            text.push_str("\r\n");
        }
        let bytes = body.map_or(&[][..], |b| b.bytes);
        if let Some(b) = body {
            text.push_str("Content-Type: ");
            text.push_str(b.content_type);
            text.push_str("\r\n");
        }
        text.push_str(&format!("Content-Length: {}\r\n\r\n", bytes.len()));
        let mut wire = text.into_bytes();
        wire.extend_from_slice(bytes);
        syntax::Request::try_from(wire).map_err(DialogError::Build)
    }
}

/// Whether a route entry is a loose router (`;lr` on its URI, RFC 3261 §16.12).
fn is_loose(route: &NameAddr) -> bool {
    route.uri.split(['?']).next().is_some_and(|u| {
        u.split(';').skip(1).any(|p| {
            p.split('=')
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case("lr"))
        })
    })
}

/// How a received request relates to the dialogs we hold.
#[derive(Debug)]
pub enum RequestMatch<'a> {
    /// No To tag: not in a dialog (a new INVITE, an OPTIONS ping, …).
    OutOfDialog,
    /// In the dialog given.
    Dialog(&'a mut Dialog),
    /// A To tag we do not know: answer 481 (RFC 3261 §12.2.2), except to
    /// an ACK, which is dropped.
    NoDialog,
}

/// The dialogs of one core, by id (RFC 3261 §12).
#[derive(Debug, Default)]
pub struct DialogSet {
    dialogs: HashMap<DialogId, Dialog>,
}

impl DialogSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a dialog, returning one it replaced with the same id.
    pub fn insert(&mut self, dialog: Dialog) -> Option<Dialog> {
        self.dialogs.insert(dialog.id.clone(), dialog)
    }

    /// The dialog with this id.
    pub fn get(&self, id: &DialogId) -> Option<&Dialog> {
        self.dialogs.get(id)
    }

    /// The dialog with this id, mutably.
    pub fn get_mut(&mut self, id: &DialogId) -> Option<&mut Dialog> {
        self.dialogs.get_mut(id)
    }

    /// Removes a dialog (after it terminated).
    pub fn remove(&mut self, id: &DialogId) -> Option<Dialog> {
        self.dialogs.remove(id)
    }

    /// How many dialogs are held.
    pub fn len(&self) -> usize {
        self.dialogs.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.dialogs.is_empty()
    }

    /// The dialog a received request belongs to (RFC 3261 §12.2.2), or
    /// `None` — when the request has a To tag, the driver answers 481.
    pub fn match_request(&mut self, request: &syntax::Request) -> Option<&mut Dialog> {
        let id = DialogId::of_request(request)?;
        self.dialogs.get_mut(&id)
    }

    /// [`Self::match_request`], telling "not in a dialog" from "unknown dialog" (481).
    pub fn classify(&mut self, request: &syntax::Request) -> RequestMatch<'_> {
        match DialogId::of_request(request) {
            None => RequestMatch::OutOfDialog,
            Some(id) => match self.dialogs.get_mut(&id) {
                Some(d) => RequestMatch::Dialog(d),
                None => RequestMatch::NoDialog,
            },
        }
    }

    /// The dialog a received response belongs to.
    pub fn match_response(&mut self, response: &syntax::Response) -> Option<&mut Dialog> {
        let id = DialogId::of_response(response)?;
        self.dialogs.get_mut(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn name_addr_never_panics_and_reparses(s in "\\PC{0,80}") {
            if let Ok(list) = NameAddr::parse_list(&s) {
                for a in list {
                    // What we print parses back to the same address.
                    let again = NameAddr::parse(&a.to_string());
                    if !a.uri.contains(['<', '>']) {
                        prop_assert_eq!(again, Ok(a));
                    }
                }
            }
        }
    }

    #[test]
    fn name_addr_forms() {
        let a = NameAddr::parse(r#" "Bob \"the\" <Builder>" <sip:bob@biloxi.com;transport=tcp>;tag=a6c85cf ; +sip.instance="<urn:uuid:1;2>""#)
            .unwrap();
        assert_eq!(
            a.display_name.as_deref(),
            Some(r#""Bob \"the\" <Builder>""#)
        );
        assert_eq!(a.uri, "sip:bob@biloxi.com;transport=tcp");
        assert_eq!(a.tag(), Some("a6c85cf"));
        assert_eq!(a.param("+sip.instance"), Some(Some(r#""<urn:uuid:1;2>""#)));
        assert_eq!(
            a.without_tag().to_string(),
            r#""Bob \"the\" <Builder>" <sip:bob@biloxi.com;transport=tcp>;+sip.instance="<urn:uuid:1;2>""#
        );
        let inst =
            NameAddr::parse(r#"sip:a@10.0.0.1:5062;+sip.instance="<urn:uuid:x>";expires=60"#)
                .unwrap();
        assert_eq!(inst.uri, "sip:a@10.0.0.1:5062");
        assert_eq!(inst.param("expires"), Some(Some("60")));
        let b = NameAddr::parse("sip:alice@atlanta.com;tag=1928301774;lr").unwrap();
        assert_eq!(b.uri, "sip:alice@atlanta.com");
        assert_eq!(b.param("lr"), Some(None));
        let c = NameAddr::parse("Anonymous <sip:c8oqz84zk7z@privacy.org>").unwrap();
        assert_eq!(c.display_name.as_deref(), Some("Anonymous"));
        let list = NameAddr::parse_list(
            r#"<sip:p1.example.com;lr>, "A, B" <sip:p2.example.com;lr>,sip:p3.example.com"#,
        )
        .unwrap();
        assert_eq!(
            list.iter().map(|a| a.uri.as_str()).collect::<Vec<_>>(),
            [
                "sip:p1.example.com;lr",
                "sip:p2.example.com;lr",
                "sip:p3.example.com"
            ]
        );
        assert_eq!(NameAddr::parse("  "), Err(NameAddrError::Empty));
        assert_eq!(
            NameAddr::parse("<sip:a@b"),
            Err(NameAddrError::UnclosedAngle)
        );
        assert_eq!(
            NameAddr::parse("\"a <sip:a@b>"),
            Err(NameAddrError::UnterminatedQuote)
        );
        assert_eq!(NameAddr::parse("<>"), Err(NameAddrError::EmptyUri));
        assert_eq!(
            NameAddr::parse("<sip:a@b> x"),
            Err(NameAddrError::TrailingGarbage)
        );
        assert_eq!(
            NameAddr::parse("<sip:a@b>;p=\"open"),
            Err(NameAddrError::UnterminatedQuote)
        );
    }

    // RFC 3665 §3.2-like flow: alice (us, UAC) calls bob through two proxies.
    const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9\r\n\
Max-Forwards: 70\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@client.atlanta.example.com;transport=udp>\r\n\
Content-Length: 0\r\n\r\n";

    const RINGING: &str = "SIP/2.0 180 Ringing\r\n\
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.101\r\n\
Record-Route: <sip:ss2.biloxi.example.com;lr>, <sip:ss1.atlanta.example.com;lr>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
To: Bob <sip:bob@biloxi.example.com>;tag=314159\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\n\
Contact: <sip:bob@client.biloxi.example.com>\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";

    const OK: &str = "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.101\r\n\
Record-Route: <sip:ss2.biloxi.example.com;lr>\r\n\
Record-Route: <sip:ss1.atlanta.example.com;lr>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
To: Bob <sip:bob@biloxi.example.com>;tag=314159\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\n\
Contact: <sip:bob@192.0.2.4:5062>\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";

    fn req(s: &str) -> syntax::Request {
        syntax::Request::try_from(s).unwrap()
    }

    fn resp(s: &str) -> syntax::Response {
        syntax::Response::try_from(s).unwrap()
    }

    const VIA: &str = "SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bKnew1";

    #[test]
    fn uac_early_then_confirmed_then_ack_and_bye() {
        let invite = req(INVITE);
        let mut d = Dialog::from_uac_response(&invite, &resp(RINGING)).unwrap();
        assert_eq!(d.state(), DialogState::Early);
        assert!(d.is_uac());
        assert_eq!(
            d.id(),
            &DialogId {
                call_id: "3848276298220188511@atlanta.example.com".into(),
                local_tag: "9fxced76sl".into(),
                remote_tag: "314159".into(),
            }
        );
        assert_eq!(d.remote_target(), "sip:bob@client.biloxi.example.com");
        d.handle_response(&resp(OK)).unwrap();
        assert_eq!(d.state(), DialogState::Confirmed);
        assert_eq!(d.remote_target(), "sip:bob@192.0.2.4:5062");
        // UAC: Record-Route reversed.
        assert_eq!(
            d.route_set()
                .iter()
                .map(|r| r.uri.as_str())
                .collect::<Vec<_>>(),
            [
                "sip:ss1.atlanta.example.com;lr",
                "sip:ss2.biloxi.example.com;lr"
            ]
        );
        let ack = d.new_request(Method::Ack, VIA, None).unwrap();
        assert_eq!(
            ack.to_string(),
            "ACK sip:bob@192.0.2.4:5062 SIP/2.0\r\n\
             Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bKnew1\r\n\
             Max-Forwards: 70\r\n\
             From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
             To: Bob <sip:bob@biloxi.example.com>;tag=314159\r\n\
             Call-ID: 3848276298220188511@atlanta.example.com\r\n\
             CSeq: 1 ACK\r\n\
             Route: <sip:ss1.atlanta.example.com;lr>\r\n\
             Route: <sip:ss2.biloxi.example.com;lr>\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let bye = d.new_request(Method::Bye, VIA, None).unwrap();
        assert!(bye.to_string().contains("\r\nCSeq: 2 BYE\r\n"));
        assert_eq!(bye.uri.to_string(), "sip:bob@192.0.2.4:5062");
        let info = d
            .new_request(
                Method::Info,
                VIA,
                Some(Body {
                    content_type: "application/dtmf-relay",
                    bytes: b"Signal=5\r\nDuration=160\r\n",
                }),
            )
            .unwrap();
        let wire = info.to_string();
        assert!(wire.contains("\r\nCSeq: 3 INFO\r\n"));
        assert!(wire.ends_with(
            "Content-Type: application/dtmf-relay\r\nContent-Length: 24\r\n\r\nSignal=5\r\nDuration=160\r\n"
        ));
        assert!(!wire.contains("Contact:"));
        // A re-INVITE takes the next CSeq, carries our Contact, and its ACK reuses it.
        let reinvite = d.new_request(Method::Invite, VIA, None).unwrap();
        assert!(reinvite.to_string().contains(
            "\r\nCSeq: 4 INVITE\r\nRoute: <sip:ss1.atlanta.example.com;lr>\r\nRoute: <sip:ss2.biloxi.example.com;lr>\r\n\
             Contact: <sip:alice@client.atlanta.example.com;transport=udp>\r\n"
        ));
        let ack = d.new_request(Method::Ack, VIA, None).unwrap();
        assert!(ack.to_string().contains("\r\nCSeq: 4 ACK\r\n"));
        assert_eq!(
            d.new_request(Method::Cancel, VIA, None).unwrap_err(),
            DialogError::NotInDialog(Method::Cancel)
        );
        // Target refresh by the re-INVITE's 2xx.
        let ok2 = OK
            .replace("CSeq: 1 INVITE", "CSeq: 4 INVITE")
            .replace("192.0.2.4:5062", "192.0.2.44:5070");
        d.handle_response(&resp(&ok2)).unwrap();
        assert_eq!(d.remote_target(), "sip:bob@192.0.2.44:5070");
    }

    #[test]
    fn a_restored_dialog_byes_like_the_original() {
        // RFC 3261 §15.1.1 after a restart: same tags, route set, target,
        // and the next CSeq.
        let invite = req(INVITE);
        let mut d = Dialog::from_uac_response(&invite, &resp(OK)).unwrap();
        let _ = d.new_request(Method::Info, VIA, None).unwrap();
        let saved = d.save();
        assert_eq!(saved.local_seq, 2);
        let mut back = Dialog::restore(&saved).unwrap();
        assert_eq!(back.save(), saved);
        let bye = back.new_request(Method::Bye, VIA, None).unwrap();
        let expected = d.new_request(Method::Bye, VIA, None).unwrap();
        assert_eq!(bye.to_string(), expected.to_string());
        assert!(bye.to_string().contains("\r\nCSeq: 3 BYE\r\n"));
    }

    #[test]
    fn uac_early_dialog_ends_on_failure_and_481_ends_confirmed() {
        let invite = req(INVITE);
        let mut d = Dialog::from_uac_response(&invite, &resp(RINGING)).unwrap();
        let busy = RINGING.replace("180 Ringing", "486 Busy Here");
        d.handle_response(&resp(&busy)).unwrap();
        assert_eq!(d.state(), DialogState::Terminated);
        assert_eq!(
            d.new_request(Method::Bye, VIA, None).unwrap_err(),
            DialogError::Terminated
        );
        let mut d = Dialog::from_uac_response(&invite, &resp(OK)).unwrap();
        assert_eq!(d.state(), DialogState::Confirmed);
        let gone = OK
            .replace("200 OK", "481 Call/Transaction Does Not Exist")
            .replace("CSeq: 1 INVITE", "CSeq: 2 BYE");
        d.handle_response(&resp(&gone)).unwrap();
        assert_eq!(d.state(), DialogState::Terminated);
        // Responses that do not create dialogs.
        let trying = RINGING.replace("180 Ringing", "100 Trying");
        assert_eq!(
            Dialog::from_uac_response(&invite, &resp(&trying)).unwrap_err(),
            DialogError::NotDialogCreating(100)
        );
        let untagged = RINGING.replace(";tag=314159", "");
        assert_eq!(
            Dialog::from_uac_response(&invite, &resp(&untagged)).unwrap_err(),
            DialogError::MissingTag("To")
        );
        let no_contact = OK.replace("Contact: <sip:bob@192.0.2.4:5062>\r\n", "");
        assert_eq!(
            Dialog::from_uac_response(&invite, &resp(&no_contact)).unwrap_err(),
            DialogError::BadHeader("Contact")
        );
    }

    // An agent's phone calls in through a proxy: we are the UAS.
    const INCOMING: &str = "INVITE sip:powerdial@10.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK2d4790.1\r\n\
Via: SIP/2.0/UDP 192.168.1.20:5062;rport=5062;branch=z9hG4bKnashds8\r\n\
Max-Forwards: 69\r\n\
Record-Route: <sip:proxy.example.com;lr>\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n\
To: <sip:powerdial@10.0.0.1>\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@192.168.1.20:5062>\r\n\
Content-Length: 0\r\n\r\n";

    const OUR_OK: &str = "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK2d4790.1\r\n\
Via: SIP/2.0/UDP 192.168.1.20:5062;rport=5062;branch=z9hG4bKnashds8\r\n\
Record-Route: <sip:proxy.example.com;lr>\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n\
To: <sip:powerdial@10.0.0.1>;tag=pd-77\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:powerdial@10.0.0.1:5060>\r\n\
Content-Length: 0\r\n\r\n";

    fn in_dialog(method: &str, cseq: u32, extra: &str) -> syntax::Request {
        req(&format!(
            "{method} sip:powerdial@10.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK{cseq}\r\n\
             Max-Forwards: 69\r\n\
             From: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n\
             To: <sip:powerdial@10.0.0.1>;tag=pd-77\r\n\
             Call-ID: a84b4c76e66710@pc33.example.com\r\n\
             CSeq: {cseq} {method}\r\n{extra}\
             Content-Length: 0\r\n\r\n"
        ))
    }

    #[test]
    fn uas_routes_in_order_checks_remote_cseq_and_refreshes_target() {
        let mut d = Dialog::from_uas_response(&req(INCOMING), &resp(OUR_OK)).unwrap();
        assert!(!d.is_uac());
        assert_eq!(d.state(), DialogState::Confirmed);
        assert_eq!(d.remote_seq(), Some(314159));
        assert_eq!(d.id().local_tag, "pd-77");
        assert_eq!(d.id().remote_tag, "1928301774");
        let bye = d.new_request(
            Method::Bye,
            "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKb1",
            None,
        );
        assert_eq!(
            bye.unwrap().to_string(),
            "BYE sip:alice@192.168.1.20:5062 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKb1\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:powerdial@10.0.0.1>;tag=pd-77\r\n\
             To: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n\
             Call-ID: a84b4c76e66710@pc33.example.com\r\n\
             CSeq: 1 BYE\r\n\
             Route: <sip:proxy.example.com;lr>\r\n\
             Content-Length: 0\r\n\r\n"
        );
        // The ACK to our 2xx carries the INVITE's CSeq: not checked.
        d.handle_request(&in_dialog("ACK", 314159, "")).unwrap();
        // Lower CSeq → 500.
        let err = d
            .handle_request(&in_dialog("INFO", 314158, ""))
            .unwrap_err();
        assert_eq!(
            err,
            DialogError::CSeqOutOfOrder {
                got: 314158,
                last: 314159
            }
        );
        assert_eq!(err.status().code(), 500);
        d.handle_request(&in_dialog("INFO", 314160, "")).unwrap();
        assert_eq!(d.remote_seq(), Some(314160));
        // A re-INVITE refreshes the remote target.
        d.handle_request(&in_dialog(
            "INVITE",
            314161,
            "Contact: <sip:alice@198.51.100.9:6000>\r\n",
        ))
        .unwrap();
        assert_eq!(d.remote_target(), "sip:alice@198.51.100.9:6000");
        d.handle_request(&in_dialog("BYE", 314162, "")).unwrap();
        assert_eq!(d.state(), DialogState::Terminated);
        let err = d.handle_request(&in_dialog("BYE", 314163, "")).unwrap_err();
        assert_eq!(err.status().code(), 481);
    }

    #[test]
    fn strict_router_becomes_request_uri() {
        let ok = OK.replace(
            "Record-Route: <sip:ss1.atlanta.example.com;lr>\r\n",
            "Record-Route: <sip:ss1.atlanta.example.com>\r\n",
        );
        let mut d = Dialog::from_uac_response(&req(INVITE), &resp(&ok)).unwrap();
        let bye = d.new_request(Method::Bye, VIA, None).unwrap().to_string();
        assert!(
            bye.starts_with("BYE sip:ss1.atlanta.example.com SIP/2.0\r\n"),
            "{bye}"
        );
        assert!(bye.contains(
            "\r\nRoute: <sip:ss2.biloxi.example.com;lr>\r\nRoute: <sip:bob@192.0.2.4:5062>\r\n"
        ));
    }

    #[test]
    fn dialog_set_matches_or_says_481() {
        let mut set = DialogSet::new();
        let d = Dialog::from_uas_response(&req(INCOMING), &resp(OUR_OK)).unwrap();
        let id = d.id().clone();
        assert!(set.insert(d).is_none());
        assert!(set.match_request(&in_dialog("BYE", 314160, "")).is_some());
        assert!(matches!(
            set.classify(&in_dialog("INFO", 314160, "")),
            RequestMatch::Dialog(_)
        ));
        let stranger = req(&in_dialog("BYE", 1, "").to_string().replace("pd-77", "nope"));
        assert!(set.match_request(&stranger).is_none());
        assert!(matches!(set.classify(&stranger), RequestMatch::NoDialog));
        assert!(matches!(
            set.classify(&req(INCOMING)),
            RequestMatch::OutOfDialog
        ));
        // Responses match with the tags the other way round.
        let mut uac = DialogSet::new();
        uac.insert(Dialog::from_uac_response(&req(INVITE), &resp(OK)).unwrap());
        assert!(uac.match_response(&resp(OK)).is_some());
        assert!(uac.match_response(&resp(OUR_OK)).is_none());
        assert_eq!(set.len(), 1);
        assert!(set.remove(&id).is_some());
        assert!(set.is_empty());
    }
}
