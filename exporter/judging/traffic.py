"""The pure decision "did the candidate regress?" on real traffic: both sides' counts in, verdicts out.

Real traffic comes as counts per 5 s bucket (exporter/traffic/timeline.py), not as samples
paired in time like probes: the two platforms are compared over the same wall-clock spans, the
candidate's counts against the baseline's, with the tolerance inside the hypothesis.

- errors: is the candidate's 5xx ratio (its router's own failures included) above the
  baseline's plus `errors_max_increase`? A score test for a difference of two proportions with
  that margin (Miettinen and Nurminen's, with Gart and Nam's correction for skewness, so that
  1% error rates over a few hundred requests keep the nominal level), on float counts.
- latency, per quantile (p50, p95, p99), from histograms whose buckets may differ; every count
  is of whole buckets, so a bucket layout never favours a regression:
  - shift: are more candidate requests slower than a bound T than baseline requests slower than
    T / max_ratio (and T - min_increase)? Were the candidate at most max_ratio times slower,
    they could not be. T is the candidate bound nearest max_ratio x the baseline's quantile; the
    baseline is read at the largest of its own bounds below T / max_ratio (a score test on two
    proportions). A whole distribution slower than tolerated shows here even in coarse buckets.
  - tail (p95, p99): are more than 1 - q of the candidate's requests slower than T, T the
    candidate bound at or above what an upper confidence bound of the baseline's q-quantile
    tolerates (an exact binomial tail)? A few very slow requests show here.
  A quantile counts only when each side has at least 5 requests expected beyond it (a p99 from
  30 requests is not evidence); the tests of one horizon share its level (Bonferroni).

Each test runs over the latest 15 s, 30 s, 60 s, 120 s (doubling) and the whole window, on the
horizons where both sides have `min_requests`: a step shows within seconds, a slow drift over
the window. Each horizon keeps its level and a verdict takes the smallest p-value over them, as
the probe judge does, so that a 5% error ratio at 20 requests/s fires well inside a minute; what
the several looks cost at the tolerance itself is measured in bench/detect. Fewer than
`min_requests` requests on either side over the window (a quiet night, a 0% weight) is
inconclusive, never a regression; the baseline degrading alone only raises the bar. The
hysteresis is the probe judge's: a regression starts at p < 1 - confidence and holds while
p < hold_p_value; evidence short of that, beyond the tolerance, makes it `pending` (the
incident's `for` clock starts there). A long horizon stops counting as soon as the candidate's
latest requests are significantly better than the rest of it (what it holds is over), so an
ended regression ages out within a poll or two.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

from exporter.judging.judge import JudgeSettings, State, Verdict, binom_sf, norm_sf
from exporter.traffic.counts import Histogram, Tally, common_bounds

__all__ = [
    "QUANTILES",
    "TrafficEvaluation",
    "TrafficFigures",
    "TrafficSettings",
    "binom_lower_quantile",
    "binom_tail",
    "difference_score",
    "difference_sf",
    "horizons",
    "judge_traffic",
    "restricted_mle",
]

# The quantiles the latency test compares (and the figures show).
QUANTILES = (0.5, 0.95, 0.99)
# The shortest horizon (seconds): three 5 s buckets; longer ones double up to the window.
SHORTEST_HORIZON = 15.0
# A quantile q is judged on a horizon only when each side has at least this many requests
# expected beyond it (n x (1 - q)): a p99 from 30 requests is not evidence.
MIN_EXPECTED = 5.0
# The tail test also runs for these quantiles: a few very slow requests, whatever the rest does.
TAIL_QUANTILES = (0.95, 0.99)
# The tail test's upper bound of the baseline's quantile may be wrong this share of the level
# (added to its p-value, so that the test keeps its level).
UPPER_BOUND_SHARE = 0.1
# A long horizon stops counting when the candidate's requests of a shorter, recent one are
# better than the rest of it at this level: what the long one holds is over.
CONTRADICTION_P = 0.01
# An ongoing (pending or regressed) regression is judged on horizons covering at least half of
# the time since it was first seen, up to this long: a lucky 15 s cannot hold or confirm it.
ONGOING_MIN_HORIZON = 60.0
# Times within this of each other are the same time (bucket starts are float arithmetic).
_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class TrafficSettings:
    """How real traffic is judged: the config's `judge` tolerances and the `traffic` section."""

    min_requests: int = 200  # per side, route group and horizon
    confidence: float = 0.99
    latency_max_ratio: float = 1.5
    latency_min_increase: float = 0.025  # seconds
    errors_max_increase: float = 0.02
    window: float = 300.0  # seconds
    hold_p_value: float = 0.2

    def __post_init__(self) -> None:
        problems = []
        if self.min_requests < 1:
            problems.append("min_requests must be at least 1")
        if not 0.5 < self.confidence < 1.0:
            problems.append("confidence must be in (0.5, 1)")
        if self.latency_max_ratio < 1.0:
            problems.append("latency_max_ratio must be at least 1")
        if self.latency_min_increase < 0:
            problems.append("latency_min_increase must not be negative")
        if not 0 <= self.errors_max_increase < 1:
            problems.append("errors_max_increase must be in [0, 1)")
        if self.window < SHORTEST_HORIZON:
            problems.append(f"window must be at least {SHORTEST_HORIZON:g} s")
        if not 1.0 - self.confidence <= self.hold_p_value < 1.0:
            problems.append("hold_p_value must be in [1 - confidence, 1)")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_judge(
        cls, judge: JudgeSettings, min_requests: int, window: float | None = None
    ) -> TrafficSettings:
        """The probe judge's tolerances, with the traffic section's count and window."""
        return cls(
            min_requests=min_requests,
            confidence=judge.confidence,
            latency_max_ratio=judge.latency_max_ratio,
            latency_min_increase=judge.latency_min_increase,
            errors_max_increase=judge.errors_max_increase,
            window=judge.window if window is None else window,
            hold_p_value=judge.hold_p_value,
        )

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence


