//! Phone numbers normalised to E.164 (ITU-T E.164, written `+CC…`).

use std::fmt;
use std::str::FromStr;

use phonenumber::country::Id as CountryId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a raw phone number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// Nothing but blanks or punctuation was given.
    #[error("empty phone number")]
    Empty,
    /// A character that has no place in a phone number (letters, `@`, …).
    #[error("unexpected character {0:?} in phone number")]
    BadCharacter(char),
    /// The default region is not an ISO 3166-1 alpha-2 code known to the
    /// numbering plan data.
    #[error("unknown region {0:?}")]
    UnknownRegion(String),
    /// The digits do not form a number at all (too few digits, E.164's
    /// 15-digit limit exceeded, not E.164 where E.164 is required).
    #[error("not a valid phone number: {0}")]
    Invalid(String),
    /// No country uses this country code (ITU-T E.164 assigned codes, as
    /// listed in the numbering plan data).
    #[error("not a valid phone number: unknown country code +{0}")]
    UnknownCountryCode(u16),
    /// The country code is known, but the national number's length is not
    /// one its numbering plan uses.
    #[error(
        "not a valid number for {plan}: {digits} digits after +{code}, numbers there have {expected}"
    )]
    WrongLength {
        /// The country code.
        code: u16,
        /// The code and the regions sharing it, e.g. `+1 (US, CA, …)`.
        plan: String,
        /// The national number's length.
        digits: usize,
        /// The lengths the plan allows, e.g. `10` or `9 or 10`.
        expected: String,
    },
    /// The country code and the length are right, but the number lies in
    /// no range the numbering plan data lists (e.g. an area code that is
    /// not in service).
    #[error("not a valid number for {plan}: {reason}")]
    NotInPlan {
        /// The country code.
        code: u16,
        /// The code and the regions sharing it, e.g. `+1 (US, CA, …)`.
        plan: String,
        /// What is wrong, as precisely as the metadata tells.
        reason: String,
    },
}

/// A phone number in E.164 form (`+14155550134`): the only shape stored and
/// dialled (R2, R11: anything else is refused before it reaches a trunk).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneE164(String);

impl PhoneE164 {
    /// Parses a number as a person would write it (`(415) 555-0134`,
    /// `+44 20 7946 0958`, `00 33 1 …`), reading numbers without a country
    /// code in `default_region` (the `[leads] default_region` key, ISO
    /// 3166-1 alpha-2), and returns its E.164 form. Letters and other
    /// garbage are refused with the reason, and so are numbers whose length
    /// is impossible for their country (ITU-T E.164 §6).
    pub fn parse(raw: &str, default_region: &str) -> Result<PhoneE164, PhoneError> {
        let trimmed = raw.trim();
        let mut digits = 0usize;
        // The digits alone, for the fast path (E.164 has at most 15).
        let mut buf = [0u8; fast::MAX_DIGITS];
        for (i, c) in trimmed.chars().enumerate() {
            match c {
                '0'..='9' => {
                    if let Some(slot) = buf.get_mut(digits) {
                        *slot = c as u8;
                    }
                    digits += 1;
                }
                '+' if i == 0 => {}
                ' ' | '-' | '.' | '(' | ')' | '/' | '\u{a0}' => {}
                other => return Err(PhoneError::BadCharacter(other)),
            }
        }
        if digits == 0 {
            return Err(PhoneError::Empty);
        }
        let region_id = default_region.trim().to_ascii_uppercase();
        let region = CountryId::from_str(&region_id)
            .map_err(|_| PhoneError::UnknownRegion(default_region.to_string()))?;
        if digits <= fast::MAX_DIGITS {
            let plus = trimmed.starts_with('+');
            let code_group = if plus {
                fast::rfc3966_code_group(trimmed)
            } else {
                None
            };
            if let Some(p) = fast::parse(&buf[..digits], plus, code_group, &region_id) {
                return Ok(p);
            }
        }
        Self::parse_full(trimmed, region)
    }

