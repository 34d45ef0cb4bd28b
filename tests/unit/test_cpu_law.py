"""The law of "others busy" in bounded arrays on nodes with many instances (solver.cpu_law, solver.cpu_speed).

Its figures against the law read over every instance (cpu_speed.LAW_BOUNDED off) on random nodes of 33-512
instances; the bound itself: one node at peerserve.wire.MAX_INSTANCES among 50 x 10 pools reads no FFT wider than
``cpu_law.POINTS`` and no normal wider than ``POINTS + 1`` (and the same check fails with the bound switched off).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from peerserve.wire import MAX_INSTANCES
from solver import cpu_law, cpu_speed
from solver.cpu_law import POINTS, busy_others_bounded, busy_others_normal, busy_others_windowed
from solver.cpu_speed import MAX_ROUNDS, busy_others_speed, node_speeds


def _exact(u: np.ndarray, n: np.ndarray, cores: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    with monkeypatch.context() as m:
        m.setattr(cpu_speed, "LAW_BOUNDED", False)
        return busy_others_speed(u, n, cores)


def _random_nodes(rng: np.random.Generator, total: int, count: int) -> list[tuple[np.ndarray, ...]]:
    """``count`` single nodes of ``total`` instances over 1-5 pools, loads from nearly idle to nearly saturated."""
    out = []
    for _ in range(count):
        k = int(rng.integers(1, 6))
        n = rng.multinomial(total, rng.dirichlet(np.ones(k)))[None, :].astype(float)
        u = np.clip(rng.uniform(0, 1, (1, k)) * rng.choice([0.01, 0.1, 0.5, 1.0]), 0.0, 0.999)
        out.append((u, n, np.array([rng.uniform(1.0, total * rng.choice([0.05, 0.3, 1.0]) + 1.0)])))
    return out


@pytest.mark.parametrize("total", [33, 128, 256, MAX_INSTANCES])
def test_the_bounded_law_meets_the_exact_one(total: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within 2e-4 of the speed everywhere; within 1e-9 where the windowed law holds B (sd up to ~7.5)."""
    for u, n, cores in _random_nodes(np.random.default_rng(total), total, 60):
        exact = _exact(u, n, cores, monkeypatch)
        got = busy_others_bounded(u, n, cores)
        _, fits = busy_others_windowed(u, n, cores)
        on = n > 0
        rel = np.abs(got - exact) / exact
        assert float(rel[on].max()) < 2e-4
        assert float(rel[on & fits].max(initial=0.0)) < 1e-9
        if total <= 128:
            assert fits[on].all()  # sd <= sqrt(128) / 2: always the windowed exact law


def test_the_normal_alone_is_what_the_window_saves_on_narrow_laws(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refined normal is poor for a Poisson-like law (512 instances rarely busy on 2 cores: off by > 1e-3),
    which is why the windowed exact law reads those."""
    u, n, cores = np.array([[0.004, 0.002]]), np.array([[300.0, 212.0]]), np.array([2.0])
    exact = _exact(u, n, cores, monkeypatch)
    assert float(np.abs(busy_others_normal(u, n, cores) - exact).max()) > 1e-3
    assert float(np.abs(busy_others_bounded(u, n, cores) - exact).max()) < 1e-12


def _spied(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The widest last axis the FFT and the normal's CDF see (spies that call the real functions)."""
    widest = {"fft": 0, "ndtr": 0}
    fft, ndtr = np.fft.fft, cpu_law.ndtr

    def spy_fft(a: Any, *args: Any, **kwargs: Any) -> Any:
        widest["fft"] = max(widest["fft"], int(np.shape(a)[-1]))
        return fft(a, *args, **kwargs)

    def spy_ndtr(a: Any) -> Any:
        widest["ndtr"] = max(widest["ndtr"], int(np.shape(a)[-1]))
        return ndtr(a)

    monkeypatch.setattr(np.fft, "fft", spy_fft)
    monkeypatch.setattr(cpu_law, "ndtr", spy_ndtr)
    return widest


def _cluster_with_one_large_node() -> tuple[np.ndarray, ...]:
    """50 nodes x 10 models, 16 instances each but node 0 at MAX_INSTANCES, busy work 0.85 of the cores."""
    from bench.cpu_law_bench import cluster

    return cluster(MAX_INSTANCES, 16, 0.85)


def test_one_node_at_the_instance_limit_keeps_every_array_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    lam, mu, n, c = _cluster_with_one_large_node()
    assert n[0].sum() == MAX_INSTANCES and n[1:].sum(axis=1).max() == 16
    widest = _spied(monkeypatch)
    f = node_speeds(lam, mu, n, c)
    assert widest["fft"] <= POINTS and widest["ndtr"] <= POINTS + 1
    assert f.rounds <= MAX_ROUNDS and f.converged
    monkeypatch.setattr(cpu_speed, "LAW_BOUNDED", False)
    again = _spied(monkeypatch)
    exact = node_speeds(lam, mu, n, c)
    assert again["fft"] == MAX_INSTANCES + 1 > POINTS  # the check fails with the bound switched off
    on = (n > 0) & (lam > 0)
    np.testing.assert_allclose(f.load[on], exact.load[on], rtol=1e-5)  # the planned queue's loads agree


def test_small_nodes_keep_their_own_width_beside_a_large_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The nodes up to EXACT_MAX read the law over every instance (bit for bit as before) at their own width."""
    lam, mu, n, c = _cluster_with_one_large_node()
    small = n.sum(axis=1) <= cpu_law.EXACT_MAX
    u = np.clip(np.where(n > 0, lam / np.where(n > 0, n * mu, 1.0), 0.0), 0.0, 0.9)
    got = busy_others_speed(u, n, c)
    widest = _spied(monkeypatch)
    alone = busy_others_speed(u[small], n[small], c[small])
    assert widest["fft"] == int(n[small].sum(axis=1).max()) + 1
    np.testing.assert_array_equal(got[small], alone)
