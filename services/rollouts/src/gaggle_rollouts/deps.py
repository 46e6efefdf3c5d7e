"""The parts the operator API's routes are given, by FastAPI's ``Depends``, from ``app.state``.

:func:`gaggle_rollouts.app.build_app` puts them there; a test may put fakes there instead.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gaggle_contracts.access import Permission
from gaggle_rollouts.actions import Actions
from gaggle_rollouts.caps import TenantApprovals
from gaggle_rollouts.choosing import Chooser
from gaggle_rollouts.engine import Engine
from gaggle_rollouts.health_store import Health
from gaggle_rollouts.known import ReadThrough
from gaggle_rollouts.policies import Policies
from gaggle_rollouts.rollout_reads import RolloutReads
from gaggle_rollouts.rollout_store import RolloutStore
from gaggle_rollouts.usecases import UseCases
from gaggle_runtime.auth import PRINCIPAL, Principal, needs
from gaggle_runtime.state import part

ActionsDep = Annotated[Actions, part("actions")]
UseCasesDep = Annotated[UseCases, part("usecases")]
PoliciesDep = Annotated[Policies, part("policies")]
ChooserDep = Annotated[Chooser, part("chooser")]
KnownDep = Annotated[ReadThrough, part("known")]
StoreDep = Annotated[RolloutStore, part("store")]
ReadsDep = Annotated[RolloutReads, part("reads")]
EngineDep = Annotated[Engine, part("engine")]
ApprovalsDep = Annotated[TenantApprovals, part("approvals")]


def _actor(request: Request) -> str:
    principal = request.scope.get("state", {}).get(PRINCIPAL)
    return principal.actor if isinstance(principal, Principal) else "unknown"


Actor = Annotated[str, Depends(_actor)]
"""Who the caller is, as the audit log names them."""
HealthDep = Annotated[Health, part("health")]

Reader = Annotated[str, needs(Permission.ROLLOUT_READ)]
"""The tenant of a caller allowed to read rollouts' data."""
Writer = Annotated[str, needs(Permission.ROLLOUT_WRITE)]
"""The tenant of a caller allowed to change it."""
Approver = Annotated[str, needs(Permission.ROLLOUT_APPROVE)]
"""The tenant of a caller allowed to approve or deny rollouts."""
