"""Node processes of the demo harness: started like the launch files start them (the executables in
lib/sakura_nexus/ with :mod:`sakura_nexus.bringup`'s arguments), stopped cleanly (SIGINT, then SIGKILL of
the process tree), killed with ``kill -9`` and restarted as after a crash; their memory (RSS) and CPU time.
ROS-free: it only runs processes (the package prefix comes from ament_index, which needs no rclpy)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time

from sakura_nexus import bringup


def _prefix() -> pathlib.Path:
    from ament_index_python.packages import get_package_prefix

    return pathlib.Path(get_package_prefix("sakura_nexus"))


class Supervisor:
    """Starts node processes like the launch files do, and stops them cleanly (SIGINT, then SIGKILL)."""

    def __init__(self, env: dict, log_dir: pathlib.Path, params_files: list[str], namespace: str = ""):
        self.env, self.log_dir, self.params_files, self.namespace = env, log_dir, params_files, namespace
        self.procs: dict[str, subprocess.Popen] = {}
        self.commands: dict[str, list[str]] = {}  # name -> the command it was started with (restart())
        self.restarts: dict[str, int] = {}
        self._logs: list = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, spec: bringup.NodeSpec, overrides: dict | None = None, use_sim_time: bool = True,
              log_level: str = "info", wrap: list[str] | None = None) -> None:
        exe = _prefix() / "lib" / "sakura_nexus" / spec.executable
        args = bringup.ros_args(spec, self.params_files, self.namespace, use_sim_time, log_level=log_level,
                                overrides=overrides)
        self.start_command(spec.name, [*(wrap or []), sys.executable, str(exe), *args])

    def start_composed(self, specs, overrides: dict | None = None, use_sim_time: bool = True,
                       log_level: str = "info", wrap: list[str] | None = None) -> None:
        """``specs`` as one ``nexus_container`` process (composed mode); ``overrides``: node -> params."""
        exe = _prefix() / "lib" / "sakura_nexus" / bringup.CONTAINER.executable
        args = bringup.container_args(specs, self.params_files, self.namespace, use_sim_time, log_level=log_level,
                                      overrides=overrides)
        self.start_command(bringup.CONTAINER.name, [*(wrap or []), sys.executable, str(exe), *args])

    def start_command(self, name: str, cmd: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "ab" if name in self.commands else "wb")  # noqa: SIM115 - handed to the child, closed in stop()
        self._logs.append(log)
        self.commands[name] = list(cmd)
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def kill9(self, name: str, tree: bool = False) -> None:
        """``kill -9`` the process (what it started survives, as after a real crash: the sync node's
        restart finds and ends a stale SuperNode); ``tree``: everything it started too (the aggregator's
        SuperLink and ServerApp, which run in sessions of their own: the whole host going down)."""
        from sakura_nexus.process import descendants

        p = self.procs[name]
        for pid in [p.pid, *(descendants(p.pid) if tree else [])]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        p.wait()

    def restart(self, name: str) -> None:
        """Start ``name`` again with the command it was started with (after :meth:`kill9` or a crash)."""
        if self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is still running")
        self.restarts[name] = self.restarts.get(name, 0) + 1
        self.start_command(name, self.commands[name])

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def log_tail(self, name: str, lines: int = 8, grep: str | None = None) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        if grep:
            text = [t for t in text if grep in t]
        return "\n".join(text[-lines:])

    def errors(self) -> dict[str, str]:
        """ERROR lines logged so far, per process (a node that fails to configure keeps running)."""
        return {n: e for n in self.procs if (e := self.log_tail(n, 3, grep="ERROR"))}

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # the aggregator's SuperLink/ServerApp run in sessions of their own: kill the whole tree
                from sakura_nexus.process import kill_tree

                kill_tree(p.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for log in self._logs:
            log.close()
        return {n: p.returncode for n, p in self.procs.items()}

    def pids(self, name: str) -> list[int]:
        p = self.procs[name]
        out = subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True, text=True).stdout.split()
        return [p.pid] + [int(x) for x in out if int(x) != p.pid]

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for n in self.procs:
            try:
                total = 0.0
                for pid in self.pids(n):
                    with open(f"/proc/{pid}/status") as f:
                        total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
                out[n] = round(total, 1)
            except (OSError, StopIteration, ValueError):
                out[n] = float("nan")
        return out

    def cpu_s(self) -> dict[str, float]:
        """User + system CPU seconds used so far by each process (and its session)."""
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for n in self.procs:
            total = 0.0
            try:
                for pid in self.pids(n):
                    with open(f"/proc/{pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, ValueError, IndexError):
                pass
            out[n] = round(total, 2)
        return out


# the robot stack: perception + world model + policy as processes of their own, or their container
STACK_PROCESSES = (*(spec.name for spec in bringup.COMPOSED), bringup.CONTAINER.name)


def cpu_cores(before: dict, after: dict, seconds: float) -> dict:
    """CPU cores used per supervised process between two :meth:`Supervisor.cpu_s` readings, plus
    ``robot_stack`` (perception + world model + policy, or their container) and ``robot_sync``
    (federated_sync_node with its SuperNode and ClientApp processes) where those ran."""
    out = {n: round((after[n] - before.get(n, 0.0)) / max(seconds, 1e-9), 3) for n in after}
    out["robot_stack"] = round(sum(v for n, v in out.items() if n in STACK_PROCESSES), 3)
    if "federated_sync_node" in out:
        out["robot_sync"] = out["federated_sync_node"]
    return out

