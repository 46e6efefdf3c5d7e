-- Rollout health gates: action timeouts, soak time, rollback detection (health.py).

-- Limits of a rollout's actions (NULL: the defaults of health.py) and its soak time.
ALTER TABLE rollouts
    ADD COLUMN report_timeout_s double precision CHECK (report_timeout_s > 0),
    ADD COLUMN action_timeout_s double precision CHECK (action_timeout_s > 0),
    ADD COLUMN soak_s           double precision NOT NULL DEFAULT 0 CHECK (soak_s >= 0);

ALTER TABLE actions
    ADD COLUMN report_timeout_s double precision,  -- NULL: the default
    ADD COLUMN action_timeout_s double precision,  -- NULL: the default
    -- When the action's clocks started: its opening, or the end of its wait for a confirmation
    -- or for its maintenance window (time spent waiting does not count).
    ADD COLUMN clock_from   timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN from_version text,         -- what the device reported running when it opened
    -- After success: NULL (not judged yet), 'soaking', 'healthy', or 'none' (no soak asked).
    ADD COLUMN health       text CHECK (health IN ('soaking', 'healthy', 'none')),
    ADD COLUMN soak_until   timestamptz,
    ADD COLUMN seen_at      timestamptz;  -- the device's last poll or report after its success

-- The version each device last reported itself, and when the gateway received it: compared
-- with its last success also when the report came before rollouts closed the action.
ALTER TABLE devices
    ADD COLUMN reported_version text,
    ADD COLUMN reported_at      timestamptz;

-- Closed before this migration: nothing left to judge.
UPDATE actions SET health = 'none' WHERE NOT active;

CREATE INDEX actions_unjudged ON actions (id)
    WHERE health IS NULL AND NOT active AND status = 'finished';
CREATE INDEX actions_soaking ON actions (soak_until) WHERE health = 'soaking';

ALTER TABLE rollout_devices DROP CONSTRAINT rollout_devices_state_check;
ALTER TABLE rollout_devices ADD CONSTRAINT rollout_devices_state_check
    CHECK (state IN ('waiting', 'pending', 'running', 'success', 'failure', 'canceled',
                     'timed_out', 'rolled_back'));

-- Software a device fell back from: not offered to it again until an operator clears it.
CREATE TABLE blocked_software (
    tenant        text        NOT NULL,
    controller_id text        NOT NULL,
    software_id   text        NOT NULL,
    version       text        NOT NULL,
    action_id     bigint      NOT NULL,
    reason        text        NOT NULL,
    blocked_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, controller_id, software_id)
);
