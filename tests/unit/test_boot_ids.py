"""Boot ids (review16a F2, R1/R2): a request made for one run of a node never acts on the next, whatever the clocks.

The wire context, the receiver's refusal (signed, naming its current id, rate-limited), the sender's decisions
(agent.boot_ids: which id to name, when to retry, the bounded table) and the whole round trip through the real
peer routes and client, with the receiver restarted in between."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import boot_ids
from agent.boot_ids import BootTable, old_agent, retry_boot
from agent.identity import WINDOW_S, AuthError, Identity, StaleBoot
from agent.node import NodeAgent
from agent.peer_api import create_peer_app
from agent.peer_client import PeerClient
from agent.settings import load_settings
from peerserve import wire

TOKEN = "boot-id-cluster-token-0123456789"
NOW = 1_800_000_000.0
BODY = b'{"term":3,"leader":"a","instances":{}}'
BOOT_1, BOOT_2 = "1" * 32, "2" * 32


def request(sender: Identity, to: str, boot: str | None, now: float = NOW, body: bytes = BODY) -> dict[str, str]:
    return dict(sender.sign_request(to, "PUT", wire.ROUTE_DESIRED, body, now, boot).headers)


def verify(receiver: Identity, headers: dict[str, str], now: float = NOW, body: bytes = BODY) -> str:
    return receiver.verify_request(headers, "PUT", wire.ROUTE_DESIRED, body, now, mono=now)


# -- the wire context ----------------------------------------------------------------------------------
def test_v2_signing_bytes_name_the_boot_id_and_differ_from_v1() -> None:
    v1 = wire.request_signing_bytes("a", "b", "put", "/x", b"{}", "1.000", "nonce123")
    v2 = wire.request_signing_bytes("a", "b", "put", "/x", b"{}", "1.000", "nonce123", BOOT_1)
    other = wire.request_signing_bytes("a", "b", "put", "/x", b"{}", "1.000", "nonce123", BOOT_2)
    assert v1.split(b"\n")[:3] == [b"peerserve-request-v1", b"a", b"b"]
    assert v2.split(b"\n")[:4] == [b"peerserve-request-v2", b"a", b"b", BOOT_1.encode()]
    assert len({v1, v2, other}) == 3
    assert wire.valid_boot(BOOT_1) and wire.valid_boot(wire.UNKNOWN_BOOT)
    assert not any(wire.valid_boot(v) for v in ("", "1" * 31, "1" * 33, "A" * 32, "g" * 32, " " + "1" * 31))


def test_a_signature_for_one_context_does_not_verify_as_the_other(tmp_path: Path) -> None:
    """A v2 request with its boot header stripped (v1), or with another id put in, fails the signature."""
    a, b = Identity("a", TOKEN, tmp_path / "a"), Identity("b", TOKEN, tmp_path / "b", boot_id=BOOT_1)
    headers = request(a, "b", BOOT_1)
    stripped = {k: v for k, v in headers.items() if k != wire.H_BOOT}
    with pytest.raises(AuthError, match="bad signature"):
        verify(b, stripped)
    with pytest.raises(AuthError, match="bad signature"):
        verify(b, {**headers, wire.H_BOOT: BOOT_2})
    with pytest.raises(AuthError, match="malformed boot id") as bad:
        verify(b, {**headers, wire.H_BOOT: "x" * 32})
    assert bad.value.status == 400
    assert verify(b, headers) == "a"


# -- the receiver --------------------------------------------------------------------------------------
def test_each_start_draws_its_own_boot_id(tmp_path: Path) -> None:
    ids = {Identity("b", TOKEN, tmp_path / "b").boot_id for _ in range(4)}  # same data dir: same key, new runs
    assert len(ids) == 4 and all(wire.BOOT_ID.fullmatch(i) for i in ids)
    with pytest.raises(ValueError):
        Identity("b", TOKEN, None, boot_id="-")


def test_a_request_captured_before_a_restart_is_refused_after_it_within_the_window(tmp_path: Path) -> None:
    """R1: used at T, replayed to the restarted node at T + 5 s (its nonce cache is empty): refused, signed refusal
    naming the new run's id; its nonce is spent (nothing acted; a repeat is "replayed"). The same request with v1
    bytes, as main signed every request, is accepted by the restarted node: what boot ids close."""
    a = Identity("a", TOKEN, tmp_path / "a")
    before = Identity("b", TOKEN, tmp_path / "b", boot_id=BOOT_1)
    captured = request(a, "b", BOOT_1)
    assert verify(before, captured) == "a"
    with pytest.raises(AuthError, match="replay"):
        verify(before, captured, NOW + 1)  # the running node refuses it by its nonce
    after = Identity("b", TOKEN, tmp_path / "b", boot_id=BOOT_2)  # restarted: same key, empty nonce cache
    with pytest.raises(StaleBoot) as refused:
        verify(after, captured, NOW + 5)
    assert refused.value.status == wire.STALE_BOOT == 421
    assert refused.value.answer()["boot_id"] == BOOT_2 and refused.value.sender == "a"
    assert refused.value.nonce == captured[wire.H_NONCE] and len(after.nonces) == 1
    assert after.stale_boot_refused == 1
    with pytest.raises(AuthError, match="replayed") as again:  # the same capture once more: no second refusal
        verify(after, captured, NOW + 6)
    assert not isinstance(again.value, StaleBoot) and again.value.status == 401 and after.stale_boot_refused == 1
    v1 = request(a, "b", None)
    assert verify(Identity("b", TOKEN, tmp_path / "b", boot_id=BOOT_1), v1) == "a"
    assert verify(Identity("b", TOKEN, tmp_path / "b", boot_id=BOOT_2), v1, NOW + 5) == "a"  # v1: the old window


@pytest.mark.parametrize("stamp_ahead_s", [0.0, 29.0])
def test_a_request_held_in_the_future_across_a_restart_is_refused_whatever_the_clock(
    tmp_path: Path, stamp_ahead_s: float
) -> None:
    """R2: a message stamped ahead (an excursion's), replayed to the restarted node whose clock reads within the
    window of its stamp, at any reading: refused by its boot id, never by a clock rule."""
    a = Identity("a", TOKEN, tmp_path / "a")
    captured = request(a, "b", BOOT_1, NOW + stamp_ahead_s)
    for now in (NOW, NOW + stamp_ahead_s, NOW + stamp_ahead_s + WINDOW_S):
        after = Identity("b", TOKEN, tmp_path / "b", boot_id=BOOT_2)  # restarted, its clock reading ``now``
        with pytest.raises(StaleBoot):
            verify(after, captured, now)


def test_unknown_boot_is_answered_with_ours_and_a_stale_one_is_refused_after_the_pin_and_freshness(
    tmp_path: Path,
) -> None:
    """The refusal is made only for an authentic, fresh request from the pinned key: anything else gets the
    ordinary unsigned refusal first (no signature made for a stranger or an old replay)."""
    a, b = Identity("a", TOKEN, tmp_path / "a"), Identity("b", TOKEN, tmp_path / "b", boot_id=BOOT_1)
    with pytest.raises(StaleBoot) as first:
        verify(b, request(a, "b", wire.UNKNOWN_BOOT))
    assert first.value.boot_id == BOOT_1
    with pytest.raises(AuthError, match=r"apart|ahead|behind") as old:
        verify(b, request(a, "b", BOOT_2, NOW - 2 * WINDOW_S))
    assert not isinstance(old.value, StaleBoot)
    impostor = Identity("a", TOKEN, tmp_path / "impostor")  # another key for the pinned id
    with pytest.raises(AuthError) as other_key:
        verify(b, request(impostor, "b", BOOT_2))
    assert other_key.value.status == 403 and not isinstance(other_key.value, StaleBoot)


def test_replays_of_one_stale_request_cannot_spend_the_senders_refusals(tmp_path: Path) -> None:
    """review19e F2: a captured request naming another run, replayed many times, is refused signed once and then as
    replayed (unsigned, nothing spent for the sender); the sender's own requests are each answered with the signed
    refusal that teaches it this run's id, however many came before (each is a signature it made anew)."""
    a = Identity("a", TOKEN, tmp_path / "a")
    b = Identity("b", TOKEN, tmp_path / "b", boot_id=BOOT_1)
    captured = request(a, "b", BOOT_2)
    kinds: list[str | int] = []
    for _ in range(100):
        try:
            verify(b, captured)
        except AuthError as exc:
            kinds.append(type(exc).__name__ if isinstance(exc, StaleBoot) else exc.status)
    assert kinds == ["StaleBoot"] + [401] * 99 and b.stale_boot_refused == 1
    for n in range(100):  # the sender's own, after the restart (naming the old run, or "-" after its own restart)
        with pytest.raises(StaleBoot) as refused:
            verify(b, request(a, "b", wire.UNKNOWN_BOOT if n % 2 else BOOT_2))
        assert refused.value.answer()["boot_id"] == BOOT_1
    assert verify(b, request(a, "b", BOOT_1)) == "a"


def test_v1_requests_are_accepted_for_an_upgrade_and_refused_when_switched_off(tmp_path: Path) -> None:
    a = Identity("a", TOKEN, tmp_path / "a")
    strict = Identity("b", TOKEN, tmp_path / "b", boot_id=BOOT_1, accept_v1=False)
    with pytest.raises(AuthError, match="older than boot ids") as refused:
        verify(strict, request(a, "b", None))
    assert refused.value.status == 401 and strict.v1_refused == 1
    assert verify(strict, request(a, "b", BOOT_1)) == "a"


# -- the sender's decisions ----------------------------------------------------------------------------
def test_retry_only_a_v2_request_refused_stale_naming_a_new_well_formed_id() -> None:
    ok = {"error": "x", "boot_id": BOOT_2}
    assert retry_boot(421, ok, BOOT_1) == BOOT_2
    assert retry_boot(421, ok, wire.UNKNOWN_BOOT) == BOOT_2
    assert retry_boot(421, ok, None) is None  # a v1 request: not ours to retry
    assert retry_boot(421, ok, BOOT_2) is None  # the same id again: no loop
    assert retry_boot(409, ok, BOOT_1) is None
    assert retry_boot(421, {"boot_id": "-"}, BOOT_1) is None
    assert retry_boot(421, {"boot_id": 5}, BOOT_1) is None
    assert retry_boot(421, [BOOT_2], BOOT_1) is None


def test_an_older_agent_is_told_by_its_bad_signature_refusal_of_a_v2_request() -> None:
    assert old_agent(401, "bad signature", BOOT_1)
    assert old_agent(401, "bad signature", wire.UNKNOWN_BOOT)
    assert not old_agent(401, "bad signature", None)  # v1 already
    assert not old_agent(401, "a message signed by a is 40 s behind", BOOT_1)
    assert not old_agent(403, "bad signature", BOOT_1)


def test_the_boot_table_is_bounded_least_recently_used_and_v1_ends() -> None:
    table = BootTable(limit=3)
    assert table.boot_for("n0", 0.0) == wire.UNKNOWN_BOOT
    for n in range(3):
        table.learn(f"n{n}", BOOT_1)
    assert table.boot_for("n0", 0.0) == BOOT_1  # used: n1 is now the least recently used
    table.learn("n3", BOOT_2)
    assert len(table) == 3 and table.boot_for("n1", 0.0) == wire.UNKNOWN_BOOT
    assert [table.boot_for(n, 0.0) for n in ("n0", "n2", "n3")] == [BOOT_1, BOOT_1, BOOT_2]
    table.ask_v1("n0", 10.0)
    assert table.boot_for("n0", 10.0 + boot_ids.V1_ONLY_S - 1) is None
    assert table.boot_for("n0", 10.0 + boot_ids.V1_ONLY_S) == wire.UNKNOWN_BOOT  # asked v2 again: learns anew
    for n in range(10):
        table.ask_v1(f"v{n}", 0.0)
    assert len(table._v1) == 3
    with pytest.raises(ValueError):
        BootTable(limit=0)


# -- the round trip: real peer routes and client, the receiver restarted ----------------------------------
def _agent(tmp_path: Path, accept_v1: bool = True) -> NodeAgent:
    overrides = {"node_id": "b", "data_dir": str(tmp_path / "b"), "cluster_token": TOKEN, "mdns": False,
                 "discovery": False, "peer_v1_requests": accept_v1}  # fmt: skip
    return NodeAgent(load_settings(env={}, overrides=overrides))


def test_through_the_routes_a_replay_after_restart_is_refused_and_the_client_carries_on(tmp_path: Path) -> None:
    """agent.peer_api and agent.peer_client together: the client learns b's id from its first (signed) refusal
    and retries once; a request it made is replayed to b restarted (same data dir, new run): 421, signed, the
    command not applied; the client's next call to the new run is refused once, learns the id, and succeeds."""
    a = Identity("a", TOKEN, tmp_path / "a")

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        sent: list[tuple[dict[str, str], bytes]] = []
        b = _agent(tmp_path)
        assert b.identity is not None

        def transport(agent: NodeAgent) -> httpx.AsyncClient:
            assert agent.identity is not None
            inner = httpx.ASGITransport(app=create_peer_app(agent, agent.identity))

            class Recording(httpx.AsyncBaseTransport):  # the attacker's copy of what a sent
                async def handle_async_request(self, req: httpx.Request) -> httpx.Response:
                    body = await req.aread()
                    sent.append(({k: v for k, v in req.headers.items()}, body))
                    return await inner.handle_async_request(req)

            return httpx.AsyncClient(transport=Recording())

        client = PeerClient(a, {"http://b": ("b", "http://b")}.get, http=transport(b))
        body = {"term": 2, "leader": "a", "instances": {}}
        status, answer = await client.call("b", "http://b", "PUT", wire.ROUTE_DESIRED, body=body)
        out["first"] = (status, answer.get("accepted"), client.boots.learnt, len(sent))
        captured = sent[-1]
        await b.stop()
        b2 = _agent(tmp_path)  # the restart: same key and store, new boot id, empty nonce cache
        assert b2.identity is not None and b2.identity.boot_id != b.identity.boot_id
        replay = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_peer_app(b2, b2.identity)))
        r = await replay.put("http://b" + wire.ROUTE_DESIRED, content=captured[1], headers=captured[0])
        a.verify_response(r.headers, "b", r.status_code, captured[0][wire.H_NONCE], r.content, b2.clock())
        out["replay"] = (r.status_code, r.json()["boot_id"] == b2.identity.boot_id, len(b2.identity.nonces))
        again = await replay.put("http://b" + wire.ROUTE_DESIRED, content=captured[1], headers=captured[0])
        out["again"] = (again.status_code, wire.H_SIGNATURE in again.headers, b2.identity.stale_boot_refused)
        await replay.aclose()
        client.http = transport(b2)
        status, answer = await client.call("b", "http://b", "GET", wire.ROUTE_STATE)
        out["after"] = (status, answer["node_id"], client.boots.learnt, b2.identity.stale_boot_refused)
        status, answer = await client.call("b", "http://b", "PUT", wire.ROUTE_DESIRED, body={**body, "term": 3})
        out["command"] = (status, answer.get("term"), client.boots.learnt)
        await client.close()
        await b2.stop()
        return out

    out = asyncio.run(scenario())
    assert out["first"] == (200, True, 1, 2)  # unknown id: refused once, learnt, retried
    assert out["replay"] == (421, True, 1)  # refused, signed, naming the new run; its nonce spent (acted on nothing)
    assert out["again"] == (401, False, 1)  # the same capture again: "replayed", unsigned, no second refusal made
    assert out["after"] == (200, "b", 2, 2)  # one refusal (the replay), one retry: no outage
    assert out["command"] == (200, 3, 2)  # no further refusal


def test_the_swim_route_refuses_a_stale_boot_signed(tmp_path: Path) -> None:
    """POST /peer/swim (agent.peer_swim_route, ahead of FastAPI) answers the same signed refusal."""
    a = Identity("a", TOKEN, tmp_path / "a")

    async def scenario() -> tuple[int, str, str]:
        b = _agent(tmp_path)
        assert b.identity is not None
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_peer_app(b, b.identity)))
        content = json.dumps({"kind": "ping", "node_id": "a"}).encode()
        signed = a.sign_request("b", "POST", wire.ROUTE_SWIM, content, b.clock(), BOOT_2)
        r = await http.post("http://b" + wire.ROUTE_SWIM, content=content, headers=dict(signed.headers))
        await a.verify_response_async(r.headers, "b", r.status_code, signed.nonce, r.content, b.clock())
        await http.aclose()
        await b.stop()
        return r.status_code, r.json()["boot_id"], b.identity.boot_id

    status, named, boot = asyncio.run(scenario())
    assert status == 421 and named == boot