    /// The full parser (the `phonenumber` crate), for what the fast path
    /// does not answer: every refusal and every number written with a
    /// prefix (national, international) or in an unusual form.
    fn parse_full(trimmed: &str, region: CountryId) -> Result<PhoneE164, PhoneError> {
        // A number written with `+` carries its country: parsing it with a
        // region would let that region's national prefix be stripped
        // (`+33 1 …` read with US lost its `1`).
        let hint = if trimmed.starts_with('+') {
            None
        } else {
            Some(region)
        };
        let number =
            phonenumber::parse(hint, trimmed).map_err(|e| PhoneError::Invalid(e.to_string()))?;
        if !phonenumber::is_viable(trimmed) {
            return Err(PhoneError::Invalid("too short".into()));
        }
        let formatted = number.format().mode(phonenumber::Mode::E164).to_string();
        // libphonenumber's validity check rejects fictional ranges used in
        // examples and tests (555-01xx); length plausibility is checked here
        // and dialability is the trunk's `allow` patterns' job (R11).
        let national = formatted.trim_start_matches('+');
        if national.len() < 8 || national.len() > 15 {
            return Err(PhoneError::Invalid(format!(
                "{} digits, E.164 numbers have 8 to 15",
                national.len()
            )));
        }
        if number.country().id().is_none() {
            // A code shared by several regions (+1, +7, +44, …) resolves to
            // one only when the number lies in a range of that region.
            return Err(explain_invalid(
                number.code().value(),
                &number.national().to_string(),
            ));
        }
        Ok(PhoneE164(formatted))
    }

    /// Accepts a string that must already be E.164 (`+` and 7 to 15 digits),
    /// as stored in the database.
    pub fn from_e164(s: &str) -> Result<PhoneE164, PhoneError> {
        let digits = s
            .strip_prefix('+')
            .ok_or_else(|| PhoneError::Invalid("missing leading +".into()))?;
        if digits.len() < 7 || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PhoneError::Invalid(format!("{s:?} is not E.164")));
        }
        Ok(PhoneE164(s.to_string()))
    }

    /// The E.164 string, `+` included.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Loads the numbering plan data now: the `phonenumber` crate parses its
/// metadata and compiles the region's patterns on first use (about 100 ms
/// here), which the first request reading a number would otherwise wait
/// for (SPEC §4: `POST /api/v1/calls` answers at once).
pub fn load_numbering_plan(default_region: &str) {
    fast::warm(&default_region.trim().to_ascii_uppercase());
    let _ = PhoneE164::parse("+1 202 555 0100", default_region);
    let _ = PhoneE164::parse("202 555 0100", default_region);
}

/// The region (ISO 3166-1 alpha-2) of an E.164 number by the numbering
/// plan data, as `phonenumber::parse(None, e164)` and then
/// `PhoneNumber::country().id()` tell it, answered from the fast path's
/// compiled plans when it can tell (a number it would accept as written);
/// `None` otherwise: ask the full parser. Unlike the full parser it takes
/// no process-wide lock and compiles none of the crate's own patterns
/// (SPEC §6 memory: the crate's patterns of one country held about 2.5 MB
/// on the first call to it).
pub fn plan_region(e164: &str) -> Option<&'static str> {
    fast::region_of(e164)
}

