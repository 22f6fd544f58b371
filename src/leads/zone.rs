//! A lead's local time zones, for calling hours (SPEC §4 sessions'
//! `calling_hours`, "in each lead's local time").
//!
//! Where the zone comes from, first match wins:
//! 1. **An explicit lead field**: a custom field named `timezone` (or
//!    `time zone`, `time_zone`, `tz`) holding an IANA name such as
//!    `America/Chicago`. A value that is no IANA name is ignored.
//! 2. **The lead's address**, from custom fields: `country` (ISO 3166-1
//!    code or a common name), `state` / `province` / `region` (US states,
//!    DC and territories, Canadian provinces and territories, by code or
//!    name) and `postcode` / `postal code` / `zip` / `zip code` (US ZIP
//!    codes by their first three digits, Canadian postal codes by their
//!    first letter). A country with a single zone is enough on its own.
//! 3. **The number dialed** (R2: the first phone of the first contact):
//!    for the North American plan (+1) its area code, else its country.
//!
//! A place may span several zones ([`LeadZones::zones`] holds them all):
//! the caller then applies the strictest of them, and so does a number
//! whose zone is unknown, with every main zone of its country — a lead
//! is called only while it is within the window wherever it may be.
//!
//! Known limit: a number of a country missing from the table (small
//! territories and island states; see `tables::COUNTRIES`) has no zone, and
//! calling hours then do not restrict it; give such leads a `timezone`.

mod tables;

use std::str::FromStr;

use chrono_tz::Tz;

use super::model::{CustomValue, Lead};

/// Where [`LeadZones`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneSource {
    /// The lead's `timezone` custom field.
    LeadField,
    /// The lead's address (country, state or province, postcode).
    Address,
    /// The number's North American area code.
    AreaCode,
    /// The number's country: every main zone of it (the strictest applies).
    Country,
}

/// The zones a lead may be in; calling hours hold in all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadZones {
    /// One or more zones, never empty.
    pub zones: Vec<Tz>,
    /// How they were found.
    pub source: ZoneSource,
}

impl LeadZones {
    fn new(names: &[&str], source: ZoneSource) -> Option<LeadZones> {
        let zones: Vec<Tz> = names.iter().filter_map(|n| Tz::from_str(n).ok()).collect();
        (!zones.is_empty()).then_some(LeadZones { zones, source })
    }
}

/// The zones of `lead`, when it is to be called at `number` (E.164): the
/// lead's field, its address, then the number (see the module docs).
/// `None` only when nothing at all is known (no field, no address and a
/// number of no known country).
pub fn lead_zones(lead: &Lead, number: Option<&str>) -> Option<LeadZones> {
    if let Some(z) = explicit_zone(lead) {
        return Some(z);
    }
    if let Some(z) = address_zones(lead) {
        return Some(z);
    }
    number.and_then(number_zones)
}

/// The zones of a number (E.164) alone: its North American area code, else
/// its country (every main zone, the strictest applies).
pub fn number_zones(e164: &str) -> Option<LeadZones> {
    let digits = e164.strip_prefix('+')?;
    if let Some(national) = digits.strip_prefix('1') {
        if let Some(npa) = national.get(..3).and_then(|s| s.parse::<u16>().ok()) {
            if let Some(z) = npa_zones(npa) {
                return Some(z);
            }
        }
    }
    let country = number_country(e164)?;
    country_zones(&country)
}

/// The region (ISO 3166-1 alpha-2) of a number from the numbering plan
/// data; a number in no region's ranges (an unassigned area code) counts
/// as the main country of its code (the US for +1), so an unknown zone
/// follows that country's strictest one.
fn number_country(e164: &str) -> Option<String> {
    // The fast path's plans first: the full parser compiles the crate's
    // own patterns of the country on its first call (SPEC §6 memory).
    if let Some(id) = super::phone::plan_region(e164) {
        return Some(id.to_string());
    }
    let number = phonenumber::parse(None, e164).ok()?;
    if let Some(id) = number.country().id() {
        return Some(id.as_ref().to_string());
    }
    let code = number.code().value();
    let db = &*phonenumber::metadata::DATABASE;
    let metas = db.by_code(&code)?;
    metas
        .iter()
        .find(|m| m.is_main_country_for_code())
        .or_else(|| metas.first())
        .map(|m| m.id().to_string())
}

