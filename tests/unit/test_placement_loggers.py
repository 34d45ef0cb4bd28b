"""One member's request log shapes only its own word in the leader's snapshot (review13a F3, F4 and its side note):
it cannot frame another node as slow, rewrite another member's clients' RTTs, or spend the round's stream budget
and the other members' site locality on made-up clients (agent/placement.py)."""

from __future__ import annotations

import functools
import random
import statistics
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.catalogue import builtin_catalogue_text, parse_catalogue
from agent.placement import (
    MAX_STREAMS,
    MAX_THESIS_STREAMS,
    MIN_LATENCY_SAMPLES,
    NodeReport,
    RequestRecord,
    StreamKey,
    build_snapshot,
    fair_streams,
    latency_figures,
)
from agent.placement_sites import MAX_SITES, SITE_RTT_MS, group_logged_sites
from solver import Snapshot
from solver.api import solve

CAT = parse_catalogue(builtin_catalogue_text(), "t")
NOW, M, WINDOW_S = 10_000.0, "digits", 600.0


def nodes(b_runs: bool = False) -> list[NodeReport]:
    """a runs one digits instance on 1 core (its site needs help); b and the lying member m have 2 cores each."""
    return [
        NodeReport("a", 3000, 4000, 100, "default", {M: 1}, ready={M: 1}, cores=1.0),
        NodeReport("b", 3000, 4000, 100, "default", {M: 1} if b_runs else {}, cores=2.0),
        NodeReport("m", 3000, 4000, 100, "default", {}, cores=2.0),
    ]


def honest(b_served: bool = False) -> list[RequestRecord]:
    """40 clients at a's site, 1 req/s each over the window, logged by a; served by a in 20 ms (by b in 25 ms
    every fourth one where ``b_served``: a's proxy forwarded it, and only a logged it)."""
    out = []
    for c in range(40):
        for k in range(600):
            to_b = b_served and k % 4 == 0
            node, ms = ("b", 25.0) if to_b else ("a", 20.0)
            out.append(RequestRecord(NOW - 600 + k, M, f"c{c}@10.0.0.{c}", {"a": 1.0, "b": 4.0, "m": 8.0}, node, ms,
                                     200, "a"))  # fmt: skip
    return out


def frame(target: str, latency_ms: float, n: int = MIN_LATENCY_SAMPLES) -> list[RequestRecord]:
    """m's log: ``n`` requests it says ``target`` served in ``latency_ms``."""
    return [RequestRecord(NOW - 1 - i, M, "x@10.9.9.9", {"a": 50.0, "b": 50.0, "m": 50.0}, target, latency_ms, 200, "m")
            for i in range(n)]  # fmt: skip


def snap(records: list[RequestRecord], objective: str = "queue-p99", b_runs: bool = False) -> dict[str, Any]:
    return build_snapshot(nodes(b_runs), records, CAT, NOW, objective=objective, window_s=WINDOW_S)


def throughput(s: dict[str, Any]) -> dict[str, float]:
    return dict(next(m for m in s["models"] if m["name"] == M)["throughput_rps"])


def exec_of(s: dict[str, Any], client_prefix: str = "site:c") -> dict[str, float]:
    return dict(next(r for r in s["requests"] if r["client"].startswith(client_prefix))["exec_ms"])


@pytest.mark.parametrize("objective", ["queue-p99", "thesis"])
def test_a_members_records_cannot_price_an_honest_node_out(objective: str) -> None:
    """review13a F3: five records logged by m, "b served digits in 120 s", made b 50 -> 0.008 rps and m (same
    class, unmeasured) 0.017, and the plan lost b's instance (objective 35.8 -> 101.1 ms). b runs no digits: no
    other node can have measured it, so m's figures are not taken; the plan is the honest one."""
    clean = snap(honest(), objective)
    framed = snap(honest() + frame("b", 120_000.0), objective)
    first = "site:c" if objective != "thesis" else "c0@"
    assert exec_of(framed, first) == exec_of(clean, first)
    if objective == "thesis":
        return
    assert throughput(framed) == throughput(clean) == {"a": 50.0, "b": 50.0, "m": 50.0}
    plans = [solve(Snapshot.from_dict(s), method="ipopt", mode="1").to_dict()["instances"] for s in (clean, framed)]
    assert plans[0] == plans[1] and plans[1]["b"] == {M: 1}


