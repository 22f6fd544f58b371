-- Smart View evaluation over 1,000,000 leads (SPEC §6: each help-page
-- example under 500 ms) reads a custom field's leads as a range of its
-- value index: the leads failing a condition that a missing value
-- satisfies (`("custom.Next Call Date" < now or "custom.Next Call
-- Date":"")`, src/leads/query/sql.rs `Excluding`) and the keys of a sort
-- by the field (`sort:-"Next Call Date"`, `Unsorted::key_field`). With the
-- lead id in the index these are index-only scans instead of a visit to
-- every matching row (PostgreSQL, 1,000,000 leads: the 660,000 keys of
-- the Next Call Date sort 207–239 ms → 126–146 ms at load 10; BENCHMARKS.md).
-- SQLite needs no change: its indexes of the WITHOUT ROWID table carry
-- the primary key `(lead_id, field_id)` already.
--
-- The text index keeps its form: an index-only scan of `lower(value_text)`
-- would need the text itself in the index.
CREATE INDEX lcv_ms_lead ON lead_custom_values (field_id, value_ms) INCLUDE (lead_id);
DROP INDEX lcv_ms;
ALTER INDEX lcv_ms_lead RENAME TO lcv_ms;
CREATE INDEX lcv_num_lead ON lead_custom_values (field_id, value_num) INCLUDE (lead_id);
DROP INDEX lcv_num;
ALTER INDEX lcv_num_lead RENAME TO lcv_num;
