#!/usr/bin/env python3
"""A scripted PJSIP (pjsua2) carrier trunk for powerdial's end-to-end tests.

Usage: pj_carrier.py PORT EVENTS_FILE SECONDS [HOLD|-] [STATUS]

Listens on UDP 127.0.0.1:PORT and answers each INVITE by the last four
digits of the dialed number (the To/Request-URI user):
  000N  180, then 200 with RTP after N seconds (N = 1..9)
  0200  180, then 200 with RTP at once
  0486  486 Busy Here      0503  503      0403  403
  0180  180 Ringing forever (until CANCEL)
  0183  183 with SDP (early media, RTP flows) forever
  07NN  200 at once, then plays play/NN.wav (next to EVENTS_FILE) once as
        the callee's voice (a greeting: a person's "Hello?" or an answering
        machine's message and beep) and records what it receives into
        play/NN-rx.wav; without that file, like 0200
Writes one JSON line per fact to EVENTS_FILE (times are time.monotonic()):
  {"event": "invite", "number": ..., "t": ...}
  {"event": "cancel", "number": ..., "t": ...}
  {"event": "ended", "number": ..., "rx_pkts": ..., "t": ...}
With HOLD, the carrier hangs up (BYE) each answered call HOLD seconds
after answering it (a lead that ends the conversation); without it, answered
calls last until the other side hangs up ("-": no HOLD). With STATUS (e.g.
503), every INVITE is answered with that final status whatever the number
(a carrier that fails every call). Runs for SECONDS, then exits. At most 4 concurrent calls (PJSIP limit).
The "invite" event also carries "from": the user part of the INVITE's From.

Audio (both optional, from the environment): POWERDIAL_CARRIER_PLAY=FILE.wav
is played (looped) to every answered call, as the lead's voice;
POWERDIAL_CARRIER_RECORD=DIR records what each call receives to
DIR/NUMBER.wav (16-bit PCM), closed before its "ended" event.

Calls in the other direction (a lead calling back): the test appends lines
  call TARGET_URI FROM_NUMBER HOLD
to EVENTS_FILE + ".cmd"; the carrier then INVITEs TARGET_URI from
sip:FROM_NUMBER@127.0.0.1:PORT and hangs up HOLD seconds after the answer
(a negative HOLD: cancels -HOLD seconds after the INVITE, answered or not),
writing {"event": "out_state", "from": FROM_NUMBER, "state": "early" |
"confirmed" | "disconnected", "status": LAST_STATUS}.
"""
import gc
import json
import os
import re
import sys
import time

import pjsua2 as pj

OUT = None
FORCED = None


def emit(rec):
    rec["t"] = time.monotonic()
    OUT.write(json.dumps(rec) + "\n")
    OUT.flush()


