"""One rule for model names, node ids and URLs (peerserve/names.py): nothing the wire accepts is refused by the
catalogue or the client, and nothing a peer sends can carry a path.

Each refused shape is tried at the wire and at the function that receives it from a peer (the heartbeat's
parse_peer_state, the leader's stats reader); tests/service/test_wire_names.py tries the leader's command over
real loopback. The legitimate shapes the other tests use all pass, everywhere.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.catalogue import valid_model_name
from agent.discovery.swim_io import parse_peer_state
from agent.errors import PeerError
from client import answers
from peerserve import names, wire

BAD_MODELS = ["..", "a..b", "x" * 65, "a/b", "", ".hidden", "-m", "m\n", "m m", "m%2F", "m:predict", 7, None]
GOOD_MODELS = ["half_plus_two", "m.v2", "A-1", "digits_triton", "m", "x" * 64, "a.b.c", "v1_0-rc.2"]
BAD_URLS = [
    "http://10.0.0.5:8400/x",  # a path
    "http://10.0.0.5:8400/v1/models/m",
    "http://10.0.0.5:8400?q=1",  # a query
    "http://10.0.0.5:8400#f",  # a fragment
    "http://user:pw@10.0.0.5:8400",  # credentials
    "http://user@10.0.0.5:8400",
    "http://10.0.0.5:0",
    "http://10.0.0.5:99999",
    "ftp://10.0.0.5:21",
    "javascript:alert(1)",
    "http://",
    "http://a b:1",
    "http://10.0.0.5:8400//",
    "10.0.0.5:8400",
    "http://" + "a" * 300,
    None,
    8400,
]
GOOD_URLS = ["http://127.0.0.1:8400", "http://10.0.0.5:8501/", "http://[fd00::5]:8400", "https://board-1.lan:8443",
             "http://[fe80::1%eth0]:8400", "http://board_1:80", "http://board"]  # fmt: skip


def state(api_url: Any = "http://10.0.0.5:8400", endpoints: Any = None) -> dict[str, Any]:
    """A heartbeat answer (GET /peer/state) as an agent sends it."""
    return {"node_id": "n1", "api_url": api_url, "peer_port": 8401, "endpoints": endpoints or {},
            "mem_available_mb": 512, "mem_total_mb": 1024, "gpu_load": None, "cpu_load": 0.1,
            "node_class": "default", "compute": 100, "term": 1, "leader": None}  # fmt: skip


@pytest.mark.parametrize("model", BAD_MODELS)
def test_a_model_name_the_catalogue_refuses_is_refused_at_the_wire_and_where_it_arrives(model: Any) -> None:
    assert not wire.valid_model(model) and not names.valid_model_name(model)
    if not isinstance(model, str):
        return
    assert not valid_model_name(model)
    with pytest.raises(answers.Malformed):
        answers.model_name(model)
    with pytest.raises(wire.WireError):
        wire.DesiredCommand.parse({"term": 1, "leader": "a", "instances": {model: 1}})
    with pytest.raises(wire.WireError):
        wire.NodeStats.parse({"node_id": "n1", "node_class": "default", "compute": 1, "mem_available_mb": 1,
                              "mem_total_mb": 2, "instances": [{"model": model, "running": True}]})  # fmt: skip
    with pytest.raises(wire.WireError):
        wire.ModelStats.parse({"node_id": "n1", "models": {model: {"requests": 1}}})
    with pytest.raises(wire.WireError):
        wire.RequestRow.parse({"id": 1, "ts": 1.0, "model": model, "client": "c", "rtt_ms": {}, "node": None,
                               "latency_ms": None, "status": 200})  # fmt: skip
    with pytest.raises(PeerError):  # the heartbeat a member sends: it is not admitted
        parse_peer_state(state(endpoints={model: ["http://10.0.0.5:8501"]}))


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_url_with_more_than_scheme_host_and_port_is_refused_at_the_wire_and_where_it_arrives(url: Any) -> None:
    assert names.base_url(url) is None
    with pytest.raises(PeerError):
        parse_peer_state(state(api_url=url))
    with pytest.raises(PeerError):
        parse_peer_state(state(endpoints={"half_plus_two": ["http://10.0.0.5:8501", url]}))
    with pytest.raises(answers.Malformed):
        answers.base_url(url)


def test_every_shape_the_tests_use_passes_the_wire_the_catalogue_and_the_client() -> None:
    for model in GOOD_MODELS:
        assert wire.valid_model(model) and valid_model_name(model) and answers.model_name(model) == model
        assert wire.DesiredCommand.parse({"term": 1, "leader": "a", "instances": {model: 1}}).instances == {model: 1}
    for url in GOOD_URLS:
        parsed = parse_peer_state(state(api_url=url, endpoints={"half_plus_two": [url]}))
        assert parsed.api_url == url.rstrip("/") == answers.base_url(url)
        seen = answers.member({"node_id": "n1", "api_url": parsed.api_url, "status": "alive"})
        assert seen["api_url"] == parsed.endpoints["half_plus_two"][0] == parsed.api_url
    assert answers.cluster({"members": [{"node_id": "n1", "api_url": "http://10.0.0.5:8400", "status": "alive",
                                         "models": GOOD_MODELS}]})["members_dropped"] == 0  # fmt: skip


TEXT = st.text(st.sampled_from("aZ09_.-/:@?#%[] \n"), max_size=70)


@settings(max_examples=300, deadline=None)
@given(st.one_of(TEXT, st.sampled_from(GOOD_MODELS + [m for m in BAD_MODELS if isinstance(m, str)])))
def test_the_wire_and_the_client_agree_on_every_model_name(model: str) -> None:
    client_ok = True
    try:
        answers.model_name(model)
    except answers.Malformed:
        client_ok = False
    assert wire.valid_model(model) == client_ok == valid_model_name(model)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.builds(lambda s: "http://" + s, TEXT), st.sampled_from(GOOD_URLS + BAD_URLS[:-2])))
def test_the_wire_and_the_client_agree_on_every_url(url: str) -> None:
    try:
        wire_ok = wire.PeerState.parse(state(api_url=url)).api_url == url.rstrip("/")
    except wire.WireError:
        wire_ok = False
    try:
        client_ok = answers.base_url(url) == url.rstrip("/")
    except answers.Malformed:
        client_ok = False
    assert wire_ok == client_ok
    if wire_ok:  # and what passes has no path, query, fragment or credentials
        rest = url.split("://", 1)[1].rstrip("/")
        assert not any(c in rest for c in "/?#@")
