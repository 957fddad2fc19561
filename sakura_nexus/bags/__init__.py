"""Learning from recorded rosbag2 bags (MCAP or sqlite3), ROS-free: read with the pure-Python
``rosbags`` library, so the training host needs no ROS install.

- :mod:`.reader`: open bags, pick the camera / odometry / command / contact topics, stream messages;
- :mod:`.dataset`: align the streams by header stamp on the world model's time grid and cut the
  result into the :class:`~sakura_nexus.models.data.Trajectories` the sim collector produces;
- :mod:`.train`: ``sakura-nexus train --bag`` (fine-tunes the shipped checkpoint);
- :mod:`.report`: ``sakura-nexus inspect --bag`` (PNG + JSON data report);
- :mod:`sakura_nexus.ros.bag_recorder`: ``sakura-nexus demo --record`` (rclpy; writes an MCAP bag).
"""

from .reader import BagError

__all__ = ["BagError"]
