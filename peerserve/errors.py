"""Errors shared by every CLI module, and how the CLI prints what others wrote (a leaf: it imports nothing of
peerserve's)."""

from __future__ import annotations


class UsageError(Exception):
    """The user's command line or input is wrong: the CLI prints it and exits with status 2."""


def printable(value: object, limit: int | None = None) -> str:
    """``value`` as text fit for the operator's terminal: every character ``str.isprintable`` refuses (ESC, BEL,
    CR, LF, the C1 controls, bidi overrides) shown as ``?``, as the installer's checks print theirs (scripts/
    install.sh), and with ``limit`` cut to that many characters (``...`` at the end). An agent's answers reach
    the CLI's text output (review27a M1: a ``leader`` of ``ESC]52;c;...`` wrote the operator's clipboard, ``ESC[2J``
    cleared the screen); any agent found by mDNS can answer, so no string an agent wrote is printed raw."""
    text = str(value)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    return "".join(ch if ch.isprintable() else "?" for ch in text)
