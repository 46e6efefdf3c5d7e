-- Time-forced actions (hawkBit "timeforced": soft until forcetime, forced after) and rollouts
-- that wait for an approver when the tenant asks for approval.
ALTER TABLE actions DROP CONSTRAINT actions_type_check;
ALTER TABLE actions
    ADD CONSTRAINT actions_type_check
        CHECK (type IN ('forced', 'soft', 'timeforced', 'downloadonly')),
    ADD COLUMN forcetime timestamptz,
    ADD COLUMN force_due boolean NOT NULL DEFAULT false,  -- forcetime has passed (as rendered)
    ADD CONSTRAINT actions_forcetime_check CHECK ((type = 'timeforced') = (forcetime IS NOT NULL));

CREATE INDEX actions_force_pending ON actions (forcetime)
    WHERE active AND type = 'timeforced' AND NOT force_due;

ALTER TABLE rollouts DROP CONSTRAINT rollouts_action_type_check;
ALTER TABLE rollouts
    ADD CONSTRAINT rollouts_action_type_check
        CHECK (action_type IN ('forced', 'soft', 'timeforced', 'downloadonly')),
    ADD COLUMN forcetime timestamptz,
    ADD CONSTRAINT rollouts_forcetime_check
        CHECK ((action_type = 'timeforced') = (forcetime IS NOT NULL)),
    -- NULL: no approval asked; else where the approval stands.
    ADD COLUMN approval text CHECK (approval IN ('pending', 'approved', 'denied')),
    ADD COLUMN start_on_approval boolean NOT NULL DEFAULT false,
    ADD COLUMN created_by text,
    ADD COLUMN approval_by text,
    ADD COLUMN approval_at timestamptz,
    ADD COLUMN approval_remark text;
