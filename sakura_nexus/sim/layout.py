"""Cell configuration and seeded layout generation (numpy only: no MuJoCo, no ROS).

Everything that depends on the seed is derived here, so the MuJoCo model, the Gazebo SDF
export and the matplotlib map all see the same cell.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sakura_nexus.geometry import footprint_radius

OBSTACLE_KINDS = ("pallet", "box", "machine")
CAMERA_NAME = "front_camera"
WHEEL_JOINTS = ("left_wheel_joint", "right_wheel_joint")

# Fixed, clearly distinct colours per obstacle kind (RGBA). Perception can rely on them.
KIND_RGBA = {
    "pallet": (0.62, 0.42, 0.20, 1.0),   # wood brown
    "box": (0.15, 0.38, 0.85, 1.0),      # blue plastic crate
    "machine": (0.93, 0.76, 0.05, 1.0),  # safety-yellow machine
}

# Sizes in metres: (sx range, sy range, height range) -- full extents, not half sizes.
_KIND_SIZE = {
    "pallet": ((1.2, 1.2), (0.8, 0.8), (0.14, 0.14)),
    "box": ((0.4, 0.7), (0.4, 0.7), (0.4, 0.9)),
    "machine": ((0.8, 1.4), (0.6, 1.0), (1.2, 1.8)),
}


@dataclass(frozen=True)
class RobotSpec:
    """Differential-drive robot geometry and limits (base_link at the wheel axis, REP-103)."""

    length: float = 0.40          # chassis x extent [m]
    width: float = 0.34           # chassis y extent [m] (wheels sit inside it)
    chassis_bottom: float = 0.03  # ground clearance [m]
    chassis_top: float = 0.20     # [m]
    wheel_radius: float = 0.05
    wheel_separation: float = 0.26
    wheel_width: float = 0.03
    mass: float = 8.0             # chassis [kg]
    wheel_mass: float = 0.5
    max_v: float = 0.6            # [m/s]
    max_w: float = 1.5            # [rad/s]
    wheel_torque: float = 0.5     # motor torque limit [N m] (~2.2 m/s^2 at full traction)
    wheel_kv: float = 1.0         # wheel velocity-loop gain [N m s/rad]
    camera_pos: tuple = (0.19, 0.0, 0.20)  # relative to base_link [m] (0.25 m above the floor)
    camera_pitch: float = math.radians(8.0)  # downward tilt [rad]
    camera_fovy: float = 70.0     # vertical field of view [deg]
    wheel_scale: tuple = (1.0, 1.0)  # (left, right) fraction of the commanded wheel speed the motor
                                     # loop is given: < 1 is a derated / slipping wheel (curvature bias)

    @property
    def radius(self) -> float:
        """Radius of the circle circumscribing the chassis footprint."""
        return footprint_radius(self.length, self.width)


# The footprint radius the planners, costmaps and stand-ins use (m): RobotSpec's circumscribed circle, to the mm.
ROBOT_RADIUS = round(RobotSpec().radius, 3)


@dataclass
class CellConfig:
    """Configuration of a factory cell. ``None`` fields are randomised from the seed."""

    seed: int = 0
    floor_friction: float | None = None  # sliding friction of the floor (nominal 0.6..1.0)
    light: float | None = None           # light intensity scale (nominal 0.7..1.3)
    texture_seed: int | None = None      # appearance seed (defaults to ``seed``)
    n_obstacles: int | None = None       # 4..8 by default
    size: float = 6.0                       # square cell side [m]
    wall_height: float = 2.0
    wall_thickness: float = 0.1
    timestep: float = 0.005                 # physics step [s] (200 Hz, sim_node's physics_rate)
    obstacle_gap: float = 0.6               # min free gap between obstacles / walls [m]
    show_goal: bool = False                 # draw the goal marker in camera images
    robot: RobotSpec = field(default_factory=RobotSpec)
    extra_obstacles: tuple = ()             # Obstacles placed on top of the seeded layout and left off
                                            # the static map (goods left in an aisle since it was made)
    mover: Obstacle | None = None           # a kinematic (mocap) obstacle, never on the map; moved with
                                            # FactoryCell.set_mover (a person / forklift stand-in)

    def replace(self, **kw) -> CellConfig:
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class StepResult:
    pose: tuple[float, float, float]  # x, y, yaw in the cell/odom frame [m, m, rad]
    vel: tuple[float, float]          # v [m/s], w [rad/s] in the body frame
    collided: bool                    # chassis touched a wall/obstacle during the step
    time: float                       # sim time at the end of the step [s]


@dataclass(frozen=True)
class Obstacle:
    """A box-shaped obstacle: centre (x, y), full extents (sx, sy, sz) in its own frame, yaw [rad]."""

    x: float
    y: float
    sx: float
    sy: float
    yaw: float
    kind: str
    sz: float = 0.5

    def corners(self) -> np.ndarray:
        return rect_corners(self.x, self.y, self.sx, self.sy, self.yaw)


@dataclass(frozen=True)
class Appearance:
    """Seeded look of the cell: colours, textures, lighting (all renderer-independent numbers)."""

    floor_rgb1: tuple
    floor_rgb2: tuple
    floor_mark: tuple
    floor_tile: float        # tile edge [m]
    wall_rgb1: tuple
    wall_rgb2: tuple
    wall_panel: float        # wall panel width [m]
    sky_rgb1: tuple
    sky_rgb2: tuple
    light_dir: tuple
    light_diffuse: tuple
    ambient: tuple
    headlight: tuple


@dataclass(frozen=True)
class Layout:
    """Everything the seed decides: obstacles, appearance, floor friction."""

    size: float
    obstacles: tuple
    appearance: Appearance
    floor_friction: float
    seed: int


# ----------------------------------------------------------------------------- geometry helpers
def rect_corners(x: float, y: float, sx: float, sy: float, yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    hx, hy = sx / 2, sy / 2
    local = np.array([[hx, hy], [-hx, hy], [-hx, -hy], [hx, -hy]])
    rot = np.array([[c, -s], [s, c]])
    return local @ rot.T + np.array([x, y])


def _seg_point_dist(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / max(float(np.dot(ab, ab)), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(a + t * ab - p))


def point_rect_distance(px: float, py: float, ob: Obstacle) -> float:
    """Distance from a point to an obstacle footprint (0 inside)."""
    c, s = math.cos(ob.yaw), math.sin(ob.yaw)
    dx, dy = px - ob.x, py - ob.y
    lx, ly = c * dx + s * dy, -s * dx + c * dy
    ex, ey = max(abs(lx) - ob.sx / 2, 0.0), max(abs(ly) - ob.sy / 2, 0.0)
    return math.hypot(ex, ey)


def _polys_overlap(p: np.ndarray, q: np.ndarray) -> bool:
    for poly in (p, q):
        for i in range(len(poly)):
            e = poly[(i + 1) % len(poly)] - poly[i]
            n = np.array([-e[1], e[0]])
            a, b = p @ n, q @ n
            if a.max() < b.min() or b.max() < a.min():
                return False
    return True


def polygon_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Minimum distance between two convex polygons (0 if they overlap)."""
    if _polys_overlap(p, q):
        return 0.0
    best = math.inf
    for u, v in ((p, q), (q, p)):
        for i in range(len(u)):
            a, b = u[i], u[(i + 1) % len(u)]
            for pt in v:
                best = min(best, _seg_point_dist(a, b, pt))
    return best


