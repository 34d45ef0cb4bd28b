"""The leader's placement round machine: exact instruction lists for each event, and its bounds."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from agent.leader_round import (
    Acknowledged,
    Command,
    CommandFailed,
    Deposed,
    Elected,
    Fenced,
    Gather,
    Gathered,
    GatherFailed,
    LeaderRound,
    MembershipChanged,
    Phase,
    Placed,
    RoundConfig,
    Solve,
    Solved,
    SolveFailed,
    Tick,
)
from agent.placement import NodeReport, RequestRecord
from peerserve import wire

CFG = RoundConfig(period_s=30.0, debounce_s=0.2, window_s=600.0, page_limit=3)
MEMBERS = {"a": "http://a", "b": "http://b"}
PLAN: dict[str, Any] = {"instances": {"b": {"m": 1}}, "method": "ipopt", "status": "optimal", "actions": []}


def report(node: str, **ready: int) -> NodeReport:
    return NodeReport(node, 1000, 2000, 100, "orin", dict(ready), {}, dict(ready))


def rec(ts: float, client: str = "c") -> RequestRecord:
    return RequestRecord(ts, "m", client, {"a": 1.0}, "a", 2.0, 200)


def elected(term: int = 3, cfg: RoundConfig = CFG) -> LeaderRound:
    m = LeaderRound("a", cfg)
    assert m.step(Elected(100.0, term, MEMBERS)) == []
    return m


def gathering() -> LeaderRound:
    m = elected()
    assert m.step(Tick(100.1)) == []  # debounce
    assert m.step(Tick(100.2)) == [Gather(1, "a", "http://a", 0, 3), Gather(1, "b", "http://b", 0, 3)]
    return m


def solving() -> LeaderRound:
    m = gathering()
    assert m.step(Gathered(100.3, 1, "a", report("a", m=1), ((1, rec(99.0)), (2, rec(99.5))))) == []
    assert m.step(Gathered(100.4, 1, "b", report("b"), ())) == [
        Solve(1, (report("a", m=1), report("b")), (rec(99.0), rec(99.5)), 100.4, {"a": {"m": 1}, "b": {}})
    ]
    return m


def commanding() -> tuple[LeaderRound, dict[str, Any]]:
    m = solving()
    out = m.step(Solved(101.0, 1, PLAN, requests=1))
    assert isinstance(out[0], Command)
    summary = dict(out[0].summary)
    assert summary["term"] == 3 and summary["leader"] == "a" and summary["nodes"] == ["a", "b"]
    # make-before-break: a keeps its ready m until b's is ready
    assert out == [Command(1, "a", "http://a", 3, {"m": 1}, summary), Command(1, "b", "http://b", 3, {"m": 1}, summary)]
    return m, summary


def test_the_summary_a_round_sends_passes_the_wire() -> None:
    """The wire checks the summary each command carries (peerserve/wire.py ``_placement``, review26b F4): what a
    round makes passes it unchanged, as sent and as finished (delivered)."""
    m, summary = commanding()
    body = Command(1, "a", "http://a", 3, {"m": 1}, summary)
    parsed = wire.DesiredCommand.parse(json.loads(json.dumps({"term": body.term, "leader": "a",
                                                               "instances": dict(body.instances),
                                                               "placement": dict(body.summary)})))  # fmt: skip
    assert parsed.placement == json.loads(json.dumps(summary))
    m.step(Acknowledged(101.1, 1, "a"))
    placed = m.step(Acknowledged(101.2, 1, "b"))[0]
    assert isinstance(placed, Placed)
    wire.DesiredCommand.parse({"term": 3, "leader": "a", "instances": {}, "placement": dict(placed.summary)})


def test_nothing_happens_while_not_leading() -> None:
    m = LeaderRound("a", CFG)
    assert m.step(Tick(5.0)) == [] and m.step(MembershipChanged(5.0, MEMBERS)) == []
    assert m.step(Gathered(5.0, 1, "a", report("a"), ())) == []


def test_a_full_round_gather_solve_command_placed() -> None:
    m, summary = commanding()
    assert m.step(Acknowledged(101.1, 1, "a")) == []
    assert m.step(Acknowledged(101.2, 1, "b")) == [Placed({**summary, "delivered": 2})]
    assert m.phase is Phase.IDLE and m.last_placement == {**summary, "delivered": 2}
    assert m.step(Tick(130.1)) == []
    # the next round starts a period after this one did, from the cursors where the last one ended
    assert m.step(Tick(130.2)) == [Gather(2, "a", "http://a", 2, 3), Gather(2, "b", "http://b", 0, 3)]


def test_records_at_or_below_the_cursor_are_not_counted_twice() -> None:
    m = solving()
    m.step(Solved(101.0, 1, PLAN, requests=1))
    m.step(Acknowledged(101.1, 1, "a"))
    m.step(Acknowledged(101.2, 1, "b"))
    m.step(Tick(130.2))
    m.step(Gathered(130.3, 2, "a", report("a"), ((2, rec(99.5)), (3, rec(130.0)))))
    (solve,) = m.step(Gathered(130.4, 2, "b", report("b"), ()))
    assert isinstance(solve, Solve) and solve.requests == (rec(99.0), rec(99.5), rec(130.0))


def test_a_full_page_asks_for_the_next_one() -> None:
    m = gathering()
    page = ((5, rec(99.0)), (6, rec(99.1)), (7, rec(99.2)))
    assert m.step(Gathered(100.3, 1, "a", report("a"), page)) == [Gather(1, "a", "http://a", 7, 3)]
    assert m.step(GatherFailed(100.4, 1, "b", "ConnectError")) == []
    (solve,) = m.step(Gathered(100.5, 1, "a", report("a"), ((8, rec(99.3)),)))
    assert isinstance(solve, Solve) and [n.node_id for n in solve.nodes] == ["a"] and len(solve.requests) == 4


def test_a_failed_gather_leaves_the_node_out_of_the_plan_and_its_commands() -> None:
    m = gathering()
    m.step(Gathered(100.3, 1, "a", report("a"), ()))
    assert m.step(GatherFailed(100.4, 1, "b", "ConnectTimeout")) == [Solve(1, (report("a"),), (), 100.4, {"a": {}})]
    out = m.step(Solved(101.0, 1, PLAN, requests=0))
    assert [(c.node, dict(c.instances)) for c in out if isinstance(c, Command)] == [("a", {})]


def test_transient_command_failures_are_retried_with_backoff_then_given_up() -> None:
    m, summary = commanding()
    assert m.step(Acknowledged(101.1, 1, "a")) == []
    assert m.step(CommandFailed(101.1, 1, "b", transient=True)) == []
    assert m.step(Tick(101.2)) == []
    again = Command(1, "b", "http://b", 3, {"m": 1}, summary)
    assert m.step(Tick(101.3)) == [again]  # 0.2 s after the first failure
    assert m.step(CommandFailed(101.3, 1, "b", transient=True)) == []
    assert m.step(Tick(101.6)) == []
    assert m.step(Tick(101.7)) == [again]  # 0.4 s after the second
    assert m.step(CommandFailed(101.7, 1, "b", transient=True)) == [Placed({**summary, "delivered": 1})]


def test_an_unreachable_node_is_not_retried() -> None:
    m, summary = commanding()
    m.step(Acknowledged(101.1, 1, "a"))
    assert m.step(CommandFailed(101.1, 1, "b", transient=False)) == [Placed({**summary, "delivered": 1})]


def test_fenced_stops_new_rounds_until_elected_again() -> None:
    m, _ = commanding()
    m.step(Fenced(101.1, 1, "a", highest=5))
    assert isinstance(m.step(Acknowledged(101.2, 1, "b"))[0], Placed)
    assert m.fenced_at == 5
    m.step(MembershipChanged(101.3, MEMBERS))  # a round is due at once, but another leader may hold a newer term
    assert m.step(Tick(101.1 + CFG.fence_pause_s - 0.1)) == []
    m.step(Elected(104.0, 6, MEMBERS))
    assert m.step(Tick(104.2)) == [Gather(2, "a", "http://a", 2, 3), Gather(2, "b", "http://b", 0, 3)]


def test_a_made_up_newer_term_pauses_rounds_for_a_few_seconds_only() -> None:
    """A member answering 409 with a term nobody holds once stopped the leader's rounds for good (1 round in
    75 s against 22): the election never heard of that term, so nothing deposed or re-elected the leader. Then
    each such 409 held the next round back a whole period (a lost board re-placed up to 30 s late). Now the pause
    is fence_pause_s (the agent: 4 election timeouts, ~5 s): a real newer term deposes the leader sooner."""
    m, _ = commanding()  # term 3
    m.step(Fenced(101.1, 1, "a", highest=3 + 10**9))
    assert isinstance(m.step(Acknowledged(101.2, 1, "b"))[0], Placed)
    m.step(MembershipChanged(101.3, {"a": "http://a"}))  # b is lost: a round is due at once
    assert m.step(Tick(101.1 + CFG.fence_pause_s - 0.1)) == []
    assert m.step(Tick(101.1 + CFG.fence_pause_s + 0.1))  # the next round starts, with our term
    assert m.fenced_at is None and m.term == 3


def test_a_refusal_at_or_below_our_term_stops_no_rounds() -> None:
    """One member answering 409 without a newer term (it follows no one yet, or it lies) must not stop the
    cluster's placement: only that node misses this round's command."""
    m, _ = commanding()  # term 3
    m.step(Fenced(101.1, 1, "a", highest=3))
    assert isinstance(m.step(Acknowledged(101.2, 1, "b"))[0], Placed)
    assert m.fenced_at is None
    assert m.step(Tick(200.0))  # the next round starts


def test_results_of_an_abandoned_round_are_ignored() -> None:
    m = gathering()
    assert m.step(Deposed(100.3)) == [] and m.phase is Phase.IDLE
    assert m.step(Gathered(100.3, 1, "a", report("a"), ((1, rec(99.0)),))) == []
    m.step(Elected(101.0, 4, MEMBERS))
    assert m.step(Gathered(101.1, 1, "a", report("a"), ())) == []  # round 1 belongs to the old tenure
    out = m.step(Tick(101.2))
    assert out == [Gather(2, "a", "http://a", 0, 3), Gather(2, "b", "http://b", 0, 3)]


def test_a_membership_change_during_a_round_brings_the_next_round_forward() -> None:
    m = gathering()
    assert m.step(MembershipChanged(100.25, {"a": "http://a"})) == []  # the running round keeps its members
    m.step(Gathered(100.3, 1, "a", report("a"), ()))
    m.step(Gathered(100.3, 1, "b", report("b"), ()))
    m.step(Solved(100.5, 1, {"instances": {}}, requests=0))
    m.step(Acknowledged(100.6, 1, "a"))
    assert isinstance(m.step(Acknowledged(100.6, 1, "b"))[0], Placed)
    assert m.step(Tick(100.65)) == [Gather(2, "a", "http://a", 0, 3)]  # due since 100.45: at once, without b


def test_a_stuck_round_times_out_and_a_failed_solve_waits_for_the_period() -> None:
    m = solving()
    assert m.step(Tick(160.1)) == [] and m.phase is Phase.SOLVING
    assert m.step(Tick(160.3)) == [] and m.phase is Phase.IDLE  # over 60 s since it began at 100.2: abandoned
    assert m.step(Tick(160.4)) == [Gather(2, "a", "http://a", 2, 3), Gather(2, "b", "http://b", 0, 3)]
    m.step(Gathered(160.8, 2, "a", report("a"), ()))
    m.step(Gathered(160.8, 2, "b", report("b"), ()))
    assert m.step(SolveFailed(161.0, 2, "BrokenProcessPool")) == [] and m.phase is Phase.IDLE
    assert m.step(Tick(190.3)) == []
    assert m.step(Tick(190.4)) != []  # the period after the failed round began


def test_the_request_window_is_bounded_by_age_and_count() -> None:
    m = elected(cfg=RoundConfig(debounce_s=0.0, window_s=10.0, max_window=4, page_limit=100))
    m.step(Tick(100.0))
    page = tuple((i, rec(85.0 + i)) for i in range(1, 7))  # ts 86..91
    m.step(Gathered(100.0, 1, "a", report("a"), page))
    (solve,) = m.step(Gathered(100.0, 1, "b", report("b"), ()))
    assert isinstance(solve, Solve)
    assert [r.ts for r in solve.requests] == [90.0, 91.0]  # 4 kept (count), then 88 and 89 are too old
    assert len(m.window) == 2
    assert {r.logged_by for r in solve.requests} == {"a"}  # whose log it came from, for the contention check


def test_cursors_are_kept_for_at_most_max_nodes() -> None:
    m = LeaderRound("a", RoundConfig(debounce_s=0.0, max_nodes=3))
    for i in range(10):
        members = {f"n{i}": f"http://n{i}", "a": "http://a"}
        m.step(Elected(float(i), 1, members))
        m.step(Tick(float(i)))
    assert len(m.cursors) == 3 and list(m.cursors) == ["n8", "n9", "a"]


def second_round(m: LeaderRound) -> None:
    """Finish round 1 (both acknowledged) and start round 2 at its period."""
    m.step(Acknowledged(101.1, 1, "a"))
    m.step(Acknowledged(101.2, 1, "b"))
    m.step(Tick(130.2))


def test_one_missed_gather_of_a_member_keeps_its_last_report_and_sends_it_no_command() -> None:
    """A gather timing out on a loaded board is not a lost node (that was a hard switch past hysteresis that
    started a replacement); a second miss in a row leaves the node out as before."""
    m, _ = commanding()
    second_round(m)
    m.step(Gathered(130.3, 2, "a", report("a", m=1), ()))
    (solve,) = m.step(GatherFailed(130.4, 2, "b", "ReadTimeout"))
    assert isinstance(solve, Solve) and solve.nodes == (report("a", m=1), report("b"))  # b's last report
    out = m.step(Solved(131.0, 2, PLAN, requests=0))
    assert [c.node for c in out if isinstance(c, Command)] == ["a"]  # nothing sent to b this round
    assert not any(isinstance(c, Command) for c in m.step(Acknowledged(131.1, 2, "a")))
    m.step(Tick(160.2))
    m.step(Gathered(160.3, 3, "a", report("a", m=1), ()))
    (solve,) = m.step(GatherFailed(160.4, 3, "b", "ReadTimeout"))
    assert isinstance(solve, Solve) and solve.nodes == (report("a", m=1),)  # two misses: out


def test_a_command_that_was_not_delivered_clears_that_nodes_target() -> None:
    """The next plan is weighed against what the node reports, not a target it never received."""
    m, _ = commanding()
    assert m.intent["b"] == {"m": 1}
    m.step(Acknowledged(101.1, 1, "a"))
    m.step(CommandFailed(101.2, 1, "b", transient=False))
    assert "b" not in m.intent and m.intent["a"] == {}  # a got its target (make-before-break holds m)


def held_each_round(m: LeaderRound, b_runs: list[int]) -> list[Any]:
    """Rounds 2.. after ``commanding``: a runs m, b runs ``b_runs[i]`` of m; the status quo each Solve carries."""
    m.step(Acknowledged(101.1, 1, "a"))
    m.step(Acknowledged(101.2, 1, "b"))
    out = []
    for i, b in enumerate(b_runs, start=2):
        t = 100.2 + 30.0 * (i - 1)
        m.step(Tick(t))
        m.step(Gathered(t + 0.1, i, "a", report("a", m=1), ()))
        (solve,) = m.step(Gathered(t + 0.2, i, "b", report("b", m=b) if b else report("b"), ()))
        assert isinstance(solve, Solve)
        out.append(dict(solve.held))
        m.step(Solved(t + 0.3, i, PLAN, requests=0))
        m.step(Acknowledged(t + 0.4, i, "a"))
        m.step(Acknowledged(t + 0.5, i, "b"))
    return out


def test_a_target_the_node_never_reaches_expires_after_target_rounds() -> None:
    """b's start keeps failing: its target counts as made for two rounds, then the status quo is what b reports
    (so a plan moving m to a healthy node is weighed against m not running on b, not held)."""
    m, _ = commanding()
    held = held_each_round(m, [0, 0, 0, 0])
    assert [h["b"] for h in held] == [{"m": 1}, {"m": 1}, {}, {"m": 1}]  # round 5: the plan's new target
    assert m.short == {("b", "m"): 1}  # the new target counts its rounds afresh
    never = LeaderRound("a", RoundConfig(**{**CFG.__dict__, "target_rounds": 10**6}))  # expiry off: the checker
    never.step(Elected(100.0, 3, MEMBERS))
    never.step(Tick(100.2))
    never.step(Gathered(100.3, 1, "a", report("a", m=1), ()))
    never.step(Gathered(100.4, 1, "b", report("b"), ()))
    never.step(Solved(101.0, 1, PLAN, requests=1))
    assert [h["b"] for h in held_each_round(never, [0, 0, 0, 0])] == [{"m": 1}] * 4  # would be held forever


def test_a_target_the_node_reaches_stops_counting_and_a_raised_target_gets_fresh_rounds() -> None:
    m, _ = commanding()
    held = held_each_round(m, [0, 0, 1, 0, 0])  # short twice, then met (count cleared), then short twice again
    assert [h["b"] for h in held] == [{"m": 1}] * 5 and m.short == {("b", "m"): 2}
    m.step(Tick(1000.0))
    m.step(Gathered(1000.1, 7, "a", report("a", m=1), ()))
    m.step(Gathered(1000.2, 7, "b", report("b"), ()))
    m.step(Solved(1000.3, 7, {**PLAN, "instances": {"b": {"m": 2}}}, requests=0))  # target raised to 2
    assert m.intent["b"] == {"m": 2} and ("b", "m") not in m.short
    assert len(m.short) <= sum(len(t) for t in m.intent.values())  # bounded by the targets


def test_the_summary_carries_the_plans_idle_running_instances() -> None:
    """A Mode 1 plan past the instance bound keeps instances running without traffic
    (``details["idle_running"]``, solver.queue_running); every agent's summary names them, so its endpoint
    answers spread over the instances the plan serves with (agent.decisions.spread_choice)."""
    m = solving()
    details = {"spread": [], "planned_queue": {"b": {"m": 0.5}}, "idle_running": {"a": {"m": 1}}}
    out = m.step(Solved(101.0, 1, {**PLAN, "details": details}, requests=1))
    assert isinstance(out[0], Command)
    assert out[0].summary["idle_running"] == {"a": {"m": 1}} and out[0].summary["planned_queue"] == {"b": {"m": 0.5}}


def test_the_request_window_is_bounded_by_bytes_too() -> None:
    """Records with 128-character client ids from one node fill its share of a 2,000-byte budget; the other node's
    short record stays; the solve carries the budget for the worker's copy."""
    m = elected(cfg=RoundConfig(debounce_s=0.0, window_s=600.0, max_window=100, max_window_bytes=2000, page_limit=100))
    m.step(Tick(100.0))
    m.step(Gathered(100.0, 1, "a", report("a"), ((1, rec(99.0)),)))
    page = tuple((i, rec(90.0 + i / 10, "x" * 128)) for i in range(1, 40))
    (solve,) = m.step(Gathered(100.0, 1, "b", report("b"), page))
    assert isinstance(solve, Solve) and solve.window_config is not None and solve.window_config[3] == 2000
    assert m.window.nbytes <= 2000 and [r.logged_by for r in solve.requests].count("a") == 1
    assert 0 < [r.logged_by for r in solve.requests].count("b") < 39  # b's newest that fit


