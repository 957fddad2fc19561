"""The robot's per-exchange ClientApp process, forked warm and at idle priority.

Flower 1.42's SuperNode (``--isolation subprocess``) has its SuperExec start one ``flwr-clientapp``
process per message, found by name on ``PATH``. Flower's own ``flwr-clientapp`` imports the whole
``flwr.supernode.cli`` package first, then the ClientApp runtime: ~1.4 CPU-s per exchange on the
2-core target (``bench/bench_sync_cost.py``), nearly all of it imports, for a ClientApp that only
moves spool bytes (``clientapp.handle_sync``).

Here the ``flwr-clientapp`` found first on the SuperNode's ``PATH`` (:func:`robot_flower_env`) is a
small launcher (:func:`main`: standard library only, ~0.03 CPU-s). It hands its arguments and its
stdin/stdout/stderr to a *warm* ClientApp server on a Unix socket in the SuperNode's FLWR_HOME, which
has the ClientApp runtime and the robot's app module imported once, and which forks one child per
exchange; the child runs exactly what Flower's command runs
(``flwr.supernode.runtime.run_clientapp.run_clientapp`` with the same arguments: token, Runtime API
address, TLS), so the protocol, the FAB and the ClientApp code are Flower's and this project's as
before. The server (:func:`serve`, ``python -m sakura_nexus.federated.robot.light_clientapp --serve SOCKET
SUPERNODE_PID``) is started next to the SuperNode by its supervisor
(``launcher.SuperNodeSupervisor``), so it stays in the sync node's process tree; it runs at
``SCHED_IDLE`` (inherited by every child: any control-loop thread that wakes preempts it at once) and
exits when that SuperNode is gone. Where the server cannot be reached (still importing after a
start, or gone) the launcher runs the ClientApp itself (the cold path, as costly as Flower's
command). Every launcher and server event is one JSON line in ``$FLWR_HOME/clientapp.log`` (which
path the exchange took, the process' CPU time).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time

__all__ = ["install_command", "main", "robot_flower_env", "serve"]

COMMAND = "flwr-clientapp"
SOCKET_ENV = "SAKURA_CLIENTAPP_SOCKET"


def _log(event: str, **kw) -> None:
    """One JSON line per launcher / server event in ``$FLWR_HOME/clientapp.log`` (which path an exchange
    took, and the CPU time of the process that logs it)."""
    home = os.environ.get("FLWR_HOME")
    if not home:
        return
    t = os.times()
    rec = {"t": round(time.time(), 3), "pid": os.getpid(), "event": event, "cpu_s": round(t.user + t.system, 3), **kw}
    try:
        with open(os.path.join(home, "clientapp.log"), "a") as f:
            f.write(json.dumps(rec) + "\n")
    except OSError:
        pass


def _idle() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:
            pass


def _run(argv: list[str]) -> int:
    """Flower's ``flwr-clientapp`` command (same arguments), without the SuperNode CLI's imports."""
    import argparse

    from flwr.common.args import add_args_flwr_app_common, try_obtain_flwr_app_token
    from flwr.supercore.constant import SUPERNODE_DEFAULT_CLIENT_ADDRESS
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    parser = argparse.ArgumentParser(prog=COMMAND, description="Run the sakura_nexus robot ClientApp")
    parser.add_argument("--runtime-api-address", dest="runtime_api_address", default=SUPERNODE_DEFAULT_CLIENT_ADDRESS)
    add_args_flwr_app_common(parser=parser)
    args = parser.parse_args(argv)
    run_clientapp(runtime_api_address=args.runtime_api_address, token=try_obtain_flwr_app_token(args),
                  insecure=args.insecure,
                  certificates=validate_and_resolve_root_certificates(args.root_certificates, args.insecure),
                  parent_pid=args.parent_pid, runtime_dependency_install=args.runtime_dependency_install)
    return 0


def _preload() -> None:
    """What every exchange imports: the ClientApp runtime and the robot's app module (flwr_app.toml)."""
    import argparse  # noqa: F401

    import flwr.common.args
    import flwr.supercore.tls
    import flwr.supernode.runtime.run_clientapp  # noqa: F401

    import sakura_nexus.federated.robot.clientapp  # noqa: F401


