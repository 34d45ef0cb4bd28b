"""The client's pure core (client/ops.py): error mapping by code, failover order, RTT aggregation, targets."""

from __future__ import annotations

import httpx
import pytest

from client.errors import ClusterUnreachableError, NoCapacityError, NotReadyError, RequestError, UnknownModelError
from client.ops import Browse, Call, ClientCore, Endpoint, aggregate_rtts, error_for, fails_over, targets


def answer(status: int, body: object, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def test_errors_are_chosen_by_code_not_by_wording() -> None:
    worded = {"error": "something about the catalogue"}
    assert isinstance(error_for(answer(404, worded, **{"X-Peerserve-Error": "unknown_model"})), UnknownModelError)
    assert isinstance(error_for(answer(404, worded)), RequestError)  # a model server's 404: not "unknown model"
    assert isinstance(error_for(answer(507, {"error": "x"}, **{"X-Peerserve-Error": "no_capacity"})), NoCapacityError)
    busy = error_for(answer(503, {"error": "x"}, **{"X-Peerserve-Error": "provisioning", "Retry-After": "2"}))
    assert isinstance(busy, NotReadyError) and busy.retry_after == 2.0
    bad = error_for(answer(400, {"error": "Malformed request"}, **{"X-Peerserve-Error": "bad_path"}))
    assert isinstance(bad, RequestError) and bad.code == "bad_path" and bad.status == 400
    assert error_for(answer(200, {"predictions": []})) is None


def test_failover_order_tries_agents_in_turn_and_remembers_the_one_that_answered() -> None:
    core = ClientCore(["http://a", "http://b", "http://c"], "me", None, 60.0, None)
    op = core.ask("GET", "/cluster", dict)
    call = next(op)
    assert isinstance(call, Call) and call.url == "http://a/cluster" and call.headers["X-Peerserve-Client"] == "me"
    call = op.send(httpx.ConnectError("refused"))
    assert isinstance(call, Call) and call.url == "http://b/cluster"
    call = op.send(answer(500, {"error": "boom"}))  # a broken agent: next one
    assert isinstance(call, Call) and call.url == "http://c/cluster"
    with pytest.raises(StopIteration) as done:
        op.send(answer(200, {"node_id": "c"}))
    assert done.value.value == ("http://c", {"node_id": "c"})
    assert core.agents[0] == "http://c"
    assert not fails_over(503) and not fails_over(507) and fails_over(502)


def test_no_agent_answering_is_cluster_unreachable_and_no_agent_known_browses() -> None:
    core = ClientCore(["http://a"], "me", None, 60.0, None)
    op = core.ask("GET", "/cluster", dict)
    next(op)
    with pytest.raises(ClusterUnreachableError):
        op.send(httpx.ConnectError("refused"))
    empty = ClientCore([], "me", ["127.0.0.1"], 60.0, None)
    empty.agents = []
    op = empty.ordered_agents()
    assert next(op) == Browse(("127.0.0.1",))
    with pytest.raises(ClusterUnreachableError):
        op.send([])


def test_rtts_are_medians_and_targets_are_best_then_one_alternative() -> None:
    assert aggregate_rtts({"n1": [3.0, 1.0, 2.0], "n2": [], "n3": [5.0]}) == {"n1": 2.0, "n3": 5.0}
    alt = Endpoint("m", "n2", "http://n2:1")
    chosen = Endpoint("m", "n1", "http://n1:1", alternatives=(alt, Endpoint("m", "n3", "http://n3:1")))
    assert targets(chosen) == ["http://n1:1", "http://n2:1"]


@pytest.mark.parametrize("inference", [False, True])
def test_a_question_fails_over_within_its_budget_however_many_agents_are_down(inference: bool) -> None:
    """128 listed agents, each failing after the 5 s a non-answering one costs (the clock passed in): the first
    is asked with its call's own deadline; the budget (20 s) starts when it returns, and the next ones are asked
    only while it lasts: an inference with its call's own deadline each, a control call's at most what is left;
    then ClusterUnreachableError (before edge15: all 128 asked, 640 s)."""
    now = [0.0]
    core = ClientCore([f"http://a{i}" for i in range(128)], "me", None, 60.0, None, clock=lambda: now[0],
                      ask_budget_s=20.0)  # fmt: skip
    op = core.ask("POST" if inference else "GET", "/x", dict, inference=inference)
    calls = [next(op)]
    with pytest.raises(ClusterUnreachableError, match=r"within 20 s after the first failed \(5 of 128 asked\)"):
        while True:
            call = calls[-1]
            assert isinstance(call, Call)
            spent = 5.0 if call.deadline_s is None else min(5.0, call.deadline_s)
            now[0] += spent
            calls.append(op.send(httpx.ReadTimeout("no answer")))
    first, *rest = calls
    assert isinstance(first, Call) and first.deadline_s == (None if inference else 10.0)  # its own, whole
    left = [None] * 4 if inference else [10.0, 10.0, 10.0, 5.0]  # a control call: the budget's rest, 10 s at most
    assert [c.deadline_s for c in rest if isinstance(c, Call)] == left
    assert now[0] == 25.0  # the first's 5 s + the budget


def test_a_first_agent_holding_its_whole_deadline_leaves_the_budget_for_the_others() -> None:
    """review15c F1 (a): the budget's clock started before the first agent was asked, so one holding its call's
    whole deadline (a trickler, or just slow) left nobody else asked. A timeout=1 client (budget 4 s) whose first
    agent holds its 10 s control deadline asks the next with 4 s (before: ClusterUnreachableError at 10 s); an
    inference whose first agent holds 60 s asks the next with its own deadline (before: raised, 1 of 3 asked)."""
    now = [0.0]
    core = ClientCore(["http://trickler", "http://honest"], "me", None, 60.0, None, clock=lambda: now[0],
                      ask_budget_s=4.0)  # fmt: skip
    op = core.ask("GET", "/cluster", dict)
    assert next(op).deadline_s == 10.0
    now[0] += 10.0
    second = op.send(httpx.ReadTimeout("deadline passed"))
    assert isinstance(second, Call) and second.url == "http://honest/cluster" and second.deadline_s == 4.0
    now = [0.0]
    core = ClientCore([f"http://a{i}" for i in range(3)], "me", None, 60.0, None, clock=lambda: now[0])
    op = core.ask("POST", "/x", dict, inference=True)
    assert next(op).deadline_s is None
    now[0] += 60.0
    second = op.send(httpx.ReadTimeout("call deadline"))
    assert isinstance(second, Call) and second.url == "http://a1/x" and second.deadline_s is None


def test_an_inference_on_a_later_agent_is_not_cut_short() -> None:
    """review15c F1 (b): with the first agent down (refused at once) the second was asked with the budget's rest
    (19.999 s of 20), cutting an honest 30 s model answer; now it has the call's own deadline, and so does an agent
    asked just before the budget runs out (worst case: first deadline + budget + one deadline)."""
    now = [0.0]
    core = ClientCore([f"http://a{i}" for i in range(4)], "me", None, 60.0, None, clock=lambda: now[0])
    op = core.ask("POST", "/x", dict, inference=True)
    next(op)
    now[0] += 0.001
    second = op.send(httpx.ConnectError("refused"))
    assert isinstance(second, Call) and second.deadline_s is None
    now[0] += core.ask_budget_s - 0.002  # the second fails just inside the budget
    third = op.send(httpx.ReadTimeout("no answer"))
    assert isinstance(third, Call) and third.url == "http://a2/x" and third.deadline_s is None
    now[0] += 60.0
    with pytest.raises(ClusterUnreachableError, match=r"3 of 4 asked"):
        op.send(httpx.ReadTimeout("no answer"))


def test_the_budget_is_positive_and_a_quick_failure_leaves_room_for_every_agent() -> None:
    with pytest.raises(ValueError, match="ask_budget_s"):
        ClientCore(["http://a"], "me", None, 60.0, None, ask_budget_s=0.0)
    now = [0.0]
    core = ClientCore([f"http://a{i}" for i in range(128)], "me", None, 60.0, None, clock=lambda: now[0])
    op = core.ask("GET", "/x", dict)
    call = next(op)
    asked = 1
    for _ in range(127):  # refused at once (closed ports): 1 ms each, every agent is asked
        now[0] += 0.001
        call = op.send(httpx.ConnectError("refused"))
        asked += 1
    assert isinstance(call, Call) and call.url == "http://a127/x" and asked == 128
    with pytest.raises(ClusterUnreachableError, match="no agent answered /x: refused"):
        op.send(httpx.ConnectError("refused"))


def stopping_answer() -> httpx.Response:
    """What a stopping agent answers a request it would have had to provision for (agent/serving/routes.py)."""
    why = {"error": "agent shutting down: m is not started here; retry on another agent"}
    return answer(503, why, **{"X-Peerserve-Error": "shutting_down", "Retry-After": "2"})


@pytest.mark.parametrize("inference", [False, True])
def test_an_agent_that_is_stopping_hands_the_question_to_the_next(inference: bool) -> None:
    """review19c F3: ``shutting_down`` is about that agent, not the model, and it ran nothing; the client raised
    NotReadyError at once and asked nobody else, though the next agent could provision the model. Now it asks the
    next agent, and remembers the one that answered."""
    core = ClientCore(["http://a", "http://b", "http://c"], "me", None, 60.0, None)
    op = core.ask("POST" if inference else "GET", "/x", dict, inference=inference)
    assert next(op).url == "http://a/x"
    call = op.send(stopping_answer())
    assert isinstance(call, Call) and call.url == "http://b/x"
    with pytest.raises(StopIteration) as done:
        op.send(answer(200, {"predictions": [1]}))
    assert done.value.value == ("http://b", {"predictions": [1]}) and core.agents[0] == "http://b"


def test_not_ready_only_when_no_agent_is_left_and_provisioning_still_raises_at_once() -> None:
    for others in (stopping_answer(), httpx.ConnectError("refused"), answer(500, {"error": "boom"})):
        core = ClientCore(["http://a", "http://b", "http://c"], "me", None, 60.0, None)
        op = core.ask("GET", "/x", dict)
        asked = [next(op)]
        with pytest.raises(NotReadyError) as stopped:
            asked.append(op.send(stopping_answer()))
            asked.append(op.send(others))
            op.send(others)
        assert [c.url for c in asked if isinstance(c, Call)] == ["http://a/x", "http://b/x", "http://c/x"]
        assert stopped.value.retry_after == 2.0 and "shutting down" in str(stopped.value)
    busy = answer(503, {"error": "being provisioned"}, **{"X-Peerserve-Error": "provisioning", "Retry-After": "3"})
    op = ClientCore(["http://a", "http://b"], "me", None, 60.0, None).ask("GET", "/x", dict)
    next(op)
    with pytest.raises(NotReadyError) as provisioning:  # about the model: the next agent would say the same
        op.send(busy)
    assert provisioning.value.retry_after == 3.0


def test_a_stopping_agent_then_a_spent_budget_is_not_ready() -> None:
    now = [0.0]
    core = ClientCore([f"http://a{i}" for i in range(4)], "me", None, 60.0, None, clock=lambda: now[0],
                      ask_budget_s=4.0)  # fmt: skip
    op = core.ask("GET", "/x", dict)
    next(op)
    second = op.send(stopping_answer())
    assert isinstance(second, Call) and second.url == "http://a1/x"
    now[0] += 10.0
    with pytest.raises(NotReadyError, match="shutting down"):
        op.send(httpx.ReadTimeout("no answer"))
