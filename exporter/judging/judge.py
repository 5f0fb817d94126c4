"""The pure decision "did the candidate regress?": window samples and the time in, verdicts out."""

from __future__ import annotations

import math
import operator
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from itertools import accumulate

from exporter.probing.window import Sample, quantile

SIGNALS = ("down", "errors", "latency")

# The tail test compares the candidate with max_ratio x this quantile of the baseline.
TAIL_QUANTILE = 0.99
# The tail test rests on the few largest values, which noise reaches now and then: its p-values
# count this many times over, a Bonferroni-like share of the error budget (tuned on bench/detect).
TAIL_SHARE = 1.5
# A rate needs a few samples; the shortest horizons would only add chances of a fluke.
TAIL_MIN_PAIRS = 8
# A long horizon stops counting when its latest pairs (8, 16, ... of them) are significantly
# faster than it (at this level): what it holds is over.
RECENT_PAIRS_LATENCY = 8
CONTRADICTION_P = 0.01
# Rare events (failures, tail exceedances) say little per sample: a horizon's rate stops
# counting once the quiet spell since the last event is this unlikely at that rate.
QUIET_P = 0.05
# The baseline's failure rate is its rate over the whole window, or over at least this many of
# the latest pairs when that is higher: a shared outage raises it within seconds.
RECENT_BASELINE_PAIRS = 32
# The baseline's window gives the power; the same-period Fisher test only has to show that the
# baseline did not fail alike meanwhile, so its p-value may be this many times weaker.
SAME_PERIOD_SLACK = 10.0
# An ongoing regression is judged on horizons covering at least half of it (up to this many
# pairs): the latest sample or two can then neither hold nor confirm it alone.
ONGOING_MIN_PAIRS = 16
# The baseline's noise is estimated from one short window: its level is taken this many
# standard errors above the estimate, its lag-1 autocorrelation one standard error above.
SIGMA_MARGIN_Z = 1.2816
MAX_AUTOCORRELATION = 0.95
# ln-latency noise floor: a perfectly steady baseline must not make every millisecond count.
MIN_LOG_SIGMA = 0.01


class State(StrEnum):
    OK = "ok"
    REGRESSED = "regressed"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class JudgeSettings:
    """How the candidate is compared with the baseline (the config's `judge` section)."""

    min_samples: int = 10
    confidence: float = 0.99
    latency_max_ratio: float = 1.5
    latency_min_increase: float = 0.025  # seconds
    errors_max_increase: float = 0.02
    down_after: int = 3
    window: float = 300.0  # seconds
    # hysteresis: a regression starts at p < 1 - confidence and holds while p < hold_p_value;
    # latency below hold_p_value (the estimate beyond the threshold) is already "pending"
    hold_p_value: float = 0.2

    def __post_init__(self) -> None:
        problems = []
        if self.min_samples < 2:
            problems.append("min_samples must be at least 2")
        if not 0.5 < self.confidence < 1.0:
            problems.append("confidence must be in (0.5, 1)")
        if self.latency_max_ratio < 1.0:
            problems.append("latency_max_ratio must be at least 1")
        if self.latency_min_increase < 0:
            problems.append("latency_min_increase must not be negative")
        if not 0 <= self.errors_max_increase < 1:
            problems.append("errors_max_increase must be in [0, 1)")
        if self.down_after < 1:
            problems.append("down_after must be at least 1")
        if self.window <= 0:
            problems.append("window must be positive")
        if not 1.0 - self.confidence <= self.hold_p_value < 1.0:
            problems.append("hold_p_value must be in [1 - confidence, 1)")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence


# ---------------------------------------------------------------------------------------------
# Statistics (standard library only; the tests hold them against scipy)


def norm_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed from the tail so tiny values keep their digits."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    term = math.exp(_log_comb(n, k) + k * math.log(p) + (n - k) * math.log1p(-p))
    total = term
    odds = p / (1.0 - p)
    for i in range(k, n):
        term *= (n - i) / (i + 1) * odds
        total += term
        if term < total * 1e-17:
            break
    return min(1.0, total)


def _hypergeom_pmf(x: int, total: int, successes: int, draws: int) -> float:
    return math.exp(
        _log_comb(successes, x) + _log_comb(total - successes, draws - x) - _log_comb(total, draws)
    )


