//! Ending the legs a crashed powerdial left up (SPEC §1, §5): at start-up,
//! before anything dials, every leg in the leg journal
//! (`call::leg_journal`) is ended — an answered one with a BYE in its
//! dialog (RFC 3261 §15.1.1: the next CSeq, the saved route set and remote
//! target), a ringing one with a CANCEL of its INVITE (§9.1). Each request
//! is its own non-INVITE client transaction, retransmitted by the
//! transaction layer (Timer E/F, §17.1.2.2). A 487 to the cancelled INVITE
//! is ACKed (§17.1.1.3); a 200 that crosses the CANCEL is ACKed and BYEd
//! (§13.2.2.4, §15). An INVITE forked to several phones has a row per
//! fork (`call::leg_journal::LegKey`): each fork gets its own CANCEL, and
//! each final response is matched to its fork by the Via branch.
//!
//! The calls of those legs get their outcome at once (SPEC §4: every call
//! has one): a lead that was answered stays `answered` and ends now (the
//! carrier kept it up until our BYE); a lead still ringing is `skipped`,
//! as a graceful stop cancels it (R9: blocked for `block`, then retried
//! as unanswered; R4 holds across the restart through the lead's last call
//! time). Their R13 claims are released and the journal is cleared.
//!
//! [`Sweep`] is the sans-IO core; [`recover`] the driver.

#![allow(clippy::disallowed_methods)] // `recover` is a driver: it reads the clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::engine::{RouteChange, RoutedMessage};
use super::leg_journal::{LegKey, LegKind, SavedLeg, SavedLegState};
use super::wire::reply;
use crate::sip::dialog::Dialog;
use crate::sip::syntax::{HeadersExt, Method, Request, Response, SipMessage};
use crate::sip::transaction::{
    branch_from_bits, build_ack_for_non_2xx, build_cancel, ClientKey, Event, TimerConfig,
    TransactionTable,
};
use crate::sip::transport::TransportHandle;
use crate::sip::{Peer, Transmit};
use crate::store::Store;

/// How long the background sweep may run: Timer F (64·T1 = 32 s) of the
/// last request plus a crossing 200's BYE.
const SWEEP_LIMIT: Duration = Duration::from_secs(70);

/// What ending one leg asked of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A BYE in the answered dialog.
    Bye,
    /// A CANCEL of the ringing INVITE.
    Cancel,
}

/// One leg being ended.
#[derive(Debug)]
struct Ended {
    leg: SavedLeg,
    /// The BYE or CANCEL transaction; `None` once it finished.
    request: Option<ClientKey>,
    /// The final status of our request, once it arrived.
    status: Option<u16>,
    /// A cancelled INVITE whose final response (487, or a crossing 2xx)
    /// has not arrived: the sweep stays to ACK it (§9.1, §17.1.1.3).
    invite_open: bool,
}

/// The sans-IO core: sends one BYE or CANCEL per leg and handles what
/// comes back until every request has its final response or timed out.
#[derive(Debug)]
pub struct Sweep {
    table: TransactionTable,
    legs: HashMap<LegKey, Ended>,
    transmits: VecDeque<Transmit>,
    rng: StdRng,
    sent_by: String,
}

