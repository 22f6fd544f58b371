-- Notes on a lead (SPEC §1 step 5, help page "call note box"): what the
-- agent typed during and after a call is kept with the lead, so it shows
-- the next time the lead comes up. A note written in a call's notes box is
-- tied to that call (one note per call, replaced as the agent types).
-- Notes change no Smart View: no trigger wakes the sessions.
CREATE TABLE lead_notes (
    id          BIGSERIAL PRIMARY KEY,
    lead_id     BIGINT  NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    call_id     BIGINT  UNIQUE REFERENCES calls (id) ON DELETE SET NULL,
    agent       TEXT,
    body        TEXT    NOT NULL,
    created_ms  BIGINT  NOT NULL,
    updated_ms  BIGINT  NOT NULL
);
CREATE INDEX lead_notes_lead ON lead_notes (lead_id, created_ms);
