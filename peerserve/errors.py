"""Errors shared by every CLI module (a leaf: it imports nothing of peerserve's)."""

from __future__ import annotations


class UsageError(Exception):
    """The user's command line or input is wrong: the CLI prints it and exits with status 2."""
