"""Parameter schema: the field engineer's interface, declared once per node.

Every tunable of every node is a :class:`Param` here, with type, default, range,
unit, description and whether it is live (changeable with ``ros2 param set`` and
applied on the next frame / control cycle) or structural (read-only). The ROS
adapter :mod:`sakura_nexus.ros.params` declares them from this schema, the
tests check the shipped YAML in ``config/`` against it, and
``python -m sakura_nexus.params`` renders ``docs/parameters.md``.

This module is ROS-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

_TYPES = {bool: "bool", int: "int", float: "double", str: "string", list: "double[]"}


@dataclass(frozen=True)
class Param:
    name: str
    type: type
    default: Any
    description: str
    unit: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple = ()
    read_only: bool = False

    def validate(self, value: Any) -> str | None:
        """Return None if ``value`` is acceptable, else the reason it is refused."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is list:
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
            ):
                return f"{self.name} must be a list of numbers"
            if any(not math.isfinite(float(v)) for v in value):
                return f"{self.name} must contain only finite numbers"
            return None
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            return f"{self.name} must be of type {_TYPES[self.type]}, got {type(value).__name__}"
        value = cast(Any, value)  # (isinstance with a runtime type narrows it to object for the type checker)
        if self.type is float and not math.isfinite(value):
            return f"{self.name} must be finite, got {value}"
        if self.min is not None and value < self.min:
            return f"{self.name}={value} is below the minimum {self.min} {self.unit}".rstrip()
        if self.max is not None and value > self.max:
            return f"{self.name}={value} is above the maximum {self.max} {self.unit}".rstrip()
        if self.choices and value not in self.choices:
            return f"{self.name}={value!r} is not one of {list(self.choices)}"
        return None

    @property
    def type_name(self) -> str:
        return _TYPES[self.type]

    def range_text(self) -> str:
        if self.choices:
            return " / ".join(map(str, self.choices))
        if self.min is None and self.max is None:
            return ""
        lo = "-inf" if self.min is None else f"{self.min:g}"
        hi = "inf" if self.max is None else f"{self.max:g}"
        return f"[{lo}, {hi}]"


@dataclass(frozen=True)
class NodeSchema:
    node: str
    summary: str
    params: tuple[Param, ...] = field(default_factory=tuple)

    def __post_init__(self):
        names = [p.name for p in self.params]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"{self.node}: duplicate parameters {sorted(dup)}")
        for p in self.params:
            reason = p.validate(p.default)
            if reason:
                raise ValueError(f"{self.node}: default of {reason}")

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate(self, values: dict[str, Any]) -> list[str]:
        """Reasons why ``values`` (a params-file section) is invalid; empty if valid."""
        known = {p.name: p for p in self.params}
        errors = []
        for name, value in values.items():
            if name in ("use_sim_time",) or name.startswith("qos_overrides."):
                continue
            if name not in known:
                errors.append(f"{self.node}: unknown parameter {name!r}")
                continue
            reason = known[name].validate(value)
            if reason:
                errors.append(f"{self.node}: {reason}")
        return errors


P = Param

# Shared by the nodes that receive model updates / publish diagnostics.
_COMMON = (
    P("diagnostics_period", float, 1.0, "Period of the /diagnostics status message.", "s", 0.1, 60.0),
    P("autostart", bool, True, "Configure and activate the lifecycle node on start-up (like Nav2's autostart).",
      read_only=True),
    P("trusted_keys", str, "", "File of the fleet's Ed25519 public keys (one 'ed25519 <base64>' per line; "
      "re-read when it changes). Model updates must be signed by one of them (docs/federated.md); "
      "empty = every model update is refused.", read_only=True),
)

# Shared by the nodes that buffer or align inputs by stamp.
_CLOCK = (
    P("max_clock_offset", float, 1.0, "Inputs stamped further than this ahead of the node's clock are dropped "
      "as foreign-clock (they never become the time reference). The node's clock stepping back resets the "
      "time-dependent buffers; a step forward by more than this (beyond the wall time elapsed) is counted.",
      "s", 0.01, 3600.0),
)

