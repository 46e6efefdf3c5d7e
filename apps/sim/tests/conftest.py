"""A tiny asyncio HTTP/1.1 server and a fake DDI server built on it, for the simulator's tests.

``MiniServer`` answers each request with what its handler returns (a :class:`Reply`) and can
misbehave on purpose: chunked bodies, bodies cut short, bodies ended by closing, slow answers.
``FakeDdi`` plays a hawkBit-style server (``?c=`` on deploymentBase, softwaremodules download
links, three hashes, cancel) or a gooseBit-style one (no ``?c=``, ``/{id}/download``, SHA-1 only,
integer feedback ids), and records what each device sent. It can trail behind on purpose: offer a
closed action for a few more polls (``reoffer_polls``), or take a final report and answer it 503
(``lose_final_answers``), as a server whose answer was lost on the way.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False
    chunk_size: int = 7
    cut_after: int | None = None
    """Announce the full Content-Length, send only this many body bytes, then close."""
    until_close: bool = False
    """No Content-Length: the body ends when the connection closes."""
    close: bool = False
    drop: bool = False
    """Close the connection without answering (a keep-alive timeout racing the request)."""
    delay: float = 0.0

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json"})


Handler = Callable[[Seen], Reply | Awaitable[Reply]]


class MiniServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.requests: list[Seen] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> MiniServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self._writers):
                writer.close()
            await self.server.wait_closed()

    def drop_idle_connections(self) -> None:
        for writer in list(self._writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self._writers.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    raw = await reader.readline()
                    if raw in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen = Seen(method, target, headers, body, number, time.monotonic())
                self.requests.append(seen)
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                try:
                    reply = self.handler(seen)
                    if inspect.isawaitable(reply):
                        reply = await reply
                    if reply.delay:
                        await asyncio.sleep(reply.delay)
                finally:
                    self.active -= 1
                if not await self._write(writer, reply, head_only=method == "HEAD"):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _write(self, writer: asyncio.StreamWriter, reply: Reply, head_only: bool) -> bool:
        if reply.drop:
            return False
        head = [f"HTTP/1.1 {reply.status} X"]
        head += [f"{k}: {v}" for k, v in reply.headers.items()]
        if reply.chunked:
            head.append("Transfer-Encoding: chunked")
        elif not reply.until_close:
            head.append(f"Content-Length: {len(reply.body)}")
        if reply.close:
            head.append("Connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if head_only:
            await writer.drain()
            return not reply.close
        body = reply.body
        if reply.cut_after is not None:
            writer.write(body[: reply.cut_after])
            await writer.drain()
            return False
        if reply.chunked:
            for i in range(0, len(body), reply.chunk_size):
                part = body[i : i + reply.chunk_size]
                writer.write(b"%x;ext=1\r\n" % len(part) + part + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\nX-Trailer: yes\r\n\r\n")
        else:
            writer.write(body)
        await writer.drain()
        return not (reply.close or reply.until_close)


@pytest.fixture
async def mini_server() -> AsyncIterator[Callable[[Handler], Awaitable[MiniServer]]]:
    servers: list[MiniServer] = []

    async def start(handler: Handler) -> MiniServer:
        server = await MiniServer(handler).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


# -- a fake DDI server ----------------------------------------------------------------------------


@dataclass
class FakeAction:
    action_id: str
    controller_id: str
    status: str = "open"  # open, canceling, finished, error, canceled
    feedback: list[dict[str, Any]] = field(default_factory=list)
    reoffers_left: int = 0
    """Polls that still offer this action after it closed."""


class FakeDdi:
    """A DDI server in the style of hawkBit (``style="hawkbit"``) or gooseBit (``"goosebit"``)."""

    def __init__(
        self,
        *,
        style: str = "hawkbit",
        tenant: str = "DEFAULT",
        sleep: str = "00:00:01",
        artifact: bytes = b"",
        version: str = "2.0.0",
        filename: str = "image-2.0.0.swu",
        chunk_version: bool = True,
        reoffer_polls: int = 0,
        lose_final_answers: int = 0,
    ) -> None:
        self.style = style
        self.tenant = tenant
        self.sleep = sleep
        self.artifact = artifact
        self.served = artifact
        """What downloads actually send (tamper with it to break the checksum)."""
        self.version = version
        self.filename = filename
        self.chunk_version = chunk_version
        self.reoffer_polls = reoffer_polls
        """After an action closed, this many polls still offer it."""
        self.lose_final_answers = lose_final_answers
        """The first this many closing reports are taken, then answered 503."""
        self.registered: dict[str, dict[str, str]] = {}
        self.config_puts: dict[str, list[dict[str, Any]]] = {}
        self.actions: dict[str, FakeAction] = {}
        self.problems: list[str] = []
        self.server: MiniServer | None = None
        self._next_id = 100

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"{self.server.url}/{self.tenant}"

    def dev(self, cid: str) -> str:
        return f"{self.base_url}/controller/v1/{cid}"

    def assign(self, cid: str) -> FakeAction:
        if self.style == "goosebit":
            action_id = "7"  # gooseBit uses the software id
        else:
            self._next_id += 1
            action_id = str(self._next_id)
        action = FakeAction(action_id, cid)
        self.actions[cid] = action
        return action

    def requests_of(self, cid: str) -> list[Seen]:
        assert self.server is not None
        prefix = f"/{self.tenant}/controller/v1/{cid}"
        return [
            r
            for r in self.server.requests
            if r.path == prefix or r.path.startswith((prefix + "/", prefix + "?"))
        ]

    # -- handler ----------------------------------------------------------------------------

    def handle(self, req: Seen) -> Reply:
        prefix = f"/{self.tenant}/controller/v1/"
        if not req.path.startswith(prefix):
            return Reply(404)
        path = req.path[len(prefix) :].partition("?")[0]
        parts = path.split("/")
        cid, rest = parts[0], parts[1:]
        action = self.actions.get(cid)
        if not rest:
            return self._poll(cid, action)
        if rest == ["configData"] and req.method == "PUT":
            body = req.json()
            if not isinstance(body.get("data"), dict) or not body["data"]:
                self.problems.append(f"{cid}: configData without data")
                return Reply(400)
            self.registered[cid] = dict(body["data"])
            self.config_puts.setdefault(cid, []).append(body)
            return Reply.json({"success": True}) if self.style == "goosebit" else Reply()
        if rest[0] == "deploymentBase" and action is not None and rest[1] == action.action_id:
            if len(rest) == 2 and req.method == "GET":
                if action.status != "open":
                    return Reply(404)
                return Reply.json(self._deployment(cid, action))
            if rest[2:] == ["feedback"] and req.method == "POST":
                return self._feedback(cid, action, req)
        if rest[0] == "cancelAction" and action is not None and rest[1] == action.action_id:
            if len(rest) == 2 and req.method == "GET" and action.status == "canceling":
                return Reply.json(
                    {"id": action.action_id, "cancelAction": {"stopId": action.action_id}}
                )
            if rest[2:] == ["feedback"] and req.method == "POST":
                status = req.json()["status"]
                action.feedback.append(status)
                if status["execution"] == "closed":
                    action.status = "canceled"
                    action.reoffers_left = self.reoffer_polls
                return Reply()
        if self._is_download(rest) and action is not None:
            return self._download(req)
        self.problems.append(f"unexpected {req.method} {req.path}")
        return Reply(404)

    def _poll(self, cid: str, action: FakeAction | None) -> Reply:
        links: dict[str, Any] = {}
        base = self.dev(cid)
        stale = action is not None and action.reoffers_left > 0
        if stale:
            action.reoffers_left -= 1
        if action is not None and (
            action.status == "open" or (stale and action.status in ("finished", "error"))
        ):
            query = "" if self.style == "goosebit" else "?c=-2129030598"
            links["deploymentBase"] = {"href": f"{base}/deploymentBase/{action.action_id}{query}"}
        elif action is not None and (
            action.status == "canceling" or (stale and action.status == "canceled")
        ):
            links["cancelAction"] = {"href": f"{base}/cancelAction/{action.action_id}"}
        if cid not in self.registered:
            links["configData"] = {"href": f"{base}/configData"}
        return Reply.json({"config": {"polling": {"sleep": self.sleep}}, "_links": links})

    def _deployment(self, cid: str, action: FakeAction) -> dict[str, Any]:
        base = self.dev(cid)
        data = self.artifact
        if self.style == "goosebit":
            hashes = {"sha1": hashlib.sha1(data).hexdigest()}  # noqa: S324
            links = {"download": {"href": f"{base}/download"}}
        else:
            hashes = {
                "sha1": hashlib.sha1(data).hexdigest(),  # noqa: S324
                "md5": hashlib.md5(data).hexdigest(),  # noqa: S324
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            url = f"{base}/softwaremodules/1/artifacts/{self.filename}"
            links = {"download": {"href": url}, "download-http": {"href": url}}
        chunk: dict[str, Any] = {"part": "os", "name": "image"}
        if self.chunk_version:
            chunk["version"] = self.version
        chunk["artifacts"] = [
            {"filename": self.filename, "hashes": hashes, "size": len(data), "_links": links}
        ]
        return {
            "id": action.action_id,
            "deployment": {"download": "forced", "update": "forced", "chunks": [chunk]},
        }

    def _feedback(self, cid: str, action: FakeAction, req: Seen) -> Reply:
        body = req.json()
        status = body["status"]
        if self.style == "goosebit":
            # gooseBit's schema: id an integer, progress with cnt (and of) when present.
            if not isinstance(body.get("id"), int):
                self.problems.append(f"{cid}: feedback id {body.get('id')!r} is not an int")
                return Reply(422)
            progress = status["result"].get("progress")
            if progress is not None and "cnt" not in progress:
                self.problems.append(f"{cid}: progress without cnt")
                return Reply(422)
        if action.status in ("finished", "error"):
            return Reply(410)
        action.feedback.append(status)
        if status["execution"] == "closed":
            finished = status["result"]["finished"]
            action.status = "error" if finished == "failure" else "finished"
            action.reoffers_left = self.reoffer_polls
            if self.lose_final_answers > 0:
                self.lose_final_answers -= 1
                return Reply(503)
        return Reply.json({"id": action.action_id}) if self.style == "goosebit" else Reply()

    def _is_download(self, rest: list[str]) -> bool:
        if self.style == "goosebit":
            return rest == ["download"]
        return rest[:1] == ["softwaremodules"] and rest[-1] == self.filename

    def _download(self, req: Seen) -> Reply:
        data = self.served
        etag = f'"{hashlib.sha1(self.artifact).hexdigest()}"'  # noqa: S324
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        spec = req.headers.get("range")
        ranged = spec and spec.startswith("bytes=") and spec.endswith("-")
        if ranged and req.headers.get("if-range", etag) == etag:
            start = int(spec[len("bytes=") : -1])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return Reply(206, data[start:], headers)
        return Reply(200, data, headers)


@pytest.fixture
async def fake_ddi() -> AsyncIterator[Callable[..., Awaitable[FakeDdi]]]:
    servers: list[MiniServer] = []

    async def start(**kwargs: Any) -> FakeDdi:
        fake = FakeDdi(**kwargs)
        fake.server = await MiniServer(fake.handle).start()
        servers.append(fake.server)
        return fake

    yield start
    for server in servers:
        await server.close()
