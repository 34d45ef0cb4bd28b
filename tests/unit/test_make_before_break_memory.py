"""Make-before-break within each node's memory (handover.make_before_break with catalogue sizes and totals).

The node refuses a desired set whose servers' mem_mb pass its total (decisions.memory_refusal); the leader adds
held servers to the plan's sets while a moved model's replacements load. These check that a held server never
makes a node refuse its set, that a model's last ready server is kept wherever deferring capacity starts makes
room, and that iterating the function with the nodes' readiness reaches the plan in a bounded number of rounds
(no two nodes wait on each other's holds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.decisions import memory_fits, memory_refusal
from agent.handover import make_before_break
from agent.leader_round import Acknowledged, Command, Elected, Gathered, LeaderRound, RoundConfig, Solved, Tick
from agent.placement import NodeReport

Sets = dict[str, dict[str, int]]


def ready_kept(out: Mapping[str, Mapping[str, int]], ready: Mapping[str, Mapping[str, int]], m: str) -> int:
    return sum(min(d.get(m, 0), ready.get(n, {}).get(m, 0)) for n, d in out.items())


def old_make_before_break(desired: Sets, ready: Sets) -> Sets:
    """The rule before memory was considered: every ready server of a pending model is held."""
    out = {n: dict(d) for n, d in desired.items()}
    for m in {m for d in desired.values() for m in d} | {m for r in ready.values() for m in r}:
        if any(d.get(m, 0) > ready.get(n, {}).get(m, 0) for n, d in desired.items()):
            for n, r in ready.items():
                if n in out and r.get(m, 0) > out[n].get(m, 0):
                    out[n][m] = r[m]
    return out


def test_a_hold_that_fits_is_kept_and_one_that_does_not_is_dropped_when_others_serve() -> None:
    desired = {"a": {"x": 1}, "b": {"m": 2}}
    ready = {"a": {"m": 2}, "b": {"m": 1}}  # b keeps one ready m: a's two only add capacity during the move
    assert make_before_break(desired, ready, {"m": 300, "x": 300}, {"a": 1000, "b": 1000}) == {
        "a": {"x": 1, "m": 2},  # 900 MB of 1000: both held
        "b": {"m": 2},
    }
    assert make_before_break(desired, ready, {"m": 400, "x": 300}, {"a": 1000, "b": 1000}) == {
        "a": {"x": 1, "m": 1},  # 700 MB; a second m (1100 MB) would make a refuse the set
        "b": {"m": 2},
    }
    assert make_before_break(desired, ready, {"m": 800, "x": 300}, {"a": 1000, "b": 1000}) == desired


def test_the_last_ready_server_is_kept_and_capacity_starts_beside_it_wait() -> None:
    """a holds the only ready m while b loads it; a's start of x (served on c) waits for the hold to clear."""
    desired = {"a": {"x": 1}, "b": {"m": 1}, "c": {"x": 1}}
    ready = {"a": {"m": 1}, "b": {}, "c": {"x": 1}}
    need, total = {"m": 600, "x": 600}, {"a": 1000, "b": 1000, "c": 1000}
    out = make_before_break(desired, ready, need, total)
    assert out == {"a": {"m": 1}, "b": {"m": 1}, "c": {"x": 1}}
    assert all(memory_refusal(out[n], need, total[n]) is None for n in out)
    out = make_before_break(desired, {"a": {"m": 1}, "b": {"m": 1}, "c": {"x": 1}}, need, total)
    assert out == desired  # b's m is ready: a's hold only adds capacity, does not fit beside x, and goes


def test_a_start_that_ends_an_outage_is_never_deferred() -> None:
    """x has no ready server anywhere: its start on a goes ahead and a's hold of m (the last) cannot stay."""
    desired = {"a": {"x": 1}, "b": {"m": 1}}
    ready = {"a": {"m": 1}, "b": {}}
    assert make_before_break(desired, ready, {"m": 600, "x": 600}, {"a": 1000, "b": 1000}) == desired
    # with room for both the hold stays
    assert make_before_break(desired, ready, {"m": 400, "x": 600}, {"a": 1000, "b": 1000}) == {
        "a": {"x": 1, "m": 1},
        "b": {"m": 1},
    }


