-- Answering machines, voicemail drop, recording (SPEC §4): outcomes
-- `voicemail` and `voicemail_dropped`, the detector's verdict and time to
-- it on the call record, the recording's file, the sessions' `amd`,
-- `voicemail_drop_id` and `record` settings, and the uploaded messages.
ALTER TABLE calls DROP CONSTRAINT IF EXISTS calls_outcome_check;
ALTER TABLE calls ADD CONSTRAINT calls_outcome_check CHECK (outcome IS NULL OR outcome IN
    ('answered', 'no_answer', 'busy', 'skipped', 'temporary_error', 'restricted', 'inbound',
     'voicemail', 'voicemail_dropped'));
ALTER TABLE calls ADD COLUMN amd TEXT CHECK (amd IS NULL OR amd IN ('human', 'machine', 'not_sure'));
ALTER TABLE calls ADD COLUMN amd_ms BIGINT;
ALTER TABLE calls ADD COLUMN recording TEXT;
ALTER TABLE dialer_sessions ADD COLUMN amd TEXT NOT NULL DEFAULT 'off';
ALTER TABLE dialer_sessions ADD COLUMN voicemail_drop_id BIGINT;
ALTER TABLE dialer_sessions ADD COLUMN record BIGINT NOT NULL DEFAULT 0;
CREATE TABLE voicemail_drops (
    id           BIGSERIAL PRIMARY KEY,
    file         TEXT   NOT NULL,
    duration_ms  BIGINT NOT NULL,
    created_ms   BIGINT NOT NULL
);
