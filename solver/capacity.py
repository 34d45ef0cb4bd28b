"""Capacity bookkeeping shared by rounding, repair, the greedy baselines and the feasibility check."""

from __future__ import annotations

import numpy as np

from solver.problem import IntArray, Problem

EPS = 1e-6


class Ledger:
    """Tracks requests placed per (node, model) and the memory/compute left for new instances."""

    def __init__(self, problem: Problem) -> None:
        self.p = problem
        self.placed: IntArray = np.zeros_like(problem.free)
        self.mem_left = problem.mem_budget.copy()
        self.comp_left = problem.comp_budget.copy()

    def needs_new_instance(self, j: int, k: int) -> bool:
        """Whether one more request of model k on node j starts a new instance."""
        return bool(self.placed[j, k] >= self.p.free[j, k])

    def fits(self, j: int, k: int) -> bool:
        """Whether one more request of model k fits on node j."""
        if not self.needs_new_instance(j, k):
            return True
        return bool(self.mem_left[j] + EPS >= self.p.mem[k] and self.comp_left[j] + EPS >= self.p.comp[k])

    def add(self, j: int, k: int) -> None:
        if self.needs_new_instance(j, k):
            self.mem_left[j] -= self.p.mem[k]
            self.comp_left[j] -= self.p.comp[k]
        self.placed[j, k] += 1

    def remove(self, j: int, k: int) -> None:
        self.placed[j, k] -= 1
        if self.needs_new_instance(j, k):
            self.mem_left[j] += self.p.mem[k]
            self.comp_left[j] += self.p.comp[k]

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
