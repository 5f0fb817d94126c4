"""A step's evidence: what each side did over a whole Route53 step, per check or route group.

Unlike the judge's sliding windows, evidence only grows while a step lasts, so it is kept in
constant memory per side: counts, a latency histogram and the lag-1 autocorrelation of the
probes (consecutive probes of one platform are not independent: load drifts, outages come in
bursts, and a bound that ignored it would claim more certainty than the probes hold).
Real requests are many and come from many users: they are taken as independent.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from exporter.traffic.counts import Histogram

__all__ = [
    "Distribution",
    "Evidence",
    "Lag1",
    "LatencyHistogram",
    "Side",
]

# Probe latencies in log-spaced buckets 5% wide from 0.1 ms to 120 s: a quantile read from them
# (interpolated within its bucket) is within 2.5% of the exact one, well inside any tolerated ratio.
_LOW = 1e-4
_FACTOR = 1.05
_LOG_FACTOR = math.log(_FACTOR)
_BUCKETS = math.ceil(math.log(120.0 / _LOW) / _LOG_FACTOR)  # 288 finite buckets


class Distribution(Protocol):
    """What readiness reads of a latency distribution (this module's or a traffic Histogram)."""

    @property
    def total(self) -> float: ...

    def quantile(self, q: float) -> float: ...


class LatencyHistogram:
    """Counts of latencies per log bucket: [0, LOW), then [LOW*F^(i-1), LOW*F^i), then beyond.

    Only the buckets between the lowest and the highest latency seen are held (`first` is the
    index of counts[0]): a check's latencies span a few dozen buckets, not all 290, and a step
    holds one histogram per check and side.
    """

    __slots__ = ("counts", "first")

    def __init__(self) -> None:
        self.first = 0
        self.counts: array[int] = array("I")

    @staticmethod
    def upper(i: int) -> float:
        """The upper edge of bucket i (math.inf for the last)."""
        return math.inf if i > _BUCKETS else _LOW * _FACTOR**i

    @staticmethod
    def lower(i: int) -> float:
        return 0.0 if i == 0 else _LOW * _FACTOR ** (i - 1)

    @staticmethod
    def index(seconds: float) -> int:
        if not seconds >= _LOW:  # NaN too
            return 0
        return min(_BUCKETS + 1, int(math.log(seconds / _LOW) / _LOG_FACTOR) + 1)

    def add(self, seconds: float, n: int = 1) -> None:
        i = self.index(seconds)
        self._cover(i)
        self.counts[i - self.first] += n

    def _cover(self, i: int) -> None:
        """Grow the held range to include bucket i."""
        if not self.counts:
            self.first = i
            self.counts.append(0)
        elif i < self.first:
            self.counts[0:0] = array("I", bytes(4 * (self.first - i)))
            self.first = i
        elif i >= self.first + len(self.counts):
            self.counts.extend(array("I", bytes(4 * (i - self.first - len(self.counts) + 1))))

    def merge(self, other: LatencyHistogram) -> None:
        for i, n in other.items():
            self._cover(i)
            self.counts[i - self.first] += n

    def items(self) -> list[tuple[int, int]]:
        """(bucket index, count) of every bucket with a count."""
        return [(self.first + k, n) for k, n in enumerate(self.counts) if n]

    @property
    def total(self) -> float:
        return float(sum(self.counts))

    def quantile(self, q: float) -> float:
        """The q-quantile, geometric within its bucket; NaN when empty.

        Below the first bucket it is linear from 0; beyond the last, the last finite edge.
        """
        total = sum(self.counts)
        if total <= 0 or not 0.0 <= q <= 1.0:
            return math.nan
        rank = q * total
        seen = 0
        i = self.first
        for n in self.counts:
            if n and seen + n >= rank:
                frac = (rank - seen) / n
                if i == 0:
                    return _LOW * frac
                if i > _BUCKETS:
                    return self.lower(i)
                return float(self.lower(i) * _FACTOR**frac)
            seen += n
            i += 1
        return self.lower(self.first + len(self.counts) - 1)

    def to_dict(self) -> dict[str, int]:
        """Sparse: bucket index -> count."""
        return {str(i): n for i, n in self.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, int]) -> LatencyHistogram:
        h = cls()
        for key, n in sorted(data.items(), key=lambda kv: int(kv[0])):
            i = int(key)
            if 0 <= i <= _BUCKETS + 1 and n > 0:
                h._cover(i)
                h.counts[i - h.first] = min(int(n), 2**32 - 1)
        return h


