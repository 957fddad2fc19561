"""`sakura-nexus demo`: the MuJoCo factory cell and the sakura_nexus nodes as separate processes, driven
through a sequence of goals, with a progress display and a report (PNG + JSON). The harness it runs is
described in :mod:`sakura_nexus.harness`."""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

from sakura_nexus.harness.goals import pick_goals
from sakura_nexus.harness.mission import Mission, drive
from sakura_nexus.harness.pipeline import COMPOSED_DEFAULT, Pipeline, models_missing
from sakura_nexus.harness.report import summarise, write_report, write_summary
from sakura_nexus.harness.supervisor import cpu_cores
from sakura_nexus.params import POLICY


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sakura-nexus demo", description=__doc__.splitlines()[0])
    ap.add_argument("--goals", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="factory layout seed")
    ap.add_argument("--goal-timeout", type=float, default=45.0, help="sim seconds per goal")
    ap.add_argument("--out", default="out/demo", help="report directory")
    # Default: the world-model MPC (with the cell map sim_node publishes) drives; go_to_goal is the baseline
    # that ignores the model (it hits obstacles that block the straight line, hence --straight by default).
    ap.add_argument("--controller", default=POLICY["controller"].default, choices=POLICY["controller"].choices,
                    help=POLICY["controller"].description)
    ap.add_argument("--straight", action=argparse.BooleanOptionalAction, default=None,
                    help="only goals reachable on an obstacle-free straight line (default: with go_to_goal)")
    ap.add_argument("--fleet", action="store_true",
                    help="also run the fleet aggregator (Flower) and federated_sync_node (adds ~1 min of start-up)")
    ap.add_argument("--composed", action=argparse.BooleanOptionalAction, default=COMPOSED_DEFAULT,
                    help="perception, world_model and policy as separate nodes in one process (nexus_container)")
    ap.add_argument("--stack-cpus", default=None, metavar="LIST",
                    help="run the robot stack under `taskset -c LIST` (e.g. 0: the stack on one core)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--record", action="store_true",
                    help="write an MCAP bag of the run to OUT/bag (camera as JPEG; for `sakura-nexus train --bag`)")
    args = ap.parse_args(argv)

    reason = models_missing()
    if reason:
        print(f"sakura_nexus demo: {reason}", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out).resolve()
    fleet = args.fleet and _fleet_available()
    straight = args.controller == "go_to_goal" if args.straight is None else args.straight
    try:
        goals, layout = pick_goals(args.seed, args.goals, straight=straight)
    except RuntimeError as e:
        print(f"sakura_nexus demo: {e}", file=sys.stderr)
        return 2
    pipe = Pipeline(out, seed=args.seed, controller=args.controller, fleet=fleet, composed=args.composed,
                    stack_cpus=args.stack_cpus)
    print(f"sakura_nexus demo: factory seed {args.seed}, {args.goals} goals, controller {args.controller}"
          f"{', with fleet sync' if fleet else ''}; ROS_DOMAIN_ID {pipe.env['ROS_DOMAIN_ID']}; "
          f"logs in {out / 'logs'}", flush=True)
    t_wall = time.monotonic()
    with pipe:
        print(f"pipeline up after {pipe.startup_s:.1f} s: driving", flush=True)
        recorder = _start_recorder(out / "bag") if args.record else None
        cpu0, t_cpu0 = pipe.sup.cpu_s(), time.monotonic()
        try:
            drive(pipe.mission, goals, args.goal_timeout, tolerance=0.3, progress=not args.quiet,
                  supervisor=pipe.sup)
        finally:
            recorded = recorder.close() if recorder else None
        cpu = cpu_cores(cpu0, pipe.sup.cpu_s(), time.monotonic() - t_cpu0)
        pipe.mission.hold()
        if fleet:
            _wait_for_global_model(pipe.mission, timeout=120.0)
        time.sleep(1.0)
        rss = pipe.sup.rss_mb()
    log = pipe.mission.log
    summary = summarise(log, {"seed": args.seed, "controller": args.controller, "straight_goals": straight,
                              "startup_s": round(pipe.startup_s, 1),
                              "wall_time_s": round(time.monotonic() - t_wall, 1), "rss_mb": rss,
                              "rss_total_mb": round(sum(rss.values()), 1), "exit_codes": pipe.exit_codes,
                              "composed": args.composed, "stack_cpus": args.stack_cpus,
                              "cpu_cores_while_driving": cpu,
                              "load_average": [round(v, 2) for v in os.getloadavg()]})
    summary_path = write_summary(out, summary)
    png = write_report(out, log, layout, summary)
    print()
    print(f"goals reached      : {summary['goals_reached']}/{summary['goals']}")
    print(f"collisions         : {summary['collisions']}")
    lat = summary["latency_ms"]
    print(f"latency image->cmd : p50 {lat['p50']} ms, p99 {lat['p99']} ms ({lat['n']} commands)")
    c = summary["control"]
    print(f"cmd_vel            : {c.get('rate_hz')} Hz, {c['missed_ticks']} control ticks missed")
    print(f"memory (RSS)       : {summary['rss_total_mb']:.0f} MB in {len(rss)} processes")
    print(f"CPU while driving  : robot stack {cpu['robot_stack']:.3f} cores"
          + (f", robot-side sync {cpu['robot_sync']:.3f} cores" if "robot_sync" in cpu else "")
          + f" ({'composed' if args.composed else 'separate processes'})")
    if "federated" in summary:
        f = summary["federated"]
        print(f"global model       : v{f['global_version_start']} -> v{f['global_version_end']}, "
              f"{f['bytes_sent_upstream']} bytes sent upstream")
    if recorded is not None:
        print(f"bag                : {out / 'bag'} ({', '.join(f'{t} {n}' for t, n in sorted(recorded.items()))})")
    print(f"report             : {png}")
    print(f"summary            : {summary_path}")
    return 0 if summary["goals_reached"] > 0 and summary["collisions"] == 0 else 1


def _start_recorder(path: pathlib.Path):
    import shutil

    from sakura_nexus.ros.bag_recorder import Recorder

    shutil.rmtree(path, ignore_errors=True)  # the rosbags writer refuses an existing bag directory
    return Recorder(path)


def _fleet_available() -> bool:
    try:
        import flwr  # noqa: F401

        from sakura_nexus.nodes import federated_sync  # noqa: F401
    except ImportError:
        return False
    return True


def _wait_for_global_model(mission: Mission, timeout: float) -> None:
    """Fleet mode: keep the robot idle (still learning) until the aggregator sent back a newer global model."""
    sync = mission.log.sync
    start = sync[0][1] if sync else 0
    print(f"waiting up to {timeout:.0f} s for a new global model from the aggregator (now v{start}) ...", flush=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sync and sync[-1][1] > start:
            print(f"global model v{sync[-1][1]} received ({sync[-1][2]} bytes sent upstream so far)", flush=True)
            return
        time.sleep(1.0)
    print("no new global model within the wait (see logs/aggregator.log)", flush=True)

