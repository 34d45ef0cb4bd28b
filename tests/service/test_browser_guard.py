"""A real agent over loopback refuses what a web page on another site could make a browser send it (DNS
rebinding, cross-site requests: agent/browser_guard.py), names that are not a model at the leader's command
(peerserve/names.py), and answers a client that half-closes its socket (agent/http_limits.py)."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx

from client import Client
from tests.service.conftest import PLAIN

PREDICT = "/v1/models/resnet9000:predict"  # not in the catalogue: a 404 once past the guard, nothing started


def test_host_and_origin_rules_on_a_real_agent(agents: Any) -> None:
    a = agents("a", "--no-discovery", "--allowed-hosts", "board.lab")
    port = a.port
    own = [f"127.0.0.1:{port}", f"localhost:{port}", f"a.local:{port}", f"{socket.gethostname()}:{port}",
           f"board.lab:{port}"]  # fmt: skip
    for host in own:
        assert PLAIN.get(a.url + "/health", headers={"Host": host}).status_code == 200, host
    for host in (f"attacker.test:{port}", "evil.example"):  # a name re-pointed at the agent (DNS rebinding)
        r = PLAIN.get(a.url + "/cluster", headers={"Host": host, "Origin": f"http://{host}"})
        assert r.status_code == 403 and "allowed_hosts" in r.json()["error"]
    with httpx.Client(base_url=a.url, timeout=10) as http:
        assert http.post(PREDICT, json={"instances": [1]}).status_code == 404  # past the guard
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b"):
            r = http.post(PREDICT, content=b'{"instances": [1]}', headers={"content-type": content_type})
            assert r.status_code == 404  # a program's body (curl -d sends a form type): past the guard
        big = b"x" * 2**20  # a refused body is drained, not read: the connection carries the next request
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n" % PREDICT.encode()
                      + b"Origin: http://evil.example\r\n"
                      + b"Content-Length: %d\r\n\r\n" % len(big) + big
                      + b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")  # fmt: skip
            both = b""
            while chunk := s.recv(65536):
                both += chunk
        assert both.startswith(b"HTTP/1.1 403 ") and both.count(b"HTTP/1.1 200 ") == 1, both[:400]
        r = http.post(PREDICT, json={"instances": [1]}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and "cross-origin" in r.json()["error"]
        assert http.post(PREDICT, json={}, headers={"Origin": a.url}).status_code == 404  # the cluster page's own
        cross = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}  # an <img src> on another site
        assert http.get("/services/half_plus_two", headers=cross).status_code == 403
        link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
        page = http.get("/", headers=link)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]  # a link to the page opens
        assert http.get("/services/half_plus_two", headers=link).status_code == 403  # one that would provision
    by_name = Client(agents=[f"http://localhost:{port}"])  # the client library by a name the agent knows
    try:
        assert by_name.cluster()["node_id"] == "a"
    finally:
        by_name.close()


def test_model_names_the_catalogue_refuses_are_refused_at_the_leaders_command(agents: Any) -> None:
    a = agents("a", "--no-discovery")
    for model in ("..", "a..b", "x" * 65):
        r = a.put_desired(2, {model: 1})
        assert r.status_code == 400 and "invalid model name" in r.json()["error"], r.text
    assert a.put_desired(2, {}).status_code == 200
    for model in ("a..b", "x" * 65):
        r = a.get(f"/services/{model}")
        assert r.status_code == 400 and "invalid model name" in r.json()["error"]


def test_a_client_that_half_closes_after_its_request_gets_the_answer(agents: Any) -> None:
    a = agents("a", "--no-discovery")
    body = b'{"instances": [1.0, 2.0]}'
    head = b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", a.port), timeout=30) as s:
        s.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        s.shutdown(socket.SHUT_WR)  # as `nc -N` or a request piped into a socket does
        answer = b""
        while chunk := s.recv(65536):  # the model starts on demand meanwhile: the EOF came long before the answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"predictions": [2.5, 3.0]}
