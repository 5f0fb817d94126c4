"""Virtual-time simulation for bench/detect: two platforms probed at the same ticks, and their real traffic."""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.alerting.alerts import Alerts, AlertSettings, Fired, Resolved
from exporter.judging.judge import Evaluation, JudgeSettings, State, judge
from exporter.judging.traffic import TrafficEvaluation, TrafficSettings, judge_traffic
from exporter.probing.window import Sample, Window
from exporter.traffic.counts import LATENCY_BOUNDS, Histogram, Report, Tally
from exporter.traffic.timeline import Timeline

INTERVAL = 0.25  # seconds between probes, per platform
TIMEOUT = 1.0  # a probe slower than this fails as a timeout
MEDIAN = 0.080
SIGMA = 0.3
BACKGROUND_ERRORS = 0.01
WARMUP = 30.0  # seconds of normal traffic before a regression starts (the window is full)

JUDGE = JudgeSettings(window=20.0, min_samples=10)
ALERTING = AlertSettings(for_=3.0, resolve_after=10.0, repeat_interval=3600.0)


@dataclass(slots=True)
class Probe:
    ok: bool
    latency: float


# A modifier sees the side ("baseline"/"candidate"), the time since onset (negative before)
# and the probe as noise made it, and returns what the probe really gave.
Modifier = Callable[[str, float, Probe, random.Random, dict[str, float]], Probe]


@dataclass(frozen=True)
class Scenario:
    name: str
    null: bool
    modifier: Modifier
    noise: str = "iid"  # iid | ar | shared
    expect: str = ""  # the signal that should fire (detection scenarios)
    target: str = ""  # how the table judges it
    follow: float = 60.0  # seconds after onset before a detection counts as missed
    notes: str = ""


def _unchanged(
    side: str, since: float, probe: Probe, rng: random.Random, memo: dict[str, float]
) -> Probe:
    return probe


def slower(factor: float, sides: tuple[str, ...] = ("candidate",)) -> Modifier:
    def modify(
        side: str, since: float, probe: Probe, rng: random.Random, memo: dict[str, float]
    ) -> Probe:
        if since >= 0 and side in sides:
            probe.latency *= factor
        return probe

    return modify


def tail(share: float, factor: float) -> Modifier:
    def modify(
        side: str, since: float, probe: Probe, rng: random.Random, memo: dict[str, float]
    ) -> Probe:
        if since >= 0 and side == "candidate" and rng.random() < share:
            probe.latency *= factor
        return probe

    return modify


def failing(ratio: float) -> Modifier:
    """The candidate's failure ratio becomes `ratio` (background included)."""
    extra = (ratio - BACKGROUND_ERRORS) / (1 - BACKGROUND_ERRORS)

    def modify(
        side: str, since: float, probe: Probe, rng: random.Random, memo: dict[str, float]
    ) -> Probe:
        if since >= 0 and side == "candidate" and rng.random() < extra:
            probe.ok = False
        return probe

    return modify


def down(latency: float | None) -> Modifier:
    """Every candidate probe fails: instantly (refused), after `latency` (hang), or as usual."""

    def modify(
        side: str, since: float, probe: Probe, rng: random.Random, memo: dict[str, float]
    ) -> Probe:
        if since >= 0 and side == "candidate":
            probe.ok = False
            if latency is not None:
                probe.latency = latency
        return probe

    return modify


def drift(final: float, over: float) -> Modifier:
    def modify(
        side: str, since: float, probe: Probe, rng: random.Random, memo: dict[str, float]
    ) -> Probe:
        if since >= 0 and side == "candidate":
            probe.latency *= 1 + (final - 1) * min(1.0, since / over)
        return probe

    return modify


def episodes(
    every: float, lasting: float, sides: tuple[str, ...], factor: float, errors: float
) -> Modifier:
    """Recurring degradations of the given sides (for null scenarios: onset is the run's start)."""

    def modify(
        side: str, since: float, probe: Probe, rng: random.Random, memo: dict[str, float]
    ) -> Probe:
        if side in sides and since >= 0 and since % every >= every - lasting:
            probe.latency *= factor
            if rng.random() < errors:
                probe.ok = False
        return probe

    return modify


