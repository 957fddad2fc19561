"""ROS-free MuJoCo factory cell (see docs/architecture.md, "Sim core API").

``FactoryCell`` simulates a differential-drive robot with a forward RGB camera in a seeded ~6x6 m cell
with walls and pallet/box/machine obstacles. ``plot_cell`` draws the map, ``export_sdf`` writes the
same cell as a Gazebo (gz-sim) world. ``TOPICS`` holds the ROS topic names used by sim_node and by
the Gazebo bridge config (plain strings: this package never imports ROS).

Only ``FactoryCell`` / ``build_mjcf`` need MuJoCo (``pip install .[sim]``); they are imported on
first use, so layouts, maps and the SDF export work without it.
"""

from .layout import (
    CAMERA_NAME,
    KIND_RGBA,
    OBSTACLE_KINDS,
    WHEEL_JOINTS,
    CellConfig,
    Layout,
    Obstacle,
    RobotSpec,
    StepResult,
    generate_layout,
    occupancy_grid,
)
from .plot import plot_cell
from .sdf import export_sdf
from .topics import BRIDGED_TOPICS, TOPICS

_LAZY = ("FactoryCell", "build_mjcf")


def __getattr__(name):
    if name in _LAZY:
        from . import cell

        return getattr(cell, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BRIDGED_TOPICS", "CAMERA_NAME", "CellConfig", "FactoryCell", "KIND_RGBA", "Layout", "OBSTACLE_KINDS",
    "Obstacle", "RobotSpec", "StepResult", "TOPICS", "WHEEL_JOINTS", "build_mjcf", "export_sdf",
    "generate_layout", "occupancy_grid", "plot_cell",
]
