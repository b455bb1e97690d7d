"""Which JSON numbers can stand for a time: ordinary ones; never bools, huge or non-finite."""

from __future__ import annotations

import pytest

from app.timestamps import MAX_SECONDS, plausible_seconds


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_800_000_000, 1_800_000_000.0),
        (1_800_000_000.5, 1_800_000_000.5),
        (0, 0.0),
        (-60, -60.0),
        (MAX_SECONDS, float(MAX_SECONDS)),
    ],
)
def test_ordinary_numbers_are_times(value: object, expected: float) -> None:
    assert plausible_seconds(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        *(True, False, None, "1800000000", [1]),
        *(MAX_SECONDS + 1, 10**400, -(10**400)),
        *(float("inf"), float("-inf"), float("nan"), 1e300),
    ],
)
def test_anything_else_is_no_time(value: object) -> None:
    assert plausible_seconds(value) is None
