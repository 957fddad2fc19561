"""Robot-side cost of federated sync per exchange: Flower's own ``flwr-clientapp`` vs the light one.

One aggregator (SuperLink + the FedBuff ServerApp, ``sakura-nexus aggregator``) and one robot SuperNode
on loopback, the robot's spool with a delta queued now and then (as world_model_node's deltas are),
for ``--seconds`` per variant. Every exchange is one ClientApp process the SuperNode's SuperExec
starts; the bench polls the SuperNode's process tree every 20 ms and takes each ClientApp process'
user + system CPU time as last seen before it exits (a lower bound by at most one poll interval),
plus the SuperNode and SuperExec themselves. With the light variant an exchange is the launcher
(``flwr-clientapp`` on the SuperNode's PATH) plus the child the warm ClientApp server forks for it;
the server is the supervisor's child next to the SuperNode, so its tree is polled too, and its
start-up (the imports, once) is added to the total; the steady state (without the server and the
costliest launcher) is reported beside it, with how many launchers took the warm and the cold path
(``$FLWR_HOME/clientapp.log``).
Reported: CPU-seconds per exchange, exchanges per minute, and the robot-side sync cores.
Target (issue 19): <= 0.3 CPU-s per exchange.

    python -m sakura_nexus bench sync_cost [--seconds 60] [--variants flower,light]
Writes out/bench/sync_cost.json and sync_cost.png.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

TARGET_CPU_S = 0.3


def _ticks(pid: int) -> tuple[int, str, int] | None:
    """(utime + stime ticks, command line, parent pid) of ``pid``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        return int(fields[11]) + int(fields[12]), cmd, int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def measure(variant: str, seconds: float, sync_interval: float, delta_every: float) -> dict:
    from sakura_nexus.federated.common.flower_cli import free_port, wait_healthy
    from sakura_nexus.federated.fleet.superlink import aggregator_command
    from sakura_nexus.federated.robot.spool import Spool
    from sakura_nexus.federated.robot.supernode import SuperNodeSupervisor
    from sakura_nexus.process import descendants, kill_tree

    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"sync_cost_{variant}_"))
    port = free_port()
    import subprocess

    agg_log = open(tmp / "aggregator.log", "wb")  # noqa: SIM115
    agg = subprocess.Popen(aggregator_command(str(tmp / "agg"), port=port, init_world_model="shipped", buffer_size=1,
                                              sync_interval=sync_interval), stdout=agg_log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    tick = os.sysconf("SC_CLK_TCK")
    spool = Spool(str(tmp / "spool"))
    sn = SuperNodeSupervisor(f"127.0.0.1:{port}", str(tmp / "spool"), "robot1", light_clientapp=(variant == "light"))
    apps: dict[int, int] = {}          # clientapp pid -> last seen CPU ticks
    infra: dict[int, int] = {}         # supernode / superexec pid -> last seen CPU ticks
    infra_cmd: dict[int, str] = {}
    served: dict[tuple[int, str], int] = {}    # light: (pid, role) -> ticks of the warm server's tree
    try:
        if not wait_healthy("127.0.0.1", port, 120, proc=agg):
            raise RuntimeError(f"aggregator not healthy; see {tmp / 'aggregator.log'}")
        sn.start()
        t_end = time.monotonic() + seconds
        next_delta = time.monotonic()
        seq = spool.next_sequence("robot1")
        payload = _delta_payload()
        t0 = time.monotonic()
        while time.monotonic() < t_end:
            if time.monotonic() >= next_delta:
                spool.append("robot1", seq, payload, base_version=0, sample_count=32)
                seq += 1
                next_delta += delta_every
            for pid in [sn.proc.pid, *descendants(sn.proc.pid)]:
                got = _ticks(pid)
                if got is None:
                    continue
                ticks, cmd, _ = got
                # one launcher / ClientApp process per exchange; a zombie's cmdline is empty, so a pid once
                # seen as a ClientApp stays one (its final ticks went into "infra" before: counted twice)
                if "flwr-clientapp" in cmd or pid in apps:
                    apps[pid] = ticks
                else:
                    infra[pid] = ticks
                    infra_cmd.setdefault(pid, cmd[:120])
            # light: the warm server is the supervisor's child (next to the SuperNode), its forks below it
            srv = sn.clientapp_server
            if srv is not None:
                for pid in [srv.pid, *descendants(srv.pid)]:
                    got = _ticks(pid)
                    if got is not None:     # the server, an exchange it forked, or what an exchange ran
                        role = "server" if pid == srv.pid else "exchange" if got[2] == srv.pid else "sub"
                        served[(pid, role)] = got[0]
            time.sleep(0.02)
        wall = time.monotonic() - t0
    finally:
        sn.stop()
        kill_tree(agg.pid)
        agg.wait()
        agg_log.close()
    per = np.array(list(apps.values()), float) / tick
    launcher_cpu = float(per.sum())
    # the warm server's processes: the server itself (its start-up: imports) and one forked child per exchange
    # (Flower's ClientApp code runs `file` and `uname -p` for its telemetry context, even when telemetry is
    # off: those are "sub" processes, added to the exchanges' total)
    server_cpu = sum(t for (_, role), t in served.items() if role == "server") / tick
    forked = [t / tick for (_, role), t in served.items() if role == "exchange"]
    forked_cpu = float(sum(forked)) + sum(t for (_, role), t in served.items() if role == "sub") / tick
    log = tmp / "spool" / "flwr-home" / "clientapp.log"
    paths = {"warm": 0, "cold": 0}
    if log.exists():
        for line in log.read_text().splitlines():
            ev = json.loads(line).get("event", "")
            if ev in ("launcher_warm", "launcher_cold"):
                paths[ev.split("_")[1]] += 1
    st = spool.stats()
    # completed exchanges = the syncs the robot's ClientApp recorded in the spool (handle_sync); a
    # ClientApp process that failed or was retried is CPU spent, not an exchange
    exchanges = int(st.get("syncs", 0))
    total = launcher_cpu + forked_cpu + server_cpu
    return {"variant": variant, "window_s": round(wall, 1), "exchanges": exchanges,
            "exchanges_per_min": round(exchanges / wall * 60, 1),
            # all ClientApp CPU (launchers + forked exchanges + the warm server's start-up) / exchanges
            "cpu_s_per_exchange": {"mean": round(total / exchanges, 3) if exchanges else None,
                                   "launcher_p50": round(float(np.median(per)), 3) if exchanges else None,
                                   "launcher_max": round(float(per.max()), 3) if exchanges else None,
                                   "forked_mean": round(forked_cpu / max(len(forked), 1), 3),
                                   "forked_p50": round(float(np.median(forked)), 3) if forked else None},
            "clientapp_processes": int(per.size), "warm_server_cpu_s": round(server_cpu, 3),
            "forked_exchanges": len(forked), "launcher_paths": paths,
            # without the server's start-up and the costliest launcher (a cold one while the server imports)
            "steady_cpu_s_per_exchange": round((launcher_cpu - float(per.max()) + forked_cpu) /
                                               max(exchanges - 1, 1), 3) if exchanges > 1 else None,
            "clientapp_cores": round(total / wall, 3),
            "supernode_superexec_cores": round(sum(infra.values()) / tick / wall, 3),
            "infra_processes": sorted(([infra_cmd.get(p, ""), round(t / tick, 2)] for p, t in infra.items()),
                                      key=lambda x: -x[1])[:6],
            "spool_stats": st, "logs": str(tmp)}


def _delta_payload() -> bytes:
    """A delta of the shipped world model's size in the robot's upstream codec."""
    from sakura_nexus.federated.common.codecs import encode
    from sakura_nexus.models.checkpoint import load_checkpoint

    n = load_checkpoint(None).world_model.num_parameters()
    rng = np.random.default_rng(0)
    return encode(rng.normal(0, 1e-3, n).astype(np.float32), "topk0.015+q8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--variants", default="flower,light")
    ap.add_argument("--sync-interval", type=float, default=2.0, help="aggregator's pause between exchanges (the "
                                                                      "demo's --fleet setting)")
    ap.add_argument("--delta-every", type=float, default=3.0, help="seconds between queued deltas (demo: 3 s)")
    ap.add_argument("--name", default="sync_cost")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()
    res = {}
    for v in args.variants.split(","):
        print(f"sync cost: {v} ...", flush=True)
        res[v] = measure(v, args.seconds, args.sync_interval, args.delta_every)
        r = res[v]
        print(f"  {r['exchanges']} exchanges ({r['exchanges_per_min']}/min), CPU-s per exchange "
              f"{r['cpu_s_per_exchange']}, ClientApps {r['clientapp_cores']} cores, SuperNode + SuperExec "
              f"{r['supernode_superexec_cores']} cores", flush=True)
    data = {"what": "robot-side CPU per federated exchange (ClientApp process per message), loopback",
            "variants": res, "target_cpu_s_per_exchange": TARGET_CPU_S,
            "load_average_start_end": [[round(x, 2) for x in load0], [round(x, 2) for x in os.getloadavg()]],
            "met": {v: (r["cpu_s_per_exchange"]["mean"] or 1e9) <= TARGET_CPU_S for v, r in res.items()}}
    common.write(args.name, data)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(res)
    ax.bar(names, [res[n]["cpu_s_per_exchange"]["mean"] or 0 for n in names],
           color=["tab:gray", "tab:green"][:len(names)])
    ax.axhline(TARGET_CPU_S, color="r", ls="--", label="target 0.3 CPU-s")
    ax.set_ylabel("CPU-seconds per exchange (ClientApp process)")
    ax.set_title("robot-side sync cost per exchange")
    ax.legend()
    fig.tight_layout()
    fig.savefig(common.out_dir() / f"{args.name}.png", dpi=100)
    plt.close(fig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
