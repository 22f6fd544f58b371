//! The pieces of the RFC 3261 §25 grammar that validation needs: tokens,
//! quoted strings, URIs, name-addr/addr-spec, Via, CSeq, dates. Cheap,
//! allocation-light checks; never a panic on any input.

use std::borrow::Cow;

use super::Defect;

/// A 256-entry membership table: alphanumerics plus `extra`. Every octet
/// of every header value, URI and parameter of every message is classified
/// (SPEC §6): one load per octet instead of a scan of the extra characters.
const fn class_table(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// `token` characters (RFC 3261 §25.1).
static TOKEN_CHARS: [bool; 256] = class_table(b"-.!%*_+`'~");

/// URI characters as sent (RFC 3261 §25.1: unreserved, reserved, escaped;
/// `[` `]` for IPv6 references).
static URI_CHARS: [bool; 256] = class_table(b"-_.!~*'();/?:@&=+$,%[]");

/// `token` characters (RFC 3261 §25.1).
pub(crate) fn is_token_char(c: u8) -> bool {
    TOKEN_CHARS[usize::from(c)]
}

/// A non-empty `token` (RFC 3261 §25.1).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

/// Octets a header value may not carry (RFC 3261 §25.1: TEXT-UTF8 and
/// LWS only; control octets only as a `quoted-pair`, as `intmeth` uses).
pub(crate) fn text_defect(s: &str) -> Option<Defect> {
    // Nearly every value has no control octet at all: one branch-free
    // pass (which the compiler can vectorise) settles those, and only the
    // rest are walked with the quoted-pair rule. Every header line of
    // every message passes here (SPEC §6).
    let any_control = s.bytes().fold(false, |seen, b| {
        seen | ((b < 0x20 && b != b'\t') | (b == 0x7f))
    });
    if !any_control {
        return None;
    }
    let mut escaped = false;
    for b in s.bytes() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' => escaped = true,
            0 => return Some(Defect::NulByte),
            b'\t' => {}
            0x01..=0x1f | 0x7f => return Some(Defect::ControlChar),
            _ => {}
        }
    }
    None
}

/// The index just past the closing quote of the `quoted-string` starting
/// at `start` (RFC 3261 §25.1, with `quoted-pair`).
pub(crate) fn scan_quoted(s: &str, start: usize, header: &'static str) -> Result<usize, Defect> {
    let bytes = s.as_bytes();
    if bytes.get(start) != Some(&b'"') {
        return Err(Defect::UnbalancedQuotes(header));
    }
    let mut i = start + 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(Defect::UnbalancedQuotes(header))
}

/// Split a header value at top-level `sep` (outside quoted strings and
/// angle brackets), as §7.3.1 allows for comma-separated lists.
pub(crate) fn split_top<'a>(
    s: &'a str,
    sep: u8,
    header: &'static str,
) -> Result<Vec<&'a str>, Defect> {
    let bytes = s.as_bytes();
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                i = scan_quoted(s, i, header)?;
                continue;
            }
            b'<' => depth += 1,
            b'>' => depth = depth.saturating_sub(1),
            _ if b == sep && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&s[start..]);
    Ok(parts)
}

/// A decimal number, saturating (RFC 3261 §25.1 `1*DIGIT`); `None` when
/// empty or not all digits.
pub(crate) fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// A parameter: name and optional value (`generic-param`, RFC 3261 §25.1).
pub(crate) type Param<'a> = (&'a str, Option<&'a str>);

/// Parse `*( SEMI generic-param )` (RFC 3261 §25.1); `s` is empty or
/// starts with `;`. LWS around `;` and `=` is allowed (`wsinv`).
pub(crate) fn parse_params<'a>(s: &'a str, header: &'static str) -> Result<Vec<Param<'a>>, Defect> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = s.strip_prefix(';') else {
        return Err(Defect::BadParam(header));
    };
    let mut params = Vec::new();
    for part in split_top(rest, b';', header)? {
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (part.trim(), None),
        };
        if !is_token(name) {
            return Err(Defect::BadParam(header));
        }
        if let Some(v) = value {
            let ok = if v.starts_with('"') {
                scan_quoted(v, 0, header)? == v.len()
            } else {
                !v.is_empty()
                    && v.bytes()
                        .all(|b| is_token_char(b) || b == b':' || b == b'[' || b == b']')
            };
            if !ok {
                return Err(Defect::BadParam(header));
            }
        }
        params.push((name, value));
    }
    Ok(params)
}

