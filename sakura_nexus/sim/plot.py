"""Top-down map of a cell with matplotlib patches (reused by later plots)."""
from __future__ import annotations

import math

from .layout import KIND_RGBA, CellConfig, Layout, generate_layout


def _resolve(cell_or_layout, size):
    """-> (obstacles, size, robot pose or None, goal or None)."""
    if isinstance(cell_or_layout, CellConfig):
        cell_or_layout = generate_layout(cell_or_layout)
    if isinstance(cell_or_layout, Layout):
        return list(cell_or_layout.obstacles), cell_or_layout.size, None, None
    if hasattr(cell_or_layout, "layout") and hasattr(cell_or_layout, "size"):  # FactoryCell
        c = cell_or_layout
        return list(c.layout), float(c.size[0]), c.pose, c.goal
    return list(cell_or_layout), float(size if size is not None else 6.0), None, None


def plot_cell(ax, cell_or_layout, size=None, robot=True, goal=True, legend=False, wall_thickness=0.1):
    """Draw the cell into ``ax``: walls, obstacles coloured by kind, and (for a FactoryCell) the robot
    pose and goal. ``cell_or_layout``: FactoryCell, Layout, CellConfig, or a list of Obstacle (then
    ``size`` is the cell side, default 6 m). Returns ``ax``. Axes are x right, y up (odom frame)."""
    from matplotlib import patches
    from matplotlib.transforms import Affine2D

    obstacles, side, pose, goal_pose = _resolve(cell_or_layout, size)
    h, t = side / 2, wall_thickness
    for x, y, w, hh in ((-h - t, -h - t, side + 2 * t, t), (-h - t, h, side + 2 * t, t),
                        (-h - t, -h, t, side), (h, -h, t, side)):
        ax.add_patch(patches.Rectangle((x, y), w, hh, facecolor="0.35", edgecolor="none", zorder=1))
    seen = set()
    for ob in obstacles:
        rect = patches.Rectangle((-ob.sx / 2, -ob.sy / 2), ob.sx, ob.sy, facecolor=KIND_RGBA[ob.kind][:3],
                                 edgecolor="0.2", lw=0.8, zorder=2,
                                 label=None if ob.kind in seen else ob.kind)
        seen.add(ob.kind)
        rect.set_transform(Affine2D().rotate(ob.yaw).translate(ob.x, ob.y) + ax.transData)
        ax.add_patch(rect)
    if robot and pose is not None:
        x, y, yaw = pose
        ax.add_patch(patches.Circle((x, y), 0.2, facecolor=(0.85, 0.35, 0.1), edgecolor="k", zorder=4,
                                    label="robot"))
        ax.plot([x, x + 0.35 * math.cos(yaw)], [y, y + 0.35 * math.sin(yaw)], "k-", lw=1.5, zorder=5)
    if goal and goal_pose is not None:
        ax.plot(goal_pose[0], goal_pose[1], marker="*", ms=14, color=(0.1, 0.8, 0.2), mec="k", zorder=5,
                ls="none", label="goal")
    ax.set_xlim(-h - 2 * t, h + 2 * t)
    ax.set_ylim(-h - 2 * t, h + 2 * t)
    ax.set_aspect("equal")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")
    if legend:
        ax.legend(loc="upper right", fontsize=7)
    return ax
