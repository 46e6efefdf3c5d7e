-- Deployment policy per device: how it gets its software. No row: mode rollout, feed default.
CREATE TABLE policies (
    tenant        text        NOT NULL,
    controller_id text        NOT NULL,
    mode          text        NOT NULL DEFAULT 'rollout'
        CHECK (mode IN ('rollout', 'latest', 'assigned', 'pinned')),
    feed          text        NOT NULL DEFAULT 'default',
    software_id   text,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, controller_id),
    CHECK (mode <> 'assigned' OR software_id IS NOT NULL)
);

CREATE INDEX policies_by_feed ON policies (tenant, feed);
