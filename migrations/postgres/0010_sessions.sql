-- Dialer sessions (issue 5): settings, agents, the session's per-lead
-- history (R3-R5, R7) and the claims that keep a lead with one agent at a
-- time across agents and instances (R13). Times are epoch milliseconds;
-- flags are 0/1 BIGINTs so both backends read them the same way.

CREATE TABLE dialer_sessions (
    id                 BIGSERIAL PRIMARY KEY,
    smart_view_id      BIGINT NOT NULL REFERENCES smart_views (id),
    reduced_ring_time  BIGINT NOT NULL DEFAULT 0,
    -- NULL: the config's [dialer] wrap_up_idle.
    wrap_up_idle_ms    BIGINT,
    -- R16: sha256 hex of the share token; NULL when revoked.
    share_token_hash   TEXT,
    created_ms         BIGINT NOT NULL,
    reset_ms           BIGINT
);
CREATE UNIQUE INDEX dialer_sessions_share ON dialer_sessions (share_token_hash);

-- Agents in a session; `paused` survives a restart (R14).
CREATE TABLE session_agents (
    session_id  BIGINT NOT NULL REFERENCES dialer_sessions (id) ON DELETE CASCADE,
    agent       TEXT   NOT NULL,
    paused      BIGINT NOT NULL DEFAULT 0,
    joined_ms   BIGINT NOT NULL,
    PRIMARY KEY (session_id, agent)
);

-- The session's record of one lead (dialer::queue::LeadHistory), written on
-- every report so a restarted instance resumes without calling anyone twice.
CREATE TABLE session_leads (
    session_id        BIGINT NOT NULL REFERENCES dialer_sessions (id) ON DELETE CASCADE,
    lead_id           BIGINT NOT NULL,
    generation        BIGINT NOT NULL,
    calls             BIGINT NOT NULL,
    answered          BIGINT NOT NULL DEFAULT 0,
    blocked_until_ms  BIGINT,
    PRIMARY KEY (session_id, lead_id)
);

-- R13: one live claim per lead (the partial unique index), with a lease that
-- a live instance renews while the call lasts and a version that a stale
-- instance's renew or release must match.
CREATE TABLE lead_claims (
    id           BIGSERIAL PRIMARY KEY,
    lead_id      BIGINT NOT NULL,
    session_id   BIGINT NOT NULL,
    agent        TEXT   NOT NULL,
    instance     TEXT   NOT NULL,
    claimed_ms   BIGINT NOT NULL,
    expires_ms   BIGINT NOT NULL,
    version      BIGINT NOT NULL DEFAULT 1,
    released_ms  BIGINT,
    call_id      BIGINT
);
CREATE UNIQUE INDEX lead_claims_live ON lead_claims (lead_id) WHERE released_ms IS NULL;
CREATE INDEX lead_claims_session ON lead_claims (session_id, released_ms);

-- R6 across instances: any change to leads or calls wakes every instance's
-- sessions (LISTEN powerdial_leads). One notification per statement, so an
-- import of a million rows costs one; PostgreSQL folds duplicates within a
-- transaction.
CREATE FUNCTION powerdial_notify_leads() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('powerdial_leads', TG_TABLE_NAME);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER leads_notify AFTER INSERT OR UPDATE OR DELETE ON leads
    FOR EACH STATEMENT EXECUTE FUNCTION powerdial_notify_leads();
CREATE TRIGGER contacts_notify AFTER INSERT OR UPDATE OR DELETE ON contacts
    FOR EACH STATEMENT EXECUTE FUNCTION powerdial_notify_leads();
CREATE TRIGGER lead_custom_values_notify AFTER INSERT OR UPDATE OR DELETE ON lead_custom_values
    FOR EACH STATEMENT EXECUTE FUNCTION powerdial_notify_leads();
CREATE TRIGGER opportunities_notify AFTER INSERT OR UPDATE OR DELETE ON opportunities
    FOR EACH STATEMENT EXECUTE FUNCTION powerdial_notify_leads();
CREATE TRIGGER calls_notify AFTER INSERT OR UPDATE ON calls
    FOR EACH STATEMENT EXECUTE FUNCTION powerdial_notify_leads();
