"""The incident machine: lifecycle on a synthetic clock, and its state across restarts."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from exporter.alerting.alerts import (
    KEEP_RESOLVED,
    Alerts,
    AlertSettings,
    Fired,
    Incident,
    Phase,
    Reminder,
    Resolved,
)
from exporter.judging.judge import Evaluation, JudgeSettings, State, Verdict, judge
from exporter.probing.window import Sample
from exporter.store.local import save_atomic

SETTINGS = AlertSettings(for_=60.0, resolve_after=120.0, repeat_interval=3600.0)
STEP = 15.0  # one evaluation per probe interval


def verdict(
    signal: str, state: State, significant: bool | None = None, pending: bool = False
) -> Verdict:
    regressed = state is State.REGRESSED
    return Verdict(
        signal=signal,
        state=state,
        significant=regressed if significant is None else significant,
        p_value=0.001 if regressed else 0.1 if pending else 0.5,
        test="paired log-ratio",
        horizon=16,
        estimate=3.0 if regressed else 1.8 if pending else 1.0,
        threshold=1.5,
        pending=pending,
    )


REGRESSED = State.REGRESSED
OK = State.OK


class Clock:
    """Feeds one signal's verdicts to the machine, STEP seconds apart, and keeps the events."""

    def __init__(self, alerts: Alerts, signal: str = "latency", now: float = 1000.0) -> None:
        self.alerts = alerts
        self.signal = signal
        self.now = now
        self.events: list[Fired | Resolved | Reminder] = []
        self.times: list[float] = []  # when each event came: incidents change in place

    def feed(
        self,
        state: State,
        steps: int = 1,
        significant: bool | None = None,
        pending: bool = False,
    ) -> list[object]:
        new: list[object] = []
        for _ in range(steps):
            self.now += STEP
            event = self.alerts.observe(
                "health",
                verdict(self.signal, state, significant, pending),
                self.now,
                {"ratio": 3.0},
            )
            if event is not None:
                new.append(event)
                self.events.append(event)
                self.times.append(self.now)
        return new


def test_pending_then_firing_after_for_then_resolved_after_resolve_after() -> None:
    clock = Clock(Alerts(SETTINGS))
    assert clock.feed(REGRESSED) == []
    incident = clock.alerts.get("health", "latency")
    assert incident is not None and incident.phase is Phase.PENDING
    started = clock.now
    assert clock.feed(REGRESSED, 3) == []  # 45 s: still pending
    [fired] = clock.feed(REGRESSED)  # 60 s after first sight
    assert isinstance(fired, Fired)
    assert fired.incident.fired_at == started + 60
    assert fired.incident.phase is Phase.FIRING
    assert fired.incident.figures == {"ratio": 3.0}
    assert clock.feed(REGRESSED, 4) == []

    last_seen = clock.now
    assert clock.feed(OK, 8) == []  # gone since 105 s: not yet 120
    [resolved] = clock.feed(OK)
    assert isinstance(resolved, Resolved)
    assert resolved.incident.phase is Phase.RESOLVED
    assert resolved.incident.resolved_at == last_seen + STEP + 120
    assert resolved.duration == pytest.approx(last_seen + STEP - started)
    assert clock.alerts.incidents == ()


def test_a_regression_gone_before_for_never_fires() -> None:
    clock = Clock(Alerts(SETTINGS))
    clock.feed(REGRESSED, 3)
    assert clock.alerts.revision == 1
    clock.feed(OK)
    assert clock.alerts.incidents == ()
    assert clock.alerts.revision == 2
    clock.feed(REGRESSED, 4)  # a new pending incident: its own `for` starts over
    assert clock.events == []
    clock.feed(REGRESSED)
    assert [type(e) for e in clock.events] == [Fired]


def test_firing_needs_the_evidence_to_clear_the_bar_again() -> None:
    clock = Clock(Alerts(SETTINGS))
    clock.feed(REGRESSED)
    # held by the judge's hysteresis, but not significant now: waits past `for`
    assert clock.feed(REGRESSED, 6, significant=False) == []
    [fired] = clock.feed(REGRESSED, significant=True)
    assert isinstance(fired, Fired)


