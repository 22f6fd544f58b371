-- Leads calling back (SPEC §1): an inbound call from the trunk, bridged to
-- an agent, is recorded with outcome `inbound`.
ALTER TABLE calls DROP CONSTRAINT IF EXISTS calls_outcome_check;
ALTER TABLE calls ADD CONSTRAINT calls_outcome_check CHECK (outcome IS NULL OR outcome IN
    ('answered', 'no_answer', 'busy', 'skipped', 'temporary_error', 'restricted', 'inbound'));
