-- The feed a device follows in rollout mode, as the rollouts service's policies say.
ALTER TABLE devices ADD COLUMN feed text NOT NULL DEFAULT 'default';
CREATE INDEX devices_by_feed ON devices (tenant, feed, controller_id);
