"""Each service's ``/docs``, ``/redoc`` and ``/asyncapi`` render in Chromium with no network.

Every request the browser makes to a host other than the service is refused and recorded: the
pages must draw from what the service itself serves (the ``fastapi-offline`` and
``asyncapi-viewer`` packages' files). Redoc's footer names a logo on its CDN; the pages'
Content-Security-Policy keeps the browser from asking for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from gaggle_artifacts.app import build_app as build_artifacts
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_storage import StorageSettings
from tests.e2e.browser import needs_chromium

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    needs_chromium,
]


async def test_every_services_docs_render_without_the_network(
    common: CommonSettings, serve: Any, tmp_path: Path, browser: Any
) -> None:
    storage = StorageSettings(backend="local", dir=tmp_path / "objects")
    services = {
        "registry": await serve(build_registry(common, RegistrySettings())),
        "artifacts": await serve(build_artifacts(common, ArtifactsSettings(), storage)),
        "rollouts": await serve(build_rollouts(common, RolloutsSettings())),
        "gateway": await serve(build_gateway(common, GatewaySettings(), storage)),
    }
    context = await browser.new_context()
    elsewhere: list[str] = []

    async def local_only(route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort("internetdisconnected")

    await context.route("**/*", local_only)
    page = await context.new_page()
    failed: list[str] = []  # the service's own files that did not load
    page.on(
        "requestfailed",
        lambda request: (
            urlsplit(request.url).hostname == "127.0.0.1" and failed.append(request.url)
        ),
    )
    for name, server in services.items():
        base = str(server.url)
        title = (await (await page.request.get(f"{base}/openapi.json")).json())["info"]["title"]

        await page.goto(f"{base}/docs")
        # Swagger UI draws the title and one block per operation.
        await page.locator(".swagger-ui .info .title").wait_for()
        assert title in await page.locator(".swagger-ui .info .title").inner_text()
        assert await page.locator(".opblock").count() >= 3, name

        await page.goto(f"{base}/redoc")
        heading = page.get_by_role("heading", name=title, exact=False).first
        await heading.wait_for()
        assert await page.locator("[data-section-id^='operation/']").count() >= 3, name

        await page.goto(f"{base}/asyncapi")
        viewer = page.locator("asyncapi-viewer")
        await viewer.wait_for()
        # The viewer renders into its shadow root: the document's channels appear there.
        await page.wait_for_function(
            "() => (document.querySelector('asyncapi-viewer').shadowRoot?.textContent || '')"
            ".includes('ota.v1')",
            timeout=15_000,
        )
    assert elsewhere == [], f"the docs asked for other hosts: {elsewhere}"
    assert failed == [], f"requests that failed: {failed}"
    await context.close()
