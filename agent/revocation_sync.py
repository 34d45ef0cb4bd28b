"""The operator's revocation list travels between boards by itself (operator-CA mode).

An operator copies a new ``revoked.json`` to ONE board; every board advertises the (stamp, digest) of the list it
has in force on each SWIM message it sends (``wire.SwimMessage.revocations``), so within a few protocol periods each
member hears of the newer stamp from a member that has it, fetches the list from that member with signed peer
requests (``GET /peer/revocations``, in pages: a whole list can exceed a peer answer's bound) and hands it to
``Revocations`` (``offer_check`` / ``offer_stage`` in a thread, ``offer_commit`` on the loop), which puts it in force
only if it is signed by THIS board's operator CA and strictly newer than the list it holds (no new trust: a member
can hand over only what the operator signed), and keeps it in the board's own ``DATA_DIR/peer/revoked.synced.json``
(never in the operator's file). Then that board advertises the new stamp too, and so on.

What a member can make us do is bounded: one fetch in flight at a time (whatever many members advertise; a stamp
at least ``BACKERS`` members advertise pre-empts a fetch of a stamp fewer members advertise, ``FetchPlan``), at most
one fetch per member per ``FETCH_INTERVAL_S``, and a member whose fetch failed (unreachable, a malformed page, a list
it cannot back, forged or not newer) is asked again only after an exponential back-off up to ``BACKOFF_MAX_S``; a
fetch is at most ``MAX_PAGES`` answers of ``wire.MAX_BODY`` within ``FETCH_TIMEOUT_S``. Advertising costs a stamp
and 32 hex digits per message.

    FetchPlan        the decisions (pure, the clock passed in): whom to fetch which stamp from, back-off
    take_page        one page checked against the ones before it (pure)
    Retry            when a board's own chore may run again (pure): the synced file written again
    RevocationSync   carries them out: advert for outgoing messages (and ``keep_synced``: the synced file written
                     again when it lost the list in force, review19f R3), ``heard`` for incoming ones, the fetch
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from agent import aio
from agent.operator_ca import (
    MAX_REVOKED,
    OFFER_OUTCOMES,
    REVOCATION_PAGE,
    CardError,
    Revocations,
    SignedList,
    Staged,
    list_text,
)
from peerserve import wire

if TYPE_CHECKING:
    from agent.peer_client import PeerClient

log = logging.getLogger(__name__)

FETCH_INTERVAL_S = 1.0  # least time between two fetches from one member (and the back-off's first step)
BACKOFF_MAX_S = 300.0  # a member whose fetches keep failing is asked at most this rarely
FETCH_TIMEOUT_S = 10.0  # one whole fetch, every page
PAGE_TIMEOUT_S = 3.0  # one page
MAX_PAGES = math.ceil(MAX_REVOKED / REVOCATION_PAGE)  # answers of one fetch at most (16)
MAX_TRACKED = 256  # members whose back-off is remembered (agent.discovery.swim.MAX_MEMBERS)
SAID_MAX = 256  # (member, stamp) conflicts logged once each, then forgotten all at once
BACKERS = 2  # current members advertising a stamp, at least, for its fetch to pre-empt another (review19a F4)
FETCH, CONFLICT, PREEMPT = "fetch", "conflict", "preempt"
# a fetch's outcomes: the list's fate (Revocations.offer), "failed" (no whole list came back) or "preempted" (given up
# for a stamp more members advertise, FetchPlan.choose)
OUTCOMES = (*OFFER_OUTCOMES, "failed", "preempted")


class FetchError(Exception):
    """A member's answers did not make a whole list (refused, malformed, another stamp, too many pages)."""


@dataclass
class _Member:
    failures: int = 0  # fetches from it that failed in a row
    next_at: float = -math.inf  # monotonic: when it may be asked again


@dataclass
class Retry:
    """When a board's own repeated chore may run again (pure: ``now`` is the monotonic clock, passed in): at most once
    per ``interval_s``, and after failures in a row ``interval_s`` doubled per failure up to ``max_s``."""

    interval_s: float = FETCH_INTERVAL_S
    max_s: float = BACKOFF_MAX_S
    failures: int = 0
    next_at: float = -math.inf

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def done(self, ok: bool, now: float) -> None:
        self.failures = 0 if ok else self.failures + 1
        self.next_at = now + min(self.max_s, self.interval_s * 2.0**self.failures)


