"""The parts the operator API's routes are given, by FastAPI's ``Depends``, from ``app.state``.

:func:`gaggle_rollouts.app.build_app` puts them there; a test may put fakes there instead.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from gaggle_contracts.access import Permission
from gaggle_rollouts.actions import Actions
from gaggle_rollouts.choosing import Chooser
from gaggle_rollouts.engine import Engine
from gaggle_rollouts.known import ReadThrough
from gaggle_rollouts.policies import Policies
from gaggle_rollouts.rollout_reads import RolloutReads
from gaggle_rollouts.rollout_store import RolloutStore
from gaggle_rollouts.usecases import UseCases
from gaggle_runtime.auth import needs


def _state(name: str) -> Any:
    """A dependency that gives ``app.state.<name>``."""

    def given(request: Request) -> Any:
        return getattr(request.app.state, name)

    return Depends(given)


ActionsDep = Annotated[Actions, _state("actions")]
UseCasesDep = Annotated[UseCases, _state("usecases")]
PoliciesDep = Annotated[Policies, _state("policies")]
ChooserDep = Annotated[Chooser, _state("chooser")]
KnownDep = Annotated[ReadThrough, _state("known")]
StoreDep = Annotated[RolloutStore, _state("store")]
ReadsDep = Annotated[RolloutReads, _state("reads")]
EngineDep = Annotated[Engine, _state("engine")]

Reader = Annotated[str, needs(Permission.ROLLOUT_READ)]
"""The tenant of a caller allowed to read rollouts' data."""
Writer = Annotated[str, needs(Permission.ROLLOUT_WRITE)]
"""The tenant of a caller allowed to change it."""