impl Sweep {
    /// Starts ending `legs`: one request each, queued for
    /// [`poll_transmit`](Self::poll_transmit). A leg whose request cannot be
    /// built (a corrupt row) is reported and skipped.
    pub fn new(
        now: Instant,
        legs: Vec<SavedLeg>,
        sent_by: &str,
        timers: TimerConfig,
        seed: u64,
    ) -> (Sweep, Vec<(SavedLeg, Ending)>) {
        let mut sweep = Sweep {
            table: TransactionTable::new(timers),
            legs: HashMap::new(),
            transmits: VecDeque::new(),
            rng: StdRng::seed_from_u64(seed),
            sent_by: sent_by.to_string(),
        };
        let mut started = Vec::new();
        for leg in legs {
            let sent = match &leg.state {
                SavedLegState::Answered { dialog } => Dialog::restore(dialog)
                    .map_err(|e| e.to_string())
                    .and_then(|mut d| sweep.send_bye(now, &mut d, leg.peer))
                    .map(|k| (k, Ending::Bye)),
                SavedLegState::Ringing { invite } => build_cancel(invite)
                    .map_err(|e| e.to_string())
                    .and_then(|c| {
                        sweep
                            .table
                            .send_request(now, leg.peer, c)
                            .map_err(|e| e.to_string())
                    })
                    .map(|k| (k, Ending::Cancel)),
            };
            match sent {
                Ok((key, ending)) => {
                    started.push((leg.clone(), ending));
                    sweep.legs.insert(
                        leg.key(),
                        Ended {
                            leg,
                            request: Some(key),
                            status: None,
                            invite_open: ending == Ending::Cancel,
                        },
                    );
                }
                Err(error) => {
                    tracing::warn!(call_id = %leg.call_id, %error, "a leg lost in a crash could not be ended");
                }
            }
        }
        sweep.drain();
        (sweep, started)
    }

    fn via(&mut self, peer: Peer) -> String {
        format!(
            "SIP/2.0/{} {};branch={};rport",
            peer.transport.via_token(),
            self.sent_by,
            branch_from_bits(self.rng.gen())
        )
    }

    fn send_bye(
        &mut self,
        now: Instant,
        dialog: &mut Dialog,
        peer: Peer,
    ) -> Result<ClientKey, String> {
        let via = self.via(peer);
        let bye = dialog
            .new_request(Method::Bye, &via, None)
            .map_err(|e| e.to_string())?;
        dialog.terminate();
        self.table
            .send_request(now, peer, bye)
            .map_err(|e| e.to_string())
    }

    /// A message with one of the legs' Call-IDs.
    pub fn handle_message(&mut self, now: Instant, peer: Peer, message: SipMessage) {
        if let Err(error) = self.table.handle_message(now, peer, message) {
            tracing::debug!(%error, "message refused during the crash sweep");
        }
        self.pump(now);
    }

