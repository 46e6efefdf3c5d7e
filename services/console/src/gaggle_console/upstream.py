"""Calls to the services' APIs, made with the signed-in operator's own key."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

SERVICES = ("registry", "rollouts", "artifacts")


@dataclass
class UpstreamError(Exception):
    """A service refused a call or could not be reached; ``status`` 0 when unreachable."""

    service: str
    status: int
    message: str

    def __str__(self) -> str:
        if self.status == 0:
            return f"The {self.service} service could not be reached: {self.message}"
        what = {401: "not authenticated", 403: "forbidden"}.get(self.status, "refused")
        return f"The {self.service} service answered {self.status} ({what}): {self.message}"


def _message(response: httpx.Response) -> str:
    """The service's own explanation of a refusal (its JSON ``detail`` or ``message``)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        for name in ("message", "detail", "title"):
            value = body.get(name)
            if isinstance(value, str):
                return value
            if isinstance(value, list) and value:  # FastAPI's validation errors
                first = value[0]
                if isinstance(first, dict):
                    return str(first.get("msg", first))
    return str(body)[:200]


class Upstream:
    """An HTTP client for the services, each call with the key it is given."""

    def __init__(self, client: httpx.AsyncClient, urls: Mapping[str, str]) -> None:
        self.client = client
        self.urls = {name: url.rstrip("/") for name, url in urls.items()}

    def _request(
        self,
        method: str,
        service: str,
        path: str,
        key: str,
        params: Mapping[str, Any] | None,
        **kwargs: Any,
    ) -> httpx.Request:
        query = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
        return self.client.build_request(
            method, self.urls[service] + path, params=query, headers=headers, **kwargs
        )

    async def _send(self, service: str, request: httpx.Request, *, stream: bool) -> httpx.Response:
        """``request``'s answer, whatever its status.

        Raises:
            UpstreamError: a network error (status 0).
        """
        try:
            return await self.client.send(request, stream=stream)
        except httpx.HTTPError as exc:
            raise UpstreamError(service, 0, str(exc) or type(exc).__name__) from exc

    async def get(
        self, service: str, path: str, key: str, params: Mapping[str, Any] | None = None
    ) -> Any:
        """The JSON of ``GET <service><path>`` with ``key``.

        Raises:
            UpstreamError: any answer but 2xx, a network error, or a body that is not JSON.
        """
        return await self.send("GET", service, path, key, params=params)

    async def send(
        self,
        method: str,
        service: str,
        path: str,
        key: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        """The JSON answer of ``<method> <service><path>`` with ``key`` (None for no body).

        Raises:
            UpstreamError: any answer but 2xx, a network error, or a body that is not JSON.
        """
        request = self._request(method, service, path, key, params, json=json)
        response = await self._send(service, request, stream=False)
        if not response.is_success:
            raise UpstreamError(service, response.status_code, _message(response))
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamError(service, response.status_code, "the answer is not JSON") from exc

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        service: str,
        path: str,
        key: str,
        *,
        params: Mapping[str, Any] | None = None,
        content: AsyncIterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """``<method> <service><path>`` with ``key``, the answer's body left to be streamed.

        For an event stream, or the answer to a streamed upload of ``content``.

        Raises:
            UpstreamError: any answer but 2xx (its body read), or a network error.
        """
        extra: dict[str, Any] = {"headers": dict(headers or {})}
        if timeout is not None:
            extra["timeout"] = timeout
        request = self._request(method, service, path, key, params, content=content, **extra)
        response = await self._send(service, request, stream=True)
        try:
            if not response.is_success:
                await response.aread()
                raise UpstreamError(service, response.status_code, _message(response))
            yield response
        finally:
            await response.aclose()
