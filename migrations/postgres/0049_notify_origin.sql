-- R6 across instances: the change notification now also carries the
-- changing connection's application_name, which every powerdial instance
-- sets to a tag of its own (src/store/postgres.rs). An instance skips the
-- notifications of its own changes: it has already told its sessions
-- which leads changed, and they check just those leads instead of
-- re-reading their whole view (SPEC §6: a lead change reaches the queue in
-- under 100 ms without re-evaluating the whole view). Changes made by
-- other instances or by other clients still wake every session.
CREATE OR REPLACE FUNCTION powerdial_notify_leads() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('powerdial_leads',
        TG_TABLE_NAME || ' ' || coalesce(current_setting('application_name', true), ''));
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
