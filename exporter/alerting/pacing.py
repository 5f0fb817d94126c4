"""When the next Slack attempt may start: spacing between sends, and backoff after failures.

Pure: the caller passes the (loop) time and does the waiting, so tests use a synthetic clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Pacer"]


class Pacer:
    """One message per `min_interval` (Slack allows about one per second per channel; one loop
    sends everything in order, so spacing every attempt keeps each channel under it), and a
    jittered exponential backoff between `min_backoff` and `max_backoff` after failures."""

    def __init__(
        self,
        *,
        min_interval: float = 1.0,
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.min_interval = min_interval
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._uniform = uniform
        self.streak = 0  # failed attempts since the last success
        self._next = 0.0  # time before which no attempt starts

    def delay(self, now: float) -> float:
        """Seconds to wait before the next attempt (zero or less: go now)."""
        return self._next - now

    def attempted(self, now: float) -> None:
        """An attempt ended at `now`, delivered or not: the next one waits min_interval."""
        self._next = now + self.min_interval

    def failed(self, retry_after: float | None) -> float:
        """Count a failure; the seconds to wait before trying again."""
        self.streak += 1
        if retry_after is not None:
            # Slack said when: earlier only earns another 429
            return retry_after * self._uniform(1.0, 1.1) or self.min_backoff
        ceiling = min(self.max_backoff, self.min_backoff * 2 ** min(self.streak - 1, 30))
        return self._uniform(ceiling / 2, ceiling)

    def succeeded(self) -> int:
        """A delivery went through: the failures before it (0 if none), and the count restarts."""
        streak, self.streak = self.streak, 0
        return streak