# Shared by the nodes that take poses: one frame, no tf is assumed.
_FRAME = (
    P("odom_frame", str, "odom", "The odometry frame: odometry, world_state, goals, maps and initial poses "
      "in any other frame are dropped (no tf is assumed); world_model_node stamps world_state with it.",
      read_only=True),
)

SIM = NodeSchema(
    "sim_node",
    "MuJoCo factory cell standing in for the robot: camera, odometry, joint states, /clock, contacts.",
    (
        P("seed", int, 0, "Seed of the cell layout, lighting, textures and friction.", "", 0, 2**31 - 1,
          read_only=True),
        P("camera_width", int, 320, "Published camera image width.", "px", 16, 1920, read_only=True),
        P("camera_height", int, 240, "Published camera image height.", "px", 16, 1080, read_only=True),
        P("camera_rate", float, 30.0, "Camera frame rate in sim time.", "Hz", 1.0, 120.0, read_only=True),
        P("physics_rate", float, 200.0, "Physics integration rate in sim time.", "Hz", 50.0, 2000.0,
          read_only=True),
        P("real_time_factor", float, 1.0,
          "Sim speed relative to the wall clock: 1 = real time, 2 = twice as fast, 0 = as fast as possible.",
          "", 0.0, 100.0),
        P("floor_friction", float, 0.8, "Sliding friction coefficient of the floor.", "", 0.01, 2.0),
        P("unmapped_obstacles", list, [], "Boxes placed in the cell but left off the published map (goods left "
          "in an aisle since the map was made): x, y, size x, size y, yaw, height per box, flattened.", "m, rad",
          read_only=True),
        P("cmd_vel_timeout", float, 0.5, "A cmd_vel older than this is replaced by zero.", "s", 0.01, 10.0),
        P("start_x", float, 0.0, "Start x of the robot after reset (when use_start).",
          "m", -50.0, 50.0),
        P("start_y", float, 0.0, "Start y of the robot after reset (when use_start).", "m", -50.0, 50.0),
        P("start_yaw", float, 0.0, "Start yaw of the robot after reset (when use_start).", "rad",
          -math.pi, math.pi),
        P("use_start", bool, False, "Place the robot at start_x/start_y/start_yaw on reset "
          "instead of a random free pose.", read_only=False),
        P("sensor_reliability", str, "best_effort", "Reliability of the camera publishers.", "",
          choices=("best_effort", "reliable"), read_only=True),
        P("diagnostics_period", float, 1.0, "Period of the /diagnostics status message.", "s", 0.1, 60.0),
        *_FRAME,
    ),
)

