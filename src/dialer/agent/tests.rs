//! The agent state machine on simulated time: seconds pass in nanoseconds.

use std::time::{Duration, Instant};

use super::*;
use crate::dialer::queue::{Claim, LeadId, Tier};

const IDLE: Duration = Duration::from_secs(3);

/// The simulated clock's origin: read once, then only added to.
#[allow(clippy::disallowed_methods)]
fn start() -> Instant {
    Instant::now()
}

fn claim(lead: i64) -> Claim {
    Claim {
        lead: LeadId(lead),
        generation: 0,
        tier: Tier::Uncalled,
        view_pos: 0,
    }
}

fn actions(m: &mut AgentMachine) -> Vec<AgentAction> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

/// Joined, leg up, dialing lead 1 as call 10.
fn dialing(t0: Instant) -> AgentMachine {
    let mut m = AgentMachine::new(IDLE);
    assert_eq!(m.state(), AgentState::Joining);
    m.join();
    assert_eq!(m.state(), AgentState::CallingAgent);
    assert_eq!(actions(&mut m), vec![AgentAction::ConnectAgent]);
    m.handle_agent_connected();
    assert_eq!(m.state(), AgentState::Ready);
    assert_eq!(actions(&mut m), vec![AgentAction::ClaimNext]);
    m.handle_dialing(claim(1));
    m.handle_call_started(10);
    assert_eq!(m.state(), AgentState::Dialing);
    let _ = t0;
    m
}

/// Dialing, ringing, answered, ended at `end`.
fn answered_call_ended(t0: Instant, end: Instant) -> AgentMachine {
    let mut m = dialing(t0);
    m.handle_lead_ringing(10);
    assert_eq!(m.state(), AgentState::Ringing);
    m.handle_lead_answered(10);
    assert_eq!(m.state(), AgentState::Connected);
    assert_eq!(m.handle_call_ended(end, 10, true), Some(claim(1)));
    m
}

#[test]
fn full_cycle_join_to_wrap_up_to_next_claim() {
    let t0 = start();
    let end = t0 + Duration::from_secs(60);
    let mut m = answered_call_ended(t0, end);
    assert_eq!(m.state(), AgentState::WrapUp);
    assert_eq!(m.poll_timeout(), Some(end + IDLE));
    assert!(actions(&mut m).is_empty());
    // Not yet.
    m.handle_timeout(end + IDLE - Duration::from_millis(1));
    assert_eq!(m.state(), AgentState::WrapUp);
    // Moves on by itself once the idle time passed.
    m.handle_timeout(end + IDLE);
    assert_eq!(m.state(), AgentState::Ready);
    assert_eq!(actions(&mut m), vec![AgentAction::ClaimNext]);
}

#[test]
fn wrap_up_shows_the_call_that_ended_until_the_next_claim() {
    let t0 = start();
    let end = t0 + Duration::from_secs(60);
    let mut m = answered_call_ended(t0, end);
    assert_eq!(m.call(), None);
    let shown = m.shown_call().expect("the ended call is shown in wrap-up");
    assert_eq!((shown.claim, shown.call_id), (claim(1), Some(10)));
    m.next(end).expect("next");
    assert_eq!(m.state(), AgentState::Ready);
    assert_eq!(m.shown_call(), None, "nothing shown once wrap-up is over");
    m.handle_dialing(claim(2));
    m.handle_call_started(11);
    assert_eq!(m.shown_call().and_then(|c| c.call_id), Some(11));
}

#[test]
fn typing_heartbeats_extend_wrap_up_then_it_moves_on() {
    let t0 = start();
    let end = t0 + Duration::from_secs(60);
    let mut m = answered_call_ended(t0, end);
    // A heartbeat every 2 s for 20 s keeps the agent in wrap-up.
    let mut t = end;
    for _ in 0..10 {
        t += Duration::from_secs(2);
        m.handle_timeout(t);
        assert_eq!(m.state(), AgentState::WrapUp, "moved on while typing");
        m.typing(t);
        assert_eq!(m.poll_timeout(), Some(t + IDLE));
    }
    // Typing stops: wrap-up ends `IDLE` after the last heartbeat.
    m.handle_timeout(t + IDLE - Duration::from_millis(1));
    assert_eq!(m.state(), AgentState::WrapUp);
    m.handle_timeout(t + IDLE);
    assert_eq!(m.state(), AgentState::Ready);
    assert_eq!(actions(&mut m), vec![AgentAction::ClaimNext]);
}

#[test]
fn typing_during_the_call_counts_for_wrap_up() {
    let t0 = start();
    let mut m = dialing(t0);
    m.handle_lead_answered(10);
    let typed = t0 + Duration::from_secs(30);
    m.typing(typed);
    let end = typed + Duration::from_secs(1);
    m.handle_call_ended(end, 10, true);
    // max(end + idle, typed + idle) = end + idle.
    assert_eq!(m.poll_timeout(), Some(end + IDLE));
}

