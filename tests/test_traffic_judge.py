"""The real-traffic judge: its statistics against scipy, and its verdicts on synthetic counts."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import pairwise

import numpy as np
import pytest
from scipy import optimize, stats

from exporter.alerting.alerts import Alerts, AlertSettings, Fired, Phase
from exporter.alerting.messages import Context, figures_lines
from exporter.judging.judge import JudgeSettings, State
from exporter.judging.traffic import (
    TrafficEvaluation,
    TrafficSettings,
    binom_lower_quantile,
    binom_tail,
    difference_score,
    difference_sf,
    horizons,
    judge_traffic,
    restricted_mle,
)
from exporter.traffic.counts import LATENCY_BOUNDS, Histogram, Tally

INGRESS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BUCKET = 5.0
STEP = 15.0  # the judge runs when the candidate's Prometheus source covered another 15 s
SETTINGS = TrafficSettings()  # window 300 s, min_requests 200, +2 pts, x1.5 and 25 ms
ALPHA = SETTINGS.alpha

# --- statistics ----------------------------------------------------------------------------


def _loglik(p1: float, x1: float, n1: float, x2: float, n2: float, delta: float) -> float:
    p2 = p1 - delta
    return (
        x1 * math.log(p1)
        + (n1 - x1) * math.log1p(-p1)
        + x2 * math.log(p2)
        + (n2 - x2) * math.log1p(-p2)
    )


CASES = [
    (30, 600, 54, 5400, 0.02),
    (4, 200, 20, 1800, 0.02),
    (0, 300, 3, 2700, 0.02),
    (12.7, 318.4, 31.2, 2890.5, 0.02),  # Prometheus' increase() extrapolates: floats
    (50, 500, 10, 400, 0.05),
    (9, 1000, 2, 50, 0.01),
    (3, 200, 40, 200, -0.1),
]


@pytest.mark.parametrize(("x1", "n1", "x2", "n2", "delta"), CASES)
def test_restricted_mle_maximises_the_constrained_likelihood(
    x1: float, n1: float, x2: float, n2: float, delta: float
) -> None:
    lo, hi = max(delta, 0.0) + 1e-12, min(1.0, 1.0 + delta) - 1e-12
    found = optimize.minimize_scalar(
        lambda p: -_loglik(p, x1, n1, x2, n2, delta),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-12},
    )
    p1, p2 = restricted_mle(x1, n1, x2, n2, delta)
    assert p1 - p2 == pytest.approx(delta, abs=1e-12)
    assert p1 == pytest.approx(found.x, abs=1e-6)
    assert _loglik(p1, x1, n1, x2, n2, delta) >= -found.fun - 1e-9


@pytest.mark.parametrize(("x1", "n1", "x2", "n2", "delta"), CASES)
def test_score_is_miettinen_nurminen_at_the_restricted_estimates(
    x1: float, n1: float, x2: float, n2: float, delta: float
) -> None:
    lo, hi = max(delta, 0.0) + 1e-12, min(1.0, 1.0 + delta) - 1e-12
    p1 = optimize.minimize_scalar(
        lambda p: -_loglik(p, x1, n1, x2, n2, delta),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-13},
    ).x
    p2 = p1 - delta
    n = n1 + n2
    var = (p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2) * n / (n - 1)
    score, _ = difference_score(x1, n1, x2, n2, delta)
    assert score == pytest.approx((x1 / n1 - x2 / n2 - delta) / math.sqrt(var), rel=1e-5)


def test_score_without_margin_is_the_chi_square_statistic() -> None:
    gen = np.random.default_rng(5)
    for _ in range(30):
        n1, n2 = (int(v) for v in gen.integers(20, 3000, 2))
        x1, x2 = int(gen.integers(1, n1)), int(gen.integers(1, n2))
        chi2 = stats.chi2_contingency([[x1, n1 - x1], [x2, n2 - x2]], correction=False).statistic
        score, _ = difference_score(x1, n1, x2, n2)
        n = n1 + n2
        assert score * score * n / (n - 1) == pytest.approx(chi2, rel=1e-9)
        assert (score > 0) == (x1 / n1 > x2 / n2)


def _exact_size(
    n1: int, p1: float, n2: int, p2: float, delta: float, alpha: float, corrected: bool
) -> float:
    """P(p-value < alpha) when x1 ~ Binomial(n1, p1) and x2 ~ Binomial(n2, p2), summed exactly."""
    k1, k2 = np.arange(n1 + 1), np.arange(n2 + 1)
    pmf1, pmf2 = stats.binom.pmf(k1, n1, p1), stats.binom.pmf(k2, n2, p2)
    size = 0.0
    for a in k1[pmf1 > 1e-13]:
        for b in k2[pmf2 > 1e-13]:
            if corrected:
                p = difference_sf(a, n1, b, n2, delta)
            else:
                p = float(stats.norm.sf(difference_score(a, n1, b, n2, delta)[0]))
            if p < alpha:
                size += pmf1[a] * pmf2[b]
    return size


@pytest.mark.parametrize(
    ("n1", "n2", "p2", "delta"),
    [
        (200, 1800, 0.01, 0.02),  # 1% background, the candidate at the tolerance, 10% weight
        (600, 5400, 0.01, 0.02),
        (200, 200, 0.01, 0.02),  # 50% weight
        (600, 5400, 0.002, 0.0),  # the latency test: rare exceedances, no margin
        (300, 2700, 0.05, 0.0),
    ],
)
def test_difference_sf_keeps_its_level_where_the_plain_score_does_not(
    n1: int, n2: int, p2: float, delta: float
) -> None:
    for alpha in (0.01, 0.002):
        corrected = _exact_size(n1, p2 + delta, n2, p2, delta, alpha, corrected=True)
        assert corrected <= alpha * 1.1, (alpha, corrected)
    # the reason for Gart and Nam's correction: with 1% rates the plain score test fires
    # far more often than its level says
    if n1 != n2:
        assert _exact_size(n1, p2 + delta, n2, p2, delta, 0.01, corrected=False) > 0.013


def test_difference_sf_on_float_counts_is_monotone_and_bounded() -> None:
    values = [difference_sf(x, 600.0, 54.0, 5400.0, 0.02) for x in np.arange(0.0, 60.0, 0.25)]
    assert all(a >= b for a, b in pairwise(values))
    assert values[0] == pytest.approx(1.0, abs=1e-6)
    assert values[-1] < 1e-6
    assert difference_sf(5.0, 0.0, 1.0, 100.0) == 1.0
    # a huge effect stays significant whatever the skew (the correction stays monotone)
    assert difference_sf(500.0, 500.0, 0.0, 20.0, 0.02) < 1e-6
    assert difference_sf(0.0, 20.0, 500.0, 500.0, 0.0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [(33, 30000, 0.05), (1500, 30000, 0.05), (1600, 30000, 0.05), (5, 100, 0.01), (1, 10, 0.5),
     (400, 54000, 0.01), (700, 54000, 0.01), (0, 5, 0.1), (3, 3, 0.5), (4, 3, 0.5)],
)  # fmt: skip
def test_binom_tail_matches_scipy_for_any_count(k: int, n: int, p: float) -> None:
    assert binom_tail(k, n, p) == pytest.approx(stats.binom.sf(k - 1, n, p), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(
    ("n", "p", "alpha"),
    [(5400, 0.01, 0.001), (540, 0.05, 0.001), (60000, 0.05, 0.001), (100000, 0.01, 0.001),
     (20000, 0.05, 0.0001), (2000.7, 0.05, 0.001)],
)  # fmt: skip
def test_binom_lower_quantile_is_a_lower_confidence_count(n: float, p: float, alpha: float) -> None:
    m = binom_lower_quantile(n, p, alpha)
    assert m is not None
    dist = stats.binom(math.floor(n), p)
    assert dist.cdf(m) <= alpha
    # exact while the mean is under 200, at most one count short beyond
    assert dist.cdf(m + 1 if n * p < 200 else m + 2) > alpha


def test_binom_lower_quantile_needs_enough_trials() -> None:
    assert binom_lower_quantile(300, 0.01, 0.001) is None  # P(none at all) = 5%
    assert binom_lower_quantile(0, 0.5, 0.01) is None


def test_horizons_double_up_to_the_window() -> None:
    assert horizons(300.0) == (15.0, 30.0, 60.0, 120.0, 300.0)
    assert horizons(60.0) == (15.0, 30.0, 60.0)
    assert horizons(20.0) == (20.0,)


# --- synthetic traffic ---------------------------------------------------------------------


@dataclass(frozen=True)
class Serving:
    """What one platform serves: requests/s, 5xx ratio, log-normal latencies in some buckets."""

    rate: float
    errors: float = 0.01
    median: float = 0.080
    sigma: float = 0.6
    tail_share: float = 0.0
    tail_latency: float = 8.0
    bounds: tuple[float, ...] = LATENCY_BOUNDS

    def shares(self) -> list[float]:
        def cdf(x: float) -> float:
            body = 0.5 * math.erfc(-math.log(x / self.median) / (self.sigma * math.sqrt(2)))
            return (1 - self.tail_share) * body + self.tail_share * (x >= self.tail_latency)

        cumulative = [cdf(b) for b in self.bounds]
        return [hi - lo for lo, hi in zip([0.0, *cumulative], [*cumulative, 1.0], strict=True)]


def expected(serving: Serving, seconds: float = BUCKET) -> Tally:
    """The counts a bucket holds on average: floats, as Prometheus' increase() gives."""
    n = serving.rate * seconds
    tally = Tally(requests=n, latency=Histogram(serving.bounds, [n * s for s in serving.shares()]))
    tally.responses["2xx"] = n * (1 - serving.errors)
    tally.responses["5xx"] = n * serving.errors
    return tally


