-- When the newest configData report applied to a device was received by the gateway. A report
-- redelivered late (older than this) must not undo a newer one: see domain.late_attributes.
ALTER TABLE devices ADD COLUMN config_reported_at timestamptz;
