"""Server-side sessions: a random id in a cookie, the operator's key kept here, never in it."""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "gaggle_console"


@dataclass
class OidcPending:
    """A sign-in sent to the OpenID Connect provider, waiting for its answer (one use)."""

    state: str
    nonce: str
    verifier: str
    """The PKCE code verifier; the provider was sent its S256 challenge."""
    redirect_uri: str
    started_at: float


@dataclass
class OidcTokens:
    """What a sign-in with the provider keeps besides the credential (``Session.key``)."""

    id_token: str
    subject: str
    refresh_token: str | None
    expires_at: float | None
    """When the credential expires, on the sessions' clock (None: not known, never renewed)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)
    """Held while renewing, so that concurrent pages renew once."""


@dataclass
class Session:
    """One browser's session; ``key`` is None before sign-in (the sign-in form's CSRF token)."""

    csrf: str
    used_at: float
    key: str | None = None
    permissions: frozenset[str] = frozenset()
    """What the operator may do, as the registry said at sign-in (``device:write``, ...): the
    pages show only the buttons these allow; the services still decide every call."""
    oidc: OidcTokens | None = None
    """Set when signed in with the OpenID Connect provider (``key`` is then its token)."""
    oidc_pending: list[OidcPending] = field(default_factory=list)
    """Sign-ins sent to the provider from this browser, waiting for its answer."""
    notice: str | None = None
    """A message the sign-in form shows once (why a session ended)."""
    provider_logout: str | None = None
    """After signing out of a provider's session: where to sign out at the provider too."""

    def csrf_ok(self, token: str | None) -> bool:
        """Whether ``token`` is this session's CSRF token (compared in constant time)."""
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class Sessions:
    """Sessions by id, in memory: a restart signs everyone out.

    A session unused for ``idle_s`` seconds is gone; beyond ``limit`` sessions the least recently
    used is dropped, so anonymous visits cannot fill memory.
    """

    def __init__(self, clock: Callable[[], float], idle_s: float, limit: int) -> None:
        self.clock = clock
        self.idle_s = idle_s
        self.limit = limit
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, session_id: str | None) -> Session | None:
        """The live session of ``session_id`` (marked as used now), or None."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        now = self.clock()
        if session is None:
            return None
        if now - session.used_at > self.idle_s:
            del self._by_id[session_id]
            return None
        session.used_at = now
        self._by_id.move_to_end(session_id)
        return session

    def create(
        self, key: str | None = None, permissions: frozenset[str] = frozenset()
    ) -> tuple[str, Session]:
        """A new session with a fresh id and CSRF token."""
        session_id = secrets.token_urlsafe(32)
        session = Session(
            csrf=secrets.token_urlsafe(32), used_at=self.clock(), key=key, permissions=permissions
        )
        self._by_id[session_id] = session
        while len(self._by_id) > self.limit:
            self._by_id.popitem(last=False)
        return session_id, session

    def drop(self, session_id: str | None) -> None:
        """End ``session_id``'s session, if there is one."""
        if session_id:
            self._by_id.pop(session_id, None)