def test_a_record_stamped_in_the_future_or_nan_holds_no_older_one_in_the_window() -> None:
    m = elected(cfg=RoundConfig(debounce_s=0.0, window_s=10.0, max_window=100, page_limit=100))
    m.step(Tick(100.0))
    page = ((1, rec(1e12)), (2, rec(float("nan"))), (3, rec(50.0)), (4, rec(95.0)), (5, rec(159.0)), (6, rec(161.0)))
    m.step(Gathered(100.0, 1, "a", report("a"), page))
    (solve,) = m.step(Gathered(100.0, 1, "b", report("b"), ((1, rec(80.0)), (2, rec(99.0)))))
    assert isinstance(solve, Solve)
    # the far-future and NaN stamps are left out, and so is 50 s behind them; up to 60 s ahead is a clock's skew
    assert [r.ts for r in solve.requests] == [95.0, 159.0, 99.0]
    assert len(m.window) == 3


def test_a_deposed_leader_keeps_no_journal_of_its_window() -> None:
    """Stepping down stops the solver worker: the window's journal (up to the window's bound of records) is dropped,
    and the next tenure's first delta says so (its new worker starts from the whole window)."""
    m = gathering()
    m.step(Gathered(100.3, 1, "a", report("a"), ((1, rec(99.0)), (2, rec(99.5)))))
    assert m.window.journal_records() == 2
    m.step(Deposed(100.4))
    assert m.window.journal_records() == 0 and m.window.take_delta().gap
    assert len(m.window.records()) == 2  # the records themselves stay: a new tenure reads them


