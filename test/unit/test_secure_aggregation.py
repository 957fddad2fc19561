"""Secure-aggregation building blocks without Flower processes: the robot's contribution (sum of its
unacknowledged deltas, clipped), the aggregator's group-mean update (metadata only, exactly once) and the
secure FAB. The protocol itself runs in test_secure_aggregation_ros.py."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sakura_nexus.federated.common.codecs import encode
from sakura_nexus.federated.fleet.aggregator import FedBuffAggregator, FedBuffConfig, GlobalModelStore
from sakura_nexus.federated.robot.spool import Spool


def test_contribution_is_the_clipped_sum_of_unacked_deltas(tmp_path):
    from sakura_nexus.federated.common.flower_records import format_ranges, parse_ranges
    from sakura_nexus.federated.robot.clientapp import secure_contribution

    sp = Spool(str(tmp_path / "spool"))
    rng = np.random.default_rng(0)
    ds = [rng.normal(size=50).astype(np.float32) * 0.3 for _ in range(3)]
    for i, d in enumerate(ds, 1):
        sp.append("r1", i, encode(d), base_version=1, sample_count=10 * i)
    rid, vec, used, info = secure_contribution(sp, "r1", 50, clip=0.5)
    assert rid == "r1" and [e.seq for e in used] == [1, 2, 3]
    np.testing.assert_allclose(vec, np.clip(ds[0] + ds[1] + ds[2], -0.5, 0.5), atol=1e-6)
    assert info["deltas"] == 3 and info["samples"] == 60 and info["clipped"] == int(np.sum(np.abs(sum(ds)) > 0.5))
    assert parse_ranges(format_ranges(used)) == [(1, 1), (2, 2), (3, 3)]
    sp.ack([("r1", 1), ("r1", 2)])
    _, vec, used, _ = secure_contribution(sp, "r1", 50, clip=10.0)
    assert [e.seq for e in used] == [3]
    np.testing.assert_allclose(vec, ds[2], atol=1e-6)
    # nothing pending: zeros (every participant counts once in the mean); a wrong-size delta is skipped
    sp.ack([("r1", 3)])
    sp.append("r1", 4, encode(np.ones(7, np.float32)), base_version=1)
    _, vec, used, info = secure_contribution(sp, "r1", 50, clip=1.0)
    assert not used and info["deltas"] == 0 and not vec.any()


def test_group_mean_is_applied_once_and_nothing_per_robot_is_stored(tmp_path):
    store = str(tmp_path / "store")
    agg = FedBuffAggregator(np.zeros(20, np.float32), FedBuffConfig(server_lr=1.0), store_dir=store,
                            initial_version=1)
    m = np.full(20, 0.25, np.float32)
    assert agg.apply_secure_mean(m, [("r1", [(1, 2)]), ("r2", [(1, 1)])], samples=30) == 2
    np.testing.assert_allclose(agg.model, m)
    snap = agg.snapshot()
    assert snap["last_aggregation"]["secure"] and snap["last_aggregation"]["group"] == 2
    assert snap["last_aggregation"]["deltas"] == 3 and snap["buffer_robots"] == []
    assert agg.is_seen("r1", 2) and agg.is_seen("r2", 1)
    # a range that is already in the model: the whole sum is refused (it cannot be taken apart)
    assert agg.apply_secure_mean(m, [("r1", [(2, 3)]), ("r2", [(2, 2)])]) is None
    assert agg.counters["secure_refused_overlap"] == 1 and agg.version == 2
    assert agg.apply_secure_mean(np.full(20, np.nan, np.float32), [("r1", [(3, 3)])]) is None
    assert agg.apply_secure_mean(np.zeros(5, np.float32), [("r1", [(3, 3)])]) is None
    assert agg.counters["secure_refused"] == 3
    # the store: the models and the metadata, no per-robot slot
    st = GlobalModelStore(store).load_state()  # the state document with the slots table
    assert st["slots"] == {} and st["version"] == 2
    assert GlobalModelStore(store).load_model(2)[1].tolist() == m.tolist()
    # restart: resumes the version and the de-dup table
    agg2 = FedBuffAggregator(None, FedBuffConfig(), store_dir=store)
    assert agg2.version == 2 and agg2.is_seen("r1", 1)


def test_secure_mode_refuses_central_dp():
    from sakura_nexus.federated.fleet.serverapp import SecureServerLoop, ServerOptions

    agg = FedBuffAggregator(np.zeros(4, np.float32), FedBuffConfig(dp_noise_multiplier=1.0, clip_norm=1.0))
    with pytest.raises(ValueError, match="exclusive"):
        SecureServerLoop(None, agg, ServerOptions(store_dir="/nonexistent"), None)


def test_secure_fab_names_the_secure_apps(tmp_path):
    from sakura_nexus.federated.common.flower_cli import materialise_app
    from sakura_nexus.federated.fleet import serverapp
    from sakura_nexus.federated.robot import clientapp

    text = open(os.path.join(materialise_app(str(tmp_path / "a"), secure=True), "pyproject.toml")).read()
    assert 'serverapp = "sakura_nexus.federated.fleet.serverapp:secure_server_app"' in text
    assert 'clientapp = "sakura_nexus.federated.robot.clientapp:secure_client_app"' in text
    assert "secure-min-group" in text
    plain = open(os.path.join(materialise_app(str(tmp_path / "b")), "pyproject.toml")).read()
    assert 'serverapp:server_app"' in plain and "secure_server_app" not in plain
    assert serverapp.secure_server_app is not None and clientapp.secure_client_app is not None
