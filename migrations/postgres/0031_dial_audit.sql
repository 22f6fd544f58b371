-- The dial audit (SPEC §4 compliance): every dial held (calling hours),
-- restricted (do-not-call, not dialable) or refused before it reached the
-- wire, with its reason. Written in batches off the signalling path.
CREATE TABLE dial_audit (
    id          BIGSERIAL PRIMARY KEY,
    at_ms       BIGINT NOT NULL,
    action      TEXT   NOT NULL,
    reason      TEXT   NOT NULL,
    session_id  BIGINT,
    lead_id     BIGINT,
    agent       TEXT,
    number      TEXT,
    detail      TEXT   NOT NULL DEFAULT ''
);
CREATE INDEX dial_audit_session ON dial_audit (session_id, id);
CREATE INDEX dial_audit_lead ON dial_audit (lead_id, id);
CREATE INDEX dial_audit_at ON dial_audit (at_ms);