def test_the_last_server_goes_to_the_node_that_defers_least() -> None:
    desired = {"a": {"x": 2}, "b": {"x": 1}, "c": {"m": 1}}
    ready = {"a": {"m": 1}, "b": {"m": 1, "x": 1}, "c": {}}
    need, total = {"m": 500, "x": 300}, {"a": 1000, "b": 1000, "c": 1000}
    assert make_before_break(desired, ready, need, total) == {"a": {"x": 2}, "b": {"x": 1, "m": 1}, "c": {"m": 1}}
    need = {"m": 800, "x": 300}  # nowhere without a deferral: b defers nothing it runs ready, a defers one x
    out = make_before_break(desired, ready, need, total)
    assert ready_kept(out, ready, "m") == 1 and all(memory_fits(out[n], need, total[n]) for n in out)
    assert out["a"] == {"m": 1} and out["b"] == {"x": 1}  # a's two x starts wait (x is served on b); b keeps its x


def test_one_server_always_fits_and_a_plan_that_does_not_fit_gets_no_holds() -> None:
    assert make_before_break(
        {"a": {}, "b": {"m": 1}}, {"a": {"m": 1}, "b": {}}, {"m": 5000}, {"a": 1000, "b": 1000}
    ) == {
        "a": {"m": 1},  # one server in all: the node accepts it whatever its size
        "b": {"m": 1},
    }
    desired = {"a": {"x": 3}, "b": {"m": 1}}  # a's own plan is over its memory: a refuses it whatever is added
    assert make_before_break(desired, {"a": {"m": 1}, "b": {}}, {"m": 100, "x": 400}, {"a": 1000, "b": 1000}) == desired


def test_without_sizes_every_hold_is_kept_as_before() -> None:
    desired = {"a": {"x": 1}, "b": {"m": 2}}
    ready = {"a": {"m": 2}, "b": {}}
    assert (
        make_before_break(desired, ready)
        == old_make_before_break(desired, ready)
        == {
            "a": {"x": 1, "m": 2},
            "b": {"m": 2},
        }
    )
    assert make_before_break(desired, ready, {"m": 600}, {}) == old_make_before_break(desired, ready)  # no totals


def run_rounds(
    desired: Sets,
    ready: Sets,
    need: Mapping[str, float],
    total: Mapping[str, float],
    delay: Mapping[Any, int],
    rounds: int,
) -> tuple[list[Sets], Sets]:
    """Iterate the leader's rounds: each node runs the set it was sent (a start becomes ready ``delay[(n, m)]``
    rounds after it was started, 0: by the next round; a stop drops loading servers first, as plan_reconcile).
    Returns each round's sets and the final readiness."""
    loading: dict[tuple[str, str], list[int]] = {}
    ready = {n: {m: c for m, c in ready.get(n, {}).items() if c > 0} for n in desired}
    sent: list[Sets] = []
    for _ in range(rounds):
        out = make_before_break(desired, ready, need, total)
        sent.append(out)
        for n in desired:
            for m in {*out[n], *ready[n], *(mm for nn, mm in loading if nn == n)}:
                want, have, load = out[n].get(m, 0), ready[n].get(m, 0), loading.get((n, m), [])
                if want < have + len(load):
                    cut = have + len(load) - want
                    dropped = min(cut, len(load))  # loading servers go first
                    load, have = load[: len(load) - dropped], have - (cut - dropped)
                elif want > have + len(load):
                    load = load + [delay.get((n, m), 0)] * (want - have - len(load))
                done = sum(1 for t in load if t <= 0)
                loading[(n, m)] = [t - 1 for t in load if t > 0]
                ready[n][m] = have + done
                if ready[n][m] == 0:
                    del ready[n][m]
    return sent, ready


def test_two_full_nodes_swapping_models_converge() -> None:
    """a moves m to b while b moves x to a; neither node has room for both: no one waits on the other's hold."""
    desired = {"a": {"x": 1}, "b": {"m": 1}}
    ready = {"a": {"m": 1}, "b": {"x": 1}}
    sent, final = run_rounds(desired, ready, {"m": 600, "x": 600}, {"a": 1000, "b": 1000}, {}, 3)
    assert sent[-1] == desired and final == desired


