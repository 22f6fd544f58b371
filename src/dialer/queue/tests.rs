//! One test per rule R1–R15 on simulated time (an hour passes in a
//! microsecond), then the engine's details and a proptest over random runs.

use super::*;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
/// 2024-01-01T00:00:00Z, a wall clock far from zero like the real one.
const T0: i64 = 1_704_067_200_000;
const A: AgentId = AgentId(1);
const B: AgentId = AgentId(2);
const C: AgentId = AgentId(3);

fn ids(v: &[i64]) -> Vec<LeadId> {
    v.iter().copied().map(LeadId).collect()
}

fn never_called(_: LeadId) -> Option<i64> {
    None
}

fn queue(view: &[i64], now: i64) -> SessionQueue {
    let mut q = SessionQueue::new(DEFAULT_BLOCK);
    q.refresh(&ids(view), never_called, now).unwrap();
    q
}

fn claim(q: &mut SessionQueue, agent: AgentId, now: i64) -> Option<Claim> {
    q.claim_next(agent, now).unwrap()
}

/// Claims with `agent` and reports `outcome` at once; returns the lead.
fn call(q: &mut SessionQueue, agent: AgentId, outcome: Outcome, now: i64) -> Option<i64> {
    let c = claim(q, agent, now)?;
    assert_eq!(
        q.report(agent, c.lead, c.generation, outcome, now).unwrap(),
        Reported::Applied
    );
    Some(c.lead.0)
}

/// Calls every claimable lead once with `outcome`; returns them in order.
fn pass(q: &mut SessionQueue, outcome: Outcome, now: i64) -> Vec<i64> {
    std::iter::from_fn(|| call(q, A, outcome, now)).collect()
}

#[test]
fn r1_view_order() {
    let mut q = queue(&[50, 3, 17, 9], T0);
    assert_eq!(pass(&mut q, Outcome::NoAnswer, T0), vec![50, 3, 17, 9]);
}

#[test]
fn r2_one_claim_per_lead_not_per_phone() {
    // R2 is the caller's (it dials the first phone of the first contact):
    // the engine hands out leads, so an unanswered lead is not offered again
    // in the same pass, as it would be if its other phones were queued.
    let mut q = queue(&[1, 2], T0);
    let first = claim(&mut q, A, T0).unwrap();
    assert_eq!((first.lead, first.tier), (LeadId(1), Tier::Uncalled));
    q.report(A, first.lead, first.generation, Outcome::NoAnswer, T0)
        .unwrap();
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0), Some(2));
    assert_eq!(claim(&mut q, A, T0 + MIN), None);
}

#[test]
fn r3_uncalled_before_unanswered() {
    let mut q = queue(&[1, 2, 3, 4], T0);
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0), Some(1));
    // Two hours later lead 1's block is long over and it ranks first, but
    // every other lead must be called before it is retried.
    let later = T0 + 2 * HOUR;
    assert_eq!(
        q.explain(LeadId(1), later).to_string(),
        "R3: unanswered (1 calls), waiting for the retry pass, view pos 0"
    );
    assert_eq!(call(&mut q, A, Outcome::Busy, later), Some(2));
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, later), Some(3));
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, later), Some(4));
    // The retry pass, in view order, as the blocks expire.
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, later), Some(1));
    assert_eq!(claim(&mut q, A, later), None);
    // Lead 1's block ends first and it ranks first, yet its third call waits
    // until 2, 3 and 4 had their second: passes stay fair on long lists.
    assert_eq!(
        pass(&mut q, Outcome::NoAnswer, later + HOUR),
        vec![2, 3, 4, 1]
    );
}

#[test]
fn r3_retry_pass_skips_blocked_leads_and_takes_them_when_free() {
    let mut q = queue(&[1, 2, 3], T0);
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0), Some(1));
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0 + 30 * MIN), Some(2));
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0 + 40 * MIN), Some(3));
    // At T0+70min only lead 1 is free again.
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0 + 70 * MIN), Some(1));
    assert_eq!(claim(&mut q, A, T0 + 80 * MIN), None);
    assert_eq!(q.next_wakeup(T0 + 80 * MIN), Some(T0 + 90 * MIN));
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0 + 90 * MIN), Some(2));
}

#[test]
fn r4_never_called_twice_within_block() {
    // Lead 2 was called by another session 10 minutes ago: skipped at start.
    let last = |lead: LeadId| (lead == LeadId(2)).then_some(T0 - 10 * MIN);
    let mut q = SessionQueue::new(DEFAULT_BLOCK);
    q.refresh(&ids(&[1, 2, 3]), last, T0).unwrap();
    assert_eq!(
        q.explain(LeadId(2), T0).to_string(),
        "R4: blocked until 00:50 UTC (called by another session)"
    );
    assert_eq!(pass(&mut q, Outcome::NoAnswer, T0), vec![1, 3]);
    // Nothing is callable until lead 2's block ends, then it comes first:
    // it is still uncalled in this session.
    assert_eq!(q.next_wakeup(T0), Some(T0 + 50 * MIN));
    assert_eq!(claim(&mut q, A, T0 + 50 * MIN - 1), None);
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0 + 50 * MIN), Some(2));
    // This session's own calls block too, to the millisecond.
    assert_eq!(claim(&mut q, A, T0 + HOUR - 1), None);
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0 + HOUR), Some(1));
    // A call by another session learned later blocks the lead as well: lead
    // 3 (free since T0+60min) was called at T0+55min by someone else.
    q.record_external_call(LeadId(3), T0 + 55 * MIN);
    assert_eq!(claim(&mut q, A, T0 + 61 * MIN), None);
    assert_eq!(q.next_wakeup(T0 + 61 * MIN), Some(T0 + 110 * MIN));
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0 + 110 * MIN), Some(2));
    assert_eq!(claim(&mut q, A, T0 + 115 * MIN - 1), None);
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0 + 115 * MIN), Some(3));
}

