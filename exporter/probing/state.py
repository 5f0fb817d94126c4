"""What the daemon knows now: per check and platform, the last probe, the window, the counters."""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field

from exporter.probing.history import MinuteHistory
from exporter.probing.probe import PHASES, ProbeResult, ProbeSpec
from exporter.probing.window import Window, WindowStats

# Upper bounds of cutover_probe_duration_seconds: fine where health checks live (5 ms - 1 s),
# coarse beyond, so that p95/p99 recording rules stay meaningful without hundreds of series.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


_SLOTS = len(DURATION_BUCKETS) + 1


@dataclass(slots=True)
class Series:
    """One check on one platform: everything /metrics and the status page show about it."""

    check: str
    platform: str
    role: str
    spec: ProbeSpec
    window: Window
    last: ProbeResult | None = None
    probes_total: int = 0
    # failed probes by reason, a reason only once it happened: most series never fail, and an
    # empty dict is 64 bytes where one with every reason is 360 (times 10 000 series)
    failures: dict[str, int] = field(default_factory=dict)
    # non-cumulative bucket counts; the last slot is +Inf. An array: not a container to the GC
    buckets: array[int] = field(default_factory=lambda: array("q", bytes(8 * _SLOTS)))
    duration_sum: float = 0.0
    tls_expiry: float | None = None
    consecutive_failures: int = 0
    # one point a minute over the last hours, for the page's charts (fed with wall-clock time)
    history: MinuteHistory = field(default_factory=MinuteHistory, repr=False, compare=False)
    # the label pairs, escaped once: /metrics writes them on ~45 lines per series and scrape
    label_parts: tuple[str, str, str] = field(init=False, repr=False, compare=False)
    labels: str = field(init=False, repr=False, compare=False)  # `check="…",platform="…",role="…"`

    def __post_init__(self) -> None:
        # the platform's and the role's pairs are the same in every check: one string each
        self.label_parts = (
            f'check="{label_value(self.check)}"',
            _shared_pair("platform", self.platform),
            _shared_pair("role", self.role),
        )
        self.labels = ",".join(self.label_parts)

    def record(self, result: ProbeResult, t: float, tick: int) -> None:
        self.last = result
        self.probes_total += 1
        if result.success:
            self.consecutive_failures = 0
            self.buckets[bisect_left(DURATION_BUCKETS, result.duration)] += 1
            self.duration_sum += result.duration
        else:
            self.consecutive_failures += 1
            reason = result.reason or "error"
            self.failures[reason] = self.failures.get(reason, 0) + 1
        if result.tls_expiry is not None:
            # the certificate served by the last handshake (as blackbox_exporter's "earliest
            # expiry" of its last probe): a renewal shows at once; a failed probe keeps the last
            self.tls_expiry = result.tls_expiry
        self.window.append(t, tick, result.success, result.duration)

    def phases(self) -> dict[str, float]:
        last = self.last
        if last is None:
            return dict.fromkeys(PHASES, 0.0)
        return {phase: getattr(last, phase) for phase in PHASES}

    def stats(self, now: float) -> WindowStats:
        self.window.trim(now)
        return self.window.stats()


@dataclass(slots=True)
class CheckState:
    """One check: its two series and the tick counter that pairs their probes."""

    name: str
    series: dict[str, Series]  # platform name -> series
    next_tick: int = 0
    label: str = field(init=False, repr=False, compare=False)  # `check="…"`, escaped once

    def __post_init__(self) -> None:
        self.label = f'check="{label_value(self.name)}"'

    @property
    def probed(self) -> bool:
        return all(s.last is not None for s in self.series.values())


_PAIRS: dict[tuple[str, str], str] = {}


def _shared_pair(name: str, value: str) -> str:
    """`name="value"`, one string for all the series that have it (platforms and roles come
    from the configuration: a handful, however many checks)."""
    pair = _PAIRS.get((name, value))
    if pair is None:
        pair = _PAIRS[(name, value)] = f'{name}="{label_value(value)}"'
    return pair


def label_value(value: str) -> str:
    """A label value escaped for Prometheus' text formats (both escape the same three)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def ratio(candidate: float, baseline: float) -> float:
    if math.isnan(candidate) or math.isnan(baseline) or baseline <= 0:
        return math.nan
    return candidate / baseline


# Both sides failing this much is an outage (of a shared dependency, the network, the checker),
# not something the candidate did: the page says so instead of judging it.
OUTAGE_ERROR_RATIO = 0.5


def both_failing(baseline: Series, candidate: Series, now: float) -> bool:
    """Both platforms fail their recent probes: each one's last probe failed, or each one's
    window has an error ratio of OUTAGE_ERROR_RATIO or more."""
    lasts = (baseline.last, candidate.last)
    if all(last is not None and not last.success for last in lasts):
        return True
    ratios = []
    for s in (baseline, candidate):
        s.window.trim(now)
        ratios.append(s.window.error_ratio())
    return all(not math.isnan(r) and r >= OUTAGE_ERROR_RATIO for r in ratios)