def test_where_an_honest_logger_measured_the_node_a_liar_can_only_make_it_look_faster() -> None:
    """b runs digits and a's proxy measured it (25 ms, 3,600 records): m's 120 s records are the slower figure,
    not taken; m's 0.1 ms records are the lower one, taken only where m holds LOGGER_SHARE of the busiest other
    logger's samples (500 against 3,600 are not: review13c F3), and b's throughput stays within the catalogue's
    declared figure."""
    base = snap(honest(b_served=True), b_runs=True)
    assert exec_of(base)["b"] == 25.0 and throughput(base)["b"] == pytest.approx(40.0)
    slow = snap(honest(b_served=True) + frame("b", 120_000.0, 2000), b_runs=True)
    assert exec_of(slow)["b"] == 25.0 and throughput(slow)["b"] == pytest.approx(40.0)
    small = snap(honest(b_served=True) + frame("b", 0.1, 500), b_runs=True)
    assert exec_of(small)["b"] == 25.0 and throughput(small)["b"] == pytest.approx(40.0)
    fast = snap(honest(b_served=True) + frame("b", 0.1, 2000), b_runs=True)
    declared = CAT.models[M].expected_throughput_rps("default")
    assert exec_of(fast)["b"] == 0.1 and throughput(fast)["b"] == declared < 1000 / 0.1  # the declared caps it


def test_a_nodes_own_log_is_its_figure_where_it_holds_enough() -> None:
    """b logged 10 requests it served itself at 30 ms; a's proxy saw it at 25 ms and m says 1 ms: b's own word
    stands (it can only price itself); with fewer than MIN_LATENCY_SAMPLES of its own, the lowest other that holds
    LOGGER_SHARE of the busiest other logger's samples (m's 50 do not, its 2,000 do)."""
    own = [RequestRecord(NOW - 5 - i, M, "p@10.0.1.1", {"b": 1.0}, "b", 30.0, 200, "b") for i in range(10)]
    s = snap(honest(b_served=True) + own + frame("b", 1.0, 2000), b_runs=True)
    assert exec_of(s)["b"] == 30.0
    few = own[: MIN_LATENCY_SAMPLES - 1]
    assert exec_of(snap(honest(b_served=True) + few + frame("b", 1.0, 2000), b_runs=True))["b"] == 1.0
    assert exec_of(snap(honest(b_served=True) + few + frame("b", 1.0, 50), b_runs=True))["b"] == 25.0
    assert exec_of(snap(honest(b_served=True) + few, b_runs=True))["b"] == 25.0


def test_a_member_cannot_scale_the_class_through_its_own_made_up_figures() -> None:
    """class_scale reads the same figures: m's log of 120 s for a (which a's own log measured at 20 ms) leaves
    a at 20 ms, and so b and m (same class, unmeasured) at 20x the catalogue's 1 ms, as without m's records."""
    clean = snap(honest())
    framed = snap(honest() + frame("a", 120_000.0, 5000))
    assert exec_of(framed) == exec_of(clean) == {"a": 20.0, "b": 20.0, "m": 20.0}


def test_one_logger_with_too_few_records_is_not_pooled_with_another() -> None:
    """Per logger: 3 + 3 records of b by two loggers are not a measurement (fewer than MIN_LATENCY_SAMPLES
    each), where pooled they were: b stays at its catalogue figure scaled like its class."""
    assert MIN_LATENCY_SAMPLES > 3
    recs = [RequestRecord(NOW - i, M, "q@10.0.2.2", {"b": 1.0}, "b", 500.0, 200, by) for by in "am" for i in range(3)]
    assert exec_of(snap(honest() + recs, b_runs=True))["b"] == exec_of(snap(honest(), b_runs=True))["b"] == 20.0


@functools.cache
def _honest_and_clean(b_runs: bool) -> tuple[list[RequestRecord], dict[str, Any]]:
    """The honest log and its snapshot, made once per ``b_runs`` for the property's 60 examples (not changed by
    them: each example adds its lies to a new list)."""
    records = honest(b_served=b_runs)
    return records, snap(records, b_runs=b_runs)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "m"]), st.sampled_from([0.1, 5.0, 20.0, 400.0, 120_000.0])),
        max_size=40,
    ),
    st.booleans(),
)
def test_whatever_a_member_logs_of_others_no_node_looks_slower(lies: list[tuple[str, float]], b_runs: bool) -> None:
    """Any records m logs of any node (b measured by a's proxy where it runs digits): every node's execution time
    is at most, and its throughput at least, what they are without m's records."""
    records, clean = _honest_and_clean(b_runs)
    lied = records + [
        RequestRecord(NOW - i, M, f"x{i}@10.9.9.9", {"m": 1.0}, node, ms, 200, "m")
        for i, (node, ms) in enumerate(lies * MIN_LATENCY_SAMPLES)
    ]
    s = snap(lied, b_runs=b_runs)
    for n in "ab":  # m's own figures are its own word
        assert exec_of(s)[n] <= exec_of(clean)[n]
        assert throughput(s)[n] >= throughput(clean)[n]


