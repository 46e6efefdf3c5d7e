"""Registry schema migrations."""
