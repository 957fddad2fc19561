"""What a mission run records (:class:`MissionLog`), and the closed-loop timing taken from it: the image ->
cmd_vel latency and the control ticks missed. ROS-free (plain numbers; the mission node fills it in).

Latency is measured with DDS sample timestamps (rclpy MessageInfo), not with callback times of the harness
process: from the *source* timestamp of the camera_info that sim_node publishes right after the image
(rendering is before it and excluded) to the *reception* timestamp of the cmd_vel planned from that
image. cmd_vel (Twist) has no stamp: it is matched through the ``plan`` with the image's stamp, which
policy_node publishes from the same callback right after the command (:meth:`MissionLog.commands`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class MissionLog:
    """Everything a run records (the mission node appends, the report and the benches read)."""

    goals: list = field(default_factory=list)          # dicts: goal, reached, time_s, collisions, start
    path: list = field(default_factory=list)           # (t, x, y)
    surprise: list = field(default_factory=list)       # (t, surprise, uncertainty, model_version)
    collisions: int = 0
    collision_at: list = field(default_factory=list)   # (t, x, y) at each new contact
    sync: list = field(default_factory=list)           # (t, global_version, bytes_sent, pending)
    # DDS timestamps (ns, system clock) per image stamp: source time of the image (taken raw, only its
    # stamp is parsed) and of its camera_info (published right after it), source time of observation /
    # world_state / plan, reception time of the plan here.
    image_src: dict = field(default_factory=dict)
    info_src: dict = field(default_factory=dict)
    obs_src: dict = field(default_factory=dict)
    obs_compute: dict = field(default_factory=dict)    # Observation.compute_time (s)
    ws_src: dict = field(default_factory=dict)
    plan_src: dict = field(default_factory=dict)
    plan_rx: dict = field(default_factory=dict)
    plan_poses: dict = field(default_factory=dict)     # number of poses in each plan (MPC: the horizon)
    cmd_src: list = field(default_factory=list)        # source timestamps (ns) of every cmd_vel
    cmd_rx: list = field(default_factory=list)         # ... and its reception time here (same order)
    diag: dict = field(default_factory=dict)           # node -> key -> [(wall ns, reported value)]
    window: list | None = None                         # [t0_ns, t1_ns]: only stamps inside count
    t0: float | None = None                            # sim time the mission started driving

    def start_ns(self, key: int) -> int | None:
        """When the image with stamp ``key`` went out: its own source timestamp, else (image not seen
        here) that of its camera_info, which sim_node publishes right after it."""
        t = self.image_src.get(key)
        return t if t is not None else self.info_src.get(key)

    def commands(self) -> dict:
        """Image stamp -> (source, reception) DDS timestamps (ns) of the cmd_vel planned from that image.

        cmd_vel carries no stamp (geometry_msgs/Twist), so it is matched through the plan: policy_node
        publishes the command, then the plan with the image's stamp, from the same callback (nothing
        else publishes cmd_vel in between), so the command is the newest one sent before the plan and
        after the image."""
        if not self.cmd_src or len(self.cmd_rx) != len(self.cmd_src):
            return {}
        order = np.argsort(np.asarray(self.cmd_src, np.int64), kind="stable")
        src = np.asarray(self.cmd_src, np.int64)[order]
        rx = np.asarray(self.cmd_rx, np.int64)[order]
        out = {}
        for k, plan_t in self.plan_src.items():
            i = int(np.searchsorted(src, plan_t, side="right")) - 1
            t0 = self.start_ns(k)
            if i >= 0 and t0 is not None and src[i] >= t0:
                out[k] = (int(src[i]), int(rx[i]))
        return out

    def latency_s(self, which: str = "rx") -> np.ndarray:
        """Image -> cmd_vel latencies (s): ``rx`` to the reception of the command here (as the robot
        driver would receive it), ``src`` to its publication."""
        cmds = self.commands()
        out = []
        for k in sorted(cmds):
            t0 = self.start_ns(k)
            if t0 is not None and self._in_window(t0):  # always known for a matched command
                out.append((cmds[k][1 if which == "rx" else 0] - t0) * 1e-9)
        return np.array(out)

    def _in_window(self, t_ns: int) -> bool:
        return self.window is None or self.window[0] <= t_ns <= self.window[1]


def trim_oldest(d: dict, keep: int = 20000) -> None:
    """Bound a per-stamp dict of :class:`MissionLog`: drop 2000 entries once it holds ``keep`` + 2000."""
    # the oldest entries by arrival (dicts keep insertion order), not the smallest stamps: after a sim
    # restart the newest stamps are the smallest
    if len(d) > keep + 2000:
        for k in list(d)[:2000]:
            del d[k]


def cmd_gaps(cmd_src_ns, period: float, t0_ns: int | None = None, t1_ns: int | None = None) -> dict:
    """Control ticks missed: cmd_vel publication gaps longer than 1.5 control periods."""
    t = np.sort(np.asarray(cmd_src_ns, np.int64))
    if t0_ns is not None:
        t = t[(t >= t0_ns) & (t <= (t1_ns if t1_ns is not None else t[-1] if t.size else 0))]
    if t.size < 2:
        return {"commands": int(t.size), "gaps_over_1.5_periods": 0, "missed_ticks": 0, "max_gap_ms": None}
    gaps = np.diff(t) * 1e-9
    late = gaps[gaps > 1.5 * period]
    return {"commands": int(t.size), "rate_hz": round(float((t.size - 1) / ((t[-1] - t[0]) * 1e-9)), 2),
            "gaps_over_1.5_periods": int(late.size),
            "missed_ticks": int(np.sum(np.floor(late / period + 0.5) - 1)),
            "max_gap_ms": round(float(gaps.max() * 1e3), 2)}