# A Lag1's six running figures, in this order, from its offset in an array of doubles
_N, _TOTAL, _SQUARES, _CROSS, _FIRST, _LAST = range(6)
_LAG_FIELDS = ("n", "total", "squares", "cross", "first", "last")


class Lag1:
    """Streaming lag-1 autocorrelation of a series (constant memory).

    Its six figures live in an array of doubles from `at` on: its own, or a Side's (which keeps
    both its Lag1 and its counts in one array: thousands of sides, each one object and one
    array instead of a dozen boxed floats).
    """

    __slots__ = ("_at", "_v")

    def __init__(self, values: array[float] | None = None, at: int = 0) -> None:
        self._v = array("d", bytes(8 * len(_LAG_FIELDS))) if values is None else values
        self._at = at

    def add(self, x: float) -> None:
        v, at = self._v, self._at
        if v[at + _N] == 0:
            v[at + _FIRST] = x
        else:
            v[at + _CROSS] += x * v[at + _LAST]
        v[at + _N] += 1
        v[at + _TOTAL] += x
        v[at + _SQUARES] += x * x
        v[at + _LAST] = x

    def _get(self, i: int) -> float:
        return self._v[self._at + i]

    @property
    def n(self) -> int:
        return int(self._get(_N))

    @property
    def rho(self) -> float:
        """The lag-1 autocorrelation, 0 for too short or constant series."""
        n = self._get(_N)
        if n < 10:
            return 0.0
        total, first, last = self._get(_TOTAL), self._get(_FIRST), self._get(_LAST)
        mean = total / n
        var = self._get(_SQUARES) / n - mean * mean
        if var <= 1e-12 * max(1.0, mean * mean):
            return 0.0
        # sum over t of (x[t]-m)(x[t-1]-m), from the running sums
        pairs = n - 1
        cov = (
            self._get(_CROSS) - mean * (total - first) - mean * (total - last) + pairs * mean * mean
        ) / pairs
        return max(-1.0, min(1.0, cov / var))

    def effective(self, n: float) -> float:
        """n samples' worth of independent ones: n (1 - rho) / (1 + rho), rho in [0, 0.9]."""
        rho = min(0.9, max(0.0, self.rho))
        return n * (1.0 - rho) / (1.0 + rho)

    def values(self) -> list[float]:
        return list(self._v[self._at : self._at + len(_LAG_FIELDS)])

    def to_dict(self) -> dict[str, float]:
        figures: dict[str, float] = dict(zip(_LAG_FIELDS, self.values(), strict=True))
        figures["n"] = self.n
        return figures

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Lag1:
        """Raises KeyError, TypeError or ValueError on a malformed dict."""
        return cls(array("d", [float(data[k]) for k in _LAG_FIELDS]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lag1) and self.values() == other.values()

    def __repr__(self) -> str:
        return f"Lag1({self.to_dict()})"


# A Side's array: count, failures, then (probes only) its two Lag1
_COUNT, _FAILURES, _FAILURE_LAG, _LATENCY_LAG = 0, 1, 2, 2 + len(_LAG_FIELDS)
_PROBE_SLOTS = _LATENCY_LAG + len(_LAG_FIELDS)


class Side:
    """One platform's evidence for one subject over a step.

    For probes (`Side()`): `record` each result; `latency` holds successes only (a failure has
    no latency worth comparing), and the two Lag1 track the failures (as 0/1) and ln(latency).
    For requests (`Side.requests()`): `count`/`failures` and a traffic `Histogram` merged from
    the timeline's tallies; no Lag1 (taken as independent).

    A step holds two sides per check, so a side is two objects: its latency distribution and
    one array of doubles with its counts and both Lag1's figures.
    """

    __slots__ = ("_v", "latency")

    def __init__(self) -> None:
        self._v = array("d", bytes(8 * _PROBE_SLOTS))
        self.latency: LatencyHistogram | Histogram | None = LatencyHistogram()

    @classmethod
    def requests(cls) -> Side:
        side = cls()
        side._v = array("d", bytes(8 * _FAILURE_LAG))
        side.latency = None
        return side

    @property
    def count(self) -> float:
        return self._v[_COUNT]

    @count.setter
    def count(self, value: float) -> None:
        self._v[_COUNT] = value

    @property
    def failures(self) -> float:
        return self._v[_FAILURES]

    @failures.setter
    def failures(self, value: float) -> None:
        self._v[_FAILURES] = value

    @property
    def failure_lag(self) -> Lag1 | None:
        """The failures' Lag1 (a view on this side's figures); None for requests."""
        return Lag1(self._v, _FAILURE_LAG) if len(self._v) == _PROBE_SLOTS else None

    @property
    def latency_lag(self) -> Lag1 | None:
        return Lag1(self._v, _LATENCY_LAG) if len(self._v) == _PROBE_SLOTS else None

    def record(self, ok: bool, seconds: float) -> None:
        """One probe: the hot path, O(1)."""
        v = self._v
        v[_COUNT] += 1
        probes = len(v) == _PROBE_SLOTS
        if probes:
            Lag1(v, _FAILURE_LAG).add(0.0 if ok else 1.0)
        if not ok:
            v[_FAILURES] += 1
            return
        if isinstance(self.latency, LatencyHistogram):
            self.latency.add(seconds)
        if probes and seconds > 0:
            Lag1(v, _LATENCY_LAG).add(math.log(seconds))

    @property
    def error_ratio(self) -> float:
        return self.failures / self.count if self.count > 0 else math.nan

    def n_eff_errors(self) -> float:
        """The count, discounted for bursts of failures."""
        lag = self.failure_lag
        return lag.effective(self.count) if lag is not None else self.count

    def n_eff_latency(self) -> float:
        """The successes with a latency, discounted for drifting latency."""
        n = self.latency.total if self.latency is not None else 0.0
        lag = self.latency_lag
        return lag.effective(n) if lag is not None else n

    def to_dict(self) -> dict[str, Any]:
        latency: dict[str, Any] | None
        if isinstance(self.latency, LatencyHistogram):
            latency = {"log": self.latency.to_dict()}
        elif isinstance(self.latency, Histogram):
            latency = {"bounds": list(self.latency.bounds), "counts": list(self.latency.counts)}
        else:
            latency = None
        failure_lag, latency_lag = self.failure_lag, self.latency_lag
        return {
            "count": self.count,
            "failures": self.failures,
            "latency": latency,
            "failure_lag": None if failure_lag is None else failure_lag.to_dict(),
            "latency_lag": None if latency_lag is None else latency_lag.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Side:
        """Raises KeyError, TypeError or ValueError on a malformed dict."""
        raw = data["latency"]
        latency: LatencyHistogram | Histogram | None
        if raw is None:
            latency = None
        elif "log" in raw:
            latency = LatencyHistogram.from_dict(raw["log"])
        else:
            latency = Histogram(
                tuple(float(b) for b in raw["bounds"]), [float(n) for n in raw["counts"]]
            )
        fl, ll = data.get("failure_lag"), data.get("latency_lag")
        side = cls() if fl is not None or ll is not None else cls.requests()
        side.count = float(data["count"])
        side.failures = float(data["failures"])
        side.latency = latency
        for at, saved in ((_FAILURE_LAG, fl), (_LATENCY_LAG, ll)):
            if saved is not None:
                side._v[at : at + len(_LAG_FIELDS)] = Lag1.from_dict(saved)._v
        return side

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Side)
            and self._v == other._v
            and type(self.latency) is type(other.latency)
            and _same_latency(self.latency, other.latency)
        )

    def __repr__(self) -> str:
        return f"Side({self.to_dict()})"