def hypergeom_sf(x: int, total: int, successes: int, draws: int) -> float:
    """P(X >= x), X the successes among `draws` taken without replacement from `total` items."""
    lo = max(0, draws - (total - successes))
    hi = min(draws, successes)
    if x <= lo:
        return 1.0
    if x > hi:
        return 0.0
    term = _hypergeom_pmf(x, total, successes, draws)
    result = term
    for i in range(x, hi):
        term *= (successes - i) * (draws - i) / ((i + 1) * (total - successes - draws + i + 1))
        result += term
        if term < result * 1e-17:
            break
    return min(1.0, result)


def hypergeom_cdf(x: int, total: int, successes: int, draws: int) -> float:
    """P(X <= x), X the successes among `draws` taken without replacement from `total` items."""
    lo = max(0, draws - (total - successes))
    hi = min(draws, successes)
    if x < lo:
        return 0.0
    if x >= hi:
        return 1.0
    term = _hypergeom_pmf(lo, total, successes, draws)
    result = term
    for i in range(lo, x):
        term *= (successes - i) * (draws - i) / ((i + 1) * (total - successes - draws + i + 1))
        result += term
    return min(1.0, result)


def fisher_greater(a: int, b: int, c: int, d: int) -> float:
    """One-sided Fisher exact p for the table [[a, b], [c, d]]: is a/(a+b) above c/(c+d)?

    The value of scipy.stats.fisher_exact([[a, b], [c, d]], alternative="greater").
    """
    return hypergeom_sf(a, a + b + c + d, a + c, a + b)


def exceedance_sf(k: int, reference: int, rank: int, n: int) -> float:
    """P(K >= k), K the number of n new values above the rank-th largest of `reference` values.

    Exact whenever all values are exchangeable (drawn from one continuous distribution, whatever
    it is): K >= k exactly when the k + rank - 1 largest of all values hold at most rank - 1
    reference ones. So the uncertainty of a quantile estimated from the reference is included.
    """
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return hypergeom_cdf(rank - 1, reference + n, reference, k + rank - 1)


def ar1_variance_factor(n: int, rho: float) -> float:
    """Var(mean of n AR(1) values) / (sigma^2 / n): how much autocorrelation widens a mean.

    n / factor is the effective sample size: n for independent samples, about
    n (1 - rho) / (1 + rho) for long series.
    """
    if n <= 1 or rho == 0.0:
        return 1.0
    one_minus = 1.0 - rho
    extra = 2.0 * rho * (n * one_minus - (1.0 - rho**n)) / (one_minus * one_minus)
    return max(1.0 / n, 1.0 + extra / n)


def lag1_autocorrelation(values: Sequence[float]) -> float:
    """Sample lag-1 autocorrelation; 0 when the series is too short or constant."""
    n = len(values)
    if n < 3:
        return 0.0
    mean = sum(values) / n
    dev = [v - mean for v in values]
    squares: float = sum(map(operator.mul, dev, dev))
    if squares <= 0.0:
        return 0.0
    lagged: float = sum(map(operator.mul, dev, dev[1:]))
    return lagged / squares


# ---------------------------------------------------------------------------------------------
# Verdicts


