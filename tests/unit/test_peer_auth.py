"""Message authentication on the peer plane: cards, signatures, freshness, replay, pins, and the wire bounds."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.identity import (
    WINDOW_S,
    AuthError,
    Card,
    Identity,
    NonceCache,
    Pins,
    StaleBoot,
    b64,
    derive_ca_key,
    unb64,
)
from agent.peer_api import capacity_refusal, command_refusal
from agent.peer_client import PeerCallError, PeerClient
from peerserve import wire

TOKEN = "unit-cluster-token-0123456789"
NOW = 1_800_000_000.0
A = Identity("a", TOKEN, None)
B = Identity("b", TOKEN, None)
C = Identity("c", TOKEN, None)
BODY = b'{"term":3,"leader":"a","instances":{"m":1}}'


def fresh(ident: Identity) -> Identity:
    """The same node with empty nonce cache and pins (each example starts clean)."""
    ident.nonces = NonceCache()
    ident.pins = Pins(None)
    return ident


def signed(sender: Identity = A, to: str = "b", body: bytes = BODY, now: float = NOW) -> dict[str, str]:
    return dict(sender.sign_request(to, "PUT", "/control/desired", body, now).headers)


def test_a_signed_request_verifies_once_and_its_replay_is_refused() -> None:
    b = fresh(B)
    headers = signed()
    assert b.verify_request(headers, "PUT", "/control/desired", BODY, NOW + 1, mono=NOW + 1) == "a"
    with pytest.raises(AuthError, match="replayed"):
        b.verify_request(headers, "PUT", "/control/desired", BODY, NOW + 2, mono=NOW + 2)


@settings(max_examples=200)
@given(st.data())
def test_any_tampered_byte_is_refused(data: st.DataObject) -> None:
    b = fresh(B)
    headers = signed()
    body, method, target = BODY, "PUT", "/control/desired"
    what = data.draw(st.sampled_from(["body", "target", "method", "time", "nonce", "signature", "to"]))
    if what == "body":
        i = data.draw(st.integers(0, len(BODY) - 1))
        body = BODY[:i] + bytes([BODY[i] ^ data.draw(st.integers(1, 255))]) + BODY[i + 1 :]
    elif what == "target":
        target = data.draw(st.sampled_from(["/control/desired?x=1", "/peer/leave", "/control/desire"]))
    elif what == "method":
        method = "POST"
    elif what == "time":
        headers[wire.H_TIME] = f"{NOW + data.draw(st.floats(0.001, 5)):.3f}"
    elif what == "nonce":
        headers[wire.H_NONCE] = headers[wire.H_NONCE][::-1] + "A"
    elif what == "signature":
        sig = bytearray(unb64(headers[wire.H_SIGNATURE]))
        sig[data.draw(st.integers(0, len(sig) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        headers[wire.H_SIGNATURE] = b64(bytes(sig))
    else:
        headers[wire.H_TO] = "c"
    with pytest.raises(AuthError):
        b.verify_request(headers, method, target, body, NOW, mono=NOW)


@settings(max_examples=100)
@given(st.floats(-1e6, 1e6, allow_nan=False))
def test_clock_skew_beyond_the_window_is_refused(skew: float) -> None:
    b = fresh(B)
    headers = signed(now=NOW + skew)
    if abs(skew) <= WINDOW_S - 0.01:
        assert b.verify_request(headers, "PUT", "/control/desired", BODY, NOW, mono=NOW) == "a"
    elif abs(skew) > WINDOW_S + 0.01:
        with pytest.raises(AuthError, match="stale or future"):
            b.verify_request(headers, "PUT", "/control/desired", BODY, NOW, mono=NOW)


def test_a_skewed_signers_refusal_names_it_and_says_by_how_much_and_which_way() -> None:
    """The refusal an operator reads in the log: who, how far, which way, and the bound (the edge of the skew the
    cluster tolerates, docs/architecture.md "Clocks"); an answer's refusal names its responder the same way."""
    with pytest.raises(AuthError, match=r"signed by a is stamped 31\.5 s ahead of this node's clock, over the 30 s"):
        fresh(B).verify_request(signed(now=NOW + 31.5), "PUT", "/control/desired", BODY, NOW, mono=NOW)
    with pytest.raises(AuthError, match=r"signed by a is stamped 30\.2 s behind this node's clock"):
        fresh(B).verify_request(signed(now=NOW - 30.2), "PUT", "/control/desired", BODY, NOW, mono=NOW)
    assert fresh(B).verify_request(signed(now=NOW - 29.9), "PUT", "/control/desired", BODY, NOW, mono=NOW) == "a"
    request = A.sign_request("b", "GET", "/stats/node", b"", NOW)
    answer = B.sign_response("a", 200, request.nonce, b"{}", NOW + 45)
    with pytest.raises(AuthError, match=r"answer signed by b is stamped 45\.0 s ahead"):
        fresh(A).verify_response(answer, "b", 200, request.nonce, b"{}", NOW)


