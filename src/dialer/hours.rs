//! Calling hours (SPEC §4 sessions' `calling_hours`): a daily window in the
//! lead's local time, default 08:00–21:00, and holidays with no calls at
//! all. Pure: every answer takes `now` (epoch ms) and the lead's zones
//! ([`crate::leads::zone`]); nothing here reads the clock.
//!
//! A lead that may be in several zones (a state that spans two, a number
//! whose zone is unknown) is callable only while it is inside the window in
//! every one of them: the latest opening and the earliest closing win.
//!
//! Local times are resolved with `chrono-tz`, so daylight-saving changes
//! move the window's instants with the local clock. A window edge that
//! falls in a DST gap (a local time that does not exist that day) opens at
//! the first instant after the gap; one that is ambiguous (the repeated
//! hour) takes its first occurrence.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Minutes in a day: a window's end may be `24:00`.
const DAY_MINUTES: u16 = 24 * 60;

/// How far ahead an opening is looked for before giving up (a window
/// shorter than the spread of a lead's zones never opens for it).
const SEARCH_DAYS: i64 = 370;

/// A time of day `HH:MM`, `00:00` to `24:00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(u16);

impl TimeOfDay {
    /// `h:m`, if it is a time of day (or `24:00`).
    pub fn hm(h: u16, m: u16) -> Option<TimeOfDay> {
        let t = h.checked_mul(60)?.checked_add(m)?;
        (m < 60 && t <= DAY_MINUTES).then_some(TimeOfDay(t))
    }

    fn minutes(self) -> u16 {
        self.0
    }
}

impl FromStr for TimeOfDay {
    type Err = HoursError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || HoursError::BadTime(s.to_string());
        let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
        if h.is_empty() || h.len() > 2 || m.len() != 2 {
            return Err(bad());
        }
        let h: u16 = h.parse().map_err(|_| bad())?;
        let m: u16 = m.parse().map_err(|_| bad())?;
        TimeOfDay::hm(h, m).ok_or_else(bad)
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

/// Why a window or holiday was refused (config and API errors name it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoursError {
    /// Not `HH:MM` between `00:00` and `24:00`.
    #[error("{0:?} is not a time of day: write HH:MM between 00:00 and 24:00")]
    BadTime(String),
    /// The window ends before it starts (or is empty).
    #[error("calling hours must start before they end ({start}–{end}); a window across midnight is not supported")]
    Empty {
        /// Start.
        start: TimeOfDay,
        /// End.
        end: TimeOfDay,
    },
    /// A holiday that is not `YYYY-MM-DD`.
    #[error("{0:?} is not a date: write YYYY-MM-DD")]
    BadDate(String),
}

/// The daily window, `[start, end)` in the lead's local time (SPEC §4
/// `{"start": "08:00", "end": "21:00"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    start: TimeOfDay,
    end: TimeOfDay,
}

impl Window {
    /// The default window: 08:00–21:00 (the US TCPA's hours, 47 U.S.C.
    /// § 227 and 47 CFR 64.1200(c)(1)).
    pub const DEFAULT: Window = Window {
        start: TimeOfDay(8 * 60),
        end: TimeOfDay(21 * 60),
    };

    /// A window; `start` must be before `end`.
    pub fn new(start: TimeOfDay, end: TimeOfDay) -> Result<Window, HoursError> {
        if start >= end {
            return Err(HoursError::Empty { start, end });
        }
        Ok(Window { start, end })
    }

    /// Parses `"08:00"`, `"21:00"`.
    pub fn parse(start: &str, end: &str) -> Result<Window, HoursError> {
        Window::new(start.parse()?, end.parse()?)
    }

    /// When calling may begin each day.
    pub fn start(&self) -> TimeOfDay {
        self.start
    }

    /// When calling stops each day (exclusive).
    pub fn end(&self) -> TimeOfDay {
        self.end
    }
}

impl Default for Window {
    fn default() -> Self {
        Window::DEFAULT
    }
}