def test_credible_evidence_starts_the_for_clock_and_firing_needs_significance() -> None:
    clock = Clock(Alerts(SETTINGS))
    # not yet significant, but credible: the incident is pending from here
    assert clock.feed(OK, pending=True) == []
    incident = clock.alerts.get("health", "latency")
    assert incident is not None and incident.phase is Phase.PENDING
    started = clock.now
    assert incident.started_at == started
    assert incident.figures == {"ratio": 3.0}
    assert clock.feed(OK, 2, pending=True) == []
    # significant from 45 s on: pending since the first credible verdict, not since this one
    assert clock.feed(REGRESSED) == []
    [fired] = clock.feed(REGRESSED)  # 60 s after the first credible verdict
    assert isinstance(fired, Fired)
    assert fired.incident is incident
    assert fired.incident.fired_at == started + 60


def test_credible_evidence_alone_never_fires_and_a_gap_restarts_the_clock() -> None:
    clock = Clock(Alerts(SETTINGS))
    assert clock.feed(OK, 10, pending=True) == []  # 150 s credible, never significant
    incident = clock.alerts.get("health", "latency")
    assert incident is not None and incident.phase is Phase.PENDING
    clock.feed(OK)  # neither credible nor regressed: the pending incident is dropped
    assert clock.alerts.incidents == ()
    clock.feed(OK, pending=True)
    restarted = clock.now
    # significant, but only 45 s since the evidence showed again
    assert clock.feed(REGRESSED, 3) == []
    [fired] = clock.feed(REGRESSED)
    assert isinstance(fired, Fired)
    assert fired.incident.started_at == restarted
    assert fired.incident.fired_at == restarted + 60


def test_credible_evidence_does_not_hold_a_firing_incident() -> None:
    clock = Clock(Alerts(SETTINGS))
    clock.feed(REGRESSED, 5)
    assert [type(e) for e in clock.events] == [Fired]
    # no longer regressed, merely credible: recovering, resolved after resolve_after
    assert clock.feed(OK, 8, pending=True) == []
    assert clock.alerts.firing()[0].clear_since is not None
    [resolved] = clock.feed(OK, pending=True)
    assert isinstance(resolved, Resolved)
    # and credible evidence after that opens a new pending incident, nothing more
    assert clock.feed(OK, pending=True) == []
    [pending] = clock.alerts.incidents
    assert pending.phase is Phase.PENDING and pending is not resolved.incident


def test_down_fires_at_once() -> None:
    clock = Clock(Alerts(SETTINGS), signal="down")
    [fired] = clock.feed(REGRESSED)
    assert isinstance(fired, Fired)
    assert fired.incident.fired_at == fired.incident.started_at == clock.now


def test_flapping_inside_resolve_after_stays_one_incident() -> None:
    clock = Clock(Alerts(SETTINGS))
    clock.feed(REGRESSED, 5)
    incident = clock.alerts.get("health", "latency")
    for _ in range(6):
        clock.feed(OK, 4)  # 60 s without
        clock.feed(REGRESSED, 1)
    assert [type(e) for e in clock.events] == [Fired]
    assert clock.alerts.get("health", "latency") is incident
    clock.feed(OK, 8)
    [resolved] = clock.feed(OK)
    assert isinstance(resolved, Resolved)
    assert resolved.incident is incident
    assert [type(e) for e in clock.events] == [Fired, Resolved]


def test_reminders_while_firing_and_not_while_recovering() -> None:
    clock = Clock(Alerts(AlertSettings(for_=0.0, resolve_after=1800.0, repeat_interval=600.0)))
    clock.feed(REGRESSED, 81)  # 20 minutes
    assert [type(e) for e in clock.events] == [Fired, Reminder, Reminder]
    fired_at = clock.times[0]
    assert clock.times[1:] == [fired_at + 600, fired_at + 1200]
    clock.feed(OK, 80)  # recovering for 20 minutes: no reminder
    assert len(clock.events) == 3


def test_inconclusive_neither_advances_nor_resolves() -> None:
    clock = Clock(Alerts(SETTINGS))
    clock.feed(REGRESSED, 5)
    assert [type(e) for e in clock.events] == [Fired]
    clock.feed(State.INCONCLUSIVE, 40)  # ten minutes without enough samples
    assert len(clock.events) == 1
    assert clock.alerts.firing()[0].clear_since is None
    clock.feed(OK, 9)
    assert [type(e) for e in clock.events] == [Fired, Resolved]


