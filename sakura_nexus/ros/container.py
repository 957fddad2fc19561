"""Composed mode: several sakura_nexus nodes in one process, on one executor (like an rclcpp component
container). Each node stays what it is as a separate process: its own name, parameters (the same
``/**/<name>`` keys of the parameter file), lifecycle, topics, services and ``/diagnostics`` status;
only the process, the DDS participant and the executor are shared, so a frame's
perception -> world_model -> policy hops are taken and dispatched by one C++ EventsExecutor instead
of three processes waking one another.

    nexus_container --node perception_node --node world_model_node --node policy_node \\
        --param policy_node:controller:=learned_mpc --ros-args --params-file config/nexus.yaml ...

Everything after ``--ros-args`` is global (parameter files, remaps, namespace, log level, e.g. from
launch/nexus.launch.py with ``composed:=true``); ``--param NODE:NAME:=VALUE`` sets a parameter of one
node only. Without ``--node`` the container runs :data:`DEFAULT_NODES`. On SIGINT/SIGTERM every active
node is deactivated (policy_node first: its final zero command goes out while the others still run),
then the executor stops.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading

import rclpy

from sakura_nexus.allocator import tune_for_large_messages
from sakura_nexus.ros.node import make_executor

# node name -> "module:class"; the node names are the ones the classes give themselves
COMPOSABLE = {
    "perception_node": "sakura_nexus.nodes.perception:PerceptionNode",
    "world_model_node": "sakura_nexus.nodes.world_model:WorldModelNode",
    "policy_node": "sakura_nexus.nodes.policy:PolicyNode",
    "federated_sync_node": "sakura_nexus.nodes.federated_sync:FederatedSyncNode",
}
# the robot stack: federated sync stays a process of its own (it runs at idle priority)
DEFAULT_NODES = ("perception_node", "world_model_node", "policy_node")


def parse(argv: list[str]) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """argv (without the program) -> (node names, node -> its own ``--ros-args -p ...``, the global
    ROS arguments). Raises ValueError on an unknown node or a malformed ``--param``."""
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        own, ros = argv[:i], argv[i:]
    else:
        own, ros = list(argv), []
    names: list[str] = []
    params: dict[str, list[str]] = {}
    it = iter(own)
    for tok in it:
        if tok in ("--node", "--param"):
            value = next(it, None)
            if value is None:
                raise ValueError(f"{tok} needs a value")
            if tok == "--node":
                if value not in COMPOSABLE:
                    raise ValueError(f"unknown node {value!r}; composable: {sorted(COMPOSABLE)}")
                names.append(value)
            else:
                node, sep, rule = value.partition(":")
                if not sep or ":=" not in rule or node not in COMPOSABLE:
                    raise ValueError(f"--param wants NODE:NAME:=VALUE with NODE in {sorted(COMPOSABLE)}, "
                                     f"got {value!r}")
                params.setdefault(node, []).append(rule)
        else:
            raise ValueError(f"unexpected argument {tok!r}")
    names = names or list(DEFAULT_NODES)
    if len(set(names)) != len(names):
        raise ValueError(f"a node is named twice: {names}")
    for node in params:
        if node not in names:
            raise ValueError(f"--param for {node}, which this container does not run")
    local = {n: ["--ros-args", *[a for r in params.get(n, []) for a in ("-p", r)]] for n in names}
    return names, local, ros


def node_class(name: str):
    module, cls = COMPOSABLE[name].split(":")
    return getattr(importlib.import_module(module), cls)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        names, local, ros = parse(argv)
    except ValueError as e:
        print(f"nexus_container: {e}", file=sys.stderr)
        return 2
    tune_for_large_messages()  # before any receive buffer exists (see sakura_nexus/allocator.py)
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=["nexus_container", *ros], signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log = rclpy.logging.get_logger("nexus_container")
    nodes = [node_class(n)(cli_args=local[n]) for n in names]
    executor = make_executor()
    for node in nodes:
        executor.add_node(node)
    for node in nodes:
        if node.params.as_dict().get("autostart", True):
            node.trigger_configure()
            node.trigger_activate()
    log.info(f"running {', '.join(n.get_fully_qualified_name() for n in nodes)} in one process")

    def spin():
        # one failing callback must not take the container down: log it, count it, keep spinning
        while rclpy.ok() and not stop.is_set():
            try:
                executor.spin_once(timeout_sec=0.1)
            except Exception as e:  # noqa: BLE001
                for node in nodes:
                    node.diag.count("container_callback_errors")
                log.error(f"callback raised {e!r}", throttle_duration_sec=5.0)

    spinner = threading.Thread(target=spin, name="executor", daemon=True)
    spinner.start()
    try:
        while not stop.wait(0.2):
            if not spinner.is_alive():
                break
    finally:
        log.info("shutting down")
        for node in reversed(nodes):   # policy first: its final zero goes out while inputs still flow
            if node.is_active:
                node.trigger_deactivate()
        executor.shutdown(timeout_sec=2.0)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
