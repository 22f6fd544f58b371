-- Agents created through the API (SPEC §4 /api/v1/agents). Passwords are
-- never stored: only HA1 = H(username:realm:password) per digest algorithm
-- (RFC 7616 §3.4.2), for the realm they were set in. Agents of the config
-- file are not stored here.
CREATE TABLE agents (
    username     TEXT PRIMARY KEY,
    display_name TEXT,
    realm        TEXT NOT NULL,
    ha1_md5      TEXT NOT NULL,
    ha1_sha256   TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    updated_ms   BIGINT NOT NULL
);
