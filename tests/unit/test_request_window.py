"""The leader's request window (agent/request_window.py): age, count and byte bounds, junk stamps, fairness between
nodes."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from agent.catalogue import builtin_catalogue_text, parse_catalogue
from agent.packed_records import MAX_ROW_BYTES, pack_record, row_client
from agent.placement import NodeReport, RequestRecord, build_snapshot
from agent.request_window import (
    CLIENT_OVERHEAD,
    ROW_OVERHEAD,
    RequestWindow,
    client_cost,
    fair_cap,
    held_bytes,
    node_bytes,
    view_bytes,
)
from bench.window_memory_bench import maximal_record


def rec(ts: float, client: str = "c") -> RequestRecord:
    return RequestRecord(ts, "m", client, {"a": 1.0}, "a", 2.0, 200)


def test_implausible_stamps_take_no_room_on_arrival() -> None:
    w = RequestWindow(max_records=3, window_s=10.0, max_ahead_s=60.0)
    junk = [rec(float("nan")), rec(1e12), rec(float("inf")), rec(-1.0), rec(89.0)]
    assert w.add("liar", junk, now=100.0) == 0 and len(w) == 0
    assert w.add("a", [rec(95.0), rec(99.0), rec(159.0)], now=100.0) == 3
    assert [r.ts for r in w.records()] == [95.0, 99.0, 159.0] and {r.logged_by for r in w.records()} == {"a"}


def test_a_flooding_node_cannot_push_the_others_records_out() -> None:
    w = RequestWindow(max_records=100, window_s=600.0, max_ahead_s=60.0)
    w.add("a", [rec(90.0 + i / 100, "ca") for i in range(30)], now=100.0)
    w.add("b", [rec(90.0 + i / 100, "cb") for i in range(10)], now=100.0)
    for _ in range(20):  # the flood: page after page
        w.add("flood", [rec(99.0, "x")] * 5000, now=100.0)
    by_node = {n: sum(r.logged_by == n for r in w.records()) for n in ("a", "b", "flood")}
    assert by_node == {"a": 30, "b": 10, "flood": 60} and len(w) == 100  # the flood keeps the rest of the room


def test_past_the_bound_the_largest_lose_their_oldest_down_to_an_equal_share() -> None:
    w = RequestWindow(max_records=9, window_s=600.0, max_ahead_s=60.0)
    w.add("a", [rec(float(t)) for t in range(10)], now=100.0)
    assert [r.ts for r in w.records()] == [float(t) for t in range(1, 10)]  # alone: the newest nine
    w.add("b", [rec(50.0), rec(51.0)], now=100.0)
    assert [r.ts for r in w.records() if r.logged_by == "a"] == [float(t) for t in range(3, 10)]
    assert len(w) == 9


def test_expiry_drops_what_the_clock_moved_past() -> None:
    w = RequestWindow(max_records=10, window_s=10.0, max_ahead_s=60.0)
    w.add("a", [rec(95.0), rec(99.0)], now=100.0)
    w.add("b", [rec(96.0)], now=100.0)
    w.expire(now=106.5)
    assert [r.ts for r in w.records()] == [99.0] and len(w) == 1
    w.expire(now=200.0)
    assert w.records() == () and len(w) == 0


@given(st.lists(st.integers(0, 500), max_size=12), st.integers(0, 2000))
def test_the_fair_cap_is_the_largest_that_fits(lengths: list[int], total: int) -> None:
    lengths.sort()
    cap = fair_cap(lengths, total)
    assert sum(min(n, cap) for n in lengths) <= total
    if lengths and cap < lengths[-1]:
        assert sum(min(n, cap + 1) for n in lengths) > total  # one more each would not fit


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 300)), max_size=40), st.integers(1, 200))
def test_the_window_never_holds_more_than_its_bound(pages: list[tuple[str, int]], bound: int) -> None:
    w = RequestWindow(max_records=bound, window_s=600.0, max_ahead_s=60.0)
    for node, n in pages:
        w.add(node, [rec(99.0)] * n, now=100.0)
        assert len(w) == len(w.records()) <= bound


def test_more_logging_nodes_than_records_still_fill_the_window() -> None:
    w = RequestWindow(max_records=10, window_s=600.0, max_ahead_s=60.0)
    for i in range(20):
        w.add(f"n{i}", [rec(99.0)], now=100.0)
        assert len(w) == len(w.records()) == min(i + 1, 10)


def maximal(ts: float) -> RequestRecord:
    """A record whose row packs to just under the row limit (the widest a peer's request page may carry)."""
    return maximal_record(ts, "m")


def test_a_flood_of_maximal_rows_keeps_the_bytes_within_the_budget_and_the_others_records() -> None:
    budget = 1 << 20
    w = RequestWindow(max_records=50_000, window_s=600.0, max_ahead_s=60.0, max_bytes=budget)
    w.add("a", [rec(90.0 + i / 100, "ca") for i in range(300)], now=100.0)
    w.add("b", [rec(90.0 + i / 100, "cb") for i in range(100)], now=100.0)
    small = w.nbytes
    assert len(pack_record(maximal(99.0))) >= 0.95 * MAX_ROW_BYTES
    for page in range(400):  # the flood: ~3 MiB of rows a node's share of 1 MiB can hold a third of
        assert w.add("flood", [maximal(95.0 + page / 100)] * 25, now=100.0) == 25
        assert w.nbytes <= budget and len(w) <= 50_000
    by_node = {n: sum(r.logged_by == n for r in w.records()) for n in ("a", "b", "flood")}
    assert by_node["a"] == 300 and by_node["b"] == 100  # within their share: every record kept
    assert w.bytes_of("a") + w.bytes_of("b") == small
    assert budget - MAX_ROW_BYTES - ROW_OVERHEAD < w.nbytes <= budget  # the flood keeps the rest of the room
    assert [r.ts for r in w.records() if r.logged_by == "flood"][-1] == 95.0 + 399 / 100  # its newest, not oldest
    assert w.nbytes == view_bytes(w.records())


def test_two_floods_share_the_bytes_equally_and_a_third_node_keeps_its_records() -> None:
    budget = 400_000
    w = RequestWindow(max_records=50_000, window_s=600.0, max_ahead_s=60.0, max_bytes=budget)
    w.add("quiet", [rec(99.0)] * 50, now=100.0)
    for _ in range(40):
        w.add("x", [maximal(99.0)] * 10, now=100.0)
        w.add("y", [maximal(99.0), rec(99.0)] * 10, now=100.0)
    quiet = sum(r.logged_by == "quiet" for r in w.records())
    assert quiet == 50 and w.nbytes <= budget
    share = (budget - w.bytes_of("quiet")) / 2
    row = MAX_ROW_BYTES + ROW_OVERHEAD + client_cost(maximal(99.0).client)  # the most one row's cut takes
    for node in ("x", "y"):  # each down to its half of the rest, within a row of it (whole rows: the other's rest)
        assert share - row < w.bytes_of(node) <= share + row
    y = Counter(r.client for r in w.records() if r.logged_by == "y")
    assert y["c"] == 400  # y cut its widest client: every small row kept


@given(
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 40), st.integers(0, 3000)), max_size=30),
    st.integers(1, 120),
    st.integers(0, 60_000),
)
def test_the_window_holds_both_bounds_and_a_node_within_its_shares_keeps_all(
    pages: list[tuple[str, int, int]], bound: int, budget: int
) -> None:
    """Any pages of records of any width (one client's id padded): both bounds hold after every page, the byte count
    is the rows' own, and a node whose records fit an equal share of both bounds among the nodes loses none."""
    w = RequestWindow(max_records=bound, window_s=600.0, max_ahead_s=60.0, max_bytes=budget)
    offered: dict[str, dict[str, list[bytes]]] = {}
    for node, n, width in pages:
        page = [rec(99.0, "c" * (1 + width))] * n
        w.add(node, page, now=100.0)
        if page:
            offered.setdefault(node, {}).setdefault(page[0].client, []).extend(pack_record(r) for r in page)
        assert len(w) == len(w.records()) <= bound and w.nbytes <= budget
        assert w.nbytes == sum(w.bytes_of(n) for n in offered)
        assert w.nbytes == view_bytes(w.records())
    k = len(offered)
    for node, clients in offered.items():
        held = sum(map(len, clients.values()))
        if held <= bound // k and node_bytes(clients) <= budget // k:
            assert sum(r.logged_by == node for r in w.records()) == held


