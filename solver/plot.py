"""PNG plots of a simulation sweep, like the thesis's Figures 6.1/6.2 and Tables 6.2/6.3."""

from __future__ import annotations

import statistics
from pathlib import Path

from solver.simulate import METHODS, Point


def plot_simulation(points: list[Point], out_dir: Path) -> list[Path]:
    """Write objective and solve-time plots against the swept size; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    vary = points[0].vary if points else "requests"
    written = []
    for metric, label, agg in (
        ("objective", "mean total latency U (ms)", statistics.fmean),
        ("solve_ms", "median solve time (ms)", statistics.median),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for method in METHODS:
            sizes: dict[int, list[float]] = {}
            for p in points:
                if p.method == method:
                    size = p.requests if vary == "requests" else p.nodes
                    sizes.setdefault(size, []).append(float(getattr(p, metric)))
            if sizes:
                xs = sorted(sizes)
                ax.plot(xs, [agg(sizes[x]) for x in xs], marker="o", label=method)
        ax.set_xlabel(f"number of {vary}")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs {vary}")
        ax.grid(alpha=0.3)
        ax.legend()
        path = out_dir / f"{metric}_vs_{vary}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