/// Characters allowed in a URI as sent (RFC 3261 §25.1: unreserved,
/// reserved, escaped; `[` `]` for IPv6 references).
fn is_uri_char(b: u8) -> bool {
    URI_CHARS[usize::from(b)]
}

/// A `host` (RFC 3261 §25.1: hostname, IPv4address, IPv6reference).
pub(crate) fn is_host(h: &str) -> bool {
    if let Some(inner) = h.strip_prefix('[') {
        return inner.strip_suffix(']').is_some_and(|v6| {
            !v6.is_empty()
                && v6
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        });
    }
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// A `hostport` (RFC 3261 §25.1), port at most 65535.
pub(crate) fn is_hostport(hp: &str) -> bool {
    let (host, port) = match hp.rfind(':') {
        Some(i) if !hp[i..].contains(']') => (&hp[..i], Some(&hp[i + 1..])),
        _ => (hp, None),
    };
    is_host(host) && port.is_none_or(|p| parse_digits(p).is_some_and(|n| n <= 65535))
}

/// Where a URI sits: the Request-URI may not carry `?headers`
/// (RFC 3261 §19.1.5, RFC 4475 `escruri`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum UriPlace {
    RequestLine,
    Header,
}

/// Check an absolute URI and return its scheme (RFC 3261 §19.1, §25.1).
/// SIP and SIPS URIs are checked down to host, port and parameters; other
/// schemes only for characters and escapes.
pub(crate) fn check_uri(uri: &str, place: UriPlace) -> Result<&str, Defect> {
    let bad = || match place {
        UriPlace::RequestLine => Defect::BadRequestUri,
        UriPlace::Header => Defect::BadUri,
    };
    let (scheme, rest) = uri.split_once(':').ok_or_else(bad)?;
    let scheme_ok = scheme
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.');
    if !scheme_ok || rest.is_empty() || !uri.bytes().all(is_uri_char) {
        return Err(bad());
    }
    let bytes = uri.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err(bad());
        }
    }
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        // `@` appears nowhere in a SIP URI but after the userinfo, so the
        // first one ends it even when the user part holds `;` or `?`.
        let after_user = match rest.split_once('@') {
            Some((user, after)) if !user.is_empty() => after,
            Some(_) => return Err(bad()),
            None => rest,
        };
        let (before_headers, headers) = match after_user.split_once('?') {
            Some((b, h)) => (b, Some(h)),
            None => (after_user, None),
        };
        if headers.is_some() && place == UriPlace::RequestLine {
            return Err(Defect::RequestUriHeaders);
        }
        let (hostport, params) = match before_headers.split_once(';') {
            Some((hp, p)) => (hp, Some(p)),
            None => (before_headers, None),
        };
        if !is_hostport(hostport) {
            return Err(bad());
        }
        if let Some(p) = params {
            if p.split(';')
                .any(|kv| kv.split('=').next().is_none_or(str::is_empty))
            {
                return Err(bad());
            }
        }
    }
    Ok(scheme)
}

/// A parsed `name-addr` or `addr-spec` with its header parameters
/// (RFC 3261 §20.10, §20.20, §20.39, §25.1).
#[derive(Debug)]
pub(crate) struct NameAddr<'a> {
    /// The URI, without angle brackets.
    #[cfg_attr(not(test), allow(dead_code))]
    pub uri: &'a str,
    /// Header parameters after the address (`tag`, `expires`, …).
    pub params: Vec<Param<'a>>,
}