def _same_latency(a: object, b: object) -> bool:
    if isinstance(a, LatencyHistogram) and isinstance(b, LatencyHistogram):
        return a.items() == b.items()
    return a == b


@dataclass(slots=True)
class Evidence:
    """Both sides' evidence for one subject (a check, or `traffic:<group>`) over a step."""

    subject: str
    kind: Literal["probes", "requests"]
    baseline: Side
    candidate: Side
    # seconds of the step this subject spent with an incident pending or firing
    pending_seconds: float = 0.0
    firing_seconds: float = 0.0

    @classmethod
    def empty(cls, subject: str, kind: Literal["probes", "requests"]) -> Evidence:
        make = Side if kind == "probes" else Side.requests
        return cls(subject, kind, make(), make())

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "kind": self.kind,
            "baseline": self.baseline.to_dict(),
            "candidate": self.candidate.to_dict(),
            "pending_seconds": self.pending_seconds,
            "firing_seconds": self.firing_seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evidence:
        kind = data["kind"]
        if kind not in ("probes", "requests"):
            raise ValueError(f"unknown evidence kind {kind!r}")
        return cls(
            subject=str(data["subject"]),
            kind=kind,
            baseline=Side.from_dict(data["baseline"]),
            candidate=Side.from_dict(data["candidate"]),
            pending_seconds=float(data.get("pending_seconds", 0.0)),
            firing_seconds=float(data.get("firing_seconds", 0.0)),
        )
