"""OpenID Connect sign-in to the console in Debian's Chromium, against a real provider.

The provider (:mod:`tests.e2e.oidc_provider`) runs over HTTP and signs its one user in at once;
registry, rollouts and gateway verify its access tokens with their own OIDC settings. The browser
clicks "Sign in with …", lands on the overview the registry and rollouts filled with the token, is
renewed with the refresh token, and a callback with another state is refused. The sign-in page is
photographed as ``sign-in-oidc.png`` (see ``GAGGLE_CONSOLE_SCREENSHOTS`` in ``test_console.py``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from gaggle_console.app import build_app as build_console
from gaggle_console.settings import ConsoleSettings
from gaggle_contracts.settings import CommonSettings
from tests.e2e.browser import needs_chromium
from tests.e2e.conftest import E2EStack
from tests.e2e.oidc_provider import TestProvider

pytestmark = [
    pytest.mark.e2e,
    needs_chromium,
]
CLIENT = "gaggle-console"
DEVICES = ("oidc-01", "oidc-02", "oidc-03")


@pytest.fixture
async def provider(serve: Any, tenant: str) -> TestProvider:
    """The provider, served before the services so that they can read its keys at start."""
    found = TestProvider(client_id=CLIENT, redirect_uris=[], tenant=tenant)
    server = await serve(found.app())
    found.issuer = server.url
    return found


@pytest.fixture
def common(nats_url: str, database_url: str, provider: TestProvider) -> CommonSettings:
    """The services accept the provider's access tokens."""
    return CommonSettings(
        nats_url=nats_url,
        database_url=database_url,
        log_json=False,
        oidc_issuer=provider.issuer,
        oidc_audience=provider.audience,
        oidc_jwks_url=f"{provider.issuer}/jwks",
    )


async def test_console_sign_in_with_the_oidc_provider(
    e2e_stack: E2EStack,
    serve: Any,
    common: CommonSettings,
    provider: TestProvider,
    browser: Any,
    shots: Any,
) -> None:
    stack = e2e_stack
    for cid in DEVICES:
        await stack.ensure_device(cid)
    console = await serve(
        build_console(
            common,
            ConsoleSettings(
                registry_url=stack.registry.url,
                rollouts_url=stack.rollouts.url,
                oidc_issuer=provider.issuer,
                oidc_client_id=CLIENT,
                oidc_name="Test IdP",
            ),
        )
    )
    base = console.url
    provider.redirect_uris.append(f"{base}/oidc/callback")
    page = await browser.new_page(viewport={"width": 1200, "height": 900})

    # The sign-in page offers the provider next to the API key form.
    await page.goto(f"{base}/overview")
    assert page.url == f"{base}/sign-in"
    button = page.get_by_role("link", name="Sign in with Test IdP")
    assert await button.is_visible()
    assert await page.get_by_label("API key").is_visible()
    await page.screenshot(path=shots / "sign-in-oidc.png", full_page=True)

    # One click: the provider signs the user in and the overview is filled with its token.
    await button.click()
    await page.wait_for_url(f"{base}/overview")
    assert provider.grants == ["authorization_code"]
    assert await page.locator("#count-total").inner_text() == str(len(DEVICES))
    assert await page.get_by_role("alert").count() == 0  # registry and rollouts both answered
    await page.goto(f"{base}/devices")
    rows = page.locator("#devices tbody th[scope=row]")
    assert sorted(await rows.all_inner_texts()) == sorted(DEVICES)
    cookies = await page.context.cookies()
    assert [c["name"] for c in cookies] == ["gaggle_console"]
    assert "." not in cookies[0]["value"]  # a session id, no token

    # The token is renewed on use when near its expiry (here: always), with the refresh token.
    provider.expires_in = 30  # the console renews 60 s before expiry
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{base}/sign-in")
    await page.get_by_role("link", name="Sign in with Test IdP").click()
    await page.wait_for_url(f"{base}/overview")
    assert provider.grants[-2:] == ["authorization_code", "refresh_token"]
    await page.goto(f"{base}/devices")
    assert await rows.count() == len(DEVICES)
    assert provider.grants.count("refresh_token") == 2
    provider.refresh_tokens.clear()  # the provider forgets them: renewal fails, signed out
    await page.goto(f"{base}/devices")
    assert page.url == f"{base}/sign-in"
    notice = await page.get_by_role("alert").inner_text()
    assert "your sign-in with Test IdP ended and could not be renewed" in notice
    assert "invalid_grant" in notice
    provider.expires_in = 300

    # A callback whose state is not the one this browser sent is refused, and ends that sign-in.
    started = await page.request.get(f"{base}/oidc/sign-in", max_redirects=0)
    assert started.status == 303
    answered = await page.request.get(started.headers["location"], max_redirects=0)
    callback = answered.headers["location"]
    query = parse_qs(urlsplit(callback).query)
    assert set(query) == {"code", "state", "iss"}
    tampered = callback.replace(f"state={query['state'][0]}", "state=forged")
    response = await page.goto(tampered)
    assert response is not None
    assert response.status == 400
    assert "its state does not match" in await page.get_by_role("alert").inner_text()
    response = await page.goto(callback)
    assert response is not None
    assert response.status == 400
    await page.goto(f"{base}/overview")
    assert page.url == f"{base}/sign-in"
    assert provider.grants.count("authorization_code") == 2  # the code was never exchanged

    # Signing out offers the provider's logout, which comes back to the sign-in page.
    await page.get_by_role("link", name="Sign in with Test IdP").click()
    await page.wait_for_url(f"{base}/overview")
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{base}/sign-in")
    await page.get_by_role("link", name="Sign out of Test IdP too").click()
    await page.wait_for_url(f"{base}/sign-in")
    assert len(provider.logouts) == 1
    assert provider.logouts[0]["client_id"] == CLIENT
    assert provider.logouts[0]["id_token_hint"].count(".") == 2
    await page.goto(f"{base}/overview")
    assert page.url == f"{base}/sign-in"
