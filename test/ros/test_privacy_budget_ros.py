"""Record-level privacy budget across the ROS chain: world_model_node learns with DP-SGD until its epsilon
budget is spent, the federated_sync_node then sends nothing more and its SyncStatus says why."""

import re
import time

import numpy as np
import pytest
from helpers import NodeProcess, wait_for

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    import torch

    from sakura_nexus.models.world_model import WorldModel, world_model_to_bytes

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("wm")
    (d / "world_model.bin").write_bytes(world_model_to_bytes(WorldModel(version=1)))
    return d


def _spooled(out: str) -> list[int]:
    return [int(m) for m in re.findall(r"spooled robot seq=(\d+)", out)]


def test_budget_exhaustion_stops_the_robot_sending_and_sync_status_says_why(ros_node, ckpt_dir, tmp_path):
    from test_world_model_node import Feed

    from sakura_nexus.federated.common.flower_cli import free_port
    from sakura_nexus.msg import ModelDelta, SyncStatus

    budget = 6.0
    feed = Feed(ros_node)
    status = ros_node.collect(SyncStatus, "sync_status", 200)
    deltas = ros_node.collect(ModelDelta, "model_delta", 200)
    wm = NodeProcess("world_model", {"checkpoint": str(ckpt_dir), "delta_period": 0.5, "max_input_age": 2.0,
                                     "learning_steps_per_s": 100.0, "batch_size": 8, "buffer_size": 100,
                                     "dp_noise_multiplier": 2.0, "dp_clip_norm": 1.0, "epsilon_budget": budget,
                                     "state_dir": str(tmp_path / "wm_state")})
    sync = NodeProcess("federated_sync", {"checkpoint": str(ckpt_dir), "spool_dir": str(tmp_path / "spool"),
                                          "codec": "dense", "clip_norm": 1e6, "poll_period": 0.2,
                                          "start_supernode": False, "superlink": f"127.0.0.1:{free_port()}"})
    try:
        assert wait_for(lambda: ros_node.count_subscribers("observation") > 0
                        and ros_node.count_subscribers("model_delta") > 1, 30), wm.output() + sync.output()
        t_end = time.monotonic() + 90
        while time.monotonic() < t_end and not any(s.budget_exhausted for s in status):
            feed.run(1.0)
        assert any(s.budget_exhausted for s in status), wm.output()[-3000:] + sync.output()[-3000:]
        # every delta said what it cost, none above the budget; the flagged one was the last published
        assert deltas and all(0 < d.epsilon_spent <= budget and d.epsilon_budget == budget
                              and d.dp_delta == pytest.approx(1e-5) for d in deltas)
        eps = [d.epsilon_spent for d in deltas]
        assert eps == sorted(eps)
        assert deltas[-1].budget_exhausted and not any(d.budget_exhausted for d in deltas[:-1])
        spooled = _spooled(sync.output())
        assert spooled and spooled[-1] == deltas[-1].sequence  # the last in-budget delta went into the spool
        n_deltas, n_spooled = len(deltas), len(spooled)
        feed.run(3.0)  # the robot keeps driving and observing; nothing more is learned or sent
        assert len(deltas) == n_deltas and len(_spooled(sync.output())) == n_spooled
        s = status[-1]
        assert s.budget_exhausted and s.epsilon_budget == pytest.approx(budget)
        assert 0 < s.record_epsilon_spent <= budget and np.isclose(s.record_epsilon_spent, deltas[-1].epsilon_spent,
                                                                   rtol=1e-6)
        assert "privacy budget spent" in s.last_error and "sends no more" in s.last_error
        assert "privacy budget spent" in wm.output()
        # the ledger went to disk before the last delta left: a restart cannot forget it
        assert (tmp_path / "wm_state" / "privacy_ledger.json").is_file()
    finally:
        wm.stop()
        sync.stop()
