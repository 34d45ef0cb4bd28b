"""review15d F4: a hold of a connection's reading for its address's parse debt run up by the address's other users
(a NAT) must not count against that connection's body clocks; only its own debt does (``_in_own_debt``).

A real asyncio server on loopback with the client port's protocol; the address's budget is put deep in debt as its
other users' parsing would (review15c F7's test keeps covering a connection alone on an address in debt)."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from agent.http_caps import BODY_STALL_S, limited_protocol
from agent.http_parse import AddressBudgets
from agent.http_sliced import sliced_protocol


async def _reader(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = bool((await receive()).get("more_body"))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


async def _held_for_neighbours() -> tuple[bool, bool, bool]:
    config = uvicorn.Config(_reader, log_config=None)
    config.load()
    parsing = sliced_protocol(
        share=1.0, burst_s=1.0, address=AddressBudgets(1.0, 0.01)
    )  # (a new fair part: in credit at once)
    protocol_class: Any = limited_protocol(30.0, 64, 30.0, parsing)
    state, made = ServerState(), []

    def make() -> Any:
        made.append(protocol_class(config=config, server_state=state, app_state={}))
        return made[-1]

    loop = asyncio.get_running_loop()
    server = await loop.create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.88.1", 0))
    writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    await asyncio.sleep(0.3)
    conn = made[0]
    conn.shared.credit = -5.0  # the NAT's other users spent the address's budget: ~4 s owed past ADDRESS_DEBT_S
    writer.write(b"x" * 1000)  # the honest upload goes on; the agent holds its reading for the address's debt
    await asyncio.sleep(BODY_STALL_S + 0.3)
    outcome = conn._reading_held, conn._held_for_debt, conn._body_stalled()
    writer.close()
    server.close()
    return outcome


def test_an_upload_held_for_its_nat_neighbours_parse_debt_is_not_waiting_on_its_client() -> None:
    held, for_own_debt, stalled = asyncio.run(_held_for_neighbours())
    assert held  # the address's debt holds it
    assert not for_own_debt  # ... but not its own: the agent's reason, excused from its body clocks
    assert not stalled  # so it is not taken for a stalled body at a full cap (was: after BODY_STALL_S held)
