"""Discovery and failure detection between real hosts (network namespaces, real multicast mDNS)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from scripts.testbed import TestBed
from tests.waiting import wait_for

pytestmark = pytest.mark.cluster


def statuses(bed: TestBed, i: int, via: int | None = None) -> dict[str, str]:
    with contextlib.suppress(Exception):
        return {m["node_id"]: m["status"] for m in bed.json(i, "/cluster", via=via)["members"]}
    return {}


def start_all(bed: TestBed, *args: str) -> None:
    for h in bed.hosts:
        bed.start(h.index, *args)
    for h in bed.hosts:
        bed.wait_healthy(h.index)


def all_alive(bed: TestBed, indices: list[int], via: dict[int, int] | None = None) -> bool:
    want = {bed.hosts[i].node_id for i in indices}
    for i in indices:
        seen = statuses(bed, i, via=(via or {}).get(i))
        if {n for n, s in seen.items() if s == "alive"} != want:
            return False
    return True


def test_hosts_discover_each_other_with_no_configuration(bed: Callable[[int], TestBed]) -> None:
    b = bed(4)
    start_all(b)
    took = wait_for(lambda: all_alive(b, [0, 1, 2, 3]), 20)
    print(f"\n4 hosts: every peer table complete {took:.2f} s after the last agent answered")
    member = next(m for m in b.json(0, "/cluster")["members"] if m["node_id"] == "n2")
    assert member["address"] == b.hosts[2].ip and member["api_url"] == b.hosts[2].url


def test_avahi_resolves_our_service_and_txt(bed: Callable[[int], TestBed], tmp_path: Path) -> None:
    for tool in ("avahi-daemon", "avahi-browse", "dbus-daemon"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} missing (scripts/bootstrap.sh --test installs avahi-daemon avahi-utils dbus)")
    b = bed(2)
    start_all(b)
    wait_for(lambda: all_alive(b, [0, 1]), 20)
    bus = tmp_path / "bus.sock"
    (tmp_path / "dbus.conf").write_text(
        f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path={bus}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/>
<allow receive_sender="*"/></policy></busconfig>"""
    )
    (tmp_path / "avahi.conf").write_text(
        "[server]\nuse-ipv4=yes\nuse-ipv6=no\nallow-interfaces=eth0\nenable-dbus=yes\n"
        "[publish]\ndisable-publishing=yes\n[reflector]\n[rlimits]\n"
    )
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={bus}"}
    ns = ["ip", "netns", "exec", b.client_ns]
    dbus = subprocess.Popen([*ns, "dbus-daemon", "--nofork", f"--config-file={tmp_path / 'dbus.conf'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    b.extra_pids.append(dbus.pid)
    wait_for(bus.exists, 10)
    avahi = subprocess.Popen(
        [*ns, "avahi-daemon", "--no-chroot", "--no-drop-root", "--no-rlimits", "-f", str(tmp_path / "avahi.conf")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    b.extra_pids.append(avahi.pid)
    try:
        # --terminate: a browse ends once avahi's list is "more or less complete" and every resolve it began is
        # answered (about 1 s), instead of running out an 8 s timeout; browsed again until both agents are in it
        # (the daemon is still starting, or has not heard the adverts yet), for as long as the one 8 s browse had
        by_name: dict[str, list[str]] = {}
        seen = ""
        deadline = time.monotonic() + 10
        while not {"n0", "n1"} <= set(by_name) and time.monotonic() < deadline:
            browse = subprocess.run(
                ["timeout", "8", *ns, "avahi-browse", "-r", "-p", "-t", "_peerserve._tcp"],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
            seen += browse.stdout + browse.stderr
            resolved = [line.split(";") for line in browse.stdout.splitlines() if line.startswith("=")]
            by_name.update({r[3]: r for r in resolved})
            if not {"n0", "n1"} <= set(by_name):
                time.sleep(0.2)
        assert {"n0", "n1"} <= set(by_name), seen
        n1 = by_name["n1"]
        assert n1[7] == b.hosts[1].ip and n1[8] == "8400" and n1[6] == "n1.local"
        txt = n1[9]
        for entry in ('"id=n1"', '"port=8400"', '"pv=1"'):
            assert entry in txt
        print(f"\navahi-browse resolved: {n1[3]} -> {n1[7]}:{n1[8]} TXT {txt}")
    finally:
        for p in (avahi, dbus):
            p.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)


def test_kill_9_is_dead_everywhere_within_3_s(bed: Callable[[int], TestBed]) -> None:
    b = bed(4)
    start_all(b)
    wait_for(lambda: all_alive(b, [0, 1, 2, 3]), 20)
    assert b.get(b.hosts[1].url + "/services/half_plus_two").status_code == 200  # a model on n1
    wait_for(lambda: all([s["node"] for s in b.json(i, "/services")] == ["n1"] for i in (0, 2, 3)), 5)
    killed = time.monotonic()
    b.kill(1, signal.SIGKILL)
    out_of_services = wait_for(lambda: all(b.json(i, "/services") == [] for i in (0, 2, 3)), 3)
    wait_for(lambda: all(statuses(b, i).get("n1") == "dead" for i in (0, 2, 3)), 3.5)
    total = time.monotonic() - killed
    print(f"\nkill -9 n1: gone from every /services in {out_of_services:.2f} s, dead in every table in {total:.2f} s")
    assert total < 3.0
    b.start(1)  # it comes back
    wait_for(lambda: all_alive(b, [0, 1, 2, 3]), 15)


def test_graceful_stop_leaves_at_once(bed: Callable[[int], TestBed]) -> None:
    b = bed(3)
    start_all(b)
    wait_for(lambda: all_alive(b, [0, 1, 2]), 20)
    stopped = time.monotonic()
    b.kill(2, signal.SIGTERM)
    took = wait_for(lambda: all(statuses(b, i).get("n2") == "dead" for i in (0, 1)), 1.0, step=0.01)
    print(f"\ngraceful stop of n2: dead everywhere {took:.2f} s after SIGTERM ({time.monotonic() - stopped:.2f} s)")


def test_partition_and_heal(bed: Callable[[int], TestBed]) -> None:
    b = bed(4)
    start_all(b)
    wait_for(lambda: all_alive(b, [0, 1, 2, 3]), 20)
    b.partition([0, 1], [2, 3])
    via = {2: 2, 3: 3}  # side B is reachable only from inside it
    split = wait_for(
        lambda: all_alive(b, [0, 1]) and all_alive(b, [2, 3], via)
        and statuses(b, 0).get("n2") == "dead" and statuses(b, 2, via=2).get("n0") == "dead",
        5,
    )  # fmt: skip
    print(f"\npartition 2/2: each side dropped the other in {split:.2f} s")
    healed_at = time.monotonic()
    b.heal()
    took = wait_for(lambda: all_alive(b, [0, 1, 2, 3]), 10)
    print(f"heal: all four alive everywhere in {took:.2f} s ({time.monotonic() - healed_at:.2f} s)")
