"""Start the Flower 1.42 deployment for fleet sync: ``sakura-nexus aggregator`` / ``sakura-nexus supernode``.

Aggregator host (no ROS, ``pip install .[fleet]``)::

    sakura-nexus aggregator --store-dir /var/lib/sakura/agg --init-world-model shipped --port 9092

starts ``flower-superlink`` (one HTTP port serves Fleet, Control and Runtime APIs in Flower 1.42),
waits for ``/health``, writes a private Flower config (``$FLWR_HOME/config.toml``) with a connection
to it, materialises the app directory from ``flwr_app.toml`` and submits it with ``flwr run``. The
SuperLink's SuperExec then starts ``flwr-serverapp``, which imports
``sakura_nexus.federated.flower_app:server_app``. Robot side::

    sakura-nexus supernode --superlink agg-host:9092 --robot-id r1 --spool-dir /var/lib/sakura/spool

Air-gapped by default: ``FLWR_TELEMETRY_ENABLED=0``, ``FLWR_DISABLE_UPDATE_CHECK=1``,
``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` plus ``--disable-runtime-dependency-installation``
(SuperLink) and no ``--allow-runtime-dependency-installation`` (SuperNode); the FAB lists no
dependencies. Loopback + ``--insecure`` unless TLS files are given; ``--enable-supernode-auth``
(requires TLS) registers the given SuperNode public keys with ``flwr supernode register``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources

from .fleet_defaults import FLEET

AIRGAP_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
CONNECTION = "sakura"
APP_DIR_NAME = "sakura-fedsync"
DEFAULT_PORT = 9092

_ENTRY_POINTS = {
    "flower-superlink": "flwr.superlink.cli:flower_superlink",
    "flower-supernode": "flwr.supernode.cli:flower_supernode",
}

__all__ = [
    "AIRGAP_ENV",
    "AggregatorProcess",
    "aggregator_command",
    "SuperNodeSupervisor",
    "aggregator_main",
    "flower_env",
    "flwr_cli_batch",
    "free_port",
    "generate_dev_certificates",
    "generate_supernode_keys",
    "kill_tree",
    "start_run",
    "start_superlink",
    "supernode_command",
    "supernode_main",
    "wait_healthy",
    "write_flower_config",
]


# --------------------------------------------------------------------------- environment


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(v) for v in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # Linux default


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now, for a server process started next.

    Chosen *below* the kernel's ephemeral range. A port the kernel hands out for ``bind(0)`` lies
    inside it, where any outgoing connection (gRPC clients of other SuperNodes, say) can take it as
    its source port before the server binds (a SuperNode failed with "address already in use" that
    way in a CI run). Falls back to ``bind(0)`` where the range leaves no room."""
    lo, _ = _ephemeral_range()
    if lo > 20000:
        rng = random.Random()  # not the global generator: callers may have seeded it
        for _ in range(200):
            port = rng.randrange(15000, lo)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def flower_env(flwr_home: str, base: dict | None = None) -> dict:
    """Environment for Flower processes: air-gapped flags, private FLWR_HOME, this venv's bin on PATH
    (SuperLink/SuperNode start ``flower-superexec``/``flwr-serverapp``/``flwr-clientapp`` by name) and
    ``sakura_nexus`` importable by those children even from a source checkout."""
    env = dict(os.environ if base is None else base)
    env.update(AIRGAP_ENV)
    env["FLWR_HOME"] = flwr_home
    bindir = os.path.dirname(os.path.abspath(sys.executable))
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    import sakura_nexus

    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(sakura_nexus.__file__)))
    pp = env.get("PYTHONPATH", "")
    if pkg_parent not in pp.split(os.pathsep):
        env["PYTHONPATH"] = pkg_parent + (os.pathsep + pp if pp else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def flower_cmd(name: str) -> list[str]:
    """Command prefix for a Flower console script (the venv's script, else ``python -c`` its entry point)."""
    script = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), name)
    if os.path.exists(script):
        return [script]
    found = shutil.which(name)
    if found:
        return [found]
    mod, func = _ENTRY_POINTS[name].split(":")
    return [sys.executable, "-c", f"import sys; sys.argv[0] = {name!r}; from {mod} import {func}; "
                                  f"sys.exit({func}())"]


