"""argparse types for the counts the ``bench`` and ``eval`` commands take.

A count of 0 or below (a median of no runs, a division by no rounds) used to end a long run with
a traceback or print NaN into the JSON; argparse now refuses it before anything runs, naming the
option: ``argument --repeats: 0 is below 1``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def count(minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` taking an integer from ``minimum`` to ``maximum`` (inclusive)."""

    def parse(text: str) -> int:
        bare = text.strip()
        shown = bare[:40] + ("..." if len(bare) > 40 else "")  # never echoed whole
        try:
            value = int(text, 10)
        except ValueError:
            digits = text.strip().lstrip("+-")
            why = "has too many digits" if digits.isdigit() else "is not a whole number"
            raise argparse.ArgumentTypeError(f"{shown!r} {why}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{shown} is below {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{shown} is above {maximum}")
        return value

    parse.__name__ = "count"  # argparse names the type in its messages
    return parse