def test_a_member_cannot_rewrite_another_members_clients_rtts() -> None:
    """review13a F4: m logs one row per honest client under the client's own name, stamped 59 s ahead (the
    window keeps rows up to 60 s ahead), with RTT 60 s to a and b and 0 to m: the newest row set every client's
    RTTs and the plan moved b's instance to m. Streams are (logged_by, client, model): a's clients keep a's
    RTTs, the rows make m's own streams (its made-up demand), and a row ahead of now is no newer than now."""
    steal = [RequestRecord(NOW + 59, M, f"c{c}@10.0.0.{c}", {"a": 60_000.0, "b": 60_000.0, "m": 0.0}, None, None,
                           200, "m") for c in range(40)]  # fmt: skip
    s = snap(honest() + steal)
    rows = sorted(((r["rtt_ms"], r["rate"]) for r in s["requests"]), key=lambda row: -row[1])
    assert rows == [({"a": 1.0, "b": 4.0, "m": 8.0}, pytest.approx(40.0)),
                    ({"a": 60_000.0, "b": 60_000.0, "m": 0.0}, pytest.approx(40 / WINDOW_S))]  # fmt: skip
    thesis = build_snapshot(nodes(), honest() + steal, CAT, NOW, objective="thesis")
    by_client: dict[str, list[dict[str, float]]] = {}
    for r in thesis["requests"]:
        by_client.setdefault(r["client"], []).append(r["rtt_ms"])
    assert all(sorted(v, key=lambda x: x["a"]) == [{"a": 1.0, "b": 4.0, "m": 8.0}, {"a": 60_000.0, "b": 60_000.0,
               "m": 0.0}] for v in by_client.values())  # fmt: skip
    assert len(by_client) == 40


def test_one_logger_ahead_of_now_cannot_outrank_its_own_current_rows() -> None:
    """Within a logger's streams too, ordering by min(stamp, now): a row stamped 59 s ahead and then a row of
    now (later in the log): the row of now is the newest."""
    ahead = RequestRecord(NOW + 59, M, "c@10.0.0.1", {"a": 9.0}, None, None, 200, "a")
    current = RequestRecord(NOW, M, "c@10.0.0.1", {"a": 2.0}, None, None, 200, "a")
    assert build_snapshot(nodes(), [ahead, current], CAT, NOW)["requests"][0]["rtt_ms"]["a"] == 2.0


def test_two_agents_logging_one_room_of_phones_make_one_site() -> None:
    """Sites merge across loggers where their buckets agree: phones whose requests a and b logged are one site with
    the rate of both logs."""
    room = {"a": 3.0, "b": 9.0, "m": 9.0}
    recs = [RequestRecord(NOW - t, "half_plus_two", f"p{i}@10.0.3.{i}", room, None, None, 200, by)
            for by in "ab" for i in range(5) for t in range(6)]  # fmt: skip
    s = build_snapshot(nodes(), recs, CAT, NOW, objective="queue", window_s=60.0)
    assert len(s["requests"]) == 1 and s["requests"][0]["rate"] == pytest.approx(60 / 60.0)
    assert s["requests"][0]["rtt_ms"] == room


def _made_up(n: int, ids: list[str], logger: str, seed: int = 1) -> list[RequestRecord]:
    rng = random.Random(seed)
    models = list(CAT.models)
    return [RequestRecord(NOW - rng.random() * 600, models[k % len(models)], f"x{k // len(models)}@10.9.9.9",
                          {i: rng.random() * 60_000 for i in ids}, None, None, 200, logger)
            for k in range(n)]  # fmt: skip


def _lab(ids: list[str]) -> list[RequestRecord]:
    """Honest rooms: 3 rooms of 8 phones per honest node, each room next to its logging node, 4 records each."""
    out = []
    for j, by in enumerate(ids[:-1]):
        for room in range(3):
            rtt = {i: (1.0 + 3 * room if i == by else 20.0 + 6 * ((i_n + j + room) % 5)) for i_n, i in enumerate(ids)}
            out += [RequestRecord(NOW - t, "half_plus_two", f"p{room}.{k}@10.1.{j}.{room}", rtt, None, None, 200, by)
                    for k in range(8) for t in range(4)]  # fmt: skip
    return out


