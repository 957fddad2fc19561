"""Where shipped files live: the installed share/sakura_nexus/ (colcon) or the source checkout."""

from __future__ import annotations

import os
import pathlib

_SRC_ROOT = pathlib.Path(__file__).resolve().parents[1]


def share_dir() -> pathlib.Path:
    """share/sakura_nexus of the colcon install if there is one, else the repository root."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return pathlib.Path(get_package_share_directory("sakura_nexus"))
    except Exception:  # noqa: BLE001 - ament_index missing (pip install) or package not installed
        pass
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        cand = pathlib.Path(prefix) / "share" / "sakura_nexus"
        if (cand / "config").is_dir():
            return cand
    return _SRC_ROOT


def source_root() -> pathlib.Path | None:
    """The repository checkout this install was built from (None if unknown)."""
    for cand in (_SRC_ROOT, _SRC_ROOT.parent):
        if (cand / "package.xml").is_file() and (cand / "sakura_nexus").is_dir():
            return cand.resolve()
    # symlink-install: sakura_nexus/__init__.py is a link into the source tree
    real = pathlib.Path(os.path.realpath(__file__)).parents[1]
    return real if (real / "package.xml").is_file() else None


def models_dir() -> pathlib.Path:
    env = os.environ.get("SAKURA_NEXUS_MODELS")
    if env:
        return pathlib.Path(env)
    for base in (share_dir(), source_root()):
        if base is not None and (base / "models").is_dir():
            return base / "models"
    return share_dir() / "models"


def config_file(name: str) -> pathlib.Path:
    for base in (share_dir(), source_root()):
        if base is not None and (base / "config" / name).is_file():
            return base / "config" / name
    raise FileNotFoundError(f"config/{name} not found")