# ---------------------------------------------------------------------------------------------
# Statistics (standard library only; the tests hold them against scipy)


def restricted_mle(x1: float, n1: float, x2: float, n2: float, delta: float) -> tuple[float, float]:
    """The maximum-likelihood (p1, p2) of two binomials under the constraint p1 - p2 = delta.

    Farrington and Manning's closed form (the root of a cubic), for counts that may be
    fractional. `delta` in (-1, 1).
    """
    if delta == 0.0:
        pooled = (x1 + x2) / (n1 + n2)
        return pooled, pooled
    p1, p2 = x1 / n1, x2 / n2
    theta = n2 / n1
    a = 1.0 + theta
    b = -(1.0 + theta + p1 + theta * p2 + delta * (theta + 2.0))
    c = delta * delta + delta * (2.0 * p1 + theta + 1.0) + p1 + theta * p2
    d = -p1 * delta * (1.0 + delta)
    v = b**3 / (27.0 * a**3) - b * c / (6.0 * a * a) + d / (2.0 * a)
    u = math.copysign(math.sqrt(max(0.0, b * b / (9.0 * a * a) - c / (3.0 * a))), v)
    w = 0.0 if u == 0.0 else (math.pi + math.acos(max(-1.0, min(1.0, v / u**3)))) / 3.0
    t1 = 2.0 * u * math.cos(w) - b / (3.0 * a)
    # rounding may put the root a hair outside the parameter space
    t1 = min(1.0, max(delta, 0.0, t1))
    return t1, min(1.0, max(0.0, t1 - delta))


