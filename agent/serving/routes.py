"""The agent's serving routes: the endpoint query and a streaming reverse proxy for both protocols.

    GET  /services                         best endpoint of every deployed model (whole cluster)
    GET  /services/{model}                 best endpoint for this client, with `why`
    ANY  /services/{model}/v1/models/...   TF-Serving REST of that model, proxied to the best endpoint
    ANY  /services/{model}/v2/models/...   Open Inference Protocol (KServe v2) of that model, proxied
    ANY  /v1/models/{model}...             TF-Serving REST at the root, for every model of the cluster
    GET  /v2, /v2/health/live|ready        the Open Inference Protocol's server metadata and health
    ANY  /v2/models/{model}[/versions/v][/ready|/infer|/config]   proxied to a server of that model

On protocol paths every error, the agent's own included, is exactly ``{"error": "..."}`` (both protocols
use that shape) with a machine-readable code in ``X-Peerserve-Error``; a model server's answer, errors
included, passes through unchanged (binary tensor bodies and ``Inference-Header-Content-Length`` too).

Only inference (TF-Serving's POST ``:predict``/``:classify``/``:regress``, v2's POST ``.../infer``) is timed: its 2xx
service time ranks endpoints (``NodeAgent.record_latency``) and is logged as the leader's service time. A status,
metadata, readiness or config request runs no model (the stand-in's own figure counts the same three APIs,
server_stats.INFERENCE_APIS): timed, its ~1 ms answer made a 600 ms node look 6 ms to every client (review26a M1).
It is still logged, without a time, as demand: it provisions a model placed nowhere (a client that waits for ready
before it sends an inference gets one), and a poll that were not demand would see the model stopped after two
placement periods and started again at the next poll (review26c).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote, quote_from_bytes, unquote_plus

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from agent.catalogue import valid_model_name
from agent.client_ids import CLIENT_INPUT
from agent.decisions import Choice, best_per_model
from agent.http_limits import AbortAnswer
from agent.node import NodeAgent
from agent.serving import pauses, tfrest
from agent.serving.inflight import InFlight, Token
from agent.serving.resolve import NoCapacity, Provisioning, Ranked, ShuttingDown, Unknown
from agent.serving.server_stats import INFERENCE_APIS
from agent.serving.upstream import BodySourceError, BodyTooLarge, Replay, Unsendable, UpstreamError, UpstreamPool

log = logging.getLogger(__name__)

ERROR_HEADER = "X-Peerserve-Error"
NODE_HEADER = "X-Peerserve-Node"
V2_MODEL_PATH = re.compile(  # names and versions as the catalogue takes them: legal in a request target as is
    r"^/v2/models/(?P<model>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})(?:/versions/(?P<version>[A-Za-z0-9_-]{1,64}))?"
    r"(?P<rest>/ready|/infer|/config|/stats)?$"
)
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "host", "x-peerserve-rtt", "x-peerserve-client",
    "expect",  # 100-continue is settled between the client and the agent; the body is already flowing
}  # fmt: skip
# the answer's own: uvicorn writes its Date and Server on every answer, the model server's would come twice
UPSTREAM_OWN = {"date", "server"}
SAFE_PATH = "/:%"  # the HTTP layer decoded the path once: re-quote the rest (label "a b" goes as "a%20b")
SMALL_BODY = 64 * 1024  # an answer up to this size is sent in one piece; larger ones are streamed
ERROR_TEXT_MAX = 2048  # of a non-JSON upstream error, kept as the message
ERROR_READ_S = 5.0  # at most this long reading it (the pool's timeout is per read: a trickle could last hours)
ANSWER_READ_S = 30.0  # a one-write answer (<= SMALL_BODY) is read whole within this from its head, else 504
STREAM_PACE = (64 * 1024, 30.0)  # a streamed answer: each 64 KiB within 30 s of waiting on the server, else cut
STREAM_MAX_S = 600.0  # and whole within this of its head, else cut (a server keeping the pace held a slot for good)
ALL_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
PROTOCOLS = {"tfserving": "v1", "triton": "v2"}

QUERY_SAFE = "!$&'()*+,;=:@/?%[]"  # kept as sent in a forwarded query; any other byte outside [A-Za-z0-9_.~-] escaped


def forwarded_query(raw: bytes) -> str:
    """The client's query string as it sent it, less the ``rtt`` parameters (the RTT report is the agent's, not the
    model server's). Parsing and re-encoding it (``parse_qsl`` + ``urlencode``) changed what the server got (``flag``
    became ``flag=``, ``a=1;b=2`` became ``a=1%3Bb%3D2``) and cost a Python step per parameter (review26a L2); the
    query's parameters are bounded before the app runs (``HttpLimits``: ``MAX_QUERY_PARAMS``). A byte that cannot
    appear in a request target (non-ASCII, a quote, a space) is percent-encoded."""
    if not raw:
        return ""
    kept = [part for part in raw.split(b"&") if unquote_plus(part.partition(b"=")[0].decode("latin-1")) != "rtt"]
    return quote_from_bytes(b"&".join(kept), safe=QUERY_SAFE)


ClientOf = Callable[[Request], "tuple[str, dict[str, float]] | JSONResponse"]


def protocol_error(status: int, message: str, code: str, retry_after: int | None = None) -> JSONResponse:
    """Exactly ``{"error": message}``; the code rides in X-Peerserve-Error."""
    headers = {ERROR_HEADER: code}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _as_protocol_error(response: JSONResponse) -> JSONResponse:
    """An error of the client-input checks, in the protocols' exact ``{"error": ...}`` shape (status kept)."""
    try:
        body = json.loads(bytes(response.body))
        message = str(body.get("error", "bad request")) if isinstance(body, dict) else "bad request"
    except ValueError:
        message = "bad request"
    retry = response.headers.get("retry-after")
    code = response.headers.get(ERROR_HEADER.lower()) or "bad_client_input"
    return protocol_error(response.status_code, message, code, int(retry) if retry and retry.isdigit() else None)


