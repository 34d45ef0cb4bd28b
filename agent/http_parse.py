"""The CPU the client port's HTTP parsing may take: per connection, per address, per port (the parse turns).

Split out of agent/http_limits.py (the overview is there). h11 parses in pure Python on the agent's event loop,
which also runs SWIM and the election, so each connection's parsing has a CPU budget (``ParseBudget``:
``PARSE_SHARE`` of a second, ``PARSE_BURST_S`` at once) and all connections from one address share another
(``AddressBudgets``); past either, the next step waits. Behind a NAT one address is many clients, so the address's
budget is not first come first served (60 throttled senders made an honest 8 MiB upload behind them wait 95-106 s,
review12e): each connection also has its fair part, ``ADDRESS_SHARE / users`` (at most ``PARSE_SHARE``; a new
connection starts it one fair burst in debt, so reconnecting buys nothing), and may step on it whatever the
address's budget says, while the address owes less than ``ADDRESS_DEBT_S``. Five addresses at that share would take
the whole loop, and on a LAN an attacker has many: all the client port's parsing (HTTP and HTTPS listeners together)
has one more budget, ``TOTAL_SHARE`` (50 %) of a second, ``TOTAL_BURST_S`` at once (``ParseTurns``), served in
start-time fair queuing across addresses. Pure state and arithmetic on a clock passed in, but ``ParseTurns``'s
one timer (``arm``), which calls back the protocol (agent/http_sliced.py ``SlicedH11Protocol._granted``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any

PARSE_SHARE = 0.05  # CPU seconds per second one connection's parsing may take, past ...
PARSE_BURST_S = 0.1  # ... this much at once (an honest 8 MiB upload costs ~10-20 ms here)
ADDRESS_SHARE = 0.2  # ... and all connections from one address together (64 of them would be 3.2 s a second) ...
ADDRESS_BURST_S = 0.1  # ... past this much at once; each connection's fair part of it needs no more (see below) ...
ADDRESS_DEBT_S = 1.0  # ... while the address owes less than this (a cap on what fair parts may overdraw it)
TOTAL_SHARE = 0.5  # ... and all parsing of a port (every address; HTTP and HTTPS client listeners) together ...
TOTAL_BURST_S = 0.1  # ... this much at once: SWIM, the election and answers keep the rest, however many send
IDLE_CREDIT_S = 0.005  # an address that joins the turns may be this far behind their virtual time (a step's worth)
RECENT_ADDRESSES = 1024  # addresses with no connection open whose place in the turns is remembered (ParseTurns)


@dataclass
class ParseBudget:
    """The CPU time one connection's parsing may take: a bucket of ``burst_s`` refilled at ``share`` of a second
    per second. A step may overdraw it; the next one waits until the bucket is back at zero.

    The chunk rule bounds a body's chunks by its size, so a sender can still front-load bytes to buy tiny chunks
    (a full 8 MiB body buys 32,768 of them, ~0.3 s of h11); this bounds what any connection costs per second,
    whatever it sends. An honest 8 MiB upload costs a fraction of the burst."""

    share: float = PARSE_SHARE
    burst_s: float = PARSE_BURST_S
    credit: float = field(init=False)
    at: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.credit = self.burst_s

    def _refill(self, now: float) -> None:
        if self.at is not None:
            self.credit = min(self.burst_s, self.credit + max(0.0, now - self.at) * self.share)
        self.at = now

    def wait(self, now: float) -> float:
        """Seconds from ``now`` before the connection may parse again (0: at once)."""
        self._refill(now)
        return 0.0 if self.credit >= 0 else -self.credit / self.share

    def spend(self, seconds: float, now: float) -> float:
        """Charge ``seconds`` of parsing that ended at ``now``; the wait before the next step."""
        self._refill(now)
        self.credit -= seconds
        return 0.0 if self.credit >= 0 else -self.credit / self.share


def step_wait(own: ParseBudget, address: ParseBudget, fair: ParseBudget, now: float) -> float:
    """Seconds from ``now`` before a connection may parse again: its ``own`` budget, and the sooner of its
    ``address``'s budget and its ``fair`` part of it, that one only while the address owes less than
    ``ADDRESS_DEBT_S`` (each step is charged to all three)."""
    address_wait = address.wait(now)
    owed = max(0.0, (-address.credit - ADDRESS_DEBT_S) / address.share)
    return max(own.wait(now), min(address_wait, max(fair.wait(now), owed)))


class ParseTurns:
    """All parsing of a port together (every address; the client port's HTTP and HTTPS listeners share one, the
    peer port's h11 fallback has its own) takes at most ``share`` of a second, ``burst_s`` at once, and when that
    budget is spent, the steps that wait take turns fairly across addresses, whatever each address sends or how
    many connections it has.

    Per-address budgets alone let five addresses at ``ADDRESS_SHARE`` take the whole loop, and on a LAN an
    attacker has many addresses. A step goes at once only while the budget is in credit and nobody waits;
    else its connection joins its address's queue, and one timer serves the queues, one step at a time, as
    the budget allows: the address whose steps have taken the least goes first (start-time fair queuing: each
    address has a virtual time, the CPU its steps took; one that starts waiting again joins at the virtual
    time of the step served last, ``virtual``, if it is behind that, so an idle address banks nothing). An
    honest address, whose request parses in one cheap step, is next in line when it joins, not behind the
    others' floods (~one step of the budget's refill); the hostile ones share the rest equally. One that keeps
    sending gets an equal share too, each request waiting at most about a round (a step of each address that
    waits), which ``EVENTS_PER_TURN`` and the head bounds (``MAX_HEADER_FIELDS``, ``MAX_LIST_COMMAS``) keep to
    ~1-2 ms a step (agent/http_sliced.py). A new address starts at the ``horizon``, behind every one that waits
    (``AddressBudgets.take``): appearing, or closing every connection and reconnecting, buys one turn a round like
    everyone else's, never a burst.

    One timer however many wait (a timer per waiting connection would wake them all together each time the
    budget is back: their rechecks, uncharged, cost more than the steps); O(log n) per step (a heap of
    addresses; stale entries, of addresses whose last waiting connection closed, are dropped when popped or
    when they outnumber the live ones)."""

    def __init__(self, share: float = TOTAL_SHARE, burst_s: float = TOTAL_BURST_S) -> None:
        self.budget = ParseBudget(share, burst_s)
        self.virtual = 0.0  # the virtual time where the step served last started
        self.horizon = 0.0  # the latest virtual time any address has reached: where a new one starts
        # (virtual time, its last turn, ticket, address) per address waiting: among equal virtual times the one
        # served least recently goes first (an address that was idle is not put behind a round of ties)
        self._turns: list[tuple[float, int, int, AddressEntry]] = []
        self._tickets = itertools.count()
        self._live = 0  # addresses with a connection waiting (the others' heap entries are stale)
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        """Heap entries held (live and stale): at most twice the addresses waiting, plus 16."""
        return len(self._turns)

    @property
    def waiting(self) -> int:
        """Addresses with a connection waiting for its turn."""
        return self._live

    def admit(self, entry: AddressEntry, connection: Any, now: float) -> bool:
        """Whether ``connection`` (of ``entry``'s address) may parse now; if not, it waits in its address's queue
        for ``next_turn`` (the protocol then arms the timer: ``arm``)."""
        if not self._live and self._budget_wait(now) == 0:
            entry.virtual = max(entry.virtual, self.virtual - IDLE_CREDIT_S)
            self.virtual = max(self.virtual, entry.virtual)
            return True
        if not entry.waiting:
            self._join(entry)
        entry.waiting[connection] = None
        return False

    def next_turn(self, now: float) -> tuple[AddressEntry, Any] | None:
        """The connection whose turn it is (its address's oldest waiting, of the address that has had the least),
        or None (the budget is not back yet, or nobody waits). ``release`` its address after its step."""
        if self._budget_wait(now) > 0:
            return None
        while self._turns:
            virtual, _, ticket, entry = heapq.heappop(self._turns)
            if ticket == entry.ticket:
                connection = next(iter(entry.waiting))
                del entry.waiting[connection]
                self.virtual, entry.ticket, entry.served = max(self.virtual, virtual), None, next(self._tickets)
                self._live -= 1
                return entry, connection
        return None

    def release(self, entry: AddressEntry) -> None:
        """``entry``'s step is done (and charged): it joins the queues again if more of its connections wait."""
        if entry.waiting and entry.ticket is None:
            self._join(entry)

    def wait(self, now: float) -> float | None:
        """Seconds from ``now`` to the next turn; None when nobody waits."""
        return self._budget_wait(now) if self._live else None

    def _budget_wait(self, now: float) -> float:
        """The budget's wait, a rounding error taken as none (the refill's arithmetic can leave -1e-19 of credit)."""
        wait = self.budget.wait(now)
        return 0.0 if wait < 1e-9 else wait

    def withdraw(self, entry: AddressEntry, connection: Any) -> None:
        """``connection`` closed while it waited for its turn."""
        if entry.waiting.pop(connection, 0) is None and not entry.waiting and entry.ticket is not None:
            entry.ticket = None  # its heap entry is stale now
            self._live -= 1
            if len(self._turns) > 2 * self._live + 16:
                self._turns = [turn for turn in self._turns if turn[2] == turn[3].ticket]
                heapq.heapify(self._turns)

    def charge(self, entry: AddressEntry, seconds: float, now: float) -> None:
        """A step of ``entry``'s address took ``seconds`` of parsing, ending at ``now``."""
        self.budget.spend(seconds, now)
        entry.virtual += seconds
        self.horizon = max(self.horizon, entry.virtual)

    def ticket(self) -> int:
        """A ticket number: later than every one given so far."""
        return next(self._tickets)

    def _join(self, entry: AddressEntry) -> None:
        """``entry``'s address starts waiting: at its virtual time, or the current one if that is later (an address
        that was idle banks nothing)."""
        entry.virtual = max(entry.virtual, self.virtual - IDLE_CREDIT_S)
        self.horizon = max(self.horizon, entry.virtual)
        entry.ticket = next(self._tickets)
        heapq.heappush(self._turns, (entry.virtual, entry.served, entry.ticket, entry))
        self._live += 1

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve the queues on ``loop``: one timer, at the next turn."""
        if self._loop is not loop:  # (a new loop: tests run one per server; the old one's timer went with it)
            self._loop, self._timer = loop, None
        wait = self.wait(loop.time())
        if self._timer is None and wait is not None:
            self._timer = loop.call_later(wait, self._serve)

    def _serve(self) -> None:
        """The timer: one step, the next turn's; then the timer for the one after (other tasks run between)."""
        self._timer = None
        assert self._loop is not None
        turn = self.next_turn(self._loop.time())
        if turn is not None:
            entry, connection = turn
            try:
                connection._granted()  # parses and charges (or finds its transport closing)
            finally:  # (whatever it raised: the others' turns go on)
                self.release(entry)
                self.arm(self._loop)
        else:
            self.arm(self._loop)


PARSING = ParseTurns()  # the client port's, HTTP and HTTPS listeners together
PEER_PARSING = ParseTurns()  # the peer port's h11 fallback's: a flood of the client port never delays SWIM there


@dataclass(eq=False)
class AddressEntry:
    """What ``AddressBudgets`` holds for one address: its parse budget, its open connections, and its place in
    the port's ``ParseTurns`` (virtual time, the connections waiting for a turn, oldest first)."""

    budget: ParseBudget
    virtual: float
    users: int = 0
    waiting: dict[Any, None] = field(default_factory=dict)
    ticket: int | None = None  # its live heap entry's, while a connection waits
    served: int = 0  # when it last had a turn (a ticket number; 0: never)


class AddressBudgets:
    """One ``ParseBudget`` per client address, shared by that address's open connections (held while one is
    open: as many entries as addresses with a connection, at most the server's connection limit), and the
    ``ParseTurns`` all of them take turns in (the client port's, ``PARSING``, unless given another)."""

    def __init__(
        self, share: float = ADDRESS_SHARE, burst_s: float = ADDRESS_BURST_S, turns: ParseTurns | None = None
    ) -> None:
        self.share, self.burst_s = share, burst_s
        self.turns = PARSING if turns is None else turns
        self._held: dict[str, AddressEntry] = {}
        self._recent: dict[str, float] = {}  # virtual times of addresses with no connection open, oldest first

    def __len__(self) -> int:
        return len(self._held)

    def take(self, host: str) -> AddressEntry:
        """``host``'s entry, for one more connection. A new one starts at the virtual time it had when its last
        connection closed, if remembered (an honest client that connects per request keeps its place), else
        at the turns' horizon, behind every address that waits: an address that appears, or reconnects to shed
        what its steps took, waits a whole round, never buys turns ahead of the others."""
        entry = self._held.get(host)
        if entry is None:
            start = self._recent.pop(host, self.turns.horizon)
            entry = self._held[host] = AddressEntry(ParseBudget(self.share, self.burst_s), start)
            entry.served = self.turns.ticket()  # last among equals, as if it had just had a turn
        entry.users += 1
        return entry

    def users(self, host: str) -> int:
        """How many open connections from ``host`` hold its budget: the per-address connection count, kept as
        connections open and close (a scan of the server's connections per connect was quadratic in them)."""
        entry = self._held.get(host)
        return 0 if entry is None else entry.users

    def give(self, host: str) -> None:
        """A connection from ``host`` closed; its budget goes when the last one does."""
        entry = self._held[host]
        entry.users -= 1
        if entry.users <= 0:
            del self._held[host]
            self._recent[host] = entry.virtual
            if len(self._recent) > RECENT_ADDRESSES:  # the least recently closed goes (it starts at the horizon)
                del self._recent[next(iter(self._recent))]
