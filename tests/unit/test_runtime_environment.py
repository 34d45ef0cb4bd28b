"""Model servers get an allowlisted environment: an agent given its tokens by environment passed them to
every stand-in and tritonserver it started (review11a, env_leak.out); tritonserver gets the system's PATH."""

from __future__ import annotations

from pathlib import Path

from agent.runtime.environment import PASSED, server_environment
from agent.runtime.triton import AGENT_PYTHON, SERVER_PATH, TritonInstall, environment, stub_site_packages

AGENT_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/peerserve",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONPATH": "/opt/peerserve",
    "PEERSERVE_MODELS_DIR": "/var/lib/peerserve/models",
    "PEERSERVE_CLUSTER_TOKEN": "cluster-secret-0123456789",
    "PEERSERVE_CLIENT_TOKEN": "client-secret",
    "PEERSERVE_METRICS_TOKEN": "metrics-secret",
    "PEERSERVE_TLS_KEY": "/etc/peerserve/tls.key",
    "PEERSERVE_CONFIG": "/etc/peerserve/agent.toml",
    "AWS_SECRET_ACCESS_KEY": "an-operator-secret",
    "NOTIFY_SOCKET": "/run/systemd/notify",
}


def test_no_secret_reaches_a_model_server() -> None:
    env = server_environment(AGENT_ENV)
    assert not [k for k in env if "TOKEN" in k or "SECRET" in k or "KEY" in k]
    assert not any(v in env.values() for v in ("cluster-secret-0123456789", "client-secret", "metrics-secret"))
    assert not [k for k in env if k.startswith("PEERSERVE_") and k != "PEERSERVE_MODELS_DIR"]
    assert "NOTIFY_SOCKET" not in env and "PEERSERVE_CONFIG" not in env  # the agent's, not the server's


def test_what_running_python_and_the_models_need_is_kept() -> None:
    env = server_environment(AGENT_ENV)
    for name in ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "PEERSERVE_MODELS_DIR"):
        assert env[name] == AGENT_ENV[name]
    assert "LD_LIBRARY_PATH" in PASSED and "PEERSERVE_MODELS_DIR" in PASSED


def test_the_runtime_sets_its_own_variables_over_the_agents() -> None:
    env = server_environment({**AGENT_ENV, "LD_LIBRARY_PATH": "/old"}, {"LD_LIBRARY_PATH": "/wheel/libs:/old"})
    assert env["LD_LIBRARY_PATH"] == "/wheel/libs:/old"
    assert server_environment({}) == {}


def test_tritons_backend_stub_gets_the_systems_path_not_the_agents_python() -> None:
    """The Python backend stub's interpreter takes the first python3 on PATH for itself: an agent run from an
    activated venv (its bin first on PATH) gave it that venv's site-packages and numpy 2, and every output came back
    empty (session 17's test_triton flake). PATH is the system's; the agent's interpreter settings stay behind."""
    install = TritonInstall(Path("/w/bin/tritonserver"), Path("/w/backends/python"), Path("/w/stub"), Path("/w/libs"))
    agent = {**AGENT_ENV, "PATH": "/opt/peerserve/venv/bin:/usr/bin:/bin", "VIRTUAL_ENV": "/opt/peerserve/venv",
             "PYTHONHOME": "/opt/python", "LD_LIBRARY_PATH": "/old"}  # fmt: skip
    env = environment(install, agent)
    assert env["PATH"] == SERVER_PATH == "/bin:/usr/bin"
    assert not set(AGENT_PYTHON) & set(env) and {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"} <= set(AGENT_PYTHON)
    assert env["LD_LIBRARY_PATH"] == "/w/libs:/old" and env["PEERSERVE_SITE_PACKAGES"] == str(stub_site_packages())
    assert env["HOME"] == AGENT_ENV["HOME"] and env["LC_ALL"] == AGENT_ENV["LC_ALL"]
    assert not [k for k in env if "TOKEN" in k or "SECRET" in k or "KEY" in k]
    assert environment(install, {})["PATH"] == SERVER_PATH  # none given: the system's all the same
