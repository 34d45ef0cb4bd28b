"""The ``digits`` model: softmax regression over scikit-learn's 8x8 handwritten digits.

Trained at install time (``python -m agent.digits build``, run by scripts/bootstrap.sh) from the data
set scikit-learn ships (``load_digits``: 1,797 images of 64 pixel values 0-16), with a fixed split and a
deterministic solver, so every install builds the same weights; nothing is downloaded at run time.
The weights file (JSON: ``weights`` 10x64, ``bias`` 10, ``heldout`` indices) is read by the stand-in
(pure Python, below) and by the Triton Python-backend model (agent/data/triton/digits_triton, numpy),
so both servers answer with the same weights.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PIXELS = 64
CLASSES = 10
SEED = 0
HELDOUT_FRACTION = 0.25


def weights_path() -> Path:
    """Where the built weights live: $PEERSERVE_MODELS_DIR/digits.json, else agent/data/models/."""
    base = os.environ.get("PEERSERVE_MODELS_DIR")
    return Path(base) / "digits.json" if base else Path(__file__).parent / "data" / "models" / "digits.json"


@dataclass(frozen=True)
class Weights:
    """A trained softmax regression on raw pixel values (0-16)."""

    weights: tuple[tuple[float, ...], ...]  # CLASSES rows of PIXELS
    bias: tuple[float, ...]
    heldout: tuple[int, ...]

    def probabilities(self, row: list[float]) -> list[float]:
        """The 10 class probabilities of one image (64 pixel values)."""
        z = [
            b + sum(w * x for w, x in zip(ws, row, strict=True)) for ws, b in zip(self.weights, self.bias, strict=True)
        ]
        top = max(z)
        e = [math.exp(v - top) for v in z]
        total = sum(e)
        return [v / total for v in e]

    def to_json(self) -> dict[str, Any]:
        return {"weights": [list(r) for r in self.weights], "bias": list(self.bias), "heldout": list(self.heldout)}


class WeightsMissing(RuntimeError):
    """The digits weights were not built (run ``python -m agent.digits build``)."""


@functools.lru_cache(maxsize=1)
def load_weights(path: str | None = None) -> Weights:
    """Read the built weights (cached); raises WeightsMissing when they were not built."""
    p = Path(path) if path else weights_path()
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise WeightsMissing(f"digits weights not built at {p}: run 'python -m agent.digits build'") from exc
    return Weights(tuple(tuple(r) for r in data["weights"]), tuple(data["bias"]), tuple(data["heldout"]))


def train() -> tuple[Weights, float]:
    """Train on the fixed split; returns the weights and their held-out accuracy (needs scikit-learn)."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    data = load_digits()
    index = np.arange(len(data.target))
    train_idx, test_idx = train_test_split(index, test_size=HELDOUT_FRACTION, random_state=SEED, stratify=data.target)
    x = data.data / 16.0
    clf = LogisticRegression(max_iter=5000, C=1.0)
    clf.fit(x[train_idx], data.target[train_idx])
    accuracy = float(clf.score(x[test_idx], data.target[test_idx]))
    coef = clf.coef_ / 16.0  # so that the model takes raw 0-16 pixel values
    weights = Weights(
        tuple(tuple(round(float(v), 9) for v in row) for row in coef),
        tuple(round(float(v), 9) for v in clf.intercept_),
        tuple(int(i) for i in sorted(test_idx)),
    )
    return weights, accuracy


def heldout_set() -> tuple[list[list[float]], list[int]]:
    """The held-out images and labels the built weights were not trained on (needs scikit-learn)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    idx = load_weights().heldout
    return [[float(v) for v in data.data[i]] for i in idx], [int(data.target[i]) for i in idx]


def build(out: Path) -> dict[str, Any]:
    """Train and write the weights file atomically; returns a summary."""
    started = time.perf_counter()
    weights, accuracy = train()
    out.parent.mkdir(parents=True, exist_ok=True)
    # A temp file of its own in the same directory, then one rename: builders running at once (build-images.sh in
    # each of the Docker cluster test's engines) never write into each other's file, and a reader sees a whole one.
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(weights.to_json()))
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the weights file is copied into the image
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    load_weights.cache_clear()
    return {"path": str(out), "heldout_accuracy": accuracy, "heldout": len(weights.heldout),
            "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m agent.digits",
        description="Build the digits model's weights from scikit-learn's bundled data set (no download).",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train and write the weights file (deterministic)")
    b.add_argument("--out", type=Path, default=None, help="weights file (default: $PEERSERVE_MODELS_DIR or agent/data)")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    summary = build(args.out or weights_path())
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"digits: held-out accuracy {summary['heldout_accuracy']:.3f} -> {summary['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
