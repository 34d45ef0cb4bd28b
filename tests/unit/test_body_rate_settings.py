"""The rules that say when a request body waits on its client are settings (agent/settings.py -> agent/http_caps.py).

Defaults as the constants were; a broken value is refused at start naming the setting and its range; the flags
reach the settings; and a changed value reaches the client port's protocol: over real loopback sockets, two
300 B/s uploads from one address (a slow LAN) lose a place to a newcomer at a full cap under the defaults and with
``body_min_rate`` lowered only to their rate, and keep their places with it under a quarter of their rate, as the
operator guide says (review16b F2); ``body_min_rate`` has a floor, so a 1 B/s trickler is still taken at it
(review16b F1); and a config from before these settings, ``body_timeout_s`` under their defaults, still starts
(review16b F4)."""

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
from agent.settings import Settings, UnsetSeconds, load_settings
from bench.nat_excuse_bench import app as _reader  # reads the whole body, answers an empty 200


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
        ("body_min_rate", "-1", "must be 10 to 1,000,000 bytes a second"),
        ("body_min_rate", "0", "must be 10 to 1,000,000 bytes a second"),
        ("body_min_rate", "1e-9", "must be 10 to 1,000,000 bytes a second"),
        ("body_min_rate", "9.9", "must be 10 to 1,000,000 bytes a second"),
        ("body_min_rate", "1e7", "must be 10 to 1,000,000 bytes a second"),
        ("body_timeout_s", "0.3", "must be at least 0.5 s (body_rate_grace_s's least)"),
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
    assert "body_min_rate: must be 10 to 1,000,000 bytes a second" in capsys.readouterr().err


@pytest.mark.parametrize("timeout", ["1.5", "0.5"])
def test_a_config_from_before_the_body_rate_settings_still_starts(timeout: str, tmp_path: Path) -> None:
    """body_timeout_s under the new keys' defaults, neither key set (review16b F4): they follow body_timeout_s."""
    config = tmp_path / "peerserve.toml"
    config.write_text(f'data_dir = "{tmp_path}"\nbody_timeout_s = {timeout}\n')
    s = load_settings(str(config), env={})
    assert (s.body_stall_s, s.body_rate_grace_s) == (min(1.0, float(timeout)), float(timeout))
    assert load_settings(None, env={"PEERSERVE_DATA_DIR": str(tmp_path), "PEERSERVE_BODY_TIMEOUT_S": "60"}) == (
        Settings(data_dir=str(tmp_path), body_timeout_s=60.0)
    )  # a longer body_timeout_s keeps the defaults
    with pytest.raises(ConfigError, match=rf"body_rate_grace_s: must be 0.5 s to body_timeout_s \({timeout} s\)"):
        load_settings(str(config), env={"PEERSERVE_BODY_RATE_GRACE_S": "2"})  # one set by hand is still checked


def test_an_unset_value_is_a_bare_float_and_the_help_says_what_unset_gives() -> None:
    """review17a: ``UnsetSeconds`` carries its mark in its class only (no per-instance ``__dict__``), and the two
    flags' help said "(default 1/2)" where an unset value is at most ``body_timeout_s``."""
    stall = Settings().body_stall_s
    assert isinstance(stall, UnsetSeconds) and not hasattr(stall, "__dict__")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    helps = {a.dest: a.help for a in parser._subparsers._group_actions[0].choices["agent"]._actions}  # type: ignore[union-attr]
    for name, default in (("body_stall_s", 1), ("body_rate_grace_s", 2)):
        assert f"(unset: {default}, or body_timeout_s if that is shorter)" in str(helps[name]), helps[name]