    /// Fires the transactions' timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.table.handle_timeout(now);
        self.pump(now);
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.drain();
        self.transmits.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.table.poll_timeout()
    }

    /// Whether every BYE and CANCEL has its final response or timed out,
    /// and every cancelled INVITE its final response (the driver also
    /// stops at its time limit: a peer that never sends the 487).
    pub fn is_done(&self) -> bool {
        self.legs
            .values()
            .all(|l| l.request.is_none() && !l.invite_open)
    }

    /// The Call-IDs being ended (once each: the forks of an INVITE share
    /// theirs).
    pub fn call_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.legs.keys().map(|k| k.call_id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The final status each leg's BYE or CANCEL got (`None`: no answer yet,
    /// or it timed out).
    pub fn statuses(&self) -> Vec<(LegKey, Option<u16>)> {
        self.legs
            .iter()
            .map(|(k, l)| (k.clone(), l.status))
            .collect()
    }

    fn drain(&mut self) {
        while let Some(t) = self.table.poll_transmit() {
            self.transmits.push_back(t);
        }
    }

    fn leg_of_key(&mut self, key: &ClientKey) -> Option<&mut Ended> {
        self.legs
            .values_mut()
            .find(|l| l.request.as_ref() == Some(key))
    }

    fn pump(&mut self, now: Instant) {
        while let Some(event) = self.table.poll_event() {
            self.drain();
            match event {
                Event::Final { key, response } => {
                    if let Some(l) = self.leg_of_key(&key) {
                        l.status = Some(response.status_code.code());
                        l.request = None;
                    }
                }
                Event::ClientTimeout { key } | Event::ClientTransportError { key } => {
                    if let Some(l) = self.leg_of_key(&key) {
                        tracing::info!(call_id = %l.leg.call_id, "no answer to the BYE/CANCEL of a leg lost in a crash");
                        l.request = None;
                    }
                }
                Event::StrayResponse { response, peer } => self.stray(now, &response, peer),
                Event::NewRequest { key, request, .. } => {
                    // The peer ends the call itself (BYE) or asks about it:
                    // the dialog is over for us either way (§15.1.2, §12.2.2).
                    let code = if request.method == Method::Bye {
                        200
                    } else {
                        481
                    };
                    let reason = if code == 200 {
                        "OK"
                    } else {
                        "Call/Transaction Does Not Exist"
                    };
                    let tag = format!("{:016x}", self.rng.gen::<u64>());
                    if let Ok(r) = reply(&request, code, reason, &tag, &[], None) {
                        let _ = self.table.respond(now, &key, r);
                    }
                }
                _ => {}
            }
        }
        self.drain();
    }

    /// A response outside our transactions: the cancelled INVITE's final
    /// response, matched to its fork by the top Via branch (§17.1.3). A
    /// 487 (or any failure) is ACKed (§17.1.1.3); a 200 that crossed our
    /// CANCEL is ACKed and BYEd (§9.1, §13.2.2.4).
    fn stray(&mut self, now: Instant, response: &Response, peer: Peer) {
        let Ok(call_id) = response
            .call_id_header()
            .map(|c| c.value().trim().to_string())
        else {
            return;
        };
        let Ok(key) = ClientKey::from_response(response) else {
            return;
        };
        if key.method != Method::Invite {
            return;
        }
        let leg_key = LegKey {
            call_id: call_id.clone(),
            branch: key.branch,
        };
        let Some(invite) = self.legs.get(&leg_key).and_then(|l| match &l.leg.state {
            SavedLegState::Ringing { invite } => Some(invite.clone()),
            SavedLegState::Answered { .. } => None,
        }) else {
            return;
        };
        let code = response.status_code.code();
        if code >= 200 {
            if let Some(l) = self.legs.get_mut(&leg_key) {
                l.invite_open = false;
            }
        }
        if code >= 300 {
            if let Ok(ack) = build_ack_for_non_2xx(&invite, response) {
                self.transmits.push_back(Transmit {
                    peer,
                    message: SipMessage::Request(ack),
                });
            }
            return;
        }
        if code < 200 {
            return;
        }
        let result = Dialog::from_uac_response(&invite, response)
            .map_err(|e| e.to_string())
            .and_then(|mut d| {
                let via = self.via(peer);
                let ack: Request = d
                    .new_request(Method::Ack, &via, None)
                    .map_err(|e| e.to_string())?;
                self.transmits.push_back(Transmit {
                    peer,
                    message: SipMessage::Request(ack),
                });
                self.send_bye(now, &mut d, peer)
            });
        match result {
            Ok(key) => {
                tracing::info!(%call_id, "a lead answered after the crash's CANCEL: ACK and BYE");
                if let Some(l) = self.legs.get_mut(&leg_key) {
                    l.request = Some(key);
                    l.status = None;
                }
            }
            Err(error) => {
                tracing::warn!(%call_id, %error, "a 200 crossing the crash's CANCEL could not be ended")
            }
        }
    }
}

/// A call record given its outcome by the crash sweep: the sessions take
/// it into their lead histories (R3–R5) as if the call had ended normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredCall {
    /// The call record.
    pub record_id: i64,
    /// Its lead, if any.
    pub lead_id: Option<i64>,
    /// Its dialer session, if any.
    pub session_id: Option<i64>,
    /// `answered` or `skipped`.
    pub outcome: super::Outcome,
}

/// What [`recover`] did, for the log and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoverySummary {
    /// BYEs sent to trunks.
    pub lead_byes: usize,
    /// CANCELs sent to trunks.
    pub lead_cancels: usize,
    /// BYEs sent to agents' phones.
    pub agent_byes: usize,
    /// CANCELs sent to agents' phones (one per ringing fork).
    pub agent_cancels: usize,
    /// Journal rows that could not be used (deleted).
    pub unusable: usize,
    /// Call records given an outcome.
    pub settled: Vec<RecoveredCall>,
}

