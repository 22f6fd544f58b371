#!/usr/bin/env python3
"""Registers a PJSIP (pjsua2) account against powerdial and reports the result.

Usage: pj_register.py SERVER_HOST:PORT udp|tcp USER PASSWORD RESULT_FILE [--unregister]

Writes one JSON line per registration state change to RESULT_FILE:
{"code": 200, "expiration": 3600, "active": true}. Exits 0 once a final
state is reached (2xx, or a failure PJSIP gives up on), 2 on timeout.
"""
import gc
import json
import sys
import time

import pjsua2 as pj


class Account(pj.Account):
    def __init__(self, out):
        pj.Account.__init__(self)
        self.out = out
        self.codes = []

    def onRegState(self, prm):
        info = self.getInfo()
        rec = {"code": prm.code, "reason": prm.reason, "expiration": prm.expiration,
               "active": info.regIsActive}
        self.codes.append(prm.code)
        self.out.write(json.dumps(rec) + "\n")
        self.out.flush()


def main():
    server, transport, user, password, result_file = sys.argv[1:6]
    unregister = "--unregister" in sys.argv[6:]
    out = open(result_file, "w")
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = 0
    cfg.logConfig.consoleLevel = 0
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    tcfg = pj.TransportConfig()
    tcfg.port = 0
    tcfg.boundAddress = "127.0.0.1"
    kind = pj.PJSIP_TRANSPORT_TCP if transport == "tcp" else pj.PJSIP_TRANSPORT_UDP
    ep.transportCreate(kind, tcfg)
    ep.libStart()

    acfg = pj.AccountConfig()
    host = server.split(":")[0]
    acfg.idUri = "sip:%s@%s" % (user, host)
    acfg.regConfig.registrarUri = "sip:%s;transport=%s" % (server, transport)
    acfg.regConfig.timeoutSec = 3600
    acfg.regConfig.retryIntervalSec = 0
    cred = pj.AuthCredInfo("digest", "*", user, 0, password)
    acfg.sipConfig.authCreds.append(cred)
    acc = Account(out)
    acc.create(acfg)

    rc = 2
    deadline = time.time() + 10
    phase = "register"
    while time.time() < deadline:
        ep.libHandleEvents(10)
        if not acc.codes:
            continue
        last = acc.codes[-1]
        if phase == "register":
            if 200 <= last < 300 and unregister:
                phase = "unregister"
                acc.codes.clear()
                acc.setRegistration(False)
                continue
            rc = 0
            break
        if phase == "unregister":
            rc = 0
            break

    del acc
    gc.collect()
    ep.libDestroy()
    out.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