def test_a_members_made_up_streams_cost_bounded_cpu_and_leave_the_others_sites_whole() -> None:
    """review13a side note: one member's 50,000 one-row made-up streams with random RTTs at 10 nodes took the
    build 3.7 s of CPU and widened every logger's buckets until one site per model remained. Its streams are
    cut to its fair share of MAX_STREAMS, its sites to its share of MAX_SITES, and the honest loggers' sites,
    RTT rows and rates are those of the honest window alone."""
    ids = [f"n{i}" for i in range(10)]
    reports = [NodeReport(i, 3000, 4000, 100, "default", {}, cores=4.0) for i in ids]
    lab = _lab(ids)
    alone = build_snapshot(reports, lab, CAT, NOW, objective="queue-p99", window_s=WINDOW_S)
    flood = lab + _made_up(50_000, ids, "n9")
    loop_s = _python_loop_s()
    t = time.process_time()
    flooded = build_snapshot(reports, flood, CAT, NOW, objective="queue-p99", window_s=WINDOW_S)
    cpu = time.process_time() - t
    assert len(alone["requests"]) == 27  # 9 honest nodes x 3 rooms
    assert len(flooded["requests"]) <= MAX_SITES
    honest_sites = [r for r in flooded["requests"] if r["client"].startswith("site:p")]
    assert sorted(honest_sites, key=lambda r: r["client"]) == sorted(alone["requests"], key=lambda r: r["client"])
    # In units of this process's own speed just before (a million-step Python loop: 0.24-0.30 s of CPU on CI's
    # machine idle, more beside other work): the flooded build takes ~4 of them; before the fix, ~12 times what
    # it took after (3.7 s against ~0.3 s then), ~50. An absolute 2 s failed at 2.1 s beside other tests.
    assert cpu < 20 * loop_s, (cpu, loop_s)


def _python_loop_s() -> float:
    """CPU seconds of a million-step Python loop here and now, the median of three."""
    took = []
    for _ in range(3):
        t, x = time.process_time(), 0
        for i in range(1_000_000):
            x += i
        took.append(time.process_time() - t)
    return sorted(took)[1]


def test_fair_streams_keeps_each_logger_within_its_share_and_the_busiest_of_a_flood() -> None:
    counts: dict[StreamKey, int] = {("m", f"x{i}", "k"): 1 for i in range(10_000)}
    counts[("m", "busy", "k")] = 9
    counts |= {("a", f"p{i}", "k"): 2 for i in range(300)} | {(None, "q", "k"): 1}
    kept = fair_streams(counts, 1000)
    assert len(kept) <= 1000
    assert {k for k in counts if k[0] != "m"} <= kept  # within their shares: whole
    assert ("m", "busy", "k") in kept and sum(k[0] == "m" for k in kept) == 1000 - 301
    assert {k for k in kept if k[0] == "m"} - {("m", "busy", "k")} <= {("m", f"x{i}", "k") for i in range(10_000)}
    assert fair_streams(counts, len(counts)) == set(counts)
    two: dict[StreamKey, int] = {(by, f"x{i}", "k"): 1 for by in "mn" for i in range(5000)}
    assert [sum(k[0] == by for k in fair_streams(two, 1000)) for by in "mn"] == [500, 500]


@pytest.mark.parametrize("objective", ["queue", "thesis"])
def test_the_snapshot_reads_at_most_its_stream_budget_and_the_honest_streams_whole(objective: str) -> None:
    """Thesis: one member's made-up ids fill only its share of MAX_THESIS_STREAMS (before, its busier ids could
    push honest clients out); queue: at most MAX_STREAMS streams reach the site grouping, the honest ones among
    them, and no demand is lost (the streams left out's records are carried by their logger's kept ones)."""
    ids = ["n0", "n1", "n2"]
    reports = [NodeReport(i, 3000, 4000, 100, "default", {}) for i in ids]
    n_fake = MAX_STREAMS + 2000
    fake = [RequestRecord(NOW - 1, "half_plus_two", f"x{i}@10.9.9.9", {"n2": 5.0}, None, None, 200, "n2")
            for i in range(n_fake) for _ in range(3)]  # fmt: skip
    real = [RequestRecord(NOW - 1, "half_plus_two", f"phone{i}@10.0.0.2", {"n0": 5.0}, None, None, 200, "n0")
            for i in range(50)]  # fmt: skip
    s = build_snapshot(reports, fake + real, CAT, NOW, objective, 60.0)
    if objective == "thesis":
        clients = [r["client"] for r in s["requests"]]
        assert len(clients) == MAX_THESIS_STREAMS and {f"phone{i}@10.0.0.2" for i in range(50)} <= set(clients)
        return
    read = sum(int(r["client"].rsplit("+", 1)[1]) + 1 for r in s["requests"])  # site:first+others
    assert read == MAX_STREAMS
    assert sum(r["rate"] for r in s["requests"]) * 60.0 == pytest.approx(3 * n_fake + 50)
    phones = [r for r in s["requests"] if r["client"].startswith("site:phone")]
    assert len(phones) == 1 and phones[0]["rate"] * 60.0 == pytest.approx(50)


