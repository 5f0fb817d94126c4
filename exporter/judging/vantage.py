"""Several vantage points judged as one (issue 14, item 4): what each replica reports per round,
and the leader's pure combination of those reports into fired regressions and a step gate.

Pure: reports, the time and the settings in, decisions out; no I/O, no clock of its own.

Each replica judges the candidate from its own vantage (a region) and writes one `VantageReport`
a round. A region where both platforms fail is *impaired* for that check: its verdicts there
are never evidence against the candidate. The leader reads the latest report of every vantage
and calls `combine`: a regression fires when `confirm` healthy vantages see it, or one vantage
sees it on two consecutive rounds of its own; a step may advance only when `quorum` healthy
vantages see no regression anywhere. Reports travel as plain dicts (`to_dict` / `from_dict`),
later as DynamoDB items, so `from_dict` refuses anything it does not fully understand.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from exporter.judging.judge import SIGNALS, Evaluation, Figures, State, Verdict

# the readiness verdict's way of summing up many reasons of one kind, and of saying how long
from exporter.judging.readiness import _few, span

REPORT_VERSION: Final = 1
# A vantage's own consecutive rounds that make a regression fire without confirmation
# elsewhere: one round may be a regional blip, two in a row are not.
STREAK_ROUNDS: Final = 2


class Seen(StrEnum):
    """What one vantage's judge says of one signal in one round."""

    OK = "ok"
    PENDING = "pending"  # credible evidence, not yet significant (the judge's `pending`)
    REGRESSED = "regressed"
    INCONCLUSIVE = "inconclusive"  # too few samples


def seen(verdict: Verdict) -> Seen:
    """The judge's verdict reduced to what other vantages need to know of it."""
    if verdict.state is State.REGRESSED:
        return Seen.REGRESSED
    if verdict.state is State.INCONCLUSIVE:
        return Seen.INCONCLUSIVE
    return Seen.PENDING if verdict.pending else Seen.OK


@dataclass(frozen=True, slots=True)
class SignalReport:
    """One signal of one check from one vantage.

    `streak` counts this vantage's consecutive rounds, this one included, in which the signal
    was regressed while the vantage was not impaired: 0 unless regressed. The writer carries it
    from its previous report (`next_report`), so the leader needs no memory of its own: a new
    leader, or one that missed a round's read, sees the same streak.
    """

    seen: Seen
    streak: int = 0


@dataclass(frozen=True, slots=True)
class CheckFigures:
    """What Slack and the page show of one check from one vantage; None where not measured."""

    baseline_p95: float | None = None  # seconds
    candidate_p95: float | None = None
    baseline_error_ratio: float | None = None  # fraction of probes
    candidate_error_ratio: float | None = None

    @classmethod
    def of(cls, figures: Figures) -> CheckFigures:
        """The judge's window figures, NaN as None (a report holds no NaN)."""
        return cls(
            baseline_p95=_finite(figures.baseline_p95),
            candidate_p95=_finite(figures.candidate_p95),
            baseline_error_ratio=_finite(figures.baseline_error_ratio),
            candidate_error_ratio=_finite(figures.candidate_error_ratio),
        )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


_FIGURES: Final = ("baseline_p95", "candidate_p95", "baseline_error_ratio", "candidate_error_ratio")


@dataclass(frozen=True, slots=True)
class CheckReport:
    """One check from one vantage in one round: a report per signal (every one of SIGNALS),
    whether the vantage is impaired for the check (both platforms fail from there), figures."""

    signals: Mapping[str, SignalReport]
    impaired: bool = False
    figures: CheckFigures = CheckFigures()

    def signal(self, name: str) -> SignalReport:
        return self.signals[name]


def observe(evaluation: Evaluation, impaired: bool) -> CheckReport:
    """One check's evaluation in this round, streaks not yet carried (see `next_report`).

    `impaired` is the prober's own judgement (state.both_failing): a regressed signal then
    starts no streak, since an outage seen from here is no evidence against the candidate.
    """
    signals = {}
    for verdict in evaluation.verdicts():
        state = seen(verdict)
        streak = int(state is Seen.REGRESSED and not impaired)
        signals[verdict.signal] = SignalReport(state, streak)
    return CheckReport(signals, impaired, CheckFigures.of(evaluation.figures))


