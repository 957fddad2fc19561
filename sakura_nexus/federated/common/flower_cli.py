"""Flower 1.42 plumbing shared by both sides of the wire (robot SuperNode, fleet SuperLink).

Air-gapped by default: ``FLWR_TELEMETRY_ENABLED=0``, ``FLWR_DISABLE_UPDATE_CHECK=1``,
``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` (:data:`AIRGAP_ENV`, :func:`flower_env`); the Flower
commands by name (:func:`flower_cmd`), free ports, the private Flower config with a connection
(:func:`write_flower_config`), the app directory from the packaged ``flwr_app.toml``
(:func:`materialise_app`), run-config strings, the SuperLink's ``/health`` wait (:func:`wait_healthy`),
and TLS / SuperNode-auth material for development (:func:`generate_dev_certificates`,
:func:`generate_supernode_keys`). The fleet side starts the SuperLink (``fleet/superlink.py``), the
robot side its SuperNode (``robot/supernode.py``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources

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
        for module, name in (("fleet.serverapp", "server_app"), ("robot.clientapp", "client_app")):
            old = f'"sakura_nexus.federated.{module}:{name}"'
            if old not in text:
                raise RuntimeError(f"flwr_app.toml does not name {old}")
            text = text.replace(old, f'"sakura_nexus.federated.{module}:secure_{name}"')
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
