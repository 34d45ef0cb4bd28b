"""Catalogue parsing and reloading; settings from file, environment and flags."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.catalogue import CatalogueWatcher, builtin_catalogue_text, parse_catalogue
from agent.cli import register
from agent.errors import ConfigError
from agent.leadership import Leadership
from agent.node import NodeAgent
from agent.operator_ca import b64, raw_public
from agent.request_window import MAX_WINDOW_BYTES
from agent.settings import Settings, load_settings, log_at_start, operator_ca_mode

GOOD = """
[[models]]
name = "half_plus_two"
image = "peerserve/modelserver:latest"
mem_mb = 64
compute = 5
exec_ms = { default = 1.5, orin = 0.5 }
"""


def test_builtin_catalogue_has_the_example_models() -> None:
    cat = parse_catalogue(builtin_catalogue_text(), "built-in")
    assert {"half_plus_two", "xor_mlp"} <= set(cat.models)
    spec = cat.models["half_plus_two"]
    assert spec.stand_in == "half_plus_two" and spec.warmup == {"instances": [1.0, 2.0, 5.0]}


def test_exec_profile_per_node_class() -> None:
    spec = parse_catalogue(GOOD, "t").models["half_plus_two"]
    assert spec.expected_exec_ms("orin") == 0.5 and spec.expected_exec_ms("jetson-nano") == 1.5
    assert spec.model_path == "/models/half_plus_two" and spec.model_version == 1


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("not toml [", "t"),
        ("models = []", "t: models"),
        (GOOD.replace('name = "half_plus_two"', 'name = "../x"'), "models[0].name"),
        (GOOD.replace("mem_mb = 64", "mem_mb = -1"), "models[0].mem_mb"),
        (GOOD.replace("mem_mb = 64", 'mem_mb = "a lot"'), "models[0].mem_mb"),
        (GOOD.replace('image = "peerserve/modelserver:latest"', ""), "models[0].image"),
        (GOOD + GOOD, "models[1].name"),
        (GOOD.replace("orin = 0.5", "orin = -2"), "models[0].exec_ms"),
        # review27b F4: TOML's nan and inf passed (every comparison with nan is false); Docker's int(mem_mb) then
        # failed every reconcile round of the node, and the leader's solver refused the whole catalogue
        (GOOD.replace("mem_mb = 64", "mem_mb = nan"), "models[0].mem_mb"),
        (GOOD.replace("mem_mb = 64", "mem_mb = inf"), "models[0].mem_mb"),
        (GOOD.replace("mem_mb = 64", "mem_mb = 1e300"), "models[0].mem_mb"),
        (GOOD.replace("compute = 5", "compute = nan"), "models[0].compute"),
        (GOOD.replace("compute = 5", "compute = inf"), "models[0].compute"),
        (GOOD.replace("orin = 0.5", "orin = nan"), "models[0].exec_ms"),
        (GOOD + "throughput_rps = { default = inf }\n", "models[0].throughput_rps"),
        (GOOD + "throughput_rps = { default = nan }\n", "models[0].throughput_rps"),
        (GOOD + "model_version = " + "9" * 30 + "\n", "models[0].model_version"),
    ],
)
def test_broken_catalogue_names_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_catalogue(text, "t")
    assert err.value.key == key


def test_reload_on_change_and_keep_last_good(tmp_path: Path) -> None:
    f = tmp_path / "catalogue.toml"
    f.write_text(GOOD)
    watcher = CatalogueWatcher(f)
    first = watcher.current
    assert not watcher.poll()
    f.write_text(GOOD.replace("compute = 5", "compute = 7"))
    os.utime(f, (time.time() + 5, time.time() + 5))
    assert watcher.poll() and watcher.current.models["half_plus_two"].compute == 7
    assert watcher.current.version != first.version
    f.write_text("[[models]]\nname = 3\n")
    os.utime(f, (time.time() + 10, time.time() + 10))
    assert not watcher.poll()
    assert watcher.current.models["half_plus_two"].compute == 7
    assert watcher.error is not None and "models[0].name" in watcher.error
    f.unlink()
    assert not watcher.poll() and watcher.current.models["half_plus_two"].compute == 7


def test_the_catalogue_at_its_bounds_is_taken() -> None:
    text = GOOD.replace("mem_mb = 64", "mem_mb = 16777216").replace("compute = 5", "compute = 1000000")
    spec = parse_catalogue(text + "throughput_rps = { default = 1e6 }\n", "t").models["half_plus_two"]
    assert (spec.mem_mb, spec.compute, spec.throughput_rps["default"]) == (16 * 1024 * 1024, 1e6, 1e6)


DEEP = "x = " + "[" * 5000 + "]" * 5000 + "\n"  # tomllib recurses once per level: RecursionError, not its error


def test_a_reload_too_deep_to_parse_is_reported_not_ignored(tmp_path: Path) -> None:
    """review27b F3: poll() caught neither RecursionError nor kept the error: it escaped (the loop logged "catalogue
    poll failed"), /health showed nothing and, the new stamp taken, the file was never looked at again."""
    f = tmp_path / "catalogue.toml"
    f.write_text(GOOD)
    watcher = CatalogueWatcher(f)
    f.write_text(GOOD + DEEP)
    os.utime(f, (time.time() + 5, time.time() + 5))
    assert not watcher.poll()
    assert watcher.error is not None and "too deeply" in watcher.error and str(f) in watcher.error
    assert watcher.current.models["half_plus_two"].compute == 5


@pytest.mark.parametrize("case", ["missing", "folder", "not utf-8", "too deep"])
def test_a_catalogue_that_cannot_be_read_at_start_is_a_config_error_naming_it(tmp_path: Path, case: str) -> None:
    """review27b F2: each of these was a traceback at start (CatalogueWatcher read the file unguarded)."""
    f = tmp_path / "catalogue.toml"
    if case == "folder":
        f.mkdir()
    elif case == "not utf-8":
        f.write_bytes(b"\xff\xfe" + GOOD.encode())
    elif case == "too deep":
        f.write_text(GOOD + DEEP)
    with pytest.raises(ConfigError) as caught:
        CatalogueWatcher(f)
    assert caught.value.key == str(f)


@pytest.mark.parametrize(("body", "says"), [(b"port = 1\n# \xff\xfe\n", "not UTF-8"), (DEEP.encode(), "too deeply")])
def test_a_settings_file_that_cannot_be_parsed_is_a_config_error(tmp_path: Path, body: bytes, says: str) -> None:
    """review27b F2: load_settings caught OSError and TOMLDecodeError only: these two were tracebacks."""
    cfg = tmp_path / "peerserve.toml"
    cfg.write_bytes(body)
    with pytest.raises(ConfigError) as caught:
        load_settings(str(cfg), env={})
    assert caught.value.key == "config" and says in str(caught.value) and str(cfg) in str(caught.value)


def test_settings_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "peerserve.toml"
    cfg.write_text('node_id = "from-file"\nport = 9000\nruntime = "docker"\n')
    s = load_settings(
        str(cfg),
        env={"PEERSERVE_PORT": "9100", "PEERSERVE_DATA_DIR": str(tmp_path)},
        overrides={"port": 9200},
    )
    assert (s.node_id, s.port, s.runtime, s.data_dir) == ("from-file", 9200, "docker", str(tmp_path))
    assert s.api_url == "http://127.0.0.1:9200"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"PEERSERVE_PORT": "eighty"}, "port"),
        ({"PEERSERVE_PORT": "70000"}, "port"),
        ({"PEERSERVE_NODE_ID": "has.dots"}, "node_id"),
        ({"PEERSERVE_RUNTIME": "k8s"}, "runtime"),
        ({"PEERSERVE_CLUSTER_TOKEN": "short"}, "cluster_token"),
        ({"PEERSERVE_ADVERTISE_ADDRESS": "not-an-ip"}, "advertise_address"),
        ({"PEERSERVE_PROVISION_WAIT_S": "0"}, "provision_wait_s"),
        ({"PEERSERVE_DOCKER_GPU": "maybe"}, "docker_gpu"),
        ({"PEERSERVE_NODE_ID": "node\n"}, "node_id"),
        ({"PEERSERVE_HEADER_TIMEOUT_S": "0"}, "header_timeout_s"),
        ({"PEERSERVE_BODY_TIMEOUT_S": "-1"}, "body_timeout_s"),
        ({"PEERSERVE_MAX_CONCURRENCY": "0"}, "max_concurrency"),
        ({"PEERSERVE_MAX_CLIENTS_PER_ADDRESS": "0"}, "max_clients_per_address"),
        ({"PEERSERVE_CLIENT_RTT_ROWS": "0"}, "client_rtt_rows"),
        ({"PEERSERVE_API_DOCS": "maybe"}, "api_docs"),
        ({"PEERSERVE_PLACEMENT_TARGET_ROUNDS": "0"}, "placement_target_rounds"),
        ({"PEERSERVE_PLACEMENT_HOLD_PER_MODEL": "maybe"}, "placement_hold_per_model"),
        ({"PEERSERVE_CORES": "-2"}, "cores"),
        ({"PEERSERVE_CORES": "inf"}, "cores"),
        ({"PEERSERVE_ELECTION_HEARTBEAT_S": "1e-9"}, "election_heartbeat_s"),  # the election loop would spin
        ({"PEERSERVE_REQUEST_WINDOW_MB": "0"}, "request_window_mb"),
        ({"PEERSERVE_REQUEST_WINDOW_MB": "nan"}, "request_window_mb"),
        ({"PEERSERVE_REQUEST_WINDOW_MB": "1e6"}, "request_window_mb"),  # no board has it: no bound at all
        ({"PEERSERVE_DOCKER_LOG_MAX_MB": "0"}, "docker_log_max_mb"),  # a model server's log must stay bounded
        ({"PEERSERVE_DOCKER_LOG_MAX_MB": "1e6"}, "docker_log_max_mb"),
        ({"PEERSERVE_DOCKER_LOG_FILES": "0"}, "docker_log_files"),
    ],
)
def test_bad_settings_name_the_key(env: dict[str, str], key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, env={"PEERSERVE_DATA_DIR": str(tmp_path), **env})
    assert err.value.key == key


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
@pytest.mark.parametrize("key", ["header_timeout_s", "body_timeout_s", "client_rtt_ttl_s", "probe_interval_s",
                                 "max_body_mb", "placement_period_s", "placement_hold_margin"])  # fmt: skip
