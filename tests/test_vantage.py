"""Vantage points combined (issue 14, item 4): reports, their dict form, and the leader's
combination on a synthetic clock."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.judging.judge import SIGNALS, Evaluation, Figures, State, Verdict
from exporter.judging.vantage import (
    CheckFigures,
    CheckReport,
    Combined,
    Outcome,
    Seen,
    SignalReport,
    VantageReport,
    VantageSettings,
    combine,
    next_report,
    observe,
    seen_from,
)

INTERVAL = 15.0
SETTINGS = VantageSettings(interval=INTERVAL)  # confirm 2, quorum 2
T0 = 1_700_000_000.0
EU, US, AP = "eu-west-1", "us-east-1", "ap-south-1"
OK, PENDING, REGRESSED, INCONCLUSIVE = Seen.OK, Seen.PENDING, Seen.REGRESSED, Seen.INCONCLUSIVE
FIGURES = CheckFigures(0.12, 0.41, 0.0, 0.01)


def check(latency: Seen = OK, impaired: bool = False, **others: Seen) -> CheckReport:
    """One round of one check as `observe` makes it: a regression not impaired starts a streak."""
    states = {"down": OK, "errors": OK, "latency": latency, **others}
    signals = {
        name: SignalReport(s, int(s is REGRESSED and not impaired)) for name, s in states.items()
    }
    return CheckReport(signals, impaired, FIGURES)


class Writer:
    """One replica writing its vantage's report each round, as the daemon will."""

    def __init__(self, vantage: str) -> None:
        self.vantage = vantage
        self.report: VantageReport | None = None

    def write(self, at: float, **checks: CheckReport) -> VantageReport:
        self.report = next_report(self.report, self.vantage, at, checks)
        return self.report


def round_of(at: float, **views: CheckReport) -> list[VantageReport]:
    """Every vantage's first report at `at`: {vantage: its view of the check "health"}."""
    return [Writer(v).write(at, health=c) for v, c in views.items()]


def health(result: Combined, signal: str = "latency") -> Outcome:
    return result.signals[("health", signal)].outcome


# --- what a replica writes --------------------------------------------------------------------


def verdict(signal: str, state: State, pending: bool = False) -> Verdict:
    return Verdict(signal, state, state is State.REGRESSED, 0.5, "t", 8, 1.0, 1.5, None, pending)


def evaluation(latency: State, pending: bool = False) -> Evaluation:
    figures = Figures(40, 40, 40, 0.1, 0.12, 0.3, 0.41, 0.0, math.nan)
    return Evaluation(
        at=T0,
        down=verdict("down", State.INCONCLUSIVE),
        errors=verdict("errors", State.OK),
        latency=verdict("latency", latency, pending),
        figures=figures,
    )


def test_observe_reduces_an_evaluation_to_states_streaks_and_figures() -> None:
    report = observe(evaluation(State.REGRESSED), impaired=False)
    assert {n: s.seen for n, s in report.signals.items()} == {
        "down": INCONCLUSIVE,
        "errors": OK,
        "latency": REGRESSED,
    }
    assert report.signal("latency").streak == 1
    # a missing figure is None, never NaN
    assert report.figures == CheckFigures(0.12, 0.41, 0.0, None)
    assert observe(evaluation(State.OK, pending=True), False).signal("latency").seen is PENDING


def test_an_impaired_round_starts_no_streak() -> None:
    report = observe(evaluation(State.REGRESSED), impaired=True)
    assert report.impaired
    assert report.signal("latency") == SignalReport(REGRESSED, 0)


def test_next_report_counts_rounds_and_carries_streaks_until_a_round_without() -> None:
    eu = Writer(EU)
    streaks = []
    for i, state in enumerate([REGRESSED, REGRESSED, REGRESSED, OK, REGRESSED]):
        report = eu.write(T0 + i * INTERVAL, health=check(state))
        streaks.append((report.round, report.checks["health"].signal("latency").streak))
    assert streaks == [(1, 1), (2, 2), (3, 3), (4, 0), (5, 1)]
    with pytest.raises(ValueError, match="eu-west-1's, not us-east-1's"):
        next_report(eu.report, US, T0, {})


