-- Tenants created or configured by an operator: their device-side settings, written to the KV
-- bucket tenants through the outbox. A tenant exists for devices once it is here (or has an
-- API key, or is one the gateway is configured with).
CREATE TABLE tenants (
    tenant      text        PRIMARY KEY,
    config      jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text        NOT NULL
);