class Call(pj.Call):
    def __init__(self, acc, call_id, ep):
        pj.Call.__init__(self, acc, call_id)
        self.ep = ep
        self.number = ""
        self.answer_at = None
        self.hangup_at = None
        self.rx = 0
        self.cancel_seen = False
        self.done = False
        self.play = None
        self.player = None
        self.recorder = None

    def onCallTsxState(self, prm):
        try:
            if prm.e.type == pj.PJSIP_EVENT_TSX_STATE:
                tsx = prm.e.body.tsxState.tsx
                if tsx.method == "CANCEL" and not self.cancel_seen:
                    self.cancel_seen = True
                    emit({"event": "cancel", "number": self.number})
        except Exception as e:  # keep the carrier alive on odd events
            sys.stderr.write("tsx: %s\n" % e)

    def onCallMediaState(self, prm):
        try:
            self.media_state()
        except Exception as e:  # visible in the events, not lost on stderr
            emit({"event": "error", "number": self.number, "what": str(e)})

    def media_state(self):
        ci = self.getInfo()
        for i, mi in enumerate(ci.media):
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status in (
                    pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                am = self.getAudioMedia(i)
                mgr = self.ep.audDevManager()
                if self.play is None:
                    mgr.getCaptureDevMedia().startTransmit(am)
                elif self.player is None:
                    self.player = pj.AudioMediaPlayer()
                    self.player.createPlayer(self.play[0], pj.PJMEDIA_FILE_NO_LOOP)
                    self.player.startTransmit(am)
                    self.recorder = pj.AudioMediaRecorder()
                    self.recorder.createRecorder(self.play[1])
                    am.startTransmit(self.recorder)
                    emit({"event": "playing", "number": self.number})
                am.startTransmit(mgr.getPlaybackDevMedia())
                play = os.environ.get("POWERDIAL_CARRIER_PLAY")
                if play and self.player is None:
                    self.player = pj.AudioMediaPlayer()
                    self.player.createPlayer(play)
                    self.player.startTransmit(am)
                rec = os.environ.get("POWERDIAL_CARRIER_RECORD")
                if rec and self.recorder is None:
                    self.recorder = pj.AudioMediaRecorder()
                    self.recorder.createRecorder(
                        os.path.join(rec, "%s.wav" % (self.number or "call")))
                    am.startTransmit(self.recorder)

    def sample(self):
        try:
            st = self.getStreamStat(0)
            self.rx = max(self.rx, st.rtcp.rxStat.pkt)
        except Exception:
            pass

    def onCallState(self, prm):
        ci = self.getInfo()
        if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED and not self.done:
            self.done = True
            # Destroying the recorder writes the WAV header's sizes.
            self.player = None
            self.recorder = None
            gc.collect()
            emit({"event": "ended", "number": self.number, "rx_pkts": self.rx,
                  "status": ci.lastStatusCode})


class OutCall(pj.Call):
    """A call the carrier places (a lead calling back)."""

    def __init__(self, acc, ep, number, hold):
        pj.Call.__init__(self, acc)
        self.ep = ep
        self.number = number
        self.hold = hold
        self.hangup_at = None
        self.done = False
        self.answer_at = None

    def onCallMediaState(self, prm):
        ci = self.getInfo()
        for i, mi in enumerate(ci.media):
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                am = self.getAudioMedia(i)
                mgr = self.ep.audDevManager()
                mgr.getCaptureDevMedia().startTransmit(am)
                am.startTransmit(mgr.getPlaybackDevMedia())

    def onCallState(self, prm):
        ci = self.getInfo()
        state = {pj.PJSIP_INV_STATE_EARLY: "early",
                 pj.PJSIP_INV_STATE_CONFIRMED: "confirmed",
                 pj.PJSIP_INV_STATE_DISCONNECTED: "disconnected"}.get(ci.state)
        if state is None or self.done:
            return
        if state == "confirmed" and self.hold is not None:
            self.hangup_at = time.monotonic() + self.hold
        if state == "disconnected":
            self.done = True
        emit({"event": "out_state", "from": self.number, "state": state,
              "status": ci.lastStatusCode})


class Account(pj.Account):
    def __init__(self, ep):
        pj.Account.__init__(self)
        self.ep = ep
        self.calls = []
        self.ended = []

    def onIncomingCall(self, prm):
        call = Call(self, prm.callId, self.ep)
        ci = call.getInfo()
        m = re.search(r"sip:\+?(\d+)@", ci.localUri)
        call.number = m.group(1) if m else ""
        f = re.search(r"sips?:([^@;>]+)@", ci.remoteUri)
        emit({"event": "invite", "number": call.number, "from": f.group(1) if f else ""})
        tail = call.number[-4:]
        op = pj.CallOpParam()
        if FORCED is not None:
            op.statusCode = FORCED
        elif tail in ("0486", "0503", "0403"):
            op.statusCode = int(tail[1:])
        elif tail == "0183":
            op.statusCode = 183
        else:
            op.statusCode = 180
            if tail.startswith("000") and tail[3:].isdigit():
                call.answer_at = time.monotonic() + int(tail[3:])
            elif tail == "0200":
                call.answer_at = time.monotonic()
            elif tail.startswith("07"):
                base = os.path.join(os.path.dirname(os.path.abspath(OUT.name)), "play")
                wav = os.path.join(base, tail[2:] + ".wav")
                if os.path.exists(wav):
                    call.play = (wav, os.path.join(base, tail[2:] + "-rx.wav"))
                call.answer_at = time.monotonic()
        call.answer(op)
        self.calls.append(call)


def main():
    global OUT
    port, events, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    global FORCED
    hold = float(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] != "-" else None
    FORCED = int(sys.argv[5]) if len(sys.argv) > 5 else None
    OUT = open(events, "w")
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = 0
    cfg.logConfig.consoleLevel = 0
    cfg.medConfig.noVad = True
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    tcfg = pj.TransportConfig()
    tcfg.port = port
    tcfg.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.libStart()
    acfg = pj.AccountConfig()
    acfg.idUri = "sip:carrier@127.0.0.1:%d" % port
    acc = Account(ep)
    acc.create(acfg, True)
    emit({"event": "ready"})
    deadline = time.monotonic() + seconds
    last_sample = 0.0
    cmd_path = events + ".cmd"
    cmd_done = 0
    out_accounts = []
    out_calls = []
    while time.monotonic() < deadline:
        ep.libHandleEvents(5)
        now = time.monotonic()
        if now - last_sample > 0.1:
            try:
                with open(cmd_path) as f:
                    lines = f.read().splitlines()
            except OSError:
                lines = []
            for line in lines[cmd_done:]:
                parts = line.split()
                if len(parts) == 4 and parts[0] == "call":
                    oc = pj.AccountConfig()
                    oc.idUri = "sip:%s@127.0.0.1:%d" % (parts[2], port)
                    oa = pj.Account()
                    oa.create(oc, False)
                    out_accounts.append(oa)
                    hold = float(parts[3])
                    call = OutCall(oa, ep, parts[2], hold if hold >= 0 else None)
                    if hold < 0:
                        call.hangup_at = now - hold
                    try:
                        call.makeCall(parts[1], pj.CallOpParam(True))
                    except Exception as e:
                        sys.stderr.write("call: %s\n" % e)
                        emit({"event": "out_state", "from": parts[2],
                              "state": "failed", "status": 0})
                    out_calls.append(call)
            cmd_done = max(cmd_done, len(lines))
        for c in out_calls:
            if c.hangup_at is not None and now >= c.hangup_at and not c.done:
                c.hangup_at = None
                try:
                    c.hangup(pj.CallOpParam())
                except Exception as e:
                    sys.stderr.write("hangup: %s\n" % e)
        for c in acc.calls:
            if c.answer_at is not None and now >= c.answer_at and not c.done:
                c.answer_at = None
                op = pj.CallOpParam()
                op.statusCode = 200
                try:
                    c.answer(op)
                    emit({"event": "answered", "number": c.number})
                    if hold is not None:
                        c.hangup_at = now + hold
                except Exception as e:
                    sys.stderr.write("answer: %s\n" % e)
            if c.hangup_at is not None and now >= c.hangup_at and not c.done:
                c.hangup_at = None
                try:
                    c.hangup(pj.CallOpParam())
                except Exception as e:
                    sys.stderr.write("hangup: %s\n" % e)
        if now - last_sample > 0.1:
            last_sample = now
            for c in acc.calls:
                if not c.done:
                    c.sample()
        # Ended calls are kept, not freed: pjsua2's Call destructor hangs up
        # its call id, and PJSIP may have reused that id for a new INVITE
        # by then (a freed wrapper answered a new call with 603 Decline).
        acc.ended.extend(c for c in acc.calls if c.done)
        acc.calls = [c for c in acc.calls if not c.done]
    ep.hangupAllCalls()
    for _ in range(20):
        ep.libHandleEvents(10)
    out_calls = []
    out_accounts = []
    acc.calls = []
    acc.ended = []
    del acc
    gc.collect()
    ep.libDestroy()
    OUT.close()


if __name__ == "__main__":
    main()