# --- the combination --------------------------------------------------------------------------


def test_an_impaired_region_neither_fires_nor_clears_and_the_page_says_impaired() -> None:
    eu, us = Writer(EU), Writer(US)
    for i in range(3):  # the impaired region "sees" a regression round after round
        at = T0 + i * INTERVAL
        reports = [eu.write(at, health=check(OK)), us.write(at, health=check(REGRESSED, True))]
        result = combine(reports, at, SETTINGS)
        outcome = result.signals[("health", "latency")]
        assert outcome.outcome is Outcome.OK
        assert outcome.impaired_at == (US,)
        assert outcome.seen_by == ()
    # one clean vantage is not a quorum of two: the step waits, and says why
    assert not result.may_advance
    assert result.reasons == (
        "health is clean from 1 of the 2 vantages needed (us-east-1 is impaired there)",
    )


def test_impaired_everywhere_is_an_outage_not_a_regression() -> None:
    reports = round_of(T0, **{EU: check(REGRESSED, True), US: check(REGRESSED, True)})
    result = combine(reports, T0, SETTINGS)
    outcome = result.signals[("health", "latency")]
    assert outcome.outcome is Outcome.IMPAIRED
    assert outcome.because == "both platforms fail from all 2 vantages"
    assert result.firing() == ()
    assert result.reasons == ("health is impaired from every vantage: both platforms fail there",)


def test_a_one_round_blip_in_one_region_does_not_fire_but_holds_the_step() -> None:
    eu, us = Writer(EU), Writer(US)
    blip = combine(
        [eu.write(T0, health=check(REGRESSED)), us.write(T0, health=check())], T0, SETTINGS
    )
    assert health(blip) is Outcome.SUSPECTED
    assert blip.signals[("health", "latency")].because == (
        "seen from eu-west-1 for one round, 2 vantages needed"
    )
    assert blip.reasons == ("eu-west-1 sees a latency regression on health",)
    at = T0 + INTERVAL
    after = combine([eu.write(at, health=check()), us.write(at, health=check())], at, SETTINGS)
    assert health(after) is Outcome.OK
    assert after.may_advance
    assert after.reasons == ()


def test_a_regression_seen_from_one_region_on_two_consecutive_rounds_fires() -> None:
    eu, us = Writer(EU), Writer(US)
    eu.write(T0, health=check(REGRESSED))
    us.write(T0, health=check())
    at = T0 + INTERVAL
    # a leader that never saw the first round (it just took over) fires all the same
    result = combine(
        [eu.write(at, health=check(REGRESSED)), us.write(at, health=check())], at, SETTINGS
    )
    outcome = result.signals[("health", "latency")]
    assert outcome.firing
    assert outcome.seen_by == (EU,)
    assert outcome.because == "seen from eu-west-1 on 2 rounds in a row"
    assert outcome.figures == {EU: FIGURES, US: FIGURES}
    assert [(s.check, s.signal) for s in result.firing()] == [("health", "latency")]


def test_two_rounds_apart_are_not_consecutive() -> None:
    eu, us = Writer(EU), Writer(US)
    for i, state in enumerate([REGRESSED, OK, REGRESSED]):
        at = T0 + i * INTERVAL
        result = combine(
            [eu.write(at, health=check(state)), us.write(at, health=check())], at, SETTINGS
        )
        assert health(result) is not Outcome.FIRING


def test_a_regression_confirmed_by_two_regions_fires_in_one_round() -> None:
    result = combine(round_of(T0, **{EU: check(REGRESSED), US: check(REGRESSED)}), T0, SETTINGS)
    outcome = result.signals[("health", "latency")]
    assert outcome.firing
    assert outcome.because == "seen from eu-west-1 and us-east-1, 2 needed"
    assert seen_from(outcome.seen_by) == "seen from eu-west-1 and us-east-1"
    assert seen_from([AP, EU, US]) == "seen from ap-south-1, eu-west-1 and us-east-1"
    assert result.reasons == (
        "eu-west-1 sees a latency regression on health",
        "us-east-1 sees a latency regression on health",
    )