def test_a_message_for_one_node_cannot_be_replayed_to_another_or_as_another() -> None:
    headers = signed(to="b")
    with pytest.raises(AuthError, match="another node"):
        fresh(C).verify_request(headers, "PUT", "/control/desired", BODY, NOW, mono=NOW)
    as_c = {**headers, wire.H_CARD: C.card_text}  # claim c sent it: c's key did not sign it
    with pytest.raises(AuthError, match="bad signature"):
        fresh(B).verify_request(as_c, "PUT", "/control/desired", BODY, NOW, mono=NOW)


def test_another_clusters_node_and_an_unsigned_message_are_refused() -> None:
    stranger = Identity("a", "another-token-0123456789", None)
    with pytest.raises(AuthError, match="not issued by this cluster") as info:
        fresh(B).verify_request(signed(stranger), "PUT", "/control/desired", BODY, NOW, mono=NOW)
    assert info.value.status == 403
    with pytest.raises(AuthError, match="no node card"):
        fresh(B).verify_request({}, "PUT", "/control/desired", BODY, NOW, mono=NOW)
    forged = Card("a", stranger.public_key, b"\0" * 64).encode()  # a card it signed itself
    with pytest.raises(AuthError):
        fresh(B).verify_request(
            {**signed(stranger), wire.H_CARD: forged}, "PUT", "/control/desired", BODY, NOW, mono=NOW
        )


def test_a_node_id_is_pinned_to_the_first_key_that_proved_it(tmp_path: Path) -> None:
    b = Identity("b", TOKEN, tmp_path / "b")
    assert b.verify_request(signed(), "PUT", "/control/desired", BODY, NOW, mono=NOW) == "a"
    impostor = Identity("a", TOKEN, None)  # has the token, claims a's id with another key
    with pytest.raises(AuthError, match="another key") as info:
        b.verify_request(signed(impostor), "PUT", "/control/desired", BODY, NOW, mono=NOW)
    assert info.value.status == 403
    again = Identity("b", TOKEN, tmp_path / "b")  # the pin and the node key survive a restart
    assert again.public_key == b.public_key
    with pytest.raises(AuthError, match="another key"):
        again.verify_request(signed(impostor), "PUT", "/control/desired", BODY, NOW, mono=NOW)


def test_answers_are_bound_to_the_request_nonce_and_the_responder() -> None:
    a, b = fresh(A), fresh(B)
    req = a.sign_request("b", "GET", "/peer/state", b"", NOW)
    answer = b'{"ok":true}'
    headers = b.sign_response("a", 200, req.nonce, answer, NOW)
    a.verify_response(headers, "b", 200, req.nonce, answer, NOW)
    other = a.sign_request("b", "GET", "/peer/state", b"", NOW)
    for responder, status, nonce, body in (("c", 200, req.nonce, answer), ("b", 200, other.nonce, answer),
                                           ("b", 500, req.nonce, answer), ("b", 200, req.nonce, b"{}")):  # fmt: skip
        with pytest.raises(AuthError):
            a.verify_response(headers, responder, status, nonce, body, NOW)


def test_the_ca_is_derived_from_the_token_alone() -> None:
    assert derive_ca_key(TOKEN).public_key().public_bytes_raw() == A.ca_public.public_bytes_raw()
    assert derive_ca_key(TOKEN + "x").public_key().public_bytes_raw() != A.ca_public.public_bytes_raw()
    assert TOKEN not in A.card_text and TOKEN.encode() not in bytes(str(signed()), "utf-8")