def test_non_finite_numbers_are_refused_from_env_and_flags(raw: str, key: str, tmp_path: Path) -> None:
    """Review 11a: header_timeout_s=nan fired every header deadline at once, body_timeout_s=inf switched it off."""
    with pytest.raises(ConfigError, match="is not a finite number") as err:
        load_settings(None, env={"PEERSERVE_DATA_DIR": str(tmp_path), f"PEERSERVE_{key.upper()}": raw})
    assert err.value.key == key
    with pytest.raises(ConfigError, match="is not a finite number") as err:
        load_settings(None, env={"PEERSERVE_DATA_DIR": str(tmp_path)}, overrides={key: raw})
    assert err.value.key == key


def test_non_finite_numbers_are_refused_from_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    for line in ("header_timeout_s = nan", "body_timeout_s = inf", "suspicion_mult = -inf"):
        cfg.write_text(line + "\n")
        with pytest.raises(ConfigError, match="is not a finite number") as err:
            load_settings(str(cfg), env={"PEERSERVE_DATA_DIR": str(tmp_path)})
        assert err.value.key == line.split()[0]


def test_the_agent_refuses_to_start_on_a_non_finite_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from peerserve.cli import main

    assert main(["agent", "--data-dir", str(tmp_path), "--header-timeout-s", "nan", "--no-discovery"]) == 2
    assert "header_timeout_s: nan is not a finite number" in capsys.readouterr().err


