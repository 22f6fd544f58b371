-- A dialed call's record is stored by one INSERT (SPEC §6 call setup): the
-- lead's last call time (`called`) and the R13 claim's link to its call
-- (the crash sweep releases a claim by its call) follow from the row in
-- this trigger, in the same statement, instead of two more round trips in
-- the record's transaction.
ALTER TABLE calls ADD COLUMN claim_id BIGINT;

CREATE FUNCTION powerdial_call_inserted() RETURNS trigger AS $$
BEGIN
    IF NEW.lead_id IS NOT NULL THEN
        UPDATE leads SET last_call_ms = NEW.started_ms
            WHERE id = NEW.lead_id
              AND (last_call_ms IS NULL OR last_call_ms < NEW.started_ms);
    END IF;
    IF NEW.claim_id IS NOT NULL THEN
        UPDATE lead_claims SET call_id = NEW.id WHERE id = NEW.claim_id;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER calls_inserted AFTER INSERT ON calls
    FOR EACH ROW EXECUTE FUNCTION powerdial_call_inserted();
