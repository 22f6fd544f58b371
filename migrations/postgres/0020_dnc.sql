-- The internal do-not-call list (SPEC §4 /api/v1/dnc): a number on it never
-- reaches the wire. A row is an E.164 number, or with prefix set a number
-- prefix (written "+1900*" in the API) covering every number that starts so.
-- Matching looks up the number and each of its prefixes by primary key.
CREATE TABLE dnc (
    pattern    TEXT NOT NULL,
    prefix     BOOLEAN NOT NULL,
    reason     TEXT,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (pattern, prefix)
);
