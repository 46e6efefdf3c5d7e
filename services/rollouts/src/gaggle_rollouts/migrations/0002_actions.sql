-- The software catalogue as rollouts knows it (from software.* events).
CREATE TABLE software (
    tenant        text        NOT NULL,
    software_id   text        NOT NULL,
    name          text        NOT NULL,
    version       text        NOT NULL,
    filename      text        NOT NULL,
    size          bigint      NOT NULL,
    md5           text        NOT NULL,
    sha1          text        NOT NULL,
    sha256        text        NOT NULL,
    object_key    text,
    external_url  text,
    compatibility jsonb       NOT NULL DEFAULT '[]'::jsonb,
    deleted       boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, software_id)
);

-- One deployment of one software to one device.
CREATE TABLE actions (
    id            bigserial   PRIMARY KEY,
    tenant        text        NOT NULL,
    controller_id text        NOT NULL,
    software_id   text        NOT NULL,
    version       text        NOT NULL,
    type          text        NOT NULL CHECK (type IN ('forced', 'soft', 'downloadonly')),
    status        text        NOT NULL,
    active        boolean     NOT NULL DEFAULT true,
    rollout_id    bigint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    closed_at     timestamptz,
    FOREIGN KEY (tenant, software_id) REFERENCES software (tenant, software_id)
);

-- At most one open action per device; backs the get-or-create in the API.
CREATE UNIQUE INDEX actions_one_open ON actions (tenant, controller_id) WHERE active;
CREATE INDEX actions_by_device ON actions (tenant, controller_id, id DESC);

-- Every status an action went through, with what the device said: the device logs.
CREATE TABLE action_status (
    id          bigserial   PRIMARY KEY,
    action_id   bigint      NOT NULL REFERENCES actions (id) ON DELETE CASCADE,
    event_id    uuid        UNIQUE,    -- the feedback event; redeliveries are dropped
    at          timestamptz NOT NULL DEFAULT now(),
    status      text        NOT NULL,
    execution   text,
    finished    text,
    code        integer,
    details     jsonb       NOT NULL DEFAULT '[]'::jsonb
);

CREATE INDEX action_status_by_action ON action_status (action_id, id);
