"""Loading the shipped (or any) checkpoint directory: encoder.bin + world_model.bin + manifest.json."""

from __future__ import annotations

import json
import pathlib
from typing import NamedTuple

from .encoder import ConvEncoder, encoder_from_bytes
from .serialization import PayloadError
from .world_model import WorldModel, world_model_from_bytes

ENCODER_FILE, WORLD_MODEL_FILE, MANIFEST_FILE = "encoder.bin", "world_model.bin", "manifest.json"


class Checkpoint(NamedTuple):
    encoder: ConvEncoder | None  # None when the directory has no encoder.bin
    world_model: WorldModel
    manifest: dict  # {} when there is no manifest.json


def _resolve(path: str | pathlib.Path | None, default_file: str) -> tuple[pathlib.Path, pathlib.Path]:
    """(directory, payload file) of ``path``: a checkpoint directory, a payload file, or None = shipped."""
    if path is None or path == "":
        from sakura_nexus.paths import models_dir

        path = models_dir()
    p = pathlib.Path(path)
    return (p, p / default_file) if p.is_dir() else (p.parent, p)


def _manifest(directory: pathlib.Path) -> dict:
    manifest_path = directory / MANIFEST_FILE
    return json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}


def _expected(manifest: dict, key: str, file: pathlib.Path) -> str | None:
    """The manifest's sha256 of ``file`` (None when the manifest does not list this file)."""
    entry = manifest.get(key, {})
    return entry.get("sha256") if entry.get("file") == file.name else None


def load_world_model(path: str | pathlib.Path | None = None) -> WorldModel:
    """The world model of a checkpoint directory or ``world_model.bin`` file (None / "" = shipped), verified
    against its embedded checksum and, when the directory's manifest lists it, the manifest's sha256."""
    directory, wm_file = _resolve(path, WORLD_MODEL_FILE)
    if not wm_file.is_file():
        raise FileNotFoundError(f"no world-model checkpoint at {wm_file}")
    return world_model_from_bytes(wm_file.read_bytes(), _expected(_manifest(directory), "world_model", wm_file))


def load_encoder(path: str | pathlib.Path | None = None) -> ConvEncoder:
    """The encoder of a checkpoint directory or ``encoder.bin`` file (None / "" = shipped), verified like
    :func:`load_world_model`."""
    directory, enc_file = _resolve(path, ENCODER_FILE)
    return encoder_from_bytes(enc_file.read_bytes(), _expected(_manifest(directory), "encoder", enc_file))


def load_checkpoint(path: str | pathlib.Path | None = None) -> Checkpoint:
    """Load a checkpoint. ``path``: a directory with ``world_model.bin`` (and usually ``encoder.bin``,
    ``manifest.json``), or a world-model payload file (its directory's encoder.bin is loaded too);
    None = the shipped ``models/``. Payloads are verified against their embedded checksum and, when
    a manifest lists them, against the manifest's sha256; any mismatch raises PayloadError."""
    directory, _ = _resolve(path, WORLD_MODEL_FILE)
    wm = load_world_model(path)
    enc_file = directory / ENCODER_FILE
    enc = load_encoder(enc_file) if enc_file.is_file() else None
    if enc is not None and enc.embed_dim != wm.config.embed_dim:
        raise PayloadError(f"encoder embedding size {enc.embed_dim} != world model's {wm.config.embed_dim}")
    return Checkpoint(enc, wm, _manifest(directory))
