"""The step ledger with a synthetic clock: steps follow the weights, evidence fills them, the
ledger survives restarts, a corrupt file is set aside, and it stays bounded."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from exporter.alerting.alerts import Incident, Phase
from exporter.config import parse_config
from exporter.judging.readiness import StepFacts, Verdict
from exporter.readiness import watch as watch_module
from exporter.readiness.ledger import HISTORY, Ledger, shares_of
from exporter.readiness.watch import Observed, ReadinessWatch, WatchSettings
from exporter.route53.plan import Observation, SetWeights, ShiftPlan, ShiftSettings
from exporter.route53.read import RecordSpec, RecordWeights, Route53Snapshot, WeightedEntry
from exporter.traffic.counts import LATENCY_BOUNDS, Histogram, Report, Tally
from exporter.traffic.timeline import Timeline

RECORD = "api.example.com"
SPEC = RecordSpec("Z1", RECORD, "CNAME", {"heroku": "heroku", "aws": "aws"})
T0 = 1_700_000_000.0

CONFIG = f"""\
platforms:
  heroku: {{role: baseline, base_url: "http://127.0.0.1:1"}}
  aws: {{role: candidate, base_url: "http://127.0.0.1:2"}}
checks:
  - {{name: health, path: /health, record: {RECORD}}}
  - {{name: orders, path: /orders}}
  - {{name: elsewhere, path: /x, record: www.example.com}}
route53:
  records:
    - {{hosted_zone_id: Z1, name: {RECORD}, set_identifiers: {{heroku: heroku, aws: aws}}}}
    - {{hosted_zone_id: Z1, name: www.example.com, set_identifiers: {{heroku: h, aws: a}}}}
readiness: {{hold: 10m}}
"""
TRAFFIC = f"""\
traffic:
  record: {RECORD}
  routes: [{{name: orders, path_regex: '^/orders'}}]
  sources:
    - {{platform: heroku, heroku_drain: {{token: heroku-drain-token-0001}}}}
    - {{platform: aws, heroku_drain: {{token: aws-drain-token-000000002}}}}
