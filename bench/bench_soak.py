"""Soak: the whole stack with the fleet (aggregator + federated sync) under mixed load, for a long time.

    python bench/bench_soak.py --duration 1800        # the documented manual run (docs/robustness.md)
    sakura-nexus bench soak -- --duration 120          # the CI variant's length (test/e2e/test_soak.py)

The demo's pipeline (:class:`sakura_nexus.harness.pipeline.Pipeline`, its
:class:`~sakura_nexus.harness.supervisor.Supervisor`) runs sim, perception, world model, policy, federated
sync and the aggregator as separate processes. Then, for ``--duration`` seconds of wall time:

- garbage on every input (:mod:`sakura_nexus.ros.garbage`, its own process) at ``--garbage-rate``
  messages per second per topic, all the time;
- a fault cycle: a foreign ``/clock`` sample 1000 s ahead and one at 1 s (clock jumps forward and back
  for every node), ``kill -9`` and restart of each node in turn (sim_node's restart is a real ``/clock``
  restart from 0), and the aggregator (its whole process tree) down for ``--aggregator-down`` s and up
  again on the same port and store;
- after each fault: the time until world states flow again, then a goal 1-2.5 m away on a free straight
  line: the robot must reach it (wall-clock timeout ``--goal-timeout``);
- RSS of every process every 10 s.

At the end the garbage stops, the spool drains, and the run checks that every delta the robot spooled was
applied by the aggregator exactly once (spool ``appended`` == ``acked`` == aggregator ``accepted_deltas``
== the de-duplication table, nothing pending, nothing rejected). Writes ``out/bench/soak.json`` (+ a PNG).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import out_dir  # noqa: E402

NODES = ("perception_node", "world_model_node", "policy_node", "sim_node", "federated_sync_node")
FAULTS = ("clock_forward", "kill_perception_node", "clock_backward", "kill_world_model_node", "aggregator",
          "kill_policy_node", "kill_sim_node", "kill_federated_sync_node")


class Ledgers:
    """The ``input/<topic>`` ledgers of every node from /diagnostics, summed over process restarts (a
    restarted node starts from zero: the last ledger of the old process is kept)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.current: dict = {}   # node -> topic -> Counter-like dict of the running process
        self.closed: dict = {}    # node -> topic -> sums of the ledgers of processes that ended
        self.values: dict = {}    # node -> key -> last value (counters such as clock_jumps_*)
        self.restart_marks: dict = {}

    def on_diag(self, msg) -> None:
        with self.lock:
            for st in msg.status:
                node = st.hardware_id
                kv = {x.key: x.value for x in st.values}
                led = {k[6:]: json.loads(v) for k, v in kv.items() if k.startswith("input/")}
                cur = self.current.get(node, {})
                restarted = any(led.get(t, {}).get("received", 0) < c.get("received", 0) for t, c in cur.items())
                if restarted:
                    self._close(node)
                    self._close_values(node)
                self.current[node] = led
                self.values.setdefault(node, {})["_now"] = kv

    def snapshot(self) -> dict:
        """Every node's last diagnostic values except its input ledgers (recorded with each goal)."""
        with self.lock:
            return {n: {k: v for k, v in kv.get("_now", {}).items() if not k.startswith("input/")}
                    for n, kv in self.values.items()}

    def _close(self, node: str) -> None:
        tot = self.closed.setdefault(node, {})
        for topic, c in self.current.get(node, {}).items():
            t = tot.setdefault(topic, {})
            for k, v in c.items():
                t[k] = t.get(k, 0) + v
        self.current[node] = {}

    def _close_values(self, node: str) -> None:
        vals = self.values.setdefault(node, {})
        done = vals.setdefault("_closed", {})
        for k, v in vals.get("_now", {}).items():
            if k.startswith(("dropped_", "clock_jumps", "ignored_")):
                done[k] = done.get(k, 0) + int(v)
        vals["_now"] = {}

    def totals(self) -> dict:
        with self.lock:
            out = {}
            for node in set(self.current) | set(self.closed):
                agg: dict = {}
                for src in (self.closed.get(node, {}), self.current.get(node, {})):
                    for topic, c in src.items():
                        t = agg.setdefault(topic, {})
                        for k, v in c.items():
                            t[k] = t.get(k, 0) + v
                out[node] = agg
            return out

    def counter(self, node: str, prefix: str) -> int:
        with self.lock:
            vals = self.values.get(node, {})
            n = sum(v for k, v in vals.get("_closed", {}).items() if k.startswith(prefix))
            return n + sum(int(v) for k, v in vals.get("_now", {}).items() if k.startswith(prefix))


