"""The leader's snapshot build on fixed windows where every client is logged by one agent, recorded bit for bit
(tests/unit/data/snapshot_golden.json): the thesis objective's requests and the queue objectives' sites, rates and
figures. Merging a client's rows across loggers and the site grouping's speed-ups must leave these exactly as they
were (the one-logger case is the thesis reproduction's and the lab's usual one).

Recorded on main at 8f71ecf (before client_groups). The thesis lab case was also checked against the build before
session 13 keyed streams by logger (git 22371fb~1): the same requests and RTTs (execution times differ by design:
session 13's per-logger latency figures, review13a F3, and session 14's node service figures). Floats are compared
exactly (JSON keeps a float's repr). Regenerate only on purpose, from the code whose snapshots are the reference:
``python -m tests.unit.test_snapshot_golden``.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from agent.catalogue import builtin_catalogue_text, parse_catalogue
from agent.placement import MAX_THESIS_STREAMS, NodeReport, RequestRecord, build_snapshot

GOLDEN = Path(__file__).parent / "data" / "snapshot_golden.json"
CAT = parse_catalogue(builtin_catalogue_text(), "golden")
MODELS = list(CAT.models)
NODES = [f"n{j}" for j in range(6)]
NOW, WINDOW_S = 5000.0, 300.0


def reports() -> list[NodeReport]:
    """Six nodes of two classes, some running models (measured latencies are taken only for those)."""
    out = []
    for j, n in enumerate(NODES):
        runs = {MODELS[j % len(MODELS)]: 1}
        out.append(
            NodeReport(n, 3000.0, 4000.0, 100.0, "default" if j % 2 else "orin", runs, ready=runs, cores=2.0 + j)
        )
    return out


def lab(n: int, seed: int) -> list[RequestRecord]:
    """``n`` records of 120 clients at 9 sites, each client logged by its home agent only (client % 6); some
    vectors partial, some records failed (5xx: not demand) or stamped ahead of now, latencies logged where served."""
    rng = random.Random(seed)
    sites = [[rng.uniform(0.5, 60.0) for _ in NODES] for _ in range(9)]
    out = []
    for _ in range(n):
        c = rng.randrange(120)
        site = sites[c % 9]
        rtt = {node: round(site[j] + rng.uniform(0, 3), 3) for j, node in enumerate(NODES) if c % 7 or j % 3}
        node = NODES[rng.randrange(len(NODES))]
        status = rng.choice([200] * 20 + [503, 500])
        ts = NOW - rng.uniform(-5.0, WINDOW_S)
        out.append(RequestRecord(ts, rng.choice(MODELS), f"c{c}@10.0.{c % 9}.{c}", rtt, node,
                                 round(rng.uniform(2.0, 40.0), 2), status, NODES[c % 6]))  # fmt: skip
    return out


def made_up(n: int, seed: int) -> list[RequestRecord]:
    """One member's ``n`` one-row streams with random RTTs (its share of the budgets is what it can fill)."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        ts = NOW - rng.uniform(0, WINDOW_S)
        rtt = {node: round(rng.uniform(0, 60_000.0), 1) for node in NODES}
        out.append(RequestRecord(ts, MODELS[k % len(MODELS)], f"x{k}@10.9.9.9", rtt, None, None, 200, "n5"))
    return out


def cases() -> dict[str, tuple[list[RequestRecord], str]]:
    return {
        "thesis/lab": (lab(1000, 1), "thesis"),
        "queue-p99/lab": (lab(3000, 1), "queue-p99"),
        "queue/lab": (lab(800, 2), "queue"),
        "thesis/flood": (lab(300, 3) + made_up(MAX_THESIS_STREAMS + 200, 4), "thesis"),
        "queue-p99/flood": (lab(3000, 5) + made_up(3000, 6), "queue-p99"),
    }


def record() -> dict[str, Any]:
    """Each case's snapshot; of the thesis flood (1,000 requests, mostly made up) the honest requests, the clients
    read and a digest of the whole (it would be most of the file)."""
    out: dict[str, Any] = {}
    for name, (records, objective) in cases().items():
        snapshot = build_snapshot(reports(), records, CAT, NOW, objective, WINDOW_S)
        if name == "thesis/flood":
            text = json.dumps(snapshot, sort_keys=True, separators=(",", ":"))
            snapshot = {
                "honest": [r for r in snapshot["requests"] if r["client"].startswith("c")],
                "clients": sorted(r["client"] for r in snapshot["requests"]),
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
            }
        out[name] = snapshot
    return out


def test_one_logger_per_client_gives_the_recorded_snapshots_exactly() -> None:
    want = json.loads(GOLDEN.read_text())
    got = json.loads(json.dumps(record()))
    assert got.keys() == want.keys()
    assert len(want["thesis/lab"]["requests"]) > 300 and len(want["thesis/flood"]["clients"]) == MAX_THESIS_STREAMS
    assert len(want["queue-p99/flood"]["requests"]) > 50
    for name, snapshot in want.items():
        assert got[name] == snapshot, name


def test_the_record_check_fails_when_a_stream_is_lost() -> None:
    """One client's records left out changes the recorded snapshots: the exact check sees it."""
    want = json.loads(GOLDEN.read_text())
    records, objective = cases()["thesis/lab"]
    fewer = [r for r in records if not r.client.startswith("c7@")]
    got = json.loads(json.dumps(build_snapshot(reports(), fewer, CAT, NOW, objective, WINDOW_S)))
    assert got != want["thesis/lab"]


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(record(), separators=(",", ":")) + "\n")
