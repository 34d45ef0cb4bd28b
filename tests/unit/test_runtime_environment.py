"""Model servers get an allowlisted environment: an agent given its tokens by environment passed them to
every stand-in and tritonserver it started (review11a, env_leak.out)."""

from __future__ import annotations

from agent.runtime.environment import PASSED, server_environment

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
