"""Operator API errors: a dependency away is a 503 to retry, anything else a 500 (no servers)."""

from __future__ import annotations

import logging

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from gaggle_runtime.http import RETRY_AFTER_S, install_error_handlers


def failing_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/refused")
    async def refused() -> None:
        raise ConnectionRefusedError(111, "Connect call failed")

    @app.get("/closed")
    async def closed() -> None:
        raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")

    @app.get("/shutting-down")
    async def shutting_down() -> None:
        raise asyncpg.exceptions.AdminShutdownError("terminating connection")

    @app.get("/wrapped")
    async def wrapped() -> None:
        try:
            raise ConnectionResetError(104, "reset by peer")
        except ConnectionResetError as exc:
            raise RuntimeError("lookup failed") from exc

    @app.get("/bad-value")
    async def bad_value() -> None:
        raise asyncpg.exceptions.DataError("invalid input for query argument")

    @app.get("/bug")
    async def bug() -> None:
        raise KeyError("x")

    return app


@pytest.fixture
def client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=failing_app(), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://api")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/closed", "database unavailable; retry later"),
        ("/shutting-down", "database unavailable; retry later"),
        ("/refused", "a service this API depends on is unavailable; retry later"),
        ("/wrapped", "a service this API depends on is unavailable; retry later"),
    ],
)
async def test_a_dependency_away_is_503_with_retry_after_and_a_warning_without_traceback(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, path: str, message: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="gaggle_runtime.http"):
        r = await client.get(path)
    assert r.status_code == 503
    assert r.json() == {"error": "unavailable", "message": message}
    assert r.headers["Retry-After"] == str(RETRY_AFTER_S)
    [record] = [rec for rec in caplog.records if rec.name == "gaggle_runtime.http"]
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert path in record.getMessage()


@pytest.mark.parametrize("path", ["/bad-value", "/bug"])
async def test_a_fault_of_the_request_or_the_code_stays_a_logged_500(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    with caplog.at_level(logging.ERROR, logger="gaggle_runtime.http"):
        r = await client.get(path)
    assert r.status_code == 500
    assert r.json()["error"] == "internal"
    assert "Retry-After" not in r.headers
    [record] = [rec for rec in caplog.records if rec.name == "gaggle_runtime.http"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
