-- Dead letters: events a consumer of this service could not process, and outbox rows the bus
-- refused for good, kept with why, until an operator replays them (after fixing the cause).
CREATE TABLE dead_letters (
    id              bigserial   PRIMARY KEY,
    source          text        NOT NULL CHECK (source IN ('consumer', 'outbox')),
    consumer        text        NOT NULL,  -- durable consumer name, or 'outbox'
    tenant          text        NOT NULL,
    kind            text        NOT NULL,  -- event kind (entity.event); kv_put or kv_delete
    op              text        NOT NULL CHECK (op IN ('event', 'kv_put', 'kv_delete')),
    subject         text        NOT NULL,  -- an event's subject; a KV write's bucket
    key             text,                  -- a KV write's key
    msg_id          text,                  -- the event's Nats-Msg-Id
    payload         bytea       NOT NULL DEFAULT ''::bytea,
    headers         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    traceparent     text,
    reason          text        NOT NULL,  -- invalid, rejected, failed, refused
    error           text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 1,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    replays         integer     NOT NULL DEFAULT 0,
    replayed_at     timestamptz            -- null: waiting for an operator
);
-- An event parked again (after a replay, or delivered twice) updates its row.
CREATE UNIQUE INDEX dead_letters_message ON dead_letters (consumer, msg_id);
CREATE INDEX dead_letters_tenant ON dead_letters (tenant, id);
