"""The agent's log lines: every record carries node, term and (when it is about one) model; text or JSON.

    configure(fmt, level, context)   install one handler on the root logger (uvicorn's loggers propagate)
    LogContext                       node id, a term reader, the catalogue's names, the secrets to redact

A record is about a model when it was logged with ``extra={"model": name}`` or when one of its
arguments is a catalogue model name. Secrets (the cluster token, the metrics token) are replaced by
``[redacted]`` in the rendered message, so no log line carries them whatever a caller passes.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TextIO

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [node=%(node)s term=%(term)s%(model_part)s] %(message)s"


@dataclass
class LogContext:
    """Where the log filter reads node, term, model names and secrets from."""

    node: str = "-"
    term: Callable[[], int | None] = lambda: None
    models: Callable[[], Collection[str]] = lambda: ()
    secrets: list[str] = field(default_factory=list)
    redact: bool = True


class ContextFilter(logging.Filter):
    """Adds ``node``, ``term`` and ``model`` to each record and redacts secrets from its message."""

    def __init__(self, context: LogContext) -> None:
        super().__init__()
        self.context = context

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = self.context
        record.node = ctx.node
        try:
            record.term = ctx.term()
        except Exception:  # a closed store at shutdown must not lose the line
            record.term = None
        model = getattr(record, "model", None)
        if model is None:
            model = _model_in_args(record.args, ctx)
        record.model = model
        record.model_part = f" model={model}" if model else ""
        if ctx.redact and ctx.secrets:
            message = record.getMessage()
            for secret in ctx.secrets:
                message = message.replace(secret, REDACTED)
            record.msg, record.args = message, None
        return True


def _model_in_args(args: Any, ctx: LogContext) -> str | None:
    if not isinstance(args, tuple) or not args:
        return None
    try:
        names = ctx.models()
    except Exception:
        return None
    for arg in args:
        if isinstance(arg, str) and arg in names:
            return arg
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, node, term, model, msg (+ exc when there is one)."""

    def __init__(self, context: LogContext) -> None:
        super().__init__()
        self.context = context

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": getattr(record, "node", None),
            "term": getattr(record, "term", None),
            "model": getattr(record, "model", None),
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        text = json.dumps(out, default=str)
        return _redact(text, self.context)


class TextFormatter(logging.Formatter):
    def __init__(self, context: LogContext) -> None:
        super().__init__(TEXT_FORMAT)
        self.context = context

    def format(self, record: logging.LogRecord) -> str:
        for name, default in (("node", "-"), ("term", None), ("model_part", "")):
            if not hasattr(record, name):
                setattr(record, name, default)
        return _redact(super().format(record), self.context)


def _redact(text: str, ctx: LogContext) -> str:
    """Tracebacks are rendered by the formatter, after the filter: redact the whole line too."""
    if ctx.redact:
        for secret in ctx.secrets:
            text = text.replace(secret, REDACTED)
    return text


def configure(fmt: str, level: str, context: LogContext, stream: TextIO | None = None) -> logging.Handler:
    """Replace the root logger's handlers with one that writes ``fmt`` (text|json) lines to ``stream``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter(context))
    handler.setFormatter(JsonFormatter(context) if fmt == "json" else TextFormatter(context))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    return handler