def _apart(a: Obstacle, a_corners: np.ndarray, b: Obstacle, gap: float) -> bool:
    """polygon_distance(a, b) >= gap, with cheap bounding-circle tests first."""
    d = math.hypot(a.x - b.x, a.y - b.y)
    ra, rb = math.hypot(a.sx, a.sy) / 2, math.hypot(b.sx, b.sy) / 2
    if d >= ra + rb + gap:
        return True
    if d < min(a.sx, a.sy) / 2 + min(b.sx, b.sy) / 2 + gap:
        return False
    return polygon_distance(a_corners, b.corners()) >= gap


def as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


# ----------------------------------------------------------------------------- generation
def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream]))


def _tuple(a) -> tuple:
    return tuple(round(float(v), 4) for v in a)


def _appearance(tseed: int, light: float | None) -> Appearance:
    r = _rng(tseed, 2)
    # Floor: grey / green / grey-blue epoxy or concrete tiles with a low-contrast checker.
    base = r.choice(np.array([[0.45, 0.45, 0.45], [0.30, 0.42, 0.32], [0.32, 0.36, 0.44], [0.50, 0.46, 0.40]]))
    base = np.clip(base * r.uniform(0.7, 1.25) + r.normal(0, 0.03, 3), 0.05, 0.9)
    contrast = r.uniform(0.04, 0.15)
    floor1, floor2 = np.clip(base + contrast, 0, 1), np.clip(base - contrast, 0, 1)
    mark = np.clip(base * r.uniform(0.3, 0.6), 0, 1)
    if r.random() < 0.3:  # painted yellow joints
        mark = np.array([0.75, 0.65, 0.15])
    wall = np.clip(np.array([0.78, 0.78, 0.76]) * r.uniform(0.6, 1.1) + r.normal(0, 0.03, 3), 0.1, 0.95)
    wcon = r.uniform(0.02, 0.08)
    scale = float(light) if light is not None else float(r.uniform(0.7, 1.3))
    az, el = r.uniform(-math.pi, math.pi), r.uniform(math.radians(45), math.radians(80))
    ldir = np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), -math.sin(el)])
    tint = np.clip(1.0 + r.normal(0, 0.05, 3), 0.85, 1.15)
    diffuse = np.clip(0.55 * scale * tint, 0, 1)
    ambient = np.clip(np.full(3, r.uniform(0.2, 0.3) * scale), 0, 1)
    head = np.clip(np.full(3, r.uniform(0.15, 0.3) * scale), 0, 1)
    sky = np.clip(np.array([0.55, 0.58, 0.62]) * r.uniform(0.6, 1.2), 0, 1)
    return Appearance(
        floor_rgb1=_tuple(floor1), floor_rgb2=_tuple(floor2), floor_mark=_tuple(mark),
        floor_tile=round(float(r.uniform(0.5, 1.0)), 4),
        wall_rgb1=_tuple(np.clip(wall + wcon, 0, 1)), wall_rgb2=_tuple(np.clip(wall - wcon, 0, 1)),
        wall_panel=round(float(r.uniform(0.8, 1.5)), 4),
        sky_rgb1=_tuple(sky), sky_rgb2=_tuple(sky * 0.5),
        light_dir=_tuple(ldir), light_diffuse=_tuple(diffuse), ambient=_tuple(ambient), headlight=_tuple(head),
    )


