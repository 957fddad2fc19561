"""Helpers shared by the benchmarks: output paths, percentiles, RSS, JSON + plot writing."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def out_dir() -> pathlib.Path:
    d = pathlib.Path(os.environ.get("SAKURA_BENCH_OUT", ROOT / "out" / "bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs, float), q)) if len(xs) else float("nan")


def summary_ms(xs_s) -> dict:
    xs = np.asarray(xs_s, float) * 1e3
    return {"n": int(len(xs)), "p50_ms": pct(xs, 50), "p90_ms": pct(xs, 90), "p99_ms": pct(xs, 99),
            "max_ms": float(xs.max()) if len(xs) else float("nan"), "mean_ms": float(xs.mean()) if len(xs) else 0}


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                  text=True).stdout.strip()}


def write(name: str, data: dict) -> pathlib.Path:
    path = out_dir() / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2))
    print(f"wrote {path}")
    return path
