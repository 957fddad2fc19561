"""Clipping, Gaussian noise and Renyi-DP accounting for (sub)sampled Gaussian mechanisms.

**The accountant is Google's** ``dp-accounting`` (``dp_accounting.rdp``, the library behind
TensorFlow Privacy and Flower's ``flwr[dp]`` accountant): :class:`RDPAccountant` keeps a ledger of
releases ``(noise multiplier, Poisson sampling rate, count)``; the RDP curve of one release comes
from ``dp_accounting.rdp.RdpAccountant`` (``PoissonSampledDpEvent(q, GaussianDpEvent(z))``, or
``GaussianDpEvent(z)`` for ``q = 1``), compositions add up (RDP composes linearly, as the library's
own ``SelfComposedDpEvent`` does) and the conversion to (epsilon, delta) is the library's
``compute_epsilon`` (Balle et al. 2020, Prop. 12).

:func:`compute_rdp` / :func:`rdp_to_epsilon` are an independent, hand-written implementation of the
same mathematics (Mironov, Talwar, Zhang 2019: exact binomial expansion for integer orders, the
two-sided erfc series for fractional ones). **They are a cross-check only**: nothing in the project
accounts with them; ``test/unit/test_federated_privacy.py`` requires them to agree with the library
within 1 % and checks both against direct numerical integration. Where they differ it is at small
fractional orders, where the library's series gives up (logged by absl, the order is excluded) or
sums absolute values (a looser bound); the library's figure is the one reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_ORDERS: tuple[float, ...] = tuple([1.0 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
                                          + [128.0, 256.0, 512.0])
DEFAULT_DELTA = 1e-5

__all__ = [
    "DEFAULT_DELTA",
    "DEFAULT_ORDERS",
    "GaussianDP",
    "LocalPrivatizer",
    "RDPAccountant",
    "add_gaussian_noise",
    "clip_l2",
    "compute_rdp",
    "l2norm",
    "library_epsilon",
    "library_rdp",
    "noise_for_epsilon",
    "rdp_to_epsilon",
]


# --------------------------------------------------------------------------- clipping and noise


def l2norm(x) -> float:
    """L2 norm in float64 without BLAS (np.linalg.norm's dot can stall on a busy multi-threaded BLAS)."""
    x = np.asarray(x)
    return float(np.sqrt(np.square(x, dtype=np.float64).sum()))


def clip_l2(x: np.ndarray, max_norm: float) -> tuple[np.ndarray, float]:
    """Scale ``x`` down so that ``||x||_2 <= max_norm``; return (clipped copy, original norm).

    A non-finite vector cannot be clipped meaningfully; it is returned unchanged with norm ``inf``/``nan``
    so callers can reject it.
    """
    x = np.asarray(x, dtype=np.float32)
    norm = l2norm(x)
    if not math.isfinite(norm):
        return x.copy(), norm
    if max_norm is None or max_norm <= 0 or norm <= max_norm:
        return x.copy(), norm
    return (x * np.float32(max_norm / norm)).astype(np.float32), norm


def add_gaussian_noise(x: np.ndarray, std: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Return ``x + N(0, std^2 I)`` (float32)."""
    x = np.asarray(x, dtype=np.float32)
    if std <= 0:
        return x.copy()
    rng = rng if rng is not None else np.random.default_rng()
    return (x + rng.normal(0.0, std, size=x.shape)).astype(np.float32)


# --------------------------------------------------------------------------- RDP math (hand-written cross-check)


def _log_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


def _log_sub(a: float, b: float) -> float:
    """log(exp(a) - exp(b)) for a >= b."""
    if b == -math.inf:
        return a
    if a < b:
        raise ValueError("log_sub of a negative number")
    if a == b:
        return -math.inf
    return a + math.log(-math.expm1(b - a))


def _log_erfc(x: float) -> float:
    """log(erfc(x)), stable for large positive x."""
    if x < 20.0:
        v = math.erfc(x)
        if v > 0:
            return math.log(v)
    # asymptotic series: erfc(x) ~ exp(-x^2) / (x sqrt(pi)) * (1 - 1/(2x^2) + 3/(4x^4) - 15/(8x^6) + ...)
    x2 = x * x
    s = 1.0 - 1.0 / (2 * x2) + 3.0 / (4 * x2 * x2) - 15.0 / (8 * x2 ** 3) + 105.0 / (16 * x2 ** 4)
    return -x2 - math.log(x) - 0.5 * math.log(math.pi) + math.log(s)


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    """log A_alpha for integer alpha: log sum_k C(alpha,k) (1-q)^(alpha-k) q^k exp((k^2-k)/(2 sigma^2))."""
    log_a = -math.inf
    lq, l1q = math.log(q), math.log1p(-q)
    for k in range(alpha + 1):
        log_binom = math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
        term = log_binom + k * lq + (alpha - k) * l1q + (k * k - k) / (2 * sigma ** 2)
        log_a = _log_add(log_a, term)
    return log_a


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    """log A_alpha for fractional alpha via the two-sided series with erfc tails (Mironov et al. 2019)."""
    log_a0, log_a1 = -math.inf, -math.inf
    z0 = sigma ** 2 * math.log(1.0 / q - 1.0) + 0.5
    lq, l1q = math.log(q), math.log1p(-q)
    coef = 1.0  # generalised binomial coefficient C(alpha, i), updated iteratively
    i = 0
    last0 = last1 = -math.inf
    while True:
        if i > 0:
            coef *= (alpha - i + 1) / i
        if coef == 0.0:
            break
        log_coef = math.log(abs(coef))
        j = alpha - i
        log_t0 = log_coef + i * lq + j * l1q
        log_t1 = log_coef + j * lq + i * l1q
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma ** 2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma ** 2) + log_e1
        if coef > 0:
            log_a0 = _log_add(log_a0, log_s0)
            log_a1 = _log_add(log_a1, log_s1)
        else:
            log_a0 = _log_sub(log_a0, log_s0)
            log_a1 = _log_sub(log_a1, log_s1)
        i += 1
        if (log_s0 < last0 and log_s1 < last1 and max(log_s0, log_s1) < _log_add(log_a0, log_a1) - 30) \
                or i > 10000:
            break
        last0, last1 = log_s0, log_s1
    return _log_add(log_a0, log_a1)


def _rdp_single(q: float, sigma: float, alpha: float) -> float:
    if q == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    if math.isinf(alpha):
        return math.inf
    if q == 1.0:
        return alpha / (2 * sigma ** 2)
    if float(alpha).is_integer():
        log_a = _log_a_int(q, sigma, int(alpha))
    else:
        log_a = _log_a_frac(q, sigma, float(alpha))
    return log_a / (alpha - 1)


def compute_rdp(q: float, noise_multiplier: float, steps: int | float,
                orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP at each order of ``steps`` compositions of the Poisson-subsampled Gaussian mechanism.

    ``q`` is the sampling probability (1 = no subsampling), ``noise_multiplier`` the ratio of the noise
    standard deviation to the L2 sensitivity (the clipping norm).
    """
    if not 0 <= q <= 1:
        raise ValueError(f"sampling probability must be in [0, 1], got {q}")
    if noise_multiplier < 0:
        raise ValueError("noise multiplier must be >= 0")
    if q == 1.0:
        # closed form, vectorised (also covers huge order grids quickly)
        a = np.asarray(orders, dtype=np.float64)
        if noise_multiplier == 0:
            return np.full(a.shape, np.inf)
        return steps * a / (2 * noise_multiplier ** 2)
    return np.array([_rdp_single(q, noise_multiplier, float(a)) for a in orders], dtype=np.float64) * steps


def rdp_to_epsilon(orders: Sequence[float], rdp: Sequence[float], delta: float) -> tuple[float, float]:
    """Smallest epsilon (and the order achieving it) such that the RDP curve implies (eps, delta)-DP."""
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    if a.shape != r.shape:
        raise ValueError("orders and rdp must have the same length")
    with np.errstate(invalid="ignore", divide="ignore"):
        eps = r + np.log1p(-1.0 / a) - (math.log(delta) + np.log(a)) / (a - 1.0)
    eps = np.where((a > 1) & np.isfinite(r), eps, np.inf)
    if np.all(r == 0):
        return 0.0, float(a[0])
    i = int(np.nanargmin(eps))
    return float(max(0.0, eps[i])), float(a[i])


# --------------------------------------------------------------------------- the library (dp-accounting)


def _quiet_absl() -> None:
    """dp-accounting logs a WARNING per order its fractional series excludes; that is expected here."""
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # pragma: no cover - absl comes with dp-accounting
        pass


def library_rdp(q: float, noise_multiplier: float, orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP of ONE Poisson-subsampled Gaussian release at each order, from ``dp_accounting``."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant as _LibRdp

    if not 0 <= q <= 1:
        raise ValueError(f"sampling probability must be in [0, 1], got {q}")
    if noise_multiplier < 0:
        raise ValueError("noise multiplier must be >= 0")
    a = np.asarray(orders, dtype=np.float64)
    if q == 0:
        return np.zeros(a.shape)
    if noise_multiplier == 0:
        return np.full(a.shape, np.inf)
    _quiet_absl()
    event = dp_accounting.GaussianDpEvent(float(noise_multiplier))
    if q < 1:
        event = dp_accounting.PoissonSampledDpEvent(float(q), event)
    lib = _LibRdp(list(a))
    lib.compose(event)
    return np.asarray(lib.rdp, dtype=np.float64)


def library_epsilon(orders: Sequence[float], rdp: Sequence[float], delta: float) -> float:
    """Epsilon at ``delta`` of an RDP curve (``dp_accounting.rdp.compute_epsilon``)."""
    from dp_accounting.rdp import compute_epsilon

    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    r = np.asarray(rdp, dtype=np.float64)
    if np.all(r == 0):
        return 0.0
    return float(compute_epsilon(list(map(float, orders)), list(map(float, r)), float(delta))[0])


def noise_for_epsilon(epsilon: float, sample_rate: float, steps: int, delta: float = DEFAULT_DELTA,
                      lo: float = 0.3, hi: float = 100.0) -> float:
    """Smallest noise multiplier (to 0.5 %) whose ``steps`` releases at ``sample_rate`` stay within
    (``epsilon``, ``delta``) by the library's RDP accountant."""
    def eps(z: float) -> float:
        return library_epsilon(DEFAULT_ORDERS, library_rdp(sample_rate, z) * steps, delta)

    if eps(hi) > epsilon:
        raise ValueError(f"epsilon {epsilon} is out of reach even with noise multiplier {hi}")
    while hi / lo > 1.005:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if eps(mid) <= epsilon else (mid, hi)
    return hi


# --------------------------------------------------------------------------- accountant


@dataclass
class RDPAccountant:
    """Composes (subsampled) Gaussian releases; reports epsilon at a target delta (``dp-accounting``).

    The ledger (noise multiplier, sampling rate, count) is JSON-serialisable via :meth:`state_dict`.
    """

    orders: tuple[float, ...] = DEFAULT_ORDERS
    target_delta: float = DEFAULT_DELTA
    ledger: list[list[float]] = field(default_factory=list)  # [noise_multiplier, q, count]

    def __post_init__(self) -> None:
        self.orders = tuple(float(o) for o in self.orders)
        self._rdp = np.zeros(len(self.orders))
        self._cache: dict[tuple[float, float], np.ndarray] = {}
        for z, q, c in self.ledger:
            self._rdp += self._unit(z, q) * c

    def _unit(self, noise_multiplier: float, q: float) -> np.ndarray:
        key = (float(noise_multiplier), float(q))
        if key not in self._cache:
            self._cache[key] = library_rdp(q, noise_multiplier, self.orders)
        return self._cache[key]

    def step(self, noise_multiplier: float, sample_rate: float = 1.0, count: int = 1) -> None:
        """Compose ``count`` releases of a Gaussian mechanism with the given noise multiplier."""
        if count <= 0:
            return
        self._rdp = self._rdp + self._unit(noise_multiplier, sample_rate) * count
        if self.ledger and self.ledger[-1][0] == noise_multiplier and self.ledger[-1][1] == sample_rate:
            self.ledger[-1][2] += count
        else:
            self.ledger.append([float(noise_multiplier), float(sample_rate), int(count)])

    @property
    def num_releases(self) -> int:
        return int(sum(c for _, _, c in self.ledger))

    def epsilon(self, delta: float | None = None) -> float:
        if not self.ledger:
            return 0.0
        return library_epsilon(self.orders, self._rdp, self.target_delta if delta is None else delta)

    def epsilon_if(self, noise_multiplier: float, sample_rate: float = 1.0, count: int = 1,
                   delta: float | None = None) -> float:
        """Epsilon after composing the given releases, without committing them."""
        rdp = self._rdp + self._unit(noise_multiplier, sample_rate) * count
        return library_epsilon(self.orders, rdp, self.target_delta if delta is None else delta)

    def steps_within(self, budget: float, noise_multiplier: float, sample_rate: float = 1.0,
                     delta: float | None = None, limit: int = 10**8) -> int:
        """How many more releases of (``noise_multiplier``, ``sample_rate``) keep epsilon <= ``budget``
        (bisection on the library's epsilon; epsilon grows with the count)."""
        if self.epsilon_if(noise_multiplier, sample_rate, 1, delta) > budget:
            return 0
        lo, hi = 1, 2
        while hi < limit and self.epsilon_if(noise_multiplier, sample_rate, hi, delta) <= budget:
            lo, hi = hi, hi * 2
        hi = min(hi, limit)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.epsilon_if(noise_multiplier, sample_rate, mid, delta) <= budget:
                lo = mid
            else:
                hi = mid
        return lo

    def state_dict(self) -> dict:
        return {"target_delta": self.target_delta, "ledger": [list(x) for x in self.ledger]}

    @classmethod
    def from_state_dict(cls, state: dict, orders: Sequence[float] = DEFAULT_ORDERS) -> RDPAccountant:
        return cls(orders=tuple(orders), target_delta=float(state.get("target_delta", DEFAULT_DELTA)),
                   ledger=[list(x) for x in state.get("ledger", [])])


# --------------------------------------------------------------------------- mechanisms


@dataclass
class LocalPrivatizer:
    """Robot-side: clip each delta to ``clip_norm`` and (optionally) add N(0, (z * clip_norm)^2) noise.

    With ``noise_multiplier > 0`` every released delta is one Gaussian release at user level; the
    accountant reports the epsilon the robot has spent (for ``SyncStatus.epsilon_spent``).
    """

    clip_norm: float
    noise_multiplier: float = 0.0
    target_delta: float = DEFAULT_DELTA
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.clip_norm <= 0:
            raise ValueError("clip_norm must be > 0")
        self.rng = np.random.default_rng(self.seed)
        self.accountant = RDPAccountant(target_delta=self.target_delta)

    def __call__(self, delta: np.ndarray) -> np.ndarray:
        clipped, norm = clip_l2(delta, self.clip_norm)
        if not math.isfinite(norm):
            raise ValueError("delta is not finite")
        if self.noise_multiplier > 0:
            clipped = add_gaussian_noise(clipped, self.noise_multiplier * self.clip_norm, self.rng)
            self.accountant.step(self.noise_multiplier, 1.0)
        return clipped

    @property
    def epsilon(self) -> float:
        return self.accountant.epsilon() if self.noise_multiplier > 0 else 0.0


@dataclass
class GaussianDP:
    """Server-side central DP for one aggregation: clip each contribution, sum, add Gaussian noise.

    ``aggregate(contributions, divisor)`` returns ``(sum_i clip(c_i) + N(0, (z C)^2)) / divisor`` and
    records one release in the accountant. The L2 sensitivity of the sum to adding/removing one robot is
    ``C`` as long as each robot has at most one contribution per release (the aggregator guarantees it).
    ``sample_rate`` is the Poisson participation probability assumed for amplification; the default 1.0
    claims no amplification (participation in asynchronous FL is not random).
    """

    clip_norm: float
    noise_multiplier: float
    target_delta: float = DEFAULT_DELTA
    sample_rate: float = 1.0
    max_epsilon: float | None = None
    seed: int | None = None
    accountant: RDPAccountant = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.clip_norm <= 0:
            raise ValueError("clip_norm must be > 0")
        if self.noise_multiplier <= 0:
            raise ValueError("noise_multiplier must be > 0 for DP")
        self.rng = np.random.default_rng(self.seed)
        if self.accountant is None:
            self.accountant = RDPAccountant(target_delta=self.target_delta)

    @property
    def epsilon(self) -> float:
        return self.accountant.epsilon()

    def would_exceed(self) -> bool:
        if self.max_epsilon is None:
            return False
        return self.accountant.epsilon_if(self.noise_multiplier, self.sample_rate) > self.max_epsilon

    def aggregate(self, contributions: Sequence[np.ndarray], divisor: float) -> np.ndarray:
        if not contributions:
            raise ValueError("no contributions")
        total = np.zeros_like(np.asarray(contributions[0], np.float32))
        for c in contributions:
            total += clip_l2(c, self.clip_norm)[0]
        total = add_gaussian_noise(total, self.noise_multiplier * self.clip_norm, self.rng)
        self.accountant.step(self.noise_multiplier, self.sample_rate)
        return (total / float(divisor)).astype(np.float32)