#[test]
fn r5_answered_lead_not_called_again_in_session() {
    let mut q = queue(&[1, 2], T0);
    assert_eq!(call(&mut q, A, Outcome::Answered, T0), Some(1));
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0), Some(2));
    for hours in [2, 5, 24] {
        let t = T0 + hours * HOUR;
        q.refresh(&ids(&[1, 2]), never_called, t).unwrap();
        assert_eq!(pass(&mut q, Outcome::NoAnswer, t), vec![2]);
    }
    assert_eq!(
        q.explain(LeadId(1), T0).to_string(),
        "R5: answered, not called again in this session"
    );
    // Unless it leaves and re-enters the view (R7).
    q.refresh(&ids(&[2]), never_called, T0 + 25 * HOUR).unwrap();
    q.refresh(&ids(&[1, 2]), never_called, T0 + 25 * HOUR)
        .unwrap();
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0 + 25 * HOUR), Some(1));
}

#[test]
fn r6_entering_leads_slotted_by_sort_leaving_leads_dropped() {
    let mut q = queue(&[10, 20, 30, 40], T0);
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0), Some(10));
    // One entering at the top is called next.
    let s = q
        .refresh(&ids(&[5, 10, 20, 30, 40]), never_called, T0)
        .unwrap();
    assert_eq!((s.entered, s.left), (1, 0));
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0), Some(5));
    // One entering in the middle takes its place; 30 leaves the queue.
    let s = q
        .refresh(&ids(&[5, 10, 20, 25, 40, 99]), never_called, T0)
        .unwrap();
    assert_eq!((s.entered, s.left), (2, 1));
    assert_eq!(q.explain(LeadId(30), T0), Explanation::NotInView);
    // One entering at the end is called after all others were tried, and
    // before any retry (R3).
    assert_eq!(
        pass(&mut q, Outcome::NoAnswer, T0 + 2 * HOUR),
        vec![20, 25, 40, 99, 5, 10]
    );
}

#[test]
fn r7_reentering_lead_is_new_and_immediate() {
    let mut q = queue(&[1, 2, 3, 4], T0);
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0), Some(1));
    assert_eq!(q.generation(LeadId(1)), Some(0));
    q.refresh(&ids(&[2, 3, 4]), never_called, T0 + MIN).unwrap();
    // Back 5 minutes later: called at once despite the hour's block, and
    // despite a call by another session (its block does not apply either).
    let s = q
        .refresh(&ids(&[1, 2, 3, 4]), |_| Some(T0 + 4 * MIN), T0 + 5 * MIN)
        .unwrap();
    assert_eq!(s.reentered, 1);
    assert_eq!(
        q.explain(LeadId(1), T0 + 5 * MIN).to_string(),
        "R7: re-entered the view, uncalled, view pos 0"
    );
    let c = claim(&mut q, A, T0 + 5 * MIN).unwrap();
    assert_eq!(
        (c.lead, c.generation, c.tier),
        (LeadId(1), 1, Tier::Uncalled)
    );
    q.report(A, c.lead, c.generation, Outcome::NoAnswer, T0 + 5 * MIN)
        .unwrap();
    // Entering leads keep priority during the retry pass: 2, 3, 4 called and
    // unanswered; lead 9 entering at the end goes before their retries.
    assert_eq!(pass(&mut q, Outcome::NoAnswer, T0 + 6 * MIN), vec![2, 3, 4]);
    let t = T0 + 3 * HOUR;
    q.refresh(&ids(&[1, 2, 3, 4, 9]), never_called, t).unwrap();
    assert_eq!(pass(&mut q, Outcome::NoAnswer, t), vec![9, 1, 2, 3, 4]);
    // And leaving + re-entering during the retry pass puts a lead first.
    q.refresh(&ids(&[1, 2, 4, 9]), never_called, t).unwrap();
    q.refresh(&ids(&[1, 2, 3, 4, 9]), never_called, t).unwrap();
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, t), Some(3));
}

#[test]
fn r7_reentering_lead_ignores_other_sessions_blocks() {
    let last = |lead: LeadId| (lead == LeadId(7)).then_some(T0 - MIN);
    let mut q = SessionQueue::new(DEFAULT_BLOCK);
    q.refresh(&ids(&[1, 7]), last, T0).unwrap();
    assert_eq!(pass(&mut q, Outcome::NoAnswer, T0), vec![1]);
    q.refresh(&ids(&[1]), last, T0 + MIN).unwrap();
    q.refresh(&ids(&[1, 7]), last, T0 + 2 * MIN).unwrap();
    assert_eq!(pass(&mut q, Outcome::NoAnswer, T0 + 2 * MIN), vec![7]);
}

#[test]
fn r8_no_answer_blocks_and_stays_unanswered() {
    let mut q = queue(&[1], T0);
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0 + 32_000), Some(1));
    assert_eq!(claim(&mut q, A, T0 + 32_000 + HOUR - 1), None);
    let c = claim(&mut q, A, T0 + 32_000 + HOUR).unwrap();
    assert_eq!(c.tier, Tier::Unanswered { calls: 1 });
    assert!(!q.is_done());
}