/// JSON and TOML shape: `{"start": "08:00", "end": "21:00"}`.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CallingHours)]
pub struct WindowSpec {
    /// First local time at which a lead may be called, `HH:MM`.
    #[schema(example = "08:00")]
    pub start: String,
    /// Local time from which a lead may no longer be called, `HH:MM`
    /// (`24:00`: to the end of the day).
    #[schema(example = "21:00")]
    pub end: String,
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WindowSpec {
            start: self.start.to_string(),
            end: self.end.to_string(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec = WindowSpec::deserialize(d)?;
        Window::parse(&spec.start, &spec.end).map_err(serde::de::Error::custom)
    }
}

/// The holidays: local dates on which no lead is called.
pub type Holidays = Arc<BTreeSet<NaiveDate>>;

/// Parses `YYYY-MM-DD` holidays.
pub fn parse_holidays(dates: &[String]) -> Result<Holidays, HoursError> {
    dates
        .iter()
        .map(|d| {
            NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d")
                .map_err(|_| HoursError::BadDate(d.clone()))
        })
        .collect::<Result<BTreeSet<_>, _>>()
        .map(Arc::new)
}

/// The rule a session applies: its window and the holidays.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallingHours {
    /// The daily window.
    pub window: Window,
    /// Local dates with no calls.
    pub holidays: Holidays,
}

impl CallingHours {
    /// The whole day, no holidays: no calling-hours limit (for tests, and
    /// for teams whose CRM decides when to call).
    pub fn always() -> CallingHours {
        CallingHours {
            window: Window {
                start: TimeOfDay(0),
                end: TimeOfDay(DAY_MINUTES),
            },
            holidays: Holidays::default(),
        }
    }
}

/// Whether a lead may be called now ([`CallingHours::verdict`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Inside the window in every zone of the lead.
    Open,
    /// Outside it: held until `opens_at` (epoch ms), the first instant at
    /// which every zone is inside the window; `zone` is the one that opens
    /// last (the one the explain line names). `None` when no opening was
    /// found within a year (zones too far apart for the window).
    Closed {
        /// The next opening, epoch ms.
        opens_at: Option<i64>,
        /// The zone that opens last.
        zone: Tz,
        /// Whether today is a holiday there.
        holiday: bool,
    },
}

impl CallingHours {
    /// Whether a lead in `zones` may be called at `now_ms`, and if not,
    /// when. No zones: open (nothing is known to restrict the call; the
    /// resolver always finds a zone for a number of a known country).
    pub fn verdict(&self, zones: &[Tz], now_ms: i64) -> Verdict {
        let Some(&first) = zones.first() else {
            return Verdict::Open;
        };
        let mut t = now_ms;
        // Each round either finds a common open interval or moves `t` past
        // the earliest-ending one, so it ends within a few rounds per day.
        for _ in 0..(SEARCH_DAYS as usize * (zones.len() + 1)) {
            let mut start = i64::MIN;
            let mut end = i64::MAX;
            let mut last = first;
            for &z in zones {
                let Some((a, b)) = self.interval(z, t) else {
                    return self.closed(zones, now_ms, None, first);
                };
                if a > start {
                    start = a;
                    last = z;
                }
                end = end.min(b);
            }
            let start = start.max(t);
            if start < end {
                if start <= now_ms {
                    return Verdict::Open;
                }
                return self.closed(zones, now_ms, Some(start), last);
            }
            t = end;
        }
        self.closed(zones, now_ms, None, first)
    }

    fn closed(&self, zones: &[Tz], now_ms: i64, opens_at: Option<i64>, zone: Tz) -> Verdict {
        let holiday = zones
            .iter()
            .any(|z| local_date(*z, now_ms).is_some_and(|d| self.holidays.contains(&d)));
        Verdict::Closed {
            opens_at,
            zone,
            holiday,
        }
    }

    /// The open interval `[a, b)` of zone `z` that contains `t` or is the
    /// first after it (epoch ms).
    fn interval(&self, z: Tz, t: i64) -> Option<(i64, i64)> {
        let mut day = local_date(z, t)?;
        for _ in 0..SEARCH_DAYS {
            if !self.holidays.contains(&day) {
                let a = at_local(z, day, self.window.start)?;
                let b = at_local(z, day, self.window.end)?;
                if b > t && a < b {
                    return Some((a, b));
                }
            }
            day = day.succ_opt()?;
        }
        None
    }
}

