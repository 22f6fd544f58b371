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
        for (i, c) in trimmed.chars().enumerate() {
            match c {
                '0'..='9' => digits += 1,
                '+' if i == 0 => {}
                ' ' | '-' | '.' | '(' | ')' | '/' | '\u{a0}' => {}
                other => return Err(PhoneError::BadCharacter(other)),
            }
        }
        if digits == 0 {
            return Err(PhoneError::Empty);
        }
        let region = CountryId::from_str(&default_region.trim().to_ascii_uppercase())
            .map_err(|_| PhoneError::UnknownRegion(default_region.to_string()))?;
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
    let _ = PhoneE164::parse("+1 202 555 0100", default_region);
    let _ = PhoneE164::parse("202 555 0100", default_region);
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
}
