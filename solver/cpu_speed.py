"""A model of the node's CPU scheduler for the plan's published figures (issue 16, the agents' planned queue).

The plan prices a node's cores by load (solver.node_cpu.allot_cores: every pool short of cores at one
utilisation). That is the relaxation's allotment and right for the objective, but a scheduler does not slice
cores in proportion to load: it gives each request in service an equal share, at most one core. So a lightly
used instance beside a busy model is served almost at full speed, while by load it is priced at the node's
level (review: planned queue 9 where the simulation has 0.25). This module models the scheduler itself:

1. *Speed*: each instance i is an M/M/1 queue at speed ``v_i = E[min(1, C / (1 + B_-i))]``, ``B_-i`` the
   number of the node's other instances busy, taken independent, each busy with its utilisation
   ``u_l = a_l / (mu_l v_l)``. The fixed point is reached by iterating from ``u = a / mu`` (every speed 1):
   ``v`` falls as any ``u`` rises, so the map ``u -> a / (mu v(u))`` is monotone and the iterates rise to its
   least fixed point (capped at ``CAP``: bounded, so they converge; ``MAX_ROUNDS`` bounds the work).
2. *Work floor*: independence misses that a congested node slows every instance at once (10 instances on one
   core at load 0.9: the speed model gives 29 ms where the node, work-conserving, is an M/M/1 at 0.9: 100 ms).
   The node drains at most ``C`` core-seconds per second, so its mean work in system is at least that of one
   server of speed ``C`` (Pollaczek-Khinchine: ``sum_k b_k / (C mu_k) / (1 - rho)``, ``b = lam / mu``,
   ``rho = sum b / C``); with exponential service a request's remaining work averages ``1 / mu`` whatever it
   has had, so the work is ``sum_i L_i / mu_i``. Where the speed model's work falls short of the floor,
   every speed on the node is scaled by one factor ``s`` (bisection) until it meets it.

Slots go through the queue model's transform (an instance = one server at ``slots x mu``, the node holding
``cores / slots`` of them: ``QueueProblem.cores``). Nodes without cores (inf) or with a core per instance:
every speed 1, the M/M/1 at the instance's rate. A node whose busy work reaches its cores: every busy
instance at ``CAP``. bench/allot_bench.py ``--sim`` measures it against solver/shared_cores.py's simulation.

Repair's checks (busy work within ``rho_max`` of the cores, each pool within ``rho_max`` of its instances)
do not keep the scheduler stable: one instance at 0.9 of a core beside another busy one on 1.5 cores falls
behind whenever both run (0.75 each), and the simulation's queue grows without bound. There the model caps
the figure; ``published_load`` then publishes the node's figures by load instead (16 of bound_sweep's 600
overloaded plans at their rate, 8 at half of it), so no planned queue is at the cap where repair passes. The
plan itself now gives such a pool one more instance, or cuts its rate (solver.queue_sched); the fallback stays.

Small nodes in plain floats (``PLAIN``, issue 16 target 5, solver18a): the nodes of the thesis's sizes that share
cores run 2-4 instances, where each round's ~17 numpy calls (the FFT's arrays of 3-5 points) cost ~35 us and a
node's law by direct convolution (``_node_law``: one Bernoulli factor per busy instance, then each pool's own one
divided out, stably from the side where its weight is the larger) costs a few. So a shared node of at most
``PLAIN_MAX`` instances with whole counts (where at most ``PLAIN_NODES`` are: the floats' cost grows with the
nodes, the arrays' round hardly) runs its own fixed point (``_node_fixed_point``: the same map from the
same start, stopped by its own moves, so each node takes the rounds it needs, not the slowest node's) and work floor
(``_node_floor``: the Newton root of ``_floor_root``, stepped down to the side where the work meets the floor) in
Python floats. The figures agree with the FFT's to rounding (tests/unit/test_cpu_speed.py), not bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from solver import cpu_law
from solver.monotone_bisect import bisect
from solver.node_cpu import pool_servers
from solver.problem import FloatArray

CAP = 0.999  # the highest load a figure takes (planned_queue's cap)
MAX_ROUNDS = 400  # fixed-point rounds at most (the sweep's plans need < 60; see docs/solver.md)
TOL = 1e-10  # stop when no load moves more than this
BISECT = 60  # halvings of the work floor's factor (2**-60: exact in float)
GUESS_ROUNDS = 60  # Newton steps at most for the floor's guess (solver.monotone_bisect: the guess costs no exactness)
PUBLISHED = True  # solver.queue_plan.planned_queue from this model (False: the cores shared by load)
LAW_BOUNDED = True  # nodes past cpu_law.EXACT_MAX instances read the law in bounded arrays (off: the FFT over all)
PLAIN = True  # shared nodes of at most PLAIN_MAX instances (whole counts) in Python floats (off: the arrays for all)
PLAIN_MAX = 8  # instances on a node up to which a node's round in floats costs less than a round's numpy calls
PLAIN_NODES = 12  # such nodes in one call at most (the floats' cost grows with them, the arrays' round hardly:
# 3-4 instances on 2 cores, arrays / floats 2.6 / 0.23 ms at 1 node, 1.4 / 1.5 at 16, 4.0 / 4.5 at 32)
FLOOR_NUDGES = 64  # steps of a few ulps down from the floor's Newton root at most, to the side that meets the floor


@dataclass(frozen=True)
class SpeedFigures:
    """[j, k] per instance of each pool: its load (utilisation, <= CAP), speed (0-1], mean sojourn (ms; idle: its
    service time at that speed); ``rounds`` the fixed point took and whether it met ``TOL`` (``converged``)."""

    load: FloatArray
    speed: FloatArray
    sojourn_ms: FloatArray
    rounds: int
    converged: bool


def published_load(lam: npt.ArrayLike, mu: npt.ArrayLike, counts: npt.ArrayLike, cores: npt.ArrayLike) -> FloatArray:
    """[j, k] the load per instance behind the published planned queue: ``node_speeds``', but on a node where it
    caps a busy instance the node's cores shared by load (solver.node_cpu.pool_servers: below rho_max wherever
    repair's checks pass), which is all there is with ``PUBLISHED`` off."""
    lam, mu, cores = np.asarray(lam, dtype=float), np.asarray(mu, dtype=float), np.asarray(cores, dtype=float)
    if not PUBLISHED:
        return pool_servers(lam, mu, counts, cores)[1]
    load = node_speeds_once(lam, mu, counts, cores).load
    capped = np.max(load, axis=1, initial=0.0) >= CAP  # the scheduler falls behind there (a 999 draws p2c's traffic)
    if not capped.any():
        return load  # no node by load: the allotment is not read (node_cpu.pool_servers is row by row)
    return np.asarray(np.where(capped[:, None], pool_servers(lam, mu, counts, cores)[1], load))


