"""Planar geometry shared by the core, the nodes and the tools (ROS-free; math and operators only, so the
functions work on floats, numpy arrays and torch tensors alike where noted).

- angles: :func:`wrap_angle` (a scalar, exact in range) and :func:`wrap_angles` (elementwise);
- quaternions (REP-103, yaw about z): :func:`yaw_from_quaternion`, :func:`yaw_of`, :func:`quaternion_from_yaw`,
  :func:`set_yaw`;
- the footprint: :func:`footprint_radius` (the circle circumscribing a rectangular chassis; the robot's own
  radius is ``sakura_nexus.sim.layout.ROBOT_RADIUS``, derived from ``RobotSpec``).
"""

from __future__ import annotations

import math

__all__ = ["footprint_radius", "quaternion_from_yaw", "set_yaw", "wrap_angle", "wrap_angles", "yaw_from_quaternion",
           "yaw_of"]


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
