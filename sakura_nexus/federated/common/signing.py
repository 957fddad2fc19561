"""Signed model updates (ROS-free; Ed25519 through ``cryptography``).

``ModelUpdate.sha256`` proves that a payload arrived intact, not who made it. Every model a robot
hot-swaps must therefore carry a signature by a fleet key the robot trusts:

- What is signed: the UTF-8 bytes of :func:`signed_text` — a fixed header line and the update's
  ``model_id``, ``version``, ``codec`` and the hex sha256 of its ``payload``, one per line. The
  signature thus binds the weights to their model id and version: relabelling a signed encoder update
  as ``world_model``, raising its version or swapping the payload (even with a matching ``sha256``
  field) breaks it.
- Who signs: the aggregator, with ``--signing-key`` (a PEM Ed25519 private key), signs each global
  model it sends down; it travels through the spool inbox and ``model_update`` unchanged. Encoder or
  hand-made updates are signed with :func:`sign_update` and the same kind of key.
- Who checks: every node that applies updates (perception, world model, policy) and
  federated_sync_node before it publishes an inbox model, all through :class:`UpdateGate`. A node
  refuses an update that is unsigned, signed by an unknown key or wrongly, whose payload does not match
  its sha256, or whose version is not newer than the one it runs (replay). No trusted keys = every
  update is refused.
- Trusted keys (``trusted_keys`` parameter): a text file, one public key per line as
  ``ed25519 <base64 of the 32 raw bytes> [comment]`` (``#`` starts a comment). It is re-read when it
  changes, so a key rotation needs no restart: add the new key to every robot's file, switch the
  aggregator to the new private key, then remove the old key.

``python -m sakura_nexus.federated.common.signing generate DIR`` (or ``sakura-nexus fleet-keys generate DIR``)
writes ``fleet_signing_key.pem`` (mode 0600) and ``fleet_keys.pub``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import threading
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HEADER = "sakura_nexus model update v1"
PRIVATE_NAME, PUBLIC_NAME = "fleet_signing_key.pem", "fleet_keys.pub"

# refusal reasons (diagnostics counters model_update_<reason>)
NO_KEYS, UNSIGNED, UNKNOWN_KEY, BAD_SIGNATURE = "no_trusted_keys", "unsigned", "unknown_key", "bad_signature"
SHA256_MISMATCH, REPLAYED, MODEL_ID, MALFORMED = "sha256_mismatch", "replayed", "model_id", "malformed"

__all__ = ["HEADER", "Signer", "TrustedKeys", "UpdateGate", "Verdict", "generate_keys", "key_id",
           "sign_update", "signed_text"]


def signed_text(model_id: str, version: int, codec: str, sha256_hex: str) -> bytes:
    """The exact bytes an update's signature covers."""
    for name, v in (("model_id", model_id), ("codec", codec), ("sha256", sha256_hex)):
        if "\n" in v or "\r" in v:
            raise ValueError(f"{name} must be a single line")
    return f"{HEADER}\nmodel_id={model_id}\nversion={int(version)}\ncodec={codec}\nsha256={sha256_hex}\n" \
        .encode()


def _raw_public(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(pub: Ed25519PublicKey) -> str:
    """Short id of a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    return hashlib.sha256(_raw_public(pub)).hexdigest()[:16]


def public_line(pub: Ed25519PublicKey, comment: str = "") -> str:
    return f"ed25519 {base64.b64encode(_raw_public(pub)).decode()}{' ' + comment if comment else ''}"


class Signer:
    """An Ed25519 private key that signs updates."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def load(cls, path: str) -> Signer:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def sign(self, model_id: str, version: int, codec: str, payload: bytes) -> bytes:
        return self._key.sign(signed_text(model_id, version, codec, hashlib.sha256(payload).hexdigest()))


def sign_update(signer: Signer, model_id: str, version: int, codec: str, payload: bytes) -> dict:
    """The signature fields of an update: ``{"key_id", "signature"}`` (``ModelUpdate`` fields)."""
    return {"key_id": signer.key_id, "signature": signer.sign(model_id, version, codec, payload)}


def parse_public_keys(text: str) -> dict[str, Ed25519PublicKey]:
    """``{key_id: key}`` of a trusted-keys file; raises ValueError naming the bad line."""
    keys = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            if parts[0] != "ed25519" or len(parts) < 2:
                raise ValueError("expected 'ed25519 <base64>'")
            pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(parts[1], validate=True))
        except (ValueError, TypeError) as e:
            raise ValueError(f"line {n}: {e}") from None
        keys[key_id(pub)] = pub
    return keys


