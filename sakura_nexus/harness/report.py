"""The demo's report: the run summary (:func:`summarise`, written as summary.json) and the figure
(:func:`write_report`: the path over the cell map, world-model surprise over time, the image -> cmd_vel
latency histogram). ROS-free (matplotlib, Agg)."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from sakura_nexus.atomic import atomic_write
from sakura_nexus.harness.latency import MissionLog, cmd_gaps


def summarise(log: MissionLog, extra: dict | None = None, control_rate: float = 20.0) -> dict:
    lat = log.latency_s("rx") * 1e3

    def q(x, p):
        return round(float(np.percentile(x, p)), 2) if x.size else None

    s = {
        "goals": len(log.goals), "goals_reached": sum(g["reached"] for g in log.goals),
        "collisions": log.collisions,
        "latency_ms": {"what": "image published (DDS source time) -> the cmd_vel planned from it received "
                               "(DDS reception time)",
                       "n": int(lat.size), "p50": q(lat, 50), "p99": q(lat, 99), "max": q(lat, 100)},
        "control": cmd_gaps(log.cmd_src, 1.0 / control_rate),
        "world_states": len(log.surprise),
        "surprise_first_last": [round(log.surprise[0][1], 5), round(log.surprise[-1][1], 5)] if log.surprise else None,
        "per_goal": log.goals,
    }
    if log.sync:
        s["federated"] = {"global_version_start": log.sync[0][1], "global_version_end": log.sync[-1][1],
                          "bytes_sent_upstream": log.sync[-1][2], "pending_deltas_end": log.sync[-1][3]}
    s.update(extra or {})
    return s


def _rolling_median(y: np.ndarray, n: int) -> np.ndarray:
    if y.size < n or n < 2:
        return y
    pad = np.pad(y, (n // 2, n - 1 - n // 2), mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(pad, n), axis=1)


def write_report(out: pathlib.Path, log: MissionLog, layout, summary: dict) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sakura_nexus.sim import plot_cell

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.6), gridspec_kw={"width_ratios": [1.0, 1.25, 1.0]})
    # --- path over the cell map
    ax = axes[0]
    plot_cell(ax, layout, robot=False, goal=False)
    t_start = log.t0 if log.t0 is not None else log.path[0][0] if log.path else 0.0
    if log.path:
        p = np.array(log.path)
        sc = ax.scatter(p[:, 1], p[:, 2], c=p[:, 0] - t_start, cmap="viridis", s=5, zorder=6, label="robot path")
        ax.plot(p[:, 1], p[:, 2], "-", color="0.2", lw=0.6, zorder=5)
        ax.plot(p[0, 1], p[0, 2], "o", ms=9, mfc="white", mec="k", zorder=7, label="start")
        cb = fig.colorbar(sc, ax=ax, fraction=0.04, pad=0.02)
        cb.set_label("sim time [s]")
    labelled = set()
    for i, g in enumerate(log.goals):
        color = "tab:green" if g["reached"] else "tab:red"
        label = "goal reached" if g["reached"] else "goal missed"
        ax.plot(g["goal"][0], g["goal"][1], "*", ms=17, color=color, mec="k", zorder=8,
                label=None if label in labelled else label)
        labelled.add(label)
        ax.annotate(str(i + 1), (g["goal"][0], g["goal"][1]), textcoords="offset points", xytext=(7, 7),
                    fontsize=11, fontweight="bold", zorder=9,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    if log.collision_at:
        c = np.array(log.collision_at)
        ax.plot(c[:, 1], c[:, 2], "x", color="red", ms=9, mew=2, zorder=9, label="contact")
    ax.set_title(f"robot path: {summary['goals_reached']}/{summary['goals']} goals reached, "
                 f"{summary['collisions']} collisions", fontsize=11)
    ax.set_xlabel("x [m] (odom)")
    ax.set_ylabel("y [m]")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4, fontsize=8, frameon=False)
    # --- surprise over time
    ax = axes[1]
    if log.surprise:
        s = np.array(log.surprise)
        t = s[:, 0] - t_start
        pos = s[:, 1] > 0
        ax.plot(t[pos], s[pos, 1], lw=0.5, color="tab:blue", alpha=0.35)
        ax.plot(t[pos], _rolling_median(s[pos, 1], 15), lw=1.8, color="tab:blue",
                label="surprise: 1-step latent MSE (rolling median 0.5 s)")
        ax.plot(t, _rolling_median(s[:, 2], 15), lw=1.8, color="tab:orange", label="uncertainty: ensemble std")
        ax.set_yscale("log")
        for i, g in enumerate(log.goals):
            t_goal = g["t_end"] - t_start
            ax.axvline(t_goal, color="tab:green" if g["reached"] else "tab:red", ls=":", lw=1.2)
            ax.text(t_goal, 1.0, f" {i + 1}", transform=ax.get_xaxis_transform(), va="top", fontsize=9,
                    color="tab:green" if g["reached"] else "tab:red")
        ax.legend(fontsize=8, loc="lower left")
        ax.grid(alpha=0.3, which="both")
    else:
        ax.text(0.5, 0.5, "no world_state received", ha="center", transform=ax.transAxes)
    if log.sync:
        ax2 = ax.twinx()
        y = np.array(log.sync)
        ax2.step(y[:, 0] - t_start, y[:, 1], where="post", color="tab:purple", label="global model version")
        ax2.set_ylabel("global model version", color="tab:purple")
    ax.set_xlabel("sim time [s] (dotted: goal reached / timed out)")
    ax.set_ylabel("latent units")
    ax.set_title("world model surprise over time", fontsize=11)
    # --- latency
    ax = axes[2]
    lat = log.latency_s("rx") * 1e3
    if lat.size:
        hi = max(25.0, float(np.percentile(lat, 99.5)) * 1.1)
        ax.hist(np.clip(lat, 0, hi), bins=np.linspace(0, hi, 50), color="tab:orange", alpha=0.85)
        p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
        ax.axvline(p50, color="k", ls="--", lw=1.5, label=f"p50 {p50:.1f} ms")
        ax.axvline(p99, color="r", ls="--", lw=1.5, label=f"p99 {p99:.1f} ms")
        ax.legend(fontsize=9, title=f"{lat.size} commands", title_fontsize=8)
        ax.set_ylabel("commands")
    else:
        ax.text(0.5, 0.5, "no plan received", ha="center", transform=ax.transAxes)
    ax.set_xlabel("image published -> command received [ms]")
    ax.set_title("closed-loop latency: image -> cmd_vel", fontsize=11)
    ctrl = summary.get("control", {})
    fig.suptitle(f"sakura_nexus demo — factory seed {summary.get('seed', '?')}, controller "
                 f"{summary.get('controller', '?')}, cmd_vel {ctrl.get('rate_hz', '?')} Hz, "
                 f"{ctrl.get('missed_ticks', '?')} control ticks missed", fontsize=12)
    fig.tight_layout()
    png = out / "report.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png



def write_summary(out: pathlib.Path, summary: dict) -> pathlib.Path:
    """``out``/summary.json (indented), written atomically: a reader never sees half a summary."""
    path = out / "summary.json"
    atomic_write(path, json.dumps(summary, indent=2).encode(), fsync=False)
    return path
