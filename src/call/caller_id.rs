//! Caller ID rules (SPEC §4 `[[trunk]] caller_id`, sessions' `caller_id`,
//! `[dialer] caller_id_pool`): which number a lead sees calling.
//!
//! Local presence: a lead is called from the pool number that looks local
//! to it — in the North American Numbering Plan (`+1`), the number with the
//! lead's area code; elsewhere (or with no such number), one of the lead's
//! country calling code. With no match, the session's caller ID, else the
//! trunk's. Pure: no I/O, the numbering plan comes from `phonenumber`.

/// A number of the pool with its country calling code.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PoolNumber {
    e164: String,
    country: u16,
}

/// The configured pool of caller IDs (`[dialer] caller_id_pool`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerIdPool {
    numbers: Vec<PoolNumber>,
}

/// The country calling code of an E.164 number (`+44…` → 44).
pub fn country_code(e164: &str) -> Option<u16> {
    phonenumber::parse(None, e164)
        .ok()
        .map(|n| n.code().value())
}

/// The NANP area code of a `+1` number (`+14155550100` → `415`).
fn nanp_area(e164: &str) -> Option<&str> {
    let digits = e164.strip_prefix("+1")?;
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| &digits[..3])
}

impl CallerIdPool {
    /// The pool; each entry must be an E.164 number (`+` and digits, a
    /// known country code). Returns the first entry that is not.
    pub fn new(numbers: &[String]) -> Result<CallerIdPool, String> {
        let mut out = Vec::new();
        for n in numbers {
            let e164 = n.trim();
            let plain = e164.strip_prefix('+').is_some_and(|d| {
                !d.is_empty() && d.len() <= 15 && d.bytes().all(|b| b.is_ascii_digit())
            });
            let country = country_code(e164)
                .filter(|_| plain)
                .ok_or_else(|| n.clone())?;
            out.push(PoolNumber {
                e164: e164.to_string(),
                country,
            });
        }
        Ok(CallerIdPool { numbers: out })
    }

    /// Every number of the pool.
    pub fn numbers(&self) -> impl Iterator<Item = &str> {
        self.numbers.iter().map(|n| n.e164.as_str())
    }

    /// The caller ID for a call to `lead` (E.164): the pool number with
    /// the lead's NANP area code, else one with its country code, else
    /// `fallback` (the session's caller ID, or the trunk's).
    pub fn choose<'a>(&'a self, lead: &str, fallback: &'a str) -> &'a str {
        if self.numbers.is_empty() {
            // No pool: nothing to look up (the lead's country would cost a
            // phonenumber parse per call).
            return fallback;
        }
        if let Some(area) = nanp_area(lead) {
            if let Some(n) = self
                .numbers
                .iter()
                .find(|n| nanp_area(&n.e164) == Some(area))
            {
                return &n.e164;
            }
        }
        let Some(country) = country_code(lead) else {
            return fallback;
        };
        self.numbers
            .iter()
            .find(|n| n.country == country)
            .map_or(fallback, |n| n.e164.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(list: &[&str]) -> CallerIdPool {
        CallerIdPool::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("pool")
    }

    #[test]
    fn nanp_leads_get_their_area_code() {
        let p = pool(&["+12125550100", "+14155550100", "+442079460100"]);
        assert_eq!(p.choose("+14155550123", "+15550000000"), "+14155550100");
        assert_eq!(p.choose("+12125559999", "+15550000000"), "+12125550100");
    }

    #[test]
    fn no_area_match_falls_back_to_the_country_then_the_fallback() {
        let p = pool(&["+12125550100", "+442079460100"]);
        // Another NANP area code (Chicago): still the same country code.
        assert_eq!(p.choose("+13125550123", "+15550000000"), "+12125550100");
        // A London lead: the UK number.
        assert_eq!(p.choose("+442071234567", "+15550000000"), "+442079460100");
        // France: no French number in the pool.
        assert_eq!(p.choose("+33142685300", "+15550000000"), "+15550000000");
        // An empty pool always gives the fallback.
        assert_eq!(
            CallerIdPool::default().choose("+14155550123", "+15550000000"),
            "+15550000000"
        );
    }

    #[test]
    fn the_pool_takes_e164_numbers_only() {
        assert!(CallerIdPool::new(&["+14155550100".into()]).is_ok());
        assert_eq!(
            CallerIdPool::new(&["+14155550100".into(), "4155550100".into()]),
            Err("4155550100".to_string())
        );
        assert!(CallerIdPool::new(&["+1415555x100".into()]).is_err());
    }
}
