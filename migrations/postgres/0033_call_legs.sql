-- The leg journal: what is needed to end every live SIP leg after a crash
-- (RFC 3261 §15.1.1 BYE for an answered leg, §9.1 CANCEL for a ringing
-- INVITE). One row per live leg, keyed by its Call-ID; written by a batch
-- writer when the leg's state changes, read and cleared at start-up.
CREATE TABLE call_legs (
    call_id        TEXT   PRIMARY KEY,
    -- 'lead' (towards a trunk) or 'agent' (towards an agent's phone).
    kind           TEXT   NOT NULL,
    -- The call record of a lead leg.
    record_id      BIGINT,
    agent          TEXT   NOT NULL,
    -- Where the leg's requests go: 'udp:IP:PORT' or 'tcp:IP:PORT'.
    peer           TEXT   NOT NULL,
    -- 1: answered (a confirmed dialog: BYE); 0: still ringing (CANCEL).
    answered       BIGINT NOT NULL,
    -- Ringing: the INVITE as sent (its Via branch, From, To, CSeq, Route
    -- make the CANCEL and the ACK of a 487).
    invite         TEXT,
    -- Answered: the dialog (RFC 3261 §12.2.1.1).
    local_tag      TEXT,
    remote_tag     TEXT,
    local_uri      TEXT,
    remote_uri     TEXT,
    remote_target  TEXT,
    -- The route set in request order, one name-addr per line.
    route_set      TEXT,
    local_cseq     BIGINT,
    -- The call was answered at (epoch ms), for the record after a crash.
    answered_ms    BIGINT,
    updated_ms     BIGINT NOT NULL
);