def slope_mb_per_min(samples: list, key: str | None, skip_s: float = 60.0) -> float | None:
    """Least-squares slope of RSS (MB/min) over the samples after the first ``skip_s`` seconds."""
    pts = [(t, (sum(v for v in r.values() if not math.isnan(v)) if key is None else r.get(key, math.nan)))
           for t, r in samples]
    pts = [(t, v) for t, v in pts if t >= skip_s and not math.isnan(v)]
    if len(pts) < 3:
        return None
    t, v = np.array(pts).T
    return round(float(np.polyfit(t / 60.0, v, 1)[0]), 3)


def segment_slopes(samples: list, restarts: list, min_len_s: float = 120.0) -> dict:
    """Per process: the RSS slope (MB/min) over its longest stretch without a restart (>= min_len_s,
    after 30 s of warm-up), so a restart's fresh process does not read as a drop or a leak."""
    out = {}
    names = {k for _, r in samples for k in r}
    for name in sorted(names):
        cuts = [0.0] + sorted(t for t, n in restarts if n == name) + [math.inf]
        best = None
        for a, b in zip(cuts, cuts[1:], strict=False):
            seg = [(t, r[name]) for t, r in samples if a + 30.0 <= t < b and not math.isnan(r.get(name, math.nan))]
            if len(seg) >= 3 and seg[-1][0] - seg[0][0] >= min_len_s and (best is None or len(seg) > len(best)):
                best = seg
        if best:
            t, v = np.array(best).T
            out[name] = {"slope_mb_per_min": round(float(np.polyfit(t / 60.0, v, 1)[0]), 3),
                         "from_s": round(float(t[0]), 1), "to_s": round(float(t[-1]), 1),
                         "rss_mb": [round(float(v[0]), 1), round(float(v[-1]), 1)]}
    return out


