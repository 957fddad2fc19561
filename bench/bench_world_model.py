"""World-model benchmark on one CPU core: per-tick latency with online learning off and on,
planner rollout cost, gradient steps/s, encoder variants, RSS.

A node tick is what world_model_node does per observation: encode + a 15-step prediction of one
sample (ensemble disagreement) + pose and collision heads; "tick_with_encoder" adds the 64x64 encoder
the perception node runs and a full ensemble step. The process is pinned to one core (``--cores``), so the learning
thread (online learning "on") competes with inference exactly as on a 1-core robot. For the
learning off/on comparison the ticks are paced at the camera rate (``--tick-hz``), as in the node;
the learner runs as the node runs it (SCHED_IDLE thread, see ``deprioritise_current_thread``), plus
one normal-priority reference. Off and on alternate in blocks of 5 s and the p99 rise is taken
between these paired samples. Writes out/bench/world_model.json and world_model.png.

    python bench/bench_world_model.py [--ticks 2000] [--learn-rate 5 20 0] [--tick-hz 30] [--cores 1]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from sakura_nexus.models import (  # noqa: E402
    ConvEncoder,
    OnlineLearner,
    Transition,
    WorldModel,
    WorldModelSnapshot,
    inference_encoder,
    load_checkpoint,
)
from sakura_nexus.priority import deprioritise_current_thread  # noqa: E402
from sakura_nexus.testing.toy import toy_sequences  # noqa: E402

HORIZON = 15


CPU_TIMES: list[float] = []  # thread CPU time of the calls of the last ``timed`` run


def timed(fn, n: int, warmup: int = 20) -> list[float]:
    """Wall time per call; the thread CPU time per call goes to CPU_TIMES (immune to preemption
    by other processes, so it shows the compute cost on a busy machine)."""
    for _ in range(warmup):
        fn()
    out = []
    CPU_TIMES.clear()
    for _ in range(n):
        c0 = time.thread_time()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
        CPU_TIMES.append(time.thread_time() - c0)
    return out


def timed_paced(fn, n: int, hz: float, warmup: int = 20) -> list[float]:
    """Like ``timed`` but the calls are paced at ``hz`` as the node's ticks are (one per observation),
    so a background learner has the idle time between ticks that it would have on the robot."""
    for _ in range(warmup):
        fn()
    out = []
    CPU_TIMES.clear()
    period, next_t = 1.0 / hz, time.perf_counter()
    for _ in range(n):
        next_t += period
        c0 = time.thread_time()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
        CPU_TIMES.append(time.thread_time() - c0)
        time.sleep(max(0.0, next_t - time.perf_counter()))
    return out


def with_cpu(wall: list[float]) -> dict:
    cpu = common.summary_ms(CPU_TIMES)
    return {**common.summary_ms(wall), "cpu_p50_ms": cpu["p50_ms"], "cpu_p99_ms": cpu["p99_ms"]}


def load_models():
    try:
        ckpt = load_checkpoint(common.ROOT / "models")
        return ckpt.encoder or ConvEncoder(), ckpt.world_model, "models/ (shipped checkpoint)"
    except (FileNotFoundError, ValueError) as e:
        torch.manual_seed(0)
        return ConvEncoder(), WorldModel(), f"random init ({e})"


def make_tick(enc, snap_ref, image, proprio, action):
    actions = np.repeat(action[None, None, :], HORIZON, axis=1)

    def tick():
        with torch.inference_mode():
            emb = enc(image).numpy()
        snap = snap_ref()
        z = snap.encode(emb, proprio)
        snap.step(z, action[None])
        zs, sig = snap.rollout(z, actions)
        snap.pose(zs)
        snap.collision(zs)
    return tick


def make_node_tick(snap_ref, proprio, action, embedding):
    """Exactly the per-observation work of world_model_node._on_observation (the embedding arrives
    from the perception node, so no encoder here)."""
    actions = np.repeat(action[None, None, :], HORIZON, axis=1)

    def tick():
        snap = snap_ref()
        z = snap.encode(embedding[None], proprio)
        zs, sig = snap.rollout(z, actions)
        snap.pose(z)
        snap.collision(zs[:, 0])
    return tick


def make_torch_tick(enc, wm, image, proprio, action):
    p, a = torch.from_numpy(proprio), torch.from_numpy(action[None])
    acts = a[:, None].expand(1, HORIZON, 2)

    def tick():
        with torch.inference_mode():
            z = wm.encode(enc(image), p)
            wm.step(z, a)
            zs, _ = wm.rollout(z, acts)
            wm.pose(zs)
            wm.collision(zs)
    return tick


def fill_learner(learner: OnlineLearner, n: int) -> None:
    d = toy_sequences(n, 1, seed=0)
    for i in range(n):
        learner.add(Transition(d["embedding"][i, 0].numpy(), d["proprio"][i, 0].numpy(),
                               d["actions"][i, 0].numpy(), d["embedding"][i, 1].numpy(),
                               d["proprio"][i, 1].numpy(), bool(d["collided"][i, 0])))


def learning_thread(learner: OnlineLearner, rate: float, stop: threading.Event, enabled: threading.Event,
                    counter: list, low_priority: bool, policy: list) -> None:
    """The node's learning loop: ``rate`` steps/s (0 = as many as the CPU allows) while ``enabled``."""
    if low_priority:
        policy.append(deprioritise_current_thread())
    next_t = time.monotonic()
    while not stop.is_set():
        if not enabled.is_set():
            enabled.wait(0.05)
            next_t = time.monotonic()
            continue
        learner.train_step()
        counter[0] += 1
        if rate > 0:
            next_t += 1.0 / rate
            stop.wait(max(0.0, next_t - time.monotonic()))