impl NameAddr<'_> {
    /// The value of the `tag` parameter (RFC 3261 §19.3).
    pub fn tag(&self) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("tag"))
            .and_then(|(_, v)| *v)
    }
}

/// Parse one `name-addr` / `addr-spec` element. `brackets_required` for
/// Route and Record-Route (`route-param = name-addr`).
pub(crate) fn parse_name_addr<'a>(
    s: &'a str,
    header: &'static str,
    brackets_required: bool,
) -> Result<NameAddr<'a>, Defect> {
    let (uri, rest) = split_name_addr(s, header, brackets_required)?;
    check_uri(uri, UriPlace::Header).map_err(|_| Defect::BadAddress(header))?;
    let params = parse_params(rest, header)?;
    Ok(NameAddr { uri, params })
}

/// [`parse_name_addr`] without its URI check, for a value it has already
/// accepted: the response to a request reads the request's To once more
/// for its tag (§8.2.6.2), and the URI check is half the cost of a parse
/// (SPEC §6, REGISTER per cycle). On a value `parse_name_addr` accepts it
/// gives the same parameters.
pub(crate) fn parse_checked_name_addr<'a>(
    s: &'a str,
    header: &'static str,
) -> Result<NameAddr<'a>, Defect> {
    let (uri, rest) = split_name_addr(s, header, false)?;
    let params = parse_params(rest, header)?;
    Ok(NameAddr { uri, params })
}

/// The URI and the text after it (the header parameters) of a
/// `name-addr` / `addr-spec`, its structure checked.
fn split_name_addr<'a>(
    s: &'a str,
    header: &'static str,
    brackets_required: bool,
) -> Result<(&'a str, &'a str), Defect> {
    let s = s.trim();
    let (uri, rest) = if s.starts_with('"') {
        let end = scan_quoted(s, 0, header)?;
        bracketed(s[end..].trim_start(), header)?
    } else if let Some(lt) = s.find('<') {
        let display = &s[..lt];
        if !display.split_whitespace().all(is_token) {
            return Err(Defect::BadDisplayName(header));
        }
        bracketed(&s[lt..], header)?
    } else {
        if brackets_required {
            return Err(Defect::BadAddress(header));
        }
        if s.contains('>') {
            return Err(Defect::UnbalancedAngles(header));
        }
        let (uri, rest) = match s.find(';') {
            Some(i) => s.split_at(i),
            None => (s, ""),
        };
        let uri = uri.trim_end();
        // §20: a URI with `,` `?` or `;` must be enclosed in brackets
        // (RFC 4475 `regbadct`).
        if uri.contains(['?', ',']) || uri.contains(char::is_whitespace) {
            return Err(Defect::BadAddress(header));
        }
        (uri, rest)
    };
    Ok((uri, rest))
}

fn bracketed<'a>(s: &'a str, header: &'static str) -> Result<(&'a str, &'a str), Defect> {
    let inner = s.strip_prefix('<').ok_or(Defect::BadAddress(header))?;
    let gt = inner.find('>').ok_or(Defect::UnbalancedAngles(header))?;
    let uri = &inner[..gt];
    if uri.contains('<') {
        return Err(Defect::UnbalancedAngles(header));
    }
    // LAQUOT/RAQUOT take no whitespace inside (RFC 4475 `badaspec`).
    if uri.is_empty() || uri.contains(char::is_whitespace) {
        return Err(Defect::BadAddress(header));
    }
    Ok((uri, &inner[gt + 1..]))
}

/// One `via-parm` (RFC 3261 §20.42, §25.1), LWS around `/` tolerated.
/// Held as few strings (every message's Vias pass here: SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ViaParm {
    /// The SIP version, `2.0` in any message we accept.
    pub version: Cow<'static, str>,
    /// `UDP`, `TCP`, `TLS`, `SCTP` or an extension token, upper-cased.
    pub transport: Cow<'static, str>,
    /// `host[:port]` without whitespace.
    pub sent_by: String,
    /// The parameters as `;name[=value]` each, whitespace removed.
    pub params: String,
}