_LAST: list[tuple[bytes, SpeedFigures]] = []  # node_speeds_once's last inputs and figures


def node_speeds_once(
    lam: npt.ArrayLike, mu: npt.ArrayLike, counts: npt.ArrayLike, cores: npt.ArrayLike
) -> SpeedFigures:
    """``node_speeds``, the last call's figures again where the inputs are the same (the plan's check for a node
    that falls behind, solver.queue_sched, and its published planned queue read the same placement)."""
    parts = [np.ascontiguousarray(a, dtype=float) for a in (lam, mu, counts, cores)]
    switches = (
        tuple(a.shape for a in parts),
        (LAW_BOUNDED, cpu_law.EXACT_MAX, cpu_law.POINTS, cpu_law.WIDTH, cpu_law.TAIL),
        (CAP, MAX_ROUNDS, TOL, BISECT, GUESS_ROUNDS, PLAIN, PLAIN_MAX, PLAIN_NODES),
    )
    key = b"|".join([repr(switches).encode(), *(a.tobytes() for a in parts)])
    last = _LAST[0] if _LAST else None  # read once: another thread may replace it
    if last is not None and last[0] == key:
        return last[1]
    figures = node_speeds(*parts)
    for shared in (figures.load, figures.speed, figures.sojourn_ms):
        shared.flags.writeable = False  # handed out again: no caller may change what the next one reads
    _LAST[:] = [(key, figures)]
    return figures