def difference_score(
    x1: float, n1: float, x2: float, n2: float, delta: float = 0.0
) -> tuple[float, float]:
    """Miettinen and Nurminen's score for H0: p1 - p2 = delta, and the skewness of its numerator.

    From x1 of n1 and x2 of n2 (floats allowed): (p1^ - p2^ - delta) / sqrt(V), V the variance
    at the restricted maximum-likelihood estimates times N / (N - 1); the skewness is
    Gart and Nam's, at the same estimates.
    """
    x1 = min(max(x1, 0.0), n1)
    x2 = min(max(x2, 0.0), n2)
    t1, t2 = restricted_mle(x1, n1, x2, n2, delta)
    # a proportion of exactly 0 or 1 has no variance: keep the statistic finite
    t1 = min(max(t1, 1e-12), 1.0 - 1e-12)
    t2 = min(max(t2, 1e-12), 1.0 - 1e-12)
    var = t1 * (1.0 - t1) / n1 + t2 * (1.0 - t2) / n2
    total = n1 + n2
    if total > 1.0:
        var *= total / (total - 1.0)
    score = (x1 / n1 - x2 / n2 - delta) / math.sqrt(var)
    mu3 = t1 * (1.0 - t1) * (1.0 - 2.0 * t1) / (n1 * n1) - t2 * (1.0 - t2) * (1.0 - 2.0 * t2) / (
        n2 * n2
    )
    return score, mu3 / var**1.5


def difference_sf(x1: float, n1: float, x2: float, n2: float, delta: float = 0.0) -> float:
    """One-sided p-value of H0: p1 - p2 <= delta, from x1 of n1 and x2 of n2 (floats allowed).

    The score of `difference_score`, corrected for skewness as Gart and Nam do (the
    Cornish-Fisher expansion score = z + g (z^2 - 1), g = skewness / 6, solved for z as a
    quadratic, so that the correction stays monotone). Without it a candidate with a 1% failure
    ratio over a few hundred requests, far from normal, would be found failing more than the
    baseline two to three times as often as the level says; with it the level holds (the tests
    compute both sizes exactly).
    """
    if n1 <= 0 or n2 <= 0:
        return 1.0
    score, skewness = difference_score(x1, n1, x2, n2, delta)
    g = skewness / 6.0
    if abs(g) < 1e-12:
        return norm_sf(score)
    disc = 1.0 + 4.0 * g * (score + g)
    # no root: the score lies beyond what the expansion reaches; its vertex is the bound
    z = (-1.0 + math.sqrt(disc)) / (2.0 * g) if disc >= 0.0 else -1.0 / (2.0 * g)
    return norm_sf(z)


@lru_cache(maxsize=64)
def horizons(window: float) -> tuple[float, ...]:
    """The latest 15, 30, 60, ... seconds (doubling, while well short of the window) and the window."""
    found = []
    h = SHORTEST_HORIZON
    while h * 1.5 < window:
        found.append(h)
        h *= 2.0
    found.append(window)
    return tuple(found)


# ---------------------------------------------------------------------------------------------
# Figures and verdicts


@dataclass(frozen=True, slots=True)
class TrafficFigures:
    """Window figures of both platforms' real traffic, as a message or the status page shows them.

    Quantiles are read at the bucket bounds both histograms share, so that identical traffic
    shows a ratio of 1 whatever each source's resolution.
    """

    window: float  # seconds the figures cover (less while the window fills)
    baseline_requests: float
    candidate_requests: float
    baseline_errors: float
    candidate_errors: float
    baseline_p50: float  # seconds; NaN without a histogram
    baseline_p95: float
    baseline_p99: float
    candidate_p50: float
    candidate_p95: float
    candidate_p99: float

    @property
    def baseline_rate(self) -> float:
        return self.baseline_requests / self.window if self.window > 0 else math.nan

    @property
    def candidate_rate(self) -> float:
        return self.candidate_requests / self.window if self.window > 0 else math.nan

    @property
    def baseline_error_ratio(self) -> float:
        return _share(self.baseline_errors, self.baseline_requests)

    @property
    def candidate_error_ratio(self) -> float:
        return _share(self.candidate_errors, self.candidate_requests)

    @property
    def error_ratio_delta(self) -> float:
        return self.candidate_error_ratio - self.baseline_error_ratio

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready, NaN as None; the probe figures' keys, and more."""
        values: dict[str, float] = {
            "window": self.window,
            "baseline_requests": self.baseline_requests,
            "candidate_requests": self.candidate_requests,
            "baseline_rate": self.baseline_rate,
            "candidate_rate": self.candidate_rate,
            "baseline_errors": self.baseline_errors,
            "candidate_errors": self.candidate_errors,
            "baseline_p50": self.baseline_p50,
            "baseline_p95": self.baseline_p95,
            "baseline_p99": self.baseline_p99,
            "candidate_p50": self.candidate_p50,
            "candidate_p95": self.candidate_p95,
            "candidate_p99": self.candidate_p99,
            "p50_ratio": _ratio(self.candidate_p50, self.baseline_p50),
            "p95_ratio": _ratio(self.candidate_p95, self.baseline_p95),
            "p99_ratio": _ratio(self.candidate_p99, self.baseline_p99),
            "baseline_error_ratio": self.baseline_error_ratio,
            "candidate_error_ratio": self.candidate_error_ratio,
            "error_ratio_delta": self.error_ratio_delta,
        }
        return {k: v if math.isfinite(v) else None for k, v in values.items()}


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else math.nan