def serve(path: str, owner_pid: int, idle_exit_s: float | None = None) -> int:
    """The warm ClientApp server on Unix socket ``path``: one forked child per request, which runs with the
    launcher's stdin/stdout/stderr (passed over the socket: its output lands where Flower's command's would);
    exits when ``owner_pid`` (the SuperNode) is gone or after ``idle_exit_s`` without a request."""
    _idle()
    _log("server_start")
    _preload()
    with _listening(path) as srv:
        _log("server_listening")
        last = time.monotonic()
        while True:
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                pass
            if not _alive(owner_pid) or (idle_exit_s is not None and time.monotonic() - last > idle_exit_s):
                return 0
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            last = time.monotonic()
            with conn:
                fds: list[int] = []
                try:
                    conn.settimeout(10.0)
                    first, fds, _, _ = socket.recv_fds(conn, 65536, 3)
                    req = json.loads(_recv_line(conn, first))
                except (OSError, ValueError):
                    _close(fds)
                    continue
                pid = os.fork()
                if pid:
                    _close(fds)
                    _log("server_forked", child=pid)
                if pid == 0:                                   # the exchange
                    srv.close()
                    code = 1
                    try:
                        if len(fds) == 3:
                            for target, fd in enumerate(fds):
                                os.dup2(fd, target)
                        _close(fds)
                        os.chdir(req.get("cwd") or "/")
                        code = _run(list(req["argv"]))
                    except SystemExit as e:
                        code = e.code if isinstance(e.code, int) else 1
                    except BaseException:  # noqa: BLE001 - reported as the exit code
                        import traceback

                        traceback.print_exc()
                    try:
                        conn.sendall(f"{code}\n".encode())
                    except OSError:
                        pass
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)


class _listening:
    def __init__(self, path: str):
        self.path = path

    def __enter__(self) -> socket.socket:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o600)
        self.ino = os.stat(self.path).st_ino
        self.sock.listen(8)
        self.sock.settimeout(1.0)
        return self.sock

    def __exit__(self, *exc) -> None:
        self.sock.close()
        try:
            if os.stat(self.path).st_ino == self.ino:   # not a successor's socket at the same path
                os.unlink(self.path)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _recv_line(conn: socket.socket, buf: bytes = b"") -> str:
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf.decode()


def _ask(path: str, argv: list[str]) -> int | None:
    """Run one exchange in the warm server; None if it cannot be reached."""
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
    except OSError:
        return None
    with s:
        msg = (json.dumps({"argv": argv, "cwd": os.getcwd()}) + "\n").encode()
        try:
            socket.send_fds(s, [msg], [0, 1, 2])   # the exchange writes where this process would
        except OSError:                              # a closed standard fd: the server's own output
            s.sendall(msg)
        reply = _recv_line(s).strip()
    return int(reply) if reply.lstrip("-").isdigit() else 1


def main(argv: list[str] | None = None) -> int:
    """The ``flwr-clientapp`` launcher (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"]:
        return serve(argv[1], int(argv[2]))
    _idle()
    path = os.environ.get(SOCKET_ENV, "")
    if path:
        code = _ask(path, argv)
        if code is not None:
            _log("launcher_warm", code=code)
            return code
    # no server reachable (not started yet, still importing, or gone): run this exchange here, at once --
    # the Runtime API token of this exchange must not wait for the server's imports
    _log("launcher_cold", socket=bool(path))
    try:
        return _run(argv)                     # the cold path
    finally:
        _log("launcher_cold_done")


def install_command(bin_dir: str) -> str:
    """Write the ``flwr-clientapp`` launcher (this interpreter, :func:`main`) into ``bin_dir``; returns its path."""
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, COMMAND)
    # the module is loaded from its file, not imported through its package: the launcher then imports
    # the standard library only (no sakura_nexus.federated, no numpy); PYTHONPATH is kept for the cold path
    text = (f"#!{sys.executable} -I\n# written by sakura_nexus.federated.robot.light_clientapp\n"
            "import importlib.util\nimport os\nimport sys\n\n"
            "sys.path[:0] = [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]\n"
            f"spec = importlib.util.spec_from_file_location('sakura_clientapp', {os.path.abspath(__file__)!r})\n"
            "mod = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(mod)\nsys.exit(mod.main())\n")
    try:
        with open(path) as f:
            if f.read() == text:
                return path
    except OSError:
        pass
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, os.stat(tmp).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(tmp, path)
    return path


def robot_flower_env(flwr_home: str, base: dict | None = None) -> dict:
    """``launcher.flower_env`` for a robot's SuperNode, with the light ClientApp launcher first on PATH."""
    from ..common.flower_cli import flower_env

    env = flower_env(flwr_home, base)
    bin_dir = os.path.dirname(install_command(os.path.join(flwr_home, "bin")))
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    sock = os.path.join(os.path.abspath(flwr_home), "clientapp.sock")
    if len(sock) > 100:                       # AF_UNIX path limit (108 bytes)
        import hashlib

        sock = f"/tmp/sakura_clientapp_{hashlib.sha256(sock.encode()).hexdigest()[:16]}.sock"
    env[SOCKET_ENV] = sock
    return env


# the warm server: python -m sakura_nexus.federated.robot.light_clientapp --serve SOCKET SUPERNODE_PID
if __name__ == "__main__":
    raise SystemExit(main())
