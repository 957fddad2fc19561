"""Bag streams -> the world model's training arrays (:class:`~sakura_nexus.models.data.Trajectories`).

The world model steps every ``model_dt`` (0.1 s); frame k is the camera frame at grid time t_k and
action k is the command held from t_k to t_k+1 -- as in the sim collector. Per bag:

1. Read odometry, commands, contacts and the image stamps (pass 1; no pixels decoded). Every stream is
   put in header-stamp order: messages up to ``max_reorder`` behind the newest one are re-sorted
   (counted ``reordered``), those further behind (a clock reset, merged bags) are dropped
   (``non_monotonic``), zero stamps and exact duplicates too (of commands the last one is kept; all
   contact messages are kept). Topics without a header (Twist, Bool)
   use the bag's log time, moved onto the header clock by the median (log time - stamp) of odometry.
2. Grid t_k = t_0 + k dt over the time covered by both camera and odometry. A grid point is usable if
   a frame and an odometry sample lie within ``tolerance`` of it; a step k -> k+1 is usable if both
   ends are, they are different frames, and the pose moved no more than ``max_speed`` allows.
3. Decode the chosen frames (pass 2) with perception's decoder and resize (``vision``) -- a frame that
   does not decode makes its grid point unusable.
4. Runs of usable steps are segments; each is cut into ``segment_steps``-step windows (the last window
   is aligned to the segment's end, so it may overlap the one before); shorter segments are dropped.

Action k is the time average over [t_k, t_k+1) of the last command (zero-order hold; a command older
than ``cmd_timeout`` counts as zero, as a base controller's timeout does). collided k: any contact
message True in (t_k, t_k+1]. Every grid point or message left out is counted under a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sakura_nexus import vision
from sakura_nexus.geometry import yaw_of as _yaw
from sakura_nexus.models.data import MODEL_DT, Trajectories

from .reader import Bag, BagError, stamp_ns

NS = 1_000_000_000


@dataclass
class AlignConfig:
    model_dt: float = MODEL_DT  # grid step [s] (fixed by the world model)
    tolerance: float = 0.05  # max |frame or odometry stamp - grid time| [s]
    cmd_timeout: float = 0.5  # a command older than this is zero [s]
    max_reorder: float = 1.0  # stamps further behind the newest are dropped, not re-sorted [s]
    max_speed: float = 3.0  # a pose moving faster than this between grid points is a jump [m/s]
    segment_steps: int = 30  # transitions per training window
    image_size: int = 64  # encoder input (square, like perception's default)
    depth_max: float = 10.0  # depth images: metres mapped to full scale (perception's depth_max)
    max_pixels: int = vision.MAX_PIXELS  # compressed frames above this are refused before decoding


@dataclass
class Stream:
    """One topic's samples in stamp order; ``t`` in ns on the header clock."""

    t: np.ndarray
    values: np.ndarray  # (n, k) float64
    stamped: bool  # header stamps (True) or log time (False)
    stats: dict = field(default_factory=dict)


def _order(t: np.ndarray, values: np.ndarray, max_reorder_ns: int,
           duplicates: str = "first") -> tuple[np.ndarray, np.ndarray, dict]:
    """Sort a stream that arrived in log order; see the module docstring for what is dropped.
    ``duplicates``: which of several messages with one stamp stays: "first", "last" (a command: the
    newest wins; log times repeat when the recorder's clock is sim time) or "all" (contacts)."""
    n = len(t)
    keep = t > 0
    zero = int(n - keep.sum())
    run_max = np.maximum.accumulate(np.where(keep, t, 0)) if n else t
    behind = run_max - t
    late = keep & (behind > max_reorder_ns)
    reordered = int((keep & (behind > 0) & ~late).sum())
    keep &= ~late
    t, values = t[keep], values[keep]
    idx = np.argsort(t, kind="stable")
    t, values = t[idx], values[idx]
    dup = np.zeros(len(t), bool)
    if duplicates == "last":
        dup[:-1] = t[:-1] == t[1:]
    else:
        dup[1:] = t[1:] == t[:-1]
    if duplicates == "all":
        stats_dup = int(dup.sum())
        dup[:] = False
    stats = {"messages": n, "zero_stamp": zero, "non_monotonic": int(late.sum()), "reordered": reordered,
             "duplicate_stamp": stats_dup if duplicates == "all" else int(dup.sum())}
    return t[~dup], values[~dup], stats


