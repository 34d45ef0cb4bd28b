"""bench/load_bench.py's pure parts: the sites' RTT reports, argument checks and the plot (the live run
itself starts a cluster: it is a bench, run by hand under the netns lock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load_bench import LoadConfig, Result, main, p99_ratios, plot, site_rtts


def test_each_site_is_near_its_own_node_and_far_from_the_others() -> None:
    cfg = LoadConfig(nodes=3, sites=4, near_ms=1.0, far_ms=12.0)
    assert site_rtts(cfg, 0) == {"node0": 1.0, "node1": 12.0, "node2": 12.0}
    assert site_rtts(cfg, 3) == site_rtts(cfg, 0)  # four sites on three nodes: the fourth shares node0


@pytest.mark.parametrize("bad", [["--clients", "0"], ["--rate", "0"], ["--nodes", "500"]])
def test_bad_sizes_are_refused_before_anything_starts(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(bad)
    assert exc.value.code == 2 and "at least 1" in capsys.readouterr().err


def test_the_plot_is_written(tmp_path: Path) -> None:
    results = [
        Result("queue-p99", 15.8, 290.0, 28.0, 3491, 0, 2, {"node0": 0, "node1": 1}, 48.3, 17.1, 25.6),
        Result("thesis", 17.4, 295.0, 29.5, 3497, 0, 26, {"node0": 9, "node1": 9}, 610.1, 18.9, 87.3),
    ]
    out = plot(results, tmp_path / "img" / "load.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_unknown_placements_and_negative_cores_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for bad, why in (
        (["--objectives", "queue-p99,fastest"], "unknown placement 'fastest'"),
        (["--cores", "-1"], "cores"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(bad)
        assert exc.value.code == 2 and why in capsys.readouterr().err


def test_each_agent_is_told_its_share_of_the_machines_cpus() -> None:
    assert LoadConfig(nodes=3, cores=1.5).node_cores() == 1.5
    assert 0 < LoadConfig(nodes=3).node_cores() <= LoadConfig(nodes=1).node_cores()


def test_queue_placements_are_compared_with_the_best_baseline_of_the_run() -> None:
    def res(name: str, p99: float) -> Result:
        return Result(name, 10.0, p99, 12.0, 100, 0, 1, {}, 1.0, 1.0, 1.0)

    ratios = p99_ratios([res("queue-p99", 300.0), res("thesis", 600.0), res("nearest", 250.0), res("queue", 200.0)])
    assert ratios == {
        "queue-p99": {"ratio": 1.2, "baseline": "nearest"},
        "queue": {"ratio": 0.8, "baseline": "nearest"},
    }
    assert p99_ratios([res("queue-p99", 300.0)]) == {}  # no baseline in the run: nothing to compare


README_FIVE = ["queue-p99", "queue-p99-weighted", "thesis", "nearest", "least-loaded"]
LONG_FIVE = [f"weighted_round_robin_{c}" for c in "abcde"]  # 22 characters, no hyphen (review20b L4)


@pytest.mark.parametrize("base", [README_FIVE, LONG_FIVE], ids=["readme", "long"])
@pytest.mark.parametrize("more", [[], ["queue-p99-lef"], ["queue-p99-lef", "queue-p99-p2c", "least-loaded-2"]])
def test_the_plots_placement_names_do_not_touch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base: list[str], more: list[str]
) -> None:
    """tidy20: the x labels of five placements (the README's plot) touched each other, rotated 20 degrees, at one
    line each. Each is now wrapped after a hyphen, and a part longer than a line (22-character names without a
    hyphen overlapped, review20b L4) at 9 characters; the labels' boxes, as drawn in the saved figure, overlap
    nowhere (within a panel, or across two panels side by side), and none is cut at the figure's edges."""
    import matplotlib.figure
    from matplotlib.transforms import Bbox

    boxes: list[Bbox] = []
    edge: list[Bbox] = []
    save = matplotlib.figure.Figure.savefig

    def measured(fig: matplotlib.figure.Figure, *args: object, **kwargs: object) -> None:
        save(fig, *args, **kwargs)  # drawn: the labels' boxes are the saved figure's
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        boxes.extend(t.get_window_extent(renderer) for ax in fig.axes for t in ax.get_xticklabels() if t.get_text())
        edge.append(fig.bbox)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", measured)
    names = [*base, *more]
    results = [Result(n, 5.0, 20.0, 6.0, 3500, 0, 3, {"node0": 3}, 72.0, 10.0, 20.0) for n in names]
    plot(results, tmp_path / "load.png")
    assert len(boxes) == 3 * len(names)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    assert all(b.x0 >= 0 and b.x1 <= edge[0].x1 for b in boxes)