class FetchPlan:
    """Which advertised stamp to fetch from which member, and when a member may be asked again (pure: ``now`` is the
    monotonic clock, passed in).

    One fetch at a time. A member that advertises a stamp nobody else does (one it cannot back, say) and trickles its
    pages held that slot for the whole fetch's deadline, every back-off step (review19a F4); now a stamp that at
    least ``BACKERS`` current members advertise, and more members than advertise the stamp being fetched, pre-empts
    that fetch while it is still downloading (not once its list is being checked and written). The count, not the
    stamp, decides: a stamp is the advertiser's to choose, and two colluding members advertising a made-up newer one
    cancelled every honest fetch three members backed (review20a M1). So a fetch that ``h`` members back is
    cancelled only for a stamp at least ``h + 1`` members advertise; nothing pre-empts a fetch of the same stamp (slow
    honest members would take turns for ever). The member pre-empted is backed off as after a failure only when it
    alone advertised its stamp (a lie or not, nobody else vouches for it). Bounded: each pre-emption is by a member
    not backed off, whose next turn is then ``interval_s`` away at least, so at most one per member per
    ``interval_s``."""

    def __init__(
        self, interval_s: float = FETCH_INTERVAL_S, backoff_max_s: float = BACKOFF_MAX_S, tracked: int = MAX_TRACKED
    ) -> None:
        self.interval_s, self.backoff_max_s, self.tracked = interval_s, backoff_max_s, tracked
        self.members: OrderedDict[str, _Member] = OrderedDict()
        self.in_flight: tuple[str, int] | None = None  # (member, stamp) of the one fetch under way
        self.ticket = 0  # the fetch under way's number: a pre-empted one's ``done`` is then told apart
        self.preemptible = False  # the fetch under way is still downloading (the caller clears it after)

    def choose(
        self,
        member: str,
        advert: tuple[int, str],
        own: tuple[int, str] | None,
        now: float,
        backers: Callable[[int], int] = lambda stamp: 1,
    ) -> str | None:
        """What to do about ``member`` advertising ``advert`` (stamp, digest) while ours is ``own`` (None: no list in
        force): ``FETCH`` (the caller fetches ``advert``'s stamp from it and reports ``done`` with ``ticket``),
        ``PREEMPT`` (the same, after cancelling the fetch under way, whose member, if it alone advertised that stamp,
        is backed off here already), ``CONFLICT`` (the same stamp as ours naming other cards: the caller logs it,
        nothing is fetched) or None.
        ``backers(stamp)``: how many current members advertise ``stamp`` now (asked only while a fetch is under way)."""
        stamp, digest = advert
        ours = own[0] if own is not None else -1
        if stamp < ours:
            return None  # it is behind: it fetches ours
        if stamp == ours:
            return CONFLICT if own is not None and digest != own[1] else None
        m = self.members.get(member)
        if m is not None and now < m.next_at:
            return None
        decision = FETCH
        if self.in_flight is not None:
            busy, fetching = self.in_flight
            backed, held = backers(stamp), backers(fetching)
            if not (self.preemptible and member != busy and backed >= BACKERS and backed > held):
                return None
            if held <= 1:  # its member alone advertised it (or nobody does any more)
                self._failed(busy, now)
            decision = PREEMPT
        if m is None:
            m = self.members[member] = _Member()
            while len(self.members) > self.tracked:
                self.members.popitem(last=False)
        self.members.move_to_end(member)
        m.next_at = now + self.interval_s
        self.in_flight = (member, stamp)
        self.ticket += 1
        self.preemptible = True
        return decision

    def done(self, member: str, ok: bool, now: float, ticket: int | None = None) -> None:
        """The fetch from ``member`` (number ``ticket``; None: the one under way) ended (``ok``: its list was put in
        force): the next may start; a failure backs the member off (``interval_s`` doubled per failure in a row, up to
        ``backoff_max_s``). A pre-empted fetch's end changes nothing (``choose`` backed its member off)."""
        if ticket is not None and ticket != self.ticket:
            return
        self.in_flight, self.preemptible = None, False
        m = self.members.get(member)
        if m is None:
            return
        if ok:
            m.failures, m.next_at = 0, now + self.interval_s
        else:
            self._failed(member, now)

    def _failed(self, member: str, now: float) -> None:
        m = self.members.get(member)
        if m is not None:
            m.failures += 1
            m.next_at = now + min(self.backoff_max_s, self.interval_s * 2.0**m.failures)

    def backoff(self, member: str, now: float) -> float:
        """Seconds until ``member`` may be asked again (0: now)."""
        m = self.members.get(member)
        return max(0.0, m.next_at - now) if m is not None else 0.0


