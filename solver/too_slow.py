"""Pools too slow to answer one request in time get no instances: their rate is rejected, naming why (issue 16).

An instance whose service time for one request, alone on its node (``slots / mu``: the catalogue's or the measured
throughput, scaled by a fraction of a core), exceeds ``MAX_SERVICE_S`` can never answer through the agent's proxy,
which gives up on a model server after 30 s without an answer (agent/serving/upstream.py ``UpstreamPool.timeout``).
The relaxation still used such pools, since its rejection penalty is priced above the slowest pool: every node
declaring 1e-3 req/s for a model gave 10 instances started and no request served. Repair's rate on them is now
rejected (``drop_too_slow``, after repair, before the pools are closed: removing a pool's rate only frees memory,
compute and cores, so every budget still holds), and the plan's rejection reason names the service time.
The catalogue refuses such figures at its edge (agent/catalogue.py, the same bound); measured ones, a node's
fraction of a core and snapshot files reach the solver, which answers as above.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from solver.node_cpu import node_slots
from solver.queue_model import QueueProblem
from solver.queue_repair import Pools

log = logging.getLogger(__name__)

MAX_SERVICE_S = 30.0  # one request's service time past which an instance serves nothing (the proxy's timeout)
SCREEN = True  # reject the rate on too-slow pools (off only to show the tests catching the slivers)


def too_slow(q: QueueProblem) -> npt.NDArray[np.bool_]:
    """[j, k] pools whose instance takes more than ``MAX_SERVICE_S`` for one request alone (``slots / mu``)."""
    return np.asarray(node_slots(q.base)[:, None] / q.mu > MAX_SERVICE_S)


def drop_too_slow(pools: Pools) -> set[int]:
    """Reject the rate ``pools`` carry on too-slow pools (their counts fall to 0); the models that lost rate so."""
    slow = too_slow(pools.q)
    if not SCREEN or not slow.any():
        return set()
    model = pools.q.base.class_model
    on = (pools.x > 0) & slow[:, model].T  # [c, j]
    for c, j in zip(*np.nonzero(on), strict=True):
        pools.move(int(c), int(j), None, float(pools.x[c, j]))
    pools.x[on] = 0.0  # exactly (the move's subtraction may leave float residue)
    lost = {int(k) for k in model[np.flatnonzero(on.any(axis=1))]}
    if lost:
        log.info("rate rejected on pools too slow to answer within %g s: models %s", MAX_SERVICE_S, sorted(lost))
    return lost


def reason(q: QueueProblem, k: int) -> str:
    """Why model k's rate was rejected on its too-slow pools: the service time, where it is served in time if at all."""
    p = q.base
    name = p.model_names[k]
    seconds = node_slots(p) / q.mu[:, k]
    fast = [p.node_ids[j] for j in np.flatnonzero(seconds <= MAX_SERVICE_S).tolist()]
    slowest = float(seconds[seconds > MAX_SERVICE_S].min(initial=np.inf))
    head = (
        f"one request of {name!r} takes {slowest:.3g} s or more on "
        + ("every node" if not fast else "the other nodes")
        + f", past the {MAX_SERVICE_S:g} s a model server has to answer (an instance there would serve nothing)"
    )
    if not fast:
        return head
    return f"{head}; the nodes that serve it in time ({', '.join(fast[:5])}) have no room left for the rest"
