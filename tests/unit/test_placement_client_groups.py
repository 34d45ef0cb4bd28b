"""A client whose requests pass through several agents is one client (agent/placement.py ``client_groups``): the
thesis objective gives its (client, model) one request, the queue objectives one RTT row, and a member logging an
honest client's id with made-up RTTs still changes nothing the honest logger reported (review13a F4)."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import placement_sites
from agent.catalogue import builtin_catalogue_text, parse_catalogue
from agent.placement import MEDIAN_LOGGERS, NodeReport, RequestRecord, StreamKey, build_snapshot, client_groups
from agent.placement_sites import SAME_CLIENT_RTT_MS
from solver import Snapshot
from solver.api import solve

CAT = parse_catalogue(builtin_catalogue_text(), "t")
IDS = ["a", "b", "c", "m"]
NOW, WINDOW_S = 10_000.0, 600.0
MODELS = ["half_plus_two", "xor_mlp"]


def nodes() -> list[NodeReport]:
    return [NodeReport(n, 3000, 4000, 100, "default", {}, cores=4.0) for n in IDS]


def room(j: int) -> dict[str, float]:
    """Client j's RTT row (its rooms 3 ms apart on a and b, so the thesis plan has something to choose)."""
    return {"a": 1.0 + 3 * (j % 4), "b": 10.0 - 2 * (j % 4), "c": 6.0, "m": 7.0 + j % 3}


