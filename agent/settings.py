"""One Settings object for the agent: a TOML file, then PEERSERVE_* variables, then CLI flags.

Every field maps one-to-one: ``node_id`` <-> ``--node-id`` <-> ``PEERSERVE_NODE_ID`` <-> ``node_id =``
in the file. Values are validated at start and a bad one raises ConfigError naming it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from agent.browser_guard import parse_allowed_hosts
from agent.errors import ConfigError
from agent.interfaces import interface_address
from agent.operator_ca import parse_operator_ca
from peerserve import names
from peerserve.dispatch import RULES as ENDPOINT_RULES
from peerserve.wire import NODE_CLASS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NODE_ID = names.NODE_ID  # one DNS label: no dots (DESIGN, mDNS); peerserve/names.py, shared
MIN_HEARTBEAT_S = 0.03  # election_heartbeat_s at least this: the election loop ticks at a third of it
MIN_DOCKER_LOG_MB, MAX_DOCKER_LOG_MB = 0.0625, 1024.0  # docker_log_max_mb: at least 64 KiB a file, under 1 GiB
MIN_WINDOW_MB, MAX_WINDOW_MB = 0.25, 4096.0  # request_window_mb: room for a page of the widest rows; under 4 GiB
MAX_CLOCK_OFFSET_S = 86_400.0  # clock_offset_s: a day either way
MIN_BODY_STALL_S = 0.1  # body_stall_s: Linux's least retransmission timeout is 0.2 s; a lost packet is no stall
MIN_BODY_RATE_GRACE_S = 0.5  # body_rate_grace_s: a body's first bytes are a round trip or more behind its head
# body_min_rate: at least 10 B/s (80 bit/s, under any link that carries HTTP: a 300-baud serial line is ~30 B/s).
# 0 (or 1e-9) switched off every rule that frees a place held by a trickled body (review16b F1): with a floor a
# chunked body trickled at 1 B/s is behind it after ~2 s and takeable below 4 x 10 = 40 B/s.
MIN_BODY_MIN_RATE = 10.0
MAX_BODY_MIN_RATE = 1_000_000.0  # body_min_rate: 1 MB/s (8 Mbit/s); above it honest Wi-Fi uploads count as waiting
MAX_TAKE_BELOW_RATES = 100.0  # body_take_below_rates: 100 x the minimum rate


class UnsetSeconds(float):
    """A ``body_stall_s`` / ``body_rate_grace_s`` nobody set: its default, or ``body_timeout_s`` if that is shorter
    (``Settings.__post_init__``). They came in session 16 with a range up to ``body_timeout_s``; a config from before
    (body_timeout_s 1.5 s, say) never set them and must still start (review16b F4). Only the settings loader did
    this once, so a ``Settings(body_timeout_s=1.5)`` built in code raised; every Settings does it now. The value
    stays marked as unset, so ``replace(body_timeout_s=...)`` follows the new timeout too."""

    __slots__ = ()  # a float and its mark (the class), nothing more: no per-instance __dict__


BODY_RATE_DEFAULTS = {"body_stall_s": 1.0, "body_rate_grace_s": 2.0}  # unset, at most body_timeout_s


@dataclass(frozen=True)
class Settings:
    """Everything an agent is configured with (see `peerserve agent --help` for each field)."""

    node_id: str = ""
    host: str = "127.0.0.1"
    port: int = 8400
    peer_port: int = 0  # the authenticated peer listener (mutual TLS); 0: port + 1
    advertise_address: str = ""
    data_dir: str = ""
    catalogue: str = ""
    runtime: str = "process"
    cluster_token: str = ""
    # opt-in operator CA (agent/operator_ca.py): its public key (a file, or base64url / hex); with it a peer is a member
    # only with a board card the operator signed; this board's own card and the operator's revocation list (default
    # DATA_DIR/peer/board.card and DATA_DIR/peer/revoked.json)
    operator_ca: str = ""
    board_card: str = ""
    revocations: str = ""
    node_class: str = "default"
    compute: float = 100.0
    cores: float = 0.0  # parallel capacity the node's instances share (queue model); 0: os.cpu_count()
    instance_concurrency: float = 1.0  # requests one model server serves at once (queue model); 0: the node's cores
    docker_gpu: bool = False
    docker_log_max_mb: float = 10.0  # a container's json-file log rotates at this size (agent/runtime/docker.py) ...
    docker_log_files: int = 3  # ... keeping this many files: at most max_mb x files per model server
    provision_wait_s: float = 10.0
    reconcile_interval_s: float = 2.0
    catalogue_poll_s: float = 2.0
    max_body_mb: float = 8.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_concurrency: int = 256
    max_connections_per_address: int = 64
    # when a request body counts as waiting on its client (a newcomer at max_concurrency may take its place;
    # agent/http_caps.py): no byte for body_stall_s, or behind body_min_rate bytes a second (10 to 1e6) by more
    # than body_rate_grace_s; with none waiting, a body sent slower than body_take_below_rates x body_min_rate
    body_stall_s: float = UnsetSeconds(BODY_RATE_DEFAULTS["body_stall_s"])
    body_min_rate: float = 500.0
    body_rate_grace_s: float = UnsetSeconds(BODY_RATE_DEFAULTS["body_rate_grace_s"])
    body_take_below_rates: float = 4.0
    max_header_kb: int = 16
    max_clients_per_address: int = 8
    client_rtt_ttl_s: float = 3600.0
    client_rtt_rows: int = 50_000
    api_docs: bool = False
    request_log_rows: int = 100_000
    instance_ready_timeout_s: float = 60.0
    instance_drain_s: float = 3.0  # a server the plan drops leaves endpoint answers this long before it stops
    max_parallel_starts: int = 4  # model servers a reconcile round starts at once (each loads its model: memory, CPU)
    # p2c: two endpoints drawn by the plan, the emptier taken; weighted; lef: the least expected finish among every
    # ready endpoint (peerserve/dispatch.py)
    endpoint_rule: str = "p2c"
    discovery: bool = True
    mdns: bool = True
    interface: str = "auto"
    seeds: str = ""
    probe_interval_s: float = 0.2  # SWIM protocol period: one member probed per period (agent/discovery/swim.py)
    probe_timeout_s: float = 0.4  # a direct probe's deadline; the indirect probes get twice as long
    suspicion_mult: float = 4.0  # suspicion lasts mult x log10(N + 1) x probe_interval_s (up to 4x unconfirmed)
    push_pull_interval_s: float = 10.0  # full table exchange with one random member
    # a third party's "dead" acts at once (probe, one miss kills) only from this many proven declarers; 0: from any
    # member's word (the rule before: docs/security.md, SwimConfig.dead_quorum)
    dead_quorum: int = 2
    # new node ids one source address may pin here (first contact): a burst, then a rate (agent/identity.py Pins);
    # loopback addresses are not budgeted
    pin_first_contact_per_min: float = 8.0
    pin_first_contact_burst: int = 16
    # accept signed peer requests that name no boot id (agents older than boot ids, during a rolling upgrade): their
    # replay is refused by the clock window and nonce cache alone, which a restart forgets (docs/security.md, "Boot
    # ids"); off (--refuse-v1-requests) once every member runs an agent with boot ids
    peer_v1_requests: bool = True
    priority: int = 0
    election_heartbeat_s: float = 0.3
    election_timeout_s: float = 1.2
    placement_period_s: float = 30.0
    placement_mode: str = "1"
    placement_method: str = "ipopt"
    placement_objective: str = "queue-p99"  # queue-p99 / queue: rates, queueing, shared instances; thesis: 1/stream
    placement_hold: bool = True  # hysteresis (agent/hysteresis.py): keep what runs unless a plan is clearly better
    placement_hold_margin: float = 0.1  # a switch must gain this share of the running mean latency ...
    placement_hold_start_ms: float = 1.0  # ... plus this many ms per instance it starts
    placement_min_dwell_s: float = 60.0  # an instance younger than this is not stopped for a soft gain
    placement_hold_per_model: bool = True  # a model's own latency past the margin also switches (small streams)
    placement_target_rounds: int = 3  # a node's target its reports fall short of this many rounds stops counting
    request_window_s: float = 600.0
    request_window_mb: float = 16.0  # the leader's request window: its rows' bytes, in MiB (agent/request_window.py)
    # how often the node scrapes its own model servers' statistics (their service times over request_window_s,
    # reported in /stats/node: agent/serving/server_scrape.py); 0: never
    server_stats_s: float = 5.0
    metrics: bool = True
    server_timing: bool = True  # W3C Server-Timing on answers (execution and GC times: off on a LAN of strangers)
    metrics_token: str = ""
    client_token: str = ""  # optional: client API needs Authorization: Bearer (agent/client_auth.py)
    # names besides its own the client API answers to, comma-separated; "*": any (agent/browser_guard.py)
    allowed_hosts: str = ""
    https_port: int = 0  # optional: the client API also over HTTPS here, with tls_cert / tls_key
    tls_cert: str = ""
    tls_key: str = ""
    log_format: str = "text"
    crash_backoff: bool = True  # wait before serving after crashes in a row (agent/crash_backoff.py)
    # drills and tests: this agent's wall clock reads the machine's plus this many seconds (a board whose clock is
    # off); every wall-clock reading of the agent goes through NodeAgent.clock. 0 in service
    clock_offset_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.node_id:
            object.__setattr__(self, "node_id", default_node_id(self.port))
        validate_host(self.host, self.advertise_address)  # before advertise_address is taken from it
        if not self.advertise_address:
            wildcard = self.host in ("0.0.0.0", "::")
            object.__setattr__(self, "advertise_address", interface_address(self.interface) if wildcard else self.host)
        if not self.data_dir:
            object.__setattr__(self, "data_dir", default_data_dir(self.node_id))
        # absolute once, so every part sees the same directory (tritonserver runs in a folder of its own, with
        # paths under it on its command line): a relative --data-dir is taken from where the agent started
        object.__setattr__(self, "data_dir", os.path.abspath(self.data_dir))
        for name, default in BODY_RATE_DEFAULTS.items():
            if isinstance(getattr(self, name), UnsetSeconds):  # (min: a NaN body_timeout_s is refused below)
                object.__setattr__(self, name, UnsetSeconds(min(default, self.body_timeout_s)))
        validate(self)

    @property
    def api_url(self) -> str:
        return f"http://{_host_for_url(self.advertise_address or self.host)}:{self.port}"

    @property
    def peer_listen_port(self) -> int:
        return self.peer_port or self.port + 1

    @property
    def peer_url(self) -> str:
        return f"https://{_host_for_url(self.advertise_address or self.host)}:{self.peer_listen_port}"

    @property
    def seed_urls(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.seeds.split(",") if u.strip()]

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def default_node_id(port: int) -> str:
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "node"
    return f"{host}-{port}"[:63]


def default_data_dir(node_id: str) -> str:
    if os.geteuid() == 0:
        return f"/var/lib/peerserve/{node_id}"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "peerserve" / node_id)


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def validate_host(host: str, advertise_address: str) -> None:
    """``host`` is checked before ``advertise_address`` is taken from it: ``" 0.0.0.0"`` or ``"localhost"`` was
    refused with an error that blamed advertise_address, a setting the operator never wrote (review18e)."""
    if not host.strip():  # uvicorn and the peer listener bind EVERY interface on host "" (review18d F5)
        raise ConfigError("host", f"{host!r} is empty: name the address to bind (127.0.0.1, or 0.0.0.0 for all)")
    if host != host.strip():
        raise ConfigError("host", f"{host!r} has white space around the address: write {host.strip()!r}")
    if not advertise_address and host not in ("0.0.0.0", "::"):
        try:
            ipaddress.ip_address(host)
        except ValueError as exc:
            said = f"{host!r} is not an IP address, and advertise_address (what peers are told) is taken from it"
            raise ConfigError("host", f"{said}: name an IP address, or set advertise_address too") from exc


def validate(s: Settings) -> None:
    for f in fields(s):  # NaN passes every "<= 0" check; a NaN deadline fires at once, an infinite one never
        value = getattr(s, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f.name, f"{value!r} is not a finite number")
    validate_host(s.host, s.advertise_address)
    if not NODE_ID.fullmatch(s.node_id):
        raise ConfigError("node_id", f"{s.node_id!r} must be one DNS label: letters, digits, '-', '_'")
    if not NODE_CLASS.fullmatch(s.node_class):
        raise ConfigError("node_class", f"{s.node_class!r} must be 1-64 letters, digits, '_', '.' or '-'")
    if not 0 < s.port < 65536:
        raise ConfigError("port", f"{s.port} is not a TCP port")
    if not 0 < s.peer_listen_port < 65536 or s.peer_listen_port == s.port:
        raise ConfigError("peer_port", f"{s.peer_listen_port} is not a TCP port other than port ({s.port})")
    if s.runtime not in ("process", "docker"):
        raise ConfigError("runtime", f"{s.runtime!r}: choose process or docker")
    if s.advertise_address:
        try:
            ipaddress.ip_address(s.advertise_address)
        except ValueError as exc:
            raise ConfigError("advertise_address", f"{s.advertise_address!r} is not an IP address") from exc
    for name in ("provision_wait_s", "reconcile_interval_s", "catalogue_poll_s", "max_body_mb", "compute",
                 "probe_interval_s", "probe_timeout_s", "push_pull_interval_s"):  # fmt: skip
        if getattr(s, name) <= 0:
            raise ConfigError(name, "must be positive")
    if not 0 <= s.cores < float("inf"):
        raise ConfigError("cores", "must be a positive number of cores, or 0 for os.cpu_count()")
    if not (s.instance_concurrency == 0 or 1 <= s.instance_concurrency <= 1024):
        raise ConfigError("instance_concurrency", "must be 1-1024 requests at once, or 0 for the node's cores")
    if s.suspicion_mult < 1:
        raise ConfigError("suspicion_mult", "must be at least 1 (suspicion shorter than a period flaps)")
    if not (s.pin_first_contact_per_min > 0 and 1 <= s.pin_first_contact_burst <= 4096):
        raise ConfigError("pin_first_contact_per_min", "must be positive, with pin_first_contact_burst 1-4096")
    if not 0 <= s.dead_quorum <= 16:
        raise ConfigError("dead_quorum", "must be 0 (any member's word) or 1-16 proven declarers")
    if s.election_timeout_s <= 3 * s.election_heartbeat_s:
        raise ConfigError("election_timeout_s", "must exceed 3 x election_heartbeat_s")
    if s.placement_mode not in ("1", "2", "auto"):
        raise ConfigError("placement_mode", f"{s.placement_mode!r}: choose 1, 2 or auto")
    if s.placement_method not in ("ipopt", "ipopt-nl", "milp", "iterative", "nearest", "least-loaded"):
        raise ConfigError("placement_method", f"{s.placement_method!r} is not a solver method")
    if s.placement_objective not in ("queue", "queue-p99", "thesis"):
        raise ConfigError("placement_objective", f"{s.placement_objective!r}: choose queue, queue-p99 or thesis")
    if not MIN_DOCKER_LOG_MB <= s.docker_log_max_mb <= MAX_DOCKER_LOG_MB:
        raise ConfigError("docker_log_max_mb", f"must be {MIN_DOCKER_LOG_MB:g}-{MAX_DOCKER_LOG_MB:g} MiB")
    if not 1 <= s.docker_log_files <= 100:
        raise ConfigError("docker_log_files", "must be 1-100 files")
    for name in ("placement_period_s", "request_window_s", "election_heartbeat_s"):
        if getattr(s, name) <= 0:
            raise ConfigError(name, "must be positive")
    if not MIN_WINDOW_MB <= s.request_window_mb <= MAX_WINDOW_MB:
        raise ConfigError("request_window_mb", f"must be {MIN_WINDOW_MB:g}-{MAX_WINDOW_MB:g} MiB")
    if s.election_heartbeat_s < MIN_HEARTBEAT_S:  # the election loop ticks at a third of it: no busy loop
        raise ConfigError("election_heartbeat_s", f"must be at least {MIN_HEARTBEAT_S:g} s")
    if not (s.server_stats_s == 0 or 0.1 <= s.server_stats_s <= 3600):  # no busy loop
        raise ConfigError("server_stats_s", "must be 0 (off) or 0.1-3600 s between scrapes")
    for name in ("placement_hold_margin", "placement_hold_start_ms", "placement_min_dwell_s", "instance_drain_s"):
        if not 0 <= getattr(s, name) < float("inf"):
            raise ConfigError(name, "must be a finite number, zero or more")
    if not abs(s.clock_offset_s) <= MAX_CLOCK_OFFSET_S:
        raise ConfigError("clock_offset_s", f"must be within +-{MAX_CLOCK_OFFSET_S:g} s (a drill's skew)")
    if not 1 <= s.max_parallel_starts <= 64:
        raise ConfigError("max_parallel_starts", "must be 1-64 servers started at once")
    if not 1 <= s.placement_target_rounds <= 1000:
        raise ConfigError("placement_target_rounds", "must be a whole number of rounds, 1 to 1000")
    for seed in s.seed_urls:
        if not seed.startswith(("http://", "https://")):
            raise ConfigError("seeds", f"{seed!r} is not an http(s) URL of an agent")
    _validate_http_bounds(s)
    if s.endpoint_rule not in ENDPOINT_RULES:
        raise ConfigError("endpoint_rule", f"{s.endpoint_rule!r}: choose {', '.join(ENDPOINT_RULES)}")
    if s.log_format not in ("text", "json"):
        raise ConfigError("log_format", f"{s.log_format!r}: choose text or json")
    if s.https_port and (not 0 < s.https_port < 65536 or s.https_port in (s.port, s.peer_listen_port)):
        raise ConfigError("https_port", f"{s.https_port} is not a TCP port other than port and peer_port")
    if s.https_port and not (s.tls_cert and s.tls_key and Path(s.tls_cert).is_file() and Path(s.tls_key).is_file()):
        raise ConfigError("tls_cert", "https_port needs tls_cert and tls_key: readable PEM files")
    try:
        parse_allowed_hosts(s.allowed_hosts)
    except ValueError as exc:
        raise ConfigError("allowed_hosts", str(exc)) from exc
    if s.cluster_token and len(s.cluster_token) < 16:
        raise ConfigError("cluster_token", "must be at least 16 characters")
    if s.operator_ca:
        if not s.cluster_token:
            raise ConfigError("operator_ca", "needs cluster_token (the token still gates TLS; the card admits)")
        try:
            parse_operator_ca(s.operator_ca)
        except FileNotFoundError as exc:  # never open instead: the mode was asked for, its key is gone
            raise ConfigError("operator_ca", f"{exc.filename} does not exist: the operator CA mode is on but its "
                              "public key is gone, and without it the agent would admit any token holder; put ca.pub "
                              "back (install.sh --operator-ca FILE) or switch the mode off (install.sh "
                              "--no-operator-ca, and remove any PEERSERVE_OPERATOR_CA setting)") from exc  # fmt: skip
        except (OSError, ValueError) as exc:
            raise ConfigError("operator_ca", f"not an operator CA public key: {exc}") from exc


def _validate_http_bounds(s: Settings) -> None:
    """The HTTP surface's bounds (agent/http_limits.py, agent/client_ids.py) must all be positive."""
    for name in ("header_timeout_s", "body_timeout_s", "client_rtt_ttl_s", "max_concurrency", "max_header_kb",
                 "max_connections_per_address", "max_clients_per_address", "client_rtt_rows"):  # fmt: skip
        if getattr(s, name) <= 0:
            raise ConfigError(name, "must be positive")
    _validate_body_rates(s)


