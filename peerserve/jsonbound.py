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
