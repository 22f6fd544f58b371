-- Smart View evaluation over 1,000,000 leads (SPEC §6: each help-page
-- example under 500 ms). A descending sort by a key that is never NULL
-- (`sort:-created`, `sort:-updated`, `sort:-opportunities`) is now
-- compiled as plain `DESC` (NULLS FIRST) rather than `DESC NULLS LAST`
-- (src/leads/query/sql.rs): the same order for a NOT NULL column, and the
-- one a backward scan of an ascending index yields, so a status filter
-- sorted by `-created` reads `leads_status_lc_created` backwards and
-- sorts only ties instead of sorting every match. This index, which
-- `sort:-created` scans in view order, follows the new ORDER BY; the
-- SQLite index needs no change (SQLite puts NULLs last in DESC order).
CREATE INDEX leads_created_desc_nf ON leads (created_ms DESC, id);
DROP INDEX leads_created_desc;
ALTER INDEX leads_created_desc_nf RENAME TO leads_created_desc;
