"""`peerserve agent` (run a node agent) and `peerserve model-server` (the stand-in TF-Serving server)."""

from __future__ import annotations

import argparse
from typing import Any

FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--node-id", {"help": "this node's id, one DNS label (default: HOSTNAME-PORT)"}),
    ("--host", {"help": "address the API binds (default 127.0.0.1)"}),
    ("--port", {"type": int, "help": "API port (default 8400)"}),
    ("--peer-port", {"type": int, "help": "peer-plane port, mutual TLS between agents only (default: port + 1)"}),
    ("--https-port", {"type": int, "help": "optional: also serve the client API over HTTPS on this port"}),
    ("--tls-cert", {"help": "PEM certificate (chain) for --https-port"}),
    ("--tls-key", {"help": "PEM private key for --https-port"}),
    (
        "--client-token",
        {
            "help": "optional: clients must send Authorization: Bearer TOKEN (default: open API). "
            "An empty value counts as unset (the config's stands)"
        },
    ),
    ("--advertise-address", {"help": "address peers and clients reach this node at (default: --host)"}),
    ("--data-dir", {"help": "state directory (default /var/lib/peerserve/NODE as root, else XDG data)"}),
    ("--catalogue", {"help": "model catalogue TOML file (default: the built-in example catalogue)"}),
    (
        "--runtime",
        {"choices": ["process", "docker"], "help": "model servers as local processes or Docker containers"},
    ),
    (
        "--cluster-token",
        {
            "help": "the cluster's join secret, the same on every board (>= 16 characters); keys and "
            "certificates are derived from it and kept in the data dir; it never leaves the node. An empty value "
            "counts as unset (the config's stands)"
        },
    ),
    (
        "--operator-ca",
        {
            "help": "opt-in: the operator CA's public key (ca.pub from 'peerserve ca init', or the key itself, "
            "base64url or hex); peers are then members only with a board card it signed, and this board shows "
            "its own (--board-card). Default: off, the token alone admits (docs/security.md). An empty value "
            "counts as unset (the config's stands): switch the mode off in the config"
        },
    ),
    ("--board-card", {"help": "with --operator-ca: this board's signed card (default DATA_DIR/peer/board.card)"}),
    (
        "--revocations",
        {"help": "with --operator-ca: the operator's signed revocation list (default DATA_DIR/peer/revoked.json)"},
    ),
    (
        "--node-class",
        {
            "help": "node class for the catalogue's execution-time profiles (e.g. xavier-nx; 1-64 of "
            "letters, digits, '_', '.', '-')"
        },
    ),
    ("--compute", {"type": float, "help": "compute capacity in the catalogue's units (default 100)"}),
    (
        "--cores",
        {"type": float, "help": "cores (or GPU streams) the node's model servers share; 0: os.cpu_count() (default)"},
    ),
    (
        "--instance-concurrency",
        {
            "type": float,
            "help": "requests one model server serves at once, each on its own core (the placement counts an "
            "instance as this many servers, at most the cores; default 1). Raise it where the servers really "
            "run requests in parallel: TF-Serving on CPU (its thread pool), Triton's instance_group count; "
            "0: the node's cores. Not for GPU-bound models, nor the stand-in (one Python lock)",
        },
    ),
    (
        "--provision-wait-s",
        {"type": float, "help": "how long a request waits for on-demand provisioning (default 10)"},
    ),
    ("--interface", {"help": "mDNS interface: auto (the advertised address), all, an address or a name"}),
    ("--seeds", {"help": "comma-separated agent URLs to contact where multicast is blocked"}),
    ("--probe-interval-s", {"type": float, "help": "membership: probe one member this often (default 0.2)"}),
    ("--probe-timeout-s", {"type": float, "help": "membership: a probe's deadline, then 3 indirect (default 0.4)"}),
    (
        "--suspicion-mult",
        {"type": float, "help": "membership: suspect for mult x log10(N+1) x probe interval, then dead (default 4)"},
    ),
    ("--push-pull-interval-s", {"type": float, "help": "membership: full table exchange period (default 10)"}),
    (
        "--dead-quorum",
        {
            "type": int,
            "help": "membership: a third party's dead acts at once from this many signed declarers "
            "(default 2; 0: from any member's word, the rule before)",
        },
    ),
    ("--priority", {"type": int, "help": "leader election priority, higher first (default 0; ties: memory, id)"}),
    ("--placement-period-s", {"type": float, "help": "seconds between the leader's placement rounds (default 30)"}),
    (
        "--request-window-mb",
        {
            "type": float,
            "help": "the leader's request window: MiB its records may take (default 16; the nodes holding the most "
            "lose their oldest first; the solver worker keeps a copy of the same size)",
        },
    ),
    (
        "--server-stats-s",
        {
            "type": float,
            "help": "scrape this node's own model servers' statistics this often (their service times, reported "
            "to the leader; default 5; 0: never)",
        },
    ),
    ("--placement-mode", {"choices": ["1", "2", "auto"], "help": "solver mode for placement rounds (default 1)"}),
    ("--placement-method", {"help": "solver method: ipopt (default), milp, least-loaded, ..."}),
    (
        "--placement-objective",
        {
            "choices": ["queue", "queue-p99", "thesis"],
            "help": "queue-p99 (default): request rates and queueing delay, instances shared, a p99 load cap "
            "within at most need + one spare instance per node class; queue: the same without the p99 cap; "
            "thesis: one instance per stream",
        },
    ),
    (
        "--placement-hold-margin",
        {
            "type": float,
            "help": "hysteresis: a new plan must beat the running instances' mean latency by this "
            "share (default 0.1) plus --placement-hold-start-ms per instance it starts, else they are kept",
        },
    ),
    ("--placement-hold-start-ms", {"type": float, "help": "hysteresis: what one instance start costs (default 1)"}),
    (
        "--placement-min-dwell-s",
        {
            "type": float,
            "help": "hysteresis: an instance younger than this is only stopped when a node died, a "
            "model has no instance or a pool is overloaded (default 60)",
        },
    ),
    (
        "--endpoint-rule",
        {
            "choices": ["p2c", "weighted", "lef"],
            "help": "how a request picks among the plan's instances: p2c (default) draws two by the plan's "
            "shares and takes the one with fewer of this agent's requests in flight against its planned "
            "queue; weighted draws one, each share weighed by planned / live queue (the rule before); lef "
            "takes, among every ready instance of the model, the least RTT + (wait for a slot + 1) x the "
            "catalogue's service time, the wait from this agent's requests in flight there (the plan's shares "
            "where no instance has a service time)",
        },
    ),
    (
        "--docker-log-max-mb",
        {"type": float, "help": "docker runtime: a container's log rotates at this size, in MiB (default 10)"},
    ),
    ("--docker-log-files", {"type": int, "help": "docker runtime: log files kept per container (default 3)"}),
    ("--max-body-mb", {"type": float, "help": "largest request body, chunked or not, in MiB (default 8)"}),
    ("--header-timeout-s", {"type": float, "help": "time a client has to send complete headers (default 10)"}),
    ("--body-timeout-s", {"type": float, "help": "time a client has to send a request body (default 30)"}),
    ("--max-concurrency", {"type": int, "help": "connections + requests in flight before 503 (default 256)"}),
    (
        "--body-stall-s",
        {
            "type": float,
            "help": "at the cap, a request body with no byte this long may lose its place "
            "(unset: 1, or body_timeout_s if that is shorter)",
        },
    ),
    (
        "--body-min-rate",
        {
            "type": float,
            "help": "at the cap, a request body slower than this many bytes a second (past the grace) may lose its "
            "place; 10 to 1,000,000 (default 500; where honest clients upload slower, under a quarter of their "
            "rate: see body_take_below_rates)",
        },
    ),
    (
        "--body-rate-grace-s",
        {
            "type": float,
            "help": "how far behind the minimum rate a body may fall (unset: 2, or body_timeout_s if that is shorter)",
        },
    ),
    (
        "--body-take-below-rates",
        {
            "type": float,
            "help": "at a full cap with none waiting, a newcomer takes the place of the slowest body sent under "
            "this many times the minimum rate (default 4)",
        },
    ),
    (
        "--max-clients-per-address",
        {"type": int, "help": "distinct X-Peerserve-Client ids counted per source address (default 8)"},
    ),
    (
        "--metrics-token",
        {
            "help": "bearer token /metrics and /sd/prometheus require (default: none). An empty value counts as "
            "unset (the config's stands)"
        },
    ),
    (
        "--allowed-hosts",
        {
            "help": "comma-separated host names the client API answers to besides its own (IP addresses, "
            "localhost, hostname, HOSTNAME.local, NODE.local); '*': any (the DNS-rebinding check off)"
        },
    ),
    ("--log-format", {"choices": ["text", "json"], "help": "log lines as text (default) or one JSON object each"}),
    (
        "--clock-offset-s",
        {
            "type": float,
            "help": "drills and tests only: this agent reads its wall clock this many seconds off the machine's "
            "(a board whose clock is wrong; peers refuse it past 30 s apart). Default 0",
        },
    ),
]


