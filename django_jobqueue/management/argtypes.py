"""``type=`` validators shared by the package's management commands: each turns a bad value
into argparse's own error (the command's usage and the reason), before anything runs."""

from __future__ import annotations

import argparse


def positive(value: str) -> int:
    """A whole number of at least 1 (``--processes``, ``--max-jobs``, ``--max-memory``,
    ``--limit``)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {number}")
    return number
