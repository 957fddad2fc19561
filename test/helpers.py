"""Shared helpers for the ROS integration tests: start nodes as separate processes, spin a test node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for(pred: Callable[[], bool], timeout: float, period: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(period)
    return pred()


def _param_arg(k, v) -> str:
    if isinstance(v, bool):
        v = "true" if v else "false"
    elif isinstance(v, (list, tuple)):
        v = "[" + ",".join(repr(float(x)) for x in v) + "]"
    elif isinstance(v, str) and v == "":
        v = "''"
    return f"{k}:={v}"


class NodeProcess:
    """A sakura_nexus node running in its own Python interpreter (a real separate ROS process)."""

    def __init__(self, module: str, params: dict | None = None, name: str | None = None,
                 remaps: dict | None = None, namespace: str | None = None, env: dict | None = None,
                 params_file: str | None = None, log_path: str | None = None, args: list[str] | None = None):
        # args: the program's own arguments before --ros-args (module "container": nexus_container)
        package = "sakura_nexus.ros" if module == "container" else "sakura_nexus.nodes"
        cmd = [sys.executable, "-m", f"{package}.{module}", *(args or []), "--ros-args"]
        if name:
            cmd += ["-r", f"__node:={name}"]
        if namespace:
            cmd += ["-r", f"__ns:=/{namespace.strip('/')}"]
        for a, b in (remaps or {}).items():
            cmd += ["-r", f"{a}:={b}"]
        if params_file:
            cmd += ["--params-file", params_file]
        for k, v in (params or {}).items():
            cmd += ["-p", _param_arg(k, v)]
        self.log_path = log_path or os.path.join(os.environ["ROS_LOG_DIR"], f"{module}_{time.time_ns()}.out")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGINT, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class SpinningNode:
    """A plain rclpy node spun by its own executor thread, for publishing/subscribing from tests."""

    def __init__(self, name: str):
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self.node = Node(name)
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    def __getattr__(self, item):
        return getattr(self.node, item)

    def collect(self, msg_type, topic: str, qos=10) -> list:
        """Subscribe and return the (live) list that receives every message."""
        got: list = []
        self.node.create_subscription(msg_type, topic, got.append, qos)
        return got

    def set_params(self, target_node: str, values: dict, timeout: float = 5.0):
        """The equivalent of `ros2 param set`: call the target's set_parameters service."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        client = self.node.create_client(SetParameters, f"{target_node}/set_parameters")
        assert client.wait_for_service(timeout), f"{target_node}/set_parameters not available"
        req = SetParameters.Request()
        req.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        fut = client.call_async(req)
        assert wait_for(fut.done, timeout), "set_parameters timed out"
        self.node.destroy_client(client)
        return fut.result().results

    def get_params(self, target_node: str, names: list[str], timeout: float = 5.0) -> dict:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        client = self.node.create_client(GetParameters, f"{target_node}/get_parameters")
        assert client.wait_for_service(timeout), f"{target_node}/get_parameters not available"
        fut = client.call_async(GetParameters.Request(names=names))
        assert wait_for(fut.done, timeout), "get_parameters timed out"
        self.node.destroy_client(client)
        return {n: parameter_value_to_python(v) for n, v in zip(names, fut.result().values, strict=True)}

    def close(self):
        self._executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


def signed_update(signer, model_id: str, version: int, payload: bytes, codec: str = "state-dict-v1",
                  tamper: dict | None = None):
    """A ModelUpdate signed by ``signer`` (sakura_nexus.federated.common.signing.Signer; None = unsigned); ``tamper``
    replaces fields after signing."""
    from sakura_nexus.models.serialization import sha256_hex
    from sakura_nexus.msg import ModelUpdate

    msg = ModelUpdate(model_id=model_id, version=version, codec=codec, payload=payload, sha256=sha256_hex(payload))
    if signer is not None:
        msg.key_id, msg.signature = signer.key_id, signer.sign(model_id, version, codec, payload)
    for k, v in (tamper or {}).items():
        setattr(msg, k, v)
    return msg


def diag_values(diags: list, node: str) -> dict:
    """Key/values of the newest /diagnostics status of ``node`` in a collected DiagnosticArray list."""
    st = [st for a in list(diags) for st in a.status if node in st.name]
    return {x.key: x.value for x in st[-1].values} if st else {}
