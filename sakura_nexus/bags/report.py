"""``sakura-nexus inspect --bag PATH...``: what a bag holds and what training would use, before training.

Per bag: duration, message counts and rates of every topic, the alignment statistics, the poses
covered (used vs dropped), histograms of the commanded actions, a strip of sample frames (as the
encoder sees them) and what is dropped and why -- one PNG per bag plus one JSON for all of them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from .dataset import AlignConfig, BagData, load_bag, no_usable_segment
from .reader import Bag, BagError, TopicConfig

NS = 1_000_000_000


def topic_stats(path, topics: TopicConfig, progress: bool = False) -> dict:
    """Counts, log-time span and rate of every topic, from one pass over the raw messages."""
    from .dataset import _bar

    with Bag(path, topics, require=()) as bag:
        reader = bag._reader
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        count: dict[str, int] = {}
        bar = _bar(reader.message_count, progress, f"scan {pathlib.Path(path).name}")
        it = reader.messages()
        error = None
        while True:
            try:
                con, t, _ = next(it)
            except StopIteration:
                break
            except Exception as e:  # noqa: BLE001 - damaged chunk: report what was read
                error = f"{type(e).__name__}: {e}"
                break
            bar.update(1)
            first.setdefault(con.topic, t)
            last[con.topic] = t
            count[con.topic] = count.get(con.topic, 0) + 1
        bar.close()
        types = {c.topic: c.msgtype for c in reader.connections}
        start, end = reader.start_time, reader.end_time
    table = []
    for topic in sorted(types):
        n = count.get(topic, 0)
        span = (last.get(topic, 0) - first.get(topic, 0)) / NS
        table.append({"topic": topic, "type": types[topic], "count": n,
                      "rate_hz": round((n - 1) / span, 3) if n > 1 and span > 0 else None})
    return {"duration_s": round((end - start) / NS, 3), "start_s": start / NS, "end_s": end / NS,
            "all_topics": table, "scan_error": error}


def plot_bag(b: BagData, info: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(14, 9.5))
    gs = fig.add_gridspec(3, 3, height_ratios=[1.3, 1, 0.6], width_ratios=[1, 1, 1.15])
    name = pathlib.Path(b.path).name
    r = b.report
    seg = r["segments"]
    fig.suptitle(f"{name}: {info['duration_s']:.1f} s, {seg['windows']} windows of {seg['window_steps']} steps, "
                 f"{seg['steps_used']}/{seg['steps_total']} steps used "
                 f"({100.0 * seg['steps_used'] / max(1, seg['steps_total']):.0f} %)", fontsize=12)

    ax = fig.add_subplot(gs[0, 0])
    xy = b.proprio[:, :2]
    ax.plot(xy[:, 0], xy[:, 1], color="0.8", lw=0.8, zorder=1)
    if len(b.used):
        dropped = np.ones(len(xy), bool)
        dropped[:-1][b.used] = False
        dropped[1:][b.used] = False
        ax.scatter(xy[~dropped, 0], xy[~dropped, 1], s=4, c="tab:blue", label="used", zorder=2)
        ax.scatter(xy[dropped, 0], xy[dropped, 1], s=6, c="tab:red", label="dropped", zorder=3)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title("pose coverage (odometry at the 0.1 s grid)")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")
    ax.legend(fontsize=8, loc="best")

    for j, (k, label) in enumerate(((0, "commanded v [m/s]"), (1, "commanded w [rad/s]"))):
        ax = fig.add_subplot(gs[0, 1 + j])
        a = b.actions[:-1, k]
        bins = np.linspace(a.min() - 1e-3, a.max() + 1e-3, 31)
        ax.hist(a, bins=bins, color="0.7", label="all steps")
        if len(b.used) and b.used.any():
            ax.hist(a[b.used], bins=bins, color="tab:blue", alpha=0.8, label="used")
        ax.set_title(f"histogram: {label.split(' [')[0]}")
        ax.set_xlabel(label)
        ax.legend(fontsize=8)

    ax = fig.add_subplot(gs[1, 0])
    tab = info["all_topics"]
    ax.barh([t["topic"] for t in tab], [t["rate_hz"] or 0.0 for t in tab], color="tab:green")
    for i, t in enumerate(tab):
        ax.text(t["rate_hz"] or 0.0, i, f" {t['count']} msgs, {t['rate_hz'] or 0:.1f} Hz", va="center", fontsize=7)
    ax.set_xlabel("rate [Hz] (log time)")
    ax.set_title("topics")
    ax.tick_params(axis="y", labelsize=7)

    ax = fig.add_subplot(gs[1, 1])
    drops = {k: v for k, v in r["dropped"].items() if v}
    if drops:
        ax.barh(list(drops), list(drops.values()), color="tab:red")
        for i, v in enumerate(drops.values()):
            ax.text(v, i, f" {v}", va="center", fontsize=8)
    else:
        ax.text(0.5, 0.5, "nothing dropped", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title("dropped grid points / steps, by reason")
    ax.tick_params(axis="y", labelsize=7)

    ax = fig.add_subplot(gs[1, 2])
    ax.axis("off")
    al = r["alignment"]
    s = r["streams"]
    lines = [f"grid points          {al['grid_points']}",
             f"frame offset ms      mean {al['frame_offset_ms'].get('mean')}  p95 {al['frame_offset_ms'].get('p95')}",
             f"odometry offset ms   mean {al['odometry_offset_ms'].get('mean')}  p95 "
             f"{al['odometry_offset_ms'].get('p95')}",
             f"stale cmd (as zero)  {al['steps_with_stale_command_as_zero']} steps",
             f"segments             {seg['count']}",
             f"contacts topic       {'yes' if r['has_contacts'] else 'none: no collision labels'}"]
    lines.append("stamps     reord  late   dup  zero   bad")
    for role, st in s.items():
        lines.append(f"{role:9s} {st['reordered']:6d} {st['non_monotonic']:5d} {st['duplicate_stamp']:5d} "
                     f"{st['zero_stamp']:5d} {st['undecodable']:5d}")
    lines.append("(late: > max_reorder behind, dropped)")
    if r.get("read_error"):
        lines.append(f"READ ERROR: {r['read_error'][:60]}")
    ax.text(-0.05, 1, "\n".join(lines), va="top", family="monospace", fontsize=7.5, transform=ax.transAxes)
    ax.set_title("alignment", loc="left")

    ax = fig.add_subplot(gs[2, :])
    ax.axis("off")
    if b.data is not None:
        imgs = b.data.images[:, 0]
        pick = np.linspace(0, len(imgs) - 1, min(10, len(imgs))).round().astype(int)
        strip = np.concatenate([np.pad(imgs[i], ((2, 2), (2, 2), (0, 0)), constant_values=255) for i in pick], 1)
        ax.imshow(strip)
        ax.set_title("sample frames (first frame of evenly spaced windows, as the encoder sees them)", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no usable window: no frames to show", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def inspect_bags(paths: list, topics: TopicConfig, align: AlignConfig, out: pathlib.Path,
                 progress: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    result = {"bags": [], "errors": []}
    for i, path in enumerate(paths):
        try:
            info = topic_stats(path, topics, progress)
            b = load_bag(path, topics, align, progress)
        except BagError as e:
            result["errors"].append({"path": str(path), "error": str(e)})
            continue
        entry = {**b.report, **info, "all_topics": info["all_topics"]}
        if b.data is None:
            entry["no_usable_segment"] = no_usable_segment(b.report, align)
        png = out / (f"report_{i}.png" if len(paths) > 1 else "report.png")
        plot_bag(b, info, png)
        entry["png"] = str(png)
        result["bags"].append(entry)
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def inspect_main(argv: list[str] | None = None) -> int:
    from .train import add_bag_arguments, configs_from

    p = argparse.ArgumentParser(prog="sakura-nexus inspect", description=__doc__.splitlines()[0])
    add_bag_arguments(p)
    p.add_argument("--out", default="out/inspect", help="report.png + report.json (default %(default)s)")
    a = p.parse_args(argv)
    topics, align = configs_from(a)
    res = inspect_bags(a.bag, topics, align, pathlib.Path(a.out), progress=not a.no_progress)
    for b in res["bags"]:
        seg = b["segments"]
        print(f"{b['path']}: {b['duration_s']:.1f} s; "
              + ", ".join(f"{t['topic']} {t['count']}" for t in b["all_topics"])
              + f"; {seg['windows']} windows, {seg['steps_used']}/{seg['steps_total']} steps used; {b['png']}")
        if "no_usable_segment" in b:
            print(f"  {b['no_usable_segment']}")
    for e in res["errors"]:
        print(f"sakura-nexus inspect: {e['error']}", file=sys.stderr)
    print(f"report: {pathlib.Path(a.out) / 'report.json'}")
    return 2 if res["errors"] or not res["bags"] else 0


if __name__ == "__main__":
    sys.exit(inspect_main())
