//! The SDP subset powerdial speaks (RFC 4566) and RFC 3264 offer/answer for
//! one audio stream with PCMU, PCMA and telephone-event (RFC 4733).
//!
//! Written by hand rather than over an SDP crate: we need a dozen line types,
//! exact control over what an answer mirrors (RFC 3264 §6: one m-line per
//! offered m-line, rejected ones with port 0), and typed errors with the line
//! number; the two candidate crates model far more (ICE, DTLS, bundles) and
//! would still leave offer/answer to us. Unknown lines and attributes are kept
//! so a parsed description prints back what it read.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use super::g711::G711Law;

/// The RTP clock rate of everything we negotiate (G.711 and RFC 4733 at 8 kHz).
pub const CLOCK_RATE: u32 = 8000;
/// The dynamic payload type we offer for telephone-event (RFC 4733 §7.1.1;
/// 101 is the number most phones use).
pub const OFFER_DTMF_PT: u8 = 101;

/// Why an SDP body was refused (RFC 4566 syntax, RFC 3264 negotiation). The
/// call layer maps `NoCommonCodec`/`NoAudio` to 488 Not Acceptable Here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// A line is not `x=value` with a known shape (RFC 4566 §5).
    #[error("SDP line {line}: {kind}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        kind: SyntaxError,
    },
    /// The body is not UTF-8 text.
    #[error("SDP is not UTF-8")]
    NotUtf8,
    /// No `v=0` first line (RFC 4566 §5: the version line starts the body).
    #[error("SDP does not start with v=0")]
    NoVersion,
    /// No usable (port ≠ 0, RTP/AVP) `m=audio` line (RFC 3264 §6).
    #[error("no usable m=audio stream")]
    NoAudio,
    /// The audio stream has neither PCMU nor PCMA (RFC 3264 §6.1).
    #[error("no common codec (we support PCMU and PCMA)")]
    NoCommonCodec,
    /// Neither the media nor the session has a `c=` line (RFC 4566 §5.7).
    #[error("no connection address for the audio stream")]
    NoConnection,
}

/// The kind of syntax error on one SDP line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// Not `<letter>=<value>`.
    #[error("expected `<type>=<value>`")]
    NotTypeValue,
    /// `o=` without its six fields.
    #[error("bad o= line")]
    Origin,
    /// `c=` is not `IN IP4|IP6 <address>`.
    #[error("bad c= line")]
    Connection,
    /// `m=` is not `<media> <port>[/n] <proto> <fmt>…`.
    #[error("bad m= line")]
    Media,
    /// `a=rtpmap:` is not `<pt> <name>/<rate>[/<channels>]`.
    #[error("bad a=rtpmap")]
    RtpMap,
    /// `a=fmtp:` without a payload type.
    #[error("bad a=fmtp")]
    Fmtp,
    /// `a=rtcp:` without a port.
    #[error("bad a=rtcp")]
    Rtcp,
    /// `a=ptime:` not a number.
    #[error("bad a=ptime")]
    Ptime,
}

/// Media direction attribute (RFC 3264 §5.1, §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// Send and receive (the default when no attribute is given).
    #[default]
    SendRecv,
    /// Send only.
    SendOnly,
    /// Receive only.
    RecvOnly,
    /// Neither.
    Inactive,
}

impl Direction {
    /// The answerer's direction for an offered one (RFC 3264 §6.1:
    /// sendonly ↔ recvonly, inactive stays inactive).
    pub fn mirror(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    /// Whether this side sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether this side receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    fn without_send(self) -> Direction {
        match self {
            Direction::SendRecv | Direction::RecvOnly => Direction::RecvOnly,
            Direction::SendOnly | Direction::Inactive => Direction::Inactive,
        }
    }

    fn attr(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
}

/// `o=` (RFC 4566 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// User name (`-` when none).
    pub username: String,
    /// Session id: constant for the life of the session.
    pub session_id: u64,
    /// Version: incremented on every new offer (RFC 3264 §8).
    pub session_version: u64,
    /// Address type and address as written (`IN IP4 192.0.2.1`).
    pub address: String,
}

/// `a=rtpmap:` (RFC 4566 §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// Payload type.
    pub pt: u8,
    /// Encoding name as written (compared case-insensitively).
    pub encoding: String,
    /// Clock rate in Hz.
    pub clock_rate: u32,
    /// Channels (audio), when given.
    pub channels: Option<u8>,
}

