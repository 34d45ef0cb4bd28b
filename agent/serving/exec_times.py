"""Measured execution time per (node, model) for endpoint ranking: the median of the last few proxied requests.

An average (the EWMA this replaces) lets one client move every client's ranking: one huge request
(4 s where the model takes 1 ms) made the estimate 774 ms for everyone, and a client sending one such
request a second kept a node looking slow. The median of the last ``SAMPLES`` moves only once most recent
requests are slow (a real slowdown: about as quickly as the average did). Bounded: ``SAMPLES`` per key,
at most ``MAX_KEYS`` keys (the oldest-updated dropped). Pure: no I/O.
"""

from __future__ import annotations

import statistics
from collections import OrderedDict, deque

SAMPLES = 16
MAX_KEYS = 4096  # (node, model) pairs: members x catalogue models


class ExecTimes:
    """The last ``SAMPLES`` measured times per (node, model); ``get`` is their median, None if none."""

    def __init__(self, samples: int = SAMPLES, max_keys: int = MAX_KEYS) -> None:
        self.samples = samples
        self.max_keys = max_keys
        self._seen: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._median: dict[tuple[str, str], float] = {}

    def record(self, node: str, model: str, ms: float) -> None:
        key = (node, model)
        window = self._seen.pop(key, None) or deque(maxlen=self.samples)
        window.append(ms)
        self._seen[key] = window
        self._median[key] = float(statistics.median(window))
        while len(self._seen) > self.max_keys:
            old, _ = self._seen.popitem(last=False)
            self._median.pop(old, None)

    def get(self, key: tuple[str, str]) -> float | None:
        return self._median.get(key)

    def __len__(self) -> int:
        return len(self._seen)