#[test]
fn r9_skipped_blocked_then_queued_again_as_unanswered() {
    let mut q = queue(&[1, 2], T0);
    assert_eq!(call(&mut q, A, Outcome::Skipped, T0), Some(1));
    assert_eq!(
        q.explain(LeadId(1), T0).to_string(),
        "R4: blocked until 01:00 UTC"
    );
    assert_eq!(call(&mut q, A, Outcome::Answered, T0), Some(2));
    assert_eq!(claim(&mut q, A, T0 + 59 * MIN), None);
    let c = claim(&mut q, A, T0 + HOUR).unwrap();
    assert_eq!((c.lead, c.tier), (LeadId(1), Tier::Unanswered { calls: 1 }));
}

#[test]
fn r10_temporary_error_retried_after_next_refresh() {
    let mut q = queue(&[1, 2, 3], T0);
    assert_eq!(call(&mut q, A, Outcome::TemporaryError, T0), Some(1));
    assert_eq!(
        q.explain(LeadId(1), T0).to_string(),
        "R10: temporary error, retried after the next view refresh"
    );
    // Not blocked, but held until the view is refreshed, however long.
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0 + 2 * HOUR), Some(2));
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0 + 2 * HOUR), Some(3));
    assert_eq!(claim(&mut q, A, T0 + 2 * HOUR), None);
    assert_eq!(q.next_wakeup(T0 + 2 * HOUR), Some(T0 + 3 * HOUR));
    // The refresh (even seconds after the error) brings it back: still
    // uncalled, so it comes before every retry.
    let s = q
        .refresh(&ids(&[1, 2, 3]), |_| Some(T0 + 2 * HOUR), T0 + 2 * HOUR)
        .unwrap();
    assert_eq!(s.retried, 1);
    let c = claim(&mut q, A, T0 + 2 * HOUR).unwrap();
    assert_eq!((c.lead, c.tier), (LeadId(1), Tier::Uncalled));
}

#[test]
fn r10_a_refresh_caused_by_a_lead_change_does_not_end_the_wait() {
    let mut q = queue(&[1, 2], T0);
    assert_eq!(call(&mut q, A, Outcome::TemporaryError, T0), Some(1));
    // Every call outcome is a lead change (R6): the view is re-read, but a
    // 503'ing carrier must not be redialled within the second.
    q.refresh_on_change(&ids(&[1, 2]), |_| Some(T0), T0 + 1)
        .unwrap();
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0 + 2), Some(2));
    assert_eq!(claim(&mut q, A, T0 + 3), None);
    // The scheduled refresh ends the wait.
    q.refresh(&ids(&[1, 2]), |_| Some(T0), T0 + 4).unwrap();
    let c = claim(&mut q, A, T0 + 4).unwrap();
    assert_eq!(c.lead, LeadId(1));
}

#[test]
fn r11_restricted_blocked_then_retried_in_retry_pass() {
    let mut q = queue(&[1, 2], T0);
    assert_eq!(call(&mut q, A, Outcome::Restricted, T0), Some(1));
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0 + MIN), Some(2));
    assert_eq!(claim(&mut q, A, T0 + 59 * MIN), None);
    assert_eq!(pass(&mut q, Outcome::NoAnswer, T0 + 2 * HOUR), vec![1, 2]);
}

#[test]
fn r12_busy_like_no_answer() {
    let mut busy = queue(&[1, 2, 3], T0);
    let mut no_answer = queue(&[1, 2, 3], T0);
    for (q, outcome) in [
        (&mut busy, Outcome::Busy),
        (&mut no_answer, Outcome::NoAnswer),
    ] {
        assert_eq!(call(q, A, outcome, T0), Some(1));
        assert_eq!(call(q, A, outcome, T0 + 30 * MIN), Some(2));
    }
    for t in [T0 + 59 * MIN, T0 + HOUR, T0 + 2 * HOUR] {
        assert_eq!(
            pass(&mut busy, Outcome::NoAnswer, t),
            pass(&mut no_answer, Outcome::NoAnswer, t)
        );
    }
}

#[test]
fn r13_several_agents_never_get_the_same_lead() {
    let mut q = queue(&[1, 2, 3, 4], T0);
    let a = claim(&mut q, A, T0).unwrap();
    let b = claim(&mut q, B, T0).unwrap();
    let c = claim(&mut q, C, T0).unwrap();
    assert_eq!([a.lead, b.lead, c.lead], [LeadId(1), LeadId(2), LeadId(3)]);
    // One call per agent.
    assert_eq!(
        q.claim_next(A, T0),
        Err(QueueError::AgentBusy {
            agent: A,
            lead: LeadId(1)
        })
    );
    assert_eq!(
        q.explain(LeadId(2), T0).to_string(),
        "R13: being called by agent 2"
    );
    // Lead 2 leaves and re-enters while B's call to it goes on: it is new
    // (R7) but still nobody else's until B's call ends.
    q.refresh(&ids(&[1, 3, 4]), never_called, T0).unwrap();
    q.refresh(&ids(&[1, 2, 3, 4]), never_called, T0).unwrap();
    let d = claim(&mut q, AgentId(4), T0).unwrap();
    assert_eq!(d.lead, LeadId(4));
    assert_eq!(claim(&mut q, AgentId(5), T0), None);
    // B answered, but for the old generation: ignored, the new lead 2 is
    // queued for immediate calling.
    assert_eq!(
        q.report(B, b.lead, b.generation, Outcome::Answered, T0),
        Ok(Reported::Stale)
    );
    let again = claim(&mut q, AgentId(5), T0).unwrap();
    assert_eq!((again.lead, again.generation), (LeadId(2), 1));
    // Reports name the agent's own claim only.
    assert_eq!(
        q.report(A, c.lead, c.generation, Outcome::Answered, T0),
        Err(QueueError::NotClaimed {
            agent: A,
            lead: LeadId(3),
            generation: 0
        })
    );
}

