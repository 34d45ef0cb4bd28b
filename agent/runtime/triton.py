"""Running a real Triton Inference Server as a local process (the process runtime's ``server = "triton"``).

The ``nvidia-pytriton`` wheel ships ``tritonserver`` (Triton 2.51, CPU-only here) with its Python
backend. What makes it serve (measured; shared/DESIGN.md): the backend directory holds
``libtriton_python.so`` with the backend stub for this Python version next to it, ``LD_LIBRARY_PATH``
includes the wheel's ``nvidia_pytriton.libs``, and the stub's interpreter (Debian's libpython) finds
numpy through PEERSERVE_SITE_PACKAGES. Each instance gets its own model repository under the data dir:
``agent/data/triton/<stand_in>/`` (config.pbtxt + model.py) plus the built weights.

The stub's interpreter is configured by where it runs, not by the agent's Python: it takes the first ``python3``
on PATH for its own executable (so a virtual environment's bin first on PATH makes it that venv, with the venv's
site-packages) and puts its working directory first on ``sys.path``. An agent started with a venv holding numpy 2
first on PATH served empty outputs: session 17's two test_triton failures exactly (``cannot reshape array of size
0`` in tritonclient, a JSON infer answered 500 "output tensor shape does not match size of output"). So the server gets
the system's PATH and its own working directory (``environment``, the process runtime's ``cwd``), and model.py
refuses a numpy other than the one PEERSERVE_SITE_PACKAGES names.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.catalogue import ModelSpec
from agent.errors import InstanceStartError
from agent.runtime.environment import server_environment

MODELS_SOURCE = Path(__file__).resolve().parent.parent / "data" / "triton"
STUB_SITE = "peerserve-triton-site"
# Triton's APIs that change the server or reach outside it, open to anyone who reaches its port (/services
# publishes it): log verbosity (its log grew ~2 KB an infer at level 3), system shared memory (a registered
# region had infer outputs written into a /dev/shm file), trace settings, model load/unload. Triton answers
# them 403 unless the request carries ADMIN_HEADER with the value given at start; nobody is given it.
RESTRICTED_APIS = "shared-memory,model-repository,logging,trace"
ADMIN_HEADER = "peerserve-admin"
# The Python backend stub's interpreter takes the first python3 on PATH for itself: on the agent's PATH that may be
# a venv's (its site-packages, numpy 2: empty outputs) or another Python's. The system's (os.defpath, /bin:/usr/bin)
# is the one Debian's and JetPack's libpython (the stub's) belong to; tritonserver itself needs only bash from it.
SERVER_PATH = os.defpath
AGENT_PYTHON = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")  # the stand-in's interpreter's settings, not the stub's


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel put Triton's parts."""

    binary: Path
    backend: Path  # .../backends/python (libtriton_python.so)
    stub: Path  # python_backend_stubs/<X.Y>/triton_python_backend_stub
    libs: Path  # nvidia_pytriton.libs


def find_triton() -> TritonInstall:
    """Locate tritonserver in the installed nvidia-pytriton wheel; InstanceStartError when absent."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise InstanceStartError("Triton is not installed: scripts/bootstrap.sh installs the nvidia-pytriton wheel")
    root = Path(next(iter(spec.submodule_search_locations)))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = TritonInstall(
        binary=root / "tritonserver" / "bin" / "tritonserver",
        backend=root / "tritonserver" / "backends" / "python",
        stub=root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=root.parent / "nvidia_pytriton.libs",
    )
    missing = [p for p in (found.binary, found.backend, found.stub, found.libs, stub_site_packages()) if not p.exists()]
    if missing:
        raise InstanceStartError(f"incomplete Triton install, missing {missing[0]}")
    return found


def free_port(host: str) -> int:
    """A TCP port free on ``host`` now (Triton takes fixed ports, not 0)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def prepare_repository(spec: ModelSpec, base: Path) -> Path:
    """Write the model repository for ``spec`` under ``base``: <base>/<name>/{config.pbtxt,1/...}."""
    from agent import digits

    source = MODELS_SOURCE / spec.stand_in
    if not (source / "model.py").exists():
        raise InstanceStartError(f"no Triton model {spec.stand_in!r} in {MODELS_SOURCE}")
    if spec.stand_in == "digits" and not digits.weights_path().exists():
        raise InstanceStartError(
            f"digits weights not built at {digits.weights_path()}: run 'python -m agent.digits build'"
        )
    model_dir = base / spec.name
    version_dir = model_dir / str(spec.model_version)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    version_dir.mkdir(parents=True)
    config = (source / "config.pbtxt").read_text().replace("{name}", spec.name)
    (model_dir / "config.pbtxt").write_text(config)
    shutil.copy(source / "model.py", version_dir / "model.py")
    if spec.stand_in == "digits":
        shutil.copy(digits.weights_path(), version_dir / "digits.json")
    return base


def prepare_backend(install: TritonInstall, base: Path) -> Path:
    """A backend directory with the Python backend and this Python's stub side by side; returns its parent."""
    target = base / "python"
    if not (target / "triton_python_backend_stub").exists():
        shutil.copytree(install.backend, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(install.stub, target / "triton_python_backend_stub")
    return base


def command(
    install: TritonInstall, repository: Path, backends: Path, host: str, port: int, admin_key: str
) -> list[str]:
    """tritonserver's command line: HTTP only on (host, port), no gRPC, no metrics, quick exit, and the admin
    APIs (RESTRICTED_APIS) only for a request with ``ADMIN_HEADER: admin_key`` (a fresh random key per start,
    kept nowhere: health, metadata, config, statistics and inference stay open)."""
    if not admin_key or not admin_key.isalnum():
        raise ValueError("the admin key must be a non-empty alphanumeric string")
    return [
        str(install.binary), f"--model-repository={repository}", f"--backend-directory={backends}",
        f"--http-address={host}", f"--http-port={port}", "--allow-grpc=false", "--allow-metrics=false",
        "--allow-gpu-metrics=false", "--exit-timeout-secs=3", "--strict-readiness=true",
        f"--http-restricted-api={RESTRICTED_APIS}:{ADMIN_HEADER}={admin_key}",
    ]  # fmt: skip


def admin_key() -> str:
    """A fresh key for one Triton start (128 bits); never stored or sent: the admin APIs stay shut to all."""
    return secrets.token_hex(16)


def stub_site_packages() -> Path:
    """numpy < 2 for the backend stub (Triton 2.51's Python backend reads numpy 1.x arrays; with numpy 2
    its output tensors come back empty). scripts/bootstrap.sh installs it here."""
    return Path(sys.prefix) / "lib" / STUB_SITE


def environment(install: TritonInstall, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The server's environment: the allowlisted part of the agent's (no tokens: agent/runtime/environment.py)
    less the agent's own interpreter's settings (AGENT_PYTHON), the system's PATH (SERVER_PATH), the wheel's
    libraries, and where numpy is for the backend stub."""
    libs = ":".join(p for p in (str(install.libs), environ.get("LD_LIBRARY_PATH", "")) if p)
    own = {"PATH": SERVER_PATH, "LD_LIBRARY_PATH": libs, "PEERSERVE_SITE_PACKAGES": str(stub_site_packages())}
    return {k: v for k, v in server_environment(environ, own).items() if k not in AGENT_PYTHON}
