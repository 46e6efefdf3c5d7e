"""Gaggle DDI gateway: the hawkBit device API, answered from an in-memory mirror of NATS KV."""
