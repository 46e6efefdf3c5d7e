-- Software whose signature no longer verifies (software.untrusted from artifacts): rollouts do
-- not start or resume with it. Kept apart from the catalogue, so an untrusted event that
-- overtakes its software.created is kept all the same.
CREATE TABLE untrusted_software (
    tenant       text        NOT NULL,
    software_id  text        NOT NULL,
    reason       text        NOT NULL,
    untrusted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, software_id)
);
