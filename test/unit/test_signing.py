"""Signed model updates (ROS-free): what is signed, every refusal reason, key rotation, the wire
protocol and inbox carrying the signature; the clock guard."""

import hashlib
import os
import stat

import numpy as np
import pytest

from sakura_nexus.clock_guard import BACKWARDS, FORWARDS, ClockGuard
from sakura_nexus.federated.common import signing
from sakura_nexus.federated.common.signing import Signer, UpdateGate, generate_keys, signed_text


@pytest.fixture
def keys(tmp_path):
    priv, pub = generate_keys(str(tmp_path / "fleet"))
    return Signer.load(priv), pub


def _check(gate, signer, payload=b"weights", version=5, model_id="world_model", codec="flat-vector-v1",
           current=4, expected="world_model", **override):
    fields = dict(model_id=model_id, version=version, codec=codec, payload=payload,
                  sha256=hashlib.sha256(payload).hexdigest(), key_id=signer.key_id if signer else "",
                  signature=signer.sign(model_id, version, codec, payload) if signer else b"")
    fields.update(override)
    return gate.check(**fields, current_version=current, expected_model_id=expected)


def test_signed_text_binds_model_id_version_codec_and_digest():
    t = signed_text("world_model", 7, "flat-vector-v1", "ab" * 32)
    assert t == (b"sakura_nexus model update v1\nmodel_id=world_model\nversion=7\ncodec=flat-vector-v1\n"
                 b"sha256=" + b"ab" * 32 + b"\n")
    with pytest.raises(ValueError):
        signed_text("world_model\nversion=9", 7, "c", "d")


def test_private_key_is_private_and_cli_refuses_to_overwrite(tmp_path, capsys):
    priv, pub = generate_keys(str(tmp_path))
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert open(pub).read().startswith("ed25519 ")
    with pytest.raises(SystemExit):
        signing.keys_main(["generate", str(tmp_path)])
    assert signing.keys_main(["show", pub]) == 0
    assert capsys.readouterr().out.strip() == Signer.load(priv).key_id


def test_correctly_signed_newer_update_is_accepted(keys):
    signer, pub = keys
    v = _check(UpdateGate(pub), signer)
    assert v.ok and v.reason == ""


@pytest.mark.parametrize("case, reason", [
    ("unsigned", signing.UNSIGNED),
    ("wrong_key", signing.UNKNOWN_KEY),
    ("wrong_key_claiming_trusted_id", signing.BAD_SIGNATURE),
    ("replayed", signing.REPLAYED),
    ("same_version", signing.REPLAYED),
    ("tampered_payload_matching_sha256", signing.BAD_SIGNATURE),
    ("sha256_mismatch", signing.SHA256_MISMATCH),
    ("relabelled_model_id", signing.BAD_SIGNATURE),
    ("raised_version", signing.BAD_SIGNATURE),
    ("other_codec", signing.BAD_SIGNATURE),
    ("wrong_model_for_node", signing.MODEL_ID),
])
def test_every_bad_update_is_refused_with_its_reason(keys, tmp_path, case, reason):
    signer, pub = keys
    gate = UpdateGate(pub)
    other = Signer.load(generate_keys(str(tmp_path / "attacker"))[0])
    good_sig = signer.sign("world_model", 5, "flat-vector-v1", b"weights")
    tampered = b"evil weights"
    v = {
        "unsigned": lambda: _check(gate, None),
        "wrong_key": lambda: _check(gate, other),
        "wrong_key_claiming_trusted_id": lambda: _check(gate, other, key_id=signer.key_id),
        "replayed": lambda: _check(gate, signer, version=3, current=4),
        "same_version": lambda: _check(gate, signer, version=4, current=4),
        # an attacker swaps the payload and recomputes sha256: the signature no longer verifies
        "tampered_payload_matching_sha256": lambda: _check(
            gate, signer, payload=tampered, sha256=hashlib.sha256(tampered).hexdigest(), signature=good_sig),
        "sha256_mismatch": lambda: _check(gate, signer, sha256="0" * 64),
        "relabelled_model_id": lambda: _check(
            gate, signer, model_id="encoder", expected="encoder",
            signature=good_sig),
        "raised_version": lambda: _check(gate, signer, version=99, signature=good_sig),
        "other_codec": lambda: _check(gate, signer, codec="state-dict-v1", signature=good_sig),
        "wrong_model_for_node": lambda: _check(gate, signer, expected="encoder"),
    }[case]()
    assert not v.ok and v.reason == reason, v


def test_no_trusted_keys_refuses_everything(keys, tmp_path):
    signer, _ = keys
    assert _check(UpdateGate(""), signer).reason == signing.NO_KEYS
    assert _check(UpdateGate(str(tmp_path / "missing.pub")), signer).reason == signing.NO_KEYS
    bad = tmp_path / "bad.pub"
    bad.write_text("ed25519 not-base64!\n")
    g = UpdateGate(str(bad))
    assert _check(g, signer).reason == signing.NO_KEYS and "line 1" in g.trusted.error