def test_signals_and_checks_are_separate_incidents() -> None:
    alerts = Alerts(SETTINGS)
    now = 0.0
    alerts.observe("a", verdict("down", REGRESSED), now)
    alerts.observe("b", verdict("down", REGRESSED), now)
    alerts.observe("a", verdict("errors", REGRESSED), now)
    assert len(alerts.incidents) == 3
    assert len(alerts.firing()) == 2
    assert {i.id for i in alerts.incidents} == {"a.down.0", "b.down.0", "a.errors.0"}
    assert [i.signal for i in alerts.remove_check("a")] == ["down", "errors"]
    assert [i.check for i in alerts.incidents] == ["b"]


def _evaluation(candidate_factor: float, now: float) -> Evaluation:
    baseline = [Sample(now - 20 + i, i, True, 0.08 * (1 + 0.01 * (i % 5))) for i in range(20)]
    candidate = [
        Sample(now - 20 + i, i, True, 0.08 * candidate_factor * (1 + 0.01 * (i % 3)))
        for i in range(20)
    ]
    return judge(baseline, candidate, now, JudgeSettings(window=30.0))


def test_update_takes_the_judge_s_evaluation() -> None:
    alerts = Alerts(AlertSettings(for_=0.0))
    events = alerts.update("health", _evaluation(3.0, 100.0), 100.0)
    assert [(type(e), e.incident.signal) for e in events] == [(Fired, "latency")]
    figures = events[0].incident.figures
    assert figures["p95_ratio"] == pytest.approx(3.0, rel=0.05)
    assert figures["baseline_p50"] == pytest.approx(0.0816, rel=0.01)
    assert figures["test"] == "paired log-ratio"
    assert alerts.update("health", _evaluation(1.0, 115.0), 115.0) == []
    assert alerts.firing()[0].clear_since == 115.0


# --- persistence -----------------------------------------------------------------------------


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    clock = Clock(Alerts(SETTINGS))
    clock.feed(REGRESSED, 5)
    clock.alerts.observe("other", verdict("errors", REGRESSED), clock.now)
    clock.alerts.firing()[0].notify.update({"channel": "C123", "ts": "1700000000.000100"})
    path = tmp_path / "alerts.json"
    clock.alerts.save(path)
    loaded = Alerts.load(path, SETTINGS)
    assert loaded.to_dict() == clock.alerts.to_dict()
    assert loaded.firing()[0].notify["ts"] == "1700000000.000100"
    assert json.loads(path.read_text())["version"] == 1


def test_a_missing_state_file_is_a_fresh_start(tmp_path: Path) -> None:
    assert Alerts.load(tmp_path / "nothing.json").incidents == ()


def _restart(alerts: Alerts, path: Path) -> Alerts:
    alerts.save(path)
    return Alerts.load(path, alerts.settings)


def test_restart_mid_incident_neither_refires_nor_forgets(tmp_path: Path) -> None:
    clock = Clock(Alerts(SETTINGS))
    clock.feed(REGRESSED, 5)
    assert [type(e) for e in clock.events] == [Fired]
    fired = clock.events[0].incident

    clock.alerts = _restart(clock.alerts, tmp_path / "alerts.json")
    clock.now += 300  # the daemon was down for five minutes
    clock.feed(REGRESSED, 10)
    assert [type(e) for e in clock.events] == [Fired]  # no second message
    clock.feed(OK, 8)
    [resolved] = clock.feed(OK)
    assert isinstance(resolved, Resolved)
    assert resolved.incident.id == fired.id
    assert resolved.incident.fired_at == fired.fired_at


def test_restart_while_recovering_resolves_on_time(tmp_path: Path) -> None:
    clock = Clock(Alerts(SETTINGS))
    clock.feed(REGRESSED, 5)
    clock.feed(OK, 4)
    clear_since = clock.alerts.firing()[0].clear_since
    assert clear_since is not None
    clock.alerts = _restart(clock.alerts, tmp_path / "alerts.json")
    clock.now = clear_since + 600  # back long after resolve_after: resolves at once
    [resolved] = clock.feed(OK)
    assert isinstance(resolved, Resolved)
    assert resolved.duration == pytest.approx(clear_since - resolved.incident.started_at)