def blips(min_gap: float, mean_gap: float, lasting: float) -> Modifier:
    """Isolated short bursts of 503s on the candidate, min_gap + an exponential time apart."""

    def modify(
        side: str, since: float, probe: Probe, rng: random.Random, memo: dict[str, float]
    ) -> Probe:
        if side != "candidate" or since < 0:
            return probe
        if "next" not in memo:
            memo["next"] = since + rng.uniform(0, mean_gap)
            memo["until"] = -1.0
        if since >= memo["next"]:
            memo["until"] = memo["next"] + lasting
            memo["next"] = memo["until"] + min_gap + rng.expovariate(1 / (mean_gap - min_gap))
        if since < memo["until"]:
            probe.ok = False
        return probe

    return modify


SCENARIOS: list[Scenario] = [
    Scenario("latency x2", False, slower(2.0), expect="latency", target="caught"),
    Scenario("latency x3", False, slower(3.0), expect="latency", target="for+2 probes"),
    Scenario(
        "tail-only x4",
        False,
        tail(0.12, 6.0),
        expect="latency",
        target="caught",
        notes="12% of probes x6: p50 x1.05, p95 x3.9, p99 x4.5",
    ),
    Scenario("errors 5%", False, failing(0.05), expect="errors", target="caught", follow=120.0),
    Scenario("errors 15%", False, failing(0.15), expect="errors", target="15 s"),
    Scenario("hard down", False, down(0.001), expect="down", target="down_after"),
    Scenario("hang (timeouts)", False, down(TIMEOUT), expect="down", target="down_after"),
    Scenario("wrong body", False, down(None), expect="down", target="down_after"),
    Scenario(
        "slow drift",
        False,
        drift(3.0, 60.0),
        expect="latency",
        target="caught",
        follow=120.0,
        notes="x1 -> x3 over 60 s (x1.5 at 15 s)",
    ),
    Scenario("null: independent noise", True, _unchanged, target="<1/h"),
    Scenario("null: autocorrelated 0.8", True, _unchanged, noise="ar", target="<1/h"),
    Scenario("null: shared component", True, _unchanged, noise="shared", target="<1/h"),
    Scenario("null: 1.3x shift", True, slower(1.3), target="0"),
    Scenario(
        "null: both degrade",
        True,
        episodes(120.0, 30.0, ("baseline", "candidate"), 3.0, 0.0),
        target="0",
        notes="30 s of x3 latency on both, every 2 min",
    ),
    Scenario(
        "null: short blips",
        True,
        blips(60.0, 120.0, 0.4),
        target="0",
        notes="0.4 s of 503s on the candidate, at least 60 s apart, every 2 min on average;"
        " a 2-probe blip next to a background failure is 3 consecutive failures, the spec's"
        " down (about 0.4/h expected at 4 probes/s)",
    ),
    Scenario(
        "null: both fail +5%",
        True,
        episodes(120.0, 30.0, ("baseline", "candidate"), 1.0, 0.05),
        target="info",
        notes="30 s of +5% errors on both, every 2 min (beyond the issue's list)",
    ),
    Scenario(
        "null: baseline-only",
        True,
        episodes(180.0, 60.0, ("baseline",), 3.0, 0.15),
        target="0",
        notes="60 s of x3 and 15% errors on the baseline, every 3 min",
    ),
]


@dataclass(slots=True)
class Noise:
    kind: str
    rng: random.Random
    state: dict[str, float] = field(default_factory=lambda: {"b": 0.0, "c": 0.0, "s": 0.0})

    def step(self) -> tuple[float, float]:
        """ln-latency offsets of (baseline, candidate) for the next tick."""
        g = self.rng.gauss
        st = self.state
        if self.kind == "iid":
            return g(0, SIGMA), g(0, SIGMA)
        if self.kind == "ar":
            rho = 0.8
            k = math.sqrt(1 - rho * rho) * SIGMA
            st["b"] = rho * st["b"] + k * g(0, 1)
            st["c"] = rho * st["c"] + k * g(0, 1)
            return st["b"], st["c"]
        if self.kind == "shared":
            # a slow component both platforms share (a common database) and their own jitter
            st["s"] = 0.8 * st["s"] + math.sqrt(1 - 0.64) * 0.25 * g(0, 1)
            st["b"] = 0.5 * st["b"] + math.sqrt(1 - 0.25) * 0.2 * g(0, 1)
            st["c"] = 0.5 * st["c"] + math.sqrt(1 - 0.25) * 0.2 * g(0, 1)
            return st["s"] + st["b"], st["s"] + st["c"]
        raise ValueError(self.kind)

    def start(self) -> None:
        # draw the AR states from their stationary distribution, not from 0
        g = self.rng.gauss
        self.state = {"b": g(0, SIGMA), "c": g(0, SIGMA), "s": g(0, 0.25)}
        if self.kind == "shared":
            self.state["b"] = g(0, 0.2)
            self.state["c"] = g(0, 0.2)