@dataclass(frozen=True, slots=True)
class VantageReport:
    """What one replica writes each round for its vantage.

    `round` is counted by the vantage itself (1, 2, ...); `at` is its own wall-clock time, used
    only for display and to tell a silent vantage: clocks of different machines are not
    compared for anything finer than the two-round allowance.
    """

    vantage: str
    round: int
    at: float  # unix seconds
    checks: Mapping[str, CheckReport]

    def to_dict(self) -> dict[str, Any]:
        """Plain str/int/float/bool/None/dict values, no NaN: a JSON document or DynamoDB item."""
        return {
            "version": REPORT_VERSION,
            "vantage": self.vantage,
            "round": self.round,
            "at": self.at,
            "checks": {name: _check_dict(c) for name, c in self.checks.items()},
        }

    @classmethod
    def from_dict(cls, raw: object) -> VantageReport:
        """The report `to_dict` made; ValueError naming the field for anything else.

        Another version's items, or corrupt ones, are refused whole rather than half read:
        the caller treats that vantage as not reporting.
        """
        return _report(raw)


def _check_dict(check: CheckReport) -> dict[str, Any]:
    return {
        "impaired": check.impaired,
        "signals": {
            name: {"state": s.seen.value, "streak": s.streak} for name, s in check.signals.items()
        },
        "figures": {name: getattr(check.figures, name) for name in _FIGURES},
    }


def next_report(
    previous: VantageReport | None,
    vantage: str,
    at: float,
    checks: Mapping[str, CheckReport],
) -> VantageReport:
    """This round's report, given the vantage's previous one (None at the first round).

    The previous report is the writer's whole state: the round number goes on from it and each
    regressed signal's streak adds one to its streak there.
    """
    if previous is None:
        return VantageReport(vantage, 1, at, dict(checks))
    if previous.vantage != vantage:
        raise ValueError(f"previous report is {previous.vantage}'s, not {vantage}'s")
    carried = {name: _carry(previous.checks.get(name), c) for name, c in checks.items()}
    return VantageReport(vantage, previous.round + 1, at, carried)


def _carry(before: CheckReport | None, now: CheckReport) -> CheckReport:
    if before is None:
        return now
    signals = {}
    for name, s in now.signals.items():
        earlier = before.signals.get(name)
        streak = s.streak + earlier.streak if s.streak and earlier is not None else s.streak
        signals[name] = SignalReport(s.seen, streak)
    return CheckReport(signals, now.impaired, now.figures)


# ---------------------------------------------------------------------------------------------
# Reading a report back: every field checked, every problem named by its path


def _report(raw: object) -> VantageReport:
    item = _mapping(raw, "report")
    _keys(item, ("version", "vantage", "round", "at", "checks"), "report")
    version = item["version"]
    if version != REPORT_VERSION or isinstance(version, bool):
        raise ValueError(f"version: {version!r} is not a report version this reads (1)")
    vantage = item["vantage"]
    if not isinstance(vantage, str) or not vantage:
        raise ValueError(f"vantage: expected a non-empty string, got {vantage!r}")
    checks = _mapping(item["checks"], "checks")
    return VantageReport(
        vantage=vantage,
        round=_integer(item["round"], "round", minimum=1),
        at=_number(item["at"], "at"),
        checks={_name(name): _check(c, f"checks.{name}") for name, c in checks.items()},
    )


def _check(raw: object, where: str) -> CheckReport:
    item = _mapping(raw, where)
    _keys(item, ("impaired", "signals", "figures"), where)
    impaired = item["impaired"]
    if not isinstance(impaired, bool):
        raise ValueError(f"{where}.impaired: expected true or false, got {impaired!r}")
    signals = _mapping(item["signals"], f"{where}.signals")
    _keys(signals, SIGNALS, f"{where}.signals")
    parsed = {name: _signal(signals[name], f"{where}.signals.{name}") for name in SIGNALS}
    streaked = [name for name, s in parsed.items() if s.streak]
    if impaired and streaked:
        # an impaired round is no evidence: it starts no streak and carries none
        raise ValueError(f"{where}.signals.{streaked[0]}.streak: a streak while impaired")
    return CheckReport(parsed, impaired, _figures(item["figures"], f"{where}.figures"))


_STATES: Final = frozenset(s.value for s in Seen)