@dataclass(frozen=True, slots=True)
class Figures:
    """Window figures of both platforms, as a message or the status page shows them."""

    baseline_samples: int
    candidate_samples: int
    pairs: int  # ticks probed on both platforms
    baseline_p50: float  # seconds, successful probes; NaN without any
    baseline_p95: float
    candidate_p50: float
    candidate_p95: float
    baseline_error_ratio: float  # NaN without samples
    candidate_error_ratio: float

    @property
    def p50_ratio(self) -> float:
        return _ratio(self.candidate_p50, self.baseline_p50)

    @property
    def p95_ratio(self) -> float:
        return _ratio(self.candidate_p95, self.baseline_p95)

    @property
    def error_ratio_delta(self) -> float:
        return self.candidate_error_ratio - self.baseline_error_ratio

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready, NaN as None."""
        values: dict[str, float | int] = {
            "baseline_samples": self.baseline_samples,
            "candidate_samples": self.candidate_samples,
            "pairs": self.pairs,
            "baseline_p50": self.baseline_p50,
            "baseline_p95": self.baseline_p95,
            "candidate_p50": self.candidate_p50,
            "candidate_p95": self.candidate_p95,
            "p50_ratio": self.p50_ratio,
            "p95_ratio": self.p95_ratio,
            "baseline_error_ratio": self.baseline_error_ratio,
            "candidate_error_ratio": self.candidate_error_ratio,
            "error_ratio_delta": self.error_ratio_delta,
        }
        return {k: _finite_or_none(v) for k, v in values.items()}


def _ratio(candidate: float, baseline: float) -> float:
    if math.isnan(candidate) or math.isnan(baseline) or baseline <= 0:
        return math.nan
    return candidate / baseline


def _finite_or_none(value: float | int) -> float | int | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True, slots=True)
class Verdict:
    """One signal's answer at one evaluation.

    `state` carries the hysteresis; `significant` says whether this evaluation clears the
    confidence, which firing requires. `pending` (latency only) marks evidence that is credible
    but not established: not regressed, yet p < hold_p_value and the estimate beyond it. The
    incident machine starts its `for` clock there (and keeps it running while the evidence stays
    credible or regressed), so that a step fires once `for` has passed since it first showed,
    not since it first cleared the confidence; firing itself still needs `significant`.
    `test` and `horizon` (pairs) name the evidence with the smallest p-value, `estimate` is its
    effect (latency: candidate/baseline ratio, or share of pairs starting a tail exceedance;
    errors: failure-ratio increase; down: consecutive candidate failures) and `threshold` what
    it was held against. `since` is when the current regression was first seen (None unless
    regressed or pending; for a regression that was pending first, when it became pending):
    the judge's own state.
    """

    signal: str
    state: State
    significant: bool
    p_value: float  # NaN when no test applies (down, too few samples)
    test: str
    horizon: int
    estimate: float
    threshold: float
    since: float | None = None
    pending: bool = False

    @property
    def regressed(self) -> bool:
        return self.state is State.REGRESSED

    def as_dict(self) -> dict[str, float | int | str | bool | None]:
        """JSON-ready, NaN as None."""
        return {
            "signal": self.signal,
            "state": self.state.value,
            "significant": self.significant,
            "p_value": _finite_or_none(self.p_value),
            "test": self.test,
            "horizon": self.horizon,
            "estimate": _finite_or_none(self.estimate),
            "threshold": _finite_or_none(self.threshold),
            "since": self.since,
            "pending": self.pending,
        }


@dataclass(frozen=True, slots=True)
class Evaluation:
    """All three verdicts for one check at one moment, and the figures behind them."""

    at: float
    down: Verdict
    errors: Verdict
    latency: Verdict
    figures: Figures

    def verdicts(self) -> tuple[Verdict, Verdict, Verdict]:
        return (self.down, self.errors, self.latency)

    def verdict(self, signal: str) -> Verdict:
        if signal == "down":
            return self.down
        if signal == "errors":
            return self.errors
        if signal == "latency":
            return self.latency
        raise KeyError(signal)


def judge(
    baseline: Sequence[Sample],
    candidate: Sequence[Sample],
    now: float,
    settings: JudgeSettings,
    previous: Evaluation | None = None,
) -> Evaluation:
    """Judge the candidate against the baseline over the window ending at `now`.

    Samples with the same tick were probed at the same moment and are compared pairwise. Pass
    the previous evaluation of the same check as `previous`: it carries the hysteresis. Three
    signals:

    - down: the candidate failed its last `down_after` probes (more when the baseline fails as
      often: such a run is then what a platform like the baseline shows by chance).
    - errors: the candidate fails more often than the baseline plus `errors_max_increase`, the
      tolerance inside the hypothesis (exact binomial test against the baseline's rate plus the
      tolerance), and the baseline did not fail alike over the same probes (Fisher's exact).
    - latency: the candidate is slower than `max_ratio` times the baseline (and by more than
      `min_increase`), again with the tolerance inside the hypothesis: a test on
      ln(candidate) - ln(baseline) per tick for a shift of the whole distribution, and an exact
      exceedance test against max_ratio x the baseline's high quantile for the tail alone.

    Each test runs over the latest 1, 2, 4, ... pairs and the whole window: a step shows in
    seconds, a drift over the window. The noise level comes from the baseline's history,
    widened for its autocorrelation. A regression starts at p < 1 - confidence and holds while
    p < hold_p_value; before it starts, latency evidence at p < hold_p_value with the estimate
    beyond the threshold makes the verdict `pending` (credible, not yet significant: the
    incident's `for` clock starts there). Failures are not given that head start: one failure in
    a short horizon already reaches p < hold_p_value, and background failures would keep errors
    pending all the time. Once pending or under way a regression is judged only on horizons
    covering half of it, counts need a new event to confirm it, and a long horizon stops
    counting as soon as the latest samples contradict it, so that an ended regression ages out
    in seconds, not a window.
    """
    cutoff = now - settings.window
    base = _by_tick(baseline, cutoff)
    cand = _by_tick(candidate, cutoff)
    base_ticks = sorted(base)
    cand_ticks = sorted(cand)
    ticks = sorted(base.keys() & cand.keys())

    base_log = _logs(base, base_ticks)
    cand_log = _logs(cand, cand_ticks)
    base_sorted = sorted([base[t].latency for t in base_log])
    cand_sorted = sorted([cand[t].latency for t in cand_log])
    figures = Figures(
        baseline_samples=len(base),
        candidate_samples=len(cand),
        pairs=len(ticks),
        baseline_p50=quantile(base_sorted, 0.5),
        baseline_p95=quantile(base_sorted, 0.95),
        candidate_p50=quantile(cand_sorted, 0.5),
        candidate_p95=quantile(cand_sorted, 0.95),
        baseline_error_ratio=1 - len(base_sorted) / len(base) if base else math.nan,
        candidate_error_ratio=1 - len(cand_sorted) / len(cand) if cand else math.nan,
    )

    down = _down(cand_ticks, cand, base, settings, previous, now)
    errors = _decide(
        "errors",
        _errors(
            [base[t].ok for t in ticks],
            [cand[t].ok for t in ticks],
            [cand[t].t for t in ticks],
            settings,
        ),
        [cand[t].t for t in ticks],
        settings,
        previous,
        now,
    )
    both_ok = [t for t in ticks if t in base_log and t in cand_log]
    latency = _decide(
        "latency",
        _latency(
            [cand_log[t] - base_log[t] for t in both_ok],
            [cand[t].latency for t in both_ok],
            [cand[t].t for t in both_ok],
            list(base_log.values()),
            base_sorted,
            settings,
        ),
        [cand[t].t for t in both_ok],
        settings,
        previous,
        now,
        may_pend=True,
    )
    return Evaluation(at=now, down=down, errors=errors, latency=latency, figures=figures)


def _by_tick(samples: Sequence[Sample], cutoff: float) -> dict[int, Sample]:
    # the window already trims, but the judge must not depend on how promptly it was told to
    return {s.tick: s for s in samples if s.t >= cutoff}


def _logs(samples: dict[int, Sample], ticks: list[int]) -> dict[int, float]:
    """ln(latency) of the successful probes, in tick order: latencies compare as ratios."""
    ok = [t for t in ticks if samples[t].ok]
    # a zero duration (a coarse clock) must not break the logarithm
    return dict(zip(ok, map(math.log, [samples[t].latency or 1e-6 for t in ok]), strict=True))


@lru_cache(maxsize=1024)
def horizons(n: int, dense: bool = False) -> tuple[int, ...]:
    """The latest 1, 2, 4, ... pairs and all n of them: steps show at once, drifts over time.

    `dense` adds the midpoints (3, 6, 12, ...): failures come one at a time, and a horizon that
    starts near the onset of an error regression is worth the extra chances of a fluke.
    """
    found = []
    h = 1
    while h < n:
        found.append(h)
        if dense and h >= 2 and h + h // 2 < n:
            found.append(h + h // 2)
        h *= 2
    if n > 0:
        found.append(n)
    return tuple(found)


@dataclass(frozen=True, slots=True)
class _Evidence:
    p_value: float
    test: str
    horizon: int
    estimate: float
    threshold: float
    # probe time of the latest event a count rests on (infinite: every pair is evidence)
    latest: float = math.inf


@dataclass(frozen=True, slots=True)
class _Found:
    """Evidence per horizon still in force (None: too few samples), and what to report when
    nothing stands out."""

    evidence: list[_Evidence] | None
    fallback: _Evidence


_TOO_FEW = _Found(None, _Evidence(math.nan, "too few samples", 0, math.nan, math.nan))


def _since(signal: str, seen: bool, previous: Evaluation | None, now: float) -> float | None:
    """When the regression (or its pending evidence) `seen` now was first seen; None if not."""
    if not seen:
        return None
    before = previous.verdict(signal) if previous is not None else None
    if before is not None and (before.regressed or before.pending) and before.since is not None:
        return before.since
    return now


def _decide(
    signal: str,
    found: _Found,
    times: list[float],
    settings: JudgeSettings,
    previous: Evaluation | None,
    now: float,
    may_pend: bool = False,
) -> Verdict:
    """Turn per-horizon evidence into a verdict, with the hysteresis of the previous one.

    A regression starts at p < 1 - confidence and holds while p < hold_p_value. With
    `may_pend`, evidence short of that (p < hold_p_value, the estimate beyond the threshold)
    makes the verdict `pending`, for as long as it stays that strong; from the first pending
    verdict on, as for an ongoing regression, only horizons covering half of the pairs since
    then count, so a lucky pair or two cannot keep it pending (or confirm it) for long.
    """
    if found.evidence is None:
        return Verdict(
            signal=signal,
            state=State.INCONCLUSIVE,
            significant=False,
            p_value=math.nan,
            test="too few samples",
            horizon=len(times),
            estimate=math.nan,
            threshold=math.nan,
        )
    before = previous.verdict(signal) if previous is not None else None
    was_regressed = before is not None and before.regressed
    # pending or regressed: judged on horizons covering half of it since it was first seen
    since = before.since if before is not None and (was_regressed or before.pending) else None
    candidates = found.evidence
    if since is not None:
        seen = len(times) - bisect_left(times, since)  # pairs probed since it was first seen
        shortest = min(math.ceil(seen / 2), ONGOING_MIN_PAIRS, len(times))
        candidates = [e for e in candidates if e.horizon >= shortest]
    best = min(candidates, key=lambda e: e.p_value, default=found.fallback)
    if best.p_value >= found.fallback.p_value:
        best = found.fallback
    # A count does not hold by itself: a burst long gone stays in the horizon. To confirm an
    # ongoing regression, count evidence needs an event since it was first seen.
    fresh = [e for e in candidates if since is None or e.latest >= since]
    confirmed = min(fresh, key=lambda e: e.p_value, default=found.fallback)
    significant = confirmed.p_value < settings.alpha
    if significant:
        best = confirmed
    p = best.p_value
    regressed = significant or (was_regressed and p < settings.hold_p_value)
    # Credible but not yet significant: the incident's `for` clock may start here.
    pending = (
        may_pend and not regressed and p < settings.hold_p_value and best.estimate > best.threshold
    )
    return Verdict(
        signal=signal,
        state=State.REGRESSED if regressed else State.OK,
        significant=significant,
        p_value=p,
        test=best.test,
        horizon=best.horizon,
        estimate=best.estimate,
        threshold=best.threshold,
        since=_since(signal, regressed or pending, previous, now),
        pending=pending,
    )


def _down(
    cand_ticks: list[int],
    cand: dict[int, Sample],
    base: dict[int, Sample],
    settings: JudgeSettings,
    previous: Evaluation | None,
    now: float,
) -> Verdict:
    streak = 0
    for t in reversed(cand_ticks):
        if cand[t].ok:
            break
        streak += 1
    needed = _down_needed(cand_ticks[len(cand_ticks) - streak :], base, settings)
    if len(cand_ticks) < settings.down_after:
        state = State.INCONCLUSIVE
    else:
        state = State.REGRESSED if streak >= needed else State.OK
    return Verdict(
        signal="down",
        state=state,
        significant=state is State.REGRESSED,
        p_value=math.nan,
        test="consecutive failures",
        horizon=streak,
        estimate=float(streak),
        threshold=needed,
        since=_since("down", state is State.REGRESSED, previous, now),
    )


def _down_needed(
    streak_ticks: list[int], base: dict[int, Sample], settings: JudgeSettings
) -> float:
    """Consecutive candidate failures that make it down: down_after, unless the baseline fails too.

    When the baseline itself fails often (or failed at the same moments), a run of down_after
    failures is what a platform like it shows by chance, not a candidate outage: the run must
    then be long enough that a platform failing like the baseline (plus the tolerated increase)
    would show one in a window less often than 1 - confidence. Infinite when the baseline
    fails everything: a shared outage is not the candidate's.
    """
    ratio = sum(not s.ok for s in base.values()) / len(base) if base else 0.0
    same_time = [base[t].ok for t in streak_ticks if t in base]
    together = same_time.count(False)
    if together > 1:
        # one baseline failure among them is background; more mean both fail together
        ratio = max(ratio, (together - 1) / (len(same_time) - 1))
    chance = ratio + settings.errors_max_increase
    if chance >= 1.0:
        return math.inf
    n = settings.down_after
    if chance <= 0.0:
        return float(n)
    # a window holds about len(base) / n separate chances for a run of n
    while chance**n * len(base) / n >= settings.alpha:
        n += 1
    return float(n)


def _quiet(events: list[bool], value: bool) -> int:
    """Pairs since the last one equal to `value`."""
    for i, v in enumerate(reversed(events)):
        if v is value:
            return i
    return len(events)


def _stopped(quiet: int, rate: float) -> bool:
    """Whether `quiet` pairs without an event say that events at `rate` have stopped."""
    return (1.0 - rate) ** quiet < QUIET_P


def _errors(
    base_ok: list[bool], cand_ok: list[bool], times: list[float], settings: JudgeSettings
) -> _Found:
    """Failure evidence per horizon, from the outcomes of paired probes (and their times)."""
    n = len(cand_ok)
    if n < settings.min_samples:
        return _TOO_FEW
    # suffix sums: cand_fail[h] = candidate failures among the latest h pairs
    cand_fail = [0, *accumulate(not ok for ok in reversed(cand_ok))]
    base_fail = [0, *accumulate(not ok for ok in reversed(base_ok))]
    # A burst of consecutive failures is one event: a blip of 503s is not several independent
    # pieces of evidence (and a burst of down_after or more is the down signal's business).
    starts = [not ok and (i == 0 or cand_ok[i - 1]) for i, ok in enumerate(cand_ok)]
    cand_runs = [0, *accumulate(reversed(starts))]
    quiet = _quiet(cand_ok, False)
    latest = times[n - 1 - quiet] if quiet < n else -math.inf
    base_total = base_fail[n]
    # smoothed, so that a baseline without a single failure is not taken to be perfect
    window_rate = (base_total + 0.5) / (n + 1)
    tolerance = settings.errors_max_increase
    fallback = _Evidence(1.0, "binomial", n, (cand_fail[n] - base_total) / n, tolerance)
    found = []
    for h in horizons(n, dense=True):
        kc = cand_fail[h]
        kb = base_fail[h]
        span = min(n, max(h, RECENT_BASELINE_PAIRS))
        reference = max(window_rate, (base_fail[span] + 0.5) / (span + 1))
        increase = kc / h - reference
        if increase <= tolerance:
            continue
        # a run cut by the horizon's start still counts once
        events = cand_runs[h] + (h < n and not cand_ok[n - h] and not cand_ok[n - h - 1])
        if _stopped(quiet, events / h):
            continue
        # Is the candidate failing more often than the baseline plus the tolerance? And did
        # the baseline not fail alike over the same probes?
        p_rate = binom_sf(events, h, min(1.0, reference + tolerance))
        p_same = fisher_greater(kc, h - kc, kb, h - kb)
        p = max(p_rate, p_same / SAME_PERIOD_SLACK)
        found.append(_Evidence(p, "binomial", h, increase, tolerance, latest))
    return _Found(found, fallback)


def _latency(
    diffs: list[float],
    cand: list[float],
    times: list[float],
    history: list[float],
    history_sorted: list[float],
    settings: JudgeSettings,
) -> _Found:
    """Latency evidence per horizon.

    `diffs` are ln(candidate) - ln(baseline) of the pairs where both succeeded, oldest first,
    `cand` the candidate's latencies of those pairs and `times` their probe times, `history`
    the baseline's ln latencies over the window in tick order, `history_sorted` its latencies.
    """
    n = len(diffs)
    m = len(history)
    if n < settings.min_samples or m < settings.min_samples:
        return _TOO_FEW

    # The noise comes from the baseline alone, so that a step on the candidate cannot widen
    # the yardstick it is measured with; upper bounds, since one short window of autocorrelated
    # noise can be calmer than the next.
    mean_history = sum(history) / m
    sigma = math.sqrt(sum((x - mean_history) ** 2 for x in history) / (m - 1))
    rho_hat = lag1_autocorrelation(history)
    rho = min(MAX_AUTOCORRELATION, max(0.0, rho_hat + math.sqrt(max(0.0, 1 - rho_hat**2) / m)))
    effective = max(2.0, m * (1.0 - rho) / (1.0 + rho))
    sigma *= 1.0 + SIGMA_MARGIN_Z / math.sqrt(2.0 * (effective - 1.0))
    sigma = max(sigma, MIN_LOG_SIGMA)
    var_pair = 2.0 * sigma * sigma  # a difference holds two draws of that noise

    max_ratio = settings.latency_max_ratio
    min_increase = settings.latency_min_increase
    median = quantile(history_sorted, 0.5)
    tolerance = max(math.log(max_ratio), math.log1p(min_increase / max(median, 1e-9)))

    # Pairs are differences at the same tick: whatever slows both platforms at once (a shared
    # database) cancels out.
    diffs_suffix = [0.0, *accumulate(reversed(diffs))]

    # Tail: how many candidate latencies exceed max_ratio x the baseline's high quantile,
    # against a candidate exactly max_ratio times slower than the baseline. The exceedance test
    # is exact for that boundary, including the quantile's own uncertainty. Runs of consecutive
    # exceedances count once, and autocorrelation shrinks the baseline to its effective size.
    reference = max(1, int(effective))
    rank = max(1, round(reference * (1.0 - TAIL_QUANTILE)))
    high = history_sorted[m - max(1, round(m * (1.0 - TAIL_QUANTILE)))]
    limit = max(max_ratio * high, high + min_increase)
    exceed = [c > limit for c in cand]
    starts = [e and not before for e, before in zip(exceed, [False, *exceed], strict=False)]
    runs_suffix = [0, *accumulate(reversed(starts))]
    quiet = _quiet(exceed, True)
    latest = times[n - 1 - quiet] if quiet < n else -math.inf

    found = []
    shorter: list[tuple[int, float, float]] = []  # (pairs, mean, variance) of recent horizons
    for h in horizons(n):
        mean = diffs_suffix[h] / h
        var = var_pair * ar1_variance_factor(h, rho) / h
        # The latest pairs plainly faster than this horizon's: whatever it holds, slow pairs
        # or slow tails, is over.
        if any(
            norm_sf((mean - r_mean) / math.sqrt(max(r_var * (1.0 - r / h), 1e-12)))
            < CONTRADICTION_P
            for r, r_mean, r_var in shorter
        ):
            continue
        if h >= RECENT_PAIRS_LATENCY:
            shorter.append((h, mean, var))
        p = norm_sf((mean - tolerance) / math.sqrt(var))
        found.append(_Evidence(p, "paired log-ratio", h, math.exp(mean), math.exp(tolerance)))

        first = n - h
        # a run cut by the horizon's start still counts once
        runs = runs_suffix[h] + (exceed[first] and first > 0 and exceed[first - 1])
        if h < TAIL_MIN_PAIRS or runs == 0 or _stopped(quiet, runs / h):
            continue
        p = min(1.0, exceedance_sf(runs, reference, rank, h) * TAIL_SHARE)
        found.append(_Evidence(p, "tail exceedances", h, runs / h, rank / (reference + 1), latest))
    fallback = _Evidence(
        1.0, "paired log-ratio", n, math.exp(diffs_suffix[n] / n), math.exp(tolerance)
    )
    return _Found(found, fallback)