/// One `m=` section and its attributes (RFC 4566 §5.14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// `audio`, `video`, …
    pub media: String,
    /// Transport port; 0 means the stream is rejected or disabled.
    pub port: u16,
    /// `RTP/AVP`, `RTP/SAVP`, …
    pub proto: String,
    /// The format list as written (payload type numbers for RTP).
    pub formats: Vec<String>,
    /// Media-level `c=` address.
    pub connection: Option<IpAddr>,
    /// `a=rtpmap` lines.
    pub rtpmaps: Vec<RtpMap>,
    /// `a=fmtp` lines: payload type and parameters.
    pub fmtps: Vec<(u8, String)>,
    /// The direction attribute, if present.
    pub direction: Option<Direction>,
    /// `a=ptime` in milliseconds.
    pub ptime: Option<u32>,
    /// `a=rtcp` port (RFC 3605) when not RTP port + 1.
    pub rtcp_port: Option<u16>,
    /// Other lines of the section (`a=…`, `b=…`), kept verbatim without the
    /// trailing CRLF.
    pub other: Vec<String>,
}

impl MediaDescription {
    /// The payload type numbers of the format list (non-numbers skipped).
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats.iter().filter_map(|f| f.parse().ok())
    }

    /// The rtpmap of a payload type, if the description has one.
    pub fn rtpmap(&self, pt: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|m| m.pt == pt)
    }

    /// The G.711 law a payload type stands for: by rtpmap when given, else
    /// by the static assignment of RFC 3551 Table 4.
    pub fn g711_law(&self, pt: u8) -> Option<G711Law> {
        match self.rtpmap(pt) {
            Some(m) if m.clock_rate == CLOCK_RATE && m.channels.unwrap_or(1) == 1 => {
                if m.encoding.eq_ignore_ascii_case("PCMU") {
                    Some(G711Law::Pcmu)
                } else if m.encoding.eq_ignore_ascii_case("PCMA") {
                    Some(G711Law::Pcma)
                } else {
                    None
                }
            }
            Some(_) => None,
            None => match pt {
                0 => Some(G711Law::Pcmu),
                8 => Some(G711Law::Pcma),
                _ => None,
            },
        }
    }

    /// The payload type of `telephone-event/8000` in this description
    /// (RFC 4733 §7.1.1), if any.
    pub fn telephone_event_pt(&self) -> Option<u8> {
        self.payload_types().find(|pt| {
            self.rtpmap(*pt).is_some_and(|m| {
                m.encoding.eq_ignore_ascii_case("telephone-event") && m.clock_rate == CLOCK_RATE
            })
        })
    }

    fn is_usable_audio(&self) -> bool {
        // RTP/SAVP: SRTP with SDES keys (RFC 3711 §12, RFC 4568) on agent legs.
        self.media == "audio"
            && self.port != 0
            && (self.proto.eq_ignore_ascii_case("RTP/AVP")
                || self.proto.eq_ignore_ascii_case("RTP/SAVP"))
    }
}

/// A session description (RFC 4566 §5), restricted to what a SIP audio call uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// `o=`.
    pub origin: Origin,
    /// `s=` (a single space or `-` when the peer has nothing to say).
    pub session_name: String,
    /// Session-level `c=` address.
    pub connection: Option<IpAddr>,
    /// Session-level direction attribute (applies to media without one).
    pub direction: Option<Direction>,
    /// `t=` as written (`0 0` for unbounded sessions).
    pub timing: String,
    /// Other session-level lines, kept verbatim.
    pub other: Vec<String>,
    /// `m=` sections in order.
    pub media: Vec<MediaDescription>,
}

fn syntax(line: usize, kind: SyntaxError) -> SdpError {
    SdpError::Syntax { line, kind }
}

fn parse_connection(value: &str) -> Option<IpAddr> {
    let mut it = value.split_ascii_whitespace();
    if it.next()? != "IN" {
        return None;
    }
    let ty = it.next()?;
    // Multicast addresses carry a TTL (`/127`); we only keep the address.
    let addr = it.next()?.split('/').next()?;
    let ip: IpAddr = addr.parse().ok()?;
    match (ty, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Some(ip),
        _ => None,
    }
}

fn parse_direction(attr: &str) -> Option<Direction> {
    match attr {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    }
}

