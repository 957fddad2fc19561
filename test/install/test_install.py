"""Installation checks: a colcon workspace build (as a system-ROS user would do) and `pip install .`
of the ROS-free core in a fresh venv without any ROS wheel (as on the fleet aggregator host)."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _clean_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AMENT_", "COLCON_", "CMAKE_PREFIX", "PYTHONPATH", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p and ".ws" not in p)
    return env


@pytest.mark.ros
def test_colcon_workspace_build_installs_interfaces_and_executables(tmp_path):
    venv = pathlib.Path(sys.prefix)
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "sakura_nexus").symlink_to(ROOT)
    env = {**os.environ, "AMENT_PREFIX_PATH": str(venv), "CMAKE_PREFIX_PATH": str(venv)}
    subprocess.run(
        [str(venv / "bin" / "colcon"), "build", "--event-handlers", "console_cohesion-", "--cmake-args",
         f"-DCMAKE_PROJECT_INCLUDE={ROOT / 'cmake' / 'drop_missing_include_dirs.cmake'}",
         f"-DPython3_EXECUTABLE={venv / 'bin' / 'python'}", "-DBUILD_TESTING=OFF"],
        cwd=ws, env=env, check=True, capture_output=True, timeout=600)
    share = ws / "install" / "sakura_nexus" / "share" / "sakura_nexus"
    assert (share / "launch").is_dir() and (share / "config" / "nexus.yaml").is_file()
    libexec = ws / "install" / "sakura_nexus" / "lib" / "sakura_nexus"
    for exe in ("sim_node", "perception_node", "world_model_node", "policy_node", "federated_sync_node"):
        assert os.access(libexec / exe, os.X_OK), exe
    script = (f". {venv}/bin/activate && . {ws}/install/setup.bash && cd /tmp && "
              "python3 -c 'from sakura_nexus.msg import Observation, WorldState, ModelDelta, ModelUpdate, "
              "SyncStatus; import sakura_nexus.params; print(\"interfaces ok\")' && "
              f"{libexec}/sakura-nexus --help")
    out = subprocess.run(["bash", "-c", script], env={**env, "PYTHONSAFEPATH": "1"}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "interfaces ok" in out.stdout and "usage: sakura-nexus" in out.stdout


def test_pip_install_core_in_fresh_venv_without_ros(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_clean_env())
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".venv-*", ".ws", ".ws-*", ".git", "out", "build",
                                                             "install", "log", "__pycache__"))
    subprocess.run(pip + ["torch==2.13.0"], check=True, env=_clean_env(), timeout=900)
    subprocess.run(pip + [str(src)], check=True, env=_clean_env(), timeout=900)
    code = ("import importlib, sys\n"
            "import sakura_nexus, sakura_nexus.params, sakura_nexus.cli\n"
            "for m in ('sakura_nexus.models', 'sakura_nexus.control', 'sakura_nexus.federated.common.codecs'):\n"
            "    try:\n        importlib.import_module(m)\n"
            "    except ModuleNotFoundError as e:\n"
            "        if e.name.startswith('sakura_nexus'): raise\n"
            "assert 'rclpy' not in sys.modules\n"
            "try:\n    import rclpy\nexcept ImportError:\n    print('no ros: ok')\n")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, env=_clean_env(),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "no ros: ok" in out.stdout
