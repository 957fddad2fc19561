"""The robot side of the Flower deployment: its SuperNode.

    sakura-nexus supernode --superlink agg-host:9092 --robot-id r1 --spool-dir /var/lib/sakura/spool

:func:`supernode_command` builds the ``flower-supernode`` command line (the node config carries the
spool directory and robot id; no ``--allow-runtime-dependency-installation``), and
:class:`SuperNodeSupervisor` keeps one SuperNode running for ``federated_sync_node`` (restart with
back-off, pid file for a restarted node to adopt or reap its predecessor) together with the warm
ClientApp server of ``robot/light_clientapp.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import time

from sakura_nexus.process import is_zombie, kill_tree, proc_start_ticks

from ..common.flower_cli import config_args, flower_cmd, flower_env, free_port


def supernode_command(superlink: str, spool_dir: str, *, robot_id: str | None = None,
                      host: str = "127.0.0.1", port: int = 9094, root_certificates: str | None = None,
                      auth_private_key: str | None = None, max_retries: int | None = None,
                      extra_node_config: dict | None = None) -> list[str]:
    node_cfg = {"spool-dir": os.path.abspath(spool_dir)}
    if robot_id:
        node_cfg["robot-id"] = robot_id
    node_cfg.update(extra_node_config or {})
    cmd = flower_cmd("flower-supernode") + ["--superlink", superlink, "--host", host, "--port", str(port),
                                            "--node-config", config_args(node_cfg)]
    if root_certificates:
        cmd += ["--root-certificates", root_certificates]
    else:
        cmd.append("--insecure")
    if auth_private_key:
        cmd += ["--auth-supernode-private-key", auth_private_key]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    return cmd

class SuperNodeSupervisor:
    """Runs the robot's Flower SuperNode as a child process and keeps it running.

    ``poll()`` restarts it when it exited (back-off 1 s doubling to ``max_backoff``, reset after a
    minute of uptime); ``stop()`` terminates it and its SuperExec/ClientApp descendants. The pid is
    recorded in ``<spool>/supernode.pid.json`` so that a supervisor started after a crash (``kill -9`` of
    its owner) first kills the orphaned SuperNode of its predecessor (matched by pid *and* start time).
    """

    def __init__(self, superlink: str, spool_dir: str, robot_id: str, *, port: int = 0, host: str = "127.0.0.1",
                 root_certificates: str | None = None, auth_private_key: str | None = None,
                 extra_node_config: dict | None = None, max_backoff: float = 30.0, light_clientapp: bool = True):
        self.superlink, self.spool_dir, self.robot_id = superlink, os.path.abspath(spool_dir), robot_id
        # the per-exchange ClientApp via sakura_nexus.federated.robot.light_clientapp (light imports, SCHED_IDLE)
        self.light_clientapp = bool(light_clientapp)
        self.port, self.host = int(port), host
        self.root_certificates, self.auth_private_key = root_certificates or None, auth_private_key or None
        self.extra_node_config = dict(extra_node_config or {})
        self.max_backoff = float(max_backoff)
        self.flwr_home = os.path.join(self.spool_dir, "flwr-home")
        self.pidfile = os.path.join(self.spool_dir, "supernode.pid.json")
        self.log_path = os.path.join(self.flwr_home, "supernode.log")
        self.proc: subprocess.Popen | None = None
        # light_clientapp's warm ClientApp server for the current SuperNode (our child, not the SuperExec's)
        self.clientapp_server: subprocess.Popen | None = None
        self.clientapp_server_starts = 0
        self._server_started = 0.0
        self.started_at = 0.0  # wall time of the current process's start
        self.starts = 0
        self.restarts = 0
        self.stale_killed = 0
        self.last_exit: int | None = None
        self._backoff = 1.0
        self._next_start = 0.0
        self._stopped = True

    def command(self) -> list[str]:
        port = self.port or free_port(self.host)
        return supernode_command(self.superlink, self.spool_dir, robot_id=self.robot_id, host=self.host,
                                 port=port, root_certificates=self.root_certificates,
                                 auth_private_key=self.auth_private_key, extra_node_config=self.extra_node_config)

    def kill_stale(self) -> bool:
        try:
            with open(self.pidfile) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            return False
        pid, ticks = int(rec.get("pid", 0)), rec.get("start_ticks")
        killed = False
        if pid > 0 and ticks is not None and proc_start_ticks(pid) == ticks and not is_zombie(pid):
            kill_tree(pid)
            self.stale_killed += 1
            killed = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pidfile)
        return killed

    def start(self) -> None:
        self._stopped = False
        self.kill_stale()
        self._spawn()

    def _spawn(self) -> None:
        os.makedirs(self.flwr_home, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            from .light_clientapp import robot_flower_env

            env = robot_flower_env(self.flwr_home) if self.light_clientapp else flower_env(self.flwr_home)
            self.proc = subprocess.Popen(self.command(), env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        finally:
            log.close()
        if self.light_clientapp:
            self._env = env
            self._start_clientapp_server()
        self.started_at = time.time()
        self.starts += 1
        from ..common.durable import atomic_write_json

        atomic_write_json(self.pidfile, {"pid": self.proc.pid, "start_ticks": proc_start_ticks(self.proc.pid),
                                         "started_at": self.started_at}, fsync=False)

    def _stop_clientapp_server(self) -> None:
        if self.clientapp_server is not None:
            if self.clientapp_server.poll() is None:
                kill_tree(self.clientapp_server.pid, 2.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.clientapp_server.wait(timeout=2.0)
            self.clientapp_server = None

    def _start_clientapp_server(self) -> None:
        """The warm ClientApp server for this SuperNode (``light_clientapp.serve``; it exits with it)."""
        from .light_clientapp import SOCKET_ENV

        self._stop_clientapp_server()
        log = open(os.path.join(self.flwr_home, "clientapp_server.log"), "ab")  # noqa: SIM115 - to the child
        try:
            self.clientapp_server = subprocess.Popen(
                [sys.executable, "-m", "sakura_nexus.federated.robot.light_clientapp", "--serve", self._env[SOCKET_ENV],
                 str(self.proc.pid)], env=self._env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self._server_started = time.monotonic()
        self.clientapp_server_starts += 1

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def poll(self) -> str:
        """``running`` | ``restarted`` | ``waiting`` (exited, back-off pending) | ``stopped``."""
        if self._stopped:
            return "stopped"
        if self.running:
            if time.time() - self.started_at > 60.0:
                self._backoff = 1.0
            if (self.light_clientapp and self.clientapp_server is not None and self.clientapp_server.poll() is not None
                    and time.monotonic() - self._server_started > 30.0):
                self._start_clientapp_server()    # it died: exchanges run cold (Flower's cost) until it is back
            return "running"
        now = time.monotonic()
        if self.proc is not None:  # it just exited: schedule the restart
            self.last_exit = self.proc.returncode
            self.proc = None
            self._next_start = now + self._backoff
            self._backoff = min(self.max_backoff, self._backoff * 2.0)
        if now < self._next_start:
            return "waiting"
        self._spawn()
        self.restarts += 1
        return "restarted"

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped = True
        self._stop_clientapp_server()
        if self.proc is not None:
            kill_tree(self.proc.pid, timeout)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2.0)
            self.proc = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pidfile)

def supernode_main(argv: list[str] | None = None) -> int:
    """``sakura-nexus supernode``: run a Flower SuperNode for one robot (replaces this process)."""
    p = argparse.ArgumentParser(prog="sakura-nexus supernode", description=supernode_main.__doc__)
    p.add_argument("--superlink", required=True, help="aggregator address host:port")
    p.add_argument("--spool-dir", required=True, help="the robot's spool directory (owned by the ROS node)")
    p.add_argument("--robot-id", default=None)
    p.add_argument("--host", default="127.0.0.1", help="bind address of the SuperNode's local runtime API")
    p.add_argument("--port", type=int, default=9094, help="port of the SuperNode's local runtime API")
    p.add_argument("--root-certificates", default=None, help="CA file: use TLS (default: insecure)")
    p.add_argument("--auth-private-key", default=None,
                   help="EC private key (OpenSSH format) for SuperNode auth")
    p.add_argument("--max-retries", type=int, default=None, help="default: retry forever")
    p.add_argument("--flwr-home", default=None, help="default: <spool-dir>/flwr-home")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    a = p.parse_args(argv)
    flwr_home = a.flwr_home or os.path.join(os.path.abspath(a.spool_dir), "flwr-home")
    os.makedirs(flwr_home, exist_ok=True)
    cmd = supernode_command(a.superlink, a.spool_dir, robot_id=a.robot_id, host=a.host, port=a.port,
                            root_certificates=a.root_certificates, auth_private_key=a.auth_private_key,
                            max_retries=a.max_retries)
    env = flower_env(flwr_home)
    if a.dry_run:
        print(" ".join(shlex.quote(c) for c in cmd))
        return 0
    os.execvpe(cmd[0], cmd, env)
    return 0  # unreachable
