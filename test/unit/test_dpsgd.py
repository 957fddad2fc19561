"""Record-level DP-SGD in the on-robot learner: per-sample gradients, clipping, noise, Poisson sampling,
the accountant ledger (dp-accounting), the epsilon budget and its persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sakura_nexus.federated.common.privacy import RDPAccountant
from sakura_nexus.models import WorldModel
from sakura_nexus.models.online import OnlineLearner, Transition, _round_up_2sig


def _transitions(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Transition(rng.normal(size=64).astype(np.float32), rng.normal(size=6).astype(np.float32) * 0.3,
                       rng.normal(size=2).astype(np.float32) * 0.3, rng.normal(size=64).astype(np.float32),
                       rng.normal(size=6).astype(np.float32) * 0.3, bool(rng.random() < 0.2)) for _ in range(n)]


def _learner(n=100, **kw):
    torch.manual_seed(0)
    kw = {"dp_noise_multiplier": 1.0, "dp_clip_norm": 1.0, **kw}
    learner = OnlineLearner(WorldModel(), lr=1e-3, buffer_size=n, batch_size=10, min_samples=10, **kw)
    for tr in _transitions(n):
        learner.add(tr)
    return learner


class _Recorder:
    """Stands in for Adam: records the gradient DP-SGD hands the optimiser."""

    def __init__(self, params):
        self.params, self.grads = params, []

    def step(self):
        self.grads.append(torch.cat([p.grad.reshape(-1) for p in self.params]).clone())

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def test_round_up_2sig_never_rounds_down():
    for q in (1 / 3, 32 / 300, 32 / 5000, 0.0064, 0.5, 1.0, 2.0, 1e-4 + 1e-9):
        r = _round_up_2sig(q)
        assert r >= min(q, 1.0) and r <= min(1.0, q * 1.1 + 1e-12)
    assert _round_up_2sig(32 / 300) == pytest.approx(0.11) and _round_up_2sig(0.0064) == pytest.approx(0.0064)


def test_per_sample_gradients_equal_one_sample_backward():
    learner = _learner()
    batch = learner.buffer.sample(np.random.default_rng(1), 4)
    params = {f"model.{n}": p.detach() for n, p in learner.model.named_parameters() if p.requires_grad}
    g = learner._grads_fn()(params, *(batch[k] for k in ("embedding", "proprio", "action", "next_embedding",
                                                          "next_proprio", "collided")))
    for i in range(4):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        learner.model.zero_grad(set_to_none=True)
        learner.loss(one).backward()
        for n, p in learner.model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(g[f"model.{n}"][i], p.grad, rtol=1e-4, atol=1e-6)


def test_clipping_bounds_each_sample_and_noise_has_the_calibrated_std():
    # almost no noise: the summed gradient is a sum of m vectors of norm <= C
    learner = _learner(dp_noise_multiplier=1e-9, dp_clip_norm=0.05)
    rec = learner.optimizer = _Recorder(learner._params)
    sizes = []
    for _ in range(20):
        before = learner.accountant.num_releases
        learner.train_step()
        assert learner.accountant.num_releases == before + 1
        sizes.append(learner.samples_since_base)
    q = _round_up_2sig(10 / 100)
    expected = q * 100
    m = np.diff([0] + sizes)
    for g, mi in zip(rec.grads, m, strict=True):
        assert float(g.norm()) * expected <= mi * 0.05 + 1e-6
    # large noise: the gradient is noise of std z C / (q N) per coordinate
    noisy = _learner(dp_noise_multiplier=3.0, dp_clip_norm=0.05)
    rec = noisy.optimizer = _Recorder(noisy._params)
    noisy.train_step()
    assert float(rec.grads[0].std()) == pytest.approx(3.0 * 0.05 / expected, rel=0.05)


def test_poisson_sampling_and_ledger_match_the_accountant():
    learner = _learner(n=200)
    sizes = [int(learner.buffer.sample_poisson(np.random.default_rng(i), 0.05)["action"].shape[0])
             for i in range(400)]
    assert np.mean(sizes) == pytest.approx(10.0, rel=0.1) and np.var(sizes) == pytest.approx(200 * .05 * .95, rel=0.3)
    for _ in range(15):
        learner.train_step()
    ref = RDPAccountant()
    ref.step(1.0, _round_up_2sig(10 / 200), 15)
    assert learner.epsilon == pytest.approx(ref.epsilon(), rel=1e-9) and learner.epsilon > 0
    # DP off: any learning is reported as unbounded privacy loss
    plain = _learner(dp_noise_multiplier=0.0, grad_clip=1e6)
    assert plain.epsilon == 0.0
    plain.train_step()
    assert plain.epsilon == float("inf")


def test_budget_stops_learning_within_it_and_the_ledger_survives_a_restart(tmp_path):
    q = _round_up_2sig(10 / 100)
    allowed = RDPAccountant().steps_within(5.0, 1.0, q)
    assert 3 < allowed < 200
    learner = _learner(dp_epsilon_budget=5.0)
    results = [learner.train_step() for _ in range(allowed + 5)]
    assert learner.steps == allowed and learner.accountant.num_releases == allowed
    assert learner.budget_exhausted and learner.dp_steps_refused == 5
    assert all(r is None for r in results[allowed:])
    assert learner.epsilon <= 5.0 < learner.accountant.epsilon_if(1.0, q)
    weights = learner.delta_since_base().copy()
    assert learner.train_step() is None
    np.testing.assert_array_equal(learner.delta_since_base(), weights)  # a refused step changes nothing
    learner.save_checkpoint(tmp_path)
    again = _learner(dp_epsilon_budget=5.0)
    assert again.load_latest(tmp_path) is not None
    assert again.accountant.num_releases == allowed
    assert again.train_step() is None and again.budget_exhausted  # spent privacy is not forgotten
    # a persisted ledger with fewer releases never replaces a longer one
    again.restore_dp_ledger(RDPAccountant().state_dict())
    assert again.accountant.num_releases == allowed


@pytest.mark.parametrize("z", [0.0, 1.0])
def test_small_trainable_sets_move_only_their_coordinates(z):
    """dynamics_out_state / _velocity learn only their output columns; dynamics_out_scale(6) moves each
    member's heading/velocity (and pose) output column along its own shipped direction (a scale) and its
    bias; the _tied variants by the same relative scale and the same bias shift in every member."""
    for trainable in ("dynamics_out_state", "dynamics_out_velocity", "dynamics_out_scale", "dynamics_out_scale6",
                      "dynamics_out_scale_tied", "dynamics_out_scale6_tied", "dynamics_out_scale_all_tied",
                      "dynamics_out_scale_enc_tied", "dynamics_out_scale_vel_tied", "dynamics_out_scale_state_tied",
                      "dynamics_out_scale_vel_tied_s10", "dynamics_out_scale_state_tied_s10"):
        learner = _learner(trainable=trainable, dp_noise_multiplier=z)
        trainable = trainable.removesuffix("_s10")  # a slower full-column group: the same structure
        before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
        for _ in range(5):
            learner.train_step()
        assert learner.steps == 5
        after = dict(learner.model.named_parameters())
        for n, p in before.items():
            d = (after[n].detach() - p)
            if n not in ("dynamics.w3", "dynamics.b3"):
                assert not d.any(), (trainable, n)
        cols = {"dynamics_out_state": range(0, 6), "dynamics_out_velocity": range(4, 6),
                "dynamics_out_scale": range(2, 6), "dynamics_out_scale6": range(0, 6),
                "dynamics_out_scale_tied": range(2, 6), "dynamics_out_scale6_tied": range(0, 6),
                "dynamics_out_scale_all_tied": range(2, 32), "dynamics_out_scale_enc_tied": range(2, 32),
                "dynamics_out_scale_vel_tied": range(2, 6), "dynamics_out_scale_state_tied": range(2, 6)}[trainable]
        other = [c for c in range(32) if c not in cols]
        for n in ("dynamics.w3", "dynamics.b3"):
            d = after[n].detach() - before[n]
            assert not d[..., other].any() and d[..., list(cols)].abs().sum() > 0, (trainable, n)
        if trainable in ("dynamics_out_scale_vel_tied", "dynamics_out_scale_state_tied"):
            # per-member scales + one additive change of the full columns shared by every member: the
            # members' changes differ only along their own shipped columns
            d = after["dynamics.w3"].detach() - before["dynamics.w3"]
            w = before["dynamics.w3"]
            for c in {"dynamics_out_scale_vel_tied": (4, 5), "dynamics_out_scale_state_tied": (2, 3, 4, 5)}[trainable]:
                a = torch.stack([w[0, :, c], w[1, :, c], d[0, :, c]], 1)
                res = torch.linalg.lstsq(a, d[1, :, c:c + 1]).residuals
                assert float(res.sum()) < 1e-6 * float(d[1, :, c].square().sum()) + 1e-14, c
        elif trainable.startswith("dynamics_out_scale"):  # w3 column k, c moved parallel to itself
            d = after["dynamics.w3"].detach() - before["dynamics.w3"]
            w = before["dynamics.w3"]
            db = (after["dynamics.b3"].detach() - before["dynamics.b3"])[:, 0]
            for c in cols:
                scale = []
                for k in range(w.shape[0]):
                    cos = torch.nn.functional.cosine_similarity(d[k, :, c], w[k, :, c], dim=0)
                    assert abs(abs(float(cos)) - 1.0) < 1e-4
                    scale.append(float(d[k, :, c] @ w[k, :, c] / w[k, :, c].square().sum()))
                tied = trainable.endswith("_tied") and not (trainable == "dynamics_out_scale_enc_tied" and c < 6)
                if tied:  # one scale and one bias shift for every member (f32 ulps)
                    assert max(scale) - min(scale) < 1e-4 * max(1e-3, max(map(abs, scale))), (c, scale)
                    assert torch.allclose(db[:, c], db[0, c].expand(w.shape[0]), atol=5e-7), (c, db[:, c])
                else:  # independent members
                    assert max(scale) - min(scale) > 1e-6, (c, scale)


def test_a_slower_subspace_group_takes_the_same_step_scaled():
    """dynamics_out_scale_state_tied_s10: the same subspace as dynamics_out_scale_state_tied, its full-column
    group's Adam step scaled by 0.1 (the per-member scales' step unchanged)."""
    moved = {}
    for trainable in ("dynamics_out_scale_state_tied", "dynamics_out_scale_state_tied_s10"):
        learner = _learner(trainable=trainable, dp_noise_multiplier=0.0)
        before = [p.detach().clone() for p in learner._params]
        learner.train_step()
        assert learner.steps == 1
        moved[trainable] = torch.cat([(p.detach() - b).reshape(-1) @ basis.T
                                      for p, b, basis in zip(learner._params, before, learner._basis, strict=True)])
        basis_rows = [b.shape[0] for b in learner._basis]
    a, s = moved["dynamics_out_scale_state_tied"], moved["dynamics_out_scale_state_tied_s10"]
    scale_rows = 20  # w3 rows first: 5 members x 4 columns, then the 4 x 64 full-column rows, then b3's 20
    full = slice(scale_rows, basis_rows[0])
    keep = torch.cat([a[:scale_rows], a[basis_rows[0]:]]), torch.cat([s[:scale_rows], s[basis_rows[0]:]])
    assert a[full].abs().sum() > 0
    torch.testing.assert_close(keep[1], keep[0], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(s[full], 0.1 * a[full], rtol=1e-3, atol=1e-8)