def test_a_missing_operator_ca_named_by_the_environment_refuses_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """tidy18: install.sh --no-operator-ca removes the CA file and the config's setting, but PEERSERVE_OPERATOR_CA
    (a systemd drop-in's Environment=) still names the file: the agent refuses to start -- never open -- saying the
    file is gone and that the variable, not the config file, set it."""
    from peerserve.cli import main

    missing, cfg = tmp_path / "operator-ca.pub", tmp_path / "peerserve.toml"
    base = f'cluster_token = "operator-ca-env-token-0123456789"\ndata_dir = "{tmp_path / "data"}"\n'
    cfg.write_text(base)
    monkeypatch.setenv("PEERSERVE_OPERATOR_CA", str(missing))
    assert main(["agent", "--config", str(cfg), "--no-discovery"]) == 2
    err = capsys.readouterr().err
    assert f"operator_ca: {missing} does not exist: the operator CA mode is on" in err
    assert "this rule reads PEERSERVE_OPERATOR_CA from the environment: systemctl cat" in err  # the file lacks it
    monkeypatch.delenv("PEERSERVE_OPERATOR_CA")
    cfg.write_text(base + f'operator_ca = "{missing}"\n')  # named by the file: the same refusal, no word of a variable
    with pytest.raises(ConfigError, match="does not exist: the operator CA mode is on") as caught:
        load_settings(str(cfg), env={})
    assert caught.value.key == "operator_ca" and caught.value.source == ""
    with pytest.raises(ConfigError) as caught:  # a flag over the variable: the flag's value, the flag's error
        load_settings(str(cfg), env={"PEERSERVE_OPERATOR_CA": "x"}, overrides={"operator_ca": str(missing)})
    assert "does not exist" in str(caught.value) and caught.value.source == ""
    with pytest.raises(ConfigError) as caught:  # the message itself stays the setting's; the source rides beside it
        load_settings(str(cfg), env={"PEERSERVE_OPERATOR_CA": str(missing)})
    assert str(caught.value).endswith("remove any PEERSERVE_OPERATOR_CA setting)")
    said = f"[this rule reads PEERSERVE_OPERATOR_CA (over {cfg}) from the environment: systemctl cat peerserve-agent"
    assert caught.value.with_source().endswith(said + " shows a unit's drop-ins]")
    cfg.write_text(base)  # "over" the config only where it sets the key
    with pytest.raises(ConfigError) as caught:
        load_settings(str(cfg), env={"PEERSERVE_OPERATOR_CA": str(missing)})
    assert caught.value.source.startswith("this rule reads PEERSERVE_OPERATOR_CA from the environment: ")


