"""pip-installable ROS-free core of sakura_nexus.

`pip install .` (after `pip install torch==2.13.0`, see README) gives hosts without ROS -- the fleet
aggregator, offline training, benchmarks -- the models, planning, safety math, codecs, privacy,
aggregation and simulation. colcon ignores this file: package.xml declares build_type ament_cmake,
and CMakeLists.txt installs the same sources next to the generated interfaces.
"""

from setuptools import find_packages, setup

setup(
    name="sakura-nexus",
    version="0.1.0",
    description="Learning physical AI for factory robots at the edge (ROS-free core)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["sakura_nexus", "sakura_nexus.*"],
                           exclude=["sakura_nexus.msg", "sakura_nexus.msg.*"]),
    package_data={"sakura_nexus": ["federated/*.toml"]},
    install_requires=[
        "numpy>=1.24",
        # torch 2.13.0 is the pinned CPU build; install it first (a bare `torch` may resolve to a CUDA build).
        "torch>=2.2,<2.14",
        "opencv-python-headless>=4.8",
        "pyyaml>=6",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "rosbags>=0.10",  # pure-Python rosbag2 reader/writer: `train --bag`, `inspect` (no ROS needed)
        # the privacy accountant (Google's; sakura_nexus.federated.common.privacy)
        "dp-accounting>=0.4",
    ],
    extras_require={
        "sim": ["mujoco>=3.1"],
        "fleet": ["flwr==1.42.0"],
    },
    entry_points={"console_scripts": ["sakura-nexus=sakura_nexus.cli:main"]},
)