def run(args) -> dict:
    from rosgraph_msgs.msg import Clock

    from sakura_nexus import bringup
    from sakura_nexus.federated.common.flower_cli import wait_healthy
    from sakura_nexus.harness.goals import pick_goals
    from sakura_nexus.harness.pipeline import Pipeline
    from sakura_nexus.ros.garbage import TOPICS

    work = pathlib.Path(args.work or out_dir() / "soak_run").resolve()
    faults_wanted = args.faults or list(FAULTS)
    for f in faults_wanted:
        if f not in FAULTS:
            raise SystemExit(f"unknown fault {f!r}; known: {FAULTS}")
    result: dict = {"config": {k: v for k, v in vars(args).items()}, "faults": [], "goals": []}
    t_wall0 = time.time()
    pipe = Pipeline(work, seed=args.seed, controller=args.controller, fleet=True, startup_timeout=240.0, frames=False)
    with pipe:
        sup, m = pipe.sup, pipe.mission
        result["startup_s"] = round(pipe.startup_s, 1)
        ledgers = Ledgers()
        from diagnostic_msgs.msg import DiagnosticArray

        m.node.create_subscription(DiagnosticArray, "/diagnostics", ledgers.on_diag, 200)
        clock_pub = m.node.create_publisher(Clock, "/clock", 10)
        # policy_node's commands by DDS source time; the garbage on cmd_vel (all NaN / Inf / absurd) is not one
        from geometry_msgs.msg import Twist

        from sakura_nexus.ros.qos import state_qos

        commands: list = []

        def on_cmd(msg, info):
            if math.isfinite(msg.linear.x) and math.isfinite(msg.angular.z) and abs(msg.linear.x) < 10:
                commands.append(info["source_timestamp"])
                if len(commands) > 20000:
                    del commands[:10000]

        m.timing.create_subscription(Twist, "cmd_vel", on_cmd, state_qos(50))
        # world_model_node's world states likewise (the garbage's are stamped 0 or years ahead, or malformed)
        from sakura_nexus.msg import WorldState

        states: list = []

        def on_state(msg, info):
            t = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            if msg.header.frame_id == "odom" and 0.0 < t < 1e8 and msg.latent_dim == len(msg.latent) > 0 \
                    and math.isfinite(msg.pose_x) and math.isfinite(msg.pose_y):
                states.append(info["source_timestamp"])
                if len(states) > 20000:
                    del states[:10000]

        m.timing.create_subscription(WorldState, "world_state", on_state, state_qos(10))
        port = int(sup.commands["aggregator"][sup.commands["aggregator"].index("--port") + 1])
        gfile = work / "garbage.json"
        # the attacker is another host on the DDS domain: here it shares the robot's 2 cores, so it runs niced
        # (``--garbage-nice``) and what stays on the robot is the cost of receiving and refusing the garbage
        garbage = subprocess.Popen(["nice", "-n", str(args.garbage_nice), sys.executable, "-m",
                                    "sakura_nexus.ros.garbage", "--rate",
                                    str(args.garbage_rate), "--out", str(gfile), "--seed", str(args.seed)],
                                   env=pipe.env, stdout=open(work / "logs" / "garbage.log", "wb"),  # noqa: SIM115 - the child owns it
                                   stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.monotonic()
        rss: list = []
        restarts: list = []
        stop = threading.Event()

        def sample_rss():
            while not stop.is_set():
                rss.append((round(time.monotonic() - t0, 1), sup.rss_mb()))
                stop.wait(10.0)

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        time.sleep(2.0)  # discovery of the /clock publisher

        def flowing(n: int = 5, timeout: float = 120.0, sync: bool = False) -> float | None:
            """Seconds until ``n`` new world states and ``n`` new commands arrived (after a kill: from the new
            process), both goal subscribers are matched and (``sync``) a new sync status came."""
            # by DDS source time: samples of a killed process still queued here must not count
            start, t_ns, s0 = time.monotonic(), time.time_ns(), len(m.log.sync)

            def fresh(ts) -> int:
                return sum(1 for t in list(ts)[-200:] if t > t_ns)

            while time.monotonic() - start < timeout:
                if fresh(states) >= n and fresh(commands) >= n and m.goal_subscribers() >= 2 \
                        and m.pose is not None and (not sync or len(m.log.sync) > s0):
                    return round(time.monotonic() - start, 2)
                time.sleep(0.05)
            return None

        k_goal = [0]

        def drive_one() -> dict:
            k_goal[0] += 1
            pose = m.pose
            g = None
            for straight, max_dist in ((True, 2.5), (False, 3.0), (False, 6.0)):  # boxed in: any free goal
                try:
                    (g,), _ = pick_goals(args.seed, 1, start=pose, min_dist=1.0, max_dist=max_dist,
                                         rng_seed=1000 + k_goal[0], straight=straight)
                    break
                except RuntimeError as e:
                    err = str(e)
            if g is None:
                return {"reached": False, "error": err}
            m.send_goal(*g)
            start = time.monotonic()
            reached, resent = False, False
            trace, next_trace = [], 0.0  # (s, distance to the goal [m]) every 2 s: was it moving?
            while time.monotonic() - start < args.goal_timeout:
                el = time.monotonic() - start
                if not resent and el > 1.0:  # in case a just-restarted policy matched late
                    m.send_goal(*g)
                    resent = True
                d = math.hypot(g[0] - m.pose[0], g[1] - m.pose[1]) if m.pose else math.nan
                if el >= next_trace:
                    trace.append((round(el, 1), round(d, 2)))
                    next_trace += 2.0
                if d <= 0.3:
                    reached = True
                    break
                if sup.dead():
                    break
                time.sleep(0.1)
            rec = {"goal": [round(v, 2) for v in g], "start": [round(v, 2) for v in pose], "reached": reached,
                   "time_s": round(time.monotonic() - start, 2), "distance_trace": trace}
            snap = ledgers.snapshot()
            # how often the safety layer's limits acted so far (cumulative per policy process)
            rec["policy_safety"] = {k: v for k, v in snap.get("policy_node", {}).items()
                                    if k.startswith(("safety", "state_age"))}
            if not reached:  # what the nodes said at the timeout (the ledgers aside)
                rec["diagnostics_at_timeout"] = snap
            result["goals"].append(rec)
            return rec

        drive_one()  # before any fault
        i = 0
        while time.monotonic() - t0 < args.duration:
            fault = faults_wanted[i % len(faults_wanted)]
            i += 1
            rec = {"fault": fault, "t_s": round(time.monotonic() - t0, 1)}
            sim_now = m.now()
            if fault in ("clock_forward", "clock_backward"):
                # a foreign /clock for 0.3 s (the sim's own keeps coming at 200 Hz in between: every node
                # sees its clock jump back and forth); one sample alone would be overwritten unseen
                bad = _time(sim_now + 1000.0 if fault == "clock_forward" else 1.0)
                for _ in range(30):
                    clock_pub.publish(Clock(clock=bad))
                    time.sleep(0.01)
            elif fault.startswith("kill_"):
                name = fault[5:]
                sup.kill9(name)
                time.sleep(1.0)
                sup.restart(name)
                restarts.append((round(time.monotonic() - t0, 1), name))
            elif fault == "aggregator":
                sup.kill9("aggregator", tree=True)
                time.sleep(args.aggregator_down)  # deltas keep being spooled meanwhile
                sup.restart("aggregator")
                restarts.append((round(time.monotonic() - t0, 1), "aggregator"))
                rec["aggregator_healthy"] = bool(wait_healthy("127.0.0.1", port, 120, proc=sup.procs["aggregator"]))
            rec["recovered_s"] = flowing(sync=fault == "kill_federated_sync_node")
            rec["dead"] = sup.dead()
            rec["goal"] = drive_one() if rec["recovered_s"] is not None else {"reached": False}
            result["faults"].append(rec)
            print(f"[soak {time.monotonic() - t0:6.0f} s] {fault}: world states again after "
                  f"{rec['recovered_s']} s, goal {'reached' if rec['goal']['reached'] else 'NOT reached'} "
                  f"in {rec['goal'].get('time_s')} s", flush=True)
        soak_s = time.monotonic() - t0
        rss.append((round(soak_s, 1), sup.rss_mb()))
        garbage.send_signal(2)
        garbage.wait(30)
        result["alive_at_end"] = {n: sup.procs[n].poll() is None for n in sup.procs}
        # drain: no new deltas (world_model_node stopped cleanly, it checkpoints), the aggregator is up;
        # every spooled delta must reach it
        stop.set()
        wm = sup.procs["world_model_node"]
        wm.send_signal(2)
        wm.wait(30)
        spool_dir = work / "state" / "spool"
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline and _spool(spool_dir)["pending"] > 0:
            time.sleep(1.0)
        time.sleep(3.0)  # a last diagnostics period
        totals = ledgers.totals()
        clock_jumps = {n: {"backward": ledgers.counter(n, "clock_jumps_backward"),
                           "forward": ledgers.counter(n, "clock_jumps_forward")} for n in NODES}
    garbage_counts = json.loads(gfile.read_text())["published"] if gfile.exists() else {}
    spool = _spool(work / "state" / "spool")
    agg = _aggregator_state(work / "state" / "aggregator")
    robot = next(iter(agg.get("seen", {})), None)
    seen_n = sum(b - a + 1 for a, b in agg.get("seen", {}).get(robot, [])) if robot else 0
    c = agg.get("counters", {})
    rejected = sum(v for k, v in c.items() if k.startswith("rejected"))
    deltas = {"spooled": spool["appended"], "acked": spool["acked"], "pending": spool["pending"],
              "spool_duplicates_refused": spool["duplicates"], "aggregator_accepted": c.get("accepted_deltas", 0),
              "aggregator_duplicates_refused": c.get("duplicates", 0), "aggregator_rejected": rejected,
              "aggregator_seen": seen_n, "aggregator_version": agg.get("version")}
    deltas["exactly_once"] = bool(deltas["spooled"] > 0 and deltas["pending"] == 0 and rejected == 0
                                  and deltas["spooled"] == deltas["acked"] == deltas["aggregator_accepted"] == seen_n)
    balance = {}
    for node, topics in totals.items():
        for topic, led in topics.items():
            outcomes = sum(v for k, v in led.items() if k != "received")
            balance.setdefault(node, {})[topic] = {"received": led.get("received", 0), "in_flight_or_lost":
                                                   led.get("received", 0) - outcomes,
                                                   "dropped": sum(v for k, v in led.items() if k not in (
                                                       "received", "accepted", "ignored"))}
    fault_goals = [f["goal"]["reached"] for f in result["faults"]]
    result.update({
        "duration_s": round(soak_s, 1),
        "wall_time_s": round(time.time() - t_wall0, 1),
        "messages_injected": int(sum(garbage_counts.values())),
        "messages_injected_per_topic": garbage_counts,
        "garbage_rate_per_topic_hz": round(min(garbage_counts.values()) / soak_s, 1) if garbage_counts else 0,
        "topics": list(TOPICS),
        "faults_injected": len(result["faults"]),
        "faults_by_kind": {f: sum(1 for x in result["faults"] if x["fault"] == f) for f in faults_wanted},
        "goals_after_faults_reached": f"{sum(fault_goals)}/{len(fault_goals)}",
        "recovered_s_max": max((f["recovered_s"] for f in result["faults"] if f["recovered_s"] is not None),
                               default=None),
        "deltas": deltas,
        "clock_jumps_counted": clock_jumps,
        "ledgers": totals,
        "ledger_balance": balance,
        "rss_samples": rss,
        "restarts": restarts,
        "rss_total_mb": {"start": _total(rss[0][1]) if rss else None, "end": _total(rss[-1][1]) if rss else None,
                         "slope_mb_per_min": slope_mb_per_min(rss, None)},
        "rss_per_process": segment_slopes(rss, restarts),
        "exit_codes": pipe.exit_codes,
        "load_average": [round(v, 2) for v in os.getloadavg()],
    })
    result["ok"] = bool(all(fault_goals) and deltas["exactly_once"] and all(result["alive_at_end"].values())
                        and all(b["in_flight_or_lost"] <= 2 for t in balance.values() for b in t.values()))
    _ = bringup  # the node set the pipeline starts (sakura_nexus.bringup) is the launch files' one
    return result


def _total(r: dict) -> float:
    return round(sum(v for v in r.values() if not math.isnan(v)), 1)


def _time(t: float):
    from builtin_interfaces.msg import Time

    ns = int(t * 1e9)
    return Time(sec=ns // 10**9, nanosec=ns % 10**9)


def _spool(d: pathlib.Path) -> dict:
    from sakura_nexus.federated.robot.spool import DB_NAME, Spool

    st = Spool(str(d)).stats() if (d / DB_NAME).exists() else {}
    return {"appended": st.get("appended", 0), "acked": st.get("acked", 0), "duplicates": st.get("duplicates", 0),
            "pending": st.get("pending", 0)}


def _aggregator_state(d: pathlib.Path) -> dict:
    from sakura_nexus.federated.fleet.aggregator import STORE_DB, GlobalModelStore

    for path in sorted(glob.glob(str(d / "**" / STORE_DB), recursive=True)):
        st = GlobalModelStore(os.path.dirname(path)).load_state()
        if st is not None:
            return st
    return {}


def plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    rss = result["rss_samples"]
    names = sorted({k for _, r in rss for k in r})
    for n in names:
        ax.plot([t / 60 for t, _ in rss], [r.get(n, math.nan) for _, r in rss], label=n, lw=1.2)
    for f in result["faults"]:
        ax.axvline(f["t_s"] / 60, color="0.7", lw=0.6, ls=":")
    ax.set_xlabel("soak time [min] (dotted: faults)")
    ax.set_ylabel("RSS [MB]")
    ax.set_title(f"soak {result['duration_s'] / 60:.1f} min: {result['messages_injected']} garbage messages, "
                 f"{result['faults_injected']} faults, goals after faults {result['goals_after_faults_reached']}, "
                 f"deltas {result['deltas']['spooled']} spooled / {result['deltas']['aggregator_accepted']} applied",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of soak (after start-up)")
    ap.add_argument("--garbage-rate", type=float, default=100.0, help="garbage messages per second per input topic")
    ap.add_argument("--garbage-nice", type=int, default=10,
                    help="nice level of the garbage process (another host on the network, here on the same cores)")
    ap.add_argument("--faults", nargs="*", default=None, help=f"the fault cycle (default: {' '.join(FAULTS)})")
    ap.add_argument("--aggregator-down", type=float, default=15.0, help="seconds the aggregator stays down")
    ap.add_argument("--goal-timeout", type=float, default=40.0, help="wall seconds to reach a goal after a fault")
    ap.add_argument("--drain-timeout", type=float, default=90.0, help="wall seconds for the spool to drain")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--controller", default="learned_mpc", help="policy_node controller (the default's)")
    ap.add_argument("--work", default="", help="run directory (logs, state); default out/bench/soak_run")
    ap.add_argument("--out", default="", help="JSON result; default out/bench/soak.json")
    args = ap.parse_args(argv)
    result = run(args)
    out = pathlib.Path(args.out or out_dir() / "soak.json")
    out.write_text(json.dumps(result, indent=1))
    try:
        plot(result, out.with_suffix(".png"))
    except Exception as e:  # noqa: BLE001 - the JSON is the result
        print(f"plot failed: {e!r}")
    keys = ("duration_s", "messages_injected", "garbage_rate_per_topic_hz", "faults_injected",
            "goals_after_faults_reached", "recovered_s_max", "deltas", "rss_total_mb", "alive_at_end", "ok")
    print(json.dumps({k: result[k] for k in keys}, indent=1))
    print(f"wrote {out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
