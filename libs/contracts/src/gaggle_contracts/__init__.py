"""Gaggle's shared vocabulary: events, subject and bucket names, KV layouts, DDI bodies, settings.

Services never import each other; everything that crosses a service boundary is defined here.
"""

from gaggle_contracts import ddi, events, kv, names
from gaggle_contracts.settings import CommonSettings

__all__ = ["CommonSettings", "ddi", "events", "kv", "names"]