def test_the_nonce_cache_is_bounded_and_refuses_rather_than_forgets() -> None:
    cache = NonceCache(ttl_s=60, limit=3)
    for n in ("n1", "n2", "n3"):
        cache.use(n, 0, mono=0)
    with pytest.raises(AuthError) as info:
        cache.use("n4", 1, mono=1)
    assert info.value.status == 429 and len(cache) == 3
    with pytest.raises(AuthError, match="replayed"):
        cache.use("n1", 59, mono=59)  # still remembered inside the window
    cache.use("n4", 61, mono=61)  # expired ones make room
    assert len(cache) == 1


def test_one_sender_fills_only_its_own_share_of_the_nonce_cache() -> None:
    """A member sending as fast as it can waits (429) past its share; every other member's messages still pass,
    and its share frees as its nonces age out of the window."""
    cache = NonceCache(ttl_s=60, limit=10, per_sender=4)
    for i in range(4):
        cache.use(f"m{i}", 0, "liar", mono=0)
    with pytest.raises(AuthError) as info:
        cache.use("m4", 1, "liar", mono=1)
    assert info.value.status == 429 and cache.held("liar") == 4
    for i in range(5):
        cache.use(f"h{i}", 1, f"honest{i % 3}", mono=1)
    with pytest.raises(AuthError, match="replayed"):
        cache.use("h0", 2, "honest0", mono=2)
    cache.use("h0", 2, "honest1", mono=2)  # the same nonce from another sender is another message
    assert len(cache) == 10
    with pytest.raises(AuthError) as info:
        cache.use("x", 3, "newcomer", mono=3)  # the whole cache's bound is the last resort
    assert info.value.status == 429
    cache.use("m5", 60.5, "liar", mono=60.5)  # its first four aged out, the others not yet
    assert cache.held("liar") == 1 and len(cache) == 7


def test_one_address_fills_only_its_share_of_the_nonce_cache_whatever_ids_it_signs_as() -> None:
    """A token holder can mint a card for any node id; with one id per 4,096 nonces, 25 ids filled the whole
    cache and every member's messages got 429. Its address now holds at most its own share."""
    cache = NonceCache(ttl_s=60, limit=12, per_sender=2, per_source=6)
    for i in range(6):  # three minted ids, each within its own sender share
        cache.use(f"n{i}", 0, f"minted{i // 2}", "10.0.0.66", mono=0)
    with pytest.raises(AuthError, match="this address") as info:
        cache.use("n6", 1, "minted9", "10.0.0.66", mono=1)  # a fresh id does not buy room from the same address
    assert info.value.status == 429 and cache.held_from("10.0.0.66") == 6 and len(cache) == 6
    for i in range(6):  # members on other addresses still get in
        cache.use(f"h{i}", 1, f"member{i % 3}", f"10.0.0.{i % 3 + 1}", mono=1)
    assert len(cache) == 12 and cache.held_from("10.0.0.1") == 2
    cache.use("n7", 60.5, "minted9", "10.0.0.66", mono=60.5)  # the address's first nonces aged out: room again
    assert cache.held_from("10.0.0.66") == 1 and cache.held("minted0") == 0 and len(cache) == 7


def test_25_minted_card_ids_from_one_address_leave_room_for_the_members() -> None:
    """The attack through the real verifier, at the defaults' proportions scaled down 100x (each share a quarter
    of the cache, a sender's 1/24.4 of it): a token holder signs as 25 node ids from one address, each up to its
    sender share (enough to fill the cache before); the cache keeps three quarters for every other address."""
    b = fresh(B)
    b.nonces = NonceCache(limit=1000, per_sender=41, per_source=250)
    minted = [Identity(f"minted{i}", TOKEN, None) for i in range(25)]
    sent = refused = 0
    for ident in minted:
        for n in range(b.nonces.per_sender):
            headers = dict(ident.sign_request("b", "POST", "/peer/x", b"", NOW + n * 1e-3).headers)
            try:
                b.verify_request(headers, "POST", "/peer/x", b"", NOW + 1, "10.0.0.66", mono=NOW + 1)
                sent += 1
            except AuthError as exc:
                assert exc.status == 429
                refused += 1
    assert sent == b.nonces.per_source == len(b.nonces) and refused == 25 * b.nonces.per_sender - sent
    assert len(b.nonces) <= b.nonces.limit // 4
    assert b.verify_request(signed(A), "PUT", "/control/desired", BODY, NOW + 2, "10.0.0.1", mono=NOW + 2) == "a"


