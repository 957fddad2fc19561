"""Planar geometry shared by the core, the nodes and the tools (ROS-free; math and operators only, so the
functions work on floats, numpy arrays and torch tensors alike where noted).

- angles: :func:`wrap_angle` (a scalar, exact in range) and :func:`wrap_angles` (elementwise);
- quaternions (REP-103, yaw about z): :func:`yaw_from_quaternion`, :func:`yaw_of`, :func:`quaternion_from_yaw`,
  :func:`set_yaw`;
- the footprint: :func:`footprint_radius` (the circle circumscribing a rectangular chassis; the robot's own
  radius is ``sakura_nexus.sim.layout.ROBOT_RADIUS``, derived from ``RobotSpec``);
- box obstacles (full extents, yaw; like ``sakura_nexus.sim.Obstacle``) in a square cell centred on the origin:
  :class:`Box`, :func:`box_corners`, the signed distance :func:`sdf_np` and :func:`segment_blocked`
  (numpy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Box", "box_corners", "footprint_radius", "quaternion_from_yaw", "sdf_np", "segment_blocked", "set_yaw",
           "wrap_angle", "wrap_angles", "yaw_from_quaternion", "yaw_of"]


def wrap_angle(a: float) -> float:
    """Angle in [-pi, pi] (exact for angles already in range)."""
    return math.remainder(a, 2 * math.pi)


def wrap_angles(a):
    """Elementwise wrap into [-pi, pi) of a float, numpy array or torch tensor (``%`` has Python's sign
    convention in all three)."""
    return (a + math.pi) % (2 * math.pi) - math.pi


def yaw_from_quaternion(w: float, x: float, y: float, z: float) -> float:
    """Yaw (rotation about z) of the unit quaternion (w, x, y, z)."""
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def yaw_of(q) -> float:
    """Yaw of a quaternion with ``x, y, z, w`` attributes (geometry_msgs/Quaternion)."""
    return yaw_from_quaternion(q.w, q.x, q.y, q.z)


def quaternion_from_yaw(yaw: float) -> tuple[float, float, float, float]:
    """(w, x, y, z) of a rotation by ``yaw`` about z."""
    return math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)


def set_yaw(q, yaw: float) -> None:
    """Set a quaternion message (``x, y, z, w`` attributes) to a rotation by ``yaw`` about z."""
    q.w, q.x, q.y, q.z = quaternion_from_yaw(yaw)


def footprint_radius(length: float, width: float) -> float:
    """Radius of the circle circumscribing a ``length`` x ``width`` rectangle centred on the origin."""
    return math.hypot(length / 2, width / 2)


@dataclass(frozen=True)
class Box:
    """A box obstacle: centre (m), full extents (m), yaw (rad) and a kind label."""

    x: float
    y: float
    sx: float            # full extents, like sakura_nexus.sim.Obstacle
    sy: float
    yaw: float
    kind: str = "box"


def sdf_np(px, py, obstacles, size: float) -> np.ndarray:
    """Signed distance from points to the nearest obstacle footprint or wall face (cell centred at 0)."""
    px, py = np.asarray(px, dtype=float), np.asarray(py, dtype=float)
    half = size / 2
    d = np.minimum(half - np.abs(px), half - np.abs(py))
    for ob in obstacles:
        c, s = math.cos(ob.yaw), math.sin(ob.yaw)
        dx, dy = px - ob.x, py - ob.y
        qx, qy = np.abs(dx * c + dy * s) - ob.sx / 2, np.abs(-dx * s + dy * c) - ob.sy / 2
        out = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        d = np.minimum(d, out + np.minimum(np.maximum(qx, qy), 0))
    return d


def segment_blocked(a, b, obstacles, size: float, radius: float | None = None, step: float = 0.05) -> bool:
    """True if a disc of ``radius`` (default: the robot's, ``sim.layout.ROBOT_RADIUS``) swept along the segment
    a->b touches an obstacle or wall."""
    if radius is None:
        from sakura_nexus.sim.layout import ROBOT_RADIUS  # not at import: sim.layout imports this module

        radius = ROBOT_RADIUS
    n = max(2, int(math.hypot(b[0] - a[0], b[1] - a[1]) / step) + 1)
    t = np.linspace(0.0, 1.0, n)
    return bool((sdf_np(a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]), obstacles, size) < radius).any())


def box_corners(b: Box) -> np.ndarray:
    """The four corners (4, 2) of a box footprint."""
    c, s = math.cos(b.yaw), math.sin(b.yaw)
    loc = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * [b.sx / 2, b.sy / 2]
    return loc @ np.array([[c, -s], [s, c]]).T + [b.x, b.y]
