"""A fleet of virtual DDI devices: load generator, benchmark client and end-to-end test player.

Each device is a small hawkBit DDI client (poll, configData, deploymentBase, download with
checksum, feedback, cancel) that follows the links the server returns, so the same fleet plays
against Gaggle, gooseBit or hawkBit. Thousands of devices run from one process on one core over
a hand-written HTTP/1.1 keep-alive client (:mod:`gaggle_sim.http`).

    stats = await run_fleet(FleetConfig("http://127.0.0.1:8080/default", count=1000), duration=60)
"""

from gaggle_sim.config import FleetConfig
from gaggle_sim.device import Behaviour, Device, Report
from gaggle_sim.fleet import Fleet, assign_behaviours, run_fleet
from gaggle_sim.http import HttpClient, HttpError, Request, Response
from gaggle_sim.stats import FleetStats

__all__ = [
    "Behaviour",
    "Device",
    "Fleet",
    "FleetConfig",
    "FleetStats",
    "HttpClient",
    "HttpError",
    "Report",
    "Request",
    "Response",
    "assign_behaviours",
    "run_fleet",
]
