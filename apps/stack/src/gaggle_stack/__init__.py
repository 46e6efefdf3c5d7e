"""Gaggle's embedded stack: NATS with JetStream, PostgreSQL and the four services, one command."""
