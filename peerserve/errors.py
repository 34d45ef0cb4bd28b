"""Errors shared by every CLI module, and how the CLI prints what others wrote (a leaf: it imports nothing of
peerserve's)."""

from __future__ import annotations


class UsageError(Exception):
    """The user's command line or input is wrong: the CLI prints it and exits with status 2."""


# Characters str.isprintable accepts that a terminal shows as blank or as nothing at all (review27c I3: an agent
# could blank or pad a leader, term, method or status with them): the Hangul fillers (U+115F, U+1160, U+3164,
# U+FFA0), the braille blank (U+2800), the combining grapheme joiner (U+034F), the Khmer inherent vowels (U+17B4,
# U+17B5), and the Mongolian and the standard variation selectors (U+180B-U+180F, U+FE00-U+FE0F and their
# supplement U+E0100-U+E01EF). The other invisible ones (zero-width spaces and joiners, bidi marks, tags: category
# Cf; U+180E is one) and every space but ' ' (Zs) are refused by isprintable itself.
INVISIBLE = frozenset(
    {0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800, 0x034F, 0x17B4, 0x17B5}
    | set(range(0x180B, 0x1810))
    | set(range(0xFE00, 0xFE10))
    | set(range(0xE0100, 0xE01F0))
)


def printable(value: object, limit: int | None = None) -> str:
    """``value`` as text fit for the operator's terminal: every character ``str.isprintable`` refuses (ESC, BEL,
    CR, LF, the C1 controls, bidi overrides) and every one of ``INVISIBLE`` shown as ``?``, as the installer's
    checks print theirs (scripts/install.sh), and with ``limit`` cut to that many characters (``...`` at the end).
    An agent's answers reach the CLI's text output (review27a M1: a ``leader`` of ``ESC]52;c;...`` wrote the
    operator's clipboard, ``ESC[2J`` cleared the screen); any agent found by mDNS can answer, so no string an agent
    wrote is printed raw."""
    text = str(value)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    return "".join(ch if ch.isprintable() and ord(ch) not in INVISIBLE else "?" for ch in text)