def drawn(gen: np.random.Generator) -> Callable[[Serving], Tally]:
    """Poisson arrivals: 5xx and latency buckets independently (a Poisson stream's thinning)."""

    def draw(serving: Serving, seconds: float = BUCKET) -> Tally:
        n = serving.rate * seconds
        counts = gen.poisson([n * s for s in serving.shares()]).astype(float)
        errors = float(gen.binomial(int(counts.sum()), serving.errors))
        tally = Tally(requests=float(counts.sum()), latency=Histogram(serving.bounds, list(counts)))
        tally.responses["2xx"] = tally.requests - errors
        tally.responses["5xx"] = errors
        return tally

    return draw


Profile = Callable[[float], Serving]  # bucket start -> what the side serves in that bucket


def buckets(
    profile: Profile, end: float, make: Callable[[Serving], Tally] = expected, start: float = 0.0
) -> list[tuple[float, Tally]]:
    out = []
    t = start
    while t < end - 1e-9:
        out.append((t, make(profile(t))))
        t += BUCKET
    return out


def steady(serving: Serving) -> Profile:
    return lambda t: serving


def step(before: Serving, after: Serving, at: float, until: float = math.inf) -> Profile:
    return lambda t: after if at <= t < until else before


def stream(
    base: Profile,
    cand: Profile,
    until: float,
    settings: TrafficSettings = SETTINGS,
    make: Callable[[Serving], Tally] = expected,
    start: float = 300.0,
) -> list[TrafficEvaluation]:
    """Judge every STEP seconds from `start` to `until`, carrying the previous evaluation."""
    b, c = buckets(base, until, make), buckets(cand, until, make)
    out: list[TrafficEvaluation] = []
    previous = None
    end = start
    while end <= until + 1e-9:
        previous = judge_traffic(
            [x for x in b if x[0] < end], [x for x in c if x[0] < end], end, settings, previous
        )
        out.append(previous)
        end += STEP
    return out