def test_a_silent_region_drops_out_after_two_rounds_visibly() -> None:
    eu, us, ap = Writer(EU), Writer(US), Writer(AP)
    ap.write(T0, health=check(REGRESSED))  # then nothing more from ap-south-1
    for i in (1, 2, 3):
        at = T0 + i * INTERVAL
        reports = [eu.write(at, health=check()), us.write(at, health=check()), ap.report]
        result = combine([r for r in reports if r is not None], at, SETTINGS)
        silent = [(v.vantage, v.silent_since) for v in result.silent]
        # two rounds old is still healthy; a third round without a report is not
        assert silent == ([] if i < 3 else [(AP, T0)])
    assert [v.vantage for v in result.healthy] == [EU, US]
    assert (result.confirm, result.quorum) == (2, 2)
    assert health(result) is Outcome.OK  # its last report no longer counts
    assert result.may_advance


def test_with_one_of_two_regions_silent_one_confirms_but_no_quorum() -> None:
    eu, us = Writer(EU), Writer(US)
    us.write(T0, health=check())
    at = T0 + 3 * INTERVAL
    assert us.report is not None
    result = combine([eu.write(at, health=check(REGRESSED)), us.report], at, SETTINGS)
    assert (result.confirm, result.quorum) == (1, 2)
    assert result.signals[("health", "latency")].firing
    assert result.reasons[0] == "only 1 of 2 vantages healthy (us-east-1 silent for 45 s)"
    assert [(v.vantage, v.healthy, v.round, v.at) for v in result.vantages] == [
        (EU, True, 1, at),
        (US, False, 1, T0),
    ]


def test_a_single_vantage_confirms_and_makes_the_quorum_alone() -> None:
    single = combine(round_of(T0, **{EU: check()}), T0, SETTINGS)
    assert (single.confirm, single.quorum) == (1, 1)
    assert single.may_advance
    fired = combine(round_of(T0, **{EU: check(errors=REGRESSED)}), T0, SETTINGS)
    assert health(fired, "errors") is Outcome.FIRING
    assert fired.reasons == ("eu-west-1 sees an errors regression on health",)


def test_quorum_not_met_blocks_the_step_with_a_reason() -> None:
    too_few = combine(round_of(T0, **{EU: check(), US: check(INCONCLUSIVE)}), T0, SETTINGS)
    assert not too_few.may_advance
    assert too_few.reasons == (
        "health is clean from 1 of the 2 vantages needed (us-east-1 has too few samples)",
    )
    eu = Writer(EU).write(T0, health=check(), login=check())
    us = Writer(US).write(T0, health=check())
    missing = combine([eu, us], T0, SETTINGS)
    assert missing.reasons == (
        "login is clean from 1 of the 2 vantages needed (us-east-1 does not report it)",
    )
    pending = combine(round_of(T0, **{EU: check(PENDING), US: check()}), T0, SETTINGS)
    assert pending.reasons == ("eu-west-1 sees a latency regression pending on health",)
    assert health(pending) is Outcome.SUSPECTED


def test_nothing_reported_is_no_go_ahead() -> None:
    result = combine([], T0, SETTINGS)
    assert not result.may_advance
    assert result.reasons == ("no vantage has reported a check yet",)


def test_one_report_per_vantage() -> None:
    twice = [Writer(EU).write(T0), Writer(EU).write(T0)]
    with pytest.raises(ValueError, match="two reports from vantage eu-west-1"):
        combine(twice, T0, SETTINGS)


# --- the report as a dict ---------------------------------------------------------------------


def sample_report() -> VantageReport:
    writer = Writer(EU)
    writer.write(T0, health=check(REGRESSED))
    figures = CheckFigures(None, 0.2, 0.0, None)
    login = CheckReport({n: SignalReport(INCONCLUSIVE) for n in SIGNALS}, True, figures)
    report = writer.write(T0 + INTERVAL, health=check(REGRESSED), login=login)
    return report


