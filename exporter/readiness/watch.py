"""Keeps the step ledger up to date from what the daemon sees, and the verdict per record.

One loop ticks it every TICK seconds: the weights read from Route53 (or a dry-run shift's
would-be weights) start steps, real traffic's cumulative counters and the open incidents are
added to the current step, and the pure verdict (exporter/judging/readiness.py) is taken.
Probes reach the current step on the hot path (`probed`, O(1)). Nothing here may stop the
daemon: a failing verdict or save is logged, and the ledger goes on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

from exporter.alerting.alerts import Incident
from exporter.alerting.alerts import Phase as IncidentPhase
from exporter.alerting.messages import TRAFFIC_PREFIX
from exporter.config import Config
from exporter.errors import CorruptStateFile
from exporter.judging.evidence import Evidence, Side
from exporter.judging.readiness import (
    Combination,
    IncidentNote,
    Readiness,
    ReadinessSettings,
    StepFacts,
    counts_requests,
    held,
    judge_subject,
    readiness,
)
from exporter.readiness.ledger import (
    ChangedBy,
    Ledger,
    Step,
    StepMark,
    StepSummary,
    Weights,
    shares_of,
)
from exporter.route53.plan import ShiftPlan
from exporter.route53.read import RecordSpec, Route53Snapshot, normalize_name
from exporter.store.local import save_atomic
from exporter.traffic.counts import ALL, Histogram, common_bounds
from exporter.traffic.timeline import Counters

__all__ = [
    "HoldCompleted",
    "News",
    "Observed",
    "ReadinessWatch",
    "StepBegan",
    "WatchSettings",
    "default_next_share",
]

log = logging.getLogger("cutover.readiness")

TICK = 5.0
SAVE_EVERY = 30.0
# the most one slice of judging or saving may hold the event loop, in seconds
SLICE = 0.002
# a past step's summary keeps the figures of at most this many subjects
SUMMARY_SUBJECTS = 20
# the candidate's next share without a shift plan for the record
DEFAULT_PLAN = (0.1, 0.25, 0.5, 1.0)
# a tick long overdue (a stalled loop, a suspended host) adds at most this much pending time
MAX_GAP = 30.0
_EPS = 1e-9


def default_next_share(share: float) -> float | None:
    """The candidate's next share in DEFAULT_PLAN above `share`, where no shift plans it."""
    return next((s for s in DEFAULT_PLAN if s > share + _EPS), None)


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """What the watch needs of the configuration."""

    records: Mapping[str, tuple[str, ...]]  # migrated record -> the checks guarding it
    baseline: str
    candidate: str
    verdict: ReadinessSettings
    traffic_record: str | None = None  # the record real traffic is split by
    route_groups: tuple[str, ...] = ()  # the judged route groups of real traffic
    shift_record: str | None = None

    @classmethod
    def of(cls, cfg: Config, route_groups: Iterable[str] = ()) -> WatchSettings:
        records: dict[str, list[str]] = {}
        for check in cfg.checks:
            record = cfg.record_for(check)
            if record is not None:
                records.setdefault(record.key, []).append(check.name)
        traffic = cfg.traffic_record()
        if traffic is not None:
            records.setdefault(traffic.key, [])
        r = cfg.readiness
        return cls(
            records={key: tuple(checks) for key, checks in records.items()},
            baseline=cfg.baseline,
            candidate=cfg.candidate,
            verdict=ReadinessSettings(
                hold=cfg.readiness_hold,
                min_probes=cfg.readiness_min_probes,
                min_requests=cfg.readiness_min_requests,
                confidence=r.confidence,
                errors_max_increase=cfg.judge.errors.max_increase,
                latency_max_ratio=cfg.judge.latency.max_ratio,
            ),
            traffic_record=traffic.key if traffic is not None else None,
            route_groups=tuple(route_groups) if traffic is not None else (),
            shift_record=normalize_name(cfg.shift.record) if cfg.shift is not None else None,
        )

    def subjects(self, record: str) -> dict[str, Literal["probes", "requests"]]:
        """The record's subjects: its checks, and its route groups when traffic splits by it."""
        out: dict[str, Literal["probes", "requests"]] = dict.fromkeys(
            self.records.get(record, ()), "probes"
        )
        if record == self.traffic_record:
            out.update((f"{TRAFFIC_PREFIX}{g}", "requests") for g in self.route_groups)
        return out


