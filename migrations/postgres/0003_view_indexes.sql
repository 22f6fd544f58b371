-- Indexes for evaluating Smart Views over 1,000,000 leads (issue 4), chosen
-- from the query plans of the SPEC §3 examples (EXPLAIN):
--
-- * a status filter with the default order (`created`, then id) reads the
--   leads in order from one index instead of sorting them afterwards;
--   it replaces the status-only index, its prefix;
-- * `sort:-created` compiles to `created_ms DESC NULLS LAST, id`: an index
--   in exactly that order is scanned instead of sorting 1,000,000 rows;
-- * `opportunity(status_type:… created …)` and `opportunities:N` are
--   answered from the index without reading opportunity rows.
CREATE INDEX leads_status_created ON leads (lower(status), created_ms, id);
DROP INDEX leads_status;
CREATE INDEX leads_created_desc ON leads (created_ms DESC NULLS LAST, id);
CREATE INDEX opportunities_lead_status ON opportunities (lead_id, status_type, created_ms);
DROP INDEX opportunities_lead;
-- Every custom-field condition and sort looks up (lead, field): with the
-- values included the lookup can be an index-only scan.
CREATE INDEX lcv_lead_cover ON lead_custom_values (lead_id, field_id) INCLUDE (value_text, value_num, value_ms);
