"""Optional map-based cost-to-go for the planner's goal term (the "global planner" half of the stack).

:class:`CostToGo` is the geodesic distance to the goal on a grid over a known map (obstacle boxes, or
an occupancy grid as ``nav_msgs/OccupancyGrid`` carries it; inflated by the robot radius), plus the
direction of steepest descent. The MPPI planner,
when given one (``MPPIPlanner.set_cost_to_go``), uses it instead of the straight-line distance and
bearing: the world model still predicts motion and contacts, the map only says which way round
the obstacles the goal is closer. Without it the planner is map-free (see docs/control.md).

Pure numpy to build (wavefront relaxation, ~tens of ms per goal for a 6 m cell at 5 cm) and one
``torch.nn.functional.grid_sample`` call to evaluate all samples x horizon points.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from sakura_nexus.geometry import sdf_np
from sakura_nexus.sim.layout import ROBOT_RADIUS

__all__ = ["CostToGo"]

_SQ2 = math.sqrt(2.0)


class CostToGo:
    """Geodesic distance-to-goal field over a rectangular grid.

    Build it from obstacle boxes (``CostToGo(obstacles, size, goal)``: a square cell centred at the
    origin, exact signed distances) or from an occupancy grid as ``nav_msgs/OccupancyGrid`` carries
    it (:meth:`from_occupancy`: clearance by a Euclidean distance transform).
    Per metre, cells cost 1 in free space, ``1 + band_cost`` within ``radius + band`` of an
    obstacle/wall (keeps the route off surfaces) and ``blocked_cost`` closer than ``radius``
    (passages narrower than ``2 * radius`` are practically closed). Blocked cells are expensive,
    not infinite, so the field stays continuous and points out of them: a robot whose pose is
    inside the inflated zone (or a sample that strays there) still gets a useful gradient."""

    def __init__(self, obstacles, size: float, goal, resolution: float = 0.05, radius: float = ROBOT_RADIUS,
                 band: float = 0.15, band_cost: float = 2.0, blocked_cost: float = 30.0,
                 dtype: torch.dtype = torch.float32):
        n = int(math.ceil(float(size) / resolution))
        c = (np.arange(n) + 0.5) * resolution - size / 2
        xx, yy = np.meshgrid(c, c, indexing="xy")          # [row=y, col=x]
        clearance = sdf_np(xx, yy, list(obstacles), size)
        self._build(clearance, resolution, (-size / 2, -size / 2), goal, radius, band, band_cost, blocked_cost,
                    dtype)

    @classmethod
    def from_occupancy(cls, data, width: int, height: int, resolution: float, origin_xy, goal,
                       occupied_threshold: int = 50, unknown_is_occupied: bool = True, radius: float = ROBOT_RADIUS,
                       band: float = 0.15, band_cost: float = 2.0, blocked_cost: float = 30.0,
                       dtype: torch.dtype = torch.float32) -> CostToGo:
        """From OccupancyGrid fields: ``data`` row-major, row 0 at ``origin_xy`` (the grid's lower-left
        corner in the goal's frame; unrotated grids only), values 0-100 or -1 (unknown). Cells at or
        above ``occupied_threshold`` (and unknown ones, by default) are obstacles; everything outside
        the grid counts as occupied. Clearance = distance from a cell centre to the nearest obstacle
        cell centre minus half a cell (a conservative stand-in for the distance to its edge)."""
        import cv2

        grid = np.asarray(data, dtype=np.int16).reshape(int(height), int(width))
        occ = (grid >= occupied_threshold) | ((grid < 0) if unknown_is_occupied else False)
        free = np.pad(~occ, 1, constant_values=False).astype(np.uint8)  # a wall of occupied cells around
        dist = cv2.distanceTransform(free, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        clearance = (dist - 0.5) * resolution
        self = cls.__new__(cls)
        self._build(clearance.astype(np.float64), float(resolution), (float(origin_xy[0]), float(origin_xy[1])),
                    goal, radius, band, band_cost, blocked_cost, dtype)
        return self

    def _build(self, clearance: np.ndarray, resolution: float, origin, goal, radius, band, band_cost,
               blocked_cost, dtype) -> None:
        self.res, self.goal = float(resolution), (float(goal[0]), float(goal[1]))
        rows, cols = clearance.shape
        self.origin = (float(origin[0]), float(origin[1]))
        self.extent = (cols * self.res, rows * self.res)
        self.size = max(self.extent)
        step = np.where(clearance < radius, blocked_cost,
                        np.where(clearance < radius + band, 1.0 + band_cost, 1.0)) * self.res
        d = np.full((rows, cols), np.inf)
        gi = min(max(int((self.goal[1] - self.origin[1]) / self.res), 0), rows - 1)
        gj = min(max(int((self.goal[0] - self.origin[0]) / self.res), 0), cols - 1)
        d[gi, gj] = 0.0
        d = _relax(d, step)
        gy, gx = np.gradient(d, self.res)
        norm = np.hypot(gx, gy) + 1e-9
        self.distance, self.clearance = d, clearance
        # channels: distance to goal, descent direction (x, y), clearance to the nearest obstacle [m]
        self._grid = torch.tensor(np.stack([d, -gx / norm, -gy / norm, clearance])[None], dtype=dtype)
        self._lo = torch.tensor(self.origin, dtype=dtype)
        self._span = torch.tensor(self.extent, dtype=dtype)

    def sample(self, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """xy (..., 2) metres -> (distance (...), descent heading (...) [rad])."""
        d, heading, _ = self.sample_all(xy)
        return d, heading

    def sample_all(self, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """xy (..., 2) metres -> (distance, descent heading [rad], clearance to obstacles [m]), one
        ``grid_sample`` for all points (outside the grid: the border values)."""
        shape = xy.shape[:-1]
        g = ((xy.reshape(1, 1, -1, 2).to(self._grid.dtype) - self._lo) / self._span) * 2.0 - 1.0  # x -> width
        out = F.grid_sample(self._grid, g, mode="bilinear", padding_mode="border", align_corners=False)
        out = out[0, :, 0].reshape(4, *shape)
        return out[0], torch.atan2(out[2], out[1]), out[3]

    def __call__(self, x: float, y: float) -> float:
        d, _ = self.sample(torch.tensor([[x, y]], dtype=self._grid.dtype))
        return float(d[0])


def _relax(d: np.ndarray, step: np.ndarray, max_iter: int = 10000) -> np.ndarray:
    """8-connected shortest paths by synchronous relaxation (numpy; converges in ~path-length sweeps)."""
    n0, n1 = d.shape
    moves = [(-1, 0, 1.0), (1, 0, 1.0), (0, -1, 1.0), (0, 1, 1.0),
             (-1, -1, _SQ2), (-1, 1, _SQ2), (1, -1, _SQ2), (1, 1, _SQ2)]
    # per move: source / target slices and the edge costs (mean step cost of the two cells), which do
    # not change between sweeps: computed once, not once per sweep (the same values, the same result)
    edges = []
    for di, dj, w in moves:
        src = (slice(max(di, 0), n0 + min(di, 0)), slice(max(dj, 0), n1 + min(dj, 0)))
        tgt = (slice(max(-di, 0), n0 + min(-di, 0)), slice(max(-dj, 0), n1 + min(-dj, 0)))
        edges.append((src, tgt, 0.5 * w * (step[src] + step[tgt])))
    buf = np.empty_like(d)
    for _ in range(max_iter):
        new = d.copy()
        for src, tgt, cost in edges:
            # value reached from neighbour (i+di, j+dj): d[nb] + the edge cost
            b = buf[tgt]
            np.add(d[src], cost, out=b)
            np.minimum(new[tgt], b, out=new[tgt])
        if np.array_equal(new, d):
            return new
        d = new
    return d