def test_expiry_and_a_loaded_copy_count_the_bytes_again() -> None:
    w = RequestWindow(max_records=100, window_s=10.0, max_ahead_s=60.0, max_bytes=100_000)
    w.add("a", [rec(91.0), maximal(95.0), rec(99.0)], now=100.0)
    w.add("b", [maximal(92.0)], now=100.0)
    w.expire(now=102.5)  # 91 and 92 go: b's maximal row with them
    kept = {maximal(95.0).client: [pack_record(maximal(95.0))], "c": [pack_record(rec(99.0))]}
    assert w.nbytes == w.bytes_of("a") == node_bytes(kept)
    assert w.bytes_of("b") == 0 and len(w) == 2
    small = RequestWindow(max_records=100, window_s=10.0, max_ahead_s=60.0, max_bytes=10_000)
    small.load_rows([("a", [pack_record(maximal(95.0))] * 3), ("b", [pack_record(rec(99.0))] * 3)])
    assert small.nbytes <= 10_000 and len(small) == 4  # a copy holds its own bounds: b's rows kept, a's newest
    assert [r.logged_by for r in small.records()] == ["a", "b", "b", "b"]


def streams(w: RequestWindow) -> set[str]:
    """The clients whose streams the round's snapshot holds, built from the window's records."""
    catalogue = parse_catalogue(builtin_catalogue_text(), "test")
    model = next(iter(catalogue.models))
    nodes = [NodeReport(n, 2000.0, 4000.0, 100.0, "default", {model: 1}, cores=4.0) for n in ("a", "b")]
    records = [replace(r, model=model) for r in w.records()]
    return {s["client"] for s in build_snapshot(nodes, records, catalogue, 100.0, "least-loaded")["requests"]}


