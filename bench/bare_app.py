"""The baseline for ``poll_bench.py``: a bare FastAPI endpoint on the DDI poll path.

Same route shape as the gateway's base poll (two path parameters), no dependencies, no lookup,
no lifespan work: it returns a fixed JSON body, by default exactly as long as a poll answer of a
known device. ``BENCH_BARE_RENDER=bytes`` (default) returns the body pre-rendered, as the gateway
returns its orjson bytes; ``dict`` returns a dict that FastAPI serialises itself (the usual
"hello world", slower). ``poll_bench.py`` passes the gateway's real answer in
``BENCH_BARE_BODY`` so both bodies have the same size. Served with the gateway's uvicorn options
(uvloop, httptools, no access log) through :func:`gaggle_runtime.serve.run`::

    PYTHONPATH=bench .venv/bin/python -m bare_app --port 8090 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from gaggle_runtime.serve import run

DEFAULT_BODY = b'{"config":{"polling":{"sleep":"00:01:00"}},"_links":{}}'
"""What the gateway answers a known device with nothing to do (55 bytes)."""


def create_app() -> FastAPI:
    """App factory (one call per worker process)."""
    body = os.environ.get("BENCH_BARE_BODY", "").encode() or DEFAULT_BODY
    as_dict = os.environ.get("BENCH_BARE_RENDER", "bytes") == "dict"
    doc: dict[str, Any] = json.loads(body)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # poll_bench.py counts these lines to know every worker accepts connections.
        sys.stderr.write(f"bare worker ready pid={os.getpid()}\n")
        sys.stderr.flush()
        yield

    app = FastAPI(title="bare baseline", lifespan=lifespan)

    @app.get("/{tenant}/controller/v1/{controller_id}")
    async def poll(tenant: str, controller_id: str) -> Any:
        if as_dict:
            return doc
        return Response(body, media_type="application/hal+json")

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    return app


def main() -> None:
    """Serve the bare app until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    run("bare_app:create_app", args.host, args.port, workers=args.workers)


if __name__ == "__main__":
    main()