@dataclass(slots=True)
class RunResult:
    scenario: int
    seed: int
    fired: list[tuple[float, str]]  # (seconds since onset, signal) of every Fired event
    probes_to_first: int  # candidate probes sent since onset when the first alert fired
    resolved_after: float  # seconds from the regression's end to the first incident's resolution
    hours: float  # judged time without a regression under way
    evaluations: int


# A detected regression goes on this long after the alert fired, then ends: how long the
# incident takes to resolve shows whether old evidence lingers.
KEEP_AFTER_FIRE = 10.0
FOLLOW_RESOLVE = 60.0


def run(index: int, seed: int, null_seconds: float) -> RunResult:
    scenario = SCENARIOS[index]
    rng = random.Random(f"{scenario.name}/{seed}")
    noise = Noise(scenario.noise, rng)
    noise.start()
    if scenario.null:
        onset = 0.0
        start = -JUDGE.window  # let the window fill before counting
        end = null_seconds
    else:
        onset = WARMUP + rng.uniform(0, INTERVAL)
        start = 0.0
        end = onset + scenario.follow
    windows = {"baseline": Window(JUDGE.window), "candidate": Window(JUDGE.window)}
    alerts = Alerts(ALERTING)
    previous: Evaluation | None = None
    fired: list[tuple[float, str]] = []
    probes_to_first = -1
    first_incident = ""
    ended = math.inf  # seconds since onset when the regression stops
    resolved_after = math.nan
    evaluations = 0
    memo: dict[str, float] = {}
    first_tick = -1  # the first tick probed at or after onset
    tick = 0
    t = start
    clock = start
    while t < end:
        if first_tick < 0 and t >= onset:
            first_tick = tick
        offsets = noise.step()
        finished = t
        for side, offset in zip(("baseline", "candidate"), offsets, strict=True):
            probe = Probe(ok=rng.random() >= BACKGROUND_ERRORS, latency=MEDIAN * math.exp(offset))
            if t - onset < ended:
                probe = scenario.modifier(side, t - onset, probe, rng, memo)
            if probe.latency >= TIMEOUT:
                probe = Probe(ok=False, latency=TIMEOUT)
            windows[side].add(Sample(t=t, tick=tick, ok=probe.ok, latency=probe.latency))
            finished = max(finished, t + probe.latency)
        # the daemon judges once both results of the tick are in, never back in time
        clock = max(clock, finished)
        evaluation = judge(
            windows["baseline"].samples(), windows["candidate"].samples(), clock, JUDGE, previous
        )
        previous = evaluation
        evaluations += 1
        if t >= 0 or not scenario.null:
            for event in alerts.update("health", evaluation, clock):
                if isinstance(event, Fired):
                    fired.append((clock - onset, event.incident.signal))
                    if not scenario.null and not first_incident and first_tick >= 0:
                        probes_to_first = tick - first_tick + 1
                        first_incident = event.incident.id
                        ended = clock - onset + KEEP_AFTER_FIRE
                        end = onset + ended + FOLLOW_RESOLVE
                elif isinstance(event, Resolved) and event.incident.id == first_incident:
                    resolved_after = clock - onset - ended
                    end = t  # done
        tick += 1
        t = start + tick * INTERVAL
    hours = max(0.0, min(t, end)) / 3600 if scenario.null else onset / 3600
    return RunResult(index, seed, fired, probes_to_first, resolved_after, hours, evaluations)


# ---------------------------------------------------------------------------------------------
# Real traffic: both platforms' counts per 5 s bucket, judged by exporter/judging/traffic.py.
#
# The baseline is seen through a Heroku drain (every request, binned into LATENCY_BOUNDS, in the
# bucket it ended in); the candidate through Prometheus' ingress-nginx metrics (the default
# buckets), one `increase()` every POLL seconds spread over the buckets it spans, as the
# Timeline does, extrapolated by a few percent as Prometheus' increase() is. The judge runs each
# time the candidate's source has covered a new span, on the real Timeline and Alerts.

