-- Lead import (SPEC §6: 50,000 leads/s into PostgreSQL): `lcv_lead_cover`
-- (migration 0003) held the same keys as the primary key, `(lead_id,
-- field_id)`, only to carry the values for index-only lookups, so every
-- custom value was written into two b-trees of the same order. The primary
-- key now carries the values itself (INCLUDE, PostgreSQL 11+): the same
-- index-only lookups and the same arbiter for `ON CONFLICT (lead_id,
-- field_id)`, one index entry fewer per custom value (8 % of the server's
-- CPU in a 1,000,000-lead COPY; BENCHMARKS.md "Lead import").
ALTER TABLE lead_custom_values DROP CONSTRAINT lead_custom_values_pkey;
ALTER TABLE lead_custom_values ADD CONSTRAINT lead_custom_values_pkey
    PRIMARY KEY (lead_id, field_id) INCLUDE (value_text, value_num, value_ms);
DROP INDEX lcv_lead_cover;
