"""A bound on a JSON document's size in values, read from its bytes before any parser builds it (pure).

Parsed, a JSON value costs far more than its text: ``{},`` is 3 bytes on the wire and a 64-byte dict
(plus its list slot) in memory, so 64 MiB of it is ~1.6 GiB. Whoever parses JSON from another machine
counts its values first and refuses past a bound: the stand-in model server for a request body
(agent/serving/tfrest.py), the client for an agent's or a model server's answer (client/answers.py).
Only the standard library: the client, which needs only httpx and zeroconf, uses this module too.
"""

from __future__ import annotations

import sys

DICT_EXTRA = 0 if sys.version_info >= (3, 11) else 2  # 3.11 made small dicts smaller


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
    32 bytes, its slot included; ``-6`` to 36). Counted alike, a list or object costs up to ~7x a number and a
    short string ~2.5x (CPython 3.11, tracemalloc: ``{}`` 72 bytes, ``[-6]`` 124, ``{"123":0}`` 246 with its
    key, ``"Ā"`` 84), so a bound on plain values let one-key objects through at ~7x what as many numbers
    cost. Weighted, no shape parses to more than ~36 bytes a unit (tests/unit/test_client_answers.py measures
    each), besides the body's decoded copy and long strings' text: at most ~5 bytes a byte of an ASCII body
    (a ``\\u`` escape can make a string 4 bytes a character). A body that is not ASCII decodes to up to 4 bytes
    a character, and its strings parse so (one emoji in 64 MiB of text: +512 MiB), so it counts a unit more
    for every 4 bytes. An honest tensor is almost all numbers: YOLOv5's [1, 25200, 85] output is 2.17 M
    values and ~2.22 M units. On CPython 3.10 a small dict costs ~20 % more (``{"123":0}`` 290 bytes, 44 a unit):
    an object counts two more there (``DICT_EXTRA``).
    """
    objects = body.count(b"{")
    containers = body.count(b"[") + objects  # each byte counted once: a pass over 16 MiB is ~25 ms
    wide = 0 if body.isascii() else len(body) // 4
    return 1 + body.count(b",") + 3 * containers + DICT_EXTRA * objects + 2 * body.count(b'"') + wide