def test_settings_built_in_code_follow_body_timeout_s_as_loaded_ones_do(tmp_path: Path) -> None:
    """Only the loader gave unset ``body_stall_s`` / ``body_rate_grace_s`` at most ``body_timeout_s``: a Settings
    built in code (tests, benches, ``replace``) with ``body_timeout_s=1.5`` raised. Every Settings does it now,
    and the range check still applies to a value someone set."""
    s = Settings(data_dir=str(tmp_path), body_timeout_s=1.5)
    assert (s.body_stall_s, s.body_rate_grace_s) == (1.0, 1.5)
    assert s == load_settings(None, env={"PEERSERVE_DATA_DIR": str(tmp_path), "PEERSERVE_BODY_TIMEOUT_S": "1.5"})
    longer, shorter = s.replace(body_timeout_s=30.0), s.replace(body_timeout_s=0.8)
    assert (longer.body_stall_s, longer.body_rate_grace_s) == (1.0, 2.0)  # unset still: the defaults again
    assert (shorter.body_stall_s, shorter.body_rate_grace_s) == (0.8, 0.8)
    set_by_hand = Settings(data_dir=str(tmp_path), body_rate_grace_s=3.0, body_stall_s=0.5)
    assert set_by_hand.replace(body_timeout_s=60.0).body_rate_grace_s == 3.0  # a value set is kept ...
    with pytest.raises(ConfigError, match=r"body_rate_grace_s: must be 0.5 s to body_timeout_s \(1.5 s\)"):
        set_by_hand.replace(body_timeout_s=1.5)  # ... and checked, never cut to fit
    with pytest.raises(ConfigError, match=r"body_stall_s: must be 0.1 s to body_timeout_s \(1.5 s\)"):
        s.replace(body_stall_s=2.0)
    with pytest.raises(ConfigError, match=r"body_timeout_s: must be at least 0.5 s"):
        Settings(data_dir=str(tmp_path), body_timeout_s=0.3)  # no grace fits under it


def test_the_flags_reach_the_settings(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["agent", "--body-stall-s", "2", "--body-min-rate", "100", "--body-rate-grace-s", "4",
                              "--body-take-below-rates", "2"])  # fmt: skip
    names = ("body_stall_s", "body_min_rate", "body_rate_grace_s", "body_take_below_rates")
    s = load_settings(env={}, overrides={"data_dir": str(tmp_path), **{n: getattr(args, n) for n in names}})
    assert (s.body_stall_s, s.body_min_rate, s.body_rate_grace_s, s.body_take_below_rates) == (2, 100, 4, 2)


async def serve(settings: Settings, app: Any = _reader) -> tuple[Any, int]:
    """The client port's protocol as the agent configures it (``server_config``) serving ``app`` on a free
    loopback port: (the server, its port)."""
    config = server_config(app, settings, "critical")
    config.load()
    protocol_class, state = config.http_protocol_class, ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: protocol_class(config=config, server_state=state, app_state={}),
                                      "127.0.0.1", 0)  # fmt: skip
    return server, server.sockets[0].getsockname()[1]


async def _answer(reader: asyncio.StreamReader, wait_s: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(65536), wait_s)
    except asyncio.TimeoutError:
        return b""  # still open, its place kept
    except OSError as exc:
        return repr(exc).encode()


