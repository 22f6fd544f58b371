-- Indexes for evaluating Smart Views over 1,000,000 leads (issue 4), chosen
-- from the query plans of the SPEC §3 examples (EXPLAIN QUERY PLAN):
--
-- * a status filter with the default order (`created`, then id) reads the
--   leads in order from one index instead of sorting them afterwards;
--   it replaces the status-only index, its prefix;
-- * `sort:-created` (created descending, ties by id ascending) is a plain
--   index scan, no sort;
-- * `opportunity(status_type:… created …)` and `opportunities:N` are
--   answered from the index without reading opportunity rows;
-- * custom values are clustered by (lead, field) (below).
CREATE INDEX leads_status_created ON leads (lower(status), created_ms, id);
DROP INDEX leads_status;
CREATE INDEX leads_created_desc ON leads (created_ms DESC, id);
CREATE INDEX opportunities_lead_status ON opportunities (lead_id, status_type, created_ms);
DROP INDEX opportunities_lead;
-- Every custom-field condition and sort looks up (lead, field): stored
-- WITHOUT ROWID, the rows live in the primary key's b-tree, so a lookup is
-- one descent instead of an index search plus a table read.
CREATE TABLE lead_custom_values_clustered (
    lead_id     BIGINT NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    field_id    BIGINT NOT NULL REFERENCES custom_fields (id) ON DELETE CASCADE,
    value_text  TEXT,
    value_num   DOUBLE PRECISION,
    value_ms    BIGINT,
    PRIMARY KEY (lead_id, field_id)
) WITHOUT ROWID;
INSERT INTO lead_custom_values_clustered (lead_id, field_id, value_text, value_num, value_ms)
    SELECT lead_id, field_id, value_text, value_num, value_ms FROM lead_custom_values;
DROP TABLE lead_custom_values;
ALTER TABLE lead_custom_values_clustered RENAME TO lead_custom_values;
CREATE INDEX lcv_text ON lead_custom_values (field_id, lower(value_text));
CREATE INDEX lcv_num ON lead_custom_values (field_id, value_num);
CREATE INDEX lcv_ms ON lead_custom_values (field_id, value_ms);