@dataclass
class Pages:
    """The pages of one list taken so far."""

    stamp: int
    signature: str = ""
    total: int = -1  # -1: no page yet
    revoked: list[str] | None = None

    @property
    def complete(self) -> bool:
        return self.revoked is not None and len(self.revoked) == self.total

    def text(self) -> bytes:
        """The list as a file holds it (what ``peerserve ca revoke`` writes): for ``Revocations.offer`` to check."""
        return list_text(self.stamp, self.revoked or [], self.signature)


def take_page(pages: Pages, data: Any) -> None:
    """Add one answer of ``GET /peer/revocations`` to ``pages``; FetchError when it is not the next page of the list
    signed at ``pages.stamp`` (another stamp, another signature or length than the pages before, out of order, or more
    than asked). The signature itself is checked on the whole list (``Revocations.offer``)."""
    if not isinstance(data, dict):
        raise FetchError("a page is not a JSON object")
    issued, signature, total, offset, revoked = (data.get(k) for k in ("issued", "signature", "total", "offset",
                                                                        "revoked"))  # fmt: skip
    if issued != pages.stamp or isinstance(issued, bool):
        raise FetchError(f"a page of the list signed at {str(issued)[:20]}, not {pages.stamp}")
    if not isinstance(signature, str) or not 0 < len(signature) <= 128:
        raise FetchError("a page without the list's signature")
    if isinstance(total, bool) or not isinstance(total, int) or not 0 <= total <= MAX_REVOKED:
        raise FetchError(f"a list of at most {MAX_REVOKED} cards")
    have = pages.revoked if pages.revoked is not None else []
    if pages.revoked is not None and (signature != pages.signature or total != pages.total):
        raise FetchError("a page of another list than the pages before")
    if offset != len(have) or isinstance(offset, bool):
        raise FetchError(f"page at offset {str(offset)[:20]}, {len(have)} asked")
    want = min(REVOCATION_PAGE, total - len(have))
    if not isinstance(revoked, list) or len(revoked) != want:
        raise FetchError(f"a page of {want} fingerprints expected")
    if not all(isinstance(r, str) and len(r) == 32 for r in revoked):
        raise FetchError("fingerprints are 32 hex digits")
    pages.signature, pages.total, pages.revoked = signature, total, have + revoked


