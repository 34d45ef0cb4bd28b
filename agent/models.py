"""Tiny real models the stand-in model server serves (no TensorFlow needed).

* ``half_plus_two``: y = 0.5 x + 2, TF-Serving's own example model (scalar or list inputs).
* ``half_plus_three``: y = 0.5 x + 3, its sibling from TF-Serving's test data.
* ``xor_mlp``: a 2-2-1 multilayer perceptron with sigmoid units whose weights compute XOR; input
  ``[a, b]`` in [0, 1], output the probability that exactly one is 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class ModelInputError(ValueError):
    """The request's instances do not fit the model's signature."""


def _number(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ModelInputError(f"expected a number, got {type(x).__name__}")
    return float(x)


def _affine(slope: float, offset: float) -> Callable[[Any], Any]:
    def run(x: Any) -> Any:
        if isinstance(x, list):
            return [run(v) for v in x]
        return slope * _number(x) + offset

    return run


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


XOR_HIDDEN = ((20.0, 20.0, -10.0), (-20.0, -20.0, 30.0))  # OR unit, NAND unit (w1, w2, bias)
XOR_OUTPUT = (20.0, 20.0, -30.0)  # AND of the two


def _xor(x: Any) -> Any:
    if not isinstance(x, list) or len(x) != 2:
        raise ModelInputError("xor_mlp takes instances of two numbers, e.g. [0, 1]")
    a, b = _number(x[0]), _number(x[1])
    h = [_sigmoid(w1 * a + w2 * b + bias) for w1, w2, bias in XOR_HIDDEN]
    w1, w2, bias = XOR_OUTPUT
    return [_sigmoid(w1 * h[0] + w2 * h[1] + bias)]


@dataclass(frozen=True)
class TinyModel:
    """A model the stand-in server can run: one function applied per instance, plus its signature."""

    name: str
    run: Callable[[Any], Any]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


MODELS: dict[str, TinyModel] = {
    "half_plus_two": TinyModel("half_plus_two", _affine(0.5, 2.0), (-1,), (-1,)),
    "half_plus_three": TinyModel("half_plus_three", _affine(0.5, 3.0), (-1,), (-1,)),
    "xor_mlp": TinyModel("xor_mlp", _xor, (-1, 2), (-1, 1)),
}
