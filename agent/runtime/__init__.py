"""Model-server runtimes behind one interface: DockerRuntime (Jetsons) and ProcessRuntime (laptops, CI)."""

from agent.runtime.base import Instance, Runtime, probe_available

__all__ = ["Instance", "Runtime", "probe_available"]