impl SessionDescription {
    /// Parses an SDP body (RFC 4566 §5). Lines may end in CRLF or LF;
    /// unknown line types and attributes are kept in `other`.
    pub fn parse(body: &[u8]) -> Result<Self, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
        let mut lines = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .enumerate()
            .map(|(i, l)| (i + 1, l))
            .filter(|(_, l)| !l.is_empty());
        match lines.next() {
            Some((_, "v=0")) => {}
            _ => return Err(SdpError::NoVersion),
        }
        let mut sd = SessionDescription {
            origin: Origin {
                username: "-".into(),
                session_id: 0,
                session_version: 0,
                address: "IN IP4 0.0.0.0".into(),
            },
            session_name: "-".into(),
            connection: None,
            direction: None,
            timing: "0 0".into(),
            other: Vec::new(),
            media: Vec::new(),
        };
        for (n, line) in lines {
            let (ty, value) = line
                .split_once('=')
                .filter(|(t, _)| t.len() == 1)
                .ok_or(syntax(n, SyntaxError::NotTypeValue))?;
            if ty == "m" {
                sd.media.push(parse_media_line(n, value)?);
                continue;
            }
            match sd.media.last_mut() {
                None => sd.parse_session_line(n, ty, value, line)?,
                Some(m) => parse_media_attr(m, n, ty, value, line)?,
            }
        }
        Ok(sd)
    }

    fn parse_session_line(
        &mut self,
        n: usize,
        ty: &str,
        value: &str,
        line: &str,
    ) -> Result<(), SdpError> {
        match ty {
            "o" => {
                let f: Vec<&str> = value.split_ascii_whitespace().collect();
                let [user, id, ver, net, aty, addr] = f.as_slice() else {
                    return Err(syntax(n, SyntaxError::Origin));
                };
                self.origin = Origin {
                    username: (*user).to_string(),
                    session_id: id.parse().map_err(|_| syntax(n, SyntaxError::Origin))?,
                    session_version: ver.parse().map_err(|_| syntax(n, SyntaxError::Origin))?,
                    address: format!("{net} {aty} {addr}"),
                };
            }
            "s" => self.session_name = value.to_string(),
            "c" => {
                self.connection =
                    Some(parse_connection(value).ok_or(syntax(n, SyntaxError::Connection))?)
            }
            "t" => self.timing = value.to_string(),
            "a" => match parse_direction(value) {
                Some(d) => self.direction = Some(d),
                None => self.other.push(line.to_string()),
            },
            _ => self.other.push(line.to_string()),
        }
        Ok(())
    }

    /// The first usable audio stream (port ≠ 0, RTP/AVP) and its index.
    pub fn audio(&self) -> Option<(usize, &MediaDescription)> {
        self.media
            .iter()
            .enumerate()
            .find(|(_, m)| m.is_usable_audio())
    }

    /// The stream's effective direction (media attribute, else session's,
    /// else sendrecv: RFC 3264 §5.1).
    pub fn direction_of(&self, m: &MediaDescription) -> Direction {
        m.direction.or(self.direction).unwrap_or_default()
    }

    /// The stream's effective connection address (media `c=`, else session's).
    pub fn connection_of(&self, m: &MediaDescription) -> Option<IpAddr> {
        m.connection.or(self.connection)
    }

    /// Serialises with CRLF line ends (RFC 4566 §5).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

fn parse_media_line(n: usize, value: &str) -> Result<MediaDescription, SdpError> {
    let mut it = value.split_ascii_whitespace();
    let bad = || syntax(n, SyntaxError::Media);
    let media = it.next().ok_or_else(bad)?.to_string();
    // `port/count` (RFC 4566 §5.14) only appears with multicast; keep the port.
    let port = it
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(bad)?;
    let proto = it.next().ok_or_else(bad)?.to_string();
    let formats: Vec<String> = it.map(str::to_string).collect();
    if formats.is_empty() {
        return Err(bad());
    }
    Ok(MediaDescription {
        media,
        port,
        proto,
        formats,
        connection: None,
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        direction: None,
        ptime: None,
        rtcp_port: None,
        other: Vec::new(),
    })
}

