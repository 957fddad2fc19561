"""Online-adaptation experiment: does surprise fall when the robot learns online in a changed cell?

The robot drives the exploration policy for ``minutes`` of sim time in a held-out layout whose floor
friction is changed (default 0.2; training saw 0.6-1.0). Two copies of the shipped world model see
the same stream: ``frozen`` never learns, ``online`` runs :class:`OnlineLearner` at the node's
default budget (``steps_per_s`` gradient steps per second of sim time, lr 3e-4, batch 32). Logged:
surprise (one-step error of the previous prediction against the latent actually observed, as
``world_state.surprise``: mean squared latent error) for both, and at regular intervals the one-step
error of both on fixed held-out episodes (same friction, other start poses, never trained on) and on
nominal-friction episodes (forgetting check). Writes ``adaptation.json`` and ``adaptation.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys

import numpy as np
import torch

from sakura_nexus.models.checkpoint import Checkpoint, load_checkpoint
from sakura_nexus.models.data import MODEL_DT, ExplorationPolicy, Trajectories, collect, proprio_of
from sakura_nexus.models.evaluation import embed_frames
from sakura_nexus.models.losses import prediction_error
from sakura_nexus.models.online import OnlineLearner, Transition
from sakura_nexus.models.world_model import WorldModel


@torch.no_grad()
def _one_step_error(model: WorldModel, emb: torch.Tensor, data: Trajectories) -> dict[str, float]:
    z = model.encode(emb, torch.from_numpy(data.proprio))
    zd = z.shape[-1]
    pred, _ = model.step(z[:, :-1].reshape(-1, zd), torch.from_numpy(data.actions).reshape(-1, 2))
    target = z[:, 1:].reshape(-1, zd)
    return {"mse": float((pred - target).square().mean()),
            "normalised": float(prediction_error(pred, target, model.error_scale).mean()),
            "velocity_mse": float((pred[:, 4:6] - target[:, 4:6]).square().mean())}


def run_adaptation(checkpoint: Checkpoint | str | None = None, out_dir: str = "out/adaptation",
                   friction: float = 0.2, minutes: float = 5.0, steps_per_s: float = 5.0, lr: float = 3e-4,
                   layout_seed: int = 200, eval_every_s: float = 30.0, seed: int = 0,
                   progress: bool = True) -> dict:
    from sakura_nexus.sim import CellConfig, FactoryCell

    """Run the experiment for ``checkpoint`` (a loaded Checkpoint, a checkpoint directory, or None
    for the shipped models/); returns the summary (also written with the full log)."""
    torch.manual_seed(seed)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    enc = ckpt.encoder.eval()
    frozen = copy.deepcopy(ckpt.world_model).eval()
    learner = OnlineLearner(copy.deepcopy(ckpt.world_model), lr=lr, buffer_size=5000, batch_size=32,
                            grad_clip=10.0, min_samples=200, seed=seed)
    eval_sets = {"changed": collect([layout_seed + 1], 4, 100, seed + 7, floor_friction=friction, workers=1),
                 "nominal": collect([layout_seed + 1], 4, 100, seed + 7, workers=1)}
    eval_emb = {k: embed_frames(enc, v.images) for k, v in eval_sets.items()}

    def evaluate_now(t: float) -> dict:
        row = {"time_s": t}
        for k in eval_sets:
            row[f"frozen_{k}"] = _one_step_error(frozen, eval_emb[k], eval_sets[k])
            row[f"online_{k}"] = _one_step_error(learner.model, eval_emb[k], eval_sets[k])
        return row

    cell = FactoryCell(CellConfig(seed=layout_seed, floor_friction=friction), 64, 64)
    rng = np.random.default_rng([seed, layout_seed])
    cell.set_pose(*cell.sample_free_pose(rng, clearance=0.3))
    policy = ExplorationPolicy(rng)
    n_steps = int(round(minutes * 60 / MODEL_DT))
    log = {"time_s": [], "surprise_frozen": [], "surprise_online": [], "surprise_norm_frozen": [],
           "surprise_norm_online": [], "collided": []}
    evals = [evaluate_now(0.0)]
    grad_credit, collided = 0.0, False
    preds = None  # the frozen and the online model's predictions of the next latent

    def embed(img: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return enc(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0).numpy()[0]

    emb, prop = embed(cell.render()), proprio_of(cell.pose, cell.velocity)
    bar = range(n_steps)
    if progress:
        from tqdm import tqdm

        bar = tqdm(bar, desc=f"adaptation (friction {friction})", unit="step", file=sys.stderr)
    for i in bar:
        snap = learner.snapshot
        z_f = frozen.encode(torch.from_numpy(emb[None]), torch.from_numpy(prop[None]))
        z_o = snap.encode(emb[None], prop[None])
        if preds is not None:
            scale = frozen.error_scale.numpy()
            for name, pred, z in (("frozen", preds[0], z_f.detach().numpy()), ("online", preds[1], z_o)):
                err = (z[0] - pred) ** 2
                log[f"surprise_{name}"].append(float(err.mean()))
                log[f"surprise_norm_{name}"].append(float((err / scale ** 2).mean()))
            log["time_s"].append(round(i * MODEL_DT, 3))
            log["collided"].append(bool(collided))
        a = policy(cell.pose, cell.layout, cell.size[0], collided)
        with torch.no_grad():
            pred_f = frozen.step(z_f, torch.from_numpy(a[None]))[0][0].numpy()
        pred_o = snap.step(z_o, a[None])[0][0]
        res = cell.step(float(a[0]), float(a[1]), MODEL_DT)
        collided = res.collided
        new_emb, new_prop = embed(cell.render()), proprio_of(res.pose, res.vel)
        learner.add(Transition(emb, prop, a, new_emb, new_prop, collided))
        grad_credit += steps_per_s * MODEL_DT
        while grad_credit >= 1.0:
            learner.train_step()
            grad_credit -= 1.0
        emb, prop, preds = new_emb, new_prop, (pred_f, pred_o)
        t = (i + 1) * MODEL_DT
        if t % eval_every_s < MODEL_DT / 2 or i == n_steps - 1:
            evals.append(evaluate_now(round(t, 1)))
    cell.close()
    result = summarise(log, evals, friction, minutes, steps_per_s, lr, layout_seed, learner)
    result["figure"] = str(pathlib.Path(out_dir) / "adaptation.png")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adaptation.json").write_text(json.dumps({**result, "log": log}, indent=1) + "\n")
    plot_adaptation(log, evals, result, out / "adaptation.png")
    return result


def summarise(log: dict, evals: list[dict], friction: float, minutes: float, steps_per_s: float, lr: float,
              layout_seed: int, learner: OnlineLearner) -> dict:
    t = np.asarray(log["time_s"])
    first, last = t < 60.0, t >= t.max() - 60.0

    def mean(key: str, mask: np.ndarray) -> float:
        return float(np.asarray(log[key])[mask].mean())

    surprise = {f"{name}_{w}": mean(key, m) for name, key in (
        ("frozen", "surprise_norm_frozen"), ("online", "surprise_norm_online"),
        ("frozen_mse", "surprise_frozen"), ("online_mse", "surprise_online"))
        for w, m in (("first_minute", first), ("last_minute", last))}
    e0, e1 = evals[0], evals[-1]
    return {
        "condition": {"floor_friction": friction, "training_friction": "0.6-1.0 (seeded per layout)",
                      "layout_seed": layout_seed, "sim_minutes": minutes, "grad_steps_per_sim_s": steps_per_s,
                      "lr": lr, "trainable": learner.trainable},
        "surprise": surprise,
        "online_vs_frozen_last_minute": surprise["online_last_minute"] / surprise["frozen_last_minute"],
        "heldout_changed_normalised_error": {"before": e0["online_changed"]["normalised"],
                                             "after_online": e1["online_changed"]["normalised"],
                                             "frozen": e1["frozen_changed"]["normalised"]},
        "heldout_nominal_normalised_error": {"before": e0["online_nominal"]["normalised"],
                                             "after_online": e1["online_nominal"]["normalised"]},
        "heldout_changed_velocity_mse": {"before": e0["online_changed"]["velocity_mse"],
                                         "after_online": e1["online_changed"]["velocity_mse"]},
        "learner": learner.stats(),
        "evals": evals,
    }


def plot_adaptation(log: dict, evals: list[dict], result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(log["time_s"])
    win = 200  # 20 s moving average
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, color in (("frozen", "tab:gray"), ("online", "tab:blue")):
        y = np.asarray(log[f"surprise_norm_{name}"])
        if len(y) >= win:
            y = np.convolve(y, np.ones(win) / win, mode="valid")
            a.plot(t[win - 1:], y, color=color, label=f"{name} model")
    a.set_xlabel("sim time [s]")
    a.set_ylabel("surprise (normalised one-step error), 20 s mean")
    a.set_yscale("log")
    a.set_title(f"driving at floor friction {result['condition']['floor_friction']}", fontsize=10)
    a.legend()
    et = [e["time_s"] for e in evals]
    for key, style, label in (("online_changed", "o-", "online, changed friction"),
                              ("frozen_changed", "s--", "frozen, changed friction"),
                              ("online_nominal", "^-", "online, nominal friction"),
                              ("frozen_nominal", "v--", "frozen, nominal friction")):
        b.plot(et, [e[key]["normalised"] for e in evals], style, label=label, ms=4)
    b.set_xlabel("sim time [s]")
    b.set_ylabel("held-out one-step error (normalised)")
    b.set_title("held-out episodes (never trained on)", fontsize=10)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def adaptation_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sakura_nexus.experiments.adaptation",
                                description=__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="checkpoint directory (default: shipped models/)")
    p.add_argument("--out", default="out/adaptation")
    p.add_argument("--friction", type=float, default=0.2)
    p.add_argument("--minutes", type=float, default=5.0, help="sim minutes of online learning")
    p.add_argument("--steps-per-s", type=float, default=5.0, help="gradient steps per sim second")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    r = run_adaptation(a.models, a.out, a.friction, a.minutes, a.steps_per_s, a.lr, seed=a.seed,
                       progress=not a.no_progress)
    keys = ("surprise", "online_vs_frozen_last_minute", "heldout_changed_normalised_error",
            "heldout_nominal_normalised_error")
    print(json.dumps({k: r[k] for k in keys}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(adaptation_main())
