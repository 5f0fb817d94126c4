"""The last hours of one check on one platform, one point a minute, for the status page's charts.

Memory is what bounds it: with 5000 checks (10 000 series) the daemon must stay under
bench/probe's 150 MB. So a minute is 3 bytes in one bytearray: the error ratio in 1/250 steps
(255: no probe that minute), and p50 and p95 as 8-bit logarithmic codes (6% apart from 50 us to
2 minutes: a chart's pixel is coarser). Three hours are 540 bytes, plus the minute being filled
(its latencies, as 4-byte floats, until the minute ends) and the objects' headers: about 0.75 KB
a series, 1.5 KB a check, 7.5 MB for 5000 checks probed every 10 s (tests/test_page.py
measures it).
"""

from __future__ import annotations

import math
import sys
from array import array
from dataclasses import dataclass

from exporter.probing.window import quantile

__all__ = ["KEEP_MINUTES", "MinuteHistory", "Point", "SplitHistory", "SplitPoint"]

KEEP_MINUTES = 180
_LO = 50e-6  # seconds: code 1
_HI = 120.0  # seconds: code 255
_STEP = math.log(_HI / _LO) / 254
_NO_RATIO = 255
_EMPTY = bytes((_NO_RATIO, 0, 0))
_SLOT = len(_EMPTY)


def encode_latency(seconds: float) -> int:
    """A latency as 1..255 on a log scale; 0 for none."""
    if math.isnan(seconds):
        return 0
    if seconds <= _LO:
        return 1
    return min(255, 1 + round(math.log(seconds / _LO) / _STEP))


def decode_latency(code: int) -> float:
    return math.nan if code == 0 else _LO * math.exp((code - 1) * _STEP)


@dataclass(frozen=True, slots=True)
class Point:
    """One minute of one series: its start (unix seconds), error ratio, p50 and p95."""

    at: float
    error_ratio: float  # NaN without probes
    p50: float  # seconds; NaN without a successful probe
    p95: float


class MinuteHistory:
    """Per-minute points of one series over the last `keep` minutes, in a ring of 3-byte slots.

    `add(t, ok, latency)` with the wall-clock time of each probe; a probe older than the minute
    being filled (a clock stepped back) is counted in that minute.
    """

    __slots__ = ("_data", "_failures", "_first", "_keep", "_latencies", "_minute", "_probes")

    def __init__(self, keep: int = KEEP_MINUTES) -> None:
        self._keep = keep
        # slot m % keep holds minute m: error ratio, p50, p95 (allocated once, exactly)
        self._data = bytearray(_SLOT * keep)
        self._first = -1  # the first minute finished (none yet: -1)
        self._minute = -1  # the minute being filled; finished ones are the `keep` before it
        self._probes = 0
        self._failures = 0
        self._latencies = array("f")

    def add(self, t: float, ok: bool, latency: float) -> None:
        minute = int(t // 60)
        if minute > self._minute:
            self._close(minute)
        self._probes += 1
        if ok:
            self._latencies.append(latency)
        else:
            self._failures += 1

    def _close(self, minute: int) -> None:
        """Finish the minute being filled; the minutes until `minute` had no probe."""
        if self._minute >= 0:
            self._put(self._minute, self._encode())
            if self._first < 0:
                self._first = self._minute
            for empty in range(max(self._minute + 1, minute - self._keep), minute):
                self._put(empty, _EMPTY)
        self._minute = minute
        self._probes = self._failures = 0
        self._latencies = array("f")

    def _put(self, minute: int, point: bytes) -> None:
        i = _SLOT * (minute % self._keep)
        self._data[i : i + _SLOT] = point

    def _encode(self) -> bytes:
        lat = sorted(self._latencies)
        ratio = _NO_RATIO if self._probes == 0 else round(250 * self._failures / self._probes)
        return bytes(
            (
                ratio,
                encode_latency(quantile(lat, 0.5)),
                encode_latency(quantile(lat, 0.95)),
            )
        )

    @staticmethod
    def _point(minute: int, raw: bytes | bytearray) -> Point:
        ratio, p50, p95 = raw
        return Point(
            at=minute * 60.0,
            error_ratio=math.nan if ratio == _NO_RATIO else ratio / 250,
            p50=decode_latency(p50),
            p95=decode_latency(p95),
        )

    def points(self, since: float | None = None) -> list[Point]:
        """Finished minutes and the one being filled, oldest first, from `since` on."""
        out = []
        if self._first >= 0:
            first = max(self._first, self._minute - self._keep)
            if since is not None:
                first = max(first, int(since // 60))
            for minute in range(first, self._minute):
                i = _SLOT * (minute % self._keep)
                out.append(self._point(minute, self._data[i : i + _SLOT]))
        if self._minute >= 0 and self._probes:
            out.append(self._point(self._minute, self._encode()))
        return out

    def nbytes(self) -> int:
        """The memory this history holds, headers included (for the estimate in the docstring)."""
        return sys.getsizeof(self) + sys.getsizeof(self._data) + sys.getsizeof(self._latencies)


@dataclass(frozen=True, slots=True)
class SplitPoint:
    """One minute of one record's real traffic: the candidate's measured share and its weight."""

    at: float
    measured: float  # NaN: not enough requests
    weight: float  # NaN: weights not read


class SplitHistory:
    """The candidate's measured share of real requests against its weight, one point a minute."""

    __slots__ = ("_at", "_keep", "_measured", "_weight")

    def __init__(self, keep: int = KEEP_MINUTES) -> None:
        self._keep = keep
        self._at = array("l")
        self._measured = array("f")
        self._weight = array("f")

    def add(self, t: float, measured: float | None, weight: float | None) -> None:
        """The split at `t`: the last one given in a minute stands for it."""
        minute = int(t // 60)
        m = math.nan if measured is None else measured
        w = math.nan if weight is None else weight
        if self._at and self._at[-1] == minute:
            self._measured[-1], self._weight[-1] = m, w
            return
        self._at.append(minute)
        self._measured.append(m)
        self._weight.append(w)
        if len(self._at) > self._keep:
            for column in (self._at, self._measured, self._weight):
                del column[0]

    def points(self) -> list[SplitPoint]:
        return [
            SplitPoint(at=a * 60.0, measured=m, weight=w)
            for a, m, w in zip(self._at, self._measured, self._weight, strict=True)
        ]