def _ratio(candidate: float, baseline: float) -> float:
    if math.isnan(candidate) or math.isnan(baseline) or baseline <= 0:
        return math.nan
    return candidate / baseline


@dataclass(frozen=True, slots=True)
class TrafficEvaluation:
    """Both traffic verdicts for one route group at one moment, and the figures behind them.

    Consumed like the probes' Evaluation: `Alerts.update("traffic:<route>", evaluation, now)`.
    A verdict's `horizon` is in seconds (the span of the evidence with the smallest p-value);
    its `estimate` and `threshold` are, for errors, the candidate's failure-ratio increase and
    the tolerated one; for latency, the share of candidate requests slower than the test's bound
    and what it is held against: the share of baseline requests slower than the bound the
    tolerance allows (shift test), or 1 - q (tail test). The test's name says the bounds.
    """

    at: float
    errors: Verdict
    latency: Verdict
    figures: TrafficFigures

    def verdicts(self) -> tuple[Verdict, Verdict]:
        return (self.errors, self.latency)

    def verdict(self, signal: str) -> Verdict:
        if signal == "errors":
            return self.errors
        if signal == "latency":
            return self.latency
        raise KeyError(signal)


# ---------------------------------------------------------------------------------------------
# The judge


@dataclass(frozen=True, slots=True)
class _Latency:
    """A histogram with its running sums from the top: `above` costs one bisection."""

    hist: Histogram
    suffix: tuple[float, ...]  # suffix[k]: requests in bucket k and above

    @classmethod
    def of(cls, hist: Histogram) -> _Latency:
        return cls(hist, (*reversed(list(accumulate(reversed(hist.counts)))), 0.0))

    @property
    def bounds(self) -> tuple[float, ...]:
        return self.hist.bounds

    @property
    def total(self) -> float:
        return self.suffix[0]

    def above(self, seconds: float) -> float:
        """As Histogram.above: requests in the buckets whose lower bound is >= `seconds`."""
        if seconds <= 0:
            return self.suffix[0]
        return self.suffix[bisect_left(self.hist.bounds, seconds) + 1]

    def quantile(self, q: float) -> float:
        return self.hist.quantile(q)


@dataclass(frozen=True, slots=True)
class _Totals:
    """One side's counts over one horizon."""

    requests: float = 0.0
    errors: float = 0.0
    latency: _Latency | None = None


@dataclass(frozen=True, slots=True)
class _Test:
    p_value: float  # Bonferroni-adjusted over the quantiles tested on the same horizon
    test: str
    horizon: float
    estimate: float
    threshold: float


