"""CPU budget of the robot stack (perception + world model + policy; sim and harness excluded), both
controllers in one run: where the time goes per node, and the machine-independent ratios.

1. **In process, without ROS** (``profile``): the same work the three nodes do for each camera frame,
   called in one process at the camera's 30 Hz from the same functions (``vision`` preprocessing,
   the node's frozen encoder, the range head, the world model's NumPy snapshot, the policy's planner
   with the node's own configuration, seen-obstacle memory and safety layer), on frames the MuJoCo
   cell renders while that controller drives it (rendering excluded). Per stage: p50 / p99 ms; the
   critical path (image -> command) p50 / p99; the process CPU of that work per frame; plus the
   world model's background learning step (``learning_steps_per_s`` a second in the node).
2. **Through ROS** (``bench_closed_loop.py``, one subprocess per configuration): composed (the
   stack in one ``nexus_container``), separate processes, and composed with the stack pinned to one
   core (``taskset -c 0``, the slow-machine check). Each gives image -> cmd_vel latency, control
   ticks missed and the stack's CPU.
3. **Ratios**: ROS overhead = e2e p50 through ROS / in-process critical-path p50; stack CPU / one
   core; and the per-node remainder (CPU through ROS - in-process compute - learning) that ROS
   take/publish, the executor, /clock + odometry callbacks and Python cost.

Targets (issue 19): stack <= 0.5 cores with learned_mpc at 30 Hz; p99 < 33 ms and 0 missed ticks
(also on one core); ROS overhead ratio <= 1.25.

    python -m sakura_nexus bench budget [--seconds 30] [--modes composed,separate,one_core]
Writes out/bench/budget.json and budget.png (and the closed-loop runs' own budget_<run>.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

CONTROLLERS = ("kinematic_mpc", "learned_mpc")
MODES = {"composed": ["--composed"], "separate": ["--no-composed"], "one_core": ["--composed", "--stack-cpus", "0"]}
TARGETS = {"stack_cores_learned": 0.5, "latency_p99_ms": 33.0, "missed_ticks": 0, "ros_overhead_ratio": 1.25}
CAMERA_RATE = 30.0
LSCPU_KEYS = ("Model name", "CPU(s)", "Thread(s) per core", "CPU max MHz", "L2 cache", "L3 cache", "Hypervisor vendor")


def _node_params(schema, node: str) -> dict:
    """The schema defaults overlaid with config/nexus.yaml's /**/<node> parameters (what the node runs with)."""
    import yaml

    from sakura_nexus.paths import config_file

    values = schema.defaults()
    doc = yaml.safe_load(config_file("nexus.yaml").read_text())
    values.update((doc.get(f"/**/{node}") or {}).get("ros__parameters", {}))
    return values