def clients(loggers_per_client: int, n: int = 24, per_client: int = 6) -> list[RequestRecord]:
    """``n`` clients asking two models, ``per_client`` requests each, each request logged by one of the client's
    first ``loggers_per_client`` agents in turn (at 1: the client's one agent, a, b or c): the same row wherever it
    went (a client sends its measured RTTs with every request)."""
    out = []
    for j in range(n):
        for k in range(per_client):
            by = IDS[(j + k // 2) % loggers_per_client] if loggers_per_client > 1 else IDS[j % 3]
            out.append(RequestRecord(NOW - 60 * k - j * 0.01, MODELS[k % 2], f"p{j}@10.0.0.{j}", room(j), None, None,
                                     200, by))  # fmt: skip
    return out


def thesis(records: list[RequestRecord]) -> dict[str, Any]:
    return build_snapshot(nodes(), records, CAT, NOW, "thesis")


def rows_of(s: dict[str, Any]) -> list[tuple[str, str, dict[str, float]]]:
    return sorted(((r["client"], r["model"], r["rtt_ms"]) for r in s["requests"]), key=_order)


def _order(row: tuple[str, str, dict[str, float]]) -> tuple[str, str, list[tuple[str, float]]]:
    return row[0], row[1], sorted(row[2].items())


def instances(s: dict[str, Any]) -> int:
    plan = solve(Snapshot.from_dict(s), method="ipopt", mode="1").to_dict()["instances"]
    return sum(c for d in plan.values() for c in d.values())


@pytest.mark.parametrize("loggers", [2, 3])
def test_a_client_logged_by_several_agents_is_one_request_of_the_thesis(loggers: int) -> None:
    """Session 13 made each (logger, client, model) a request: 24 clients x 2 models through two agents were 96
    requests (96 instances) where one agent logging them made 48. Now 48 either way, with the same rows and the
    same plan's instance count."""
    one = thesis(clients(1))
    several = thesis(clients(loggers))
    assert len(one["requests"]) == 48
    assert rows_of(several) == rows_of(one)
    assert instances(several) == instances(one) == 48


def test_reports_that_differ_within_the_agreement_are_one_request() -> None:
    """The client's newest row through b was measured a refresh after the one through a (0.5 ms apart on every
    node): one request, with the busier logger's row."""
    early = [RequestRecord(NOW - 30 - i, MODELS[0], "p@10.0.0.1", room(0), None, None, 200, "a") for i in range(5)]
    drift = {n: v + 0.5 for n, v in room(0).items()}
    late = [RequestRecord(NOW - i, MODELS[0], "p@10.0.0.1", drift, None, None, 200, "b") for i in range(2)]
    s = thesis(early + late)
    assert [r["rtt_ms"] for r in s["requests"]] == [room(0)]


def _lies(rtt: dict[str, float], n: int, client: str = "p0@10.0.0.0") -> list[RequestRecord]:
    """m's ``n`` rows of an honest client, stamped ahead of now (the window keeps them), with ``rtt``."""
    return [RequestRecord(NOW + 59, MODELS[0], client, rtt, None, None, 200, "m") for _ in range(n)]


FAR = {"a": 60_000.0, "b": 60_000.0, "c": 60_000.0, "m": 0.0}


@pytest.mark.parametrize("loggers", [1, 2, 3])
def test_made_up_rtts_under_an_honest_clients_id_change_nothing_the_honest_loggers_reported(loggers: int) -> None:
    """m logs honest p0's id with RTTs far from p0's (60 s to every other node, 0 to itself), 100 times p0's
    records: its rows agree with no honest logger's, so they are a request of m's own (its made-up demand, as a
    made-up client id would be) and every honest request is exactly as without them, thesis and queue alike."""
    honest = clients(loggers)
    clean = thesis(honest)
    lied = thesis(honest + _lies(FAR, 600))
    extra = [row for row in rows_of(lied) if row not in rows_of(clean)]
    assert extra == [("p0@10.0.0.0", MODELS[0], FAR)] and len(lied["requests"]) == len(clean["requests"]) + 1
    q_clean = build_snapshot(nodes(), honest, CAT, NOW, "queue-p99", WINDOW_S)
    q_lied = build_snapshot(nodes(), honest + _lies(FAR, 600), CAT, NOW, "queue-p99", WINDOW_S)
    assert [r for r in q_lied["requests"] if r["rtt_ms"] != FAR] == q_clean["requests"]


def test_rows_within_the_agreement_move_an_honest_row_by_at_most_the_agreement() -> None:
    """m copies p0's row shifted by just under SAME_CLIENT_RTT_MS (towards itself) with 100 times the records: with
    one honest logger it is the busier of two and its row is taken, at most the agreement from p0's own; with three
    honest loggers reporting p0's row, their median stands exactly whatever m's volume."""
    shifted = {n: v + (-0.9 if n == "m" else 0.9) * SAME_CLIENT_RTT_MS for n, v in room(0).items()}
    for loggers in (1, 3):
        got = [r for r in thesis(clients(loggers) + _lies(shifted, 600))["requests"] if r["client"].startswith("p0@")]
        assert len(got) == 2  # p0's two models: m's rows joined p0's half_plus_two request, adding none
        row = next(r["rtt_ms"] for r in got if r["model"] == MODELS[0])
        assert all(abs(row[n] - room(0)[n]) <= SAME_CLIENT_RTT_MS for n in IDS)
        if loggers >= MEDIAN_LOGGERS:
            assert row == room(0)


def test_one_member_under_an_honest_clients_id_cannot_split_a_group_it_agrees_with_nowhere() -> None:
    """Groups are taken busiest first: an honest busier logger seeds its group and the member's far row is left
    out of it, whatever the member's own count (its one record or a thousand)."""
    keys: list[StreamKey] = [("a", "p", "k"), ("b", "p", "k"), ("m", "p", "k")]
    rows = {keys[0]: (1.0, 5.0), keys[1]: (1.5, 5.5), keys[2]: (60_000.0, 0.0)}
    for lies in (1, 1000):
        groups = client_groups(rows, {keys[0]: 10, keys[1]: 3, keys[2]: lies})
        assert sorted(groups) == sorted([((1.0, 5.0), keys[:2]), ((60_000.0, 0.0), keys[2:])])


def test_groups_per_client_are_bounded_by_its_loggers_and_comparisons_by_the_seeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every one of 1,000 loggers reporting one client with a different row (no two agree): 1,000 groups, one per
    logger, each row compared with at most MAX_GROUP_SEEDS groups (~16,000 comparisons, not ~500,000); a row that
    agrees with one of the busiest groups still joins it."""
    rng = random.Random(2)
    rows: dict[StreamKey, tuple[float, ...]] = {
        (f"n{i:04}", "p", "k"): (rng.uniform(0, 60_000), 10.0 * i) for i in range(1000)
    }
    compared: list[int] = []
    real = placement_sites._agree

    def counted(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        compared.append(1)
        return real(a, b)

    monkeypatch.setattr(placement_sites, "_agree", counted)
    t = time.process_time()
    groups = client_groups(rows, dict.fromkeys(rows, 1))
    assert time.process_time() - t < 2.0
    assert len(groups) == 1000 and all(len(g) == 1 for _, g in groups)
    assert 0 < len(compared) <= 1000 * 16  # MAX_GROUP_SEEDS; every group: ~500,000
    honest = dict(rows) | {("z", "p", "k"): rows[("n0003", "p", "k")]}  # agrees with the fourth busiest group
    assert sum(len(g) == 2 for _, g in client_groups(honest, dict.fromkeys(honest, 1))) == 1


def test_ten_agents_logging_every_client_bucket_each_client_once_per_width() -> None:
    """The site grouping's cost with every client logged by all agents: a client's row is bucketed once per width,
    not once per logger (the per-logger rows made the build x4-5 of the one-logger case), and its sites are the
    one-logger window's."""
    ids = [f"n{i}" for i in range(10)]
    reports = [NodeReport(i, 3000, 4000, 100, "default", {}, cores=4.0) for i in ids]
    rng = random.Random(4)
    rooms = [{i: rng.uniform(1, 80) for i in ids} for _ in range(40)]
    one, ten = [], []
    for c in range(400):
        for k in range(10):
            r = RequestRecord(NOW - k, MODELS[c % 2], f"q{c}", rooms[c % 40], None, None, 200, ids[c % 10])
            one.append(r)
            ten.append(RequestRecord(r.ts, r.model, r.client, r.rtt_ms, None, None, 200, ids[k]))
    computed: list[int] = []
    real = placement_sites._SiteKeys.at

    def counting(self: placement_sites._SiteKeys, held: list[int], exponent: int) -> list[tuple[Any, ...] | None]:
        out = real(self, held, exponent)
        computed.append(sum(key is not None for key in out))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(placement_sites._SiteKeys, "at", counting)
        s_one = build_snapshot(reports, one, CAT, NOW, "queue", WINDOW_S)
        computed_one, computed[:] = max(computed), []
        s_ten = build_snapshot(reports, ten, CAT, NOW, "queue", WINDOW_S)
    assert max(computed) <= 400 == computed_one  # 400 (client, model) streams, not 4,000 logger copies
    assert sorted((sorted(r["rtt_ms"].items()), r["rate"]) for r in s_ten["requests"]) == sorted(
        (sorted(r["rtt_ms"].items()), r["rate"]) for r in s_one["requests"]
    )
    assert len(s_one["requests"]) == 40


def test_without_the_agreement_a_busier_member_would_rewrite_the_honest_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above catches a merge that ignores agreement: every row taken as the client's (the agreement
    infinite), m's 600 made-up rows are the busiest and p0's request carries m's RTTs."""
    monkeypatch.setattr(placement_sites, "SAME_CLIENT_RTT_MS", float("inf"))
    lied = thesis(clients(1) + _lies(FAR, 600))
    p0 = [r["rtt_ms"] for r in lied["requests"] if r["client"] == "p0@10.0.0.0" and r["model"] == MODELS[0]]
    assert p0 == [FAR]


def _reference_groups(
    rows: dict[StreamKey, tuple[float, ...]], counts: dict[StreamKey, int]
) -> list[tuple[tuple[float, ...], list[StreamKey]]]:
    """client_groups' rule written plainly: per (client, model), loggers busiest first (of equals, in rows' order),
    each joining the first of the first MAX_GROUP_SEEDS groups whose first row it agrees with on every node; a
    group's row the per-node lower median of 3+ rows, else its first's."""
    out = []
    for client in dict.fromkeys(k[1:] for k in rows):
        keys = sorted((k for k in rows if k[1:] == client), key=lambda k: -counts[k])
        groups: list[list[StreamKey]] = []
        for k in keys:
            home = [
                g
                for g in groups[: placement_sites.MAX_GROUP_SEEDS]
                if all(abs(a - b) <= SAME_CLIENT_RTT_MS for a, b in zip(rows[g[0]], rows[k], strict=True))
            ]
            if home:
                home[0].append(k)
            else:
                groups.append([k])
        for g in groups:
            rs = [rows[k] for k in g]
            row = (
                rs[0]
                if len(rs) < MEDIAN_LOGGERS
                else tuple(sorted(c)[(len(rs) - 1) // 2] for c in zip(*rs, strict=True))
            )
            out.append((row, g))
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d", "m"]),
            st.sampled_from(["p", "q"]),
            st.tuples(*[st.sampled_from([0.0, 1.0, 1.5, 2.0, 2.5, 4.0, 60.0])] * 2),
            st.integers(1, 3),
        ),
        max_size=14,
    )
)
def test_client_groups_are_the_plain_rules_groups(draws: list[tuple[str, str, tuple[float, ...], int]]) -> None:
    """The shortcuts (one row through every agent; every row agreeing with the busiest's) give exactly the groups
    and rows of the plain greedy rule, on rows at and around the agreement's edge."""
    rows: dict[StreamKey, tuple[float, ...]] = {}
    counts: dict[StreamKey, int] = {}
    for logger, client, row, n in draws:
        rows.setdefault((logger, client, "k"), row)
        counts.setdefault((logger, client, "k"), n)
    rows = dict(sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])))  # as build_snapshot orders them
    got = sorted((sorted(g), row) for row, g in client_groups(rows, counts))
    assert got == sorted((sorted(g), row) for row, g in _reference_groups(rows, counts))
