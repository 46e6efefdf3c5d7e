-- Operator API keys (only hashes) and the audit log of operator changes.
CREATE TABLE api_keys (
    id            text        PRIMARY KEY,
    tenant        text        NOT NULL,
    name          text        NOT NULL,
    permissions   text[]      NOT NULL,
    sha256        text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text        NOT NULL,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    revoked_by    text,
    last_used_at  timestamptz
);

CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at DESC, id);

CREATE TABLE audit_log (
    seq         bigserial   PRIMARY KEY,
    event_id    uuid        NOT NULL UNIQUE,
    tenant      text        NOT NULL,
    at          timestamptz NOT NULL,
    actor       text        NOT NULL,
    service     text        NOT NULL,
    action      text        NOT NULL,
    method      text        NOT NULL,
    resource    text        NOT NULL,
    status      integer     NOT NULL,
    outcome     text        NOT NULL
);

CREATE INDEX audit_by_time ON audit_log (tenant, at DESC, seq DESC);
CREATE INDEX audit_by_actor ON audit_log (tenant, actor, at DESC, seq DESC);
CREATE INDEX audit_by_resource ON audit_log (tenant, resource text_pattern_ops);