def _endpoint_json(choice: Choice, live: dict[str, int] | None = None) -> dict[str, Any]:
    c = choice.candidate
    out: dict[str, Any] = {"model": c.model, "node": c.node, "url": c.url, "why": choice.why()}
    if live is not None:
        out["in_flight"] = live.get(c.url, 0)  # requests this agent's proxy has open there
    return out


def _forward_headers(request: Request, keep_authorization: bool = True) -> list[tuple[str, str]]:
    """The client's end-to-end headers; ``Authorization`` dropped when it is the agent's client token (it
    would otherwise travel in clear to model servers on other boards, even from an HTTPS client)."""
    named = {v.strip().lower() for v in request.headers.get("connection", "").split(",")}
    if not keep_authorization:
        named.add("authorization")
    if "transfer-encoding" in request.headers:  # it overrides a Content-Length, which must not go on (RFC 9112 6.3)
        named.add("content-length")
    out = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() not in named]
    if request.client is not None:
        out.append(("X-Forwarded-For", request.client.host))
    return out


def _response_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    """The model server's end-to-end headers, less its Date and Server (the agent's HTTP server sends its own).

    A header the server sent more than once is one field, its values joined with ", " (RFC 9110 5.3), except
    Set-Cookie, which cannot be joined: its first value is here, the others in ``_more_cookies``."""
    named = {v.strip().lower() for k, v in headers if k.lower() == "connection" for v in v.split(",")}
    drop = HOP_BY_HOP | UPSTREAM_OWN | named
    out: dict[str, str] = {}
    first: dict[str, str] = {}  # lower-case name -> the name as the server first spelled it
    for k, v in headers:
        low = k.lower()
        if low in drop:
            continue
        if low not in first:
            first[low] = k
            out[k] = v
        elif low != "set-cookie":
            out[first[low]] += ", " + v
    return out