/// What [`recover`] needs of the running server.
pub struct RecoveryIo {
    /// The database.
    pub store: Store,
    /// The SIP sockets.
    pub transport: TransportHandle,
    /// The SIP task's Call-ID routes.
    pub routes: mpsc::UnboundedSender<RouteChange>,
    /// Our Via sent-by.
    pub sent_by: String,
    /// The transaction timers.
    pub timers: TimerConfig,
    /// Stops the background sweep.
    pub shutdown: CancellationToken,
}

fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Ends every leg in the journal and settles their calls (see the module
/// doc). Returns once the first BYE/CANCEL of every leg left and the
/// outcomes are stored; retransmissions and answers are handled by a
/// background task. Errors only when the database fails.
pub async fn recover(io: RecoveryIo) -> Result<RecoverySummary, crate::store::StoreError> {
    let rows = io.store.load_legs().await?;
    if rows.is_empty() {
        return Ok(RecoverySummary::default());
    }
    let mut summary = RecoverySummary::default();
    let mut legs = Vec::new();
    let mut all_ids: Vec<String> = Vec::new();
    for row in &rows {
        all_ids.push(row.call_id.clone());
        match SavedLeg::from_row(row) {
            Ok(l) => legs.push(l),
            Err(e) => {
                summary.unusable += 1;
                tracing::warn!(error = %e, "unusable leg journal row: deleted");
            }
        }
    }
    all_ids.sort();
    all_ids.dedup();
    let now = Instant::now();
    let (mut sweep, started) = Sweep::new(now, legs, &io.sent_by, io.timers, rand::random());
    let (tx, mut rx) = mpsc::unbounded_channel::<RoutedMessage>();
    for id in sweep.call_ids() {
        let _ = io.routes.send(RouteChange::Add(id, tx.clone()));
    }
    drop(tx);
    send_all(&mut sweep, &io.transport).await;
    let now_ms = epoch_ms(SystemTime::now());
    let mut calls: Vec<(i64, &str, Option<i64>)> = Vec::new();
    for (leg, ending) in &started {
        match (leg.kind, ending) {
            (LegKind::Lead, Ending::Bye) => summary.lead_byes += 1,
            (LegKind::Lead, Ending::Cancel) => summary.lead_cancels += 1,
            (LegKind::Agent, Ending::Bye) => summary.agent_byes += 1,
            (LegKind::Agent, Ending::Cancel) => summary.agent_cancels += 1,
        }
        if let (LegKind::Lead, Some(record)) = (leg.kind, leg.record_id) {
            let outcome = match ending {
                Ending::Bye => "answered",
                Ending::Cancel => "skipped",
            };
            let answered_ms = match ending {
                Ending::Bye => Some(leg.answered_ms.unwrap_or(now_ms)),
                Ending::Cancel => None,
            };
            calls.push((record, outcome, answered_ms));
        }
    }
    summary.settled = io
        .store
        .settle_lost_legs(&calls, &all_ids, now_ms)
        .await?
        .into_iter()
        .map(|(record_id, lead_id, session_id, outcome)| RecoveredCall {
            record_id,
            lead_id,
            session_id,
            outcome: if outcome == "answered" {
                super::Outcome::Answered
            } else {
                super::Outcome::Skipped
            },
        })
        .collect();
    tracing::info!(
        lead_byes = summary.lead_byes,
        lead_cancels = summary.lead_cancels,
        agent_byes = summary.agent_byes,
        agent_cancels = summary.agent_cancels,
        unusable = summary.unusable,
        calls_settled = summary.settled.len(),
        "legs left up by a crash: BYE/CANCEL sent, outcomes recorded"
    );
    let transport = io.transport.clone();
    let routes = io.routes.clone();
    let shutdown = io.shutdown.clone();
    tokio::spawn(async move {
        let limit = Instant::now() + SWEEP_LIMIT;
        while !sweep.is_done() && Instant::now() < limit {
            let deadline = sweep.poll_timeout().map_or(limit, |d| d.min(limit));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(deadline.into()) => sweep.handle_timeout(Instant::now()),
                msg = rx.recv() => match msg {
                    Some(m) => sweep.handle_message(Instant::now(), m.peer, *m.message),
                    None => break,
                },
            }
            send_all(&mut sweep, &transport).await;
        }
        let answered = sweep
            .statuses()
            .iter()
            .filter(|(_, s)| s.is_some_and(|c| (200..300).contains(&c)))
            .count();
        tracing::info!(
            legs = sweep.call_ids().len(),
            answered,
            "crash sweep finished"
        );
        for id in sweep.call_ids() {
            let _ = routes.send(RouteChange::Remove(id));
        }
    });
    Ok(summary)
}

