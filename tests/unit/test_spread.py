"""Endpoint answers spread a stream over the plan's instances in the plan's proportions (issue 16, part 2)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from agent.decisions import (
    MAX_SPREAD_SITES,
    Candidate,
    parse_spread,
    rank_endpoints,
    site_shares,
    spread_choice,
    spread_ranked,
)
from solver.api import solve
from solver.problem import Mode, build_problem
from solver.queue_model import build_queue_problem, solve_nlp
from solver.queue_plan import spread
from solver.queue_repair import repair
from solver.snapshot import Model, Node, Request, Snapshot

RTTS = {"a": 2.0, "b": 5.0, "c": 9.0}


def ranked(*urls: tuple[str, str]) -> list:  # type: ignore[type-arg]
    return rank_endpoints([Candidate(n, u, "m", 1.0, 0.0) for n, u in urls], RTTS)


def firsts(choices: list, shares: dict[str, float], draws: int = 1000, **kw: object) -> Counter[str]:  # type: ignore[type-arg]
    """Which URL comes first over evenly spaced draws of u."""
    return Counter(spread_choice(choices, shares, (i + 0.5) / draws, **kw)[0].candidate.url for i in range(draws))  # type: ignore[arg-type]


def test_first_endpoint_follows_the_plans_proportions_and_the_rest_keep_rank_order() -> None:
    choices = ranked(("a", "a1"), ("b", "b1"), ("c", "c1"))
    got = firsts(choices, {"a": 0.75, "b": 0.25})
    assert got == {"a1": 750, "b1": 250}
    order = spread_choice(choices, {"a": 0.75, "b": 0.25}, 0.9)
    assert [ch.candidate.url for ch in order] == ["b1", "a1", "c1"]


def test_a_nodes_share_is_split_over_its_endpoints() -> None:
    got = firsts(ranked(("a", "a1"), ("a", "a2"), ("b", "b1")), {"a": 0.5, "b": 0.5})
    assert got == {"a1": 250, "a2": 250, "b1": 500}


def test_live_queues_shift_weight_only_when_they_differ_from_the_plan() -> None:
    choices = ranked(("a", "a1"), ("b", "b1"))
    same = firsts(choices, {"a": 0.5, "b": 0.5}, planned_queue={"a": 1.0, "b": 1.0}, live_queue={"a1": 1.0, "b1": 1.0})
    assert same == {"a1": 500, "b1": 500}
    busy = firsts(
        choices,
        {"a": 0.5, "b": 0.5},
        planned_queue={"a": 1.0, "b": 1.0},
        live_queue={"a1": 7.0, "b1": 1.0},
        rule="weighted",
    )
    assert busy == {"a1": 200, "b1": 800}  # the weighted rule: weights 2/8 and 2/2


def test_no_plan_or_no_share_on_a_ready_endpoint_keeps_the_ranking() -> None:
    choices = ranked(("a", "a1"), ("b", "b1"))
    assert spread_choice(choices, {}, 0.3) == choices
    assert spread_choice(choices, {"z": 1.0}, 0.3) == choices  # the planned node is down
    assert spread_ranked(choices, None, "m", RTTS, 0.3) == choices


def test_the_nearest_site_of_the_model_gives_the_shares_and_malformed_entries_are_skipped() -> None:
    raw = [
        {"model": "m", "rtt_ms": {"a": 2.0, "b": 5.0}, "shares": {"a": 1.0}},
        {"model": "m", "rtt_ms": {"a": 40.0, "b": 1.0}, "shares": {"b": 1.0}},
        {"model": "other", "rtt_ms": {"a": 2.0}, "shares": {"c": 1.0}},
        {"model": "m", "rtt_ms": "garbage"},
        "nonsense",
    ]
    sites = parse_spread(raw)
    assert len(sites) == 3
    assert site_shares(sites, "m", {"a": 3.0, "b": 6.0}) == {"a": 1.0}
    assert site_shares(sites, "m", {"a": 35.0, "b": 1.0}) == {"b": 1.0}
    assert site_shares(sites, "missing", RTTS) == {}
    placement = {"spread": raw, "planned_queue": {"a": {"m": 0.5}, "b": "bad"}}
    assert (
        spread_ranked(ranked(("a", "a1"), ("b", "b1")), placement, "m", {"a": 40.0, "b": 1.0}, 0.1)[0].candidate.url
        == "b1"
    )


def test_spread_tables_are_bounded() -> None:
    raw = [{"model": "m", "rtt_ms": {"a": float(i)}, "shares": {"a": 1.0}} for i in range(MAX_SPREAD_SITES + 50)]
    assert len(parse_spread(raw)) == MAX_SPREAD_SITES
    nodes = (Node("a", 4096.0, 4096.0, 100.0), Node("b", 4096.0, 4096.0, 100.0))
    reqs = tuple(
        Request("m", {"a": float(i), "b": 30.0 - i}, {"a": 1.0, "b": 1.0}, f"c{i}", 1.0 + i) for i in range(30)
    )
    snap = Snapshot(nodes, (Model("m", 100.0, 1.0, {"default": 500.0}),), reqs)
    q = build_queue_problem(build_problem(snap, Mode.MODE2))
    nlp = solve_nlp(q)
    pools = repair(q, nlp.x, nlp.r)
    top = spread(q, pools, limit=5)
    assert len(top) == 5 and [s["rtt_ms"]["a"] for s in top] == [29.0, 28.0, 27.0, 26.0, 25.0]  # largest rates
    plan = solve(snap, objective="queue", mode="2")
    assert len(plan.details["spread"]) == 30
    many = Snapshot(
        nodes,
        snap.models,
        tuple(
            Request("m", {"a": float(i % 97), "b": float(i // 97)}, {"a": 1.0, "b": 1.0}, f"c{i}", 1.0)
            for i in range(300)
        ),
    )
    assert len(solve(many, objective="queue", mode="2").details["spread"]) == MAX_SPREAD_SITES
    assert all(np.isclose(sum(s["shares"].values()), 1.0) for s in plan.details["spread"])


def test_idle_running_instances_get_no_draw_and_the_nodes_share_goes_to_the_rest() -> None:
    """Mode 1 past the instance bound (solver.queue_running): the plan keeps 1 of node a's 3 instances
    running without traffic; a's share is split over its first 2 endpoints in rank order (by URL, the same
    on every agent), the third stays a fallback at its rank. Malformed or absurd counts are ignored; a node
    always keeps one endpoint for its share."""
    choices = ranked(("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"))
    assert firsts(choices, {"a": 0.5, "b": 0.5}, idle={"a": 1}) == {"a1": 250, "a2": 250, "b1": 500}
    assert firsts(choices, {"a": 0.5, "b": 0.5}, idle={"a": 9}) == {"a1": 500, "b1": 500}
    assert firsts(choices, {"a": 0.5, "b": 0.5}, idle={"a": -4}) == firsts(choices, {"a": 0.5, "b": 0.5})
    raw = [{"model": "m", "rtt_ms": RTTS, "shares": {"a": 0.5, "b": 0.5}}]
    for idle, third in (({"a": {"m": 1}}, 0), ({"a": {"m": 1.5}}, 0), ({"a": {"m": "x"}, "b": 3}, 1)):
        urls = Counter(
            spread_ranked(choices, {"spread": raw, "idle_running": idle}, "m", RTTS, (i + 0.5) / 600)[0].candidate.url
            for i in range(600)
        )
        assert urls["a3"] == (100 if third else 0) and urls["b1"] == 300
    for absurd in (True, float("nan"), float("inf"), 1e12, -1):
        urls = Counter(
            spread_ranked(choices, {"spread": raw, "idle_running": {"a": {"m": absurd}}}, "m", RTTS, (i + 0.5) / 600)[
                0
            ].candidate.url
            for i in range(600)
        )
        assert urls == {"a1": 100, "a2": 100, "a3": 100, "b1": 300}, absurd


def test_a_mode1_plan_past_the_bound_sends_no_draw_to_its_idle_node() -> None:
    """End to end on tests/unit/data/queue_bound_mode1_running.json: the plan's summary (spread, planned queue,
    idle running) sends no request of m0 to n0, whose running instance the plan keeps idle."""
    import json
    from pathlib import Path

    case = json.loads((Path(__file__).parent / "data" / "queue_bound_mode1_running.json").read_text())
    snap = Snapshot.from_dict(case["snap"])
    plan = solve(snap, objective="queue", mode="1")
    summary = {key: plan.details[key] for key in ("spread", "planned_queue", "idle_running")}
    cands = [Candidate("n0", "n0-1", "m0", 2.0, 0.0)] + [
        Candidate(n, f"{n}-{i}", "m0", 2.0, 0.0) for n in ("n1", "n2") for i in (1, 2)
    ]
    for req in snap.requests:
        if req.model != "m0":
            continue
        order = rank_endpoints(cands, req.rtt_ms)
        firsts_ = {
            spread_ranked(order, summary, "m0", req.rtt_ms, (i + 0.5) / 200)[0].candidate.node for i in range(200)
        }
        assert "n0" not in firsts_