TRAFFIC = TrafficSettings(window=300.0, min_requests=200)
POLL = 15.0  # the candidate's Prometheus interval
BUCKET = 5.0
INGRESS_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
T_MEDIAN = 0.080  # log-normal latencies of real requests: wider than a health check's
T_SIGMA = 0.6
T_ERRORS = 0.01  # background 5xx ratio on both platforms
SHARE = 9.0  # baseline requests per candidate request: a 10% weight
T_WARMUP = TRAFFIC.window  # the window is full when a regression starts
T_KEEP_AFTER_FIRE = 30.0  # a detected regression goes on this long after firing, then ends
T_FOLLOW_RESOLVE = 300.0


@dataclass(frozen=True, slots=True)
class Serving:
    """What one platform serves over a stretch of time: rate, 5xx ratio, latency distribution."""

    rate: float  # requests/s
    errors: float = T_ERRORS
    factor: float = 1.0  # latency multiplier of every request
    tail_share: float = 0.0  # share of requests slowed a further tail_factor times
    tail_factor: float = 1.0


# A profile says what a side serves, given its name, the seconds since onset (negative before;
# for null scenarios onset is the start of the judged time) and the seconds since the run began.
Profile = Callable[[str, float], Serving]


@dataclass(frozen=True)
class TrafficScenario:
    name: str
    null: bool
    profile: Profile
    expect: str = ""  # the signal that should fire (detection scenarios)
    target: str = ""  # how the table judges it
    follow: float = 300.0  # seconds after onset before a detection counts as missed
    settings: TrafficSettings = TRAFFIC
    route: str = "all"
    notes: str = ""


def _steady(rate: float) -> Profile:
    def profile(side: str, since: float) -> Serving:
        return Serving(rate * (SHARE if side == "baseline" else 1.0))

    return profile


def candidate_fails(rate: float, ratio: float) -> Profile:
    def profile(side: str, since: float) -> Serving:
        if side == "baseline":
            return Serving(rate * SHARE)
        return Serving(rate, errors=ratio if since >= 0 else T_ERRORS)

    return profile


def candidate_slower(
    rate: float, factor: float = 1.0, tail_share: float = 0.0, tail_factor: float = 1.0
) -> Profile:
    def profile(side: str, since: float) -> Serving:
        if side == "baseline" or since < 0:
            return Serving(rate * (SHARE if side == "baseline" else 1.0))
        return Serving(rate, factor=factor, tail_share=tail_share, tail_factor=tail_factor)

    return profile


def diurnal(rate: float, period: float, bursts_every: float, burst: float) -> Profile:
    """Both platforms' traffic follows a compressed day (half of it a night at 2%), with a 10x
    burst of `burst` seconds every `bursts_every` seconds, slower and failing more on both
    meanwhile."""

    def profile(side: str, since: float) -> Serving:
        level = 0.02 + 0.98 * max(0.0, math.cos(2 * math.pi * since / period))
        busy = since % bursts_every >= bursts_every - burst
        r = rate * level * (10.0 if busy else 1.0) * (SHARE if side == "baseline" else 1.0)
        return Serving(r, errors=0.02 if busy else T_ERRORS, factor=1.4 if busy else 1.0)

    return profile


def baseline_degrades(rate: float, every: float, lasting: float) -> Profile:
    def profile(side: str, since: float) -> Serving:
        if side == "baseline" and since % every >= every - lasting:
            return Serving(rate * SHARE, errors=0.2, factor=3.0)
        return Serving(rate * (SHARE if side == "baseline" else 1.0))

    return profile


def _lenient(errors: float) -> TrafficSettings:
    return TrafficSettings(
        window=TRAFFIC.window, min_requests=TRAFFIC.min_requests, errors_max_increase=errors
    )


