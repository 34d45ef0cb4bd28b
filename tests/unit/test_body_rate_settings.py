"""The rules that say when a request body waits on its client are settings (agent/settings.py -> agent/http_caps.py).

Defaults as the constants were; a broken value is refused at start naming the setting and its range; the flags
reach the settings; and a changed value reaches the client port's protocol: over real loopback sockets, a
300 B/s upload (a slow LAN) is given up for a newcomer at a full cap under the defaults, and keeps its place with
``body_min_rate`` lowered for that LAN."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest
from uvicorn.server import ServerState

from agent import http_caps
from agent.cli import register, server_config
from agent.errors import ConfigError
from agent.settings import Settings, load_settings


def test_the_defaults_are_the_constants_they_replace(tmp_path: Path) -> None:
    s = Settings(data_dir=str(tmp_path))
    assert s.body_stall_s == http_caps.BODY_STALL_S == 1.0
    assert s.body_min_rate == http_caps.BODY_MIN_RATE == 500.0
    assert s.body_rate_grace_s == http_caps.BODY_RATE_GRACE_S == 2.0
    assert s.body_take_below_rates == http_caps.TAKE_BELOW_RATES == 4.0


@pytest.mark.parametrize(
    ("key", "raw", "says"),
    [
        ("body_stall_s", "0", "must be 0.1 s to body_timeout_s (30 s)"),
        ("body_stall_s", "31", "must be 0.1 s to body_timeout_s (30 s)"),
        ("body_min_rate", "-1", "must be 0 (no minimum) to 1,000,000 bytes a second"),
        ("body_min_rate", "1e7", "must be 0 (no minimum) to 1,000,000 bytes a second"),
        ("body_min_rate", "nan", "nan is not a finite number"),
        ("body_rate_grace_s", "0", "must be 0.5 s to body_timeout_s (30 s)"),
        ("body_rate_grace_s", "inf", "inf is not a finite number"),
        ("body_take_below_rates", "0.5", "must be 1 to 100 (x body_min_rate)"),
        ("body_take_below_rates", "101", "must be 1 to 100 (x body_min_rate)"),
        ("body_take_below_rates", "four", "'four' is not a valid float"),
    ],
)
def test_a_broken_value_is_refused_naming_the_setting_and_its_range(
    key: str, raw: str, says: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, env={"PEERSERVE_DATA_DIR": str(tmp_path), f"PEERSERVE_{key.upper()}": raw})
    assert err.value.key == key and str(err.value) == f"{key}: {says}", str(err.value)


def test_the_range_follows_body_timeout_s(tmp_path: Path) -> None:
    env = {"PEERSERVE_DATA_DIR": str(tmp_path), "PEERSERVE_BODY_TIMEOUT_S": "60", "PEERSERVE_BODY_STALL_S": "45"}
    assert load_settings(None, env=env).body_stall_s == 45
    with pytest.raises(ConfigError, match=r"body_stall_s: must be 0.1 s to body_timeout_s \(10 s\)"):
        load_settings(None, env={**env, "PEERSERVE_BODY_TIMEOUT_S": "10"})


def test_the_agent_refuses_to_start_on_a_broken_body_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from peerserve.cli import main

    assert main(["agent", "--data-dir", str(tmp_path), "--body-min-rate", "-5", "--no-discovery"]) == 2
    assert "body_min_rate: must be 0 (no minimum) to 1,000,000 bytes a second" in capsys.readouterr().err


def test_the_flags_reach_the_settings(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["agent", "--body-stall-s", "2", "--body-min-rate", "100", "--body-rate-grace-s", "4",
                              "--body-take-below-rates", "2"])  # fmt: skip
    names = ("body_stall_s", "body_min_rate", "body_rate_grace_s", "body_take_below_rates")
    s = load_settings(env={}, overrides={"data_dir": str(tmp_path), **{n: getattr(args, n) for n in names}})
    assert (s.body_stall_s, s.body_min_rate, s.body_rate_grace_s, s.body_take_below_rates) == (2, 100, 4, 2)


async def _reader(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = bool(message.get("more_body"))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


async def _newcomer_against_a_slow_upload(settings: Settings) -> tuple[int, bytes]:
    """At a cap of 2, an upload at 300 B/s from 127.0.91.1 and, 1.8 s in, a newcomer's GET from 127.0.91.2, through
    the agent's own ``server_config``: (the newcomer's status, what the uploader was sent)."""
    config = server_config(_reader, settings, "critical")
    config.load()
    protocol_class, state = config.http_protocol_class, ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: protocol_class(config=config, server_state=state, app_state={}),
                                      "127.0.0.1", 0)  # fmt: skip
    port = server.sockets[0].getsockname()[1]
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.91.1", 0))
    up_writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(18):  # 30 bytes every 0.1 s: 300 B/s, never 1 s without a byte
        up_writer.write(b"x" * 30)
        await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.91.2", 0))
    writer.write(b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    up_writer.write(b"x" * 30)
    try:
        sent = await asyncio.wait_for(up_reader.read(65536), 0.5)
    except asyncio.TimeoutError:
        sent = b""  # still open, its place kept
    for w in (writer, up_writer):
        w.close()
    server.close()
    return int(answer.split()[1]), sent


@pytest.mark.parametrize("slow_lan", [False, True], ids=["defaults", "body_min_rate_100"])
def test_a_lowered_minimum_rate_keeps_a_slow_lans_upload_in_its_place(slow_lan: bool, tmp_path: Path) -> None:
    """Grace 0.5 s in both (the upload falls behind 500 B/s after 1.25 s); with ``body_min_rate`` 100 it never does:
    the newcomer gets the cap's 503 and the upload goes on."""
    rate = {"body_min_rate": 100.0} if slow_lan else {}
    settings = Settings(node_id="n1", data_dir=str(tmp_path), discovery=False, max_concurrency=2,
                        max_connections_per_address=2, body_rate_grace_s=0.5, **rate)  # fmt: skip
    status, sent = asyncio.run(_newcomer_against_a_slow_upload(settings))
    if slow_lan:
        assert status == 503 and sent == b"", (status, sent)
    else:
        assert status == 200 and sent.startswith(b"HTTP/1.1 503 "), (status, sent)