def test_key_rotation_through_the_trusted_keys_file(tmp_path):
    old_priv, trusted = generate_keys(str(tmp_path / "old"))
    new_priv, new_pub = generate_keys(str(tmp_path / "new"))
    old, new = Signer.load(old_priv), Signer.load(new_priv)
    gate = UpdateGate(trusted)
    assert _check(gate, old).ok and _check(gate, new).reason == signing.UNKNOWN_KEY
    # 1. every robot trusts both keys (the file is re-read on change, no restart)
    with open(trusted, "a") as f:
        f.write("# rotation in progress\n" + open(new_pub).read())
    assert _check(gate, old).ok and _check(gate, new).ok
    # 2. the aggregator signs with the new key; 3. the old key is removed
    with open(trusted, "w") as f:
        f.write(open(new_pub).read())
    os.utime(trusted, ns=(1, 2))  # a different mtime even within the file system's time resolution
    assert _check(gate, new).ok and _check(gate, old).reason == signing.UNKNOWN_KEY


def test_sync_protocol_and_inbox_carry_the_signature(keys, tmp_path):
    from sakura_nexus.federated.common.codecs import encode
    from sakura_nexus.federated.common.protocol import SyncRequest
    from sakura_nexus.federated.common.weights import FLAT_VECTOR
    from sakura_nexus.federated.robot.clientapp import handle_sync
    from sakura_nexus.federated.robot.spool import Spool

    signer, pub = keys
    payload = encode(np.arange(10, dtype=np.float32), "dense")
    req = SyncRequest(global_version=3, model_version=3, model_payload=payload, model_key_id=signer.key_id,
                      model_signature=signer.sign("world_model", 3, FLAT_VECTOR, payload))
    back = SyncRequest.from_records(req.to_records())
    assert back.model_signature == req.model_signature and back.model_key_id == signer.key_id
    spool = Spool(str(tmp_path / "spool"))
    handle_sync(back, spool, "robot1")
    version, stored, meta = spool.inbox.latest("world_model")
    assert version == 3 and stored == payload
    v = UpdateGate(pub).check(model_id="world_model", version=version, codec=FLAT_VECTOR, payload=stored,
                              sha256=hashlib.sha256(stored).hexdigest(), key_id=meta["key_id"],
                              signature=bytes.fromhex(meta["signature"]), current_version=1,
                              expected_model_id="world_model")
    assert v.ok, v
    # an unsigned model (an aggregator without --signing-key) reaches the inbox unsigned
    handle_sync(SyncRequest(global_version=4, model_version=4, model_payload=payload), spool, "robot1")
    assert spool.inbox.latest("world_model")[2]["signature"] == ""


def test_flat_vector_update_becomes_the_running_models_payload():
    import torch

    from sakura_nexus.federated.common.codecs import encode
    from sakura_nexus.federated.common.weights import FLAT_VECTOR, update_to_world_model_payload, world_model_vector
    from sakura_nexus.models.world_model import WorldModel, world_model_from_bytes

    torch.manual_seed(0)
    running = WorldModel(version=1)
    before = world_model_vector(running)
    vec = np.random.default_rng(0).standard_normal(before.size).astype(np.float32)
    out = world_model_from_bytes(update_to_world_model_payload(FLAT_VECTOR, encode(vec, "dense"), running, 2),
                                 like=running)
    np.testing.assert_array_equal(world_model_vector(out), vec)
    np.testing.assert_array_equal(world_model_vector(running), before)  # the running model is untouched
    with pytest.raises(ValueError):
        update_to_world_model_payload(FLAT_VECTOR, encode(vec[:-1], "dense"), running, 2)
    with pytest.raises(ValueError):
        update_to_world_model_payload("pickle", b"", running, 2)


def test_clock_guard_detects_jumps_and_foreign_stamps():
    wall = [0.0]
    g = ClockGuard(1.0, wall=lambda: wall[0])
    assert g.observe(0.0) is None  # sim time before the first /clock is not judged
    assert g.observe(100.0) is None
    wall[0] += 0.1
    assert g.observe(100.1) is None
    wall[0] += 0.1
    assert g.observe(5.0) == BACKWARDS  # sim reset
    wall[0] += 0.1
    assert g.observe(5.1) is None
    wall[0] += 0.1
    assert g.observe(50.0) == FORWARDS  # clock stepped 45 s in 0.1 s of wall time
    wall[0] += 10.0
    assert g.observe(60.5) is None  # 10.5 s of clock in 10 s of wall time (inputs paused): no jump
    assert g.is_future(62.0, 60.5) and not g.is_future(61.4, 60.5) and not g.is_future(1e9, 0.0)