def test_the_pin_table_is_bounded() -> None:
    pins = Pins(None, limit=2)
    pins.check("x", b"k" * 32)
    pins.check("y", b"k" * 32)
    with pytest.raises(AuthError, match="full"):
        pins.check("z", b"k" * 32)


# -- wire bounds ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [None, [], {"term": 2**62, "leader": "a", "instances": {}}, {"term": 1, "leader": "a", "instances": {"m": 10**30}},
     {"term": 1, "leader": "a", "instances": {"m": 65}}, {"term": 1, "leader": "a", "instances": {"m\n": 1}},
     {"term": 1.5, "leader": "a", "instances": {}}, {"term": True, "leader": "a", "instances": {}},
     {"term": 1, "leader": "a.b", "instances": {}}, {"term": 1, "leader": "a", "instances": {"m": -1}},
     {"term": 1, "leader": "a", "instances": {f"m{i}": 1 for i in range(300)}}],
)  # fmt: skip
def test_bad_commands_are_wire_errors(body: Any) -> None:
    with pytest.raises(wire.WireError):
        wire.DesiredCommand.parse(body)


@pytest.mark.parametrize(
    ("placement", "error"),
    [([], "object or null"), ({"objective_ms": "x"}, "objective_ms"), ({"solve_ms": True}, "solve_ms"),
     ({"at": {}}, "at"), ({"rejected": 10**400}, "rejected"), ({"rejected": [1]}, "rejected"),
     ({"actions": 5}, "actions"), ({"actions": "abc"}, "actions"), ({"objective_ms": math.nan}, "objective_ms"),
     ({"hold": {"gap_ms": math.inf}}, "NaN or infinite"),
     ({"actions": [{"op": "stop", "node": "a", "model": "m", "count": 1, "x": [-math.inf]}]}, "NaN or infinite"),
     ({"actions": [None]}, "each of"), ({"actions": [5]}, "each of"), ({"actions": [{"op": "start"}]}, "each of"),
     ({"actions": [{"op": "burn", "node": "a", "model": "m", "count": 1}]}, "each of"),
     ({"actions": [{"op": "stop", "node": "a b", "model": "m", "count": 1}]}, "each of"),
     ({"actions": [{"op": "stop", "node": "a", "model": "..", "count": 1}]}, "each of"),
     ({"actions": [{"op": "stop", "node": "a", "model": "m", "count": "1"}]}, "each of"),
     ({"actions": [{"op": "stop", "node": "a", "model": "m", "count": 513}]}, "each of"),
     ({"actions": [{"op": "stop", "node": "a", "model": "m", "count": 1}] * (wire.MAX_ACTIONS + 1)}, "at most"),
     ({"nodes": "x"}, "nodes"), ({"nodes": [None]}, "nodes"), ({"nodes": ["a"] * 1025}, "nodes")],
)  # fmt: skip
def test_a_command_whose_placement_summary_is_malformed_is_refused(placement: Any, error: str) -> None:
    """review26b F4: the summary was only checked to be an object; each node keeps it and shows it on /metrics
    (``{"objective_ms": "x"}``: every scrape answered 500) and /cluster (NaN or inf anywhere in it: 500)."""
    with pytest.raises(wire.WireError, match=error) as caught:
        wire.DesiredCommand.parse({"term": 1, "leader": "a", "instances": {}, "placement": placement})
    assert caught.value.status == 400
    odd = {"objective_ms": -1, "solve_ms": 2**30, "at": 1.7e9, "rejected": 0, "actions": None, "note": "x", "n": [1]}
    assert wire.DesiredCommand.parse({"term": 1, "leader": "a", "instances": {}, "placement": odd}).placement == odd


def test_the_action_bound_refuses_nothing_a_command_body_can_carry() -> None:
    """review27a L2: actions are capped (MAX_ACTIONS) for their readers, but no honest plan may be refused: one
    action per (node, model) changed, up to 256 x 256; yet MAX_ACTIONS of the shortest action already overflow a
    command's body (MAX_BODY), so a summary the cap refuses is one the body's bound refused first. At the bound a
    summary passes whole; its nodes list of 257 (SWIM's 256 members and the leader) too."""
    shortest = {"op": "stop", "node": "a", "model": "b", "count": 1}
    actions = [shortest] * wire.MAX_ACTIONS
    assert len(json.dumps(actions, separators=(",", ":")).encode()) > wire.MAX_BODY
    nodes = [f"n{i}" for i in range(257)]
    summary = {"actions": actions, "nodes": nodes}
    command = {"term": 1, "leader": "a", "instances": {}, "placement": summary}
    assert wire.DesiredCommand.parse(command).placement == summary


