"""Tables every service schema gets from the runtime (the outbox)."""