BASE = Serving(rate=180.0)  # 90% weight
CAND = Serving(rate=20.0, bounds=INGRESS)  # 10% weight, ingress-nginx's buckets


def once(base: Profile, cand: Profile, end: float = 300.0, **kw: float) -> TrafficEvaluation:
    settings = replace(SETTINGS, **kw) if kw else SETTINGS
    return judge_traffic(buckets(base, end), buckets(cand, end), end, settings)


# --- errors --------------------------------------------------------------------------------


def test_a_step_to_5_percent_errors_at_20_per_second_is_regressed_within_a_minute() -> None:
    evaluations = stream(
        steady(BASE), step(CAND, replace(CAND, errors=0.05), at=300.0), until=360.0
    )
    first = next(e for e in evaluations if e.errors.regressed)
    assert first.at - 300.0 <= 45.0
    assert first.errors.significant
    assert first.errors.estimate == pytest.approx(0.04)
    assert first.errors.threshold == 0.02
    assert evaluations[-1].errors.regressed
    assert all(e.latency.state is State.OK for e in evaluations)


def test_errors_within_the_tolerance_are_not_regressed() -> None:
    e = once(steady(BASE), steady(replace(CAND, errors=0.03)))  # +2 pts: the tolerance itself
    assert e.errors.state is State.OK
    assert not e.errors.pending
    assert e.errors.p_value > 0.3
    assert once(steady(BASE), steady(replace(CAND, errors=0.06))).errors.regressed
    # the same +5 pts are tolerated with max_increase 0.06
    assert not once(
        steady(BASE), steady(replace(CAND, errors=0.06)), errors_max_increase=0.06
    ).errors.regressed