fn npa_zones(npa: u16) -> Option<LeadZones> {
    if let Some((_, names)) = tables::NPA_ZONES.iter().find(|(n, _)| *n == npa) {
        return LeadZones::new(names, ZoneSource::AreaCode);
    }
    let npa = npa.to_string();
    let (region, _) = tables::NPAS
        .iter()
        .find(|(_, list)| list.split(' ').any(|n| n == npa))?;
    let names = tables::REGIONS
        .iter()
        .find(|(_, code, _, _)| code == region)
        .map(|(_, _, _, z)| *z)?;
    LeadZones::new(names, ZoneSource::AreaCode)
}

/// Zones of a country by ISO code or common name.
pub fn country_zones(country: &str) -> Option<LeadZones> {
    let code = country_code(country)?;
    let (_, names) = tables::COUNTRIES.iter().find(|(c, _)| *c == code)?;
    LeadZones::new(names, ZoneSource::Country)
}

fn country_code(s: &str) -> Option<&'static str> {
    let t = s.trim();
    if let Some((c, _)) = tables::COUNTRIES
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(t))
    {
        return Some(c);
    }
    let lower = t.to_lowercase();
    tables::COUNTRY_NAMES
        .iter()
        .find(|(name, _)| *name == lower)
        .map(|(_, c)| *c)
}

/// A custom value as text (ZIP codes may be stored as numbers).
fn text_of(v: &CustomValue) -> Option<String> {
    match v {
        CustomValue::Text(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        CustomValue::Number(n) if n.fract() == 0.0 && *n >= 0.0 && *n < 1e6 => {
            Some(format!("{:05}", *n as u32))
        }
        _ => None,
    }
}

/// The first custom value among `names` (case- and separator-insensitive).
fn field(lead: &Lead, names: &[&str]) -> Option<String> {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect()
    };
    names.iter().find_map(|want| {
        lead.custom
            .iter()
            .find(|(k, _)| norm(k) == *want)
            .and_then(|(_, v)| text_of(v))
    })
}

fn explicit_zone(lead: &Lead) -> Option<LeadZones> {
    let name = field(lead, &["timezone", "tz"])?;
    let tz = Tz::from_str(&name).ok()?;
    Some(LeadZones {
        zones: vec![tz],
        source: ZoneSource::LeadField,
    })
}

fn address_zones(lead: &Lead) -> Option<LeadZones> {
    let country = field(lead, &["country", "countrycode"]).and_then(|c| country_code(&c));
    let north_america = matches!(country, None | Some("US") | Some("CA"));
    if north_america {
        if let Some(state) = field(lead, &["state", "province", "region", "stateprovince"]) {
            if let Some(z) = region_zones(&state, country) {
                return Some(z);
            }
        }
        if let Some(code) = field(lead, &["postcode", "postalcode", "zip", "zipcode"]) {
            if let Some(z) = postcode_zones(&code, country) {
                return Some(z);
            }
        }
    }
    let mut z = country_zones(country?)?;
    z.source = ZoneSource::Address;
    // A multi-zone country named alone is as good as the number's country:
    // let the number (area code) say more.
    (z.zones.len() == 1).then_some(z)
}

fn region_zones(state: &str, country: Option<&str>) -> Option<LeadZones> {
    let t = state.trim();
    let (_, _, _, names) = tables::REGIONS.iter().find(|(c, code, name, _)| {
        country.is_none_or(|want| want == *c)
            && (code.eq_ignore_ascii_case(t) || name.eq_ignore_ascii_case(t))
    })?;
    LeadZones::new(names, ZoneSource::Address)
}