def _validate_body_rates(s: Settings) -> None:
    """The rules that say when a request body waits on its client (agent/http_caps.py). A stall or grace too short
    counts honest uploads as waiting (a newcomer at the cap takes their place, they get 503); one past
    ``body_timeout_s`` never counts a body at all (its 408 comes first), so the cap is the stall rule's alone."""
    timeout = s.body_timeout_s
    if timeout < MIN_BODY_RATE_GRACE_S:  # no grace would fit under it (review16b F4)
        raise ConfigError("body_timeout_s", f"must be at least {MIN_BODY_RATE_GRACE_S:g} s (body_rate_grace_s's least)")
    if not MIN_BODY_STALL_S <= s.body_stall_s <= timeout:
        raise ConfigError("body_stall_s", f"must be {MIN_BODY_STALL_S:g} s to body_timeout_s ({timeout:g} s)")
    if not MIN_BODY_MIN_RATE <= s.body_min_rate <= MAX_BODY_MIN_RATE:
        raise ConfigError("body_min_rate", f"must be {MIN_BODY_MIN_RATE:g} to {MAX_BODY_MIN_RATE:,.0f} bytes a second")
    if not MIN_BODY_RATE_GRACE_S <= s.body_rate_grace_s <= timeout:
        raise ConfigError("body_rate_grace_s", f"must be {MIN_BODY_RATE_GRACE_S:g} s to body_timeout_s ({timeout:g} s)")
    if not 1 <= s.body_take_below_rates <= MAX_TAKE_BELOW_RATES:
        raise ConfigError("body_take_below_rates", f"must be 1 to {MAX_TAKE_BELOW_RATES:g} (x body_min_rate)")


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    try:
        if kind in (bool, "bool"):
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind in (int, "int"):
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if kind in (float, "float"):
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(name, f"{raw!r} is not a valid {getattr(kind, '__name__', kind)}") from exc


