"""Gaggle console: the operators' web pages, rendered on the server from the services' APIs."""
