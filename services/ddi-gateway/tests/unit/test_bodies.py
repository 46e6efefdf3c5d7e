"""Device bodies: JSON with text the store cannot keep is read, not refused; quotas are 429."""

from __future__ import annotations

import pytest

from gaggle_contracts.ddi import ConfigDataBody, FeedbackBody
from gaggle_gateway.bodies import load_json, parse_body
from gaggle_gateway.errors import BadRequest, QuotaExceeded
from gaggle_gateway.fastlane import encoded_id_refusal


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b'{"a": "x\\u0000y"}', {"a": "x\x00y"}),
        (b'{"a": "x\\ud800y"}', {"a": "x\ud800y"}),  # valid JSON, refused by orjson
        (b'{"a": "\\udc00\\ud800"}', {"a": "\udc00\ud800"}),
        (b'{"a": "\xff\xfe"}', {"a": "\udcff\udcfe"}),  # not UTF-8: kept for the models
        (b'{"a": "\xed\xa0\x80"}', {"a": "\udced\udca0\udc80"}),  # an encoded surrogate
        (b"", {}),
        (b"  ", {}),
    ],
)
def test_json_that_orjson_refuses_only_for_its_text_is_read(data: bytes, value: object) -> None:
    assert load_json(data) == value


@pytest.mark.parametrize("data", [b"{not json", b'{"a": "\xff', b"\xff\xfe"])
def test_what_is_not_json_is_still_a_400(data: bytes) -> None:
    with pytest.raises(BadRequest, match="malformed JSON"):
        load_json(data)


def test_a_body_with_unstorable_text_validates_clean() -> None:
    body = parse_body(b'{"data": {"hw_boardname": "b\\u0000", "k\xff": "\\ud800"}}', ConfigDataBody)
    assert body.data == {"hw_boardname": "b\ufffd", "k\ufffd": "\ufffd"}
    assert body.replaced == 3


def test_quotas_are_429_and_other_refusals_400() -> None:
    many = b'{"status": {"execution": "proceeding", "result": {"finished": "none"}, "details": ['
    many += b",".join([b'"x"'] * 51) + b"]}}"
    with pytest.raises(QuotaExceeded, match="at most 50 messages per status") as exc:
        parse_body(many, FeedbackBody)
    assert exc.value.status == 429
    with pytest.raises(BadRequest):
        parse_body(b'{"status": {"execution": "exploded"}}', FeedbackBody)


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/t/controller/v1/dev%2F1",
        b"/t/controller/v1/dev%2f1/configData",
        b"/t/controller/v1/%2E%2E",
        b"/t/controller/v1/%2e",
        b"/t/controller/v1/%20dev",
        b"/t/controller/v1/dev%3Fx",
        b"/t/controller/v1/dev%23x",
        b"/t/controller/v1/dev%5Cx/deploymentBase/1",
        b"/t/controller/v1/dev%00",
        b"/t/controller/v1/dev%",
    ],
)
def test_an_encoded_controller_id_must_decode_to_an_accepted_one(raw_path: bytes) -> None:
    refusal = encoded_id_refusal(raw_path)
    assert refusal is not None
    assert refusal.status == 400
    assert "controller id" in refusal.message


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/t/controller/v1/dev-1",
        b"/t/controller/v1/mac%3A00%3A11",  # an encoded ':' is the same id
        b"/t/controller/v1/dev/softwaremodules/1/artifacts/a%20b.swu",
        b"/api/v1/devices/a%2Fb",
        b"/t/controller",
    ],
)
def test_other_paths_and_ids_are_left_to_the_routes(raw_path: bytes) -> None:
    assert encoded_id_refusal(raw_path) is None