def read_streams(bag: Bag, cfg: AlignConfig, progress: bool = False) -> dict[str, Stream]:
    """Pass 1: odom, cmd, contacts values and the image stamps (pixels are not decoded here)."""
    rows: dict[str, list] = {r: [] for r in ("image", "odom", "cmd", "contacts")}
    logs: dict[str, list] = {r: [] for r in rows}
    roles = [r for r in rows if r in bag.selected]
    bar = _bar(bag.message_count(roles), progress, f"read {bag.path.name}")
    for role, log_ns, m in bag.messages(roles):
        bar.update(1)
        logs[role].append(log_ns)
        if role == "image":
            rows[role].append((stamp_ns(m.header), 0.0))
        elif role == "odom":
            p, tw = m.pose.pose, m.twist.twist
            rows[role].append((stamp_ns(m.header), p.position.x, p.position.y, _yaw(p.orientation),
                               tw.linear.x, tw.angular.z))
        elif role == "cmd":
            tw = m.twist if hasattr(m, "twist") else m
            t = stamp_ns(m.header) if hasattr(m, "header") else log_ns
            rows[role].append((t, tw.linear.x, tw.angular.z))
        else:
            rows[role].append((log_ns, float(bool(m.data))))
    bar.close()
    if bag.read_error and not any(rows.values()):
        raise BagError(f"{bag.path}: reading failed before any message: {bag.read_error}")
    for role in ("image", "odom", "cmd"):
        if not rows[role]:
            why = f" ({bag.undecodable[role]} undecodable)" if bag.undecodable.get(role) else ""
            raise BagError(f"{bag.path}: the {role} topic {bag.selected[role][0].topic} has no usable "
                           f"messages{why}")
    # the offset that moves log time onto the header clock: median delay of odometry
    o_log = np.asarray(logs["odom"], np.int64)
    o_stamp = np.asarray([r[0] for r in rows["odom"]], np.int64)
    offset = int(np.median(o_log - o_stamp))
    streams = {}
    for role in roles:
        a = np.asarray(rows[role], np.float64)
        stamped = role in ("image", "odom") or (role == "cmd" and bag.type_of("cmd").endswith("TwistStamped"))
        t = np.asarray([r[0] for r in rows[role]], np.int64)
        if not stamped:
            t = t - offset
        t, v, stats = _order(t, a[:, 1:], int(cfg.max_reorder * NS),
                             {"cmd": "last", "contacts": "all"}.get(role, "first"))
        stats["undecodable"] = bag.undecodable.get(role, 0)
        stats["time_source"] = "header stamp" if stamped else "log time - odometry delay"
        if role == "image":
            v = np.arange(len(t), dtype=np.float64)[:, None]  # rank in stamp order (pass 2 key is the stamp)
        streams[role] = Stream(t, v, stamped, stats)
    streams["odom"].stats["log_minus_stamp_ms"] = round(offset / 1e6, 3)
    return streams


