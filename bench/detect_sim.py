"""Virtual-time simulation for bench/detect: two platforms probed at the same ticks."""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.alerting.alerts import Alerts, AlertSettings, Fired, Resolved
from exporter.judging.judge import Evaluation, JudgeSettings, judge
from exporter.probing.window import Sample, Window

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
