from __future__ import annotations

import pytest

from gaggle_contracts import kv
from gaggle_contracts.events import FeedbackStatus
from gaggle_gateway.domain import (
    NO_CREDENTIALS,
    Access,
    Credentials,
    attributes_after,
    authorize,
    closes_action,
    parse_authorization,
    poll_body,
    token_hash,
)

OPEN = kv.TenantConfig(anonymous=True, auto_register=True)
CLOSED = kv.TenantConfig(anonymous=False, auto_register=False, gateway_token_hash=token_hash("gw"))
TOKENED = kv.DeviceEntry(token_hash=token_hash("secret"))
PLAIN = kv.DeviceEntry()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, NO_CREDENTIALS),
        ("", NO_CREDENTIALS),
        ("TargetToken ", NO_CREDENTIALS),  # rauc-hawkbit without a token
        ("TargetToken abc", Credentials("target", "abc")),
        ("targettoken  abc ", Credentials("target", "abc")),
        ("GatewayToken g", Credentials("gateway", "g")),
        ("GatewayToken ", None),
        ("Bearer abc", None),
        ("Basic dXNlcjpwYXNz", None),
    ],
)
def test_authorization_header_is_read_like_hawkbit(
    header: str | None, expected: Credentials | None
) -> None:
    assert parse_authorization(header) == expected


@pytest.mark.parametrize(
    ("creds", "tenant", "device", "may_register", "expected"),
    [
        # Embedded default: anonymous polls and auto-registration, like gooseBit.
        (NO_CREDENTIALS, OPEN, None, True, Access.REGISTER),
        (NO_CREDENTIALS, OPEN, PLAIN, True, Access.ALLOW),
        (NO_CREDENTIALS, OPEN, None, False, Access.UNKNOWN),
        # A device with a token must present it, even where anonymous polls are allowed.
        (NO_CREDENTIALS, OPEN, TOKENED, True, Access.DENY),
        (Credentials("target", "secret"), OPEN, TOKENED, True, Access.ALLOW),
        (Credentials("target", "wrong"), OPEN, TOKENED, True, Access.DENY),
        # Anonymous off: no credentials or an unknown device is 401, whether it exists or not.
        (NO_CREDENTIALS, CLOSED, PLAIN, True, Access.DENY),
        (NO_CREDENTIALS, CLOSED, None, True, Access.DENY),
        (Credentials("target", "secret"), CLOSED, TOKENED, False, Access.ALLOW),
        (Credentials("target", "secret"), CLOSED, None, True, Access.DENY),
        (Credentials("target", "secret"), CLOSED, None, False, Access.DENY),
        # Gateway token acts as any device and may register unknown ones on a poll.
        (Credentials("gateway", "gw"), CLOSED, TOKENED, False, Access.ALLOW),
        (Credentials("gateway", "gw"), CLOSED, None, True, Access.REGISTER),
        (Credentials("gateway", "gw"), CLOSED, None, False, Access.UNKNOWN),
        (Credentials("gateway", "nope"), CLOSED, TOKENED, True, Access.DENY),
        (Credentials("gateway", "gw"), OPEN, PLAIN, True, Access.DENY),  # no gateway token set
        # Auto-registration off: an unknown device polling is refused.
        (NO_CREDENTIALS, kv.TenantConfig(auto_register=False), None, True, Access.DENY),
        # TargetToken switched off for the tenant.
        (
            Credentials("target", "secret"),
            kv.TenantConfig(target_token=False),
            TOKENED,
            True,
            Access.DENY,
        ),
        (None, OPEN, PLAIN, True, Access.DENY),  # unusable header
    ],
)
def test_authorize(
    creds: Credentials | None,
    tenant: kv.TenantConfig,
    device: kv.DeviceEntry | None,
    may_register: bool,
    expected: Access,
) -> None:
    assert authorize(creds, tenant, device, may_register=may_register) is expected


BASE = "http://gw/DEFAULT/controller/v1/dev-1"
DOC = kv.DeploymentDoc(
    chunks=[kv.ChunkDoc(module_id="40", name="img", version="1.0", artifacts=[])]
)


