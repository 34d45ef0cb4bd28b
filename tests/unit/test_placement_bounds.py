"""What client-reported demand can make the leader's snapshot hold (agent/placement.py group_sites)."""

from __future__ import annotations

import random

from agent.catalogue import builtin_catalogue_text, parse_catalogue
from agent.placement import MAX_THESIS_STREAMS, NodeReport, RequestRecord, build_snapshot
from agent.placement_sites import MAX_SITES, group_sites
from solver import Snapshot


def _streams(n: int, models: int = 3, seed: int = 1) -> tuple[list[dict[str, object]], dict[tuple[str, str], int]]:
    rng = random.Random(seed)
    streams, counts = [], {}
    for c in range(n):
        rtt = {f"n{i}": rng.uniform(0, 60_000) for i in range(5)}  # any RTTs a client cares to report
        for m in range(models):
            streams.append({"model": f"m{m}", "client": f"c{c}@10.0.0.{c % 250}", "rtt_ms": rtt,
                            "exec_ms": {f"n{i}": 1.0 for i in range(5)}})  # fmt: skip
            counts[(f"c{c}@10.0.0.{c % 250}", f"m{m}")] = 2
    return streams, counts


def test_made_up_sites_are_merged_into_a_bounded_number_and_no_demand_is_lost() -> None:
    streams, counts = _streams(2000)
    sites = group_sites(streams, counts, 10.0)
    assert len(sites) <= MAX_SITES
    assert abs(sum(s["rate"] for s in sites) - 2000 * 3 * 2 / 10.0) < 1e-6


def test_a_real_cluster_keeps_its_fine_sites() -> None:
    rooms = [{"n0": 1.0 + r, "n1": 9.0 - r} for r in (0.0, 4.0, 8.0)]  # three rooms of phones, 4 ms apart
    streams = [{"model": "m", "client": f"p{i}", "rtt_ms": rooms[i % 3], "exec_ms": {"n0": 1.0, "n1": 1.0}}
               for i in range(30)]  # fmt: skip
    assert len(group_sites(streams, {(f"p{i}", "m"): 1 for i in range(30)}, 10.0)) == 3


def test_made_up_client_ids_cannot_grow_the_thesis_snapshot_past_its_bound() -> None:
    """One (client, model) stream per client under the thesis objective: 2,000 made-up ids are capped and the
    busiest real clients (more records in the window) are the ones kept."""
    cat = parse_catalogue(builtin_catalogue_text(), "t")
    nodes = [NodeReport(n, 4000.0, 8000.0, 4.0, "default", {}) for n in ("n0", "n1")]
    fake = [RequestRecord(float(i), "half_plus_two", f"x{i}@10.0.0.9", {"n0": 5.0}, None, None, 200)
            for i in range(2000)]  # fmt: skip
    real = [RequestRecord(3000.0 + i, "half_plus_two", f"phone{i % 3}@10.0.0.2", {"n0": 5.0}, None, None, 200)
            for i in range(30)]  # fmt: skip
    snap = build_snapshot(nodes, fake + real, cat, 4000.0, "thesis")
    clients = [r["client"] for r in snap["requests"]]
    assert len(clients) == MAX_THESIS_STREAMS
    assert {"phone0@10.0.0.2", "phone1@10.0.0.2", "phone2@10.0.0.2"} <= set(clients)
    assert Snapshot.from_dict(snap).requests  # still a valid snapshot
    small = build_snapshot(nodes, real, cat, 4000.0, "thesis")  # under the bound nothing changes
    assert len(small["requests"]) == 3
