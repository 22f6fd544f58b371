-- Answering machines, voicemail drop, recording (SPEC §4): outcomes
-- `voicemail` and `voicemail_dropped`, the detector's verdict and time to
-- it on the call record, the recording's file, the sessions' `amd`,
-- `voicemail_drop_id` and `record` settings, and the uploaded messages.
-- SQLite cannot alter a CHECK constraint: the calls table is rebuilt as in
-- 0040 (https://sqlite.org/lang_altertable.html §7), keeping the
-- lead_notes links that dropping it would clear.
CREATE TEMP TABLE lead_note_calls AS
    SELECT id, call_id FROM lead_notes WHERE call_id IS NOT NULL;
CREATE TABLE calls_new (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id   BIGINT,
    lead_id      BIGINT REFERENCES leads (id) ON DELETE SET NULL,
    agent        TEXT,
    number       TEXT   NOT NULL DEFAULT '',
    started_ms   BIGINT NOT NULL,
    answered_ms  BIGINT,
    ended_ms     BIGINT,
    outcome      TEXT CHECK (outcome IS NULL OR outcome IN
                   ('answered', 'no_answer', 'busy', 'skipped', 'temporary_error', 'restricted',
                    'inbound', 'voicemail', 'voicemail_dropped')),
    sip_status   INTEGER,
    ring_ms      BIGINT,
    notes        TEXT,
    trunk        TEXT,
    caller_id    TEXT,
    amd          TEXT CHECK (amd IS NULL OR amd IN ('human', 'machine', 'not_sure')),
    amd_ms       BIGINT,
    recording    TEXT
);
INSERT INTO calls_new (id, session_id, lead_id, agent, number, started_ms, answered_ms,
                       ended_ms, outcome, sip_status, ring_ms, notes, trunk, caller_id)
    SELECT id, session_id, lead_id, agent, number, started_ms, answered_ms,
           ended_ms, outcome, sip_status, ring_ms, notes, trunk, caller_id FROM calls;
DROP TABLE calls;
ALTER TABLE calls_new RENAME TO calls;
CREATE INDEX calls_lead ON calls (lead_id, started_ms);
CREATE INDEX calls_session ON calls (session_id, id);
UPDATE lead_notes
   SET call_id = (SELECT n.call_id FROM lead_note_calls n WHERE n.id = lead_notes.id)
 WHERE id IN (SELECT id FROM lead_note_calls);
DROP TABLE lead_note_calls;
ALTER TABLE dialer_sessions ADD COLUMN amd TEXT NOT NULL DEFAULT 'off';
ALTER TABLE dialer_sessions ADD COLUMN voicemail_drop_id BIGINT;
ALTER TABLE dialer_sessions ADD COLUMN record BIGINT NOT NULL DEFAULT 0;
CREATE TABLE voicemail_drops (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    file         TEXT   NOT NULL,
    duration_ms  BIGINT NOT NULL,
    created_ms   BIGINT NOT NULL
);
