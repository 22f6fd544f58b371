//! A dialer session's call statistics (SPEC §4 admin view: calls by
//! outcome per hour, answer rate, median ring time), read from the call
//! records and computed here for both backends alike (a median in SQL
//! differs between SQLite and PostgreSQL; a session's calls fit in memory).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::StoreError;
use crate::leads::model::{ms_to_time, rfc3339};

/// The outcomes of SPEC §4 call records, in the order the console lists them.
pub const OUTCOMES: [&str; 6] = [
    "answered",
    "no_answer",
    "busy",
    "skipped",
    "temporary_error",
    "restricted",
];

const HOUR_MS: i64 = 3_600_000;

/// Calls of one hour.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HourStats {
    /// The hour's first instant (UTC).
    #[serde(with = "rfc3339")]
    pub start: DateTime<Utc>,
    /// Calls started in it.
    pub calls: u64,
    /// Those calls by outcome (`in_progress` while a call has none); only
    /// outcomes that occurred.
    pub by_outcome: BTreeMap<String, u64>,
}

/// `GET /api/v1/sessions/{id}/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SessionStats {
    /// The session.
    pub session_id: i64,
    /// Every call the session made.
    pub calls: u64,
    /// Calls with an outcome, by outcome; every outcome of SPEC §4 is
    /// present (0 when none), plus `in_progress` for calls not ended.
    pub by_outcome: BTreeMap<String, u64>,
    /// Answered calls over calls with an outcome; `null` before the first
    /// call ends.
    pub answer_rate: Option<f64>,
    /// Median of the calls' ring times (INVITE to final answer or ring
    /// timeout, R8), ms; `null` when no call rang.
    pub median_ring_ms: Option<i64>,
    /// The last `hours` hours up to the current one, oldest first,
    /// including hours without calls.
    pub per_hour: Vec<HourStats>,
}

/// One call as the statistics read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSample<'a> {
    /// INVITE sent, epoch ms.
    pub started_ms: i64,
    /// The outcome once ended.
    pub outcome: Option<&'a str>,
    /// Ring time, ms.
    pub ring_ms: Option<i64>,
}

impl SessionStats {
    /// Computes the statistics of `calls` as seen at `now_ms`, with the
    /// last `hours` hours in `per_hour` (sans-IO, unit-tested).
    pub fn compute(session_id: i64, calls: &[CallSample<'_>], now_ms: i64, hours: u32) -> Self {
        let mut by_outcome: BTreeMap<String, u64> =
            OUTCOMES.iter().map(|o| (o.to_string(), 0)).collect();
        by_outcome.insert("in_progress".into(), 0);
        let mut rings: Vec<i64> = Vec::new();
        let last_hour = now_ms.div_euclid(HOUR_MS);
        let first_hour = last_hour - i64::from(hours.max(1)) + 1;
        let mut per_hour: Vec<HourStats> = (first_hour..=last_hour)
            .map(|h| HourStats {
                start: ms_to_time(h * HOUR_MS),
                calls: 0,
                by_outcome: BTreeMap::new(),
            })
            .collect();
        for c in calls {
            let key = c.outcome.unwrap_or("in_progress");
            *by_outcome.entry(key.to_string()).or_default() += 1;
            if let Some(r) = c.ring_ms {
                rings.push(r);
            }
            let h = c.started_ms.div_euclid(HOUR_MS);
            if (first_hour..=last_hour).contains(&h) {
                if let Some(slot) = usize::try_from(h - first_hour)
                    .ok()
                    .and_then(|i| per_hour.get_mut(i))
                {
                    slot.calls += 1;
                    *slot.by_outcome.entry(key.to_string()).or_default() += 1;
                }
            }
        }
        let ended = calls.iter().filter(|c| c.outcome.is_some()).count() as u64;
        let answered = by_outcome.get("answered").copied().unwrap_or(0);
        SessionStats {
            session_id,
            calls: calls.len() as u64,
            by_outcome,
            answer_rate: (ended > 0).then(|| answered as f64 / ended as f64),
            median_ring_ms: median(&mut rings),
            per_hour,
        }
    }
}

/// The median (the mean of the middle two, rounded down, for an even count).
fn median(v: &mut [i64]) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]).div_euclid(2)
    })
}

/// Reads session `session_id`'s calls and computes its statistics.
pub(crate) async fn session_stats<DB>(
    pool: &Pool<DB>,
    session_id: i64,
    now_ms: i64,
    hours: u32,
) -> Result<SessionStats, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, Option<String>, Option<i64>): FromRow<'r, DB::Row>,
{
    let rows: Vec<(i64, Option<String>, Option<i64>)> = sqlx::query_as::<DB, _>(
        "SELECT started_ms, outcome, ring_ms FROM calls WHERE session_id = $1",
    )
    .bind(session_id)
    .fetch_all(pool)
    .await?;
    let samples: Vec<CallSample<'_>> = rows
        .iter()
        .map(|(started_ms, outcome, ring_ms)| CallSample {
            started_ms: *started_ms,
            outcome: outcome.as_deref(),
            ring_ms: *ring_ms,
        })
        .collect();
    Ok(SessionStats::compute(session_id, &samples, now_ms, hours))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(started_ms: i64, outcome: Option<&str>, ring_ms: Option<i64>) -> CallSample<'_> {
        CallSample {
            started_ms,
            outcome,
            ring_ms,
        }
    }

    #[test]
    fn counts_rates_medians_and_hours() {
        let now = 10 * HOUR_MS + 5;
        let calls = [
            call(10 * HOUR_MS, Some("answered"), Some(4000)),
            call(10 * HOUR_MS + 1, Some("no_answer"), Some(32_000)),
            call(9 * HOUR_MS, Some("busy"), Some(3000)),
            call(9 * HOUR_MS + 7, Some("answered"), Some(6000)),
            call(10 * HOUR_MS + 2, None, None),
            // Older than the window: counted in the totals only.
            call(HOUR_MS, Some("restricted"), None),
        ];
        let s = SessionStats::compute(7, &calls, now, 3);
        assert_eq!(s.calls, 6);
        assert_eq!(s.by_outcome["answered"], 2);
        assert_eq!(s.by_outcome["skipped"], 0);
        assert_eq!(s.by_outcome["in_progress"], 1);
        assert_eq!(s.answer_rate, Some(2.0 / 5.0));
        // 3000, 4000, 6000, 32000: (4000 + 6000) / 2.
        assert_eq!(s.median_ring_ms, Some(5000));
        assert_eq!(s.per_hour.len(), 3);
        assert_eq!(s.per_hour[0].calls, 0);
        assert_eq!(s.per_hour[1].calls, 2);
        assert_eq!(s.per_hour[1].by_outcome["busy"], 1);
        assert_eq!(s.per_hour[2].calls, 3);
        assert_eq!(s.per_hour[2].start, ms_to_time(10 * HOUR_MS));
    }

    #[test]
    fn nothing_called_yet() {
        let s = SessionStats::compute(1, &[], 0, 24);
        assert_eq!((s.calls, s.answer_rate, s.median_ring_ms), (0, None, None));
        assert_eq!(s.per_hour.len(), 24);
        assert_eq!(median(&mut [5]), Some(5));
    }
}