fn parse_media_attr(
    m: &mut MediaDescription,
    n: usize,
    ty: &str,
    value: &str,
    line: &str,
) -> Result<(), SdpError> {
    if ty == "c" {
        m.connection = Some(parse_connection(value).ok_or(syntax(n, SyntaxError::Connection))?);
        return Ok(());
    }
    if ty != "a" {
        m.other.push(line.to_string());
        return Ok(());
    }
    if let Some(d) = parse_direction(value) {
        m.direction = Some(d);
    } else if let Some(v) = value.strip_prefix("rtpmap:") {
        let bad = || syntax(n, SyntaxError::RtpMap);
        let (pt, rest) = v.split_once(' ').ok_or_else(bad)?;
        let mut parts = rest.trim().split('/');
        let encoding = parts.next().filter(|e| !e.is_empty()).ok_or_else(bad)?;
        let clock_rate = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
        let channels = match parts.next() {
            Some(c) => Some(c.parse().map_err(|_| bad())?),
            None => None,
        };
        m.rtpmaps.push(RtpMap {
            pt: pt.trim().parse().map_err(|_| bad())?,
            encoding: encoding.to_string(),
            clock_rate,
            channels,
        });
    } else if let Some(v) = value.strip_prefix("fmtp:") {
        let (pt, params) = v.split_once(' ').unwrap_or((v, ""));
        let pt = pt.parse().map_err(|_| syntax(n, SyntaxError::Fmtp))?;
        m.fmtps.push((pt, params.trim().to_string()));
    } else if let Some(v) = value.strip_prefix("ptime:") {
        m.ptime = Some(
            v.trim()
                .parse()
                .map_err(|_| syntax(n, SyntaxError::Ptime))?,
        );
    } else if let Some(v) = value.strip_prefix("rtcp:") {
        let port = v
            .split_ascii_whitespace()
            .next()
            .and_then(|p| p.parse().ok());
        m.rtcp_port = Some(port.ok_or(syntax(n, SyntaxError::Rtcp))?);
    } else {
        m.other.push(line.to_string());
    }
    Ok(())
}

fn write_connection(f: &mut fmt::Formatter<'_>, ip: IpAddr) -> fmt::Result {
    match ip {
        IpAddr::V4(a) => write!(f, "c=IN IP4 {a}\r\n"),
        IpAddr::V6(a) => write!(f, "c=IN IP6 {a}\r\n"),
    }
}

impl fmt::Display for SessionDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.origin;
        write!(
            f,
            "v=0\r\no={} {} {} {}\r\ns={}\r\n",
            o.username, o.session_id, o.session_version, o.address, self.session_name
        )?;
        if let Some(c) = self.connection {
            write_connection(f, c)?;
        }
        write!(f, "t={}\r\n", self.timing)?;
        for l in &self.other {
            write!(f, "{l}\r\n")?;
        }
        if let Some(d) = self.direction {
            write!(f, "a={}\r\n", d.attr())?;
        }
        for m in &self.media {
            let mut fmts = String::new();
            for x in &m.formats {
                let _ = write!(fmts, " {x}");
            }
            write!(f, "m={} {} {}{}\r\n", m.media, m.port, m.proto, fmts)?;
            if let Some(c) = m.connection {
                write_connection(f, c)?;
            }
            for r in &m.rtpmaps {
                write!(f, "a=rtpmap:{} {}/{}", r.pt, r.encoding, r.clock_rate)?;
                if let Some(ch) = r.channels {
                    write!(f, "/{ch}")?;
                }
                f.write_str("\r\n")?;
            }
            for (pt, p) in &m.fmtps {
                write!(f, "a=fmtp:{pt} {p}\r\n")?;
            }
            if let Some(p) = m.ptime {
                write!(f, "a=ptime:{p}\r\n")?;
            }
            if let Some(p) = m.rtcp_port {
                write!(f, "a=rtcp:{p}\r\n")?;
            }
            for l in &m.other {
                write!(f, "{l}\r\n")?;
            }
            if let Some(d) = m.direction {
                write!(f, "a={}\r\n", d.attr())?;
            }
        }
        Ok(())
    }
}

/// The negotiated codec of a stream: the G.711 law and the payload type the
/// peer uses for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Codec {
    /// PCMU or PCMA.
    pub law: G711Law,
    /// The RTP payload type number (RFC 3264 §6.1: the answer's number is
    /// used in both directions for static types; we keep the peer's).
    pub pt: u8,
}

/// The result of an offer/answer exchange, from our side of the leg (RFC 3264).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Where the peer wants RTP (before symmetric-RTP latching corrects it).
    pub remote: SocketAddr,
    /// Where the peer wants RTCP (`a=rtcp`, else RTP port + 1; RFC 3605).
    pub remote_rtcp: SocketAddr,
    /// The codec both sides use.
    pub codec: Codec,
    /// The telephone-event payload type, when both sides support RFC 4733.
    pub dtmf_pt: Option<u8>,
    /// Our direction on this leg: whether we may send and should expect to
    /// receive (a peer on hold with `c=0.0.0.0` takes our sending away,
    /// RFC 3264 §8.4).
    pub direction: Direction,
    /// Packetisation time in ms the peer asked for (`a=ptime`, default 20).
    pub ptime: u32,
}

