"""gaggle-agent: a device-side hawkBit DDI client that updates the device through hook scripts."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gaggle-agent")
except PackageNotFoundError:  # pragma: no cover (run from a source tree)
    __version__ = "0.0.0"

__all__ = ["__version__"]
