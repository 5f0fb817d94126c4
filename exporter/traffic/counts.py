"""Real traffic as counts: what every source reports, per platform, route group and time span.

Sources differ in what they can tell (a Heroku drain sees every request, Prometheus and
CloudWatch sums over an interval, CloudWatch latency only as percentiles), so they all speak the
smallest common language: a `Tally` of requests, responses by status class, failures the
platform's router or load balancer produced itself, and a latency `Histogram`, for one platform
and route group over one time span (`Report`). Counts are floats: Prometheus' `increase()`
extrapolates.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "ALL",
    "CODE_CLASSES",
    "LATENCY_BOUNDS",
    "OTHER",
    "Histogram",
    "Report",
    "Tally",
    "code_class",
    "common_bounds",
]

CODE_CLASSES = ("2xx", "3xx", "4xx", "5xx")
ALL = "all"  # the route group of a platform as a whole
OTHER = "other"  # the route group of paths no configured group matches

# Latency bucket bounds (seconds) for sources that see single requests (the drain): fine where
# APIs answer, coarse beyond, and a superset of client_python's and ingress-nginx's default
# buckets, so that a comparison with a Prometheus histogram keeps that histogram's resolution.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075,
    0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0,
    4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0,
)  # fmt: skip


def code_class(status: int) -> str | None:
    """ "2xx" ... "5xx" for a status code; None for anything else (1xx, garbage)."""
    return CODE_CLASSES[status // 100 - 2] if 200 <= status <= 599 else None


@dataclass(slots=True)
class Histogram:
    """Latency counts per bucket: `counts[i]` for (bounds[i-1], bounds[i]], the last for +Inf.

    Not cumulative (unlike Prometheus' `le` series). Histograms with different bounds are
    compared at the bounds both have (`coarsen` to `common_bounds`): a finer layout cannot be
    recovered from a coarser one.
    """

    bounds: tuple[float, ...]
    counts: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0.0] * (len(self.bounds) + 1)
        elif len(self.counts) != len(self.bounds) + 1:
            raise ValueError("a histogram needs one count per bound, and one for +Inf")

    @classmethod
    def from_cumulative(cls, buckets: Iterable[tuple[float, float]]) -> Histogram:
        """From Prometheus-style (le, cumulative count) pairs, +Inf included (math.inf).

        Decreasing cumulative counts (counter resets seen by `increase`, rounding) are clipped.
        """
        pairs = sorted(buckets)
        bounds = tuple(le for le, _ in pairs if math.isfinite(le))
        counts: list[float] = []
        previous = 0.0
        for _, cumulative in pairs:
            value = max(float(cumulative), previous)
            counts.append(value - previous)
            previous = value
        if not pairs or math.isfinite(pairs[-1][0]):
            counts.append(0.0)  # no +Inf bucket given: nothing known above the last bound
        return cls(bounds, counts)

    @property
    def total(self) -> float:
        return math.fsum(self.counts)

    def add(self, seconds: float, n: float = 1.0) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += n

    def merge(self, other: Histogram) -> None:
        """Add `other`'s counts; its bounds must be these, or finer (it is coarsened first)."""
        if other.bounds != self.bounds:
            other = other.coarsen(self.bounds)
        for i, n in enumerate(other.counts):
            self.counts[i] += n

    def coarsen(self, bounds: Sequence[float]) -> Histogram:
        """The same counts over `bounds`, which must be a subset of these bounds."""
        target = tuple(bounds)
        if not all(_inside(t, self.bounds) for t in target):
            raise ValueError(f"{target} is not a subset of the bounds {self.bounds}")
        out = Histogram(target)
        for i, n in enumerate(self.counts):
            upper = self.bounds[i] if i < len(self.bounds) else math.inf
            # bucket (b[i-1], b[i]] lies inside the target bucket ending at the first bound
            # >= b[i]; the tolerance lets 0.1 match 0.1 whatever arithmetic made either
            out.counts[bisect_left(target, upper * (1 - 1e-9))] += n
        return out

    def scaled(self, factor: float) -> Histogram:
        return Histogram(self.bounds, [n * factor for n in self.counts])

    def quantile(self, q: float) -> float:
        """The q-quantile, linear within its bucket (as Prometheus' histogram_quantile does).

        NaN when empty; the highest finite bound when it falls into +Inf.
        """
        total = self.total
        if total <= 0:
            return math.nan
        rank = q * total
        seen = 0.0
        for i, n in enumerate(self.counts):
            if n > 0 and seen + n >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1] if self.bounds else math.nan
                lower = self.bounds[i - 1] if i > 0 else 0.0
                return lower + (self.bounds[i] - lower) * (rank - seen) / n
            seen += n
        return self.bounds[-1] if self.bounds else math.nan

    def above(self, seconds: float) -> float:
        """Requests certainly slower than `seconds`: the buckets whose lower bound is >= it."""
        if seconds <= 0:
            return self.total
        return math.fsum(self.counts[bisect_left(self.bounds, seconds) + 1 :])


def _inside(value: float, bounds: Sequence[float]) -> bool:
    return any(math.isclose(value, b, rel_tol=1e-9) for b in bounds)


def common_bounds(a: Sequence[float], b: Sequence[float]) -> tuple[float, ...]:
    """The bounds two histograms share: the finest layout both can be coarsened to."""
    return tuple(x for x in a if _inside(x, b))


@dataclass(slots=True)
class Tally:
    """Requests of one platform and route group over some span.

    `responses` by class holds every request with a status, router failures included (they
    are 5xx responses users got); `router_errors` counts those the platform's router or load
    balancer produced itself (Heroku H-codes, an ALB's own 5xx). `latency` is None when the
    source cannot tell it.
    """

    requests: float = 0.0
    responses: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CODE_CLASSES, 0.0))
    router_errors: float = 0.0
    latency: Histogram | None = None

    @property
    def errors(self) -> float:
        """Failed requests: 5xx responses (router failures among them)."""
        return self.responses.get("5xx", 0.0)

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests > 0 else math.nan

    def merge(self, other: Tally) -> None:
        self.requests += other.requests
        for cls, n in other.responses.items():
            self.responses[cls] = self.responses.get(cls, 0.0) + n
        self.router_errors += other.router_errors
        if other.latency is not None:
            if self.latency is None:
                self.latency = Histogram(other.latency.bounds, list(other.latency.counts))
            else:
                bounds = common_bounds(self.latency.bounds, other.latency.bounds)
                if bounds != self.latency.bounds:
                    self.latency = self.latency.coarsen(bounds)
                self.latency.merge(other.latency)

    def scaled(self, factor: float) -> Tally:
        return Tally(
            requests=self.requests * factor,
            responses={k: v * factor for k, v in self.responses.items()},
            router_errors=self.router_errors * factor,
            latency=None if self.latency is None else self.latency.scaled(factor),
        )


@dataclass(frozen=True, slots=True)
class Report:
    """What a source saw of one platform and route group over [start, end) (unix seconds)."""

    source: str
    platform: str
    route: str
    start: float
    end: float
    tally: Tally
