-- The leg journal gets one row per INVITE in flight, not one per call: an
-- agent leg forked to several phones sends one INVITE per phone under one
-- Call-ID, and after a crash each must be CANCELled on its own branch
-- (RFC 3261 §9.1). The key becomes (call_id, branch): the ringing
-- INVITE's Via branch, or '' for a confirmed dialog (ended by one BYE).
-- SQLite cannot change a primary key in place: the table is rebuilt, its
-- rows kept (a crash before the upgrade is still swept after it).
CREATE TABLE call_legs_new (
    call_id        TEXT   NOT NULL,
    branch         TEXT   NOT NULL DEFAULT '',
    kind           TEXT   NOT NULL,
    record_id      BIGINT,
    agent          TEXT   NOT NULL,
    peer           TEXT   NOT NULL,
    answered       BIGINT NOT NULL,
    invite         TEXT,
    local_tag      TEXT,
    remote_tag     TEXT,
    local_uri      TEXT,
    remote_uri     TEXT,
    remote_target  TEXT,
    route_set      TEXT,
    local_cseq     BIGINT,
    answered_ms    BIGINT,
    updated_ms     BIGINT NOT NULL,
    PRIMARY KEY (call_id, branch)
);
INSERT INTO call_legs_new (call_id, branch, kind, record_id, agent, peer, answered, invite,
    local_tag, remote_tag, local_uri, remote_uri, remote_target, route_set, local_cseq,
    answered_ms, updated_ms)
SELECT call_id, '', kind, record_id, agent, peer, answered, invite, local_tag, remote_tag,
    local_uri, remote_uri, remote_target, route_set, local_cseq, answered_ms, updated_ms
FROM call_legs;
DROP TABLE call_legs;
ALTER TABLE call_legs_new RENAME TO call_legs;
