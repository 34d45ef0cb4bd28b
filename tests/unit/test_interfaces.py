"""The advertised address from the interface setting: an address, a name resolved here, or a clear error."""

from __future__ import annotations

import pytest

from agent.errors import ConfigError
from agent.interfaces import interface_address
from agent.settings import Settings


def test_an_address_is_taken_as_given() -> None:
    assert interface_address("10.213.10.12") == "10.213.10.12"
    assert interface_address("::1") == "::1"


def test_a_name_is_resolved_to_its_ipv4_address() -> None:
    assert interface_address("lo") == "127.0.0.1"


def test_an_unknown_name_says_which_interfaces_exist() -> None:
    with pytest.raises(ConfigError, match=r"no interface named 'eth9' here \(found: .*lo"):
        interface_address("eth9")


def test_auto_is_a_non_loopback_address_or_nothing() -> None:
    address = interface_address("auto")
    assert address == "" or not address.startswith("127.")


def test_an_agent_on_every_address_advertises_its_interface() -> None:
    s = Settings(node_id="board-1", host="0.0.0.0", interface="lo", data_dir="/tmp/x")
    assert s.advertise_address == "127.0.0.1" and s.api_url == "http://127.0.0.1:8400"
    assert Settings(node_id="b", host="127.0.0.3", interface="lo", data_dir="/tmp/x").advertise_address == "127.0.0.3"