def judge_traffic(
    baseline: Sequence[tuple[float, Tally]],
    candidate: Sequence[tuple[float, Tally]],
    end: float,
    settings: TrafficSettings,
    previous: TrafficEvaluation | None = None,
) -> TrafficEvaluation:
    """Judge one route group's candidate traffic against the baseline's, over the window to `end`.

    `baseline` and `candidate` are the Timeline's (bucket start, tally) over the window, oldest
    first, gaps for buckets without traffic; `end` is the end of the span both sides have
    covered. Buckets outside [end - window, end) are ignored. Pass the previous evaluation of the
    same route group as `previous`: it carries the hysteresis.
    """
    spans = horizons(settings.window)
    base = _accumulate(baseline, end, spans)
    cand = _accumulate(candidate, end, spans)
    starts = [s for s, _ in (*baseline, *candidate) if end - settings.window - _EPS <= s < end]
    covered = min(settings.window, end - min(starts)) if starts else 0.0
    figures = _figures(base[-1], cand[-1], covered)

    enough = [
        b.requests >= settings.min_requests and c.requests >= settings.min_requests
        for b, c in zip(base, cand, strict=True)
    ]
    if not enough[-1]:
        too_few = "too few requests"
        return TrafficEvaluation(
            at=end,
            errors=_inconclusive("errors", too_few, spans[-1]),
            latency=_inconclusive("latency", too_few, spans[-1]),
            figures=figures,
        )
    errors = _decide(
        "errors", _errors(base, cand, enough, spans, settings), settings, previous, end
    )
    latency = _decide(
        "latency", _latency(base, cand, enough, spans, settings), settings, previous, end
    )
    return TrafficEvaluation(at=end, errors=errors, latency=latency, figures=figures)


def _accumulate(
    series: Sequence[tuple[float, Tally]], end: float, spans: Sequence[float]
) -> list[_Totals]:
    """One side's totals over each horizon (ascending spans; the last is the window)."""
    window = spans[-1]
    inside = sorted(
        ((s, t) for s, t in series if end - window - _EPS <= s < end),
        key=lambda item: item[0],
        reverse=True,
    )
    # every bucket's histogram at the bounds they all share (merged sources may differ)
    layouts = {t.latency.bounds for _, t in inside if t.latency is not None}
    bounds: tuple[float, ...] | None = None
    for layout in layouts:
        bounds = layout if bounds is None else _common_bounds(bounds, layout)
    counts = [0.0] * (len(bounds) + 1) if bounds is not None else None
    requests = errors = 0.0
    out: list[_Totals] = []
    i = 0
    for span in spans:
        rows: list[list[float]] = []  # this horizon's histograms beyond the shorter one's
        while i < len(inside) and inside[i][0] >= end - span - _EPS:
            tally = inside[i][1]
            requests += tally.requests
            errors += min(max(tally.errors, 0.0), max(tally.requests, 0.0))
            hist = tally.latency
            if hist is not None and bounds is not None:
                rows.append((hist if hist.bounds == bounds else hist.coarsen(bounds)).counts)
            i += 1
        latency = None
        if bounds is not None and counts is not None:
            if rows:
                counts = [
                    a + b for a, b in zip(counts, map(sum, zip(*rows, strict=True)), strict=True)
                ]
            latency = _Latency.of(Histogram(bounds, counts))
        out.append(_Totals(requests, errors, latency))
    return out


