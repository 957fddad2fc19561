"""Clipping, noise and RDP accounting (checked against published reference values and integration)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sakura_nexus.federated.common.privacy import (
    GaussianDP,
    LocalPrivatizer,
    RDPAccountant,
    add_gaussian_noise,
    clip_l2,
    compute_rdp,
    rdp_to_epsilon,
)


def test_clip_l2():
    x = np.array([3.0, 4.0], np.float32)
    y, n = clip_l2(x, 1.0)
    assert n == pytest.approx(5.0) and np.linalg.norm(y) == pytest.approx(1.0, rel=1e-6)
    assert np.allclose(y, x / 5)
    y, n = clip_l2(x, 10.0)
    assert np.array_equal(y, x)
    y, n = clip_l2(np.array([np.nan, 1.0], np.float32), 1.0)
    assert not math.isfinite(n)


def test_gaussian_noise_std():
    x = np.zeros(200_000, np.float32)
    y = add_gaussian_noise(x, 0.5, np.random.default_rng(0))
    assert y.std() == pytest.approx(0.5, rel=0.01)
    assert np.array_equal(add_gaussian_noise(x, 0.0), x)


def test_rdp_gaussian_closed_form():
    a = [1.5, 2.0, 3.14159, 32.0]
    assert np.allclose(compute_rdp(1.0, 2.71828, 1, a), np.array(a) / (2 * 2.71828 ** 2))
    assert np.allclose(compute_rdp(1.0, 2.0, 7, a), 7 * np.array(a) / 8)
    assert np.all(compute_rdp(0.0, 1.0, 10, a) == 0)
    assert np.all(np.isinf(compute_rdp(0.5, 0.0, 1, a)))


def test_rdp_subsampled_gaussian_reference_values():
    """Published values of Google's dp-accounting (q=0.01, sigma=2.5, 50 steps).

    Integer orders match to 1e-4. For fractional orders the reference sums |terms| of the series (an
    upper bound); our exact sum must not exceed it and must match numerical integration.
    """
    orders = [1.5, 2.5, 5, 50, 100, np.inf]
    ref = [6.70579741e-04, 1.08548710e-03, 2.18075656e-03, 2.38460375e-02, 1.67416308e02, np.inf]
    ours = compute_rdp(0.01, 2.5, 50, orders)
    for o, r, v in zip(orders, ref, ours, strict=True):
        if np.isinf(r):
            assert np.isinf(v)
        elif float(o).is_integer():
            assert v == pytest.approx(r, rel=1e-4)
        else:
            assert v <= r * (1 + 1e-4)
            assert v == pytest.approx(_rdp_by_integration(0.01, 2.5, o) * 50, rel=1e-6)


def _rdp_by_integration(q: float, sigma: float, alpha: float) -> float:
    """D_alpha(mixture || N(0, sigma^2)) by brute-force integration on a fine grid."""
    z = np.linspace(-30 * sigma, 30 * sigma + 1, 1_200_001)
    mu0 = np.exp(-z ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))
    ratio = 1 - q + q * np.exp((2 * z - 1) / (2 * sigma ** 2))
    return math.log(np.trapezoid(mu0 * ratio ** alpha, z)) / (alpha - 1)


@pytest.mark.parametrize("q,sigma,alpha", [(0.01, 1.0, 2), (0.05, 0.8, 3.5), (0.1, 2.0, 1.25),
                                           (0.2, 4.0, 10.5), (0.001, 1.0, 20.0), (0.5, 3.0, 2.75)])
def test_rdp_matches_numerical_integration(q, sigma, alpha):
    v = compute_rdp(q, sigma, 1, [alpha])[0]
    assert v == pytest.approx(_rdp_by_integration(q, sigma, alpha), rel=1e-5, abs=1e-12)


def test_epsilon_conversion_reference_values():
    # constant RDP = pure DP; reference: eps = 1.32783806176 at order 32 (Balle et al. 2020 conversion)
    eps, order = rdp_to_epsilon(range(2, 33), [1.1] * 31, 1e-5)
    assert eps == pytest.approx(1.32783806176, abs=1e-9) and order == 32
    # the Gaussian mechanism with sigma = 4.530877117 is exactly (1, 1e-6)-DP via this conversion
    orders = [0.001 * i for i in range(1000, 100000)]
    eps, _ = rdp_to_epsilon(orders, compute_rdp(1.0, 4.530877117, 1, orders), 1e-6)
    assert eps == pytest.approx(1.0, abs=1e-6)


def test_rdp_epsilon_is_an_upper_bound_of_the_exact_gaussian_curve():
    """For the plain Gaussian the optimal delta(eps) is known in closed form (Balle & Wang 2018)."""
    sigma = 1.0
    orders = [1 + x / 10 for x in range(1, 500)]
    rdp = compute_rdp(1.0, sigma, 1, orders)
    for delta in (1e-3, 1e-5, 1e-7):
        eps, _ = rdp_to_epsilon(orders, rdp, delta)
        exact_delta = (0.5 * math.erfc((eps * sigma - 0.5 / sigma) / math.sqrt(2))
                       - math.exp(eps) * 0.5 * math.erfc((eps * sigma + 0.5 / sigma) / math.sqrt(2)))
        assert exact_delta <= delta * (1 + 1e-6)


def test_accountant_composition_state_and_monotonicity():
    acc = RDPAccountant()
    assert acc.epsilon() == 0.0
    eps = []
    for _ in range(5):
        acc.step(1.1, 0.01, count=200)
        eps.append(acc.epsilon())
    assert all(b > a for a, b in zip(eps, eps[1:], strict=False))
    one = RDPAccountant()
    one.step(1.1, 0.01, count=1000)
    assert one.epsilon() == pytest.approx(acc.epsilon(), rel=1e-9)
    assert acc.num_releases == 1000 and len(acc.ledger) == 1
    back = RDPAccountant.from_state_dict(acc.state_dict())
    assert back.epsilon() == pytest.approx(acc.epsilon(), rel=1e-12)
    assert acc.epsilon_if(1.1, 0.01, 100) > acc.epsilon()
    # more noise -> less epsilon; at delta = 1e-5 by default
    a2 = RDPAccountant()
    a2.step(2.0, 0.01, count=1000)
    assert a2.epsilon() < one.epsilon()
    assert acc.epsilon(1e-3) < acc.epsilon()


def test_known_dpsgd_ballpark():
    # the classic MNIST DP-SGD setting (q = 256/60000, sigma = 1.1, 60 epochs) is ~eps 3 at delta 1e-5
    q = 256 / 60000
    steps = int(60 / q)
    acc = RDPAccountant()
    acc.step(1.1, q, steps)
    assert 2.5 < acc.epsilon() < 3.5


def test_gaussian_dp_aggregate_and_budget():
    dp = GaussianDP(clip_norm=1.0, noise_multiplier=1.0, max_epsilon=20.0, seed=0)
    c = [np.ones(1000, np.float32) * 10, np.zeros(1000, np.float32)]
    out = dp.aggregate(c, divisor=2)
    # clipped sum has norm 1; noise std 1 per coordinate; divided by 2
    assert out.std() == pytest.approx(0.5, rel=0.1)
    assert dp.accountant.num_releases == 1 and dp.epsilon > 0
    n = 1
    while not dp.would_exceed():
        dp.aggregate(c, 2)
        n += 1
    assert dp.epsilon <= 20.0 < dp.accountant.epsilon_if(1.0, 1.0)
    assert n > 1
    with pytest.raises(ValueError):
        GaussianDP(clip_norm=0.0, noise_multiplier=1.0)


def test_local_privatizer():
    lp = LocalPrivatizer(clip_norm=0.5, noise_multiplier=0.0)
    y = lp(np.ones(100, np.float32))
    assert np.linalg.norm(y) == pytest.approx(0.5, rel=1e-5) and lp.epsilon == 0.0
    lp = LocalPrivatizer(clip_norm=0.5, noise_multiplier=2.0, seed=1)
    y = lp(np.ones(100_000, np.float32))
    assert y.std() == pytest.approx(1.0, rel=0.02)
    e1 = lp.epsilon
    lp(np.ones(100_000, np.float32))
    assert lp.epsilon > e1 > 0
    with pytest.raises(ValueError):
        lp(np.full(3, np.inf, np.float32))


# --------------------------------------------------------------------------- the library accountant


@pytest.mark.parametrize("z,q,steps", [(1.0, 1.0, 240), (4.0, 1.0, 240), (1.1, 32 / 300, 1200),
                                       (2.0, 32 / 300, 1200), (1.1, 256 / 60000, 14062),
                                       (1.0, 0.01, 10000), (2.0, 0.1, 500), (3.0, 0.2, 50)])
def test_accountant_is_the_library_and_the_handwritten_cross_check_agrees(z, q, steps):
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant as LibRdp

    from sakura_nexus.federated.common.privacy import DEFAULT_ORDERS

    # the library, used the documented way (SelfComposedDpEvent of a Poisson-sampled Gaussian)
    event = dp_accounting.GaussianDpEvent(z)
    if q < 1:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    lib = LibRdp(list(DEFAULT_ORDERS))
    lib.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    eps_lib = lib.get_epsilon(1e-5)
    # the project's accountant reports exactly the library's figure (linear composition of its curve)
    acc = RDPAccountant()
    for _ in range(4):
        acc.step(z, q, steps // 4)
    acc.step(z, q, steps - 4 * (steps // 4))
    assert acc.epsilon() == pytest.approx(eps_lib, rel=1e-9)
    # the hand-written reference implementation agrees with the library within 1 %
    eps_ref, _ = rdp_to_epsilon(DEFAULT_ORDERS, compute_rdp(q, z, steps, DEFAULT_ORDERS), 1e-5)
    assert eps_ref == pytest.approx(eps_lib, rel=0.01)
    assert eps_ref <= eps_lib * (1 + 1e-9)  # the exact signed series is never looser than the library's


def test_noise_for_epsilon_and_steps_within():
    from sakura_nexus.federated.common.privacy import noise_for_epsilon

    z = noise_for_epsilon(8.0, 32 / 300, 1200)
    acc = RDPAccountant()
    acc.step(z, 32 / 300, 1200)
    assert 7.5 < acc.epsilon() <= 8.0
    acc2 = RDPAccountant()
    acc2.step(z * 0.98, 32 / 300, 1200)
    assert acc2.epsilon() > 8.0  # the smallest such z, to ~2 %
    fresh = RDPAccountant()
    n = fresh.steps_within(8.0, z, 32 / 300)
    assert fresh.epsilon_if(z, 32 / 300, n) <= 8.0 < fresh.epsilon_if(z, 32 / 300, n + 1)
    assert 1200 <= n < 1400
    assert fresh.steps_within(0.01, z, 32 / 300) == 0