#[test]
fn r14_reset_erases_session_history_and_starts_from_top() {
    let last = |lead: LeadId| (lead == LeadId(4)).then_some(T0 - 30 * MIN);
    let mut q = SessionQueue::new(DEFAULT_BLOCK);
    q.refresh(&ids(&[1, 2, 3, 4]), last, T0).unwrap();
    assert_eq!(call(&mut q, A, Outcome::Answered, T0), Some(1));
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0), Some(2));
    assert_eq!(call(&mut q, A, Outcome::TemporaryError, T0), Some(3));
    let live = claim(&mut q, B, T0 + 35 * MIN).unwrap();
    assert_eq!(live.lead, LeadId(4));
    q.reset(T0 + 40 * MIN);
    // Answered, called, blocked and waiting leads are all uncalled again, in
    // view order; the lead being called keeps its claim.
    assert_eq!(
        pass(&mut q, Outcome::NoAnswer, T0 + 40 * MIN),
        vec![1, 2, 3]
    );
    q.report(
        B,
        live.lead,
        live.generation,
        Outcome::NoAnswer,
        T0 + 41 * MIN,
    )
    .unwrap();
    assert_eq!(q.next_wakeup(T0 + 41 * MIN), Some(T0 + 40 * MIN + HOUR));

    // A block from another session's call survives a reset (R4).
    let mut q = SessionQueue::new(DEFAULT_BLOCK);
    q.refresh(&ids(&[1, 4]), last, T0).unwrap();
    q.reset(T0);
    assert_eq!(pass(&mut q, Outcome::NoAnswer, T0), vec![1]);
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0 + 30 * MIN), Some(4));
}

#[test]
fn r15_done_when_every_lead_in_view_answered() {
    let mut q = queue(&[1, 2, 3], T0);
    assert!(!q.is_done());
    assert_eq!(call(&mut q, A, Outcome::Answered, T0), Some(1));
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0), Some(2));
    assert_eq!(call(&mut q, A, Outcome::Answered, T0), Some(3));
    assert!(!q.is_done());
    assert_eq!(call(&mut q, A, Outcome::Answered, T0 + HOUR), Some(2));
    assert!(q.is_done());
    assert_eq!(claim(&mut q, A, T0 + 5 * HOUR), None);
    assert_eq!(q.next_wakeup(T0 + 5 * HOUR), None);
    // It keeps watching the view: a new lead makes it not done.
    q.refresh(&ids(&[1, 2, 3, 4]), never_called, T0 + 5 * HOUR)
        .unwrap();
    assert!(!q.is_done());
    assert_eq!(call(&mut q, A, Outcome::Answered, T0 + 5 * HOUR), Some(4));
    assert!(q.is_done());
    // A lead leaving does not undo it.
    q.refresh(&ids(&[1, 3, 4]), never_called, T0 + 5 * HOUR)
        .unwrap();
    assert!(q.is_done());
}

#[test]
fn release_returns_lead_where_it_was() {
    let mut q = queue(&[1, 2, 3], T0);
    let a = claim(&mut q, A, T0).unwrap();
    let b = claim(&mut q, B, T0).unwrap();
    assert_eq!(q.release(A), Some(a.lead));
    assert_eq!(q.release(A), None);
    assert_eq!(claim(&mut q, C, T0).unwrap().lead, LeadId(1));
    assert_eq!(q.release(B), Some(b.lead));
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0), Some(2));
}

#[test]
fn claimed_lead_that_leaves_is_not_queued_again() {
    let mut q = queue(&[1, 2], T0);
    let c = claim(&mut q, A, T0).unwrap();
    q.refresh(&ids(&[2]), never_called, T0).unwrap();
    assert_eq!(
        q.report(A, c.lead, c.generation, Outcome::NoAnswer, T0),
        Ok(Reported::LeftView)
    );
    assert_eq!(pass(&mut q, Outcome::NoAnswer, T0 + 5 * HOUR), vec![2]);
    // A released claim on a lead that left does not come back either.
    let mut q = queue(&[1, 2], T0);
    claim(&mut q, A, T0).unwrap();
    q.refresh(&ids(&[2]), never_called, T0).unwrap();
    assert_eq!(q.release(A), Some(LeadId(1)));
    assert_eq!(pass(&mut q, Outcome::NoAnswer, T0), vec![2]);
}

#[test]
fn restore_after_restart_keeps_blocks_answers_and_tiers() {
    let mut before = queue(&[1, 2, 3, 4], T0);
    assert_eq!(call(&mut before, A, Outcome::Answered, T0), Some(1));
    assert_eq!(call(&mut before, A, Outcome::NoAnswer, T0), Some(2));
    assert_eq!(call(&mut before, A, Outcome::TemporaryError, T0), Some(3));
    let saved: Vec<(LeadId, LeadHistory)> = ids(&[1, 2, 3, 4])
        .into_iter()
        .filter_map(|l| Some((l, before.history(l)?)))
        .collect();
    assert_eq!(
        saved[1].1,
        LeadHistory {
            generation: 0,
            calls: 1,
            answered: false,
            blocked_until: Some(T0 + HOUR)
        }
    );

    let mut after = queue(&[1, 2, 3, 4], T0 + MIN);
    for (lead, h) in saved {
        assert!(after.restore(lead, h));
    }
    let t = T0 + 2 * HOUR;
    assert_eq!(pass(&mut before, Outcome::NoAnswer, t), vec![4, 2]);
    assert_eq!(pass(&mut after, Outcome::NoAnswer, t), vec![3, 4, 2]);
    let answered = LeadHistory {
        generation: 0,
        calls: 0,
        answered: true,
        blocked_until: None,
    };
    assert!(after.restore(LeadId(4), answered));
    assert!(!after.restore(LeadId(9), answered));
    assert_eq!(after.counts().answered, 2);
}

