"""Real traffic in time buckets: what every source reported, per platform, route group and source.

Sources report counts over spans of their own (a drain per second, Prometheus per query
interval, CloudWatch per minute); the store spreads each report over fixed time buckets by
overlap, so that the two platforms can be compared over the same wall-clock span whatever their
sources. It keeps `keep` seconds of buckets, and cumulative counters for /metrics. Bounded:
platforms and sources come from the config, route groups from the config's names (plus `other`
and `all`), time by `keep`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from exporter.traffic.counts import ALL, CODE_CLASSES, Histogram, Report, Tally, common_bounds

__all__ = ["Counters", "SourceStatus", "Timeline"]

BUCKET_SECONDS = 5.0


@dataclass(slots=True)
class Counters:
    """Cumulative counts of one (platform, source, route group): /metrics' counters.

    `latency` is cumulative too (None until the source tells one): a step's evidence takes
    deltas of it, since a step may last longer than the buckets are kept.
    """

    requests: float = 0.0
    responses: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CODE_CLASSES, 0.0))
    router_errors: float = 0.0
    latency: Histogram | None = None


@dataclass(slots=True)
class SourceStatus:
    """One source's health, as /metrics and the status page show it.

    `covered_until`: the source has reported everything up to this time (unix seconds); the
    platforms are judged over spans both have covered. `error` says why the last attempt failed.
    """

    source: str
    platform: str
    kind: str
    up: bool = False
    last_success: float | None = None
    last_attempt: float | None = None
    covered_until: float | None = None
    error: str | None = None


class Timeline:
    """Reports of every source, spread over fixed buckets of `bucket` seconds."""

    def __init__(self, bucket: float = BUCKET_SECONDS, keep: float = 900.0) -> None:
        if bucket <= 0 or keep < bucket:
            raise ValueError("bucket must be positive and keep at least one bucket")
        self.bucket = bucket
        self.keep = keep
        # (platform, route) -> bucket index -> tally (sources merged)
        self._buckets: dict[tuple[str, str], dict[int, Tally]] = defaultdict(dict)
        self.counters: dict[tuple[str, str, str], Counters] = {}  # (platform, source, route)
        self.sources: dict[str, SourceStatus] = {}
        self._latest = 0  # the highest bucket index seen: trimming runs from it

    def add(self, report: Report, now: float) -> bool:
        """Count a report: in the buckets its span overlaps, and in its counters.

        A report outside [now - keep, now + one bucket] is refused (False): a source's clock,
        or a hostile drain client, must not be able to push the window away.
        """
        if report.end < now - self.keep or report.start > now + self.bucket:
            return False
        tally = report.tally
        key = (report.platform, report.source, report.route)
        counters = self.counters.get(key)
        if counters is None:
            counters = self.counters[key] = Counters()
        counters.requests += tally.requests
        for cls, n in tally.responses.items():
            counters.responses[cls] = counters.responses.get(cls, 0.0) + n
        counters.router_errors += tally.router_errors
        if tally.latency is not None:
            held_latency = counters.latency
            if held_latency is None:
                counters.latency = Histogram(tally.latency.bounds, list(tally.latency.counts))
            else:
                bounds = common_bounds(held_latency.bounds, tally.latency.bounds)
                if bounds != held_latency.bounds:
                    held_latency = counters.latency = held_latency.coarsen(bounds)
                held_latency.merge(tally.latency)

        buckets = self._buckets[(report.platform, report.route)]
        start, end = report.start, max(report.end, report.start)
        first = math.floor(start / self.bucket)
        last = max(first, math.ceil(end / self.bucket) - 1)
        span = end - start
        for index in range(first, last + 1):
            if span > 0:
                lo, hi = index * self.bucket, (index + 1) * self.bucket
                share = (min(hi, end) - max(lo, start)) / span
                if share <= 0:
                    continue
                part = tally if share >= 1 else tally.scaled(share)
            else:
                part = tally
            held = buckets.get(index)
            if held is None:
                held = buckets[index] = Tally()
            held.merge(part)
        if last > self._latest:
            self._latest = last
            self._trim()
        return True

    def series(
        self, platform: str, route: str, start: float, end: float
    ) -> list[tuple[float, Tally]]:
        """(bucket start, tally) of the buckets inside [start, end), oldest first, gaps omitted.

        `route` ALL sums every route group of the platform.
        """
        first = math.ceil(start / self.bucket)
        stop = math.floor(end / self.bucket)  # buckets [first, stop) lie inside the span
        if route == ALL:
            merged: dict[int, Tally] = {}
            for (p, _), buckets in self._buckets.items():
                if p != platform:
                    continue
                for index, tally in buckets.items():
                    if first <= index < stop:
                        held = merged.get(index)
                        if held is None:
                            held = merged[index] = Tally()
                        held.merge(tally)
            return [(i * self.bucket, merged[i]) for i in sorted(merged)]
        buckets = self._buckets.get((platform, route), {})
        return [(i * self.bucket, buckets[i]) for i in sorted(buckets) if first <= i < stop]

    def total(self, platform: str, route: str, start: float, end: float) -> Tally:
        out = Tally()
        for _, tally in self.series(platform, route, start, end):
            out.merge(tally)
        return out

    def routes(self, platform: str | None = None) -> set[str]:
        """The route groups some source reported (for `platform`, or any)."""
        return {r for (p, r) in self._buckets if platform is None or p == platform}

    def covered_until(self, platform: str) -> float | None:
        """Everything up to this time is in, from every source of `platform` that is up."""
        marks = [
            s.covered_until
            for s in self.sources.values()
            if s.platform == platform and s.up and s.covered_until is not None
        ]
        return min(marks) if marks else None

    def status(self, source: str, platform: str, kind: str) -> SourceStatus:
        """The status record of a source, made on first use (a source updates it in place)."""
        status = self.sources.get(source)
        if status is None:
            status = self.sources[source] = SourceStatus(
                source=source, platform=platform, kind=kind
            )
        return status

    def forget_sources(self, keep: Iterable[str]) -> None:
        """Sources gone from the configuration leave the metrics and the page."""
        kept = set(keep)
        for name in [n for n in self.sources if n not in kept]:
            del self.sources[name]
        for key in [k for k in self.counters if k[1] not in kept]:
            del self.counters[key]

    def _trim(self) -> None:
        oldest = self._latest - math.ceil(self.keep / self.bucket)
        for buckets in self._buckets.values():
            for index in [i for i in buckets if i < oldest]:
                del buckets[index]
