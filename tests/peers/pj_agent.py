#!/usr/bin/env python3
"""An auto-answering PJSIP (pjsua2) agent phone for powerdial's end-to-end tests.

Usage: pj_agent.py SERVER_HOST:PORT USER PASSWORD STATUS_FILE SECONDS [ANSWER_DELAY]

Registers USER over UDP, answers every INVITE with 200 at once (or rings
with 180 for ANSWER_DELAY seconds first, as a person picking up), sends
silence RTP (no VAD) and rewrites STATUS_FILE (one JSON object) every
100 ms: {"reg": last REGISTER status, "calls": answered calls,
"state": "idle"|"confirmed"|"disconnected", "messages": bodies of the
MESSAGEs received (what a phone would display), "rx_pkts": RTP packets
received on the current call}. Exits after SECONDS. With a file
agent-play.wav next to STATUS_FILE, the phone's voice is that file, looped
(instead of silence). Keys: when a file STATUS_FILE + ".dtmf" appears, its
digits are pressed on the current call (RFC 4733 telephone-events) and the
file is removed; "dtmf_sent" in the status counts the presses.
"""
import gc
import json
import os
import sys
import time

import pjsua2 as pj

STATUS = {"reg": 0, "calls": 0, "state": "idle", "rx_pkts": 0, "messages": [], "dtmf_sent": 0}
ANSWER_DELAY = 0.0
STATUS_PATH = ""


class Call(pj.Call):
    def __init__(self, acc, call_id, ep):
        pj.Call.__init__(self, acc, call_id)
        self.ep = ep
        self.player = None

    def onCallState(self, prm):
        ci = self.getInfo()
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED:
            STATUS["state"] = "confirmed"
        elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            STATUS["state"] = "disconnected"

    def onCallMediaState(self, prm):
        ci = self.getInfo()
        for i, mi in enumerate(ci.media):
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                am = self.getAudioMedia(i)
                mgr = self.ep.audDevManager()
                play = os.path.join(os.path.dirname(os.path.abspath(STATUS_PATH)), "agent-play.wav")
                if os.path.exists(play):
                    if self.player is None:
                        self.player = pj.AudioMediaPlayer()
                        self.player.createPlayer(play)
                    self.player.startTransmit(am)
                else:
                    mgr.getCaptureDevMedia().startTransmit(am)
                am.startTransmit(mgr.getPlaybackDevMedia())


class Account(pj.Account):
    def __init__(self, ep):
        pj.Account.__init__(self)
        self.ep = ep
        self.call = None
        self.answer_at = None

    def onRegState(self, prm):
        STATUS["reg"] = prm.code

    def onInstantMessage(self, prm):
        # A page-mode MESSAGE (RFC 3428): what the phone would display.
        STATUS["messages"].append(prm.msgBody)

    def onIncomingCall(self, prm):
        call = Call(self, prm.callId, self.ep)
        op = pj.CallOpParam()
        self.call = call
        if ANSWER_DELAY > 0:
            op.statusCode = 180
            call.answer(op)
            STATUS["state"] = "ringing"
            self.answer_at = time.monotonic() + ANSWER_DELAY
            return
        op.statusCode = 200
        call.answer(op)
        STATUS["calls"] += 1

    def answer_due(self, now):
        if self.answer_at is not None and now >= self.answer_at:
            self.answer_at = None
            op = pj.CallOpParam()
            op.statusCode = 200
            try:
                self.call.answer(op)
                STATUS["calls"] += 1
            except Exception:
                pass


def write_status(path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(STATUS, f)
    os.replace(tmp, path)


def main():
    global ANSWER_DELAY
    server, user, password, status, seconds = sys.argv[1:6]
    global STATUS_PATH
    STATUS_PATH = status
    seconds = float(seconds)
    if len(sys.argv) > 6:
        ANSWER_DELAY = float(sys.argv[6])
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
    tcfg.port = 0
    tcfg.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.libStart()
    acfg = pj.AccountConfig()
    host = server.split(":")[0]
    acfg.idUri = "sip:%s@%s" % (user, host)
    acfg.regConfig.registrarUri = "sip:%s;transport=udp" % server
    acfg.regConfig.timeoutSec = 3600
    acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, password))
    acc = Account(ep)
    acc.create(acfg)
    deadline = time.monotonic() + seconds
    last = 0.0
    while time.monotonic() < deadline:
        ep.libHandleEvents(10)
        now = time.monotonic()
        acc.answer_due(now)
        if now - last > 0.1:
            last = now
            if acc.call is not None and STATUS["state"] == "confirmed":
                try:
                    STATUS["rx_pkts"] = acc.call.getStreamStat(0).rtcp.rxStat.pkt
                except Exception:
                    pass
            dtmf = status + ".dtmf"
            if acc.call is not None and STATUS["state"] == "confirmed" and os.path.exists(dtmf):
                try:
                    with open(dtmf) as f:
                        digits = f.read().strip()
                    os.remove(dtmf)
                    acc.call.dialDtmf(digits)
                    STATUS["dtmf_sent"] += 1
                except Exception as e:
                    sys.stderr.write("dtmf: %s\n" % e)
            write_status(status)
    ep.hangupAllCalls()
    for _ in range(20):
        ep.libHandleEvents(10)
    acc.call = None
    del acc
    gc.collect()
    ep.libDestroy()


if __name__ == "__main__":
    main()