fn postcode_zones(code: &str, country: Option<&str>) -> Option<LeadZones> {
    let t = code.trim();
    let region = if t.len() >= 5 && t.as_bytes()[..5].iter().all(u8::is_ascii_digit) {
        if country == Some("CA") {
            return None;
        }
        let zip3: u16 = t.get(..3)?.parse().ok()?;
        tables::ZIP3
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&zip3))
            .map(|(_, _, s)| *s)?
    } else {
        if country == Some("US") {
            return None;
        }
        let first = t.chars().next()?.to_ascii_uppercase();
        tables::POSTAL_LETTER
            .iter()
            .find(|(c, _)| *c == first)
            .map(|(_, p)| *p)?
    };
    let (_, _, _, names) = tables::REGIONS.iter().find(|(_, c, _, _)| *c == region)?;
    LeadZones::new(names, ZoneSource::Address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::America::{Chicago, Denver, New_York, Toronto};
    use chrono_tz::Pacific::Honolulu;
    use std::collections::BTreeMap;

    fn lead(custom: &[(&str, &str)], phone: Option<&str>) -> Lead {
        Lead {
            id: 1,
            name: "x".into(),
            status: String::new(),
            created: chrono::DateTime::UNIX_EPOCH,
            updated: chrono::DateTime::UNIX_EPOCH,
            contacts: phone
                .map(|p| super::super::model::Contact {
                    name: String::new(),
                    phones: vec![crate::leads::PhoneE164::from_e164(p).unwrap()],
                    emails: Vec::new(),
                })
                .into_iter()
                .collect(),
            custom: custom
                .iter()
                .map(|(k, v)| (k.to_string(), CustomValue::Text(v.to_string())))
                .collect::<BTreeMap<_, _>>(),
            opportunities: Vec::new(),
            do_not_call: false,
        }
    }

    #[test]
    fn every_zone_name_in_the_tables_is_a_chrono_tz_zone() {
        let names = tables::REGIONS
            .iter()
            .flat_map(|r| r.3.iter())
            .chain(tables::NPA_ZONES.iter().flat_map(|r| r.1.iter()))
            .chain(tables::COUNTRIES.iter().flat_map(|r| r.1.iter()));
        for n in names {
            assert!(Tz::from_str(n).is_ok(), "{n} is not a chrono-tz zone");
        }
        for (state, list) in tables::NPAS {
            assert!(tables::REGIONS.iter().any(|r| r.1 == *state), "{state}");
            for npa in list.split(' ') {
                assert!(npa.len() == 3 && npa.parse::<u16>().is_ok(), "{npa}");
            }
        }
        for (_, code) in tables::COUNTRY_NAMES {
            assert!(tables::COUNTRIES.iter().any(|c| c.0 == *code), "{code}");
        }
    }

    #[test]
    fn explicit_field_first_then_address_then_number() {
        let number = Some("+12125550100"); // New York City
        let l = lead(&[("Time Zone", "America/Chicago"), ("State", "HI")], number);
        let z = lead_zones(&l, number).unwrap();
        assert_eq!((z.zones, z.source), (vec![Chicago], ZoneSource::LeadField));

        let l = lead(&[("timezone", "Mars/Olympus"), ("state", "Hawaii")], number);
        let z = lead_zones(&l, number).unwrap();
        assert_eq!((z.zones, z.source), (vec![Honolulu], ZoneSource::Address));

        let l = lead(&[], number);
        let z = lead_zones(&l, number).unwrap();
        assert_eq!((z.zones, z.source), (vec![New_York], ZoneSource::AreaCode));
    }

    #[test]
    fn addresses_by_state_postcode_and_single_zone_country() {
        let z = lead_zones(&lead(&[("zip", "60601")], None), None).unwrap();
        assert_eq!(z.zones, vec![Chicago]);
        let z = lead_zones(&lead(&[("Postal Code", "M5V 2T6")], None), None).unwrap();
        assert_eq!(z.zones, vec![Toronto, chrono_tz::America::Winnipeg]);
        let z = lead_zones(&lead(&[("country", "Germany")], None), None).unwrap();
        assert_eq!(z.zones, vec![chrono_tz::Europe::Berlin]);
        let z = lead_zones(
            &lead(&[("country", "CA"), ("province", "Quebec")], None),
            None,
        )
        .unwrap();
        assert_eq!(z.zones, vec![Toronto]);
        // A state code of the other country is not taken.
        assert!(lead_zones(&lead(&[("country", "CA"), ("state", "TX")], None), None).is_none());
        // A multi-zone country alone leaves the number to decide.
        let number = Some("+13125550100");
        let z = lead_zones(&lead(&[("country", "US")], number), number).unwrap();
        assert_eq!((z.zones, z.source), (vec![Chicago], ZoneSource::AreaCode));
    }

    #[test]
    fn numbers_by_area_code_and_country() {
        assert_eq!(number_zones("+19155550100").unwrap().zones, vec![Denver]);
        assert_eq!(number_zones("+18085550100").unwrap().zones, vec![Honolulu]);
        let tx = number_zones("+14325550100").unwrap();
        assert_eq!(tx.zones, vec![Chicago, Denver], "Texas outside known codes");
        let uk = number_zones("+442079460958").unwrap();
        assert_eq!(
            (uk.zones, uk.source),
            (vec![chrono_tz::Europe::London], ZoneSource::Country)
        );
        // An unassigned area code: the strictest zone of the country (+1: US).
        let unknown = number_zones("+15555550100").unwrap();
        assert_eq!(unknown.source, ZoneSource::Country);
        assert!(unknown.zones.contains(&Honolulu) && unknown.zones.contains(&New_York));
        assert!(number_zones("+9995550100").is_none());
    }
}