#[test]
fn duplicates_in_view_count_once() {
    let mut q = SessionQueue::new(DEFAULT_BLOCK);
    let s = q.refresh(&ids(&[1, 2, 1, 3, 2]), never_called, T0).unwrap();
    assert_eq!(s.duplicates, 2);
    assert_eq!(&q.view()[..], &ids(&[1, 2, 3])[..]);
    assert_eq!(pass(&mut q, Outcome::Answered, T0), vec![1, 2, 3]);
    assert!(q.is_done());
}

#[test]
fn upcoming_lists_in_claim_order_then_blocked_then_waiting() {
    let last = |lead: LeadId| (lead == LeadId(5)).then_some(T0 - 50 * MIN);
    let mut q = SessionQueue::new(DEFAULT_BLOCK);
    q.refresh(&ids(&[1, 2, 3, 4, 5, 6]), last, T0).unwrap();
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0), Some(1));
    assert_eq!(call(&mut q, A, Outcome::TemporaryError, T0), Some(2));
    let held = claim(&mut q, B, T0).unwrap();
    assert_eq!(held.lead, LeadId(3));
    let t = T0 + 61 * MIN;
    let items: Vec<(i64, ItemState)> = q.upcoming(t).map(|i| (i.lead.0, i.state)).collect();
    assert_eq!(
        items,
        vec![
            (4, ItemState::Ready),
            (5, ItemState::Ready),
            (6, ItemState::Ready),
            (1, ItemState::Ready),
            (2, ItemState::AwaitingRefresh),
        ]
    );
    let items: Vec<(i64, ItemState)> = q.upcoming(T0).map(|i| (i.lead.0, i.state)).collect();
    assert_eq!(items[1], (5, ItemState::Ready), "time never goes backwards");
    let counts = q.counts();
    assert_eq!(
        (counts.in_view, counts.claimed, counts.awaiting_refresh),
        (6, 1, 1)
    );
    assert_eq!(q.claims().collect::<Vec<_>>(), vec![(B, LeadId(3))]);
    assert_eq!(q.claim_of(B), Some(held));

    let mut fresh = SessionQueue::new(DEFAULT_BLOCK);
    fresh.refresh(&ids(&[1, 5]), last, T0).unwrap();
    let items: Vec<(i64, ItemState)> = fresh.upcoming(T0).map(|i| (i.lead.0, i.state)).collect();
    assert_eq!(
        items,
        vec![
            (1, ItemState::Ready),
            (
                5,
                ItemState::Blocked {
                    until: T0 + 10 * MIN
                }
            )
        ]
    );
}

#[test]
fn explain_retry_pass_under_way() {
    let mut q = queue(&[1, 2], T0);
    pass(&mut q, Outcome::NoAnswer, T0);
    assert_eq!(
        q.explain(LeadId(2), T0 + 2 * HOUR).to_string(),
        "R3: retry pass 1, view pos 1"
    );
    assert_eq!(q.explain(LeadId(77), T0), Explanation::NotInView);
}

