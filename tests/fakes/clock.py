"""A clock for time-based behaviour: it moves only when the test moves it."""

from __future__ import annotations

START = 1_728_000_000.0  # midnight UTC (epoch seconds): a second, minute or day begins here


class FakeClock:
    """Called like `time.monotonic` or `time.time`; `advance` is the only way it moves."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass."""
        self.now += seconds
