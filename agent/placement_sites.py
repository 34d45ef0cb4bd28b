"""Streams and sites: which of the window's rows are one client, and which clients are one place.

Part of the leader's snapshot (agent/placement.py ``build_snapshot``), split out as the grouping it does over what
members logged. Every row is some member's word, so each step is bounded and fair between loggers:

* ``client_groups``: a (client, model) logged by several agents is one client where its loggers' rows agree within
  ``SAME_CLIENT_RTT_MS`` on every node (one request under the thesis objective), a row that agrees with none stays
  its logger's own (made-up RTTs under an honest client's id move nothing the honest logger reported);
* ``fair_streams``: at most ``MAX_STREAMS`` streams a round, each logger an equal share where they exceed it, the
  dropped streams' demand carried by the logger's kept ones (``carried_demand``);
* ``group_sites`` / ``group_logged_sites``: clients whose RTT vectors fall in the same ``SITE_RTT_MS`` buckets on
  every node are one site (a room of phones is one stream); past ``MAX_SITES`` each logger over its share widens
  its own buckets, so one member's made-up clients coarsen only its own sites.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

from agent.decisions import UNKNOWN_RTT_MS

if TYPE_CHECKING:
    from agent.placement import RequestRecord

# where this many loggers measured a node or reported a client's row, the figure or row is their lower median, one
# vote per logger: a share rule alone let a member logging 4x the busiest proxy's records leave its own slow figure
# the only one (review13d F2); used by the latency figures (agent/placement.py) and the client groups here
MEDIAN_LOGGERS = 3


SITE_RTT_MS = 2.0  # clients whose RTTs to every node fall in the same 2 ms bucket form one site


MAX_SITES = 256  # (site, model) streams; past it buckets widen (2,000 made-up sites: a 25 s solve)


# (logged_by, client, model) streams the queue objectives read a round, before sites merge them; past it each logger
# keeps its busiest up to an equal share (fair_streams): one member's made-up clients cost bounded CPU
MAX_STREAMS = 8192


# two loggers' newest rows of one (client, model) agreeing within this on every node are one client's (client_groups):
# one request under the thesis objective, one RTT row for the sites; SITE_RTT_MS, the bucket the queue objectives
# already take as one place. A row further from every other is its logger's own stream, as made-up RTTs are
SAME_CLIENT_RTT_MS = SITE_RTT_MS


# a row is compared with at most this many of its (client, model)'s groups, the busiest first: members logging one
# client id with rows that agree with none cost a comparison each, not one per group (256 made-up rows of one id:
# ~33,000 comparisons), and a row past them is a group of its own (a request more, as a made-up client id is)
MAX_GROUP_SEEDS = 16


StreamKey = tuple[str | None, str, str]  # (logged_by, client, model): a logger's rows shape only its own streams


def stream_counts(records: Iterable[RequestRecord]) -> dict[StreamKey, int]:
    """Records per (logged_by, client, model) stream (in the order of their first records)."""
    return Counter(map(operator.attrgetter("logged_by", "client", "model"), records))


Row = tuple[float, ...]  # a stream's RTT to each node, in the snapshot's node order


def client_groups(rows: Mapping[StreamKey, Row], counts: Mapping[StreamKey, int]) -> list[tuple[Row, list[StreamKey]]]:
    """Each (client, model)'s per-logger streams in groups whose rows agree: (the group's row, its streams), ...

    A client whose requests pass through several agents is in each one's log; it is one client, and the thesis
    objective gives it one request (two loggers made it two: two instances). But a member may log any client id
    with any RTTs, and whatever merges rows must not let it move what an honest logger reported (review13a F4).
    Rows agree where they differ by at most ``SAME_CLIENT_RTT_MS`` on every node: loggers are taken busiest first
    (most records in ``counts``, which holds every key of ``rows``; of equals, in ``rows``' order: build_snapshot's
    is by logger name) and each joins the first group whose first row its own agrees with, else
    starts one. A group's row is the per-node lower median of its rows where ``MEDIAN_LOGGERS`` or more loggers are
    in it (one vote each), else its busiest logger's. So made-up RTTs further than that from an honest logger's
    are a group of their own (as a made-up client is: the member's own demand), and the honest row is exactly
    as reported; rows that agree can move it by at most the agreement, as much as a row already varies between
    the client's measurements. Groups per (client, model) are at most its loggers; a row is compared with the first
    ``MAX_GROUP_SEEDS`` of them at most."""
    by_client: dict[tuple[str, str], list[StreamKey]] = {}
    for key in rows:
        by_client.setdefault(key[1:], []).append(key)
    out: list[tuple[Row, list[StreamKey]]] = []
    for keys in by_client.values():
        if len(keys) == 1:
            out.append((rows[keys[0]], keys))
            continue
        together = _all_agreeing(rows[max(keys, key=counts.__getitem__)], [rows[k] for k in keys])
        if together is not None:  # the usual: every row agrees with the busiest's, one group
            out.append((together, keys))
            continue
        groups: list[list[StreamKey]] = []
        for key in sorted(keys, key=counts.__getitem__, reverse=True):  # busiest first; of equals, in rows' order
            row = rows[key]
            home = next((g for g in groups[:MAX_GROUP_SEEDS] if _agree(rows[g[0]], row)), None)
            if home is None:
                groups.append([key])
            else:
                home.append(key)
        out.extend((_group_row([rows[k] for k in g]), g) for g in groups)
    return out


def _all_agreeing(seed: Row, rows: list[Row]) -> Row | None:
    """The one group's row where every one of ``rows`` agrees with ``seed`` (the busiest's, of equals the first), else
    None: ``client_groups``' greedy pass would make one group of them, in one pass over the nodes."""
    if rows.count(seed) == len(rows):  # one row reported through every agent (as a client does: it caches its RTTs)
        return seed
    columns = list(map(sorted, zip(*rows, strict=True)))  # per node, ascending: its lowest and highest agree
    if seed and (
        max(map(operator.sub, map(operator.itemgetter(-1), columns), seed)) > SAME_CLIENT_RTT_MS
        or max(map(operator.sub, seed, map(operator.itemgetter(0), columns))) > SAME_CLIENT_RTT_MS
    ):
        return None
    return tuple(map(operator.itemgetter((len(rows) - 1) // 2), columns)) if len(rows) >= MEDIAN_LOGGERS else seed


def rtt_row(rtts: Mapping[str, float], ids: Sequence[str]) -> Row:
    """A stream's RTTs in node order (UNKNOWN_RTT_MS where its rows named none; one C call where they named all)."""
    if len(rtts) == len(ids) > 1:  # its keys are among ids (the build fills them so): all of them
        return operator.itemgetter(*ids)(rtts)  # type: ignore[no-any-return]
    return tuple(rtts.get(n, UNKNOWN_RTT_MS) for n in ids)


def _agree(a: Row, b: Row) -> bool:
    """Two rows within ``SAME_CLIENT_RTT_MS`` of each other on every node."""
    return not a or max(map(abs, map(operator.sub, a, b))) <= SAME_CLIENT_RTT_MS


def _group_row(rows: Sequence[Row]) -> Row:
    """A group's row: the per-node lower median of three or more loggers' (one vote each), else the busiest's."""
    if len(rows) < MEDIAN_LOGGERS:
        return rows[0]
    return tuple(map(operator.itemgetter((len(rows) - 1) // 2), map(sorted, zip(*rows, strict=True))))


def carried_demand(counts: Mapping[StreamKey, int], chosen: Collection[StreamKey]) -> dict[StreamKey, float]:
    """The records each chosen stream stands for: its own, and those of its logger's streams of its model that were
    left out (``fair_streams``), shared in proportion to the chosen ones': no demand a logger reported is lost, it
    is placed where its busiest clients are."""
    if len(chosen) == len(counts):  # none left out: each its own (n * total / kept with total == kept: n exactly)
        return {key: float(n) for key, n in counts.items()}
    total: dict[tuple[str | None, str], int] = {}
    kept: dict[tuple[str | None, str], int] = {}
    for (logger, _, model), n in counts.items():
        total[(logger, model)] = total.get((logger, model), 0) + n
        if (logger, _, model) in chosen:
            kept[(logger, model)] = kept.get((logger, model), 0) + n
    return {key: n * total[(key[0], key[2])] / kept[(key[0], key[2])] for key, n in counts.items() if key in chosen}


def fair_streams(counts: Mapping[StreamKey, int], budget: int) -> set[StreamKey]:
    """The streams a round reads: all of them within ``budget``; past it, each logger's busiest (most records; of
    equals, by client and model) up to an equal share of the budget (water-filling: a logger with fewer keeps all),
    the busiest of each of its models first; ``carried_demand`` gives the ones left out's records to the kept.

    Each stream costs the build its RTT and execution rows and the site grouping a pass per bucket width: one
    member's 50,000 one-row made-up streams took 3.7 s of the worker's CPU a round (review13a), and its share now
    bounds what it can add; the other members' streams stay whole while they are within theirs."""
    if len(counts) <= budget:
        return set(counts)
    per_logger: dict[str | None, list[StreamKey]] = {}
    for key in counts:
        per_logger.setdefault(key[0], []).append(key)
    cap = fair_cap(sorted(map(len, per_logger.values())), budget)
    out: set[StreamKey] = set()
    for keys in per_logger.values():
        if len(keys) <= cap:
            out.update(keys)
            continue
        ranked = sorted(keys, key=lambda k: (-counts[k], k[1], k[2]))
        firsts: dict[str, StreamKey] = {}  # each model's busiest first: a model it reported keeps a stream
        for k in ranked:
            firsts.setdefault(k[2], k)
        picked = list(firsts.values())[:cap]
        out.update(picked)
        chosen = set(picked)
        out.update([k for k in ranked if k not in chosen][: cap - len(picked)])
    return out


def fair_cap(lengths: list[int], total: int) -> int:
    """The largest per-node cap L (water-filling) with sum(min(length, L)) <= ``total``; ``lengths`` ascending (of
    records or of bytes, of streams or of sites)."""
    left = total
    for i, length in enumerate(lengths):
        share = left // (len(lengths) - i)
        if length > share:
            return share
        left -= length
    return lengths[-1] if lengths else total


def group_sites(
    streams: Sequence[Mapping[str, Any]], counts: Mapping[tuple[str, str], float], window_s: float
) -> list[dict[str, Any]]:
    """One logger's per-client streams as (site, model) streams (``group_logged_sites`` of that logger alone)."""
    return group_logged_sites({None: (streams, counts)}, window_s)


def group_logged_sites(
    logged: Mapping[str | None, tuple[Sequence[Mapping[str, Any]], Mapping[tuple[str, str], float]]], window_s: float
) -> list[dict[str, Any]]:
    """Merge per-client streams into (site, model) streams with a rate in requests/s over the window.

    ``logged``: per logger, its streams and their records per (client, model). A site is the clients whose RTT to
    every node rounds to the same bucket; its RTT and execution rows are the members' means, its ``client`` names
    the first member and the count. Buckets start ``SITE_RTT_MS`` wide and sites of equal width and bucket merge
    across loggers (a room of phones logged by two agents is one site). Past ``MAX_SITES`` sites, the loggers
    holding more than an equal share of them widen their buckets (2, 4, 8 ... ms), all of them a step at a time,
    until the sites fit (``_widths``): one member's made-up clients with random RTTs coarsen only its own sites,
    where one global width merged every client, honest ones too, into one site per model (review13a). One stream
    (the same object) held by several loggers, as ``build_snapshot`` gives a client's agreeing rows, is bucketed once
    per width and is one member of a site, with the records of every logger that holds it there.
    """
    distinct: dict[int, int] = {}  # id(stream) -> its place in ``streams``: a stream several loggers hold is one
    streams: list[Mapping[str, Any]] = []
    held: dict[str | None, tuple[list[int], list[float]]] = {}
    for logger, (mine, counts) in logged.items():
        places, weights = held[logger] = ([], [])
        for s in mine:
            i = distinct.get(id(s))
            if i is None:
                i = distinct[id(s)] = len(streams)
                streams.append(s)
            places.append(i)
            weights.append(counts.get((s["client"], s["model"]), 0))
    return site_requests(streams, held, window_s)


def site_requests(
    streams: Sequence[Mapping[str, Any]],
    held: Mapping[str | None, tuple[Sequence[int], Sequence[float]]],
    window_s: float,
) -> list[dict[str, Any]]:
    """``group_logged_sites`` of ``streams`` as each logger holds them: its streams' places there and their records."""
    keys = _SiteKeys(streams)
    merged: dict[tuple[int, tuple[Any, ...]], dict[int, float]] = {}  # (exponent, bucket) -> stream -> its records
    for logger, exponent in _widths({g: places for g, (places, _) in held.items()}, keys).items():
        places, weights = held[logger]
        at = keys.at(places, exponent)
        for i, n in zip(places, weights, strict=True):
            members = merged.setdefault((exponent, at[i]), {})  # type: ignore[arg-type]
            members[i] = members.get(i, 0) + n
    return [_site(streams, members, window_s) for members in merged.values()]


def _site(streams: Sequence[Mapping[str, Any]], members: Mapping[int, float], window_s: float) -> dict[str, Any]:
    """One site's stream: its members' mean RTT and execution rows (a mean per node: fsum / count, as fmean)."""
    first = streams[next(iter(members))]
    nodes = list(first["rtt_ms"])
    rows = [streams[i] for i in members]
    out = {"model": first["model"], "client": f"site:{first['client']}+{len(rows) - 1}"}
    for field_name in ("rtt_ms", "exec_ms"):
        columns = zip(*([m[field_name][n] for n in nodes] for m in rows), strict=True) if nodes else iter(())
        out[field_name] = {n: math.fsum(c) / len(rows) for n, c in zip(nodes, columns, strict=True)}
    out["rate"] = sum(members.values()) / window_s
    return out


MAX_WIDENINGS = 29  # SITE_RTT_MS x 2**29 > 1e9 ms: every stream of a model in one bucket


_Sites = dict[tuple[Any, ...], None]  # a logger's sites: their buckets, in the order its streams first hold them


class _SiteKeys:
    """Each stream's bucket at each width, computed once whichever loggers hold the stream (a client logged by ten
    agents is bucketed once per width, not ten times); a logger's sites are then its streams' buckets, looked up."""

    def __init__(self, streams: Sequence[Mapping[str, Any]]) -> None:
        self.models = [s["model"] for s in streams]
        self.rows = [[v for _, v in sorted(s["rtt_ms"].items())] for s in streams]
        self.keys: dict[int, list[tuple[Any, ...] | None]] = {}

    def at(self, held: Sequence[int], exponent: int) -> list[tuple[Any, ...] | None]:
        """Every stream's bucket at width SITE_RTT_MS x 2**exponent where computed, ``held``'s among them."""
        keys = self.keys.get(exponent)
        if keys is None:
            keys = self.keys[exponent] = [None] * len(self.rows)
        width = SITE_RTT_MS * 2**exponent
        for i in [i for i in held if keys[i] is None]:
            keys[i] = (self.models[i], *map(round, map(operator.truediv, self.rows[i], repeat(width))))
        return keys

    def sites(self, held: Sequence[int], exponent: int) -> _Sites:
        """The sites ``held`` streams make at width SITE_RTT_MS x 2**exponent."""
        return dict.fromkeys(map(self.at(held, exponent).__getitem__, held))  # type: ignore[arg-type]


def _widths(rows: Mapping[str | None, Sequence[int]], keys: _SiteKeys) -> dict[str | None, int]:
    """Per logger, its bucket width's exponent (width SITE_RTT_MS x 2**exponent).

    A site held by h loggers (same width, same bucket) costs each of them 1/h, so the costs add up to the sites
    there are. While there are more than ``MAX_SITES``, every logger whose cost is over the water level
    (``fair_level``: the equal share of MAX_SITES the others leave) widens one step; loggers that share sites
    widen together and keep sharing them, and a logger under the level keeps its sites as they are. A member's
    made-up sites are its alone: a logger that shares none goes straight to the finest width at which it holds no
    more than the level (``_fit``: bisection, ~5 passes over its streams, at most its share of MAX_STREAMS; one
    step per pass took 3.7 s for 50,000 made-up streams). Past the last width the sites left are one per model
    and logger."""
    exponent = dict.fromkeys(rows, 0)
    sites = {logger: keys.sites(r, 0) for logger, r in rows.items()}
    while True:
        held: Counter[tuple[int, tuple[Any, ...]]] = Counter()  # (width, bucket) -> loggers holding that site
        for logger, mine in sites.items():
            held.update(zip(repeat(exponent[logger]), mine))
        if len(held) <= MAX_SITES:
            break
        cost = {
            logger: sum(map(operator.truediv, repeat(1), map(held.__getitem__, zip(repeat(exponent[logger]), mine))))
            for logger, mine in sites.items()
        }
        level = fair_level(sorted(cost.values()), float(MAX_SITES))
        over = [g for g, c in cost.items() if c > level and exponent[g] < MAX_WIDENINGS]
        if not over:
            break
        for logger in over:
            if cost[logger] == len(sites[logger]):  # none of its sites shared: straight to its fit, by bisection
                exponent[logger], sites[logger] = _fit(rows[logger], keys, exponent[logger], int(level))
            else:  # widen with those it shares sites with, a step at a time
                exponent[logger] += 1
                sites[logger] = keys.sites(rows[logger], exponent[logger])
    return exponent


def _fit(rows: Sequence[int], keys: _SiteKeys, exponent: int, cap: int) -> tuple[int, _Sites]:
    """The smallest exponent past ``exponent`` found by bisection at which ``rows`` make at most ``cap`` sites (the
    largest, MAX_WIDENINGS, if none), and those sites: ~5 passes over the rows, not one per step."""
    lo, hi = exponent, MAX_WIDENINGS  # too many sites at lo; at hi as few as widening can make
    best = keys.sites(rows, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        at_mid = keys.sites(rows, mid)
        if len(at_mid) <= cap:
            hi, best = mid, at_mid
        else:
            lo = mid
    return hi, best


def fair_level(costs: list[float], total: float) -> float:
    """The water level L with sum(min(cost, L)) = ``total`` (``costs`` ascending); the largest cost if all fit."""
    left = total
    for i, c in enumerate(costs):
        share = left / (len(costs) - i)
        if c > share:
            return share
        left -= c
    return costs[-1] if costs else total
