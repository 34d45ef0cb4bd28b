"""Measured execution time per (node, model) for endpoint ranking: the median of the last few proxied requests.

An average (the EWMA this replaces) lets one client move every client's ranking: one huge request
(4 s where the model takes 1 ms) made the estimate 774 ms for everyone, and a client sending one such
request a second kept a node looking slow. The median of the last ``SAMPLES`` moves only once most recent
requests are slow (a real slowdown: about as quickly as the average did).

One source (a client address) holds at most ``SOURCE_SHARE`` of the window, under half: its new sample
replaces its own oldest, never another's (review14a F3: one client sending most of the last 16 requests, with
heavy or trivial inputs, set the median for everyone). With the window full the median is then always one of
the other sources' samples or between them; a lone source is measured by its own last ``SOURCE_SHARE``.
Bounded: ``SAMPLES`` per key, at most ``MAX_KEYS`` keys (the oldest-updated dropped). Pure: no I/O.
"""

from __future__ import annotations

import statistics
from collections import OrderedDict, deque

SAMPLES = 16
SOURCE_SHARE = 7  # of SAMPLES, from one source at most (under half: the others' samples hold the median)
MAX_KEYS = 4096  # (node, model) pairs: members x catalogue models


class ExecTimes:
    """The last ``SAMPLES`` measured times per (node, model), at most ``share`` of them from one source; ``get``
    is their median, None if none."""

    def __init__(self, samples: int = SAMPLES, max_keys: int = MAX_KEYS, share: int = SOURCE_SHARE) -> None:
        self.samples = samples
        self.max_keys = max_keys
        self.share = max(1, min(share, samples))
        self._seen: OrderedDict[tuple[str, str], deque[tuple[str, float]]] = OrderedDict()
        self._median: dict[tuple[str, str], float] = {}

    def record(self, node: str, model: str, ms: float, source: str = "") -> None:
        key = (node, model)
        window = self._seen.pop(key, None) or deque(maxlen=self.samples)
        if sum(1 for s, _ in window if s == source) >= self.share:
            oldest = next(i for i, (s, _) in enumerate(window) if s == source)
            del window[oldest]  # its own oldest makes room: a busy source never pushes another's samples out
        window.append((source, ms))
        self._seen[key] = window
        self._median[key] = float(statistics.median(t for _, t in window))
        while len(self._seen) > self.max_keys:
            old, _ = self._seen.popitem(last=False)
            self._median.pop(old, None)

    def get(self, key: tuple[str, str]) -> float | None:
        return self._median.get(key)

    def __len__(self) -> int:
        return len(self._seen)