def test_a_cycle_of_three_full_nodes_with_capacity_starts_converges() -> None:
    """Each node hands its model to the next and also starts capacity of a model served elsewhere."""
    desired = {"a": {"z": 1, "w": 1}, "b": {"x": 1, "w": 1}, "c": {"y": 1}, "d": {"w": 1}}
    ready = {"a": {"x": 1}, "b": {"y": 1}, "c": {"z": 1}, "d": {"w": 1}}
    need = {"x": 500, "y": 500, "z": 500, "w": 500}
    total = {"a": 1000, "b": 1000, "c": 1000, "d": 1000}
    sent, final = run_rounds(desired, ready, need, total, {("a", "z"): 2, ("b", "x"): 1}, 8)
    for out in sent:
        assert all(memory_fits(out[n], need, total[n]) for n in out)
    assert sent[-1] == desired and final == desired


names = st.sampled_from(["m0", "m1", "m2", "m3"])
nodes = st.sampled_from(["n0", "n1", "n2", "n3"])


@st.composite
def clusters(draw: Any) -> tuple[Sets, Sets, dict[str, float], dict[str, float]]:
    """Up to 4 nodes and 4 models, sizes from 0 to most of a node (so holds often do not fit), a node or two
    reporting readiness the leader has no plan for."""
    ids = draw(st.lists(nodes, min_size=1, max_size=4, unique=True))
    need = {m: float(draw(st.integers(0, 700))) for m in ["m0", "m1", "m2", "m3"]}
    total = {n: float(draw(st.integers(300, 1600))) for n in ids}
    counts = st.dictionaries(names, st.integers(0, 3), max_size=3)
    desired = {n: {m: c for m, c in draw(counts).items() if c > 0} for n in ids}
    ready: Sets = {}
    for n in draw(st.lists(nodes, unique=True)):  # what runs: made up, or another node's plan (the plan moves it)
        how = draw(st.sampled_from(["made up", "moved", "moved and kept"]))
        other = desired[draw(st.sampled_from(ids))]
        if how == "made up":
            ready[n] = {m: c for m, c in draw(counts).items() if c > 0}
        elif how == "moved":
            ready[n] = dict(other)
        else:
            ready[n] = {m: max(c, other.get(m, 0)) for m, c in desired.get(n, {}).items()} | {
                m: c for m, c in other.items() if m not in desired.get(n, {})
            }
    if len(ids) >= 2 and draw(st.booleans()):  # a handover that may need a deferral: h holds the last ready m
        h, p = draw(st.sampled_from(ids)), draw(st.sampled_from(ids))  # (p == h: m moves nowhere else)
        m, x = draw(st.sampled_from(["m0", "m1"])), draw(st.sampled_from(["m2", "m3"]))
        for n in ready:
            ready[n].pop(m, None)
        ready.setdefault(h, {})[m] = draw(st.integers(1, 2))
        desired[h].pop(m, None)
        desired[p][m] = desired[p].get(m, 0) + 1
        k = draw(st.sampled_from(ids))  # x runs ready on k (kept) and h starts one more
        desired[k][x] = max(1, desired[k].get(x, 0))
        on_k = ready.setdefault(k, {})
        on_k[x] = max(1, on_k.get(x, 0))
        desired[h][x] = ready.get(h, {}).get(x, 0) + 1
        planned = sum(c * need[y] for y, c in desired[h].items())
        total[h] = planned + draw(st.integers(0, int(need[m]) + 100))  # h is often full: its plan and little more
    return desired, ready, need, total