def write_flower_config(flwr_home: str, address: str, *, root_certificates: str | None = None) -> str:
    """Write ``$FLWR_HOME/config.toml`` with one SuperLink connection named ``sakura``."""
    os.makedirs(flwr_home, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
             f"address = {json.dumps(address)}"]
    if root_certificates:
        lines.append(f"root-certificates = {json.dumps(os.path.abspath(root_certificates))}")
    else:
        lines.append("insecure = true")
    path = os.path.join(flwr_home, "config.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def materialise_app(dest_parent: str, secure: bool = False) -> str:
    """Create ``<dest_parent>/sakura-fedsync/pyproject.toml`` from the packaged template; return the dir.
    ``secure``: the FAB names the SecAgg+ apps (``secure_server_app`` / ``secure_client_app``)."""
    app_dir = os.path.join(dest_parent, APP_DIR_NAME)
    os.makedirs(app_dir, exist_ok=True)
    text = resources.files("sakura_nexus.federated").joinpath("flwr_app.toml").read_text()
    if secure:
        for name in ("server_app", "client_app"):
            old = f'"sakura_nexus.federated.flower_app:{name}"'
            if old not in text:
                raise RuntimeError(f"flwr_app.toml does not name {old}")
            text = text.replace(old, f'"sakura_nexus.federated.flower_app:secure_{name}"')
    with open(os.path.join(app_dir, "pyproject.toml"), "w") as f:
        f.write(text)
    return app_dir


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def config_args(cfg: dict) -> str:
    """``key=value`` pairs in Flower's ``--run-config`` / ``--node-config`` syntax (TOML values)."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in cfg.items())


def wait_healthy(host: str, port: int, timeout: float = 60.0, *, tls_ca: str | None = None,
                 proc: subprocess.Popen | None = None) -> bool:
    """Poll the SuperLink's ``GET /health`` until it answers 2xx."""
    import ssl

    import httpx

    scheme = "https" if tls_ca else "http"
    url = f"{scheme}://{host}:{port}/health"
    verify = ssl.create_default_context(cafile=tls_ca) if tls_ca else True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            r = httpx.get(url, timeout=2.0, verify=verify)
            if r.is_success:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


# --------------------------------------------------------------------------- TLS / auth material


@dataclass
class TLSFiles:
    certfile: str
    keyfile: str
    ca_certfile: str



def generate_dev_certificates(directory: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                              days: int = 30) -> TLSFiles:
    """Self-signed CA + server certificate for ``hosts`` (tests / lab setups; use a real PKI in production).
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sakura-nexus dev CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    sans = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TLSFiles(os.path.join(directory, "server.pem"), os.path.join(directory, "server.key"),
                     os.path.join(directory, "ca.pem"))
    pem = serialization.Encoding.PEM
    with open(files.ca_certfile, "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(files.certfile, "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(files.keyfile, "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(files.keyfile, 0o600)
    return files


def generate_supernode_keys(directory: str, name: str = "supernode") -> tuple[str, str]:
    """EC P-384 key pair in OpenSSH format for SuperNode authentication; returns (private, public) paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    os.makedirs(directory, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    priv = os.path.join(directory, name)
    pub = priv + ".pub"
    with open(priv, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                  serialization.NoEncryption()))
    os.chmod(priv, 0o600)
    with open(pub, "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                              serialization.PublicFormat.OpenSSH))
    return priv, pub


# --------------------------------------------------------------------------- SuperLink + run


def start_superlink(host: str, port: int, flwr_home: str, *, database: str | None = None,
                    tls: TLSFiles | None = None, enable_supernode_auth: bool = False,
                    log_path: str | None = None, env: dict | None = None) -> subprocess.Popen:
    cmd = flower_cmd("flower-superlink") + ["--host", host, "--port", str(port), "--isolation", "subprocess",
                                            "--disable-runtime-dependency-installation"]
    if tls is None:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-certfile", tls.certfile, "--ssl-keyfile", tls.keyfile,
                "--ssl-ca-certfile", tls.ca_certfile]
    if enable_supernode_auth:
        if tls is None:
            raise ValueError("SuperNode authentication requires TLS")
        cmd.append("--enable-supernode-auth")
    if database:
        cmd += ["--database", database]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    try:
        return subprocess.Popen(cmd, env=env or flower_env(flwr_home), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        if log_path:
            out.close()


_FLWR_BATCH = r"""
import json, sys
from flwr.cli.app import app
for argv in json.loads(sys.argv[1]):
    print("@@BEGIN", flush=True)
    try:
        app(args=argv, prog_name="flwr", standalone_mode=False)
    except SystemExit as e:
        print("@@EXIT", e.code, flush=True)
    except Exception as e:  # reported to the caller, which raises
        print("@@ERROR", type(e).__name__, e, flush=True)
    print("@@END", flush=True)
"""


def flwr_cli_batch(commands: list[list[str]], env: dict, timeout: float = 180.0) -> list[str]:
    """Run several ``flwr`` CLI commands in one Python process (the CLI's import cost is paid once)
    and return each command's output."""
    res = subprocess.run([sys.executable, "-c", _FLWR_BATCH, json.dumps(commands)], env=env,
                         capture_output=True, text=True, timeout=timeout, check=False)
    outs = [chunk.split("@@END")[0] for chunk in res.stdout.split("@@BEGIN")[1:]]
    if len(outs) != len(commands):
        raise RuntimeError(f"flwr CLI failed (rc={res.returncode}): {res.stdout[-2000:]} "
                           f"{res.stderr[-2000:]}")
    return outs


def _json_result(out: str, what: str) -> dict:
    try:
        d = json.loads(out[out.index("{"):out.rindex("}") + 1])
    except ValueError:
        d = {}
    if not d.get("success"):
        raise RuntimeError(f"{what} failed: {out[-2000:]}")
    return d


def run_command(app_dir: str, run_config: dict, *, connection: str = CONNECTION) -> list[str]:
    args = ["run", app_dir, connection, "--format", "json"]
    if run_config:
        args += ["--run-config", config_args(run_config)]
    return args


def start_run(app_dir: str, run_config: dict, env: dict, *, connection: str = CONNECTION) -> int:
    """``flwr run <app_dir> <connection> --run-config ... --format json``; returns the run id."""
    out = flwr_cli_batch([run_command(app_dir, run_config, connection=connection)], env)[0]
    return int(_json_result(out, "flwr run")["run-id"])


def stop_run(run_id: int, env: dict, *, connection: str = CONNECTION) -> None:
    flwr_cli_batch([["stop", str(run_id), connection]], env, timeout=60.0)


def register_supernode(public_key_path: str, env: dict, *, connection: str = CONNECTION) -> int:
    """``flwr supernode register <public key> <connection>``; returns the node id."""
    out = flwr_cli_batch([["supernode", "register", public_key_path, connection, "--format", "json"]], env)[0]
    return int(_json_result(out, "flwr supernode register")["node-id"])


@dataclass
class AggregatorProcess:
    """A running SuperLink + FedBuff run (used by ``aggregator_main``, tests and benches)."""

    store_dir: str
    host: str = "127.0.0.1"
    port: int = 0
    run_config: dict = field(default_factory=dict)
    secure: bool = False  # SecAgg+ secure aggregation (synchronous rounds; flower_app secure_* apps)
    tls: TLSFiles | None = None
    enable_supernode_auth: bool = False
    supernode_public_keys: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    run_id: int | None = None
    run_started: float = 0.0

    @property
    def flwr_home(self) -> str:
        return os.path.join(self.store_dir, "flwr-home")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def env(self) -> dict:
        return flower_env(self.flwr_home)

    def start(self, timeout: float = 90.0) -> AggregatorProcess:
        os.makedirs(self.store_dir, exist_ok=True)
        for stale in ("STOP", "status.json"):  # left by a previous session
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.store_dir, stale))
        if not self.port:
            self.port = free_port(self.host)
        env = self.env()
        write_flower_config(self.flwr_home, self.address,
                            root_certificates=self.tls.ca_certfile if self.tls else None)
        self.proc = start_superlink(self.host, self.port, self.flwr_home,
                                    database=os.path.join(self.store_dir, "superlink.db"), tls=self.tls,
                                    enable_supernode_auth=self.enable_supernode_auth,
                                    log_path=os.path.join(self.store_dir, "superlink.log"), env=env)
        if not wait_healthy(self.host, self.port, timeout, tls_ca=self.tls.ca_certfile if self.tls else None,
                            proc=self.proc):
            self.kill()
            raise RuntimeError(f"SuperLink did not become healthy; see {self.store_dir}/superlink.log")
        app_dir = materialise_app(self.flwr_home, secure=self.secure)
        rc = {"store-dir": os.path.abspath(self.store_dir), **self.run_config}
        # one CLI process: register the robots' SuperNode keys, then submit the run
        cmds = [["supernode", "register", os.path.abspath(k), CONNECTION, "--format", "json"]
                for k in self.supernode_public_keys]
        outs = flwr_cli_batch(cmds + [run_command(app_dir, rc)], env)
        for k, out in zip(self.supernode_public_keys, outs, strict=False):
            _json_result(out, f"flwr supernode register {k}")
        self._set_run(int(_json_result(outs[-1], "flwr run")["run-id"]))
        return self

    def _set_run(self, run_id: int) -> None:
        self.run_id = run_id
        self.run_started = time.time()
        with open(os.path.join(self.store_dir, "run.json"), "w") as f:
            json.dump({"run_id": self.run_id, "address": self.address, "pid": self.proc.pid}, f)

    def restart_run(self) -> int:
        """Submit the ServerApp again (it died while the SuperLink stayed up); it resumes the checkpoint."""
        app_dir = materialise_app(self.flwr_home, secure=self.secure)
        rc = {"store-dir": os.path.abspath(self.store_dir), **self.run_config}
        self._set_run(start_run(app_dir, rc, self.env()))
        return self.run_id

    def heartbeat_age(self) -> float:
        """Seconds since the ServerApp last wrote status.json (since the run started if it never did)."""
        st = self.status() or {}
        hb = float(st.get("heartbeat", 0.0)) if st.get("pid") else 0.0
        return time.time() - max(hb, self.run_started)

    def status(self) -> dict | None:
        try:
            with open(os.path.join(self.store_dir, "status.json")) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful: ask the ServerApp to stop (STOP file), then terminate the SuperLink process group."""
        if self.proc is None:
            return
        with open(os.path.join(self.store_dir, "STOP"), "w"):
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st is None or st.get("state") == "stopped":
                break
            time.sleep(0.3)
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """Hard crash of the whole aggregator: SIGKILL the SuperLink and every descendant (its SuperExec
        and the ServerApp run in their own sessions, so the process group alone is not enough)."""
        if self.proc is None:
            return
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


def descendants(pid: int) -> list[int]:
    """PIDs of all descendants of ``pid`` (Linux /proc), parents before children."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(0), []):
            out.append(c)
            todo.append(c)
    return out


