-- What rollouts knows of each device's inventory (from device.updated), for decisions.
CREATE TABLE devices (
    tenant        text        NOT NULL,
    controller_id text        NOT NULL,
    hw_model      text,
    hw_revision   text,
    sw_version    text,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, controller_id)
);
