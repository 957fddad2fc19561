"""``sakura-nexus train --bag PATH [PATH...]``: fine-tune the encoder + world model on recorded bags.

The bags become the same :class:`~sakura_nexus.models.data.Trajectories` the sim collector produces
(:mod:`.dataset`) and go through the same two-stage trainer (:mod:`sakura_nexus.models.training`),
starting from a checkpoint (default: the shipped ``models/``). The last windows of each bag in time
are held out for the before/after metrics. The checkpoint + manifest (bag names, sha256, topics,
time ranges) are written to a temporary directory next to ``--models`` and renamed into place only
when everything succeeded, so a failed run never leaves a partial model behind.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace

from .dataset import AlignConfig, BagData, load_bag, no_usable_segment
from .reader import BagError, TopicConfig, bag_sha256, storage_files


@dataclass
class BagTrainConfig:
    bags: list = field(default_factory=list)
    topics: TopicConfig = field(default_factory=TopicConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    init: str = ""  # checkpoint to fine-tune; "" = the shipped models/, "none" = from scratch
    models_dir: str = "out/train_bag/models"
    out_dir: str = "out/train_bag"
    seed: int = 0
    threads: int = 1
    joint_iters: int = 200  # fine-tuning: a fraction of the from-scratch schedule, at lower rates
    wm_iters: int = 800
    lr: float = 1e-4
    wm_lr: float = 3e-4
    decoder_warmup: int = 300  # fine-tuning: iterations of the fresh recon decoder alone, before the stages
    test_fraction: float = 0.15
    eval_horizon: int = 10
    progress: bool = True


def split(items: list[BagData], cfg: BagTrainConfig):
    """Per bag, the last windows in time (at least one, if the bag has two) are the test set; train
    windows that overlap a test window are left out. -> (train, test, test_is_train)."""
    from sakura_nexus.models.data import Trajectories

    T = cfg.align.segment_steps
    train, test = [], []
    for b in items:
        n = len(b.window_starts)
        n_test = min(n - 1, max(1, math.ceil(cfg.test_fraction * n))) if n > 1 else 0
        test_idx = list(range(n - n_test, n))
        test_ranges = [(b.window_starts[i], b.window_starts[i] + T) for i in test_idx]
        train_idx = [i for i in range(n - n_test) if all(
            b.window_starts[i] + T <= lo or b.window_starts[i] >= hi for lo, hi in test_ranges)]
        if not train_idx:  # tiny bag: train on what there is
            train_idx = list(range(n - n_test))

        def pick(d, idx):
            return Trajectories(*(getattr(d, f)[idx] for f in (
                "images", "proprio", "actions", "collided", "layout_seeds", "friction")))

        train.append(pick(b.data, train_idx))
        if test_idx:
            test.append(pick(b.data, test_idx))
    train_d = Trajectories.concat(train)
    if not test:
        return train_d, train_d, True
    return train_d, Trajectories.concat(test), False


def warm_up_decoder(trainer, iters: int, batch: int = 64) -> None:
    """Fit the training-only reconstruction decoder to the checkpoint's (frozen) latent first: a
    fresh decoder's large early gradients would otherwise reshape the pretrained latent."""
    import torch
    import torch.nn.functional as F

    from sakura_nexus.models.evaluation import embed_frames
    from sakura_nexus.models.losses import learned_part

    with torch.no_grad():
        emb = embed_frames(trainer.encoder, trainer.data.images)
        z = learned_part(trainer.model.encode(emb, trainer.proprio)).reshape(-1, trainer.decoder.net[0].in_features)
    thumbs = trainer.thumbs.reshape(len(z), -1)
    opt = torch.optim.AdamW(trainer.decoder.parameters(), lr=1e-3, weight_decay=trainer.cfg.weight_decay)
    for _ in range(iters):
        i = torch.from_numpy(trainer.rng.integers(0, len(z), batch))
        loss = F.mse_loss(trainer.decoder(z[i]), thumbs[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _summary(metrics: dict, horizon: int) -> dict:
    out = {"one_step_fvu": round(metrics["one_step_fvu"]["all"], 4),
           f"{horizon}_step_fvu": round(metrics[f"{horizon}_step_fvu"]["all"], 4)}
    pose = metrics.get("pose", {})
    for k in ("one_step", f"{horizon}_step"):
        if k in pose:
            out[f"{k}_position_rmse_m"] = round(pose[k]["position_rmse_m"], 4)
    col = metrics.get("collision", {}).get("head", {})
    if "f1" in col:
        out["collision_f1"] = col["f1"]
    return out


def _bag_entry(b: BagData) -> dict:
    p = pathlib.Path(b.path)
    files = storage_files(p)
    storage = sorted({f.suffix.lstrip(".") for f in files if f.suffix in (".mcap", ".db3")})
    r = b.report
    return {"name": p.name, "path": str(p.resolve()), "sha256": bag_sha256(p),
            "storage": {"mcap": "mcap", "db3": "sqlite3"}.get(storage[0], storage[0]) if storage else "",
            "bytes": sum(f.stat().st_size for f in files), "topics": r["topics"],
            "time_range_s": r["time_range_s"], "aligned_duration_s": r["aligned_duration_s"],
            "windows": r["segments"]["windows"], "steps_used": r["segments"]["steps_used"],
            "dropped": r["dropped"], "read_error": r["read_error"]}


def _install(tmp: pathlib.Path, target: pathlib.Path) -> None:
    """Move the finished checkpoint directory into place (the old one, if any, is replaced)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def train_from_bags(cfg: BagTrainConfig) -> dict:
    """Load the bags, fine-tune, evaluate before/after, write checkpoint + manifest + metrics.
    Raises BagError (nothing written) when no bag gives a usable window."""
    import torch

    from sakura_nexus.models.checkpoint import ENCODER_FILE, MANIFEST_FILE, WORLD_MODEL_FILE, load_checkpoint
    from sakura_nexus.models.evaluation import evaluate
    from sakura_nexus.models.serialization import atomic_write
    from sakura_nexus.models.training import (
        TrainConfig,
        _Timer,
        _Trainer,
        git_revision,
        model_payloads,
        plot_losses,
        run_stages,
    )

    if not cfg.bags:
        raise BagError("no bag given")
    timer = _Timer()
    loaded: list[BagData] = []
    with timer("read_bags"):
        for path in cfg.bags:
            b = load_bag(path, cfg.topics, cfg.align, cfg.progress)
            loaded.append(b)
            if b.data is None:
                print(f"sakura-nexus train: {no_usable_segment(b.report, cfg.align)}", file=sys.stderr)
    usable = [b for b in loaded if b.data is not None]
    if not usable:
        raise BagError("no usable segment in any bag: " + "; ".join(no_usable_segment(b.report, cfg.align)
                                                                     for b in loaded))
    train_data, test_data, test_is_train = split(usable, cfg)
    has_contacts = all(b.report["has_contacts"] for b in usable)
    # only negative collision labels (a run without a single contact) would teach the head that
    # nothing is ever hit: then the collision loss is off, as without a contacts topic
    train_collisions = has_contacts and bool(train_data.collided.any())

    def init_ckpt():
        if cfg.init == "none":
            return None
        return load_checkpoint(cfg.init or None)

    shipped = init_ckpt()
    T = cfg.align.segment_steps
    tcfg = TrainConfig(seed=cfg.seed, threads=cfg.threads, joint_iters=cfg.joint_iters, wm_iters=cfg.wm_iters,
                       lr=cfg.lr, wm_lr=cfg.wm_lr, joint_seq=min(5, T), wm_seq=min(10, T),
                       w_collision=3.0 if train_collisions else 0.0, eval_horizon=min(cfg.eval_horizon, T),
                       adaptation_minutes=0.0, progress=cfg.progress,
                       world_model=asdict(shipped.world_model.config) if shipped else {})
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        metrics: dict = {}
        if shipped is not None:
            with timer("evaluate_before"):
                metrics["before"] = evaluate(shipped.encoder, shipped.world_model, test_data, tcfg.eval_horizon,
                                             reference=train_data)
        trainer = _Trainer(tcfg, train_data, init=init_ckpt())
        if shipped is not None and cfg.decoder_warmup:
            with timer("decoder_warmup"):
                warm_up_decoder(trainer, cfg.decoder_warmup)
        enc, wm = run_stages(trainer, tcfg, timer)
        with timer("evaluate_after"):
            metrics["after"] = evaluate(enc, wm, test_data, tcfg.eval_horizon, reference=train_data)
    finally:
        torch.set_num_threads(old_threads)
    bag_hours = sum(b.report["aligned_duration_s"] for b in usable) / 3600.0
    timing = {**timer.timings, "total": timer.total()}
    train_s = sum(timer.timings[k]["wall"] for k in ("joint", "dynamics"))
    summary = {"before": _summary(metrics["before"], tcfg.eval_horizon) if "before" in metrics else None,
               "after": _summary(metrics["after"], tcfg.eval_horizon),
               "test_is_train": test_is_train, "bag_hours": round(bag_hours, 4),
               "train_transitions": train_data.n_transitions, "test_transitions": test_data.n_transitions,
               "timing_s": timing,
               "seconds_per_bag_hour": {"read": round(timer.timings["read_bags"]["wall"] / bag_hours, 1),
                                        "train": round(train_s / bag_hours, 1)} if bag_hours else None}

    enc_bytes, wm_bytes, entries = model_payloads(enc, wm)
    manifest = {
        "format": 1,
        "produced_by": "sakura-nexus train --bag",
        "git_revision": git_revision(),
        "torch_version": torch.__version__,
        "seed": cfg.seed,
        **entries,
        "init_checkpoint": None if shipped is None else {
            "path": str(pathlib.Path(cfg.init).resolve()) if cfg.init else "shipped models/",
            "encoder_sha256": shipped.manifest.get("encoder", {}).get("sha256"),
            "world_model_sha256": shipped.manifest.get("world_model", {}).get("sha256")},
        "data": {"source": "rosbag2", "bags": [_bag_entry(b) for b in loaded],
                 "model_dt": cfg.align.model_dt, "align": asdict(cfg.align),
                 "train_windows": int(train_data.actions.shape[0]), "test_windows": int(test_data.actions.shape[0]),
                 "train_transitions": train_data.n_transitions, "test_transitions": test_data.n_transitions,
                 "test_is_train": test_is_train, "contacts": has_contacts,
                 "collision_head_trained": train_collisions,
                 "train_collision_rate": float(train_data.collided.mean()),
                 "camera": [cfg.align.image_size, cfg.align.image_size]},
        "train_config": {k: v for k, v in asdict(tcfg).items()
                         if k not in ("out_dir", "models_dir", "progress", "cache_dir")},
        "reproduce": "sakura-nexus train --bag " + " ".join(str(p) for p in cfg.bags),
        "metrics": {"summary": summary, **metrics},
    }
    target = pathlib.Path(cfg.models_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        atomic_write(tmp / ENCODER_FILE, enc_bytes)
        atomic_write(tmp / WORLD_MODEL_FILE, wm_bytes)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        load_checkpoint(tmp)  # what the nodes will do: it must load and verify
        _install(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    out = pathlib.Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(manifest["metrics"], indent=2) + "\n")
    (out / "history.json").write_text(json.dumps(trainer.history) + "\n")
    (out / "bags.json").write_text(json.dumps([b.report for b in loaded], indent=2, default=str) + "\n")
    plot_losses(trainer.history, out / "loss.png")
    return summary


def add_bag_arguments(p: argparse.ArgumentParser) -> None:
    """Bag, topic and alignment flags (shared by ``train --bag`` and ``inspect --bag``)."""
    t, a = TopicConfig(), AlignConfig()
    p.add_argument("--bag", nargs="+", required=True, metavar="PATH",
                   help="rosbag2 bags: directories or .mcap / .db3 files")
    p.add_argument("--image-topic", default=t.image, help="sensor_msgs/Image or CompressedImage "
                   "(default: /camera/image_raw, else /camera/image_raw/compressed)")
    p.add_argument("--odom-topic", default=t.odom, help="nav_msgs/Odometry (default %(default)s)")
    p.add_argument("--cmd-topic", default=t.cmd, help="geometry_msgs/Twist or TwistStamped (default %(default)s)")
    p.add_argument("--contacts-topic", default=t.contacts,
                   help="std_msgs/Bool, optional; '' = none (default %(default)s)")
    p.add_argument("--tolerance", type=float, default=a.tolerance,
                   help="max |stamp - grid time| of a frame / odometry sample [s] (default %(default)s)")
    p.add_argument("--cmd-timeout", type=float, default=a.cmd_timeout,
                   help="a command older than this counts as zero [s] (default %(default)s)")
    p.add_argument("--max-reorder", type=float, default=a.max_reorder,
                   help="out-of-order stamps up to this far back are re-sorted, older ones dropped [s]")
    p.add_argument("--segment-steps", type=int, default=a.segment_steps,
                   help="transitions per training window (default %(default)s)")
    p.add_argument("--no-progress", action="store_true")


def configs_from(a: argparse.Namespace) -> tuple[TopicConfig, AlignConfig]:
    topics = TopicConfig(image=a.image_topic, odom=a.odom_topic, cmd=a.cmd_topic, contacts=a.contacts_topic)
    align = replace(AlignConfig(), tolerance=a.tolerance, cmd_timeout=a.cmd_timeout, max_reorder=a.max_reorder,
                    segment_steps=max(2, a.segment_steps))
    return topics, align


def bag_train_main(argv: list[str] | None = None) -> int:
    d = BagTrainConfig()
    p = argparse.ArgumentParser(prog="sakura-nexus train --bag", description=__doc__.splitlines()[0])
    add_bag_arguments(p)
    p.add_argument("--init", default=d.init,
                   help="checkpoint to fine-tune (default: the shipped models/; 'none' = from scratch)")
    p.add_argument("--models", default=d.models_dir, help="output checkpoint directory (default %(default)s)")
    p.add_argument("--out", default=d.out_dir, help="metrics.json, loss.png, bags.json (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads")
    p.add_argument("--joint-iters", type=int, default=d.joint_iters)
    p.add_argument("--wm-iters", type=int, default=d.wm_iters)
    p.add_argument("--lr", type=float, default=d.lr, help="joint-stage learning rate")
    p.add_argument("--wm-lr", type=float, default=d.wm_lr, help="dynamics-stage learning rate")
    a = p.parse_args(argv)
    topics, align = configs_from(a)
    cfg = BagTrainConfig(bags=a.bag, topics=topics, align=align, init=a.init, models_dir=a.models, out_dir=a.out,
                         seed=a.seed, threads=a.threads, joint_iters=a.joint_iters, wm_iters=a.wm_iters,
                         lr=a.lr, wm_lr=a.wm_lr, progress=not a.no_progress)
    t0 = time.monotonic()
    try:
        summary = train_from_bags(cfg)
    except BagError as e:
        print(f"sakura-nexus train: {e}\nno checkpoint written.", file=sys.stderr)
        return 2
    print(json.dumps({**summary, "models": str(pathlib.Path(cfg.models_dir).resolve()),
                      "wall_s": round(time.monotonic() - t0, 1)}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(bag_train_main())