@pytest.mark.parametrize(
    "msg",
    [{"type": "announce", "term": 1, "leader": "a", "priority": [0, float("inf"), "a"]},
     {"type": "announce", "term": 1, "leader": "a", "priority": [0, 1e400, "a"]},
     {"type": "announce", "term": 1, "leader": "a", "priority": [2**40, 1, "a"]},
     {"type": "vote_request", "term": -1, "candidate": "a", "priority": [0, 1, "a"]},
     {"type": "vote", "term": 1, "voter": "a", "granted": "yes"}, {"type": "coup", "term": 1}],
)  # fmt: skip
def test_bad_election_messages_are_wire_errors(msg: Any) -> None:
    with pytest.raises(wire.WireError):
        wire.ElectionPost.parse(msg)


def test_election_messages_round_trip() -> None:
    for msg in ({"type": "announce", "term": 4, "leader": "a", "priority": [1, 512.0, "a"]},
                {"type": "vote", "term": 4, "voter": "b", "granted": False, "leader": "a"}):  # fmt: skip
        post = wire.ElectionPost.parse(msg)
        assert wire.ElectionPost.from_message(post.to_message()) == post and post.to_json() == msg


def test_request_pages_must_lie_after_the_cursor() -> None:
    row = {"id": 5, "ts": 1.0, "model": "m", "client": "c", "rtt_ms": {"a": 1}, "node": None, "latency_ms": None,
           "status": 200}  # fmt: skip
    assert wire.RequestPage.parse({"node_id": "a", "requests": [row], "next": 5}, since=4).next == 5
    bad = [([row], 5, 5), ([], 3, 4), ([row] * 5001, 5, 0), ([{**row, "rtt_ms": {"a": float("nan")}}], 5, 0)]
    for rows, nxt, since in bad:
        page = {"node_id": "a", "requests": rows, "next": nxt}
        with pytest.raises(wire.WireError):
            wire.RequestPage.parse(page, since)


def test_commands_only_from_the_accepted_leader_and_within_capacity() -> None:
    cmd = wire.DesiredCommand(7, "a", {"m": 2})
    assert command_refusal("a", cmd, (7, "a")) is None
    assert command_refusal("a", cmd, None) is None  # no election here: term fencing alone
    assert "not the leader" in (command_refusal("a", cmd, (7, "b")) or "")
    assert "not the leader" in (command_refusal("a", cmd, (6, "a")) or "")  # a term it has not accepted
    assert "in the name of" in (command_refusal("b", cmd, (7, "a")) or "")
    assert capacity_refusal(cmd, mem_total_mb=1024, mem_need={"m": 512}) is None
    assert "capacity" in (capacity_refusal(cmd, mem_total_mb=1000, mem_need={"m": 512}) or "")
    assert capacity_refusal(wire.DesiredCommand(1, "a", {"m": 1}), 10, {"m": 512}) is None  # one always fits


# -- the peer client's answer checks (an in-process ASGI peer: real signing and parsing, no sockets) -------
def _peer_app(ident: Identity, answer: dict[str, Any], signer: Identity | None = None) -> Any:
    """A peer that verifies the request like agent.peer_api and answers ``answer``, signed by ``signer`` (a request
    naming no or another boot id: the signed refusal naming ``ident``'s, as agent.peer_api answers it)."""
    import json as _json

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        target = scope["path"] + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
        try:
            sender = ident.verify_request(headers, scope["method"], target, b"", time.time(), mono=time.monotonic())
            status, payload = 200, answer
        except StaleBoot as exc:
            sender, status, payload = exc.sender, exc.status, exc.answer()
        body = _json.dumps(payload).encode()
        signed = (signer or ident).sign_response(sender, status, headers[wire.H_NONCE], body, time.time())
        out = [(k.encode(), v.encode()) for k, v in signed.items()] + [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})

    return app