def _nearest(t: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the sample nearest each grid time, and its |distance| (ns)."""
    i = np.clip(np.searchsorted(t, grid), 1, len(t) - 1) if len(t) > 1 else np.zeros(len(grid), np.int64)
    if len(t) > 1:
        left = (grid - t[i - 1]) < (t[i] - grid)
        i = np.where(left, i - 1, i)
    return i, np.abs(t[i] - grid)


def _held(stream: Stream | None, times: np.ndarray, timeout_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-order hold of a command stream at ``times`` -> (values, stale mask)."""
    if stream is None or not len(stream.t):
        return np.zeros((len(times), 2)), np.ones(len(times), bool)
    i = np.searchsorted(stream.t, times, side="right") - 1
    ok = i >= 0
    age = np.where(ok, times - stream.t[np.maximum(i, 0)], np.iinfo(np.int64).max)
    stale = age > timeout_ns
    vals = np.where(stale[:, None], 0.0, stream.values[np.maximum(i, 0)])
    return vals, stale


@dataclass
class Plan:
    """The grid of one bag, before and after decoding."""

    grid: np.ndarray  # (K,) ns
    frame_stamp: np.ndarray  # (K,) ns of the chosen frame
    proprio: np.ndarray  # (K, 6)
    actions: np.ndarray  # (K, 2) command held from grid point k to k+1
    collided: np.ndarray  # (K,) bool contact during step k
    point_ok: np.ndarray  # (K,) bool
    step_ok: np.ndarray  # (K-1,) bool
    reasons: dict  # grid points / steps dropped, by reason
    stats: dict


def plan_grid(streams: dict[str, Stream], cfg: AlignConfig) -> Plan:
    img, odom = streams["image"], streams["odom"]
    dt = int(round(cfg.model_dt * NS))
    t0, t1 = max(img.t[0], odom.t[0]), min(img.t[-1], odom.t[-1])
    if t1 - t0 < dt:
        raise BagError(f"camera ({_span(img.t)}) and odometry ({_span(odom.t)}) do not overlap in time by "
                       f"even one model step ({cfg.model_dt} s)")
    grid = np.arange(t0, t1 + 1, dt, dtype=np.int64)
    tol = int(cfg.tolerance * NS)
    fi, fd = _nearest(img.t, grid)
    oi, od = _nearest(odom.t, grid)
    frame_ok, odom_ok = fd <= tol, od <= tol
    o = odom.values[oi]
    proprio = np.stack([o[:, 0], o[:, 1], np.cos(o[:, 2]), np.sin(o[:, 2]), o[:, 3], o[:, 4]], 1)
    # action k: mean of the held command over [t_k, t_k + dt) (10 sub-samples)
    sub = grid[:, None] + (np.arange(10)[None] * dt + dt // 20) // 10
    held, stale = _held(streams.get("cmd"), sub.reshape(-1), int(cfg.cmd_timeout * NS))
    actions = held.reshape(len(grid), 10, 2).mean(1)
    stale_steps = int(stale.reshape(len(grid), 10).all(1)[:-1].sum())
    collided = np.zeros(len(grid), bool)
    if "contacts" in streams:
        c = streams["contacts"]
        hits = c.t[c.values[:, 0] > 0.5]
        # contact during step k: a True message in (t_k, t_k + dt]
        lo, hi = np.searchsorted(hits, grid, side="right"), np.searchsorted(hits, grid + dt, side="right")
        collided = hi > lo
    point_ok = frame_ok & odom_ok
    reasons = {"no_frame_within_tolerance": int((~frame_ok).sum()),
               "no_odometry_within_tolerance": int((frame_ok & ~odom_ok).sum())}
    step_ok = point_ok[:-1] & point_ok[1:]
    same = fi[1:] == fi[:-1]
    jump = np.hypot(*(o[1:, :2] - o[:-1, :2]).T) > cfg.max_speed * cfg.model_dt
    reasons["steps_same_frame_twice"] = int((step_ok & same).sum())
    reasons["steps_pose_jump"] = int((step_ok & ~same & jump).sum())
    step_ok &= ~same & ~jump
    stats = {"grid_points": int(len(grid)), "grid_start_ns": int(t0), "grid_end_ns": int(grid[-1]),
             "frame_offset_ms": _ms_stats(fd[frame_ok]), "odometry_offset_ms": _ms_stats(od[odom_ok]),
             "steps_with_stale_command_as_zero": stale_steps}
    return Plan(grid, img.t[fi], proprio.astype(np.float32), actions.astype(np.float32), collided,
                point_ok, step_ok, reasons, stats)


def _ms_stats(d: np.ndarray) -> dict:
    if not len(d):
        return {"n": 0}
    d = d / 1e6
    return {"n": int(len(d)), "mean": round(float(d.mean()), 3), "p95": round(float(np.percentile(d, 95)), 3),
            "max": round(float(d.max()), 3)}


def _span(t: np.ndarray) -> str:
    return f"{t[0] / NS:.3f}..{t[-1] / NS:.3f} s"


def decode_frame(msg, msgtype: str, cfg: AlignConfig) -> np.ndarray:
    """An Image / CompressedImage message -> (size, size, 3) uint8 RGB as perception feeds the encoder."""
    if msgtype.endswith("CompressedImage"):
        rgb = vision.decode_compressed(msg.format, bytes(msg.data), cfg.max_pixels)
    else:
        if msg.height * msg.width > cfg.max_pixels:
            raise vision.ImageError("size", f"{msg.width}x{msg.height} above {cfg.max_pixels} pixels")
        rgb = vision.decode(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian),
                            np.asarray(msg.data, np.uint8), depth_max=cfg.depth_max)
    return vision.crop_resize(rgb, vision.PreprocessConfig(width=cfg.image_size, height=cfg.image_size))


def decode_frames(bag: Bag, plan: Plan, cfg: AlignConfig, progress: bool = False) -> tuple[np.ndarray, dict]:
    """Pass 2: decode the frames the usable grid points chose -> (K, size, size, 3); failures are
    counted by reason and their grid points marked unusable."""
    want = plan.point_ok.copy()
    needed = set(plan.frame_stamp[want].tolist())
    frames: dict[int, np.ndarray] = {}
    failed: dict[int, str] = {}
    msgtype = bag.type_of("image")
    bar = _bar(bag.message_count(["image"]), progress, f"decode {bag.path.name}")
    for _, _, m in bag.messages(["image"]):
        bar.update(1)
        s = stamp_ns(m.header)
        if s not in needed or s in frames:
            continue
        try:
            frames[s] = decode_frame(m, msgtype, cfg)
            failed.pop(s, None)
        except vision.ImageError as e:
            failed[s] = e.reason
    bar.close()
    size = cfg.image_size
    images = np.zeros((len(plan.grid), size, size, 3), np.uint8)
    reasons: dict[str, int] = {}
    for k in np.flatnonzero(want):
        s = int(plan.frame_stamp[k])
        if s in frames:
            images[k] = frames[s]
        else:
            key = f"frame_{failed.get(s, 'unreadable')}"
            reasons[key] = reasons.get(key, 0) + 1
            plan.point_ok[k] = False
    plan.step_ok &= plan.point_ok[:-1] & plan.point_ok[1:]
    return images, reasons


def segments(step_ok: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of usable steps as (first grid point, number of steps)."""
    out, start = [], None
    for k, ok in enumerate(np.append(step_ok, False)):
        if ok and start is None:
            start = k
        elif not ok and start is not None:
            out.append((start, k - start))
            start = None
    return out


def windows(segs: list[tuple[int, int]], steps: int) -> tuple[list[int], int, int]:
    """Window start indices (``steps`` transitions each), and the segments / steps too short to use."""
    starts, short, short_steps = [], 0, 0
    for s, n in segs:
        if n < steps:
            short += 1
            short_steps += n
            continue
        starts += [s + i for i in range(0, n - steps + 1, steps)]
        if n % steps:
            starts.append(s + n - steps)
    return starts, short, short_steps


@dataclass
class BagData:
    """One bag's training windows plus everything the report and the manifest say about it."""

    path: str
    data: Trajectories | None
    report: dict
    grid: np.ndarray | None = None
    proprio: np.ndarray | None = None
    actions: np.ndarray | None = None
    window_starts: list = field(default_factory=list)
    used: np.ndarray | None = None  # (K-1,) steps that are in a training window


def load_bag(path, topics=None, cfg: AlignConfig | None = None, progress: bool = False) -> BagData:
    """Read, align and cut one bag (raises :class:`BagError` if it cannot be used at all)."""
    cfg = cfg or AlignConfig()
    with Bag(path, topics) as bag:
        streams = read_streams(bag, cfg, progress)
        plan = plan_grid(streams, cfg)
        images, frame_reasons = decode_frames(bag, plan, cfg, progress)
        report = {
            "path": str(path),
            "topics": {r: {"topic": c[0].topic, "type": c[0].msgtype} for r, c in bag.selected.items()},
            "all_topics": bag.topic_table(),
            "read_error": bag.read_error,
            "streams": {r: s.stats for r, s in streams.items()},
            "alignment": plan.stats,
        }
    segs = segments(plan.step_ok)
    starts, short, short_steps = windows(segs, cfg.segment_steps)
    used = np.zeros(len(plan.step_ok), bool)
    for s in starts:
        used[s:s + cfg.segment_steps] = True
    report["dropped"] = {**plan.reasons, **frame_reasons, "segments_too_short": short,
                         "steps_in_too_short_segments": short_steps}
    report["segments"] = {"count": len(segs), "steps": [n for _, n in segs][:1000],
                          "windows": len(starts), "window_steps": cfg.segment_steps,
                          "steps_used": int(used.sum()), "steps_total": int(len(plan.step_ok))}
    span = (plan.grid[-1] - plan.grid[0]) / NS
    report["time_range_s"] = [plan.grid[0] / NS, plan.grid[-1] / NS]
    report["aligned_duration_s"] = round(float(span), 3)
    report["has_contacts"] = "contacts" in streams
    if not starts:
        return BagData(str(path), None, report, plan.grid, plan.proprio, plan.actions, [], used)
    T = cfg.segment_steps
    idx = np.asarray(starts)[:, None] + np.arange(T + 1)[None]
    data = Trajectories(images[idx], plan.proprio[idx], plan.actions[idx[:, :-1]], plan.collided[idx[:, :-1]],
                        np.full(len(starts), -1, np.int64), np.full(len(starts), np.nan, np.float32))
    return BagData(str(path), data, report, plan.grid, plan.proprio, plan.actions, starts, used)


def no_usable_segment(report: dict, cfg: AlignConfig) -> str:
    """Why a bag gave no window, in one sentence."""
    d = {k: v for k, v in report["dropped"].items() if v}
    worst = ", ".join(f"{k}: {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:4]) or "none"
    secs = cfg.segment_steps * cfg.model_dt
    return (f"{report['path']}: no usable segment of {cfg.segment_steps} steps ({secs:g} s) "
            f"in {report['alignment']['grid_points']} grid points; dropped: {worst}. Check the topics "
            f"({', '.join(v['topic'] for v in report['topics'].values())}), --tolerance and --segment-steps")


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return _NoBar()
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="msg", file=sys.stderr, dynamic_ncols=True, leave=False,
                mininterval=0.5)