def test_the_baseline_degrading_alone_is_not_the_candidate_s_regression() -> None:
    bad = replace(BASE, errors=0.3, median=0.4)
    evaluations = stream(step(BASE, bad, at=400.0, until=520.0), steady(CAND), until=700.0)
    assert all(e.errors.state is State.OK and e.latency.state is State.OK for e in evaluations)
    assert not any(e.errors.pending or e.latency.pending for e in evaluations)
    assert max(e.figures.baseline_error_ratio for e in evaluations) > 0.1


def test_too_few_requests_is_inconclusive_never_regressed() -> None:
    quiet = Serving(rate=0.5, errors=0.5, median=2.0, bounds=INGRESS)  # 150 requests a window
    e = once(steady(BASE), steady(quiet))
    assert e.errors.state is State.INCONCLUSIVE and e.latency.state is State.INCONCLUSIVE
    assert not e.errors.significant and not e.latency.significant
    assert math.isnan(e.errors.p_value)
    assert e.errors.test == "too few requests"
    assert e.figures.candidate_requests == pytest.approx(150.0)
    # a 0% weight: no candidate traffic at all
    e = judge_traffic(buckets(steady(BASE), 300.0), [], 300.0, SETTINGS)
    assert e.errors.state is State.INCONCLUSIVE
    assert e.figures.as_dict()["candidate_error_ratio"] is None
    # 100%: nothing left to compare with
    assert (
        judge_traffic([], buckets(steady(CAND), 300.0), 300.0, SETTINGS).errors.state
        is State.INCONCLUSIVE
    )
    # the same quiet candidate is judged once min_requests allows it
    assert once(steady(BASE), steady(quiet), min_requests=100).errors.regressed


def test_a_horizon_with_fewer_than_min_requests_does_not_count() -> None:
    # 5 requests/s, all failing in the latest 15 s (75 requests): the shortest horizon with
    # min_requests on both sides shows it best
    slow = Serving(rate=5.0, bounds=INGRESS)
    burst = step(slow, replace(slow, errors=1.0), at=285.0)
    for min_requests, horizon in ((50, 15), (100, 30), (200, 60)):
        e = once(steady(BASE), burst, min_requests=min_requests)
        assert e.errors.regressed, min_requests
        assert e.errors.horizon == horizon, min_requests


def test_an_ended_regression_ages_out_although_the_window_still_holds_it() -> None:
    cand = step(CAND, replace(CAND, errors=0.08), at=300.0, until=420.0)
    evaluations = stream(steady(BASE), cand, until=480.0)
    assert [e.errors.regressed for e in evaluations if e.at <= 420.0][-3:] == [True] * 3
    after = [e for e in evaluations if e.at >= 450.0]
    assert all(e.errors.state is State.OK for e in after)
    # the window still averages far beyond the tolerance
    assert after[-1].figures.error_ratio_delta > 0.02
    # and taken alone, the window's counts are a regression
    late = judge_traffic(
        buckets(steady(BASE), 480.0, start=180.0),
        buckets(cand, 480.0, start=180.0),
        480.0,
        replace(SETTINGS, window=300.0, min_requests=6000),  # only the whole window counts
    )
    assert late.errors.regressed and late.errors.horizon == 300


