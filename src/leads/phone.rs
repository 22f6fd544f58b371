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
    /// The digits do not form a number of the numbering plan (wrong length,
    /// unknown country code, impossible area code).
    #[error("not a valid phone number: {0}")]
    Invalid(String),
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
            return Err(PhoneError::Invalid(format!(
                "unknown country code +{}",
                number.code().value()
            )));
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
}
