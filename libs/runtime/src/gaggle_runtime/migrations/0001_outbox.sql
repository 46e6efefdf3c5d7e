-- Transactional outbox: rows written in the same transaction as the state they describe,
-- published to NATS (events, KV puts and deletes) by the relay, then deleted.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    op          text        NOT NULL CHECK (op IN ('event', 'kv_put', 'kv_delete')),
    target      text        NOT NULL,  -- subject (event) or bucket (kv_*)
    key         text,                  -- KV key
    msg_id      text,                  -- Nats-Msg-Id of an event
    payload     bytea       NOT NULL DEFAULT ''::bytea,
    created_at  timestamptz NOT NULL DEFAULT now()
);