def test_hysteresis_holds_a_regression_while_p_stays_under_hold() -> None:
    # 7% for 2 minutes (regressed), then 3.7%: beyond the tolerance, no longer significantly
    def cand(t: float) -> Serving:
        if t < 300.0:
            return CAND
        return replace(CAND, errors=0.07 if t < 420.0 else 0.037)

    evaluations = stream(steady(BASE), cand, until=555.0)
    last = evaluations[-1].errors
    assert all(e.errors.regressed for e in evaluations if e.at >= 330.0)
    assert last.regressed and not last.significant
    assert ALPHA <= last.p_value < SETTINGS.hold_p_value
    assert last.since == next(e.at for e in evaluations if e.errors.regressed)
    # the same counts judged without that history: credible (pending), not regressed
    fresh = judge_traffic(
        buckets(steady(BASE), 555.0), buckets(cand, 555.0), 555.0, SETTINGS
    ).errors
    assert fresh.state is State.OK
    assert fresh.pending and fresh.since == 555.0
    assert fresh.p_value == pytest.approx(last.p_value)


def test_pending_evidence_starts_the_for_clock_and_the_incident_fires_after_it() -> None:
    cand = step(CAND, replace(CAND, errors=0.05), at=300.0)
    evaluations = stream(steady(BASE), cand, until=420.0)
    first_seen = next(e for e in evaluations if e.errors.pending or e.errors.regressed)
    alerts = Alerts(AlertSettings(for_=30.0, resolve_after=60.0))
    fired: list[tuple[float, Fired]] = []
    for e in evaluations:
        for event in alerts.update("traffic:all", e, e.at):
            assert isinstance(event, Fired)
            fired.append((e.at, event))
    assert len(fired) == 1
    at, event = fired[0]
    assert event.incident.check == "traffic:all" and event.incident.signal == "errors"
    assert event.incident.started_at == first_seen.at
    assert at - first_seen.at >= 30.0
    assert alerts.get("traffic:all", "errors").phase is Phase.FIRING  # type: ignore[union-attr]


# --- latency -------------------------------------------------------------------------------


def test_a_route_group_twice_as_slow_is_regressed_across_bucket_layouts() -> None:
    slow = step(CAND, replace(CAND, median=0.160), at=240.0)
    e = once(steady(BASE), slow)
    assert e.latency.regressed and e.latency.significant
    assert e.latency.estimate > e.latency.threshold
    assert "requests over" in e.latency.test
    assert e.errors.state is State.OK
    # the same with the layouts swapped
    fine_slow = step(
        replace(CAND, bounds=LATENCY_BOUNDS),
        replace(CAND, median=0.16, bounds=LATENCY_BOUNDS),
        at=240.0,
    )
    assert once(steady(replace(BASE, bounds=INGRESS)), fine_slow).latency.regressed
    # both in ingress-nginx's coarse buckets: whole buckets only, so x2 is within what they
    # can tell apart from x1.5 (bounds 2.5x apart), x3 is not
    coarse = steady(replace(BASE, bounds=INGRESS))
    assert once(coarse, slow).latency.state is State.OK
    assert once(coarse, step(CAND, replace(CAND, median=0.24), at=240.0)).latency.regressed


def test_latency_within_the_tolerated_ratio_is_not_regressed() -> None:
    for factor in (1.0, 1.3, 1.5):
        cand = Serving(rate=100.0, median=0.080 * factor, bounds=INGRESS)
        e = once(steady(replace(BASE, rate=900.0)), steady(cand))
        assert e.latency.state is State.OK, factor
        assert not e.latency.pending, factor
    faster = once(steady(BASE), steady(replace(CAND, median=0.05)))
    assert faster.latency.state is State.OK and faster.latency.p_value == pytest.approx(1.0)


def test_min_increase_gates_small_latencies() -> None:
    base = replace(BASE, median=0.004, sigma=0.3)
    cand = replace(CAND, median=0.008, sigma=0.3, bounds=LATENCY_BOUNDS)  # x2, +4 ms
    assert once(steady(base), steady(cand)).latency.state is State.OK
    assert once(steady(base), steady(cand), latency_min_increase=0.0).latency.regressed


def test_a_p99_from_few_requests_is_not_evidence() -> None:
    # 1.5% of the candidate's requests take 8 s: only its p99 moves
    tail = Serving(rate=1.0, tail_share=0.015, tail_latency=8.0, bounds=INGRESS)
    few = once(steady(Serving(rate=9.0)), steady(tail))  # 300 candidate requests
    assert few.latency.state is State.OK
    assert "p99" not in few.latency.test
    many = once(steady(BASE), steady(replace(tail, rate=20.0)))  # 6000
    assert many.latency.regressed
    assert many.latency.test.startswith("p99")
    assert many.figures.candidate_p99 > 5 * many.figures.baseline_p99