impl ViaParm {
    /// The `branch` parameter (RFC 3261 §8.1.1.7).
    pub fn branch(&self) -> Option<&str> {
        // `;` inside a quoted value does not start a parameter.
        let mut quoted = false;
        let mut start = 0;
        let bytes = self.params.as_bytes();
        for i in 0..=bytes.len() {
            match bytes.get(i) {
                Some(b'"') => quoted = !quoted,
                Some(b';') | None if !quoted => {
                    let piece = &self.params[start..i];
                    start = i + 1;
                    if let Some((n, v)) = piece.split_once('=') {
                        if n.eq_ignore_ascii_case("branch") {
                            return Some(v);
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Appends the normalised text (`SIP/2.0/UDP host;name=value`).
    pub fn write_to(&self, out: &mut String) {
        out.push_str("SIP/");
        out.push_str(&self.version);
        out.push('/');
        out.push_str(&self.transport);
        out.push(' ');
        out.push_str(&self.sent_by);
        out.push_str(&self.params);
    }
}

impl std::fmt::Display for ViaParm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::with_capacity(16 + self.sent_by.len() + self.params.len());
        self.write_to(&mut s);
        f.write_str(&s)
    }
}

/// Parse every `via-parm` of one Via header value.
pub(crate) fn parse_via(value: &str) -> Result<Vec<ViaParm>, Defect> {
    split_top(value, b',', "Via")?
        .into_iter()
        .map(parse_via_parm)
        .collect()
}

fn parse_via_parm(s: &str) -> Result<ViaParm, Defect> {
    let mut parts = s.splitn(3, '/');
    let (Some(name), Some(version), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Defect::BadVia);
    };
    // Another version still gives an address: the 505 for it goes there.
    let version = version.trim();
    let version_ok = version
        .split_once('.')
        .is_some_and(|(a, b)| parse_digits(a).is_some() && parse_digits(b).is_some());
    if !name.trim().eq_ignore_ascii_case("SIP") || !version_ok {
        return Err(Defect::BadVia);
    }
    let rest = rest.trim_start();
    let (transport, rest) = rest.split_once([' ', '\t']).ok_or(Defect::BadVia)?;
    if !is_token(transport) {
        return Err(Defect::BadVia);
    }
    let (sent_by, params) = match rest.find(';') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    // COLON is SWS ":" SWS (§25.1), so whitespace may surround the port.
    let sent_by: String = if sent_by.contains(char::is_whitespace) {
        sent_by.split_whitespace().collect()
    } else {
        sent_by.to_string()
    };
    if !is_hostport(&sent_by) {
        return Err(Defect::BadVia);
    }
    let params = parse_params(params, "Via").map_err(|_| Defect::BadVia)?;
    let mut text = String::with_capacity(rest.len());
    for (n, v) in params {
        text.push(';');
        text.push_str(n);
        if let Some(v) = v {
            text.push('=');
            text.push_str(v);
        }
    }
    let version = if version == "2.0" {
        Cow::Borrowed("2.0")
    } else {
        Cow::Owned(version.to_string())
    };
    let transport = match transport {
        t if t.eq_ignore_ascii_case("UDP") => Cow::Borrowed("UDP"),
        t if t.eq_ignore_ascii_case("TCP") => Cow::Borrowed("TCP"),
        t if t.eq_ignore_ascii_case("TLS") => Cow::Borrowed("TLS"),
        t => Cow::Owned(t.to_ascii_uppercase()),
    };
    Ok(ViaParm {
        version,
        transport,
        sent_by,
        params: text,
    })
}

/// What RFC 3261 §17.2.3 compares of the top via-parm: its sent-by (whitespace
/// removed) and its `branch`, read off the text without a typed parse
/// (transaction matching, a response's To tag).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TopVia<'a> {
    /// `host[:port]` as written, whitespace inside removed later.
    pub(crate) sent_by: &'a str,
    /// The `branch` value, if any.
    pub(crate) branch: Option<&'a str>,
}

/// Reads the top via-parm of a Via header value: `sent-protocol LWS
/// sent-by *( SEMI via-params )` (RFC 3261 §20.42, §25.1); `None` when it
/// has no sent-by.
pub(crate) fn scan_top_via(value: &str) -> Option<TopVia<'_>> {
    // The first via-parm ends at a comma outside a quoted parameter value.
    let mut quoted = false;
    let mut end = value.len();
    for (i, b) in value.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let first = &value[..end];
    let (sent, params) = match first.find(';') {
        Some(i) => (&first[..i], &first[i + 1..]),
        None => (first, ""),
    };
    // "SIP / 2.0 / UDP host : port": the sent-by follows the transport.
    let mut slashes = 0;
    let mut after_protocol = None;
    for (i, b) in sent.bytes().enumerate() {
        if b == b'/' {
            slashes += 1;
            if slashes == 2 {
                after_protocol = Some(i + 1);
                break;
            }
        }
    }
    let transport_and_host = sent.get(after_protocol?..)?.trim_start();
    let host_at = transport_and_host.find([' ', '\t'])?;
    let sent_by = transport_and_host[host_at..].trim();
    if sent_by.is_empty() {
        return None;
    }
    let branch = params.split(';').find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("branch")
            .then(|| value.trim())
    });
    Some(TopVia { sent_by, branch })
}

