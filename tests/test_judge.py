"""The judge: its statistics against scipy, and its verdicts on synthetic windows."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from exporter.alerting.alerts import Alerts, AlertSettings, Fired
from exporter.judging.judge import (
    Evaluation,
    JudgeSettings,
    State,
    ar1_variance_factor,
    binom_sf,
    exceedance_sf,
    fisher_greater,
    hypergeom_cdf,
    hypergeom_sf,
    judge,
    lag1_autocorrelation,
    norm_sf,
)
from exporter.probing.window import Sample

INTERVAL = 0.25
MEDIAN = 0.080
SIGMA = 0.3
# the compressed timing of bench/detect: 80 pairs per window
SETTINGS = JudgeSettings(window=20.0)


# --- statistics ----------------------------------------------------------------------------


@pytest.mark.parametrize("z", [-8.0, -2.5, -1.0, 0.0, 0.3, 1.6449, 2.3263, 4.0, 8.5])
def test_norm_sf_matches_scipy(z: float) -> None:
    assert norm_sf(z) == pytest.approx(stats.norm.sf(z), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [(0, 10, 0.3), (1, 1, 0.5), (3, 16, 0.032), (7, 80, 0.02), (12, 20, 0.5), (40, 80, 0.1),
     (5, 5, 0.9), (2, 300, 0.001), (80, 80, 0.5)],
)  # fmt: skip
def test_binom_sf_matches_scipy(k: int, n: int, p: float) -> None:
    expected = stats.binomtest(k, n, p, alternative="greater").pvalue if k > 0 else 1.0
    assert binom_sf(k, n, p) == pytest.approx(expected, rel=1e-9)
    assert binom_sf(k, n, p) == pytest.approx(stats.binom.sf(k - 1, n, p), rel=1e-9)


def test_binom_sf_edges() -> None:
    assert binom_sf(3, 2, 0.5) == 0.0
    assert binom_sf(1, 10, 0.0) == 0.0
    assert binom_sf(10, 10, 1.0) == 1.0


def test_fisher_greater_matches_scipy() -> None:
    rng = random.Random(4)
    tables = [(0, 16, 0, 16), (4, 12, 0, 16), (7, 73, 1, 79), (2, 0, 0, 2), (30, 50, 10, 70)]
    for _ in range(40):
        tables.append(
            (rng.randint(0, 40), rng.randint(0, 40), rng.randint(0, 40), rng.randint(0, 40))
        )
    for a, b, c, d in tables:
        _, expected = stats.fisher_exact([[a, b], [c, d]], alternative="greater")
        assert fisher_greater(a, b, c, d) == pytest.approx(expected, rel=1e-9), (a, b, c, d)


@pytest.mark.parametrize(("total", "successes", "draws"), [(96, 5, 16), (160, 80, 80), (20, 3, 7)])
def test_hypergeom_tails_match_scipy(total: int, successes: int, draws: int) -> None:
    dist = stats.hypergeom(total, successes, draws)
    for x in range(-1, min(successes, draws) + 2):
        assert hypergeom_sf(x, total, successes, draws) == pytest.approx(
            dist.sf(x - 1), rel=1e-9, abs=1e-15
        )
        assert hypergeom_cdf(x, total, successes, draws) == pytest.approx(
            dist.cdf(x), rel=1e-9, abs=1e-15
        )


@pytest.mark.parametrize(("reference", "rank", "n"), [(40, 1, 20), (30, 2, 30)])
def test_exceedance_sf_matches_simulation(reference: int, rank: int, n: int) -> None:
    # K: how many of n new values exceed the rank-th largest of the reference values
    gen = np.random.default_rng(7)
    runs = 40_000
    ref = np.sort(gen.lognormal(0, 0.3, (runs, reference)), axis=1)[:, reference - rank]
    new = gen.lognormal(0, 0.3, (runs, n))
    counts = (new > ref[:, None]).sum(axis=1)
    for k in range(1, 6):
        empirical = float((counts >= k).mean())
        assert exceedance_sf(k, reference, rank, n) == pytest.approx(empirical, abs=0.006), k


def test_exceedance_sf_known_values() -> None:
    # the largest of all values is a new one with probability n / (reference + n)
    assert exceedance_sf(1, 80, 1, 20) == pytest.approx(20 / 100)
    # the top k are all new: C(n, k) / C(reference + n, k)
    assert exceedance_sf(3, 80, 1, 20) == pytest.approx(math.comb(20, 3) / math.comb(100, 3))
    assert exceedance_sf(0, 80, 1, 20) == 1.0
    assert exceedance_sf(21, 80, 1, 20) == 0.0


@pytest.mark.parametrize(("n", "rho"), [(1, 0.8), (2, 0.8), (8, 0.5), (30, 0.8), (80, 0.3)])
def test_ar1_variance_factor_matches_covariance_sum(n: int, rho: float) -> None:
    # Var(mean) = sigma^2 / n^2 * sum_ij rho^|i-j|
    total = sum(rho ** abs(i - j) for i in range(n) for j in range(n))
    assert ar1_variance_factor(n, rho) == pytest.approx(total / n, rel=1e-12)


def test_lag1_autocorrelation_matches_numpy() -> None:
    gen = np.random.default_rng(3)
    x = np.zeros(500)
    for i in range(1, 500):
        x[i] = 0.8 * x[i - 1] + gen.normal()
    d = x - x.mean()
    expected = float((d[:-1] * d[1:]).sum() / (d * d).sum())
    assert lag1_autocorrelation(list(x)) == pytest.approx(expected, rel=1e-9)
    assert 0.7 < expected < 0.9
    assert lag1_autocorrelation([1.0, 1.0, 1.0, 1.0]) == 0.0


# --- synthetic windows ---------------------------------------------------------------------

Latency = Callable[[int, random.Random], float]
Probe = Callable[[int, random.Random], tuple[bool, float]]


def iid(factor: float = 1.0, median: float = MEDIAN, sigma: float = SIGMA) -> Latency:
    return lambda i, rng: median * factor * math.exp(rng.gauss(0, sigma))


def window(
    base: Latency,
    cand: Latency,
    n: int = 80,
    seed: int = 0,
    base_fail: float = 0.0,
    cand_fail: float = 0.0,
) -> tuple[list[Sample], list[Sample], float]:
    """n ticks of both platforms; returns the samples and `now`."""
    rng = random.Random(seed)
    bs, cs = [], []
    for i in range(n):
        t = i * INTERVAL
        bs.append(Sample(t, i, rng.random() >= base_fail, base(i, rng)))
        cs.append(Sample(t, i, rng.random() >= cand_fail, cand(i, rng)))
    return bs, cs, (n - 1) * INTERVAL + 0.2


def judged(
    base: Latency, cand: Latency, seed: int = 0, base_fail: float = 0.0, cand_fail: float = 0.0
) -> Evaluation:
    bs, cs, now = window(base, cand, seed=seed, base_fail=base_fail, cand_fail=cand_fail)
    return judge(bs, cs, now, SETTINGS)


def stream(
    base: Probe,
    cand: Probe,
    ticks: int,
    seed: int,
    settings: JudgeSettings = SETTINGS,
) -> list[Evaluation]:
    """Evaluate after every tick, as the daemon does, carrying the previous evaluation."""
    rng = random.Random(seed)
    bs: list[Sample] = []
    cs: list[Sample] = []
    evaluations: list[Evaluation] = []
    previous = None
    for i in range(ticks):
        t = i * INTERVAL
        ok, latency = base(i, rng)
        bs.append(Sample(t, i, ok, latency))
        ok, latency = cand(i, rng)
        cs.append(Sample(t, i, ok, latency))
        keep = int(settings.window / INTERVAL)
        del bs[:-keep], cs[:-keep]
        previous = judge(bs, cs, t + 0.2, settings, previous)
        evaluations.append(previous)
    return evaluations


def noisy(offset: Callable[[int, random.Random], float]) -> Probe:
    """Successful probes around MEDIAN, with ln-latency offsets from `offset`."""
    return lambda i, rng: (True, MEDIAN * math.exp(offset(i, rng)))


def ar1(rho: float, sigma: float = SIGMA) -> Callable[[int, random.Random], float]:
    """ln-latency offsets of an AR(1) process with the given lag-1 correlation and spread."""
    state = {"x": 0.0}
    scale = math.sqrt(1 - rho * rho) * sigma

    def step(i: int, rng: random.Random) -> float:
        state["x"] = rho * state["x"] + scale * rng.gauss(0, 1) if i else rng.gauss(0, sigma)
        return state["x"]

    return step


# --- latency -------------------------------------------------------------------------------


def test_identical_platforms_are_not_regressed_over_many_seeds() -> None:
    flagged = 0
    for seed in range(100):
        e = judged(iid(), iid(), seed=seed)
        assert e.latency.state is not State.INCONCLUSIVE
        flagged += e.latency.significant
    assert flagged <= 1


@pytest.mark.parametrize("factor", [2.0, 3.0])
def test_a_whole_distribution_shift_is_regressed(factor: float) -> None:
    e = judged(iid(), iid(factor), seed=1)
    assert e.latency.state is State.REGRESSED
    assert e.latency.significant
    assert e.latency.test == "paired log-ratio"
    assert e.latency.estimate == pytest.approx(factor, rel=0.15)
    assert e.latency.p_value < 1e-6
    assert e.figures.p50_ratio == pytest.approx(factor, rel=0.2)


def test_a_x3_step_shows_within_a_few_pairs() -> None:
    caught = 0
    for seed in range(20):
        e = judged(iid(), lambda i, rng: iid(3.0 if i >= 72 else 1.0)(i, rng), seed=seed)
        caught += e.latency.significant
    # eight pairs (2 s) after the step, in a window of 80
    assert caught >= 17


def test_credible_latency_evidence_is_pending_before_it_is_significant() -> None:
    # x3 from tick 80 on, fed to the incident machine with `for` 3 s (12 probes): the `for`
    # clock starts at the first credible (pending) verdict, so it fires within `for` + 2 probes
    # of the step, while firing still needs a significant verdict
    step = 80
    first_ticks = []
    head_starts = 0
    for seed in range(10):
        alerts = Alerts(AlertSettings(for_=3.0, resolve_after=10.0))
        runs = stream(
            lambda i, rng: (True, iid()(i, rng)),
            lambda i, rng: (True, iid(3.0 if i >= step else 1.0)(i, rng)),
            ticks=step + 40,
            seed=seed,
        )
        fired_at = None
        for i, e in enumerate(runs):
            v = e.latency
            if v.pending:
                assert v.state is State.OK and not v.significant
                assert v.p_value < SETTINGS.hold_p_value and v.estimate > v.threshold
                assert v.since is not None and v.since <= e.at
            assert not e.errors.pending and not e.down.pending
            events = alerts.update("health", e, e.at)
            if any(isinstance(ev, Fired) for ev in events):
                assert v.significant and i >= step, (seed, i)
                fired_at = i
                break
        assert fired_at is not None, seed
        incident = alerts.get("health", "latency")
        assert incident is not None
        assert incident.started_at < runs[fired_at].at - 3.0 + 1e-9
        first_significant = next(i for i in range(step, len(runs)) if runs[i].latency.significant)
        assert incident.started_at <= runs[first_significant].at
        head_starts += incident.started_at < runs[first_significant].at
        first_ticks.append(fired_at - step + 1)
    # the pending state's head start, mostly: a lucky first pair may be significant at once
    assert head_starts >= 5
    # for (12 probes) + 2, as bench/detect asks of the median
    assert sorted(first_ticks)[len(first_ticks) // 2] <= 14, first_ticks


def test_pending_evidence_on_identical_platforms_stays_pending() -> None:
    pending = 0
    for seed in range(3):
        runs = stream(noisy(ar1(0.8)), noisy(ar1(0.8)), ticks=800, seed=seed)
        for e in runs[80:]:
            pending += e.latency.pending
            if e.latency.pending:
                assert e.latency.state is State.OK
    # credible now and then, which is what a hold level of 0.2 means; never more than that
    assert pending / (3 * 720) < 0.2


def test_a_tail_only_regression_is_regressed() -> None:
    # 12% of the candidate's probes 6x slower from tick 80 on: median unchanged, p95 about 4x
    def cand(i: int, rng: random.Random) -> tuple[bool, float]:
        slow = i >= 80 and rng.random() < 0.12
        return True, iid()(i, rng) * (6.0 if slow else 1.0)

    for seed in range(6):
        runs = stream(lambda i, rng: (True, iid()(i, rng)), cand, ticks=240, seed=seed)
        assert not any(e.latency.regressed for e in runs[:80])
        caught = [e for e in runs[80:] if e.latency.significant]
        assert caught, seed  # within 40 s
        assert caught[0].figures.p50_ratio < 1.3
        # the location test alone would not see it for long: the tail test does
        assert any(e.latency.test == "tail exceedances" for e in caught)


def test_a_shift_inside_the_tolerance_is_not_regressed() -> None:
    flagged = sum(judged(iid(), iid(1.3), seed=seed).latency.significant for seed in range(100))
    assert flagged == 0


def test_min_increase_gates_small_latencies() -> None:
    # 1.6x on a 5 ms baseline is 3 ms: under min_increase (25 ms), never a regression
    fast = judged(iid(median=0.005, sigma=0.1), iid(1.6, median=0.005, sigma=0.1), seed=2)
    assert fast.latency.state is State.OK
    assert fast.latency.threshold == pytest.approx(1 + 0.025 / 0.005, rel=0.05)
    # the same ratio on 80 ms is 48 ms, beyond both tolerances
    slow = judged(iid(sigma=0.1), iid(1.6, sigma=0.1), seed=2)
    assert slow.latency.state is State.REGRESSED


def test_both_platforms_slowing_together_is_not_a_regression() -> None:
    # a shared database: both x3 for the last 20 ticks, plus a slow swing both feel
    shared = ar1(0.8, 0.25)
    common: dict[int, float] = {}

    def side(i: int, rng: random.Random) -> float:
        if i not in common:
            common[i] = shared(i, rng) + (math.log(3.0) if i >= 60 else 0.0)
        return MEDIAN * math.exp(common[i] + rng.gauss(0, 0.2))

    for seed in range(10):
        common.clear()
        e = judged(side, side, seed=seed)
        assert e.latency.state is State.OK, seed
        # while the candidate alone, judged against its own past, would look three times slower
        assert e.figures.candidate_p95 > 1.5 * MEDIAN


def test_autocorrelated_noise_rarely_alarms() -> None:
    # lag-1 0.8 on both platforms: a plain test on the window alarms in ~15% of windows
    alerts = Alerts(AlertSettings(for_=3.0, resolve_after=10.0))
    fired = 0
    significant = 0
    evaluations = 0
    for seed in range(6):
        runs = stream(noisy(ar1(0.8)), noisy(ar1(0.8)), ticks=1600, seed=seed)
        for e in runs[80:]:
            evaluations += 1
            significant += e.latency.significant
            fired += sum(isinstance(ev, Fired) for ev in alerts.update(f"c{seed}", e, e.at))
    # 0.67 hours of probing at 4 per second
    assert fired <= 1
    assert significant / evaluations < 0.01


def test_a_regression_that_ended_ages_out_quickly() -> None:
    # x3 for 60 ticks, then back to normal: the 80-pair window still holds the slow pairs
    def cand(i: int, rng: random.Random) -> tuple[bool, float]:
        return True, iid(3.0 if 40 <= i < 100 else 1.0)(i, rng)

    for seed in range(5):
        runs = stream(lambda i, rng: (True, iid()(i, rng)), cand, ticks=180, seed=seed)
        assert runs[99].latency.state is State.REGRESSED
        back = next(i for i in range(100, 180) if runs[i].latency.state is State.OK)
        assert back - 100 <= 12, back  # 3 s, while the window spans 20 s
        assert all(runs[i].latency.state is State.OK for i in range(back + 4, 180))


def test_hysteresis_holds_a_regression_while_p_stays_low() -> None:
    # x2 from tick 40 on: once regressed, evaluations just above the confidence keep it
    def cand(i: int, rng: random.Random) -> tuple[bool, float]:
        return True, iid(2.0 if i >= 40 else 1.0)(i, rng)

    runs = stream(lambda i, rng: (True, iid()(i, rng)), cand, ticks=200, seed=11)
    first = next(i for i, e in enumerate(runs) if e.latency.regressed)
    held = [e for e in runs[first:] if e.latency.regressed and not e.latency.significant]
    assert all(e.latency.p_value < SETTINGS.hold_p_value for e in held)
    assert all(e.latency.regressed for e in runs[first + 8 :])
    # first seen when it became pending: the unbroken run of pending verdicts before `first`
    start = first
    while start > 0 and runs[start - 1].latency.pending:
        start -= 1
    assert start >= 40
    assert runs[-1].latency.since == runs[start].at


# --- errors and down -----------------------------------------------------------------------


def test_a_15_percent_error_rate_is_regressed() -> None:
    caught = sum(
        judged(iid(), iid(), seed=s, base_fail=0.01, cand_fail=0.15).errors.significant
        for s in range(20)
    )
    assert caught >= 16


def test_an_error_burst_that_stops_does_not_fire() -> None:
    # three failures in six probes, then none: plainly above the baseline, but over at once
    alerts = Alerts(AlertSettings(for_=3.0, resolve_after=10.0))
    burst = {90, 92, 94}

    def cand(i: int, rng: random.Random) -> tuple[bool, float]:
        return i not in burst, iid()(i, rng)

    for seed in range(3):
        runs = stream(lambda i, rng: (True, iid()(i, rng)), cand, ticks=160, seed=seed)
        assert any(e.errors.significant for e in runs)
        events = [ev for e in runs for ev in alerts.update(f"c{seed}", e, e.at)]
        assert events == []
        assert all(e.errors.state is State.OK for e in runs[-20:])


def test_equal_error_rates_are_not_regressed() -> None:
    flagged = sum(
        judged(iid(), iid(), seed=s, base_fail=0.05, cand_fail=0.05).errors.significant
        for s in range(100)
    )
    assert flagged <= 1


def test_a_short_blip_is_not_an_error_regression() -> None:
    # two 503s in a row on the candidate, nothing on the baseline
    bs, cs, now = window(iid(), iid(), seed=3)
    cs[70] = Sample(cs[70].t, 70, False, cs[70].latency)
    cs[71] = Sample(cs[71].t, 71, False, cs[71].latency)
    e = judge(bs, cs, now, SETTINGS)
    assert e.errors.state is State.OK
    assert e.down.state is State.OK
    assert e.figures.candidate_error_ratio == pytest.approx(2 / 80)


def test_shared_errors_are_not_the_candidate_s() -> None:
    flagged = 0
    for seed in range(50):
        e = judged(iid(), iid(), seed=seed, base_fail=0.2, cand_fail=0.2)
        flagged += e.errors.significant
    assert flagged <= 1


def test_down_after_consecutive_failures() -> None:
    bs, cs, now = window(iid(), iid(), seed=4)
    for i in (77, 78):
        cs[i] = Sample(cs[i].t, i, False, 0.001)
    assert judge(bs, cs, now, SETTINGS).down.state is State.OK
    cs[79] = Sample(cs[79].t, 79, False, 0.001)
    down = judge(bs, cs, now, SETTINGS).down
    assert down.state is State.REGRESSED
    assert down.significant
    assert down.estimate == 3.0
    assert down.since == now


def test_both_platforms_down_is_not_the_candidate_s() -> None:
    bs, cs, now = window(iid(), iid(), seed=5)
    for i in range(75, 80):
        bs[i] = Sample(bs[i].t, i, False, 0.001)
        cs[i] = Sample(cs[i].t, i, False, 0.001)
    down = judge(bs, cs, now, SETTINGS).down
    assert down.state is State.OK
    assert down.threshold == math.inf


def test_too_few_samples_is_inconclusive_never_regressed() -> None:
    bs, cs, now = window(iid(), iid(10.0), n=5, cand_fail=0.6, seed=6)
    e = judge(bs, cs, now, SETTINGS)
    assert e.latency.state is State.INCONCLUSIVE
    assert e.errors.state is State.INCONCLUSIVE
    assert not e.latency.significant and not e.errors.significant
    assert math.isnan(e.latency.p_value)
    assert judge(bs[:2], cs[:2], now, SETTINGS).down.state is State.INCONCLUSIVE
    assert judge([], [], now, SETTINGS).latency.state is State.INCONCLUSIVE


def test_only_paired_recent_samples_count() -> None:
    bs, cs, now = window(iid(), iid(), seed=8)
    # candidate probes without a baseline partner, and very old ones, are not compared
    cs += [Sample(now, 1000 + i, True, 5.0) for i in range(5)]
    cs = [Sample(-100.0, -1, True, 9.0), *cs]
    e = judge(bs, cs, now, SETTINGS)
    assert e.figures.pairs == 80
    assert e.figures.candidate_samples == 85
    assert e.latency.state is State.OK


def test_figures_for_a_message() -> None:
    e = judged(iid(sigma=0.0), iid(3.0, sigma=0.0), seed=9, base_fail=0.0, cand_fail=0.0)
    f = e.figures
    assert (f.baseline_p50, f.candidate_p95) == (pytest.approx(0.08), pytest.approx(0.24))
    assert f.p95_ratio == pytest.approx(3.0)
    assert f.baseline_samples == f.candidate_samples == 80
    assert f.error_ratio_delta == 0.0
    empty = judge([], [], 0.0, SETTINGS).figures.as_dict()
    assert empty["baseline_p50"] is None and empty["baseline_error_ratio"] is None


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="confidence"):
        JudgeSettings(confidence=1.5)
    with pytest.raises(ValueError, match="down_after"):
        JudgeSettings(down_after=0)
