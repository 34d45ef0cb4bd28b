"""A package's names loaded on first use (PEP 562): `import client` or `import solver` imports none of the modules
behind them (httpx, numpy) until one is used, so `peerserve --help` stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def loader(package: str, names: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: each name in ``names`` imported from the module it maps to on first
    use and kept in ``namespace`` (the package's globals); another name is the package's submodule of that name,
    imported (``import client; client.errors.X`` worked while the package imported its submodules itself, review20b
    L3), or an AttributeError, as without it."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module), name)
            namespace[name] = value
            return value
        missing = AttributeError(f"module {package!r} has no attribute {name!r}")
        if name.startswith("__") or not name.isidentifier():  # dunders (asked by inspect, copy, pickle): no module
            raise missing
        try:
            return importlib.import_module(f"{package}.{name}")  # the import also sets it on the package
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.{name}":  # the submodule is there but needs one that is not: say so
                raise
            raise missing from None

    return __getattr__


def lister(names: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[], list[str]]:
    """The module ``__dir__`` of a package that uses ``loader``: its globals and the names it loads on first use, so
    dir() and help() list them before they are used."""

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __dir__
