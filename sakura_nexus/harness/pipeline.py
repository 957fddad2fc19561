"""The demo pipeline: sim_node and the robot stack as processes (:class:`~sakura_nexus.harness.supervisor.
Supervisor`), optionally the fleet (aggregator + federated_sync_node), and the mission node in this process,
brought up and down as one context (:class:`Pipeline`). rclpy is imported when the pipeline starts."""

from __future__ import annotations

import os
import pathlib
import sys
import time

from sakura_nexus import bringup
from sakura_nexus.harness.mission import Mission
from sakura_nexus.harness.supervisor import Supervisor
from sakura_nexus.paths import config_file

# perception + world_model + policy in one process on one executor (bringup.COMPOSED) unless --no-composed;
# chosen by measurement (docs/closed_loop.md: less CPU and latency than three processes on 2 cores)
COMPOSED_DEFAULT = True


def models_missing() -> str | None:
    """None if the shipped checkpoint (models/ or $SAKURA_NEXUS_MODELS) loads, else why not."""
    from sakura_nexus.paths import models_dir

    d = models_dir()
    for name in ("encoder.bin", "world_model.bin"):
        if not (d / name).is_file():
            return (f"no model checkpoint: {d / name} does not exist (train one with `sakura-nexus train`, "
                    "or point SAKURA_NEXUS_MODELS at a checkpoint directory)")
    try:
        from sakura_nexus.models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(d)
        if ckpt.encoder is None:
            return f"no encoder in {d}"
    except Exception as e:  # noqa: BLE001 - any load failure is a reason
        return f"model checkpoint in {d} does not load: {e}"
    return None



class Pipeline:
    """The four nodes + sim_node as separate processes (like launch/sim.launch.py) plus the mission
    node in this process. ``with Pipeline(...) as p:`` returns once odometry, world states and plans
    flow; on exit the robot is held, the processes get SIGINT and rclpy is shut down if it was
    initialised here. ``overrides``: node name -> parameter overrides."""

    def __init__(self, out: pathlib.Path, seed: int = 0, controller: str = "mpc", overrides: dict | None = None,
                 fleet: bool = False, startup_timeout: float = 120.0, hops: bool = False, diagnostics: bool = False,
                 domain_id: int | None = None, composed: bool = False, stack_cpus: str | None = None,
                 frames: bool = True):
        # composed: perception, world_model and policy in one nexus_container process (one executor);
        # stack_cpus: run those (not sim_node, not the harness) under `taskset -c stack_cpus`
        self.composed, self.stack_cpus = composed, stack_cpus
        self.out = pathlib.Path(out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.seed, self.controller, self.fleet = seed, controller, fleet
        self.overrides = overrides or {}
        self.startup_timeout = startup_timeout
        self._mission_kw = {"hops": hops, "diagnostics": diagnostics, "frames": frames}
        self.env = bringup.ros_environment(domain_id, log_dir=str(self.out / "logs"))
        self.sup = Supervisor(self.env, self.out / "logs", [str(config_file("nexus.yaml"))])
        self.mission: Mission | None = None
        self._own_rclpy = False
        self.startup_s: float | None = None
        self.exit_codes: dict = {}

    def __enter__(self) -> Pipeline:
        import rclpy

        if not rclpy.ok():
            # this process' mission node joins the children's domain
            # (the profile under the name(s) the installed Fast DDS reads: only those are in env)
            os.environ.update({k: self.env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE",
                                                        *bringup.FASTDDS_PROFILE_VARS, "RMW_IMPLEMENTATION")
                               if k in self.env})
            rclpy.init()
            self._own_rclpy = True
        elif os.environ.get("ROS_DOMAIN_ID") != self.env["ROS_DOMAIN_ID"]:
            raise RuntimeError("rclpy is already initialised on another ROS_DOMAIN_ID than the pipeline's")
        t0 = time.monotonic()
        try:
            ov = self.overrides
            # fleet mode: a signing key pair for this run; the aggregator signs, every node trusts its public half
            keys = _fleet_keys(self.out) if self.fleet else None
            trust = {"trusted_keys": keys[1]} if keys else {}
            self.sup.start(bringup.SIM, {"seed": self.seed, **ov.get("sim_node", {})})
            stack = {
                "perception_node": {**trust, **(ov.get("perception_node") or {})},
                "world_model_node": {**trust, "state_dir": str(self.out / "state" / "world_model"),
                                     # fleet mode: deltas every 3 s so a short demo sees a round
                                     **({"delta_period": 3.0} if self.fleet else {}),
                                     **ov.get("world_model_node", {})},
                "policy_node": {**trust, "controller": self.controller, **ov.get("policy_node", {})},
            }
            wrap = ["taskset", "-c", str(self.stack_cpus)] if self.stack_cpus else None
            if self.composed:
                self.sup.start_composed(bringup.COMPOSED, stack, wrap=wrap)
            else:
                for spec in bringup.COMPOSED:
                    self.sup.start(spec, stack[spec.name], wrap=wrap)
            if self.fleet:
                _start_fleet(self.sup, self.out, keys)
            self.mission = Mission(**self._mission_kw)
            self._wait_up()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_up(self) -> None:
        m, sup = self.mission, self.sup
        deadline = time.monotonic() + self.startup_timeout

        def up():
            return (m.pose is not None and m.world_states >= 5 and m.goal_subscribers() >= 2
                    and len(m.log.cmd_src) > 0)

        while not up() and time.monotonic() < deadline:
            if sup.dead():
                raise RuntimeError("node process died during start-up: " + "; ".join(
                    f"{n}: {sup.log_tail(n, 5)}" for n in sup.dead()))
            errors = sup.errors()
            if any("cannot load" in e or "Failed to" in e for e in errors.values()):
                raise RuntimeError("a node failed to configure: " + "; ".join(f"{n}: {e}" for n, e in errors.items()))
            time.sleep(0.2)
        if not up():
            raise RuntimeError(
                f"the pipeline did not come up within {self.startup_timeout:.0f} s (pose {m.pose is not None}, "
                f"{m.world_states} world states, {m.goal_subscribers()} goal subscribers, {len(m.log.cmd_src)} "
                f"commands); errors: {sup.errors() or 'none'}; logs in {sup.log_dir}")

    def __exit__(self, *exc) -> None:
        if self.mission is not None:
            try:
                self.mission.hold()
                time.sleep(0.3)
            except Exception:  # noqa: BLE001 - best effort while shutting down
                pass
        self.exit_codes = self.sup.stop()
        if self.mission is not None:
            self.mission.close()
        if self._own_rclpy:
            import rclpy

            rclpy.try_shutdown()


