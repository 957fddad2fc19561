"""The shared pieces that used to be copied: geometry (angles, quaternions, footprint), the atomic write and the
manifest-verified checkpoint loaders. ROS-free, fast."""

from __future__ import annotations

import json
import math
import pathlib
import re
import shutil

import numpy as np
import pytest
import torch

from sakura_nexus import geometry
from sakura_nexus.geometry import quaternion_from_yaw, set_yaw, wrap_angle, wrap_angles, yaw_from_quaternion, yaw_of

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_wrap_angles_float_numpy_torch_agree_and_stay_in_range():
    a = np.linspace(-20.0, 20.0, 2001)
    w = wrap_angles(a)
    assert np.all((w >= -math.pi) & (w < math.pi))
    assert np.allclose(np.cos(w), np.cos(a)) and np.allclose(np.sin(w), np.sin(a))
    assert np.array_equal(wrap_angles(torch.from_numpy(a)).numpy(), w)
    assert [wrap_angles(float(x)) for x in a[::97]] == list(w[::97])
    assert wrap_angle(math.pi) == math.pi and wrap_angle(0.5) == 0.5  # the scalar one is exact in range
    assert wrap_angle(3 * math.pi / 2) == pytest.approx(-math.pi / 2)


class _Q:
    x = y = z = 0.0
    w = 1.0


@pytest.mark.parametrize("yaw", [0.0, 0.3, -1.2, 3.0, -3.1])
def test_yaw_quaternion_round_trip(yaw):
    w, x, y, z = quaternion_from_yaw(yaw)
    assert (x, y) == (0.0, 0.0) and w * w + z * z == pytest.approx(1.0)
    assert yaw_from_quaternion(w, x, y, z) == pytest.approx(yaw)
    q = _Q()
    set_yaw(q, yaw)
    assert yaw_of(q) == pytest.approx(yaw)


def test_robot_radius_is_derived_from_the_robot_spec():
    from sakura_nexus.control.kinematic import UnicycleConfig
    from sakura_nexus.control.planner import MPPIConfig
    from sakura_nexus.params import POLICY
    from sakura_nexus.sim.layout import ROBOT_RADIUS, RobotSpec

    spec = RobotSpec()
    assert spec.radius == geometry.footprint_radius(spec.length, spec.width)
    assert abs(ROBOT_RADIUS - spec.radius) < 5e-4
    assert MPPIConfig().obstacle_radius == UnicycleConfig().radius == ROBOT_RADIUS
    assert POLICY["map_clearance"].default == pytest.approx(ROBOT_RADIUS + 0.1)  # radius + the 0.1 m margin


def test_no_copies_of_the_geometry_left_in_the_library():
    """quaternion -> yaw, yaw -> quaternion and angle wrapping are written once, in sakura_nexus/geometry.py."""
    patterns = {
        "quaternion to yaw": re.compile(r"atan2\(\s*2(\.0)?\s*\*\s*\("),
        "yaw to quaternion": re.compile(r"sin\(\s*yaw\s*/\s*2\s*\)"),
        "angle wrap": re.compile(r"\+\s*math\.pi\)\s*%\s*\(2\s*\*\s*math\.pi\)|remainder\([^)]*2\s*\*\s*math\.pi\)"),
        "robot radius literal": re.compile(r"(?<![\d.])0\.262(?!\d)"),
    }
    found = []
    for path in sorted((ROOT / "sakura_nexus").rglob("*.py")):
        if path.name == "geometry.py":
            continue
        text = path.read_text()
        found += [f"{path.relative_to(ROOT)}: {what}" for what, rx in patterns.items() if rx.search(text)]
    assert found == []


def test_atomic_write_is_one_function(tmp_path):
    from sakura_nexus import atomic
    from sakura_nexus.federated.common import durable
    from sakura_nexus.models import serialization

    assert durable.atomic_write is serialization.atomic_write is atomic.atomic_write
    p = tmp_path / "x.bin"
    atomic.atomic_write(p, b"abc")
    atomic.atomic_write(str(p), b"defg", fsync=False)
    assert p.read_bytes() == b"defg" and [f.name for f in tmp_path.iterdir()] == ["x.bin"]


@pytest.fixture
def tampered_models(tmp_path):
    """A copy of the shipped checkpoint whose manifest lists wrong hashes for both payloads."""
    d = tmp_path / "models"
    shutil.copytree(ROOT / "models", d)
    man = json.loads((d / "manifest.json").read_text())
    for key in ("encoder", "world_model"):
        man[key]["sha256"] = "0" * 64
    (d / "manifest.json").write_text(json.dumps(man))
    return d


def test_every_checkpoint_loader_checks_the_manifest(tampered_models):
    from sakura_nexus.federated.common.weights import load_world_model as sync_loader
    from sakura_nexus.models.checkpoint import load_checkpoint, load_encoder, load_world_model
    from sakura_nexus.models.serialization import PayloadError

    assert load_world_model().num_parameters() > 0 and load_encoder().embed_dim > 0  # shipped ones verify
    for load, arg in ((load_world_model, tampered_models), (load_world_model, tampered_models / "world_model.bin"),
                      (load_encoder, tampered_models / "encoder.bin"), (load_checkpoint, tampered_models),
                      (sync_loader, str(tampered_models))):
        with pytest.raises(PayloadError):
            load(arg)
