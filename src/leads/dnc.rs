//! The internal do-not-call list (SPEC §4 `/api/v1/dnc`): numbers, and
//! number prefixes written with a trailing `*` (`+1900*`), that never
//! reach the wire whatever asks for them (queue, manual call API, console).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::model::rfc3339;
use super::phone::{PhoneE164, PhoneError};

/// Longest reason kept with an entry.
pub const MAX_REASON_LEN: usize = 500;

/// A validated do-not-call pattern: one E.164 number, or a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DncPattern {
    /// `+` and digits.
    digits: String,
    /// Covers every number that starts with `digits`.
    prefix: bool,
}

/// Why a do-not-call pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DncPatternError {
    /// A prefix must be `+`, a country code and more digits, then `*`.
    #[error(
        "`{0}` is not a number prefix: write `+` and 1 to 15 digits, then `*` (e.g. \"+1900*\")"
    )]
    BadPrefix(String),
    /// Not a phone number.
    #[error(transparent)]
    Number(#[from] PhoneError),
}

impl DncPattern {
    /// Parses `+14155550134`, `(415) 555-0134` (with `default_region`) or a
    /// prefix `+1900*`.
    pub fn parse(raw: &str, default_region: &str) -> Result<DncPattern, DncPatternError> {
        let raw = raw.trim();
        if let Some(p) = raw.strip_suffix('*') {
            let digits = p.strip_prefix('+').unwrap_or("");
            if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(DncPatternError::BadPrefix(raw.to_string()));
            }
            return Ok(DncPattern {
                digits: p.to_string(),
                prefix: true,
            });
        }
        let number = PhoneE164::parse(raw, default_region)?;
        Ok(DncPattern {
            digits: number.as_str().to_string(),
            prefix: false,
        })
    }

    /// A stored row's pattern (trusted: written by [`DncPattern::parse`]).
    pub fn from_stored(digits: String, prefix: bool) -> DncPattern {
        DncPattern { digits, prefix }
    }

    /// The number, or the prefix without its `*`.
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// Whether this covers every number starting with [`Self::digits`].
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }

    /// Whether an E.164 number is covered.
    pub fn covers(&self, e164: &str) -> bool {
        if self.prefix {
            e164.starts_with(&self.digits)
        } else {
            e164 == self.digits
        }
    }

    /// Every pattern text that can cover `e164`: the number itself and each
    /// of its prefixes (`+1`, `+14`, …), for one indexed lookup.
    pub fn candidates(e164: &str) -> Vec<&str> {
        (2..=e164.len())
            .filter(|&i| e164.is_char_boundary(i))
            .map(|i| &e164[..i])
            .collect()
    }
}

impl std::fmt::Display for DncPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.digits)?;
        if self.prefix {
            f.write_str("*")?;
        }
        Ok(())
    }
}

/// One entry of the list as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DncEntry {
    /// The number, or the prefix with its trailing `*`.
    pub number: String,
    /// Why it is on the list, if given.
    pub reason: Option<String>,
    /// When it was added.
    #[serde(with = "rfc3339")]
    pub created: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_prefixes() {
        let n = DncPattern::parse("(415) 555-0134", "US").unwrap();
        assert_eq!(n.to_string(), "+14155550134");
        assert!(n.covers("+14155550134"));
        assert!(!n.covers("+141555501345"));
        let p = DncPattern::parse(" +1900* ", "US").unwrap();
        assert_eq!(p.to_string(), "+1900*");
        assert!(p.covers("+19005550134"));
        assert!(!p.covers("+14155550134"));
        for bad in ["1900*", "+*", "+19a0*", "+1234567890123456*"] {
            assert!(
                matches!(
                    DncPattern::parse(bad, "US"),
                    Err(DncPatternError::BadPrefix(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            DncPattern::parse("not a number", "US"),
            Err(DncPatternError::Number(_))
        ));
    }

    #[test]
    fn candidates_are_the_number_and_its_prefixes() {
        assert_eq!(
            DncPattern::candidates("+1415"),
            vec!["+1", "+14", "+141", "+1415"]
        );
    }
}
