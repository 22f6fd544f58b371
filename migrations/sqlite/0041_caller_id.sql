-- Caller ID rules (SPEC §4): a session's own caller ID (shown instead of
-- the trunk's when no `dialer.caller_id_pool` number is local to the
-- lead), and the caller ID each call showed the lead.
ALTER TABLE dialer_sessions ADD COLUMN caller_id TEXT;
ALTER TABLE calls ADD COLUMN caller_id TEXT;