def ab_blocks(tick, learner, rate: float, low_priority: bool, n: int, hz: float, block: int = 150) -> dict:
    """Learning off/on measured in alternating blocks of ``block`` paced ticks (order swapped every
    pair), so drifts of the machine (other processes, clock) hit both sides alike."""
    stop, enabled, counter, policy = threading.Event(), threading.Event(), [0], []
    th = threading.Thread(target=learning_thread,
                          args=(learner, rate, stop, enabled, counter, low_priority, policy), daemon=True)
    th.start()
    off, on, on_time = [], [], 0.0
    for i in range(max(1, n // block)):
        for learning in ((False, True) if i % 2 == 0 else (True, False)):
            if learning:
                enabled.set()
                t0 = time.perf_counter()
                on += timed_paced(tick, block, hz, warmup=0)
                on_time += time.perf_counter() - t0
                enabled.clear()
            else:
                off += timed_paced(tick, block, hz, warmup=0)
    stop.set()
    enabled.set()
    th.join()
    off_p99, on_p99 = (common.pct(np.asarray(x) * 1e3, 99) for x in (off, on))
    return {"off": off, "on": on, "policy": policy[0] if policy else "normal",
            "achieved_steps_per_s": counter[0] / on_time, "off_p99_ms": off_p99, "on_p99_ms": on_p99,
            "p99_rise_pct": 100.0 * (on_p99 / off_p99 - 1.0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=2000)
    ap.add_argument("--learn-rate", type=float, nargs="+", default=[5.0, 20.0, 0.0],
                    help="background learning budgets (steps/s) to measure; 0 = unlimited")
    ap.add_argument("--paced-ticks", type=int, default=600,
                    help="ticks per side (off, on) and learning setting, at --tick-hz")
    ap.add_argument("--tick-hz", type=float, default=30.0,
                    help="tick rate for the learning off/on comparison (the camera rate)")
    ap.add_argument("--cores", type=int, default=1, help="pin the process to this many cores")
    ap.add_argument("--rollouts", type=int, default=200)
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))
    torch.set_num_threads(1)
    enc, wm, source = load_models()
    wm.eval()
    rng = np.random.default_rng(0)
    image = torch.rand(1, 3, 64, 64)
    proprio = np.array([[0.5, -1.0, 1.0, 0.0, 0.3, 0.2]], np.float32)
    action = np.array([0.4, 0.3], np.float32)
    res: dict = {"model": source, "cores": args.cores, "torch_threads": 1,
                 "encoder_parameters": sum(p.numel() for p in enc.parameters()),
                 "world_model_parameters": wm.num_parameters(), "horizon": HORIZON}

    # 1. encoder variants (single 64x64 frame)
    variants = {}
    for mode in ("eager", "channels_last", "frozen"):
        fn = inference_encoder(enc, mode)
        with torch.inference_mode():
            variants[mode] = with_cpu(timed(lambda fn=fn: fn(image), args.ticks // 2))
    res["encoder_1x64x64"] = variants
    best = min(variants, key=lambda m: variants[m]["cpu_p50_ms"])
    res["encoder_mode_used"] = best
    fast_enc = inference_encoder(enc, best)

    # 2. tick with online learning off: NumPy snapshot path vs torch eager path
    snap = WorldModelSnapshot(wm)
    tick = make_tick(fast_enc, lambda: snap, image, proprio, action)
    res["tick_with_encoder_back_to_back"] = with_cpu(timed(tick, args.ticks))
    embedding = rng.normal(size=64).astype(np.float32)
    res["node_tick_back_to_back"] = with_cpu(timed(make_node_tick(lambda: snap, proprio, action, embedding),
                                                   args.ticks))
    res["tick_hz"] = args.tick_hz
    res["tick_learning_off"] = with_cpu(timed_paced(make_node_tick(lambda: snap, proprio, action, embedding),
                                                    args.paced_ticks, args.tick_hz))
    res["tick_learning_off_torch_eager_model"] = with_cpu(
        timed(make_torch_tick(fast_enc, wm, image, proprio, action), args.ticks))
    with torch.inference_mode():
        res["world_model_only_tick_numpy"] = with_cpu(timed(
            lambda: snap.rollout(snap.encode(np.zeros((1, 64), np.float32), proprio),
                                 np.repeat(action[None, None], HORIZON, 1)), args.ticks))

    # 3. planner batch: 256 samples x 15 steps
    z = torch.from_numpy(snap.encode(rng.normal(size=(256, 64)).astype(np.float32),
                                     np.repeat(proprio, 256, 0)))
    acts = torch.from_numpy(rng.uniform(-1, 1, (256, HORIZON, 2)).astype(np.float32))
    planner = {}
    with torch.inference_mode():
        for m in (1, 2, wm.config.ensemble):
            planner[f"torch_members_{m}"] = with_cpu(
                timed(lambda m=m: wm.rollout(z, acts, members=m), args.rollouts))
        zn, an = z.numpy(), acts.numpy()
        for m in (1, wm.config.ensemble):
            planner[f"numpy_members_{m}"] = with_cpu(
                timed(lambda m=m: snap.rollout(zn, an, members=m), args.rollouts // 2))
    res["planner_rollout_256x15"] = planner

    # 4. online learning: unconstrained gradient steps/s, then ticks with learning at a budget
    learner = OnlineLearner(WorldModel(wm.config), lr=3e-4, buffer_size=5000, batch_size=32, grad_clip=1e9)
    learner.model.load_state_dict(wm.state_dict())
    fill_learner(learner, 2000)
    steps = timed(learner.train_step, 300, warmup=10)
    res["train_step_alone"] = {**with_cpu(steps), "steps_per_s": 1.0 / float(np.mean(steps)),
                               "cpu_steps_per_s": 1.0 / float(np.mean(CPU_TIMES))}
    res["tick_learning_on"] = {}
    on_samples, all_off = {}, []
    switch = sys.getswitchinterval()
    tick = make_node_tick(lambda: learner.snapshot, proprio, action, embedding)
    for low_priority in (False, True):
        for rate in args.learn_rate:
            if not low_priority and rate != args.learn_rate[0]:
                continue  # normal priority only as the reference: it is not how the node runs
            ab = ab_blocks(tick, learner, rate, low_priority, args.paced_ticks, args.tick_hz)
            sys.setswitchinterval(switch)
            key = (f"{rate:g}_steps_per_s" if rate > 0 else "unlimited") + (
                "_low_priority_thread" if low_priority else "")
            on_samples[key] = ab["on"]
            all_off += ab["off"]
            res["tick_learning_on"][key] = {
                **common.summary_ms(ab["on"]), "achieved_steps_per_s": ab["achieved_steps_per_s"],
                "thread_policy": ab["policy"], "paired_off_p99_ms": ab["off_p99_ms"],
                "p99_rise_pct": ab["p99_rise_pct"]}
    # 5. record-level DP-SGD (world_model_node dp_noise_multiplier > 0): per-sample gradients (torch.func),
    # clip, noise, Poisson sampling of the same buffer; steps/s alone and the tick p99 rise at the first budget
    dp = OnlineLearner(WorldModel(wm.config), lr=3e-4, buffer_size=5000, batch_size=32, grad_clip=1e9,
                       dp_noise_multiplier=1.0, dp_clip_norm=1.0)
    dp.model.load_state_dict(wm.state_dict())
    fill_learner(dp, 2000)
    steps = timed(dp.train_step, 150, warmup=5)
    res["dpsgd_train_step_alone"] = {**with_cpu(steps), "steps_per_s": 1.0 / float(np.mean(steps)),
                                     "cpu_steps_per_s": 1.0 / float(np.mean(CPU_TIMES)),
                                     "slowdown_vs_plain": res["train_step_alone"]["steps_per_s"]
                                     * float(np.mean(steps))}
    # the same with DP-SGD in the 40-coordinate output-scale subspace (trainable="dynamics_out_scale", what
    # the fleet experiment's DP method fine-tuned before its 296-coordinate dynamics_out_scale_state_tied_s10;
    # not re-measured for that one): per-sample gradients of the output layer only
    dps = OnlineLearner(WorldModel(wm.config), lr=1e-2, buffer_size=5000, batch_size=32, grad_clip=1e9,
                        dp_noise_multiplier=1.0, dp_clip_norm=0.2, trainable="dynamics_out_scale")
    dps.model.load_state_dict(wm.state_dict())
    fill_learner(dps, 2000)
    steps_s = timed(dps.train_step, 150, warmup=5)
    res["dpsgd_subspace_train_step_alone"] = {**with_cpu(steps_s), "steps_per_s": 1.0 / float(np.mean(steps_s)),
                                              "cpu_steps_per_s": 1.0 / float(np.mean(CPU_TIMES)),
                                              "slowdown_vs_plain": res["train_step_alone"]["steps_per_s"]
                                              * float(np.mean(steps_s))}
    ab = ab_blocks(make_node_tick(lambda: dp.snapshot, proprio, action, embedding), dp, args.learn_rate[0], True,
                   args.paced_ticks, args.tick_hz)
    sys.setswitchinterval(switch)
    res["dpsgd_tick_learning_on"] = {**common.summary_ms(ab["on"]), "rate_steps_per_s": args.learn_rate[0],
                                     "achieved_steps_per_s": ab["achieved_steps_per_s"],
                                     "thread_policy": ab["policy"], "paired_off_p99_ms": ab["off_p99_ms"],
                                     "p99_rise_pct": ab["p99_rise_pct"]}
    res["tick_learning_off_all_blocks"] = common.summary_ms(all_off)
    res["rss_mb"] = common.rss_mb(os.getpid())
    common.write("world_model", res)
    plot(res, on_samples)
    return 0


def plot(res: dict, on_samples: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = ["tick_learning_off"] + [f"tick_learning_on/{k}" for k in res["tick_learning_on"]]
    vals = [res["tick_learning_off"]] + list(res["tick_learning_on"].values())
    x = np.arange(len(vals))
    a.bar(x - 0.2, [v["p50_ms"] for v in vals], 0.4, label="p50")
    a.bar(x + 0.2, [v["p99_ms"] for v in vals], 0.4, label="p99")
    a.axhline(3.0, color="r", ls="--", lw=0.8, label="3 ms budget")
    labels = [n.replace("tick_learning_", "").replace("_steps_per_s", " st/s").replace(
        "_low_priority_thread", "\nSCHED_IDLE") + ("" if "priority" in n or n.endswith("off") else "\nnormal prio")
        for n in names]
    a.set_xticks(x, labels, fontsize=8)
    a.set_ylabel("ms per tick (1 core)")
    a.set_title(f"world-model node tick at {res['tick_hz']:g} Hz, learning off/on", fontsize=9)
    a.legend(fontsize=8)
    pl = res["planner_rollout_256x15"]
    b.bar(range(len(pl)), [v["p50_ms"] for v in pl.values()], 0.4, label="p50")
    b.bar(np.arange(len(pl)) + 0.4, [v["p99_ms"] for v in pl.values()], 0.4, label="p99")
    b.set_xticks(np.arange(len(pl)) + 0.2, [k.replace("_members_", " m=") for k in pl], fontsize=8)
    b.set_ylabel("ms per rollout")
    b.set_title("planner batch 256 x 15 steps", fontsize=9)
    b.legend(fontsize=8)
    fig.tight_layout()
    path = common.out_dir() / "world_model.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