def test_a_model_a_logger_reported_keeps_a_stream_past_its_share() -> None:
    """Past its share a logger keeps its busiest stream of every model first, so its demand of a quiet model is
    not folded into another model's."""
    counts: dict[StreamKey, int] = {("m", f"x{i}", "busy"): 5 for i in range(100)}
    counts[("m", "q", "quiet")] = 1
    kept = fair_streams(counts, 10)
    assert len(kept) == 10 and ("m", "q", "quiet") in kept


def test_sites_stay_within_max_sites_for_many_loggers_each_of_many_sites() -> None:
    """Every logger's share: 8 members, each with 2,000 random-RTT streams, make at most MAX_SITES sites."""
    rng = random.Random(3)
    logged: dict[str | None, tuple[list[dict[str, Any]], dict[tuple[str, str], int]]] = {}
    for by in range(8):
        streams = [{"model": "k", "client": f"c{i}", "rtt_ms": {"a": rng.uniform(0, 60_000), "b": rng.uniform(0, 9)},
                    "exec_ms": {"a": 1.0, "b": 1.0}} for i in range(2000)]  # fmt: skip
        logged[f"n{by}"] = (streams, {(f"c{i}", "k"): 1 for i in range(2000)})
    sites = group_logged_sites(logged, 10.0)
    assert len(sites) <= MAX_SITES
    assert sum(s["rate"] for s in sites) == pytest.approx(8 * 2000 / 10.0)
    fine: dict[str | None, tuple[list[dict[str, Any]], dict[tuple[str, str], int]]] = {
        "a": (logged["n0"][0][:3], logged["n0"][1])
    }  # few streams: the base width, one site each
    assert len(group_logged_sites(fine, 10.0)) == 3 and SITE_RTT_MS == 2.0


