"""scripts/testbed.py's collecting helpers: every step runs whatever the others do, and one error names each that
failed (start_dockerds raised only the first failing engine's exception; the boards' teardown skipped the bed's
teardown and the removals after a failed power cut)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.testbed import Failures, StepsFailed, TestBed, remove_tree, run_all


def test_run_all_returns_the_results_in_order_and_runs_the_calls_at_once() -> None:
    barrier = threading.Barrier(3, timeout=10)  # passes only if all three run at the same time

    def square(i: int) -> int:
        barrier.wait()
        return i * i

    assert run_all(square, [3, 1, 2], "squares") == [9, 1, 4]
    assert run_all(square, [], "nothing") == []


def test_run_all_runs_every_call_and_names_each_failure() -> None:
    ran: list[int] = []
    lock = threading.Lock()

    def start(i: int) -> str:
        with lock:
            ran.append(i)
        if i == 0:
            raise RuntimeError("engine 0 did not answer")
        if i == 2:
            raise ValueError("bad bridge")
        return f"unix:///engine{i}"

    with pytest.raises(StepsFailed) as caught:
        run_all(start, [0, 1, 2], "starting the Docker Engines", lambda i: f"host {i}")
    assert sorted(ran) == [0, 1, 2]
    err = caught.value
    assert [(name, type(exc)) for name, exc in err.errors] == [("host 0", RuntimeError), ("host 2", ValueError)]
    assert str(err) == ("starting the Docker Engines: 2 of 3 failed -- host 0: RuntimeError: engine 0 did not "
                        "answer; host 2: ValueError: bad bridge")  # fmt: skip
    assert err.__cause__ is err.errors[0][1]


def test_failures_run_every_step_and_raise_one_error_naming_each() -> None:
    failures, done = Failures(), list[str]()
    with failures.step("power cut"):
        raise KeyError("board-1")
    with failures.step("bed teardown"):
        done.append("bed")
    with failures.step("removal"):
        raise OSError("/x not removed: 3 entries left")
    assert done == ["bed"]
    with pytest.raises(StepsFailed) as caught:
        failures.raise_any("the boards' teardown")
    assert [name for name, _ in caught.value.errors] == ["power cut", "removal"]
    assert str(caught.value).startswith("the boards' teardown: 2 of 3 failed -- power cut: KeyError: 'board-1'; ")


def test_failures_with_none_failed_raise_nothing() -> None:
    failures = Failures()
    with failures.step("only"):
        pass
    failures.raise_any("a teardown")
    assert failures.errors == [] and failures.steps == 1


def test_remove_tree_removes_a_tree_and_says_what_it_could_not(tmp_path: Path) -> None:
    tree = tmp_path / "root"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("board-0\n")
    remove_tree(tree)
    assert not tree.exists()
    remove_tree(tree)  # already gone: nothing to say
    not_a_tree = tmp_path / "file"  # rmtree refuses a plain file (NotADirectoryError), and root cannot be
    not_a_tree.write_text("x")  # kept from a read-only directory's entries: the failure every user can make
    with pytest.raises(OSError, match=r"file not removed: 0 entries left"):
        remove_tree(not_a_tree)


def test_the_bed_teardown_names_an_engine_whose_stop_failed_and_still_runs_every_step(tmp_path: Path) -> None:
    """tidy18: TestBed.teardown stopped the Docker Engines through _close_quietly, which swallowed a stop's failure:
    a teardown that left a dockerd running said nothing. Now each engine's stop runs, the process the bed was given
    is still killed, and one error names the failing engine's host."""
    exited: list[int] = []

    @contextlib.contextmanager
    def engine(i: int, fails: bool) -> Iterator[str]:
        yield f"unix:///engine{i}"
        exited.append(i)
        if fails:
            raise RuntimeError(f"dockerd of host {i} still running after SIGKILL")

    bed = TestBed(0, tmp_path)  # no hosts, no namespaces: nothing of the network to remove
    for i in range(3):
        ctx = engine(i, fails=i == 1)
        ctx.__enter__()
        bed._dockerds.append((i, ctx))
    extra = subprocess.Popen(["sleep", "60"])
    bed.extra_pids.append(extra.pid)
    with pytest.raises(StepsFailed) as caught:
        bed.teardown()
    assert extra.wait(10) == -signal.SIGKILL and sorted(exited) == [0, 1, 2]
    assert [name for name, _ in caught.value.errors] == ["stopping the Docker Engines"]
    assert str(caught.value).startswith("the test bed's teardown: 1 of 2 failed -- stopping the Docker Engines: ")
    assert "host 1: RuntimeError: dockerd of host 1 still running after SIGKILL" in str(caught.value)
    assert bed.extra_pids == []  # review18a F8: killed and reaped, its PID may be reused; never signalled again
    bed.teardown()  # each engine's stop ran once: a second teardown has nothing left to fail on
    assert sorted(exited) == [0, 1, 2]
