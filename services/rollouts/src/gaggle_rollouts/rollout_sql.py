"""The SQL of rollouts, their waves and members (run by the rollout modules)."""

INSERT_ROLLOUT = """
INSERT INTO rollouts.rollouts (tenant, name, feed, software_id, device_filter, action_type,
                               confirmation_required, maintenance_window, success_threshold,
                               error_threshold, error_action, forcetime, approval,
                               start_on_approval, created_by, report_timeout_s, action_timeout_s,
                               soak_s)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8::jsonb, $9, $10, $11, $12, $13, $14, $15, $16, $17,
        $18)
RETURNING *"""
FEED_KNOWN = """
SELECT EXISTS (SELECT 1 FROM rollouts.policies WHERE tenant = $1 AND feed = $2)"""
FEED_DEVICES = """
SELECT d.* FROM rollouts.devices d
LEFT JOIN rollouts.policies p ON p.tenant = d.tenant AND p.controller_id = d.controller_id
WHERE d.tenant = $1 AND coalesce(p.mode, 'rollout') = 'rollout'
  AND coalesce(p.feed, 'default') = $2
  AND (d.hw_model IS NOT NULL OR d.sw_version IS NOT NULL)
ORDER BY md5(d.controller_id), d.controller_id"""
INSERT_WAVES = """
INSERT INTO rollouts.rollout_waves (rollout_id, wave, size)
SELECT $1, u.wave, u.size FROM unnest($2::int[], $3::int[]) AS u(wave, size)"""
INSERT_MEMBERS = """
INSERT INTO rollouts.rollout_devices (rollout_id, tenant, controller_id, wave, state)
SELECT $1, $2, u.controller_id, u.wave, u.state
FROM unnest($3::text[], $4::int[], $5::text[]) AS u(controller_id, wave, state)"""
INSERT_MEMBER = """
INSERT INTO rollouts.rollout_devices (rollout_id, tenant, controller_id, wave, state)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (rollout_id, controller_id) DO NOTHING"""
GROW_WAVE = "UPDATE rollouts.rollout_waves SET size = size + 1 WHERE rollout_id = $1 AND wave = $2"

SELECT_ROLLOUT = "SELECT * FROM rollouts.rollouts WHERE tenant = $1 AND id = $2"
LOCK_ROLLOUT = "SELECT * FROM rollouts.rollouts WHERE id = $1 FOR UPDATE"
SHARE_ROLLOUT = "SELECT * FROM rollouts.rollouts WHERE id = $1 FOR SHARE"
LIST_ROLLOUTS = """
SELECT * FROM rollouts.rollouts
WHERE tenant = $1 AND ($2::text IS NULL OR feed = $2) AND ($3::text IS NULL OR state = $3)
  AND ($4::bigint IS NULL OR id < $4)
ORDER BY id DESC LIMIT $5"""
# A rollout's creation reads the feed's devices while no device of the feed is being decided
# (exclusive), and a device decides by the feed's newest rollout only once no creation is under
# way (shared): a device whose inventory lands while a rollout is created is either among the
# devices the creation reads or decided after it, and then joins it.
LOCK_FEED = "SELECT pg_advisory_xact_lock(hashtext($1))"
SHARE_FEED = "SELECT pg_advisory_xact_lock_shared(hashtext($1))"
NEWEST_ACTIVE = """
SELECT * FROM rollouts.rollouts
WHERE tenant = $1 AND feed = $2 AND state IN ('running', 'paused')
ORDER BY id DESC LIMIT 1 FOR SHARE"""
OLDER_ACTIVE = """
SELECT id FROM rollouts.rollouts
WHERE tenant = $1 AND feed = $2 AND id < $3 AND state IN ('running', 'paused') ORDER BY id"""
ACTIVE_IDS = "SELECT id FROM rollouts.rollouts WHERE state IN ('running', 'paused') ORDER BY id"

