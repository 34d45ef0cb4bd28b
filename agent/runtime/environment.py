"""The environment a model server started by the process runtime gets: a short allowlist, nothing else.

An agent may be given its secrets by environment (``PEERSERVE_CLUSTER_TOKEN``, ``PEERSERVE_CLIENT_TOKEN``,
``PEERSERVE_METRICS_TOKEN``; any ``PEERSERVE_*`` setting, and whatever else its service manager sets).
A model server needs none of them, and it is the part of a node clients reach directly, runs the model
code and may be replaced by any server a catalogue names. So it starts from what running Python (or
tritonserver) takes, not from a copy of the agent's environment with secrets struck out: a secret under
a name nobody thought of stays behind too.
"""

from __future__ import annotations

from collections.abc import Mapping

PASSED = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",  # the process's basics
        "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED",  # finding agent.*
        "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",  # Triton's libraries and devices
        "PEERSERVE_MODELS_DIR",  # where the digits weights are (agent/digits.py)
    }
)  # fmt: skip
PASSED_PREFIXES = ("LC_",)  # locale categories


def server_environment(environ: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allowlisted part of ``environ``, then ``extra`` (set by the runtime itself) over it."""
    env = {k: v for k, v in environ.items() if k in PASSED or k.startswith(PASSED_PREFIXES)}
    env.update(extra or {})
    return env
