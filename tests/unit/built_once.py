"""``built_once``: an expensive test input built once per arguments and handed to every caller as a deep copy of its
own, for inputs the tests change (pools a move pass rewrites) but whose building reads nothing the tests patch."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")


def built_once(build: Callable[..., T]) -> Callable[..., T]:
    """``build`` run once per (hashable) arguments; each call returns a fresh deep copy of that first result."""
    cached = functools.cache(build)

    @functools.wraps(build)
    def copy_of(*args: Hashable) -> T:
        return copy.deepcopy(cached(*args))

    return copy_of