def test_a_report_round_trips_through_a_plain_dict_without_nan() -> None:
    report = sample_report()
    raw = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert raw["checks"]["health"]["signals"]["latency"] == {"state": "regressed", "streak": 2}
    assert raw["checks"]["login"]["figures"]["baseline_p95"] is None
    assert VantageReport.from_dict(raw) == report


def _set(path: str, value: Any) -> dict[str, Any]:
    raw = sample_report().to_dict()
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


_DELETE = object()
_SIGNAL = "checks.health.signals.latency"

CORRUPT = [
    ("version", 2, "version: 2 is not a report version"),
    ("version", True, "version: True is not a report version"),
    ("at", _DELETE, "report.at: missing"),
    ("extra", 1, "report.extra: unknown field"),
    ("vantage", "", "vantage: expected a non-empty string"),
    ("round", 0, "round: expected an integer >= 1, got 0"),
    ("round", True, "round: expected an integer >= 1, got True"),
    ("at", math.nan, "at: expected a finite number, got nan"),
    ("at", "12:00", "at: expected a finite number, got '12:00'"),
    ("checks", [], "checks: expected a mapping"),
    ("checks.health.impaired", "yes", "checks.health.impaired: expected true or false"),
    ("checks.health.signals.down", _DELETE, "checks.health.signals.down: missing"),
    (f"{_SIGNAL}.state", "bad", f"{_SIGNAL}.state: 'bad' is not one of ok, pending"),
    (f"{_SIGNAL}.state", ["ok"], f"{_SIGNAL}.state: \\['ok'\\] is not one of"),
    (f"{_SIGNAL}.streak", -1, f"{_SIGNAL}.streak: expected an integer >= 0, got -1"),
    (
        "checks.health.signals.errors.streak",
        1,
        "errors.streak: 1 rounds of a regression that is ok",
    ),
    ("checks.health.impaired", True, f"{_SIGNAL}.streak: a streak while impaired"),
    ("checks.health.figures.candidate_p95", -1, "candidate_p95: -1.0 is negative"),
    (
        "checks.health.figures.candidate_error_ratio",
        1.5,
        "candidate_error_ratio: 1.5 is not a ratio",
    ),
    ("checks.health.figures.baseline_p95", math.inf, "baseline_p95: expected a finite number"),
    ("checks.health.figures", None, "checks.health.figures: expected a mapping"),
]


@pytest.mark.parametrize(("path", "value", "message"), CORRUPT)
def test_a_corrupt_report_is_refused_naming_the_field(path: str, value: Any, message: str) -> None:
    raw = _set(path, value)
    with pytest.raises(ValueError, match=message):
        VantageReport.from_dict(raw)


def test_a_report_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(ValueError, match="report: expected a mapping with string keys, got list"):
        VantageReport.from_dict([1, 2])
    raw = sample_report().to_dict()
    raw["checks"][""] = copy.deepcopy(raw["checks"]["health"])
    with pytest.raises(ValueError, match="a check with an empty name"):
        VantageReport.from_dict(raw)


# --- invariants -------------------------------------------------------------------------------

NAMES = ("v1", "v2", "v3", "v4")
CHECKS = ("health", "login")
figures_ = st.builds(
    CheckFigures,
    *[st.none() | st.floats(0, 1) for _ in range(4)],
)


@st.composite
def check_reports(draw: st.DrawFn) -> CheckReport:
    impaired = draw(st.booleans())
    signals = {}
    for name in SIGNALS:
        state = draw(st.sampled_from(list(Seen)))
        streak = draw(st.integers(1, 3)) if state is REGRESSED and not impaired else 0
        signals[name] = SignalReport(state, streak)
    return CheckReport(signals, impaired, draw(figures_))


@st.composite
def reports(draw: st.DrawFn) -> list[VantageReport]:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=4))
    found = []
    for name in names:
        checks = draw(st.dictionaries(st.sampled_from(CHECKS), check_reports(), max_size=2))
        age = draw(st.sampled_from([0.0, INTERVAL, 2 * INTERVAL, 2 * INTERVAL + 1, 600.0]))
        found.append(VantageReport(name, draw(st.integers(1, 50)), T0 - age, checks))
    return found


