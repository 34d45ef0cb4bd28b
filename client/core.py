"""The peerserve client library, sync (``Client``) and async (``AsyncClient``); httpx and zeroconf only.

    from client import Client
    with Client() as c:                        # agents found by mDNS (or Client(agents=[url, ...]))
        c.endpoint("half_plus_two").url       # best endpoint for this client
        c.predict("half_plus_two", instances=[1.0, 2.0, 5.0])   # TF-Serving REST -> {"predictions": [...]}
        c.infer("digits_triton", [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [...]}])

Queries go to any agent and fail over to the next on error, timeout or an answer it cannot use
(client/answers.py). The client token (``PEERSERVE_CLIENT_TOKEN``) goes only to agents named here or in
``PEERSERVE_AGENT`` and the members they list, never to one found by mDNS unless ``trust_discovered=True``
(or ``PEERSERVE_TRUST_DISCOVERED=1``): see client/ops.py and docs/security.md. The client measures its RTT to
the nodes it learns of (cheap: one small request each, cached for ``rtt_ttl_s``) and reports them with
every query (``X-Peerserve-RTT``), so the leader's placement sees real client latencies. Both classes are
thin shells over one core (client/ops.py); ``transport=`` is handed to httpx, as httpx's own clients take it.
An inference answer is read up to ``max_answer_bytes`` (64 MiB) and ``max_answer_values`` (8 Mi JSON values,
a list, object or string counting as 3-5: what they cost parsed; client/answers.py); past either the call
raises ``AnswerTooLarge`` at once, without running the model elsewhere.

Timeouts: ``timeout`` (5 s) is httpx's, per connect / read / write; every request also has a whole-call
deadline, ``call_deadline_s`` (60 s; a control call such as /cluster or /services 10 s at most), head and answer
together (client/deadline.py: with the client's own transport every socket wait is bounded by what is left of
it; a ``transport=`` handed in keeps its own timeouts for the head, the chunks of a streamed answer are checked
either way), failing over like a timeout. A question asked of the agents in turn (failing over) has
``ask_budget_s`` (default four ``timeout``s, 20 s: four agents that accept and never answer), counted from when the
first agent's call returns: a next agent is asked only while it lasts, an inference's with its whole deadline, a
control call's with at most what is left (client/ops.py ``ask``; up to
128 agents may be listed, and all down cost ~128 timeouts before). Measuring RTTs probes at most
``RTT_MAX_PROBED`` (16) nodes within ``RTT_BUDGET_S`` (2 s) in all (client/ops.py ``measure_rtts``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import httpx

from client.answers import ANSWER_LIMIT, ANSWER_VALUES
from client.deadline import DEADLINE, async_deadline_transport, deadline_transport
from client.ops import (
    ASK_TIMEOUTS,
    CLIENT_HEADER,
    RTT_HEADER,
    AnswerEncoded,
    Browse,
    Call,
    ClientCore,
    Endpoint,
    Op,
    OverLimit,
    Probes,
    Result,
    error_for,
)

__all__ = ["CLIENT_HEADER", "RTT_HEADER", "AsyncClient", "Client", "Endpoint", "raise_for"]

T = TypeVar("T")
CALL_DEADLINE_S = 60.0  # a whole request, head and answer (64 MiB at ~1 MB/s); a Call may ask for less


def _options(call: Call, http: httpx.Client | httpx.AsyncClient) -> dict[str, Any]:
    """The request's options; every request asks for the answer unencoded (httpx would otherwise offer
    gzip, deflate and, where the packages are installed, br and zstd, and decode them: an 809-byte
    brotli answer is 512 MiB in one decoder call, before any limit can look at it)."""
    headers = {**call.headers, "Accept-Encoding": "identity"}
    return {"json": call.json, "headers": headers, "timeout": call.timeout or http.timeout}


def _past(call: Call, deadline_s: float) -> httpx.ReadTimeout:
    """The failure of a call whose deadline passed (httpx's timeouts say only "timed out")."""
    return httpx.ReadTimeout(f"{call.url}: no whole answer within {deadline_s:g} s (the call's deadline)")


def _encoded(call: Call, response: httpx.Response) -> AnswerEncoded | None:
    """A failed call when the answer carries a Content-Encoding other than identity (it was not asked for;
    the client decodes none: no decompressor bounds its output per call, brotli's none at all)."""
    codings = [c.strip().lower() for c in response.headers.get_list("content-encoding", split_commas=True)]
    if all(c == "identity" for c in codings):
        return None
    return AnswerEncoded(f"{call.url} answered with Content-Encoding {', '.join(codings)[:64]!r}, not asked for")


def _kept(response: httpx.Response, chunks: list[bytes]) -> httpx.Response:
    """The answer with its body read (as sent: the framing headers go with the framing)."""
    skip = ("content-encoding", "content-length", "transfer-encoding")
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in skip]
    return httpx.Response(response.status_code, headers=headers, content=b"".join(chunks), request=response.request)