async fn send_all(sweep: &mut Sweep, transport: &TransportHandle) {
    while let Some(t) = sweep.poll_transmit() {
        if let SipMessage::Request(r) = &t.message {
            tracing::debug!(method = %r.method, peer = %t.peer, "SIP out (crash sweep)");
        }
        let bytes = Bytes::from(crate::sip::message::to_wire(&t.message));
        if let Err(e) = transport.send(t.peer, bytes).await {
            tracing::info!(error = %e, peer = %t.peer, "crash sweep: send failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::dialog::{DialogId, SavedDialog};
    use crate::sip::transaction::test_epoch;
    use crate::sip::TransportKind;

    fn carrier() -> Peer {
        Peer {
            transport: TransportKind::Udp,
            addr: "192.0.2.99:5080".parse().expect("addr"),
        }
    }

    const INVITE: &str = "INVITE sip:+442079460180@192.0.2.99:5080 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKring1;rport\r\nMax-Forwards: 70\r\n\
        From: <sip:+15550000000@dialer.example>;tag=f1\r\nTo: <sip:+442079460180@192.0.2.99:5080>\r\n\
        Call-ID: ring-1\r\nCSeq: 1 INVITE\r\nContact: <sip:powerdial@192.0.2.10:5060>\r\n\
        Content-Length: 0\r\n\r\n";

    fn ringing() -> SavedLeg {
        SavedLeg {
            call_id: "ring-1".into(),
            branch: "z9hG4bKring1".into(),
            kind: LegKind::Lead,
            record_id: Some(1),
            agent: "alice".into(),
            peer: carrier(),
            state: SavedLegState::Ringing {
                invite: Request::try_from(INVITE).expect("invite"),
            },
            answered_ms: None,
        }
    }

    fn answered() -> SavedLeg {
        SavedLeg {
            call_id: "talk-1".into(),
            branch: String::new(),
            kind: LegKind::Lead,
            record_id: Some(2),
            agent: "bob".into(),
            peer: carrier(),
            state: SavedLegState::Answered {
                dialog: SavedDialog {
                    id: DialogId {
                        call_id: "talk-1".into(),
                        local_tag: "l1".into(),
                        remote_tag: "r1".into(),
                    },
                    local_uri: "<sip:+15550000000@dialer.example>".into(),
                    remote_uri: "<sip:+442079460200@192.0.2.99:5080>".into(),
                    remote_target: "sip:gw@192.0.2.99:5080".into(),
                    route_set: vec!["<sip:edge.example;lr>".into()],
                    local_seq: 3,
                },
            },
            answered_ms: Some(5),
        }
    }

    fn sent(sweep: &mut Sweep) -> Vec<String> {
        std::iter::from_fn(|| sweep.poll_transmit())
            .map(|t| t.message.to_string())
            .collect()
    }

    fn response(text: &str) -> SipMessage {
        SipMessage::Response(Response::try_from(text).expect("response"))
    }

    #[test]
    fn an_answered_leg_gets_a_bye_with_the_next_cseq_over_its_route_set() {
        let t0 = test_epoch();
        let (mut sweep, started) = Sweep::new(
            t0,
            vec![answered()],
            "192.0.2.10:5060",
            TimerConfig::default(),
            1,
        );
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].1, Ending::Bye);
        let out = sent(&mut sweep);
        assert_eq!(out.len(), 1);
        let bye = &out[0];
        assert!(
            bye.starts_with("BYE sip:gw@192.0.2.99:5080 SIP/2.0\r\n"),
            "{bye}"
        );
        assert!(bye.contains("\r\nCSeq: 4 BYE\r\n"), "{bye}");
        assert!(
            bye.contains("\r\nRoute: <sip:edge.example;lr>\r\n"),
            "{bye}"
        );
        assert!(bye.contains("tag=l1") && bye.contains("tag=r1"), "{bye}");
        // Retransmitted by Timer E until answered (RFC 3261 §17.1.2.2).
        sweep.handle_timeout(t0 + Duration::from_millis(500));
        assert_eq!(sent(&mut sweep).len(), 1);
        assert!(!sweep.is_done());
        let via = bye
            .lines()
            .find(|l| l.starts_with("Via:"))
            .expect("via")
            .to_string();
        let ok = format!(
            "SIP/2.0 200 OK\r\n{via}\r\nFrom: <sip:+15550000000@dialer.example>;tag=l1\r\n\
             To: <sip:+442079460200@192.0.2.99:5080>;tag=r1\r\nCall-ID: talk-1\r\nCSeq: 4 BYE\r\n\
             Content-Length: 0\r\n\r\n"
        );
        sweep.handle_message(t0 + Duration::from_secs(1), carrier(), response(&ok));
        assert!(sweep.is_done());
        assert_eq!(
            sweep.statuses(),
            vec![(
                LegKey {
                    call_id: "talk-1".into(),
                    branch: String::new()
                },
                Some(200)
            )]
        );
    }

    /// An agent leg forked to two phones, both ringing at the crash: one
    /// CANCEL per fork, to that phone, on that fork's branch (§9.1); each
    /// 487 is ACKed to the phone it came from (§17.1.1.3).
    #[test]
    fn every_ringing_fork_of_one_call_gets_its_own_cancel() {
        let t0 = test_epoch();
        let phone = |port: u16| Peer {
            transport: TransportKind::Udp,
            addr: format!("192.0.2.30:{port}").parse().expect("addr"),
        };
        let fork = |branch: &str, port: u16| {
            let text = INVITE
                .replace("z9hG4bKring1", branch)
                .replace("ring-1", "phones-1")
                .replace(
                    "+442079460180@192.0.2.99:5080",
                    &format!("alice@192.0.2.30:{port}"),
                );
            SavedLeg {
                call_id: "phones-1".into(),
                branch: branch.into(),
                kind: LegKind::Agent,
                record_id: None,
                agent: "alice".into(),
                peer: phone(port),
                state: SavedLegState::Ringing {
                    invite: Request::try_from(text.as_str()).expect("invite"),
                },
                answered_ms: None,
            }
        };
        let (mut sweep, started) = Sweep::new(
            t0,
            vec![fork("z9hG4bKforkA", 5070), fork("z9hG4bKforkB", 5072)],
            "192.0.2.10:5060",
            TimerConfig::default(),
            1,
        );
        assert_eq!(started.len(), 2);
        assert!(started.iter().all(|(_, e)| *e == Ending::Cancel));
        assert_eq!(sweep.call_ids(), ["phones-1"]);
        let mut out: Vec<(Peer, String)> = std::iter::from_fn(|| sweep.poll_transmit())
            .map(|t| (t.peer, t.message.to_string()))
            .collect();
        out.sort_by_key(|o| o.0.addr.port());
        assert_eq!(out.len(), 2);
        for ((peer, cancel), (port, branch)) in out
            .iter()
            .zip([(5070, "z9hG4bKforkA"), (5072, "z9hG4bKforkB")])
        {
            assert_eq!(*peer, phone(port));
            assert!(
                cancel.starts_with(&format!("CANCEL sip:alice@192.0.2.30:{port} SIP/2.0\r\n")),
                "{cancel}"
            );
            assert!(cancel.contains(&format!("branch={branch}")), "{cancel}");
        }
        // Phone B's 487 is ACKed to phone B, on its fork's Request-URI.
        let head = "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKforkB;rport\r\n\
            From: <sip:+15550000000@dialer.example>;tag=f1\r\n\
            To: <sip:alice@192.0.2.30:5072>;tag=pb\r\nCall-ID: phones-1\r\n";
        sweep.handle_message(
            t0,
            phone(5072),
            response(&format!(
                "SIP/2.0 487 Request Terminated\r\n{head}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            )),
        );
        let acks: Vec<Transmit> = std::iter::from_fn(|| sweep.poll_transmit()).collect();
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].peer, phone(5072));
        assert!(acks[0]
            .message
            .to_string()
            .starts_with("ACK sip:alice@192.0.2.30:5072"));
    }

    #[test]
    fn a_ringing_leg_gets_a_cancel_its_487_an_ack_and_a_crossing_200_ack_and_bye() {
        let t0 = test_epoch();
        let (mut sweep, started) = Sweep::new(
            t0,
            vec![ringing()],
            "192.0.2.10:5060",
            TimerConfig::default(),
            1,
        );
        assert_eq!(started[0].1, Ending::Cancel);
        let out = sent(&mut sweep);
        assert_eq!(out.len(), 1);
        let cancel = &out[0];
        // RFC 3261 §9.1: the INVITE's Request-URI, branch, tags and CSeq number.
        assert!(cancel.starts_with("CANCEL sip:+442079460180@192.0.2.99:5080 SIP/2.0\r\n"));
        assert!(cancel.contains("branch=z9hG4bKring1"), "{cancel}");
        assert!(cancel.contains("\r\nCSeq: 1 CANCEL\r\n"), "{cancel}");
        let head = "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKring1;rport\r\n\
            From: <sip:+15550000000@dialer.example>;tag=f1\r\n\
            To: <sip:+442079460180@192.0.2.99:5080>;tag=far\r\nCall-ID: ring-1\r\n";
        let t1 = t0 + Duration::from_millis(20);
        sweep.handle_message(
            t1,
            carrier(),
            response(&format!(
                "SIP/2.0 200 OK\r\n{head}CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
            )),
        );
        assert!(!sweep.is_done(), "the INVITE's 487 is still to be ACKed");
        // The 487 of the INVITE is ACKed (§17.1.1.3).
        sweep.handle_message(
            t1,
            carrier(),
            response(&format!(
                "SIP/2.0 487 Request Terminated\r\n{head}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            )),
        );
        let out = sent(&mut sweep);
        assert_eq!(out.len(), 1);
        assert!(
            out[0].starts_with("ACK sip:+442079460180@192.0.2.99:5080"),
            "{}",
            out[0]
        );
        assert!(sweep.is_done());
        assert!(out[0].contains("\r\nCSeq: 1 ACK\r\n"));
        // A 200 that crossed the CANCEL: ACK, then BYE (§9.1, §15).
        sweep.handle_message(
            t1,
            carrier(),
            response(&format!(
                "SIP/2.0 200 OK\r\n{head}CSeq: 1 INVITE\r\nContact: <sip:gw@192.0.2.99:5080>\r\n\
                 Content-Length: 0\r\n\r\n"
            )),
        );
        let out = sent(&mut sweep);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(
            out[0].starts_with("ACK sip:gw@192.0.2.99:5080"),
            "{}",
            out[0]
        );
        assert!(
            out[1].starts_with("BYE sip:gw@192.0.2.99:5080"),
            "{}",
            out[1]
        );
        assert!(out[1].contains("\r\nCSeq: 2 BYE\r\n"));
        assert!(!sweep.is_done(), "the BYE waits for its answer");
    }
}
