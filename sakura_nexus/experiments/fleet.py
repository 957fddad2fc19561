"""Fleet experiment (ROS-free): 4 simulated sites, federated vs local-only vs centralized learning.

``python -m sakura_nexus fleet-experiment [--quick] [--out out/fleet]``

Scenario: the fleet has been switched to a robot variant the shipped world model never saw (a heavier
payload on derated wheel motors, ``ExperimentConfig.robot``: the same at every site). Four MuJoCo
factory cells that differ in floor friction (0.3 / 0.6 / 0.9 / 1.2), lighting, textures and
obstacle layout (each a different :class:`~sakura_nexus.sim.CellConfig`; none of the layouts was in
the shipped model's training set) each collect a little data with the new robot (3 episodes of
10 s) with the exploration policy of :mod:`sakura_nexus.models.data`. Frames are embedded once with
the shipped encoder. Every method starts from the shipped world model and learns its
online-trainable part exactly as a robot does (:class:`~sakura_nexus.models.online.OnlineLearner`,
``trainable="dynamics"``, its guarded Adam steps on replay minibatches), with the same data, seeds,
minibatch size, learning-rate schedule and number of gradient steps:

``local``       each site trains alone; reported: the mean over sites of each site model's error
                on the all-site held-out set.
``fedbuff``     every round each site takes ``local_steps`` steps from the global model; its delta
                of the trainable coordinates goes through the robot uplink path (L2 clip
                ``uplink_clip``, :class:`ErrorFeedback` with codec ``topk0.015+q8``) and
                :meth:`FedBuffAggregator.submit_payload` (the code the Flower ServerApp runs,
                ``buffer_size`` = 4 sites); every site then adopts the new global model
                (``OnlineLearner.apply_global``, like a ModelUpdate).
``fedbuff_keep_local``  the same, but the untransmitted part of each delta stays in the robot's own
                weights (added back after ``apply_global``) instead of in a separate residual.
``fedavg``      dense float32 FedAvg as Flower's strategy does it: every site sends its whole model
                (``ndarrays_to_parameters``), the server takes the sample-weighted mean of the
                client models.
``central``     one learner on the pooled training data of all sites; ``4 * local_steps`` steps
                per round = the same number of gradient steps (and samples) as the fleet.
``fedbuff_dp``  ``fedbuff`` + server-side central DP in the aggregator (clip each site's
                contribution to C, Gaussian noise ``dp_noise * C``), epsilon at delta = 1e-5 from
                the RDP accountant (no subsampling amplification claimed: every site takes part in
                every release). C follows an a-priori rule (:func:`dp_clip_for`).

Headline metric (``PRIMARY``): the normalised one-step latent prediction error of the ensemble (the
dynamics term of the ``OnlineLearner`` loss) on held-out episodes of all four sites; the full
``OnlineLearner`` loss (+ collision BCE) is reported next to it. Both are evaluated on the whole
held-out set after every round (evaluation only: nothing is selected or tuned on it inside a run).
Outputs: ``fleet.json`` (all figures, curves, config) and ``fleet.png`` (loss curves per method,
upstream bytes per update per method). See ``docs/fleet_experiment.md``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from sakura_nexus.params import FEDERATED_SYNC, WORLD_MODEL

__all__ = ["METHODS", "ExperimentConfig", "SiteSpec", "default_sites", "experiment_main", "run_experiment"]

METHODS = ("local", "fedbuff", "fedbuff_keep_local", "fedavg", "central", "fedbuff_dp", "fedbuff_dpsgd")
PRIMARY = "dynamics"  # the headline metric: normalised one-step latent prediction error


@dataclass(frozen=True)
class SiteSpec:
    name: str
    layout_seed: int  # obstacle layout
    floor_friction: float
    light: float  # light intensity scale
    texture_seed: int  # colours / textures


def default_sites() -> list[SiteSpec]:
    # layout seeds 300+ are disjoint from the shipped model's train (0-9) and test (100-102) layouts
    return [SiteSpec("site-a", 300, 0.3, 0.65, 1300),
            SiteSpec("site-b", 301, 0.6, 0.9, 1301),
            SiteSpec("site-c", 302, 0.9, 1.1, 1302),
            SiteSpec("site-d", 303, 1.2, 1.35, 1303)]


@dataclass
class ExperimentConfig:
    rounds: int = 240
    local_steps: int = 5  # gradient steps per site per round
    batch_size: int = WORLD_MODEL["batch_size"].default  # the on-robot default
    lr: float = WORLD_MODEL["learning_rate"].default  # the on-robot default
    lr_schedule: str = "cosine"  # "constant" | "cosine": per-round cosine decay from lr to lr * lr_final
    lr_final: float = 0.05
    grad_clip: float = WORLD_MODEL["grad_clip"].default  # OnlineLearner guard (steps above it are skipped)
    trainable: str = "dynamics"  # the on-robot default
    train_episodes: int = 3  # per site: 30 s of driving with the new robot variant
    test_episodes: int = 2  # per site (held out: evaluated only, never selected on)
    val_episodes: int = 1  # per site: the validation split every method's checkpoint is selected on
    steps_per_episode: int = 100
    image_size: int = 64
    codec: str = FEDERATED_SYNC["codec"].default  # the robots' uplink codec
    error_feedback: str = "residual"  # "residual" (shipped ErrorFeedback) | "keep_local" | "off" (_Runner.fedbuff)
    uplink_clip: float = FEDERATED_SYNC["clip_norm"].default  # robot-side L2 clip of each delta
    exchange: str = "trainable"  # "trainable" (dynamics + collision head) | "all" (every parameter)
    dp_clip: float | None = None  # None: from dp_noise_budget (see dp_clip_for)
    dp_noise: float = 1.0
    dp_noise_budget: float = 0.01  # accumulated DP noise per coordinate / RMS of the trainable weights
    dp_delta: float = WORLD_MODEL["dp_delta"].default
    # record-level DP-SGD on every site's learner (fedbuff_dpsgd): the noise multiplier is the smallest
    # that keeps epsilon <= dpsgd_epsilon at dp_delta over ALL of a site's steps (rounds * local_steps)
    dpsgd_epsilon: float = 8.0
    # per-sample gradient L2 clip, here of the subspace coefficients' gradient (chosen on validation; the
    # node's dp_clip_norm default is for its full-dynamics DP)
    dpsgd_clip: float = 0.1
    dpsgd_noise: float | None = None  # None: from dpsgd_epsilon (privacy.noise_for_epsilon)
    # what DP-SGD fine-tunes (OnlineLearner trainable; the shipped model is public pretraining, and the
    # noise norm grows as sqrt(trained coordinates)), its lr (None: lr) and expected batch (q = batch / n)
    # 296 coordinates (OnlineLearner SUBSPACE_COLUMNS): per-member scales of the heading/velocity output
    # columns + bias (40) and those columns' full weights tied across members (256, Adam step x 0.1)
    dpsgd_trainable: str = "dynamics_out_scale_state_tied_s10"
    dpsgd_lr: float | None = 1e-2  # chosen on validation (docs/fleet_experiment.md)
    dpsgd_batch_size: int | None = None  # None: batch_size
    dpsgd_tie_members: bool = False  # one DP update shared by the ensemble members (OnlineLearner)
    dpsgd_local_steps: int | None = None  # DP-SGD steps per site per round (None: local_steps)
    seed: int = 0
    data_seed: int = 7
    sites: list[SiteSpec] = field(default_factory=default_sites)
    # RobotSpec overrides shared by the whole fleet: a heavier payload (8 -> 14 kg) on derated wheel
    # motors (0.5 -> 0.2 N m), a robot variant the shipped model never saw
    robot: dict = field(default_factory=lambda: {"mass": 14.0, "wheel_torque": 0.2})

    @classmethod
    def quick(cls) -> ExperimentConfig:
        return cls(rounds=60, local_steps=5, train_episodes=3, test_episodes=1, val_episodes=1,
                   steps_per_episode=80)


# --------------------------------------------------------------------------- data


def collect_site(site: SiteSpec, episodes: list[int], steps: int, data_seed: int, image_size: int = 64,
                 robot: dict | None = None):
    """Episodes of one site (its own CellConfig) with the exploration policy of ``models.data``.
    ``robot``: RobotSpec overrides (the fleet's robot variant), e.g. ``{"mass": 14.0}``."""
    import dataclasses

    from sakura_nexus.models.data import collect_episodes
    from sakura_nexus.sim import CellConfig
    from sakura_nexus.sim.layout import RobotSpec

    cfg = CellConfig(seed=site.layout_seed, floor_friction=site.floor_friction, light=site.light,
                     texture_seed=site.texture_seed, robot=dataclasses.replace(RobotSpec(), **(robot or {})))
    return collect_episodes(site.layout_seed, episodes, steps, data_seed, image_size=image_size, cell_config=cfg)


def _transitions(emb: np.ndarray, traj) -> dict[str, np.ndarray]:
    """(N, T+1, E) embeddings + trajectories -> flat transition arrays."""
    e = emb.shape[-1]
    return {"embedding": emb[:, :-1].reshape(-1, e), "proprio": traj.proprio[:, :-1].reshape(-1, 6),
            "action": traj.actions.reshape(-1, 2), "next_embedding": emb[:, 1:].reshape(-1, e),
            "next_proprio": traj.proprio[:, 1:].reshape(-1, 6),
            "collided": traj.collided.reshape(-1).astype(np.float32)}


def build_data(cfg: ExperimentConfig, encoder, encoder_sha: str, cache_dir: str | None, bar=None) -> dict:
    """{"train": [per-site transition dicts], "test": [...]}; cached as npz keyed by the settings."""
    import torch

    from sakura_nexus.models.evaluation import embed_frames

    key = hashlib.sha256(json.dumps({
        "sites": [asdict(s) for s in cfg.sites], "train": cfg.train_episodes, "test": cfg.test_episodes,
        "val": cfg.val_episodes, "steps": cfg.steps_per_episode, "image": cfg.image_size,
        "data_seed": cfg.data_seed, "encoder": encoder_sha, "robot": cfg.robot, "v": 3},
        sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"data_cache_{key}.npz") if cache_dir else None
    names = ("embedding", "proprio", "action", "next_embedding", "next_proprio", "collided")
    if path and os.path.isfile(path):
        z = np.load(path)
        data = {split: [{k: z[f"{split}{i}_{k}"] for k in names} for i in range(len(cfg.sites))]
                for split in ("train", "test", "val")}
        if bar is not None:
            bar.update(len(cfg.sites))
        return data | {"cached": True}
    data = {"train": [], "test": [], "val": []}
    n_tr, n_te, n_va = cfg.train_episodes, cfg.test_episodes, cfg.val_episodes
    for site in cfg.sites:
        traj = collect_site(site, list(range(n_tr + n_te + n_va)), cfg.steps_per_episode, cfg.data_seed,
                            cfg.image_size, cfg.robot)
        with torch.no_grad():
            emb = embed_frames(encoder, traj.images).numpy().astype(np.float32)
        tr = _transitions(emb, traj)
        per_ep = cfg.steps_per_episode
        cut, cut2 = n_tr * per_ep, (n_tr + n_te) * per_ep  # episodes: train, then test, then validation
        data["train"].append({k: v[:cut].copy() for k, v in tr.items()})
        data["test"].append({k: v[cut:cut2].copy() for k, v in tr.items()})
        data["val"].append({k: v[cut2:].copy() for k, v in tr.items()})
        if bar is not None:
            bar.update(1)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        arrays = {f"{split}{i}_{k}": d[k] for split in ("train", "test", "val") for i, d in enumerate(data[split])
                  for k in names}
        tmp = path + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    return data | {"cached": False}


# --------------------------------------------------------------------------- learners and metric


def _dp_steps(cfg: ExperimentConfig) -> int:
    return cfg.dpsgd_local_steps or cfg.local_steps


def _dp_lr(cfg: ExperimentConfig) -> float:
    return cfg.dpsgd_lr if cfg.dpsgd_lr is not None else cfg.lr


def lr_at(cfg: ExperimentConfig, rnd: int, dp: bool = False) -> float:
    """Learning rate of round ``rnd`` (0-based), the same schedule for every method (DP-SGD from
    ``dpsgd_lr``, tuned separately on validation)."""
    lr = _dp_lr(cfg) if dp else cfg.lr
    if cfg.lr_schedule == "constant" or cfg.rounds <= 1:
        return lr
    if cfg.lr_schedule != "cosine":
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}")
    frac = rnd / (cfg.rounds - 1)
    return lr * (cfg.lr_final + (1.0 - cfg.lr_final) * 0.5 * (1.0 + math.cos(math.pi * frac)))


def _make_learner(base_model, cfg: ExperimentConfig, transitions: list[dict], seed: int, dp_noise: float = 0.0):
    from sakura_nexus.models.online import OnlineLearner, Transition

    n = sum(len(t["action"]) for t in transitions)
    dp = dp_noise > 0
    batch = (cfg.dpsgd_batch_size or cfg.batch_size) if dp else cfg.batch_size
    learner = OnlineLearner(copy.deepcopy(base_model), lr=_dp_lr(cfg) if dp else cfg.lr, buffer_size=n,
                            batch_size=batch, grad_clip=cfg.grad_clip,
                            trainable=cfg.dpsgd_trainable if dp else cfg.trainable, min_samples=batch,
                            seed=seed, dp_noise_multiplier=dp_noise, dp_clip_norm=cfg.dpsgd_clip,
                            dp_delta=cfg.dp_delta, dp_tie_members=cfg.dpsgd_tie_members)
    for t in transitions:
        for j in range(len(t["action"])):
            learner.add(Transition(t["embedding"][j], t["proprio"][j], t["action"][j], t["next_embedding"][j],
                                   t["next_proprio"][j], bool(t["collided"][j])))
    return learner


def _as_batch(transitions: list[dict]) -> dict:
    import torch

    return {k: torch.from_numpy(np.concatenate([t[k] for t in transitions]).astype(np.float32))
            for k in transitions[0]}


def heldout_loss(model, batch: dict, w_collision: float = 1.0) -> dict[str, float]:
    """The OnlineLearner loss (same formula as ``OnlineLearner.loss``) on a whole held-out set."""
    import torch

    from sakura_nexus.models.losses import collision_bce, prediction_error

    was = model.training
    model.eval()
    with torch.no_grad():
        target = model.encode(batch["next_embedding"], batch["next_proprio"])
        z = model.encode(batch["embedding"], batch["proprio"])
        pred = model.predict_members(z, batch["action"])
        dyn = float(prediction_error(pred, target, model.error_scale).mean())
        col = float(collision_bce(model.collision_logits(pred), batch["collided"])
                    + collision_bce(model.collision_logits(target), batch["collided"]))
    model.train(was)
    return {"loss": dyn + w_collision * col, "dynamics": dyn, "collision": col}


def per_sample_loss(model, batch: dict, w_collision: float = 1.0) -> np.ndarray:
    """(N,) the OnlineLearner loss of each transition on its own (the membership-inference score)."""
    import torch
    import torch.nn.functional as F

    from sakura_nexus.models.losses import prediction_error

    was = model.training
    model.eval()
    with torch.no_grad():
        target = model.encode(batch["next_embedding"], batch["next_proprio"])
        z = model.encode(batch["embedding"], batch["proprio"])
        pred = model.predict_members(z, batch["action"])  # (K, N, Z)
        dyn = prediction_error(pred, target, model.error_scale).mean(0)
        y = batch["collided"]
        lp, lt = model.collision_logits(pred), model.collision_logits(target)
        col = F.binary_cross_entropy_with_logits(lp, y.expand_as(lp), reduction="none").mean(0) \
            + F.binary_cross_entropy_with_logits(lt, y, reduction="none")
    model.train(was)
    return (dyn + w_collision * col).numpy().astype(np.float64)


def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """Area under the ROC curve of the score ``-loss`` separating members from non-members
    (Mann-Whitney U, ties count half); 0.5 = the attack learns nothing."""
    from scipy.stats import rankdata

    x = np.concatenate([-np.asarray(members), -np.asarray(nonmembers)])
    r = rankdata(x)
    n1, n0 = len(members), len(nonmembers)
    return float((r[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _add_to_params(model, mask: np.ndarray, values: np.ndarray) -> None:
    """model's flat parameters[mask] += values (flat order of ``named_parameters``)."""
    import torch

    flat = np.zeros(mask.size, np.float32)
    flat[mask] = values
    off = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.add_(torch.from_numpy(flat[off:off + n]).reshape(p.shape))
            off += n


def exchange_mask(model, exchange: str) -> np.ndarray:
    """Boolean mask over the flat parameter vector: the coordinates the fleet exchanges."""
    if exchange == "all":
        return np.ones(sum(p.numel() for p in model.parameters()), bool)
    if exchange != "trainable":
        raise ValueError(f"exchange must be 'trainable' or 'all', got {exchange!r}")
    from sakura_nexus.models.online import TRAINABLE_PREFIXES

    return np.concatenate([np.full(p.numel(), n.startswith(TRAINABLE_PREFIXES), bool)
                           for n, p in model.named_parameters()])


def dp_clip_for(cfg: ExperimentConfig, model) -> float:
    """The central-DP clip norm C. ``cfg.dp_clip`` if set, else the a-priori rule (no data, no held-out
    set involved): the noise the server adds over the whole run, a random walk with per-coordinate std
    ``sqrt(rounds) * z * C / K``, is ``dp_noise_budget`` (1 %) of the RMS of the exchanged weights."""
    if cfg.dp_clip is not None:
        return float(cfg.dp_clip)
    mask = exchange_mask(model, cfg.exchange)
    w = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])[mask]
    rms = float(np.sqrt(np.mean(np.square(w, dtype=np.float64))))
    return cfg.dp_noise_budget * rms * len(cfg.sites) / (math.sqrt(cfg.rounds) * cfg.dp_noise)


def _flower_dense_bytes(model) -> int:
    """Upstream bytes of one FedAvg update as Flower ships it: ndarrays_to_parameters of the model."""
    arrays = [p.detach().numpy() for _, p in model.named_parameters()]
    try:
        from flwr.common import ndarrays_to_parameters

        return int(sum(len(t) for t in ndarrays_to_parameters(arrays).tensors))
    except Exception:  # noqa: BLE001 - flwr missing: raw float32 size
        return int(sum(a.size * 4 for a in arrays))


# --------------------------------------------------------------------------- methods


class _Runner:
    def __init__(self, cfg: ExperimentConfig, base_model, data: dict, bar=None):
        self.cfg, self.base, self.data, self.bar = cfg, base_model, data, bar
        self.test_all = _as_batch(data["test"])
        self.val_all = _as_batch(data["val"])
        self.test_sites = [_as_batch([t]) for t in data["test"]]
        self.initial = heldout_loss(base_model, self.test_all)
        self.initial_val = heldout_loss(base_model, self.val_all)
        # membership inference: each site's training transitions vs its own unseen ones (test + val)
        self.mia_members = [_as_batch([t]) for t in data["train"]]
        self.mia_nonmembers = [_as_batch([t, v]) for t, v in zip(data["test"], data["val"], strict=True)]
        self.n_sites = len(cfg.sites)

    def _tick(self):
        if self.bar is not None:
            self.bar.update(1)

    def _steps(self, learner, n: int) -> None:
        for _ in range(n):
            learner.train_step()

    def _skips(self, learners) -> dict:
        return {"steps": int(sum(L.steps for L in learners)),
                "skipped_grad": int(sum(L.skipped_grad for L in learners)),
                "skipped_nonfinite": int(sum(L.skipped_nonfinite for L in learners))}

    def _per_site(self, model) -> list[dict]:
        return [heldout_loss(model, b) for b in self.test_sites]

    def _eval(self, models: list) -> dict:
        """Mean over ``models`` of the all-site test metrics, and (``val_*``) of the validation ones."""
        ev = [heldout_loss(m, self.test_all) for m in models]
        va = [heldout_loss(m, self.val_all) for m in models]
        return {**{k: float(np.mean([e[k] for e in ev])) for k in ev[0]},
                **{f"val_{k}": float(np.mean([e[k] for e in va])) for k in va[0]}}

    def _start(self) -> list[dict]:
        return [dict(self.initial) | {f"val_{k}": v for k, v in self.initial_val.items()}]

    def _mia(self, site_models: list) -> dict:
        """Loss-threshold membership inference on each site's model: its training transitions against
        its unseen ones; AUC per site and the mean."""
        aucs = [auc(per_sample_loss(m, mem), per_sample_loss(m, non))
                for m, mem, non in zip(site_models, self.mia_members, self.mia_nonmembers, strict=True)]
        return {"mia_auc": float(np.mean(aucs)), "mia_auc_per_site": aucs}

    def _result(self, curve: list[dict], models: list, **extra) -> dict:
        """``final``: the test metrics at the round with the lowest validation error (PRIMARY), the
        checkpoint every method alike would ship; ``last``: at the last round."""
        per_site = [self._per_site(m) for m in models]
        test_keys = [k for k in curve[0] if not k.startswith("val_")]
        best = int(np.nanargmin([c[f"val_{PRIMARY}"] for c in curve]))
        return {"curve": {k: [c[k] for c in curve] for k in test_keys},
                "val_curve": {k[4:]: [c[k] for c in curve] for k in curve[0] if k.startswith("val_")},
                "final": {k: curve[best][k] for k in test_keys}, "selected_round": best,
                "selected_val": {k[4:]: curve[best][k] for k in curve[0] if k.startswith("val_")},
                "last": {k: curve[-1][k] for k in test_keys},
                "per_site_heldout_last": {k: np.mean([[e[k] for e in ps] for ps in per_site], 0).tolist()
                                          for k in test_keys}, **extra}

    def local(self) -> dict:
        cfg = self.cfg
        learners = [_make_learner(self.base, cfg, [t], cfg.seed + i) for i, t in enumerate(self.data["train"])]
        curve = self._start()
        for rnd in range(cfg.rounds):
            for L in learners:
                L.set_lr(lr_at(cfg, rnd))
                self._steps(L, cfg.local_steps)
            curve.append(self._eval([L.model for L in learners]))
            self._tick()
        return self._result(curve, [L.model for L in learners],
                            per_site_model=[heldout_loss(L.model, self.test_all) for L in learners],
                            bytes_per_update=0, **self._mia([L.model for L in learners]), **self._skips(learners))

    def central(self) -> dict:
        cfg = self.cfg
        L = _make_learner(self.base, cfg, self.data["train"], cfg.seed)
        curve = self._start()
        for rnd in range(cfg.rounds):
            L.set_lr(lr_at(cfg, rnd))
            self._steps(L, self.n_sites * cfg.local_steps)
            curve.append(self._eval([L.model]))
            self._tick()
        return self._result(curve, [L.model], bytes_per_update=None, **self._skips([L]))

    def dpsgd_noise(self) -> float:
        """The DP-SGD noise multiplier: ``cfg.dpsgd_noise`` or the smallest keeping every site's epsilon
        <= ``cfg.dpsgd_epsilon`` (delta ``cfg.dp_delta``) over all its steps (the run's full horizon)."""
        from sakura_nexus.federated.common.privacy import noise_for_epsilon
        from sakura_nexus.models.online import _round_up_2sig

        cfg = self.cfg
        if cfg.dpsgd_noise is not None:
            return float(cfg.dpsgd_noise)
        q = max(_round_up_2sig((cfg.dpsgd_batch_size or cfg.batch_size) / len(t["action"]))
                for t in self.data["train"])
        return noise_for_epsilon(cfg.dpsgd_epsilon, q, cfg.rounds * _dp_steps(cfg), cfg.dp_delta)

    def fedavg(self) -> dict:
        from sakura_nexus.federated.common.weights import vector_to_payload, world_model_vector

        cfg = self.cfg
        learners = [_make_learner(self.base, cfg, [t], cfg.seed + i) for i, t in enumerate(self.data["train"])]
        template = copy.deepcopy(self.base)
        version = int(self.base.version)
        curve, sent = self._start(), []
        for rnd in range(cfg.rounds):
            vecs, weights = [], []
            for L in learners:
                L.set_lr(lr_at(cfg, rnd))
                self._steps(L, cfg.local_steps)
                vecs.append(world_model_vector(L.model).astype(np.float64))
                weights.append(float(L.delta_stats()["sample_count"]))
                sent.append(_flower_dense_bytes(L.model))
            w = np.asarray(weights) / float(np.sum(weights))
            glob = np.sum([wi * v for wi, v in zip(w, vecs, strict=True)], axis=0).astype(np.float32)  # FedAvg
            version += 1
            payload = vector_to_payload(template, glob, version)
            for L in learners:
                L.apply_global(payload, version)
            curve.append(self._eval([learners[0].model]))
            self._tick()
        return self._result(curve, [learners[0].model], bytes_per_update=float(np.mean(sent)), updates=len(sent),
                            bytes_upstream_total=int(np.sum(sent)), **self._skips(learners))

    def fedbuff(self, dp: bool = False, error_feedback: str | None = None, dpsgd: bool = False) -> dict:
        """Our pipeline: uplink clip + error feedback + codec -> FedBuffAggregator.submit_payload.

        ``error_feedback`` (default ``cfg.error_feedback``): ``"residual"`` = the shipped
        :class:`ErrorFeedback` (the untransmitted part is kept in a residual and added to the next
        delta); ``"keep_local"`` = the untransmitted part stays in the robot's own weights: after
        ``apply_global`` the robot adds it back, so its next delta (taken against the global base)
        contains it, and it is not learned a second time; ``"off"`` = it is dropped.
        Only ``cfg.exchange`` coordinates are exchanged (default: the trainable ones)."""
        from sakura_nexus.federated.common.codecs import ErrorFeedback
        from sakura_nexus.federated.common.privacy import LocalPrivatizer, l2norm
        from sakura_nexus.federated.common.weights import vector_to_payload, world_model_vector
        from sakura_nexus.federated.fleet.aggregator import FedBuffAggregator, FedBuffConfig
        from sakura_nexus.models.world_model import world_model_from_bytes

        cfg = self.cfg
        z_sgd = self.dpsgd_noise() if dpsgd else 0.0
        learners = [_make_learner(self.base, cfg, [t], cfg.seed + i, dp_noise=z_sgd)
                    for i, t in enumerate(self.data["train"])]
        full0 = world_model_vector(self.base)
        ef_mode = error_feedback or cfg.error_feedback
        if ef_mode not in ("residual", "keep_local", "off"):
            raise ValueError(f"unknown error_feedback {ef_mode!r}")
        mask = exchange_mask(self.base, cfg.exchange)
        dp_clip = dp_clip_for(cfg, self.base) if dp else None
        extra = dict(clip_norm=dp_clip, dp_noise_multiplier=cfg.dp_noise, dp_target_delta=cfg.dp_delta,
                     seed=cfg.seed) if dp else {}
        agg = FedBuffAggregator(full0[mask], FedBuffConfig(buffer_size=self.n_sites, **extra),
                                initial_version=int(self.base.version))
        uplink_clip = [LocalPrivatizer(clip_norm=cfg.uplink_clip) for _ in learners]
        efs = [ErrorFeedback(cfg.codec, agg.size) for _ in learners]
        template = copy.deepcopy(self.base)
        curve, sent, norms, eps_curve, seq = self._start(), [], [], [0.0], 0
        site_eps_curve = [0.0]
        for rnd in range(cfg.rounds):
            seq += 1
            for i, L in enumerate(learners):
                L.set_lr(lr_at(cfg, rnd, dp=dpsgd))
                self._steps(L, _dp_steps(cfg) if dpsgd else cfg.local_steps)
                st = L.delta_stats()
                delta = L.delta_since_base()[mask]
                norms.append(l2norm(delta))
                payload = efs[i].encode(uplink_clip[i](delta))
                if ef_mode == "off":
                    efs[i].reset()
                sent.append(len(payload))
                res = agg.submit_payload(payload, st["base_version"], cfg.sites[i].name, seq,
                                         sample_count=st["sample_count"])
                if not res.accepted:
                    raise RuntimeError(f"aggregator rejected {cfg.sites[i].name}: {res.reason}")
            if rnd == cfg.rounds - 1:  # the models the robots hold (and whose deltas left them) at the end
                mia = self._mia([L.model for L in learners])
            full = full0.copy()
            full[mask] = agg.model
            glob = vector_to_payload(template, full, agg.version)
            for i, L in enumerate(learners):
                L.apply_global(glob, agg.version)
                if ef_mode == "keep_local":
                    _add_to_params(L.model, mask, efs[i].residual)
                    efs[i].reset()
            template.load_state_dict(world_model_from_bytes(glob, like=template).state_dict())
            curve.append(self._eval([template]))
            eps_curve.append(float(agg.epsilon))
            if dpsgd:
                site_eps_curve.append(max(L.epsilon for L in learners))
            self._tick()
        out = self._result(curve, [template])
        out.update({"bytes_per_update": float(np.mean(sent)), "updates": len(sent),
               "bytes_upstream_total": int(np.sum(sent)), "codec": cfg.codec, "error_feedback": ef_mode,
               "exchanged_coordinates": int(mask.sum()),
               "delta_norm_median": float(np.median(norms)), "delta_norm_max": float(np.max(norms)),
               "residual_norm_final": [float(e.residual_norm) for e in efs],
               "aggregations": int(agg.counters.get("aggregations", 0)),
               "clipped_by_aggregator": int(agg.counters.get("clipped", 0)),
               "global_version": int(agg.version), **mia, **self._skips(learners)})
        if dpsgd:
            n_site = [len(t["action"]) for t in self.data["train"]]
            out.update({"record_epsilon": max(L.epsilon for L in learners), "delta": cfg.dp_delta,
                        "record_epsilon_per_site": [L.epsilon for L in learners],
                        "record_epsilon_curve": site_eps_curve, "dpsgd_noise_multiplier": z_sgd,
                        "dpsgd_clip": cfg.dpsgd_clip, "dpsgd_sampling_rate": [L._sampling_rate(n) for n in n_site],
                        "dpsgd_steps_per_site": [L.accountant.num_releases for L in learners],
                        "dpsgd_grad_norm_median_last": [L.last_grad_norm for L in learners],
                        # group privacy: a whole site's data is k = n_site records; (k eps, k e^{(k-1) eps} delta)
                        "site_level_group_epsilon": [n * L.epsilon for n, L in zip(n_site, learners, strict=True)]})
        if agg.dp is not None:
            out.update({"epsilon": float(agg.epsilon), "delta": cfg.dp_delta, "epsilon_curve": eps_curve,
                        "dp_clip": dp_clip, "dp_noise_multiplier": cfg.dp_noise,
                        "dp_releases": int(agg.dp.accountant.num_releases)})
        return out


# --------------------------------------------------------------------------- driver


def run_experiment(cfg: ExperimentConfig, out_dir: str, *, progress: bool = True, cache: bool = True,
                   plot: bool = True) -> dict:
    import torch
    from tqdm import tqdm

    from sakura_nexus.models.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    os.makedirs(out_dir, exist_ok=True)
    ckpt = load_checkpoint()
    if ckpt.encoder is None:
        raise RuntimeError("the shipped checkpoint has no encoder.bin")
    enc_sha = ckpt.manifest.get("encoder", {}).get("sha256", "")
    total = len(cfg.sites) + cfg.rounds * len(METHODS)
    bar = tqdm(total=total, desc="fleet-experiment", unit="step", disable=not progress, file=sys.stderr)
    bar.set_postfix_str("collect")
    data = build_data(cfg, ckpt.encoder, enc_sha, out_dir if cache else None, bar)
    t_data = time.time() - t0
    runner = _Runner(cfg, ckpt.world_model, data, bar)
    results, timings = {}, {}
    for m in METHODS:
        bar.set_postfix_str(m)
        t = time.time()
        if m.startswith("fedbuff"):
            results[m] = runner.fedbuff(dp=m == "fedbuff_dp", dpsgd=m == "fedbuff_dpsgd",
                                        error_feedback="keep_local" if m == "fedbuff_keep_local" else None)
        else:
            results[m] = getattr(runner, m)()
        timings[m] = round(time.time() - t, 2)
    bar.close()

    def ratios(metric: str) -> dict:
        f = {m: results[m]["final"][metric] for m in METHODS}
        return {"final": f, "initial": runner.initial[metric],
                "fedbuff_over_central": f["fedbuff"] / f["central"],
                "fedbuff_over_local": f["fedbuff"] / f["local"],
                "fedavg_over_central": f["fedavg"] / f["central"], "fedavg_over_local": f["fedavg"] / f["local"],
                "fedbuff_over_fedavg": f["fedbuff"] / f["fedavg"],
                "central_over_initial": f["central"] / runner.initial[metric],
                "keep_local_over_fedavg": f["fedbuff_keep_local"] / f["fedavg"],
                "dp_loss_penalty": f["fedbuff_dp"] / f["fedbuff"] - 1.0,
                "dpsgd_loss_penalty": f["fedbuff_dpsgd"] / f["fedbuff"] - 1.0,
                "dpsgd_penalty_vs_fedavg": f["fedbuff_dpsgd"] / f["fedavg"] - 1.0,
                "central_over_fedbuff": f["central"] / f["fedbuff"],
                "last": {m: results[m]["last"][metric] for m in METHODS}}

    by_metric = {k: ratios(k) for k in ("dynamics", "loss", "collision")}
    p = by_metric[PRIMARY]
    ratio_bytes = results["fedavg"]["bytes_per_update"] / results["fedbuff"]["bytes_per_update"]
    n_trainable = int(exchange_mask(ckpt.world_model, "trainable").sum())
    summary = {
        "primary_metric": PRIMARY, **{k: v for k, v in p.items()},
        "bytes_per_update_fedbuff": results["fedbuff"]["bytes_per_update"],
        "bytes_per_update_fedavg": results["fedavg"]["bytes_per_update"],
        "byte_ratio_fedavg_over_fedbuff": ratio_bytes,
        # a stricter baseline than Flower's: dense float32 of only the trainable coordinates
        "byte_ratio_dense_trainable_f32_over_fedbuff": 4.0 * n_trainable / results["fedbuff"]["bytes_per_update"],
        "dp_clip": results["fedbuff_dp"]["dp_clip"], "dp_noise_multiplier": cfg.dp_noise,
        "dp_epsilon": results["fedbuff_dp"]["epsilon"], "dp_delta": cfg.dp_delta,
        "dp_epsilon_for_noise": _epsilon_table(cfg),
        "record_epsilon": results["fedbuff_dpsgd"]["record_epsilon"],
        "dpsgd_noise_multiplier": results["fedbuff_dpsgd"]["dpsgd_noise_multiplier"],
        "mia_auc": {m: results[m]["mia_auc"] for m in ("local", "fedbuff", "fedbuff_keep_local", "fedbuff_dp",
                                                        "fedbuff_dpsgd")},
        "selected_round": {m: results[m]["selected_round"] for m in METHODS},
        "targets": {"fedbuff_over_central": 1.1, "fedbuff_over_local": 0.8, "byte_ratio": 50.0,
                    "fedbuff_over_fedavg": 1.02},
        "targets_met": {
            "fedbuff_vs_central_le_1.1x": p["fedbuff_over_central"] <= 1.1,
            "fedbuff_vs_local_le_0.8x": p["fedbuff_over_local"] <= 0.8,
            "bytes_ge_50x_smaller": ratio_bytes >= 50.0,
            "fedbuff_le_2pct_worse_than_fedavg": p["fedbuff_over_fedavg"] <= 1.02,
            "record_epsilon_le_8": results["fedbuff_dpsgd"]["record_epsilon"] <= 8.0,
            "dpsgd_penalty_le_10pct": p["dpsgd_loss_penalty"] <= 0.10,
            "dpsgd_penalty_vs_fedavg_le_10pct": p["dpsgd_penalty_vs_fedavg"] <= 0.10,
            "mia_auc_dpsgd_le_0.55": results["fedbuff_dpsgd"]["mia_auc"] <= 0.55},
        "by_metric": by_metric,
    }
    n_tr = sum(len(t["action"]) for t in data["train"])
    n_te = sum(len(t["action"]) for t in data["test"])
    n_va = sum(len(t["action"]) for t in data["val"])
    report = {
        "config": {**{k: v for k, v in asdict(cfg).items() if k != "sites"},
                   "sites": [asdict(s) for s in cfg.sites]},
        "data": {"train_transitions": n_tr, "heldout_transitions": n_te, "validation_transitions": n_va,
                 "cached": bool(data["cached"]),
                 "train_collision_rate": float(np.mean(np.concatenate([t["collided"] for t in data["train"]]))),
                 "heldout_collision_rate": float(np.mean(np.concatenate([t["collided"] for t in data["test"]]))),
                 "world_model_parameters": int(ckpt.world_model.num_parameters()),
                 "trainable_parameters": int(sum(p.numel() for n, p in ckpt.world_model.named_parameters()
                                                 if cfg.trainable == "all"
                                                 or n.startswith(("dynamics.", "collision_head."))))},
        "metrics": {"dynamics": "normalised one-step latent prediction error of the ensemble (the dynamics "
                                "term of the OnlineLearner loss) on the held-out episodes of all sites",
                    "loss": "full OnlineLearner loss (dynamics + collision BCE) on the same set",
                    "collision": "collision BCE term"},
        "checkpoint": {k: ckpt.manifest.get(k, {}).get("sha256") for k in ("world_model", "encoder")},
        "initial_heldout": runner.initial, "initial_validation": runner.initial_val,
        "initial_heldout_per_site": runner._per_site(ckpt.world_model),
        "gradient_steps_per_method": cfg.rounds * cfg.local_steps * len(cfg.sites),
        "summary": summary, "methods": results,
        "timing_s": {"data": round(t_data, 2), **timings, "total": round(time.time() - t0, 2)},
    }
    with open(os.path.join(out_dir, "fleet.json"), "w") as f:
        json.dump(_finite_json(report), f, indent=1)
    if plot:
        _plot(report, os.path.join(out_dir, "fleet.png"))
    return report


def _epsilon_table(cfg: ExperimentConfig) -> dict:
    """Epsilon (delta = cfg.dp_delta) after cfg.rounds releases for a few noise multipliers."""
    from sakura_nexus.federated.common.privacy import RDPAccountant

    out = {}
    for z in (0.5, 1.0, 2.0, 4.0, 8.0):
        acc = RDPAccountant(target_delta=cfg.dp_delta)
        acc.step(z, 1.0, cfg.rounds)
        out[str(z)] = acc.epsilon()
    return out


def _finite_json(x):
    if isinstance(x, dict):
        return {k: _finite_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_json(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = report["config"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    steps = cfg["local_steps"] * len(cfg["sites"])
    for ax, metric in zip(axes[:2], ("dynamics", "loss"), strict=True):
        shown = []
        for m in METHODS:
            c = np.asarray([np.nan if v is None else v for v in report["methods"][m]["curve"][metric]], float)
            label = f"{m} ({report['methods'][m]['final'][metric]:.4g})"
            if np.nanmax(c) > 3 * report["initial_heldout"][metric]:
                label += ", off scale"  # e.g. DP with 4 sites diverges
            else:
                shown.append(c)
            ax.plot(np.arange(len(c)) * steps, c, label=label)
        if shown:
            lo, hi = np.nanmin(np.concatenate(shown)), np.nanmax(np.concatenate(shown))
            ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.25 * (hi - lo))
        ax.set_xlabel("gradient steps (all sites together)")
        ax.set_ylabel(f"held-out {metric}, all 4 sites")
        ax.set_title({"dynamics": "one-step latent prediction error", "loss": "OnlineLearner loss"}[metric])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    bx = axes[2]
    names = ["fedbuff", "fedbuff_keep_local", "fedbuff_dp", "fedavg"]
    vals = [report["methods"][m]["bytes_per_update"] for m in names]
    bars = bx.bar(names, vals, color=["tab:orange", "tab:purple", "tab:brown", "tab:green"])
    bx.set_yscale("log")
    bx.set_ylabel("upstream bytes per update (log)")
    bx.set_title(f"{cfg['codec']} + EF vs dense f32 FedAvg "
                 f"({report['summary']['byte_ratio_fedavg_over_fedbuff']:.0f}x)")
    bx.tick_params(axis="x", labelsize=7)
    for b, v in zip(bars, vals, strict=True):
        bx.text(b.get_x() + b.get_width() / 2, v, f"{v:,.0f} B", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def experiment_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sakura-nexus fleet-experiment", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small run (~1 min) for tests")
    p.add_argument("--out", default="out/fleet", help="output directory (fleet.json, fleet.png)")
    p.add_argument("--rounds", type=int, help="federated rounds (default 240, quick 60)")
    p.add_argument("--local-steps", type=int, help="gradient steps per site per round")
    p.add_argument("--lr", type=float, help="Adam learning rate (all methods)")
    p.add_argument("--dp-noise", type=float, help="central-DP noise multiplier z")
    p.add_argument("--dp-clip", type=float, help="central-DP clip norm C (default: the dp_noise_budget rule)")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-cache", action="store_true", help="re-collect the site data")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = ExperimentConfig.quick() if a.quick else ExperimentConfig()
    for name, attr in (("rounds", "rounds"), ("local_steps", "local_steps"), ("lr", "lr"),
                       ("dp_noise", "dp_noise"), ("dp_clip", "dp_clip"), ("seed", "seed")):
        v = getattr(a, name)
        if v is not None:
            setattr(cfg, attr, v)
    rep = run_experiment(cfg, a.out, progress=not a.no_progress, cache=not a.no_cache)
    s = rep["summary"]
    print(json.dumps({"primary_metric": s["primary_metric"], "initial": s["initial"], "final": s["final"],
                      "fedbuff/central": round(s["fedbuff_over_central"], 4),
                      "fedbuff/local": round(s["fedbuff_over_local"], 4),
                      "fedbuff/fedavg": round(s["fedbuff_over_fedavg"], 4),
                      "bytes fedavg/fedbuff": round(s["byte_ratio_fedavg_over_fedbuff"], 1),
                      "dp epsilon": round(s["dp_epsilon"], 2), "dp penalty": round(s["dp_loss_penalty"], 4),
                      "record epsilon (dp-sgd)": round(s["record_epsilon"], 3),
                      "dp-sgd noise": round(s["dpsgd_noise_multiplier"], 3),
                      "dp-sgd penalty": round(s["dpsgd_loss_penalty"], 4), "mia auc": s["mia_auc"],
                      "selected round": s["selected_round"],
                      "fedbuff_keep_local/fedavg": round(s["keep_local_over_fedavg"], 4),
                      "targets_met": s["targets_met"], "timing_s": rep["timing_s"],
                      "out": os.path.abspath(a.out)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(experiment_main())
