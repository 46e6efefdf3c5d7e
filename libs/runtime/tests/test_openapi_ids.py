"""One operation id per method: a GET/HEAD route documents two operations, without a warning."""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
from fastapi import APIRouter, FastAPI

from gaggle_runtime.openapi import one_operation_id_per_method


def app_with_downloads() -> FastAPI:
    app = FastAPI()
    one_operation_id_per_method(app)
    router = APIRouter()

    @app.api_route("/files/{name}", methods=["GET", "HEAD"])
    async def download(name: str) -> dict[str, str]:
        return {"name": name}

    @router.api_route("/images/{name}/download", methods=["GET", "HEAD"])
    async def image(name: str) -> dict[str, str]:
        return {"name": name}

    @router.get("/images")
    async def images() -> list[str]:
        return []

    app.include_router(router, prefix="/api/v1")
    return app


def operation_ids(document: dict[str, object]) -> dict[tuple[str, str], str]:
    paths = document["paths"]
    assert isinstance(paths, dict)
    return {
        (path, method): operation["operationId"]
        for path, item in paths.items()
        for method, operation in item.items()
    }


def test_each_method_has_its_own_id_and_nothing_warns() -> None:
    app = app_with_downloads()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = operation_ids(app.openapi())
        again = operation_ids(app.openapi())
    assert [str(w.message) for w in caught] == []
    assert ids == again
    assert ids == {
        ("/files/{name}", "get"): "download_files__name__get",
        ("/files/{name}", "head"): "download_files__name__head",
        ("/api/v1/images/{name}/download", "get"): "image_api_v1_images__name__download_get",
        ("/api/v1/images/{name}/download", "head"): "image_api_v1_images__name__download_head",
        ("/api/v1/images", "get"): "images_api_v1_images_get",
    }
    assert max(Counter(ids.values()).values()) == 1


def test_an_id_two_routes_share_still_warns() -> None:
    app = FastAPI()
    one_operation_id_per_method(app)

    @app.get("/a", operation_id="same")
    async def a() -> None:
        return None

    @app.get("/b", operation_id="same")
    async def b() -> None:
        return None

    with pytest.warns(UserWarning, match="Duplicate Operation ID same on two routes"):
        app.openapi()