def test_a_source_without_latency_leaves_latency_inconclusive() -> None:
    def no_latency(serving: Serving) -> Tally:
        tally = expected(serving)
        tally.latency = None
        return tally

    e = judge_traffic(
        buckets(steady(BASE), 300.0),
        buckets(steady(replace(CAND, errors=0.09)), 300.0, no_latency),
        300.0,
        SETTINGS,
    )
    assert e.latency.state is State.INCONCLUSIVE and e.latency.test == "no latency histogram"
    assert e.errors.regressed
    assert e.figures.as_dict()["candidate_p95"] is None


# --- figures and input ---------------------------------------------------------------------


def test_figures_compare_quantiles_at_the_bounds_both_share() -> None:
    e = once(steady(BASE), steady(CAND))  # one distribution, two bucket layouts
    f = e.figures.as_dict()
    for key in ("p50_ratio", "p95_ratio", "p99_ratio"):
        assert f[key] == pytest.approx(1.0), key
    for key in (
        "candidate_p50", "candidate_p95", "baseline_p50", "baseline_p95", "candidate_error_ratio",
        "baseline_error_ratio", "error_ratio_delta", "p50_ratio", "p95_ratio", "candidate_p99",
        "baseline_p99", "candidate_requests", "baseline_requests", "candidate_rate",
        "baseline_rate",
    ):  # fmt: skip
        assert key in f, key
    assert f["candidate_requests"] == pytest.approx(6000.0)
    assert f["baseline_rate"] == pytest.approx(180.0)
    assert f["candidate_error_ratio"] == pytest.approx(0.01)
    assert 0.05 < f["baseline_p50"] < 0.1  # type: ignore[operator]


def test_gaps_count_as_no_traffic_and_only_the_window_counts() -> None:
    b = buckets(steady(BASE), 300.0)
    c = [x for i, x in enumerate(buckets(steady(CAND), 300.0)) if i % 2 == 0]  # every other
    old = [(-100.0, expected(replace(CAND, errors=1.0)))]
    future = [(300.0, expected(replace(CAND, errors=1.0)))]
    e = judge_traffic(b, old + c + future, 300.0, SETTINGS)
    assert e.figures.candidate_requests == pytest.approx(3000.0)
    assert e.figures.candidate_error_ratio == pytest.approx(0.01)
    assert e.errors.state is State.OK


def test_float_counts_from_prometheus_are_judged_like_counts() -> None:
    def extrapolated(serving: Serving) -> Tally:
        return expected(serving).scaled(1.07)

    for errors, regressed in ((0.01, False), (0.06, True)):
        cand = steady(replace(CAND, errors=errors))
        e = judge_traffic(
            buckets(steady(BASE), 300.0), buckets(cand, 300.0, extrapolated), 300.0, SETTINGS
        )
        assert e.errors.regressed is regressed
        assert e.figures.candidate_requests == pytest.approx(6420.0)


def test_a_traffic_incident_carries_figures_for_the_message() -> None:
    cand = step(CAND, replace(CAND, errors=0.08, median=0.2), at=300.0)
    alerts = Alerts(AlertSettings(for_=15.0))
    events = []
    for e in stream(steady(BASE), cand, until=400.0):
        events += alerts.update("traffic:checkout", e, e.at)
    signals = sorted(ev.incident.signal for ev in events if isinstance(ev, Fired))
    assert signals == ["errors", "latency"]
    incident = alerts.get("traffic:checkout", "errors")
    assert incident is not None
    assert incident.figures["candidate_requests"] == pytest.approx(6000.0)
    assert incident.figures["signal"] == "errors"
    cand_line, base_line, comparison = figures_lines(incident.figures, Context("heroku", "aws"))
    assert "errors" in cand_line and "n/a" not in cand_line
    assert "n/a" not in base_line
    assert "pts" in comparison and "n/a" not in comparison


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="confidence"):
        TrafficSettings(confidence=1.5)
    with pytest.raises(ValueError, match="min_requests"):
        TrafficSettings(min_requests=0)
    with pytest.raises(ValueError, match="window"):
        TrafficSettings(window=5.0)
    probes = JudgeSettings(confidence=0.995, latency_max_ratio=2.0, window=120.0)
    traffic = TrafficSettings.from_judge(probes, min_requests=50)
    assert (traffic.confidence, traffic.latency_max_ratio, traffic.window) == (0.995, 2.0, 120.0)
    assert TrafficSettings.from_judge(probes, 50, window=600.0).window == 600.0