def served(desired: Sets, ready: Sets) -> set[str]:
    return {m for n, d in desired.items() for m in d if min(d[m], ready.get(n, {}).get(m, 0)) > 0}


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_properties(case: tuple[Sets, Sets, dict[str, float], dict[str, float]]) -> None:
    desired, ready, need, total = case
    out = make_before_break(desired, ready, need, total)
    assert set(out) == set(desired)
    keep = served(desired, ready)
    for n, d in desired.items():
        r = ready.get(n, {})
        if memory_fits(d, need, total[n]):
            assert memory_fits(out[n], need, total[n]), (n, out[n])  # the node never refuses it for a hold
        else:
            assert out[n] == d  # the plan's own problem: nothing added, nothing deferred
        for m in {*d, *out[n]}:
            low, high = min(d.get(m, 0), r.get(m, 0)), max(d.get(m, 0), r.get(m, 0))
            assert low <= out[n].get(m, 0) <= high  # no ready server the plan keeps is stopped, no extra start
            if out[n].get(m, 0) < d.get(m, 0):
                assert m in keep  # only starts of a model served elsewhere wait
    # a held server is dropped only where one more would not fit (or the node defers starts for a last server)
    pending = {m for n, d in desired.items() for m, c in d.items() if c > ready.get(n, {}).get(m, 0)}
    for n, d in desired.items():
        if not memory_fits(d, need, total[n]) or any(out[n].get(x, 0) < c for x, c in d.items()):
            continue
        for m in pending:
            if ready.get(n, {}).get(m, 0) > out[n].get(m, 0):
                assert not memory_fits({**out[n], m: out[n].get(m, 0) + 1}, need, total[n]), (n, m, out)
    # the last ready server of a model whose replacement is pending is dropped only where memory makes it
    # impossible: on every node holding one, the set less every deferrable start, plus one, does not fit
    for m in sorted(pending - keep):
        holders = [n for n in desired if ready.get(n, {}).get(m, 0) > desired[n].get(m, 0)]
        if not holders or ready_kept(out, ready, m) > 0:
            continue
        for n in holders:
            if not memory_fits(desired[n], need, total[n]):
                continue
            r = ready.get(n, {})
            least = {x: (min(c, r.get(x, 0)) if x in keep else c) for x, c in out[n].items()}
            least[m] = least.get(m, 0) + 1
            assert not memory_fits(least, need, total[n]), (m, n, out)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.dictionaries(st.tuples(nodes, names), st.integers(0, 2)))
def test_iterated_with_readiness_it_reaches_the_plan(
    case: tuple[Sets, Sets, dict[str, float], dict[str, float]], delay: dict[tuple[str, str], int]
) -> None:
    """Starts become ready after up to 2 rounds: the plan is reached within (2 + 1) x 2 + 2 rounds wherever every
    node's plan fits, and no round's set is refused for memory a hold added."""
    desired, ready, need, total = case
    sent, final = run_rounds(desired, ready, need, total, delay, 8)
    for out in sent:
        for n in out:
            if memory_fits(desired[n], need, total[n]):
                assert memory_fits(out[n], need, total[n])
    assert sent[-1] == desired and final == desired


def test_the_leader_sends_a_set_the_node_accepts_and_says_what_waits() -> None:
    """LeaderRound with the catalogue's sizes: the hold that protects m's last server stays on a; a's start of x
    (served on c) waits and is not counted as a start that failed."""
    members = {"a": "http://a", "b": "http://b", "c": "http://c"}
    m = LeaderRound("a", RoundConfig(debounce_s=0.0, target_rounds=1))
    m.step(Elected(0.0, 1, members))
    need = {"m": 600.0, "x": 600.0}
    plan = {"instances": {"a": {"x": 1}, "b": {"m": 1}, "c": {"x": 1}}, "method": "t", "status": "optimal"}

    def rnd(k: int, now: float, b_ready: int) -> list[Command]:
        m.step(Tick(now))
        reports = {
            "a": NodeReport("a", 400, 1000, 100, "orin", {"m": 1}, {}, {"m": 1}),
            "b": NodeReport("b", 1000, 1000, 100, "orin", {"m": 1} if b_ready else {}, {}, {"m": b_ready}),
            "c": NodeReport("c", 400, 1000, 100, "orin", {"x": 1}, {}, {"x": 1}),
        }
        for n in sorted(reports):
            m.step(Gathered(now, k, n, reports[n], ()))
        sent = [c for c in m.step(Solved(now, k, plan, requests=0, mem_mb=need)) if isinstance(c, Command)]
        for c in sent:
            m.step(Acknowledged(now, k, c.node))
        return sent

    first = rnd(1, 1.0, 0)
    assert {c.node: dict(c.instances) for c in first} == {"a": {"m": 1}, "b": {"m": 1}, "c": {"x": 1}}
    assert all(memory_refusal(c.instances, need, 1000.0) is None for c in first)
    assert first[0].summary["handover"] == {"held": {"a": {"m": 1}}, "deferred": {"a": {"x": 1}}}
    assert m.intent["a"] == {"x": 1}
    second = rnd(2, 40.0, 0)  # b still loading; target_rounds=1 would expire a start that failed
    assert {c.node: dict(c.instances) for c in second}["a"] == {"m": 1}
    assert m.intent["a"] == {"x": 1} and ("a", "x") not in m.short
    third = rnd(3, 80.0, 1)  # b's m is ready: a's hold goes and x starts
    assert {c.node: dict(c.instances) for c in third}["a"] == {"x": 1}
    assert "handover" not in third[0].summary


