-- A dialed call's record is stored by one INSERT (SPEC §6 call setup): the
-- lead's last call time (`called`) and the R13 claim's link to its call
-- (the crash sweep releases a claim by its call) follow from the row in
-- this trigger, in the same statement, instead of two more statements in
-- a transaction that holds SQLite's one write lock for three round trips.
-- A migration that rebuilds `calls` must create this trigger again.
ALTER TABLE calls ADD COLUMN claim_id INTEGER;

CREATE TRIGGER calls_inserted AFTER INSERT ON calls
BEGIN
    UPDATE leads SET last_call_ms = NEW.started_ms
        WHERE id = NEW.lead_id
          AND (last_call_ms IS NULL OR last_call_ms < NEW.started_ms);
    UPDATE lead_claims SET call_id = NEW.id WHERE id = NEW.claim_id;
END;
