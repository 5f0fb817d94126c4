"""Is it safe to take the next Route53 step? GO / WAIT / NO-GO from a step's evidence and the clock.

Pure: the step's facts, the time and the settings in, a verdict with its reasons out.
(CONTRACT: the types below are what the ledger, the page, the API, Slack and `cutover report`
build on; `readiness()` and the bounds are implemented in this module.)
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from statistics import NormalDist
from typing import Any, Literal

from exporter.judging.evidence import Distribution, Evidence, Side

__all__ = [
    "Bound",
    "Combination",
    "IncidentNote",
    "Readiness",
    "ReadinessSettings",
    "StepFacts",
    "SubjectJudgement",
    "SubjectReadiness",
    "Verdict",
    "combine",
    "counts_requests",
    "error_increase",
    "held",
    "judge_subject",
    "latency_ratios",
    "newcombe_difference",
    "order_ranks",
    "pts",
    "quantile_probabilities",
    "readiness",
    "span",
    "wilson",
    "z_value",
]

ChangedBy = Literal["shift", "person", "unknown"]


class Verdict(StrEnum):
    GO = "GO"
    WAIT = "WAIT"
    NO_GO = "NO-GO"


@dataclass(frozen=True, slots=True)
class ReadinessSettings:
    """The config's `readiness` section, with the judge's tolerances it tests against."""

    hold: float = 1800.0  # seconds the step must last
    min_probes: int = 50  # per side and check
    min_requests: int = 500  # per side and route group, where traffic is configured
    confidence: float = 0.95  # one-sided level of the upper bounds
    errors_max_increase: float = 0.02  # tolerated candidate - baseline error ratio (fraction)
    latency_max_ratio: float = 1.5  # tolerated candidate / baseline latency at p50 and p95

    def __post_init__(self) -> None:
        problems = []
        if not self.hold >= 0:
            problems.append("hold must not be negative")
        if self.min_probes < 0 or self.min_requests < 0:
            problems.append("min_probes and min_requests must not be negative")
        if not 0.5 < self.confidence < 1.0:
            problems.append("confidence must be in (0.5, 1)")
        if not 0 <= self.errors_max_increase < 1:
            problems.append("errors_max_increase must be in [0, 1)")
        if not self.latency_max_ratio >= 1:
            problems.append("latency_max_ratio must be at least 1")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True, slots=True)
class IncidentNote:
    """An incident seen during the step (fired, or still pending/firing)."""

    id: str
    check: str
    signal: str
    phase: Literal["pending", "firing", "resolved"]
    started_at: float  # unix seconds
    fired_at: float | None = None
    resolved_at: float | None = None
    figures: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StepFacts:
    """What the ledger knows of one record's current step."""

    record: str
    started_at: float  # unix seconds
    shares: Mapping[str, float]  # platform -> share in [0, 1]
    changed_by: ChangedBy
    subjects: Sequence[Evidence]  # one per check guarding the record, and per route group
    incidents: Sequence[IncidentNote]  # every incident that fired or was open during the step
    traffic: bool = False  # real traffic is configured for this record: requests are required
    # (only while every platform has a share: a side the weights give nothing has no users)
    next_share: float | None = None  # the candidate's next planned share in [0, 1], if any
    dry_run: bool = False  # the step is what a dry-run shift would have written


@dataclass(frozen=True, slots=True)
class Bound:
    """A one-sided upper confidence bound tested against a tolerance.

    `ok` is None when the figure is not evidence yet (too few samples for this quantile).
    `lower` is the one-sided lower bound at the same level: beyond the tolerance, the candidate
    is worse with confidence (NO-GO).
    """

    estimate: float  # the point estimate (difference in fraction, or ratio)
    upper: float  # the upper confidence bound
    tolerated: float
    ok: bool | None
    lower: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": _finite(self.estimate),
            "lower": _finite(self.lower),
            "upper": _finite(self.upper),
            "tolerated": _finite(self.tolerated),
            "ok": self.ok,
        }


