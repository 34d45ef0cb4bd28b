"""What the client port's protocol takes from uvicorn's private h11 internals, checked at agent start.

``agent.http_sliced`` and ``agent.http_caps`` subclass uvicorn's ``H11Protocol`` and lean on what is not its API:
the server's ``connections`` and ``tasks`` sets (the cap's give-up rule counts and trims them; ``RecordedTasks``
stands in for ``tasks``), ``_should_upgrade`` (called on each request head just before uvicorn's own
``limit_concurrency`` check: the slowest-body rule and the ``Retry-After`` of uvicorn's 503 run there), the
request cycle's flags and uvicorn's ``FlowControl``. uvicorn may rename or move any of them in a minor release;
the protocol would then fail on the first request, or worse, run with a rule silently gone (a hook never called:
no newcomer ever takes a slow body's place, uvicorn's 503 says nothing of when to come back).

So the agent checks the installed uvicorn at start (``check_uvicorn_hooks``) and refuses to start, naming the
pinned version, if anything is missing. No fallback: the hooks are the client port's defences (header deadlines,
the caps, the parse budgets all live in the same subclass); serving without them is the unbounded surface
docs/security.md closes, and a plain ``H11Protocol`` in their place would be that. The check reads classes and
method sources once (a few ms; their syntax trees, not their text: a comment proves nothing) and builds one
protocol object on a private loop, with no socket. Without sources (a compiled install) only the pinned version,
whose sources were checked, is let through on the signature and instance checks.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import logging
import textwrap
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
PINNED_UVICORN = "0.54.0"  # scripts/constraints.txt: the version the hooks were written and tested against

# method -> its parameters, as the subclasses override or call them
METHODS: dict[str, tuple[str, ...]] = {
    "__init__": ("self", "config", "server_state", "app_state", "_loop"),
    "connection_made": ("self", "transport"),
    "connection_lost": ("self", "exc"),
    "data_received": ("self", "data"),
    "eof_received": ("self",),
    "shutdown": ("self",),
    "timeout_keep_alive_handler": ("self",),
    "handle_events": ("self",),
    "on_response_complete": ("self",),
    "pause_writing": ("self",),
    "resume_writing": ("self",),
    "_should_upgrade": ("self",),
    "_unsupported_upgrade_warning": ("self",),
}
# what handle_events must do, in this order: ask _should_upgrade, then check the cap on both sets, count the task
HANDLE_EVENTS_ORDER = ("self._should_upgrade()", "self.limit_concurrency", "len(self.connections)", "len(self.tasks)")
HANDLE_EVENTS_USES = ("self.tasks.add(", "self.tasks.discard")
CYCLE_FIELDS = ("scope", "message_event", "disconnected", "waiting_for_100_continue", "response_started",
                "response_complete")  # fmt: skip
FLOW_FIELDS = ("read_paused", "write_paused")
FLOW_METHODS = ("pause_reading", "resume_reading", "pause_writing", "resume_writing")


class UvicornHooksError(RuntimeError):
    """The installed uvicorn lacks what the client port's protocol hooks; the message names the pinned version."""


def _source(obj: Any) -> str | None:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return None


def _method_problems(protocol: type) -> list[str]:
    problems = []
    for name, params in METHODS.items():
        method = getattr(protocol, name, None)
        if not callable(method):
            problems.append(f"H11Protocol.{name} is missing")
            continue
        try:
            found = tuple(inspect.signature(method).parameters)
        except (TypeError, ValueError):
            found = ()
        if found != params:
            problems.append(f"H11Protocol.{name} takes ({', '.join(found)}), not ({', '.join(params)})")
    return problems


def _self_attr(node: ast.AST, name: str) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == name
        and isinstance(node.value, ast.Name)
        and (node.value.id == "self")
    )


def _first_at(tree: ast.AST, found: Callable[[ast.AST], bool]) -> tuple[int, int] | None:
    """(line, column) of the first node of ``tree`` that is ``found``, in source order; None if none is."""
    places = [(n.lineno, n.col_offset) for n in ast.walk(tree) if isinstance(n, ast.expr) and found(n)]
    return min(places, default=None)


