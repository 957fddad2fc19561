"""One declaration per setting: every place that restates a default agrees with the place that declares it.

Declarations: the core dataclasses (FedBuffConfig, ServerOptions, SafetyLimits, MPPIConfig, CellConfig), the
node parameter schema (sakura_nexus/params.py) and the fleet deployment (federated/fleet_defaults.FLEET).
Restated in: flwr_app.toml, the aggregator CLI flags and aggregator_command, the launch files (parsed as
text: launch is not installed here), config/*.yaml, the fleet experiment and the docs.
ROS-free and fast.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pathlib
import re

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (Humble)
    tomllib = pytest.importorskip("tomli")

from sakura_nexus.federated.fleet.fleet_defaults import FLEET
from sakura_nexus.params import BY_NODE, FEDERATED_SYNC, POLICY, POLICY_CORE, POLICY_TUNED, SIM, WORLD_MODEL

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOML = ROOT / "sakura_nexus" / "federated" / "flwr_app.toml"

# Run-config keys read directly by the ServerApp (serverapp._initial_model / _server_main), with the default
# the code falls back to; every other key is a field of FedBuffConfig or ServerOptions.
_SERVERAPP_KEYS = {"model-size": 0, "init-model": "", "init-version": 0}

# Values in config/*.yaml that deliberately differ from the schema default (each commented in the file).
_YAML_OVERRIDES = {("nexus.yaml", "perception_node", "crop")}


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _toml_config() -> dict:
    return tomllib.loads(TOML.read_text())["tool"]["flwr"]["app"]["config"]


def test_flower_app_toml_restates_the_aggregator_defaults():
    from sakura_nexus.federated.fleet.aggregator import FedBuffConfig
    from sakura_nexus.federated.fleet.serverapp import ServerOptions

    fed, srv = _defaults(FedBuffConfig), _defaults(ServerOptions)
    wrong, unknown = [], []
    for key, value in _toml_config().items():
        name = key.replace("-", "_")
        if key == "store-dir":
            assert value == "" and "store_dir" not in srv  # required: no default, "" = unset
            continue
        if key in _SERVERAPP_KEYS:
            expected = _SERVERAPP_KEYS[key]
        elif name in fed:
            expected = fed[name]
            if name == "allowed_codecs":  # None (= any) is written "" in TOML
                expected = "" if expected is None else ",".join(expected)
        elif name in srv:
            expected = srv[name]
        else:
            unknown.append(key)
            continue
        if value != expected or type(value) is not type(expected):
            wrong.append(f"{key} = {value!r} in flwr_app.toml, default {expected!r}")
    assert unknown == [] and wrong == []


def test_every_aggregator_setting_is_in_the_toml():
    """Each FedBuffConfig / ServerOptions field a deployment sets is a run-config key of the Flower App."""
    from sakura_nexus.federated.fleet.aggregator import FedBuffConfig
    from sakura_nexus.federated.fleet.serverapp import ServerOptions

    keys = set(_toml_config())
    internal = {"keep_versions", "seed", "nodes_poll_s", "status_interval_s", "lock_timeout_s"}  # code-only knobs
    missing = [f.name for cls in (FedBuffConfig, ServerOptions) for f in dataclasses.fields(cls)
               if f.name not in internal and f.name.replace("_", "-") not in keys]
    assert missing == []


def test_aggregator_cli_flags_name_toml_keys_with_their_types():
    from sakura_nexus.federated.fleet.superlink import _RUN_FLAGS

    cfg = _toml_config()
    for flag, key, typ in _RUN_FLAGS:
        assert key in cfg, (flag, key)
        assert type(cfg[key]) is typ, (flag, key, typ, cfg[key])
        assert flag.removeprefix("--") in (key, key.removesuffix("-s")), (flag, key)


def test_fleet_defaults_reach_aggregator_command_launch_file_and_docs():
    from sakura_nexus.federated.common.flower_cli import DEFAULT_PORT
    from sakura_nexus.federated.fleet.superlink import aggregator_command

    sig = inspect.signature(aggregator_command).parameters
    assert sig["buffer_size"].default == FLEET.buffer_size
    assert sig["clip_norm"].default == FLEET.clip_norm
    assert sig["sync_interval"].default == FLEET.sync_interval_s
    cmd = aggregator_command("/tmp/x")
    assert cmd[cmd.index("--buffer-size") + 1] == str(FLEET.buffer_size)
    assert float(cmd[cmd.index("--clip-norm") + 1]) == FLEET.clip_norm
    assert float(cmd[cmd.index("--sync-interval") + 1]) == FLEET.sync_interval_s
    # the aggregator clips at the robots' own clip (one setting), listens where the robots connect
    assert FLEET.clip_norm == FEDERATED_SYNC["clip_norm"].default
    assert FLEET.superlink == FEDERATED_SYNC["superlink"].default
    assert FLEET.superlink.rpartition(":")[2] == str(DEFAULT_PORT)

    text = (ROOT / "launch" / "fleet.launch.py").read_text()
    m = re.search(r"--buffer-size <buffer_size> --clip-norm (\S+) --sync-interval (\S+)", text)
    assert m and float(m[1]) == FLEET.clip_norm and float(m[2]) == FLEET.sync_interval_s
    doc = (ROOT / "docs" / "federated.md").read_text()
    m = re.search(r"--init-world-model shipped --buffer-size (\S+) --clip-norm (\S+) --sync-interval (\S+)`", doc)
    assert m, "docs/federated.md: the fleet aggregator command line"
    assert (int(m[1]), float(m[2]), float(m[3])) == (FLEET.buffer_size, FLEET.clip_norm, FLEET.sync_interval_s)


def _launch_defaults(path: pathlib.Path) -> dict[str, ast.expr]:
    out = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument" \
                and isinstance(node.args[0], ast.Constant):  # (the topic remaps are declared in a loop)
            name = node.args[0].value
            for kw in node.keywords:
                if kw.arg == "default_value":
                    out[name] = kw.value
    return out


# launch argument -> (schema, parameter) it defaults; fleet.launch.py arguments -> FLEET field
_LAUNCH_PARAMS = {"superlink": (FEDERATED_SYNC, "superlink"), "seed": (SIM, "seed"),
                  "autostart": (FEDERATED_SYNC, "autostart"), "trusted_keys": (FEDERATED_SYNC, "trusted_keys")}
_LAUNCH_FLEET = {"robots": "robots", "buffer_size": "buffer_size", "superlink": "superlink"}


@pytest.mark.parametrize("path", sorted((ROOT / "launch").glob("*.launch.py")), ids=lambda p: p.name)
def test_launch_argument_defaults_match_their_declaration(path):
    env = {"FLEET": FLEET, "FEDERATED_SYNC": FEDERATED_SYNC, "SIM": SIM, "str": str}
    checked = 0
    for name, expr in _launch_defaults(path).items():
        if name not in _LAUNCH_PARAMS and not (path.name == "fleet.launch.py" and name in _LAUNCH_FLEET):
            continue
        if path.name == "fleet.launch.py" and name in _LAUNCH_FLEET:
            expected = str(getattr(FLEET, _LAUNCH_FLEET[name]))
        else:
            schema, param = _LAUNCH_PARAMS[name]
            d = schema[param].default
            expected = str(d).lower() if isinstance(d, bool) else str(d)
        value = ast.literal_eval(expr) if isinstance(expr, ast.Constant) else \
            eval(compile(ast.Expression(expr), str(path), "eval"), env)  # our own launch file
        assert value == expected, (path.name, name, value, expected)
        checked += 1
    if path.name != "gazebo.launch.py":
        assert checked, f"{path.name}: no parameter-backed launch argument found"


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_params_files_restate_schema_defaults(path):
    if path.name == "gz_bridge.yaml":
        pytest.skip("ros_gz_bridge config")
    wrong = []
    for key, section in yaml.safe_load(path.read_text()).items():
        node = key.split("/")[-1]
        for name, value in ((section or {}).get("ros__parameters") or {}).items():
            if node not in BY_NODE or (path.name, node, name) in _YAML_OVERRIDES:
                continue
            d = BY_NODE[node][name].default
            if value != d:
                wrong.append(f"{path.name} {node}.{name} = {value!r}, schema default {d!r}")
    assert wrong == []


def test_policy_parameters_match_the_safety_and_planner_defaults():
    from sakura_nexus.control.planner import MPPIConfig
    from sakura_nexus.control.safety import SafetyLimits

    classes = {"SafetyLimits": SafetyLimits, "MPPIConfig": MPPIConfig}
    assert set(POLICY_CORE) == set(classes)
    wrong = []
    for cls_name, mapping in POLICY_CORE.items():
        d = _defaults(classes[cls_name])
        for fld, param in mapping.items():
            assert fld in d, (cls_name, fld)
            if param not in POLICY_TUNED and POLICY[param].default != d[fld]:
                wrong.append(f"policy_node {param} = {POLICY[param].default!r}, {cls_name}.{fld} = {d[fld]!r}")
        # a core field named like a parameter is set by it (no silent copy outside the map)
        same_name = {f for f in d if f in {p.name for p in POLICY.params}}
        assert same_name <= set(mapping), (cls_name, same_name - set(mapping))
    assert wrong == []
    for param, why in POLICY_TUNED.items():
        assert why and any(param in m.values() for m in POLICY_CORE.values()), param
    # control_rate sets SafetyLimits.control_period = 1 / rate
    assert 1.0 / POLICY["control_rate"].default == pytest.approx(_defaults(SafetyLimits)["control_period"])


def test_sim_parameters_match_the_cell_defaults():
    from sakura_nexus.sim.layout import CellConfig

    d = _defaults(CellConfig)
    assert 1.0 / SIM["physics_rate"].default == pytest.approx(d["timestep"])
    assert SIM["seed"].default == d["seed"]


def test_fleet_experiment_uses_the_robot_defaults():
    from sakura_nexus.experiments.fleet import ExperimentConfig

    e = ExperimentConfig()
    assert (e.lr, e.batch_size, e.grad_clip, e.dp_delta) == tuple(
        WORLD_MODEL[n].default for n in ("learning_rate", "batch_size", "grad_clip", "dp_delta"))
    # the DP-SGD method runs its own (validation-chosen) setting, one a robot can be given: each value is
    # valid for the node parameter that sets it on the robot (learn_trainable, dp_clip_norm, learning_rate)
    for name, value in (("learn_trainable", e.dpsgd_trainable), ("dp_clip_norm", e.dpsgd_clip),
                        ("learning_rate", e.dpsgd_lr)):
        assert WORLD_MODEL[name].validate(value) is None, (name, value)
    assert (e.codec, e.uplink_clip) == (FEDERATED_SYNC["codec"].default, FEDERATED_SYNC["clip_norm"].default)