PERCEPTION = NodeSchema(
    "perception_node",
    "Camera images to compact embeddings (OpenCV preprocessing, PyTorch encoder).",
    (
        P("checkpoint", str, "", "Encoder payload file; empty = the shipped models/encoder.bin.",
          read_only=True),
        P("range_head", str, "", "Free-range (obstacle) head file run on the encoder's input; empty = the shipped "
          "models/range_head.bin; 'none' = off (Observation.free_range left empty).", read_only=True),
        P("encoder_version", int, 0, "Version reported for the loaded checkpoint (0 = as in the file). "
          "Model updates raise it.", "", 0, 2**31 - 1, read_only=True),
        P("device", str, "cpu", "Inference device; cuda falls back to cpu with a warning.", "",
          choices=("cpu", "cuda"), read_only=True),
        P("threads", int, 1, "torch intra-op threads for inference.", "", 1, 64, read_only=True),
        P("input_width", int, 64, "Encoder input width after resize.", "px", 16, 512),
        P("input_height", int, 64, "Encoder input height after resize.", "px", 16, 512),
        P("crop", list, [0.0, 0.0, 1.0, 1.0],
          "Crop before resize as normalised [x0, y0, x1, y1] of the (undistorted) image.", "fraction"),
        P("normalize_mean", list, [0.0, 0.0, 0.0], "Per-channel mean subtracted after scaling to [0, 1].", ""),
        P("normalize_std", list, [1.0, 1.0, 1.0], "Per-channel std divided after mean subtraction.", ""),
        P("input_encoding", str, "", "Override the encoding the driver reports (for mislabelled frames); "
          "empty = trust the message.", "",
          choices=("", "rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1")),
        P("depth_max", float, 10.0, "Depth mapped to full scale when encoding depth images.", "m", 0.1, 100.0),
        P("rate_limit", float, 0.0, "Maximum Observation rate; 0 = every frame.", "Hz", 0.0, 1000.0),
        P("undistort", bool, True, "Undistort with the CameraInfo model (maps computed once per change)."),
        P("max_image_age", float, 1.0, "Frames whose stamp is older than this are dropped as stale; "
          "0 disables the check.", "s", 0.0, 3600.0),
        P("quality_blur_ref", float, 100.0,
          "Variance of the Laplacian at which the blur score reaches 1.", "", 1.0, 1e5),
        P("quality_min", float, 0.0, "Frames with quality below this are dropped (0 = keep all).", "", 0.0, 1.0),
        P("sensor_reliability", str, "best_effort", "Reliability of the image subscription.", "",
          choices=("best_effort", "reliable"), read_only=True),
        P("sensor_depth", int, 1, "History depth of the image subscription (1 = latest frame wins; the "
          "inference thread always takes only the newest frame).", "frames", 1, 1000, read_only=True),
        P("image_transport", str, "raw", "raw: subscribe sensor_msgs/Image on image_raw; compressed: "
          "sensor_msgs/CompressedImage (JPEG/PNG, image_transport's format strings) on image_raw/compressed.",
          "", choices=("raw", "compressed"), read_only=True),
        P("max_image_pixels", int, 4096 * 4096, "Compressed frames whose header announces more pixels are "
          "dropped before decoding (decompression-bomb guard).", "px", 1, 2**31 - 1),
        *_CLOCK,
        *_COMMON,
    ),
)

WORLD_MODEL = NodeSchema(
    "world_model_node",
    "Learned latent dynamics: world_state with prediction and uncertainty; learns online; emits deltas.",
    (
        P("checkpoint", str, "", "World-model checkpoint (directory or world_model.bin); empty = the shipped models/.",
          read_only=True),
        P("state_dir", str, "", "Directory for periodic checkpoints and resume; empty = no persistence.",
          read_only=True),
        P("robot_id", str, "robot", "Identifier of this robot in model deltas.", read_only=True),
        P("horizon", int, 15, "Steps predicted into world_state.", "steps", 1, 100),
        P("model_dt", float, 0.1, "Time between model steps (fixed by the checkpoint).", "s", 0.01, 1.0,
          read_only=True),
        P("align_tolerance", float, 0.05, "Max stamp difference between observation and odometry.", "s",
          0.001, 1.0),
        P("max_input_age", float, 1.0, "Inputs older than this (vs. the clock) are dropped as stale.", "s",
          0.01, 3600.0),
        P("learning_enabled", bool, True, "Online learning on/off (pause/resume)."),
        P("learning_rate", float, 3e-4, "Adam learning rate for online learning.", "", 1e-7, 1e-1),
        P("learning_steps_per_s", float, 5.0, "Budget of gradient steps per second (background thread).",
          "1/s", 0.0, 200.0),
        P("batch_size", int, 32, "Online-learning minibatch size.", "", 1, 1024),
        P("buffer_size", int, 5000, "Replay buffer capacity.", "transitions", 100, 10**6, read_only=True),
        P("grad_clip", float, 10.0, "Gradient-norm threshold: steps above it are skipped and counted.", "",
          0.01, 1e6),
        P("delta_period", float, 10.0, "Period of model_delta publication; 0 disables deltas.", "s",
          0.0, 3600.0),
        P("dp_noise_multiplier", float, 0.0, "Record-level DP-SGD: Gaussian noise std as a multiple of "
          "dp_clip_norm on each step's sum of clipped per-sample gradients; 0 = DP off (epsilon reported as inf "
          "once learning ran). See docs/federated.md.", "", 0.0, 100.0, read_only=True),
        P("dp_clip_norm", float, 1.0, "Record-level DP-SGD: L2 clip of every per-transition gradient.", "",
          1e-6, 1e6, read_only=True),
        P("learn_trainable", str, "dynamics", "What learns online: 'dynamics' (ensemble + collision head, the "
          "exchanged coordinates) or a smaller subset for DP-SGD, whose noise grows with the number of trained "
          "coordinates: 'dynamics_out_scale_state_tied_s10' (296: a scale of each member's heading/velocity "
          "output column + bias, and those columns' weights tied across members at 1/10 of the lr; the fleet "
          "experiment's DP setting, docs/fleet_experiment.md), 'dynamics_out_scale' (40: the scales alone), "
          "'dynamics_out_state', 'dynamics_out_velocity', 'dynamics_out', 'dynamics_bias'.", "", read_only=True,
          choices=("dynamics", "dynamics_out_scale_state_tied_s10", "dynamics_out_scale", "dynamics_out_state",
                   "dynamics_out_velocity", "dynamics_out", "dynamics_bias")),
        P("dp_delta", float, 1e-5, "Record-level DP-SGD: the delta epsilon is reported at.", "", 1e-12, 0.1,
          read_only=True),
        P("epsilon_budget", float, 0.0, "Record-level epsilon budget of this robot over the life of its privacy "
          "ledger (state_dir/privacy_ledger.json; without state_dir, since the node started): a DP step that "
          "would exceed it is not taken, the last delta says so and the robot contributes no more; 0 = no "
          "budget.", "", 0.0, 1e6, read_only=True),
        P("checkpoint_period", float, 30.0, "Period of atomic checkpoints (needs state_dir).", "s", 1.0, 86400.0),
        P("twist_stamped", bool, False, "cmd_vel is geometry_msgs/TwistStamped instead of Twist.",
          read_only=True),
        *_CLOCK,
        *_FRAME,
        *_COMMON,
    ),
)