TRAFFIC_SCENARIOS: list[TrafficScenario] = [
    *(
        TrafficScenario(
            f"errors 1%->5% @{rate:g}/s",
            False,
            candidate_fails(rate, 0.05),
            expect="errors",
            target=target,
            follow=600.0 if rate < 20 else 300.0,
        )
        for rate, target in ((5.0, "caught"), (20.0, "45 s"), (100.0, "45 s"))
    ),
    *(
        TrafficScenario(
            f"errors 1%->3% @{rate:g}/s +1pt",
            False,
            candidate_fails(rate, 0.03),
            expect="errors",
            target="caught",
            follow=900.0 if rate < 20 else 300.0,
            settings=_lenient(0.01),
            notes=""
            if rate != 5.0
            else "(+1pt rows) errors_max_increase 0.01: at the default 0.02, +2 pts is the"
            " tolerance itself (see 'at tolerance')",
        )
        for rate in (5.0, 20.0, 100.0)
    ),
    TrafficScenario(
        "route p95 x2 @20/s",
        False,
        candidate_slower(20.0, factor=2.0),
        expect="latency",
        target="45 s",
        route="redemptions",
        notes="one route group's requests all x2 (p50, p95, p99 x2); its own tallies are judged",
    ),
    TrafficScenario(
        "route tail p99 x3 @20/s",
        False,
        candidate_slower(20.0, tail_share=0.08, tail_factor=6.0),
        expect="latency",
        target="caught",
        route="redemptions",
        notes="8% of one route group's requests x6: p50 x1.07, p95 x1.95, p99 x2.96",
    ),
    TrafficScenario(
        "null: diurnal, 10x bursts",
        True,
        diurnal(20.0, 1800.0, 600.0, 120.0),
        target="0",
        notes="a 30-min day: up to 20/s, 0.4/s through its night (too few requests: inconclusive),"
        " and 2 min of 10x traffic every 10 min with 2% errors and x1.4 latency on both",
    ),
    TrafficScenario(
        "null: baseline degrades",
        True,
        baseline_degrades(20.0, 360.0, 120.0),
        target="0",
        notes="2 min of 20% errors and x3 latency on the baseline alone, every 6 min (20/s)",
    ),
    TrafficScenario(
        "at tolerance: errors 1%->3%",
        True,
        candidate_fails(20.0, 0.03),
        target="info",
        notes="+2 pts is errors_max_increase itself, H0's boundary: every look may fire at its"
        " level there (20/s)",
    ),
    TrafficScenario(
        "at tolerance: route p95 x1.5",
        True,
        candidate_slower(100.0, factor=1.5),
        target="info",
        route="redemptions",
        notes="x1.5 is latency_max_ratio itself (100/s); whole buckets only: the test's own"
        " boundary lies near x1.67 with these layouts",
    ),
]


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw: multiplication for small means, Hoermann's PTRS (as numpy) otherwise."""
    if mean <= 0.0:
        return 0
    if mean < 10.0:
        limit = math.exp(-mean)
        k = 0
        p = rng.random()
        while p > limit:
            k += 1
            p *= rng.random()
        return k
    slam = math.sqrt(mean)
    loglam = math.log(mean)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        k = math.floor((2 * a / us + b) * u + mean + 0.43)
        if us >= 0.07 and v <= vr:
            return k
        if k < 0 or (us < 0.013 and v > us):
            continue
        if math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b) <= (
            -mean + k * loglam - math.lgamma(k + 1)
        ):
            return k


def _cdf(x: float, median: float) -> float:
    return 0.5 * math.erfc(-math.log(x / median) / (T_SIGMA * math.sqrt(2)))


@lru_cache(maxsize=4096)
def _bin_shares(bounds: tuple[float, ...], serving: Serving) -> tuple[float, ...]:
    """The share of requests in each bucket (the last: +Inf) for a serving's latencies."""
    median = T_MEDIAN * serving.factor
    cumulative = [
        (1 - serving.tail_share) * _cdf(b, median)
        + serving.tail_share * _cdf(b, median * serving.tail_factor)
        for b in bounds
    ]
    return tuple(hi - lo for lo, hi in zip([0.0, *cumulative], [*cumulative, 1.0], strict=True))


def _latency(rng: random.Random, serving: Serving) -> float:
    slow = serving.tail_factor if rng.random() < serving.tail_share else 1.0
    return T_MEDIAN * serving.factor * slow * math.exp(rng.gauss(0, T_SIGMA))


def draw(rng: random.Random, serving: Serving, seconds: float, bounds: tuple[float, ...]) -> Tally:
    """Poisson arrivals over `seconds`: 5xx independently at the serving's ratio, latencies binned."""
    mean = serving.rate * seconds
    hist = Histogram(bounds)
    ok = 0
    for i, share in enumerate(_bin_shares(bounds, serving)):
        if share * mean > 1e-9:
            n = poisson(rng, share * mean * (1 - serving.errors))
            hist.counts[i] += n
            ok += n
    failed = poisson(rng, mean * serving.errors)
    for _ in range(failed):
        hist.add(_latency(rng, serving))
    tally = Tally(requests=float(ok + failed), latency=hist)
    tally.responses["2xx"] = float(ok)
    tally.responses["5xx"] = float(failed)
    return tally