# -- a leader that moves itself to a newer term keeps its round (review13a F2) -----------------------------------------
def test_a_move_to_a_newer_term_while_gathering_keeps_the_round_and_commands_with_the_new_term() -> None:
    m = gathering()  # term 3, round 1 gathering
    assert m.step(Elected(100.25, 4, MEMBERS)) == [] and m.phase is Phase.GATHERING and m.term == 4
    assert m.step(Tick(100.45)) == []  # no new round: the one in progress goes on
    m.step(Gathered(100.3, 1, "a", report("a", m=1), ()))
    assert isinstance(m.step(Gathered(100.4, 1, "b", report("b"), ()))[0], Solve)
    out = m.step(Solved(101.0, 1, PLAN, requests=1))
    assert [(c.round, c.node, c.term) for c in out if isinstance(c, Command)] == [(1, "a", 4), (1, "b", 4)]


def test_a_move_while_commanding_resends_a_command_fenced_by_a_node_already_at_the_new_term() -> None:
    m, summary = commanding()  # commands of term 3 out
    assert m.step(Elected(101.05, 5, MEMBERS)) == [] and m.phase is Phase.COMMANDING
    assert m.step(Acknowledged(101.1, 1, "a")) == []
    assert m.step(Fenced(101.1, 1, "b", highest=5)) == []  # b moved to 5 before our term-3 command reached it
    assert m.step(Tick(101.15)) == [Command(1, "b", "http://b", 5, {"m": 1}, summary)]
    assert m.step(Acknowledged(101.2, 1, "b")) == [Placed({**summary, "delivered": 2})]
    assert m.fenced_at is None


