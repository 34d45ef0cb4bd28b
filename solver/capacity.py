"""Capacity bookkeeping shared by rounding, repair, the greedy baselines and the feasibility check."""

from __future__ import annotations

import numpy as np

from solver.problem import IntArray, Problem

EPS = 1e-6


class Ledger:
    """Tracks requests placed per (node, model) and the memory/compute left for new instances.

    Kept in Python lists and floats (the same float64 arithmetic as numpy): rounding and repair ask it
    one request at a time, where numpy scalars cost several times more.
    """

    def __init__(self, problem: Problem) -> None:
        self.p = problem
        self.placed: list[list[int]] = np.zeros_like(problem.free).tolist()
        self.mem_left: list[float] = problem.mem_budget.tolist()
        self.comp_left: list[float] = problem.comp_budget.tolist()
        self._free: list[list[int]] = problem.free.tolist()
        self._mem: list[float] = problem.mem.tolist()
        self._comp: list[float] = problem.comp.tolist()

    def needs_new_instance(self, j: int, k: int) -> bool:
        """Whether one more request of model k on node j starts a new instance."""
        return self.placed[j][k] >= self._free[j][k]

    def fits(self, j: int, k: int) -> bool:
        """Whether one more request of model k fits on node j."""
        if self.placed[j][k] < self._free[j][k]:
            return True
        return self.mem_left[j] + EPS >= self._mem[k] and self.comp_left[j] + EPS >= self._comp[k]

    def add(self, j: int, k: int) -> None:
        if self.placed[j][k] >= self._free[j][k]:
            self.mem_left[j] -= self._mem[k]
            self.comp_left[j] -= self._comp[k]
        self.placed[j][k] += 1

    def add_up_to(self, j: int, k: int, n: int) -> int:
        """Place up to ``n`` requests of model k on node j, one at a time while one fits; how many were placed.

        The same as ``fits``/``add`` in a loop (same arithmetic, same order).
        """
        done = max(0, min(n, self._free[j][k] - self.placed[j][k]))
        mem_left, comp_left, mem, comp = self.mem_left[j], self.comp_left[j], self._mem[k], self._comp[k]
        while done < n and mem_left + EPS >= mem and comp_left + EPS >= comp:
            mem_left -= mem
            comp_left -= comp
            done += 1
        self.mem_left[j], self.comp_left[j] = mem_left, comp_left
        self.placed[j][k] += done
        return done

    def remove(self, j: int, k: int) -> None:
        self.placed[j][k] -= 1
        if self.placed[j][k] >= self._free[j][k]:
            self.mem_left[j] += self._mem[k]
            self.comp_left[j] += self._comp[k]

    def best_fitting_node(self, k: int, order: list[int]) -> int | None:
        """The first node in ``order`` where a request of model k fits."""
        for j in order:
            if self.fits(j, k):
                return j
        return None

    def rejection_reason(self, k: int) -> str:
        """Why a request of model k fits nowhere, with the node that came closest."""
        p = self.p
        j = int(np.argmax(self.mem_left))
        return (
            f"no node has room for a new instance of {p.model_names[k]!r} "
            f"(needs {p.mem[k]:g} MB and {p.comp[k]:g} compute); most memory left: "
            f"{p.node_ids[j]} with {max(0.0, float(self.mem_left[j])):g} MB and "
            f"{max(0.0, float(self.comp_left[j])):g} compute"
        )


def placed_per_node_model(problem: Problem, counts: IntArray) -> IntArray:
    """[j, k] requests placed, from per-class counts [c, j]."""
    onehot = np.eye(len(problem.model_names), dtype=np.int64)[problem.class_model]
    return np.asarray(counts.T @ onehot, dtype=np.int64).reshape(problem.free.shape)


def violations(problem: Problem, placed: IntArray) -> list[str]:
    """Memory and compute constraints that ``placed`` [j, k] breaks; empty when feasible."""
    new = (placed - problem.free).clip(min=0)
    mem_used = new @ problem.mem
    comp_used = new @ problem.comp
    out = []
    for j, node in enumerate(problem.node_ids):
        if mem_used[j] > problem.mem_budget[j] + EPS:
            out.append(f"{node}: memory {mem_used[j]:g} MB > {problem.mem_budget[j]:g} MB")
        if comp_used[j] > problem.comp_budget[j] + EPS:
            out.append(f"{node}: compute {comp_used[j]:g} > {problem.comp_budget[j]:g}")
    return out
