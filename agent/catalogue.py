"""The model catalogue: which models exist, their images and needs; reloaded when its file changes.

A broken file never replaces a good catalogue: the last good one stays in force and the error is kept
for /health and logged once per distinct error.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from peerserve import names

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

log = logging.getLogger(__name__)

MODEL_NAME = names.MODEL_NAME  # matched whole, and no "..": valid_model_name (peerserve/names.py, shared)
SERVERS = ("tfserving", "triton")  # TF-Serving REST (or the stand-in) | Triton, Open Inference Protocol
# one request's service time past which an instance serves nothing: the proxy gives up on a model server after
# 30 s without an answer (agent/serving/upstream.py); solver.too_slow rejects what reaches the solver past it
MAX_SERVICE_S = 30.0
# The needs of one instance must be finite numbers (review27b F4: mem_mb = nan passed, and Docker's int(mem_mb) then
# failed every runtime.list(), every reconcile round of the node; the leader's solver refused the catalogue, so no
# placement anywhere). The upper bounds are far past any board's, only to keep the figures in range: 16 TiB of
# memory in MB, and a million compute units (a node has 100 by default).
MAX_NEEDS = {"mem_mb": 16.0 * 1024 * 1024, "compute": 1_000_000.0}
MAX_THROUGHPUT_RPS = 1_000_000.0  # one instance, one request at a time: a microsecond each
MAX_MODEL_VERSION = 2**63 - 1  # TF-Serving's versions are int64


@dataclass(frozen=True)
class ModelSpec:
    """One catalogue entry."""

    name: str
    image: str
    stand_in: str
    model_path: str
    model_version: int
    mem_mb: float
    compute: float
    exec_ms: Mapping[str, float]
    warmup: Mapping[str, Any] | None = None
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    server: str = "tfserving"
    throughput_rps: Mapping[str, float] = field(default_factory=dict)

    def expected_exec_ms(self, node_class: str) -> float:
        return float(self.exec_ms.get(node_class, self.exec_ms.get("default", 0.0)))

    def expected_throughput_rps(self, node_class: str) -> float:
        """Requests/s one instance serves on ``node_class`` one request at a time (one slot): declared, else 1000 /
        expected exec_ms (the placement counts an instance with c slots as c times this, solver.node_cpu)."""
        declared = self.throughput_rps.get(node_class, self.throughput_rps.get("default"))
        if declared is not None:
            return float(declared)
        return 1000.0 / max(self.expected_exec_ms(node_class), 0.1)

    def service_ms(self, node_class: str) -> float | None:
        """One request's service time on ``node_class`` at one slot, as the placement counts it (1000 / the
        declared throughput, else exec_ms): the endpoint rule ``lef``'s (peerserve/dispatch.py); None where the
        entry has neither (or only zeros)."""
        declared = self.throughput_rps.get(node_class, self.throughput_rps.get("default"))
        if declared is not None and declared > 0:
            return 1000.0 / float(declared)
        exec_ms = self.expected_exec_ms(node_class)
        return exec_ms if exec_ms > 0 else None


@dataclass(frozen=True)
class Catalogue:
    """The models known to the cluster, keyed by name, with a version string."""

    models: Mapping[str, ModelSpec]
    version: str
    source: str

    def get(self, name: str) -> ModelSpec | None:
        return self.models.get(name)


def valid_model_name(name: str) -> bool:
    """Model names are one path segment: letters, digits, '_', '.', '-' (no '/', no '..'), matched whole; the
    one rule of peerserve/names.py, which the wire and the client apply too."""
    return names.valid_model_name(name)


def parse_catalogue(text: str, source: str) -> Catalogue:
    """Parse TOML catalogue text; raises ConfigError naming the bad key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, f"not valid TOML: {exc}") from exc
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: models", "a non-empty [[models]] list is required")
    models: dict[str, ModelSpec] = {}
    for i, entry in enumerate(entries):
        spec = _parse_model(entry, f"models[{i}]")
        if spec.name in models:
            raise ConfigError(f"models[{i}].name", f"duplicate model {spec.name!r}")
        models[spec.name] = spec
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    version = str(data.get("version", digest))
    return Catalogue(models=models, version=f"{version}+{digest}" if "version" in data else digest, source=source)