def test_poll_of_new_device_offers_config_data_and_always_has_links() -> None:
    body = poll_body(BASE, OPEN, None, None)
    assert body == {
        "config": {"polling": {"sleep": "00:01:00"}},
        "_links": {"configData": {"href": f"{BASE}/configData"}},
    }
    assert poll_body(BASE, OPEN, kv.DeviceEntry(config_requested=False), None)["_links"] == {}


def test_poll_offers_deployment_with_c_hash_and_installed_base() -> None:
    entry = kv.DeploymentEntry(
        open=kv.OpenAction(action_id="8", c="-2127183556", deployment=DOC),
        installed=kv.InstalledAction(action_id="4", deployment=DOC),
    )
    links = poll_body(BASE, OPEN, kv.DeviceEntry(config_requested=False), entry)["_links"]
    assert links == {
        "deploymentBase": {"href": f"{BASE}/deploymentBase/8?c=-2127183556"},
        "installedBase": {"href": f"{BASE}/installedBase/4"},
    }


@pytest.mark.parametrize(
    ("state", "rel", "href"),
    [
        ("canceling", "cancelAction", f"{BASE}/cancelAction/8"),
        ("wait_for_confirmation", "confirmationBase", f"{BASE}/confirmationBase/8?c=5"),
    ],
)
def test_poll_shows_one_action_link_by_state(state: str, rel: str, href: str) -> None:
    entry = kv.DeploymentEntry(
        open=kv.OpenAction(action_id="8", c="5", state=state, deployment=DOC)
    )
    links = poll_body(BASE, OPEN, PLAIN, entry)["_links"]
    assert links[rel] == {"href": href}
    assert {"deploymentBase", "cancelAction", "confirmationBase"} & set(links) == {rel}


def test_open_action_shortens_polling_when_configured() -> None:
    tenant = kv.TenantConfig(polling_sleep="00:05:00", polling_sleep_open_action="00:00:10")
    entry = kv.DeploymentEntry(open=kv.OpenAction(action_id="8", deployment=DOC))
    assert poll_body(BASE, tenant, PLAIN, entry)["config"]["polling"]["sleep"] == "00:00:10"
    assert poll_body(BASE, tenant, PLAIN, None)["config"]["polling"]["sleep"] == "00:05:00"


def _status(execution: str, finished: str = "none") -> FeedbackStatus:
    return FeedbackStatus(execution=execution, finished=finished)  # type: ignore[arg-type]


def _action(update: str = "forced", window: str | None = None) -> kv.OpenAction:
    doc = kv.DeploymentDoc(
        update=update,  # type: ignore[arg-type]
        maintenance_window=window,  # type: ignore[arg-type]
        chunks=[kv.ChunkDoc(module_id="1", name="n", version="1", artifacts=[])],
    )
    return kv.OpenAction(action_id="1", deployment=doc)


@pytest.mark.parametrize(
    ("cancel", "execution", "finished", "action", "closes"),
    [
        (False, "closed", "success", _action(), True),
        (False, "closed", "failure", _action(), True),
        (False, "closed", "none", _action(), True),
        (False, "canceled", "none", _action(), True),
        (False, "proceeding", "none", _action(), False),
        (False, "rejected", "none", _action(), False),
        (False, "downloaded", "none", _action(), False),
        (False, "downloaded", "none", _action(update="skip"), True),  # download only
        (False, "downloaded", "none", _action(update="skip", window="unavailable"), False),
        (True, "canceled", "none", _action(), True),
        (True, "closed", "success", _action(), True),
        (True, "closed", "failure", _action(), False),
        (True, "rejected", "none", _action(), False),
        (True, "proceeding", "none", _action(), False),
    ],
)
def test_final_reports_are_those_that_close_the_action_in_rollouts(
    cancel: bool, execution: str, finished: str, action: kv.OpenAction, closes: bool
) -> None:
    assert closes_action(cancel, _status(execution, finished), action) is closes


@pytest.mark.parametrize(
    ("mode", "data", "after"),
    [
        ("merge", {"a": "1", "new": "2"}, 3),
        ("merge", {"a": "1"}, 2),
        ("replace", {"x": "1"}, 1),
        ("remove", {"a": "", "missing": ""}, 1),
    ],
)
def test_attributes_after_a_report_follow_the_ddi_modes(
    mode: str, data: dict[str, str], after: int
) -> None:
    assert attributes_after(("a", "b"), mode, data) == after