class RevocationSync:
    """One board's side: what it advertises, what it makes of members' adverts, the fetches it runs."""

    def __init__(
        self,
        revocations: Revocations,
        peers: PeerClient,
        member_url: Callable[[str], str | None],
        clock: Callable[[], float] = time.monotonic,
        plan: FetchPlan | None = None,
        timeout_s: float = FETCH_TIMEOUT_S,
    ) -> None:
        self.revocations, self.peers, self.member_url, self.clock = revocations, peers, member_url, clock
        self.plan = plan or FetchPlan()
        self.timeout_s = timeout_s
        self.outcomes: Counter[str] = Counter(dict.fromkeys(OUTCOMES, 0))  # peerserve_revocation_lists_total
        self.heard_from: OrderedDict[str, tuple[int, str]] = OrderedDict()  # member -> its latest advert (/cluster)
        self._task: asyncio.Task[None] | None = None
        self._ending: set[asyncio.Task[None]] = set()  # pre-empted fetches, cancelled, not yet ended
        self._said: set[tuple[str, int]] = set()
        self.restores = Retry()  # the synced file written again (review19f R3): once a second, backed off on failure
        self.restored = 0  # times it was
        self._restoring: asyncio.Task[None] | None = None

    def advert(self) -> tuple[int, str] | None:
        """(stamp, digest) for our outgoing SWIM messages (and /cluster, /metrics); on the loop, the synced file is
        checked to hold the list in force (``keep_synced``)."""
        own = self.revocations.advert()
        self.keep_synced(restat=False)  # advert() has just stat'd both files (review20a L3)
        return own

    def keep_synced(self, restat: bool = True) -> None:
        """On the event loop: when the synced file no longer holds the list in force from it (removed, damaged or
        replaced by an older list while the agent runs; ``Revocations.lost_synced``), write it there again, in a
        thread, one write at a time and at most once per ``Retry`` step, so that the state on disk follows the state
        in force and a restart keeps it (review19f R3). Costs two stats when nothing is lost, none with ``restat``
        False (the caller has just called ``Revocations.current``, as ``advert`` has: an advert costs two in all)."""
        if self._restoring is not None or not self.restores.due(self.clock()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        lost = self.revocations.lost_synced(restat)
        if lost is not None:
            self._restoring = loop.create_task(self._restore(lost))

    async def _restore(self, lost: SignedList) -> None:
        ok = False
        try:
            staged = await asyncio.to_thread(self.revocations.restore_stage, lost)
            done = self.revocations.restore_commit(staged)
            # "not needed" (a newer list came in, or the file got it back, while it was written): no failure, so no
            # back-off; the write itself went through (review20a L2)
            ok = done != "failed"
            if done == "written":
                self.restored += 1
                await asyncio.shield(asyncio.to_thread(self.revocations.offer_persist, None))  # the folder's fsync
        except Exception as exc:  # a bug here must not end the task unseen
            log.warning("writing the revocation list in force again failed unexpectedly", exc_info=exc)
        finally:
            self.restores.done(ok, self.clock())
            self._restoring = None

    def members(self) -> dict[str, int]:
        """The stamp each current member last advertised (what /cluster shows): a member that died, left or was
        revoked is no longer listed, though its last advert is kept until MAX_TRACKED newer ones push it out."""
        return {n: a[0] for n, a in sorted(self.heard_from.items()) if self.member_url(n) is not None}

    def heard(self, member: str, advert: tuple[int, str] | None) -> None:
        """A SWIM message ``member`` sent itself (authenticated) advertised ``advert``: fetch when it is newer."""
        if advert is None:
            return
        url = self.member_url(member)
        if url is None:  # not a member (yet): a stranger's word is no reason to fetch
            return
        self.heard_from[member] = advert
        self.heard_from.move_to_end(member)
        while len(self.heard_from) > MAX_TRACKED:
            self.heard_from.popitem(last=False)
        try:
            self.revocations.current()
        except CardError:
            return  # ours is unusable: every member's answer is refused here until the operator mends it
        busy = self.plan.in_flight
        decision = self.plan.choose(member, advert, self.revocations.advert(), self.clock(), self._backers)
        if decision == PREEMPT and busy is not None:
            log.warning("gave up fetching the revocation list signed at %d from %s (%d member(s) advertise it) for "
                        "the one signed at %d that more do: %s and %d other member(s)", busy[1], busy[0],
                        self._backers(busy[1]), advert[0], member, self._backers(advert[0]) - 1)  # fmt: skip
            if self._task is not None:  # its end is counted "preempted"; its slot is the new fetch's already
                self._task.cancel()
                self._ending.add(self._task)  # (at most one per pre-emption, gone as it ends: stop waits for them)
                self._task.add_done_callback(self._ending.discard)
        if decision == CONFLICT:
            if (member, advert[0]) not in self._said:
                if len(self._said) >= SAID_MAX:
                    self._said.clear()
                self._said.add((member, advert[0]))
                log.error("%s holds a revocation list signed at %d like ours but naming other cards (digest %s): a "
                          "conflicting list, not taken; sign a new one with 'peerserve ca revoke'", member, advert[0],
                          advert[1])  # fmt: skip
            return
        if decision in (FETCH, PREEMPT):
            self._task = asyncio.get_running_loop().create_task(self._fetch(member, url, advert[0], self.plan.ticket))

    def _backers(self, stamp: int) -> int:
        """How many current members advertised ``stamp`` last (at most ``MAX_TRACKED`` looked at)."""
        return sum(1 for n, a in self.heard_from.items() if a[0] == stamp and self.member_url(n) is not None)

    async def _fetch(self, member: str, url: str, stamp: int, ticket: int) -> None:
        outcome, why = "failed", ""
        try:
            try:  # the whole fetch within its deadline, whatever the transport makes of each page's timeout
                pages = await aio.wait_for(self._download(member, url, stamp), self.timeout_s)
            except asyncio.TimeoutError:
                raise FetchError(f"no whole list within {self.timeout_s:g} s") from None
            except asyncio.CancelledError:
                if ticket != self.plan.ticket:
                    outcome = "preempted"
                raise
            if ticket == self.plan.ticket:
                self.plan.preemptible = False  # the list is checked and written from here: no pre-emption
            else:  # pre-empted as the last page came: the newer fetch has the slot
                outcome = "preempted"
                return
            # the list's text, its signature, order and digest and its write (fsynced) in a thread: the loop runs
            # SWIM (a whole list held it ~65 ms with the writes on it, longer on eMMC: review19a F6); only the commit,
            # the stamp comparison and the rename, on the loop; the record written in a thread again
            staged = await asyncio.to_thread(self._stage, pages, member)
            if isinstance(staged, str):
                outcome = staged
            else:
                outcome, record = self.revocations.offer_commit(staged, member)
                if outcome == "accepted":
                    # shielded: a stop while it waits in the executor's queue would drop the folder fsync and the
                    # stamp record (review19f R1)
                    await asyncio.shield(asyncio.to_thread(self.revocations.offer_persist, record))
        except (FetchError, ValueError, OSError) as exc:  # PeerCallError is a ValueError
            why = str(exc)
        except Exception as exc:  # a bug here must not end the task unseen
            why = f"{type(exc).__name__}: {exc}"
            log.warning("fetching the revocation list from %s failed unexpectedly", member, exc_info=exc)
        finally:  # cancelled too (stop): the slot is released, or this board would never fetch again (review19a F5)
            now = self.clock()
            self.plan.done(member, outcome == "accepted", now, ticket)
            self.outcomes[outcome] += 1
        if why:
            log.warning("could not fetch the revocation list signed at %d from %s: %s (asked again in %.0f s at the "
                        "earliest)", stamp, member, why[:300], self.plan.backoff(member, now))  # fmt: skip

    def _stage(self, pages: Pages, member: str) -> Staged | str:
        """In a thread: the list's text, checked (``Revocations.offer_check``) and written beside the synced file
        (``offer_stage``); the outcome when it is refused."""
        text = pages.text()
        checked = self.revocations.offer_check(text, member)
        return checked if isinstance(checked, str) else self.revocations.offer_stage(text, checked)

    async def _download(self, member: str, url: str, stamp: int) -> Pages:
        """The list signed at ``stamp`` from ``member``, page by page within ``timeout_s`` in all."""
        deadline = self.clock() + self.timeout_s
        pages = Pages(stamp)
        for _ in range(MAX_PAGES):
            left = min(PAGE_TIMEOUT_S, deadline - self.clock())
            if left <= 0:
                raise FetchError(f"no whole list within {self.timeout_s:g} s")
            offset = len(pages.revoked) if pages.revoked is not None else 0
            status, data = await self.peers.call(member, url, "GET", wire.ROUTE_REVOCATIONS,
                                                 {"stamp": stamp, "offset": offset},
                                                 timeout=httpx.Timeout(left, connect=min(left, 1.0)))  # fmt: skip
            if status != 200:
                said = data.get("error") if isinstance(data, dict) else None
                raise FetchError(f"HTTP {status}" + (f": {str(said)[:200]}" if said else ""))
            take_page(pages, data)
            if pages.complete:
                return pages
        raise FetchError(f"more than {MAX_PAGES} pages")

    async def stop(self) -> None:
        for task in (self._task, self._restoring, *self._ending):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
