"""The thesis's placement model (Chapter 3) in Pyomo, over request classes and candidate columns.

    minimise   sum_c sum_j cost[c, j] * y[c, j]  +  P * sum_c r[c]
    subject to sum_j y[c, j] + r[c] = count[c]                        (every request placed or rejected)
               new[j, k] >= sum_{c of model k} y[c, j] - free[j, k]   (only where free[j, k] > 0)
               sum_k mem[k]  * new[j, k] <= mem_budget[j]             (memory)
               sum_k comp[k] * new[j, k] <= comp_budget[j]            (compute)
               y, r, new >= 0;  integer in the MILP, continuous in the relaxation

where ``new[j, k]`` is the plain sum of ``y`` when no instance is free to reuse (always in Mode 2: the
thesis's formulation exactly). ``P`` exceeds the cost of placing every request, so a request is
rejected only when no placement has room for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyomo.environ as pyo

from solver.problem import Problem, rejection_penalty


@dataclass
class Formulation:
    """A built Pyomo model plus the index maps needed to read it back."""

    model: Any
    columns: list[tuple[int, int]]  # (class, node) per y variable, in y's index order
    penalty: float
    linked: list[tuple[int, int]]  # (node, model) per `new` variable, in its index order
    n_nodes: int


def build_model(problem: Problem, columns: Sequence[tuple[int, int]], integer: bool) -> Formulation:
    """The Pyomo model restricted to ``columns`` (class, node) pairs."""
    p = problem
    cols = list(columns)
    penalty = rejection_penalty(p)
    domain = pyo.NonNegativeIntegers if integer else pyo.NonNegativeReals
    m = pyo.ConcreteModel(name="peerserve_placement")
    m.y = pyo.Var(range(len(cols)), domain=domain, bounds=lambda _m, i: (0, int(p.class_count[cols[i][0]])))
    m.r = pyo.Var(range(p.n_classes), domain=domain, bounds=lambda _m, c: (0, int(p.class_count[c])))

    by_class: dict[int, list[int]] = {}
    by_node_model: dict[tuple[int, int], list[int]] = {}
    for i, (c, j) in enumerate(cols):
        by_class.setdefault(c, []).append(i)
        by_node_model.setdefault((j, int(p.class_model[c])), []).append(i)
    linked = [jk for jk in by_node_model if p.free[jk] > 0]
    m.new = pyo.Var(range(len(linked)), domain=pyo.NonNegativeReals)
    new_index = {jk: t for t, jk in enumerate(linked)}

    m.obj = pyo.Objective(
        expr=sum(float(p.cost[c, j]) * m.y[i] for i, (c, j) in enumerate(cols))
        + penalty * sum(m.r[c] for c in range(p.n_classes)),
        sense=pyo.minimize,
    )
    m.assign = pyo.Constraint(
        range(p.n_classes),
        rule=lambda _m, c: sum(m.y[i] for i in by_class.get(c, [])) + m.r[c] == int(p.class_count[c]),
    )
    m.link = pyo.Constraint(
        range(len(linked)),
        rule=lambda _m, t: sum(m.y[i] for i in by_node_model[linked[t]]) - m.new[t] <= int(p.free[linked[t]]),
    )

    def instances(j: int, k: int) -> Any:
        if (j, k) in new_index:
            return m.new[new_index[(j, k)]]
        return sum(m.y[i] for i in by_node_model[(j, k)])

    node_models: dict[int, list[int]] = {}
    for j, k in by_node_model:
        node_models.setdefault(j, []).append(k)
    nodes = sorted(node_models)

    demand: dict[tuple[int, int], int] = {}
    for c, j in cols:
        key = (j, int(p.class_model[c]))
        demand[key] = demand.get(key, 0) + int(p.class_count[c])

    def capacity_rule(weights: Any, budget: Any) -> Any:
        def rule(_m: Any, j: int) -> Any:
            ks = [k for k in node_models[j] if weights[k] > 0]
            worst = sum(float(weights[k]) * max(0, demand[(j, k)] - int(p.free[j, k])) for k in ks)
            if worst <= float(budget[j]):
                return pyo.Constraint.Skip  # cannot bind even if every candidate request came here
            return sum(float(weights[k]) * instances(j, k) for k in ks) <= float(budget[j])

        return rule

    m.memory = pyo.Constraint(nodes, rule=capacity_rule(p.mem, p.mem_budget))
    m.compute = pyo.Constraint(nodes, rule=capacity_rule(p.comp, p.comp_budget))
    return Formulation(model=m, columns=cols, penalty=penalty, linked=linked, n_nodes=p.n_nodes)
