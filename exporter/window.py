"""Sliding windows of probe results per check and platform, and the figures read from them."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

QUANTILES = (0.5, 0.9, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class Sample:
    """One probe as the judge sees it.

    `tick` numbers the check's schedule: the baseline's and the candidate's probes with the
    same tick were started at the same moment, so they can be compared pairwise.
    """

    t: float
    tick: int
    ok: bool
    latency: float


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Quantile with linear interpolation between closest ranks (numpy's default method)."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    pos = (n - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


@dataclass(frozen=True, slots=True)
class WindowStats:
    samples: int
    failures: int
    quantiles: dict[float, float]  # NaN when no successful probe is in the window

    @property
    def error_ratio(self) -> float:
        return self.failures / self.samples if self.samples else math.nan


class Window:
    """The probe results of one check on one platform over the last `span` seconds."""

    __slots__ = ("_samples", "span")

    def __init__(self, span: float, samples: Iterable[Sample] = ()) -> None:
        self.span = span
        self._samples: deque[Sample] = deque(samples)

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)
        self.trim(sample.t)

    def trim(self, now: float) -> None:
        cutoff = now - self.span
        samples = self._samples
        while samples and samples[0].t < cutoff:
            samples.popleft()

    def samples(self) -> tuple[Sample, ...]:
        return tuple(self._samples)

    def __len__(self) -> int:
        return len(self._samples)

    def stats(self) -> WindowStats:
        latencies = sorted(s.latency for s in self._samples if s.ok)
        failures = len(self._samples) - len(latencies)
        return WindowStats(
            samples=len(self._samples),
            failures=failures,
            quantiles={q: quantile(latencies, q) for q in QUANTILES},
        )