def _asks_should_upgrade(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and _self_attr(node.func, "_should_upgrade") and not node.args


def _compares_limit(node: ast.AST) -> bool:
    return isinstance(node, ast.Compare) and any(_self_attr(n, "limit_concurrency") for n in ast.walk(node))


def handle_events_problems(source: str) -> list[str]:
    """What ``source`` (``H11Protocol.handle_events``) lacks of what the hooks need, read from its syntax tree: a
    comment or a string holding a piece's text does not count (review16b F5), and the ``self._should_upgrade()``
    call must come before the first comparison on ``self.limit_concurrency`` (uvicorn's 503)."""
    tree = ast.parse(textwrap.dedent(source))
    code = ast.unparse(tree)  # no comments
    asked, capped = _first_at(tree, _asks_should_upgrade), _first_at(tree, _compares_limit)
    problems = [f"H11Protocol.handle_events no longer uses {piece}"
                for piece, there in ((HANDLE_EVENTS_ORDER[0], asked), (HANDLE_EVENTS_ORDER[1], capped))
                if there is None]  # fmt: skip
    problems += [f"H11Protocol.handle_events no longer uses {piece}"
                 for piece in (*HANDLE_EVENTS_ORDER[2:], *HANDLE_EVENTS_USES) if piece not in code]  # fmt: skip
    if asked is not None and capped is not None and capped < asked:
        problems.append("H11Protocol.handle_events checks limit_concurrency before it calls _should_upgrade")
    return problems


def _handle_events_problems(protocol: type) -> list[str] | None:
    """``handle_events_problems`` of ``protocol``'s method; None if its source cannot be read."""
    source = _source(getattr(protocol, "handle_events", None))
    return None if source is None else handle_events_problems(source)


def _instance_problems(protocol: type) -> list[str]:
    """Build one protocol object (no socket) and look at what ``__init__`` set: the server's own sets, shared."""
    import uvicorn
    from uvicorn.server import ServerState

    async def app(scope: Any, receive: Any, send: Any) -> None:  # (never called)
        return None

    config = uvicorn.Config(app, log_config=None, ws="none", lifespan="off", limit_concurrency=1)
    config.load()
    state = ServerState()
    loop = asyncio.new_event_loop()
    try:
        made = protocol(config=config, server_state=state, app_state={}, _loop=loop)
    except Exception as exc:  # (any failure to build it is what the check reports)
        return [f"H11Protocol(config=, server_state=, app_state=, _loop=) fails: {exc!r}"]
    finally:
        loop.close()
    problems = []
    if getattr(made, "connections", None) is not state.connections:
        problems.append("H11Protocol.connections is not the server's connection set")
    if getattr(made, "tasks", None) is not state.tasks:
        problems.append("H11Protocol.tasks is not the server's task set")
    if getattr(made, "server_state", None) is not state:
        problems.append("H11Protocol.server_state is not the server's state")
    if getattr(made, "limit_concurrency", None) != 1:
        problems.append("H11Protocol.limit_concurrency is not the config's")
    for name in ("conn", "cycle", "headers", "flow", "client", "scheme", "transport", "loop", "config"):
        if not hasattr(made, name):
            problems.append(f"H11Protocol.{name} is missing")
    return problems


def assigned_fields(source: str) -> set[str]:
    """The ``self.NAME`` a method's ``source`` assigns (plain, annotated, augmented or in a tuple)."""
    tree = ast.parse(textwrap.dedent(source))
    found = set()
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            for part in ast.walk(target):
                if isinstance(part, ast.Attribute) and isinstance(part.value, ast.Name) and part.value.id == "self":
                    found.add(part.attr)
    return found


def _field_problems(
    cls: type, label: str, fields: tuple[str, ...], methods: tuple[str, ...], unread: list[str]
) -> list[str]:
    """The ``fields`` ``cls.__init__`` does not set (read from its source: building a request cycle takes a live
    connection; ``label.__init__`` added to ``unread`` if it cannot be read) and the ``methods`` it lacks."""
    source = _source(next(vars(k)["__init__"] for k in cls.__mro__ if "__init__" in vars(k)))
    if source is None:
        unread.append(f"{label}.__init__")
    assigned = set() if source is None else assigned_fields(source)
    problems = [f"{label}.{name} is missing" for name in fields if source is not None and name not in assigned]
    return problems + [f"{label}.{name} is missing" for name in methods if not callable(getattr(cls, name, None))]


def missing_hooks(
    protocol: type | None = None, cycle: type | None = None, flow: type | None = None, version: str | None = None
) -> list[str]:
    """What of the hooks the given classes (default: the installed uvicorn's ``H11Protocol``,
    ``RequestResponseCycle``, ``FlowControl``) lack, one line each; empty when all is there.

    The source checks need the methods' ``.py`` sources; a uvicorn installed without them (compiled, sources
    deleted: an image-slimming step) serves fine. If ``version`` (None: the installed uvicorn's) is the pinned one,
    whose sources were checked here, those checks are skipped with one log line and the signature and instance
    checks still run; any other version is refused, saying its sources are missing (review16b F3)."""
    if protocol is None or cycle is None or flow is None:
        from uvicorn.protocols.http.flow_control import FlowControl
        from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

        protocol, cycle, flow = protocol or H11Protocol, cycle or RequestResponseCycle, flow or FlowControl
    problems = _method_problems(protocol)
    unread: list[str] = []
    events = _handle_events_problems(protocol)
    if events is None:
        unread.append("H11Protocol.handle_events")
    problems += events or []
    if not any(p.startswith("H11Protocol.__init__") for p in problems):
        problems += _instance_problems(protocol)
    problems += _field_problems(cycle, "RequestResponseCycle", CYCLE_FIELDS, (), unread)
    problems += _field_problems(flow, "FlowControl", FLOW_FIELDS, FLOW_METHODS, unread)
    if unread:
        if version is None:
            import uvicorn

            version = str(uvicorn.__version__)
        if version == PINNED_UVICORN:
            log.info("uvicorn %s is installed without its sources (%s): the source checks skipped (it is the pinned "
                     "version, whose sources pass them); signatures and the protocol object checked", version,
                     ", ".join(unread))  # fmt: skip
        else:
            problems.append(f"uvicorn {version} was installed without its sources: {', '.join(unread)} cannot be "
                            "read to check them")  # fmt: skip
    return problems


def check_uvicorn_hooks(protocol: type | None = None, cycle: type | None = None, flow: type | None = None) -> None:
    """Raise ``UvicornHooksError`` naming what is missing and the pinned uvicorn if ``missing_hooks`` finds any."""
    problems = missing_hooks(protocol, cycle, flow)
    if problems:
        import uvicorn

        raise UvicornHooksError(
            f"the installed uvicorn {uvicorn.__version__} lacks what the client port's protocol hooks: "
            f"{'; '.join(problems)}. peerserve is tested with uvicorn=={PINNED_UVICORN} (scripts/constraints.txt): "
            "install that version"
        )


@functools.cache
def checked_once() -> None:
    """``check_uvicorn_hooks`` on the installed uvicorn, once a process (server_config calls it each time)."""
    check_uvicorn_hooks()