def register(commands: Any) -> None:
    p = commands.add_parser(
        "agent",
        help="run the node agent",
        description=(
            "Run this node's agent: the HTTP API, the model-server runtime and the reconcile loop. With no "
            "flags it serves on 127.0.0.1:8400 with the built-in catalogue and the process runtime. Every "
            "flag is also a PEERSERVE_* variable (e.g. --node-id <-> PEERSERVE_NODE_ID) and a key of the "
            "--config TOML file; flags win over variables, variables over the file."
        ),
    )
    p.add_argument("--config", help="settings TOML file (keys as the flags, with underscores)")
    for flag, kwargs in FLAGS:
        p.add_argument(flag, default=None, **kwargs)
    p.add_argument("--no-discovery", dest="discovery", action="store_const", const=False, default=None,
                   help="run alone: no mDNS, no membership")  # fmt: skip
    p.add_argument("--api-docs", dest="api_docs", action="store_const", const=True, default=None,
                   help="serve interactive API docs at /docs, /redoc and the schema at /openapi.json")  # fmt: skip
    p.add_argument("--no-metrics", dest="metrics", action="store_const", const=False, default=None,
                   help="no Prometheus metrics: /metrics answers 404 and requests are not timed")  # fmt: skip
    p.add_argument("--no-server-timing", dest="server_timing", action="store_const", const=False, default=None,
                   help="no W3C Server-Timing header on answers, the agent's nor its stand-in model "
                   "servers' (they reveal each request's execution and garbage-collector times)")  # fmt: skip
    p.add_argument("--no-crash-backoff", dest="crash_backoff", action="store_const", const=False, default=None,
                   help="start at once after crashes in a row (default: from the 3rd crash in a row within "
                   "60 s of its start, wait 2, 4, ... 60 s; for test beds that kill agents on purpose)")  # fmt: skip
    p.add_argument("--refuse-v1-requests", dest="peer_v1_requests", action="store_const", const=False, default=None,
                   help="refuse signed peer requests that name no boot id (agents older than boot ids): once every "
                   "member is upgraded, a request captured before this agent's restart can never be replayed to "
                   "it (default: accepted, for a rolling upgrade)")  # fmt: skip
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=cmd_agent)

    t = commands.add_parser(
        "stats-token",
        help="print the bearer token that reads an agent's request log",
        description=(
            "The request log (GET /stats/requests on the client port) names clients, so it needs a reader "
            "token derived from the cluster token (the token itself never crosses the wire). Prints it for "
            "'Authorization: Bearer TOKEN'. The cluster token comes from --cluster-token, "
            "PEERSERVE_CLUSTER_TOKEN or the --config file, as for the agent."
        ),
    )
    t.add_argument("--config", help="the agent's settings TOML file")
    t.add_argument("--cluster-token", default=None, help="the cluster token (default: as the agent finds it)")
    t.set_defaults(handler=cmd_stats_token)

    m = commands.add_parser(
        "model-server",
        help="run the stand-in TF-Serving REST server for one tiny model",
        description=(
            "Serve one of the tiny real models (half_plus_two, half_plus_three, xor_mlp) over TF-Serving's REST API."
        ),
    )
    m.add_argument("--model", required=True, help="half_plus_two, half_plus_three or xor_mlp")
    m.add_argument("--name", default="", help="name to serve it under (default: the model)")
    m.add_argument("--host", default="127.0.0.1")
    m.add_argument("--port", type=int, default=8501)
    m.set_defaults(handler=cmd_model_server)