# --- properties on random traffic ----------------------------------------------------------


def _random_platforms(
    gen: np.random.Generator,
) -> tuple[Serving, Serving, Callable[[float], float]]:
    """One random pair of identical platforms (rates by weight, layouts) and a shared load."""
    rate = float(gen.uniform(1.0, 150.0))
    weight = float(gen.uniform(0.05, 0.95))
    common = Serving(
        rate=1.0,
        errors=float(gen.choice([0.0, 0.001, 0.01, 0.05])),
        median=float(gen.uniform(0.01, 0.5)),
        sigma=float(gen.uniform(0.2, 1.0)),
    )
    layouts = [LATENCY_BOUNDS, INGRESS]
    base = replace(common, rate=rate * (1 - weight) / weight, bounds=layouts[int(gen.integers(2))])
    cand = replace(common, rate=rate, bounds=layouts[int(gen.integers(2))])
    period = float(gen.uniform(300.0, 3600.0))
    burst_at = float(gen.uniform(300.0, 900.0))

    def load(t: float) -> float:  # diurnal swings and a 10x burst, on both platforms
        return (0.55 + 0.45 * math.cos(2 * math.pi * t / period)) * (
            10.0 if burst_at <= t < burst_at + 60 else 1.0
        )

    return base, cand, load


def test_random_null_histories_never_regress() -> None:
    gen = np.random.default_rng(11)
    draw = drawn(gen)
    evaluations = regressed = pending = 0
    for _ in range(30):
        base, cand, load = _random_platforms(gen)
        for e in stream(
            lambda t, base=base, load=load: replace(base, rate=base.rate * load(t)),  # type: ignore[misc]
            lambda t, cand=cand, load=load: replace(cand, rate=cand.rate * load(t)),  # type: ignore[misc]
            until=900.0,
            make=draw,
        ):
            for v in e.verdicts():
                evaluations += v.state is not State.INCONCLUSIVE
                regressed += v.regressed
                pending += v.pending
    assert evaluations > 1500
    assert regressed <= ALPHA * evaluations / 10
    assert pending <= 0.02 * evaluations


def test_at_the_error_tolerance_one_evaluation_regresses_at_most_once_per_horizon_level() -> None:
    # each horizon's test keeps the level; the verdict takes the best of five horizons
    gen = np.random.default_rng(12)

    def counts(serving: Serving) -> Tally:  # requests and 5xx only: a source without latency
        n = float(gen.poisson(serving.rate * BUCKET))
        tally = Tally(requests=n)
        tally.responses["5xx"] = float(gen.binomial(int(n), serving.errors))
        return tally

    trials = significant = 0
    for _ in range(1500):
        rate = float(gen.uniform(2.0, 60.0))
        base = Serving(rate=rate * 9, errors=0.01)
        cand = Serving(rate=rate, errors=0.03)
        e = judge_traffic(
            buckets(steady(base), 300.0, counts),
            buckets(steady(cand), 300.0, counts),
            300.0,
            SETTINGS,
        )
        trials += e.errors.state is not State.INCONCLUSIVE
        significant += e.errors.significant
    assert trials > 1000
    assert significant / trials <= len(horizons(SETTINGS.window)) * ALPHA


def test_at_the_latency_tolerance_one_evaluation_regresses_at_most_at_the_level() -> None:
    gen = np.random.default_rng(13)
    draw = drawn(gen)
    significant = 0
    trials = 200
    for _ in range(trials):
        rate = float(gen.uniform(5.0, 100.0))
        median = float(gen.uniform(0.02, 0.4))
        base = Serving(rate=rate * 9, median=median)
        cand = Serving(rate=rate, median=median * 1.5, bounds=INGRESS)
        e = judge_traffic(
            buckets(steady(base), 300.0, draw), buckets(steady(cand), 300.0, draw), 300.0, SETTINGS
        )
        significant += e.latency.significant
    assert significant <= ALPHA * trials