/// Parse `CSeq: 1*DIGIT LWS Method` (RFC 3261 §20.16); the number must be
/// below 2^31 (§8.1.1.5).
pub(crate) fn parse_cseq(value: &str) -> Result<(u32, &str), Defect> {
    let mut words = value.split_whitespace();
    let (Some(num), Some(method), None) = (words.next(), words.next(), words.next()) else {
        return Err(Defect::BadCSeq);
    };
    let n = parse_digits(num).ok_or(Defect::BadCSeq)?;
    if !is_token(method) {
        return Err(Defect::BadCSeq);
    }
    let n = u32::try_from(n)
        .ok()
        .filter(|n| *n <= 0x7fff_ffff)
        .ok_or(Defect::CSeqTooLarge)?;
    Ok((n, method))
}

/// Check `Date: rfc1123-date` (RFC 3261 §20.17: always GMT).
pub(crate) fn is_sip_date(value: &str) -> bool {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let w: Vec<&str> = value.split(' ').collect();
    let [wkday, day, month, year, time, zone] = w.as_slice() else {
        return false;
    };
    let two = |s: &str, max: u64| s.len() == 2 && parse_digits(s).is_some_and(|n| n <= max);
    let hms: Vec<&str> = time.split(':').collect();
    wkday.strip_suffix(',').is_some_and(|d| DAYS.contains(&d))
        && two(day, 31)
        && MONTHS.contains(month)
        && year.len() == 4
        && parse_digits(year).is_some()
        && matches!(hms.as_slice(), [h, m, s] if two(h, 23) && two(m, 59) && two(s, 60))
        && *zone == "GMT"
}