def test_loggers_sharing_their_sites_keep_them_fine_beside_a_members_made_up_ones() -> None:
    """Two agents log the same 150 rooms (each of their clients through both): 150 sites held by two loggers cost
    each 75, under the equal share (85), so both stay at the 2 ms buckets beside a member's 5,000 random-RTT
    streams, which widen into the 106 sites left; shares by count (150 each, over 85) would have coarsened the
    honest rooms."""
    rooms = [{"a": 1.0 + 4 * (r % 20), "b": 1.0 + 4 * (r // 20)} for r in range(150)]
    honest_logged: dict[str | None, tuple[list[dict[str, Any]], dict[tuple[str, str], float]]] = {}
    for by in ("n0", "n1"):
        streams = [{"model": "k", "client": f"r{r}", "rtt_ms": rooms[r], "exec_ms": {"a": 1.0, "b": 1.0}}
                   for r in range(150)]  # fmt: skip
        honest_logged[by] = (streams, {(f"r{r}", "k"): 1.0 for r in range(150)})
    alone = group_logged_sites(honest_logged, 10.0)
    assert len(alone) == 150 and all(s["rate"] == pytest.approx(0.2) for s in alone)
    rng = random.Random(5)
    made_up = [{"model": "k", "client": f"x{i}", "rtt_ms": {"a": rng.uniform(0, 60_000), "b": rng.uniform(0, 60_000)},
                "exec_ms": {"a": 1.0, "b": 1.0}} for i in range(5000)]  # fmt: skip
    flooded = group_logged_sites(honest_logged | {"m": (made_up, {(f"x{i}", "k"): 1.0 for i in range(5000)})}, 10.0)
    assert len(flooded) <= MAX_SITES
    assert [s for s in flooded if s["client"].startswith("site:r")] == alone
    assert sum(s["rate"] for s in flooded) == pytest.approx((300 + 5000) / 10.0)


def test_five_flattering_records_cannot_price_a_slow_boards_class_past_what_it_serves() -> None:
    """review13c F3, its script: p proxies 40 clients' digits to a and measures 60 ms a request (the catalogue says 3:
    a slow board); m adds 5 records "a served it in 0.5 ms". The lowest of any logger priced a, and through
    class_scale its idle class-mates, at 300 req/s: one instance for 40 req/s that one serves 17 of (240 %
    utilisation). A logger holding under LOGGER_SHARE of the busiest other logger's samples is not a's figure: the
    plan is as with the honest window."""
    rtt = {"p": 0.5, "a": 1.0, "c": 1.0, "m": 1.0}

    def nodes4() -> list[NodeReport]:
        return [
            NodeReport("p", 3000, 4000, 100, "default", {}, cores=4.0),
            NodeReport("a", 3000, 4000, 100, "default", {M: 1}, ready={M: 1}, cores=4.0),
            NodeReport("c", 3000, 4000, 100, "default", {}, cores=4.0),
            NodeReport("m", 3000, 4000, 100, "default", {}, cores=4.0),
        ]

    honest_log = [
        RequestRecord(NOW - 600 + k, M, f"c{c}@10.0.0.{c}", rtt, "a", 60.0, 200, "p")
        for c in range(40)
        for k in range(0, 600, 4)
    ]
    flattering = [RequestRecord(NOW - 1, M, "x@10.9.9.9", rtt, "a", 0.5, 200, "m")] * 5

    def built(records: list[RequestRecord]) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
        s = build_snapshot(nodes4(), records, CAT, NOW, objective="queue-p99", window_s=WINDOW_S)
        plan = solve(Snapshot.from_dict(s), method="ipopt", mode="1").to_dict()["instances"]
        return s, {n: d for n, d in plan.items() if d}

    clean, clean_plan = built(honest_log)
    framed, framed_plan = built(honest_log + flattering)
    assert exec_of(framed) == exec_of(clean) and exec_of(clean)["a"] == 60.0
    servers = sum(d.get(M, 0) for d in clean_plan.values())
    assert framed_plan == clean_plan and servers * 1000.0 / 60.0 > len(honest_log) / WINDOW_S  # room for the demand


def test_many_honest_proxies_at_equal_shares_keep_the_nodes_measured_figure() -> None:
    """Five agents each forward a fifth of b's requests and measure it at 25 ms (the catalogue says otherwise): each
    holds as many samples as the busiest, so b keeps its measured figure (a share of the sum of all loggers' samples
    left b with none: every one held a fifth, under a quarter); m's 50 flattering records are still not taken."""
    loggers = ["a", "p1", "p2", "p3", "p4"]
    rtt = {"a": 1.0, "b": 4.0, "m": 8.0}
    records = [
        RequestRecord(NOW - 600 + k, M, f"c{i}@10.0.0.{i}", rtt, "b", 25.0, 200, logger)
        for i, logger in enumerate(loggers)
        for k in range(0, 600, 2)
    ]
    s = snap(records, b_runs=True)
    assert exec_of(s, "site:")["b"] == 25.0
    assert exec_of(snap(records + frame("b", 0.1, 50), b_runs=True), "site:")["b"] == 25.0


@pytest.mark.parametrize("proxies", [2, 5])
def test_a_member_logging_four_times_the_busiest_proxy_cannot_frame_the_node_slow(proxies: int) -> None:
    """review13d F2: the share-of-the-busiest rule alone let m, logging 4x the busiest honest proxy's records of a,
    leave its own 6 s figure the only one (then, through class_scale, its whole class). Three or more loggers vote
    one each (the lower median)."""
    rng = random.Random(1)

    def recs(logger: str, n: int, ms: float) -> list[RequestRecord]:
        return [
            RequestRecord(NOW - 1 - i * 0.01, M, f"c-{logger}-{i % 7}", {"a": 2.0}, "a", ms * jitter, 200, logger)
            for i, jitter in enumerate(0.9 + 0.2 * rng.random() for _ in range(n))
        ]

    honest_log = [r for j in range(proxies) for r in recs(f"p{j}", 400, 60.0)]
    for liar in (recs("m", 1601, 6000.0), recs("m", 1601, 0.5)):
        got = latency_figures(honest_log + liar, {}, statistics.median, {"a": {M}})[("a", M)]
        assert 54.0 <= got <= 66.0, got
