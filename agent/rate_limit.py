"""Per-sender token buckets (pure: the clock is passed in): how often one peer may make us act.

Used where one authenticated member's message costs the whole cluster work: an election message can make a
leader take a new term (an fsync on every node, a broadcast to every member, the round in progress dropped),
so a member that sends them in a loop is answered 429 past its bucket instead of being obeyed each time.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

MAX_SENDERS = 512  # buckets kept (least recently used dropped: a dropped sender starts full again)


@dataclass
class _Bucket:
    tokens: float
    at: float


class SenderBuckets:
    """``allow(sender, now)``: whether ``sender`` may act now (``burst`` at once, then ``rate`` per second)."""

    def __init__(self, rate: float, burst: float, max_senders: int = MAX_SENDERS) -> None:
        if rate <= 0 or burst < 1 or max_senders < 1:
            raise ValueError("rate must be positive, burst and max_senders at least 1")
        self.rate, self.burst, self.max_senders = rate, burst, max_senders
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.refused = 0

    def allow(self, sender: str, now: float) -> bool:
        b = self._buckets.get(sender)
        if b is None:
            b = self._buckets[sender] = _Bucket(self.burst, now)
            if len(self._buckets) > self.max_senders:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(sender)
            b.tokens = min(self.burst, b.tokens + max(0.0, now - b.at) * self.rate)
            b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return True
        self.refused += 1
        return False

    def wait(self, sender: str, now: float) -> float:
        """Seconds until ``sender`` has a token again (0 when it has one now); does not spend one."""
        b = self._buckets.get(sender)
        if b is None:
            return 0.0
        tokens = min(self.burst, b.tokens + max(0.0, now - b.at) * self.rate)
        return max(0.0, (1.0 - tokens) / self.rate)

    def __len__(self) -> int:
        return len(self._buckets)
