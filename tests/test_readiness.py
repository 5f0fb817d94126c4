"""The readiness verdict: its bounds against scipy, its verdicts on synthetic steps and clocks,
and properties over random step histories (GO never on too little evidence)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from exporter.judging.evidence import Evidence, Side
from exporter.judging.readiness import (
    IncidentNote,
    Readiness,
    ReadinessSettings,
    StepFacts,
    SubjectReadiness,
    Verdict,
    error_increase,
    held,
    newcombe_difference,
    order_ranks,
    pts,
    quantile_probabilities,
    readiness,
    wilson,
    z_value,
)
from exporter.traffic.counts import Histogram

START = datetime(2024, 5, 1, 13, 30, tzinfo=UTC).timestamp()
MINUTE = 60.0
SETTINGS = ReadinessSettings()  # hold 30 min, 50 probes, 500 requests, 0.95, +2 pts, 1.5x
BOUNDS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0)


def at(hhmm: str) -> float:
    hours, minutes = hhmm.split(":")
    return datetime(2024, 5, 1, int(hours), int(minutes), tzinfo=UTC).timestamp()


def probes(
    n: int,
    failures: int = 0,
    median: float = 0.1,
    sigma: float = 0.2,
    seed: int = 1,
    bursty: bool = False,
    slow_share: float = 0.0,
    slow_factor: float = 3.0,
) -> Side:
    """n probes through Side.record: failures spread at random (or in one burst), lognormal
    latencies, a `slow_share` of them `slow_factor` times slower."""
    rng = np.random.default_rng(seed)
    failed = np.zeros(n, dtype=bool)
    if bursty:
        failed[n // 3 : n // 3 + failures] = True
    else:
        failed[rng.choice(n, size=failures, replace=False)] = True
    latencies = median * rng.lognormal(0.0, sigma, size=n)
    slow = rng.random(n) < slow_share
    latencies[slow] *= slow_factor
    side = Side()
    for bad, seconds in zip(failed, latencies, strict=True):
        side.record(not bad, float(seconds))
    return side


def requests(
    n: int, failures: int = 0, median: float = 0.1, sigma: float = 0.3, seed: int = 2
) -> Side:
    """n real requests: counts, failures and a traffic Histogram, as the timeline gives them."""
    rng = np.random.default_rng(seed)
    side = Side.requests()
    side.count = float(n)
    side.failures = float(failures)
    latency = Histogram(BOUNDS)
    for seconds in median * rng.lognormal(0.0, sigma, size=n):
        latency.add(float(seconds))
    side.latency = latency
    return side


def facts(
    *subjects: Evidence,
    incidents: tuple[IncidentNote, ...] = (),
    traffic: bool = False,
    started_at: float = START,
) -> StepFacts:
    return StepFacts(
        record="api.example.com",
        started_at=started_at,
        shares={"heroku": 0.9, "aws": 0.1},
        changed_by="shift",
        subjects=list(subjects),
        incidents=list(incidents),
        traffic=traffic,
        next_share=0.25,
    )


def clean(n: int = 2000, subject: str = "health", seed: int = 1) -> Evidence:
    return Evidence(
        subject,
        "probes",
        probes(n, failures=n // 500, seed=seed),
        probes(n, failures=n // 500, seed=seed + 100),
    )


def clean_traffic(n: int = 20000) -> Evidence:
    return Evidence(
        "traffic:all",
        "requests",
        requests(n, failures=n // 500, seed=3),
        requests(n, failures=n // 500, seed=4),
    )


def subject(result: Readiness, name: str) -> SubjectReadiness:
    return next(s for s in result.subjects if s.subject == name)


# --- statistics against scipy ---------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.975, 0.99, 0.999])
def test_z_value_matches_scipy(confidence: float) -> None:
    assert z_value(confidence) == pytest.approx(stats.norm.ppf(confidence), rel=1e-9)


@pytest.mark.parametrize(
    ("k", "n"), [(0, 1), (0, 50), (1, 50), (3, 200), (25, 50), (49, 50), (50, 50), (7, 7200)]
)
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_scipy(k: int, n: int, confidence: float) -> None:
    # one-sided bounds at `confidence` are the two-sided interval at 1 - 2 (1 - confidence)
    ci = stats.binomtest(k, n).proportion_ci(
        confidence_level=1 - 2 * (1 - confidence), method="wilson"
    )
    low, high = wilson(k, n, z_value(confidence))
    assert low == pytest.approx(ci.low, abs=1e-12)
    assert high == pytest.approx(ci.high, abs=1e-12)


def test_wilson_without_samples_is_nan() -> None:
    assert all(math.isnan(x) for x in wilson(0, 0, 1.645))


@pytest.mark.parametrize(
    ("k1", "n1", "k2", "n2"),
    [(0, 50, 0, 50), (5, 100, 1, 100), (1, 200, 9, 200), (30, 7200, 14, 7200), (50, 50, 0, 60)],
)
def test_newcombe_difference_from_scipy_wilson(k1: int, n1: int, k2: int, n2: int) -> None:
    level = 1 - 2 * (1 - 0.95)
    ci1 = stats.binomtest(k1, n1).proportion_ci(confidence_level=level, method="wilson")
    ci2 = stats.binomtest(k2, n2).proportion_ci(confidence_level=level, method="wilson")
    p1, p2 = k1 / n1, k2 / n2
    # Newcombe (1998), method 10
    lower = p1 - p2 - math.sqrt((p1 - ci1.low) ** 2 + (ci2.high - p2) ** 2)
    upper = p1 - p2 + math.sqrt((ci1.high - p1) ** 2 + (p2 - ci2.low) ** 2)
    estimate, low, high = newcombe_difference(k1, n1, k2, n2, z_value(0.95))
    assert estimate == pytest.approx(p1 - p2)
    assert low == pytest.approx(lower, abs=1e-12)
    assert high == pytest.approx(upper, abs=1e-12)


@pytest.mark.parametrize("q", [0.5, 0.95, 0.99])
@pytest.mark.parametrize("n", [1, 5, 50, 100, 300, 1000, 20000])
@pytest.mark.parametrize("level", [0.95, 0.975, 0.995])
def test_order_ranks_match_scipy(q: float, n: int, level: float) -> None:
    low, high = order_ranks(q, n, level)
    below = stats.binom(n, q)  # samples below the true q-quantile
    # X_(high) >= the quantile unless high or more samples fall below it: the smallest such rank
    assert high == below.ppf(level) + 1
    if high <= n:
        assert below.cdf(high - 1) >= level > below.cdf(high - 2)
    # X_(low) <= the quantile unless fewer than low fall at or below it: the largest such rank
    assert below.cdf(low - 1) <= 1 - level
    if low <= n:
        assert below.cdf(low) > 1 - level


def test_quantile_probabilities() -> None:
    # from 50 samples even the largest is below p95 more often than 2.5% (0.95^50 = 7.7%)
    assert quantile_probabilities(0.95, 50, 0.975) == (44 / 50, math.inf)
    assert quantile_probabilities(0.5, 0.5, 0.975) == (0.0, math.inf)
    # effective sizes count whole samples only: the smaller, the safer
    assert quantile_probabilities(0.5, 1000.9, 0.975) == quantile_probabilities(0.5, 1000, 0.975)
    # beyond the exact ranks, Wilson's interval (two-sided at 0.95: each side at 0.975)
    n = 200_000
    ci = stats.binomtest(round(0.95 * n), n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = quantile_probabilities(0.95, n, 0.975)
    assert low == pytest.approx(ci.low, abs=1e-12)
    assert high == pytest.approx(ci.high, abs=1e-12)
    # where both apply, the two agree within a rank or two
    exact = quantile_probabilities(0.95, 50_000, 0.975)
    approx = wilson(0.95 * 50_000, 50_000, z_value(0.975))
    assert exact == pytest.approx(approx, abs=3 / 50_000)


def test_error_increase_upper_bound_covers_the_true_difference() -> None:
    rng = np.random.default_rng(13)
    z = z_value(0.95)
    draws = 2000
    for p_base, p_cand, n in [(0.002, 0.004, 2000), (0.01, 0.01, 300), (0.05, 0.07, 500)]:
        kb = rng.binomial(n, p_base, size=draws)
        kc = rng.binomial(n, p_cand, size=draws)
        bounds = [newcombe_difference(c, n, b, n, z) for b, c in zip(kb, kc, strict=True)]
        upper_covers = np.mean([high >= p_cand - p_base for _, _, high in bounds])
        lower_covers = np.mean([low <= p_cand - p_base for _, low, _ in bounds])
        assert upper_covers >= 0.93, (p_base, p_cand, n, upper_covers)
        assert lower_covers >= 0.93, (p_base, p_cand, n, lower_covers)


def test_latency_ratio_upper_bound_covers_equal_platforms() -> None:
    """Same distribution on both sides, through the histograms: the bound stays above 1."""
    covered = 0
    draws = 200
    for seed in range(draws):
        base = probes(300, seed=seed, sigma=0.5)
        cand = probes(300, seed=10_000 + seed, sigma=0.5)
        ev = Evidence("health", "probes", base, cand)
        result = readiness(facts(ev), START + 3600, SETTINGS)
        bound = subject(result, "health").latency_ratio["p95"]
        covered += bound.upper >= 1.0 >= bound.lower
    # each side of the interval at 0.95: both together at least 0.9
    assert covered / draws >= 0.9


def test_bursts_of_failures_widen_the_error_bound() -> None:
    spread = probes(2000, failures=40, seed=5)
    burst = probes(2000, failures=40, seed=5, bursty=True)
    assert burst.n_eff_errors() < spread.n_eff_errors()
    base = probes(2000, failures=4, seed=6)
    a = error_increase(base, spread, SETTINGS)
    b = error_increase(base, burst, SETTINGS)
    assert a is not None and b is not None
    assert b.estimate == pytest.approx(a.estimate)  # the observed ratio is kept
    assert b.upper > a.upper


# --- wording --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "text"),
    [(0.004, "+0.4 pts"), (-0.012, "-1.2 pts"), (0.02, "+2 pts"), (0.098, "+9.8 pts"),
     (-0.0001, "+0 pts"), (0.0, "+0 pts"), (math.nan, "n/a pts")],
)  # fmt: skip
def test_pts(x: float, text: str) -> None:
    assert pts(x) == text


@pytest.mark.parametrize(
    ("left", "text"),
    [(40, "40 more seconds"), (1, "1 more second"), (18 * MINUTE - 20, "18 more minutes"),
     (12 * MINUTE, "12 more minutes"), (61, "2 more minutes"), (65 * MINUTE, "1 h 5 min more"),
     (120 * MINUTE, "2 h more")],
)  # fmt: skip
def test_hold_left_in_words(left: float, text: str) -> None:
    hold = ReadinessSettings(hold=3 * 3600)
    result = readiness(facts(clean()), START + hold.hold - left, hold)
    assert result.verdict is Verdict.WAIT
    assert result.reasons == (text,)


# --- verdicts -------------------------------------------------------------------------------


def test_go_on_a_long_clean_step() -> None:
    result = readiness(
        facts(clean(3600), clean_traffic(25600), traffic=True), START + 31 * MINUTE, SETTINGS
    )
    assert result.verdict is Verdict.GO
    assert result.reasons == (
        "held 31 min; 7 200 probes and 51 200 requests; every bound within tolerance",
    )
    for s in result.subjects:
        assert s.missing == ()
        assert s.errors is not None and s.errors.ok
        assert s.latency_ratio["p50"].ok and s.latency_ratio["p95"].ok


def test_wait_on_the_hold() -> None:
    result = readiness(facts(clean()), START + 18 * MINUTE, SETTINGS)
    assert result.verdict is Verdict.WAIT
    assert result.reasons == ("12 more minutes",)
    assert result.held_for == 18 * MINUTE


def test_the_vantages_hold_a_go_and_add_to_a_wait() -> None:
    waits = ("only 1 of 2 vantages healthy (us-east-1 silent for 40 s)",)
    go = readiness(facts(clean(3600)), START + 31 * MINUTE, SETTINGS)
    held_go = held(go, waits)
    assert (held_go.verdict, held_go.reasons) == (Verdict.WAIT, waits)
    wait = readiness(facts(clean()), START + 18 * MINUTE, SETTINGS)
    assert held(wait, waits).reasons == ("12 more minutes", *waits)
    assert held(go, ()) is go


def test_wait_on_too_few_probes_and_requests() -> None:
    few = Evidence("health", "probes", probes(38, seed=7), probes(50, seed=8))
    traffic = Evidence("traffic:all", "requests", requests(900, seed=9), requests(190, seed=10))
    result = readiness(facts(few, traffic, traffic=True), START + 40 * MINUTE, SETTINGS)
    assert result.verdict is Verdict.WAIT
    assert "12 more baseline probes on health" in result.reasons
    assert "310 more candidate requests on traffic:all" in result.reasons
    assert "12 more baseline probes on health" in subject(result, "health").missing
    # a subject short of samples says so once: the bounds they starve are its own detail,
    # not more reasons of the verdict
    assert not any(r.startswith("evidence inconclusive") for r in result.reasons)
    assert any(m.startswith("evidence inconclusive") for m in subject(result, "health").missing)
    # without traffic configured, requests are shown but not required
    result = readiness(facts(few, traffic, traffic=False), START + 40 * MINUTE, SETTINGS)
    assert not any("requests" in r for r in result.reasons)
    assert subject(result, "traffic:all").counted is False


def test_requests_are_not_required_of_a_side_without_a_share() -> None:
    # at 0% the candidate has no users: its requests cannot be waited for (the shift's first step)
    quiet = Evidence("traffic:all", "requests", requests(900, seed=9), Side.requests())
    at_zero = replace(facts(clean(), quiet, traffic=True), shares={"heroku": 1.0, "aws": 0.0})
    result = readiness(at_zero, START + 31 * MINUTE, SETTINGS)
    assert result.verdict is Verdict.GO, result.reasons
    assert subject(result, "traffic:all").counted is False
    # at 10% they are required
    result = readiness(facts(clean(), quiet, traffic=True), START + 31 * MINUTE, SETTINGS)
    assert "500 more candidate requests on traffic:all" in result.reasons


def test_go_never_on_too_little_evidence() -> None:
    lenient = ReadinessSettings(hold=0, min_probes=200)
    # perfect, identical data, but one probe short on the candidate
    ev = Evidence("health", "probes", probes(200, seed=1), probes(199, seed=1))
    result = readiness(facts(ev), START + 3600, lenient)
    assert result.verdict is Verdict.WAIT
    assert result.reasons == ("1 more candidate probe on health",)
    ev = Evidence("health", "probes", probes(200, seed=1), probes(200, seed=1))
    assert readiness(facts(ev), START + 3600, lenient).verdict is Verdict.GO
    # even with no minimum at all, a side needs a probe, and the bounds need many
    none = ReadinessSettings(hold=0, min_probes=0)
    ev = Evidence("health", "probes", probes(3, seed=1), probes(0, seed=1))
    result = readiness(facts(ev), START, none)
    assert result.verdict is Verdict.WAIT
    assert "3 more candidate probes on health" not in result.reasons
    assert "1 more candidate probe on health" in result.reasons
    ev = Evidence("health", "probes", probes(5, seed=1), probes(5, seed=1))
    result = readiness(facts(ev), START, none)
    assert result.verdict is Verdict.WAIT
    assert any(r.startswith("evidence inconclusive on health") for r in result.reasons)


def test_wait_on_an_inconclusive_error_bound() -> None:
    # 2.5% vs 1% on 1000 probes each: no evidence of a regression, none of its absence either
    ev = Evidence(
        "health", "probes", probes(1000, failures=10, seed=11), probes(1000, failures=25, seed=12)
    )
    result = readiness(facts(ev), START + 40 * MINUTE, SETTINGS)
    assert result.verdict is Verdict.WAIT
    bound = subject(result, "health").errors
    assert bound is not None and bound.ok is False and bound.lower < 0.02 < bound.upper
    # the bound recomputed from scipy's Wilson intervals on the effective sample sizes
    base, cand = ev.baseline, ev.candidate
    nb, nc = base.n_eff_errors(), cand.n_eff_errors()
    level = 1 - 2 * (1 - 0.95)
    pc, pb = cand.failures / cand.count, base.failures / base.count
    z = stats.norm.ppf(0.95)

    def wilson_high(p: float, n: float) -> float:
        # scipy's own interval needs whole counts: on whole ones it is pinned above
        if n == int(n):
            return float(
                stats.binomtest(round(p * n), int(n))
                .proportion_ci(confidence_level=level, method="wilson")
                .high
            )
        return (p + z * z / (2 * n) + z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (
            1 + z * z / n
        )

    def wilson_low(p: float, n: float) -> float:
        return (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (
            1 + z * z / n
        )

    upper = pc - pb + math.hypot(wilson_high(pc, nc) - pc, pb - wilson_low(pb, nb))
    assert bound.upper == pytest.approx(upper, rel=1e-9)
    assert result.reasons == (
        f"evidence inconclusive on health: the error bound is {pts(bound.upper)}, tolerated +2",
    )
    assert re.fullmatch(r"\+\d\.\d pts", pts(bound.upper))


def test_wait_on_an_inconclusive_latency_bound() -> None:
    # the candidate 20% slower on 120 probes: within 1.5x, but too few probes to show it at p95
    ev = Evidence(
        "health", "probes", probes(120, seed=13), probes(120, median=0.12, seed=14, sigma=0.3)
    )
    result = readiness(facts(ev), START + 40 * MINUTE, ReadinessSettings(min_probes=100))
    assert result.verdict is Verdict.WAIT
    p95 = subject(result, "health").latency_ratio["p95"]
    assert p95.ok is False and p95.lower < 1.5 < p95.upper
    text = (
        f"evidence inconclusive on health: the p95 ratio bound is {p95.upper:.2f}x, tolerated 1.5x"
    )
    assert text in result.reasons
    assert text in subject(result, "health").missing


def test_wait_on_a_pending_incident() -> None:
    pending = IncidentNote("i1", "orders", "latency", "pending", started_at=at("13:58"))
    result = readiness(
        facts(clean(), clean(subject="orders", seed=3), incidents=(pending,)),
        START + 40 * MINUTE,
        SETTINGS,
    )
    assert result.verdict is Verdict.WAIT
    assert result.reasons == ("latency regression pending on orders",)
    assert subject(result, "orders").missing == ("latency regression pending on orders",)
    assert subject(result, "health").missing == ()
    # a pending incident that cleared without firing is no reason at all
    cleared = IncidentNote(
        "i1", "orders", "latency", "resolved", started_at=at("13:58"), resolved_at=at("13:59")
    )
    result = readiness(facts(clean(), incidents=(cleared,)), START + 40 * MINUTE, SETTINGS)
    assert result.verdict is Verdict.GO


def test_wait_when_both_platforms_fail() -> None:
    # both down alike: the difference is nil and its bound tight, yet it is no evidence
    ev = Evidence(
        "health", "probes", probes(2000, failures=1900, seed=15), probes(2000, 1900, seed=16)
    )
    result = readiness(facts(ev), START + 40 * MINUTE, SETTINGS)
    assert result.verdict is Verdict.WAIT
    assert result.reasons == (
        "both platforms failing on health: an outage, not evidence for the candidate",
    )
    errors = subject(result, "health").errors
    assert errors is not None and errors.ok  # what the bound alone would have said


def test_wait_with_nothing_to_judge() -> None:
    result = readiness(facts(), START + 40 * MINUTE, SETTINGS)
    assert result.verdict is Verdict.WAIT
    assert result.reasons == ("nothing judged yet: no check guards this record",)
    assert result.to_dict()["subjects"] == []


def test_wait_without_latency_from_a_side() -> None:
    cand = requests(20000, seed=4)
    cand.latency = None  # a source that cannot tell latency
    ev = Evidence("traffic:all", "requests", requests(20000, seed=3), cand)
    result = readiness(facts(clean(), ev, traffic=True), START + 40 * MINUTE, SETTINGS)
    assert result.verdict is Verdict.WAIT
    assert result.reasons == ("no latency from the candidate on traffic:all yet",)
    assert subject(result, "traffic:all").latency_ratio == {}


def test_no_go_on_an_incident_fired_during_the_step_even_resolved() -> None:
    incident = IncidentNote(
        "i7",
        "health",
        "errors",
        "resolved",
        started_at=at("14:01"),
        fired_at=at("14:02"),
        resolved_at=at("14:05"),
        figures={"error_ratio_delta": 0.098, "candidate_error_ratio": 0.1,
                 "baseline_error_ratio": 0.002},
    )  # fmt: skip
    result = readiness(facts(clean(), incidents=(incident,)), START + 3 * 3600, SETTINGS)
    assert result.verdict is Verdict.NO_GO
    assert result.reasons == (
        "errors regression on health fired 14:02 UTC, resolved after 3 min "
        "(+9.8 pts, errors 10.0% vs 0.2%)",
    )
    # one that fired and resolved before the step does not count against it
    before = IncidentNote(
        "i6", "health", "errors", "resolved", at("13:00"), at("13:01"), at("13:20")
    )
    result = readiness(facts(clean(), incidents=(before,)), START + 3 * 3600, SETTINGS)
    assert result.verdict is Verdict.GO
    # one that fired before the step and still fires does
    firing = IncidentNote(
        "i5", "health", "latency", "firing", at("13:00"), at("13:01"), figures={"p95_ratio": 1.93}
    )
    result = readiness(facts(clean(), incidents=(firing,)), START + 3 * 3600, SETTINGS)
    assert result.verdict is Verdict.NO_GO
    assert result.reasons == ("latency regression on health firing since 13:01 UTC (p95 1.9x)",)


def test_no_go_reasons_come_before_what_is_missing() -> None:
    incident = IncidentNote("i7", "health", "down", "firing", at("13:40"), at("13:41"))
    result = readiness(facts(clean(), incidents=(incident,)), START + 20 * MINUTE, SETTINGS)
    assert result.verdict is Verdict.NO_GO
    assert result.reasons == ("candidate down on health firing since 13:41 UTC", "10 more minutes")


def test_no_go_on_a_clear_regression() -> None:
    ev = Evidence(
        "health",
        "probes",
        probes(2000, failures=4, seed=17),
        probes(2000, failures=200, median=0.19, seed=18),
    )
    # even before the hold: the evidence is already conclusive
    result = readiness(facts(ev), START + 10 * MINUTE, SETTINGS)
    assert result.verdict is Verdict.NO_GO
    errors = subject(result, "health").errors
    assert errors is not None and errors.lower > 0.02
    assert result.reasons[0] == (
        f"errors regression on health: +9.8 pts (at least {pts(errors.lower)}; "
        "10.0% vs 0.2%), tolerated +2 pts"
    )
    p95 = subject(result, "health").latency_ratio["p95"]
    assert p95.lower > 1.5
    assert (
        f"latency regression on health: p95 {p95.estimate:.1f}x (at least {p95.lower:.1f}x), "
        "tolerated 1.5x"
    ) in result.reasons
    assert result.reasons[-1] == "20 more minutes"
    # the decided bounds are not also called inconclusive
    assert not any(r.startswith("evidence inconclusive") for r in result.reasons)


def test_p99_counts_only_with_enough_samples() -> None:
    # 3% of the candidate's probes 4x slower: p99 far off, p50 and p95 alike
    def step(n: int) -> Readiness:
        ev = Evidence(
            "health",
            "probes",
            probes(n, seed=19),
            probes(n, seed=20, slow_share=0.03, slow_factor=4.0),
        )
        return readiness(facts(ev), START + 40 * MINUTE, SETTINGS)

    few = step(600)  # 600 * 1% = 6 samples beyond p99 on each side
    p99 = subject(few, "health").latency_ratio["p99"]
    assert p99.ok is None and p99.estimate > 1.5
    assert few.verdict is Verdict.GO
    many = step(3000)  # 30 beyond it
    p99 = subject(many, "health").latency_ratio["p99"]
    assert p99.ok is False
    assert many.verdict is Verdict.NO_GO
    assert any(r.startswith("latency regression on health: p99") for r in many.reasons)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"confidence must be in \(0.5, 1\)"):
        ReadinessSettings(confidence=1.0)
    with pytest.raises(ValueError, match="hold must not be negative"):
        ReadinessSettings(hold=-1)


def test_to_dict_is_the_api_entry() -> None:
    empty = Evidence.empty("orders", "probes")  # NaN ratios and quantiles
    result = readiness(facts(clean(), empty), START + 5 * MINUTE, SETTINGS)
    entry = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert entry["record"] == "api.example.com"
    assert entry["verdict"] == "WAIT"
    assert entry["reasons"][0] == "25 more minutes"
    assert entry["step"] == {
        "started_at": START,
        "shares": {"heroku": 0.9, "aws": 0.1},
        "changed_by": "shift",
    }
    assert entry["next_share"] == 0.25
    assert entry["held_for_seconds"] == 300.0
    assert entry["hold_seconds"] == 1800.0
    assert entry["dry_run"] is False
    health, orders = entry["subjects"]
    assert health["subject"] == "health" and health["kind"] == "probes"
    assert health["counts"] == {"baseline": 2000.0, "candidate": 2000.0}
    assert health["errors"]["tolerated"] == 0.02 and health["errors"]["ok"] is True
    assert set(health["latency_ratio"]) == {"p50", "p95", "p99"}
    assert orders["error_ratios"] == {"baseline": None, "candidate": None}
    assert orders["errors"] is None
    assert orders["missing"] == [
        "50 more candidate probes on orders",
        "50 more baseline probes on orders",
    ]


# --- properties over random step histories --------------------------------------------------

FAILURE_RATIOS = (0.0, 0.001, 0.005, 0.02, 0.1, 0.6, 1.0)


@st.composite
def sides(draw: st.DrawFn, kind: str) -> Side:
    seed = draw(st.integers(0, 2**32 - 1))
    ratio = draw(st.sampled_from(FAILURE_RATIOS))
    median = draw(st.sampled_from((0.02, 0.1, 0.15, 0.3)))
    sigma = draw(st.sampled_from((0.05, 0.3, 1.0)))
    if kind == "probes":
        n = draw(st.integers(0, 1200))
        slow = draw(st.sampled_from((0.0, 0.02)))
        return probes(
            n,
            failures=round(n * ratio),
            median=median,
            sigma=sigma,
            seed=seed,
            bursty=draw(st.booleans()),
            slow_share=slow,
        )
    n = draw(st.integers(0, 30000))
    side = requests(min(n, 2000), median=median, sigma=sigma, seed=seed)
    assert side.latency is not None
    if draw(st.booleans()) and n:
        side.latency = side.latency.scaled(n / max(1, min(n, 2000)))
    elif draw(st.integers(0, 5)) == 0:
        side.latency = None
    side.count = float(n)
    side.failures = float(round(n * ratio))
    return side


@st.composite
def evidence(draw: st.DrawFn, name: str) -> Evidence:
    kind = draw(st.sampled_from(("probes", "requests")))
    return Evidence(name, kind, draw(sides(kind)), draw(sides(kind)))


@st.composite
def incidents(draw: st.DrawFn, start: float, checks: list[str]) -> IncidentNote:
    phase = draw(st.sampled_from(("pending", "firing", "resolved")))
    began = start + draw(st.floats(-7200, 7200))
    fired = None if phase == "pending" else draw(st.none() | st.floats(began, began + 600))
    if phase == "firing" and fired is None:
        fired = began
    resolved = None if phase != "resolved" else (fired or began) + draw(st.floats(0, 3600))
    return IncidentNote(
        id=draw(st.text("abc", min_size=1, max_size=4)),
        check=draw(st.sampled_from(checks)),
        signal=draw(st.sampled_from(("down", "errors", "latency"))),
        phase=phase,
        started_at=began,
        fired_at=fired,
        resolved_at=resolved,
        figures=draw(
            st.none()
            | st.fixed_dictionaries(
                {"p95_ratio": st.floats(0, 5) | st.none(), "error_ratio_delta": st.floats(-1, 1)}
            )
        ),
    )


@st.composite
def histories(draw: st.DrawFn) -> tuple[StepFacts, float, ReadinessSettings]:
    start = draw(st.floats(1.6e9, 1.8e9))
    names = draw(st.lists(st.sampled_from(("health", "orders", "traffic:all")), unique=True))
    subjects = [draw(evidence(name)) for name in names]
    notes = [draw(incidents(start, names or ["health"])) for _ in range(draw(st.integers(0, 3)))]
    config = ReadinessSettings(
        hold=draw(st.sampled_from((0.0, 60.0, 1800.0))),
        min_probes=draw(st.integers(0, 300)),
        min_requests=draw(st.integers(0, 5000)),
        confidence=draw(st.sampled_from((0.9, 0.95, 0.99))),
        errors_max_increase=draw(st.sampled_from((0.005, 0.02, 0.1))),
        latency_max_ratio=draw(st.sampled_from((1.1, 1.5, 2.25))),
    )
    step = facts(*subjects, incidents=tuple(notes), traffic=draw(st.booleans()), started_at=start)
    return step, start + draw(st.floats(-60, 4 * 3600)), config


@settings(max_examples=150, deadline=None)
@given(histories())
def test_go_only_on_enough_clean_evidence(
    history: tuple[StepFacts, float, ReadinessSettings],
) -> None:
    step, now, config = history
    result = readiness(step, now, config)
    assert result.reasons
    if result.verdict is not Verdict.GO:
        return
    assert result.held_for >= config.hold
    assert step.subjects
    for incident in step.incidents:
        assert incident.phase == "resolved"
        assert incident.fired_at is None or incident.fired_at < step.started_at
    counted = [s for s in result.subjects if s.counted]
    assert counted
    for s in counted:
        minimum = config.min_probes if s.kind == "probes" else config.min_requests
        assert min(s.counts) >= max(1, minimum)
        assert max(s.error_ratios) < 0.5 or min(s.error_ratios) < 0.5
        assert s.errors is not None and s.errors.upper < config.errors_max_increase
        assert {"p50", "p95"} <= set(s.latency_ratio)
        for name, bound in s.latency_ratio.items():
            if name != "p99":
                assert bound.ok is True
            if bound.ok is not None:
                assert bound.upper < config.latency_max_ratio
        assert s.missing == ()


@settings(max_examples=100, deadline=None)
@given(histories())
def test_verdict_is_deterministic_and_serialisable(
    history: tuple[StepFacts, float, ReadinessSettings],
) -> None:
    step, now, config = history
    first = readiness(step, now, config)
    entry = first.to_dict()
    json.dumps(entry, allow_nan=False)
    assert readiness(step, now, config).to_dict() == entry
    # and the same from evidence saved and read back (as the ledger does across restarts)
    saved = [Evidence.from_dict(json.loads(json.dumps(ev.to_dict()))) for ev in step.subjects]
    reread = StepFacts(
        step.record,
        step.started_at,
        step.shares,
        step.changed_by,
        saved,
        step.incidents,
        step.traffic,
        step.next_share,
    )
    assert readiness(reread, now, config).to_dict() == entry
    assert (first.verdict is Verdict.NO_GO) == any(
        r for r in first.reasons if "regression on" in r or "down on" in r
    )


def test_many_subjects_short_of_the_same_thing_read_in_a_glance() -> None:
    """Reasons of one kind beyond REASONS_PER_KIND are summed up; each subject keeps its own."""
    from exporter.judging.readiness import KEEP_SUBJECTS, REASONS_PER_KIND

    few = [
        Evidence(f"c{i:02d}", "probes", probes(10, seed=i), probes(10, seed=i)) for i in range(40)
    ]
    result = readiness(facts(*few), START + 3600, SETTINGS)
    counts = [r for r in result.reasons if "more" in r and "probes on" in r]
    assert len(counts) == REASONS_PER_KIND - 1
    assert result.reasons[-1] == f"and {80 - (REASONS_PER_KIND - 1)} more like these"
    # and the verdict keeps the figures of the most telling subjects only, with the totals
    assert len(result.subjects) == KEEP_SUBJECTS < result.subjects_total == 40
    assert all(s.missing for s in result.subjects)
    assert result.probes == (400, 400)


def test_the_subject_that_decides_is_kept_among_many() -> None:
    from exporter.judging.readiness import KEEP_SUBJECTS

    many = [clean(n=300, subject=f"c{i:02d}", seed=i) for i in range(KEEP_SUBJECTS + 15)]
    slow = Evidence("slow", "probes", probes(300, seed=5), probes(300, seed=6, slow_share=1.0))
    result = readiness(facts(*many[:20], slow, *many[20:]), START + 3600, SETTINGS)
    assert result.verdict is Verdict.NO_GO
    assert "slow" in [s.subject for s in result.subjects]
    assert result.subjects_total == KEEP_SUBJECTS + 16
    order = [x.subject for x in (*many[:20], slow, *many[20:])]
    names = [s.subject for s in result.subjects]
    assert names == [n for n in order if n in names], "kept in the order of the step's subjects"
