"""The stand-in's choices about connections (agent/modelserver.py), as pure code: which connection waiting on
its client (a request's head or body not whole) a newcomer takes the place of when every share of the budget
is held, and how much of the budget connections would have to give back for a body (review12b: three
addresses trickling heads held every share)."""

from __future__ import annotations

from agent.modelserver import CONN_COST, Budget, oldest_of_busiest


def test_a_newcomer_takes_the_place_of_the_oldest_head_of_the_busiest_address() -> None:
    waiting: dict[str, dict[object, None]] = {
        "10.0.0.1": dict.fromkeys(["a1", "a2"]),
        "10.0.0.2": dict.fromkeys(["b1", "b2", "b3"]),  # the busiest: its oldest goes first
        "10.0.0.3": dict.fromkeys(["c1"]),
    }
    assert oldest_of_busiest(waiting, "10.0.0.9") == "b1"  # an address with none waiting
    assert oldest_of_busiest(waiting, "10.0.0.1") == "b1"  # with fewer than the busiest
    assert oldest_of_busiest(waiting, "10.0.0.2") is None  # the busiest itself: refused, never its own
    waiting["10.0.0.1"]["a3"] = None  # a tie with the busiest: refused (it would only swap places)
    assert oldest_of_busiest(waiting, "10.0.0.1") is None
    assert oldest_of_busiest({}, "10.0.0.1") is None  # none waiting: refused


def test_repeated_newcomers_even_out_the_addresses_and_never_take_from_the_newcomers() -> None:
    # three addresses holding 128 slots between them; 40 honest newcomers from as many addresses take 40 of them
    waiting: dict[str, dict[object, None]] = {f"127.0.5.{i}": {} for i in (1, 2, 3)}
    for n in range(128):
        waiting[f"127.0.5.{1 + n % 3}"][f"x{n}"] = None
    for k in range(40):
        host = f"10.0.1.{k}"
        victim = oldest_of_busiest(waiting, host)
        assert victim is not None and str(victim).startswith("x")
        for held in waiting.values():
            held.pop(victim, None)
        waiting[host] = {f"honest{k}": None}
    counts = sorted(len(waiting[f"127.0.5.{i}"]) for i in (1, 2, 3))
    assert sum(counts) == 88 and counts[-1] - counts[0] <= 1  # the busiest gave first: even again


def test_a_body_short_of_room_says_what_connections_would_have_to_give_back() -> None:
    budget = Budget(10 * CONN_COST)
    for _ in range(8):
        assert budget.take_conn(CONN_COST, 8 * CONN_COST)
    assert budget.shortfall(CONN_COST, 9 * CONN_COST, 10 * CONN_COST) == 0  # it fits now
    assert budget.shortfall(3 * CONN_COST, 9 * CONN_COST, 10 * CONN_COST) == 2 * CONN_COST
    assert budget.take(CONN_COST // 2)  # a body holds some: giving back connections cannot help past its bound
    assert budget.shortfall(CONN_COST, 9 * CONN_COST, CONN_COST) is None
    budget.give(2 * CONN_COST, conn=True)
    assert budget.shortfall(3 * CONN_COST, 9 * CONN_COST, 10 * CONN_COST) == CONN_COST // 2
