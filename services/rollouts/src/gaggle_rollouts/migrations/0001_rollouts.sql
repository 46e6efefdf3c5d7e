CREATE TABLE rollouts (
    tenant       text        NOT NULL,
    id           bigserial   PRIMARY KEY,
    name         text        NOT NULL,
    feed         text        NOT NULL DEFAULT 'default',
    software_id  text        NOT NULL,
    state        text        NOT NULL DEFAULT 'created'
        CHECK (state IN ('created', 'running', 'paused', 'finished', 'aborted')),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX rollouts_by_feed ON rollouts (tenant, feed, created_at DESC);