@lru_cache(maxsize=256)
def _common_bounds(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
    """common_bounds, remembered: a handful of layouts meet at every evaluation."""
    return common_bounds(a, b)


def _figures(base: _Totals, cand: _Totals, covered: float) -> TrafficFigures:
    b_q: tuple[float, ...] = (math.nan,) * 3
    c_q = b_q
    if base.latency is not None and cand.latency is not None:
        shared = _common_bounds(base.latency.bounds, cand.latency.bounds)
        b_hist, c_hist = base.latency.hist, cand.latency.hist
        if b_hist.bounds != shared:
            b_hist = b_hist.coarsen(shared)
        if c_hist.bounds != shared:
            c_hist = c_hist.coarsen(shared)
        b_q = tuple(b_hist.quantile(q) for q in QUANTILES)
        c_q = tuple(c_hist.quantile(q) for q in QUANTILES)
    return TrafficFigures(
        window=covered,
        baseline_requests=base.requests,
        candidate_requests=cand.requests,
        baseline_errors=base.errors,
        candidate_errors=cand.errors,
        baseline_p50=b_q[0],
        baseline_p95=b_q[1],
        baseline_p99=b_q[2],
        candidate_p50=c_q[0],
        candidate_p95=c_q[1],
        candidate_p99=c_q[2],
    )


def _inconclusive(signal: str, why: str, horizon: float) -> Verdict:
    return Verdict(
        signal=signal,
        state=State.INCONCLUSIVE,
        significant=False,
        p_value=math.nan,
        test=why,
        horizon=round(horizon),
        estimate=math.nan,
        threshold=math.nan,
    )


def _later_is_better(x_recent: float, n_recent: float, x_all: float, n_all: float) -> bool:
    """Whether the recent part of a horizon has significantly fewer events than the rest of it."""
    n_old = n_all - n_recent
    if n_old <= 0 or n_recent <= 0 or x_recent * n_all >= x_all * n_recent:
        return False  # (not even fewer)
    return difference_sf(x_all - x_recent, n_old, x_recent, n_recent) < CONTRADICTION_P


@dataclass(frozen=True, slots=True)
class _Found:
    """The tests in force, how many were made, and why none were."""

    tests: list[_Test]
    made: int
    why: str = ""


def _errors(
    base: list[_Totals],
    cand: list[_Totals],
    enough: list[bool],
    spans: Sequence[float],
    settings: TrafficSettings,
) -> _Found:
    delta = settings.errors_max_increase
    tests = []
    made = 0
    for i, span in enumerate(spans):
        if not enough[i]:
            continue
        b, c = base[i], cand[i]
        made += 1
        # what this horizon holds is over when the candidate's latest requests fail less
        if any(
            enough[j] and _later_is_better(cand[j].errors, cand[j].requests, c.errors, c.requests)
            for j in range(i)
        ):
            continue
        increase = c.errors / c.requests - b.errors / b.requests
        p = difference_sf(c.errors, c.requests, b.errors, b.requests, delta)
        tests.append(_Test(p, "5xx ratio, score test with margin", span, increase, delta))
    return _Found(tests, made)


def _shift_bounds(
    q: float, base: _Latency, cand: _Latency, settings: TrafficSettings
) -> tuple[float, float] | None:
    """(T, L) of the shift test for quantile q: T a candidate bound near the tolerated level of
    the baseline's q-quantile, L the largest baseline bound at or below what T tolerates. None
    when the histograms cannot tell."""
    level = base.quantile(q)
    if math.isnan(level) or level <= 0 or not cand.bounds or not base.bounds:
        return None
    ratio, increase = settings.latency_max_ratio, settings.latency_min_increase
    tolerated = max(ratio * level, level + increase)
    bounds = cand.bounds
    i = bisect_left(bounds, tolerated)
    # the bound nearest the tolerated level (in ratio) is one of its neighbours; when neither
    # has a baseline bound below what it tolerates, the next ones up
    order = sorted(
        (j for j in (i - 1, i) if 0 <= j < len(bounds) and bounds[j] > 0),
        key=lambda j: abs(math.log(bounds[j] / tolerated)),
    )
    order += range(i + 1, len(bounds))
    for j in order:
        bound = bounds[j]
        allowed = min(bound / ratio, bound - increase)
        k = bisect_right(base.bounds, allowed * (1.0 + 1e-9))
        if k > 0:  # else below the baseline's first bound: nothing to compare with
            return bound, base.bounds[k - 1]
    return None


def binom_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), for any n: the smaller tail is summed, from its edge.

    (judge.binom_sf starts at k, whose probability underflows for the tens of thousands of
    requests a window holds when k lies far below the mean.)
    """
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0 or k > n * p:
        return binom_sf(k, n, p)
    # 1 - P(X <= k - 1), summed from k - 1 downwards
    term = math.exp(
        math.lgamma(n + 1)
        - math.lgamma(k)
        - math.lgamma(n - k + 2)
        + (k - 1) * math.log(p)
        + (n - k + 1) * math.log1p(-p)
    )
    total = term
    odds = (1.0 - p) / p
    for i in range(k - 1, 0, -1):
        term *= i / (n - i + 1) * odds
        total += term
        if term < total * 1e-17:
            break
    return max(0.0, 1.0 - total)


def binom_lower_quantile(n: float, p: float, alpha: float) -> int | None:
    """The largest m with P(X <= m) <= alpha for X ~ Binomial(floor(n), p); None if there is none.

    Summed exactly while n p < 200; beyond, the Cornish-Fisher expansion with the binomial's
    skewness (off by at most one count there, and rounded down).
    """
    trials = math.floor(n + 1e-9)
    if trials <= 0 or p <= 0.0:
        return None
    if p >= 1.0:
        return trials - 1 if alpha >= 0 else None
    mean = trials * p
    if mean < 200.0:
        pmf = math.exp(trials * math.log1p(-p))
        total = pmf
        if total > alpha:
            return None
        odds = p / (1.0 - p)
        m = 0
        while m < trials:
            pmf *= (trials - m) / (m + 1) * odds
            if total + pmf > alpha:
                return m
            total += pmf
            m += 1
        return trials
    sd = math.sqrt(mean * (1.0 - p))
    z = -_norm_isf(alpha)
    skew = (1.0 - 2.0 * p) / sd
    found = math.floor(mean + sd * (z + skew / 6.0 * (z * z - 1.0)) - 0.5) - 1
    return found if found >= 0 else None


@lru_cache(maxsize=64)
def _norm_isf(alpha: float) -> float:
    """z with P(Z > z) = alpha (bisection on norm_sf: called with a handful of levels)."""
    lo, hi = -40.0, 40.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if norm_sf(mid) > alpha:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def _tail_bound(
    q: float, base: _Latency, cand: _Latency, settings: TrafficSettings
) -> tuple[float, float] | None:
    """(T, U) of the tail test for quantile q: U a baseline bound above the baseline's
    q-quantile with confidence 1 - UPPER_BOUND_SHARE x alpha, T the smallest candidate bound at
    or above what U tolerates. None when there is no such bound."""
    most = binom_lower_quantile(base.total, 1.0 - q, settings.alpha * UPPER_BOUND_SHARE)
    if most is None:
        return None
    # at most `most` baseline requests lie above the q-quantile's upper bound
    upper = next((b for b in base.bounds if base.above(b) <= most), None)
    if upper is None:
        return None
    tolerated = max(settings.latency_max_ratio * upper, upper + settings.latency_min_increase)
    i = bisect_left(cand.bounds, tolerated * (1.0 - 1e-9))
    return (cand.bounds[i], upper) if i < len(cand.bounds) else None


def _latency(
    base: list[_Totals],
    cand: list[_Totals],
    enough: list[bool],
    spans: Sequence[float],
    settings: TrafficSettings,
) -> _Found:
    """Latency evidence per horizon: per quantile a shift test and, for the high ones, a tail test.

    Shift: more candidate requests over T than baseline requests over L (T / max_ratio, or
    T - min_increase, rounded down to a baseline bound): a whole distribution slower than
    tolerated shows there even when both histograms are coarse. Tail: more than 1 - q of the
    candidate's requests over T, T at least what an upper confidence bound of the baseline's
    q-quantile tolerates: a few very slow requests show there, however the baseline's own tail
    looks. Both count whole buckets only, so bucket layouts never favour a regression.
    """
    if base[-1].latency is None or cand[-1].latency is None:
        return _Found([], 0, "no latency histogram")
    tests = []
    made = 0
    share = settings.alpha * UPPER_BOUND_SHARE
    for i, span in enumerate(spans):
        b_hist, c_hist = base[i].latency, cand[i].latency
        if not enough[i] or b_hist is None or c_hist is None:
            continue
        n_b, n_c = b_hist.total, c_hist.total
        shifts: dict[tuple[float, float], list[float]] = {}  # (T, L) -> quantiles sharing it
        looks: list[tuple[float, float, str, float]] = []  # (T, p, name, reference share)
        for q in QUANTILES:
            if min(n_b, n_c) * (1.0 - q) < MIN_EXPECTED:
                continue
            pair = _shift_bounds(q, b_hist, c_hist, settings)
            if pair is not None:
                shifts.setdefault(pair, []).append(q)
            tail = _tail_bound(q, b_hist, c_hist, settings) if q in TAIL_QUANTILES else None
            if tail is not None:
                bound, upper = tail
                x_c = c_hist.above(bound)
                # one-sided exact binomial, on whole requests; U's own error is added
                p = binom_tail(math.floor(x_c + 1e-9), round(n_c), 1.0 - q) + share
                name = (
                    f"p{q * 100:g} tail: requests over {bound * 1000:g} ms"
                    f" (baseline p{q * 100:g} <= {upper * 1000:g} ms)"
                )
                looks.append((bound, p, name, 1.0 - q))
        for (bound, allowed), qs in shifts.items():
            x_b = b_hist.above(allowed)
            name = "/".join(f"p{q * 100:g}" for q in qs)
            looks.append(
                (
                    bound,
                    difference_sf(c_hist.above(bound), n_c, x_b, n_b),
                    f"{name}: requests over {bound * 1000:g} ms vs {allowed * 1000:g} ms",
                    x_b / n_b if n_b > 0 else math.nan,
                )
            )
        made += len(looks)
        for bound, p, name, reference in looks:
            x_c = c_hist.above(bound)
            if any(
                enough[j]
                and (recent := cand[j].latency) is not None
                and _later_is_better(recent.above(bound), recent.total, x_c, n_c)
                for j in range(i)
            ):
                continue
            # the looks of one horizon share its level (Bonferroni)
            estimate = x_c / n_c if n_c > 0 else math.nan
            tests.append(_Test(min(1.0, p * len(looks)), name, span, estimate, reference))
    if not made:
        return _Found([], 0, "too few requests")
    return _Found(tests, made)


def _since(signal: str, seen: bool, previous: TrafficEvaluation | None, now: float) -> float | None:
    if not seen:
        return None
    before = previous.verdict(signal) if previous is not None else None
    if before is not None and (before.regressed or before.pending) and before.since is not None:
        return before.since
    return now


def _decide(
    signal: str,
    found: _Found,
    settings: TrafficSettings,
    previous: TrafficEvaluation | None,
    now: float,
) -> Verdict:
    """Turn the tests in force into a verdict, with the hysteresis of the previous one."""
    if not found.made:
        return _inconclusive(signal, found.why or "too few requests", settings.window)
    before = previous.verdict(signal) if previous is not None else None
    was_regressed = before is not None and before.regressed
    since = before.since if before is not None and (was_regressed or before.pending) else None
    tests = found.tests
    if since is not None:
        shortest = min((now - since) / 2.0, ONGOING_MIN_HORIZON, settings.window)
        tests = [t for t in tests if t.horizon >= shortest - _EPS]
    best = min(tests, key=lambda t: t.p_value, default=None)
    if best is None:
        # every horizon long enough for an ongoing regression is contradicted by fresher
        # requests: what they held is over
        return Verdict(
            signal=signal,
            state=State.OK,
            significant=False,
            p_value=1.0,
            test="over",
            horizon=round(settings.window),
            estimate=math.nan,
            threshold=math.nan,
        )
    p = best.p_value
    significant = p < settings.alpha
    regressed = significant or (was_regressed and p < settings.hold_p_value)
    pending = not regressed and p < settings.hold_p_value and best.estimate > best.threshold
    return Verdict(
        signal=signal,
        state=State.REGRESSED if regressed else State.OK,
        significant=significant,
        p_value=p,
        test=best.test,
        horizon=round(best.horizon),
        estimate=best.estimate,
        threshold=best.threshold,
        since=_since(signal, regressed or pending, previous, now),
        pending=pending,
    )
