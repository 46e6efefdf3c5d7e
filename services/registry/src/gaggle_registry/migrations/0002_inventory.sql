-- Update state as the rollouts service's action events tell it, the installed version, and the
-- indexes behind the operator's filters and keyset pagination.
ALTER TABLE devices
    ADD COLUMN installed_version text,
    ADD COLUMN state_at          timestamptz,   -- time of the action event behind update_state
    ADD COLUMN action_id         text;          -- the action that event was about

CREATE INDEX devices_by_state     ON devices (tenant, update_state, controller_id);
CREATE INDEX devices_by_model     ON devices (tenant, hw_model, hw_revision, controller_id);
CREATE INDEX devices_by_version   ON devices (tenant, sw_version, controller_id);
CREATE INDEX devices_by_last_seen
    ON devices (tenant, coalesce(last_seen_at, '-infinity'::timestamptz), controller_id);
CREATE INDEX devices_tags         ON devices USING gin (tags);
