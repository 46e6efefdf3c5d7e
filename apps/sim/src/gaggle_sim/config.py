"""What a simulated fleet looks like and how it behaves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PollMode = Literal["server", "fast", "once", "fixed"]
VerifyMode = Literal["sha256", "head", "none"]

HEAD_BYTES = 64 * 1024
"""``verify="head"`` reads this much of an artifact, then stops."""


@dataclass
class FleetConfig:
    """A fleet of ``count`` virtual DDI devices and the share of them that misbehave.

    Attributes:
        base_url: DDI root including the tenant, e.g. ``http://127.0.0.1:8080/default``; a
            device polls ``{base_url}/controller/v1/{controller_id}``.
        count: number of devices.
        id_prefix: controller ids are ``f"{id_prefix}{i:06d}"``.
        first_index: first ``i`` (ids run from ``first_index`` to ``first_index + count - 1``).
        hw_model: reported as ``hw_boardname`` in configData.
        hw_revision: reported as ``hw_revision``.
        sw_version: the version every device starts with (``sw_version``).
        poll: ``"server"`` obeys ``config.polling.sleep`` of each answer; ``"fast"`` polls again
            at once (load test); ``"once"`` polls once per device (first contact: poll, then
            configData if asked) and is done; a number (or numeric string) is a fixed interval
            in seconds.
        jitter: each interval is stretched or shrunk by up to this share, at random.
        connections: the most HTTP requests (and connections) in flight at once; also the
            number of devices acting at the same moment.
        verify: ``"sha256"`` checks the whole artifact against ``hashes.sha256`` (against
            ``sha1`` or ``md5`` when the server sends no SHA-256, as gooseBit does), ``"head"``
            reads only the first 64 KiB and stops, ``"none"`` reads everything unchecked.
        fail_share: share of devices whose installation fails (final feedback closed/failure).
        slow_share: share of devices that download at ``slow_rate`` and install for
            ``slow_install_seconds``.
        offline_share: share of devices that go offline once, at a random moment within
            ``offline_within`` seconds of the start, for ``offline_seconds``.
        offline_seconds: how long an offline device stays away.
        cut_share: share of devices whose download is cut halfway (connection dropped) and
            resumed with ``Range: bytes=N-``.
        silent_share: share of devices that go silent after a successful install: they report
            success, then never poll again (they did not come back from their reboot).
        fallback_share: share of devices that fall back to their old version after the reboot
            (A/B fallback): they report success, then their old version in their next
            configData, and keep running it.
        gateway_token: sent as ``Authorization: GatewayToken …`` by devices without a token.
        device_token: one ``TargetToken`` for every device.
        device_tokens: ``TargetToken`` per controller id (wins over ``device_token``).
        seed: picks the misbehaving devices and every random choice; same seed, same fleet.
        timeout: seconds a request may wait for the server without receiving a byte.
        install_seconds: how long a normal installation takes (between the download and the
            final feedback); 0 installs at once.
        slow_install_seconds: how long a slow device's installation takes.
        slow_rate: download speed of slow devices, bytes per second.
        offline_within: the random moment an offline device leaves falls in
            ``[0, offline_within)`` seconds after the start.
        ramp_up: devices make their first request at a random moment within this many
            seconds of the start (0: all at once), so a fleet polling every minute is spread
            over the minute instead of arriving in one burst.
        download_attempts: failed downloads (network, HTTP status) of one action before the
            device gives up and reports closed/failure.
        user_agent: the ``User-Agent`` header.
        record_reports: keep every report the server answered 200 on its device
            (``Device.acknowledged``), so that a test can check the server kept them all.
    """

    base_url: str
    count: int
    id_prefix: str = "sim-"
    first_index: int = 0
    hw_model: str = "sim-board"
    hw_revision: str = "1.0"
    sw_version: str = "1.0.0"
    poll: str | float = "server"
    jitter: float = 0.1
    connections: int = 64
    verify: str = "sha256"
    fail_share: float = 0.0
    slow_share: float = 0.0
    offline_share: float = 0.0
    offline_seconds: float = 30.0
    cut_share: float = 0.0
    silent_share: float = 0.0
    fallback_share: float = 0.0
    gateway_token: str | None = None
    device_token: str | None = None
    device_tokens: dict[str, str] | None = field(default=None, repr=False)
    seed: int = 0
    timeout: float = 30.0
    install_seconds: float = 0.0
    slow_install_seconds: float = 5.0
    slow_rate: float = 256 * 1024
    offline_within: float = 60.0
    ramp_up: float = 0.0
    download_attempts: int = 3
    user_agent: str = "gaggle-sim/0.1"
    record_reports: bool = False

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must not be negative")
        if self.connections < 1:
            raise ValueError("connections must be at least 1")
        if self.verify not in ("sha256", "head", "none"):
            raise ValueError(f"verify must be sha256, head or none, not {self.verify!r}")
        for name in (
            "fail_share",
            "slow_share",
            "offline_share",
            "cut_share",
            "silent_share",
            "fallback_share",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        if self.ramp_up < 0:
            raise ValueError("ramp_up must not be negative")
        if self.timeout <= 0 or self.slow_rate <= 0:
            raise ValueError("timeout and slow_rate must be positive")
        if self.download_attempts < 1:
            raise ValueError("download_attempts must be at least 1")
        _ = self.poll_mode  # raises for a bad poll value
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, not {self.base_url!r}")

    @property
    def poll_mode(self) -> PollMode:
        """``server``, ``fast``, ``once`` or ``fixed`` (a number of seconds).

        Raises:
            ValueError: ``poll`` is none of these.
        """
        if isinstance(self.poll, str) and self.poll in ("server", "fast", "once"):
            return self.poll  # type: ignore[return-value]
        try:
            seconds = float(self.poll)
        except ValueError:
            raise ValueError(
                f"poll must be server, fast, once or seconds, not {self.poll!r}"
            ) from None
        if seconds < 0:
            raise ValueError("a fixed polling interval must not be negative")
        return "fixed"

    @property
    def poll_interval(self) -> float:
        """The fixed interval in seconds (only for ``poll_mode == "fixed"``)."""
        return float(self.poll)

    def controller_ids(self) -> list[str]:
        """Every device's controller id, in order."""
        return [
            f"{self.id_prefix}{i:06d}"
            for i in range(self.first_index, self.first_index + self.count)
        ]

    def token_for(self, controller_id: str) -> tuple[str, str] | None:
        """The ``Authorization`` header of one device, if it has credentials."""
        if self.device_tokens and controller_id in self.device_tokens:
            return ("Authorization", f"TargetToken {self.device_tokens[controller_id]}")
        if self.device_token:
            return ("Authorization", f"TargetToken {self.device_token}")
        if self.gateway_token:
            return ("Authorization", f"GatewayToken {self.gateway_token}")
        return None