POLICY = NodeSchema(
    "policy_node",
    "Plans in the world model toward the goal and drives the robot through the safety layer.",
    (
        P("checkpoint", str, "", "World-model checkpoint the planner rolls out; empty = the shipped one.",
          read_only=True),
        P("range_head", str, "", "Range head whose configuration (bins, field of view, camera offset) the "
          "seen-obstacle memory of learned_mpc uses; empty = the shipped models/range_head.bin.", read_only=True),
        P("obstacle_memory", float, 20.0, "learned_mpc: how long seen obstacles are remembered out of view.", "s",
          0.5, 600.0),
        P("controller", str, "learned_mpc", "mpc = MPPI in the latent world model; learned_mpc = MPPI on the "
          "unicycle prior with the online-learned velocity residual, avoiding what the camera's range head "
          "saw (Observation.free_range); kinematic_mpc = the same MPPI, critics and safety layer on a plain "
          "unicycle (the baseline a Nav2 user would pick); go_to_goal = proportional baseline ignoring the model. "
          "Default: what docs/evaluation.md shows is best.", "",
          choices=("mpc", "learned_mpc", "kinematic_mpc", "go_to_goal")),
        P("control_rate", float, 20.0, "Rate of the cmd_vel timer.", "Hz", 1.0, 200.0, read_only=True),
        P("twist_stamped", bool, False, "Publish geometry_msgs/TwistStamped instead of Twist.", read_only=True),
        P("max_v", float, 0.5, "Velocity limit, linear.", "m/s", 0.0, 2.0),
        P("max_w", float, 1.2, "Velocity limit, angular.", "rad/s", 0.0, 6.0),
        P("max_acc_v", float, 1.0, "Acceleration limit, linear.", "m/s^2", 0.01, 20.0),
        P("max_acc_w", float, 3.0, "Acceleration limit, angular.", "rad/s^2", 0.01, 50.0),
        P("max_jerk_v", float, 20.0, "Jerk limit, linear.", "m/s^3", 0.1, 1000.0),
        P("max_jerk_w", float, 60.0, "Jerk limit, angular.", "rad/s^3", 0.1, 1000.0),
        P("watchdog_timeout", float, 0.1, "world_state older than this commands a stop.", "s", 0.01, 10.0),
        P("uncertainty_slow", float, 0.1, "Uncertainty where speed scaling starts (the shipped model: ~0.02 "
          "in distribution, ~0.15 for motion beyond its training range).", "latent std", 0.0, 100.0),
        P("uncertainty_stop", float, 0.4, "Uncertainty where the robot stops.", "latent std", 0.0, 100.0),
        P("collision_stop", float, 0.8, "Predicted collision risk that stops the robot.", "probability",
          0.0, 1.0),
        P("goal_tolerance", float, 0.25, "Goal reached within this distance.", "m", 0.01, 5.0),
        P("goal_yaw_tolerance", float, 3.2, "Goal reached within this yaw error (>= pi ignores yaw).", "rad",
          0.01, 3.2),
        P("samples", int, 128, "MPPI samples per iteration.", "", 8, 4096),
        P("horizon", int, 15, "MPPI horizon.", "steps", 2, 100),
        P("iterations", int, 1, "MPPI iterations per control cycle.", "", 1, 20),
        P("temperature", float, 0.05, "MPPI temperature (cost units: metres of goal distance).", "", 1e-4, 1e3),
        P("noise_v", float, 0.25, "MPPI exploration noise, linear.", "m/s", 0.0, 2.0),
        P("noise_w", float, 0.8, "MPPI exploration noise, angular.", "rad/s", 0.0, 6.0),
        P("w_goal", float, 1.0, "Cost weight of goal distance.", "", 0.0, 1e4),
        P("w_collision", float, 1.0, "Cost weight of predicted collision risk (learned collision head).", "",
          0.0, 1e4),
        P("w_obstacle", float, 10.0, "Cost weight of map clearance below robot radius + margin (needs `map`).", "",
          0.0, 1e4),
        P("w_uncertainty", float, 1.0, "Cost weight of ensemble uncertainty.", "", 0.0, 1e4),
        P("w_smooth", float, 0.05, "Cost weight of action changes.", "", 0.0, 1e4),
        P("use_map", bool, True, "Use the static map (`map`, nav_msgs/OccupancyGrid) for a geodesic cost-to-go in "
          "the goal term; without a map, or false, the goal term is the straight-line distance."),
        P("map_clearance", float, 0.362, "Obstacle inflation of the map cost-to-go (robot radius + margin): "
          "passages narrower than twice this are closed on the map.", "m", 0.0, 5.0),
        P("max_goal_distance", float, 1000.0, "Goals with |x| or |y| beyond this are refused as absurd.", "m",
          1.0, 1e6),
        *_CLOCK,
        *_FRAME,
        *_COMMON,
    ),
)

