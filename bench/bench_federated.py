"""Federated sync benchmark: codec bytes/time/error, aggregator and spool throughput, Flower process RSS.

- codecs: a realistic 200k-parameter delta (layer-wise scales, heavy tails); bytes per update, encode /
  decode ms (p50), relative L2 error of one update and of the running sum after 20 updates with
  error feedback;
- aggregator: ``FedBuffAggregator.submit_payload`` updates/s (K=4) in memory (mean, median, DP) and
  persisted with fsync (what the ServerApp does);
- spool: durable appends/s (fsync) for dense and top-k+q8 payloads;
- flower: SuperLink + ServerApp ("aggregator") and SuperNode RSS with a 200k model and 2 robots on
  loopback, peak RSS of the short-lived ClientApp process, and spool-to-accepted latency.

Writes JSON (default out/bench/federated.json) and a PNG next to it.

    python bench/bench_federated.py [OUT.json] [--params 200000] [--no-flower]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy: BLAS threads only add contention here

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

CODECS = ["dense", "f16", "q8", "q8s", "topk0.1", "topk0.01", "topk0.1+q8", "topk0.01+q8", "topk0.001+q8"]


def realistic_delta(n: int, rng: np.random.Generator) -> np.ndarray:
    """Concatenated 'layers' of different scales, Student-t tails (what SGD deltas look like)."""
    out, left = [], n
    while left > 0:
        m = min(left, int(rng.integers(500, 40_000)))
        out.append(rng.standard_t(3, size=m) * 10 ** rng.uniform(-4.5, -2.5))
        left -= m
    return np.concatenate(out).astype(np.float32)


def timed(fn, reps: int) -> list[float]:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return ts


def bench_codecs(n: int, reps: int) -> dict:
    from sakura_nexus.federated.common.codecs import ErrorFeedback, decode, encode

    rng = np.random.default_rng(0)
    x = realistic_delta(n, rng)
    res = {}
    for c in CODECS:
        p = encode(x, c, rng=rng)
        enc = timed(lambda c=c: encode(x, c, rng=rng), reps)
        dec = timed(lambda p=p: decode(p), reps)
        err = float(np.linalg.norm(decode(p) - x) / np.linalg.norm(x))
        ef = ErrorFeedback(c, n, seed=1)
        true_sum = np.zeros(n)
        sent_sum = np.zeros(n)
        for _ in range(20):
            d = realistic_delta(n, rng)
            true_sum += d
            sent_sum += decode(ef.encode(d))
        res[c] = {"bytes": len(p), "ratio_vs_dense": len(p) / (4 * n + 62),
                  "encode_ms": common.pct(enc, 50) * 1e3, "decode_ms": common.pct(dec, 50) * 1e3,
                  "rel_l2_error_single": err,
                  "rel_l2_error_sum20_with_error_feedback": float(np.linalg.norm(sent_sum - true_sum)
                                                                  / np.linalg.norm(true_sum))}
    return res


def bench_aggregator(n: int, updates: int) -> dict:
    from sakura_nexus.federated.common.codecs import encode
    from sakura_nexus.federated.fleet.aggregator import FedBuffAggregator, FedBuffConfig

    rng = np.random.default_rng(1)
    payloads = {c: [encode(realistic_delta(n, rng), c) for _ in range(8)] for c in ("dense", "topk0.01+q8")}
    out = {}
    setups = {
        "memory_mean_dense": (FedBuffConfig(buffer_size=4), None, "dense"),
        "memory_median_dense": (FedBuffConfig(buffer_size=4, robust="median", clip_norm=1.0), None, "dense"),
        "memory_dp_dense": (FedBuffConfig(buffer_size=4, clip_norm=1.0, dp_noise_multiplier=1.0), None,
                            "dense"),
        "memory_mean_topk0.01+q8": (FedBuffConfig(buffer_size=4), None, "topk0.01+q8"),
        "persisted_fsync_mean_dense": (FedBuffConfig(buffer_size=4), "store", "dense"),
        "persisted_fsync_mean_topk0.01+q8": (FedBuffConfig(buffer_size=4), "store", "topk0.01+q8"),
    }
    for name, (cfg, store, codec) in setups.items():
        tmp = tempfile.mkdtemp(prefix="bench_agg_") if store else None
        agg = FedBuffAggregator(np.zeros(n, np.float32), cfg, store_dir=tmp)
        k = updates if not store else max(8, updates // 4)
        t = time.perf_counter()
        for i in range(k):
            r = agg.submit_payload(payloads[codec][i % 8], agg.version, f"r{i % 4}", i // 4 + 1)
            assert r.accepted, r
        dt = time.perf_counter() - t
        out[name] = {"updates_per_s": k / dt, "ms_per_update": dt / k * 1e3, "updates": k,
                     "versions": agg.version}
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def bench_spool(n: int, appends: int) -> dict:
    from sakura_nexus.federated.common.codecs import encode
    from sakura_nexus.federated.robot.spool import Spool

    rng = np.random.default_rng(2)
    out = {}
    for codec in ("dense", "topk0.01+q8"):
        tmp = tempfile.mkdtemp(prefix="bench_spool_")
        sp = Spool(tmp)
        p = encode(realistic_delta(n, rng), codec)
        t = time.perf_counter()
        for s in range(1, appends + 1):
            sp.append("r1", s, p, base_version=0, l2_norm=1.0)
        dt = time.perf_counter() - t
        t = time.perf_counter()
        sp.ack([("r1", s) for s in range(1, appends + 1)])
        out[codec] = {"appends_per_s": appends / dt, "ms_per_append": dt / appends * 1e3,
                      "ack_all_ms": (time.perf_counter() - t) * 1e3, "payload_bytes": len(p)}
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    kids.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def _tree(pid: int) -> dict[int, str]:
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[p] = cmd
        todo += _children(p)
    return out


def _role(cmd: str) -> str:
    for r in ("flwr-serverapp", "flwr-clientapp", "flower-superexec", "flower-superlink", "flower-supernode"):
        if r in cmd:
            return r
    return "other"


def bench_flower(n: int) -> dict:
    from sakura_nexus.federated.common.codecs import encode
    from sakura_nexus.federated.common.flower_cli import flower_env, free_port
    from sakura_nexus.federated.fleet.superlink import AggregatorProcess
    from sakura_nexus.federated.robot.spool import Spool
    from sakura_nexus.federated.robot.supernode import supernode_command

    tmp = tempfile.mkdtemp(prefix="bench_flwr_")
    rng = np.random.default_rng(3)
    agg = AggregatorProcess(store_dir=os.path.join(tmp, "agg"), port=free_port(),
                            run_config={"model-size": n, "buffer-size": 2, "sync-interval-s": 1.0})
    spools = {r: Spool(os.path.join(tmp, r)) for r in ("r1", "r2")}
    nodes = []
    peak: dict[str, float] = {}
    t_start = time.perf_counter()
    try:
        for r, sp in spools.items():
            env = flower_env(os.path.join(sp.dir, "flwr-home"))
            cmd = supernode_command(agg.address, sp.dir, robot_id=r, port=free_port())
            nodes.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        agg.start()
        startup_s = time.perf_counter() - t_start

        def sample():
            for root in [agg.proc.pid] + [p.pid for p in nodes]:
                for pid, cmd in _tree(root).items():
                    role = _role(cmd)
                    peak[role] = max(peak.get(role, 0.0), common.rss_mb(pid))

        latencies = []
        seq = 0
        for _ in range(3):  # three sync rounds of one 200k dense delta per robot
            seq += 1
            base = (agg.status() or {}).get("version", 0)
            t = time.perf_counter()
            for r, sp in spools.items():
                sp.append(r, seq, encode(realistic_delta(n, rng) * 0.0, "dense"), base_version=base)
            while any(sp.pending() for sp in spools.values()) and time.perf_counter() - t < 120:
                sample()
                time.sleep(0.2)
            latencies.append(time.perf_counter() - t)
        sample()
        steady = {}
        roots = [(agg.proc.pid, "aggregator")] + [(p.pid, f"supernode_{i}") for i, p in enumerate(nodes)]
        for root, name in roots:
            tree = _tree(root)
            steady[name] = {"total_mb": sum(common.rss_mb(p) for p in tree),
                            "processes": {f"{_role(c)}[{p}]": common.rss_mb(p) for p, c in tree.items()}}
        st = agg.status() or {}
        return {"params": n, "startup_s": startup_s, "spool_to_acked_s": latencies,
                "steady_rss_mb": steady, "peak_rss_mb_by_role": peak, "version": st.get("version"),
                "counters": st.get("counters"), "loop": st.get("loop")}
    finally:
        for p in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        agg.stop()
        for p in nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def plot(data: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 3, figsize=(15, 4.2))
    c = data["codecs"]
    names = list(c)
    axs[0].bar(names, [c[k]["bytes"] / 1024 for k in names], color="tab:blue")
    axs[0].set_yscale("log")
    axs[0].set_ylabel(f"KiB per update ({data['params']} params)")
    axs[0].tick_params(axis="x", rotation=60, labelsize=7)
    x = np.arange(len(names))
    axs[1].bar(x - 0.2, [c[k]["encode_ms"] for k in names], 0.4, label="encode")
    axs[1].bar(x + 0.2, [c[k]["decode_ms"] for k in names], 0.4, label="decode")
    axs[1].set_xticks(x, names, rotation=60, fontsize=7)
    axs[1].set_ylabel("ms (p50)")
    axs[1].legend()
    a = data["aggregator"]
    axs[2].barh(list(a), [v["updates_per_s"] for v in a.values()], color="tab:green")
    axs[2].set_xlabel("aggregator updates / s")
    axs[2].tick_params(axis="y", labelsize=7)
    fig.suptitle("sakura_nexus federated sync")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=str(common.out_dir() / "federated.json"))
    ap.add_argument("--params", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--updates", type=int, default=200)
    ap.add_argument("--no-flower", action="store_true", help="skip the SuperLink/SuperNode process part")
    a = ap.parse_args(argv)
    data = {"params": a.params, "codecs": bench_codecs(a.params, a.reps)}
    print("codecs", json.dumps({k: (v["bytes"], round(v["encode_ms"], 2), round(v["decode_ms"], 2))
                                for k, v in data["codecs"].items()}), flush=True)
    data["aggregator"] = bench_aggregator(a.params, a.updates)
    print("aggregator", json.dumps({k: round(v["updates_per_s"], 1) for k, v in data["aggregator"].items()}),
          flush=True)
    data["spool"] = bench_spool(a.params, 30)
    print("spool", json.dumps({k: round(v["appends_per_s"], 1) for k, v in data["spool"].items()}),
          flush=True)
    if not a.no_flower:
        data["flower"] = bench_flower(a.params)
        print("flower", json.dumps({"peak_rss_mb": data["flower"]["peak_rss_mb_by_role"],
                                    "latency_s": data["flower"]["spool_to_acked_s"]}), flush=True)
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": common.machine(), **data}, indent=2))
    plot(data, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
