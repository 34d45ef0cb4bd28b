"""A package's names loaded on first use (PEP 562): `import client` or `import solver` imports none of the modules
behind them (httpx, numpy) until one is used, so `peerserve --help` stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def loader(package: str, names: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: each name in ``names`` imported from the module it maps to on first
    use and kept in ``namespace`` (the package's globals); another name is an AttributeError, as without it."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
