"""Rollout rules, pure: wave sizes, counters, when a wave starts, when a rollout stops.

Like hawkBit's rollout groups (hawkbit-concepts.md), a rollout's devices are split into waves when
it is created. The first wave starts with the rollout; each next wave starts once the success
condition holds for the wave before it; the error threshold is checked over every device of the
started waves, and past it the rollout pauses or aborts, as the operator chose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

MemberState = Literal[
    "waiting", "pending", "running", "success", "failure", "canceled", "timed_out", "rolled_back"
]
"""``waiting``: its wave has not started; ``pending``: queued for its action (counted as
``queued``); ``running``: its action is open; then how its action ended (``timed_out`` and
``rolled_back`` are failures of their own kind, see :mod:`~gaggle_rollouts.health`)."""
FAILURE_KINDS: frozenset[str] = frozenset({"failure", "timed_out", "rolled_back"})
"""Member states that count against the error threshold."""
RolloutState = Literal["created", "running", "paused", "finished", "aborted"]
ErrorAction = Literal["pause", "abort"]
Approval = Literal["pending", "approved", "denied"]
"""Where a rollout's approval stands, for tenants that ask for approval."""

ACTIVE_STATES: frozenset[str] = frozenset({"running", "paused"})
CLOSED_STATES: frozenset[str] = frozenset({"finished", "aborted"})


@dataclass(frozen=True)
class WaveSpec:
    """One wave as the operator gives it: a share of the devices or a number of them."""

    percent: int | None = None
    count: int | None = None


def wave_sizes(total: int, specs: Sequence[WaveSpec]) -> list[int]:
    """How many of ``total`` devices go in each wave; devices left over form one more wave.

    Percentages are of ``total`` and rounded down (never to an empty first wave when there are
    devices); when they add up to 100, what rounding left over joins the last wave. Counts are
    taken as given while devices last.
    """
    sizes: list[int] = []
    left = total
    for spec in specs:
        if spec.percent is not None:
            want = total * spec.percent // 100
            if not sizes and want == 0 and spec.percent > 0:
                want = 1
        else:
            want = spec.count or 0
        take = min(want, left)
        sizes.append(take)
        left -= take
    if left > 0:
        if sizes and sum(spec.percent or 0 for spec in specs) == 100:
            sizes[-1] += left  # what rounding down left over
        else:
            sizes.append(left)
    return sizes


@dataclass
class Counters:
    """Where the devices of a rollout (or of one wave) stand."""

    total: int = 0
    pending: int = 0
    """Not started yet: their wave has not begun, or their action is not open yet."""
    queued: int = 0
    """Of ``pending``, those whose wave started: waiting for a free slot under the tenant's cap
    on updates in flight (or for the rollout to resume). Neither successes nor failures."""
    running: int = 0
    success: int = 0
    failure: int = 0
    """Every failure: errors, time-outs and rollbacks."""
    canceled: int = 0
    timed_out: int = 0
    """Of ``failure``, actions that timed out (or devices that went silent in the soak)."""
    rolled_back: int = 0
    """Of ``failure``, devices that fell back to their old version after success."""
    soaking: int = 0
    """Of ``success``, devices still in the rollout's soak time: not counted towards the next
    wave until it ends."""

    def add(self, state: str, n: int, soaking: int = 0) -> None:
        """Count ``n`` devices in ``state`` (``soaking`` of them in their soak, for successes)."""
        self.total += n
        if state in ("waiting", "pending"):
            self.pending += n
            if state == "pending":
                self.queued += n
        elif state in FAILURE_KINDS:
            self.failure += n
            if state != "failure":
                setattr(self, state, getattr(self, state) + n)
        else:
            setattr(self, state, getattr(self, state) + n)
            if state == "success":
                self.soaking += soaking

    def public(self) -> dict[str, int]:
        """The operator's view."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def done(self) -> int:
        """Devices whose part in the rollout is over."""
        return self.success + self.failure + self.canceled

    @property
    def soaked(self) -> int:
        """Successes that count: those whose soak is over (or that had none)."""
        return self.success - self.soaking

    def failure_kinds(self) -> str:
        """The failures broken down, for a reason: ``3 rolled back, 1 timed out``."""
        parts = [
            f"{n} {name}"
            for n, name in (
                (self.failure - self.timed_out - self.rolled_back, "failed"),
                (self.timed_out, "timed out"),
                (self.rolled_back, "rolled back"),
            )
            if n
        ]
        return ", ".join(parts)


@dataclass
class Progress:
    """A rollout's counters, overall and per wave."""

    waves: dict[int, Counters] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Iterable[Sequence[Any]]) -> Progress:
        """From ``(wave, state, count)`` or ``(wave, state, count, soaking)`` rows."""
        progress = cls()
        for wave, state, n, *rest in rows:
            progress.waves.setdefault(wave, Counters()).add(state, n, rest[0] if rest else 0)
        return progress

    def wave(self, n: int) -> Counters:
        """Counters of wave ``n`` (empty if it has no devices)."""
        return self.waves.get(n, Counters())

    def overall(self) -> Counters:
        """Counters of the whole rollout."""
        total = Counters()
        for counters in self.waves.values():
            for f in fields(Counters):
                setattr(total, f.name, getattr(total, f.name) + getattr(counters, f.name))
        return total


