"""`sakura-nexus bench [name ...]`: run the benchmarks in bench/ (each writes out/bench/<name>.json + a PNG)."""

from __future__ import annotations

import argparse
import subprocess
import sys

from sakura_nexus.paths import source_root


def main(argv: list[str]) -> int:
    root = source_root()
    if root is None or not (root / "bench").is_dir():
        print("bench/ not found: benchmarks run from a source checkout", file=sys.stderr)
        return 2
    available = sorted(p.stem.removeprefix("bench_") for p in (root / "bench").glob("bench_*.py"))
    ap = argparse.ArgumentParser(prog="sakura-nexus bench", description=__doc__)
    ap.add_argument("names", nargs="*", default=[], help=f"subset of {available} (default: all)")
    args, rest = ap.parse_known_args(argv)
    names = args.names or available
    failed = []
    for name in names:
        if name not in available:
            print(f"unknown benchmark {name!r}; available: {available}", file=sys.stderr)
            return 2
        print(f"== bench {name}", flush=True)
        rc = subprocess.call([sys.executable, str(root / "bench" / f"bench_{name}.py"), *rest])
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0