mod prop {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashMap, HashSet};

    const LEADS: i64 = 6;
    const AGENTS: i64 = 3;

    #[derive(Debug, Clone)]
    enum Op {
        Claim(i64),
        Report(i64, Outcome),
        Release(i64),
        /// A new view: each lead with a sort key, absent when `None`.
        Refresh(Vec<Option<u8>>),
        Advance(i64),
        Reset,
        External(i64),
        /// The agent's claimed lead is outside its calling hours: held
        /// for that long.
        Hold(i64, i64),
        /// The calling hours changed: every hold ends.
        ClearHolds,
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Answered),
            Just(Outcome::NoAnswer),
            Just(Outcome::Busy),
            Just(Outcome::Skipped),
            Just(Outcome::TemporaryError),
            Just(Outcome::Restricted),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..AGENTS).prop_map(Op::Claim),
            4 => (0..AGENTS, outcome()).prop_map(|(a, o)| Op::Report(a, o)),
            1 => (0..AGENTS).prop_map(Op::Release),
            2 => proptest::collection::vec(proptest::option::weighted(0.8, any::<u8>()), LEADS as usize)
                .prop_map(Op::Refresh),
            2 => (0..10 * MIN).prop_map(Op::Advance),
            2 => (0..90 * MIN).prop_map(Op::Advance),
            1 => Just(Op::Reset),
            1 => (0..LEADS).prop_map(Op::External),
            2 => (0..AGENTS, 1..100 * MIN).prop_map(|(a, t)| Op::Hold(a, t)),
            1 => Just(Op::ClearHolds),
        ]
    }

    /// What the rules promise, tracked independently of the engine.
    #[derive(Default)]
    struct Model {
        view: Vec<i64>,
        seen: HashSet<i64>,
        /// Calls that block: lead → time of the latest one that counts.
        last_call: HashMap<i64, i64>,
        /// Blocks from other sessions, kept across resets.
        external: HashMap<i64, i64>,
        answered: HashSet<i64>,
        /// Live claims: lead → (agent, view epoch of the lead at claim).
        live: HashMap<i64, (i64, u32)>,
        held: HashMap<i64, (Claim, u32)>,
        epoch: HashMap<i64, u32>,
        /// Calling-hours holds: lead → opening.
        hold: HashMap<i64, i64>,
    }

    fn ordered(keys: &[Option<u8>]) -> Vec<i64> {
        let mut v: Vec<(u8, i64)> = keys
            .iter()
            .zip(0..)
            .filter_map(|(k, lead)| k.map(|k| (k, lead)))
            .collect();
        v.sort();
        v.into_iter().map(|(_, lead)| lead).collect()
    }

    /// Leads called by other sessions before the session started.
    fn history(lead: LeadId) -> Option<i64> {
        (lead.0 % 3 == 0).then_some(T0 - (lead.0 + 1) * 7 * MIN)
    }

    fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let block = HOUR;
        let mut q = SessionQueue::new(DEFAULT_BLOCK);
        let mut m = Model::default();
        let mut now = T0;
        let initial: Vec<i64> = (0..LEADS).collect();
        let mut ops = ops;
        ops.insert(
            0,
            Op::Refresh(initial.iter().map(|&l| Some(l as u8)).collect()),
        );

        for op in ops {
            match op {
                Op::Claim(agent) => {
                    let got = q.claim_next(AgentId(agent), now);
                    if m.held.contains_key(&agent) {
                        prop_assert!(got.is_err());
                        continue;
                    }
                    let Some(c) = got.unwrap() else { continue };
                    let lead = c.lead.0;
                    prop_assert!(!m.live.contains_key(&lead), "lead {lead} claimed twice");
                    prop_assert!(m.view.contains(&lead), "lead {lead} not in view");
                    prop_assert!(!m.answered.contains(&lead), "answered lead {lead} offered");
                    if let Some(&t) = m.last_call.get(&lead) {
                        prop_assert!(
                            now >= t + block,
                            "lead {lead} called {} ms after {t}",
                            now - t
                        );
                    }
                    if let Some(&t) = m.external.get(&lead) {
                        prop_assert!(
                            now >= t + block,
                            "lead {lead} within another session's block"
                        );
                    }
                    if let Some(&t) = m.hold.get(&lead) {
                        prop_assert!(now >= t, "lead {lead} claimed while held until {t}");
                    }
                    let epoch = m.epoch.get(&lead).copied().unwrap_or(0);
                    m.live.insert(lead, (agent, epoch));
                    m.held.insert(agent, (c, epoch));
                }
                Op::Report(agent, outcome) => {
                    let Some((c, epoch)) = m.held.remove(&agent) else {
                        prop_assert!(q
                            .report(AgentId(agent), LeadId(0), 0, outcome, now)
                            .is_err());
                        continue;
                    };
                    let lead = c.lead.0;
                    m.live.remove(&lead);
                    let r = q.report(AgentId(agent), c.lead, c.generation, outcome, now);
                    let current = m.epoch.get(&lead).copied().unwrap_or(0) == epoch;
                    let in_view = m.view.contains(&lead);
                    let expected = if !in_view {
                        Reported::LeftView
                    } else if !current {
                        Reported::Stale
                    } else {
                        Reported::Applied
                    };
                    prop_assert_eq!(r, Ok(expected));
                    if expected == Reported::Applied {
                        match outcome {
                            Outcome::Answered => {
                                m.answered.insert(lead);
                            }
                            Outcome::TemporaryError => {}
                            _ => {
                                m.last_call.insert(lead, now);
                            }
                        }
                    }
                }
                Op::Release(agent) => {
                    let released = q.release(AgentId(agent));
                    let held = m.held.remove(&agent);
                    prop_assert_eq!(released, held.map(|(c, _)| c.lead));
                    if let Some((c, _)) = held {
                        m.live.remove(&c.lead.0);
                    }
                }
                Op::Refresh(keys) => {
                    let view = ordered(&keys);
                    for &lead in &view {
                        if !m.view.contains(&lead) {
                            if m.seen.contains(&lead) {
                                // R7: new again, nothing blocks it.
                                *m.epoch.entry(lead).or_default() += 1;
                                m.last_call.remove(&lead);
                                m.external.remove(&lead);
                                m.answered.remove(&lead);
                            } else if let Some(t) = history(LeadId(lead)) {
                                m.external.insert(lead, t);
                            }
                            m.seen.insert(lead);
                        }
                    }
                    m.view = view.clone();
                    q.refresh(&ids(&view), history, now).unwrap();
                }
                Op::Advance(ms) => now += ms,
                Op::Reset => {
                    q.reset(now);
                    m.answered.clear();
                    m.last_call.clear();
                }
                Op::External(lead) => {
                    q.record_external_call(LeadId(lead), now);
                    if m.seen.contains(&lead) {
                        m.external.insert(lead, now);
                    }
                }
                Op::Hold(agent, ms) => {
                    let Some((c, epoch)) = m.held.remove(&agent) else {
                        let any = Claim {
                            lead: LeadId(0),
                            generation: 0,
                            tier: Tier::Uncalled,
                            view_pos: 0,
                        };
                        prop_assert!(q
                            .hold(AgentId(agent), &any, now + ms, chrono_tz::UTC, false)
                            .is_err());
                        continue;
                    };
                    let lead = c.lead.0;
                    m.live.remove(&lead);
                    prop_assert!(q
                        .hold(AgentId(agent), &c, now + ms, chrono_tz::UTC, false)
                        .is_ok());
                    if m.epoch.get(&lead).copied().unwrap_or(0) == epoch {
                        m.hold.insert(lead, now + ms);
                    }
                }
                Op::ClearHolds => {
                    q.clear_holds(now);
                    m.hold.clear();
                }
            }
            let counts = q.counts();
            prop_assert_eq!(counts.claimed, m.held.len());
            prop_assert_eq!(q.is_done(), m.view.iter().all(|l| m.answered.contains(l)));
        }

        // Eventually: with every claim ended, the blocks over and a refresh,
        // claiming repeatedly yields every lead of the view not answered.
        for agent in 0..AGENTS {
            q.release(AgentId(agent));
        }
        now += 2 * block;
        q.refresh(&ids(&m.view), history, now).unwrap();
        let expected: BTreeSet<i64> = m
            .view
            .iter()
            .copied()
            .filter(|l| !m.answered.contains(l))
            .collect();
        let mut offered: Vec<(Tier, i64)> = Vec::new();
        while let Some(c) = q.claim_next(AgentId(0), now).unwrap() {
            offered.push((c.tier, c.lead.0));
            q.report(AgentId(0), c.lead, c.generation, Outcome::NoAnswer, now)
                .unwrap();
        }
        let leads: BTreeSet<i64> = offered.iter().map(|&(_, l)| l).collect();
        prop_assert_eq!(
            leads.len(),
            offered.len(),
            "a lead offered twice in one pass"
        );
        prop_assert_eq!(leads, expected);
        // R3: the tiers never go down along one pass.
        prop_assert!(
            offered.windows(2).all(|w| w[0].0 <= w[1].0),
            "{:?}",
            offered
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn queue_invariants(ops in proptest::collection::vec(op(), 0..150)) {
            run(ops)?;
        }
    }
}

