-- Agent tokens (SPEC §4 auth): bearer tokens limited to one agent's own
-- actions, issued through the API or in exchange for a session's share
-- link. Only their SHA-256 is stored.
CREATE TABLE agent_tokens (
    token_sha256 TEXT PRIMARY KEY,
    agent        TEXT NOT NULL,
    via          TEXT NOT NULL,
    created_ms   BIGINT NOT NULL
);
CREATE INDEX agent_tokens_agent ON agent_tokens (agent);
