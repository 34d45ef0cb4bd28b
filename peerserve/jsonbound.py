"""A bound on a JSON document's size in values, read from its bytes before any parser builds it (pure).

Parsed, a JSON value costs far more than its text: ``{},`` is 3 bytes on the wire and a 64-byte dict
(plus its list slot) in memory, so 64 MiB of it is ~1.6 GiB. Whoever parses JSON from another machine
counts its values first and refuses past a bound: the stand-in model server for a request body
(agent/serving/tfrest.py), the client for an agent's or a model server's answer (client/answers.py).
No imports: the client, which needs only httpx and zeroconf, uses this module too.
"""

from __future__ import annotations


def values_at_most(body: bytes) -> int:
    """An upper bound on the JSON values in ``body``, without parsing it.

    Every value but the first is an array's or object's first item (one per ``[`` / ``{``) or follows a
    comma; separators inside strings only raise the bound. It holds in every encoding json.loads reads
    from bytes (UTF-8, -16, -32): each of these characters has its ASCII byte in all of them.
    """
    return 1 + body.count(b",") + body.count(b"[") + body.count(b"{")


def cost_at_most(body: bytes) -> int:
    """``values_at_most`` weighted by what each value costs parsed: two more for each list, object and quote.

    A bound on an inference answer's memory from its bytes, in units of about one number (a float parses to
    32 bytes, its slot included; ``-6`` to 36). Counted alike, a list or object cost up to ~8x a number and a
    short string ~2.5x (CPython 3.11, tracemalloc: ``{}`` 72 bytes, ``[-6]`` 124, ``{"123":0}`` 246 with its
    key, ``"Ā"`` 84), so 1,048,576 values of ``{},`` took 72 MiB where a million floats take 32. Weighted,
    no shape parses to more than ~36 bytes a unit (tests/unit/test_client_answers.py measures each), besides
    the text of long strings and the decoded copy of the body, both bounded by its bytes. An honest tensor is
    almost all numbers: YOLOv5's [1, 25200, 85] output is 2.14 M values and ~2.19 M units.
    """
    quotes = body.count(b'"')
    return values_at_most(body) + 2 * (body.count(b"[") + body.count(b"{") + quotes)