def test_a_move_past_a_term_we_were_told_of_lifts_the_fence_pause() -> None:
    m, _ = commanding()
    m.step(Fenced(101.1, 1, "a", highest=5))
    m.step(Acknowledged(101.2, 1, "b"))
    assert m.fenced_until is not None
    m.step(Elected(101.3, 6, MEMBERS))  # the election moved us past it: no reason to wait
    assert m.fenced_at is None and m.fenced_until is None


def test_resends_after_a_move_are_bounded_by_max_attempts() -> None:
    m, summary = commanding()
    m.step(Elected(101.05, 5, MEMBERS))
    m.step(Acknowledged(101.1, 1, "a"))
    sent = 1
    now = 101.1
    while True:
        out = m.step(Fenced(now, 1, "b", highest=4))  # b keeps refusing (it lies, or sits between our terms)
        if out:
            assert out == [Placed({**summary, "delivered": 1})]
            break
        now += 0.01
        assert m.step(Tick(now)) == [Command(1, "b", "http://b", 5, {"m": 1}, summary)]
        sent += 1
    assert sent == CFG.max_attempts


def test_a_skewed_nodes_records_are_stamped_on_the_leaders_clock() -> None:
    """A board whose clock reads 25 s behind stamps a request of 8 s ago at now - 33, one 25 s ahead at now + 17:
    judged by those stamps the first left a 10 s window 25 s early (here: at once). Moved by the offset its answer's
    signed stamp shows, each is as old on the leader's clock as it really is, and both stay in the window."""
    cfg = RoundConfig(debounce_s=0.0, window_s=10.0, page_limit=100)
    for ahead, kept in ((0.0, [92.0]), (-25.0, [92.0, 92.0])):  # without the offset, the slow board's record is gone
        m = elected(cfg=cfg)
        m.step(Tick(100.0))
        m.step(Gathered(100.0, 1, "a", report("a"), ((1, rec(92.0)),)))
        (solve,) = m.step(Gathered(100.0, 1, "b", report("b"), ((1, rec(100.0 - 8 - 25)),), ahead))
        assert isinstance(solve, Solve) and sorted(r.ts for r in solve.requests) == kept, ahead
    m = elected(cfg=cfg)
    m.step(Tick(100.0))
    m.step(Gathered(100.0, 1, "a", report("a"), ((1, rec(100.0 - 8 + 25)),), 25.0))
    (solve,) = m.step(Gathered(100.0, 1, "b", report("b"), ()))
    assert isinstance(solve, Solve) and [r.ts for r in solve.requests] == [92.0]  # the fast board's, on our clock


def test_the_summary_carries_the_nodes_slots_for_the_endpoint_rule_lef() -> None:
    """Every agent's summary names each gathered node's reported concurrency (``slots``): the endpoint rule
    ``lef`` weighs a peer's queue by it (peerserve.dispatch.node_slots); a node that reported none is left out
    (one slot), and with none reported there is no entry."""
    m = gathering()
    a = dataclasses.replace(report("a", m=1), cores=4.0, concurrency=2.0)
    m.step(Gathered(100.3, 1, "a", a, ()))
    m.step(Gathered(100.4, 1, "b", report("b"), ()))
    out = m.step(Solved(101.0, 1, PLAN, requests=0))
    assert isinstance(out[0], Command)
    assert out[0].summary["slots"] == {"a": 2.0}
    _, summary = commanding()
    assert "slots" not in summary
