"""The law of "others busy" on a node with many instances, in bounded arrays (solver.cpu_speed's scheduler model).

solver.cpu_speed reads ``E[min(1, C / (1 + B))]``, ``B`` the number of a node's other instances busy (independent
Bernoullis: a Poisson-binomial), off an FFT of its generating function: [nodes, models, instances + 1] complex
arrays, every fixed-point round. A member may report up to 512 instances (peerserve.wire.MAX_INSTANCES), which
widened every node's arrays to 513 points, ~1 s of fixed point on 50 nodes x 10 models. Past ``EXACT_MAX``
instances on a node, each (node, pool) takes one of two reads in arrays of ``POINTS`` (+ 1) points whatever the count,
and the nodes up to it keep the FFT at their own largest count (so one large node widens no other's arrays):

* *windowed exact*, where ``B`` lies within a window of ``POINTS`` integers but for a mass below ``TAIL``
  (Bernstein's bound, ``P(|B - m| >= t) <= 2 exp(-t^2 / (2 (v + t / 3)))``): the same FFT on ``POINTS`` roots of
  unity gives the law folded modulo ``POINTS``, which the window unfolds (exact up to that tail mass). It covers
  every law with a standard deviation up to ~7.5: every node of up to 128 instances, and the Poisson-like laws
  (many instances, each rarely busy) of any count.
* *refined normal* (Volkova 1996; Hong 2013: the normal with a skewness term, ``F(b) ~ G((b + 0.5 - m) / s)``,
  ``G(x) = Phi(x) + g (1 - x^2) phi(x) / 6``) on ``POINTS`` bins spanning ``WIDTH`` standard deviations either side
  of the mean, for the wider laws: its error falls as 1 / s^2 (measured against the exact law, bench/cpu_law_bench.py:
  below 1e-4 of the speed for s >= 8; the worst seen over random mixes of nodes, 2.4e-5).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

from solver.problem import FloatArray

EXACT_MAX = 32  # instances on a node up to which cpu_speed's FFT reads the law over all of them
POINTS = 129  # points of the windowed law and bins of the normal's (odd: no factor of the generating function vanishes)
WIDTH = 8.0  # the normal's bins span this many standard deviations either side of the mean (its mass beyond: ~1e-15)
TAIL = 25.0  # the windowed law leaves out a mass of at most 2 exp(-TAIL) (~3e-11)
_SQRT_2PI = math.sqrt(2.0 * math.pi)


def busy_others_bounded(u: FloatArray, n: FloatArray, cores: FloatArray) -> FloatArray:
    """[j, k] ``E[min(1, C_j / (1 + B))]`` as cpu_speed.busy_others_speed defines it, in arrays of at most
    ``POINTS + 1`` points: the windowed exact law where it fits, else the refined normal (module docstring)."""
    u, n = np.asarray(u, dtype=float), np.asarray(n, dtype=float)
    exact, fits = busy_others_windowed(u, n, cores)
    return np.asarray(np.where(fits, exact, busy_others_normal(u, n, cores)))


def _moments(u: FloatArray, n: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """[j, k] the mean, variance, third central moment and largest value of B (pool k's instance left out)."""
    own = np.where(n > 0, 1.0, 0.0)  # an instance of pool k leaves itself out (none where k has none)
    p1, p2 = u * (1.0 - u), u * (1.0 - u) * (1.0 - 2.0 * u)
    mean = (n * u).sum(axis=1)[:, None] - own * u
    var = np.maximum((n * p1).sum(axis=1)[:, None] - own * p1, 0.0)
    third = (n * p2).sum(axis=1)[:, None] - own * p2
    top = (n.sum(axis=1)[:, None] - own).clip(min=0.0)
    return np.maximum(mean, 0.0), var, third, top


def busy_others_windowed(
    u: FloatArray, n: FloatArray, cores: FloatArray, points: int = POINTS
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """([j, k] the speed from B's law read on ``points`` roots of unity and unfolded on the window
    ``[lo, lo + points)`` around its mean, [j, k] whether that window holds B but for 2 exp(-TAIL))."""
    mean, var, _, top = _moments(u, n)
    half = TAIL / 3.0 + np.sqrt((TAIL / 3.0) ** 2 + 2.0 * TAIL * var)  # Bernstein: t^2 = 2 TAIL (v + t / 3)
    lo = np.clip(np.floor(mean - half), 0.0, None)
    fits = np.minimum(np.ceil(mean + half), top) - lo < points
    z = np.exp(2j * np.pi * np.arange(points) / points)  # [M], M odd
    log_f = np.log(1.0 - u[:, :, None] + u[:, :, None] * z)  # [j, l, M]
    node = np.einsum("jl,jlm->jm", n, log_f)
    gen = np.exp(node[:, None, :] - np.where(n > 0, 1.0, 0.0)[:, :, None] * log_f)  # [j, k, M]
    folded = np.clip(np.fft.fft(gen, axis=-1).real / points, 0.0, None)  # [j, k, r]: P(B = r mod M)
    r = np.arange(points)
    b = lo[:, :, None] + np.mod(r - lo[:, :, None], points)  # [j, k, r] the window's value of residue r
    share = np.minimum(1.0, cores[:, None, None] / (1.0 + b))
    total = folded.sum(axis=-1)
    speed = (folded * share).sum(axis=-1) / np.where(total > 0, total, 1.0)
    return np.asarray(speed, dtype=float), np.asarray(fits)


def law_points(n: FloatArray) -> int:
    """The points on the last axis of the normal's arrays for instance counts ``n`` [j, k] (<= POINTS + 1)."""
    total = float(np.asarray(n).sum(axis=1).max(initial=0.0))
    return int(min(POINTS, math.ceil(total) + 1)) + 1


def busy_others_normal(u: FloatArray, n: FloatArray, cores: FloatArray) -> FloatArray:
    """[j, k] ``E[min(1, C_j / (1 + B))]`` with ``B``'s law the refined normal approximation (module docstring)."""
    u, n = np.asarray(u, dtype=float), np.asarray(n, dtype=float)
    mean, var, third, top = _moments(u, n)
    sd = np.sqrt(var)
    lo = np.clip(np.floor(mean - WIDTH * sd), 0.0, top) - 0.5  # [j, k] the window's edges (half-integers)
    hi = np.clip(np.ceil(mean + WIDTH * sd), 0.0, top) + 0.5
    bins = law_points(n) - 1
    step = np.maximum((hi - lo) / bins, 1.0)  # one integer per bin where the window holds few
    edges = lo[:, :, None] + step[:, :, None] * np.arange(bins + 1)  # [j, k, bins + 1]
    edges = np.minimum(edges, hi[:, :, None])
    cdf = _refined_cdf(edges, mean, sd, third)
    cdf[:, :, 0], cdf[:, :, -1] = 0.0, 1.0  # the mass outside the window goes to its end bins
    mass = np.diff(cdf, axis=-1).clip(min=0.0)  # [j, k, bins]
    centre = 0.5 * (edges[:, :, 1:] + edges[:, :, :-1])
    share = np.minimum(1.0, cores[:, None, None] / (1.0 + np.maximum(centre, 0.0)))
    total = mass.sum(axis=-1)
    return np.asarray((mass * share).sum(axis=-1) / np.where(total > 0, total, 1.0), dtype=float)


def _refined_cdf(x: FloatArray, mean: FloatArray, sd: FloatArray, third: FloatArray) -> FloatArray:
    """[j, k, b] the refined normal CDF at ``x`` (a degenerate law, sd 0: the step at its mean), within [0, 1]."""
    s = sd[:, :, None]
    safe = np.where(s > 0, s, 1.0)
    z = (x - mean[:, :, None]) / safe
    skew = np.where(sd > 0, third / np.where(sd > 0, sd, 1.0) ** 3, 0.0)[:, :, None]
    g = ndtr(z) + skew * (1.0 - z * z) * np.exp(-0.5 * z * z) / (6.0 * _SQRT_2PI)
    step = np.where(x >= mean[:, :, None], 1.0, 0.0)
    return np.asarray(np.clip(np.where(s > 0, g, step), 0.0, 1.0))