def _more_cookies(headers: list[tuple[str, str]]) -> list[str]:
    """The model server's second and later Set-Cookie values (a dict holds one; they go on as separate fields)."""
    return [v for k, v in headers if k.lower() == "set-cookie"][1:]


class AnswerCut(AbortAnswer):
    """A model server's answer that did not come whole: ``status`` is 504 when a deadline or the pace ended it,
    502 when the server broke it off."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class AtServer:
    """One request counted in the live queue (``InFlight``) while it is at its server: from its last byte sent to
    its response head, the ``service_ms`` interval (review14a F2: counted from before the client's body was
    streamed to after the client read the whole answer, three stalled uploads steered 199 of 200 endpoint
    answers away from a server doing nothing)."""

    def __init__(self, inflight: InFlight, url: str) -> None:
        self.inflight = inflight
        self.url = url
        self.token: Token | None = None
        self.counted = False

    def sent(self) -> None:
        if not self.counted:  # once, however many attempts the pool makes
            self.counted = True
            self.token = self.inflight.begin(self.url, time.monotonic())

    def end(self) -> None:
        self.inflight.end(self.token)
        self.token = None


def upstream_error_message(status: int, body: bytes) -> str:
    """The message for a model server's error not labelled JSON: its own ``error`` when the first
    ERROR_TEXT_MAX bytes are a JSON object with a string ``error`` (Triton sends some of its JSON errors as
    text/plain: wrapped again they read ``model server answered HTTP 400: {"error": ...}``), else its text
    (first ERROR_TEXT_MAX bytes, tags stripped)."""
    head = body[:ERROR_TEXT_MAX]
    try:
        parsed = json.loads(head)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than the parser goes
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    text = re.sub(r"<[^>]*>", " ", head.decode("utf-8", "replace"))
    text = " ".join(text.split())
    return f"model server answered HTTP {status}" + (f": {text}" if text else "")


def _v2_inference(request: Request, match: re.Match[str]) -> bool:
    """Whether a v2 model path (V2_MODEL_PATH's match) runs the model: POST .../infer, not metadata, ready, config
    or stats."""
    return request.method == "POST" and match.group("rest") == "/infer"


def _is_json(headers: list[tuple[str, str]]) -> bool:
    return any(k.lower() == "content-type" and "json" in v.lower() for k, v in headers)


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return "chunked" in request.headers.get("transfer-encoding", "").lower() or (length is not None and length != "0")


def drop_timing(headers: dict[str, str]) -> None:
    """Remove every Server-Timing entry (``server_timing = false``: a model server's own included)."""
    for k in [k for k in headers if k.lower() == "server-timing"]:
        del headers[k]


def add_timing(headers: dict[str, str], began: float, upstream_ms: float | None, gc_ms: float = 0.0) -> None:
    """Append the agent's W3C Server-Timing entries to the model server's: ``agent`` (handler entry -> answer
    read), ``upstream`` (request sent -> response head) and ``agent-gc`` (the agent's garbage-collector pauses
    in that time), in ms, so a client sees where its time went."""
    theirs = [v for k, v in headers.items() if k.lower() == "server-timing"]
    drop_timing(headers)
    ours = f"agent;dur={1000 * (time.perf_counter() - began):.3f}"
    if upstream_ms is not None:
        ours += f", upstream;dur={upstream_ms:.3f}"
    ours += f", agent-gc;dur={gc_ms:.3f}"
    headers["Server-Timing"] = ", ".join([*theirs, ours])


class ServingRoutes:
    """The serving routes bound to one agent (its upstream pool, its client identification)."""

    def __init__(self, agent: NodeAgent, client_of: ClientOf, max_body: int) -> None:
        self.agent = agent
        self.client_of = client_of
        self.max_body = max_body
        self.pool = UpstreamPool()
        self.inflight = InFlight()  # requests this proxy has open per model server (live queue lengths)

    def mount(self, app: FastAPI) -> None:
        app.add_api_route("/services", self.services, methods=["GET"], openapi_extra=CLIENT_INPUT)
        app.add_api_route("/services/{model}", self.service, methods=["GET"], openapi_extra=CLIENT_INPUT)
        app.add_api_route(
            "/services/{model}/{path:path}", self.services_proxy, methods=ALL_METHODS, openapi_extra=CLIENT_INPUT
        )
        app.add_api_route("/v1/{path:path}", self.tfserving_root, methods=ALL_METHODS)
        app.add_api_route("/v2", self.v2_server, methods=["GET"])
        app.add_api_route("/v2/health/live", self.v2_live, methods=["GET"])
        app.add_api_route("/v2/health/ready", self.v2_ready, methods=["GET"])
        app.add_api_route("/v2/{path:path}", self.v2_root, methods=ALL_METHODS)

    # -- endpoint queries ---------------------------------------------------------------------------
    async def services(self, request: Request) -> Any:
        who = self.client_of(request)
        if isinstance(who, JSONResponse):
            return who
        client, reported = who
        best = best_per_model(self.agent.candidates(), self.agent.client_rtts(client, reported))
        return JSONResponse([_endpoint_json(choice) for choice in best.values()])

    async def service(self, model: str, request: Request) -> Any:
        if not valid_model_name(model):
            return JSONResponse({"error": f"invalid model name {model[:80]!r}"}, status_code=400)
        who = self.client_of(request)
        if isinstance(who, JSONResponse):
            return who
        client, reported = who
        live = self.inflight.counts(time.monotonic())
        outcome = await self.agent.resolve(model, client, reported, live)
        if isinstance(outcome, Ranked):
            best = outcome.choices[0]
            self._record(model, client, reported, best.candidate.node, None, 200)
            alternatives = [_endpoint_json(c, live) for c in outcome.choices[1:4]]
            return JSONResponse({**_endpoint_json(best, live), "alternatives": alternatives})
        if isinstance(outcome, Unknown):
            body = {"error": f"unknown model {model!r}: not in the catalogue", "models": list(outcome.known)}
            return JSONResponse(body, status_code=404, headers={ERROR_HEADER: "unknown_model"})
        return self._outcome_error(outcome, model, "tfserving", client, reported)

    # -- protocol entry points -----------------------------------------------------------------------
    async def services_proxy(self, model: str, path: str, request: Request) -> Response:
        upstream_path = "/" + path
        if path.lower().startswith("v1/"):
            try:
                route = tfrest.parse_path(request.method, upstream_path)
            except tfrest.TFError as exc:
                return protocol_error(exc.status, exc.message, "bad_path")
            if route.model != model:
                return protocol_error(400, f"{upstream_path[:100]} is not a path of model {model!r}", "bad_path")
            return await self.proxy(model, "tfserving", upstream_path, request, route.kind in INFERENCE_APIS, route)
        match = V2_MODEL_PATH.match(upstream_path)
        if match is None or match.group("model") != model:
            return protocol_error(400, f"not a TF-Serving or v2 path of {model!r}: {upstream_path[:100]}", "bad_path")
        return await self.proxy(model, "triton", upstream_path, request, _v2_inference(request, match))

    async def tfserving_root(self, path: str, request: Request) -> Response:
        try:
            route = tfrest.parse_path(request.method, "/v1/" + path)
        except tfrest.TFError as exc:
            return protocol_error(exc.status, exc.message, "bad_path")
        return await self.proxy(route.model, "tfserving", "/v1/" + path, request, route.kind in INFERENCE_APIS, route)

    async def v2_server(self) -> Response:
        return JSONResponse({"name": "peerserve", "version": "1", "extensions": ["binary_tensor_data"]})

    async def v2_live(self) -> Response:
        return Response(status_code=200)

    async def v2_ready(self) -> Response:
        if self.agent.catalogue.current.models:
            return Response(status_code=200)
        return protocol_error(400, "no models in the catalogue", "not_ready")

    async def v2_root(self, path: str, request: Request) -> Response:
        match = V2_MODEL_PATH.match("/v2/" + path)
        if match is None:
            return protocol_error(404, "Not Found", "bad_path")
        return await self.proxy(match.group("model"), "triton", "/v2/" + path, request, _v2_inference(request, match))

    # -- the proxy -------------------------------------------------------------------------------------
    async def proxy(
        self,
        model: str,
        protocol: str,
        upstream_path: str,
        request: Request,
        inference: bool,
        tf_route: tfrest.Route | None = None,
    ) -> Response:
        """Resolve ``model`` and stream the request to the best endpoint, once more to the next if the first could not
        be reached or failed before the request's last byte went out. A request sent whole is never sent again: a
        timeout answers 504, a server that then closed or answered malformed HTTP 502 (review14d S1: an input that
        kills its server, sent on, took down the next one too).

        ``inference``: the request runs the model; only then is its time an execution time (module docstring: a
        status GET is logged as demand without one). ``tf_route``: a TF-Serving request's parsed path, for
        TF-Serving's own error when the model is not in the catalogue (``tfrest.not_served``: ``Specific(name, 3)``
        for a version, not ``Latest(name)``)."""
        began, gc_before = time.perf_counter(), pauses.paused_ms()
        spec = self.agent.catalogue.current.get(model)
        if spec is not None and spec.server != protocol:
            other = "/v1/models/..." if spec.server == "tfserving" else "/v2/models/..."
            return protocol_error(400, f"model {model!r} is served by {spec.server}: use {other}", "wrong_protocol")
        who = self.client_of(request)
        if isinstance(who, JSONResponse):
            return _as_protocol_error(who)
        client, reported = who
        outcome = await self.agent.resolve(model, client, reported, self.inflight.counts(time.monotonic()))
        if isinstance(outcome, Unknown) and tf_route is not None:
            unknown = tfrest.not_served(tf_route)
            return protocol_error(unknown.status, unknown.message, "unknown_model")
        if not isinstance(outcome, Ranked):
            return self._outcome_error(outcome, model, protocol, client, reported)
        body = Replay(request.stream(), self.max_body) if _has_body(request) else None
        if body is not None:
            try:
                await body.prefetch()  # a slow client holds no server connection while it sends
            except BodyTooLarge as exc:
                return protocol_error(413, str(exc), "body_too_large")
            except BodySourceError as exc:
                raise exc.original from None  # refused by the HTTP bounds (408/413) or the client left
        headers = _forward_headers(request, keep_authorization=not self.agent.settings.client_token)
        query = forwarded_query(request.scope.get("query_string", b""))
        refused_here = False  # a server of this node refused the connection (it is gone: being replaced)
        timed_out: str | None = None  # the node whose server took the whole request and did not answer in time
        broke_off: tuple[str, str] | None = None  # (node, why): its server took the whole request, then failed
        source = request.client.host if request.client is not None else ""
        for choice in outcome.choices[:2]:  # the best, then one retry elsewhere if it is unreachable
            target = choice.candidate
            url = f"{target.url}{quote(upstream_path, safe=SAFE_PATH)}" + (f"?{query}" if query else "")
            at_server = AtServer(self.inflight, target.url)
            try:
                upstream = await self.pool.request(request.method, url, headers, body, on_sent=at_server.sent)
            except BodyTooLarge as exc:
                return protocol_error(413, str(exc), "body_too_large")
            except Unsendable as exc:
                return protocol_error(400, str(exc), "bad_request")
            except UpstreamError as exc:
                log.warning("proxy to %s (%s) failed: %s", target.url, target.node, exc)
                if exc.refused and target.node == self.agent.settings.node_id:
                    refused_here = self.agent.endpoint_refused(target.url) or refused_here
                if exc.sent and exc.timed_out:  # it may still be running there: not sent again (review14a F6)
                    timed_out = target.node
                    break
                if at_server.counted:  # the server had it whole: an input that killed it kills no other (S1)
                    broke_off = (target.node, str(exc))
                    break
                if exc.sent and (body is None or not body.replayable):
                    break
                continue
            finally:
                at_server.end()
            if upstream.status >= 400 and not _is_json(upstream.headers):
                return await self._wrap_error(upstream, model, target.node, client, reported)
            answer_headers = _response_headers(upstream.headers)
            cookies = _more_cookies(upstream.headers)
            if not self.agent.settings.server_timing:
                drop_timing(answer_headers)
            answer_headers[NODE_HEADER] = target.node  # which node served it (the load bench adds its RTT)
            length = next((v for k, v in answer_headers.items() if k.lower() == "content-length"), "")
            if length.isdigit() and int(length) <= SMALL_BODY:  # one write; no streaming machinery
                deadline = asyncio.get_running_loop().time() + ANSWER_READ_S  # a trickled answer holds no handler
                stream = self._stream(upstream, model, target.node, client, reported, source, inference, deadline)
                try:
                    answer = b"".join([chunk async for chunk in stream])
                except AnswerCut as exc:  # nothing sent yet: the client gets the failure, not half an answer
                    code = "upstream_timeout" if exc.status == 504 else "upstream_broke_off"
                    return protocol_error(exc.status, f"{exc}: the answer was not complete", code)
                if self.agent.settings.server_timing:
                    add_timing(answer_headers, began, upstream.service_ms, pauses.paused_ms() - gc_before)
                small = Response(answer, status_code=upstream.status, headers=answer_headers)
                for cookie in cookies:
                    small.headers.append("Set-Cookie", cookie)
                return small
            ends = asyncio.get_running_loop().time() + STREAM_MAX_S  # paced or not, it ends (review14d S2)
            stream = self._stream(upstream, model, target.node, client, reported, source, inference, ends, STREAM_PACE)
            streamed = StreamingResponse(stream, status_code=upstream.status, headers=answer_headers)
            for cookie in cookies:
                streamed.headers.append("Set-Cookie", cookie)
            return streamed
        if timed_out is not None:
            self._record(model, client, reported, timed_out, None, 504)
            why = f"the model server on {timed_out} did not answer within {self.pool.timeout:g} s"
            return protocol_error(504, f"{why}; not sent elsewhere, it may still be running there", "upstream_timeout")
        if broke_off is not None:
            self._record(model, client, reported, broke_off[0], None, 502)
            why = f"the model server on {broke_off[0]} took the whole request and did not answer ({broke_off[1]})"
            return protocol_error(502, f"{why}; not sent elsewhere", "upstream_broke_off")
        if refused_here and not self.agent.candidates(model) and self.agent.shutting_down:  # nothing replaces it
            return self._outcome_error(ShuttingDown(), model, protocol, client, reported)
        if refused_here and not self.agent.candidates(model):  # no other server to try: the client retries soon
            why = "its server on this node refused the connection and is being replaced"
            return self._outcome_error(Provisioning(self.agent.settings.node_id, why, retry_after_s=1),
                                       model, protocol, client, reported)  # fmt: skip
        self._record(model, client, reported, None, None, 502)
        return protocol_error(502, f"no endpoint of {model} answered", "unreachable")

    async def _stream(
        self,
        upstream: Any,
        model: str,
        node: str,
        client: str,
        reported: Any,
        source: str,
        inference: bool,
        deadline: float | None = None,
        pace: tuple[int, float] | None = None,
    ) -> AsyncIterator[bytes]:
        """Stream the answer; record the server's own time (``service_ms``), never the client's pauses, and only of
        an inference's 2xx answer as an execution time (review14a F3: a client's malformed predicts, rejected in well
        under a millisecond, made a 50 ms node look 5 ms to every client; review26a M1: status GETs from two more
        addresses made a 603 ms node look 6.3 ms). A request that is not ``inference`` is logged without its time.

        ``deadline`` bounds the whole answer, ``pace`` its rate (``UpstreamResponse.aiter_body``). A server that
        breaks off its answer or misses either raises ``AnswerCut`` out of the stream (recorded as a 502, 504 for
        a timeout): the small-body path answers the client that status; a streamed answer is aborted
        (``HttpLimits`` ends the exchange without its last chunk or bytes and uvicorn closes the connection), so
        the client sees the cut instead of a well-formed 200 with half a body."""
        complete, status = False, upstream.status
        try:
            try:
                async for chunk in upstream.aiter_body(deadline, pace):
                    yield chunk
            except UpstreamError as exc:
                status = 504 if exc.timed_out else 502
                log.warning("model server %s broke off the response: %s", node, exc)
                what = "did not send its answer in time" if exc.timed_out else "broke off its answer"
                raise AnswerCut(f"model server {node} {what}", status) from None
            complete = True
        finally:
            await upstream.aclose()
            latency = upstream.service_ms if complete else None
            if inference and latency is not None and 200 <= upstream.status < 300:
                self.agent.record_latency(node, model, latency, source)
            self._record(model, client, reported, node, latency if inference else None, status)

    async def _wrap_error(self, upstream: Any, model: str, node: str, client: str, reported: Any) -> Response:
        """A model server's error not labelled JSON (a crash page, a proxy's HTML, Triton's text/plain JSON): the
        protocol's error body (upstream_error_message)."""
        text = b""
        deadline = asyncio.get_running_loop().time() + ERROR_READ_S  # a trickled error page holds no handler long
        try:
            async for chunk in upstream.aiter_body(deadline):
                text += chunk[: ERROR_TEXT_MAX - len(text)]
                if len(text) >= ERROR_TEXT_MAX:
                    break  # the rest is never read: the connection is closed, not reused
        except UpstreamError:
            pass
        finally:
            await upstream.aclose()
        self._record(model, client, reported, node, None, upstream.status)
        return protocol_error(upstream.status, upstream_error_message(upstream.status, text), "upstream_error")

    def _outcome_error(self, outcome: Any, model: str, protocol: str, client: str, reported: Any) -> JSONResponse:
        """The protocol's error for an outcome that is not ``Ranked`` (logged as demand, but an unknown model's)."""
        if isinstance(outcome, Unknown):
            if protocol == "tfserving":
                return protocol_error(404, f"Servable not found for request: Latest({model})", "unknown_model")
            return protocol_error(400, f"Request for unknown model: '{model}' is not found", "unknown_model")
        if isinstance(outcome, NoCapacity):
            self._record(model, client, reported, None, None, 507)
            return protocol_error(507, f"{model} cannot be placed: {outcome.reason}", "no_capacity")
        if isinstance(outcome, ShuttingDown):
            self._record(model, client, reported, None, None, 503)
            return protocol_error(503, f"agent shutting down: {model} is not started here; retry on another agent",
                                  "shutting_down", retry_after=outcome.retry_after_s)  # fmt: skip
        assert isinstance(outcome, Provisioning)
        self._record(model, client, reported, None, None, 503)
        return protocol_error(503, f"{model} is being provisioned on {outcome.node} ({outcome.reason}); retry shortly",
                              "provisioning", retry_after=outcome.retry_after_s)  # fmt: skip

    def _record(
        self, model: str, client: str, reported: Any, node: str | None, latency: float | None, status: int
    ) -> None:
        """One request log record: every record in the leader's window is demand (agent/placement_sites.py), and one
        with a latency a service time (an inference's only)."""
        self.agent.store.record_request(self.agent.clock(), model, client, reported, node, latency, status)


def mount_serving(app: FastAPI, agent: NodeAgent, client_of: ClientOf, max_body: int) -> ServingRoutes:
    """Add the serving routes to ``app``; returns them (their pool is closed with the agent)."""
    routes = ServingRoutes(agent, client_of, max_body)
    routes.mount(app)
    return routes
