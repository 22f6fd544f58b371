-- Registrar bindings (RFC 3261 §10), persisted so a restart keeps them.
CREATE TABLE registrations (
    aor         TEXT   NOT NULL, -- the agent's username
    contact     TEXT   NOT NULL, -- the Contact URI as registered
    expires_ms  BIGINT NOT NULL, -- wall-clock expiry, epoch ms
    call_id     TEXT   NOT NULL,
    cseq        BIGINT NOT NULL,
    q           DOUBLE PRECISION,
    transport   TEXT   NOT NULL, -- udp | tcp: how the REGISTER arrived
    source      TEXT   NOT NULL, -- ip:port it arrived from (NAT: rport)
    PRIMARY KEY (aor, contact)
);
