"""The split users actually get: each platform's share of real requests against the weights.

Resolvers cache answers for the record's TTL, some clients far longer, and keep-alive
connections stay where they are: after a weight change the measured split follows the weights
with a lag, sometimes of hours. `SplitWatch` measures that lag (from the change to the moment the
measured share is within `tolerance` of the weights) and calls the split diverged when, the TTL
and a margin after the last change, it is still further off than that. Pure: the time and the
counts are passed in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["SplitStatus", "SplitWatch", "shares_of"]


def shares_of(requests: Mapping[str, float], minimum: float = 1.0) -> dict[str, float] | None:
    """Each platform's share of the requests; None while fewer than `minimum` were counted."""
    total = math.fsum(requests.values())
    if total < minimum or total <= 0:
        return None
    return {platform: n / total for platform, n in requests.items()}


@dataclass(frozen=True, slots=True)
class SplitStatus:
    """One record's split now, as /metrics and the page show it.

    measured   platform -> share of the requests over the last minute (None: not enough yet)
    weights    platform -> share by the Route53 weights (None: not read yet)
    changed_at when the weights last changed (None: unchanged since the daemon started)
    lag        seconds from that change until the measured split came within the tolerance;
               while it has not, the time since the change (None: no change seen yet)
    converged  the measured split is within the tolerance now
    diverged   it is not, and the TTL and the margin have passed since the last change
    """

    measured: Mapping[str, float] | None
    weights: Mapping[str, float] | None
    changed_at: float | None
    lag: float | None
    converged: bool
    diverged: bool


class SplitWatch:
    """Follows one record's measured split against its weights over time."""

    def __init__(self, tolerance: float, margin: float) -> None:
        self.tolerance = tolerance
        self.margin = margin
        self._weights: dict[str, float] | None = None
        self._changed_at: float | None = None
        self._started_at: float | None = None  # the first weights seen: a change from nothing
        self._converged_at: float | None = None

    def update(
        self,
        now: float,
        weights: Mapping[str, float] | None,
        measured: Mapping[str, float] | None,
        ttl: float | None,
    ) -> SplitStatus:
        if weights is not None:
            current = {p: round(s, 6) for p, s in weights.items()}
            if self._weights is None:
                self._started_at = now
            elif current != self._weights:
                self._changed_at = now
                self._converged_at = None
            self._weights = current
        distance = _distance(self._weights, measured)
        converged = distance is not None and distance <= self.tolerance
        since = self._changed_at if self._changed_at is not None else self._started_at
        if converged and self._converged_at is None and since is not None:
            self._converged_at = now
        lag = None
        if self._changed_at is not None:
            end = self._converged_at if self._converged_at is not None else now
            lag = max(0.0, end - self._changed_at)
        settle = (ttl if ttl is not None else 60.0) + self.margin
        diverged = (
            distance is not None
            and distance > self.tolerance
            and since is not None
            and now - since >= settle
        )
        return SplitStatus(
            measured=None if measured is None else dict(measured),
            weights=None if self._weights is None else dict(self._weights),
            changed_at=self._changed_at,
            lag=lag,
            converged=converged,
            diverged=diverged,
        )


def _distance(
    weights: Mapping[str, float] | None, measured: Mapping[str, float] | None
) -> float | None:
    """The largest difference of one platform's share between the weights and the requests."""
    if weights is None or measured is None:
        return None
    platforms = set(weights) | set(measured)
    return max(abs(weights.get(p, 0.0) - measured.get(p, 0.0)) for p in platforms)