fn local_date(z: Tz, ms: i64) -> Option<NaiveDate> {
    Some(
        DateTime::from_timestamp_millis(ms)?
            .with_timezone(&z)
            .date_naive(),
    )
}

/// The instant (epoch ms) of local time `at` on `day` in `z`; `24:00` is the
/// next day's midnight. A time in a DST gap is moved forward to the first
/// local time that exists.
fn at_local(z: Tz, day: NaiveDate, at: TimeOfDay) -> Option<i64> {
    let midnight = NaiveDateTime::new(day, NaiveTime::MIN);
    let mut local = midnight + ChronoDuration::minutes(i64::from(at.minutes()));
    for _ in 0..=180 {
        if let Some(t) = z.from_local_datetime(&local).earliest() {
            return Some(t.timestamp_millis());
        }
        local += ChronoDuration::minutes(1);
    }
    None
}

/// `08:00 America/Chicago`: an opening in the zone's local time, as the
/// explain line shows it.
pub fn local_hm(zone: Tz, ms: i64) -> String {
    match DateTime::from_timestamp_millis(ms) {
        Some(t) => format!("{} {}", t.with_timezone(&zone).format("%H:%M"), zone.name()),
        None => zone.name().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use chrono_tz::America::{Chicago, New_York};
    use chrono_tz::Pacific::Honolulu;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn hours() -> CallingHours {
        CallingHours::default()
    }

    fn opens(v: Verdict) -> Option<DateTime<Utc>> {
        match v {
            Verdict::Closed { opens_at, .. } => opens_at.and_then(DateTime::from_timestamp_millis),
            Verdict::Open => None,
        }
    }

    #[test]
    fn honolulu_and_new_york_differ_at_the_same_instant() {
        // 15:00 UTC in January: 10:00 in New York, 05:00 in Honolulu.
        let now = ms("2026-01-15T15:00:00Z");
        assert_eq!(hours().verdict(&[New_York], now), Verdict::Open);
        let v = hours().verdict(&[Honolulu], now);
        assert_eq!(opens(v).unwrap().to_rfc3339(), "2026-01-15T18:00:00+00:00");
        assert!(matches!(v, Verdict::Closed { zone, holiday: false, .. } if zone == Honolulu));
        // 03:00 UTC: 22:00 in New York (closed), 17:00 in Honolulu (open).
        let late = ms("2026-01-16T03:00:00Z");
        assert_eq!(hours().verdict(&[Honolulu], late), Verdict::Open);
        assert_eq!(
            opens(hours().verdict(&[New_York], late))
                .unwrap()
                .to_rfc3339(),
            "2026-01-16T13:00:00+00:00"
        );
    }

    #[test]
    fn opens_exactly_on_time_and_closes_exactly_on_time() {
        let open = ms("2026-01-15T14:00:00Z"); // 08:00 CST
        assert!(matches!(
            hours().verdict(&[Chicago], open - 1000),
            Verdict::Closed { opens_at: Some(t), .. } if t == open
        ));
        assert!(matches!(
            hours().verdict(&[Chicago], open - 1),
            Verdict::Closed { .. }
        ));
        assert_eq!(hours().verdict(&[Chicago], open), Verdict::Open);
        let close = ms("2026-01-16T03:00:00Z"); // 21:00 CST
        assert_eq!(hours().verdict(&[Chicago], close - 1), Verdict::Open);
        assert!(matches!(
            hours().verdict(&[Chicago], close),
            Verdict::Closed { opens_at: Some(t), .. } if t == open + 86_400_000
        ));
    }

    #[test]
    fn dst_change_moves_the_opening_instant() {
        // New York springs forward on 2026-03-08 (02:00 EST -> 03:00 EDT):
        // 08:00 is 13:00 UTC the day before and 12:00 UTC that day.
        let sat_night = ms("2026-03-08T02:30:00Z"); // 21:30 EST on the 7th
        let v = hours().verdict(&[New_York], sat_night);
        assert_eq!(opens(v).unwrap().to_rfc3339(), "2026-03-08T12:00:00+00:00");
        assert!(matches!(
            hours().verdict(&[New_York], ms("2026-03-08T11:59:59Z")),
            Verdict::Closed { .. }
        ));
        assert_eq!(
            hours().verdict(&[New_York], ms("2026-03-08T12:00:00Z")),
            Verdict::Open
        );
        // The day before, 12:00 UTC was 07:00 EST: closed.
        assert!(matches!(
            hours().verdict(&[New_York], ms("2026-03-07T12:00:00Z")),
            Verdict::Closed { .. }
        ));
        // Fall back (2026-11-01): 21:00 EST is 02:00 UTC the next day.
        assert_eq!(
            hours().verdict(&[New_York], ms("2026-11-02T01:59:59Z")),
            Verdict::Open
        );
        assert!(matches!(
            hours().verdict(&[New_York], ms("2026-11-02T02:00:00Z")),
            Verdict::Closed { .. }
        ));
    }

    #[test]
    fn a_window_edge_in_the_dst_gap_opens_after_the_gap() {
        let w = CallingHours {
            window: Window::parse("02:30", "21:00").unwrap(),
            holidays: Holidays::default(),
        };
        // 02:30 does not exist in New York on 2026-03-08: opens at 03:00 EDT.
        let v = w.verdict(&[New_York], ms("2026-03-08T06:00:00Z"));
        assert_eq!(opens(v).unwrap().to_rfc3339(), "2026-03-08T07:00:00+00:00");
    }

    #[test]
    fn several_zones_take_the_strictest() {
        // Chicago and New York: 08:00 Chicago (14:00 UTC) to 21:00 New York
        // (02:00 UTC).
        let both = [New_York, Chicago];
        let v = hours().verdict(&both, ms("2026-01-15T13:30:00Z"));
        assert_eq!(opens(v).unwrap().to_rfc3339(), "2026-01-15T14:00:00+00:00");
        assert!(matches!(v, Verdict::Closed { zone, .. } if zone == Chicago));
        assert_eq!(
            hours().verdict(&both, ms("2026-01-16T01:59:00Z")),
            Verdict::Open
        );
        let v = hours().verdict(&both, ms("2026-01-16T02:00:00Z"));
        assert_eq!(opens(v).unwrap().to_rfc3339(), "2026-01-16T14:00:00+00:00");
    }

    #[test]
    fn holidays_have_no_calls_in_the_leads_local_date() {
        let h = CallingHours {
            window: Window::DEFAULT,
            holidays: parse_holidays(&["2026-12-25".into()]).unwrap(),
        };
        // Noon on Christmas in New York: closed, opens on the 26th.
        let v = h.verdict(&[New_York], ms("2026-12-25T17:00:00Z"));
        assert_eq!(opens(v).unwrap().to_rfc3339(), "2026-12-26T13:00:00+00:00");
        assert!(matches!(v, Verdict::Closed { holiday: true, .. }));
        // 03:00 UTC on the 25th is still the 24th, 17:00, in Honolulu.
        assert_eq!(
            h.verdict(&[Honolulu], ms("2026-12-25T03:00:00Z")),
            Verdict::Open
        );
    }

    #[test]
    fn windows_parse_and_refuse() {
        assert_eq!(Window::parse("08:00", "21:00").unwrap(), Window::DEFAULT);
        assert!(Window::parse("00:00", "24:00").is_ok());
        assert!(matches!(
            Window::parse("21:00", "08:00"),
            Err(HoursError::Empty { .. })
        ));
        assert!(matches!(
            Window::parse("8", "21:00"),
            Err(HoursError::BadTime(_))
        ));
        assert!(matches!(
            Window::parse("08:00", "24:01"),
            Err(HoursError::BadTime(_))
        ));
        assert!(matches!(
            Window::parse("08:60", "21:00"),
            Err(HoursError::BadTime(_))
        ));
        assert!(parse_holidays(&["2026-02-30".into()]).is_err());
        let always = CallingHours {
            window: Window::parse("00:00", "24:00").unwrap(),
            holidays: Holidays::default(),
        };
        assert_eq!(
            always.verdict(&[Honolulu], ms("2026-01-15T10:00:00Z")),
            Verdict::Open
        );
    }
}
