"""Tiny real models the stand-in model server serves (no TensorFlow needed), with TF-Serving signatures.

* ``half_plus_two``: y = 0.5 x + 2, TF-Serving's own example model, with the signatures of its test
  SavedModel (``serving_default`` predict x -> y, ``regress_x_to_y``, ``classify_x_to_y``, ...; shapes
  ``[-1, 1]`` as its metadata reports them; like TF-Serving, declared shapes are not enforced).
* ``half_plus_three``: y = 0.5 x + 3, its sibling from TF-Serving's test data.
* ``xor_mlp``: a 2-2-1 multilayer perceptron with sigmoid units whose weights compute XOR; input
  ``[a, b]`` in [0, 1], output the probability that exactly one is 1.
* ``digits``: softmax regression over scikit-learn's 8x8 digits (64 pixel values 0-16 per instance),
  10 class probabilities out; weights trained at install time (agent/digits.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class ModelInputError(ValueError):
    """The request's instances do not fit the model's signature."""


def _number(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ModelInputError(f"expected a number, got {type(x).__name__}")
    try:
        return float(x)
    except OverflowError:  # an integer of 309+ digits: JSON has no bound on them, a float has
        raise ModelInputError("number too large for a float") from None


def _affine(slope: float, offset: float) -> Callable[[Any], Any]:
    def run(x: Any) -> Any:
        if isinstance(x, list):
            return [run(v) for v in x]
        return slope * _number(x) + offset

    return run


def _sigmoid(z: float) -> float:
    """1 / (1 + e^-z) without overflow: e^x is only taken for x <= 0 (math.exp(710) raises)."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)  # z < 0 (or NaN, which falls through to NaN)
    return e / (1.0 + e)


XOR_HIDDEN = ((20.0, 20.0, -10.0), (-20.0, -20.0, 30.0))  # OR unit, NAND unit (w1, w2, bias)
XOR_OUTPUT = (20.0, 20.0, -30.0)  # AND of the two


def _xor(x: Any) -> Any:
    if not isinstance(x, list) or len(x) != 2:
        raise ModelInputError("xor_mlp takes instances of two numbers, e.g. [0, 1]")
    a, b = _number(x[0]), _number(x[1])
    h = [_sigmoid(w1 * a + w2 * b + bias) for w1, w2, bias in XOR_HIDDEN]
    w1, w2, bias = XOR_OUTPUT
    return [_sigmoid(w1 * h[0] + w2 * h[1] + bias)]


def _digits(x: Any) -> Any:
    from agent import digits

    if not isinstance(x, list) or len(x) != digits.PIXELS:
        raise ModelInputError(f"digits takes instances of {digits.PIXELS} pixel values 0-16")
    return digits.load_weights().probabilities([_number(v) for v in x])


@dataclass(frozen=True)
class Tensor:
    """One named tensor of a signature, as TF-Serving's metadata describes it."""

    tensor_name: str
    dims: tuple[int, ...] | None  # None: unknown rank (tf.Example string inputs)
    dtype: str = "DT_FLOAT"


@dataclass(frozen=True)
class Signature:
    """A SignatureDef: its method, one input and one output alias, and the function per instance.

    For classify/regress signatures ``feature`` names the tf.Example feature the function reads.
    """

    method: str  # predict | classify | regress
    inputs: Mapping[str, Tensor]
    outputs: Mapping[str, Tensor]
    run: Callable[[Any], Any]
    feature: str = "x"

    @property
    def method_name(self) -> str:
        return f"tensorflow/serving/{self.method}"


@dataclass(frozen=True)
class TinyModel:
    """A model the stand-in server can run: its signatures by name (``serving_default`` first)."""

    name: str
    signatures: Mapping[str, Signature] = field(default_factory=dict)

    @property
    def run(self) -> Callable[[Any], Any]:
        return self.signatures["serving_default"].run


def _column(name: str) -> Tensor:
    return Tensor(name, (-1, 1))


EXAMPLE = Tensor("tf_example:0", None, "DT_STRING")


def _half_plus(offset: float) -> dict[str, Signature]:
    """The signatures of TF-Serving's saved_model_half_plus_two test model (same names and shapes)."""
    main, three = _affine(0.5, offset), _affine(0.5, 3.0)
    x2, y3 = {"inputs": _column("x2:0")}, _column("y3:0")
    return {
        "regress_x2_to_y3": Signature("regress", x2, {"outputs": y3}, three, "x2"),
        "serving_default": Signature("predict", {"x": _column("x:0")}, {"y": _column("y:0")}, main),
        "classify_x_to_y": Signature("classify", {"inputs": EXAMPLE}, {"scores": _column("y:0")}, main),
        "classify_x2_to_y3": Signature("classify", x2, {"scores": y3}, three, "x2"),
        "regress_x_to_y2": Signature("regress", {"inputs": EXAMPLE}, {"outputs": _column("y2:0")}, three),
        "regress_x_to_y": Signature("regress", {"inputs": EXAMPLE}, {"outputs": _column("y:0")}, main),
    }  # fmt: skip


def _predict(
    inputs: tuple[str, Tensor], outputs: tuple[str, Tensor], run: Callable[[Any], Any]
) -> dict[str, Signature]:
    return {"serving_default": Signature("predict", dict([inputs]), dict([outputs]), run)}


MODELS: dict[str, TinyModel] = {
    "half_plus_two": TinyModel("half_plus_two", _half_plus(2.0)),
    "half_plus_three": TinyModel("half_plus_three", _half_plus(3.0)),
    "xor_mlp": TinyModel("xor_mlp", _predict(("x", Tensor("x:0", (-1, 2))), ("y", Tensor("y:0", (-1, 1))), _xor)),
    "digits": TinyModel(
        "digits",
        _predict(("pixels", Tensor("pixels:0", (-1, 64))), ("probabilities", Tensor("probs:0", (-1, 10))), _digits),
    ),
}
