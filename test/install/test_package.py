"""Package metadata, the ROS-free core boundary, the parameter schema and the shipped config."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORE_DIRS = ["sim", "models", "control", "federated", "bags", "experiments", "testing"]
ROS_DIRS = {"ros", "nodes", "msg"}
# the demo harness' rclpy modules (the mission node, the pipeline it runs in, the `demo` command); the rest of
# sakura_nexus/harness/ is ROS-free
ROS_FILES = {"harness/mission.py", "harness/pipeline.py", "harness/cli.py"}


def test_package_xml_parses_with_catkin_pkg():
    from catkin_pkg.package import parse_package

    pkg = parse_package(str(ROOT / "package.xml"))
    pkg.validate()
    assert pkg.name == "sakura_nexus" and pkg.package_format == 3
    assert pkg.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in [g.name for g in pkg.member_of_groups]


def test_no_nested_package():
    """colcon stops descending at the root package: a nested package.xml would be invisible."""
    nested = [p for p in ROOT.rglob("package.xml")
              if p != ROOT / "package.xml" and not {".venv", ".venv-jazzy", ".ws", ".ws-jazzy", "build", "install"}
              & set(p.parts)]
    assert nested == []


def _core_modules():
    for path in sorted((ROOT / "sakura_nexus").rglob("*.py")):
        rel = path.relative_to(ROOT / "sakura_nexus")
        if rel.parts[0] in ROS_DIRS or rel.as_posix() in ROS_FILES:
            continue
        yield path


def test_core_sources_never_import_ros():
    offenders = []
    for path in _core_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                if top in ("rclpy", "rosidl_runtime_py", "sensor_msgs", "geometry_msgs", "nav_msgs",
                           "std_msgs", "launch", "launch_ros") or n.startswith(("sakura_nexus.ros",
                                                                                  "sakura_nexus.nodes",
                                                                                  "sakura_nexus.msg")):
                    offenders.append(f"{path.relative_to(ROOT)}: {n}")
    assert offenders == []


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_each_side_of_the_wire_imports_only_its_own_and_common_code():
    """federated/robot/ (and the robot's nodes) never import federated/fleet/, fleet/ never imports robot/,
    common/ neither; the library never imports the experiments or the test stand-ins."""
    fed = ROOT / "sakura_nexus" / "federated"
    rules = [(fed / "robot", ("sakura_nexus.federated.fleet",)),
             (ROOT / "sakura_nexus" / "nodes", ("sakura_nexus.federated.fleet",)),
             (fed / "fleet", ("sakura_nexus.federated.robot",)),
             (fed / "common", ("sakura_nexus.federated.robot", "sakura_nexus.federated.fleet"))]
    library = [d for d in (ROOT / "sakura_nexus").iterdir() if d.is_dir() and d.name not in ("experiments", "testing")]
    offenders = [f"{path.relative_to(ROOT)}: {m}" for folder, banned in rules for path in folder.rglob("*.py")
                 for m in _imports(path) if m.startswith(banned)]
    offenders += [f"{path.relative_to(ROOT)}: {m}" for d in library for path in d.rglob("*.py")
                  for m in _imports(path) if m.startswith(("sakura_nexus.testing", "sakura_nexus.experiments"))
                  and not (path.name == "training.py" and m == "sakura_nexus.experiments.adaptation")
                  and not (path.name == "cli.py")]
    assert offenders == [], offenders


def test_importing_the_core_does_not_load_rclpy():
    mods = ["sakura_nexus", "sakura_nexus.params", "sakura_nexus.cli"] + [
        f"sakura_nexus.{d}" for d in CORE_DIRS if (ROOT / "sakura_nexus" / d / "__init__.py").exists()]
    code = ("import sys, importlib\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rpyutils')]\n"
            "assert not bad, bad\n")
    env = {k: v for k, v in os.environ.items()}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


def test_parameter_docs_are_generated_from_the_schema():
    from sakura_nexus.params import render_markdown

    assert (ROOT / "docs" / "parameters.md").read_text().strip() == render_markdown().strip()


def test_schema_rejects_out_of_range_and_wrong_type_with_reason():
    from sakura_nexus.params import POLICY

    p = POLICY["max_v"]
    assert p.validate(0.3) is None
    assert "above the maximum" in p.validate(5.0)
    assert "type" in p.validate("fast")
    assert "finite" in p.validate(float("nan"))
    assert "not one of" in POLICY["controller"].validate("teleport")


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_params_files_match_the_schema(path):
    from sakura_nexus.params import BY_NODE

    data = yaml.safe_load(path.read_text())
    if path.name == "gz_bridge.yaml":
        pytest.skip("ros_gz_bridge config, checked in test_gazebo_assets")
    errors, seen = [], 0
    for node_key, section in data.items():
        node_name = node_key.split("/")[-1]
        params = (section or {}).get("ros__parameters", {})
        if node_name == "**":
            continue
        assert node_name in BY_NODE, f"{path.name}: unknown node {node_key}"
        errors += BY_NODE[node_name].validate(params)
        seen += 1
    assert seen and errors == []