fn audio_section(port: u16, ip: IpAddr) -> MediaDescription {
    MediaDescription {
        media: "audio".into(),
        port,
        proto: "RTP/AVP".into(),
        formats: Vec::new(),
        connection: None,
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        direction: None,
        ptime: None,
        rtcp_port: None,
        other: Vec::new(),
    }
    .with_connection(ip)
}

impl MediaDescription {
    fn with_connection(mut self, ip: IpAddr) -> Self {
        self.connection = Some(ip);
        self
    }

    fn push_codec(&mut self, pt: u8, encoding: &str) {
        self.formats.push(pt.to_string());
        self.rtpmaps.push(RtpMap {
            pt,
            encoding: encoding.into(),
            clock_rate: CLOCK_RATE,
            channels: None,
        });
    }

    fn push_dtmf(&mut self, pt: u8) {
        self.push_codec(pt, "telephone-event");
        // RFC 4733 §3.2: events 0-15 are DTMF, 16 is flash.
        self.fmtps.push((pt, "0-16".into()));
    }
}

fn origin(ip: IpAddr, session_version: u64) -> Origin {
    let address = match ip {
        IpAddr::V4(a) => format!("IN IP4 {a}"),
        IpAddr::V6(a) => format!("IN IP6 {a}"),
    };
    Origin {
        username: "powerdial".into(),
        // sess-id only has to be unique and stable; the caller's version seed
        // (a wall-clock number it chose) is both.
        session_id: session_version,
        session_version,
        address,
    }
}

/// Builds our offer (RFC 3264 §5): one sendrecv audio stream on `port`
/// offering PCMU (0), PCMA (8) and telephone-event/8000 (101), ptime 20.
pub fn make_offer(media_ip: IpAddr, port: u16, session_version: u64) -> SessionDescription {
    let mut m = audio_section(port, media_ip);
    m.push_codec(0, "PCMU");
    m.push_codec(8, "PCMA");
    m.push_dtmf(OFFER_DTMF_PT);
    m.ptime = Some(20);
    m.direction = Some(Direction::SendRecv);
    SessionDescription {
        origin: origin(media_ip, session_version),
        session_name: "powerdial".into(),
        connection: None,
        direction: None,
        timing: "0 0".into(),
        other: Vec::new(),
        media: vec![m],
    }
}

/// Our answer to an offer and what it negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The SDP to send back.
    pub sdp: SessionDescription,
    /// The stream parameters for the relay.
    pub negotiated: Negotiated,
}

fn remote_addrs(
    sd: &SessionDescription,
    m: &MediaDescription,
) -> Result<(SocketAddr, SocketAddr, bool), SdpError> {
    let ip = sd.connection_of(m).ok_or(SdpError::NoConnection)?;
    let rtcp_port = m.rtcp_port.unwrap_or_else(|| m.port.wrapping_add(1));
    Ok((
        SocketAddr::new(ip, m.port),
        SocketAddr::new(ip, rtcp_port),
        ip.is_unspecified(),
    ))
}

/// Answers an offer (RFC 3264 §6): the first offered codec we support (PCMU
/// or PCMA, in the offer's order), the offer's telephone-event payload type
/// if it has one, the mirrored direction; every other m-line is rejected
/// with port 0 so the answer has as many m-lines as the offer.
pub fn answer(
    offer: &SessionDescription,
    media_ip: IpAddr,
    port: u16,
    session_version: u64,
) -> Result<Answer, SdpError> {
    let (idx, om) = offer.audio().ok_or(SdpError::NoAudio)?;
    let (pt, law) = om
        .payload_types()
        .find_map(|pt| om.g711_law(pt).map(|l| (pt, l)))
        .ok_or(SdpError::NoCommonCodec)?;
    let dtmf_pt = om.telephone_event_pt();
    let (remote, remote_rtcp, held) = remote_addrs(offer, om)?;
    let offered_dir = offer.direction_of(om);
    let mut our_dir = offered_dir.mirror();
    if held {
        // RFC 3264 §8.4: we must not send to 0.0.0.0; the peer may still send.
        our_dir = our_dir.without_send();
    }

    let mut media = Vec::with_capacity(offer.media.len());
    for (i, m) in offer.media.iter().enumerate() {
        if i == idx {
            let mut a = audio_section(port, media_ip);
            a.push_codec(pt, law.encoding_name());
            if let Some(d) = dtmf_pt {
                a.push_dtmf(d);
            }
            a.ptime = om.ptime;
            a.direction = Some(our_dir);
            media.push(a);
        } else {
            media.push(MediaDescription {
                media: m.media.clone(),
                port: 0,
                proto: m.proto.clone(),
                formats: m.formats.iter().take(1).cloned().collect(),
                connection: None,
                rtpmaps: Vec::new(),
                fmtps: Vec::new(),
                direction: None,
                ptime: None,
                rtcp_port: None,
                other: Vec::new(),
            });
        }
    }
    let sdp = SessionDescription {
        origin: origin(media_ip, session_version),
        session_name: "powerdial".into(),
        connection: None,
        direction: None,
        timing: "0 0".into(),
        other: Vec::new(),
        media,
    };
    Ok(Answer {
        sdp,
        negotiated: Negotiated {
            remote,
            remote_rtcp,
            codec: Codec { law, pt },
            dtmf_pt,
            direction: our_dir,
            ptime: om.ptime.unwrap_or(20),
        },
    })
}