"""


def settings(traffic: bool = False, shift: bool = False) -> WatchSettings:
    text = (
        CONFIG + (TRAFFIC if traffic else "") + (f"shift: {{record: {RECORD}}}\n" if shift else "")
    )
    cfg = parse_config(text, env={})
    return WatchSettings.of(cfg, ("all", "orders") if traffic else ())


def snapshot(heroku: int, aws: int) -> Route53Snapshot:
    total = heroku + aws
    entries = tuple(
        WeightedEntry(p, p, w, w / total if total else 0.5, False, f"{p}.example.net")
        for p, w in (("heroku", heroku), ("aws", aws))
    )
    weights = RecordWeights(SPEC, "CNAME", 60, entries, (), (), T0)
    return Route53Snapshot({SPEC: weights}, {}, T0, {})


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def observed(
    heroku: int,
    aws: int,
    *,
    incidents: tuple[Incident, ...] = (),
    shift: ShiftPlan | None = None,
    timeline: Timeline | None = None,
) -> Observed:
    return Observed(
        route53=snapshot(heroku, aws),
        records={RECORD: SPEC},
        incidents=incidents,
        shift=shift,
        counters=timeline.counters if timeline is not None else None,
    )


def make(
    path: Path | None, clock: Clock, s: WatchSettings | None = None, started: float | None = None
) -> ReadinessWatch:
    return ReadinessWatch(
        s or settings(), path=path, started=clock.t if started is None else started, clock=clock
    )


def probe(w: ReadinessWatch, n: int, *, ok: bool = True, check: str = "health") -> None:
    for i in range(n):
        w.probed(check, "heroku", True, 0.050 + i % 3 * 0.001)
        w.probed(check, "aws", ok, 0.060 + i % 3 * 0.001)


def step(w: ReadinessWatch) -> Any:
    return w.current()[RECORD]


def test_settings_follow_the_config() -> None:
    s = settings(traffic=True)
    # `orders` has no record of its own and there are two: it guards none
    assert dict(s.records) == {RECORD: ("health",), "www.example.com": ("elsewhere",)}
    assert s.subjects(RECORD) == {
        "health": "probes",
        "traffic:all": "requests",
        "traffic:orders": "requests",
    }
    assert s.subjects("www.example.com") == {"elsewhere": "probes"}
    assert s.verdict.hold == 600 and s.verdict.min_probes == 50
    assert s.verdict.errors_max_increase == 0.02 and s.verdict.latency_max_ratio == 1.5


def test_the_first_weights_begin_a_step_timed_from_the_start() -> None:
    clock = Clock()
    w = make(None, clock)
    probe(w, 5)  # no step yet: nothing to add them to
    clock.t += 12
    w.tick(clock.t, observed(90, 10))
    s = step(w)
    assert (s.started_at, s.changed_by, s.shares) == (T0, "unknown", {"heroku": 0.9, "aws": 0.1})
    assert not s.dry_run and set(s.evidence) == {"health"}
    probe(w, 7, ok=False)
    ev = s.evidence["health"]
    assert (ev.baseline.count, ev.candidate.count, ev.candidate.failures) == (7, 7, 7)
    assert ev.baseline.latency.quantile(0.5) == pytest.approx(0.051, rel=0.03)
    marks = w.step_marks()
    assert [(m.record, m.at, m.changed_by) for m in marks] == [(RECORD, T0, "unknown")]
    # a probe of a check guarding no migrated record goes nowhere
    w.probed("orders", "aws", True, 0.1)


def test_a_person_changes_the_weights_a_new_step_and_the_old_one_summarised() -> None:
    clock = Clock()
    w = make(None, clock)
    w.tick(clock.t, observed(90, 10))
    probe(w, 20)
    clock.t += 60
    w.tick(clock.t, observed(75, 25))
    s = step(w)
    assert (s.started_at, s.changed_by, s.shares["aws"]) == (T0 + 60, "person", 0.25)
    assert s.evidence["health"].candidate.count == 0  # a new step starts with nothing
    (past,) = w.history()[RECORD]
    assert (past.started_at, past.ended_at, past.changed_by) == (T0, T0 + 60, "unknown")
    assert past.shares == {"heroku": 0.9, "aws": 0.1}
    assert past.to_dict()["duration_seconds"] == 60
    # the verdict at its end is kept: 20 probes a side in 60 s of a 10 m hold is no GO
    assert past.verdict == "WAIT" and past.readiness is not None
    assert past.readiness["step"]["changed_by"] == "unknown"
    assert json.loads(json.dumps(past.to_dict(), allow_nan=False))["verdict"] == "WAIT"
    (now,) = w.verdicts()
    assert now.step.changed_by == "person" and now.step.next_share == 0.5
    assert [m.changed_by for m in w.step_marks()] == ["unknown", "person"]
    # the same weights again: the same step
    clock.t += 5
    w.tick(clock.t, observed(75, 25))
    assert step(w) is s and len(w.history()[RECORD]) == 1


def test_the_shifts_own_write_is_told_from_a_persons() -> None:
    plan = ShiftPlan(
        ShiftSettings(
            record=RECORD, baseline="heroku", candidate="aws", hold=0.0, ttl_margin=0.0,
            dry_run=False,
        )
    )  # fmt: skip
    clock = Clock()
    w = make(None, clock, settings(shift=True))
    plan.step(clock.t, Observation(weights={"heroku": 100, "aws": 0}, ttl=0, readiness=Verdict.GO))
    w.tick(clock.t, observed(100, 0, shift=plan))
    clock.t += 1
    actions = plan.step(
        clock.t, Observation(weights={"heroku": 100, "aws": 0}, ttl=0, readiness=Verdict.GO)
    )
    (write,) = [a for a in actions if isinstance(a, SetWeights)]
    assert dict(write.weights) == {"heroku": 90, "aws": 10}
    # Route53 shows the write before the plan heard it landed: still the shift's
    clock.t += 1
    w.tick(clock.t, observed(90, 10, shift=plan))
    assert step(w).changed_by == "shift"
    plan.change_applied(clock.t, write.seq)
    clock.t += 1
    w.tick(clock.t, observed(80, 20, shift=plan))
    assert step(w).changed_by == "person"
    assert [m.changed_by for m in w.step_marks()] == ["unknown", "shift", "person"]
    # the plan's next step is the record's next share
    facts = step(w).facts(traffic=False, next_share=w._next_share(step(w), plan, clock.t))
    assert facts.next_share == 0.25


def test_a_step_and_its_rollback_between_two_ticks_start_a_step() -> None:
    """0% -> 10% -> 0% unseen by the ledger: the rollback's 0% is a new step, which the plan
    waits for (a verdict on the step from before its change is no verdict for it)."""
    plan = ShiftPlan(
        ShiftSettings(
            record=RECORD, baseline="heroku", candidate="aws", hold=0.0, ttl_margin=0.0,
            dry_run=False,
        )
    )  # fmt: skip
    clock = Clock()
    w = make(None, clock, settings(shift=True))
    at_zero = {"heroku": 100, "aws": 0}
    plan.step(clock.t, Observation(weights=at_zero, ttl=0, readiness=Verdict.GO))
    w.tick(clock.t, observed(100, 0, shift=plan))
    first = step(w)
    clock.t += 1
    (forward,) = [
        a
        for a in plan.step(clock.t, Observation(weights=at_zero, ttl=0, readiness=Verdict.GO))
        if isinstance(a, SetWeights)
    ]
    plan.change_applied(clock.t, forward.seq)
    clock.t += 1
    firing = Observation(weights={"heroku": 90, "aws": 10}, ttl=0, firing=("health.down.1",))
    (back,) = [a for a in plan.step(clock.t, firing) if isinstance(a, SetWeights)]
    plan.change_applied(clock.t, back.seq)
    clock.t += 1
    w.tick(clock.t, observed(100, 0, shift=plan))  # the ledger's next look: 0% again
    s = step(w)
    assert s is not first and (s.started_at, s.changed_by) == (clock.t, "shift")
    assert w.history()[RECORD][-1].started_at == first.started_at
    clock.t += 5
    w.tick(clock.t, observed(100, 0, shift=plan))
    assert step(w) is s  # once


def test_a_dry_run_shift_moves_the_step_with_its_would_be_weights() -> None:
    plan = ShiftPlan(
        ShiftSettings(
            record=RECORD, baseline="heroku", candidate="aws", hold=0.0, ttl_margin=0.0,
            dry_run=True,
        )
    )  # fmt: skip
    clock = Clock()
    w = make(None, clock, settings(shift=True))
    w.tick(clock.t, observed(100, 0, shift=plan))  # before the plan's first read
    first = step(w)
    plan.step(clock.t, Observation(weights={"heroku": 100, "aws": 0}, ttl=0, readiness=Verdict.GO))
    clock.t += 1
    w.tick(clock.t, observed(100, 0, shift=plan))
    assert step(w) is first and first.dry_run  # adopting the weights read is no new step
    actions = plan.step(
        clock.t, Observation(weights={"heroku": 100, "aws": 0}, ttl=0, readiness=Verdict.GO)
    )
    (write,) = [a for a in actions if isinstance(a, SetWeights)]
    plan.change_applied(clock.t, write.seq)
    clock.t += 1
    w.tick(clock.t, observed(100, 0, shift=plan))
    s = step(w)
    assert (s.changed_by, s.dry_run, s.shares) == ("shift", True, {"heroku": 0.9, "aws": 0.1})
    assert s.real_weights == {"heroku": 100, "aws": 0} and s.weights == {"heroku": 90, "aws": 10}
    marks = w.step_marks()
    assert marks[-1].dry_run and marks[-1].shares == {"heroku": 0.9, "aws": 0.1}
    # a person moving the real weights during a dry run is a step of its own
    clock.t += 1
    w.tick(clock.t, observed(50, 50, shift=plan))
    assert step(w).changed_by == "person" and step(w).weights == {"heroku": 90, "aws": 10}


def test_a_restart_with_the_same_weights_continues_the_step_and_its_evidence(
    tmp_path: Path,
) -> None:
    path = tmp_path / "readiness.json"
    clock = Clock()
    w = make(path, clock)
    w.tick(clock.t, observed(90, 10))
    probe(w, 30)
    clock.t += 40
    w.tick(clock.t, observed(75, 25))  # a person's step
    probe(w, 12, ok=False)
    clock.t += 10
    w.tick(clock.t, observed(75, 25))
    w.save()
    assert json.loads(path.read_text())["version"] == 1

    clock.t += 100  # down for 100 s
    again = make(path, clock)
    assert again.current() == {}  # not before Route53 confirms the weights
    again.tick(clock.t, observed(75, 25))
    s = step(again)
    assert (s.started_at, s.changed_by) == (T0 + 40, "person")
    ev = s.evidence["health"]
    assert (ev.candidate.count, ev.candidate.failures, ev.baseline.count) == (12, 12, 12)
    probe(again, 3)  # and it goes on filling
    assert ev.candidate.count == 15
    assert [p.changed_by for p in again.history()[RECORD]] == ["unknown"]


def test_a_restart_with_other_weights_begins_a_new_step_by_nobody_known(tmp_path: Path) -> None:
    path = tmp_path / "readiness.json"
    clock = Clock()
    w = make(path, clock)
    w.tick(clock.t, observed(90, 10))
    probe(w, 30)
    clock.t += 20
    w.tick(clock.t, observed(90, 10))
    w.save()

    clock.t += 300  # meanwhile somebody moved them
    again = make(path, clock)
    again.tick(clock.t + 2, observed(50, 50))
    s = step(again)
    assert (s.started_at, s.changed_by, s.shares["aws"]) == (T0 + 320, "unknown", 0.5)
    assert s.evidence["health"].candidate.count == 0
    (past,) = again.history()[RECORD]
    # the old step ended when it was last seen, not at the restart
    assert (past.started_at, past.ended_at, past.shares["aws"]) == (T0, T0 + 20, 0.1)


def test_a_corrupt_ledger_is_set_aside_and_the_watch_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "readiness.json"
    clock = Clock()
    good = make(path, clock)
    good.tick(clock.t, observed(90, 10))
    good.save()
    doc = json.loads(path.read_text())
    doc["steps"][0]["shares"]["aws"] = 7  # a share above 1
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.ERROR, logger="cutover.readiness"):
        w = make(path, clock)
    assert "step ledger unreadable" in caplog.text and "shares.aws" in caplog.text
    assert not path.exists()
    (aside,) = tmp_path.glob("readiness.json.corrupt-*")
    assert json.loads(aside.read_text())["steps"][0]["shares"]["aws"] == 7
    w.tick(clock.t, observed(90, 10))
    assert step(w).changed_by == "unknown" and w.history() == {}

    # evidence that does not make sense is refused as well
    path.write_text(json.dumps({**doc, "steps": [{**doc["steps"][0], "evidence": [{"x": 1}]}]}))
    with pytest.raises(ValueError, match="moved aside"):
        Ledger.load(path, now=T0 + 1)
    path.write_text('{"version": 2, "steps": [], "past": []}')
    with pytest.raises(ValueError, match="version"):
        Ledger.load(path, now=T0 + 2)


def test_the_ledger_keeps_the_last_steps_only(tmp_path: Path) -> None:
    path = tmp_path / "readiness.json"
    clock = Clock()
    w = make(path, clock)
    for i in range(HISTORY + 6):
        clock.t += 10
        w.tick(clock.t, observed(100 - i, i))
    past = w.history()[RECORD]
    assert len(past) == HISTORY
    assert past[-1].shares["aws"] == pytest.approx((HISTORY + 4) / 100)  # the newest kept
    assert len(w.step_marks()) == HISTORY + 1
    w.save()
    loaded = Ledger.load(path)
    assert [s.started_at for s in loaded.history(RECORD)] == [s.started_at for s in past]


def test_real_traffic_counts_from_the_counters_deltas() -> None:
    clock = Clock()
    w = make(None, clock, settings(traffic=True))
    timeline = Timeline()

    def report(platform: str, route: str, requests: int, errors: int, seconds: float) -> None:
        tally = Tally(requests=float(requests), latency=Histogram(LATENCY_BOUNDS))
        tally.responses["2xx"], tally.responses["5xx"] = requests - errors, float(errors)
        tally.latency.add(seconds, requests)  # type: ignore[union-attr]
        timeline.add(Report("drain", platform, route, clock.t - 1, clock.t, tally), clock.t)

    # the counters start with the process, and so does the first step
    report("aws", "orders", 50, 5, 0.2)
    w.tick(clock.t, observed(90, 10, timeline=timeline))
    clock.t += 5
    w.tick(clock.t, observed(90, 10, timeline=timeline))  # nothing new: nothing added
    for _ in range(3):
        clock.t += 5
        report("aws", "orders", 100, 1, 0.2)
        report("aws", "other", 40, 0, 0.05)
        report("heroku", "other", 300, 3, 0.1)
        w.tick(clock.t, observed(90, 10, timeline=timeline))
    ev = step(w).evidence
    every, orders = ev["traffic:all"], ev["traffic:orders"]
    assert (every.candidate.count, every.candidate.failures) == (470, 8)
    assert (orders.candidate.count, orders.candidate.failures) == (350, 8)
    assert (every.baseline.count, orders.baseline.count) == (900, 0)
    assert orders.candidate.latency.quantile(0.5) == pytest.approx(0.2, rel=0.2)
    assert every.candidate.latency.total == 470
    # a weight change: the new step counts from the tick that saw it on
    clock.t += 5
    report("aws", "orders", 10, 0, 0.2)
    w.tick(clock.t, observed(75, 25, timeline=timeline))
    assert step(w).evidence["traffic:all"].candidate.count == 10
    assert every.kind == "requests" and "health" in ev


def test_incidents_are_noted_with_the_time_spent_pending_and_firing() -> None:
    clock = Clock()
    w = make(None, clock)
    w.tick(clock.t, observed(90, 10))
    pending = Incident(id="health.errors.1", check="health", signal="errors", started_at=T0)
    elsewhere = Incident(id="elsewhere.down.1", check="elsewhere", signal="down", started_at=T0)
    for _ in range(2):
        clock.t += 5
        w.tick(clock.t, observed(90, 10, incidents=(pending, elsewhere)))
    pending.phase, pending.fired_at = Phase.FIRING, clock.t
    w.incident(pending)
    for _ in range(3):
        clock.t += 5
        w.tick(clock.t, observed(90, 10, incidents=(pending,)))
    clock.t += 5
    w.tick(clock.t, observed(90, 10))  # resolved between two ticks
    s = step(w)
    ev = s.evidence["health"]
    assert (ev.pending_seconds, ev.firing_seconds) == (10, 15)
    (note,) = s.incidents.values()  # the other record's incident is not this one's
    assert (note.phase, note.fired_at, note.resolved_at) == ("resolved", T0 + 10, clock.t)
    facts = s.facts(traffic=False, next_share=None)
    assert isinstance(facts, StepFacts) and facts.incidents == (note,)


def test_next_share_without_a_shift_is_the_default_plans_next() -> None:
    clock = Clock()
    w = make(None, clock)
    for weights, share in (((100, 0), 0.1), ((90, 10), 0.25), ((60, 40), 0.5), ((0, 100), None)):
        clock.t += 1
        w.tick(clock.t, observed(*weights))
        assert w._next_share(step(w), None, clock.t) == share


def test_a_failing_verdict_is_logged_once_and_the_ledger_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(facts: StepFacts, now: float, s: object) -> Any:
        raise ZeroDivisionError("a bug in the verdict")

    monkeypatch.setattr(watch_module, "readiness", broken)
    clock = Clock()
    w = make(None, clock)
    with caplog.at_level(logging.ERROR, logger="cutover.readiness"):
        for i in range(4):
            clock.t += 5
            w.tick(clock.t, observed(90 - i, 10 + i))
    assert caplog.text.count("no verdict on api.example.com (ZeroDivisionError") == 1
    assert w.verdicts() == () and len(w.history()[RECORD]) == 3
    assert all(p.readiness is None for p in w.history()[RECORD])


def test_reload_keeps_the_ledger_and_fits_the_subjects() -> None:
    clock = Clock()
    w = make(None, clock)
    w.tick(clock.t, observed(90, 10))
    probe(w, 10)
    s = step(w)
    w.configure(settings(traffic=True))
    assert step(w) is s and set(s.evidence) == {"health", "traffic:all", "traffic:orders"}
    assert s.evidence["health"].candidate.count == 10
    probe(w, 1)
    assert s.evidence["health"].candidate.count == 11
    cfg = parse_config(CONFIG.replace(f"record: {RECORD}}}", "record: www.example.com}"), env={})
    w.configure(WatchSettings.of(cfg))
    assert w.current() == {}  # no longer migrated: its step ended
    assert [p.started_at for p in w.history()[RECORD]] == [T0]
    probe(w, 1)
    assert s.evidence["health"].candidate.count == 11


def test_shares_of_weights() -> None:
    assert shares_of({"a": 90, "b": 10}) == {"a": 0.9, "b": 0.1}
    assert shares_of({"a": 0, "b": 0}) == {"a": 0.5, "b": 0.5}
    assert shares_of({"a": 5, "b": None}) == {"a": 1.0, "b": 0.0}


def test_slack_hears_of_a_weight_change_and_of_the_hold_completing_once(tmp_path: Path) -> None:
    """News: a change seen while watching, the summary when the hold completes, then the
    first GO or NO-GO after a summary that said WAIT; never the same twice, even after a
    restart (what was announced is in the ledger)."""
    from exporter.judging.readiness import Verdict
    from exporter.readiness.watch import HoldCompleted, StepBegan

    clock = Clock()
    path = tmp_path / "readiness.json"
    w = make(path, clock)
    w.tick(clock.t, observed(90, 10))
    assert w.news == [], "the weights found at start are no news"
    clock.t += 5
    w.tick(clock.t, observed(75, 25))
    [began] = w.news
    assert isinstance(began, StepBegan) and began.step.changed_by == "person"
    assert began.previous == {"heroku": 0.9, "aws": 0.1}
    w.news.clear()
    clock.t += 599  # a second short of the 10 min hold
    w.tick(clock.t, observed(75, 25))
    assert w.news == []
    clock.t += 1
    w.tick(clock.t, observed(75, 25))
    [summary] = w.news
    assert isinstance(summary, HoldCompleted)
    assert summary.readiness.verdict is Verdict.WAIT  # no probes at all: nothing to judge
    w.news.clear()
    clock.t += 5
    w.tick(clock.t, observed(75, 25))
    assert w.news == [], "WAIT again is no news"
    w.save(clock.t)

    # a restart: the step continues, and what was said stays said
    again = make(path, clock, started=clock.t)
    clock.t += 5
    again.tick(clock.t, observed(75, 25))
    assert again.news == []
    probe(again, 3000)
    clock.t += 5
    again.tick(clock.t, observed(75, 25))
    verdict = again.verdicts()[0].verdict
    assert verdict is not Verdict.WAIT, again.verdicts()[0].reasons
    [turned] = again.news
    assert isinstance(turned, HoldCompleted) and turned.readiness.verdict is verdict


async def test_news_not_held_by_the_outbox_is_offered_again() -> None:
    import asyncio

    clock = Clock()
    w = make(None, clock)
    w.interval = 0.01
    offered: list[int] = []

    def announce(news: Any) -> int:
        offered.append(len(news))
        return 0 if len(offered) == 1 else len(news)  # the outbox cannot save at first

    weights = iter([(90, 10), (50, 50)] + [(50, 50)] * 100)

    def observe() -> Observed:
        clock.t += 1
        return observed(*next(weights))

    task = asyncio.create_task(w.run(observe, announce))
    while len(offered) < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    assert offered[:2] == [1, 1] and w.news == []


def many_checks(n: int) -> WatchSettings:
    lines = [
        "platforms:",
        "  heroku: {role: baseline, base_url: 'http://127.0.0.1:1'}",
        "  aws: {role: candidate, base_url: 'http://127.0.0.1:2'}",
        "route53:",
        "  records:",
        f"    - {{hosted_zone_id: Z1, name: {RECORD}, set_identifiers: {{heroku: heroku, aws: aws}}}}",
        "readiness: {hold: 1m, min_probes: 5}",
        "checks:",
        *(f"  - {{name: c{i:04d}, path: /p, record: {RECORD}}}" for i in range(n)),
    ]
    return WatchSettings.of(parse_config("\n".join(lines) + "\n", env={}))


async def test_a_sliced_tick_yields_between_subjects_and_judges_as_a_whole_tick(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """On the event loop, thousands of checks are judged and saved a slice at a time: other
    tasks run in between, and the verdict and the file are those of a tick done at once."""
    import asyncio

    monkeypatch.setattr(watch_module, "SLICE", 0.0)  # a slice per subject: deterministic
    n = 200
    clock = Clock()
    s = many_checks(n)
    whole = make(tmp_path / "whole.json", clock, s)
    sliced = make(tmp_path / "sliced.json", clock, s)
    for w in (whole, sliced):
        w.tick(clock.t, observed(90, 10))
        for i in range(n):
            for k in range(10):
                w.probed(f"c{i:04d}", "heroku", True, 0.05 + k * 0.001)
                w.probed(f"c{i:04d}", "aws", k != 3 or i % 50, 0.06 + k * 0.001)
    clock.t += 61
    turns = 0
    done = False

    async def other_task() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    whole.tick(clock.t, observed(90, 10))
    await sliced.tick_sliced(clock.t, observed(90, 10))
    await sliced.save_sliced(clock.t)
    done = True
    await other
    assert turns > n, "the other task ran between the slices"
    [a], [b] = whole.verdicts(), sliced.verdicts()
    assert (a.verdict, a.reasons) == (b.verdict, b.reasons)
    assert [x.to_dict() for x in a.subjects] == [x.to_dict() for x in b.subjects]
    whole.save(clock.t)
    for path in (tmp_path / "whole.json", tmp_path / "sliced.json"):
        loaded = Ledger.load(path)
        assert set(loaded.current[RECORD].evidence) == {f"c{i:04d}" for i in range(n)}
    assert (
        Ledger.load(tmp_path / "whole.json").record()
        == Ledger.load(tmp_path / "sliced.json").record()
    )


def test_a_past_steps_summary_keeps_the_deciding_subjects_only() -> None:
    clock = Clock()
    w = make(None, clock, many_checks(50))
    w.tick(clock.t, observed(90, 10))
    for i in range(50):
        for _ in range(10):
            w.probed(f"c{i:04d}", "heroku", True, 0.05)
            w.probed(f"c{i:04d}", "aws", True, 0.05)
    clock.t += 5
    w.tick(clock.t, observed(90, 10))
    clock.t += 5
    w.tick(clock.t, observed(50, 50))
    [past] = w.history()[RECORD]
    assert past.readiness is not None and past.readiness["subjects_total"] == 50
    kept = past.readiness["subjects"]
    # (10 probes a side bound nothing yet: every subject has something missing)
    assert len(kept) == watch_module.SUMMARY_SUBJECTS and kept[0]["missing"]


def test_the_vantages_hold_a_go_per_record_and_the_news_waits_for_them() -> None:
    """With several vantages (`ha`), a GO needs them too: their reasons turn it into a WAIT,
    asked for each record with the checks guarding it; Slack hears of the GO once they agree."""
    from exporter.readiness.watch import HoldCompleted

    asked: list[tuple[str, ...]] = []
    silent = ("only 1 of 2 vantages healthy (us-east-1 silent for 40 s)",)
    holding = True

    def vantages(checks: Any) -> tuple[str, ...]:
        asked.append(tuple(checks))
        return silent if holding else ()

    def seen() -> Observed:
        return replace(observed(90, 10), vantages=vantages)

    clock = Clock()
    w = make(None, clock)
    w.tick(clock.t, seen())
    probe(w, 3000)
    clock.t += 601  # past the 10 min hold
    w.tick(clock.t, seen())
    (verdict,) = w.verdicts()
    assert verdict.verdict is Verdict.WAIT and verdict.reasons == silent
    assert set(asked) == {("health",)}  # the record's own checks, not `orders` or `elsewhere`
    assert not [
        n for n in w.news if isinstance(n, HoldCompleted) and n.readiness.verdict.value == "GO"
    ]

    holding = False
    clock.t += 5
    w.tick(clock.t, seen())
    (verdict,) = w.verdicts()
    assert verdict.verdict is Verdict.GO, verdict.reasons
    assert any(isinstance(n, HoldCompleted) and n.readiness.verdict is Verdict.GO for n in w.news)
