"""Equal KV payloads share one parsed value in a mirror; different ones never do."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from gaggle_runtime import mirror as mirror_module
from gaggle_runtime.mirror import BucketMirror


class Value(BaseModel):
    model_config = ConfigDict(frozen=True)

    n: int
    token: str | None = None


def test_equal_payloads_share_one_parsed_value() -> None:
    m = BucketMirror("b", Value)
    for i in range(100):
        m.apply(m.values, f"dev-{i}", None, b'{"n": 1}')
    assert len(m.values) == 100
    assert len({id(v) for v in m.values.values()}) == 1
    assert m.values["dev-7"] == Value(n=1)


def test_different_payloads_keep_their_own_values() -> None:
    m = BucketMirror("b", Value)
    m.apply(m.values, "a", None, b'{"n": 1, "token": "x"}')
    m.apply(m.values, "b", None, b'{"n": 1, "token": "y"}')
    m.apply(m.values, "c", None, b'{"n": 2}')
    assert m.values["a"].token == "x"
    assert m.values["b"].token == "y"
    assert m.values["c"].n == 2
    # A shared value is frozen: no device can change another's entry through it.
    with pytest.raises(ValidationError):
        m.values["c"].n = 3  # type: ignore[misc]


def test_a_changed_entry_gets_the_new_value_and_deletes_still_delete() -> None:
    m = BucketMirror("b", Value)
    m.apply(m.values, "a", None, b'{"n": 1}')
    m.apply(m.values, "b", None, b'{"n": 1}')
    m.apply(m.values, "a", None, b'{"n": 2}')
    assert (m.values["a"].n, m.values["b"].n) == (2, 1)
    m.apply(m.values, "b", "DEL", None)
    assert "b" not in m.values


def test_a_malformed_payload_leaves_the_entry_as_it_was_also_when_seen_before() -> None:
    m = BucketMirror("b", Value)
    m.apply(m.values, "a", None, b'{"n": 1}')
    for _ in range(2):
        m.apply(m.values, "a", None, b'{"n": "not a number"}')
        assert m.values["a"].n == 1


def test_the_remembered_payloads_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mirror_module, "SHARED_PAYLOADS", 8)
    m = BucketMirror("b", Value)
    for i in range(100):
        m.apply(m.values, f"dev-{i}", None, b'{"n": %d}' % i)
        assert len(m._parsed) <= 8
    assert [m.values[f"dev-{i}"].n for i in range(100)] == list(range(100))


def test_compact_is_applied_once_per_distinct_payload() -> None:
    calls: list[Value] = []

    def compact(value: Value) -> Value:
        calls.append(value)
        return value.model_copy(update={"token": "compacted"})

    m = BucketMirror("b", Value, compact=compact)
    for i in range(10):
        m.apply(m.values, f"dev-{i}", None, b'{"n": 1}')
    assert len(calls) == 1
    assert {v.token for v in m.values.values()} == {"compacted"}
