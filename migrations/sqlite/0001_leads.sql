-- Leads, their contacts and phones, typed custom fields, opportunities, the
-- call history and Smart Views. Times are epoch milliseconds (UTC) in both
-- backends so comparisons and parameters are the same shape everywhere.

CREATE TABLE leads (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL,
    status        TEXT    NOT NULL DEFAULT '',
    created_ms    BIGINT  NOT NULL,
    updated_ms    BIGINT  NOT NULL,
    -- max(calls.started_ms) for this lead: `called`, `latest_call_created`.
    last_call_ms  BIGINT
);
CREATE INDEX leads_created ON leads (created_ms, id);
CREATE INDEX leads_updated ON leads (updated_ms, id);
CREATE INDEX leads_status ON leads (lower(status));
CREATE INDEX leads_last_call ON leads (last_call_ms);

CREATE TABLE contacts (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    lead_id   BIGINT  NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    position  INTEGER NOT NULL,
    name      TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX contacts_lead ON contacts (lead_id, position);

CREATE TABLE phones (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_id  BIGINT  NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    number      TEXT    NOT NULL -- E.164, e.g. +15551234567
);
CREATE INDEX phones_contact ON phones (contact_id, position);

CREATE TABLE custom_fields (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    name     TEXT NOT NULL UNIQUE COLLATE NOCASE,
    kind     TEXT NOT NULL CHECK (kind IN ('text', 'number', 'date', 'datetime', 'choices')),
    choices  TEXT -- JSON array of allowed values for kind = 'choices'
);

-- One row per (lead, field) that has a value; the column used depends on
-- the field's kind: text/choices -> value_text, number -> value_num,
-- date/datetime -> value_ms (a date is midnight UTC).
CREATE TABLE lead_custom_values (
    lead_id     BIGINT NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    field_id    BIGINT NOT NULL REFERENCES custom_fields (id) ON DELETE CASCADE,
    value_text  TEXT,
    value_num   DOUBLE PRECISION,
    value_ms    BIGINT,
    PRIMARY KEY (lead_id, field_id)
);
CREATE INDEX lcv_text ON lead_custom_values (field_id, lower(value_text));
CREATE INDEX lcv_num ON lead_custom_values (field_id, value_num);
CREATE INDEX lcv_ms ON lead_custom_values (field_id, value_ms);

CREATE TABLE opportunities (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    lead_id      BIGINT NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    status_type  TEXT   NOT NULL CHECK (status_type IN ('Active', 'Won', 'Lost')),
    created_ms   BIGINT NOT NULL,
    value        DOUBLE PRECISION
);
CREATE INDEX opportunities_lead ON opportunities (lead_id);

-- Every call to a lead: dialer calls, manual calls (R17) and calls logged
-- through the API for calls made elsewhere.
CREATE TABLE calls (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id   BIGINT,
    lead_id      BIGINT REFERENCES leads (id) ON DELETE SET NULL,
    agent        TEXT,
    number       TEXT   NOT NULL DEFAULT '',
    started_ms   BIGINT NOT NULL,
    answered_ms  BIGINT,
    ended_ms     BIGINT,
    outcome      TEXT CHECK (outcome IS NULL OR outcome IN
                   ('answered', 'no_answer', 'busy', 'skipped', 'temporary_error', 'restricted')),
    sip_status   INTEGER,
    ring_ms      BIGINT
);
CREATE INDEX calls_lead ON calls (lead_id, started_ms);
CREATE INDEX calls_session ON calls (session_id, id);

CREATE TABLE smart_views (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT   NOT NULL,
    query       TEXT   NOT NULL,
    created_ms  BIGINT NOT NULL
);
