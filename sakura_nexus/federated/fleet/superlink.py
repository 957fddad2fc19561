"""The fleet side of the Flower deployment: ``sakura-nexus aggregator`` (aggregator host, no ROS,
``pip install .[fleet]``)::

    sakura-nexus aggregator --store-dir /var/lib/sakura/agg --init-world-model shipped --port 9092

starts ``flower-superlink`` (one HTTP port serves Fleet, Control and Runtime APIs in Flower 1.42), waits for
``/health``, writes a private Flower config (``$FLWR_HOME/config.toml``) with a connection to it,
materialises the app directory from ``flwr_app.toml`` and submits it with ``flwr run``. The SuperLink's
SuperExec then starts ``flwr-serverapp``, which imports ``sakura_nexus.federated.fleet.serverapp:server_app``.
Loopback + ``--insecure`` unless TLS files are given (``--disable-runtime-dependency-installation`` always);
``--enable-supernode-auth`` (requires TLS) registers the given SuperNode public keys with
``flwr supernode register``. :class:`AggregatorProcess` is the same as a supervised child process (demo,
benches, tests); :func:`aggregator_command` the command line the launch files and the demo use.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from sakura_nexus.process import descendants

from ..common.flower_cli import (
    CONNECTION,
    DEFAULT_PORT,
    TLSFiles,
    config_args,
    flower_cmd,
    flower_env,
    free_port,
    materialise_app,
    wait_healthy,
    write_flower_config,
)
from .fleet_defaults import FLEET


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
    secure: bool = False  # SecAgg+ secure aggregation (synchronous rounds; the secure_* apps of serverapp / clientapp)
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
        from ..common.signing import Signer

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
        from ..common.weights import write_init_model

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