vantage_settings = st.builds(
    VantageSettings, st.just(INTERVAL), st.integers(1, 4), st.integers(1, 4)
)


@settings(max_examples=200, deadline=None)
@given(reports(), vantage_settings)
def test_adding_an_impaired_vantage_never_makes_a_regression_fire(
    given_reports: list[VantageReport], vs: VantageSettings
) -> None:
    before = combine(given_reports, T0, vs)
    impaired = CheckReport({n: SignalReport(REGRESSED) for n in SIGNALS}, True)
    extra = VantageReport("impaired", 1, T0, dict.fromkeys(CHECKS, impaired))
    after = combine([*given_reports, extra], T0, vs)
    for key, outcome in after.signals.items():
        if outcome.firing:
            assert key in before.signals and before.signals[key].firing


@settings(max_examples=200, deadline=None)
@given(reports(), vantage_settings, st.sampled_from(CHECKS), st.sampled_from(SIGNALS))
def test_a_regression_reported_by_every_healthy_vantage_always_fires(
    given_reports: list[VantageReport], vs: VantageSettings, name: str, signal: str
) -> None:
    regressed = check(impaired=False, **{signal: REGRESSED})
    everywhere = [
        VantageReport(r.vantage, r.round, r.at, {**r.checks, name: regressed})
        for r in given_reports
    ]
    result = combine(everywhere, T0, vs)
    if result.healthy:
        assert result.signals[(name, signal)].firing


@settings(max_examples=200, deadline=None)
@given(reports(), vantage_settings)
def test_a_step_advances_only_on_a_healthy_quorum_with_nothing_seen(
    given_reports: list[VantageReport], vs: VantageSettings
) -> None:
    result = combine(given_reports, T0, vs)
    if result.may_advance:
        assert len(result.healthy) >= result.quorum
        assert all(s.outcome is Outcome.OK for s in result.signals.values())
    else:
        assert result.reasons


@settings(max_examples=200, deadline=None)
@given(reports())
def test_every_valid_report_round_trips(given_reports: list[VantageReport]) -> None:
    for report in given_reports:
        raw = json.loads(json.dumps(report.to_dict(), allow_nan=False))
        assert VantageReport.from_dict(raw) == report


# --- what the incidents are fed ---------------------------------------------------------------


def test_the_incidents_follow_the_combination_and_an_outage_neither_fires_nor_clears() -> None:
    from exporter.alerting.alerts import Alerts, AlertSettings, Fired, Phase, Resolved
    from exporter.judging.vantage_verdicts import combined_evaluation

    alerts = Alerts(AlertSettings(for_=0.0, resolve_after=0.0))
    eu, us = Writer(EU), Writer(US)

    def feed(at: float, eu_sees: CheckReport, us_sees: CheckReport) -> list[object]:
        reports = [eu.write(at, health=eu_sees), us.write(at, health=us_sees)]
        fed = combined_evaluation(combine(reports, at, SETTINGS), "health", None, EU)
        assert fed is not None
        return list(alerts.update("health", fed, at))

    assert feed(T0, check(REGRESSED), check()) == []  # one round, one vantage: pending
    incident = alerts.get("health", "latency")
    assert incident is not None and incident.phase is Phase.PENDING
    assert incident.figures["vantages"] == "seen from eu-west-1 for one round, 2 vantages needed"
    (fired,) = feed(T0 + INTERVAL, check(REGRESSED), check())  # its second round: fires
    assert isinstance(fired, Fired)
    # both platforms fail from both vantages: an outage keeps the incident as it is
    for i in range(2, 5):
        assert feed(T0 + i * INTERVAL, check(REGRESSED, True), check(OK, True)) == []
        assert alerts.firing() == (incident,) and incident.clear_since is None
    # clean from both: it resolves (resolve_after 0)
    (resolved,) = feed(T0 + 5 * INTERVAL, check(), check())
    assert isinstance(resolved, Resolved) and alerts.firing() == ()
    # no healthy vantage reports the check: nothing to feed
    silent = combine([eu.write(T0, health=check())], T0 + 10 * INTERVAL, SETTINGS)
    assert combined_evaluation(silent, "health", None, EU) is None
