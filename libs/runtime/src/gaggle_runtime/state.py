"""The parts a service's routes are given, put on ``app.state`` once by ``app.py``.

Routes take them by FastAPI's ``Depends``, so a test can hand a route fakes by putting them there.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request


def put_parts(app: FastAPI, **parts: Any) -> None:
    """Put each part on ``app.state`` under its keyword, where :func:`part` finds it."""
    for name, value in parts.items():
        setattr(app.state, name, value)


def part(name: str) -> Any:
    """A dependency giving ``app.state.<name>``."""

    def given(request: Request) -> Any:
        return getattr(request.app.state, name)

    return Depends(given)
