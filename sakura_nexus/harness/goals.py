"""Goal poses for a mission in the cell the sim generates for a seed: free, spread out, and on request
reachable on straight legs that keep the robot's footprint clear of every obstacle. ROS-free."""

from __future__ import annotations

import math

import numpy as np


def segment_clearance(layout, size: float, a, b, step: float = 0.05) -> float:
    """Smallest distance to any wall or obstacle along the straight segment a -> b (metres)."""
    from sakura_nexus.sim.layout import free_distance

    n = max(2, int(math.hypot(b[0] - a[0], b[1] - a[1]) / step) + 1)
    return min(free_distance(a[0] + (b[0] - a[0]) * s, a[1] + (b[1] - a[1]) * s, layout, size)
               for s in np.linspace(0.0, 1.0, n))


def pick_goals(seed: int, n: int, start=None, min_dist: float = 1.5, max_dist: float = 10.0, rng_seed: int = 7,
               straight: bool = False, margin: float = 0.15, candidates: int = 20) -> tuple[list, list]:
    """Free goal poses in the same cell the sim generates for ``seed`` (ROS-free core), each at least
    ``min_dist`` from the previous one (the first from ``start``, default the sim's start pose).
    ``straight``: each leg is a straight line that keeps the robot's footprint ``margin`` metres away
    from every obstacle (what the go-to-goal baseline can drive without touching anything).
    Returns (goals, layout)."""
    from sakura_nexus.sim import CellConfig, FactoryCell
    from sakura_nexus.sim.layout import sample_free_pose

    cell = FactoryCell(CellConfig(seed=seed), camera_width=16, camera_height=16)
    try:
        layout, size, radius = list(cell.layout), float(cell.size[0]), cell.cfg.robot.radius
        prev = tuple(start) if start is not None else cell.pose
    finally:
        cell.close()
    rng = np.random.default_rng(rng_seed)
    goals: list = []
    visited = [prev]
    while len(goals) < n:
        # of up to `candidates` admissible goals, take the one farthest from everywhere visited so far
        best, best_score = None, -1.0
        admissible = 0
        for _ in range(3000):
            g = sample_free_pose(rng, layout, size, radius, clearance=0.45)
            d = math.hypot(g[0] - prev[0], g[1] - prev[1])
            if not min_dist <= d <= max_dist:
                continue
            if straight:
                if segment_clearance(layout, size, prev, g) < radius + margin:
                    continue
                g = (g[0], g[1], math.atan2(g[1] - prev[1], g[0] - prev[0]))  # arrive facing along the leg
            score = min(math.hypot(g[0] - v[0], g[1] - v[1]) for v in visited)
            if score > best_score:
                best, best_score = g, score
            admissible += 1
            if admissible >= candidates:
                break
        if best is None:
            break
        goals.append(best)
        visited.append(best)
        prev = best
    if len(goals) < n:
        raise RuntimeError(f"found only {len(goals)} of {n} goals in cell {seed} at least {min_dist} m apart"
                           + (" on obstacle-free straight legs (the robot is boxed in here: try another seed, "
                              "or --no-straight with the MPC)" if straight else ""))
    return goals, layout

