"""Plumbing shared by Gaggle's services: logging, database, migrations, outbox, skeleton."""