def _place(r: np.random.Generator, kind: str, placed: list, cfg: CellConfig) -> Obstacle | None:
    """Sample one obstacle of ``kind`` that keeps the gap to ``placed`` and the walls (vectorised
    rejection sampling over a batch of candidate poses; None if the batch has no valid one)."""
    (sx0, sx1), (sy0, sy1), (sz0, sz1) = _KIND_SIZE[kind]
    sx, sy, sz = (round(float(v), 4) for v in (r.uniform(sx0, sx1), r.uniform(sy0, sy1), r.uniform(sz0, sz1)))
    half = cfg.size / 2 - cfg.obstacle_gap
    n = 256
    yaw = np.where(r.random(n) < 0.5, r.choice([0.0, math.pi / 2], n), r.uniform(-math.pi / 2, math.pi / 2, n))
    yaw = np.round(yaw, 4)
    xy = np.round(r.uniform(-half, half, (n, 2)), 4)
    c, s = np.abs(np.cos(yaw)), np.abs(np.sin(yaw))
    ex, ey = c * sx / 2 + s * sy / 2, s * sx / 2 + c * sy / 2  # half extents of the rotated footprint
    ok = (np.abs(xy[:, 0]) + ex <= half) & (np.abs(xy[:, 1]) + ey <= half)
    r_in, gap = min(sx, sy) / 2, cfg.obstacle_gap
    for o in placed:  # footprints whose inscribed circles are already too close can never pass
        d = np.hypot(xy[:, 0] - o.x, xy[:, 1] - o.y)
        ok &= d >= r_in + min(o.sx, o.sy) / 2 + gap
    for k in np.flatnonzero(ok):
        ob = Obstacle(float(xy[k, 0]), float(xy[k, 1]), sx, sy, float(yaw[k]), kind, sz)
        cs = ob.corners()
        if all(_apart(ob, cs, o, gap) for o in placed):
            return ob
    return None