class _Stages:
    def __init__(self):
        self.ms: dict[str, list] = {}

    def add(self, name: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.ms.setdefault(name, []).append((t1 - t0) * 1e3)
        return t1

    def summary(self, skip: int) -> dict:
        out = {}
        for k, v in self.ms.items():
            a = np.asarray(v[skip:], float)
            if a.size:
                out[k] = {"n": int(a.size), "mean": round(float(a.mean()), 3), "p50": round(float(np.median(a)), 3),
                          "p99": round(float(np.percentile(a, 99)), 3)}
        return out


def profile(controller: str, seconds: float, seed: int, warmup_frames: int = 30) -> dict:
    """In-process, ROS-free: the stack's per-frame work at 30 Hz (see the module docstring)."""
    import torch

    from sakura_nexus import vision
    from sakura_nexus.control.kinematic import ResidualUnicycle, UnicycleModel
    from sakura_nexus.control.learned import SeenObstacles, _cost_to_go, _route_grid
    from sakura_nexus.control.planner import MPPIPlanner
    from sakura_nexus.control.safety import SafetyLayer
    from sakura_nexus.harness.goals import pick_goals
    from sakura_nexus.models.checkpoint import load_checkpoint
    from sakura_nexus.models.obstacles import load_range_head
    from sakura_nexus.models.online import OnlineLearner, Transition
    from sakura_nexus.nodes.perception import _Encoder, load_encoder
    from sakura_nexus.nodes.policy import PolicyNode
    from sakura_nexus.params import PERCEPTION, POLICY, WORLD_MODEL
    from sakura_nexus.paths import models_dir
    from sakura_nexus.sim import CellConfig, FactoryCell

    torch.set_num_threads(1)
    pp, wp, cp = (_node_params(PERCEPTION, "perception_node"), _node_params(WORLD_MODEL, "world_model_node"),
                  _node_params(POLICY, "policy_node"))
    cp["controller"] = controller
    cfg = vision.PreprocessConfig(width=pp["input_width"], height=pp["input_height"], crop=tuple(pp["crop"]),
                                  mean=tuple(pp["normalize_mean"][:3]),
                                  std=tuple(v if v else 1.0 for v in pp["normalize_std"][:3]),
                                  blur_ref=pp["quality_blur_ref"])
    enc = _Encoder(load_encoder(""), 0)
    head = load_range_head(models_dir() / "range_head.bin")
    learner = OnlineLearner(load_checkpoint(None).world_model, lr=wp["learning_rate"], buffer_size=wp["buffer_size"],
                            batch_size=wp["batch_size"], grad_clip=wp["grad_clip"])
    # the policy node's own configuration methods, on these parameter values
    class _Params(types.SimpleNamespace):
        def as_dict(self):
            return dict(vars(self))

    fake = types.SimpleNamespace(params=_Params(**cp))
    fake._limits = lambda: PolicyNode._limits(fake)
    limits, ucfg, mcfg = fake._limits(), PolicyNode._unicycle_config(fake), PolicyNode._mppi_config(fake)
    safety = SafetyLayer(limits)
    if controller == "learned_mpc":
        seen = SeenObstacles(head.range_config, cp["obstacle_memory"], cp["map_clearance"])
        model = ResidualUnicycle(ucfg)
        model.obstacles = seen.memory
    else:
        seen, model = None, UnicycleModel(ucfg)
    planner = MPPIPlanner(model, mcfg)
    planner.warm_up(5)
    cell = FactoryCell(CellConfig(seed=seed), camera_width=320, camera_height=240)
    cell.reset(seed)
    cell_map = (list(cell.map_obstacles), float(cell.size[0]))
    goals, _ = pick_goals(seed, 40, start=cell.pose, straight=True, min_dist=1.0)
    stages = _Stages()
    n_frames = int(seconds * CAMERA_RATE) + warmup_frames
    period = 1.0 / CAMERA_RATE
    gi, goal, cmd = 0, None, (0.0, 0.0)
    prev_tick = None
    cpu_work = 0.0
    learn_ms = []
    next_t = time.perf_counter()
    frames_done = 0
    for i in range(n_frames):
        if goal is None or math.hypot(goal[0] - cell.pose[0], goal[1] - cell.pose[1]) < 0.3:
            goal = goals[gi % len(goals)]
            gi += 1
            planner.reset()
            grid, res, origin = _route_grid(cell_map, goal, goal)
            field = _cost_to_go(grid, res, origin, goal, cp["map_clearance"])
            planner.set_cost_to_go(field)
            if seen is not None:
                seen.reset()
                seen.set_static(grid, res, origin, goal, field)
        cell.step(cmd[0], cmd[1], dt=period)
        rgb_frame = np.ascontiguousarray(cell.render())
        data = rgb_frame.tobytes()                      # what arrives in sensor_msgs/Image
        pose, vel, t_sim = cell.pose, cell.velocity, cell.time
        time.sleep(max(0.0, next_t - time.perf_counter()))   # paced like the camera
        next_t = max(next_t + period, time.perf_counter())
        c0 = time.process_time()
        t0 = time.perf_counter()
        # --- perception_node._process
        rgb = vision.decode("rgb8", rgb_frame.shape[0], rgb_frame.shape[1], rgb_frame.shape[1] * 3, False, data)
        small = vision.crop_resize(rgb, cfg)
        vision.quality(small, cfg.blur_ref)
        x = vision.normalise(small, cfg)
        t = stages.add("perception: decode + preprocess", t0)
        emb = enc(x)
        t = stages.add("perception: encoder", t)
        ranges, unc = head.predict(torch.from_numpy(x)[None])
        t = stages.add("perception: range head", t)
        # --- world_model_node._on_observation (model part)
        proprio = np.array([pose[0], pose[1], math.cos(pose[2]), math.sin(pose[2]), vel[0], vel[1]], np.float32)
        action = np.asarray(cmd, np.float32)
        z = learner.snapshot.encode(emb[None], proprio[None])
        zs, sig = learner.snapshot.rollout(z, np.repeat(action[None, None, :], wp["horizon"], axis=1))
        learner.snapshot.pose(z)
        float(learner.snapshot.collision(zs[:, 0])[0])
        t = stages.add("world model: step", t)
        # --- policy_node: observation callback (seen memory), world_state callback (plan, safety)
        if seen is not None:
            seen.observe(pose, ranges, t_sim, unc)
            t = stages.add("policy: seen-obstacle memory", t)
            if isinstance(model, ResidualUnicycle) and prev_tick is not None:
                model.observe(prev_tick[1], cmd, vel)
        zp = model.encode_state(pose, vel)
        res = planner.plan(zp, goal, prev_action=cmd, position=pose[:2], evaluate=False)
        t = stages.add("policy: planner", t)
        out = safety.filter(res.action[0], res.action[1], t_sim, t_sim,
                            unc * cp["uncertainty_slow"] / 0.5 if seen is not None else 0.0,
                            res.info.get("risk0", 0.0) if seen is not None else 0.0)
        t = stages.add("policy: safety layer", t)
        stages.ms.setdefault("critical path: image -> command", []).append((t - t0) * 1e3)
        planner.evaluate(zp, res)                        # after the command, as in the node
        t = stages.add("policy: after the command (evaluate)", t)
        cpu_work += time.process_time() - c0 if i >= warmup_frames else 0.0
        frames_done += i >= warmup_frames
        cmd = (out.v, out.w)
        prev_tick = (t_sim, vel)
        learner.add(Transition(emb, proprio, action, emb, proprio, False))
        # the node's learner: learning_steps_per_s steps a second, in the background
        if i >= warmup_frames and i % max(1, int(CAMERA_RATE / wp["learning_steps_per_s"])) == 0 \
                and len(learner) >= learner.batch_size:
            c1 = time.process_time()
            learner.train_step()
            learn_ms.append((time.process_time() - c1) * 1e3)
        if seen is not None and seen.route_due(t_sim):   # the policy's route thread (background)
            t1 = time.perf_counter()
            planner.set_cost_to_go(seen.route(goal, pose, t_sim))
            stages.ms.setdefault("background: seen route rebuild", []).append((time.perf_counter() - t1) * 1e3)
    cell.close()
    s = stages.summary(warmup_frames)
    per_frame = cpu_work / max(frames_done, 1) * 1e3
    learn_cores = (float(np.mean(learn_ms)) * 1e-3 * wp["learning_steps_per_s"]) if learn_ms else 0.0
    return {"controller": controller, "frames": frames_done, "stages_ms": s,
            "critical_path_ms": s["critical path: image -> command"],
            "compute_cpu_ms_per_frame": round(per_frame, 3),
            "compute_cores_at_30hz": round(per_frame * 1e-3 * CAMERA_RATE, 3),
            "learning_step_cpu_ms": round(float(np.mean(learn_ms)), 3) if learn_ms else None,
            "learning_cores": round(learn_cores, 3)}


def closed_loop(controller: str, mode: str, seconds: float, warmup: float, seed: int) -> dict:
    name = f"budget_{controller}_{mode}"
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_closed_loop.py"),
           "--controller", controller, "--seconds", str(seconds), "--warmup", str(warmup), "--seed", str(seed),
           "--name", name, *MODES[mode]]
    print("$", " ".join(cmd[1:]), flush=True)
    rc = subprocess.call(cmd)
    path = common.out_dir() / f"{name}.json"
    if rc or not path.is_file():
        return {"error": f"exit code {rc}"}
    d = json.loads(path.read_text())
    lat = d["latency_image_to_command_received"]
    return {"latency_p50_ms": round(lat["p50_ms"], 3), "latency_p99_ms": round(lat["p99_ms"], 3),
            "frames": d["camera_frames"], "commands": d["commands_with_image_stamp"],
            "missed_ticks": d["control"]["missed_ticks"], "cmd_rate_hz": d["control"].get("rate_hz"),
            "stack_cores": d["robot_stack_cpu_cores"], "cpu_cores_per_process": d["cpu_cores_used"],
            "rss_mb": d["rss_mb"], "hops_ms": {k: {"hop_mean": v["hop"].get("mean"),
                                                   "compute_mean": v["compute"].get("mean")}
                                               for k, v in d["hops_ms"].items()},
            "load_average_start_end": d["load_average_before_start_end"][1:], "json": str(path)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="measurement window of each closed-loop run (wall)")
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--profile-seconds", type=float, default=20.0, help="in-process frames (seconds at 30 Hz)")
    ap.add_argument("--modes", default="composed,separate,one_core", help=f"subset of {sorted(MODES)}")
    ap.add_argument("--controllers", default=",".join(CONTROLLERS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="budget")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    controllers = [c for c in args.controllers.split(",") if c]
    t_start, load0 = time.time(), os.getloadavg()
    prof = {}
    for c in controllers:
        print(f"in-process profile: {c}", flush=True)
        prof[c] = profile(c, args.profile_seconds, args.seed)
        prof[c]["load_average"] = [round(v, 2) for v in os.getloadavg()]
    runs = {c: {m: closed_loop(c, m, args.seconds, args.warmup, args.seed) for m in modes} for c in controllers}
    ratios = {}
    for c in controllers:
        inproc = prof[c]["critical_path_ms"]["p50"]
        ratios[c] = {}
        for m, r in runs[c].items():
            if "error" in r:
                continue
            ratios[c][m] = {
                "ros_overhead_ratio_p50": round(r["latency_p50_ms"] / inproc, 3),
                "stack_cores_per_core": r["stack_cores"],
                "ros_and_python_cores": round(r["stack_cores"] - prof[c]["compute_cores_at_30hz"]
                                              - prof[c]["learning_cores"], 3),
            }
    met = {}
    lm = runs.get("learned_mpc", {})
    if "composed" in lm and "error" not in lm["composed"]:
        met["stack_cores_learned_composed"] = lm["composed"]["stack_cores"] <= TARGETS["stack_cores_learned"]
    for c in controllers:
        for m, r in runs[c].items():
            if "error" not in r:
                met[f"{c}/{m}: p99 < 33 ms, 0 missed"] = (r["latency_p99_ms"] < TARGETS["latency_p99_ms"]
                                                          and r["missed_ticks"] == 0)
        for m, q in ratios[c].items():
            met[f"{c}/{m}: ROS overhead ratio <= 1.25"] = q["ros_overhead_ratio_p50"] <= TARGETS["ros_overhead_ratio"]
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    data = {"what": "robot stack CPU budget: in-process profile (no ROS) + closed loop through ROS, both controllers",
            "lscpu": [ln for ln in lscpu.splitlines() if ln.split(":")[0].strip() in LSCPU_KEYS],
            "load_average_start_end": [[round(v, 2) for v in load0], [round(v, 2) for v in os.getloadavg()]],
            "wall_s": round(time.time() - t_start, 1), "profile": prof, "closed_loop": runs, "ratios": ratios,
            "targets": TARGETS, "met": met}
    common.write(args.name, data)
    plot(data, common.out_dir() / f"{args.name}.png")
    for c in controllers:
        print(f"{c}: in-process critical path p50 {prof[c]['critical_path_ms']['p50']:.2f} ms, compute "
              f"{prof[c]['compute_cores_at_30hz']:.3f} cores + learning {prof[c]['learning_cores']:.3f}")
        for m, r in runs[c].items():
            if "error" in r:
                print(f"  {m}: {r['error']}")
                continue
            print(f"  {m:9s}: stack {r['stack_cores']:.3f} cores, p50 {r['latency_p50_ms']:.2f} / p99 "
                  f"{r['latency_p99_ms']:.2f} ms, {r['missed_ticks']} missed, ROS overhead ratio "
                  f"{ratios[c][m]['ros_overhead_ratio_p50']:.2f}")
    return 0


def plot(data: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prof, runs = data["profile"], data["closed_loop"]
    ctrls = list(prof)
    fig, ax = plt.subplots(1, 2, figsize=(16, 5.2))
    # left: per-stage p50 of the in-process profile, stacked per controller
    names = [k for k in prof[ctrls[0]]["stages_ms"] if not k.startswith(("critical", "background"))]
    for c in ctrls[1:]:
        names += [k for k in prof[c]["stages_ms"] if k not in names and not k.startswith(("critical", "background"))]
    cmap = plt.get_cmap("tab10")
    for i, c in enumerate(ctrls):
        left = 0.0
        for j, k in enumerate(names):
            v = prof[c]["stages_ms"].get(k, {}).get("mean", 0.0)
            ax[0].barh(i, v, left=left, color=cmap(j % 10), label=k if i == 0 or k not in prof[ctrls[0]]["stages_ms"]
                       else None)
            left += v
    ax[0].set_yticks(range(len(ctrls)), ctrls)
    ax[0].set_xlabel("mean ms per camera frame, in one process without ROS (30 Hz paced)")
    ax[0].legend(fontsize=7, loc="lower right")
    ax[0].set_title("where the compute goes")
    # right: stack CPU per configuration, split into compute / learning / ROS + Python
    labels, comp, learn, rest = [], [], [], []
    for c in ctrls:
        for m, r in runs[c].items():
            if "error" in r:
                continue
            labels.append(f"{c}\n{m}")
            comp.append(prof[c]["compute_cores_at_30hz"])
            learn.append(prof[c]["learning_cores"])
            rest.append(max(0.0, r["stack_cores"] - comp[-1] - learn[-1]))
    y = np.arange(len(labels))
    ax[1].barh(y, comp, color="tab:blue", label="node compute (in-process)")
    ax[1].barh(y, learn, left=comp, color="tab:green", label="online learning (background)")
    ax[1].barh(y, rest, left=np.add(comp, learn), color="tab:gray", label="ROS take/publish, executor, Python")
    ax[1].axvline(0.5, color="r", ls="--", label="budget 0.5 cores")
    ax[1].set_yticks(y, labels, fontsize=8)
    ax[1].invert_yaxis()
    ax[1].set_xlabel("CPU cores at 30 Hz (perception + world model + policy)")
    ax[1].legend(fontsize=7, loc="lower right")
    ax[1].set_title("robot stack CPU through ROS")
    la = data["load_average_start_end"]
    fig.suptitle(f"robot stack budget on {os.cpu_count()} cores; load average {la[0][0]:.1f} -> {la[1][0]:.1f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
