-- Smart View evaluation over 1,000,000 leads (SPEC §6: each help-page
-- example under 500 ms), as the SQLite migration of the same number:
-- `last_call_ms` carried in the status index so a status filter with a
-- `called` condition is answered from the index, and opportunities found
-- by status type and creation for `opportunity(…)`.
CREATE INDEX leads_status_created_call ON leads (lower(status), created_ms, id) INCLUDE (last_call_ms);
DROP INDEX leads_status_created;
CREATE INDEX opportunities_status_created ON opportunities (status_type, created_ms) INCLUDE (lead_id);