def test_restart_while_pending_keeps_the_for_clock(tmp_path: Path) -> None:
    clock = Clock(Alerts(SETTINGS))
    clock.feed(REGRESSED, 4)  # 45 s pending
    clock.alerts = _restart(clock.alerts, tmp_path / "alerts.json")
    [fired] = clock.feed(REGRESSED)
    assert isinstance(fired, Fired)


def test_a_corrupt_state_file_is_reported_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "alerts.json"
    path.write_text('{"version": 1, "incidents": [')
    with pytest.raises(ValueError, match=r"alerts\.json: corrupt state file") as info:
        Alerts.load(path, SETTINGS, now=1700000000.0)
    aside = tmp_path / "alerts.json.corrupt-1700000000"
    assert str(aside) in str(info.value)
    assert not path.exists()
    assert aside.read_text() == '{"version": 1, "incidents": ['
    # the next save finds the way clear, and the next start is a fresh one
    Alerts(SETTINGS).save(path)
    assert Alerts.load(path, SETTINGS).incidents == ()


@pytest.mark.parametrize(
    "content",
    [
        '{"version": 99, "incidents": []}',
        '{"version": 1, "incidents": [{"id": "x"}]}',
        '{"version": 1, "incidents": [{"id": "x", "check": "c", "signal": "speed",'
        ' "started_at": 1, "phase": "pending"}]}',
        "[1, 2]",
        b"\xff\xfe not text",
    ],
)
def test_a_state_file_of_the_wrong_shape_is_corrupt(tmp_path: Path, content: str | bytes) -> None:
    path = tmp_path / "alerts.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match="corrupt state file"):
        Alerts.load(path, SETTINGS, now=5.0)
    assert (tmp_path / "alerts.json.corrupt-5").exists()


def test_save_atomic_replaces_whole_files_only(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_atomic(path, "old")
    save_atomic(path, b'{"new": true}')
    assert json.loads(path.read_text()) == {"new": True}
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary left behind
    with pytest.raises(FileNotFoundError):
        save_atomic(tmp_path / "missing" / "state.json", "x")
    assert os.listdir(tmp_path) == ["state.json"]


def test_incident_json_has_no_nan(tmp_path: Path) -> None:
    incident = Incident("i", "c", "latency", 1.0, figures={"p95_ratio": None})
    assert "NaN" not in json.dumps(incident.to_dict())
    Alerts(SETTINGS, [incident]).save(tmp_path / "alerts.json")
    assert Alerts.load(tmp_path / "alerts.json", SETTINGS).incidents == (incident,)
    assert math.isclose(incident.duration, 0.0)


# --- incident history ------------------------------------------------------------------------


def test_resolved_incidents_are_kept_bounded_and_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock(Alerts(SETTINGS))
    for _ in range(KEEP_RESOLVED + 3):
        clock.feed(REGRESSED, 5)
        clock.feed(OK, 9)
    assert [type(e) for e in clock.events].count(Resolved) == KEEP_RESOLVED + 3
    resolved = clock.alerts.resolved
    assert len(resolved) == KEEP_RESOLVED  # the oldest three are gone
    assert all(i.phase is Phase.RESOLVED for i in resolved)
    assert resolved[-1].resolved_at == clock.now  # newest last
    assert resolved[0].started_at < resolved[-1].started_at
    assert clock.alerts.incidents == ()

    loaded = _restart(clock.alerts, tmp_path / "alerts.json")
    assert [i.to_dict() for i in loaded.resolved] == [i.to_dict() for i in resolved]
    assert loaded.incidents == ()


def test_an_alerts_file_from_before_the_history_still_loads(tmp_path: Path) -> None:
    clock = Clock(Alerts(SETTINGS))
    clock.feed(REGRESSED, 5)
    path = tmp_path / "alerts.json"
    clock.alerts.save(path)
    data = json.loads(path.read_text())
    del data["resolved"]
    path.write_text(json.dumps(data))
    loaded = Alerts.load(path, SETTINGS)
    assert loaded.resolved == [] and len(loaded.firing()) == 1


def test_an_open_incident_listed_as_resolved_is_refused(tmp_path: Path) -> None:
    clock = Clock(Alerts(SETTINGS))
    clock.feed(REGRESSED, 5)
    path = tmp_path / "alerts.json"
    clock.alerts.save(path)
    data = json.loads(path.read_text())
    data["resolved"] = data["incidents"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="listed as resolved but is not"):
        Alerts.load(path, SETTINGS)
