"""World-model core: shapes, determinism, learning on a toy system, uncertainty, serialisation,
online learning guards and crash-safe checkpoints. ROS-free and fast (toy data; one tiny sim run)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from sakura_nexus.models import (
    ConvEncoder,
    OnlineLearner,
    PayloadError,
    Transition,
    WorldModel,
    WorldModelSnapshot,
    encoder_from_bytes,
    encoder_to_bytes,
    load_checkpoint,
    sha256_hex,
    world_model_from_bytes,
    world_model_to_bytes,
)
from sakura_nexus.models.losses import error_scale, sequence_losses
from sakura_nexus.models.serialization import pack_state, unpack_state
from sakura_nexus.testing.toy import toy_sequences

torch.set_num_threads(1)


def _train_toy(model: WorldModel, data: dict, iters: int, seed: int = 0, seq: int = 8) -> list[float]:
    """A few Adam steps of the multi-step + one-step losses on toy sequences; returns the losses."""
    gen = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    n, steps = data["actions"].shape[:2]
    with torch.no_grad():
        z = model.encode(data["embedding"], data["proprio"])
        model.error_scale.copy_(error_scale(z))
    losses = []
    for _ in range(iters):
        ep = gen.integers(0, n, 32)[:, None]
        ts = gen.integers(0, steps - seq + 1, 32)[:, None] + np.arange(seq + 1)
        z = model.encode(data["embedding"][ep, ts], data["proprio"][ep, ts])
        parts = sequence_losses(model, z, data["actions"][ep, ts[:, :-1]], data["collided"][ep, ts[:, :-1]])
        loss = parts["one_step"] + parts["multi_step"] + 0.1 * parts["collision"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(parts["multi_step"].detach()))
    return losses


@pytest.fixture(scope="module")
def toy():
    return toy_sequences(64, 24, seed=0)


@pytest.fixture(scope="module")
def trained(toy):
    torch.manual_seed(0)
    model = WorldModel()
    losses = _train_toy(model, toy, 250)
    return model.eval(), losses


# ---------------------------------------------------------------------------------------- shapes
def test_shapes_and_contract():
    torch.manual_seed(0)
    enc, wm = ConvEncoder(), WorldModel()
    assert 200_000 <= sum(p.numel() for p in enc.parameters()) <= 2_000_000
    emb = enc(torch.rand(3, 3, 64, 64))
    assert emb.shape == (3, 64)
    z = wm.encode(emb, torch.randn(3, 6))
    assert z.shape == (3, 32)
    z1, sigma = wm.step(z, torch.randn(3, 2))
    assert z1.shape == (3, 32) and sigma.shape == (3,) and (sigma >= 0).all()
    zs, sigmas = wm.rollout(z, torch.randn(3, 15, 2))
    assert zs.shape == (3, 15, 32) and sigmas.shape == (3, 15)
    assert wm.pose(zs).shape == (3, 15, 3) and wm.collision(zs).shape == (3, 15)
    assert ((wm.collision(z) >= 0) & (wm.collision(z) <= 1)).all()
    fast, fast_sigma = wm.rollout(z, torch.randn(3, 15, 2), members=1)
    assert fast.shape == (3, 15, 32) and (fast_sigma == 0).all()


def test_pose_is_readable_from_the_latent_and_step_matches_rollout():
    wm = WorldModel().eval()
    prop = torch.tensor([[1.5, -0.7, np.cos(2.0), np.sin(2.0), 0.3, -0.4]], dtype=torch.float32)
    z = wm.encode(torch.randn(1, 64), prop)
    assert torch.allclose(wm.pose(z), torch.tensor([[1.5, -0.7, 2.0]]), atol=1e-5)
    a = torch.randn(1, 2)
    z1, s1 = wm.step(z, a)
    zs, ss = wm.rollout(z, a[:, None])
    assert torch.allclose(z1, zs[:, 0], atol=1e-6) and torch.allclose(s1, ss[:, 0], atol=1e-6)


def test_scripted_inference_rollout_equals_the_eager_loop():
    # without grad the horizon loop runs as TorchScript (planner speed); with grad it is the eager
    # loop the training losses differentiate through: both must give the same latents
    torch.manual_seed(3)
    model = WorldModel()
    z = model.encode(torch.randn(16, 64), torch.randn(16, 6))
    actions = torch.randn(16, 7, 2) * 0.3
    eager = model.rollout_members(z, actions).detach()
    with torch.inference_mode():
        scripted = model.rollout_members(z, actions)
        one = model.rollout_members(z, actions, members=1)
    assert scripted.shape == (5, 16, 7, 32) and one.shape == (1, 16, 7, 32)
    torch.testing.assert_close(scripted, eager, rtol=0, atol=1e-6)
    torch.testing.assert_close(one, eager[:1], rtol=0, atol=1e-6)


def test_rollout_falls_back_to_the_eager_loop_without_torchscript(monkeypatch):
    import sakura_nexus.models.world_model as wm_module

    def no_torchscript(fn):
        raise RuntimeError("TorchScript unavailable")

    monkeypatch.setattr(torch.jit, "script", no_torchscript)
    monkeypatch.setattr(wm_module, "_SCRIPTED", [])  # the compiled loop of other tests is not reused
    torch.manual_seed(4)
    model = WorldModel()
    z, actions = model.encode(torch.randn(3, 64), torch.randn(3, 6)), torch.randn(3, 4, 2) * 0.3
    eager = model.rollout_members(z, actions).detach()
    with torch.inference_mode():
        fallback = model.rollout_members(z, actions)
    assert wm_module._SCRIPTED == [wm_module._rollout_loop]
    torch.testing.assert_close(fallback, eager, rtol=0, atol=1e-6)


def test_dynamics_are_translation_and_rotation_invariant():
    """The body-frame displacement is rotated into odom: moving/rotating the start moves the
    prediction rigidly."""
    torch.manual_seed(1)
    wm = WorldModel().eval()
    emb, a = torch.randn(1, 64), torch.randn(1, 5, 2)
    p0 = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.2, 0.1]])
    th = 0.7
    p1 = torch.tensor([[1.0, -2.0, np.cos(th), np.sin(th), 0.2, 0.1]], dtype=torch.float32)
    with torch.no_grad():
        q0 = wm.pose(wm.rollout(wm.encode(emb, p0), a)[0])[0]
        q1 = wm.pose(wm.rollout(wm.encode(emb, p1), a)[0])[0]
    rot = torch.tensor([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]], dtype=torch.float32)
    assert torch.allclose(q1[:, :2], q0[:, :2] @ rot.T + torch.tensor([1.0, -2.0]), atol=1e-4)
    yaw_diff = torch.atan2(torch.sin(q1[:, 2] - q0[:, 2] - th), torch.cos(q1[:, 2] - q0[:, 2] - th))
    assert yaw_diff.abs().max() < 1e-4


def test_numpy_snapshot_equals_torch(trained):
    wm, _ = trained
    snap = WorldModelSnapshot(wm)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5, 64)).astype(np.float32)
    prop = rng.normal(size=(5, 6)).astype(np.float32)
    acts = rng.normal(size=(5, 15, 2)).astype(np.float32)
    with torch.no_grad():
        z_t = wm.encode(torch.from_numpy(emb), torch.from_numpy(prop))
        zs_t, s_t = wm.rollout(z_t, torch.from_numpy(acts))
        z1_t, s1_t = wm.step(z_t, torch.from_numpy(acts[:, 0]))
        pose_t, col_t = wm.pose(zs_t), wm.collision(zs_t)
    z = snap.encode(emb, prop)
    zs, s = snap.rollout(z, acts)
    z1, s1 = snap.step(z, acts[:, 0])
    for a, b in ((z, z_t), (zs, zs_t), (s, s_t), (z1, z1_t), (s1, s1_t), (snap.pose(zs), pose_t),
                 (snap.collision(zs), col_t)):
        np.testing.assert_allclose(a, b.numpy(), atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(snap.rollout(z, acts, members=2)[0], wm.rollout(z_t, torch.from_numpy(acts),
                                                                               members=2)[0].detach().numpy(),
                               atol=2e-5)


# ---------------------------------------------------------------------------------------- learning
def test_determinism_under_a_seed(toy):
    def run():
        torch.manual_seed(7)
        model = WorldModel()
        _train_toy(model, toy, 5, seed=3)
        return world_model_to_bytes(model), encoder_to_bytes(ConvEncoder())

    a, b = run(), run()
    assert sha256_hex(a[0]) == sha256_hex(b[0]) and sha256_hex(a[1]) == sha256_hex(b[1])


def test_rollout_loss_decreases_on_toy_dynamics(trained, toy):
    wm, losses = trained
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:5])
    # held-out sequences: 8-step open-loop prediction clearly beats "nothing changes"
    test = toy_sequences(32, 8, seed=99)
    with torch.no_grad():
        z = wm.encode(test["embedding"], test["proprio"])
        zs, _ = wm.rollout(z[:, 0], test["actions"])
        err = (zs - z[:, 1:]).square().mean()
        hold = (z[:, :1] - z[:, 1:]).square().mean()
        pos_err = (wm.pose(zs)[..., :2] - test["proprio"][:, 1:, :2]).norm(dim=-1).mean()
    assert err < 0.6 * hold
    assert pos_err < 0.1  # metres, after 0.8 s open loop


def test_uncertainty_is_larger_off_distribution(trained):
    wm, _ = trained
    on = toy_sequences(64, 10, seed=5)
    off = toy_sequences(64, 10, seed=5, action_scale=4.0)  # actions / velocities far beyond training
    with torch.no_grad():
        s_on = wm.step(wm.encode(on["embedding"], on["proprio"])[:, 3], on["actions"][:, 3])[1].mean()
        s_off = wm.step(wm.encode(off["embedding"], off["proprio"])[:, 3], off["actions"][:, 3])[1].mean()
        z = wm.encode(on["embedding"][:, 3], on["proprio"][:, 3])
        z_far = z.clone()
        z_far[:, 6:] += 5.0  # a visual latent never seen in training
        s_far = wm.step(z_far, on["actions"][:, 3])[1].mean()
    assert s_off > 2 * s_on and s_far > 2 * s_on


# ---------------------------------------------------------------------------------------- serialisation
def test_state_payload_roundtrip_and_corruption():
    t = {"a": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    payload = pack_state(t, {"x": 1})
    got, meta = unpack_state(payload, sha256_hex(payload))
    assert meta == {"x": 1} and torch.equal(got["a"], t["a"]) and torch.equal(got["b"], t["b"])
    with pytest.raises(PayloadError):
        unpack_state(payload[:-5])
    flipped = bytearray(payload)
    flipped[40] ^= 1
    with pytest.raises(PayloadError):
        unpack_state(bytes(flipped))
    with pytest.raises(PayloadError):
        unpack_state(payload, expected_sha256="0" * 64)


def test_encoder_bytes_roundtrip_version_and_shape_mismatch():
    enc = ConvEncoder()
    payload = encoder_to_bytes(enc, version=4)
    back = encoder_from_bytes(payload, expected_sha256=sha256_hex(payload), like=enc)
    assert back.version == 4
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), enc.eval()(x))
    other = encoder_to_bytes(ConvEncoder(channels=(8, 16, 32, 64)))
    with pytest.raises(PayloadError):
        encoder_from_bytes(other, like=enc)
    with pytest.raises(PayloadError):  # a world model is not an encoder
        encoder_from_bytes(world_model_to_bytes(WorldModel()))


# ---------------------------------------------------------------------------------------- online learning
def _transitions(n: int, seed: int = 0) -> list[Transition]:
    d = toy_sequences(n, 1, seed=seed)
    return [Transition(d["embedding"][i, 0].numpy(), d["proprio"][i, 0].numpy(), d["actions"][i, 0].numpy(),
                       d["embedding"][i, 1].numpy(), d["proprio"][i, 1].numpy(), bool(d["collided"][i, 0]))
            for i in range(n)]


def _learner(**kw) -> OnlineLearner:
    torch.manual_seed(0)
    learner = OnlineLearner(WorldModel(), lr=1e-3, buffer_size=64, batch_size=16, **kw)
    for tr in _transitions(80):
        learner.add(tr)
    return learner


def test_buffer_is_bounded_and_steps_learn():
    learner = _learner(grad_clip=1e6)
    assert len(learner) == 64 and learner.buffer.added == 80
    losses = [learner.train_step() for _ in range(30)]
    assert all(v is not None and np.isfinite(v) for v in losses)
    assert learner.steps == 30 and np.linalg.norm(learner.delta_since_base()) > 0
    # frozen encoder part: no delta outside dynamics / collision head
    delta, offset = learner.delta_since_base(), 0
    for name, shape in learner.parameter_names():
        size = int(np.prod(shape))
        if name.startswith("encoder_net."):
            assert not delta[offset:offset + size].any()
        offset += size
    assert offset == delta.size


def test_nan_loss_and_exploding_gradient_are_skipped():
    learner = _learner(grad_clip=1e6, min_samples=1)
    before = learner.delta_since_base().copy()
    bad = _transitions(1)[0]
    bad.next_embedding = np.full(64, np.nan, np.float32)
    learner.buffer = type(learner.buffer)(8, 64)
    for _ in range(8):
        learner.add(bad)
    assert learner.train_step() is None and learner.skipped_nonfinite == 1
    np.testing.assert_array_equal(learner.delta_since_base(), before)
    tiny = _learner(grad_clip=1e-9)
    assert tiny.train_step() is None and tiny.skipped_grad == 1 and tiny.steps == 0
    assert not tiny.delta_since_base().any()


def test_delta_accounting_resets_after_apply_global():
    learner = _learner(grad_clip=1e6)
    for _ in range(5):
        learner.train_step()
    assert learner.delta_stats()["sample_count"] == 80 and np.abs(learner.delta_since_base()).sum() > 0
    torch.manual_seed(3)
    global_model = WorldModel()
    payload = world_model_to_bytes(global_model, version=7)
    with pytest.raises(PayloadError):  # corrupt update: nothing changes
        learner.apply_global(payload[:-1], 8)
    assert learner.base_version == 0
    learner.apply_global(payload, 7, expected_sha256=sha256_hex(payload))
    assert learner.base_version == 7 and learner.model.version == 7
    assert not learner.delta_since_base().any()
    stats = learner.delta_stats()
    assert stats["sample_count"] == 0 and stats["steps"] == 0
    assert learner.snapshot.version == 7
    with torch.no_grad():
        for p, q in zip(learner.model.parameters(), global_model.parameters(), strict=True):
            assert torch.equal(p, q)
    learner.train_step()
    assert np.abs(learner.delta_since_base()).sum() > 0


def test_checkpoint_corruption_falls_back_to_previous(tmp_path):
    learner = _learner(grad_clip=1e6)
    learner.train_step()
    first = learner.save_checkpoint(tmp_path, extra={"sequence": 1})
    w_first = [p.detach().clone() for p in learner.model.parameters()]
    for _ in range(3):
        learner.train_step()
    second = learner.save_checkpoint(tmp_path, extra={"sequence": 2})
    third_learner = _learner()
    meta = third_learner.load_latest(tmp_path)
    assert meta["path"] == second and meta["extra"] == {"sequence": 2} and meta["steps"] == 4
    # truncate the newest: the previous one is used
    data = open(second, "rb").read()
    with open(second, "wb") as f:
        f.write(data[: len(data) // 2])
    restored = _learner()
    meta = restored.load_latest(tmp_path)
    assert meta["path"] == first and meta["extra"] == {"sequence": 1} and len(meta["skipped_corrupt"]) == 1
    for p, q in zip(restored.model.parameters(), w_first, strict=True):
        assert torch.equal(p, q)
    # corrupt both: nothing loads, the model is untouched
    raw = bytearray(open(first, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(first, "wb").write(bytes(raw))
    assert _learner().load_latest(tmp_path) is None
    # only the newest `keep` files are kept, no temp files remain
    for _ in range(3):
        learner.save_checkpoint(tmp_path)
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 2 and all(n.endswith(".ckpt") for n in names)


def test_world_model_payload_config_mismatch():
    payload = world_model_to_bytes(WorldModel(hidden=32))
    with pytest.raises(PayloadError):
        world_model_from_bytes(payload, like=WorldModel())


# ---------------------------------------------------------------------------------------- sim smoke
def test_quick_training_writes_a_loadable_checkpoint(tmp_path):
    pytest.importorskip("mujoco")
    from sakura_nexus.models.training import train_main

    out = tmp_path / "train"
    assert train_main(["--quick", "--no-progress", "--out", str(out), "--models", str(out / "models"),
                       "--joint-iters", "4", "--wm-iters", "10"]) == 0
    manifest = json.loads((out / "models" / "manifest.json").read_text())
    for key in ("git_revision", "seed", "data", "metrics", "encoder", "world_model"):
        assert key in manifest
    assert manifest["data"]["train_transitions"] > 0
    assert (out / "loss.png").stat().st_size > 0 and (out / "metrics.json").is_file()
    ckpt = load_checkpoint(out / "models")
    assert ckpt.encoder is not None and ckpt.world_model.config.latent_dim == 32
    assert sha256_hex((out / "models" / "world_model.bin").read_bytes()) == manifest["world_model"]["sha256"]


# ---------------------------------------------------------------------------------------- online adaptation
def test_online_learning_reduces_surprise_in_a_changed_cell(tmp_path):
    """The shipped model drives 3 sim-minutes in a held-out layout at floor friction 0.1 (training saw
    0.6-1.0) with the node's default learning budget. Online learning must cut both the held-out
    one-step error at that friction and the stream surprise against a frozen copy (figure written)."""
    from sakura_nexus.experiments.adaptation import run_adaptation

    r = run_adaptation(out_dir=str(tmp_path), friction=0.1, minutes=3.0, progress=False)
    err = r["heldout_changed_normalised_error"]
    assert err["frozen"] == pytest.approx(err["before"])  # the frozen copy never changes
    assert err["after_online"] < 0.85 * err["before"], err
    assert r["online_vs_frozen_last_minute"] < 0.85, r["surprise"]
    assert r["learner"]["steps"] >= 0.9 * 3.0 * 60 * 5.0 - 200  # learning starts after 200 samples
    assert (tmp_path / "adaptation.png").stat().st_size > 10_000
