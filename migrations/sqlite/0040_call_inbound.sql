-- Leads calling back (SPEC §1): an inbound call from the trunk, bridged to
-- an agent, is recorded with outcome `inbound`. SQLite cannot alter a CHECK
-- constraint: the table is rebuilt (https://sqlite.org/lang_altertable.html
-- §7). Migrations run in a transaction with foreign keys on, so dropping
-- the old table sets `lead_notes.call_id` to NULL (ON DELETE SET NULL):
-- those links are kept aside and put back.
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
                    'inbound')),
    sip_status   INTEGER,
    ring_ms      BIGINT,
    notes        TEXT,
    trunk        TEXT
);
INSERT INTO calls_new (id, session_id, lead_id, agent, number, started_ms, answered_ms,
                       ended_ms, outcome, sip_status, ring_ms, notes, trunk)
    SELECT id, session_id, lead_id, agent, number, started_ms, answered_ms,
           ended_ms, outcome, sip_status, ring_ms, notes, trunk FROM calls;
DROP TABLE calls;
ALTER TABLE calls_new RENAME TO calls;
CREATE INDEX calls_lead ON calls (lead_id, started_ms);
CREATE INDEX calls_session ON calls (session_id, id);
UPDATE lead_notes
   SET call_id = (SELECT n.call_id FROM lead_note_calls n WHERE n.id = lead_notes.id)
 WHERE id IN (SELECT id FROM lead_note_calls);
DROP TABLE lead_note_calls;