/// `?explain=1` gives a rule id and a sentence without rule numbers, with
/// positions counted from 1.
#[test]
fn explanations_read_as_sentences() {
    let e = Explanation::Uncalled {
        view_pos: 2,
        reentered: false,
    };
    assert_eq!(e.rule(), "R3");
    assert_eq!(e.sentence(), "Never called; 3rd in the view");
    assert_eq!(e.to_string(), "R3: uncalled, view pos 2");
    let e = Explanation::Uncalled {
        view_pos: 10,
        reentered: true,
    };
    assert_eq!(e.rule(), "R7");
    assert!(
        e.sentence().contains("11th in the view"),
        "{}",
        e.sentence()
    );
    let e = Explanation::WaitingForRetryPass {
        view_pos: 21,
        calls: 2,
    };
    assert_eq!(
        e.sentence(),
        "Called twice without an answer; tried again once every other lead has been called (22nd in the view)"
    );
    let e = Explanation::Blocked {
        until: 1_764_857_100_000, // 2025-12-04T14:05:00Z
        by_other_session: false,
    };
    assert_eq!(e.rule(), "R4");
    assert_eq!(e.sentence(), "Called recently: not before 14:05 UTC");
    for (e, rule) in [
        (Explanation::Answered, "R5"),
        (Explanation::AwaitingRefresh, "R10"),
        (Explanation::NotInView, "R6"),
    ] {
        assert_eq!(e.rule(), rule);
        assert!(!e.sentence().contains('R'), "{}", e.sentence());
    }
}

/// The session driver's part of calling hours, as `session.rs` does it:
/// claim, ask the lead's zones for a verdict at `now`, hold or dial.
fn claim_in_hours(
    q: &mut SessionQueue,
    agent: AgentId,
    zones: &HashMap<i64, chrono_tz::Tz>,
    now: i64,
) -> Option<Claim> {
    use crate::dialer::hours::{CallingHours, Verdict};
    let hours = CallingHours::default();
    loop {
        let c = claim(q, agent, now)?;
        match hours.verdict(&[zones[&c.lead.0]], now) {
            Verdict::Open => return Some(c),
            Verdict::Closed {
                opens_at,
                zone,
                holiday,
            } => q
                .hold(agent, &c, opens_at.expect("opens"), zone, holiday)
                .unwrap(),
        }
    }
}

fn utc(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_millis()
}

#[test]
fn calling_hours_honolulu_and_new_york_in_one_session() {
    use chrono_tz::America::New_York;
    use chrono_tz::Pacific::Honolulu;
    // 1 in Honolulu first in the view, 2 in New York.
    let zones: HashMap<i64, chrono_tz::Tz> = [(1, Honolulu), (2, New_York)].into();
    // 15:00 UTC in January: 10:00 in New York, 05:00 in Honolulu.
    let now = utc("2026-01-15T15:00:00Z");
    let opens = utc("2026-01-15T18:00:00Z"); // 08:00 HST
    let mut q = queue(&[1, 2], now);
    let c = claim_in_hours(&mut q, A, &zones, now).unwrap();
    assert_eq!(c.lead, LeadId(2), "New York is callable, Honolulu held");
    let e = q.explain(LeadId(1), now);
    assert_eq!(e.to_string(), "calling hours: opens 08:00 Pacific/Honolulu");
    assert_eq!(e.rule(), "calling_hours");
    assert!(
        e.sentence().contains("08:00 Pacific/Honolulu"),
        "{}",
        e.sentence()
    );
    let held: Vec<_> = q.upcoming(now).collect();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].state, ItemState::Held { until: opens });
    assert_eq!(q.counts().held, 1);
    q.report(A, c.lead, c.generation, Outcome::Answered, now)
        .unwrap();

    // The engine wakes at the opening, not before (no busy loop).
    assert_eq!(q.next_wakeup(now), Some(opens));
    // One second before: still held; at the instant: callable.
    assert_eq!(claim_in_hours(&mut q, A, &zones, opens - 1000), None);
    assert_eq!(claim_in_hours(&mut q, A, &zones, opens - 1), None);
    let c = claim_in_hours(&mut q, A, &zones, opens).unwrap();
    assert_eq!((c.lead, c.tier), (LeadId(1), Tier::Uncalled));
    assert_eq!(q.counts().held, 0);
}