# The core settings that policy_node parameters set: {core dataclass: {its field: parameter}}. The node builds
# SafetyLimits / MPPIConfig from this map (core_kwargs); test/unit/test_settings.py checks that each parameter's default
# equals the dataclass default, except where POLICY_TUNED says why the node's differs.
POLICY_CORE = {
    "SafetyLimits": {n: n for n in (
        "max_v", "max_w", "max_acc_v", "max_acc_w", "max_jerk_v", "max_jerk_w", "watchdog_timeout",
        "uncertainty_slow", "uncertainty_stop", "collision_stop", "goal_tolerance", "goal_yaw_tolerance")},
    "MPPIConfig": {"v_max": "max_v", "w_max": "max_w", **{n: n for n in (
        "samples", "horizon", "iterations", "temperature", "noise_v", "noise_w", "w_goal", "w_collision",
        "w_obstacle", "w_uncertainty", "w_smooth")}},
}
POLICY_TUNED = {
    "uncertainty_slow": "SafetyLimits keeps model-agnostic bounds; the node's fit the shipped model's latent std",
    "uncertainty_stop": "SafetyLimits keeps model-agnostic bounds; the node's fit the shipped model's latent std",
}


def core_kwargs(core_map: dict[str, str], values: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of a core dataclass from a node's parameter ``values`` ({field: parameter} map)."""
    return {fld: values[param] for fld, param in core_map.items()}


FEDERATED_SYNC = NodeSchema(
    "federated_sync_node",
    "Compresses and privatises model deltas, spools them durably and syncs with the fleet aggregator.",
    (
        P("robot_id", str, "", "Identifier of this robot upstream (spool keys, aggregator de-duplication); "
          "empty = the node namespace without slashes (robot1 for /robot1), 'robot' without a namespace.",
          read_only=True),
        P("spool_dir", str, "", "Spool directory; empty = $ROS_HOME/sakura_nexus/spool/<robot_id>.",
          read_only=True),
        P("spool_max_bytes", int, 64 * 2**20, "Spool size bound; oldest deltas are merged when full.", "bytes",
          2**16, 2**40, read_only=True),
        P("spool_policy", str, "merge", "What a full spool does (see docs/federated.md).", "",
          choices=("merge", "drop_oldest", "reject"), read_only=True),
        P("codec", str, "topk0.015+q8", "Upstream delta codec (see docs/federated.md; the fleet experiment measured "
          "topk0.015+q8).", "",
          choices=("dense", "q8", "topk0.01", "topk0.01+q8", "topk0.015+q8", "topk0.05+q8")),
        P("clip_norm", float, 10.0, "L2 clipping bound of each delta.", "weight units", 1e-6, 1e6),
        P("local_noise_std", float, 0.0, "Std of local Gaussian noise added after clipping "
          "(multiple of clip_norm); 0 = off.", "", 0.0, 100.0),
        P("checkpoint", str, "", "World-model checkpoint (same as world_model_node's) whose architecture turns "
          "global weight vectors into model_update payloads; empty = the shipped models/.", read_only=True),
        P("superlink", str, "127.0.0.1:9092", "Address of the fleet SuperLink (Fleet API).", read_only=True),
        P("start_supernode", bool, True, "Start and supervise a Flower SuperNode for this robot.",
          read_only=True),
        P("supernode_port", int, 0, "Local port of the SuperNode's ClientAppIo API; 0 = a free port.", "",
          0, 65535, read_only=True),
        P("root_certificates", str, "", "CA certificate file: TLS to the SuperLink; empty = insecure "
          "(loopback / trusted network only).", read_only=True),
        P("auth_private_key", str, "", "SuperNode authentication private key (OpenSSH EC); empty = none.",
          read_only=True),
        P("egress_audit_dir", str, "", "If set, the ClientApp keeps a copy of every upstream reply "
          "(payloads + metadata) here for audit; empty = off.", read_only=True),
        P("link_timeout", float, 30.0, "The link counts as online while the last exchange with the "
          "aggregator is younger than this.", "s", 1.0, 3600.0),
        P("poll_period", float, 1.0, "Period of spool/inbox polling and sync_status.", "s", 0.05, 60.0),
        *_COMMON,
    ),
)

ALL = (SIM, PERCEPTION, WORLD_MODEL, POLICY, FEDERATED_SYNC)
BY_NODE = {s.node: s for s in ALL}


def render_markdown() -> str:
    lines = [
        "# Parameters",
        "",
        "Generated from `sakura_nexus/params.py` by `python -m sakura_nexus.params` — do not edit by hand.",
        "",
        "*live* parameters can be changed at run time (`ros2 param set`) and take effect on the next "
        "frame or control cycle; *read-only* ones are structural and fixed at start-up. Out-of-range "
        "values are refused with a reason. Every node also takes `use_sim_time`.",
        "",
        "Sensor and state topics (not the transient-local model topics) also take ROS QoS overrides, "
        "read when the node configures: `qos_overrides./<namespace>/<topic>.<publisher|subscription>."
        "<reliability|history|depth>` (e.g. `qos_overrides./robot1/image_raw.subscription.reliability: "
        "reliable` under the node's `ros__parameters`; rclpy's QoSOverridingOptions).",
        "",
    ]
    for schema in ALL:
        lines += [f"## {schema.node}", "", schema.summary, "",
                  "| name | type | default | range | unit | mode | description |",
                  "|---|---|---|---|---|---|---|"]
        for p in schema.params:
            default = repr(p.default) if p.type is str else str(p.default).lower() if p.type is bool \
                else str(p.default)
            lines.append(
                f"| `{p.name}` | {p.type_name} | `{default}` | {p.range_text()} | {p.unit} | "
                f"{'read-only' if p.read_only else 'live'} | {p.description} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(render_markdown())