def test_counts_are_deferred_and_held_by_arithmetic_not_server_by_server() -> None:
    """A count is bounded only by memory (tiny servers: 10**12 of them): deferral and capacity do not loop per
    server, and a 256-node, 64-model cluster where every node hands its models on takes one pass."""
    desired = {"a": {"x": 10**12}, "b": {"m": 1}, "c": {"x": 1, "y": 10**12}}
    ready = {"a": {"m": 1}, "b": {}, "c": {"x": 1, "y": 10**12 - 5}}
    need, total = {"m": 600.0, "x": 1e-9, "y": 1e-9}, {"a": 1000.0 + 100, "b": 1000.0, "c": 2000.0}
    out = make_before_break(desired, ready, need, total)
    assert out["a"]["m"] == 1 and 0 < out["a"]["x"] < 10**12 and memory_fits(out["a"], need, total["a"])
    assert out["c"] == desired["c"]
    ids = [f"n{i:03d}" for i in range(256)]
    models = [f"m{j:02d}" for j in range(64)]
    big_desired = {n: {models[(i + 1) % 64]: 2, models[(i + 2) % 64]: 1} for i, n in enumerate(ids)}
    big_ready = {n: {models[i % 64]: 3, models[(i + 2) % 64]: 1} for i, n in enumerate(ids)}
    sizes = {m: 100.0 + j for j, m in enumerate(models)}
    totals = dict.fromkeys(ids, 600.0)  # every plan fits (at most 3 x 163 MB), a held server or two beside it
    big = make_before_break(big_desired, big_ready, sizes, totals)
    assert all(memory_fits(big[n], sizes, totals[n]) for n in ids)
    for i, n in enumerate(ids):  # every model is served: nothing waits, and a held server wherever one fits
        held = models[i % 64]
        assert all(big[n].get(m, 0) >= c for m, c in big_desired[n].items())
        assert big[n].get(held, 0) >= 1 or not memory_fits({**big_desired[n], held: 1}, sizes, totals[n])


def test_a_stale_nodes_old_report_serves_nothing() -> None:
    """A node whose gather failed stands in with last round's report; its "ready" servers may be on a board that just
    died, so they do not make a model served: a's last ready m is still held while m moves to b (review13b F2)."""
    from agent.leader_round import GatherFailed

    members = {"a": "http://a", "b": "http://b", "c": "http://c", "d": "http://d"}
    m = LeaderRound("a", RoundConfig(debounce_s=0.0, target_rounds=3))
    m.step(Elected(0.0, 1, members))
    need = {"m": 600.0, "x": 600.0}
    plan = {
        "instances": {"a": {"x": 1}, "b": {"m": 1}, "c": {"m": 1}, "d": {"x": 1}},
        "method": "t",
        "status": "optimal",
    }
    reports = {
        "a": NodeReport("a", 400, 1000, 100, "orin", {"m": 1}, {}, {"m": 1}),
        "b": NodeReport("b", 4000, 4000, 100, "orin", {}, {}, {}),
        "c": NodeReport("c", 3400, 4000, 100, "orin", {"m": 1}, {}, {"m": 1}),
        "d": NodeReport("d", 3400, 4000, 100, "orin", {"x": 1}, {}, {"x": 1}),
    }

    def rnd(k: int, now: float, failed: set[str]) -> dict[str, dict[str, int]]:
        m.step(Tick(now))
        for n in sorted(reports):
            m.step(GatherFailed(now, k, n, "timeout") if n in failed else Gathered(now, k, n, reports[n], ()))
        sent = [c for c in m.step(Solved(now, k, plan, requests=0, mem_mb=need)) if isinstance(c, Command)]
        for c in sent:
            m.step(Acknowledged(now, k, c.node))
        return {c.node: dict(c.instances) for c in sent}

    first = rnd(1, 1.0, set())
    assert first["a"] == {"x": 1}  # c's m is live and ready: a's m is capacity only, and does not fit beside x
    second = rnd(2, 40.0, {"c"})  # c misses its gather: its m may be gone
    assert "c" not in second  # a stale node gets no command
    assert second["a"] == {"m": 1}  # a keeps the last m it can vouch for; x waits
