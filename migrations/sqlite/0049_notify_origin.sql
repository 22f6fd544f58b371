-- Nothing to change in SQLite: the PostgreSQL migration of this number
-- tags change notifications with their origin, and SQLite has one
-- instance and no notifications. Kept so both backends number alike.
SELECT 1;
