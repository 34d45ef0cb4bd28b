"""The numeric form of a snapshot for one mode: request classes, costs, budgets and free slots.

Requests whose cost rows are identical (same model, same RTT and execution time to every node) collapse
into one class with a count, so the optimisation has one variable per (class, node), not per (request,
node). Capacity is expressed uniformly for both modes:

* ``free[j, k]``: instances of model k already on node j that a request may use at no extra memory or
  compute (Mode 1 keeps current instances; Mode 2 re-plans from scratch, so 0);
* ``mem_budget[j]`` / ``comp_budget[j]``: memory and compute left for *new* instances on node j.

A request of model k placed on node j beyond ``free[j, k]`` starts one new instance, costing ``mem[k]``
and ``comp[k]`` of node j's budgets. With ``free = 0`` this is exactly the thesis's formulation
(sum_i I_ij m_i <= M_j, sum_i I_ij c_i <= C_j).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from enum import Enum
from itertools import chain, pairwise

import numpy as np
import numpy.typing as npt

from solver.plan import Action
from solver.snapshot import Snapshot

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class Mode(str, Enum):
    """Thesis 4.3. MODE1: available memory, keep what runs. MODE2: total memory, follow the solver."""

    MODE1 = "1"
    MODE2 = "2"
    AUTO = "auto"


@dataclass(frozen=True)
class Problem:
    """Arrays the optimisers work on (nodes j, models k, classes c)."""

    snapshot: Snapshot
    mode: Mode
    node_ids: tuple[str, ...]
    model_names: tuple[str, ...]
    mem: FloatArray  # [k] MB one instance needs
    comp: FloatArray  # [k] compute one instance needs
    class_model: IntArray  # [c] model index
    class_count: IntArray  # [c] number of requests in the class
    class_members: tuple[tuple[int, ...], ...]  # [c] request indices, input order
    cost: FloatArray  # [c, j] rtt + exec, ms
    free: IntArray  # [j, k] instances usable at no cost
    mem_budget: FloatArray  # [j]
    comp_budget: FloatArray  # [j]
    current: IntArray  # [j, k] instances running before this round (after eviction)

    @property
    def n_nodes(self) -> int:
        return len(self.node_ids)

    @property
    def n_classes(self) -> int:
        return len(self.class_count)

    @property
    def n_requests(self) -> int:
        return len(self.snapshot.requests)


def build_problem(snapshot: Snapshot, mode: Mode, current: IntArray | None = None, aggregate: bool = True) -> Problem:
    """Aggregate requests into classes and derive budgets for ``mode`` (MODE1 or MODE2).

    ``current`` overrides the snapshot's running instances (Mode 1 passes the counts left after eviction);
    ``aggregate=False`` keeps one class per request (the per-request form, for checking aggregation).
    """
    if mode is Mode.AUTO:
        raise ValueError("build_problem needs a concrete mode; resolve AUTO first")
    node_ids = tuple(n.id for n in snapshot.nodes)
    model_names = tuple(m.name for m in snapshot.models)
    model_index = {name: k for k, name in enumerate(model_names)}
    mem = np.array([m.mem_mb for m in snapshot.models], dtype=np.float64)
    comp = np.array([m.compute for m in snapshot.models], dtype=np.float64)
    running = current if current is not None else running_instances(snapshot)

    members, class_model, class_count, cost = _classes(snapshot, node_ids, model_index, aggregate)

    if mode is Mode.MODE1:
        free = running.copy()
        freed = released_memory(snapshot, running, mem)
        mem_budget = np.array([n.mem_available_mb for n in snapshot.nodes]) + freed
        used_comp = running @ comp
        comp_budget = np.maximum(0.0, np.array([n.compute for n in snapshot.nodes]) - used_comp)
    else:
        free = np.zeros_like(running)
        mem_budget = np.array([n.mem_total_mb for n in snapshot.nodes], dtype=np.float64)
        comp_budget = np.array([n.compute for n in snapshot.nodes], dtype=np.float64)
    return Problem(
        snapshot=snapshot,
        mode=mode,
        node_ids=node_ids,
        model_names=model_names,
        mem=mem,
        comp=comp,
        class_model=class_model,
        class_count=class_count,
        class_members=members,
        cost=cost,
        free=free,
        mem_budget=mem_budget.astype(np.float64),
        comp_budget=comp_budget.astype(np.float64),
        current=running,
    )


def _classes(
    snapshot: Snapshot, node_ids: tuple[str, ...], model_index: dict[str, int], aggregate: bool
) -> tuple[tuple[tuple[int, ...], ...], IntArray, IntArray, FloatArray]:
    """Request classes in order of first appearance: members, model, count and cost row [c, j]."""
    n = len(snapshot.requests)
    pick = operator.itemgetter(*node_ids)
    if n == 0 or not node_ids:
        return (), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((0, len(node_ids)))
    size = n * len(node_ids)
    if len(node_ids) == 1:
        rtt = np.fromiter((pick(r.rtt_ms) for r in snapshot.requests), np.float64, count=n)
        exe = np.fromiter((pick(r.exec_ms) for r in snapshot.requests), np.float64, count=n)
    else:
        rtt = np.fromiter(chain.from_iterable(pick(r.rtt_ms) for r in snapshot.requests), np.float64, count=size)
        exe = np.fromiter(chain.from_iterable(pick(r.exec_ms) for r in snapshot.requests), np.float64, count=size)
    cost_rows = (rtt + exe).reshape(n, len(node_ids))
    models = np.array([model_index[r.model] for r in snapshot.requests], dtype=np.int64)
    if not aggregate:
        return tuple((i,) for i in range(n)), models, np.ones(n, dtype=np.int64), cost_rows
    keyed = np.concatenate([models[:, None].astype(np.float64), cost_rows + 0.0], axis=1)  # + 0.0: no -0.0
    label_of: dict[bytes, int] = {}
    label = np.array([label_of.setdefault(row.tobytes(), len(label_of)) for row in keyed], dtype=np.int64)
    by_class = np.argsort(label, kind="stable")
    count = np.bincount(label)
    bounds = np.concatenate([[0], np.cumsum(count)]).tolist()  # np.split's pieces, sliced from one list (its
    flat = by_class.tolist()  # per-piece views cost more: ~17 us a thesis-size snapshot)
    members = tuple(tuple(flat[a:b]) for a, b in pairwise(bounds))
    starts = by_class[np.concatenate([[0], np.cumsum(count)[:-1]])]
    return members, models[starts], count.astype(np.int64), cost_rows[starts]


def rejection_penalty(problem: Problem) -> float:
    """A per-request rejection cost larger than any complete placement costs (the model's P)."""
    worst = float(problem.cost.max()) if problem.cost.size else 1.0
    return max(1.0, worst) * (problem.n_requests + 1)


def running_instances(snapshot: Snapshot) -> IntArray:
    """[j, k] instance counts the snapshot says are running now."""
    names = [m.name for m in snapshot.models]
    out = np.zeros((len(snapshot.nodes), len(names)), dtype=np.int64)
    out[...] = [[n.instances.get(name, 0) for name in names] for n in snapshot.nodes]  # one store, not one each
    return out


def released_memory(snapshot: Snapshot, kept: IntArray, mem: FloatArray) -> FloatArray:
    """[j] memory given back by instances that run now but are not in ``kept`` (evicted)."""
    return np.asarray((running_instances(snapshot) - kept).clip(min=0) @ mem, dtype=np.float64)


def plan_instances(p: Problem, target: IntArray) -> dict[str, dict[str, int]]:
    """A plan's instances: node -> model -> count, nodes always present, zero counts left out."""
    rows = np.asarray(target).tolist()  # Python ints: int(target[j, k]) each, without numpy's per-element cost
    return {
        node: {p.model_names[k]: int(v) for k, v in enumerate(rows[j]) if v > 0} for j, node in enumerate(p.node_ids)
    }


def plan_actions(p: Problem, running: IntArray, target: IntArray) -> tuple[Action, ...]:
    """The starts and stops that take ``running`` to ``target`` (node, then model order)."""
    out = []
    changes = (np.asarray(target) - np.asarray(running)).tolist()  # the same differences, as Python numbers
    for j, node in enumerate(p.node_ids):
        for k, model in enumerate(p.model_names):
            delta = int(changes[j][k])
            if delta:
                out.append(Action("start" if delta > 0 else "stop", node, model, abs(delta)))
    return tuple(out)
