"""Node metrics: memory, CPU load, GPU load. Sources tried in order: jtop (Jetson), NVML, psutil.

On a Jetson the GPU shares system RAM, so memory always comes from psutil; the GPU source only adds
GPU load. A source that fails at start (no jtop service, no NVIDIA driver) is skipped once, quietly;
one that fails later is logged once and dropped for psutil alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeMetrics:
    mem_total_mb: float
    mem_available_mb: float
    cpu_percent: float
    gpu_percent: float | None
    gpu_source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "mem_total_mb": round(self.mem_total_mb, 1),
            "mem_available_mb": round(self.mem_available_mb, 1),
            "cpu_percent": round(self.cpu_percent, 1),
            "gpu_percent": None if self.gpu_percent is None else round(self.gpu_percent, 1),
            "gpu_source": self.gpu_source,
        }


class GpuSource(Protocol):
    name: str

    def gpu_percent(self) -> float: ...

    def close(self) -> None: ...


class JtopGpu:
    """GPU load from jetson-stats' jtop service (Jetson only)."""

    name = "jtop"

    def __init__(self) -> None:
        from jtop import jtop  # raises ImportError off-Jetson

        self._jtop = jtop()
        self._jtop.start()  # raises JtopException when jtop.service is not active

    def gpu_percent(self) -> float:
        stats = self._jtop.stats
        return float(stats.get("GPU", 0.0))

    def close(self) -> None:
        self._jtop.close()


class NvmlGpu:
    """GPU load from NVML (discrete NVIDIA GPUs; nvidia-ml-py)."""

    name = "nvml"

    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()  # raises NVMLError_LibraryNotFound without a driver
        self._nvml = pynvml
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if not self._handles:
            raise RuntimeError("no NVIDIA GPU")

    def gpu_percent(self) -> float:
        loads = [self._nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles]
        return float(sum(loads) / len(loads))

    def close(self) -> None:
        self._nvml.nvmlShutdown()


def detect_gpu() -> GpuSource | None:
    """The first GPU source that works here, or None."""
    for source in (JtopGpu, NvmlGpu):
        try:
            return source()
        except Exception as exc:  # each library raises its own types; any failure means "not here"
            log.debug("GPU source %s unavailable: %s", source.name, exc)
    return None


class MetricsReader:
    """Reads NodeMetrics; never raises."""

    def __init__(self, gpu: GpuSource | None = None, detect: bool = True) -> None:
        self._gpu = gpu if gpu is not None or not detect else detect_gpu()
        psutil.cpu_percent(interval=None)  # prime the CPU counter

    def read(self) -> NodeMetrics:
        vm = psutil.virtual_memory()
        gpu_load: float | None = None
        source = "none"
        if self._gpu is not None:
            try:
                gpu_load = self._gpu.gpu_percent()
                source = self._gpu.name
            except Exception as exc:
                log.warning("GPU source %s failed, using psutil alone from now on: %s", self._gpu.name, exc)
                self._gpu = None
        return NodeMetrics(
            mem_total_mb=vm.total / 2**20,
            mem_available_mb=vm.available / 2**20,
            cpu_percent=psutil.cpu_percent(interval=None),
            gpu_percent=gpu_load,
            gpu_source=source,
        )

    def close(self) -> None:
        if self._gpu is not None:
            try:
                self._gpu.close()
            except Exception:  # closing a half-broken library must not stop shutdown
                log.debug("closing GPU source failed", exc_info=True)
