"""Rollouts schema migrations."""
