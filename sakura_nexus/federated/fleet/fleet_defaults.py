"""The defaults of a fleet started by ``launch/fleet.launch.py`` or the demo, declared once.

Two levels of aggregator settings exist on purpose, each declared in one place:

* the library / Flower App defaults: :class:`~sakura_nexus.federated.fleet.aggregator.FedBuffConfig` and
  :class:`~sakura_nexus.federated.fleet.serverapp.ServerOptions` (``flwr_app.toml`` restates them for
  ``flwr run``; ``test/unit/test_settings.py`` checks that it does so exactly). A bare
  ``sakura-nexus aggregator`` without flags runs with these: K = 4, no clipping.
* the fleet deployment below, for robots that run the shipped world model: every robot's delta
  clipped to the robot's own ``clip_norm`` default (federated_sync_node), K = the default number of
  robots. :func:`~sakura_nexus.federated.fleet.superlink.aggregator_command` and ``launch/fleet.launch.py``
  take their defaults from here.

ROS-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from sakura_nexus.params import FEDERATED_SYNC


@dataclass(frozen=True)
class FleetDefaults:
    robots: int = 2                     # robots started by fleet.launch.py
    buffer_size: int = 2                # FedBuff K: one global version per delta of each robot
    clip_norm: float = FEDERATED_SYNC["clip_norm"].default  # aggregator clip = the robots' uplink clip
    sync_interval_s: float = 2.0        # per-node pause between exchanges when it has nothing queued
    superlink: str = FEDERATED_SYNC["superlink"].default   # host:port the robots connect to


FLEET = FleetDefaults()