def node_speeds(lam: npt.ArrayLike, mu: npt.ArrayLike, counts: npt.ArrayLike, cores: npt.ArrayLike) -> SpeedFigures:
    """The scheduler model's figures (module docstring) for pools with rates ``lam`` [j, k] (req/s), service
    rates ``mu`` [j, k] (per instance), instance ``counts`` [j, k] on nodes with ``cores`` [j] (inf: no limit)."""
    lam, mu = np.asarray(lam, dtype=float), np.asarray(mu, dtype=float)
    n = np.asarray(counts, dtype=float)
    c: FloatArray = np.maximum(np.asarray(cores, dtype=float), 1e-12)  # 0 cores: (almost) no speed
    on = (n > 0) & (lam > 0)
    a = np.where(on, lam / np.where(on, n, 1.0), 0.0)  # per instance
    n = np.where(n > 0, n, 0.0)
    total = n.sum(axis=1)
    shared = np.isfinite(c) & (total > c)  # some instance may lack a core
    plain = shared & (total <= PLAIN_MAX) & (n == np.floor(n)).all(axis=1) if PLAIN else np.zeros(len(n), dtype=bool)
    if np.count_nonzero(plain) > PLAIN_NODES:
        plain[:] = False  # many small shared nodes: one round of arrays for all of them costs less
    speed, rounds, converged = _plain_rows(a, mu, n, c, plain)
    arrays = shared & ~plain
    if arrays.any():
        found, more, met = _fixed_point(a, mu, n, c, arrays)
        scale = _work_floor(a[arrays], mu[arrays], n[arrays], c[arrays], found[arrays])  # a core per instance: as is
        speed[arrays] = found[arrays] * scale[:, None]
        rounds, converged = max(rounds, more), converged and met
    load = np.where(on, np.minimum(a / (mu * speed), CAP), 0.0)
    sojourn = np.where(on, 1000.0 * load / (1.0 - load) / np.where(on, a, 1.0), 1000.0 / (mu * speed))
    return SpeedFigures(load, speed, sojourn, rounds, converged)


def _plain_rows(
    a: FloatArray, mu: FloatArray, n: FloatArray, cores: FloatArray, rows: npt.NDArray[np.bool_]
) -> tuple[FloatArray, int, bool]:
    """([j, k] speeds: the ``rows``' fixed point and work floor in Python floats, 1 elsewhere; the most rounds a row
    took; whether every row converged)."""
    speed = np.ones(a.shape)
    rounds, converged = 0, True
    for j in np.flatnonzero(rows).tolist():
        counts = [int(v) for v in n[j].tolist()]
        aj, mj = a[j].tolist(), mu[j].tolist()
        found, took, met = _node_fixed_point(aj, mj, counts, float(cores[j]))
        scale = _node_floor(aj, mj, counts, float(cores[j]), found)
        speed[j] = [v * scale for v in found]
        rounds, converged = max(rounds, took), converged and met
    return speed, rounds, converged


def _node_fixed_point(a: list[float], mu: list[float], n: list[int], cores: float) -> tuple[list[float], int, bool]:
    """``_fixed_point`` on one node in Python floats: (speeds per pool, rounds, converged), from the same start by the
    same map, stopped where no load of this node moves more than ``TOL``; the rounds read the busy pools' speeds only
    (an idle pool's load stays 0), the last every pool's."""
    share = [min(1.0, cores / (1.0 + b)) for b in range(sum(n) + 1)]
    busy = [k for k, x in enumerate(a) if x > 0]
    u = [min(x / m, CAP) for x, m in zip(a, mu, strict=True)]
    rounds, moved = 0, np.inf
    while rounds < MAX_ROUNDS and moved > TOL:
        speed = _node_law(u, n, share, busy)
        moved = 0.0
        for k, v in zip(busy, speed, strict=True):
            new = min(a[k] / (mu[k] * v), CAP)
            moved, u[k] = max(moved, abs(new - u[k])), new
        rounds += 1
    return _node_law(u, n, share, range(len(u))), rounds, moved <= TOL


