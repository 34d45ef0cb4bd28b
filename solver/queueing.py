"""Queueing delay at a pool of model instances: the convex delay a queue-aware placement minimises.

A (model, node) pool of ``n`` instances, each serving ``mu`` requests/s, receives ``lam`` requests/s
spread evenly over them. Each instance is an M/M/1 queue at load ``rho = lam / (n mu)``, so a request
spends ``W = 1 / (mu - lam / n)`` seconds there, service included. The pool's total delay rate (delay
summed over the requests of one second, request-ms per second) is

    D(lam, n) = lam * W = n * g(lam / n),    g(t) = 1000 t / (mu - t)

``g`` is convex below ``mu``, so ``D``, its perspective, is jointly convex in (lam, n) for n > 0. Above
``t_max = rho_max mu`` the delay continues along g's tangent at t_max: finite at any load, still convex
and continuously differentiable, so an interior-point solver can cross it while the plan's throughput
constraint (lam <= rho_max mu n) keeps real pools below saturation.

All functions take numpy arrays (or scalars) and broadcast; ``n`` must be positive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
ArrayLike = npt.ArrayLike

RHO_MAX = 0.9  # default load beyond which the delay continues linearly


@dataclass(frozen=True)
class PoolDelay:
    """The delay rate D of pools with service rate ``mu`` (requests/s per instance), in request-ms/s."""

    mu: float
    rho_max: float = RHO_MAX

    def __post_init__(self) -> None:
        if not self.mu > 0:
            raise ValueError("mu must be positive")
        if not 0 < self.rho_max < 1:
            raise ValueError("rho_max must lie in (0, 1)")

    @property
    def t_max(self) -> float:
        """Per-instance arrival rate where the linear continuation starts."""
        return self.rho_max * self.mu

    def _g(self, t: Array) -> tuple[Array, Array, Array]:
        """g, g', g'' at per-instance rate t (tangent line above t_max)."""
        mu, tm = self.mu, self.t_max
        inside = t <= tm
        tc = np.minimum(t, tm)
        gap = mu - tc
        g_in, d1_in = 1000.0 * tc / gap, 1000.0 * mu / gap**2
        g = np.where(inside, g_in, g_in + d1_in * (t - tm))
        d2 = np.where(inside, 2000.0 * mu / gap**3, 0.0)
        return g, d1_in, d2

    def value(self, lam: ArrayLike, n: ArrayLike) -> Array:
        """D(lam, n): request-ms of delay per second at the pool."""
        lam_a, n_a = _pos(lam, n)
        g, _, _ = self._g(lam_a / n_a)
        return np.asarray(n_a * g)

    def mean_ms(self, lam: ArrayLike, n: ArrayLike) -> Array:
        """Mean time a request spends at the pool (ms); the service time 1000 / mu at no load."""
        lam_a, n_a = _pos(lam, n)
        t = lam_a / n_a
        g, _, _ = self._g(t)
        inside = 1000.0 / (self.mu - np.minimum(t, self.t_max))  # g(t) / t below the cap, without t / t
        safe = np.where(t > self.t_max, t, 1.0)
        return np.asarray(np.where(t > self.t_max, g / safe, inside))

    def gradient(self, lam: ArrayLike, n: ArrayLike) -> tuple[Array, Array]:
        """(dD/dlam, dD/dn)."""
        lam_a, n_a = _pos(lam, n)
        t = lam_a / n_a
        g, d1, _ = self._g(t)
        return np.asarray(d1), np.asarray(g - t * d1)

    def hessian(self, lam: ArrayLike, n: ArrayLike) -> tuple[Array, Array, Array]:
        """(d2D/dlam2, d2D/dlam dn, d2D/dn2): g''/n times [[1, -t], [-t, t^2]], positive semidefinite."""
        lam_a, n_a = _pos(lam, n)
        t = lam_a / n_a
        _, _, d2 = self._g(t)
        base = d2 / n_a
        return np.asarray(base), np.asarray(-t * base), np.asarray(t * t * base)

    def instances_needed(self, lam: ArrayLike) -> npt.NDArray[np.int64]:
        """The fewest instances that keep each one's load at or below rho_max (0 for no traffic)."""
        lam_a = np.asarray(lam, dtype=np.float64)
        if np.any(lam_a < 0):
            raise ValueError("arrival rates must not be negative")
        return np.ceil(lam_a / self.t_max - 1e-12).clip(min=0).astype(np.int64)


def _pos(lam: ArrayLike, n: ArrayLike) -> tuple[Array, Array]:
    lam_a = np.asarray(lam, dtype=np.float64)
    n_a = np.asarray(n, dtype=np.float64)
    if np.any(n_a <= 0):
        raise ValueError("instance counts must be positive")
    if np.any(lam_a < 0):
        raise ValueError("arrival rates must not be negative")
    return lam_a, n_a


def requests_at_instance(rho: float, slots: float) -> float:
    """Mean number of requests at one instance (in service and waiting) whose ``slots`` serve at load ``rho`` each:
    the M/M/c number in system ``c rho + C(c, c rho) rho / (1 - rho)``, c = ``slots`` rounded (at least 1; one
    slot: the M/M/1 ``rho / (1 - rho)``), ``rho`` in [0, 1). What an agent's count of requests in flight there
    averages, so a plan's figure and the live one are comparable at any slot count (peerserve/dispatch.py)."""
    c = max(1, math.floor(slots + 0.5))
    if c == 1:
        return rho / (1.0 - rho)
    a = c * rho
    blocking = 1.0  # Erlang B by its recurrence B(k) = a B(k-1) / (k + a B(k-1)): stable for any c
    for k in range(1, c + 1):
        blocking = a * blocking / (k + a * blocking)
    waiting = blocking / (1.0 - rho * (1.0 - blocking))  # Erlang C
    return a + waiting * rho / (1.0 - rho)