/// Why a number of country code `code` resolved to no region, from the
/// numbering plan data (libphonenumber's metadata, as the `phonenumber`
/// crate ships it): an unknown code, a length the plan does not use, or a
/// number outside every range of the regions sharing the code.
fn explain_invalid(code: u16, national: &str) -> PhoneError {
    let db = &*phonenumber::metadata::DATABASE;
    let Some(metas) = db.by_code(&code).filter(|m| !m.is_empty()) else {
        return PhoneError::UnknownCountryCode(code);
    };
    let plan = plan_name(code, &metas);
    // The lengths of the code's main region (libphonenumber's
    // `isMainCountryForCode`: the US for +1, RU for +7): the smaller
    // regions sharing a code follow its plan.
    let lengths_of = |metas: &mut dyn Iterator<Item = &&phonenumber::Metadata>| -> Vec<u16> {
        metas
            .flat_map(|m| descriptors(m))
            .flat_map(|d| d.possible_length().iter().copied())
            .collect()
    };
    let mut lengths = lengths_of(&mut metas.iter().filter(|m| m.is_main_country_for_code()));
    if lengths.is_empty() {
        lengths = lengths_of(&mut metas.iter());
    }
    lengths.sort_unstable();
    lengths.dedup();
    let digits = national.len();
    if !lengths.is_empty() && !lengths.iter().any(|&l| usize::from(l) == digits) {
        let expected = match lengths.as_slice() {
            [one] => one.to_string(),
            [init @ .., last] => format!(
                "{} or {last}",
                init.iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            [] => String::new(),
        };
        return PhoneError::WrongLength {
            code,
            plan,
            digits,
            expected,
        };
    }
    let in_any = |n: &str| metas.iter().any(|m| valid_in(m, n));
    let reason = if code == 1 && digits == 10 {
        // North American Numbering Plan: NPA-NXX-XXXX, where neither the
        // area code (NPA) nor the exchange (NXX) starts with 0 or 1.
        let (npa, rest) = national.split_at(3);
        let nxx = &rest[..3];
        let probes = ["000000", "234567", "555555", "999999"];
        let npa_used = (b'2'..=b'9').any(|d| {
            probes
                .iter()
                .any(|p| in_any(&format!("{npa}{}{p}", char::from(d))))
        });
        if !npa_used {
            format!("area code {npa} is not in service")
        } else if nxx.starts_with(['0', '1']) {
            format!("exchange {nxx} cannot start with 0 or 1 (NPA-NXX-XXXX)")
        } else {
            format!("exchange {nxx} of area code {npa} is not in service")
        }
    } else {
        format!("{national} is in no number range of the plan")
    };
    PhoneError::NotInPlan { code, plan, reason }
}

/// Whether `national` is a number of some type (fixed line, mobile, toll
/// free, …) in this region's plan.
/// (libphonenumber's `getNumberType() != UNKNOWN`; the crate keeps its
/// own version private.)
fn valid_in(meta: &phonenumber::Metadata, national: &str) -> bool {
    meta.descriptors().general().is_match(national)
        && descriptors(meta).any(|desc| desc.is_match(national))
}

/// The number types a region's plan describes (fixed line, mobile, …).
fn descriptors(
    meta: &phonenumber::Metadata,
) -> impl Iterator<Item = &phonenumber::metadata::Descriptor> {
    let d = meta.descriptors();
    [
        d.fixed_line(),
        d.mobile(),
        d.toll_free(),
        d.premium_rate(),
        d.shared_cost(),
        d.personal_number(),
        d.voip(),
        d.pager(),
        d.uan(),
        d.voicemail(),
    ]
    .into_iter()
    .flatten()
}

/// `+1 (US, CA, …)`: the code and the regions that share it, main first.
fn plan_name(code: u16, metas: &[&phonenumber::Metadata]) -> String {
    let mut ids: Vec<&str> = Vec::new();
    for m in metas.iter().filter(|m| m.is_main_country_for_code()) {
        ids.push(m.id());
    }
    for m in metas.iter().filter(|m| !m.is_main_country_for_code()) {
        ids.push(m.id());
    }
    ids.retain(|id| *id != "001");
    // Canada next to the US: the two a reader expects under +1.
    if let Some(i) = ids.iter().position(|id| *id == "CA") {
        let ca = ids.remove(i);
        ids.insert(ids.len().min(1), ca);
    }
    match ids.len() {
        0 => format!("+{code}"),
        1..=4 => format!("+{code} ({})", ids.join(", ")),
        _ => format!("+{code} ({}, …)", ids[..2].join(", ")),
    }
}

/// The fast path of [`PhoneE164::parse`]: a number written as its digits
/// (with the usual punctuation), either `+` and the country code first or
/// in national form for the default region without a national prefix
/// (`(415) 555-0134` read in the US), is checked against the numbering
/// plan data directly and formatted as `+` code national, skipping the
/// general parser.
///
/// Written here because the `phonenumber` crate offers no cheaper entry:
/// its parser runs nom combinators and several regular expressions per
/// number, and every pattern it matches goes through one process-wide
/// `Mutex` around an LRU cache keyed by the pattern's text (hashed in full
/// on each use; the US fixed-line pattern is hundreds of bytes). That was
/// a third of the import's CPU (BENCHMARKS.md, "Lead import"). Here the
/// same patterns, from the same metadata, are compiled once per country
/// code, anchored, and matched without a lock.
///
/// It answers only when it can tell the full parser would accept the
/// number and give the same E.164 form, i.e. when every step of
/// `phonenumber::parse` that could rewrite the digits is a no-op: no
/// international (IDD) prefix and no country code at the start of a
/// national number, no national prefix (libphonenumber's
/// `national_prefix_for_parsing`) and no leading zero; and the number
/// resolves to a region the way `PhoneNumber::country().id()` does
/// (`validator::source_for`: a code of one region, else the first region
/// whose leading digits or number types match). Anything else (every
/// refusal, with its detailed reason, and every number with a prefix) goes
/// to the full parser. The tests compare both on generated numbers.
mod fast {
    use std::sync::OnceLock;

    use regex::{Regex, RegexBuilder};

    /// Most digits the fast path reads: E.164 allows 15 in all.
    pub(super) const MAX_DIGITS: usize = 15;

    /// A number pattern of the plan data, anchored at the start: the crate's
    /// `Descriptor::is_match` (`find` starting at 0) after its length check.
    struct Desc {
        re: Regex,
        lengths: Vec<u16>,
    }

    impl Desc {
        fn new(d: &phonenumber::metadata::Descriptor) -> Option<Desc> {
            Some(Desc {
                re: anchored(d.national_number().as_str())?,
                lengths: d.possible_length().to_vec(),
            })
        }

        fn is_match(&self, national: &str) -> bool {
            (self.lengths.is_empty()
                || self
                    .lengths
                    .iter()
                    .any(|&l| usize::from(l) == national.len()))
                && self.re.is_match(national)
        }
    }

    /// Compiles a plan pattern as the crate does (`ignore_whitespace`),
    /// matching only at the start of the text, with ASCII classes: the
    /// fast path only ever matches ASCII digits, on which the crate's
    /// Unicode `\d` (every script's digits) matches the same, while its
    /// automata are many times larger (the 25 regions of +1 compiled with
    /// Unicode classes held about 9 MB of heap, heaptrack of the server at
    /// start; SPEC §6 memory). A pattern that cannot be compiled so (one
    /// that could then match invalid UTF-8) is compiled as the crate does.
    fn anchored(pattern: &str) -> Option<Regex> {
        let anchored = format!("^(?:{pattern})");
        RegexBuilder::new(&anchored)
            .ignore_whitespace(true)
            .unicode(false)
            .build()
            .or_else(|_| RegexBuilder::new(&anchored).ignore_whitespace(true).build())
            .ok()
    }

    /// One region of a country code. Only its leading digits are compiled
    /// with the code's plan; its number patterns are compiled the first
    /// time a number reaches this region (most numbers of +1 resolve to
    /// the US, the first region, and never compile the 24 others).
    struct RegionPlan {
        id: &'static str,
        /// Whether the id is a country (`country::Id`); `001`, the
        /// non-geographic entities, is not.
        country: bool,
        leading_digits: Option<Regex>,
        meta: &'static phonenumber::Metadata,
        /// `None` inside when a pattern does not compile: the fast path
        /// then declines every number that needs this region's patterns.
        numbers: OnceLock<Option<RegionNumbers>>,
    }

    /// The patterns of a region's numbers and prefixes.
    struct RegionNumbers {
        general: Desc,
        /// The types `validator::number_type` tries (premium rate, toll
        /// free, shared cost, VoIP, personal, pager, UAN, voicemail, fixed
        /// line, mobile).
        types: Vec<Desc>,
        national_prefix: Option<String>,
        prefix_for_parsing: Option<Regex>,
        international_prefix: Option<Regex>,
    }

    impl RegionNumbers {
        fn new(meta: &phonenumber::Metadata) -> Option<RegionNumbers> {
            let d = meta.descriptors();
            let mut types = Vec::new();
            for desc in [
                d.premium_rate(),
                d.toll_free(),
                d.shared_cost(),
                d.voip(),
                d.personal_number(),
                d.pager(),
                d.uan(),
                d.voicemail(),
                d.fixed_line(),
                d.mobile(),
            ]
            .into_iter()
            .flatten()
            {
                types.push(Desc::new(desc)?);
            }
            Some(RegionNumbers {
                general: Desc::new(d.general())?,
                types,
                national_prefix: meta.national_prefix().map(str::to_string),
                prefix_for_parsing: optional(
                    meta.national_prefix_for_parsing().map(|r| r.as_str()),
                )?,
                international_prefix: optional(meta.international_prefix().map(|r| r.as_str()))?,
            })
        }
    }

    /// An optional pattern compiled: `None` when it does not compile,
    /// `Some(None)` when there is none.
    fn optional(re: Option<&str>) -> Option<Option<Regex>> {
        match re {
            Some(re) => anchored(re).map(Some),
            None => Some(None),
        }
    }

    impl RegionPlan {
        fn new(meta: &'static phonenumber::Metadata) -> Option<RegionPlan> {
            Some(RegionPlan {
                id: meta.id(),
                country: meta.id().parse::<phonenumber::country::Id>().is_ok(),
                leading_digits: optional(meta.leading_digits().map(|r| r.as_str()))?,
                meta,
                numbers: OnceLock::new(),
            })
        }

        /// The region's number patterns, compiled on first use.
        fn numbers(&self) -> Option<&RegionNumbers> {
            self.numbers
                .get_or_init(|| RegionNumbers::new(self.meta))
                .as_ref()
        }

        /// `validator::number_type(meta, national) != Type::Unknown`;
        /// `None` when the patterns do not compile.
        fn has_type(&self, national: &str) -> Option<bool> {
            let n = self.numbers()?;
            Some(n.general.is_match(national) && n.types.iter().any(|t| t.is_match(national)))
        }

        /// Whether parsing `national` with this region's data would strip
        /// or rewrite a national prefix (`helper::national_number`, then the
        /// parser's own `starts_with(national_prefix)`); `None` when the
        /// patterns do not compile.
        fn prefix_applies(&self, national: &str) -> Option<bool> {
            let n = self.numbers()?;
            if let Some(re) = &n.prefix_for_parsing {
                if re.is_match(national) {
                    return Some(true);
                }
            }
            Some(
                n.national_prefix
                    .as_deref()
                    .is_some_and(|p| !p.is_empty() && national.starts_with(p)),
            )
        }
    }

    /// The regions of one country code, in the data's order.
    struct CodePlan {
        code: String,
        regions: Vec<RegionPlan>,
    }

    impl CodePlan {
        fn new(code: u16) -> Option<CodePlan> {
            let db = &*phonenumber::metadata::DATABASE;
            let mut regions = Vec::new();
            for id in db.region(&code)? {
                regions.push(RegionPlan::new(db.by_id(id)?)?);
            }
            (!regions.is_empty()).then(|| CodePlan {
                code: code.to_string(),
                regions,
            })
        }

        /// The region `national` resolves to (`validator::source_for`), if
        /// it is a country; `None` too when a pattern it needs does not
        /// compile.
        fn resolve(&self, national: &str) -> Option<&RegionPlan> {
            if let [only] = self.regions.as_slice() {
                return only.country.then_some(only);
            }
            for r in &self.regions {
                let hit = match &r.leading_digits {
                    Some(re) => re.is_match(national),
                    None => r.has_type(national)?,
                };
                if hit {
                    return r.country.then_some(r);
                }
            }
            None
        }

        fn region(&self, id: &str) -> Option<&RegionPlan> {
            self.regions.iter().find(|r| r.id == id)
        }
    }

    /// Country codes have at most three digits.
    const CODES: usize = 1000;

    /// The compiled plans, per country code, built on first use.
    static PLANS: [OnceLock<Option<CodePlan>>; CODES] = [const { OnceLock::new() }; CODES];

    fn plan(code: u16) -> Option<&'static CodePlan> {
        PLANS
            .get(usize::from(code))?
            .get_or_init(|| CodePlan::new(code))
            .as_ref()
    }

    /// Whether the data knows country code `code` (`Database::by_code`).
    fn known_code(code: u16) -> bool {
        phonenumber::metadata::DATABASE.region(&code).is_some()
    }

    /// How many digits the full parser takes as the country code of a
    /// `+` number it reads as an RFC 3966 `global-number-digits` (`+` then
    /// digits and the visual separators `-`, `.`, `(`, `)`, no blank): the
    /// digits before the first separator, whatever the known codes are
    /// (`+1415-555-0134` is code 1415, refused). `None` when it reads the
    /// number as free text instead (the first 1 to 3 digits that name a
    /// code).
    pub(super) fn rfc3966_code_group(trimmed: &str) -> Option<usize> {
        let rest = trimmed.strip_prefix('+')?;
        if rest.contains([' ', '/', '\u{a0}']) {
            return None;
        }
        match rest.find(['-', '.', '(', ')']) {
            Some(0) | None => None,
            Some(n) => Some(n),
        }
    }

    /// The E.164 form of `digits` (ASCII digits only, `plus` when written
    /// with a leading `+`, `code_group` from [`rfc3966_code_group`]) read in
    /// `region` (upper case), when the fast path can answer; `None` sends
    /// the number to the full parser.
    pub(super) fn parse(
        digits: &[u8],
        plus: bool,
        code_group: Option<usize>,
        region: &str,
    ) -> Option<super::PhoneE164> {
        let (plan, _, national) = read(digits, plus, code_group, region)?;
        let mut e164 = String::with_capacity(plan.code.len() + national.len() + 1);
        e164.push('+');
        e164.push_str(&plan.code);
        e164.push_str(national);
        Some(super::PhoneE164(e164))
    }

    /// The region (ISO 3166-1 alpha-2) of an E.164 number, as the full
    /// parser's `PhoneNumber::country().id()` gives it, when the fast path
    /// answers for the number; `None` sends it to the full parser.
    pub(super) fn region_of(e164: &str) -> Option<&'static str> {
        let digits = e164.strip_prefix('+')?.as_bytes();
        if digits.len() > MAX_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // E.164 has no separators: no RFC 3966 code group.
        let (_, region, _) = read(digits, true, None, "")?;
        Some(region.id)
    }

    /// The plan, the region the number resolves to and the national
    /// number of `digits` (see [`parse`]), when the fast path can answer.
    fn read<'a>(
        digits: &'a [u8],
        plus: bool,
        code_group: Option<usize>,
        region: &str,
    ) -> Option<(&'static CodePlan, &'static RegionPlan, &'a str)> {
        let text = std::str::from_utf8(digits).ok()?;
        let (plan, resolved, national) = if plus {
            // `helper::country_code` with a `+`: the first 1 to 3 digits
            // that name a code (or the RFC 3966 group); a leading 0 is no
            // code.
            if text.starts_with('0') {
                return None;
            }
            let (code, national) = match code_group {
                Some(len) => {
                    let code: u16 = text.get(..len)?.parse().ok()?;
                    known_code(code).then(|| (code, &text[len..]))?
                }
                None => (1..=3usize).find_map(|len| {
                    let code: u16 = text.get(..len)?.parse().ok()?;
                    known_code(code).then(|| (code, &text[len..]))
                })?,
            };
            let plan = plan(code)?;
            // The region the parser takes the national prefix rules from is
            // the one the number resolves to.
            let resolved = plan.resolve(national)?;
            if national.starts_with('0') || resolved.prefix_applies(national)? {
                return None;
            }
            (plan, resolved, national)
        } else {
            let db = &*phonenumber::metadata::DATABASE;
            let plan = plan(db.by_id(region)?.country_code())?;
            let own = plan.region(region)?;
            let numbers = own.numbers()?;
            // No IDD prefix (`011…` in the US), no country code written
            // without `+`, no national prefix: the digits are the national
            // number as they stand.
            if text.starts_with('0')
                || numbers
                    .international_prefix
                    .as_ref()
                    .is_some_and(|re| re.is_match(text))
                || text.starts_with(plan.code.as_str())
                || own.prefix_applies(text)?
            {
                return None;
            }
            (plan, plan.resolve(text)?, text)
        };
        let len = plan.code.len() + national.len();
        if !(8..=15).contains(&len) || national.len() < 2 {
            return None;
        }
        Some((plan, resolved, national))
    }

    /// Compiles the plan of `region`'s country code and that region's own
    /// patterns now (first use costs the regular expressions'
    /// compilation).
    pub(super) fn warm(region: &str) {
        let db = &*phonenumber::metadata::DATABASE;
        if let Some(meta) = db.by_id(region) {
            let _ = plan(meta.country_code())
                .and_then(|p| p.region(region))
                .and_then(RegionPlan::numbers);
        }
    }
}

