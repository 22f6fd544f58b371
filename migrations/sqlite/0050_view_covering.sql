-- Smart View evaluation over 1,000,000 leads (SPEC §6: each help-page
-- example under 500 ms), from the query plans in BENCHMARKS.md:
--
-- * a status filter with a `called` / `latest_call_created` condition
--   (`lead_status:potential and not called < "4 hours ago"`) read the
--   status index in view order and then every matching lead's row, a
--   random read each: with `last_call_ms` in the index it reads the index
--   alone. It replaces the status index of migration 0003, its prefix.
-- * `opportunity(status_type:… created …)` is compiled to the set of leads
--   with such an opportunity (src/leads/query/sql.rs): this index finds
--   those opportunities without reading the others.
CREATE INDEX leads_status_created_call ON leads (lower(status), created_ms, id, last_call_ms);
DROP INDEX leads_status_created;
CREATE INDEX opportunities_status_created ON opportunities (status_type, created_ms, lead_id);
