-- A lead's "do not call" status (SPEC §4 do-not-call): honoured like the
-- do-not-call list (never dialed, outcome `restricted`), set through the
-- leads API. 0/1 like the other flags.
ALTER TABLE leads ADD COLUMN do_not_call BIGINT NOT NULL DEFAULT 0;
