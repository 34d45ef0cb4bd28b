"""`peerserve endpoints`, `peerserve predict`, `peerserve cluster`: the client side of the CLI."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

COMMON_HELP = (
    "Without --agent the agents are found by mDNS (PEERSERVE_AGENT=URL[,URL] sets them too). "
    "PEERSERVE_CLIENT_TOKEN goes only to agents named so (and the members they list), not to ones found by "
    "mDNS, which cannot be authenticated, unless --trust-discovered. "
    "Exit codes: 0 ok, 1 failure (cluster unreachable, no capacity, ...), 2 usage (unknown model, bad input)."
)


SHORT = 64  # characters of an agent's string the text output shows where client/answers.py does not bound it


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agent", action="append", metavar="URL", help="agent API URL (repeatable); default: mDNS")
    p.add_argument("--interface", action="append", metavar="ADDR", help="address to browse mDNS on (default all)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per read (default 5; a request has 60 s in all)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument(
        "--trust-discovered",
        action="store_true",
        default=None,
        help="send PEERSERVE_CLIENT_TOKEN to agents found by mDNS too, over plain HTTP (a lab LAN you trust; "
        "PEERSERVE_TRUST_DISCOVERED=1 does the same)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def register(commands: Any) -> None:
    about = (
        "Print the best endpoint (TF-Serving or Triton server) of MODEL for this client, or of every deployed model. "
    )
    e = commands.add_parser("endpoints", help="where models are best served", description=about + COMMON_HELP)
    e.add_argument("model", nargs="?", help="one model (default: every deployed model)")
    _common(e)
    e.set_defaults(handler=cmd_endpoints)

    p = commands.add_parser("predict", help="run an inference", description=(
        "Send an inference to the best endpoint of MODEL (retrying once elsewhere if it is dead): a TF-Serving "
        "predict, or with --protocol v2 an Open Inference Protocol infer (Triton). " + COMMON_HELP))  # fmt: skip
    p.add_argument("model")
    p.add_argument(
        "--data",
        required=True,
        help='JSON: a list of instances, or {"instances": ...} / {"inputs": ...}; '
        'with --protocol v2 the inputs [{"name", "shape", "datatype", "data"}, ...] or {"inputs": [...]}',
    )
    p.add_argument(
        "--protocol",
        choices=["tfserving", "v2"],
        default="tfserving",
        help="tfserving (REST predict, default) or v2 (Open Inference Protocol, for Triton models)",
    )
    p.add_argument("--via-proxy", action="store_true", help="send it through an agent's proxy")
    # defaults: the library's (client/answers.py; not imported here: `peerserve solve` would import httpx)
    p.add_argument("--max-answer-mb", type=_positive, metavar="MiB",
                   help="largest answer read (default 64); past it, or past --max-answer-values, the model's "
                   "answer is refused, not asked for elsewhere (exit 1)")  # fmt: skip
    p.add_argument("--max-answer-values", type=_positive, metavar="N",
                   help="most JSON values in an answer, a list, object or string counting as 3-5 "
                   "(default 8,388,608)")  # fmt: skip
    _common(p)
    p.set_defaults(handler=cmd_predict)

    c = commands.add_parser("cluster", help="members, leader, term, models, memory, last placement",
                            description="Show the cluster as an agent sees it. " + COMMON_HELP)  # fmt: skip
    _common(c)
    c.set_defaults(handler=cmd_cluster)


def _client(args: argparse.Namespace) -> Any:
    from client import Client
    from client.answers import ANSWER_LIMIT, ANSWER_VALUES

    mb, values = getattr(args, "max_answer_mb", None), getattr(args, "max_answer_values", None)
    return Client(
        agents=args.agent,
        timeout=args.timeout,
        discover_interfaces=args.interface,
        trust_discovered=args.trust_discovered,
        max_answer_bytes=ANSWER_LIMIT if mb is None else mb << 20,
        max_answer_values=ANSWER_VALUES if values is None else values,
    )


def _run(args: argparse.Namespace, body: Any) -> int:
    from client import (
        AnswerTooLarge,
        ClusterUnreachableError,
        NoCapacityError,
        NotReadyError,
        RequestError,
        UnknownModelError,
    )
    from peerserve.errors import UsageError, printable

    try:
        with _client(args) as client:
            return int(body(client))
    except UnknownModelError as exc:
        raise UsageError(str(exc)) from exc
    except RequestError as exc:  # its message quotes the agent's or server's answer (200 characters): printable
        if 400 <= exc.status < 500:
            raise UsageError(str(exc)) from exc
        print(f"peerserve: error: {printable(exc)}", file=sys.stderr)
        return 1
    except (ClusterUnreachableError, NoCapacityError, NotReadyError, AnswerTooLarge) as exc:
        print(f"peerserve: error: {printable(exc)}", file=sys.stderr)
        return 1


def cmd_endpoints(args: argparse.Namespace) -> int:
    from peerserve.errors import printable as p

    def body(client: Any) -> int:
        found = [client.endpoint(args.model)] if args.model else client.endpoints()
        rows = [{"model": e.model, "node": e.node, "url": e.url, "why": dict(e.why)} for e in found]
        if args.json:
            print(json.dumps(rows[0] if args.model else rows, indent=2))
            return 0
        if not rows:
            print("no model is deployed")
        for r in rows:
            w = r["why"]
            est = f"est {w.get('estimated_ms', 0):.2f} ms"
            source = p(w.get("rtt_source", ""), SHORT)
            parts = f"(rtt {w.get('rtt_ms', 0):.2f} {source}, exec {w.get('exec_ms', 0):.2f})"
            print(f"{p(r['model']):<20} {p(r['node']):<16} {p(r['url']):<28} {est} {parts}")
        return 0

    return _run(args, body)


def cmd_predict(args: argparse.Namespace) -> int:
    from peerserve.errors import UsageError

    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--data is not JSON: {exc}") from exc
    if args.protocol == "v2":
        inputs = data.get("inputs") if isinstance(data, dict) else data
        if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
            raise UsageError('--data for v2: [{"name": ..., "shape": [...], "datatype": ..., "data": [...]}, ...]')
    elif isinstance(data, dict) and ("instances" in data or "inputs" in data):
        kwargs = {"instances": data.get("instances"), "inputs": data.get("inputs")}
        # review27a L4: else client/ops.py's ValueError, a traceback and exit 1
        if (kwargs["instances"] is None) == (kwargs["inputs"] is None):
            raise UsageError('--data: give exactly one of "instances" and "inputs", not null')
    else:
        kwargs = {"instances": data, "inputs": None}

    def body(client: Any) -> int:
        if args.protocol == "v2":
            result = client.infer(args.model, inputs, via_proxy=args.via_proxy)
        else:
            result = client.predict(args.model, via_proxy=args.via_proxy, **kwargs)
        print(json.dumps(result, indent=2 if args.json else None))
        return 0

    return _run(args, body)


def cmd_cluster(args: argparse.Namespace) -> int:
    from peerserve.errors import printable as s

    def body(client: Any) -> int:
        data = client.cluster()
        if args.json:  # json.dumps escapes every control character
            print(json.dumps(data, indent=2))
            return 0
        # every string an agent wrote goes through printable (review27a M1), those client/answers.py does not
        # bound cut to SHORT: the answer is any agent's, found by mDNS
        leader, term, asked = (s(data.get(k), SHORT) for k in ("leader", "term", "node_id"))
        print(f"leader {leader if data.get('leader') else '-'}  term {term}  (asked {asked})")
        print(f"{'node':<16} {'status':<8} {'free MB':>9} {'GPU %':>6}  models")
        for m in data.get("members", []):
            gpu = "-" if m.get("gpu_load") is None else f"{m['gpu_load']:.0f}"
            print(f"{s(m['node_id']):<16} {s(m['status']):<8} {m.get('mem_available_mb', 0):>9.0f} {gpu:>6}  "
                  f"{s(', '.join(m.get('models', [])) or '-')}")  # fmt: skip
        if data.get("members_dropped"):
            print(f"({data['members_dropped']} more members left out: their URL or model names are not usable)")
        p = data.get("last_placement")
        if p:
            keys = ("term", "method", "mode", "requests")  # null: none, or of a shape client/answers.py refuses
            shown = {k: "-" if p.get(k) is None else s(p.get(k), SHORT) for k in keys}
            print(f"last placement: term {shown['term']} {shown['method']} mode {shown['mode']} "
                  f"objective {p.get('objective_ms') or 0:.1f} ms solve {p.get('solve_ms') or 0:.1f} ms, "
                  f"{len(p.get('actions') or [])} actions, {shown['requests']} requests")  # fmt: skip
        return 0

    return _run(args, body)