def test_stats_answers_must_be_signed_by_the_node_asked_and_name_it() -> None:
    stats = {"node_id": "b", "node_class": "orin", "compute": 100, "mem_available_mb": 1, "mem_total_mb": 2,
             "instances": [{"model": "m", "running": True, "ready": True}]}  # fmt: skip

    def get(answer: dict[str, Any], signer: Identity | None = None) -> Any:
        b = fresh(Identity("b", TOKEN, None))
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=_peer_app(b, answer, signer)))
        route = {"http://b": ("b", "http://b")}.get
        client = PeerClient(fresh(Identity("a", TOKEN, None)), route, http=http)
        return asyncio.run(client.get_json("http://b/stats/node"))

    assert get(stats)["instances"] == [{"model": "m", "running": True, "ready": True, "draining": False}]
    figures = {"cores": 4, "concurrency": 2, "load_per_cpu": 0.5}  # the queue model's: kept through the plane
    assert {k: get({**stats, **figures})[k] for k in figures} == figures
    with pytest.raises(PeerCallError, match="malformed"):
        get({**stats, "cores": 10**400})  # compared, not converted: no OverflowError
    with pytest.raises(PeerCallError, match="another node"):
        get({**stats, "node_id": "c"})  # b reporting for c (the KeyError that broke every round)
    with pytest.raises(PeerCallError, match="unauthenticated"):
        get(stats, signer=Identity("c", TOKEN, None))  # answered by someone else
    with pytest.raises(PeerCallError, match="malformed"):
        get({**stats, "mem_total_mb": float("inf")})


def test_a_peers_unsigned_refusal_shows_its_stated_reason_bounded() -> None:
    """A peer that refuses us answers unsigned (it could not authenticate us): the call fails as unauthenticated,
    and the error it states is shown, repr'd and cut at 200 characters (CI once saw only "HTTP 403: no node card",
    which hid which of five 403s the peer meant)."""

    def refused(error: Any) -> str:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            body = json.dumps({"error": error}).encode()
            await send({"type": "http.response.start", "status": 403, "headers": [(b"content-type", b"x")]})
            await send({"type": "http.response.body", "body": body})

        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        client = PeerClient(fresh(Identity("a", TOKEN, None)), {"http://b": ("b", "http://b")}.get, http=http)
        with pytest.raises(PeerCallError) as err:
            asyncio.run(client.call("b", "http://b", "POST", "/peer/provision", body={"model": "m"}))
        assert err.value.status == 403 and "unauthenticated answer from b (HTTP 403)" in str(err.value)
        return str(err.value)

    assert refused("pin table full").endswith("; it said: 'pin table full'")
    long = refused("x\n" * 500)
    assert "\n" not in long and long.endswith("'") and len(long) < 600  # one log line, bounded
    assert "it said" not in refused(["not", "a", "string"])


def _respellings(text: str) -> list[str]:
    """Other texts the lenient decoder read as the same bytes: another last character (its unused low bits set),
    padding, characters outside the alphabet (skipped), the standard alphabet's '+' and '/'."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    raw = unb64(text)
    same_last = [c for c in alphabet if c != text[-1] and _lenient(text[:-1] + c) == raw]
    out = [text[:-1] + same_last[0], text + "=" * (-len(text) % 4 or 4), "...." + text, text[:4] + "!!!!" + text[4:]]
    return [t for t in out if _lenient(t) == raw]


def _lenient(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_a_re_encoded_signature_or_card_is_refused_as_non_canonical() -> None:
    """review16a F1: the decoder took many spellings of one signature, so a cache keyed by the text counted a
    re-spelled copy as new. Only b64's own spelling is accepted now, with a clear error for the others."""
    headers = signed()
    sig, card = headers[wire.H_SIGNATURE], headers[wire.H_CARD]
    spellings = _respellings(sig)
    assert len(spellings) == 4  # each decodes to the same signature with the old decoder
    for text in spellings:
        with pytest.raises(AuthError, match="non-canonical base64"):
            unb64(text)
        b = fresh(B)
        with pytest.raises(AuthError, match="non-canonical base64"):
            b.verify_request({**headers, wire.H_SIGNATURE: text}, "PUT", "/control/desired", BODY, NOW, mono=NOW)
    for text in _respellings(card):
        with pytest.raises(AuthError, match="non-canonical base64"):
            fresh(B).verify_request({**headers, wire.H_CARD: text}, "PUT", "/control/desired", BODY, NOW, mono=NOW)
    assert fresh(B).verify_request(headers, "PUT", "/control/desired", BODY, NOW, mono=NOW) == "a"  # as sent: passes


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_unb64_reads_back_exactly_what_b64_wrote(data: bytes) -> None:
    assert unb64(b64(data)) == data
