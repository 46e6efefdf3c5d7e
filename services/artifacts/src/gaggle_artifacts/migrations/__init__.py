"""Artifacts schema migrations."""