class TrustedKeys:
    """The public keys of a trusted-keys file, re-read whenever the file changes (key rotation)."""

    def __init__(self, path: str):
        self.path = path
        self.error = ""
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._mark: tuple | None = None
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        if not self.path:
            self._keys, self.error = {}, "no trusted_keys file configured"
            return
        try:
            st = os.stat(self.path)
            mark = (st.st_mtime_ns, st.st_size, st.st_ino)
            if mark == self._mark:
                return
            with open(self.path) as f:
                keys = parse_public_keys(f.read())
        except (OSError, ValueError) as e:
            self._keys, self._mark, self.error = {}, None, f"trusted keys {self.path}: {e}"
            return
        with self._lock:
            self._keys, self._mark = keys, mark
            self.error = "" if keys else f"trusted keys {self.path}: no keys"

    def get(self, kid: str) -> Ed25519PublicKey | None:
        self.refresh()
        with self._lock:
            return self._keys.get(kid)

    @property
    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._keys)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""  # one of the refusal reasons above ("" when ok)
    detail: str = ""


class UpdateGate:
    """The one check every node runs on a model update before using it (see the module docstring)."""

    def __init__(self, trusted: TrustedKeys | str):
        self.trusted = trusted if isinstance(trusted, TrustedKeys) else TrustedKeys(trusted)

    def check(self, *, model_id: str, version: int, codec: str, payload: bytes, sha256: str, key_id: str,
              signature: bytes, current_version: int, expected_model_id: str) -> Verdict:
        if model_id != expected_model_id:
            return Verdict(False, MODEL_ID, f"model_id {model_id!r} is not {expected_model_id!r}")
        digest = hashlib.sha256(payload).hexdigest()
        if sha256 != digest:
            return Verdict(False, SHA256_MISMATCH, f"{model_id} v{version}: payload does not match its sha256")
        if not signature:
            return Verdict(False, UNSIGNED, f"{model_id} v{version} is not signed")
        pub = self.trusted.get(key_id)
        if pub is None:
            if self.trusted.error and not self.trusted.ids:
                return Verdict(False, NO_KEYS, f"{model_id} v{version}: {self.trusted.error}")
            return Verdict(False, UNKNOWN_KEY, f"{model_id} v{version}: key {key_id[:32]!r} is not trusted")
        try:
            pub.verify(bytes(signature), signed_text(model_id, version, codec, digest))
        except (InvalidSignature, ValueError):
            return Verdict(False, BAD_SIGNATURE, f"{model_id} v{version}: signature by {key_id} does not verify")
        if int(version) <= int(current_version):
            return Verdict(False, REPLAYED, f"{model_id} v{version} is not newer than v{current_version}")
        return Verdict(True)


def generate_keys(directory: str, comment: str = "") -> tuple[str, str]:
    """A new fleet key pair in ``directory``: (private PEM path (0600), trusted-keys file path)."""
    os.makedirs(directory, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    priv = os.path.join(directory, PRIVATE_NAME)
    pub = os.path.join(directory, PUBLIC_NAME)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    with open(pub, "w") as f:
        f.write(public_line(key.public_key(), comment or f"key {key_id(key.public_key())}") + "\n")
    return priv, pub


def keys_main(argv: list[str] | None = None) -> int:
    """``sakura-nexus fleet-keys``: generate a fleet signing key pair, or list a trusted-keys file."""
    p = argparse.ArgumentParser(prog="sakura-nexus fleet-keys", description=keys_main.__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help=f"write {PRIVATE_NAME} (0600) and {PUBLIC_NAME} into DIR")
    g.add_argument("dir")
    g.add_argument("--comment", default="")
    s = sub.add_parser("show", help="print the key ids of a trusted-keys file or a private key's public line")
    s.add_argument("path")
    a = p.parse_args(argv)
    if a.cmd == "generate":
        if os.path.exists(os.path.join(a.dir, PRIVATE_NAME)):
            p.error(f"{os.path.join(a.dir, PRIVATE_NAME)} exists; refusing to overwrite a signing key")
        priv, pub = generate_keys(a.dir, a.comment)
        print(f"private key {priv}\ntrusted keys {pub}  (give this to every robot: trusted_keys)")
        return 0
    with open(a.path, "rb") as f:
        data = f.read()
    if b"PRIVATE KEY" in data:
        signer = Signer.load(a.path)
        print(f"{signer.key_id} {public_line(signer.public_key)}")
    else:
        for kid in sorted(parse_public_keys(data.decode())):
            print(kid)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(keys_main())
