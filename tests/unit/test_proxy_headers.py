"""The reverse proxy's header rules (RFC 9110 7.6.1): hop-by-hop headers never cross it."""

from __future__ import annotations

from urllib.parse import quote

import h11
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from agent.serving import tfrest
from agent.serving.routes import SAFE_PATH, V2_MODEL_PATH, _forward_headers, _response_headers


def _request(headers: list[tuple[str, str]]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw, "client": ("10.0.0.9", 5)})


def test_request_hop_by_hop_headers_and_the_ones_connection_names_are_dropped() -> None:
    sent = _forward_headers(_request([
        ("Host", "agent:8400"), ("Connection", "keep-alive, X-Session"), ("X-Session", "1"), ("Keep-Alive", "5"),
        ("Transfer-Encoding", "chunked"), ("TE", "trailers"), ("Upgrade", "h2c"), ("Proxy-Authorization", "x"),
        ("X-Peerserve-RTT", "n1=2"), ("Content-Type", "application/octet-stream"),
        ("Inference-Header-Content-Length", "142"), ("Content-Length", "654"), ("Expect", "100-continue"),
    ]))  # fmt: skip
    assert dict(sent) == {  # Content-Length too: beside Transfer-Encoding it is stale (RFC 9112 6.3)
        "content-type": "application/octet-stream",
        "inference-header-content-length": "142",
        "X-Forwarded-For": "10.0.0.9",
    }


def test_response_hop_by_hop_headers_are_dropped_end_to_end_ones_kept() -> None:
    kept = _response_headers([
        ("Content-Type", "application/json"), ("Inference-Header-Content-Length", "100"), ("Content-Length", "140"),
        ("Connection", "close, X-Debug"), ("X-Debug", "1"), ("Transfer-Encoding", "chunked"), ("Keep-Alive", "t=5"),
    ])  # fmt: skip
    assert kept == {
        "Content-Type": "application/json",
        "Inference-Header-Content-Length": "100",
        "Content-Length": "140",
    }


def test_the_model_servers_date_and_server_are_dropped_its_server_timing_kept() -> None:
    """uvicorn writes its own Date and Server on every answer: the upstream's would make two of each (review12d F4)."""
    kept = _response_headers([
        ("Date", "Mon, 30 Nov 2026 01:00:00 GMT"), ("server", "peerserve-modelserver"), ("Content-Length", "2"),
        ("Server-Timing", "server;dur=0.5"), ("X-Served-By", "n1"),
    ])  # fmt: skip
    assert kept == {"Content-Length": "2", "Server-Timing": "server;dur=0.5", "X-Served-By": "n1"}


def test_a_json_error_sent_as_text_passes_its_message_on_unchanged() -> None:
    """Triton sends some JSON errors as text/plain; wrapped again the client read
    ``model server answered HTTP 400: {"error":...}`` (review12d F3)."""
    from agent.serving.routes import ERROR_TEXT_MAX, upstream_error_message

    triton = b'{"error":"inference header size should be in range (0, 2), got: 999"}'
    assert upstream_error_message(400, triton) == "inference header size should be in range (0, 2), got: 999"
    assert upstream_error_message(400, b' {"error": "", "code": 3}\n') == ""  # its message, even empty
    # Anything else is text: no string error, not an object, not JSON, cut mid-object, too deep to parse.
    assert upstream_error_message(400, b'{"error": 7}') == 'model server answered HTTP 400: {"error": 7}'
    assert upstream_error_message(400, b'["error"]') == 'model server answered HTTP 400: ["error"]'
    assert upstream_error_message(400, b'{"error": "x\xff"}').startswith("model server answered HTTP 400: ")
    long = b'{"error": "' + b"y" * ERROR_TEXT_MAX + b'"}'
    assert upstream_error_message(400, long).startswith('model server answered HTTP 400: {"error": "yyy')
    deep = b"[" * ERROR_TEXT_MAX  # json.loads raises RecursionError, not ValueError: that was a 500 in the agent
    assert upstream_error_message(500, deep) == "model server answered HTTP 500: " + "[" * ERROR_TEXT_MAX


def test_a_non_json_upstream_error_becomes_the_protocols_error_message() -> None:
    from agent.serving.routes import ERROR_TEXT_MAX, upstream_error_message

    page = b"<html><body><h1>502 Bad Gateway</h1>\n<p>upstream died</p></body></html>"
    assert upstream_error_message(502, page) == "model server answered HTTP 502: 502 Bad Gateway upstream died"
    assert upstream_error_message(500, b"") == "model server answered HTTP 500"
    assert len(upstream_error_message(500, b"x" * 100_000)) < ERROR_TEXT_MAX + 40


def test_client_input_errors_keep_their_status_in_the_protocol_shape() -> None:
    from fastapi.responses import JSONResponse

    from agent.serving.routes import _as_protocol_error

    refused = JSONResponse({"error": "too many client ids", "limit": 64}, status_code=429, headers={"Retry-After": "3"})
    out = _as_protocol_error(refused)
    assert out.status_code == 429 and out.body == b'{"error":"too many client ids"}'
    assert out.headers["retry-after"] == "3" and out.headers["x-peerserve-error"] == "bad_client_input"


def test_the_client_token_never_reaches_a_model_server() -> None:
    headers = [("Authorization", "Bearer phones-need-this-0123"), ("Content-Type", "application/json")]
    assert dict(_forward_headers(_request(headers), keep_authorization=False)) == {
        "content-type": "application/json",
        "X-Forwarded-For": "10.0.0.9",
    }
    assert ("authorization", "Bearer phones-need-this-0123") in _forward_headers(_request(headers))  # no token set


@given(st.text(max_size=24), st.text(max_size=24), st.sampled_from(["/infer", "/ready", "/config", ""]))
def test_every_v2_path_the_proxy_takes_can_be_sent_to_a_model_server(model: str, version: str, rest: str) -> None:
    """A path the v2 route accepts reaches the model server as is; one h11 cannot send was a 502 (and a
    second try elsewhere, 1 s each) instead of the client's 4xx."""
    for path in (f"/v2/models/{model}{rest}", f"/v2/models/{model}/versions/{version}{rest}"):
        if V2_MODEL_PATH.match(path) is not None:
            h11.Connection(h11.CLIENT).send(h11.Request(method="POST", target=path, headers=[("Host", "x")]))


@settings(max_examples=300)
@given(st.text(max_size=24), st.text(max_size=24), st.sampled_from([":predict", ":classify", "/metadata", ""]))
def test_every_tfserving_path_the_proxy_takes_can_be_sent_to_a_model_server(model: str, label: str, rest: str) -> None:
    for path in (f"/v1/models/{model}{rest}", f"/v1/models/{model}/labels/{label}{rest}",
                 f"/v1/models/{model}/versions/{label}{rest}"):  # fmt: skip
        try:
            route = tfrest.parse_path("POST" if rest.startswith(":") else "GET", path)
        except tfrest.TFError:
            continue
        sent = quote(path, safe=SAFE_PATH)  # as the proxy sends it: the server decodes the same route
        h11.Connection(h11.CLIENT).send(h11.Request(method="POST", target=sent, headers=[("Host", "x")]))
        assert tfrest.parse_path("POST" if rest.startswith(":") else "GET", sent) == route


def test_a_content_length_beside_transfer_encoding_is_not_forwarded() -> None:
    sent = _forward_headers(_request([("Transfer-Encoding", "chunked"), ("Content-Length", "5")]))
    assert dict(sent) == {"X-Forwarded-For": "10.0.0.9"}  # the pool frames the body itself (chunked)
