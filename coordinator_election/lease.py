"""The leader's lease as gossip carries it: which renewal is news, and which one the election may take.

Pure and stdlib-only. A renewal is (term, leader, seq), signed by the leader (the shell checks the signature);
any member may relay it, so a receiver must tell fresh from stale or replayed: per leader, only a (term, seq)
above the newest one seen is news (``LeaseBook``), and only news renews a lease. ``lease_refusal`` is the rule
for feeding news to the election: never our own, never a term more than MAX_TERM_AHEAD past ours (a member
cannot push the cluster's terms to the end of the range), and only from a leader that is a member here.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

MAX_TERM_AHEAD = 1000  # an election message or lease may not push terms further than this past ours
MAX_LEADERS = 16  # leaders whose newest renewal is remembered (the lowest (term, seq) forgotten first)


@dataclass
class LeaseBook:
    """The newest (term, seq) seen from each leader, and whether a copy of it carried a certificate; at most ``limit``
    leaders."""

    limit: int = MAX_LEADERS
    seen: dict[str, tuple[int, int, bool]] = field(default_factory=dict)

    def is_news(self, leader: str, term: int, seq: int, cert: bool = False) -> bool:
        """Whether (term, seq) is newer than every renewal seen from ``leader`` (stale and replays are not), or is the
        newest seen and carries a certificate where the copy seen carried none: a leader's pushes carry its certificate
        but the copies piggybacked on other messages do not, and the cert-less copy often arrives first (review15b F3).
        """
        return (term, seq, cert) > self.seen.get(leader, (-1, -1, False))

    def note(self, leader: str, term: int, seq: int, cert: bool = False) -> None:
        """Remember (term, seq) as the newest from ``leader`` (if it is); the bound drops the lowest term."""
        if not self.is_news(leader, term, seq, cert):
            return
        self.seen[leader] = (term, seq, cert)
        while len(self.seen) > self.limit:  # the oldest other leader goes (a renewal that old renews no lease)
            del self.seen[min((n for n in self.seen if n != leader), key=lambda n: self.seen[n])]


@dataclass
class CertAllowance:
    """Per leader, when a gossiped lease's certificate was last verified: at most one per ``every`` seconds each, for at
    most ``limit`` leaders at once (a lease's certificate costs a signature check per grant, and any member may put a
    lease of its own with forged grants on every SWIM message, a route with no per-sender rate limit: review15b F2).
    Entries older than ``every`` are dropped; while ``limit`` leaders have one within it, a new leader waits."""

    every: float
    limit: int = MAX_LEADERS
    at: dict[str, float] = field(default_factory=dict)

    def take(self, leader: str, now: float) -> bool:
        """True (and noted) if ``leader``'s lease certificate may be verified now."""
        if now - self.at.get(leader, -1e18) < self.every:
            return False
        for n in [n for n, t in self.at.items() if now - t >= self.every]:
            del self.at[n]
        if len(self.at) >= self.limit:
            return False
        self.at[leader] = now
        return True


def lease_refusal(term: int, leader: str, self_id: str, own_term: int, members: Collection[str]) -> str | None:
    """Why a verified renewal must not reach the election (None: feed it as the leader's announce)."""
    if leader == self_id:
        return "our own lease"
    if term > own_term + MAX_TERM_AHEAD:
        return f"term {term} is too far ahead of ours ({own_term})"
    if leader not in members:
        return f"{leader} is not a member here"
    return None