#[test]
fn next_ends_wrap_up_at_once() {
    let t0 = start();
    let end = t0 + Duration::from_secs(60);
    let mut m = answered_call_ended(t0, end);
    m.typing(end + Duration::from_secs(1));
    m.next(end + Duration::from_secs(1)).expect("next");
    assert_eq!(m.state(), AgentState::Ready);
    assert_eq!(actions(&mut m), vec![AgentAction::ClaimNext]);
}

#[test]
fn unanswered_call_moves_on_at_once_without_typing() {
    let t0 = start();
    let mut m = dialing(t0);
    m.handle_lead_ringing(10);
    m.handle_call_ended(t0 + Duration::from_secs(32), 10, false);
    assert_eq!(m.state(), AgentState::Ready);
    assert_eq!(actions(&mut m), vec![AgentAction::ClaimNext]);
}

#[test]
fn unanswered_call_waits_for_an_agent_who_is_typing() {
    let t0 = start();
    let mut m = dialing(t0);
    let typed = t0 + Duration::from_secs(20);
    m.typing(typed);
    m.handle_call_ended(t0 + Duration::from_secs(21), 10, false);
    assert_eq!(m.state(), AgentState::WrapUp);
    assert_eq!(m.poll_timeout(), Some(typed + IDLE));
}

#[test]
fn next_while_ringing_skips_and_dials_without_wrap_up() {
    let t0 = start();
    let mut m = dialing(t0);
    m.handle_lead_ringing(10);
    m.next(t0).expect("next");
    assert_eq!(actions(&mut m), vec![AgentAction::SkipLead]);
    // The engine CANCELs; the call ends as skipped (R9).
    m.handle_call_ended(t0 + Duration::from_secs(1), 10, false);
    assert_eq!(m.state(), AgentState::Ready);
    assert_eq!(actions(&mut m), vec![AgentAction::ClaimNext]);
}

#[test]
fn next_while_connected_hangs_up_and_skips_wrap_up() {
    let t0 = start();
    let mut m = dialing(t0);
    m.handle_lead_answered(10);
    m.next(t0).expect("next");
    assert_eq!(actions(&mut m), vec![AgentAction::SkipLead]);
    m.handle_call_ended(t0 + Duration::from_secs(5), 10, true);
    assert_eq!(m.state(), AgentState::Ready);
}

#[test]
fn hangup_goes_to_wrap_up() {
    let t0 = start();
    let mut m = dialing(t0);
    m.handle_lead_answered(10);
    m.hangup().expect("hangup");
    assert_eq!(actions(&mut m), vec![AgentAction::SkipLead]);
    m.handle_call_ended(t0 + Duration::from_secs(5), 10, true);
    assert_eq!(m.state(), AgentState::WrapUp);
    assert!(m.hangup().is_err(), "nothing to hang up in wrap-up");
}