def cmd_agent(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    import uvicorn  # noqa: F401 - first: an install without it is told so before anything starts (agent_server)

    from agent import crash_backoff, uvicorn_hooks
    from agent.api import create_app
    from agent.errors import ConfigError, StateError
    from agent.logs import LogContext
    from agent.logs import configure as configure_logs
    from agent.node import NodeAgent
    from agent.serving import pauses
    from agent.settings import load_settings, log_at_start
    from peerserve.errors import UsageError

    overrides = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_")) for flag, _ in FLAGS}
    overrides["discovery"] = args.discovery
    overrides["api_docs"] = args.api_docs
    overrides["metrics"] = args.metrics
    overrides["crash_backoff"] = args.crash_backoff
    overrides["server_timing"] = args.server_timing
    try:
        uvicorn_hooks.checked_once()  # before anything starts: the client port's protocol needs them
    except uvicorn_hooks.UvicornHooksError as exc:
        raise UsageError(str(exc)) from exc
    sources: dict[str, str] = {}
    ignored: list[str] = []
    try:
        settings = load_settings(args.config, overrides=overrides, sources=sources, ignored=ignored)
    except ConfigError as exc:
        raise UsageError(exc.with_source()) from exc
    configure_logs(settings.log_format, args.log_level, LogContext(settings.node_id, secrets=secrets_of(settings)))
    logging.getLogger("agent").setLevel(args.log_level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("cyipopt").setLevel(logging.WARNING)
    # before the agent is made: it opens the state database and the node key, and a start that fails there (a
    # damaged file, a broken catalogue) must count as a crash and back off too (review27b F1: it died before this,
    # and systemd restarted it every second forever)
    if settings.crash_backoff:  # systemd < 254 has no growing restart delay
        crash_backoff.before_start(Path(settings.data_dir))
    try:
        agent = NodeAgent(settings)
    except ConfigError as exc:
        raise UsageError(exc.with_source()) from exc
    except StateError as exc:
        raise UsageError(str(exc)) from exc
    configure_logs(settings.log_format, args.log_level, log_context(agent))
    log_at_start(settings, sources, ignored)
    app = create_app(agent)
    app.router.lifespan_context = crash_backoff.marking_clean_exit(app.router.lifespan_context, Path(settings.data_dir))
    pauses.install()
    pauses.freeze_startup_heap()  # full collections then skip the ~70,000 start-up objects (~100 ms stalls)
    agent_server(server_config(app, settings, args.log_level), agent).run()
    return 0


def agent_server(config: Any, agent: Any) -> Any:
    """uvicorn's Server for ``agent`` whose shutdown tells the agent first (``NodeAgent.begin_shutdown``): uvicorn
    then waits up to its graceful timeout (10 s) for every open request, and one waiting for a model started on
    demand (provision_wait_s, 10 s by default), its client perhaps long gone, held the stop for all of it.

    The HTTPS listener (``--https-port``, agent/client_auth.py) begins its stop at the same moment: it stops
    accepting and drains its in-flight requests within the same grace, while this port drains (review19c F6:
    it went on accepting during this port's drain, then was stopped in 50 ms, cutting its in-flight predicts)."""
    import socket

    import uvicorn

    class AgentServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            agent.begin_shutdown()
            https = getattr(getattr(self.config.app, "state", None), "https_listener", None)
            if https is not None:
                https.begin_stop()
            await super().shutdown(sockets)

    return AgentServer(config)


def server_config(app: Any, settings: Any, log_level: str = "info") -> Any:
    """uvicorn's configuration with the HTTP bounds of ``settings`` (agent/http_limits.py).

    Every listener configured for one ``app`` (the client port and its HTTPS port) shares one per-address table:
    an address has one parse budget, one place in the parse turns and one connection cap across them."""
    import uvicorn

    from agent.http_limits import AddressBudgets, limited_protocol
    from agent.uvicorn_hooks import checked_once

    checked_once()  # the protocol hooks uvicorn's private internals: refuse a uvicorn that lacks them
    state = getattr(app, "state", None)
    addresses = getattr(state, "client_address_budgets", None)
    if not isinstance(addresses, AddressBudgets):
        addresses = AddressBudgets()
        if state is not None:
            state.client_address_budgets = addresses

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        log_config=None,
        access_log=log_level == "debug",
        timeout_graceful_shutdown=10,
        http=limited_protocol(
            settings.header_timeout_s,
            settings.max_connections_per_address,
            settings.body_timeout_s,
            address_budgets=addresses,
            body_stall_s=settings.body_stall_s,
            body_min_rate=settings.body_min_rate,
            body_rate_grace_s=settings.body_rate_grace_s,
            body_timeout_s=settings.body_timeout_s,
            take_below_rates=settings.body_take_below_rates,
        ),
        # uvicorn refuses a request when limit_concurrency connections are open, its own among them: at
        # max_concurrency it served one fewer (at 1, none at all)
        limit_concurrency=settings.max_concurrency + 1,
        h11_max_incomplete_event_size=settings.max_header_kb * 1024,
        proxy_headers=False,  # the source address is the peer's: X-Forwarded-For must not fake it
        # the agent serves no WebSockets (review15c F4): with ws="auto" (wsproto installed) an upgrade request
        # hands the connection to uvicorn's WSProtocol past the cap, and its per-address count is never given back
        ws="none",
    )


def log_context(agent: Any) -> Any:
    """What every log line of this agent carries: node, term, the catalogue's model names; its secrets."""
    from agent.logs import LogContext

    def term() -> int:
        lead = agent.leadership
        return max(int(lead.term) if lead is not None else 0, int(agent.desired.term))

    return LogContext(agent.settings.node_id, term, lambda: agent.catalogue.current.models, secrets_of(agent.settings))


def secrets_of(settings: Any) -> list[str]:
    """The settings' secrets, which the log redacts."""
    return [t for t in (settings.cluster_token, settings.metrics_token, settings.client_token) if t]


def cmd_stats_token(args: argparse.Namespace) -> int:
    from agent.errors import ConfigError
    from agent.identity import derive_stats_token
    from agent.settings import load_settings
    from peerserve.cli import UsageError

    try:
        settings = load_settings(args.config, overrides={"cluster_token": args.cluster_token})
    except ConfigError as exc:
        raise UsageError(exc.with_source()) from exc
    if not settings.cluster_token:
        raise UsageError("no cluster token: pass --cluster-token, set PEERSERVE_CLUSTER_TOKEN or use --config")
    print(derive_stats_token(settings.cluster_token))
    return 0


def cmd_model_server(args: argparse.Namespace) -> int:
    from agent.modelserver import main

    return main(["--model", args.model, "--name", args.name, "--host", args.host, "--port", str(args.port)])