impl fmt::Display for PhoneE164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PhoneE164 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PhoneE164 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PhoneE164::from_e164(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn us_national_formats_normalise() {
        for raw in [
            "(415) 555-0134",
            "415-555-0134",
            "415.555.0134",
            "1 415 555 0134",
            "+1 (415) 555-0134",
            "+14155550134",
        ] {
            assert_eq!(
                PhoneE164::parse(raw, "US").map(|p| p.0),
                Ok("+14155550134".to_string()),
                "{raw}"
            );
        }
    }

    #[test]
    fn other_regions() {
        assert_eq!(
            PhoneE164::parse("020 7946 0958", "GB").unwrap().as_str(),
            "+442079460958"
        );
        assert_eq!(
            PhoneE164::parse("+33 1 23 45 67 89", "US")
                .unwrap()
                .as_str(),
            "+33123456789"
        );
        assert_eq!(
            PhoneE164::parse("+1 212 555 0199", "FR").unwrap().as_str(),
            "+12125550199"
        );
        assert_eq!(
            PhoneE164::parse("+44 20 7946 0958", "US").unwrap().as_str(),
            "+442079460958"
        );
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert_eq!(
            PhoneE164::parse("call me", "US"),
            Err(PhoneError::BadCharacter('c'))
        );
        assert_eq!(PhoneE164::parse(" -- ", "US"), Err(PhoneError::Empty));
        assert!(matches!(
            PhoneE164::parse("12", "US"),
            Err(PhoneError::Invalid(_))
        ));
        assert!(matches!(
            PhoneE164::parse("415 555 0134", "XX"),
            Err(PhoneError::UnknownRegion(_))
        ));
        assert!(matches!(
            PhoneE164::parse("+999 1234 5678", "US"),
            Err(PhoneError::Invalid(_))
        ));
    }

    /// A known country code is never reported as unknown: the message says
    /// which part of the number the numbering plan refuses.
    #[test]
    fn invalid_numbers_of_known_plans_say_what_is_wrong() {
        let msg = |raw: &str| match PhoneE164::parse(raw, "US") {
            Ok(p) => panic!("{raw} accepted as {p}"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            msg("+15551234567"),
            "not a valid number for +1 (US, CA, …): area code 555 is not in service"
        );
        assert_eq!(
            msg("555 123 4567"),
            "not a valid number for +1 (US, CA, …): area code 555 is not in service"
        );
        assert_eq!(
            msg("+1 415 123 4567"),
            "not a valid number for +1 (US, CA, …): exchange 123 cannot start with 0 or 1 (NPA-NXX-XXXX)"
        );
        assert_eq!(
            msg("+1 415 555 013"),
            "not a valid number for +1 (US, CA, …): 9 digits after +1, numbers there have 10"
        );
        assert_eq!(
            msg("+1 415 555 013 45"),
            "not a valid number for +1 (US, CA, …): 11 digits after +1, numbers there have 10"
        );
        let ru = msg("+7 000 123 4567");
        assert!(ru.starts_with("not a valid number for +7 (RU, KZ)"), "{ru}");
        assert!(!ru.contains("unknown country code"), "{ru}");
        // A country code no country has is still called that.
        let unknown = msg("+999 1234 5678");
        assert!(unknown.contains("country code"), "{unknown}");
        assert_eq!(
            explain_invalid(999, "12345678").to_string(),
            "not a valid phone number: unknown country code +999"
        );
    }

    /// The fast path's answer for `raw` read in `region`, as
    /// [`PhoneE164::parse`] computes it.
    fn fast_answer(raw: &str, region: &str) -> Option<PhoneE164> {
        let plus = raw.trim().starts_with('+');
        let digits: Vec<u8> = raw.bytes().filter(u8::is_ascii_digit).collect();
        if digits.len() > fast::MAX_DIGITS {
            return None;
        }
        fast::parse(&digits, plus, fast::rfc3966_code_group(raw.trim()), region)
    }

    fn full_answer(raw: &str, region: &str) -> Result<PhoneE164, PhoneError> {
        let id = CountryId::from_str(region).unwrap();
        PhoneE164::parse_full(raw.trim(), id)
    }

    /// Whenever the fast path answers, the full parser gives the same
    /// number; `raw` is written several ways.
    fn assert_agrees(raw: &str, region: &str) -> bool {
        match fast_answer(raw, region) {
            Some(fast) => {
                assert_eq!(
                    full_answer(raw, region),
                    Ok(fast.clone()),
                    "{raw:?} in {region}: fast path said {fast}"
                );
                true
            }
            None => false,
        }
    }

    /// The forms an import meets most are answered by the fast path, and
    /// what needs a prefix stripped or is refused is not.
    #[test]
    fn fast_path_answers_plain_numbers_only() {
        for raw in [
            "(415) 555-0134",
            "415.555.0134",
            "+1 (415) 555-0134",
            "+14155550134",
            "+44 20 7946 0958",
            "+33 1 23 45 67 89",
            "(604) 555-0199",
        ] {
            assert!(assert_agrees(raw, "US"), "{raw} not answered");
        }
        assert_eq!(
            fast_answer("(604) 555-0199", "US").map(|p| p.0),
            Some("+16045550199".to_string())
        );
        // National or international prefix, country code without `+`,
        // refused numbers: the full parser's.
        for (raw, region) in [
            ("1 415 555 0134", "US"),
            ("011 44 20 7946 0958", "US"),
            ("020 7946 0958", "GB"),
            ("+44 020 7946 0958", "US"),
            ("555 123 4567", "US"),
            ("+1 415 123 4567", "US"),
            ("+1 415 555 013", "US"),
            ("+999 1234 5678", "US"),
            ("+800 1234 5678", "US"),
            // Read as RFC 3966: the digits before the first `-` are the
            // country code, 1415 here.
            ("+1415-555-0134", "US"),
        ] {
            assert_eq!(fast_answer(raw, region), None, "{raw} in {region}");
        }
        // And the full path still refuses with its reasons.
        assert!(PhoneE164::parse("555 123 4567", "US").is_err());
    }

    /// Every example number of every region's plan (each type), written
    /// with `+` and in national form, read in its own region and in the
    /// US: the fast path agrees with the full parser each time it answers.
    #[test]
    fn fast_path_agrees_on_every_plans_examples() {
        let db = &*phonenumber::metadata::DATABASE;
        let mut answered = 0;
        for meta in db.iter() {
            let Ok(id) = meta.id().parse::<CountryId>() else {
                continue;
            };
            let region = id.as_ref().to_string();
            for d in descriptors(meta).chain([meta.descriptors().general()]) {
                let Some(example) = d.example() else {
                    continue;
                };
                let code = meta.country_code();
                for raw in [
                    format!("+{code}{example}"),
                    format!("+{code} {example}"),
                    example.to_string(),
                ] {
                    for r in [region.as_str(), "US", "GB"] {
                        if assert_agrees(&raw, r) {
                            answered += 1;
                        }
                    }
                }
            }
        }
        assert!(answered > 1000, "only {answered} answered");
    }

    /// Whenever [`plan_region`] answers, the full parser resolves the
    /// number to the same region; and it answers for the plain numbers.
    fn assert_region_agrees(e164: &str) -> bool {
        let Some(fast) = plan_region(e164) else {
            return false;
        };
        let full = phonenumber::parse(None, e164)
            .ok()
            .and_then(|n| n.country().id().map(|id| id.as_ref().to_string()));
        assert_eq!(full.as_deref(), Some(fast), "{e164}");
        true
    }

    #[test]
    fn plan_region_agrees_with_the_full_parser() {
        let db = &*phonenumber::metadata::DATABASE;
        let mut answered = 0;
        for meta in db.iter() {
            for d in descriptors(meta).chain([meta.descriptors().general()]) {
                if let Some(example) = d.example() {
                    if assert_region_agrees(&format!("+{}{example}", meta.country_code())) {
                        answered += 1;
                    }
                }
            }
        }
        assert!(answered > 1000, "only {answered} answered");
        assert_eq!(plan_region("+14155550134"), Some("US"));
        assert_eq!(plan_region("+16045550199"), Some("CA"));
        assert_eq!(plan_region("+442079460958"), Some("GB"));
        // Not plain E.164, or refused by the plan: the full parser's.
        for raw in [
            "14155550134",
            "+1 415 555 0134",
            "+15551234567",
            "+999123456",
        ] {
            assert_eq!(plan_region(raw), None, "{raw}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// Random North American numbers in the usual spellings.
        #[test]
        fn fast_path_agrees_on_nanp_numbers(
            npa in 100u32..1000,
            nxx in 0u32..1000,
            line in 0u32..10_000,
            form in 0usize..5,
            region in proptest::sample::select(vec!["US", "CA", "GB", "FR", "PR"]),
        ) {
            let raw = match form {
                0 => format!("({npa:03}) {nxx:03}-{line:04}"),
                1 => format!("{npa:03}.{nxx:03}.{line:04}"),
                2 => format!("+1 {npa:03} {nxx:03} {line:04}"),
                3 => format!("+1{npa:03}{nxx:03}{line:04}"),
                _ => format!("1 {npa:03} {nxx:03} {line:04}"),
            };
            assert_agrees(&raw, region);
        }

        /// Random digit strings, with or without `+`, in many regions.
        #[test]
        fn fast_path_agrees_on_random_digits(
            digits in "[0-9]{3,15}",
            plus in proptest::bool::ANY,
            sep in proptest::sample::select(vec!["", " ", "-", ".", "/", "\u{a0}", ")"]),
            region in proptest::sample::select(vec![
                "US", "CA", "GB", "FR", "DE", "IT", "ES", "AU", "NZ", "IN", "BR", "MX",
                "AR", "RU", "KZ", "JP", "CN", "ZA", "NG", "NO", "SJ", "FI", "AX", "IL",
            ]),
        ) {
            let spaced: String = digits
                .as_bytes()
                .chunks(3)
                .map(|c| std::str::from_utf8(c).unwrap_or(""))
                .collect::<Vec<_>>()
                .join(sep);
            let raw = if plus { format!("+{spaced}") } else { spaced };
            assert_agrees(&raw, region);
            assert_region_agrees(&format!("+{digits}"));
        }
    }
}
