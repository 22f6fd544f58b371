-- The agent's notes on a call (SPEC §1 step 5: the notes typed during and
-- after the call, saved with it through `PATCH /api/v1/calls/{id}`).
ALTER TABLE calls ADD COLUMN notes TEXT;

-- R6: notes change no Smart View, so saving them (every second or so while
-- an agent types) must not wake every instance's sessions: the trigger
-- fires only for updates of the columns views read.
DROP TRIGGER calls_notify ON calls;
CREATE TRIGGER calls_notify_insert AFTER INSERT ON calls
    FOR EACH STATEMENT EXECUTE FUNCTION powerdial_notify_leads();
CREATE TRIGGER calls_notify_update
    AFTER UPDATE OF session_id, lead_id, agent, number, started_ms, answered_ms,
                    ended_ms, outcome, sip_status, ring_ms ON calls
    FOR EACH STATEMENT EXECUTE FUNCTION powerdial_notify_leads();