#[test]
fn calling_hours_across_a_dst_change() {
    use chrono_tz::America::New_York;
    let zones: HashMap<i64, chrono_tz::Tz> = [(7, New_York)].into();
    // Saturday 21:30 EST; New York springs forward that night, so Sunday's
    // 08:00 is 12:00 UTC (it was 13:00 UTC on Saturday).
    let night = utc("2026-03-08T02:30:00Z");
    let mut q = queue(&[7], night);
    assert_eq!(claim_in_hours(&mut q, A, &zones, night), None);
    let opens = utc("2026-03-08T12:00:00Z");
    assert_eq!(q.next_wakeup(night), Some(opens));
    assert_eq!(
        q.explain(LeadId(7), night).to_string(),
        "calling hours: opens 08:00 America/New_York"
    );
    assert_eq!(claim_in_hours(&mut q, A, &zones, opens - 1000), None);
    assert_eq!(
        claim_in_hours(&mut q, A, &zones, opens).unwrap().lead,
        LeadId(7)
    );
}

#[test]
fn a_held_lead_keeps_its_place_and_its_block_rules() {
    use chrono_tz::America::New_York;
    use chrono_tz::Pacific::Honolulu;
    let zones: HashMap<i64, chrono_tz::Tz> = [(1, Honolulu), (2, New_York), (3, New_York)].into();
    let now = utc("2026-01-15T15:00:00Z");
    let opens = utc("2026-01-15T18:00:00Z");
    let mut q = queue(&[1, 2, 3], now);
    // 2 and 3 are called (and answer) while 1 is held.
    for expected in [2, 3] {
        let c = claim_in_hours(&mut q, A, &zones, now).unwrap();
        assert_eq!(c.lead.0, expected);
        q.report(A, c.lead, c.generation, Outcome::Answered, now)
            .unwrap();
    }
    // Another session calls 1 meanwhile (R4): its block outlasts the hold.
    q.record_external_call(LeadId(1), opens - MIN);
    assert!(matches!(
        q.explain(LeadId(1), now),
        Explanation::Blocked { .. }
    ));
    assert_eq!(claim_in_hours(&mut q, A, &zones, opens), None);
    let c = claim_in_hours(&mut q, A, &zones, opens - MIN + HOUR).unwrap();
    assert_eq!((c.lead, c.tier), (LeadId(1), Tier::Uncalled), "R3: first");
    // A change of hours ends the holds at once.
    q.release(A);
    let mut q = queue(&[1], now);
    assert_eq!(claim_in_hours(&mut q, A, &zones, now), None);
    q.clear_holds(now);
    assert_eq!(claim(&mut q, A, now).unwrap().lead, LeadId(1));
}

/// R6 for one changed lead: `leave` takes it out of whichever set holds it
/// without a refresh, and a later refresh that lists it again makes it a
/// new lead (R7).
#[test]
fn r6_a_lead_that_leaves_between_refreshes_leaves_the_queue() {
    let mut q = queue(&[1, 2, 3, 4], T0);
    assert_eq!(call(&mut q, A, Outcome::NoAnswer, T0), Some(1));
    // 1 is blocked, 3 is ready: both go.
    assert!(q.leave(LeadId(1)));
    assert!(q.leave(LeadId(3)));
    assert!(!q.leave(LeadId(3)), "already gone");
    assert!(!q.leave(LeadId(9)), "never in the view");
    assert!(!q.in_view(LeadId(1)) && q.in_view(LeadId(2)));
    assert_eq!(q.counts().in_view, 2);
    assert_eq!(&q.view()[..], &ids(&[2, 4])[..]);
    assert_eq!(pass(&mut q, Outcome::NoAnswer, T0), vec![2, 4]);
    // 1's block ends: it does not come back, it left.
    assert_eq!(pass(&mut q, Outcome::NoAnswer, T0 + 2 * HOUR), vec![2, 4]);
    // Back in the view: new, uncalled, so before the retries (R3, R7).
    q.refresh(&ids(&[1, 2, 3, 4]), never_called, T0 + 4 * HOUR)
        .unwrap();
    assert_eq!(q.counts().in_view, 4);
    assert_eq!(
        pass(&mut q, Outcome::NoAnswer, T0 + 4 * HOUR),
        vec![1, 3, 2, 4]
    );
}

/// A claimed lead that leaves finishes its call (R13) and is not queued
/// again; the view is done once the rest answered (R15).
#[test]
fn r6_a_claimed_lead_that_leaves_is_not_queued_again() {
    let mut q = queue(&[1, 2], T0);
    let c = claim(&mut q, A, T0).unwrap();
    assert_eq!(c.lead, LeadId(1));
    assert!(q.leave(LeadId(1)));
    assert_eq!(
        q.report(A, c.lead, c.generation, Outcome::NoAnswer, T0)
            .unwrap(),
        Reported::LeftView
    );
    assert_eq!(pass(&mut q, Outcome::Answered, T0), vec![2]);
    assert!(q.is_done());
    assert_eq!(q.counts().answered, 1);
}

/// An answered lead that leaves no longer counts toward R15.
#[test]
fn r15_an_answered_lead_that_leaves_is_not_counted() {
    let mut q = queue(&[1, 2], T0);
    assert_eq!(call(&mut q, A, Outcome::Answered, T0), Some(1));
    assert!(q.leave(LeadId(1)));
    assert_eq!(q.counts().answered, 0);
    assert!(!q.is_done());
    assert_eq!(pass(&mut q, Outcome::Answered, T0), vec![2]);
    assert!(q.is_done());
}
