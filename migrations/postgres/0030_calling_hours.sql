-- A dialer session's own calling hours (SPEC §4 sessions' `calling_hours`,
-- in each lead's local time), `HH:MM`; NULL: the config's
-- [dialer] calling_hours.
ALTER TABLE dialer_sessions ADD COLUMN calling_start TEXT;
ALTER TABLE dialer_sessions ADD COLUMN calling_end TEXT;