@dataclass(frozen=True)
class Step:
    """What a running rollout should do now."""

    kind: Literal["none", "next_wave", "pause", "abort", "finish"]
    reason: str | None = None


def next_step(
    *,
    current_wave: int,
    wave_count: int,
    progress: Progress,
    success_threshold: int,
    error_threshold: int,
    error_action: ErrorAction,
    failures_forgiven: int = 0,
) -> Step:
    """The next step of a running rollout, from its counters.

    The error threshold comes first: a rollout past it never starts another wave. Failures (errors,
    time-outs, rollbacks) count against every device of the started waves, so early failures do
    not trip a threshold that the wave as a whole stays under (a 20 % threshold on a wave of 100
    trips at the 21st failure). Failures from before the operator resumed a rollout
    (``failures_forgiven``) do not count again. Successes still in their soak time count towards
    neither the next wave nor the rollout's end.
    """
    started = [progress.wave(w) for w in range(1, current_wave + 1)]
    size = sum(c.total for c in started)
    failed = sum(c.failure for c in started) - failures_forgiven
    if size and failed * 100 > error_threshold * size:
        kinds = Counters()
        for c in started:
            kinds.failure += c.failure
            kinds.timed_out += c.timed_out
            kinds.rolled_back += c.rolled_back
        reason = (
            f"error threshold exceeded: {failed} of {size} devices failed "
            f"({failed * 100 / size:.1f} % > {error_threshold} %)"
        )
        if kinds.timed_out or kinds.rolled_back:
            reason += f"; so far {kinds.failure_kinds()}"
        return Step(error_action, reason)
    if current_wave < wave_count:
        wave = progress.wave(current_wave)
        if wave.soaked * 100 >= success_threshold * wave.total:
            return Step("next_wave", f"wave {current_wave} met its success condition")
        return Step("none")
    overall = progress.overall()
    if overall.pending == 0 and overall.running == 0 and overall.soaking == 0:
        return Step("finish", "every device is done")
    return Step("none")


def free_slots(cap: int | None, in_flight: int, chunk: int) -> int:
    """How many actions may be opened now: what the tenant's cap leaves free, a chunk at most.

    ``cap`` is the tenant's cap on devices with an open action (None: not known yet, so nothing
    opens); ``in_flight`` counts the tenant's open actions, whatever opened them.
    """
    if cap is None:
        return 0
    return max(0, min(cap - in_flight, chunk))


def transition(state: str, command: str, approval: str | None = None) -> RolloutState | None:
    """The state an operator command leads to, or None when it is not allowed from ``state``.

    ``approval`` is where the rollout's approval stands (None: its tenant asks for none). A rollout
    waiting for approval (``pending``) cannot start; ``approve`` and ``deny`` apply to it alone:
    approval leaves it ``created``, ready to start, and denial aborts it.
    """
    if command in ("approve", "deny"):
        if state != "created" or approval != "pending":
            return None
        return "created" if command == "approve" else "aborted"
    if command == "start" and approval == "pending":
        return None
    allowed: Mapping[str, Mapping[str, RolloutState]] = {
        "start": {"created": "running"},
        "pause": {"running": "paused"},
        "resume": {"paused": "running"},
        "abort": {"created": "aborted", "running": "aborted", "paused": "aborted"},
    }
    return allowed.get(command, {}).get(state)


def refusal(state: str, command: str, approval: str | None) -> str:
    """Why :func:`transition` refuses ``command``, in the operator's words."""
    if command == "start" and state == "created" and approval == "pending":
        return "cannot start the rollout: it waits for approval"
    if command in ("approve", "deny"):
        if approval is None:
            return f"cannot {command} the rollout: it needs no approval"
        if approval != "pending":
            return f"cannot {command} the rollout: it was {approval} already"
    return f"cannot {command} a {state} rollout"


def approval_on_create(required: bool) -> Approval | None:
    """Where a new rollout's approval stands: ``pending`` when its tenant asks for approval."""
    return "pending" if required else None


def approval_after(command: str) -> Approval:
    """Where the approval stands after ``approve`` or ``deny``."""
    return "approved" if command == "approve" else "denied"