def _signal(raw: object, where: str) -> SignalReport:
    item = _mapping(raw, where)
    _keys(item, ("state", "streak"), where)
    raw_state = item["state"]
    if not isinstance(raw_state, str) or raw_state not in _STATES:
        known = ", ".join(s.value for s in Seen)
        raise ValueError(f"{where}.state: {raw_state!r} is not one of {known}")
    state = Seen(raw_state)
    streak = _integer(item["streak"], f"{where}.streak", minimum=0)
    if streak and state is not Seen.REGRESSED:
        raise ValueError(f"{where}.streak: {streak} rounds of a regression that is {state}")
    return SignalReport(state, streak)


def _figures(raw: object, where: str) -> CheckFigures:
    item = _mapping(raw, where)
    _keys(item, _FIGURES, where)
    values = {name: _figure(item[name], f"{where}.{name}") for name in _FIGURES}
    for name in ("baseline_error_ratio", "candidate_error_ratio"):
        ratio = values[name]
        if ratio is not None and ratio > 1:
            raise ValueError(f"{where}.{name}: {ratio!r} is not a ratio in [0, 1]")
    return CheckFigures(**values)


def _figure(raw: object, where: str) -> float | None:
    if raw is None:
        return None
    value = _number(raw, where)
    if value < 0:
        raise ValueError(f"{where}: {value!r} is negative")
    return value


def _mapping(raw: object, where: str) -> Mapping[str, object]:
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise ValueError(f"{where}: expected a mapping with string keys, got {type(raw).__name__}")
    return raw


def _keys(item: Mapping[str, object], expected: tuple[str, ...], where: str) -> None:
    missing = [k for k in expected if k not in item]
    unknown = sorted(k for k in item if k not in expected)
    if missing:
        raise ValueError(f"{where}.{missing[0]}: missing")
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown field")


def _name(name: str) -> str:
    if not name:
        raise ValueError("checks: a check with an empty name")
    return name