def _node_law(u: list[float], n: list[int], share: list[float], pools: Iterable[int]) -> list[float]:
    """For each of ``pools`` (k) on one node: ``E[share[B]]``, ``B`` the busy count of the node's other instances
    (pool l's ``n[l]``, one fewer of k's where k runs any) each busy with probability ``u[l]`` independently: the
    node's law by convolution (an idle instance's factor is 1: left out), then k's own factor divided out
    (``_divided``); negative round-off clipped and the law normalised as the FFT's reading does."""
    law = [1.0]
    for p, m in zip(u, n, strict=True):
        if p > 0.0:
            q = 1.0 - p
            for _ in range(m):
                nxt = [law[0] * q]
                for b in range(1, len(law)):
                    nxt.append(law[b] * q + law[b - 1] * p)
                nxt.append(law[-1] * p)
                law = nxt
    out = []
    for k in pools:
        own = law if n[k] == 0 or u[k] == 0.0 else _divided(law, u[k])
        mass = weighted = 0.0
        for x, s in zip(own, share, strict=False):
            if x > 0.0:
                mass += x
                weighted += x * s
        out.append(weighted / mass)
    return out


def _divided(law: list[float], p: float) -> list[float]:
    """``law`` with one factor ``1 - p + p z`` divided out, by the recursion that damps round-off: from below where
    ``p <= 1/2`` (each step multiplies the error before it by ``p / (1 - p) <= 1``), else from above."""
    q = 1.0 - p
    out = [0.0] * (len(law) - 1)
    last = 0.0
    if p <= 0.5:
        for b in range(len(out)):
            last = out[b] = (law[b] - p * last) / q
    else:
        for b in range(len(out) - 1, -1, -1):
            last = out[b] = (law[b + 1] - q * last) / p
    return out


def _node_floor(a: list[float], mu: list[float], n: list[int], cores: float, speed: list[float]) -> float:
    """``_work_floor`` on one node in Python floats: the factor on its speeds where its mean work meets the floor (the
    Newton root of ``_floor_root``, stepped down by a few ulps at a time, at most ``FLOOR_NUDGES`` times, until the
    work there is at or above the floor; where the nudges fall short, ``_safe_end``'s bisection; ``lo`` where not even
    ``lo`` meets it: always on the floor's safe side, as the arrays' bisection's answer is)."""
    busy = sum(c * x / m for x, m, c in zip(a, mu, n, strict=True))
    if not (math.isfinite(cores) and cores > 0 and busy > 0):
        return 1.0
    rho = busy / cores
    floor = sum(c * x / m**2 for x, m, c in zip(a, mu, n, strict=True)) / cores / (1.0 - rho) if rho < 1.0 else math.inf
    terms = [(x / (m * v), c / m) for x, m, v, c in zip(a, mu, speed, n, strict=True) if x > 0]
    if _node_work(terms, 1.0) >= floor * (1 - 1e-9):
        return 1.0
    lo = min(max(min(b for b, _ in terms) / CAP, 1e-300), 1.0)  # at or below lo every busy instance is capped
    if not _node_work(terms, lo) >= floor:
        return lo  # the floor out of reach (the most work falls short): every busy instance capped, as the arrays
    s = _floor_root(terms, floor, lo)
    for _ in range(FLOOR_NUDGES):
        if s <= lo or _node_work(terms, s) >= floor:
            return s
        s = max(lo, s - 4.0 * math.ulp(s))
    return s if _node_work(terms, s) >= floor else _safe_end(terms, floor, lo, s)


def _safe_end(terms: list[tuple[float, float]], floor: float, lo: float, hi: float) -> float:
    """The bisection's answer on [``lo``, ``hi``] (the work at ``lo`` meets ``floor``, at ``hi`` it falls short): the
    end that meets it after ``BISECT`` halvings, where the nudges from the Newton root did not reach the floor."""
    for _ in range(BISECT):
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            break
        lo, hi = (mid, hi) if _node_work(terms, mid) >= floor else (lo, mid)
    return lo


def _node_work(terms: list[tuple[float, float]], s: float) -> float:
    """A node's mean work in system at factor ``s`` (``terms``: its busy pools' load at factor 1 and count / mu)."""
    work = 0.0
    for b, c in terms:
        x = min(b / s, CAP)
        work += c * x / (1.0 - x)
    return work


