"""The client API's defence against web pages (agent/browser_guard.py): the pure decisions on a request head.

The same rules on a real agent over loopback: tests/service/test_browser_guard.py.
"""

from __future__ import annotations

import pytest

from agent.browser_guard import (
    HOST_CACHE,
    HostRule,
    checked_host,
    host_rule,
    own_names,
    parse_allowed_hosts,
    refusal,
    split_authority,
)
from agent.errors import ConfigError
from agent.settings import Settings

RULE = HostRule(own_names("n1", "jetson1", "jetson1.lab.example"))
JSON = {"content-type": "application/json"}


def status(
    method: str, headers: dict[str, str], rule: HostRule = RULE, scheme: str = "http", path: str = "/services"
) -> int | None:
    why = refusal(method, scheme, headers, rule, path)
    return None if why is None else why[0]


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:8400", "10.0.0.5", "[::1]:8400", "[fe80::1%25eth0]:8400", "localhost:8400", "LOCALHOST.",
     "jetson1:8400", "jetson1.local:8400", "jetson1.lab.example", "n1.local:8400", "n1"],
)  # fmt: skip
def test_the_agents_own_names_and_any_ip_literal_pass(host: str) -> None:
    assert status("GET", {"host": host}) is None
    assert status("POST", {"host": host, **JSON}) is None


@pytest.mark.parametrize(
    "host",
    ["evil.example:8400", "jetson1.evil.example", "rebind.attacker.test", "jetson2.local",
     "127.0.0.1%evil.example", "10.0.0.5%25rebind.example:8000"],  # an IPv4 address has no zone: a name (review12e)
)  # fmt: skip
def test_any_other_name_is_refused_unless_allowed(host: str) -> None:
    why = refusal("GET", "http", {"host": host}, RULE)
    assert why is not None and why[0] == 403 and "allowed_hosts" in why[1]
    name = host.split(":")[0]
    assert status("GET", {"host": host}, HostRule(RULE.names | {name})) is None
    assert status("GET", {"host": host}, HostRule(RULE.names, any_host=True)) is None  # "*"


def test_a_malformed_host_is_a_400() -> None:
    for host in ["[::1", "a:port", "a:123456", "[::1]x", ""]:
        assert status("GET", {"host": host}) == 400, host


def test_dns_rebinding_is_refused_even_though_the_browser_calls_it_same_origin() -> None:
    page = {"host": "attacker.test:8400", "origin": "http://attacker.test:8400", "sec-fetch-site": "same-origin"}
    assert status("GET", page) == 403 and status("POST", {**page, **JSON}) == 403


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "http://10.0.0.9:8400",
        "http://10.0.0.5:9000",
        "null",
        "http://10.0.0.5:8400/x",
        "file://",
    ],
)
def test_an_origin_that_is_not_the_agents_own_is_refused(origin: str) -> None:
    assert status("POST", {"host": "10.0.0.5:8400", "origin": origin, **JSON}) == 403
    assert status("GET", {"host": "10.0.0.5:8400", "origin": origin}) == 403


def test_the_agents_own_origin_passes_whatever_the_default_port_spelling() -> None:
    assert status("POST", {"host": "10.0.0.5:8400", "origin": "http://10.0.0.5:8400", **JSON}) is None
    assert status("POST", {"host": "jetson1.local", "origin": "http://jetson1.local:80", **JSON}) is None
    assert status("POST", {"host": "jetson1:443", "origin": "https://jetson1", **JSON}, scheme="https") is None
    assert status("POST", {"origin": "http://10.0.0.5:8400", **JSON}) == 403  # no Host to be the origin of


def test_cross_site_fetches_are_refused_and_navigations_pass_to_the_cluster_page_only() -> None:
    host = {"host": "10.0.0.5:8400"}
    for site in ("cross-site", "same-site"):
        assert status("GET", {**host, "sec-fetch-site": site, "sec-fetch-mode": "no-cors"}) == 403  # <img src>
        assert status("GET", {**host, "sec-fetch-site": site, "sec-fetch-mode": "cors"}) == 403
        link = {**host, "sec-fetch-site": site, "sec-fetch-mode": "navigate"}
        assert status("GET", link, path="/") is None and status("HEAD", link, path="/ui") is None  # a link
        assert status("GET", link, path="/ui/") is None  # which redirects to /ui
        assert status("GET", link, path="/services/half_plus_two") == 403  # a link that would provision
        assert status("GET", link, path="/ui/static/app.js") == 403
        assert status("POST", {**link, **JSON}, path="/") == 403  # a form
    for site in ("same-origin", "none"):
        assert status("POST", {**host, "sec-fetch-site": site, **JSON}) is None


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "TEXT/PLAIN"],
)  # fmt: skip
def test_a_simple_body_passes_from_a_program_and_is_refused_from_another_sites_page(content_type: str) -> None:
    """TF-Serving's own examples post JSON with ``curl -d`` (a form type): programs send no Origin and pass; a page
    on another site can send such a body without a preflight, but its browser names the site: 403."""
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert status(method, {"host": "10.0.0.5:8400", "content-type": content_type}) is None
        page = {"host": "10.0.0.5:8400", "content-type": content_type, "origin": "http://evil.example"}
        assert status(method, page) == 403
        fetched = {"host": "10.0.0.5:8400", "content-type": content_type, "sec-fetch-site": "cross-site"}
        assert status(method, fetched) == 403


def test_programs_json_and_binary_bodies_pass() -> None:
    for content_type in ("application/json", "application/json; charset=utf-8", "application/octet-stream", None):
        headers = {"host": "10.0.0.5:8400"} | ({"content-type": content_type} if content_type else {})
        assert status("POST", headers) is None
    assert status("POST", {**JSON}) is None  # HTTP/1.0 without Host: no browser sends that


def test_the_setting_parses_names_and_star_and_refuses_garbage() -> None:
    assert parse_allowed_hosts("") == (frozenset(), False)
    assert parse_allowed_hosts(" Board.Lab. , proxy.example ,") == (frozenset({"board.lab", "proxy.example"}), False)
    assert parse_allowed_hosts("*")[1] and parse_allowed_hosts("a,*")[1]
    for bad in ("a b", "http://x", "x/y", "a..b", "a:80", ".x"):
        with pytest.raises(ValueError):
            parse_allowed_hosts(bad)
        with pytest.raises(ConfigError, match="allowed_hosts"):
            Settings(node_id="n1", allowed_hosts=bad)
    rule = host_rule("n1", "board.lab")
    assert {"localhost", "n1", "n1.local", "board.lab"} <= rule.names and not rule.any_host


def test_split_authority() -> None:
    assert split_authority("Box.:80", "http") == ("box", 80)
    assert split_authority("box", "https") == ("box", 443)
    assert split_authority("[fe80::1%25eth0]:5", "http") == ("fe80::1%25eth0", 5)
    assert split_authority("box:0", "http") is None and split_authority("box:65536", "http") is None


def test_host_verdicts_are_remembered_within_their_bound() -> None:
    checked_host.cache_clear()
    for i in range(2 * HOST_CACHE):  # a client sending a new Host each time cannot grow the memo
        assert status("GET", {"host": f"name{i}.example"}) == 403
    assert checked_host.cache_info().currsize == HOST_CACHE
    assert status("GET", {"host": "127.0.0.1:8400"}) is None
    assert status("GET", {"host": "127.0.0.1:8400"}, HostRule(frozenset(), any_host=True)) is None  # per rule
    assert status("GET", {"host": "name0.example"}, HostRule(frozenset({"name0.example"}))) is None
