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


def load_checkpoint(path: str | pathlib.Path | None = None) -> Checkpoint:
    """Load a checkpoint. ``path``: a directory with ``world_model.bin`` (and usually ``encoder.bin``,
    ``manifest.json``), or a world-model payload file (its directory's encoder.bin is loaded too);
    None = the shipped ``models/``. Payloads are verified against their embedded checksum and, when
    a manifest lists them, against the manifest's sha256; any mismatch raises PayloadError."""
    if path is None:
        from sakura_nexus.paths import models_dir

        path = models_dir()
    p = pathlib.Path(path)
    directory, wm_file = (p, p / WORLD_MODEL_FILE) if p.is_dir() else (p.parent, p)
    manifest_path = directory / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}

    def expected(key: str, file: pathlib.Path) -> str | None:
        entry = manifest.get(key, {})
        return entry.get("sha256") if entry.get("file") == file.name else None

    if not wm_file.is_file():
        raise FileNotFoundError(f"no world-model checkpoint at {wm_file}")
    wm = world_model_from_bytes(wm_file.read_bytes(), expected("world_model", wm_file))
    enc_file = directory / ENCODER_FILE
    enc = None
    if enc_file.is_file():
        enc = encoder_from_bytes(enc_file.read_bytes(), expected("encoder", enc_file))
    if enc is not None and enc.embed_dim != wm.config.embed_dim:
        raise PayloadError(f"encoder embedding size {enc.embed_dim} != world model's {wm.config.embed_dim}")
    return Checkpoint(enc, wm, manifest)
