-- Devices queued for their action (state 'pending') get it in wave order, then by id, as the
-- tenant's cap on updates in flight frees slots: the claim reads this index in that order and
-- stops after the slots it has, however many devices wait.
CREATE INDEX rollout_devices_queue ON rollout_devices (rollout_id, wave, controller_id)
    WHERE state = 'pending';
DROP INDEX rollout_devices_pending;
