"""What an ASGI request says about itself: where it came from, and its credentials.

Read straight from the ASGI scope, so the fast lane and the FastAPI routes read them alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import Scope


@dataclass(frozen=True)
class Origin:
    """Where a request came from and how the device addressed us (for absolute links)."""

    scheme: str
    host: str
    address: str | None

    @classmethod
    def of(cls, scope: Scope) -> Origin:
        """Read the origin from an ASGI scope, honouring ``X-Forwarded-Proto/-Host/-For``."""
        host = proto = fwd_host = fwd_for = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1")
            elif name == b"x-forwarded-host":
                fwd_host = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                fwd_for = value.decode("latin-1")
        if fwd_host or not host:
            server = scope.get("server") or ("localhost", 80)
            host = (fwd_host or f"{server[0]}:{server[1]}").split(",", 1)[0].strip()
        scheme = (proto or scope.get("scheme", "http")).split(",", 1)[0].strip()
        # A forwarded address is whatever the client wrote: kept short and storable, since
        # one sighting batch carries the addresses of many devices.
        address = fwd_for.split(",", 1)[0].strip()[:64].replace("\0", "\ufffd") if fwd_for else None
        if not address:
            client = scope.get("client")
            address = client[0] if client else None
        return cls(scheme, host, address)

    def base(self, tenant: str, controller_id: str) -> str:
        """Absolute ``…/{tenant}/controller/v1/{id}``."""
        return f"{self.scheme}://{self.host}/{tenant}/controller/v1/{controller_id}"


def authorization_of(scope: Scope) -> str | None:
    """The ``Authorization`` header of an ASGI scope."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return None