@dataclass(frozen=True, slots=True)
class Observed:
    """What the daemon knows at one tick."""

    route53: Route53Snapshot | None
    records: Mapping[str, RecordSpec]  # config key -> record
    incidents: Sequence[Incident]  # open ones, pending and firing
    shift: ShiftPlan | None = None
    counters: Mapping[tuple[str, str, str], Counters] | None = None
    # why the vantages (`ha`) hold a step of a record guarded by these checks; None: nothing does
    vantages: Callable[[Collection[str]], Sequence[str]] | None = None


@dataclass(frozen=True, slots=True)
class StepBegan:
    """The weights of a record changed while cutover watched: a new step, its hold anew."""

    step: Step
    previous: Mapping[str, float] | None  # the shares of the step it follows
    real_shares: Mapping[str, float] | None  # what Route53 holds (differs in a dry run)


@dataclass(frozen=True, slots=True)
class HoldCompleted:
    """A step's hold completed (its summary), or after it the verdict turned GO or NO-GO."""

    readiness: Readiness


News = StepBegan | HoldCompleted


@dataclass(slots=True)
class _Seen:
    """A traffic counter's totals at the last tick: the next tick adds what grew since."""

    requests: float
    errors: float
    latency: Histogram | None


class ReadinessWatch:
    """Owns the ledger: follows the weights, fills the current steps, keeps the verdicts."""

    def __init__(
        self,
        settings: WatchSettings,
        *,
        path: Path | None,
        started: float,
        clock: Callable[[], float] = time.time,
        tick: float = TICK,
    ) -> None:
        self.settings = settings
        self.path = path
        self.started = started  # the weights seen first begin a step timed from here
        self.interval = tick
        self._clock = clock
        self.ledger = self._load()
        # records whose current step this process has confirmed against Route53: a loaded step
        # continues only if the weights are still its own
        self._confirmed: set[str] = set()
        self._sides: dict[tuple[str, str], Side] = {}  # (check, platform) -> the current side
        self._verdicts: dict[str, Readiness] = {}
        self._counted: dict[tuple[str, str, str], _Seen] = {}
        self._last_tick: float | None = None
        self._vantages: Callable[[Collection[str]], Sequence[str]] | None = None
        self._saved_at = clock()
        self._failures: dict[str, str] = {}  # record -> the verdict's last failure, logged once
        self._save_failure: str | None = None
        # what Slack should hear, until `run`'s `announce` has handed it on
        self.news: list[News] = []

    # -- what the daemon calls ------------------------------------------------------------------

    def probed(self, check: str, platform: str, ok: bool, seconds: float) -> None:
        """One probe result: the hot path."""
        side = self._sides.get((check, platform))
        if side is not None:
            side.record(ok, seconds)

    def incident(self, incident: Incident) -> None:
        """An incident changed (fired, resolved): noted at once, between two ticks."""
        for record in self._confirmed:
            step = self.ledger.current.get(record)
            if step is not None and incident.check in step.evidence:
                step.note(_note(incident))

    def configure(self, settings: WatchSettings) -> None:
        """A reloaded configuration: the ledger stays, records and subjects follow."""
        self.settings = settings
        now = self._clock()
        for record in [r for r in self.ledger.current if r not in settings.records]:
            step = self.ledger.current[record]
            confirmed = record in self._confirmed
            end = now if confirmed else (step.seen_until or self.started)
            self.ledger.end(record, step.summary(end, self._final(step, None, end)))
            self._confirmed.discard(record)
            self._verdicts.pop(record, None)
            log.info("readiness: %s is no longer migrated: its step ends", record)
        for record in self._confirmed:
            self._fit_subjects(self.ledger.current[record], prune=True)
        self._rebuild_sides()

    def tick(self, now: float, seen: Observed) -> None:
        """One tick, all at once (tests, and what `run` does in slices)."""
        plan = self._observe(now, seen)
        self._judge(now, plan)
        if self._confirmed and now - self._saved_at >= SAVE_EVERY:
            self.save(now)

    async def tick_sliced(self, now: float, seen: Observed) -> None:
        """One tick on the event loop: the verdicts and the save are built a slice at a time,
        so that thousands of checks never hold the loop for more than a few milliseconds."""
        plan = self._observe(now, seen)
        await self._judge_sliced(now, plan)
        if self._confirmed and now - self._saved_at >= SAVE_EVERY:
            await self.save_sliced(now)

    def _observe(self, now: float, seen: Observed) -> ShiftPlan | None:
        """Follow the weights, add traffic and incidents to the current steps; the shift plan
        of a migrated record, if any."""
        gap = 0.0 if self._last_tick is None else min(MAX_GAP, max(0.0, now - self._last_tick))
        self._last_tick = now
        self._vantages = seen.vantages
        plan = seen.shift
        if plan is not None and normalize_name(plan.settings.record) != self.settings.shift_record:
            plan = None
        for record in self.settings.records:
            spec = seen.records.get(record)
            weights = seen.route53.weights.get(spec) if seen.route53 and spec else None
            if weights is not None:
                real = weights.platform_weights()
                self._follow(record, real, weights.platform_shares(), plan, now)
        if seen.counters is not None:
            self._count_traffic(seen.counters)
        self._count_incidents(seen.incidents, gap, now)
        for record in self._confirmed:
            self.ledger.current[record].seen_until = now
        return plan

    async def run(
        self,
        observe: Callable[[], Observed],
        announce: Callable[[Sequence[News]], int] | None = None,
    ) -> None:
        """Tick for ever: the daemon's loop (its own task group).

        `announce` is handed the news after each tick and says how many of them (from the
        first) it holds now; the rest are offered again at the next tick.
        """
        while True:
            try:
                await self.tick_sliced(self._clock(), observe())
                if announce is not None and self.news:
                    del self.news[: announce(tuple(self.news))]
            except Exception:
                # the ledger is ours and the verdict pure: anything here is a bug, and the
                # daemon must go on probing, alerting and shifting
                log.exception("readiness: the ledger's tick failed unexpectedly")
            await asyncio.sleep(self.interval)

    def save(self, now: float | None = None) -> None:
        """Save the ledger; a failure is logged (once per distinct failure), never raised."""
        self._saved_at = now if now is not None else self._clock()
        if self.path is None:
            return
        try:
            self.ledger.save(self.path)
        except Exception as exc:
            self._save_failed(exc)
            return
        self._saved_again()

    async def save_sliced(self, now: float) -> None:
        """`save` for the event loop: the text is built a slice at a time, written in a thread."""
        self._saved_at = now
        if self.path is None:
            return
        try:
            parts: list[bytes] = []
            slice_started = time.perf_counter()
            for part in self.ledger.json_parts():
                parts.append(part.encode())
                if time.perf_counter() - slice_started > SLICE:
                    await asyncio.sleep(0)
                    slice_started = time.perf_counter()
            # the thread only writes and syncs (without the GIL): the text is ready here
            await asyncio.to_thread(save_atomic, self.path, parts)
        except Exception as exc:
            self._save_failed(exc)
            return
        self._saved_again()

    def _save_failed(self, exc: Exception) -> None:
        text = f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
        if text != self._save_failure:
            log.error("readiness: cannot save the step ledger to %s: %s", self.path, text)
        self._save_failure = text

    def _saved_again(self) -> None:
        if self._save_failure is not None:
            log.info("readiness: the step ledger is saved to %s again", self.path)
            self._save_failure = None

    # -- what the page, the API and the metrics read --------------------------------------------

    def verdicts(self) -> tuple[Readiness, ...]:
        return tuple(self._verdicts[r] for r in self.settings.records if r in self._verdicts)

    def current(self) -> dict[str, Step]:
        """The records' current steps, once confirmed against Route53."""
        return {r: self.ledger.current[r] for r in self.settings.records if r in self._confirmed}

    def history(self) -> dict[str, tuple[StepSummary, ...]]:
        return {r: self.ledger.history(r) for r in self.ledger.past}

    def step_marks(self) -> tuple[StepMark, ...]:
        """One mark per step start, past and current, oldest first."""
        marks = [
            StepMark(s.record, s.started_at, dict(s.shares), s.changed_by, s.dry_run)
            for record in self.settings.records
            for s in self.ledger.history(record)
        ]
        marks += [
            StepMark(s.record, s.started_at, dict(s.shares), s.changed_by, s.dry_run)
            for s in self.current().values()
        ]
        return tuple(sorted(marks, key=lambda m: (m.at, m.record)))

    # -- steps ----------------------------------------------------------------------------------

    def _load(self) -> Ledger:
        if self.path is None:
            return Ledger()
        try:
            ledger = Ledger.load(self.path, now=self._clock())
        except CorruptStateFile as exc:
            log.error("readiness: step ledger unreadable, starting without it: %s", exc)
            return Ledger()
        if ledger.current:
            log.info("readiness: step ledger loaded: %d record(s)", len(ledger.current))
        return ledger

    def _follow(
        self,
        record: str,
        real: Weights,
        real_shares: dict[str, float],
        plan: ShiftPlan | None,
        now: float,
    ) -> None:
        """Start a step when the record's weights (or a dry run's would-be ones) changed."""
        weights, shares, dry = real, real_shares, False
        if plan is not None and record == self.settings.shift_record and plan.settings.dry_run:
            target = plan.status(now).target_weights
            if target:
                weights = {p: target.get(p, w) for p, w in real.items()}
                shares, dry = shares_of(weights), True
        step = self.ledger.current.get(record)
        new = Step(record, now, weights, shares, "unknown", dry_run=dry, real_weights=real)
        if record not in self._confirmed:
            self._confirmed.add(record)
            if step is not None and step.key == new.key:
                step.dry_run = dry
                self._fit_subjects(step, prune=True)
                self._rebuild_sides()
                log.info(
                    "readiness: %s: the step since %s continues (%s)",
                    record,
                    _when(step.started_at),
                    _shares_text(step.shares),
                )
                return
            # the weights seen first: a step timed from the start, by nobody known
            new.started_at = self.started
            end = (step.seen_until or self.started) if step is not None else now
            self._start(new, now, end, plan)
            return
        if step is not None and step.key == new.key and self._shifted_since(step, plan):
            # the shift moved the weights and back (a step and its rollback) between two reads
            # or ticks: what follows is a step of its own, which its plan waits for
            new.changed_by = "shift"
            self._start(new, now, now, plan)
            return
        if step is None or step.key == new.key:
            if step is not None:
                step.dry_run = dry
            return
        new.changed_by = self._changed_by(step, new, plan)
        self._start(new, now, now, plan)

    def _shifted_since(self, step: Step, plan: ShiftPlan | None) -> bool:
        """Did the shift write the step's weights again since the step began?"""
        if plan is None or step.record != self.settings.shift_record or plan.written is None:
            return False
        written = plan.written
        return (
            plan.changed_at is not None
            and plan.changed_at > step.started_at
            and all(written.get(p) == w for p, w in step.weights.items())
        )

    def _changed_by(self, old: Step, new: Step, plan: ShiftPlan | None) -> ChangedBy:
        if new.dry_run:
            # the would-be weights are the plan's; Route53's own moving is a person's doing
            return "shift" if new.weights != old.weights else "person"
        if plan is not None and new.record == self.settings.shift_record:
            flight = plan.in_flight
            for ours in (plan.written, flight.weights if flight is not None else None):
                if ours and all(ours.get(p) == w for p, w in new.weights.items()):
                    return "shift"
        return "person"

    def _start(self, step: Step, now: float, previous_end: float, plan: ShiftPlan | None) -> None:
        """Make `step` its record's current one; the step it follows ends at `previous_end`."""
        old = self.ledger.current.get(step.record)
        ended = None
        if old is not None:
            ended = old.summary(previous_end, self._final(old, plan, previous_end))
        step.seen_until = now
        self._fit_subjects(step, prune=True)
        self.ledger.begin(step, ended)
        if step.changed_by != "unknown":
            real = shares_of(step.real_weights) if step.real_weights is not None else None
            self.news.append(StepBegan(step, dict(old.shares) if old else None, real))
        self._verdicts.pop(step.record, None)
        self._rebuild_sides()
        log.info(
            "readiness: %s: a new step%s: %s, changed by %s",
            step.record,
            " (DRY RUN: what the shift would have written)" if step.dry_run else "",
            _shares_text(step.shares),
            step.changed_by,
        )

    def _fit_subjects(self, step: Step, *, prune: bool) -> None:
        wanted = self.settings.subjects(step.record)
        for subject, kind in wanted.items():
            held = step.evidence.get(subject)
            if held is None or held.kind != kind:
                step.evidence[subject] = Evidence.empty(subject, kind)
        if prune:
            for subject in [s for s in step.evidence if s not in wanted]:
                del step.evidence[subject]

    def _rebuild_sides(self) -> None:
        s = self.settings
        sides: dict[tuple[str, str], Side] = {}
        for record in self._confirmed:
            for subject, evidence in self.ledger.current[record].evidence.items():
                if evidence.kind == "probes":
                    sides[(subject, s.baseline)] = evidence.baseline
                    sides[(subject, s.candidate)] = evidence.candidate
        self._sides = sides

    # -- evidence -------------------------------------------------------------------------------

    def _count_traffic(self, counters: Mapping[tuple[str, str, str], Counters]) -> None:
        """Add what real traffic's cumulative counters grew by since the last tick."""
        s = self.settings
        record = s.traffic_record
        step = self.ledger.current.get(record) if record in self._confirmed else None
        for key in [k for k in self._counted if k not in counters]:
            del self._counted[key]  # a source gone from the configuration
        for key, c in counters.items():
            platform, _, route = key
            errors = c.responses.get("5xx", 0.0)
            before = self._counted.get(key)
            if before is None or c.requests < before.requests or errors < before.errors:
                before = _Seen(0.0, 0.0, None)  # first sight (counters start with the process)
            latency = _delta(c.latency, before.latency)
            self._counted[key] = _Seen(
                c.requests, errors, None if c.latency is None else _copy(c.latency)
            )
            grew = c.requests - before.requests
            if step is None or grew <= 0 or platform not in (s.baseline, s.candidate):
                continue
            for subject in {f"{TRAFFIC_PREFIX}{ALL}", f"{TRAFFIC_PREFIX}{route}"}:
                evidence = step.evidence.get(subject)
                if evidence is None:
                    continue
                side = evidence.baseline if platform == s.baseline else evidence.candidate
                side.count += grew
                side.failures += errors - before.errors
                if latency is not None:
                    _merge(side, latency)

    def _count_incidents(self, incidents: Sequence[Incident], gap: float, now: float) -> None:
        """Note the incidents open on a record's subjects, and time each subject spent in one."""
        state: dict[str, IncidentPhase] = {}
        for incident in incidents:
            if state.get(incident.check) is not IncidentPhase.FIRING:
                state[incident.check] = incident.phase
        open_ids = {i.id for i in incidents}
        for record in self._confirmed:
            step = self.ledger.current[record]
            for incident in incidents:
                if incident.check in step.evidence:
                    step.note(_note(incident))
            for note in list(step.incidents.values()):
                if note.phase != "resolved" and note.id not in open_ids:
                    # closed between two ticks without an event seen: resolved about now
                    step.note(replace(note, phase="resolved", resolved_at=now))
            if gap <= 0:
                continue
            for subject, phase in state.items():  # the subjects with an incident: a few
                evidence = step.evidence.get(subject)
                if evidence is None:
                    continue
                if phase is IncidentPhase.FIRING:
                    evidence.firing_seconds += gap
                elif phase is IncidentPhase.PENDING:
                    evidence.pending_seconds += gap

    # -- verdicts -------------------------------------------------------------------------------

    def _judge(self, now: float, plan: ShiftPlan | None) -> None:
        for record in self._confirmed:
            step = self.ledger.current[record]
            facts = self._facts_of(step, plan, now)
            self._take(record, step, partial(readiness, facts, now, self.settings.verdict))

    async def _judge_sliced(self, now: float, plan: ShiftPlan | None) -> None:
        """`_judge`, a few subjects at a time; a step replaced meanwhile is judged next tick."""
        for record in list(self._confirmed):
            step = self.ledger.current[record]
            facts = self._facts_of(step, plan, now)
            settings = self.settings.verdict
            try:
                requests = counts_requests(facts)
                combination = Combination(facts, settings)  # holds a few subjects, not all
                slice_started = time.perf_counter()
                for ev in facts.subjects:
                    combination.add(judge_subject(ev, ev.kind == "probes" or requests, settings))
                    if time.perf_counter() - slice_started > SLICE:
                        await asyncio.sleep(0)
                        slice_started = time.perf_counter()
            except Exception as exc:
                self._verdicts.pop(record, None)
                self._failed(record, exc)
                continue
            if self.ledger.current.get(record) is step:
                self._take(record, step, partial(combination.result, now))

    def _take(self, record: str, step: Step, verdict_of: Callable[[], Readiness]) -> None:
        """Keep the verdict `verdict_of` gives (and tell Slack what it must hear of it)."""
        try:
            verdict = verdict_of()
            if self._vantages is not None:
                checks = self.settings.records.get(record, ())
                verdict = held(verdict, self._vantages(checks))
            self._verdicts[record] = verdict
        except Exception as exc:
            self._verdicts.pop(record, None)
            self._failed(record, exc)
        else:
            self._failures.pop(record, None)
            self._announce(step, verdict)

    def _announce(self, step: Step, verdict: Readiness) -> None:
        """The summary once the hold completed; after it, the first GO and the first NO-GO."""
        if verdict.held_for < verdict.hold:
            return
        said = verdict.verdict.value
        if said in step.announced or (step.announced and said == "WAIT"):
            return
        step.announced.append(said)
        self.news.append(HoldCompleted(verdict))

    def _final(self, step: Step, plan: ShiftPlan | None, at: float) -> dict[str, Any] | None:
        """The verdict at a step's end, as its summary keeps it: the last one taken (at most a
        tick old; taking it again would judge every subject at once), with the subjects that
        decided it first and at most SUMMARY_SUBJECTS of them; None when there is none."""
        last = self._verdicts.get(step.record)
        if last is None or last.step.started_at != step.started_at:
            return None
        data = last.to_dict()
        subjects = data.get("subjects") or []
        if len(subjects) > SUMMARY_SUBJECTS:
            subjects.sort(key=lambda s: not s.get("missing"))
            data["subjects"] = subjects[:SUMMARY_SUBJECTS]  # subjects_total says how many
        return data

    def _facts_of(self, step: Step, plan: ShiftPlan | None, now: float) -> StepFacts:
        return step.facts(
            traffic=step.record == self.settings.traffic_record,
            next_share=self._next_share(step, plan, now),
        )

    def _next_share(self, step: Step, plan: ShiftPlan | None, now: float) -> float | None:
        """The shift plan's next step for its record; elsewhere the default plan's next."""
        if plan is not None and step.record == self.settings.shift_record:
            status = plan.status(now)
            if status.next_step is None:
                return None
            return status.steps[status.next_step] / 100.0
        return default_next_share(step.shares.get(self.settings.candidate, 0.0))

    def _failed(self, record: str, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text != self._failures.get(record):
            log.error(
                "readiness: no verdict on %s (%s); the ledger goes on",
                record,
                text,
                exc_info=exc,
            )
        self._failures[record] = text


# -- helpers -------------------------------------------------------------------------------------


def _note(incident: Incident) -> IncidentNote:
    return IncidentNote(
        id=incident.id,
        check=incident.check,
        signal=incident.signal,
        phase=incident.phase.value,
        started_at=incident.started_at,
        fired_at=incident.fired_at,
        resolved_at=incident.resolved_at,
        figures=dict(incident.figures) if incident.figures else None,
    )


def _copy(h: Histogram) -> Histogram:
    return Histogram(h.bounds, list(h.counts))


def _delta(now: Histogram | None, before: Histogram | None) -> Histogram | None:
    """What a cumulative histogram grew by; None when it tells nothing."""
    if now is None:
        return None
    if before is None:
        return _copy(now)
    if before.bounds != now.bounds:
        try:
            before = before.coarsen(now.bounds)
        except ValueError:
            return None  # a layout it cannot be compared with: this tick's latencies are lost
    return Histogram(
        now.bounds, [max(0.0, a - b) for a, b in zip(now.counts, before.counts, strict=True)]
    )


def _merge(side: Side, latency: Histogram) -> None:
    if latency.total <= 0:
        return
    held = side.latency
    if not isinstance(held, Histogram):
        side.latency = _copy(latency)
        return
    bounds = common_bounds(held.bounds, latency.bounds)
    if bounds != held.bounds:
        held = side.latency = held.coarsen(bounds)
    held.merge(latency)


def _shares_text(shares: Mapping[str, float]) -> str:
    return ", ".join(f"{p} {100 * v:.4g}%" for p, v in shares.items())


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if math.isfinite(ts) else "?"
