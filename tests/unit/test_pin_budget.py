"""First-contact pins are budgeted per source address (review12f F3): a token holder minting node ids from one
address pins ``burst`` of them, then ``per_min`` a minute, and is answered 429 + Retry-After before anything is
written; honest boards (one id each, their own addresses) and loopback are not held back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from agent.errors import ConfigError
from agent.identity import PIN_FIRST_BURST, PIN_FIRST_PER_MIN, PIN_SOURCES, AuthError, Identity, Pins, read_pins
from agent.settings import load_settings
from peerserve import wire

KEY = b"k" * 32
SHELF = "198.51.100.9"  # a documentation address: never reached, only named as a source


def _key(i: int) -> bytes:
    return i.to_bytes(4, "big") * 8


def test_one_address_pins_its_burst_then_waits_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "peer" / "pins.json"
    pins = Pins(path, first_per_min=8.0, first_burst=16)
    for i in range(16):
        pins.check(f"minted-{i}", _key(i), SHELF, 1000.0)
    before = path.read_bytes()
    with pytest.raises(AuthError) as info:
        pins.check("minted-16", _key(16), SHELF, 1000.0)
    assert info.value.status == 429 and info.value.retry_after == 8  # 60 s / 8 a minute
    assert path.read_bytes() == before and len(read_pins(path)) == 16
    pins.check("minted-3", _key(3), SHELF, 1000.0)  # already pinned: no budget spent, still admitted
    pins.check("other-board", KEY, "192.0.2.8", 1000.0)  # another address has its own budget
    with pytest.raises(AuthError) as later:
        pins.check("minted-16", _key(16), SHELF, 1004.0)
    assert later.value.retry_after == 4  # the wait shrinks as the bucket refills
    pins.check("minted-16", _key(16), SHELF, 1007.5)  # one token back after 60/8 s
    with pytest.raises(AuthError):
        pins.check("minted-17", _key(17), SHELF, 1007.5)


def test_the_budget_bounds_pins_from_one_address_over_time() -> None:
    """Minting as fast as it can for an hour from one address pins at most burst + rate x time."""
    pins = Pins(None)
    made = 0
    for step in range(3600 * 4):  # a try every 0.25 s
        try:
            pins.check(f"minted-{step}", _key(step), SHELF, step * 0.25)
            made += 1
        except AuthError as exc:
            assert exc.status == 429 and exc.retry_after is not None and 1 <= exc.retry_after <= 8
    assert made <= PIN_FIRST_BURST + PIN_FIRST_PER_MIN * 60
    assert made >= PIN_FIRST_BURST + PIN_FIRST_PER_MIN * 60 - 1  # and it is a rate, not a lockout


def test_the_table_of_source_budgets_is_bounded() -> None:
    pins = Pins(None)
    for i in range(PIN_SOURCES + 500):
        pins.check(f"board-{i}", _key(i), f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 0.0)
    assert len(pins.first_contacts) == PIN_SOURCES


def test_loopback_and_addressless_contacts_are_not_budgeted() -> None:
    """The test bed runs many agents on 127.0.0.1 (and 127.0.0.2-4); a detached statement has no address."""
    pins = Pins(None, first_per_min=1.0, first_burst=1)
    for i in range(40):
        pins.check(f"v4-{i}", _key(i), "127.0.0.1", 0.0)
        pins.check(f"bed-{i}", _key(i), "127.0.0.3", 0.0)
        pins.check(f"v6-{i}", _key(i), "::1", 0.0)
        pins.check(f"none-{i}", _key(i))
    assert len(pins._pins) == 160


def test_the_budget_is_a_setting_and_bad_values_are_refused(tmp_path: Path) -> None:
    s = load_settings(env={}, overrides={"pin_first_contact_per_min": 2.0, "pin_first_contact_burst": 3})
    assert (s.pin_first_contact_per_min, s.pin_first_contact_burst) == (2.0, 3)
    for bad in ({"pin_first_contact_per_min": 0.0}, {"pin_first_contact_burst": 0}):
        with pytest.raises(ConfigError):
            load_settings(env={}, overrides=bad)
    identity = Identity("n", "budget-cluster-token-0123456789", tmp_path, 2.0, 3)
    assert (identity.pins.first_contacts.rate, identity.pins.first_contacts.burst) == (2.0 / 60, 3)


def test_minted_ids_from_one_address_get_429_with_retry_after_on_both_peer_routes(tmp_path: Path) -> None:
    """Through the peer plane: a shelf of 50 honest boards (one id each, their own addresses) all join; one
    address minting ids is answered 429 + Retry-After past its burst, on the framework route and on the swim
    route, and none of the refused ids is pinned."""
    from agent.node import NodeAgent
    from agent.peer_api import create_peer_app

    token = "pins-budget-cluster-token-0123456789"

    async def scenario() -> tuple[list[int], list[httpx.Response], list[httpx.Response]]:
        overrides = {"node_id": "f", "data_dir": str(tmp_path / "f"), "cluster_token": token, "mdns": False}
        agent = NodeAgent(load_settings(env={}, overrides=overrides))
        assert agent.identity is not None
        app = create_peer_app(agent, agent.identity)

        async def send(sender: Identity, source: str, swim: bool = False) -> httpx.Response:
            transport = httpx.ASGITransport(app=app, client=(source, 40000))
            async with httpx.AsyncClient(transport=transport) as http:
                if swim:
                    body = json.dumps({}).encode()
                    signed = sender.sign_request("f", "POST", wire.ROUTE_SWIM, body, agent.clock())
                    return await http.post("http://f" + wire.ROUTE_SWIM, content=body, headers=dict(signed.headers))
                signed = sender.sign_request("f", "GET", wire.ROUTE_STATE, b"", agent.clock())
                return await http.get("http://f" + wire.ROUTE_STATE, headers=dict(signed.headers))

        try:
            shelf = [(await send(Identity(f"b{i}", token, None), f"192.0.2.{i + 1}")).status_code for i in range(50)]
            minted = [await send(Identity(f"m{i}", token, None), SHELF) for i in range(PIN_FIRST_BURST + 2)]
            swim = [await send(Identity(f"s{i}", token, None), SHELF, swim=True) for i in range(2)]
            return shelf, minted, swim
        finally:
            await agent.stop()

    shelf, minted, swim = asyncio.run(scenario())
    assert shelf == [200] * 50
    assert [r.status_code for r in minted] == [200] * PIN_FIRST_BURST + [429, 429]
    for refused in (*minted[PIN_FIRST_BURST:], *swim):
        # 8 s when the bucket just emptied (60 s / 8 a minute, rounded up); the real clock runs on meanwhile, and
        # a loaded machine took over 0.5 s between the last mint and a refusal (CI saw 7)
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 8
        assert "too many new node ids" in refused.text
    pinned = read_pins(tmp_path / "f" / "peer" / "pins.json")
    assert len(pinned) == 50 + PIN_FIRST_BURST
    assert f"m{PIN_FIRST_BURST}" not in pinned and "s0" not in pinned


def test_signers_first_met_in_relayed_statements_share_one_budget() -> None:
    """A member relaying leases or suspect proofs signed by minted ids pins no more of them than one address:
    they all spend the ``RELAYED`` budget (the SWIM callers pass the wall clock); a signer pinned before is not."""
    token = "relayed-budget-cluster-token-0123456789"
    us = Identity("b", token, None)
    signers = [Identity(f"minted-{i}", token, None) for i in range(PIN_FIRST_BURST + 1)]
    data = b"a lease or a proof"
    for s in signers[:PIN_FIRST_BURST]:
        assert us.verify_detached(*s.sign_detached(data), data, 1000.0) == s.node_id
    with pytest.raises(AuthError) as info:
        us.verify_detached(*signers[-1].sign_detached(data), data, 1000.0)
    assert info.value.status == 429 and info.value.retry_after == 8
    assert signers[-1].node_id not in us.pins._pins
    assert us.verify_detached(*signers[0].sign_detached(data), data, 1000.0) == "minted-0"  # pinned: no budget
    us.pins.check("direct", KEY, "192.0.2.1", 1000.0)  # an address's own budget is untouched