/// What our offer and the peer's answer agreed (RFC 3264 §6.1, §7): the
/// first codec of the answer that we offered, telephone-event if both have
/// it, our direction as the mirror of the answer's.
pub fn negotiated(
    offer_we_sent: &SessionDescription,
    answer: &SessionDescription,
) -> Result<Negotiated, SdpError> {
    let (_, ours) = offer_we_sent.audio().ok_or(SdpError::NoAudio)?;
    let (_, am) = answer.audio().ok_or(SdpError::NoAudio)?;
    let offered: Vec<G711Law> = ours
        .payload_types()
        .filter_map(|pt| ours.g711_law(pt))
        .collect();
    let (pt, law) = am
        .payload_types()
        .find_map(|pt| {
            am.g711_law(pt)
                .filter(|l| offered.contains(l))
                .map(|l| (pt, l))
        })
        .ok_or(SdpError::NoCommonCodec)?;
    let dtmf_pt = match (ours.telephone_event_pt(), am.telephone_event_pt()) {
        (Some(_), Some(theirs)) => Some(theirs),
        _ => None,
    };
    let (remote, remote_rtcp, held) = remote_addrs(answer, am)?;
    let mut our_dir = answer.direction_of(am).mirror();
    if held {
        our_dir = our_dir.without_send();
    }
    Ok(Negotiated {
        remote,
        remote_rtcp,
        codec: Codec { law, pt },
        dtmf_pt,
        direction: our_dir,
        ptime: am.ptime.unwrap_or(20),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BARESIP_OFFER: &str = "v=0\r\n\
o=- 1867563153 3574316640 IN IP4 192.168.1.34\r\n\
s=-\r\n\
c=IN IP4 192.168.1.34\r\n\
t=0 0\r\n\
m=audio 10418 RTP/AVP 96 0 8 101\r\n\
b=AS:128\r\n\
a=rtpmap:96 opus/48000/2\r\n\
a=fmtp:96 stereo=1;sprop-stereo=1\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=rtcp-mux\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

    const PJSIP_OFFER: &str = "v=0\r\n\
o=- 3898770000 3898770000 IN IP4 10.0.0.7\r\n\
s=pjmedia\r\n\
b=AS:84\r\n\
t=0 0\r\n\
a=X-nat:0\r\n\
m=audio 4000 RTP/AVP 8 0 96 97\r\n\
c=IN IP4 10.0.0.7\r\n\
b=TIAS:64000\r\n\
a=rtcp:4001 IN IP4 10.0.0.7\r\n\
a=sendrecv\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:96 telephone-event/8000\r\n\
a=fmtp:96 0-16\r\n\
a=rtpmap:97 telephone-event/16000\r\n\
a=fmtp:97 0-16\r\n\
a=ssrc:1234567 cname:1b4f8c1a\r\n";

    // SIPp's uac_pcap scenario body (LF line ends, no rtpmap for static PTs).
    const SIPP_OFFER: &str = "v=0\n\
o=user1 53655765 2353687637 IN IP4 127.0.0.1\n\
s=-\n\
c=IN IP4 127.0.0.1\n\
t=0 0\n\
m=audio 6000 RTP/AVP 0\n\
a=rtpmap:0 PCMU/8000\n";

    fn parse(s: &str) -> SessionDescription {
        SessionDescription::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn parses_pjsip_offer() {
        let sd = parse(PJSIP_OFFER);
        assert_eq!(sd.origin.session_id, 3898770000);
        let (i, m) = sd.audio().unwrap();
        assert_eq!(i, 0);
        assert_eq!(m.port, 4000);
        assert_eq!(m.rtcp_port, Some(4001));
        assert_eq!(m.connection, Some("10.0.0.7".parse().unwrap()));
        assert_eq!(m.payload_types().collect::<Vec<_>>(), vec![8, 0, 96, 97]);
        assert_eq!(
            m.telephone_event_pt(),
            Some(96),
            "the 16 kHz event is not ours"
        );
        assert_eq!(m.direction, Some(Direction::SendRecv));
        assert_eq!(m.fmtps, vec![(96, "0-16".into()), (97, "0-16".into())]);
        assert!(m.other.iter().any(|l| l.starts_with("a=ssrc:")));
    }

    #[test]
    fn answers_baresip_with_first_supported_codec() {
        let offer = parse(BARESIP_OFFER);
        let ip: IpAddr = "203.0.113.5".parse().unwrap();
        let a = answer(&offer, ip, 20000, 7).unwrap();
        // opus comes first but is not ours; PCMU is the first we support.
        assert_eq!(
            a.negotiated.codec,
            Codec {
                law: G711Law::Pcmu,
                pt: 0
            }
        );
        assert_eq!(a.negotiated.dtmf_pt, Some(101));
        assert_eq!(a.negotiated.remote, "192.168.1.34:10418".parse().unwrap());
        assert_eq!(
            a.negotiated.remote_rtcp,
            "192.168.1.34:10419".parse().unwrap()
        );
        assert_eq!(a.negotiated.direction, Direction::SendRecv);
        let text = a.sdp.to_string();
        assert!(text.contains("m=audio 20000 RTP/AVP 0 101\r\n"), "{text}");
        assert!(text.contains("c=IN IP4 203.0.113.5\r\n"), "{text}");
        assert!(
            text.contains("a=rtpmap:101 telephone-event/8000\r\n"),
            "{text}"
        );
        assert!(text.contains("a=fmtp:101 0-16\r\n"), "{text}");
        assert!(text.contains("a=sendrecv\r\n"), "{text}");
        // The answer parses back to itself.
        assert_eq!(SessionDescription::parse(text.as_bytes()).unwrap(), a.sdp);
    }

    #[test]
    fn answers_pjsip_keeping_its_order_and_event_pt() {
        let a = answer(&parse(PJSIP_OFFER), "127.0.0.1".parse().unwrap(), 20002, 1).unwrap();
        assert_eq!(
            a.negotiated.codec,
            Codec {
                law: G711Law::Pcma,
                pt: 8
            }
        );
        assert_eq!(a.negotiated.dtmf_pt, Some(96));
        assert_eq!(a.negotiated.remote_rtcp, "10.0.0.7:4001".parse().unwrap());
        assert!(a.sdp.to_string().contains("m=audio 20002 RTP/AVP 8 96\r\n"));
    }

    #[test]
    fn answers_sipp_without_dtmf() {
        let a = answer(&parse(SIPP_OFFER), "127.0.0.1".parse().unwrap(), 20004, 1).unwrap();
        assert_eq!(a.negotiated.codec.law, G711Law::Pcmu);
        assert_eq!(a.negotiated.dtmf_pt, None);
        assert_eq!(a.negotiated.remote, "127.0.0.1:6000".parse().unwrap());
        assert!(!a.sdp.to_string().contains("telephone-event"));
    }

    #[test]
    fn mirrors_direction_and_hold() {
        let ip = "127.0.0.1".parse().unwrap();
        let sendonly = SIPP_OFFER.replace(
            "a=rtpmap:0 PCMU/8000\n",
            "a=rtpmap:0 PCMU/8000\na=sendonly\n",
        );
        let a = answer(&parse(&sendonly), ip, 20000, 1).unwrap();
        assert_eq!(a.negotiated.direction, Direction::RecvOnly);
        assert!(a.sdp.to_string().contains("a=recvonly\r\n"));

        let inactive = SIPP_OFFER.replace("t=0 0\n", "t=0 0\na=inactive\n");
        let a = answer(&parse(&inactive), ip, 20000, 1).unwrap();
        assert_eq!(a.negotiated.direction, Direction::Inactive);

        let old_hold = SIPP_OFFER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0");
        let a = answer(&parse(&old_hold), ip, 20000, 1).unwrap();
        assert!(!a.negotiated.direction.sends(), "never send to 0.0.0.0");
        assert!(a.negotiated.direction.receives());
    }

    #[test]
    fn refuses_offers_without_g711() {
        let ip = "127.0.0.1".parse().unwrap();
        let opus_only = BARESIP_OFFER.replace(
            "m=audio 10418 RTP/AVP 96 0 8 101",
            "m=audio 10418 RTP/AVP 96 101",
        );
        assert_eq!(
            answer(&parse(&opus_only), ip, 1, 1),
            Err(SdpError::NoCommonCodec)
        );
        let video_only = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=video 5000 RTP/AVP 96\r\n";
        assert_eq!(answer(&parse(video_only), ip, 1, 1), Err(SdpError::NoAudio));
        let disabled = SIPP_OFFER.replace("m=audio 6000", "m=audio 0");
        assert_eq!(answer(&parse(&disabled), ip, 1, 1), Err(SdpError::NoAudio));
        let no_c = SIPP_OFFER.replace("c=IN IP4 127.0.0.1\n", "");
        assert_eq!(answer(&parse(&no_c), ip, 1, 1), Err(SdpError::NoConnection));
    }

    #[test]
    fn rejects_extra_streams_with_port_zero() {
        let with_video = format!("{SIPP_OFFER}m=video 6002 RTP/AVP 96\na=rtpmap:96 H264/90000\n");
        let a = answer(&parse(&with_video), "127.0.0.1".parse().unwrap(), 20000, 1).unwrap();
        assert_eq!(a.sdp.media.len(), 2);
        assert_eq!(a.sdp.media[1].port, 0);
        assert!(a.sdp.to_string().contains("m=video 0 RTP/AVP 96\r\n"));
    }

    #[test]
    fn offer_and_negotiation_round_trip() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let offer = make_offer(ip, 20010, 42);
        let text = offer.to_string();
        assert_eq!(
            text,
            "v=0\r\no=powerdial 42 42 IN IP4 127.0.0.1\r\ns=powerdial\r\nt=0 0\r\n\
m=audio 20010 RTP/AVP 0 8 101\r\nc=IN IP4 127.0.0.1\r\n\
a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
        );
        let reparsed = SessionDescription::parse(text.as_bytes()).unwrap();
        assert_eq!(reparsed, offer);

        // A carrier answering PCMA with its own event PT, on hold one-way.
        let carrier = "v=0\r\no=gw 5 6 IN IP4 198.51.100.9\r\ns=-\r\nc=IN IP4 198.51.100.9\r\nt=0 0\r\n\
m=audio 31000 RTP/AVP 8 100\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:100 telephone-event/8000\r\na=fmtp:100 0-15\r\na=recvonly\r\n";
        let n = negotiated(&offer, &parse(carrier)).unwrap();
        assert_eq!(
            n.codec,
            Codec {
                law: G711Law::Pcma,
                pt: 8
            }
        );
        assert_eq!(n.dtmf_pt, Some(100));
        assert_eq!(n.direction, Direction::SendOnly);
        assert_eq!(n.remote, "198.51.100.9:31000".parse().unwrap());

        // Our own answer to our own offer negotiates PCMU.
        let a = answer(&offer, ip, 30000, 1).unwrap();
        let n = negotiated(&offer, &a.sdp).unwrap();
        assert_eq!(
            n.codec,
            Codec {
                law: G711Law::Pcmu,
                pt: 0
            }
        );
        assert_eq!(n.dtmf_pt, Some(101));
        assert_eq!(n.remote, "127.0.0.1:30000".parse().unwrap());

        let g729 = carrier.replace("RTP/AVP 8 100", "RTP/AVP 18 100");
        assert_eq!(
            negotiated(&offer, &parse(&g729)),
            Err(SdpError::NoCommonCodec)
        );
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let bad_m = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nm=audio x RTP/AVP 0\r\n";
        assert_eq!(
            SessionDescription::parse(bad_m.as_bytes()),
            Err(SdpError::Syntax {
                line: 4,
                kind: SyntaxError::Media
            })
        );
        let bad_c = "v=0\r\nc=IN IP4 not-an-ip\r\n";
        assert_eq!(
            SessionDescription::parse(bad_c.as_bytes()),
            Err(SdpError::Syntax {
                line: 2,
                kind: SyntaxError::Connection
            })
        );
        assert_eq!(
            SessionDescription::parse(b"o=x\r\n"),
            Err(SdpError::NoVersion)
        );
        assert_eq!(
            SessionDescription::parse(b"v=0\r\ngarbage\r\n"),
            Err(SdpError::Syntax {
                line: 2,
                kind: SyntaxError::NotTypeValue
            })
        );
        assert_eq!(
            SessionDescription::parse(&[b'v', b'=', b'0', b'\n', 0xFF]),
            Err(SdpError::NotUtf8)
        );
        let bad_map = "v=0\r\nm=audio 1 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n";
        assert!(matches!(
            SessionDescription::parse(bad_map.as_bytes()),
            Err(SdpError::Syntax {
                line: 3,
                kind: SyntaxError::RtpMap
            })
        ));
    }
}
