-- Rollouts: one software to the devices of a feed, in waves, stopped by an error threshold.
DROP TABLE rollouts;

CREATE TABLE rollouts (
    id                    bigserial   PRIMARY KEY,
    tenant                text        NOT NULL,
    name                  text        NOT NULL,
    feed                  text        NOT NULL,
    software_id           text        NOT NULL,
    device_filter         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    action_type           text        NOT NULL CHECK (action_type IN ('forced', 'soft', 'downloadonly')),
    confirmation_required boolean     NOT NULL DEFAULT false,
    maintenance_window    jsonb,
    success_threshold     integer     NOT NULL CHECK (success_threshold BETWEEN 1 AND 100),
    error_threshold       integer     NOT NULL CHECK (error_threshold BETWEEN 0 AND 100),
    error_action          text        NOT NULL CHECK (error_action IN ('pause', 'abort')),
    state                 text        NOT NULL DEFAULT 'created'
        CHECK (state IN ('created', 'running', 'paused', 'finished', 'aborted')),
    reason                text,
    current_wave          integer     NOT NULL DEFAULT 0,
    failures_forgiven     integer     NOT NULL DEFAULT 0,  -- failures before the last resume
    created_at            timestamptz NOT NULL DEFAULT now(),
    started_at            timestamptz,
    finished_at           timestamptz,
    FOREIGN KEY (tenant, software_id) REFERENCES software (tenant, software_id)
);

CREATE INDEX rollouts_by_feed ON rollouts (tenant, feed, id DESC);
CREATE INDEX rollouts_active ON rollouts (id) WHERE state IN ('running', 'paused');

CREATE TABLE rollout_waves (
    rollout_id  bigint      NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    wave        integer     NOT NULL,
    size        integer     NOT NULL,
    started_at  timestamptz,
    PRIMARY KEY (rollout_id, wave)
);

-- Every device of a rollout, its wave and where it stands. Counters are derived from here.
CREATE TABLE rollout_devices (
    rollout_id    bigint  NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    tenant        text    NOT NULL,
    controller_id text    NOT NULL,
    wave          integer NOT NULL,
    state         text    NOT NULL
        CHECK (state IN ('waiting', 'pending', 'running', 'success', 'failure', 'canceled')),
    action_id     bigint,
    PRIMARY KEY (rollout_id, controller_id)
);

CREATE INDEX rollout_devices_pending ON rollout_devices (rollout_id, controller_id)
    WHERE state = 'pending';
CREATE INDEX rollout_devices_by_device ON rollout_devices (tenant, controller_id);

ALTER TABLE actions
    ADD COLUMN maintenance_window jsonb,
    ADD COLUMN window_open boolean,
    ADD COLUMN status_at timestamptz;  -- when the report that set the status was received

-- Reports are applied concurrently; the history is ordered by when the gateway received them.
CREATE INDEX action_status_by_time ON action_status (action_id, at, id);
CREATE INDEX actions_by_rollout ON actions (rollout_id) WHERE rollout_id IS NOT NULL;
CREATE INDEX actions_in_windows ON actions (id) WHERE active AND maintenance_window IS NOT NULL;

ALTER TABLE devices ADD COLUMN auto_confirm boolean NOT NULL DEFAULT false;