def test_one_clients_flood_through_a_node_cannot_push_that_nodes_other_clients_out() -> None:
    """The node's share holds: past it, the client holding the most rows loses its oldest first, so one client's
    flood (newer than everything else) costs its own rows and the placement still sees the other clients."""
    w = RequestWindow(max_records=100, window_s=600.0, max_ahead_s=60.0)
    w.add("a", [rec(90.0 + i / 100, "victim") for i in range(30)], now=100.0)
    w.add("b", [rec(90.0 + i / 100, "cb") for i in range(10)], now=100.0)
    for _ in range(20):
        w.add("a", [rec(99.0, "flood")] * 5000, now=100.0)
    assert Counter(r.client for r in w.records()) == {"victim": 30, "cb": 10, "flood": 60}
    assert streams(w) == {"victim", "cb", "flood"}


def holdings(w: RequestWindow, by_bytes: bool) -> dict[tuple[str, str], int]:
    """(node, client) -> its rows in the window (or their bytes with its client cost)."""
    out: dict[tuple[str, str], int] = {}
    for node, rows in w.records().groups:
        client = row_client(rows[0])
        assert node is not None and (node, client) not in out  # one group a node's client
        out[(node, client)] = held_bytes(rows) + client_cost(client) if by_bytes else len(rows)
    return out


PAGES = st.lists(
    st.tuples(
        st.sampled_from("ab"), st.sampled_from(["c0", "c1", "c2", "c3", "c4"]), st.integers(1, 60), st.integers(0, 2000)
    ),
    max_size=25,
)


