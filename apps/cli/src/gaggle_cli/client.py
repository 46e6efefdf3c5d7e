"""HTTP to the services, and every failure turned into one clear line.

A refusal by a service (``{"error": ..., "message": ...}`` with a 4xx or 5xx status) becomes
``<service> answered <status> <error>: <message>`` (exit 1); a service that cannot be reached
becomes ``cannot reach <service> at <url>: <reason>`` (exit 2).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

import click
import httpx

from gaggle_cli.config import KEY_ENV, Config

EXIT_ERROR = 1
EXIT_UNREACHABLE = 2
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130

_ERRNO = re.compile(r"^\[Errno -?\d+\]\s*")


class CliError(Exception):
    """An error shown as one line, ``gaggle: <message>``, ending the command with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the one line on stderr."""
        click.echo(f"gaggle: {self.message}", err=True, file=file)


def _reason(exc: BaseException) -> str:
    """A short, lower-case reason from a connection error (``connection refused``)."""
    text = str(exc) or type(exc).__name__
    # httpx wraps the socket error; the innermost message is the useful one.
    inner: BaseException | None = exc
    while inner is not None and inner.__cause__ is not None:
        inner = inner.__cause__
        text = str(inner) or text
    text = _ERRNO.sub("", text.strip()).splitlines()[0] if text.strip() else text
    if "refused" in text.lower():
        return "connection refused"
    return text[:1].lower() + text[1:] if text else type(exc).__name__


def _short(text: str, limit: int = 200) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def refusal(service: str, response: httpx.Response, key_source: str | None) -> CliError:
    """The one-line error for an answer with status 400 or more."""
    status = response.status_code
    code = ""
    message = ""
    extras: list[str] = []
    try:
        body = json.loads(response.read() or b"null")
    except (ValueError, httpx.HTTPError):
        body = None
    if isinstance(body, dict) and ("error" in body or "message" in body or "detail" in body):
        code = str(body.get("error") or "")
        message = str(body.get("message") or body.get("detail") or "")
        for name, value in body.items():
            if name in ("error", "message", "detail") or value is None:
                continue
            if isinstance(value, str | int | float):
                extras.append(f"{name} {value}")
    else:
        with contextlib.suppress(Exception):
            message = _short(response.text)
    head = f"{service} answered {status}"
    if code:
        head += f" {code}"
    text = f"{head}: {message}" if message else head
    if extras:
        text += f" ({', '.join(extras)})"
    if status == 401:
        where = f"the key from {key_source}" if key_source else "the API key"
        text += f"; check {where}"
    return CliError(text)


class Api:
    """The operator APIs of registry, artifacts and rollouts over one HTTP client.

    Args:
        config: targets, key and timeout.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._client: httpx.Client | None = None

    @property
    def client(self) -> httpx.Client:
        """The HTTP client, made at first use (it needs the key).

        Raises:
            CliError: no API key was found anywhere.
        """
        if self._client is None:
            if not self.config.key:
                raise CliError(
                    f"no API key: pass --key, set {KEY_ENV}, put `key` in the config file, "
                    "or run where `make run` wrote .gaggle/admin.key"
                )
            self._client = httpx.Client(
                timeout=self.config.timeout,
                headers={
                    "Authorization": f"Bearer {self.config.key}",
                    "User-Agent": "gaggle-cli/0.1",
                },
            )
        return self._client

    def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def url(self, service: str, path: str) -> str:
        """The full URL of ``path`` on ``service``."""
        return self.config.url(service) + path

    @contextlib.contextmanager
    def _errors(self, service: str) -> Iterator[None]:
        base = self.config.url(service)
        try:
            yield
        except httpx.ConnectError as exc:
            raise CliError(
                f"cannot reach {service} at {base}: {_reason(exc)}", EXIT_UNREACHABLE
            ) from None
        except httpx.TimeoutException:
            raise CliError(
                f"{service} at {base} did not answer within {self.config.timeout:g} s",
                EXIT_UNREACHABLE,
            ) from None
        except httpx.UnsupportedProtocol:
            raise CliError(f"{service} URL {base!r} is not an http(s) URL") from None
        except httpx.InvalidURL as exc:
            raise CliError(f"{service} URL {base!r} is not valid: {exc}") from None
        except httpx.HTTPError as exc:
            raise CliError(
                f"lost the connection to {service} at {base}: {_reason(exc)}", EXIT_UNREACHABLE
            ) from None

    def pages(
        self, service: str, path: str, params: Mapping[str, Any], every: bool
    ) -> tuple[list[Any], str | None]:
        """The items of a paged listing: one page, or (``every``) all of them via ``next``.

        Returns:
            The items and the cursor of the page after them (None at the end).
        """
        items: list[Any] = []
        cursor = params.get("cursor")
        while True:
            page = self.request(service, "GET", path, params={**params, "cursor": cursor})
            items.extend(page.get("items") or [])
            cursor = page.get("next")
            if not (every and cursor):
                return items, cursor

    def request(
        self,
        service: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        content: Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One request; the answer's JSON.

        Args:
            service: ``registry``, ``artifacts`` or ``rollouts``.
            method: HTTP method.
            path: path below the service's URL, e.g. ``/api/v1/devices``.
            params: query parameters; None values are left out.
            json_body: a JSON body.
            content: a raw body (streamed).
            headers: more headers.

        Returns:
            The decoded JSON of a 2xx answer.

        Raises:
            CliError: a refusal, a service that cannot be reached, an answer that is not JSON.
        """
        query = {k: v for k, v in (params or {}).items() if v is not None}
        with self._errors(service):
            response = self.client.request(
                method,
                self.url(service, path),
                params=query,
                json=json_body,
                content=content,
                headers=dict(headers or {}),
            )
        if response.status_code >= 400:
            raise refusal(service, response, self.config.key_source)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"{service} answered {response.status_code} with something that is not JSON"
            ) from None

    @contextlib.contextmanager
    def stream(
        self, service: str, path: str, *, params: Mapping[str, Any] | None = None
    ) -> Iterator[Iterator[str]]:
        """``GET`` a streaming answer (no read timeout); yields its lines as they come.

        Raises:
            CliError: a refusal, or a service that cannot be reached or goes away.
        """
        query = {k: v for k, v in (params or {}).items() if v is not None}
        timeout = httpx.Timeout(self.config.timeout, read=None)
        with (
            self._errors(service),
            self.client.stream(
                "GET", self.url(service, path), params=query, timeout=timeout
            ) as response,
        ):
            if response.status_code >= 400:
                raise refusal(service, response, self.config.key_source)
            yield response.iter_lines()
