-- Nothing to change in SQLite: the PostgreSQL migration of this number
-- folds a covering index into the primary key of `lead_custom_values`,
-- which here is a WITHOUT ROWID table whose rows already live in the
-- primary key's b-tree. Kept so both backends number alike.
SELECT 1;
