CREATE TABLE devices (
    tenant            text        NOT NULL,
    controller_id     text        NOT NULL,
    name              text,
    token_hash        text,
    hw_model          text,
    hw_revision       text,
    sw_version        text,
    attributes        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    config_requested  boolean     NOT NULL DEFAULT true,
    update_state      text        NOT NULL DEFAULT 'unknown'
        CHECK (update_state IN ('unknown', 'up_to_date', 'pending', 'downloading', 'installing',
                                'success', 'error')),
    tags              text[]      NOT NULL DEFAULT '{}',
    last_seen_at      timestamptz,
    last_address      text,
    registered_via    text        NOT NULL DEFAULT 'poll' CHECK (registered_via IN ('poll', 'api')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, controller_id)
);

CREATE INDEX devices_by_created ON devices (tenant, created_at, controller_id);
