"""JSON numbers that can stand for a time in seconds, as JWT claims and VideoDB's answers hold."""

from __future__ import annotations

import math

# Beyond 2**53 seconds (the year 285 million) a number is no time at all; refusing it keeps
# every later float() and comparison within ordinary numbers (float(10**400) overflows).
MAX_SECONDS = 2**53


def plausible_seconds(value: object) -> float | None:
    """A JSON number of ordinary size as a float; None for anything else (bools, 1e400, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and abs(value) > MAX_SECONDS:
        return None
    number = float(value)
    return number if math.isfinite(number) and abs(number) <= MAX_SECONDS else None