@dataclass(frozen=True, slots=True)
class SubjectReadiness:
    """One subject's figures over the step, both sides, and its bounds."""

    subject: str
    kind: Literal["probes", "requests"]
    counts: tuple[float, float]  # baseline, candidate
    failures: tuple[float, float]
    error_ratios: tuple[float, float]
    latency: Mapping[str, tuple[float, float]]  # "p50", "p95", "p99" -> (baseline, candidate) s
    errors: Bound | None  # None: no data on a side
    latency_ratio: Mapping[str, Bound]  # "p50", "p95", "p99" (p99 ok=None until evidence)
    missing: tuple[str, ...]  # e.g. "310 more candidate requests"
    # False for real requests when the record has no traffic configured, or a side has no share
    # of it (at 0% the candidate has no users): shown, not judged
    counted: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "kind": self.kind,
            "counted": self.counted,
            "counts": _pair(self.counts),
            "failures": _pair(self.failures),
            "error_ratios": _pair(self.error_ratios),
            "latency": {q: _pair(v) for q, v in self.latency.items()},
            "errors": None if self.errors is None else self.errors.to_dict(),
            "latency_ratio": {q: b.to_dict() for q, b in self.latency_ratio.items()},
            "missing": list(self.missing),
        }


@dataclass(frozen=True, slots=True)
class Readiness:
    record: str
    verdict: Verdict
    reasons: tuple[str, ...]  # human sentences, most important first
    step: StepFacts
    held_for: float  # seconds since the step started
    hold: float
    subjects: tuple[SubjectReadiness, ...]  # the KEEP_SUBJECTS most telling of them
    subjects_total: int = 0  # how many subjects were judged
    probes: tuple[float, float] = (0.0, 0.0)  # baseline, candidate: over every check
    requests: tuple[float, float] = (0.0, 0.0)  # the platform-wide route group's (else all)

    def to_dict(self) -> dict[str, Any]:
        """The API's record entry (GET /api/v1/readiness), figures included; JSON-safe (no NaN)."""
        step = self.step
        return {
            "record": self.record,
            "verdict": self.verdict.value,
            "reasons": list(self.reasons),
            "step": {
                "started_at": _finite(step.started_at),
                "shares": {k: _finite(v) for k, v in step.shares.items()},
                "changed_by": step.changed_by,
            },
            "next_share": None if step.next_share is None else _finite(step.next_share),
            "held_for_seconds": _finite(self.held_for),
            "hold_seconds": _finite(self.hold),
            "dry_run": step.dry_run,
            "incidents": [
                {
                    "check": i.check,
                    "signal": i.signal,
                    "phase": i.phase,
                    "started_at": _finite(i.started_at),
                    "fired_at": None if i.fired_at is None else _finite(i.fired_at),
                    "resolved_at": None if i.resolved_at is None else _finite(i.resolved_at),
                }
                for i in step.incidents
            ],
            "subjects": [s.to_dict() for s in self.subjects],
            "subjects_total": self.subjects_total,
            "probes": _pair(self.probes),
            "requests": _pair(self.requests),
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _pair(values: tuple[float, float]) -> dict[str, float | None]:
    return {"baseline": _finite(values[0]), "candidate": _finite(values[1])}


# ---------------------------------------------------------------------------------------------
# The bounds (standard library only; tests/test_readiness.py holds them against scipy)

QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
# the quantiles that decide; p99 joins them once each side has this many samples beyond it
DECIDING = ("p50", "p95")
P99_MIN_TAIL = 10.0
# both sides' error ratio at least this over the step: an outage, not evidence either way
OUTAGE_ERROR_RATIO = 0.5


def z_value(confidence: float) -> float:
    """Phi^-1(confidence): the z of a one-sided bound at that level."""
    return NormalDist().inv_cdf(confidence)


def wilson(successes: float, n: float, z: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion, each side at the one-sided level of `z`.

    Counts may be fractional (effective sample sizes). (nan, nan) for n <= 0.
    """
    if not n > 0:
        return (math.nan, math.nan)
    p = min(1.0, max(0.0, successes / n))
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe_difference(
    k1: float, n1: float, k2: float, n2: float, z: float
) -> tuple[float, float, float]:
    """p1 - p2 with Newcombe's hybrid score interval (method 10, Newcombe 1998).

    Returns (estimate, lower, upper), each bound one-sided at the level of `z`.
    """
    if not (n1 > 0 and n2 > 0):
        return (math.nan, math.nan, math.nan)
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    delta = p1 - p2
    lower = delta - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    upper = delta + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return (delta, lower, upper)


# Above this many (effective) samples the order statistics' ranks come from Wilson's interval,
# within a few thousandths of the exact level there; below, from the binomial itself.
EXACT_RANKS_UP_TO = 50_000


def quantile_probabilities(q: float, n: float, level: float) -> tuple[float, float]:
    """The probabilities whose sample quantiles bound the true q-quantile, each one-sided at
    `level`, from n independent samples of any distribution (0 and inf: no such sample).

    The count of samples below the true q-quantile is binomial(n, q): the bounds are the order
    statistics at its quantiles (exact ranks up to EXACT_RANKS_UP_TO samples, Wilson's interval
    beyond). Wilson alone would claim too much in the tail: for p95 from 100 samples its upper
    probability holds 88% of the time instead of 97.5%, and from 50 samples even the largest
    is too small to bound p95 at 97.5%.
    """
    if not n >= 1:
        return (0.0, math.inf)
    if n > EXACT_RANKS_UP_TO:
        return wilson(q * n, n, z_value(level))
    whole = math.floor(n)  # fewer samples: a wider, safe interval
    low, high = order_ranks(q, whole, level)
    return (low / whole, math.inf if high > whole else high / whole)


@lru_cache(maxsize=4096)
def order_ranks(q: float, n: int, level: float) -> tuple[int, int]:
    """1-based ranks (low, high) of the order statistics of n samples that bound the true
    q-quantile from below and above, each with probability at least `level`.

    low = 0: no sample is low enough (the bound is 0); high = n + 1: none is high enough.
    With B ~ binomial(n, q) the samples below the quantile, X_(j) >= it when B <= j - 1:
    high is the smallest j with P(B <= j - 1) >= level, low the largest with P(B <= j - 1)
    <= 1 - level.
    """
    if not (0.0 < q < 1.0 and n >= 1):
        raise ValueError(f"order ranks need 0 < q < 1 and n >= 1, not q={q}, n={n}")
    odds = q / (1.0 - q)
    mode = min(n, math.floor((n + 1) * q))
    peak = math.exp(
        math.lgamma(n + 1)
        - math.lgamma(mode + 1)
        - math.lgamma(n - mode + 1)
        + mode * math.log(q)
        + (n - mode) * math.log1p(-q)
    )
    # the pmf from the mode outwards, until it is negligible beside the peak
    below: list[float] = []
    term, k = peak, mode
    while k > 0:
        term *= k / (n - k + 1) / odds
        k -= 1
        if term < peak * 1e-18:
            break
        below.append(term)
    first = mode - len(below)
    pmf = [*reversed(below), peak]
    term, k = peak, mode
    while k < n:
        term *= (n - k) / (k + 1) * odds
        k += 1
        if term < peak * 1e-18:
            break
        pmf.append(term)
    total = math.fsum(pmf)
    low, high = 0, n + 1
    cdf = 0.0
    for i, mass in enumerate(pmf):
        cdf += mass / total
        k = first + i
        if cdf <= 1.0 - level:
            low = k + 1
        if cdf >= level:
            high = k + 1
            break
    return (low, high)


def _quantile(distribution: Distribution, p: float) -> float:
    if p <= 0.0:
        return 0.0
    if math.isinf(p):
        return math.inf
    return distribution.quantile(p)


def error_increase(baseline: Side, candidate: Side, settings: ReadinessSettings) -> Bound | None:
    """candidate - baseline error ratio, bounded on the effective sample sizes; None without data."""
    if not (baseline.count > 0 and candidate.count > 0):
        return None
    nb, nc = baseline.n_eff_errors(), candidate.n_eff_errors()
    if not (nb > 0 and nc > 0):
        return None
    # the observed ratio kept, its weight discounted for bursts
    kb = baseline.failures * nb / baseline.count
    kc = candidate.failures * nc / candidate.count
    estimate, lower, upper = newcombe_difference(kc, nc, kb, nb, z_value(settings.confidence))
    tolerated = settings.errors_max_increase
    return Bound(estimate, upper, tolerated, upper < tolerated, lower)


def _has_latency(side: Side) -> bool:
    return side.latency is not None and side.latency.total > 0


def latency_ratios(
    baseline: Side, candidate: Side, settings: ReadinessSettings
) -> dict[str, Bound]:
    """candidate / baseline at p50, p95 and p99, bounded from each side's histogram.

    Each side's quantile bound is one-sided at 1 - (1 - confidence)/2 (Bonferroni over the two
    sides), so the ratio's bound holds at `confidence`. Empty without latency on a side.
    """
    b, c = baseline.latency, candidate.latency
    if b is None or c is None or not (b.total > 0 and c.total > 0):
        return {}
    nb, nc = baseline.n_eff_latency(), candidate.n_eff_latency()
    level = 1.0 - (1.0 - settings.confidence) / 2.0
    tolerated = settings.latency_max_ratio
    out: dict[str, Bound] = {}
    for name, q in QUANTILES.items():
        b_lo, b_hi = quantile_probabilities(q, nb, level)
        c_lo, c_hi = quantile_probabilities(q, nc, level)
        estimate = _ratio(c.quantile(q), b.quantile(q))
        upper = _ratio(_quantile(c, c_hi), _quantile(b, b_lo))
        lower = _ratio(_quantile(c, c_lo), _quantile(b, b_hi))
        ok: bool | None = upper < tolerated
        if name not in DECIDING and min(nb, nc) * (1.0 - q) < P99_MIN_TAIL:
            ok = None
        out[name] = Bound(estimate, upper, tolerated, ok, lower)
    return out


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, inf over 0 (an upper bound with nothing under it)."""
    if math.isnan(numerator) or math.isnan(denominator) or math.isinf(denominator):
        return 0.0 if math.isinf(denominator) and math.isfinite(numerator) else math.nan
    if denominator <= 0:
        return math.inf
    return numerator / denominator


# ---------------------------------------------------------------------------------------------
# Wording


def pts(x: float) -> str:
    """A difference of ratios in percentage points: "+0.4 pts", "-1.2 pts", "+2 pts"."""
    return f"{_pts_number(x)} pts"


def _pts_number(x: float, digits: int = 1) -> str:
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return f"{round(x * 100, digits) + 0.0:+g}"  # + 0.0: no "-0"


def _distinct(
    value: float, against: float, show: Callable[[float, int], str], start: int = 1
) -> str:
    """`value` with enough digits not to read as `against` when it differs from it."""
    text = show(value, start)
    for digits in range(start, 4):
        text = show(value, digits)
        if value == against or text != show(against, digits):
            return text
    return text


def _times(x: float, digits: int = 1) -> str:
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "unbounded"
    return f"{x:.{digits}f}x"


def _number(x: float) -> str:
    """7 200, 51 200: thousands apart, whole."""
    return f"{math.ceil(x - 1e-9):,}".replace(",", " ")


def _percent(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 100:.2g}%" if x < 0.01 else f"{x * 100:.1f}%"


def _more(seconds: float) -> str:
    """What is left, rounded up: "40 more seconds", "12 more minutes", "1 h 5 min more"."""
    s = max(1, math.ceil(seconds - 1e-9))
    if s < 60:
        return f"{s} more second{'s' if s != 1 else ''}"
    m = math.ceil(s / 60)
    if m < 60:
        return f"{m} more minute{'s' if m != 1 else ''}"
    h, m = divmod(m, 60)
    return f"{h} h {m} min more" if m else f"{h} h more"


def span(seconds: float) -> str:
    """How long something lasted: "40 s", "3 min", "1 h 5 min"."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    m = round(s / 60)
    if m < 60:
        return f"{m} min"
    h, m = divmod(m, 60)
    return f"{h} h {m} min" if m else f"{h} h"


def _clock(at: float, now: float) -> str:
    when = datetime.fromtimestamp(at, UTC)
    if when.date() == datetime.fromtimestamp(now, UTC).date():
        return when.strftime("%H:%M UTC")
    return when.strftime("%Y-%m-%d %H:%M UTC")


_SIGNAL_WORDS = {
    "down": "candidate down",
    "errors": "errors regression",
    "latency": "latency regression",
}


def _figure(figures: Mapping[str, Any], key: str) -> float:
    value = figures.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _incident_figures(incident: IncidentNote) -> str:
    figures = incident.figures or {}
    if incident.signal == "latency":
        parts = [
            f"{name} {_times(_figure(figures, f'{name}_ratio'))}"
            for name in ("p95", "p50")
            if not math.isnan(_figure(figures, f"{name}_ratio"))
        ]
        return ", ".join(parts)
    delta = _figure(figures, "error_ratio_delta")
    cand = _figure(figures, "candidate_error_ratio")
    base = _figure(figures, "baseline_error_ratio")
    parts = []
    if incident.signal == "errors" and not math.isnan(delta):
        parts.append(pts(delta))
    if not (math.isnan(cand) or math.isnan(base)):
        parts.append(f"errors {_percent(cand)} vs {_percent(base)}")
    return ", ".join(parts)


def _incident_text(incident: IncidentNote, now: float) -> str:
    what = f"{_SIGNAL_WORDS.get(incident.signal, incident.signal)} on {incident.check}"
    if incident.phase == "pending" or incident.fired_at is None:
        text = f"{what} pending since {_clock(incident.started_at, now)}"
    elif incident.phase == "resolved" and incident.resolved_at is not None:
        text = (
            f"{what} fired {_clock(incident.fired_at, now)}, "
            f"resolved after {span(incident.resolved_at - incident.fired_at)}"
        )
    else:
        text = f"{what} firing since {_clock(incident.fired_at, now)}"
    figures = _incident_figures(incident)
    return f"{text} ({figures})" if figures else text


# ---------------------------------------------------------------------------------------------
# The verdict


@dataclass(slots=True)
class _Reasons:
    """Reasons by kind, gathered across subjects, then put in order of importance."""

    no_go: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    outage: list[str] = field(default_factory=list)
    hold: list[str] = field(default_factory=list)
    nothing: list[str] = field(default_factory=list)
    counts: list[str] = field(default_factory=list)
    latency: list[str] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)

    def waits(self) -> list[str]:
        return [
            *_few(self.pending),
            *_few(self.outage),
            *self.hold,
            *self.nothing,
            *_few(self.counts),
            *_few(self.latency),
            *_few(self.inconclusive),
        ]


# reasons of one kind beyond this many are summed up in one line: with thousands of checks a
# verdict must still read in a glance (each subject keeps its own in `missing`)
REASONS_PER_KIND = 6


def _few(reasons: list[str]) -> list[str]:
    if len(reasons) <= REASONS_PER_KIND:
        return reasons
    rest = len(reasons) - (REASONS_PER_KIND - 1)
    return [*reasons[: REASONS_PER_KIND - 1], f"and {_number(rest)} more like these"]


def _judge_subject(
    ev: Evidence,
    counted: bool,
    settings: ReadinessSettings,
    reasons: _Reasons,
) -> SubjectReadiness:
    base, cand = ev.baseline, ev.candidate
    errors = error_increase(base, cand, settings)
    ratios = latency_ratios(base, cand, settings)
    latency = {
        name: (
            base.latency.quantile(q) if base.latency is not None else math.nan,
            cand.latency.quantile(q) if cand.latency is not None else math.nan,
        )
        for name, q in QUANTILES.items()
    }
    missing: list[str] = []
    if not counted:
        return _subject(ev, errors, ratios, latency, missing, counted=False)

    quiet = False

    def add(bucket: list[str], text: str) -> None:
        if not (quiet and (bucket is reasons.inconclusive or bucket is reasons.latency)):
            bucket.append(text)
        missing.append(text)

    outage = (
        base.count > 0
        and cand.count > 0
        and base.error_ratio >= OUTAGE_ERROR_RATIO
        and cand.error_ratio >= OUTAGE_ERROR_RATIO
    )
    if outage:
        add(
            reasons.outage,
            f"both platforms failing on {ev.subject}: an outage, not evidence for the candidate",
        )

    minimum = settings.min_probes if ev.kind == "probes" else settings.min_requests
    unit = "probe" if ev.kind == "probes" else "request"
    # too few samples say so once: the bounds they cannot give yet stay the subject's own
    # detail (the page, `cutover report`), not more reasons of the verdict
    quiet = any(max(1, minimum) > side.count for side in (cand, base))
    for side_name, side in (("candidate", cand), ("baseline", base)):
        short = max(1, minimum) - side.count
        if short > 0:
            n = math.ceil(short - 1e-9)
            add(
                reasons.counts,
                f"{_number(n)} more {side_name} {unit}{'s' if n != 1 else ''} on {ev.subject}",
            )

    if outage:
        # the bounds of an outage say nothing of the candidate: neither worded nor judged
        return _subject(ev, errors, ratios, latency, missing)
    tolerated_x = _times(settings.latency_max_ratio, _digits(settings.latency_max_ratio))
    if errors is not None and errors.lower > errors.tolerated:
        reasons.no_go.append(
            f"errors regression on {ev.subject}: {pts(errors.estimate)} "
            f"(at least {_distinct(errors.lower, errors.tolerated, _pts_number)} pts; "
            f"{_percent(cand.error_ratio)} vs {_percent(base.error_ratio)}), "
            f"tolerated {pts(errors.tolerated)}"
        )
    elif errors is not None and not errors.ok:
        add(
            reasons.inconclusive,
            f"evidence inconclusive on {ev.subject}: the error bound is "
            f"{_distinct(errors.upper, errors.tolerated, _pts_number)} pts, "
            f"tolerated {_pts_number(errors.tolerated)}",
        )
    lacking = [
        name
        for name, side in (("candidate", cand), ("baseline", base))
        if side.count > 0 and not _has_latency(side)
    ]
    if lacking:
        who = "either platform" if len(lacking) == 2 else f"the {lacking[0]}"
        add(reasons.latency, f"no latency from {who} on {ev.subject} yet")
    for name, bound in ratios.items():
        if bound.ok is not None and bound.lower > bound.tolerated:
            reasons.no_go.append(
                f"latency regression on {ev.subject}: {name} {_times(bound.estimate)} "
                f"(at least {_distinct(bound.lower, bound.tolerated, _times)}), "
                f"tolerated {tolerated_x}"
            )
        elif bound.ok is False and math.isinf(bound.upper):
            add(
                reasons.inconclusive,
                f"evidence inconclusive on {ev.subject}: too few latencies to bound the "
                f"{name} ratio, tolerated {tolerated_x}",
            )
        elif bound.ok is False:
            add(
                reasons.inconclusive,
                f"evidence inconclusive on {ev.subject}: the {name} ratio bound is "
                f"{_distinct(bound.upper, bound.tolerated, _times, start=2)}, "
                f"tolerated {tolerated_x}",
            )
    return _subject(ev, errors, ratios, latency, missing)


def _subject(
    ev: Evidence,
    errors: Bound | None,
    ratios: Mapping[str, Bound],
    latency: Mapping[str, tuple[float, float]],
    missing: Sequence[str],
    counted: bool = True,
) -> SubjectReadiness:
    base, cand = ev.baseline, ev.candidate
    return SubjectReadiness(
        ev.subject,
        ev.kind,
        (base.count, cand.count),
        (base.failures, cand.failures),
        (base.error_ratio, cand.error_ratio),
        latency,
        errors,
        ratios,
        tuple(missing),
        counted=counted,
    )


def _digits(x: float) -> int:
    """Enough decimals to write a tolerance as configured: 1.5 -> 1, 1.25 -> 2."""
    for digits in (1, 2, 3):
        if abs(round(x, digits) - x) < 1e-9:
            return digits
    return 3


def _fired_during(incident: IncidentNote, started_at: float) -> bool:
    return incident.fired_at is not None and incident.fired_at >= started_at


@dataclass(frozen=True, slots=True)
class SubjectJudgement:
    """One subject judged: its figures and its reasons by kind.

    The clock plays no part: it holds until the subject's evidence grows, so a caller with many
    subjects may judge them a few at a time and `combine` them when all are done.
    """

    readiness: SubjectReadiness
    no_go: tuple[str, ...] = ()
    outage: tuple[str, ...] = ()
    counts: tuple[str, ...] = ()
    latency: tuple[str, ...] = ()
    inconclusive: tuple[str, ...] = ()


def counts_requests(facts: StepFacts) -> bool:
    """Whether real requests are judged: traffic is configured for the record and both sides
    get some of it (a side the weights give nothing has no users)."""
    return facts.traffic and all(share > 0 for share in facts.shares.values())


def judge_subject(ev: Evidence, counted: bool, settings: ReadinessSettings) -> SubjectJudgement:
    """Judge one subject; `counted` False shows its figures without judging them."""
    reasons = _Reasons()
    subject = _judge_subject(ev, counted, settings, reasons)
    return SubjectJudgement(
        subject,
        tuple(reasons.no_go),
        tuple(reasons.outage),
        tuple(reasons.counts),
        tuple(reasons.latency),
        tuple(reasons.inconclusive),
    )


def readiness(facts: StepFacts, now: float, settings: ReadinessSettings) -> Readiness:
    """The verdict on `facts` at `now`: pure, the clock is an argument."""
    requests = counts_requests(facts)
    judged = [judge_subject(ev, ev.kind == "probes" or requests, settings) for ev in facts.subjects]
    return combine(facts, now, settings, judged)


# a verdict keeps the figures of this many subjects, the most telling first (what decided it,
# then what is missing, then the worst ratios): with thousands of checks, memory for a few
KEEP_SUBJECTS = 25


def combine(
    facts: StepFacts,
    now: float,
    settings: ReadinessSettings,
    judged: Iterable[SubjectJudgement],
) -> Readiness:
    """The verdict from `facts`' incidents and hold and its subjects judged one by one (in the
    order of `facts.subjects`)."""
    combination = Combination(facts, settings)
    for j in judged:
        combination.add(j)
    return combination.result(now)


class Combination:
    """`combine`, fed a subject at a time: it keeps the reasons, the totals and the
    KEEP_SUBJECTS most telling subjects, so that a caller judging thousands of subjects a slice
    at a time holds no more than that."""

    def __init__(self, facts: StepFacts, settings: ReadinessSettings) -> None:
        self.facts, self.settings = facts, settings
        self.reasons = _Reasons()
        self._kept: list[tuple[tuple[bool, bool, float, float], int, SubjectReadiness]] = []
        self._n = 0
        self._probes = [0.0, 0.0]
        self._requests = [0.0, 0.0]
        self._whole: tuple[float, float] | None = None  # the platform-wide route group's
        self._counted = [0.0, 0.0]  # probes, requests of the subjects judged (both sides)

    def add(self, j: SubjectJudgement) -> None:
        r, reasons = j.readiness, self.reasons
        if j.no_go or j.outage or j.counts or j.latency or j.inconclusive:
            reasons.no_go.extend(j.no_go)
            reasons.outage.extend(j.outage)
            reasons.counts.extend(j.counts)
            reasons.latency.extend(j.latency)
            reasons.inconclusive.extend(j.inconclusive)
        totals = self._probes if r.kind == "probes" else self._requests
        totals[0] += r.counts[0]
        totals[1] += r.counts[1]
        if r.kind == "requests" and r.subject.endswith(":all"):
            self._whole = r.counts
        if r.counted:
            self._counted[r.kind != "probes"] += r.counts[0] + r.counts[1]
        key = (bool(j.no_go), bool(r.missing), _telling(r), _telling_errors(r))
        heapq.heappush(self._kept, (key, -self._n, r))
        if len(self._kept) > KEEP_SUBJECTS:
            heapq.heappop(self._kept)
        self._n += 1

    def result(self, now: float) -> Readiness:
        facts, settings, reasons = self.facts, self.settings, self.reasons
        held_for = now - facts.started_at
        waits_by_check: dict[str, list[str]] = {}
        incident_no_go: list[str] = []
        pending: list[str] = []
        for incident in facts.incidents:
            if _fired_during(incident, facts.started_at) or incident.phase == "firing":
                incident_no_go.append(_incident_text(incident, now))
            elif incident.phase == "pending":
                what = _SIGNAL_WORDS.get(incident.signal, incident.signal)
                text = f"{what} pending on {incident.check}"
                pending.append(text)
                waits_by_check.setdefault(incident.check, []).append(text)
        hold = [_more(settings.hold - held_for)] if held_for < settings.hold else []
        requests = counts_requests(facts)
        nothing = []
        if not any(ev.kind == "probes" or requests for ev in facts.subjects):
            nothing.append("nothing judged yet: no check guards this record")
        elif requests and not any(ev.kind == "requests" for ev in facts.subjects):
            nothing.append("no real requests recorded yet for this record")
        every = _Reasons(
            no_go=[*incident_no_go, *reasons.no_go],
            pending=pending,
            outage=reasons.outage,
            hold=hold,
            nothing=nothing,
            counts=reasons.counts,
            latency=reasons.latency,
            inconclusive=reasons.inconclusive,
        )
        subjects = [r for _, _, r in sorted(self._kept, key=lambda kept: -kept[1])]
        if waits_by_check:
            subjects = [
                replace(s, missing=(*waits_by_check[s.subject], *s.missing))
                if s.subject in waits_by_check
                else s
                for s in subjects
            ]
        waits = every.waits()
        if every.no_go:
            verdict, sentences = Verdict.NO_GO, [*_few(every.no_go), *waits]
        elif waits:
            verdict, sentences = Verdict.WAIT, waits
        else:
            verdict, sentences = Verdict.GO, [_summary(held_for, *self._counted)]
        whole = self._whole
        return Readiness(
            record=facts.record,
            verdict=verdict,
            reasons=tuple(sentences),
            step=facts,
            held_for=held_for,
            hold=settings.hold,
            subjects=tuple(subjects),
            subjects_total=self._n,
            probes=(self._probes[0], self._probes[1]),
            requests=whole if whole is not None else (self._requests[0], self._requests[1]),
        )


def held(verdict: Readiness, waits: Sequence[str]) -> Readiness:
    """`verdict` with reasons from elsewhere to wait (the vantages of an HA migration): a GO
    becomes a WAIT for them alone, a WAIT or a NO-GO adds them after its own."""
    if not waits:
        return verdict
    if verdict.verdict is Verdict.GO:
        return replace(verdict, verdict=Verdict.WAIT, reasons=tuple(waits))
    return replace(verdict, reasons=(*verdict.reasons, *waits))


def _telling(s: SubjectReadiness) -> float:
    b, c = s.latency.get("p95", (math.nan, math.nan))
    value = c / b if b > 0 else math.nan
    return value if math.isfinite(value) else -math.inf


def _telling_errors(s: SubjectReadiness) -> float:
    upper = s.errors.upper if s.errors is not None else math.nan
    return upper if math.isfinite(upper) else -math.inf


def _summary(held_for: float, probes: float, requests: float) -> str:
    evidence = f"{_number(probes)} probes"
    if requests:
        evidence += f" and {_number(requests)} requests"
    return f"held {span(held_for)}; {evidence}; every bound within tolerance"
