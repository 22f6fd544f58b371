-- `opportunities op N` (SPEC §3) read from the lead row instead of probing
-- the opportunities of every lead: `lead_status:"Potential" opportunities:0`
-- and the Lead Source example had an anti-join per lead over 1,000,000
-- leads (SPEC §6: each help-page example under 500 ms; BENCHMARKS.md).
-- The count is kept by triggers, so every writer (the API, the import,
-- other clients of the database) keeps it right; the triggers only touch
-- the one lead row the opportunity belongs to.
ALTER TABLE leads ADD COLUMN opportunity_count INTEGER NOT NULL DEFAULT 0;
UPDATE leads SET opportunity_count =
    (SELECT COUNT(*) FROM opportunities o WHERE o.lead_id = leads.id)
    WHERE id IN (SELECT lead_id FROM opportunities);

CREATE TRIGGER opportunities_count_insert AFTER INSERT ON opportunities
BEGIN
    UPDATE leads SET opportunity_count = opportunity_count + 1 WHERE id = NEW.lead_id;
END;
CREATE TRIGGER opportunities_count_delete AFTER DELETE ON opportunities
BEGIN
    UPDATE leads SET opportunity_count = opportunity_count - 1 WHERE id = OLD.lead_id;
END;
CREATE TRIGGER opportunities_count_move AFTER UPDATE OF lead_id ON opportunities
    WHEN OLD.lead_id IS NOT NEW.lead_id
BEGIN
    UPDATE leads SET opportunity_count = opportunity_count - 1 WHERE id = OLD.lead_id;
    UPDATE leads SET opportunity_count = opportunity_count + 1 WHERE id = NEW.lead_id;
END;

-- The status index carries the count too, so a status filter with an
-- `opportunities` condition reads the index alone, in view order. It
-- replaces the index of migration 0050, its prefix.
CREATE INDEX leads_status_created_call_opps
    ON leads (lower(status), created_ms, id, last_call_ms, opportunity_count);
DROP INDEX leads_status_created_call;
