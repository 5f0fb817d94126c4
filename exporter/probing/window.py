"""Sliding windows of probe results per check and platform, and the figures read from them."""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Any, NamedTuple

QUANTILES = (0.5, 0.9, 0.95, 0.99)


class Sample(NamedTuple):
    """One probe as the judge sees it.

    `tick` numbers the check's schedule: the baseline's and the candidate's probes with the
    same tick were started at the same moment, so they can be compared pairwise. Windows store
    the columns; a Sample is made only when the judge reads them.
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


_new_tuple: Any = tuple.__new__


class Window:
    """The probe results of one check on one platform over the last `span` seconds.

    Stored as columns (arrays of machine values from `_head` on), not as one object per probe:
    with thousands of checks, 25 bytes a sample instead of ~120, and nothing for the garbage
    collector to walk (bench/probe measures both).
    """

    __slots__ = ("_head", "_latency", "_ok", "_t", "_tick", "span")

    def __init__(self, span: float, samples: Iterable[Sample] = ()) -> None:
        self.span = span
        self._t = array("d")
        self._tick = array("q")
        self._ok = array("b")
        self._latency = array("d")
        self._head = 0
        for sample in samples:
            self.append(*sample)

    def add(self, sample: Sample) -> None:
        self.append(*sample)

    def append(self, t: float, tick: int, ok: bool, latency: float) -> None:
        self._t.append(t)
        self._tick.append(tick)
        self._ok.append(ok)
        self._latency.append(latency)
        self.trim(t)

    def trim(self, now: float) -> None:
        cutoff = now - self.span
        times, head = self._t, self._head
        end = len(times)
        while head < end and times[head] < cutoff:
            head += 1
        if head >= 4 and head * 4 > end:
            # drop the expired prefix once it is a quarter of the arrays: amortised O(1) per
            # sample (a trim moves at most three kept samples per dropped one), and the arrays
            # hold at most a third more than the window (dropping at half, they held up to
            # twice as much: megabytes over 10 000 windows)
            for column in (self._t, self._tick, self._ok, self._latency):
                del column[:head]
            head = 0
        self._head = head

    def samples(self) -> tuple[Sample, ...]:
        h = self._head
        rows = zip(
            self._t[h:], self._tick[h:], map(bool, self._ok[h:]), self._latency[h:], strict=True
        )
        # tuple.__new__ straight from C: the judge reads every window after every tick
        return tuple(map(_new_tuple, repeat(Sample), rows))

    def __len__(self) -> int:
        return len(self._t) - self._head

    def error_ratio(self) -> float:
        """Failures over samples (NaN when empty), without the quantiles' sort: for every tick."""
        h = self._head
        samples = len(self._t) - h
        return (samples - sum(self._ok[h:])) / samples if samples else math.nan

    def stats(self) -> WindowStats:
        h = self._head
        latencies = sorted(compress(self._latency[h:], self._ok[h:]))
        samples = len(self._t) - h
        return WindowStats(
            samples=samples,
            failures=samples - len(latencies),
            quantiles={q: quantile(latencies, q) for q in QUANTILES},
        )