def _declared_within(response: httpx.Response, limit: int) -> bool:
    """Whether the answer says how long it is, within ``limit``, and is framed by that length alone (h11 then
    holds it to that length; beside Transfer-Encoding the length is ignored, RFC 9112 6.3, and h11 reads the
    chunks without end)."""
    length = response.headers.get("content-length", "")
    return length.isdigit() and int(length) <= limit and "transfer-encoding" not in response.headers


class _Answer:
    """One answer as it is read, the accumulator the sync and async readers share: its Content-Encoding checked
    (``failed``), whether its declared length lets it be read whole (``whole``), else its raw chunks held to
    ``call.limit`` as they come (``add``); ``result`` is what the call returns."""

    def __init__(self, call: Call, response: httpx.Response) -> None:
        self.call, self.response = call, response
        self.failed: AnswerEncoded | OverLimit | None = _encoded(call, response)
        self.whole = self.failed is None and _declared_within(response, call.limit)
        self.chunks: list[bytes] = []
        self.size = 0

    @property
    def streamed(self) -> bool:
        """Whether the body is to be read chunk by chunk (not failed, not read whole)."""
        return self.failed is None and not self.whole

    def add(self, chunk: bytes) -> bool:
        """Take one raw chunk; False once the answer is over the limit (read no more)."""
        self.size += len(chunk)
        if self.size > self.call.limit:
            self.failed = OverLimit(f"{self.call.url} answered over {self.call.limit} bytes", self.call.limit)
            return False
        self.chunks.append(chunk)
        return True

    def result(self) -> httpx.Response | AnswerEncoded | OverLimit:
        if self.failed is not None:
            return self.failed
        return self.response if self.whole else _kept(self.response, self.chunks)


def raise_for(response: httpx.Response) -> None:
    """Raise the client's typed error for an agent's error answer."""
    error = error_for(response)
    if error is not None:
        raise error


class Client:
    """Synchronous client."""

    def __init__(
        self,
        agents: Sequence[str] | None = None,
        client_id: str | None = None,
        timeout: float = 5.0,
        discover_interfaces: list[str] | None = None,
        rtt_ttl_s: float = 60.0,
        rtt_override: Mapping[str, float] | None = None,
        transport: httpx.BaseTransport | None = None,
        trust_discovered: bool | None = None,
        max_answer_bytes: int = ANSWER_LIMIT,
        max_answer_values: int = ANSWER_VALUES,
        call_deadline_s: float = CALL_DEADLINE_S,
        ask_budget_s: float | None = None,
    ) -> None:
        self.core = ClientCore(
            agents, client_id, discover_interfaces, rtt_ttl_s, rtt_override, trust_discovered=trust_discovered,
            max_answer_bytes=max_answer_bytes, max_answer_values=max_answer_values,
            ask_budget_s=ASK_TIMEOUTS * timeout if ask_budget_s is None else ask_budget_s,
        )  # fmt: skip
        self.call_deadline_s = call_deadline_s
        self.http = httpx.Client(timeout=timeout, transport=transport or deadline_transport())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _run(self, op: Op[T]) -> T:
        """Carry out one operation's I/O, blocking."""
        result: Result | None = None
        try:
            while True:
                request = op.send(result) if result is not None else next(op)
                if isinstance(request, Browse):
                    from client.discovery import browse

                    result = browse(interfaces=list(request.interfaces) if request.interfaces else None)
                    continue
                if isinstance(request, Probes):  # in turn: each within its deadline from the batch's start
                    began = time.monotonic()
                    result = [self._timed(c, began) for c in request.calls]
                    continue
                result = self._call(request, time.monotonic())
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _timed(self, call: Call, began: float) -> tuple[httpx.Response | httpx.HTTPError, float]:
        started = time.perf_counter()
        return self._call(call, began), time.perf_counter() - started

    def _call(self, call: Call, began: float | None = None) -> httpx.Response | httpx.HTTPError:
        """One request, reading at most ``call.limit`` bytes of the answer, all of it by the call's deadline
        (from ``began``): every socket wait is bounded by it (client/deadline.py), and a streamed answer's chunks
        are checked against it too (a ``transport=`` of the user's own has only its per-read timeouts)."""
        deadline_s = self.call_deadline_s if call.deadline_s is None else min(call.deadline_s, self.call_deadline_s)
        end = (time.monotonic() if began is None else began) + deadline_s
        token = DEADLINE.set(end)
        try:
            if time.monotonic() >= end:
                return _past(call, deadline_s)
            with self.http.stream(call.method, call.url, **_options(call, self.http)) as response:
                answer = _Answer(call, response)
                if answer.whole:
                    response.read()
                elif answer.streamed:
                    for chunk in response.iter_raw():
                        if time.monotonic() >= end:
                            return _past(call, deadline_s)
                        if not answer.add(chunk):
                            break
                return answer.result()
        except httpx.TimeoutException as exc:
            return _past(call, deadline_s) if time.monotonic() >= end else exc
        except httpx.HTTPError as exc:
            return exc
        finally:
            DEADLINE.reset(token)

    @property
    def agents(self) -> list[str]:
        return self.core.agents

    def _ordered_agents(self) -> list[str]:
        return self._run(self.core.ordered_agents())

    def measure_rtts(self, force: bool = False) -> dict[str, float]:
        return self._run(self.core.measure_rtts(force))

    def cluster(self) -> dict[str, Any]:
        return self._run(self.core.cluster())

    def endpoints(self) -> list[Endpoint]:
        return self._run(self.core.endpoints())

    def endpoint(self, model: str) -> Endpoint:
        return self._run(self.core.endpoint(model))

    def predict(self, model: str, instances: Any = None, inputs: Any = None, via_proxy: bool = False) -> Any:
        """TF-Serving predict; direct to the best endpoint, retrying once elsewhere if it is dead."""
        return self._run(self.core.predict(model, instances, inputs, via_proxy))

    def infer(self, model: str, inputs: Sequence[Mapping[str, Any]], via_proxy: bool = False) -> Any:
        """Open Inference Protocol infer (Triton); direct to the best endpoint, or through an agent."""
        return self._run(self.core.infer(model, inputs, via_proxy))


