"""OpenAPI extras: request body examples checked against their models, one id per operation."""

from __future__ import annotations

import re
import warnings
from collections import Counter
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


DUPLICATE_ID_WARNING = "Duplicate Operation ID"
"""The start of FastAPI's warning of an operation id given twice."""


def unique_operation_ids(document: dict[str, Any]) -> list[str]:
    """Give each operation of a multi-method route its own id, ending in its method.

    FastAPI names every method of such a route (``GET`` and ``HEAD`` of a download) after
    whichever method its set yields first, which changes from process to process. Changes
    ``document`` in place; returns the ids still given twice (none, unless two routes share one).
    """
    operations = [
        (method, operation)
        for item in document.get("paths", {}).values()
        for method, operation in item.items()
        if isinstance(operation, dict) and "operationId" in operation
    ]
    seen = Counter(operation["operationId"] for _, operation in operations)
    for method, operation in operations:
        if seen[operation["operationId"]] > 1:
            operation["operationId"] = re.sub(r"_[a-z]+$", f"_{method}", operation["operationId"])
    after = Counter(operation["operationId"] for _, operation in operations)
    return sorted(name for name, count in after.items() if count > 1)


def one_operation_id_per_method(app: FastAPI) -> None:
    """Make ``app``'s OpenAPI document give each method of a route its own operation id.

    FastAPI warns of the id that the methods of a ``GET``/``HEAD`` route share; that warning is
    not shown, since the ids are made unique here. An id that two routes share stays a warning.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", DUPLICATE_ID_WARNING, UserWarning)
            schema = build()
        for name in unique_operation_ids(schema):
            warnings.warn(f"{DUPLICATE_ID_WARNING} {name} on two routes", UserWarning, stacklevel=2)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