@given(PAGES, st.integers(1, 150), st.booleans())
def test_a_client_loses_rows_only_down_to_the_level_of_its_nodes_largest(
    pages: list[tuple[str, str, int, int]], bound: int, by_bytes: bool
) -> None:
    """Whatever the pages, a client of a node that loses rows in a cut holds, after it, at least what any other
    client of that node holds, less one row (and its own cost, when the cut took its last): no client is cut while
    another of its node holds more, so one client cannot push another out to take its place."""
    if by_bytes:  # the byte budget binds, the count does not
        w = RequestWindow(max_records=10**6, window_s=600.0, max_ahead_s=60.0, max_bytes=bound * 1000)
    else:
        w = RequestWindow(max_records=bound, window_s=600.0, max_ahead_s=60.0, max_bytes=10**9)
    slack = MAX_ROW_BYTES + ROW_OVERHEAD + client_cost("c0" + "x" * 2000) if by_bytes else 1
    for t, (node, client, n, pad) in enumerate(pages):
        before = holdings(w, by_bytes)
        w.add(node, [rec(90.0 + t / 100, client + "x" * pad)] * n, now=100.0)
        after = holdings(w, by_bytes)
        assert (len(w) <= bound) if not by_bytes else (w.nbytes <= bound * 1000)
        kept_sizes: dict[str, dict[str, int]] = {}  # the sizes the cut orders clients by, kept as rows come and go
        for (n_, c_), b_ in holdings(w, by_bytes=True).items():
            kept_sizes.setdefault(n_, {})[c_] = b_
        assert w._client_bytes == kept_sizes
        for (cut_node, cut), held in before.items():
            kept = after.get((cut_node, cut), 0)
            if kept < held:
                most = max((h for (n_, _), h in after.items() if n_ == cut_node), default=0)
                assert most <= kept + slack


def test_a_members_made_up_clients_thin_only_its_own_share() -> None:
    """A member that reports records for thousands of made-up clients holds at most its node's share; the other
    node's clients keep every record, and each made-up client's cost (its list and id) counts in the budget."""
    budget = 1 << 20
    w = RequestWindow(max_records=50_000, window_s=600.0, max_ahead_s=60.0, max_bytes=budget)
    w.add("b", [rec(90.0 + i / 100, f"c{i % 7}") for i in range(700)], now=100.0)
    honest = w.nbytes
    for page in range(40):
        w.add("liar", [rec(99.0, f"made-up-{page}-{j}") for j in range(500)], now=100.0)
        assert w.nbytes == view_bytes(w.records()) <= budget
    assert Counter(r.client for r in w.records() if r.logged_by == "b") == {f"c{i}": 100 for i in range(7)}
    assert w.bytes_of("b") == honest and w.bytes_of("liar") <= budget - honest
    made_up = sum(r.logged_by == "liar" for r in w.records())
    assert made_up * (len(pack_record(rec(99.0, "made-up-0-0"))) + ROW_OVERHEAD + CLIENT_OVERHEAD) <= budget
    kept = [r.client for r in w.records() if r.logged_by == "liar"]
    assert 0 < len(kept) == len(set(kept))  # one row each: the cut took the widest made-up clients' rows


@given(PAGES, st.integers(1, 150), st.integers(0, 60_000))
def test_expiry_and_cuts_keep_the_clients_sizes_the_cut_orders_by(
    pages: list[tuple[str, str, int, int]], bound: int, budget: int
) -> None:
    """Pages of several stamps, an expiry after every few: the per-client sizes the cut orders clients by stay the
    rows' own, and the bounds hold."""
    w = RequestWindow(max_records=bound, window_s=10.0, max_ahead_s=60.0, max_bytes=budget)
    for t, (node, client, n, pad) in enumerate(pages):
        w.add(node, [rec(90.0 + t + i % 3, client + "x" * pad) for i in range(n)], now=100.0 + t)
        if t % 3 == 2:
            w.expire(now=100.0 + t)
        sizes: dict[str, dict[str, int]] = {}
        for (n_, c_), b_ in holdings(w, by_bytes=True).items():
            sizes.setdefault(n_, {})[c_] = b_
        assert w._client_bytes == sizes and w.nbytes == view_bytes(w.records()) <= budget and len(w) <= bound