FLEET_HOST_NICE = 10  # nice level of the aggregator (the fleet host's stand-in) beside the robot stack


def _fleet_keys(out: pathlib.Path) -> tuple[str, str]:
    """(private key, trusted-keys file) of the demo fleet, in <out>/state/keys (new for every output dir)."""
    from sakura_nexus.federated.common.signing import PRIVATE_NAME, PUBLIC_NAME, generate_keys

    d = out / "state" / "keys"
    if (d / PRIVATE_NAME).exists() and (d / PUBLIC_NAME).exists():
        return str(d / PRIVATE_NAME), str(d / PUBLIC_NAME)
    return generate_keys(str(d), "sakura-nexus demo")


def _start_fleet(sup: Supervisor, out: pathlib.Path, keys: tuple[str, str]) -> None:
    """Aggregator (starting from the robots' shipped world model, signing with ``keys[0]``) + this robot's
    sync node (trusting ``keys[1]``)."""
    from sakura_nexus.federated.common.flower_cli import free_port, wait_healthy
    from sakura_nexus.federated.fleet.superlink import aggregator_command

    port = free_port()
    # the aggregator stands in for the fleet host; on the robot's own cores it must not take CPU the robot
    # stack needs (niced, it gets what the stack leaves; its rounds only come later when the box is busy)
    cmd = aggregator_command(str(out / "state" / "aggregator"), port=port, init_world_model="shipped",
                             buffer_size=1, sync_interval=2.0, signing_key=keys[0])
    sup.start_command("aggregator", ["nice", "-n", str(FLEET_HOST_NICE), *cmd])
    wait_healthy("127.0.0.1", port, 90, proc=sup.procs["aggregator"])
    sup.start(bringup.FEDERATED_SYNC, {"trusted_keys": keys[1], "superlink": f"127.0.0.1:{port}",
                                       "spool_dir": str(out / "state" / "spool"),
                                       "egress_audit_dir": str(out / "state" / "egress")})

