-- The W3C traceparent of the transaction that wrote the row (null when tracing is off): the relay
-- publishes under it, so an event sent later stays in the trace of what caused it.
ALTER TABLE outbox ADD COLUMN traceparent text;
