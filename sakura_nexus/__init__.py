"""sakura_nexus: learning physical AI for factory robots at the edge.

The top-level package is ROS-free. ROS adapters live in ``sakura_nexus.nodes`` and
``sakura_nexus.ros``; the generated interfaces in ``sakura_nexus.msg`` exist only
after a colcon build.
"""

__version__ = "0.1.0"