# Security settings an EMPTY variable does not switch off (review18a F1): a drop-in's ``Environment=NAME=`` reads as
# "unset" to an operator (and to install.sh's check), so it leaves the file's value standing, never the token alone.
# An empty command-line flag (``--client-token ""``) counts as unset the same way (review18d F6).
BLANK_IS_UNSET = ("operator_ca", "cluster_token", "client_token", "metrics_token")

# The settings a cross-field rule reads besides the one it is keyed to (validate above): an error's source names
# each of them a variable set, without claiming that one caused it (the file may hold the value at fault).
RULE_READS: dict[str, tuple[str, ...]] = {
    "peer_port": ("port",),
    "pin_first_contact_per_min": ("pin_first_contact_burst",),
    "election_timeout_s": ("election_heartbeat_s",),
    "body_stall_s": ("body_timeout_s",),
    "body_rate_grace_s": ("body_timeout_s",),
    "https_port": ("port", "peer_port"),
    "tls_cert": ("https_port", "tls_key"),
    "operator_ca": ("cluster_token",),
}


def load_settings(
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    sources: dict[str, str] | None = None,
    ignored: list[str] | None = None,
) -> Settings:
    """Merge file < environment < overrides (CLI flags; None values ignored) into validated Settings.

    An empty variable or flag for a setting of BLANK_IS_UNSET counts as unset. ``sources``, if given, is filled with
    where each setting that is not its default came from (the config file, a variable, the command line): the agent
    logs the operator CA mode's at start. ``ignored``, if given, gets one line for each empty variable or flag so
    ignored, naming it and what to write instead (the agent logs them at start: log_at_start)."""
    env = os.environ if env is None else env
    types = {f.name: f.type for f in fields(Settings)}
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    path = config_file or env.get("PEERSERVE_CONFIG")
    in_file: set[str] = set()
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:  # these two were tracebacks, not this line (review27b F2)
            raise ConfigError("config", f"{path} is not UTF-8 text (TOML is): byte {exc.start}") from exc
        except RecursionError as exc:
            raise ConfigError("config", f"{path} nests arrays or tables too deeply to parse") from exc
        for key, raw in data.items():
            if key not in types:
                raise ConfigError(key, f"unknown setting in {path}")
            values[key] = _coerce(key, types[key], raw)
            in_file.add(key)
            where[key] = f"the config file {path}"
    from_env: set[str] = set()
    blank_vars: list[tuple[str, str, str | None]] = []  # (setting, variable, where it stood before)
    blank_flags: list[str] = []
    for name, kind in types.items():
        var = f"PEERSERVE_{name.upper()}"
        raw = env.get(var)
        if raw is None:
            continue
        if name in BLANK_IS_UNSET and not raw.strip():
            blank_vars.append((name, var, where.get(name)))  # its line once the flags are known (review19b F8)
            if name in where:
                where[name] += f" ({var} is empty in the environment: an empty one counts as unset)"
            continue
        try:
            values[name] = _coerce(name, kind, raw)
        except ConfigError as exc:
            exc.source = f"set by {var} in the environment: systemctl cat peerserve-agent shows a unit's drop-ins"
            raise
        from_env.add(name)
        where[name] = f"{var} in the environment" + (f" (over {path})" if name in in_file else "")
    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name in BLANK_IS_UNSET and isinstance(raw, str) and not raw.strip():  # as a variable (review18d F6)
            flag = f"--{name.replace('_', '-')}"
            blank_flags.append(_ignored_blank(name, f'the flag {flag} ""', where.get(name), f"remove {flag}"))
            if name in where:
                where[name] += " (its command-line flag is empty: an empty one counts as unset)"
            continue
        values[name] = _coerce(name, types[name], raw)
        from_env.discard(name)
        where[name] = "the command line"
    if ignored is not None:
        for blank, variable, standing in blank_vars:  # a flag that sets it stands, not the file or the default
            if where.get(blank) == "the command line":
                standing = "the command line"
            ignored.append(_ignored_blank(blank, f"the variable {variable}", standing))
        ignored.extend(blank_flags)
    if sources is not None:
        sources.update(where)
    try:
        return Settings(**values)  # (body_stall_s / body_rate_grace_s unset: they follow body_timeout_s, UnsetSeconds)
    except ConfigError as exc:
        exc.source = _env_source(exc.key, from_env, in_file, path)
        raise