/// Check `Content-Type: m-type "/" m-subtype *(SEMI m-parameter)`
/// (RFC 3261 §20.15).
pub(crate) fn is_media_type(value: &str) -> bool {
    let (mime, params) = match value.find(';') {
        Some(i) => value.split_at(i),
        None => (value, ""),
    };
    let Some((t, sub)) = mime.split_once('/') else {
        return false;
    };
    is_token(t.trim()) && is_token(sub.trim()) && parse_params(params, "Content-Type").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_checked_per_rfc_3261_section_25() {
        let ok = [
            "sip:user@example.com",
            "sip:user;par=u%40example.net@example.com",
            "sips:[2001:db8::1]:5061;transport=tcp",
            "tel:+15551234567",
            "nobodyKnowsThisScheme:totallyopaquecontent",
            "soap.beep://192.0.2.103:3002",
            "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com",
        ];
        for u in ok {
            assert!(check_uri(u, UriPlace::RequestLine).is_ok(), "{u}");
        }
        let bad = [
            "<sip:user@example.com>",
            "sip:user@example.com?Route=%3Csip:example.com%3E",
            "sip:user@exa mple.com",
            "sip:%zz@example.com",
            "sip:@example.com",
            "user@example.com",
            "sip:user@example.com:99999",
            "sip:user@example.com;;",
            ":x",
            "",
        ];
        for u in bad {
            assert!(check_uri(u, UriPlace::RequestLine).is_err(), "{u}");
        }
        assert!(check_uri("sip:u@h?Route=%3Csip:x%3E", UriPlace::Header).is_ok());
    }

    #[test]
    fn name_addr_forms() {
        let na = parse_name_addr(
            r#""J Rosenberg \\\""  <sip:j@example.com> ; tag = 98asjd8"#,
            "From",
            false,
        )
        .unwrap();
        assert_eq!(na.uri, "sip:j@example.com");
        assert_eq!(na.tag(), Some("98asjd8"));
        let na =
            parse_name_addr("sip:+1972@gw1.example.net;unknownparam", "Contact", false).unwrap();
        assert_eq!(na.uri, "sip:+1972@gw1.example.net");
        assert!(parse_name_addr("caller<sip:caller@example.com>;tag=323", "From", false).is_ok());
        for (s, d) in [
            (
                r#""Mr. J. User <sip:j@example.com>"#,
                Defect::UnbalancedQuotes("To"),
            ),
            ("< sip:t@example.org >", Defect::BadAddress("To")),
            (
                "Bell, Alexander <sip:a@example.com>",
                Defect::BadDisplayName("To"),
            ),
            ("<sip:a@example.com", Defect::UnbalancedAngles("To")),
            ("sip:u@example.com?Route=x", Defect::BadAddress("To")),
            ("<sip:a@example.com>;;;", Defect::BadParam("To")),
        ] {
            assert_eq!(parse_name_addr(s, "To", false).unwrap_err(), d, "{s}");
        }
        assert!(parse_name_addr("sip:a@example.com", "Route", true).is_err());
    }

    #[test]
    fn via_with_lws_is_normalised() {
        let v = parse_via("SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8  , SIP / 2.0 / UDP 192.168.255.111 ; branch= z9hG4bK30239").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0].to_string(),
            "SIP/2.0/TCP spindle.example.com;branch=z9hG4bK9ikj8"
        );
        assert_eq!(v[1].branch(), Some("z9hG4bK30239"));
        assert!(parse_via("SIP/2.0/UDP 192.0.2.15;;,;,,").is_err());
        assert_eq!(
            parse_via("SIP/7.0/UDP c.example.com").map(|v| v[0].version.clone()),
            Ok("7.0".into())
        );
        assert!(parse_via("SIP/x/UDP c.example.com").is_err());
        assert!(parse_via("SIP/2.0/UDP").is_err());
    }

    #[test]
    fn cseq_date_numbers() {
        assert_eq!(parse_cseq("0009 INVITE"), Ok((9, "INVITE")));
        assert_eq!(parse_cseq("2147483648 INVITE"), Err(Defect::CSeqTooLarge));
        assert_eq!(
            parse_cseq("36893488147419103232 REGISTER"),
            Err(Defect::CSeqTooLarge)
        );
        assert_eq!(parse_cseq("1"), Err(Defect::BadCSeq));
        assert!(is_sip_date("Sat, 15 Oct 2005 04:44:56 GMT"));
        assert!(!is_sip_date("Fri, 01 Jan 2010 16:00:00 EST"));
        assert_eq!(parse_digits("0068"), Some(68));
        assert_eq!(parse_digits("-999"), None);
        assert_eq!(parse_digits(&"9".repeat(100)), Some(u64::MAX));
        assert_eq!(text_defect("a\\\0b"), None);
        assert_eq!(text_defect("a\0b"), Some(Defect::NulByte));
    }
}
