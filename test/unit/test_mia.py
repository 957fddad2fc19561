"""The membership-inference AUC used by the fleet experiment's privacy audit."""

import numpy as np
import pytest


def test_auc_of_the_loss_threshold_attack():
    from sakura_nexus.experiments.fleet import auc

    rng = np.random.default_rng(0)
    same = auc(rng.normal(size=2000), rng.normal(size=2000))
    assert same == pytest.approx(0.5, abs=0.03)
    # members with lower loss are recognised; the score is -loss
    assert auc(np.zeros(10), np.ones(10)) == 1.0 and auc(np.ones(10), np.zeros(10)) == 0.0
    assert auc(np.zeros(4), np.zeros(4)) == 0.5  # ties count half
    shifted = auc(rng.normal(-1.0, 1.0, 4000), rng.normal(0.0, 1.0, 4000))
    assert shifted == pytest.approx(0.760, abs=0.02)  # Phi(1 / sqrt 2) for a unit shift
