"""Trajectory collection in the MuJoCo cell with a smooth, collision-seeking exploration policy.

Every episode is seeded by (data seed, layout seed, episode index) only, so a data set is identical
whatever the number of worker processes. One step = ``model_dt`` = 0.1 s of simulation; frame k
is rendered after step k (frame 0 at the start pose).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

MODEL_DT = 0.1


@dataclass
class Trajectories:
    """N equal-length episodes of T steps (arrays indexed [episode, time])."""

    images: np.ndarray  # (N, T+1, H, W, 3) uint8 RGB
    proprio: np.ndarray  # (N, T+1, 6) float32 [x, y, cos yaw, sin yaw, v, w]
    actions: np.ndarray  # (N, T, 2) float32 commanded (v, w) held for one step
    collided: np.ndarray  # (N, T) bool: contact during step t (i.e. into frame t+1)
    layout_seeds: np.ndarray  # (N,) int
    friction: np.ndarray  # (N,) float floor friction of the episode

    @property
    def n_transitions(self) -> int:
        return int(self.actions.shape[0] * self.actions.shape[1])

    @staticmethod
    def concat(parts: list[Trajectories]) -> Trajectories:
        return Trajectories(*(np.concatenate([getattr(p, f) for p in parts]) for f in (
            "images", "proprio", "actions", "collided", "layout_seeds", "friction")))


class ExplorationPolicy:
    """Smooth random driving with deliberate runs into obstacles and walls.

    Modes, each lasting a random number of steps: ``wander`` (Ornstein-Uhlenbeck around a random
    forward speed / turn rate), ``charge`` (steer at an obstacle centre or a wall point at speed
    until contact, then keep pushing 1-4 steps), ``back`` (reverse after a contact), ``spin`` and
    ``stop``. Commands are low-pass filtered (alpha = 0.5) so they stay smooth.
    """

    def __init__(self, rng: np.random.Generator, max_v: float = 0.6, max_w: float = 1.5):
        self.rng, self.max_v, self.max_w = rng, max_v, max_w
        self.cmd = np.zeros(2)
        self._new_mode()

    def _new_mode(self, mode: str | None = None) -> None:
        r = self.rng
        self.mode = mode or str(r.choice(["wander", "charge", "spin", "stop"], p=[0.5, 0.35, 0.1, 0.05]))
        self.left = int(r.integers(8, 30)) if self.mode != "stop" else int(r.integers(3, 8))
        self.mean = np.array([r.uniform(0.1, 0.55), r.uniform(-0.8, 0.8)])
        self.target = None
        self.push = int(r.integers(1, 5))
        if self.mode == "spin":
            self.mean = np.array([r.uniform(-0.05, 0.1), r.choice([-1, 1]) * r.uniform(0.8, 1.5)])
        elif self.mode == "back":
            self.left = int(r.integers(3, 8))
            self.mean = np.array([r.uniform(-0.4, -0.15), r.uniform(-1.0, 1.0)])

    def __call__(self, pose: tuple, obstacles: list, cell_size: float, collided: bool) -> np.ndarray:
        r = self.rng
        self.left -= 1
        if self.mode == "charge":
            if self.target is None:
                if obstacles and r.random() < 0.7:
                    o = obstacles[int(r.integers(len(obstacles)))]
                    self.target = (o.x, o.y)
                else:
                    half = cell_size / 2
                    self.target = tuple(r.uniform(-half, half, 2) * np.array([1.3, 1.3]))
            if collided:
                self.push -= 1
            if self.push <= 0 or self.left < -30:  # pushed long enough, or the target is unreachable
                self._new_mode("back")
            else:
                x, y, yaw = pose
                err = math.atan2(self.target[1] - y, self.target[0] - x) - yaw
                err = math.atan2(math.sin(err), math.cos(err))
                goal = np.array([0.5 if abs(err) < 0.8 else 0.15, 2.0 * err])
                self.cmd += 0.5 * (goal + r.normal(0, [0.03, 0.1]) - self.cmd)
                return self._clip()
        elif self.left <= 0 or (collided and self.mode not in ("back", "stop") and r.random() < 0.6):
            self._new_mode("back" if collided else None)
        if self.mode == "stop":
            goal = np.zeros(2)
        else:
            goal = self.mean + r.normal(0, [0.08, 0.3])
        self.cmd += 0.5 * (goal - self.cmd)
        return self._clip()

    def _clip(self) -> np.ndarray:
        self.cmd = np.clip(self.cmd, [-self.max_v, -self.max_w], [self.max_v, self.max_w])
        return self.cmd.astype(np.float32).copy()


def proprio_of(pose: tuple, vel: tuple) -> np.ndarray:
    x, y, yaw = pose
    return np.array([x, y, math.cos(yaw), math.sin(yaw), vel[0], vel[1]], np.float32)


def collect_episodes(layout_seed: int, episodes: list[int], steps: int, data_seed: int,
                     floor_friction: float | None = None, image_size: int = 64,
                     cell_config=None) -> Trajectories:
    """Episodes ``episodes`` (indices) in the cell of ``layout_seed`` (a process-local cell).
    ``cell_config`` (a CellConfig whose seed is ``layout_seed``) overrides the default conditions."""
    from sakura_nexus.sim import CellConfig, FactoryCell

    cfg = cell_config or CellConfig(seed=int(layout_seed), floor_friction=floor_friction)
    cell = FactoryCell(cfg, camera_width=image_size, camera_height=image_size)
    n, t1 = len(episodes), steps + 1
    out = Trajectories(np.zeros((n, t1, image_size, image_size, 3), np.uint8),
                       np.zeros((n, t1, 6), np.float32), np.zeros((n, steps, 2), np.float32),
                       np.zeros((n, steps), bool),
                       np.full(n, layout_seed, np.int64), np.full(n, cell.floor_friction, np.float32))
    try:
        for i, ep in enumerate(episodes):
            rng = np.random.default_rng([int(data_seed), int(layout_seed), int(ep)])
            cell.reset()
            cell.set_pose(*cell.sample_free_pose(rng, clearance=0.3))
            policy = ExplorationPolicy(rng, cell.cfg.robot.max_v, cell.cfg.robot.max_w)
            out.images[i, 0] = cell.render()
            out.proprio[i, 0] = proprio_of(cell.pose, cell.velocity)
            collided = False
            for t in range(steps):
                a = policy(cell.pose, cell.layout, cell.size[0], collided)
                res = cell.step(float(a[0]), float(a[1]), MODEL_DT)
                collided = res.collided
                out.actions[i, t], out.collided[i, t] = a, collided
                out.images[i, t + 1] = cell.render()
                out.proprio[i, t + 1] = proprio_of(res.pose, res.vel)
    finally:
        cell.close()
    return out


def _collect_task(args: tuple) -> Trajectories:
    import torch

    torch.set_num_threads(1)
    return collect_episodes(*args)


def collect(layout_seeds: list[int], episodes_per_layout: int, steps: int, data_seed: int,
            floor_friction: float | None = None, workers: int = 1, image_size: int = 64,
            progress: bool = False) -> Trajectories:
    """Collect ``episodes_per_layout`` episodes in each layout, optionally in worker processes."""
    tasks = [(s, list(range(episodes_per_layout)), steps, data_seed, floor_friction, image_size)
             for s in layout_seeds]
    if workers <= 1 or len(tasks) == 1:
        parts = []
        for task in _progress(tasks, progress, "collect"):
            parts.append(collect_episodes(*task))
        return Trajectories.concat(parts)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            parts = list(_progress(pool.map(_collect_task, tasks), progress, "collect", total=len(tasks)))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Trajectories.concat(parts)


def _progress(it, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, total=total, unit="layout", leave=False)