#[test]
fn pause_on_zero_during_a_call_takes_effect_when_it_ends() {
    let t0 = start();
    let mut m = dialing(t0);
    m.handle_lead_answered(10);
    m.pause().expect("pause");
    assert_eq!(m.state(), AgentState::Connected, "the call goes on");
    m.handle_call_ended(t0 + Duration::from_secs(5), 10, true);
    assert_eq!(m.state(), AgentState::Paused);
    assert!(actions(&mut m).is_empty());
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn pause_in_wrap_up_then_resume_with_leg_up_dials() {
    let t0 = start();
    let end = t0 + Duration::from_secs(60);
    let mut m = answered_call_ended(t0, end);
    m.pause().expect("pause");
    assert_eq!(m.state(), AgentState::Paused);
    m.handle_timeout(end + IDLE * 10);
    assert_eq!(
        m.state(),
        AgentState::Paused,
        "paused agents do not move on"
    );
    m.resume(end + IDLE * 10).expect("resume");
    assert_eq!(m.state(), AgentState::Ready);
    assert_eq!(actions(&mut m), vec![AgentAction::ClaimNext]);
}

#[test]
fn agent_hangs_up_the_phone_pauses_and_resume_reconnects() {
    let t0 = start();
    let mut m = dialing(t0);
    m.handle_lead_ringing(10);
    // The phone hangs up while the lead rings: the engine skips the lead.
    m.handle_agent_disconnected();
    m.handle_call_ended(t0 + Duration::from_secs(2), 10, false);
    assert_eq!(m.state(), AgentState::Paused);
    assert!(!m.leg_up());
    m.resume(t0 + Duration::from_secs(10)).expect("resume");
    assert_eq!(m.state(), AgentState::CallingAgent);
    assert_eq!(actions(&mut m), vec![AgentAction::ConnectAgent]);
    m.handle_agent_connected();
    assert_eq!(actions(&mut m), vec![AgentAction::ClaimNext]);
}

#[test]
fn agent_disconnect_while_idle_pauses_at_once() {
    let t0 = start();
    let mut m = answered_call_ended(t0, t0);
    m.handle_agent_disconnected();
    assert_eq!(m.state(), AgentState::Paused);
}

#[test]
fn agent_leg_failure_pauses() {
    let mut m = AgentMachine::new(IDLE);
    m.join();
    m.handle_agent_failed();
    assert_eq!(m.state(), AgentState::Paused);
}

#[test]
fn idle_agent_wakes_at_block_expiry_or_on_poke() {
    let t0 = start();
    let mut m = AgentMachine::new(IDLE);
    m.join();
    m.handle_agent_connected();
    actions(&mut m);
    let wake = t0 + Duration::from_secs(3600);
    m.handle_no_lead(Some(wake));
    assert_eq!(m.poll_timeout(), Some(wake));
    m.handle_timeout(wake - Duration::from_secs(1));
    assert!(actions(&mut m).is_empty());
    m.handle_timeout(wake);
    assert_eq!(actions(&mut m), vec![AgentAction::ClaimNext]);
    // A second claim is not asked while one is pending.
    m.poke();
    assert!(actions(&mut m).is_empty());
    m.handle_no_lead(None);
    assert_eq!(m.poll_timeout(), None);
    m.poke();
    assert_eq!(actions(&mut m), vec![AgentAction::ClaimNext]);
}

#[test]
fn events_for_another_call_are_ignored() {
    let t0 = start();
    let mut m = dialing(t0);
    m.handle_lead_answered(99);
    assert_eq!(m.state(), AgentState::Dialing);
    assert_eq!(m.handle_call_ended(t0, 99, true), None);
    assert_eq!(m.state(), AgentState::Dialing);
}

#[test]
fn leave_skips_the_lead_and_hangs_up_the_agent() {
    let t0 = start();
    let mut m = dialing(t0);
    m.leave();
    assert_eq!(
        actions(&mut m),
        vec![AgentAction::SkipLead, AgentAction::DisconnectAgent]
    );
    assert_eq!(m.state(), AgentState::Left);
    assert!(m.resume(t0).is_err());
}

#[test]
fn a_callback_connects_an_idle_agent_then_wrap_up_then_the_next_claim() {
    let t0 = start();
    let mut m = answered_call_ended(t0, t0 + Duration::from_secs(5));
    // Wrap-up over, nothing to call: idle and ready.
    m.handle_timeout(t0 + Duration::from_secs(9));
    assert_eq!(actions(&mut m), vec![AgentAction::ClaimNext]);
    m.handle_no_lead(None);
    assert_eq!(m.state(), AgentState::Ready);

    let cb = Callback {
        call_id: 20,
        lead_id: Some(1),
    };
    m.handle_callback(cb);
    assert_eq!(m.state(), AgentState::Connected);
    assert!(m.on_callback());
    assert_eq!(m.shown_callback(), Some(cb));
    assert_eq!(m.shown_call(), None, "no claim behind a callback");
    // A refresh does not start a claim meanwhile.
    m.poke();
    assert!(actions(&mut m).is_empty());
    // Another call's end is not this callback's.
    assert!(!m.handle_callback_ended(t0 + Duration::from_secs(20), 21));
    let end = t0 + Duration::from_secs(30);
    assert!(m.handle_callback_ended(end, 20));
    assert_eq!(m.state(), AgentState::WrapUp);
    assert_eq!(m.shown_callback(), Some(cb), "shown while writing notes");
    assert_eq!(m.poll_timeout(), Some(end + IDLE));
    m.handle_timeout(end + IDLE);
    assert_eq!(actions(&mut m), vec![AgentAction::ClaimNext]);
    assert_eq!(m.shown_callback(), None);
}

#[test]
fn a_callback_to_a_paused_agent_leaves_it_paused_and_none_interrupts_a_call() {
    let t0 = start();
    let mut m = dialing(t0);
    let cb = Callback {
        call_id: 20,
        lead_id: None,
    };
    m.handle_callback(cb);
    assert_eq!(
        m.state(),
        AgentState::Dialing,
        "a lead call in progress wins"
    );
    assert!(!m.on_callback());

    let mut m = answered_call_ended(t0, t0 + Duration::from_secs(5));
    m.pause().expect("pause");
    m.handle_callback(cb);
    assert_eq!(m.state(), AgentState::Connected);
    assert!(m.handle_callback_ended(t0 + Duration::from_secs(30), 20));
    assert_eq!(m.state(), AgentState::Paused);
    assert!(actions(&mut m).is_empty());
}
