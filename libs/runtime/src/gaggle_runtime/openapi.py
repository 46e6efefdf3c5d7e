"""OpenAPI extras: request body examples, checked against their models when the app is built."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel


def add_examples(
    app: FastAPI, examples: Mapping[type[BaseModel], Sequence[dict[str, Any]]]
) -> None:
    """Show ``examples`` in the OpenAPI schema of each model.

    Every example is validated by its model here, so a model that changes breaks the build of the
    app (and its tests) instead of leaving a stale example in the documentation.

    Raises:
        pydantic.ValidationError: an example the model refuses.
    """
    for model, cases in examples.items():
        for case in cases:
            model.model_validate(case)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        components = schema.get("components", {}).get("schemas", {})
        for model, cases in examples.items():
            for name in (model.__name__, f"{model.__name__}-Input"):
                if name in components:
                    components[name]["examples"] = [dict(case) for case in cases]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