@dataclass(slots=True)
class TrafficResult:
    scenario: int
    seed: int
    fired: list[tuple[float, str]]  # (seconds since onset, signal) of every Fired event
    requests_to_first: float  # candidate requests since onset when the first alert fired
    resolved_after: float  # seconds from the regression's end to the first incident's resolution
    hours: float  # judged time without a regression under way
    evaluations: int
    inconclusive: float  # share of full-window evaluations whose errors verdict was inconclusive


def _served(
    profile: Profile, side: str, start: float, end: float, onset: float, ended: float
) -> list[tuple[float, Serving]]:
    """(seconds, serving) pieces of [start, end), cut at the onset and at the end of the regression."""
    cuts = sorted({start, end, *(c for c in (onset, onset + ended) if start < c < end)})
    pieces = []
    for lo, hi in pairwise(cuts):
        since = lo - onset
        serving = profile(side, since) if since < ended else profile(side, -1.0)
        pieces.append((hi - lo, serving))
    return pieces


def run_traffic(index: int, seed: int, null_seconds: float) -> TrafficResult:
    scenario = TRAFFIC_SCENARIOS[index]
    settings = scenario.settings
    rng = random.Random(f"traffic/{scenario.name}/{seed}")
    if scenario.null:
        onset = settings.window  # judged from a full window on
        end = onset + null_seconds
    else:
        onset = T_WARMUP + rng.uniform(0, POLL)
        end = onset + scenario.follow
    timeline = Timeline(bucket=BUCKET, keep=settings.window + 4 * POLL)
    alerts = Alerts(ALERTING)
    check = f"traffic:{scenario.route}"
    previous: TrafficEvaluation | None = None
    fired: list[tuple[float, str]] = []
    requests_to_first = math.nan
    first_incident = ""
    ended = math.inf  # seconds since onset when the regression stops
    resolved_after = math.nan
    evaluations = judged = inconclusive = 0
    candidate_since_onset = 0.0
    t = 0.0
    while t < end:
        # the baseline's drain: every 5 s bucket as it happened
        for lo in (t + k * BUCKET for k in range(int(POLL / BUCKET))):
            tally = Tally()
            for seconds, serving in _served(
                scenario.profile, "baseline", lo, lo + BUCKET, onset, ended
            ):
                tally.merge(draw(rng, serving, seconds, LATENCY_BOUNDS))
            timeline.add(Report("drain", "heroku", scenario.route, lo, lo + BUCKET, tally), lo)
        # the candidate's Prometheus query: increase() over the poll interval, extrapolated
        tally = Tally()
        for seconds, serving in _served(scenario.profile, "candidate", t, t + POLL, onset, ended):
            part = draw(rng, serving, seconds, INGRESS_BOUNDS)
            tally.merge(part)
        if t + POLL > onset:
            candidate_since_onset += tally.requests * min(1.0, (t + POLL - onset) / POLL)
        tally = tally.scaled(rng.uniform(1.0, 1.08))
        timeline.add(Report("prometheus", "aws", scenario.route, t, t + POLL, tally), t + POLL)
        t += POLL
        evaluation = judge_traffic(
            timeline.series("heroku", scenario.route, t - settings.window, t),
            timeline.series("aws", scenario.route, t - settings.window, t),
            t,
            settings,
            previous,
        )
        previous = evaluation
        evaluations += 1
        if t >= settings.window:  # once the window is full: a quiet night, not the start
            judged += 1
            inconclusive += evaluation.errors.state is State.INCONCLUSIVE
        if scenario.null and t <= onset:
            continue
        for event in alerts.update(check, evaluation, t):
            if isinstance(event, Fired):
                fired.append((t - onset, event.incident.signal))
                if not scenario.null and not first_incident and t >= onset:
                    requests_to_first = candidate_since_onset
                    first_incident = event.incident.id
                    ended = t - onset + T_KEEP_AFTER_FIRE
                    end = onset + ended + T_FOLLOW_RESOLVE
            elif isinstance(event, Resolved) and event.incident.id == first_incident:
                resolved_after = t - onset - ended
                end = t  # done
    hours = max(0.0, min(t, end) - onset) / 3600 if scenario.null else onset / 3600
    return TrafficResult(
        index,
        seed,
        fired,
        requests_to_first,
        resolved_after,
        hours,
        evaluations,
        inconclusive / max(1, judged),
    )