class AsyncClient:
    """Asynchronous client (the same methods, awaitable; mDNS browsing does not block the loop)."""

    def __init__(
        self,
        agents: Sequence[str] | None = None,
        client_id: str | None = None,
        timeout: float = 5.0,
        discover_interfaces: list[str] | None = None,
        rtt_ttl_s: float = 60.0,
        rtt_override: Mapping[str, float] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        trust_discovered: bool | None = None,
        max_answer_bytes: int = ANSWER_LIMIT,
        max_answer_values: int = ANSWER_VALUES,
        call_deadline_s: float = CALL_DEADLINE_S,
        ask_budget_s: float | None = None,
    ) -> None:
        self.core = ClientCore(
            agents, client_id, discover_interfaces, rtt_ttl_s, rtt_override, trust_discovered=trust_discovered,
            max_answer_bytes=max_answer_bytes, max_answer_values=max_answer_values,
            ask_budget_s=ASK_TIMEOUTS * timeout if ask_budget_s is None else ask_budget_s,
        )  # fmt: skip
        self.call_deadline_s = call_deadline_s
        self.http = httpx.AsyncClient(timeout=timeout, transport=transport or async_deadline_transport())

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _run(self, op: Op[T]) -> T:
        """Carry out one operation's I/O on the event loop."""
        result: Result | None = None
        try:
            while True:
                request = op.send(result) if result is not None else next(op)
                if isinstance(request, Browse):
                    from client.discovery import async_browse

                    result = await async_browse(interfaces=list(request.interfaces) if request.interfaces else None)
                    continue
                if isinstance(request, Probes):  # in parallel, each within its deadline
                    began = time.monotonic()
                    result = list(await asyncio.gather(*(self._timed(c, began) for c in request.calls)))
                    continue
                result = await self._call(request, time.monotonic())
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _timed(self, call: Call, began: float) -> tuple[httpx.Response | httpx.HTTPError, float]:
        started = time.perf_counter()
        return await self._call(call, began), time.perf_counter() - started

    async def _call(self, call: Call, began: float | None = None) -> httpx.Response | httpx.HTTPError:
        """One request, reading at most ``call.limit`` bytes of the answer, all of it by the call's deadline (as
        the sync client's; a timeout on each wait, never a cancellation from outside)."""
        deadline_s = self.call_deadline_s if call.deadline_s is None else min(call.deadline_s, self.call_deadline_s)
        end = (time.monotonic() if began is None else began) + deadline_s
        token = DEADLINE.set(end)
        try:
            if time.monotonic() >= end:
                return _past(call, deadline_s)
            async with self.http.stream(call.method, call.url, **_options(call, self.http)) as response:
                answer = _Answer(call, response)
                if answer.whole:
                    await response.aread()
                elif answer.streamed:
                    async for chunk in response.aiter_raw():
                        if time.monotonic() >= end:
                            return _past(call, deadline_s)
                        if not answer.add(chunk):
                            break
                return answer.result()
        except httpx.TimeoutException as exc:
            return _past(call, deadline_s) if time.monotonic() >= end else exc
        except httpx.HTTPError as exc:
            return exc
        finally:
            DEADLINE.reset(token)

    @property
    def agents(self) -> list[str]:
        return self.core.agents

    async def measure_rtts(self, force: bool = False) -> dict[str, float]:
        return await self._run(self.core.measure_rtts(force))

    async def cluster(self) -> dict[str, Any]:
        return await self._run(self.core.cluster())

    async def endpoints(self) -> list[Endpoint]:
        return await self._run(self.core.endpoints())

    async def endpoint(self, model: str) -> Endpoint:
        return await self._run(self.core.endpoint(model))

    async def predict(self, model: str, instances: Any = None, inputs: Any = None, via_proxy: bool = False) -> Any:
        return await self._run(self.core.predict(model, instances, inputs, via_proxy))

    async def infer(self, model: str, inputs: Sequence[Mapping[str, Any]], via_proxy: bool = False) -> Any:
        return await self._run(self.core.infer(model, inputs, via_proxy))
