//! The outcome of one dialed call (SPEC R8–R12, §4 call record).

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How a lead call ended, as stored in the call record and used by the queue
/// engine (SPEC R8–R12). Serialised in snake_case (`no_answer`, …), the names
/// the HTTP API and the database use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = CallOutcome)]
pub enum Outcome {
    /// The lead answered (a person or a voicemail: both count, SPEC §1 step 4).
    Answered,
    /// The ring timeout expired, or the callee's side cancelled (R8, 487).
    NoAnswer,
    /// 486 Busy Here or 600 Busy Everywhere (R12): treated like no answer.
    Busy,
    /// The agent moved on or hung up while the lead was ringing (R9).
    Skipped,
    /// 408, 480, 500, 503, 504, other 5xx, a transport failure or no
    /// response at all (R10): not blocked, retried after the next refresh.
    TemporaryError,
    /// 403, 404, 484, 488, 603 and the other 4xx/6xx, a second digest
    /// challenge, a number the trunk may not dial (R11): blocked.
    Restricted,
    /// An answering machine answered and was hung up on (SPEC §4 session
    /// `amd` "hangup"); answered as far as R5 goes.
    Voicemail,
    /// An answering machine answered and got the voicemail drop after its
    /// beep (SPEC §4 `amd` "drop", or the agent's drop key); answered as
    /// far as R5 goes.
    VoicemailDropped,
    /// A lead (or an unknown caller) called one of our caller IDs and was
    /// bridged to an agent (SPEC §1 "Leads calling back"); never a dial
    /// outcome, so the queue does not see it.
    Inbound,
}

impl Outcome {
    /// The outcome of a final response to the lead's INVITE (R10–R12).
    ///
    /// Listed statuses follow the SPEC. The rest, decided here:
    /// - 2xx → `Answered`;
    /// - 487 Request Terminated → `NoAnswer` (the call was cancelled before
    ///   anyone answered; R8);
    /// - other 5xx → `TemporaryError` (a server-side failure: worth retrying,
    ///   like 500/503/504);
    /// - other 4xx and 6xx (and 3xx, which powerdial does not follow towards a
    ///   carrier) → `Restricted` (the request itself is refused: retrying the
    ///   same number on the same trunk will not help), including 401/407
    ///   after the one digest retry;
    /// - 1xx or anything outside 100–699 is not final: `TemporaryError`, so a
    ///   misbehaving peer is retried rather than blocked.
    pub fn from_final_status(status: u16) -> Outcome {
        match status {
            200..=299 => Outcome::Answered,
            486 | 600 => Outcome::Busy,
            487 => Outcome::NoAnswer,
            408 | 480 | 500 | 503 | 504 => Outcome::TemporaryError,
            403 | 404 | 484 | 488 | 603 => Outcome::Restricted,
            500..=599 => Outcome::TemporaryError,
            300..=499 | 600..=699 => Outcome::Restricted,
            _ => Outcome::TemporaryError,
        }
    }

    /// Reads the database's spelling (the `calls.outcome` CHECK list).
    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "answered" => Outcome::Answered,
            "no_answer" => Outcome::NoAnswer,
            "busy" => Outcome::Busy,
            "skipped" => Outcome::Skipped,
            "temporary_error" => Outcome::TemporaryError,
            "restricted" => Outcome::Restricted,
            "inbound" => Outcome::Inbound,
            "voicemail" => Outcome::Voicemail,
            "voicemail_dropped" => Outcome::VoicemailDropped,
            _ => return None,
        })
    }

    /// The snake_case name used in the API and the database (R8–R12).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::NoAnswer => "no_answer",
            Outcome::Busy => "busy",
            Outcome::Skipped => "skipped",
            Outcome::TemporaryError => "temporary_error",
            Outcome::Restricted => "restricted",
            Outcome::Inbound => "inbound",
            Outcome::Voicemail => "voicemail",
            Outcome::VoicemailDropped => "voicemail_dropped",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The facts of one leg the driver turns into a call record (SPEC §4: started,
/// answered, ended, SIP status, ring time). Instants are the `now` values the
/// leg was driven with; the driver maps them to wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegRecord {
    /// When the first INVITE was handed out to be sent.
    pub started: Instant,
    /// When the 2xx that made the call answered was handled.
    pub answered: Option<Instant>,
    /// When the call ended: BYE sent or received for an answered call; the
    /// outcome's decision (final response, ring timeout, skip) otherwise.
    pub ended: Option<Instant>,
    /// The final status of the (last) INVITE, if one arrived; a 2xx that
    /// crossed a CANCEL is recorded as is, while the outcome stays
    /// `no_answer`/`skipped`.
    pub sip_status: Option<u16>,
    /// INVITE → answer, final response, ring timeout or skip (R8).
    pub ring_duration: Option<Duration>,
}

impl LegRecord {
    pub(crate) fn new(started: Instant) -> Self {
        LegRecord {
            started,
            answered: None,
            ended: None,
            sip_status: None,
            ring_duration: None,
        }
    }

    /// Ends the ringing phase at `now` unless it already ended.
    pub(crate) fn stop_ringing(&mut self, now: Instant) {
        if self.ring_duration.is_none() {
            self.ring_duration = Some(now.saturating_duration_since(self.started));
        }
    }

    /// Marks the end at `now` unless already ended.
    pub(crate) fn end(&mut self, now: Instant) {
        if self.ended.is_none() {
            self.ended = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_as_the_spec_lists() {
        for s in [408, 480, 500, 503, 504] {
            assert_eq!(
                Outcome::from_final_status(s),
                Outcome::TemporaryError,
                "{s}"
            );
        }
        for s in [403, 404, 484, 488, 603] {
            assert_eq!(Outcome::from_final_status(s), Outcome::Restricted, "{s}");
        }
        for s in [486, 600] {
            assert_eq!(Outcome::from_final_status(s), Outcome::Busy, "{s}");
        }
        assert_eq!(Outcome::from_final_status(200), Outcome::Answered);
        assert_eq!(Outcome::from_final_status(487), Outcome::NoAnswer);
    }

    #[test]
    fn unlisted_statuses_follow_the_documented_choice() {
        assert_eq!(Outcome::from_final_status(502), Outcome::TemporaryError);
        assert_eq!(Outcome::from_final_status(599), Outcome::TemporaryError);
        assert_eq!(Outcome::from_final_status(401), Outcome::Restricted);
        assert_eq!(Outcome::from_final_status(407), Outcome::Restricted);
        assert_eq!(Outcome::from_final_status(302), Outcome::Restricted);
        assert_eq!(Outcome::from_final_status(606), Outcome::Restricted);
        assert_eq!(Outcome::from_final_status(180), Outcome::TemporaryError);
        assert_eq!(Outcome::from_final_status(999), Outcome::TemporaryError);
    }

    #[test]
    fn serde_names_are_snake_case() {
        let all = [
            Outcome::Answered,
            Outcome::NoAnswer,
            Outcome::Busy,
            Outcome::Skipped,
            Outcome::TemporaryError,
            Outcome::Restricted,
        ];
        for o in all {
            let json = serde_json::to_string(&o).unwrap();
            assert_eq!(json, format!("\"{}\"", o.as_str()));
            assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), o);
        }
        assert_eq!(
            serde_json::to_string(&Outcome::TemporaryError).unwrap(),
            "\"temporary_error\""
        );
    }
}