SECURITY_SETTINGS = ["operator_ca", "cluster_token", "client_token", "metrics_token"]


def every_security_setting_in_a_file(tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    """A config file that sets the four security settings (an operator CA key written beside it, three tokens):
    (the CA's public key, each setting's value in the file, the config file)."""
    pub = tmp_path / "ca.pub"
    pub.write_text(b64(raw_public(Ed25519PrivateKey.generate().public_key())) + "\n")
    values = {"operator_ca": str(pub), "cluster_token": "file-cluster-token-0123456789",
              "client_token": "file-client-token-0123456789", "metrics_token": "file-metrics-token-0123"}  # fmt: skip
    cfg = tmp_path / "peerserve.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n' + "".join(f'{k} = "{v}"\n' for k, v in values.items()))
    return pub, values, cfg


@pytest.mark.parametrize("name", SECURITY_SETTINGS)
def test_an_empty_variable_never_switches_a_security_setting_of_the_file_off(tmp_path: Path, name: str) -> None:
    """review18a F1: ``Environment=PEERSERVE_OPERATOR_CA=`` (what an operator writes to silence a drop-in, and what
    install.sh's check reads as unset) ran the agent on the token alone although the config names the CA; an empty
    client or metrics token dropped the file's token the same way. An empty variable counts as unset."""
    pub, values, cfg = every_security_setting_in_a_file(tmp_path)
    sources: dict[str, str] = {}
    for blank in ("", "  "):
        s = load_settings(str(cfg), env={f"PEERSERVE_{name.upper()}": blank}, sources=sources)
        assert getattr(s, name) == values[name]
        assert sources[name].startswith(f"the config file {cfg} (PEERSERVE_{name.upper()} is empty in the environment")
    bare = load_settings(None, env={"PEERSERVE_DATA_DIR": str(tmp_path), f"PEERSERVE_{name.upper()}": ""})
    assert getattr(bare, name) == ""  # unset in the file too: the default, as before
    other = tmp_path / "other.pub"  # a value still overrides the file, as every variable does
    other.write_text(pub.read_text())
    if name == "operator_ca":
        s = load_settings(str(cfg), env={"PEERSERVE_OPERATOR_CA": str(other)}, sources=sources)
        assert (
            s.operator_ca == str(other)
            and sources["operator_ca"] == f"PEERSERVE_OPERATOR_CA in the environment (over {cfg})"
        )


@pytest.mark.parametrize("name", SECURITY_SETTINGS)
def test_an_empty_flag_never_switches_a_security_setting_of_the_file_off(tmp_path: Path, name: str) -> None:
    """review18d F6: ``--client-token ""`` (and the other three) dropped the file's value although an empty variable
    no longer does; an empty flag counts as unset the same way, and ``peerserve agent --help`` says so."""
    _, values, cfg = every_security_setting_in_a_file(tmp_path)
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    register(subparsers)
    flag = "--" + name.replace("_", "-")
    sources: dict[str, str] = {}
    for blank in ("", " \t"):
        args = parser.parse_args(["agent", flag, blank])
        s = load_settings(str(cfg), env={}, overrides={name: getattr(args, name)}, sources=sources)
        assert getattr(s, name) == values[name]
        assert sources[name] == f"the config file {cfg} (its command-line flag is empty: an empty one counts as unset)"
    bare = load_settings(None, env={}, overrides={"data_dir": str(tmp_path), name: ""})
    assert getattr(bare, name) == ""  # unset in the file too: the default
    helped = " ".join(subparsers.choices["agent"].format_help().split())
    assert helped.count("An empty value counts as unset (the config's stands)") == 4  # the four flags say so


def test_each_empty_token_ignored_is_logged_at_start_with_what_to_write_instead(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """review18e: ``--metrics-token ""`` or ``PEERSERVE_METRICS_TOKEN=`` (meaning "open /metrics") was ignored as
    unset with no word, and the operator got 401s. One warning at start for each, naming it, what stands, and what
    to write instead; nothing for a token that is set or absent."""
    cfg = tmp_path / "peerserve.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\nmetrics_token = "file-metrics-token-0123"\n')
    sources: dict[str, str] = {}
    ignored: list[str] = []
    env = {"PEERSERVE_METRICS_TOKEN": "", "PEERSERVE_CLUSTER_TOKEN": "env-cluster-token-0123456789"}
    s = load_settings(str(cfg), env=env, overrides={"client_token": " "}, sources=sources, ignored=ignored)
    caplog.set_level(logging.INFO, logger="agent.settings")
    log_at_start(s, sources, ignored)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        "the variable PEERSERVE_METRICS_TOKEN is empty and was ignored (an empty one counts as unset): metrics_token "
        f'stays as set by the config file {cfg}; to open /metrics, write metrics_token = "" in the config file and '
        "remove the variable",
        'the flag --client-token "" is empty and was ignored (an empty one counts as unset): client_token keeps its '
        'default; to open the client API, write client_token = "" in the config file and remove --client-token',
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [operator_ca_mode(s, sources)]
    quiet: list[str] = []
    load_settings(str(cfg), env={"PEERSERVE_CLIENT_TOKEN": "env-client-token-0123"}, ignored=quiet)
    assert quiet == []


def test_an_empty_variable_under_a_flag_that_sets_it_names_the_command_line(tmp_path: Path) -> None:
    """review19b F8: ``PEERSERVE_METRICS_TOKEN=""`` with ``--metrics-token X`` logged "metrics_token keeps its
    default", while the command line had set it. The line names what stands: the flag's value (never the value)."""
    cfg = tmp_path / "peerserve.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\nmetrics_token = "file-metrics-token-0123"\n')
    for config in (None, str(cfg)):
        ignored: list[str] = []
        env = {"PEERSERVE_METRICS_TOKEN": "", "PEERSERVE_DATA_DIR": str(tmp_path / "data")}
        s = load_settings(config, env=env, overrides={"metrics_token": "flag-metrics-token-0123"}, ignored=ignored)
        assert s.metrics_token == "flag-metrics-token-0123"
        assert ignored == [
            "the variable PEERSERVE_METRICS_TOKEN is empty and was ignored (an empty one counts as unset): "
            'metrics_token stays as set by the command line; to open /metrics, write metrics_token = "" in the config '
            "file and remove the variable"
        ]
        assert "flag-metrics-token" not in ignored[0]


@pytest.mark.parametrize("host", ["", " ", "\t"])
def test_an_empty_host_is_refused_never_every_interface(tmp_path: Path, host: str) -> None:
    """review18d F5: host "" made uvicorn and the peer listener bind EVERY interface (and left advertise_address and
    peer_url empty): ``PEERSERVE_HOST=`` over a config saying 127.0.0.1 exposed the open client API to the LAN."""
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env={"PEERSERVE_HOST": host, "PEERSERVE_DATA_DIR": str(tmp_path)})
    assert caught.value.key == "host" and "is empty" in str(caught.value)
    with pytest.raises(ConfigError):
        load_settings(None, env={}, overrides={"host": host, "data_dir": str(tmp_path)})
    assert load_settings(None, env={"PEERSERVE_HOST": "0.0.0.0", "PEERSERVE_DATA_DIR": str(tmp_path)}).host == "0.0.0.0"


@pytest.mark.parametrize(("host", "said"), [(" 0.0.0.0", "white space around"), ("127.0.0.1\n", "white space around"),
                                            ("localhost", "is not an IP address")])  # fmt: skip
def test_a_bad_host_is_named_as_host_not_as_advertise_address(tmp_path: Path, host: str, said: str) -> None:
    """review18e: advertise_address is taken from host, and a bad host was refused as a bad advertise_address, a
    setting the operator never wrote. The error names host, from the config file as from a variable."""
    cfg = tmp_path / "peerserve.toml"
    cfg.write_text(f"host = {json.dumps(host)}\n")
    for path, env in ((str(cfg), {}), (None, {"PEERSERVE_HOST": host})):
        with pytest.raises(ConfigError) as caught:
            load_settings(path, env={**env, "PEERSERVE_DATA_DIR": str(tmp_path)})
        assert caught.value.key == "host" and said in str(caught.value), str(caught.value)
    named = load_settings(None, env={"PEERSERVE_HOST": "localhost", "PEERSERVE_ADVERTISE_ADDRESS": "127.0.0.1",
                                     "PEERSERVE_DATA_DIR": str(tmp_path)})  # fmt: skip
    assert (named.host, named.advertise_address) == ("localhost", "127.0.0.1")  # a name binds, told an address


def test_the_start_log_says_the_operator_ca_mode_and_where_it_came_from(tmp_path: Path) -> None:
    """review18a F1: the mode and its source are logged at start (cmd_agent), so a variable over the config shows."""
    pub = tmp_path / "ca.pub"
    pub.write_text(b64(raw_public(Ed25519PrivateKey.generate().public_key())) + "\n")
    cfg = tmp_path / "peerserve.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\ncluster_token = "mode-log-cluster-token-0123"\n')
    sources: dict[str, str] = {}
    off = load_settings(str(cfg), env={}, sources=sources)
    assert operator_ca_mode(off, sources) == "operator CA mode off: the cluster token alone admits peers"
    on = load_settings(str(cfg), env={"PEERSERVE_OPERATOR_CA": str(pub)}, sources=sources)
    assert operator_ca_mode(on, sources) == (f"operator CA mode on: peers need a board card signed by {pub} "
                                             "(operator_ca from PEERSERVE_OPERATOR_CA in the environment)")  # fmt: skip
    cfg.write_text(cfg.read_text() + f'operator_ca = "{pub}"\n')
    sources.clear()
    on = load_settings(str(cfg), env={}, sources=sources)
    assert operator_ca_mode(on, sources).endswith(f"(operator_ca from the config file {cfg})")


def test_a_config_error_names_the_variables_its_rule_reads_without_blaming_them(tmp_path: Path) -> None:
    """review18a F4: the file's pin_first_contact_burst = 0 broke the rule, yet the source said "set by
    PEERSERVE_PIN_FIRST_CONTACT_PER_MIN" (a valid 8); "over <config>" showed for a key the file lacks; a variable
    that is no number carried no source at all."""
    cfg = tmp_path / "peerserve.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\npin_first_contact_burst = 0\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(str(cfg), env={"PEERSERVE_PIN_FIRST_CONTACT_PER_MIN": "8"})
    assert "set by" not in caught.value.source and "over" not in caught.value.source
    assert caught.value.source.startswith("this rule reads PEERSERVE_PIN_FIRST_CONTACT_PER_MIN from the environment")
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\npin_first_contact_per_min = 8.0\n')
    with pytest.raises(ConfigError) as caught:  # the rule's other setting, from a variable: named too
        load_settings(str(cfg), env={"PEERSERVE_PIN_FIRST_CONTACT_BURST": "0"})
    assert caught.value.source.startswith("this rule reads PEERSERVE_PIN_FIRST_CONTACT_BURST from the environment")
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\nruntime = "k8s"\n')
    with pytest.raises(ConfigError) as caught:  # a rule nothing in the environment feeds: no source
        load_settings(str(cfg), env={"PEERSERVE_PIN_FIRST_CONTACT_BURST": "3"})
    assert caught.value.key == "runtime" and caught.value.source == ""
    with pytest.raises(ConfigError) as caught:  # a value that is no number: its variable, which is its cause
        load_settings(str(cfg), env={"PEERSERVE_PORT": "eighty"})
    assert caught.value.key == "port" and caught.value.source.startswith("set by PEERSERVE_PORT in the environment")


def test_broken_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("port = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(str(cfg), env={})
    cfg.write_text("colour = 'blue'")
    with pytest.raises(ConfigError) as err:
        load_settings(str(cfg), env={})
    assert err.value.key == "colour"


def test_the_request_window_budget_reaches_the_leaders_window(tmp_path: Path) -> None:
    """``request_window_mb`` (MiB) is the leader's window's byte budget, which its solver worker's copy gets too
    (``config()`` travels with a whole-window message); its default is the window's."""

    async def scenario() -> tuple[int, float, float, int]:
        overrides = {"node_id": "w", "data_dir": str(tmp_path), "request_window_mb": 2.5, "mdns": False}
        agent = NodeAgent(load_settings(env={}, overrides=overrides))
        try:
            return Leadership(agent).rounds.window.config()
        finally:
            await agent.stop()

    assert asyncio.run(scenario())[3] == int(2.5 * 2**20)
    assert Settings.request_window_mb * 2**20 == MAX_WINDOW_BYTES


def test_the_request_window_budget_is_a_flag(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["agent", "--request-window-mb", "2.5"])
    overrides = {"request_window_mb": args.request_window_mb, "data_dir": str(tmp_path)}
    assert load_settings(env={}, overrides=overrides).request_window_mb == 2.5
    from_env = load_settings(env={"PEERSERVE_REQUEST_WINDOW_MB": "3"}, overrides={"data_dir": str(tmp_path)})
    assert from_env.request_window_mb == 3


def test_the_docker_log_bound_is_a_flag_and_reaches_the_runtime(tmp_path: Path) -> None:
    """Flags -> settings -> the runtime's log_config (the engine test checks what a container gets)."""
    from agent.node import make_runtime
    from agent.runtime.docker import DockerRuntime

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["agent", "--docker-log-max-mb", "0.5", "--docker-log-files", "2"])
    overrides = {"docker_log_max_mb": args.docker_log_max_mb, "docker_log_files": args.docker_log_files,
                 "data_dir": str(tmp_path), "runtime": "docker"}  # fmt: skip
    runtime = make_runtime(load_settings(env={}, overrides=overrides))
    assert isinstance(runtime, DockerRuntime)
    assert runtime.log.config() == {"Type": "json-file", "Config": {"max-size": "512k", "max-file": "2"}}
    default = load_settings(env={}, overrides={"data_dir": str(tmp_path)})
    assert (default.docker_log_max_mb, default.docker_log_files) == (10.0, 3)  # at most 30 MiB per model server
