"""What the camera sees of obstacles: a learned free-range head and a short-term obstacle memory.

* :class:`RangeHead`: a small convolutional net on the (64x64) camera image that predicts, for ``bins``
  bearings across the camera's horizontal field of view, the free distance to the first obstacle or wall footprint
  (log-metres, clipped at ``max_range``). Ensemble disagreement is its uncertainty: it rises on scenes
  unlike the training data.
* :class:`ObstacleMemory`: ray end points turned into obstacle points in the odom frame, kept for
  ``memory_s`` seconds, cleared where the camera later sees free space through them (the ray-tracing
  clearing of a Nav2 obstacle layer), so an obstacle that left the field of view while turning is
  still avoided and one that moved away is forgotten. ``clearance(xy)`` serves the planner's
  collision term; :meth:`ObstacleMemory.mark` rasterises the points into an occupancy grid so the
  route (cost-to-go) goes round what was seen.

Supervision: in simulation the ranges come from the cell's geometry (:func:`true_ranges`, privileged
information used only to teach). On a real robot the same head is taught by a depth camera or a 2D
lidar when the robot has one during commissioning, and corrected online by contacts/bumpers
(docs/world_model.md, "Obstacle awareness").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn

from sakura_nexus.geometry import wrap_angles

__all__ = ["ObstacleMemory", "RangeConfig", "RangeHead", "load_range_head", "save_range_head", "true_ranges"]


@dataclass
class RangeConfig:
    bins: int = 16                   # bearings across the horizontal field of view
    hfov: float = math.radians(70.0)  # rad; the sim camera is square with fovy 70 deg
    max_range: float = 3.0           # m, ranges are clipped here ("nothing within 3 m")
    min_range: float = 0.05          # m
    camera_x: float = 0.19           # m ahead of base_link (RobotSpec.camera_pos)

    def bearings(self) -> np.ndarray:
        """Bin-centre bearings (rad, camera frame, +left), from right to left."""
        edges = np.linspace(-self.hfov / 2, self.hfov / 2, self.bins + 1)
        return 0.5 * (edges[:-1] + edges[1:])


def true_ranges(obstacles, size: float, pose, cfg: RangeConfig | None = None, step: float = 0.02) -> np.ndarray:
    """Free distance from the camera along each bearing to the first obstacle footprint or wall face
    (the simulator's ground truth, clipped to ``max_range``)."""
    from sakura_nexus.geometry import sdf_np

    cfg = cfg or RangeConfig()
    x, y, yaw = (float(v) for v in pose)
    cx, cy = x + cfg.camera_x * math.cos(yaw), y + cfg.camera_x * math.sin(yaw)
    t = np.arange(step, cfg.max_range + 1e-9, step)
    ang = yaw + cfg.bearings()
    px = cx + np.cos(ang)[:, None] * t[None]
    py = cy + np.sin(ang)[:, None] * t[None]
    hit = sdf_np(px, py, list(obstacles), size) <= 0.0
    first = np.where(hit.any(1), hit.argmax(1), len(t) - 1)
    r = np.where(hit.any(1), t[first] - step / 2, cfg.max_range)
    return np.clip(r, cfg.min_range, cfg.max_range)


class RangeHead(nn.Module):
    """Camera image (B, 3, 64, 64) in [0, 1] -> log free range (M, B, bins) from ``members`` heads.

    A small convolutional trunk that keeps the image's columns apart (width 64 -> ``bins``, height
    pooled away), so each output column looks at its own bearing and its neighbours; ``members`` 1x1
    heads trained on different bootstrap resamples give the ensemble disagreement."""

    def __init__(self, config: RangeConfig | None = None, channels: tuple = (16, 32, 48, 64), members: int = 5):
        super().__init__()
        self.range_config = config or RangeConfig()
        self.channels, self.members = tuple(int(c) for c in channels), int(members)
        layers, cin = [], 3
        for i, c in enumerate(self.channels):
            layers += [nn.Conv2d(cin, c, 3, stride=2 if i < 2 else (2, 1), padding=1), nn.SiLU()]
            cin = c
        self.trunk = nn.Sequential(*layers)        # 64x64 -> 32x32 -> 16x16 -> 8x16 -> 4x16
        self.mix = nn.Conv1d(cin, cin, 3, padding=1)
        self.heads = nn.Conv1d(cin, members, 1)
        nn.init.zeros_(self.heads.weight)
        nn.init.constant_(self.heads.bias, 0.0)
        self.register_buffer("sigma_scale", torch.ones(()))

    def config(self) -> dict:
        return {"channels": list(self.channels), "members": self.members, "range": asdict(self.range_config)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = self.trunk(images).mean(2)                               # (B, C, W')
        f = torch.nn.functional.adaptive_avg_pool1d(f, self.range_config.bins)
        f = torch.nn.functional.silu(self.mix(f)) + f
        return self.heads(f).transpose(0, 1).flip(-1)                # (M, B, bins), bins right -> left

    @torch.inference_mode()
    def predict(self, image: torch.Tensor) -> tuple[np.ndarray, float]:
        """One frame (1, 3, H, W) -> (ranges (bins,) metres, uncertainty: scaled mean ensemble std of
        the log-range, ~0.1-0.3 on familiar scenes, above the safety layer's slow-down threshold on
        unfamiliar ones)."""
        c = self.range_config
        out = self.forward(image)[:, 0]                               # (M, bins)
        r = torch.exp(out.mean(0)).clamp(c.min_range, c.max_range).numpy().astype(np.float64)
        return r, float(out.std(0).mean() * self.sigma_scale)


def save_range_head(head: RangeHead, path, metrics: dict | None = None) -> str:
    """Write ``path`` (torch state + config); returns its sha256."""
    import hashlib
    import io

    buf = io.BytesIO()
    torch.save({"format": 1, "config": head.config(), "state": head.state_dict(), "metrics": metrics or {}}, buf)
    data = buf.getvalue()
    from sakura_nexus.models.serialization import atomic_write
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest()


def load_range_head(path, expected_sha256: str | None = None) -> RangeHead:
    import hashlib
    import io
    import pathlib

    path = pathlib.Path(path)
    data = path.read_bytes()
    if expected_sha256 is None:                    # the manifest beside it, where it names this file
        import json

        man = path.parent / "manifest.json"
        entry = json.loads(man.read_text()).get("range_head", {}) if man.is_file() else {}
        if entry.get("file") == path.name:
            expected_sha256 = entry.get("sha256")
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ValueError(f"{path}: sha256 does not match the manifest")
    d = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    cfg = d["config"]
    head = RangeHead(RangeConfig(**cfg["range"]), tuple(cfg["channels"]), cfg["members"])
    head.load_state_dict(d["state"])
    return head.eval()


class ObstacleMemory:
    """Obstacle points seen by the camera, in the odom frame (see module docstring)."""

    def __init__(self, config: RangeConfig | None = None, memory_s: float = 20.0, clear_margin: float = 0.25,
                 keep_radius: float = 4.0, max_points: int = 600, max_std: float = 0.6, add_range: float = 1.0,
                 moving_speed: float = 0.5, moving_memory_s: float = 4.0, step_dt: float = 0.1,
                 moving_margin: float = 0.5, confirm_radius: float = 0.15):
        self.cfg = config or RangeConfig()
        self.memory_s, self.clear_margin = float(memory_s), float(clear_margin)
        self.keep_radius, self.max_points, self.max_std = float(keep_radius), int(max_points), float(max_std)
        # only ray ends this close become obstacle points: the head is precise near (median error 4 cm
        # under 1 m) and coarse far (p90 0.4 m); far obstacles are added once the robot comes closer
        self.add_range = float(add_range)
        # moving things: a point that appears where the camera saw free space a moment ago is moving;
        # it may have moved on at up to moving_speed since it was seen, and will keep moving along
        # the planner's horizon (step_dt per rollout step): its clearance shrinks with both
        self.moving_speed, self.moving_memory_s, self.step_dt = float(moving_speed), float(moving_memory_s), step_dt
        self.moving_margin = float(moving_margin)   # seen-free by this much more than the head's error
        self.confirm_radius = float(confirm_radius)
        self._edges = np.linspace(-self.cfg.hfov / 2, self.cfg.hfov / 2, self.cfg.bins + 1)
        self.reset()

    def reset(self) -> None:
        self.points = np.zeros((0, 2))
        self.stamps = np.zeros(0)
        self.moving = np.zeros(0, dtype=bool)
        self._frames: list = []        # recent (t, cx, cy, yaw, ranges): was a new point's place free?
        self._prev_candidates = np.zeros((0, 2))
        self._t = None
        self._pts_t = torch.zeros(0, 2)
        self._grow_t = torch.zeros(0)
        self.version = 0

    def __len__(self) -> int:
        return len(self.points)

    def update(self, pose, ranges: np.ndarray, t: float, uncertainty: float = 0.0, known=None) -> None:
        """Fold one frame in: clear remembered points the camera now sees through, add the new ray
        ends (rays at ``max_range`` see nothing; ``known(points) -> bool mask`` drops the ones the
        static map already has), forget old and far points. A clock that ran
        backwards (sim reset) empties the memory."""
        c = self.cfg
        if self._t is not None and t < self._t:
            self.reset()
        self._t = float(t)
        x, y, yaw = (float(v) for v in pose)
        cx, cy = x + c.camera_x * math.cos(yaw), y + c.camera_x * math.sin(yaw)
        ranges = np.asarray(ranges, dtype=float)
        keep = self.stamps > t - np.where(self.moving, self.moving_memory_s, self.memory_s)
        if len(self.points):
            d = np.hypot(self.points[:, 0] - cx, self.points[:, 1] - cy)
            b = wrap_angles(np.arctan2(self.points[:, 1] - cy, self.points[:, 0] - cx) - yaw)
            k = np.clip(np.searchsorted(self._edges, b) - 1, 0, c.bins - 1)
            inside = (np.abs(b) < c.hfov / 2) & (d < c.max_range)
            seen_through = inside & (d < ranges[k] - self.clear_margin)
            keep &= ~seen_through & (np.hypot(self.points[:, 0] - x, self.points[:, 1] - y) < self.keep_radius)
        pts, st, mv = self.points[keep], self.stamps[keep], self.moving[keep]
        if uncertainty <= self.max_std:
            hit = ranges < min(c.max_range * 0.97, self.add_range)
            ang = yaw + c.bearings()[hit]
            new = np.stack([cx + ranges[hit] * np.cos(ang), cy + ranges[hit] * np.sin(ang)], 1)
            if known is not None and len(new):      # already on the map: the map's critic has it
                new = new[~np.asarray(known(new), dtype=bool)]
            # a ray end counts once the previous frame saw something within confirm_radius of it:
            # single-frame errors of the head do not become obstacles
            cand = new
            if len(new) and self.confirm_radius > 0:
                prev = self._prev_candidates
                if len(prev):
                    dmin = np.hypot(new[:, None, 0] - prev[None, :, 0], new[:, None, 1] - prev[None, :, 1]).min(1)
                    new = new[dmin < self.confirm_radius]
                else:
                    new = new[:0]
            self._prev_candidates = cand
            pts, st = np.concatenate([pts, new]), np.concatenate([st, np.full(len(new), t)])
            mv = np.concatenate([mv, self._appeared_in_free_space(new, t)])
        self._frames = [f for f in self._frames if f[0] > t - 1.0] + [(t, cx, cy, yaw, ranges)]
        if len(pts) > self.max_points:
            pts, st, mv = pts[-self.max_points:], st[-self.max_points:], mv[-self.max_points:]
        changed = len(pts) != len(self.points) or (len(pts) and not np.array_equal(pts[-1], self.points[-1]))
        self.points, self.stamps, self.moving = pts, st, mv
        self._pts_t = torch.as_tensor(pts, dtype=torch.float32)
        # how far each point may have moved since it was seen (0 for static ones)
        self._grow_t = torch.as_tensor(np.where(mv, self.moving_speed * (t - st), 0.0), dtype=torch.float32)
        if changed:                                 # consumers (the route) rebuild only on a change
            self.version += 1

    def _appeared_in_free_space(self, new: np.ndarray, t: float) -> np.ndarray:
        """Mask of ``new`` points that lie where a frame 0.3-1 s ago saw free space (they moved there)."""
        old = [f for f in self._frames if t - 1.0 <= f[0] <= t - 0.3]
        out = np.zeros(len(new), dtype=bool)
        if not old or not len(new):
            return out
        c = self.cfg
        _, cx, cy, yaw, ranges = old[0]
        d = np.hypot(new[:, 0] - cx, new[:, 1] - cy)
        b = wrap_angles(np.arctan2(new[:, 1] - cy, new[:, 0] - cx) - yaw)
        k = np.clip(np.searchsorted(self._edges, b) - 1, 0, c.bins - 1)
        return (np.abs(b) < c.hfov / 2 - 0.05) & (d < ranges[k] - self.moving_margin)

    def clearance(self, xy: torch.Tensor) -> torch.Tensor:
        """Distance (...) from each point of ``xy`` (..., 2) to the nearest remembered obstacle point
        (a large value where nothing is remembered). Moving points count as discs that grow at
        ``moving_speed`` from when they were seen; for rollouts (B, H, 2) also along the horizon
        (``step_dt`` per step)."""
        if not len(self._pts_t):
            return torch.full(xy.shape[:-1], 1e3, dtype=xy.dtype)
        flat = xy.reshape(-1, 2).to(torch.float32)
        d = torch.cdist(flat, self._pts_t)                                  # (N, M)
        if bool(self.moving.any()):
            grow = self._grow_t.expand(d.shape[0], -1)
            if xy.dim() == 3 and self.step_dt:                              # (B, H, 2): step k is (k+1) dt ahead
                h = xy.shape[1]
                ahead = (torch.arange(1, h + 1, dtype=torch.float32) * self.step_dt).repeat(xy.shape[0])
                grow = grow + ahead[:, None] * torch.as_tensor(self.moving, dtype=torch.float32) * self.moving_speed
            d = d - grow
        return d.min(1).values.reshape(xy.shape[:-1]).to(xy.dtype)

    def mark(self, grid: np.ndarray, resolution: float, origin_xy, value: int = 100,
             radius: float = 0.05) -> np.ndarray:
        """A copy of the occupancy ``grid`` (rows = y) with the remembered points (disc of ``radius``)
        marked occupied."""
        out = np.array(grid, dtype=np.int16, copy=True)
        pts = self.points[~self.moving]                # moving things are avoided, not routed round
        if not len(pts):
            return out
        h, w = out.shape
        rr = max(0, int(math.ceil(radius / resolution)))
        cols = ((pts[:, 0] - origin_xy[0]) / resolution).astype(int)
        rows = ((pts[:, 1] - origin_xy[1]) / resolution).astype(int)
        for di in range(-rr, rr + 1):
            for dj in range(-rr, rr + 1):
                i, j = rows + di, cols + dj
                ok = (i >= 0) & (i < h) & (j >= 0) & (j < w)
                out[i[ok], j[ok]] = value
        return out