# What an operator who empties each setting most likely means, for the line that says it was ignored.
BLANK_MEANT = {
    "operator_ca": "to switch the operator CA mode off, run install.sh --no-operator-ca",
    "cluster_token": 'to run without a cluster token, write cluster_token = "" in the config file',
    "client_token": 'to open the client API, write client_token = "" in the config file',
    "metrics_token": 'to open /metrics, write metrics_token = "" in the config file',
}


def _ignored_blank(name: str, what: str, standing: str | None, remove: str = "") -> str:
    """The start-up line for an empty ``what`` (a variable or flag) of setting ``name`` ignored as unset: an operator
    meaning "off" (``--metrics-token ""`` to open /metrics) otherwise gets 401s with no hint (review18e)."""
    kept = f"{name} stays as set by {standing}" if standing else f"{name} keeps its default"
    how = BLANK_MEANT[name] + f" and {remove or 'remove the variable'}"
    return f"{what} is empty and was ignored (an empty one counts as unset): {kept}; {how}"


def log_at_start(settings: Settings, sources: Mapping[str, str], ignored: list[str]) -> None:
    """What the agent logs about its settings as it starts: the operator CA mode and where it came from, and a
    warning for each empty variable or flag ignored (load_settings' ``ignored``)."""
    log = logging.getLogger(__name__)
    log.info("%s", operator_ca_mode(settings, sources))
    for line in ignored:
        log.warning("%s", line)


def _env_source(key: str, from_env: set[str], in_file: set[str], path: str | None) -> str:
    """The variables applied that the failed rule reads, the place an operator does not look (a drop-in's
    Environment=); "" when none. Not a claim that they caused it: the rule may fail on the file's value beside them.
    "over <config>" only for a key the file also sets."""
    read = [name for name in (key, *RULE_READS.get(key, ())) if name in from_env]
    if not read:
        return ""
    named = ", ".join(f"PEERSERVE_{name.upper()}" + (f" (over {path})" if name in in_file else "") for name in read)
    return f"this rule reads {named} from the environment: systemctl cat peerserve-agent shows a unit's drop-ins"


def operator_ca_mode(s: Settings, sources: Mapping[str, str]) -> str:
    """The line the agent logs at start: whether the operator CA mode is on and where its setting came from (a
    variable over the config is otherwise invisible: review18a F1)."""
    if s.operator_ca:
        return (f"operator CA mode on: peers need a board card signed by {s.operator_ca} "
                f"(operator_ca from {sources.get('operator_ca', 'its default')})")  # fmt: skip
    said = f" (operator_ca: {sources['operator_ca']})" if "operator_ca" in sources else ""
    return f"operator CA mode off: the cluster token alone admits peers{said}"