def _parse_model(entry: Any, where: str) -> ModelSpec:
    if not isinstance(entry, dict):
        raise ConfigError(where, "must be a table")

    def text(key: str, default: str | None = None) -> str:
        value = entry.get(key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}.{key}", "must be a non-empty string")
        return value

    def number(key: str) -> float:
        value = entry.get(key)
        if not _finite_number(value, 0.0, MAX_NEEDS[key]):
            raise ConfigError(f"{where}.{key}", f"must be a number from 0 to {MAX_NEEDS[key]:,.0f}")
        return float(value)  # type: ignore[arg-type]  # _finite_number: an int or a float

    name = text("name")
    if not valid_model_name(name):
        raise ConfigError(f"{where}.name", f"{name!r} is not a valid model name (letters, digits, _ . -)")
    exec_raw = entry.get("exec_ms", {})
    if not isinstance(exec_raw, dict) or not all(_finite_number(v, 0.0, math.inf) for v in exec_raw.values()):
        raise ConfigError(f"{where}.exec_ms", "must map node classes to non-negative milliseconds")
    _within_service_time(exec_raw, f"{where}.exec_ms", lambda ms: ms / 1000.0)
    throughput_raw = entry.get("throughput_rps", {})
    if not isinstance(throughput_raw, dict) or not all(
        _finite_number(v, 0.0, MAX_THROUGHPUT_RPS) and v > 0 for v in throughput_raw.values()
    ):
        most = f"{MAX_THROUGHPUT_RPS:,.0f}"
        raise ConfigError(f"{where}.throughput_rps", f"must map node classes to positive requests/s, at most {most}")
    _within_service_time(throughput_raw, f"{where}.throughput_rps", lambda rps: 1.0 / rps)
    warmup = entry.get("warmup")
    if warmup is not None and not isinstance(warmup, dict):
        raise ConfigError(f"{where}.warmup", "must be a predict request body (a table)")
    command = entry.get("command", [])
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise ConfigError(f"{where}.command", "must be a list of strings")
    env = entry.get("env", {})
    if not isinstance(env, dict):
        raise ConfigError(f"{where}.env", "must be a table of strings")
    server = entry.get("server", "tfserving")
    if server not in SERVERS:
        raise ConfigError(f"{where}.server", f"must be one of {', '.join(SERVERS)}")
    version = entry.get("model_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_MODEL_VERSION:
        raise ConfigError(f"{where}.model_version", "must be a positive integer (TF-Serving's are int64)")
    return ModelSpec(
        name=name,
        image=text("image"),
        stand_in=text("stand_in", name),
        model_path=text("model_path", f"/models/{name}"),
        model_version=version,
        mem_mb=number("mem_mb"),
        compute=number("compute"),
        exec_ms={str(k): float(v) for k, v in exec_raw.items()},
        warmup=warmup,
        command=tuple(command),
        env={str(k): str(v) for k, v in env.items()},
        server=server,
        throughput_rps={str(k): float(v) for k, v in throughput_raw.items()},
    )


def _finite_number(value: Any, low: float, high: float) -> bool:
    """``value`` is an int or float (not a bool) from ``low`` to ``high``, neither NaN nor infinite (TOML has nan and
    inf, and every comparison with nan is false: ``value < 0`` let it through)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value) and low <= value <= high
    except OverflowError:  # an int past a float's range
        return False


def _within_service_time(figures: Mapping[str, float], where: str, seconds: Callable[[float], float]) -> None:
    """Raise ConfigError naming the first node class whose figure means one request takes over MAX_SERVICE_S."""
    for node_class, value in figures.items():
        if seconds(value) > MAX_SERVICE_S:
            raise ConfigError(
                f"{where}.{node_class}",
                f"{value:g} means {seconds(value):.3g} s per request: an instance must answer one request within "
                f"{MAX_SERVICE_S:g} s (the proxy's limit), i.e. at least 1/{MAX_SERVICE_S:g} requests/s "
                f"(exec_ms at most {1000 * MAX_SERVICE_S:g})",
            )


def builtin_catalogue_text() -> str:
    return resources.files("agent").joinpath("data/catalogue.toml").read_text()


def read_catalogue(path: Path) -> Catalogue:
    """The catalogue in ``path``; every way the file can fail is a ConfigError naming it (review27b F2, F3: a missing,
    unreadable or non-UTF-8 file, a folder, or nesting too deep for tomllib's recursion was a traceback at start,
    and a reload failing so was never reported)."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not UTF-8 text (TOML is): byte {exc.start}") from exc
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the catalogue: {exc.strerror or exc}") from exc
    try:
        return parse_catalogue(text, str(path))
    except RecursionError as exc:
        raise ConfigError(str(path), "nests arrays or tables too deeply to parse") from exc


class CatalogueWatcher:
    """Holds the catalogue in force; ``poll()`` reloads it when the file's mtime or size changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.error: str | None = None
        self._stamp: tuple[float, int] | None = None
        if path is None:
            self.current = parse_catalogue(builtin_catalogue_text(), "built-in catalogue")
        else:
            self.current = read_catalogue(path)  # a broken file at start is fatal: ConfigError, the agent's error line
            self._stamp = self._stat()

    def _stat(self) -> tuple[float, int] | None:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def poll(self) -> bool:
        """Reload if the file changed; True when a new catalogue took effect."""
        if self.path is None:
            return False
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            new = read_catalogue(self.path)
        except ConfigError as exc:
            message = f"catalogue reload failed, keeping version {self.current.version}: {exc}"
            if message != self.error:
                log.error("%s", message)
            self.error = message
            return False
        self.error = None
        if new.version == self.current.version:
            return False
        log.info("catalogue reloaded: version %s, %d models", new.version, len(new.models))
        self.current = new
        return True