def _fixed_point(
    a: FloatArray, mu: FloatArray, n: FloatArray, cores: FloatArray, shared: npt.NDArray[np.bool_]
) -> tuple[FloatArray, int, bool]:
    """([j, k] speeds at the least fixed point of ``u = min(a / (mu v(u)), CAP)``, rounds, converged), iterated
    from every speed 1 on the ``shared`` nodes (the others keep speed 1)."""
    speed = np.ones(a.shape)
    if not shared.any():
        return speed, 0, True
    a_s, mu_s, n_s, c_s = a[shared], mu[shared], n[shared], cores[shared]
    law, busy_pool = _OthersLaw(n_s, c_s), a_s > 0
    u, rounds, moved = np.minimum(a_s / mu_s, CAP), 0, np.inf
    while rounds < MAX_ROUNDS and moved > TOL:
        new = np.where(busy_pool, np.minimum(a_s / (mu_s * law.speed(u)), CAP), 0.0)
        moved, u, rounds = float(np.abs(new - u).max(initial=0.0)), new, rounds + 1
    speed[shared] = law.speed(u)
    return speed, rounds, moved <= TOL


def busy_others_speed(u: FloatArray, n: FloatArray, cores: FloatArray) -> FloatArray:
    """[j, k] ``E[min(1, C_j / (1 + B))]`` for an instance of pool k on node j, ``B`` the others busy: pool l's
    ``n_l`` (one fewer of k's; all of them where k has none) instances each busy with probability ``u_l``,
    independently (``_OthersLaw``)."""
    return _OthersLaw(n, cores).speed(u)


class _OthersLaw:
    """``busy_others_speed`` for fixed counts ``n`` [j, k] and ``cores`` [j]: what does not depend on the loads is
    made once (the fixed point calls ``speed`` every round; the same operations per element as one call).

    The law of ``B`` is read off its generating function ``prod_l (1 - u_l + u_l z)^(n_l - [l = k])`` at M roots
    of unity (one FFT), M odd so that no factor vanishes (``1 - u + u z = 0`` only at u = 1/2, z = -1) and the
    product over the node is divided by k's own factor in logs. Nodes with more than ``cpu_law.EXACT_MAX``
    instances read it in bounded arrays instead (solver.cpu_law), so one large node widens no other's arrays."""

    def __init__(self, n: FloatArray, cores: FloatArray) -> None:
        self.wide = (n.sum(axis=1) > cpu_law.EXACT_MAX) if LAW_BOUNDED else np.zeros(len(n), dtype=bool)
        self.any_wide = bool(self.wide.any())
        if self.any_wide:
            self.n_wide, self.cores_wide = n[self.wide], cores[self.wide]
            n, cores = n[~self.wide], cores[~self.wide]
        total = int(n.sum(axis=1).max(initial=0.0))
        self.m = total + 1 + total % 2  # odd and > total: the law's support 0..total fits without aliasing
        self.z = np.exp(2j * np.pi * np.arange(self.m) / self.m)  # [M]
        self.n = n
        self.own = np.where(n > 0, 1.0, 0.0)[:, :, None]  # [j, k, 1] k's own factor divided out where k runs
        self.share = np.minimum(1.0, cores[:, None] / (1.0 + np.arange(self.m)))  # [j, b]

    def speed(self, u: FloatArray) -> FloatArray:
        """[j, k] ``E[min(1, C_j / (1 + B))]`` at the loads ``u`` [j, k]."""
        if not self.any_wide:
            return self._exact(u)
        out = np.empty(u.shape)
        out[self.wide] = cpu_law.busy_others_bounded(u[self.wide], self.n_wide, self.cores_wide)
        if not self.wide.all():
            out[~self.wide] = self._exact(u[~self.wide])
        return out

    def _exact(self, u: FloatArray) -> FloatArray:
        """The exact law (one FFT over the narrow nodes' largest count) at the narrow nodes' loads ``u``."""
        u3 = u[:, :, None]
        log_f = np.log(1.0 - u3 + u3 * self.z)  # [j, l, M], never log 0 (M odd)
        node = np.einsum("jl,jlm->jm", self.n, log_f)  # [j, M] log of the product over all the node's instances
        gen = np.exp(node[:, None, :] - self.own * log_f)  # [j, k, M]
        law = np.maximum(np.fft.fft(gen, axis=-1).real / self.m, 0.0)  # [j, k, b] (np.clip's lower bound)
        return np.asarray(np.einsum("jkb,jb->jk", law, self.share) / law.sum(axis=-1), dtype=float)