def generate_layout(cfg: CellConfig) -> Layout:
    """Deterministic layout for ``cfg``: obstacles keep ``obstacle_gap`` to each other and to the walls,
    so with a gap wider than the robot the free space is connected."""
    r = _rng(cfg.seed, 1)
    n = int(cfg.n_obstacles) if cfg.n_obstacles is not None else int(r.integers(4, 9))
    if not 0 <= n <= 12:
        raise ValueError(f"n_obstacles must be in [0, 12], got {n}")
    obstacles: list = []
    for _attempt in range(50):
        kinds = list(OBSTACLE_KINDS[: min(n, 3)]) + [str(k) for k in r.choice(OBSTACLE_KINDS, max(n - 3, 0))]
        kinds = [kinds[i] for i in r.permutation(len(kinds))]
        # Place big things first: the packing succeeds far more often.
        order = sorted(kinds, key=lambda k: {"machine": 0, "pallet": 1, "box": 2}[k])
        obstacles = []
        for kind in order:
            ob = _place(r, kind, obstacles, cfg)
            if ob is None:
                break
            obstacles.append(ob)
        if len(obstacles) == n:
            break
    else:
        raise RuntimeError(f"could not place {n} obstacles in a {cfg.size} m cell (seed {cfg.seed})")
    fr = cfg.floor_friction if cfg.floor_friction is not None else round(float(_rng(cfg.seed, 3).uniform(0.6, 1.0)), 4)
    tseed = cfg.texture_seed if cfg.texture_seed is not None else cfg.seed
    return Layout(size=float(cfg.size), obstacles=tuple(obstacles), appearance=_appearance(tseed, cfg.light),
                  floor_friction=float(fr), seed=int(cfg.seed))


def free_distance(x: float, y: float, obstacles: Sequence[Obstacle], size: float) -> float:
    """Distance from (x, y) to the nearest wall face or obstacle footprint."""
    half = size / 2
    d = min(half - abs(x), half - abs(y))
    for ob in obstacles:
        d = min(d, point_rect_distance(x, y, ob))
    return d


def sample_free_pose(rng, obstacles: Sequence[Obstacle], size: float, robot_radius: float,
                     clearance: float = 0.5, max_tries: int = 20000) -> tuple:
    """Uniform pose whose footprint circle keeps ``clearance`` metres to every wall and obstacle."""
    r = as_rng(rng)
    need = robot_radius + clearance
    half = size / 2 - need
    if half <= 0:
        raise ValueError(f"clearance {clearance} too large for a {size} m cell")
    for _ in range(max_tries):
        x, y = r.uniform(-half, half, 2)
        if free_distance(float(x), float(y), obstacles, size) >= need:
            return float(x), float(y), float(r.uniform(-math.pi, math.pi))
    raise RuntimeError(f"no free pose with clearance {clearance} m found in {max_tries} tries")


MAP_RESOLUTION = 0.05  # m per cell of the static map (sim_node's `map`, the evaluation's cost-to-go)


def occupancy_grid(obstacles, size: float, resolution: float = MAP_RESOLUTION) -> tuple[np.ndarray, int, int, tuple]:
    """The cell's static map as ``nav_msgs/OccupancyGrid`` carries it: (data int8 row-major, width,
    height, origin (x, y) of the lower-left corner in the odom frame). Covers the floor inside the
    walls; a cell is 100 (occupied) if its centre lies inside an obstacle footprint, else 0."""
    n = int(math.ceil(size / resolution))
    c = (np.arange(n) + 0.5) * resolution - size / 2
    xx, yy = np.meshgrid(c, c, indexing="xy")  # row = y (from -size/2 up), col = x
    occ = np.zeros((n, n), dtype=bool)
    for ob in obstacles:
        co, si = math.cos(ob.yaw), math.sin(ob.yaw)
        dx, dy = xx - ob.x, yy - ob.y
        occ |= (np.abs(dx * co + dy * si) <= ob.sx / 2) & (np.abs(-dx * si + dy * co) <= ob.sy / 2)
    return (occ.astype(np.int8) * 100).ravel(), n, n, (-size / 2, -size / 2)