def _integer(raw: object, where: str, minimum: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum:
        raise ValueError(f"{where}: expected an integer >= {minimum}, got {raw!r}")
    return raw


def _number(raw: object, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ValueError(f"{where}: expected a finite number, got {raw!r}")
    return float(raw)


# ---------------------------------------------------------------------------------------------
# The leader's combination


@dataclass(frozen=True, slots=True)
class VantageSettings:
    """The config's `ha.confirm` and `ha.quorum`, and the round interval they are counted in."""

    interval: float  # seconds between two reports of a vantage
    confirm: int = 2  # healthy vantages that must see a regression (capped by the healthy ones)
    quorum: int = 2  # vantages that must see no regression before a step advances

    def __post_init__(self) -> None:
        if not self.interval > 0 or self.confirm < 1 or self.quorum < 1:
            raise ValueError("interval must be positive, confirm and quorum at least 1")

    @property
    def silent_after(self) -> float:
        """A vantage whose last report is older than this drops out: two rounds missed."""
        return 2 * self.interval


@dataclass(frozen=True, slots=True)
class VantageStatus:
    """One vantage as the leader sees it this round (for the page and /api/v1/status)."""

    vantage: str
    healthy: bool
    at: float  # its last report's time, on its own clock
    round: int  # its last report's round
    age: float  # seconds since that report, on the leader's clock (never negative)

    @property
    def silent_since(self) -> float | None:
        """When it was last heard from, if it dropped out."""
        return None if self.healthy else self.at


class Outcome(StrEnum):
    """One signal of one check, over every healthy vantage."""

    FIRING = "firing"  # confirmed by enough vantages, or one vantage's consecutive rounds
    SUSPECTED = "suspected"  # regressed or pending somewhere, not (yet) enough to fire
    OK = "ok"
    INCONCLUSIVE = "inconclusive"  # no vantage that can judge it has enough samples
    IMPAIRED = "impaired"  # every healthy vantage reporting it is impaired: an outage


@dataclass(frozen=True, slots=True)
class SignalOutcome:
    """The combined verdict on one signal of one check, and who saw what.

    `seen_by` are the healthy, non-impaired vantages reporting it regressed, `pending_at`
    those reporting it pending, `impaired_at` the healthy vantages impaired for the check;
    `figures` holds every healthy vantage's figures for the check (Slack shows them).
    """

    check: str
    signal: str
    outcome: Outcome
    because: str  # why it fires (or not), in words
    seen_by: tuple[str, ...] = ()
    pending_at: tuple[str, ...] = ()
    impaired_at: tuple[str, ...] = ()
    figures: Mapping[str, CheckFigures] = field(default_factory=dict)

    @property
    def firing(self) -> bool:
        return self.outcome is Outcome.FIRING


@dataclass(frozen=True, slots=True)
class Combined:
    """Every vantage's view of this round as one: what fires, and whether a step may advance.

    `confirm` and `quorum` are the numbers in force: the configured ones capped by the healthy
    vantages (confirm) and by the vantages known at all (quorum, so a silent one blocks).
    """

    at: float
    vantages: tuple[VantageStatus, ...]  # by name
    confirm: int
    quorum: int
    signals: Mapping[tuple[str, str], SignalOutcome]  # (check, signal), by check then signal
    may_advance: bool
    reasons: tuple[str, ...]  # why not, most important first; empty when it may

    @property
    def healthy(self) -> tuple[VantageStatus, ...]:
        return tuple(v for v in self.vantages if v.healthy)

    @property
    def silent(self) -> tuple[VantageStatus, ...]:
        return tuple(v for v in self.vantages if not v.healthy)

    def firing(self) -> tuple[SignalOutcome, ...]:
        return tuple(s for s in self.signals.values() if s.firing)


def combine(reports: Iterable[VantageReport], now: float, settings: VantageSettings) -> Combined:
    """The leader's view of this round from the latest report of every vantage, its own included.

    Every report given counts as a vantage that exists: one that stopped reporting keeps
    blocking the quorum until its item is gone (the store drops items past their expiry).
    """
    latest = _by_vantage(reports)
    statuses = tuple(_status(r, now, settings) for r in latest)
    healthy = [r for r, s in zip(latest, statuses, strict=True) if s.healthy]
    confirm = max(1, min(settings.confirm, len(healthy)))
    quorum = max(1, min(settings.quorum, len(latest)))
    checks = sorted({name for r in healthy for name in r.checks})
    signals = {
        (check, signal): _signal_outcome(check, signal, healthy, confirm)
        for check in checks
        for signal in SIGNALS
    }
    reasons = _gate(statuses, healthy, checks, signals, quorum)
    return Combined(now, statuses, confirm, quorum, signals, not reasons, reasons)


def _by_vantage(reports: Iterable[VantageReport]) -> list[VantageReport]:
    found: dict[str, VantageReport] = {}
    for report in reports:
        if report.vantage in found:
            raise ValueError(f"two reports from vantage {report.vantage}: pass the latest only")
        found[report.vantage] = report
    return [found[name] for name in sorted(found)]


def _status(report: VantageReport, now: float, settings: VantageSettings) -> VantageStatus:
    # a clock running ahead of the leader's makes a report look younger, never negative
    age = max(0.0, now - report.at)
    healthy = age <= settings.silent_after
    return VantageStatus(report.vantage, healthy, report.at, report.round, age)


def _signal_outcome(
    check: str, signal: str, healthy: list[VantageReport], confirm: int
) -> SignalOutcome:
    """One signal of one check over the healthy vantages: impaired ones neither confirm nor
    clear it; `confirm` of the others, or one with a streak of STREAK_ROUNDS, make it fire."""
    views = {r.vantage: r.checks[check] for r in healthy if check in r.checks}
    impaired = tuple(v for v, c in views.items() if c.impaired)
    clear = {v: c.signal(signal) for v, c in views.items() if not c.impaired}
    seen_by = tuple(v for v, s in clear.items() if s.seen is Seen.REGRESSED)
    pending = tuple(v for v, s in clear.items() if s.seen is Seen.PENDING)
    streaks = {v: s.streak for v, s in clear.items() if s.streak >= STREAK_ROUNDS}
    outcome, because = _decide(seen_by, pending, impaired, clear, streaks, confirm)
    figures = {v: c.figures for v, c in views.items()}
    return SignalOutcome(check, signal, outcome, because, seen_by, pending, impaired, figures)


def _decide(
    seen_by: tuple[str, ...],
    pending: tuple[str, ...],
    impaired: tuple[str, ...],
    clear: Mapping[str, SignalReport],
    streaks: Mapping[str, int],
    confirm: int,
) -> tuple[Outcome, str]:
    if len(seen_by) >= confirm:
        return Outcome.FIRING, f"{seen_from(seen_by)}, {confirm} needed"
    if streaks:
        vantage, rounds = max(streaks.items(), key=lambda kv: (kv[1], kv[0]))
        return Outcome.FIRING, f"seen from {vantage} on {rounds} rounds in a row"
    if not clear:
        return Outcome.IMPAIRED, f"both platforms fail {_from_every(impaired)}"
    if seen_by or pending:
        return Outcome.SUSPECTED, _suspected(seen_by, pending, confirm)
    if any(s.seen is Seen.OK for s in clear.values()):
        return Outcome.OK, "no vantage sees a regression"
    return Outcome.INCONCLUSIVE, "too few samples from every vantage able to judge it"


def _suspected(seen_by: tuple[str, ...], pending: tuple[str, ...], confirm: int) -> str:
    if seen_by:
        return f"{seen_from(seen_by)} for one round, {confirm} vantages needed"
    return f"pending {_from(pending)}"


def seen_from(vantages: Iterable[str]) -> str:
    """ "seen from eu-west-1 and us-east-1": which vantages saw a regression, for Slack."""
    return f"seen {_from(vantages)}"


def _from(vantages: Iterable[str]) -> str:
    names = list(vantages)
    if len(names) <= 1:
        return f"from {''.join(names) or 'nowhere'}"
    return f"from {', '.join(names[:-1])} and {names[-1]}"


def _from_every(impaired: tuple[str, ...]) -> str:
    return f"from {impaired[0]}" if len(impaired) == 1 else f"from all {len(impaired)} vantages"


_SEES: Final = {
    "down": "the candidate down",
    "errors": "an errors regression",
    "latency": "a latency regression",
}


def _gate(
    statuses: tuple[VantageStatus, ...],
    healthy: list[VantageReport],
    checks: list[str],
    signals: Mapping[tuple[str, str], SignalOutcome],
    quorum: int,
) -> tuple[str, ...]:
    """Why a step may not advance (nothing when it may).

    It may when at least `quorum` healthy vantages see every check clean (every signal ok, not
    impaired) and no healthy vantage able to judge a check sees it regressed or pending: a
    single region's regression is what vantages are for, so it waits even before it fires.
    """
    few = _too_few_healthy(statuses, len(healthy), quorum)
    if not statuses or (healthy and not checks):
        few = few or ["no vantage has reported a check yet"]
    dissent: list[str] = []
    outage: list[str] = []
    short: list[str] = []
    for check in checks:
        outcomes = [signals[(check, name)] for name in SIGNALS]
        seen = [reason for o in outcomes for reason in _dissent(o)]
        dissent.extend(seen)
        if outcomes[0].outcome is Outcome.IMPAIRED:  # impaired is per check: all or none
            outage.append(f"{check} is impaired from every vantage: both platforms fail there")
        elif not few and not seen:
            views = {r.vantage: r.checks.get(check) for r in healthy}
            short.extend(_unvouched(check, views, quorum))
    return (*few, *_few(dissent), *_few(outage), *_few(short))


def _too_few_healthy(statuses: tuple[VantageStatus, ...], healthy: int, quorum: int) -> list[str]:
    if healthy >= quorum or not statuses:
        return []
    # only silent vantages are unhealthy, so there is at least one to name
    silent = [f"{s.vantage} silent for {span(s.age)}" for s in statuses if not s.healthy]
    return [f"only {healthy} of {len(statuses)} vantages healthy ({', '.join(silent)})"]


def _dissent(outcome: SignalOutcome) -> list[str]:
    """Each healthy, non-impaired vantage seeing this signal regressed or pending."""
    what, where = _SEES[outcome.signal], f"on {outcome.check}"
    return [
        *(f"{v} sees {what} {where}" for v in outcome.seen_by),
        *(f"{v} sees {what} pending {where}" for v in outcome.pending_at),
    ]


def _unvouched(check: str, views: Mapping[str, CheckReport | None], quorum: int) -> list[str]:
    """Too few vantages vouch for `check`: how many do, and what the others lack."""
    vouch = [v for v, c in views.items() if c is not None and _clean(c)]
    if len(vouch) >= quorum:
        return []
    lacking = [f"{v} {_lack(c)}" for v, c in views.items() if v not in vouch]
    return [
        f"{check} is clean from {len(vouch)} of the {quorum} vantages needed ({', '.join(lacking)})"
    ]


def _clean(check: CheckReport) -> bool:
    return not check.impaired and all(s.seen is Seen.OK for s in check.signals.values())


def _lack(check: CheckReport | None) -> str:
    if check is None:
        return "does not report it"
    return "is impaired there" if check.impaired else "has too few samples"
