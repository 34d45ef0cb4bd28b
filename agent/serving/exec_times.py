"""Measured execution time per (node, model) for endpoint ranking: the median of the last few proxied requests.

An average (the EWMA this replaces) lets one client move every client's ranking: one huge request
(4 s where the model takes 1 ms) made the estimate 774 ms for everyone, and a client sending one such
request a second kept a node looking slow. The median of the last ``SAMPLES`` moves only once most recent
requests are slow (a real slowdown: about as quickly as the average did).

When the window is full, the sample that makes room is the oldest of the source (a client address) holding the
most samples, not simply the oldest: one client sending most requests, with heavy or trivial inputs, pushed
everyone else's samples out and set the median for all (review14a F3). Active sources so end up with about
equal parts: with two or more others, one source is under a third of the window and the median is theirs;
with one other it holds half (the median between the two). A source is an address, so a client with several
addresses has a part per address (review14d S3, docs/security.md: as the election's one voice per address; a
median of per-source medians gives the same votes and was not taken). A lone source keeps the plain last ``SAMPLES``
(the rule solver/agent_sim.py replays). A sample older than ``MAX_AGE_S`` is dropped at the next record, so
the samples of a client that went quiet do not hold half the window for good.
Bounded: ``SAMPLES`` per key, at most ``MAX_KEYS`` keys (the oldest-updated dropped). Pure: the clock is passed in.
"""

from __future__ import annotations

import statistics
from collections import Counter, OrderedDict, deque

SAMPLES = 16
MAX_AGE_S = 300.0  # a sample older than this no longer counts (a quiet client's part of the window lapses)
MAX_KEYS = 4096  # (node, model) pairs: members x catalogue models


class ExecTimes:
    """The last ``SAMPLES`` measured times per (node, model), the busiest source giving way first; ``get`` is
    their median, None if none."""

    def __init__(self, samples: int = SAMPLES, max_keys: int = MAX_KEYS, max_age_s: float = MAX_AGE_S) -> None:
        self.samples = samples
        self.max_keys = max_keys
        self.max_age_s = max_age_s
        self._seen: OrderedDict[tuple[str, str], deque[tuple[str, float, float]]] = OrderedDict()
        self._median: dict[tuple[str, str], float] = {}

    def record(self, node: str, model: str, ms: float, source: str = "", now: float | None = None) -> None:
        """One 2xx answer's time from ``source`` (its client's address); ``now`` (monotonic s) ages samples out."""
        key = (node, model)
        window = self._seen.pop(key, None) or deque()
        if now is not None:
            while window and now - window[0][2] > self.max_age_s:
                window.popleft()
        window.append((source, ms, now if now is not None else 0.0))
        if len(window) > self.samples:
            held = Counter(s for s, _, _ in window)
            most = max(held.values())
            del window[next(i for i, (s, _, _) in enumerate(window) if held[s] == most)]  # in time order
        self._seen[key] = window
        self._median[key] = float(statistics.median(t for _, t, _ in window))
        while len(self._seen) > self.max_keys:
            old, _ = self._seen.popitem(last=False)
            self._median.pop(old, None)

    def get(self, key: tuple[str, str]) -> float | None:
        return self._median.get(key)

    def __len__(self) -> int:
        return len(self._seen)