# --------------------------------------------------------------------------- SuperNode


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


def _proc_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (/proc/<pid>/stat field 22); None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def kill_tree(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM ``pid``, its process group and every descendant (SuperExec / ClientApps run in their own
    sessions); SIGKILL whatever is left after ``timeout``."""
    procs = [pid, *descendants(pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if all(_proc_start_ticks(p) is None or _is_zombie(p) for p in procs):
                return
            time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


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
        # the per-exchange ClientApp via sakura_nexus.federated.light_clientapp (light imports, SCHED_IDLE)
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
        if pid > 0 and ticks is not None and _proc_start_ticks(pid) == ticks and not _is_zombie(pid):
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
        from .durable import atomic_write_json

        atomic_write_json(self.pidfile, {"pid": self.proc.pid, "start_ticks": _proc_start_ticks(self.proc.pid),
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
                [sys.executable, "-m", "sakura_nexus.federated.light_clientapp", "--serve", self._env[SOCKET_ENV],
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


# --------------------------------------------------------------------------- aggregator CLI


_RUN_FLAGS = [  # (flag, run-config key, type)
    ("--model-size", "model-size", int), ("--init-model", "init-model", str),
    ("--init-version", "init-version", int), ("--model-id", "model-id", str),
    ("--model-codec", "model-codec", str), ("--buffer-size", "buffer-size", int),
    ("--staleness-exponent", "staleness-exponent", float), ("--max-staleness", "max-staleness", int),
    ("--server-lr", "server-lr", float), ("--clip-norm", "clip-norm", float),
    ("--reject-norm", "reject-norm", float), ("--robust", "robust", str),
    ("--trim-ratio", "trim-ratio", float),
    ("--max-payload-bytes", "max-payload-bytes", int), ("--allowed-codecs", "allowed-codecs", str),
    ("--dp-noise-multiplier", "dp-noise-multiplier", float), ("--dp-max-epsilon", "dp-max-epsilon", float),
    ("--dp-sample-rate", "dp-sample-rate", float), ("--sync-interval", "sync-interval-s", float),
    ("--max-duration", "max-duration-s", float),
    ("--secure-min-nodes", "secure-min-nodes", int), ("--secure-min-group", "secure-min-group", int),
    ("--secure-clipping-range", "secure-clipping-range", float),
    ("--secure-timeout", "secure-timeout-s", float),
]


def aggregator_main(argv: list[str] | None = None) -> int:
    """``sakura-nexus aggregator``: SuperLink + FedBuff ServerApp; runs until SIGINT/SIGTERM."""
    p = argparse.ArgumentParser(prog="sakura-nexus aggregator", description=aggregator_main.__doc__)
    p.add_argument("--store-dir", required=True, help="checkpoints, de-dup table, status.json, logs")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="Flower HTTP port (Fleet/Control/Runtime)")
    for flag, _key, typ in _RUN_FLAGS:
        p.add_argument(flag, type=typ, default=None)
    p.add_argument("--init-world-model", default=None, metavar="CHECKPOINT",
                   help="start from this world-model checkpoint (directory or world_model.bin; 'shipped' = "
                        "the shipped models/): its parameters, flattened in named_parameters order, become "
                        "the initial global model (<store-dir>/init_world_model.npy) with the checkpoint's "
                        "version; sets --init-model/--init-version/--model-size. Ignored on a restart "
                        "(the store's checkpoint wins)")
    p.add_argument("--signing-key", default=None, metavar="PEM",
                   help="Ed25519 private key that signs every global model (sakura-nexus fleet-keys generate); "
                        "robots refuse unsigned models (docs/federated.md)")
    p.add_argument("--run-config", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Flower run-config entry (TOML value), repeatable")
    p.add_argument("--ssl-certfile", default=None)
    p.add_argument("--ssl-keyfile", default=None)
    p.add_argument("--ssl-ca-certfile", default=None)
    p.add_argument("--enable-supernode-auth", action="store_true", help="requires TLS")
    p.add_argument("--supernode-public-key", action="append", default=[],
                   help="OpenSSH EC public key of a robot's SuperNode to register (repeatable)")
    p.add_argument("--secure-aggregation", action="store_true",
                   help="SecAgg+ secure aggregation: synchronous rounds over the connected robots; the "
                        "aggregator only unmasks the mean of each round's group, never one robot's delta "
                        "(docs/federated.md, 'Secure aggregation'). Excludes central DP")
    p.add_argument("--restart-stale-s", type=float, default=180.0,
                   help="resubmit the ServerApp if its status heartbeat is older than this (0 = never)")
    a = p.parse_args(argv)
    tls = None
    if a.ssl_certfile or a.ssl_keyfile or a.ssl_ca_certfile:
        if not (a.ssl_certfile and a.ssl_keyfile and a.ssl_ca_certfile):
            p.error("TLS needs --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile")
        tls = TLSFiles(a.ssl_certfile, a.ssl_keyfile, a.ssl_ca_certfile)
    if a.enable_supernode_auth and tls is None:
        p.error("--enable-supernode-auth requires TLS")
    rc: dict = {}
    for flag, key, _typ in _RUN_FLAGS:
        v = getattr(a, flag[2:].replace("-", "_"))
        if v is not None:
            rc[key] = v
    if a.signing_key:
        from .signing import Signer

        try:
            Signer.load(a.signing_key)
        except (OSError, ValueError) as e:
            p.error(f"--signing-key: {e}")
        rc["signing-key"] = os.path.abspath(a.signing_key)
    for item in a.run_config:
        k, _, v = item.partition("=")
        rc[k.strip()] = _parse_scalar(v.strip())
    init_info = None
    if a.init_world_model is not None:
        if a.init_model:
            p.error("--init-world-model and --init-model are exclusive")
        from .weights import write_init_model

        init_info = write_init_model(a.init_world_model, os.path.abspath(a.store_dir))
        if a.model_size is not None and a.model_size != init_info["size"]:
            p.error(f"--model-size {a.model_size} != {init_info['size']} parameters of {a.init_world_model}")
        rc["init-model"] = init_info["path"]
        rc["model-size"] = init_info["size"]
        if a.init_version is None:
            rc["init-version"] = init_info["version"]
    if a.secure_aggregation and float(rc.get("dp-noise-multiplier", 0) or 0) > 0:
        p.error("--secure-aggregation excludes --dp-noise-multiplier (central DP clips per-robot deltas)")
    agg = AggregatorProcess(store_dir=os.path.abspath(a.store_dir), host=a.host, port=a.port, run_config=rc,
                            secure=a.secure_aggregation, tls=tls, enable_supernode_auth=a.enable_supernode_auth,
                            supernode_public_keys=a.supernode_public_key)
    stopping = {"flag": False}

    def _on_signal(signum, _frame):
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    agg.start()
    print(json.dumps({"event": "aggregator_started", "address": agg.address, "run_id": agg.run_id,
                      "secure": agg.secure,
                      "store_dir": agg.store_dir, "init": init_info}), flush=True)
    rc_code = 0
    while not stopping["flag"]:
        if not agg.alive():
            print(json.dumps({"event": "superlink_exited"}), flush=True)
            rc_code = 1
            break
        st = agg.status()
        if st is not None and st.get("state") == "stopped" and st.get("heartbeat", 0) >= agg.run_started:
            break
        if a.restart_stale_s > 0 and agg.heartbeat_age() > a.restart_stale_s:
            run_id = agg.restart_run()
            print(json.dumps({"event": "serverapp_restarted", "run_id": run_id}), flush=True)
        time.sleep(1.0)
    agg.stop()
    return rc_code


def aggregator_command(store_dir: str, *, port: int = DEFAULT_PORT, host: str = "127.0.0.1",
                       init_world_model: str | None = "shipped", buffer_size: int = FLEET.buffer_size,
                       clip_norm: float = FLEET.clip_norm, sync_interval: float = FLEET.sync_interval_s,
                       allowed_codecs: str | None = None,
                       signing_key: str | None = None, executable: list[str] | None = None,
                       extra: tuple[str, ...] = ()) -> list[str]:
    """The ``sakura-nexus aggregator`` command line for a fleet whose robots run ``init_world_model``
    (checkpoint dir / world_model.bin / ``shipped``): used by launch/fleet.launch.py and the demo.
    ``executable`` defaults to ``[python, -m, sakura_nexus]``; the fleet defaults are :data:`FLEET`."""
    cmd = list(executable or [sys.executable, "-m", "sakura_nexus"]) + [
        "aggregator", "--store-dir", str(store_dir), "--host", host, "--port", str(int(port)),
        "--buffer-size", str(int(buffer_size)), "--clip-norm", repr(float(clip_norm)),
        "--sync-interval", repr(float(sync_interval))]
    if init_world_model:
        cmd += ["--init-world-model", str(init_world_model)]
    if allowed_codecs:
        cmd += ["--allowed-codecs", allowed_codecs]
    if signing_key:
        cmd += ["--signing-key", str(signing_key)]
    return cmd + list(extra)


def _parse_scalar(v: str):
    for conv in (int, float):
        with contextlib.suppress(ValueError):
            return conv(v)
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    return v.strip('"')