# Successes of a rollout with a soak time still soak until the health check judged them
# (health.py): finished actions not judged yet included. Only a rollout with a soak time looks
# at its members' actions.
COUNTS = """
SELECT g.wave, g.state, g.n,
       CASE WHEN g.state = 'success' AND r.soak_s > 0 THEN
           (SELECT count(*)::int FROM rollouts.rollout_devices m
            JOIN rollouts.actions a ON a.id = m.action_id
            WHERE m.rollout_id = $1 AND m.wave = g.wave AND m.state = 'success'
              AND a.status = 'finished' AND coalesce(a.health, 'soaking') = 'soaking')
       ELSE 0 END
FROM (SELECT wave, state, count(*)::int AS n FROM rollouts.rollout_devices
      WHERE rollout_id = $1 GROUP BY wave, state) g
CROSS JOIN rollouts.rollouts r
WHERE r.id = $1"""
WAVES = "SELECT * FROM rollouts.rollout_waves WHERE rollout_id = $1 ORDER BY wave"
START_WAVE = """
UPDATE rollouts.rollout_devices SET state = 'pending'
WHERE rollout_id = $1 AND wave = $2 AND state = 'waiting'"""
WAVE_STARTED = """
UPDATE rollouts.rollout_waves SET started_at = now() WHERE rollout_id = $1 AND wave = $2"""
SET_APPROVAL = """
UPDATE rollouts.rollouts
SET approval = $2, approval_by = $3, approval_at = now(), approval_remark = $4
WHERE id = $1
RETURNING *"""
SET_STATE = """
UPDATE rollouts.rollouts
SET state = $2, reason = $3, current_wave = $4, failures_forgiven = $5,
    started_at = coalesce(started_at, CASE WHEN $2 = 'running' THEN now() END),
    finished_at = CASE WHEN $2 IN ('finished', 'aborted') THEN now() END
WHERE id = $1
RETURNING *"""
DROP_UNSTARTED = """
UPDATE rollouts.rollout_devices SET state = 'canceled'
WHERE rollout_id = $1 AND state IN ('waiting', 'pending')"""
OPEN_OF_ROLLOUT = """
SELECT * FROM rollouts.actions
WHERE rollout_id = $1 AND active AND status <> 'canceling' ORDER BY id FOR UPDATE"""
CANCEL_ACTIONS = """
UPDATE rollouts.actions SET status = 'canceling', updated_at = now() WHERE id = ANY($1::bigint[])"""

MEMBER = "SELECT * FROM rollouts.rollout_devices WHERE rollout_id = $1 AND controller_id = $2"
MEMBERS = """
SELECT controller_id, wave, state, action_id FROM rollouts.rollout_devices
WHERE rollout_id = $1 AND ($2::text IS NULL OR state = $2)
  AND ($3::text IS NULL OR controller_id > $3)
ORDER BY controller_id LIMIT $4"""
CLAIM_PENDING = """
SELECT m.controller_id FROM rollouts.rollout_devices m
WHERE m.rollout_id = $1 AND m.state = 'pending'
  AND ($2::text[] IS NULL OR m.controller_id = ANY($2::text[]))
  AND NOT EXISTS (SELECT 1 FROM rollouts.actions a
                  WHERE a.tenant = m.tenant AND a.controller_id = m.controller_id AND a.active)
ORDER BY m.wave, m.controller_id LIMIT $3
FOR UPDATE OF m SKIP LOCKED"""
# The tenant's cap on updates in flight: actions are counted and opened under this lock, so two
# openers (replicas, or a wave and a device deciding alone) never both fill the same free slots.
LOCK_IN_FLIGHT = "SELECT pg_advisory_xact_lock(hashtext('in-flight:' || $1))"
SET_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', $1, true)"
RESET_LOCK_TIMEOUT = "SET LOCAL lock_timeout TO DEFAULT"
IN_FLIGHT = "SELECT count(*)::int FROM rollouts.actions WHERE tenant = $1 AND active"
ROLLOUT_TENANT = "SELECT tenant, state FROM rollouts.rollouts WHERE id = $1"
RUNNING_OF_SAME_TENANTS = """
SELECT id FROM rollouts.rollouts
WHERE state = 'running'
  AND tenant IN (SELECT tenant FROM rollouts.rollouts WHERE id = ANY($1::bigint[]))
  AND EXISTS (SELECT 1 FROM rollouts.rollout_devices m WHERE m.rollout_id = rollouts.id
              AND m.state = 'pending')
ORDER BY id"""
DEVICES_OF = """
SELECT d.*, coalesce(p.mode, 'rollout') AS mode, coalesce(p.feed, 'default') AS feed
FROM rollouts.devices d
LEFT JOIN rollouts.policies p ON p.tenant = d.tenant AND p.controller_id = d.controller_id
WHERE d.tenant = $1 AND d.controller_id = ANY($2::text[])"""
SET_MEMBERS = """
UPDATE rollouts.rollout_devices m SET state = u.state, action_id = u.action_id
FROM unnest($2::text[], $3::text[], $4::bigint[]) AS u(controller_id, state, action_id)
WHERE m.rollout_id = $1 AND m.controller_id = u.controller_id"""