def _work_floor(a: FloatArray, mu: FloatArray, n: FloatArray, cores: FloatArray, speed: FloatArray) -> FloatArray:
    """[j] the factor (0, 1] on a node's speeds that lifts its mean work in system (sum n L / mu) to the floor of
    one server of speed C (module docstring); 1 where the speed model meets it, the least that caps every busy
    instance where nothing meets it (the node at or past its cores)."""
    b = (n * a / mu).sum(axis=1)  # busy work, core-seconds per second
    finite = np.isfinite(cores) & (cores > 0) & (b > 0)
    c = np.where(finite, cores, 1.0)
    rho = np.where(finite, b / c, 0.0)
    floor = np.where(rho < 1.0, (n * a / mu**2).sum(axis=1) / c / np.where(rho < 1.0, 1.0 - rho, 1.0), np.inf)
    floor = np.where(finite, floor, 0.0)
    base = np.where(a > 0, a / (mu * speed), 0.0)  # [j, k] loads at factor 1

    def work(s: FloatArray) -> FloatArray:
        load = np.minimum(base / s[:, None], CAP)
        return np.asarray((n * load / (1.0 - load) / mu).sum(axis=1))

    least = np.where(base > 0, base, np.inf).min(axis=1, initial=np.inf)  # [j] the lightest busy instance's load
    lo = np.clip(least / CAP, 1e-300, 1.0)  # at or below lo every busy instance is capped: the most work
    hi = np.ones(len(b))
    need = work(hi) < floor * (1 - 1e-9)  # short of the floor beyond rounding
    if not need.any():
        return hi

    def reaches(s: FloatArray) -> npt.NDArray[np.bool_]:
        return np.asarray(work(s) >= floor)

    # work falls as s rises, in floats too (each operation rounds monotonically, the terms are >= 0): the largest s
    # with work(s) >= floor by BISECT halvings, from fewer evaluations near a scalar root's guess (bit for bit)
    guess = _floor_guess(base, n / mu, floor, lo, need)
    return np.where(need, bisect(reaches, lo, hi, BISECT, need, guess), 1.0)


def _floor_guess(
    base: FloatArray, per: FloatArray, floor: FloatArray, lo: FloatArray, rows: npt.NDArray[np.bool_]
) -> FloatArray:
    """[j] on the ``rows`` wanted, the s in [lo, 1] where the work ``sum per min(base / s, CAP) / (1 - ...)`` meets
    ``floor``, by safeguarded Newton on ``1 / work - 1 / floor`` in Python floats: a guess for
    solver.monotone_bisect (a few ulps off the vectorised work's threshold; elsewhere ``lo``)."""
    guess = np.array(lo, dtype=float)
    for j in np.flatnonzero(rows).tolist():
        terms = [(b, c) for b, c in zip(base[j].tolist(), per[j].tolist(), strict=True) if b > 0]
        guess[j] = _floor_root(terms, float(floor[j]), float(lo[j]))
    return guess


def _floor_root(terms: list[tuple[float, float]], floor: float, lo: float) -> float:
    """``_floor_guess`` on one node: ``terms`` its busy instances' (load at s = 1, count / mu)."""
    if not floor < np.inf:
        return lo  # a node at or past its cores: no s meets an infinite floor (every mid fails: the answer is lo)
    a, z, s = lo, 1.0, 1.0
    capped = CAP / (1.0 - CAP)
    for _ in range(GUESS_ROUNDS):
        work = slope = 0.0
        for b, c in terms:
            x = b / s
            if x < CAP:
                work += c * x / (1.0 - x)
                slope -= c * x / (s * (1.0 - x) ** 2)
            else:
                work += c * capped
        a, z = (s, z) if work >= floor else (a, s)
        nxt = s - (1.0 / work - 1.0 / floor) * work * work / -slope if slope < 0 and work > 0 else 0.5 * (a + z)
        nxt = nxt if a < nxt < z else 0.5 * (a + z)
        if abs(nxt - s) <= 1e-15 * s:
            return nxt
        s = nxt
    return s
