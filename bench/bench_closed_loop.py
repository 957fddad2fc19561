"""Closed-loop benchmark: sim_node (MuJoCo, 30 Hz camera) + perception + world_model + policy, each a
separate process (the demo supervisor, config/nexus.yaml), the robot driving goal to goal.

Measured over ``--seconds`` after a warm-up, with DDS sample timestamps (rclpy MessageInfo, system
clock), so the harness' own scheduling does not enter the numbers:

- latency image -> command: from the *source* timestamp of each image (taken here as a raw, serialized
  message: only its stamp is parsed; rendering happens before it and is excluded) to the *reception*
  timestamp here of the cmd_vel planned from that image (matched through the ``plan`` carrying the
  image stamp, which policy_node publishes right after that command: ``harness.latency.MissionLog.commands``).
  p50 / p99; targets p50 <= 8 ms, p99 <= 20 ms;
- per hop (source timestamps): image -> Observation, Observation -> WorldState, WorldState -> cmd_vel,
  cmd_vel delivery; compute inside each hop = the node's own work up to its publish
  (Observation.compute_time per frame; for world_model and policy the mean ``callback_ms`` over the
  last 300 callbacks that /diagnostics reports once a second, averaged over the window, with the
  model's ``tick_ms`` and the planner's ``plan_ms`` beside them); transport (publish, DDS, take,
  executor dispatch, hand-off, waiting for a CPU) = the rest of the mean latency.
  Target: transport <= 25 % of the total;
- control ticks missed: cmd_vel publication gaps > 1.5 control periods;
- RSS of all node processes, CPU seconds used per process, load average.

Writes out/bench/closed_loop.json and closed_loop.png.

    python bench/bench_closed_loop.py [--seconds 60] [--warmup 10] [--controller mpc]
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

TARGETS = {"latency_p50_ms": 8.0, "latency_p99_ms": 20.0, "transport_share": 0.25, "missed_ticks": 0}


def temporary_models(directory: pathlib.Path) -> pathlib.Path:
    """Randomly initialised encoder + world model with the shipped architecture (same compute cost)."""
    import torch

    from sakura_nexus.models.encoder import ConvEncoder, encoder_to_bytes
    from sakura_nexus.models.world_model import WorldModel, world_model_to_bytes

    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "encoder.bin").write_bytes(encoder_to_bytes(ConvEncoder()))
    (directory / "world_model.bin").write_bytes(world_model_to_bytes(WorldModel()))
    return directory


def hop_table(log, t0_ns: int, t1_ns: int, diag: dict) -> dict:
    """Per-frame hop durations (ms) for every image stamp seen end to end inside the window."""
    cmds = log.commands()
    keys = [k for k in cmds if k in log.obs_src and k in log.ws_src and t0_ns <= log.start_ns(k) <= t1_ns]
    keys.sort()
    arr = np.array([(log.obs_src[k] - log.start_ns(k), log.ws_src[k] - log.obs_src[k],
                     cmds[k][0] - log.ws_src[k], cmds[k][1] - cmds[k][0]) for k in keys],
                   float).reshape(-1, 4) * 1e-6
    comp_obs = np.array([log.obs_compute[k] for k in keys], float) * 1e3
    total = arr.sum(axis=1)

    def stats(x):
        x = np.asarray(x, float)
        if not x.size:
            return {"n": 0}
        return {"n": int(x.size), "mean": round(float(x.mean()), 3), "p50": round(float(np.percentile(x, 50)), 3),
                "p90": round(float(np.percentile(x, 90)), 3), "p99": round(float(np.percentile(x, 99)), 3),
                "max": round(float(x.max()), 3)}

    # compute = each node's own callback up to its publish (what Observation.compute_time is for
    # perception: preprocessing, model, message); the model / planner alone are reported beside it
    def reported(node, key):
        return _diag_samples(diag, node, key, t0_ns, t1_ns)

    tick, plan = reported("world_model_node", "callback_ms"), reported("policy_node", "callback_ms")
    hops = {
        "perception": {"hop": stats(arr[:, 0]), "compute": stats(comp_obs)},
        "world_model": {"hop": stats(arr[:, 1]), "compute": stats(tick),
                        "model_only": stats(reported("world_model_node", "tick_ms"))},
        "policy": {"hop": stats(arr[:, 2]), "compute": stats(plan),
                   "planner_only": stats(reported("policy_node", "plan_ms"))},
        "command_delivery": {"hop": stats(arr[:, 3]), "compute": {"n": 0, "mean": 0.0, "p50": 0.0}},
    }
    compute_mean = float(comp_obs.mean() if comp_obs.size else 0) + float(np.mean(tick) if len(tick) else 0) + \
        float(np.mean(plan) if len(plan) else 0)
    share = {  # means only: the two nodes report window means, not per-frame values
        "compute_mean_ms": round(compute_mean, 3),
        "total_mean_ms": round(float(total.mean()), 3) if total.size else None,
        "transport_share_of_total_mean": round(1 - compute_mean / float(total.mean()), 3) if total.size else None,
    }
    return {"hops_ms": hops, "share": share, "frames_end_to_end": len(keys)}, arr, comp_obs


def _diag_samples(diag: dict, node_suffix: str, key: str, t0_ns: int, t1_ns: int) -> list:
    """Values of ``key`` that ``node_suffix`` reported on /diagnostics inside [t0_ns, t1_ns]."""
    for node, values in diag.items():
        if node.endswith(node_suffix) and key in values:
            return [v for t, v in values[key] if t0_ns <= t <= t1_ns]
    return []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="measurement window (wall)")
    ap.add_argument("--warmup", type=float, default=10.0, help="wall seconds driving before measuring")
    from sakura_nexus.params import POLICY

    ap.add_argument("--controller", default=POLICY["controller"].default, choices=POLICY["controller"].choices)
    ap.add_argument("--seed", type=int, default=0, help="factory layout seed")
    ap.add_argument("--goal-timeout", type=float, default=20.0, help="sim seconds per goal")
    ap.add_argument("--models", default="", help="checkpoint directory (default: the shipped models/, else a "
                                                  "randomly initialised one of the same architecture)")
    ap.add_argument("--name", default="closed_loop", help="output name (out/bench/<name>.json/.png)")
    ap.add_argument("--param", action="append", default=[], metavar="NODE.NAME=VALUE",
                    help="parameter override, e.g. policy_node.samples=64 (repeatable)")
    from sakura_nexus.harness.pipeline import COMPOSED_DEFAULT

    ap.add_argument("--composed", action=argparse.BooleanOptionalAction, default=COMPOSED_DEFAULT,
                    help="perception, world_model and policy in one process (nexus_container)")
    ap.add_argument("--stack-cpus", default=None, metavar="LIST",
                    help="run the robot stack under `taskset -c LIST` (the slow-machine check: 0 = one core)")
    args = ap.parse_args(argv)
    overrides: dict = {}
    for item in args.param:
        key, value = item.split("=", 1)
        node, name = key.split(".", 1)
        overrides.setdefault(node, {})[name] = value

    from sakura_nexus.harness.goals import pick_goals
    from sakura_nexus.harness.latency import cmd_gaps
    from sakura_nexus.harness.pipeline import Pipeline, models_missing
    from sakura_nexus.harness.supervisor import cpu_cores

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_closed_loop_"))
    if args.models:
        os.environ["SAKURA_NEXUS_MODELS"] = str(pathlib.Path(args.models).resolve())
    model_note = "shipped checkpoint"
    if models_missing():
        os.environ["SAKURA_NEXUS_MODELS"] = str(temporary_models(tmp / "models"))
        model_note = "randomly initialised checkpoint (models/ missing): same architecture and compute"
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    load_before = os.getloadavg()
    pipe = Pipeline(tmp / "run", seed=args.seed, controller=args.controller, hops=True, diagnostics=True,
                    overrides=overrides, composed=args.composed, stack_cpus=args.stack_cpus)
    print(f"closed loop: {args.controller}, {'composed' if args.composed else 'separate processes'}"
          f"{', stack on CPUs ' + args.stack_cpus if args.stack_cpus else ''}, {model_note}; "
          f"logs in {tmp / 'run' / 'logs'}", flush=True)
    with pipe:
        m = pipe.mission
        log = m.log
        m.log.t0 = m.now()
        m.recording = True
        goals, layout = pick_goals(args.seed, 40, start=m.pose, straight=True, min_dist=1.0)
        t_wall0 = time.monotonic()
        t_measure0 = t_wall0 + args.warmup
        t_end = t_measure0 + args.seconds
        window0_ns = window1_ns = None
        cpu0 = cpu1 = None
        reached = 0
        gi = 0
        while time.monotonic() < t_end and gi < len(goals):
            g = goals[gi]
            gi += 1
            m.send_goal(*g)
            t_goal = m.now()
            while time.monotonic() < t_end and m.now() - t_goal < args.goal_timeout:
                if window0_ns is None and time.monotonic() >= t_measure0:
                    window0_ns, cpu0, load_start = time.time_ns(), pipe.sup.cpu_s(), os.getloadavg()
                    harness0 = sum(os.times()[:2])
                    print("measuring ...", flush=True)
                if pipe.sup.dead():
                    raise RuntimeError(f"node died: {pipe.sup.dead()}")
                time.sleep(0.1)
                if math.hypot(g[0] - m.pose[0], g[1] - m.pose[1]) < 0.3:
                    reached += 1
                    break
            log.goals.append({"goal": [round(v, 3) for v in g], "reached": bool(
                math.hypot(g[0] - m.pose[0], g[1] - m.pose[1]) < 0.3), "time_s": round(m.now() - t_goal, 2),
                "t_end": round(m.now(), 3), "collisions": 0})
        window1_ns, cpu1 = time.time_ns(), pipe.sup.cpu_s()
        harness1 = sum(os.times()[:2])
        load_end = os.getloadavg()
        rss = pipe.sup.rss_mb()
        harness_rss = common.rss_mb(os.getpid())
        time.sleep(0.3)
    if window0_ns is None:
        print("the measurement window never started (goals ran out?)", file=sys.stderr)
        return 1
    log.window = [window0_ns, window1_ns]
    window_s = (window1_ns - window0_ns) * 1e-9
    lat_rx = log.latency_s("rx")
    lat_src = log.latency_s("src")
    frames = sum(1 for t in log.info_src.values() if window0_ns <= t <= window1_ns)
    # how much later than its image the camera_info went out (why the image's own timestamp is used)
    info_lag = [(log.info_src[k] - log.image_src[k]) * 1e-9 for k in log.image_src
                if k in log.info_src and window0_ns <= log.image_src[k] <= window1_ns]
    table, arr, comp_obs = hop_table(log, window0_ns, window1_ns, log.diag)
    ctrl = cmd_gaps(log.cmd_src, 1.0 / 20.0, window0_ns, window1_ns)
    cpu = cpu_cores(cpu0, cpu1, window_s)
    stack_cpu = cpu.pop("robot_stack")
    cpu.pop("robot_sync", None)
    lat = common.summary_ms(lat_rx)
    data = {
        "what": "sim_node (MuJoCo, 320x240 @ 30 Hz) + perception + world_model + policy as separate processes; "
                "image-stamp -> command latency from DDS source/reception timestamps",
        "controller": args.controller, "model": model_note, "window_s": round(window_s, 1),
        "load_average_before_start_end": [[round(v, 2) for v in x] for x in (load_before, load_start, load_end)],
        "camera_frames": frames, "commands_with_image_stamp": int(lat_rx.size),
        "frames_without_command": frames - int(lat_rx.size),
        "latency_image_to_command_received": lat,
        "latency_image_to_command_published": common.summary_ms(lat_src),
        "camera_info_after_image": common.summary_ms(info_lag),
        **table,
        "control": ctrl,
        "rss_mb": rss, "rss_total_mb": round(sum(rss.values()), 1), "harness_rss_mb": round(harness_rss, 1),
        "cpu_cores_used": cpu, "cpu_cores_used_total": round(sum(cpu.values()), 3),
        "robot_stack_cpu_cores": stack_cpu, "composed": args.composed, "stack_cpus": args.stack_cpus,
        "harness_cpu_cores_used": round((harness1 - harness0) / window_s, 3), "param_overrides": overrides,
        "goals_sent": gi, "goals_reached": reached,
        "targets": TARGETS,
        "met": {"latency_p50": lat["p50_ms"] <= TARGETS["latency_p50_ms"],
                "latency_p99": lat["p99_ms"] <= TARGETS["latency_p99_ms"],
                "transport_share": (table["share"]["transport_share_of_total_mean"] or 1) <= TARGETS["transport_share"],
                "missed_ticks": ctrl["missed_ticks"] <= TARGETS["missed_ticks"]},
        "exit_codes": pipe.exit_codes,
        "executor": os.environ.get("SAKURA_NEXUS_EXECUTOR", "events"),
        "logs": str(tmp / "run" / "logs"),
    }
    common.write(args.name, data)
    plot(data, lat_rx, arr, comp_obs, log, window0_ns, window1_ns, common.out_dir() / f"{args.name}.png")
    print(f"latency image->command: p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms "
          f"({lat['n']} of {frames} frames); transport share {table['share']['transport_share_of_total_mean']}; "
          f"missed ticks {ctrl['missed_ticks']}; robot stack {stack_cpu:.3f} cores; RSS {data['rss_total_mb']:.0f} MB; "
          f"load {load_end[0]:.2f}")
    return 0


def plot(data, lat_rx, arr, comp_obs, log, t0_ns, t1_ns, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(17, 4.8))
    lat = np.asarray(lat_rx) * 1e3
    if lat.size:
        hi = max(25.0, float(np.percentile(lat, 99.5)) * 1.1)
        ax[0].hist(np.clip(lat, 0, hi), bins=np.linspace(0, hi, 60), color="tab:orange")
        ax[0].axvline(np.percentile(lat, 50), color="k", ls="--", label=f"p50 {np.percentile(lat, 50):.1f} ms")
        ax[0].axvline(np.percentile(lat, 99), color="r", ls="--", label=f"p99 {np.percentile(lat, 99):.1f} ms")
        ax[0].axvline(TARGETS["latency_p50_ms"], color="k", ls=":", label="p50 target")
        ax[0].axvline(TARGETS["latency_p99_ms"], color="r", ls=":", label="p99 target")
        ax[0].legend(fontsize=8)
    ax[0].set_xlabel("image published -> command received [ms]")
    ax[0].set_ylabel("frames")
    ax[0].set_title(f"closed-loop latency ({data['commands_with_image_stamp']}/{data['camera_frames']} frames)")
    # hop breakdown: mean compute vs rest per hop
    names = ["perception", "world_model", "policy", "command_delivery"]
    hop = [data["hops_ms"][n]["hop"].get("mean", 0) for n in names]
    comp = [data["hops_ms"][n]["compute"].get("mean", 0) or 0 for n in names]
    rest = [max(0.0, h - c) for h, c in zip(hop, comp, strict=True)]
    y = np.arange(len(names))
    ax[1].barh(y, comp, color="tab:blue", label="compute")
    ax[1].barh(y, rest, left=comp, color="tab:gray", label="transport + executor + waiting for CPU")
    ax[1].set_yticks(y, ["image -> perception\n-> Observation", "-> world_model\n-> WorldState",
                         "-> policy\n-> cmd_vel", "cmd_vel delivery"])
    ax[1].invert_yaxis()
    ax[1].set_xlabel("mean ms per frame")
    ax[1].legend(fontsize=8, loc="lower right")
    sh = data["share"]
    ax[1].set_title(f"where the time goes: transport share {sh['transport_share_of_total_mean']}")
    # cmd_vel intervals
    t = np.sort(np.asarray(log.cmd_src, np.int64))
    t = t[(t >= t0_ns) & (t <= t1_ns)]
    if t.size > 1:
        gaps = np.diff(t) * 1e-6
        ax[2].hist(np.clip(gaps, 0, 150), bins=np.linspace(0, 150, 76), color="tab:green")
        ax[2].axvline(75, color="r", ls="--", label="1.5 control periods")
        ax[2].set_yscale("log")
        ax[2].legend(fontsize=8)
    c = data["control"]
    ax[2].set_xlabel("interval between cmd_vel publications [ms]")
    ax[2].set_title(f"cmd_vel {c.get('rate_hz')} Hz, {c['missed_ticks']} control ticks missed")
    la = data["load_average_before_start_end"][2]
    fig.suptitle(f"closed loop ({data['controller']}), {data['window_s']:.0f} s, 4 nodes + sim on "
                 f"{os.cpu_count()} cores, load average {la[0]:.1f}; RSS {data['rss_total_mb']:.0f} MB, "
                 f"CPU {data['cpu_cores_used_total']:.2f} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