async def _newcomer_against_slow_uploads(settings: Settings) -> tuple[int, list[bytes]]:
    """At a cap of 2 connections, two 6 KB uploads at 300 B/s from 127.0.91.1 (done in 20 s, under body_timeout_s)
    and, 1.8 s in, a newcomer's GET from 127.0.91.2, through the agent's own ``server_config``: (the newcomer's
    status, what each uploader was sent)."""
    server, port = await serve(settings)
    uploads = [await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.91.1", 0)) for _ in range(2)]
    for _, up_writer in uploads:
        up_writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 6000\r\n\r\n")
    # 300 B/s by the clock, a write every 0.1 s (never 1 s without a byte): a late wake-up on a busy machine sends
    # what is due. 30 bytes a wake-up slowed to ~260 B/s there, under the 280 that 4 x 70 took (the rate is now 60:
    # 240 B/s, a quarter under theirs, since one loaded run in session 27 saw them under 280 all the same).
    loop, sent_each = asyncio.get_running_loop(), 0
    began = loop.time()
    while sent_each < 540:
        due = min(540, int(300 * (loop.time() - began)) + 30)
        for _, up_writer in uploads:
            up_writer.write(b"x" * (due - sent_each))
        sent_each = due
        await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.91.2", 0))
    writer.write(b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    for _, up_writer in uploads:
        up_writer.write(b"x" * 30)
    sent = [await _answer(up_reader, 0.5) for up_reader, _ in uploads]
    for w in (writer, *(up_writer for _, up_writer in uploads)):
        w.close()
    server.close()
    return int(answer.split()[1]), sent


@pytest.mark.parametrize(
    ("min_rate", "kept"),
    [(None, False), (100.0, False), (60.0, True)],
    ids=["defaults", "min_rate_at_their_rate", "min_rate_under_a_quarter_of_it"],
)
def test_slow_uploads_keep_their_places_with_the_minimum_rate_under_a_quarter_of_theirs(
    min_rate: float | None, kept: bool, tmp_path: Path
) -> None:
    """Grace 0.5 s in all (300 B/s falls behind 500 B/s after 1.25 s). At ``body_min_rate`` 100 the uploads are
    never behind, but 300 B/s is under ``body_take_below_rates`` (4) x 100 and their address holds more connections
    than the newcomer's: one is given up (the old advice, review16b F2). At 60 (4 x 60 = 240 B/s) neither is: the
    newcomer gets the cap's 503 and both uploads go on."""
    rate = {} if min_rate is None else {"body_min_rate": min_rate}
    settings = Settings(node_id="n1", data_dir=str(tmp_path), discovery=False, max_concurrency=2,
                        max_connections_per_address=3, body_rate_grace_s=0.5, **rate)  # fmt: skip
    status, sent = asyncio.run(_newcomer_against_slow_uploads(settings))
    if kept:
        assert status == 503 and sent == [b"", b""], (status, sent)
    else:
        given_up = [s for s in sent if s.startswith(b"HTTP/1.1 503 ")]
        assert status == 200 and len(given_up) == 1 and b"" in sent, (status, sent)


async def _newcomer_against_tricklers(settings: Settings) -> tuple[int, list[bytes]]:
    """At a cap of 2 connections, two chunked bodies trickled at 1 byte a second (one big chunk) from 127.0.92.1
    and, 3 s in, a newcomer's GET from 127.0.92.2: (the newcomer's status, what each trickler was sent)."""
    server, port = await serve(settings)
    tricklers = [await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.92.1", 0)) for _ in range(2)]
    for _, t_writer in tricklers:
        t_writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n")
    for _ in range(3):
        for _, t_writer in tricklers:
            t_writer.write(b"x")
        await asyncio.sleep(1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.92.2", 0))
    writer.write(b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    sent = [await _answer(t_reader, 0.5) for t_reader, _ in tricklers]
    for w in (writer, *(t_writer for _, t_writer in tricklers)):
        w.close()
    server.close()
    return int(answer.split()[1]), sent


def test_a_one_byte_a_second_trickler_is_taken_at_the_least_minimum_rate(tmp_path: Path) -> None:
    """``body_min_rate`` at its floor (10 B/s), the stall rule out of reach (``body_stall_s`` 5 s): 1 B/s is behind
    10 B/s by the 0.5 s grace after ~0.6 s, so the newcomer takes a trickler's place. At 0, allowed before, no rule
    ever freed one (review16b F1: 6 of 6 newcomers refused, the tricklers held until their 408)."""
    settings = Settings(node_id="n1", data_dir=str(tmp_path), discovery=False, max_concurrency=2,
                        max_connections_per_address=2, body_min_rate=10.0, body_stall_s=5.0,
                        body_rate_grace_s=0.5)  # fmt: skip
    status, sent = asyncio.run(_newcomer_against_tricklers(settings))
    given_up = [s for s in sent if s.startswith(b"HTTP/1.1 503 ")]
    assert status == 200 and len(given_up) == 1 and b"" in sent, (status, sent)
